"""Tombstones for Apple samples removed from the raw table.

The member app deletes samples (by uuid) and replaces them (a higher sync version). The raw
table drops those rows; incremental dbt models never see a row that is gone, so each delete
also records what it removed, and the device models remove the same readings
(dbt_project/macros/apply_device_deletions.sql).
"""

from __future__ import annotations

from ingestion.devices.apple_health.load import DATASET

DELETIONS_TABLE = f"{DATASET}.sample_deletions"

DELETIONS_DDL = f"""
create table if not exists {DELETIONS_TABLE} (
    member_id    text,
    natural_key  text not null,
    record_type  text,
    local_date   date,
    deleted_at   timestamptz not null default clock_timestamp()
);
create index if not exists sample_deletions_deleted_at on {DELETIONS_TABLE} (deleted_at);
"""

# appended to a `with gone as (delete ... returning member_id, natural_key, record_type,
# local_date)` so the delete and its tombstones commit together
RECORD_TOMBSTONES_SQL = f"""
insert into {DELETIONS_TABLE} (member_id, natural_key, record_type, local_date)
select member_id, natural_key, record_type, local_date from gone
"""
