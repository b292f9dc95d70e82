-- One reading per (member, device, metric, timestamp) across providers, canonical units:
-- steps count, kg, mg/dL. Fitbit daily step totals are stamped at the member-local midnight;
-- Apple step samples are intervals, summed per day downstream. `source_key` is the source
-- record's key within its device: the day of a Fitbit daily total, a Fitbit log id, a Garmin
-- summary id, an Apple natural key.
--
-- Incremental: each build reads only rows loaded since the last one (see
-- macros/device_increments.sql); a revision of a reading with the same timestamp replaces it;
-- Apple samples deleted since are removed by the pre-hook. A revision that moves the
-- timestamp (a Fitbit day re-fetched after the connection's time zone changed, an Apple
-- sample re-sent with fractional seconds) is inserted beside the version it revises, which
-- the post-hook then deletes by source key, as a full build would never have seen it; the day
-- that version was on is kept in `replaced_local_date` for fct_daily_steps. The unique key
-- leads with the timestamp and the day index with the date, so a new day's rows append to the
-- right of both indexes instead of landing at random pages across all history; the source key
-- index leads with the key for the same reason (a Fitbit day's key is its date).
{{
    config(
        materialized='incremental',
        unique_key=['measured_at', 'member_id', 'device_id', 'metric'],
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        pre_hook="{{ delete_tombstoned_readings() }}",
        post_hook=["{{ delete_superseded_versions(['member_id', 'device_id', 'metric']) }}", "analyze {{ this }}"],
        indexes=[
            {'columns': ['measured_at', 'member_id', 'device_id', 'metric'], 'unique': True},
            {'columns': ['source_key', 'member_id']},
            {'columns': ['_loaded_at']},
            {'columns': ['_built_at']},
            {'columns': ['local_date', 'metric', 'member_id']},
        ],
    )
}}

with

steps as (

    select
        member_id,
        connection_id as device_id,
        provider,
        'steps' as metric,
        (local_date::timestamp at time zone timezone) as measured_at,
        local_date,
        steps::double precision as value,
        'count' as unit,
        local_date::text as source_key,
        fetched_at,
        _loaded_at
    from {{ ref('stg_fitbit__daily_steps') }}
    where {{ loaded_since_last_build() }}

),

weights as (

    select
        member_id,
        connection_id as device_id,
        provider,
        'weight' as metric,
        measured_at,
        local_date,
        weight_kg as value,
        'kg' as unit,
        reading_id as source_key,
        fetched_at,
        _loaded_at
    from {{ ref('stg_fitbit__weight_logs') }}
    where {{ loaded_since_last_build() }}

),

garmin_steps as (

    select
        member_id,
        connection_id as device_id,
        provider,
        'steps' as metric,
        measured_at,
        local_date,
        steps::double precision as value,
        'count' as unit,
        summary_id as source_key,
        fetched_at,
        _loaded_at
    from {{ ref('stg_garmin__dailies') }}
    where {{ loaded_since_last_build() }}

),

garmin_weights as (

    select
        member_id,
        connection_id as device_id,
        provider,
        'weight' as metric,
        measured_at,
        local_date,
        weight_kg as value,
        'kg' as unit,
        summary_id as source_key,
        fetched_at,
        _loaded_at
    from {{ ref('stg_garmin__body_comps') }}
    where weight_kg is not null and {{ loaded_since_last_build() }}

),

apple as (

    select
        member_id,
        device_id,
        provider,
        metric,
        measured_at,
        local_date,
        value,
        unit,
        natural_key as source_key,
        fetched_at,
        _loaded_at
    from {{ ref('stg_apple_health__samples') }}
    where {{ loaded_since_last_build() }}

),

unioned as (

    select * from steps
    union all
    select * from weights
    union all
    select * from garmin_steps
    union all
    select * from garmin_weights
    union all
    select * from apple

),

latest_revision as (

    select
        *,
        row_number() over (
            partition by member_id, device_id, metric, measured_at
            order by _loaded_at desc, fetched_at desc
        ) as revision_rank
    from unioned

),

readings as (

    select
        md5(concat_ws('|', member_id, device_id, metric, measured_at::text)) as reading_key,
        member_id,
        device_id,
        provider,
        metric,
        measured_at,
        local_date,
        value,
        unit,
        source_key,
        fetched_at,
        _loaded_at,
        now() as _built_at
    from latest_revision
    where revision_rank = 1

)

select
    readings.*,
    {% if is_incremental() -%}
    (
        select built.local_date
        from {{ this }} as built
        where built.source_key = readings.source_key
            and built.member_id = readings.member_id
            and built.device_id = readings.device_id
            and built.metric = readings.metric
            and built.local_date <> readings.local_date
        limit 1
    )
    {%- else -%}
    null::date
    {%- endif %} as replaced_local_date
from readings
where readings.member_id is not null  -- a reading nobody can be found for is kept raw, not here
{% if is_incremental() %}
    -- re-read within the margin but already built from the same load: nothing to rewrite
    and not {{ already_built_from_same_load(
        'readings', ['measured_at', 'member_id', 'device_id', 'metric']
    ) }}
{% endif %}
