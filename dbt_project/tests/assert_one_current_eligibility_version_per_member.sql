-- A member with two open versions would make "eligibility as of" questions ambiguous.
select
    member_id,
    count(*) as current_versions

from {{ ref('eligibility_history') }}
where dbt_valid_to is null
group by member_id
having count(*) > 1
