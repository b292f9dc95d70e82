"""Fitbit and Garmin webhook receivers against a real Postgres, through the app's lifespan."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mdp.crypto import token_hash
from mdp.database import ConnectionParams, connect
from serving.app import create_app
from serving.webhooks import InvalidNotification, garmin_resource_date, parse_fitbit_notifications

FITBIT_SECRET = "fitbit-client-secret-for-tests"
VERIFY_CODE = "verify-code-for-tests"
GARMIN_CLIENT = "garmin-consumer-key-for-tests"
GARMIN_TOKEN = "garmin-access-token-of-user-g1"
GARMIN_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "garmin"


def sign(body: bytes, secret: str = FITBIT_SECRET) -> str:
    """Fitbit's documented signature, computed independently of the code under test."""
    return base64.b64encode(hmac.new(f"{secret}&".encode(), body, hashlib.sha1).digest()).decode()


def notification(owner: str = "FB123", collection: str = "activities", day: str = "2026-03-01"):
    return {
        "collectionType": collection,
        "date": day,
        "ownerId": owner,
        "ownerType": "user",
        "subscriptionId": f"{owner}-sub",
    }


def add_connection(
    params: ConnectionParams, provider: str, user_id: str, token: str | None = None
) -> None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into devices.connections"
            " (connection_id, member_id, provider, provider_user_id, access_token_hash)"
            " values (%s, %s, %s, %s, %s)",
            (
                f"{provider}_{user_id}",
                f"member_{user_id}",
                provider,
                user_id,
                token_hash(token) if token else None,
            ),
        )


def inbox(params: ConnectionParams) -> list[dict[str, Any]]:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select provider, dedupe_key, provider_user_id, collection_type, resource_date,"
            " payload, times_received, processed_at from devices.webhook_inbox order by inbox_id"
        )
        columns = [c.name for c in cur.description]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def last_notified(params: ConnectionParams, provider: str, user_id: str) -> dt.datetime | None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select last_notified_at from devices.connections"
            " where provider = %s and provider_user_id = %s",
            (provider, user_id),
        )
        return cur.fetchone()[0]


@pytest.fixture
def devices_db(database: ConnectionParams) -> ConnectionParams:
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute("truncate devices.webhook_inbox, devices.connections")
    return database


@pytest.fixture
def client(devices_db: ConnectionParams) -> Iterator[TestClient]:
    app = create_app(
        params=devices_db,
        partner_configs={},
        fitbit_client_secret=FITBIT_SECRET,
        fitbit_verification_code=VERIFY_CODE,
        garmin_client_id=GARMIN_CLIENT,
    )
    with TestClient(app) as test_client:
        yield test_client


def post_fitbit(client: TestClient, body: bytes, signature: str | None = None):
    headers = {"Content-Type": "application/json"}
    headers["X-Fitbit-Signature"] = sign(body) if signature is None else signature
    return client.post("/webhooks/fitbit", content=body, headers=headers)


# --- Fitbit: subscriber verification -------------------------------------------------------


def test_fitbit_verification_answers_204_for_our_code(client: TestClient) -> None:
    assert client.get("/webhooks/fitbit", params={"verify": VERIFY_CODE}).status_code == 204


@pytest.mark.parametrize(
    "query",
    [
        {"verify": "wrong"},
        {"verify": ""},
        {},
        [("verify", "wrong"), ("verify", VERIFY_CODE)],  # the last one won: 204
        [("verify", VERIFY_CODE), ("verify", "wrong")],
    ],
)
def test_fitbit_verification_answers_404_for_any_other_code(client: TestClient, query) -> None:
    assert client.get("/webhooks/fitbit", params=query).status_code == 404


# --- Fitbit: notifications -----------------------------------------------------------------


def test_signed_notifications_are_stored_and_mark_the_connection_notified(
    client: TestClient, devices_db: ConnectionParams
) -> None:
    add_connection(devices_db, "fitbit", "FB123")
    add_connection(devices_db, "garmin", "FB123")  # same id at another provider: untouched
    items = [notification(), notification(collection="body", day="2026-03-02")]
    body = json.dumps(items).encode()

    started = time.perf_counter()
    response = post_fitbit(client, body)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"\nFitbit notification POST answered in {elapsed_ms:.1f} ms")

    assert response.status_code == 204, response.text
    rows = inbox(devices_db)
    assert [(r["dedupe_key"], r["resource_date"]) for r in rows] == [
        ("fitbit:FB123:activities:2026-03-01", dt.date(2026, 3, 1)),
        ("fitbit:FB123:body:2026-03-02", dt.date(2026, 3, 2)),
    ]
    first = rows[0]
    assert first["provider"] == "fitbit"
    assert first["provider_user_id"] == "FB123"
    assert first["collection_type"] == "activities"
    assert first["payload"] == items[0]
    assert first["times_received"] == 1
    assert first["processed_at"] is None
    assert last_notified(devices_db, "fitbit", "FB123") is not None
    assert last_notified(devices_db, "garmin", "FB123") is None


def test_warm_fitbit_post_is_answered_fast(client: TestClient) -> None:
    body = json.dumps([notification(owner=f"U{i}") for i in range(50)]).encode()
    post_fitbit(client, body)  # the first request prepares the statement
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        assert post_fitbit(client, body).status_code == 204
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    print(
        f"\nFitbit POST with 50 notifications: median {timings[10]:.1f} ms,"
        f" max {timings[-1]:.1f} ms (Fitbit allows 5000 ms)"
    )


def test_repeated_delivery_keeps_one_pending_row_and_counts_it(
    client: TestClient, devices_db: ConnectionParams
) -> None:
    body = json.dumps([notification()]).encode()
    for _ in range(3):
        assert post_fitbit(client, body).status_code == 204
    rows = inbox(devices_db)
    assert len(rows) == 1
    assert rows[0]["times_received"] == 3


def test_a_notification_repeated_inside_one_body_is_counted_twice(
    client: TestClient, devices_db: ConnectionParams
) -> None:
    body = json.dumps([notification(), notification()]).encode()
    assert post_fitbit(client, body).status_code == 204
    assert [r["times_received"] for r in inbox(devices_db)] == [2]


def test_delivery_after_processing_opens_a_new_pending_row(
    client: TestClient, devices_db: ConnectionParams
) -> None:
    body = json.dumps([notification()]).encode()
    assert post_fitbit(client, body).status_code == 204
    with connect(devices_db) as conn, conn.cursor() as cur:
        cur.execute("update devices.webhook_inbox set processed_at = now()")
    assert post_fitbit(client, body).status_code == 204
    rows = inbox(devices_db)
    assert len(rows) == 2
    assert rows[0]["processed_at"] is not None
    assert rows[1]["processed_at"] is None
    assert rows[1]["times_received"] == 1


def test_user_revoked_access_is_stored_for_the_sync_job(
    client: TestClient, devices_db: ConnectionParams
) -> None:
    revoked = notification(collection="userRevokedAccess")
    assert post_fitbit(client, json.dumps([revoked]).encode()).status_code == 204
    [row] = inbox(devices_db)
    assert row["collection_type"] == "userRevokedAccess"
    assert row["dedupe_key"] == "fitbit:FB123:userRevokedAccess:2026-03-01"


BODY = json.dumps([notification()]).encode()


def _flip_one_byte(signature: str) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("body", "signature"),
    [
        pytest.param(BODY, sign(BODY, "another-secret"), id="wrong-secret"),
        pytest.param(BODY, _flip_one_byte(sign(BODY)), id="flipped-signature-byte"),
        pytest.param(BODY, sign(BODY + b" "), id="signature-of-another-body"),
        pytest.param(BODY, "", id="empty-header"),
        pytest.param(
            json.dumps([notification()], indent=2).encode(), sign(BODY), id="reserialized-json"
        ),
        pytest.param(BODY, sign(BODY).rstrip("="), id="padding-dropped"),
        pytest.param(
            BODY, sign(BODY).replace("+", "%2B").replace("/", "%2F") + "%3D", id="url-encoded"
        ),
    ],
)
def test_forged_notification_is_refused_with_404_and_nothing_stored(
    client: TestClient, devices_db: ConnectionParams, body: bytes, signature: str
) -> None:
    response = post_fitbit(client, body, signature)
    assert response.status_code == 404
    assert inbox(devices_db) == []


def test_notification_without_signature_header_is_refused(
    client: TestClient, devices_db: ConnectionParams
) -> None:
    response = client.post("/webhooks/fitbit", content=BODY)
    assert response.status_code == 404
    assert inbox(devices_db) == []


def test_signature_is_checked_on_the_raw_bytes_as_sent(
    client: TestClient, devices_db: ConnectionParams
) -> None:
    body = (
        b'[ {\n  "collectionType" : "activities",\t"date":"2026-03-01",\r\n'
        b'  "ownerId":"caf\\u00e9\\ud83d\\ude00", "ownerType":"user","subscriptionId":"s1" } ]  '
    )
    assert post_fitbit(client, body).status_code == 204
    [row] = inbox(devices_db)
    assert row["provider_user_id"] == "café\U0001f600"
    assert row["payload"]["ownerId"] == "café\U0001f600"


@pytest.mark.parametrize(
    "body", [b"not json", b'{"collectionType": "activities"}', b'"activities"', b"42"]
)
def test_a_signed_body_that_is_no_notification_array_is_refused_whole(
    client: TestClient, devices_db: ConnectionParams, body: bytes
) -> None:
    response = post_fitbit(client, body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "invalid_notification"
    assert inbox(devices_db) == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"collectionType": "body", "date": "2026-03-01"}, "ownerId"),
        ({**notification(), "date": "03/01/2026"}, "date"),
        ({k: v for k, v in notification().items() if k != "date"}, "date"),
        ({**notification(), "ownerId": 42}, "ownerId"),
        ("activities", None),
        ({**notification(), "ownerType": "user\u0000"}, None),
        # these two were a 503 ("the database is not reachable") for the whole body, forever
        ({**notification(), "ownerId": "A" * 900_000}, "ownerId"),
        ({**notification(), "extra": float("inf")}, None),  # json.dumps writes Infinity
    ],
)
def test_a_malformed_notification_is_set_aside_and_the_others_are_stored(
    client: TestClient, devices_db: ConnectionParams, bad, field, caplog
) -> None:
    # the whole array was refused: Fitbit sent the same bytes again, refused again each time,
    # and the good notifications in it were lost
    good = [notification(), {**notification(), "ownerId": "USER-2", "collectionType": "body"}]
    body = json.dumps([good[0], bad, good[1]]).encode()
    with caplog.at_level(logging.WARNING, logger="serving.webhooks"):
        assert post_fitbit(client, body).status_code == 204
    stored = {(row["provider_user_id"], row["collection_type"]) for row in inbox(devices_db)}
    assert stored == {(n["ownerId"], n["collectionType"]) for n in good}
    [warning] = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert "notification [1]" in warning and (field is None or f"'{field}'" in warning)


def test_empty_notification_array_is_accepted(client: TestClient, devices_db) -> None:
    assert post_fitbit(client, b"[]").status_code == 204
    assert inbox(devices_db) == []


def test_fitbit_parser_names_the_item_and_field() -> None:
    parsed = parse_fitbit_notifications(
        json.dumps([{"ownerId": "X", "date": "2026-01-01"}]).encode()
    )
    assert parsed.items == []
    [refusal] = parsed.refused
    assert isinstance(refusal, InvalidNotification)
    assert str(refusal) == "notification [0]: 'collectionType' is missing"
    deleted = {"collectionType": "deleteUser", "ownerId": "X"}
    [item] = parse_fitbit_notifications(json.dumps([deleted]).encode()).items
    assert item.resource_date is None
    assert item.dedupe_key == "fitbit:X:deleteUser:"


# --- Garmin --------------------------------------------------------------------------------


def daily(user: str = "g1", token: str = GARMIN_TOKEN, steps: int = 4210, **extra: Any):
    return {
        "userId": user,
        "userAccessToken": token,
        "summaryId": f"{user}-daily-2026-03-01",
        "calendarDate": "2026-03-01",
        "startTimeInSeconds": 1772323200,
        "startTimeOffsetInSeconds": 3600,
        "durationInSeconds": 86400,
        "steps": steps,
        **extra,
    }


def post_garmin(client: TestClient, body: Any, path: str = "dailies", client_id=GARMIN_CLIENT):
    headers = {} if client_id is None else {"garmin-client-id": client_id}
    url = f"/webhooks/garmin/{path}" if path else "/webhooks/garmin"
    return client.post(url, json=body, headers=headers)


@pytest.fixture
def garmin_user(devices_db: ConnectionParams) -> ConnectionParams:
    add_connection(devices_db, "garmin", "g1", GARMIN_TOKEN)
    return devices_db


@pytest.mark.parametrize("client_id", [None, "", "someone-else"])
def test_garmin_request_without_our_client_id_is_refused(
    client: TestClient, garmin_user: ConnectionParams, client_id
) -> None:
    response = post_garmin(client, {"dailies": [daily()]}, client_id=client_id)
    assert response.status_code == 401
    assert inbox(garmin_user) == []


def test_garmin_push_from_a_known_token_is_stored_and_an_unknown_token_ignored(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    body = {"dailies": [daily(), daily(user="g2", token="a-token-we-never-issued")]}
    response = post_garmin(client, body)
    assert response.status_code == 200
    assert response.json() == {"stored": 1, "ignored": 1}
    [row] = inbox(garmin_user)
    assert row["provider"] == "garmin"
    assert row["provider_user_id"] == "g1"
    assert row["collection_type"] == "dailies"
    assert row["resource_date"] == dt.date(2026, 3, 1)
    assert row["dedupe_key"].startswith("garmin:dailies:g1-daily-2026-03-01:")
    assert "userAccessToken" not in row["payload"]  # tokens live encrypted in connections only
    assert row["payload"]["steps"] == 4210
    assert last_notified(garmin_user, "garmin", "g1") is not None


def test_identical_garmin_push_redelivered_is_one_row(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    for _ in range(2):
        assert post_garmin(client, {"dailies": [daily()]}).json() == {"stored": 1, "ignored": 0}
    rows = inbox(garmin_user)
    assert len(rows) == 1
    assert rows[0]["times_received"] == 2


def test_garmin_summary_resent_with_new_values_is_a_new_row(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    post_garmin(client, {"dailies": [daily(steps=4210)]})
    post_garmin(client, {"dailies": [daily(steps=5120)]})
    rows = inbox(garmin_user)
    assert [r["payload"]["steps"] for r in rows] == [4210, 5120]
    assert len({r["dedupe_key"] for r in rows}) == 2


def test_garmin_ping_is_stored_keyed_by_its_upload_window(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    ping = {
        "userId": "g1",
        "userAccessToken": GARMIN_TOKEN,
        "uploadStartTimeInSeconds": 1772323200,
        "uploadEndTimeInSeconds": 1772326800,
        "callbackURL": "https://apis.garmin.com/wellness-api/rest/epochs?uploadStartTimeInSeconds=1772323200&uploadEndTimeInSeconds=1772326800",
    }
    for _ in range(2):
        assert post_garmin(client, {"epochs": [ping]}, path="epochs").json()["stored"] == 1
    [row] = inbox(garmin_user)
    assert row["dedupe_key"] == "garmin-ping:epochs:g1:1772323200:1772326800"
    assert row["resource_date"] is None
    assert row["payload"]["callbackURL"] == ping["callbackURL"]
    assert row["times_received"] == 2


def test_garmin_push_for_a_disconnected_connection_is_not_taken_in(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    # Garmin keeps pushing with the old token until the deregistration reaches it: the
    # member's data must not be kept after they disconnected
    with connect(garmin_user) as conn, conn.cursor() as cur:
        cur.execute(
            "update devices.connections set status = 'disconnected' where provider_user_id = 'g1'"
        )
    response = post_garmin(client, {"dailies": [daily()]})
    assert response.status_code == 200
    assert response.json() == {"stored": 0, "ignored": 1}
    assert inbox(garmin_user) == []


def test_garmin_deregistration_is_stored_from_the_body_keyed_endpoint(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    body = {"deregistrations": [{"userId": "g1", "userAccessToken": GARMIN_TOKEN}]}
    response = post_garmin(client, body, path="")
    assert response.json() == {"stored": 1, "ignored": 0}
    [row] = inbox(garmin_user)
    assert row["collection_type"] == "deregistrations"
    assert row["dedupe_key"].startswith("garmin-deregistrations:g1:")
    assert row["payload"] == {"userId": "g1"}


def test_garmin_body_keyed_endpoint_takes_several_types_and_ignores_unknown_ones(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    body = {
        "dailies": [daily()],
        "bodyComps": [
            {
                "userId": "g1",
                "userAccessToken": GARMIN_TOKEN,
                "summaryId": "bc-1",
                "measurementTimeInSeconds": 1772409600,
                "weightInGrams": 80500,
            }
        ],
        "sleeps": [daily()],
    }
    assert post_garmin(client, body, path="").json() == {"stored": 2, "ignored": 1}
    by_type = {r["collection_type"]: r for r in inbox(garmin_user)}
    assert by_type["bodyComps"]["resource_date"] == dt.date(2026, 3, 2)


def test_garmin_token_sent_with_another_users_data_is_ignored(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    add_connection(garmin_user, "garmin", "g2", "token-of-g2")
    forged = daily(user="g2", token=GARMIN_TOKEN)
    assert post_garmin(client, {"dailies": [forged]}).json() == {"stored": 0, "ignored": 1}
    assert inbox(garmin_user) == []


def test_garmin_malformed_items_are_ignored_and_counted(
    client: TestClient, garmin_user: ConnectionParams
) -> None:
    no_token = {k: v for k, v in daily().items() if k != "userAccessToken"}
    no_summary = {k: v for k, v in daily().items() if k != "summaryId"}
    # a 1 MB id was a 503 for the whole body (the dedupe key outgrew its index), and Garmin
    # re-sends for days
    huge_id = {**daily(), "summaryId": "Z" * 1_000_000}
    body = {"dailies": [no_token, no_summary, "not an object", huge_id, daily()]}
    assert post_garmin(client, body).json() == {"stored": 1, "ignored": 4}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("sleeps", {"sleeps": []}, 404),
        ("dailies", {"epochs": [daily()]}, 400),
        ("dailies", {"dailies": [daily()], "epochs": []}, 400),
        ("dailies", {"dailies": {"not": "a list"}}, 400),
        ("dailies", [daily()], 400),
    ],
)
def test_garmin_body_that_does_not_match_the_url_is_refused(
    client: TestClient, garmin_user: ConnectionParams, path: str, body: Any, status: int
) -> None:
    assert post_garmin(client, body, path=path).status_code == status
    assert inbox(garmin_user) == []


def test_garmin_resource_date_falls_back_to_the_utc_start_date() -> None:
    assert garmin_resource_date({"startTimeInSeconds": 1772323199}) == dt.date(2026, 2, 28)
    assert garmin_resource_date({"calendarDate": "2026-03-01", "startTimeInSeconds": 0}) == (
        dt.date(2026, 3, 1)
    )
    assert garmin_resource_date({"startTimeInSeconds": True}) is None
    assert garmin_resource_date({}) is None


@pytest.mark.skipif(not GARMIN_SAMPLES.exists(), reason="shared samples are not checked out")
def test_radar_base_sample_push_is_stored(client: TestClient, devices_db: ConnectionParams) -> None:
    sample = json.loads((GARMIN_SAMPLES / "radarbase__push_dailies.json").read_text())
    users = {(item["userId"], item["userAccessToken"]) for item in sample["dailies"]}
    for user_id, token in users:
        add_connection(devices_db, "garmin", user_id, token)
    response = post_garmin(client, copy.deepcopy(sample))
    assert response.json() == {"stored": len(sample["dailies"]), "ignored": 0}


# --- what leaves the process ---------------------------------------------------------------


def test_logs_never_carry_tokens_or_provider_user_ids(
    client: TestClient, garmin_user: ConnectionParams, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_token = "token-nobody-knows-xyz"
    post_garmin(client, {"dailies": [daily(user="g9", token=secret_token)]})
    post_garmin(client, {"dailies": [daily(user="g9", token=GARMIN_TOKEN)]})
    post_fitbit(client, json.dumps([{**notification(owner="FBSECRET"), "date": "x"}]).encode())
    post_fitbit(client, BODY, _flip_one_byte(sign(BODY)))
    text = caplog.text
    assert "garmin" in text  # the warnings were logged
    for leaked in (secret_token, GARMIN_TOKEN, token_hash(secret_token), "g9", "FBSECRET"):
        assert leaked not in text


def test_webhook_outcomes_are_counted_in_metrics(client: TestClient, devices_db) -> None:
    post_fitbit(client, BODY)
    post_fitbit(client, BODY, "forged")
    post_garmin(client, {"dailies": []}, client_id="wrong")
    metrics = client.get("/metrics").text
    assert 'mdp_webhook_requests_total{outcome="accepted",provider="fitbit"} 1.0' in metrics
    assert 'mdp_webhook_requests_total{outcome="bad_signature",provider="fitbit"} 1.0' in metrics
    assert 'mdp_webhook_requests_total{outcome="unauthorized",provider="garmin"} 1.0' in metrics
    assert 'mdp_webhook_items_total{outcome="new",provider="fitbit"} 1.0' in metrics
    assert 'route="/webhooks/fitbit"' in metrics
