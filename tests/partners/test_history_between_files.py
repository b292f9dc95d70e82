"""Two files of one partner in one run: the eligibility history keeps a version for each."""

from __future__ import annotations

import datetime as dt

from ingestion.partners.pipeline import import_partner_files
from mdp.orchestrate import run_assets
from sandbox.generator import generate_partner_file

TODAY = dt.date.today()


def _upload(platform, partner_id: str, generated, mtime: int) -> None:
    platform.upload(partner_id, generated.filename, generated.content)
    sftp = platform.sftp(partner_id)
    try:
        sftp.utime(f"/inbound/{generated.filename}", (mtime, mtime))
    finally:
        sftp._owner.close()


def _history(platform, partner_id: str, employee_id: str) -> list[tuple]:
    return platform.query(
        "select h.dbt_valid_to is null, h.eligibility_end_date, h.source_file_id"
        " from snapshots.eligibility_history h"
        " where h.partner_id = %s and h.employee_id = %s order by h.dbt_valid_from",
        (partner_id, employee_id),
    )


def test_a_file_and_its_correction_in_one_run_each_keep_their_version(platform):
    config = platform.configs["globex_health"]
    first = generate_partner_file(config, rows=20, seed=31, today=TODAY)
    member = first.valid_members[0]
    ended = TODAY - dt.timedelta(days=3)
    corrected = generate_partner_file(
        config,
        rows=20,
        seed=31,
        today=TODAY,
        overrides={member["employee_id"]: {"eligibility_end_date": ended}},
        sequence=2,
    )
    now = int(dt.datetime.now(dt.UTC).timestamp())
    _upload(platform, "globex_health", first, now - 120)
    _upload(platform, "globex_health", corrected, now - 60)

    result = run_assets(platform.settings)
    assert result.success
    [members] = [
        event
        for event in result.get_asset_materialization_events()
        if event.asset_key.path[-1] == "enrollment_members"
    ]
    recorded = members.materialization.metadata["history_recorded_between_files"].value
    assert recorded == ["globex_health"]  # once: before the second file

    assert platform.query(
        "select status from raw_partners.file_imports where partner_id = 'globex_health'"
        " order by received_at"
    ) == [("loaded",), ("loaded",)]
    history = _history(platform, "globex_health", member["employee_id"])
    # before: one version, the correction's; the first file's coverage was never recorded
    assert [(current, end) for current, end, _ in history] == [
        (False, member.get("eligibility_end_date")),
        (True, ended),
    ]
    assert history[0][2] != history[1][2]  # each version names the file it came from
    # members the correction left as they were have one version
    unchanged = first.valid_members[1]["employee_id"]
    assert [current for current, _, _ in _history(platform, "globex_health", unchanged)] == [True]


def test_files_after_one_the_history_could_not_record_wait_in_the_inbox(platform):
    config = platform.configs["globex_health"]
    first = generate_partner_file(config, rows=5, seed=41, today=TODAY, id_offset=500)
    second = generate_partner_file(config, rows=5, seed=42, today=TODAY, id_offset=600, sequence=3)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    _upload(platform, "globex_health", first, now - 120)
    _upload(platform, "globex_health", second, now - 60)
    asked: list[str] = []

    def history_down(partner_id: str) -> bool:
        asked.append(partner_id)
        return False

    records = import_partner_files(config, platform.settings, platform.params, None, history_down)

    assert [(r.filename, r.status) for r in records] == [(first.filename, "loaded")]
    assert asked == ["globex_health"]
    inbox = platform.sftp_root / "globex_health" / "inbound"
    assert [p.name for p in inbox.iterdir()] == [second.filename]

    # the next run records the first file's history before it takes the second one
    records = import_partner_files(config, platform.settings, platform.params, None, history_down)
    assert records == [] and asked == ["globex_health"] * 2

    def history_up(partner_id: str) -> bool:
        asked.append(partner_id)
        return True

    records = import_partner_files(config, platform.settings, platform.params, None, history_up)
    assert [(r.filename, r.status) for r in records] == [(second.filename, "loaded")]
    assert asked == ["globex_health"] * 3


def test_a_file_whose_run_stopped_before_dbt_keeps_its_version_when_the_next_arrives(platform):
    config = platform.configs["globex_health"]
    first = generate_partner_file(config, rows=5, seed=51, today=TODAY, id_offset=700)
    member = first.valid_members[0]
    now = int(dt.datetime.now(dt.UTC).timestamp())
    _upload(platform, "globex_health", first, now - 300)
    assert run_assets(platform.settings).success

    def corrected(days: int, sequence: int):
        return generate_partner_file(
            config,
            rows=5,
            seed=51,
            today=TODAY,
            id_offset=700,
            overrides={member["employee_id"]: {"eligibility_end_date": TODAY + dt.timedelta(days)}},
            sequence=sequence,
        )

    # a run imports a correction, then stops before its dbt build
    stopped = corrected(400, 4)
    _upload(platform, "globex_health", stopped, now - 200)
    [record] = import_partner_files(config, platform.settings, platform.params)
    assert record.status == "loaded"
    # the partner's next correction arrives, and a run takes it
    _upload(platform, "globex_health", corrected(200, 5), now - 100)
    assert run_assets(platform.settings).success

    ends = [end for _, end, _ in _history(platform, "globex_health", member["employee_id"])]
    assert ends == [
        member.get("eligibility_end_date"),
        TODAY + dt.timedelta(400),  # before: lost, the history never saw it
        TODAY + dt.timedelta(200),
    ]
