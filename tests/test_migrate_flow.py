"""The `migrate-logs` flow and `powerwatch migrate-logs` on a real (temporary) Prefect server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.client.orchestration import get_client

from db.engine import bulk_connection
from flows.migrate_logs import migrate_logs
from powerwatch.cli import main
from powerwatch.legacy.report import MigrationReport
from tests.conftest import Database

T_LINE = "{stamp} [INFO] [{station}] Active Power (W): P1={p1} | MUX (kWh): TV5=1.5"
# Waits until the first file is committed, then holds the write lock for a while.
LOCK_AFTER_FIRST_FILE = (
    "import sqlite3, sys, time\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
    "print('waiting', flush=True)\n"
    "while not c.execute(\"SELECT count(*) FROM load_batches WHERE status = 'committed'\")"
    ".fetchone()[0]:\n"
    "    time.sleep(0.001)\n"
    "c.execute('BEGIN IMMEDIATE')\n"
    "time.sleep(float(sys.argv[2]))\n"
    "c.execute('ROLLBACK')\n"
)


def _logs(folder: Path) -> Path:
    """A text log with one bad line, a JSON log, and a binary file among them."""
    folder.mkdir(parents=True)
    lines = ["2024-03-01 07:00:00.001 [INFO] StationMonitor started (v2.3.1)"]
    lines += [
        T_LINE.format(stamp=f"2024-03-01 07:00:{s:02d}.000", station="KhonKaen", p1=f"{s}.5")
        for s in range(20)
    ]
    lines[5] = lines[5].replace("P1=4.5", "P1=ERR")
    (folder / "monitor.log").write_text("\n".join(lines) + "\n")
    (folder / "monitor.jsonl").write_text(
        '{"station":"ChiangMai","timestamp":1709251200000,"readings":{"muxPower1":5}}\n'
    )
    (folder / "core.dump").write_bytes(bytes(range(256)) * 64)
    return folder


async def _artifact(key: str) -> Any:
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    async with get_client() as client:
        [artifact] = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    return artifact.data


@pytest.mark.slow
def test_a_binary_file_fails_alone_and_the_run_fails_with_its_report(
    prefect_server: None, synced: Database, tmp_path: Path
) -> None:
    folder = _logs(tmp_path / "logs")

    state = migrate_logs(paths=[str(folder)], return_state=True)

    assert state.is_failed()
    report = cast(MigrationReport, state.result(raise_on_failure=False))
    by_name = {f.name: f for f in report.files}
    assert {name: f.status for name, f in by_name.items()} == {
        "core.dump": "failed",
        "monitor.jsonl": "imported",
        "monitor.log": "imported",
    }
    dump = by_name["core.dump"]
    assert (dump.format, dump.attempts) == (None, 1)  # bad input is not retried
    assert "binary content" in (dump.error or "")
    log = by_name["monitor.log"]
    assert (log.lines, log.non_data, log.inserted, log.duplicates, log.rejected) == (
        21,
        1,
        19,
        0,
        1,
    )
    assert log.attempts == 1
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM power_readings") == 20

    table = asyncio.run(_artifact("migrate-logs"))
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows[-1]["file"] == "TOTAL (3 files: 2 imported, 0 skipped, 1 failed)"
    assert (rows[-1]["lines"], rows[-1]["inserted"], rows[-1]["rejected"]) == (22, 20, 1)
    summary = asyncio.run(_artifact("migrate-logs-summary"))
    assert "core.dump" in summary and "binary content" in summary
    assert "line 6: P1=ERR is not a number" in summary
    assert "P1=ERR | MUX (kWh): TV5=1.5" in summary  # the rejected line itself, quoted


@pytest.mark.slow
def test_a_locked_database_is_retried_with_backoff_then_imported(
    prefect_server: None, synced: Database, tmp_path: Path
) -> None:
    if synced.backend != "sqlite":
        pytest.skip("SQLite's file lock")
    folder = tmp_path / "logs"
    folder.mkdir()
    for name, s in (("a.jsonl", 0), ("b.jsonl", 1)):
        (folder / name).write_text(
            f'{{"station":"ChiangMai","timestamp":170925120{s}000,"readings":{{}}}}\n'
        )
    # Another process takes the write lock between the two files and holds it past the
    # busy timeout (2 s in tests): the second file's first attempt fails, a retry succeeds.
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_AFTER_FIRST_FILE, synced.url.removeprefix("sqlite:///"), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "waiting"
        state = migrate_logs(paths=[str(folder)], return_state=True)
    finally:
        holder.wait(timeout=30)
    assert state.is_completed(), state.message
    first, second = cast(MigrationReport, state.result()).files
    assert (first.status, first.inserted, first.attempts) == ("imported", 1, 1)
    assert (second.status, second.inserted) == ("imported", 1)
    assert second.attempts >= 2
    row = MigrationReport([second]).rows()[0]
    assert row["status"] == f"imported after {second.attempts} attempts"


@pytest.mark.slow
def test_cli_prints_writes_the_json_report_and_exits_1_when_a_file_failed(
    prefect_server: None,
    synced: Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _logs(tmp_path / "logs")
    out = tmp_path / "reports" / "migration.json"
    out.parent.mkdir()  # a report into a missing folder is refused up front (exit 2)

    assert main(["migrate-logs", str(folder), "--tz", "Europe/Berlin", "--report", str(out)]) == 1

    printed = capsys.readouterr()
    assert "TOTAL (3 files: 2 imported, 0 skipped, 1 failed)" in printed.out
    data = json.loads(out.read_text())
    assert [(f["path"].rsplit("/", 1)[-1], f["status"]) for f in data["files"]] == [
        ("core.dump", "failed"),
        ("monitor.jsonl", "imported"),
        ("monitor.log", "imported"),
    ]
    assert data["totals"]["inserted"] == 20
    with bulk_connection() as bulk:  # 07:00 in Berlin (CET) is 06:00 UTC
        first = bulk.scalar(
            "SELECT min(ts) FROM power_readings p JOIN stations s ON s.id = p.station_id "
            "WHERE s.name = 'KhonKaen'"
        )
    assert first == 1709272800000  # 2024-03-01T06:00:00Z

    # The unchanged files again: skipped; the binary file still fails.
    assert main(["migrate-logs", str(folder), "--report", str(out)]) == 1
    data = json.loads(out.read_text())
    assert [f["status"] for f in data["files"]] == ["failed", "skipped", "skipped"]


def test_cli_refuses_an_unknown_zone_or_a_missing_path_with_exit_2(
    sqlite_database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before Prefect starts and before any file is read (no server needed)."""
    folder = _logs(tmp_path / "logs")
    assert main(["migrate-logs", str(folder), "--tz", "Mars/Olympus"]) == 2
    assert "unknown time zone 'Mars/Olympus'" in capsys.readouterr().err
    assert main(["migrate-logs", str(folder), str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM load_batches") == 0


@pytest.mark.slow
def test_a_run_that_only_rejects_fails_saying_so_and_shows_its_progress(
    prefect_server: None, sqlite_synced: Database, tmp_path: Path
) -> None:
    """Every reading of a station not in the registry: each file committed, but the run
    inserted nothing while rejecting readings, so it ends Failed with the counts first;
    the table leads with inserted and rejected; the progress artifact reached 100 %."""
    folder = tmp_path / "logs"
    folder.mkdir()
    lines = [
        T_LINE.format(stamp=f"2024-03-01 07:00:{s:02d}.000", station="Retired", p1=f"{s}.5")
        for s in range(12)
    ]
    (folder / "retired.log").write_text("\n".join(lines) + "\n")

    state = migrate_logs(paths=[str(folder)], return_state=True)

    assert state.is_failed()
    assert (state.message or "").startswith(
        "nothing inserted: 12 readings rejected (12 of unknown stations"
    )
    [only] = cast(MigrationReport, state.result(raise_on_failure=False)).files
    assert (only.status, only.verdict, only.inserted, only.rejected) == (
        "imported",
        "all rejected",
        0,
        12,
    )
    table = asyncio.run(_artifact("migrate-logs"))
    rows = json.loads(table) if isinstance(table, str) else table
    assert list(rows[0])[:4] == ["file", "status", "inserted", "rejected"]
    assert [r["status"] for r in rows] == ["all rejected", "nothing inserted"]
    summary = asyncio.run(_artifact("migrate-logs-summary"))
    assert summary.startswith("# Log migration: 0 inserted, 12 rejected\n")
    assert asyncio.run(_artifact("migrate-logs-progress")) == 100.0
