"""Format readers: streaming, line numbers, and the noise real partner files carry."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion.partners.config import load_partner_config
from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.formats import read_rows, row_dict

REPO = Path(__file__).resolve().parents[2]
ACME = load_partner_config(REPO / "partner_configs" / "acme_corp.yaml")
INITECH = load_partner_config(REPO / "partner_configs" / "initech.yaml")
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


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"Employee ID,First Name\nAB123456,Ann\n", "missing required column"),
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
