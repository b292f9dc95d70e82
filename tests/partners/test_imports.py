"""The import pipeline against a real SFTP server and Postgres, without Dagster."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

from ingestion.partners.pipeline import import_partner_files
from sandbox.generator import (
    drop_required_column,
    empty_file,
    generate_partner_file,
    truncated_xlsx,
    undecodable_bytes,
)

REPO = Path(__file__).resolve().parents[2]


def _import(platform, partner_id):
    return import_partner_files(platform.configs[partner_id], platform.settings, platform.params)


def _member_count(platform, partner_id):
    return platform.query(
        "select count(*) from raw_partners.enrollment_members where partner_id = %s", (partner_id,)
    )[0][0]


def test_half_invalid_ten_thousand_rows_load_half_and_report_the_rest_to_the_partner(platform):
    config = platform.configs["acme_corp"]
    generated = generate_partner_file(config, rows=10_000, bad_share=0.5, seed=3, id_offset=500_000)
    before = _member_count(platform, "acme_corp")
    platform.upload("acme_corp", "enrollment_bulk.csv", generated.content)

    [record] = _import(platform, "acme_corp")

    assert (record.status, record.rows_total, record.rows_loaded, record.rows_rejected) == (
        "loaded",
        10_000,
        5_000,
        5_000,
    )
    assert _member_count(platform, "acme_corp") - before == 5_000
    report = platform.sftp_root / "acme_corp" / "errors" / "enrollment_bulk.errors.csv"
    rows = list(csv.reader(io.StringIO(report.read_text())))
    assert rows[0] == ["Line", "Employee ID", "Errors"]
    assert len(rows) == 5_001
    assert {int(r[0]) for r in rows[1:]} == set(generated.bad_rows)
    assert all(r[2] for r in rows[1:])


def test_an_upload_still_open_is_not_imported_however_long_it_stalls(platform):
    # a stalled upload (the same size across the two polls) was imported half, then removed
    # under the partner's client, whose remaining bytes went nowhere while it said "done"
    config = platform.configs["acme_corp"]
    generated = generate_partner_file(config, rows=2_000, seed=9, id_offset=900_000)
    cut = generated.content.index(b"\n", len(generated.content) // 2) + 5  # mid-row
    before = _member_count(platform, "acme_corp")
    partner = platform.sftp("acme_corp")
    try:
        handle = partner.open("/inbound/enrollment_stalled.csv", "wb")
        handle.write(generated.content[:cut])
        handle.flush()
        assert _import(platform, "acme_corp") == []  # past the settle window: still open
        assert _member_count(platform, "acme_corp") == before
        handle.write(generated.content[cut:])
        handle.close()
        # the partner's own listing shows its upload throughout
        assert "enrollment_stalled.csv" in partner.listdir("/inbound")
    finally:
        partner._owner.close()

    [record] = _import(platform, "acme_corp")
    assert (record.status, record.rows_loaded, record.rows_rejected) == ("loaded", 2_000, 0)
    assert _member_count(platform, "acme_corp") - before == 2_000


def test_each_unreadable_file_is_quarantined_with_its_reason_while_good_files_load(platform):
    acme = platform.configs["acme_corp"]
    good = generate_partner_file(acme, rows=20, seed=5, id_offset=700_000)
    platform.upload("acme_corp", "enrollment_a_good.csv", good.content)
    platform.upload("acme_corp", "enrollment_b_undecodable.csv", undecodable_bytes(good.content))
    platform.upload("acme_corp", "enrollment_c_missing_column.csv", drop_required_column(acme))
    platform.upload("acme_corp", "enrollment_d_empty.csv", empty_file())
    globex = platform.configs["globex_health"]
    workbook = generate_partner_file(globex, rows=30, seed=5)
    platform.upload("globex_health", "members_truncated.xlsx", truncated_xlsx(workbook.content))

    records = {
        r.filename: r for r in _import(platform, "acme_corp") + _import(platform, "globex_health")
    }

    assert records["enrollment_a_good.csv"].status == "loaded"
    assert records["enrollment_a_good.csv"].rows_loaded == 20
    reasons = {name: r.reason for name, r in records.items() if r.status == "quarantined"}
    assert set(reasons) == {
        "enrollment_b_undecodable.csv",
        "enrollment_c_missing_column.csv",
        "enrollment_d_empty.csv",
        "members_truncated.xlsx",
    }
    assert "utf-8" in reasons["enrollment_b_undecodable.csv"]
    assert "missing required column" in reasons["enrollment_c_missing_column.csv"]
    assert "empty" in reasons["enrollment_d_empty.csv"]
    assert (
        "Excel" in reasons["members_truncated.xlsx"]
        or "corrupt" in reasons["members_truncated.xlsx"]
    )
    notes = {p.name for p in (platform.sftp_root / "acme_corp" / "errors").iterdir()}
    assert "enrollment_d_empty.csv.quarantined.txt" in notes
    # nothing of an unreadable file reaches the raw table
    quarantined_rows = platform.query(
        "select count(*) from raw_partners.enrollment_members m join raw_partners.file_imports f"
        " on f.file_id = m.source_file_id where f.status = 'quarantined'"
    )
    assert quarantined_rows == [(0,)]


def test_a_file_that_meets_a_defect_is_recorded_failed_and_the_next_files_still_load(
    platform, monkeypatch
):
    # a defect (not an outage) met while reading one file: no retry would help, so it must
    # not stop the partner's other files, nor fail every later run on the same file
    import pyarrow.compute as pc

    acme = platform.configs["acme_corp"]
    first = generate_partner_file(acme, rows=20, seed=8, id_offset=710_000)
    second = generate_partner_file(acme, rows=20, seed=9, id_offset=720_000)
    platform.upload("acme_corp", "enrollment_e_meets_a_defect.csv", first.content)
    platform.upload("acme_corp", "enrollment_f_after_it.csv", second.content)
    trim, calls = pc.utf8_trim, []

    def trim_failing_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a defect")
        return trim(*args, **kwargs)

    monkeypatch.setattr(pc, "utf8_trim", trim_failing_first)

    records = {r.filename: r for r in _import(platform, "acme_corp")}

    failed = records["enrollment_e_meets_a_defect.csv"]
    assert failed.status == "failed"
    assert failed.reason == "RuntimeError while importing; replay the file to see it"
    assert records["enrollment_f_after_it.csv"].status == "loaded"
    assert records["enrollment_f_after_it.csv"].rows_loaded == 20
    ledger = platform.query(
        "select status from raw_partners.file_imports where filename = %s",
        ("enrollment_e_meets_a_defect.csv",),
    )
    assert ledger == [("failed",)]
    stored = platform.query(
        "select count(*) from raw_partners.enrollment_members m join raw_partners.file_imports f"
        " on f.file_id = m.source_file_id where f.filename = 'enrollment_e_meets_a_defect.csv'"
    )
    assert stored == [(0,)]


def test_excel_file_loads_with_real_date_cells_and_serials(platform):
    config = platform.configs["globex_health"]
    generated = generate_partner_file(config, rows=40, bad_share=0.1, seed=9)
    platform.upload("globex_health", generated.filename, generated.content)

    [record] = _import(platform, "globex_health")

    assert (record.status, record.rows_loaded, record.rows_rejected) == ("loaded", 36, 4)
    expected = {m["employee_id"]: m["date_of_birth"] for m in generated.valid_members}
    loaded = dict(
        platform.query(
            "select employee_id, date_of_birth from raw_partners.enrollment_members"
            " where source_file_id = %s",
            (record.file_id,),
        )
    )
    assert loaded == expected


def test_pull_partner_fixed_width_file_is_fetched_from_their_server_once(platform):
    config = platform.configs["initech"]
    generated = generate_partner_file(config, rows=50, bad_share=0.2, seed=4)
    platform.upload_to_pull_server("initech", generated.filename, generated.content)

    [record] = _import(platform, "initech")
    again = _import(platform, "initech")

    assert (record.status, record.rows_loaded, record.rows_rejected) == ("loaded", 40, 10)
    assert again == []  # their server is left untouched, and the same file is not fetched twice
    location = config.inbound.location
    assert (platform.pull_root / "initech" / location.path.strip("/") / generated.filename).exists()


def test_ssn_partner_keeps_only_a_keyed_hash_and_last_four(platform):
    config = platform.configs["umbrella_plan"]
    generated = generate_partner_file(config, rows=25, bad_share=0.2, seed=8)
    platform.upload("umbrella_plan", generated.filename, generated.content)

    [record] = _import(platform, "umbrella_plan")

    assert record.rows_loaded == 20
    ssns = {m["ssn"].replace("-", "") for m in generated.valid_members}
    dumped = platform.query(
        "select m::text from raw_partners.enrollment_members m where partner_id = 'umbrella_plan'"
    )
    text = " ".join(row[0] for row in dumped)
    assert not any(ssn in text or f"{ssn[:3]}-{ssn[3:5]}-{ssn[5:]}" in text for ssn in ssns)
    last4 = {
        row[0]
        for row in platform.query(
            "select ssn_last4 from raw_partners.enrollment_members where partner_id = 'umbrella_plan'"
        )
    }
    assert last4 == {s[-4:] for s in ssns}
    report = (platform.sftp_root / "umbrella_plan" / "errors").glob("*.errors.csv")
    for path in report:
        assert not any(ssn in path.read_text() for ssn in ssns)


def test_a_file_still_growing_waits_and_a_marker_makes_it_ready_at_once(platform):
    config = platform.configs["acme_corp"]
    generated = generate_partner_file(config, rows=10, seed=21, id_offset=800_000)
    sftp = platform.sftp("acme_corp")
    try:
        handle = sftp.open("/inbound/enrollment_growing.csv", "wb")
        content = generated.content
        pieces = [
            content[i : i + max(1, len(content) // 40)]
            for i in range(0, len(content), max(1, len(content) // 40))
        ]
        handle.write(pieces[0])
        handle.flush()
        import threading

        def keep_writing():  # a slow upload: the file grows for ~2 s, across both polls
            for piece in pieces[1:]:
                time.sleep(0.05)
                handle.write(piece)
                handle.flush()

        writer = threading.Thread(target=keep_writing)
        writer.start()
        first = _import(platform, "acme_corp")
        writer.join()
        handle.close()
        assert [r.filename for r in first] == []
        with sftp.open("/inbound/enrollment_growing.csv.done", "wb"):
            pass
    finally:
        sftp._owner.close()
    [record] = _import(platform, "acme_corp")
    assert (record.filename, record.rows_loaded) == ("enrollment_growing.csv", 10)
    assert not any(
        p.name.startswith("enrollment_growing")
        for p in (platform.sftp_root / "acme_corp" / "inbound").iterdir()
    )


def test_a_file_left_half_processed_by_a_crash_is_loaded_once_on_retry(platform):
    from ingestion.partners.imports import ImportRecord, save

    config = platform.configs["acme_corp"]
    generated = generate_partner_file(config, rows=15, seed=31, id_offset=900_000)
    platform.upload("acme_corp", "enrollment_crashed.csv", generated.content)
    [first] = _import(platform, "acme_corp")
    # Simulate a crash after the load, before the ledger said 'loaded' and the inbox was emptied.
    save(platform.params, ImportRecord(**{**first.columns(), "status": "processing"}))
    platform.upload("acme_corp", "enrollment_crashed.csv", generated.content)

    [retry] = _import(platform, "acme_corp")

    assert retry.status == "loaded"
    ids = [m["employee_id"] for m in generated.valid_members]
    counts = platform.query(
        "select count(*), count(distinct employee_id) from raw_partners.enrollment_members"
        " where partner_id = 'acme_corp' and employee_id = any(%s)",
        (ids,),
    )
    assert counts == [(15, 15)]


def test_a_pull_partners_file_left_processing_by_a_crash_is_fetched_again(platform):
    # their server keeps the file: it was skipped for good once any attempt was recorded
    config = platform.configs["initech"]
    generated = generate_partner_file(config, rows=20, seed=32, id_offset=930_000)
    platform.upload_to_pull_server("initech", "INITECH_ELIG_crashed.txt", generated.content)
    [first] = _import(platform, "initech")
    # the run stopped after the load committed, before the ledger said 'loaded'
    platform.query(
        "update raw_partners.file_imports set status = 'processing' where file_id = %s",
        (first.file_id,),
    )

    [retry] = _import(platform, "initech")

    assert (retry.status, retry.rows_loaded) == ("loaded", 20)
    assert platform.query(
        "select status from raw_partners.file_imports where file_id = %s", (first.file_id,)
    ) == [("interrupted",)]
    ids = [m["employee_id"] for m in generated.valid_members]
    counts = platform.query(
        "select count(*), count(distinct employee_id) from raw_partners.enrollment_members"
        " where partner_id = 'initech' and employee_id = any(%s)",
        (ids,),
    )
    assert counts == [(20, 20)]
    assert _import(platform, "initech") == []  # finished now: not fetched a third time


def test_a_blank_line_met_after_the_first_chunk_merged_reloads_the_file_once_by_line(
    platform, caplog
):
    # The fast CSV parser streams: its first chunks are merged before a blank line near the
    # end shows that only the stdlib reader numbers this file right. That attempt rolls back
    # and the file is read again; every member lands once, on its physical line.
    config = platform.configs["acme_corp"]
    generated = generate_partner_file(
        config, rows=60_000, bad_share=0.01, seed=43, id_offset=3_000_000
    )
    lines = generated.content.split(b"\n")
    starts = {m["source_line_number"] for m in generated.valid_members}
    # before a record, after one that took a single line: past the first 50,000-row chunk
    blank_at = min(line for line in starts if line > 59_000 and line - 1 in starts)
    content = b"\n".join([*lines[: blank_at - 1], b"", *lines[blank_at - 1 :]])
    platform.upload("acme_corp", "enrollment_blank_line.csv", content)

    with caplog.at_level(logging.INFO, logger="ingestion.partners.pipeline"):
        [record] = _import(platform, "acme_corp")

    assert "read again by the stdlib reader (a blank line, or a row of empty fields)" in caplog.text
    assert record.status == "loaded"
    assert record.rows_total == 60_000
    ids = [m["employee_id"] for m in generated.valid_members]
    stored = dict(
        platform.query(
            "select employee_id, source_line_number from raw_partners.enrollment_members"
            " where partner_id = 'acme_corp' and employee_id = any(%s)",
            (ids,),
        )
    )
    assert len(stored) == record.rows_loaded == len(ids)
    expected = {
        m["employee_id"]: m["source_line_number"] + (m["source_line_number"] >= blank_at)
        for m in generated.valid_members
    }
    assert stored == expected
    report = platform.sftp_root / "acme_corp" / "errors" / "enrollment_blank_line.errors.csv"
    reported = {int(r[0]) for r in list(csv.reader(io.StringIO(report.read_text())))[1:]}
    assert reported == {line + (line >= blank_at) for line in generated.bad_rows}


def test_a_file_without_an_optional_column_keeps_its_members_stored_values(platform, caplog):
    # the merge replaces whole rows: a renamed header (Email -> E-mail) used to null every
    # stored email of the file's members, with no word anywhere
    acme = platform.configs["acme_corp"]
    header = list(acme.inbound.column_mappings)
    first = [header, ["DRIFT001", "Ann", "Lee", "01/02/1980", "ann@x.example", "P1", "", ""]]
    renamed = [[("E-mail" if h == "Email" else h) for h in header]]
    second = renamed + [["DRIFT001", "Ann", "Lee", "01/02/1980", "new@x.example", "P2", "", ""]]

    def content(rows):
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        return out.getvalue().encode()

    platform.upload("acme_corp", "enrollment_drift_1.csv", content(first))
    _import(platform, "acme_corp")
    platform.upload("acme_corp", "enrollment_drift_2.csv", content(second))
    [record] = _import(platform, "acme_corp")

    assert (record.status, record.rows_loaded) == ("loaded", 1)
    assert (
        record.reason
        == "no column for email (configured: 'Email'): the stored values of those fields were kept"
    )
    stored = platform.query(
        "select email, program from raw_partners.enrollment_members"
        " where partner_id = 'acme_corp' and employee_id = 'DRIFT001'"
    )
    assert stored == [("ann@x.example", "P2")]
    # a file that lacks the column and is quarantined kept nothing: its reason says only why
    # it was not read
    third = renamed + [["DRIFT001", "Ann", "Lee", "01/02/1980", "x", "P3", "", "", "extra"]]
    third[0] = third[0] + ["Employee ID"]  # the id column twice: unreadable
    platform.upload("acme_corp", "enrollment_drift_3.csv", content(third))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ingestion.partners.pipeline"):
        [record] = _import(platform, "acme_corp")
    assert record.status == "quarantined" and "kept" not in (record.reason or "")
    assert not [r for r in caplog.records if "were kept" in r.getMessage()]


def test_a_re_enrollment_in_a_file_without_an_end_column_does_not_inherit_the_old_end(
    platform,
):
    # the stored end date (kept: the file has no column for it) belonged to the coverage
    # that ended; with the new start after it, the merged row ended before it began
    acme = platform.configs["acme_corp"]
    header = list(acme.inbound.column_mappings)
    ended = ["01/01/2025", "06/30/2026"]
    first = [
        header,
        ["REENR001", "Ann", "Lee", "01/02/1980", "ann@x.example", "P1", *ended],
        ["REENR002", "Bob", "Lee", "01/02/1981", "bob@x.example", "P1", *ended],
    ]
    no_end = [h for h in header if h != "Eligibility End"]
    second = [
        no_end,
        ["REENR001", "Ann", "Lee", "01/02/1980", "ann@x.example", "P1", "11/01/2026"],
        ["REENR002", "Bob", "Lee", "01/02/1981", "bob@x.example", "P2", "01/01/2025"],
    ]
    for name, rows in (("enrollment_reenrol_1.csv", first), ("enrollment_reenrol_2.csv", second)):
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        platform.upload("acme_corp", name, out.getvalue().encode())
        [record] = _import(platform, "acme_corp")
        assert (record.status, record.rows_loaded) == ("loaded", 2)

    stored = platform.query(
        "select employee_id, eligibility_start_date::text, eligibility_end_date::text, program"
        " from raw_partners.enrollment_members where partner_id = 'acme_corp'"
        " and employee_id like 'REENR%%' order by employee_id"
    )
    assert stored == [
        ("REENR001", "2026-11-01", None, "P1"),  # re-enrolled: the old end is gone
        ("REENR002", "2025-01-01", "2026-06-30", "P2"),  # same coverage: its end is kept
    ]


def _send_dated(platform, name: str, rows: list[list[str]], mtime: float | None):
    """Upload an acme_corp CSV, set its SFTP time (as `sftp put -p` keeps one), import it."""
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    platform.upload("acme_corp", name, out.getvalue().encode())
    if mtime is not None:
        sftp = platform.sftp("acme_corp")
        try:
            sftp.utime(f"/inbound/{name}", (mtime, mtime))
        finally:
            sftp._owner.close()
    [record] = _import(platform, "acme_corp")
    return record


def test_a_file_dated_in_the_future_does_not_beat_the_corrections_after_it(platform):
    # an mtime a month ahead (a wrong clock, a client setting it) made every correction sent
    # before that date "older": not applied, and the member stayed covered
    header = list(platform.configs["acme_corp"].inbound.column_mappings)
    member = ["FUTR0001", "Ann", "Lee", "01/02/1980", "ann@x.example", "P1", "01/01/2025"]
    for name, end, mtime in (
        ("enrollment_future.csv", "", time.time() + 30 * 86_400),
        ("enrollment_after.csv", "11/15/2025", None),
    ):
        record = _send_dated(platform, name, [header, [*member, end]], mtime)
        assert (record.status, record.rows_loaded) == ("loaded", 1), record.reason

    assert platform.query(
        "select eligibility_end_date::text from raw_partners.enrollment_members"
        " where partner_id = 'acme_corp' and employee_id = 'FUTR0001'"
    ) == [("2025-11-15",)]


def test_a_file_made_before_one_loaded_already_does_not_undo_it(platform):
    # a partner's client that keeps file times (sftp put -p, WinSCP) delivers last week's
    # file after this week's: its rows must not put back what the newer file changed
    header = list(platform.configs["acme_corp"].inbound.column_mappings)
    newer = [
        header,
        ["LATE0001", "Ann", "Lee", "01/02/1980", "ann@x.example", "P2", "01/01/2025", "01/31/2026"],
    ]
    older = [
        header,
        ["LATE0001", "Ann", "Lee", "01/02/1980", "ann@x.example", "P1", "01/01/2025", ""],
        ["LATE0002", "Bob", "Lee", "01/02/1981", "bob@x.example", "P1", "01/01/2025", ""],
    ]
    made = time.time() - 3600
    for name, rows, mtime in (
        ("enrollment_late_newer.csv", newer, made),
        ("enrollment_late_older.csv", older, made - 86_400),
    ):
        record = _send_dated(platform, name, rows, mtime)
        assert record.status == "loaded"

    assert (record.rows_loaded, record.rows_rejected) == (1, 0)
    assert "1 row(s) not applied: a file made after this one" in record.reason
    stored = platform.query(
        "select employee_id, program, eligibility_end_date::text"
        " from raw_partners.enrollment_members where partner_id = 'acme_corp'"
        " and employee_id like 'LATE%%' order by employee_id"
    )
    assert stored == [("LATE0001", "P2", "2026-01-31"), ("LATE0002", "P1", None)]


def test_a_partner_that_names_every_file_alike_keeps_every_error_report(platform):
    # the second day's report used to overwrite the first's before the partner read it
    header = list(platform.configs["acme_corp"].inbound.column_mappings)
    errors = platform.sftp_root / "acme_corp" / "errors"
    before = set(errors.glob("enrollment_daily*"))
    for day, bad in enumerate(("DAYONE01", "DAYTWO01")):
        rows = [header, [bad, "Ann", "Lee", "13/45/1980", "a@x.example", "P1", "01/01/2025", ""]]
        rows.append([f"GOOD{day:04d}", "Bo", "Li", "01/02/1980", "b@x.example", "P1", "", ""])
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        platform.upload("acme_corp", "enrollment_daily.csv", out.getvalue().encode())
        [record] = _import(platform, "acme_corp")
        assert (record.status, record.rows_rejected) == ("loaded", 1)

    reports = set(errors.glob("enrollment_daily*.errors.csv")) - before
    assert len(reports) == 2
    named = {report.name: report.read_text() for report in reports}
    assert "DAYONE01" in named["enrollment_daily.errors.csv"]
    [second] = [text for name, text in named.items() if name != "enrollment_daily.errors.csv"]
    assert "DAYTWO01" in second


def _full_roster_partner(platform, tmp_path, partner_id="full_roster"):
    """acme_corp's layout as a partner of its own whose files list every member."""
    import yaml

    from ingestion.partners.config import load_partner_configs
    from sandbox.sftp_server import ensure_partner_home

    data = yaml.safe_load((REPO / "partner_configs" / "acme_corp.yaml").read_text())
    data["partner_id"] = partner_id
    data["inbound"]["full_file"] = True
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / f"{partner_id}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    ensure_partner_home(platform.sftp_root, partner_id)
    return load_partner_configs(folder).configs[partner_id]


def _roster(ids, bad_dob=()):
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program,Eligibility Start,Eligibility End"
    rows = [
        f"{emp},Ann,Lee,{'13/45/1980' if emp in bad_dob else '01/02/1980'},a@x.example,P,01/01/2024,"
        for emp in ids
    ]
    return ("\n".join([header, *rows]) + "\n").encode()


def _send_and_import(platform, config, name, content):
    """Drop a file in the partner's inbox (as the platform user: the partner has no login in
    this module's server) and import it."""
    sftp = platform.sftp("mdp_platform")
    try:
        with sftp.open(f"/{config.partner_id}/inbound/{name}", "wb") as handle:
            handle.write(content)
    finally:
        sftp._owner.close()
    [record] = import_partner_files(config, platform.settings, platform.params)
    return record


def test_a_full_file_terminates_whom_it_leaves_out_and_is_held_when_that_is_too_many(
    platform, tmp_path
):
    config = _full_roster_partner(platform, tmp_path)
    members = [f"FULL{i:04d}" for i in range(1, 11)]

    def send(name, content):
        return _send_and_import(platform, config, name, content)

    def absent():
        return platform.query(
            "select employee_id from raw_partners.absent_members where partner_id = 'full_roster'"
            " order by 1"
        )

    first = send("enrollment_1.csv", _roster(members))
    # FULL0005's row is rejected, but it is in the file: only FULL0010 is left out (1 of 10)
    second = send("enrollment_2.csv", _roster(members[:9], bad_dob={"FULL0005"}))
    # 7 of the 9 active members left out: more than max_termination_share (20%)
    third = send("enrollment_3.csv", _roster(members[:2]))

    assert (first.status, first.rows_loaded) == ("loaded", 10)
    assert (second.status, second.rows_loaded, second.rows_rejected) == ("loaded", 8, 1)
    assert "1 member(s) it leaves out terminated" in second.reason
    assert third.status == "quarantined"
    assert "would terminate 7 of 9 members" in third.reason and "held" in third.reason
    assert absent() == [("FULL0010",)]
    stored = platform.query(
        "select count(*) from raw_partners.enrollment_members m join raw_partners.file_imports f"
        " on f.file_id = m.source_file_id where f.filename = 'enrollment_3.csv'"
    )
    assert stored == [(0,)]
    # sent again by a later file, the member is back: the absence no longer counts
    fourth = send("enrollment_4.csv", _roster([*members, "FULL0011"]))
    assert fourth.status == "loaded" and fourth.reason is None


def test_a_full_file_sent_again_after_another_one_is_the_roster_again(platform, tmp_path):
    config = _full_roster_partner(platform, tmp_path, "roster_again")
    members = [f"AGAIN{i:03d}" for i in range(1, 11)]

    def send(name, content):
        return _send_and_import(platform, config, name, content)

    first = send("enrollment_1.csv", _roster(members))
    second = send("enrollment_2.csv", _roster(members[:9]))  # AGAIN010 left out
    again = send("enrollment_3.csv", _roster(members))  # the first file's bytes
    repeat = send("enrollment_4.csv", _roster(members))  # now a repeat of the latest

    assert [r.status for r in (first, second, again, repeat)] == [
        "loaded",
        "loaded",
        "loaded",
        "duplicate",
    ]
    back = platform.query(
        "select file_received_at > (select max(absent_since) from raw_partners.absent_members"
        " where partner_id = 'roster_again') from raw_partners.enrollment_members"
        " where partner_id = 'roster_again' and employee_id = 'AGAIN010'"
    )
    assert back == [(True,)]


def test_a_full_file_made_before_the_latest_roster_leaves_nobody_out(platform, tmp_path):
    config = _full_roster_partner(platform, tmp_path, "late_roster")
    sftp = platform.sftp("mdp_platform")
    newest = platform.query("select extract(epoch from now())")[0][0]

    def send(name, content, made):
        with sftp.open(f"/late_roster/inbound/{name}", "wb") as handle:
            handle.write(content)
        sftp.utime(f"/late_roster/inbound/{name}", (made, made))
        [record] = import_partner_files(config, platform.settings, platform.params)
        return record

    try:
        # this week's roster left LATER003 out; last week's arrives after it
        current = send("enrollment_2.csv", _roster(["LATER001", "LATER002"]), float(newest))
        stale = send("enrollment_1.csv", _roster(["LATER001", "LATER003"]), float(newest) - 86_400)
    finally:
        sftp._owner.close()

    assert (current.status, stale.status) == ("loaded", "loaded")
    assert "it leaves nobody out" in stale.reason
    assert platform.query(
        "select count(*) from raw_partners.absent_members where partner_id = 'late_roster'"
    ) == [(0,)]  # LATER002, in the newer roster only, is not terminated by the older one
    rows = platform.query(
        "select m.employee_id, f.filename from raw_partners.enrollment_members m"
        " join raw_partners.file_imports f on f.file_id = m.source_file_id"
        " where m.partner_id = 'late_roster' and m.employee_id <> 'LATER003' order by 1"
    )
    assert rows == [
        ("LATER001", "enrollment_2.csv"),  # the newer roster's row stands
        ("LATER002", "enrollment_2.csv"),
    ]


def test_an_error_report_sent_to_the_partner_is_audited_with_its_members(platform):
    # the report carries member data out of the platform: an export, audited with each
    # member in it (by keyed reference, never the id itself)
    from mdp.phi import log_ref

    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program,Eligibility Start,Eligibility End"
    rows = [
        "AUDIT0001,Ann,Lee,13/45/1980,a@x.example,P,01/01/2024,",
        "AUDIT0002,Bob,,01/02/1980,b@x.example,P,01/01/2024,",
        "AUDIT0003,Cy,Lee,01/02/1980,c@x.example,P,01/01/2024,",
    ]
    platform.upload(
        "acme_corp", "enrollment_audited.csv", ("\n".join([header, *rows]) + "\n").encode()
    )
    [record] = _import(platform, "acme_corp")

    audited = platform.query(
        "select actor, purpose, detail->'member_refs', (detail->>'members')::int"
        " from audit.access_log"
        " where action = 'error_report_export' and detail->>'file_id' = %s",
        (record.file_id,),
    )
    expected = sorted(log_ref("acme_corp", key) for key in ("AUDIT0001", "AUDIT0002"))
    assert audited == [("mdp:partner-import", "partner_error_report", expected, 2)]
    assert platform.query("select audit.verify_chain()") == [(None,)]


def test_reports_the_partner_did_not_receive_are_sent_by_the_next_run(platform):
    # the SFTP server down while a report went out: the file loaded, the report stayed in
    # the archive, and nothing sent it (the ledger showed no sign of it)
    from mdp.phi import log_ref

    errors = platform.sftp_root / "acme_corp" / "errors"
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program,Eligibility Start,Eligibility End"
    rows = ["RESND0001,Ann,Lee,13/45/1980,a@x.example,P,01/01/2024,"]
    rows.append("RESND0002,Bob,Lee,01/02/1980,b@x.example,P,01/01/2024,")
    errors.rename(errors.with_name("errors.away"))
    errors.write_text("not a folder: uploads into errors/ fail")
    try:
        platform.upload(
            "acme_corp", "enrollment_resend.csv", ("\n".join([header, *rows]) + "\n").encode()
        )
        unreadable = b"Employee ID,First Name\n\xff\xfe not this test's text\n"
        platform.upload("acme_corp", "enrollment_resend_bad.csv", unreadable)
        records = {r.filename: r for r in _import(platform, "acme_corp")}
    finally:
        errors.unlink()
        errors.with_name("errors.away").rename(errors)
    loaded, empty = records["enrollment_resend.csv"], records["enrollment_resend_bad.csv"]
    assert (loaded.status, loaded.rows_loaded, loaded.report_delivered) == ("loaded", 1, False)
    assert (empty.status, empty.report_delivered) == ("quarantined", False)
    audit = (
        "select detail->'member_refs' from audit.access_log"
        " where action = 'error_report_export' and detail->>'file_id' = %s"
    )
    assert platform.query(audit, (loaded.file_id,)) == []  # not sent, not audited

    assert _import(platform, "acme_corp") == []  # an empty inbox; the reports go out

    assert (errors / "enrollment_resend.errors.csv").read_text().count("RESND0001") == 1
    assert (errors / "enrollment_resend_bad.csv.quarantined.txt").exists()
    delivered = platform.query(
        "select file_id, report_delivered from raw_partners.file_imports where file_id = any(%s)",
        ([loaded.file_id, empty.file_id],),
    )
    assert sorted(delivered) == sorted([(loaded.file_id, True), (empty.file_id, True)])
    assert platform.query(audit, (loaded.file_id,)) == [([log_ref("acme_corp", "RESND0001")],)]
    assert _import(platform, "acme_corp") == []  # once
    assert len(platform.query(audit, (loaded.file_id,))) == 1


def test_a_nul_character_in_a_value_rejects_its_row_and_the_rest_load(platform):
    # Postgres text cannot hold one: the load failed, and with it the file's good rows, and
    # the partner was told nothing
    header = b"Employee ID,First Name,Last Name,Date of Birth,Email,Program,Eligibility Start\r\n"
    rows = [
        b"NUL0001,Ann,Lee,01/02/1980,,diabetes_prevention,01/01/2026\r\n",
        b"NUL0002,Nu\x00l,Bad,01/01/1970,,diabetes_prevention,01/01/2026\r\n",
        b"NUL0003,Bo,Lee,03/04/1975,,diabetes_prevention,01/01/2026\r\n",
    ]
    platform.upload("acme_corp", "enrollment_nul.csv", header + b"".join(rows))

    [record] = _import(platform, "acme_corp")

    assert (record.status, record.rows_loaded, record.rows_rejected) == ("loaded", 2, 1)
    stored = platform.query(
        "select employee_id from raw_partners.enrollment_members"
        " where partner_id = 'acme_corp' and employee_id like 'NUL%%' order by 1"
    )
    assert stored == [("NUL0001",), ("NUL0003",)]
    report = platform.sftp_root / "acme_corp" / "errors" / "enrollment_nul.errors.csv"
    [reported] = list(csv.reader(io.StringIO(report.read_text())))[1:]
    assert reported[:2] == ["3", "NUL0002"]
    assert "first_name: holds a NUL character" in reported[2]
