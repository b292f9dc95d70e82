{#-
    SCD2 history of each member's eligibility. A corrected file that changes a checked
    column closes the current row (dbt_valid_to set) and opens a new one. Only
    eligibility fields are kept: names and contact details stay out of history.
    coverage_status derived from dates also changes when a date passes, so the history
    records the day a member's coverage started or ended (as of the next build).
-#}
{% snapshot eligibility_history %}

{{
    config(
        unique_key='member_id',
        strategy='check',
        check_cols=[
            'program',
            'eligibility_start_date',
            'eligibility_end_date',
            'coverage_status',
            'date_of_birth',
        ],
        post_hook="{{ announce_mart_refresh('eligibility_history', notify=false) }}",
    )
}}

select
    member_id,
    partner_id,
    employee_id,
    date_of_birth,
    program,
    eligibility_start_date,
    eligibility_end_date,
    coverage_status,
    source_file_id,
    file_received_at

from {{ ref('int_members_resolved') }}

{% endsnapshot %}
