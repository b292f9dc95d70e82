-- One reading per (member, device, metric, timestamp) across providers, canonical units:
-- steps count, kg, mg/dL. Fitbit daily step totals are stamped at the member-local midnight;
-- Apple step samples are intervals, summed per day downstream.
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
        fetched_at
    from {{ ref('stg_fitbit__daily_steps') }}

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
        fetched_at
    from {{ ref('stg_fitbit__weight_logs') }}

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
        fetched_at
    from {{ ref('stg_garmin__dailies') }}

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
        fetched_at
    from {{ ref('stg_garmin__body_comps') }}
    where weight_kg is not null

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
        fetched_at
    from {{ ref('stg_apple_health__samples') }}

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
            order by fetched_at desc
        ) as revision_rank
    from unioned

)

select
    member_id,
    device_id,
    provider,
    metric,
    measured_at,
    local_date,
    value,
    unit,
    fetched_at
from latest_revision
where revision_rank = 1
