"""Merge one file's valid rows into `raw_partners.enrollment_members` with COPY.

Why not `pipeline.run` here: dlt's merge writes every row three times (normalized files, a
COPY into a staging dataset, then a delete-insert from staging into the table), ~6.5 s of a
500K-row file that Postgres can COPY in about one. This is the same merge in one transaction:
the file's members (its keys are unique: validation rejects repeats) replace the rows with
the same `(partner_id, employee_id)`, newer file wins, and a retried load of the same file
ends with the same rows. dlt still owns the table: `ensure_raw_tables` creates it (and
`_dlt_loads`) through the `enrollment_members` resource, and every row gets a dlt-style
`_dlt_load_id` (epoch seconds as text, which dbt staging reads), recorded in `_dlt_loads` as
dlt records its loads.

Tried and dropped: loading each batch while the next is validated (a background thread) was
slower on two cores, the validation and Postgres compete for the same CPUs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ingestion.partners import DATASET, MEMBERS_TABLE
from mdp.database import ConnectionParams, connect

TABLE = f"{DATASET}.{MEMBERS_TABLE}"
LOAD_ID_COLUMN = "_dlt_load_id"
LOAD_COMPLETED = 0  # dlt's status for a completed load in _dlt_loads
COPY_READ_BYTES = 1 << 20


def new_load_id() -> str:
    """A load id as dlt makes them: the current epoch seconds with fractions, as text."""
    return f"{time.time():.7f}"


def merge_members(
    params: ConnectionParams, partner_id: str, schema_name: str, tables: list[pa.Table]
) -> str:
    """Replace the partner's members that these rows carry, insert the rest; returns the load id."""
    load_id = new_load_id()
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("create temp table incoming_keys (employee_id text) on commit drop")
        keys = (table.select(["employee_id"]) for table in tables)
        cur.copy_expert("copy incoming_keys from stdin with (format csv)", CsvStream(keys))
        cur.execute("analyze incoming_keys")
        cur.execute(
            f"delete from {TABLE} m using incoming_keys k"
            " where m.partner_id = %s and m.employee_id = k.employee_id",
            (partner_id,),
        )
        # all-null columns stay out of the COPY (they default to null): less text to parse
        columns = [
            name
            for name in tables[0].column_names
            if any(table.column(name).null_count < table.num_rows for table in tables)
        ]
        rows = (
            table.select(columns).append_column(
                LOAD_ID_COLUMN, pc.cast(pa.repeat(load_id, table.num_rows), pa.string())
            )
            for table in tables
        )
        cur.copy_expert(
            f"copy {TABLE} ({', '.join([*columns, LOAD_ID_COLUMN])}) from stdin with (format csv)",
            CsvStream(rows),
            size=COPY_READ_BYTES,
        )
        cur.execute(
            f"insert into {DATASET}._dlt_loads (load_id, schema_name, status, inserted_at)"
            " values (%s, %s, %s, now())",
            (load_id, schema_name, LOAD_COMPLETED),
        )
    return load_id


class CsvStream(io.RawIOBase):
    """Arrow tables as one CSV byte stream for one COPY, each written out when it is reached:
    Postgres parses one batch while the next is being written."""

    def __init__(self, tables: Iterable[pa.Table]):
        self._tables = iter(tables)
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            table = next(self._tables, None)
            if table is None:
                return 0
            sink = io.BytesIO()
            # blank cells are null, never empty strings: an unquoted empty field is NULL
            pv.write_csv(_timestamps_as_text(table), sink, pv.WriteOptions(include_header=False))
            self._buffer = sink.getbuffer()
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def _timestamps_as_text(table: pa.Table) -> pa.Table:
    """Timestamps written as ISO text, each distinct value formatted once: Arrow's CSV writer
    takes ~1.4 us per zoned timestamp (0.7 s of a 500K-row file that has one value)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            encoded = pc.dictionary_encode(table.column(index)).combine_chunks()
            text = pa.array([v.isoformat() if v else None for v in encoded.dictionary.to_pylist()])
            table = table.set_column(index, field.name, text.take(encoded.indices))
    return table
