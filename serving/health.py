"""`/healthz` and the exception every database-touching path raises when Postgres is away."""

from __future__ import annotations

import asyncio

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse

# Errors that mean "the database cannot answer now", as opposed to a bug in our SQL.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)

PROBE_TIMEOUT_SECONDS = 2.0
MART_OID_SQL = "select to_regclass('marts.mart_eligibility')::oid"
_UNAVAILABLE_BODY = {"status": "unavailable", "database": "unreachable", "mart": "unknown"}


class DatabaseUnavailable(Exception):
    """Postgres (or a table the API needs) is not there; the request gets a 503."""


async def healthz(request: Request) -> JSONResponse:
    """200 while Postgres answers (reporting whether the mart exists yet), else 503.

    The LISTEN connection's state is the `mdp_listener_up` metric, not part of health:
    without it the API still works (polling), so it must not fail a load balancer check.
    """
    pool = request.app.state.runtime.pool
    if pool is None:
        return JSONResponse(_UNAVAILABLE_BODY, status_code=503)
    try:
        async with pool.acquire(timeout=PROBE_TIMEOUT_SECONDS) as conn:
            mart_oid = await conn.fetchval(MART_OID_SQL, timeout=PROBE_TIMEOUT_SECONDS)
    except DATABASE_ERRORS:
        return JSONResponse(_UNAVAILABLE_BODY, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok", "mart": "ok" if mart_oid else "missing"})
