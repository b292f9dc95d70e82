"""The `mdp` CLI over a running platform: keys, the import ledger, replay, stack status."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from mdp.cli import main
from mdp.orchestrate import SelectionError, check_selection
from mdp.settings import load_settings, local_secret
from sandbox.generator import generate_partner_file
from serving.api_keys import create_key, list_keys
from tests.conftest import REPO, fresh_database


def test_key_create_prints_a_key_once_and_revoke_deactivates_it(platform):
    runner = CliRunner()
    created = runner.invoke(main, ["partner", "key", "create", "globex_health", "--label", "ops"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("mdp_")
    [stored] = [k for k in list_keys(platform.params, "globex_health") if k.label == "ops"]
    hashes = platform.query(
        "select key_hash from serving.api_keys where key_id = %s", (stored.key_id,)
    )
    assert key not in hashes[0][0]  # only the hash is stored

    revoked = runner.invoke(
        main, ["partner", "key", "revoke", "globex_health", "--key-id", stored.key_id]
    )
    assert revoked.exit_code == 0
    assert not [
        k for k in list_keys(platform.params, "globex_health") if k.key_id == stored.key_id
    ][0].active
    unknown = runner.invoke(main, ["partner", "key", "create", "no_such_partner"])
    assert unknown.exit_code != 0 and "no valid partner config" in unknown.output


def test_imports_list_json_and_replay_reimports_an_archived_file(platform):
    from ingestion.partners.pipeline import import_partner_files

    config = platform.configs["acme_corp"]
    generated = generate_partner_file(config, rows=12, seed=41, id_offset=950_000)
    platform.upload("acme_corp", "enrollment_replay.csv", generated.content)
    [record] = import_partner_files(config, platform.settings, platform.params)

    runner = CliRunner()
    listed = runner.invoke(main, ["imports", "list", "--partner", "acme_corp", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert record.file_id in {r["file_id"] for r in rows}

    replayed = runner.invoke(main, ["imports", "replay", record.file_id])
    assert replayed.exit_code == 0, replayed.output
    assert f"replayed {record.file_id}" in replayed.stdout
    replays = platform.query(
        "select status, rows_loaded from raw_partners.file_imports where reason = %s",
        (f"replay of {record.file_id}",),
    )
    assert replays == [("loaded", 12)]
    ids = [m["employee_id"] for m in generated.valid_members]
    assert platform.query(
        "select count(*) from raw_partners.enrollment_members where employee_id = any(%s)", (ids,)
    ) == [(12,)]
    # the raw table's asset records the replay, so the UI's lineage shows what changed it
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["raw_partners", "enrollment_members"])
        )
    metadata = event.asset_materialization.metadata
    assert metadata["replayed_file_id"].value == record.file_id


def test_imports_list_masks_an_ssn_in_a_file_name(platform):
    from ingestion.partners.pipeline import import_partner_files

    config = platform.configs["acme_corp"]
    generated = generate_partner_file(config, rows=3, seed=43, id_offset=960_000)
    platform.upload("acme_corp", "enrollment_531278846.csv", generated.content)
    import_partner_files(config, platform.settings, platform.params)

    runner = CliRunner()
    for args in (["imports", "list"], ["imports", "list", "--json"]):
        listed = runner.invoke(main, args)
        assert listed.exit_code == 0
        assert "531278846" not in listed.stdout and "***-**-8846" in listed.stdout


def test_stack_status_json_names_addresses_and_sftp_credentials(platform):
    result = CliRunner().invoke(main, ["stack", "status", "--json"])
    assert result.exit_code == 0
    status = json.loads(result.stdout)
    assert status["sftp"]["port"] == platform.settings.sftp_port
    assert status["database"]["mode"] == "external"
    assert "***" in status["database"]["url"] or "@" in status["database"]["url"]
    assert set(status["sftp"]["partner_users"]) == set(platform.configs)


# --- operator errors: one clear line and a non-zero exit, never a traceback ----------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A private state folder; every env var the CLI sets (DAGSTER_HOME, MDP_PG_*) is undone."""
    saved = dict(os.environ)
    monkeypatch.setenv("MDP_STATE_DIR", str(tmp_path / "state"))
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


def _refused(result, exit_code: int = 1) -> str:
    """The result of a command refused cleanly: its exit code, no traceback; returns stderr."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.stderr


def test_replay_of_an_unknown_file_id_on_a_fresh_database_is_a_clear_error(cli_env, monkeypatch):
    with fresh_database("mdp_cli") as params:
        monkeypatch.setenv("MDP_DATABASE_URL", params.url())
        result = CliRunner().invoke(main, ["imports", "replay", "nope"])
    assert "no import with file id 'nope'" in _refused(result)


def test_replay_names_missing_archived_bytes_and_a_partner_without_config(platform):
    for file_id, partner_id in (("cli-no-bytes", "acme_corp"), ("cli-no-config", "gone_corp")):
        platform.query(
            "insert into raw_partners.file_imports"
            " (file_id, partner_id, filename, sha256, status, archive_path)"
            " values (%s, %s, 'f.csv', 'abc123', 'loaded', '/nonexistent/f.csv')",
            (file_id, partner_id),
        )
    no_bytes = CliRunner().invoke(main, ["imports", "replay", "cli-no-bytes"])
    assert "archived bytes for cli-no-bytes are missing" in _refused(no_bytes)
    no_config = CliRunner().invoke(main, ["imports", "replay", "cli-no-config"])
    assert "partner 'gone_corp' has no valid config" in _refused(no_config)


def test_key_revoke_on_a_fresh_database_creates_the_schema_first(cli_env, monkeypatch):
    with fresh_database("mdp_cli") as params:
        monkeypatch.setenv("MDP_DATABASE_URL", params.url())
        result = CliRunner().invoke(main, ["partner", "key", "revoke", "acme_corp"])
    assert "no active keys for acme_corp" in _refused(result)


def test_revoking_an_unknown_key_id_says_so_on_stderr(platform):
    result = CliRunner().invoke(
        main, ["partner", "key", "revoke", "acme_corp", "--key-id", "deadbeef"]
    )
    assert "no active key deadbeef for acme_corp" in _refused(result)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ("nonexistent_asset", "nonexistent_asset"),
        ("a+b++(", "not a valid asset selection"),
        ("group:nope", "selection matches no assets"),
        ("  ", "the asset selection is empty"),
    ],
)
def test_run_refuses_a_bad_selection_before_starting_the_stack(
    platform, cli_env, monkeypatch, selection, message
):
    def stack_up(*_args, **_kwargs):
        raise AssertionError("the stack was started for a selection that cannot run")

    monkeypatch.setattr("mdp.stack.stack_up", stack_up)
    result = CliRunner().invoke(main, ["run", "--select", selection])
    assert message in _refused(result, exit_code=2)


def test_check_selection_counts_what_a_selection_resolves_to():
    @dg.asset(group_name="g")
    def one() -> None: ...

    defs = dg.Definitions(assets=[one])
    assert check_selection(defs, "group:g") == 1
    for bad in ("", "group:none", "missing", "one+(("):
        with pytest.raises(SelectionError):
            check_selection(defs, bad)


def test_unreachable_database_is_one_line_without_the_password(cli_env, monkeypatch):
    monkeypatch.setenv("MDP_DATABASE_URL", "postgresql://postgres:Pw-s3cret@127.0.0.1:1/x")
    stderr = _refused(CliRunner().invoke(main, ["imports", "list"]))
    assert "database unavailable" in stderr and "Pw-s3cret" not in stderr


def test_a_database_url_that_is_not_postgres_is_a_clear_error(cli_env, monkeypatch):
    monkeypatch.setenv("MDP_DATABASE_URL", "mysql://root:Pw-s3cret@db/y")
    stderr = _refused(CliRunner().invoke(main, ["imports", "list"]))
    assert "MDP_DATABASE_URL must start with postgresql://" in stderr
    assert "Pw-s3cret" not in stderr


def test_imports_list_refuses_a_negative_limit(cli_env):
    result = CliRunner().invoke(main, ["imports", "list", "--limit", "-1"])
    assert "--limit" in _refused(result, exit_code=2)


def test_stack_up_names_a_port_taken_by_another_program(platform, cli_env, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MDP_SFTP_PORT", str(port))
        result = CliRunner().invoke(main, ["stack", "up", "--no-api"])
    assert f"sftp: port {port} is already taken" in _refused(result)


def test_key_create_refuses_a_partner_whose_eligibility_api_is_disabled(
    platform, cli_env, monkeypatch
):
    configs = cli_env / "partner_configs"
    configs.mkdir()
    text = (REPO / "partner_configs" / "globex_health.yaml").read_text()
    disabled = text.replace("eligibility_api: {enabled: true,", "eligibility_api: {enabled: false,")
    assert disabled != text
    (configs / "globex_health.yaml").write_text(disabled)
    monkeypatch.setenv("MDP_PARTNER_CONFIG_DIR", str(configs))
    result = CliRunner().invoke(
        main, ["partner", "key", "create", "globex_health", "--label", "disabled"]
    )
    assert "the eligibility API is disabled for globex_health" in _refused(result)
    assert not [k for k in list_keys(platform.params, "globex_health") if k.label == "disabled"]


def test_stack_status_masks_the_credentials_of_a_real_sftp_server(cli_env, monkeypatch):
    monkeypatch.setenv("MDP_DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:1/x")
    monkeypatch.setenv("MDP_SFTP_HOST", "sftp.prod.example.com")
    monkeypatch.setenv("MDP_SFTP_PASSWORD", "Pr0d-S3cret!")
    plain = CliRunner().invoke(main, ["stack", "status"])
    as_json = CliRunner().invoke(main, ["stack", "status", "--json"])
    assert plain.exit_code == 0 and as_json.exit_code == 0
    assert "password ***" in plain.stdout
    status = json.loads(as_json.stdout)
    assert status["sftp"]["platform_password"] == "***"
    assert set(status["sftp"]["partner_users"].values()) == {"***"}
    for output in (plain.stdout, as_json.stdout):
        assert "Pr0d-S3cret!" not in output


def test_stack_status_shows_the_sandbox_credentials(cli_env, monkeypatch):
    monkeypatch.setenv("MDP_DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:1/x")
    monkeypatch.delenv("MDP_SFTP_HOST", raising=False)
    monkeypatch.delenv("MDP_SFTP_PASSWORD", raising=False)
    result = CliRunner().invoke(main, ["stack", "status"])
    assert result.exit_code == 0
    sandbox_password = local_secret(cli_env / "state", "MDP_SFTP_PASSWORD")
    assert f"password {sandbox_password}" in result.stdout


@pytest.mark.parametrize("where", ["empty_folder", "/dev/null"])
def test_partner_validate_of_a_path_without_configs_fails(cli_env, where):
    path = Path(where)
    if where == "empty_folder":
        path = cli_env / where
        path.mkdir()
    result = CliRunner().invoke(main, ["partner", "validate", str(path)])
    assert f"no partner configs found in {path}" in _refused(result)


def test_a_rewritten_stack_env_replaces_what_the_old_one_set_but_not_the_users_own(
    cli_env, monkeypatch
):
    from mdp.stack import STACK_ENV, load_stack_env

    monkeypatch.delenv("CLI_TEST_PORT", raising=False)
    monkeypatch.setenv("CLI_TEST_USER_SET", "mine")
    settings = load_settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stack_env = settings.state_dir / STACK_ENV
    stack_env.write_text("CLI_TEST_PORT=2223\nCLI_TEST_USER_SET=stack\n")
    load_stack_env(settings)
    stack_env.write_text("CLI_TEST_PORT=23223\nCLI_TEST_USER_SET=stack\n")
    load_stack_env(settings)
    assert os.environ["CLI_TEST_PORT"] == "23223"
    assert os.environ["CLI_TEST_USER_SET"] == "mine"


def test_replay_of_a_file_a_later_file_followed_is_refused_unless_forced(platform):
    # the replay is the newest import: it would put back what the later file changed
    from ingestion.partners.pipeline import import_partner_files

    config = platform.configs["acme_corp"]
    older = generate_partner_file(config, rows=5, seed=43, id_offset=960_000)
    platform.upload("acme_corp", "enrollment_older.csv", older.content)
    [first] = import_partner_files(config, platform.settings, platform.params)
    newer = generate_partner_file(config, rows=5, seed=44, id_offset=960_000)
    platform.upload("acme_corp", "enrollment_newer.csv", newer.content)
    [second] = import_partner_files(config, platform.settings, platform.params)
    assert (first.status, second.status) == ("loaded", "loaded")

    refused = CliRunner().invoke(main, ["imports", "replay", first.file_id])

    assert refused.exit_code == 1
    assert f"enrollment_newer.csv ({second.file_id}) was loaded after" in refused.output
    assert "--force" in refused.output
    assert platform.query(
        "select count(*) from raw_partners.file_imports where reason = %s",
        (f"replay of {first.file_id}",),
    ) == [(0,)]

    # the older bytes sent again are a duplicate; replaying that entry loaded them over the
    # newer file without --force (the guard looked for loads after the duplicate's arrival)
    platform.upload("acme_corp", "enrollment_older_again.csv", older.content)
    [again] = import_partner_files(config, platform.settings, platform.params)
    assert again.status == "duplicate"
    refused = CliRunner().invoke(main, ["imports", "replay", again.file_id])
    assert refused.exit_code == 1
    assert (
        f"enrollment_newer.csv ({second.file_id}) was loaded after {first.file_id}, the load"
        f" duplicate {again.file_id} repeats"
    ) in " ".join(refused.output.split())
    # an empty id (an unset shell variable) is no id: it replayed the newest import
    empty = CliRunner().invoke(main, ["imports", "replay", ""])
    assert empty.exit_code == 1 and "no import with file id ''" in empty.output
    assert platform.query(
        "select count(*) from raw_partners.file_imports where reason in (%s, %s)",
        (f"replay of {again.file_id}", "replay of "),
    ) == [(0,)]


def test_a_selection_splitting_what_one_step_makes_says_what_to_select():
    # it passed the check, then failed building the job with a DagsterInvalidSubsetError
    @dg.multi_asset(specs=[dg.AssetSpec(["raw", "members"]), dg.AssetSpec(["raw", "imports"])])
    def partner_files():
        yield dg.MaterializeResult(asset_key=["raw", "members"])
        yield dg.MaterializeResult(asset_key=["raw", "imports"])

    @dg.asset(key=["marts", "dim_member"], deps=[["raw", "members"]])
    def dim_member() -> None: ...

    defs = dg.Definitions(assets=[partner_files, dim_member])
    with pytest.raises(SelectionError, match=r"made together with raw/imports .*key:raw/imports"):
        check_selection(defs, "raw/members")
    assert check_selection(defs, "key:raw/*") == 2
    with pytest.raises(SelectionError, match="did you mean marts/dim_member"):
        check_selection(defs, "dim_member")


def test_run_report_tells_a_warning_check_from_a_failed_one(capsys):
    from mdp.cli import _report_run

    @dg.asset
    def roster() -> None: ...

    @dg.asset_check(asset=roster)
    def has_rejects() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)

    @dg.asset_check(asset=roster)
    def keys_unique() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False)

    defs = dg.Definitions(assets=[roster], asset_checks=[has_rejects, keys_unique])
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(raise_on_error=False)
    _report_run(result)
    out = capsys.readouterr().out
    assert "2 checks (1 failed, 1 warnings)" in out
    assert "check failed: roster keys_unique" in out and "check warning: roster has_rejects" in out


def test_the_sandbox_fitbit_secret_is_passed_in_the_environment_not_on_the_command_line(
    tmp_path, monkeypatch
):
    # a command line is readable by every user on the host (`ps`)
    from mdp.settings import load_settings
    from mdp.stack import fitbit_emulator_service
    from sandbox.fitbit_emulator import _add_arguments

    monkeypatch.setenv("MDP_STATE_DIR", str(tmp_path))
    service = fitbit_emulator_service(load_settings())
    secret = (tmp_path / "secrets" / "FITBIT_CLIENT_SECRET").read_text().strip()
    assert secret not in " ".join(service.command)
    assert service.env == {"FITBIT_CLIENT_SECRET": secret}
    import argparse

    parser = argparse.ArgumentParser()
    monkeypatch.setenv("FITBIT_CLIENT_SECRET", secret)
    _add_arguments(parser)
    assert parser.parse_args([]).client_secret == secret


def test_a_shell_without_the_port_exports_finds_the_stack_where_it_was_started(
    cli_env, monkeypatch
):
    """`MDP_API_PORT=48000 ... mdp stack up`, then in a new shell `mdp stack status`: it
    showed the default ports (and "up", for whatever else listened there)."""
    from mdp.cli import _settings
    from mdp.stack import write_stack_env

    monkeypatch.setenv("MDP_SFTP_PORT", "42222")
    monkeypatch.setenv("MDP_API_PORT", "48000")
    started = load_settings()
    started.state_dir.mkdir(parents=True, exist_ok=True)
    write_stack_env(started)
    for name in ("MDP_SFTP_PORT", "MDP_PULL_SFTP_PORT", "MDP_API_PORT", "MDP_FITBIT_EMULATOR_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = _settings()
    assert (settings.sftp_port, settings.api_port) == (42222, 48000)
    # another shell (a new process) that sets the port itself: its own wins
    monkeypatch.setattr("mdp.stack._loaded_from_stack_env", set())
    monkeypatch.setenv("MDP_API_PORT", "49000")
    assert _settings().api_port == 49000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_stack_up_and_down_answer_in_json_too(platform, cli_env, monkeypatch):
    for name in ("MDP_SFTP_PORT", "MDP_PULL_SFTP_PORT", "MDP_FITBIT_EMULATOR_PORT"):
        monkeypatch.setenv(name, str(_free_port()))
    runner = CliRunner()
    try:
        up = runner.invoke(main, ["stack", "up", "--no-api", "--json"])
        assert up.exit_code == 0, up.output
        status = json.loads(up.stdout)
        assert status["sftp"]["running"] and status["partner_sftp"]["running"]
        assert status["sftp"]["port"] == int(os.environ["MDP_SFTP_PORT"])
    finally:
        down = runner.invoke(main, ["stack", "down", "--json"])
    assert down.exit_code == 0, down.output
    assert {"sftp", "partner_sftp"} <= set(json.loads(down.stdout)["stopped"])
    again = runner.invoke(main, ["stack", "down", "--json"])
    assert json.loads(again.stdout) == {"stopped": []}


def test_the_api_believes_forwarded_addresses_only_from_a_named_proxy(monkeypatch):
    # uvicorn's default believed X-Forwarded-For from 127.0.0.1: a local client could pose as
    # any address to the failed-auth throttle
    from mdp.stack import api_service

    monkeypatch.delenv("MDP_FORWARDED_ALLOW_IPS", raising=False)
    assert "--no-proxy-headers" in api_service(load_settings()).command
    monkeypatch.setenv("MDP_FORWARDED_ALLOW_IPS", "10.0.0.5")
    command = api_service(load_settings()).command
    assert command[command.index("--forwarded-allow-ips") + 1] == "10.0.0.5"
    assert "--no-proxy-headers" not in command


# --- from review: stale pid files, other ports, bad values, secrets in messages -------------


def test_a_pid_file_naming_another_program_is_never_signalled(cli_env, monkeypatch):
    # after a reboot the pid in a stale file may be another program's: `stack down` killed
    # it (or crashed on it, leaving the rest running), `status` and `up` took it for ours
    from mdp.stack import running_pid, stack_down

    settings = load_settings()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (settings.run_dir / "api.pid").write_text(f"{stranger.pid} 1")  # not its start time
        (settings.run_dir / "sftp.pid").write_text(str(stranger.pid))  # an older file's shape
        (settings.run_dir / "partner_sftp.pid").write_text("abc")
        (settings.run_dir / "fitbit_emulator.pid").write_text("")
        assert [running_pid(settings, n) for n in SERVICES] == [None] * len(SERVICES)
        assert not list(settings.run_dir.glob("*.pid"))  # stale files are removed
        (settings.run_dir / "api.pid").write_text(f"{stranger.pid} 1")
        monkeypatch.setattr("mdp.stack.stop_embedded", lambda settings: False)
        assert stack_down(settings) == []
        assert stranger.poll() is None  # alive: never signalled
    finally:
        stranger.kill()
        stranger.wait()


SERVICES = ("api", "sftp", "partner_sftp", "fitbit_emulator")


def test_stack_up_on_other_ports_while_the_stack_runs_is_refused(platform, cli_env, monkeypatch):
    for name in ("MDP_SFTP_PORT", "MDP_PULL_SFTP_PORT", "MDP_FITBIT_EMULATOR_PORT"):
        monkeypatch.setenv(name, str(_free_port()))
    runner = CliRunner()
    stack_env = load_settings().state_dir / "stack.env"
    try:
        assert runner.invoke(main, ["stack", "up", "--no-api"]).exit_code == 0
        running_on = os.environ["MDP_SFTP_PORT"]
        before = stack_env.read_text()
        # a new shell, which asks for another port
        monkeypatch.setattr("mdp.stack._loaded_from_stack_env", set())
        monkeypatch.setenv("MDP_SFTP_PORT", str(_free_port()))
        message = _refused(runner.invoke(main, ["stack", "up", "--no-api"]))
        assert f"sftp is running on port {running_on}" in message
        assert stack_env.read_text() == before  # the ports it names are still the real ones
    finally:
        runner.invoke(main, ["stack", "down"])


def test_a_failed_stack_up_stops_what_it_started_and_keeps_the_old_stack_env(
    platform, cli_env, monkeypatch
):
    from mdp.stack import running_pid

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("MDP_SFTP_PORT", str(_free_port()))
        monkeypatch.setenv("MDP_PULL_SFTP_PORT", str(_free_port()))
        monkeypatch.setenv("MDP_FITBIT_EMULATOR_PORT", str(taken.getsockname()[1]))
        result = CliRunner().invoke(main, ["stack", "up", "--no-api"])
    settings = load_settings()
    try:
        assert "fitbit_emulator: port" in _refused(result)
        assert running_pid(settings, "sftp") is None
        assert running_pid(settings, "partner_sftp") is None
        assert not (settings.state_dir / "stack.env").exists()
    finally:
        CliRunner().invoke(main, ["stack", "down"])


@pytest.mark.parametrize("value", ["-1", "abc", "70000"])
def test_a_bad_port_names_its_variable(cli_env, monkeypatch, value):
    monkeypatch.setenv("MDP_SFTP_PORT", value)
    result = CliRunner().invoke(main, ["stack", "status"])
    assert f"MDP_SFTP_PORT must be a port number from 1 to 65535, not '{value}'" in _refused(result)
    assert not (cli_env / "state" / "stack.env").exists()


def test_apple_paths_refuse_a_member_id_no_mart_knows_unless_forced(platform, tmp_path):
    # a typo made a working token, or imported an export, for a member no data joins
    runner = CliRunner()
    refused = runner.invoke(main, ["devices", "member-token", "NOT_A_MEMBER"])
    assert refused.exit_code == 1 and "--force" in refused.output, refused.output
    export = tmp_path / "export.xml"
    export.write_text('<?xml version="1.0"?><HealthData locale="en_US"></HealthData>')
    imported = runner.invoke(
        main, ["devices", "import-apple-export", str(export), "--member-id", "NOT_A_MEMBER"]
    )
    assert imported.exit_code == 1 and "--force" in imported.output, imported.output
    forced = runner.invoke(main, ["devices", "member-token", "NOT_A_MEMBER", "--force"])
    assert forced.exit_code == 0 and forced.output.startswith("mt1."), forced.output
    empty = runner.invoke(main, ["devices", "member-token", "", "--force"])
    assert empty.exit_code == 1 and "Traceback" not in empty.output, empty.output


def test_a_member_token_needs_at_least_a_day(cli_env):
    result = CliRunner().invoke(main, ["devices", "member-token", "M1", "--days", "0"])
    assert "--days" in _refused(result, exit_code=2)


def test_a_password_in_the_url_query_is_used_and_masked(cli_env, monkeypatch):
    from mdp.database import ConnectionParams

    url = "postgresql://postgres@127.0.0.1:1/x?password=hunter2-secret"
    assert ConnectionParams.from_url(url).password == "hunter2-secret"
    monkeypatch.setenv("MDP_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["stack", "status", "--json"])
    assert "hunter2-secret" not in result.output
    assert "password=***" in json.loads(result.stdout)["database"]["url"]


def test_a_whole_key_given_as_its_id_is_revoked_by_its_id_and_never_echoed(
    platform, cli_env, monkeypatch
):
    monkeypatch.setenv("MDP_DATABASE_URL", platform.params.url())
    key_id, key = create_key(platform.params, "globex_health", label="pasted")
    result = CliRunner().invoke(
        main, ["partner", "key", "revoke", "globex_health", "--key-id", key]
    )
    assert result.exit_code == 0, result.output
    assert key.split("_", 2)[2] not in result.output
    assert [
        k.revoked_at is not None
        for k in list_keys(platform.params, "globex_health")
        if k.key_id == key_id
    ] == [True]
    again = CliRunner().invoke(main, ["partner", "key", "revoke", "globex_health", "--key-id", key])
    assert key.split("_", 2)[2] not in _refused(again)


def test_a_failed_run_names_the_step_and_its_error(capsys):
    from mdp.cli import _report_run

    @dg.asset
    def roster() -> None:
        raise RuntimeError('relation "intermediate.members" does not exist\nmore detail')

    job = dg.Definitions(assets=[roster]).resolve_implicit_global_asset_job_def()
    _report_run(job.execute_in_process(raise_on_error=False))
    out = capsys.readouterr().out
    assert (
        'step failed: roster: RuntimeError: relation "intermediate.members" does not exist' in out
    )


def test_a_replay_that_is_quarantined_again_still_says_it_was_a_replay(platform):
    from ingestion.partners.pipeline import import_partner_files
    from mdp.replay import replay_import

    config = platform.configs["acme_corp"]
    platform.upload("acme_corp", "enrollment_broken_replay.csv", b"\xff\xfe not a csv at all\n")
    [broken] = import_partner_files(config, platform.settings, platform.params)
    assert broken.status == "quarantined"

    record, _ = replay_import(platform.settings, broken.file_id, force=True, rebuild=False)

    assert record.status == "quarantined"
    [(reason,)] = platform.query(
        "select reason from raw_partners.file_imports where file_id = %s", (record.file_id,)
    )
    assert reason.startswith(f"replay of {broken.file_id}; ") and broken.reason in reason


def test_a_command_stops_the_embedded_postgres_it_started_and_leaves_a_running_one(tmp_path):
    # `mdp imports list` after `mdp stack down` started the embedded Postgres and left it.
    # Each step is a process of its own, as on the command line (pgserver remembers, per
    # process, the servers it started)
    from mdp.database import embedded_running

    env = {k: v for k, v in os.environ.items() if k != "MDP_DATABASE_URL"}
    env.update({"MDP_STATE_DIR": str(tmp_path / ".mdp"), "MDP_PII_HASH_KEY": "test-key"})
    mdp = [str(Path(sys.executable).with_name("mdp"))]
    python = [sys.executable, "-c"]
    start = "from mdp.database import start_embedded; from mdp.settings import load_settings;"
    start += " start_embedded(load_settings())"
    stop = start.replace("start_embedded", "stop_embedded")

    def run(args: list[str]) -> str:
        done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def running() -> bool:
        return embedded_running(tmp_path / ".mdp" / "pgdata")

    try:
        assert json.loads(run([*mdp, "imports", "list", "--json"])) == []
        assert not running()  # started for the command, stopped after it
        run([*python, start])  # as `mdp stack up` leaves it
        assert running()
        run([*mdp, "imports", "list", "--json"])
        assert running()  # not this command's to stop
    finally:
        subprocess.run([*python, stop], env=env, cwd=REPO, timeout=60)
    assert not running()
