"""Bearer API key -> partner, cached briefly by key hash.

The cache TTL bounds how long a revoked key keeps working when the LISTEN connection that
normally announces revocations is down; with it up, revocation is immediate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from serving.api_keys import KEY_PREFIX, hash_key
from serving.health import DATABASE_ERRORS, DatabaseUnavailable

KEY_SQL = (
    "select key_id, partner_id from serving.api_keys where key_hash = $1 and revoked_at is null"
)
ACTIVE_KEYS_SQL = "select key_hash from serving.api_keys where revoked_at is null"
MAX_KEY_CHARS = 256
_NOT_CACHED = object()
QUERY_TIMEOUT_SECONDS = 2.0
# per client address. A partner's integration with a wrong key fails a few times a minute; a
# key guesser, or a flood of made-up keys each costing a database look-up, far more
AUTH_FAILURES_PER_MINUTE = 60


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


class KeyLookupWithheld(Exception):
    """The key is no active key's, and the caller may not have it looked up (see
    `authenticate(lookup=False)`): a client that failed too often is not let near the database."""


class Authenticator:
    """Looks keys up in `serving.api_keys`; remembers answers (also "unknown") for `ttl` s.
    Unknown keys are remembered apart, so a flood of random keys only ever evicts its own
    kind: the real keys stay cached."""

    def __init__(
        self,
        ttl_seconds: float = 3.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._known: dict[str, tuple[Principal, float]] = {}
        self._unknown: dict[str, float] = {}
        # bumped by every invalidation: a lookup that was in flight across one does not
        # store what it read (it may predate the revocation that caused it)
        self._generation = 0
        # the hashes of all active keys, read at most once per `ttl` (see `_is_active`)
        self._active: frozenset[str] | None = None
        self._active_until = 0.0
        self._active_reading: asyncio.Lock | None = None
        # one look-up per key at a time: when a busy key's entry expires, the requests that
        # arrive before the answer wait on the same query rather than each sending one
        self._fetching: dict[str, asyncio.Future[Principal | None]] = {}

    def invalidate(self) -> None:
        self._generation += 1
        self._known.clear()
        self._unknown.clear()
        self._active = None
        self._fetching.clear()  # a look-up under way may predate the revocation: not joined

    async def authenticate(
        self, header: str | None, pool: asyncpg.Pool | None, lookup: bool = True
    ) -> Principal:
        """The key's principal, or Unauthorized. With `lookup` false (a client that failed too
        often), a key not cached is looked up only if it is among the active keys, read all at
        once at most every `ttl` s: made-up keys cost no query each (KeyLookupWithheld), and a
        real key works whatever else its address sends."""
        key_hash = hash_key(bearer_token(header))
        principal = self._cached(key_hash, self._clock())
        if principal is _NOT_CACHED:
            if not lookup and not await self._is_active(key_hash, pool):
                raise KeyLookupWithheld()
            principal = await self._shared_fetch(key_hash, pool)
        if principal is None:
            raise Unauthorized("unknown_key", "unknown or revoked API key")
        assert isinstance(principal, Principal)
        return principal

    async def _shared_fetch(self, key_hash: str, pool: asyncpg.Pool | None) -> Principal | None:
        fetching = self._fetching.get(key_hash)
        if fetching is None:
            fetching = asyncio.ensure_future(self._fetch_and_remember(key_hash, pool))
            self._fetching[key_hash] = fetching
            fetching.add_done_callback(lambda done: self._forget_fetch(key_hash, done))
        # shielded: a waiter whose client left does not cancel the others' look-up
        return await asyncio.shield(fetching)

    def _forget_fetch(self, key_hash: str, done: asyncio.Future[Principal | None]) -> None:
        if self._fetching.get(key_hash) is done:  # not a newer one, started after invalidate()
            del self._fetching[key_hash]
        if not done.cancelled():
            done.exception()  # read: when every waiter left, nobody else would read it

    async def _fetch_and_remember(
        self, key_hash: str, pool: asyncpg.Pool | None
    ) -> Principal | None:
        generation = self._generation
        principal = await self._fetch(key_hash, pool)
        if generation == self._generation:
            self._remember(key_hash, principal, self._clock() + self.ttl_seconds)
        return principal

    async def _is_active(self, key_hash: str, pool: asyncpg.Pool | None) -> bool:
        if self._active is None or self._active_until <= self._clock():
            self._active_reading = self._active_reading or asyncio.Lock()
            async with self._active_reading:  # one read, however many requests wait on it
                if self._active is None or self._active_until <= self._clock():
                    generation = self._generation
                    rows = await self._query(pool, ACTIVE_KEYS_SQL)
                    active = frozenset(row[0] for row in rows)
                    if generation != self._generation:
                        return key_hash in active  # read before a revocation: not kept
                    self._active, self._active_until = active, self._clock() + self.ttl_seconds
        return key_hash in self._active

    def _cached(self, key_hash: str, now: float) -> Principal | None | object:
        known = self._known.get(key_hash)
        if known is not None and known[1] > now:
            return known[0]
        expires = self._unknown.get(key_hash)
        if expires is not None and expires > now:
            return None
        return _NOT_CACHED

    def _remember(self, key_hash: str, principal: Principal | None, expires: float) -> None:
        entries: dict = self._unknown if principal is None else self._known
        if len(entries) >= self.max_entries:
            entries.clear()  # bounded memory, whatever keys are sent
        entries[key_hash] = expires if principal is None else (principal, expires)

    async def _fetch(self, key_hash: str, pool: asyncpg.Pool | None) -> Principal | None:
        rows = await self._query(pool, KEY_SQL, key_hash)
        return Principal(partner_id=rows[0][1], key_id=rows[0][0]) if rows else None

    @staticmethod
    async def _query(pool: asyncpg.Pool | None, sql: str, *args: object) -> list[asyncpg.Record]:
        if pool is None:
            raise DatabaseUnavailable("the database is not reachable")
        try:
            async with pool.acquire(timeout=QUERY_TIMEOUT_SECONDS) as conn:
                return await conn.fetch(sql, *args, timeout=QUERY_TIMEOUT_SECONDS)
        except asyncpg.UndefinedTableError:
            raise DatabaseUnavailable("serving.api_keys does not exist yet") from None
        except DATABASE_ERRORS:
            raise DatabaseUnavailable("the database is not reachable") from None
