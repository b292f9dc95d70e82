"""A throwaway Postgres database with the platform schema, a hand-made eligibility mart,
partner configs and API keys, and a running app (lifespan included) over it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from starlette.testclient import TestClient

from ingestion.partners.config import PartnerConfig, load_partner_config
from mdp.database import ConnectionParams, connect, ensure_database
from mdp.phi import keyed_hash
from mdp.schema import ensure_schema
from serving.api_keys import create_key
from serving.app import create_app

PARTNER_CONFIG_DIR = Path(__file__).resolve().parents[2] / "partner_configs"
DEFAULT_SERVER_URL = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
CHECK = "/api/v1/eligibility/check"

# dbt builds this table in production (a contracted model); its columns are the contract
MART_DDL = """
create schema if not exists marts;
create table if not exists marts.mart_eligibility (
    member_id               text not null,
    partner_id              text not null,
    employee_id             text not null,
    date_of_birth           date,
    program                 text,
    eligibility_start_date  date,
    eligibility_end_date    date,
    coverage_status         text,
    coverage_status_basis   text,
    refreshed_at            timestamptz not null default now()
);
create unique index if not exists mart_eligibility_partner_employee
    on marts.mart_eligibility (partner_id, employee_id);
"""

TODAY = dt.date.today()
SSN = "123-45-6789"


def members() -> list[dict[str, Any]]:
    """The members every test starts with: one per answer the API can give."""
    acme = "acme_corp"
    return [
        member(acme, "A100001", "1980-05-17", "active", "2024-01-01", None),
        member(acme, "A100002", "1975-11-02", "active", "2023-01-01", "2024-01-31"),
        member(acme, "A100003", "1990-02-14", "pending", str(TODAY + dt.timedelta(days=200)), None),
        member(acme, "A100004", "1968-07-30", "terminated", "2023-06-01", None),
        member(acme, "A100005", "2001-09-09", "active", str(TODAY), str(TODAY)),
        # exists only for another partner: acme's key must never find it
        member("umbrella_plan", "X000001", "1985-01-01", "active", "2024-01-01", None),
        member(
            "umbrella_plan", keyed_hash("123456789"), "1972-03-09", "active", "2024-01-01", None
        ),
        member("throttled_partner", "T000001", "1980-01-01", "active", "2024-01-01", None),
    ]


def member(
    partner_id: str,
    employee_id: str,
    date_of_birth: str,
    status: str,
    start: str,
    end: str | None,
    program: str = "diabetes_prevention",
) -> dict[str, Any]:
    return {
        "member_id": f"{partner_id}:{employee_id[:12]}",
        "partner_id": partner_id,
        "employee_id": employee_id,
        "date_of_birth": date_of_birth,
        "program": program,
        "eligibility_start_date": start,
        "eligibility_end_date": end,
        "coverage_status": status,
    }


def insert_members(params: ConnectionParams, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    sql = (
        f"insert into marts.mart_eligibility ({', '.join(columns)})"
        f" values ({', '.join(['%s'] * len(columns))})"
    )
    with connect(params) as conn, conn.cursor() as cur:
        cur.executemany(sql, [tuple(row[c] for c in columns) for row in rows])


def announce_mart_refresh(params: ConnectionParams, notify: bool = True) -> None:
    """What dbt's post-hook does after rebuilding the mart."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into serving.mart_refreshes (mart) values ('mart_eligibility')"
            " on conflict (mart) do update"
            " set version = serving.mart_refreshes.version + 1, refreshed_at = now()"
        )
        if notify:
            cur.execute("notify mdp_mart_refreshed, 'mart_eligibility'")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="session")
def server_params() -> ConnectionParams:
    url = os.environ.get("MDP_TEST_DATABASE_URL") or DEFAULT_SERVER_URL
    params = ConnectionParams.from_url(url)
    try:
        psycopg2.connect(params.dsn(), connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no Postgres for serving tests at {params.host}:{params.port}: {exc}")
    return params


@pytest.fixture(scope="session")
def database(server_params: ConnectionParams) -> Iterator[ConnectionParams]:
    name = f"mdp_test_serving_{secrets.token_hex(4)}"
    ensure_database(server_params, name)
    params = replace(server_params, dbname=name)
    ensure_schema(params)
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(MART_DDL)
    yield params
    with contextlib.closing(psycopg2.connect(server_params.dsn())) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def mart(database: ConnectionParams) -> ConnectionParams:
    """The mart reset to `members()` for each test."""
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute("truncate marts.mart_eligibility")
    insert_members(database, members())
    return database


def _variant(base: PartnerConfig, partner_id: str, **eligibility_api: Any) -> PartnerConfig:
    raw = base.model_dump(mode="json", exclude_none=True)
    raw.update(partner_id=partner_id, display_name=partner_id, eligibility_api=eligibility_api)
    return PartnerConfig.model_validate(raw)


@pytest.fixture(scope="session")
def partner_configs() -> dict[str, PartnerConfig]:
    acme = load_partner_config(PARTNER_CONFIG_DIR / "acme_corp.yaml")
    umbrella = load_partner_config(PARTNER_CONFIG_DIR / "umbrella_plan.yaml")
    configs = [
        acme,
        umbrella,
        _variant(acme, "throttled_partner", enabled=True, rate_limit_per_minute=5),
        _variant(acme, "dormant_partner", enabled=False),
    ]
    return {config.partner_id: config for config in configs}


@pytest.fixture
def keys(database: ConnectionParams) -> dict[str, tuple[str, str]]:
    """partner_id -> (key_id, clear key), fresh for each test."""
    partners = ["acme_corp", "umbrella_plan", "throttled_partner", "dormant_partner"]
    return {partner: create_key(database, partner, label="tests") for partner in partners}


def bearer(keys: dict[str, tuple[str, str]], partner_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[partner_id][1]}"}


@pytest.fixture
def client(
    mart: ConnectionParams, partner_configs: dict[str, PartnerConfig]
) -> Iterator[TestClient]:
    app = create_app(params=mart, partner_configs=partner_configs, poll_interval=0.5)
    with TestClient(app) as test_client:
        yield test_client
