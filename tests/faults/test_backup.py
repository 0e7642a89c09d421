"""Backups under faults, with real `powerwatch backup` / `restore` processes: killed (-9)
at each fault point, then run again; on a full disk, then again once there is room; a
PostgreSQL backup whose URL carries a password (never on pg_dump's command line); restore
of a file whose manifest or checksum is broken (refused in one line).

Each case ends with: every visible backup has its manifest and verifies, rotation sees
every backup, no temp file (`.powerwatch-*`, `-journal`) is left, the database unchanged.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy

from db.engine import bulk_connection
from powerwatch.backup import snapshots as backup
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from tests.conftest import PG_BASE, T0, Database, make_readings, write_chunk
from tests.faults.conftest import (
    armed,
    fill,
    free,
    powerwatch_env,
    run_powerwatch,
    stored_keys,
    visible_files,
)

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]


def _load(seconds: int) -> None:
    settings = get_settings()
    chunk = write_chunk(
        make_readings(STATIONS, seconds, T0), settings.landing_dir, f"{uuid.uuid4().hex}.parquet"
    )
    with bulk_connection() as bulk:
        assert load_chunk(bulk, chunk, settings).rejected == 0


def _env(prefect_api: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return powerwatch_env({"PREFECT_API_URL": prefect_api} | (extra or {}))


def _backup_files(folder: Path) -> set[Path]:
    """Backups as anyone listing the folder sees them (manifest or not)."""
    return {
        p
        for p in visible_files(folder)
        if p.name.endswith((backup.SQLITE_SUFFIX, backup.POSTGRES_SUFFIX))
    }


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


def assert_backups_consistent(folder: Path) -> None:
    """Every visible backup has a manifest and verifies; rotation's listing is exactly
    the visible backups; no manifest without its backup; no temp file."""
    seen = _backup_files(folder)
    assert seen, "no backup at all"
    assert set(backup.list_backups(folder)) == seen  # rotation sees every backup
    for path in seen:
        backup.verify_backup(path)
    manifests = {p for p in visible_files(folder) if p.name.endswith(backup.MANIFEST_SUFFIX)}
    assert manifests == {backup.manifest_of(p) for p in seen}
    assert _temps(folder) == []


# Each `powerwatch backup` imports Prefect (5 s of CPU, 20-40 s on this shared host), so
# the points are killed in turn on one folder: each next run must first settle what the
# dead one left (temps, a backup without its manifest), then reaches its own point.
POINTS = ["backup.copied", "backup.verified", "backup.renamed", "backup.rotated"]


@pytest.mark.timeout(900)  # 5 job processes at 20-40 s each on the shared host
def test_kill_at_each_backup_point_then_rerun_leaves_only_verified_backups(
    sqlite_synced: Database, prefect_api: str
) -> None:
    _load(200)
    before = stored_keys(sqlite_synced.url)
    folder = get_settings().backups_dir
    backup.backup_database(sqlite_synced.url, folder)  # an older one, for rotation to remove
    left: dict[str, list[str]] = {}
    for point in POINTS:
        killed = run_powerwatch("backup", env=_env(prefect_api, armed(point)))

        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        left[point] = sorted(p.name for p in _temps(folder) if p.name != ".filler")
        if point == "backup.renamed":  # visible without a manifest: the case to settle
            orphans = {p for p in _backup_files(folder) if not backup.manifest_of(p).exists()}
            assert len(orphans) == 1
    assert left["backup.copied"] and left["backup.verified"], left  # temps a kill leaves

    again = run_powerwatch("backup", env=_env(prefect_api), timeout=240)

    assert again.returncode == 0, again.stderr[-2000:]
    assert_backups_consistent(folder)
    assert stored_keys(sqlite_synced.url).equals(before)


def test_backup_on_a_full_disk_fails_in_one_line_and_completes_after_space_is_freed(
    sqlite_synced: Database, prefect_api: str, small_disk: Path
) -> None:
    _load(3000)  # the database (in tmp_path, not on the small disk) is ~1 MB
    before = stored_keys(sqlite_synced.url)
    env = _env(prefect_api, {"POWERWATCH_DATA_DIR": str(small_disk)})
    folder = small_disk / "backups"
    fill(small_disk, leave_bytes=64 << 10)

    full = run_powerwatch("backup", env=env)

    assert full.returncode == 1, full.stderr[-2000:]
    [last] = [x for x in full.stderr.splitlines() if x.startswith("powerwatch:")]
    assert last.startswith("powerwatch: error:") and "disk full" in last, full.stderr[-2000:]
    assert "Traceback" not in full.stderr and "Retry 1/" not in full.stderr
    assert _backup_files(folder) == set()
    assert [p.name for p in _temps(folder)] == []  # no copy, no -journal, no packed temp
    assert stored_keys(sqlite_synced.url).equals(before)

    free(small_disk)
    done = run_powerwatch("backup", env=env)

    assert done.returncode == 0, done.stderr[-2000:]
    assert_backups_consistent(folder)
    [made] = backup.list_backups(folder)
    assert backup.Manifest.read(made).rows["power_readings"] == len(before)


@pytest.fixture
def password_role(synced: Database) -> Iterator[tuple[str, str]]:
    """A login role with a password that may read the test schema: (its URL, password)."""
    if synced.backend != "postgresql":
        pytest.skip("pg_dump and its password: PostgreSQL only")
    schema = synced.url.rsplit("%3D", 1)[1]
    role, password = f"pw_{uuid.uuid4().hex[:10]}", f"Sec-{uuid.uuid4().hex}"
    admin = sqlalchemy.create_engine(PG_BASE)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sqlalchemy.text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
        for kind in ("TABLES", "SEQUENCES"):
            conn.execute(
                sqlalchemy.text(f"GRANT SELECT ON ALL {kind} IN SCHEMA {schema} TO {role}")
            )
    url = sqlalchemy.make_url(synced.url).set(username=role, password=password)
    yield url.render_as_string(hide_password=False), password
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP OWNED BY {role}"))
        conn.execute(sqlalchemy.text(f"DROP ROLE {role}"))
    admin.dispose()


def test_postgresql_password_goes_to_pg_dump_by_environment_never_its_command_line(
    synced: Database, password_role: tuple[str, str], prefect_api: str, tmp_path: Path
) -> None:
    url, password = password_role
    _load(100)
    # pg_dump as found first on PATH: records its real argv and whether PGPASSWORD
    # carries the password, then runs the real pg_dump with the same arguments.
    bin_dir, argv_log, env_log = tmp_path / "bin", tmp_path / "argv.log", tmp_path / "env.log"
    bin_dir.mkdir()
    real = "/usr/bin/pg_dump" if Path("/usr/bin/pg_dump").exists() else "pg_dump"
    wrapper = bin_dir / "pg_dump"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$0\" \"$@\" >> '{argv_log}'\n"
        f"[ \"$PGPASSWORD\" = '{password}' ] && echo password-in-env >> '{env_log}'\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    env = _env(
        prefect_api,
        {"POWERWATCH_DATABASE_URL": url, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    folder = get_settings().backups_dir

    killed = run_powerwatch("backup", env=env | armed("backup.renamed"))
    [orphan] = _backup_files(folder)  # visible, no manifest
    assert not backup.manifest_of(orphan).exists()
    # What the next run does first, here in-process to see which way it went: the
    # killed run's dump verifies (pg_restore --list) and gets its manifest.
    assert backup.recover(folder) == [f"completed {orphan.name} (verified again, manifest written)"]
    backup.verify_backup(orphan)
    done = run_powerwatch("backup", env=env)

    assert killed.returncode == -9 and done.returncode == 0, done.stderr[-2000:]
    argv = argv_log.read_text()
    assert argv.count("--format=custom") == 2  # both runs went through the recorder
    assert password not in argv and "--dbname=postgresql://" in argv
    assert env_log.read_text().split() == ["password-in-env"] * 2
    assert password not in done.stdout + done.stderr + killed.stdout + killed.stderr
    # Rotation saw the settled dump (same hour as the new one): it went.
    [kept] = _backup_files(folder)
    assert kept != orphan and not orphan.exists()
    assert_backups_consistent(folder)


def test_restore_refuses_a_broken_manifest_or_checksum_in_one_line(
    sqlite_synced: Database,
) -> None:
    _load(100)
    folder = get_settings().backups_dir
    made, _ = backup.backup_database(sqlite_synced.url, folder)
    before = stored_keys(sqlite_synced.url)
    env = powerwatch_env()
    manifest = backup.manifest_of(made)
    good = manifest.read_text()
    stranger = folder.parent / "notes.db.zst"
    stranger.write_bytes(b"not a backup")

    cases: dict[str, Callable[[], object]] = {
        "damaged manifest": lambda: manifest.write_text(good[: len(good) // 2]),
        "damaged manifest ": lambda: manifest.write_text('{"file": 3}'),
        "checksum differs": lambda: (
            manifest.write_text(good),
            made.write_bytes(made.read_bytes()[:-1] + b"\0"),
        ),
    }
    for expect, damage in cases.items():
        damage()

        done = run_powerwatch("restore", str(made), "--force", env=env, timeout=120)

        assert done.returncode == 2, (expect, done.stderr)
        [line] = done.stderr.strip().splitlines()  # one line, no traceback
        assert expect.strip() in line and line.startswith("powerwatch: error:"), line
        assert stored_keys(sqlite_synced.url).equals(before)  # nothing restored
    alien = run_powerwatch("restore", str(stranger), "--force", env=env, timeout=120)
    assert alien.returncode == 2 and "no manifest" in alien.stderr.strip(), alien.stderr
    assert len(alien.stderr.strip().splitlines()) == 1
