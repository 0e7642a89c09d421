"""The demo (the site on one machine) killed or Ctrl-C'd while its worker submits runs,
then started again: nothing of the first start survives it, and capture and load resume
by themselves within 3 minutes, with no run of the first start left Pending/Running.

`powerwatch demo` runs as a real process in its own group (as a terminal runs it), on
free ports, with its data in tmp_path. The moment of the signal is decided by the
server's state (a run is Pending or Running: the worker has taken it), never by a sleep.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from powerwatch.site.discovery import site_home
from tests.faults.conftest import powerwatch_env, spawn_powerwatch
from tests.prefect_db import seed

RESUME_LIMIT = 180.0  # seconds from the second start's "running" line (issue 10)
STATIONS = 5  # powerwatch.devtools.demo.DEMO_STATIONS


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; 32768 else)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(span: int = 1) -> int:
    """A port such that `span` consecutive ports from it are free now, below the ephemeral
    range: the demo binds them again on its second start, and a port the kernel may hand
    to any process's outgoing connection in between could be taken by then."""
    rng = random.Random()
    top = _ephemeral_low() - span
    for _ in range(200):
        first = rng.randrange(10_000, top)
        if all(port_free(p) for p in range(first, first + span)):
            return first
    raise AssertionError("no free port range")


def port_free(port: int) -> bool:
    """Nothing listens there (a server could bind it: TIME_WAIT leftovers do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def site_processes(data_dir: Path) -> list[psutil.Process]:
    """Every process of this site (by its POWERWATCH_DATA_DIR), but not this test."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("POWERWATCH_DATA_DIR") == str(
                data_dir
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class Site:
    def __init__(self, tmp_path: Path, migrated: Path | None = None) -> None:
        self.data_dir = tmp_path / "data"
        if migrated is not None:  # the demo's PREFECT_HOME on a migrated copy (tests/prefect_db.py)
            seed(site_home(self.data_dir), migrated)
        self.prefect_port = free_port()
        self.station_port = free_port(STATIONS)
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.env = powerwatch_env(
            {
                "POWERWATCH_DATA_DIR": str(self.data_dir),
                "POWERWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'powerwatch.db'}",
                "POWERWATCH_STATIONS": str(tmp_path / "stations.yaml"),
                "POWERWATCH_PREFECT_PORT": str(self.prefect_port),
                "POWERWATCH_DEMO_STATION_PORT": str(self.station_port),
            }
        )
        self.env.pop("PREFECT_API_URL", None)
        self.tmp_path = tmp_path
        self.starts = 0

    def start(self) -> tuple[subprocess.Popen[str], Path, datetime]:
        """`powerwatch demo` until it says it is running; the process, its log, and when
        it was started (runs created since are this start's)."""
        self.starts += 1
        log = self.tmp_path / f"demo-{self.starts}.log"
        began = datetime.now(UTC)
        proc = spawn_powerwatch("demo", env=self.env, log=log)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if "powerwatch is running" in log.read_text():
                return proc, log, began
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        raise AssertionError(f"the demo did not start within 900 s: {log.read_text()}")

    def runs(self, *types: str) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"limit": 200}
        if types:
            body["flow_runs"] = {"state": {"type": {"any_": list(types)}}}
        response = httpx.post(f"{self.api}/flow_runs/filter", json=body, timeout=30)
        response.raise_for_status()
        runs: list[dict[str, Any]] = response.json()
        return runs

    def names(self) -> dict[str, str]:
        response = httpx.post(f"{self.api}/flows/filter", json={}, timeout=30)
        return {flow["id"]: flow["name"] for flow in response.json()}

    def wait_taken(self, proc: subprocess.Popen[str]) -> None:
        """Until the worker has taken a run (Pending or Running)."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.runs("PENDING", "RUNNING"):
                return
            assert proc.poll() is None
            time.sleep(0.2)
        raise AssertionError("no run was taken by the worker within 300 s")

    def assert_nothing_left(self) -> None:
        """No process of the site and every port free, within a few seconds (the kernel's
        PDEATHSIG and the watchdog act at once; the poll only absorbs scheduling)."""
        deadline = time.monotonic() + 15
        ports = [self.prefect_port, *range(self.station_port, self.station_port + STATIONS)]
        while time.monotonic() < deadline:
            left = site_processes(self.data_dir)
            busy = [p for p in ports if not port_free(p)]
            if not left and not busy:
                return
            time.sleep(0.2)
        names = [" ".join(p.cmdline()[:4]) for p in left]
        raise AssertionError(f"left behind: {names}, ports in use: {busy}")

    def assert_resumes(self, proc: subprocess.Popen[str], since: datetime) -> None:
        """A load-chunks run completed and a capture-stations run running, both started
        after the new start began (schedules create runs ahead: their creation time says
        nothing), and no run left Pending/Running/Cancelling from before it."""
        deadline = time.monotonic() + RESUME_LIMIT
        flows = self.names()
        load_done = capture_running = False
        while time.monotonic() < deadline and not (load_done and capture_running):
            assert proc.poll() is None
            for run in self.runs("COMPLETED", "RUNNING"):
                if not run["start_time"] or datetime.fromisoformat(run["start_time"]) < since:
                    continue
                flow = flows.get(run["flow_id"]) or self.names().get(run["flow_id"])
                state = run["state"]["type"]
                load_done |= flow == "load-chunks" and state == "COMPLETED"
                capture_running |= flow == "capture-stations" and state == "RUNNING"
            time.sleep(1)
        assert load_done and capture_running, (load_done, capture_running, self.summary())
        stale = [
            run["name"]
            for run in self.runs("PENDING", "RUNNING", "CANCELLING")
            if datetime.fromisoformat(run["state"]["timestamp"]) < since
        ]
        assert not stale, f"runs of the dead start still hold slots: {stale}"

    def summary(self) -> list[tuple[str, str, str]]:
        return [
            (r["name"], r["state"]["type"], r["state"].get("message") or "") for r in self.runs()
        ]


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGKILL, id="kill-9"), pytest.param(signal.SIGINT, id="ctrl-c")]
)
def test_demo_stopped_while_submitting_resumes_after_a_restart(
    tmp_path: Path, prefect_db_template: Path, signum: int
) -> None:
    site = Site(tmp_path, prefect_db_template)
    first, _log, _began = site.start()
    try:
        site.wait_taken(first)
        os.killpg(first.pid, signum)
        first.wait(60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    site.assert_nothing_left()

    second, log2, since = site.start()
    try:
        site.assert_resumes(second, since)
    finally:
        stop(second)
    assert second.returncode == 0, log2.read_text()
    site.assert_nothing_left()
