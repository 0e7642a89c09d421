"""Files that are either whole or absent, and their content hash. Stdlib only (the
discovery of a site's server runs before anything heavy is imported).

Every file the system publishes (a chunk, an archive day, a backup and its manifest, a
statement, the registry the simulator writes, the health state, the server's address)
is written under a hidden temporary name in its own folder, fsynced, renamed into
place, and the folder fsynced: a reader never sees half a file, and after a power cut
the file is there whole or not at all. A failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

BLOCK = 1 << 20  # bytes read at a time when hashing


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename, a new file) to the disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path`, unique to this write (two writers never share it)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename a fully written (and fsynced) `tmp` into place, then fsync the folder."""
    tmp.replace(path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The temporary path to write `path`'s content to; on leaving, it is fsynced and
    renamed into place (or removed, if the block raised)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
