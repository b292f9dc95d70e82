with

source as (

    select * from {{ source('raw_apple_health', 'samples') }}

),

renamed as (

    select
        member_id,
        -- a device is the app/watch that wrote the sample: iPhone and Watch stay apart
        {{ apple_device_id() }} as device_id,
        'apple_health' as provider,
        record_type as metric,
        start_at as measured_at,
        local_date,
        value,
        unit,
        source_name,
        device_model,
        natural_key,
        creation_at as fetched_at,
        {{ loaded_at() }}
    from source
    where record_type in ('steps', 'weight', 'blood_glucose')

)

select * from renamed
