"""The `powerwatch` console script as operators use it: real processes, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import STATIONS_YAML, Database, make_readings, write_chunk


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "powerwatch.cli", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ),
        timeout=120,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert text in result.stderr


def test_db_upgrade_creates_then_is_idempotent(tmp_path: Path) -> None:
    env = dict(os.environ) | {"POWERWATCH_DATABASE_URL": f"sqlite:///{tmp_path}/x/pw.db"}
    first, second = run("db", "upgrade", env=env), run("db", "upgrade", env=env)
    assert first.returncode == second.returncode == 0
    from db.migrate import head_revision

    assert f"schema version {head_revision()}" in second.stdout


def test_stations_sync_and_list(synced: Database, registry_file: Path) -> None:
    result = run("stations", "sync", str(registry_file))
    assert result.returncode == 0 and "0 added, 0 updated, 3 unchanged" in result.stdout
    registry_file.write_text(STATIONS_YAML.replace("scene: south", "scene: deep-south"))
    assert "0 added, 1 updated, 2 unchanged" in run("stations", "sync").stdout
    listing = run("stations", "list")
    assert listing.returncode == 0
    assert "deep-south" in listing.stdout and "KhonKaen" in listing.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stations: [", "not readable YAML"),
        ("stations:\n  - {name: 'bad name', uuid: 1, ip_address: x}", "bad name"),
        (STATIONS_YAML + STATIONS_YAML.split("stations:\n")[1], "duplicate name"),
        (
            STATIONS_YAML.replace(
                "ip_address: 127.0.0.1\n    scene: north\n",
                "ip_address: 127.0.0.1\n    scene: north\n    url: http://x/\n",
            ),
            "bad URL scheme",
        ),
    ],
)
def test_malformed_registry_is_refused_whole(
    synced: Database, tmp_path: Path, text: str, message: str
) -> None:
    before = run("stations", "list").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    _one_line_error(run("stations", "sync", str(bad)), 2, message)
    assert run("stations", "list").stdout == before


def test_bad_arguments_are_one_line_usage_errors(sqlite_database: Database) -> None:
    _one_line_error(run("readings", "--start", "yesterday"), 2, "not an ISO-8601 time")
    _one_line_error(run("readings", "--format", "xml"), 2, "invalid choice")
    _one_line_error(run("readings", "--limit", "-3"), 2, "must be positive")
    _one_line_error(run("nonsense"), 2, "invalid choice")


def test_database_url_problems(tmp_path: Path) -> None:
    env = dict(os.environ)
    _one_line_error(
        run("latest", env=env | {"POWERWATCH_DATABASE_URL": "nonsense"}), 2, "not a database URL"
    )
    _one_line_error(
        run("latest", env=env | {"POWERWATCH_DATABASE_URL": "mysql://x/y"}), 2, "unsupported"
    )
    _one_line_error(
        run(
            "latest", env=env | {"POWERWATCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        ),
        1,
        "cannot connect",
    )
    _one_line_error(
        run("latest", env=env | {"POWERWATCH_DATABASE_URL": f"sqlite:///{tmp_path}/new.db"}),
        1,
        "powerwatch db upgrade",
    )


def test_readings_csv_and_latest(synced: Database) -> None:
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load import landing
    from powerwatch.load.chunks import load_chunk

    frame = make_readings(["KhonKaen", "ChiangMai"], 5)
    write_chunk(frame, synced.data_dir / "landing", "a.parquet")
    with bulk_connection() as bulk:
        for chunk in landing.list_chunks(get_settings().landing_dir):
            load_chunk(bulk, chunk, get_settings())

    csv = run(
        "readings",
        "--station",
        "KhonKaen",
        "--start",
        "2026-11-01T00:00:01",
        "--end",
        "2026-11-01T07:00:03+07:00",
        "--format",
        "csv",
    )
    assert csv.returncode == 0
    lines = csv.stdout.splitlines()
    assert lines[0].startswith("timestamp,station,activePower1")
    assert [line.split(",")[0] for line in lines[1:]] == [
        "2026-11-01T00:00:01.000Z",
        "2026-11-01T00:00:02.000Z",
    ]

    as_json = run("readings", "--format", "json", "--limit", "3")
    assert as_json.returncode == 0
    parsed = pl.read_ndjson(as_json.stdout.encode())
    assert parsed["station"].to_list() == ["ChiangMai"] * 3

    newest = run("latest", "--station", "ChiangMai")
    assert newest.returncode == 0 and "2026-11-01 00:00:04" in newest.stdout


@pytest.mark.slow
def test_load_command_exit_codes(
    synced: Database, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    landing_dir = synced.data_dir / "landing"
    write_chunk(make_readings(["KhonKaen"], 3), landing_dir, "a.parquet")
    ok = run("load")
    assert ok.returncode == 0, ok.stderr
    assert "TOTAL (1 chunks)" in ok.stdout
    (landing_dir / "b.parquet").write_bytes(b"junk")
    failed = run("load")
    assert failed.returncode == 1
    assert "unreadable" in failed.stdout


def test_the_site_sets_up_in_children_with_the_commands_own_output(tmp_path: Path) -> None:
    """`serve`/`demo` run their set-up (schema, stations sync) as `--setup` children: the
    same lines on success, the same one-line error and exit code on failure (issue 11:
    the long-lived parent never imports the database stack)."""
    registry = tmp_path / "stations.yaml"
    registry.write_text(STATIONS_YAML)
    env = dict(os.environ) | {
        "POWERWATCH_DATABASE_URL": f"sqlite:///{tmp_path}/pw.db",
        "POWERWATCH_STATIONS": str(registry),
    }
    schema = run("serve", "--setup", "database", env=env)
    assert schema.returncode == 0, schema.stderr
    assert schema.stdout.startswith(f"database: sqlite:///{tmp_path}/pw.db")
    synced = run("serve", "--setup", "stations", env=env)
    assert synced.returncode == 0, synced.stderr
    assert "stations: SyncResult(added=3" in synced.stdout
    registry.write_text("stations: [")
    _one_line_error(run("serve", "--setup", "stations", env=env), 2, "not readable YAML")


def test_the_sites_parent_imports_no_database_or_prefect_client() -> None:
    """What `powerwatch serve` holds for the site's whole life (docs/design.md, Footprint);
    polars stays (the registry's station-name pattern lives with the channel schema)."""
    heavy = "('sqlalchemy', 'pandera', 'prefect', 'db.engine')"
    code = (
        "import sys, powerwatch.cli, powerwatch.devtools.demo, powerwatch.site.stack;"
        f"print(sorted(m for m in {heavy} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
