{#-
    Fails for every combination of the given columns that occurs more than once
    (dbt ships no multi-column unique test and this project takes no packages).
-#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

{%- set columns_csv = combination_of_columns | join(', ') %}

select
    {{ columns_csv }},
    count(*) as occurrences
from {{ model }}
group by {{ columns_csv }}
having count(*) > 1

{% endtest %}
