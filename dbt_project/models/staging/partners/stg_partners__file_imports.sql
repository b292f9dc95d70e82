with

source as (

    select * from {{ source('raw_partners', 'file_imports') }}

),

renamed as (

    select
        file_id,
        btrim(partner_id) as partner_id,
        filename,
        source_path,
        lower(sha256) as sha256,
        size_bytes::bigint as size_bytes,
        lower({{ clean_text('format') }}) as file_format,
        lower(btrim(status)) as status,
        {{ clean_text('reason') }} as reason,
        duplicate_of as duplicate_of_file_id,

        rows_total::bigint as rows_total,
        rows_loaded::bigint as rows_loaded,
        rows_rejected::bigint as rows_rejected,

        archive_path,
        error_report_path,

        to_timestamp(remote_mtime) as remote_modified_at,
        received_at,
        started_at,
        finished_at,
        parse_seconds,
        load_seconds,
        extract(epoch from finished_at - started_at)::double precision as processing_seconds

    from source

)

select * from renamed
