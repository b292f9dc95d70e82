"""Audit rows for member data that leaves the platform other than through the API.

The API writes its rows in batches (serving/audit.py); an export is rare and written at once.
The database chains every row into the tamper-evident log (a trigger, mdp/schema.py, whose
digest covers `detail`), so a plain insert is enough. Members appear only as `log_ref`
references, never in clear.

One row per export, its members' references in `detail.member_refs` (sorted): a row per
member went through the chain trigger one by one, ~0.2 s for a 500K-row file's 10K rejects,
inside the import. `member_events` (`mdp audit member`) finds a member's rows of every kind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
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


def member_events(
    params: ConnectionParams,
    partner_id: str,
    member_key: str,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> list[dict[str, object]]:
    """Every audit row about one member, oldest first: the API's checks (by the partner's id
    for the member), the member app's uploads (by the platform member id) and the exports
    that carried the member (`detail.member_refs`). `member_key` is the mart's employee_id
    (for an SSN partner, the SSN's keyed hash); `until` is inclusive."""
    member_id = hashlib.md5(f"{partner_id}:{member_key}".encode()).hexdigest()  # as dbt's
    refs = [log_ref(partner_id, member_key), log_ref(member_id)]
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select occurred_at, actor, action, partner_id, outcome, purpose, request_id,"
            " detail - 'member_refs' from audit.access_log"
            " where (member_ref = any(%(refs)s)"
            "  or (detail ? 'member_refs' and detail -> 'member_refs' ?| %(refs)s))"
            " and occurred_at >= coalesce(%(since)s::date, '-infinity'::date)"
            " and occurred_at < coalesce(%(until)s::date + 1, 'infinity'::date)"
            " order by occurred_at, event_id",
            {"refs": refs, "since": since, "until": until},
        )
        names = ("occurred_at", "actor", "action", "partner_id", "outcome", "purpose")
        return [
            dict(zip((*names, "request_id", "detail"), row, strict=True)) for row in cur.fetchall()
        ]
