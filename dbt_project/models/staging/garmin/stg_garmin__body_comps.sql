with

source as (

    select * from {{ source('raw_garmin', 'body_comps') }}

),

renamed as (

    select
        connection_id,
        member_id,
        'garmin' as provider,
        summary_id,
        measured_at,
        -- Garmin gives UTC seconds plus the member's offset: the local date is theirs
        -- the UTC time plus the member's offset: a cast in the session's time zone put a
        -- reading on another day on a server not set to UTC
        ((measured_at at time zone 'UTC') + make_interval(secs => coalesce(utc_offset_seconds, 0)))::date
            as local_date,
        weight_kg,
        received_at as fetched_at,
        {{ loaded_at() }}
    from source

)

select * from renamed
