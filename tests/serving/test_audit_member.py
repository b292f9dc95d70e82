"""`mdp audit member`: every access to one member's data, found by their keyed reference."""

from __future__ import annotations

import datetime as dt
import json

from click.testing import CliRunner
from starlette.testclient import TestClient

from mdp.access_log import member_refs, record_export
from mdp.cli import main
from mdp.database import ConnectionParams
from serving.app import create_app
from tests.serving.conftest import CHECK, SSN, bearer, wait_for


def _events(partner: str, member: str, *options: str) -> list[dict]:
    result = CliRunner().invoke(main, ["audit", "member", partner, member, "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_members_checks_and_exports_are_listed_and_no_one_elses(
    mart: ConnectionParams, partner_configs, keys, tmp_path, monkeypatch
):
    monkeypatch.setenv("MDP_DATABASE_URL", mart.url())
    monkeypatch.setenv("MDP_STATE_DIR", str(tmp_path / "state"))
    before = len(_events("acme_corp", "A100001"))
    before_ssn = len(_events("umbrella_plan", SSN))
    app = create_app(params=mart, partner_configs=partner_configs)
    with TestClient(app) as client:
        for body, partner in [
            ({"employee_id": "A100001", "date_of_birth": "1980-05-17"}, "acme_corp"),
            ({"employee_id": "A100001", "date_of_birth": "1999-01-01"}, "acme_corp"),
            ({"employee_id": "A100002", "date_of_birth": "1980-05-17"}, "acme_corp"),
            ({"employee_id": SSN, "date_of_birth": "1970-01-01"}, "umbrella_plan"),
        ]:
            client.post(CHECK, json=body, headers=bearer(keys, partner))
        assert wait_for(lambda: len(_events("acme_corp", "A100001")) == before + 2, timeout=3)
    record_export(
        mart,
        "error_report",
        "acme_corp",
        member_refs("acme_corp", ["A100001", "A100009"]),
        "partner's error report",
        {"file_id": "f-audit"},
    )

    events = _events("acme_corp", "A100001")[before:]
    assert [(e["action"], e["outcome"]) for e in events][-1] == ("error_report", "delivered")
    assert len(events) == 3 and "member_refs" not in events[-1]["detail"]
    assert all(e["partner_id"] == "acme_corp" for e in events)
    # the SSN partner's member by SSN, written any way the API takes it
    assert len(_events("umbrella_plan", SSN.replace("-", ""))) == before_ssn + 1
    # a period before today holds none of them
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    assert _events("acme_corp", "A100001", "--until", yesterday) == []
    refused = CliRunner().invoke(main, ["audit", "member", "umbrella_plan", "12-34"])
    assert refused.exit_code == 1 and "not a valid SSN" in refused.output


def test_a_period_that_ends_before_it_starts_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MDP_STATE_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(
        main,
        ["audit", "member", "acme_corp", "A1", "--since", "2026-02-01", "--until", "2026-01-01"],
    )
    assert (
        result.exit_code == 2 and "--since 2026-02-01 is after --until 2026-01-01" in result.output
    )
