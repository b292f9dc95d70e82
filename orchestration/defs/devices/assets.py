"""Device syncs: provider pulls (dlt) into raw tables, plus the connection table they advance."""

import datetime as dt

import dagster as dg

from ingestion.devices.fitbit import (
    DATASET,
    backfill_status,
    plan_backfill,
    plan_from_inbox,
    plan_polling,
    sync_fitbit,
)
from orchestration.resources import FitbitResource, PlatformResource
from orchestration.tables import stored_in

STEPS_KEY = dg.AssetKey([DATASET, "daily_steps"])
WEIGHT_KEY = dg.AssetKey([DATASET, "weight_logs"])
ACTIVITIES_KEY = dg.AssetKey([DATASET, "activity_logs"])
CONNECTIONS_KEY = dg.AssetKey(["devices", "connections"])


class DeviceSyncConfig(dg.Config):
    mode: str = "both"  # inbox: notified windows only; poll: quiet connections; both
    backfill_chunks: int = 1  # per connection and metric per run, after recent data


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            STEPS_KEY,
            group_name="devices",
            metadata=stored_in(STEPS_KEY),
            kinds={"dlt", "postgres"},
            description="Fitbit daily step totals per connection and local day.",
        ),
        dg.AssetSpec(
            WEIGHT_KEY,
            group_name="devices",
            metadata=stored_in(WEIGHT_KEY),
            kinds={"dlt", "postgres"},
            description="Fitbit weight logs (kg).",
        ),
        dg.AssetSpec(
            ACTIVITIES_KEY,
            group_name="devices",
            metadata=stored_in(ACTIVITIES_KEY),
            kinds={"dlt", "postgres"},
            description="Fitbit activity logs (workouts), merged on logId.",
        ),
        dg.AssetSpec(
            CONNECTIONS_KEY,
            group_name="devices",
            metadata=stored_in(CONNECTIONS_KEY),
            kinds={"postgres"},
            description="Device connections: status, cursors, last success.",
        ),
    ],
    retry_policy=dg.RetryPolicy(
        max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
    pool="fitbit_api",
)
def fitbit_sync(
    context: dg.AssetExecutionContext,
    config: DeviceSyncConfig,
    platform: PlatformResource,
    fitbit: FitbitResource,
):
    """Pull what notifications asked for (and, as a backup, quiet connections), then load."""
    params = platform.params
    windows, revoked, orphaned, read_at = [], [], [], None
    if config.mode in ("inbox", "both"):
        plan = plan_from_inbox(params)
        windows, revoked, orphaned, read_at = (
            plan.windows,
            plan.revoked,
            plan.orphaned,
            plan.read_at,
        )
    if config.mode in ("poll", "both"):
        notified = {w.connection_id for w in windows}
        windows += [
            w for w in plan_polling(params, dt.date.today()) if w.connection_id not in notified
        ]
    if config.mode in ("poll", "both") and config.backfill_chunks > 0:
        windows += plan_backfill(params, config.backfill_chunks)  # last: history waits
    from ingestion.devices.fitbit import mark_processed

    mark_processed(params, revoked + orphaned, read_at)
    context.log.info(f"fitbit: {len(windows)} windows to pull ({len(revoked)} revocations)")
    result = sync_fitbit(
        fitbit.app(), params, windows, platform.settings.state_dir / "dlt", read_at
    )
    for reason in result.deferred:
        context.log.warning(f"deferred to the next run: {reason}")
    common = {
        "requests": dg.MetadataValue.int(result.requests),
        "windows_done": dg.MetadataValue.int(result.windows_done),
        "windows_deferred": dg.MetadataValue.int(len(result.deferred)),
    }
    yield dg.MaterializeResult(asset_key=STEPS_KEY, metadata={"rows": result.steps_rows, **common})
    yield dg.MaterializeResult(
        asset_key=WEIGHT_KEY, metadata={"rows": result.weight_rows, **common}
    )
    yield dg.MaterializeResult(
        asset_key=ACTIVITIES_KEY, metadata={"rows": result.activity_rows, **common}
    )
    yield dg.MaterializeResult(
        asset_key=CONNECTIONS_KEY,
        metadata={
            **backfill_status(params),
            **freshness_metadata(params),
            "disconnected": dg.MetadataValue.json(result.disconnected + [str(i) for i in revoked]),
        },
    )


def freshness_metadata(params) -> dict[str, dg.MetadataValue]:
    """Numbers Dagster plots across materializations (the asset's Plots tab), plus a chart of now."""
    from ingestion.devices.freshness import freshness_by_provider
    from orchestration.plots import freshness_chart

    summary = freshness_by_provider(params)
    active = sum(p.active for p in summary)
    fresh = sum(p.fresh for p in summary)
    return {
        "active_connections": dg.MetadataValue.int(active),
        "fresh_within_1h_percent": dg.MetadataValue.float(
            round(100 * fresh / active, 1) if active else 100.0
        ),
        "freshness": freshness_chart(summary),
    }


APPLE_SAMPLES_KEY = dg.AssetKey(["raw_apple_health", "samples"])


@dg.asset(
    key=APPLE_SAMPLES_KEY,
    group_name="devices",
    metadata=stored_in(APPLE_SAMPLES_KEY),
    kinds={"dlt", "postgres"},
    description="HealthKit batches uploaded by the member app (POST /api/v1/apple-health/samples) "
    "and Apple Health exports dropped in <state>/apple_health/inbox/<member_id>/ (export.xml or "
    "the zip), merged on the sample's natural key; deletions and sync versions applied.",
    # a database restart mid-load: the merge is idempotent, so the retry loads it once
    retry_policy=dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    pool="apple_health_loads",
)
def apple_health_exports(context: dg.AssetExecutionContext, platform: PlatformResource):
    from ingestion.devices.apple_health import HealthExportError
    from ingestion.devices.apple_health.export_xml import shown_problems
    from ingestion.devices.apple_health.load import import_export
    from ingestion.devices.apple_health.uploads import process_pending_uploads

    uploads = process_pending_uploads(platform.params, platform.settings.state_dir / "dlt")
    inbox = platform.settings.state_dir / "apple_health" / "inbox"
    done_dir = platform.settings.state_dir / "apple_health" / "imported"
    imported, failed, kept = 0, [], 0
    rejects: dict[str, dict[str, object]] = {}  # file -> count and the first, by line
    for path in sorted(inbox.glob("*/*")) if inbox.is_dir() else []:
        if path.suffix.lower() not in (".xml", ".zip"):
            continue
        member_id = path.parent.name
        try:
            stats = import_export(
                path, member_id, platform.params, platform.settings.state_dir / "dlt"
            )
        except HealthExportError as exc:
            context.log.error(f"{path.name}: refused: {exc}")
            failed.append(path.name)
            continue
        kept += sum(stats.kept.values())
        if stats.rejected:
            rejects[path.name] = {"rejected": stats.rejected, "first": shown_problems(stats)}
            context.log.warning(f"{path.name}: {stats.rejected} record(s) rejected")
        target = done_dir / member_id
        target.mkdir(parents=True, exist_ok=True)
        path.rename(target / path.name)
        imported += 1
    return dg.MaterializeResult(
        metadata={
            "files_imported": imported,
            "samples": kept,
            "files_refused": dg.MetadataValue.json(failed),
            "records_rejected": dg.MetadataValue.json(rejects),
            "upload_batches": uploads.batches,
            "upload_samples_loaded": uploads.samples_loaded,
            "upload_deletions": uploads.deletions,
            "upload_samples_rejected": uploads.rejected,
        }
    )


GARMIN_KEYS = {
    table: dg.AssetKey(["raw_garmin", table]) for table in ("dailies", "body_comps", "activities")
}


class GarminSyncConfig(dg.Config):
    # depth, window, budget and reserve come from GARMIN_* variables (GarminSettings)
    backfill_max_requests: int = 500  # per run, after the inbox; 0 turns backfill off


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key,
            group_name="devices",
            metadata=stored_in(key),
            kinds={"dlt", "postgres"},
            description=f"Garmin {table} summaries (merge on summaryId; newest wins).",
        )
        for table, key in GARMIN_KEYS.items()
    ],
    retry_policy=dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL),
)
def garmin_sync(
    context: dg.AssetExecutionContext, config: GarminSyncConfig, platform: PlatformResource
):
    """Garmin pushes whole summaries (and pings with a callback): load what the inbox holds,
    then, with the daily budget left above the ping reserve, ask for new connections' history
    (Garmin pushes it later, through the inbox)."""
    from ingestion.devices.garmin import process_garmin_inbox
    from ingestion.devices.garmin.backfill import (
        BackfillResult,
        pending_backfill,
        request_backfills,
    )
    from ingestion.devices.garmin.budget import DailyBudget
    from ingestion.devices.garmin.settings import GarminSettings

    settings = GarminSettings.from_env()
    budget = DailyBudget(platform.params, "garmin", settings.daily_budget)
    result = process_garmin_inbox(
        platform.params, platform.settings.state_dir / "dlt", budget=budget
    )
    backfill = BackfillResult()
    if config.backfill_max_requests > 0:
        backfill = request_backfills(
            platform.params, settings, budget, max_requests=config.backfill_max_requests
        )
    for reason in result.deferred + backfill.deferred:
        context.log.warning(f"deferred to the next run: {reason}")
    for rejected in result.rejected:  # inbox row ids and field names only, no values
        context.log.warning(f"set aside: {rejected}")
    budget_state = budget.state()
    for table, key in GARMIN_KEYS.items():
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={
                "rows": result.rows.get(table, 0),
                "pings_pulled": result.pings_pulled,
                "deregistered": result.deregistered,
                "ignored_items": result.ignored,
                "rejected_inbox_rows": len(result.rejected),
                "backfill_windows_requested": backfill.requested,
                "backfill_windows_already_requested": backfill.already_requested,
                "backfill_windows_refused": backfill.refused,
                "backfill_denied_connections": len(backfill.denied),
                "backfill_pending_connections": len(pending_backfill(platform.params, settings)),
                "budget_remaining": budget_state.remaining,
                "budget_resets_at": budget_state.reset_at.isoformat(),
            },
        )
