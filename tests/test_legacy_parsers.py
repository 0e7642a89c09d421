"""The legacy-log parsing layer (spec/legacy-logs.md): detection, reading, parsing.

No database and no Prefect here: files are written to tmp_path and parsed.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from powerwatch.core.errors import InputError
from powerwatch.legacy.formats import Format, LegacyLogError, detect_format
from powerwatch.legacy.lines import iter_line_blocks
from powerwatch.legacy.parsers import READING_COLUMNS, REJECTED_COLUMNS, iter_batches
from schemas.reading import CHANNEL_KEYS, LANDING_COLUMNS, split_valid
from tests.conftest import SAMPLES as SHARED_SAMPLES

SAMPLES = SHARED_SAMPLES / "legacy-logs"

T_LINE = (
    "2024-03-01 07:00:01.123 [INFO] [KhonKaen] Active Power (W): P1=1520.50 P2=1498.00 "
    "P3=N/A P4=0.00 P5=0.00 P6=0.00 | MUX (kWh): TV5=123456.78 MCOT=98765.40 PRD=55555.50 "
    "TPBS=44444.40"
)
T_VALUES = {
    "activePower1": 1520.5,
    "activePower2": 1498.0,
    "activePower3": None,
    "activePower4": 0.0,
    "activePower5": 0.0,
    "activePower6": 0.0,
    "muxPower1": 123456.78,
    "muxPower2": 98765.4,
    "muxPower3": 55555.5,
    "muxPower4": 44444.4,
}
CSV_HEADER = (
    "timestamp,station,activePower1,activePower2,activePower3,activePower4,"
    "activePower5,activePower6,muxPower1,muxPower2,muxPower3,muxPower4"
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def t_line(stamp: str, station: str = "KhonKaen", values: str | None = None) -> str:
    head = f"{stamp} [INFO] [{station}] Active Power (W):"
    if values is None:
        values = T_LINE.split("Active Power (W):", 1)[1].lstrip()
    return f"{head} {values}"


def j_line(station: str, timestamp: str | int, readings: str) -> str:
    stamp = timestamp if isinstance(timestamp, int) else f'"{timestamp}"'
    return f'{{"station":"{station}","timestamp":{stamp},"readings":{{{readings}}}}}'


def write(tmp_path: Path, name: str, content: str | bytes, *, gz: bool = False) -> Path:
    data = content.encode() if isinstance(content, str) else content
    path = tmp_path / name
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


@dataclass
class Parsed:
    lines: int
    non_data: int
    readings: pl.DataFrame
    rejected: pl.DataFrame
    batch_sizes: list[int]

    def reasons(self) -> dict[int, str]:
        return dict(zip(self.rejected["line"], self.rejected["reason"], strict=True))


def parse(
    path: Path, fmt: Format | None = None, *, tz: str = "Asia/Bangkok", batch_lines: int = 500_000
) -> Parsed:
    """All batches of a file, checking each batch's contract on the way."""
    fmt = fmt or detect_format(path)
    assert fmt is not None
    lines = non_data = 0
    readings: list[pl.DataFrame] = []
    rejected: list[pl.DataFrame] = []
    sizes: list[int] = []
    next_line = 1
    for batch in iter_batches(path, fmt, tz=tz, batch_lines=batch_lines):
        assert batch.lines == batch.non_data + batch.readings.height + batch.rejected.height
        assert batch.lines <= batch_lines
        assert batch.first_line == next_line
        assert dict(batch.readings.schema) == READING_COLUMNS
        assert dict(batch.rejected.schema) == REJECTED_COLUMNS
        assert batch.rejected["reason"].null_count() == 0
        numbers = pl.concat([batch.readings["line"], batch.rejected["line"]])
        assert numbers.is_unique().all()
        assert numbers.is_between(next_line, next_line + batch.lines - 1).all()
        next_line += batch.lines
        lines += batch.lines
        non_data += batch.non_data
        readings.append(batch.readings)
        rejected.append(batch.rejected)
        sizes.append(batch.lines)
    return Parsed(
        lines,
        non_data,
        pl.concat(readings) if readings else pl.DataFrame(schema=READING_COLUMNS),
        pl.concat(rejected) if rejected else pl.DataFrame(schema=REJECTED_COLUMNS),
        sizes,
    )


def row(frame: pl.DataFrame, line: int) -> dict[str, object]:
    found = frame.filter(pl.col("line") == line)
    assert found.height == 1, f"line {line} not among {frame['line'].to_list()}"
    return found.row(0, named=True)


def editor_line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# --------------------------------------------------------------------------- detection


def test_detect_text_log_with_banner_first(tmp_path: Path) -> None:
    content = "2024-03-01 07:00:00.001 [INFO] StationMonitor started (v2.3.1)\n" + T_LINE + "\n"
    assert detect_format(write(tmp_path, "monitor.log", content)) == "T"


def test_detect_by_content_not_name_and_gzip_by_magic(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "data.csv", T_LINE + "\n", gz=True)) == "T"
    jsonl = j_line("KhonKaen", "2024-03-01T00:00:01.123Z", '"activePower1":1.5') + "\n"
    assert detect_format(write(tmp_path, "export.log", jsonl)) == "J"
    assert detect_format(write(tmp_path, "plain.gz", CSV_HEADER + "\n")) == "C"


def test_detect_tolerates_bom_crlf_blank_and_banner_lines(tmp_path: Path) -> None:
    jsonl = "\ufeff\r\n\r\n" + j_line("A", 1709251201123, '"muxPower1":1') + "\r\n"
    assert detect_format(write(tmp_path, "a.jsonl", jsonl)) == "J"
    csv = "\ufeff# exported by monitor 3.2\r\n\r\nstation, timestamp ,muxPower1\r\n"
    assert detect_format(write(tmp_path, "b.csv", csv)) == "C"


@pytest.mark.parametrize(
    "content",
    [
        bytes(range(256)) * 64,  # binary, with NUL bytes
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"",
        b"\n\n\n",
        b"Just some notes about the stations.\nNothing here is a log.\n",
        b"a,b,c\n1,2,3\n",  # CSV without timestamp/station
        b'{"hello": "world"}\n',  # JSON, but not a reading
    ],
)
def test_detect_none_for_anything_else(tmp_path: Path, content: bytes) -> None:
    assert detect_format(write(tmp_path, "x.log", content)) is None


def test_detect_none_for_a_damaged_gzip(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "x.log.gz", b"\x1f\x8b\x08\x00garbage")) is None


# --------------------------------------------------------------------------- line counting


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"", 0),
        (b"\n", 1),
        (b"a", 1),
        (b"a\n", 1),
        (b"a\nb", 2),
        (b"a\nb\n", 2),
        (b"a\n\n\n", 3),
        (b"a\r\n\r\n", 2),
        (b"\n\na", 3),
    ],
)
def test_lines_are_counted_like_a_text_editor(tmp_path: Path, content: bytes, lines: int) -> None:
    blocks = list(iter_line_blocks(write(tmp_path, "x", content), 10))
    assert sum(block.height for block in blocks) == lines == editor_line_count(content)


def test_reader_strips_crlf_and_bom_and_keeps_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "x", b"\xef\xbb\xbfone\r\n\r\ntwo\r\n  \r\nthree")
    (block,) = iter_line_blocks(path, 100)
    assert block["raw"].to_list() == ["one", "", "two", "  ", "three"]
    assert block["line"].to_list() == [1, 2, 3, 4, 5]


def test_reader_blocks_across_reads_match_python_split(tmp_path: Path) -> None:
    rnd = random.Random(7)
    lines = ["x" * rnd.randrange(0, 300) for _ in range(3000)]
    lines[100] = ""
    lines[101] = "with \x1f unit separator"
    data = "\n".join(lines).encode()
    blocks = list(iter_line_blocks(write(tmp_path, "x", data), 7))
    assert all(block.height == 7 for block in blocks[:-1])
    whole = pl.concat(blocks)
    assert whole["raw"].to_list() == lines
    assert whole["line"].to_list() == list(range(1, len(lines) + 1))


def test_reader_skips_through_an_over_long_line(tmp_path: Path) -> None:
    data = b"first\n" + b"y" * 300_000 + b"\nlast\n"
    whole = pl.concat(list(iter_line_blocks(write(tmp_path, "x", data), 10, max_line_bytes=1000)))
    assert whole["line"].to_list() == [1, 2, 3]
    assert whole["raw"][1] == "y" * 1024
    assert whole["problem"].to_list() == [None, "line longer than 1000 bytes", None]


def test_reader_reads_every_member_of_a_concatenated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b"one\ntwo") + gzip.compress(b"\nthree\n") + gzip.compress(b"")
    (block,) = iter_line_blocks(write(tmp_path, "x.gz", data), 100)
    assert block["raw"].to_list() == ["one", "two", "three"]


def test_reader_reports_a_cut_gzip_stream(tmp_path: Path) -> None:
    whole = gzip.compress(("\n".join([T_LINE] * 5000) + "\n").encode())
    path = write(tmp_path, "cut.log.gz", whole[: len(whole) // 2])
    with pytest.raises(LegacyLogError, match="cannot read past line"):
        list(iter_batches(path, "T"))


# --------------------------------------------------------------------------- format T


def test_text_reading_line_maps_channels_and_converts_to_utc(tmp_path: Path) -> None:
    result = parse(write(tmp_path, "m.log", T_LINE + "\n"))
    assert (result.lines, result.non_data, result.rejected.height) == (1, 0, 0)
    got = row(result.readings, 1)
    assert got["station"] == "KhonKaen"
    assert got["timestamp"] == utc(2024, 3, 1, 0, 0, 1, 123000)  # 07:00 Bangkok = 00:00 UTC
    assert {key: got[key] for key in CHANNEL_KEYS} == T_VALUES
    assert list(result.readings.columns) == [*LANDING_COLUMNS, "line"]


def test_text_non_data_lines_are_counted_not_rejected(tmp_path: Path) -> None:
    content = "\n".join(
        [
            "2024-03-01 07:00:00.001 [INFO] StationMonitor started (v2.3.1)",
            "2024-03-01 07:00:00.500 [INFO] [KhonKaen] WebSocket connected to ws://10.20.1.15:8765",
            T_LINE,
            "2024-03-01 07:05:12.000 [WARN] [KhonKaen] WebSocket closed (code 1006), reconnecting",
            "2024-03-01 07:05:12.001 [ERROR] [KhonKaen] Error: read ECONNRESET",
            "    at TCP.onStreamRead (node:internal/stream_base_commons:217:20)",
            "",
            t_line("2024-03-01 07:05:13.123"),
            "",
            "",
        ]
    )
    result = parse(write(tmp_path, "m.log", content + "\n"))
    assert result.lines == 10
    assert result.non_data == 8
    assert result.readings["line"].to_list() == [3, 8]
    assert result.rejected.height == 0


def test_text_absent_labels_are_null_and_na_is_null(tmp_path: Path) -> None:
    lines = [
        t_line("2024-03-01 07:00:01.000", values="P1=10.5 | MUX (kWh): TPBS=7"),
        t_line("2024-03-01 07:00:02.000", values="TV5=1.25 P3=N/A P2=-3"),  # any order
        t_line("2024-03-01 07:00:03", values=""),  # no fraction, no values at all
    ]
    result = parse(write(tmp_path, "m.log", "\n".join(lines)))
    assert result.rejected.height == 0
    first, second, third = (row(result.readings, n) for n in (1, 2, 3))
    assert {k: v for k, v in first.items() if k in CHANNEL_KEYS and v is not None} == {
        "activePower1": 10.5,
        "muxPower4": 7.0,
    }
    assert {k: v for k, v in second.items() if k in CHANNEL_KEYS and v is not None} == {
        "activePower2": -3.0,
        "muxPower1": 1.25,
    }
    assert all(third[key] is None for key in CHANNEL_KEYS)
    assert third["timestamp"] == utc(2024, 3, 1, 0, 0, 3)


def test_text_values_that_do_not_parse_are_rejected(tmp_path: Path) -> None:
    lines = [
        T_LINE.replace("P2=1498.00", "P2=ERR"),
        T_LINE.replace("TV5=123456.78", "TV5=12.3.4"),
        T_LINE,
        T_LINE.replace("P1=1520.50", "P1=abc").replace("TPBS=44444.40", "TPBS=1,5"),
    ]
    result = parse(write(tmp_path, "m.log", "\n".join(lines) + "\n"))
    assert result.readings["line"].to_list() == [3]
    assert result.reasons() == {
        1: "P2=ERR is not a number",
        2: "TV5=12.3.4 is not a number",
        4: "P1=abc is not a number; TPBS=1,5 is not a number",
    }
    assert row(result.rejected, 1)["raw"] == lines[0]


def test_text_reading_without_station_or_time_is_rejected(tmp_path: Path) -> None:
    lines = [
        "2024-03-01 07:00:01.123 [INFO] Active Power (W): P1=1.00",
        "2024-02-30 07:00:01.123 [INFO] [KhonKaen] Active Power (W): P1=1.00",
        "garbage [INFO] [KhonKaen] Active Power (W): P1=1.00",
        "Active Power (W): P1=1.00",
    ]
    result = parse(write(tmp_path, "m.log", "\n".join(lines)))
    assert result.readings.height == 0
    assert result.reasons() == {
        1: "missing station",
        2: "timestamp does not parse: '2024-02-30 07:00:01.123'",
        3: "timestamp does not parse: 'garbage'",
        4: "malformed reading line",
    }


@pytest.mark.parametrize(
    ("tz", "winter", "summer"),
    [
        ("UTC", utc(2024, 1, 15, 7, 0, 0, 250000), utc(2024, 7, 15, 7, 0, 0, 250000)),
        ("Asia/Bangkok", utc(2024, 1, 15, 0, 0, 0, 250000), utc(2024, 7, 15, 0, 0, 0, 250000)),
        ("Europe/Berlin", utc(2024, 1, 15, 6, 0, 0, 250000), utc(2024, 7, 15, 5, 0, 0, 250000)),
    ],
)
def test_text_local_time_zone_is_a_parameter(
    tmp_path: Path, tz: str, winter: datetime, summer: datetime
) -> None:
    lines = [t_line("2024-01-15 07:00:00.250"), t_line("2024-07-15 07:00:00.250")]
    result = parse(write(tmp_path, "m.log", "\n".join(lines)), tz=tz)
    assert result.readings["timestamp"].to_list() == [winter, summer]


def test_text_dst_gap_is_rejected_and_overlap_takes_the_earliest(tmp_path: Path) -> None:
    lines = [t_line("2024-03-31 02:30:00.000"), t_line("2024-10-27 02:30:00.000")]
    result = parse(write(tmp_path, "m.log", "\n".join(lines)), tz="Europe/Berlin")
    assert result.reasons() == {
        1: "non-existent local time in Europe/Berlin: '2024-03-31 02:30:00.000'"
    }
    assert row(result.readings, 2)["timestamp"] == utc(2024, 10, 27, 0, 30)  # still CEST


def test_text_crlf_bom_gzip(tmp_path: Path) -> None:
    content = (
        "\ufeff" + "\r\n".join(["2024-03-01 07:00:00.001 [INFO] started", T_LINE, ""]) + "\r\n"
    )
    result = parse(write(tmp_path, "m.log.2.gz", content, gz=True))
    assert (result.lines, result.non_data) == (3, 2)
    assert row(result.readings, 2)["muxPower4"] == 44444.4


def test_text_line_that_is_not_utf8(tmp_path: Path) -> None:
    data = b"\n".join(
        [
            b"2024-03-01 07:00:00.001 [WARN] caf\xe9 banner in Latin-1",
            T_LINE.replace("KhonKaen", "Kh\xf4nKaen").encode("latin-1"),
            T_LINE.encode(),
        ]
    )
    result = parse(write(tmp_path, "m.log", data), "T")
    assert (result.lines, result.non_data) == (3, 1)
    assert result.reasons() == {2: "not UTF-8"}
    assert result.readings["line"].to_list() == [3]


def test_unknown_time_zone_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown time zone"):
        iter_batches(write(tmp_path, "m.log", T_LINE), "T", tz="Mars/Olympus")


# --------------------------------------------------------------------------- format J


def test_json_timestamps_iso_offset_and_epoch_ms(tmp_path: Path) -> None:
    lines = [
        j_line("A", "2024-03-01T00:00:01.123Z", '"activePower1":1520.5'),
        j_line("A", "2024-03-01T07:00:02.123+07:00", '"activePower1":1'),
        j_line("A", 1709251203123, '"activePower1":2'),
        j_line("A", "2024-03-01T00:00:04Z", ""),
        j_line("A", "2024-03-01T01:00:05.5+0100", ""),
    ]
    result = parse(write(tmp_path, "m.jsonl", "\n".join(lines)))
    assert result.rejected.height == 0
    assert result.readings["timestamp"].to_list() == [
        utc(2024, 3, 1, 0, 0, 1, 123000),
        utc(2024, 3, 1, 0, 0, 2, 123000),
        utc(2024, 3, 1, 0, 0, 3, 123000),
        utc(2024, 3, 1, 0, 0, 4),
        utc(2024, 3, 1, 0, 0, 5, 500000),
    ]


def test_json_missing_null_and_unknown_keys(tmp_path: Path) -> None:
    line = j_line(
        "KhonKaen",
        "2024-03-01T00:00:01.123Z",
        '"activePower1": 1520.5, "activePower3": null, "muxPower4": 44444, "reactive": "x"',
    )
    result = parse(write(tmp_path, "m.jsonl", line.replace('"uuid"', "") + "\n"))
    got = row(result.readings, 1)
    assert {key: got[key] for key in CHANNEL_KEYS} == {
        key: {"activePower1": 1520.5, "muxPower4": 44444.0}.get(key) for key in CHANNEL_KEYS
    }


def test_json_values_that_are_not_numbers_are_rejected(tmp_path: Path) -> None:
    lines = [
        j_line("A", "2024-03-01T00:00:01Z", '"activePower1": 1, "activePower2": "ERR"'),
        j_line("A", "2024-03-01T00:00:02Z", '"muxPower1": true'),
        j_line("A", "2024-03-01T00:00:03Z", '"muxPower2": "1520.5"'),
        j_line("A", "2024-03-01T00:00:04Z", '"activePower6": [1]'),
        j_line("A", "2024-03-01T00:00:05Z", '"activePower1": 2'),
    ]
    result = parse(write(tmp_path, "m.jsonl", "\n".join(lines)))
    assert result.readings["line"].to_list() == [5]
    assert result.reasons() == {
        1: 'activePower2 is not a number: "ERR"',
        2: "muxPower1 is not a number: true",
        3: 'muxPower2 is not a number: "1520.5"',
        4: "activePower6 is not a number: [1]",
    }


def test_json_cut_and_malformed_lines_are_rejected_and_the_rest_is_read(tmp_path: Path) -> None:
    good = j_line("A", "2024-03-01T00:00:01Z", '"activePower1": 1')
    lines = [good, "not json at all", "[1, 2]", good, '{"station":"UdonThani","timestamp":"2024']
    result = parse(write(tmp_path, "m.jsonl", "\n".join(lines)))
    assert result.readings["line"].to_list() == [1, 4]
    assert result.reasons() == {
        2: "malformed JSON",
        3: "not a JSON object",
        5: "malformed JSON",
    }
    assert row(result.rejected, 5)["raw"] == lines[4]


def test_json_missing_or_bad_fields(tmp_path: Path) -> None:
    lines = [
        '{"timestamp":"2024-03-01T00:00:01Z","readings":{}}',
        '{"station":"A","readings":{"activePower1":1}}',
        '{"station":"A","timestamp":"not a time","readings":{}}',
        '{"station":"A","timestamp":"2024-03-01T07:00:01","readings":{}}',
        '{"station":"A","timestamp":"2024-03-01T00:00:01Z"}',
        '{"station":"A","timestamp":"2024-03-01T00:00:01Z","readings":5}',
        '{"station":7,"timestamp":true,"readings":{}}',
        '{"station":"","timestamp":"2024-03-01T00:00:01Z","readings":{}}',
    ]
    result = parse(write(tmp_path, "m.jsonl", "\n".join(lines)))
    assert result.readings.height == 0
    assert result.reasons() == {
        1: "missing station",
        2: "missing timestamp",
        3: "timestamp does not parse: 'not a time'",
        4: "timestamp without UTC offset: '2024-03-01T07:00:01'",
        5: "missing readings",
        6: "readings is not an object: 5",
        7: (
            "missing station; missing timestamp; station is not a string: 7; "
            "timestamp is not a string or a number: true"
        ),
        8: "missing station",
    }


def test_json_bom_crlf_blank_lines_gzip(tmp_path: Path) -> None:
    line = j_line("A", 1709251201123, '"muxPower1": 5')
    content = "\ufeff" + line + "\r\n\r\n" + line.replace("123", "124") + "\r\n\r\n\r\n"
    result = parse(write(tmp_path, "m.jsonl.gz", content, gz=True))
    assert (result.lines, result.non_data) == (5, 3)
    assert result.readings["line"].to_list() == [1, 3]
    assert result.readings["muxPower1"].to_list() == [5.0, 5.0]


def test_json_scattered_errors_in_a_large_block(tmp_path: Path) -> None:
    """Errors of every kind among thousands of good lines: each found, no good line lost."""
    lines = [
        j_line(f"S{i % 7}", 1709251200000 + i, f'"activePower1": {i}, "muxPower1": {i}.5')
        for i in range(12_000)
    ]
    bad = {
        1500: (j_line("A", 1, '"activePower2": true'), "activePower2 is not a number: true"),
        4500: (j_line("A", 1, '"activePower2": "x"'), 'activePower2 is not a number: "x"'),
        8000: (j_line("A", 1, '"activePower2": {}'), "activePower2 is not a number: {}"),
        6000: ('{"station":"A",,"timestamp":1,"readings":{}}', "malformed JSON"),
        9000: (lines[0][:40], "malformed JSON"),
        11999: ('{"station":"A","timestamp":1,"readings":{"muxPower2":1}} x', "malformed JSON"),
    }
    for index, (text, _) in bad.items():
        lines[index] = text
    result = parse(write(tmp_path, "m.jsonl", "\n".join(lines)), batch_lines=5_000)
    assert result.batch_sizes == [5_000, 5_000, 2_000]
    assert result.reasons() == {index + 1: reason for index, (_, reason) in bad.items()}
    assert result.readings.height == 12_000 - len(bad)
    good = result.readings.filter(pl.col("line") == 1235).row(0, named=True)
    assert (good["station"], good["activePower1"], good["muxPower1"]) == ("S2", 1234.0, 1234.5)
    assert good["timestamp"] == utc(2024, 3, 1, 0, 0, 1, 234000)


# --------------------------------------------------------------------------- format C


def test_csv_reordered_columns_empty_cells_crlf(tmp_path: Path) -> None:
    content = "\r\n".join(
        [
            "activePower1,muxPower4,activePower2,activePower6,muxPower1,activePower4,muxPower2,"
            "timestamp,station,muxPower3,activePower5,activePower3",
            "1502.92,3135907.84,1657.61,0.0,783976.96,0.0,1567953.92,2024-03-09T00:00:00.123Z,"
            "KhonKaen,2351930.88,0.0,",
            "",
        ]
    )
    result = parse(write(tmp_path, "e.csv", content + "\r\n"))
    assert (result.lines, result.non_data, result.rejected.height) == (3, 2, 0)
    got = row(result.readings, 2)
    assert got["station"] == "KhonKaen"
    assert got["timestamp"] == utc(2024, 3, 9, 0, 0, 0, 123000)
    assert {key: got[key] for key in CHANNEL_KEYS} == {
        "activePower1": 1502.92,
        "activePower2": 1657.61,
        "activePower3": None,
        "activePower4": 0.0,
        "activePower5": 0.0,
        "activePower6": 0.0,
        "muxPower1": 783976.96,
        "muxPower2": 1567953.92,
        "muxPower3": 2351930.88,
        "muxPower4": 3135907.84,
    }


def test_csv_timestamps_missing_and_unknown_columns_quotes(tmp_path: Path) -> None:
    content = "\n".join(
        [
            '"station","timestamp","muxPower1","note"',
            '"KhonKaen","2024-03-09T07:00:00.5+07:00",12,hello',
            "ChiangMai,1709942400123,,",
            "Songkhla, 2024-03-09T00:00:01Z ,  3.5 ,x",
        ]
    )
    result = parse(write(tmp_path, "e.csv", content))
    assert result.rejected.height == 0
    assert result.readings.select("station", "timestamp", "muxPower1", "activePower1").rows() == [
        ("KhonKaen", utc(2024, 3, 9, 0, 0, 0, 500000), 12.0, None),
        ("ChiangMai", utc(2024, 3, 9, 0, 0, 0, 123000), None, None),
        ("Songkhla", utc(2024, 3, 9, 0, 0, 1), 3.5, None),
    ]


def test_csv_rows_that_do_not_parse_are_rejected(tmp_path: Path) -> None:
    content = "\n".join(
        [
            CSV_HEADER,
            "2024-03-09T00:00:00Z,KhonKaen,abc,1,,0,0,0,1,2,3,4",
            "2024-03-09T00:00:00Z,KhonKaen,1,1,,0,0,0,1,2,3",
            "2024-03-09T00:00:00Z,,1,1,,0,0,0,1,2,3,4",
            "yesterday,KhonKaen,1,1,,0,0,0,1,2,3,4",
            "2024-03-09 07:00:00,KhonKaen,1,1,,0,0,0,1,2,3,4",
            CSV_HEADER,  # a repeated header (files concatenated): non-data
            "2024-03-09T00:00:00Z,KhonKaen,1,1,,0,0,0,1,2,3,12.3.4",
            "2024-03-09T00:00:01Z,KhonKaen,1,1,,0,0,0,1,2,3,4",
        ]
    )
    result = parse(write(tmp_path, "e.csv", content))
    assert result.non_data == 2
    assert result.readings["line"].to_list() == [9]
    assert result.reasons() == {
        2: "activePower1 is not a number: 'abc'",
        3: "expected 12 fields, found 11",
        4: "missing station",
        5: "timestamp does not parse: 'yesterday'",
        6: "timestamp without UTC offset: '2024-03-09 07:00:00'",
        8: "muxPower4 is not a number: '12.3.4'",
    }


def test_csv_header_problems(tmp_path: Path) -> None:
    no_header = write(tmp_path, "a.csv", "2024-03-09T00:00:00Z,KhonKaen,1\n")
    with pytest.raises(LegacyLogError, match="no CSV header"):
        list(iter_batches(no_header, "C"))
    twice = write(tmp_path, "b.csv", "timestamp,station,muxPower1,muxPower1\n")
    with pytest.raises(LegacyLogError, match="repeats muxPower1"):
        list(iter_batches(twice, "C"))


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("batch_lines", [1, 3, 5, 1000])
def test_batches_continue_line_numbers(tmp_path: Path, batch_lines: int) -> None:
    lines: list[str] = []
    for i in range(23):
        stamp = f"2024-03-01 07:00:{i:02d}.000"
        lines.append(T_LINE if i == 0 else t_line(stamp))
        if i % 4 == 0:
            lines.append("2024-03-01 07:00:00.000 [WARN] [KhonKaen] WebSocket closed")
        if i == 10:
            lines.append(t_line(stamp, values="P1=ERR"))
    path = write(tmp_path, "m.log", "\n".join(lines) + "\n\n")
    result = parse(path, batch_lines=batch_lines)
    whole = parse(path)
    assert result.lines == len(lines) + 1 == whole.lines
    assert sum(result.batch_sizes) == result.lines
    assert all(size == batch_lines for size in result.batch_sizes[:-1])
    assert result.readings.equals(whole.readings)
    assert result.rejected.equals(whole.rejected)
    assert result.rejected.height == 1
    assert result.non_data == 7


def test_csv_header_found_in_a_later_batch(tmp_path: Path) -> None:
    content = "\n\n\n\n" + CSV_HEADER + "\n" + "2024-03-09T00:00:00Z,A,1,1,,0,0,0,1,2,3,4\n"
    result = parse(write(tmp_path, "e.csv", content), batch_lines=2)
    assert result.batch_sizes == [2, 2, 2]
    assert (result.lines, result.non_data) == (6, 5)
    assert result.readings["line"].to_list() == [6]


def test_readings_fit_the_reading_schema(tmp_path: Path) -> None:
    """The output goes to split_valid as it is: validity rules apply there, not here."""
    lines = [
        j_line("KhonKaen", "2024-03-01T00:00:01Z", '"activePower1": 1520.5'),
        j_line("KhonKaen", "2099-01-01T00:00:00Z", '"activePower1": 1'),
        j_line("Bad Name!", "2024-03-01T00:00:01Z", '"muxPower1": -5'),
    ]
    result = parse(write(tmp_path, "m.jsonl", "\n".join(lines)))
    assert result.readings.height == 3  # parsing rejects nothing here
    valid, rejected = split_valid(result.readings)
    assert valid["line"].to_list() == [1]
    assert rejected["line"].to_list() == [2, 3]


# --------------------------------------------------------------------------- shared samples


SAMPLE_FILES = {
    "monitor.log": "T",
    "monitor.log.1": "T",
    "monitor.log.2.gz": "T",
    "monitor-2024-03-05.jsonl": "J",
    "archive/monitor-2024-03-06.jsonl.gz": "J",
    "exports/export-march.csv": "C",
}


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared samples not available")
@pytest.mark.parametrize(("name", "fmt"), sorted(SAMPLE_FILES.items()))
@pytest.mark.parametrize("batch_lines", [500_000, 37])
def test_samples_count_every_line(name: str, fmt: str, batch_lines: int) -> None:
    path = SAMPLES / name
    assert detect_format(path) == fmt
    result = parse(path, batch_lines=batch_lines)
    data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert result.lines == editor_line_count(data)
    assert result.lines == result.non_data + result.readings.height + result.rejected.height


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared samples not available")
def test_samples_known_rejections() -> None:
    jsonl = parse(SAMPLES / "monitor-2024-03-05.jsonl")
    reasons = jsonl.reasons()
    assert reasons[jsonl.lines] == "malformed JSON"  # the last line, cut short
    assert 'activePower2 is not a number: "ERR"' in reasons.values()
    assert "muxPower1 is not a number: true" in reasons.values()
    csv = parse(SAMPLES / "exports/export-march.csv")
    assert set(csv.reasons().values()) == {"activePower1 is not a number: 'abc'"}
    assert csv.non_data == 2  # the header and the trailing blank line
    for name in ("monitor.log", "monitor.log.1", "monitor.log.2.gz"):
        text = parse(SAMPLES / name)
        assert text.rejected.height == 0
        assert text.readings.height > 0
