"""The caller's X-Request-ID, when it is fit to echo and to store in the audit log."""

from __future__ import annotations

import re

from mdp.phi import masked_ssns

# what tracing tools generate: a UUID, a ULID, or 16-64 hex digits (a W3C trace or span id).
# A free-form token is not taken: it is stored in audit rows beside a hashed member
# reference, and a caller could put a member's name, birth date or SSN there
# ("Jane_Doe_1971-03-14", "123_45_6789")
_GENERATED_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}"
    r"|(?=[0-9]*[a-fA-F])[0-9a-fA-F]{16,64}"  # with a letter: digits alone may hide an SSN
)


def callers_request_id(header: str | None) -> str | None:
    """The header when it is a generated id that cannot carry an SSN, else None (the API
    then makes its own)."""
    # masked_ssns finds nine digits shaped like an SSN even inside hex ("abc123456789def0")
    if header and _GENERATED_ID.fullmatch(header) and masked_ssns(header) == header:
        return header
    return None
