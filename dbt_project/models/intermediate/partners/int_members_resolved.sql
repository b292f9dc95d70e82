-- A table, not a view: three models, the snapshot and four tests read it, and recomputing the
-- window over 500K members for each of them cost ~10 s of drop-to-servable time.
{{
    config(
        materialized='table',
        indexes=[{'columns': ['member_id'], 'unique': True}],
        post_hook="{{ announce_mart_refresh('int_members_resolved', notify=false) }}",
    )
}}

with

enrollment_members as (

    select * from {{ ref('stg_partners__enrollment_members') }}

),

-- trimming in staging can make two raw keys equal; the most recently received file
-- wins, as it does for the merge into the raw table
newest_row_per_member as (

    select
        *,
        row_number() over (
            partition by partner_id, employee_id
            order by
                file_received_at desc nulls last,
                dlt_load_id desc nulls last,
                source_line_number desc nulls last
        ) as recency_rank

    from enrollment_members

),

-- partner words we understand; anything else (or nothing) falls back to the eligibility
-- dates, so a partner's unfamiliar vocabulary never yields a fourth status
partner_status_vocabulary as (

    select * from (
        values
        ('active', 'active'),
        ('a', 'active'),
        ('enrolled', 'active'),
        ('eligible', 'active'),
        ('current', 'active'),
        ('terminated', 'terminated'),
        ('termed', 'terminated'),
        ('term', 'terminated'),
        ('t', 'terminated'),
        ('inactive', 'terminated'),
        ('cancelled', 'terminated'),
        ('canceled', 'terminated'),
        ('ended', 'terminated'),
        ('pending', 'pending'),
        ('p', 'pending'),
        ('future', 'pending')
    ) as vocabulary (partner_word, coverage_status)

),

-- a full file (inbound.full_file) that arrived after the member's row and left the member
-- out ended the member's coverage the day before it arrived (the first such file counts)
left_out as (

    select
        newest_row_per_member.partner_id,
        newest_row_per_member.employee_id,
        min(absent.absent_since) as left_out_since,
        (array_agg(absent.absent_from_file_id order by absent.absent_since))[1]
            as left_out_by_file_id

    from newest_row_per_member
    inner join {{ ref('stg_partners__absent_members') }} as absent
        on newest_row_per_member.partner_id = absent.partner_id
        and newest_row_per_member.employee_id = absent.employee_id
        and absent.absent_since > newest_row_per_member.file_received_at
    where newest_row_per_member.recency_rank = 1
    group by 1, 2

),

statuses_resolved as (

    select
        newest_row_per_member.*,
        left_out.left_out_since,
        left_out.left_out_by_file_id,
        case
            when left_out.left_out_since is not null then 'terminated'
            else partner_status_vocabulary.coverage_status
        end as partner_status_normalized

    from newest_row_per_member
    left join partner_status_vocabulary
        on newest_row_per_member.partner_coverage_status = partner_status_vocabulary.partner_word
    left join left_out
        on newest_row_per_member.partner_id = left_out.partner_id
        and newest_row_per_member.employee_id = left_out.employee_id
    where newest_row_per_member.recency_rank = 1

),

members_resolved as (

    select
        -- stable platform id: same partner + same partner member id = same member,
        -- whatever file it arrives in (partner ids are snake_case, so ':' cannot collide)
        md5(partner_id || ':' || employee_id) as member_id,
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
        ssn_hash,
        ssn_last4,

        program,
        eligibility_start_date,
        -- a coverage that had not begun when a full file left the member out was cancelled:
        -- it ends on its start date (the 834 convention for a void), never before it
        case
            when left_out_since is not null
                then greatest(
                    least(
                        coalesce(eligibility_end_date, {{ utc_date('left_out_since') }} - 1),
                        {{ utc_date('left_out_since') }} - 1
                    ),
                    eligibility_start_date
                )
            else eligibility_end_date
        end as eligibility_end_date,
        partner_coverage_status,
        case
            when partner_status_normalized is not null then partner_status_normalized
            when eligibility_start_date > {{ utc_today() }} then 'pending'
            when eligibility_end_date < {{ utc_today() }} then 'terminated'
            else 'active'
        end as coverage_status,
        case
            when partner_status_normalized is not null then 'partner'
            else 'eligibility_dates'
        end as coverage_status_basis,

        left_out_since,
        left_out_by_file_id,
        source_file_id,
        source_line_number,
        file_received_at,
        loaded_at

    from statuses_resolved

)

select * from members_resolved
