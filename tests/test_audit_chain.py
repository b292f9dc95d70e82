"""The audit log is append-only and tamper-evident (a hash chain any reader can verify)."""

from __future__ import annotations

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
        # someone with rights to switch triggers off rewrites history: the chain says where
        _run(
            params,
            "alter table audit.access_log disable trigger access_log_append_only;"
            " update audit.access_log set outcome = 'not_found' where chain_seq = 3;"
            " alter table audit.access_log enable trigger access_log_append_only",
        )
        assert _run(params, "select audit.verify_chain()") == [(3,)]
