"""The push-inbox sensor asks for a run only when a file is complete."""

from __future__ import annotations

import dagster as dg

from orchestration.defs.partners.sensors import push_inbox_sensor
from orchestration.resources import PlatformResource
from sandbox.generator import generate_partner_file


def _tick(cursor: str | None):
    context = dg.build_sensor_context(cursor=cursor, resources={"platform": PlatformResource()})
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
