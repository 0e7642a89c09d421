"""A folder of legacy logs with everything `legacy-logs.md` says real files contain.

    python -m bench.legacy_corpus /tmp/corpus [--lines 1000000] [--stations 50] [--seed 0]

Seven files, all three formats (`bench/legacy_gen.py` writes each), about `lines`
lines in all: a rotated text log (`monitor.log`, `monitor.log.1`,
`monitor.log.2.gz`) whose time ranges overlap, JSON-lines logs plain and gzip
(overlapping), CSV exports with their columns in another order (one gzip), UTF-8
byte-order marks, CRLF line ends, trailing blank lines, lines out of time order,
lines that do not parse (1 in 1,000), readings of a station not in the registry
(1 in 2,000), and format T's connection warnings, errors and stack traces.
Deterministic for a seed: the same arguments write the same bytes.

`Corpus` says what a correct import must give: every reading line that parses and
is of a registered station is inserted or a duplicate (rotation overlaps), every
other reading line is rejected, every other line is non-data.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.legacy_gen import CSV_COLUMNS, Generated, generate
from powerwatch.legacy.formats import Format

# name, format, share of the reading lines, gzip, BOM, CRLF, trailing blank lines,
# start (in file lengths after the previous file of the same family; < 1 overlaps)
_FILES: tuple[tuple[str, Format, float, dict[str, Any]], ...] = (
    ("monitor.log.2.gz", "T", 0.20, {"gz": True}),
    ("monitor.log.1", "T", 0.20, {"crlf": True}),
    ("monitor.log", "T", 0.15, {"bom": True, "trailing_blank": 3, "shuffle_every": 97}),
    ("archive/monitor-3x-old.jsonl.gz", "J", 0.10, {"gz": True}),
    ("monitor-3x.jsonl", "J", 0.15, {"bom": True, "crlf": True, "shuffle_every": 101}),
    ("exports/export.csv", "C", 0.15, {"bom": True, "crlf": True, "trailing_blank": 2}),
    ("exports/export-older.csv.gz", "C", 0.05, {"gz": True}),
)
# Of each file after the first of a family, this share of its seconds lies within the
# previous file's: the same readings in two files, as rotation leaves them.
OVERLAP = 0.05
UNKNOWN_EVERY = 2_000
# Export columns as a spreadsheet might order them: channels first, time and station last.
EXPORT_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS[2:][::-1], "station", "timestamp")


@dataclass
class Corpus:
    folder: Path
    files: list[Generated] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return sum(f.lines for f in self.files)

    @property
    def readings(self) -> int:
        """Reading lines that parse, of registered stations: inserted + duplicates."""
        return sum(f.readings for f in self.files)

    @property
    def rejected(self) -> int:
        return sum(f.bad + f.unknown for f in self.files)

    @property
    def non_data(self) -> int:
        return sum(f.non_data for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files)


def make_corpus(
    folder: Path, lines: int = 1_000_000, *, stations: int = 50, seed: int = 0
) -> Corpus:
    """Write the corpus into `folder` (created); about `lines` lines in all."""
    corpus = Corpus(folder)
    readings = round(lines / 1.02)  # format T adds about 3 % non-data lines to its 55 %
    family_end: dict[Format, int] = {}  # second after the previous file of each format
    # The text log is older than the JSON logs, the CSV exports newer (readings start at
    # `bench.data.EPOCH`; a day holds 4.3 M readings of 50 stations).
    family_start: dict[Format, int] = {"T": 0, "J": 86_400, "C": 2 * 86_400}
    for name, fmt, share, options in _FILES:
        count = max(stations, round(readings * share))
        seconds = -(-count // stations)
        if fmt in family_end:
            start = family_end[fmt] - round(seconds * OVERLAP)
        else:
            start = family_start[fmt]
        # Rotation writes the newest file first in name order: monitor.log is the latest.
        made = generate(
            folder / name,
            fmt,
            count,
            stations=stations,
            start_second=start,
            unknown_every=UNKNOWN_EVERY,
            csv_columns=EXPORT_COLUMNS if fmt == "C" else CSV_COLUMNS,
            seed=seed,
            **options,
        )
        family_end[fmt] = start + seconds
        corpus.files.append(made)
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    corpus = make_corpus(args.folder, args.lines, stations=args.stations, seed=args.seed)
    for f in corpus.files:
        print(f"{f.path}: {f.lines:,} lines, {f.readings:,} readings, {f.bad + f.unknown:,} bad")
    print(
        f"{corpus.folder}: {corpus.lines:,} lines ({corpus.bytes / 1024**2:.0f} MB on disk), "
        f"{corpus.readings:,} readings to store or count as duplicates, "
        f"{corpus.rejected:,} to reject, {corpus.non_data:,} non-data"
    )


if __name__ == "__main__":
    main()
