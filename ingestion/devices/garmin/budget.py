"""A provider's daily request budget, shared by every process through devices.rate_limits.

Garmin allows the platform a number of requests per day across all members (5000), so the
budget is one row, subject 'global'. Each request first takes one unit with a single
`insert ... on conflict do update ... returning`: Postgres serialises concurrent takes on the
row and re-checks the condition against the latest version, so no two runs can spend the
same unit. The day turns at UTC midnight, as Garmin's does.

Times come from an injectable clock and are written as parameters (never SQL `now()`), so
tests move to the next day instead of waiting for it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ingestion.devices.resilience import Clock, utc_now
from mdp.database import ConnectionParams, connect

GLOBAL = "global"


class BudgetExhausted(Exception):
    """No request may go to the provider before `reset_at` (the work waits; nothing is lost)."""

    def __init__(self, provider: str, reset_at: dt.datetime, reserve: int):
        self.provider = provider
        self.reset_at = reset_at
        self.reserve = reserve
        kept = f" above the {reserve} kept for fresh data" if reserve else ""
        super().__init__(
            f"{provider} daily request budget used up{kept}; waits until {reset_at.isoformat()}"
        )


@dataclass(frozen=True)
class BudgetState:
    provider: str
    limit: int
    remaining: int
    reset_at: dt.datetime

    @property
    def used(self) -> int:
        return max(0, self.limit - self.remaining)

    @property
    def used_share(self) -> float:
        return self.used / self.limit


def next_utc_midnight(now: dt.datetime) -> dt.datetime:
    day = now.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(), dt.UTC)


_TAKE = """
insert into devices.rate_limits as r (provider, subject, remaining, reset_at, updated_at)
select %(provider)s, %(subject)s, %(limit)s - 1, %(reset_at)s, %(now)s
where %(limit)s > %(reserve)s
on conflict (provider, subject) do update set
    remaining = (case when r.reset_at <= %(now)s then %(limit)s
                 else least(r.remaining, %(limit)s) end) - 1,
    reset_at = case when r.reset_at <= %(now)s then %(reset_at)s else r.reset_at end,
    updated_at = %(now)s
where (case when r.reset_at <= %(now)s then %(limit)s
       else least(r.remaining, %(limit)s) end) > %(reserve)s
returning remaining
"""


class DailyBudget:
    """`limit` requests per UTC day for `provider`, whoever and wherever asks."""

    def __init__(
        self,
        params: ConnectionParams,
        provider: str,
        limit: int,
        clock: Clock | None = None,
    ):
        if limit < 1:
            raise ValueError(f"a daily budget needs a limit of at least 1, got {limit}")
        self.params = params
        self.provider = provider
        self.limit = limit
        self._clock = clock or utc_now

    def take(self, reserve: int = 0) -> int:
        """Spend one request; returns how many are left today.

        Raises BudgetExhausted when `reserve` or fewer are left: low-priority work passes a
        reserve so that it stops while urgent work can still go on.
        """
        now = self._now()
        with connect(self.params) as conn, conn.cursor() as cur:
            cur.execute(
                _TAKE,
                {
                    "provider": self.provider,
                    "subject": GLOBAL,
                    "limit": self.limit,
                    "reserve": reserve,
                    "now": now,
                    "reset_at": next_utc_midnight(now),
                },
            )
            taken = cur.fetchone()
        if taken is None:
            raise BudgetExhausted(self.provider, self.state().reset_at, reserve)
        return taken[0]

    def state(self) -> BudgetState:
        """Today's budget as it stands (a day not started yet reads as the full limit)."""
        now = self._now()
        with connect(self.params) as conn, conn.cursor() as cur:
            cur.execute(
                "select remaining, reset_at from devices.rate_limits"
                " where provider = %s and subject = %s",
                (self.provider, GLOBAL),
            )
            row = cur.fetchone()
        if row is None or row[1] <= now:
            return BudgetState(self.provider, self.limit, self.limit, next_utc_midnight(now))
        return BudgetState(self.provider, self.limit, min(row[0], self.limit), row[1])

    def _now(self) -> dt.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the budget clock must return an aware datetime")
        return now
