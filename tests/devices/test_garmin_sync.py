"""Garmin end to end: emulator push -> webhook inbox -> dlt (merge on summaryId) -> marts."""

from __future__ import annotations

import datetime as dt

import pytest
from starlette.testclient import TestClient

from ingestion.devices.connections import connect_device, find_connection
from mdp.orchestrate import run_assets
from orchestration.defs.devices.jobs import DEVICE_SOURCES
from sandbox.garmin_emulator import GarminState
from serving.app import create_app

USER = "GARMIN-U1"
MEMBER = "member-garmin-1"


@pytest.fixture(scope="module")
def garmin(platform):
    state = GarminState()
    token = state.add_user(USER, timezone="America/Denver")
    connect_device(
        platform.params, MEMBER, "garmin", USER, token, None, None, timezone="America/Denver"
    )
    return state


def _push(
    client: TestClient, state: GarminState, summary_type: str, items: list[dict], client_id=None
):
    return client.post(
        f"/webhooks/garmin/{summary_type}",
        json={summary_type: items},
        headers={"garmin-client-id": client_id or state.consumer_key},
    )


def _steps(platform, day):
    return platform.query(
        "select steps from marts.fct_daily_steps where member_id = %s and local_date = %s",
        (MEMBER, day),
    )


def test_pushed_day_lands_once_and_a_revised_summary_replaces_it(platform, garmin):
    day = dt.date.today() - dt.timedelta(days=1)
    uploaded = garmin.sync(USER, day)
    app = create_app(garmin_client_id=garmin.consumer_key)
    with TestClient(app) as client:
        assert (
            _push(client, garmin, "dailies", uploaded["dailies"], client_id="wrong").status_code
            == 401
        )
        for _ in range(3):
            assert _push(client, garmin, "dailies", uploaded["dailies"]).status_code == 200
        assert platform.query(
            "select count(*) from devices.webhook_inbox where provider = 'garmin' and processed_at is null"
        ) == [(len(uploaded["dailies"]),)]
        assert run_assets(platform.settings, select=DEVICE_SOURCES.downstream()).success
        assert _steps(platform, day) == [(uploaded["dailies"][0]["steps"],)]

        revised = garmin.revise(USER, day)
        assert _push(client, garmin, "dailies", [revised]).status_code == 200
        assert run_assets(platform.settings, select=DEVICE_SOURCES.downstream()).success
        assert _steps(platform, day) == [(revised["steps"],)]
        # Garmin re-sends the first version (a retry, a replay) after both were processed:
        # it loaded its values again over the revision's
        assert _push(client, garmin, "dailies", uploaded["dailies"]).status_code == 200
        assert platform.query(
            "select count(*) from devices.webhook_inbox where provider = 'garmin'"
            " and processed_at is null"
        ) == [(0,)]
        assert run_assets(platform.settings, select=DEVICE_SOURCES.downstream()).success
    assert _steps(platform, day) == [(revised["steps"],)]
    assert platform.query(
        "select count(*) from raw_garmin.dailies where member_id = %s and calendar_date = %s",
        (MEMBER, day),
    ) == [(1,)]


def test_deregistration_stops_the_connection_and_keeps_history(platform, garmin):
    day = dt.date.today() - dt.timedelta(days=1)
    app = create_app(garmin_client_id=garmin.consumer_key)
    token = find_connection(platform.params, "garmin", USER).access_token
    with TestClient(app) as client:
        response = client.post(
            "/webhooks/garmin/deregistrations",
            json={"deregistrations": [{"userId": USER, "userAccessToken": token}]},
            headers={"garmin-client-id": garmin.consumer_key},
        )
        assert response.status_code == 200
    assert run_assets(platform.settings, select=DEVICE_SOURCES.downstream()).success
    assert find_connection(platform.params, "garmin", USER).status == "revoked"
    assert _steps(platform, day) != []
