"""Figure 2: drop-to-servable, from a partner's SFTP upload to a 200 from the eligibility API.

The platform is set up first (untimed): raw tables, one Dagster run over an empty inbox so
dbt's models and snapshot exist, and the API running as a subprocess. The member we will ask
for is checked once before the upload: a 404, which the API caches, so the timed 200 also
proves the cache was dropped when dbt rebuilt the mart.

Timed: paramiko upload -> `run_assets` (Dagster in process: partner import, then dbt build)
-> polling the API until it answers 200 for that member.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import PARTNER, Bench, Figure, fmt, http_server, phase
from bench.partner_load import write_file

CHECK_PATH = "/api/v1/eligibility/check"


def _selection_and_config():
    import dagster as dg

    from ingestion.partners import ABSENT_TABLE, DATASET, IMPORTS_TABLE, MEMBERS_TABLE

    raw = dg.AssetSelection.assets(
        dg.AssetKey([DATASET, MEMBERS_TABLE]),
        dg.AssetKey([DATASET, IMPORTS_TABLE]),
        dg.AssetKey([DATASET, ABSENT_TABLE]),
    )
    # the partner_import job's selection; only this partner's inbox is polled
    return raw.downstream(), {"ops": {"partner_files": {"config": {"partners": [PARTNER]}}}}


def _member_in_file(bench: Bench, written: Any, seed: int, id_offset: int) -> dict[str, str]:
    """A member the file loads: the generator gives member k the same data for a seed, so the
    top of a zero-bad-share file names members; keep one whose line is clean in this file."""
    from sandbox.generator import generate_partner_file

    head = generate_partner_file(bench.config, 200, seed=seed, id_offset=id_offset)
    with written.path.open(encoding="utf-8") as handle:
        lines = handle.read(200_000).splitlines()
    for member in head.valid_members:
        line = member["source_line_number"]
        if line not in written.bad_rows and lines[line - 1].startswith(member["employee_id"] + ","):
            return {
                "employee_id": member["employee_id"],
                "date_of_birth": member["date_of_birth"].isoformat(),
            }
    raise RuntimeError("no clean member found at the top of the file")


def _check(url: str, key: str, member: dict[str, str]) -> int:
    import httpx

    try:
        response = httpx.post(
            url + CHECK_PATH, json=member, timeout=5, headers={"Authorization": f"Bearer {key}"}
        )
    except httpx.HTTPError:
        return 0
    return response.status_code


def _step_seconds(result: Any) -> dict[str, float]:
    return {
        event.step_key: event.event_specific_data.duration_ms / 1000
        for event in result.all_events
        if event.is_step_success
    }


def run(bench: Bench, rows: int) -> list[Figure]:
    from mdp.orchestrate import run_assets
    from mdp.stack import API_SERVER_FLAGS  # the API as `mdp stack up` serves it
    from serving.api_keys import create_key

    section = f"2. Drop-to-servable, {rows // 1000}K-row acme_corp CSV"
    selection, run_config = _selection_and_config()
    phase("drop-to-servable: set-up run over an empty inbox (untimed)")
    warm = run_assets(bench.settings, select=selection, run_config=run_config)
    if not warm.success:
        raise RuntimeError("the set-up Dagster run failed; see the log above")
    seed, id_offset = 7, 0
    written = write_file(bench, rows, seed=seed, id_offset=id_offset, sequence=1)
    path = written.path
    member = _member_in_file(bench, written, seed, id_offset)
    _, key = create_key(bench.params, PARTNER, label="bench")
    with http_server("serving.app:create_app", factory=True, extra_flags=API_SERVER_FLAGS) as url:
        before = _check(url, key, member)
        phase(f"drop-to-servable: API up at {url}; member answers {before} before the upload")
        started = time.perf_counter()
        bench.upload(path, path.name)
        uploaded = time.perf_counter()
        phase("  uploaded; running Dagster (partner import + dbt build)")
        result = run_assets(bench.settings, select=selection, run_config=run_config)
        ran = time.perf_counter()
        status = 0
        while time.perf_counter() - ran < 60:
            status = _check(url, key, member)
            if status == 200:
                break
            time.sleep(0.05)
        answered = time.perf_counter()
    steps = _step_seconds(result)
    imported = bench.query(
        "select rows_total, rows_loaded, parse_seconds, load_seconds from raw_partners.file_imports"
        " where filename = %s and status = 'loaded'",
        (path.name,),
    )
    total = answered - started if status == 200 else None
    import_s, dbt_s = steps.get("partner_files"), steps.get("dbt_models")
    phase(
        f"  run success={result.success} in {ran - uploaded:.1f}s"
        f" (import {fmt(import_s)}s, dbt {fmt(dbt_s)}s);"
        f" API answered {status} {answered - ran:.2f}s after the run"
    )
    note = "" if imported else "file not in the ledger as loaded"
    if imported:
        total_rows, loaded, parse_s, load_s = imported[0]
        note = (
            f"{loaded:,} of {total_rows:,} rows loaded (parse {parse_s:.1f}s, load {load_s:.1f}s)"
        )
    return [
        Figure(
            section,
            "upload -> API answers 200",
            total,
            "s",
            60,
            "<=",
            note=f"run success={result.success}; API said {before} before, {status} after",
        ),
        Figure(section, "  SFTP upload (paramiko)", uploaded - started, "s"),
        Figure(section, "  Dagster run (run_assets) total", ran - uploaded, "s"),
        Figure(section, "    partner import step", import_s, "s", note=note),
        Figure(section, "    dbt build step", dbt_s, "s"),
        Figure(
            section,
            "    run overhead (dbt parse, code load, Dagster)",
            (ran - uploaded) - (import_s or 0) - (dbt_s or 0),
            "s",
        ),
        Figure(section, "  first API 200 after the run", answered - ran, "s"),
    ]
