"""Figure 4: eligibility API requests/s, p50 and p99 at 32 keep-alive connections, beside a
bare Starlette endpoint (bench/bare_app.py) on the same uvicorn settings.

Both servers are `uvicorn` subprocesses with one worker. The load generator is an asyncio
client (raw sockets, HTTP/1.1 keep-alive, one request in flight per connection) in its own
process, so it never shares the server's interpreter. (A `wrk` path was dropped: its Lua
script's requests came back non-2xx from the app, and nothing on a fresh machine has wrk.)

The real app serves acme_corp members from the mart dbt built, with a real API key. Its
partner config is a copy of partner_configs/ with acme_corp's rate limit raised out of reach:
the limiter still runs on every request, it just never answers 429 (at 1000/min it would
answer almost nothing else). Two mixes: "cached" cycles over 100 members, so after warm-up
every lookup is a cache hit; "uncached" asks for up to 200K distinct members, so nearly
every lookup is a Postgres query. Both: 80% members with their date of birth, 10% the wrong
date of birth, 10% unknown ids.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import multiprocessing
import random
import shutil
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import PARTNER, Bench, Figure, http_server, phase, settle

CONNECTIONS = 32
CHECK_PATH = "/api/v1/eligibility/check"
MIX = (0.8, 0.1, 0.1)  # found with the right DOB, wrong DOB, unknown id
ROUNDS = 2  # each a baseline run, then the app (fresh) under both mixes


# ---------------------------------------------------------------------------------------------
# the load generator (runs in its own process)


class _Load:
    def __init__(self, requests: list[bytes]):
        self.requests = requests
        self.next = 0
        self.running = True
        self.recording = False
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.lost = 0

    def take(self) -> bytes:
        request = self.requests[self.next % len(self.requests)]
        self.next += 1
        return request


class _Client(asyncio.Protocol):
    """One keep-alive connection: send a request, read the whole response, send the next."""

    def __init__(self, load: _Load):
        self.load = load
        self.buffer = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.load.running:
            self.load.lost += 1

    def _send(self) -> None:
        assert self.transport is not None
        if not self.load.running:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.load.take())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end].lower()
            start = head.find(b"content-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15 : stop if stop >= 0 else None])
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length :]
            if self.load.recording:
                self.load.latencies.append(time.perf_counter() - self.sent)
                self.load.statuses[int(head[9:12])] += 1
            self._send()
        self.buffer = buffer


async def _drive(port: int, requests: list[bytes], warmup: float, duration: float) -> dict:
    loop = asyncio.get_running_loop()
    load = _Load(requests)
    clients = [
        await loop.create_connection(lambda: _Client(load), "127.0.0.1", port)
        for _ in range(CONNECTIONS)
    ]
    await asyncio.sleep(warmup)
    load.recording, started = True, time.perf_counter()
    await asyncio.sleep(duration)
    load.recording, elapsed = False, time.perf_counter() - started
    load.running = False
    await asyncio.sleep(0.2)
    for transport, _ in clients:
        transport.close()
    latencies = sorted(load.latencies)
    count = len(latencies)
    return {
        "requests": count,
        "seconds": elapsed,
        "rps": count / elapsed,
        "p50_ms": latencies[count // 2] * 1000 if count else None,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else None,
        "statuses": dict(load.statuses),
        "lost_connections": load.lost,
        "generator": "asyncio (uvloop)" if "uvloop" in type(loop).__module__ else "asyncio",
    }


def _load_process(port: int, requests: list[bytes], warmup: float, duration: float) -> dict:
    try:
        import uvloop

        return uvloop.run(_drive(port, requests, warmup, duration))
    except ImportError:
        return asyncio.run(_drive(port, requests, warmup, duration))


def measure(url: str, requests: list[bytes], warmup: float, duration: float, root: Path) -> dict:
    port = int(url.rsplit(":", 1)[1])
    # an executor, not multiprocessing.Pool: leaving a Pool terminates its worker with SIGTERM,
    # which a worker started from a shell's background job ignores (the bench then hung)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_load_process, port, requests, warmup, duration).result()


# ---------------------------------------------------------------------------------------------
# requests, servers, figures


def _request(key: str, employee_id: str, dob: str) -> bytes:
    body = json.dumps({"employee_id": employee_id, "date_of_birth": dob}).encode()
    return (
        f"POST {CHECK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def build_mix(key: str, members: list[tuple[str, Any]], distinct: int, seed: int) -> list[bytes]:
    """`distinct` requests, each id once: MIX of found / wrong DOB / unknown, shuffled."""
    rng = random.Random(seed)
    distinct = min(distinct, int(len(members) / (MIX[0] + MIX[1])))
    n_found, n_wrong, n_unknown = (round(distinct * share) for share in MIX)
    chosen = rng.sample(members, min(n_found + n_wrong, len(members)))
    found, wrong = chosen[:n_found], chosen[n_found:]
    requests = [_request(key, eid, dob.isoformat()) for eid, dob in found]
    requests += [_request(key, eid, (dob - dt.timedelta(days=1)).isoformat()) for eid, dob in wrong]
    requests += [_request(key, f"ZZ{i:08d}", "1980-01-01") for i in range(n_unknown)]
    rng.shuffle(requests)
    return requests


def _partner_configs_without_limit(root: Path) -> Path:
    import yaml

    from mdp.settings import load_settings

    target = root / "partner_configs_bench"
    shutil.copytree(load_settings().partner_config_dir, target, dirs_exist_ok=True)
    path = target / f"{PARTNER}.yaml"
    config = yaml.safe_load(path.read_text())
    config["eligibility_api"]["rate_limit_per_minute"] = 1_000_000_000
    path.write_text(yaml.safe_dump(config))
    return target


def _cache_counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = (
        "mdp_eligibility_cache_hits_total",
        "mdp_eligibility_cache_misses_total",
        "mdp_eligibility_lookup_queries_total",
        "mdp_audit_events_written_total",
        "mdp_audit_events_dropped_total",
    )
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name.removeprefix("mdp_").removesuffix("_total")] = float(value)
    return values


def _statuses(result: dict) -> str:
    total = sum(result["statuses"].values()) or 1
    shares = ", ".join(f"{s}: {n / total:.0%}" for s, n in sorted(result["statuses"].items()))
    lost = f"; {result['lost_connections']} connections lost" if result["lost_connections"] else ""
    return f"{result['requests']:,} requests in {result['seconds']:.1f}s ({shares}){lost}"


def run(bench: Bench, warmup: float, duration: float) -> list[Figure]:
    from mdp.stack import API_SERVER_FLAGS  # the API as `mdp stack up` serves it
    from serving.api_keys import create_key

    members = bench.query(
        "select employee_id, date_of_birth from marts.mart_eligibility"
        " where partner_id = %s and date_of_birth is not null",
        (PARTNER,),
    )
    _, key = create_key(bench.params, PARTNER, label="bench-load")
    mixes = {
        "cached": build_mix(key, members, 100, seed=1),
        "uncached": build_mix(key, members, 200_000, seed=2),
    }
    phase(f"eligibility API: {len(members):,} members in the mart; settling the database")
    settle(bench)
    # Rounds of: the baseline, then the app (a fresh server, so the uncached mix starts on an
    # empty cache every round). Each side counts its best round, as drift between rounds is
    # larger than most effects measured here.
    bare_runs: list[dict] = []
    app_rounds: dict[str, list[dict]] = {name: [] for name in mixes}
    env = {"MDP_PARTNER_CONFIG_DIR": str(_partner_configs_without_limit(bench.root))}
    for round_number in range(1, ROUNDS + 1):
        bare_runs.append(_bare(bench, mixes["cached"], warmup, duration))
        with http_server(
            "serving.app:create_app", env=env, factory=True, extra_flags=API_SERVER_FLAGS
        ) as url:
            for name, requests in mixes.items():
                phase(
                    f"  app, {name} mix ({len(requests):,} distinct requests), round {round_number}"
                )
                # each round starts elsewhere in the list: the uncached mix asks the database
                # for members no earlier round asked for
                start = (round_number - 1) * len(requests) // ROUNDS
                requests = requests[start:] + requests[:start]
                before = _cache_counters(url)
                result = measure(url, requests, warmup, duration, bench.root)
                after = _cache_counters(url)
                result["counters"] = {k: after[k] - before.get(k, 0) for k in after}
                app_rounds[name].append(result)
                phase(
                    f"  {name}: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
                    f"p99 {result['p99_ms']:.2f} ms"
                )
    bare = max(bare_runs, key=lambda r: r["rps"])
    app_runs = {name: max(runs, key=lambda r: r["rps"]) for name, runs in app_rounds.items()}

    section = (
        f"4. Eligibility API, {CONNECTIONS} connections, {duration:g}s after {warmup:g}s warm-up"
    )
    runs = " and ".join(f"{r['rps']:,.0f}" for r in bare_runs)
    app_all = {
        name: " and ".join(f"{r['rps']:,.0f}" for r in rs) for name, rs in app_rounds.items()
    }
    figures = [
        Figure(
            section,
            "bare Starlette endpoint (baseline)",
            bare["rps"],
            "req/s",
            note=f"best of {runs} req/s (one run per round, before the app's); "
            f"p50 {bare['p50_ms']:.2f} ms, p99 {bare['p99_ms']:.2f} ms",
        ),
    ]
    for name, result in app_runs.items():
        counters = result["counters"]
        lookups = counters["eligibility_cache_hits"] + counters["eligibility_cache_misses"]
        note = (
            f"best of {app_all[name]} req/s; {_statuses(result)}; cache hits {counters['eligibility_cache_hits'] / (lookups or 1):.0%}"
            f" (warm-up included); audit rows dropped {counters['audit_events_dropped']:.0f}"
        )
        if counters["eligibility_lookup_queries"]:
            per_query = (
                counters["eligibility_cache_misses"] / counters["eligibility_lookup_queries"]
            )
            note += f"; {per_query:.1f} misses per query"
        figures += [
            Figure(section, f"app, {name} mix", result["rps"], "req/s", note=note),
            Figure(
                section,
                f"  ratio app / bare ({name})",
                result["rps"] / bare["rps"],
                "x",
                0.35,
                ">=",
            ),
            Figure(section, f"  p50 ({name})", result["p50_ms"], "ms"),
            Figure(section, f"  p99 ({name})", result["p99_ms"], "ms", 10, "<="),
        ]
    return figures


def _bare(bench: Bench, requests: list[bytes], warmup: float, duration: float) -> dict:
    with http_server("bench.bare_app:app") as url:
        result = measure(url, requests, warmup, duration, bench.root)
    phase(
        f"  bare Starlette: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms ({result['generator']})"
    )
    return result
