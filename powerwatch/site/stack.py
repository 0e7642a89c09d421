"""The Prefect side of a site, started as child processes: server, work pool, deployments, worker.

    LocalStack(home, port)
      .start_server()   `prefect server start` on 127.0.0.1 (its database: SQLite under
                        `home`, or PostgreSQL when `server_database_url` is given)
      .prepare()        work pool `powerwatch` (process), the zombie-run automation, the
                        alert automations and their webhook blocks (`alert_webhook_url`),
                        `prefect deploy --all` from prefect.yaml
      .start_worker()   `prefect worker start --pool powerwatch`
      .stop()           worker, then server: SIGTERM, a grace period, then SIGKILL

The demo (`powerwatch demo`) and the end-to-end tests use this one class, so what the
tests prove is what an operator runs. Every child gets its own session (Ctrl-C in the
terminal reaches only us) and is stopped by us, in order. If we die without stopping
them (kill -9, an OOM kill), nothing is left behind either: each child has
PR_SET_PDEATHSIG, and a watchdog (`powerwatch.core.lifecycle`) kills the children's whole
sessions, the worker's flow-run processes included. `prepare()` crashes the runs a
previous, dead site left Pending/Running and frees their concurrency slots
(`powerwatch.site.automations.release_abandoned_runs`), so capture and load resume.
The same commands, run by hand on other machines, are the production layout
(docs/operations.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from powerwatch.core.errors import JobError
from powerwatch.core.lifecycle import SITE_ENV, Watchdog, die_with_parent
from powerwatch.site import discovery

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # powerwatch/site/stack.py
WORK_POOL = "powerwatch"
# Flow runs report a heartbeat this often; the zombie-run automation crashes a run that
# has been silent for three of them (powerwatch.site.automations).
HEARTBEAT_SECONDS = 30


def prefect_command() -> list[str]:
    """The `prefect` CLI of this interpreter's environment (no reliance on PATH)."""
    return [sys.executable, "-m", "prefect"]


def vacuum_environment(history_days: int, events_days: int) -> dict[str, str]:
    """The server's own retention (Prefect's `db_vacuum` service, hourly): finished flow
    runs (with their logs and artifacts) older than `history_days`, events older than
    `events_days`, flow-run heartbeats (two a minute per running run, most of the
    events) after one day at most. Prefect's defaults vacuum events only (7 days) and
    keep run history forever. Durations as ISO 8601 (`P14D`): the forms both of
    Prefect's duration settings accept."""
    return {
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": f"P{history_days}D",
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"P{events_days}D",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_EVENT_RETENTION_OVERRIDES": (
            f'{{"prefect.flow-run.heartbeat": "P{min(1, events_days)}D"}}'
        ),
    }


def offline_environment() -> dict[str, str]:
    """Telemetry off for every Prefect process we start: this site has no internet."""
    return {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


@dataclass
class LocalStack:
    home: Path  # PREFECT_HOME: the server's SQLite database and the processes' logs
    port: int = 4200
    env: dict[str, str] = field(default_factory=dict)  # POWERWATCH_* for the worker's flows
    server_database_url: str | None = None  # e.g. postgresql+asyncpg://…; None = SQLite
    scheduler_loop_seconds: int | None = None  # tests shorten the scheduler's 60 s loop
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _watchdog: Watchdog | None = None
    site_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # SITE_ENV's value
    abandoned: list[str] = field(default_factory=list)  # runs `prepare()` crashed
    alert_webhook_url: str | None = None  # POWERWATCH_ALERT_WEBHOOK_URL: alerts POSTed there
    # The server's run history and events (settings prefect_history_days / _events_days;
    # 14 days: yesterday's failed run, and last week's, are still there to open).
    history_days: int = 14
    events_days: int = 7

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """What every child (and every `prefect` command we run) sees."""
        env = dict(os.environ) | offline_environment() | self.env
        env |= vacuum_environment(self.history_days, self.events_days)
        env |= {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            SITE_ENV: self.site_id,  # inherited by the worker's flow runs: the watchdog's mark
        }
        if self.server_database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.server_database_url
        if self.scheduler_loop_seconds:
            env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = str(self.scheduler_loop_seconds)
        return env

    # --- lifecycle --------------------------------------------------------------------

    def start_server(self, timeout: float = 300.0) -> None:
        # 300 s: on a 2-core host shared with other jobs, start-up took over 120 s.
        if _answers(self.api_url):
            raise JobError(
                f"something already answers on 127.0.0.1:{self.port}; stop it or choose "
                "another port (POWERWATCH_PREFECT_PORT)"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        command = ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self._spawn("server", [*prefect_command(), *command])
        self._wait_healthy(timeout)
        discovery.publish(self.home, self.api_url)  # job commands on this machine find it

    def prepare(self) -> None:
        """Work pool, automations, the dead site's runs released, every deployment of
        prefect.yaml (idempotent). Before `start_worker`: no live worker owns a run then."""
        self.run_prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        # In a child, like the `prefect` commands: the site's long-lived parent does not
        # import Prefect's client (issue 11: footprint).
        request = {
            "api_url": self.api_url,
            "heartbeat_seconds": HEARTBEAT_SECONDS,
            "webhook_url": self.alert_webhook_url,
            "work_pool": WORK_POOL,
            "reason": "The site restarted: no live worker owned this run (its process died "
            "with the previous site); crashed at start-up to free its concurrency slot.",
        }
        done = subprocess.run(
            [sys.executable, "-m", "powerwatch.site.automations", json.dumps(request)],
            cwd=PROJECT_ROOT,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode:
            last = (done.stderr.strip() or "no output").splitlines()[-1]
            raise JobError(f"the automations could not be set up: {last}")
        self.abandoned = json.loads(done.stdout.strip().splitlines()[-1])
        self.run_prefect("--no-prompt", "deploy", "--all")

    def start_worker(self) -> None:
        self._spawn(
            "worker",
            [*prefect_command(), "worker", "start", "--pool", WORK_POOL, "--type", "process"],
        )

    def stop(self, grace: float = 20.0) -> None:
        """Worker first (it stops taking runs), then the server; each gets `grace` seconds."""
        if "server" in self._children:
            discovery.withdraw(self.home, self.api_url)
        for name in ("worker", "server"):
            child = self._children.pop(name, None)
            if child is not None:
                _terminate(child, grace)
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def adopt(self, child: subprocess.Popen[bytes]) -> None:
        """Tie a child started elsewhere (in its own session, `die_with_parent`) to our life
        the way ours are: the watchdog kills its session if we die."""
        if self._watchdog is None:
            self._watchdog = Watchdog(self.site_id)
        self._watchdog.watch(child.pid)

    def alive(self) -> dict[str, bool]:
        return {name: child.poll() is None for name, child in self._children.items()}

    # --- helpers ----------------------------------------------------------------------

    def run_prefect(self, *args: str, timeout: float = 300.0) -> str:
        """Run one `prefect` CLI command against this server; fail with its own last line."""
        done = subprocess.run(
            [*prefect_command(), *args],
            cwd=PROJECT_ROOT,  # `prefect deploy` reads prefect.yaml from here
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise JobError(f"prefect {' '.join(args[:2])} failed: {last}")
        return done.stdout

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self._children[name] = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our Ctrl-C is ours; we stop children in order
            preexec_fn=die_with_parent,  # and our death, however it comes, is theirs
        )
        self.adopt(self._children[name])  # the worker's flow runs are in its session

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        server = self._children["server"]
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise JobError(
                    f"the Prefect server exited ({server.returncode}); see {self.home}/server.log"
                )
            if _answers(self.api_url):
                return
            time.sleep(0.5)
        raise JobError(f"the Prefect server did not answer within {timeout:.0f} s")


def _answers(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _terminate(child: subprocess.Popen[bytes], grace: float) -> None:
    if child.poll() is not None:
        return
    # The whole session: a worker's flow-run subprocesses go with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
