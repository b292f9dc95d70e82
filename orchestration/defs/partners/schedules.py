"""One poll schedule per pull partner, from its config (`inbound.schedule`)."""

import dagster as dg

from ingestion.partners.config import load_partner_configs
from mdp.settings import load_settings
from orchestration.defs.partners.jobs import partner_import_job


@dg.definitions
def pull_partner_schedules() -> dg.Definitions:
    configs = load_partner_configs(load_settings().partner_config_dir).configs
    schedules = [
        dg.ScheduleDefinition(
            name=f"{partner_id}_pull",
            cron_schedule=config.inbound.schedule,
            job=partner_import_job,
            run_config={"ops": {"partner_files": {"config": {"partners": [partner_id]}}}},
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Poll {config.display_name}'s SFTP server for new files.",
        )
        for partner_id, config in sorted(configs.items())
        if config.inbound.transport == "sftp_pull"
    ]
    return dg.Definitions(schedules=schedules)
