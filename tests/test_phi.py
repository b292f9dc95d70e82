"""What logs may show of text a partner chose."""

from __future__ import annotations

import pytest

from ingestion.partners.imports import ImportRecord
from mdp.phi import masked_ssns


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("enrollment_Ann_Lee_234-56-7890.csv", "enrollment_Ann_Lee_***-**-7890.csv"),
        ("x_123456789.csv", "x_***-**-6789.csv"),
        ("a_123_45_6789.csv", "a_***-**-6789.csv"),
        ("enrollment_20261129_900.csv", "enrollment_20261129_900.csv"),  # a date stamp
        ("f_20261129123456.csv", "f_20261129123456.csv"),  # a longer run of digits
        ("WAYNE_834_20261129_900.x12", "WAYNE_834_20261129_900.x12"),
    ],
)
def test_an_ssn_shaped_run_in_a_file_name_is_kept_to_its_last_4(text, shown):
    assert masked_ssns(text) == shown


def test_the_ledger_keeps_the_name_and_logs_show_it_masked():
    record = ImportRecord("f1", "acme_corp", "members_123-45-6789.csv", "0" * 64, "loaded")
    assert record.shown_name == "members_***-**-6789.csv"
    assert record.columns()["filename"] == "members_123-45-6789.csv"
