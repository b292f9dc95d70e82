"""Notifications in the webhook inbox become sync runs; polling is the backup."""

import dagster as dg

from mdp.database import connect
from orchestration.defs.devices.jobs import device_sync_job
from orchestration.resources import PlatformResource


@dg.sensor(
    job=device_sync_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A sync run for pending provider notifications, batched per tick.",
)
def device_inbox_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource):
    with connect(platform.params) as conn, conn.cursor() as cur:
        cur.execute(
            "select count(*), max(inbox_id) from devices.webhook_inbox where processed_at is null"
        )
        pending, newest = cur.fetchone()
    if not pending:
        return dg.SkipReason("no pending notifications")
    return dg.RunRequest(
        run_key=f"inbox-{newest}",
        run_config={"ops": {"fitbit_sync": {"config": {"mode": "inbox"}}}},
        tags={"pending_notifications": str(pending)},
    )


fitbit_poll_schedule = dg.ScheduleDefinition(
    name="fitbit_poll",
    cron_schedule="*/20 * * * *",
    job=device_sync_job,
    run_config={"ops": {"fitbit_sync": {"config": {"mode": "poll"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Backup pull for connections that have not notified in the last hour.",
)
