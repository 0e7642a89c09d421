"""Child processes tied to our life: a SIGKILLed parent must not leave them running.

A terminal's Ctrl-C and systemd's stop signal the whole process group; an OOM kill or a
crash SIGKILLs it. Two tools keep children from outliving us, both Linux:

- `die_with_parent` (a `preexec_fn`): `prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child,
  so the kernel kills it the moment the thread that started it dies, however it dies.
  Used for a child we start in its own session (out of reach of our group's signals,
  so that we decide when and in which order it stops).
- `Watchdog`: a tiny process in its own session that holds the read end of a pipe from
  us. When we die (the pipe's end closes, whatever killed us) it ends every process of
  the sessions we registered with it and every process whose environment carries our
  site's mark (`SITE_ENV`, set in every child's environment and inherited by theirs):
  PDEATHSIG is not inherited by a child's own children, and Prefect's worker starts its
  flow runs in sessions of their own (`prefect.runner._workspace_supervisor`); the mark
  reaches them. They get SIGTERM (a capture run flushes what it received) and SIGKILL
  after `GRACE` seconds.

Elsewhere PR_SET_PDEATHSIG is unavailable; `die_with_parent` then does nothing and the
watchdog alone bounds what can be left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
SITE_ENV = "POWERWATCH_SITE_ID"  # the mark of every process a site started
GRACE = 3.0  # seconds between the watchdog's SIGTERM and SIGKILL


def die_with_parent() -> None:
    """`preexec_fn`: the kernel SIGKILLs this child when its parent (thread) dies."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def site_members(sessions: set[int], mark: str | None) -> list[int]:
    """Every process whose session is one of `sessions` or whose environment holds
    `SITE_ENV=mark` (read from /proc; other users' processes are skipped)."""
    members = []
    needle = f"{SITE_ENV}={mark}".encode() if mark else None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses
            state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
            if state == "Z":  # dead already, only not reaped yet
                continue
            marked = needle is not None and needle in (entry / "environ").read_bytes().split(b"\0")
            if int(session) in sessions or marked:
                members.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return members


def end_site(sessions: set[int], mark: str | None, grace: float = GRACE) -> int:
    """SIGTERM every member (`site_members`), SIGKILL those left after `grace` s;
    how many there were."""
    first = site_members(sessions, mark)
    for pid in first:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and site_members(sessions, mark):
        time.sleep(0.1)
    for _ in range(2):  # twice: a process may fork while we kill (a worker starting a run)
        for pid in site_members(sessions, mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return len(first)


class Watchdog:
    """Kills the registered sessions once this process is gone (see the module docstring).

    `watch(pid)` after starting a child with `start_new_session=True`; `close()` on an
    orderly stop (after the children were stopped, so nothing is left to kill)."""

    def __init__(self, mark: str | None = None) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "powerwatch.core.lifecycle", *([mark] if mark else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # our group's signals and kill -9 do not reach it
        )

    def watch(self, pid: int) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(f"{pid}\n".encode())
        self._process.stdin.flush()

    def close(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(10)


def _watch(stdin: int, mark: str | None) -> None:
    """The watchdog's body: collect session ids until EOF, then end what is left."""
    sessions: set[int] = set()
    pending = b""
    while chunk := os.read(stdin, 4096):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        sessions.update(int(line) for line in lines if line.strip())
    end_site(sessions, mark)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF ends the watch
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _watch(sys.stdin.fileno(), sys.argv[1] if len(sys.argv) > 1 else None)
