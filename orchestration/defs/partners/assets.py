"""Partner enrollment files -> raw tables (dlt), with the import ledger beside them."""

import dagster as dg
from dagster_dbt import DbtCliResource

from ingestion.partners import (
    ABSENT_TABLE,
    DATASET,
    IMPORTS_TABLE,
    MEMBERS_TABLE,
    ensure_raw_tables,
)
from ingestion.partners.errors import TRANSIENT_ERRORS
from ingestion.partners.imports import ImportRecord
from ingestion.partners.pipeline import import_partner_files
from ingestion.partners.transport import TransportConfigError
from orchestration.defs.transform.history import record_eligibility_history
from orchestration.resources import PlatformResource
from orchestration.tables import stored_in

MEMBERS_KEY = dg.AssetKey([DATASET, MEMBERS_TABLE])
IMPORTS_KEY = dg.AssetKey([DATASET, IMPORTS_TABLE])
ABSENT_KEY = dg.AssetKey([DATASET, ABSENT_TABLE])
RAW_KEYS = (MEMBERS_KEY, IMPORTS_KEY, ABSENT_KEY)
IMPORT_RETRIES = 3  # an SFTP server down for ~1.5 min (10 s, 20 s, 40 s with jitter)


class PartnerImportConfig(dg.Config):
    partners: list[str] = []  # empty: every configured partner


def _files_table(records: list[ImportRecord]) -> str:
    lines = [
        "| partner | file | status | rows | loaded | rejected | sha256 | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r.partner_id} | {r.shown_name} | {r.status} | {r.rows_total or 0} | "
            f"{r.rows_loaded or 0} | {r.rows_rejected or 0} | `{r.sha256[:12]}` | {r.reason or ''} |"
        )
    return "\n".join(lines)


def _preview_table(records: list[ImportRecord]) -> str:
    rows = [(r.shown_name, p) for r in records for p in r.preview][:10]
    if not rows:
        return "(no rows loaded)"
    columns = list(rows[0][1])
    lines = ["| file | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(p[c]) for c in columns) + " |" for name, p in rows]
    return "\n".join(lines)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            MEMBERS_KEY,
            group_name="partners",
            metadata=stored_in(MEMBERS_KEY),
            kinds={"dlt", "postgres"},
            description="Current enrollment row per (partner_id, employee_id), merged by dlt "
            "from partner files; newer files win. SSNs only as keyed hash + last 4.",
        ),
        dg.AssetSpec(
            IMPORTS_KEY,
            group_name="partners",
            metadata=stored_in(IMPORTS_KEY),
            kinds={"postgres"},
            description="The import ledger: one row per file received (checksum, counts, status).",
        ),
        dg.AssetSpec(
            ABSENT_KEY,
            group_name="partners",
            metadata=stored_in(ABSENT_KEY),
            kinds={"postgres"},
            description="Members a partner's full file (inbound.full_file) left out: terminated"
            " as of that file unless a later file has them again.",
        ),
    ],
    retry_policy=dg.RetryPolicy(
        max_retries=IMPORT_RETRIES,
        delay=10,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    ),
)
def partner_files(
    context: dg.AssetExecutionContext,
    config: PartnerImportConfig,
    platform: PlatformResource,
    dbt: DbtCliResource,
):
    """Import every complete file waiting in partner inboxes (push: our SFTP; pull: theirs)."""
    settings, params = platform.settings, platform.params
    ensure_raw_tables(params, settings.state_dir / "dlt")
    loaded = platform.partner_configs()
    for problem in loaded.problems:
        context.log.error(f"partner config not loaded: {problem}")
    wanted = config.partners or sorted(loaded.configs)
    records: list[ImportRecord] = []
    outages: list[str] = []
    history_between_files: list[str] = []  # partners whose history was recorded mid-run
    for partner_id in wanted:
        partner = loaded.configs.get(partner_id)
        if partner is None:
            context.log.error(f"{partner_id}: no valid partner config; skipped")
            continue

        def progress(filename: str, rows: int, partner_id: str = partner_id) -> None:
            context.log.info(f"{partner_id}: {filename}: {rows:,} rows read")

        def record_history(partner_id: str) -> bool:
            context.log.info(
                f"{partner_id}: another file follows a loaded one: recording the eligibility"
                " history first (dbt snapshot), so each file's changes keep their version"
            )
            recorded = record_eligibility_history(dbt, params, context.log)
            if recorded:
                history_between_files.append(partner_id)
            return recorded

        try:
            found = import_partner_files(partner, settings, params, progress, record_history)
        except TransportConfigError as exc:
            context.log.error(str(exc))
            continue
        except TRANSIENT_ERRORS as exc:
            context.log.warning(f"{partner_id}: {type(exc).__name__}: {exc}; will retry")
            outages.append(partner_id)
            continue
        for record in found:
            context.log.info(
                f"{partner_id}: {record.shown_name} -> {record.status} "
                f"({record.rows_loaded or 0} loaded, {record.rows_rejected or 0} rejected)"
            )
            if record.status == "failed":
                context.log.error(
                    f"{partner_id}: {record.shown_name} failed ({(record.reason or '').split(':')[0]});"
                    " its reason is in the import ledger (`mdp imports list`)"
                )
        records.extend(found)
    if outages and not records:
        # Nothing imported yet: a retry (which only finds these partners' files) comes first.
        last = context.retry_number >= IMPORT_RETRIES
        raise dg.Failure(
            f"could not reach the SFTP server of {outages}"
            + ("; no retries left: their files wait for the next poll" if last else "; retrying"),
            allow_retries=not last,
        )
    if outages:
        # Others' files are imported: their members go on to dbt now rather than wait for
        # a partner that is down; its files stay where they are for its next poll or tick.
        context.log.warning(
            f"could not reach the SFTP server of {outages}: the other partners' files go on to"
            " dbt; theirs wait for the next poll (pull) or sensor tick (push)"
        )

    by_status: dict[str, int] = {}
    for record in records:
        by_status[record.status] = by_status.get(record.status, 0) + 1
    loaded_rows = sum(r.rows_loaded or 0 for r in records)
    rejected_rows = sum(r.rows_rejected or 0 for r in records)
    yield dg.MaterializeResult(
        asset_key=MEMBERS_KEY,
        metadata={
            "files": dg.MetadataValue.md(_files_table(records) if records else "no new files"),
            "rows_loaded": dg.MetadataValue.int(loaded_rows),
            "rows_rejected": dg.MetadataValue.int(rejected_rows),
            "checksums": dg.MetadataValue.json({r.shown_name: r.sha256 for r in records}),
            "preview": dg.MetadataValue.md(_preview_table(records)),
            # snapshots taken before a partner's next file (see import_partner_files)
            "history_recorded_between_files": dg.MetadataValue.json(history_between_files),
        },
    )
    yield dg.MaterializeResult(
        asset_key=ABSENT_KEY,
        metadata={
            "full_files_with_members_left_out": dg.MetadataValue.json(
                {
                    r.shown_name: r.reason
                    for r in records
                    if r.status == "loaded" and r.reason and "full file:" in r.reason
                }
            )
        },
    )
    yield dg.MaterializeResult(
        asset_key=IMPORTS_KEY,
        metadata={
            "files_seen": dg.MetadataValue.int(len(records)),
            **{
                f"files_{status}": dg.MetadataValue.int(n)
                for status, n in sorted(by_status.items())
            },
            "unreachable_partners": dg.MetadataValue.json(outages),
            "error_reports": dg.MetadataValue.json(
                {r.shown_name: r.error_report_path for r in records if r.error_report_path}
            ),
        },
    )
