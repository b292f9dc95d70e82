"""Keyed hashing for identifiers that must never be stored or logged in clear."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from mdp.settings import secret


@lru_cache(maxsize=1)
def _hash_key() -> bytes:
    return secret("MDP_PII_HASH_KEY").encode()


def keyed_hash(value: str) -> str:
    """HMAC-SHA256 of an identifier (e.g. an SSN), hex; stable for one deployment's key."""
    return hmac.new(_hash_key(), value.encode(), hashlib.sha256).hexdigest()


def log_ref(*parts: str) -> str:
    """A short, non-reversible reference to a member for logs and audit rows (no PHI)."""
    return "m_" + keyed_hash("|".join(parts))[:16]


def normalize_ssn(value: str) -> str | None:
    """The 9 digits of an SSN written as 123-45-6789, 123 45 6789 or 123456789; None for
    anything else (letters were dropped, and "²" or Arabic-Indic digits counted as digits)."""
    digits = value.replace("-", "").replace(" ", "")
    return digits if len(digits) == 9 and digits.isascii() and digits.isdigit() else None
