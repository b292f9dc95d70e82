"""X12 834 enrollment files: the reader, its config, and an import through SFTP into Postgres."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from ingestion.partners.config import X12Options, load_partner_configs
from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.formats import read_rows
from ingestion.partners.pipeline import import_partner_files

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "x12"

CONFIG = {
    "partner_id": "stark_plan",
    "display_name": "Stark Health Plan",
    "inbound": {
        "transport": "sftp_push",
        "filename_pattern": "*.834",
        "format": "x12_834",
        "column_mappings": {
            "REF*0F": "employee_id",
            "NM103": "last_name",
            "NM104": "first_name",
            "DMG02": "date_of_birth",
            "DMG03": "gender",
            "PER*EM": "email",
            "N403": "postal_code",
            "HD04": "program",
            "DTP*348": "eligibility_start_date",
            "DTP*349": "eligibility_end_date",
        },
        "required_fields": ["employee_id", "last_name", "date_of_birth"],
        "validations": {"employee_id": {"type": "string", "pattern": "^[0-9]{8}$"}},
    },
}

ISA = (
    "ISA*00*          *00*          *ZZ*STARKPLAN      *ZZ*MDP            *260101*1200*^*00501"
    "*000000001*0*P*:~"
)


def interchange(*members: str, terminator: str = "~\n", count_fix: int = 0) -> bytes:
    """An 834 interchange holding the member loops given (segments joined by `~`)."""
    body = [
        "ST*834*0001*005010X220A1",
        "BGN*00*12456*20260101*1200****2",
        "N1*P5*STARK INC*FI*123456789",
        "N1*IN*STARK HEALTH PLAN*FI*987654321",
    ]
    for member in members:
        body += member.split("~")
    body.append(f"SE*{len(body) + 1 + count_fix}*0001")
    segments = [ISA[:-1], "GS*BE*STARKPLAN*MDP*20260101*1200*1*X*005010X220A1", *body]
    segments += ["GE*1*1", "IEA*1*000000001"]
    return (terminator.join(segments) + terminator).encode()


def member(
    sub_id: str,
    last: str,
    first: str,
    dob: str,
    subscriber: bool = True,
    relationship: str = "18",
    coverages: tuple[tuple[str, str, str], ...] = (("HLT", "GOLD PPO", "20260101"),),
    email: str | None = None,
) -> str:
    segments = [
        f"INS*{'Y' if subscriber else 'N'}*{relationship}*021*28*A***FT",
        f"REF*0F*{sub_id}",
        "REF*1L*GRP0001",
        "DTP*356*D8*20260101",
        f"NM1*IL*1*{last}*{first}****34*123456789",
    ]
    if email:
        segments.append(f"PER*IP**TE*5551234567*EM*{email}")
    segments += ["N3*1 MAIN ST", "N4*SPRINGFIELD*IL*62701", f"DMG*D8*{dob}*F"]
    for line, plan, start in coverages:
        segments += [f"HD*021**{line}*{plan}*EMP", f"DTP*348*D8*{start}"]
    return "~".join(segments)


@pytest.fixture
def config(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "stark_plan.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    loaded = load_partner_configs(folder)
    assert not loaded.problems
    return loaded.configs["stark_plan"]


def with_x12(config, options: X12Options):
    return config.model_copy(update={"inbound": config.inbound.model_copy(update={"x12": options})})


def rows_of(content: bytes, config, tmp_path) -> list:
    path = tmp_path / "file.834"
    path.write_bytes(content)
    return list(read_rows(path, config.inbound))


def test_member_loops_become_rows_of_their_element_references(config, tmp_path):
    content = interchange(
        member("00012345", "DOE", "JANE", "19800214", email="jane@example.com"),
        member("00012346", "ROE", "RICHARD", "19751130"),
    )
    rows = rows_of(content, config, tmp_path)
    fields = list(dict.fromkeys(CONFIG["inbound"]["column_mappings"].values()))
    first = dict(zip(fields, rows[0].values, strict=True))
    assert first == {
        "employee_id": "00012345",
        "last_name": "DOE",
        "first_name": "JANE",
        "date_of_birth": "19800214",
        "gender": "F",
        "email": "jane@example.com",
        "postal_code": "62701",
        "program": "GOLD PPO",
        "eligibility_start_date": "20260101",
        "eligibility_end_date": None,
    }
    # the INS segment's position: ISA, GS, ST, BGN, N1, N1 come first; the first loop has 11
    assert [r.line for r in rows] == [7, 18]
    assert [r.problem for r in rows] == [None, None]


def test_segments_on_one_line_read_the_same(config, tmp_path):
    one_line = interchange(member("00012345", "DOE", "JANE", "19800214"), terminator="~")
    per_line = interchange(member("00012345", "DOE", "JANE", "19800214"))
    assert rows_of(one_line, config, tmp_path) == rows_of(per_line, config, tmp_path)


def test_a_dependent_is_rejected_with_its_reason_unless_all_members_load(config, tmp_path):
    content = interchange(
        member("00012345", "DOE", "JANE", "19800214"),
        member("00012345", "DOE", "JIM", "20100505", subscriber=False, relationship="19"),
    )
    subscriber, dependent = rows_of(content, config, tmp_path)
    assert subscriber.problem is None
    assert "dependent" in dependent.problem and "relationship 19" in dependent.problem

    every_member = with_x12(config, X12Options(members="all"))
    assert [r.problem for r in rows_of(content, every_member, tmp_path)] == [None, None]


def test_the_configured_insurance_line_picks_the_coverage(config, tmp_path):
    content = interchange(
        member(
            "00012345",
            "DOE",
            "JANE",
            "19800214",
            coverages=(("DEN", "DENTAL BASIC", "20250101"), ("HLT", "GOLD PPO", "20260101")),
        )
    )
    fields = list(dict.fromkeys(CONFIG["inbound"]["column_mappings"].values()))
    [first_coverage] = rows_of(content, config, tmp_path)
    assert dict(zip(fields, first_coverage.values, strict=True))["program"] == "DENTAL BASIC"
    [health] = rows_of(content, with_x12(config, X12Options(insurance_line="HLT")), tmp_path)
    chosen = dict(zip(fields, health.values, strict=True))
    assert (chosen["program"], chosen["eligibility_start_date"]) == ("GOLD PPO", "20260101")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"Employee ID,Name\nE1,Jane\n", "does not start with an ISA segment"),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).replace(
                b"ST*834", b"ST*270"
            ),
            "270 transaction set",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214"), count_fix=1),
            "has 15 segments but its SE .* says 16",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).replace(
                b"GE*1*1", b"GE*2*1"
            ),
            "has 1 transaction sets but its GE .* says 2",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).replace(
                b"IEA*1*", b"IEA*3*"
            ),
            "has 1 functional groups but its IEA .* says 3",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).replace(
                b"SE*15*0001", b"SE*15*0002"
            ),
            "closes transaction set 0002, but the open one is 0001",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).replace(
                b"IEA*1*000000001", b"IEA*1*000000007"
            ),
            "closes interchange 000000007, but the open one is 000000001",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).replace(b"SE*15*0001~", b""),
            "closes the functional group before transaction set 0001 was closed by its SE",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).replace(b"GE*1*1~", b""),
            "closes the interchange before functional group 1 was closed by its GE",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214")).split(b"SE*")[0],
            "truncated",
        ),
        (
            interchange(member("00012345", "DOE", "JANE", "19800214"))[:-12],
            "truncated",
        ),
        (
            interchange(member("00012345", "D\xd6E", "JANE", "19800214")).replace(
                "DÖE".encode(), b"D\xffE"
            ),
            "not valid utf-8 in segment 11",
        ),
    ],
    ids=[
        "empty",
        "csv",
        "not-834",
        "count",
        "group-count",
        "interchange-count",
        "control-number",
        "interchange-control-number",
        "SE-missing",
        "GE-missing",
        "no-SE",
        "cut-mid-segment",
        "undecodable",
    ],
)
def test_an_unreadable_834_says_why(config, tmp_path, content, reason):
    with pytest.raises(UnreadableFileError, match=reason):
        rows_of(content, config, tmp_path)


def test_an_envelope_value_out_of_place_is_not_quoted_in_the_reason(config, tmp_path):
    # the reason reaches the ledger, the logs and the partner's quarantine note: a name and
    # an SSN typed into ST01 were quoted whole
    content = interchange(member("00012345", "DOE", "JANE", "19800214")).replace(
        b"ST*834*0001", b"ST*Hildegard Oxenbury 345-67-8901*0001"
    )
    with pytest.raises(UnreadableFileError) as caught:
        rows_of(content, config, tmp_path)
    assert "opens a <30 characters> transaction set" in caught.value.reason
    assert "Hildegard" not in caught.value.reason and "8901" not in caught.value.reason
    for opened, shown in (
        (b"ST*123456789*0001", "opens a <9 characters>"),
        (b"ST*834*Ann Lee 345-67-8901", "inside transaction set <19 characters>"),
    ):
        cut = interchange(member("00012345", "DOE", "JANE", "19800214")).replace(
            b"ST*834*0001", opened
        )
        if b"Ann" in opened:
            cut = cut[: cut.index(b"SE*")]  # ends inside the transaction set
        with pytest.raises(UnreadableFileError) as caught:
            rows_of(cut, config, tmp_path)
        assert shown in caught.value.reason and "6789" not in caught.value.reason
        assert "8901" not in caught.value.reason


def test_the_config_refuses_what_an_834_does_not_have(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    bad_mapping = yaml.safe_load(yaml.safe_dump(CONFIG, sort_keys=False))
    bad_mapping["inbound"]["column_mappings"]["Member Name"] = "middle_name"
    (folder / "a.yaml").write_text(yaml.safe_dump(bad_mapping, sort_keys=False))
    bad_dates = yaml.safe_load(yaml.safe_dump(CONFIG, sort_keys=False)) | {
        "partner_id": "other_plan"
    }
    bad_dates["inbound"]["date_format"] = "%m/%d/%Y"
    (folder / "b.yaml").write_text(yaml.safe_dump(bad_dates, sort_keys=False))

    problems = [str(p) for p in load_partner_configs(folder).problems]

    assert any("a.yaml" in p and "'Member Name'" in p and "834" in p for p in problems)
    assert any("b.yaml" in p and "CCYYMMDD" in p for p in problems)


@pytest.mark.skipif(not SAMPLES.exists(), reason="needs ../shared/samples")
def test_a_real_4010_audit_file_reads(tmp_path):
    sample = SAMPLES / "834_4010_audit-full-file_pyx12.txt"
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "stark_plan.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    config = load_partner_configs(folder).configs["stark_plan"]
    [row] = list(read_rows(sample, config.inbound))
    fields = list(dict.fromkeys(CONFIG["inbound"]["column_mappings"].values()))
    values = dict(zip(fields, row.values, strict=True))
    assert (values["employee_id"], values["last_name"], values["date_of_birth"]) == (
        "00389999",
        "DOE",
        "19670330",
    )
    assert values["eligibility_start_date"] == "20070301" and row.line == 8


def test_an_834_uploaded_over_sftp_loads_and_its_bad_loops_reach_the_error_report(platform, config):
    from sandbox.sftp_server import ensure_partner_home

    ensure_partner_home(platform.sftp_root, "stark_plan")
    content = interchange(
        member("00012345", "DOE", "JANE", "19800214", email="jane@example.com"),
        member("00012345", "DOE", "JIM", "20100505", subscriber=False, relationship="19"),
        member("00012346", "ROE", "RICHARD", "19751330"),  # month 13
        member("ABC", "POE", "EDGAR", "19600101"),
        member("00012347", "", "ANN", "19900101"),
    )
    sftp = platform.sftp("mdp_platform")
    try:
        with sftp.open("/stark_plan/inbound/enrollment_20260101.834", "wb") as handle:
            handle.write(content)
    finally:
        sftp._owner.close()

    [record] = import_partner_files(config, platform.settings, platform.params)
    [again] = import_partner_files(config, platform.settings, platform.params) or [None]

    assert (record.status, record.rows_total, record.rows_loaded, record.rows_rejected) == (
        "loaded",
        5,
        1,
        4,
    )
    stored = platform.query(
        "select employee_id, last_name, date_of_birth::text, email, program,"
        " eligibility_start_date::text, source_line_number"
        " from raw_partners.enrollment_members where partner_id = 'stark_plan'"
    )
    assert stored == [
        ("00012345", "DOE", "1980-02-14", "jane@example.com", "GOLD PPO", "2026-01-01", 7)
    ]
    assert again is None or again.status == "duplicate"
    report = platform.sftp_root / "stark_plan" / "errors" / "enrollment_20260101.errors.csv"
    lines = list(csv.reader(io.StringIO(report.read_text())))
    assert lines[0][0] == "Line" and lines[0][-1] == "Errors"
    reasons = {row[0]: row[-1] for row in lines[1:]}
    assert len(reasons) == 4
    assert all(int(line) > 7 for line in reasons)
    assert any("dependent" in reason for reason in reasons.values())
    assert any("date_of_birth" in reason for reason in reasons.values())
    assert any("pattern" in reason for reason in reasons.values())
    assert any("last_name" in reason for reason in reasons.values())


def test_a_generated_834_with_bad_loops_loads_the_rest_and_reports_each_by_segment(platform):
    from sandbox.generator import generate_partner_file

    config = platform.configs["wayne_health"]
    generated = generate_partner_file(config, rows=400, bad_share=0.25, seed=11)
    platform.upload("wayne_health", generated.filename, generated.content)

    [record] = import_partner_files(config, platform.settings, platform.params)

    assert (record.status, record.rows_total, record.rows_loaded, record.rows_rejected) == (
        "loaded",
        400,
        300,
        100,
    )
    report = (
        platform.sftp_root
        / "wayne_health"
        / "errors"
        / generated.filename.replace(".x12", ".errors.csv")
    )
    lines = list(csv.reader(io.StringIO(report.read_text())))
    assert {int(row[0]) for row in lines[1:]} == set(generated.bad_rows)
    stored = platform.query(
        "select employee_id, first_name, last_name, date_of_birth, source_line_number"
        " from raw_partners.enrollment_members where partner_id = 'wayne_health'"
        " order by source_line_number"
    )
    expected = [
        (
            m["employee_id"],
            m["first_name"],
            m["last_name"],
            m["date_of_birth"],
            m["source_line_number"],
        )
        for m in generated.valid_members
    ]
    assert stored == expected


def _values(config, row) -> dict:
    from ingestion.partners.formats import mapped_fields

    return dict(zip(mapped_fields(config.inbound), row.values, strict=True))


def test_coverage_changes_and_terminations_read_as_the_partner_meant(config, tmp_path):
    plan_change = member("00012345", "DOE", "JANE", "19800214").replace(
        "HD*021**HLT*GOLD PPO*EMP~DTP*348*D8*20260101",
        "HD*024**HLT*OLD PLAN*EMP~DTP*348*D8*20250101~DTP*349*D8*20251231"
        "~HD*021**HLT*NEW PLAN*EMP~DTP*348*D8*20260101",
    )
    # a termination as INS03 024 with the member-level eligibility end (DTP*357) only
    terminated = (
        member("00012346", "ROE", "RICK", "19750101")
        .replace("INS*Y*18*021", "INS*Y*18*024")
        .replace("DTP*356*D8*20260101", "DTP*356*D8*20260101~DTP*357*D8*20261231")
    )
    ranged = member("00012347", "POE", "ED", "19600101").replace(
        "DTP*348*D8*20260101", "DTP*348*RD8*20260101-20260630"
    )
    rows = rows_of(interchange(plan_change, terminated, ranged), config, tmp_path)
    values = [_values(config, row) for row in rows]
    assert (values[0]["program"], values[0]["eligibility_end_date"]) == ("NEW PLAN", None)
    assert values[1]["eligibility_end_date"] == "20261231"
    assert (values[2]["eligibility_start_date"], values[2]["eligibility_end_date"]) == (
        "20260101",
        "20260630",
    )


def test_a_plan_change_ahead_keeps_the_member_covered_until_the_new_plan_starts(config, tmp_path):
    # open enrollment: in November the plan sends the old plan cancelled as of 11-30 and the
    # new one from 12-01. The new loop alone made the check answer "Coverage starts 12-01"
    # for a member the old plan still covered
    change = member("00012345", "DOE", "JANE", "19800214").replace(
        "HD*021**HLT*GOLD PPO*EMP~DTP*348*D8*20260101",
        "HD*024**HLT*OLD PLAN*EMP~DTP*348*D8*20250101~DTP*349*D8*20261130"
        "~HD*021**HLT*NEW PLAN*EMP~DTP*348*D8*20261201",
    )
    # a gap between the plans is not bridged: uncovered in between, the new plan's start
    gap = change.replace("REF*0F*00012345", "REF*0F*00012346").replace(
        "DTP*349*D8*20261130", "DTP*349*D8*20261115"
    )
    rows = rows_of(interchange(change, gap), config, tmp_path)
    values = [_values(config, row) for row in rows]
    assert (values[0]["program"], values[0]["eligibility_start_date"]) == ("NEW PLAN", "20250101")
    assert values[0]["eligibility_end_date"] is None
    assert (values[1]["program"], values[1]["eligibility_start_date"]) == ("NEW PLAN", "20261201")


def test_a_termination_without_an_end_date_is_rejected_not_loaded_as_covered(config, tmp_path):
    # INS03 024 (or a lone coverage loop HD01 024) with no end date loaded as covered: the
    # API answered "eligible" for a member the plan had just terminated
    member_level = member("00012346", "ROE", "RICK", "19750101").replace(
        "INS*Y*18*021", "INS*Y*18*024"
    )
    coverage_level = member("00012347", "POE", "ED", "19600101").replace("HD*021", "HD*024")
    dated = member_level.replace("REF*0F*00012346", "REF*0F*00012348").replace(
        "DTP*356*D8*20260101", "DTP*356*D8*20260101~DTP*357*D8*20260131"
    )
    rows = rows_of(interchange(member_level, coverage_level, dated), config, tmp_path)
    assert "termination (INS03 or HD01 is 024) without an end date" in rows[0].problem
    assert "DTP*349" in rows[0].problem
    assert "without an end date" in rows[1].problem
    assert rows[2].problem is None
    assert _values(config, rows[2])["eligibility_end_date"] == "20260131"
    # a config that maps no end date at all cannot load any termination
    unmapped = config.inbound.column_mappings.copy()
    del unmapped["DTP*349"]
    no_end = config.model_copy(
        update={"inbound": config.inbound.model_copy(update={"column_mappings": unmapped})}
    )
    [row] = rows_of(interchange(dated), no_end, tmp_path)
    assert "maps no eligibility_end_date" in row.problem


def test_a_loop_without_the_configured_coverage_line_is_not_in_the_roster(config, tmp_path):
    from ingestion.partners.formats import NOT_IN_ROSTER

    content = interchange(
        member("00012345", "DOE", "JANE", "19800214", coverages=(("DEN", "DENTAL", "20260101"),))
    )
    [row] = rows_of(content, with_x12(config, X12Options(insurance_line="HLT")), tmp_path)
    assert row.problem.startswith(NOT_IN_ROSTER) and "insurance line HLT" in row.problem


def test_nm109_counts_as_an_ssn_only_when_nm108_says_so(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(CONFIG, sort_keys=False))
    data["inbound"]["identifier"] = "ssn"
    data["inbound"]["column_mappings"] = {
        "NM109": "ssn",
        "NM103": "last_name",
        "DMG02": "date_of_birth",
    }
    data["inbound"]["required_fields"] = ["ssn"]
    data["inbound"]["validations"] = {}
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "stark_plan.yaml").write_text(yaml.safe_dump(data))
    config = load_partner_configs(folder).configs["stark_plan"]
    other_id = member("00012346", "ROE", "RICK", "19750101").replace("****34*", "****ZZ*")
    ssn, not_ssn = rows_of(
        interchange(member("00012345", "DOE", "JANE", "19800214"), other_id), config, tmp_path
    )
    assert ssn.problem is None and _values(config, ssn)["ssn"] == "123456789"
    assert _values(config, not_ssn)["ssn"] is None and "NM108 is ZZ" in not_ssn.problem


def test_padding_after_the_interchange_is_not_a_cut_file(config, tmp_path):
    content = interchange(member("00012345", "DOE", "JANE", "19800214")) + b"\x00" * 64 + b"\x1a"
    assert len(rows_of(content, config, tmp_path)) == 1


def test_a_member_loop_outside_any_transaction_set_is_a_broken_envelope(config, tmp_path):
    loop = member("00012345", "DOE", "JANE", "19800214")
    content = interchange(loop).replace(b"GE*1*1", loop.replace("~", "~\n").encode() + b"~\nGE*1*1")
    with pytest.raises(UnreadableFileError, match=r"outside any 834 transaction set"):
        rows_of(content, config, tmp_path)


def test_a_termination_with_only_its_end_date_ends_the_stored_coverage(platform, config):
    # the begin date is required for additions; a termination sends only its end (INS03 024,
    # DTP*349): it was rejected as "eligibility_start_date: required but empty", and the
    # member stayed covered with no end
    from sandbox.sftp_server import ensure_partner_home

    required = [*config.inbound.required_fields, "eligibility_start_date"]
    config = config.model_copy(
        update={"inbound": config.inbound.model_copy(update={"required_fields": required})}
    )
    ensure_partner_home(platform.sftp_root, "stark_plan")

    def termination(sub_id: str, end: str) -> str:
        return "~".join(
            [
                "INS*Y*18*024*07*A***FT",
                f"REF*0F*{sub_id}",
                "NM1*IL*1*LANE*LOIS",
                "DMG*D8*19800101*F",
                "HD*024**HLT*GOLD PPO*EMP",
                f"DTP*349*D8*{end}",
            ]
        )

    def added(sub_id: str) -> str:
        return member(sub_id, "LANE", "LOIS", "19800101").replace("DTP*356*D8*20260101~", "")

    records = []
    sftp = platform.sftp("mdp_platform")
    try:
        for name, content in [
            ("add_20260101.834", interchange(added("00022222"), added("00022224"))),
            (
                "term_20261031.834",
                interchange(
                    termination("00022222", "20261031"),
                    termination("00022223", "20261031"),  # never enrolled
                    termination("00022224", "20251231"),  # ends before it started
                ),
            ),
        ]:
            with sftp.open(f"/stark_plan/inbound/{name}", "wb") as handle:
                handle.write(content)
            records += import_partner_files(config, platform.settings, platform.params)
    finally:
        sftp._owner.close()

    assert [(r.status, r.rows_loaded, r.rows_rejected) for r in records] == [
        ("loaded", 2, 0),
        ("loaded", 1, 2),
    ]
    stored = platform.query(
        "select employee_id, eligibility_start_date::text, eligibility_end_date::text"
        " from raw_partners.enrollment_members where partner_id = 'stark_plan'"
        " and employee_id like '0002222%%' order by 1"
    )
    assert stored == [("00022222", "2026-01-01", "2026-10-31"), ("00022224", "2026-01-01", None)]
    report = platform.sftp_root / "stark_plan" / "errors" / "term_20261031.errors.csv"
    reasons = {row[1]: row[-1] for row in list(csv.reader(io.StringIO(report.read_text())))[1:]}
    assert reasons == {
        "00022223": "eligibility_start_date: required but empty (a termination of a member"
        " with no stored coverage: nothing to end)",
        "00022224": "eligibility_end_date: 2025-12-31 is before the stored coverage start",
    }
