"""The report of a log migration (spec/legacy-logs.md): per file, totals, and its three views.

One `FileReport` per file, whatever happened to it; the same objects feed the
printed table, the `--report` JSON and the Prefect artifacts, so the three can
never disagree. For every file: lines = non_data + inserted + duplicates + rejected.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

Status = Literal["imported", "skipped", "failed"]

QUOTED_LINES: Final = 5  # rejected lines quoted per file ("the first few")
REASONS_KEPT: Final = 50  # distinct rejection reasons listed per file; the rest are summed
OTHER_REASONS: Final = "(other reasons)"
_QUOTE_CHARS: Final = 200


@dataclass
class FileReport:
    """What one file gave. `duplicates` includes `conflicts` (same station and time,
    different values: the stored reading wins, both are kept in `reading_conflicts`)."""

    path: str
    format: str | None = None  # T, J, C; None if the file is not a legacy log
    status: Status = "imported"
    lines: int = 0
    non_data: int = 0
    readings: int = 0  # reading lines parsed (valid or not)
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    unknown_stations: dict[str, int] = field(default_factory=dict)
    first_rejected: list[dict[str, Any]] = field(default_factory=list)  # line, reason, text
    first_timestamp: str | None = None  # time range of the valid readings (UTC, ISO-8601)
    last_timestamp: str | None = None
    seconds: float = 0.0
    attempts: int = 1
    error: str | None = None
    content_hash: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name

    def balanced(self) -> bool:
        return self.lines == self.non_data + self.inserted + self.duplicates + self.rejected

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


NUMERIC_KEYS: Final = (
    "lines",
    "non_data",
    "readings",
    "inserted",
    "duplicates",
    "conflicts",
    "rejected",
    "attempts",
    "seconds",
)


def add_reasons(counts: Counter[str], more: dict[str, int]) -> None:
    """Merge reason counts, keeping at most `REASONS_KEPT` distinct reasons (the sum stays
    exact): reasons quote the bad value, so a damaged file could otherwise yield millions."""
    counts.update(more)
    if len(counts) > REASONS_KEPT:
        kept = dict(counts.most_common(REASONS_KEPT - 1))
        rest = sum(counts.values()) - sum(kept.values())
        counts.clear()
        counts.update(kept)
        counts[OTHER_REASONS] += rest


@dataclass
class MigrationReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "failed"]

    def totals(self) -> dict[str, Any]:
        totals: dict[str, Any] = {
            key: sum(getattr(f, key) for f in self.files) for key in NUMERIC_KEYS
        }
        totals["seconds"] = round(totals["seconds"], 3)
        totals["files"] = len(self.files)
        for status in ("imported", "skipped", "failed"):
            totals[status] = sum(1 for f in self.files if f.status == status)
        return totals

    def as_json(self) -> dict[str, Any]:
        return {"files": [f.as_json() for f in self.files], "totals": self.totals()}

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")

    def rows(self) -> list[dict[str, object]]:
        """One row per file and a TOTAL row: the printed table and the table artifact."""
        rows: list[dict[str, object]] = [
            {
                "file": f.path,
                "format": f.format or "",
                "status": f.status + (f" after {f.attempts} attempts" if f.attempts > 1 else ""),
                "lines": f.lines,
                "non-data": f.non_data,
                "readings": f.readings,
                "inserted": f.inserted,
                "duplicates": f.duplicates,
                "rejected": f.rejected,
                "time range (UTC)": _time_range(f),
                "seconds": round(f.seconds, 2),
                "error": f.error or "",
            }
            for f in self.files
        ]
        t = self.totals()
        rows.append(
            {
                "file": f"TOTAL ({t['files']} files: {t['imported']} imported, "
                f"{t['skipped']} skipped, {t['failed']} failed)",
                "format": "",
                "status": "failed" if t["failed"] else "ok",
                "lines": t["lines"],
                "non-data": t["non_data"],
                "readings": t["readings"],
                "inserted": t["inserted"],
                "duplicates": t["duplicates"],
                "rejected": t["rejected"],
                "time range (UTC)": "",
                "seconds": t["seconds"],
                "error": "",
            }
        )
        return rows

    def markdown(self) -> str:
        """The run's summary: totals, what failed and why, rejections quoted per file."""
        t = self.totals()
        out = [
            f"# Log migration: {t['files']} files, {t['imported']} imported, "
            f"{t['skipped']} skipped, {t['failed']} failed",
            "",
            f"{t['lines']:,} lines: {t['non_data']:,} non-data, {t['inserted']:,} inserted, "
            f"{t['duplicates']:,} duplicates ({t['conflicts']:,} with different values, "
            f"first kept), {t['rejected']:,} rejected.",
        ]
        if self.failed:
            out += ["", "## Failed", ""]
            out += [f"- `{f.path}` (after {f.attempts} attempt(s)): {f.error}" for f in self.failed]
        unknown: Counter[str] = Counter()
        for f in self.files:
            unknown.update(f.unknown_stations)
        if unknown:
            out += [
                "",
                "## Unknown stations",
                "",
                "Add them to the registry, `powerwatch stations sync`, then run the migration "
                "again with `--force`:",
                "",
            ]
            out += [f"- {name}: {count:,} readings" for name, count in sorted(unknown.items())]
        rejecting = [f for f in self.files if f.rejected]
        if rejecting:
            out += ["", "## Rejected lines"]
            for f in rejecting:
                out += ["", f"### `{f.path}`: {f.rejected:,} rejected", ""]
                for reason, count in sorted(f.rejected_by_reason.items(), key=lambda x: -x[1]):
                    out.append(f"- {count:,}: {reason}")
                out += ["", f"First {len(f.first_rejected)}:", "", "```"]
                for item in f.first_rejected:
                    out.append(f"line {item['line']}: {item['reason']}")
                    out.append(f"    {_quote(item['text'])}")
                out.append("```")
        return "\n".join(out) + "\n"


def _time_range(f: FileReport) -> str:
    if f.first_timestamp is None:
        return ""
    return f"{f.first_timestamp} .. {f.last_timestamp}"


def _quote(text: object) -> str:
    quoted = str(text if text is not None else "").replace("```", "'''")
    return quoted if len(quoted) <= _QUOTE_CHARS else quoted[:_QUOTE_CHARS] + " …"
