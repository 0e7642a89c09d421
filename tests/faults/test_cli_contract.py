"""The command line contract under bad input (spec/cli.md): every bad argument or setting,
for every command, is refused before anything starts, as one line on stderr, exit 2,
with no traceback, and nothing is created (no database file, no data folder, nothing
in the working folder). Real `powerwatch` processes; no Prefect server is needed: a
job command that got as far as starting a flow would fail against the closed port
`PREFECT_API_URL` points at, and the case would fail with it.

Also: a missing database is reported, never created, by every command but
`db upgrade`/`restore` (exit 1, like a database without the schema), and an unknown
station is bad input (exit 2) for every query command.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.faults.conftest import powerwatch_env, run_powerwatch

# (id, arguments, settings) -> the fragment the one line must hold. "{tmp}" is the case's
# empty folder. Every case's database, data folder and registry are under {tmp} and do
# not exist, except the registry and a legacy log where a case needs them to get as far
# as its bad value.
BAD_SETTINGS: list[tuple[str, list[str], dict[str, str], str]] = [
    (
        "load-url-nonsense",
        ["load"],
        {"DATABASE_URL": "nonsense"},
        "DATABASE_URL: not a database URL",
    ),
    ("load-url-mysql", ["load"], {"DATABASE_URL": "mysql://x@h/d"}, "unsupported database 'mysql'"),
    (
        "latest-url-port",
        ["latest"],
        {"DATABASE_URL": "postgresql://u@h:99999/d"},
        "out of range",
    ),
    (
        "readings-url-port-word",
        ["readings"],
        {"DATABASE_URL": "postgresql://u@h:ab/d"},
        "not a database URL",
    ),
    ("backup-url-memory", ["backup"], {"DATABASE_URL": "sqlite://"}, "needs a file"),
    (
        "restore-url-nonsense",
        ["restore", "{tmp}/b.db.zst"],
        {"DATABASE_URL": "::"},
        "not a database URL",
    ),
    (
        "completeness-url-oracle",
        ["completeness", "--station", "A", "--day", "2026-11-01"],
        {"DATABASE_URL": "oracle://x@h/d"},
        "unsupported database",
    ),
    ("capture-registry-missing", ["capture"], {"STATIONS": "{tmp}/missing.yaml"}, "does not exist"),
    (
        "capture-flush-rows-0",
        ["capture"],
        {"CAPTURE_FLUSH_ROWS": "0"},
        "CAPTURE_FLUSH_ROWS: must be at least 1: '0'",
    ),
    (
        "capture-flush-rows-word",
        ["capture"],
        {"CAPTURE_FLUSH_ROWS": "many"},
        "CAPTURE_FLUSH_ROWS: not a whole number",
    ),
    (
        "capture-flush-seconds-0",
        ["capture"],
        {"CAPTURE_FLUSH_SECONDS": "0"},
        "CAPTURE_FLUSH_SECONDS: must be greater than 0",
    ),
    (
        "capture-flush-seconds-nan",
        ["capture"],
        {"CAPTURE_FLUSH_SECONDS": "nan"},
        "not a finite number",
    ),
    (
        "capture-flush-seconds-neg",
        ["capture"],
        {"CAPTURE_FLUSH_SECONDS": "-3"},
        "must be greater than 0",
    ),
    (
        "archive-retention-neg",
        ["archive"],
        {"RETENTION_DAYS": "-1"},
        "RETENTION_DAYS: must be at least 1: '-1'",
    ),
    (
        "archive-retention-0",
        ["archive"],
        {"RETENTION_DAYS": "0"},
        "RETENTION_DAYS: must be at least 1",
    ),
    (
        "archive-retention-huge",
        ["archive"],
        {"RETENTION_DAYS": "99999999999999999999"},
        "RETENTION_DAYS: must be at most",
    ),
    (
        "archive-retention-fraction",
        ["archive"],
        {"RETENTION_DAYS": "1.5"},
        "RETENTION_DAYS: not a whole number",
    ),
    (
        "latest-busy-word",
        ["latest"],
        {"BUSY_TIMEOUT_MS": "abc"},
        "POWERWATCH_BUSY_TIMEOUT_MS: not a whole number: 'abc'",
    ),
    (
        "load-busy-word",
        ["load"],
        {"BUSY_TIMEOUT_MS": "abc"},
        "POWERWATCH_BUSY_TIMEOUT_MS: not a whole number: 'abc'",
    ),
    ("load-busy-0", ["load"], {"BUSY_TIMEOUT_MS": "0"}, "BUSY_TIMEOUT_MS: must be at least 1"),
    (
        "upgrade-busy-neg",
        ["db", "upgrade"],
        {"BUSY_TIMEOUT_MS": "-1"},
        "BUSY_TIMEOUT_MS: must be at least 1",
    ),
    (
        "list-busy-huge",
        ["stations", "list"],
        {"BUSY_TIMEOUT_MS": "99999999999"},
        "BUSY_TIMEOUT_MS: must be at most 2147483647",
    ),
    (
        "rollups-busy-fraction",
        ["rollups"],
        {"BUSY_TIMEOUT_MS": "1.5"},
        "BUSY_TIMEOUT_MS: not a whole number",
    ),
    ("load-retries-neg", ["load"], {"LOAD_RETRIES": "-1"}, "LOAD_RETRIES: must be at least 0"),
    ("load-retries-word", ["load"], {"LOAD_RETRIES": "x"}, "LOAD_RETRIES: not a whole number"),
    ("demo-port-0", ["demo"], {"PREFECT_PORT": "0"}, "PREFECT_PORT: must be at least 1"),
    ("demo-port-huge", ["demo"], {"PREFECT_PORT": "70000"}, "PREFECT_PORT: must be at most 65535"),
    (
        "backup-keep-hourly-neg",
        ["backup"],
        {"BACKUP_KEEP_HOURLY": "-1"},
        "BACKUP_KEEP_HOURLY: must be at least 0",
    ),
    (
        "backup-keep-daily-word",
        ["backup"],
        {"BACKUP_KEEP_DAILY": "many"},
        "BACKUP_KEEP_DAILY: not a whole number",
    ),
    (
        "sync-stations-empty",
        ["stations", "sync"],
        {"STATIONS": ""},
        "POWERWATCH_STATIONS: must name a path",
    ),
    (
        "migrate-data-dir-empty",
        ["migrate-logs", "{tmp}/in/monitor.log"],
        {"DATA_DIR": ""},
        "POWERWATCH_DATA_DIR: must name a path",
    ),
]
BAD_ARGUMENTS: list[tuple[str, list[str], str]] = [
    ("readings-offset-neg", ["readings", "--offset", "-5"], "--offset: must be at least 0"),
    (
        "readings-offset-huge",
        ["readings", "--offset", "99999999999999999999"],
        "--offset: must be at most 9223372036854775807",
    ),
    ("readings-limit-0", ["readings", "--limit", "0"], "--limit: must be positive"),
    (
        "readings-limit-huge",
        ["readings", "--limit", "99999999999999999999"],
        "--limit: must be at most",
    ),
    ("readings-limit-word", ["readings", "--limit", "ten"], "--limit: not a whole number"),
    ("readings-start-word", ["readings", "--start", "yesterday"], "not an ISO-8601 time"),
    (
        "readings-end-year-1",
        ["readings", "--end", "0001-01-01T00:00:00+05:00"],
        "--end: out of range",
    ),
    ("readings-format", ["readings", "--format", "xml"], "invalid choice"),
    ("rollups-interval", ["rollups", "--interval", "week"], "invalid choice"),
    ("rollups-start-year-10000", ["rollups", "--start", "10000-01-01"], "not an ISO-8601 time"),
    (
        "completeness-day-month-13",
        ["completeness", "--station", "A", "--day", "2024-13-01"],
        "not a day",
    ),
    (
        "completeness-day-last",
        ["completeness", "--station", "A", "--day", "9999-12-31"],
        "--day: out of range",
    ),
    ("completeness-no-station", ["completeness", "--day", "2024-01-01"], "required: --station"),
    ("archive-older-0", ["archive", "--older-than", "0"], "--older-than: must be positive"),
    ("archive-older-neg", ["archive", "--older-than", "-1"], "--older-than: must be positive"),
    (
        "archive-older-huge",
        ["archive", "--older-than", "99999999999999999999"],
        "--older-than: must be at most 36525",
    ),
    (
        "archive-older-fraction",
        ["archive", "--older-than", "1.5"],
        "--older-than: not a whole number",
    ),
    ("capture-flush-rows-0", ["capture", "--flush-rows", "0"], "--flush-rows: must be positive"),
    ("capture-flush-seconds-inf", ["capture", "--flush-seconds", "inf"], "not a finite number"),
    ("capture-duration-neg", ["capture", "--duration", "-1"], "--duration: must be positive"),
    ("capture-duration-huge", ["capture", "--duration", "1e308"], "--duration: must be at most"),
    ("simulate-count-0", ["simulate", "--count", "0"], "--count: must be positive"),
    ("simulate-port-huge", ["simulate", "--port", "70000"], "--port: must be at most 65535"),
    (
        "simulate-ports-past-end",
        ["simulate", "--port", "65530", "--count", "10"],
        "ports beyond 65535",
    ),
    ("simulate-rate-nan", ["simulate", "--rate", "nan"], "not a finite number"),
    ("simulate-seed-neg", ["simulate", "--seed", "-1"], "--seed: must be at least 0"),
    ("migrate-path-missing", ["migrate-logs", "{tmp}/nowhere"], "no such file or folder"),
    (
        "migrate-tz",
        ["migrate-logs", "{tmp}/in/monitor.log", "--tz", "Mars/Olympus"],
        "unknown time zone",
    ),
    (
        "migrate-report-folder",
        ["migrate-logs", "{tmp}/in/monitor.log", "--report", "{tmp}/no/r.json"],
        "no such folder",
    ),
    ("sync-registry-missing", ["stations", "sync", "{tmp}/missing.yaml"], "does not exist"),
    ("restore-backup-missing", ["restore", "{tmp}/none.db.zst"], "no such backup file"),
    ("command-unknown", ["nonsense"], "invalid choice"),
    ("db-no-subcommand", ["db"], "required: db_command"),
]
READ_AND_JOB_COMMANDS: list[list[str]] = [
    ["latest"],
    ["stations", "list"],
    ["readings", "--format", "csv"],
    ["rollups"],
    ["completeness", "--station", "KhonKaen", "--day", "2026-11-01"],
    ["stations", "sync"],
    ["load"],
    ["archive"],
    ["backup"],
    ["refresh-rollups"],
    ["migrate-logs", "{tmp}/in/monitor.log"],
]
EXPECTED = {f"setting-{name}": text for name, _, _, text in BAD_SETTINGS} | {
    f"argument-{name}": text for name, _, text in BAD_ARGUMENTS
}
MISSING = {f"missing-db-{'-'.join(a[:2]).replace('{tmp}/', '')}": a for a in READ_AND_JOB_COMMANDS}
WORKERS = 4  # the cases are independent processes, mostly start-up: a few at once
# ~75 processes of ~1 s each (idle host: ~20 s in all); on a host shared by many, slower.
pytestmark = pytest.mark.timeout(900)


def _everything(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def _isolated(tmp: Path, settings: dict[str, str]) -> dict[str, str]:
    """Settings all under `tmp` (nothing there yet but a registry and one legacy log),
    then the case's own; Prefect pointed at a closed port (no flow may start)."""
    (tmp / "in").mkdir()
    (tmp / "in" / "monitor.log").write_text("not read: the case fails before\n")
    (tmp / "stations.yaml").write_text("stations: []\n")
    env = powerwatch_env() | {
        "POWERWATCH_DATABASE_URL": f"sqlite:///{tmp}/db/powerwatch.db",
        "POWERWATCH_DATA_DIR": str(tmp / "data"),
        "POWERWATCH_STATIONS": str(tmp / "stations.yaml"),
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
    }
    return env | {f"POWERWATCH_{k}": v.replace("{tmp}", str(tmp)) for k, v in settings.items()}


@dataclass
class Outcome:
    done: subprocess.CompletedProcess[str]
    seconds: float
    created: set[Path]  # what appeared in the case's folder (its cwd and every path)
    tmp: Path


def _run_case(tmp: Path, args: list[str], settings: dict[str, str]) -> Outcome | Exception:
    """The case's outcome, or what stopped it (a timeout): reported by its own test."""
    env = _isolated(tmp, settings)
    before = _everything(tmp)
    started = time.monotonic()
    try:
        done = run_powerwatch(
            *(a.replace("{tmp}", str(tmp)) for a in args), env=env, cwd=tmp, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        return exc
    return Outcome(done, time.monotonic() - started, _everything(tmp) - before, tmp)


def _outcome(outcomes: dict[str, Outcome | Exception], case: str) -> Outcome:
    found = outcomes[case]
    if isinstance(found, Exception):
        raise AssertionError(f"{case}: {found}")
    return found


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome | Exception]:
    """Every case of both tables, each a real process in a folder of its own."""
    jobs = {f"setting-{n}": (a, e) for n, a, e, _ in BAD_SETTINGS}
    jobs |= {f"argument-{n}": (a, {}) for n, a, _ in BAD_ARGUMENTS}
    typo = {"DATABASE_URL": "sqlite:///{tmp}/typo/powerwatch.db"}
    jobs |= {name: (args, typo) for name, args in MISSING.items()}
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {
            name: pool.submit(_run_case, tmp_path_factory.mktemp(name.replace("/", "_")), args, env)
            for name, (args, env) in jobs.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_input_is_one_line_exit_2_and_creates_nothing(
    outcomes: dict[str, Outcome | Exception], case: str
) -> None:
    outcome = _outcome(outcomes, case)
    lines = outcome.done.stderr.strip().splitlines()
    assert outcome.done.returncode == 2, outcome.done.stderr
    assert "Traceback" not in outcome.done.stderr
    assert len(lines) == 1, outcome.done.stderr
    assert EXPECTED[case] in lines[0], lines[0]
    assert outcome.created == set()  # no database, no data folder, nothing in the cwd


@pytest.mark.parametrize("case", list(MISSING))
def test_missing_database_is_reported_not_created(
    outcomes: dict[str, Outcome | Exception], case: str
) -> None:
    """A mistyped SQLite path: one line naming it and the remedy, exit 1, nothing created
    (read-only commands open with create=False; job commands check before their flow)."""
    outcome = _outcome(outcomes, case)
    lines = outcome.done.stderr.strip().splitlines()
    assert outcome.done.returncode == 1, outcome.done.stderr
    assert "Traceback" not in outcome.done.stderr and len(lines) == 1, outcome.done.stderr
    path = outcome.tmp / "typo" / "powerwatch.db"
    assert f"no database at {path}: run `powerwatch db upgrade`" in lines[0]
    assert outcome.created == set()


QUERY_COMMANDS = [
    ["readings", "--station", "Atlantis"],
    ["latest", "--station", "Atlantis"],
    ["rollups", "--station", "Atlantis"],
    ["completeness", "--station", "Atlantis", "--day", "2026-11-01"],
]


@pytest.mark.parametrize("args", QUERY_COMMANDS, ids=lambda a: a[0])
def test_unknown_station_is_bad_input_for_every_query(
    sqlite_synced: Database, args: list[str]
) -> None:
    """One rule for every query (the check is one lookup, the same SQL on both backends)."""
    done = run_powerwatch(*args, env=powerwatch_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["powerwatch: error: unknown station: 'Atlantis'"]
    assert done.stdout == ""


def test_known_station_without_readings_is_no_error(sqlite_synced: Database) -> None:
    """The other side of the rule: a registered station without readings answers, exit 0."""
    for args in (["readings", "--station", "KhonKaen"], ["latest", "--station", "KhonKaen"]):
        done = run_powerwatch(*args, env=powerwatch_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
