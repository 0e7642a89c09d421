"""The `powerwatch` command line (spec/cli.md).

Query commands read the database directly and never import Prefect, so they
answer at once; job commands run their Prefect flow (visible in the UI when
PREFECT_API_URL points at a server). Errors are one line on stderr, exit 2 for
bad usage/input and 1 for a job that ran but failed.

Everything that can be checked is checked before a job starts: every argument by its
argparse type (bounds included), every setting once at the top of `main` (before
Prefect is imported), the registry of a capture, and that the database exists (only
`db upgrade` and `restore` create one; read-only commands also open it with
`create=False`). A failure met later is named (`db.failures.classify`: damaged, disk
full, I/O, busy/unreachable) and printed as one line, whatever path it took.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from powerwatch.core.errors import PowerwatchError, from_os_error
from powerwatch.site.jobs import JOBS, flow_imports, run_job

if TYPE_CHECKING:
    from prefect import State

    from db.bulk import BulkConnection
    from powerwatch.archive.plan import ArchiveRun


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: operators and scripts read the reason.
        self.exit(2, f"{self.prog}: error: {message}\n")


# Bounds of what the databases and Python can take: LIMIT/OFFSET are 64-bit in SQLite and
# PostgreSQL; days back from now must stay a datetime (MAX_DAYS: 100 years); seconds for a
# duration or flush stay far below asyncio's and datetime's limits (MAX_SECONDS: 10 years).
MAX_ROWS = 2**63 - 1
MAX_SECONDS = 315_576_000.0
MAX_STATIONS = 10_000
# Earliest/latest instant a reading time filter may name: epoch milliseconds of year 1 and
# 9999 fit an int64, and `datetime.timestamp()` works for them in every zone.
_FIRST = datetime(1, 1, 2, tzinfo=UTC)
_LAST = datetime(9999, 12, 30, tzinfo=UTC)


def _moment(text: str) -> datetime:
    """ISO-8601; a time without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from exc
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    try:
        inside = _FIRST <= moment <= _LAST
    except OverflowError:
        inside = False
    if not inside:
        raise argparse.ArgumentTypeError(
            f"out of range ({_FIRST:%Y-%m-%d} to {_LAST:%Y-%m-%d}): {text!r}"
        )
    return moment


def _whole(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < low:
        words = "must be positive" if low == 1 else f"must be at least {low}"
        raise argparse.ArgumentTypeError(f"{words}: {text!r}")
    if value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high}: {text!r}")
    return value


def _rows(text: str) -> int:
    """A row count for LIMIT: 1 .. 2**63-1."""
    return _whole(text, 1, MAX_ROWS)


def _offset(text: str) -> int:
    """Rows to skip: 0 .. 2**63-1."""
    return _whole(text, 0, MAX_ROWS)


def _flush_rows(text: str) -> int:
    return _whole(text, 1, 100_000_000)  # as POWERWATCH_CAPTURE_FLUSH_ROWS


def _days(text: str) -> int:
    from powerwatch.core.settings import MAX_DAYS

    return _whole(text, 1, MAX_DAYS)


def _station_count(text: str) -> int:
    return _whole(text, 1, MAX_STATIONS)


def _port(text: str) -> int:
    """A first TCP port, or 0 for free ports."""
    return _whole(text, 0, 65_535)


def _seed(text: str) -> int:
    return _whole(text, 0, 2**32 - 1)


def _positive_float(text: str, high: float = MAX_SECONDS) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    if value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high:g}: {text!r}")
    return value


def _seconds(text: str) -> float:
    return _positive_float(text, MAX_SECONDS)


def _rate(text: str) -> float:
    """Frames per second per station: above 1,000 no station sends."""
    return _positive_float(text, 1_000.0)


# --- query commands (no Prefect) ------------------------------------------------------


def _require_database() -> None:
    """Every command but `db upgrade` / `restore`: the database must exist (exit 1 if not).

    Checked from the settings alone, before anything heavy is imported (the same check as
    `db.engine.require_database`, which the engines of read-only commands apply again)."""
    from powerwatch.core.errors import SchemaVersionError
    from powerwatch.core.settings import get_settings

    path = get_settings().sqlite_file
    if path is not None and not path.is_file():
        raise SchemaVersionError(f"no database at {path}: run `powerwatch db upgrade`")


def _require_station(bulk: BulkConnection, station: str | None) -> None:
    """One rule for every query command: an unknown station is bad input (exit 2)."""
    if station is not None:
        from powerwatch.rollups.queries import require_station_id

        require_station_id(bulk, station)


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from db.engine import check_connection, check_integrity, make_engine
    from db.migrate import current_revision, upgrade

    engine = make_engine()
    check_connection(engine)
    check_integrity(engine)  # a damaged file is reported, never "upgraded"
    upgrade(engine)
    print(f"database at schema version {current_revision(engine)}")
    return 0


def cmd_stations_sync(args: argparse.Namespace) -> int:
    from db.engine import make_engine
    from db.migrate import require_current
    from db.stations import sync_stations
    from powerwatch.core.settings import get_settings
    from schemas.registry import load_registry

    path = args.file or get_settings().stations
    registry = load_registry(path)
    _require_database()
    engine = make_engine(create=False)
    require_current(engine)
    result = sync_stations(engine, registry)
    print(f"{path}: {result.added} added, {result.updated} updated, {result.unchanged} unchanged")
    return 0


def _query_connection() -> AbstractContextManager[BulkConnection]:
    """SQLite: the stdlib reader (`db.reader`, no SQLAlchemy/ADBC/Alembic import);
    PostgreSQL: the engine's ADBC connection after the schema check."""
    from powerwatch.core.settings import get_settings

    settings = get_settings()
    path = settings.sqlite_file
    if path is not None:
        from typing import cast

        from db.reader import read_connection

        # The read half of BulkConnection, which is all a query command uses.
        return cast(
            "AbstractContextManager[BulkConnection]",
            read_connection(path, settings.busy_timeout_ms),
        )
    return _database_connection()


def _database_connection() -> AbstractContextManager[BulkConnection]:
    """The ADBC connection, after the schema check: for commands that also write (statement)."""
    from db.engine import bulk_connection, check_connection, make_engine
    from db.migrate import require_current

    engine = make_engine(create=False)
    check_connection(engine)
    require_current(engine)
    return bulk_connection(create=False)


def cmd_stations_list(args: argparse.Namespace) -> int:
    _require_database()  # before the heavy imports
    from db.queries import station_summary
    from powerwatch.site.output import write_frame

    with _query_connection() as bulk:
        write_frame(station_summary(bulk), args.format)
    return 0


def cmd_readings(args: argparse.Namespace) -> int:
    _require_database()  # before the heavy imports
    from db.queries import ReadingFilter, iter_readings
    from powerwatch.site.output import write_csv, write_json_lines, write_table

    where = ReadingFilter(
        station=args.station, start=args.start, end=args.end, limit=args.limit, offset=args.offset
    )
    with _query_connection() as bulk:
        _require_station(bulk, args.station)
        frames = iter_readings(bulk, where)
        if args.format == "csv":
            write_csv(frames)
        elif args.format == "json":
            write_json_lines(frames)
        else:
            import polars as pl

            from db.queries import READING_SCHEMA

            write_table(pl.concat([pl.DataFrame(schema=READING_SCHEMA), *frames]))
    return 0


def cmd_latest(args: argparse.Namespace) -> int:
    _require_database()  # before the heavy imports
    from db.queries import latest
    from powerwatch.site.output import write_frame

    with _query_connection() as bulk:
        _require_station(bulk, args.station)
        write_frame(latest(bulk, args.station), args.format)
    return 0


def _day(text: str) -> date:
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from exc
    if not _FIRST.date() <= day < _LAST.date():
        raise argparse.ArgumentTypeError(
            f"out of range ({_FIRST:%Y-%m-%d} to {_LAST:%Y-%m-%d}): {text!r}"
        )
    return day


def cmd_rollups(args: argparse.Namespace) -> int:
    """Stored hourly/daily rollups; e.g. powerwatch rollups --station KhonKaen --interval day"""
    _require_database()  # before the heavy imports
    import polars as pl

    from db.rollup_queue import pending_hours
    from powerwatch.rollups.queries import rollups
    from powerwatch.site.output import CSV_TIME_FORMAT, write_table

    with _query_connection() as bulk:
        frame = rollups(bulk, args.interval, station=args.station, start=args.start, end=args.end)
        pending = pending_hours(bulk)
    times = pl.col(pl.Datetime).dt.strftime(CSV_TIME_FORMAT)
    if args.format == "csv":
        sys.stdout.write(frame.with_columns(times).write_csv(null_value=""))
    elif args.format == "json":
        sys.stdout.write(frame.with_columns(times).write_ndjson() if frame.height else "")
    else:  # for people: averages and consumption, narrow enough to read; csv/json: all
        write_table(
            frame.select(
                pl.col("station", "start", "samples"),
                *(pl.col(f"activePower{i}_avg").round(1).alias(f"P{i} W") for i in range(1, 7)),
                *(pl.col(f"muxPower{i}_kwh").round(3).alias(f"mux{i} kWh") for i in range(1, 5)),
                pl.sum_horizontal(pl.col(r"^muxPower\d_estimated_kwh$")).round(3).alias("est kWh"),
                *(
                    pl.sum_horizontal(pl.col(rf"^muxPower\d_{k}$")).alias(k)
                    for k in ("resets", "wraps", "gaps", "flagged")
                ),
            ),
            sys.stdout,
        )
    if pending:
        print(
            f"powerwatch: note: {pending} station-hour(s) wait for `powerwatch refresh-rollups`",
            file=sys.stderr,
        )
    return 0


def cmd_statement(args: argparse.Namespace) -> int:
    """The energy statement of a month per station and broadcaster; a closed month is
    issued (recorded as a revision, written under $POWERWATCH_DATA_DIR/statements/)."""
    import polars as pl

    from powerwatch.core.settings import get_settings
    from powerwatch.rollups.queries import require_station_id
    from powerwatch.rollups.statements import issue_statement, month_period
    from powerwatch.site.output import CSV_TIME_FORMAT, write_table

    settings = get_settings()
    tz = args.tz or settings.energy_tz
    _start, end = month_period(args.month, tz)
    # Issuing records a revision: the writing connection, not the stdlib reader.
    with _database_connection() as bulk:
        if args.station is not None:
            require_station_id(bulk, args.station)
        if end <= datetime.now(UTC).timestamp() * 1000:
            issued = issue_statement(bulk, args.month, tz, settings.statements_dir)
            frame, revision = issued.statement, issued.revision
            note = f"revision {revision}" + (" (new)" if issued.new else "")
            note += "".join(f"\n  changed: {line}" for line in issued.changes)
            note += f"\n  files: {', '.join(str(f) for f in issued.files)}"
        else:
            from powerwatch.rollups.statements import compute_statement

            frame = compute_statement(bulk, args.month, tz)
            note = "provisional: the month has not closed, nothing issued"
    if args.station is not None:
        frame = frame.filter(pl.col("station") == args.station)
    times = pl.col(pl.Datetime).dt.strftime(CSV_TIME_FORMAT)
    if args.format == "csv":
        sys.stdout.write(frame.with_columns(times).write_csv(null_value=""))
    elif args.format == "json":
        sys.stdout.write(frame.with_columns(times).write_ndjson() if frame.height else "")
    else:
        write_table(
            frame.select(
                "station",
                "broadcaster",
                pl.col("opening_kwh").round(2).alias("opening kWh"),
                pl.col("closing_kwh").round(2).alias("closing kWh"),
                pl.col("consumption_kwh").round(3).alias("kWh"),
                pl.col("estimated_kwh").round(3).alias("est kWh"),
                "resets",
                "wraps",
                "flagged",
                pl.col("completeness").round(4),
                pl.col("share").round(4),
            ),
            sys.stdout,
        )
    print(f"powerwatch: statement {args.month} ({tz}): {note}", file=sys.stderr)
    return 0


def cmd_completeness(args: argparse.Namespace) -> int:
    """Readings received vs expected on one day, with the missing ranges."""
    _require_database()  # before the heavy imports
    import json

    import polars as pl

    from powerwatch.core.settings import get_settings
    from powerwatch.rollups.completeness import completeness
    from powerwatch.site.output import CSV_TIME_FORMAT, write_frame, write_table

    archive = get_settings().data_dir / "archive"
    with _query_connection() as bulk:
        result = completeness(bulk, args.station, args.day, archive_dir=archive)
    missing = result.missing.with_columns(pl.col("start", "end").dt.strftime(CSV_TIME_FORMAT))
    if args.format == "json":
        print(json.dumps(result.summary() | {"missing": missing.to_dicts()}))
    elif args.format == "csv":  # the summary row, a blank line, then the missing ranges
        write_frame(pl.DataFrame([result.summary()]), "csv", sys.stdout)
        sys.stdout.write("\n")
        write_frame(result.missing, "csv", sys.stdout)
    else:
        write_table(pl.DataFrame([result.summary()]), sys.stdout)
        write_table(missing, sys.stdout)
    return 0


# --- job commands (Prefect flows) -----------------------------------------------------


def _frame(rows: list[dict[str, object]]) -> Any:
    import polars as pl

    return pl.DataFrame(rows)


def _exit_status(state: State[Any], job: str) -> int:
    """0 for a completed flow run; otherwise one line on stderr and the failure's exit code
    (a named failure the flow raised speaks for itself; else the run's message)."""
    if state.is_completed():
        return 0
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # no result to read (crashed before one): the message says why
        result = exc
    if isinstance(result, BaseException) and (failure := _failure(result)) is not None:
        print(f"powerwatch: {job} failed: {failure}", file=sys.stderr)
        return failure.exit_code
    print(f"powerwatch: {job} failed: {_first_line(state.message)}", file=sys.stderr)
    return 1


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "failed"


def _nothing_to_load(landing: Path) -> bool:
    """No chunk in landing/ and no claim a dead loader may have left: the flow would
    load nothing. Names only (as `landing.list_chunks` / `recover_claims` look)."""
    if not landing.is_dir():
        return True
    for path in landing.iterdir():
        if path.suffix == ".parquet" and not path.name.startswith("."):
            return False
    claimed = landing / ".claimed"  # landing.CLAIMED (that module imports polars)
    return not (claimed.is_dir() and any(claimed.iterdir()))


def _has_files(paths: Sequence[Path]) -> bool:
    """Whether `migration.discover` would find any file under `paths`."""
    for path in paths:
        if path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*"))):
            return True
    return False


def cmd_load(_args: argparse.Namespace) -> int:
    _require_database()
    from powerwatch.core.settings import get_settings

    if _nothing_to_load(get_settings().landing_dir):
        # Decided before Prefect is imported: the flow's own output for no chunk.
        from powerwatch.load.reports import load_summary_rows
        from powerwatch.site.output import write_table

        write_table(_frame(load_summary_rows([])))
        return 0
    import polars as pl

    with flow_imports():  # work to do: Prefect, its temporary server if none is set (jobs.py)
        from flows.load_chunks import load_chunks
    from powerwatch.load.reports import load_details, load_rate, load_summary_rows
    from powerwatch.site.output import write_table

    state = load_chunks(return_state=True)
    reports = state.result(raise_on_failure=False)
    if isinstance(reports, list):
        write_table(pl.DataFrame(load_summary_rows(reports)))
        print(load_rate(reports))
        for line in load_details(reports):
            print(line.removeprefix("- ").replace("`", ""))
    return _exit_status(state, "load")


def cmd_simulate(args: argparse.Namespace) -> int:
    from powerwatch.core.errors import InputError

    if args.port and args.port + args.count - 1 > 65_535:
        raise InputError(f"--port {args.port} --count {args.count}: ports beyond 65535")
    from powerwatch.core.settings import get_settings
    from powerwatch.devtools.simulator import Outage, simulate

    outages = [Outage.parse(text) for text in args.outage]
    names = {f"SIM-{i + 1:04d}" for i in range(args.count)}
    for outage in outages:
        if outage.name not in names:
            raise InputError(f"--outage {outage.name}: no such simulated station (SIM-0001..)")
    simulate(
        args.count,
        args.rate,
        args.port,
        args.faults,
        registry_path=get_settings().stations,
        duration=args.duration,
        seed=args.seed,
        outages=outages,
    )
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from powerwatch.core.settings import get_settings
    from schemas.registry import load_registry

    load_registry(get_settings().stations)  # missing or malformed: exit 2 before the flow
    import polars as pl

    with flow_imports():  # work to do: Prefect, its temporary server if none is set (jobs.py)
        from flows.capture_stations import capture_stations
    from powerwatch.site.output import write_table

    state = capture_stations(
        duration=args.duration,
        flush_seconds=args.flush_seconds,
        flush_rows=args.flush_rows,
        return_state=True,
    )
    report = state.result(raise_on_failure=False)
    if not state.is_completed() or isinstance(report, BaseException):
        print(f"powerwatch: capture failed: {state.message}", file=sys.stderr)
        return 1
    write_table(pl.DataFrame(report.rows()))
    print(
        f"{report.frames} frames, {report.readings} readings, rejected {report.rejects or 'none'}; "
        f"{len(report.chunks)} chunks; dead letters: {report.dead_letter or 'none'}; "
        f"{report.crashes} station task crashes, {report.flush_failures} failed flushes"
    )
    print(report.live_line())
    return 0


def cmd_migrate_logs(args: argparse.Namespace) -> int:
    import zoneinfo

    from powerwatch.core.errors import InputError

    # Bad input first, before anything heavy is imported (exit 2); then the database.
    for path in args.paths:
        if not path.exists():
            raise InputError(f"no such file or folder: {path}")
    if args.tz is not None:
        try:
            zoneinfo.ZoneInfo(args.tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise InputError(f"unknown time zone {args.tz!r}") from exc
    if args.report is not None and not args.report.parent.is_dir():
        raise InputError(f"--report {args.report}: no such folder {args.report.parent}")
    _require_database()
    if not _has_files(args.paths):
        # Nothing to import, decided before Prefect is imported: the flow's own report.
        from powerwatch.legacy.report import MigrationReport
        from powerwatch.site.output import write_table

        empty = MigrationReport()
        write_table(_frame(empty.rows()), sys.stdout)
        if args.report is not None:
            empty.write_json(args.report)
        return 0
    import polars as pl

    from powerwatch.legacy.migration import discover
    from powerwatch.legacy.parsers import DEFAULT_TZ, check_time_zone
    from powerwatch.legacy.report import MigrationReport
    from powerwatch.site.output import write_table

    tz = args.tz or DEFAULT_TZ
    check_time_zone(tz)  # bad input is refused before anything starts (exit 2)
    discover(args.paths)
    with flow_imports():  # work to do: Prefect, its temporary server if none is set (jobs.py)
        from flows.migrate_logs import migrate_logs
    from powerwatch.core.progress import terminal_bar

    # A bar (bytes, lines/s, ETA) on a terminal only: never in CI logs or pipes.
    with terminal_bar("migrate-logs"):
        state = migrate_logs(
            paths=[str(p) for p in args.paths], tz=tz, force=args.force, return_state=True
        )
    report = state.result(raise_on_failure=False)
    if isinstance(report, PowerwatchError):
        raise report
    if not isinstance(report, MigrationReport):
        return _exit_status(state, "migrate-logs") or 1
    write_table(pl.DataFrame(report.rows()), sys.stdout)
    print(report.summary())
    if args.report is not None:
        report.write_json(args.report)
    return _exit_status(state, "migrate-logs")


def cmd_refresh_rollups(_args: argparse.Namespace) -> int:
    _require_database()
    from db.rollup_queue import pending_hours

    with _query_connection() as bulk:
        queued = pending_hours(bulk)
    if not queued:  # decided before Prefect is imported: nothing queued, nothing to refresh
        print("0 queued station-hour(s): the rollups are up to date")
        return 0
    with flow_imports():  # work to do: Prefect, its temporary server if none is set (jobs.py)
        from flows.refresh_rollups import refresh_rollups

    state = refresh_rollups(return_state=True)
    return _exit_status(state, "refresh-rollups")


def cmd_status(_args: argparse.Namespace) -> int:
    _require_database()  # before the heavy imports
    from powerwatch.core.settings import get_settings
    from powerwatch.site.output import write_table
    from powerwatch.site.status import collect, pipeline_lines

    settings = get_settings()
    with _query_connection() as bulk:
        status = collect(bulk, settings.data_dir, settings.silent_after)
    write_table(status.stations)
    print("\n".join(pipeline_lines(status)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from powerwatch.core.settings import get_settings
    from powerwatch.devtools.demo import run_site, setup_step

    if args.setup:  # the site's own child (powerwatch.devtools.demo._setup_in_child)
        return setup_step(get_settings(), args.setup, simulate=False)
    return run_site(get_settings(), simulate=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from powerwatch.core.errors import InputError
    from powerwatch.core.settings import get_settings
    from powerwatch.devtools.demo import DEMO_STATIONS, run_demo
    from powerwatch.devtools.simulator import Outage

    if args.setup:  # the site's own child (powerwatch.devtools.demo._setup_in_child)
        from powerwatch.devtools.demo import setup_step

        return setup_step(get_settings(), args.setup, simulate=True)
    for text in args.outage:
        if Outage.parse(text).name not in {f"SIM-{i + 1:04d}" for i in range(DEMO_STATIONS)}:
            raise InputError(f"--outage {text}: the demo's stations are SIM-0001..SIM-0005")
    return run_demo(get_settings(), args.outage)


def _print_archive_run(run: ArchiveRun) -> None:
    from powerwatch.archive.plan import summary_rows
    from powerwatch.site.output import write_table

    print(
        f"cut-off {run.cutoff.before:%Y-%m-%d} (retention counted back from "
        f"{run.cutoff.reference:%Y-%m-%d %H:%M} UTC)"
    )
    write_table(_frame(summary_rows(run)), sys.stdout)  # the stdout of now


def cmd_archive(args: argparse.Namespace) -> int:
    _require_database()
    from powerwatch.archive.plan import ArchiveRun, nothing_to_do
    from powerwatch.core.settings import get_settings

    settings = get_settings()
    days = settings.retention_days if args.older_than is None else args.older_than
    with _query_connection() as bulk:
        idle = nothing_to_do(bulk, settings.archive_dir, days)
    if idle is not None:
        # Decided before Prefect is imported: the flow's own output for no day to archive.
        _print_archive_run(ArchiveRun(idle, [], [], None))
        return 0
    with flow_imports():  # work to do: Prefect, its temporary server if none is set (jobs.py)
        from flows.archive_readings import archive_readings
    from powerwatch.core.progress import terminal_bar

    with terminal_bar("archive"):  # days, readings/s, ETA; on a terminal only
        state = archive_readings(older_than_days=args.older_than, return_state=True)
    run = state.result(raise_on_failure=False)
    if isinstance(run, PowerwatchError):  # disk full, bad retention, damaged manifest
        raise run
    if isinstance(run, ArchiveRun):
        _print_archive_run(run)
    return _exit_status(state, "archive")


def cmd_backup(_args: argparse.Namespace) -> int:
    _require_database()
    with flow_imports():  # work to do: Prefect, its temporary server if none is set (jobs.py)
        from flows.backup_database import backup_database
    from powerwatch.core.progress import terminal_bar
    from powerwatch.core.settings import get_settings

    with terminal_bar("backup"):  # bytes copied, ETA; on a terminal only
        state = backup_database(return_state=True)
    failure = state.result(raise_on_failure=False)
    if isinstance(failure, PowerwatchError):  # disk full, damaged manifest: one line, exit 1
        raise failure
    if _exit_status(state, "backup"):
        return 1
    manifest: Any = state.result()  # backup.Manifest
    print(
        f"{get_settings().backups_dir / manifest.file}: {manifest.bytes:,} bytes, "
        f"{manifest.rows.get('power_readings', 0):,} readings, {manifest.integrity_check}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    # An operator's action on the database itself: no Prefect (it may be what is broken).
    from powerwatch.core.errors import InputError

    if not args.file.is_file():  # refused before anything (a folder for the target) is made
        raise InputError(f"{args.file}: no such backup file")
    from powerwatch.backup.replay import restore
    from powerwatch.core.progress import terminal_bar
    from powerwatch.core.settings import get_settings

    settings = get_settings()
    with terminal_bar("restore: replay") as bar:  # chunks replayed; on a terminal only
        report, replay = restore(
            args.file, settings.database_url, settings, force=args.force,
            listeners=[bar] if bar is not None else None,
        )  # fmt: skip
    print(
        f"{report.target}: restored from {report.backup} "
        f"({report.rows.get('power_readings', 0):,} readings, checked); replayed "
        f"{replay.replayed} chunk(s) loaded since ({replay.inserted:,} readings, "
        f"{replay.in_snapshot} in the snapshot already); {replay.archived_dropped:,} "
        "archived reading(s) left in the archive"
    )
    for line in replay.unreadable:
        print(f"unreadable, not replayed: {line}", file=sys.stderr)
    return 1 if replay.unreadable else 0


Handler = Callable[[argparse.Namespace], int]
# Every query command's --format (as powerwatch.site.output.FORMATS, which imports polars).
FORMATS = ("table", "csv", "json")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="powerwatch", description=__doc__.splitlines()[0] if __doc__ else "")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_commands.add_parser(
        "upgrade", help="create or upgrade the schema (idempotent); e.g. powerwatch db upgrade"
    ).set_defaults(handler=cmd_db_upgrade)

    st = commands.add_parser("stations", help="the station registry")
    st_commands = st.add_subparsers(dest="stations_command", required=True, parser_class=_Parser)
    sync = st_commands.add_parser(
        "sync", help="apply the registry (add/update); e.g. powerwatch stations sync stations.yaml"
    )
    sync.add_argument("file", nargs="?", type=Path)
    sync.set_defaults(handler=cmd_stations_sync)
    sl = st_commands.add_parser("list", help="stations with last reading time and count")
    sl.add_argument("--format", choices=FORMATS, default="table")
    sl.set_defaults(handler=cmd_stations_list)

    rd = commands.add_parser(
        "readings",
        help="readings in a time range; e.g. powerwatch readings --station KhonKaen "
        "--start 2024-03-01 --end 2024-03-02 --format csv",
    )
    rd.add_argument("--station")
    rd.add_argument("--start", type=_moment, help="ISO-8601, inclusive (no zone = UTC)")
    rd.add_argument("--end", type=_moment, help="ISO-8601, exclusive (no zone = UTC)")
    rd.add_argument("--format", choices=FORMATS, default="table")
    rd.add_argument("--limit", type=_rows, help="at most this many readings")
    rd.add_argument("--offset", type=_offset, default=0, help="skip this many readings first")
    rd.set_defaults(handler=cmd_readings)

    lt = commands.add_parser("latest", help="newest reading per station")
    lt.add_argument("--station")
    lt.add_argument("--format", choices=FORMATS, default="table")
    lt.set_defaults(handler=cmd_latest)

    ru = commands.add_parser(
        "rollups",
        help="hourly/daily rollups (avg/min/max, kWh consumed, resets, gaps); "
        "e.g. powerwatch rollups --station KhonKaen --interval day --format csv",
    )
    ru.add_argument("--station")
    ru.add_argument("--interval", choices=("hour", "day"), default="hour")
    ru.add_argument("--start", type=_moment, help="ISO-8601, inclusive (no zone = UTC)")
    ru.add_argument("--end", type=_moment, help="ISO-8601, exclusive (no zone = UTC)")
    ru.add_argument("--format", choices=FORMATS, default="table")
    ru.set_defaults(handler=cmd_rollups)

    sm = commands.add_parser(
        "statement",
        help="monthly energy per station and broadcaster (TV5, MCOT, PRD, TPBS); "
        "e.g. powerwatch statement --month 2026-10 --format csv",
    )
    sm.add_argument("--month", required=True, help="YYYY-MM in the site's zone")
    sm.add_argument("--station")
    sm.add_argument("--tz", help="the site's zone (default: POWERWATCH_ENERGY_TZ, Asia/Bangkok)")
    sm.add_argument("--format", choices=("csv", "json", "table"), default="table")
    sm.set_defaults(handler=cmd_statement)

    co = commands.add_parser(
        "completeness",
        help="readings received vs expected on a UTC day, with the missing ranges; "
        "e.g. powerwatch completeness --station KhonKaen --day 2024-03-01",
    )
    co.add_argument("--station", required=True)
    co.add_argument("--day", type=_day, required=True, help="YYYY-MM-DD (UTC)")
    co.add_argument("--format", choices=FORMATS, default="table")
    co.set_defaults(handler=cmd_completeness)

    commands.add_parser(
        "load", help="validate and load every landed chunk, quarantine bad rows"
    ).set_defaults(handler=cmd_load)
    commands.add_parser(
        "refresh-rollups",
        help="bring the rollups up to date now (also scheduled); e.g. powerwatch refresh-rollups",
    ).set_defaults(handler=cmd_refresh_rollups)
    demo = commands.add_parser(
        "demo", help="the whole system on one machine: serve, plus simulated stations"
    )
    demo.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="NAME@AFTER+SECONDS",
        help="take a simulated station off air for a while (e.g. SIM-0002@60+180)",
    )
    demo.set_defaults(handler=cmd_demo)
    serve = commands.add_parser(
        "serve",
        help="start the site: Prefect server, pool, automations, deployments, worker, "
        "against the registry in POWERWATCH_STATIONS (no simulator)",
    )
    serve.set_defaults(handler=cmd_serve)
    for site in (demo, serve):  # internal: one set-up step, in a child of the site
        site.add_argument("--setup", choices=("database", "stations"), help=argparse.SUPPRESS)
    commands.add_parser(
        "status", help="every station's state and the pipeline's, now (no Prefect)"
    ).set_defaults(handler=cmd_status)
    sim = commands.add_parser(
        "simulate",
        help="run N simulated stations on 127.0.0.1 and write their registry; "
        "e.g. powerwatch simulate --count 100 --rate 10 --faults",
    )
    sim.add_argument("--count", type=_station_count, default=10)
    sim.add_argument("--rate", type=_rate, default=1.0, help="frames/s per station")
    sim.add_argument("--port", type=_port, default=0, help="first port (default: free ports)")
    sim.add_argument("--faults", action="store_true", help="everything the protocol allows")
    sim.add_argument("--duration", type=_seconds, help="seconds (default: until stopped)")
    sim.add_argument("--seed", type=_seed, default=0)
    sim.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="NAME@AFTER+SECONDS",
        help="take station NAME off air AFTER s from the start for SECONDS s (repeatable); "
        "NAME@USR1+SECONDS: when the simulator receives SIGUSR1",
    )
    sim.set_defaults(handler=cmd_simulate)
    cap = commands.add_parser(
        "capture",
        help="capture every registered station into landing chunks; "
        "e.g. powerwatch capture --duration 60 --flush-seconds 5",
    )
    cap.add_argument("--duration", type=_seconds, help="seconds (default: until stopped)")
    cap.add_argument("--flush-seconds", type=_seconds, help="default: settings")
    cap.add_argument("--flush-rows", type=_flush_rows, help="default: settings")
    cap.set_defaults(handler=cmd_capture)
    mig = commands.add_parser(
        "migrate-logs",
        help="import legacy log files or folders (formats T, J, C; plain or gzip); "
        "e.g. powerwatch migrate-logs old-logs/ --report migration.json",
    )
    mig.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    mig.add_argument("--tz", help="zone of format T's local times (default Asia/Bangkok)")
    mig.add_argument("--force", action="store_true", help="re-import files imported before")
    mig.add_argument("--report", type=Path, metavar="FILE", help="also write the report as JSON")
    mig.set_defaults(handler=cmd_migrate_logs)
    arc = commands.add_parser(
        "archive",
        help="move readings older than the retention into data/archive/ (Parquet); "
        "e.g. powerwatch archive --older-than 90",
    )
    arc.add_argument("--older-than", type=_days, metavar="DAYS", help="default: settings")
    arc.set_defaults(handler=cmd_archive)
    commands.add_parser(
        "backup", help="a verified, compressed online backup into data/backups/, then rotate"
    ).set_defaults(handler=cmd_backup)
    rst = commands.add_parser(
        "restore",
        help="verify a backup and restore it into the configured database; "
        "e.g. powerwatch restore data/backups/powerwatch-20261125T210000000000Z.db.zst --force",
    )
    rst.add_argument("file", type=Path, metavar="FILE")
    rst.add_argument("--force", action="store_true", help="overwrite an existing database")
    rst.set_defaults(handler=cmd_restore)
    return parser


_DRIVER_ERRORS = (
    ("sqlite3", "Error"),
    ("sqlalchemy.exc", "SQLAlchemyError"),
    ("adbc_driver_manager.dbapi", "Error"),
    ("psycopg", "Error"),
)


def _failure(exc: BaseException) -> PowerwatchError | None:
    """The named, one-line failure for an exception, or None if it is none we know.

    Ours as they are; an `OSError` met during a job: disk full / storage error (bad input
    paths are refused up front); any database driver's error: `db.failures.classify`.
    Only driver modules already imported are looked at (a query imports no Prefect).
    """
    if isinstance(exc, PowerwatchError):
        return exc
    if isinstance(exc, OSError):
        return from_os_error(exc)
    for module, name in _DRIVER_ERRORS:
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and isinstance(exc, kind):
            from db.failures import classify

            return classify(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    # Offline by design: no telemetry from Prefect's client or its temporary server.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        from powerwatch.core.settings import get_settings

        get_settings()  # every setting checked (exit 2, naming it) before any command starts
        if JOBS.get(args.command):
            # A server this machine's site runs (demo/serve): the run shows in its UI,
            # and no temporary server is started (powerwatch.site.discovery).
            from powerwatch.site import discovery

            discovery.configure(get_settings().data_dir)
        if args.command in JOBS:  # signals: keep what is done, exit within 5 s (jobs.py)
            return run_job(args.command, lambda: handler(args))
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = _failure(exc)
        if failure is None:
            raise
        print(f"powerwatch: error: {failure}", file=sys.stderr)
        return failure.exit_code


if __name__ == "__main__":
    sys.exit(main())
