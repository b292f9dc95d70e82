"""The import ledger: one row per file seen in raw_partners.file_imports."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from mdp.database import ConnectionParams, connect
from mdp.phi import masked_ssns

FINISHED = ("loaded", "quarantined")  # identical bytes after these are duplicates
HANDLED = (*FINISHED, "duplicate")  # a remote file with one of these needs nothing more


@dataclass
class ImportRecord:
    file_id: str
    partner_id: str
    filename: str
    sha256: str
    status: str
    source_path: str | None = None
    size_bytes: int | None = None
    format: str | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    rows_total: int | None = None
    rows_loaded: int | None = None
    rows_rejected: int | None = None
    archive_path: str | None = None
    error_report_path: str | None = None
    report_delivered: bool | None = None  # the partner's copy uploaded (None: nothing to send)
    remote_mtime: float | None = None
    received_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    parse_seconds: float | None = None
    load_seconds: float | None = None
    preview: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def shown_name(self) -> str:
        """The file name as logs and Dagster show it (see mdp.phi.masked_ssns)."""
        return masked_ssns(self.filename)

    def columns(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("preview")
        return values


def save(params: ConnectionParams, record: ImportRecord) -> None:
    values = record.columns()
    names = list(values)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "file_id")
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            f"insert into raw_partners.file_imports ({', '.join(names)}) "
            f"values ({', '.join(['%s'] * len(names))}) "
            f"on conflict (file_id) do update set {updates}",
            [values[n] for n in names],
        )


def finished_import_with_checksum(
    params: ConnectionParams, partner_id: str, sha256: str
) -> str | None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select file_id from raw_partners.file_imports where partner_id = %s and sha256 = %s"
            " and status = any(%s) order by received_at limit 1",
            (partner_id, sha256, list(FINISHED)),
        )
        row = cur.fetchone()
    return row[0] if row else None


def latest_loaded_checksum(params: ConnectionParams, partner_id: str) -> str | None:
    """The SHA-256 of the partner's most recently loaded file."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select sha256 from raw_partners.file_imports where partner_id = %s"
            " and status = 'loaded' order by received_at desc limit 1",
            (partner_id,),
        )
        row = cur.fetchone()
    return row[0] if row else None


def already_seen_remote(
    params: ConnectionParams, partner_id: str, path: str, size: int, mtime: float
) -> bool:
    """For pull partners, whose server we leave untouched: was this exact remote file handled?
    Only a finished import counts: an attempt that failed or was interrupted (a crash left it
    "processing") is tried again, or the file would be lost for good."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select 1 from raw_partners.file_imports where partner_id = %s and source_path = %s"
            " and size_bytes = %s and remote_mtime = %s and status = any(%s) limit 1",
            (partner_id, path, size, mtime, list(HANDLED)),
        )
        return cur.fetchone() is not None


# the history snapshot's row in serving.mart_refreshes: its dbt post-hook stamps it with the
# build time of int_members_resolved, the table it reads (a file committed later is not in it)
HISTORY_MARK = "eligibility_history"


def loaded_since_history(params: ConnectionParams, partner_id: str) -> bool:
    """Whether a file of the partner loaded after the history snapshot last began: a run that
    stopped between its import and dbt left it unrecorded (the next file must wait for it)."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select exists (select from raw_partners.file_imports where partner_id = %s"
            " and status = 'loaded' and finished_at > coalesce((select refreshed_at"
            " from serving.mart_refreshes where mart = %s), '-infinity'))",
            (partner_id, HISTORY_MARK),
        )
        return bool(cur.fetchone()[0])


def mark_interrupted(params: ConnectionParams, partner_id: str) -> int:
    """Call under the partner's import lock: no other run is importing its files then, so a
    row still "processing" is an attempt whose run stopped (killed, crashed) before it ended.
    The file is imported again as a new attempt, whose merge replaces whatever the stopped
    one may have committed."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update raw_partners.file_imports set status = 'interrupted', finished_at = now(),"
            " reason = 'the run importing it stopped before it finished; imported again'"
            " where partner_id = %s and status = 'processing'",
            (partner_id,),
        )
        return cur.rowcount


def later_load(
    params: ConnectionParams, partner_id: str, received_at: Any, sha256: str
) -> dict[str, Any] | None:
    """The partner's first file of other bytes than `sha256` loaded after `received_at`."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select file_id, filename, received_at from raw_partners.file_imports"
            " where partner_id = %s and status = 'loaded' and received_at > %s"
            " and sha256 <> %s order by received_at limit 1",
            (partner_id, received_at, sha256),
        )
        row = cur.fetchone()
    return (
        None if row is None else dict(zip(("file_id", "filename", "received_at"), row, strict=True))
    )


def last_load_of(
    params: ConnectionParams, partner_id: str, sha256: str, before: Any
) -> tuple[str, Any] | None:
    """(file id, received_at) of the last load of these bytes no later than `before`: the load
    a duplicate received then repeated."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select file_id, received_at from raw_partners.file_imports where partner_id = %s"
            " and sha256 = %s and status = 'loaded' and received_at <= %s"
            " order by received_at desc limit 1",
            (partner_id, sha256, before),
        )
        row = cur.fetchone()
    return None if row is None else (row[0], row[1])


def get(params: ConnectionParams, file_id: str) -> dict[str, Any] | None:
    rows = list_imports(params, file_id=file_id)
    return rows[0] if rows else None


def list_imports(
    params: ConnectionParams,
    partner_id: str | None = None,
    file_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    clauses, args = [], []
    # `is not None`: an empty id (an unset shell variable) matches nothing, not everything
    if partner_id is not None:
        clauses.append("partner_id = %s")
        args.append(partner_id)
    if file_id is not None:
        clauses.append("file_id = %s")
        args.append(file_id)
    where = f"where {' and '.join(clauses)}" if clauses else ""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            f"select * from raw_partners.file_imports {where} order by received_at desc limit %s",
            [*args, limit],
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def undelivered_reports(params: ConnectionParams, partner_id: str) -> list[ImportRecord]:
    """Finished imports whose error report or quarantine note the partner has not received."""
    names = list(ImportRecord.__dataclass_fields__)
    names.remove("preview")
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            f"select {', '.join(names)} from raw_partners.file_imports where partner_id = %s"
            " and report_delivered = false and status = any(%s) order by received_at",
            (partner_id, list(FINISHED)),
        )
        return [ImportRecord(**dict(zip(names, row, strict=True))) for row in cur.fetchall()]


def mark_report_delivered(params: ConnectionParams, file_id: str) -> None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "update raw_partners.file_imports set report_delivered = true where file_id = %s",
            (file_id,),
        )


def name_sent_before(params: ConnectionParams, record: ImportRecord, quarantined: bool) -> bool:
    """Whether other bytes under this file's name got an error report (or, `quarantined`, a
    quarantine note) before it: the partner's copy of that one must not be overwritten."""
    condition = "status = 'quarantined'" if quarantined else "error_report_path is not null"
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select 1 from raw_partners.file_imports where partner_id = %s and filename = %s"
            f" and sha256 <> %s and received_at < %s and {condition} limit 1",
            (record.partner_id, record.filename, record.sha256, record.received_at),
        )
        return cur.fetchone() is not None
