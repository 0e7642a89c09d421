"""Issue 14: idle job commands without Prefect, the site's server found by itself, query
commands without Prefect/pandera, one `--format` set, rounded tables, exact CSV/JSON."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from tests.conftest import Database, make_readings, write_chunk

NOISY = [32351.545000000002, 0.1 + 0.2, 1 / 3]  # float noise a table must not show


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "powerwatch.cli", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else _env(),
        timeout=300,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | extra


def imported(stderr: str) -> set[str]:
    """Top-level packages named in `-X importtime` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def output(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


def _load_noisy(db: Database) -> pl.DataFrame:
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load import landing
    from powerwatch.load.chunks import load_chunk

    frame = make_readings(["KhonKaen"], 3).with_columns(activePower1=pl.Series(NOISY))
    write_chunk(frame, db.data_dir / "landing", "a.parquet")
    with bulk_connection() as bulk:
        for chunk in landing.list_chunks(get_settings().landing_dir):
            load_chunk(bulk, chunk, get_settings())
    return frame


def test_idle_job_commands_never_import_prefect(sqlite_synced: Database, tmp_path: Path) -> None:
    empty = tmp_path / "old-logs"
    empty.mkdir()
    for args in (("load",), ("migrate-logs", str(empty)), ("archive",), ("refresh-rollups",)):
        done = run(*args)
        assert done.returncode == 0, output(done.stderr)
        assert "TOTAL (0" in done.stdout or "0 queued" in done.stdout
        assert not imported(done.stderr) & {"prefect", "pandera"}, args
        assert "temporary" not in output(done.stderr)


HEAVY = {"prefect", "pandera", "sqlalchemy", "alembic", "pyarrow", "adbc_driver_manager", "pandas"}


def test_query_commands_import_no_prefect_pandera_nor_sqlalchemy(sqlite_synced: Database) -> None:
    """On SQLite a query command reads through stdlib sqlite3 (db.reader) and names tables
    through db.names: none of the packages that cost seconds to import is loaded."""
    _load_noisy(sqlite_synced)
    for args in (
        ("latest",),
        ("stations", "list"),
        ("readings",),
        ("rollups",),
        ("completeness", "--station", "KhonKaen", "--day", "2026-11-01"),
        ("status",),
    ):
        done = run(*args)
        assert done.returncode == 0, output(done.stderr)
        assert not imported(done.stderr) & HEAVY, args


def test_db_names_are_the_declared_ones() -> None:
    """db.names (plain strings for readers) names exactly what db.tables declares."""
    from db import names, tables

    declared = {t.name for t in tables.metadata.sorted_tables}
    spelled = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    assert spelled == declared
    assert tuple(c.name for c in tables.rollup_hourly.columns) == names.ROLLUP_COLUMNS
    assert tuple(c.name for c in tables.rollup_daily.columns) == names.ROLLUP_COLUMNS
    assert set(names.READING_VALUE_COLUMNS) < {c.name for c in tables.power_readings.columns}


@pytest.mark.parametrize(
    "command",
    [
        ("latest",),
        ("stations", "list"),
        ("readings",),
        ("rollups",),
        ("completeness", "--station", "KhonKaen", "--day", "2026-11-01"),
    ],
)
def test_every_query_command_takes_every_format(
    sqlite_synced: Database, command: tuple[str, ...]
) -> None:
    _load_noisy(sqlite_synced)
    for fmt in ("table", "csv", "json"):
        done = run(*command, "--format", fmt)
        assert done.returncode == 0, (fmt, output(done.stderr))
    bad = run(*command, "--format", "xml")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_tables_round_and_csv_json_read_back_equal(sqlite_synced: Database) -> None:
    frame = _load_noisy(sqlite_synced)
    table = run("readings", "--format", "table").stdout
    assert "32351.545" in table and "32351.545000000002" not in table
    assert "0.3 " in table and "0.30000000000000004" not in table and "0.333 " in table
    latest = run("latest", "--format", "table").stdout
    assert "0.333 " in latest and "0.3333333" not in latest

    csv = pl.read_csv(io.StringIO(run("readings", "--format", "csv").stdout))
    assert csv["activePower1"].to_list() == NOISY
    lines = run("readings", "--format", "json").stdout.splitlines()
    assert [json.loads(line)["activePower1"] for line in lines] == NOISY
    assert csv["muxPower1"].to_list() == frame["muxPower1"].to_list()
    one = pl.read_csv(io.StringIO(run("latest", "--format", "csv").stdout))
    assert one["activePower1"].to_list() == [NOISY[-1]]
    (row,) = [json.loads(x) for x in run("latest", "--format", "json").stdout.splitlines()]
    assert row["activePower1"] == NOISY[-1]


def test_a_job_run_reports_to_the_sites_server_it_discovers(
    sqlite_synced: Database, prefect_api: str
) -> None:
    from powerwatch.site import discovery

    discovery.publish(discovery.site_home(sqlite_synced.data_dir), prefect_api)
    write_chunk(make_readings(["KhonKaen"], 5), sqlite_synced.data_dir / "landing", "b.parquet")

    def load_runs() -> int:
        found = httpx.post(
            f"{prefect_api}/flow_runs/filter",
            json={"flows": {"name": {"any_": ["load-chunks"]}}},
            timeout=30,
        )
        found.raise_for_status()
        return len(found.json())

    before = load_runs()
    done = run("load")  # no PREFECT_API_URL in its environment
    assert done.returncode == 0, output(done.stderr)
    assert "temporary" not in output(done.stderr)
    assert load_runs() == before + 1


def test_a_stale_announcement_is_ignored(sqlite_synced: Database) -> None:
    from powerwatch.site import discovery

    home = discovery.site_home(sqlite_synced.data_dir)
    discovery.publish(home, "http://127.0.0.1:9/api")  # nothing answers on port 9
    assert discovery.discover(sqlite_synced.data_dir) is None
    discovery.withdraw(home, "http://127.0.0.1:9/api")
    assert not (home / discovery.SERVER_FILE).exists()


def test_archive_is_idle_only_when_a_run_would_do_nothing(sqlite_synced: Database) -> None:
    """`powerwatch archive` skips Prefect only if no day before the cut-off holds readings
    and no dead archiver left a temp file (powerwatch.archive.plan.nothing_to_do)."""
    from typing import cast

    from db.bulk import BulkConnection
    from db.reader import read_connection
    from powerwatch.archive.plan import nothing_to_do
    from powerwatch.core.settings import get_settings
    from tests.conftest import T0

    later = make_readings(["KhonKaen"], 3, start=T0 + timedelta(days=3))
    write_chunk(later, sqlite_synced.data_dir / "landing", "later.parquet")
    _load_noisy(sqlite_synced)  # readings of T0 and of T0 + 3 days
    settings = get_settings()
    root = settings.archive_dir
    assert settings.sqlite_file is not None
    with read_connection(settings.sqlite_file, 1000) as reader:
        bulk = cast(BulkConnection, reader)  # the read half is all it uses
        idle = nothing_to_do(bulk, root, 2)  # cut-off T0 + 1 day: T0's readings to archive
        assert idle is None
        idle = nothing_to_do(bulk, root, 5)
        assert idle is not None and idle.before == T0 - timedelta(days=2)
        leftover = root / "date=2026-01-01" / ".readings.parquet.x.tmp"
        leftover.parent.mkdir(parents=True)
        leftover.touch()
        assert nothing_to_do(bulk, root, 5) is None
