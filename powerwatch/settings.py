"""The one settings object. Every knob an operator may turn is declared (and documented) here."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from `POWERWATCH_*` environment variables and an optional `.env` file."""

    model_config = SettingsConfigDict(env_prefix="POWERWATCH_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///data/powerwatch.db",
        description="Any SQLAlchemy URL. SQLite is the embedded default, PostgreSQL the scale-out.",
    )
    data_dir: Path = Field(
        Path("data"), description="Landing chunks, quarantine, archive, backups, reports."
    )
    stations: Path = Field(Path("stations.yaml"), description="The station registry (YAML).")
    busy_timeout_ms: int = Field(
        30_000, description="How long a SQLite writer waits for the lock before failing."
    )
    load_retries: int = Field(
        5, description="Retries (with backoff) of a chunk load whose database is busy/unreachable."
    )
    capture_flush_seconds: float = Field(
        10.0,
        description="A capture writes a landing chunk at least this often (seconds): the "
        "largest share of a reading's way to the database besides the load interval.",
    )
    capture_flush_rows: int = Field(
        40_000,
        description="... or as soon as it holds this many frames: bounds a capture's memory.",
    )
    retention_days: int = Field(90, description="Readings older than this move to the archive.")
    prefect_port: int = Field(
        4200, description="Port of the Prefect server and UI that `powerwatch demo` starts."
    )
    backup_keep_hourly: int = Field(
        24, description="Backups kept for the most recent hours (the newest of each hour)."
    )
    backup_keep_daily: int = Field(
        14, description="Backups kept for the most recent days (the newest of each day)."
    )
    energy_max_power_kw: float = Field(
        2000.0,
        description="The most power one kWh meter can plausibly draw: a delta implying more "
        "is flagged and excluded from consumption (with the reason).",
    )
    energy_tz: str = Field(
        "Asia/Bangkok", description="The site's zone: energy statements' month boundaries."
    )

    @property
    def statements_dir(self) -> Path:
        """Monthly energy statements, CSV and Parquet, one pair per month and revision."""
        return self.data_dir / "statements"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def loaded_dir(self) -> Path:
        return self.data_dir / "loaded"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def failed_dir(self) -> Path:
        return self.data_dir / "failed"

    @property
    def dead_letter_dir(self) -> Path:
        """Frames a capture rejected, as JSON lines (station, received_at, reason, raw)."""
        return self.data_dir / "dead-letter"

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"


def get_settings() -> Settings:
    """Fresh each call (cheap): tests and the CLI change the environment between calls."""
    return Settings()
