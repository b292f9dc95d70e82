{{
    config(
        indexes=[
            {'columns': ['partner_id', 'employee_id'], 'unique': true},
        ],
        post_hook="{{ announce_mart_refresh('mart_eligibility', as_of=members_as_of()) }}",
    )
}}

{#-
    The table the eligibility API reads. It carries no names, contact details or SSN
    parts: only what a check needs. Lookups go through the unique (partner_id,
    employee_id) index. A status that came from the dates (coverage_status_basis
    'eligibility_dates') holds for the day of the build only: the API judges the dates
    against its own today, and applies only a status the partner stated.
-#}

with

members_resolved as (

    select * from {{ ref('int_members_resolved') }}

),

final as (

    select
        member_id,
        partner_id,
        employee_id,
        date_of_birth,
        program,
        eligibility_start_date,
        eligibility_end_date,
        coverage_status,
        coverage_status_basis,
        now()::timestamptz as refreshed_at

    from members_resolved

)

select * from final
