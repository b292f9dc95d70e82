"""The audit log is append-only and tamper-evident (a hash chain any reader can verify)."""

from __future__ import annotations

import io

import psycopg2
import pytest

from mdp.schema import ensure_schema
from tests.conftest import fresh_database


def _run(params, sql, args=()):
    conn = psycopg2.connect(params.dsn())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def test_rows_chain_and_an_edit_made_behind_the_triggers_is_detected():
    with fresh_database("mdp_audit") as params:
        ensure_schema(params)
        for n in range(5):
            _run(
                params,
                "insert into audit.access_log (actor, action, member_ref, outcome)"
                " values (%s, 'eligibility_check', %s, 'eligible')",
                (f"partner:a/key:{n}", f"m_{n}"),
            )
        assert _run(params, "select audit.verify_chain()") == [(None,)]
        with pytest.raises(psycopg2.Error, match="append-only"):
            _run(params, "update audit.access_log set outcome = 'not_found' where chain_seq = 3")
        with pytest.raises(psycopg2.Error, match="append-only"):
            _run(params, "truncate audit.access_log")  # fires no row trigger
        assert _run(params, "select count(*) from audit.access_log") == [(5,)]
        # someone with rights to switch triggers off rewrites history: the chain says where
        _run(
            params,
            "alter table audit.access_log disable trigger access_log_append_only;"
            " update audit.access_log set outcome = 'not_found' where chain_seq = 3;"
            " alter table audit.access_log enable trigger access_log_append_only",
        )
        assert _run(params, "select audit.verify_chain()") == [(3,)]


def test_a_transaction_appends_many_rows_and_a_rolled_back_savepoint_leaves_no_gap():
    with fresh_database("mdp_audit") as params:
        ensure_schema(params)
        conn = psycopg2.connect(params.dsn())
        try:
            with conn, conn.cursor() as cur:
                for n in range(3):
                    cur.execute(_APPEND, (f"m_{n}",))
                cur.execute("savepoint s")
                cur.execute(_APPEND, ("m_rolled_back",))
                cur.execute("rollback to savepoint s")
                cur.execute(_APPEND, ("m_3",))
            with conn, conn.cursor() as cur:  # a second transaction continues the chain
                cur.execute(_APPEND, ("m_4",))
                # a tip set by hand outside this transaction's appends is not trusted
            with conn, conn.cursor() as cur:
                cur.execute("set audit.chain_tip = '1:1:forged'")
                cur.execute(_APPEND, ("m_5",))
        finally:
            conn.close()
        rows = _run(params, "select chain_seq, member_ref from audit.access_log order by chain_seq")
        assert rows == [(n + 1, f"m_{n}") for n in range(6)]
        assert _run(params, "select audit.verify_chain()") == [(None,)]


def test_appending_never_scans_the_whole_log_even_when_its_statistics_say_it_is_tiny():
    """Each append reads the chain's tip by the index. With a per-row seq scan, a 500-row COPY
    into a log whose statistics were taken while it was small read the log 500 times."""
    with fresh_database("mdp_audit") as params:
        ensure_schema(params)
        _run(params, _APPEND, ("m_first",))
        conn = psycopg2.connect(params.dsn())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("vacuum analyze audit.access_log")
            for _ in range(3):
                with conn, conn.cursor() as cur:
                    rows = "".join(f"a\teligibility_check\tm_{n}\n" for n in range(500))
                    cur.copy_expert(
                        "copy audit.access_log (actor, action, member_ref) from stdin",
                        io.StringIO(rows),
                    )
                    cur.execute(
                        "select seq_scan from pg_stat_xact_user_tables"
                        " where schemaname = 'audit' and relname = 'access_log'"
                    )
                    assert cur.fetchone() == (0,)
        finally:
            conn.close()
        assert _run(params, "select count(*), audit.verify_chain() from audit.access_log") == [
            (1501, None)
        ]


_APPEND = (
    "insert into audit.access_log (actor, action, member_ref) values ('a', 'eligibility_check', %s)"
)
