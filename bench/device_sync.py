"""Figure 5: one full Fitbit polling cycle for N connections against the emulator, then dbt.

Set-up (untimed): a Fitbit emulator (`FitbitState`, 150 requests/hour per member, as Fitbit)
served by `EmulatorServer` in this process; N members added to its state in process; N rows
written into devices.connections in bulk, with the columns `connect_device` writes (tokens
encrypted with `mdp.crypto.encrypt_token`, `token_hash` of the access token), two Fitbit
connections per member (50,000 members / 100,000 connections at full scale), and every
`sync_cursor` at yesterday for steps, weight and activities. dbt's device models are built once over the
empty raw tables, so the timed build finds its views and parents in place.

Timed: `plan_polling(params, today)` and `sync_fitbit(app, params, windows, pipelines_dir)`:
the full cycle. A cursor at yesterday gives a yesterday..today window per metric (polling
re-reads yesterday and today, whose totals still change): one steps, one weight and one
activity-list request per connection, the minimum any cycle can make, far below the rate
limit's 150/hour per member. Then `dbt build --select staging.fitbit+` (dbtRunner, the
MDP_PG_* env of `ConnectionParams.dbt_env()`, its own --target-path in a temp dir).

The cycle is split at the calls sync_fitbit makes through its module (fetch until
`fitbit_pipeline` is called, the dlt load until the first `advance_cursors`, then cursors), and
psycopg2.connect is counted in each part: wrappers set up here, nothing in ingestion changes.
Baselines: one psycopg2 connect + `select 1` + close, and the emulator answering the steps
endpoint to a keep-alive client, both in this process on the same machine.

The emulator shares this process (and the GIL) with the sync: its handler time is inside the
figures, as in the integration tests; `emulator alone` shows how much of a request it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Bench, Figure, phase

FULL_SCALE = 100_000  # connections (50,000 members with two each)
TARGET_SECONDS = 15 * 60
RATE_LIMIT = 150
CONNECTIONS_PER_MEMBER = 2


def _user_id(index: int) -> str:
    return f"B{index:05X}"  # six characters, like Fitbit's encoded ids


def create_connections(bench: Bench, state: Any, count: int, yesterday: dt.date) -> None:
    """`count` emulator members and their active Fitbit connections, written in bulk."""
    from psycopg2.extras import Json, execute_values

    from ingestion.devices.connections import connection_id_for
    from mdp.crypto import encrypt_token, token_hash
    from mdp.database import connect

    cursor = Json({metric: yesterday.isoformat() for metric in ("steps", "weight", "activities")})
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=state.token_lifetime_seconds)
    rows = []
    for index in range(count):
        user_id = _user_id(index)
        access, refresh = state.add_user(user_id)
        rows.append(
            (
                connection_id_for("fitbit", user_id),
                f"member-dev-{index // CONNECTIONS_PER_MEMBER:06d}",
                "fitbit",
                user_id,
                "active",
                [],
                encrypt_token(access),
                encrypt_token(refresh),
                token_hash(access),
                expires_at,
                state.users[user_id].timezone,
                cursor,
            )
        )
    with connect(bench.params) as conn, conn.cursor() as cur:
        execute_values(
            cur,
            "insert into devices.connections (connection_id, member_id, provider,"
            " provider_user_id, status, primary_metrics, access_token_enc, refresh_token_enc,"
            " access_token_hash, token_expires_at, timezone, sync_cursor) values %s",
            rows,
            page_size=2000,
        )
        cur.execute("analyze devices.connections")


class _Phases:
    """Times and psycopg2 connects of sync_fitbit's parts, from wrappers around its calls."""

    def __init__(self) -> None:
        self.connects = 0
        self.connect_seconds = 0.0
        self.marks: dict[str, tuple[float, int, float]] = {}

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, (time.perf_counter(), self.connects, self.connect_seconds))

    def span(self, start: str, end: str) -> tuple[float | None, int, float]:
        """(seconds, psycopg2 connects, seconds inside psycopg2.connect) from start to end."""
        if start not in self.marks or end not in self.marks:
            return None, 0, 0.0
        (t0, c0, s0), (t1, c1, s1) = self.marks[start], self.marks[end]
        return t1 - t0, c1 - c0, s1 - s0

    def note(self, start: str, end: str) -> str:
        _, count, seconds = self.span(start, end)
        return f"{count:,} Postgres connections opened, {seconds:.1f}s in psycopg2.connect"


@contextlib.contextmanager
def _instrumented(phases: _Phases) -> Iterator[None]:
    import psycopg2

    import ingestion.devices.fitbit as fitbit

    real_connect = psycopg2.connect
    real_pipeline, real_advance = fitbit.fitbit_pipeline, fitbit.advance_cursors

    def connect(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_connect(*args, **kwargs)
        finally:
            phases.connects += 1
            phases.connect_seconds += time.perf_counter() - started

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        phases.mark("load")
        return real_pipeline(*args, **kwargs)

    def advance(*args: Any, **kwargs: Any) -> Any:
        phases.mark("cursors")
        return real_advance(*args, **kwargs)

    psycopg2.connect, fitbit.fitbit_pipeline, fitbit.advance_cursors = connect, pipeline, advance
    try:
        yield
    finally:
        psycopg2.connect = real_connect
        fitbit.fitbit_pipeline, fitbit.advance_cursors = real_pipeline, real_advance


def connect_baseline(bench: Bench, rounds: int = 300) -> float:
    """Seconds for one psycopg2 connect + `select 1` + close (what each small helper pays)."""
    from mdp.database import connect

    started = time.perf_counter()
    for _ in range(rounds):
        with connect(bench.params) as conn, conn.cursor() as cur:
            cur.execute("select 1")
    return (time.perf_counter() - started) / rounds


def emulator_baseline(state: Any, base_url: str, users: int = 10, each: int = 50) -> float:
    """Requests/s of the emulator's steps endpoint alone (keep-alive, throwaway members)."""
    import requests

    day = dt.date.today() - dt.timedelta(days=1)
    path = f"/1/user/-/activities/steps/date/{day}/{day + dt.timedelta(days=1)}.json"
    tokens = [state.add_user(f"Z{index:05X}")[0] for index in range(users)]
    with requests.Session() as session:
        started = time.perf_counter()
        for token in tokens:
            for _ in range(each):
                response = session.get(
                    base_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10
                )
                response.raise_for_status()
        return users * each / (time.perf_counter() - started)


def dbt_build(
    bench: Bench,
    target_dir: Path,
    select: str,
    command: str = "build",
    extra: list[str] | None = None,
) -> float:
    """`dbt <command> --select <select>` in process; returns seconds (raises if it fails)."""
    from dbt.cli.main import dbtRunner

    os.environ.update(bench.params.dbt_env())
    project = str(bench.settings.dbt_project_dir)
    args = [
        command,
        "--select",
        select,
        "--project-dir",
        project,
        "--profiles-dir",
        project,
        "--target-path",
        str(target_dir / "target"),
        "--log-path",
        str(target_dir / "logs"),
        "--quiet",
        *(extra or []),
    ]
    started = time.perf_counter()
    result = dbtRunner().invoke(args)
    seconds = time.perf_counter() - started
    if not result.success:
        raise RuntimeError(f"dbt {command} --select {select} failed: {result.exception}")
    return seconds


def run(bench: Bench, connections: int) -> list[Figure]:
    from ingestion.devices.fitbit import plan_polling, sync_fitbit
    from ingestion.devices.fitbit.client import FitbitApp
    from sandbox.emulator_server import EmulatorServer
    from sandbox.fitbit_emulator import FitbitState, create_fitbit_app

    section = f"5. Fitbit full sync cycle, {connections:,} connections (emulator)"
    today = dt.date.today()
    yesterday = today - dt.timedelta(days=1)
    work = Path(tempfile.mkdtemp(prefix="dbt_", dir=bench.root))
    phase("device sync: dbt device models over the empty raw tables (untimed set-up)")
    dbt_build(bench, work, "@staging.fitbit", command="run")
    state = FitbitState(rate_limit=RATE_LIMIT, keep_requests=3 * connections + 10_000)
    with EmulatorServer(create_fitbit_app(state)) as base_url:
        phase(f"device sync: {connections:,} members in the emulator and devices.connections")
        started = time.perf_counter()
        create_connections(bench, state, connections, yesterday)
        phase(f"  created in {time.perf_counter() - started:.1f}s; baselines")
        connect_s = connect_baseline(bench)
        emulator_rps = emulator_baseline(state, base_url)
        with state.lock:
            before = len(state.requests)
        app = FitbitApp(base_url, state.client_id, state.client_secret)
        phases = _Phases()
        phase(f"device sync: plan_polling + sync_fitbit ({connections:,} connections), timed")
        with _instrumented(phases):
            phases.mark("start")
            windows = plan_polling(bench.params, today)
            phases.mark("fetch")
            result = sync_fitbit(app, bench.params, windows, bench.root / "dlt_devices")
            phases.mark("end")
        with state.lock:
            served = len(state.requests) - before
            statuses: dict[int, int] = {}
            for record in list(state.requests)[before:]:
                statuses[record.status] = statuses.get(record.status, 0) + 1
    wall = phases.marks["end"][0] - phases.marks["start"][0]
    plan_s = phases.span("start", "fetch")[0]
    fetch_s = phases.span("fetch", "load")[0]
    load_s = phases.span("load", "cursors")[0]
    cursor_s = phases.span("cursors", "end")[0]
    rows = result.steps_rows + result.weight_rows + result.activity_rows
    minimum = 3 * connections
    projected = wall / connections * FULL_SCALE
    phase(
        f"  {wall:.1f}s: plan {plan_s:.1f}s, fetch {fetch_s or 0:.1f}s, load {load_s or 0:.1f}s,"
        f" cursors {cursor_s or 0:.1f}s; {result.requests:,} requests ({minimum:,} minimum),"
        f" {rows:,} rows, {len(result.deferred)} deferred; projected {projected / 60:.1f} min"
    )
    loaded = bench.query(
        "select (select count(*) from raw_fitbit.daily_steps),"
        " (select count(*) from raw_fitbit.weight_logs),"
        " (select count(*) from devices.connections where provider = 'fitbit'"
        "   and sync_cursor->>'steps' = %s and sync_cursor->>'weight' = %s)",
        (today.isoformat(), today.isoformat()),
    )[0]
    phase("device sync: dbt build --select staging.fitbit+")
    dbt_s = dbt_build(bench, work, "staging.fitbit+")
    phase(f"  dbt build {dbt_s:.1f}s")

    scaled = connections < FULL_SCALE
    figures = [
        Figure(
            section,
            "full cycle for 100K connections" + (" (projected)" if scaled else ""),
            projected / 60,
            "min",
            TARGET_SECONDS / 60,
            "<=",
            note=(
                f"linear from {connections:,}: {wall / connections * 1000:.1f} ms per connection"
                if scaled
                else ""
            ),
        ),
        Figure(
            section,
            "wall time (plan_polling + sync_fitbit)",
            wall,
            "s",
            note=f"{result.windows_done:,} windows done, {len(result.deferred)} deferred,"
            f" {len(result.disconnected)} disconnected",
        ),
        Figure(section, "  plan_polling", plan_s, "s"),
        Figure(
            section,
            "  fetch (HTTP + quota/breaker bookkeeping)",
            fetch_s,
            "s",
            note=phases.note("fetch", "load"),
        ),
        Figure(section, "  dlt load (normalize + merge)", load_s, "s"),
        Figure(
            section,
            "  cursors (advance_cursors, mark_processed)",
            cursor_s,
            "s",
            note=phases.note("cursors", "end"),
        ),
        Figure(
            section,
            "rows loaded per second",
            rows / wall,
            "rows/s",
            note=f"{result.steps_rows:,} steps + {result.weight_rows:,} weight + {result.activity_rows:,} activity rows; raw tables"
            f" hold {loaded[0]:,} + {loaded[1]:,}",
        ),
        Figure(
            section,
            "requests made",
            result.requests,
            note=f"emulator served {served:,} (statuses {dict(sorted(statuses.items()))})",
        ),
        Figure(
            section,
            "minimum requests (steps + weight + activity list per connection)",
            minimum,
            note=f"rate limit {RATE_LIMIT}/hour per member: never the bound for 3 per cycle",
        ),
        Figure(section, "requests made / minimum", result.requests / minimum, "x", 1.0, "<="),
        Figure(
            section,
            "requests per second",
            result.requests / wall,
            "req/s",
            note=f"{wall / max(result.requests, 1) * 1000:.1f} ms per request, all included",
        ),
        Figure(
            section,
            "emulator alone (baseline)",
            emulator_rps,
            "req/s",
            note="steps endpoint, one keep-alive client, same process",
        ),
        Figure(
            section,
            "Postgres connect + select 1 + close (baseline)",
            connect_s * 1000,
            "ms",
            note=f"the cycle opened {phases.connects / connections:.1f} per Fitbit connection"
            f" ({phases.connects:,}; {phases.connect_seconds:.1f}s of the"
            f" {wall:.0f}s in psycopg2.connect)",
        ),
        Figure(
            section,
            "cursors advanced to today",
            loaded[2],
            note=f"of {connections:,} connections",
        ),
        Figure(
            section,
            "dbt device models build",
            dbt_s,
            "s",
            note="dbt build --select staging.fitbit+ (models and tests), after the sync",
        ),
    ]
    return figures
