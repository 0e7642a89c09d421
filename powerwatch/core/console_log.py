"""What a job command's terminal shows of Prefect's run log: warnings and errors, one line each.

A job command (`powerwatch load`, ...) ends with its own one-line outcome on stderr
(spec/cli.md). Prefect's console handler would add every task's and flow's failure
with its whole traceback; the run's full log, tracebacks included, still goes to the
Prefect server (its API handler is untouched) and shows in the UI. `powerwatch.site.jobs`
selects this handler for job commands through Prefect's own logging overrides
(`PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS`, `..._LEVEL`).
"""

from __future__ import annotations

import copy
import logging

from prefect.logging.handlers import PrefectConsoleHandler


class OneLineConsoleHandler(PrefectConsoleHandler):
    """Prefect's console handler without tracebacks: the record's message only."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)  # the API handler keeps the original, traceback and all
            record.exc_info = record.exc_text = record.stack_info = None
        super().emit(record)
