"""Health of the import ledger, shown beside the raw tables in the Dagster UI."""

import dagster as dg

from mdp.database import connect
from mdp.phi import masked_ssns
from orchestration.defs.partners.assets import IMPORTS_KEY
from orchestration.resources import PlatformResource
from orchestration.retries import DATABASE_READ_RETRY

REJECT_RATE_LIMIT = 0.2


@dg.asset_check(
    retry_policy=DATABASE_READ_RETRY,
    asset=IMPORTS_KEY,
    description="No file is stuck half-imported for over an hour.",
)
def no_stuck_imports(platform: PlatformResource) -> dg.AssetCheckResult:
    with connect(platform.params) as conn, conn.cursor() as cur:
        cur.execute(
            "select f.file_id, f.filename, f.status from raw_partners.file_imports f"
            " where f.status in ('processing', 'failed', 'interrupted') and f.received_at < now() - interval '1 hour'"
            " and not exists (select 1 from raw_partners.file_imports g where g.partner_id = f.partner_id"
            "   and g.sha256 = f.sha256 and g.status in ('loaded', 'duplicate', 'quarantined'))"
        )
        stuck = cur.fetchall()
    return dg.AssetCheckResult(
        passed=not stuck,
        metadata={
            "stuck_files": dg.MetadataValue.json(
                [[file_id, masked_ssns(name), status] for file_id, name, status in stuck][:20]
            )
        },
    )


@dg.asset_check(
    retry_policy=DATABASE_READ_RETRY,
    asset=IMPORTS_KEY,
    description=f"Per partner, under {REJECT_RATE_LIMIT:.0%} of rows rejected and no quarantined "
    "file in the last 24 hours (a warning: the partner needs a call, not the pipeline).",
)
def partner_file_quality(platform: PlatformResource) -> dg.AssetCheckResult:
    with connect(platform.params) as conn, conn.cursor() as cur:
        cur.execute(
            "select partner_id, coalesce(sum(rows_rejected), 0), coalesce(sum(rows_total), 0),"
            " count(*) filter (where status = 'quarantined')"
            " from raw_partners.file_imports as attempt"
            " where received_at > now() - interval '24 hours'"
            # a held or failed file a replay loaded since needs no more attention
            " and not (status in ('quarantined', 'failed') and exists (select from"
            " raw_partners.file_imports as later where later.partner_id = attempt.partner_id"
            " and later.sha256 = attempt.sha256 and later.status = 'loaded'"
            " and later.received_at > attempt.received_at))"
            " group by partner_id order by partner_id"
        )
        rows = cur.fetchall()
    table = [
        "| partner | rows | rejected | reject rate | quarantined files |",
        "|---|---|---|---|---|",
    ]
    bad = []
    for partner_id, rejected, total, quarantined in rows:
        rate = rejected / total if total else 0.0
        table.append(f"| {partner_id} | {total} | {rejected} | {rate:.1%} | {quarantined} |")
        if rate > REJECT_RATE_LIMIT or quarantined:
            bad.append(partner_id)
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"partners": dg.MetadataValue.md("\n".join(table)), "needs_attention": bad},
    )
