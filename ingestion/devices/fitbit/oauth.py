"""Connecting a member's Fitbit: OAuth 2.0 authorization code with PKCE, then a subscription.

1. `authorize_url(app, redirect_uri, member_id)`: where the member's browser goes. The `state`
   parameter is encrypted (Fernet, 10-minute lifetime) and carries the member id, the PKCE
   verifier and the redirect URI, so nothing waits in a table and a forged or stale state is
   refused.
2. The provider redirects to our callback with `code` and `state`; `complete_connection`
   exchanges the code (single use), reads the member's time zone from their profile, stores
   the connection with its tokens encrypted (a reconnect keeps its cursors: only the gap is
   pulled) and subscribes to notifications, subscription id = connection id.

`disconnect_member` revokes the tokens at Fitbit and stops syncing; history stays.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

import requests
from cryptography.fernet import InvalidToken

from ingestion.devices.connections import Connection, connect_device, disconnect
from ingestion.devices.fitbit.client import TIMEOUT, FitbitApp
from mdp.crypto import decrypt_token, encrypt_token
from mdp.database import ConnectionParams

SCOPES = "activity weight profile"
STATE_TTL_SECONDS = 600


class ConnectError(Exception):
    """Why a connection attempt failed, in words fit for the member's browser (no PHI)."""


@dataclass(frozen=True)
class ConnectState:
    member_id: str
    verifier: str
    redirect_uri: str


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(app: FitbitApp, redirect_uri: str, member_id: str) -> str:
    verifier = secrets.token_urlsafe(48)
    state = encrypt_token(json.dumps({"m": member_id, "v": verifier, "r": redirect_uri}))
    query = {
        "client_id": app.client_id,
        "response_type": "code",
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
        "scope": SCOPES,
        "redirect_uri": redirect_uri,
        "state": state,
    }
    return f"{app.authorize_url}?{urlencode(query)}"


def read_state(state: str) -> ConnectState:
    try:
        payload = json.loads(decrypt_token(state, ttl=STATE_TTL_SECONDS))
        return ConnectState(payload["m"], payload["v"], payload["r"])
    except (InvalidToken, ValueError, KeyError, TypeError):
        raise ConnectError(
            "this link has expired or was not issued by us: start connecting again"
        ) from None


def exchange_code(
    app: FitbitApp, code: str, state: ConnectState, session: requests.Session
) -> dict:
    try:
        response = session.post(
            f"{app.base_url}/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": state.verifier,
                "redirect_uri": state.redirect_uri,
                "client_id": app.client_id,
            },
            auth=(app.client_id, app.client_secret),
            timeout=TIMEOUT,
        )
    except (requests.ConnectionError, requests.Timeout):
        raise ConnectError("Fitbit could not be reached: try again in a few minutes") from None
    body = response.json() if response.content else {}
    if response.status_code != 200:
        kinds = sorted({e.get("errorType", "?") for e in body.get("errors", [])})
        raise ConnectError(
            f"Fitbit refused the authorization ({response.status_code}, {', '.join(kinds)}):"
            " the code is single-use and expires after minutes; start connecting again"
        )
    return body


def member_timezone(app: FitbitApp, access_token: str, session: requests.Session) -> str:
    response = session.get(
        f"{app.base_url}/1/user/-/profile.json",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=TIMEOUT,
    )
    if response.status_code != 200:
        return "UTC"  # the time zone can be corrected later; the connection must not be lost
    return response.json().get("user", {}).get("timezone") or "UTC"


def subscribe(
    app: FitbitApp, access_token: str, subscription_id: str, session: requests.Session
) -> bool:
    """Ask for notifications of every collection; 409 means it already exists (a reconnect)."""
    response = session.post(
        f"{app.base_url}/1/user/-/apiSubscriptions/{subscription_id}.json",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=TIMEOUT,
    )
    return response.status_code in (200, 201, 409)


def complete_connection(
    params: ConnectionParams,
    app: FitbitApp,
    code: str,
    state_token: str,
    session: requests.Session | None = None,
    primary_metrics: list[str] | None = None,
) -> tuple[str, bool]:
    """(connection id, subscribed) once the code is exchanged and the connection stored."""
    state = read_state(state_token)
    session = session or requests.Session()
    tokens = exchange_code(app, code, state, session)
    timezone = member_timezone(app, tokens["access_token"], session)
    connection_id = connect_device(
        params,
        state.member_id,
        "fitbit",
        tokens["user_id"],
        tokens["access_token"],
        tokens["refresh_token"],
        int(tokens.get("expires_in", 28800)),
        timezone=timezone,
        primary_metrics=primary_metrics,
    )
    # without a subscription the polling schedule still syncs the member: not fatal
    subscribed = subscribe(app, tokens["access_token"], connection_id, session)
    return connection_id, subscribed


@dataclass(frozen=True)
class ConsentOutcome:
    connection_id: str | None  # None: the member must consent in a browser at `url`
    subscribed: bool
    url: str


def connect_with_consent(
    params: ConnectionParams,
    app: FitbitApp,
    member_id: str,
    redirect_uri: str,
    sandbox_user_id: str | None = None,
    primary_metrics: list[str] | None = None,
) -> ConsentOutcome:
    """Follow the consent URL ourselves: a sandbox consents at once and redirects to the
    callback with a code, which is completed here; a real provider answers with its login
    page, so the URL is returned for the member's browser."""
    from urllib.parse import parse_qs, urlsplit

    url = authorize_url(app, redirect_uri, member_id)
    if sandbox_user_id:
        url += "&" + urlencode({"sandbox_user_id": sandbox_user_id})
    session = requests.Session()
    try:
        consent = session.get(url, allow_redirects=False, timeout=TIMEOUT)
    except (requests.ConnectionError, requests.Timeout):
        raise ConnectError("Fitbit could not be reached: try again in a few minutes") from None
    location = consent.headers.get("location", "")
    if consent.status_code not in (302, 303) or not location.startswith(redirect_uri):
        return ConsentOutcome(None, False, url)
    answer = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    if "code" not in answer:
        raise ConnectError(f"Fitbit refused: {answer.get('error', 'no code')}")
    connection_id, subscribed = complete_connection(
        params, app, answer["code"], answer.get("state", ""), session, primary_metrics
    )
    return ConsentOutcome(connection_id, subscribed, url)


def disconnect_member(
    params: ConnectionParams,
    app: FitbitApp,
    connection: Connection,
    session: requests.Session | None = None,
) -> None:
    """Revoke at Fitbit (best effort: the member may have revoked already), stop syncing."""
    session = session or requests.Session()
    for token in (connection.refresh_token, connection.access_token):
        if not token:
            continue
        try:
            session.post(
                f"{app.base_url}/oauth2/revoke",
                data={"token": token},
                auth=(app.client_id, app.client_secret),
                timeout=TIMEOUT,
            )
        except (requests.ConnectionError, requests.Timeout):
            pass
    disconnect(params, connection.connection_id, status="disconnected")
