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
        calendar_date as local_date,
        start_time as measured_at,
        steps::bigint as steps,
        received_at as fetched_at,
        {{ loaded_at() }}
    from source

)

select * from renamed
