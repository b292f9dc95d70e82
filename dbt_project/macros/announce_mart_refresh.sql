{#-
    Post-hook for marts that serving/ reads: bump the mart's version in
    serving.mart_refreshes (the API polls it as a fallback) and notify channel
    mdp_mart_refreshed (the API listens and drops its cache). Hooks run inside the
    model's transaction, so listeners hear of it only once the new table is committed.

    refreshed_at says as of when the data is: `as_of` (default now(), when this model's
    transaction began, before it read anything). A model built from int_members_resolved
    takes that table's own stamp (`members_as_of()`): its rows are as of that table's build,
    and a file committed in between is not in them. The import (imports.loaded_since_history)
    and the marts-behind sensor compare loaded files with these stamps.
    With notify=false only the row is bumped. serving.mart_refreshes is created by
    mdp.schema.ensure_schema, not by dbt.
-#}
{% macro announce_mart_refresh(mart_name=none, notify=true, as_of=none) -%}
    {%- set mart = mart_name or this.identifier -%}
    {%- set stamp = as_of or 'now()' -%}
    insert into serving.mart_refreshes (mart, version, refreshed_at)
    values ('{{ mart }}', 1, {{ stamp }})
    on conflict (mart) do update
        set version = serving.mart_refreshes.version + 1,
            refreshed_at = excluded.refreshed_at
    {%- if notify %};
    notify mdp_mart_refreshed, '{{ mart }}'
    {%- endif %}
{%- endmacro %}

{#- When int_members_resolved was last built (-infinity before its first build: every loaded
    file then counts as not yet in the data, which errs toward one build too many). -#}
{% macro members_as_of() -%}
    coalesce((select refreshed_at from serving.mart_refreshes
              where mart = 'int_members_resolved'), '-infinity'::timestamptz)
{%- endmacro %}
