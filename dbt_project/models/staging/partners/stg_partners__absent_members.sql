with

source as (

    select * from {{ source('raw_partners', 'absent_members') }}

),

renamed as (

    select
        btrim(partner_id) as partner_id,
        btrim(employee_id) as employee_id,
        file_id as absent_from_file_id,
        absent_since

    from source

)

select * from renamed
