-- Incremental: readings loaded since the last build; Apple samples deleted since are removed.
{{
    config(
        materialized='incremental',
        unique_key='reading_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        pre_hook="{{ delete_tombstoned_readings() }}",
        post_hook=["{{ index_apple_source_keys() }}", "analyze {{ this }}"],
        indexes=[
            {'columns': ['reading_key'], 'unique': True},
            {'columns': ['member_id', 'measured_at']},
            {'columns': ['_loaded_at']},
            {'columns': ['_built_at']},
        ],
    )
}}

select
    reading_key,
    member_id,
    device_id,
    provider,
    measured_at,
    local_date,
    value as weight_kg,
    (value < 20 or value > 350) as is_implausible,
    source_key,
    _loaded_at,
    now() as _built_at
from {{ ref('int_device_readings_unified') }} as readings
where metric = 'weight' and {{ loaded_since_last_build() }}
{% if is_incremental() %}
    and not exists (
        select 1 from {{ this }} as built
        where built.reading_key = readings.reading_key and built._loaded_at = readings._loaded_at
    )
{% endif %}
