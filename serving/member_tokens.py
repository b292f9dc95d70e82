"""Stateless signed tokens the member app presents as `Authorization: Bearer <token>`.

Format: `mt1.<base64url(json {"m": member_id, "exp": unix seconds})>.<base64url(hmac-sha256)>`,
the MAC taken over `mt1.<payload>` with `MDP_MEMBER_TOKEN_KEY`. Nothing is stored: a token is
valid until it expires, and rotating the key revokes every token at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

from mdp.settings import secret

KEY_NAME = "MDP_MEMBER_TOKEN_KEY"
PREFIX = "mt1"
DEFAULT_TTL_SECONDS = 30 * 86400
MAX_TOKEN_CHARS = 2048
MAX_MEMBER_ID_CHARS = 256


class InvalidMemberToken(Exception):
    """The token cannot be trusted; `reason` is short (a metrics label), the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # missing | malformed | bad_signature | expired


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_bytes(key: str | None) -> bytes:
    return (key if key is not None else secret(KEY_NAME)).encode()


def _mac(key: bytes, signed_part: str) -> str:
    return _b64encode(hmac.new(key, signed_part.encode("ascii"), hashlib.sha256).digest())


def _check_member_id(member_id: object) -> str | None:
    """Why `member_id` cannot go in a token, or None."""
    if not isinstance(member_id, str) or not member_id.strip():
        return "the member id must be a non-empty string"
    if len(member_id) > MAX_MEMBER_ID_CHARS:
        return f"the member id is longer than {MAX_MEMBER_ID_CHARS} characters"
    if "\x00" in member_id or not member_id.isprintable():
        return "the member id has control characters"
    return None


def issue_member_token(
    member_id: str,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    key: str | None = None,
    *,
    now: float | None = None,
) -> str:
    """A token for `member_id` valid for `ttl_seconds`; the key defaults to MDP_MEMBER_TOKEN_KEY."""
    problem = _check_member_id(member_id)
    if problem:
        raise ValueError(problem)
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    expires = int(now if now is not None else time.time()) + int(ttl_seconds)
    claims = json.dumps({"m": member_id, "exp": expires}, separators=(",", ":"))
    signed_part = f"{PREFIX}.{_b64encode(claims.encode())}"
    return f"{signed_part}.{_mac(_key_bytes(key), signed_part)}"


def verify_member_token(token: str, key: str | None = None, *, now: float | None = None) -> str:
    """The member id a token was issued for; raises InvalidMemberToken otherwise."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidMemberToken("malformed", "the member token is malformed")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise InvalidMemberToken("malformed", "the member token is malformed")
    signed_part = f"{parts[0]}.{parts[1]}"
    # the MAC is compared as its canonical text, so no second encoding of it is accepted
    expected = _mac(_key_bytes(key), signed_part)
    if not hmac.compare_digest(expected.encode("ascii"), parts[2].encode("ascii")):
        raise InvalidMemberToken("bad_signature", "the member token's signature does not match")
    try:
        claims = json.loads(_b64decode(parts[1]))
    except (binascii.Error, ValueError):  # a signed token we cannot read: a bug at issue time
        raise InvalidMemberToken("malformed", "the member token's claims are unreadable") from None
    if not isinstance(claims, dict):
        raise InvalidMemberToken("malformed", "the member token's claims are unreadable")
    member_id, expires = claims.get("m"), claims.get("exp")
    if _check_member_id(member_id) or isinstance(expires, bool) or not isinstance(expires, int):
        raise InvalidMemberToken("malformed", "the member token's claims are unreadable")
    if expires <= (now if now is not None else time.time()):
        raise InvalidMemberToken("expired", "the member token has expired")
    return member_id


def bearer_token(header: str | None) -> str:
    if not header:
        raise InvalidMemberToken("missing", "missing Authorization header (Bearer <member token>)")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidMemberToken(
            "malformed", "malformed Authorization header (Bearer <member token>)"
        )
    return token
