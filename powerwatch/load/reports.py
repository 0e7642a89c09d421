"""Run summaries as rows: one shape for the Prefect artifact and the CLI's printed table."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the loader imports pandera: an idle `load` prints this table without it
    from powerwatch.load.chunks import ChunkReport


def load_summary_rows(reports: list[ChunkReport]) -> list[dict[str, object]]:
    """One row per chunk and a TOTAL row, the main table: what an operator looks at first
    (inserted, rejected), narrow enough for the UI at 1,440 px beside a capture chunk's
    long name. Rows in (= inserted + rejected + duplicates; conflicts are duplicates whose
    values differed, powerwatch/load/ingest.py) and the rate are
    in `load_rate`; rejections by reason and errors in `load_details` (long text)."""
    rows: list[dict[str, object]] = [
        {
            "chunk": r.chunk,
            "status": r.status,
            "inserted": r.inserted,
            "rejected": r.rejected,
            "duplicates": r.duplicates,
            "conflicts": r.conflicts,
        }
        for r in reports
    ]
    rows.append(
        {
            "chunk": f"TOTAL ({len(reports)} chunks)",
            "status": "",
            "inserted": sum(r.inserted for r in reports),
            "rejected": sum(r.rejected for r in reports),
            "duplicates": sum(r.duplicates for r in reports),
            "conflicts": sum(r.conflicts for r in reports),
        }
    )
    return rows


def load_rate(reports: list[ChunkReport]) -> str:
    """`N rows in at R rows/s` over the run's chunks."""
    seconds = sum(r.seconds for r in reports)
    total_in = sum(r.rows_in for r in reports)
    rate = f" at {total_in / seconds:,.0f} rows/s" if seconds else ""
    return f"{total_in:,} rows in{rate}"


def load_details(reports: list[ChunkReport]) -> list[str]:
    """Markdown list items, one per chunk with rejections or an error (empty: none)."""
    lines = []
    for r in reports:
        parts = []
        if r.rejected_by_reason:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.rejected_by_reason.items()))
            parts.append(f"rejected {reasons}")
        if r.error:
            parts.append(f"error: {r.error}")
        if parts:
            lines.append(f"- `{r.chunk}`: " + "; ".join(parts))
    return lines
