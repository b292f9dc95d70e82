"""The caller's X-Request-ID, when it is fit to echo and to store in the audit log."""

from __future__ import annotations

import re

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# nine digits shaped like an SSN: the id is stored in audit rows beside a hashed member
# reference, and a caller could put an SSN there
_SSN_SHAPED = re.compile(r"(?<![0-9])[0-9]{3}([-. :]?)[0-9]{2}\1[0-9]{4}(?![0-9])")


def callers_request_id(header: str | None) -> str | None:
    """The header when it is a sane token that cannot carry an SSN, else None."""
    if header and _REQUEST_ID.fullmatch(header) and not _SSN_SHAPED.search(header):
        return header
    return None
