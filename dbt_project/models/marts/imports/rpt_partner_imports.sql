with

file_imports as (

    select * from {{ ref('stg_partners__file_imports') }} as attempt
    -- an attempt a stopped run left unfinished: its file was imported again, and counts there
    where status <> 'interrupted'
        -- a held or failed file that `mdp imports replay` later loaded counts as that load
        and not (
            status in ('quarantined', 'failed')
            and exists (
                select from {{ ref('stg_partners__file_imports') }} as later
                where later.partner_id = attempt.partner_id
                    and later.sha256 = attempt.sha256
                    and later.status = 'loaded'
                    and later.received_at > attempt.received_at
            )
        )

),

imports_by_partner_day as (

    select
        partner_id,
        -- days in UTC so the report reads the same whatever the session time zone
        (received_at at time zone 'UTC')::date as import_date,

        count(*) as files_received,
        count(*) filter (where status = 'loaded') as files_loaded,
        count(*) filter (where status = 'duplicate') as files_duplicate,
        count(*) filter (where status = 'quarantined') as files_quarantined,
        count(*) filter (where status = 'failed') as files_failed,
        count(*) filter (where status = 'processing') as files_processing,

        coalesce(sum(rows_total), 0) as rows_total,
        coalesce(sum(rows_loaded), 0) as rows_loaded,
        coalesce(sum(rows_rejected), 0) as rows_rejected,

        max(received_at) as last_file_received_at

    from file_imports
    group by 1, 2

),

final as (

    select
        partner_id,
        import_date,
        files_received,
        files_loaded,
        files_duplicate,
        files_quarantined,
        files_failed,
        files_processing,
        rows_total,
        rows_loaded,
        rows_rejected,
        round(rows_rejected::numeric / nullif(rows_total, 0), 4) as reject_rate,
        last_file_received_at

    from imports_by_partner_day

)

select * from final
