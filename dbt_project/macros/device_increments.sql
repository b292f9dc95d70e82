{#- Incremental device models: what changed since the last build, and what was deleted.

Raw tables are merged by dlt, so a new or revised row carries a newer `_dlt_load_id` (the
load's start, as Unix seconds). A model re-reads everything loaded since its newest
`_loaded_at`, less a margin: a load that started earlier but committed later is still seen.
Re-reading is harmless (unique keys, delete+insert).
-#}

{% macro loaded_at() -%}
    to_timestamp(_dlt_load_id::double precision) as _loaded_at
{%- endmacro %}

{% macro reload_margin() -%}
    interval '1 hour'
{%- endmacro %}

{% macro loaded_since_last_build(column='_loaded_at') -%}
    {%- if is_incremental() -%}
        {{ column }} > (
            select coalesce(max(_loaded_at), '-infinity'::timestamptz) - {{ reload_margin() }}
            from {{ this }}
        )
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}

{% macro tombstones_since_last_build() -%}
    {#- Apple samples deleted (or replaced by a newer sync version) since the last build -#}
    {%- if is_incremental() -%}
        deleted_at > (
            select coalesce(max(_built_at), '-infinity'::timestamptz) - {{ reload_margin() }}
            from {{ this }}
        )
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}

{% macro delete_tombstoned_readings() -%}
    {#- pre-hook: drop readings whose Apple sample was deleted after it was loaded -#}
    {%- if is_incremental() -%}
        delete from {{ this }} as t
        using {{ source('raw_apple_health', 'sample_deletions') }} as d
        where t.provider = 'apple_health'
            and t.member_id = d.member_id
            and t.source_key = d.natural_key
            and d.deleted_at > t._loaded_at
            and d.{{ tombstones_since_last_build() }}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{% macro delete_member_days_with_tombstones(metric) -%}
    {#- pre-hook: member-days that lost an Apple sample are rebuilt from what remains -#}
    {%- if is_incremental() -%}
        delete from {{ this }} as t
        using {{ source('raw_apple_health', 'sample_deletions') }} as d
        where d.record_type = '{{ metric }}'
            and t.member_id = d.member_id
            and t.local_date = d.local_date
            and d.{{ tombstones_since_last_build() }}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}
