-- Workouts from every provider, one row per (member, device, activity): Fitbit activity logs,
-- Garmin activity summaries and Apple Health workouts. Times UTC, local date the member's.
-- Overlapping workouts recorded by two devices are both kept (each names its device); reports
-- that count workouts pick by `device_id`.
--
-- Incremental: activities loaded since the last build (a revised one replaces its row);
-- Apple workouts deleted since are removed.
{{
    config(
        materialized='incremental',
        unique_key='activity_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        pre_hook="{{ delete_tombstoned_readings() }}",
        post_hook=["{{ index_apple_source_keys() }}", "analyze {{ this }}"],
        indexes=[
            {'columns': ['activity_key'], 'unique': True},
            {'columns': ['member_id', 'started_at']},
            {'columns': ['_loaded_at']},
            {'columns': ['_built_at']},
        ],
    )
}}

with

fitbit as (

    select
        member_id, connection_id as device_id, provider, activity_id, activity_type,
        activity_name, started_at, local_date, duration_minutes, steps, distance_km, active_kcal,
        null::text as source_key, _loaded_at
    from {{ ref('stg_fitbit__activity_logs') }}
    where {{ loaded_since_last_build() }}

),

garmin as (

    select
        member_id, connection_id as device_id, provider, activity_id, activity_type,
        activity_name, started_at, local_date, duration_minutes, steps, distance_km, active_kcal,
        activity_id as source_key, _loaded_at
    from {{ ref('stg_garmin__activities') }}
    where {{ loaded_since_last_build() }}

),

apple as (

    select
        member_id, device_id, provider, activity_id, activity_type,
        activity_name, started_at, local_date, duration_minutes, steps, distance_km, active_kcal,
        source_key, _loaded_at
    from {{ ref('stg_apple_health__workouts') }}
    where {{ loaded_since_last_build() }}

),

unioned as (

    select * from fitbit
    union all
    select * from garmin
    union all
    select * from apple

),

activities as (

    select
        md5(concat_ws('|', provider, device_id, activity_id)) as activity_key,
        member_id,
        device_id,
        provider,
        activity_id,
        activity_type,
        activity_name,
        started_at,
        local_date,
        duration_minutes,
        steps,
        distance_km,
        active_kcal,
        (duration_minutes < 0 or duration_minutes > 24 * 60 or steps < 0 or distance_km > 500)
            as is_implausible,
        source_key,
        _loaded_at,
        now() as _built_at
    from unioned

)

select * from activities
{% if is_incremental() %}
where not {{ already_built_from_same_load('activities', ['activity_key']) }}
{% endif %}
