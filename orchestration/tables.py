"""How an asset names the Postgres table it is stored in."""

from __future__ import annotations

import os

import dagster as dg


def stored_in(key: dg.AssetKey) -> dict[str, str]:
    """An asset's `dagster/table_name` (its key is `[schema, table]`), written as dagster-dbt
    writes the models' (`database.schema.table`, with the database dbt's profile reads): the
    UI shows where each raw table lives, and links assets stored in the same table."""
    database = os.environ.get("MDP_PG_DATABASE", "mdp")
    return {"dagster/table_name": ".".join([database, *key.path])}
