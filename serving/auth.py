"""Bearer API key -> partner, cached briefly by key hash.

The cache TTL bounds how long a revoked key keeps working when the LISTEN connection that
normally announces revocations is down; with it up, revocation is immediate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from serving.api_keys import KEY_PREFIX, hash_key
from serving.health import DATABASE_ERRORS, DatabaseUnavailable

KEY_SQL = (
    "select key_id, partner_id from serving.api_keys where key_hash = $1 and revoked_at is null"
)
MAX_KEY_CHARS = 256
QUERY_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Principal:
    partner_id: str
    key_id: str

    @property
    def actor(self) -> str:
        return f"partner:{self.partner_id}/key:{self.key_id}"


class Unauthorized(Exception):
    """No usable key: the request gets a 401 naming why (never echoing the key)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # short, for metrics labels
        self.detail = detail


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or Unauthorized."""
    if not header:
        raise Unauthorized("missing", "missing Authorization header (expected: Bearer <api key>)")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "malformed", "malformed Authorization header (expected: Bearer <api key>)"
        )
    if len(token) > MAX_KEY_CHARS or not token.startswith(KEY_PREFIX) or not token.isascii():
        raise Unauthorized("unknown_key", "unknown or revoked API key")
    return token


class Authenticator:
    """Looks keys up in `serving.api_keys`; remembers answers (also "unknown") for `ttl` s."""

    def __init__(
        self,
        ttl_seconds: float = 3.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[Principal | None, float]] = {}

    def invalidate(self) -> None:
        self._entries.clear()

    async def authenticate(self, header: str | None, pool: asyncpg.Pool | None) -> Principal:
        key_hash = hash_key(bearer_token(header))
        now = self._clock()
        cached = self._entries.get(key_hash)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            principal = await self._fetch(key_hash, pool)
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # a flood of random keys must not grow memory
            self._entries[key_hash] = (principal, now + self.ttl_seconds)
        if principal is None:
            raise Unauthorized("unknown_key", "unknown or revoked API key")
        return principal

    async def _fetch(self, key_hash: str, pool: asyncpg.Pool | None) -> Principal | None:
        if pool is None:
            raise DatabaseUnavailable("the database is not reachable")
        try:
            async with pool.acquire(timeout=QUERY_TIMEOUT_SECONDS) as conn:
                row = await conn.fetchrow(KEY_SQL, key_hash, timeout=QUERY_TIMEOUT_SECONDS)
        except asyncpg.UndefinedTableError:
            raise DatabaseUnavailable("serving.api_keys does not exist yet") from None
        except DATABASE_ERRORS:
            raise DatabaseUnavailable("the database is not reachable") from None
        return None if row is None else Principal(partner_id=row[1], key_id=row[0])
