select
    connection_id,
    member_id,
    provider,
    status,
    primary_metrics,
    timezone,
    connected_at,
    disconnected_at,
    last_success_at,
    last_notified_at,
    extract(epoch from now() - last_success_at) / 60.0 as minutes_since_last_success,
    (status = 'active' and (last_success_at is null or last_success_at < now() - interval '1 hour'))
        as is_stale
from {{ ref('stg_devices__connections') }}
