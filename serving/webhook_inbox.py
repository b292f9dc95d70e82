"""Idempotent writes to devices.webhook_inbox, and the connection look-ups the receivers need.

One pending row per dedupe_key (the partial unique index `webhook_inbox_pending`): a repeat
delivery bumps `times_received`; once the sync job sets `processed_at`, the next delivery
opens a new pending row (a notification says "there is new data": it is worth a fetch each
time). An item that carries its data (`once`: a Garmin summary, keyed by its content) is
stored once ever: re-sent after it was processed, it would load its values again over a
newer revision's. Each request costs one statement, so receivers answer in a few ms.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

# Data-modifying CTEs run to completion even when the outer query does not read them. The
# connection touch skips rows a sync run holds locked: last_notified_at is only a hint for
# the polling planner, and waiting on a long sync transaction could outlast Fitbit's 5 s.
STORE_SQL = """
with incoming as (
    select *
    from unnest(
        $2::text[], $3::text[], $4::text[], $5::date[], $6::text[], $7::int[], $8::bool[]
    ) as t(dedupe_key, provider_user_id, collection_type, resource_date, payload, times, once)
    where not (once and exists (
        select from devices.webhook_inbox as done
        where done.dedupe_key = t.dedupe_key and done.processed_at is not null
    ))
),
stored as (
    insert into devices.webhook_inbox as inbox (
        provider, dedupe_key, provider_user_id, collection_type, resource_date, payload,
        times_received
    )
    select $1, dedupe_key, provider_user_id, collection_type, resource_date, payload::jsonb, times
    from incoming
    on conflict (dedupe_key) where processed_at is null
    do update set
        times_received = inbox.times_received + excluded.times_received,
        last_received_at = now()
    returning (xmax = 0) as is_new
),
notified as (
    update devices.connections
    set last_notified_at = now()
    where connection_id in (
        select connection_id
        from devices.connections
        where provider = $1 and provider_user_id in (select provider_user_id from incoming)
        for update skip locked
    )
    returning 1
)
select count(*) filter (where is_new) as new_rows, count(*) as rows from stored
"""

# active connections only: a disconnected or revoked member's data is not taken in (Garmin
# keeps pushing with the old token until the deregistration reaches it)
CONNECTIONS_BY_TOKEN_SQL = """
select access_token_hash, provider_user_id
from devices.connections
where provider = $1 and access_token_hash = any($2::text[]) and status = 'active'
"""


# longer than any id a provider issues (Fitbit's user ids have 6 characters, Garmin's are
# UUIDs); ids go into the inbox's dedupe key, whose index takes at most ~2,700 bytes a row
MAX_ID_CHARS = 256


class UnstorableItem(ValueError):
    """An item Postgres cannot hold (a NUL character or a lone surrogate in a string)."""


@dataclass(frozen=True)
class InboxItem:
    dedupe_key: str
    provider_user_id: str
    collection_type: str
    resource_date: dt.date | None
    payload: str  # JSON text, checked storable by `payload_text`
    once: bool = False  # carries its data: stored once ever (see the module's docstring)


@dataclass(frozen=True)
class StoreResult:
    new_rows: int  # pending rows opened by this request
    repeats: int  # deliveries merged into an existing pending row


def payload_text(item: Any) -> str:
    """The item as JSON text for a jsonb column; raises UnstorableItem when Postgres would refuse it."""
    try:
        text = json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # json.loads takes NaN and Infinity; jsonb does not
        raise UnstorableItem("a number is NaN or infinite") from None
    # jsonb and text reject \u0000; json.dumps writes NUL as that escape. A literal backslash
    # followed by "u0000" also matches: a false rejection of a payload no provider sends.
    if "\\u0000" in text:
        raise UnstorableItem("a string contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableItem("a string contains a lone surrogate") from None
    return text


def coalesce(items: Iterable[InboxItem]) -> list[tuple[InboxItem, int]]:
    """Items with a repeated dedupe_key merged, with how many times each came.

    One INSERT .. ON CONFLICT DO UPDATE cannot touch the same row twice, and a provider may
    repeat a notification inside one body.
    """
    counts: dict[str, list[Any]] = {}
    for item in items:
        entry = counts.get(item.dedupe_key)
        if entry is None:
            counts[item.dedupe_key] = [item, 1]
        else:
            entry[1] += 1
    return [(item, times) for item, times in counts.values()]


async def store_items(
    conn: asyncpg.Connection | asyncpg.Pool,
    provider: str,
    items: Sequence[InboxItem],
    *,
    timeout: float | None = None,
) -> StoreResult:
    """Store notifications idempotently in one statement and mark their connections notified."""
    merged = coalesce(items)
    if not merged:
        return StoreResult(0, 0)
    record = await conn.fetchrow(
        STORE_SQL,
        provider,
        [item.dedupe_key for item, _ in merged],
        [item.provider_user_id for item, _ in merged],
        [item.collection_type for item, _ in merged],
        [item.resource_date for item, _ in merged],
        [item.payload for item, _ in merged],
        [times for _, times in merged],
        [item.once for item, _ in merged],
        timeout=timeout,
    )
    assert record is not None
    new_rows = record["new_rows"]
    return StoreResult(new_rows=new_rows, repeats=len(items) - new_rows)


async def users_by_token_hash(
    conn: asyncpg.Connection | asyncpg.Pool,
    provider: str,
    token_hashes: Iterable[str],
    *,
    timeout: float | None = None,
) -> dict[str, set[str]]:
    """access_token_hash -> provider_user_ids of the active connections holding that token.

    A set because nothing makes the hash unique (a test or emulator may share a token).
    """
    wanted = sorted(set(token_hashes))
    if not wanted:
        return {}
    users: dict[str, set[str]] = {}
    for row in await conn.fetch(CONNECTIONS_BY_TOKEN_SQL, provider, wanted, timeout=timeout):
        users.setdefault(row["access_token_hash"], set()).add(row["provider_user_id"])
    return users
