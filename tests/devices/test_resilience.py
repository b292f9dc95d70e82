"""The shared circuit breaker (real Postgres), backoff, Retry-After and retries; no real sleeps."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestion.devices.fitbit.client import FitbitError, ProviderUnavailable, RateLimited
from ingestion.devices.resilience import (
    BreakerOpen,
    CircuitBreaker,
    backoff_delay,
    call_with_retries,
    retry_after_seconds,
)
from mdp.database import ConnectionParams
from mdp.schema import ensure_schema
from tests.conftest import fresh_database

START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self, now: dt.datetime = START):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def params() -> Iterator[ConnectionParams]:
    with fresh_database("mdp_resilience") as params:
        ensure_schema(params)
        yield params


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_breaker(params, clock):
    """Breakers for one fresh provider; each call is another process sharing the same row."""
    provider = f"provider-{uuid.uuid4().hex[:8]}"

    def make(**settings) -> CircuitBreaker:
        settings = {"failure_threshold": 3, "cool_down_seconds": 120, **settings}
        return CircuitBreaker(params, provider, clock=clock, **settings)

    return make


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    assert breaker.state().state == "open"


# the breaker


def test_unused_provider_is_closed_and_allowed(make_breaker):
    breaker = make_breaker()
    assert breaker.allow()
    state = breaker.state()
    assert (state.state, state.window_requests, state.opened_at, state.retry_in_seconds) == (
        "closed",
        0,
        None,
        0.0,
    )


def test_breaker_opens_after_consecutive_failures(make_breaker, clock):
    breaker = make_breaker(failure_threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow()

    breaker.record_failure()

    state = breaker.state()
    assert state.state == "open"
    assert state.consecutive_failures == 3
    assert state.opened_at == clock.now
    assert state.retry_in_seconds == 120
    assert not breaker.allow()


def test_a_success_resets_the_consecutive_failures(make_breaker):
    breaker = make_breaker(failure_threshold=3)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state().state == "closed"
    assert breaker.state().consecutive_failures == 0


def test_breaker_opens_on_failure_rate_once_enough_requests_are_seen(make_breaker):
    breaker = make_breaker(failure_threshold=100, failure_rate=0.5, min_requests=10)
    for _ in range(4):
        breaker.record_success()
        breaker.record_failure()  # 50% from the second request, but too few requests
    breaker.record_success()
    assert breaker.state().state == "closed"

    breaker.record_failure()  # 5 of 10

    state = breaker.state()
    assert (state.state, state.window_requests, state.window_failures) == ("open", 10, 5)


def test_breaker_stays_closed_below_both_thresholds(make_breaker):
    breaker = make_breaker(failure_threshold=3, failure_rate=0.75, min_requests=10)
    for _ in range(20):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()  # 2 in a row at most; 73% at worst, at 8 of 11
    state = breaker.state()
    assert (state.state, state.window_requests, state.window_failures) == ("closed", 60, 40)
    assert breaker.allow()


def test_failures_in_an_expired_window_are_forgotten(make_breaker, clock):
    breaker = make_breaker(failure_threshold=100, min_requests=4, window_seconds=300)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(300)
    assert breaker.state().window_requests == 0

    breaker.record_failure()  # would be 4 of 4 in one window

    state = breaker.state()
    assert (state.state, state.window_requests, state.window_failures) == ("closed", 1, 1)


def test_open_breaker_refuses_until_the_cool_down_has_passed(make_breaker, clock):
    breaker = make_breaker(cool_down_seconds=120)
    _open(breaker)
    clock.advance(119)

    assert not breaker.allow()
    with pytest.raises(BreakerOpen) as refused:
        breaker.guard()
    assert refused.value.retry_in == pytest.approx(1)
    assert refused.value.provider == breaker.provider


def test_after_the_cool_down_only_one_process_gets_the_probe(make_breaker, clock):
    first_process, second_process = make_breaker(), make_breaker()
    _open(first_process)
    clock.advance(120)

    assert second_process.allow()
    assert not first_process.allow()
    assert not second_process.allow()
    state = first_process.state()
    assert state.state == "half_open"
    assert state.retry_in_seconds == 120
    with pytest.raises(BreakerOpen, match="probe is in flight"):
        first_process.guard()


def test_concurrent_runs_race_for_a_single_probe(make_breaker, clock):
    breakers = [make_breaker() for _ in range(8)]
    _open(breakers[0])
    clock.advance(120)
    start = threading.Barrier(len(breakers))
    answers: list[bool] = []

    def ask(breaker: CircuitBreaker) -> None:
        start.wait()
        answers.append(breaker.allow())

    threads = [threading.Thread(target=ask, args=(b,)) for b in breakers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers) == [False] * 7 + [True]


def test_a_successful_probe_closes_the_breaker_and_resets_its_counters(make_breaker, clock):
    breaker = make_breaker()
    _open(breaker)
    clock.advance(120)
    assert breaker.allow()

    breaker.record_success()

    state = breaker.state()
    assert (state.state, state.consecutive_failures, state.window_requests) == ("closed", 0, 0)
    assert state.opened_at is None
    assert make_breaker().allow()


def test_a_failed_probe_opens_the_breaker_for_another_cool_down(make_breaker, clock):
    breaker = make_breaker()
    _open(breaker)
    clock.advance(120)
    assert breaker.allow()

    breaker.record_failure()

    state = breaker.state()
    assert (state.state, state.opened_at, state.retry_in_seconds) == ("open", clock.now, 120)
    clock.advance(119)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_a_probe_that_never_reports_back_is_replaced_after_the_cool_down(make_breaker, clock):
    crashed, survivor = make_breaker(), make_breaker()
    _open(crashed)
    clock.advance(120)
    assert crashed.allow()  # ... and its process dies

    clock.advance(119)
    assert not survivor.allow()
    clock.advance(1)
    assert survivor.allow()
    assert not crashed.allow()


def test_results_arriving_while_open_neither_extend_nor_end_the_cool_down(make_breaker, clock):
    breaker = make_breaker()
    _open(breaker)
    opened = breaker.state()
    clock.advance(60)

    breaker.record_failure()
    breaker.record_success()

    assert breaker.state().opened_at == opened.opened_at
    assert breaker.state().state == "open"
    clock.advance(60)
    assert breaker.allow()


def test_clock_must_be_timezone_aware(params):
    breaker = CircuitBreaker(params, "naive", clock=lambda: dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        breaker.record_failure()


# backoff and Retry-After


@given(
    attempt=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0, max_value=1e3),
    cap=st.floats(min_value=0, max_value=1e4),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_stays_between_zero_and_the_capped_exponential(attempt, base, cap, draw):
    delay = backoff_delay(attempt, base=base, cap=cap, rng=lambda: draw)
    assert 0 <= delay <= min(cap, base * 2**attempt)


def test_backoff_jitter_spans_the_whole_range():
    assert backoff_delay(3, base=1, cap=300, rng=lambda: 0.0) == 0
    assert backoff_delay(3, base=1, cap=300, rng=lambda: 1.0) == 8
    assert backoff_delay(20, base=1, cap=300, rng=lambda: 1.0) == 300


def test_backoff_of_a_huge_attempt_is_capped_rather_than_overflowing():
    assert backoff_delay(5000, base=1, cap=60, rng=lambda: 1.0) == 60


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("Mon, 02 Mar 2026 09:01:30 GMT", 90.0),
        ("Monday, 02-Mar-26 09:01:30 GMT", 90.0),
        ("Mon Mar  2 09:01:30 2026", 90.0),
        ("Mon, 02 Mar 2026 08:00:00 GMT", 0.0),  # already passed
    ],
)
def test_retry_after_reads_seconds_and_http_dates(header, seconds):
    assert retry_after_seconds(header, now=START) == seconds


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1e3", "12 seconds", "Mon, 99 Foo"])
def test_unreadable_retry_after_is_none(header):
    assert retry_after_seconds(header, now=START) is None


@given(st.integers(min_value=0, max_value=10**9))
def test_retry_after_delta_seconds_round_trips(seconds):
    assert retry_after_seconds(str(seconds)) == seconds


@given(st.text())
def test_retry_after_never_raises_and_never_goes_negative(header):
    seconds = retry_after_seconds(header, now=START)
    assert seconds is None or seconds >= 0


# call_with_retries


class Flaky:
    """A provider call that raises the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


RETRYABLE = (RateLimited, ProviderUnavailable)


def test_retries_honour_retry_after_even_beyond_the_cap():
    sleeps: list[float] = []
    fn = Flaky(RateLimited(90), ProviderUnavailable("503"))

    result = call_with_retries(fn, breaker=None, retryable=RETRYABLE, sleep=sleeps.append, cap=60)

    assert result == "ok"
    assert fn.calls == 3
    assert sleeps[0] == 90
    assert 0 <= sleeps[1] <= 2  # backoff of the second retry: up to base * 2**1


def test_retries_stop_at_max_attempts_and_reraise_the_last_error():
    sleeps: list[float] = []
    errors = [ProviderUnavailable(f"503 #{n}") for n in range(3)]
    fn = Flaky(*errors, ProviderUnavailable("never reached"))

    with pytest.raises(ProviderUnavailable) as raised:
        call_with_retries(
            fn, breaker=None, retryable=RETRYABLE, max_attempts=3, sleep=sleeps.append, cap=5
        )

    assert raised.value is errors[-1]
    assert fn.calls == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 5 for s in sleeps)


def test_open_breaker_raises_without_calling_the_provider(make_breaker):
    breaker = make_breaker()
    _open(breaker)
    fn = Flaky()

    with pytest.raises(BreakerOpen):
        call_with_retries(fn, breaker=breaker, retryable=RETRYABLE, sleep=pytest.fail)

    assert fn.calls == 0


def test_retries_stop_when_their_own_failures_open_the_breaker(make_breaker):
    breaker = make_breaker(failure_threshold=2)
    errors = [ProviderUnavailable("503"), ProviderUnavailable("502")]
    fn = Flaky(*errors)

    with pytest.raises(BreakerOpen) as refused:
        call_with_retries(fn, breaker=breaker, retryable=RETRYABLE, sleep=lambda _: None)

    assert fn.calls == 2
    assert refused.value.__cause__ is errors[-1]


def test_successes_and_failures_are_recorded_on_the_breaker(make_breaker):
    breaker = make_breaker()
    fn = Flaky(ProviderUnavailable("503"))

    call_with_retries(fn, breaker=breaker, retryable=RETRYABLE, sleep=lambda _: None)

    state = breaker.state()
    assert (state.window_requests, state.window_failures, state.consecutive_failures) == (2, 1, 0)


def test_other_errors_propagate_at_once_and_count_as_the_provider_answering(make_breaker, clock):
    breaker = make_breaker()
    _open(breaker)
    clock.advance(120)
    fn = Flaky(FitbitError("fitbit 404 on /1/user/-/profile.json"))

    with pytest.raises(FitbitError):
        call_with_retries(fn, breaker=breaker, retryable=RETRYABLE, sleep=pytest.fail)

    assert fn.calls == 1
    assert breaker.state().state == "closed"


def test_batched_successes_are_counted_and_a_failure_writes_them_at_once(platform):
    from ingestion.devices.resilience import CircuitBreaker

    breaker = CircuitBreaker(
        platform.params, "batched", closed_read_ttl=60, success_batch=10, min_requests=1000
    )
    for _ in range(25):
        breaker.guard()
        breaker.record_success()
    assert breaker.state().window_requests == 20  # two batches of ten written, five in memory
    breaker.record_failure()
    state = breaker.state()
    assert (state.window_requests, state.window_failures) == (26, 1)
    # after a failure the cached "closed" reading is gone: the next guard reads the database
    other = CircuitBreaker(platform.params, "batched")
    for _ in range(4):
        other.record_failure()
    assert other.state().state == "open"
    with pytest.raises(BreakerOpen):
        breaker.guard()


def test_a_half_open_probe_success_closes_the_breaker_even_when_batching(platform):
    from ingestion.devices.resilience import CircuitBreaker

    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    breaker = CircuitBreaker(
        platform.params,
        "batched-probe",
        failure_threshold=1,
        cool_down_seconds=10,
        clock=lambda: now[0],
        closed_read_ttl=60,
        success_batch=10,
    )
    breaker.record_failure()
    now[0] += dt.timedelta(seconds=11)
    breaker.guard()  # the probe
    breaker.record_success()
    assert breaker.state().state == "closed"
