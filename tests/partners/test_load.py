"""The COPY merge into raw_partners.enrollment_members, against a real Postgres."""

from __future__ import annotations

from ingestion.partners.pipeline import import_partner_files
from sandbox.generator import generate_partner_file


def _import(platform):
    return import_partner_files(platform.configs["acme_corp"], platform.settings, platform.params)


def test_a_newer_file_replaces_its_members_rows_and_records_a_dlt_load(platform):
    config = platform.configs["acme_corp"]
    first = generate_partner_file(config, rows=40, seed=41, id_offset=1_500_000)
    ids = [m["employee_id"] for m in first.valid_members]
    changed = {ids[0]: {"program": "renamed_program"}, ids[1]: {"last_name": "Newname"}}
    second = generate_partner_file(config, rows=40, seed=41, id_offset=1_500_000, overrides=changed)
    platform.upload("acme_corp", "enrollment_load_1.csv", first.content)
    [one] = _import(platform)
    platform.upload("acme_corp", "enrollment_load_2.csv", second.content)
    [two] = _import(platform)

    rows = platform.query(
        "select employee_id, program, last_name, source_file_id, _dlt_load_id"
        " from raw_partners.enrollment_members where partner_id = 'acme_corp'"
        " and employee_id = any(%s) order by employee_id",
        (ids,),
    )
    assert len(rows) == 40
    by_id = {r[0]: r for r in rows}
    assert by_id[ids[0]][1] == "renamed_program"
    assert by_id[ids[1]][2] == "Newname"
    assert {r[3] for r in rows} == {two.file_id}
    [load_id] = {r[4] for r in rows}
    assert platform.query(
        "select schema_name, status from raw_partners._dlt_loads where load_id = %s", (load_id,)
    ) == [("partner_acme_corp", 0)]
    assert (one.rows_loaded, two.rows_loaded) == (40, 40)
