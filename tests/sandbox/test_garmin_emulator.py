"""The Garmin emulator speaks the Health API: pulls, backfill, push/ping bodies, budget, faults."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from sandbox import device_data
from sandbox.emulator_server import EmulatorServer
from sandbox.garmin_emulator import CLIENT_ID_HEADER, GarminState, create_garmin_app

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "samples" / "garmin"
NOW = int(dt.datetime(2026, 5, 12, 18, 0, tzinfo=dt.UTC).timestamp())
USER = "garmin-user-1"
DAY = dt.date(2026, 4, 20)
HOUR = 3600


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> GarminState:
    garmin = GarminState(consumer_key="ck-123", clock=clock)
    garmin.add_user(USER, timezone="America/Denver")
    return garmin


@pytest.fixture
def client(state: GarminState) -> Iterator[TestClient]:
    with TestClient(create_garmin_app(state)) as test_client:
        yield test_client


def bearer(state: GarminState, user_id: str = USER) -> dict[str, str]:
    return {"Authorization": f"Bearer {state.users[user_id].user_access_token}"}


def pull(client: TestClient, state: GarminState, kind: str, start: int, end: int):
    return client.get(
        f"/wellness-api/rest/{kind}",
        params={"uploadStartTimeInSeconds": start, "uploadEndTimeInSeconds": end},
        headers=bearer(state),
    )


def backfill(client: TestClient, state: GarminState, start: int, end: int, user: str = USER):
    return client.get(
        "/wellness-api/rest/backfill/dailies",
        params={"summaryStartTimeInSeconds": start, "summaryEndTimeInSeconds": end},
        headers=bearer(state, user),
    )


class Receiver:
    """The platform's Garmin webhook, reduced to remembering what arrived."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.client_ids: list[str | None] = []

    async def endpoint(self, request: Request) -> Response:
        self.bodies.append(json.loads(await request.body()))
        self.client_ids.append(request.headers.get(CLIENT_ID_HEADER))
        return Response(status_code=200)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/garmin", self.endpoint, methods=["POST"])])


def sample_items(summary_type: str) -> list[dict]:
    if not SAMPLES.exists():
        pytest.skip(f"{SAMPLES} not present")
    items = []
    for path in sorted(SAMPLES.glob("*.json")):
        items.extend(json.loads(path.read_text()).get(summary_type, []))
    return items


# ping pulls ---------------------------------------------------------------------------------


def test_pull_returns_the_summaries_uploaded_in_the_window(client, state, clock):
    uploaded = state.sync(USER, DAY)

    inside = pull(client, state, "dailies", NOW - HOUR, NOW + 1)
    later = pull(client, state, "dailies", NOW + 1, NOW + HOUR)

    assert inside.status_code == 200 and later.json() == []
    assert inside.json() == uploaded["dailies"]
    daily = inside.json()[0]
    assert daily["calendarDate"] == "2026-04-20" and daily["userId"] == USER
    assert daily["steps"] == device_data.daily_steps(USER, DAY)
    assert daily["startTimeOffsetInSeconds"] == -6 * HOUR  # Denver, daylight time
    assert (daily["startTimeInSeconds"] + daily["startTimeOffsetInSeconds"]) % 86_400 == 0


def test_pull_window_longer_than_24_hours_is_400(client, state):
    answer = pull(client, state, "dailies", NOW - 86_401, NOW)
    assert answer.status_code == 400 and "errorMessage" in answer.json()
    assert pull(client, state, "dailies", NOW - 86_400, NOW).status_code == 200


def test_pull_with_an_unknown_token_is_401(client):
    answer = client.get(
        "/wellness-api/rest/dailies?uploadStartTimeInSeconds=0&uploadEndTimeInSeconds=60",
        headers={"Authorization": "Bearer nope"},
    )
    assert answer.status_code == 401


def test_revised_day_is_re_sent_under_the_same_summary_id(client, state, clock):
    first = state.sync(USER, DAY)["dailies"][0]
    clock.now += HOUR
    revised = state.revise(USER, DAY)

    assert revised["summaryId"] == first["summaryId"]
    assert revised["steps"] == device_data.daily_steps(USER, DAY, revision=1) != first["steps"]
    assert pull(client, state, "dailies", NOW + HOUR, NOW + HOUR + 1).json() == [revised]


def test_bodycomps_and_activities_use_utc_seconds_with_local_offsets(state):
    day = next(
        DAY + dt.timedelta(days=n)
        for n in range(60)
        if device_data.weight_readings(USER, DAY + dt.timedelta(days=n))
        and device_data.activities(USER, DAY + dt.timedelta(days=n))
    )
    uploaded = state.sync(USER, day)
    zone = ZoneInfo("America/Denver")

    reading = device_data.weight_readings(USER, day)[0]
    comp = uploaded["bodyComps"][0]
    assert comp["weightInGrams"] == round(reading.kg * 1000)
    measured = dt.datetime.fromtimestamp(comp["measurementTimeInSeconds"], zone)
    assert measured.time() == reading.local_time
    assert comp["measurementTimeOffsetInSeconds"] == measured.utcoffset().total_seconds()
    activity = uploaded["activities"][0]
    assert activity["summaryId"] == str(activity["activityId"])
    workout = device_data.activities(USER, day)[0]
    assert activity["durationInSeconds"] == workout.duration_ms // 1000


# budget and faults --------------------------------------------------------------------------


def test_daily_budget_is_shared_by_all_members_and_429_carries_retry_after(client, state, clock):
    state.daily_budget = 3
    other = state.add_user("garmin-user-2")
    url = "/wellness-api/rest/dailies?uploadStartTimeInSeconds=0&uploadEndTimeInSeconds=60"
    statuses = [client.get(url, headers=bearer(state)).status_code for _ in range(2)]
    statuses.append(client.get(url, headers={"Authorization": f"Bearer {other}"}).status_code)
    over = client.get(url, headers=bearer(state))

    assert statuses == [200, 200, 200]
    assert over.status_code == 429 and over.headers["Retry-After"] == str(6 * HOUR)
    clock.now += 6 * HOUR  # UTC midnight
    assert client.get(url, headers=bearer(state)).status_code == 200
    assert state.request_count() == 5 and state.request_count(USER) == 4


def test_outage_and_error_burst_from_the_admin_endpoint(client, state, clock):
    assert client.post("/_sandbox/faults", json={"outage_seconds": 60}).status_code == 200
    assert pull(client, state, "dailies", NOW - 60, NOW).status_code == 503
    clock.now += 61
    assert pull(client, state, "dailies", NOW - 60, NOW).status_code == 200

    client.post("/_sandbox/faults", json={"error_burst": 1})
    assert [pull(client, state, "dailies", NOW - 60, NOW).status_code for _ in range(2)] == [
        503,
        200,
    ]


# backfill -----------------------------------------------------------------------------------


def test_backfill_is_accepted_once_per_window(client, state):
    start, end = NOW - 10 * 86_400, NOW - 3 * 86_400
    first = backfill(client, state, start, end)
    again = backfill(client, state, start, end)

    assert first.status_code == 202 and again.status_code == 409
    assert backfill(client, state, start, end + 1).status_code == 202
    assert len(state.backfills) == 2


def test_backfill_without_historical_permission_is_403(client, state):
    state.add_user("no-history", historical_permission=False)
    answer = backfill(client, state, NOW - 86_400, NOW, user="no-history")
    assert answer.status_code == 403 and state.backfills == []


def test_backfill_window_longer_than_the_configured_maximum_is_400(client, state):
    assert backfill(client, state, NOW - 31 * 86_400, NOW).status_code == 400
    state.max_backfill_window_seconds = 90 * 86_400
    assert backfill(client, state, NOW - 31 * 86_400, NOW).status_code == 202


def test_accepted_backfill_is_delivered_later_by_push(client, state):
    start = int(dt.datetime(2026, 4, 1, tzinfo=ZoneInfo("America/Denver")).timestamp())
    end = start + 7 * 86_400
    assert backfill(client, state, start, end).status_code == 202
    receiver = Receiver()

    with EmulatorServer(receiver.app()) as base_url:
        statuses = state.deliver_pending(f"{base_url}/garmin")
        nothing_left = state.deliver_pending(f"{base_url}/garmin")

    assert statuses == [200] and nothing_left == []
    assert receiver.client_ids == ["ck-123"]
    dailies = receiver.bodies[0]["dailies"]
    assert [d["calendarDate"] for d in dailies] == [f"2026-04-0{n}" for n in range(1, 8)]
    assert all(d["userAccessToken"] == state.users[USER].user_access_token for d in dailies)


# push, ping and lifecycle bodies ------------------------------------------------------------


def test_pushed_dailies_have_the_keys_of_the_samples(state):
    samples = [item for item in sample_items("dailies") if "userId" in item]
    always = set.intersection(*(set(item) for item in samples))
    anywhere = set().union(*(set(item) for item in sample_items("dailies")))
    receiver = Receiver()

    with EmulatorServer(receiver.app()) as base_url:
        status = state.push(f"{base_url}/garmin", "dailies", state.sync(USER, DAY)["dailies"])

    assert status == 200 and list(receiver.bodies[0]) == ["dailies"]
    ours = set(receiver.bodies[0]["dailies"][0])
    assert always <= ours, f"missing sample keys: {always - ours}"
    assert ours <= anywhere | {"userAccessToken"}, f"keys no sample has: {ours - anywhere}"


def test_body_comps_have_the_keys_of_the_samples(state):
    real = set().union(*(set(item) for item in sample_items("bodyComps")))
    day = next(
        DAY + dt.timedelta(days=n)
        for n in range(30)
        if device_data.weight_readings(USER, DAY + dt.timedelta(days=n))
    )
    ours = set(state.sync(USER, day)["bodyComps"][0])
    documented = {"userId", "userAccessToken", "measurementTimeOffsetInSeconds"}
    assert real <= ours <= real | documented


def test_activities_have_the_documented_fields(state):
    day = next(
        DAY + dt.timedelta(days=n)
        for n in range(30)
        if device_data.activities(USER, DAY + dt.timedelta(days=n))
    )
    ours = set(state.sync(USER, day)["activities"][0])
    assert {
        "userId",
        "userAccessToken",
        "summaryId",
        "activityId",
        "activityName",
        "activityType",
        "startTimeInSeconds",
        "startTimeOffsetInSeconds",
        "durationInSeconds",
        "distanceInMeters",
        "activeKilocalories",
        "steps",
    } <= ours


def test_a_ping_callback_url_pulls_what_was_uploaded(state, clock):
    receiver = Receiver()
    with (
        EmulatorServer(create_garmin_app(state)) as garmin_url,
        EmulatorServer(receiver.app()) as platform_url,
    ):
        uploaded = state.sync(USER, DAY)
        state.ping(f"{platform_url}/garmin", "dailies", USER, NOW, NOW + 1, garmin_url)
        ping = receiver.bodies[0]["dailies"][0]
        pulled = httpx.get(
            ping["callbackURL"],
            headers={"Authorization": f"Bearer {ping['userAccessToken']}"},
            timeout=5,
        )

    assert set(ping) == {
        "userId",
        "userAccessToken",
        "uploadStartTimeInSeconds",
        "uploadEndTimeInSeconds",
        "callbackURL",
    }
    assert receiver.client_ids == ["ck-123"]
    assert pulled.status_code == 200 and pulled.json() == uploaded["dailies"]


def test_deregistration_is_sent_and_the_token_stops_working(client, state):
    token = state.users[USER].user_access_token
    receiver = Receiver()
    with EmulatorServer(receiver.app()) as base_url:
        assert state.send_deregistration(f"{base_url}/garmin", USER) == 200

    assert receiver.bodies == [{"deregistrations": [{"userId": USER, "userAccessToken": token}]}]
    url = "/wellness-api/rest/dailies?uploadStartTimeInSeconds=0&uploadEndTimeInSeconds=60"
    assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_admin_sync_uploads_and_pushes_for_another_process(client, state):
    receiver = Receiver()
    with EmulatorServer(receiver.app()) as base_url:
        answer = client.post(
            "/_sandbox/sync",
            json={
                "user_id": USER,
                "date": DAY.isoformat(),
                "summary_types": ["dailies"],
                "mode": "push",
                "webhook_url": f"{base_url}/garmin",
            },
        )
    assert answer.status_code == 200 and answer.json()["statuses"] == [200]
    assert receiver.bodies[0]["dailies"][0]["calendarDate"] == DAY.isoformat()
