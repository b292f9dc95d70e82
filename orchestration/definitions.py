"""The code location: everything is loaded from `orchestration/defs/`."""

from pathlib import Path

import dagster as dg

from mdp.quiet_imports import import_dbt_telemetry_client

import_dbt_telemetry_client()  # before dagster-dbt imports dbt

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent.parent)
