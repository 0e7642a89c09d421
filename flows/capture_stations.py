"""Flow `capture-stations`: every registered station, live, into landing chunks.

A run is bounded (`duration`) and the deployment starts one every 5 minutes with a
window longer than the interval: consecutive runs overlap, so the hand-over never
drops a reading, and the load step stores the overlap's copies once (see
docs/design.md, "Capture").

Each chunk a run lands is loaded by the run itself, at once, through the scheduled
load's own per-chunk path (claim, ledger under the write lock): a reading is queryable
seconds after it arrived. What it cannot load waits in landing/ for `load-chunks`, the
sweeper (docs/design.md, "Live load").
"""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.naming import stamped
from powerwatch.capture.live_load import LiveLoader
from powerwatch.capture.runner import CaptureReport, run_capture
from powerwatch.core.diskguard import low_space
from powerwatch.core.settings import Settings, get_settings
from schemas.registry import load_registry


def live_loader(settings: Settings, logger: Any) -> LiveLoader | None:
    """The sweep's per-chunk load (`load_chunk_task`'s function; no task run per chunk: one
    every two seconds would flood the UI and the server), if the sweep's schema check
    passes now; if not (no database, an old schema, unreachable), this run leaves every
    chunk to `load-chunks`, which says why, and the next run checks again."""
    from powerwatch.load.store import require_schema
    from tasks.load import load_chunk_task

    try:
        require_schema(settings.database_url, "live load")
    except Exception as exc:
        logger.warning("live load off for this run, chunks wait for load-chunks: %s", exc)
        return None
    return LiveLoader(load_chunk_task.fn)


def publish_status(settings: Settings, logger: Any) -> None:
    """`powerwatch status` as the `powerwatch-status` artifact: each run ends with it
    (one per window), so the UI shows the site's state without opening a run."""
    from db.engine import bulk_connection
    from powerwatch.site.status import collect, markdown

    try:
        with bulk_connection(create=False) as bulk:
            status = collect(bulk, settings.data_dir, settings.silent_after)
    except Exception as exc:  # a status is a view: never fails the capture
        logger.warning("status artifact not published: %s", exc)
        return
    create_markdown_artifact(
        key="powerwatch-status",
        markdown=markdown(status),
        description=f"{len(status.open_alerts)} open alert(s)",
    )


@flow(name="capture-stations", flow_run_name=stamped("capture-stations"), log_prints=True)
def capture_stations(
    duration: float | None = None,
    flush_seconds: float | None = None,
    flush_rows: int | None = None,
    load: bool | None = None,
) -> CaptureReport:
    """Runbook: read the registry, capture until the window ends (or a signal), publish the
    run's account; a signal ends the run as that signal says, after everything is flushed.

    `load`: the run loads each chunk it lands (False: every chunk waits for `load-chunks`;
    None: POWERWATCH_CAPTURE_LOAD)."""
    settings = get_settings()
    logger = get_run_logger()
    live = settings.capture_load if load is None else load
    report, interruption = run_capture(
        load_registry(settings.stations),
        settings.landing_dir,
        settings.dead_letter_dir,
        duration=duration,
        flush_seconds=settings.capture_flush_seconds if flush_seconds is None else flush_seconds,
        flush_rows=settings.capture_flush_rows if flush_rows is None else flush_rows,
        data_dir=settings.data_dir,
        silent_after=settings.silent_after,
        stall_after=settings.stall_after,
        counts_seconds=settings.health_counts_seconds,
        loader=live_loader(settings, logger) if live else None,
        disk_guard=partial(low_space, settings, "capture's next write"),
    )
    create_markdown_artifact(
        key="capture-stations",
        markdown=report.markdown(),
        description=f"{report.readings} readings in {len(report.chunks)} chunks",
    )
    publish_status(settings, logger)
    logger.info(
        "capture ended by %s: %d frames, %d readings, rejected %s, %d chunks, "
        "%d station task crashes, %d failed flushes; %s",
        report.ended_by,
        report.frames,
        report.readings,
        report.rejects or "none",
        len(report.chunks),
        report.crashes,
        report.flush_failures,
        report.live_line(),
    )
    if interruption is not None:
        # Everything is flushed and published: now the signal ends the run as it ends any
        # (Prefect: Cancelled when its runner cancelled it, else Crashed; Ctrl-C: exit 130).
        raise interruption
    if report.failure is not None:  # the last write failed too: frames unwritten (exit 1)
        raise report.failure
    return report
