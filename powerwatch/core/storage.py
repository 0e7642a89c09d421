"""An `OSError` met while writing the archive or a backup, as the job's named failure.

`errors.from_os_error` reads the errno; pyarrow's I/O errors (Parquet and zstd writers)
carry it only in their message ("[Errno 28] No space left on device"), so a full disk
there would otherwise read as a plain storage error. Its own small module so that
`powerwatch restore` (backup.py) does not import the archive's polars/ADBC stack.
"""

from __future__ import annotations

from powerwatch.core.errors import DiskFull, JobError, from_os_error


def storage_failure(exc: OSError, doing: str) -> JobError:
    """DiskFull for a full disk (errno or pyarrow's message), else StorageError."""
    if exc.errno is None and "no space left on device" in str(exc).lower():
        return DiskFull(f"{doing}: disk full: {str(exc).splitlines()[0]}")
    return from_os_error(exc, doing)
