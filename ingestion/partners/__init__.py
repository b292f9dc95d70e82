"""Partner enrollment files: the dlt resource that defines the raw tables.

`raw_partners.enrollment_members` holds one current row per `(partner_id, employee_id)`; a
newer file overwrites older rows for the same member (files are imported oldest first).
dlt creates the table; imports merge into it with COPY (see load.py for why).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dlt
import pyarrow as pa

from ingestion.dlt_storage import keep_no_loaded_rows
from mdp.database import ConnectionParams, connect

DATASET = "raw_partners"
MEMBERS_TABLE = "enrollment_members"
IMPORTS_TABLE = "file_imports"
ABSENT_TABLE = "absent_members"  # whom a full file left out (mdp/schema.py)

_HINTS = {
    "partner_id": {"data_type": "text", "nullable": False},
    "employee_id": {"data_type": "text", "nullable": False},
    "source_file_id": {"data_type": "text", "nullable": False},
    "source_line_number": {"data_type": "bigint", "nullable": False},
    "file_received_at": {"data_type": "timestamp", "nullable": False},
}


@dlt.resource(
    name=MEMBERS_TABLE,
    primary_key=("partner_id", "employee_id"),
    write_disposition={"disposition": "merge", "strategy": "delete-insert"},
    columns=_HINTS,
    file_format="csv",
)
def enrollment_members(batches: Iterable[pa.Table]):
    """Validated member rows of one file, as Arrow tables (COPY-loaded: ~10x faster than INSERT)."""
    yield from batches


def pipeline_name(partner_id: str) -> str:
    return f"partner_{partner_id}"


def partner_pipeline(
    partner_id: str, params: ConnectionParams, pipelines_dir: Path
) -> dlt.Pipeline:
    """One pipeline per partner: dlt state must not be shared by runs that may overlap."""
    # Arrow rows get dlt's load id (off by default for Arrow): dbt staging reads it. No _dlt_id:
    # the row already has a key and file lineage, and its unique index cost ~40% of the load.
    dlt.config["normalize.parquet_normalizer.add_dlt_load_id"] = True
    dlt.config["normalize.parquet_normalizer.add_dlt_id"] = False
    # gzip of the intermediate files cost ~4 s per 500K rows for a file that lives seconds
    dlt.config["data_writer.disable_compression"] = True
    keep_no_loaded_rows()
    return dlt.pipeline(
        pipeline_name=pipeline_name(partner_id),
        destination=dlt.destinations.postgres(credentials=params.dlt_credentials()),
        dataset_name=DATASET,
        pipelines_dir=str(pipelines_dir),
    )


SETUP_LOCK = "mdp.ensure_raw_tables"


def ensure_raw_tables(params: ConnectionParams, pipelines_dir: Path) -> None:
    """Create the raw tables with every column before any file arrives, so dbt can build.

    One process at a time (every `mdp run` sets up): two at once shared the dlt pipelines'
    folder, and the second crashed on a load package the first had just finished."""
    with connect(params, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_lock(hashtext(%s))", (SETUP_LOCK,))
        try:
            _create_raw_tables(params, pipelines_dir)
        finally:
            cur.execute("select pg_advisory_unlock(hashtext(%s))", (SETUP_LOCK,))


def _create_raw_tables(params: ConnectionParams, pipelines_dir: Path) -> None:
    from ingestion.partners.validation import MEMBER_ARROW_SCHEMA
    from mdp.schema import ensure_schema

    ensure_schema(params)
    from ingestion.devices import ensure_raw_tables as ensure_device_raw_tables

    ensure_device_raw_tables(params, pipelines_dir)
    pipeline = partner_pipeline("setup", params, pipelines_dir)
    pipeline.run(enrollment_members([MEMBER_ARROW_SCHEMA.empty_table()]), loader_file_format="csv")
    with connect(params) as conn, conn.cursor() as cur:
        # dlt's merge deletes by key: without this index every import scans the whole table
        cur.execute(
            f"create unique index if not exists enrollment_members_key"
            f" on {DATASET}.{MEMBERS_TABLE} (partner_id, employee_id)"
        )
