with

source as (

    select * from {{ source('raw_partners', 'enrollment_members') }}

),

renamed as (

    select
        btrim(partner_id) as partner_id,
        btrim(employee_id) as employee_id,

        {{ clean_text('first_name') }} as first_name,
        {{ clean_text('middle_name') }} as middle_name,
        {{ clean_text('last_name') }} as last_name,
        date_of_birth::date as date_of_birth,
        upper({{ clean_text('gender') }}) as gender,

        lower({{ clean_text('email') }}) as email,
        {{ clean_text('phone') }} as phone,
        {{ clean_text('address_line1') }} as address_line1,
        {{ clean_text('address_line2') }} as address_line2,
        {{ clean_text('city') }} as city,
        upper({{ clean_text('state') }}) as state,
        {{ clean_text('postal_code') }} as postal_code,

        lower({{ clean_text('relationship') }}) as relationship,
        {{ clean_text('group_id') }} as group_id,
        {{ clean_text('program') }} as program,
        eligibility_start_date::date as eligibility_start_date,
        eligibility_end_date::date as eligibility_end_date,
        lower({{ clean_text('coverage_status') }}) as partner_coverage_status,

        lower({{ clean_text('ssn_hash') }}) as ssn_hash,
        {{ clean_text('ssn_last4') }} as ssn_last4,

        source_file_id,
        source_line_number::bigint as source_line_number,
        file_received_at::timestamptz as file_received_at,
        _dlt_load_id as dlt_load_id,
        -- dlt load ids are epoch seconds as text; guard in case that ever changes
        case
            when _dlt_load_id ~ '^[0-9]+(\.[0-9]+)?$'
                then to_timestamp(_dlt_load_id::double precision)
        end as loaded_at

    from source

)

select * from renamed
