"""Keeping the member marts current between files.

A run that imports a file rebuilds the marts, but two things change them without a file:
- the calendar. `dim_member.coverage_status` and the eligibility history's status are
  derived from the dates on the day dbt builds (the API judges dates against its own today
  anyway), so a daily build just after midnight records the coverage that began or ended;
- a run that stopped between the import and dbt (a crash, a kill, a deploy). Its files are
  loaded and gone from the inbox, so no sensor sees them again: the mart would stay behind
  until the partner's next file. The sensor below notices imports the mart has not caught up
  with and asks for the build once per such import.
"""

import datetime as dt

import dagster as dg

from ingestion.partners import DATASET, IMPORTS_TABLE
from mdp.database import connect
from orchestration.defs.partners.assets import RAW_KEYS
from orchestration.resources import PlatformResource

# a run imports, then builds: an import this much older than the mart's refresh belongs to a
# run that did not get to its build (the longest import-to-build gap measured is ~1 min)
BEHIND_AFTER = dt.timedelta(minutes=10)
SERVING_MART = "mart_eligibility"

_raw = dg.AssetSelection.assets(*RAW_KEYS)
member_marts_refresh_job = dg.define_asset_job(
    "member_marts_refresh",
    selection=_raw.downstream() - _raw,
    description="Rebuild the dbt models built from the partner raw tables (no import).",
)

daily_member_marts_schedule = dg.ScheduleDefinition(
    name="member_marts_daily",
    cron_schedule="5 0 * * *",
    job=member_marts_refresh_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Just after midnight: statuses derived from coverage dates move with the "
    "calendar, and the eligibility history records coverage that began or ended.",
)

_LATEST_IMPORT_AND_REFRESH = f"""
select
    (select file_id from {DATASET}.{IMPORTS_TABLE}
     where status = 'loaded' and finished_at is not null
     order by finished_at desc limit 1),
    (select max(finished_at) from {DATASET}.{IMPORTS_TABLE} where status = 'loaded'),
    (select refreshed_at from serving.mart_refreshes where mart = %s),
    now()
"""


@dg.sensor(
    job=member_marts_refresh_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Rebuilds the member marts when a loaded file has waited more than 10 minutes "
    "for them (its run stopped between the import and dbt).",
)
def member_marts_behind_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource):
    try:
        with connect(platform.params) as conn, conn.cursor() as cur:
            cur.execute(_LATEST_IMPORT_AND_REFRESH, (SERVING_MART,))
            file_id, loaded_at, refreshed_at, now = cur.fetchone()
    except Exception as exc:  # no tables yet (a fresh database) or no database: nothing to do
        return dg.SkipReason(f"import ledger not readable ({type(exc).__name__})")
    if file_id is None:
        return dg.SkipReason("no file loaded yet")
    if refreshed_at is not None and refreshed_at >= loaded_at:
        return dg.SkipReason("the marts include the latest loaded file")
    if now - loaded_at < BEHIND_AFTER:
        return dg.SkipReason("the latest import's own run may still be building")
    context.log.info("the marts are behind import %s: rebuilding them", file_id)
    return dg.RunRequest(run_key=f"behind-{file_id}", tags={"reason": "marts behind imports"})
