"""Coalesced mart lookups (serving.member_lookup), against the real Postgres mart."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from mdp.database import ConnectionParams
from serving.health import DatabaseUnavailable
from serving.member_lookup import MAX_BATCH, MemberLookups


async def _pool(params: ConnectionParams) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        host=params.host,
        port=params.port,
        user=params.user,
        password=params.password,
        database=params.dbname,
        min_size=1,
        max_size=4,
    )


def test_misses_arriving_together_share_one_query_and_get_their_own_rows(
    mart: ConnectionParams,
) -> None:
    async def scenario() -> tuple[list, int]:
        lookups = MemberLookups()
        async with await _pool(mart) as pool:
            wanted = [
                ("acme_corp", "A100001"),
                ("acme_corp", "A100004"),
                ("acme_corp", "A100001"),  # the same member twice: one row, both answered
                ("acme_corp", "X000001"),  # umbrella_plan's member: not acme's
                ("umbrella_plan", "X000001"),
                ("acme_corp", "NOPE"),
            ]
            rows = await asyncio.gather(*(lookups.fetch(pool, p, k) for p, k in wanted))
        return rows, lookups.queries

    rows, queries = asyncio.run(scenario())
    assert queries == 2  # one per partner in the batch
    first, terminated, again, other_partners, umbrella, unknown = rows
    assert first.date_of_birth == dt.date(1980, 5, 17) and first.coverage_status == "active"
    assert terminated.coverage_status == "terminated"
    assert again == first
    assert other_partners is None and unknown is None
    assert umbrella.date_of_birth == dt.date(1985, 1, 1)


def test_a_large_burst_is_split_into_bounded_queries(mart: ConnectionParams) -> None:
    async def scenario() -> tuple[list, int]:
        lookups = MemberLookups()
        async with await _pool(mart) as pool:
            keys = [f"Z{i:06d}" for i in range(MAX_BATCH * 2 + 1)] + ["A100002"]
            rows = await asyncio.gather(*(lookups.fetch(pool, "acme_corp", k) for k in keys))
        return rows, lookups.queries

    rows, queries = asyncio.run(scenario())
    assert queries == 3
    assert rows[:-1] == [None] * (MAX_BATCH * 2 + 1)
    assert rows[-1].eligibility_end_date == dt.date(2024, 1, 31)


def test_a_caller_that_leaves_does_not_cancel_the_answer_for_the_others(
    mart: ConnectionParams,
) -> None:
    async def scenario():
        lookups = MemberLookups()
        async with await _pool(mart) as pool:
            leaving = asyncio.ensure_future(lookups.fetch(pool, "acme_corp", "A100001"))
            staying = asyncio.ensure_future(lookups.fetch(pool, "acme_corp", "A100001"))
            await asyncio.sleep(0)
            leaving.cancel()
            return await staying, leaving.cancelled()

    row, cancelled = asyncio.run(scenario())
    assert cancelled and row.date_of_birth == dt.date(1980, 5, 17)


def test_every_waiter_gets_a_503_kind_of_error_when_the_mart_is_missing(
    database: ConnectionParams,
) -> None:
    async def scenario():
        lookups = MemberLookups()
        async with await _pool(database) as pool:
            async with pool.acquire() as conn:
                await conn.execute("alter table marts.mart_eligibility rename to mart_moved")
            try:
                return await asyncio.gather(
                    lookups.fetch(pool, "acme_corp", "A100001"),
                    lookups.fetch(pool, "acme_corp", "A100002"),
                    return_exceptions=True,
                )
            finally:
                async with pool.acquire() as conn:
                    await conn.execute("alter table marts.mart_moved rename to mart_eligibility")

    errors = asyncio.run(scenario())
    assert [type(e) for e in errors] == [DatabaseUnavailable, DatabaseUnavailable]
    assert "does not exist" in str(errors[0])


def test_no_pool_is_a_database_unavailable_error() -> None:
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(MemberLookups().fetch(None, "acme_corp", "A100001"))


def test_the_api_pool_plans_each_statement_once(client) -> None:
    # a custom plan per batch of ids cost Postgres ~50 µs a lookup query
    pool = client.app.state.runtime.pool
    assert client.portal.call(pool.fetchval, "show plan_cache_mode") == "force_generic_plan"


def test_misses_that_arrive_while_a_query_runs_go_together_in_the_next(
    mart: ConnectionParams,
) -> None:
    async def scenario() -> tuple[list, int]:
        lookups = MemberLookups()
        async with await _pool(mart) as pool:
            first = asyncio.ensure_future(lookups.fetch(pool, "acme_corp", "A100001"))
            later = []
            for key in ("A100002", "A100004", "NOPE"):
                await asyncio.sleep(0)  # each in a turn of its own, the first query running
                later.append(asyncio.ensure_future(lookups.fetch(pool, "acme_corp", key)))
            rows = await asyncio.gather(first, *later)
            after = await lookups.fetch(pool, "umbrella_plan", "X000001")
        return [*rows, after], lookups.queries

    rows, queries = asyncio.run(scenario())
    # the first alone, the three that came while it ran together, then the next on its own
    assert queries == 3
    assert rows[0].date_of_birth == dt.date(1980, 5, 17)
    assert rows[2].coverage_status == "terminated" and rows[3] is None
    assert rows[4].date_of_birth == dt.date(1985, 1, 1)


def test_a_connection_lost_mid_query_fails_its_waiters_and_the_next_miss_gets_a_new_one(
    mart: ConnectionParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.member_lookup as member_lookup

    # a lookup that takes a second, so that its connection can be killed while it runs
    slow = member_lookup.BATCH_LOOKUP_SQL.replace(
        "from marts.mart_eligibility", "from marts.mart_eligibility, pg_sleep(1)"
    )

    async def scenario():
        lookups = MemberLookups()
        async with await _pool(mart) as pool:
            monkeypatch.setattr(member_lookup, "BATCH_LOOKUP_SQL", slow)
            waiting = asyncio.gather(
                lookups.fetch(pool, "acme_corp", "A100001"),
                lookups.fetch(pool, "acme_corp", "A100002"),
                return_exceptions=True,
            )
            await asyncio.sleep(0.3)
            async with pool.acquire() as conn:
                killed = await conn.fetchval(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity"
                    " where query like '%pg_sleep(1)%' and pid <> pg_backend_pid()"
                )
            errors = await waiting
            monkeypatch.undo()
            after = await lookups.fetch(pool, "acme_corp", "A100001")
        return killed, errors, after

    killed, errors, after = asyncio.run(scenario())
    assert killed == 1
    assert [type(e) for e in errors] == [DatabaseUnavailable, DatabaseUnavailable]
    assert str(errors[0]) == "the database is not reachable"  # no parameters quoted
    assert after.date_of_birth == dt.date(1980, 5, 17)
