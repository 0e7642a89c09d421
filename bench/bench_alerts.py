"""Alerts benchmark: alert delay after an outage, and the event load on the Prefect server.

    python -m bench.bench_alerts               # 1,000 stations at 1 Hz, ~4 minutes
    python -m bench.bench_alerts --quick       # 20 stations, printed only

A real Prefect server (LocalStack), the alert automations POSTing to a local HTTP
receiver, the simulator with SIM-0002 taken off air (`--outage`), and overlapping
`powerwatch capture` windows (60 s started every 45 s, as the deployment overlaps its
75 s windows started every 60 s) with `POWERWATCH_SILENT_AFTER=30`. Measured: seconds
from SIM-0002 going off air to the webhook's `down` (and from its return to `up`);
powerwatch events per minute stored by the server (its events API) and the server's
CPU (its whole session, from /proc) over the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.report import bench_arguments, publish, table
from powerwatch.site.automations import ensure_alert_automations
from powerwatch.site.stack import LocalStack
from tests.test_health import _Receiver

SILENT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_cpu_seconds(session: int) -> float:
    """utime + stime of every process in the session (the server and its uvicorn)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # field 6 (session) after pid and comm
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _events(api: str, since: datetime, until: datetime) -> int:
    body = {
        "filter": {
            "occurred": {"since": since.isoformat(), "until": until.isoformat()},
            "event": {"prefix": ["powerwatch."]},
        },
        "limit": 1,
    }
    answer = httpx.post(f"{api}/events/filter", json=body, timeout=30)
    answer.raise_for_status()
    return int(answer.json()["total"])


def main() -> None:
    args = bench_arguments(__doc__)
    count = 20 if args.quick else 1000
    off_after, off_for = 60.0, 60.0
    root = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    env = dict(os.environ) | {
        "DO_NOT_TRACK": "1",
        "POWERWATCH_DATA_DIR": str(root / "data"),
        "POWERWATCH_DATABASE_URL": f"sqlite:///{root / 'pw.db'}",
        "POWERWATCH_STATIONS": str(root / "stations.yaml"),
        "POWERWATCH_SILENT_AFTER": str(SILENT),
    }
    receiver = _Receiver()
    with LocalStack(home=root / "prefect", port=_free_port()) as stack:
        stack.start_server()
        env["PREFECT_API_URL"] = stack.api_url
        ensure_alert_automations(stack.api_url, receiver.url)
        session = stack._children["server"].pid
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "powerwatch.cli",
                "simulate",
                "--count",
                str(count),
                "--rate",
                "1",
                "--outage",
                f"SIM-0002@{off_after:g}+{off_for:g}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        captures: list[subprocess.Popen[bytes]] = []
        try:
            while not Path(env["POWERWATCH_STATIONS"]).exists():
                time.sleep(0.1)
            started = time.monotonic()
            off_at, back_at = started + off_after, started + off_after + off_for
            t0, cpu0 = datetime.now(UTC), _session_cpu_seconds(session)
            wall0 = time.monotonic()
            next_start = time.monotonic()
            while time.monotonic() < back_at + 60:
                if time.monotonic() >= next_start:
                    captures.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "powerwatch.cli",
                                "capture",
                                "--duration",
                                "60",
                                "--flush-seconds",
                                "2",
                            ],
                            env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True,
                        )
                    )
                    next_start += 45
                ups = [p for _, p in receiver.posts if p.get("station") == "SIM-0002"]
                if len(ups) >= 2:
                    break
                time.sleep(0.5)
            wall = time.monotonic() - wall0
            cpu = _session_cpu_seconds(session) - cpu0
            events = _events(stack.api_url, t0, datetime.now(UTC))
            down = receiver.wait_for("station", "SIM-0002", "down", time.monotonic() + 5)
            up = receiver.wait_for("station", "SIM-0002", "up", time.monotonic() + 5)
        finally:
            for proc in [*captures, sim]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in [*captures, sim]:
                proc.wait(60)
            receiver.server.shutdown()
    rows = [
        ("stations (1 Hz)", f"{count}"),
        ("silent after", f"{SILENT:g} s"),
        ("alert delay: off air -> webhook `down`", f"{down - off_at:.1f} s"),
        ("resolution delay: back -> webhook `up`", f"{up - back_at:.1f} s"),
        ("powerwatch events per minute", f"{events / (wall / 60):.1f}"),
        ("Prefect server CPU (its session)", f"{100 * cpu / wall:.1f} % of a core"),
        ("measured over", f"{wall:.0f} s, {len(captures)} capture windows"),
    ]
    publish(
        "alerts",
        "## Alerts (issue 12)\n\n`python -m bench.bench_alerts`\n\n"
        + table(rows, ("what", "value")),
        args,
    )


if __name__ == "__main__":
    main()
