{#-
    Custom schemas are used verbatim (staging, intermediate, marts, snapshots) so that
    serving/ and analysts read stable names such as marts.mart_eligibility in every
    environment; models without one land in the target schema.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
