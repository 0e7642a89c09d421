"""The archive (powerwatch.archive.writer) on both backends, without Prefect: what goes in comes
back exactly, nothing is duplicated or lost on re-runs and late data, names stay inside."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from db import queries
from db.engine import bulk_connection
from powerwatch.archive import writer as archive
from powerwatch.core import faults
from powerwatch.core.errors import ArchiveError, JobError
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from powerwatch.load.store import begin_batch, finish_batch, store_readings
from tests.conftest import T0, Database, make_readings, write_chunk

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
README = Path(__file__).resolve().parents[1] / "README.md"
DAY = timedelta(days=1)


def _days(stations: list[str], days: int, seconds: int = 40, offset: int = 0) -> pl.DataFrame:
    """`seconds` readings per station on each of `days` UTC days from T0 (at `offset` s)."""
    return pl.concat(
        make_readings(stations, seconds, T0 + k * DAY + timedelta(seconds=offset), 10.0 * k)
        for k in range(days)
    )


def _load(frame: pl.DataFrame) -> None:
    settings = get_settings()
    name = f"{uuid.uuid4().hex}.parquet"
    with bulk_connection() as bulk:
        report = load_chunk(bulk, write_chunk(frame, settings.landing_dir, name), settings)
    assert report.rejected == 0, report


def _archive(now: datetime, retention_days: int = 0) -> archive.ArchiveRun:
    settings = get_settings()
    with bulk_connection() as bulk:
        return archive.archive_readings(bulk, settings.archive_dir, retention_days, now)


def _stored() -> pl.DataFrame:
    with bulk_connection() as bulk:
        return queries.readings(bulk)


def _analyst_blocks() -> list[str]:
    """The README's analyst code blocks, exactly as written there."""
    section = README.read_text(encoding="utf-8").split("### Reading the archive", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _analyst_read(database: Database, block: int) -> pl.DataFrame:
    """Run README block `block` from the folder holding `data/`, as an analyst would."""
    code = _analyst_blocks()[block]
    namespace: dict[str, object] = {}
    cwd = Path.cwd()
    os.chdir(database.data_dir.parent)
    try:
        exec(code, namespace)
        found = namespace["archive"]  # both are lazy: read while in that folder
        frame = found.collect() if isinstance(found, pl.LazyFrame) else found.pl()  # type: ignore[attr-defined]
    finally:
        os.chdir(cwd)
    return (
        frame.with_columns(pl.col("timestamp").dt.convert_time_zone("UTC").dt.cast_time_unit("ms"))
        .drop("date")
        .sort("station", "timestamp")
    )


def test_archive_then_delete_then_read_back_equals_the_original(synced: Database) -> None:
    original = _days(STATIONS, 3)
    _load(original)

    run = _archive(now=T0 + 2 * DAY + timedelta(hours=5), retention_days=1)

    assert run.failed == []
    assert run.cutoff.before == T0 + DAY
    assert [d.day for d in run.days] == ["2026-11-01"]
    old = original.filter(pl.col("timestamp") < T0 + DAY).sort("station", "timestamp")
    assert run.days[0].archived == old.height
    # Moved, not copied: the database keeps only what is younger than the cut-off.
    assert _stored().equals(
        original.filter(pl.col("timestamp") >= T0 + DAY).sort("station", "timestamp")
    )
    for block in (0, 1):  # polars, then DuckDB, exactly as the README says
        assert _analyst_read(synced, block).equals(old)
    with bulk_connection() as bulk:  # the rollups took the day before its rows went
        assert int(bulk.scalar("SELECT sum(samples) FROM rollup_hourly")) == original.height
        assert bulk.scalar("SELECT count(*) FROM rollup_dirty") == 0
    entry = archive.read_manifest(get_settings().archive_dir)["date=2026-11-01"]
    assert (entry["rows"], entry["stations"]) == (old.height, 3)
    assert entry["first"].startswith("2026-11-01T00:00:00")
    assert archive.verify_archive(get_settings().archive_dir) == []


def test_rerun_archives_nothing_twice(synced: Database) -> None:
    _load(_days(STATIONS, 3))
    now = T0 + 2 * DAY + timedelta(hours=5)
    _archive(now)
    before = {p: p.read_bytes() for p in get_settings().archive_dir.rglob("*.parquet")}

    again = _archive(now)

    assert (again.days, again.failed) == ([], [])
    assert {p: p.read_bytes() for p in get_settings().archive_dir.rglob("*.parquet")} == before


def test_late_data_for_an_archived_day_is_merged_without_duplicates(synced: Database) -> None:
    first = _days(["KhonKaen", "ChiangMai"], 2)
    _load(first)
    now = T0 + DAY + timedelta(hours=5)
    _archive(now)
    # Late: new seconds of an archived station, a station not yet in that day's file,
    # and (as after a crash between rename and delete) rows that are archived already.
    late = pl.concat(
        [
            make_readings(["KhonKaen"], 10, T0 + timedelta(hours=3)),
            make_readings(["Songkhla"], 5, T0 + timedelta(hours=4)),
            first.filter(pl.col("timestamp") < T0 + timedelta(seconds=5)),
        ]
    )
    _load(late)
    crashed = get_settings().archive_dir / "date=2026-11-01" / ".readings.parquet.dead0000.tmp"
    crashed.write_bytes(b"left by a crashed run")

    run = _archive(now)

    assert run.failed == []
    [day] = run.days
    assert day.merged and day.already_archived == 10 and day.archived == 25
    expected = pl.concat([first.filter(pl.col("timestamp") < T0 + DAY), late]).unique(
        ["station", "timestamp"]
    )
    assert _analyst_read(synced, 0).equals(expected.sort("station", "timestamp"))
    assert _stored().filter(pl.col("timestamp") < T0 + DAY).is_empty()
    assert not crashed.exists()
    entry = archive.read_manifest(get_settings().archive_dir)["date=2026-11-01"]
    assert (entry["rows"], entry["stations"]) == (expected.height, 3)
    assert archive.verify_archive(get_settings().archive_dir) == []


def test_a_reading_differing_from_its_archived_copy_stops_that_day(synced: Database) -> None:
    first = _days(["KhonKaen"], 2)
    _load(first)
    now = T0 + DAY + timedelta(hours=5)
    _archive(now)
    file = get_settings().archive_dir / "date=2026-11-01" / archive.ARCHIVE_FILE
    archived = file.read_bytes()
    changed = first.head(1).with_columns(pl.col("activePower1") + 1)
    _load(changed)

    run = _archive(now)

    assert run.days == [] and "differ from their archived copy" in run.failed[0]
    assert file.read_bytes() == archived
    assert _stored().filter(pl.col("timestamp") < T0 + DAY).height == 1  # kept


def test_a_reading_arriving_during_the_archive_stops_the_delete(
    synced: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`archive_day` (what the flow's task runs) is held once its file is written; a
    late reading for that day is loaded right then; the day's delete must not happen,
    and the next run archives all of it."""
    _load(_days(["KhonKaen"], 2))  # the second day puts the first before the cut-off
    notify = tmp_path / "notify"
    monkeypatch.setenv(faults.ENV, "archive.written=hold")
    monkeypatch.setenv(faults.NOTIFY_ENV, str(notify))
    faults.reset_passes()
    settings = get_settings()
    outcome: list[object] = []

    def archive_the_day() -> None:
        try:
            with bulk_connection() as bulk:
                outcome.append(archive.archive_day(bulk, settings.archive_dir, T0.date()))
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=archive_the_day)
    worker.start()
    deadline = time.monotonic() + 60
    while not (notify.exists() and "archive.written" in notify.read_text().splitlines()):
        assert worker.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.02)
    _load(make_readings(["KhonKaen"], 1, T0 + timedelta(hours=12)))  # the late reading
    with notify.open("a") as handle:
        handle.write("resume archive.written\n")
    worker.join(60)

    [error] = outcome
    assert isinstance(error, ArchiveError) and "changed while archiving" in str(error), error
    assert _stored().height == 81  # nothing deleted
    with bulk_connection() as bulk:
        if bulk.sqlite:  # the delete ran without parent lookups; the connection has them back
            assert bulk.scalar("PRAGMA foreign_keys") == 1
    monkeypatch.delenv(faults.ENV)
    run = _archive(now=T0 + DAY + timedelta(hours=5))
    assert [(d.day, d.archived) for d in run.days] == [("2026-11-01", 41)]
    assert _stored().height == 40  # the second day's


def test_a_file_that_does_not_read_back_right_deletes_nothing(
    synced: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete runs while the file is read back; a failed check rolls it back."""
    original = _days(STATIONS, 2)
    _load(original)
    monkeypatch.setattr(archive, "content_checksum", lambda path: (0, "not what was written"))

    run = _archive(now=T0 + DAY + timedelta(hours=5))

    assert [d.day for d in run.days] == [] and "reads back as 0 rows" in run.failed[0]
    assert _stored().equals(original.sort("station", "timestamp"))
    archive_dir = get_settings().archive_dir
    assert archive.read_manifest(archive_dir) == {}
    assert list(archive_dir.rglob("*readings.parquet*")) == []  # no file, no temp file


def test_the_file_is_published_only_when_the_delete_matched(synced: Database) -> None:
    _load(_days(["KhonKaen"], 1))
    start = int(T0.timestamp() * 1000)
    published: list[str] = []
    with bulk_connection() as bulk:
        station_id = int(bulk.scalar("SELECT id FROM stations WHERE name = 'KhonKaen'"))
        with pytest.raises(ArchiveError, match="changed while archiving"):
            archive._delete_day(
                bulk, start, {station_id: 39}, T0.date(), publish=lambda: published.append("x")
            )
        assert published == []
        assert (
            archive._delete_day(
                bulk, start, {station_id: 40}, T0.date(), publish=lambda: published.append("x")
            )
            == 40
        )
    assert published == ["x"] and _stored().is_empty()


def _insert_station(name: str) -> None:
    with bulk_connection() as bulk, bulk.transaction(lock_tables=("stations",)):
        bulk.execute(
            "INSERT INTO stations (name, uuid, ip_address, url, created_at, updated_at) "
            "VALUES (:name, :uuid, '127.0.0.1', 'ws://127.0.0.1/', CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)",
            {"name": name, "uuid": str(uuid.uuid4())},
        )


def _store_unvalidated(frame: pl.DataFrame) -> None:
    """Straight into the table, past the registry's name rule (as a hand-made row would be)."""
    with bulk_connection() as bulk, bulk.transaction(lock_tables=("power_readings",)):
        batch = begin_batch(bulk, kind="manual", reference="test", input_name="t", content_hash="x")
        result = store_readings(bulk, frame, batch)
        finish_batch(
            bulk,
            batch,
            status="committed",
            rows_in=frame.height,
            result=result,
            rejected_by_reason={},
        )


HOSTILE = ["..", "../../escape", "a/b", "date=1999-01-01", "%2e%2e%2f", "x\\y", "sp ace\u00e9"]


def test_hostile_station_names_stay_inside_and_come_back_unchanged(
    database: Database, tmp_path: Path
) -> None:
    for name in HOSTILE:
        _insert_station(name)
    original = _days(HOSTILE, 2, seconds=5)
    _store_unvalidated(original)
    outside_before = {p for p in tmp_path.rglob("*") if "archive" not in p.parts}

    run = _archive(now=T0 + DAY + timedelta(hours=5))

    assert run.failed == [] and run.days[0].archived == 5 * len(HOSTILE)
    root = get_settings().archive_dir.resolve()
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert written == {"date=2026-11-01/readings.parquet"}
    new_outside = {p for p in tmp_path.rglob("*") if "archive" not in p.parts} - outside_before
    assert {p.name for p in new_outside if p.is_file()} <= {
        archive.MANIFEST_FILE,
        archive.LOCK_FILE,
        "powerwatch.db-wal",
        "powerwatch.db-shm",
    }
    old = original.filter(pl.col("timestamp") < T0 + DAY).sort("station", "timestamp")
    for block in (0, 1):
        assert _analyst_read(database, block).equals(old)


def test_a_partition_folder_linked_outside_the_archive_is_refused(tmp_path: Path) -> None:
    """A day's folder is named from a date (no `..` possible), but the folder on disk may
    be a link to elsewhere: the archive never writes (or deletes readings) through it."""
    root, outside = tmp_path / "archive", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "date=2026-11-01").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ArchiveError, match="outside"):
        archive.partition_dir(root, T0.date())
    assert archive.partition_dir(root, (T0 + DAY).date()) == (root / "date=2026-11-02").resolve()


def test_a_file_being_written_is_invisible_to_the_analyst(synced: Database) -> None:
    original = _days(STATIONS, 2, seconds=5)
    _load(original)
    _archive(now=T0 + DAY + timedelta(hours=5))
    day = get_settings().archive_dir / "date=2026-11-01"
    (day / f".{archive.ARCHIVE_FILE}.0123abcd.tmp").write_bytes(b"PAR1 half written")
    (get_settings().archive_dir / "date=2026-11-02").mkdir()
    (get_settings().archive_dir / "date=2026-11-02" / ".readings.parquet.tmp").write_bytes(b"")

    for block in (0, 1):
        assert _analyst_read(synced, block).height == 15


# --- the cut-off ---------------------------------------------------------------------------


def test_cutoff_counts_back_from_the_clock_in_whole_days(synced: Database) -> None:
    _load(make_readings(STATIONS, 5, T0 - 40 * DAY))
    _load(make_readings(STATIONS, 5, T0 + timedelta(hours=5)))
    with bulk_connection() as bulk:
        cut = archive.retention_cutoff(bulk, 30, now=T0 + timedelta(hours=7))
        slow_clock = archive.retention_cutoff(bulk, 30, now=T0 - 20 * DAY)
    assert cut.before == T0 - 30 * DAY
    assert cut.reference == T0 + timedelta(hours=5, seconds=4)  # the newest reading
    # A clock set back: readings "after" it are not trusted, and it archives less, never more.
    assert slow_clock.before == T0 - 70 * DAY  # from the newest reading before it


def test_one_reading_stamped_far_in_the_future_does_not_move_the_cutoff(
    synced: Database,
) -> None:
    _load(_days(STATIONS, 1, seconds=5))
    wall = T0 + 5 * DAY
    _store_unvalidated(make_readings(["KhonKaen"], 1, T0 + 400 * DAY))  # a bad station clock
    with bulk_connection() as bulk:
        honest = archive.retention_cutoff(bulk, 1, now=wall)
        clock_ahead = archive.retention_cutoff(bulk, 1, now=T0 + 500 * DAY)
    assert honest.before <= T0  # data ends on T0: the witness holds the cut-off there
    # A clock a year ahead (with the bogus reading now "in the past") is capped by what
    # the other stations sent: nothing younger than T0 - 1 day can be archived.
    assert clock_ahead.before == T0 - DAY
    assert clock_ahead.reference < wall


def test_a_clock_running_ahead_archives_nothing_the_stations_did_not_age(
    synced: Database,
) -> None:
    _load(_days(STATIONS, 3, seconds=5))
    run = _archive(now=datetime(2030, 1, 1, tzinfo=UTC), retention_days=1)
    # Without the witness, 2030 - 1 day would have archived all three days.
    assert [d.day for d in run.days] == ["2026-11-01"]
    assert _stored().height == 30


# --- space --------------------------------------------------------------------------------


def test_freed_pages_are_given_back_on_sqlite(sqlite_synced: Database) -> None:
    _load(_days(STATIONS, 2, seconds=3_000))
    with bulk_connection() as bulk:
        assert bulk.scalar("PRAGMA auto_vacuum") == 2  # set for every new database
        pages_before = int(bulk.scalar("PRAGMA page_count"))

    run = _archive(now=T0 + DAY + timedelta(hours=5))

    assert run.reclaimed is not None and run.reclaimed.pages > 0
    with bulk_connection() as bulk:
        assert bulk.scalar("PRAGMA freelist_count") == 0
        assert int(bulk.scalar("PRAGMA page_count")) < pages_before * 0.7


def test_the_delete_skips_parent_lookups_only_inside_its_transaction(
    sqlite_synced: Database,
) -> None:
    orphan = "INSERT INTO power_readings (station_id, ts, batch_id) VALUES (999999, 1, 999999)"
    with bulk_connection() as bulk:
        with bulk.transaction(check_foreign_keys=False):
            assert bulk.scalar("PRAGMA foreign_keys") == 0
        assert bulk.scalar("PRAGMA foreign_keys") == 1
        with pytest.raises(ArchiveError), bulk.transaction(check_foreign_keys=False):
            raise ArchiveError("rolled back")
        assert bulk.scalar("PRAGMA foreign_keys") == 1
        with pytest.raises(JobError, match="FOREIGN KEY"), bulk.transaction():
            bulk.execute(orphan)  # a load's insert is checked again


def test_days_to_archive_skips_empty_years(synced: Database) -> None:
    _load(make_readings(["KhonKaen"], 2, datetime(2001, 3, 4, tzinfo=UTC)))
    _load(make_readings(["ChiangMai"], 2, T0))
    with bulk_connection() as bulk:
        days = list(archive.days_to_archive(bulk, T0 + DAY))
    assert [d.isoformat() for d in days] == ["2001-03-04", "2026-11-01"]


def test_content_checksum_is_the_documented_byte_sequence() -> None:
    """The manifest's checksums must stay verifiable by later versions: the checksum is
    sha256 over, per group, `name\\0rows\\0`, the timestamps as little-endian int64 (ms),
    then per channel a bitmap of nulls (numpy.packbits) and the values (nulls as 0.0)."""
    from schemas.channels import CHANNELS

    group = make_readings(["KhonKaen"], 50).with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0)
        .then(None)
        .otherwise("muxPower1")
        .alias("muxPower1")
    )
    expected = hashlib.sha256(b"KhonKaen\x0050\x00")
    expected.update(struct.pack("<50q", *group["timestamp"].dt.epoch("ms")))
    for channel in CHANNELS:
        values = group[channel.key].to_list()
        nulls = [v is None for v in values]
        expected.update(
            bytes(
                int("".join("1" if n else "0" for n in nulls[i : i + 8]).ljust(8, "0"), 2)
                for i in range(0, 50, 8)
            )
        )
        expected.update(struct.pack("<50d", *(0.0 if v is None else v for v in values)))

    checksum = archive.ContentChecksum()
    checksum.update(group)

    assert (checksum.rows, checksum.hexdigest()) == (50, expected.hexdigest())
