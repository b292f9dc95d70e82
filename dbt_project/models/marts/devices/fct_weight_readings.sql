-- Incremental: readings loaded since the last build; Apple samples deleted since are removed,
-- and so is a version a revision with a new timestamp (a new reading_key) replaced.
{%- set delete_superseded_versions -%}{% raw %}
    {%- if is_incremental() -%}
        delete from {{ this }} as superseded
        using {{ this }} as revised
        -- this build's rows: the hook runs in the build's transaction, whose now() they carry
        where revised._built_at = now()
            and superseded.source_key = revised.source_key
            and superseded.member_id = revised.member_id
            and superseded.device_id = revised.device_id
            and superseded._built_at < revised._built_at
    {%- else -%}
        select 1
    {%- endif -%}
{% endraw %}{%- endset %}
{{
    config(
        materialized='incremental',
        unique_key='reading_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        pre_hook="{{ delete_tombstoned_readings() }}",
        post_hook=[delete_superseded_versions, "analyze {{ this }}"],
        indexes=[
            {'columns': ['reading_key'], 'unique': True},
            {'columns': ['source_key', 'member_id']},
            {'columns': ['member_id', 'measured_at']},
            {'columns': ['_loaded_at']},
            {'columns': ['_built_at']},
        ],
    )
}}

{{ reading_fact('weight', 'weight_kg', 20, 350) }}
