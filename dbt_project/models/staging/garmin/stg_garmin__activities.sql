with

source as (

    select * from {{ source('raw_garmin', 'activities') }}

),

renamed as (

    select
        connection_id,
        member_id,
        'garmin' as provider,
        summary_id as activity_id,
        lower(activity_type) as activity_type,
        activity_name,
        start_time as started_at,
        -- the UTC time plus the member's offset: a cast in the session's time zone put a
        -- reading on another day on a server not set to UTC
        ((start_time at time zone 'UTC') + make_interval(secs => coalesce(utc_offset_seconds, 0)))::date
            as local_date,
        duration_seconds / 60.0 as duration_minutes,
        steps::bigint as steps,
        distance_m / 1000.0 as distance_km,
        active_kcal,
        received_at as fetched_at,
        {{ loaded_at() }}
    from source

)

select * from renamed
