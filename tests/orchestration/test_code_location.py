"""The whole code location loads, and dlt tables line up with dbt sources (one lineage)."""

from __future__ import annotations

import dagster as dg
import pytest

from mdp.orchestrate import prepare_dbt_manifest
from mdp.settings import load_settings


@pytest.fixture(scope="module")
def defs(platform):
    # on the platform's env: with none, settings fall back to the checkout's .mdp/, where
    # the manifest's set-up wrote local secrets
    prepare_dbt_manifest(load_settings())
    from orchestration.definitions import defs

    return defs


def test_every_dbt_source_is_produced_by_an_asset_and_no_key_is_a_dlt_phantom(defs):
    graph = defs.resolve_asset_graph()
    produced = {key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable}
    upstream = {dep for key in produced for dep in graph.get(key).parent_keys}
    assert upstream <= produced, f"unproduced upstream keys: {upstream - produced}"
    assert not [k for k in produced if k.path[0].startswith("dlt_")]
    assert dg.AssetKey(["raw_partners", "enrollment_members"]) in produced
    mart = dg.AssetKey(["marts", "mart_eligibility"])
    assert mart in produced
    lineage = graph.get(mart)
    ancestors = set()
    frontier = {mart}
    while frontier:
        key = frontier.pop()
        parents = set(graph.get(key).parent_keys)
        frontier |= parents - ancestors
        ancestors |= parents
    assert dg.AssetKey(["raw_partners", "enrollment_members"]) in ancestors
    assert lineage is not None


def test_dbt_tests_are_asset_checks_and_sensors_and_schedules_are_registered(defs):
    graph = defs.resolve_asset_graph()
    checks = {check.name for check in graph.asset_check_keys}
    assert any(name.startswith("unique_") for name in checks)
    assert {"no_stuck_imports", "partner_file_quality"} <= checks
    assert defs.resolve_sensor_def("push_inbox_sensor")
    assert defs.resolve_schedule_def("initech_pull").cron_schedule == "15 * * * *"
    assert defs.resolve_job_def("partner_import")


def test_the_member_marts_are_rebuilt_daily_and_their_sensor_is_registered(defs):
    schedule = defs.resolve_schedule_def("member_marts_daily")
    assert schedule.cron_schedule == "5 0 * * *"
    job = defs.resolve_job_def("member_marts_refresh")
    selected = {key.path[-1] for key in job.asset_layer.selected_asset_keys}
    assert {"mart_eligibility", "dim_member", "eligibility_history"} <= selected
    assert "enrollment_members" not in selected  # dbt only: no import
    assert defs.resolve_sensor_def("member_marts_behind_sensor")


def test_runs_execute_their_steps_in_one_process(defs):
    # a process per step re-imported the code location each time (~130 s of a 193 s run)
    for job in ("partner_import", "member_marts_refresh", "materialize_all"):
        assert defs.resolve_job_def(job).executor_def.name == "in_process"


def test_loading_the_code_location_adds_no_root_log_handler(platform):
    """dbt's telemetry client calls logging.basicConfig() when imported: with its root handler
    every Dagster log line reached stderr twice (once as `INFO:dagster.builtin:...`). The
    child inherits the platform's env (test database, temp state folder): without it, it
    started an embedded Postgres in the checkout's .mdp/ and left it running."""
    import subprocess
    import sys

    script = (
        "import logging\n"
        "from mdp.orchestrate import load_definitions\n"
        "from mdp.settings import load_settings\n"
        "load_definitions(load_settings())\n"
        "import snowplow_tracker\n"
        "print(len(logging.root.handlers))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert shown.stdout.strip().splitlines()[-1] == "0", shown.stderr[-2000:]


def test_every_table_asset_names_the_table_it_is_stored_in(defs, platform):
    """Raw tables named as dagster-dbt names the models' (`database.schema.table`), so the UI
    says where each lives; the name is the real table's."""
    from mdp.database import connect

    graph = defs.resolve_asset_graph()
    names = {}
    for key in graph.get_all_asset_keys():
        if graph.get(key).is_materializable:
            names[key] = str(graph.get(key).metadata.get("dagster/table_name", ""))
    assert all(names.values()), [k.to_user_string() for k, n in names.items() if not n]
    # database.schema.table; the database is the one dbt's profile reads when the code
    # location loads (another test module may have loaded it first, under another)
    assert all(len(name.split(".")) == 3 for name in names.values()), names
    with connect(platform.params) as conn, conn.cursor() as cur:
        for key, name in names.items():
            if key.path[0].startswith("raw_") or key.path[0] == "devices":
                cur.execute("select to_regclass(%s)", (name.split(".", 1)[1],))
                assert cur.fetchone()[0] is not None, f"{name} is no table"


def test_every_step_that_reads_the_database_retries_an_outage(defs):
    # an asset check without a policy failed the run on a Postgres restart, though the
    # assets it checks retried and loaded everything
    job = defs.resolve_implicit_global_asset_job_def()
    ours = {"no_stuck_imports", "partner_file_quality", "device_data_lag"}
    found = {}
    for node in job.graph.node_defs:
        for check in ours:
            if node.name.endswith(check):
                found[check] = node.retry_policy
    assert set(found) == ours
    assert all(policy is not None and policy.max_retries >= 3 for policy in found.values())
