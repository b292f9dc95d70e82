"""Loading the member app's HealthKit uploads from devices.apple_upload_inbox into raw_apple_health.samples.

The API (serving/apple_upload.py) stores each batch as received; `process_pending_uploads`
loads pending batches in upload order, a chunk at a time:

1. Re-parse each payload with `parse_upload_batch` (the API answered from the same payload,
   so the same samples are kept and the same ones rejected).
2. Drop incoming samples HealthKit says are gone: a uuid deleted by any batch of that member
   received within TOMBSTONE_WINDOW (a deletion may be processed before a retried upload of
   the sample it deletes), and a sample whose (member_id, sync_identifier) already has a
   higher sync_version, in the chunk or in the table. Without this a late old version with
   the same natural key would overwrite the newer row in the merge.
3. Merge the rest with dlt on (member_id, natural_key), the key exports use too, so the same
   sample from an export and from an upload is one row.
4. In one transaction: delete this chunk's deleted uuids, delete rows superseded by a higher
   sync_version of the same sync_identifier (a new version may have a new natural key), and
   mark the chunk's inbox rows processed.

A crash between 3 and 4 leaves the rows pending and the next run repeats them: the merge is by
key and the deletes are by uuid and version, so repeating is harmless. Runs are serialized by
an advisory lock; the pipeline is shared with `import_export` (one dlt pipeline name), so the
two must not overlap either (a Dagster pool).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pyarrow as pa

from ingestion.devices.apple_health import UPLOAD_SCHEMA, UploadPayloadError, parse_upload_batch
from ingestion.devices.apple_health.deletions import RECORD_TOMBSTONES_SQL
from ingestion.devices.apple_health.load import DATASET, apple_pipeline, samples
from mdp.database import ConnectionParams, connect

log = logging.getLogger(__name__)

TABLE = f"{DATASET}.samples"
LOCK_KEY = "mdp.apple_health_uploads"
TOMBSTONE_WINDOW = dt.timedelta(days=30)
# one dlt load per chunk: bounded memory for a backlog of 5 MB batches, few loads for small ones
CHUNK_MAX_BATCHES = 200
CHUNK_MAX_BYTES = 64 * 1024 * 1024  # of stored (compressed) jsonb; about 2-4x that as JSON

# uuid is nullable in the table: export rows have none, and a NOT NULL column could not be
# added to a table that already holds them
LOAD_SCHEMA = UPLOAD_SCHEMA.set(
    UPLOAD_SCHEMA.get_field_index("uuid"), UPLOAD_SCHEMA.field("uuid").with_nullable(True)
)

PENDING_SQL = """
select upload_id, pg_column_size(payload)
from devices.apple_upload_inbox
where processed_at is null
order by upload_id
limit %s
"""
PAYLOADS_SQL = """
select upload_id, member_id, payload
from devices.apple_upload_inbox
where upload_id = any(%s) and processed_at is null
order by upload_id
"""
TOMBSTONES_SQL = """
select inbox.member_id, deleted.value
from devices.apple_upload_inbox as inbox
cross join lateral jsonb_array_elements_text(
    case when jsonb_typeof(inbox.payload -> 'deleted') = 'array'
        then inbox.payload -> 'deleted' else '[]'::jsonb end
) as deleted (value)
where inbox.member_id = any(%s) and inbox.received_at > now() - %s
"""
UPLOAD_COLUMNS_SQL = """
select count(*) = 3
from information_schema.columns
where table_schema = %s and table_name = 'samples'
    and column_name in ('uuid', 'sync_identifier', 'sync_version')
"""
NEWEST_VERSIONS_SQL = f"""
select s.member_id, s.sync_identifier, max(s.sync_version)
from {TABLE} as s
inner join unnest(%s::text[], %s::text[]) as t (member_id, sync_identifier)
    on s.member_id = t.member_id and s.sync_identifier = t.sync_identifier
group by s.member_id, s.sync_identifier
"""
# Deleted rows leave a tombstone, so incremental dbt models can drop them too (deletions.py).
DELETE_UUIDS_SQL = f"""
with gone as (
    delete from {TABLE} as s
    using unnest(%s::text[], %s::text[]) as d (member_id, uuid)
    where s.member_id = d.member_id and s.uuid = d.uuid
    returning s.member_id, s.natural_key, s.record_type, s.local_date
)
{RECORD_TOMBSTONES_SQL}
"""
DELETE_SUPERSEDED_SQL = f"""
with gone as (
    delete from {TABLE} as s
    using unnest(%s::text[], %s::text[]) as t (member_id, sync_identifier), {TABLE} as newer
    where s.member_id = t.member_id and s.sync_identifier = t.sync_identifier
        and newer.member_id = s.member_id and newer.sync_identifier = s.sync_identifier
        and newer.sync_version > s.sync_version
    returning s.member_id, s.natural_key, s.record_type, s.local_date
)
{RECORD_TOMBSTONES_SQL}
"""
MARK_PROCESSED_SQL = """
update devices.apple_upload_inbox set processed_at = now() where upload_id = any(%s)
"""
INDEXES = {
    "samples_member_uuid": "(member_id, uuid) where uuid is not null",
    "samples_member_sync_identifier": "(member_id, sync_identifier) where sync_identifier is not null",
}


@dataclass
class UploadLoadResult:
    batches: int = 0  # inbox rows marked processed
    samples_loaded: int = 0  # rows merged into the raw table
    deletions: int = 0  # rows deleted because the app reported their uuid deleted
    rejected: int = 0  # samples/deletions left out by validation, plus unreadable batches
    superseded: int = 0  # older sync versions dropped before the load or deleted after it
    dropped_deleted: int = 0  # incoming samples whose uuid was already reported deleted

    def add(self, other: UploadLoadResult) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Chunk:
    upload_ids: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # in upload, then sample, order
    deletions: dict[tuple[str, str], None] = field(default_factory=dict)  # ordered set
    rejected: int = 0


def process_pending_uploads(
    params: ConnectionParams, pipelines_dir: Path, limit: int = 1000
) -> UploadLoadResult:
    """Load up to `limit` pending inbox batches, oldest first; see the module docstring."""
    total = UploadLoadResult()
    # a session lock: released when this connection closes, however the run ends
    with connect(params, autocommit=True) as lock_conn, lock_conn.cursor() as cur:
        cur.execute("select pg_advisory_lock(hashtext(%s))", (LOCK_KEY,))
        cur.execute(PENDING_SQL, (limit,))
        for upload_ids in _chunks(cur.fetchall()):
            chunk = _read_chunk(cur, upload_ids)
            total.add(_load_chunk(params, pipelines_dir, cur, chunk))
    if total.batches:
        log.info("apple health uploads loaded: %s", total)
    return total


def _chunks(pending: Sequence[tuple[int, int]]) -> Iterator[list[int]]:
    chunk: list[int] = []
    size = 0
    for upload_id, stored_bytes in pending:
        if chunk and (len(chunk) >= CHUNK_MAX_BATCHES or size + stored_bytes > CHUNK_MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(upload_id)
        size += stored_bytes
    if chunk:
        yield chunk


def _read_chunk(cur: psycopg2.extensions.cursor, upload_ids: list[int]) -> _Chunk:
    chunk = _Chunk()
    cur.execute(PAYLOADS_SQL, (upload_ids,))
    for upload_id, member_id, payload in cur.fetchall():
        chunk.upload_ids.append(upload_id)
        try:
            batch = parse_upload_batch(payload, member_id)
        except UploadPayloadError as exc:  # the API checked it; only a hand-made row gets here
            log.warning("apple upload %d cannot be loaded and is skipped: %s", upload_id, exc)
            chunk.rejected += 1
            continue
        chunk.rejected += len(batch.problems)
        chunk.rows.extend(batch.rows)
        chunk.deletions.update(dict.fromkeys((member_id, u) for u in batch.deleted_uuids))
    return chunk


def _canonical_uuid(value: str | None) -> str | None:
    try:
        return str(uuid.UUID(value)) if value is not None else None
    except ValueError:
        return None


def _tombstones(cur: psycopg2.extensions.cursor, members: list[str]) -> set[tuple[str, str]]:
    cur.execute(TOMBSTONES_SQL, (members, TOMBSTONE_WINDOW))
    found = set()
    for member_id, value in cur.fetchall():
        canonical = _canonical_uuid(value)
        if canonical:
            found.add((member_id, canonical))
    return found


def _has_upload_columns(cur: psycopg2.extensions.cursor) -> bool:
    cur.execute(UPLOAD_COLUMNS_SQL, (DATASET,))
    row = cur.fetchone()
    return bool(row and row[0])


def _newest_versions(
    cur: psycopg2.extensions.cursor, rows: list[dict[str, Any]]
) -> dict[tuple[str, str], int]:
    """(member_id, sync_identifier) -> highest sync_version among `rows` and the raw table."""
    newest: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["sync_identifier"] is not None:
            key = (row["member_id"], row["sync_identifier"])
            newest[key] = max(newest.get(key, row["sync_version"]), row["sync_version"])
    if newest and _has_upload_columns(cur):
        members, identifiers = zip(*newest, strict=True)
        cur.execute(NEWEST_VERSIONS_SQL, (list(members), list(identifiers)))
        for member_id, identifier, version in cur.fetchall():
            key = (member_id, identifier)
            newest[key] = max(newest[key], version)
    return newest


def _rows_to_load(
    cur: psycopg2.extensions.cursor, chunk: _Chunk, result: UploadLoadResult
) -> list[dict[str, Any]]:
    """The chunk's rows minus deleted uuids and older sync versions, one per natural key."""
    if not chunk.rows:
        return []
    deleted = _tombstones(cur, sorted({row["member_id"] for row in chunk.rows}))
    deleted.update(chunk.deletions)
    newest = _newest_versions(cur, chunk.rows)
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for row in chunk.rows:
        if (row["member_id"], row["uuid"]) in deleted:
            result.dropped_deleted += 1
            continue
        identifier = row["sync_identifier"]
        if identifier is not None and row["sync_version"] < newest[(row["member_id"], identifier)]:
            result.superseded += 1
            continue
        # later uploads win; dlt's own dedup of one load picks an arbitrary row
        by_key[(row["member_id"], row["natural_key"])] = row
    return list(by_key.values())


def _ensure_indexes(cur: psycopg2.extensions.cursor) -> None:
    """Indexes for the deletes by uuid and sync identifier; checked first, because even
    `create index if not exists` takes a lock that waits for a running load."""
    for name, definition in INDEXES.items():
        cur.execute("select to_regclass(%s)", (f"{DATASET}.{name}",))
        row = cur.fetchone()
        if row is None or row[0] is None:
            cur.execute(f"create index if not exists {name} on {TABLE} {definition}")


def _load_chunk(
    params: ConnectionParams,
    pipelines_dir: Path,
    cur: psycopg2.extensions.cursor,
    chunk: _Chunk,
) -> UploadLoadResult:
    result = UploadLoadResult(batches=len(chunk.upload_ids), rejected=chunk.rejected)
    rows = _rows_to_load(cur, chunk, result)
    if rows:
        table = pa.Table.from_pylist(rows, schema=LOAD_SCHEMA)
        apple_pipeline(params, pipelines_dir).run(samples([table]))
        result.samples_loaded = len(rows)
    with connect(params) as conn, conn.cursor() as tx:
        if _has_upload_columns(tx):
            _ensure_indexes(tx)
            if chunk.deletions:
                members, uuids = zip(*chunk.deletions, strict=True)
                tx.execute(DELETE_UUIDS_SQL, (list(members), list(uuids)))
                result.deletions = tx.rowcount
            versioned = {
                (row["member_id"], row["sync_identifier"])
                for row in rows
                if row["sync_identifier"] is not None
            }
            if versioned:
                members, identifiers = zip(*sorted(versioned), strict=True)
                tx.execute(DELETE_SUPERSEDED_SQL, (list(members), list(identifiers)))
                result.superseded += tx.rowcount
        tx.execute(MARK_PROCESSED_SQL, (chunk.upload_ids,))
    return result
