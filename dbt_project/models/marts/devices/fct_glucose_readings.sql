select
    member_id,
    device_id,
    provider,
    measured_at,
    local_date,
    value as glucose_mg_dl,
    (value < 10 or value > 1000) as is_implausible
from {{ ref('int_device_readings_unified') }}
where metric = 'blood_glucose'
