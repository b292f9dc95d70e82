"""Requests to the Garmin Health API, each one paid for from the shared daily budget.

Authentication: the emulator takes `Authorization: Bearer <userAccessToken>`; real Garmin
wants OAuth 1.0a signatures (see sandbox/garmin_emulator.py), so production swaps `_headers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from ingestion.devices.connections import Connection
from ingestion.devices.garmin.budget import DailyBudget
from ingestion.devices.resilience import (
    CLOSED,
    BreakerOpen,
    CircuitBreaker,
    call_with_retries,
    retry_after_seconds,
)

API_PREFIX = "/wellness-api/rest"
TIMEOUT = (5, 20)  # connect, read: never an unbounded call


class GarminUnavailable(Exception):
    """5xx, timeouts, connection errors: transient, retried, then left for a later run."""


class GarminRateLimited(Exception):
    """Garmin answered 429: its own count of our requests says stop for now."""

    def __init__(self, retry_after: float | None):
        self.retry_after = retry_after
        super().__init__(f"garmin rate limited; retry after {retry_after or 0:.0f}s")


class GarminClient:
    """Backfill requests for any member, behind the breaker, retries and the daily budget."""

    def __init__(
        self,
        base_url: str,
        budget: DailyBudget,
        breaker: CircuitBreaker | None,
        reserve: int = 0,
        session: requests.Session | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.breaker = breaker
        self.reserve = reserve
        self.session = session or requests.Session()
        self.sleep = sleep
        self.requests_made = 0

    def request_backfill(
        self, connection: Connection, summary_type: str, start: int, end: int
    ) -> requests.Response:
        """Ask Garmin to push `summary_type` summaries that started in [start, end) later.

        Returns Garmin's answer (202, 409, 403, other 4xx); raises GarminUnavailable after
        the retries, BreakerOpen, BudgetExhausted or GarminRateLimited when it must wait.
        """
        url = f"{self.base_url}{API_PREFIX}/backfill/{summary_type}"
        query = {"summaryStartTimeInSeconds": start, "summaryEndTimeInSeconds": end}
        attempts = 0

        def attempt() -> requests.Response:
            nonlocal attempts
            if attempts:  # a retry is one more request to pay for
                self.budget.take(self.reserve)
            attempts += 1
            return self._get(url, query, connection)

        self._refuse_if_breaker_open()
        # the first unit is taken outside the retry loop: refused there, it must not count
        # as an answer from Garmin (call_with_retries records other exceptions as successes)
        self.budget.take(self.reserve)
        return call_with_retries(
            attempt,
            breaker=self.breaker,
            retryable=(GarminUnavailable,),
            max_attempts=3,
            base=0.5,
            cap=5.0,
            sleep=self.sleep,
        )

    def _refuse_if_breaker_open(self) -> None:
        """Refuse before paying: an open breaker would turn the request away anyway."""
        if self.breaker is None:
            return
        state = self.breaker.state()
        if state.state != CLOSED and state.retry_in_seconds > 0:
            raise BreakerOpen(self.breaker.provider, state.retry_in_seconds, state.state)

    def _get(self, url: str, query: dict, connection: Connection) -> requests.Response:
        self.requests_made += 1
        try:
            response = self.session.get(
                url, params=query, headers=_headers(connection), timeout=TIMEOUT
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise GarminUnavailable(f"garmin unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise GarminUnavailable(f"garmin answered {response.status_code}")
        if response.status_code == 429:
            raise GarminRateLimited(retry_after_seconds(response.headers.get("Retry-After")))
        return response


def _headers(connection: Connection) -> dict[str, str]:
    return {"Authorization": f"Bearer {connection.access_token}"}
