{#- Incremental device models: what changed since the last build, and what was deleted.

Raw tables are merged by dlt, so a new or revised row carries a newer `_dlt_load_id` (the
load's start, as Unix seconds). A model re-reads every load that started after its last build
less a margin (or after the newest load it holds, if that is older): a load that started
before the last build and committed after it is still seen, as long as loads take less than
the margin. Re-reading is harmless (unique keys, delete+insert), and a re-read row already
built from the same load is skipped (`already_built_from_same_load`), so the margin costs
lookups, not rewrites.
-#}

{% macro loaded_at() -%}
    to_timestamp(_dlt_load_id::double precision) as _loaded_at
{%- endmacro %}

{% macro reload_margin() -%}
    interval '1 hour'
{%- endmacro %}

{% macro last_build_marks() -%}
    {#- (loads re-read from, tombstones re-read from) for {{ this }}, read once per build and
        written into the SQL as literals, so the planner sees how few rows qualify -#}
    {%- if execute and is_incremental() -%}
        {%- set sql -%}
            select
                coalesce(
                    least(max(_loaded_at), max(_built_at) - {{ reload_margin() }}),
                    '-infinity'::timestamptz
                )::text,
                coalesce(max(_built_at) - {{ reload_margin() }}, '-infinity'::timestamptz)::text
            from {{ this }}
        {%- endset -%}
        {%- set row = run_query(sql).rows[0] -%}
        {{ return([row[0], row[1]]) }}
    {%- else -%}
        {{ return(['-infinity', '-infinity']) }}
    {%- endif -%}
{%- endmacro %}

{% macro loaded_since_last_build(column='_loaded_at') -%}
    {%- if is_incremental() -%}
        {{ column }} > '{{ last_build_marks()[0] }}'::timestamptz
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}

{% macro tombstones_since_last_build() -%}
    {#- Apple samples deleted (or replaced by a newer sync version) since the last build -#}
    {%- if is_incremental() -%}
        deleted_at > '{{ last_build_marks()[1] }}'::timestamptz
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

{% macro index_apple_source_keys() -%}
    {#- post-hook: the tombstone pre-hook finds Apple readings by sample key (partial: other
        providers' rows never need it). Unnamed and checked by definition, because a full
        refresh renames the old table, whose index would otherwise keep the name. -#}
    do $$
    begin
        if not exists (
            select 1 from pg_indexes
            where schemaname = '{{ this.schema }}' and tablename = '{{ this.identifier }}'
                and indexdef like '%(member_id, source_key)%'
        ) then
            execute 'create index on {{ this }} (member_id, source_key)'
                || ' where provider = ''apple_health''';
        end if;
    end
    $$
{%- endmacro %}

{% macro already_built_from_same_load(alias, key_columns) -%}
    {#- true for a re-read row this model already built from the same load: skipped, so the
        re-read margin costs index lookups, not rewrites -#}
    exists (
        select 1 from {{ this }} as built
        where
        {%- for column in key_columns %} built.{{ column }} = {{ alias }}.{{ column }} and
        {%- endfor %} built._loaded_at = {{ alias }}._loaded_at
    )
{%- endmacro %}


{% macro delete_superseded_versions(key_columns) -%}
    {#- Post-hook: a revision that moves a reading's timestamp or day gets a new unique key
        and is inserted beside the version it revises; delete that version by its source key
        (plus `key_columns`), as a full build would never have seen it. This build's rows
        are the ones carrying this transaction's now(). -#}
    {%- if is_incremental() -%}
        delete from {{ this }} as superseded
        using {{ this }} as revised
        where revised._built_at = now()
            and superseded.source_key = revised.source_key
        {%- for column in key_columns %}
            and superseded.{{ column }} = revised.{{ column }}
        {%- endfor %}
            and superseded._built_at < revised._built_at
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}
