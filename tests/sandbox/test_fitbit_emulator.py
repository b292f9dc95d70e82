"""The Fitbit emulator speaks the Fitbit Web API: tokens, data shapes, limits, faults, webhooks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from sandbox import device_data
from sandbox.emulator_server import EmulatorServer
from sandbox.fitbit_emulator import (
    SIGNATURE_HEADER,
    FitbitState,
    build_notification,
    create_fitbit_app,
    notify,
    sign,
    verify_subscriber,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "samples" / "fitbit"
START = dt.datetime(2026, 5, 12, 18, 0, tzinfo=dt.UTC).timestamp()
USER = "7QKX2B"
PAST_WEEK = ("2026-04-01", "2026-04-07")


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> FitbitState:
    fitbit = FitbitState(client_id="CID123", client_secret="s3cret", clock=clock)
    fitbit.add_user(USER, timezone="America/Los_Angeles", member_since=dt.date(2025, 1, 1))
    return fitbit


@pytest.fixture
def client(state: FitbitState) -> Iterator[TestClient]:
    with TestClient(create_fitbit_app(state)) as test_client:
        yield test_client


def bearer(state: FitbitState, user_id: str = USER) -> dict[str, str]:
    return {"Authorization": f"Bearer {state.tokens(user_id)[0]}"}


def refresh(client: TestClient, token: str, secret: str = "s3cret") -> httpx.Response:
    return client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=("CID123", secret),
    )


def steps_url(start: str, end: str) -> str:
    return f"/1/user/-/activities/steps/date/{start}/{end}.json"


def sample(name: str) -> dict:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"sample {path} not present")
    return json.loads(path.read_text())


# tokens -------------------------------------------------------------------------------------


def test_refresh_rotates_both_tokens_and_the_old_refresh_token_is_refused(client, state):
    old_access, old_refresh = state.tokens(USER)

    answer = refresh(client, old_refresh)

    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {
        "access_token",
        "expires_in",
        "refresh_token",
        "scope",
        "token_type",
        "user_id",
    }
    assert body["expires_in"] == 28800 and body["token_type"] == "Bearer"
    assert body["user_id"] == USER
    assert (body["access_token"], body["refresh_token"]) == state.tokens(USER)
    assert body["refresh_token"] != old_refresh and body["access_token"] != old_access
    reused = refresh(client, old_refresh)
    assert reused.status_code == 400
    assert reused.json()["success"] is False
    assert reused.json()["errors"][0]["errorType"] == "invalid_grant"
    assert reused.json()["errors"][0]["message"].startswith("Refresh token invalid: ")
    assert refresh(client, body["refresh_token"]).status_code == 200


def test_expired_access_token_is_401_expired_token_until_refreshed(client, state, clock):
    url = steps_url(*PAST_WEEK)
    assert client.get(url, headers=bearer(state)).status_code == 200

    clock.now += 28_800
    expired = client.get(url, headers=bearer(state))

    assert expired.status_code == 401
    assert expired.json()["errors"][0]["errorType"] == "expired_token"
    assert refresh(client, state.tokens(USER)[1]).status_code == 200
    assert client.get(url, headers=bearer(state)).status_code == 200


def test_unknown_access_token_is_401_invalid_token(client):
    answer = client.get(steps_url(*PAST_WEEK), headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["errorType"] == "invalid_token"


def test_revoked_member_gets_invalid_grant_on_refresh_and_401_on_data(client, state):
    headers = bearer(state)
    state.revoke(USER)

    assert client.get(steps_url(*PAST_WEEK), headers=headers).status_code == 401
    answer = refresh(client, state.tokens(USER)[1])
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["errorType"] == "invalid_grant"


def test_token_endpoint_refuses_wrong_client_credentials(client, state):
    answer = refresh(client, state.tokens(USER)[1], secret="wrong")
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["errorType"] == "invalid_client"


def test_authorization_code_flow_with_pkce_connects_a_new_member(client, state):
    verifier = "a" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    redirect = client.get(
        "/oauth2/authorize",
        params={
            "client_id": "CID123",
            "response_type": "code",
            "redirect_uri": "https://app.example/callback",
            "scope": "activity weight",
            "state": "xyz",
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
        },
        follow_redirects=False,
    )
    assert redirect.status_code == 302
    location = httpx.URL(redirect.headers["location"])
    assert location.params["state"] == "xyz"

    answer = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": location.params["code"],
            "redirect_uri": "https://app.example/callback",
            "code_verifier": verifier,
        },
        auth=("CID123", "s3cret"),
    )

    assert answer.status_code == 200
    assert answer.json()["user_id"] in state.users and answer.json()["user_id"] != USER


def test_a_requests_client_refreshes_over_real_http(state):
    """The platform's client uses requests; the emulator answers it as Fitbit would."""
    with EmulatorServer(create_fitbit_app(state)) as base_url:
        answer = requests.post(
            f"{base_url}/oauth2/token",
            data={"grant_type": "refresh_token", "refresh_token": state.tokens(USER)[1]},
            auth=("CID123", "s3cret"),
            timeout=5,
        )
        data = requests.get(base_url + steps_url(*PAST_WEEK), headers=bearer(state), timeout=5)
    assert answer.status_code == 200
    assert data.status_code == 200 and len(data.json()["activities-steps"]) == 7


# data shapes --------------------------------------------------------------------------------


def test_steps_values_are_strings_one_per_day(client, state):
    answer = client.get(steps_url(*PAST_WEEK), headers=bearer(state))

    series = answer.json()["activities-steps"]
    assert [entry["dateTime"] for entry in series] == [f"2026-04-0{d}" for d in range(1, 8)]
    assert all(isinstance(entry["value"], str) for entry in series)
    assert [int(e["value"]) for e in series] == [
        device_data.daily_steps(USER, dt.date(2026, 4, d)) for d in range(1, 8)
    ]


def test_steps_response_has_the_shape_of_the_real_sample(client, state):
    real = sample("shimmer__fitbit-activities-steps-timeseries.json")
    ours = client.get(steps_url(*PAST_WEEK), headers=bearer(state)).json()

    assert set(ours) == set(real)
    assert {frozenset(e) for e in ours["activities-steps"]} == {
        frozenset(e) for e in real["activities-steps"]
    }
    assert all(isinstance(e["value"], str) for e in real["activities-steps"])


def test_single_day_and_period_forms_of_the_steps_series(client, state):
    one = client.get("/1/user/-/activities/steps/date/2026-04-03/1d.json", headers=bearer(state))
    week = client.get("/1/user/-/activities/steps/date/2026-04-07/7d.json", headers=bearer(state))
    assert [e["dateTime"] for e in one.json()["activities-steps"]] == ["2026-04-03"]
    assert week.json() == client.get(steps_url(*PAST_WEEK), headers=bearer(state)).json()


def test_steps_range_longer_than_1095_days_is_400(client, state):
    answer = client.get(steps_url("2023-01-01", "2026-01-01"), headers=bearer(state))
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["errorType"] == "validation"


def test_days_before_joining_and_after_today_are_zero_and_today_is_partial(client, state):
    series = client.get(steps_url("2024-12-31", "2026-05-13"), headers=bearer(state)).json()
    values = {e["dateTime"]: int(e["value"]) for e in series["activities-steps"]}
    assert values["2024-12-31"] == 0 and values["2026-05-13"] == 0
    today = dt.date(2026, 5, 12)  # 11:00 in Los Angeles
    assert 0 < values["2026-05-12"] < device_data.daily_steps(USER, today)


def test_weight_is_in_pounds_for_en_us_and_kilograms_otherwise(client, state):
    url = "/1/user/-/body/log/weight/date/2026-03-01/2026-03-31.json"
    pounds = client.get(url, headers=bearer(state) | {"Accept-Language": "en_US"}).json()
    kilos = client.get(url, headers=bearer(state)).json()

    assert pounds["weight"], "a month without any weigh-in would make this test vacuous"
    assert len(pounds["weight"]) == len(kilos["weight"])
    for lb, kg in zip(pounds["weight"], kilos["weight"], strict=True):
        assert lb["logId"] == kg["logId"] and lb["time"] == kg["time"]
        assert lb["weight"] == pytest.approx(kg["weight"] / 0.45359237, abs=0.1)
        assert 60 <= kg["weight"] <= 120


def test_weight_entries_carry_the_sample_keys(client, state):
    real = sample("shimmer__fitbit-body-log-weight.json")
    ours = client.get(
        "/1/user/-/body/log/weight/date/2026-03-01/2026-03-31.json", headers=bearer(state)
    ).json()

    assert set(ours) == set(real)
    real_keys = set().union(*(set(e) for e in real["weight"]))
    for entry in ours["weight"]:
        assert real_keys <= set(entry) <= real_keys | {"source", "fat"}
        assert dt.time.fromisoformat(entry["time"]).tzinfo is None  # local, no offset


def test_weight_range_longer_than_31_days_is_400(client, state):
    url = "/1/user/-/body/log/weight/date/2026-01-01/2026-02-15.json"
    assert client.get(url, headers=bearer(state)).status_code == 400


def test_activity_list_pages_forward_with_next_links(client, state):
    url = "/1/user/-/activities/list.json?afterDate=2026-03-01&sort=asc&limit=5&offset=0"
    seen = []
    while url:
        body = client.get(url, headers=bearer(state)).json()
        assert body["pagination"]["sort"] == "asc" and body["pagination"]["limit"] == 5
        seen.extend(body["activities"])
        url = body["pagination"]["next"]

    expected = sum(
        len(device_data.activities(USER, dt.date(2026, 3, 1) + dt.timedelta(days=n)))
        for n in range(72)  # through 2026-05-11: today's workout starts in the evening
    )
    assert device_data.activities(USER, dt.date(2026, 5, 12))[0].start.hour >= 12
    assert len(seen) == expected
    starts = [dt.datetime.fromisoformat(a["startTime"]) for a in seen]
    assert starts == sorted(starts) and all(s.utcoffset() is not None for s in starts)
    assert {"logId", "activityName", "startTime", "duration", "steps", "calories"} <= set(seen[0])
    assert seen[0]["startTime"].endswith(("-07:00", "-08:00"))
    assert len({a["logId"] for a in seen}) == len(seen)


def test_activity_list_needs_sort_matching_the_date_bound(client, state):
    url = "/1/user/-/activities/list.json?afterDate=2026-03-01&sort=desc&limit=5&offset=0"
    assert client.get(url, headers=bearer(state)).status_code == 400


# rate limit and faults ----------------------------------------------------------------------


def test_rate_limit_headers_count_down_and_the_151st_request_is_429(client, state, clock):
    url = steps_url(*PAST_WEEK)
    remaining = []
    for _ in range(150):
        answer = client.get(url, headers=bearer(state))
        assert answer.status_code == 200
        assert answer.headers["Fitbit-Rate-Limit-Limit"] == "150"
        remaining.append(int(answer.headers["Fitbit-Rate-Limit-Remaining"]))
    assert remaining == list(range(149, -1, -1))

    clock.now += 600
    over = client.get(url, headers=bearer(state))

    assert over.status_code == 429
    assert over.headers["Retry-After"] == over.headers["Fitbit-Rate-Limit-Reset"] == "3000"
    assert over.headers["Fitbit-Rate-Limit-Remaining"] == "0"
    clock.now += 3000  # the top of the hour
    again = client.get(url, headers=bearer(state))
    assert again.status_code == 200 and again.headers["Fitbit-Rate-Limit-Remaining"] == "149"


def test_rate_limit_is_per_member(client, state):
    state.rate_limit = 2
    other = "OTHER1"
    state.add_user(other)
    url = steps_url(*PAST_WEEK)
    assert [client.get(url, headers=bearer(state)).status_code for _ in range(3)] == [200, 200, 429]
    assert client.get(url, headers=bearer(state, other)).status_code == 200


def test_outage_answers_503_until_it_ends(client, state, clock):
    url = steps_url(*PAST_WEEK)
    set_fault = client.post("/_sandbox/faults", json={"outage_seconds": 120})
    assert set_fault.status_code == 200 and set_fault.json()["outage"] is True

    assert client.get(url, headers=bearer(state)).status_code == 503
    assert refresh(client, state.tokens(USER)[1]).status_code == 503
    clock.now += 121
    assert client.get(url, headers=bearer(state)).status_code == 200


def test_outage_until_cleared_and_error_bursts(client, state):
    url = steps_url(*PAST_WEEK)
    client.post("/_sandbox/faults", json={"outage": True})
    assert client.get(url, headers=bearer(state)).status_code == 503
    client.post("/_sandbox/faults", json={"clear": True})
    assert client.get(url, headers=bearer(state)).status_code == 200

    state.set_fault(error_burst=2, error_status=500)
    statuses = [client.get(url, headers=bearer(state)).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]


def test_admin_faults_rejects_unknown_settings_without_changing_anything(client):
    answer = client.post("/_sandbox/faults", json={"error_burst": 3, "explode": True})
    assert answer.status_code == 400
    assert client.get("/_sandbox/faults").json()["error_burst"] == 0


def test_delayed_responses_time_a_client_out(state):
    url = steps_url(*PAST_WEEK)
    state.set_fault(delay_count=1, delay_seconds=0.5)
    with EmulatorServer(create_fitbit_app(state)) as base_url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(base_url + url, headers=bearer(state), timeout=0.1)
        assert httpx.get(base_url + url, headers=bearer(state), timeout=5).status_code == 200


def test_revised_day_serves_a_new_value(client, state):
    url = "/1/user/-/activities/steps/date/2026-04-02/1d.json"
    before = client.get(url, headers=bearer(state)).json()["activities-steps"][0]["value"]
    client.post("/_sandbox/faults", json={"revise": [{"user_id": USER, "date": "2026-04-02"}]})
    after = client.get(url, headers=bearer(state)).json()["activities-steps"][0]["value"]
    assert after != before
    assert int(after) == device_data.daily_steps(USER, dt.date(2026, 4, 2), revision=1)


def test_late_day_is_empty_until_released(client, state):
    day = dt.date(2026, 3, 31)
    url = "/1/user/-/activities/steps/date/2026-03-31/1d.json"
    state.hide_day(USER, day)
    assert client.get(url, headers=bearer(state)).json()["activities-steps"][0]["value"] == "0"
    state.release_day(USER, day)
    value = client.get(url, headers=bearer(state)).json()["activities-steps"][0]["value"]
    assert value == str(device_data.daily_steps(USER, day))


def test_every_request_is_recorded_and_counted_per_member(client, state):
    client.get(steps_url(*PAST_WEEK), headers=bearer(state))
    client.get(steps_url(*PAST_WEEK), headers={"Authorization": "Bearer nope"})

    assert state.request_count(USER) == 1
    assert [(r.method, r.user_id, r.status) for r in state.requests] == [
        ("GET", USER, 200),
        ("GET", None, 401),
    ]
    assert state.requests[0].path == "/1/user/-/activities/steps/date/2026-04-01/2026-04-07.json"
    assert client.get("/_sandbox/requests").json()["by_user"] == {USER: 1}


# signatures, subscriptions, notifications ---------------------------------------------------


def test_signature_matches_a_hand_computed_hmac_sha1():
    body = (
        b'[{"collectionType":"activities","date":"2026-04-02","ownerId":"7QKX2B",'
        b'"ownerType":"user","subscriptionId":"1"}]'
    )
    by_hand = base64.b64encode(hmac.new(b"s3cret&", body, hashlib.sha1).digest()).decode()
    assert sign(body, "s3cret") == by_hand == "22Ueflk0JyeOfdYDdiISpMmg3ik="


class Receiver:
    """A tiny subscriber endpoint that checks Fitbit's signature like the platform should."""

    def __init__(self, secret: str, verify_code: str = "the-code") -> None:
        self.secret, self.verify_code = secret, verify_code
        self.accepted: list[list[dict]] = []
        self.rejected = 0

    async def endpoint(self, request: Request) -> Response:
        if request.method == "GET":
            ok = request.query_params.get("verify") == self.verify_code
            return Response(status_code=204 if ok else 404)
        body = await request.body()
        given_signature = request.headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(given_signature, sign(body, self.secret)):
            self.rejected += 1
            return Response(status_code=404)
        self.accepted.append(json.loads(body))
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/fitbit", self.endpoint, methods=["GET", "POST"])])


def test_notifications_are_posted_with_a_valid_signature_and_duplicated_on_demand():
    receiver = Receiver("s3cret")
    notification = build_notification(USER, "activities", dt.date(2026, 4, 2), "sub-9")
    with EmulatorServer(receiver.app()) as base_url:
        statuses = notify(f"{base_url}/fitbit", notification, "s3cret", duplicates=2)
        forged = notify(f"{base_url}/fitbit", notification, "s3cret", signature="AAAA")
    assert statuses == [204, 204] and forged == [404]
    assert receiver.accepted == [notification, notification] and receiver.rejected == 1
    assert set(notification[0]) == {
        "collectionType",
        "date",
        "ownerId",
        "ownerType",
        "subscriptionId",
    }


def test_verify_subscriber_checks_right_and_wrong_codes():
    receiver = Receiver("s3cret", verify_code="abc")
    with EmulatorServer(receiver.app()) as base_url:
        assert verify_subscriber(f"{base_url}/fitbit", "abc") is True
        assert verify_subscriber(f"{base_url}/fitbit", "not-the-code") is False


def test_subscribers_are_notified_for_matching_subscriptions_only(client, state):
    receiver = Receiver("s3cret")
    created = client.post("/1/user/-/body/apiSubscriptions/w-1.json", headers=bearer(state))
    assert created.status_code == 201 and created.json()["collectionType"] == "body"
    assert (
        client.post("/1/user/-/body/apiSubscriptions/w-1.json", headers=bearer(state)).status_code
        == 200
    )
    listed = client.get("/1/user/-/apiSubscriptions.json", headers=bearer(state)).json()
    assert [s["subscriptionId"] for s in listed["apiSubscriptions"]] == ["w-1"]
    state.set_fault(notification_duplicates=2)

    with EmulatorServer(receiver.app()) as base_url:
        state.subscriber_url = f"{base_url}/fitbit"
        body = state.notify_subscribers(USER, "body", dt.date(2026, 4, 2))
        activities = state.notify_subscribers(USER, "activities", dt.date(2026, 4, 2))

    assert body == [204, 204] and activities == []
    assert receiver.accepted[0] == build_notification(USER, "body", dt.date(2026, 4, 2), "w-1")


def test_the_command_line_prints_where_it_listens():
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.fitbit_emulator", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        created = httpx.post(f"http://127.0.0.1:{port}/_sandbox/users", json={"user_id": "CLI1"})
        assert created.status_code == 201 and created.json()["access_token"]
    finally:
        process.terminate()
        assert process.wait(10) == 0


# deterministic device data ------------------------------------------------------------------


def test_same_member_and_day_give_the_same_steps_and_a_revision_changes_them():
    day = dt.date(2026, 2, 3)
    assert device_data.daily_steps("m-1", day) == device_data.daily_steps("m-1", day)
    assert device_data.daily_steps("m-1", day, 1) != device_data.daily_steps("m-1", day)
    assert device_data.weight_readings("m-1", day) == device_data.weight_readings("m-1", day)
    assert device_data.activities("m-1", day) == device_data.activities("m-1", day)


def test_members_walk_differently_at_weekends_and_have_us_time_zones():
    weeks = [dt.date(2026, 1, 5) + dt.timedelta(days=n) for n in range(7 * 20)]
    shares = []
    for member in (f"m-{n}" for n in range(40)):
        weekend = [device_data.daily_steps(member, d) for d in weeks if d.weekday() >= 5]
        weekday = [device_data.daily_steps(member, d) for d in weeks if d.weekday() < 5]
        shares.append((sum(weekend) / len(weekend)) / (sum(weekday) / len(weekday)))
        assert device_data.user_timezone(member) in device_data.US_TIMEZONES
        assert device_data.user_units(member) in ("lb", "kg")
    assert min(shares) < 0.9 and max(shares) > 1.1


@settings(max_examples=200, deadline=None)
@given(
    member=st.text(min_size=1, max_size=12),
    day=st.dates(dt.date(2015, 1, 1), dt.date(2035, 12, 31)),
    revision=st.integers(0, 5),
)
def test_device_data_stays_in_realistic_ranges(member, day, revision):
    steps = device_data.daily_steps(member, day, revision)
    assert 2_000 <= steps <= 15_000
    if revision:
        assert steps != device_data.daily_steps(member, day, revision - 1)
    for reading in device_data.weight_readings(member, day):
        assert 60 <= reading.kg <= 120
    workouts = device_data.activities(member, day)
    assert len(workouts) <= 2
    assert sum(w.steps for w in workouts) <= device_data.daily_steps(member, day)
