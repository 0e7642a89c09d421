"""The load path (powerwatch.load.chunks) on both backends, without Prefect."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from db import queries
from db.engine import bulk_connection
from powerwatch.core.settings import get_settings
from powerwatch.load import landing
from powerwatch.load import store as db_load
from powerwatch.load.chunks import ChunkReport, load_chunk
from tests.conftest import Database, make_readings, write_chunk

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]


def _load_all() -> list[ChunkReport]:
    settings = get_settings()
    with bulk_connection() as bulk:
        return [load_chunk(bulk, c, settings) for c in landing.list_chunks(settings.landing_dir)]


def _stored() -> pl.DataFrame:
    with bulk_connection() as bulk:
        return queries.readings(bulk)


def _landing(db: Database) -> Path:
    return db.data_dir / "landing"


def test_valid_chunk_is_stored_exactly_and_moved_out_of_landing(synced: Database) -> None:
    frame = make_readings(STATIONS, 20)
    write_chunk(frame, _landing(synced), "a.parquet")

    [report] = _load_all()

    assert (report.status, report.rows_in, report.inserted) == ("loaded", 60, 60)
    assert (report.duplicates, report.conflicts, report.rejected) == (0, 0, 0)
    expected = frame.sort("station", "timestamp")
    assert _stored().equals(expected)
    assert not (_landing(synced) / "a.parquet").exists()
    assert (synced.data_dir / "loaded" / "a.parquet").exists()


def test_reloading_and_overlapping_chunks_store_each_reading_once(synced: Database) -> None:
    frame = make_readings(STATIONS, 10)
    write_chunk(frame, _landing(synced), "a.parquet")
    _load_all()
    # The same rows again under another name, plus 5 new seconds overlapping.
    write_chunk(frame, _landing(synced), "b.parquet")
    write_chunk(make_readings(STATIONS, 15), _landing(synced), "c.parquet")

    b, c = _load_all()

    assert (b.inserted, b.duplicates, b.conflicts) == (0, 30, 0)
    assert (c.inserted, c.duplicates, c.conflicts) == (15, 30, 0)
    assert _stored().height == 45


def test_differing_values_keep_the_first_and_record_a_conflict(synced: Database) -> None:
    first = make_readings(["KhonKaen"], 3)
    write_chunk(first, _landing(synced), "a.parquet")
    _load_all()
    second = first.with_columns(pl.col("activePower1") + 1)
    write_chunk(second, _landing(synced), "b.parquet")

    [report] = _load_all()

    # A conflict is a duplicate whose values differ (one counting rule: powerwatch/load/ingest.py).
    assert (report.inserted, report.duplicates, report.conflicts) == (0, 3, 3)
    assert _stored()["activePower1"].to_list() == first["activePower1"].to_list()
    with bulk_connection() as bulk:
        found = queries.conflicts(bulk)
    assert found.height == 3
    row = found.row(0, named=True)
    assert json.loads(row["stored_values"])["activePower1"] == first["activePower1"][0]
    assert json.loads(row["incoming_values"])["activePower1"] == first["activePower1"][0] + 1


def test_duplicates_inside_one_chunk_count_once(synced: Database) -> None:
    frame = make_readings(["KhonKaen"], 4)
    changed = frame.head(1).with_columns(pl.col("muxPower1") + 5)
    write_chunk(pl.concat([frame, frame.head(2), changed]), _landing(synced), "a.parquet")

    [report] = _load_all()

    assert (report.rows_in, report.inserted, report.duplicates, report.conflicts) == (7, 4, 3, 1)
    assert _stored().equals(frame)


def test_null_channels_equal_null_channels(synced: Database) -> None:
    frame = make_readings(["KhonKaen"], 3).with_columns(pl.lit(None, pl.Float64).alias("muxPower2"))
    write_chunk(frame, _landing(synced), "a.parquet")
    write_chunk(frame, _landing(synced), "b.parquet")

    a, b = _load_all()

    assert (a.inserted, b.duplicates, b.conflicts) == (3, 3, 0)
    assert _stored()["muxPower2"].null_count() == 3


def test_invalid_rows_go_to_quarantine_with_reasons(synced: Database) -> None:
    good = make_readings(["KhonKaen"], 3)
    bad = pl.concat(
        [
            make_readings(["KhonKaen"], 1, value=-5000.0).with_columns(
                pl.col("timestamp").dt.offset_by("1h")
            ),
            make_readings(["Atlantis"], 1),
            make_readings(["ChiangMai"], 1).with_columns(pl.lit(float("nan")).alias("muxPower3")),
        ]
    )
    write_chunk(pl.concat([good, bad]), _landing(synced), "a.parquet")

    [report] = _load_all()

    assert report.inserted == 3
    assert report.rejected_by_reason == {
        "out of range: activePower1, activePower2, activePower3, activePower4, activePower5, "
        "activePower6": 1,
        "unknown station": 1,
        "out of range: muxPower3": 1,
    }
    quarantined = pl.read_parquet(synced.data_dir / "quarantine" / "a.parquet")
    assert quarantined.height == 3
    assert set(quarantined["reason"]) == set(report.rejected_by_reason)
    assert set(quarantined["station"]) == {"KhonKaen", "Atlantis", "ChiangMai"}


def test_unreadable_chunk_is_set_aside_and_does_not_stop_others(synced: Database) -> None:
    landing_dir = _landing(synced)
    landing_dir.mkdir(parents=True)
    (landing_dir / "0-broken.parquet").write_bytes(b"not parquet at all")
    write_chunk(
        make_readings(["KhonKaen"], 2).with_columns(pl.col("activePower1").cast(pl.String)),
        landing_dir,
        "1-wrong-types.parquet",
    )
    write_chunk(make_readings(["KhonKaen"], 2), landing_dir, "2-good.parquet")

    reports = {r.chunk: r for r in _load_all()}

    assert reports["0-broken.parquet"].status == "unreadable"
    assert "not a readable Parquet file" in (reports["0-broken.parquet"].error or "")
    assert reports["1-wrong-types.parquet"].status == "unreadable"
    assert "activePower1 is String" in (reports["1-wrong-types.parquet"].error or "")
    assert reports["2-good.parquet"].inserted == 2
    failed = synced.data_dir / "failed"
    assert (failed / "0-broken.parquet").exists()
    assert "not a readable" in (failed / "0-broken.parquet.reason.txt").read_text()
    assert _stored().height == 2


def test_hidden_and_temporary_files_are_not_chunks(synced: Database) -> None:
    frame = make_readings(["KhonKaen"], 2)
    landing_dir = _landing(synced)
    write_chunk(frame, landing_dir, "a.parquet")
    frame.write_parquet(landing_dir / ".b.parquet")
    frame.write_parquet(landing_dir / "c.parquet.tmp")

    assert [r.chunk for r in _load_all()] == ["a.parquet"]
    assert (landing_dir / ".b.parquet").exists() and (landing_dir / "c.parquet.tmp").exists()


def test_integer_channels_and_naive_timestamps_are_accepted(synced: Database) -> None:
    frame = make_readings(["KhonKaen"], 2)
    lenient = frame.with_columns(
        pl.col("activePower4").cast(pl.Int64), pl.col("timestamp").dt.replace_time_zone(None)
    )
    write_chunk(lenient, _landing(synced), "a.parquet")

    [report] = _load_all()

    assert report.inserted == 2
    assert _stored()["timestamp"].to_list() == frame["timestamp"].to_list()


def test_ledger_and_provenance_record_the_batch(synced: Database) -> None:
    write_chunk(make_readings(["KhonKaen"], 2), _landing(synced), "capture-x.parquet")
    _load_all()
    with bulk_connection() as bulk:
        rows = bulk.rows(
            "SELECT b.input_name, b.status, b.rows_in, b.inserted, d.kind, d.reference "
            "FROM load_batches b JOIN data_sources d ON d.id = b.source_id"
        )
        batch_ids = bulk.rows("SELECT DISTINCT batch_id FROM power_readings")
    assert rows == [("capture-x.parquet", "committed", 2, 2, "websocket", "capture-x.parquet")]
    assert len(batch_ids) == 1


def test_chunk_committed_but_not_moved_is_only_moved_on_rerun(synced: Database) -> None:
    chunk = write_chunk(make_readings(["KhonKaen"], 2), _landing(synced), "a.parquet")
    _load_all()
    # Simulate a crash between commit and move: put the same file back.
    (synced.data_dir / "loaded" / "a.parquet").replace(chunk)

    [report] = _load_all()

    assert report.status == "already-loaded"
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM load_batches") == 1
    assert _stored().height == 2


@pytest.mark.parametrize("rows", [0])
def test_empty_chunk_loads_nothing(synced: Database, rows: int) -> None:
    write_chunk(make_readings(["KhonKaen"], 1).head(rows), _landing(synced), "a.parquet")
    [report] = _load_all()
    assert (report.status, report.rows_in, report.inserted) == ("loaded", 0, 0)


def test_older_readings_are_classified_against_the_stored_ones(synced: Database) -> None:
    stored = make_readings(STATIONS, 30).with_columns(
        pl.when(pl.col("station") == "Songkhla")
        .then(None)
        .otherwise(pl.col("muxPower1"))
        .alias("muxPower1")
    )
    write_chunk(stored, _landing(synced), "a.parquet")
    _load_all()
    # Older readings again: 40 equal (incl. NULLs), 5 changed, plus 10 s of gaps filled in.
    gaps = make_readings(["KhonKaen"], 10).with_columns(pl.col("timestamp").dt.offset_by("-1h"))
    again = pl.concat(
        [
            stored.head(40),
            stored.slice(40, 5).with_columns(pl.col("activePower6") + 1),
            gaps,
        ]
    )
    write_chunk(again, _landing(synced), "b.parquet")

    [report] = _load_all()

    assert (report.inserted, report.duplicates, report.conflicts) == (10, 45, 5)
    with bulk_connection() as bulk:
        assert queries.conflicts(bulk).height == 5
    assert _stored().height == 100


def test_a_chunk_is_streamed_in_slices_within_one_transaction(
    synced: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(landing, "SLICE_ROWS", 7)
    frame = make_readings(STATIONS, 10)
    changed = frame.head(3).with_columns(pl.col("activePower1") - 1)
    chunk = pl.concat([frame, frame.head(5), changed])  # repeats land in later slices
    write_chunk(chunk, _landing(synced), "a.parquet")

    [report] = _load_all()

    assert (report.rows_in, report.inserted, report.duplicates, report.conflicts) == (38, 30, 8, 3)
    assert _stored().equals(frame.sort("station", "timestamp"))


@pytest.mark.parametrize("run_min_rows", [1, 10**9], ids=["read-back", "lookup"])
def test_both_ways_of_classifying_older_readings_agree(
    synced: Database, monkeypatch: pytest.MonkeyPatch, run_min_rows: int
) -> None:
    """Older readings are compared either by reading stored runs back or by key lookups
    (powerwatch.load.store.RUN_MIN_ROWS picks); both must give the same verdicts and the same
    database."""
    monkeypatch.setattr(db_load, "RUN_MIN_ROWS", run_min_rows)
    full = make_readings(STATIONS, 200).with_columns(
        pl.when(pl.col("station") == "Songkhla")
        .then(None)
        .otherwise("muxPower1")
        .alias("muxPower1")
    )
    second = (pl.col("timestamp") - pl.col("timestamp").min()).dt.total_seconds()
    holes = second % 7 == 3  # stored with gaps, filled in by the second chunk
    write_chunk(full.filter(~holes), _landing(synced), "a.parquet")
    _load_all()
    changed = (second % 40 == 1) & (pl.col("station") == "ChiangMai")
    again = full.with_columns(
        pl.when(changed)
        .then(pl.col("activePower6") + 1)
        .otherwise("activePower6")
        .alias("activePower6")
    )
    write_chunk(again, _landing(synced), "b.parquet")

    [report] = _load_all()

    hole_rows, changed_rows = full.filter(holes).height, full.filter(changed).height
    assert (hole_rows, changed_rows) == (87, 5)
    assert (report.inserted, report.duplicates, report.conflicts) == (
        hole_rows,
        full.height - hole_rows,
        changed_rows,
    )
    assert _stored().equals(full.sort("station", "timestamp"))
    with bulk_connection() as bulk:
        found = queries.conflicts(bulk).sort("timestamp")
    first = full.filter(changed).sort("timestamp")
    stored_values = [json.loads(v)["activePower6"] for v in found["stored_values"]]
    incoming_values = [json.loads(v)["activePower6"] for v in found["incoming_values"]]
    assert stored_values == first["activePower6"].to_list()
    assert incoming_values == (first["activePower6"] + 1).to_list()


def test_a_chunk_another_loader_claimed_is_skipped_and_counts_nothing(synced: Database) -> None:
    chunk = write_chunk(make_readings(["KhonKaen"], 2), _landing(synced), "a.parquet")
    claimed = landing.claim(chunk)  # another loader (here: this process) took it
    assert claimed is not None and landing.list_chunks(_landing(synced)) == []
    assert list(_landing(synced).glob("*.parquet")) == []
    with bulk_connection() as bulk:
        report = load_chunk(bulk, chunk, get_settings())
    assert (report.status, report.rows_in, report.inserted) == ("taken", 0, 0)
    assert claimed.exists() and _stored().is_empty()


@pytest.mark.timeout(60)
def test_entries_that_are_no_regular_file_are_set_aside_unopened(synced: Database) -> None:
    import os

    landing_dir = _landing(synced)
    write_chunk(make_readings(["KhonKaen"], 2), landing_dir, "good.parquet")
    (landing_dir / "dir.parquet").mkdir()
    os.mkfifo(landing_dir / "fifo.parquet")
    (landing_dir / "zero.parquet").symlink_to("/dev/zero")

    reports = {r.chunk: r for r in _load_all()}

    assert reports["good.parquet"].inserted == 2
    failed = synced.data_dir / "failed"
    for name, kind in [("dir", "directory"), ("fifo", "FIFO"), ("zero", "symbolic link")]:
        assert reports[f"{name}.parquet"].status == "unreadable"
        assert kind in (reports[f"{name}.parquet"].error or "")
        assert kind in (failed / f"{name}.parquet.reason.txt").read_text()
    assert (failed / "zero.parquet").is_symlink() and (failed / "dir.parquet").is_dir()
    assert landing.list_chunks(landing_dir) == []


@pytest.mark.parametrize("keys_max", [10**9, 20], ids=["batch-keys", "capped"])
def test_a_chunk_in_random_order_counts_like_one_in_time_order(
    synced: Database, monkeypatch: pytest.MonkeyPatch, keys_max: int
) -> None:
    """A shuffled chunk streamed in slices (powerwatch.load.store.BatchKeys: only rows at or
    before a station's newest reading before the batch, or keys an earlier slice stored, are
    compared): repeats across slices and against stored rows are still duplicates and
    conflicts; past BATCH_KEYS_MAX the database is asked, with the same verdicts."""
    monkeypatch.setattr(landing, "SLICE_ROWS", 11)
    monkeypatch.setattr(db_load, "BATCH_KEYS_MAX", keys_max)
    full = make_readings(STATIONS, 40)
    write_chunk(full.head(30), _landing(synced), "a.parquet")  # stored before the batch
    _load_all()
    changed = full.slice(60, 4).with_columns(pl.col("activePower1") + 1)
    stored_changed = full.slice(10, 2).with_columns(pl.col("activePower2") + 1)
    shuffled = pl.concat([full, full.slice(50, 6)]).sample(fraction=1.0, shuffle=True, seed=3)
    chunk = pl.concat([shuffled, changed, stored_changed])  # the first occurrence wins
    write_chunk(chunk, _landing(synced), "b.parquet")

    [report] = _load_all()

    assert (report.rows_in, report.inserted) == (full.height + 12, full.height - 30)
    assert (report.duplicates, report.conflicts) == (30 + 6 + 4 + 2, 4 + 2)
    assert _stored().equals(full.sort("station", "timestamp"))


def test_a_chunk_out_of_time_order_is_read_in_time_buckets(tmp_path: Path) -> None:
    """powerwatch.load.chunks.in_time_order: a shuffled chunk comes back as buckets of about a
    slice, each later in time than the one before, every row once, repeats of a key in
    file order; a chunk in time order is streamed as it is."""
    from powerwatch.load.chunks import in_time_order

    frame = make_readings(STATIONS, 100)
    repeat = frame.slice(150, 1).with_columns(pl.col("activePower1") + 1)
    shuffled = pl.concat([frame.sample(fraction=1.0, shuffle=True, seed=5), repeat])
    write_chunk(shuffled, tmp_path, "shuffled.parquet")
    write_chunk(frame, tmp_path, "ordered.parquet")

    buckets = list(in_time_order(tmp_path / "shuffled.parquet", 50))

    assert len(buckets) == 7 and all(b.height <= 60 for b in buckets)
    for before, after in itertools.pairwise(buckets):
        last, first = before["timestamp"].max(), after["timestamp"].min()
        assert isinstance(last, datetime) and isinstance(first, datetime) and last < first
    together = pl.concat(buckets)
    assert together.sort("station", "timestamp", maintain_order=True).equals(
        shuffled.sort("station", "timestamp", maintain_order=True)
    )
    ordered = list(in_time_order(tmp_path / "ordered.parquet", 50))
    assert [b.height for b in ordered] == [50] * 6
    assert pl.concat(ordered).equals(frame)
