"""Partner API keys: created once in clear, stored only as a SHA-256 hash.

A key looks like `mdp_<key_id>_<secret>`. The key_id is not secret (it names the key in
audit rows and in `mdp partner key revoke`); the server recognises a key by the hash of the
whole string. Every change is announced on `mdp_api_keys_changed` so running servers drop
their auth cache at once instead of waiting out its TTL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from mdp.database import ConnectionParams, connect

KEY_PREFIX = "mdp_"
KEY_SHAPE = re.compile(r"mdp_(?P<key_id>[0-9a-f]{16})_[A-Za-z0-9_-]{20,}")  # a whole key
KEYS_CHANGED_CHANNEL = "mdp_api_keys_changed"
MAX_PARTNER_ID_CHARS = 128


class ApiKeyError(ValueError):
    """A key operation was asked with arguments that cannot be right."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key, without its secret (which is never stored)."""

    key_id: str
    partner_id: str
    label: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256 of the full key string."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A fresh (key_id, key) pair; key_id is hex so the `_` separators stay unambiguous."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def _check_partner_id(partner_id: str) -> None:
    if not isinstance(partner_id, str) or not partner_id.strip():
        raise ApiKeyError("partner_id must be a non-empty string")
    if len(partner_id) > MAX_PARTNER_ID_CHARS:
        raise ApiKeyError(f"partner_id is longer than {MAX_PARTNER_ID_CHARS} characters")


def create_key(
    params: ConnectionParams | None, partner_id: str, label: str | None = None
) -> tuple[str, str]:
    """Create a key for a partner; returns (key_id, clear key). The clear key is shown once."""
    _check_partner_id(partner_id)
    key_id, key = generate_key()
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into serving.api_keys (key_id, partner_id, key_hash, label)"
            " values (%s, %s, %s, %s)",
            (key_id, partner_id, hash_key(key), label),
        )
        cur.execute("select pg_notify(%s, %s)", (KEYS_CHANGED_CHANNEL, f"created:{key_id}"))
    return key_id, key


def revoke_key(params: ConnectionParams | None, partner_id: str, key_id: str | None = None) -> int:
    """Revoke one of a partner's keys (or all of them when key_id is None); returns how many."""
    _check_partner_id(partner_id)
    sql = (
        "update serving.api_keys set revoked_at = now()"
        " where partner_id = %s and revoked_at is null"
    )
    args: tuple[str, ...] = (partner_id,)
    if key_id is not None:
        sql += " and key_id = %s"
        args += (key_id,)
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        revoked = cur.rowcount
        if revoked:
            cur.execute("select pg_notify(%s, %s)", (KEYS_CHANGED_CHANNEL, f"revoked:{partner_id}"))
    return revoked


def list_keys(params: ConnectionParams | None, partner_id: str | None = None) -> list[ApiKey]:
    """Keys (active and revoked), oldest first; optionally only one partner's."""
    sql = "select key_id, partner_id, label, created_at, revoked_at from serving.api_keys"
    args: tuple[str, ...] = ()
    if partner_id is not None:
        sql += " where partner_id = %s"
        args = (partner_id,)
    sql += " order by created_at, key_id"
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return [ApiKey(*row) for row in cur.fetchall()]
