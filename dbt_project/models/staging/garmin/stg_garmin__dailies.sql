with

source as (

    select * from {{ source('raw_garmin', 'dailies') }}

),

renamed as (

    select
        connection_id,
        member_id,
        'garmin' as provider,
        summary_id,
        -- calendarDate is optional (Garmin's own examples omit it): then the member's day
        -- is the UTC date of start + offset, as for body comps
        coalesce(
            calendar_date,
            (
                (start_time at time zone 'UTC')
                + make_interval(secs => coalesce(utc_offset_seconds, 0))
            )::date
        ) as local_date,
        start_time as measured_at,
        steps::bigint as steps,
        received_at as fetched_at,
        {{ loaded_at() }}
    from source

)

select * from renamed
