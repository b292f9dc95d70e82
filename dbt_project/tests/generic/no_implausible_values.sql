{#- Warns (never fails the build, never drops rows) when a mart holds flagged values: a person
    should look at the device or member behind them. -#}
{% test no_implausible_values(model, column_name) %}
    select * from {{ model }} where {{ column_name }}
{% endtest %}
