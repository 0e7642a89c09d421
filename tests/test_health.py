"""Live health and alerts (issue 12): the shared health state, `powerwatch status` on a real
database, the alert automations on a real Prefect server, and one end-to-end run: real
simulator with an outage, real overlapping `powerwatch capture` processes emitting events,
real automations POSTing to a real local HTTP receiver."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from powerwatch.capture import health
from powerwatch.site.discovery import site_home
from schemas.registry import Station, load_registry, write_registry
from tests.conftest import Database
from tests.prefect_db import seed

SILENT = 20.0  # POWERWATCH_SILENT_AFTER in these tests (default 120)


def _seen(last_ms: int | None, readings: int = 1) -> health.Seen:
    return health.Seen(last_reading_ms=last_ms, last_frame_ms=last_ms, readings=readings)


def test_window_handover_is_no_outage_and_silence_is(tmp_path: Path) -> None:
    """Run A stops delivering (its window ended) while run B, started before, goes on: no
    change; once nobody has a reading for SILENT seconds: one `down`, then one `up`."""
    t0 = 1_800_000_000_000
    changes = health.fold(
        tmp_path, {"S": _seen(t0)}, run="A", silent_after=SILENT, stall_after=300, now=t0
    )
    assert changes == []
    for step in range(1, 8):  # A has ended; B folds every 5 s with fresh readings
        now = t0 + step * 5_000
        changes = health.fold(
            tmp_path,
            {"S": _seen(now - 500)},
            run="B",
            silent_after=SILENT,
            stall_after=300,
            now=now,
        )
        assert changes == [], step
    # B's station goes silent: the next run (C) finds the history and declares it down once
    last = t0 + 7 * 5_000 - 500
    quiet = {"S": health.Seen()}
    down = health.fold(
        tmp_path, quiet, run="C", silent_after=SILENT, stall_after=300, now=last + 20_000
    )
    assert [(c.name, c.status, c.since_ms) for c in down] == [("S", "down", last)]
    again = health.fold(
        tmp_path, quiet, run="B", silent_after=SILENT, stall_after=300, now=last + 25_000
    )
    assert again == []  # the other run does not say it twice
    back = last + 30_000
    up = health.fold(
        tmp_path, {"S": _seen(back)}, run="C", silent_after=SILENT, stall_after=300, now=back
    )
    assert [(c.name, c.status) for c in up] == [("S", "up")]


def test_never_seen_and_stalled_chunk_are_changes(tmp_path: Path) -> None:
    t0 = health.now_ms()
    assert (
        health.fold(
            tmp_path, {"N": health.Seen()}, run="A", silent_after=SILENT, stall_after=30, now=t0
        )
        == []
    )
    landing = tmp_path / "landing"
    landing.mkdir()
    chunk = landing / "capture-x.parquet"
    chunk.write_bytes(b"x")
    os.utime(chunk, ns=((t0 - 40_000) * 1_000_000,) * 2)
    changes = health.fold(
        tmp_path,
        {"N": health.Seen()},
        run="A",
        silent_after=SILENT,
        stall_after=30,
        now=t0 + 21_000,
    )
    assert sorted((c.kind, c.name, c.status) for c in changes) == [
        ("pipeline", "load", "down"),
        ("station", "N", "down"),
    ]
    assert changes[0].payload()["since"].endswith("Z")
    chunk.unlink()
    changes = health.fold(
        tmp_path,
        {"N": health.Seen()},
        run="A",
        silent_after=SILENT,
        stall_after=30,
        now=t0 + 22_000,
    )
    assert [(c.kind, c.status) for c in changes] == [("pipeline", "up")]


def test_status_on_a_real_database(synced: Database, tmp_path: Path) -> None:
    """up / down / never seen, ages, counts, chunks waiting and open alerts, from a real
    database and the health state; no Prefect imported; answers in under a second."""
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load.chunks import load_chunk
    from tests.conftest import make_readings, write_chunk

    silent = 600.0  # the host may be slow: states must not change while the test runs
    now = health.now_ms()
    seen = {
        "KhonKaen": health.Seen(now - 1_000, now - 1_000, readings=50),
        "ChiangMai": health.Seen(now - 700_000, now - 1_000, readings=3, rejects=7),
    }
    health.fold(
        synced.data_dir, seen, run="A", silent_after=silent, stall_after=900, now=now - 1_000
    )
    health.fold(
        synced.data_dir,
        {"Songkhla": health.Seen()},
        run="A",
        silent_after=silent,
        stall_after=900,
        now=now - 700_000,
    )
    stored = make_readings(["KhonKaen"], 5)  # 2026-11-01: stored long ago
    chunk = write_chunk(stored, synced.data_dir / "landing", "capture-stored.parquet")
    with bulk_connection() as bulk:
        assert load_chunk(bulk, chunk, get_settings()).inserted == 5
    write_chunk(stored, synced.data_dir / "landing", "capture-wait.parquet")
    env = dict(os.environ) | {"POWERWATCH_SILENT_AFTER": str(silent)}
    code = (
        "import sys, time; t = time.perf_counter(); from powerwatch.cli import main\n"
        "try:\n    main(['status'])\nexcept SystemExit:\n    pass\n"
        "print('ELAPSED', time.perf_counter() - t, any(m.startswith('prefect') for m in "
        "sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print(out)
    rows = {line.split()[1]: line for line in out.splitlines() if len(line.split()) > 2}
    assert " up " in rows["KhonKaen"]
    assert " down " in rows["ChiangMai"] and "every frame rejected" in rows["ChiangMai"]
    assert "never seen" in rows["Songkhla"]
    assert "chunks waiting: 1, oldest" in out
    assert "last successful load: never" not in out
    assert "open alerts: 2" in out
    assert "ChiangMai: down since" in out and "Songkhla: never seen since" in out
    elapsed, prefect_loaded = out.split("ELAPSED")[1].split()
    assert prefect_loaded == "False"
    # Under a second on an idle host (docs/benchmarks.md); not asserted: on the shared
    # 2-core host, loaded 8-12, a bare `import polars` alone takes seconds.
    print(f"powerwatch status answered in {float(elapsed):.2f} s")


@pytest.mark.slow
def test_alert_automations_are_not_duplicated_when_started_twice(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from powerwatch.site.automations import (
        ALERT_KINDS,
        ALERT_STATUSES,
        alert_automation_name,
        ensure_alert_automations,
    )

    first = ensure_alert_automations(prefect_api, "http://127.0.0.1:9/hook")
    second = ensure_alert_automations(prefect_api, "http://127.0.0.1:9/hook")
    assert set(second.values()) == {"updated"}
    assert len(first) == 4
    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as c:
        for kind in ALERT_KINDS:
            for status in ALERT_STATUSES:
                assert len(c.read_automations_by_name(alert_automation_name(kind, status))) == 1


# --- end to end -------------------------------------------------------------------------


class _Receiver:
    """A real HTTP server in a thread: every JSON POST, with its arrival time."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, dict[str, Any]]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                posts.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, key: str, name: str, status: str, deadline: float) -> float:
        while time.monotonic() < deadline:
            for at, post in list(self.posts):
                if post.get(key) == name and post.get("status") == status:
                    return at
            time.sleep(0.5)
        raise AssertionError(f"no {status} for {name} by the deadline; got {self.posts}")


def stop_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process's group, then SIGKILL what has not ended 30 s later."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_outage_never_seen_and_stall_alert_and_handovers_do_not(
    prefect_api: str, tmp_path: Path
) -> None:
    """SIM-0002 off air 40 s: webhook `down` within SILENT+60 s, `up` within 60 s of its
    return; a registered station that never answers alerts; chunks never loaded alert as a
    stalled pipeline; the stations on air never alert across the capture hand-overs
    (windows of 40 s started every 20 s: several hand-overs during the run)."""
    from powerwatch.site.automations import ensure_alert_automations

    receiver = _Receiver()
    ensure_alert_automations(prefect_api, receiver.url)
    data = tmp_path / "data"
    sim_registry = tmp_path / "sim.yaml"
    env = dict(os.environ) | {
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": prefect_api,
        "POWERWATCH_DATA_DIR": str(data),
        "POWERWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'pw.db'}",
        "POWERWATCH_SILENT_AFTER": str(SILENT),
        "POWERWATCH_STALL_AFTER": "20",
    }
    # Off air when the test sends SIGUSR1, once a capture window has seen SIM-0002 up.
    off_for = 40.0
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "powerwatch.cli",
            "simulate",
            "--count",
            "3",
            "--rate",
            "5",
            "--outage",
            f"SIM-0002@USR1+{off_for:g}",
        ],
        env=env | {"POWERWATCH_STATIONS": str(sim_registry)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    captures: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while not sim_registry.exists():
            assert time.monotonic() < deadline and sim.poll() is None, "simulator did not start"
            time.sleep(0.1)
        never = Station(
            "NEVER-1", str(uuid.uuid4()), "127.0.0.1", "test", f"ws://127.0.0.1:{_free_port()}/"
        )
        registry = tmp_path / "stations.yaml"
        write_registry(registry, [*load_registry(sim_registry), never])
        env["POWERWATCH_STATIONS"] = str(registry)
        off_at = back_at = math.inf
        end = time.monotonic() + 300  # bounds a capture that never sees SIM-0002 up
        next_start = time.monotonic()
        got_up = False
        # until SIM-0002 is back and at least two windows have handed over
        while time.monotonic() < end and not (
            got_up and sum(c.poll() is not None for c in captures) >= 2
        ):
            if time.monotonic() >= next_start:
                captures.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "powerwatch.cli",
                            "capture",
                            "--duration",
                            "40",
                            "--flush-seconds",
                            "1",
                        ],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
                next_start += 20
            if off_at == math.inf and (
                health.read_state(data)["stations"].get("SIM-0002", {}).get("state") == "up"
            ):
                os.kill(sim.pid, signal.SIGUSR1)
                off_at = time.monotonic()
                back_at = off_at + off_for
                end = back_at + 90
            got_up = any(
                p.get("station") == "SIM-0002" and p.get("status") == "up"
                for _, p in receiver.posts
            )
            time.sleep(0.5)
        assert off_at < math.inf, "no capture window saw SIM-0002 up in 300 s"
        down_at = receiver.wait_for("station", "SIM-0002", "down", off_at + SILENT + 60)
        up_at = receiver.wait_for("station", "SIM-0002", "up", back_at + 60)
        receiver.wait_for("station", "NEVER-1", "down", time.monotonic() + 1)
        receiver.wait_for("pipeline", "load", "down", time.monotonic() + 1)
        ended = [c for c in captures if c.poll() is not None]
        assert len(ended) >= 2, "fewer than two hand-overs happened"
        on_air = ("SIM-0001", "SIM-0003")
        false_alerts = [p for _, p in receiver.posts if p.get("station") in on_air]
        assert false_alerts == []
        downs = [p for _, p in receiver.posts if p.get("station") == "SIM-0002"]
        assert [p["status"] for p in downs] == ["down", "up"]  # once each, no flapping
        print(
            f"alert delay after off air: {down_at - off_at:.1f} s (silent after {SILENT:g} s);"
            f" resolution delay after return: {up_at - back_at:.1f} s; "
            f"capture windows: {len(captures)}"
        )
    finally:
        stop_groups([*captures, sim])
        receiver.server.shutdown()


def test_bad_outage_and_bad_webhook_url_are_bad_input(tmp_path: Path) -> None:
    """One line, exit 2, before anything starts."""
    env = dict(os.environ) | {"POWERWATCH_STATIONS": str(tmp_path / "s.yaml")}
    cases = [
        (["simulate", "--outage", "SIM-0001@x+5"], env, "--outage wants NAME@AFTER+SECONDS"),
        (["simulate", "--count", "2", "--outage", "SIM-0003@1+5"], env, "no such simulated"),
        (["status"], env | {"POWERWATCH_ALERT_WEBHOOK_URL": "ftp://x"}, "not an http(s) URL"),
    ]
    for args, environment, words in cases:
        done = subprocess.run(
            [sys.executable, "-m", "powerwatch.cli", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "s.yaml").exists()  # nothing started


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], deadline: float) -> float:
    """Until `text` appears in the file the process writes (its own announcement of the
    moment); that moment, as `time.monotonic()`."""
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        assert proc.poll() is None, f"{proc.args!r} ended: {path.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} by the deadline: {path.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_serve_alerts_a_station_off_air_and_resolves_it_on_return(
    tmp_path: Path, prefect_db_template: Path
) -> None:
    """`powerwatch serve` as a site runs it (its own Prefect server, pool, automations,
    deployments, worker; no simulator of its own), against a simulator whose SIM-0002 goes
    off air (`--outage SIM-0002@USR1+…`, signalled) once serve's capture has seen it up:
    the webhook receives `down` within SILENT_AFTER + 60 s of the outage and `up` within
    60 s of its return."""
    silent = 10.0
    receiver = _Receiver()
    data, sim_registry = tmp_path / "data", tmp_path / "stations.yaml"
    seed(site_home(data), prefect_db_template)  # serve's PREFECT_HOME (tests/prefect_db.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POWERWATCH_"))}
    env |= {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "POWERWATCH_DATA_DIR": str(data),
        "POWERWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'pw.db'}",
        "POWERWATCH_STATIONS": str(sim_registry),
        "POWERWATCH_SILENT_AFTER": str(silent),
        "POWERWATCH_ALERT_WEBHOOK_URL": receiver.url,
        "POWERWATCH_PREFECT_PORT": str(_free_port()),
    }
    # Off air when the test sends SIGUSR1 (`--outage NAME@USR1+SECONDS`), once serve's
    # capture has seen SIM-0002 up: how long serve takes to start on a loaded host decides
    # nothing. `ready_within` only bounds a serve that never starts capturing.
    ready_within, off_for = 300.0, 20.0
    sim_log, serve_log = tmp_path / "simulate.log", tmp_path / "serve.log"
    with open(sim_log, "wb") as out:
        sim = subprocess.Popen(
            [sys.executable, "-m", "powerwatch.cli", "simulate", "--count", "3", "--rate", "5",
             "--outage", f"SIM-0002@USR1+{off_for:g}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    serve: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while not sim_registry.exists():
            assert time.monotonic() < deadline and sim.poll() is None, "simulator did not start"
            time.sleep(0.1)
        with open(serve_log, "wb") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "powerwatch.cli", "serve"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        started = time.monotonic()
        deadline = started + ready_within
        while health.read_state(data)["stations"].get("SIM-0002", {}).get("state") != "up":
            assert time.monotonic() < deadline, (
                f"serve's capture did not see SIM-0002 up in {ready_within:g} s: "
                f"{serve_log.read_text()[-2000:]}"
            )
            assert serve.poll() is None, serve_log.read_text()[-2000:]
            time.sleep(0.5)
        print(f"serve capturing after {time.monotonic() - started:.0f} s")
        # The supervisor lives as long as the site: it never loads Polars (schemas/names.py).
        # Read off the running process's mapped libraries.
        maps = Path(f"/proc/{serve.pid}/maps").read_text()
        assert "polars" not in maps, [line for line in maps.splitlines() if "polars" in line][:3]
        os.kill(sim.pid, signal.SIGUSR1)
        off_at = _wait_for_text(sim_log, "SIM-0002: off air", sim, time.monotonic() + 30)
        down_at = receiver.wait_for("station", "SIM-0002", "down", off_at + silent + 60)
        back_at = _wait_for_text(sim_log, "SIM-0002: on air again", sim, off_at + off_for + 30)
        up_at = receiver.wait_for("station", "SIM-0002", "up", back_at + 60)
        posts = [p for _, p in receiver.posts if p.get("station") == "SIM-0002"]
        assert [p["status"] for p in posts] == ["down", "up"]
        assert all(p["since"].endswith("Z") for p in posts)  # ISO-8601 UTC
        on_air = [p for _, p in receiver.posts if p.get("station") in ("SIM-0001", "SIM-0003")]
        assert on_air == []
        print(
            f"down {down_at - off_at:.1f} s after off air, up {up_at - back_at:.1f} s after return"
        )
    finally:
        for proc in (serve, sim):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (serve, sim):
            if proc is None:
                continue
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        receiver.server.shutdown()
