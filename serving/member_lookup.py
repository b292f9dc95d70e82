"""Mart lookups for cache misses, coalesced: the misses that arrive together share a query.

One query per miss made Postgres parse, plan and answer each id alone, and on two cores the
API, the database and the clients compete for the same CPUs: under load, the per-query work
queued up and made the tail. Here a miss joins the batch being gathered; the batch goes out
as one `employee_id = any($2)` per partner, an index scan that returns every row at once (the
DataLoader pattern).

One drain task sends the batches, one query at a time, on one pooled connection that it holds
while misses keep coming: the misses that arrive while a query runs go together in the next.
A request alone waits for no one (its batch leaves on the next turn of the loop), and under
load the batches grow instead of the queries multiplying. Taking a pool connection per query
(asyncpg's acquire and release, with their timeouts and shielded tasks) cost about as much
of the event loop as the query itself.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import asyncpg

from serving.eligibility import QUERY_TIMEOUT_SECONDS, MartRow
from serving.health import DATABASE_ERRORS, DatabaseUnavailable

MAX_BATCH = 256  # ids per query; a larger batch goes as several queries

BATCH_LOOKUP_SQL = """
select employee_id, date_of_birth, program, eligibility_start_date, eligibility_end_date,
       coverage_status, coverage_status_basis
from marts.mart_eligibility
where partner_id = $1 and employee_id = any($2::text[])
"""

Key = tuple[str, str]  # (partner_id, member key as stored in the mart)
Waiters = dict[str, list["asyncio.Future[MartRow | None]"]]  # member key -> its callers


class MemberLookups:
    """`await lookups.fetch(pool, partner_id, member_key)`: the member's mart row or None."""

    def __init__(self, on_query: Callable[[], object] = lambda: None) -> None:
        self._on_query = on_query
        # every caller waits on a future of its own: one that goes away (cancelled) leaves
        # the others' answers alone, without asyncio.shield's extra future and callbacks
        self._gathering: dict[Key, list[asyncio.Future[MartRow | None]]] = {}
        self._drain: asyncio.Task[None] | None = None
        self.queries = 0  # for metrics and tests: how many queries the lookups took

    async def fetch(
        self, pool: asyncpg.Pool | None, partner_id: str, member_key: str
    ) -> MartRow | None:
        if pool is None:
            raise DatabaseUnavailable("the database is not reachable")
        future = asyncio.get_running_loop().create_future()
        waiting = self._gathering.get((partner_id, member_key))
        if waiting is None:
            self._gathering[(partner_id, member_key)] = [future]
        else:
            waiting.append(future)
        if self._drain is None:
            self._drain = asyncio.ensure_future(self._drain_batches(pool))
        return await future

    async def _drain_batches(self, pool: asyncpg.Pool) -> None:
        """Send what has gathered, and what gathers meanwhile, until nothing is waiting."""
        batch: dict[Key, list[asyncio.Future[MartRow | None]]] = {}
        try:
            async with pool.acquire(timeout=QUERY_TIMEOUT_SECONDS) as conn:
                while self._gathering:
                    batch, self._gathering = self._gathering, {}
                    for partner_id, waiters in _by_query(batch):
                        await self._answer(conn, partner_id, waiters)
                    batch = {}
        except (Exception, asyncio.CancelledError) as exc:
            # no connection, or it failed mid-query: every caller still waiting hears it
            error = _unavailable(exc)
            for futures in (*batch.values(), *self._gathering.values()):
                _fail(futures, error)
            self._gathering = {}
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._drain = None
            if self._gathering:  # arrived after the last look (the release awaits)
                self._drain = asyncio.ensure_future(self._drain_batches(pool))

    async def _answer(self, conn: asyncpg.Connection, partner_id: str, waiters: Waiters) -> None:
        self.queries += 1
        self._on_query()
        try:
            records = await conn.fetch(
                BATCH_LOOKUP_SQL, partner_id, list(waiters), timeout=QUERY_TIMEOUT_SECONDS
            )
        except asyncpg.UndefinedTableError:  # this query's answer; the connection is fine
            for futures in waiters.values():
                _fail(futures, _unavailable(asyncpg.UndefinedTableError()))
            return
        rows: dict[str, MartRow] = {}
        for record in records:
            rows.setdefault(record[0], MartRow(*record[1:]))  # the first, as fetchrow did
        for member_key, futures in waiters.items():
            row = rows.get(member_key)
            for future in futures:
                if not future.done():  # a caller that left cancelled its own
                    future.set_result(row)


def _by_query(batch: dict[Key, list[asyncio.Future[MartRow | None]]]) -> list[tuple[str, Waiters]]:
    """The batch as queries: one per partner, at most MAX_BATCH ids each."""
    by_partner: dict[str, Waiters] = defaultdict(dict)
    for (partner_id, member_key), futures in batch.items():
        by_partner[partner_id][member_key] = futures
    queries = []
    for partner_id, waiters in by_partner.items():
        keys = list(waiters)
        for start in range(0, len(keys), MAX_BATCH):
            queries.append(
                (partner_id, {key: waiters[key] for key in keys[start : start + MAX_BATCH]})
            )
    return queries


def _unavailable(exc: BaseException) -> Exception:
    if isinstance(exc, asyncpg.UndefinedTableError):
        return DatabaseUnavailable(
            "eligibility data is not available yet (marts.mart_eligibility does not exist)"
        )
    if isinstance(exc, DATABASE_ERRORS):
        # the exception text can quote parameters (member identifiers): never pass it on
        return DatabaseUnavailable("the database is not reachable")
    return exc if isinstance(exc, Exception) else DatabaseUnavailable("lookup cancelled")


def _fail(futures: list[asyncio.Future[MartRow | None]], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
            future.exception()  # retrieved: no warning if its caller has left
