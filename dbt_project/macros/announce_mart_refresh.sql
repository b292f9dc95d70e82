{#-
    Post-hook for marts that serving/ reads: bump the mart's version in
    serving.mart_refreshes (the API polls it as a fallback) and notify channel
    mdp_mart_refreshed (the API listens and drops its cache). Hooks run inside the
    model's transaction, so listeners hear of it only once the new table is committed.
    With notify=false only the row is bumped: the history snapshot's, whose refreshed_at
    (now(): when its transaction began, before it read the members) tells the import
    whether a loaded file was recorded (ingestion.partners.imports.loaded_since_history).
    serving.mart_refreshes is created by mdp.schema.ensure_schema, not by dbt.
-#}
{% macro announce_mart_refresh(mart_name=none, notify=true) -%}
    {%- set mart = mart_name or this.identifier -%}
    insert into serving.mart_refreshes (mart, version, refreshed_at)
    values ('{{ mart }}', 1, now())
    on conflict (mart) do update
        set version = serving.mart_refreshes.version + 1,
            refreshed_at = now()
    {%- if notify %};
    notify mdp_mart_refreshed, '{{ mart }}'
    {%- endif %}
{%- endmacro %}
