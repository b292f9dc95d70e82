"""One member's bad data or refusal never stops anyone else's: the bad part is set aside or
waits, with a reason that names the field and place (never the value), and the rest loads."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ingestion.devices.connections import connect_device, find_connection
from ingestion.devices.fitbit import plan_from_inbox, sync_fitbit
from ingestion.devices.fitbit.client import FitbitApp
from ingestion.devices.garmin import REJECTED_KEY, ensure_raw_tables, process_garmin_inbox
from mdp.database import ConnectionParams, connect
from mdp.orchestrate import run_assets
from mdp.schema import ensure_schema
from orchestration.defs.devices.jobs import DEVICE_SOURCES
from sandbox.emulator_server import EmulatorServer
from sandbox.fitbit_emulator import FitbitState, build_notification, create_fitbit_app, sign
from sandbox.garmin_emulator import GarminState
from serving.app import create_app
from tests.conftest import fresh_database

GARMIN_CLIENT = "garmin-consumer-key-for-tests"
GARMIN_SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "samples" / "garmin"


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionParams]:
    monkeypatch.setenv("MDP_PII_HASH_KEY", "test-hash-key")
    with fresh_database("mdp_bad_items") as params:
        ensure_schema(params)
        ensure_raw_tables(params)
        yield params


def query(params: ConnectionParams, sql: str, args: tuple = ()) -> list[tuple]:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


def daily(user: str, token: str, summary_id: str, **changes) -> dict:
    item = {
        "userId": user,
        "userAccessToken": token,
        "summaryId": summary_id,
        "calendarDate": "2026-01-13",
        "startTimeInSeconds": 1768258800,
        "startTimeOffsetInSeconds": 3600,
        "durationInSeconds": 86400,
        "steps": 7694,
        "distanceInMeters": 6688.0,
    }
    return item | changes


def post_garmin(client: TestClient, body: dict, path: str = "dailies"):
    return client.post(
        f"/webhooks/garmin/{path}", json=body, headers={"garmin-client-id": GARMIN_CLIENT}
    )


def store_as_received(params: ConnectionParams, summary_type: str, item: dict) -> None:
    """An inbox row as a receiver without field checks stored it (rows from before them)."""
    payload = {k: v for k, v in item.items() if k != "userAccessToken"}
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into devices.webhook_inbox"
            " (provider, dedupe_key, provider_user_id, collection_type, payload)"
            " values ('garmin', %s, %s, %s, %s::jsonb)",
            (
                f"garmin:{summary_type}:{item['summaryId']}",
                item["userId"],
                summary_type,
                json.dumps(payload),
            ),
        )


# --- Garmin: refused at the door ------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary_type", "change", "field"),
    [
        ("dailies", {"steps": "lots"}, "steps"),
        ("dailies", {"calendarDate": "13/01/2026"}, "calendarDate"),
        ("dailies", {"startTimeInSeconds": "soon"}, "startTimeInSeconds"),
        ("dailies", {"distanceInMeters": True}, "distanceInMeters"),
        ("dailies", {"startTimeInSeconds": 10**15}, "startTimeInSeconds"),
        ("bodyComps", {"weightInGrams": "80 kg"}, "weightInGrams"),
        ("activities", {"activityName": 7}, "activityName"),
    ],
)
def test_garmin_push_item_with_a_wrongly_typed_field_is_refused_and_the_answer_says_where(
    db: ConnectionParams, tmp_path: Path, summary_type: str, change: dict, field: str
) -> None:
    connect_device(db, "m-a", "garmin", "GU1", "tok-a", None, None)
    connect_device(db, "m-b", "garmin", "GU2", "tok-b", None, None)
    bad = daily("GU1", "tok-a", "s-bad") | change
    good = daily("GU2", "tok-b", "s-good")
    app = create_app(params=db, partner_configs={}, garmin_client_id=GARMIN_CLIENT)
    with TestClient(app) as client:
        response = post_garmin(client, {summary_type: [bad, good]}, path=summary_type)
    assert response.status_code == 200  # Garmin would retry a refusal for days, unchanged
    answer = response.json()
    assert answer["stored"] == 1
    assert answer["ignored"] == 1
    [refused] = answer["refused"]
    assert refused["summaryType"] == summary_type
    assert refused["index"] == 0
    assert refused["field"] == field
    assert field in refused["detail"]
    assert str(change[field]) not in refused["detail"]  # what and where, not the value
    stored = query(db, "select payload->>'summaryId' from devices.webhook_inbox")
    assert stored == [("s-good",)]


# --- Garmin: set aside by the loader --------------------------------------------------------


def test_a_malformed_summary_in_the_inbox_is_set_aside_and_everyone_elses_loads(
    db: ConnectionParams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    connect_device(db, "m-a", "garmin", "GU1", "tok-a", None, None)
    connect_device(db, "m-b", "garmin", "GU2", "tok-b", None, None)
    store_as_received(db, "dailies", daily("GU1", "tok-a", "s-date", calendarDate="13/01/2026"))
    store_as_received(db, "dailies", daily("GU1", "tok-a", "s-time", startTimeInSeconds="soon"))
    store_as_received(
        db,
        "bodyComps",
        {
            "userId": "GU1",
            "summaryId": "bc-bad",
            "measurementTimeInSeconds": 1768258800,
            "weightInGrams": "80 kg",
        },
    )
    store_as_received(db, "dailies", daily("GU2", "tok-b", "s-good"))
    store_as_received(
        db,
        "bodyComps",
        {
            "userId": "GU2",
            "summaryId": "bc-good",
            "measurementTimeInSeconds": 1768258800,
            "weightInGrams": 80500,
        },
    )

    with caplog.at_level(logging.WARNING, logger="ingestion.devices.garmin"):
        result = process_garmin_inbox(db, tmp_path / "dlt")

    assert query(db, "select summary_id, member_id, steps from raw_garmin.dailies") == [
        ("s-good", "m-b", 7694)
    ]
    assert query(db, "select summary_id, weight_kg from raw_garmin.body_comps") == [
        ("bc-good", 80.5)
    ]
    assert result.rows == {"dailies": 1, "body_comps": 1}
    assert len(result.rejected) == 3
    why = dict(
        query(
            db,
            "select payload->>'summaryId', payload->%s from devices.webhook_inbox"
            " where payload ? %s",
            (REJECTED_KEY, REJECTED_KEY),
        )
    )
    assert why == {
        "s-date": ["dailies summary: 'calendarDate' must be a YYYY-MM-DD date"],
        "s-time": ["dailies summary: 'startTimeInSeconds' must be whole Unix seconds"],
        "bc-bad": ["bodyComps summary: 'weightInGrams' must be a finite number"],
    }
    # every row is closed, so the next run does not trip over them again
    assert query(db, "select count(*) from devices.webhook_inbox where processed_at is null") == [
        (0,)
    ]
    again = process_garmin_inbox(db, tmp_path / "dlt")
    assert again.rows == {} and again.rejected == []
    logged = caplog.text
    assert "set aside" in logged
    for secret_or_value in ("GU1", "tok-a", "13/01/2026", "soon", "80 kg", "m-a"):
        assert secret_or_value not in logged


# --- Garmin: a ping's callback is pulled only from Garmin's host -----------------------------


def test_a_ping_naming_another_host_is_set_aside_and_the_token_never_sent(
    db: ConnectionParams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # anyone who knows our client id can send a ping: following its callbackURL would hand
    # the member's token to whatever server it names
    monkeypatch.setenv("GARMIN_API_BASE_URL", "http://127.0.0.1:9/wellness-api/rest")
    connect_device(db, "m-a", "garmin", "GU1", "tok-a", None, None)
    ping = {
        "userId": "GU1",
        "summaryId": "ping-evil",
        "callbackURL": "https://collector.example/dailies?uploadStartTimeInSeconds=1",
    }
    store_as_received(db, "dailies", ping)

    result = process_garmin_inbox(db, tmp_path / "dlt")

    assert result.pings_pulled == 0 and result.deferred == []
    [rejected] = result.rejected
    assert rejected.endswith("ping: its callbackURL is not on the Garmin API's host; not pulled")
    assert query(db, "select count(*) from devices.webhook_inbox where processed_at is null") == [
        (0,)
    ]


@pytest.mark.parametrize(
    ("url", "base", "trusted"),
    [
        ("https://apis.garmin.com/wellness-api/rest/dailies?x=1", None, True),
        ("https://apis.garmin.com:443/wellness-api/rest/dailies", None, True),
        ("http://apis.garmin.com/wellness-api/rest/dailies", None, False),
        ("https://apis.garmin.com.evil.example/dailies", None, False),
        ("https://evil.example/?u=https://apis.garmin.com", None, False),
        ("http://127.0.0.1:8012/dailies", "http://127.0.0.1:8012/wellness-api", True),
        ("http://127.0.0.1:8013/dailies", "http://127.0.0.1:8012/wellness-api", False),
        ("http://127.0.0.1:notaport/dailies", "http://127.0.0.1:8012", False),
        (None, None, False),
    ],
)
def test_only_the_garmin_api_origin_is_trusted_for_ping_callbacks(url, base, trusted):
    from ingestion.devices.garmin import trusted_callback

    assert trusted_callback(url, base) is trusted


# --- Garmin: the local day without calendarDate --------------------------------------------


@pytest.mark.skipif(not GARMIN_SAMPLES.exists(), reason="shared samples are not checked out")
def test_garmin_daily_without_calendar_date_gets_the_local_day_of_its_start(
    db: ConnectionParams, tmp_path: Path
) -> None:
    """Garmin's own spec example (item 2 of radarbase__push_dailies.json) has no calendarDate;
    its day is the UTC date of startTimeInSeconds + startTimeOffsetInSeconds."""
    sample = json.loads((GARMIN_SAMPLES / "radarbase__push_dailies.json").read_text())
    item = sample["dailies"][1]
    assert "calendarDate" not in item
    connect_device(db, "m-r", "garmin", item["userId"], item["userAccessToken"], None, None)
    app = create_app(params=db, partner_configs={}, garmin_client_id=GARMIN_CLIENT)
    with TestClient(app) as client:
        assert post_garmin(client, {"dailies": [item]}).json() == {"stored": 1, "ignored": 0}
    process_garmin_inbox(db, tmp_path / "dlt")
    assert query(db, "select calendar_date from raw_garmin.dailies") == [(dt.date(2016, 1, 12),)]


def test_garmin_day_without_calendar_date_reaches_the_marts_on_the_members_day(platform):
    """Late evening in Denver is the next day in UTC: the member's day is start + offset."""
    state = GarminState()
    user, member = "GARMIN-NO-DATE", "member-garmin-no-date"
    token = state.add_user(user, timezone="America/Denver")
    connect_device(platform.params, member, "garmin", user, token, None, None, "America/Denver")
    day = dt.date.today() - dt.timedelta(days=1)
    [uploaded] = state.sync(user, day)["dailies"]
    without_date = {k: v for k, v in uploaded.items() if k != "calendarDate"}
    app = create_app(garmin_client_id=state.consumer_key)
    with TestClient(app) as client:
        response = client.post(
            "/webhooks/garmin/dailies",
            json={"dailies": [without_date]},
            headers={"garmin-client-id": state.consumer_key},
        )
        assert response.json() == {"stored": 1, "ignored": 0}
    assert run_assets(platform.settings, select=DEVICE_SOURCES.downstream()).success
    assert platform.query(
        "select calendar_date from raw_garmin.dailies where member_id = %s", (member,)
    ) == [(day,)]
    assert platform.query(
        "select steps from marts.fct_daily_steps where member_id = %s and local_date = %s",
        (member, day),
    ) == [(uploaded["steps"],)]
    # rows loaded before the fallback existed (calendar_date NULL) get the same day in staging
    platform.query(
        "update raw_garmin.dailies set calendar_date = null where member_id = %s", (member,)
    )
    assert platform.query(
        "select local_date from staging.stg_garmin__dailies where member_id = %s", (member,)
    ) == [(day,)]


# --- Fitbit: one member's error ------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 400])
def test_one_fitbit_members_error_waits_and_everyone_elses_data_loads(
    db: ConnectionParams, tmp_path: Path, status: int
) -> None:
    state = FitbitState()
    with EmulatorServer(create_fitbit_app(state)) as base_url:
        app = FitbitApp(base_url, state.client_id, state.client_secret)
        ids = {}
        for member, user in (("m1", "FBBAD1"), ("m2", "FBBAD2")):
            access, refresh = state.add_user(user, timezone="UTC")
            ids[user] = connect_device(db, member, "fitbit", user, access, refresh, 28800)
        day = state.local_now("FBBAD1").date() - dt.timedelta(days=1)
        receiver = create_app(
            params=db, partner_configs={}, fitbit_client_secret=state.client_secret
        )
        with TestClient(receiver) as client:
            for user in ("FBBAD1", "FBBAD2"):  # member 1's windows are fetched first
                body = json.dumps(build_notification(user, "activities", day)).encode()
                headers = {"X-Fitbit-Signature": sign(body, state.client_secret)}
                assert (
                    client.post("/webhooks/fitbit", content=body, headers=headers).status_code
                    == 204
                )

        plan = plan_from_inbox(db)
        state.set_fault(error_burst=1, error_status=status)  # the first request: member 1's
        result = sync_fitbit(app, db, plan.windows, tmp_path / "dlt", plan.read_at, workers=1)

        assert query(db, "select connection_id, steps from raw_fitbit.daily_steps") == [
            (ids["FBBAD2"], state.steps("FBBAD2", day))
        ]
        assert len(result.failed) == 1
        assert result.failed[0].startswith(f"{ids['FBBAD1']}: steps ")
        assert f"fitbit {status}" in result.failed[0]
        assert result.failed == [d for d in result.deferred if "failed" in d]
        pending = query(
            db,
            "select provider_user_id from devices.webhook_inbox where processed_at is null",
        )
        assert pending == [("FBBAD1",)]  # kept for the next run
        assert find_connection(db, "fitbit", "FBBAD1").sync_cursor == {}
        assert find_connection(db, "fitbit", "FBBAD2").sync_cursor != {}

        # the next run, with Fitbit answering again, fetches what waited
        plan = plan_from_inbox(db)
        retry = sync_fitbit(app, db, plan.windows, tmp_path / "dlt", plan.read_at, workers=1)
    assert retry.failed == [] and retry.deferred == []
    assert query(
        db, "select connection_id from raw_fitbit.daily_steps order by connection_id"
    ) == sorted([(ids["FBBAD1"],), (ids["FBBAD2"],)])
    assert query(db, "select count(*) from devices.webhook_inbox where processed_at is null") == [
        (0,)
    ]


class _Answering:
    """A Fitbit client whose every GET answers `body` (for the item parsers alone)."""

    def __init__(self, body: dict):
        from types import SimpleNamespace

        self.body = body
        self.connection = SimpleNamespace(
            connection_id="c1", member_id="m1", timezone="America/New_York"
        )

    def get_json(self, path: str) -> dict:
        return self.body


@pytest.mark.parametrize(
    ("metric", "body", "kept"),
    [
        (
            "activities",
            {
                "activities": [
                    {"logId": 1, "startTime": "2024-03-10T01:30:00.000-05:00"},
                    {"activityName": "no logId", "startTime": "2024-03-10T09:00:00.000-04:00"},
                    {"logId": 4, "startTime": "2024-03-10T10:00:00.000-04:00"},
                ],
                "pagination": {"next": ""},
            },
            [1, 4],
        ),
        (
            "steps",
            {
                "activities-steps": [
                    {"dateTime": "2024-03-09", "value": "175"},
                    {"dateTime": "2024-03-10", "value": "n/a"},
                    {"dateTime": "2024-03-11", "value": "3212"},
                ]
            },
            [175, 3212],
        ),
        (
            "weight",
            {
                "weight": [
                    {"logId": 7, "date": "2024-03-10", "weight": 80.5},
                    {"logId": 8, "date": "2024-03-10"},
                ]
            },
            [7],
        ),
    ],
)
def test_one_unreadable_fitbit_item_is_set_aside_and_its_window_loads(metric, body, kept, caplog):
    # it failed the whole window, on every later sync too: the member's data stopped loading
    from ingestion.devices.fitbit import SyncWindow, fetch_window

    window = SyncWindow("c1", metric, dt.date(2024, 3, 9), dt.date(2024, 3, 11))
    with caplog.at_level(logging.WARNING, logger="ingestion.devices.fitbit"):
        rows = fetch_window(_Answering(body), window)
    key = {"activities": "log_id", "steps": "steps", "weight": "log_id"}[metric]
    assert [row[key] for row in rows] == kept
    [warning] = [r.getMessage() for r in caplog.records]
    assert "item [1]" in warning and "set aside" in warning
    assert "n/a" not in warning and "no logId" not in warning  # never the value
