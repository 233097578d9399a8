-- PostgreSQL's system tables mirror SQLite's (sqlite/schema.rs), taken at their latest
-- shape rather than replayed migration by migration: a PostgreSQL database starts here.
-- Timestamps are bigint microseconds since the epoch, as in SQLite, so both stores share
-- one conversion (Timestamp::from_micros); text that is compared or sorted uses the "C"
-- collation, byte order like SQLite's, whatever the database's locale.

-- Key/value settings of this deployment (demo seeded, purge paused, …).
create table meta (
    key   text collate "C" primary key,
    value text not null
);

-- API keys. The secret is never stored, only its SHA-256.
create table api_keys (
    id          text collate "C" primary key,
    tenant      text collate "C" not null,
    name        text,
    scopes      text not null,
    secret_hash text not null,
    created_at  bigint not null
);

-- The applied definition of each collection, to detect incompatible changes.
create table collections (
    name       text collate "C" primary key,
    definition text not null
);

-- Deletion operations: one per DELETE; its records are listed in deletion_records.
create table deletions (
    id              text collate "C" primary key,
    tenant          text collate "C" not null,
    actor           text not null,
    reason          text,
    request_id      text,
    created_at      bigint not null,
    root_collection text collate "C" not null,
    root_id         text collate "C" not null,
    status          text not null
);
create index deletions_pending on deletions (status) where status = 'pending';

create table deletion_records (
    deletion_id text collate "C" not null,
    collection  text collate "C" not null,
    record_id   text collate "C" not null,
    primary key (deletion_id, collection, record_id)
);

-- Eventual cascades still to work through: the active children of parent_id through
-- child_collection.field, taken in id order after after_id, batch by batch.
create table deletion_queue (
    deletion_id      text collate "C" not null,
    tenant           text collate "C" not null,
    child_collection text collate "C" not null,
    field            text collate "C" not null,
    parent_id        text collate "C" not null,
    after_id         text collate "C" not null,
    primary key (deletion_id, child_collection, field, parent_id)
);

-- Idempotency keys of POST requests, kept 24 hours.
create table idempotency (
    tenant      text collate "C" not null,
    api_key     text collate "C" not null,
    key         text collate "C" not null,
    fingerprint text not null,
    state       text not null,          -- 'in_flight' | 'done'
    status      integer,
    headers     text,
    body        text,
    collection  text,
    record_id   text,
    created_at  bigint not null,
    primary key (tenant, api_key, key)
);
create index idempotency_created on idempotency (created_at);
