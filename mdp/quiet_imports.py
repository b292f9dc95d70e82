"""Imports that would otherwise change how this process logs."""

from __future__ import annotations

import logging


def import_dbt_telemetry_client() -> None:
    """Import `snowplow_tracker` (dbt's telemetry client) without the root log handler it adds.

    It calls `logging.basicConfig()` when imported, giving the root logger a stderr handler:
    every line Dagster logs then reached stderr twice, once as Dagster formats it and once
    as `INFO:dagster.builtin:...`."""
    before = list(logging.root.handlers)
    try:
        import snowplow_tracker  # noqa: F401
    except ImportError:
        return
    for handler in logging.root.handlers[:]:
        if handler not in before:
            logging.root.removeHandler(handler)
