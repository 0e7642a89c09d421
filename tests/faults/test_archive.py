"""The archive under faults, with real `powerwatch archive` processes: killed (-9) at each
of its fault points, then run again; on a full disk, then again once there is room; with
a damaged manifest and a negative retention. Each case ends with the ground truth: every
reading either still in the database or in exactly one archived file the manifest lists
(never both, never neither), no half or unlisted file visible to the analysts' glob, no
temp file left, the manifest verifying.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from db.engine import bulk_connection
from powerwatch.archive import writer as archive
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from tests.conftest import T0, Database, make_readings, write_chunk
from tests.faults.conftest import (
    armed,
    expected_keys,
    fill,
    free,
    powerwatch_env,
    run_powerwatch,
    stored_keys,
    visible_files,
)

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
DAYS = 4  # with --older-than 1 the first two are archived (the data's clock: day 4)
ARCHIVE_POINTS = [
    "archive.written",
    "archive.verified",
    "archive.renamed",
    "archive.manifest_written",
    "archive.deleted",
]


def _load_days(days: int = DAYS, seconds: int = 30) -> pl.DataFrame:
    """`seconds` readings per station on each of `days` UTC days from T0, loaded."""
    settings = get_settings()
    frame = pl.concat(
        make_readings(STATIONS, seconds, T0 + timedelta(days=k), 10.0 * k) for k in range(days)
    )
    with bulk_connection() as bulk:
        chunk = write_chunk(frame, settings.landing_dir, f"{uuid.uuid4().hex}.parquet")
        report = load_chunk(bulk, chunk, settings)
    assert report.rejected == 0
    return frame


def _env(prefect_api: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return powerwatch_env({"PREFECT_API_URL": prefect_api} | (extra or {}))


def _archived_keys(archive_root: Path) -> pl.DataFrame:
    """`stored_keys`' shape for every reading in a file the manifest lists."""
    frames = [
        pl.read_parquet(archive_root / entry["file"], hive_partitioning=False).select(
            pl.col("station"),
            pl.col("timestamp").dt.epoch("ms").alias("ts"),
            pl.col("activePower1").alias("p1"),
            pl.col("muxPower1").alias("m1"),
        )
        for entry in archive.read_manifest(archive_root).values()
    ]
    schema = {"station": pl.String, "ts": pl.Int64, "p1": pl.Float64, "m1": pl.Float64}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _temp_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and ".tmp" in p.name)


def assert_consistent(url: str, data_dir: Path, truth: pl.DataFrame) -> pl.DataFrame:
    """Database + listed archive files == the ground truth exactly, nothing in both, no
    visible file the manifest does not list, no temp file, the manifest verifies.
    Returns the archived keys."""
    root = data_dir / "archive"
    stored = stored_keys(url)
    archived = _archived_keys(root)
    both = stored.join(archived, on=["station", "ts"], how="inner")
    assert both.is_empty(), f"{both.height} reading(s) both stored and archived"
    together = pl.concat([stored, archived]).sort("station", "ts")
    assert together.equals(truth), "database + archive differ from what was loaded"
    listed = {root / e["file"] for e in archive.read_manifest(root).values()}
    assert set(visible_files(root, "**/*.parquet")) == listed
    assert _temp_files(data_dir) == []
    assert archive.verify_archive(root) == []
    return archived


def _all_visible_keys(archive_root: Path) -> pl.DataFrame:
    """Every reading in any file the analysts' glob sees, listed or not (each must read
    whole: a half-written file would fail here)."""
    frames = [
        pl.read_parquet(path, hive_partitioning=False).select(
            pl.col("station"),
            pl.col("timestamp").dt.epoch("ms").alias("ts"),
            pl.col("activePower1").alias("p1"),
            pl.col("muxPower1").alias("m1"),
        )
        for path in visible_files(archive_root, "**/*.parquet")
    ]
    schema = {"station": pl.String, "ts": pl.Int64, "p1": pl.Float64, "m1": pl.Float64}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


# Each `powerwatch archive` costs 5 s of CPU importing Prefect (20-40 s on this shared
# host), so the points are killed in turn on one database: the run after each kill is
# the next point's run, which must first recover (remove the dead run's temps, take
# the lock, merge a day found both in the database and in its file) before it reaches
# its own point. After every kill nothing may be lost and nothing half visible; after
# the final, unarmed run the state must be exact.
CHAINS = {
    "sqlite": ARCHIVE_POINTS,
    "postgresql": ["archive.renamed", "archive.deleted"],  # either side of the commit
}


@pytest.mark.timeout(900)  # 4-6 job processes at 20-40 s each on the shared host
def test_kill_at_each_archive_point_then_rerun_accounts_for_every_reading(
    synced: Database, prefect_api: str
) -> None:
    truth = expected_keys(_load_days())
    root = synced.data_dir / "archive"
    for point in CHAINS[synced.backend]:
        killed = run_powerwatch("archive", "--older-than", "1", env=_env(prefect_api, armed(point)))

        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        anywhere = pl.concat([stored_keys(synced.url), _all_visible_keys(root)])
        lost = truth.join(anywhere, on=["station", "ts"], how="anti")
        assert lost.is_empty(), f"{point}: {lost.height} reading(s) lost"

    again = run_powerwatch("archive", "--older-than", "1", env=_env(prefect_api), timeout=240)

    assert again.returncode == 0, again.stderr[-2000:]
    archived = assert_consistent(synced.url, synced.data_dir, truth)
    day = 86_400_000
    first_two = truth.filter(pl.col("ts") < int(T0.timestamp() * 1000) + 2 * day)
    assert archived.sort("station", "ts").equals(first_two)  # the days before the cut-off


def test_archive_on_a_full_disk_fails_in_one_line_and_completes_after_space_is_freed(
    sqlite_synced: Database, prefect_api: str, small_disk: Path
) -> None:
    truth = expected_keys(_load_days(seconds=400))  # the database stays in tmp_path
    env = _env(prefect_api, {"POWERWATCH_DATA_DIR": str(small_disk)})
    fill(small_disk, leave_bytes=4096)

    full = run_powerwatch("archive", "--older-than", "1", env=env)

    assert full.returncode == 1, full.stderr[-2000:]
    [last] = [x for x in full.stderr.splitlines() if x.startswith("powerwatch:")]
    assert last.startswith("powerwatch: error:") and "disk full" in last, full.stderr[-2000:]
    assert "Traceback" not in full.stderr and "Retry 1/" not in full.stderr
    assert stored_keys(sqlite_synced.url).equals(truth)  # every reading still stored
    assert visible_files(small_disk / "archive", "**/*.parquet") == []
    assert archive.read_manifest(small_disk / "archive") == {}
    assert _temp_files(small_disk) == []

    free(small_disk)
    done = run_powerwatch("archive", "--older-than", "1", env=env)

    assert done.returncode == 0, done.stderr[-2000:]
    assert assert_consistent(sqlite_synced.url, small_disk, truth).height == 2 * 400 * 3


def test_a_damaged_archive_manifest_fails_in_one_line_and_changes_nothing(
    sqlite_synced: Database, prefect_api: str
) -> None:
    truth = expected_keys(_load_days())
    manifest = archive.manifest_path(sqlite_synced.data_dir / "archive")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text('{"partitions": {"date=2026-10-01": {"rows": ')  # cut short

    done = run_powerwatch("archive", "--older-than", "1", env=_env(prefect_api))

    assert done.returncode == 1, done.stderr[-2000:]
    [last] = [x for x in done.stderr.splitlines() if x.startswith("powerwatch:")]
    assert "archive-manifest.json is damaged" in last and "Traceback" not in done.stderr
    assert stored_keys(sqlite_synced.url).equals(truth)
    assert visible_files(sqlite_synced.data_dir / "archive", "**/*.parquet") == []


def test_a_negative_retention_is_bad_input_in_one_line(
    sqlite_synced: Database, prefect_api: str
) -> None:
    truth = expected_keys(_load_days())

    done = run_powerwatch("archive", env=_env(prefect_api, {"POWERWATCH_RETENTION_DAYS": "-3"}))

    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    # Refused with the other settings, before the archive starts (naming the variable).
    assert done.stderr.strip().splitlines() == [
        "powerwatch: error: POWERWATCH_RETENTION_DAYS: must be at least 1: '-3'"
    ]
    assert stored_keys(sqlite_synced.url).equals(truth)
