-- Incremental: readings loaded since the last build; Apple samples deleted since are removed,
-- and so is a version a revision with a new timestamp (a new reading_key) replaced.
{{
    config(
        materialized='incremental',
        unique_key='reading_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        pre_hook="{{ delete_tombstoned_readings() }}",
        post_hook=["{{ delete_superseded_versions(['member_id', 'device_id']) }}", "analyze {{ this }}"],
        indexes=[
            {'columns': ['reading_key'], 'unique': True},
            {'columns': ['source_key', 'member_id']},
            {'columns': ['member_id', 'measured_at']},
            {'columns': ['_loaded_at']},
            {'columns': ['_built_at']},
        ],
    )
}}

{{ reading_fact('weight', 'weight_kg', 20, 350) }}
