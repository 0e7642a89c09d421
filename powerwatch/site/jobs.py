"""How a job command (load, capture, migrate-logs, archive, backup, refresh-rollups,
restore) meets SIGINT/SIGTERM: keep what is done, say so, exit within 5 s.

A terminal's Ctrl-C and systemd's stop signal the whole process group. Two things made
a job command hang there (issue 10):

1. Without PREFECT_API_URL, Prefect starts a temporary server as our child, in our
   group: the signal killed it first and the flow's client then retried a dead API for
   minutes. `temporary_server()` starts that same server (Prefect's own
   `SubprocessASGIServer`, registered where Prefect looks for it) in a session of its
   own, so the group's signal does not reach it, and with PR_SET_PDEATHSIG, so it
   still dies with us. The flow then reports its end to a live server, quickly.
2. Nothing bounded the way out. `interruptible()` turns the first SIGINT/SIGTERM into
   `Interrupted` in the main thread (Prefect's own SIGTERM bridge, active during a flow,
   re-raises it to us after marking the run Crashed), so transactions roll back whole
   and capture flushes what it received; then the command says so and leaves at once
   (`os._exit`: Prefect's exit-time drains are skipped). A deadline armed at the
   signal's arrival cuts anything slower at `EXIT_DEADLINE` seconds with the same exit
   status. A second signal exits at once.

Exit status: 128 + the signal (130 SIGINT, 143 SIGTERM), the shells' convention, and
one line on stderr naming the signal and what was kept.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from powerwatch.core.lifecycle import die_with_parent

# From the signal to our exit, at most (the issue asks for 5 s; leave room for the
# process's teardown and a machine whose load average is 15 on 2 cores).
EXIT_DEADLINE = 3.0

# What each job keeps when a signal ends it (the stderr line).
KEPT = {
    "load": "chunks committed before it are kept; the chunk in progress was rolled back "
    "whole and stays in landing/ for the next run",
    "capture": "every reading received so far was flushed to landing/",
    "migrate-logs": "files committed before it are kept; the file in progress was rolled "
    "back whole (run again to import it)",
    "archive": "days archived before it are kept; the day in progress keeps its rows in "
    "the database",
    "backup": "no new backup was published; the database and older backups are unchanged",
    "refresh-rollups": "hours refreshed before it are kept; the others stay pending",
    "restore": "the configured database was not replaced unless the restore had finished",
}


class Interrupted(BaseException):
    """SIGINT/SIGTERM during a job (a BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal = signum  # the attribute Prefect's TerminationSignal also has


def exit_status(signum: int) -> int:
    return 128 + signum


def _notice(job: str, signum: int) -> str:
    return (
        f"powerwatch: {job} interrupted by {signal.Signals(signum).name}: "
        f"{KEPT.get(job, 'work committed before it is kept')}"
    )


@contextmanager
def interruptible(job: str) -> Iterator[Callable[[], int | None]]:
    """Within the block, SIGINT/SIGTERM raise `Interrupted` and arm the exit deadline.

    Yields a function giving the signal received (None if none). The deadline is armed
    when the signal arrives, not when our handler runs: during a flow Prefect's SIGTERM
    bridge runs first and reports the crash to the API (seconds on a busy server) before
    it passes the signal on, so the arrival is taken from the interpreter's wakeup fd."""
    received: list[int] = []
    raised: list[int] = []
    lock = threading.Lock()

    def arm(signum: int) -> None:
        with lock:
            if received:
                return
            received.append(signum)
        threading.Thread(target=deadline, args=(signum,), daemon=True).start()

    def deadline(signum: int) -> None:
        time.sleep(EXIT_DEADLINE)
        sys.stderr.write(_notice(job, signum) + " (cut short at the exit deadline)\n")
        sys.stderr.flush()
        os._exit(exit_status(signum))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if raised:  # a second signal: no more waiting
            os._exit(exit_status(received[0] if received else signum))
        raised.append(signum)
        arm(signum)
        raise Interrupted(signum)

    def watch(fd: int) -> None:
        while data := os.read(fd, 64):
            for signum in data:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    arm(signum)

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, args=(read_end,), name="signal-arrival", daemon=True)
    watcher.start()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_end)  # the watcher reads EOF and ends
        watcher.join(1.0)
        os.close(read_end)


# The job commands, and whether each runs a Prefect flow (restore deliberately does not).
JOBS = {
    "load": True,
    "capture": True,
    "migrate-logs": True,
    "archive": True,
    "backup": True,
    "refresh-rollups": True,
    "restore": False,
}


def run_job(job: str, body: Callable[[], int]) -> int:
    """`body()` under `interruptible`. A job with work imports its flow in `flow_imports()`,
    which starts the temporary server out of the group's reach; one with nothing to do
    never imports Prefect."""
    quieted = quiet_console() if JOBS.get(job) else []
    try:
        return _run(job, body)
    finally:  # a caller that goes on (tests calling `main`) does not pass them on
        for name in quieted:
            os.environ.pop(name, None)


def _run(job: str, body: Callable[[], int]) -> int:
    with interruptible(job) as signalled:
        try:
            status = body()  # enters `flow_imports()` once it knows there is work
        except BaseException:
            if signalled() is None:
                raise
            status = None
        # However the signal surfaced (ours, Prefect's TerminationSignal, a flow's re-raise
        # after flushing, a task's Crashed state turned into a failed flow): interrupted.
        signum = signalled()
        if signum is not None:
            # Out at once: the flow's end is reported already, and Prefect's exit-time
            # drains (events, logs, the temporary server's stop) took seconds on a busy
            # host. The temporary server dies with us (PDEATHSIG); stdout is flushed.
            print(_notice(job, signum), file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(exit_status(signum))
        assert status is not None
        return status


def quiet_console() -> list[str]:
    """Prefect's console log for a job command: warnings and errors, one line each (the
    traceback goes to the server's run log only): `powerwatch.core.console_log`. Before Prefect
    is imported; an operator's own PREFECT_LOGGING_* settings win."""
    wanted = {
        "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": (
            "powerwatch.core.console_log.OneLineConsoleHandler"
        ),
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    }
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    return added


@contextmanager
def flow_imports() -> Iterator[None]:
    """Where a job command with work imports its flow: Prefect's temporary server started
    first when none is set (`temporary_server`), all of it with the cyclic garbage
    collector paused. Prefect, pydantic and polars build hundreds of thousands of objects
    while they import, and the collections those trigger free nothing: paused, a job
    command's imports take about 9 % less CPU (docs/benchmarks.md, "CLI fixed costs").
    Collection resumes before the flow runs."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        temporary_server()
        yield
    finally:
        if enabled:
            gc.enable()


def temporary_server() -> None:
    """Without PREFECT_API_URL: start Prefect's temporary server now, in its own session and
    tied to our life (module docstring). Prefect's client then finds it and uses it."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return
    from prefect.server.api.server import SubprocessASGIServer

    if None in SubprocessASGIServer._instances:
        return
    started = time.perf_counter()
    server = _detached_server()  # registered under Prefect's default key (None)
    try:
        server.start()
    except RuntimeError as exc:  # Prefect's "Timed out while attempting to connect ..."
        from powerwatch.core.errors import JobError

        raise JobError(
            f"could not start a temporary Prefect server ({exc}); set PREFECT_API_URL or "
            "run `powerwatch demo` and try again"
        ) from exc
    # Its cost stays visible: the operator sees why this run took seconds more, and how
    # to avoid it.
    print(
        f"powerwatch: no Prefect server configured or found running (PREFECT_API_URL, "
        f"`powerwatch demo`): started a temporary one in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def _detached_server_class() -> type[Any]:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class DetachedServer(SubprocessASGIServer):
        """Prefect's temporary server, started out of our process group and in the main
        thread (PDEATHSIG follows the thread that started the child)."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # As prefect 3.9.1's SubprocessASGIServer._run_uvicorn_command, plus the session
            # and PDEATHSIG.
            import prefect

            return subprocess.Popen(
                args=[
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(prefect.__module_path__.parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env={
                    **os.environ,
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                },
                start_new_session=True,  # the group's Ctrl-C/SIGTERM is ours to handle
                preexec_fn=die_with_parent,  # and it still dies with us, however we die
            )

    return DetachedServer


def _detached_server() -> Any:
    return _detached_server_class()()
