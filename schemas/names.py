"""What a station name may be: the one pattern the registry and the reading schema share.

Apart from `schemas.channels` (which defines Polars dtypes) so that the long-lived site
supervisor (`powerwatch serve`), which reads the registry, never imports Polars: resident
memory it would hold for the life of the site (issue 11; docs/benchmarks.md, "Tuning
decisions").
"""

STATION_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
