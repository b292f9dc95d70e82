import dagster as dg

from orchestration.defs.partners.assets import IMPORTS_KEY, MEMBERS_KEY

# A file import, then everything dbt builds from it, so a run ends with members servable.
partner_import_job = dg.define_asset_job(
    "partner_import",
    selection=dg.AssetSelection.assets(MEMBERS_KEY, IMPORTS_KEY).downstream(),
    description="Import complete partner files, then rebuild the dbt models that depend on them.",
)

materialize_all_job = dg.define_asset_job(
    "materialize_all", selection=dg.AssetSelection.all(), description="Every asset, once."
)
