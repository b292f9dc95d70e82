"""Mart lookups for cache misses, coalesced: the misses that arrive together share a query.

One query per miss made Postgres parse, plan and answer each id alone, and on two cores the
API, the database and the clients compete for the same CPUs: under load, the per-query work
queued up and made the tail. Here a miss joins the batch being gathered for the current
event-loop turn; the batch goes out as one `employee_id = any($2)` per partner, an index
scan that returns every row at once (the DataLoader pattern). A request alone waits for no
one: its batch leaves on the next turn of the loop.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import asyncpg

from serving.eligibility import QUERY_TIMEOUT_SECONDS, MartRow
from serving.health import DATABASE_ERRORS, DatabaseUnavailable

MAX_BATCH = 256  # ids per query; more misses than this in one turn go as several queries

BATCH_LOOKUP_SQL = """
select employee_id, date_of_birth, program, eligibility_start_date, eligibility_end_date,
       coverage_status, coverage_status_basis
from marts.mart_eligibility
where partner_id = $1 and employee_id = any($2::text[])
"""

Key = tuple[str, str]  # (partner_id, member key as stored in the mart)


class MemberLookups:
    """`await lookups.fetch(pool, partner_id, member_key)`: the member's mart row or None."""

    def __init__(self) -> None:
        self._gathering: dict[Key, asyncio.Future[MartRow | None]] = {}
        self._pool: asyncpg.Pool | None = None
        self.queries = 0  # for metrics and tests: how many queries the lookups took

    async def fetch(
        self, pool: asyncpg.Pool | None, partner_id: str, member_key: str
    ) -> MartRow | None:
        if pool is None:
            raise DatabaseUnavailable("the database is not reachable")
        key = (partner_id, member_key)
        future = self._gathering.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._gathering:
                loop.call_soon(self._send_batch)
            future = self._gathering[key] = loop.create_future()
            future.add_done_callback(_retrieve)  # no "exception never retrieved" if all left
            self._pool = pool
        # shielded: a caller that goes away must not cancel the answer others wait for
        return await asyncio.shield(future)

    def _send_batch(self) -> None:
        batch, self._gathering = self._gathering, {}
        by_partner: dict[str, list[str]] = defaultdict(list)
        for partner_id, member_key in batch:
            by_partner[partner_id].append(member_key)
        for partner_id, keys in by_partner.items():
            for start in range(0, len(keys), MAX_BATCH):
                part = keys[start : start + MAX_BATCH]
                futures = {key: batch[(partner_id, key)] for key in part}
                asyncio.ensure_future(self._answer(self._pool, partner_id, futures))

    async def _answer(
        self,
        pool: asyncpg.Pool | None,
        partner_id: str,
        futures: dict[str, asyncio.Future[MartRow | None]],
    ) -> None:
        try:
            rows = await self._query(pool, partner_id, list(futures))
        except Exception as exc:  # every waiter gets the same answer
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for member_key, future in futures.items():
            if not future.done():
                future.set_result(rows.get(member_key))

    async def _query(
        self, pool: asyncpg.Pool | None, partner_id: str, keys: list[str]
    ) -> dict[str, MartRow]:
        if pool is None:
            raise DatabaseUnavailable("the database is not reachable")
        self.queries += 1
        try:
            async with pool.acquire(timeout=QUERY_TIMEOUT_SECONDS) as conn:
                records = await conn.fetch(
                    BATCH_LOOKUP_SQL, partner_id, keys, timeout=QUERY_TIMEOUT_SECONDS
                )
        except asyncpg.UndefinedTableError:
            raise DatabaseUnavailable(
                "eligibility data is not available yet (marts.mart_eligibility does not exist)"
            ) from None
        except DATABASE_ERRORS:
            # the exception text can quote parameters (member identifiers): never pass it on
            raise DatabaseUnavailable("the database is not reachable") from None
        rows: dict[str, MartRow] = {}
        for record in records:
            rows.setdefault(record[0], MartRow(*record[1:]))  # the first, as fetchrow did
        return rows


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
