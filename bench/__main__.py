"""`python -m bench [--quick] [--devices-only | --load-only]`: every figure with its baseline
measured in the same run.

Targets are printed beside the figures as PASS/MISS; the exit code is 0 whatever they say
(performance is measured here, not asserted). Results also go to bench/out/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench.common import Figure, bench_platform, phase, table

OUT = Path(__file__).resolve().parent / "out" / "results.json"
DEVICE_CONNECTIONS, QUICK_DEVICE_CONNECTIONS = 100_000, 500
# (connections, days of history) behind the dbt device build: 100,000 connections with the
# 3 months of history that backfill leaves
DBT_SCALE, DBT_SCALE_QUICK = (100_000, 90), (5_000, 14)
EXPORT_MB, QUICK_EXPORT_MB = 200.0, 50.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="50K-row files only and a shorter API run (a sanity check)",
    )
    parser.add_argument(
        "--devices-only",
        action="store_true",
        help="only the device figures (5: Fitbit sync cycle, 6: Apple Health export parse)",
    )
    parser.add_argument(
        "--load-only",
        action="store_true",
        help="only the partner file load figures (1: parse+validate+load beside COPY, 3: peak RSS)",
    )
    parser.add_argument(
        "--api-only",
        action="store_true",
        help="only the drop-to-servable and eligibility API figures (2 and 4)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help=f"Fitbit connections in the sync cycle (default {DEVICE_CONNECTIONS:,};"
        f" {QUICK_DEVICE_CONNECTIONS:,} with --quick)",
    )
    parser.add_argument(
        "--export-mb",
        type=float,
        default=None,
        help=f"size of the generated export.xml in MB (default {EXPORT_MB:g};"
        f" {QUICK_EXPORT_MB:g} with --quick)",
    )
    args = parser.parse_args(argv)
    connections = args.connections or (
        QUICK_DEVICE_CONNECTIONS if args.quick else DEVICE_CONNECTIONS
    )
    export_mb = args.export_mb or (QUICK_EXPORT_MB if args.quick else EXPORT_MB)
    big = 50_000 if args.quick else 500_000
    sizes = [50_000] if args.quick else [50_000, 500_000]
    warmup, duration = (1.0, 4.0) if args.quick else (2.0, 10.0)

    mode = "quick" if args.quick else "full"
    if args.devices_only:
        mode += ", devices only"
    elif args.load_only:
        mode += ", partner load only"
    elif args.api_only:
        mode += ", API only"
    started = time.perf_counter()
    load = os.getloadavg()[0]
    phase(f"bench ({mode}): setting up database, SFTP server, env")
    figures: list[Figure] = []
    with bench_platform() as bench:
        phase(f"database: {bench.database}")
        from bench import (
            apple_export,
            dbt_devices,
            device_sync,
            eligibility_api,
            partner_load,
            servable,
        )

        if args.load_only:
            figures += partner_load.run(bench, sizes)
        elif args.api_only:
            figures += servable.run(bench, big)  # its file fills the mart the API reads
            figures += eligibility_api.run(bench, warmup, duration)
        else:
            if not args.devices_only:
                figures += servable.run(bench, big)
                figures += partner_load.run(bench, sizes)
                figures += eligibility_api.run(bench, warmup, duration)
            figures += device_sync.run(bench, connections)
            figures += dbt_devices.run(bench, *(DBT_SCALE_QUICK if args.quick else DBT_SCALE))
            figures += apple_export.run(bench, export_mb)
        database = bench.database
    figures.sort(key=lambda f: f.section.split(".")[0])  # stable: keeps the order within one
    elapsed = time.perf_counter() - started

    print(
        f"\nResults ({mode} run, {elapsed:.0f}s, {database}, "
        f"{os.cpu_count()} CPUs, load average {load:.2f} at start, Python {platform.python_version()})"
    )
    print(table(figures), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "mode": mode,
                "seconds": round(elapsed, 1),
                "database": database,
                "cpus": os.cpu_count(),
                "load_average_at_start": load,
                "python": platform.python_version(),
                "figures": [f.as_dict() for f in figures],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
