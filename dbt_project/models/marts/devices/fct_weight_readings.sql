select
    member_id,
    device_id,
    provider,
    measured_at,
    local_date,
    value as weight_kg,
    (value < 20 or value > 350) as is_implausible
from {{ ref('int_device_readings_unified') }}
where metric = 'weight'
