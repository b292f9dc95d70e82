"""Device data: Fitbit, Garmin and Apple Health into raw tables (dlt). Runnable without Dagster."""
