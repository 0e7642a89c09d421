"""Physical lines of a (possibly gzip-compressed) file, in bounded blocks.

Lines are counted as a text editor counts them: a newline at the very end of
the file does not start another line, but every blank line before it is one.
Each block is a frame with:

    line     Int64   1-based line number in the file
    raw      String  the line without its terminator (LF or CRLF) or a leading BOM
    problem  String  null, or why the line's text is not trustworthy:
                     "not UTF-8" (text decoded with U+FFFD replacements) or
                     "line longer than ..." (text cut to its first KiB)

Memory stays bounded by the block size plus one read, whatever the file's
size; a line longer than `max_line_bytes` is skipped through, not held.
A `ReadPosition` passed in follows how many bytes of the file (as stored: a gzip
file's compressed bytes) were read so far, for progress reports.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import polars as pl

from powerwatch.legacy.formats import UTF8_BOM, LegacyLogError, is_gzip

NOT_UTF8: Final = "not UTF-8"
MAX_LINE_BYTES: Final = 16 * 1024 * 1024
READ_BYTES_MAX: Final = 8 * 1024 * 1024
READ_BYTES_MIN: Final = 64 * 1024
_KEPT_OF_LONG_LINE: Final = 1024
# read_csv with a separator that text lines do not contain splits lines fast;
# a block that does contain it goes through the plain Python split.
_SEPARATOR: Final = "\x1f"
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS  # a gzip header and trailer around deflate data
_GZIP_READ: Final = 1024 * 1024
_BLOCK_SCHEMA: Final = {"line": pl.Int64(), "raw": pl.String(), "problem": pl.String()}


class ReadPosition:
    """Bytes of the file as stored (compressed, for gzip) read so far."""

    def __init__(self) -> None:
        self.value = 0


def too_long(limit: int) -> str:
    return f"line longer than {limit} bytes"


def iter_line_blocks(
    path: Path,
    batch_lines: int,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    position: ReadPosition | None = None,
) -> Iterator[pl.DataFrame]:
    """Frames of exactly `batch_lines` lines (the last one may be shorter)."""
    if batch_lines < 1:
        raise ValueError("batch_lines must be at least 1")
    read_size = min(max(batch_lines * 128, READ_BYTES_MIN), READ_BYTES_MAX)
    pending: list[pl.DataFrame] = []
    pending_lines = 0
    next_line = 1

    def add(frame: pl.DataFrame) -> Iterator[pl.DataFrame]:
        nonlocal pending, pending_lines, next_line
        next_line += frame.height
        pending.append(frame)
        pending_lines += frame.height
        if pending_lines < batch_lines:
            return
        whole = pl.concat(pending, rechunk=False)
        offset = 0
        while whole.height - offset >= batch_lines:
            yield whole.slice(offset, batch_lines).rechunk()
            offset += batch_lines
        rest = whole.slice(offset)
        pending = [rest] if rest.height else []
        pending_lines = rest.height

    carry = b""
    skipping: bytes | None = None  # the kept start of an over-long line being skipped
    try:
        for data in _raw_chunks(path, read_size, position or ReadPosition()):
            start = 0
            if skipping is not None:
                end = data.find(b"\n")
                if end < 0:
                    continue
                yield from add(_long_line(skipping, next_line, max_line_bytes))
                skipping = None
                start = end + 1
            cut = data.rfind(b"\n", start)
            if cut < 0:
                carry += data[start:]
                if len(carry) > max_line_bytes:
                    skipping, carry = carry[:_KEPT_OF_LONG_LINE], b""
                continue
            yield from add(_split(carry, data, start, cut, next_line))
            carry = data[cut + 1 :]
    except (EOFError, OSError, zlib.error) as exc:  # a damaged or cut gzip stream, ...
        raise LegacyLogError(f"{path.name}: cannot read past line {next_line - 1}: {exc}") from exc
    if skipping is not None:
        yield from add(_long_line(skipping, next_line, max_line_bytes))
    elif carry:  # a last line without a newline
        yield from add(_split(b"", carry, 0, len(carry), next_line))
    if pending:
        yield pl.concat(pending, rechunk=True)


def _raw_chunks(path: Path, size: int, position: ReadPosition) -> Iterator[bytes]:
    """The file's bytes (decompressed if gzip) in chunks of at most `size`, BOM removed."""
    if is_gzip(path):
        chunks = _gzip_chunks(path, size, position)
    else:
        chunks = _plain_chunks(path, size, position)
    head = b""
    for chunk in chunks:  # the BOM could straddle two (tiny) chunks
        head += chunk
        if len(head) >= len(UTF8_BOM):
            break
    if head := head.removeprefix(UTF8_BOM):
        yield head
    yield from chunks


def _plain_chunks(path: Path, size: int, position: ReadPosition) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while data := handle.read(size):
            position.value += len(data)
            yield data


def _gzip_chunks(path: Path, size: int, position: ReadPosition) -> Iterator[bytes]:
    """zlib directly: twice as fast as `gzip.open`, same checks (CRC, length, cut
    streams); the members of a concatenated gzip file are read one after another."""
    inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
    started = False  # some of the current member has been fed to `inflater`
    compressed = b""
    with open(path, "rb") as handle:
        while True:
            if not compressed:
                compressed = handle.read(_GZIP_READ)
                position.value += len(compressed)
            if not compressed:  # end of file: what zlib still holds, then the verdict
                while started and (out := inflater.decompress(b"", size)):
                    yield out
                if started and not inflater.eof:
                    raise EOFError("compressed file ended before the end of its stream")
                return
            if not started and not compressed.strip(b"\0"):
                compressed = b""  # zero padding after a member, as gzip tolerates
                continue
            started = True
            if out := inflater.decompress(compressed, size):
                yield out
            if inflater.eof:
                compressed = inflater.unused_data
                inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
                started = False
            else:
                compressed = inflater.unconsumed_tail


def _split(head: bytes, data: bytes, start: int, end: int, first_line: int) -> pl.DataFrame:
    """The lines of `head + data[start:end]` (which ends before its last line's newline)."""
    expected = head.count(b"\n") + data.count(b"\n", start, end) + 1
    sink = io.BytesIO()  # one copy; polars reads a BytesIO's buffer without another
    sink.write(head)
    sink.write(memoryview(data)[start:end])
    raw: pl.Series | None = None
    problem: pl.Series | None = None
    if expected > 1 or end > start or head:
        try:
            raw = pl.read_csv(
                sink,
                has_header=False,
                separator=_SEPARATOR,
                quote_char=None,
                schema={"raw": pl.String},
            ).to_series()
        except pl.exceptions.PolarsError:  # not UTF-8, the separator in a line, ...
            raw = None
        if raw is not None and raw.len() != expected:
            raw = None  # e.g. blank lines at the end: read_csv drops them
    if raw is None:
        raw, problem = _split_exactly(sink.getvalue())
    else:
        raw = raw.fill_null("")
    if not data.isascii() and UTF8_BOM in data:  # files concatenated, each with its BOM
        raw = raw.str.strip_prefix("\ufeff")
    return pl.DataFrame(
        {
            "line": pl.int_range(first_line, first_line + expected, dtype=pl.Int64, eager=True),
            "raw": raw,
            "problem": problem
            if problem is not None
            else pl.repeat(None, expected, dtype=pl.String, eager=True),
        },
        schema=_BLOCK_SCHEMA,
    )


def _split_exactly(chunk: bytes) -> tuple[pl.Series, pl.Series | None]:
    """Python split: for blocks with bytes that are not UTF-8 (or other rarities)."""
    try:
        lines = chunk.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        texts: list[str] = []
        problems: list[str | None] = []
        for piece in chunk.split(b"\n"):
            try:
                texts.append(piece.decode("utf-8"))
                problems.append(None)
            except UnicodeDecodeError:
                texts.append(piece.decode("utf-8", errors="replace"))
                problems.append(NOT_UTF8)
        raw = pl.Series("raw", texts, dtype=pl.String).str.strip_suffix("\r")
        return raw, pl.Series("problem", problems, dtype=pl.String)
    return pl.Series("raw", lines, dtype=pl.String).str.strip_suffix("\r"), None


def _long_line(kept: bytes, number: int, limit: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "line": [number],
            "raw": [kept.decode("utf-8", errors="replace").removesuffix("\r")],
            "problem": [too_long(limit)],
        },
        schema=_BLOCK_SCHEMA,
    )
