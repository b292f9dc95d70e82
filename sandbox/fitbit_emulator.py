"""A Fitbit Web API emulator: OAuth2 with single-use refresh tokens, the steps, weight and
activity-log endpoints, per-user rate limits, subscriptions, signed notifications, faults.

Client code written against https://api.fitbit.com works against this app by changing the
base URL and the client credentials. Data comes from `sandbox.device_data`, so it is the same
for the same member and day in every run; what the API shows also depends on the state: the
member's local "today" (partial), revisions, hidden (late) days and the member's start date.

Deliberate simplifications: access tokens are opaque strings (Fitbit issues JWTs); only the
endpoints the platform uses exist; notifications are sent when asked (`notify`,
`FitbitState.notify_subscribers`), never retried.

Run alone with `python -m sandbox.fitbit_emulator --port N`; drive it from another process
through the `/_sandbox/...` admin routes (see `create_fitbit_app`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
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

TOKEN_LIFETIME_SECONDS = 28_800
RATE_LIMIT_PER_HOUR = 150
MAX_STEPS_RANGE_DAYS = 1095
MAX_WEIGHT_RANGE_DAYS = 31
MAX_ACTIVITY_LIST_LIMIT = 100
COLLECTIONS = ("activities", "body", "foods", "sleep")
NOTIFICATION_TYPES = (*COLLECTIONS, "userRevokedAccess")
SCOPE = "activity profile settings weight"
SIGNATURE_HEADER = "X-Fitbit-Signature"
DEFAULT_SUBSCRIBER_ID = "1"
_AUTH_CODE_SECONDS = 600
_STEP_PERIODS = ("1d", "7d", "30d", "1w", "1m", "3m", "6m", "1y")
_WEIGHT_PERIODS = ("1d", "7d", "30d", "1w", "1m")
_KG_PER_STONE = 6.35029318
_OAUTH_DOCS = "Visit https://dev.fitbit.com/docs/oauth2 for more information on the Fitbit Web API authorization process."


@dataclass
class FitbitUser:
    user_id: str
    access_token: str
    refresh_token: str
    token_expires_at: float  # Unix seconds
    timezone: str
    lb_or_kg: str  # the member's profile preference: "lb" or "kg"
    member_since: dt.date
    revoked: bool = False


@dataclass(frozen=True)
class Subscription:
    user_id: str
    subscription_id: str
    collection_type: str | None  # None: every collection
    subscriber_id: str

    def as_json(self) -> dict[str, str]:
        body = {
            "collectionType": self.collection_type or "user",
            "ownerId": self.user_id,
            "ownerType": "user",
            "subscriberId": self.subscriber_id,
            "subscriptionId": self.subscription_id,
        }
        if self.collection_type is None:
            del body["collectionType"]
        return body


@dataclass(frozen=True)
class _AuthCode:
    user_id: str
    redirect_uri: str
    code_challenge: str | None
    expires_at: float


@dataclass(frozen=True)
class _Window:
    start: float
    count: int


@dataclass
class FitbitState:
    """Everything the emulated Fitbit knows; every method is safe to call from any thread.

    `clock` returns Unix seconds: tests pass their own to expire tokens or roll the rate-limit
    window. The rate-limit window is aligned like Fitbit's hourly one: it resets whenever the
    clock crosses a multiple of `window_seconds`.
    """

    client_id: str = "SANDBOX1"
    client_secret: str = "sandbox-client-secret"
    rate_limit: int = RATE_LIMIT_PER_HOUR
    window_seconds: float = 3600.0
    token_lifetime_seconds: int = TOKEN_LIFETIME_SECONDS
    subscriber_url: str | None = None  # the app's subscriber endpoint, for notify_subscribers
    clock: Callable[[], float] = time.time
    keep_requests: int = 200_000
    users: dict[str, FitbitUser] = field(default_factory=dict)
    revisions: dict[tuple[str, dt.date], int] = field(default_factory=dict)
    hidden_days: set[tuple[str, dt.date]] = field(default_factory=set)
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    notification_duplicates: int = 1

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: deque[RequestRecord] = deque(maxlen=self.keep_requests)
        self._request_counts: Counter[str] = Counter()
        self._windows: dict[str, _Window] = {}
        self._access: dict[str, str] = {}
        self._refresh: dict[str, str] = {}
        self._spent_refresh: set[str] = set()
        self._codes: dict[str, _AuthCode] = {}

    # members and tokens -------------------------------------------------------------------

    def add_user(
        self,
        user_id: str | None = None,
        timezone: str | None = None,
        units: str | None = None,
        member_since: dt.date | None = None,
    ) -> tuple[str, str]:
        """Connect a member; returns (access_token, refresh_token). Defaults come from device_data.

        A generated `user_id` looks like Fitbit's (6 characters, e.g. "3F7K2Q"); read it back
        from `state.users` or pass your own. `member_since` defaults to 400 days before today.
        """
        with self.lock:
            user = self._add(user_id, timezone, units, member_since)
            return user.access_token, user.refresh_token

    def _add(
        self,
        user_id: str | None,
        timezone: str | None = None,
        units: str | None = None,
        member_since: dt.date | None = None,
    ) -> FitbitUser:
        with self.lock:
            if user_id is None:
                user_id = _fitbit_user_id(self.client_id, len(self.users))
                while user_id in self.users:
                    user_id = _fitbit_user_id(user_id, 0)
            if user_id in self.users:
                raise ValueError(f"fitbit user {user_id!r} already exists")
            timezone = timezone or device_data.user_timezone(user_id)
            ZoneInfo(timezone)  # fail here, not on the first request
            units = units or device_data.user_units(user_id)
            if units not in ("lb", "kg"):
                raise ValueError(f"units must be 'lb' or 'kg', got {units!r}")
            today = dt.datetime.fromtimestamp(self.clock(), ZoneInfo(timezone)).date()
            user = FitbitUser(
                user_id=user_id,
                access_token="",
                refresh_token="",
                token_expires_at=0.0,
                timezone=timezone,
                lb_or_kg=units,
                member_since=member_since or today - dt.timedelta(days=400),
            )
            self.users[user_id] = user
            self._issue_tokens(user_id)
            return user

    def reconnect(self, user_id: str) -> tuple[str, str]:
        """The member authorizes the app again: fresh tokens, no longer revoked."""
        with self.lock:
            self._user(user_id).revoked = False
            return self._issue_tokens(user_id)

    def revoke(self, user_id: str) -> None:
        """The member revokes access: tokens stop working, refresh answers invalid_grant."""
        with self.lock:
            user = self._user(user_id)
            user.revoked = True
            self._access.pop(user.access_token, None)

    def expire_access_token(self, user_id: str) -> None:
        with self.lock:
            self._user(user_id).token_expires_at = self.clock() - 1

    def tokens(self, user_id: str) -> tuple[str, str]:
        """The member's current (access_token, refresh_token)."""
        with self.lock:
            user = self._user(user_id)
            return user.access_token, user.refresh_token

    def issue_authorization_code(
        self, user_id: str, redirect_uri: str, code_challenge: str | None = None
    ) -> str:
        with self.lock:
            self._user(user_id)
            code = secrets.token_hex(20)
            expires = self.clock() + _AUTH_CODE_SECONDS
            self._codes[code] = _AuthCode(user_id, redirect_uri, code_challenge, expires)
            return code

    def _issue_tokens(self, user_id: str) -> tuple[str, str]:
        user = self.users[user_id]
        self._access.pop(user.access_token, None)
        if user.refresh_token:
            self._refresh.pop(user.refresh_token, None)
            self._spent_refresh.add(user.refresh_token)
        user.access_token = secrets.token_urlsafe(32)
        user.refresh_token = secrets.token_hex(32)
        user.token_expires_at = self.clock() + self.token_lifetime_seconds
        self._access[user.access_token] = user_id
        self._refresh[user.refresh_token] = user_id
        return user.access_token, user.refresh_token

    def _user(self, user_id: str) -> FitbitUser:
        try:
            return self.users[user_id]
        except KeyError:
            raise KeyError(f"no fitbit user {user_id!r}") from None

    # data changes -------------------------------------------------------------------------

    def revise(self, user_id: str, day: dt.date) -> int:
        """The device re-syncs `day` with a different step count; returns the new revision."""
        with self.lock:
            self._user(user_id)
            revision = self.revisions.get((user_id, day), 0) + 1
            self.revisions[(user_id, day)] = revision
            return revision

    def revision(self, user_id: str, day: dt.date) -> int:
        with self.lock:
            return self.revisions.get((user_id, day), 0)

    def hide_day(self, user_id: str, day: dt.date) -> None:
        """Late-arriving data: `day` looks unsynced (steps "0", no weight or workouts)."""
        with self.lock:
            self._user(user_id)
            self.hidden_days.add((user_id, day))

    def release_day(self, user_id: str, day: dt.date) -> None:
        with self.lock:
            self.hidden_days.discard((user_id, day))

    def local_now(self, user_id: str) -> dt.datetime:
        with self.lock:
            zone = ZoneInfo(self._user(user_id).timezone)
        return dt.datetime.fromtimestamp(self.clock(), zone)

    def steps(self, user_id: str, day: dt.date) -> int:
        """The step count the API serves now for the member's local `day`."""
        with self.lock:
            user = self._user(user_id)
            revision = self.revisions.get((user_id, day), 0)
            hidden = (user_id, day) in self.hidden_days
        now = self.local_now(user_id)
        if hidden or day < user.member_since or day > now.date():
            return 0
        full = device_data.daily_steps(user_id, day, revision)
        if day == now.date():  # the day so far
            elapsed = now - now.replace(hour=0, minute=0, second=0, microsecond=0)
            return int(full * elapsed.total_seconds() / 86400)
        return full

    def weight_readings(self, user_id: str, day: dt.date) -> list[device_data.WeightReading]:
        """Scale readings the API serves now for the member's local `day` (kg)."""
        if not self._visible(user_id, day):
            return []
        now = self.local_now(user_id)
        readings = device_data.weight_readings(user_id, day)
        return [r for r in readings if day < now.date() or r.local_time <= now.time()]

    def workouts(self, user_id: str, day: dt.date) -> list[device_data.Workout]:
        """Workouts the API serves now for the member's local `day` (finished ones only)."""
        if not self._visible(user_id, day):
            return []
        now = self.local_now(user_id).replace(tzinfo=None)
        return [
            w
            for w in device_data.activities(user_id, day)
            if dt.datetime.combine(day, w.start) + dt.timedelta(milliseconds=w.duration_ms) <= now
        ]

    def _visible(self, user_id: str, day: dt.date) -> bool:
        with self.lock:
            user = self._user(user_id)
            hidden = (user_id, day) in self.hidden_days
        return not hidden and user.member_since <= day <= self.local_now(user_id).date()

    # faults and bookkeeping ---------------------------------------------------------------

    def set_fault(self, **settings: Any) -> dict[str, Any]:
        """Inject faults; the keys are those of the `POST /_sandbox/faults` payload.

        Generic: error_burst, error_status, delay_count, delay_seconds, outage (bool),
        outage_seconds, outage_until, clear. Fitbit's: revoke / expire_tokens (lists of user
        ids), revise / hide / release (lists of {"user_id", "date"}), notification_duplicates.
        Returns the resulting settings.
        """
        unknown = set(settings) - FAULT_KEYS - _FITBIT_FAULT_KEYS
        if unknown:
            raise FaultSettingsError(f"unknown fault settings: {sorted(unknown)}")
        generic = {k: v for k, v in settings.items() if k in FAULT_KEYS}
        revoke, expire = string_list(settings, "revoke"), string_list(settings, "expire_tokens")
        revise, hide = user_days(settings, "revise"), user_days(settings, "hide")
        release = user_days(settings, "release")
        default_copies = 1 if settings.get("clear") else self.notification_duplicates
        copies = settings.get("notification_duplicates", default_copies)
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
            raise FaultSettingsError("notification_duplicates must be an integer >= 1")
        with self.lock:
            unknown_users = {u for u in revoke + expire if u not in self.users} | {
                u for u, _ in revise + hide + release if u not in self.users
            }
            if unknown_users:
                raise FaultSettingsError(f"unknown fitbit users: {sorted(unknown_users)}")
            self.faults.update(generic, self.clock())
            self.notification_duplicates = copies
            for user_id in revoke:
                self.revoke(user_id)
            for user_id in expire:
                self.expire_access_token(user_id)
            for user_id, day in revise:
                self.revise(user_id, day)
            for user_id, day in hide:
                self.hide_day(user_id, day)
            for user_id, day in release:
                self.release_day(user_id, day)
            return self.fault_settings()

    def clear_faults(self) -> None:
        self.set_fault(clear=True)

    def fault_settings(self) -> dict[str, Any]:
        with self.lock:
            return self.faults.as_dict() | {"notification_duplicates": self.notification_duplicates}

    def request_count(self, user_id: str) -> int:
        """Requests attributed to this member: data calls with their token (any status, 429s
        included) and successful token grants. Rate-limited calls only: `window_usage`."""
        with self.lock:
            return self._request_counts[user_id]

    def window_usage(self, user_id: str) -> int:
        """Requests counted against the member's current rate-limit window."""
        with self.lock:
            window = self._windows.get(user_id)
            start = self._window_start(self.clock())
            return window.count if window is not None and window.start == start else 0

    def _window_start(self, now: float) -> float:
        return math.floor(now / self.window_seconds) * self.window_seconds

    def _take_rate_limit(self, user_id: str) -> tuple[bool, dict[str, str]]:
        """Count one request; (allowed, Fitbit-Rate-Limit-* headers)."""
        with self.lock:
            now = self.clock()
            start = self._window_start(now)
            window = self._windows.get(user_id)
            count = window.count if window is not None and window.start == start else 0
            allowed = count < self.rate_limit
            if allowed:
                count += 1
            self._windows[user_id] = _Window(start, count)
        reset = max(1, math.ceil(start + self.window_seconds - now))
        headers = {
            "Fitbit-Rate-Limit-Limit": str(self.rate_limit),
            "Fitbit-Rate-Limit-Remaining": str(max(0, self.rate_limit - count)),
            "Fitbit-Rate-Limit-Reset": str(reset),
        }
        return allowed, headers

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

    # subscriptions and notifications ------------------------------------------------------

    def subscriptions_for(self, user_id: str) -> list[Subscription]:
        with self.lock:
            return [s for (owner, _), s in self.subscriptions.items() if owner == user_id]

    def notify(
        self,
        webhook_url: str,
        notifications: list[dict[str, Any]],
        duplicates: int | None = None,
    ) -> list[int]:
        """Send `notifications` signed with this app's secret (duplicates default: the fault)."""
        copies = self.notification_duplicates if duplicates is None else duplicates
        return notify(webhook_url, notifications, self.client_secret, duplicates=copies)

    def notify_subscribers(
        self,
        user_id: str,
        collection_type: str,
        day: dt.date,
        webhook_url: str | None = None,
    ) -> list[int]:
        """Notify the subscriber endpoint for each of the member's matching subscriptions.

        One POST carries one entry per matching subscription; `userRevokedAccess` goes to every
        subscription. Returns the receiver's status codes ([] when nothing matched).
        """
        url = webhook_url or self.subscriber_url
        if url is None:
            raise ValueError("no webhook_url and no subscriber_url configured")
        matching = [
            s
            for s in self.subscriptions_for(user_id)
            if collection_type == "userRevokedAccess"
            or s.collection_type in (None, collection_type)
        ]
        notifications = [
            entry
            for s in matching
            for entry in build_notification(user_id, collection_type, day, s.subscription_id)
        ]
        return self.notify(url, notifications) if notifications else []


_FITBIT_FAULT_KEYS = frozenset(
    {"revoke", "expire_tokens", "revise", "hide", "release", "notification_duplicates"}
)


def _fitbit_user_id(seed: str, n: int) -> str:
    digest = hashlib.sha256(f"{seed}|{n}".encode()).digest()
    alphabet = "0123456789ABCDEFGHJKLMNPQRSTVWXYZ"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:6])


# signatures and notifications ---------------------------------------------------------------


def sign(body: bytes, client_secret: str) -> str:
    """Fitbit's X-Fitbit-Signature: base64(HMAC-SHA1(key=client_secret + "&", body))."""
    digest = hmac.new(f"{client_secret}&".encode(), body, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def build_notification(
    user_id: str, collection_type: str, day: dt.date, subscription_id: str = "1"
) -> list[dict[str, str]]:
    """The JSON array Fitbit posts: no data, just which collection changed for which day."""
    if collection_type not in NOTIFICATION_TYPES:
        raise ValueError(f"collection_type must be one of {NOTIFICATION_TYPES}")
    return [
        {
            "collectionType": collection_type,
            "date": day.isoformat(),
            "ownerId": user_id,
            "ownerType": "user",
            "subscriptionId": subscription_id,
        }
    ]


def notify(
    webhook_url: str,
    notifications: list[dict[str, Any]],
    client_secret: str,
    *,
    duplicates: int = 1,
    signature: str | None = None,
    timeout: float = 10.0,
) -> list[int]:
    """POST the notification array `duplicates` times, signed; returns each status code.

    `signature` overrides the computed header (to check a receiver rejects forgeries).
    Connection errors propagate: unlike Fitbit, nothing is retried.
    """
    body = json.dumps(notifications).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature if signature is not None else sign(body, client_secret),
    }
    with httpx.Client(timeout=timeout) as client:
        return [
            client.post(webhook_url, content=body, headers=headers).status_code
            for _ in range(duplicates)
        ]


def verify_subscriber(webhook_url: str, code: str, timeout: float = 10.0) -> bool:
    """Fitbit's subscriber check: the right code must answer 204 and a wrong one 404."""
    wrong = code + "-wrong"
    with httpx.Client(timeout=timeout) as client:
        right_status = client.get(webhook_url, params={"verify": code}).status_code
        wrong_status = client.get(webhook_url, params={"verify": wrong}).status_code
    return right_status == 204 and wrong_status == 404


# the app ------------------------------------------------------------------------------------


class _Problem(Exception):
    """An error answer in Fitbit's shape: {"errors": [...], "success": false}."""

    def __init__(
        self, status: int, error_type: str, message: str, field_name: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.field_name = field_name

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        error = {"errorType": self.error_type, "message": str(self)}
        if self.field_name:
            error["fieldName"] = self.field_name
        return JSONResponse(
            {"errors": [error], "success": False}, status_code=self.status, headers=headers
        )


Handler = Callable[[Request, FitbitUser], Response]


def create_fitbit_app(state: FitbitState) -> Starlette:
    """The Fitbit Web API as a Starlette app over `state`.

    Provider routes: POST /oauth2/token, GET /oauth2/authorize, POST /oauth2/revoke,
    GET /1/user/{-|id}/profile.json, activities/steps/date/{start}/{end|period}.json,
    body/log/weight/date/{date}.json and {start}/{end|period}.json, activities/list.json,
    POST|DELETE|GET [{collection}/]apiSubscriptions[/{id}].json.

    Admin routes (no auth, sandbox only): GET|POST /_sandbox/faults, POST /_sandbox/users,
    GET /_sandbox/users, GET /_sandbox/requests, POST /_sandbox/notify.
    """

    def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user_id = _bearer_user(state, request)
            status = 500
            try:
                response = await _faulted(state, request)
                if response is None:
                    response = _serve_data(state, request, handler)
                status = response.status_code
                return response
            finally:
                state._record(request, user_id, status)

        return endpoint

    async def token(request: Request) -> Response:
        status = 500
        user_id = None
        try:
            response = await _faulted(state, request)
            if response is None:
                try:
                    user_id, body = _grant(state, request, await request.body())
                    response = JSONResponse(body)
                except _Problem as problem:
                    response = problem.response()
            status = response.status_code
            return response
        finally:
            state._record(request, user_id, status)

    async def authorize(request: Request) -> Response:
        params = request.query_params
        try:
            if params.get("client_id") != state.client_id:
                raise _Problem(400, "invalid_request", "Invalid client_id", "client_id")
            if params.get("response_type") != "code":
                raise _Problem(400, "invalid_request", "Only response_type=code", "response_type")
            redirect_uri = params.get("redirect_uri")
            if not redirect_uri:
                raise _Problem(400, "invalid_request", "Missing redirect_uri", "redirect_uri")
            user_id = params.get("sandbox_user_id")
            with state.lock:
                if user_id is None or user_id not in state.users:
                    user_id = state._add(user_id).user_id
            if params.get("code_challenge") and params.get("code_challenge_method") != "S256":
                raise _Problem(400, "invalid_request", "Only S256", "code_challenge_method")
            code = state.issue_authorization_code(
                user_id, redirect_uri, params.get("code_challenge")
            )
        except _Problem as problem:
            return problem.response()
        query = {"code": code} | ({"state": params["state"]} if "state" in params else {})
        separator = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(f"{redirect_uri}{separator}{urlencode(query)}", status_code=302)

    async def revoke(request: Request) -> Response:
        try:
            _check_client(state, request)
        except _Problem as problem:
            return problem.response()
        token_value = dict(parse_qsl((await request.body()).decode())).get("token", "")
        with state.lock:
            user_id = state._access.get(token_value) or state._refresh.get(token_value)
        if user_id is not None:
            state.revoke(user_id)
        return JSONResponse({})

    async def admin_faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(state.fault_settings())
        try:
            payload = await request.json()
            if not isinstance(payload, dict):
                raise FaultSettingsError("the payload must be a JSON object")
            return JSONResponse(state.set_fault(**payload))
        except (FaultSettingsError, KeyError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def admin_users(request: Request) -> Response:
        if request.method == "GET":
            with state.lock:
                users = [
                    {
                        "user_id": u.user_id,
                        "timezone": u.timezone,
                        "units": u.lb_or_kg,
                        "member_since": u.member_since.isoformat(),
                        "revoked": u.revoked,
                        "requests": state._request_counts[u.user_id],
                    }
                    for u in state.users.values()
                ]
            return JSONResponse({"users": users})
        try:
            payload = await request.json() if await request.body() else {}
            since = payload.get("member_since")
            user = state._add(
                payload.get("user_id"),
                timezone=payload.get("timezone"),
                units=payload.get("units"),
                member_since=dt.date.fromisoformat(since) if since else None,
            )
        except (ValueError, AttributeError, KeyError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(
            {
                "user_id": user.user_id,
                "access_token": user.access_token,
                "refresh_token": user.refresh_token,
                "expires_in": state.token_lifetime_seconds,
                "timezone": user.timezone,
                "units": user.lb_or_kg,
                "member_since": user.member_since.isoformat(),
            },
            status_code=201,
        )

    async def admin_requests(request: Request) -> Response:
        with state.lock:
            by_user = dict(state._request_counts)
            total = len(state.requests)
            statuses = Counter(str(r.status) for r in state.requests)
        return JSONResponse({"total": total, "by_user": by_user, "by_status": statuses})

    async def admin_notify(request: Request) -> Response:
        try:
            payload = await request.json()
            day = dt.date.fromisoformat(payload["date"])
            user_id, collection = str(payload["user_id"]), str(payload["collection_type"])
            url = payload.get("webhook_url")
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"error": f"bad notify payload: {exc}"}, status_code=400)
        try:
            statuses = await asyncio.to_thread(
                state.notify_subscribers, user_id, collection, day, url
            )
        except (KeyError, ValueError, httpx.HTTPError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"statuses": statuses})

    prefix = "/1/user/{user}"
    routes = [
        Route("/oauth2/token", token, methods=["POST"]),
        Route("/oauth2/authorize", authorize, methods=["GET"]),
        Route("/oauth2/revoke", revoke, methods=["POST"]),
        Route(f"{prefix}/profile.json", api(_profile), methods=["GET"]),
        Route(f"{prefix}/activities/steps/date/{{start}}/{{end}}.json", api(_steps)),
        Route(f"{prefix}/body/log/weight/date/{{start}}/{{end}}.json", api(_weight)),
        Route(f"{prefix}/body/log/weight/date/{{start}}.json", api(_weight)),
        Route(f"{prefix}/activities/list.json", api(_activity_list)),
        Route(f"{prefix}/apiSubscriptions.json", api(_list_subscriptions(state))),
        Route(f"{prefix}/{{collection}}/apiSubscriptions.json", api(_list_subscriptions(state))),
        Route(
            f"{prefix}/apiSubscriptions/{{subscription_id}}.json",
            api(_subscription(state)),
            methods=["POST", "DELETE"],
        ),
        Route(
            f"{prefix}/{{collection}}/apiSubscriptions/{{subscription_id}}.json",
            api(_subscription(state)),
            methods=["POST", "DELETE"],
        ),
        Route("/_sandbox/faults", admin_faults, methods=["GET", "POST"]),
        Route("/_sandbox/users", admin_users, methods=["GET", "POST"]),
        Route("/_sandbox/requests", admin_requests, methods=["GET"]),
        Route("/_sandbox/notify", admin_notify, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.fitbit = state
    return app


async def _faulted(state: FitbitState, request: Request) -> Response | None:
    with state.lock:
        delay, status = state.faults.take(state.clock())
    if delay:
        await asyncio.sleep(delay)
    if status is None:
        return None
    return _Problem(status, "system", "The service is temporarily unavailable.").response(
        {"Retry-After": "30"} if status == 503 else None
    )


def _bearer_user(state: FitbitState, request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    with state.lock:
        return state._access.get(value.strip())


def _serve_data(state: FitbitState, request: Request, handler: Handler) -> Response:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    with state.lock:
        user_id = state._access.get(value) if scheme.lower() == "bearer" else None
        user = state.users.get(user_id) if user_id else None
        expired = user is not None and state.clock() >= user.token_expires_at
    auth_header = {"WWW-Authenticate": 'Bearer realm="api.fitbit.com"'}
    if user is None or user.revoked:
        problem = _Problem(
            401, "invalid_token", f"Access token invalid: {value[:12]}... {_OAUTH_DOCS}"
        )
        return problem.response(auth_header)
    if expired:
        problem = _Problem(
            401, "expired_token", f"Access token expired: {value[:12]}... {_OAUTH_DOCS}"
        )
        return problem.response(auth_header)
    allowed, headers = state._take_rate_limit(user.user_id)
    if not allowed:
        response = _Problem(429, "request", "Too Many Requests").response(headers)
        response.headers["Retry-After"] = headers["Fitbit-Rate-Limit-Reset"]
        return response
    try:
        owner = request.path_params.get("user", "-")
        if owner not in ("-", user.user_id):
            raise _Problem(
                403, "insufficient_permissions", f"Not allowed to read user {owner}", "user"
            )
        response = handler(request, user)
    except _Problem as problem:
        response = problem.response()
    response.headers.update(headers)
    return response


def _check_client(state: FitbitState, request: Request) -> None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    try:
        client_id, _, secret = base64.b64decode(value.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        client_id, secret = "", ""
    ok = (
        scheme.lower() == "basic"
        and hmac.compare_digest(client_id, state.client_id)
        and hmac.compare_digest(secret, state.client_secret)
    )
    if not ok:
        raise _Problem(401, "invalid_client", "Invalid authorization header format or client.")


def _grant(state: FitbitState, request: Request, raw: bytes) -> tuple[str, dict[str, Any]]:
    """Answer POST /oauth2/token: (user id, token response) or raise _Problem."""
    _check_client(state, request)
    form = dict(parse_qsl(raw.decode("utf-8", "replace")))
    grant_type = form.get("grant_type")
    with state.lock:
        if grant_type == "refresh_token":
            refresh = form.get("refresh_token", "")
            user_id = state._refresh.get(refresh)
            if user_id is None or state.users[user_id].revoked:
                raise _Problem(
                    400, "invalid_grant", f"Refresh token invalid: {refresh}. {_OAUTH_DOCS}"
                )
        elif grant_type == "authorization_code":
            code = state._codes.pop(form.get("code", ""), None)
            if code is None or code.expires_at < state.clock():
                raise _Problem(
                    400, "invalid_grant", f"Authorization code invalid: {form.get('code')}"
                )
            if form.get("redirect_uri", code.redirect_uri) != code.redirect_uri:
                raise _Problem(400, "invalid_grant", "Redirect URI mismatch", "redirect_uri")
            if code.code_challenge is not None:
                verifier = form.get("code_verifier", "").encode()
                expected = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest())
                if expected.rstrip(b"=").decode() != code.code_challenge:
                    raise _Problem(400, "invalid_grant", "Invalid code_verifier", "code_verifier")
            user_id = code.user_id
            state.users[user_id].revoked = False
        else:
            raise _Problem(
                400, "unsupported_grant_type", f"Unsupported grant_type: {grant_type}", "grant_type"
            )
        access, refresh = state._issue_tokens(user_id)
    return user_id, {
        "access_token": access,
        "expires_in": state.token_lifetime_seconds,
        "refresh_token": refresh,
        "scope": SCOPE,
        "token_type": "Bearer",
        "user_id": user_id,
    }


# data handlers ------------------------------------------------------------------------------


def _profile(request: Request, user: FitbitUser) -> Response:
    state: FitbitState = request.app.state.fitbit
    offset = state.local_now(user.user_id).utcoffset() or dt.timedelta()
    unit = "en_US" if user.lb_or_kg == "lb" else "METRIC"
    return JSONResponse(
        {
            "user": {
                "encodedId": user.user_id,
                "displayName": "Member",
                "timezone": user.timezone,
                "offsetFromUTCMillis": int(offset.total_seconds() * 1000),
                "weightUnit": unit,
                "distanceUnit": unit,
                "locale": "en_US",
                "memberSince": user.member_since.isoformat(),
            }
        }
    )


def _date_range(
    request: Request, user: FitbitUser, periods: tuple[str, ...], max_days: int
) -> tuple[dt.date, dt.date]:
    state: FitbitState = request.app.state.fitbit
    today = state.local_now(user.user_id).date()
    start_raw = request.path_params["start"]
    end_raw = request.path_params.get("end", start_raw)
    start = _parse_day(start_raw, today, "date")
    if end_raw in periods:
        end, start = start, _period_start(start, end_raw)
    else:
        if end_raw[-1:] in "dwmy" and end_raw[:-1].isdigit():
            raise _Problem(400, "validation", f"Invalid period: {end_raw}", "period")
        end = _parse_day(end_raw, today, "endDate")
    if end < start:
        raise _Problem(400, "validation", "The end date must be on or after the start", "endDate")
    if (end - start).days + 1 > max_days:
        raise _Problem(400, "validation", f"Date range must be at most {max_days} days", "endDate")
    return start, end


def _parse_day(raw: str, today: dt.date, field_name: str) -> dt.date:
    if raw == "today":
        return today
    try:
        return dt.date.fromisoformat(raw) if len(raw) == 10 else _bad_date(raw, field_name)
    except ValueError:
        return _bad_date(raw, field_name)


def _bad_date(raw: str, field_name: str) -> dt.date:
    raise _Problem(400, "validation", f"Invalid date:{raw}. Use yyyy-MM-dd or today.", field_name)


def _period_start(end: dt.date, period: str) -> dt.date:
    count, unit = int(period[:-1]), period[-1]
    if unit == "d":
        return end - dt.timedelta(days=count - 1)
    if unit == "w":
        return end - dt.timedelta(days=7 * count - 1)
    months = count * (12 if unit == "y" else 1)
    year, month = divmod(end.year * 12 + end.month - 1 - months, 12)
    day = min(end.day, calendar.monthrange(year, month + 1)[1])
    return dt.date(year, month + 1, day) + dt.timedelta(days=1)


def _days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    for offset in range((end - start).days + 1):
        yield start + dt.timedelta(days=offset)


def _steps(request: Request, user: FitbitUser) -> Response:
    state: FitbitState = request.app.state.fitbit
    start, end = _date_range(request, user, _STEP_PERIODS, MAX_STEPS_RANGE_DAYS)
    series = [
        {"dateTime": day.isoformat(), "value": str(state.steps(user.user_id, day))}
        for day in _days(start, end)
    ]
    return JSONResponse({"activities-steps": series})


def _weight_unit(request: Request) -> tuple[float, int]:
    """(kg per reported unit, decimals) for the request's Accept-Language."""
    language = request.headers.get("accept-language", "").split(",")[0].strip()
    language = language.replace("-", "_").lower()
    if language == "en_us":
        return device_data.KG_PER_LB, 1
    if language == "en_gb":
        return _KG_PER_STONE, 2
    return 1.0, 1


def _weight(request: Request, user: FitbitUser) -> Response:
    state: FitbitState = request.app.state.fitbit
    start, end = _date_range(request, user, _WEIGHT_PERIODS, MAX_WEIGHT_RANGE_DAYS)
    per_unit, decimals = _weight_unit(request)
    zone = ZoneInfo(user.timezone)
    logs = []
    for day in _days(start, end):
        for reading in state.weight_readings(user.user_id, day):
            at = dt.datetime.combine(day, reading.local_time, zone)
            logs.append(
                {
                    "bmi": device_data.bmi(user.user_id, reading.kg),
                    "date": day.isoformat(),
                    "logId": int(at.timestamp()) * 1000,
                    "source": "Aria",
                    "time": reading.local_time.isoformat(),
                    "weight": round(reading.kg / per_unit, decimals),
                }
            )
    return JSONResponse({"weight": logs})


def _query_bound(raw: str, name: str) -> dt.datetime:
    try:
        if len(raw) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(raw), dt.time())
        return dt.datetime.fromisoformat(raw).replace(tzinfo=None)
    except ValueError:
        raise _Problem(
            400, "validation", f"Invalid {name}: {raw}. Use yyyy-MM-dd or yyyy-MM-ddTHH:mm:ss", name
        ) from None


def _activity_list(request: Request, user: FitbitUser) -> Response:
    state: FitbitState = request.app.state.fitbit
    params = request.query_params
    after, before = params.get("afterDate"), params.get("beforeDate")
    sort = params.get("sort", "")
    if (after is None) == (before is None):
        raise _Problem(
            400, "validation", "Exactly one of afterDate or beforeDate is required", "afterDate"
        )
    if sort != ("asc" if after is not None else "desc"):
        raise _Problem(
            400, "validation", "Use sort=asc with afterDate and sort=desc with beforeDate", "sort"
        )
    try:
        limit, offset = int(params.get("limit", "")), int(params.get("offset", "0"))
    except ValueError:
        raise _Problem(400, "validation", "limit and offset must be integers", "limit") from None
    if not 1 <= limit <= MAX_ACTIVITY_LIST_LIMIT or offset < 0:
        raise _Problem(400, "validation", f"limit must be 1-{MAX_ACTIVITY_LIST_LIMIT}", "limit")
    bound_name = "afterDate" if after is not None else "beforeDate"
    bound = _query_bound(after or before or "", bound_name)
    today = state.local_now(user.user_id).date()
    if after is not None:
        days: Iterable[dt.date] = _days(max(bound.date(), user.member_since), today)
    else:
        last = min(bound.date(), today)
        days = (last - dt.timedelta(days=n) for n in range((last - user.member_since).days + 1))
    wanted = offset + limit + 1
    found: list[tuple[dt.date, int, device_data.Workout]] = []
    for day in days:
        todays = list(enumerate(state.workouts(user.user_id, day)))
        for index, workout in todays if after is not None else reversed(todays):
            started = dt.datetime.combine(day, workout.start)
            if (started > bound) if after is not None else (started < bound):
                found.append((day, index, workout))
        if len(found) >= wanted:
            break
    page = found[offset : offset + limit]
    miles = _weight_unit(request)[0] == device_data.KG_PER_LB
    entries = [_activity_entry(user, day, index, w, miles) for day, index, w in page]

    def link(new_offset: int) -> str:
        query = {"offset": new_offset, "limit": limit, "sort": sort, bound_name: after or before}
        return f"{str(request.base_url).rstrip('/')}{request.url.path}?{urlencode(query)}"

    pagination = {
        bound_name: after or before,
        "limit": limit,
        "next": link(offset + limit) if len(found) > offset + limit else "",
        "offset": offset,
        "previous": link(max(0, offset - limit)) if offset > 0 else "",
        "sort": sort,
    }
    return JSONResponse({"activities": entries, "pagination": pagination})


def _activity_entry(
    user: FitbitUser, day: dt.date, index: int, workout: device_data.Workout, miles: bool
) -> dict[str, Any]:
    started = dt.datetime.combine(day, workout.start, ZoneInfo(user.timezone))
    modified = started + dt.timedelta(milliseconds=workout.duration_ms, minutes=12)
    entry: dict[str, Any] = {
        "activeDuration": workout.duration_ms,
        "activityName": workout.name,
        "activityTypeId": workout.fitbit_activity_type_id,
        "calories": workout.calories,
        "duration": workout.duration_ms,
        "lastModified": modified.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "logId": device_data.stable_int("fitbit-activity", user.user_id, day, index, digits=11),
        "logType": "auto_detected",
        "originalDuration": workout.duration_ms,
        "originalStartTime": _iso_with_offset(started),
        "startTime": _iso_with_offset(started),
        "steps": workout.steps,
    }
    if workout.distance_m:
        distance = workout.distance_m / (1609.344 if miles else 1000.0)
        entry |= {"distance": round(distance, 3), "distanceUnit": "Mile" if miles else "Kilometer"}
    return entry


def _iso_with_offset(moment: dt.datetime) -> str:
    """2019-01-03T12:08:23.000-08:00, as Fitbit writes activity start times."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.000%z")
    return f"{text[:-2]}:{text[-2:]}"


def _list_subscriptions(state: FitbitState) -> Handler:
    def handler(request: Request, user: FitbitUser) -> Response:
        collection = request.path_params.get("collection")
        if collection is not None and collection not in COLLECTIONS:
            raise _Problem(404, "not_found", f"Unknown collection {collection}", "collection")
        entries = [
            s.as_json()
            for s in state.subscriptions_for(user.user_id)
            if collection is None or s.collection_type == collection
        ]
        return JSONResponse({"apiSubscriptions": entries})

    return handler


def _subscription(state: FitbitState) -> Handler:
    def handler(request: Request, user: FitbitUser) -> Response:
        collection = request.path_params.get("collection")
        if collection is not None and collection not in COLLECTIONS:
            raise _Problem(404, "not_found", f"Unknown collection {collection}", "collection")
        subscription_id = request.path_params["subscription_id"]
        key = (user.user_id, subscription_id)
        with state.lock:
            existing = state.subscriptions.get(key)
            if request.method == "DELETE":
                if existing is None or existing.collection_type != collection:
                    raise _Problem(404, "not_found", f"No subscription {subscription_id}")
                del state.subscriptions[key]
                return Response(status_code=204)
            wanted = Subscription(
                user.user_id,
                subscription_id,
                collection,
                request.headers.get("x-fitbit-subscriber-id", DEFAULT_SUBSCRIBER_ID),
            )
            if existing == wanted:
                return JSONResponse(existing.as_json(), status_code=200)
            if existing is not None:
                return JSONResponse({"apiSubscriptions": [existing.as_json()]}, status_code=409)
            state.subscriptions[key] = wanted
        return JSONResponse(wanted.as_json(), status_code=201)

    return handler


# command line -------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client-id", default="SANDBOX1")
    parser.add_argument(
        "--client-secret",
        default=os.environ.get("FITBIT_CLIENT_SECRET", "sandbox-client-secret"),
        help="default: FITBIT_CLIENT_SECRET (a secret on a command line is visible in `ps`)",
    )
    parser.add_argument("--rate-limit", type=int, default=RATE_LIMIT_PER_HOUR)
    parser.add_argument("--window-seconds", type=float, default=3600.0)
    parser.add_argument("--subscriber-url", default=None)


def _build(args: argparse.Namespace) -> Starlette:
    state = FitbitState(
        client_id=args.client_id,
        client_secret=args.client_secret,
        rate_limit=args.rate_limit,
        window_seconds=args.window_seconds,
        subscriber_url=args.subscriber_url,
    )
    return create_fitbit_app(state)


def main(argv: list[str] | None = None) -> None:
    run_cli("fitbit_emulator", _build, argv, _add_arguments)


if __name__ == "__main__":
    main()
