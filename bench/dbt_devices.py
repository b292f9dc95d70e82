"""Figure 7: the device models' dbt build for one new day (incremental) vs a full build.

Set-up (untimed): `days` days of Fitbit daily step totals for `connections` connections (two
per member) and a weight log every seventh day, written into raw_fitbit by SQL with one dlt
load id per day (that day, 23:00 UTC), as daily syncs leave them; the last day's load started
ten minutes ago, as the sync that ran just before the last build (inside the build's re-read
margin: the incremental build must re-read it, and finds it already built). Then, timed with dbtRunner in this process:

1. a full build: `dbt run --full-refresh --select int_device_readings_unified+` (the unified
   readings and every fact built on them);
2. one new day for every connection, loaded with a newer load id, then the same selection
   without --full-refresh: the incremental build that a sync's run makes.

Target: the incremental build under 10% of the full one. The staging views are built once
first, so neither figure includes creating them.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

from bench.common import Bench, Figure, phase, settle
from bench.device_sync import dbt_build

SELECT = "int_device_readings_unified+"
TARGET_RATIO = 0.10
WEIGHT_EVERY_DAYS = 7

RAW_DAY_SQL = f"""
insert into raw_fitbit.daily_steps
    (connection_id, member_id, activity_date, steps, timezone, fetched_at, _dlt_load_id, _dlt_id)
select
    'bench-fitbit-' || c, 'bench-member-' || (c / 2), %(day)s,
    3000 + (hashtext(c::text || %(day)s::text) & 16383), 'America/Chicago', now(),
    %(load_id)s, md5(c::text || %(day)s::text)
from generate_series(0, %(connections)s - 1) as c;
insert into raw_fitbit.weight_logs
    (connection_id, member_id, log_id, log_date, log_time, weight_kg, bmi, source, timezone,
     fetched_at, _dlt_load_id, _dlt_id)
select
    'bench-fitbit-' || c, 'bench-member-' || (c / 2), c::bigint * 100000 + %(day_number)s,
    %(day)s, '07:15:00', 60 + (c %% 60), 24.0, 'Aria', 'America/Chicago', now(),
    %(load_id)s, md5('w' || c::text || %(day)s::text)
from generate_series(0, %(connections)s - 1) as c
where (c + %(day_number)s) %% {WEIGHT_EVERY_DAYS} = 0;
"""


def load_day(
    bench: Bench, connections: int, day: dt.date, day_number: int, load_started: float
) -> None:
    """One daily sync's rows, with the load id dlt would give them (its start, Unix seconds)."""
    from mdp.database import connect

    with connect(bench.params) as conn, conn.cursor() as cur:
        cur.execute(
            RAW_DAY_SQL,
            {
                "connections": connections,
                "day": day,
                "day_number": day_number,
                "load_id": f"{load_started:.6f}",
            },
        )


def run(bench: Bench, connections: int, days: int) -> list[Figure]:
    section = f"7. dbt device models: one new day vs full build, {connections:,} connections"
    work = Path(tempfile.mkdtemp(prefix="dbt_inc_", dir=bench.root))
    first_day = dt.date.today() - dt.timedelta(days=days)
    phase(f"dbt devices: {days} days x {connections:,} connections into raw_fitbit (untimed)")
    started = time.perf_counter()
    for number in range(days):
        day = first_day + dt.timedelta(days=number)
        load_started = dt.datetime.combine(day, dt.time(23), dt.UTC).timestamp()
        if number == days - 1:  # the sync just before the last build, inside its margin
            load_started = time.time() - 600
        load_day(bench, connections, day, number, load_started)
    bench.query("analyze raw_fitbit.daily_steps; analyze raw_fitbit.weight_logs")
    raw_rows = bench.query("select count(*) from raw_fitbit.daily_steps")[0][0]
    phase(f"  {raw_rows:,} step rows in {time.perf_counter() - started:.0f}s; staging views")
    dbt_build(bench, work, "staging", command="run")

    # each build starts on a settled database, as the other figures' measurements do: the
    # vacuum and checkpoint that 9M rows just written (and the sync figure before) call for
    # are not timed in one build and not the other (a sync's build runs 15-30 min after the
    # last one, by which time they are done)
    settle(bench)
    phase(f"dbt devices: full build (dbt run --full-refresh --select {SELECT}), timed")
    full_s = dbt_build(bench, work, SELECT, command="run", extra=["--full-refresh"])
    phase(f"  full build {full_s:.1f}s; loading one new day")
    load_day(bench, connections, first_day + dt.timedelta(days=days), days, time.time())
    settle(bench)
    phase(f"dbt devices: incremental build (dbt run --select {SELECT}), timed")
    incremental_s = dbt_build(bench, work, SELECT, command="run")
    new_rows = bench.query(
        "select count(*) from marts.fct_daily_steps where local_date = %s",
        (first_day + dt.timedelta(days=days),),
    )[0][0]
    phase(f"  incremental build {incremental_s:.1f}s ({new_rows:,} new member-days)")
    return [
        Figure(
            section,
            "full build",
            full_s,
            "s",
            note=f"{raw_rows:,} daily step rows ({days} days) + weight logs; {SELECT}",
        ),
        Figure(
            section,
            "incremental build, one new day",
            incremental_s,
            "s",
            note=f"{connections:,} new step rows; {new_rows:,} member-days in fct_daily_steps",
        ),
        Figure(section, "incremental / full", incremental_s / full_s, "x", TARGET_RATIO, "<="),
    ]
