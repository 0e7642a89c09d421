"""Run summaries as rows: one shape for the Prefect artifact and the CLI's printed table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the loader imports pandera: an idle `load` prints this table without it
    from powerwatch.loader import ChunkReport


def load_summary_rows(reports: list[ChunkReport]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for r in reports:
        rows.append(
            {
                "chunk": r.chunk,
                "status": r.status,
                "rows in": r.rows_in,
                "inserted": r.inserted,
                "duplicates": r.duplicates,
                "conflicts": r.conflicts,
                "rejected": r.rejected,
                "rejected by reason": json.dumps(r.rejected_by_reason, sort_keys=True),
                "rows/s": round(r.rows_in / r.seconds) if r.seconds else None,
                "error": r.error or "",
            }
        )
    seconds = sum(r.seconds for r in reports)
    total_in = sum(r.rows_in for r in reports)
    reasons: dict[str, int] = {}
    for r in reports:
        for reason, count in r.rejected_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + count
    rows.append(
        {
            "chunk": f"TOTAL ({len(reports)} chunks)",
            "status": "",
            "rows in": total_in,
            "inserted": sum(r.inserted for r in reports),
            "duplicates": sum(r.duplicates for r in reports),
            "conflicts": sum(r.conflicts for r in reports),
            "rejected": sum(r.rejected for r in reports),
            "rejected by reason": json.dumps(reasons, sort_keys=True),
            "rows/s": round(total_in / seconds) if seconds else None,
            "error": "",
        }
    )
    return rows
