"""The push-inbox sensor asks for a run only when a file is complete."""

from __future__ import annotations

import socket

import dagster as dg

from orchestration.defs.partners.sensors import push_inbox_sensor
from orchestration.resources import PlatformResource
from sandbox.generator import generate_partner_file


def _tick(cursor: str | None):
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(
            cursor=cursor, resources={"platform": PlatformResource()}, instance=instance
        )
        return push_inbox_sensor(context), context.cursor


def test_a_file_is_requested_on_the_second_unchanged_poll_and_a_marker_needs_none(platform):
    generated = generate_partner_file(
        platform.configs["globex_health"], rows=5, seed=2, id_offset=10
    )
    platform.upload("globex_health", "members_sensor.xlsx", generated.content)

    first, cursor = _tick(None)
    assert isinstance(first, dg.SkipReason)
    second, cursor = _tick(cursor)
    assert isinstance(second, dg.RunRequest)
    assert second.run_config["ops"]["partner_files"]["config"]["partners"] == ["globex_health"]
    assert second.run_key

    platform.upload("acme_corp", "enrollment_marked.csv", b"Employee ID\n")
    platform.upload("acme_corp", "enrollment_marked.csv.done", b"")
    third, _ = _tick(None)
    assert isinstance(third, dg.RunRequest)
    assert "acme_corp" in third.run_config["ops"]["partner_files"]["config"]["partners"]
    for name in ("members_sensor.xlsx",):
        (platform.sftp_root / "globex_health" / "inbound" / name).unlink()
    for name in ("enrollment_marked.csv", "enrollment_marked.csv.done"):
        (platform.sftp_root / "acme_corp" / "inbound" / name).unlink()


def test_files_still_waiting_long_after_their_run_was_asked_for_are_asked_for_again(platform):
    # their run failed for good (an outage outlasting its retries): the same run key would
    # never start another run, and the files would wait in the inbox until their bytes changed
    import json

    from orchestration.defs.partners.sensors import RETRY_AFTER_SECONDS

    platform.upload("acme_corp", "enrollment_stuck.csv", b"Employee ID\n")
    platform.upload("acme_corp", "enrollment_stuck.csv.done", b"")
    first, cursor = _tick(None)
    again, cursor = _tick(cursor)
    assert first.run_key == again.run_key  # soon after: the same run, not a second one

    state = json.loads(cursor)
    for entry in state["requested"].values():
        entry[0] -= RETRY_AFTER_SECONDS  # asked for that long ago, and still there
    later, cursor = _tick(json.dumps(state))
    assert later.run_key == f"{first.run_key}-again-1"
    still, _ = _tick(cursor)
    assert still.run_key == later.run_key
    for name in ("enrollment_stuck.csv", "enrollment_stuck.csv.done"):
        (platform.sftp_root / "acme_corp" / "inbound" / name).unlink()


def test_marts_behind_a_loaded_file_are_rebuilt_once_its_run_had_time_to_build(platform):
    # a run killed between its import and its dbt build leaves the file loaded and gone
    # from the inbox: only this sensor notices the mart never caught up
    from orchestration.defs.partners.marts_refresh import member_marts_behind_sensor

    def tick():
        context = dg.build_sensor_context(resources={"platform": PlatformResource()})
        return member_marts_behind_sensor(context)

    def loaded(file_id: str, minutes_ago: int) -> None:
        platform.query(
            "insert into raw_partners.file_imports (file_id, partner_id, filename, sha256,"
            " status, finished_at) values (%s, 'acme_corp', 'f.csv', %s, 'loaded',"
            " now() - make_interval(mins => %s))",
            (file_id, file_id, minutes_ago),
        )

    def refreshed(minutes_ago: int) -> None:
        platform.query(
            "insert into serving.mart_refreshes (mart, refreshed_at) values"
            " ('mart_eligibility', now() - make_interval(mins => %s)) on conflict (mart)"
            " do update set refreshed_at = excluded.refreshed_at",
            (minutes_ago,),
        )

    try:
        refreshed(60)
        loaded("behind-test-1", 30)
        request = tick()
        assert isinstance(request, dg.RunRequest) and request.run_key == "behind-behind-test-1"
        refreshed(0)
        assert "include the latest" in tick().skip_message
        refreshed(5)
        loaded("behind-test-2", 1)  # its own run is still building
        assert "may still be building" in tick().skip_message
    finally:
        platform.query("delete from raw_partners.file_imports where file_id like 'behind-test-%%'")


def test_a_partner_whose_server_is_down_does_not_hold_back_the_others(platform, monkeypatch):
    # initech's server is down: acme's file is imported and materialized (so dbt builds it),
    # not failed with the run after retries while the raw table already holds it
    from orchestration.defs.partners.assets import partner_files
    from orchestration.defs.resources import resources

    generated = generate_partner_file(platform.configs["acme_corp"], rows=5, seed=3, id_offset=70)
    platform.upload("acme_corp", "enrollment_outage.csv", generated.content)
    platform.upload("acme_corp", "enrollment_outage.csv.done", b"")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("INITECH_SFTP_PORT", str(closed.getsockname()[1]))
    run_config = {"ops": {"partner_files": {"config": {"partners": ["acme_corp", "initech"]}}}}

    result = dg.materialize([partner_files], resources=resources().resources, run_config=run_config)

    assert result.success
    [members] = [
        m
        for m in result.get_asset_materialization_events()
        if m.asset_key.path[-1] == "enrollment_members"
    ]
    metadata = members.materialization.metadata
    assert "enrollment_outage.csv" in metadata["files"].value
    [imports] = [
        m
        for m in result.get_asset_materialization_events()
        if m.asset_key.path[-1] == "file_imports"
    ]
    assert imports.materialization.metadata["unreachable_partners"].value == ["initech"]
