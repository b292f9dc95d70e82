"""Tables the platform's own code owns (not dlt's, not dbt's). Applied idempotently."""

from __future__ import annotations

import psycopg2.extensions

from mdp.database import ConnectionParams, connect

# A row's hash: what audit.row_digest computes and the chain trigger computes in line
ROW_DIGEST = (
    "encode(sha256(convert_to(concat_ws('|', {r}.prev_hash, {r}.chain_seq, {r}.event_id,"
    " extract(epoch from {r}.occurred_at), {r}.actor, {r}.action, {r}.partner_id, {r}.member_ref,"
    " {r}.purpose, {r}.outcome, {r}.request_id, {r}.detail::text), 'UTF8')), 'hex')"
)

DDL = """
create schema if not exists raw_partners;
create schema if not exists serving;
create schema if not exists audit;
create schema if not exists devices;

-- one row per file seen; dbt's import report model reads it as a source
create table if not exists raw_partners.file_imports (
    file_id            text primary key,
    partner_id         text not null,
    filename           text not null,
    source_path        text,
    sha256             text not null,
    size_bytes         bigint,
    format             text,
    status             text not null,  -- processing | loaded | duplicate | quarantined | failed | interrupted
    reason             text,
    duplicate_of       text,
    rows_total         integer,
    rows_loaded        integer,
    rows_rejected      integer,
    archive_path       text,
    error_report_path  text,
    remote_mtime       double precision,
    received_at        timestamptz not null default now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    parse_seconds      double precision,
    load_seconds       double precision
);
create index if not exists file_imports_partner_sha on raw_partners.file_imports (partner_id, sha256);
-- the partner's copy (error report or quarantine note): false until an upload succeeds
alter table raw_partners.file_imports add column if not exists report_delivered boolean;

-- members a partner's full file left out (inbound.full_file): terminated as of that file,
-- unless a later file has them again; written with the file's rows, in one transaction
create table if not exists raw_partners.absent_members (
    partner_id    text not null,
    employee_id   text not null,
    file_id       text not null,
    absent_since  timestamptz not null,
    primary key (partner_id, employee_id, file_id)
);

create table if not exists serving.api_keys (
    key_id      text primary key,
    partner_id  text not null,
    key_hash    text not null unique,
    label       text,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);

-- bumped by a dbt post-hook each time a serving mart is rebuilt; the API listens on
-- channel mdp_mart_refreshed and polls this as a fallback to drop its cache
create table if not exists serving.mart_refreshes (
    mart          text primary key,
    version       bigint not null default 1,
    refreshed_at  timestamptz not null default now()
);

-- one row per member device connection; OAuth tokens encrypted at rest (mdp.crypto)
create table if not exists devices.connections (
    connection_id       text primary key,
    member_id           text not null,
    provider            text not null,  -- fitbit | garmin | apple_health
    provider_user_id    text not null,
    status              text not null default 'active',  -- active | disconnected | revoked
    primary_metrics     text[] not null default '{}',
    access_token_enc    text,
    refresh_token_enc   text,
    access_token_hash   text,  -- sha256 of the token, to match Garmin's userAccessToken
    token_expires_at    timestamptz,
    timezone            text not null default 'UTC',
    sync_cursor         jsonb not null default '{}'::jsonb,
    backfill_progress   jsonb not null default '{}'::jsonb,
    last_success_at     timestamptz,
    last_notified_at    timestamptz,
    created_at          timestamptz not null default now(),
    disconnected_at     timestamptz,
    unique (provider, provider_user_id)
);

-- provider quotas shared by every concurrent run: per user (from the provider's headers) and
-- global (e.g. Garmin's 5000 requests/day), read before each request
create table if not exists devices.rate_limits (
    provider    text not null,
    subject     text not null,  -- a provider user id, or 'global'
    remaining   integer not null,
    reset_at    timestamptz not null,
    updated_at  timestamptz not null default now(),
    primary key (provider, subject)
);

-- one circuit breaker per provider, shared by every run (ingestion/devices/resilience.py)
create table if not exists devices.circuit_breakers (
    provider              text primary key,
    state                 text not null default 'closed',  -- closed | open | half_open
    consecutive_failures  integer not null default 0,
    window_started_at     timestamptz not null default now(),
    window_requests       integer not null default 0,
    window_failures       integer not null default 0,
    opened_at             timestamptz,
    updated_at            timestamptz not null default now()
);

-- HealthKit sample batches uploaded by the member app, stored as received and loaded by a
-- sync asset (serving writes only its own tables; dlt owns raw_apple_health)
create table if not exists devices.apple_upload_inbox (
    upload_id     bigserial primary key,
    member_id     text not null,
    batch_key     text not null,  -- sha256 of the body: a re-sent batch is stored once
    payload       jsonb not null,
    received_at   timestamptz not null default now(),
    processed_at  timestamptz,
    unique (member_id, batch_key)
);

-- provider notifications, stored idempotently and answered fast; a sensor turns them into syncs.
-- One pending row per dedupe_key (Fitbit: ownerId/collectionType/date); repeats bump a counter.
create table if not exists devices.webhook_inbox (
    inbox_id          bigserial primary key,
    provider          text not null,
    dedupe_key        text not null,
    provider_user_id  text,
    collection_type   text,
    resource_date     date,
    payload           jsonb not null,
    received_at       timestamptz not null default now(),
    last_received_at  timestamptz not null default now(),
    times_received    integer not null default 1,
    processed_at      timestamptz
);
create unique index if not exists webhook_inbox_pending
    on devices.webhook_inbox (dedupe_key) where processed_at is null;
-- an item that carries its data is stored once ever (serving/webhook_inbox.py)
create index if not exists webhook_inbox_done
    on devices.webhook_inbox (dedupe_key) where processed_at is not null;

-- append-only: who read which member's data, when and why (no PHI: member_ref is a keyed hash)
create table if not exists audit.access_log (
    event_id     bigserial primary key,
    occurred_at  timestamptz not null default now(),
    actor        text not null,
    action       text not null,
    partner_id   text,
    member_ref   text,
    purpose      text,
    outcome      text,
    request_id   text,
    detail       jsonb
);
create index if not exists access_log_member on audit.access_log (member_ref, occurred_at);
-- the exports that carried a member (mdp.access_log.member_events)
create index if not exists access_log_export_members on audit.access_log
    using gin ((detail -> 'member_refs')) where detail ? 'member_refs';
create or replace function audit.refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'audit.access_log is append-only';
end $$;
drop trigger if exists access_log_append_only on audit.access_log;
create trigger access_log_append_only before update or delete on audit.access_log
    for each row execute function audit.refuse_change();
-- a truncate fires no row trigger: it would empty the log without a trace
drop trigger if exists access_log_never_truncated on audit.access_log;
create trigger access_log_never_truncated before truncate on audit.access_log
    for each statement execute function audit.refuse_change();

-- tamper-evident: each row carries the hash of the previous one (chain_seq orders the chain;
-- ids from the sequence can commit out of order). Verify with audit.verify_chain().
alter table audit.access_log add column if not exists chain_seq bigint;
alter table audit.access_log add column if not exists prev_hash text;
alter table audit.access_log add column if not exists row_hash text;
create unique index if not exists access_log_chain_seq on audit.access_log (chain_seq);
create or replace function audit.row_digest(r audit.access_log) returns text
    language sql immutable as $$
    select {digest_of_r}
$$;
-- the chain's last link, read once per appending transaction. Always by the index: the plan
-- is cached per session, and a plan made while the table looked small (seq scan + sort) would
-- make every append read the whole log
create or replace function audit.chain_tip(out seq bigint, out hash text)
    language sql stable set enable_seqscan = off as $$
    select chain_seq, row_hash from audit.access_log
        where chain_seq is not null order by chain_seq desc limit 1
$$;
create or replace function audit.chain_row() returns trigger language plpgsql as $$
declare
    xact text := pg_current_xact_id()::text;
    tip text[] := string_to_array(current_setting('audit.chain_tip', true), ':');
    seq bigint;
    prev text;
begin
    if tip[1] is distinct from xact then
        -- first append of this transaction: take the chain (held to commit, so no one else
        -- appends after the tip this transaction read), then read the tip from the table
        perform pg_advisory_xact_lock(hashtext('audit.access_log.chain'));
        select t.seq, t.hash into seq, prev from audit.chain_tip() t;
    else
        seq := tip[2]::bigint;
        prev := tip[3];
    end if;
    new.chain_seq := coalesce(seq, 0) + 1;
    new.prev_hash := coalesce(prev, '');
    -- audit.row_digest(new), written out: calling it cost ~4.5 µs of CPU a row
    new.row_hash := {digest_of_new};
    -- transaction-local: gone at commit, undone with a rolled-back savepoint
    perform set_config('audit.chain_tip', concat_ws(':', xact, new.chain_seq, new.row_hash), true);
    return new;
end $$;
drop trigger if exists access_log_chain on audit.access_log;
create trigger access_log_chain before insert on audit.access_log
    for each row execute function audit.chain_row();
create or replace function audit.verify_chain() returns bigint language plpgsql as $$
-- the chain_seq of the first row whose hash or link does not match; null when all match
declare
    r audit.access_log;
    expected_prev text := '';
begin
    for r in select * from audit.access_log where chain_seq is not null order by chain_seq loop
        if r.prev_hash is distinct from expected_prev or r.row_hash is distinct from audit.row_digest(r)
        then
            return r.chain_seq;
        end if;
        expected_prev := r.row_hash;
    end loop;
    return null;
end $$;
"""
DDL = DDL.replace("{digest_of_r}", ROW_DIGEST.format(r="r")).replace(
    "{digest_of_new}", ROW_DIGEST.format(r="new")
)


def ensure_schema(params: ConnectionParams | None = None) -> None:
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext('mdp.ensure_schema'))")
        cur.execute(DDL)


def apply(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        cur.execute(DDL)
