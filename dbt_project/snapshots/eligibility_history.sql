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
        post_hook="{{ announce_mart_refresh('eligibility_history', notify=false, as_of=members_as_of()) }}",
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
    -- the file that brought the change: a full file that left the member out, else the row's
    coalesce(left_out_by_file_id, source_file_id) as source_file_id,
    case when left_out_by_file_id is not null then left_out_since else file_received_at end
        as file_received_at

from {{ ref('int_members_resolved') }}

{% endsnapshot %}
