"""Garmin configuration: environment variables read when a run starts, never at import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

N = TypeVar("N", int, float)

DEFAULT_BACKFILL_DAYS = 90
# Garmin answers 400 to longer backfill windows (public reports say about 30 days)
DEFAULT_BACKFILL_WINDOW_DAYS = 30
DEFAULT_DAILY_BUDGET = 5000
DEFAULT_PING_RESERVE = 0.2


class GarminSettingsError(ValueError):
    """A GARMIN_* environment variable that is not a valid number or out of range."""


@dataclass(frozen=True)
class GarminSettings:
    """How deep and how fast we ask Garmin for history, and the daily request budget.

    `api_base_url` is the Health API host (the emulator's locally); None turns backfill
    requests off, since the push deliveries and ping callbacks carry their own URLs.
    `ping_reserve` is the share of the daily budget only ping pulls may use, so history
    never starves fresh data.
    """

    api_base_url: str | None = None
    backfill_days: int = DEFAULT_BACKFILL_DAYS
    backfill_window_days: int = DEFAULT_BACKFILL_WINDOW_DAYS
    daily_budget: int = DEFAULT_DAILY_BUDGET
    ping_reserve: float = DEFAULT_PING_RESERVE

    def __post_init__(self) -> None:
        if self.backfill_days < 0:
            raise GarminSettingsError(
                f"GARMIN_BACKFILL_DAYS must be >= 0, got {self.backfill_days}"
            )
        if self.backfill_window_days < 1:
            raise GarminSettingsError(
                f"GARMIN_BACKFILL_WINDOW_DAYS must be >= 1, got {self.backfill_window_days}"
            )
        if self.daily_budget < 1:
            raise GarminSettingsError(f"GARMIN_DAILY_BUDGET must be >= 1, got {self.daily_budget}")
        if not 0 <= self.ping_reserve < 1:
            raise GarminSettingsError(
                f"GARMIN_PING_RESERVE must be in [0, 1), got {self.ping_reserve}"
            )

    @property
    def backfill_reserve(self) -> int:
        """Requests left in the day below which backfill stops and only ping pulls go on."""
        return round(self.daily_budget * self.ping_reserve)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GarminSettings:
        env = os.environ if environ is None else environ
        base_url = (env.get("GARMIN_API_BASE_URL") or "").strip().rstrip("/") or None
        return cls(
            api_base_url=base_url,
            backfill_days=_number(env, "GARMIN_BACKFILL_DAYS", DEFAULT_BACKFILL_DAYS, int),
            backfill_window_days=_number(
                env, "GARMIN_BACKFILL_WINDOW_DAYS", DEFAULT_BACKFILL_WINDOW_DAYS, int
            ),
            daily_budget=_number(env, "GARMIN_DAILY_BUDGET", DEFAULT_DAILY_BUDGET, int),
            ping_reserve=_number(env, "GARMIN_PING_RESERVE", DEFAULT_PING_RESERVE, float),
        )


def _number(env: Mapping[str, str], name: str, default: N, kind: type[N]) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise GarminSettingsError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
