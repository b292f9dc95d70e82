"""Connecting a member's Fitbit: the member app's authorize call, the provider's consent, our
callback; and `mdp devices connect|disconnect` against the emulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from click.testing import CliRunner
from starlette.testclient import TestClient

from ingestion.devices.connections import member_connections
from ingestion.devices.fitbit.client import FitbitApp
from mdp.cli import main
from sandbox.emulator_server import EmulatorServer
from sandbox.fitbit_emulator import FitbitState, create_fitbit_app
from serving.app import create_app
from serving.device_connect import AUTHORIZE_PATH, CALLBACK_PATH
from serving.member_tokens import issue_member_token

KEY = "member-token-key-for-connect-tests"


@pytest.fixture(scope="module")
def emulator(platform) -> Iterator[tuple[FitbitState, FitbitApp]]:
    state = FitbitState()
    with EmulatorServer(create_fitbit_app(state)) as base_url:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FITBIT_API_BASE_URL", base_url)
            env.setenv("FITBIT_CLIENT_ID", state.client_id)
            env.setenv("FITBIT_CLIENT_SECRET", state.client_secret)
            env.setenv("MDP_MEMBER_TOKEN_KEY", KEY)
            yield state, FitbitApp(base_url, state.client_id, state.client_secret)


@pytest.fixture
def api(platform, emulator) -> Iterator[TestClient]:
    app = create_app(params=platform.params, partner_configs={}, fitbit_app=emulator[1])
    with TestClient(app, base_url="http://mdp.test") as client:
        yield client


def _consent(api: TestClient, member_id: str, sandbox_user: str) -> dict[str, str]:
    """The member app asks for the URL; the member's browser consents (the emulator at once)."""
    token = issue_member_token(member_id, key=KEY)
    answer = api.post(AUTHORIZE_PATH, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    url = answer.json()["authorize_url"] + f"&sandbox_user_id={sandbox_user}"
    redirect = requests.get(url, allow_redirects=False, timeout=10)
    assert redirect.status_code == 302
    location = redirect.headers["location"]
    assert location.startswith(f"http://mdp.test{CALLBACK_PATH}?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_the_callback_stores_an_encrypted_connection_with_the_members_timezone(
    platform, emulator, api
):
    state, _ = emulator
    user = "CONN01"
    state.add_user(user, timezone="America/Denver")
    query = _consent(api, "member-connect-1", user)
    page = api.get(CALLBACK_PATH, params=query)
    assert page.status_code == 200 and "Fitbit connected" in page.text

    (connection,) = member_connections(platform.params, "member-connect-1", "fitbit")
    assert connection.provider_user_id == user and connection.timezone == "America/Denver"
    assert connection.access_token == state.tokens(user)[0]
    stored = platform.query(
        "select access_token_enc from devices.connections where connection_id = %s",
        (connection.connection_id,),
    )[0][0]
    assert state.tokens(user)[0] not in stored  # encrypted at rest
    assert [s.subscription_id for s in state.subscriptions_for(user)] == [connection.connection_id]

    # the code is single-use: a replayed callback is refused and changes nothing
    replay = api.get(CALLBACK_PATH, params=query)
    assert replay.status_code == 400 and "single-use" in replay.text
    assert len(member_connections(platform.params, "member-connect-1", "fitbit")) == 1


def test_a_forged_or_refused_callback_connects_nothing(platform, emulator, api):
    query = _consent(api, "member-connect-2", "CONN02")
    forged = api.get(CALLBACK_PATH, params={"code": query["code"], "state": "not-ours"})
    assert forged.status_code == 400 and "expired or was not issued by us" in forged.text
    denied = api.get(CALLBACK_PATH, params={"error": "access_denied"})
    assert denied.status_code == 400 and "access_denied" in denied.text
    assert member_connections(platform.params, "member-connect-2", "fitbit") == []
    unauthorized = api.post(AUTHORIZE_PATH, headers={"Authorization": "Bearer nope"})
    assert unauthorized.status_code == 401


def test_cli_connects_in_the_sandbox_and_disconnect_revokes_but_keeps_history(platform, emulator):
    state, _ = emulator
    runner = CliRunner()
    refused = runner.invoke(main, ["devices", "connect", "--member-id", "member-connect-3"])
    assert refused.exit_code != 0
    assert "marts.dim_member" in refused.output and "--force" in refused.output
    connected = runner.invoke(
        main, ["devices", "connect", "--member-id", "member-connect-3", "--force"]
    )
    assert connected.exit_code == 0, connected.output
    assert "subscribed to notifications" in connected.output
    (connection,) = member_connections(platform.params, "member-connect-3", "fitbit")
    user = connection.provider_user_id
    assert not state.users[user].revoked

    gone = runner.invoke(main, ["devices", "disconnect", "--member-id", "member-connect-3"])
    assert gone.exit_code == 0, gone.output
    assert state.users[user].revoked
    assert member_connections(platform.params, "member-connect-3", "fitbit") == []
    assert platform.query(
        "select status from devices.connections where connection_id = %s",
        (connection.connection_id,),
    ) == [("disconnected",)]
    again = runner.invoke(main, ["devices", "disconnect", "--member-id", "member-connect-3"])
    assert again.exit_code != 0 and "no active fitbit connection" in again.output

    # connecting again is the same Fitbit account, so the same connection, with its cursors:
    # the next sync fills only the gap (the sandbox made a new user, and connection, each time)
    platform.query(
        'update devices.connections set sync_cursor = \'{"steps": "2026-11-01"}\''
        " where connection_id = %s returning 1",
        (connection.connection_id,),
    )
    for _ in range(2):
        back = runner.invoke(
            main, ["devices", "connect", "--member-id", "member-connect-3", "--force"]
        )
        assert back.exit_code == 0, back.output
    (reconnected,) = member_connections(platform.params, "member-connect-3", "fitbit")
    assert reconnected.connection_id == connection.connection_id
    assert reconnected.sync_cursor == {"steps": "2026-11-01"}
    assert not state.users[user].revoked


def test_cli_connects_only_a_member_of_the_marts_unless_forced(platform, emulator):
    from mdp.database import connect

    with connect(platform.params) as conn, conn.cursor() as cur:
        # what dbt builds, reduced to the column the check reads
        cur.execute("create schema if not exists marts")
        cur.execute("create table marts.dim_member (member_id text primary key)")
        cur.execute("insert into marts.dim_member values ('member-connect-4')")
    try:
        runner = CliRunner()
        typo = runner.invoke(main, ["devices", "connect", "--member-id", "member-connect-44"])
        assert typo.exit_code != 0
        assert "no member 'member-connect-44' in marts.dim_member" in typo.output
        assert member_connections(platform.params, "member-connect-44", "fitbit") == []
        known = runner.invoke(main, ["devices", "connect", "--member-id", "member-connect-4"])
        assert known.exit_code == 0, known.output
        assert len(member_connections(platform.params, "member-connect-4", "fitbit")) == 1
        # an operator role that may not read the member mart (it holds PHI) is told so
        role = f"mdp_no_members_{uuid.uuid4().hex[:8]}"
        with connect(platform.params) as conn, conn.cursor() as cur:
            cur.execute(f"create role {role} login")
            cur.execute(f"grant usage on schema marts to {role}")
        try:
            url = platform.params.url().replace(f"//{platform.params.user}:", f"//{role}:", 1)
            denied = runner.invoke(
                main,
                ["devices", "connect", "--member-id", "member-connect-5"],
                env={"MDP_DATABASE_URL": url},
            )
            assert denied.exit_code == 1, denied.output
            assert "cannot read marts.dim_member" in denied.output and "--force" in denied.output
            assert "Traceback" not in denied.output
        finally:
            with connect(platform.params) as conn, conn.cursor() as cur:
                cur.execute(f"drop owned by {role}")
                cur.execute(f"drop role {role}")
    finally:
        with connect(platform.params) as conn, conn.cursor() as cur:
            cur.execute("drop table marts.dim_member")
