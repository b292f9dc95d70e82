with

source as (

    select * from {{ source('raw_fitbit', 'activity_logs') }}

),

renamed as (

    select
        connection_id,
        member_id,
        'fitbit' as provider,
        log_id::text as activity_id,
        lower(activity_name) as activity_type,
        activity_name,
        start_time as started_at,
        local_date,
        duration_ms / 60000.0 as duration_minutes,
        steps::bigint as steps,
        distance_km,
        calories as active_kcal,
        fetched_at,
        {{ loaded_at() }}
    from source

)

select * from renamed
