"""Keyed hashing for identifiers that must never be stored or logged in clear."""

from __future__ import annotations

import hashlib
import hmac
import re
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


def never_issued(digits: str) -> str | None:
    """Why nine digits are no SSN (nor ITIN) ever issued, or None: the SSA issues no area 000
    or 666, no group 00 and no serial 0000 (a placeholder such as 000-00-0000 or 123-45-0000).
    Areas 900-999 are ITINs, which plans take in the SSN field, so they pass."""
    if digits[:3] in ("000", "666"):
        return f"area {digits[:3]} is never issued"
    if digits[3:5] == "00":
        return "group 00 is never issued"
    if digits[5:] == "0000":
        return "serial 0000 is never issued"
    return None


# nine digits shaped like an SSN (123-45-6789, 123 45 6789, 123_45_6789, 123456789), not
# inside a longer run of digits (a date stamp such as 20261129 is not one); 3-2-4 with the same
# separator twice (a ZIP+4, 62701-1234, is not one)
_SSN_SHAPED = re.compile(r"(?<![0-9])[0-9]{3}([-. _]?)[0-9]{2}\1([0-9]{4})(?![0-9])")


def masked_ssns(text: str) -> str:
    """Text a partner or caller chose (a file name, a quoted value, a request id) as logs,
    reasons, Dagster and `mdp imports list` show it: an SSN-shaped run of digits kept to its
    last 4. The import ledger's table keeps a file's name as it is (the name the partner's
    server has, needed to find the file there)."""
    return _SSN_SHAPED.sub(r"***-**-\2", text)
