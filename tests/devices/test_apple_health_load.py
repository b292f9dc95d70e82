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
