"""Encryption at rest for provider OAuth tokens (Fernet: AES-128-CBC + HMAC-SHA256)."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet

from mdp.settings import secret


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    # Any secret string becomes a valid Fernet key; production sets MDP_TOKEN_ENCRYPTION_KEY.
    material = hashlib.sha256(secret("MDP_TOKEN_ENCRYPTION_KEY").encode()).digest()
    return Fernet(base64.urlsafe_b64encode(material))


def encrypt_token(token: str) -> str:
    return _fernet().encrypt(token.encode()).decode()


def decrypt_token(token_enc: str, ttl: int | None = None) -> str:
    """Raises cryptography.fernet.InvalidToken if forged, damaged or older than `ttl` seconds."""
    return _fernet().decrypt(token_enc.encode(), ttl=ttl).decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
