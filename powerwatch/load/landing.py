"""The landing zone (spec/landing-chunks.md) as a visible state machine of folders.

    landing/x.parquet --claim--> landing/.claimed/x.parquet.<pid>-<start>@<host>
         ^                          |--load commits--> loaded/x.parquet
         '--released (job failed) --|--unreadable----> failed/x.parquet + .reason.txt
                                    '--not a regular file (directory, FIFO, symlink,
                                       socket, device) --> failed/x.parquet + .reason.txt
    rejected rows of x ----------------> quarantine/x.parquet (with a `reason` column)

Producers keep the spec's contract: they write a complete file under a hidden or
temporary name and rename it into landing/ when complete, so a reader never sees
half a file. Every later step is an atomic rename within the one file system too.

Why a claim: two loaders may run at once (a timer and an operator). The rename
into `.claimed/` succeeds for exactly one of them; the other finds the file gone
and skips it. The claim's name carries its owner (pid, the process's start
time, so a reused pid is not mistaken for the owner, and the host): a claim whose
owner is gone was left by a loader that died, and the next run puts it back into
landing/ (`recover_claims`); another host's claim (a shared data folder) is taken
back once it is older than `CLAIM_STALE_SECONDS`. The database ledger, checked
under the write lock, makes re-loading a chunk whose transaction had committed a
no-op that only finishes the move. `.claimed/` is hidden and its names do not end
in `.parquet`: `list_chunks` and any glob of `landing/*.parquet` never see a claim.
"""

from __future__ import annotations

import os
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import polars.exceptions
import pyarrow as pa
import pyarrow.parquet as pq

from powerwatch.core.errors import ChunkError
from powerwatch.core.files import sha256_file
from schemas.channels import LANDING_COLUMNS, RECEIVED_AT, TIMESTAMP_DTYPE

CLAIMED = ".claimed"


def list_chunks(landing: Path) -> list[Path]:
    """Complete chunks, oldest first (by modification time, then name).

    Every entry named `*.parquet` is listed, whatever its type (`claim` and the
    loader set a non-regular one aside); one that vanishes meanwhile (another loader
    claimed it) is left out. Nothing here opens a file or follows a link.
    """
    if not landing.is_dir():
        return []
    found: list[tuple[int, str, Path]] = []
    for path in landing.iterdir():
        if path.suffix != ".parquet" or path.name.startswith("."):
            continue
        try:
            found.append((path.lstat().st_mtime_ns, path.name, path))
        except FileNotFoundError:
            continue
    return [path for _, _, path in sorted(found)]


# A claim of another host (a shared data folder) cannot be checked by its pid: it counts
# as abandoned once it is this old. Loading one chunk takes seconds (a 1 M-row chunk
# loads in 2-4 s), so an hour never cuts a live loader short.
CLAIM_STALE_SECONDS = 3600


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("@", "_") or "localhost"


def _owner() -> str:
    """This process as a claim's owner: `<pid>-<start time>@<host>` (a reused pid has
    another start time)."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}@{_host()}"


def _split_claim(claimed: Path) -> tuple[str, str]:
    name, _, owner = claimed.name.rpartition(".parquet.")
    return name + ".parquet", owner


def _abandoned(claimed: Path, owner: str) -> bool:
    """The claim's owner is gone: this host's process by that pid and start time has
    ended, or (another host's claim) it is older than `CLAIM_STALE_SECONDS`."""
    process, _, host = owner.partition("@")
    pid_text, _, started = process.partition("-")
    if host != _host() or not pid_text.isdigit():
        try:
            changed = claimed.lstat().st_ctime  # a rename sets it: the time of the claim
        except FileNotFoundError:
            return False
        return time.time() - changed > CLAIM_STALE_SECONDS
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    now = _start_time(pid)
    # Without /proc (start times unknown) a live pid is taken to be the owner.
    return not (now is None or started in ("0", now))


def claim(chunk: Path) -> Path | None:
    """Take the chunk for this process (atomic rename); None if another loader has it."""
    folder = chunk.parent / CLAIMED
    folder.mkdir(exist_ok=True)
    target = folder / f"{chunk.name}.{_owner()}"
    try:
        chunk.rename(target)
    except FileNotFoundError:
        return None
    return target


def claimed_name(claimed: Path) -> str:
    """The chunk's own name (`x.parquet`) of a claim."""
    return _split_claim(claimed)[0]


def release(claimed: Path) -> Path:
    """Give a claim back to landing/ (the job failed before the chunk was finished)."""
    target = claimed.parent.parent / claimed_name(claimed)
    claimed.rename(target)
    return target


def recover_claims(landing: Path) -> list[Path]:
    """Put the claims of loaders that died back into landing/; the chunks put back.

    A claim whose owner is alive is left alone (that loader is still at it). Two
    recovering loaders race safely: the rename succeeds for one of them.
    """
    folder = landing / CLAIMED
    if not folder.is_dir():
        return []
    recovered: list[Path] = []
    for claimed in sorted(folder.iterdir()):
        name, owner = _split_claim(claimed)
        if not _abandoned(claimed, owner):
            continue
        target = landing / name
        if target.exists() or target.is_symlink():
            continue  # a new chunk of the same name landed (names are unique: never)
        try:
            claimed.rename(target)
        except FileNotFoundError:
            continue  # another loader recovered it first
        recovered.append(target)
    return recovered


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` is no chunk to open (never opens it, never follows a link), or None."""
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a file")
    return f"not a regular file ({kind}); producers write complete regular files"


def chunk_name(producer: str) -> str:
    """A name unique across concurrent producers, sortable by time."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{producer}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"


file_hash = sha256_file  # a chunk's content hash in the ledger


# Rows per slice when streaming a chunk: bounds a load's memory. Each slice is copied a few
# times on its way in (validation, key split, sort), and the loader's ReadAhead holds one
# more. Smaller slices pay the per-slice costs (one pandera call, a few small queries) more
# often for little memory saved (docs/benchmarks.md, "Tuning decisions").
SLICE_ROWS = 100_000


def read_chunk(path: Path) -> pl.DataFrame:
    """The whole chunk, conformed (for small chunks and tests)."""
    return pl.concat([pl.DataFrame(schema=LANDING_COLUMNS), *iter_chunk(path)], how="diagonal")


def iter_chunk(path: Path, rows: int | None = None) -> Iterator[pl.DataFrame]:
    """Stream a chunk in slices conformed to the contract, or raise `ChunkError` with the reason.

    Tolerated (lossless): integer channels (cast to float64), timestamps of
    another unit or zone (converted to ms UTC; a zone-less one is taken as UTC).
    Anything else that differs from the contract makes the chunk unreadable.
    """
    try:
        parquet = pq.ParquetFile(path)
        casts = _conforming_casts(path, pl.from_arrow(parquet.schema_arrow.empty_table()))
        for batch in parquet.iter_batches(batch_size=rows or SLICE_ROWS):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame.with_columns(casts) if casts else frame
    except (OSError, pa.ArrowException, polars.exceptions.PolarsError) as exc:
        raise ChunkError(f"{path.name}: not a readable Parquet file ({_line(exc)})") from exc


def _conforming_casts(path: Path, empty: pl.DataFrame | pl.Series) -> list[pl.Expr]:
    assert isinstance(empty, pl.DataFrame)
    missing = [name for name in LANDING_COLUMNS if name not in empty.columns]
    if missing:
        raise ChunkError(f"{path.name}: missing columns {', '.join(missing)}")
    problems: list[str] = []
    casts: list[pl.Expr] = []
    for name, expected in LANDING_COLUMNS.items():
        actual = empty.schema[name]
        if actual == expected:
            continue
        if expected == pl.Float64() and (actual.is_numeric() or actual == pl.Null()):
            casts.append(pl.col(name).cast(pl.Float64))
        elif expected == TIMESTAMP_DTYPE and isinstance(actual, pl.Datetime):
            casts.append(_as_utc_ms(name, actual))
        elif name == "station" and actual in (pl.Categorical(), pl.Null()):
            casts.append(pl.col(name).cast(pl.String))
        else:
            problems.append(f"{name} is {actual}, expected {expected}")
    if RECEIVED_AT in empty.columns:
        actual = empty.schema[RECEIVED_AT]
        if isinstance(actual, pl.Datetime):
            casts.append(_as_utc_ms(RECEIVED_AT, actual))
        else:
            problems.append(f"{RECEIVED_AT} is {actual}, expected {TIMESTAMP_DTYPE}")
    if problems:
        raise ChunkError(f"{path.name}: wrong column types: {'; '.join(problems)}")
    return casts


def _as_utc_ms(name: str, dtype: pl.Datetime) -> pl.Expr:
    column = pl.col(name)
    if dtype.time_zone is None:
        column = column.dt.replace_time_zone("UTC")
    return column.dt.convert_time_zone("UTC").dt.cast_time_unit("ms")


def move(path: Path, folder: Path, name: str | None = None) -> Path:
    """Rename into `folder` as `name` (default: the same name)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_target(path, folder, name or path.name)
    path.replace(target)
    return target


def _free_target(path: Path, folder: Path, name: str) -> Path:
    """`folder/name`; a regular file there is replaced by a regular file (the same chunk
    loaded again), anything else there (a directory set aside before) is kept and the
    newcomer gets a numbered name."""
    target = folder / name
    number = 0
    while target.is_symlink() or (target.exists() and not _both_regular(path, target)):
        number += 1
        target = folder / f"{name}.{number}"
    return target


def _both_regular(path: Path, target: Path) -> bool:
    return stat.S_ISREG(path.lstat().st_mode) and stat.S_ISREG(target.lstat().st_mode)


def set_aside(path: Path, folder: Path, reason: str, name: str | None = None) -> Path:
    """Move an unreadable chunk aside whole, with its reason in a text file beside it.

    The reason is written first: a full disk then leaves the chunk where it was.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_target(path, folder, name or path.name)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
    path.replace(target)
    return target


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
