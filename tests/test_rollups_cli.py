"""The rollup commands: queries without Prefect, the `refresh-rollups` flow on a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import polars as pl
import pytest

from powerwatch.cli import main
from tests.conftest import T0, Database
from tests.conftest import load_frame as load
from tests.test_rollups import readings, refresh

HOUR = 3600


def test_rollups_csv_json_and_the_pending_note(
    synced: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    load(synced, readings("KhonKaen", list(range(0, 2 * HOUR, 10))))
    assert main(["rollups", "--station", "KhonKaen", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1  # only the header: nothing refreshed yet...
    assert "2 station-hour(s) wait for `powerwatch refresh-rollups`" in err  # ...and it says so
    refresh()
    assert main(["rollups", "--station", "KhonKaen", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    hours = pl.read_csv(out.encode())
    assert hours["start"].to_list() == ["2026-11-01T00:00:00.000Z", "2026-11-01T01:00:00.000Z"]
    assert hours["muxPower1_kwh"].to_list() == pytest.approx([35.9, 36.0])
    start = (T0 + timedelta(hours=1)).isoformat()
    assert main(["rollups", "--interval", "day", "--start", start, "--format", "json"]) == 0
    assert capsys.readouterr().out == ""  # the day starts before --start (JSON lines: none)
    assert main(["rollups", "--interval", "day", "--format", "json"]) == 0
    [day] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (day["station"], day["samples"]) == ("KhonKaen", 720)
    assert day["muxPower1_kwh"] == pytest.approx(71.9)
    assert main(["rollups"]) == 0
    table = capsys.readouterr().out
    assert "mux4 kWh" in table and "resets" in table and "35.9" in table


def test_completeness_command(synced: Database, capsys: pytest.CaptureFixture[str]) -> None:
    load(synced, readings("KhonKaen", [*range(0, 6 * HOUR, 10), *range(7 * HOUR, 86400, 10)]))
    argv = ["completeness", "--station", "KhonKaen", "--day", "2026-11-01", "--format", "json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["received"], report["expected"]) == (8280, 8640)
    assert report["missing"] == [
        {"start": "2026-11-01T05:59:50.000Z", "end": "2026-11-01T07:00:00.000Z", "seconds": 3610.0}
    ]
    assert main(argv[:-2]) == 0
    assert "05:59:50" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(
    synced: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completeness", "--station", "Nowhere", "--day", "2026-11-01"]) == 2
    assert capsys.readouterr().err == "powerwatch: error: unknown station: 'Nowhere'\n"
    assert main(["rollups", "--station", "Nowhere"]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["completeness", "--station", "KhonKaen", "--day", "1 Nov"])
    assert exited.value.code == 2
    assert "not a day (YYYY-MM-DD)" in capsys.readouterr().err


def test_query_commands_do_not_import_prefect(synced: Database) -> None:
    """In a process of its own: flows the suite runs in this one leave Prefect's background
    workers behind (logs, events), and those import Prefect's modules again at any time,
    so clearing `sys.modules` here proved nothing either way."""
    code = (
        "import sys\n"
        "from powerwatch.cli import main\n"
        "assert main(['rollups', '--interval', 'day']) == 0\n"
        "assert main(['completeness', '--station', 'KhonKaen', '--day', '2026-11-01']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows')))\n"
    )
    done = subprocess.run(  # the fixture's settings are in this process's environment
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


@pytest.mark.slow
def test_refresh_rollups_flow_and_command(prefect_server: None, synced: Database) -> None:
    from flows.refresh_rollups import refresh_rollups
    from powerwatch.rollups.refresh import RefreshResult

    load(synced, readings("KhonKaen", list(range(0, 2 * HOUR, 10))))
    state = refresh_rollups(return_state=True)
    assert state.is_completed()
    result = state.result()
    assert isinstance(result, RefreshResult)
    assert (result.marks, result.recomputed, result.days) == (2, 2, 1)
    load(synced, readings("ChiangMai", list(range(0, HOUR, 10))))
    assert main(["refresh-rollups"]) == 0
    from db.engine import bulk_connection
    from db.rollup_queue import pending_hours
    from powerwatch.rollups.queries import rollups

    with bulk_connection() as bulk:
        assert pending_hours(bulk) == 0
        assert rollups(bulk, "hour")["station"].to_list() == ["ChiangMai", "KhonKaen", "KhonKaen"]
