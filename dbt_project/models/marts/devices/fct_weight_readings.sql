-- Incremental: readings loaded since the last build; Apple samples deleted since are removed.
{{
    config(
        materialized='incremental',
        unique_key='reading_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        pre_hook="{{ delete_tombstoned_readings() }}",
        post_hook=["{{ index_apple_source_keys() }}", "analyze {{ this }}"],
        indexes=[
            {'columns': ['reading_key'], 'unique': True},
            {'columns': ['member_id', 'measured_at']},
            {'columns': ['_loaded_at']},
            {'columns': ['_built_at']},
        ],
    )
}}

{{ reading_fact('weight', 'weight_kg', 20, 350) }}
