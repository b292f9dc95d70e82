"""The push-inbox sensor: a run when files on our SFTP server are complete."""

import hashlib
import json

import dagster as dg

from ingestion.partners.transport import list_inbox, platform_endpoint, sftp_session
from orchestration.defs.partners.jobs import partner_import_job
from orchestration.resources import PlatformResource


@dg.sensor(
    job=partner_import_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts an import when a push partner's file is complete: a .done/.ok marker, "
    "or the same size and mtime on two polls.",
)
def push_inbox_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource):
    previous: dict[str, list[float]] = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, list[float]] = {}
    ready: dict[str, list[str]] = {}
    configs = platform.partner_configs().configs
    with sftp_session(platform_endpoint(platform.settings)) as sftp:
        for partner_id, config in sorted(configs.items()):
            if config.inbound.transport != "sftp_push":
                continue
            files, marked = list_inbox(
                sftp, f"/{partner_id}/inbound", config.inbound.filename_pattern
            )
            for remote in files:
                seen[remote.path] = [remote.size, remote.mtime]
                if remote.name in marked or previous.get(remote.path) == seen[remote.path]:
                    ready.setdefault(partner_id, []).append(
                        f"{remote.path}:{remote.size}:{remote.mtime}"
                    )
    context.update_cursor(json.dumps(seen))
    if not ready:
        return dg.SkipReason(f"no complete files ({len(seen)} still arriving)")
    run_key = hashlib.sha256(json.dumps(ready, sort_keys=True).encode()).hexdigest()[:20]
    return dg.RunRequest(
        run_key=run_key,
        run_config={"ops": {"partner_files": {"config": {"partners": sorted(ready)}}}},
        tags={"partners": ",".join(sorted(ready))},
    )
