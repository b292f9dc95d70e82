"""The eligibility history before a partner's next file: the dbt snapshot, and the models it
reads (staging views, the int_members_resolved table), built on their own
(`pipeline.import_partner_files` says when)."""

from typing import Any

from dagster_dbt import DbtCliResource

from mdp.database import ConnectionParams
from orchestration.defs.transform.assets import one_build_at_a_time
from orchestration.defs.transform.project import dbt_project

HISTORY_SNAPSHOT = "eligibility_history"
# the snapshot and the staging and intermediate models upstream of it (a first run has none
# yet); no tests and no marts: the build after the import runs those
HISTORY_BUILD_ARGS = [
    "build",
    "--select",
    f"+{HISTORY_SNAPSHOT}",
    "--resource-type",
    "model",
    "--resource-type",
    "snapshot",
]


def record_eligibility_history(dbt: DbtCliResource, params: ConnectionParams, log: Any) -> bool:
    """Run the history snapshot now, under the build lock; False (logged) if dbt failed."""
    with one_build_at_a_time(params, log):
        invocation = dbt.cli(
            HISTORY_BUILD_ARGS, manifest=dbt_project.manifest_path, raise_on_error=False
        )
        invocation.wait()
    if invocation.is_successful():
        return True
    results = invocation.get_artifact("run_results.json").get("results", [])
    errored = [r["unique_id"] for r in results if r.get("status") == "error"]
    log.warning(f"the eligibility history snapshot failed ({', '.join(errored) or 'dbt error'})")
    return False
