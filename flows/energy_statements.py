"""Flow `energy-statements`: issue last month's statement per station and broadcaster.

Scheduled monthly after the month closes in the site's zone; a later run for the same
month records a new revision only when late data changed it, and says what changed.
"""

from __future__ import annotations

import polars as pl
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch.core.settings import get_settings
from powerwatch.rollups.statements import previous_month, summary_markdown
from tasks.energy import issue_statement_task

# One table artifact per station (the Prefect UI lists them); more stations than this
# are in the files and the summary only.
MAX_STATION_TABLES = 50


def artifact_rows(rows: pl.DataFrame) -> list[dict[str, object]]:
    """One station's statement for the UI: per broadcaster what an operator reads first
    (kWh, how much estimated, completeness, share), rounded to what a person reads,
    narrow enough for 1,440 px; the exact figures and the times are in the issued files."""
    return rows.select(
        "broadcaster",
        pl.col("consumption_kwh").round(3).alias("kWh"),
        pl.col("estimated_kwh").round(3).alias("est kWh"),
        pl.col("completeness").round(4),
        pl.col("share").round(4),
        pl.col("opening_kwh").round(2).alias("opening kWh"),
        pl.col("closing_kwh").round(2).alias("closing kWh"),
        "resets",
        "wraps",
        "flagged",
    ).to_dicts()


@flow(name="energy-statements", flow_run_name=stamped("energy-statements"), log_prints=True)
def energy_statements(month: str | None = None, tz: str | None = None) -> int:
    """Runbook: check the schema, issue the statement, publish tables and the summary.
    Returns the revision issued (or confirmed)."""
    settings = get_settings()
    require_current(make_engine(settings.database_url))
    zone = tz or settings.energy_tz
    month = month or previous_month(zone)
    issued, daily = issue_statement_task(month, zone)
    per_station = list(issued.statement.group_by("station", maintain_order=True))
    for (station, *_), rows in per_station[:MAX_STATION_TABLES]:
        create_table_artifact(
            key=f"statement-{str(station).lower().replace('_', '-').replace('.', '-')}",
            table=artifact_rows(rows),
            description=f"{station}: energy statement {month} ({zone}), revision "
            f"{issued.revision}; every column and the meter reading times in the CSV file",
        )
    create_markdown_artifact(
        key="energy-statement", markdown=summary_markdown(issued, daily), description=month
    )
    if issued.new:
        print(f"statement {month} ({zone}): revision {issued.revision} issued")
    else:
        print(f"statement {month} ({zone}): unchanged, revision {issued.revision}")
    for line in issued.changes:
        print(f"changed: {line}")
    return issued.revision
