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
