from __future__ import annotations

import csv
import datetime as dt
import io
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.partners.config import PartnerConfig, load_partner_configs
from sandbox import generator
from sandbox.generator import (
    BAD_ROW_KINDS,
    DUPLICATE_IDENTIFIER,
    FUTURE_DATE_OF_BIRTH,
    INVALID_IDENTIFIER,
    LONG_LINE,
    MISSING_REQUIRED,
    SHORT_LINE,
    UNPARSEABLE_DATE,
    drop_required_column,
    empty_file,
    generate_partner_file,
    truncated_xlsx,
    undecodable_bytes,
    write_demo_world,
    write_partner_file,
)

REPO = Path(__file__).resolve().parents[2]
TODAY = dt.date(2025, 6, 1)
EXCEL_EPOCH = dt.date(1899, 12, 30)

_loaded = load_partner_configs(REPO / "partner_configs")
assert not _loaded.problems, _loaded.problems
CONFIGS: dict[str, PartnerConfig] = _loaded.configs
PARTNERS = sorted(CONFIGS)


# -- an independent reader and checker, so the tests do not trust the generator's own view ------


def read_records(config: PartnerConfig, content: bytes) -> dict[int, dict[str, Any]]:
    """Line number -> {canonical field: raw value}, plus "_line_length" for fixed width."""
    inbound = config.inbound
    mappings = inbound.column_mappings
    records: dict[int, dict[str, Any]] = {}
    if inbound.format == "csv":
        options = inbound.csv_options
        text = content.decode("utf-8-sig")
        reader = csv.reader(
            io.StringIO(text, newline=""), delimiter=options.delimiter, quotechar=options.quotechar
        )
        header = next(reader) if options.has_header else options.columns
        assert header is not None
        start = reader.line_num + 1
        for row in reader:
            assert len(row) == len(header), f"line {start}: {row}"
            records[start] = {
                mappings[name]: value for name, value in zip(header, row, strict=True)
            }
            start = reader.line_num + 1
    elif inbound.format == "xlsx":
        options = inbound.xlsx_options
        workbook = openpyxl.load_workbook(io.BytesIO(content), read_only=True)
        sheet = workbook[options.sheet] if options.sheet else workbook.worksheets[0]
        rows = sheet.iter_rows(min_row=options.header_row, values_only=True)
        header = list(next(rows))
        for number, row in enumerate(rows, start=options.header_row + 1):
            padded = list(row) + [None] * (len(header) - len(row))  # trailing blanks are not stored
            records[number] = {mappings[n]: value for n, value in zip(header, padded, strict=True)}
        workbook.close()
    elif inbound.format == "x12_834":
        # read back by the product's reader, which has its own tests (tests/partners)
        from ingestion.partners.formats import mapped_fields, read_rows

        path = Path(tempfile.mkdtemp()) / "file.x12"
        path.write_bytes(content)
        fields = mapped_fields(inbound)
        for row in read_rows(path, inbound):
            records[row.line] = {
                field: value or "" for field, value in zip(fields, row.values, strict=True)
            }
    else:
        assert inbound.fixed_width is not None
        text = content.decode(inbound.fixed_width.encoding)
        lines = text.split("\n")
        assert lines[-1] == ""
        first = 2 if inbound.fixed_width.has_header else 1
        for number, line in enumerate(lines[first - 1 : -1], start=first):
            line = line.removesuffix("\r")
            record: dict[str, Any] = {
                mappings[f.name]: line[f.start - 1 : f.start - 1 + f.width]
                for f in inbound.fixed_width.fields
            }
            record["_line_length"] = len(line)
            records[number] = record
    return records


def as_date(config: PartnerConfig, value: Any) -> dt.date | None:
    """A raw date value as a date; None when blank; ValueError when unreadable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, int):
        return EXCEL_EPOCH + dt.timedelta(days=value)
    return dt.datetime.strptime(value.strip(), config.inbound.date_format).date()


def problems(config: PartnerConfig, record: dict[str, Any], seen: set[str]) -> set[str]:
    inbound = config.inbound
    found: set[str] = set()
    if inbound.format == "fixed_width" and inbound.fixed_width is not None:
        length = record["_line_length"]
        if length > inbound.fixed_width.record_length:
            found.add(LONG_LINE)
        elif length < inbound.fixed_width.record_length:
            found.add(SHORT_LINE)
    text = {k: (v.strip() if isinstance(v, str) else v) for k, v in record.items()}
    if any(text.get(field) in (None, "") for field in inbound.required_fields):
        found.add(MISSING_REQUIRED)
    try:
        dob = as_date(config, record.get("date_of_birth"))
    except ValueError:
        found.add(UNPARSEABLE_DATE)
    else:
        if dob is not None and dob > TODAY:
            found.add(FUTURE_DATE_OF_BIRTH)
    if SHORT_LINE in found:
        found.discard(MISSING_REQUIRED)  # the truncation is what left the fields blank
    identifier = text.get(inbound.identifier)
    pattern = inbound.validations[inbound.identifier].pattern
    if identifier:
        assert pattern is not None
        if not re.fullmatch(pattern, identifier):
            found.add(INVALID_IDENTIFIER)
        elif identifier in seen:
            found.add(DUPLICATE_IDENTIFIER)
    return found


def classify(config: PartnerConfig, content: bytes) -> dict[int, set[str]]:
    """Line -> problems found by the checker above, for every record in the file."""
    seen: set[str] = set()
    result: dict[int, set[str]] = {}
    for line, record in sorted(read_records(config, content).items()):
        found = problems(config, record, seen)
        if not found:
            seen.add(record[config.inbound.identifier].strip())
        result[line] = found
    return result


# -- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=PARTNERS)
def quarter_bad(request: pytest.FixtureRequest) -> tuple[PartnerConfig, generator.GeneratedFile]:
    config = CONFIGS[request.param]
    return config, generate_partner_file(config, 200, bad_share=0.25, seed=11, today=TODAY)


def test_bad_share_gives_exactly_that_many_bad_rows(quarter_bad) -> None:
    _, generated = quarter_bad
    assert len(generated.bad_rows) == 50
    assert len(generated.valid_members) == 150
    assert set(generated.bad_rows.values()) <= set(BAD_ROW_KINDS)
    valid_lines = {m["source_line_number"] for m in generated.valid_members}
    assert not valid_lines & set(generated.bad_rows)


def test_every_record_is_where_the_generator_says_and_bad_for_the_stated_reason(
    quarter_bad,
) -> None:
    config, generated = quarter_bad
    found = classify(config, generated.content)
    assert len(found) == 200
    expected = {line: {kind} for line, kind in generated.bad_rows.items()}
    expected.update({m["source_line_number"]: set() for m in generated.valid_members})
    assert found == expected


def test_valid_members_match_the_records_on_their_lines(quarter_bad) -> None:
    config, generated = quarter_bad
    records = read_records(config, generated.content)
    for member in generated.valid_members:
        record = records[member["source_line_number"]]
        for field, value in member.items():
            if field == "source_line_number":
                continue
            raw = record[field]
            if isinstance(value, dt.date) or value is None and field.endswith("_date"):
                assert as_date(config, raw) == value, (field, raw, member)
            else:
                assert (raw.strip() if isinstance(raw, str) else raw) == value, (field, member)


def test_filename_matches_the_partner_pattern(quarter_bad) -> None:
    config, generated = quarter_bad
    pattern = re.escape(config.inbound.filename_pattern).replace(r"\*", ".*")
    assert re.fullmatch(pattern, generated.filename)
    assert "20250601" in generated.filename


def test_the_kinds_of_bad_rows_vary() -> None:
    kinds = set()
    for config in CONFIGS.values():
        kinds |= set(
            generate_partner_file(config, 400, 0.25, seed=3, today=TODAY).bad_rows.values()
        )
    assert kinds == set(BAD_ROW_KINDS)


def test_csv_has_quoted_delimiters_and_embedded_newlines() -> None:
    for partner in ("acme_corp", "umbrella_plan"):
        config = CONFIGS[partner]
        delimiter = config.inbound.csv_options.delimiter
        generated = generate_partner_file(config, 200, bad_share=0.1, seed=5, today=TODAY)
        text = generated.content.decode("utf-8")
        names = [m["last_name"] for m in generated.valid_members]
        with_delimiter = [name for name in names if delimiter in name]
        assert with_delimiter, partner
        assert all(f'"{name}"' in text or f'" {name}  "' in text for name in with_delimiter)
        assert any("\n" in name for name in names), partner
        assert len(text.splitlines()) > 201  # 200 records and a header, some spanning two lines


def test_bom_and_crlf_do_not_change_the_records() -> None:
    config = CONFIGS["acme_corp"]
    plain = generate_partner_file(config, 120, 0.2, seed=9, today=TODAY)
    windows = generate_partner_file(config, 120, 0.2, seed=9, today=TODAY, bom=True, crlf=True)
    assert windows.content.startswith(b"\xef\xbb\xbf")
    assert windows.content.count(b"\r\n") > 100
    assert windows.bad_rows == plain.bad_rows
    assert windows.valid_members == plain.valid_members
    assert classify(config, windows.content) == classify(config, plain.content)


def test_xlsx_mixes_date_cells_serial_numbers_and_text() -> None:
    config = CONFIGS["globex_health"]
    generated = generate_partner_file(config, 200, seed=2, today=TODAY)
    records = read_records(config, generated.content).values()
    kinds = {type(r["date_of_birth"]) for r in records}
    assert kinds == {dt.datetime, int, str}


def test_fixed_width_valid_rows_have_the_exact_record_length() -> None:
    config = CONFIGS["initech"]
    assert config.inbound.fixed_width is not None
    length = config.inbound.fixed_width.record_length
    generated = generate_partner_file(config, 200, bad_share=0.25, seed=4, today=TODAY)
    lines = generated.content.decode("ascii").split("\n")
    for member in generated.valid_members:
        assert len(lines[member["source_line_number"] - 1]) == length
    for line, kind in generated.bad_rows.items():
        if kind == LONG_LINE:
            assert len(lines[line - 1]) > length and lines[line - 1][length:].strip()
        if kind == SHORT_LINE:
            assert len(lines[line - 1]) < 46  # DOB, the last required field, starts at 46


@pytest.mark.parametrize("partner", PARTNERS)
def test_same_seed_gives_identical_bytes(partner: str) -> None:
    config = CONFIGS[partner]
    first = generate_partner_file(config, 60, 0.2, seed=21, today=TODAY)
    again = generate_partner_file(config, 60, 0.2, seed=21, today=TODAY)
    other = generate_partner_file(config, 60, 0.2, seed=22, today=TODAY)
    assert first == again
    assert first.content != other.content


def test_corrected_file_carries_the_same_members_with_overrides() -> None:
    config = CONFIGS["acme_corp"]
    original = generate_partner_file(config, 50, bad_share=0.3, seed=8, today=TODAY, id_offset=1000)
    member = original.valid_members[0]
    corrected = generate_partner_file(
        config,
        50,
        seed=8,
        today=TODAY,
        id_offset=1000,
        overrides={member["employee_id"]: {"last_name": "Renamed", "program": "hypertension"}},
        sequence=2,
    )
    assert corrected.bad_rows == {}
    assert corrected.filename != original.filename
    by_id = {m["employee_id"]: m for m in corrected.valid_members}
    assert len(by_id) == 50
    assert by_id[member["employee_id"]]["last_name"] == "Renamed"
    assert by_id[member["employee_id"]]["program"] == "hypertension"
    for before in original.valid_members[1:]:
        assert by_id[before["employee_id"]] == before


def test_ssn_partner_members_carry_ssns_of_a_valid_shape() -> None:
    generated = generate_partner_file(CONFIGS["umbrella_plan"], 300, seed=1, today=TODAY)
    ssns = [m["ssn"] for m in generated.valid_members]
    assert len(set(ssns)) == 300
    for ssn in ssns:
        area, group, serial = ssn.split("-")
        assert area not in ("000", "666") and not area.startswith("9")
        assert group != "00" and serial != "0000"


@settings(max_examples=40, deadline=None)
@given(
    partner=st.sampled_from(PARTNERS),
    seed=st.integers(0, 2**40),
    id_offset=st.integers(0, 500_000),
    rows=st.integers(1, 25),
    bad_share=st.floats(0, 1),
)
def test_valid_identifiers_always_match_the_partner_pattern(
    partner: str, seed: int, id_offset: int, rows: int, bad_share: float
) -> None:
    config = CONFIGS[partner]
    pattern = config.inbound.validations[config.inbound.identifier].pattern
    assert pattern is not None
    generated = generate_partner_file(
        config, rows, bad_share, seed=seed, today=TODAY, id_offset=id_offset
    )
    assert len(generated.bad_rows) == round(rows * bad_share)
    identifiers = [m[config.inbound.identifier] for m in generated.valid_members]
    assert len(set(identifiers)) == len(identifiers)
    for identifier in identifiers:
        assert re.fullmatch(pattern, identifier)


@settings(max_examples=30, deadline=None)
@given(
    pattern=st.sampled_from(
        [r"^[A-Z]{2}[0-9]{5}$", r"^[0-9]{9}$", r"^EMP-[0-9]{4,6}$", r"^[A-F0-9]{8}$", r"^X\d{5}$"]
    ),
    id_offset=st.integers(0, 90_000),
)
def test_identifiers_follow_other_simple_patterns(pattern: str, id_offset: int) -> None:
    raw = CONFIGS["acme_corp"].model_dump()
    raw["inbound"]["validations"]["employee_id"]["pattern"] = pattern
    config = PartnerConfig.model_validate(raw)
    generated = generate_partner_file(config, 20, 0.3, seed=1, today=TODAY, id_offset=id_offset)
    assert classify(config, generated.content) == {
        **{line: {kind} for line, kind in generated.bad_rows.items()},
        **{m["source_line_number"]: set() for m in generated.valid_members},
    }


def _variant(partner: str, **inbound: Any) -> PartnerConfig:
    raw = CONFIGS[partner].model_dump()
    for key, value in inbound.items():
        raw["inbound"][key] = value
    return PartnerConfig.model_validate(raw)


@pytest.mark.parametrize(
    "config",
    [
        _variant("globex_health", xlsx={"sheet": None, "header_row": 3}),
        _variant(
            "umbrella_plan",
            csv={
                "delimiter": ";",
                "has_header": False,
                "columns": list(CONFIGS["umbrella_plan"].inbound.column_mappings),
            },
        ),
        _variant(
            "initech",
            fixed_width={**CONFIGS["initech"].inbound.fixed_width.model_dump(), "has_header": True},
        ),
    ],
    ids=["xlsx-title-rows", "csv-headerless", "fixed-width-header"],
)
def test_layout_options_move_the_line_numbers_with_them(config: PartnerConfig) -> None:
    generated = generate_partner_file(config, 100, 0.2, seed=13, today=TODAY)
    assert classify(config, generated.content) == {
        **{line: {kind} for line, kind in generated.bad_rows.items()},
        **{m["source_line_number"]: set() for m in generated.valid_members},
    }


@pytest.mark.parametrize("partner", PARTNERS)
def test_write_partner_file_streams_the_same_file(
    partner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CONFIGS[partner]
    in_memory = generate_partner_file(config, 80, 0.1, seed=6, today=TODAY)
    written = write_partner_file(config, tmp_path, 80, 0.1, seed=6, today=TODAY)
    assert written.path == tmp_path / in_memory.filename
    assert written.bad_rows == in_memory.bad_rows
    assert written.valid_members == in_memory.valid_members
    if config.inbound.format != "xlsx":  # xlsx on disk keeps openpyxl's save time
        assert written.path.read_bytes() == in_memory.content

    monkeypatch.setattr(generator, "MEMBERS_KEPT_UP_TO", 50)
    large = write_partner_file(config, tmp_path / "large" / "f", 80, 0.1, seed=6, today=TODAY)
    assert large.valid_members is None
    assert large.bad_rows == in_memory.bad_rows


def test_demo_world_lands_push_files_in_inboxes_and_pull_files_on_partner_servers(
    tmp_path: Path,
) -> None:
    platform_root = tmp_path / "platform"
    pull_roots = {"initech": tmp_path / "initech_server"}
    files = write_demo_world(CONFIGS, platform_root, pull_roots, rows_per_partner=40, today=TODAY)
    assert set(files) == set(CONFIGS)
    for partner, generated in files.items():
        if CONFIGS[partner].inbound.transport == "sftp_push":
            path = platform_root / partner / "inbound" / generated.filename
        else:
            path = pull_roots[partner] / "outbound" / generated.filename
        assert path.read_bytes() == generated.content
        assert len(generated.bad_rows) == 2


def test_undecodable_bytes_break_utf8_in_a_data_row() -> None:
    content = generate_partner_file(CONFIGS["acme_corp"], 30, today=TODAY).content
    broken = undecodable_bytes(content, line=5)
    with pytest.raises(UnicodeDecodeError):
        broken.decode("utf-8")
    lines = broken.split(b"\n")
    assert b"\xff\xfe\xfa" in lines[4]
    assert lines[4].startswith(b"E") and not lines[4].startswith(b"\xff")
    assert undecodable_bytes(content).count(b"\xff\xfe\xfa") == 1


def test_drop_required_column_leaves_a_header_without_it() -> None:
    config = CONFIGS["acme_corp"]
    header = drop_required_column(config, rows=5, today=TODAY).decode().splitlines()[0]
    assert header.split(",") == [
        name for name in config.inbound.column_mappings if name != "Date of Birth"
    ]
    workbook = drop_required_column(CONFIGS["globex_health"], column="Last", today=TODAY)
    sheet = openpyxl.load_workbook(io.BytesIO(workbook), read_only=True)["Members"]
    assert "Last" not in next(sheet.iter_rows(values_only=True))


def test_empty_and_truncated_files_are_unreadable() -> None:
    assert empty_file() == b""
    content = generate_partner_file(CONFIGS["globex_health"], 50, today=TODAY).content
    with pytest.raises(zipfile.BadZipFile):
        openpyxl.load_workbook(io.BytesIO(truncated_xlsx(content)))


def test_bad_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="bad_share"):
        generate_partner_file(CONFIGS["acme_corp"], 10, bad_share=1.5)


def test_contact_fields_are_filled_when_a_partner_sends_them() -> None:
    mappings = {
        **CONFIGS["acme_corp"].inbound.column_mappings,
        "Phone": "phone",
        "Zip": "postal_code",
    }
    config = _variant("acme_corp", column_mappings=mappings)
    generated = generate_partner_file(config, 20, seed=1, today=TODAY)
    assert all(m["phone"] and m["postal_code"] for m in generated.valid_members)


def test_overrides_for_fields_the_file_does_not_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="does not carry"):
        generate_partner_file(CONFIGS["acme_corp"], 5, overrides={"E0000001": {"phone": "1"}})


def test_the_command_line_writes_one_file_named_as_the_partner_names_them(tmp_path, capsys):
    from sandbox.generator import main

    assert main(["acme_corp", "--rows", "40", "--bad-share", "0.25", "--out", str(tmp_path)]) == 0
    [written] = list(tmp_path.iterdir())
    assert written.name.startswith("enrollment_") and written.suffix == ".csv"
    assert "40 rows, 10 bad" in capsys.readouterr().out
