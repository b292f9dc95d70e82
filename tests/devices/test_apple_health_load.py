"""Apple Health exports into raw tables and the device marts, idempotently."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from ingestion.devices.apple_health.load import import_export
from mdp.orchestrate import run_assets

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "apple_health"
EXPORT = SAMPLES / "tdda__export6s3sample.xml"


@pytest.mark.skipif(not EXPORT.exists(), reason="shared samples not present")
def test_sample_export_loads_once_and_reaches_the_step_mart(platform):
    pipelines = platform.settings.state_dir / "dlt"
    first = import_export(EXPORT, "member-apple-1", platform.params, pipelines)
    count = platform.query(
        "select count(*) from raw_apple_health.samples where member_id = 'member-apple-1'"
    )
    import_export(EXPORT, "member-apple-1", platform.params, pipelines)
    assert (
        platform.query(
            "select count(*) from raw_apple_health.samples where member_id = 'member-apple-1'"
        )
        == count
    )
    assert 0 < count[0][0] <= sum(first.kept.values())

    dbt_models = dg.AssetSelection.key_prefixes("staging", "intermediate", "marts", "snapshots")
    assert run_assets(platform.settings, select=dbt_models).success
    if first.kept.get("steps"):
        days = platform.query(
            "select count(*), bool_and(steps >= 0) from marts.fct_daily_steps where member_id = 'member-apple-1'"
        )
        assert days[0][0] > 0 and days[0][1]


BAD_EXPORT = """<?xml version="1.0" encoding="UTF-8"?>
<HealthData locale="en_US">
 <ExportDate value="2024-01-02 08:00:00 -0500"/>
 <Record type="HKQuantityTypeIdentifierBodyMass" sourceName="Scale" unit="lb"
  startDate="2024-01-01 07:00:00 -0500" endDate="2024-01-01 07:00:00 -0500" value="-187.5"/>
 <Record type="HKQuantityTypeIdentifierBodyMass" sourceName="Scale" unit="lb"
  startDate="2024-01-01 08:00:00 -0500" endDate="2024-01-01 08:00:00 -0500" value="180"/>
</HealthData>
"""


def test_the_cli_and_the_asset_show_where_and_why_records_were_rejected(platform, tmp_path):
    # only the count was shown: which record, and why, went unsaid
    from click.testing import CliRunner

    from mdp.cli import main

    export = tmp_path / "export.xml"
    export.write_text(BAD_EXPORT)
    result = CliRunner().invoke(
        main,
        [
            "devices",
            "import-apple-export",
            str(export),
            "--member-id",
            "member-apple-bad",
            "--force",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 records rejected" in result.output
    assert "rejected: line 4: HKQuantityTypeIdentifierBodyMass value: must be positive" in (
        result.output
    )
    assert "187" not in result.output  # the weight itself is health data

    inbox = platform.settings.state_dir / "apple_health" / "inbox" / "member-apple-bad"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "export.xml").write_text(BAD_EXPORT)
    samples = dg.AssetKey(["raw_apple_health", "samples"])
    run = run_assets(platform.settings, select=dg.AssetSelection.keys(samples))
    assert run.success
    [event] = [e for e in run.get_asset_materialization_events() if e.asset_key == samples]
    rejects = event.materialization.metadata["records_rejected"].value
    assert rejects == {
        "export.xml": {
            "rejected": 1,
            "first": ["line 4: HKQuantityTypeIdentifierBodyMass value: must be positive"],
        }
    }
