"""Audit rows survive COPY's text format whatever their fields hold."""

from __future__ import annotations

import asyncio

from mdp.database import ConnectionParams, connect
from serving.audit import AuditWriter, check_event


def test_fields_with_copy_specials_and_nulls_are_stored_as_given(
    database: ConnectionParams,
) -> None:
    events = [
        check_event("partner:a/key:1", "acme_corp", "m_0a1b", "eligible", "rows-1", 200),
        check_event("partner:a/key:1", "acme_corp", None, "forbidden", "rows-2", 403),
        check_event("tab\there\\back\nline\rcr", "acme_corp", "\\N", "eligible", "rows-3", 200),
        check_event("partner:a/key:1", "acme_corp", "", "not_found", "rows-4", 404),
    ]
    writer = AuditWriter(lambda: database)

    async def write() -> bool:
        for event in events:
            writer.record(event)
        return await writer.flush()

    assert asyncio.run(write())
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "select actor, member_ref, outcome, detail->>'status', occurred_at from audit.access_log"
            " where request_id like 'rows-%%' order by request_id"
        )
        stored = cur.fetchall()
    assert stored == [
        (e.actor, e.member_ref, e.outcome, e.detail[-4:-1], e.occurred_at) for e in events
    ]
