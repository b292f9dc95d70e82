"""Freshness buckets per provider and the chart Dagster shows."""

from __future__ import annotations

import base64
import datetime as dt

from ingestion.devices.connections import connect_device
from ingestion.devices.freshness import NEVER, bucket_of, freshness_by_provider
from orchestration.plots import freshness_chart


def test_bucket_edges():
    assert bucket_of(None) == NEVER
    assert bucket_of(0) == "< 15 min"
    assert bucket_of(15) == "15-30 min"
    assert bucket_of(59.9) == "30-60 min"
    assert bucket_of(60) == "1-6 h"
    assert bucket_of(10_000) == "> 1 day"


def test_active_connections_are_bucketed_by_last_success_and_charted(platform):
    now = dt.datetime.now(dt.UTC)
    ages = {"fresh-1": 5, "fresh-2": 40, "late-1": 200, "never-1": None}
    for user, minutes in ages.items():
        connection_id = connect_device(
            platform.params, f"member-{user}", "fitbit", f"FR{user}", "a", "r", 28800
        )
        platform.query(
            "update devices.connections set last_success_at = %s where connection_id = %s",
            (None if minutes is None else now - dt.timedelta(minutes=minutes), connection_id),
        )
    gone = connect_device(platform.params, "member-gone", "fitbit", "FRgone", "a", "r", 28800)
    platform.query(
        "update devices.connections set status = 'revoked' where connection_id = %s", (gone,)
    )

    (fitbit,) = [p for p in freshness_by_provider(platform.params) if p.provider == "fitbit"]
    assert fitbit.active == 4 and fitbit.fresh == 2
    assert fitbit.counts["< 15 min"] == 1 and fitbit.counts["30-60 min"] == 1
    assert fitbit.counts["1-6 h"] == 1 and fitbit.counts[NEVER] == 1

    chart = freshness_chart([fitbit]).value
    assert chart.startswith("![device data freshness](data:image/png;base64,")
    png = base64.b64decode(chart.split(",", 1)[1].rstrip(")"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
