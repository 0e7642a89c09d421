"""The fault-injection suite's shared parts: real `powerwatch` processes, armed fault
points (`powerwatch.core.faults`), small file systems that fill up, and ground truth.

Each case ends by comparing the database with what was put in: no reading missing,
none doubled (`stored_keys`), no half file visible (`visible_files`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from powerwatch.core.faults import ENV, NOTIFY_ENV


def powerwatch_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (the `database` fixture's settings) plus `extra`."""
    env = dict(os.environ) | {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop(ENV, None)
    # Job commands show Prefect's warnings and errors only (powerwatch.site.jobs.quiet_console);
    # the suite also reads Prefect's info lines (e.g. "Retry 1/5 will start" proves a retry).
    env["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
    return env | (extra or {})


def armed(point: str, fault: str = "kill", at: int = 1) -> dict[str, str]:
    """The environment that arms one fault point in the process it is given to."""
    return {ENV: f"{point}={fault}" + (f"@{at}" if at != 1 else "")}


def run_powerwatch(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`powerwatch ARGS` as a real process (in `cwd`, if given: where relative default
    paths such as `data/` would land); its exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "powerwatch.cli", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else powerwatch_env(),
        timeout=timeout,
        cwd=cwd,
    )


def spawn_powerwatch(
    *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """`powerwatch ARGS` in a process group of its own, as a terminal or systemd runs it:
    `os.killpg(proc.pid, SIGTERM)` then reaches it and every child it started."""
    out = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "powerwatch.cli", *args],
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        text=True,
        env=env if env is not None else powerwatch_env(),
        start_new_session=True,
    )


def wait_for_line(path: Path, line: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until `line` appears in the file (a `pause` fault's notice); fails if the process
    ended first. Polls a file: the moment is decided by the process, not by a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {line!r}")
        time.sleep(0.05)
    raise AssertionError(f"{line!r} not reached within {timeout} s")


def paused_at(point: str, notify: Path) -> dict[str, str]:
    """Arm `point` to pause there and announce it in `notify` (see `wait_for_line`)."""
    return armed(point, "pause") | {NOTIFY_ENV: str(notify)}


def kill_group(proc: subprocess.Popen[str]) -> None:
    """A test's clean-up: SIGKILL the process's group if it still runs (a failed case)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def signal_group(proc: subprocess.Popen[str], signum: int, timeout: float) -> float:
    """Send `signum` to the process's whole group; seconds until it exited (fails past
    `timeout`, after killing the group)."""
    started = time.monotonic()
    os.killpg(proc.pid, signum)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        name = signal.Signals(signum).name
        raise AssertionError(f"still running {timeout} s after {name}") from None
    return time.monotonic() - started


def _rows(url: str, sql: str) -> list[Any]:
    """A query's rows, through a SQLAlchemy engine of its own (the test's view, apart
    from the code under test)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sqlalchemy.text(sql)).all())
    finally:
        engine.dispose()


def stored_keys(url: str) -> pl.DataFrame:
    """Every stored reading's (station, ts) with its values, sorted: the ground truth."""
    rows = _rows(
        url,
        "SELECT s.name AS station, p.ts, p.active_power1, p.mux_power1 "
        "FROM power_readings p JOIN stations s ON s.id = p.station_id ORDER BY s.name, p.ts",
    )
    return pl.DataFrame(
        rows,
        schema={"station": pl.String, "ts": pl.Int64, "p1": pl.Float64, "m1": pl.Float64},
        orient="row",
    )


def committed_per_input(url: str) -> dict[str, int]:
    """How many committed ledger batches each input (chunk name, log file path) has: one
    each when every input was loaded exactly once."""
    rows = _rows(
        url,
        "SELECT input_name, count(*) FROM load_batches "
        "WHERE status = 'committed' GROUP BY input_name",
    )
    return {str(name): int(count) for name, count in rows}


def expected_keys(readings: pl.DataFrame) -> pl.DataFrame:
    """`stored_keys`' shape for contract-shaped readings (the ones that should be stored)."""
    return (
        readings.select(
            pl.col("station"),
            pl.col("timestamp").dt.epoch("ms").alias("ts"),
            pl.col("activePower1").alias("p1"),
            pl.col("muxPower1").alias("m1"),
        )
        .unique(["station", "ts"], keep="first")
        .sort("station", "ts")
    )


def visible_files(folder: Path, pattern: str = "**/*") -> list[Path]:
    """Files an analyst's or loader's glob sees (hidden names excluded)."""
    return sorted(
        p
        for p in folder.glob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An 8 MiB tmpfs (as root), for disk-full cases; skipped with the reason otherwise.
    Tests fill it with `fill` and free it with `free`. The disk guard is off here (these
    tests meet a full disk mid-write); `guarded_small_disk` turns it back on."""
    monkeypatch.setenv("POWERWATCH_DISK_MIN_FREE_BYTES", "0")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root and mount(8)")
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system at `disk` until `leave_bytes` (about) remain; the filler file."""
    filler = disk / ".filler"
    free = shutil.disk_usage(disk).free - leave_bytes
    with open(filler, "ab") as handle:
        block = b"\0" * (1 << 16)
        while free > 0:
            try:
                handle.write(block[: min(len(block), free)])
                handle.flush()
            except OSError:
                break
            free -= len(block)
    return filler


def free(disk: Path) -> None:
    """Give the space back."""
    (disk / ".filler").unlink(missing_ok=True)
