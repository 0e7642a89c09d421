"""Which legacy log format a file holds, judged from its content (spec/legacy-logs.md).

`T` text log (monitor 1.x-2.x), `J` JSON lines (3.x), `C` CSV export; plain or
gzip (recognised by its magic bytes, whatever the file is called).
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from pathlib import Path
from typing import Final, Literal

import orjson

from powerwatch.core.errors import InputError

Format = Literal["T", "J", "C"]
FORMATS: Final[tuple[Format, ...]] = ("T", "J", "C")

GZIP_MAGIC: Final = b"\x1f\x8b"
UTF8_BOM: Final = b"\xef\xbb\xbf"

# How much of a file detection looks at: enough for banners and a few readings.
SAMPLE_BYTES: Final = 64 * 1024
SAMPLE_LINES: Final = 200

# A format-T line: local time stamp, then a [LEVEL] tag.
_T_LINE: Final = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)? \[[A-Za-z]+\] ")
_J_KEYS: Final = frozenset({"station", "timestamp", "readings"})


class LegacyLogError(InputError):
    """A legacy log file that cannot be read as the format it was taken for."""


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def open_binary(path: Path) -> io.BufferedIOBase:
    """The file's (decompressed) bytes, gzip recognised by content, not by name."""
    if is_gzip(path):
        return gzip.open(path, "rb")
    return open(path, "rb")


def csv_header_fields(line: str) -> list[str]:
    """The column names of a CSV header line (spaces and quotes around names ignored)."""
    return [field.strip().strip('"').strip() for field in line.split(",")]


def is_csv_header(line: str) -> bool:
    fields = csv_header_fields(line)
    return "timestamp" in fields and "station" in fields


def detect_format(path: Path) -> Format | None:
    """`T`, `J` or `C` from the first lines of the content; None for anything else.

    Blank lines and lines that fit no format (banners) before the first telling
    line are passed over. A file with NUL bytes, an unreadable gzip stream, an
    empty file, or one with no telling line in its first lines gives None.
    """
    try:
        with open_binary(path) as handle:
            sample = handle.read(SAMPLE_BYTES)
    except (OSError, EOFError, zlib.error):
        return None
    if b"\x00" in sample:
        return None
    complete = len(sample) < SAMPLE_BYTES
    text = sample.removeprefix(UTF8_BOM).decode("utf-8", errors="replace")
    lines = text.splitlines()
    if not complete and lines:
        lines.pop()  # may be cut by the sample's end
    for line in lines[:SAMPLE_LINES]:
        found = _line_format(line.strip())
        if found is not None:
            return found
    return None


def why_not_detected(path: Path) -> str:
    """The reason `detect_format(path)` gave None, in words for an operator."""
    try:
        with open_binary(path) as handle:
            sample = handle.read(SAMPLE_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        return f"cannot be read: {exc}"
    if b"\x00" in sample:
        return "binary content, not a log of format T, J or C"
    if not sample.removeprefix(UTF8_BOM).strip():
        return "empty file, nothing to import"
    return f"no line of format T, J or C in its first {SAMPLE_LINES} lines"


def _line_format(line: str) -> Format | None:
    if not line:
        return None
    if _T_LINE.match(line):
        return "T"
    if line.startswith("{"):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return "J" if isinstance(value, dict) and _J_KEYS & value.keys() else None
    if is_csv_header(line):
        return "C"
    return None
