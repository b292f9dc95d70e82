{#- Trimmed text with empty strings turned into nulls: partners send both for "no value". -#}
{% macro clean_text(column) -%}
    nullif(btrim({{ column }}), '')
{%- endmacro %}
