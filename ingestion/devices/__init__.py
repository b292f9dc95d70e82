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
