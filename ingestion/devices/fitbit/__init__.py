"""Fitbit: notifications and polling turned into windowed pulls, loaded by dlt into raw_fitbit.

Revised values replace old ones (merge on the natural key); a window is marked done only
after its rows are loaded, so a crash or an outage retries it instead of dropping it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dlt
import requests

from ingestion.devices.connections import (
    Connection,
    active_connections,
    advance_cursors,
    cursor_date,
    disconnect,
    find_connection,
    get_connections,
)
from ingestion.devices.fitbit.client import (
    FitbitApp,
    FitbitClient,
    FitbitError,
    ProviderUnavailable,
    RateLimited,
    TokenRevoked,
    UnexpectedResponse,
)
from ingestion.devices.resilience import BreakerOpen, CircuitBreaker
from ingestion.dlt_storage import keep_no_loaded_rows
from mdp.database import ConnectionParams, connect

log = logging.getLogger(__name__)

DATASET = "raw_fitbit"
METRICS_FOR_COLLECTION = {"activities": ("steps", "activities"), "body": ("weight",)}
METRICS = ("steps", "weight", "activities")
WEIGHT_MAX_DAYS = 31
ACTIVITY_PAGE_SIZE = 100
KM_PER_MILE = 1.609344
BACKFILL_DAYS = 90
BACKFILL_CHUNK_DAYS = 7
FIRST_SYNC_DAYS = 7


@dataclass
class SyncWindow:
    connection_id: str
    metric: str  # steps | weight | activities
    start: dt.date
    end: dt.date
    inbox_ids: list[int] = field(default_factory=list)
    backfill: bool = False  # history: low priority, advances backfill_progress, not the cursor


@dataclass
class InboxPlan:
    windows: list[SyncWindow]
    revoked: list[int]
    orphaned: list[int]
    read_at: dt.datetime  # inbox rows re-notified after this stay pending


@dataclass
class SyncResult:
    steps_rows: int = 0
    weight_rows: int = 0
    activity_rows: int = 0
    requests: int = 0
    windows_done: int = 0
    deferred: list[str] = field(default_factory=list)  # why some windows wait for the next run
    # the deferred that wait because of an error, not a limit: one entry per member
    failed: list[str] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)


def pending_inbox(
    params: ConnectionParams, limit: int = 10_000
) -> tuple[list[tuple[int, str, str, dt.date | None]], dt.datetime]:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select now()")
        read_at = cur.fetchone()[0]
        cur.execute(
            "select inbox_id, provider_user_id, collection_type, resource_date from devices.webhook_inbox"
            " where provider = 'fitbit' and processed_at is null order by inbox_id limit %s",
            (limit,),
        )
        return cur.fetchall(), read_at


def plan_from_inbox(params: ConnectionParams) -> InboxPlan:
    """Coalesced windows from notifications; plus inbox ids to close (revocations, unknown users)."""
    windows: dict[tuple[str, str], SyncWindow] = {}
    revoked: list[int] = []
    orphaned: list[int] = []
    pending, read_at = pending_inbox(params)
    for inbox_id, owner, collection, day in pending:
        connection = find_connection(params, "fitbit", owner)
        if connection is None or connection.status != "active":
            orphaned.append(inbox_id)
            continue
        if collection == "userRevokedAccess":
            disconnect(params, connection.connection_id, status="revoked")
            revoked.append(inbox_id)
            continue
        metrics = METRICS_FOR_COLLECTION.get(collection)
        if metrics is None or day is None:
            orphaned.append(inbox_id)
            continue
        for metric in metrics:
            key = (connection.connection_id, metric)
            window = windows.setdefault(key, SyncWindow(connection.connection_id, metric, day, day))
            window.start, window.end = min(window.start, day), max(window.end, day)
            window.inbox_ids.append(inbox_id)
    return InboxPlan(list(windows.values()), revoked, orphaned, read_at)


def plan_polling(
    params: ConnectionParams,
    today: dt.date,
    quiet_for: dt.timedelta = dt.timedelta(hours=1),
    first_sync_days: int = FIRST_SYNC_DAYS,
) -> list[SyncWindow]:
    """The backup path: connections that have not notified lately get cursor..today pulled."""
    now = dt.datetime.now(dt.UTC)
    windows = []
    for connection in active_connections(params, "fitbit"):
        if connection.last_notified_at and now - connection.last_notified_at < quiet_for:
            continue
        for metric in METRICS:
            since = cursor_date(connection, metric)
            # today and yesterday are re-read: a day's totals keep changing until it is over
            # a reconnect keeps the cursor, so only the gap since the last sync is pulled
            start = (
                min(since, today - dt.timedelta(days=1))
                if since
                else today - dt.timedelta(days=first_sync_days - 1)
            )
            windows.append(SyncWindow(connection.connection_id, metric, start, today))
    return windows


def plan_backfill(
    params: ConnectionParams, chunks_per_connection: int = 1, limit: int | None = None
) -> list[SyncWindow]:
    """The next 7-day chunks of each connection's 3-month history, newest first.

    Planned after recent windows, so history never delays fresh data; progress is stored per
    metric after each load, so a crash resumes at the chunk that was not loaded.
    """
    windows: list[SyncWindow] = []
    for connection in active_connections(params, "fitbit"):
        connected_on = connection.created_at.date()
        target = connected_on - dt.timedelta(days=BACKFILL_DAYS)
        for metric in METRICS:
            done = connection.backfill_progress.get(metric)
            oldest = (
                dt.date.fromisoformat(done)
                if done
                else connected_on - dt.timedelta(days=FIRST_SYNC_DAYS - 1)
            )
            for _ in range(chunks_per_connection):
                if oldest <= target:
                    break
                end = oldest - dt.timedelta(days=1)
                start = max(target, end - dt.timedelta(days=BACKFILL_CHUNK_DAYS - 1))
                windows.append(
                    SyncWindow(connection.connection_id, metric, start, end, backfill=True)
                )
                oldest = start
        if limit is not None and len(windows) >= limit:
            break
    return windows[:limit] if limit is not None else windows


def backfill_status(params: ConnectionParams) -> dict[str, int]:
    """How many active connections still have history to fetch (for Dagster metadata)."""
    pending = sum(1 for _ in plan_backfill(params))
    return {"backfill_chunks_pending_next_run": pending}


def record_backfill(params: ConnectionParams, window: SyncWindow) -> None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections set backfill_progress = backfill_progress"
            " || jsonb_build_object(%s::text, %s::text) where connection_id = %s",
            (window.metric, window.start.isoformat(), window.connection_id),
        )


def _chunks(start: dt.date, end: dt.date, days: int):
    while start <= end:
        stop = min(end, start + dt.timedelta(days=days - 1))
        yield start, stop
        start = stop + dt.timedelta(days=1)


def fetch_window(client: FitbitClient, window: SyncWindow) -> list[dict]:
    fetch = {"steps": _fetch_steps, "weight": _fetch_weights, "activities": _fetch_activities}
    return fetch[window.metric](client, window, dt.datetime.now(dt.UTC))


T = TypeVar("T")


def whole_number(value: Any) -> int:
    return int(float(value))  # Fitbit sends step totals as strings ("175")


def number(value: Any) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("not finite")
    return result


def iso_date(value: Any) -> dt.date:
    return dt.date.fromisoformat(value)


def iso_datetime(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _items(body: dict, key: str, where: str) -> list[Any]:
    items = body.get(key, [])
    if not isinstance(items, list):
        raise UnexpectedResponse(f"{where}: '{key}' is not a list")
    return items


def _field(item: Any, name: str, convert: Callable[[Any], T], where: str) -> T:
    """`item[name]` converted; UnexpectedResponse names the item and field, never the value."""
    if not isinstance(item, dict) or item.get(name) is None:
        raise UnexpectedResponse(f"{where}: '{name}' is missing")
    try:
        return convert(item[name])
    except (TypeError, ValueError, OverflowError):
        raise UnexpectedResponse(
            f"{where}: '{name}' is not a valid {convert.__name__.replace('_', ' ')}"
        ) from None


def _optional(item: dict, name: str, convert: Callable[[Any], T], where: str) -> T | None:
    return None if item.get(name) is None else _field(item, name, convert, where)


def _fetch_steps(client: FitbitClient, window: SyncWindow, fetched_at: dt.datetime) -> list[dict]:
    connection = client.connection
    body = client.get_json(
        f"/1/user/-/activities/steps/date/{window.start.isoformat()}/{window.end.isoformat()}.json"
    )
    rows = []
    for index, item in enumerate(_items(body, "activities-steps", "steps")):
        where = f"steps item [{index}]"
        with _set_aside_if_unreadable(connection):
            rows.append(
                {
                    "connection_id": connection.connection_id,
                    "member_id": connection.member_id,
                    "activity_date": _field(item, "dateTime", iso_date, where),
                    "steps": _field(item, "value", whole_number, where),
                    "timezone": connection.timezone,
                    "fetched_at": fetched_at,
                }
            )
    return rows


@contextlib.contextmanager
def _set_aside_if_unreadable(connection: Connection) -> Iterator[None]:
    """One item Fitbit answered that we cannot read (a field missing or of the wrong type) is
    set aside, logged with its index and field (never its value); the window's other items
    load. Raised, it failed the whole window on every later sync too: the same answer came
    back each time, and the member's later data never loaded."""
    try:
        yield
    except UnexpectedResponse as exc:
        log.warning(
            "fitbit %s: %s: item set aside, the rest of the window loads",
            connection.connection_id,
            exc,
        )


def _fetch_weights(client: FitbitClient, window: SyncWindow, fetched_at: dt.datetime) -> list[dict]:
    connection = client.connection
    rows: list[dict] = []
    for start, end in _chunks(window.start, window.end, WEIGHT_MAX_DAYS):
        body = client.get_json(
            f"/1/user/-/body/log/weight/date/{start.isoformat()}/{end.isoformat()}.json"
        )
        for index, item in enumerate(_items(body, "weight", "weight")):
            where = f"weight item [{index}]"
            with _set_aside_if_unreadable(connection):
                rows.append(
                    {
                        "connection_id": connection.connection_id,
                        "member_id": connection.member_id,
                        "log_id": _field(item, "logId", int, where),
                        "log_date": _field(item, "date", iso_date, where),
                        "log_time": item.get("time"),
                        "weight_kg": _field(item, "weight", number, where),
                        "bmi": _optional(item, "bmi", number, where),
                        "source": item.get("source"),
                        "timezone": connection.timezone,
                        "fetched_at": fetched_at,
                    }
                )
    return rows


def _fetch_activities(
    client: FitbitClient, window: SyncWindow, fetched_at: dt.datetime
) -> list[dict]:
    """Logged activities that started on the window's local days, paged oldest first.

    The list has no end date: paging stops at the first activity after the window.
    """
    connection = client.connection
    rows: list[dict] = []
    offset = 0
    while True:
        body = client.get_json(
            f"/1/user/-/activities/list.json?afterDate={window.start.isoformat()}"
            f"&sort=asc&limit={ACTIVITY_PAGE_SIZE}&offset={offset}"
        )
        entries = _items(body, "activities", "activity list")
        for index, item in enumerate(entries):
            where = f"activity item [{offset + index}]"
            with _set_aside_if_unreadable(connection):
                started = _field(item, "startTime", iso_datetime, where)
                if started.date() > window.end:
                    return rows
                rows.append(activity_row(item, started, connection, fetched_at, where))
        pagination = body.get("pagination")
        if not entries or not (isinstance(pagination, dict) and pagination.get("next")):
            return rows
        offset += len(entries)


def activity_row(
    item: dict,
    started: dt.datetime,
    connection: Connection,
    fetched_at: dt.datetime,
    where: str = "activity",
) -> dict:
    distance = _optional(item, "distance", number, where)
    if distance is not None and item.get("distanceUnit", "Kilometer") == "Mile":
        distance *= KM_PER_MILE
    return {
        "connection_id": connection.connection_id,
        "member_id": connection.member_id,
        "log_id": _field(item, "logId", int, where),
        "activity_name": item.get("activityName"),
        "activity_type_id": _optional(item, "activityTypeId", int, where),
        "start_time": started,
        "local_date": started.date(),
        "duration_ms": _optional(item, "duration", whole_number, where),
        "steps": _optional(item, "steps", whole_number, where),
        "calories": _optional(item, "calories", number, where),
        "distance_km": distance,
        "last_modified": item.get("lastModified"),
        "timezone": connection.timezone,
        "fetched_at": fetched_at,
    }


@dlt.resource(
    name="daily_steps",
    primary_key=("connection_id", "activity_date"),
    write_disposition="merge",
    columns={"activity_date": {"data_type": "date"}, "steps": {"data_type": "bigint"}},
)
def daily_steps(rows: list[dict]):
    """One row per connection and member-local day; a revised total replaces the old one."""
    yield rows


@dlt.resource(
    name="weight_logs",
    primary_key=("connection_id", "log_id"),
    write_disposition="merge",
    columns={
        "log_date": {"data_type": "date"},
        "weight_kg": {"data_type": "double"},
        "bmi": {"data_type": "double"},
        "log_time": {"data_type": "text"},
        "source": {"data_type": "text"},
    },
)
def weight_logs(rows: list[dict]):
    """Body weight logs in kg (we never send Accept-Language: en_US, so no pounds arrive)."""
    yield rows


@dlt.resource(
    name="activity_logs",
    primary_key=("connection_id", "log_id"),
    write_disposition="merge",
    columns={
        "start_time": {"data_type": "timestamp"},
        "local_date": {"data_type": "date"},
        "duration_ms": {"data_type": "bigint"},
        "steps": {"data_type": "bigint"},
        "calories": {"data_type": "double"},
        "distance_km": {"data_type": "double"},
        "activity_type_id": {"data_type": "bigint"},
        "activity_name": {"data_type": "text"},
        "last_modified": {"data_type": "text"},
    },
)
def activity_logs(rows: list[dict]):
    """Logged workouts (walks, runs, rides); an edited log replaces the old one."""
    yield rows


def fitbit_pipeline(params: ConnectionParams, pipelines_dir: Path) -> dlt.Pipeline:
    keep_no_loaded_rows()
    return dlt.pipeline(
        pipeline_name="devices_fitbit",
        destination=dlt.destinations.postgres(credentials=params.dlt_credentials()),
        dataset_name=DATASET,
        pipelines_dir=str(pipelines_dir),
    )


FETCH_WORKERS = 8  # members fetched at once: the provider's latency, not our CPU, is the bound


@dataclass
class _ConnectionFetch:
    """What fetching one connection's windows produced (built in a worker thread)."""

    rows: dict[str, list[dict]] = field(default_factory=lambda: {m: [] for m in METRICS})
    done: list[SyncWindow] = field(default_factory=list)
    waiting_inbox_ids: set[int] = field(default_factory=set)
    deferred: str | None = None
    failed: str | None = None  # why, if the windows wait because of an error (also deferred)
    revoked: bool = False
    requests: int = 0


def _failure_text(exc: BaseException) -> str:
    """Why a member's fetch failed, for logs and metadata: our own messages say what and
    where without values; others (a KeyError's key is fine, a ValueError may quote data)
    only by type."""
    if isinstance(exc, FitbitError):
        return str(exc)
    if isinstance(exc, KeyError):
        return f"KeyError {exc}"
    return type(exc).__name__


def sync_fitbit(
    app: FitbitApp,
    params: ConnectionParams,
    windows: list[SyncWindow],
    pipelines_dir: Path,
    read_at: dt.datetime | None = None,
    workers: int = FETCH_WORKERS,
) -> SyncResult:
    """Fetch every window it can (members in parallel), load them in one dlt run, then close
    inbox rows and advance cursors."""
    by_connection: dict[str, list[SyncWindow]] = defaultdict(list)
    for window in windows:
        by_connection[window.connection_id].append(window)
    connections = get_connections(params, list(by_connection))
    breaker = CircuitBreaker(params, "fitbit", closed_read_ttl=1.0, success_batch=50)
    sessions = threading.local()  # one keep-alive pool per worker thread

    def fetch(connection_id: str) -> _ConnectionFetch:
        outcome = _ConnectionFetch()
        connection = connections.get(connection_id)
        if connection is None or connection.status != "active":
            return outcome
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        client = FitbitClient(app, params, connection, session=sessions.session, breaker=breaker)
        own_windows = by_connection[connection_id]
        try:
            for window in own_windows:
                outcome.rows[window.metric].extend(fetch_window(client, window))
                outcome.done.append(window)
        except TokenRevoked:
            disconnect(params, connection_id, status="revoked")
            outcome.revoked = True
        except (RateLimited, ProviderUnavailable, BreakerOpen) as exc:
            # the window waits: its inbox rows and cursor stay as they are for a later run
            outcome.deferred = f"{connection_id}: {exc}"
            for window in own_windows[len(outcome.done) :]:
                outcome.waiting_inbox_ids.update(window.inbox_ids)
        except (FitbitError, requests.RequestException, KeyError, TypeError, ValueError) as exc:
            # one member's refusal (403, a failed refresh) or unreadable answer: their
            # windows wait and are counted as failed; everyone else's data still loads
            window = own_windows[len(outcome.done)]
            outcome.failed = (
                f"{connection_id}: {window.metric} {window.start}..{window.end} failed:"
                f" {_failure_text(exc)}"
            )
            outcome.deferred = outcome.failed
            for window in own_windows[len(outcome.done) :]:
                outcome.waiting_inbox_ids.update(window.inbox_ids)
        finally:
            outcome.requests = client.requests_made
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = dict(zip(by_connection, pool.map(fetch, by_connection), strict=True))
    breaker.flush()
    return _load_and_close(params, pipelines_dir, outcomes, read_at)


def _load_and_close(
    params: ConnectionParams,
    pipelines_dir: Path,
    outcomes: dict[str, _ConnectionFetch],
    read_at: dt.datetime | None,
) -> SyncResult:
    result = SyncResult()
    rows: dict[str, list[dict]] = {metric: [] for metric in METRICS}
    done: list[SyncWindow] = []
    waiting_inbox_ids: set[int] = set()  # a notification closes only when all its windows are done
    for connection_id, outcome in outcomes.items():
        for metric, fetched in outcome.rows.items():
            rows[metric].extend(fetched)
        done.extend(outcome.done)
        waiting_inbox_ids |= outcome.waiting_inbox_ids
        result.requests += outcome.requests
        if outcome.deferred:
            result.deferred.append(outcome.deferred)
        if outcome.failed:
            result.failed.append(outcome.failed)
            log.warning("fitbit sync of %s", outcome.failed)
        if outcome.revoked:
            result.disconnected.append(connection_id)
    if any(rows.values()):
        fitbit_pipeline(params, pipelines_dir).run(
            [
                daily_steps(rows["steps"]),
                weight_logs(rows["weight"]),
                activity_logs(rows["activities"]),
            ]
        )
    result.steps_rows, result.weight_rows = len(rows["steps"]), len(rows["weight"])
    result.activity_rows = len(rows["activities"])
    recent = [window for window in done if not window.backfill]
    advance_cursors(params, [(w.connection_id, w.metric, w.end) for w in recent])
    for window in done:
        if window.backfill:
            record_backfill(params, window)
    closable = {i for w in recent for i in w.inbox_ids} - waiting_inbox_ids
    mark_processed(params, sorted(closable), read_at)
    result.windows_done = len(done)
    return result


def mark_processed(
    params: ConnectionParams, inbox_ids: list[int], read_at: dt.datetime | None = None
) -> None:
    """Close inbox rows; one re-notified after we read it stays pending for the next run."""
    if not inbox_ids:
        return
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.webhook_inbox set processed_at = now() where inbox_id = any(%s)"
            " and (%s::timestamptz is null or last_received_at <= %s::timestamptz)",
            (inbox_ids, read_at, read_at),
        )


RAW_TABLES_DDL = f"""
create schema if not exists {DATASET};
create table if not exists {DATASET}.daily_steps (
    connection_id text not null, member_id text, activity_date date not null, steps bigint,
    timezone text, fetched_at timestamptz, _dlt_load_id text not null, _dlt_id text not null
);
create table if not exists {DATASET}.activity_logs (
    connection_id text not null, member_id text, log_id bigint not null, activity_name text,
    activity_type_id bigint, start_time timestamptz, local_date date, duration_ms bigint,
    steps bigint, calories double precision, distance_km double precision, last_modified text,
    timezone text, fetched_at timestamptz, _dlt_load_id text not null, _dlt_id text not null
);
create table if not exists {DATASET}.weight_logs (
    connection_id text not null, member_id text, log_id bigint not null, log_date date,
    log_time text, weight_kg double precision, bmi double precision, source text, timezone text,
    fetched_at timestamptz, _dlt_load_id text not null, _dlt_id text not null
);
"""


def ensure_raw_tables(params: ConnectionParams) -> None:
    """Empty raw tables before the first sync, so dbt builds on a fresh install."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(RAW_TABLES_DDL)
