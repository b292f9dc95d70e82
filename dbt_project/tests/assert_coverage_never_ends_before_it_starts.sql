-- Validation rejects a row whose coverage ends before it starts; a served row that does
-- anyway came from a merge (kept values, a full file's absences) and answers wrongly.
{{ config(severity='warn') }}

select
    partner_id,
    employee_id,
    eligibility_start_date,
    eligibility_end_date

from {{ ref('mart_eligibility') }}
where eligibility_end_date < eligibility_start_date
