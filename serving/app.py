"""The eligibility API application: `uvicorn serving.app:create_app --factory`.

`create_app` only wires objects; connecting to Postgres, loading partner configs and
starting background tasks happen in the lifespan, so importing this module has no effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ingestion.devices.fitbit.client import FitbitApp
from ingestion.partners.config import PartnerConfig, PartnerConfigs, load_partner_configs
from mdp.database import ConnectionParams, connection_params
from mdp.phi import keyed_hash, log_ref
from mdp.settings import Settings, load_settings
from serving.api_keys import KEYS_CHANGED_CHANNEL
from serving.apple_upload import UPLOAD_PATH, AppleUploads
from serving.audit import AuditWriter, check_row
from serving.auth import (
    AUTH_FAILURES_PER_MINUTE,
    Authenticator,
    KeyLookupWithheld,
    Unauthorized,
)
from serving.bodies import declared_too_large
from serving.body_timeout import (
    BODY_IDLE_SECONDS,
    BODY_TOTAL_SECONDS,
    TIMED_OUT,
    BodyTimedOut,
    BodyTimeout,
    BodyTimer,
    timeout_detail,
)
from serving.cache import MISSING, LookupCache, cache_entry, from_cache_entry
from serving.device_connect import AUTHORIZE_PATH, CALLBACK_PATH, DeviceConnect
from serving.eligibility import (
    CHECK_PATH,
    MAX_BODY_BYTES,
    NOT_FOUND_JSON,
    InvalidRequest,
    MartRow,
    load_json_object,
    lookup_id,
    openapi_document,
    rendered_found_body,
    requested_partner,
    validate_request,
)
from serving.gc_tuning import tuned_for_serving
from serving.health import DATABASE_ERRORS, MART_OID_SQL, DatabaseUnavailable, healthz
from serving.member_lookup import MemberLookups
from serving.metrics import MetricsMiddleware, ServingMetrics, metrics_endpoint
from serving.rate_limit import RateLimiter, retry_after_header
from serving.request_ids import callers_request_id
from serving.service_paths import MEMBER_TOKEN, MEMBER_TOKEN_SCHEME, service_paths
from serving.webhooks import WEBHOOK_ROUTES, Webhooks

log = logging.getLogger(__name__)

MART = "mart_eligibility"
MART_REFRESHED_CHANNEL = "mdp_mart_refreshed"
REFRESH_VERSION_SQL = "select version, refreshed_at from serving.mart_refreshes where mart = $1"
HAS_REFRESHES_SQL = "select to_regclass('serving.mart_refreshes') is not null"
ROUTES = (
    CHECK_PATH,
    "/healthz",
    "/metrics",
    "/openapi.json",
    *WEBHOOK_ROUTES,
    UPLOAD_PATH,
    AUTHORIZE_PATH,
    CALLBACK_PATH,
)

PartnerConfigsArg = (
    PartnerConfigs | Mapping[str, PartnerConfig | Mapping[str, Any]] | Iterable[PartnerConfig]
)


class Runtime:
    """Everything the handlers share: pool, caches, limiter, audit writer, metrics.

    Background work (one task): recreate the pool or the LISTEN connection when they are
    gone, and poll the mart's refresh version and table OID as a fallback for NOTIFY.
    """

    def __init__(
        self,
        settings: Settings | None,
        params: ConnectionParams | None,
        partners: dict[str, PartnerConfig] | None,
        *,
        auth_cache_ttl: float,
        poll_interval: float,
        audit_flush_interval: float,
        pool_min_size: int,
        pool_max_size: int,
        auth_failures_per_minute: int,
    ) -> None:
        self.settings = settings
        self.params = params
        self.partners: dict[str, PartnerConfig] = partners or {}
        self._partners_given = partners is not None
        self._partners_fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self.poll_interval = poll_interval
        self.audit_flush_interval = audit_flush_interval
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.metrics = ServingMetrics()
        self.lookup_cache = LookupCache()
        self.member_lookups = MemberLookups(on_query=self.metrics.lookup_queries.inc)
        self.authenticator = Authenticator(ttl_seconds=auth_cache_ttl)
        self.rate_limiter = RateLimiter()
        # failed authentications per client address: past the limit, only keys already
        # known good are accepted, and nothing the client sends reaches the database
        self.auth_failures = RateLimiter()
        self.auth_failures_per_minute = auth_failures_per_minute
        self.audit = self._new_audit_writer()
        self.pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._mart_fingerprint: tuple[Any, ...] | None = None
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    def _new_audit_writer(self) -> AuditWriter:
        return AuditWriter(
            lambda: self.params if self.pool is not None else None,
            flush_interval=self.audit_flush_interval,
            on_written=self.metrics.audit_written.inc,
            on_dropped=self.metrics.audit_dropped.inc,
            spool_dir=None if self.settings is None else self.settings.state_dir / "audit_spool",
        )

    async def start(self) -> None:
        if not self._partners_given:
            self.settings = self.settings or load_settings()
            self._partners_fingerprint = None
            await self._reload_partners()
        if self.params is None:
            # may start the embedded Postgres, which blocks
            self.params = await asyncio.to_thread(connection_params, self.settings)
        await asyncio.to_thread(keyed_hash, "")  # read the hashing key once, off the loop
        self.lookup_cache.clear()
        self.authenticator.invalidate()
        self.audit = self._new_audit_writer()  # asyncio primitives belong to this loop
        await self._ensure_pool()
        await self._ensure_listener()
        await self._poll_mart()
        self.audit.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="serving-maintenance")
        log.info(
            "eligibility API ready: %d partner(s), database %s, listener %s",
            len(self.partners),
            "up" if self.pool else "down",
            "up" if self.listening else "down",
        )

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        await self.audit.close()
        await self._close_listener()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), timeout=5.0)
            except (TimeoutError, *DATABASE_ERRORS):
                self.pool.terminate()
            self.pool = None

    def invalidate_lookups(self, source: str) -> None:
        self.lookup_cache.clear()
        self.metrics.cache_invalidations.labels(source).inc()

    async def _reload_partners(self) -> None:
        """Load the partner configs again when their folder changed: a partner added (or its
        rate limit changed) since the API started is served without a restart. A partner
        whose file now has a problem keeps the config it had: a typo in a YAML file must
        not cut a partner off (the problem is logged, and `mdp partner validate` names it)."""
        if self._partners_given:
            return
        assert self.settings is not None
        folder = self.settings.partner_config_dir
        fingerprint = await asyncio.to_thread(folder_fingerprint, folder)
        if fingerprint == self._partners_fingerprint:
            return
        loaded = await asyncio.to_thread(load_partner_configs, folder)
        partners = dict(loaded.configs)
        for problem in loaded.problems:
            kept = problem.file.stem in self.partners and problem.file.stem not in partners
            if kept:
                partners[problem.file.stem] = self.partners[problem.file.stem]
            log.warning(
                "partner config not loaded: %s%s",
                problem,
                "; its last good one stays" if kept else "",
            )
        if self._partners_fingerprint is not None:
            log.info("partner configs reloaded: %d partner(s)", len(partners))
        self.partners, self._partners_fingerprint = partners, fingerprint

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            steps = (
                self._reload_partners,
                self._ensure_pool,
                self._ensure_listener,
                self._poll_mart,
            )
            for step in steps:
                try:
                    await step()
                except Exception:  # keep the loop alive; these paths carry no PHI
                    log.exception("serving maintenance step %s failed", step.__name__)

    def _connect_kwargs(self) -> dict[str, Any]:
        assert self.params is not None
        p = self.params
        return {
            "host": p.host,
            "port": p.port,
            "user": p.user,
            "password": p.password,
            "database": p.dbname,
            **({"ssl": p.sslmode} if p.sslmode else {}),
            "server_settings": {
                "application_name": "mdp-serving",
                # the lookups' statements are prepared once per connection, but under "auto"
                # Postgres planned the mart lookup again for every batch of ids: 180 µs of
                # its CPU a 10-id query on this machine, 130 µs with the generic plan
                "plan_cache_mode": "force_generic_plan",
            },
        }

    async def _ensure_pool(self) -> None:
        if self.pool is not None:
            return
        try:
            self.pool = await asyncpg.create_pool(
                **self._connect_kwargs(),
                min_size=self.pool_min_size,
                max_size=self.pool_max_size,
                timeout=5.0,
                reset=_keep_session,
            )
        except DATABASE_ERRORS as exc:
            log.warning(
                "cannot reach Postgres (%s); retrying in the background", type(exc).__name__
            )

    async def _ensure_listener(self) -> None:
        conn = self._listener
        if conn is not None and not conn.is_closed():
            try:  # a dropped TCP connection is only noticed when used
                await conn.execute("select 1", timeout=2.0)
                return
            except DATABASE_ERRORS:
                log.warning("LISTEN connection lost; reconnecting")
                await self._close_listener()
        try:
            conn = await asyncpg.connect(**self._connect_kwargs(), timeout=5.0)
            await conn.add_listener(MART_REFRESHED_CHANNEL, self._on_mart_refreshed)
            await conn.add_listener(KEYS_CHANGED_CHANNEL, self._on_keys_changed)
        except DATABASE_ERRORS as exc:
            log.warning("cannot LISTEN for refreshes (%s); polling only", type(exc).__name__)
            return
        conn.add_termination_listener(self._on_listener_closed)
        self._listener = conn
        # anything announced while we were not listening was missed
        self.invalidate_lookups("listener_connected")
        self.authenticator.invalidate()

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None:
            return
        conn.remove_termination_listener(self._on_listener_closed)
        try:
            await asyncio.wait_for(conn.close(), timeout=2.0)
        except (TimeoutError, *DATABASE_ERRORS):
            conn.terminate()

    def _on_listener_closed(self, conn: asyncpg.Connection) -> None:
        if conn is self._listener:
            log.warning("LISTEN connection closed; the next maintenance tick reconnects")
            self._listener = None

    def _on_mart_refreshed(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.invalidate_lookups("notify")

    def _on_keys_changed(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.authenticator.invalidate()
        # a key for a partner configured a moment ago: its config is read before the key is
        # used, not at the next maintenance tick
        task = asyncio.ensure_future(self._reload_partners())
        task.add_done_callback(_log_failure)

    async def _poll_mart(self) -> None:
        pool = self.pool
        if pool is None:
            return
        try:
            async with pool.acquire(timeout=2.0) as conn:
                mart_oid = await conn.fetchval(MART_OID_SQL, timeout=2.0)
                version = None
                if await conn.fetchval(HAS_REFRESHES_SQL, timeout=2.0):
                    version = await conn.fetchrow(REFRESH_VERSION_SQL, MART, timeout=2.0)
        except DATABASE_ERRORS as exc:
            log.warning("mart refresh poll failed (%s)", type(exc).__name__)
            return
        # the OID changes when dbt swaps in a rebuilt table, even if no post-hook ran
        fingerprint = (mart_oid, tuple(version) if version else None)
        if fingerprint != self._mart_fingerprint:
            if self._mart_fingerprint is not None:
                self.invalidate_lookups("poll")
            self._mart_fingerprint = fingerprint


def folder_fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """The partner config files as (name, mtime, size): any edit, addition or removal shows."""
    if not folder.is_dir():
        return ()
    entries = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".yaml", ".yml"):
            with contextlib.suppress(OSError):
                info = path.stat()
                entries.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(entries)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("partner config reload failed (%s)", type(task.exception()).__name__)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (a round trip per lookup): pool connections
    run single statements and COPY only, never SET, LISTEN or advisory locks. An open
    transaction is still rolled back by asyncpg before this is called."""


def _partner_map(configs: PartnerConfigsArg | None) -> dict[str, PartnerConfig] | None:
    if configs is None:
        return None
    if isinstance(configs, PartnerConfigs):
        return dict(configs.configs)
    values = configs.values() if isinstance(configs, Mapping) else configs
    partners: dict[str, PartnerConfig] = {}
    for value in values:
        config = value if isinstance(value, PartnerConfig) else PartnerConfig.model_validate(value)
        partners[config.partner_id] = config
    return partners


# a random per-process prefix and a counter: unique like a uuid4, without a syscall per request
_REQUEST_ID_PREFIX = secrets.token_hex(6)
_request_numbers = itertools.count(1)


def _request_id(header: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new one."""
    return callers_request_id(header) or f"{_REQUEST_ID_PREFIX}-{next(_request_numbers):x}"


async def _read_body(receive: Receive, content_length: str | None, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` bytes."""
    if declared_too_large(content_length, limit):
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if why := message.get(TIMED_OUT):
                raise BodyTimedOut(why)
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


_CHECK_HEADERS = (b"x-request-id", b"authorization", b"content-length", b"content-type")


def _check_headers(scope: Scope) -> dict[str, str]:
    """The request headers the check reads, in one pass over the request's (the first of a
    repeated one, as Starlette's `Headers` gives): each `request.headers.get` scans them all."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _CHECK_HEADERS and name not in found:
            found[name] = value
    return {name.decode(): value.decode("latin-1") for name, value in found.items()}


class RenderedJSON(Response):
    """A JSON body rendered already, with its headers built as they are (Starlette's
    `init_headers` re-encodes and scans them for every response)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        self.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers.items()
            ),
        ]


def _error(status: int, error: str, detail: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def check_eligibility(request: Request) -> Response:
    """POST /api/v1/eligibility/check (see /openapi.json for the contract)."""
    runtime: Runtime = request.app.state.runtime
    metrics = runtime.metrics
    sent = _check_headers(request.scope)
    headers = {"X-Request-ID": _request_id(sent.get("x-request-id"))}
    peer = request.scope.get("client")  # (host, port); Starlette's request.client wraps it
    client = peer[0] if peer else "unknown"
    failures_allowed = runtime.auth_failures_per_minute
    throttled = runtime.auth_failures.wait(client, failures_allowed)
    try:
        principal = await runtime.authenticator.authenticate(
            sent.get("authorization"), runtime.pool, lookup=not throttled
        )
    except KeyLookupWithheld:
        metrics.auth_failures.labels("throttled").inc()
        headers["Retry-After"] = retry_after_header(throttled)
        detail = (
            f"more than {failures_allowed} failed authentications a minute from this address;"
            " only active keys are checked until then"
        )
        return _error(429, "rate_limited", detail, headers)
    except Unauthorized as exc:
        metrics.auth_failures.labels(exc.reason).inc()
        runtime.auth_failures.acquire(client, failures_allowed)
        headers["WWW-Authenticate"] = "Bearer"
        return _error(401, "unauthorized", exc.detail, headers)
    except DatabaseUnavailable as exc:
        return _error(503, "unavailable", str(exc), {**headers, "Retry-After": "5"})

    partner_id = principal.partner_id
    member_ref: str | None = None

    def answer(status: int, body: dict[str, Any] | bytes, outcome: str) -> Response:
        # rendered before it is audited, so the audit row records what was sent
        if isinstance(body, bytes):  # rendered already (the hot answers)
            response: Response = RenderedJSON(body, status, headers)
        else:
            response = JSONResponse(body, status_code=status, headers=headers)
        runtime.audit.record_row(
            check_row(
                principal.actor, partner_id, member_ref, outcome, headers["X-Request-ID"], status
            )
        )
        metrics.count_check(partner_id, outcome)
        return response

    partner = runtime.partners.get(partner_id)
    if partner is None or not partner.eligibility_api.enabled:
        detail = (
            f"the eligibility API is not enabled for partner {partner_id}"
            if partner is not None
            else f"partner {partner_id} has no partner config the API could load"
        )
        return answer(403, {"error": "forbidden", "detail": detail}, "forbidden")
    if runtime.audit.backlogged:  # fail closed: a member read must leave an audit row
        metrics.count_check(partner_id, "audit_backlog")
        detail = "the audit log is catching up; retry shortly"
        return _error(503, "unavailable", detail, {**headers, "Retry-After": "1"})
    limit = partner.eligibility_api.rate_limit_per_minute
    wait = runtime.rate_limiter.acquire(partner_id, limit)
    if wait:
        metrics.rate_limited.labels(partner_id).inc()
        headers["Retry-After"] = retry_after_header(wait)
        detail = f"rate limit of {limit} requests per minute exceeded"
        return answer(429, {"error": "rate_limited", "detail": detail}, "rate_limited")

    try:
        body = await _read_body(request.receive, sent.get("content-length"), MAX_BODY_BYTES)
    except ClientDisconnect:
        return Response(status_code=400)
    except BodyTimedOut as timeout:
        headers["Connection"] = "close"
        detail = timeout_detail(str(timeout))
        return answer(408, {"error": "request_timeout", "detail": detail}, "timeout")
    if body is None:
        detail = f"request body is larger than {MAX_BODY_BYTES} bytes"
        return answer(413, {"error": "payload_too_large", "detail": detail}, "invalid")
    today = dt.date.today()
    try:
        payload = load_json_object(body, sent.get("content-type"))
        claimed = requested_partner(payload)
        if claimed is not None and claimed != partner_id:
            detail = "partner_id in the body does not match the API key's partner"
            return answer(403, {"error": "forbidden", "detail": detail}, "forbidden")
        check = validate_request(payload, today)
        member_key = lookup_id(check.employee_id, partner.inbound.identifier)
    except InvalidRequest as exc:
        return answer(422, exc.body(), "invalid")

    cache_key = (partner_id, member_key)
    cached = runtime.lookup_cache.get(cache_key)
    if cached is MISSING:
        metrics.cache_misses.inc()
        member_ref = log_ref(partner_id, member_key)
        generation = runtime.lookup_cache.generation
        try:
            row = await runtime.member_lookups.fetch(runtime.pool, partner_id, member_key)
        except DatabaseUnavailable as exc:
            headers["Retry-After"] = "5"
            return answer(503, {"error": "unavailable", "detail": str(exc)}, "unavailable")
        runtime.lookup_cache.put(cache_key, cache_entry(member_ref, row), generation)
    else:
        metrics.cache_hits.inc()
        member_ref, row = from_cache_entry(cached)  # type: ignore[arg-type]
    # the cache holds the row, not the answer: DOB is compared per request
    if not isinstance(row, MartRow) or row.date_of_birth != check.date_of_birth:
        return answer(404, NOT_FOUND_JSON, "not_found")
    body, eligible = rendered_found_body(row, today)
    return answer(200, body, "eligible" if eligible else "not_eligible")


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


def _openapi() -> dict[str, Any]:
    """The eligibility check's contract, plus every other route the service answers."""
    document = openapi_document()
    document["paths"].update(service_paths())
    document["components"]["securitySchemes"][MEMBER_TOKEN] = MEMBER_TOKEN_SCHEME
    return document


def create_app(
    settings: Settings | None = None,
    params: ConnectionParams | str | None = None,
    partner_configs: PartnerConfigsArg | None = None,
    *,
    auth_cache_ttl: float = 3.0,
    poll_interval: float = 2.0,
    audit_flush_interval: float = 0.2,
    pool_min_size: int = 2,
    pool_max_size: int = 10,
    auth_failures_per_minute: int = AUTH_FAILURES_PER_MINUTE,
    fitbit_client_secret: str | None = None,
    fitbit_verification_code: str | None = None,
    garmin_client_id: str | None = None,
    fitbit_app: FitbitApp | None = None,
    body_idle_seconds: float = BODY_IDLE_SECONDS,
    body_total_seconds: float = BODY_TOTAL_SECONDS,
) -> EligibilityService:
    """Build the app. Unset arguments are resolved at startup from the environment
    (`load_settings()`, `connection_params()`, the partner config folder); unset webhook
    credentials on a webhook's first request (`mdp.settings.secret`)."""
    if isinstance(params, str):
        params = ConnectionParams.from_url(params)
    runtime = Runtime(
        settings,
        params,
        _partner_map(partner_configs),
        auth_cache_ttl=auth_cache_ttl,
        poll_interval=poll_interval,
        audit_flush_interval=audit_flush_interval,
        pool_min_size=pool_min_size,
        pool_max_size=pool_max_size,
        auth_failures_per_minute=auth_failures_per_minute,
    )

    webhooks = Webhooks(
        runtime.metrics.registry,
        fitbit_client_secret=fitbit_client_secret,
        fitbit_verification_code=fitbit_verification_code,
        garmin_client_id=garmin_client_id,
    )
    apple_uploads = AppleUploads(runtime.metrics.registry)
    device_connect = DeviceConnect(fitbit_app)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            with tuned_for_serving():
                yield
        finally:
            await runtime.stop()

    app = EligibilityService(
        body_idle_seconds=body_idle_seconds,
        body_total_seconds=body_total_seconds,
        routes=[
            Route(CHECK_PATH, check_eligibility, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            *webhooks.routes(),
            *apple_uploads.routes(),
            *device_connect.routes(),
        ],
        middleware=[
            Middleware(MetricsMiddleware, metrics=runtime.metrics, routes=ROUTES),
            Middleware(BodyTimeout, seconds=body_idle_seconds, total_seconds=body_total_seconds),
        ],
        exception_handlers={HTTPException: _http_error, 500: _internal_error},
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.openapi = _openapi()
    app.state.webhooks = webhooks
    app.state.apple_uploads = apple_uploads
    return app


class EligibilityService(Starlette):
    """The app, with the eligibility check answered ahead of Starlette's middleware stack.

    The check is the route partners call under load. Its way through the stack (error and
    exception middleware, routing, the request wrappers, the metrics and body-timeout
    middlewares) cost ~16 µs of the ~46 µs a cached check took in process, and under the
    bench's load the lane answered ~24% more checks a second. It does for the check what that
    stack did: times and counts it (`/metrics`), bounds the body's arrival (408), and answers
    an exception with the API's 500 before re-raising it for the server to log. Every other
    route, and the check under a root path, go through the stack."""

    def __init__(self, *, body_idle_seconds: float, body_total_seconds: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.body_idle_seconds = body_idle_seconds
        self.body_total_seconds = body_total_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == CHECK_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self._check(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self  # as Starlette sets it: handlers reach the runtime through it
        started = time.perf_counter()
        status = 500
        try:
            timer = BodyTimer(receive, self.body_idle_seconds, self.body_total_seconds)
            try:
                response = await check_eligibility(Request(scope, timer.receive))
            except Exception:
                await _internal_error_response()(scope, receive, send)
                raise
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self.state.runtime.metrics.observe_request(
                CHECK_PATH, "POST", status, time.perf_counter() - started
            )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (404 for an unknown path, 405 for a wrong method) in the API's
    JSON error shape rather than as plain text."""
    assert isinstance(exc, HTTPException)
    error = _HTTP_ERRORS.get(exc.status_code, "http_error")
    detail = exc.detail
    if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
        detail = f"method {request.method} not allowed here; allowed: {exc.headers['Allow']}"
    return JSONResponse(
        {"error": error, "detail": detail}, status_code=exc.status_code, headers=exc.headers
    )


_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}


async def _internal_error(request: Request, exc: Exception) -> Response:
    # the exception is logged by Starlette with its traceback; handlers never put PHI in messages
    return _internal_error_response()


def _internal_error_response() -> Response:
    return JSONResponse({"error": "internal_error"}, status_code=500)
