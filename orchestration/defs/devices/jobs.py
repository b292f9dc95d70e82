import dagster as dg

from orchestration.defs.devices.assets import (
    ACTIVITIES_KEY,
    APPLE_SAMPLES_KEY,
    CONNECTIONS_KEY,
    GARMIN_KEYS,
    STEPS_KEY,
    WEIGHT_KEY,
)

# every device source, so the unified models downstream always find all their inputs built
DEVICE_SOURCES = dg.AssetSelection.assets(
    STEPS_KEY,
    WEIGHT_KEY,
    ACTIVITIES_KEY,
    CONNECTIONS_KEY,
    APPLE_SAMPLES_KEY,
    *GARMIN_KEYS.values(),
)

device_sync_job = dg.define_asset_job(
    "device_sync",
    selection=DEVICE_SOURCES.downstream(),
    description="Pull device data, then rebuild the device marts.",
)
