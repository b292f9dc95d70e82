"""A Fitbit Web API client: bearer tokens with single-use refresh, quotas kept in Postgres."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import requests

from ingestion.devices.connections import Connection, get_connection, store_tokens
from ingestion.devices.resilience import (
    CircuitBreaker,
    call_with_retries,
    retry_after_seconds,
)
from mdp.database import ConnectionParams, connect

DEFAULT_BASE_URL = "https://api.fitbit.com"
AUTHORIZE_URL = "https://www.fitbit.com/oauth2/authorize"  # the member's browser goes here
TIMEOUT = (5, 20)  # connect, read: never an unbounded call


class FitbitError(Exception):
    pass


class RateLimited(FitbitError):
    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"rate limited; retry after {retry_after:.0f}s")


class ProviderUnavailable(FitbitError):
    """5xx, timeouts, connection errors: transient, retried later."""


class TokenRevoked(FitbitError):
    """The member revoked access (invalid_grant): disconnect, keep history."""


class UnexpectedResponse(FitbitError):
    """A Fitbit answer we cannot read; the message names where and which field, not values."""


DEFAULT_RETRY_AFTER = 60.0  # a 429 without a readable Retry-After


def error_types(response: requests.Response) -> list[str]:
    """The `errorType`s of a Fitbit error body (no messages: they can quote tokens)."""
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return sorted({str(e.get("errorType")) for e in errors if isinstance(e, dict)})


@dataclass(frozen=True)
class FitbitApp:
    base_url: str
    client_id: str
    client_secret: str

    @property
    def authorize_url(self) -> str:
        """Fitbit's consent page is on www.fitbit.com; a sandbox serves it beside its API."""
        if self.base_url.rstrip("/") == DEFAULT_BASE_URL:
            return AUTHORIZE_URL
        return f"{self.base_url.rstrip('/')}/oauth2/authorize"


def fitbit_app_from_env() -> FitbitApp:
    """The platform's Fitbit app: FITBIT_API_BASE_URL (default the real API), FITBIT_CLIENT_ID,
    FITBIT_CLIENT_SECRET (env, or a generated local secret on the sandbox stack)."""
    import os

    from mdp.settings import secret

    return FitbitApp(
        base_url=(os.environ.get("FITBIT_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
        client_id=os.environ.get("FITBIT_CLIENT_ID", "mdp-sandbox-client"),
        client_secret=secret("FITBIT_CLIENT_SECRET"),
    )


def quota_wait(params: ConnectionParams, provider: str, subject: str) -> float:
    """Seconds until the shared quota allows another request (0: go)."""
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(
            "select remaining, reset_at from devices.rate_limits where provider = %s and subject = %s",
            (provider, subject),
        )
        row = cur.fetchone()
    if row is None or row[0] > 0:
        return 0.0
    return max(0.0, (row[1] - dt.datetime.now(dt.UTC)).total_seconds())


def record_quota(
    params: ConnectionParams, provider: str, subject: str, remaining: int, reset_in: float
) -> None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("set local synchronous_commit to off")  # bookkeeping, not data
        cur.execute(
            "insert into devices.rate_limits (provider, subject, remaining, reset_at)"
            " values (%s, %s, %s, now() + make_interval(secs => %s))"
            " on conflict (provider, subject) do update set remaining = excluded.remaining,"
            " reset_at = excluded.reset_at, updated_at = now()",
            (provider, subject, remaining, reset_in),
        )


QUOTA_SHARED_BELOW = 20  # requests left in the member's hour


class FitbitClient:
    def __init__(
        self,
        app: FitbitApp,
        params: ConnectionParams,
        connection: Connection,
        session: requests.Session | None = None,
        breaker: CircuitBreaker | None = None,
        sleep=time.sleep,
    ):
        self.app = app
        self.params = params
        self.connection = connection
        self.session = session or requests.Session()
        self.breaker = breaker
        self.sleep = sleep
        self.requests_made = 0
        self._quota_read = False  # the shared quota is read once, then followed by headers
        self._quota_left: int | None = None
        self._quota_reset_in = 0.0

    def get_json(self, path: str) -> dict:
        """One API read: 5xx and timeouts retried with jittered backoff behind the breaker;
        a 429 or an open breaker is raised so the window waits for a later run."""
        return call_with_retries(
            lambda: self._get_json_once(path),
            breaker=self.breaker,
            retryable=(ProviderUnavailable,),
            max_attempts=3,
            base=0.5,
            cap=5.0,
            sleep=self.sleep,
        )

    def _get_json_once(self, path: str) -> dict:
        self._check_quota()
        response = self._get(path)
        if response.status_code == 401:
            self.refresh()
            response = self._get(path)
        self._record_headers(response)
        endpoint = path.split("?")[0]
        if response.status_code == 429:
            # delta-seconds or an HTTP-date; an unreadable value must not fail the member
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise RateLimited(DEFAULT_RETRY_AFTER if retry_after is None else retry_after)
        if response.status_code >= 500:
            raise ProviderUnavailable(f"fitbit {response.status_code} on {endpoint}")
        if response.status_code != 200:
            kinds = ", ".join(error_types(response)) or "no error type"
            raise FitbitError(f"fitbit {response.status_code} on {endpoint}: {kinds}")
        try:
            body = response.json()
        except ValueError:
            raise UnexpectedResponse(f"fitbit 200 on {endpoint}: the body is not JSON") from None
        if not isinstance(body, dict):
            raise UnexpectedResponse(
                f"fitbit 200 on {endpoint}: a JSON {type(body).__name__}, not an object"
            )
        return body

    def _get(self, path: str) -> requests.Response:
        self.requests_made += 1
        try:
            return self.session.get(
                self.app.base_url + path,
                headers={"Authorization": f"Bearer {self.connection.access_token}"},
                timeout=TIMEOUT,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ProviderUnavailable(f"fitbit unreachable: {type(exc).__name__}") from None

    def _check_quota(self) -> None:
        """Refuse before calling when the member's hourly quota is spent (by any run)."""
        if not self._quota_read:
            wait = quota_wait(self.params, "fitbit", self.connection.provider_user_id)
            self._quota_read = True
            if wait > 0:
                raise RateLimited(wait)
        elif self._quota_left is not None and self._quota_left <= 0:
            raise RateLimited(max(self._quota_reset_in, 1.0))

    def _record_headers(self, response: requests.Response) -> None:
        remaining = response.headers.get("Fitbit-Rate-Limit-Remaining")
        reset = response.headers.get("Fitbit-Rate-Limit-Reset")
        if remaining is None or reset is None:
            return
        try:
            self._quota_left, self._quota_reset_in = int(remaining), float(reset)
        except ValueError:
            return  # unreadable quota headers: the 429 itself still stops us
        # other runs only need to know when the quota is nearly gone: a plentiful one is not
        # written, which keeps a database write off every request
        if self._quota_left <= QUOTA_SHARED_BELOW or response.status_code == 429:
            record_quota(
                self.params,
                "fitbit",
                self.connection.provider_user_id,
                self._quota_left,
                self._quota_reset_in,
            )

    def refresh(self) -> None:
        """Exchange the single-use refresh token; the new pair is stored before it is used."""
        try:
            response = self.session.post(
                self.app.base_url + "/oauth2/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": self.connection.refresh_token,
                },
                auth=(self.app.client_id, self.app.client_secret),
                timeout=TIMEOUT,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ProviderUnavailable(
                f"fitbit token endpoint unreachable: {type(exc).__name__}"
            ) from None
        if response.status_code >= 500:
            raise ProviderUnavailable(f"fitbit token endpoint {response.status_code}")
        if response.status_code != 200:
            kinds = error_types(response)
            if "invalid_grant" in kinds:
                raise TokenRevoked("refresh token refused (invalid_grant)")
            raise FitbitError(f"token refresh failed with {response.status_code}: {kinds}")
        try:
            body = response.json()
            tokens = (body["access_token"], body["refresh_token"])
            expires_in = int(body.get("expires_in", 28800))
            if not all(isinstance(token, str) and token for token in tokens):
                raise TypeError
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UnexpectedResponse(
                "fitbit token endpoint: 200 without access_token, refresh_token, expires_in"
            ) from None
        store_tokens(self.params, self.connection.connection_id, *tokens, expires_in)
        refreshed = get_connection(self.params, self.connection.connection_id)
        assert refreshed is not None
        self.connection = refreshed
