"""Child processes tied to our life: a SIGKILLed parent must not leave them running.

A terminal's Ctrl-C and systemd's stop signal the whole process group; an OOM kill or a
crash SIGKILLs it. Two tools keep children from outliving us, both Linux:

- `die_with_parent` (a `preexec_fn`): `prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child,
  so the kernel kills it the moment the thread that started it dies, however it dies.
  Used for a child we start in its own session (out of reach of our group's signals,
  so that we decide when and in which order it stops).
- `Watchdog`: a tiny process in its own session that holds the read end of a pipe from
  us. When we die (the pipe's end closes, whatever killed us) it SIGKILLs every process
  of the sessions we registered with it. PDEATHSIG is not inherited by a child's own
  children (the worker's flow-run processes), a session is: the watchdog reaches them.

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
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn`: the kernel SIGKILLs this child when its parent (thread) dies."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def session_members(sessions: set[int]) -> list[int]:
    """Every process whose session is one of `sessions` (read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) in sessions:
            members.append(int(entry.name))
    return members


def kill_sessions(sessions: set[int]) -> int:
    """SIGKILL every process of `sessions`; how many were signalled."""
    if not sessions:
        return 0
    victims = [pid for pid in session_members(sessions) if pid != os.getpid()]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(victims)


class Watchdog:
    """Kills the registered sessions once this process is gone (see the module docstring).

    `watch(pid)` after starting a child with `start_new_session=True`; `close()` on an
    orderly stop (after the children were stopped, so nothing is left to kill)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "powerwatch.lifecycle"],
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


def _watch(stdin: int) -> None:
    """The watchdog's body: collect session ids until EOF, then kill what is left."""
    sessions: set[int] = set()
    pending = b""
    while chunk := os.read(stdin, 4096):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        sessions.update(int(line) for line in lines if line.strip())
    # Twice: a process may fork while we kill its session (a worker starting a run).
    for _ in range(2):
        kill_sessions(sessions)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF ends the watch
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _watch(sys.stdin.fileno())
