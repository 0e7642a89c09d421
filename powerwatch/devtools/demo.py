"""`powerwatch serve` and `powerwatch demo`: the whole system on one machine, until Ctrl-C.

`serve` is a real site: against the registry in `POWERWATCH_STATIONS`, no simulator,
steps 1, 3, 4 and 5 below; the alert automations send to `POWERWATCH_ALERT_WEBHOOK_URL`.
`demo` is `serve` plus the simulator (step 2), on the embedded defaults;
`demo --outage SIM-0002@60+120` takes a station off air to show an alert.

Runbook (each step is what an operator would do by hand on a site):
1. `powerwatch db upgrade` on the configured database (SQLite `data/powerwatch.db`);
2. the simulator: five stations with faults on 127.0.0.1, writing `stations.yaml`;
3. `powerwatch stations sync`: the simulated stations, and (demo only) the five stations of
   the legacy sample logs (`SAMPLE_LOG_STATIONS`, as `../shared/samples/stations.yaml`
   lists them), so that the README's migration example imports their readings. They are
   in the database only, not in `stations.yaml`: capture does not dial them and health
   does not watch them (they are off air in the demo);
4. a Prefect server on 127.0.0.1 (its own SQLite under `data/prefect/`), the work pool,
   the zombie-run automation, every deployment of prefect.yaml, and a worker;
5. one capture run and one load run started at once, so the UI has runs to show before
   the schedules' first ticks.
Ctrl-C (or SIGTERM) stops the worker, the server and the simulator, in that order; the
data stays in `data/` for the next start. If the demo is killed instead (kill -9, an OOM
kill), its children die with it (`powerwatch.core.lifecycle`), and the next start crashes the
runs the dead one left behind and frees their concurrency slots (`LocalStack.prepare`),
so capture and load resume by themselves. A port held by something else: one line, exit 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from powerwatch.core.errors import JobError
from powerwatch.core.lifecycle import SITE_ENV, die_with_parent
from powerwatch.core.settings import Settings
from powerwatch.site.discovery import site_home
from powerwatch.site.stack import LocalStack, offline_environment
from schemas.registry import Station

DEMO_STATIONS = 5
DEMO_RATE_HZ = 1.0
DEMO_FIRST_PORT = 19100  # POWERWATCH_DEMO_STATION_PORT moves it (tests, a second demo)
# Started once at start-up; afterwards their schedules take over.
UI_ONLY = "the UI only (set POWERWATCH_ALERT_WEBHOOK_URL)"
KICK_OFF = ("capture-stations/overlapping-windows", "load-chunks/every-4-minutes")
# The stations of the legacy sample logs (`../shared/samples/stations.yaml`, verbatim, so a
# later `stations sync` of that file changes nothing): the demo registers them so that the
# README's `migrate-logs ../shared/samples/legacy-logs` imports readings instead of
# rejecting every one as "unknown station".
SAMPLE_LOG_STATIONS: tuple[Station, ...] = (
    Station(
        "KhonKaen",
        "237db9a3-0311-4ba5-a431-7182045adce9",
        "127.0.0.1",
        "northeast",
        "ws://127.0.0.1:19100/",
    ),
    Station(
        "ChiangMai",
        "a3b4f9db-5a66-4019-aebb-6c47f99e1f95",
        "127.0.0.1",
        "north",
        "ws://127.0.0.1:19101/",
    ),
    Station(
        "Songkhla",
        "01d79e66-46cb-49b9-a8d9-1b110132253f",
        "127.0.0.1",
        "south",
        "ws://127.0.0.1:19102/",
    ),
    Station(
        "Phuket",
        "8200e417-09cd-4b20-aa1b-ea0fd469ba2e",
        "127.0.0.1",
        "south",
        "ws://127.0.0.1:19103/",
    ),
    Station(
        "UdonThani",
        "025d1f2b-48be-49f0-a3cd-93bd444b967d",
        "127.0.0.1",
        "northeast",
        "ws://127.0.0.1:19104/",
    ),
)


def demo_registry(simulated: Sequence[Station]) -> list[Station]:
    """What the demo syncs into the database: the simulator's stations, then the sample
    logs' stations (a name the simulator uses is not added twice)."""
    names = {s.name for s in simulated}
    return [*simulated, *(s for s in SAMPLE_LOG_STATIONS if s.name not in names)]


def absolute_environment(settings: Settings) -> dict[str, str]:
    """The settings as absolute paths, so the worker's flow runs see the same files as we do."""
    url = settings.database_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return {
        "POWERWATCH_DATABASE_URL": url,
        "POWERWATCH_DATA_DIR": str(settings.data_dir.resolve()),
        "POWERWATCH_STATIONS": str(settings.stations.resolve()),
    }


def check_ports_free(first: int, count: int) -> None:
    """The simulator's ports, before anything starts: one clear line if one is taken."""
    for port in range(first, first + count):
        with socket.socket() as probe:
            # as the simulator binds: a dead demo's connections in TIME_WAIT do not count
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise JobError(
                    f"port {port} (the demo's simulated stations) is in use by another "
                    "process; stop it (an earlier demo?) and start again"
                ) from None


def station_port() -> int:
    return int(os.environ.get("POWERWATCH_DEMO_STATION_PORT", DEMO_FIRST_PORT))


def start_simulator(
    settings: Settings, env: dict[str, str], stack: LocalStack, outages: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """The stations, as a child process that writes the registry when its servers listen;
    tied to our life (`stack.adopt`)."""
    command = [
        sys.executable,
        "-m",
        "powerwatch.cli",
        "simulate",
        "--count",
        str(DEMO_STATIONS),
        "--rate",
        str(DEMO_RATE_HZ),
        "--port",
        str(station_port()),
        "--faults",
        *(f"--outage={outage}" for outage in outages),
    ]
    log = settings.data_dir.resolve() / "simulator.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    before = settings.stations.stat().st_mtime_ns if settings.stations.exists() else 0
    with open(log, "ab") as out:
        child = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    stack.adopt(child)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise JobError(f"the simulator exited ({child.returncode}); see {log}")
        if settings.stations.exists() and settings.stations.stat().st_mtime_ns > before:
            return child
        time.sleep(0.2)
    child.terminate()
    raise JobError(f"the simulator did not write {settings.stations} within 60 s; see {log}")


def run_demo(settings: Settings, outages: Sequence[str] = ()) -> int:
    return run_site(settings, simulate=True, outages=outages)


def setup_step(settings: Settings, step: str, *, simulate: bool) -> int:
    """One set-up step of `run_site`, run in a child process (`--setup STEP`): `database`
    upgrades the schema, `stations` syncs the registry (the demo's, with the sample
    logs' stations). In a child so that the site's long-lived parent never imports
    SQLAlchemy, polars or the schema (~90 MB it would hold for days; issue 11)."""
    from db.engine import make_engine

    engine = make_engine(settings.database_url)
    try:
        if step == "database":
            from db.migrate import upgrade

            upgrade(engine)
            print(f"database: {absolute_environment(settings)['POWERWATCH_DATABASE_URL']}")
        else:
            from db.stations import sync_stations
            from schemas.registry import load_registry

            registry = load_registry(settings.stations)
            where = str(settings.stations)
            if simulate:
                registry = demo_registry(registry)
                where += " + the legacy sample logs' stations"
            print(f"stations: {sync_stations(engine, registry)} ({where})")
    finally:
        engine.dispose()
    return 0


def _setup_in_child(step: str, *, simulate: bool, env: dict[str, str]) -> int:
    """`setup_step` in a child of the same command: its output and its one-line error
    (exit code included) are the command's own."""
    sys.stdout.flush()
    command = [sys.executable, "-m", "powerwatch.cli", "demo" if simulate else "serve"]
    return subprocess.run([*command, "--setup", step], env=env, check=False).returncode


def run_site(settings: Settings, *, simulate: bool, outages: Sequence[str] = ()) -> int:
    env = absolute_environment(settings)
    os.environ.update(env)
    child_env = dict(os.environ) | offline_environment() | env
    failed = _setup_in_child("database", simulate=simulate, env=child_env)
    if failed:
        return failed

    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    stack = LocalStack(home=site_home(settings.data_dir), port=settings.prefect_port)
    stack.env = env
    stack.alert_webhook_url = settings.alert_webhook_url
    stack.history_days = settings.prefect_history_days
    stack.events_days = settings.prefect_events_days
    simulator: subprocess.Popen[bytes] | None = None
    if simulate:
        check_ports_free(station_port(), DEMO_STATIONS)
        simulator = start_simulator(settings, child_env | {SITE_ENV: stack.site_id}, stack, outages)
    try:
        failed = _setup_in_child("stations", simulate=simulate, env=child_env)
        if failed:
            return failed
        print("starting the Prefect server on 127.0.0.1 ...", flush=True)
        stack.start_server()
        print("deploying prefect.yaml, starting a worker ...", flush=True)
        stack.prepare()
        if stack.abandoned:
            print(
                f"crashed {len(stack.abandoned)} run(s) the previous start left behind, "
                "and freed their concurrency slots",
                flush=True,
            )
        stack.start_worker()
        for deployment in KICK_OFF:
            stack.run_prefect("deployment", "run", deployment)
        print(
            f"\npowerwatch is running. Prefect UI: {stack.ui_url}\n"
            f"  data: {env['POWERWATCH_DATA_DIR']}   logs: {stack.home}/*.log\n"
            "  migrate the legacy logs: PREFECT_API_URL="
            f"{stack.api_url} .venv/bin/prefect deployment run "
            "migrate-logs/by-hand --param paths='[\"../shared/samples/legacy-logs\"]'\n"
            "  newest readings: .venv/bin/powerwatch latest; health: .venv/bin/powerwatch status\n"
            f"  alerts to: {settings.alert_webhook_url or UI_ONLY}\n"
            "Ctrl-C stops everything (the data stays).",
            flush=True,
        )
        while not stop.wait(2.0):
            dead = [name for name, alive in stack.alive().items() if not alive]
            if dead or (simulator is not None and simulator.poll() is not None):
                print(f"stopped unexpectedly: {dead or ['simulator']}", file=sys.stderr)
                return 1
        print("\nstopping: worker, server, simulator ...", flush=True)
        return 0
    finally:
        stack.stop()
        if simulator is not None and simulator.poll() is None:
            simulator.send_signal(signal.SIGTERM)
            try:
                simulator.wait(15)
            except subprocess.TimeoutExpired:
                simulator.kill()
