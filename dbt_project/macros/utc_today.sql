{#-
    Today's date in UTC: the day the platform judges coverage by (the member_marts_daily
    schedule runs at 00:05 UTC). `current_date` is the session's time zone's day, so the same
    rows gave another status, or another end date, on a server not set to UTC.
-#}
{% macro utc_today() -%}
    (now() at time zone 'UTC')::date
{%- endmacro %}

{#- The UTC day of a timestamptz, whatever the session's time zone. -#}
{% macro utc_date(column) -%}
    ({{ column }} at time zone 'UTC')::date
{%- endmacro %}
