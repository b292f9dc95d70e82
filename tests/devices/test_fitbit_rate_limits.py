"""A 429 storm is ridden out: the shared quota stops requests until the window resets."""

from __future__ import annotations

import datetime as dt

from ingestion.devices.connections import connect_device
from ingestion.devices.fitbit import SyncWindow, sync_fitbit
from ingestion.devices.fitbit.client import FitbitApp
from sandbox.emulator_server import EmulatorServer
from sandbox.fitbit_emulator import FitbitState, create_fitbit_app


def test_rate_limited_member_waits_without_exceeding_the_limit_and_loses_nothing(platform):
    now = [1_800_000_000.0]
    state = FitbitState(rate_limit=5, window_seconds=3600, clock=lambda: now[0])
    user = "RLUSR1"
    access, refresh = state.add_user(user, timezone="America/Chicago")
    connection_id = connect_device(
        platform.params,
        "member-rl-1",
        "fitbit",
        user,
        access,
        refresh,
        28800,
        timezone="America/Chicago",
    )
    today = state.local_now(user).date()
    # 8 single-day windows: more reads than the member's hourly budget of 5
    windows = [
        SyncWindow(
            connection_id, "steps", today - dt.timedelta(days=d), today - dt.timedelta(days=d)
        )
        for d in range(1, 9)
    ]
    with EmulatorServer(create_fitbit_app(state)) as base_url:
        app = FitbitApp(base_url, state.client_id, state.client_secret)
        pipelines = platform.settings.state_dir / "dlt"
        first = sync_fitbit(app, platform.params, windows, pipelines)
        assert first.deferred and "rate limited" in first.deferred[0]
        served = [r for r in state.requests if r.user_id == user and r.path.startswith("/1/")]
        assert sum(r.status == 200 for r in served) <= 5
        assert (
            sum(r.status == 429 for r in served) <= 1
        )  # one 429, then the quota row holds us back

        again = sync_fitbit(app, platform.params, windows, pipelines)  # same window: no request
        assert again.requests == 0 and again.deferred

        now[0] += 3600  # the provider's window resets; our quota row says so too
        platform.query(
            "update devices.rate_limits set reset_at = now() where provider = 'fitbit' and subject = %s",
            (user,),
        )
        loaded = {
            d
            for (d,) in platform.query(
                "select activity_date from raw_fitbit.daily_steps where connection_id = %s",
                (connection_id,),
            )
        }
        # what a planner would still hold: the windows whose days have not loaded yet
        sync_fitbit(app, platform.params, [w for w in windows if w.start not in loaded], pipelines)
    days = platform.query(
        "select count(distinct activity_date) from raw_fitbit.daily_steps where connection_id = %s",
        (connection_id,),
    )
    assert days == [(8,)]
