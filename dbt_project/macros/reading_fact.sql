{#- One metric's readings from the unified model, incremental, with the plausible range a
    reading outside of is flagged (kept, never dropped). fct_weight_readings and
    fct_glucose_readings are this macro with their metric, unit column and range. -#}
{% macro reading_fact(metric, value_column, plausible_low, plausible_high) %}
select
    reading_key,
    member_id,
    device_id,
    provider,
    measured_at,
    local_date,
    value as {{ value_column }},
    (value < {{ plausible_low }} or value > {{ plausible_high }}) as is_implausible,
    source_key,
    _loaded_at,
    now() as _built_at
from {{ ref('int_device_readings_unified') }} as readings
where metric = '{{ metric }}' and {{ loaded_since_last_build() }}
{% if is_incremental() %}
    and not {{ already_built_from_same_load('readings', ['reading_key']) }}
{% endif %}
{% endmacro %}
