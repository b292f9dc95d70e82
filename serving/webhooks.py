"""Fitbit and Garmin notification receivers: authenticate, store in devices.webhook_inbox, answer.

Nothing is fetched from the provider here; a Dagster sensor turns pending inbox rows into
syncs. Each request is authenticated before anything is parsed or stored, costs at most two
statements, and logs counts and keyed hashes only (no tokens, no provider user ids).

Fitbit (`/webhooks/fitbit`): `GET ?verify=` answers the subscriber check; `POST` takes a
JSON array signed with `X-Fitbit-Signature`. A bad signature gets 404, the answer Fitbit's
docs ask for. A signed body that does not parse (not JSON, not an array) is refused whole
with 400: nothing of it is stored, and the refusal shows in Fitbit's subscriber stats and in
`mdp_webhook_requests`. An item without a field we need is set aside (logged with its index
and field, counted as `refused` in `mdp_webhook_items`) and the others are stored, with 204:
refusing the whole array lost its good notifications on every redelivery, since the same
bytes came back each time.

Garmin (`/webhooks/garmin/{summaryType}` or `/webhooks/garmin` with the type as the body's
key): no signature, so the `garmin-client-id` header must equal our consumer key and every
item's `userAccessToken` must belong to a known connection whose `provider_user_id` is the
item's `userId`. Items failing that are dropped and counted, never stored, and the answer is
still 200 (Garmin retries refused deliveries for days, and a retry would not fix them).
So is an item with a wrongly typed field the loader reads (`"steps": "lots"`), and the answer
lists those under `refused`, each with its summary type, index, field and what was wrong.
`userAccessToken` is removed from the stored payload: tokens live encrypted in
devices.connections only.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingestion.devices.garmin.fields import InvalidSummary, check_summary
from mdp.crypto import token_hash
from mdp.phi import log_ref
from mdp.settings import Settings, secret
from serving.bodies import read_limited_body
from serving.health import DATABASE_ERRORS, DatabaseUnavailable
from serving.webhook_inbox import (
    MAX_ID_CHARS,
    InboxItem,
    UnstorableItem,
    payload_text,
    store_items,
    users_by_token_hash,
)

log = logging.getLogger(__name__)

FITBIT_PATH = "/webhooks/fitbit"
GARMIN_PATH = "/webhooks/garmin"
GARMIN_SUMMARY_TYPES = (
    "dailies",
    "epochs",
    "bodyComps",
    "activities",
    "deregistrations",
    "userPermissionsChange",
)
GARMIN_LIFECYCLE_TYPES = frozenset({"deregistrations", "userPermissionsChange"})
# concrete paths, so request metrics get a bounded set of route labels
WEBHOOK_ROUTES = (
    FITBIT_PATH,
    GARMIN_PATH,
    *(f"{GARMIN_PATH}/{summary_type}" for summary_type in GARMIN_SUMMARY_TYPES),
)

FITBIT_CLIENT_SECRET = "FITBIT_CLIENT_SECRET"
FITBIT_VERIFICATION_CODE = "FITBIT_SUBSCRIBER_VERIFICATION_CODE"
GARMIN_CLIENT_ID = "GARMIN_CLIENT_ID"

FITBIT_MAX_BODY_BYTES = 1024 * 1024  # a notification is ~150 bytes
GARMIN_MAX_BODY_BYTES = 16 * 1024 * 1024  # pushes carry full summaries, heart-rate samples too
ACQUIRE_TIMEOUT_SECONDS = 1.0
QUERY_TIMEOUT_SECONDS = 2.0  # Fitbit gives up after 5 s

# notifications that carry no data to fetch, so no date is needed
FITBIT_LIFECYCLE_TYPES = frozenset({"userRevokedAccess", "deleteUser"})
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class InvalidNotification(ValueError):
    """A signed/authenticated body we cannot take; the message names the item and field."""

    def __init__(self, detail: str, index: int | None = None, field: str | None = None) -> None:
        super().__init__(detail)
        self.index = index
        self.field = field

    def body(self) -> dict[str, Any]:
        return {
            "error": "invalid_notification",
            "detail": str(self),
            "index": self.index,
            "field": self.field,
        }


# --- Fitbit --------------------------------------------------------------------------------


def fitbit_signature(client_secret: str, body: bytes) -> str:
    """What Fitbit puts in X-Fitbit-Signature for `body`."""
    digest = hmac.new(f"{client_secret}&".encode(), body, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def fitbit_signature_matches(client_secret: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    expected = fitbit_signature(client_secret, body).encode("ascii")
    # Starlette decodes headers as latin-1; compare bytes so odd characters cannot raise
    return hmac.compare_digest(expected, header.encode("latin-1"))


def _parse_iso_date(value: str) -> dt.date | None:
    if not _ISO_DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidNotification(f"the body is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class FitbitNotifications:
    items: list[InboxItem]
    refused: list[InvalidNotification]  # each names its item's index and field


def parse_fitbit_notifications(body: bytes) -> FitbitNotifications:
    """Inbox items for a Fitbit notification array, and the items refused. Raises
    InvalidNotification for a body that is no JSON array.

    Required: `collectionType`, `ownerId`, and `date` except for revocations. `ownerType` and
    `subscriptionId` are kept in the payload and must be strings when present.
    """
    data = _load_json(body)
    if not isinstance(data, list):
        raise InvalidNotification(
            f"the body must be a JSON array of notifications, not a {type(data).__name__}"
        )
    items, refused = [], []
    for index, item in enumerate(data):
        try:
            items.append(_fitbit_item(index, item))
        except InvalidNotification as exc:
            refused.append(exc)
    return FitbitNotifications(items, refused)


def _fitbit_item(index: int, item: Any) -> InboxItem:
    """One notification as an inbox item; InvalidNotification names its index and field."""
    where = f"notification [{index}]"
    if not isinstance(item, dict):
        raise InvalidNotification(f"{where} is not a JSON object", index)
    for field in ("collectionType", "ownerId", "date", "ownerType", "subscriptionId"):
        value = item.get(field)
        if value is not None and not isinstance(value, str):
            raise InvalidNotification(f"{where}: '{field}' must be a string", index, field)
    for field in ("collectionType", "ownerId"):
        if not item.get(field):
            raise InvalidNotification(f"{where}: '{field}' is missing", index, field)
        if len(item[field]) > MAX_ID_CHARS:
            problem = f"{where}: '{field}' is longer than {MAX_ID_CHARS} characters"
            raise InvalidNotification(problem, index, field)
    collection, owner, date_text = item["collectionType"], item["ownerId"], item.get("date")
    resource_date = None
    if date_text is not None:
        resource_date = _parse_iso_date(date_text)
        if resource_date is None:
            raise InvalidNotification(f"{where}: 'date' is not YYYY-MM-DD", index, "date")
    elif collection not in FITBIT_LIFECYCLE_TYPES:
        raise InvalidNotification(f"{where}: 'date' is missing", index, "date")
    try:
        payload = payload_text(item)
    except UnstorableItem as exc:
        raise InvalidNotification(f"{where}: {exc}", index) from None
    return InboxItem(
        dedupe_key=f"fitbit:{owner}:{collection}:{date_text or ''}",
        provider_user_id=owner,
        collection_type=collection,
        resource_date=resource_date,
        payload=payload,
    )


# --- Garmin --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GarminCandidate:
    """An item that is well formed; stored once its token proves to be a known connection's."""

    token_hash: str
    token_ref: str  # for logs
    item: InboxItem


def _canonical_hash(item: Mapping[str, Any]) -> str:
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def garmin_resource_date(item: Mapping[str, Any]) -> dt.date | None:
    """`calendarDate` (the member's local date) if given, else the UTC date of the start time.

    bodyComps have no start, only `measurementTimeInSeconds`, used the same way.
    """
    calendar_date = item.get("calendarDate")
    if isinstance(calendar_date, str) and (parsed := _parse_iso_date(calendar_date)):
        return parsed
    for field in ("startTimeInSeconds", "measurementTimeInSeconds"):
        seconds = item.get(field)
        if _is_int(seconds):
            try:
                return dt.datetime.fromtimestamp(seconds, dt.UTC).date()
            except (OverflowError, OSError, ValueError):
                return None
    return None


def garmin_candidate(summary_type: str, raw: Any) -> GarminCandidate | None:
    """The inbox item for one Garmin item (push, ping or lifecycle), or None if malformed.

    Raises InvalidSummary when a field we load holds the wrong type (`"steps": "lots"`).
    """
    if not isinstance(raw, dict):
        return None
    token, user_id = raw.get("userAccessToken"), raw.get("userId")
    if not (isinstance(token, str) and token and isinstance(user_id, str) and user_id):
        return None
    if len(user_id) > MAX_ID_CHARS or len(str(raw.get("summaryId", ""))) > MAX_ID_CHARS:
        return None
    item = {key: value for key, value in raw.items() if key != "userAccessToken"}
    try:
        payload = payload_text(item)
    except UnstorableItem:
        return None
    check_summary(item)  # a wrong type would stop the loader later: refuse it now, say why
    resource_date = garmin_resource_date(item)
    once = False
    if summary_type in GARMIN_LIFECYCLE_TYPES:
        dedupe_key = f"garmin-{summary_type}:{user_id}:{_canonical_hash(item)}"
    elif "callbackURL" in item:
        start, end = item.get("uploadStartTimeInSeconds"), item.get("uploadEndTimeInSeconds")
        if not (isinstance(item["callbackURL"], str) and _is_int(start) and _is_int(end)):
            return None
        dedupe_key = f"garmin-ping:{summary_type}:{user_id}:{start}:{end}"
        resource_date = None  # an upload window, not the data's date
    elif _is_int(item.get("summaryId")) or isinstance(item.get("summaryId"), str):
        # summaryId is re-sent with updated values: those are new rows, exact repeats are not
        # (even once processed: the bytes again would load over a newer revision)
        dedupe_key = f"garmin:{summary_type}:{item['summaryId']}:{_canonical_hash(item)}"
        once = True
    else:
        return None
    return GarminCandidate(
        token_hash=token_hash(token),
        token_ref=log_ref("garmin-token", token),
        item=InboxItem(
            dedupe_key=dedupe_key,
            provider_user_id=user_id,
            collection_type=summary_type,
            resource_date=resource_date,
            payload=payload,
            once=once,
        ),
    )


def garmin_sections(data: Any, summary_type: str | None) -> dict[str, list[Any]]:
    """summary type -> items of a Garmin body; raises InvalidNotification on a wrong shape.

    With the type in the URL, the body must hold exactly that key. Without it, every key is a
    summary type (unknown ones are returned too and counted as ignored by the caller).
    """
    if not isinstance(data, dict):
        raise InvalidNotification(
            f"the body must be a JSON object keyed by summary type, not a {type(data).__name__}"
        )
    if summary_type is not None:
        if summary_type not in data:
            raise InvalidNotification(f"the body has no '{summary_type}' list", field=summary_type)
        others = sorted(key for key in data if key != summary_type)
        if others:
            raise InvalidNotification(
                f"the body key(s) {others} do not match the URL's summary type '{summary_type}'",
                field=others[0],
            )
    for key, value in data.items():
        if not isinstance(value, list):
            raise InvalidNotification(f"'{key}' must be a list of items", field=key)
    return data


# --- the receivers -------------------------------------------------------------------------


class WebhookSecrets:
    """Fitbit and Garmin credentials: constructor overrides, else `mdp.settings.secret` on first use.

    Resolved lazily so a missing webhook secret never stops the eligibility API from starting.
    """

    def __init__(self, overrides: Mapping[str, str | None]) -> None:
        self._values = {name: value for name, value in overrides.items() if value is not None}

    async def get(self, name: str, settings: Settings | None) -> str:
        value = self._values.get(name)
        if value is None:
            value = await asyncio.to_thread(secret, name, settings)  # may read/write a file
            self._values[name] = value
        return value


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mdp_webhook_requests",
            "Provider webhook requests by provider and outcome.",
            ["provider", "outcome"],
            registry=registry,
        )
        self.items = Counter(
            "mdp_webhook_items",
            "Notification items by provider and outcome (new, repeat, or why ignored).",
            ["provider", "outcome"],
            registry=registry,
        )

    def request(self, provider: str, outcome: str) -> None:
        self.requests.labels(provider, outcome).inc()

    def add_items(self, provider: str, outcome: str, count: int) -> None:
        if count:
            self.items.labels(provider, outcome).inc(count)


def _unavailable() -> JSONResponse:
    return JSONResponse(
        {"error": "unavailable", "detail": "the database is not reachable"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _too_large(limit: int) -> JSONResponse:
    detail = f"request body is larger than {limit} bytes"
    return JSONResponse({"error": "payload_too_large", "detail": detail}, status_code=413)


class Webhooks:
    """The receivers, sharing the app's Runtime (pool, settings) through `request.app.state`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        fitbit_client_secret: str | None = None,
        fitbit_verification_code: str | None = None,
        garmin_client_id: str | None = None,
    ) -> None:
        self.metrics = WebhookMetrics(registry)
        self.secrets = WebhookSecrets(
            {
                FITBIT_CLIENT_SECRET: fitbit_client_secret,
                FITBIT_VERIFICATION_CODE: fitbit_verification_code,
                GARMIN_CLIENT_ID: garmin_client_id,
            }
        )

    def routes(self) -> list[Route]:
        return [
            Route(FITBIT_PATH, self.fitbit_verify, methods=["GET"]),
            Route(FITBIT_PATH, self.fitbit_notifications, methods=["POST"]),
            Route(GARMIN_PATH, self.garmin_notifications, methods=["POST"]),
            Route(GARMIN_PATH + "/{summary_type}", self.garmin_notifications, methods=["POST"]),
        ]

    async def _secret(self, request: Request, name: str) -> str | None:
        try:
            return await self.secrets.get(name, request.app.state.runtime.settings)
        except Exception:  # the secret's value is never in these messages
            log.exception("cannot read secret %s", name)
            return None

    async def fitbit_verify(self, request: Request) -> Response:
        """Fitbit's subscriber verification: 204 for our code, 404 for any other (or for
        several `verify` values: one of them right is no proof)."""
        codes = request.query_params.getlist("verify")
        code = codes[0] if len(codes) == 1 else None
        expected = await self._secret(request, FITBIT_VERIFICATION_CODE)
        if expected is None:
            self.metrics.request("fitbit", "unavailable")
            return Response(status_code=503)
        if code is not None and hmac.compare_digest(
            code.encode("utf-8", "surrogatepass"), expected.encode()
        ):
            self.metrics.request("fitbit", "verified")
            return Response(status_code=204)
        self.metrics.request("fitbit", "verify_refused")
        return Response(status_code=404)

    async def fitbit_notifications(self, request: Request) -> Response:
        metrics = self.metrics
        signature = request.headers.get("x-fitbit-signature")
        if not signature:
            metrics.request("fitbit", "bad_signature")
            return Response(status_code=404)
        try:
            body = await read_limited_body(request, FITBIT_MAX_BODY_BYTES)
        except ClientDisconnect:
            return Response(status_code=400)
        if body is None:
            metrics.request("fitbit", "too_large")
            return _too_large(FITBIT_MAX_BODY_BYTES)
        client_secret = await self._secret(request, FITBIT_CLIENT_SECRET)
        if client_secret is None:
            metrics.request("fitbit", "unavailable")
            return _unavailable()
        if not fitbit_signature_matches(client_secret, body, signature):
            metrics.request("fitbit", "bad_signature")
            log.warning("fitbit notification refused: signature mismatch (%d bytes)", len(body))
            return Response(status_code=404)
        try:
            parsed = parse_fitbit_notifications(body)
        except InvalidNotification as exc:
            metrics.request("fitbit", "invalid")
            log.warning("fitbit notification refused: %s", exc)
            return JSONResponse(exc.body(), status_code=400)
        items = parsed.items
        for refusal in parsed.refused:  # index and field only: never a value or a user id
            log.warning("fitbit notification set aside: %s", refusal)
        metrics.add_items("fitbit", "refused", len(parsed.refused))
        pool = request.app.state.runtime.pool
        if pool is None:
            metrics.request("fitbit", "unavailable")
            return _unavailable()
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as conn:
                result = await store_items(conn, "fitbit", items, timeout=QUERY_TIMEOUT_SECONDS)
        except DATABASE_ERRORS as exc:
            # the exception text can quote parameters (user ids): log its type only
            log.warning("fitbit notifications not stored (%s)", type(exc).__name__)
            metrics.request("fitbit", "unavailable")
            return _unavailable()
        metrics.request("fitbit", "accepted")
        metrics.add_items("fitbit", "new", result.new_rows)
        metrics.add_items("fitbit", "repeat", result.repeats)
        return Response(status_code=204)

    async def garmin_notifications(self, request: Request) -> Response:
        metrics = self.metrics
        summary_type = request.path_params.get("summary_type")
        if summary_type is not None and summary_type not in GARMIN_SUMMARY_TYPES:
            metrics.request("garmin", "unknown_type")
            detail = f"summary type must be one of {', '.join(GARMIN_SUMMARY_TYPES)}"
            return JSONResponse({"error": "not_found", "detail": detail}, status_code=404)
        client_id = request.headers.get("garmin-client-id")
        expected = await self._secret(request, GARMIN_CLIENT_ID)
        if expected is None:
            metrics.request("garmin", "unavailable")
            return _unavailable()
        if client_id is None or not hmac.compare_digest(
            client_id.encode("latin-1"), expected.encode()
        ):
            metrics.request("garmin", "unauthorized")
            detail = "the garmin-client-id header is missing or wrong"
            return JSONResponse({"error": "unauthorized", "detail": detail}, status_code=401)
        try:
            body = await read_limited_body(request, GARMIN_MAX_BODY_BYTES)
        except ClientDisconnect:
            return Response(status_code=400)
        if body is None:
            metrics.request("garmin", "too_large")
            return _too_large(GARMIN_MAX_BODY_BYTES)
        try:
            sections = garmin_sections(_load_json(body), summary_type)
        except InvalidNotification as exc:
            metrics.request("garmin", "invalid")
            log.warning("garmin notification refused: %s", exc)
            return JSONResponse(exc.body(), status_code=400)

        ignored: Tally[str] = Tally()
        refused: list[dict[str, Any]] = []  # items with a wrongly typed field, and why
        candidates: list[GarminCandidate] = []
        for section, raw_items in sections.items():
            if section not in GARMIN_SUMMARY_TYPES:
                ignored["unknown_type"] += len(raw_items)
                log.warning("garmin: %d item(s) of unhandled type %r", len(raw_items), section)
                continue
            for index, raw in enumerate(raw_items):
                try:
                    candidate = garmin_candidate(section, raw)
                except InvalidSummary as exc:
                    ignored["invalid_field"] += 1
                    refused.append(
                        {
                            "summaryType": section,
                            "index": index,
                            "field": exc.field,
                            "detail": f"{section} item [{index}]: {exc}",
                        }
                    )
                    continue
                if candidate is None:
                    ignored["malformed"] += 1
                else:
                    candidates.append(candidate)

        pool = request.app.state.runtime.pool
        try:
            stored = await self._store_garmin(pool, candidates, ignored)
        except (*DATABASE_ERRORS, DatabaseUnavailable) as exc:
            log.warning("garmin notifications not stored (%s)", type(exc).__name__)
            metrics.request("garmin", "unavailable")
            return _unavailable()
        for reason, count in ignored.items():
            metrics.add_items("garmin", f"ignored_{reason}", count)
        if refused:
            # what was wrong and where, never the value: the body is member health data
            log.warning("garmin: refused %s", "; ".join(r["detail"] for r in refused[:10]))
        metrics.request("garmin", "accepted")
        answer: dict[str, Any] = {"stored": stored, "ignored": sum(ignored.values())}
        if refused:
            answer["refused"] = refused
        return JSONResponse(answer)

    async def _store_garmin(
        self, pool: asyncpg.Pool | None, candidates: list[GarminCandidate], ignored: Tally[str]
    ) -> int:
        """Store the candidates whose token is a known connection's; count the others in `ignored`."""
        if not candidates:
            return 0
        if pool is None:
            raise DatabaseUnavailable("the database is not reachable")
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as conn:
            users = await users_by_token_hash(
                conn, "garmin", (c.token_hash for c in candidates), timeout=QUERY_TIMEOUT_SECONDS
            )
            accepted: list[InboxItem] = []
            unknown_refs: set[str] = set()
            for candidate in candidates:
                owners = users.get(candidate.token_hash)
                if owners is None:
                    ignored["unknown_token"] += 1
                    unknown_refs.add(candidate.token_ref)
                elif candidate.item.provider_user_id not in owners:
                    # a valid token presented with another user's data: never store it
                    ignored["user_mismatch"] += 1
                    log.warning("garmin: token %s sent another userId", candidate.token_ref)
                else:
                    accepted.append(candidate.item)
            if unknown_refs:
                log.warning(
                    "garmin: %d item(s) with an unknown userAccessToken, token refs %s",
                    ignored["unknown_token"],
                    sorted(unknown_refs)[:10],
                )
            result = await store_items(conn, "garmin", accepted, timeout=QUERY_TIMEOUT_SECONDS)
        self.metrics.add_items("garmin", "new", result.new_rows)
        self.metrics.add_items("garmin", "repeat", result.repeats)
        return len(accepted)
