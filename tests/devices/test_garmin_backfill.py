"""Garmin history on connect: backfill requests against the emulator, answered later by push,
and the global daily budget in Postgres that every Garmin request is paid from."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator

import dagster as dg
import pytest
import uvicorn
from starlette.testclient import TestClient

from ingestion.devices.connections import connect_device, get_connection
from ingestion.devices.garmin import process_garmin_inbox
from ingestion.devices.garmin.backfill import (
    BACKFILL_TYPES,
    pending_backfill,
    planned_windows,
    request_backfills,
)
from ingestion.devices.garmin.budget import BudgetExhausted, DailyBudget
from ingestion.devices.garmin.client import GarminClient
from ingestion.devices.garmin.settings import GarminSettings, GarminSettingsError
from ingestion.devices.resilience import CircuitBreaker
from mdp.orchestrate import run_assets
from orchestration.defs.devices.assets import GARMIN_KEYS
from sandbox.emulator_server import EmulatorServer
from sandbox.garmin_emulator import GarminState, create_garmin_app, ping_body
from serving.app import create_app

DAY = 86_400


@pytest.fixture(scope="module")
def garmin(platform) -> Iterator[tuple[GarminState, str]]:
    state = GarminState()
    with EmulatorServer(create_garmin_app(state)) as base_url:
        state.base_url = base_url
        yield state, base_url


@pytest.fixture(autouse=True)
def only_this_tests_connections(platform):
    """Each test starts with no active Garmin connection, a fresh budget and a closed breaker."""
    for sql in (
        "update devices.connections set status = 'disconnected' where provider = 'garmin'",
        "update devices.webhook_inbox set processed_at = now()"
        " where provider = 'garmin' and processed_at is null",
        "delete from devices.rate_limits where provider = 'garmin'",
        "delete from devices.circuit_breakers where provider = 'garmin'",
    ):
        platform.query(sql)


@contextlib.contextmanager
def serving_app(consumer_key: str) -> Iterator[str]:
    """The platform's app over real HTTP with its lifespan (the emulator pushes to it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(
        create_app(garmin_client_id=consumer_key), log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def _connect(platform, state: GarminState, user: str, **user_options) -> tuple[str, int]:
    """Connect a member; returns the connection id and its connect time in Unix seconds."""
    token = state.add_user(user, timezone="America/Denver", **user_options)
    connection_id = connect_device(
        platform.params, f"member-{user}", "garmin", user, token, None, None, "America/Denver"
    )
    created_at = get_connection(platform.params, connection_id).created_at
    return connection_id, int(created_at.timestamp())


def _settings(base_url: str, **overrides) -> GarminSettings:
    return GarminSettings(api_base_url=base_url, **overrides)


def _requested(state: GarminState, user: str) -> list[tuple[str, int, int]]:
    with state.lock:
        return [(b.summary_type, b.start, b.end) for b in state.backfills if b.user_id == user]


def _no_sleep_client(platform, base_url: str, budget: DailyBudget, reserve: int = 0):
    breaker = CircuitBreaker(platform.params, "garmin")
    return GarminClient(base_url, budget, breaker, reserve=reserve, sleep=lambda _: None)


def _newest_first(anchor: int, windows: int, days: int = 30) -> list[tuple[str, int, int]]:
    return [
        (kind, anchor - (i + 1) * days * DAY, anchor - i * days * DAY)
        for i in range(windows)
        for kind in BACKFILL_TYPES
    ]


# planning ------------------------------------------------------------------------------------


def test_a_depth_that_is_not_a_multiple_of_the_window_ends_with_a_shorter_window(platform, garmin):
    state, _ = garmin
    connection_id, anchor = _connect(platform, state, "GB-PLAN")
    connection = get_connection(platform.params, connection_id)
    windows = planned_windows(connection, depth_days=45, window_days=30)
    assert [(w.summary_type, w.start, w.end) for w in windows[:3]] == _newest_first(anchor, 1)
    assert {(w.start, w.end) for w in windows[3:]} == {(anchor - 45 * DAY, anchor - 30 * DAY)}


def test_garmin_settings_come_from_the_environment_with_defaults():
    assert GarminSettings.from_env({}) == GarminSettings()
    assert GarminSettings().backfill_reserve == 1000
    settings = GarminSettings.from_env(
        {"GARMIN_BACKFILL_DAYS": "60", "GARMIN_DAILY_BUDGET": "100", "GARMIN_PING_RESERVE": "0.5"}
    )
    assert (settings.backfill_days, settings.daily_budget, settings.backfill_reserve) == (
        60,
        100,
        50,
    )
    with pytest.raises(GarminSettingsError, match="GARMIN_BACKFILL_WINDOW_DAYS"):
        GarminSettings.from_env({"GARMIN_BACKFILL_WINDOW_DAYS": "thirty"})


# requesting ----------------------------------------------------------------------------------


def test_connect_requests_history_newest_first_and_a_rerun_requests_nothing(platform, garmin):
    state, base_url = garmin
    user = "GB-NEWEST"
    connection_id, anchor = _connect(platform, state, user)
    settings = _settings(base_url)
    budget = DailyBudget(platform.params, "garmin", settings.daily_budget)

    result = request_backfills(platform.params, settings, budget)

    assert (result.requested, result.already_requested, result.deferred) == (9, 0, [])
    assert _requested(state, user) == _newest_first(anchor, 3)
    progress = get_connection(platform.params, connection_id).backfill_progress
    oldest = dt.datetime.fromtimestamp(anchor - 90 * DAY, dt.UTC).isoformat()
    assert progress == {kind: oldest for kind in BACKFILL_TYPES}
    assert pending_backfill(platform.params, settings) == {}
    assert budget.state().remaining == settings.daily_budget - 9

    before = state.request_count(user)
    again = request_backfills(platform.params, settings, budget)
    assert (again.requested, again.already_requested) == (0, 0)
    assert state.request_count(user) == before


def test_a_window_accepted_before_a_crash_is_answered_409_and_counts_as_requested(platform, garmin):
    state, base_url = garmin
    user = "GB-CRASH"
    connection_id, anchor = _connect(platform, state, user)
    settings = _settings(base_url)
    budget = DailyBudget(platform.params, "garmin", settings.daily_budget)

    first = request_backfills(platform.params, settings, budget, max_requests=4)
    assert first.requested == 4 and first.deferred
    assert pending_backfill(platform.params, settings) == {connection_id: 5}
    # the run died after Garmin accepted the windows but before their progress was written
    platform.query(
        "update devices.connections set backfill_progress = '{}' where connection_id = %s",
        (connection_id,),
    )

    resumed = request_backfills(platform.params, settings, budget)

    assert (resumed.requested, resumed.already_requested) == (5, 4)
    statuses = [r.status for r in state.requests if r.user_id == user]
    assert statuses.count(202) == 9 and statuses.count(409) == 4
    assert sorted(_requested(state, user)) == sorted(_newest_first(anchor, 3))
    assert pending_backfill(platform.params, settings) == {}


def test_a_member_without_historical_permission_is_recorded_and_never_asked_again(platform, garmin):
    state, base_url = garmin
    user = "GB-DENIED"
    connection_id, _ = _connect(platform, state, user, historical_permission=False)
    settings = _settings(base_url)
    budget = DailyBudget(platform.params, "garmin", settings.daily_budget)

    result = request_backfills(platform.params, settings, budget)
    again = request_backfills(platform.params, settings, budget)

    assert result.denied == [connection_id] and result.requested == 0
    assert again.denied == [] and again.requested == 0
    assert [r.status for r in state.requests if r.user_id == user] == [403]
    progress = get_connection(platform.params, connection_id).backfill_progress
    assert progress == {"historical_export": "denied"}
    assert pending_backfill(platform.params, settings) == {}


def test_a_permission_change_lets_a_denied_member_be_asked_again(platform, garmin):
    state, base_url = garmin
    user = "GB-REGRANT"
    connection_id, anchor = _connect(platform, state, user, historical_permission=False)
    settings = _settings(base_url)
    budget = DailyBudget(platform.params, "garmin", settings.daily_budget)
    assert request_backfills(platform.params, settings, budget).denied == [connection_id]

    state.set_historical_permission(user, True)
    with serving_app(state.consumer_key) as app_url:
        assert state.send_permissions_change(f"{app_url}/webhooks/garmin", user) == 200
    process_garmin_inbox(platform.params, platform.settings.state_dir / "dlt", budget=budget)
    again = request_backfills(platform.params, settings, budget)

    assert again.requested == 9 and again.denied == []
    assert _requested(state, user) == _newest_first(anchor, 3)


def test_an_outage_leaves_the_windows_for_a_later_run(platform, garmin):
    state, base_url = garmin
    user = "GB-OUTAGE"
    connection_id, anchor = _connect(platform, state, user)
    settings = _settings(base_url)
    budget = DailyBudget(platform.params, "garmin", settings.daily_budget)
    state.set_fault(outage=True)
    try:
        down = request_backfills(
            platform.params, settings, budget, client=_no_sleep_client(platform, base_url, budget)
        )
    finally:
        state.clear_faults()

    assert down.requested == 0 and "503" in down.deferred[0]
    assert [r.status for r in state.requests if r.user_id == user] == [503, 503, 503]
    assert get_connection(platform.params, connection_id).backfill_progress == {}

    back = request_backfills(
        platform.params, settings, budget, client=_no_sleep_client(platform, base_url, budget)
    )
    assert back.requested == 9
    assert _requested(state, user) == _newest_first(anchor, 3)


# delivery ------------------------------------------------------------------------------------


def _materialized(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_pushed_history_is_loaded_by_the_next_garmin_sync(platform, garmin, monkeypatch):
    state, base_url = garmin
    user = "GB-DELIVER"
    connection_id, _ = _connect(platform, state, user)
    monkeypatch.setenv("GARMIN_API_BASE_URL", base_url)
    selection = dg.AssetSelection.assets(*GARMIN_KEYS.values())

    asked = run_assets(platform.settings, select=selection)
    assert asked.success
    metadata = _materialized(asked, GARMIN_KEYS["dailies"])
    assert metadata["backfill_windows_requested"] == 9
    assert metadata["backfill_pending_connections"] == 0
    assert metadata["budget_remaining"] == 5000 - 9

    with serving_app(state.consumer_key) as app_url:
        statuses = state.deliver_pending(f"{app_url}/webhooks/garmin/{{summary_type}}")
    assert statuses and set(statuses) == {200}

    loaded = run_assets(platform.settings, select=selection)
    assert loaded.success
    assert _materialized(loaded, GARMIN_KEYS["dailies"])["backfill_windows_requested"] == 0
    with state.lock:
        windows = [b for b in state.backfills if b.user_id == user]
    for kind, table in (("dailies", "dailies"), ("bodyComps", "body_comps")):
        expected = {
            item["summaryId"]
            for b in windows
            if b.summary_type == kind
            for item in state.summaries_between(user, kind, b.start, b.end)
        }
        rows = platform.query(
            f"select summary_id from raw_garmin.{table} where connection_id = %s",
            (connection_id,),
        )
        assert expected and {summary_id for (summary_id,) in rows} == expected
    days = platform.query(
        "select count(distinct calendar_date) from raw_garmin.dailies where connection_id = %s",
        (connection_id,),
    )
    # 90 days of seconds hold 90 local midnights, or 89 when the window spans the autumn
    # clock change and the check runs in the last hour of the local day
    assert days[0][0] >= 89


# the daily budget ----------------------------------------------------------------------------


def _ping(client: TestClient, state: GarminState, user: str, kind: str, at: int) -> None:
    body = ping_body(
        kind, user, state.users[user].user_access_token, at, at + 1, state.base_url or ""
    )
    response = client.post(
        f"/webhooks/garmin/{kind}", json=body, headers={"garmin-client-id": state.consumer_key}
    )
    assert response.status_code == 200


def test_a_spent_budget_defers_backfill_and_pings_to_the_next_day_and_loses_nothing(
    platform, garmin, monkeypatch
):
    state, base_url = garmin
    monkeypatch.setenv("GARMIN_API_BASE_URL", base_url)  # ping callbacks are pulled from it
    user = "GB-BUDGET"
    connection_id, anchor = _connect(platform, state, user)
    now = [dt.datetime.now(dt.UTC)]
    budget = DailyBudget(platform.params, "garmin", limit=10, clock=lambda: now[0])
    settings = _settings(base_url, daily_budget=10)  # backfill stops with 2 left for pings

    history = request_backfills(platform.params, settings, budget)
    assert history.requested == 8 and "daily request budget" in history.deferred[0]
    assert budget.state().remaining == 2

    at = int(time.time())
    state.sync(user, dt.date.today() - dt.timedelta(days=1), uploaded_at=at)
    with TestClient(create_app(garmin_client_id=state.consumer_key)) as client:
        for kind in ("dailies", "bodyComps", "activities"):
            _ping(client, state, user, kind, at)
    pipelines = platform.settings.state_dir / "dlt"
    today = process_garmin_inbox(platform.params, pipelines, budget=budget)
    assert today.pings_pulled == 2 and len(today.deferred) == 1
    assert "daily request budget" in today.deferred[0]
    pending = platform.query(
        "select collection_type from devices.webhook_inbox"
        " where provider = 'garmin' and processed_at is null"
    )
    assert pending == [("activities",)]
    with pytest.raises(BudgetExhausted):
        budget.take()

    now[0] += dt.timedelta(days=1)
    tomorrow = process_garmin_inbox(platform.params, pipelines, budget=budget)
    rest = request_backfills(platform.params, settings, budget)

    assert tomorrow.pings_pulled == 1 and tomorrow.deferred == []
    assert rest.requested == 1 and rest.deferred == []
    assert sorted(_requested(state, user)) == sorted(_newest_first(anchor, 3))
    assert budget.state().remaining == 10 - 2
    assert platform.query(
        "select count(*) from devices.webhook_inbox where provider = 'garmin' and processed_at is null"
    ) == [(0,)]


def test_concurrent_takes_never_spend_more_than_the_budget(platform):
    limit, reserve = 60, 12
    start = threading.Barrier(12)
    taken: dict[str, int] = {"ping": 0, "backfill": 0}
    lock = threading.Lock()

    def worker(kind: str) -> None:
        budget = DailyBudget(platform.params, "garmin", limit)  # its own, as another process
        start.wait()
        for _ in range(25):
            try:
                budget.take(reserve if kind == "backfill" else 0)
            except BudgetExhausted:
                continue
            with lock:
                taken[kind] += 1

    threads = [
        threading.Thread(target=worker, args=("backfill" if i % 2 else "ping",)) for i in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert taken["ping"] + taken["backfill"] == limit
    assert taken["backfill"] <= limit - reserve
    assert DailyBudget(platform.params, "garmin", limit).state().remaining == 0


def test_the_budget_check_warns_when_more_than_80_percent_of_the_day_is_used(platform, monkeypatch):
    from orchestration.defs.devices.checks import garmin_daily_budget
    from orchestration.resources import PlatformResource

    monkeypatch.setenv("GARMIN_DAILY_BUDGET", "100")
    budget = DailyBudget(platform.params, "garmin", 100)
    for _ in range(80):
        budget.take()
    assert garmin_daily_budget(platform=PlatformResource()).passed
    budget.take()
    check = garmin_daily_budget(platform=PlatformResource())
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["remaining"].value == 19
