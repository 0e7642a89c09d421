"""The rollups' work queue: the station-hours whose readings changed since the last refresh.

The load path (`powerwatch.load.store.store_readings`, shared by chunk loads, capture and
the legacy migration) appends one *mark* per (station, hour, batch) it stored readings in
to `rollup_dirty`, inside its own transaction; `powerwatch.rollups.refresh` consumes
them. Here, below every stage, because both the load and the rollups use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from db.names import ROLLUP_DIRTY
from schemas.channels import HOUR_MS

if TYPE_CHECKING:  # not at run time: a query on `db.reader` loads no ADBC
    from db.bulk import BulkConnection


def mark_dirty(bulk: BulkConnection, stored: pl.DataFrame, batch_id: int) -> None:
    """Queue the station-hours of readings just stored (`station_id`, `ts`): one append.

    Called by `store_readings` inside the load transaction, so a mark commits
    exactly when its readings do.
    """
    if stored.is_empty():
        return
    # Runs of one (station, hour) key: the load hands over rows in key order, so this is
    # one mark per station-hour without a hash group-by (3x cheaper); rows out of order
    # only make more marks, which the refresh sums.
    key = pl.col("station_id").cast(pl.Int64) * 2**32 + pl.col("ts") // HOUR_MS
    marks = (
        stored.select(key.rle().alias("run"))
        .unnest("run")
        .select(
            (pl.col("value") // 2**32).cast(pl.Int32).alias("station_id"),
            (pl.col("value") % 2**32 * HOUR_MS).alias("hour_ts"),
            pl.lit(batch_id, pl.Int32).alias("batch_id"),
            pl.col("len").cast(pl.Int64).alias("readings"),
        )
    )
    bulk.ingest(ROLLUP_DIRTY, marks.to_arrow())


def pending_hours(bulk: BulkConnection) -> int:
    """Station-hours queued for the next refresh (rollups of them may be behind)."""
    return int(
        bulk.scalar(
            f"SELECT count(*) FROM (SELECT DISTINCT station_id, hour_ts FROM {ROLLUP_DIRTY}) q"
        )
    )
