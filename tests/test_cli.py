"""The `mdp` CLI over a running platform: keys, the import ledger, replay, stack status."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mdp.cli import main
from sandbox.generator import generate_partner_file
from serving.api_keys import list_keys


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


def test_stack_status_json_names_addresses_and_sftp_credentials(platform):
    result = CliRunner().invoke(main, ["stack", "status", "--json"])
    assert result.exit_code == 0
    status = json.loads(result.stdout)
    assert status["sftp"]["port"] == platform.settings.sftp_port
    assert status["database"]["mode"] == "external"
    assert "***" in status["database"]["url"] or "@" in status["database"]["url"]
    assert set(status["sftp"]["partner_users"]) == set(platform.configs)
