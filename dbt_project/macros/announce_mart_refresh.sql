{#-
    Post-hook for marts that serving/ reads: bump the mart's version in
    serving.mart_refreshes (the API polls it as a fallback) and notify channel
    mdp_mart_refreshed (the API listens and drops its cache). Hooks run inside the
    model's transaction, so listeners hear of it only once the new table is committed.
    serving.mart_refreshes is created by mdp.schema.ensure_schema, not by dbt.
-#}
{% macro announce_mart_refresh(mart_name=none) -%}
    {%- set mart = mart_name or this.identifier -%}
    insert into serving.mart_refreshes (mart, version, refreshed_at)
    values ('{{ mart }}', 1, now())
    on conflict (mart) do update
        set version = serving.mart_refreshes.version + 1,
            refreshed_at = now();
    notify mdp_mart_refreshed, '{{ mart }}'
{%- endmacro %}
