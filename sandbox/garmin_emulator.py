"""A Garmin Health API (wellness-api) emulator: ping pulls, backfill, push/ping senders, faults.

Summaries (dailies, bodyComps, activities) carry Garmin's field names: Unix seconds in UTC
plus `*OffsetInSeconds`, a local `calendarDate`, and a stable `summaryId` that is re-sent with
new values when the device revises a day. Values come from `sandbox.device_data`.

Simplification: real Garmin signs pull and backfill requests with OAuth 1.0a (consumer key and
secret plus the user's access token and token secret). Here a request authenticates with
`Authorization: Bearer <userAccessToken>`; everything else (paths, query parameters, status
codes, bodies) follows Garmin. A production client swaps the bearer header for an OAuth1 signer.

How data flows: `GarminState.sync(user, day)` is the device uploading a day (recorded with an
upload time, which ping pulls select on); `push`/`ping` send what Garmin would send to the
platform's webhook; accepted backfill requests wait until `deliver_pending(url)` pushes them.

Run alone with `python -m sandbox.garmin_emulator --port N`; drive it from another process
through the `/_sandbox/...` admin routes (see `create_garmin_app`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import math
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import device_data
from sandbox.emulator_server import (
    FAULT_KEYS,
    Faults,
    FaultSettingsError,
    RequestRecord,
    run_cli,
    string_list,
    user_days,
)

SUMMARY_TYPES = ("dailies", "bodyComps", "activities")
API_PREFIX = "/wellness-api/rest"
CLIENT_ID_HEADER = "garmin-client-id"
DAILY_BUDGET = 5000
MAX_PULL_WINDOW_SECONDS = 86_400
MAX_BACKFILL_WINDOW_SECONDS = 30 * 86_400
HISTORY_DAYS = 730
PUSH_BATCH_SIZE = 100
DEVICE_NAME = "Forerunner 265"
DEFAULT_PERMISSIONS = ("ACTIVITY_EXPORT", "HEALTH_EXPORT")


@dataclass
class GarminUser:
    user_id: str
    user_access_token: str
    timezone: str
    historical_permission: bool = True  # the member allowed historical data export (backfill)
    deregistered: bool = False


@dataclass(frozen=True)
class Upload:
    """A summary version the device uploaded at `uploaded_at` (what ping pulls select on)."""

    uploaded_at: float
    summary_type: str
    item: dict[str, Any]


@dataclass
class BackfillRequest:
    user_id: str
    summary_type: str
    start: int  # summaryStartTimeInSeconds
    end: int  # summaryEndTimeInSeconds
    requested_at: float
    delivered_at: float | None = None


@dataclass
class GarminState:
    """Everything the emulated Garmin knows; every method is safe to call from any thread.

    The daily budget is global across users (the platform's 5000 requests/day) and resets when
    the clock crosses a multiple of `budget_window_seconds` (UTC midnight by default).
    """

    consumer_key: str = "sandbox-consumer-key"
    daily_budget: int = DAILY_BUDGET
    budget_window_seconds: float = 86_400.0
    max_pull_window_seconds: int = MAX_PULL_WINDOW_SECONDS
    max_backfill_window_seconds: int = MAX_BACKFILL_WINDOW_SECONDS
    history_days: int = HISTORY_DAYS
    base_url: str | None = None  # where this emulator is served: callbackURL of pings
    clock: Callable[[], float] = time.time
    keep_requests: int = 200_000
    users: dict[str, GarminUser] = field(default_factory=dict)
    revisions: dict[tuple[str, dt.date], int] = field(default_factory=dict)
    backfills: list[BackfillRequest] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: deque[RequestRecord] = deque(maxlen=self.keep_requests)
        self.uploads: dict[str, list[Upload]] = {}  # user id -> uploads in upload order
        self._request_counts: Counter[str] = Counter()
        self._tokens: dict[str, str] = {}
        self._budget_window = 0.0
        self._budget_used = 0

    # members ------------------------------------------------------------------------------

    def add_user(
        self,
        user_id: str | None = None,
        timezone: str | None = None,
        historical_permission: bool = True,
    ) -> str:
        """Connect a member; returns their userAccessToken (defaults come from device_data)."""
        with self.lock:
            if user_id is None:
                user_id = _garmin_user_id(self.consumer_key, len(self.users))
            if user_id in self.users:
                raise ValueError(f"garmin user {user_id!r} already exists")
            timezone = timezone or device_data.user_timezone(user_id)
            ZoneInfo(timezone)
            token = secrets.token_hex(18)
            self.users[user_id] = GarminUser(user_id, token, timezone, historical_permission)
            self._tokens[token] = user_id
            return token

    def user_for_token(self, user_access_token: str) -> str | None:
        with self.lock:
            return self._tokens.get(user_access_token)

    def set_historical_permission(self, user_id: str, allowed: bool) -> None:
        with self.lock:
            self._user(user_id).historical_permission = allowed

    def deregister(self, user_id: str) -> None:
        """The member disconnects at Garmin: their token stops working."""
        with self.lock:
            user = self._user(user_id)
            user.deregistered = True
            self._tokens.pop(user.user_access_token, None)

    def _user(self, user_id: str) -> GarminUser:
        try:
            return self.users[user_id]
        except KeyError:
            raise KeyError(f"no garmin user {user_id!r}") from None

    # summaries ----------------------------------------------------------------------------

    def local_today(self, user_id: str) -> dt.date:
        with self.lock:
            zone = ZoneInfo(self._user(user_id).timezone)
        return dt.datetime.fromtimestamp(self.clock(), zone).date()

    def summaries(self, user_id: str, summary_type: str, day: dt.date) -> list[dict[str, Any]]:
        """The current version of the member's summaries of `summary_type` for local `day`."""
        with self.lock:
            user = self._user(user_id)
            revision = self.revisions.get((user_id, day), 0)
        now = self.clock()
        if summary_type == "dailies":
            return [_daily(user, day, revision, now)]
        if summary_type == "bodyComps":
            return [
                item for item in _body_comps(user, day) if item["measurementTimeInSeconds"] <= now
            ]
        if summary_type == "activities":
            return [
                item
                for item in _activities(user, day)
                if item["startTimeInSeconds"] + item["durationInSeconds"] <= now
            ]
        raise ValueError(f"summary_type must be one of {SUMMARY_TYPES}, got {summary_type!r}")

    def summaries_between(
        self, user_id: str, summary_type: str, start: int, end: int
    ) -> list[dict[str, Any]]:
        """Summaries whose start (or measurement) time falls in [start, end), for backfill."""
        with self.lock:
            zone = ZoneInfo(self._user(user_id).timezone)
        first = dt.datetime.fromtimestamp(start, zone).date()
        last = min(dt.datetime.fromtimestamp(end, zone).date(), self.local_today(user_id))
        items = []
        for offset in range((last - first).days + 1):
            for item in self.summaries(user_id, summary_type, first + dt.timedelta(days=offset)):
                at = item.get("startTimeInSeconds", item.get("measurementTimeInSeconds"))
                if start <= at < end:
                    items.append(item)
        return items

    def sync(
        self,
        user_id: str,
        day: dt.date,
        summary_types: Sequence[str] = SUMMARY_TYPES,
        uploaded_at: float | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """The device uploads `day`: record each summary's upload and return them by type."""
        at = self.clock() if uploaded_at is None else uploaded_at
        uploaded = {kind: self.summaries(user_id, kind, day) for kind in summary_types}
        with self.lock:
            log = self.uploads.setdefault(user_id, [])
            for kind, items in uploaded.items():
                log.extend(Upload(at, kind, item) for item in items)
        return uploaded

    def revise(
        self, user_id: str, day: dt.date, uploaded_at: float | None = None
    ) -> dict[str, Any]:
        """The device re-uploads `day` with new values: same summaryId; returns the new daily."""
        with self.lock:
            self._user(user_id)
            self.revisions[(user_id, day)] = self.revisions.get((user_id, day), 0) + 1
        return self.sync(user_id, day, ("dailies",), uploaded_at)["dailies"][0]

    def uploaded_between(
        self, user_id: str, summary_type: str, start: float, end: float
    ) -> list[dict[str, Any]]:
        """What a ping pull returns: the newest version per summaryId uploaded in [start, end)."""
        with self.lock:
            log = list(self.uploads.get(user_id, ()))
        newest: dict[str, dict[str, Any]] = {}
        for upload in log:
            if upload.summary_type == summary_type and start <= upload.uploaded_at < end:
                newest[upload.item["summaryId"]] = upload.item
        return list(newest.values())

    # budget, faults, bookkeeping ----------------------------------------------------------

    def budget_used(self) -> int:
        with self.lock:
            self._roll_budget(self.clock())
            return self._budget_used

    def _roll_budget(self, now: float) -> float:
        window = math.floor(now / self.budget_window_seconds) * self.budget_window_seconds
        if window != self._budget_window:
            self._budget_window, self._budget_used = window, 0
        return window + self.budget_window_seconds - now

    def _take_budget(self) -> tuple[bool, int]:
        """Count one request against the global budget: (allowed, seconds until it resets)."""
        with self.lock:
            reset_in = self._roll_budget(self.clock())
            allowed = self._budget_used < self.daily_budget
            if allowed:
                self._budget_used += 1
            return allowed, max(1, math.ceil(reset_in))

    def set_fault(self, **settings: Any) -> dict[str, Any]:
        """Inject faults; the keys are those of the `POST /_sandbox/faults` payload.

        Generic: error_burst, error_status, delay_count, delay_seconds, outage (bool),
        outage_seconds, outage_until, clear. Garmin's: revise (list of {"user_id", "date"}),
        deny_historical / allow_historical / deregister (lists of user ids).
        """
        unknown = set(settings) - FAULT_KEYS - _GARMIN_FAULT_KEYS
        if unknown:
            raise FaultSettingsError(f"unknown fault settings: {sorted(unknown)}")
        revise = user_days(settings, "revise")
        deny, allow = (
            string_list(settings, "deny_historical"),
            string_list(settings, "allow_historical"),
        )
        deregister = string_list(settings, "deregister")
        with self.lock:
            missing = {u for u in deny + allow + deregister if u not in self.users}
            missing |= {u for u, _ in revise if u not in self.users}
            if missing:
                raise FaultSettingsError(f"unknown garmin users: {sorted(missing)}")
            self.faults.update({k: v for k, v in settings.items() if k in FAULT_KEYS}, self.clock())
            for user_id in deny:
                self.set_historical_permission(user_id, False)
            for user_id in allow:
                self.set_historical_permission(user_id, True)
            for user_id in deregister:
                self.deregister(user_id)
        for user_id, day in revise:
            self.revise(user_id, day)
        return self.fault_settings()

    def clear_faults(self) -> None:
        self.set_fault(clear=True)

    def fault_settings(self) -> dict[str, Any]:
        with self.lock:
            return self.faults.as_dict()

    def request_count(self, user_id: str | None = None) -> int:
        """Provider API requests by one member's token, or by everyone when user_id is None."""
        with self.lock:
            if user_id is None:
                return sum(self._request_counts.values())
            return self._request_counts[user_id]

    def _record(self, request: Request, user_id: str | None, status: int) -> None:
        with self.lock:
            self.requests.append(
                RequestRecord(
                    self.clock(),
                    request.method,
                    request.url.path,
                    request.url.query,
                    user_id,
                    status,
                )
            )
            if user_id is not None:
                self._request_counts[user_id] += 1

    # sending to the platform --------------------------------------------------------------

    def push(self, webhook_url: str, summary_type: str, items: list[dict[str, Any]]) -> int:
        return push(webhook_url, summary_type, items, self.consumer_key)

    def ping(
        self,
        webhook_url: str,
        summary_type: str,
        user_id: str,
        start: int,
        end: int,
        callback_base_url: str | None = None,
    ) -> int:
        """Tell the platform that `summary_type` uploads in [start, end) wait to be pulled."""
        base = callback_base_url or self.base_url
        if base is None:
            raise ValueError("no callback_base_url and no base_url set on the state")
        with self.lock:
            token = self._user(user_id).user_access_token
        return ping(
            webhook_url,
            summary_type,
            user_id,
            token,
            start,
            end,
            callback_base_url=base,
            client_id=self.consumer_key,
        )

    def send_deregistration(self, webhook_url: str, user_id: str) -> int:
        """Deregister the member and tell the platform."""
        with self.lock:
            token = self._user(user_id).user_access_token
        self.deregister(user_id)
        return deregistration(webhook_url, user_id, token, self.consumer_key)

    def send_permissions_change(
        self,
        webhook_url: str,
        user_id: str,
        permissions: Sequence[str] = DEFAULT_PERMISSIONS,
    ) -> int:
        """Tell the platform which data the member now shares (`userPermissionsChange`)."""
        with self.lock:
            token = self._user(user_id).user_access_token
            now = int(self.clock())
        body = {
            "userPermissionsChange": [
                {
                    "userId": user_id,
                    "userAccessToken": token,
                    "summaryId": _summary_id(user_id, "userPermissionsChange", now),
                    "permissions": list(permissions),
                    "changeTimeInSeconds": now,
                }
            ]
        }
        return _post(webhook_url, body, self.consumer_key, 10.0)

    def deliver_pending(self, webhook_url: str, batch_size: int = PUSH_BATCH_SIZE) -> list[int]:
        """Push the data of every accepted, undelivered backfill; returns the status codes.

        `webhook_url` may contain "{summary_type}" for per-type endpoints (Garmin lets a
        partner configure one URL per summary type). A backfill stays pending unless every
        push for it was answered 2xx.
        """
        with self.lock:
            pending = [b for b in self.backfills if b.delivered_at is None]
        statuses: list[int] = []
        for backfill in pending:
            items = self.summaries_between(
                backfill.user_id, backfill.summary_type, backfill.start, backfill.end
            )
            url = webhook_url.replace("{summary_type}", backfill.summary_type)
            sent = [
                self.push(url, backfill.summary_type, items[i : i + batch_size])
                for i in range(0, len(items), batch_size)
            ]
            statuses.extend(sent)
            if all(200 <= status < 300 for status in sent):
                with self.lock:
                    backfill.delivered_at = self.clock()
        return statuses


_GARMIN_FAULT_KEYS = frozenset({"revise", "deny_historical", "allow_historical", "deregister"})


def _garmin_user_id(seed: str, n: int) -> str:
    """Garmin user ids are UUID-like strings."""
    digest = hashlib.sha256(f"{seed}|{n}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _summary_id(user_id: str, kind: str, seconds: int) -> str:
    """Garmin-style summary id ("x153a9f3-5a9478d4"): stable for a user, type and start."""
    salt = hashlib.sha256(f"{user_id}|{kind}".encode()).hexdigest()[:7]
    return f"x{salt}-{seconds:x}"


def _local_midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), zone)


def _offset_seconds(moment: dt.datetime) -> int:
    return int((moment.utcoffset() or dt.timedelta()).total_seconds())


def _daily(user: GarminUser, day: dt.date, revision: int, now: float) -> dict[str, Any]:
    """A dailies summary; today's covers the day so far, as Garmin sends it during the day."""
    uid = user.user_id
    zone = ZoneInfo(user.timezone)
    start = _local_midnight(day, zone)
    start_s = int(start.timestamp())
    full_length = int(_local_midnight(day + dt.timedelta(days=1), zone).timestamp()) - start_s
    duration = max(0, min(full_length, int(now) - start_s))
    share = duration / full_length
    steps = int(device_data.daily_steps(uid, day, revision) * share)
    workouts = device_data.activities(uid, day)
    height = device_data.user_height_m(uid)
    kg = device_data.weight_kg(uid, day)
    workout_s = sum(w.duration_ms for w in workouts) // 1000
    resting = 52 + int(18 * device_data._unit("resting-hr", uid))
    return {
        "userId": uid,
        "userAccessToken": user.user_access_token,
        "summaryId": _summary_id(uid, "dailies", start_s),
        "calendarDate": day.isoformat(),
        "activityType": "WALKING",
        "activeKilocalories": int((steps * 0.04 + sum(w.calories for w in workouts)) * share),
        "bmrKilocalories": int((10 * kg + 625 * height - 5 * 45 + 5) * share),
        "steps": steps,
        "distanceInMeters": round(steps * 0.415 * height, 1),
        "durationInSeconds": duration,
        "activeTimeInSeconds": int((steps / 100 * 60 + workout_s) * share),
        "startTimeInSeconds": start_s,
        "startTimeOffsetInSeconds": _offset_seconds(start),
        "moderateIntensityDurationInSeconds": int(workout_s * 0.6 * share) // 60 * 60,
        "vigorousIntensityDurationInSeconds": int(workout_s * 0.4 * share) // 60 * 60,
        "floorsClimbed": int(steps / 900),
        "minHeartRateInBeatsPerMinute": resting - 6,
        "averageHeartRateInBeatsPerMinute": resting + 14,
        "maxHeartRateInBeatsPerMinute": resting + 60 + (40 if workouts else 0),
        "restingHeartRateInBeatsPerMinute": resting,
        "averageStressLevel": 20 + int(25 * device_data._unit("stress", uid, day)),
        "maxStressLevel": 70 + int(25 * device_data._unit("max-stress", uid, day)),
        "stepsGoal": 7500,
        "floorsClimbedGoal": 10,
    }


def _body_comps(user: GarminUser, day: dt.date) -> list[dict[str, Any]]:
    uid = user.user_id
    zone = ZoneInfo(user.timezone)
    items = []
    for reading in device_data.weight_readings(uid, day):
        at = dt.datetime.combine(day, reading.local_time, zone)
        seconds = int(at.timestamp())
        fat = device_data.body_fat_percent(uid, reading.kg)
        items.append(
            {
                "userId": uid,
                "userAccessToken": user.user_access_token,
                "summaryId": _summary_id(uid, "bodyComps", seconds),
                "measurementTimeInSeconds": seconds,
                "measurementTimeOffsetInSeconds": _offset_seconds(at),
                "weightInGrams": int(round(reading.kg * 1000)),
                "bodyFatInPercent": fat,
                "bodyMassIndex": device_data.bmi(uid, reading.kg),
                "muscleMassInGrams": int(round(reading.kg * (100 - fat) * 5.2)),
            }
        )
    return items


def _activities(user: GarminUser, day: dt.date) -> list[dict[str, Any]]:
    uid = user.user_id
    zone = ZoneInfo(user.timezone)
    items = []
    for index, workout in enumerate(device_data.activities(uid, day)):
        at = dt.datetime.combine(day, workout.start, zone)
        activity_id = device_data.stable_int("garmin-activity", uid, day, index, digits=10)
        part_of_day = "Morning" if workout.start.hour < 12 else "Evening"
        items.append(
            {
                "userId": uid,
                "userAccessToken": user.user_access_token,
                "summaryId": str(activity_id),
                "activityId": activity_id,
                "activityName": f"{part_of_day} {workout.name}",
                "activityType": workout.garmin_activity_type,
                "startTimeInSeconds": int(at.timestamp()),
                "startTimeOffsetInSeconds": _offset_seconds(at),
                "durationInSeconds": workout.duration_ms // 1000,
                "distanceInMeters": workout.distance_m,
                "activeKilocalories": workout.calories,
                "steps": workout.steps,
                "deviceName": DEVICE_NAME,
            }
        )
    return items


# senders ------------------------------------------------------------------------------------


def _post(webhook_url: str, body: dict[str, Any], client_id: str, timeout: float) -> int:
    headers = {"Content-Type": "application/json", CLIENT_ID_HEADER: client_id}
    with httpx.Client(timeout=timeout) as client:
        return client.post(webhook_url, content=json.dumps(body), headers=headers).status_code


def push(
    webhook_url: str,
    summary_type: str,
    items: list[dict[str, Any]],
    client_id: str,
    timeout: float = 10.0,
) -> int:
    """POST `{summary_type: items}` as Garmin's push service does; returns the status code."""
    return _post(webhook_url, {summary_type: items}, client_id, timeout)


def ping_body(
    summary_type: str,
    user_id: str,
    user_access_token: str,
    start: int,
    end: int,
    callback_base_url: str,
) -> dict[str, list[dict[str, Any]]]:
    query = urlencode({"uploadStartTimeInSeconds": start, "uploadEndTimeInSeconds": end})
    callback = f"{callback_base_url.rstrip('/')}{API_PREFIX}/{summary_type}?{query}"
    return {
        summary_type: [
            {
                "userId": user_id,
                "userAccessToken": user_access_token,
                "uploadStartTimeInSeconds": start,
                "uploadEndTimeInSeconds": end,
                "callbackURL": callback,
            }
        ]
    }


def ping(
    webhook_url: str,
    summary_type: str,
    user_id: str,
    user_access_token: str,
    start: int,
    end: int,
    *,
    callback_base_url: str,
    client_id: str,
    timeout: float = 10.0,
) -> int:
    """POST a ping whose callbackURL pulls `summary_type` uploaded in [start, end)."""
    body = ping_body(summary_type, user_id, user_access_token, start, end, callback_base_url)
    return _post(webhook_url, body, client_id, timeout)


def deregistration(
    webhook_url: str, user_id: str, user_access_token: str, client_id: str, timeout: float = 10.0
) -> int:
    body = {"deregistrations": [{"userId": user_id, "userAccessToken": user_access_token}]}
    return _post(webhook_url, body, client_id, timeout)


# the app ------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errorMessage": message}, status_code=status, headers=headers)


def _seconds(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None or not raw.lstrip("-").isdigit():
        raise _BadRequest(f"{name} is required and must be an integer (Unix seconds)")
    return int(raw)


class _BadRequest(Exception):
    pass


Handler = Callable[[Request, GarminUser], Response]


def create_garmin_app(state: GarminState) -> Starlette:
    """The Garmin Health API as a Starlette app over `state`.

    Provider routes (Bearer userAccessToken): GET /wellness-api/rest/{dailies|bodyComps|
    activities}?uploadStartTimeInSeconds=&uploadEndTimeInSeconds= and
    GET /wellness-api/rest/backfill/{type}?summaryStartTimeInSeconds=&summaryEndTimeInSeconds=.

    Admin routes (no auth, sandbox only): GET|POST /_sandbox/faults, GET|POST /_sandbox/users,
    GET /_sandbox/requests, POST /_sandbox/sync, POST /_sandbox/deliver.
    """

    def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            user_id = state.user_for_token(token.strip()) if scheme.lower() == "bearer" else None
            status = 500
            try:
                with state.lock:
                    delay, fault = state.faults.take(state.clock())
                if delay:
                    await asyncio.sleep(delay)
                if fault is not None:
                    response: Response = _error(fault, "Service temporarily unavailable")
                else:
                    response = _serve(state, request, user_id, handler)
                status = response.status_code
                return response
            finally:
                state._record(request, user_id, status)

        return endpoint

    async def admin_faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(state.fault_settings())
        try:
            payload = await request.json()
            if not isinstance(payload, dict):
                raise FaultSettingsError("the payload must be a JSON object")
            return JSONResponse(state.set_fault(**payload))
        except (FaultSettingsError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def admin_users(request: Request) -> Response:
        if request.method == "GET":
            with state.lock:
                users = [
                    {
                        "user_id": u.user_id,
                        "timezone": u.timezone,
                        "historical_permission": u.historical_permission,
                        "deregistered": u.deregistered,
                        "requests": state._request_counts[u.user_id],
                    }
                    for u in state.users.values()
                ]
            return JSONResponse({"users": users, "budget_used": state.budget_used()})
        try:
            payload = await request.json() if await request.body() else {}
            with state.lock:
                token = state.add_user(
                    payload.get("user_id"),
                    timezone=payload.get("timezone"),
                    historical_permission=bool(payload.get("historical_permission", True)),
                )
                user = state.users[state._tokens[token]]
        except (ValueError, AttributeError, KeyError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(
            {"user_id": user.user_id, "user_access_token": token, "timezone": user.timezone},
            status_code=201,
        )

    async def admin_requests(request: Request) -> Response:
        with state.lock:
            by_user = dict(state._request_counts)
            statuses = Counter(str(r.status) for r in state.requests)
            total = len(state.requests)
        return JSONResponse(
            {
                "total": total,
                "by_user": by_user,
                "by_status": statuses,
                "budget_used": state.budget_used(),
                "backfills": [vars(b) for b in state.backfills],
            }
        )

    async def admin_sync(request: Request) -> Response:
        try:
            payload = await request.json()
            user_id, day = str(payload["user_id"]), dt.date.fromisoformat(payload["date"])
            kinds = payload.get("summary_types", list(SUMMARY_TYPES))
            mode, url = payload.get("mode"), payload.get("webhook_url")
            if mode not in (None, "push", "ping") or (mode and not url):
                raise ValueError('mode is "push" or "ping" and needs webhook_url')
            at = state.clock()
            uploaded = state.sync(user_id, day, kinds, at)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": f"bad sync payload: {exc}"}, status_code=400)
        base = str(request.base_url).rstrip("/")

        def send() -> list[int]:
            if mode == "push":
                return [state.push(url, kind, items) for kind, items in uploaded.items() if items]
            if mode == "ping":
                window = (int(at), int(at) + 1)
                return [state.ping(url, kind, user_id, *window, base) for kind in uploaded]
            return []

        statuses = await asyncio.to_thread(send)
        counts = {kind: len(items) for kind, items in uploaded.items()}
        return JSONResponse({"uploaded": counts, "uploaded_at": at, "statuses": statuses})

    async def admin_deliver(request: Request) -> Response:
        try:
            url = str((await request.json())["webhook_url"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": f"needs webhook_url: {exc}"}, status_code=400)
        statuses = await asyncio.to_thread(state.deliver_pending, url)
        return JSONResponse({"statuses": statuses})

    routes = [
        Route(f"{API_PREFIX}/backfill/{{summary_type}}", api(_backfill(state))),
        Route(f"{API_PREFIX}/{{summary_type}}", api(_pull(state))),
        Route("/_sandbox/faults", admin_faults, methods=["GET", "POST"]),
        Route("/_sandbox/users", admin_users, methods=["GET", "POST"]),
        Route("/_sandbox/requests", admin_requests, methods=["GET"]),
        Route("/_sandbox/sync", admin_sync, methods=["POST"]),
        Route("/_sandbox/deliver", admin_deliver, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.garmin = state
    return app


def _serve(state: GarminState, request: Request, user_id: str | None, handler: Handler) -> Response:
    if user_id is None:
        return _error(401, "Invalid or missing user access token")
    with state.lock:
        user = state.users[user_id]
    if request.path_params["summary_type"] not in SUMMARY_TYPES:
        return _error(404, f"Unknown summary type {request.path_params['summary_type']}")
    allowed, reset_in = state._take_budget()
    if not allowed:
        return _error(429, "Daily request budget exceeded", {"Retry-After": str(reset_in)})
    try:
        return handler(request, user)
    except _BadRequest as exc:
        return _error(400, str(exc))


def _pull(state: GarminState) -> Handler:
    def handler(request: Request, user: GarminUser) -> Response:
        start = _seconds(request, "uploadStartTimeInSeconds")
        end = _seconds(request, "uploadEndTimeInSeconds")
        if end <= start:
            raise _BadRequest("uploadEndTimeInSeconds must be after uploadStartTimeInSeconds")
        if end - start > state.max_pull_window_seconds:
            raise _BadRequest(
                f"upload time range exceeds the maximum of {state.max_pull_window_seconds} seconds"
            )
        summary_type = request.path_params["summary_type"]
        return JSONResponse(state.uploaded_between(user.user_id, summary_type, start, end))

    return handler


def _backfill(state: GarminState) -> Handler:
    def handler(request: Request, user: GarminUser) -> Response:
        start = _seconds(request, "summaryStartTimeInSeconds")
        end = _seconds(request, "summaryEndTimeInSeconds")
        if end <= start:
            raise _BadRequest("summaryEndTimeInSeconds must be after summaryStartTimeInSeconds")
        if end - start > state.max_backfill_window_seconds:
            raise _BadRequest(
                f"backfill range exceeds the maximum of {state.max_backfill_window_seconds} seconds"
            )
        now = state.clock()
        if start < now - state.history_days * 86_400:
            raise _BadRequest(f"backfill reaches further back than {state.history_days} days")
        if not user.historical_permission:
            return _error(403, "User has not granted permission to export historical data")
        summary_type = request.path_params["summary_type"]
        with state.lock:
            duplicate = any(
                (b.user_id, b.summary_type, b.start, b.end)
                == (user.user_id, summary_type, start, end)
                for b in state.backfills
            )
            if duplicate:
                return _error(409, "A backfill for this time range was already requested")
            state.backfills.append(BackfillRequest(user.user_id, summary_type, start, end, now))
        return Response(status_code=202)

    return handler


# command line -------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consumer-key", default="sandbox-consumer-key")
    parser.add_argument("--daily-budget", type=int, default=DAILY_BUDGET)
    parser.add_argument("--max-backfill-days", type=int, default=30)


def _build(args: argparse.Namespace) -> Starlette:
    state = GarminState(
        consumer_key=args.consumer_key,
        daily_budget=args.daily_budget,
        max_backfill_window_seconds=args.max_backfill_days * 86_400,
    )
    return create_garmin_app(state)


def _on_listen(app: Starlette, base_url: str) -> None:
    app.state.garmin.base_url = base_url


def main(argv: list[str] | None = None) -> None:
    run_cli("garmin_emulator", _build, argv, _add_arguments, on_listen=_on_listen)


if __name__ == "__main__":
    main()
