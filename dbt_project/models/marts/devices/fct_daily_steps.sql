-- Steps per member per local day, counted once when several devices overlap: the member's
-- primary device for steps wins; without one, the device that counted the most that day
-- (a device not worn all day undercounts, it rarely overcounts).
with

readings as (

    -- one total per device and day (Apple writes many interval samples a day)
    select member_id, device_id, provider, local_date, sum(value) as value
    from {{ ref('int_device_readings_unified') }}
    where metric = 'steps'
    group by member_id, device_id, provider, local_date

),

connections as (

    select connection_id, primary_metrics from {{ ref('stg_devices__connections') }}

),

ranked as (

    select
        readings.member_id,
        readings.local_date,
        readings.device_id,
        readings.provider,
        readings.value,
        count(*) over (partition by readings.member_id, readings.local_date) as devices_reporting,
        row_number() over (
            partition by readings.member_id, readings.local_date
            order by
                coalesce('steps' = any(connections.primary_metrics), false) desc,
                readings.value desc,
                readings.device_id
        ) as device_rank
    from readings
    left join connections on connections.connection_id = readings.device_id

)

select
    member_id,
    local_date,
    value::bigint as steps,
    device_id as counted_device_id,
    provider,
    devices_reporting,
    (value < 0 or value > 100000) as is_implausible
from ranked
where device_rank = 1
