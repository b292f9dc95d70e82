"""The device marts build incrementally: new days, revisions and Apple deletions reach them,
and the result equals a full rebuild."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from ingestion.devices.apple_health.uploads import process_pending_uploads
from mdp.orchestrate import run_assets
from orchestration.defs.devices.jobs import DEVICE_SOURCES
from serving.app import create_app
from serving.apple_upload import UPLOAD_PATH
from serving.member_tokens import issue_member_token
from tests.devices.test_apple_uploads_load import KEY, sample

# the device models only: what the device sources feed, without the sources themselves
DBT_MODELS = DEVICE_SOURCES.downstream() - DEVICE_SOURCES
MARTS = ("fct_daily_steps", "fct_weight_readings", "fct_activities")
MEMBER = "member-incremental"


@pytest.fixture
def client(platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MDP_MEMBER_TOKEN_KEY", KEY)
    with TestClient(create_app(params=platform.params, partner_configs={})) as test_client:
        yield test_client


def _build(platform) -> None:
    assert run_assets(platform.settings, select=DBT_MODELS).success


def _load_fitbit_day(platform, day: dt.date, steps: int) -> None:
    """A dlt-shaped raw row: a new load id, as a sync would write it (merge on the key)."""
    load_id = f"{time.time():.6f}"
    platform.query(
        "delete from raw_fitbit.daily_steps where connection_id = 'fitbit-inc' and activity_date = %s",
        (day,),
    )
    platform.query(
        "insert into raw_fitbit.daily_steps (connection_id, member_id, activity_date, steps,"
        " timezone, fetched_at, _dlt_load_id, _dlt_id)"
        " values ('fitbit-inc', %s, %s, %s, 'America/Denver', now(), %s, %s)",
        (MEMBER, day, steps, load_id, uuid.uuid4().hex),
    )


def _upload(client: TestClient, body: dict) -> None:
    token = issue_member_token(MEMBER, key=KEY)
    response = client.post(UPLOAD_PATH, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202, response.text


def _steps(platform) -> dict[str, int]:
    rows = platform.query(
        "select local_date::text, steps from marts.fct_daily_steps where member_id = %s",
        (MEMBER,),
    )
    return dict(rows)


def _mart_contents(platform) -> dict[str, list[tuple]]:
    contents = {}
    for mart in MARTS:
        columns = [
            row[0]
            for row in platform.query(
                "select column_name from information_schema.columns where table_schema = 'marts'"
                " and table_name = %s and column_name <> '_built_at' order by ordinal_position",
                (mart,),
            )
        ]
        contents[mart] = platform.query(
            f"select {', '.join(columns)} from marts.{mart} order by {', '.join(columns[:3])}"
        )
    return contents


def test_new_days_revisions_and_deletions_reach_the_marts_incrementally(platform, client):
    day1, day2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    _load_fitbit_day(platform, day1, 5000)
    _build(platform)
    assert _steps(platform) == {"2026-03-01": 5000}

    # a new day and a revision of the first, loaded later: only they are re-read
    _load_fitbit_day(platform, day2, 7000)
    _load_fitbit_day(platform, day1, 5500)
    _build(platform)
    assert _steps(platform) == {"2026-03-01": 5500, "2026-03-02": 7000}

    # the member's phone uploads a walk on day 3, then deletes it: the day disappears
    walk = sample(start="2026-03-03T08:00:00-07:00", end="2026-03-03T08:30:00-07:00", value=3000)
    _upload(client, {"samples": [walk]})
    process_pending_uploads(platform.params, platform.settings.state_dir / "dlt")
    _build(platform)
    assert _steps(platform)["2026-03-03"] == 3000

    _upload(client, {"deleted": [walk["uuid"]]})
    assert (
        process_pending_uploads(platform.params, platform.settings.state_dir / "dlt").deletions == 1
    )
    _build(platform)
    assert "2026-03-03" not in _steps(platform)
    assert platform.query(
        "select count(*) from intermediate.int_device_readings_unified where member_id = %s"
        " and provider = 'apple_health'",
        (MEMBER,),
    ) == [(0,)]

    # a build with nothing new changes nothing; a full rebuild gives the same marts
    incremental = _mart_contents(platform)
    _build(platform)
    assert _mart_contents(platform) == incremental
    platform.query(
        "drop table intermediate.int_device_readings_unified cascade;"
        + "".join(f"drop table marts.{mart} cascade;" for mart in MARTS)
    )
    _build(platform)
    assert _mart_contents(platform) == incremental
