with

source as (

    select * from {{ source('devices', 'connections') }}

),

renamed as (

    select
        connection_id,
        member_id,
        provider,
        status,
        primary_metrics,
        timezone,
        last_success_at,
        last_notified_at,
        created_at as connected_at,
        disconnected_at
    from source

)

select * from renamed
