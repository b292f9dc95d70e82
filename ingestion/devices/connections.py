"""Member device connections: connect, reconnect, disconnect, tokens and sync cursors.

Tokens are encrypted at rest; a refreshed token pair is stored in one statement because
Fitbit refresh tokens are single-use (losing the new pair loses the connection).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from psycopg2.extras import Json

from mdp.crypto import decrypt_token, encrypt_token, token_hash
from mdp.database import ConnectionParams, connect

COLUMNS = (
    "connection_id, member_id, provider, provider_user_id, status, primary_metrics, "
    "access_token_enc, refresh_token_enc, token_expires_at, timezone, sync_cursor, "
    "backfill_progress, last_success_at, last_notified_at, created_at, disconnected_at"
)


@dataclass
class Connection:
    connection_id: str
    member_id: str
    provider: str
    provider_user_id: str
    status: str
    primary_metrics: list[str]
    access_token_enc: str | None
    refresh_token_enc: str | None
    token_expires_at: dt.datetime | None
    timezone: str
    sync_cursor: dict[str, Any]
    backfill_progress: dict[str, Any]
    last_success_at: dt.datetime | None
    last_notified_at: dt.datetime | None
    created_at: dt.datetime
    disconnected_at: dt.datetime | None

    @property
    def access_token(self) -> str | None:
        return decrypt_token(self.access_token_enc) if self.access_token_enc else None

    @property
    def refresh_token(self) -> str | None:
        return decrypt_token(self.refresh_token_enc) if self.refresh_token_enc else None

    def __repr__(self) -> str:  # tokens never printed
        return f"Connection({self.connection_id}, {self.provider}, {self.status})"


def connection_id_for(provider: str, provider_user_id: str) -> str:
    return (
        f"{provider}_" + hashlib.sha256(f"{provider}:{provider_user_id}".encode()).hexdigest()[:16]
    )


def connect_device(
    params: ConnectionParams,
    member_id: str,
    provider: str,
    provider_user_id: str,
    access_token: str,
    refresh_token: str | None,
    expires_in: int | None,
    timezone: str = "UTC",
    primary_metrics: list[str] | None = None,
) -> str:
    """Create or reactivate a connection. A reconnect keeps its cursors, so only the gap is fetched."""
    connection_id = connection_id_for(provider, provider_user_id)
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in) if expires_in else None
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            """
            insert into devices.connections (connection_id, member_id, provider, provider_user_id,
                status, primary_metrics, access_token_enc, refresh_token_enc, access_token_hash,
                token_expires_at, timezone)
            values (%s, %s, %s, %s, 'active', %s, %s, %s, %s, %s, %s)
            on conflict (provider, provider_user_id) do update set
                member_id = excluded.member_id, status = 'active', disconnected_at = null,
                access_token_enc = excluded.access_token_enc,
                refresh_token_enc = excluded.refresh_token_enc,
                access_token_hash = excluded.access_token_hash,
                token_expires_at = excluded.token_expires_at, timezone = excluded.timezone,
                primary_metrics = case when cardinality(excluded.primary_metrics) > 0
                    then excluded.primary_metrics else devices.connections.primary_metrics end
            """,
            (
                connection_id,
                member_id,
                provider,
                provider_user_id,
                primary_metrics or [],
                encrypt_token(access_token),
                encrypt_token(refresh_token) if refresh_token else None,
                token_hash(access_token),
                expires_at,
                timezone,
            ),
        )
    return connection_id


def disconnect(params: ConnectionParams, connection_id: str, status: str = "disconnected") -> None:
    """Stop syncing; history stays. Tokens are dropped: a reconnect brings new ones."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections set status = %s, disconnected_at = now(),"
            " access_token_enc = null, refresh_token_enc = null"
            " where connection_id = %s and status = 'active'",
            (status, connection_id),
        )


def store_tokens(
    params: ConnectionParams,
    connection_id: str,
    access_token: str,
    refresh_token: str,
    expires_in: int,
) -> None:
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections set access_token_enc = %s, refresh_token_enc = %s,"
            " access_token_hash = %s, token_expires_at = %s where connection_id = %s",
            (
                encrypt_token(access_token),
                encrypt_token(refresh_token),
                token_hash(access_token),
                expires_at,
                connection_id,
            ),
        )


def get_connection(params: ConnectionParams, connection_id: str) -> Connection | None:
    rows = _select(params, "where connection_id = %s", (connection_id,))
    return rows[0] if rows else None


def find_connection(
    params: ConnectionParams, provider: str, provider_user_id: str
) -> Connection | None:
    rows = _select(
        params, "where provider = %s and provider_user_id = %s", (provider, provider_user_id)
    )
    return rows[0] if rows else None


def active_connections(params: ConnectionParams, provider: str) -> list[Connection]:
    return _select(
        params, "where provider = %s and status = 'active' order by connection_id", (provider,)
    )


def _select(params: ConnectionParams, where: str, args: tuple) -> list[Connection]:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(f"select {COLUMNS} from devices.connections {where}", args)
        return [Connection(*row) for row in cur.fetchall()]


def advance_cursor(
    params: ConnectionParams, connection_id: str, metric: str, synced_through: dt.date
) -> None:
    """Record the last day fully synced for a metric, and the success time."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections set sync_cursor = sync_cursor || %s, last_success_at = now()"
            " where connection_id = %s",
            (Json({metric: synced_through.isoformat()}), connection_id),
        )


def cursor_date(connection: Connection, metric: str) -> dt.date | None:
    value = connection.sync_cursor.get(metric)
    return dt.date.fromisoformat(value) if value else None


def advance_cursors(params: ConnectionParams, advances: list[tuple[str, str, dt.date]]) -> None:
    """`advance_cursor` for many (connection_id, metric, synced_through) in one statement."""
    if not advances:
        return
    from psycopg2.extras import execute_values

    cursors: dict[str, dict[str, str]] = {}
    for connection_id, metric, synced_through in advances:
        own = cursors.setdefault(connection_id, {})
        own[metric] = max(own.get(metric, ""), synced_through.isoformat())
    with connect(params) as conn, conn.cursor() as cur:
        execute_values(
            cur,
            "update devices.connections as c set sync_cursor = c.sync_cursor || v.cursor::jsonb,"
            " last_success_at = now() from (values %s) as v (connection_id, cursor)"
            " where c.connection_id = v.connection_id",
            [(connection_id, Json(cursor)) for connection_id, cursor in cursors.items()],
            page_size=1000,
        )


def get_connections(params: ConnectionParams, connection_ids: list[str]) -> dict[str, Connection]:
    found = _select(params, "where connection_id = any(%s)", (connection_ids,))
    return {connection.connection_id: connection for connection in found}


def latest_connection(params: ConnectionParams, member_id: str, provider: str) -> Connection | None:
    """A member's connection to one provider, active or not: the active one, else the one
    disconnected last."""
    found = _select(
        params,
        "where member_id = %s and provider = %s"
        " order by status = 'active' desc, disconnected_at desc nulls last, created_at desc"
        " limit 1",
        (member_id, provider),
    )
    return found[0] if found else None


def member_connections(params: ConnectionParams, member_id: str, provider: str) -> list[Connection]:
    """A member's active connections to one provider."""
    return _select(
        params,
        "where member_id = %s and provider = %s and status = 'active'",
        (member_id, provider),
    )
