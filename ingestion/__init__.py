"""dlt sources: partner enrollment files and device data. Runnable without Dagster."""
