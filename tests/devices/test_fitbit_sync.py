"""Fitbit end to end: emulator -> signed webhook -> inbox -> Dagster sync (dlt) -> dbt marts."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from starlette.testclient import TestClient

from ingestion.devices.connections import connect_device, find_connection
from mdp.orchestrate import run_assets
from orchestration.defs.devices.jobs import DEVICE_SOURCES
from sandbox.emulator_server import EmulatorServer
from sandbox.fitbit_emulator import FitbitState, build_notification, create_fitbit_app, sign
from serving.app import create_app

USER = "FBUSR1"


@pytest.fixture(scope="module")
def fitbit(platform):
    state = FitbitState()
    with EmulatorServer(create_fitbit_app(state)) as base_url:
        os.environ.update(
            {
                "FITBIT_API_BASE_URL": base_url,
                "FITBIT_CLIENT_ID": state.client_id,
                "FITBIT_CLIENT_SECRET": state.client_secret,
            }
        )
        access, refresh = state.add_user(USER, timezone="America/Chicago", units="lb")
        connect_device(
            platform.params,
            "member-fitbit-1",
            "fitbit",
            USER,
            access,
            refresh,
            28800,
            timezone="America/Chicago",
        )
        yield state


def _sync(platform):
    result = run_assets(
        platform.settings,
        select=DEVICE_SOURCES.downstream(),
        run_config={"ops": {"fitbit_sync": {"config": {"mode": "inbox"}}}},
    )
    assert result.success


def _notify(client: TestClient, state: FitbitState, collection: str, day: dt.date, secret=None):
    body = json.dumps(build_notification(USER, collection, day)).encode()
    return client.post(
        "/webhooks/fitbit",
        content=body,
        headers={
            "X-Fitbit-Signature": sign(body, secret or state.client_secret),
            "Content-Type": "application/json",
        },
    )


def _steps(platform, day: dt.date):
    return platform.query(
        "select steps, devices_reporting from marts.fct_daily_steps"
        " where member_id = 'member-fitbit-1' and local_date = %s",
        (day,),
    )


def test_notified_day_reaches_the_marts_once_and_a_revision_replaces_it(platform, fitbit):
    day = fitbit.local_now(USER).date() - dt.timedelta(days=1)
    app = create_app(fitbit_client_secret=fitbit.client_secret, fitbit_verification_code="v")
    with TestClient(app) as client:
        assert [_notify(client, fitbit, "activities", day).status_code for _ in range(3)] == [
            204
        ] * 3
        assert _notify(client, fitbit, "activities", day, secret="forged").status_code == 404
        pending = platform.query(
            "select count(*), max(times_received) from devices.webhook_inbox where processed_at is null"
        )
        assert pending == [(1, 3)]

        _sync(platform)
        assert _steps(platform, day) == [(fitbit.steps(USER, day), 1)]

        fitbit.revise(USER, day)
        fitbit.expire_access_token(USER)  # the sync must refresh (single-use) and carry on
        _notify(client, fitbit, "activities", day)
        _sync(platform)
    assert _steps(platform, day) == [(fitbit.steps(USER, day), 1)]
    assert platform.query(
        "select count(*) from raw_fitbit.daily_steps where activity_date = %s", (day,)
    ) == [(1,)]
    connection = find_connection(platform.params, "fitbit", USER)
    assert connection.access_token == fitbit.tokens(USER)[0]
    # the activities notification also pulled that day's workout logs, once each
    workouts = fitbit.workouts(USER, day)
    assert platform.query(
        "select count(*), coalesce(sum(steps), 0), count(distinct activity_id)"
        " from marts.fct_activities where member_id = 'member-fitbit-1' and local_date = %s",
        (day,),
    ) == [(len(workouts), sum(w.steps for w in workouts), len(workouts))]
    # the rows live in Postgres only: dlt's loaded packages keep no copy of them on disk
    loaded = platform.settings.state_dir / "dlt" / "devices_fitbit" / "load" / "loaded"
    assert loaded.is_dir()
    assert not [p for p in loaded.glob("*/completed_jobs/*") if p.is_file()]


def test_a_revoked_member_is_disconnected_and_keeps_history(platform, fitbit):
    day = fitbit.local_now(USER).date() - dt.timedelta(days=1)
    fitbit.revoke(USER)
    app = create_app(fitbit_client_secret=fitbit.client_secret, fitbit_verification_code="v")
    with TestClient(app) as client:
        assert _notify(client, fitbit, "userRevokedAccess", day).status_code == 204
    _sync(platform)
    assert find_connection(platform.params, "fitbit", USER).status == "revoked"
    assert _steps(platform, day) != []
    assert platform.query(
        "select status, is_stale from marts.dim_device_connection where member_id = 'member-fitbit-1'"
    ) == [("revoked", False)]


def test_an_outage_opens_the_breaker_loses_nothing_and_recovers(platform, fitbit):
    user = "FBUSR2"
    access, refresh = fitbit.add_user(user, timezone="America/New_York")
    connect_device(
        platform.params,
        "member-fitbit-2",
        "fitbit",
        user,
        access,
        refresh,
        28800,
        timezone="America/New_York",
    )
    day = fitbit.local_now(user).date() - dt.timedelta(days=2)
    body = json.dumps(build_notification(user, "activities", day)).encode()
    app = create_app(fitbit_client_secret=fitbit.client_secret, fitbit_verification_code="v")
    fitbit.set_fault(outage=True)
    try:
        with TestClient(app) as client:
            assert (
                client.post(
                    "/webhooks/fitbit",
                    content=body,
                    headers={"X-Fitbit-Signature": sign(body, fitbit.client_secret)},
                ).status_code
                == 204
            )
        _sync(platform)
        _sync(platform)  # 3 attempts per run: the second run crosses the 5-failure threshold
        assert platform.query(
            "select state from devices.circuit_breakers where provider = 'fitbit'"
        ) == [("open",)]
        assert platform.query(
            "select count(*) from devices.webhook_inbox where provider_user_id = %s and processed_at is null",
            (user,),
        ) == [(1,)]
        assert platform.query(
            "select count(*) from marts.fct_daily_steps where member_id = 'member-fitbit-2'"
        ) == [(0,)]
    finally:
        fitbit.clear_faults()
    # the cool-down has passed: one probe goes through, closes the breaker, the work arrives
    platform.query(
        "update devices.circuit_breakers set opened_at = now() - interval '1 hour' where provider = 'fitbit'"
    )
    _sync(platform)
    assert platform.query(
        "select state from devices.circuit_breakers where provider = 'fitbit'"
    ) == [("closed",)]
    assert _steps_for(platform, "member-fitbit-2", day) == [(fitbit.steps(user, day), 1)]


def _steps_for(platform, member_id: str, day: dt.date):
    return platform.query(
        "select steps, devices_reporting from marts.fct_daily_steps"
        " where member_id = %s and local_date = %s",
        (member_id, day),
    )


def test_backfill_fetches_three_months_in_weekly_chunks_and_reconnect_fills_only_the_gap(
    platform, fitbit
):
    from ingestion.devices.connections import disconnect
    from ingestion.devices.fitbit import plan_backfill, plan_polling, sync_fitbit
    from orchestration.resources import FitbitResource

    user = "FBUSR3"
    access, refresh = fitbit.add_user(user, timezone="America/Los_Angeles")
    connection_id = connect_device(
        platform.params,
        "member-fitbit-3",
        "fitbit",
        user,
        access,
        refresh,
        28800,
        timezone="America/Los_Angeles",
    )
    app, pipelines = FitbitResource().app(), platform.settings.state_dir / "dlt"
    today = dt.date.today()
    first = [w for w in plan_polling(platform.params, today) if w.connection_id == connection_id]
    sync_fitbit(app, platform.params, first, pipelines)

    chunks = 0
    while windows := [
        w for w in plan_backfill(platform.params) if w.connection_id == connection_id
    ]:
        assert all((w.end - w.start).days < 7 for w in windows)
        sync_fitbit(app, platform.params, windows, pipelines)  # resumable: progress after each
        chunks += 1
        assert chunks < 20
    oldest = platform.query(
        "select min(activity_date), count(distinct activity_date) from raw_fitbit.daily_steps"
        " where connection_id = %s",
        (connection_id,),
    )
    assert oldest[0][0] <= today - dt.timedelta(days=89)
    assert chunks == 12  # 84 days of history before the first week, 7 at a time

    # disconnect, then reconnect later: the cursor is kept, so only the gap is pulled
    platform.query(
        "update devices.connections set sync_cursor = jsonb_build_object('steps', %s::text,"
        " 'weight', %s::text, 'activities', %s::text) where connection_id = %s",
        (*[(today - dt.timedelta(days=5)).isoformat()] * 3, connection_id),
    )
    disconnect(platform.params, connection_id)
    assert [
        w for w in plan_polling(platform.params, today) if w.connection_id == connection_id
    ] == []
    access, refresh = fitbit.reconnect(user)
    connect_device(
        platform.params,
        "member-fitbit-3",
        "fitbit",
        user,
        access,
        refresh,
        28800,
        timezone="America/Los_Angeles",
    )
    gap = [w for w in plan_polling(platform.params, today) if w.connection_id == connection_id]
    assert {(w.metric, w.start, w.end) for w in gap} == {
        ("steps", today - dt.timedelta(days=5), today),
        ("weight", today - dt.timedelta(days=5), today),
        ("activities", today - dt.timedelta(days=5), today),
    }
