import dagster as dg

from orchestration.defs.partners.assets import RAW_KEYS

# A file import, then everything dbt builds from it, so a run ends with members servable.
partner_import_job = dg.define_asset_job(
    "partner_import",
    selection=dg.AssetSelection.assets(*RAW_KEYS).downstream(),
    description="Import complete partner files, then rebuild the dbt models that depend on them.",
)

materialize_all_job = dg.define_asset_job(
    "materialize_all", selection=dg.AssetSelection.all(), description="Every asset, once."
)
