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
    retention_days: int = Field(90, description="Readings older than this move to the archive.")

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


def get_settings() -> Settings:
    """Fresh each call (cheap): tests and the CLI change the environment between calls."""
    return Settings()
