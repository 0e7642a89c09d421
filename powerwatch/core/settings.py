"""The one settings object. Every knob an operator may turn is declared (and documented) here.

Every setting is checked when it is read (bounds, a URL that parses and names a backend
we support), so a bad value is refused as bad input, one line naming the variable
(`POWERWATCH_BUSY_TIMEOUT_MS: not a whole number: 'abc'`), before any job starts:
`get_settings` turns pydantic's `ValidationError` into an `InputError` (exit 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from powerwatch.core.errors import InputError

ENV_PREFIX = "POWERWATCH_"
# A millisecond count both SQLite (`busy_timeout`, a C int) and PostgreSQL
# (`lock_timeout`, an int4 of ms) accept.
MAX_TIMEOUT_MS = 2**31 - 1
# Days back from now that Python's datetime (year 1) and any retention anyone means
# can take: 100 years.
MAX_DAYS = 36_525


class Settings(BaseSettings):
    """Read from `POWERWATCH_*` environment variables and an optional `.env` file."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///data/powerwatch.db",
        description="Any SQLAlchemy URL. SQLite is the embedded default, PostgreSQL the scale-out.",
    )
    data_dir: Path = Field(
        Path("data"), description="Landing chunks, quarantine, archive, backups, reports."
    )
    stations: Path = Field(Path("stations.yaml"), description="The station registry (YAML).")
    busy_timeout_ms: int = Field(
        30_000,
        ge=1,
        le=MAX_TIMEOUT_MS,
        description="How long a writer waits for a lock before failing (SQLite's busy "
        "timeout; PostgreSQL's lock_timeout and, rounded up to seconds, its connect_timeout).",
    )
    load_retries: int = Field(
        5,
        ge=0,
        le=100,
        description="Retries (with backoff) of a chunk load whose database is busy/unreachable.",
    )
    capture_flush_seconds: float = Field(
        2.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="A capture writes a landing chunk at least this often (seconds), then "
        "loads it: the largest share of a reading's way to the database.",
    )
    capture_load: bool = Field(
        True,
        description="A capture loads each chunk it lands at once (readings queryable in "
        "seconds); false: every chunk waits for the scheduled load (every 4 minutes).",
    )
    capture_flush_rows: int = Field(
        40_000,
        ge=1,
        le=100_000_000,
        description="... or as soon as it holds this many frames: bounds a capture's memory.",
    )
    retention_days: int = Field(
        90, ge=1, le=MAX_DAYS, description="Readings older than this move to the archive."
    )
    rejects_retention_days: int = Field(
        30,
        ge=1,
        le=MAX_DAYS,
        description="Files in quarantine/, failed/ and dead-letter/ are deleted this many "
        "days after they were written (their counts stay in the ledger and run artifacts).",
    )
    prefect_history_days: int = Field(
        14,
        ge=1,
        le=MAX_DAYS,
        description="The Prefect server (as `powerwatch` starts it) deletes finished flow "
        "runs, with their logs and artifacts, this many days after they ended.",
    )
    prefect_events_days: int = Field(
        7,
        ge=1,
        le=MAX_DAYS,
        description="... and its events after this many days (flow-run heartbeats after "
        "one day at most: they are most of the events and matter only while a run lives).",
    )
    disk_min_free_percent: float = Field(
        5.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Disk guard: write jobs refuse to start when the data folder's (or the "
        "SQLite database's) file system has less free space than the smaller of this share "
        "of its size and disk_min_free_bytes (0 turns the guard off).",
    )
    disk_min_free_bytes: int = Field(
        2_000_000_000,
        ge=0,
        le=2**62,
        description="... and this many bytes (2 GB).",
    )
    prefect_port: int = Field(
        4200,
        ge=1,
        le=65_535,
        description="Port of the Prefect server and UI that `powerwatch demo` starts.",
    )
    backup_keep_hourly: int = Field(
        24,
        ge=0,
        le=100_000,
        description="Backups kept for the most recent hours (the newest of each hour; the "
        "newest backup is always kept).",
    )
    backup_keep_daily: int = Field(
        7,
        ge=0,
        le=100_000,
        description="Backups kept for the most recent days (the newest of each day).",
    )
    energy_max_power_kw: float = Field(
        2000.0,
        gt=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="The most power one kWh meter can plausibly draw: a delta implying more "
        "is flagged and excluded from consumption (with the reason).",
    )
    energy_tz: str = Field(
        "Asia/Bangkok", description="The site's zone: energy statements' month boundaries."
    )
    silent_after: float = Field(
        120.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="A station without an accepted reading for this long (seconds) is down "
        "and raises an alert; a registered station never heard from for this long too.",
    )
    stall_after: float = Field(
        300.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="A chunk waiting in landing/ this long (seconds), or no load succeeding "
        "this long while chunks wait, raises a pipeline alert.",
    )
    health_counts_seconds: float = Field(
        60.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="Each capture run publishes one aggregate counts event this often.",
    )
    alert_webhook_url: str | None = Field(
        None,
        description="Alerts and their resolutions are POSTed here as JSON (station or "
        "pipeline, status down/up, since); unset: they show in the Prefect UI only.",
    )

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value

    @property
    def statements_dir(self) -> Path:
        """Monthly energy statements, CSV and Parquet, one pair per month and revision."""
        return self.data_dir / "statements"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        """A URL of SQLite (with a file) or PostgreSQL (port in range). Parsed here without
        SQLAlchemy, so a bad value is refused before anything heavy is imported;
        `db.engine.parse_url` parses it again with SQLAlchemy when a database is used."""
        scheme, sep, rest = value.partition("://")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9]*(\+[a-z0-9_]+)?", scheme):
            raise ValueError(f"not a database URL: {value!r}")
        backend = scheme.partition("+")[0]
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {backend!r} (use sqlite:///PATH or postgresql://...)"
            )
        if backend == "sqlite":
            database = rest.partition("?")[0]
            if not database.startswith("/") or database[1:] in ("", ":memory:"):
                raise ValueError(f"a SQLite URL needs a file: sqlite:///PATH, not {value!r}")
            return value
        try:
            port = urlsplit(value).port
        except ValueError as exc:
            raise ValueError(f"not a database URL ({exc}): {value!r}") from exc
        if port == 0:
            raise ValueError(f"port out of range (1-65535): {port}")
        return value

    @field_validator("data_dir", "stations")
    @classmethod
    def _path(cls, value: Path) -> Path:
        if not str(value).strip() or str(value) == ".":
            raise ValueError("must name a path")
        return value

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file the URL names (None for PostgreSQL); no SQLAlchemy."""
        scheme, _, rest = self.database_url.partition("://")
        if scheme.partition("+")[0] != "sqlite":
            return None
        return Path(rest.partition("?")[0][1:])

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


_WORDING = {
    "int_parsing": "not a whole number",
    "int_from_float": "not a whole number",
    "int_type": "not a whole number",
    "float_parsing": "not a number",
    "float_type": "not a number",
    "finite_number": "not a finite number",
    "path_type": "not a path",
}
_BOUNDS = {
    "greater_than": ("gt", "must be greater than"),
    "greater_than_equal": ("ge", "must be at least"),
    "less_than": ("lt", "must be less than"),
    "less_than_equal": ("le", "must be at most"),
}


def describe(error: Any) -> str:
    """One pydantic error (an `ErrorDetails`) as `POWERWATCH_NAME: reason: 'input'`."""
    field = str(error["loc"][0]) if error.get("loc") else "?"
    variable = f"{ENV_PREFIX}{field.upper()}"
    kind = str(error.get("type", ""))
    given = error.get("input")
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        reason = f"{words} {error.get('ctx', {}).get(key)}"
    elif kind == "value_error":
        return f"{variable}: {error['ctx']['error']}"
    else:
        reason = _WORDING.get(kind, str(error.get("msg", kind)))
    return f"{variable}: {reason}: {given!r}"


def get_settings() -> Settings:
    """Fresh each call (cheap): tests and the CLI change the environment between calls.

    A bad setting is bad input: `InputError` naming the first bad variable, one line.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise InputError(describe(exc.errors()[0])) from None
