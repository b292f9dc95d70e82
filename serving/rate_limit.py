"""Per-partner token buckets, in process.

Each uvicorn worker keeps its own buckets, so with N workers a partner could get up to N
times its limit. Running more than one worker needs a shared store (e.g. Redis or a Postgres
counter) behind the same `acquire` interface.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """A bucket of `per_minute` tokens per key, refilled continuously at per_minute/60 a second.

    Keys that come from outside (client addresses) are unbounded: past `max_keys` buckets, the
    ones untouched for a minute (full again by then, so nothing is forgotten) are dropped."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self.max_keys = max_keys

    def acquire(self, key: str, per_minute: int) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one will be available."""
        bucket = self._refilled(key, per_minute, self._clock())
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) * 60.0 / per_minute

    def wait(self, key: str, per_minute: int) -> float:
        """Without taking one: 0.0 while a token is left, else the seconds until one is."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        bucket = self._refilled(key, per_minute, self._clock())
        return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) * 60.0 / per_minute

    def _refilled(self, key: str, per_minute: int, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(float(per_minute), now)
        else:
            refill = (now - bucket.updated) * per_minute / 60.0
            bucket.tokens = min(float(per_minute), bucket.tokens + refill)
            bucket.updated = now
        return bucket

    def _forget_idle(self, now: float) -> None:
        idle = [key for key, bucket in self._buckets.items() if now - bucket.updated >= 60.0]
        for key in idle:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:  # all busy: a flood of addresses
            self._buckets.clear()


def retry_after_header(wait_seconds: float) -> str:
    """Retry-After in whole seconds, never 0 (a client told 0 would retry at once)."""
    return str(max(1, math.ceil(wait_seconds)))
