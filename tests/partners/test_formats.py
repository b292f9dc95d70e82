"""Format readers: streaming, line numbers, and the noise real partner files carry."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion.partners.config import load_partner_config
from ingestion.partners.csv_arrow import ArrowPathUnfit
from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.formats import read_rows, row_dict
from ingestion.partners.reading import read_batches
from ingestion.partners.validation import RowValidator

REPO = Path(__file__).resolve().parents[2]
ACME = load_partner_config(REPO / "partner_configs" / "acme_corp.yaml")
INITECH = load_partner_config(REPO / "partner_configs" / "initech.yaml")
GLOBEX = load_partner_config(REPO / "partner_configs" / "globex_health.yaml")
UMBRELLA = load_partner_config(REPO / "partner_configs" / "umbrella_plan.yaml")
HEADER = list(ACME.inbound.column_mappings)

cell = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=12
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(
        st.lists(cell, min_size=len(HEADER), max_size=len(HEADER)), min_size=1, max_size=8
    ),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_csv_values_survive_quotes_delimiters_newlines_bom_and_crlf(tmp_path, records, bom, crlf):
    buffer = io.StringIO()
    csv.writer(
        buffer, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_MINIMAL
    ).writerows([HEADER, *records])
    path = tmp_path / "f.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode())
    rows = list(read_rows(path, ACME.inbound))
    non_blank = [r for r in records if not (len(r) == 1 or all(not v.strip() for v in r))]
    assert len(rows) <= len(records)
    expected_first_lines = []
    line = 2
    for record in records:
        expected_first_lines.append(line)
        line += sum(v.count("\n") for v in record) + 1
    by_line = dict(zip(expected_first_lines, records, strict=True))
    for row in rows:
        source = by_line[row.line]
        for name, target in ACME.inbound.column_mappings.items():
            expected = source[HEADER.index(name)].strip() or None
            assert row_dict(ACME.inbound, row)[target] == expected
    assert len(rows) >= len(non_blank) - sum(1 for r in records if not any(v.strip() for v in r))


def test_fixed_width_short_and_long_lines_are_row_problems_not_file_failures(tmp_path):
    good = "IN000001  SMITH               JOHN           19800102diabetes    20240101        "
    path = tmp_path / "f.txt"
    path.write_text(
        "\n".join([good, good[:40], good + "EXTRA", good.replace("IN000001", "IN000002")]) + "\n"
    )
    rows = list(read_rows(path, INITECH.inbound))
    assert [r.line for r in rows] == [1, 2, 3, 4]
    assert rows[0].problem is None and rows[3].problem is None
    assert "shorter" in rows[1].problem
    assert "longer" in rows[2].problem
    assert row_dict(INITECH.inbound, rows[0])["last_name"] == "SMITH"


def test_a_fixed_width_line_cut_in_an_optional_field_is_rejected_unless_trimming_is_said(
    tmp_path,
):
    # cut after 'DIABE', a line loaded program DIABE with no coverage dates (eligible, for
    # ever); cut inside the end date, a coverage that never ends
    good = "IN000001  SMITH               JOHN           19800102DIABETESPLUS2024010120241231"
    path = tmp_path / "f.txt"
    path.write_text("\n".join([good[:58], good[:77], good, good.rstrip("1") + "\n"]))
    problems = [r.problem for r in read_rows(path, INITECH.inbound)]
    assert problems[2] is None
    assert problems[:2] == [
        f"line is {n} characters, shorter than the record length 81" for n in (58, 77)
    ]
    assert "shorter" in problems[3]

    # a partner whose system trims trailing blanks: a line ending in blanks is whole
    options = INITECH.inbound.fixed_width.model_copy(update={"trailing_blanks_trimmed": True})
    trimming = INITECH.inbound.model_copy(update={"fixed_width": options})
    blank_end = "IN000002  JONES               ANN            19750304DIABETESPLUS20240101"
    path.write_text(blank_end + "\n" + good[:40] + "\n")
    first, cut_before_required = read_rows(path, trimming)
    assert first.problem is None
    assert row_dict(trimming, first)["eligibility_end_date"] is None
    assert "shorter" in cut_before_required.problem


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"Employee ID,First Name\nAB123456,Ann\n", "missing required column"),
        (b"\n\n\n", "the header row is blank"),
        (b"  \r\n\r\nEmployee ID\n", "the header row is blank"),
        (
            b"Employee ID,First Name,Last Name,Date of Birth\nAB123456,Ann,Lee,01/01/1980\n"
            + b"\xff\xfeAB,x,y,01/01/1980\n",
            "not valid utf-8",
        ),
    ],
)
def test_unreadable_csv_raises_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError) as caught:
        list(read_rows(path, ACME.inbound))
    assert reason in caught.value.reason


def _read_all(path: Path, inbound, arrow: bool) -> list:
    """Every batch of the file, as the import reads it (Arrow, if it steps aside, stdlib)."""
    try:
        return list(read_batches(path, inbound, 1_000, arrow))
    except ArrowPathUnfit:
        return list(read_batches(path, inbound, 1_000, arrow=False))


@pytest.mark.parametrize("opening", [',"Gold', ',  "Gold'], ids=["quote", "spaces-quote"])
@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_quote_never_closed_quarantines_the_file_rather_than_swallow_the_rest(
    tmp_path, arrow, opening
):
    # the csv module (not strict) and Arrow both read such a value to the end of the file:
    # 998 rows vanished into one member's program, and the file counted as loaded (a quote
    # after spaces opens a value too: the spaces before it are skipped)
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program"
    rows = [f"EMP{i:05d},Ann,Lee,01/02/1980,a@b.example,Gold" for i in range(1, 1001)]
    rows[1] = rows[1].replace(",Gold", opening)  # line 3
    path = tmp_path / "f.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(UnreadableFileError) as caught:
        _read_all(path, ACME.inbound, arrow)
    assert "quoted value opened on line 3 is never closed" in caught.value.reason


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_last_record_with_closed_quotes_over_lines_still_loads(tmp_path, arrow):
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program"
    body = 'EMP00001,Ann,Lee,01/02/1980,a@b.example,"Gold\n""plus"", ""x,y"""\n'
    body += 'EMP00002,Bob,Lee,01/02/1980,b@b.example,"Silver\r\nline, two"'  # no final break
    path = tmp_path / "f.csv"
    path.write_bytes((header + "\n" + body).encode())
    batches = _read_all(path, ACME.inbound, arrow)
    assert [line for b in batches for line in b.lines.to_pylist()] == [2, 4]
    programs = [v for b in batches for v in b.columns["program"].to_pylist()]
    assert programs == ['Gold\n"plus", "x,y"', "Silver\r\nline, two"]


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_spaces_before_a_quoted_value_are_skipped_not_read_as_part_of_it(tmp_path, arrow):
    # as RFC 4180 reads it, `, "Lee, Jr" ,` holds two values with quotes in them: the row
    # was rejected for its field count, and `, "Ann" ,` stored the name with its quotes
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program"
    body = [f"EMP{i:05d},Ann,Lee,01/02/1980,a@b.example,Gold" for i in range(1, 1001)]
    body[0] = 'EMP00001, "Ann" , "Lee, Jr" ,01/02/1980,a@b.example,Gold'
    body[999] = 'EMP01000,Bo,"Lee",01/02/1980, "x@b.example",  "Gold\nplus"'
    path = tmp_path / "f.csv"
    path.write_text(header + "\n" + "\n".join(body) + "\n")
    batches = _read_all(path, ACME.inbound, arrow)
    lines = [line for b in batches for line in b.lines.to_pylist()]
    assert lines == list(range(2, 1002))
    values = {
        field: [v for b in batches for v in b.columns[field].to_pylist()]
        for field in ("first_name", "last_name", "email", "program")
    }
    assert [values[f][0] for f in values] == ["Ann", "Lee, Jr", "a@b.example", "Gold"]
    assert [values[f][999] for f in values] == ["Bo", "Lee", "x@b.example", "Gold\nplus"]


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_undecodable_bytes_are_reported_on_their_own_line(tmp_path, arrow, crlf):
    # the text reader decodes ahead of the rows: its line count was ~50 lines behind
    newline = "\r\n" if crlf else "\n"
    rows = [f"EMP{i:05d},Ann,Lee,01/02/1980" for i in range(1, 3001)]
    data = (
        newline.join(["Employee ID,First Name,Last Name,Date of Birth", *rows]) + newline
    ).encode()
    at = data.index(b"EMP01500")  # the record on line 1501
    path = tmp_path / "f.csv"
    path.write_bytes(data[:at] + b"EMP\xff" + data[at + 4 :])
    with pytest.raises(UnreadableFileError) as caught:
        _read_all(path, ACME.inbound, arrow)
    assert "not valid utf-8 on line 1501" in caught.value.reason
    assert "byte 0xff" in caught.value.reason


def test_undecodable_bytes_in_a_fixed_width_file_name_their_line(tmp_path):
    good = "IN000001  SMITH               JOHN           19800102diabetes    20240101        "
    path = tmp_path / "f.txt"
    path.write_bytes(("\n".join([good] * 3) + "\n").encode() + b"IN000004\xff" + good[9:].encode())
    with pytest.raises(UnreadableFileError) as caught:
        list(read_rows(path, INITECH.inbound))
    assert "on line 4" in caught.value.reason


def _workbook(tmp_path: Path, rows: list[list[object]], epoch: dt.datetime | None = None) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    if epoch is not None:
        book.epoch = epoch
    sheet = book.active
    sheet.title = "Members"
    sheet.append(list(GLOBEX.inbound.column_mappings))
    for row in rows:
        sheet.append(row)
    path = tmp_path / "members.xlsx"
    book.save(path)
    return path


def _with_sheet_xml(path: Path, change) -> None:
    import zipfile

    with zipfile.ZipFile(path) as source:
        entries = {info.filename: source.read(info) for info in source.infolist()}
    entries["xl/worksheets/sheet1.xml"] = change(entries["xl/worksheets/sheet1.xml"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in entries.items():
            target.writestr(name, data)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda xml: xml[: len(xml) // 2], "ParseError"),  # a valid zip, its XML cut
        (lambda xml: xml.replace(b"<row", b"<row <", 1), "ParseError"),
    ],
    ids=["cut-xml", "broken-xml"],
)
def test_a_workbook_with_broken_sheet_xml_is_unreadable_not_a_crash(tmp_path, change, reason):
    # these raised ParseError out of the reader: the run failed, and the file, never
    # finished, was tried first again by every run after it
    path = _workbook(tmp_path, [["GX000001", "Ann", "Lee", "1980-01-02", "F", "P", None, None]])
    _with_sheet_xml(path, change)
    with pytest.raises(UnreadableFileError) as caught:
        list(read_rows(path, GLOBEX.inbound))
    assert reason in caught.value.reason


def test_workbook_date_cells_keep_their_century_under_a_two_digit_year_format(tmp_path):

    config = GLOBEX.model_copy(
        update={"inbound": GLOBEX.inbound.model_copy(update={"date_format": "%m/%d/%y"})}
    )
    path = _workbook(
        tmp_path,
        [
            ["GX000001", "Ann", "Lee", dt.date(1960, 5, 1), "F", "P", None, None],  # a date cell
            ["GX000002", "Bob", "Lee", "05/01/61", "M", "P", None, None],  # text, as typed
            ["GX000003", "Cy", "Lee", 22402, "M", "P", None, None],  # a serial: 1961-05-01
            # a date cell's four-digit year is what was typed: 2060 is not moved to 1960
            ["GX000004", "Di", "Lee", dt.date(2060, 5, 1), "F", "P", None, None],
        ],
    )
    validator = RowValidator(
        config, "f", dt.datetime(2025, 6, 1, tzinfo=dt.UTC), dt.date(2025, 6, 1)
    )
    (batch,) = _read_all(path, config.inbound, arrow=False)
    chunk = validator.validate(batch)
    [typo] = chunk.rejects
    assert typo.line == 5 and "2060-05-01 is after today" in typo.errors[0]
    ids, births = (chunk.valid[c].to_pylist() for c in ("employee_id", "date_of_birth"))
    dates = dict(zip(ids, births, strict=True))
    # "61" is 2061 as strptime reads it; a birth date cannot be after today: 1961
    assert dates == {
        "GX000001": dt.date(1960, 5, 1),
        "GX000002": dt.date(1961, 5, 1),
        "GX000003": dt.date(1961, 5, 1),
    }


def test_serials_in_a_1904_workbook_count_from_1904(tmp_path):
    # Excel for Mac's date system: the same serial is 4 years and a day later. Counted from
    # 1900, a member born 1980-01-15 was stored born 1976-01-14 (and found by no check)
    from openpyxl.utils.datetime import CALENDAR_MAC_1904

    rows = [
        ["GX000001", "Ann", "Lee", 27773, "F", "P", 43830, None],  # serials, 1904 system
        ["GX000002", "Bob", "Lee", dt.date(1980, 1, 15), "M", "P", None, None],  # a date cell
    ]
    path = _workbook(tmp_path, rows, epoch=CALENDAR_MAC_1904)
    (batch,) = _read_all(path, GLOBEX.inbound, arrow=False)
    validator = RowValidator(GLOBEX, "f", dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
    valid = validator.validate(batch).valid
    assert valid["date_of_birth"].to_pylist() == [dt.date(1980, 1, 15)] * 2
    assert valid["eligibility_start_date"].to_pylist()[0] == dt.date(2024, 1, 1)


def test_an_ssn_typed_into_another_column_is_masked_in_messages(tmp_path):

    path = tmp_path / "umbrella_1.csv"
    path.write_text(
        "SSN|FIRST_NAME|LAST_NAME|BIRTH_DATE|PLAN_CODE|COVERAGE_BEGIN|COVERAGE_END\n"
        "123-45-6789|Ann|Lee|555-44-3333|P|2024-01-01|\n"
        "987654321|Bob|Lee|1980-01-02|P|555443333|\n"
    )
    validator = RowValidator(UMBRELLA, "f", dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
    messages = [
        m
        for b in _read_all(path, UMBRELLA.inbound, True)
        for r in validator.validate(b).rejects
        for m in r.errors
    ]
    assert messages == [
        "date_of_birth: '***-**-3333' is not a date in the format %Y-%m-%d",
        "eligibility_start_date: '***-**-3333' is not a date in the format %Y-%m-%d",
    ]


def test_a_file_without_its_header_row_is_quarantined_without_quoting_its_first_row(tmp_path):
    # the reason goes to the ledger, `mdp imports list`, Dagster metadata and the logs: the
    # first row of such a file is a member's name, birth date and email
    path = tmp_path / "f.csv"
    path.write_text("E0000001,Aisha,Smith,03/27/1957,aisha.smith@example.com,weight\n")
    with pytest.raises(UnreadableFileError) as caught:
        list(read_rows(path, ACME.inbound))
    reason = caught.value.reason
    assert "missing required column(s) 'Employee ID' (for employee_id)" in reason
    assert "has 6 cells, of the configured columns none (is the header row missing?)" in reason
    assert not any(value in reason for value in ("E0000001", "Aisha", "Smith", "1957", "aisha"))


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_header_names_match_whatever_their_case_and_spacing_unless_ambiguous(tmp_path, arrow):
    path = tmp_path / "f.csv"
    path.write_text(
        "EMPLOYEE ID,first  name,Last Name,date of birth\nEMP00001,Ann,Lee,01/02/1980\n"
    )
    (batch,) = _read_all(path, ACME.inbound, arrow)
    assert batch.columns["employee_id"].to_pylist() == ["EMP00001"]
    assert batch.columns["first_name"].to_pylist() == ["Ann"]
    assert batch.columns["date_of_birth"].to_pylist() == ["01/02/1980"]
    # two cells that could each be "First Name" (even if one matches exactly): neither is
    # taken, the file is refused
    for header in ("Employee ID,FIRST NAME,first name", "Employee ID,First Name,FIRST NAME"):
        path.write_text(f"{header},Last Name,Date of Birth\nEMP00001,A,B,Lee,01/02/1980\n")
        with pytest.raises(UnreadableFileError) as caught:
            _read_all(path, ACME.inbound, arrow)
        assert "'First Name' (2 cells) appear more than once" in caught.value.reason


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_configured_column_given_twice_in_the_header_quarantines_the_file(tmp_path, arrow):
    # which cell is the member's id is unclear: taking either one stored members under ids
    # the partner may not have meant
    path = tmp_path / "f.csv"
    path.write_text(
        "Employee ID,First Name,Last Name,Date of Birth,Employee ID\n"
        "ACME7101,A,B,01/01/1980,ACME7199\n"
    )
    with pytest.raises(UnreadableFileError) as caught:
        _read_all(path, ACME.inbound, arrow)
    assert "'Employee ID' (2 cells) appear more than once in the header" in caught.value.reason
    assert "ACME71" not in caught.value.reason


def test_excel_serials_before_march_1900_skip_the_day_excel_invented():
    from ingestion.partners.formats import excel_serial_date

    assert excel_serial_date(1) == dt.date(1900, 1, 1)
    assert excel_serial_date(59) == dt.date(1900, 2, 28)
    assert excel_serial_date(60) is None  # Excel's 29 February 1900
    assert excel_serial_date(61) == dt.date(1900, 3, 1)
    assert excel_serial_date(45000) == dt.date(2023, 3, 15)


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("123-45-6789", "123456789"),
        ("123 45 6789", "123456789"),
        ("123456789", "123456789"),
        ("123-45-678x9", None),
        ("12345678\u00b2", None),
        ("\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669", None),
    ],
)
def test_an_ssn_is_nine_ascii_digits_with_optional_dashes_or_spaces(text, digits):
    from mdp.phi import normalize_ssn

    assert normalize_ssn(text) == digits


def _acme_csv(tmp_path: Path, name: str, rows: list[str]) -> Path:
    """An acme_corp CSV: its header, then the rows as given."""
    path = tmp_path / name
    path.write_text(",".join(HEADER) + "\n" + "\n".join(rows) + "\n")
    return path


def _validated(config, path: Path, arrow: bool = False, today=dt.date(2025, 6, 1)):
    validator = RowValidator(config, "f", dt.datetime(2025, 6, 1, tzinfo=dt.UTC), today)
    chunks = [validator.validate(batch) for batch in _read_all(path, config.inbound, arrow)]
    valid = [row for chunk in chunks for row in chunk.valid.to_pylist()]
    rejects = [reject for chunk in chunks for reject in chunk.rejects]
    return valid, rejects


def test_a_workbook_whose_stated_size_is_stale_is_read_whole(tmp_path):
    # read-only openpyxl trusts the sheet's <dimension>: with A1:B3 it read 2 rows of 10 and
    # 2 of 3 columns, and the file counted as loaded
    rows = [[f"GX{i:06d}", "Ann", f"Lee{i}", "1980-01-02", "F", "P", None, None] for i in range(10)]
    path = _workbook(tmp_path, rows)
    _with_sheet_xml(
        path, lambda xml: re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:B3"', xml)
    )
    read = [row_dict(GLOBEX.inbound, row) for row in read_rows(path, GLOBEX.inbound)]
    assert len(read) == 10
    assert read[9]["last_name"] == "Lee9" and read[9]["date_of_birth"] == "1980-01-02"


def test_a_number_shown_zero_padded_in_a_workbook_keeps_its_zeros(tmp_path):
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Members"
    sheet.append(list(GLOBEX.inbound.column_mappings))
    sheet.append([1234, "Ann", "Lee", "1980-01-02", "F", "P", None, None])
    sheet["A2"].number_format = "00000000"
    path = tmp_path / "padded.xlsx"
    book.save(path)
    [row] = read_rows(path, GLOBEX.inbound)
    assert row_dict(GLOBEX.inbound, row)["employee_id"] == "00001234"


def test_a_number_in_a_date_field_too_large_for_a_date_cell_is_not_read_as_one(tmp_path):
    # %d%m%Y typed as a number loses its zero: 1012024 was read as serial 1012024, year 4670
    config = GLOBEX.model_copy(
        update={"inbound": GLOBEX.inbound.model_copy(update={"date_format": "%d%m%Y"})}
    )
    path = _workbook(tmp_path, [["GX000001", "Ann", "Lee", 1012024, "F", "P", None, None]])
    valid, [reject] = _validated(config, path)
    assert valid == [] and "'1012024' is not a date in the format %d%m%Y" in reject.errors[0]


@pytest.mark.parametrize("value", ["1980115", "198015", "19801105 ", "1980-11-05"])
def test_a_compact_date_is_read_only_at_its_full_width(tmp_path, value):
    # pandas read 1980115 as 1980-11-05: a guess, not the partner's date
    config = ACME.model_copy(
        update={"inbound": ACME.inbound.model_copy(update={"date_format": "%Y%m%d"})}
    )
    path = tmp_path / "compact.csv"
    path.write_text(",".join(HEADER) + f"\nE000001,Ann,Lee,{value},a@b.c,P,,\n")
    valid, rejects = _validated(config, path)
    if value.strip() == "19801105":
        assert valid[0]["date_of_birth"] == dt.date(1980, 11, 5)
    else:
        assert valid == [] and "is not a date in the format %Y%m%d" in rejects[0].errors[0]


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_pattern_must_match_the_whole_value(tmp_path, arrow):
    rules = {
        "employee_id": ACME.inbound.validations["employee_id"].model_copy(
            update={"pattern": "[A-Z]{2}[0-9]{4}"}
        )
    }
    config = ACME.model_copy(
        update={"inbound": ACME.inbound.model_copy(update={"validations": rules})}
    )
    path = tmp_path / "ids.csv"
    lines = [",".join(HEADER)] + [
        f"{emp},Ann,Lee,01/02/1980,a@b.c,P,," for emp in ("AB1234", "AB12345", "AB1236XYZ")
    ]
    path.write_text("\n".join(lines) + "\n")
    valid, rejects = _validated(config, path, arrow)
    assert [row["employee_id"] for row in valid] == ["AB1234"]
    assert sorted(r.line for r in rejects) == [3, 4]


def test_a_utf16_file_with_its_bom_finds_its_first_column(tmp_path):
    options = ACME.inbound.csv_options.model_copy(update={"encoding": "utf-16-le"})
    config = ACME.model_copy(update={"inbound": ACME.inbound.model_copy(update={"csv": options})})
    path = tmp_path / "unicode.csv"
    text = ",".join(HEADER) + "\r\nE000001,Ann,Lee,01/02/1980,a@b.c,P,,\r\n"
    path.write_bytes("\ufeff".encode("utf-16-le") + text.encode("utf-16-le"))
    [row] = read_rows(path, config.inbound)
    assert row_dict(config.inbound, row)["employee_id"] == "E000001"


def test_a_headerless_row_of_the_wrong_width_names_the_configured_columns(tmp_path):
    columns = list(ACME.inbound.column_mappings)
    options = ACME.inbound.csv_options.model_copy(update={"has_header": False, "columns": columns})
    config = ACME.model_copy(update={"inbound": ACME.inbound.model_copy(update={"csv": options})})
    path = tmp_path / "headerless.csv"
    path.write_text("E000001,Ann,Lee\n")
    [row] = read_rows(path, config.inbound)
    assert row.problem == f"has 3 fields, the configured columns are {len(columns)}"


def test_a_value_that_would_run_as_a_spreadsheet_formula_is_inert_in_the_error_report(tmp_path):
    from ingestion.partners.error_report import write_error_report
    from ingestion.partners.validation import Reject

    report = tmp_path / "report.csv"
    write_error_report(report, ACME, [Reject(2, '=HYPERLINK("x")', ["employee_id: bad"])])
    [_, row] = list(csv.reader(io.StringIO(report.read_text())))
    assert row == ["2", '\'=HYPERLINK("x")', "employee_id: bad"]


def test_coverage_that_ends_before_it_starts_is_rejected(tmp_path):
    rows = [
        "E000001,Ann,Lee,01/02/1980,a@b.c,P,03/01/2026,02/01/2026",
        "E000002,Bob,Lee,01/02/1980,b@b.c,P,03/01/2026,03/01/2026",
    ]
    path = _acme_csv(tmp_path, "backwards.csv", rows)
    valid, [reject] = _validated(ACME, path)
    assert [row["employee_id"] for row in valid] == ["E000002"]
    assert reject.line == 2 and reject.errors == [
        "eligibility_end_date: 2026-02-01 is before eligibility_start_date 2026-03-01"
    ]


def test_a_broken_workbook_cell_is_never_quoted_in_the_reason(tmp_path):
    # openpyxl's ValueError quoted the cell ("could not convert string to float: '<name>'"),
    # and the reason goes to the ledger, the logs and Dagster's metadata
    path = _workbook(tmp_path, [["GX000001", "Ann", "Lee", "1980-01-02", "F", "P", 5, None]])
    _with_sheet_xml(
        path, lambda xml: re.sub(rb"<v>5</v>", b"<v>Secretname 1962-03-04</v>", xml, count=1)
    )
    with pytest.raises(UnreadableFileError) as caught:
        list(read_rows(path, GLOBEX.inbound))
    assert "Secretname" not in caught.value.reason and "ValueError" in caught.value.reason


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_an_ssn_in_a_free_text_column_is_refused_not_stored(tmp_path, arrow):
    rows = [
        "E000001,Ann,987-65-4321,01/02/1980,a@b.c,P,,",
        "E000002,876.54.3210,Lee,01/02/1980,b@b.c,P,,",
        "E000003,Cy,Lee,01/02/1980,c@b.c,P,,",
        "E000004,Di,765_43_2109,01/02/1980,d@b.c,P,,",  # the shapes phi.masked_ssns masks
    ]
    path = _acme_csv(tmp_path, "ssn_in_name.csv", rows)
    valid, rejects = _validated(ACME, path, arrow)
    assert [row["employee_id"] for row in valid] == ["E000003"]
    assert [r.line for r in rejects] == [2, 3, 5]
    assert all("shaped like an SSN" in " ".join(r.errors) for r in rejects)
    assert "4321" not in repr([r.errors for r in rejects]).replace("***-**-4321", "")


def test_a_zip_plus_four_or_a_phone_is_not_taken_for_an_ssn(tmp_path):
    rows = [
        "E000001,Ann,Lee,01/02/1980,ann.62701-1234@b.c,P,,",
        "E000002,Bob,Lee,01/02/1980,555-123-4567@b.c,P,,",
    ]
    path = _acme_csv(tmp_path, "not_ssns.csv", rows)
    valid, rejects = _validated(ACME, path)
    assert rejects == [] and len(valid) == 2


def test_a_file_without_its_identifier_column_is_quarantined_whatever_required_fields_say(
    tmp_path,
):
    inbound = ACME.inbound.model_copy(update={"required_fields": ["first_name"]})
    config = ACME.model_copy(update={"inbound": inbound})
    path = tmp_path / "no_ids.csv"
    header = [h for h in HEADER if h != "Employee ID"]
    path.write_text(",".join(header) + "\nAnn,Lee,01/02/1980,a@b.c,P,,\n")
    with pytest.raises(UnreadableFileError, match="missing required column"):
        list(read_rows(path, config.inbound))


def test_a_missing_sheet_names_the_others_with_ssn_shaped_digits_masked(tmp_path):
    # the reason reaches the ledger, the logs and the partner's note: a sheet named after a
    # member was quoted whole
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.active.title = "Ivo 456-78-9123"
    path = tmp_path / "members_1.xlsx"
    workbook.save(path)
    with pytest.raises(UnreadableFileError) as caught:
        list(read_rows(path, GLOBEX.inbound))
    assert "no sheet named 'Members'" in caught.value.reason
    assert "***-**-9123" in caught.value.reason and "456-78" not in caught.value.reason


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_empty_values_past_the_header_are_no_data_but_a_value_there_rejects_the_row(
    tmp_path, arrow
):
    # a trailing delimiter on every row rejected every row ("has 9 fields, the header has 8")
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program"
    rows = [f"EMP{i:05d},Ann,Lee,01/02/1980,a@b.example,Gold,," for i in range(1, 1001)]
    rows[4] = "EMP00005,Ann,Lee,01/02/1980,a@b.example,Gold,,stray"
    path = tmp_path / "f.csv"
    path.write_text(header + "\r\n" + "\r\n".join(rows) + "\r\n")
    batches = _read_all(path, ACME.inbound, arrow)
    problems = {
        b.lines[pos].as_py(): problem for b in batches for pos, problem in b.problems.items()
    }
    assert problems == {6: "has 8 fields, the header has 6"}
    assert sum(len(b) for b in batches) == 1000
    assert {v for b in batches for v in b.columns["program"].to_pylist()} == {"Gold"}


def test_an_ssn_sent_as_the_employee_id_is_masked_in_the_reports_key_column_too(tmp_path):
    # the message quoted it masked while the report's key column showed it in clear
    rows = [
        "123-45-6789,Ann,Lee,01/02/1980,a@b.c,P,,",
        "E0000002,Bo,Lee,13/45/1980,b@b.c,P,,",
        "123456781,Cy,Lee,01/02/1980,c@b.c,P,,",  # passes acme's pattern: the partner's id
        "123456781,Cy,Lee,01/02/1980,c@b.c,P,,",
    ]
    path = _acme_csv(tmp_path, "ssn_as_id.csv", rows)
    _, rejects = _validated(ACME, path, arrow=False)
    keys = [(r.line, r.key) for r in rejects]
    assert keys == [(2, "***-**-6789"), (3, "E0000002"), (5, "123456781")]
    assert "'123456781' repeats the record on line 4" in rejects[2].errors[0]
    assert "6789" in " ".join(rejects[0].errors) and "123" not in " ".join(rejects[0].errors)


def test_a_formula_saved_without_its_result_rejects_its_row_rather_than_read_blank(tmp_path):
    # openpyxl (and HR systems' exports) store formulas uncalculated: read as empty, a
    # coverage end given by =DATE(...) loaded as no end, eligible for ever, with no error
    path = _workbook(
        tmp_path,
        [
            ["GX000001", "Ann", "Lee", "1980-01-02", "F", '="Gold"&"Plus"', None, None],
            ["GX000002", "Bo", "Lee", "1981-01-02", "M", "P", "2026-01-01", "=DATE(2026,12,31)"],
            ["GX000003", "Cy", "Lee", "1982-01-02", "F", "P", "2026-01-01", None],
        ],
    )

    # an Excel-saved workbook's formula with its result, and one whose text result is empty
    def calculated_by_excel(xml: bytes) -> bytes:
        name = b'<c r="C4" t="inlineStr"><is><t>Lee</t></is></c>'
        assert name in xml and b'r="H4"' not in xml
        xml = xml.replace(name, b'<c r="C4" t="str"><f>"Lee"</f><v>Lee</v></c>')
        empty_end = b'<c r="H4" t="str"><f>""</f><v></v></c>'
        return xml.replace(b"</row></sheetData>", empty_end + b"</row></sheetData>")

    _with_sheet_xml(path, calculated_by_excel)
    rows = list(read_rows(path, GLOBEX.inbound))
    assert [(r.line, r.problem) for r in rows] == [
        (
            2,
            "program: a formula without its computed value (the workbook was saved by a"
            " program that does not calculate: open and save it in Excel, or export values)",
        ),
        (
            3,
            "eligibility_end_date: a formula without its computed value (the workbook was saved"
            " by a program that does not calculate: open and save it in Excel, or export values)",
        ),
        (4, None),
    ]
    assert row_dict(GLOBEX.inbound, rows[2])["last_name"] == "Lee"


def test_a_formula_without_its_result_in_cells_without_references_rejects_its_row(tmp_path):
    # a cell's reference (r="H3") is optional in the format; the scan for formulas without
    # results went by it, so such a workbook's uncalculated coverage end loaded as "no end"
    import re

    path = _workbook(
        tmp_path,
        [
            ["GX000001", "Ann", "Lee", "1980-01-02", "F", "P", "2026-01-01", None],
            ["GX000002", "Bo", "Lee", "1981-01-02", "M", "P", "2026-01-01", "=DATE(2026,12,31)"],
            ["GX000003", "Cy", "Lee", "1982-01-02", "F", "P", "2026-01-01", "2026-06-30"],
        ],
    )

    def without_references(xml: bytes) -> bytes:
        assert b"<f>DATE(2026,12,31)</f>" in xml and b"<v>" not in xml.split(b"<f>")[1][:40]
        return re.sub(rb'(<c\b[^>]*?) r="[A-Z]+[0-9]+"', rb"\1", xml)

    _with_sheet_xml(path, without_references)
    rows = list(read_rows(path, GLOBEX.inbound))
    assert [(r.line, (r.problem or "")[:60]) for r in rows] == [
        (2, ""),
        (3, "eligibility_end_date: a formula without its computed value ("),
        (4, ""),
    ]
    assert row_dict(GLOBEX.inbound, rows[2])["eligibility_end_date"] == "2026-06-30"


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_utf16_file_for_a_utf8_partner_is_quarantined_saying_it_is_utf16(tmp_path, arrow):
    # it said "byte 0xff at offset 0", which tells a partner nothing
    text = "Employee ID,First Name,Last Name,Date of Birth\r\nEMP00001,Ann,Lee,01/02/1980\r\n"
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode("utf-16"))  # with its byte order mark
    with pytest.raises(UnreadableFileError) as caught:
        _read_all(path, ACME.inbound, arrow)
    assert "starts with a UTF-16 byte order mark, so it is UTF-16 text" in caught.value.reason
    assert "set its encoding to utf-16" in caught.value.reason


def test_a_placeholder_ssn_never_issued_is_rejected_not_taken_for_a_member(tmp_path):
    # 000-00-0000 loaded as a member (last 4 "0000"): every placeholder row one member
    path = tmp_path / "umbrella_2.csv"
    body = ["000-00-0000", "666-12-3456", "123-00-4567", "123-45-0000", "912-70-1234"]
    path.write_text(
        "SSN|FIRST_NAME|LAST_NAME|BIRTH_DATE|PLAN_CODE|COVERAGE_BEGIN|COVERAGE_END\n"
        + "".join(f"{ssn}|Ann|Lee|1980-01-02|P|2024-01-01|\n" for ssn in body)
    )
    validator = RowValidator(UMBRELLA, "f", dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
    results = [validator.validate(b) for b in _read_all(path, UMBRELLA.inbound, True)]
    rejects = [r for result in results for r in result.rejects]
    assert [(r.line, r.key, r.errors) for r in rejects] == [
        (2, "***-**-0000", ["ssn: ***-**-0000 is no SSN: area 000 is never issued"]),
        (3, "***-**-3456", ["ssn: ***-**-3456 is no SSN: area 666 is never issued"]),
        (4, "***-**-4567", ["ssn: ***-**-4567 is no SSN: group 00 is never issued"]),
        (5, "***-**-0000", ["ssn: ***-**-0000 is no SSN: serial 0000 is never issued"]),
    ]
    assert [row["ssn_last4"] for r in results for row in r.valid.to_pylist()] == ["1234"]


def test_an_allowed_value_in_another_case_is_taken_as_the_config_spells_it(tmp_path):
    # `m` was rejected as not one of [M, F, U, X], though staging upper-cases gender anyway
    path = _workbook(
        tmp_path,
        [
            ["GX000001", "Ann", "Lee", "1980-01-02", "f", "P", None, None],
            ["GX000002", "Bo", "Lee", "1981-01-02", "M", "P", None, None],
            ["GX000003", "Cy", "Lee", "1982-01-02", "q", "P", None, None],
        ],
    )
    validator = RowValidator(GLOBEX, "f", dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
    results = [validator.validate(b) for b in _read_all(path, GLOBEX.inbound, False)]
    assert [row["gender"] for r in results for row in r.valid.to_pylist()] == ["F", "M"]
    [reject] = [reject for r in results for reject in r.rejects]
    assert reject.line == 4 and "gender: 'q' must be one of ['M', 'F', 'U', 'X']" in reject.errors


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_an_overlong_value_rejects_its_row_and_the_rest_of_the_file_reads(tmp_path, arrow):
    # over the csv module's field limit (128 KiB), the whole file was quarantined
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program"
    rows = [f"EMP{i:05d},Ann,Lee,01/02/1980,a@b.example,Gold" for i in range(1, 1001)]
    rows[1] = rows[1].replace(",Ann,", f',"{"x" * 200_000}",')  # line 3
    path = tmp_path / "f.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    batches = _read_all(path, ACME.inbound, arrow)
    problems = {b.lines[p].as_py(): problem for b in batches for p, problem in b.problems.items()}
    assert problems == {3: "first_name: 200,000 characters, longer than a value can be (10,000)"}
    assert sum(len(b) for b in batches) == 1000
    assert max(len(v or "") for b in batches for v in b.columns["first_name"].to_pylist()) == 10_000


def test_a_byte_positioned_layout_reads_multibyte_names_in_place(tmp_path):
    # padded by UTF-8 bytes (as byte-positioned exports do), `Muñoz` took a byte more than a
    # character: the line was "80 characters, shorter than 81", with every field after the
    # name read one column off
    def line(last: str, first: str) -> bytes:
        fields = [("IN000001", 10), (last, 20), (first, 15), ("19800102", 8)]
        fields += [("DIABETESPLUS", 12), ("20240101", 8), ("20241231", 8)]
        return b"".join(v.encode().ljust(width) for v, width in fields)

    path = tmp_path / "f.txt"
    path.write_bytes(line("MUÑOZ", "INÉS") + b"\n" + line("SMITH", "JO") + b"\n")
    by_characters = list(read_rows(path, INITECH.inbound))
    assert by_characters[0].problem == (
        "line is 79 characters, shorter than the record length 81 (it is 81 bytes: if the"
        " partner's positions count bytes, set fixed_width.positions: bytes)"
    )
    options = INITECH.inbound.fixed_width.model_copy(update={"positions": "bytes"})
    by_bytes = INITECH.inbound.model_copy(update={"fixed_width": options})
    rows = list(read_rows(path, by_bytes))
    assert [r.problem for r in rows] == [None, None]
    first = row_dict(by_bytes, rows[0])
    assert (first["last_name"], first["first_name"], first["eligibility_end_date"]) == (
        "MUÑOZ",
        "INÉS",
        "20241231",
    )
    # a field boundary inside a character names the field
    whole = line("MUÑOZ", "INÉS")
    names = "MUÑOZ".encode().ljust(20) + "INÉS".encode().ljust(15)
    cut = whole.replace(names, b"X" * 19 + "Ñ".encode() + b"NES".ljust(14))  # Ñ spans both
    path.write_bytes(cut + b"\n")
    [row] = list(read_rows(path, by_bytes))
    assert "last_name: its bytes 11-30 cut a character in two" in row.problem


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_stray_quote_swallowing_rows_quarantines_the_file_rather_than_drop_them(tmp_path, arrow):
    # a quote opened on line 11 and closed on line 3001 made one 218K-character value of the
    # rows between: one row was rejected, and the ~3,000 others were neither loaded nor told
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program"
    rows = [f"EMP{i:05d},Ann,Lee,01/02/1980,a@b.example,Gold" for i in range(1, 5001)]
    rows[9] = rows[9].replace(",Ann,", ',"Ann,')  # line 11
    rows[2999] = rows[2999].replace(",Lee,", ',Lee",')  # line 3001
    path = tmp_path / "f.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(UnreadableFileError) as caught:
        _read_all(path, ACME.inbound, arrow)
    assert caught.value.reason.startswith(
        "the record on line 11 holds a quoted value running to line 3001"
    )
    # one far longer still: the csv module stops at its field limit, and says where
    rows = [f"EMP{i:05d},Ann,Lee,01/02/1980,a@b.example,Gold" for i in range(1, 30_001)]
    rows[1] = rows[1].replace(",Ann,", ',"Ann,')  # line 3, never closed
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(UnreadableFileError) as caught:
        _read_all(path, ACME.inbound, arrow)
    assert "a value from line 3 runs past 1,048,576 characters" in caught.value.reason


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_trailing_delimiter_on_the_header_names_no_column(tmp_path, arrow):
    # every row was rejected: "has 8 fields, the header has 9"
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program,,"
    rows = [f"EMP{i:05d},Ann,Lee,01/02/1980,a@b.example,Gold" for i in range(1, 1001)]
    rows[5] += ",,"
    path = tmp_path / "f.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    batches = _read_all(path, ACME.inbound, arrow)
    assert sum(len(b) for b in batches) == 1000
    assert [p for b in batches for p in b.problems.values()] == []
    # every line ending in delimiters, as some exports write them: the fast path still reads it
    path.write_text(header + "\n" + "\n".join(row.removesuffix(",,") + ",," for row in rows))
    batches = list(read_batches(path, ACME.inbound, 1_000, arrow))
    assert sum(len(b) for b in batches) == 1000


def test_an_array_formula_without_results_and_an_excel_error_reject_their_rows(tmp_path):
    # only an array formula's first cell holds it: the rows below read blank (no end, eligible
    # for ever); a failed VLOOKUP's #N/A loaded as the member's program
    rows = [
        ["GX000001", "Ann", "Lee", "1980-01-02", "F", "P", "2026-01-01", None],
        ["GX000002", "Bo", "Lee", "1981-01-02", "M", "P", "2026-01-01", None],
        ["GX000003", "Cy", "Lee", "1982-01-02", "F", "P", "2026-01-01", "2026-12-31"],
        ["GX000004", "Di", "Lee", "1983-01-02", "F", "P", "2026-01-01", None],
    ]
    path = _workbook(tmp_path, rows)

    def array_and_error(xml: bytes) -> bytes:
        # H3, the array's other cell, is left out, as writers do with an empty cell
        array = b'<c r="H2"><f t="array" ref="H2:H9">DATE(2026,12,31)+{0;0}</f></c>'
        assert b'<c r="G2"' in xml and b'r="H2"' not in xml and b'r="H3"' not in xml
        xml = re.sub(rb'(<c r="G2"[^>]*>.*?</c>)', lambda m: m.group(1) + array, xml, count=1)
        plan = re.search(rb'<c r="F5"[^>]*>.*?</c>', xml).group(0)
        return xml.replace(plan, b'<c r="F5" t="e"><f>VLOOKUP(A5,X:Y,2,0)</f><v>#N/A</v></c>')

    _with_sheet_xml(path, array_and_error)
    problems = {r.line: r.problem for r in read_rows(path, GLOBEX.inbound)}
    assert sorted(problems) == [2, 3, 4, 5]  # the range's rows past the data are blank rows
    assert problems[2].startswith("eligibility_end_date: a formula without its computed value")
    assert problems[3].startswith("eligibility_end_date: a formula without its computed value")
    assert problems[4] is None  # in the range, but with its value
    assert problems[5].startswith("eligibility_end_date: a formula without its computed")
    assert problems[5].endswith("; program (#N/A): the cell holds an Excel error, not a value")


def test_a_utf16_file_is_named_for_what_it_is_whatever_the_format_or_encoding(tmp_path):
    # an 834 said "does not start with an ISA segment", a latin-1 partner's CSV "missing
    # required column(s)", and a UTF-16 file without a byte order mark the same
    text = "Employee ID,First Name,Last Name,Date of Birth\r\nEMP00001,Ann,Lee,01/02/1980\r\n"
    latin1 = ACME.inbound.model_copy(
        update={"csv": ACME.inbound.csv_options.model_copy(update={"encoding": "latin-1"})}
    )
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(UnreadableFileError, match="starts with a UTF-16 byte order mark"):
        list(read_rows(path, latin1))
    path.write_bytes(text.encode("utf-16-le"))
    with pytest.raises(UnreadableFileError, match="looks like UTF-16 text without a byte order"):
        list(read_rows(path, ACME.inbound))
    # a UTF-8 byte order mark for a latin-1 partner: "missing required column 'Employee ID'"
    path.write_bytes(text.encode("utf-8-sig"))
    with pytest.raises(UnreadableFileError, match="starts with a UTF-8 byte order mark"):
        list(read_rows(path, latin1))
    # partners configured for UTF-32 or UTF-16 get theirs, and a clear word when a file lacks
    # the mark those need ("UnicodeError while importing": recorded as failed)
    for name in ("utf-32", "utf-16"):
        wide = ACME.inbound.model_copy(
            update={"csv": ACME.inbound.csv_options.model_copy(update={"encoding": name})}
        )
        path.write_bytes(text.encode(name))
        assert [r.line for r in read_rows(path, wide)] == [2]
        path.write_bytes(text.encode("utf-8"))
        with pytest.raises(UnreadableFileError, match=f"no byte order mark, which {name} needs"):
            list(read_rows(path, wide))
    x12 = tmp_path / "f.834"
    x12.write_bytes(("ISA*00*" + " " * 10 + "*00~").encode("utf-16"))
    wayne = load_partner_config(REPO / "partner_configs" / "wayne_health.yaml")
    with pytest.raises(UnreadableFileError, match="starts with a UTF-16 byte order mark"):
        list(read_rows(x12, wayne.inbound))


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_a_short_stray_quote_that_takes_rows_quarantines_the_file(tmp_path, arrow):
    # with the field count right by chance, STRAY001 loaded with a last name made of the next
    # two rows and STRAY003's birth date, and those two members vanished unreported
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program"
    rows = [
        'STRAY001,Ann,"Bud,01/02/1980,a@b.example,Gold',
        "STRAY002,Bo,Lee,01/02/1981,b@b.example,Gold",
        'STRAY003,Cy,O"Neil,03/04/1982,c@b.example,Gold',
        "STRAY004,Di,Lee,01/02/1983,d@b.example,Gold",
    ]
    path = tmp_path / "f.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(UnreadableFileError) as caught:
        _read_all(path, ACME.inbound, arrow)
    assert caught.value.reason.startswith(
        "the record on line 2 holds a quoted value running to line 4 whose lines read as rows"
    )


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "stdlib"])
def test_long_multiline_values_that_read_as_no_rows_load(tmp_path, arrow):
    # a 200-line note (an unmapped column) quarantined the file as a stray quote; a quoted
    # value over lines with a wrong field count names the lines it ran over
    header = "Employee ID,First Name,Last Name,Date of Birth,Email,Program,Notes"
    note = "\n".join(f"call {i}: left a message, will retry" for i in range(200))
    rows = [
        f'EMP00001,Ann,Lee,01/02/1980,a@b.example,Gold,"{note}"',
        'EMP00002,Bo,"Lee\nSmith",01/02/1980,b@b.example,Gold,',
        'EMP00003,Cy,"Lee\nSmith",01/02/1980,c@b.example',
    ]
    path = tmp_path / "f.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    batches = _read_all(path, ACME.inbound, arrow)
    problems = {b.lines[p].as_py(): problem for b in batches for p, problem in b.problems.items()}
    assert sum(len(b) for b in batches) == 3
    assert problems == {
        204: "has 5 fields, the header has 7 (a quoted value runs from line 204 to line 205:"
        " the lines between were read into it)"
    }


def test_a_member_id_longer_than_the_api_takes_is_rejected_at_import(tmp_path):
    # it loaded, and the eligibility API refused every check for it (422: at most 64 chars)
    text = (REPO / "partner_configs" / "acme_corp.yaml").read_text()
    text = text.replace('employee_id: {type: string, pattern: "^[A-Z0-9]{6,10}$"}', "")
    (tmp_path / "acme_corp.yaml").write_text(text)
    config = load_partner_config(tmp_path / "acme_corp.yaml")
    assert config.inbound.validations.get("employee_id") is None
    path = _acme_csv(
        tmp_path,
        "long_id.csv",
        ["E" * 65 + ",Ann,Lee,01/02/1980,,,,", "E" * 64 + ",Bo,Li,01/02/1980,,,,"],
    )
    valid, rejects = _validated(config, path)
    assert [row["employee_id"] for row in valid] == ["E" * 64]
    [reject] = rejects
    assert reject.line == 2 and "longer than 64 characters" in reject.errors[0]
