"""Merge one file's valid rows into `raw_partners.enrollment_members`, chunk by chunk.

Why not `pipeline.run` here: dlt's merge writes every row three times (normalized files, a
COPY into a staging dataset, then a delete-insert from staging into the table), ~6.5 s of a
500K-row file that Postgres can COPY in about one. This is the same merge in one transaction:
the file's members (its keys are unique: validation rejects repeats) replace the rows with
the same `(partner_id, employee_id)`, newer file wins, and a retried load of the same file
ends with the same rows. dlt still owns the table: `ensure_raw_tables` creates it (and
`_dlt_loads`) through the `enrollment_members` resource, and every row gets a dlt-style
`_dlt_load_id` (epoch seconds as text, which dbt staging reads), recorded in `_dlt_loads` as
dlt records its loads.

Each validated chunk is merged as soon as it is checked, so only one chunk's rows are held at
a time; nothing is committed until the whole file has been read, so an unreadable tail rolls
the transaction back and leaves the table as it was. Chunks travel as binary COPY (pgpq
encodes Arrow in Rust): Postgres parses no dates, timestamps or CSV quoting.

Chunks are merged by one worker thread while the next chunk is read and validated; the reader
encodes each chunk and asks whether it may replace stored members (`_may_replace`), so the
thread mostly waits on Postgres (with the GIL released), whose COPY is the slower half. At most two chunks are held, one being merged, one being validated. The
partner's stored ids (which say which members a chunk replaces) are read by the merge thread
when a chunk first needs them (see `_replaced`); the merge thread also reads the range
they span when the load begins.
A 500K-row file into the machine's Postgres: 3.0-3.2 s merging in line, 2.2-2.7 s with the
merge thread, ~2.0 s with a streaming parse.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import pgpq
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ingestion.partners import ABSENT_TABLE as ABSENT_MEMBERS
from ingestion.partners import DATASET, IMPORTS_TABLE, MEMBERS_TABLE
from ingestion.partners.validation import MEMBER_ARROW_SCHEMA
from mdp.database import ConnectionParams, connect

TABLE = f"{DATASET}.{MEMBERS_TABLE}"
ABSENT_TABLE = f"{DATASET}.{ABSENT_MEMBERS}"
IMPORTS = f"{DATASET}.{IMPORTS_TABLE}"
# when a file was made, as far as we can tell: its SFTP mtime, else when it arrived (a replay
# has no mtime: it is the newest); never after the second it arrived in (SFTP times are whole
# seconds: against the exact arrival, a file sent in the same second would count older)
_FILE_TIME = (
    "case when {f}.remote_mtime is null then {f}.received_at else least("
    "to_timestamp({f}.remote_mtime), date_trunc('second', {f}.received_at)) end"
)
# the chunk's members (%(ids)s) whose stored row a file made after this one (%(as_of)s) wrote,
# or left out: newer file wins, whatever order the files arrive in
_NEWER = (
    f"select member.employee_id from {TABLE} as member"
    f" join {IMPORTS} as source on source.file_id = member.source_file_id"
    " where member.partner_id = %(partner)s and member.employee_id = any(%(ids)s)"
    f" and ({_FILE_TIME.format(f='source')} > %(as_of)s"
    f" or exists (select from {ABSENT_TABLE} as absent"
    f" join {IMPORTS} as leaving on leaving.file_id = absent.file_id"
    " where absent.partner_id = member.partner_id and absent.employee_id = member.employee_id"
    " and absent.absent_since > member.file_received_at"
    f" and {_FILE_TIME.format(f='leaving')} > %(as_of)s))"
)
# a stored member whose coverage has not ended and that no full file received after its row
# has left out
_ACTIVE = (
    "(member.eligibility_end_date is null or member.eligibility_end_date >= current_date)"
    f" and not exists (select from {ABSENT_TABLE} as absent where absent.partner_id ="
    " member.partner_id and absent.employee_id = member.employee_id"
    " and absent.absent_since > member.file_received_at)"
)
# ... that this file (%(file)s) neither loaded nor rejected
_LEFT_OUT = (
    "member.source_file_id <> %(file)s and not exists (select from incoming_keys as present"
    " where present.employee_id = member.employee_id)"
)
# the stored coverage dates, kept beside the kept values to judge them by (see _kept_value)
_STORED_DATES = "eligibility_start_date as stored_start, eligibility_end_date as stored_end"
LOAD_ID_COLUMN = "_dlt_load_id"
LOAD_LOCK = "partner-load"  # its own key: under partner_lock's, a load would wait on its import
LOAD_COMPLETED = 0  # dlt's status for a completed load in _dlt_loads
# a chunk this small probes the key's index for each of its ids rather than read the stored
# ids (10K probes took ~0.11 s of Postgres time, a 490K-id read ~0.1-0.15 s)
PROBE_ROWS = 1_000
# a canonical field stored as other columns
STORED_COLUMNS_OF = {"ssn": ["ssn_hash", "ssn_last4"]}
LOAD_SCHEMA = MEMBER_ARROW_SCHEMA.append(pa.field(LOAD_ID_COLUMN, pa.string(), nullable=False))


def new_load_id() -> str:
    """A load id as dlt makes them: the current epoch seconds with fractions, as text."""
    return f"{time.time():.7f}"


class MemberLoad:
    """One file's load: `add` each validated chunk, then `commit`; leaving the `with` block
    without a commit (an exception, an unreadable file) rolls everything back."""

    def __init__(
        self,
        params: ConnectionParams,
        partner_id: str,
        schema_name: str,
        kept_fields: list[str] | None = None,
        full_file: bool = False,
        as_of: dt.datetime | None = None,
        blank_start_keeps_stored: bool = False,
        start_required: bool = False,
    ):
        self.partner_id = partner_id
        self.schema_name = schema_name
        # fields this file has no column for: a replaced member keeps its stored values
        self.kept_columns = [
            column
            for field in kept_fields or []
            for column in STORED_COLUMNS_OF.get(field, [field])
        ]
        self.load_id = new_load_id()
        self.rows = 0
        self.seconds = 0.0  # spent merging (in the merge thread) and committing
        self.waited = 0.0  # the caller's time spent waiting for merges
        self._params = params
        self._scope = contextlib.ExitStack()
        self._committed = False
        self._merging: Future[None] | None = None
        self._begun: Future[None] | None = None  # _begin, on the merge thread
        self._stored: pa.Array | None = None  # read when a chunk first needs them
        self._stored_range: tuple[str | None, str | None] = (None, None)
        self._full_file = full_file
        # an 834's blank begin date is one not sent (a termination's): the stored one stands;
        # where the begin date is required, a row with none stored is rejected here
        self._blank_start_keeps_stored = blank_start_keeps_stored
        self._start_required = start_required
        self.rejects: list[tuple[int, str, str]] = []  # (line, employee id, reason)
        self.active_before = 0  # a full file's: active members before it (see left_out)
        self._as_of = as_of  # when the file was made (see _FILE_TIME)
        # a file older than one loaded already (late, or re-sent): its rows replace only the
        # members no newer file has written or left out; `superseded` counts the others
        self.stale = False
        self.superseded = 0

    def __enter__(self) -> MemberLoad:
        self._merger = self._scope.enter_context(ThreadPoolExecutor(1, "member-merge"))
        self._conn = self._scope.enter_context(connect(self._params))
        self._cur = self._scope.enter_context(self._conn.cursor())
        self._begun = self._merging = self._merger.submit(self._begin)
        return self

    def _begin(self) -> None:
        # one load of a partner at a time, held by this transaction itself: the import's
        # session lock (pipeline.partner_lock) lives on another connection, and if that
        # backend ends mid-import (killed, a restart) a second import could start. Its merge
        # then failed on the unique key; now it waits here, and reads what this one stored.
        self._cur.execute(
            "select pg_advisory_xact_lock(hashtext(%s))", (f"{LOAD_LOCK}:{self.partner_id}",)
        )
        self._cur.execute("create temp table incoming_keys (employee_id text) on commit drop")
        if self.kept_columns:
            self._cur.execute(
                "create temp table kept_values on commit drop as"
                f" select employee_id, {', '.join(self.kept_columns)}, {_STORED_DATES}"
                f" from {TABLE} limit 0"
            )
        # the partner's least and greatest stored id, as the database orders them (two index
        # look-ups), read before this load adds any: a chunk with no id in this range
        # replaces nobody
        self._cur.execute(
            f"select min(employee_id), max(employee_id) from {TABLE} where partner_id = %s",
            (self.partner_id,),
        )
        self._stored_range = self._cur.fetchone()
        if self._as_of is not None:
            self._cur.execute(
                f"select max({_FILE_TIME.format(f='loaded')}) > %s from {IMPORTS} as loaded"
                " where loaded.partner_id = %s and loaded.status = 'loaded'",
                (self._as_of, self.partner_id),
            )
            self.stale = bool(self._cur.fetchone()[0])
        if self._full_file:
            self._cur.execute(
                f"select count(*) from {TABLE} as member where member.partner_id = %s and {_ACTIVE}",
                (self.partner_id,),
            )
            (self.active_before,) = self._cur.fetchone()

    def add(self, table: pa.Table) -> None:
        """Hand one validated chunk to the merge thread (after the previous one is merged, so
        at most two chunks are held); a failed merge raises here or at commit."""
        if not table.num_rows:
            return
        rows = table.cast(MEMBER_ARROW_SCHEMA).append_column(
            LOAD_SCHEMA.field(LOAD_ID_COLUMN), pa.array([self.load_id] * table.num_rows)
        )
        # asked and encoded here, so the merge thread only waits on its COPY (the slower half)
        may_replace = self._may_replace(rows["employee_id"])
        data = binary_copy_data(rows)
        self._wait()
        self._merging = self._merger.submit(self._merge, rows, data, may_replace)

    def wait_for_merges(self) -> None:
        """Until every chunk handed over is merged (`rows` and `superseded` are final)."""
        self._wait()

    def _wait(self) -> None:
        if self._merging is not None:
            started = time.perf_counter()
            merging, self._merging = self._merging, None
            try:
                merging.result()
            finally:
                self.waited += time.perf_counter() - started

    def _merge(self, rows: pa.Table, data: list[bytes], may_replace: bool) -> None:
        """Delete the members the chunk replaces, then COPY it in (`data`: the rows as binary
        COPY data; `may_replace`: see `_may_replace`)."""
        started = time.perf_counter()
        if self.stale:
            rows, data = self._without_newer(rows, data)
        if self._blank_start_keeps_stored:
            rows, data = self._with_stored_starts(rows, data)
        ids, count = rows["employee_id"], rows.num_rows
        if not count:
            return
        replaced = self._replaced(ids, may_replace)
        if len(replaced):
            copy_binary(
                self._cur,
                "incoming_keys (employee_id)",
                binary_copy_data(pa.table({"employee_id": replaced})),
            )
            # an array, not a join: the key's index is probed whatever the planner thinks of
            # a temp table without statistics
            if self.kept_columns:
                self._cur.execute(
                    "insert into kept_values select employee_id,"
                    f" {', '.join(self.kept_columns)}, {_STORED_DATES}"
                    f" from {TABLE} where partner_id = %s"
                    " and employee_id = any(array(select employee_id from incoming_keys))",
                    (self.partner_id,),
                )
            self._cur.execute(
                f"delete from {TABLE} where partner_id = %s"
                " and employee_id = any(array(select employee_id from incoming_keys))",
                (self.partner_id,),
            )
            self._cur.execute("truncate incoming_keys")
        copy_binary(self._cur, f"{TABLE} ({', '.join(LOAD_SCHEMA.names)})", data)
        if len(replaced) and self.kept_columns:
            assignments = ", ".join(f"{c} = {self._kept_value(c)}" for c in self.kept_columns)
            # the array, as for the delete: the key's index is probed, not the partner's rows
            # scanned (a temp table has no statistics)
            self._cur.execute(
                f"update {TABLE} as member set {assignments} from kept_values as kept"
                " where member.partner_id = %s and member.employee_id = kept.employee_id"
                " and member.employee_id = any(array(select employee_id from kept_values))",
                (self.partner_id,),
            )
            self._cur.execute("truncate kept_values")
        self.rows += count
        self.seconds += time.perf_counter() - started

    def _without_newer(self, rows: pa.Table, data: list[bytes]) -> tuple[pa.Table, list[bytes]]:
        """A stale file's chunk without the members a newer file wrote or left out."""
        self._cur.execute(
            _NEWER,
            {
                "partner": self.partner_id,
                "ids": rows["employee_id"].to_pylist(),
                "as_of": self._as_of,
            },
        )
        newer = [row[0] for row in self._cur.fetchall()]
        if not newer:
            return rows, data
        self.superseded += len(newer)
        kept = rows.filter(pc.invert(pc.is_in(rows["employee_id"], pa.array(newer, pa.string()))))
        return kept, binary_copy_data(kept)

    def _with_stored_starts(
        self, rows: pa.Table, data: list[bytes]
    ) -> tuple[pa.Table, list[bytes]]:
        """The chunk with each blank begin date filled from the member's stored row. Where the
        begin date is required, a row left without one (a termination of a member never
        enrolled) or ending before it is taken out and kept in `rejects`."""
        start = rows["eligibility_start_date"]
        blank = pc.is_null(start)
        if not pc.any(blank).as_py():
            return rows, data
        self._cur.execute(
            f"select employee_id, eligibility_start_date from {TABLE}"
            " where partner_id = %s and employee_id = any(%s)",
            (self.partner_id, rows["employee_id"].filter(blank).to_pylist()),
        )
        stored = self._cur.fetchall()
        stored_ids = pa.array([row[0] for row in stored], pa.string())
        stored_starts = pa.array([row[1] for row in stored], pa.date32())
        found = stored_starts.take(pc.index_in(rows["employee_id"], value_set=stored_ids))
        filled = pc.coalesce(start, found)
        rows = rows.set_column(
            rows.schema.get_field_index("eligibility_start_date"), "eligibility_start_date", filled
        )
        if self._start_required:
            end = rows["eligibility_end_date"]
            unstarted = pc.is_null(filled)
            backwards = pc.fill_null(pc.less(end, filled), False)
            bad = pc.or_(unstarted, backwards)
            if pc.any(bad).as_py():
                self._reject(rows.filter(bad), pc.filter(unstarted, bad))
                rows = rows.filter(pc.invert(bad))
        return rows, binary_copy_data(rows)

    def _reject(self, rows: pa.Table, unstarted: pa.ChunkedArray) -> None:
        for line, key, end, none in zip(
            rows["source_line_number"].to_pylist(),
            rows["employee_id"].to_pylist(),
            rows["eligibility_end_date"].to_pylist(),
            unstarted.to_pylist(),
            strict=True,
        ):
            reason = (
                "eligibility_start_date: required but empty (a termination of a member with no"
                " stored coverage: nothing to end)"
                if none
                else f"eligibility_end_date: {end} is before the stored coverage start"
            )
            self.rejects.append((line, key, reason))

    def _kept_value(self, column: str) -> str:
        """The value a replaced member keeps for a column its file lacks: the stored one, with
        two exceptions. A kept end date that falls before the coverage the file now gives the
        member belonged to an earlier enrollment (a re-enrollment in a file without an end
        column). A kept status stands only while the coverage dates it described are
        unchanged. An update's expressions read the row as inserted, so `member.` is what the
        file gave."""
        kept = set(self.kept_columns)
        start = (
            "kept.stored_start"
            if "eligibility_start_date" in kept
            else "member.eligibility_start_date"
        )
        end = f"case when kept.stored_end < {start} then null else kept.stored_end end"
        if column == "eligibility_end_date":
            return end
        if column == "coverage_status":
            if "eligibility_end_date" not in kept:
                end = "member.eligibility_end_date"
            return (
                f"case when kept.stored_start is not distinct from {start}"
                f" and kept.stored_end is not distinct from {end} then kept.coverage_status end"
            )
        return f"kept.{column}"

    def _may_replace(self, ids: pa.ChunkedArray) -> bool:
        """Whether the chunk may hold stored members; False when it replaces nobody: the
        partner has none, or the chunk's ids all lie outside the stored ids' range (new members
        often get higher ids). Asked on the reading thread, which has time to spare, with a
        connection of its own: on the merge thread the question held up every chunk's COPY."""
        self._begun.result()  # the stored range is read as the load begins
        if self._stored is not None:
            return True
        if self._stored_range[0] is None:
            return False
        return len(ids) <= PROBE_ROWS or self._any_in_stored_range(ids)

    def _replaced(self, ids: pa.ChunkedArray, may_replace: bool) -> pa.Array | pa.ChunkedArray:
        """The chunk's ids that are stored already. Only those are deleted: probing the index
        for every new member cost more than a 500K-row file's whole COPY (~11 µs an id).
        The partner's stored ids are read (on the merge thread) when a chunk first needs them:
        not for a chunk that replaces nobody (`may_replace` is False), nor for one of up to
        PROBE_ROWS, whose ids are probed. The stored ids are probed against the chunk (hashing
        the chunk, not every stored id, took a 500K-row file into a partner with 490K members
        from 1.1 s to 0.12 s)."""
        if self._stored is None:
            if not may_replace:
                return ids.slice(0, 0)
            if len(ids) <= PROBE_ROWS:
                return ids
            self._stored = stored_ids(self._params, self.partner_id)
        return self._stored.filter(pc.is_in(self._stored, value_set=ids))

    def _any_in_stored_range(self, ids: pa.ChunkedArray) -> bool:
        """Whether any of the chunk's ids lies between the least and greatest stored id, as
        the database orders them: one statement with the ids joined in one value, which reads
        no table (~3 ms for 10K ids; a COPY into the temp table and its truncate took ~8 ms)."""
        joined = joined_lines(ids)
        if joined is None:  # an id holds a line break: no cheap answer, so "maybe"
            return True
        low, high = self._stored_range
        with connect(self._params, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(
                "select exists (select from unnest(string_to_array(%s, E'\\n')) as id"
                " where id between %s and %s)",
                (joined, low, high),
            )
            (found,) = cur.fetchone()
        return bool(found)

    def left_out(self, present_keys: list[str], file_id: str) -> tuple[int, int]:
        """For a full file, once every chunk is merged: (active members it leaves out,
        active members before it: the file's own new members do not dilute the share).
        Present are the file's loaded rows and the keys of its rejected rows; a member is
        active while its coverage has not ended and no full file received after its row
        left it out."""
        self._wait()
        self._cur.execute("truncate incoming_keys")
        if present_keys:
            keys = pa.table({"employee_id": pa.array(present_keys, pa.string())})
            copy_binary(self._cur, "incoming_keys (employee_id)", binary_copy_data(keys))
        self._cur.execute("analyze incoming_keys")
        self._cur.execute(
            f"select count(*) from {TABLE} as member where member.partner_id = %(partner)s"
            f" and {_ACTIVE} and {_LEFT_OUT}",
            {"partner": self.partner_id, "file": file_id},
        )
        (left_out,) = self._cur.fetchone()
        return int(left_out), int(self.active_before)

    def record_left_out(self, file_id: str, received_at: dt.datetime) -> None:
        """Record the members `left_out` counted as absent since this file (same transaction
        as its rows: a rolled-back load leaves no absence behind)."""
        self._cur.execute(
            f"insert into {ABSENT_TABLE} (partner_id, employee_id, file_id, absent_since)"
            " select member.partner_id, member.employee_id, %(file)s, %(since)s"
            f" from {TABLE} as member where member.partner_id = %(partner)s"
            f" and {_ACTIVE} and {_LEFT_OUT} on conflict do nothing",
            {"partner": self.partner_id, "file": file_id, "since": received_at},
        )

    def commit(self) -> str:
        """Record the load in `_dlt_loads` and commit; returns the load id."""
        self._wait()
        started = time.perf_counter()
        if self.rows:  # a file with nothing valid is no load
            self._cur.execute(
                f"insert into {DATASET}._dlt_loads (load_id, schema_name, status, inserted_at)"
                " values (%s, %s, %s, now())",
                (self.load_id, self.schema_name, LOAD_COMPLETED),
            )
        self._conn.commit()
        self._committed = True
        committing = time.perf_counter() - started
        self.seconds += committing
        self.waited += committing
        return self.load_id

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._merging is not None:
            self._merging.exception()  # let the thread's statement finish before rolling back
        if not self._committed:
            self._conn.rollback()
        self._scope.__exit__(exc_type, exc, traceback)


def stored_ids(params: ConnectionParams, partner_id: str) -> pa.Array:
    """The employee ids stored for a partner (read once per file; imports of one partner
    take turns, and the unique key turns any race into a failed load, never a duplicate).

    As one joined text value: a COPY sends a message per row, and psycopg2's callback for each
    one takes the GIL from the thread validating the file (490K ids: 0.11-0.16 s this way,
    0.18-0.31 s through COPY, read beside an import). Ids holding a line break (no partner's
    pattern allows one) come through COPY's CSV instead."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select string_agg(employee_id, E'\\n'), bool_or(strpos(employee_id, E'\\n') > 0)"
            f" from {TABLE} where partner_id = %s",
            (partner_id,),
        )
        joined, has_line_breaks = cur.fetchone()
        if joined is None:
            return pa.array([], pa.string())
        if not has_line_breaks:
            return pc.split_pattern(pa.array([joined], pa.string()), "\n").flatten()
        sink = io.BytesIO()
        query = cur.mogrify(f"select employee_id from {TABLE} where partner_id = %s", (partner_id,))
        cur.copy_expert(f"copy ({query.decode()}) to stdout with (format csv)", sink)
    sink.seek(0)
    read = pv.read_csv(
        sink,
        read_options=pv.ReadOptions(column_names=["employee_id"]),
        parse_options=pv.ParseOptions(newlines_in_values=True),
        convert_options=pv.ConvertOptions(
            column_types={"employee_id": pa.string()}, strings_can_be_null=False
        ),
    )
    return read.column("employee_id").combine_chunks()


def joined_lines(values: pa.ChunkedArray) -> str | None:
    """The values as one text of lines, or None if a value holds a line break."""
    combined = values.combine_chunks()
    if pc.any(pc.match_substring(combined, "\n")).as_py():
        return None
    lines = pa.ListArray.from_arrays(pa.array([0, len(combined)], pa.int32()), combined)
    return pc.binary_join(lines, "\n")[0].as_py() or ""


def binary_copy_data(table: pa.Table) -> list[bytes]:
    """An Arrow table as Postgres binary COPY data, in parts (joining them copied a 500K-row
    file's ~125 MB once more, 0.1-0.15 s of the reading thread)."""
    encoder = pgpq.ArrowToPostgresBinaryEncoder(table.schema)
    parts = [encoder.write_header()]
    parts += [encoder.write_batch(batch) for batch in table.to_batches()]
    parts.append(encoder.finish())
    return [part for part in parts if part]  # an empty read would end the COPY


class _PartsReader:
    """The file-like object `copy_expert` reads: each read hands over the next part whole."""

    def __init__(self, parts: list[bytes]):
        self._parts = iter(parts)

    def read(self, size: int = -1) -> bytes:
        return next(self._parts, b"")


def copy_binary(cur, target: str, data: list[bytes]) -> None:
    cur.copy_expert(f"copy {target} from stdin with (format binary)", _PartsReader(data))
