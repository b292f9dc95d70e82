with

members_resolved as (

    select * from {{ ref('int_members_resolved') }}

),

final as (

    select
        member_id,
        partner_id,
        employee_id,

        first_name,
        middle_name,
        last_name,
        date_of_birth,
        gender,
        email,
        phone,
        address_line1,
        address_line2,
        city,
        state,
        postal_code,
        relationship,
        group_id,
        ssn_last4,

        program,
        eligibility_start_date,
        eligibility_end_date,
        coverage_status,
        coverage_status_basis,
        (
            coverage_status = 'active'
            and coalesce(eligibility_start_date <= {{ utc_today() }}, true)
            and coalesce(eligibility_end_date >= {{ utc_today() }}, true)
        ) as is_eligible_today,

        source_file_id,
        file_received_at,
        loaded_at

    from members_resolved

)

select * from final
