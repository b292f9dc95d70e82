"""Re-importing an archived file on purpose (`mdp imports replay FILE_ID`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ingestion.partners import ABSENT_TABLE, DATASET, IMPORTS_TABLE, MEMBERS_TABLE
from ingestion.partners import imports as ledger
from ingestion.partners.config import load_partner_configs
from ingestion.partners.imports import ImportRecord
from ingestion.partners.pipeline import partner_lock, process_archived_file
from mdp.database import connection_params
from mdp.settings import Settings


class ReplayError(Exception):
    pass


def replay_import(settings: Settings, file_id: str, rebuild: bool = True, force: bool = False):
    """Import an archived file again. Its rows replace the members' stored rows, so a file
    that a later loaded file followed is refused unless `force`: it would put back values
    the later file changed (newer file wins, and a replay is the newest)."""
    import dagster as dg

    from mdp.orchestrate import prepare_environment, run_assets

    params = connection_params(settings)
    original = ledger.get(params, file_id)
    if original is None:
        raise ReplayError(f"no import with file id {file_id!r}")
    config = load_partner_configs(settings.partner_config_dir).configs.get(original["partner_id"])
    if config is None:
        raise ReplayError(f"partner {original['partner_id']!r} has no valid config")
    archive = Path(original["archive_path"] or "")
    if not archive.is_file():
        raise ReplayError(f"archived bytes for {file_id} are missing at {archive}")
    partner_id, sha256 = original["partner_id"], original["sha256"]
    since, loaded_as = original["received_at"], file_id
    if original["status"] == "duplicate":
        # its rows are those of the load it repeated: a file loaded after that one is later
        # (a partner re-sending an old file is not undoing its correction: see README)
        repeated = ledger.last_load_of(params, partner_id, sha256, since)
        if repeated is not None:
            loaded_as, since = repeated[0], repeated[1]
            loaded_as = f"{loaded_as}, the load duplicate {file_id} repeats"
    later = ledger.later_load(params, partner_id, since, sha256)
    if later is not None and not force:
        raise ReplayError(
            f"{later['filename']} ({later['file_id']}) was loaded after {loaded_as}: replaying"
            " would load this older file's rows over the newer ones for members in both"
            " files. Replay the later file instead, or pass --force to replay this one anyway."
        )
    prepare_environment(settings)
    now = dt.datetime.now(dt.UTC)
    record = ImportRecord(
        file_id=f"{original['partner_id']}-{now:%Y%m%dT%H%M%S%f}-{original['sha256'][:8]}",
        partner_id=original["partner_id"],
        filename=original["filename"],
        sha256=original["sha256"],
        status="processing",
        source_path=original["source_path"],
        size_bytes=original["size_bytes"],
        format=config.inbound.format,
        reason=f"replay of {file_id}",
        archive_path=str(archive),
        received_at=now,
        started_at=now,
    )
    from tqdm import tqdm

    with partner_lock(params, config.partner_id) as acquired:
        if not acquired:
            raise ReplayError(f"an import of {config.partner_id} is running; replay when it ends")
        ledger.save(params, record)
        with tqdm(desc=f"replaying {record.filename}", unit=" rows", disable=None) as bar:
            process_archived_file(
                record,
                archive,
                config,
                settings,
                params,
                progress=lambda _name, rows: bar.update(rows - bar.n),
                hold_mass_termination=not force,
            )
        note = f"replay of {file_id}"
        if not (record.reason or "").startswith(note):  # a quarantine's reason replaced it
            record.reason = f"{note}; {record.reason}" if record.reason else note
            ledger.save(params, record)
    _report_replay(record, file_id)
    run = None
    if rebuild:
        raw = dg.AssetSelection.assets(
            dg.AssetKey([DATASET, MEMBERS_TABLE]),
            dg.AssetKey([DATASET, IMPORTS_TABLE]),
            dg.AssetKey([DATASET, ABSENT_TABLE]),
        )
        run = run_assets(settings, select=raw.downstream() - raw)
    return record, run


def _report_replay(record: ImportRecord, replayed: str) -> None:
    """The replay wrote the raw tables outside a run: record it on their asset, so the
    Dagster UI's lineage shows what changed them (rows, status, the file replayed)."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=dg.AssetKey([DATASET, MEMBERS_TABLE]),
                description=f"mdp imports replay {replayed}",
                metadata={
                    "replayed_file_id": replayed,
                    "new_file_id": record.file_id,
                    "filename": record.filename,
                    "sha256": record.sha256,
                    "status": record.status,
                    "rows_loaded": record.rows_loaded or 0,
                    "rows_rejected": record.rows_rejected or 0,
                },
            )
        )
