"""`powerwatch demo`: the whole system on one machine, on the embedded defaults.

Today: create the database, register the demo stations, land a chunk of the
last five minutes of readings, run the `load-chunks` flow, print the latest
reading of every station.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from powerwatch.registry import Station, load_registry, write_registry
from powerwatch.settings import Settings
from schemas.channels import ACTIVE_CHANNELS, MUX_CHANNELS

DEMO_STATIONS = [
    Station(
        "KhonKaen",
        "237db9a3-0311-4ba5-a431-7182045adce9",
        "127.0.0.1",
        "northeast",
        "ws://127.0.0.1:19100/",
    ),
    Station(
        "ChiangMai",
        "a3b4f9db-5a66-4019-aebb-6c47f99e1f95",
        "127.0.0.1",
        "north",
        "ws://127.0.0.1:19101/",
    ),
    Station(
        "Songkhla",
        "01d79e66-46cb-49b9-a8d9-1b110132253f",
        "127.0.0.1",
        "south",
        "ws://127.0.0.1:19102/",
    ),
    Station(
        "Phuket",
        "8200e417-09cd-4b20-aa1b-ea0fd469ba2e",
        "127.0.0.1",
        "south",
        "ws://127.0.0.1:19103/",
    ),
    Station(
        "UdonThani",
        "025d1f2b-48be-49f0-a3cd-93bd444b967d",
        "127.0.0.1",
        "northeast",
        "ws://127.0.0.1:19104/",
    ),
]


def demo_chunk(stations: list[str], seconds: int, end: datetime) -> pl.DataFrame:
    """Plausible readings: outputs around 1.5-2.5 kW with noise, meters that only grow."""
    start = end - timedelta(seconds=seconds)
    frame = pl.DataFrame(
        {
            "station": [s for _ in range(seconds) for s in stations],
            "timestamp": [start + timedelta(seconds=i) for i in range(seconds) for _ in stations],
        }
    ).with_columns(pl.col("timestamp").dt.cast_time_unit("ms").dt.convert_time_zone("UTC"))
    n = frame.height
    tick = pl.int_range(0, n, eager=True).cast(pl.Float64)
    station_no = pl.Series([float(i) for _ in range(seconds) for i in range(len(stations))])
    columns = {
        c.key: (1500.0 + 250.0 * station_no + (tick * (7 + k) % 97) - 48).round(2)
        if k < 3
        else pl.Series([0.0] * n)
        for k, c in enumerate(ACTIVE_CHANNELS)
    }
    columns |= {
        c.key: (
            783_700.43 + 1000.0 * station_no + k * 784_000.0 + tick / len(stations) * 0.0005
        ).round(2)
        for k, c in enumerate(MUX_CHANNELS)
    }
    return frame.with_columns(**columns)


def run_demo(settings: Settings) -> int:
    from db.engine import bulk_connection, make_engine
    from db.migrate import upgrade
    from db.queries import latest
    from db.stations import sync_stations
    from flows.load_chunks import load_chunks
    from powerwatch.landing import chunk_name, write_atomically
    from powerwatch.output import write_table

    engine = make_engine(settings.database_url)
    upgrade(engine)
    if not settings.stations.exists():
        write_registry(settings.stations, DEMO_STATIONS)
        print(f"wrote the demo registry to {settings.stations}")
    registry = load_registry(settings.stations)
    print(f"stations: {sync_stations(engine, registry)}")
    chunk = write_atomically(
        demo_chunk([s.name for s in registry], 300, datetime.now(UTC)),
        settings.landing_dir / chunk_name("demo"),
    )
    print(f"landed {chunk}")
    state = load_chunks(return_state=True)
    print(f"load-chunks: {state.type.value}")
    with bulk_connection(settings.database_url) as bulk:
        write_table(latest(bulk))
    return 0 if state.is_completed() else 1
