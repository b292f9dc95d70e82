"""Garmin history on connect: backfill requests that Garmin answers later by push.

Each connection asks for `backfill_days` before it was connected, per summary type, in
windows of at most `backfill_window_days`, newest first. The windows hang off the connection
time, so every run plans the same bounds and a repeated request is answered 409, which
counts as requested. Progress is kept in devices.connections.backfill_progress:

    {"dailies": "<start of the oldest window requested, ISO UTC>", ...,
     "historical_export": "denied"}  # Garmin answered 403: the member did not allow it

A userPermissionsChange clears the mark, so the next run asks once more. Progress is
written after every answered window, so a crash resumes at the next one. The pushed
data goes through the webhook inbox like any other delivery.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from ingestion.devices.connections import Connection, active_connections
from ingestion.devices.garmin.budget import BudgetExhausted, DailyBudget
from ingestion.devices.garmin.client import GarminClient, GarminRateLimited, GarminUnavailable
from ingestion.devices.garmin.settings import GarminSettings
from ingestion.devices.resilience import BreakerOpen, CircuitBreaker
from mdp.database import ConnectionParams, connect

log = logging.getLogger(__name__)

BACKFILL_TYPES = ("dailies", "bodyComps", "activities")
DENIED_KEY = "historical_export"
DENIED = "denied"
DAY_SECONDS = 86_400


@dataclass(frozen=True)
class BackfillWindow:
    connection_id: str
    summary_type: str
    start: int  # summaryStartTimeInSeconds
    end: int  # summaryEndTimeInSeconds


@dataclass
class BackfillResult:
    requested: int = 0  # 202: Garmin will push the window
    already_requested: int = 0  # 409: asked before (by us, a crashed run or a concurrent one)
    refused: int = 0  # another 4xx: skipped for good, see the log
    denied: list[str] = field(default_factory=list)  # connection ids without historical export
    deferred: list[str] = field(default_factory=list)  # why the rest waits for a later run


def planned_windows(
    connection: Connection, depth_days: int, window_days: int
) -> list[BackfillWindow]:
    """The windows a connection still has to request, newest first across summary types."""
    if connection.backfill_progress.get(DENIED_KEY) == DENIED:
        return []
    anchor = int(connection.created_at.timestamp())
    oldest = anchor - depth_days * DAY_SECONDS
    windows: list[BackfillWindow] = []
    for summary_type in BACKFILL_TYPES:
        done = connection.backfill_progress.get(summary_type)
        end = int(dt.datetime.fromisoformat(done).timestamp()) if done else anchor
        while end > oldest:
            start = max(oldest, end - window_days * DAY_SECONDS)
            windows.append(BackfillWindow(connection.connection_id, summary_type, start, end))
            end = start
    # stable: within one window's bounds the types keep their order
    return sorted(windows, key=lambda w: -w.end)


def pending_backfill(params: ConnectionParams, settings: GarminSettings) -> dict[str, int]:
    """Active Garmin connections with history still to request -> how many windows."""
    pending = {}
    for connection in active_connections(params, "garmin"):
        windows = planned_windows(connection, settings.backfill_days, settings.backfill_window_days)
        if windows:
            pending[connection.connection_id] = len(windows)
    return pending


def request_backfills(
    params: ConnectionParams,
    settings: GarminSettings,
    budget: DailyBudget,
    client: GarminClient | None = None,
    max_requests: int | None = None,
) -> BackfillResult:
    """Request every planned window the budget above the ping reserve allows.

    Low priority by design: it stops at the first sign that Garmin or the budget wants us to
    wait, and what it did not request stays planned for the next run.
    """
    result = BackfillResult()
    if settings.api_base_url is None:
        log.info("GARMIN_API_BASE_URL is not set: no backfill requests")
        return result
    client = client or GarminClient(
        settings.api_base_url,
        budget,
        CircuitBreaker(params, "garmin"),
        reserve=settings.backfill_reserve,
    )
    for connection in active_connections(params, "garmin"):
        windows = planned_windows(connection, settings.backfill_days, settings.backfill_window_days)
        try:
            for window in windows:
                if max_requests is not None and client.requests_made >= max_requests:
                    result.deferred.append(f"stopped after {max_requests} requests this run")
                    return result
                if not _request_window(params, client, connection, window, result):
                    break
        except (BudgetExhausted, BreakerOpen, GarminUnavailable, GarminRateLimited) as exc:
            # everyone's requests wait alike: stop here, the windows stay planned
            result.deferred.append(f"{connection.connection_id}: {exc}")
            return result
    return result


def _request_window(
    params: ConnectionParams,
    client: GarminClient,
    connection: Connection,
    window: BackfillWindow,
    result: BackfillResult,
) -> bool:
    """Request one window and record the answer; False when the connection must stop."""
    response = client.request_backfill(connection, window.summary_type, window.start, window.end)
    status = response.status_code
    if status == 202:
        result.requested += 1
    elif status == 409:
        result.already_requested += 1
    elif status == 403:
        record_denied(params, connection.connection_id)
        result.denied.append(connection.connection_id)
        log.info("garmin %s: no historical export permission", connection.connection_id)
        return False
    elif status == 401:
        # the token stopped working: a deregistration is on its way through the inbox
        result.deferred.append(f"{connection.connection_id}: garmin answered 401")
        return False
    else:
        # a window Garmin will never accept (too old, too long): asking again wastes budget
        result.refused += 1
        log.warning(
            "garmin %s: backfill of %s [%s, %s) refused with %s: %s",
            connection.connection_id,
            window.summary_type,
            window.start,
            window.end,
            status,
            response.text[:200],
        )
    record_requested(params, window)
    return True


def record_requested(params: ConnectionParams, window: BackfillWindow) -> None:
    """Move the type's progress back to the window's start (never forward: runs may race)."""
    start = dt.datetime.fromtimestamp(window.start, dt.UTC).isoformat()
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections"
            " set backfill_progress = backfill_progress || jsonb_build_object(%s::text, %s::text)"
            " where connection_id = %s and (backfill_progress->>%s is null"
            "   or (backfill_progress->>%s)::timestamptz > %s::timestamptz)",
            (
                window.summary_type,
                start,
                window.connection_id,
                window.summary_type,
                window.summary_type,
                start,
            ),
        )


def record_denied(params: ConnectionParams, connection_id: str) -> None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections"
            " set backfill_progress = backfill_progress || jsonb_build_object(%s::text, %s::text)"
            " where connection_id = %s",
            (DENIED_KEY, DENIED, connection_id),
        )


def clear_denied(params: ConnectionParams, connection_id: str) -> None:
    """The member changed their Garmin permissions: ask once more (a 403 records it again)."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections set backfill_progress = backfill_progress - %s"
            " where connection_id = %s and backfill_progress ? %s",
            (DENIED_KEY, connection_id, DENIED_KEY),
        )
