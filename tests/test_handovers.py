"""Five minutes of capture hand-overs raise no alert (issue 12).

Real simulator, real overlapping `powerwatch capture` processes (windows of 40 s started
every 20 s: a hand-over every 20 s, fifteen in five minutes), the real alert automations
on a real Prefect server POSTing to a real local HTTP receiver. Health follows readings,
not sockets: a window closing while the next one already receives must not look like an
outage. The control at the end (one station taken off air by the simulator) proves the
alerts were live all along, so the silence before it means something.

Its own module: six minutes of wall time get a test worker of their own (`make test`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_health import SILENT, _Receiver, stop_groups

HANDOVER_SECONDS = 300.0
WINDOW, EVERY = 40, 20
# A window's process ends WINDOW s after it starts plus its start-up (imports) and final
# flush: seconds, more on a loaded 2-core host. The windows this long past their start by
# the end of the phase are the ones checked: each must end by itself, exit 0.
END_ALLOWANCE = 30.0
END_WAIT = 180.0  # the most a due window may still need after the control phase


def _exit_status(proc: subprocess.Popen[bytes], by: float) -> int | None:
    """The process's exit status once it ended by itself before `by`; None if it did not."""
    try:
        return proc.wait(timeout=max(0.0, by - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _powerwatch(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "powerwatch.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_five_minutes_of_capture_handovers_raise_no_alert(prefect_api: str, tmp_path: Path) -> None:
    from powerwatch.site.automations import ensure_alert_automations

    receiver = _Receiver()
    ensure_alert_automations(prefect_api, receiver.url)
    registry = tmp_path / "sim.yaml"
    env = dict(os.environ) | {
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": prefect_api,
        "POWERWATCH_DATA_DIR": str(tmp_path / "data"),
        "POWERWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'pw.db'}",
        "POWERWATCH_STATIONS": str(registry),
        "POWERWATCH_SILENT_AFTER": str(SILENT),
    }
    # The control: SIM-0003 goes off air when the test signals the simulator (SIGUSR1),
    # once the hand-over phase is over.
    sim = _powerwatch(
        "simulate", "--count", "3", "--rate", "1", "--outage", "SIM-0003@USR1+600", env=env
    )  # fmt: skip
    captures: list[subprocess.Popen[bytes]] = []
    starts: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while not registry.exists():
            assert time.monotonic() < deadline and sim.poll() is None, "simulator did not start"
            time.sleep(0.1)
        for command in (("db", "upgrade"), ("stations", "sync")):
            assert subprocess.run(
                [sys.executable, "-m", "powerwatch.cli", *command], env=env, capture_output=True
            ).returncode == 0  # fmt: skip
        started = time.monotonic()
        next_start = [started]

        def windows_until(done: Callable[[], bool]) -> None:
            """A new capture window every EVERY seconds until `done()`."""
            while not done():
                if time.monotonic() >= next_start[0]:
                    window = ("capture", "--duration", str(WINDOW), "--flush-seconds", "1")
                    captures.append(_powerwatch(*window, env=env))
                    starts.append(time.monotonic())
                    next_start[0] += EVERY
                time.sleep(0.5)

        windows_until(lambda: time.monotonic() >= started + HANDOVER_SECONDS)
        phase_end = time.monotonic()
        # Every window old enough to have ended did: each one handed over to the next,
        # which had started EVERY s after it (WINDOW > EVERY: they overlap).
        due = [
            c
            for c, t in zip(captures, starts, strict=True)
            if t + WINDOW + END_ALLOWANCE <= phase_end
        ]
        alerts_during_handovers = list(receiver.posts)
        # The control: windows go on until the off-air station is reported down.
        os.kill(sim.pid, signal.SIGUSR1)
        down_by = time.monotonic() + SILENT + 60
        windows_until(
            lambda: time.monotonic() >= down_by
            or any(p.get("station") == "SIM-0003" and p.get("status") == "down"
                   for _, p in receiver.posts)
        )  # fmt: skip
        # Each due window ends by itself, exit 0. Waited for here, after the control phase:
        # on a loaded host a window's process start alone took over 30 s.
        end_by = time.monotonic() + END_WAIT
        handed_over = [_exit_status(c, end_by) for c in due]
    finally:
        stop_groups([*captures, sim])
        receiver.server.shutdown()

    assert len(due) >= (HANDOVER_SECONDS - WINDOW - END_ALLOWANCE) // EVERY, len(due)
    assert handed_over == [0] * len(due), handed_over  # each ended, cleanly
    assert alerts_during_handovers == []
    control = [p for _, p in receiver.posts if p.get("station") == "SIM-0003"]
    assert [p.get("status") for p in control][:1] == ["down"], receiver.posts
    others = [p for _, p in receiver.posts if p.get("station") in ("SIM-0001", "SIM-0002")]
    assert others == []
