"""`powerwatch.core.progress`: updates at a bounded rate, and a terminal bar only on a terminal."""

from __future__ import annotations

import io

from powerwatch.core.progress import JobProgress, TerminalBar, Update, terminal_bar, wants_bar


class Clock:
    """A clock the test moves by hand (time is a parameter of JobProgress)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_updates_are_bounded_in_rate_and_the_last_one_is_always_sent() -> None:
    clock = Clock()
    got: list[Update] = []
    job = JobProgress([1_000, 3_000], [got.append], min_interval=1.0, clock=clock)
    job.start_file("a.log")
    for step in range(1, 101):  # 100 parts within 0.99 s: one update
        clock.now = step / 101
        job.advance(step * 10, step)
    assert len(got) == 1
    clock.now = 1.5
    job.finish_file(1_000, 100)  # one second later: sent
    job.start_file("b.log")
    job.advance(1_500, 50)  # within the second: not sent
    assert [(u.done_bytes, u.lines, u.files_done) for u in got[1:]] == [(1_000, 100, 1)]
    clock.now = 1.6
    job.finish_file(3_000, 300)  # the last file: always sent
    last = got[-1]
    assert (last.done_bytes, last.total_bytes, last.lines, last.percent) == (4_000, 4_000, 400, 100)
    assert (last.files_done, last.files, last.current) == (2, 2, "")


def test_a_failing_listener_does_not_stop_the_job() -> None:
    def broken(_update: Update) -> None:
        raise ConnectionError("API gone")

    got: list[Update] = []
    job = JobProgress([10], [broken, got.append], min_interval=0.0)
    job.start_file("a.log")
    job.advance(5, 1)
    job.finish_file(10, 2)
    assert [u.done_bytes for u in got] == [5, 10]


def test_no_bar_unless_stdout_is_a_terminal() -> None:
    assert not wants_bar(io.StringIO())
    with terminal_bar("migrate-logs") as bar:  # pytest captures stdout: not a terminal
        assert bar is None


def test_the_bar_shows_bytes_rate_eta_and_the_file() -> None:
    from rich.console import Console

    bar = TerminalBar("migrate-logs", file=io.StringIO())
    with bar:
        bar(Update(512 * 1024, 1024 * 1024, 20_000, 0, 2, "monitor.log", 2.0))
        screen = Console(record=True, width=200, file=io.StringIO())
        screen.print(bar.progress.get_renderable())
    text = screen.export_text()
    for shown in ("migrate-logs", "50%", "0.5/1.0 MB", "10,000 lines/s", "ETA", "0/2 monitor.log"):
        assert shown in text, text


def test_the_bar_counts_in_the_jobs_own_unit() -> None:
    from rich.console import Console

    bar = TerminalBar("archive", file=io.StringIO())
    with bar:
        bar(Update(2, 5, 30_000, 2, 5, "2026-11-03", 3.0, unit="days", counted="readings"))
        screen = Console(record=True, width=200, file=io.StringIO())
        screen.print(bar.progress.get_renderable())
    text = screen.export_text()
    for shown in ("archive", "40%", "2/5 days", "10,000 readings/s", "2/5 2026-11-03"):
        assert shown in text, text
