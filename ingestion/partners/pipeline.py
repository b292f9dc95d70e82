"""Import a partner's complete inbox files: archive, dedupe, parse, validate, load, report.

Runnable without Dagster: `import_partner_files(config, settings, params)`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pyarrow as pa

from ingestion.partners import imports as ledger
from ingestion.partners import pipeline_name
from ingestion.partners.archive import archive_stream
from ingestion.partners.config import PartnerConfig
from ingestion.partners.csv_arrow import ArrowPathUnfit
from ingestion.partners.error_report import write_error_report
from ingestion.partners.errors import TRANSIENT_ERRORS, UnreadableFileError
from ingestion.partners.formats import absent_fields
from ingestion.partners.imports import ImportRecord
from ingestion.partners.load import MemberLoad
from ingestion.partners.reading import read_batches
from ingestion.partners.transport import (
    InboxLocation,
    RemoteFile,
    complete_files,
    errors_dir,
    inbox_location,
    platform_endpoint,
    remove_with_markers,
    sftp_session,
    upload_file,
)
from ingestion.partners.validation import Reject, RowValidator
from mdp.access_log import member_refs, record_export
from mdp.database import ConnectionParams, connect
from mdp.gc_pauses import startup_objects_frozen
from mdp.settings import Settings

log = logging.getLogger(__name__)

CHUNK_ROWS = 50_000
PREVIEW_COLUMNS = (
    "source_line_number",
    "program",
    "eligibility_start_date",
    "eligibility_end_date",
)

Progress = Callable[[str, int], None]  # (filename, rows read so far)
# Records the eligibility history of what is loaded so far (the dbt snapshot); False when
# it could not. Called before a file when a loaded file is not in the history yet.
RecordHistory = Callable[[str], bool]  # (partner_id) -> recorded


def import_partner_files(
    config: PartnerConfig,
    settings: Settings,
    params: ConnectionParams,
    progress: Progress | None = None,
    record_history: RecordHistory | None = None,
) -> list[ImportRecord]:
    """Import every complete file in one partner's inbox, oldest first.

    One file's problem (bad rows, unreadable bytes) never stops the others; an outage
    (SFTP or database down) raises so the orchestrator retries the run.

    The history snapshot only sees the members as they are when it runs. So with
    `record_history`, a file that follows a loaded one the history has not recorded (of this
    run, or of a run that stopped between its import and dbt) waits until it has. Otherwise
    a member that one file enrolls and the next corrects would keep only the correction. If
    the history cannot be recorded, the rest of the files stay where they are for the next
    run.
    """
    location = inbox_location(config, settings)
    with partner_lock(params, config.partner_id) as acquired:
        if not acquired:
            log.info("%s: another run is importing this partner; skipping", config.partner_id)
            return []
        if interrupted := ledger.mark_interrupted(params, config.partner_id):
            log.warning(
                "%s: %d import(s) left unfinished by a stopped run; their files go again",
                config.partner_id,
                interrupted,
            )
        redeliver_reports(config, settings, params)
        with sftp_session(location.endpoint) as sftp:
            ready = complete_files(
                sftp, location.inbox_dir, config.inbound.filename_pattern, settings.settle_seconds
            )
            records: list[ImportRecord] = []
            # a file loaded that the history has not seen: this run's, or one whose run
            # stopped before dbt (asked once, when a file is about to be imported)
            unrecorded: bool | None = None
            for remote in ready:
                if not location.removes_after_import and ledger.already_seen_remote(
                    params, config.partner_id, remote.path, remote.size, remote.mtime
                ):
                    continue
                if record_history is not None and unrecorded is None:
                    unrecorded = ledger.loaded_since_history(params, config.partner_id)
                if unrecorded and record_history is not None:
                    if not record_history(config.partner_id):
                        log.warning(
                            "%s: the eligibility history could not record the file(s) loaded"
                            " so far; the other files wait for the next run",
                            config.partner_id,
                        )
                        break
                    unrecorded = False
                record = import_remote_file(
                    remote, sftp, location, config, settings, params, progress
                )
                records.append(record)
                unrecorded = unrecorded or record.status == "loaded"
            return records


@contextlib.contextmanager
def partner_lock(params: ConnectionParams, partner_id: str) -> Iterator[bool]:
    """A session advisory lock: two runs never import the same partner's inbox at once."""
    with connect(params, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("select pg_try_advisory_lock(hashtext(%s))", (f"partner-import:{partner_id}",))
        acquired = bool(cur.fetchone()[0])
        try:
            yield acquired
        finally:
            if acquired:
                cur.execute(
                    "select pg_advisory_unlock(hashtext(%s))", (f"partner-import:{partner_id}",)
                )


def _new_file_id(partner_id: str, received_at: dt.datetime, sha256: str) -> str:
    return f"{partner_id}-{received_at:%Y%m%dT%H%M%S%f}-{sha256[:8]}"


def import_remote_file(
    remote: RemoteFile,
    sftp: paramiko.SFTPClient,
    location: InboxLocation,
    config: PartnerConfig,
    settings: Settings,
    params: ConnectionParams,
    progress: Progress | None = None,
) -> ImportRecord:
    received_at = dt.datetime.now(dt.UTC)
    with sftp.open(remote.path, "rb") as handle:
        handle.prefetch(remote.size)
        archived = archive_stream(
            handle, settings.archive_dir, config.partner_id, remote.name, received_at
        )
    record = ImportRecord(
        file_id=_new_file_id(config.partner_id, received_at, archived.sha256),
        partner_id=config.partner_id,
        filename=remote.name,
        sha256=archived.sha256,
        status="processing",
        source_path=remote.path,
        size_bytes=archived.size,
        format=config.inbound.format,
        archive_path=str(archived.path),
        remote_mtime=remote.mtime,
        received_at=received_at,
        started_at=received_at,
    )
    duplicate_of = ledger.finished_import_with_checksum(params, config.partner_id, archived.sha256)
    if (
        duplicate_of
        and config.inbound.full_file
        and ledger.latest_loaded_checksum(params, config.partner_id) != archived.sha256
    ):
        # a full file states the whole roster: sent again after other files, it is the
        # roster again (the members those files left out are back), not a repeat
        duplicate_of = None
    if duplicate_of:
        record.status, record.duplicate_of = "duplicate", duplicate_of
        record.reason = f"identical bytes to {duplicate_of}; not reprocessed"
        record.finished_at = dt.datetime.now(dt.UTC)
        ledger.save(params, record)
        log.info("%s: %s is a duplicate of %s", config.partner_id, record.shown_name, duplicate_of)
    else:
        ledger.save(params, record)
        process_archived_file(record, Path(archived.path), config, settings, params, progress)
    if location.removes_after_import:
        remove_with_markers(sftp, remote)
    return record


def process_archived_file(
    record: ImportRecord,
    path: Path,
    config: PartnerConfig,
    settings: Settings,
    params: ConnectionParams,
    progress: Progress | None = None,
    hold_mass_termination: bool = True,
) -> ImportRecord:
    """Parse, validate and load one archived file, updating its ledger row. Used by replay too
    (whose --force loads a full file that leaves out more members than the partner allows)."""
    reporting = 0.0

    def report_rejects(parsed: ParsedFile) -> None:
        # The report depends on the file (and, for an 834's terminations, on the stored begin
        # dates the load read: the load's own rejects join it once every chunk merged), so a
        # retried import sends the same one; it goes out before the commit.
        nonlocal reporting
        started = time.perf_counter()
        if parsed.rejects:
            report = deliver_error_report(record, path, config, settings, parsed.rejects, params)
            record.error_report_path = str(report)
            record.report_delivered = report.delivered
            refs = member_refs(config.partner_id, parsed.reported_keys)
            if report.delivered:
                _audit_report_export(params, record, refs, len(parsed.rejects))
            else:  # for the re-send (`redeliver_reports`), which audits it then
                _refs_path(report.path).write_text(json.dumps(refs))
        reporting = time.perf_counter() - started

    def attempt(arrow: bool) -> tuple[ParsedFile, MemberLoad]:
        return _load_file(
            path, config, record, params, report_rejects, progress, arrow, hold_mass_termination
        )

    # a full collection (~60 ms over all that is imported) came due in nearly every import
    with startup_objects_frozen():
        try:
            try:
                parsed, load = attempt(arrow=True)
            except ArrowPathUnfit as unfit:
                # rare (a blank line, a malformed row): the fast parser's rows were rolled back
                log.info(
                    "%s: %s read again by the stdlib reader (%s)",
                    config.partner_id,
                    record.shown_name,
                    unfit,
                )
                parsed, load = attempt(arrow=False)
            # merging overlaps reading: load is the merge thread's time, parse the rest of ours
            record.load_seconds = load.seconds
            elapsed = _elapsed(record.started_at)
            record.parse_seconds = None if elapsed is None else elapsed - load.waited - reporting
            rejects, total, loaded = parsed.rejects, parsed.total, load.rows
            record.rows_total, record.rows_loaded = total, loaded
            record.rows_rejected = len(rejects)
            record.preview = _preview(parsed.first_valid)
            record.status = "loaded"
            log.info(
                "%s: %s loaded %d of %d rows (%d rejected)",
                config.partner_id,
                record.shown_name,
                loaded,
                total,
                len(rejects),
            )
        except UnreadableFileError as exc:
            record.status, record.reason = "quarantined", exc.reason
            log.warning("%s: %s quarantined: %s", config.partner_id, record.shown_name, exc.reason)
            record.report_delivered = deliver_quarantine_note(record, config, settings, params)
        except TRANSIENT_ERRORS as exc:
            record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"[:500]
            record.finished_at = dt.datetime.now(dt.UTC)
            with contextlib.suppress(Exception):
                ledger.save(params, record)
            raise
        except Exception as exc:
            # not an outage, so no retry would help: a defect met in this file. It is
            # recorded as failed and the partner's other files go on. The exception's text
            # may quote the file (PHI), so only its type is kept; the archived bytes let
            # `mdp imports replay` reproduce it.
            record.status = "failed"
            record.reason = f"{type(exc).__name__} while importing; replay the file to see it"
            log.error(
                "%s: %s failed (%s); see the import ledger; the other files go on",
                config.partner_id,
                record.shown_name,
                type(exc).__name__,
            )
    record.finished_at = dt.datetime.now(dt.UTC)
    ledger.save(params, record)
    return record


def _load_file(
    path: Path,
    config: PartnerConfig,
    record: ImportRecord,
    params: ConnectionParams,
    before_commit: Callable[[ParsedFile], None],
    progress: Progress | None,
    arrow: bool = True,
    hold: bool = True,
) -> tuple[ParsedFile, MemberLoad]:
    """One attempt at the file: every chunk merged in one transaction, committed at the end."""
    kept = absent_fields(path, config.inbound)
    x12 = config.inbound.format == "x12_834"
    with MemberLoad(
        params,
        config.partner_id,
        pipeline_name(config.partner_id),
        kept_fields=kept,
        full_file=config.inbound.full_file,
        as_of=_made_at(record),
        blank_start_keeps_stored=x12,
        start_required="eligibility_start_date" in config.inbound.required_fields,
    ) as load:
        parsed = parse_and_validate(path, config, record, load.add, progress, arrow)
        if x12:  # rows the load itself refuses (see MemberLoad._with_stored_starts)
            load.wait_for_merges()
            _add_load_rejects(parsed, load.rejects)
        if config.inbound.full_file:
            load.wait_for_merges()  # `stale` is known once the load has begun
            if load.stale:
                _note(record, "full file older than one loaded already: it leaves nobody out")
            else:
                _record_left_out(load, parsed, config, record, hold)
        before_commit(parsed)  # the error report goes out while the last chunk merges
        load.commit()
    if kept:  # said once the file loaded: a file quarantined after all kept nothing
        # config names only (no PHI): a renamed or dropped column is the partner's to fix
        note = (
            f"no column for {', '.join(kept)} (configured: "
            + ", ".join(repr(s) for s, t in config.inbound.column_mappings.items() if t in kept)
            + "): the stored values of those fields were kept"
        )
        _note(record, note)
        log.warning("%s: %s: %s", config.partner_id, record.shown_name, note)
    if load.superseded:
        _note(
            record,
            f"{load.superseded} row(s) not applied: a file made after this one (by SFTP"
            " time) has those members already (newer file wins)",
        )
    return parsed, load


def _add_load_rejects(parsed: ParsedFile, rejects: list[tuple[int, str, str]]) -> None:
    if not rejects:
        return
    for line, key, reason in rejects:
        parsed.rejects.append(Reject(line, key, [reason]))
        parsed.rejected_keys.append(key)
        parsed.reported_keys.append(key)
    parsed.rejects.sort(key=lambda reject: reject.line)


def _made_at(record: ImportRecord) -> dt.datetime | None:
    """When the file was made, as far as we can tell: its SFTP mtime, else its arrival. An
    mtime after the arrival is a wrong clock (or a client setting it), not the truth: taken
    as is, a file dated next month beat every correction sent until then."""
    made = record.received_at
    if record.remote_mtime is not None:
        mtime = dt.datetime.fromtimestamp(record.remote_mtime, dt.UTC)
        # whole seconds, as SFTP times are (see load._FILE_TIME)
        made = mtime if made is None else min(mtime, made.replace(microsecond=0))
    return made


def _note(record: ImportRecord, note: str) -> None:
    if note not in (record.reason or ""):  # a second read of the file notes it once
        record.reason = f"{record.reason}; {note}" if record.reason else note


def _record_left_out(
    load: MemberLoad, parsed: ParsedFile, config: PartnerConfig, record: ImportRecord, hold: bool
) -> None:
    """A full file: the members it leaves out are terminated as of its arrival, unless so
    many would be that the file looks cut or wrong (then it is held, nothing loaded)."""
    assert record.received_at is not None
    inbound = config.inbound
    left_out, active = load.left_out(parsed.rejected_keys, record.file_id)
    # one member is never a mass termination, whatever the partner's size
    if hold and left_out > max(inbound.max_termination_share * active, 1):
        raise UnreadableFileError(
            f"a full file that would terminate {left_out} of {active} members by leaving them"
            f" out ({left_out / active:.0%}, more than max_termination_share"
            f" {inbound.max_termination_share:.0%}): held, nothing loaded; if it is right,"
            " `mdp imports replay --force` it"
        )
    load.record_left_out(record.file_id, record.received_at)
    if left_out:
        note = f"full file: {left_out} member(s) it leaves out terminated as of its arrival"
        record.reason = f"{record.reason}; {note}" if record.reason else note


@dataclass
class ParsedFile:
    rejects: list[Reject] = field(default_factory=list)
    rejected_keys: list[str] = field(default_factory=list)
    reported_keys: list[str] = field(default_factory=list)
    total: int = 0
    first_valid: pa.Table | None = None  # for the materialization's preview


def parse_and_validate(
    path: Path,
    config: PartnerConfig,
    record: ImportRecord,
    on_valid: Callable[[pa.Table], None],
    progress: Progress | None = None,
    arrow: bool = True,
) -> ParsedFile:
    """Stream the file in chunks: each chunk's valid rows go to `on_valid` as Arrow as soon as
    they are checked, every bad row is kept as a reject. An unreadable file raises
    UnreadableFileError (or, with `arrow`, ArrowPathUnfit), possibly after some chunks: the
    caller's load must not commit then."""
    assert record.received_at is not None
    validator = RowValidator(config, record.file_id, record.received_at)
    parsed = ParsedFile()
    for batch in read_batches(path, config.inbound, CHUNK_ROWS, arrow):
        result = validator.validate(batch)
        parsed.total += len(batch)
        if result.valid.num_rows:
            if parsed.first_valid is None:
                parsed.first_valid = result.valid
            on_valid(result.valid)
        parsed.rejects.extend(result.rejects)
        parsed.rejected_keys.extend(result.rejected_keys)
        parsed.reported_keys.extend(result.reported_keys)
        if progress:
            progress(record.shown_name, parsed.total)
    if parsed.total == 0:
        raise UnreadableFileError("file has a header but no data rows")
    return parsed


def _elapsed(since: dt.datetime | None) -> float | None:
    return (dt.datetime.now(dt.UTC) - since).total_seconds() if since else None


def _preview(table: pa.Table | None, limit: int = 5) -> list[dict[str, object]]:
    if table is None:
        return []
    return table.select(list(PREVIEW_COLUMNS)).slice(0, limit).to_pylist()


@dataclass
class DeliveredReport:
    path: Path
    delivered: bool  # uploaded to the partner (else archived only, to be re-sent)

    def __str__(self) -> str:
        return str(self.path)


def deliver_error_report(
    record: ImportRecord,
    source: Path,
    config: PartnerConfig,
    settings: Settings,
    rejects: list[Reject],
    params: ConnectionParams | None = None,
) -> DeliveredReport:
    """Archive the report beside the original and upload it to the partner's errors/ folder,
    as `<file name without extension>.errors.csv`."""
    report = source.parent / f"{record.file_id}.errors.csv"
    report.unlink(missing_ok=True)  # left read-only by an attempt that did not finish
    write_error_report(report, config, rejects)
    report.chmod(0o400)
    stem = record.filename.rsplit(".", 1)[0]
    name = _partner_copy_name(params, record, stem, ".errors.csv", quarantined=False)
    return DeliveredReport(report, _upload_to_partner(settings, config, report, name))


def _partner_copy_name(
    params: ConnectionParams | None,
    record: ImportRecord,
    stem: str,
    suffix: str,
    quarantined: bool,
) -> str:
    """`stem + suffix`, unless other bytes of this name got theirs before (a partner that
    names every day's file alike): then the arrival time tells the two apart, so the earlier
    one is not overwritten before the partner read it. A retry of the same bytes keeps it."""
    if (
        params is not None
        and record.received_at is not None
        and ledger.name_sent_before(params, record, quarantined)
    ):
        return f"{stem}.{record.received_at:%Y%m%dT%H%M%SZ}{suffix}"
    return f"{stem}{suffix}"


def deliver_quarantine_note(
    record: ImportRecord,
    config: PartnerConfig,
    settings: Settings,
    params: ConnectionParams | None = None,
) -> bool:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as note:
        note.write(
            f"File {record.filename} (sha256 {record.sha256}) could not be read and was not loaded.\n"
            f"Reason: {record.reason}\n"
        )
    try:
        name = _partner_copy_name(
            params, record, record.filename, ".quarantined.txt", quarantined=True
        )
        return _upload_to_partner(settings, config, Path(note.name), name)
    finally:
        Path(note.name).unlink(missing_ok=True)


def redeliver_reports(config: PartnerConfig, settings: Settings, params: ConnectionParams) -> int:
    """Send the error reports and quarantine notes an earlier upload failed to deliver (the
    SFTP server was down): archived, they go out now, under the names they would have had.
    Returns how many were delivered; the rest wait for the next run."""
    delivered = 0
    for record in ledger.undelivered_reports(params, config.partner_id):
        if record.status == "quarantined":
            sent = deliver_quarantine_note(record, config, settings, params)
        elif record.error_report_path and Path(record.error_report_path).exists():
            report = Path(record.error_report_path)
            stem = record.filename.rsplit(".", 1)[0]
            name = _partner_copy_name(params, record, stem, ".errors.csv", quarantined=False)
            sent = _upload_to_partner(settings, config, report, name)
            if sent:
                refs_file = _refs_path(report)
                refs = json.loads(refs_file.read_text()) if refs_file.exists() else []
                _audit_report_export(params, record, refs, record.rows_rejected)
                refs_file.unlink(missing_ok=True)
        else:  # its archived report is gone: nothing to send
            log.error(
                "%s: the error report of %s is not in the archive",
                config.partner_id,
                record.file_id,
            )
            continue
        if sent:
            ledger.mark_report_delivered(params, record.file_id)
            delivered += 1
            log.info(
                "%s: %s: its report to errors/ is delivered now",
                config.partner_id,
                record.shown_name,
            )
    return delivered


def _refs_path(report: Path) -> Path:
    return report.with_name(report.name.removesuffix(".csv") + ".member_refs.json")


def _audit_report_export(
    params: ConnectionParams, record: ImportRecord, refs: list[str], rows: int | None
) -> None:
    record_export(
        params,
        "error_report_export",
        record.partner_id,
        refs,
        "partner_error_report",
        {"file_id": record.file_id, "rows": rows, "to": "errors/"},
    )


def _upload_to_partner(settings: Settings, config: PartnerConfig, local: Path, name: str) -> bool:
    try:
        with sftp_session(platform_endpoint(settings)) as sftp:
            upload_file(sftp, str(local), errors_dir(config), name)
    except (OSError, paramiko.SSHException) as exc:
        # The report is archived; a failed upload is logged and can be re-sent, not fatal.
        log.error("%s: could not upload %s to errors/: %s", config.partner_id, name, exc)
        return False
    return True
