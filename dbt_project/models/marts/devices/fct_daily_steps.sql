-- Steps per member per local day, counted once when several devices overlap: the member's
-- primary device for steps wins; without one, the device that counted the most that day
-- (a device not worn all day undercounts, it rarely overcounts).
--
-- Incremental: only member-days with readings loaded (or Apple samples deleted) since the last
-- build are recomputed, from all of that day's readings; the pre-hook first drops member-days
-- that lost a reading, so a day whose every reading was deleted disappears. A revision that
-- moved a reading to another day (`replaced_local_date`) changes both days, and the day it left
-- is dropped first for the same reason. The post-hook refreshes statistics: without them the
-- next build's anti-join can scan this table per row.
{%- set delete_member_days_left_by_revisions -%}{% raw %}
    {%- if is_incremental() -%}
        delete from {{ this }} as t
        using {{ ref('int_device_readings_unified') }} as moved
        where moved.metric = 'steps'
            and moved.replaced_local_date is not null
            and moved.{{ loaded_since_last_build() }}
            and t.member_id = moved.member_id
            and t.local_date = moved.replaced_local_date
    {%- else -%}
        select 1
    {%- endif -%}
{% endraw %}{%- endset %}
{{
    config(
        materialized='incremental',
        unique_key=['member_id', 'local_date'],
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        pre_hook=[
            "{{ delete_member_days_with_tombstones('steps') }}",
            delete_member_days_left_by_revisions,
        ],
        post_hook="analyze {{ this }}",
        indexes=[
            {'columns': ['member_id', 'local_date'], 'unique': True},
            {'columns': ['local_date']},
            {'columns': ['_loaded_at']},
            {'columns': ['_built_at']},
        ],
    )
}}

with

changed_days as (

    select distinct member_id, local_date
    from {{ ref('int_device_readings_unified') }}
    where metric = 'steps' and member_id is not null and {{ loaded_since_last_build() }}
    {% if is_incremental() %}
    union
    select member_id, replaced_local_date
    from {{ ref('int_device_readings_unified') }}
    where metric = 'steps' and replaced_local_date is not null and {{ loaded_since_last_build() }}
    union
    select member_id, local_date
    from {{ source('raw_apple_health', 'sample_deletions') }}
    where record_type = 'steps' and member_id is not null and {{ tombstones_since_last_build() }}
    {% endif %}

),

readings as (

    -- one total per device and day (Apple writes many interval samples a day)
    select
        unified.member_id,
        unified.device_id,
        unified.provider,
        unified.local_date,
        sum(unified.value) as value,
        max(unified._loaded_at) as _loaded_at
    {% if is_incremental() -%}
    -- lateral: each changed day is an index lookup, however much history the table holds
    from changed_days
    cross join lateral (
        select *
        from {{ ref('int_device_readings_unified') }} as day_readings
        where day_readings.member_id = changed_days.member_id
            and day_readings.metric = 'steps'
            and day_readings.local_date = changed_days.local_date
        offset 0  -- a fence: kept as a per-day lookup, not flattened into a scan of history
    ) as unified
    {%- else -%}
    from {{ ref('int_device_readings_unified') }} as unified
    where unified.metric = 'steps' and unified.member_id is not null
    {%- endif %}
    group by unified.member_id, unified.device_id, unified.provider, unified.local_date

),

connections as (

    select connection_id, primary_metrics from {{ ref('stg_devices__connections') }}

),

ranked as (

    select
        readings.member_id,
        readings.local_date,
        readings.device_id,
        readings.provider,
        readings.value,
        max(readings._loaded_at) over (
            partition by readings.member_id, readings.local_date
        ) as _loaded_at,
        count(*) over (partition by readings.member_id, readings.local_date) as devices_reporting,
        row_number() over (
            partition by readings.member_id, readings.local_date
            order by
                coalesce('steps' = any(connections.primary_metrics), false) desc,
                readings.value desc,
                readings.device_id
        ) as device_rank
    from readings
    left join connections on connections.connection_id = readings.device_id

)

select
    member_id,
    local_date,
    value::bigint as steps,
    device_id as counted_device_id,
    provider,
    devices_reporting,
    (value < 0 or value > 100000) as is_implausible,
    _loaded_at,
    now() as _built_at
from ranked
where device_rank = 1
{% if is_incremental() %}
    -- a re-read day whose readings are the same loads as when it was built: unchanged
    and not {{ already_built_from_same_load('ranked', ['member_id', 'local_date']) }}
{% endif %}
