"""The report of a log migration (spec/legacy-logs.md): per file, totals, and its three views.

One `FileReport` per file, whatever happened to it; the same objects feed the
printed table, the `--report` JSON and the Prefect artifacts, so the three can
never disagree. For every file: lines = non_data + inserted + duplicates + rejected.

Truthful outcomes: a file whose transaction committed has `status` "imported" (the
spec's word), but its `verdict` says what that import amounted to: "all rejected"
(readings rejected, none stored or already there), "mostly rejected" (more than
`MOSTLY_REJECTED` of its reading lines), "no readings" (nothing but non-data), else
"imported". Every view leads with inserted and rejected counts and shows the verdict
where a clean import would say "imported".
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

Status = Literal["imported", "skipped", "failed"]

QUOTED_LINES: Final = 5  # rejected lines quoted per file ("the first few")
REASONS_KEPT: Final = 50  # distinct rejection reasons listed per file; the rest are summed
OTHER_REASONS: Final = "(other reasons)"
_QUOTE_CHARS: Final = 200
# More than this share of a file's reading lines rejected: the file is "mostly rejected".
MOSTLY_REJECTED: Final = 0.5


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

    @property
    def reading_lines(self) -> int:
        """Lines that were readings (stored, duplicate or rejected): all but non-data."""
        return self.lines - self.non_data

    @property
    def verdict(self) -> str:
        """What the import amounted to (module docstring); `status` unless imported."""
        if self.status != "imported":
            return self.status
        if self.reading_lines <= 0:
            return "no readings"
        if self.rejected and self.inserted + self.duplicates == 0:
            return "all rejected"
        if self.rejected > MOSTLY_REJECTED * self.reading_lines:
            return "mostly rejected"
        return "imported"

    @property
    def warning(self) -> str | None:
        """One line for a file that is not a clean import, leading with the counts."""
        if self.verdict not in ("all rejected", "mostly rejected"):
            return None
        top = sorted(self.rejected_by_reason.items(), key=lambda x: -x[1])[:3]
        reasons = "; ".join(f"{reason}: {count:,}" for reason, count in top)
        return (
            f"{self.name}: {self.rejected:,} of {self.reading_lines:,} readings rejected, "
            f"{self.inserted:,} inserted ({reasons})"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"verdict": self.verdict}


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

    @property
    def rejecting(self) -> list[FileReport]:
        """Imported files that are all or mostly rejected readings."""
        return [f for f in self.files if f.verdict in ("all rejected", "mostly rejected")]

    @property
    def nothing_inserted_but_rejected(self) -> bool:
        """The run stored no reading while it rejected some: not a success to show green."""
        inserted = sum(f.inserted for f in self.files)
        return inserted == 0 and any(f.rejected for f in self.files)

    def summary(self) -> str:
        """The run's final message: counts first, then the files' fate."""
        t = self.totals()
        head = (
            f"{t['inserted']:,} inserted, {t['rejected']:,} rejected, "
            f"{t['duplicates']:,} duplicates"
        )
        if self.nothing_inserted_but_rejected:
            head = f"nothing inserted: {t['rejected']:,} readings rejected"
            unknown = sum(sum(f.unknown_stations.values()) for f in self.files)
            if unknown:
                head += f" ({unknown:,} of unknown stations: add them, sync, run with --force)"
            head += f", {t['duplicates']:,} duplicates"
        files = (
            f"{t['files']} file(s): {t['imported']} imported, {t['skipped']} skipped, "
            f"{t['failed']} failed"
        )
        if self.rejecting:
            files += f", {len(self.rejecting)} all or mostly rejected"
        return f"{head}; {files}"

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
        """One row per file and a TOTAL row: the printed table and the table artifact.
        Inserted and rejected first after the file and its verdict: what an operator
        looks at first."""
        rows: list[dict[str, object]] = [
            {
                "file": f.path,
                "status": f.verdict + (f" after {f.attempts} attempts" if f.attempts > 1 else ""),
                "inserted": f.inserted,
                "rejected": f.rejected,
                "duplicates": f.duplicates,
                "lines": f.lines,
                "non-data": f.non_data,
                "readings": f.readings,
                "format": f.format or "",
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
                "status": "failed"
                if t["failed"]
                else ("nothing inserted" if self.nothing_inserted_but_rejected else "ok"),
                "inserted": t["inserted"],
                "rejected": t["rejected"],
                "duplicates": t["duplicates"],
                "lines": t["lines"],
                "non-data": t["non_data"],
                "readings": t["readings"],
                "format": "",
                "time range (UTC)": "",
                "seconds": t["seconds"],
                "error": "",
            }
        )
        return rows

    def artifact_rows(self) -> list[dict[str, object]]:
        """The UI's main table: the columns of `rows` an operator reads first, files named
        from the folder the run was given, so the table fits the page (1,440 px) without
        scrolling; the rest is in `detail_rows`."""
        main = ("file", "status", "inserted", "rejected", "duplicates", "lines", "seconds")
        names = _short_names([f.path for f in self.files])
        rows = [{k: row[k] for k in main} for row in self.rows()]
        for row, name in zip(rows, names, strict=False):  # the TOTAL row keeps its text
            row["file"] = name
        return rows

    def detail_rows(self) -> list[dict[str, object]]:
        """The second table: what each file held, and why one failed."""
        detail = ("file", "format", "non-data", "readings", "time range (UTC)", "error")
        names = _short_names([f.path for f in self.files])
        rows = [{k: row[k] for k in detail} for row in self.rows()[:-1]]
        for row, name in zip(rows, names, strict=True):
            row["file"] = name
        return rows

    def markdown(self) -> str:
        """The run's summary: totals, what failed and why, rejections quoted per file."""
        t = self.totals()
        out = [
            f"# Log migration: {t['inserted']:,} inserted, {t['rejected']:,} rejected",
            "",
            f"{self.summary()}.",
            "",
            f"{t['lines']:,} lines: {t['non_data']:,} non-data, {t['inserted']:,} inserted, "
            f"{t['duplicates']:,} duplicates ({t['conflicts']:,} with different values, "
            f"first kept), {t['rejected']:,} rejected.",
        ]
        if self.rejecting:
            out += ["", "## Files with all or most readings rejected", ""]
            out += [f"- **{f.verdict}**: {f.warning}" for f in self.rejecting]
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


def _short_names(paths: list[str]) -> list[str]:
    """Each path relative to the folder all of them share (the file's name for one)."""
    if not paths:
        return []
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    common = os.path.commonpath(paths)
    return [os.path.relpath(path, common) for path in paths]


def _time_range(f: FileReport) -> str:
    if f.first_timestamp is None:
        return ""
    return f"{f.first_timestamp} .. {f.last_timestamp}"


def _quote(text: object) -> str:
    quoted = str(text if text is not None else "").replace("```", "'''")
    return quoted if len(quoted) <= _QUOTE_CHARS else quoted[:_QUOTE_CHARS] + " …"
