import dagster as dg

from orchestration.defs.devices.assets import CONNECTIONS_KEY, STEPS_KEY, WEIGHT_KEY

device_sync_job = dg.define_asset_job(
    "device_sync",
    selection=dg.AssetSelection.assets(STEPS_KEY, WEIGHT_KEY, CONNECTIONS_KEY).downstream(),
    description="Pull device data, then rebuild the device marts.",
)
