"""Storing validated readings: idempotent, set-based, one transaction per batch.

Contract (must hold on SQLite and PostgreSQL alike):
- each (station, timestamp) is stored once; the first stored values win;
- a reading equal to the stored one (NULL equals NULL) is a *duplicate*;
  one that differs is a *conflict*, recorded with both values in
  `reading_conflicts`;
- the counts satisfy rows = inserted + duplicates + conflicts + unknown_station (as the
  ledger keeps them; reports call both kinds duplicates: `StoreResult.repeated`);
- everything of a batch (ledger row, readings, conflicts) commits together or
  not at all, so a crash at any point leaves the database as before the batch.

Every path (chunk load, capture's loads, legacy migration) calls this through the one
ingest path, `powerwatch.load.ingest`: "loaded already?" asked of the ledger under the write lock,
then `begin_batch`, `store_prepared` per slice, `finish_batch`.

How it stays fast: inside the write lock we read each station's newest stored
timestamp (one index seek per station). Live data is almost always newer than
that, and such rows cannot collide with anything: they are appended straight
from Arrow, in key order. Only rows at or before a station's newest stored
timestamp ("candidates") are compared with stored rows: runs of consecutive
candidates (a re-sent chunk, overlapping logs) are read back as ranges and
compared in polars; scattered ones are looked up key by key inside the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import polars as pl
from sqlalchemy import literal_column

from db.bulk import BulkConnection
from db.failures import classify
from db.rollup_queue import mark_dirty
from db.tables import (
    READING_VALUE_COLUMNS,
    data_sources,
    load_batches,
    power_readings,
    reading_conflicts,
    stations,
)
from schemas.channels import CHANNELS, REASON

KEY = ("station_id", "ts")
UNKNOWN_STATION = "unknown station"
_TO_COLUMN = {c.key: c.column for c in CHANNELS}
_TO_KEY = {c.column: c.key for c in CHANNELS}
# One Int64 per key, station in the high bits: ms timestamps stay below 2**42 until 2109.
KEY_STATION_FACTOR = 2**42
# Keys a batch remembers of what its earlier slices stored (`BatchKeys`): 8 bytes each, so
# at most 32 MB; a bigger batch falls back to asking the database, as without them.
BATCH_KEYS_MAX = 4_000_000


@dataclass
class StoreResult:
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    unknown: pl.DataFrame = field(default_factory=pl.DataFrame)  # rows + REASON

    @property
    def repeated(self) -> int:
        """Readings not stored because their key was: what every report calls duplicates
        (the protocol's rule, first one wins; `conflicts` of them differed)."""
        return self.duplicates + self.conflicts

    def __iadd__(self, other: StoreResult) -> StoreResult:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.unknown = pl.concat([self.unknown, other.unknown], how="diagonal_relaxed")
        return self


@dataclass
class BatchKeys:
    """What the earlier slices of one batch stored, so a chunk in any row order loads like
    one in time order (issue 14; docs/benchmarks.md, "Load by row order").

    Without it, a slice's rows at or before a station's newest *stored* timestamp are
    candidates that must be compared with stored rows; in a shuffled chunk the first
    slice already stores rows spread over the whole time range, so nearly every row of
    every later slice became a candidate, looked up key by key. With it, only rows at or
    before a station's newest timestamp stored *before the batch* are candidates, plus
    rows whose key an earlier slice of the batch stored (an exact in-memory check): under
    the batch's write lock nothing else can have stored them. Bounded: beyond
    `BATCH_KEYS_MAX` keys the batch stops remembering and asks the database as before.
    """

    newest_before: pl.DataFrame | None = None  # station_id, newest: before the batch began
    stored: list[pl.Series] = field(default_factory=list)  # `_key`s this batch inserted
    count: int = 0
    reach: dict[int, int] = field(default_factory=dict)  # station_id -> newest ts it stored

    @property
    def usable(self) -> bool:
        return self.count <= BATCH_KEYS_MAX

    def remember(self, inserted: pl.DataFrame) -> None:
        """Keys and per-station newest ts of rows just inserted (`_key`, station_id, ts)."""
        self.stored.append(inserted["_key"])
        self.count += inserted.height
        newest = inserted.group_by("station_id").agg(pl.col("ts").max())
        for station_id, ts in newest.iter_rows():
            self.reach[station_id] = max(ts, self.reach.get(station_id, ts))
        if not self.usable:
            self.stored.clear()  # memory back; the database answers from now on

    def stored_before(self, rows: pl.DataFrame) -> pl.Series:
        """Whether each row's key (`_key`, station_id, ts) was stored by an earlier slice of
        this batch. Only rows at or before the newest ts the batch stored for their station
        can be, so a chunk in time order checks (almost) none."""
        found = pl.Series(values=[False] * rows.height, dtype=pl.Boolean)
        if not self.stored:
            return found
        reach = rows["station_id"].replace_strict(
            list(self.reach), list(self.reach.values()), default=None, return_dtype=pl.Int64
        )
        maybe = (rows["ts"] <= reach).fill_null(False).arg_true()
        if maybe.len() == 0:
            return found
        if len(self.stored) > 1:
            self.stored = [pl.concat(self.stored)]
        hits = rows["_key"].gather(maybe).is_in(self.stored[0].implode())
        return found.scatter(maybe.filter(hits), True)


def begin_batch(
    bulk: BulkConnection, *, kind: str, reference: str, input_name: str, content_hash: str
) -> int:
    """Create the provenance and ledger rows of a batch; call inside its transaction."""
    source_id = bulk.scalar(
        f"INSERT INTO {data_sources.name} (kind, reference, created_at) "
        "VALUES (:kind, :reference, CURRENT_TIMESTAMP) RETURNING id",
        {"kind": kind, "reference": reference},
    )
    return int(
        bulk.scalar(
            f"INSERT INTO {load_batches.name} (source_id, input_name, content_hash, status, "
            "started_at) VALUES (:source, :name, :hash, 'started', CURRENT_TIMESTAMP) "
            "RETURNING id",
            {"source": source_id, "name": input_name, "hash": content_hash},
        )
    )


def finish_batch(
    bulk: BulkConnection,
    batch_id: int,
    *,
    status: str,
    rows_in: int,
    result: StoreResult,
    rejected_by_reason: dict[str, int],
    error: str | None = None,
) -> None:
    rejected = sum(rejected_by_reason.values())
    bulk.execute(
        f"UPDATE {load_batches.name} SET status = :status, rows_in = :rows_in, "
        "inserted = :inserted, duplicates = :duplicates, conflicts = :conflicts, "
        "rejected = :rejected, rejected_by_reason = :by_reason, error = :error, "
        "finished_at = CURRENT_TIMESTAMP WHERE id = :id",
        {
            "status": status,
            "rows_in": rows_in,
            "inserted": result.inserted,
            "duplicates": result.duplicates,
            "conflicts": result.conflicts,
            "rejected": rejected,
            "by_reason": json.dumps(rejected_by_reason, sort_keys=True),
            "error": error,
            "id": batch_id,
        },
    )


def find_committed_batch(bulk: BulkConnection, input_name: str, content_hash: str) -> int | None:
    found = bulk.scalar(
        f"SELECT id FROM {load_batches.name} WHERE input_name = :name "
        "AND content_hash = :hash AND status = 'committed' ORDER BY id DESC LIMIT 1",
        {"name": input_name, "hash": content_hash},
    )
    return None if found is None else int(found)


def station_ids(bulk: BulkConnection) -> pl.DataFrame:
    frame = bulk.frame(f"SELECT id AS station_id, name AS station FROM {stations.name}")
    return frame.cast({"station_id": pl.Int32, "station": pl.String})


def to_rows(readings: pl.DataFrame, ids: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Contract-shaped readings -> (database-shaped rows, readings of unknown stations)."""
    joined = readings.join(ids, on="station", how="left")
    unknown = joined.filter(pl.col("station_id").is_null()).drop("station_id")
    rows = joined.filter(pl.col("station_id").is_not_null()).select(
        pl.col("station_id"),
        pl.col("timestamp").dt.epoch("ms").alias("ts"),
        *(pl.col(c.key).alias(c.column) for c in CHANNELS),
    )
    return rows, unknown.with_columns(pl.lit(UNKNOWN_STATION).alias(REASON))


def _same_values(left_suffix: str = "", right_suffix: str = "_stored") -> pl.Expr:
    return pl.all_horizontal(
        pl.col(f"{c}{left_suffix}").eq_missing(pl.col(f"{c}{right_suffix}"))
        for c in READING_VALUE_COLUMNS
    )


def _values_json(suffix: str) -> pl.Expr:
    return pl.struct(
        [pl.col(f"{c}{suffix}").alias(_TO_KEY[c]) for c in READING_VALUE_COLUMNS]
    ).struct.json_encode()


@dataclass
class Prepared:
    """A slice of validated readings in the database's shape, checked against itself: what
    `store_prepared` stores. Pure (no database), so a loader prepares the next slice in
    its read-ahead thread while the database stores this one (docs/benchmarks.md, "Load
    by row order")."""

    first: pl.DataFrame  # each key's first row in the slice, sorted by `_key`
    duplicates: int  # later rows of a key, equal to its first
    conflicts: pl.DataFrame  # later rows of a key that differ from its first (+ `_stored`)
    unknown: pl.DataFrame  # readings of stations not in `ids` (+ REASON)


def prepare(readings: pl.DataFrame, ids: pl.DataFrame) -> Prepared:
    """Contract-shaped, validated readings -> the slice `store_prepared` stores. `ids`:
    `station_ids` read under the batch's write lock."""
    rows, unknown = to_rows(readings, ids)
    # Within the slice: first occurrence wins, later ones are duplicates or conflicts.
    # One Int64 per key (station in the high bits) makes this a single-column hash.
    rows = rows.with_row_index("_order").with_columns(
        (pl.col("station_id").cast(pl.Int64) * KEY_STATION_FACTOR + pl.col("ts")).alias("_key")
    )
    is_first = rows.select(pl.col("_key").is_first_distinct()).to_series()
    first = rows.filter(is_first)
    later = rows.filter(~is_first).drop("_key")
    duplicates, conflicts = 0, pl.DataFrame()
    if not later.is_empty():
        pairs = later.join(first.drop("_key"), on=list(KEY), suffix="_stored")
        same = pairs.select(_same_values()).to_series()
        duplicates, conflicts = int(same.sum()), pairs.filter(~same)
    # Sorted now: the rows to insert stay in key order (sequential B-tree inserts).
    return Prepared(first.sort("_key"), duplicates, conflicts, unknown)


def store_readings(
    bulk: BulkConnection, readings: pl.DataFrame, batch_id: int, keys: BatchKeys | None = None
) -> StoreResult:
    """Store contract-shaped, already-validated readings under `batch_id`.

    Call inside `bulk.transaction(...)` after `begin_batch`; may be called
    several times per batch (slices of one input): rows an earlier slice of the
    same batch stored count as duplicates or conflicts like any stored row.
    Pass the same `BatchKeys` to every slice of a batch to load any row order at the
    speed of time order (the result is the same with or without it).
    """
    return store_prepared(bulk, prepare(readings, station_ids(bulk)), batch_id, keys)


def store_prepared(
    bulk: BulkConnection, prepared: Prepared, batch_id: int, keys: BatchKeys | None = None
) -> StoreResult:
    """`store_readings` for a slice already `prepare`d (same contract)."""
    result = StoreResult(unknown=prepared.unknown, duplicates=prepared.duplicates)
    first = prepared.first
    if first.is_empty():
        return result
    conflicts: list[pl.DataFrame] = []
    if prepared.conflicts.height:
        conflicts.append(prepared.conflicts)

    # 2. Against the stored rows: only rows at/before a station's newest stored ts can collide
    # (with `keys`: newest before the batch, or a key an earlier slice of it stored).
    remembering = keys is not None and keys.usable
    if remembering and keys is not None:
        if keys.newest_before is None:
            keys.newest_before = _newest_ts(bulk, None)
        newest = keys.newest_before
    else:
        newest = _newest_ts(bulk, first["station_id"].unique().to_list())
    first = first.join(newest, on="station_id", how="left")
    older = pl.col("newest").is_not_null() & (pl.col("ts") <= pl.col("newest"))
    if remembering and keys is not None:
        older = older | keys.stored_before(first)
    first = first.with_columns(older.alias("_older"))
    fresh = first.filter(~pl.col("_older"))
    candidates = first.filter(pl.col("_older"))
    to_insert = fresh  # in key order, as `first` is
    if not candidates.is_empty():
        verdict = _classify(bulk, candidates)
        result.duplicates += verdict.duplicates
        conflicts.append(verdict.conflicts)
        new = candidates.join(verdict.new, on="_order", how="semi")
        if not new.is_empty():
            to_insert = pl.concat([fresh, new]).sort("_key")

    # 3. Append the new rows in key order (sequential B-tree inserts are the fast ones).
    if not to_insert.is_empty():
        out = to_insert.select(
            *KEY, *READING_VALUE_COLUMNS, pl.lit(batch_id, pl.Int32).alias("batch_id")
        )
        bulk.ingest(power_readings.name, out.to_arrow())
        result.inserted += out.height
        if remembering and keys is not None:
            keys.remember(to_insert)
        # Rollups: queue the station-hours just stored (one small append, same transaction);
        # `powerwatch.rollups.refresh.refresh_rollups` recomputes them later. Covers every
        # load path.
        mark_dirty(bulk, out, batch_id)

    found = pl.concat(conflicts, how="diagonal_relaxed") if conflicts else pl.DataFrame()
    if found.height:
        result.conflicts += found.height
        record = found.select(
            *KEY,
            pl.lit(batch_id, pl.Int32).alias("batch_id"),
            _values_json("_stored").alias("stored_values"),
            _values_json("").alias("incoming_values"),
        )
        bulk.ingest(reading_conflicts.name, record.to_arrow())
    return result


def _newest_ts(bulk: BulkConnection, ids: list[int] | None) -> pl.DataFrame:
    """Each station's newest stored ts (`ids`: only those stations; None: all)."""
    # One index seek per station: a GROUP BY over the table would scan all of it.
    frame = bulk.frame(
        f"SELECT s.id AS station_id, (SELECT max(p.ts) FROM {power_readings.name} p "
        f"WHERE p.station_id = s.id) AS newest FROM {stations.name} s"
    )
    frame = frame.cast({"station_id": pl.Int32, "newest": pl.Int64})
    return frame if ids is None else frame.filter(pl.col("station_id").is_in(ids))


@dataclass
class _Verdict:
    new: pl.DataFrame  # `_order` of candidates not stored yet
    duplicates: int  # equal to a stored reading
    conflicts: pl.DataFrame  # candidates + `*_stored` values, where the values differ

    def __iadd__(self, other: _Verdict) -> _Verdict:
        self.new = pl.concat([self.new, other.new])
        self.duplicates += other.duplicates
        self.conflicts = pl.concat([self.conflicts, other.conflicts], how="diagonal_relaxed")
        return self


_STORED = {c: f"{c}_stored" for c in READING_VALUE_COLUMNS}
_NO_ORDERS = pl.DataFrame(schema={"_order": pl.UInt32})
# A run: a station's candidates with no gap over RUN_GAP_MS between neighbours. Runs of at
# least RUN_MIN_ROWS are read back whole: at a 1 Hz station, reading a run returns at most
# twice as many rows as it checks, and a returned row costs about half a staged-and-
# looked-up one (docs/benchmarks.md, "Tuning decisions"). Shorter runs (scattered old
# readings over a long history) are looked up key by key.
RUN_GAP_MS = 2_000
RUN_MIN_ROWS = 64


def _classify(bulk: BulkConnection, candidates: pl.DataFrame) -> _Verdict:
    """Sort candidates into new / duplicate / conflict against stored rows.

    Two ways, picked per run of candidates (reading runs back is the faster where
    candidates are consecutive: docs/benchmarks.md, "Tuning decisions"). Both ways agree
    exactly (tests/test_load.py forces each in turn).
    """
    station, ts = pl.col("station_id"), pl.col("ts")
    starts = (station != station.shift(1)) | ((ts - ts.shift(1)) > RUN_GAP_MS)
    in_runs = candidates.sort("_key").with_columns(starts.fill_null(True).cum_sum().alias("_run"))
    in_runs = in_runs.with_columns((pl.len().over("_run") >= RUN_MIN_ROWS).alias("_long"))
    long_runs = in_runs.filter("_long").drop("_long")
    verdict = _Verdict(_NO_ORDERS, 0, pl.DataFrame())
    if long_runs.height:
        ranges = long_runs.group_by("_run").agg(
            station.first(), ts.min().alias("lo"), ts.max().alias("hi")
        )
        verdict += _classify_in_memory(
            long_runs.drop("_run"), _read_ranges(bulk, ranges.drop("_run"))
        )
    short = in_runs.filter(~pl.col("_long")).drop("_run", "_long")
    if short.height:
        verdict += _classify_by_lookup(bulk, short)
    return verdict


def _read_ranges(bulk: BulkConnection, ranges: pl.DataFrame) -> pl.DataFrame:
    """The stored rows in the ranges, as `_key` + `*_stored` values (one column fewer to
    return than station and ts, and a one-column join in polars)."""
    bulk.ingest("pw_ranges", ranges.to_arrow(), temporary=True)
    try:
        stored = bulk.frame(
            f"SELECT p.station_id * {KEY_STATION_FACTOR} + p.ts AS _key, "
            + ", ".join(f"p.{c} AS {s}" for c, s in _STORED.items())
            + f" FROM pw_ranges r JOIN {power_readings.name} p "
            "ON p.station_id = r.station_id AND p.ts BETWEEN r.lo AND r.hi"
        )
    finally:
        bulk.execute("DROP TABLE pw_ranges")
    schema: dict[str, pl.DataType] = {"_key": pl.Int64()} | {
        name: pl.Float64() for name in _STORED.values()
    }
    return pl.DataFrame(schema=schema) if stored.is_empty() else stored.cast(schema)  # type: ignore[arg-type]


def _classify_in_memory(candidates: pl.DataFrame, stored: pl.DataFrame) -> _Verdict:
    matched = candidates.join(
        stored.with_columns(pl.lit(True).alias("_found")), on="_key", how="left"
    )
    found = matched["_found"].fill_null(False)
    same = matched.select(_same_values()).to_series() & found
    return _Verdict(
        new=matched.filter(~found).select(pl.col("_order").cast(pl.UInt32)),
        duplicates=int(same.sum()),
        conflicts=matched.filter(found & ~same).drop("_found"),
    )


def _classify_by_lookup(bulk: BulkConnection, candidates: pl.DataFrame) -> _Verdict:
    """Sort candidates into new / duplicate / conflict: one pass of key lookups inside the
    database, and only the exceptions travel back (a duplicate is never returned: it is
    counted as what is left over).

    Returning only exceptions, instead of materialising a verdict per candidate and
    querying it, made this pass faster (docs/benchmarks.md, "Tuning decisions").
    Candidates arrive sorted by `_key` (`_classify`):
    in key order the lookups walk the stored B-tree instead of hopping between stations'
    pages as rows arrived interleaved.
    """
    same = " AND ".join(
        bulk.compiled(literal_column(f"s.{c}").is_not_distinct_from(literal_column(f"p.{c}")))
        for c in READING_VALUE_COLUMNS
    )
    staged = candidates.select("_order", *KEY, *READING_VALUE_COLUMNS)
    bulk.ingest("pw_staging", staged.to_arrow(), temporary=True)
    try:
        exceptions = bulk.frame(
            "SELECT s._order, p.station_id IS NULL AS is_new, "
            + ", ".join(f"p.{c} AS {s}" for c, s in _STORED.items())
            + f" FROM pw_staging s LEFT JOIN {power_readings.name} p "
            f"ON p.station_id = s.station_id AND p.ts = s.ts "
            f"WHERE p.station_id IS NULL OR NOT ({same})"
        )
    finally:
        bulk.execute("DROP TABLE pw_staging")
    if exceptions.is_empty():
        return _Verdict(new=_NO_ORDERS, duplicates=candidates.height, conflicts=pl.DataFrame())
    exceptions = exceptions.cast({"_order": pl.UInt32, "is_new": pl.Boolean})
    new = exceptions.filter(pl.col("is_new")).select("_order")
    different = exceptions.filter(~pl.col("is_new")).drop("is_new")
    return _Verdict(
        new=new,
        duplicates=candidates.height - exceptions.height,
        conflicts=candidates.join(different, on="_order") if different.height else pl.DataFrame(),
    )


def require_schema(url: str, doing: str) -> None:
    """Before an ingest job: the schema must be current, and a database that cannot be
    read (damaged, its disk failing) is named in one line by `db.failures.classify`."""
    from sqlalchemy.exc import DBAPIError

    from db.engine import make_engine
    from db.migrate import require_current

    engine = make_engine(url, create=False)
    try:
        require_current(engine)
    except DBAPIError as exc:
        raise classify(exc, doing) from exc
    finally:
        engine.dispose()
