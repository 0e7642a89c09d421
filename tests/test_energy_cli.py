"""`powerwatch statement` (bad input exit 2, a closed month issued, an open one provisional)
and the `energy-statements` flow on a real Prefect server with its artifacts."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import polars as pl
import pytest

from powerwatch.cli import main
from powerwatch.core.settings import get_settings
from powerwatch.rollups.statements import read_statement_csv
from tests.conftest import Database
from tests.test_energy import AFTER, BEFORE, MONTH_END, load, meter, one_kwh_a_minute


def _loaded(db: Database) -> None:
    seconds = BEFORE + AFTER
    load(db, meter(seconds, one_kwh_a_minute(seconds, base=5000.0), start=MONTH_END))


def test_statement_command_issues_a_closed_month(
    synced: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    _loaded(synced)
    assert (
        main(["statement", "--month", "2026-10", "--station", "KhonKaen", "--format", "csv"]) == 0
    )
    out, err = capsys.readouterr()
    frame = read_statement_csv(io.BytesIO(out.encode()))
    assert frame["broadcaster"].to_list() == ["TV5", "MCOT", "PRD", "TPBS"]
    tv5 = frame.row(0, named=True)
    assert (tv5["consumption_kwh"], tv5["estimated_kwh"]) == (
        pytest.approx(60.0),
        pytest.approx(30.0),
    )
    assert tv5["period_start"] == datetime(2026, 9, 30, 17, tzinfo=UTC)
    assert "statement 2026-10 (Asia/Bangkok): revision 1 (new)" in err
    files = sorted(p.name for p in get_settings().statements_dir.iterdir())
    assert files == ["statement-2026-10-r1.csv", "statement-2026-10-r1.parquet"]
    # Again: nothing changed, no new revision; the table format for people.
    assert main(["statement", "--month", "2026-10"]) == 0
    out, err = capsys.readouterr()
    assert "revision 1\n" in err and "(new)" not in err
    assert "KhonKaen" in out and "TPBS" in out and "est kWh" in out
    # The current month has not closed: provisional, nothing issued.
    current = datetime.now(UTC).strftime("%Y-%m")
    assert main(["statement", "--month", current, "--tz", "UTC", "--format", "json"]) == 0
    assert "provisional" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--month", "2026-13"], "not a month (YYYY-MM): '2026-13'"),
        (["--month", "2026-10", "--tz", "Mars/Olympus"], "unknown time zone: 'Mars/Olympus'"),
        (["--month", "2026-10", "--tz", "Asia/Kolkata"], "must fall on whole UTC hours"),
        (["--month", "2026-10", "--station", "Atlantis"], "unknown station: 'Atlantis'"),
    ],
)
def test_statement_bad_input_is_one_line_and_exit_2(
    synced: Database, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["statement", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not get_settings().statements_dir.exists()  # nothing issued


@pytest.mark.slow
def test_energy_statements_flow_publishes_tables_and_the_chart(
    prefect_server: None, synced: Database
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    from flows.energy_statements import energy_statements

    _loaded(synced)
    state = energy_statements(month="2026-10", return_state=True)
    assert state.is_completed() and state.result() == 1
    this_run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        [summary] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["energy-statement"]), flow_run_id=this_run
            )
        )
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(like_="statement-"), flow_run_id=this_run
            )
        )
    markdown = str(summary.data)
    assert "```mermaid\nxychart-beta" in markdown and "revision 1" in markdown
    assert "| TV5 | 60.0 | 30.0 | 0 |" in markdown
    assert sorted(a.key or "" for a in tables) == ["statement-khonkaen"]
    assert (
        pl.read_parquet(get_settings().statements_dir / "statement-2026-10-r1.parquet").height == 4
    )
