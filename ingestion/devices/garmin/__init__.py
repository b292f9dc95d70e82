"""Garmin Health API: push (and ping) notifications from the inbox into raw_garmin by dlt.

Garmin pushes whole summaries; `summaryId` is stable and re-sent with updated values, so it
is the merge key and the newest delivery wins. Epochs are not loaded: they are 15-minute
slices of the same steps as dailies, and loading both double-counts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dlt
import requests

from ingestion.devices.connections import Connection, disconnect, find_connection
from ingestion.devices.garmin.backfill import clear_denied
from ingestion.devices.garmin.budget import BudgetExhausted, DailyBudget
from ingestion.devices.garmin.fields import InvalidSummary, check_summary, utc_instant
from ingestion.devices.garmin.settings import GarminSettings
from ingestion.dlt_storage import keep_no_loaded_rows
from mdp.database import ConnectionParams, connect

log = logging.getLogger(__name__)

DATASET = "raw_garmin"
LOADED_TYPES = ("dailies", "bodyComps", "activities")
TIMEOUT = (5, 20)

RAW_TABLES_DDL = f"""
create schema if not exists {DATASET};
create table if not exists {DATASET}.dailies (
    summary_id text not null, connection_id text, member_id text, calendar_date date,
    start_time timestamptz, utc_offset_seconds bigint, duration_seconds bigint, steps bigint,
    distance_m double precision, active_kcal double precision, received_at timestamptz,
    _dlt_load_id text not null, _dlt_id text not null
);
create table if not exists {DATASET}.body_comps (
    summary_id text not null, connection_id text, member_id text, measured_at timestamptz,
    utc_offset_seconds bigint, weight_kg double precision, body_fat_percent double precision,
    bmi double precision, received_at timestamptz, _dlt_load_id text not null, _dlt_id text not null
);
create table if not exists {DATASET}.activities (
    summary_id text not null, connection_id text, member_id text, activity_id text,
    activity_name text, activity_type text, start_time timestamptz, utc_offset_seconds bigint,
    duration_seconds bigint, distance_m double precision, active_kcal double precision,
    steps bigint, received_at timestamptz, _dlt_load_id text not null, _dlt_id text not null
);
"""


def ensure_raw_tables(params: ConnectionParams) -> None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(RAW_TABLES_DDL)


@dataclass
class GarminResult:
    rows: dict[str, int] = field(default_factory=dict)
    deregistered: int = 0
    pings_pulled: int = 0
    ignored: int = 0
    deferred: list[str] = field(default_factory=list)
    # items set aside for a wrong field: "inbox <id>: <what and where>", no values
    rejected: list[str] = field(default_factory=list)


def _utc(seconds: Any) -> dt.datetime | None:
    return utc_instant(seconds) if seconds is not None else None


def local_date(item: dict) -> dt.date | None:
    """`calendarDate`, else the UTC date of start + offset: the member's day (Garmin's own
    example dailies leave calendarDate out)."""
    if item.get("calendarDate"):
        return dt.date.fromisoformat(item["calendarDate"])
    start = item.get("startTimeInSeconds")
    if start is None:
        return None
    return utc_instant(start + (item.get("startTimeOffsetInSeconds") or 0)).date()


def daily_row(item: dict, connection: Connection, received_at: dt.datetime) -> dict:
    check_summary(item)
    return {
        "summary_id": str(item["summaryId"]),
        "connection_id": connection.connection_id,
        "member_id": connection.member_id,
        "calendar_date": local_date(item),
        "start_time": _utc(item.get("startTimeInSeconds")),
        "utc_offset_seconds": item.get("startTimeOffsetInSeconds"),
        "duration_seconds": item.get("durationInSeconds"),
        "steps": item.get("steps"),
        "distance_m": item.get("distanceInMeters"),
        "active_kcal": item.get("activeKilocalories"),
        "received_at": received_at,
    }


def body_comp_row(item: dict, connection: Connection, received_at: dt.datetime) -> dict:
    check_summary(item)
    grams = item.get("weightInGrams")
    return {
        "summary_id": str(item["summaryId"]),
        "connection_id": connection.connection_id,
        "member_id": connection.member_id,
        "measured_at": _utc(item.get("measurementTimeInSeconds")),
        "utc_offset_seconds": item.get("measurementTimeOffsetInSeconds"),
        "weight_kg": grams / 1000.0 if grams is not None else None,
        "body_fat_percent": item.get("bodyFatInPercent"),
        "bmi": item.get("bodyMassIndex"),
        "received_at": received_at,
    }


def activity_row(item: dict, connection: Connection, received_at: dt.datetime) -> dict:
    check_summary(item)
    return {
        "summary_id": str(item["summaryId"]),
        "connection_id": connection.connection_id,
        "member_id": connection.member_id,
        "activity_id": str(item.get("activityId") or ""),
        "activity_name": item.get("activityName"),
        "activity_type": item.get("activityType"),
        "start_time": _utc(item.get("startTimeInSeconds")),
        "utc_offset_seconds": item.get("startTimeOffsetInSeconds"),
        "duration_seconds": item.get("durationInSeconds"),
        "distance_m": item.get("distanceInMeters"),
        "active_kcal": item.get("activeKilocalories"),
        "steps": item.get("steps"),
        "received_at": received_at,
    }


BUILDERS = {"dailies": daily_row, "bodyComps": body_comp_row, "activities": activity_row}
TABLES = {"dailies": "dailies", "bodyComps": "body_comps", "activities": "activities"}
REJECTED_KEY = "_mdp_rejected"  # added to a closed inbox row's payload: why items were set aside


def summary_row(
    summary_type: str, summary: Any, connection: Connection, received_at: dt.datetime
) -> dict:
    """The raw row for one summary; raises InvalidSummary saying which field is wrong."""
    if not isinstance(summary, dict):
        raise InvalidSummary(f"is a {type(summary).__name__}, not a JSON object")
    if summary.get("summaryId") is None:
        raise InvalidSummary("is missing", "summaryId")
    try:
        return BUILDERS[summary_type](summary, connection, received_at)
    except InvalidSummary:
        raise
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        # a value that passed the checks yet cannot be converted (e.g. start + offset
        # beyond year 9999): still one item's problem, not the run's
        raise InvalidSummary(f"cannot be read ({type(exc).__name__})") from None


def _resource(table: str, rows: list[dict]):
    return dlt.resource(
        rows,
        name=table,
        primary_key="summary_id",
        write_disposition="merge",
        columns={
            "calendar_date": {"data_type": "date"},
            "steps": {"data_type": "bigint"},
            "weight_kg": {"data_type": "double"},
            "distance_m": {"data_type": "double"},
        },
    )


def garmin_pipeline(params: ConnectionParams, pipelines_dir: Path) -> dlt.Pipeline:
    keep_no_loaded_rows()
    return dlt.pipeline(
        pipeline_name="devices_garmin",
        destination=dlt.destinations.postgres(credentials=params.dlt_credentials()),
        dataset_name=DATASET,
        pipelines_dir=str(pipelines_dir),
    )


GARMIN_API_ORIGIN = ("https", "apis.garmin.com")  # where real ping callbacks point


class UntrustedCallback(ValueError):
    """A ping's callbackURL on a host that is not Garmin's: the member's token is not sent."""


def trusted_callback(url: object, api_base_url: str | None) -> bool:
    """Whether a callbackURL points at the Garmin API (GARMIN_API_BASE_URL's origin when set,
    the emulator's locally; else Garmin's own): the pull sends the member's token there."""
    if not isinstance(url, str):
        return False
    try:
        parsed = urlsplit(url)
        if api_base_url:
            base = urlsplit(api_base_url)
            return (parsed.scheme, parsed.hostname, parsed.port) == (
                base.scheme,
                base.hostname,
                base.port,
            )
        return (parsed.scheme, parsed.hostname) == GARMIN_API_ORIGIN and parsed.port in (None, 443)
    except ValueError:  # a port that is not a number
        return False


def pull_ping(
    item: dict,
    connection: Connection,
    session: requests.Session | None = None,
    budget: DailyBudget | None = None,
    api_base_url: str | None = None,
) -> list[dict]:
    """A ping names a callbackURL holding the summaries; fetch it with the member's token,
    only from the Garmin API's origin (UntrustedCallback otherwise: anyone who knows our
    client id could send a ping naming their own server).

    The pull is paid for from the daily budget first (BudgetExhausted: it waits).
    """
    if not trusted_callback(item.get("callbackURL"), api_base_url):
        raise UntrustedCallback("its callbackURL is not on the Garmin API's host")
    if budget is not None:
        budget.take()
    session = session or requests.Session()
    response = session.get(
        item["callbackURL"],
        headers={"Authorization": f"Bearer {connection.access_token}"},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    body = response.json()
    return body if isinstance(body, list) else []


def process_garmin_inbox(
    params: ConnectionParams,
    pipelines_dir: Path,
    limit: int = 20_000,
    budget: DailyBudget | None = None,
) -> GarminResult:
    """Load pending Garmin notifications; rows close only after their data is loaded.

    Ping pulls spend the shared daily budget (by default GARMIN_DAILY_BUDGET); once it is
    used up the remaining pings stay pending until the next day.
    """
    result = GarminResult()
    settings = GarminSettings.from_env()
    api_base_url = settings.api_base_url
    budget = budget or DailyBudget(params, "garmin", settings.daily_budget)
    exhausted: BudgetExhausted | None = None
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select now()")
        read_at = cur.fetchone()[0]
        cur.execute(
            "select inbox_id, provider_user_id, collection_type, payload, last_received_at"
            " from devices.webhook_inbox where provider = 'garmin' and processed_at is null"
            " order by inbox_id limit %s",
            (limit,),
        )
        pending = cur.fetchall()
    rows: dict[str, dict[str, dict]] = {table: {} for table in TABLES.values()}
    done: list[int] = []
    rejected: dict[int, list[str]] = {}  # inbox_id -> what was wrong with its items
    for inbox_id, user_id, summary_type, item, received_at in pending:
        connection = find_connection(params, "garmin", user_id) if user_id else None
        if summary_type in ("deregistrations", "userPermissionsChange"):
            if connection is not None and summary_type == "deregistrations":
                disconnect(params, connection.connection_id, status="revoked")
                result.deregistered += 1
            elif connection is not None:
                clear_denied(params, connection.connection_id)
            done.append(inbox_id)
            continue
        if connection is None or connection.status != "active" or summary_type not in BUILDERS:
            result.ignored += 1
            done.append(inbox_id)  # epochs and unknown users are closed, not loaded
            continue
        items = [item]
        if "callbackURL" in item:
            if exhausted is not None:
                result.deferred.append(f"{connection.connection_id}: {exhausted}")
                continue
            try:
                items = pull_ping(item, connection, budget=budget, api_base_url=api_base_url)
                result.pings_pulled += 1
            except UntrustedCallback as exc:
                rejected[inbox_id] = [f"ping: {exc}; not pulled"]
                log.warning("garmin inbox row %d: ping set aside: %s", inbox_id, exc)
                done.append(inbox_id)
                continue
            except BudgetExhausted as exc:
                exhausted = exc  # the row stays pending: pulled once the day turns
                result.deferred.append(f"{connection.connection_id}: {exc}")
                continue
            except requests.RequestException as exc:
                result.deferred.append(
                    f"{connection.connection_id}: ping pull failed: {type(exc).__name__}"
                )
                continue
        table = TABLES[summary_type]
        problems = []
        for index, summary in enumerate(items):
            try:
                row = summary_row(summary_type, summary, connection, received_at)
            except InvalidSummary as exc:
                where = f"item [{index}] of the pulled " if "callbackURL" in item else ""
                problems.append(f"{where}{summary_type} summary: {exc}")
                continue
            # later deliveries of the same summaryId carry revised values: the last one wins
            rows[table][row["summary_id"]] = row
        if problems:
            rejected[inbox_id] = problems
            # field names and our own row id only: never values, tokens or Garmin user ids
            log.warning("garmin inbox row %d: set aside %s", inbox_id, "; ".join(problems))
        done.append(inbox_id)
    loaded = {table: list(by_id.values()) for table, by_id in rows.items() if by_id}
    if loaded:
        garmin_pipeline(params, pipelines_dir).run(
            [_resource(table, table_rows) for table, table_rows in loaded.items()]
        )
    result.rows = {table: len(table_rows) for table, table_rows in loaded.items()}
    result.rejected = [f"inbox {i}: {'; '.join(problems)}" for i, problems in rejected.items()]
    if done:
        close_inbox_rows(params, done, rejected, read_at)
    return result


def close_inbox_rows(
    params: ConnectionParams,
    inbox_ids: list[int],
    rejected: dict[int, list[str]],
    read_at: dt.datetime,
) -> None:
    """Mark rows processed; a row with set-aside items keeps why under REJECTED_KEY.

    A row re-delivered after it was read stays pending for the next run.
    """
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.webhook_inbox as inbox set processed_at = now(),"
            " payload = case when why.problems is null then inbox.payload"
            "   else inbox.payload || jsonb_build_object(%s::text, why.problems::jsonb) end"
            " from unnest(%s::bigint[]) as ids(inbox_id)"
            " left join unnest(%s::bigint[], %s::text[]) as why(inbox_id, problems)"
            "   using (inbox_id)"
            " where inbox.inbox_id = ids.inbox_id and inbox.last_received_at <= %s",
            (
                REJECTED_KEY,
                inbox_ids,
                list(rejected),
                [json.dumps(problems) for problems in rejected.values()],
                read_at,
            ),
        )
