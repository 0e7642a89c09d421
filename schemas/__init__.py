"""The one definition of a reading: columns, validity rules, and the pandera model built from them."""

from schemas.reading import (
    ACTIVE_CHANNELS,
    CHANNELS,
    LANDING_COLUMNS,
    MUX_CHANNELS,
    READING_SCHEMA,
    Channel,
    split_valid,
)

__all__ = [
    "ACTIVE_CHANNELS",
    "CHANNELS",
    "LANDING_COLUMNS",
    "MUX_CHANNELS",
    "READING_SCHEMA",
    "Channel",
    "split_valid",
]
