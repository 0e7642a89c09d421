"""Fault injection for `powerwatch migrate-logs`: kill -9 at every step, a full disk under
the database, a damaged database.

Every case runs real `powerwatch migrate-logs` processes and ends by comparing the
database with ground truth (each reading once) and the ledger (each file committed once).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from powerwatch.core.faults import POINTS
from tests.conftest import Database
from tests.faults.conftest import (
    armed,
    committed_per_input,
    fill,
    free,
    powerwatch_env,
    run_powerwatch,
    stored_keys,
)
from tests.faults.test_load import assert_not_retried, damage, small_sqlite

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
MIGRATE_POINTS = [name for name in POINTS if name.startswith("migrate.")]
START_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z


def _env(prefect_api: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return powerwatch_env({"PREFECT_API_URL": prefect_api} | (extra or {}))


def write_logs(folder: Path, files: int, seconds: int) -> pl.DataFrame:
    """`files` JSON-lines logs (format J) of `seconds` seconds each, 3 stations, disjoint
    times, each with one line that is no reading; the readings that should be stored
    (`stored_keys` shape)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: list[dict[str, object]] = []
    for f in range(files):
        lines = []
        for s in range(seconds):
            ts = START_MS + (f * seconds + s) * 1000
            for n, station in enumerate(STATIONS):
                p1, m1 = float(s * 3 + n) + 0.5, float(f * 1000 + s)
                lines.append(
                    f'{{"station":"{station}","timestamp":{ts},'
                    f'"readings":{{"activePower1":{p1},"muxPower1":{m1}}}}}'
                )
                expected.append({"station": station, "ts": ts, "p1": p1, "m1": m1})
        lines.insert(seconds // 2, '{"station":"KhonKaen","timestamp":')  # a cut line
        (folder / f"{f}-monitor.jsonl").write_text("\n".join(lines) + "\n")
    schema = {"station": pl.String, "ts": pl.Int64, "p1": pl.Float64, "m1": pl.Float64}
    return pl.DataFrame(expected, schema=schema).sort("station", "ts")


def committed_per_file(url: str) -> dict[str, int]:
    """Per file name (log files are recorded by path)."""
    return {Path(name).name: n for name, n in committed_per_input(url).items()}


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("powerwatch:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("point", MIGRATE_POINTS)
def test_kill_9_at_each_migrate_point_then_migrate_again_gives_ground_truth(
    synced: Database, prefect_api: str, tmp_path: Path, point: str
) -> None:
    logs = tmp_path / "logs"
    truth = write_logs(logs, 3, 50)
    files = {p.name for p in logs.iterdir()}

    killed = run_powerwatch("migrate-logs", str(logs), env=_env(prefect_api, armed(point, at=2)))
    assert killed.returncode == -9, killed.stderr
    first_two = {"0-monitor.jsonl": 1} | (
        {"1-monitor.jsonl": 1} if point != "migrate.parsed" else {}
    )
    assert committed_per_file(synced.url) == first_two

    again = run_powerwatch("migrate-logs", str(logs), env=_env(prefect_api))
    assert again.returncode == 0, again.stderr
    assert stored_keys(synced.url).equals(truth)
    assert committed_per_file(synced.url) == dict.fromkeys(files, 1)


def test_disk_full_sqlite_database_fails_at_once_then_completes_after_space_is_freed(
    sqlite_database: Database,
    registry_file: Path,
    prefect_api: str,
    small_disk: Path,
    tmp_path: Path,
) -> None:
    url = small_sqlite(small_disk, registry_file)
    logs = tmp_path / "logs"
    truth = write_logs(logs, 2, 3_000)
    fill(small_disk, leave_bytes=64 << 10)
    env = _env(prefect_api, {"POWERWATCH_DATABASE_URL": url})

    started = time.monotonic()
    full = run_powerwatch("migrate-logs", str(logs), env=env)
    seconds = time.monotonic() - started
    assert full.returncode == 1
    assert "disk full" in _one_line_error(full)
    assert_not_retried(full, seconds)
    free(small_disk)
    assert stored_keys(url).is_empty()
    assert committed_per_file(url) == {}

    again = run_powerwatch("migrate-logs", str(logs), env=env)
    assert again.returncode == 0, again.stderr
    assert stored_keys(url).equals(truth)
    assert committed_per_file(url) == {"0-monitor.jsonl": 1, "1-monitor.jsonl": 1}


@pytest.mark.parametrize("where", ["header", "middle"])
def test_damaged_sqlite_database_is_named_in_one_line_and_left_alone(
    sqlite_synced: Database, prefect_api: str, tmp_path: Path, where: str
) -> None:
    logs = tmp_path / "logs"
    write_logs(logs, 1, 3_000)
    assert run_powerwatch("migrate-logs", str(logs), env=_env(prefect_api)).returncode == 0
    more = tmp_path / "more"
    write_logs(more, 1, 10)
    db_file = Path(sqlite_synced.url.removeprefix("sqlite:///"))
    assert not db_file.with_name(db_file.name + "-wal").exists()  # all in the main file
    damaged = damage(db_file, where)
    inode = db_file.stat().st_ino

    started = time.monotonic()
    result = run_powerwatch("migrate-logs", str(more), env=_env(prefect_api))
    seconds = time.monotonic() - started
    assert result.returncode == 1
    line = _one_line_error(result)
    assert "damaged" in line
    assert_not_retried(result, seconds)
    assert db_file.stat().st_ino == inode and db_file.read_bytes() == damaged
