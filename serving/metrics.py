"""Prometheus metrics for the API, one registry per app (tests build many apps)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mdp_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mdp_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.checks = Counter(
            "mdp_eligibility_checks",
            "Eligibility checks by partner and audit outcome.",
            ["partner_id", "outcome"],
            registry=r,
        )
        self.cache_hits = Counter(
            "mdp_eligibility_cache_hits", "Lookups answered from the in-process cache.", registry=r
        )
        self.cache_misses = Counter(
            "mdp_eligibility_cache_misses", "Lookups that went to Postgres.", registry=r
        )
        self.lookup_queries = Counter(
            "mdp_eligibility_lookup_queries",
            "Queries that answered cache misses (misses that arrive together share one).",
            registry=r,
        )
        self.cache_invalidations = Counter(
            "mdp_eligibility_cache_invalidations",
            "Times the lookup cache was dropped, by signal.",
            ["source"],
            registry=r,
        )
        self.rate_limited = Counter(
            "mdp_eligibility_rate_limited",
            "Requests refused with 429, by partner.",
            ["partner_id"],
            registry=r,
        )
        self.auth_failures = Counter(
            "mdp_auth_failures", "Requests refused with 401, by reason.", ["reason"], registry=r
        )
        self.audit_written = Counter(
            "mdp_audit_events_written", "Audit rows committed to audit.access_log.", registry=r
        )
        self.audit_dropped = Counter(
            "mdp_audit_events_dropped",
            "Audit rows not written: the process stopped while Postgres could not take them.",
            registry=r,
        )
        self.audit_pending = Gauge(
            "mdp_audit_events_pending", "Audit rows waiting to be written.", registry=r
        )
        self.listener_up = Gauge(
            "mdp_listener_up",
            "1 while the LISTEN connection for refresh notices is up.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "mdp_eligibility_cache_entries", "Entries in the lookup cache.", registry=r
        )
        # labels() takes a lock and builds a key each call; the hot path reuses children
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._check_children: dict[tuple[str, str], Counter] = {}

    def count_check(self, partner_id: str, outcome: str) -> None:
        child = self._check_children.get((partner_id, outcome))
        if child is None:
            child = self._check_children[(partner_id, outcome)] = self.checks.labels(
                partner_id, outcome
            )
        child.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts and times every HTTP response.

    Unknown paths are reported as route "unmatched" so scanners cannot explode the label set.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            path = scope["path"]
            route = path if path in self.routes else "unmatched"
            method = scope["method"]
            if route == "unmatched" or method not in KNOWN_METHODS:
                method = "other"
            self.metrics.observe_request(route, method, status, time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    runtime = request.app.state.runtime
    metrics: ServingMetrics = runtime.metrics
    metrics.audit_pending.set(runtime.audit.pending)
    metrics.cache_entries.set(len(runtime.lookup_cache))
    metrics.listener_up.set(1 if runtime.listening else 0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
