"""Running the Dagster code location from the CLI, in the same instance the UI shows."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mdp.cli_runs import cli_run_tags, fail_abandoned_cli_runs
from mdp.database import connection_params
from mdp.settings import Settings

DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
"""


def prepare_environment(settings: Settings) -> None:
    """DAGSTER_HOME in the state folder and the dbt profile's env, for this process and children."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.update(connection_params(settings).dbt_env())


def prepare_dbt_manifest(settings: Settings) -> Path:
    """`dbt parse` so the code location can load (dagster-dbt reads target/manifest.json)."""
    from mdp.quiet_imports import import_dbt_telemetry_client

    import_dbt_telemetry_client()
    from dbt.cli.main import dbtRunner

    project = settings.dbt_project_dir
    result = dbtRunner().invoke(
        ["parse", "--project-dir", str(project), "--profiles-dir", str(project), "--quiet"]
    )
    if not result.success:
        raise RuntimeError(f"dbt parse failed: {result.exception}")
    return project / "target" / "manifest.json"


class SelectionError(ValueError):
    """An asset selection that is not valid Dagster syntax or selects nothing."""


def load_definitions(settings: Settings):
    """The code location's Definitions, with the environment and dbt manifest prepared first."""
    prepare_environment(settings)
    prepare_dbt_manifest(settings)
    from orchestration.definitions import defs

    return defs


def check_selection(defs, select: str) -> int:
    """How many assets and checks a selection string resolves to; SelectionError if none."""
    import dagster as dg
    from dagster._core.definitions.asset_selection import DagsterInvalidAssetSelectionError
    from dagster._core.errors import DagsterInvalidSubsetError

    if not select.strip():
        raise SelectionError("the asset selection is empty")
    graph = defs.resolve_asset_graph()
    try:
        selection = dg.AssetSelection.from_string(select)
        assets = selection.resolve(graph)
        checks = selection.resolve_checks(graph)
    except DagsterInvalidAssetSelectionError:
        raise SelectionError(f"{select!r} is not a valid asset selection") from None
    except DagsterInvalidSubsetError as exc:
        raise SelectionError(str(exc).split(". ")[0] + _named_like(graph, select)) from None
    if not assets and not checks:
        raise SelectionError(f"selection matches no assets: {select!r}{_named_like(graph, select)}")
    _check_made_together(defs, assets)
    return len(assets) + len(checks)


def _named_like(graph, select: str) -> str:
    """A hint when a word of the selection is the last part of asset keys (dim_member for
    marts/dim_member): keys are paths, which a bare name does not match."""
    words = set(re.findall(r"(?<![:/\w])([A-Za-z_][\w]*)(?![\w/:])", select))
    keys = sorted(
        key.to_user_string() for key in graph.get_all_asset_keys() if key.path[-1] in words
    )
    if not keys:
        return ""
    return f"; asset keys are paths: did you mean {', '.join(keys[:5])} (or key:*{keys[0].split('/')[-1]})?"


def _check_made_together(defs, assets) -> None:
    """Assets one step makes together (the partner import writes both raw tables) cannot be
    run apart: say which to select, rather than fail building the job with a traceback."""
    for key in sorted(assets):
        made_with = defs.get_assets_def(key)
        if made_with.can_subset or made_with.keys <= assets:
            continue
        together = sorted(k.to_user_string() for k in made_with.keys)
        raise SelectionError(
            f"{key.to_user_string()} is made together with"
            f" {', '.join(k for k in together if k != key.to_user_string())} by one step"
            f" ({made_with.node_def.name}): select them all, e.g."
            f" '{' or '.join('key:' + k for k in together)}'"
        )


def run_assets(settings: Settings, select=None, run_config: dict | None = None, defs=None):
    """Materialize assets once, in process, recorded in the Dagster instance.

    `select` is a selection string or an AssetSelection; pass `defs` from load_definitions()
    to skip preparing them again.
    """
    import dagster as dg

    if defs is None:
        defs = load_definitions(settings)
    if isinstance(select, str) and select.strip():
        check_selection(defs, select)
    if select:
        job_name = "mdp_run"
        defs = dg.Definitions.merge(
            defs, dg.Definitions(jobs=[dg.define_asset_job(job_name, selection=select)])
        )
    else:
        job_name = "materialize_all"
    job = defs.resolve_job_def(job_name)
    quiet_console = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with dg.DagsterInstance.get() as instance:
        fail_abandoned_cli_runs(instance)
        return job.execute_in_process(
            instance=instance,
            run_config={**quiet_console, **(run_config or {})},
            raise_on_error=False,
            tags=cli_run_tags(),
        )
