"""The channels of a reading and the landing contract's columns: plain data, no pandera.

Kept apart from the pandera model so that readers of the database (queries,
the CLI) import in milliseconds; every rule still lives in this package only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from schemas.names import STATION_NAME_PATTERN as STATION_NAME_PATTERN

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(minutes=5)
TIMESTAMP_DTYPE = pl.Datetime("ms", "UTC")
# Stored timestamps are integer epoch milliseconds (UTC): the spans used with them.
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Channel:
    """One measured quantity: its protocol key, its database column and its valid range."""

    key: str  # name in the protocol, chunks and CSV (camelCase)
    column: str  # name in the database (snake_case, portable without quoting)
    unit: str
    minimum: float
    maximum: float
    maximum_inclusive: bool


ACTIVE_CHANNELS: tuple[Channel, ...] = tuple(
    Channel(f"activePower{i}", f"active_power{i}", "W", -1_000.0, 1_000_000.0, True)
    for i in range(1, 7)
)
MUX_CHANNELS: tuple[Channel, ...] = tuple(
    Channel(f"muxPower{i}", f"mux_power{i}", "kWh", 0.0, 1e12, False) for i in range(1, 5)
)
CHANNELS: tuple[Channel, ...] = ACTIVE_CHANNELS + MUX_CHANNELS
CHANNEL_KEYS: tuple[str, ...] = tuple(c.key for c in CHANNELS)

# The landing-chunk contract (spec/landing-chunks.md); `received_at` is optional.
LANDING_COLUMNS: dict[str, pl.DataType] = {
    "station": pl.String(),
    "timestamp": TIMESTAMP_DTYPE,
    **{key: pl.Float64() for key in CHANNEL_KEYS},
}
RECEIVED_AT = "received_at"
REASON = "reason"
