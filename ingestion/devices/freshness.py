"""How fresh each provider's data is: active connections bucketed by time since their last
successful sync (the brief: visible within one hour of the activity)."""

from __future__ import annotations

from dataclasses import dataclass

from mdp.database import ConnectionParams, connect

# (label, upper bound in minutes); the last bucket is open-ended, "never" is separate
BUCKETS: tuple[tuple[str, float | None], ...] = (
    ("< 15 min", 15),
    ("15-30 min", 30),
    ("30-60 min", 60),
    ("1-6 h", 360),
    ("6-24 h", 1440),
    ("> 1 day", None),
)
NEVER = "never synced"
FRESH_MINUTES = 60

FRESHNESS_SQL = """
select provider, extract(epoch from now() - last_success_at) / 60.0 as minutes
from devices.connections
where status = 'active'
"""


@dataclass
class ProviderFreshness:
    provider: str
    counts: dict[str, int]  # bucket label (and NEVER) -> active connections

    @property
    def active(self) -> int:
        return sum(self.counts.values())

    @property
    def fresh(self) -> int:
        return sum(
            self.counts[label]
            for label, bound in BUCKETS
            if bound is not None and bound <= FRESH_MINUTES
        )


def bucket_of(minutes: float | None) -> str:
    if minutes is None:
        return NEVER
    for label, bound in BUCKETS:
        if bound is None or minutes < bound:
            return label
    raise AssertionError("the last bucket is open-ended")


def freshness_by_provider(params: ConnectionParams) -> list[ProviderFreshness]:
    labels = [label for label, _ in BUCKETS] + [NEVER]
    summary: dict[str, ProviderFreshness] = {}
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute(FRESHNESS_SQL)
        for provider, minutes in cur.fetchall():
            entry = summary.setdefault(
                provider, ProviderFreshness(provider, dict.fromkeys(labels, 0))
            )
            entry.counts[bucket_of(None if minutes is None else float(minutes))] += 1
    return [summary[p] for p in sorted(summary)]
