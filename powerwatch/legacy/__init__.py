"""Legacy log files (spec/legacy-logs.md): format detection and parsing, no database.

`detect_format(path)` gives "T", "J", "C" or None (not a recognised log format;
`why_not_detected(path)` says why).
`iter_batches(path, fmt, tz=...)` yields `ParsedBatch`es: `readings` (the
`LANDING_COLUMNS` plus `line`, for `schemas.reading.split_valid`), `rejected`
(`line`, `raw`, `reason`: lines that are readings but do not parse), and the
counts, with `lines == non_data + readings.height + rejected.height`.
"""
