"""Loading Apple Health exports into raw_apple_health.samples with dlt (merge on natural key)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dlt
import pyarrow as pa

from ingestion.devices.apple_health.export_xml import (
    EXPORT_SCHEMA,
    ExportStats,
    parse_export_to_batches,
)
from ingestion.dlt_storage import keep_no_loaded_rows
from mdp.database import ConnectionParams

DATASET = "raw_apple_health"


@dlt.resource(
    name="samples",
    primary_key=("member_id", "natural_key"),
    write_disposition={"disposition": "merge", "strategy": "delete-insert"},
    file_format="csv",
)
def samples(batches: Iterable[pa.Table]):
    """HealthKit samples in canonical units; the same sample re-sent (export or upload) merges."""
    yield from batches


def apple_pipeline(params: ConnectionParams, pipelines_dir: Path) -> dlt.Pipeline:
    dlt.config["normalize.parquet_normalizer.add_dlt_load_id"] = True
    dlt.config["normalize.parquet_normalizer.add_dlt_id"] = False
    keep_no_loaded_rows()
    return dlt.pipeline(
        pipeline_name="devices_apple_health",
        destination=dlt.destinations.postgres(credentials=params.dlt_credentials()),
        dataset_name=DATASET,
        pipelines_dir=str(pipelines_dir),
    )


def ensure_raw_tables(params: ConnectionParams, pipelines_dir: Path) -> None:
    from ingestion.devices.apple_health.deletions import DELETIONS_DDL
    from mdp.database import connect

    apple_pipeline(params, pipelines_dir).run(samples([EXPORT_SCHEMA.empty_table()]))
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(DELETIONS_DDL)
        # the merge deletes by key: without this index every load scans the whole table
        cur.execute(
            f"create unique index if not exists samples_member_natural_key"
            f" on {DATASET}.samples (member_id, natural_key)"
        )


def import_export(
    source: Path, member_id: str, params: ConnectionParams, pipelines_dir: Path
) -> ExportStats:
    """Stream an export (xml or zip) into the raw table; the whole file parses before loading."""
    stats = ExportStats()
    uploaded = _uploaded_keys(params, member_id)
    batches = [
        _without(_dedupe(b), uploaded)
        for b in parse_export_to_batches(source, member_id=member_id, stats=stats)
    ]
    if any(b.num_rows for b in batches):
        apple_pipeline(params, pipelines_dir).run(samples(batches))
    return stats


def _uploaded_keys(params: ConnectionParams, member_id: str) -> set[str]:
    """Samples the member app already uploaded: they carry a uuid and sync version that a
    later deletion or newer version must find, so an export never overwrites them."""
    from mdp.database import connect

    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select 1 from information_schema.columns"
            " where table_schema = %s and table_name = 'samples' and column_name = 'uuid'",
            (DATASET,),
        )
        if cur.fetchone() is None:  # no upload has ever been loaded
            return set()
        cur.execute(
            f"select natural_key from {DATASET}.samples where member_id = %s and uuid is not null",
            (member_id,),
        )
        return {row[0] for row in cur.fetchall()}


def _without(batch: pa.Table, keys: set[str]) -> pa.Table:
    if not keys:
        return batch
    keep = [key not in keys for key in batch.column("natural_key").to_pylist()]
    return batch.filter(pa.array(keep))


def _dedupe(batch: pa.Table) -> pa.Table:
    keys = batch.column("natural_key").to_pylist()
    last = {key: i for i, key in enumerate(keys)}
    if len(last) == len(keys):
        return batch
    return batch.take(sorted(last.values()))
