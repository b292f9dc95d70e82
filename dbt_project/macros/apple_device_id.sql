{% macro apple_device_id() -%}
    {#- a device is the app or watch that wrote the sample: an iPhone and a Watch stay apart -#}
    'apple_' || md5(
        coalesce(member_id, '') || '|' || source_name || '|'
        || coalesce(device_model, '') || '|' || coalesce(device_hardware, '')
    )
{%- endmacro %}
