"""Freshness and health of device data, beside the assets in the Dagster UI.

An endless retry that loads nothing is a failure here, not health: a connection counts as
progressing only when its last success moves.
"""

import dagster as dg

from ingestion.devices.freshness import freshness_by_provider
from mdp.database import connect
from orchestration.defs.devices.assets import CONNECTIONS_KEY, GARMIN_KEYS
from orchestration.plots import freshness_chart
from orchestration.resources import PlatformResource
from orchestration.retries import DATABASE_READ_RETRY

MAX_LAG_MINUTES = 60


def _rows(platform: PlatformResource, sql: str) -> list[tuple]:
    with connect(platform.params) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


@dg.asset_check(
    retry_policy=DATABASE_READ_RETRY,
    asset=CONNECTIONS_KEY,
    description=f"Webhook connections notified more than {MAX_LAG_MINUTES} min ago have been "
    "synced since (data visible within the hour).",
)
def device_data_lag(platform: PlatformResource) -> dg.AssetCheckResult:
    rows = _rows(
        platform,
        "select provider, count(*),"
        " count(*) filter (where last_notified_at < now() - interval '1 hour'"
        "   and (last_success_at is null or last_success_at < last_notified_at)),"
        " percentile_cont(0.95) within group (order by extract(epoch from now() - last_success_at) / 60)"
        " from devices.connections where status = 'active' group by provider order by provider",
    )
    table = [
        "| provider | active | lagging > 1 h | p95 minutes since last sync |",
        "|---|---|---|---|",
    ]
    lagging = 0
    for provider, active, late, p95 in rows:
        lagging += late
        table.append(f"| {provider} | {active} | {late} | {p95 or 0:.0f} |")
    freshness = freshness_by_provider(platform.params)
    active = sum(p.active for p in freshness)
    return dg.AssetCheckResult(
        passed=lagging == 0,
        metadata={
            "lagging_connections": lagging,
            "by_provider": dg.MetadataValue.md("\n".join(table)),
            "fresh_within_1h_percent": dg.MetadataValue.float(
                round(100 * sum(p.fresh for p in freshness) / active, 1) if active else 100.0
            ),
            "freshness": freshness_chart(freshness),
        },
    )


@dg.asset_check(
    retry_policy=DATABASE_READ_RETRY,
    asset=CONNECTIONS_KEY,
    description="Circuit breakers per provider (open = waiting).",
)
def provider_breakers_closed(platform: PlatformResource) -> dg.AssetCheckResult:
    rows = _rows(
        platform,
        "select provider, state, consecutive_failures, opened_at from devices.circuit_breakers order by 1",
    )
    open_ones = [r[0] for r in rows if r[1] != "closed"]
    return dg.AssetCheckResult(
        passed=not open_ones,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "breakers": dg.MetadataValue.json(
                {
                    p: {"state": s, "consecutive_failures": f, "opened_at": str(o)}
                    for p, s, f, o in rows
                }
            ),
            "open": open_ones,
        },
    )


@dg.asset_check(
    retry_policy=DATABASE_READ_RETRY,
    asset=CONNECTIONS_KEY,
    description="Provider quota left (per user and global).",
)
def provider_quota(platform: PlatformResource) -> dg.AssetCheckResult:
    rows = _rows(
        platform,
        "select provider, count(*) filter (where remaining <= 0 and reset_at > now()),"
        " min(remaining) from devices.rate_limits group by provider order by 1",
    )
    exhausted = sum(r[1] for r in rows)
    return dg.AssetCheckResult(
        passed=True,
        metadata={
            "exhausted_subjects": exhausted,
            "quota": dg.MetadataValue.json(
                {p: {"exhausted": e, "min_remaining": m} for p, e, m in rows}
            ),
        },
    )


@dg.asset_check(
    retry_policy=DATABASE_READ_RETRY,
    asset=CONNECTIONS_KEY,
    description="No active connection has gone 24 hours without a successful sync while "
    "notifications keep arriving (retrying without loading is not health).",
)
def connections_make_progress(platform: PlatformResource) -> dg.AssetCheckResult:
    rows = _rows(
        platform,
        "select c.provider, count(*) from devices.connections c"
        " where c.status = 'active' and coalesce(c.last_success_at, c.created_at) < now() - interval '24 hours'"
        " and exists (select 1 from devices.webhook_inbox i where i.provider = c.provider"
        "   and i.provider_user_id = c.provider_user_id and i.received_at > now() - interval '24 hours')"
        " group by c.provider",
    )
    stuck = {provider: n for provider, n in rows}
    return dg.AssetCheckResult(
        passed=not stuck, metadata={"stuck_by_provider": dg.MetadataValue.json(stuck)}
    )


GARMIN_BUDGET_WARN_SHARE = 0.8


@dg.asset_check(
    retry_policy=DATABASE_READ_RETRY,
    asset=GARMIN_KEYS["dailies"],
    description="Garmin's global daily request budget (GARMIN_DAILY_BUDGET, shared by every run): "
    f"warns when more than {GARMIN_BUDGET_WARN_SHARE:.0%} of today's is used.",
)
def garmin_daily_budget(platform: PlatformResource) -> dg.AssetCheckResult:
    from ingestion.devices.garmin.budget import DailyBudget
    from ingestion.devices.garmin.settings import GarminSettings

    settings = GarminSettings.from_env()
    state = DailyBudget(platform.params, "garmin", settings.daily_budget).state()
    return dg.AssetCheckResult(
        passed=state.used_share <= GARMIN_BUDGET_WARN_SHARE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "limit": state.limit,
            "used": state.used,
            "remaining": state.remaining,
            "used_percent": dg.MetadataValue.float(round(100 * state.used_share, 1)),
            "resets_at": state.reset_at.isoformat(),
            "backfill_stops_below": settings.backfill_reserve,
        },
    )
