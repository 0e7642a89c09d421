"""Monthly energy statements per station and broadcaster, built from the rollups, revised.

Why: the four meters are how the broadcasters sharing a site are charged. A statement
is the month (boundaries in the site's zone) of every meter: opening and closing
register, consumption (measured + estimated, `powerwatch.rollups.energy`), the counts of resets,
wraps and flagged deltas, completeness and the broadcaster's share of its station.

Fast because it never reads raw readings: whole UTC days from `rollup_daily`, the
month's partial UTC days (the zone's offset) from `rollup_hourly`, the register before
the month with one indexed probe per station and meter, and the (rare) gap events
that cross the period. A month whose figures change (late data) is issued again as a
new revision; earlier revisions stay in `energy_statements` and in their files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from db.bulk import BulkConnection
from db.tables import MUX_COLUMNS, energy_events, energy_statements, rollup_daily, rollup_hourly
from db.tables import stations as stations_table
from powerwatch.core.errors import InputError
from powerwatch.core.faults import fault_point
from powerwatch.core.files import atomic_path
from powerwatch.rollups import energy
from schemas.channels import DAY_MS, HOUR_MS

# muxPower1..4, as the legacy T-format logs label them (powerwatch/legacy/parsers.py).
BROADCASTERS = ("TV5", "MCOT", "PRD", "TPBS")
COLUMNS = (
    "station",
    "broadcaster",
    "period_start",
    "period_end",
    "opening_ts",
    "opening_kwh",
    "closing_ts",
    "closing_kwh",
    "consumption_kwh",
    "estimated_kwh",
    "resets",
    "wraps",
    "flagged",
    "completeness",
    "share",
)
TIME_COLUMNS = ("period_start", "period_end", "opening_ts", "closing_ts")
CSV_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
# Figures compared between revisions (to the milli-kWh: float noise is not a restatement).
COMPARED = ("opening_kwh", "closing_kwh", "consumption_kwh", "estimated_kwh")
COUNTED = ("resets", "wraps", "flagged")


def month_period(month: str, tz: str) -> tuple[int, int]:
    """`YYYY-MM` in zone `tz` -> [start, end) in epoch ms UTC; bad input raises InputError."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"unknown time zone: {tz!r}") from exc
    try:
        first = datetime.strptime(month, "%Y-%m")
    except ValueError as exc:
        raise InputError(f"not a month (YYYY-MM): {month!r}") from exc
    following = (first + timedelta(days=32)).replace(day=1)
    start, end = (int(d.replace(tzinfo=zone).timestamp() * 1000) for d in (first, following))
    if start % HOUR_MS or end % HOUR_MS:
        raise InputError(f"time zone {tz}: month boundaries must fall on whole UTC hours")
    return start, end


def previous_month(tz: str, now: datetime | None = None) -> str:
    """The last month that has closed in zone `tz`."""
    local = (now or datetime.now(UTC)).astimezone(ZoneInfo(tz))
    return (local.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")


def _frame(bulk: BulkConnection, sql: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frame = bulk.frame(sql)
    if frame.is_empty():
        return pl.DataFrame(schema=schema)
    return frame.select(pl.col(n).cast(t) for n, t in schema.items())


def _meter_schema() -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"station_id": pl.Int32()}
    for m in MUX_COLUMNS:
        schema |= {
            f"{m}_kwh": pl.Float64(),
            f"{m}_resets": pl.Int64(),
            f"{m}_wraps": pl.Int64(),
            f"{m}_flagged": pl.Int64(),
            f"{m}_first": pl.Float64(),
            f"{m}_first_ts": pl.Int64(),
            f"{m}_last": pl.Float64(),
            f"{m}_last_ts": pl.Int64(),
        }
    return schema


def _long(frame: pl.DataFrame, suffixes: tuple[str, ...]) -> pl.DataFrame:
    """Per-meter wide columns -> one row per station and meter (`meter` 1..4)."""
    return pl.concat(
        [
            frame.select(
                "station_id",
                pl.lit(number, pl.Int32).alias("meter"),
                *(pl.col(f"{m}_{s}").alias(s) for s in suffixes),
            )
            for number, m in enumerate(MUX_COLUMNS, start=1)
        ]
    )


def compute_statement(bulk: BulkConnection, month: str, tz: str) -> pl.DataFrame:
    """The statement of `month` (zone `tz`): one row per station and broadcaster."""
    start, end = month_period(month, tz)
    first_day = -(-start // DAY_MS) * DAY_MS  # the first whole UTC day inside
    last_day = end // DAY_MS * DAY_MS  # ... and where the whole days stop
    schema = _meter_schema()
    # Driven by the stations table, one key range per station (the rollups' primary key
    # leads with station_id): never a scan of the whole table.
    r_columns = ", ".join(f"r.{n}" for n in schema)

    def ranges(table: str, lo: int, hi: int) -> pl.DataFrame:
        if lo >= hi:
            return pl.DataFrame(schema=schema)
        return _frame(
            bulk,
            f"SELECT {r_columns} FROM {stations_table.name} s CROSS JOIN {table} r "
            f"WHERE r.station_id = s.id AND r.start_ts >= {lo} AND r.start_ts < {hi}",
            schema,
        )

    if first_day < last_day:
        rows = pl.concat(
            [
                ranges(rollup_hourly.name, start, first_day),
                ranges(rollup_daily.name, first_day, last_day),
                ranges(rollup_hourly.name, last_day, end),
            ]
        )
    else:
        rows = ranges(rollup_hourly.name, start, end)
    suffixes = ("kwh", "resets", "wraps", "flagged", "first", "first_ts", "last", "last_ts")
    long = _long(rows, suffixes)
    period = long.group_by("station_id", "meter").agg(
        pl.col("kwh").sum().alias("measured"),
        pl.col("resets", "wraps", "flagged").sum(),
        pl.col("first").filter(pl.col("first_ts") == pl.col("first_ts").min()).first(),
        pl.col("first_ts").min(),
        pl.col("last").filter(pl.col("last_ts") == pl.col("last_ts").max()).first(),
        pl.col("last_ts").max(),
    )
    # The register before the month: the last value of the latest hour before it.
    probes = ", ".join(
        f"(SELECT q.{m}_{s} FROM {rollup_hourly.name} q WHERE q.station_id = s.id "
        f"AND q.start_ts < {start} AND q.{m}_last_ts IS NOT NULL "
        f"ORDER BY q.start_ts DESC LIMIT 1) AS {m}_{s}"
        for m in MUX_COLUMNS
        for s in ("last", "last_ts")
    )
    before_schema: dict[str, pl.DataType] = {"station_id": pl.Int32()}
    for m in MUX_COLUMNS:
        before_schema |= {f"{m}_last": pl.Float64(), f"{m}_last_ts": pl.Int64()}
    before = _frame(
        bulk, f"SELECT s.id AS station_id, {probes} FROM {stations_table.name} s", before_schema
    )
    opening = _long(before, ("last", "last_ts")).rename({"last": "before", "last_ts": "before_ts"})
    # Gap events crossing into the period: spread kWh (estimated unless wholly inside)
    # and the time they leave uncovered.
    gaps = _frame(
        bulk,
        f"SELECT station_id, meter, prev_ts, ts, kwh, spread FROM {energy_events.name} "
        f"WHERE gap = 1 AND prev_ts < {end} AND ts > {start}",
        {
            "station_id": pl.Int32(),
            "meter": pl.Int32(),
            "prev_ts": pl.Int64(),
            "ts": pl.Int64(),
            "kwh": pl.Float64(),
            "spread": pl.Int32(),
        },
    )
    bounds_start, bounds_end = pl.lit(start, pl.Int64), pl.lit(end, pl.Int64)
    overlap = (
        pl.min_horizontal(pl.col("ts"), bounds_end)
        - pl.max_horizontal(pl.col("prev_ts"), bounds_start)
    ).clip(lower_bound=0)
    parts = (
        energy.spread_over(gaps, bounds_start, bounds_end)
        .with_columns(overlap.alias("uncovered"), (pl.col("spread") == 1).alias("spread"))
        .group_by("station_id", "meter")
        .agg(
            pl.col("part").filter("spread").sum().alias("spread_kwh"),
            pl.col("part").filter(pl.col("spread") & pl.col("estimated")).sum().alias("estimated"),
            pl.col("uncovered").sum(),
        )
    )
    keys = pl.concat([period.select("station_id", "meter"), parts.select("station_id", "meter")])
    keys = pl.concat([keys, opening.drop_nulls("before_ts").select(keys.columns)]).unique()
    names = _frame(
        bulk,
        f"SELECT id AS station_id, name AS station FROM {stations_table.name}",
        {"station_id": pl.Int32(), "station": pl.String()},
    )
    has_before = pl.col("before_ts").is_not_null()
    table = (
        keys.join(period, on=["station_id", "meter"], how="left")
        .join(opening, on=["station_id", "meter"], how="left")
        .join(parts, on=["station_id", "meter"], how="left")
        .join(names, on="station_id")
        .with_columns(
            pl.when(has_before).then("before_ts").otherwise("first_ts").alias("opening_ts"),
            pl.when(has_before).then("before").otherwise("first").alias("opening_kwh"),
            pl.col("last_ts").alias("closing_ts"),
            pl.col("last").alias("closing_kwh"),
            (pl.col("measured").fill_null(0.0) + pl.col("spread_kwh").fill_null(0.0)).alias(
                "consumption_kwh"
            ),
            pl.col("estimated").fill_null(0.0).alias("estimated_kwh"),
            *(pl.col(c).fill_null(0).cast(pl.Int32) for c in COUNTED),
        )
    )
    covered = (
        pl.min_horizontal(pl.col("closing_ts"), bounds_end)
        - pl.max_horizontal(pl.col("opening_ts"), bounds_start)
        - pl.col("uncovered").fill_null(0)
    )
    total = pl.col("consumption_kwh").sum().over("station_id")
    broadcaster = pl.col("meter").replace_strict(
        dict(enumerate(BROADCASTERS, start=1)), return_dtype=pl.String
    )
    as_time = pl.Datetime("ms", "UTC")
    return (
        table.with_columns(
            broadcaster.alias("broadcaster"),
            pl.lit(start).cast(as_time).alias("period_start"),
            pl.lit(end).cast(as_time).alias("period_end"),
            (covered.cast(pl.Float64) / (end - start))
            .clip(0.0, 1.0)
            .fill_null(0.0)
            .alias("completeness"),
            pl.when(total > 0).then(pl.col("consumption_kwh") / total).alias("share"),
            pl.col("opening_ts").cast(as_time),
            pl.col("closing_ts").cast(as_time),
        )
        .sort("station", "meter")
        .select(COLUMNS)
    )


# --- issuing: revisions and files -------------------------------------------------------


@dataclass
class Issued:
    month: str
    tz: str
    revision: int
    statement: pl.DataFrame
    new: bool  # a new revision was recorded by this call
    changes: list[str] = field(default_factory=list)  # what differs from the previous one
    files: list[Path] = field(default_factory=list)


def _stored(bulk: BulkConnection, month: str, tz: str, revision: int) -> pl.DataFrame:
    as_time = pl.Datetime("ms", "UTC")
    frame = bulk.frame(
        f"SELECT s.name AS station, e.* FROM {energy_statements.name} e "
        f"JOIN {stations_table.name} s ON s.id = e.station_id "
        "WHERE e.month = :month AND e.tz = :tz AND e.revision = :revision",
        {"month": month, "tz": tz, "revision": revision},
    )
    if frame.is_empty():
        return pl.DataFrame()
    return frame.with_columns(
        pl.col("station", "broadcaster").cast(pl.String),
        *(pl.col(c).cast(pl.Int64).cast(as_time) for c in TIME_COLUMNS),
        *(pl.col(c).cast(pl.Float64) for c in (*COMPARED, "completeness", "share")),
        *(pl.col(c).cast(pl.Int32) for c in COUNTED),
    ).select(COLUMNS)


def _changes(old: pl.DataFrame, new: pl.DataFrame) -> list[str]:
    """One line per station and broadcaster whose figures differ between revisions."""
    if old.is_empty():
        return [f"first issue: {new.height} row(s)"]
    key = ["station", "broadcaster"]
    joined = old.join(new, on=key, how="full", suffix="_new", coalesce=True)
    lines = []
    for row in joined.sort(key).iter_rows(named=True):  # one per station-meter, not reading
        what = []
        for c in (*COMPARED, *COUNTED):
            a, b = row[c], row[f"{c}_new"]
            if a is None and b is None:
                continue
            if a is None or b is None or round(a - b, 3) != 0:
                what.append(f"{c} {a} -> {b}")
        if what:
            lines.append(f"{row['station']} {row['broadcaster']}: " + ", ".join(what))
    return lines


def _write_files(statement: pl.DataFrame, directory: Path, month: str, revision: int) -> list[Path]:
    """CSV (UTC ISO-8601 times) and Parquet, each written under a hidden name then renamed."""
    from powerwatch.core.parquet_files import write_parquet_atomically

    directory.mkdir(parents=True, exist_ok=True)
    stem = f"statement-{month}-r{revision}"
    csv = directory / f"{stem}.csv"
    with atomic_path(csv) as tmp:
        statement.write_csv(tmp, datetime_format=CSV_TIME_FORMAT, null_value="")
    fault_point("statement.csv_written")
    parquet = write_parquet_atomically(statement, directory / f"{stem}.parquet")
    return [csv, parquet]


def issue_statement(bulk: BulkConnection, month: str, tz: str, directory: Path) -> Issued:
    """Compute the month's statement; record it as a new revision when it differs from the
    latest one (or there is none), and make sure the latest revision's files exist."""
    statement = compute_statement(bulk, month, tz)
    with bulk.transaction(lock_tables=(energy_statements.name,)):
        latest = bulk.scalar(
            f"SELECT max(revision) FROM {energy_statements.name} WHERE month = :month AND tz = :tz",
            {"month": month, "tz": tz},
        )
        revision = int(latest or 0)
        previous = _stored(bulk, month, tz, revision) if revision else pl.DataFrame()
        changes = _changes(previous, statement)
        new = bool(changes)
        if new:
            revision += 1
            ids = _frame(
                bulk,
                f"SELECT id AS station_id, name AS station FROM {stations_table.name}",
                {"station_id": pl.Int32(), "station": pl.String()},
            )
            rows = statement.join(ids, on="station").select(
                pl.lit(month).alias("month"),
                pl.lit(tz).alias("tz"),
                pl.lit(revision, pl.Int32).alias("revision"),
                "station_id",
                "broadcaster",
                *(pl.col(c).dt.epoch("ms").alias(c) for c in TIME_COLUMNS),
                *(c for c in COLUMNS if c not in (*TIME_COLUMNS, "station", "broadcaster")),
            )
            if not rows.is_empty():
                bulk.ingest(energy_statements.name, rows.to_arrow())
    fault_point("statement.recorded")
    stem = directory / f"statement-{month}-r{revision}"
    files = [stem.with_suffix(".csv"), stem.with_suffix(".parquet")]
    if new or not all(f.exists() for f in files):
        files = _write_files(statement, directory, month, revision)
    return Issued(month, tz, revision, statement, new, changes if new else [], files)


def read_statement_csv(path: Path | IO[bytes]) -> pl.DataFrame:
    """A statement CSV back into the frame `compute_statement` returns."""
    as_time = pl.Datetime("ms", "UTC")
    frame = pl.read_csv(path, infer_schema=False)
    return frame.select(
        pl.col("station", "broadcaster"),
        *(
            pl.col(c)
            .str.to_datetime(CSV_TIME_FORMAT, time_unit="ms", time_zone="UTC")
            .cast(as_time)
            for c in TIME_COLUMNS
        ),
        *(
            pl.col(c).cast(pl.Float64)
            for c in ("opening_kwh", "closing_kwh", "consumption_kwh", "estimated_kwh")
        ),
        *(pl.col(c).cast(pl.Int32) for c in COUNTED),
        pl.col("completeness", "share").cast(pl.Float64),
    ).select(COLUMNS)


# --- the flow's summary -----------------------------------------------------------------


def daily_by_broadcaster(bulk: BulkConnection, month: str, tz: str) -> pl.DataFrame:
    """kWh per local day and broadcaster, all stations together (measured + spread parts):
    `day` (1..31) and one column per broadcaster. From the hourly rollups, summed in SQL."""
    start, end = month_period(month, tz)
    # Lower-case aliases (PostgreSQL folds unquoted names), renamed afterwards.
    sums = ", ".join(f"sum({m}_kwh) AS {m}" for m in MUX_COLUMNS)
    schema: dict[str, pl.DataType] = {"hour_ts": pl.Int64()} | {
        m: pl.Float64() for m in MUX_COLUMNS
    }
    hours = _frame(
        bulk,
        f"SELECT start_ts AS hour_ts, {sums} FROM {rollup_hourly.name} "
        f"WHERE start_ts >= {start} AND start_ts < {end} GROUP BY start_ts",
        schema,
    ).rename(dict(zip(MUX_COLUMNS, BROADCASTERS, strict=True)))
    gaps = _frame(
        bulk,
        f"SELECT station_id, meter, prev_ts, ts, kwh FROM {energy_events.name} "
        f"WHERE spread = 1 AND prev_ts < {end} AND ts > {start}",
        {
            "station_id": pl.Int32(),
            "meter": pl.Int32(),
            "prev_ts": pl.Int64(),
            "ts": pl.Int64(),
            "kwh": pl.Float64(),
        },
    )
    parts = energy.spread_hours_or_days(gaps, HOUR_MS).filter(
        (pl.col("start_ts") >= start) & (pl.col("start_ts") < end)
    )
    spread = (
        parts.group_by("start_ts")
        .agg(
            pl.col("part").filter(pl.col("meter") == n).sum().alias(b)
            for n, b in enumerate(BROADCASTERS, start=1)
        )
        .rename({"start_ts": "hour_ts"})
    )
    day = ((pl.col("hour_ts") - start) // DAY_MS + 1).cast(pl.Int32)
    days = pl.DataFrame(
        {"day": list(range(1, (end - start) // DAY_MS + 1))}, schema={"day": pl.Int32()}
    )
    summed = (
        pl.concat([hours, spread], how="vertical_relaxed")
        .group_by(day.alias("day"))
        .agg(pl.col(b).sum() for b in BROADCASTERS)
    )
    # A local day is 24 h from the month's start: the zone's offset is whole hours.
    return (
        days.join(summed, on="day", how="left")
        .with_columns(pl.col(BROADCASTERS).fill_null(0.0))
        .sort("day")
    )


def summary_markdown(issued: Issued, daily: pl.DataFrame) -> str:
    """The flow's summary: totals per broadcaster, what changed, a mermaid chart of daily
    kWh per broadcaster (rendered by the Prefect UI)."""
    frame = issued.statement
    totals = frame.group_by("broadcaster", maintain_order=True).agg(
        pl.col("consumption_kwh").sum(), pl.col("estimated_kwh").sum(), pl.col("flagged").sum()
    )
    lines = [
        f"# Energy statement {issued.month} ({issued.tz}), revision {issued.revision}",
        "",
        f"{frame['station'].n_unique()} station(s); files: "
        + ", ".join(f"`{f.name}`" for f in issued.files),
        "",
        "| broadcaster | kWh | of which estimated | flagged deltas |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['broadcaster']} | {r['consumption_kwh']:,.1f} | {r['estimated_kwh']:,.1f} "
            f"| {r['flagged']} |"
            for r in totals.iter_rows(named=True)
        ),
        "",
    ]
    if issued.new and issued.revision > 1:
        lines += [
            "## Changed since the previous revision",
            "",
            *(f"- {c}" for c in issued.changes),
            "",
        ]
    top = float(daily.select(pl.max_horizontal(pl.col(BROADCASTERS).max())).item() or 0.0)
    lines += [
        "## Daily kWh per broadcaster",
        "",
        "```mermaid",
        "xychart-beta",
        f'    title "Daily kWh per broadcaster, {issued.month}"',
        f"    x-axis [{', '.join(str(d) for d in daily['day'])}]",
        f'    y-axis "kWh" 0 --> {max(1.0, top * 1.1):.0f}',
        *(f"    line [{', '.join(f'{v:.1f}' for v in daily[b])}]" for b in BROADCASTERS),
        "```",
        "",
        "Lines, in order: " + ", ".join(BROADCASTERS) + ".",
    ]
    return "\n".join(lines)
