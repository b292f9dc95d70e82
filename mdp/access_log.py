"""Audit rows for member data that leaves the platform other than through the API.

The API writes its rows in batches (serving/audit.py); an export is rare and written at once.
The database chains every row into the tamper-evident log (a trigger, mdp/schema.py, whose
digest covers `detail`), so a plain insert is enough. Members appear only as `log_ref`
references, never in clear.

One row per export, its members' references in `detail.member_refs` (sorted): a row per
member went through the chain trigger one by one, ~0.2 s for a 500K-row file's 10K rejects,
inside the import. Find a member's exports with `detail->'member_refs' ? 'm_...'`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from mdp.database import ConnectionParams, connect
from mdp.phi import log_ref

EXPORT_ACTOR = "mdp:partner-import"


def member_refs(partner_id: str, member_keys: Iterable[str]) -> list[str]:
    """The members' `log_ref` references, sorted and once each (no PHI: keyed hashes)."""
    return sorted({log_ref(partner_id, key) for key in member_keys})


def record_export(
    params: ConnectionParams,
    action: str,
    partner_id: str,
    refs: list[str],
    purpose: str,
    detail: dict[str, object],
) -> None:
    """The audit row of one export of members' data, by their references (`member_refs`)."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into audit.access_log"
            " (actor, action, partner_id, purpose, outcome, detail)"
            " values (%s, %s, %s, %s, 'delivered', %s::jsonb)",
            (
                EXPORT_ACTOR,
                action,
                partner_id,
                purpose,
                json.dumps({**detail, "members": len(refs), "member_refs": refs}),
            ),
        )
