"""A revised source record replaces its reading in the incremental device models even when the
revision moves the reading's timestamp or day (a new time zone, a re-sent Apple sample): the
incremental build equals a full rebuild, for every provider the unified readings take."""

from __future__ import annotations

import time

from mdp.orchestrate import run_assets
from tests.devices.test_incremental_marts import DBT_MODELS

UNIFIED = "intermediate.int_device_readings_unified"
FACTS = ("marts.fct_daily_steps", "marts.fct_weight_readings")
# bookkeeping of one build, not content: a full rebuild cannot reproduce it
BUILD_COLUMNS = ("_built_at", "replaced_local_date")


def _build(platform) -> None:
    assert run_assets(platform.settings, select=DBT_MODELS).success


def _load_id() -> str:
    """A new dlt load id (the load's start, Unix seconds), as each sync writes."""
    time.sleep(0.01)
    return f"{time.time():.6f}"


def _load_fitbit(platform, steps: int, timezone: str) -> None:
    load_id = _load_id()
    platform.query(
        "delete from raw_fitbit.daily_steps where connection_id = 'fitbit-rev';"
        "delete from raw_fitbit.weight_logs where connection_id = 'fitbit-rev';"
        "insert into raw_fitbit.daily_steps (connection_id, member_id, activity_date, steps,"
        " timezone, fetched_at, _dlt_load_id, _dlt_id)"
        " values ('fitbit-rev', 'member-fitbit-rev', '2026-11-01', %(steps)s, %(tz)s, now(),"
        " %(load)s, md5(%(load)s || 'd'));"
        "insert into raw_fitbit.weight_logs (connection_id, member_id, log_id, log_date, log_time,"
        " weight_kg, bmi, source, timezone, fetched_at, _dlt_load_id, _dlt_id)"
        " values ('fitbit-rev', 'member-fitbit-rev', 77, '2026-11-01', '07:15:00', 80.5, 24.0,"
        " 'Aria', %(tz)s, now(), %(load)s, md5(%(load)s || 'w'))",
        {"steps": steps, "tz": timezone, "load": load_id},
    )


def _load_garmin(platform, steps: int, start: str, offset_seconds: int) -> None:
    """A daily summary and a body composition re-sent under the same summary ids."""
    load_id = _load_id()
    platform.query(
        "delete from raw_garmin.dailies where summary_id = 'garmin-rev-daily';"
        "delete from raw_garmin.body_comps where summary_id = 'garmin-rev-weight';"
        "insert into raw_garmin.dailies (summary_id, connection_id, member_id, calendar_date,"
        " start_time, utc_offset_seconds, duration_seconds, steps, received_at, _dlt_load_id,"
        " _dlt_id) values ('garmin-rev-daily', 'garmin-rev', 'member-garmin-rev', '2026-11-01',"
        " %(start)s, %(offset)s, 86400, %(steps)s, now(), %(load)s, md5(%(load)s || 'd'));"
        "insert into raw_garmin.body_comps (summary_id, connection_id, member_id, measured_at,"
        " utc_offset_seconds, weight_kg, received_at, _dlt_load_id, _dlt_id)"
        " values ('garmin-rev-weight', 'garmin-rev', 'member-garmin-rev',"
        " %(start)s::timestamptz + interval '7 hours', %(offset)s, 70.2, now(), %(load)s,"
        " md5(%(load)s || 'w'))",
        {"steps": steps, "start": start, "offset": offset_seconds, "load": load_id},
    )


def _load_apple(platform, start: str, local_date: str, offset_minutes: int) -> None:
    """One step sample under one natural key: the export's whole seconds, then the app's."""
    platform.query(
        "delete from raw_apple_health.samples where member_id = 'member-apple-rev';"
        "insert into raw_apple_health.samples (member_id, record_type, hk_type, source_name,"
        " device_model, start_at, end_at, local_date, utc_offset_minutes, value, unit,"
        " natural_key, creation_at, _dlt_load_id)"
        " values ('member-apple-rev', 'steps', 'HKQuantityTypeIdentifierStepCount', 'Watch',"
        " 'Watch', %(start)s, %(start)s::timestamptz + interval '30 minutes', %(local_date)s,"
        " %(offset)s, 3000, 'count', 'apple-rev-key', now(), %(load)s)",
        {"start": start, "local_date": local_date, "offset": offset_minutes, "load": _load_id()},
    )


def _contents(platform, table: str) -> list[tuple]:
    schema, name = table.split(".")
    columns = [
        row[0]
        for row in platform.query(
            "select column_name from information_schema.columns where table_schema = %s"
            " and table_name = %s order by ordinal_position",
            (schema, name),
        )
        if row[0] not in BUILD_COLUMNS
    ]
    return platform.query(
        f"select {', '.join(columns)} from {table} where member_id like 'member-%%-rev'"
        f" order by {', '.join(columns)}"
    )


def _steps(platform) -> list[tuple]:
    return platform.query(
        "select member_id, local_date::text, steps from marts.fct_daily_steps"
        " where member_id like 'member-%%-rev' order by 1, 2"
    )


def test_revisions_that_move_a_reading_replace_it_as_a_full_rebuild_would(platform):
    _load_fitbit(platform, 5000, "America/New_York")
    _load_garmin(platform, 8000, "2026-11-01T04:00:00+00:00", -4 * 3600)
    _load_apple(platform, "2026-11-01T23:30:00-05:00", "2026-11-01", -300)
    _build(platform)
    assert _steps(platform) == [
        ("member-apple-rev", "2026-11-01", 3000),
        ("member-fitbit-rev", "2026-11-01", 5000),
        ("member-garmin-rev", "2026-11-01", 8000),
    ]

    # every record revised so that its timestamp moves; the Apple sample also moves a day
    _load_fitbit(platform, 5200, "Europe/Berlin")
    _load_garmin(platform, 8100, "2026-11-01T05:00:00+00:00", -5 * 3600)
    _load_apple(platform, "2026-11-02T04:30:00.250+00:00", "2026-11-02", 60)
    _build(platform)
    assert _steps(platform) == [
        ("member-apple-rev", "2026-11-02", 3000),
        ("member-fitbit-rev", "2026-11-01", 5200),
        ("member-garmin-rev", "2026-11-01", 8100),
    ]
    assert platform.query(
        f"select member_id, metric, count(*) from {UNIFIED} where member_id like 'member-%%-rev'"
        " group by 1, 2 order by 1, 2"
    ) == [
        ("member-apple-rev", "steps", 1),
        ("member-fitbit-rev", "steps", 1),
        ("member-fitbit-rev", "weight", 1),
        ("member-garmin-rev", "steps", 1),
        ("member-garmin-rev", "weight", 1),
    ]
    assert platform.query(
        "select member_id, measured_at::text from marts.fct_weight_readings"
        " where member_id like 'member-%%-rev' order by 1"
    ) == [
        ("member-fitbit-rev", "2026-11-01 06:15:00+00"),  # 07:15 in Berlin
        ("member-garmin-rev", "2026-11-01 12:00:00+00"),
    ]

    # a build with nothing new changes nothing; a full rebuild gives the same tables
    incremental = {table: _contents(platform, table) for table in (UNIFIED, *FACTS)}
    _build(platform)
    assert {table: _contents(platform, table) for table in incremental} == incremental
    platform.query(
        f"drop table {UNIFIED} cascade;"
        + "".join(
            f"drop table marts.{mart} cascade;"
            for mart in ("fct_daily_steps", "fct_weight_readings", "fct_activities")
        )
    )
    _build(platform)
    assert {table: _contents(platform, table) for table in incremental} == incremental


def test_garmin_local_days_do_not_depend_on_the_sessions_time_zone(platform):
    # 23:30 UTC at +01:00 is the next day; cast in the session's zone (a server not set to
    # UTC), weights and activities landed on the day before
    if platform.query("select to_regclass('staging.stg_garmin__body_comps')") == [(None,)]:
        _build(platform)
    load_id = _load_id()
    platform.query(
        "insert into raw_garmin.body_comps (summary_id, connection_id, member_id, measured_at,"
        " utc_offset_seconds, weight_kg, received_at, _dlt_load_id, _dlt_id)"
        " values ('garmin-tz-weight', 'garmin-tz', 'member-garmin-tz',"
        " '2026-11-01 23:30:00+00', 3600, 70.2, now(), %(load)s, md5(%(load)s || 'tz'));"
        "insert into raw_garmin.activities (summary_id, connection_id, member_id, start_time,"
        " utc_offset_seconds, received_at, _dlt_load_id, _dlt_id)"
        " values ('garmin-tz-activity', 'garmin-tz', 'member-garmin-tz',"
        " '2026-11-01 23:30:00+00', 3600, now(), %(load)s, md5(%(load)s || 'tza'))",
        {"load": load_id},
    )
    for zone in ("UTC", "America/New_York", "Asia/Tokyo"):
        assert platform.query(
            f"set timezone = '{zone}';"
            " select (select local_date::text from staging.stg_garmin__body_comps"
            "         where summary_id = 'garmin-tz-weight'),"
            "        (select local_date::text from staging.stg_garmin__activities"
            "         where activity_id = 'garmin-tz-activity')"
        ) == [("2026-11-02", "2026-11-02")], zone
