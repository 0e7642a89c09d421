"""Importing legacy log files (spec/legacy-logs.md) on SQLite and PostgreSQL, without Prefect.

Each test writes small files of its own, imports them with
`powerwatch.legacy.migration.import_file` and checks the report and the stored rows.
The Prefect flow, the CLI and `kill -9` are in `test_migrate_flow.py` and
`test_migration_crash.py`.
"""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from bench.bench_migrate import baseline_rows
from db.engine import bulk_connection, make_engine
from db.stations import sync_stations
from powerwatch.legacy.formats import Format, LegacyLogError
from powerwatch.legacy.migration import discover, failed_report, import_file
from powerwatch.legacy.report import QUOTED_LINES, FileReport, MigrationReport
from schemas.channels import CHANNELS
from schemas.registry import Station, load_registry
from tests.conftest import SAMPLES, STATIONS_YAML, Database

CSV_HEADER = (
    "timestamp,station,activePower1,activePower2,activePower3,activePower4,"
    "activePower5,activePower6,muxPower1,muxPower2,muxPower3,muxPower4"
)
T_VALUES = (
    "P1=1520.50 P2=1498.00 P3=N/A P4=0.00 P5=0.00 P6=0.00 | MUX (kWh): "
    "TV5=123456.78 MCOT=98765.40 PRD=55555.50 TPBS=44444.40"
)


def t_line(stamp: str, station: str = "KhonKaen", values: str = T_VALUES) -> str:
    return f"{stamp} [INFO] [{station}] Active Power (W): {values}"


def j_line(station: str, timestamp: str | int, readings: str = '"activePower1": 1') -> str:
    stamp = timestamp if isinstance(timestamp, int) else f'"{timestamp}"'
    return f'{{"station":"{station}","timestamp":{stamp},"readings":{{{readings}}}}}'


def write(
    folder: Path,
    name: str,
    lines: list[str],
    *,
    newline: str = "\n",
    last_newline: bool = True,
    gz: bool = False,
) -> Path:
    data = (newline.join(lines) + (newline if last_newline else "")).encode()
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def run(*paths: Path, tz: str = "Asia/Bangkok", force: bool = False) -> MigrationReport:
    """What the flow does, without Prefect: every file, a failing one reported, not raised."""
    report = MigrationReport()
    with bulk_connection() as bulk:
        for path in discover(paths):
            try:
                report.files.append(import_file(bulk, path, tz=tz, force=force))
            except LegacyLogError as exc:
                report.files.append(failed_report(path, str(exc)))
    for f in report.files:
        assert f.balanced(), f
    return report


def stored() -> pl.DataFrame:
    """Every stored reading with its station name, UTC time and provenance."""
    with bulk_connection() as bulk:
        return bulk.frame(
            "SELECT s.name AS station, p.ts, p.active_power1, p.active_power3, p.mux_power1, "
            "p.mux_power4, d.kind, d.reference FROM power_readings p "
            "JOIN stations s ON s.id = p.station_id JOIN load_batches b ON b.id = p.batch_id "
            "JOIN data_sources d ON d.id = b.source_id ORDER BY s.name, p.ts"
        ).with_columns(pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC"))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def counts(f: FileReport) -> tuple[int, int, int, int, int]:
    return (f.lines, f.non_data, f.inserted, f.duplicates, f.rejected)


# --------------------------------------------------------------------------- format T


def test_text_log_non_data_lines_na_and_bad_values(synced: Database, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "monitor.log",
        [
            "2024-03-01 07:00:00.001 [INFO] StationMonitor started (v2.3.1)",
            "2024-03-01 07:00:00.500 [INFO] [KhonKaen] WebSocket connected to ws://10.20.1.15:8765",
            t_line("2024-03-01 07:00:01.123"),
            "2024-03-01 07:05:12.000 [WARN] [KhonKaen] WebSocket closed (code 1006), reconnecting",
            "2024-03-01 07:05:12.001 [ERROR] [KhonKaen] Error: read ECONNRESET",
            "    at TCP.onStreamRead (node:internal/stream_base_commons:217:20)",
            "",
            t_line("2024-03-01 07:05:13.000", values="P1=1.00 P2=ERR"),
            t_line("2024-03-01 07:05:14.000", values="TV5=12.3.4"),
            t_line("2024-03-01 07:05:15.000", values="P1=7.25"),
        ],
    )
    [f] = run(path).files
    assert (f.format, f.status) == ("T", "imported")
    assert counts(f) == (10, 6, 2, 0, 2)
    assert f.rejected_by_reason == {"P2=ERR is not a number": 1, "TV5=12.3.4 is not a number": 1}
    assert [(q["line"], q["text"]) for q in f.first_rejected] == [
        (8, t_line("2024-03-01 07:05:13.000", values="P1=1.00 P2=ERR")),
        (9, t_line("2024-03-01 07:05:14.000", values="TV5=12.3.4")),
    ]
    rows = stored()
    assert rows["ts"].to_list() == [utc(2024, 3, 1, 0, 0, 1, 123000), utc(2024, 3, 1, 0, 5, 15)]
    assert rows.row(0, named=True) | {"ts": None} == {
        "station": "KhonKaen",
        "ts": None,
        "active_power1": 1520.5,
        "active_power3": None,  # N/A
        "mux_power1": 123456.78,
        "mux_power4": 44444.4,
        "kind": "log_migration",
        "reference": str(path.resolve()),
    }
    assert rows["active_power3"][1] is None and rows["mux_power1"][1] is None  # absent labels
    assert (f.first_timestamp, f.last_timestamp) == (
        "2024-03-01T00:00:01.123Z",
        "2024-03-01T00:05:15.000Z",
    )


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("Asia/Bangkok", utc(2024, 7, 15, 0, 0, 0, 250000)),
        ("Europe/Berlin", utc(2024, 7, 15, 5, 0, 0, 250000)),  # CEST, UTC+2
        ("America/New_York", utc(2024, 7, 15, 11, 0, 0, 250000)),  # EDT, UTC-4
    ],
)
def test_text_local_times_land_in_utc_for_the_given_zone(
    synced: Database, tmp_path: Path, tz: str, expected: datetime
) -> None:
    [f] = run(write(tmp_path, "m.log", [t_line("2024-07-15 07:00:00.250")]), tz=tz).files
    assert f.inserted == 1
    assert stored()["ts"].to_list() == [expected]


# --------------------------------------------------------------------------- format J


def test_json_timestamps_missing_keys_and_a_cut_last_line(synced: Database, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "monitor.jsonl",
        [
            j_line("KhonKaen", "2024-03-01T00:00:01.123Z", '"activePower1": 1520.5'),
            j_line("KhonKaen", "2024-03-01T07:00:02+07:00", '"muxPower4": 44444.4'),
            j_line("KhonKaen", 1709251203123, '"activePower3": null'),
            j_line("ChiangMai", "2024-03-01T00:00:04Z", '"activePower1": "ERR"'),
            '{"station":"ChiangMai","timestamp":"2024-03-01T00:00:0',
        ],
        last_newline=False,  # the crash cut the last line before its newline
    )
    [f] = run(path).files
    assert (f.format, counts(f)) == ("J", (5, 0, 3, 0, 2))
    assert f.rejected_by_reason == {'activePower1 is not a number: "ERR"': 1, "malformed JSON": 1}
    rows = stored()
    assert rows.select("ts", "active_power1", "active_power3", "mux_power4").rows() == [
        (utc(2024, 3, 1, 0, 0, 1, 123000), 1520.5, None, None),
        (utc(2024, 3, 1, 0, 0, 2), None, None, 44444.4),
        (utc(2024, 3, 1, 0, 0, 3, 123000), None, None, None),
    ]


def test_json_ignores_the_time_zone_parameter(synced: Database, tmp_path: Path) -> None:
    """Only format T's stamps are local; J and C carry their offset."""
    path = write(tmp_path, "m.jsonl", [j_line("KhonKaen", "2024-03-01T00:00:01Z")])
    run(path, tz="America/New_York")
    assert stored()["ts"].to_list() == [utc(2024, 3, 1, 0, 0, 1)]


# --------------------------------------------------------------------------- format C


def test_csv_header_in_any_order_and_empty_cells(synced: Database, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "export.csv",
        [
            "station,muxPower1,timestamp,activePower1,activePower3",
            "KhonKaen,12.5,2024-03-09T00:00:00.123Z,1502.92,",
            "ChiangMai,,2024-03-09T07:00:01+07:00,,3",
            "Songkhla,1,2024-03-09T00:00:02Z,abc,",
        ],
    )
    [f] = run(path).files
    assert (f.format, counts(f)) == ("C", (4, 1, 2, 0, 1))
    assert f.rejected_by_reason == {"activePower1 is not a number: 'abc'": 1}
    columns = ("station", "ts", "mux_power1", "active_power1", "active_power3")
    assert stored().select(columns).rows() == [
        ("ChiangMai", utc(2024, 3, 9, 0, 0, 1), None, None, 3.0),
        ("KhonKaen", utc(2024, 3, 9, 0, 0, 0, 123000), 12.5, 1502.92, None),
    ]


def test_csv_without_header_fails_and_stores_nothing(synced: Database, tmp_path: Path) -> None:
    good = write(tmp_path, "a/good.csv", [CSV_HEADER, "2024-03-09T00:00:00Z,KhonKaen,1,,,,,,,,,"])
    lines = [f"2024-03-09T00:00:{i:02d}Z,KhonKaen,1,2,3,4,5,6,7,8,9,10" for i in range(3)]
    headless = write(tmp_path, "b/headless.csv", lines)  # an export that lost its header
    report = run(good, headless)
    assert [f.status for f in report.files] == ["imported", "failed"]
    assert "no line of format T, J or C" in (report.files[1].error or "")
    assert stored().height == 1


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("gz", [False, True])
def test_crlf_bom_and_trailing_blank_lines_in_every_format(
    synced: Database, tmp_path: Path, gz: bool
) -> None:
    files = {
        "t.log": [t_line("2024-03-01 07:00:01.000"), t_line("2024-03-01 07:00:02.000"), "", ""],
        "j.jsonl": [j_line("ChiangMai", 1709251201000), j_line("ChiangMai", 1709251202000), ""],
        "c.csv": [CSV_HEADER, "2024-03-01T00:00:01Z,Songkhla,1,,,,,,,,,", "", "", ""],
    }
    paths = []
    for name, lines in files.items():
        path = write(tmp_path, name, lines, newline="\r\n", gz=gz)
        path.write_bytes(
            gzip.compress(b"\xef\xbb\xbf" + gzip.decompress(path.read_bytes()))
            if gz
            else b"\xef\xbb\xbf" + path.read_bytes()
        )
        paths.append(path)
    report = run(*paths)
    assert {f.format: counts(f) for f in report.files} == {
        "T": (4, 2, 2, 0, 0),
        "J": (3, 1, 2, 0, 0),
        "C": (5, 4, 1, 0, 0),
    }
    assert stored().group_by("station").len().sort("station").rows() == [
        ("ChiangMai", 2),
        ("KhonKaen", 2),
        ("Songkhla", 1),
    ]


def test_rotated_files_overlap_and_each_reading_is_stored_once(
    synced: Database, tmp_path: Path
) -> None:
    stamps = [f"2024-03-01 07:00:{s:02d}.000" for s in range(30)]
    logs = tmp_path / "logs"
    write(logs, "monitor.log.2.gz", [t_line(s) for s in stamps[:12]], gz=True)
    write(logs, "monitor.log.1", [t_line(s) for s in stamps[8:22]])
    write(logs, "monitor.log", [t_line(s) for s in stamps[18:]])
    report = run(logs)
    by_name = {f.name: counts(f) for f in report.files}
    assert by_name == {  # imported in name order: monitor.log first
        "monitor.log": (12, 0, 12, 0, 0),
        "monitor.log.1": (14, 0, 10, 4, 0),
        "monitor.log.2.gz": (12, 0, 8, 4, 0),
    }
    assert stored().height == 30
    assert report.totals()["inserted"] == 30


def test_lines_out_of_time_order_are_all_stored(synced: Database, tmp_path: Path) -> None:
    seconds = [5, 1, 9, 3, 3, 0, 7]
    path = write(tmp_path, "m.log", [t_line(f"2024-03-01 07:00:{s:02d}.000") for s in seconds])
    [f] = run(path).files
    assert counts(f) == (7, 0, 6, 1, 0)  # second 3 twice: the second one is a duplicate
    assert [t.second for t in stored()["ts"]] == [0, 1, 3, 5, 7, 9]


def test_the_validity_rules_of_live_readings_apply(synced: Database, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        [
            j_line("KhonKaen", "2024-03-01T00:00:01Z", '"activePower1": -1000.5'),
            j_line("KhonKaen", "2024-03-01T00:00:02Z", '"activePower2": 1000000'),  # ok: inclusive
            j_line("KhonKaen", "2024-03-01T00:00:03Z", '"muxPower1": -0.01'),
            j_line("KhonKaen", "2024-03-01T00:00:04Z", '"muxPower2": 1e12'),
            j_line("KhonKaen", "1999-12-31T23:59:59Z"),
            j_line("KhonKaen", "2099-01-01T00:00:00Z"),
            j_line("Khon Kaen!", "2024-03-01T00:00:05Z"),
        ],
    )
    [f] = run(path).files
    assert counts(f) == (7, 0, 1, 0, 6)
    assert f.rejected_by_reason == {
        "out of range: activePower1": 1,
        "out of range: muxPower1": 1,
        "out of range: muxPower2": 1,
        "timestamp before 2000-01-01: timestamp": 1,
        "timestamp in the future: timestamp": 1,
        "bad station name: station": 1,
    }
    assert [q["line"] for q in f.first_rejected] == [1, 3, 4, 5, 6][:QUOTED_LINES]
    assert f.first_rejected[0]["text"].startswith('{"station":"KhonKaen"')


def test_a_conflicting_reading_counts_as_duplicate_first_one_wins(
    synced: Database, tmp_path: Path
) -> None:
    first = write(tmp_path, "a.log", [t_line("2024-03-01 07:00:01.000", values="P1=1.00")])
    second = write(tmp_path, "b.log", [t_line("2024-03-01 07:00:01.000", values="P1=2.00")])
    report = run(first, second)
    assert counts(report.files[1]) == (1, 0, 0, 1, 0)
    assert report.files[1].conflicts == 1
    assert stored()["active_power1"].to_list() == [1.0]
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM reading_conflicts") == 1


# --------------------------------------------------------------------------- ledger


def test_unchanged_files_are_skipped_even_renamed_changed_ones_imported(
    synced: Database, tmp_path: Path
) -> None:
    path = write(tmp_path, "monitor.log", [t_line("2024-03-01 07:00:01.000")])
    assert run(path).files[0].status == "imported"
    again = run(path).files[0]
    assert (again.status, counts(again)) == ("skipped", (0, 0, 0, 0, 0))
    rotated = path.rename(tmp_path / "monitor.log.1")  # rotation renames, content unchanged
    assert run(rotated).files[0].status == "skipped"
    forced = run(rotated, force=True).files[0]
    assert (forced.status, counts(forced)) == ("imported", (1, 0, 0, 1, 0))
    rotated.write_text(rotated.read_text() + t_line("2024-03-01 07:00:02.000") + "\n")
    grown = run(rotated).files[0]
    assert (grown.status, counts(grown)) == ("imported", (2, 0, 1, 1, 0))
    with bulk_connection() as bulk:
        ledger = bulk.rows(
            "SELECT b.input_name, b.rows_in, b.inserted, b.duplicates, d.kind FROM load_batches b "
            "JOIN data_sources d ON d.id = b.source_id WHERE b.status = 'committed' ORDER BY b.id"
        )
    assert ledger == [
        (str(path.resolve()), 1, 1, 0, "log_migration"),
        (str(rotated.resolve()), 1, 0, 1, "log_migration"),
        (str(rotated.resolve()), 2, 1, 1, "log_migration"),
    ]


def test_unknown_station_then_registry_then_force_inserts_exactly_those(
    synced: Database, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        [
            j_line("KhonKaen", "2024-03-01T00:00:01Z"),
            j_line("Phuket", "2024-03-01T00:00:01Z"),
            j_line("Phuket", "2024-03-01T00:00:02Z"),
            j_line("KhonKaen", "2024-03-01T00:00:02Z", '"activePower1": "x"'),
        ],
    )
    first = run(path).files[0]
    assert counts(first) == (4, 0, 1, 0, 3)
    assert first.unknown_stations == {"Phuket": 2}
    assert first.rejected_by_reason == {
        "unknown station": 2,
        'activePower1 is not a number: "x"': 1,
    }
    assert "Phuket" in MigrationReport([first]).markdown()

    registry = tmp_path / "stations.yaml"
    registry.write_text(
        STATIONS_YAML
        + "  - name: Phuket\n    uuid: 8200e417-09cd-4b20-aa1b-ea0fd469ba2e\n"
        + "    ip_address: 127.0.0.1\n    scene: south\n"
    )
    engine = make_engine()
    sync_stations(engine, load_registry(registry))
    engine.dispose()
    assert run(path).files[0].status == "skipped"  # unchanged: only --force re-reads it
    again = run(path, force=True).files[0]
    assert counts(again) == (4, 0, 2, 1, 1)
    assert again.unknown_stations == {}
    assert stored().group_by("station").len().sort("station").rows() == [
        ("KhonKaen", 1),
        ("Phuket", 2),
    ]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (bytes(range(256)) * 40, "binary content"),
        (b"", "empty file"),
        (b"Notes about the stations.\nNothing here is a log.\n", "no line of format T, J or C"),
        (b"\x1f\x8b\x08\x00 not really gzip", "cannot be read"),
    ],
)
def test_a_file_that_is_no_log_fails_with_its_reason_and_the_others_go_on(
    synced: Database, tmp_path: Path, content: bytes, reason: str
) -> None:
    folder = tmp_path / "logs"
    write(folder, "a.log", [t_line("2024-03-01 07:00:01.000")])
    (folder / "b.bin").write_bytes(content)
    write(folder, "c.jsonl", [j_line("ChiangMai", 1709251201000)])
    report = run(folder)
    assert [(f.name, f.status) for f in report.files] == [
        ("a.log", "imported"),
        ("b.bin", "failed"),
        ("c.jsonl", "imported"),
    ]
    failed = report.files[1]
    assert failed.format is None and reason in (failed.error or "")
    assert stored().height == 2


def test_a_damaged_gzip_stores_nothing_of_that_file(synced: Database, tmp_path: Path) -> None:
    lines = [t_line(f"2024-03-01 07:{i // 60:02d}:{i % 60:02d}.000") for i in range(3000)]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "monitor.log.3.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    [f] = run(path).files
    assert (f.status, f.format) == ("failed", "T")
    assert "cannot read past line" in (f.error or "")
    assert stored().height == 0
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM load_batches") == 0


def test_a_path_that_does_not_exist_is_bad_input(tmp_path: Path) -> None:
    from powerwatch.core.errors import InputError

    with pytest.raises(InputError, match="no such file or folder"):
        discover([tmp_path / "missing"])


# --------------------------------------------------------------------------- report


def test_report_json_has_the_spec_keys_and_totals_are_sums(
    synced: Database, tmp_path: Path
) -> None:
    write(tmp_path / "logs", "a.log", [t_line("2024-03-01 07:00:01.000"), "banner"])
    (tmp_path / "logs" / "b.bin").write_bytes(b"\x00\x01")
    report = run(tmp_path / "logs")
    out = tmp_path / "out" / "report.json"
    report.write_json(out)
    data = json.loads(out.read_text())
    required = {"path", "format", "status", "lines", "non_data", "inserted", "duplicates"}
    required |= {"rejected", "attempts", "error"}
    assert all(required <= set(f) for f in data["files"])
    assert [(f["format"], f["status"], f["error"] is None) for f in data["files"]] == [
        ("T", "imported", True),
        (None, "failed", False),
    ]
    for key in ("lines", "non_data", "inserted", "duplicates", "rejected", "attempts"):
        assert data["totals"][key] == sum(f[key] for f in data["files"])
    assert (data["totals"]["lines"], data["totals"]["failed"]) == (2, 1)


def test_many_rejections_quote_only_the_first_few_and_keep_exact_sums(
    synced: Database, tmp_path: Path
) -> None:
    lines = [
        t_line(f"2024-03-01 07:00:{i % 60:02d}.{i:03d}", values=f"P1=x{i}") for i in range(300)
    ]
    [f] = run(write(tmp_path, "m.log", lines)).files
    assert f.rejected == 300 == sum(f.rejected_by_reason.values())
    assert len(f.rejected_by_reason) <= 50
    assert [q["line"] for q in f.first_rejected] == list(range(1, QUOTED_LINES + 1))


# --------------------------------------------------------------------------- streaming


def test_small_blocks_give_the_same_result_as_one_block(synced: Database, tmp_path: Path) -> None:
    lines = []
    for i in range(500):
        lines.append(t_line(f"2024-03-01 07:{i // 60:02d}:{i % 60:02d}.000", station="KhonKaen"))
        lines.append(t_line(f"2024-03-01 07:{i // 60:02d}:{i % 60:02d}.000", station="Phuket"))
        if i % 50 == 0:
            lines += ["2024-03-01 07:00:00.000 [WARN] banner", t_line("2024-03-01 07:00:00.000")]
    path = write(tmp_path, "m.log", lines)
    with bulk_connection() as bulk:
        small = import_file(bulk, path, parse_lines=37, store_rows=100)
    assert small.balanced()
    assert counts(small) == (1020, 10, 500, 10, 500)
    assert small.unknown_stations == {"Phuket": 500}
    assert [q["line"] for q in small.first_rejected] == [2, 6, 8, 10, 12][:QUOTED_LINES]


# --------------------------------------------------------------------------- shared samples


@pytest.mark.skipif(not (SAMPLES / "legacy-logs").is_dir(), reason="shared samples not available")
def test_shared_samples_reconcile_exactly(database: Database, tmp_path: Path) -> None:
    engine = make_engine()
    sync_stations(engine, load_registry(SAMPLES / "stations.yaml"))
    engine.dispose()
    logs = tmp_path / "legacy-logs"
    shutil.copytree(SAMPLES / "legacy-logs", logs)
    report = run(logs)
    assert {f.name: f.format for f in report.files} == {
        "monitor-2024-03-06.jsonl.gz": "J",
        "export-march.csv": "C",
        "monitor-2024-03-05.jsonl": "J",
        "monitor.log": "T",
        "monitor.log.1": "T",
        "monitor.log.2.gz": "T",
    }
    assert all(f.status == "imported" and f.balanced() for f in report.files)
    totals = report.totals()
    assert (
        totals["lines"]
        == totals["non_data"] + totals["inserted"] + totals["duplicates"] + (totals["rejected"])
    )
    # The oracle, independent of the code under test: the same files read the obvious way,
    # line by line (bench/bench_migrate.py's baseline), the first reading of a key winning
    # in import order. Every key and value stored is what it says, nothing more or less.
    with bulk_connection() as bulk:
        ids = {name: sid for sid, name in bulk.rows("SELECT id, name FROM stations")}
    expected: dict[tuple[int, int], dict[str, object]] = {}
    for f in report.files:
        assert f.format is not None
        data = Path(f.path).read_bytes()
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert f.lines == data.count(b"\n") + (not data.endswith(b"\n"))
        for row in baseline_rows(Path(f.path), cast(Format, f.format), ids):
            expected.setdefault((row["station_id"], row["ts"]), row)
    assert totals["inserted"] == len(expected) > 0
    columns = ["station_id", "ts", *(c.column for c in CHANNELS)]
    with bulk_connection() as bulk:
        got = bulk.frame(f"SELECT {', '.join(columns)} FROM power_readings")
    want = pl.DataFrame([{c: r[c] for c in columns} for r in expected.values()], schema=got.schema)
    assert_frame_equal(got.sort("station_id", "ts"), want.sort("station_id", "ts"))
    assert stored().height == totals["inserted"]
    assert set(stored()["reference"]) == {f.path for f in report.files}
    rerun = run(logs)
    assert [f.status for f in rerun.files] == ["skipped"] * 6
    forced = run(logs, force=True)
    assert forced.totals()["inserted"] == 0
    assert forced.totals()["duplicates"] == totals["inserted"] + totals["duplicates"]


# --------------------------------------------------------------------------- truthful outcomes


def test_all_and_mostly_rejected_files_are_not_reported_like_clean_imports(
    sqlite_synced: Database, tmp_path: Path
) -> None:
    """A committed file says what it amounted to; every view leads with inserted, rejected."""
    stamps = [f"2024-03-01 07:00:{s:02d}.000" for s in range(10)]
    retired = write(tmp_path, "a/retired.log", [t_line(s, "Retired") for s in stamps])
    mostly = write(
        tmp_path,
        "b/mostly.log",
        [t_line(s, "Retired" if i < 6 else "KhonKaen") for i, s in enumerate(stamps)],
    )
    clean = write(tmp_path, "c/clean.log", [t_line(s, "ChiangMai") for s in stamps])

    report = run(retired, mostly, clean)

    verdicts = [(f.name, f.status, f.verdict, f.inserted, f.rejected) for f in report.files]
    assert verdicts == [
        ("retired.log", "imported", "all rejected", 0, 10),
        ("mostly.log", "imported", "mostly rejected", 4, 6),
        ("clean.log", "imported", "imported", 10, 0),
    ]
    rows = report.rows()
    assert list(rows[0])[:4] == ["file", "status", "inserted", "rejected"]
    assert [r["status"] for r in rows] == ["all rejected", "mostly rejected", "imported", "ok"]
    assert report.summary().startswith("14 inserted, 16 rejected, 0 duplicates; 3 file(s)")
    assert report.summary().endswith("2 all or mostly rejected")
    assert report.rejecting[0].warning == (
        "retired.log: 10 of 10 readings rejected, 0 inserted (unknown station: 10)"
    )
    markdown = report.markdown()
    assert markdown.startswith("# Log migration: 14 inserted, 16 rejected\n")
    assert "**all rejected**: retired.log: 10 of 10 readings rejected" in markdown
    data = report.as_json()
    assert [(f["status"], f["verdict"]) for f in data["files"]] == [
        ("imported", "all rejected"),
        ("imported", "mostly rejected"),
        ("imported", "imported"),
    ]
    assert not report.nothing_inserted_but_rejected

    only_rejected = MigrationReport(report.files[:1])
    assert only_rejected.nothing_inserted_but_rejected
    assert only_rejected.summary().startswith(
        "nothing inserted: 10 readings rejected (10 of unknown stations: add them, sync, "
        "run with --force)"
    )
    assert only_rejected.rows()[-1]["status"] == "nothing inserted"
    # Nothing rejected and nothing new (every file skipped): not a failure.
    assert not run(clean).nothing_inserted_but_rejected

    # The UI's tables: a narrow main one (files named from their shared folder), details apart.
    main = report.artifact_rows()
    assert list(main[0]) == [
        "file", "status", "inserted", "rejected", "duplicates", "lines", "seconds"
    ]  # fmt: skip
    assert [r["file"] for r in main[:-1]] == ["a/retired.log", "b/mostly.log", "c/clean.log"]
    assert main[-1]["file"] == rows[-1]["file"] and main[-1]["lines"] == rows[-1]["lines"]
    details = report.detail_rows()
    assert [r["file"] for r in details] == ["a/retired.log", "b/mostly.log", "c/clean.log"]
    assert list(details[0]) == [
        "file", "format", "non-data", "readings", "time range (UTC)", "error"
    ]  # fmt: skip


# --------------------------------------------------------------------------- the demo's registry


@pytest.mark.skipif(not (SAMPLES / "legacy-logs").is_dir(), reason="shared samples not available")
def test_the_demo_registry_imports_the_sample_logs(
    sqlite_database: Database, tmp_path: Path
) -> None:
    """The README's example in the demo: `demo_registry` (what `powerwatch demo` syncs)
    holds the sample logs' stations as the samples' registry lists them, so their
    readings are stored, not rejected as unknown."""
    from powerwatch.devtools.demo import SAMPLE_LOG_STATIONS, demo_registry

    assert list(SAMPLE_LOG_STATIONS) == load_registry(SAMPLES / "stations.yaml")
    simulated = [
        Station("SIM-0001", "00000000-0000-4000-8000-000000000001", "127.0.0.1", "sim", "ws://x/")
    ]
    registry = demo_registry(simulated)
    assert registry[0] == simulated[0] and len(registry) == 1 + len(SAMPLE_LOG_STATIONS)
    engine = make_engine()
    sync_stations(engine, registry)
    engine.dispose()
    logs = tmp_path / "legacy-logs"
    shutil.copytree(SAMPLES / "legacy-logs", logs)

    report = run(logs)

    assert all(f.verdict == "imported" for f in report.files), report.summary()
    unknown = {name for f in report.files for name in f.unknown_stations}
    # Only a station the samples' own registry lacks (a deliberate stray) is unknown.
    assert not unknown & {s.name for s in SAMPLE_LOG_STATIONS}, unknown
    assert report.totals()["inserted"] > 0
    assert stored().height == report.totals()["inserted"]
