"""`kill -9` in the middle of a file, then a re-run: the database an uninterrupted run gives.

The migration runs in a real child process; it is killed while the second file's
transaction is open (after some of its blocks were stored), never at a point of
its own choosing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from db.engine import bulk_connection, make_engine
from db.migrate import upgrade
from db.stations import sync_stations
from powerwatch.legacy.migration import discover, import_file
from schemas.registry import load_registry
from tests.conftest import Database

STATIONS = ("KhonKaen", "ChiangMai", "Songkhla")
MIGRATE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from db.engine import bulk_connection\n"
    "from powerwatch.legacy.migration import discover, import_file\n"
    "with bulk_connection() as bulk:\n"
    "    for path in discover([Path(sys.argv[1])]):\n"
    "        report = import_file(bulk, path, parse_lines=500, store_rows=int(sys.argv[2]),\n"
    "            progress=lambda r, _: print('progress', Path(r.path).name, r.lines, flush=True))\n"
    "        print('done', path.name, report.status, flush=True)\n"
)
STORE_ROWS = 2_000


def _logs(folder: Path) -> None:
    """Three files; the second is large and overlaps the first; all carry rejects."""
    folder.mkdir()
    text = []
    for s in range(3_000):
        stamp = f"2024-03-01 07:{s // 60 % 60:02d}:{s % 60:02d}.000"
        text.append(f"{stamp} [INFO] [{STATIONS[s % 3]}] Active Power (W): P1={s}.5 P2=N/A")
        if s % 500 == 0:
            text.append(f"{stamp} [WARN] [KhonKaen] WebSocket closed (code 1006)")
    (folder / "a-monitor.log").write_text("\n".join(text) + "\n")
    start = 1_709_251_200_000  # 2024-03-01T00:00:00Z = 07:00 in Bangkok: overlaps a-monitor.log
    lines = [
        f'{{"station":"{STATIONS[i % 3]}","timestamp":{start + (i // 3) * 1000},'
        f'"readings":{{"activePower1":{i // 3}.5,"muxPower1":{i}}}}}'
        for i in range(60_000)
    ]
    lines[777] = '{"station":"KhonKaen","timestamp":'
    lines[4_321] = lines[4_321].replace('"ChiangMai"', '"Phuket"')
    (folder / "b-monitor.jsonl").write_text("\n".join(lines) + "\n")
    csv = ["timestamp,station,muxPower4"]
    csv += [f"2024-03-02T00:00:{s:02d}Z,Songkhla,{s}" for s in range(60)] + ["x,Songkhla,1"]
    (folder / "c-export.csv").write_text("\n".join(csv) + "\n")


def _snapshot() -> tuple[list[tuple[object, ...]], ...]:
    """Everything a migration writes, by natural keys (surrogate ids differ between runs on
    PostgreSQL, whose sequences do not roll back)."""
    engine = make_engine()
    with engine.connect() as conn:

        def rows(sql: str) -> list[tuple[object, ...]]:
            return [tuple(row) for row in conn.execute(text(sql))]

        readings = rows(
            "SELECT s.name, p.ts, p.active_power1, p.active_power2, p.mux_power1, p.mux_power4, "
            "d.kind, d.reference FROM power_readings p JOIN stations s ON s.id = p.station_id "
            "JOIN load_batches b ON b.id = p.batch_id JOIN data_sources d ON d.id = b.source_id "
            "ORDER BY s.name, p.ts"
        )
        ledger = rows(
            "SELECT input_name, content_hash, status, rows_in, inserted, duplicates, conflicts, "
            "rejected, rejected_by_reason FROM load_batches ORDER BY input_name, id"
        )
        sources = rows("SELECT kind, reference FROM data_sources ORDER BY reference")
        conflicts = rows("SELECT count(*) FROM reading_conflicts")
    engine.dispose()
    return readings, ledger, sources, conflicts


def _run(folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", MIGRATE, str(folder), str(STORE_ROWS)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_kill_9_mid_file_then_rerun_gives_the_uninterrupted_database(
    synced: Database, tmp_path: Path, registry_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "logs"
    _logs(folder)

    # The reference: an uninterrupted run (in this process) into a database of its own.
    reference_url = f"sqlite:///{tmp_path / 'reference.db'}"
    engine = make_engine(reference_url)
    upgrade(engine)
    sync_stations(engine, load_registry(registry_file))
    engine.dispose()
    monkeypatch.setenv("POWERWATCH_DATABASE_URL", reference_url)
    with bulk_connection() as bulk:
        for path in discover([folder]):
            import_file(bulk, path, parse_lines=500, store_rows=STORE_ROWS)
    expected = _snapshot()
    monkeypatch.setenv("POWERWATCH_DATABASE_URL", synced.url)

    # The interrupted run: killed once the second file has stored two blocks.
    victim = _run(folder, dict(os.environ))
    assert victim.stdout is not None
    seen: list[str] = []
    for line in victim.stdout:
        seen.append(line.strip())
        parts = line.split()
        if parts[:2] == ["progress", "b-monitor.jsonl"] and int(parts[2]) >= 2 * STORE_ROWS:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, seen
    assert "done b-monitor.jsonl imported" not in seen
    with bulk_connection() as bulk:  # only the first file is there, whole
        assert bulk.rows("SELECT input_name, status FROM load_batches") == [
            (str(folder.resolve() / "a-monitor.log"), "committed")
        ]

    rerun = _run(folder, dict(os.environ))
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0
    assert "done a-monitor.log skipped" in out and "done b-monitor.jsonl imported" in out

    assert len(expected[0]) > 20_000
    assert _snapshot() == expected
