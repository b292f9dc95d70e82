with

source as (

    select * from {{ source('raw_fitbit', 'daily_steps') }}

),

renamed as (

    select
        connection_id,
        member_id,
        'fitbit' as provider,
        activity_date as local_date,
        steps::bigint as steps,
        coalesce(timezone, 'UTC') as timezone,
        fetched_at,
        {{ loaded_at() }}
    from source

)

select * from renamed
