"""Hostile and odd input to the eligibility API, through the real app (and, for what only a
real HTTP server lets through, a uvicorn on a socket): always a 4xx in the API's JSON shape,
never a 500, never PHI in logs or metrics, and an audit row saying what was sent."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from mdp.database import connect
from serving.api_keys import revoke_key
from serving.eligibility import NOT_FOUND_JSON
from tests.serving.conftest import CHECK, announce_mart_refresh, bearer, wait_for

Keys = dict[str, tuple[str, str]]
VALID = {"employee_id": "A100001", "date_of_birth": "1980-05-17"}


def post_raw(
    client: TestClient,
    keys: Keys,
    content: bytes,
    ctype: str | None = "application/json",
    partner: str = "acme_corp",
    extra: dict[str, str] | None = None,
):
    headers = dict(bearer(keys, partner))
    if ctype is not None:
        headers["Content-Type"] = ctype
    headers.update(extra or {})
    return client.post(CHECK, content=content, headers=headers)


def assert_4xx_json(response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert "error" in body or "reason" in body
    return body


# --- what once answered 500 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        # unknown field whose NAME is a lone surrogate: echoed into the 422 body -> utf-8 encode fails
        b'{"\\ud800": 1, "employee_id": "A100001", "date_of_birth": "1980-05-17"}',
        b'{"\\udfff": "x"}',
        b'{"a\\ud83d": null, "employee_id": "A100001", "date_of_birth": "1980-05-17"}',
    ],
    ids=["surrogate-key", "low-surrogate-key", "trailing-high-surrogate-key"],
)
def test_surrogate_in_unknown_field_name_is_4xx_not_500(client, keys, content):
    client._transport.raise_server_exceptions = False
    response = post_raw(client, keys, content)
    assert response.status_code == 422, (response.status_code, response.text)


@pytest.mark.parametrize("length", ["\u00b2", "\u00b9", "\u00b3"])  # latin-1 superscript digits
def test_weird_content_length_does_not_raise_in_read_body(length):
    # str.isdigit() is True for '²' but int('²') raises ValueError (httptools/h11 reject such
    # a header before the app sees it, so this is latent: any other ASGI front end -> 500)
    import asyncio

    from serving.app import _read_body

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    assert asyncio.run(_read_body(receive, length, 8192)) == b"{}"


# --- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"null",
        b"1",
        b"1.5",
        b"true",
        b"false",
        b"[]",
        b"[{}]",
        b'""',
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e999",
        b"9" * 5000,
        b"{}",
        b"   \n\t ",
        b"\xef\xbb\xbf",
        b'{"employee_id": "A1\xff", "date_of_birth": "1980-05-17"}',  # invalid utf-8 inside a string
        b'{"employee_id": "A1\xed\xa0\x80", "date_of_birth": "1980-05-17"}',  # CESU surrogate bytes
        b'{"employee_id": "A100001", "date_of_birth": "1980-05-17"',  # truncated
        b'{"employee_id": "A100001", "date_of_birth": "1980-05-17"}{}',  # trailing data
        b'{"employee_id": "A100001", "date_of_birth": "1980-05-17"}\x00',
        b"{'employee_id': 'A100001'}",
        # JSON between systems is UTF-8: json.loads alone would guess UTF-16 and -32
        json.dumps(VALID).encode("utf-16"),
        json.dumps(VALID).encode("utf-16-le"),
        json.dumps(VALID).encode("utf-32"),
    ],
)
def test_non_object_or_broken_json_is_422(client, keys, content):
    response = post_raw(client, keys, content)
    assert response.status_code == 422, (content[:40], response.status_code, response.text)


def test_a_byte_order_mark_before_the_json_is_ignored(client, keys):
    response = post_raw(client, keys, b"\xef\xbb\xbf" + json.dumps(VALID).encode())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"employee_id": {"$ne": None}, "date_of_birth": "1980-05-17"}, "employee_id"),
        ({"employee_id": ["A100001"], "date_of_birth": "1980-05-17"}, "employee_id"),
        ({"employee_id": True, "date_of_birth": "1980-05-17"}, "employee_id"),
        ({"employee_id": "A100001", "date_of_birth": False}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": {"y": 1980}}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": None}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "2024-02-30"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "2023-02-29"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "0000-01-01"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "9999-12-31"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "2024-1-5"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "1980-05-17T00:00:00"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "1980-05-17T00:00:00Z"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "1980-05-17 "}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "1980-05-17\n"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "19800517"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "1980-W20-6"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "+1980-05-17"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "１９８０-05-17"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "1980-05-17\x00"}, "date_of_birth"),
        ({"employee_id": "A100001", "date_of_birth": "\ud800"}, "date_of_birth"),
        ({"employee_id": "A" * 100_00, "date_of_birth": "1980-05-17"}, None),  # 413 or 422
        ({"employee_id": "é" * 65, "date_of_birth": "1980-05-17"}, "employee_id"),
        ({"employee_id": "\ud800", "date_of_birth": "1980-05-17"}, "employee_id"),
        (
            {"employee_id": "A100001", "date_of_birth": "1980-05-17", "partner_id": None},
            "partner_id",
        ),
        (
            {"employee_id": "A100001", "date_of_birth": "1980-05-17", "partner_id": ["acme_corp"]},
            "partner_id",
        ),
        (
            {"employee_id": "A100001", "date_of_birth": "1980-05-17", "Employee_ID": "x"},
            "Employee_ID",
        ),
    ],
)
def test_wrong_types_and_dates_are_422_naming_the_field(client, keys, body, field):
    content = json.dumps(body, ensure_ascii=True).encode()
    response = post_raw(client, keys, content)
    if field is None:
        assert response.status_code in (413, 422), response.text
        return
    assert response.status_code == 422, (response.status_code, response.text)
    fields = {p["field"] for p in response.json()["detail"]}
    assert field in fields, response.text


def test_leap_day_is_a_real_date(client, keys):
    response = post_raw(client, keys, b'{"employee_id": "A100001", "date_of_birth": "2000-02-29"}')
    assert response.status_code == 404


@pytest.mark.parametrize(
    "ctype",
    [None, "application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.api+json"],
)
def test_json_content_types_accepted(client, keys, ctype):
    assert post_raw(client, keys, json.dumps(VALID).encode(), ctype=ctype).status_code == 200


@pytest.mark.parametrize(
    "ctype", ["text/plain", "multipart/form-data; boundary=x", "", "application/jsonx", "json"]
)
def test_non_json_content_types_are_4xx(client, keys, ctype):
    response = post_raw(client, keys, json.dumps(VALID).encode(), ctype=ctype)
    assert_4xx_json(response)


def test_a_field_given_twice_is_refused(client, keys):
    # with "last wins", a second partner_id would slip past the 403 check
    content = (
        b'{"employee_id": "A100001", "date_of_birth": "1980-05-17",'
        b' "partner_id": "umbrella_plan", "partner_id": "acme_corp"}'
    )
    response = post_raw(client, keys, content)
    assert response.status_code == 422
    assert response.json()["detail"] == [{"field": "partner_id", "problem": "given more than once"}]


def test_partner_id_case_or_space_variants_are_403(client, keys):
    for claimed in ["ACME_CORP", " acme_corp", "acme_corp ", "acme_corp\x00", ""]:
        body = {**VALID, "partner_id": claimed}
        response = post_raw(client, keys, json.dumps(body).encode())
        assert response.status_code in (403, 422), (claimed, response.status_code)


def test_streamed_chunks_exactly_at_and_over_the_limit(client, keys):
    base = json.dumps(VALID).encode()
    pad = 8 * 1024 - len(base)
    at_limit = base[:-1] + b" " * pad + b"}"
    assert len(at_limit) == 8 * 1024
    ok = client.post(
        CHECK,
        content=iter([at_limit[:100], at_limit[100:]]),
        headers={**bearer(keys, "acme_corp"), "Content-Type": "application/json"},
    )
    assert ok.status_code == 200, ok.text
    over = iter([at_limit[:100], at_limit[100:], b" "])
    assert (
        client.post(
            CHECK,
            content=over,
            headers={**bearer(keys, "acme_corp"), "Content-Type": "application/json"},
        ).status_code
        == 413
    )


# --- auth ---------------------------------------------------------------------------------------


def test_bearer_scheme_variants(client, keys):
    key = keys["acme_corp"][1]
    body = json.dumps(VALID).encode()
    ok = {"bearer " + key, "BEARER " + key, "Bearer   " + key, "Bearer " + key + "  "}
    bad = {
        "Bearer",
        "Bearer ",
        "Bearer  ",
        "Bearer\t" + key,
        "Token " + key,
        key,
        "Bearer " + key + " extra",
        "Bearer " + key[:-1],
        "Bearer " + key + "x",
        "Bearer " + key.upper(),
        "Bearer mdp_" + "x" * 5000,
        "Bearer \u00e9" + key,
        "Bearer " + key + "\u00e9",
        "Bearer mdp_",
    }
    for header in ok:
        r = client.post(
            CHECK,
            content=body,
            headers={"Authorization": header, "Content-Type": "application/json"},
        )
        assert r.status_code == 200, (header[:20], r.status_code)
    for header in bad:
        r = client.post(
            CHECK,
            content=body,
            headers={"Authorization": header.encode("latin-1"), "Content-Type": "application/json"},
        )
        assert r.status_code == 401, (header[:20], r.status_code, r.text)
        assert key not in r.text
        assert r.headers.get("www-authenticate") == "Bearer"


def test_revoked_key_with_cached_principal_is_refused(client, keys, mart):
    body = json.dumps(VALID).encode()
    assert post_raw(client, keys, body).status_code == 200
    revoke_key(mart, "acme_corp", keys["acme_corp"][0])
    assert wait_for(lambda: post_raw(client, keys, body).status_code == 401, timeout=1.0)


# --- methods / routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_check_are_405_in_json(client, keys, method):
    r = client.request(method, CHECK, headers=bearer(keys, "acme_corp"))
    assert r.status_code == 405, (method, r.status_code)
    assert r.headers["allow"] == "POST"
    if method != "HEAD":
        assert r.json() == {
            "error": "method_not_allowed",
            "detail": f"method {method} not allowed here; allowed: POST",
        }


def test_an_unknown_path_is_404_in_json(client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "detail": "Not Found"}


def test_query_string_and_trailing_slash(client, keys):
    r = client.post(
        CHECK + "?employee_id=A100001&date_of_birth=1980-05-17",
        content=json.dumps(VALID).encode(),
        headers={**bearer(keys, "acme_corp"), "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    r = client.post(
        CHECK + "/",
        content=json.dumps(VALID).encode(),
        follow_redirects=False,
        headers={**bearer(keys, "acme_corp"), "Content-Type": "application/json"},
    )
    assert r.status_code < 500


def test_head_and_get_operational_endpoints(client):
    for path in ["/healthz", "/metrics", "/openapi.json"]:
        assert client.get(path).status_code == 200
        assert client.head(path).status_code == 200
        assert client.post(path).status_code == 405


# --- 404 sameness ----------------------------------------------------------------------------


def test_404_is_byte_identical_and_headers_match(client, keys):
    unknown = post_raw(client, keys, b'{"employee_id": "NOPE0001", "date_of_birth": "1980-05-17"}')
    mismatch = post_raw(client, keys, b'{"employee_id": "A100001", "date_of_birth": "1980-05-18"}')
    other_partner = post_raw(
        client, keys, b'{"employee_id": "X000001", "date_of_birth": "1985-01-01"}'
    )
    null_dob_row = None
    assert unknown.content == mismatch.content == other_partner.content == NOT_FOUND_JSON
    for r in (unknown, mismatch, other_partner):
        assert r.status_code == 404

    def shape(r):
        return sorted((k, v) for k, v in r.headers.items() if k != "x-request-id")

    assert shape(unknown) == shape(mismatch) == shape(other_partner)
    del null_dob_row


# --- rate limit -----------------------------------------------------------------------------------


def test_429_shape_and_that_invalid_requests_count(client, keys):
    bad = b'{"employee_id": 1}'
    statuses = [
        post_raw(client, keys, bad, partner="throttled_partner").status_code for _ in range(5)
    ]
    assert statuses == [422] * 5
    r = post_raw(
        client,
        keys,
        json.dumps({"employee_id": "T000001", "date_of_birth": "1980-01-01"}).encode(),
        partner="throttled_partner",
    )
    assert r.status_code == 429
    assert r.json()["error"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"].startswith("application/json")


# --- cache staleness -------------------------------------------------------------------------------


def test_cache_dropped_when_mart_table_is_swapped_without_any_announcement(client, keys, mart):
    body = json.dumps(VALID).encode()
    assert post_raw(client, keys, body).json()["eligible"] is True
    with connect(mart) as conn, conn.cursor() as cur:  # what dbt's table materialization does
        cur.execute(
            "create table marts.mart_eligibility__tmp as select * from marts.mart_eligibility"
        )
        cur.execute(
            "update marts.mart_eligibility__tmp set coverage_status = 'terminated'"
            " where employee_id = 'A100001'"
        )
        cur.execute("alter table marts.mart_eligibility rename to mart_eligibility__bak")
        cur.execute("alter table marts.mart_eligibility__tmp rename to mart_eligibility")
        cur.execute("drop table marts.mart_eligibility__bak")
        cur.execute(
            "create unique index mart_eligibility_partner_employee"
            " on marts.mart_eligibility (partner_id, employee_id)"
        )
    assert wait_for(lambda: post_raw(client, keys, body).json().get("eligible") is False, timeout=3)


def test_cache_dropped_on_in_place_truncate_reload_with_notify(client, keys, mart):
    body = json.dumps(VALID).encode()
    assert post_raw(client, keys, body).status_code == 200
    with connect(mart) as conn, conn.cursor() as cur:
        cur.execute("delete from marts.mart_eligibility where employee_id = 'A100001'")
    announce_mart_refresh(mart)
    assert wait_for(lambda: post_raw(client, keys, body).status_code == 404, timeout=3)


# --- logs, metrics, audit -------------------------------------------------------------------------


PHI_MARKERS = [
    "A100001",
    "1980-05-17",
    "1980-05-18",
    "NOPE0001",
    "123-45-6789",
    "123456789",
    "1972-03-09",
    "X000001",
]


def test_no_phi_in_logs_or_metrics(client, keys, caplog):
    caplog.set_level(logging.DEBUG)
    client._transport.raise_server_exceptions = False
    requests = [
        (b'{"employee_id": "A100001", "date_of_birth": "1980-05-17"}', "acme_corp"),
        (b'{"employee_id": "A100001", "date_of_birth": "1980-05-18"}', "acme_corp"),
        (b'{"employee_id": "NOPE0001", "date_of_birth": "1980-05-17"}', "acme_corp"),
        (b'{"employee_id": "123-45-6789", "date_of_birth": "1972-03-09"}', "umbrella_plan"),
        (b'{"employee_id": "X000001", "date_of_birth": "1980-05-17", "\\ud800": 1}', "acme_corp"),
        (
            b'{"employee_id": "A100001", "date_of_birth": "1980-05-17", "partner_id": "zz"}',
            "acme_corp",
        ),
    ]
    for content, partner in requests:
        post_raw(client, keys, content, partner=partner)
    metrics = client.get("/metrics").text
    text = "\n".join(
        r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records
    )
    for marker in PHI_MARKERS:
        assert marker not in metrics
        assert marker not in text, f"{marker} in logs: {text[:2000]}"


def test_every_member_read_is_audited_including_cache_hits_and_mismatch(client, keys, mart):
    ids = []
    for content in [
        b'{"employee_id": "A100001", "date_of_birth": "1980-05-17"}',
        b'{"employee_id": "A100001", "date_of_birth": "1980-05-17"}',  # cache hit
        b'{"employee_id": "A100001", "date_of_birth": "1980-05-18"}',  # mismatch
        b'{"employee_id": "NOPE0001", "date_of_birth": "1980-05-17"}',
    ]:
        ids.append(post_raw(client, keys, content).headers["x-request-id"])

    def rows():
        with connect(mart) as conn, conn.cursor() as cur:
            cur.execute(
                "select request_id, outcome, member_ref, detail::text from"
                " audit.access_log where request_id = any(%s)",
                (ids,),
            )
            return cur.fetchall()

    assert wait_for(lambda: len(rows()) == 4, timeout=3), rows()
    for _, _outcome, member_ref, detail in rows():
        assert member_ref and member_ref.startswith("m_")
        assert "A100001" not in detail


def test_caller_supplied_request_id_collision_is_still_audited(client, keys, mart):
    # the caller controls X-Request-ID: two requests with the same id must both be audited
    h = {"X-Request-ID": "d0d0d0d0-0000-4000-8000-000000000123"}
    for _ in range(2):
        post_raw(client, keys, json.dumps(VALID).encode(), extra=h)

    def count():
        with connect(mart) as conn, conn.cursor() as cur:
            cur.execute(
                "select count(*) from audit.access_log where request_id = 'd0d0d0d0-0000-4000-8000-000000000123'"
            )
            return cur.fetchone()[0]

    assert wait_for(lambda: count() == 2, timeout=3)


def test_openapi_matches_what_the_api_returns(client, keys, mart):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    result = schemas["EligibilityResult"]["properties"]
    # a mart row without program or start date answers null for them, as the schema says
    with connect(mart) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into marts.mart_eligibility (member_id, partner_id, employee_id,"
            " date_of_birth, program, eligibility_start_date, coverage_status) values"
            " ('mx', 'acme_corp', 'NULLPROG', '1970-01-01', null, null, 'active')"
        )
    r = post_raw(client, keys, b'{"employee_id": "NULLPROG", "date_of_birth": "1970-01-01"}')
    assert r.status_code == 200
    body = r.json()
    assert body["program"] is None and body["eligibility_start_date"] is None
    assert body["eligible"] is True  # no start date bounds nothing, as in dim_member
    assert "null" in result["program"]["type"]
    assert "null" in result["eligibility_start_date"]["type"]


# --- wire level: a real uvicorn (httptools) in a thread ---------------------------------------


@pytest.fixture
def wire(mart, partner_configs):
    import socket as _socket
    import threading

    import uvicorn

    from serving.app import create_app

    app = create_app(
        params=mart,
        partner_configs=partner_configs,
        poll_interval=0.5,
        body_idle_seconds=1.0,
        body_total_seconds=2.5,
    )
    sock = _socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, timeout=10)
    yield port
    server.should_exit = True
    thread.join(5)


def raw(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    import socket as _socket

    with _socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return _rest(s)


def req(key: bytes, body: bytes, length: bytes | None = None) -> bytes:
    cl = b"Content-Length: " + (length if length is not None else str(len(body)).encode())
    return (
        b"POST "
        + CHECK.encode()
        + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key
        + b"\r\nContent-Type: application/json\r\n"
        + cl
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else -1


def test_wire_level_edge_cases(wire, keys):
    key = keys["acme_corp"][1].encode()
    body = json.dumps(VALID).encode()
    results = {}
    results["ok"] = status_of(raw(wire, req(key, body)))
    results["cl_superscript"] = status_of(raw(wire, req(key, body, length=b"\xb2")))
    results["cl_negative"] = status_of(raw(wire, req(key, body, length=b"-1")))
    results["cl_short"] = status_of(raw(wire, req(key, body, length=b"10")))
    results["cl_long_then_eof"] = status_of(raw(wire, req(key, body, length=b"500")))
    results["cl_huge"] = status_of(raw(wire, req(key, body, length=b"99999999999999999999")))
    chunked = (
        b"POST "
        + CHECK.encode()
        + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key
        + b"\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    big = b'{"employee_id": "' + b"x" * 20000 + b'"}'
    chunks = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(big[i : i + 1000]), big[i : i + 1000])
            for i in range(0, len(big), 1000)
        )
        + b"0\r\n\r\n"
    )
    results["chunked_over"] = status_of(raw(wire, chunked + chunks))
    small = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    results["chunked_ok"] = status_of(raw(wire, chunked + small))
    results["auth_latin1"] = status_of(raw(wire, req(key + b"\xe9", body)))
    results["auth_utf8"] = status_of(raw(wire, req(key + "\u00e9".encode(), body)))
    results["head_check"] = status_of(
        raw(wire, b"HEAD " + CHECK.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    results["get_check"] = status_of(
        raw(wire, b"GET " + CHECK.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    print("wire:", results)
    assert results["ok"] == 200
    assert results["chunked_ok"] == 200
    assert results["chunked_over"] == 413
    assert all(v < 500 for v in results.values()), results


def test_the_audit_row_records_the_status_sent(client, keys, mart):
    client._transport.raise_server_exceptions = False
    r = post_raw(
        client,
        keys,
        b'{"\\ud800": 1}',
        extra={"X-Request-ID": "5005005a-0000-4000-8000-000000000500"},
    )

    def rows():
        with connect(mart) as conn, conn.cursor() as cur:
            cur.execute(
                "select outcome, detail::text from audit.access_log"
                " where request_id = '5005005a-0000-4000-8000-000000000500'"
            )
            return cur.fetchall()

    assert wait_for(lambda: len(rows()) == 1, timeout=3)
    assert r.status_code == 422
    assert rows()[0] == ("invalid", '{"status": 422}')


def test_a_key_lookup_in_flight_across_a_revocation_is_not_remembered():
    # invalidate() (the revocation's NOTIFY) arrives while a lookup waits on the database:
    # what that lookup read may predate the revocation, so it must not be cached for a TTL.
    # The database read is stood in for, to hold it open at the right moment.
    import asyncio

    from serving.auth import Authenticator, Principal

    auth = Authenticator(ttl_seconds=3.0)
    gate = asyncio.Event

    async def scenario():
        started, release = gate(), gate()

        async def fake_fetch(key_hash, pool):
            started.set()
            await release.wait()
            return Principal("acme_corp", "k1")  # read before the revocation committed

        auth._fetch = fake_fetch  # type: ignore[method-assign]
        task = asyncio.create_task(auth.authenticate("Bearer mdp_k1_secret", object()))
        await started.wait()
        auth.invalidate()  # the revocation NOTIFY arrives now
        release.set()
        await task
        fetched.clear()
        auth._fetch = counting_fetch  # type: ignore[method-assign]
        await auth.authenticate("Bearer mdp_k1_secret", object())
        return len(fetched)

    fetched: list[str] = []

    async def counting_fetch(key_hash, pool):
        fetched.append(key_hash)
        return Principal("acme_corp", "k1")

    assert asyncio.run(scenario()) == 1, "the pre-revocation answer was cached"


def test_requests_that_miss_the_key_cache_together_share_one_lookup():
    # when a busy key's cache entry expires, every request in flight missed it at once and
    # each sent its own query (32 connections: 32 queries queued on a pool of 10)
    import asyncio

    from serving.auth import Authenticator, Principal

    auth = Authenticator(ttl_seconds=3.0)
    fetched: list[str] = []

    async def scenario():
        release = asyncio.Event()

        async def slow_fetch(key_hash, pool):
            fetched.append(key_hash)
            await release.wait()
            return Principal("acme_corp", "k1")

        auth._fetch = slow_fetch  # type: ignore[method-assign]
        waiting = [
            asyncio.create_task(auth.authenticate("Bearer mdp_k1_secret", object()))
            for _ in range(20)
        ]
        await asyncio.sleep(0.05)
        waiting[0].cancel()  # one client leaves: the others still get their answer
        # a revocation meanwhile: later requests do not join a look-up that predates it
        auth.invalidate()
        late = asyncio.create_task(auth.authenticate("Bearer mdp_k1_secret", object()))
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(*waiting[1:], late)
        return results

    results = asyncio.run(scenario())
    assert all(r == Principal("acme_corp", "k1") for r in results)
    assert len(fetched) == 2, fetched  # one shared look-up, and one after the revocation


def test_a_shared_key_lookup_that_fails_after_all_its_waiters_left_logs_nothing():
    # every request waiting on the look-up was cancelled (a shutdown during a database
    # outage); its failure was then "never retrieved" and asyncio logged a traceback
    import asyncio
    import gc

    from serving.auth import Authenticator
    from serving.health import DatabaseUnavailable

    auth = Authenticator(ttl_seconds=3.0)
    reported: list[dict] = []

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        release = asyncio.Event()

        async def failing_fetch(key_hash, pool):
            await release.wait()
            raise DatabaseUnavailable("the database is not reachable")

        auth._fetch = failing_fetch  # type: ignore[method-assign]
        waiting = [
            asyncio.create_task(auth.authenticate("Bearer mdp_k1_secret", object()))
            for _ in range(3)
        ]
        await asyncio.sleep(0.02)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        release.set()
        await asyncio.sleep(0.02)
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert reported == []


def test_spaces_around_the_employee_id_are_ignored_as_the_import_ignores_them(client, keys):
    body = json.dumps({"employee_id": "  A100001 ", "date_of_birth": "1980-05-17"}).encode()
    response = post_raw(client, keys, body)
    assert response.status_code == 200
    assert response.json()["eligible"] is True


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(wire, keys, mart):
    # uvicorn waited for the declared body for ever: the connection (and the check) hung
    import socket as _socket

    key = keys["acme_corp"][1].encode()
    body = json.dumps(VALID).encode()
    partial = req(key, body[:14], length=str(len(body)).encode())
    started = time.monotonic()
    with _socket.create_connection(("127.0.0.1", wire), timeout=10) as s:
        s.sendall(partial)
        answer = b""
        while chunk := s.recv(65536):  # ends when the server closes the connection
            answer += chunk
    assert status_of(answer) == 408, answer
    assert b'"error":"request_timeout"' in answer.replace(b" ", b"")
    assert time.monotonic() - started < 5
    # a body sent slowly, but never idle for the timeout, is answered as usual
    with _socket.create_connection(("127.0.0.1", wire), timeout=10) as s:
        s.sendall(partial)
        time.sleep(0.5)
        s.sendall(body[14:])
        answer = s.recv(65536)
    assert status_of(answer) == 200, answer
    # ... unless it trickles past the whole body's deadline (a byte a second held the
    # connection and its check for as long as the client liked)
    started = time.monotonic()
    with _socket.create_connection(("127.0.0.1", wire), timeout=10) as s:
        s.sendall(partial)
        answer = b""
        for byte in body[14:]:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            if chunk := _ready(s):
                answer += chunk
                break
            time.sleep(0.5)
        answer += _rest(s)
    assert status_of(answer) == 408, answer
    assert 2.0 < time.monotonic() - started < 6
    assert b"under 1024 bytes a second after 2.5 s" in answer
    # a steady body past that time, fast enough on average, is answered as usual (a phone's
    # upload on a weak signal must not be cut at a fixed time)
    padded = body[:-1] + b" " * (7000 - len(body)) + b"}"
    with _socket.create_connection(("127.0.0.1", wire), timeout=10) as s:
        s.sendall(req(key, b"", length=str(len(padded)).encode()))
        steady = time.monotonic()
        for offset in range(0, len(padded), 350):
            s.sendall(padded[offset : offset + 350])
            time.sleep(0.175)
        assert time.monotonic() - steady > 2.5
        answer_steady = s.recv(65536)
    assert status_of(answer_steady) == 200, answer_steady
    # the check was audited: it was an authenticated request for a member's data
    request_id = answer.split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode()
    with connect(mart) as conn, conn.cursor() as cur:
        wait_for(lambda: _audit_outcome(cur, request_id) is not None, timeout=3)
        assert _audit_outcome(cur, request_id) == "timeout"


def _ready(sock) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def _rest(sock) -> bytes:
    """All the server sends until it closes the connection (or the socket's timeout)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def _audit_outcome(cur, request_id: str) -> str | None:
    cur.execute("select outcome from audit.access_log where request_id = %s", (request_id,))
    row = cur.fetchone()
    return row[0] if row else None
