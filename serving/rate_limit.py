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
    """A bucket of `per_minute` tokens per key, refilled continuously at per_minute/60 a second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, per_minute: int) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one will be available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(per_minute), now)
        else:
            refill = (now - bucket.updated) * per_minute / 60.0
            bucket.tokens = min(float(per_minute), bucket.tokens + refill)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) * 60.0 / per_minute


def retry_after_header(wait_seconds: float) -> str:
    """Retry-After in whole seconds, never 0 (a client told 0 would retry at once)."""
    return str(max(1, math.ceil(wait_seconds)))
