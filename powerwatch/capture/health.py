"""Live health: which stations deliver readings, whether the pipeline moves; as Prefect events.

Health follows readings, not sockets. Every capture run keeps, per station, the receive
time of the newest *accepted reading* (and of the newest frame of any kind) and, every
`TICK_SECONDS`, folds them into one shared file, `DATA_DIR/health/state.json`, under an
exclusive lock (`flock`). The file keeps the newest reading time any capture has seen,
so a window that ends and the one that takes over (they overlap by design) write into
the same history: a hand-over is no outage, and a new window starts from the state the
previous one left (down stays down, a station silent across the gap is not up).

The state of a station is derived, never remembered as a flag alone:
    up          its newest reading is younger than `POWERWATCH_SILENT_AFTER` seconds;
    down        it is older (frames still arriving but every one rejected says so in
                the reason);
    never seen  no reading since health has watched it, for `SILENT_AFTER` seconds.
A change between "alerting" (down, never seen) and up is emitted exactly once, by the
run that makes it under the lock, as a Prefect event on the resource
`powerwatch.station.<name>`: `powerwatch.station.down` / `powerwatch.station.up`, with
`station`, `status`, `since` (ISO-8601 UTC) and `reason` in the payload. The pipeline
is one more resource, `powerwatch.pipeline.load`: down while a chunk has waited in
`landing/` longer than `POWERWATCH_STALL_AFTER`, or chunks wait and no load has
succeeded for that long. Counts go out as one aggregate `powerwatch.capture.counts`
event per run every `POWERWATCH_HEALTH_COUNTS_SECONDS`: the event load is bounded by
state changes plus one event a minute per run, whatever the number of stations.

`powerwatch status` reads the same file (no Prefect) and the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from powerwatch.core.files import write_text_atomically

logger = logging.getLogger(__name__)

TICK_SECONDS = 2.0  # how often a capture folds its view into the shared state
MINUTES_KEPT = 60  # per-minute counts kept (rejects in the last hour)
ALERTING = ("down", "never seen")
PIPELINE = "load"
STATE_FILE = "state.json"


def iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Change:
    """One state change, as it goes out as an event and into the webhook."""

    kind: str  # station | pipeline
    name: str
    status: str  # down | up
    since_ms: int
    reason: str

    @property
    def event(self) -> str:
        return f"powerwatch.{self.kind}.{self.status}"

    @property
    def resource_id(self) -> str:
        return f"powerwatch.{self.kind}.{self.name}"

    def payload(self) -> dict[str, str]:
        return {
            self.kind: self.name,
            "status": self.status,
            "since": iso(self.since_ms),
            "reason": self.reason,
        }


@dataclass
class Seen:
    """What one capture run saw of a station since its last tick."""

    last_reading_ms: int | None = None
    last_frame_ms: int | None = None
    readings: int = 0
    rejects: int = 0


def health_dir(data_dir: Path) -> Path:
    return data_dir / "health"


def read_state(data_dir: Path) -> dict[str, Any]:
    """The shared state (empty before any capture ran); never locked: written atomically."""
    try:
        state: dict[str, Any] = json.loads((health_dir(data_dir) / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"stations": {}, "pipeline": {}}
    return state


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[dict[str, Any]]:
    folder = health_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = read_state(data_dir)
            yield state
            write_text_atomically(folder / STATE_FILE, json.dumps(state, separators=(",", ":")))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def station_status(entry: dict[str, Any], now: int, silent_ms: int) -> tuple[str, str, int]:
    """(state, reason, since ms) of a station entry of the shared state."""
    last = entry.get("last_reading_ms")
    frame = entry.get("last_frame_ms")
    if last is None:
        watched = int(entry.get("watched_ms", now))
        if now - watched >= silent_ms:
            rejected = frame is not None and now - frame < silent_ms
            return "never seen", "every frame rejected" if rejected else "never seen", watched
        return "waiting", "", watched
    if now - last >= silent_ms:
        rejected = frame is not None and now - frame < silent_ms
        reason = "every frame rejected" if rejected else f"no reading for {silent_ms // 1000} s"
        return "down", reason, int(last)
    return "up", "", int(entry.get("up_since_ms", last))


def pipeline_status(
    landing_dir: Path, loaded_dir: Path, last_load_ms: int | None, now: int, stall_ms: int
) -> tuple[str, str, int]:
    """(state, reason, since ms): down while a chunk waits too long or loads stopped."""
    oldest: int | None = None
    with contextlib.suppress(FileNotFoundError), os.scandir(landing_dir) as entries:
        for entry in entries:
            if entry.name.endswith(".parquet") and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    mtime = entry.stat().st_mtime_ns // 1_000_000
                    oldest = mtime if oldest is None else min(oldest, mtime)
    if oldest is None:
        return "up", "", now
    if now - oldest >= stall_ms:
        return "down", f"a chunk has waited {(now - oldest) // 1000} s in landing/", oldest
    with contextlib.suppress(FileNotFoundError):
        last_load_ms = max(last_load_ms or 0, loaded_dir.stat().st_mtime_ns // 1_000_000)
    if last_load_ms is not None and now - last_load_ms >= stall_ms and now - oldest >= stall_ms:
        return "down", "no load succeeded while chunks wait", last_load_ms
    return "up", "", now


def fold(
    data_dir: Path,
    seen: dict[str, Seen],
    *,
    run: str,
    silent_after: float,
    stall_after: float,
    now: int | None = None,
) -> list[Change]:
    """Fold one run's view into the shared state; the state changes this made (to emit)."""
    now = now_ms() if now is None else now
    silent_ms = int(silent_after * 1000)
    changes: list[Change] = []
    minute = str(now // 60_000)
    with _locked(data_dir) as state:
        stations: dict[str, Any] = state.setdefault("stations", {})
        for name, view in seen.items():
            entry = stations.setdefault(name, {"watched_ms": now, "state": "waiting"})
            for key, value in (
                ("last_reading_ms", view.last_reading_ms),
                ("last_frame_ms", view.last_frame_ms),
            ):
                if value is not None:
                    entry[key] = max(int(entry.get(key) or 0), value)
            # Per-minute counts per run: overlapping windows see the same frames, so a
            # minute counts as its busiest run's (`minute_counts`), never their sum.
            for key, count in (("readings", view.readings), ("rejects", view.rejects)):
                buckets: dict[str, dict[str, int]] = entry.setdefault(key, {})
                runs = buckets.setdefault(minute, {})
                runs[run] = runs.get(run, 0) + count
                for old in [m for m in buckets if int(m) <= int(minute) - MINUTES_KEPT]:
                    del buckets[old]
            before = entry.get("state", "waiting")
            new, reason, since = station_status(entry, now, silent_ms)
            if new == "up" and before != "up":
                entry["up_since_ms"] = now if before in ALERTING else since
                since = entry["up_since_ms"]
            if new in ALERTING and before not in ALERTING:
                changes.append(Change("station", name, "down", since, reason))
            elif new == "up" and before in ALERTING:
                changes.append(Change("station", name, "up", now, "readings again"))
            if new != before:
                entry["since_ms"] = since
            entry["state"], entry["reason"] = new, reason
        state["updated_ms"] = now
        pipe: dict[str, Any] = state.setdefault("pipeline", {})
        new, reason, since = pipeline_status(
            data_dir / "landing", data_dir / "loaded", pipe.get("last_load_ms"), now,
            int(stall_after * 1000),
        )  # fmt: skip
        before = pipe.get("state", "up")
        if new != before:
            changes.append(Change("pipeline", PIPELINE, new, since if new == "down" else now,
                                  reason or "loads again"))  # fmt: skip
            pipe["since_ms"] = since if new == "down" else now
        pipe["state"], pipe["reason"] = new, reason
    return changes


def minute_counts(entry: dict[str, Any], key: str, since_ms: int) -> int:
    """Readings (or rejects) a station delivered from `since_ms` on, by whole minutes."""
    buckets: dict[str, dict[str, int]] = entry.get(key, {})
    first = since_ms // 60_000
    return sum(max(runs.values(), default=0) for m, runs in buckets.items() if int(m) >= first)


def emit(changes: list[Change]) -> None:
    """The changes as Prefect events (no-op without a Prefect API); never raises."""
    if not changes:
        return
    try:
        from prefect.events import emit_event

        for change in changes:
            emit_event(
                event=change.event,
                resource={
                    "prefect.resource.id": change.resource_id,
                    "prefect.resource.name": change.name,
                    f"powerwatch.{change.kind}": change.name,
                },
                payload=change.payload(),
            )
            logger.warning("health: %s %s since %s (%s)", change.kind, change.name,
                           iso(change.since_ms), change.reason or change.status)  # fmt: skip
    except Exception as exc:  # health must never stop a capture
        logger.error("health: could not emit %d event(s): %s", len(changes), exc)


def emit_counts(run: str, seen_total: dict[str, list[int]], states: dict[str, int]) -> None:
    """One aggregate event per run and interval: readings/rejects per station since the last."""
    try:
        from prefect.events import emit_event

        emit_event(
            event="powerwatch.capture.counts",
            resource={"prefect.resource.id": f"powerwatch.capture.{run}"},
            payload={
                "readings": sum(v[0] for v in seen_total.values()),
                "rejects": sum(v[1] for v in seen_total.values()),
                "states": states,
                "per_station": {k: v for k, v in seen_total.items() if v != [0, 0]},
            },
        )
    except Exception as exc:
        logger.error("health: could not emit the counts event: %s", exc)
