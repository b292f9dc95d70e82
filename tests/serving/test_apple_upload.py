"""Member tokens and the Apple Health upload endpoint, against a real Postgres through the app."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from ingestion.devices.apple_health import UploadPayloadError, parse_upload_batch
from mdp.database import ConnectionParams, connect
from mdp.phi import log_ref
from serving.app import create_app
from serving.apple_upload import (
    MAX_BODY_BYTES,
    UPLOAD_PATH,
    InvalidUpload,
    check_upload,
    decode_upload,
    unstorable_reason,
)
from serving.member_tokens import InvalidMemberToken, issue_member_token, verify_member_token
from tests.serving.conftest import wait_for

KEY = "member-token-key-for-tests"
MEMBER = "acme_corp:A100001"
OTHER_MEMBER = "acme_corp:A100002"


def sample(**overrides: Any) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()).upper(),  # HealthKit's uuidString is upper case
        "type": "HKQuantityTypeIdentifierStepCount",
        "start": "2026-03-01T08:00:00.250-05:00",
        "end": "2026-03-01T08:10:00.750-05:00",
        "value": 412,
        "unit": "count",
        "source": "iPhone",
        "device": {"name": "iPhone", "model": "iPhone", "hardware": "iPhone12,8"},
        **overrides,
    }


def bearer(member_id: str = MEMBER, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_member_token(member_id, key=KEY, **kwargs)}"}


def post(client: TestClient, body: Any, member_id: str = MEMBER, **headers: str):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **bearer(member_id), **headers}
    return client.post(UPLOAD_PATH, content=content, headers=all_headers)


def inbox(params: ConnectionParams) -> list[dict[str, Any]]:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select member_id, batch_key, payload, processed_at"
            " from devices.apple_upload_inbox order by upload_id"
        )
        columns = [c.name for c in cur.description]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture
def uploads_db(database: ConnectionParams) -> ConnectionParams:
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute("truncate devices.apple_upload_inbox")
    return database


@pytest.fixture
def client(uploads_db: ConnectionParams, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MDP_MEMBER_TOKEN_KEY", KEY)
    app = create_app(params=uploads_db, partner_configs={})
    with TestClient(app) as test_client:
        yield test_client


# --- member tokens -------------------------------------------------------------------------


def test_a_member_token_names_the_member_it_was_issued_for() -> None:
    token = issue_member_token(MEMBER, key=KEY)
    assert token.startswith("mt1.")
    assert verify_member_token(token, key=KEY) == MEMBER


def test_a_token_past_its_expiry_is_refused() -> None:
    token = issue_member_token(MEMBER, ttl_seconds=60, key=KEY, now=1_000_000)
    assert verify_member_token(token, key=KEY, now=1_000_059) == MEMBER
    with pytest.raises(InvalidMemberToken) as refused:
        verify_member_token(token, key=KEY, now=1_000_060)
    assert refused.value.reason == "expired"


def test_a_token_signed_with_another_key_or_altered_is_refused() -> None:
    token = issue_member_token(MEMBER, key=KEY)
    with pytest.raises(InvalidMemberToken) as refused:
        verify_member_token(token, key="another-key")
    assert refused.value.reason == "bad_signature"
    prefix, claims, signature = token.split(".")
    forged_claims = issue_member_token(OTHER_MEMBER, key="another-key").split(".")[1]
    for forged in (f"{prefix}.{forged_claims}.{signature}", f"{prefix}.{claims}.{signature}A"):
        with pytest.raises(InvalidMemberToken) as refused:
            verify_member_token(forged, key=KEY)
        assert refused.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "token",
    ["", "mt1", "mt1..", "mt1.abc", "mt2.abc.def", "mt1.a.b.c", "é" * 10, "mt1." + "a" * 5000],
)
def test_a_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidMemberToken) as refused:
        verify_member_token(token, key=KEY)
    assert refused.value.reason in {"malformed", "bad_signature"}


def test_a_signed_token_with_unusable_claims_is_refused() -> None:
    import base64
    import hmac

    for claims in (b"[1]", b'{"m": "", "exp": 9999999999}', b'{"m": "x", "exp": "soon"}', b"\xff"):
        body = "mt1." + base64.urlsafe_b64encode(claims).rstrip(b"=").decode()
        mac = hmac.new(KEY.encode(), body.encode(), hashlib.sha256).digest()
        token = body + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        with pytest.raises(InvalidMemberToken) as refused:
            verify_member_token(token, key=KEY)
        assert refused.value.reason == "malformed"


@pytest.mark.parametrize("member_id", ["", "  ", "a\x00b", "x" * 300])
def test_no_token_is_issued_for_an_unusable_member_id(member_id: str) -> None:
    with pytest.raises(ValueError):
        issue_member_token(member_id, key=KEY)


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer mdp_0123456789abcdef_secret",  # a partner API key is not a member token
        f"Bearer {issue_member_token(MEMBER, key='not-the-key')}",
        f"Bearer {issue_member_token(MEMBER, ttl_seconds=1, key=KEY, now=time.time() - 10)}",
    ],
    ids=["none", "empty", "no-token", "basic", "partner-key", "other-key", "expired"],
)
def test_upload_without_a_valid_member_token_is_refused(
    client: TestClient, uploads_db: ConnectionParams, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.post(UPLOAD_PATH, json={"samples": [sample()]}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"
    assert inbox(uploads_db) == []


# --- storing -------------------------------------------------------------------------------


def test_valid_upload_is_stored_and_answered_with_counts(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    body = json.dumps(
        {"samples": [sample(), sample(value=80)], "deleted": [str(uuid.uuid4())]}
    ).encode()
    response = post(client, body)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "deleted": 1, "rejected": [], "duplicate": False}
    [row] = inbox(uploads_db)
    assert row["member_id"] == MEMBER
    assert row["batch_key"] == hashlib.sha256(body).hexdigest()
    assert row["payload"] == json.loads(body)
    assert row["processed_at"] is None


def test_resent_batch_is_stored_once_and_reported_duplicate(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    body = json.dumps({"samples": [sample()]}).encode()
    first, second = post(client, body), post(client, body)
    assert first.json()["duplicate"] is False
    assert second.status_code == 202
    assert second.json() == {"accepted": 1, "deleted": 0, "rejected": [], "duplicate": True}
    assert len(inbox(uploads_db)) == 1


def test_the_same_body_from_two_members_is_stored_for_each(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    body = json.dumps({"samples": [sample()]}).encode()
    assert post(client, body).json()["duplicate"] is False
    assert post(client, body, member_id=OTHER_MEMBER).json()["duplicate"] is False
    assert [row["member_id"] for row in inbox(uploads_db)] == [MEMBER, OTHER_MEMBER]


def test_invalid_samples_are_listed_and_the_valid_ones_kept(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    good = sample()
    samples = [
        sample(type="HKQuantityTypeIdentifierHeartRate"),
        good,
        sample(value="412"),
        "not an object",
        sample(start="2026-03-01T08:00:00"),  # no offset
        sample(uuid="not-a-uuid"),
        sample(uuid=good["uuid"].lower()),  # the same sample twice
    ]
    response = post(client, {"samples": samples, "deleted": ["nope", str(uuid.uuid4())]})
    assert response.status_code == 202
    answer = response.json()
    assert answer["accepted"] == 1
    assert answer["deleted"] == 1
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
        (0, "type"),
        (2, "value"),
        (3, "sample"),
        (4, "start"),
        (5, "uuid"),
        (6, "uuid"),
        (0, "deleted"),
    ]
    assert all(r["problem"] for r in answer["rejected"])
    [row] = inbox(uploads_db)
    stored = parse_upload_batch(row["payload"], MEMBER)  # what the loader will read
    assert [r["uuid"] for r in stored.rows] == [good["uuid"].lower()]
    assert len(stored.problems) == len(answer["rejected"])


def test_batch_with_nothing_to_load_is_answered_but_not_stored(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    response = post(client, {"samples": [sample(value=None)], "deleted": []})
    assert response.status_code == 202
    assert response.json()["accepted"] == 0
    assert [r["field"] for r in response.json()["rejected"]] == ["value"]
    assert inbox(uploads_db) == []


def test_body_over_5_mb_is_refused_with_413(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    padding = "x" * (MAX_BODY_BYTES + 1)
    assert post(client, {"samples": [], "padding": padding}).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"samples": [], "padding": "'
        for _ in range(6):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    headers = {"Content-Type": "application/json", **bearer()}
    assert client.post(UPLOAD_PATH, content=chunks(), headers=headers).status_code == 413
    assert inbox(uploads_db) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"samples"',
        b"null",
        b"42",
        b'{"samples": {"uuid": "x"}}',
        b'{"samples": null}',
        b'{"samples": [], "deleted": "all"}',
        b'{"samples": [{"value": NaN}]}',
        b'{"samples": [{"value": Infinity}]}',
        b"\xff\xfe{\x00}\x00",
        b'{"samples": [], "x": "\xc3\x28"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"samples": [' + b"1" * 5000 + b"]}",
    ],
)
def test_body_of_the_wrong_shape_is_refused_with_422(
    client: TestClient, uploads_db: ConnectionParams, body: bytes
) -> None:
    response = post(client, body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_upload"
    assert response.json()["detail"]
    assert inbox(uploads_db) == []


def test_non_json_content_type_is_refused_with_422(client: TestClient) -> None:
    body = json.dumps({"samples": [sample()]}).encode()
    response = post(client, body, **{"Content-Type": "text/plain"})
    assert response.status_code == 422
    assert "Content-Type" in response.json()["detail"]


def test_unicode_is_kept_as_sent(client: TestClient, uploads_db: ConnectionParams) -> None:
    source = "Mia’s iPhone 🏃‍♀️ — Ünïcödé 日本語"
    response = post(client, {"samples": [sample(source=source)]})
    assert response.status_code == 202
    assert response.json()["accepted"] == 1
    [row] = inbox(uploads_db)
    assert row["payload"]["samples"][0]["source"] == source


def test_nul_and_unpaired_surrogates_reject_only_their_sample(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    good = sample()
    body = json.dumps(
        {
            "samples": [
                sample(source="iPhone\u0000"),
                good,
                sample(device={"name": "Watch\ud800"}),
                sample(metadata={"note\u0000": "x"}),
            ],
            "deleted": ["\u0000"],
            "comment": "ignored \u0000",
        }
    ).encode()
    assert b"\\u0000" in body and b"\\ud800" in body
    response = post(client, body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 1
    assert [(r["index"], r["field"], r["problem"]) for r in answer["rejected"]] == [
        (0, "source", "contains a NUL character"),
        (2, "device", "contains an unpaired UTF-16 surrogate"),
        (3, "metadata", "contains a NUL character"),
        (0, "deleted", "contains a NUL character"),
    ]
    [row] = inbox(uploads_db)
    assert row["batch_key"] == hashlib.sha256(body).hexdigest()
    assert row["payload"]["samples"][1] == good
    assert row["payload"]["samples"][0] is None
    stored = parse_upload_batch(row["payload"], MEMBER)
    assert len(stored.rows) == 1 and len(stored.problems) == 4


def test_a_value_beyond_float_range_rejects_its_sample_not_the_batch(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    body = json.dumps({"samples": [sample(), sample()]}).encode()
    body = body.replace(b'"value": 412', b'"value": 1e400', 1)
    response = post(client, body)
    assert response.status_code == 202
    assert response.json()["accepted"] == 1
    assert [r["index"] for r in response.json()["rejected"]] == [0]
    assert len(inbox(uploads_db)) == 1


def test_a_time_beyond_the_utc_calendar_rejects_its_sample_not_the_batch(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    # year 1 ahead of UTC and year 9999 behind it have no UTC time: that was a 500
    early = sample(start="0001-01-01T00:00:00+14:00", end="0001-01-01T00:10:00+14:00")
    late = sample(start="9999-12-31T23:50:00-14:00", end="9999-12-31T23:55:00-14:00")
    response = post(client, {"samples": [early, sample(), late]})
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1
    assert [(r["index"], r["field"]) for r in response.json()["rejected"]] == [
        (0, "start"),
        (2, "start"),
    ]
    assert len(inbox(uploads_db)) == 1


# --- no input makes the checks fail -----------------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.loads gives them for 1e400
    | st.text(),  # NUL and lone surrogates included
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_sample_fields = st.fixed_dictionaries(
    {},
    optional={name: _json_values | st.just(value) for name, value in sample().items()}
    | {"sync_identifier": _json_values, "sync_version": _json_values},
)


@settings(max_examples=300, deadline=None)
@given(
    samples=st.lists(_sample_fields | _json_values, max_size=5) | _json_values,
    deleted=st.lists(_json_values | st.uuids().map(str), max_size=3) | _json_values,
)
def test_any_json_payload_is_answered_and_what_is_stored_is_storable(
    samples: Any, deleted: Any
) -> None:
    try:
        checked = check_upload({"samples": samples, "deleted": deleted}, MEMBER)
    except UploadPayloadError:
        return
    stored_payload = json.loads(checked.payload_text)
    assert unstorable_reason(stored_payload) is None  # no NUL, lone surrogate or infinity
    reparsed = parse_upload_batch(stored_payload, MEMBER)
    assert reparsed.rows == checked.batch.rows
    assert len(reparsed.problems) == len(checked.problems)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_body_is_decoded_or_refused_as_invalid(body: bytes) -> None:
    try:
        payload = decode_upload(body, "application/json")
    except InvalidUpload:
        return
    assert isinstance(payload, dict)


# --- audit, metrics, logs, outages ---------------------------------------------------------


def test_uploads_are_audited_without_the_member_id(
    client: TestClient, uploads_db: ConnectionParams
) -> None:
    response = post(
        client, {"samples": [sample()]}, **{"X-Request-ID": "a0d17000-0000-4000-8000-000000000001"}
    )
    assert response.headers["x-request-id"] == "a0d17000-0000-4000-8000-000000000001"
    post(client, b"[]", **{"X-Request-ID": "a0d17000-0000-4000-8000-000000000002"})

    def audit_rows() -> list[tuple[Any, ...]]:
        with connect(uploads_db) as conn, conn.cursor() as cur:
            cur.execute(
                "select request_id, actor, action, partner_id, member_ref, outcome, detail, t::text"
                " from audit.access_log t where request_id like 'a0d17000-%%'"
                " order by request_id"
            )
            return cur.fetchall()

    assert wait_for(lambda: len(audit_rows()) == 2, timeout=3)
    accepted, invalid = audit_rows()
    ref = log_ref(MEMBER)
    assert accepted[1:6] == (f"member:{ref}", "apple_health_upload", None, ref, "accepted")
    assert accepted[6] == {
        "status": 202,
        "accepted": 1,
        "deleted": 0,
        "rejected": 0,
        "duplicate": False,
    }
    assert invalid[5:7] == ("invalid", {"status": 422})
    for row in (accepted, invalid):
        assert MEMBER not in row[7]


def test_uploads_are_counted_in_metrics(client: TestClient) -> None:
    post(client, {"samples": [sample(), sample(value="x")], "deleted": [str(uuid.uuid4())]})
    client.post(UPLOAD_PATH, json={})
    text = client.get("/metrics").text
    assert 'mdp_apple_health_uploads_total{outcome="accepted"} 1.0' in text
    assert 'mdp_apple_health_uploads_total{outcome="unauthorized_missing"} 1.0' in text
    assert 'mdp_apple_health_upload_samples_total{outcome="accepted"} 1.0' in text
    assert 'mdp_apple_health_upload_samples_total{outcome="rejected"} 1.0' in text
    assert 'mdp_apple_health_upload_samples_total{outcome="deleted"} 1.0' in text
    assert f'route="{UPLOAD_PATH}"' in text


def test_logs_never_carry_the_member_id_or_the_token(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_headers = bearer()
    client.post(UPLOAD_PATH, json={"samples": [sample()]}, headers=token_headers)
    client.post(UPLOAD_PATH, json={"samples": "x"}, headers=token_headers)
    token = token_headers["Authorization"].removeprefix("Bearer ")
    assert MEMBER not in caplog.text
    assert token not in caplog.text


def test_unreachable_database_gives_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MDP_MEMBER_TOKEN_KEY", KEY)
    nowhere = ConnectionParams("127.0.0.1", 1, "postgres", "postgres", "nowhere")
    with TestClient(create_app(params=nowhere, partner_configs={})) as client:
        response = post(client, {"samples": [sample()]})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        # bad input is still answered without the database
        assert post(client, b"[]").status_code == 422


def test_an_upload_whose_body_stops_arriving_gets_408_and_is_audited(
    uploads_db: ConnectionParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the 408 came from the middleware alone: the upload (a member's request) left no audit row
    import socket
    import threading

    import uvicorn

    monkeypatch.setenv("MDP_MEMBER_TOKEN_KEY", KEY)
    app = create_app(params=uploads_db, partner_configs={}, body_idle_seconds=0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, timeout=10)
        body = json.dumps({"samples": [sample()]}).encode()
        head = (
            f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {bearer()['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: a0d17408-0000-4000-8000-000000000001"
            "\r\n\r\n"
        ).encode()
        with socket.create_connection(sock.getsockname(), timeout=10) as client:
            client.sendall(head + body[:10])
            answer = b""
            while chunk := client.recv(65536):  # the server closes the connection
                answer += chunk
    finally:
        server.should_exit = True
        thread.join(5)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"the request body stopped arriving (nothing for 0.5 s)" in answer

    def outcome() -> Any:
        with connect(uploads_db) as conn, conn.cursor() as cur:
            cur.execute(
                "select outcome, detail, member_ref from audit.access_log"
                " where request_id = 'a0d17408-0000-4000-8000-000000000001'"
            )
            return cur.fetchone()

    assert wait_for(lambda: outcome() is not None, timeout=3)
    assert outcome() == ("timeout", {"status": 408}, log_ref(MEMBER))
    assert inbox(uploads_db) == []
