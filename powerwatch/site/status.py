"""`powerwatch status`: the operator's view, in under a second and without Prefect.

Per registered station: its state (up, down, never seen), since when, the age of its
newest *stored* reading, readings delivered in the last minute and frames rejected in
the last hour; then the pipeline: chunks waiting in `landing/` and the oldest one's
age, the last successful load, and the open alerts. Liveness comes from the health
state the captures keep (`powerwatch.capture.health`), so it is as fresh as the capture (2 s),
not as the load; what is stored comes from the database. The same text, as Markdown,
is the `powerwatch-status` artifact each capture run publishes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from db.names import LOAD_BATCHES, POWER_READINGS, STATIONS
from powerwatch.capture import health
from schemas.channels import HOUR_MS

if TYPE_CHECKING:
    from db.bulk import BulkConnection


@dataclass
class Status:
    stations: pl.DataFrame
    chunks_waiting: int
    oldest_chunk_age_s: float | None
    last_load: datetime | None
    open_alerts: list[str]


def _age(now: int, ms: int | None) -> float | None:
    return None if ms is None else round((now - ms) / 1000, 1)


def collect(bulk: BulkConnection, data_dir: Path, silent_after: float) -> Status:
    now = health.now_ms()
    state = health.read_state(data_dir)
    stored = bulk.frame(
        f"SELECT s.name AS station, (SELECT q.ts FROM {POWER_READINGS} q "
        f"WHERE q.station_id = s.id ORDER BY q.ts DESC LIMIT 1) AS last_ts "
        f"FROM {STATIONS} s ORDER BY s.name"
    )
    rows: list[dict[str, Any]] = []
    alerts: list[str] = []
    for name, last_ts in stored.iter_rows():
        entry = state["stations"].get(name)
        if entry is None:  # no capture has watched it: what the database says
            value = "never seen" if last_ts is None else "down"
            reason = "no capture has watched it"
            since_ms: int | None = None if last_ts is None else int(last_ts)
        else:
            # derived now, not copied: right even when no capture is running
            value, reason, since_ms = health.station_status(entry, now, int(silent_after * 1000))
            if value == "never seen" and last_ts is not None:
                value = "down"
            if value == "waiting":
                value = "never seen" if last_ts is None else "up"
        if value in health.ALERTING:
            alerts.append(f"station {name}: {value} since {health.iso(since_ms)} ({reason})")
        rows.append(
            {
                "station": name,
                "state": value,
                "since": health.iso(since_ms),
                "last stored reading age s": _age(now, None if last_ts is None else int(last_ts)),
                "readings last minute": 0
                if entry is None
                else health.minute_counts(entry, "readings", now - 60_000),
                "rejects last hour": 0
                if entry is None
                else health.minute_counts(entry, "rejects", now - HOUR_MS),
                "reason": reason,
            }
        )
    waiting: list[int] = []
    landing_dir = data_dir / "landing"
    if landing_dir.is_dir():
        with os.scandir(landing_dir) as entries:
            for item in entries:
                if item.name.endswith(".parquet") and not item.name.startswith("."):
                    waiting.append(item.stat().st_mtime_ns // 1_000_000)
    last = bulk.frame(
        f"SELECT max(finished_at) AS last FROM {LOAD_BATCHES} WHERE status = 'committed'"
    )
    last_load = _when(last.item(0, 0)) if last.height else None
    pipe = state.get("pipeline", {})
    if pipe.get("state") == "down":
        alerts.append(f"pipeline: down since {health.iso(pipe.get('since_ms'))} ({pipe['reason']})")
    return Status(
        stations=pl.DataFrame(rows),
        chunks_waiting=len(waiting),
        oldest_chunk_age_s=_age(now, min(waiting)) if waiting else None,
        last_load=last_load,
        open_alerts=alerts,
    )


def _when(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    moment = datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def pipeline_lines(status: Status) -> list[str]:
    oldest = "" if status.oldest_chunk_age_s is None else f", oldest {status.oldest_chunk_age_s} s"
    load = status.last_load.isoformat(timespec="seconds") if status.last_load else "never"
    return [
        f"chunks waiting: {status.chunks_waiting}{oldest}",
        f"last successful load: {load}",
        f"open alerts: {len(status.open_alerts)}",
        *(f"  {alert}" for alert in status.open_alerts),
    ]


def markdown(status: Status) -> str:
    frame = status.stations
    header = frame.columns
    return "\n".join(
        [
            f"Status at {datetime.now(UTC).isoformat(timespec='seconds')}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(str(v) for v in row) + " |" for row in frame.iter_rows()),
            "",
            *(f"- {line}" for line in pipeline_lines(status)),
        ]
    )
