"""Audit rows for member data that leaves the platform other than through the API.

The API writes its rows in batches (serving/audit.py); an export is rare and written at once.
The database chains every row into the tamper-evident log (a trigger, mdp/schema.py), so a
plain insert is enough. Members appear only as `log_ref` references, never in clear.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from mdp.database import ConnectionParams, connect
from mdp.phi import log_ref

EXPORT_ACTOR = "mdp:partner-import"


def record_export(
    params: ConnectionParams,
    action: str,
    partner_id: str,
    member_keys: Iterable[str],
    purpose: str,
    detail: dict[str, object],
) -> int:
    """One row per member whose data went out (one row without a member when none is
    known); returns how many rows were written."""
    refs = sorted({log_ref(partner_id, key) for key in member_keys}) or [None]
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into audit.access_log"
            " (actor, action, partner_id, member_ref, purpose, outcome, detail)"
            " select %s, %s, %s, ref, %s, 'delivered', %s::jsonb from unnest(%s::text[]) as ref",
            (EXPORT_ACTOR, action, partner_id, purpose, json.dumps(detail), refs),
        )
        return cur.rowcount
