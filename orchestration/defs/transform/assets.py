"""dbt models, snapshots and tests as assets and asset checks, downstream of the dlt tables."""

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import psycopg2
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from mdp.database import ConnectionParams, connect
from orchestration.defs.transform.project import dbt_project
from orchestration.resources import PlatformResource


class PlatformDbtTranslator(DagsterDbtTranslator):
    """Sources keep dbt's `[source_name, table]` key: the same key the dlt asset produces."""

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest["nodes"].get(unique_id) or manifest["sources"].get(unique_id) or {}
        if node.get("resource_type") in ("model", "snapshot"):
            folder = (
                node.get("fqn", ["", "", "other"])[1] if len(node.get("fqn", [])) > 2 else "marts"
            )
            spec = spec.replace_attributes(group_name=f"dbt_{folder}")
        return spec


translator = PlatformDbtTranslator(
    settings=DagsterDbtTranslatorSettings(
        enable_asset_checks=True, enable_source_tests_as_checks=True
    )
)


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=translator,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
)
def dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, platform: PlatformResource):
    platform.params  # noqa: B018 -- exports the profile's MDP_PG_* variables for the dbt subprocess
    with one_build_at_a_time(platform.params, context.log):
        build = dbt.cli(["build"], context=context, raise_on_error=False)
        for event in build.stream():
            yield with_row_count(event, build.manifest, platform.params, context.log)
    if not build.is_successful():
        raise _build_failure(build.get_artifact("run_results.json").get("results", []))


@contextlib.contextmanager
def one_build_at_a_time(params: ConnectionParams, log: Any) -> Iterator[None]:
    """A session advisory lock around `dbt build`: two runs building at once collided on
    dbt's swap tables (`relation "..__dbt_backup" already exists`) and one failed."""
    with connect(params, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("select pg_try_advisory_lock(hashtext(%s))", (BUILD_LOCK,))
        if not cur.fetchone()[0]:
            log.info("another dbt build is running; this one waits for it")
            cur.execute("select pg_advisory_lock(hashtext(%s))", (BUILD_LOCK,))
        try:
            yield
        finally:
            try:
                cur.execute("select pg_advisory_unlock(hashtext(%s))", (BUILD_LOCK,))
            except psycopg2.Error:
                # the lock's session is gone (a restart, a terminated backend), and the lock
                # with it: the build itself finished, so its result stands and is not retried
                log.warning("the dbt build lock's database session ended during the build")


BUILD_LOCK = "mdp:dbt-build"


def with_row_count(
    event: Any, manifest: Mapping[str, Any], params: ConnectionParams, log: Any
) -> Any:
    """A built table's (or snapshot's) materialization with its row count (views are not
    counted: that would run their query). Counted here rather than by dagster-dbt's
    `fetch_row_counts`, which names the relation with the database of the manifest's parse
    (`mdp`), so it counted nothing on any other database."""
    if not isinstance(event, dg.Output | dg.AssetMaterialization):
        return event
    unique_id = event.metadata.get("unique_id")
    node = manifest["nodes"].get(getattr(unique_id, "text", unique_id)) or {}
    if not node or node.get("config", {}).get("materialized") == "view":
        return event
    relation = f'"{node["schema"]}"."{node.get("alias") or node["name"]}"'
    try:
        with connect(params) as conn, conn.cursor() as cur:
            cur.execute(f"select count(*) from {relation}")
            rows = cur.fetchone()[0]
    except psycopg2.Error as exc:
        log.warning(f"row count of {relation} not fetched ({type(exc).__name__})")
        return event
    return event.with_metadata({**event.metadata, "dagster/row_count": dg.MetadataValue.int(rows)})


def _build_failure(results: list[dict[str, Any]]) -> dg.Failure:
    """Failed tests with no errored node are a verdict on the data: building again finds the
    same rows, so no retry. An error (a model's SQL, a lost connection) may pass next time."""
    errored = [r["unique_id"] for r in results if r.get("status") == "error"]
    failed = [r["unique_id"] for r in results if r.get("status") == "fail"]
    if failed and not errored:
        return dg.Failure(
            f"{len(failed)} dbt test(s) failed: {', '.join(failed[:10])}; see their asset checks",
            allow_retries=False,
        )
    return dg.Failure(
        f"dbt build failed: {len(errored)} node(s) errored ({', '.join(errored[:10])})",
        allow_retries=True,
    )
