"""Issuing a statement killed at each of its fault points (a real `powerwatch statement`
process, SIGKILL exactly there): the revision is recorded once, no half file is visible,
and the same command afterwards completes exactly (the files of the revision written)."""

from __future__ import annotations

import polars as pl
import pytest

from db.engine import bulk_connection
from powerwatch.core.settings import get_settings
from powerwatch.rollups.statements import read_statement_csv
from tests.conftest import Database
from tests.faults.conftest import armed, powerwatch_env, run_powerwatch, visible_files
from tests.test_energy import AFTER, BEFORE, MONTH_END, load, meter, one_kwh_a_minute


@pytest.mark.parametrize("point", ["statement.recorded", "statement.csv_written"])
def test_a_statement_killed_while_issuing_is_completed_by_the_next_run(
    synced: Database, point: str
) -> None:
    seconds = BEFORE + AFTER
    load(synced, meter(seconds, one_kwh_a_minute(seconds, base=5000.0), start=MONTH_END))
    args = ("statement", "--month", "2026-10", "--format", "csv")
    killed = run_powerwatch(*args, env=powerwatch_env(armed(point)))
    assert killed.returncode == -9, killed.stderr
    directory = get_settings().statements_dir
    expected_now = ["statement-2026-10-r1.csv"] if point == "statement.csv_written" else []
    assert [p.name for p in visible_files(directory)] == expected_now  # no half file
    again = run_powerwatch(*args)
    assert again.returncode == 0, again.stderr
    assert "revision 1" in again.stderr and "(new)" not in again.stderr  # recorded once
    assert [p.name for p in visible_files(directory)] == [
        "statement-2026-10-r1.csv",
        "statement-2026-10-r1.parquet",
    ]
    with bulk_connection() as bulk:
        revisions = bulk.frame("SELECT DISTINCT revision FROM energy_statements")
    assert revisions["revision"].to_list() == [1]
    issued = read_statement_csv(directory / "statement-2026-10-r1.csv")
    assert issued.height == 4  # KhonKaen (the only station with readings) x 4 broadcasters
    assert pl.read_parquet(directory / "statement-2026-10-r1.parquet").equals(issued)
