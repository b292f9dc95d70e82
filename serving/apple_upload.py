"""`POST /api/v1/apple-health/samples`: the member app's HealthKit uploads, stored for loading.

The app authenticates as the member (a token from serving.member_tokens). The body is checked
with `parse_upload_batch` and stored once in devices.apple_upload_inbox, keyed by the sha256 of
the raw body, so a re-sent batch is idempotent; ingestion/devices/apple_health/uploads.py loads
the inbox into raw_apple_health.samples. Nothing here writes a raw table.

A bad sample does not refuse the batch: it is left out and listed in the answer, so an app
that re-sends a batch until accepted is never stuck on one sample. That includes samples with
a string Postgres cannot store (NUL, an unpaired surrogate) or a number beyond float range:
such a sample is stored as `null` in its place, so the loader sees the same indices and the
same problems. Only a body that is not a JSON object of the expected shape gets a 422.

Logs and audit rows carry `mdp.phi.log_ref(member_id)`, never the member id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingestion.devices.apple_health import (
    UploadBatch,
    UploadPayloadError,
    UploadProblem,
    parse_upload_batch,
)
from mdp.phi import log_ref
from mdp.settings import Settings, secret
from serving.audit import AuditEvent
from serving.bodies import read_limited_body
from serving.body_timeout import body_timed_out, timeout_detail
from serving.eligibility import is_json_content_type
from serving.health import DATABASE_ERRORS, DatabaseUnavailable
from serving.member_tokens import KEY_NAME, InvalidMemberToken, bearer_token, verify_member_token
from serving.request_ids import callers_request_id

log = logging.getLogger(__name__)

UPLOAD_PATH = "/api/v1/apple-health/samples"
MAX_BODY_BYTES = 5 * 1024 * 1024
ACQUIRE_TIMEOUT_SECONDS = 2.0
QUERY_TIMEOUT_SECONDS = 5.0
ACTION = "apple_health_upload"
PURPOSE = "device_data_collection"

STORE_SQL = """
insert into devices.apple_upload_inbox (member_id, batch_key, payload)
values ($1, $2, $3::jsonb)
on conflict (member_id, batch_key) do nothing
returning upload_id
"""

# jsonb refuses NUL and unpaired surrogates; json.loads joins valid pairs, so any left are lone
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InvalidUpload(ValueError):
    """The body as a whole cannot be taken (answered 422); the message says why."""


@dataclass(frozen=True)
class CheckedUpload:
    """What the loader will see: the batch parsed from exactly the payload that is stored."""

    batch: UploadBatch
    problems: list[UploadProblem]
    payload_text: str  # JSON for the jsonb column

    @property
    def has_data(self) -> bool:
        return bool(self.batch.rows or self.batch.deleted_uuids)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_upload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The body as a JSON object; a missing Content-Type is taken to mean JSON."""
    if content_type is not None and not is_json_content_type(content_type):
        raise InvalidUpload(f"expected Content-Type application/json, got {content_type[:64]!r}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUpload("the body is not UTF-8 text") from None
    if not text.strip():
        raise InvalidUpload("the body is empty: expected a JSON object")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidUpload(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidUpload("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer beyond Python's digit limit
        raise InvalidUpload(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidUpload(f"the body must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def unstorable_reason(value: Any) -> str | None:
    """Why Postgres jsonb cannot hold `value` (keys included), or None. Iterative: no depth limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                return (
                    "contains a NUL character"
                    if found.group() == "\x00"
                    else "contains an unpaired UTF-16 surrogate"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "contains a number out of range"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _bad_field(sample: Any) -> str:
    """The sample's top-level field holding the unstorable value, for the answer's `field`."""
    if isinstance(sample, dict):
        for key, value in sample.items():
            if unstorable_reason(key):
                return "sample"
            if unstorable_reason(value):
                return key
    return "sample"


def check_upload(payload: dict[str, Any], member_id: str) -> CheckedUpload:
    """Validate an upload and build the payload to store; raises UploadPayloadError on a wrong shape."""
    samples, deleted = payload.get("samples", []), payload.get("deleted", [])
    replaced: dict[tuple[str, int], UploadProblem] = {}
    if isinstance(samples, list):
        samples = list(samples)
        for index, sample in enumerate(samples):
            reason = unstorable_reason(sample)
            if reason:
                replaced[("sample", index)] = UploadProblem(index, _bad_field(sample), reason)
                samples[index] = None
    if isinstance(deleted, list):
        deleted = list(deleted)
        for index, value in enumerate(deleted):
            reason = unstorable_reason(value)
            if reason:
                replaced[("deleted", index)] = UploadProblem(index, "deleted", reason)
                deleted[index] = None
    # only what the loader reads is stored; it re-parses this and sees the same problems
    stored = {"samples": samples, "deleted": deleted}
    batch = parse_upload_batch(stored, member_id)
    problems = [
        replaced.get(("deleted" if p.field == "deleted" else "sample", p.index), p)
        for p in batch.problems
    ]
    text = json.dumps(stored, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return CheckedUpload(batch, problems, text)


def _request_id(header: str | None) -> str:
    return callers_request_id(header) or secrets.token_hex(8)


def upload_event(
    member_ref: str, outcome: str, request_id: str, status: int, counts: dict[str, Any]
) -> AuditEvent:
    """The audit.access_log row for one upload: a member writing their own data."""
    return AuditEvent(
        dt.datetime.now(dt.UTC),
        f"member:{member_ref}",
        ACTION,
        None,  # type: ignore[arg-type]  # a member token names no partner
        member_ref,
        PURPOSE,
        outcome,
        request_id,
        json.dumps({"status": status, **counts}),
    )


class UploadMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mdp_apple_health_uploads",
            "Apple Health upload requests by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.samples = Counter(
            "mdp_apple_health_upload_samples",
            "Samples and deletions in Apple Health uploads, by outcome.",
            ["outcome"],
            registry=registry,
        )

    def request(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def add_samples(self, outcome: str, count: int) -> None:
        if count:
            self.samples.labels(outcome).inc(count)


async def store_upload(
    pool: asyncpg.Pool | None, member_id: str, batch_key: str, payload_text: str
) -> bool:
    """Store the batch; False when this member already sent the same body."""
    if pool is None:
        raise DatabaseUnavailable("the database is not reachable")
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as conn:
        upload_id = await conn.fetchval(
            STORE_SQL, member_id, batch_key, payload_text, timeout=QUERY_TIMEOUT_SECONDS
        )
    return upload_id is not None


class AppleUploads:
    """The upload receiver; shares the app's Runtime (pool, audit, settings) via app.state."""

    def __init__(self, registry: CollectorRegistry, *, member_token_key: str | None = None) -> None:
        self.metrics = UploadMetrics(registry)
        self._key = member_token_key

    def routes(self) -> list[Route]:
        return [Route(UPLOAD_PATH, self.upload, methods=["POST"])]

    async def _token_key(self, settings: Settings | None) -> str:
        if self._key is None:  # may read or create a file under the state folder
            self._key = await asyncio.to_thread(secret, KEY_NAME, settings)
        return self._key

    async def upload(self, request: Request) -> Response:
        runtime = request.app.state.runtime
        metrics = self.metrics
        headers = {"X-Request-ID": _request_id(request.headers.get("x-request-id"))}
        try:
            token = bearer_token(request.headers.get("authorization"))
            member_id = verify_member_token(token, await self._token_key(runtime.settings))
        except InvalidMemberToken as exc:
            metrics.request(f"unauthorized_{exc.reason}")
            headers["WWW-Authenticate"] = "Bearer"
            return _error(401, "unauthorized", str(exc), headers)

        member_ref = log_ref(member_id)

        def answer(status: int, body: dict[str, Any], outcome: str, **counts: Any) -> Response:
            runtime.audit.record(
                upload_event(member_ref, outcome, headers["X-Request-ID"], status, counts)
            )
            metrics.request(outcome)
            return JSONResponse(body, status_code=status, headers=headers)

        try:
            body = await read_limited_body(request, MAX_BODY_BYTES)
        except ClientDisconnect:
            if why := body_timed_out(request.scope):  # an upload cut off is audited too
                headers["Connection"] = "close"
                detail = timeout_detail(why)
                return answer(408, {"error": "request_timeout", "detail": detail}, "timeout")
            return Response(status_code=400)
        if body is None:
            detail = f"request body is larger than {MAX_BODY_BYTES} bytes"
            return answer(413, {"error": "payload_too_large", "detail": detail}, "too_large")
        content_type = request.headers.get("content-type")
        try:
            checked = await asyncio.to_thread(_check_body, body, content_type, member_id)
        except (InvalidUpload, UploadPayloadError) as exc:
            return answer(422, {"error": "invalid_upload", "detail": str(exc)}, "invalid")

        batch = checked.batch
        duplicate = False
        if checked.has_data:  # a batch with nothing to load is answered, not stored
            batch_key = hashlib.sha256(body).hexdigest()
            try:
                duplicate = not await store_upload(
                    runtime.pool, member_id, batch_key, checked.payload_text
                )
            except (*DATABASE_ERRORS, DatabaseUnavailable) as exc:
                log.warning("apple upload from %s not stored (%s)", member_ref, type(exc).__name__)
                headers["Retry-After"] = "5"
                detail = "the database is not reachable"
                return answer(503, {"error": "unavailable", "detail": detail}, "unavailable")
        result = {
            "accepted": len(batch.rows),
            "deleted": len(batch.deleted_uuids),
            "rejected": [
                {"index": p.index, "field": p.field, "problem": p.message} for p in checked.problems
            ],
            "duplicate": duplicate,
        }
        if not duplicate:
            metrics.add_samples("accepted", result["accepted"])
            metrics.add_samples("deleted", result["deleted"])
            metrics.add_samples("rejected", len(checked.problems))
        counts = {
            "accepted": result["accepted"],
            "deleted": result["deleted"],
            "rejected": len(checked.problems),
            "duplicate": duplicate,
        }
        return answer(202, result, "duplicate" if duplicate else "accepted", **counts)


def _check_body(body: bytes, content_type: str | None, member_id: str) -> CheckedUpload:
    return check_upload(decode_upload(body, content_type), member_id)


def _error(status: int, error: str, detail: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)
