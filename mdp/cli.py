"""`mdp`: the operator CLI over the same code the Dagster assets use."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import psycopg2

from mdp.settings import Settings, load_settings

if TYPE_CHECKING:
    from mdp.database import ConnectionParams


def _load_settings() -> Settings:
    """Settings, with a malformed value reported in one line instead of a traceback."""
    from mdp.database import ConnectionParams

    try:
        settings = load_settings()
        if settings.database_url:
            ConnectionParams.from_url(settings.database_url)
    except ValueError as exc:
        # from_url's and int()'s messages name the setting or value, never the URL's password
        raise click.ClickException(f"invalid setting: {_redact(str(exc))}") from None
    return settings


def _settings() -> Settings:
    from mdp.stack import load_stack_env

    settings = _load_settings()
    if load_stack_env(settings):
        settings = _load_settings()  # the stack's ports, when this shell did not set them
    return settings


def _database(settings: Settings) -> ConnectionParams:
    """The database for this command. An embedded Postgres that was not running is started for
    the command and stopped when it ends: `mdp imports list` after `mdp stack down` left one
    running."""
    from mdp.database import connection_params, embedded_running, stop_embedded

    started_here = settings.embedded and not embedded_running(settings.pgdata_dir)
    params = connection_params(settings)
    if started_here:
        click.get_current_context().call_on_close(lambda: stop_embedded(settings))
    return params


def _redact(text: str) -> str:
    """`text` without MDP_DATABASE_URL's password, should a library have echoed it."""
    from urllib.parse import unquote, urlparse

    from mdp.database import ConnectionParams

    try:
        password = ConnectionParams.from_url(os.environ.get("MDP_DATABASE_URL", "")).password
        given = urlparse(os.environ.get("MDP_DATABASE_URL", "")).password
    except ValueError:
        return text
    for secret in {given, password, unquote(given or "")} - {None, "", "postgres"}:
        text = text.replace(secret, "***")
    return text


class _Main(click.Group):
    """Failures an operator can fix (database down, port taken) as one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        from mdp.stack import StackError

        try:
            return super().invoke(ctx)
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(f"database unavailable: {_redact(first)}") from None
        except StackError as exc:
            raise click.ClickException(str(exc)) from None


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group(cls=_Main)
def main() -> None:
    """Member data platform operator CLI."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")


# --- stack ---------------------------------------------------------------------------------


@main.group()
def stack() -> None:
    """The local stack: embedded Postgres, sandbox SFTP servers, eligibility API."""


@stack.command("up")
@click.option("--no-api", is_flag=True, help="Do not start the eligibility API.")
@click.option("--json", "as_json", is_flag=True, help="The status, machine-readable.")
def stack_up_cmd(no_api: bool, as_json: bool) -> None:
    from mdp.stack import stack_up

    status = stack_up(_settings(), with_api=not no_api)
    if as_json:
        _print_json(status)
    else:
        _print_status(status)


@stack.command("down")
@click.option("--json", "as_json", is_flag=True, help='Machine-readable: {"stopped": [...]}.')
def stack_down_cmd(as_json: bool) -> None:
    from mdp.stack import stack_down

    stopped = stack_down(_settings())
    if as_json:
        _print_json({"stopped": stopped})
    else:
        click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stack_status_cmd(as_json: bool) -> None:
    from mdp.stack import stack_status

    status = stack_status(_settings())
    if as_json:
        _print_json(status)
    else:
        _print_status(status)


def _print_status(status: dict) -> None:
    db, sftp, api = status["database"], status["sftp"], status["api"]
    up = lambda flag: "up" if flag else "down"  # noqa: E731
    click.echo(
        f"postgres     {db['mode']}: {db['url']}"
        + (f" ({up(db['running'])})" if "running" in db else "")
    )
    click.echo(
        f"sftp         sftp://{sftp['platform_user']}@{sftp['host']}:{sftp['port']} "
        f"password {sftp['platform_password']} ({up(sftp['running'])})"
    )
    for partner, password in sftp["partner_users"].items():
        click.echo(f"               partner login {partner} / {password}")
    pull = status["partner_sftp"]
    click.echo(f"partner sftp sftp://{pull['host']}:{pull['port']} ({up(pull['running'])})")
    click.echo(f"api          {api['url']} ({up(api['running'])})")
    fitbit = status.get("fitbit_emulator")
    if fitbit:
        click.echo(f"fitbit emu   {fitbit['url']} ({up(fitbit['running'])})")
    click.echo(f"state        {status['state_dir']}")


# --- runs ----------------------------------------------------------------------------------


@main.command("run")
@click.option("--select", default=None, help="Dagster asset selection, e.g. 'group:partners+'.")
def run_cmd(select: str | None) -> None:
    """Materialize assets once, recorded in the Dagster instance `make dev` shows."""
    from mdp.orchestrate import SelectionError, check_selection, load_definitions, run_assets
    from mdp.stack import stack_up

    if select is not None and not select.strip():
        raise click.BadParameter("the asset selection is empty", param_hint="'--select'")
    settings = _settings()
    defs = load_definitions(settings)
    if select is not None:
        # refused before any sandbox service starts (a start-up costs ~10 s and leaves them up)
        try:
            check_selection(defs, select)
        except SelectionError as exc:
            raise click.BadParameter(str(exc), param_hint="'--select'") from None
    if not os.environ.get("MDP_SFTP_HOST"):
        # No SFTP server configured: this is the local stack, so make sure the sandbox runs.
        stack_up(settings, with_api=False)
    result = run_assets(settings, select=select, defs=defs)
    _report_run(result)
    sys.exit(0 if result.success else 1)


def _report_run(result) -> None:
    import dagster as dg

    # a step retried (a transient failure) reports again: its last report counts
    materialized = {
        e.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.asset_key
    }
    last_evaluation = {
        (e.event_specific_data.asset_key, e.event_specific_data.check_name): e.event_specific_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    checks = list(last_evaluation.values())
    failed = [c for c in checks if not c.passed]
    # a check of WARN severity that does not pass is a warning, not a failure of the data
    warned = [c for c in failed if getattr(c.severity, "value", c.severity) == "WARN"]
    errored = [c for c in failed if c not in warned]
    click.echo(
        f"run {result.run_id}: {'succeeded' if result.success else 'FAILED'}; "
        f"{len(materialized)} materializations, {len(checks)} checks ({len(errored)} failed,"
        f" {len(warned)} warnings)"
    )
    for check in errored:
        click.echo(f"  check failed: {check.asset_key.to_user_string()} {check.check_name}")
    for check in warned:
        click.echo(f"  check warning: {check.asset_key.to_user_string()} {check.check_name}")
    # the step that failed and its error's first line: the reason, below the Dagster logs
    failures = {
        e.step_key: e.event_specific_data.error
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.STEP_FAILURE and e.step_key
    }
    for step, error in failures.items():
        while getattr(error, "cause", None) is not None:  # Dagster's wrapper, then the error
            error = error.cause
        message = (getattr(error, "message", "") or "").strip().splitlines()
        # `dagster._core.definitions.events.Failure: ...` as `Failure: ...`
        first = re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", message[0]) if message else "see the logs"
        click.echo(f"  step failed: {step}: {_redact(first)}")


@main.command("dev")
def dev_cmd() -> None:
    """Dagster UI + daemon over the local stack (same instance as `mdp run`)."""
    from mdp.orchestrate import prepare_dbt_manifest, prepare_environment
    from mdp.stack import stack_up

    settings = _settings()
    stack_up(settings)
    prepare_environment(settings)
    prepare_dbt_manifest(settings)
    venv_bin = os.path.dirname(sys.executable)
    os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    os.execv(
        os.path.join(venv_bin, "dagster"),
        [
            "dagster",
            "dev",
            "-w",
            str(settings.project_root / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            os.environ.get("MDP_DAGSTER_PORT", "3000"),
        ],
    )


@main.command("demo")
def demo_cmd() -> None:
    """Bring the stack up, generate a synthetic world, run everything, print what to try."""
    from mdp.demo import run_demo

    sys.exit(run_demo(_settings()))


# --- partners ------------------------------------------------------------------------------


@main.group()
def partner() -> None:
    """Partner configs and API keys."""


@partner.command("validate")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
def partner_validate(path: Path | None) -> None:
    """Validate one config file or every file in the partner config folder."""
    from ingestion.partners.config import (
        PartnerConfigError,
        load_partner_config,
        load_partner_configs,
    )

    settings = _load_settings()
    if path is not None and path.is_file():
        try:
            config = load_partner_config(path)
        except PartnerConfigError as exc:
            for problem in exc.problems:
                click.echo(f"ERROR {problem}", err=True)
            sys.exit(1)
        click.echo(
            f"ok    {path.name}: {config.partner_id} ({config.inbound.format}, {config.inbound.transport})"
        )
        return
    folder = path or settings.partner_config_dir
    loaded = load_partner_configs(folder)
    if not loaded.configs and not loaded.problems:
        raise click.ClickException(f"no partner configs found in {folder}")
    for partner_id, config in sorted(loaded.configs.items()):
        click.echo(f"ok    {partner_id}: {config.inbound.format}, {config.inbound.transport}")
    for problem in loaded.problems:
        click.echo(f"ERROR {problem}", err=True)
    sys.exit(1 if loaded.problems else 0)


@partner.group("key")
def partner_key() -> None:
    """Eligibility API keys (stored hashed; shown once)."""


@partner_key.command("create")
@click.argument("partner_id")
@click.option("--label", default=None)
def key_create(partner_id: str, label: str | None) -> None:
    from ingestion.partners.config import load_partner_configs
    from mdp.schema import ensure_schema
    from serving.api_keys import create_key

    settings = _settings()
    config = load_partner_configs(settings.partner_config_dir).configs.get(partner_id)
    if config is None:
        raise click.ClickException(f"no valid partner config for {partner_id!r}")
    if not config.eligibility_api.enabled:
        # the API refuses every key of such a partner: a key issued now would only mislead
        raise click.ClickException(f"the eligibility API is disabled for {partner_id}")
    params = _database(settings)
    ensure_schema(params)
    key_id, key = create_key(params, partner_id, label)
    click.echo(f"key id {key_id} for {partner_id}; the key is shown once:", err=True)
    click.echo(key)


@partner_key.command("revoke")
@click.argument("partner_id")
@click.option("--key-id", default=None, help="Revoke one key; default: all of the partner's keys.")
def key_revoke(partner_id: str, key_id: str | None) -> None:
    from mdp.schema import ensure_schema
    from serving.api_keys import KEY_SHAPE, ApiKeyError, revoke_key

    if key_id is not None and (found := KEY_SHAPE.fullmatch(key_id)):
        # the whole key, pasted where its id goes: never echoed, revoked by its id
        key_id = found["key_id"]
        click.echo("that was the whole key, not its id: revoking it by its id", err=True)
    params = _database(_settings())
    ensure_schema(params)
    try:
        count = revoke_key(params, partner_id, key_id)
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    if count == 0:
        from ingestion.partners.config import load_partner_configs

        which = f"active key {key_id}" if key_id is not None else "active keys"
        known = load_partner_configs(_settings().partner_config_dir).configs
        unknown = "" if partner_id in known else " (no such partner in the configs either)"
        raise click.ClickException(f"no {which} for {partner_id}{unknown}")
    click.echo(f"revoked {count} key(s) of {partner_id}")


# --- devices -------------------------------------------------------------------------------


@main.group()
def devices() -> None:
    """Device data: Apple Health exports, connections."""


FORCE_MEMBER_HELP = (
    "Accept a member id not (yet) in marts.dim_member, such as an enrollee the next dbt build adds."
)


@devices.command("import-apple-export")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--member-id", required=True, help="The platform member the export belongs to.")
@click.option("--force", is_flag=True, help=FORCE_MEMBER_HELP)
def import_apple_export(path: Path, member_id: str, force: bool) -> None:
    """Stream a Health app export (export.xml, the zip, or the unzipped folder) into
    raw_apple_health.samples."""
    from ingestion.devices.apple_health import HealthExportError
    from ingestion.devices.apple_health.export_xml import shown_problems
    from ingestion.devices.apple_health.load import import_export

    settings = _settings()
    params = _database(settings)
    if not force:
        _refuse_unknown_member(params, member_id)
    try:
        stats = import_export(path, member_id, params, settings.state_dir / "dlt")
    except HealthExportError as exc:
        raise click.ClickException(f"refused: {exc}") from None
    kept = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.kept.items())) or "nothing"
    click.echo(f"imported {kept} from {path.name}; {stats.rejected} records rejected")
    shown = shown_problems(stats)
    for line in shown:
        click.echo(f"  rejected: {line}")
    if stats.rejected > len(shown):
        click.echo(f"  ... and {stats.rejected - len(shown)} more")


@devices.command("connect")
@click.option("--member-id", required=True, help="The platform member connecting a device.")
@click.option("--provider", type=click.Choice(["fitbit"]), default="fitbit", show_default=True)
@click.option(
    "--redirect-uri",
    default=None,
    help="The callback registered with the provider (default FITBIT_REDIRECT_URI, else the"
    " API's /oauth/fitbit/callback).",
)
@click.option("--force", is_flag=True, help=FORCE_MEMBER_HELP)
def devices_connect(member_id: str, provider: str, redirect_uri: str | None, force: bool) -> None:
    """Connect a member's device through the provider's OAuth consent.

    The sandbox emulator consents at once, so the connection is made here; a real provider
    shows its consent page: open the printed URL in the member's browser, and the API's
    callback completes the connection.
    """
    from ingestion.devices.connections import latest_connection
    from ingestion.devices.fitbit.client import DEFAULT_BASE_URL, fitbit_app_from_env
    from ingestion.devices.fitbit.oauth import ConnectError, connect_with_consent

    settings = _settings()
    params = _database(settings)
    if not force:
        _refuse_unknown_member(params, member_id)
    callback = (
        redirect_uri
        or os.environ.get("FITBIT_REDIRECT_URI")
        or (f"{settings.api_url}/oauth/fitbit/callback")
    )
    app = fitbit_app_from_env()
    # the sandbox consents as whichever Fitbit user it is told: the member's own account, as a
    # member signing in to Fitbit again would (it made a new user, and a second connection,
    # each time). The connection is then the same one: a reconnect fills only the gap.
    known = (
        None if app.base_url == DEFAULT_BASE_URL else latest_connection(params, member_id, provider)
    )
    try:
        outcome = connect_with_consent(
            params, app, member_id, callback, sandbox_user_id=known and known.provider_user_id
        )
    except ConnectError as exc:
        raise click.ClickException(str(exc)) from None
    if outcome.connection_id is None:
        click.echo(f"Open this URL in the member's browser to consent:\n{outcome.url}")
        return
    note = "subscribed to notifications" if outcome.subscribed else "not subscribed: polling only"
    click.echo(f"connected {provider} for {member_id}: {outcome.connection_id} ({note})")


def _refuse_unknown_member(params: ConnectionParams, member_id: str) -> None:
    """A mistyped id would make a connection whose readings join no member: refused."""
    from mdp.database import connect

    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('marts.dim_member') is not null")
        if not cur.fetchone()[0]:
            raise click.ClickException(
                "no members yet (marts.dim_member does not exist: `mdp run` builds it);"
                " pass --force to connect anyway"
            )
        try:
            cur.execute("select 1 from marts.dim_member where member_id = %s", (member_id,))
        except psycopg2.Error as exc:  # a role without SELECT on the member mart (PHI)
            raise click.ClickException(
                f"cannot read marts.dim_member to check the member id"
                f" ({type(exc).__name__}); pass --force to connect anyway"
            ) from None
        if cur.fetchone() is None:
            raise click.ClickException(
                f"no member {member_id!r} in marts.dim_member (member ids: `select member_id"
                " from marts.dim_member`); pass --force for one the next build adds"
            )


@devices.command("disconnect")
@click.option("--member-id", required=True)
@click.option("--provider", type=click.Choice(["fitbit"]), default="fitbit", show_default=True)
def devices_disconnect(member_id: str, provider: str) -> None:
    """Revoke the provider's tokens and stop syncing; the member's history is kept."""
    from ingestion.devices.connections import member_connections
    from ingestion.devices.fitbit.client import fitbit_app_from_env
    from ingestion.devices.fitbit.oauth import disconnect_member

    params = _database(_settings())
    mine = member_connections(params, member_id, provider)
    if not mine:
        raise click.ClickException(f"{member_id} has no active {provider} connection")
    app = fitbit_app_from_env()
    for connection in mine:
        disconnect_member(params, app, connection)
        click.echo(f"disconnected {connection.connection_id}; history kept")


@devices.command("member-token")
@click.argument("member_id")
@click.option(
    "--days",
    default=30,
    show_default=True,
    type=click.IntRange(min=1, max=3650),
    help="Days until the token expires (at most ten years).",
)
@click.option("--force", is_flag=True, help=FORCE_MEMBER_HELP)
def member_token(member_id: str, days: int, force: bool) -> None:
    """Issue a member-app token for POST /api/v1/apple-health/samples (shown once)."""
    from serving.member_tokens import issue_member_token

    settings = _settings()
    if not force:
        _refuse_unknown_member(_database(settings), member_id)
    try:
        token = issue_member_token(member_id, ttl_seconds=days * 86400)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)


@main.group()
def audit() -> None:
    """The append-only, hash-chained access log."""


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the audit log's hash chain; exit 1 at the first row that does not match."""
    from mdp.database import connect
    from mdp.schema import ensure_schema

    params = _database(_settings())
    ensure_schema(params)
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select audit.verify_chain(), count(*) from audit.access_log")
        broken, rows = cur.fetchone()
    if broken is not None:
        click.echo(f"audit chain broken at chain_seq {broken} ({rows} rows)", err=True)
        sys.exit(1)
    click.echo(f"audit chain intact ({rows} rows)")


@audit.command("member")
@click.argument("partner_id")
@click.argument("member")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="From this day (YYYY-MM-DD).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="To this day, included.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit_member(
    partner_id: str,
    member: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    as_json: bool,
) -> None:
    """Every access to one member's data: API checks, member-app uploads, exports.

    MEMBER is the partner's id for the member (its employee id; for a partner that
    identifies members by SSN, the SSN). The log holds only keyed references, so the
    member is found by computing theirs; nothing of the member is printed back."""
    from ingestion.partners.config import load_partner_configs
    from mdp.access_log import member_events
    from mdp.schema import ensure_schema
    from serving.eligibility import InvalidRequest, lookup_id

    if since and until and since > until:
        raise click.UsageError(f"--since {since:%Y-%m-%d} is after --until {until:%Y-%m-%d}")
    settings = _settings()
    config = load_partner_configs(settings.partner_config_dir).configs.get(partner_id)
    if config is None:
        raise click.ClickException(f"no valid partner config for {partner_id!r}")
    try:
        member_key = lookup_id(member.strip(), config.inbound.identifier)
    except InvalidRequest as exc:
        raise click.ClickException(exc.problems[0].problem) from None
    params = _database(settings)
    ensure_schema(params)
    events = member_events(
        params, partner_id, member_key, since and since.date(), until and until.date()
    )
    if as_json:
        _print_json(events)
        return
    if not events:
        click.echo("no access to this member's data in the audit log for that period")
        return
    for event in events:
        click.echo(
            f"{event['occurred_at']:%Y-%m-%d %H:%M:%S%z}  {event['action']:<22}"
            f" {event['outcome'] or '':<12} {event['actor']}"
            + (f"  purpose: {event['purpose']}" if event["purpose"] else "")
        )
    click.echo(f"{len(events)} access(es)")


# --- imports -------------------------------------------------------------------------------


@main.group()
def imports() -> None:
    """The import ledger: every file received."""


@imports.command("list")
@click.option("--partner", "partner_id", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def imports_list(partner_id: str | None, limit: int, as_json: bool) -> None:
    from ingestion.partners.imports import list_imports
    from mdp.phi import masked_ssns
    from mdp.schema import ensure_schema

    params = _database(_settings())
    ensure_schema(params)
    rows = list_imports(params, partner_id=partner_id, limit=limit)
    for row in rows:  # printed, as in logs: an SSN a partner put in a file name is masked
        for key in ("filename", "source_path", "archive_path"):
            if row.get(key):
                row[key] = masked_ssns(row[key])
    if partner_id and not rows:
        from ingestion.partners.config import load_partner_configs

        known = load_partner_configs(_settings().partner_config_dir).configs
        if partner_id not in known:  # a typo, not a partner without imports
            click.echo(
                f"note: no partner {partner_id!r} in the configs ({', '.join(sorted(known))})",
                err=True,
            )
    if as_json:
        _print_json(rows)
        return
    click.echo(
        f"{'file_id':<48} {'status':<12} {'total':>7} {'loaded':>7} {'rejected':>8}  filename / reason"
    )

    def count(
        value: int | None,
    ) -> str:  # none counted (a quarantined file): "-", as in JSON's null
        return "-" if value is None else str(value)

    for r in rows:
        click.echo(
            f"{r['file_id']:<48} {r['status']:<12} {count(r['rows_total']):>7}"
            f" {count(r['rows_loaded']):>7} {count(r['rows_rejected']):>8}  {r['filename']}"
            + (f"  ({r['reason']})" if r["reason"] else "")
        )


@imports.command("replay")
@click.argument("file_id")
@click.option(
    "--force",
    is_flag=True,
    help="Replay even though a later file of the partner was loaded (its changes are undone),"
    " or though a full file leaves out more members than max_termination_share (it was held).",
)
def imports_replay(file_id: str, force: bool) -> None:
    """Re-import an archived file on purpose (it bypasses the duplicate check), then rebuild dbt."""
    from mdp.replay import ReplayError, replay_import
    from mdp.schema import ensure_schema

    settings = _settings()
    ensure_schema(_database(settings))
    try:
        record, run = replay_import(settings, file_id, force=force)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"replayed {file_id} as {record.file_id}: {record.status}, "
        f"{record.rows_loaded or 0} loaded, {record.rows_rejected or 0} rejected"
    )
    if run is not None:
        _report_run(run)
    sys.exit(0 if record.status == "loaded" and (run is None or run.success) else 1)


if __name__ == "__main__":
    main()
