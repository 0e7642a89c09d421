"""Flow `energy-statements`: issue last month's statement per station and broadcaster.

Scheduled monthly after the month closes in the site's zone; a later run for the same
month records a new revision only when late data changed it, and says what changed.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from db.engine import make_engine
from db.migrate import require_current
from db.statements import previous_month, summary_markdown
from flows.naming import stamped
from powerwatch.settings import get_settings
from tasks.energy import issue_statement_task

# One table artifact per station (the Prefect UI lists them); more stations than this
# are in the files and the summary only.
MAX_STATION_TABLES = 50


@flow(name="energy-statements", flow_run_name=stamped("energy-statements"), log_prints=True)
def energy_statements(month: str | None = None, tz: str | None = None) -> int:
    """Runbook: check the schema, issue the statement, publish tables and the summary.
    Returns the revision issued (or confirmed)."""
    settings = get_settings()
    require_current(make_engine(settings.database_url))
    zone = tz or settings.energy_tz
    month = month or previous_month(zone)
    issued, daily = issue_statement_task(month, zone)
    times = ("period_start", "period_end", "opening_ts", "closing_ts")
    per_station = list(issued.statement.group_by("station", maintain_order=True))
    for (station, *_), rows in per_station[:MAX_STATION_TABLES]:
        create_table_artifact(
            key=f"statement-{str(station).lower().replace('_', '-').replace('.', '-')}",
            table=rows.drop("station").cast({c: str for c in times}).to_dicts(),
            description=f"{station}: energy statement {month} ({zone}), revision {issued.revision}",
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
