"""The push-inbox sensor: a run when files on our SFTP server are complete.

A run key names the complete files, so a tick that sees the same files again asks for no
second run. An import empties the inbox of what it read; files still there
`RETRY_AFTER_SECONDS` after their run was asked for belong to a run that failed for good
(an outage longer than its retries), so they are asked for again under a new key: Dagster
never starts two runs with one key.
"""

import hashlib
import json
import time

import dagster as dg

from ingestion.partners.transport import list_inbox, platform_endpoint, sftp_session
from mdp.cli_runs import fail_abandoned_cli_runs
from orchestration.defs.partners.jobs import partner_import_job
from orchestration.resources import PlatformResource

RETRY_AFTER_SECONDS = 15 * 60  # longer than a run with all its retries takes


@dg.sensor(
    job=partner_import_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts an import when a push partner's file is complete: a .done/.ok marker, "
    "or the same size and mtime on two polls.",
)
def push_inbox_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource):
    # runs a killed `mdp run` left STARTED would hold the run queue's places for ever
    for run_id in fail_abandoned_cli_runs(context.instance):
        context.log.warning(f"run {run_id} of an `mdp run` process that is gone: marked failed")
    state = json.loads(context.cursor) if context.cursor else {}
    previous: dict[str, list[float]] = state.get("files", {})
    requested: dict[str, list[float]] = state.get("requested", {})  # key -> [at, attempt]
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
    if not ready:
        context.update_cursor(json.dumps({"files": seen}))
        return dg.SkipReason(f"no complete files ({len(seen)} still arriving)")
    files_key = hashlib.sha256(json.dumps(ready, sort_keys=True).encode()).hexdigest()[:20]
    asked_at, attempt = requested.get(files_key, (time.time(), 0))
    if time.time() - asked_at >= RETRY_AFTER_SECONDS:
        asked_at, attempt = time.time(), attempt + 1
    context.update_cursor(
        json.dumps({"files": seen, "requested": {files_key: [asked_at, attempt]}})
    )
    run_key = files_key if attempt == 0 else f"{files_key}-again-{int(attempt)}"
    return dg.RunRequest(
        run_key=run_key,
        run_config={"ops": {"partner_files": {"config": {"partners": sorted(ready)}}}},
        tags={"partners": ",".join(sorted(ready))},
    )
