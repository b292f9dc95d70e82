"""The per-process connection pool hands out connections that work."""

from __future__ import annotations

import contextlib
import os

import psycopg2
import pytest

from mdp import database
from mdp.database import ConnectionParams, connect


@pytest.fixture
def params() -> ConnectionParams:
    url = os.environ.get("MDP_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return ConnectionParams.from_url(url)


def test_an_idle_connection_whose_server_session_ended_is_replaced(params, monkeypatch):
    # a restart or a terminated backend: the pooled connection learned it only on first use,
    # so the next sensor tick (or import) after one failed
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        (pid,) = cur.fetchone()
    with contextlib.closing(psycopg2.connect(params.dsn())) as admin:
        admin.autocommit = True
        admin.cursor().execute("select pg_terminate_backend(%s)", (pid,))
    monkeypatch.setattr(database, "_PING_AFTER_IDLE_SECONDS", 0.0)

    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        (new_pid,) = cur.fetchone()
    assert new_pid != pid
