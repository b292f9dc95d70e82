with

source as (

    select * from {{ source('raw_apple_health', 'samples') }}

),

renamed as (

    select
        member_id,
        {{ apple_device_id() }} as device_id,
        'apple_health' as provider,
        natural_key as activity_id,
        -- HKWorkoutActivityTypeRunning -> running
        lower(regexp_replace(coalesce(workout_activity_type, ''), '^HKWorkoutActivityType', ''))
            as activity_type,
        workout_activity_type as activity_name,
        start_at as started_at,
        local_date,
        value as duration_minutes,
        null::bigint as steps,
        total_distance_km as distance_km,
        total_energy_kcal as active_kcal,
        natural_key as source_key,
        creation_at as fetched_at,
        {{ loaded_at() }}
    from source
    where record_type = 'workout'

)

select * from renamed
