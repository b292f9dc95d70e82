"""From a file uploaded over SFTP to an eligibility answer, through Dagster, dlt and dbt."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from starlette.testclient import TestClient

from mdp.orchestrate import run_assets
from sandbox.generator import generate_partner_file
from serving.api_keys import create_key
from serving.app import create_app

TODAY = dt.date.today()


def _eligible(members: list[dict]) -> list[dict]:
    return [
        m
        for m in members
        if m["eligibility_start_date"] <= TODAY
        and (m.get("eligibility_end_date") is None or m["eligibility_end_date"] >= TODAY)
    ]


def _check(client: TestClient, key: str, member: dict) -> tuple[int, dict]:
    response = client.post(
        "/api/v1/eligibility/check",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "employee_id": member["employee_id"],
            "date_of_birth": member["date_of_birth"].isoformat(),
        },
    )
    return response.status_code, response.json()


@pytest.fixture(scope="module")
def acme_file(platform):
    return generate_partner_file(platform.configs["acme_corp"], rows=60, bad_share=0.1, seed=11)


def test_uploaded_file_is_checkable_resubmission_is_duplicate_and_correction_keeps_history(
    platform, acme_file
):
    platform.upload("acme_corp", acme_file.filename, acme_file.content)
    result = run_assets(platform.settings)
    assert result.success

    imports = platform.query(
        "select status, rows_total, rows_loaded, rows_rejected from raw_partners.file_imports"
        " where partner_id = 'acme_corp'"
    )
    assert imports == [("loaded", 60, 54, 6)]
    assert platform.query(
        "select count(*) from raw_partners.enrollment_members where partner_id='acme_corp'"
    ) == [(54,)]
    assert (platform.sftp_root / "acme_corp" / "errors").glob("*.errors.csv")
    assert not list((platform.sftp_root / "acme_corp" / "inbound").iterdir())
    # the marts' materializations say how many rows they hold
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["marts", "mart_eligibility"])
        )
    mart_rows = platform.query("select count(*) from marts.mart_eligibility")[0][0]
    assert event.asset_materialization.metadata["dagster/row_count"].value == mart_rows

    _, key = create_key(platform.params, "acme_corp")
    member = _eligible(acme_file.valid_members)[0]
    with TestClient(create_app()) as client:
        status, body = _check(client, key, member)
        assert (status, body["eligible"]) == (200, True)

        # The identical bytes again: recorded as a duplicate, nothing changes.
        platform.upload("acme_corp", acme_file.filename, acme_file.content)
        assert run_assets(platform.settings).success
        statuses = platform.query(
            "select status, duplicate_of is not null from raw_partners.file_imports"
            " where partner_id = 'acme_corp' order by received_at"
        )
        assert statuses == [("loaded", False), ("duplicate", True)]
        assert platform.query(
            "select count(*) from raw_partners.enrollment_members where partner_id='acme_corp'"
        ) == [(54,)]

        # A corrected file ends the member's eligibility yesterday: updated in place, history kept.
        ended = TODAY - dt.timedelta(days=1)
        corrected = generate_partner_file(
            platform.configs["acme_corp"],
            rows=60,
            bad_share=0.0,
            seed=11,
            overrides={member["employee_id"]: {"eligibility_end_date": ended}},
            sequence=2,
        )
        platform.upload("acme_corp", corrected.filename, corrected.content)
        assert run_assets(platform.settings).success
        status, body = _check(client, key, member)
        assert status == 200
        assert body["eligible"] is False
        assert body["eligibility_end_date"] == ended.isoformat()

    history = platform.query(
        "select h.dbt_valid_to is null, h.eligibility_end_date from snapshots.eligibility_history h"
        " join marts.mart_eligibility m using (member_id)"
        " where m.partner_id = 'acme_corp' and m.employee_id = %s order by dbt_valid_from",
        (member["employee_id"],),
    )
    assert [current for current, _ in history] == [False, True]
    assert history[-1][1] == ended
    assert platform.query(
        "select count(*) from raw_partners.enrollment_members where partner_id='acme_corp'"
    ) == [(60,)]
