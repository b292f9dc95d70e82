"""Audit rows survive COPY's text format whatever their fields hold."""

from __future__ import annotations

import asyncio

from mdp.database import ConnectionParams, connect
from serving.audit import ACTION, PURPOSE, AuditEvent, AuditWriter


def check_event(
    actor: str, partner_id: str, member_ref: str | None, outcome: str, request_id: str, status: int
) -> AuditEvent:
    """The event `serving.audit.check_row` writes the row of."""
    import datetime as dt
    import json

    return AuditEvent(
        dt.datetime.now(dt.UTC),
        actor,
        ACTION,
        partner_id,
        member_ref,
        PURPOSE,
        outcome,
        request_id,
        json.dumps({"status": status}),
    )


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


def test_rows_postgres_cannot_take_at_shutdown_are_spooled_and_written_at_the_next_start(
    database: ConnectionParams, tmp_path
) -> None:
    """The audit table locked while the API stops: its rows were lost (SIGKILL after 15 s)
    with no metric counting them. Now they wait in a file until the next start writes them."""
    import threading

    spool = tmp_path / "audit_spool"
    events = [check_event("partner:a/key:1", "acme_corp", f"m_{n}", "eligible", f"spool-{n}", 200)
              for n in range(3)]  # fmt: skip
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with connect(database) as conn, conn.cursor() as cur:
            cur.execute("lock table audit.access_log in access exclusive mode")
            locked.set()
            release.wait(30)
            conn.rollback()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(10)
    dropped: list[int] = []

    async def stop_while_locked() -> None:
        writer = AuditWriter(
            lambda: database,
            flush_interval=0.05,
            on_dropped=dropped.append,
            spool_dir=spool,
            statement_timeout="1s",
        )
        writer.start()
        for event in events:
            writer.record(event)
        # the writer takes the rows out of the queue to COPY them, and waits on the lock:
        # stopping now once lost them (the queue looked empty)
        for _ in range(100):
            if not writer.pending:
                break
            await asyncio.sleep(0.02)
        assert writer.pending == 0
        await writer.close()

    try:
        asyncio.run(stop_while_locked())
    finally:
        release.set()
        holder.join()
    [spooled] = list(spool.glob("*.copy"))
    assert len(spooled.read_text().splitlines()) == 3 and not dropped
    assert (spool.stat().st_mode & 0o777, spooled.stat().st_mode & 0o777) == (0o700, 0o600)

    def stored() -> list[str]:
        with connect(database) as conn, conn.cursor() as cur:
            cur.execute(
                "select request_id from audit.access_log where request_id like 'spool-%%'"
                " order by request_id"
            )
            return [row[0] for row in cur.fetchall()]

    assert stored() == []

    async def next_start() -> None:
        writer = AuditWriter(lambda: database, spool_dir=spool)
        writer.start()
        await writer.close()

    asyncio.run(next_start())
    assert stored() == ["spool-0", "spool-1", "spool-2"]
    assert list(spool.glob("*.copy")) == []


CHECKS = [
    ("partner:a/key:1", "acme_corp", "m_0a1b", "eligible", "check-1", 200),
    ("partner:a/key:1", "acme_corp", None, "forbidden", "check-2", 403),
    ("tab\there\\back\nline\rcr", "acme_corp", "\\N", "eligible", "check-3", 200),
    ("partner:a/key:1", "acme_corp", "", "not_found", "check-4", 404),
    ("partner:a/key:1", "acme_corp", "m_\t\n", "not_found", "check\\5", 404),
]


def test_a_check_row_is_the_row_of_its_event() -> None:
    import datetime as dt

    from serving.audit import check_row, copy_row

    for check in CHECKS * 2:  # the second time from the cached parts
        row = check_row(*check)
        event = check_event(*check)
        stamp, rest = row.split("\t", 1)
        assert rest == copy_row(event).split("\t", 1)[1]
        written = dt.datetime.fromisoformat(stamp)
        assert written.tzinfo == dt.UTC
        assert abs(written - event.occurred_at) < dt.timedelta(seconds=1)


def test_check_row_timestamps_read_as_isoformat_writes_them(monkeypatch) -> None:
    import datetime as dt
    import time

    from serving.audit import _utc_now_text

    for now in (1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.25, 1_700_000_001.0):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        assert _utc_now_text() == dt.datetime.fromtimestamp(now, dt.UTC).isoformat()


def test_check_rows_are_stored_as_given(database: ConnectionParams) -> None:
    from serving.audit import check_row

    writer = AuditWriter(lambda: database)

    async def write() -> bool:
        for check in CHECKS:
            writer.record_row(check_row(*check))
        return await writer.flush()

    assert asyncio.run(write())
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "select actor, partner_id, member_ref, outcome, request_id,"
            " (detail->>'status')::int from audit.access_log"
            " where request_id like 'check%%' order by request_id"
        )
        stored = cur.fetchall()
    assert sorted(stored, key=lambda row: row[4]) == sorted(CHECKS, key=lambda check: check[4])
