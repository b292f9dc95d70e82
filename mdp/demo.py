"""`make demo`: the whole platform once on the embedded default, left answering."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import click
import httpx

from ingestion.partners.config import load_partner_configs
from mdp.database import ConnectionParams, connect, connection_params
from mdp.settings import Settings

DEMO_PARTNER = "acme_corp"


def demo_file(settings: Settings):
    return settings.state_dir / "demo.json"


def run_demo(settings: Settings) -> int:
    from mdp.orchestrate import run_assets
    from mdp.stack import stack_up
    from sandbox.generator import write_demo_world

    click.echo(
        "1/5 starting the stack (embedded Postgres, sandbox SFTP servers, eligibility API)..."
    )
    stack_up(settings)
    configs = load_partner_configs(settings.partner_config_dir).configs

    click.echo(
        "2/5 writing partner files (CSV, XLSX, fixed-width, SSN-keyed) into the SFTP inboxes..."
    )
    pull_roots = {
        pid: settings.pull_sftp_root / pid
        for pid, c in configs.items()
        if c.inbound.transport == "sftp_pull"
    }
    world = write_demo_world(configs, settings.sftp_root, pull_roots)
    for partner_id, generated in sorted(world.items()):
        click.echo(
            f"    {partner_id:<15} {generated.filename} ({len(generated.bad_rows)} bad rows on purpose)"
        )

    eligible = [m for m in world[DEMO_PARTNER].valid_members if _eligible_today(m)]
    connected = connect_demo_devices(settings, eligible[:5])
    click.echo(
        f"    fitbit emulator: {connected} demo members connected and notified (signed webhooks)"
    )

    click.echo("3/5 materializing every asset (dlt import, device sync -> dbt build -> marts)...")
    result = run_assets(settings)
    if not result.success:
        click.echo("the run failed; see the Dagster logs above", err=True)
        return 1

    click.echo("4/5 creating a demo API key and picking a demo member...")
    params = connection_params(settings)
    _, api_key = fresh_demo_key(params)
    member = _eligible_member(settings, world[DEMO_PARTNER].valid_members)

    click.echo("5/5 checking the eligibility API answers...")
    url = f"{settings.api_url}/api/v1/eligibility/check"
    body = {"employee_id": member["employee_id"], "date_of_birth": member["date_of_birth"]}
    status = _wait_for_answer(url, api_key, body)
    details = {
        "api_url": settings.api_url,
        "check_url": url,
        "api_key": api_key,
        "partner_id": DEMO_PARTNER,
        "employee_id": member["employee_id"],
        "date_of_birth": member["date_of_birth"],
    }
    curl = (
        f"curl -s -X POST {url} -H 'Authorization: Bearer {api_key}' "
        f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    )
    details["curl"] = curl
    path = demo_file(settings)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(details, handle, indent=2)
    click.echo("")
    click.echo(f"The platform is up. Eligibility check for a demo member (HTTP {status}):")
    click.echo(f"  {curl}")
    click.echo(f"Details (URL, key, member): {path}")
    click.echo(
        "Next: `make dev` for the Dagster UI"
        f" (http://127.0.0.1:{os.environ.get('MDP_DAGSTER_PORT', '3000')}), "
        "`.venv/bin/mdp imports list`, `.venv/bin/mdp stack status`, `make down` to stop."
    )
    click.echo(f"Error reports went to the partners' errors/ folders under {settings.sftp_root}")
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select count(*), count(distinct member_id) from marts.fct_daily_steps")
        days, members = cur.fetchone()
    click.echo(
        f"Device data: {days} member-days of steps for {members} members in marts.fct_daily_steps"
    )
    return 0 if status == 200 else 1


def fresh_demo_key(params: ConnectionParams) -> tuple[str, str]:
    """A new demo key, the previous demo's revoked once it exists: each `make demo` left one
    more key open. Only keys this function made carry its label."""
    from serving.api_keys import create_key, list_keys, revoke_key

    previous = [
        key.key_id
        for key in list_keys(params, DEMO_PARTNER)
        if key.label == DEMO_KEY_LABEL and key.revoked_at is None
    ]
    made = create_key(params, DEMO_PARTNER, label=DEMO_KEY_LABEL)
    for key_id in previous:
        revoke_key(params, DEMO_PARTNER, key_id)
    return made


DEMO_KEY_LABEL = "mdp-demo (revoked by the next make demo)"


def _eligible_today(member: dict) -> bool:
    today = dt.date.today()
    end = member.get("eligibility_end_date")
    return member["eligibility_start_date"] <= today and (end is None or end >= today)


def connect_demo_devices(settings: Settings, members: list[dict]) -> int:
    """Connect members' Fitbits in the emulator and have it notify our webhook for yesterday."""
    import hashlib

    from ingestion.devices.fitbit.client import fitbit_app_from_env
    from ingestion.devices.fitbit.oauth import connect_with_consent
    from mdp.stack import fitbit_emulator_url

    params = connection_params(settings)
    base = fitbit_emulator_url(settings)
    app = fitbit_app_from_env()
    yesterday = dt.date.today() - dt.timedelta(days=1)
    connected = 0
    for member in members:
        employee_id = str(member["employee_id"])
        member_id = hashlib.md5(f"{DEMO_PARTNER}:{employee_id}".encode()).hexdigest()  # as dbt
        user_id = "D" + hashlib.sha256(employee_id.encode()).hexdigest()[:5].upper()
        # the member's consent, as the member app's browser flow gives it; again on a re-run,
        # since a restarted emulator has forgotten its users (a reconnect keeps the cursors)
        connect_with_consent(
            params,
            app,
            member_id,
            f"{settings.api_url}/oauth/fitbit/callback",
            sandbox_user_id=user_id,
            primary_metrics=["steps"],
        )
        httpx.post(
            f"{base}/_sandbox/notify",
            json={
                "user_id": user_id,
                "collection_type": "activities",
                "date": yesterday.isoformat(),
                "webhook_url": f"{settings.api_url}/webhooks/fitbit",
            },
            timeout=10,
        )
        connected += 1
    return connected


def _eligible_member(settings: Settings, candidates: list[dict]) -> dict[str, str]:
    """A generated member the mart says is eligible today."""
    ids = [str(m["employee_id"]) for m in candidates if m.get("employee_id")]
    with connect(connection_params(settings)) as conn, conn.cursor() as cur:
        cur.execute(
            "select employee_id, date_of_birth from marts.mart_eligibility"
            " where partner_id = %s and employee_id = any(%s) and coverage_status = 'active'"
            " and eligibility_start_date <= current_date"
            " and (eligibility_end_date is null or eligibility_end_date >= current_date)"
            " order by employee_id limit 1",
            (DEMO_PARTNER, ids),
        )
        row = cur.fetchone()
    if row is None:
        raise click.ClickException("no eligible demo member found in marts.mart_eligibility")
    employee_id, dob = row
    return {"employee_id": employee_id, "date_of_birth": dt.date.isoformat(dob)}


def _wait_for_answer(url: str, api_key: str, body: dict, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        try:
            status = httpx.post(
                url, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=5
            ).status_code
        except httpx.HTTPError:
            status = 0
        if status == 200:
            return status
        time.sleep(0.5)
    return status
