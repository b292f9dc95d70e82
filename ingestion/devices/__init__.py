"""Device data: Fitbit, Garmin and Apple Health into raw tables (dlt). Runnable without Dagster."""

from pathlib import Path

from mdp.database import ConnectionParams


def ensure_raw_tables(params: ConnectionParams, pipelines_dir: Path) -> None:
    """Every provider's raw tables, empty, so the device models build before any data arrives."""
    from ingestion.devices.apple_health.load import ensure_raw_tables as apple
    from ingestion.devices.fitbit import ensure_raw_tables as fitbit
    from ingestion.devices.garmin import ensure_raw_tables as garmin

    fitbit(params)
    garmin(params)
    apple(params, pipelines_dir)
    index_load_times(params)


# the incremental dbt models read "rows loaded since the last build" through these
LOADED_TABLES = (
    "raw_fitbit.daily_steps",
    "raw_fitbit.weight_logs",
    "raw_fitbit.activity_logs",
    "raw_garmin.dailies",
    "raw_garmin.body_comps",
    "raw_garmin.activities",
    "raw_apple_health.samples",
)


def index_load_times(params: ConnectionParams) -> None:
    """An index on each raw table's load time, the expression the staging models expose as
    `_loaded_at` (macros/device_increments.sql), so a one-day build does not scan history."""
    from mdp.database import connect

    with connect(params) as conn, conn.cursor() as cur:
        for table in LOADED_TABLES:
            name = table.split(".")[1] + "_loaded_at"
            cur.execute(
                f"create index if not exists {name} on {table}"
                " ((to_timestamp(_dlt_load_id::double precision)))"
            )
