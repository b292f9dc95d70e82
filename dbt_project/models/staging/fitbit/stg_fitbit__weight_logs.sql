with

source as (

    select * from {{ source('raw_fitbit', 'weight_logs') }}

),

renamed as (

    select
        connection_id,
        member_id,
        'fitbit' as provider,
        log_id::text as reading_id,
        -- Fitbit logs are member-local with no offset: the connection's time zone places them
        ((log_date + coalesce(log_time, '00:00:00')::time) at time zone coalesce(timezone, 'UTC'))
            as measured_at,
        log_date as local_date,
        weight_kg::double precision as weight_kg,
        source as source_name,
        fetched_at,
        {{ loaded_at() }}
    from source

)

select * from renamed
