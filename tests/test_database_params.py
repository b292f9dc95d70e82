"""Database URLs -> connection parameters for psycopg2, asyncpg, dlt and dbt."""

from __future__ import annotations

import psycopg2
import pytest

from mdp.database import ConnectionParams
from tests.conftest import server_params


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:p%20s'%5Cs@127.0.0.1:5432/postgres",  # space, quote, backslash
        "postgresql://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable",
        "postgresql://postgres:@/mdp?host=/tmp/with%20space&port=5433",
    ],
)
def test_a_url_survives_the_round_trip_through_its_parameters(url):
    params = ConnectionParams.from_url(url)
    assert ConnectionParams.from_url(params.url()) == params


def test_a_password_with_spaces_and_quotes_reaches_the_server_intact():
    # the plain "key=value" join split such a password: psycopg2 refused the DSN
    base = server_params()
    params = ConnectionParams(base.host, base.port, base.user, "p s'\\s", base.dbname, "disable")
    with psycopg2.connect(params.dsn()) as conn:  # trust auth: any password is accepted
        assert conn.get_dsn_parameters()["sslmode"] == "disable"
        assert conn.info.password == "p s'\\s"
    conn.close()


def test_sslmode_is_kept_for_every_client():
    params = ConnectionParams.from_url("postgresql://u:p@db.example.com/app?sslmode=require")
    assert params.sslmode == "require"
    assert "sslmode=require" in params.dsn()
    assert params.url().endswith("/app?sslmode=require")
    assert params.dlt_credentials() == "postgresql://u:p@db.example.com:5432/app?sslmode=require"
    assert params.dbt_env()["MDP_PG_SSLMODE"] == "require"


def test_an_unknown_sslmode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="sslmode must be one of"):
        ConnectionParams.from_url("postgresql://u:p@h/db?sslmode=always")
