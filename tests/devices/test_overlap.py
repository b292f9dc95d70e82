"""An iPhone and a Watch both counting the same walk: the day is counted once."""

from __future__ import annotations

import dagster as dg

from ingestion.devices.apple_health.load import import_export
from mdp.orchestrate import run_assets

EXPORT = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!ELEMENT HealthData (ExportDate,Me,(Record|Workout)*)>
]>
<HealthData locale="en_US">
 <ExportDate value="2026-11-20 09:00:00 -0600"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth="1980-01-01"/>
 <Record type="HKQuantityTypeIdentifierStepCount" sourceName="Ann's iPhone" sourceVersion="17.1"
  device="&lt;&lt;HKDevice: 0x1&gt;, name:iPhone, manufacturer:Apple Inc., model:iPhone, hardware:iPhone15,2, software:17.1&gt;"
  unit="count" creationDate="2026-11-19 10:31:00 -0600" startDate="2026-11-19 10:00:00 -0600"
  endDate="2026-11-19 10:30:00 -0600" value="3000"/>
 <Record type="HKQuantityTypeIdentifierStepCount" sourceName="Ann's iPhone" sourceVersion="17.1"
  device="&lt;&lt;HKDevice: 0x1&gt;, name:iPhone, manufacturer:Apple Inc., model:iPhone, hardware:iPhone15,2, software:17.1&gt;"
  unit="count" creationDate="2026-11-19 18:31:00 -0600" startDate="2026-11-19 18:00:00 -0600"
  endDate="2026-11-19 18:30:00 -0600" value="1000"/>
 <Record type="HKQuantityTypeIdentifierStepCount" sourceName="Ann's Apple Watch" sourceVersion="10.1"
  device="&lt;&lt;HKDevice: 0x2&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch, hardware:Watch6,1, software:10.1&gt;"
  unit="count" creationDate="2026-11-19 10:31:00 -0600" startDate="2026-11-19 10:00:00 -0600"
  endDate="2026-11-19 10:30:00 -0600" value="3200"/>
 <Record type="HKQuantityTypeIdentifierStepCount" sourceName="Ann's Apple Watch" sourceVersion="10.1"
  device="&lt;&lt;HKDevice: 0x2&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch, hardware:Watch6,1, software:10.1&gt;"
  unit="count" creationDate="2026-11-19 18:31:00 -0600" startDate="2026-11-19 18:00:00 -0600"
  endDate="2026-11-19 18:30:00 -0600" value="1100"/>
 <Record type="HKQuantityTypeIdentifierBodyMass" sourceName="Ann's iPhone" unit="lb"
  creationDate="2026-11-19 07:00:00 -0600" startDate="2026-11-19 07:00:00 -0600"
  endDate="2026-11-19 07:00:00 -0600" value="150"/>
</HealthData>
"""


def test_iphone_and_watch_steps_are_kept_apart_raw_and_counted_once_in_the_mart(platform, tmp_path):
    path = tmp_path / "export.xml"
    path.write_text(EXPORT)
    import_export(path, "member-overlap", platform.params, platform.settings.state_dir / "dlt")
    raw = platform.query(
        "select source_name, sum(value) from raw_apple_health.samples"
        " where member_id = 'member-overlap' and record_type = 'steps' group by 1 order by 1"
    )
    assert raw == [("Ann's Apple Watch", 4300.0), ("Ann's iPhone", 4000.0)]

    dbt_models = dg.AssetSelection.key_prefixes("staging", "intermediate", "marts", "snapshots")
    assert run_assets(platform.settings, select=dbt_models).success
    day = platform.query(
        "select local_date::text, steps, devices_reporting from marts.fct_daily_steps"
        " where member_id = 'member-overlap'"
    )
    # no primary device: the device that counted the most that day (the Watch) is counted
    assert day == [("2026-11-19", 4300, 2)]
    weight = platform.query(
        "select round(weight_kg::numeric, 2) from marts.fct_weight_readings where member_id = 'member-overlap'"
    )
    assert weight == [(round(150 * 0.45359237, 2),)] or float(weight[0][0]) == round(
        150 * 0.45359237, 2
    )
