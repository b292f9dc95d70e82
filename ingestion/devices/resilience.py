"""Calling device providers without hammering them: a shared circuit breaker, backoff, retries.

The breaker's state lives in devices.circuit_breakers, one row per provider, so every process
and every Dagster run sees the same picture: when Fitbit is down, one run's failures stop the
others from piling on. Every change happens in one transaction holding the row lock
(`select ... for update`), so concurrent runs cannot both take the half-open probe.

Times come from an injectable clock and are written as parameters (never SQL `now()`), so
tests move time forward instead of sleeping.

A busy sync makes thousands of calls a minute, so two opt-in shortcuts keep the common case
(closed, no recent failure) off the database: a closed reading is trusted for
`closed_read_ttl` seconds, and successes are counted in memory and written every
`success_batch` calls (and by `flush()`). A failure always goes to the database at once, with
the successes counted so far, and ends both shortcuts until the next clean reading.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import psycopg2.extensions

from mdp.database import ConnectionParams, connect

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], dt.datetime]
State = Literal["closed", "open", "half_open"]

CLOSED: State = "closed"
OPEN: State = "open"
HALF_OPEN: State = "half_open"

_COLUMNS = (
    "state, consecutive_failures, window_started_at, window_requests, window_failures,"
    " opened_at, updated_at"
)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BreakerOpen(Exception):
    """The provider's breaker refuses calls; try again in `retry_in` seconds."""

    def __init__(self, provider: str, retry_in: float, state: State = OPEN):
        self.provider = provider
        self.retry_in = retry_in
        self.state = state
        detail = "a probe is in flight" if state == HALF_OPEN else "it is open"
        super().__init__(
            f"circuit breaker for {provider} refuses calls ({detail}); retry in {retry_in:.0f}s"
        )


@dataclass(frozen=True)
class BreakerState:
    """A provider's breaker as it stands, for Dagster metadata and asset checks."""

    provider: str
    state: State
    consecutive_failures: int
    window_requests: int
    window_failures: int
    opened_at: dt.datetime | None
    retry_in_seconds: float  # 0 when closed; half_open: until a stuck probe may be replaced


@dataclass
class _Row:
    state: State
    consecutive_failures: int
    window_started_at: dt.datetime
    window_requests: int
    window_failures: int
    opened_at: dt.datetime | None
    updated_at: dt.datetime  # while half_open: when the probe was let through

    @classmethod
    def fresh(cls, now: dt.datetime) -> _Row:
        return cls(CLOSED, 0, now, 0, 0, None, now)


class CircuitBreaker:
    """A circuit breaker for one provider, shared through Postgres by every process.

    closed: calls go through; results are counted in a tumbling window of `window_seconds`.
    It opens after `failure_threshold` consecutive failures, or when at least `min_requests`
    calls in the window failed at a rate of `failure_rate` or more.
    open: calls are refused for `cool_down_seconds`, then the breaker turns half_open.
    half_open: exactly one probe goes through; its success closes the breaker, its failure
    opens it again. A probe that never reports back (its process died) is replaced after
    another `cool_down_seconds`, timed from `updated_at`, which half_open leaves untouched.
    Any result reported while half_open counts as the probe's: the provider answered either way.
    """

    def __init__(
        self,
        params: ConnectionParams,
        provider: str,
        failure_threshold: int = 5,
        failure_rate: float = 0.5,
        min_requests: int = 20,
        window_seconds: float = 300,
        cool_down_seconds: float = 120,
        clock: Clock | None = None,
        closed_read_ttl: float = 0.0,
        success_batch: int = 1,
    ):
        if failure_threshold < 1 or min_requests < 1:
            raise ValueError("failure_threshold and min_requests must be at least 1")
        if not 0 < failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {failure_rate}")
        if window_seconds <= 0 or cool_down_seconds < 0:
            raise ValueError("window_seconds must be positive and cool_down_seconds not negative")
        if closed_read_ttl < 0 or success_batch < 1:
            raise ValueError("closed_read_ttl must not be negative, success_batch at least 1")
        self.params = params
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.failure_rate = failure_rate
        self.min_requests = min_requests
        self.window_seconds = window_seconds
        self.cool_down_seconds = cool_down_seconds
        self._clock = clock or utc_now
        self.closed_read_ttl = closed_read_ttl
        self.success_batch = success_batch
        self._lock = threading.Lock()  # one breaker object may serve several fetch threads
        self._clean_until = 0.0  # monotonic time until which a clean closed reading holds
        self._clean = False  # the last reading was closed with no failure in a row
        self._pending_successes = 0

    def allow(self) -> bool:
        """Whether a call may go to the provider now (True at most once per half-open probe)."""
        return self._acquire()[0]

    def guard(self) -> None:
        """Raise BreakerOpen unless a call may go to the provider now."""
        allowed, refusal = self._acquire()
        if not allowed:
            assert refusal is not None
            raise refusal

    def record_success(self) -> None:
        if self.success_batch > 1:
            with self._lock:
                clean = self._clean
                if clean:
                    self._pending_successes += 1
                    full = self._pending_successes >= self.success_batch
            if clean:
                if full:
                    self.flush()
                return
        self._record_success_now()  # a half-open probe's success closes the breaker now

    def flush(self) -> None:
        """Write the successes counted in memory (call when a batch of work ends)."""
        with self._lock:
            pending, self._pending_successes = self._pending_successes, 0
        if not pending:
            return
        now = self._now()
        with connect(self.params) as conn, conn.cursor() as cur:
            _bookkeeping(cur)
            row = self._locked(cur, now)
            if row.state != CLOSED:
                return  # counted while closed; the breaker moved on since
            self._roll_window(row, now)
            row.window_requests += pending
            row.updated_at = now
            self._save(cur, row)

    def _record_success_now(self) -> None:
        now = self._now()
        with connect(self.params) as conn, conn.cursor() as cur:
            _bookkeeping(cur)
            row = self._locked(cur, now)
            if row.state == OPEN:
                self._ignore_straggler("success")
                return
            if row.state == HALF_OPEN:
                log.info("circuit breaker for %s closed: the probe succeeded", self.provider)
                row = _Row.fresh(now)
            else:
                self._roll_window(row, now)
                row.window_requests += 1
                row.consecutive_failures = 0
                row.updated_at = now
            self._save(cur, row)

    def record_failure(self) -> None:
        with self._lock:
            pending, self._pending_successes = self._pending_successes, 0
            self._clean, self._clean_until = False, 0.0
        now = self._now()
        with connect(self.params) as conn, conn.cursor() as cur:
            row = self._locked(cur, now)
            if row.state == OPEN:
                self._ignore_straggler("failure")
                return
            probe_failed = row.state == HALF_OPEN
            self._roll_window(row, now)
            row.window_requests += 1 + (pending if row.state == CLOSED else 0)
            row.window_failures += 1
            row.consecutive_failures += 1
            if probe_failed or self._should_open(row):
                reason = "the probe failed" if probe_failed else self._describe_failures(row)
                log.warning(
                    "circuit breaker for %s opened for %ss: %s",
                    self.provider,
                    self.cool_down_seconds,
                    reason,
                )
                row.state, row.opened_at = OPEN, now
            row.updated_at = now
            self._save(cur, row)

    def state(self) -> BreakerState:
        """The breaker as it stands (read without the lock; nothing is written)."""
        now = self._now()
        with connect(self.params) as conn, conn.cursor() as cur:
            row = self._read(cur, for_update=False) or _Row.fresh(now)
        self._roll_window(row, now)
        return BreakerState(
            provider=self.provider,
            state=row.state,
            consecutive_failures=row.consecutive_failures,
            window_requests=row.window_requests,
            window_failures=row.window_failures,
            opened_at=row.opened_at,
            retry_in_seconds=self._retry_in(row, now),
        )

    def _acquire(self) -> tuple[bool, BreakerOpen | None]:
        if self.closed_read_ttl and time.monotonic() < self._clean_until:
            return True, None
        now = self._now()
        with connect(self.params) as conn, conn.cursor() as cur:
            # closed is the common case: answer it from a plain read so concurrent runs do
            # not queue on the row lock for every request
            row = self._read(cur, for_update=False)
            if row is None or row.state == CLOSED:
                with self._lock:
                    self._clean = row is None or row.consecutive_failures == 0
                    if self._clean:
                        self._clean_until = time.monotonic() + self.closed_read_ttl
                return True, None
            with self._lock:
                self._clean = False
            row = self._locked(cur, now)
            if row.state == CLOSED:
                return True, None
            retry_in = self._retry_in(row, now)
            if retry_in > 0:
                return False, BreakerOpen(self.provider, retry_in, row.state)
            if row.state == OPEN:
                log.info(
                    "circuit breaker for %s half-open: letting one probe through", self.provider
                )
            else:
                log.warning("circuit breaker for %s: the last probe never reported", self.provider)
            row.state, row.updated_at = HALF_OPEN, now
            self._save(cur, row)
            return True, None

    def _retry_in(self, row: _Row, now: dt.datetime) -> float:
        if row.state == CLOSED:
            return 0.0
        # opened_at may be null if someone forced state = 'open' by hand
        since = row.updated_at if row.state == HALF_OPEN else (row.opened_at or row.updated_at)
        return max(0.0, self.cool_down_seconds - (now - since).total_seconds())

    def _should_open(self, row: _Row) -> bool:
        if row.consecutive_failures >= self.failure_threshold:
            return True
        return (
            row.window_requests >= self.min_requests
            and row.window_failures / row.window_requests >= self.failure_rate
        )

    @staticmethod
    def _describe_failures(row: _Row) -> str:
        return (
            f"{row.consecutive_failures} failures in a row,"
            f" {row.window_failures} of {row.window_requests} in the window"
        )

    def _roll_window(self, row: _Row, now: dt.datetime) -> None:
        if (now - row.window_started_at).total_seconds() >= self.window_seconds:
            row.window_started_at, row.window_requests, row.window_failures = now, 0, 0

    def _ignore_straggler(self, outcome: str) -> None:
        # a result reported while open comes from a call let through before the breaker
        # opened: it must neither extend nor cut short the cool-down
        log.debug("circuit breaker for %s is open; ignoring a late %s", self.provider, outcome)

    def _now(self) -> dt.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the circuit breaker clock must return an aware datetime")
        return now

    def _read(self, cur: psycopg2.extensions.cursor, for_update: bool) -> _Row | None:
        lock = " for update" if for_update else ""
        cur.execute(
            f"select {_COLUMNS} from devices.circuit_breakers where provider = %s{lock}",
            (self.provider,),
        )
        found = cur.fetchone()
        return _Row(*found) if found else None

    def _locked(self, cur: psycopg2.extensions.cursor, now: dt.datetime) -> _Row:
        """The provider's row, locked until the transaction ends; created on first use."""
        row = self._read(cur, for_update=True)
        if row is not None:
            return row
        # a concurrent first use waits on the unique index here, then finds the winner's row
        cur.execute(
            "insert into devices.circuit_breakers (provider, window_started_at, updated_at)"
            " values (%s, %s, %s) on conflict (provider) do nothing",
            (self.provider, now, now),
        )
        row = self._read(cur, for_update=True)
        assert row is not None
        return row

    def _save(self, cur: psycopg2.extensions.cursor, row: _Row) -> None:
        cur.execute(
            "update devices.circuit_breakers set state = %s, consecutive_failures = %s,"
            " window_started_at = %s, window_requests = %s, window_failures = %s,"
            " opened_at = %s, updated_at = %s where provider = %s",
            (
                row.state,
                row.consecutive_failures,
                row.window_started_at,
                row.window_requests,
                row.window_failures,
                row.opened_at,
                row.updated_at,
                self.provider,
            ),
        )


def _bookkeeping(cur: psycopg2.extensions.cursor) -> None:
    """Counting successes needs no fsync: a crash loses a few counts, never data."""
    cur.execute("set local synchronous_commit to off")


def backoff_delay(
    attempt: int,
    base: float = 1.0,
    cap: float = 300.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Exponential backoff with full jitter, uniform in [0, min(cap, base * 2**attempt)]: the
    spread keeps runs that failed together from retrying together
    (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
    """
    if attempt < 0 or base < 0 or cap < 0:
        raise ValueError(f"attempt, base and cap must not be negative: {attempt}, {base}, {cap}")
    try:
        ceiling = min(cap, base * 2**attempt)
    except OverflowError:  # 2**attempt beyond a float: the cap applies anyway
        ceiling = cap
    return rng() * ceiling


_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


def retry_after_seconds(header_value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks us to wait, or None if absent or unreadable.

    The header is delta-seconds ("120"; decimals are accepted, as some servers send them) or
    an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT", also the RFC 850 and asctime forms); a
    date in the past means 0.
    """
    if header_value is None:
        return None
    value = header_value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime carries no zone; HTTP-dates are always GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or utc_now())).total_seconds())


def _retry_after_attribute(exc: BaseException) -> float | None:
    return getattr(exc, "retry_after", None)


def call_with_retries(
    fn: Callable[[], T],
    *,
    breaker: CircuitBreaker | None,
    retryable: tuple[type[BaseException], ...],
    max_attempts: int = 5,
    sleep: Callable[[float], object] = time.sleep,
    base: float = 1.0,
    cap: float = 60.0,
    retry_after_of: Callable[[BaseException], float | None] = _retry_after_attribute,
) -> T:
    """Call `fn` up to `max_attempts` times, retrying `retryable` exceptions.

    Before each attempt the breaker is asked; a refusal raises BreakerOpen at once (chained to
    the last failure, if any) without calling `fn`. A retryable exception is recorded as a
    failure and followed by a sleep of max(backoff_delay(...), retry_after_of(exc)): the backoff
    never exceeds `cap`, but a provider's Retry-After wins even when longer, since calling
    earlier only earns another 429. When the attempts run out the last exception is re-raised.

    Any other exception means the provider did answer (a 404, a revoked token, our own parsing
    bug), so the breaker records it as a success, as pybreaker does with excluded exceptions,
    and it propagates without retry. Otherwise a half-open probe ending that way would hold the
    breaker half-open until the probe timed out.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    last_error: BaseException | None = None
    for attempt in range(max_attempts):
        if breaker is not None:
            try:
                breaker.guard()
            except BreakerOpen as refusal:
                raise refusal from last_error
        try:
            result = fn()
        except retryable as exc:
            last_error = exc
            if breaker is not None:
                breaker.record_failure()
            if attempt + 1 == max_attempts:
                raise
            delay = backoff_delay(attempt, base=base, cap=cap)
            retry_after = retry_after_of(exc)
            sleep(delay if retry_after is None else max(delay, retry_after))
            continue
        except Exception:
            if breaker is not None:
                breaker.record_success()
            raise
        if breaker is not None:
            breaker.record_success()
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")
