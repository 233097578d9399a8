-- History (SPEC section 14): one row per change of a record, written in the change's
-- transaction, append-only. body is the record's representation as the change left it
-- (JSON text, without holds: kept as text, never parsed on the write path). A version is
-- valid from valid_from (µs, the record's updated_at) until the valid_from of the
-- record's next version: valid_to is derived, never stored, so a change inserts one row
-- and updates none. The key orders a record's versions by time, which is also version
-- order: one index answers the list (newest first), a version by number and the version
-- in force at an instant (the last one with valid_from <= T), without reading the rest of
-- the history.
create table versions (
    tenant      text collate "C" not null,
    collection  text collate "C" not null,
    record_id   text collate "C" not null,
    valid_from  bigint not null,
    version     bigint not null,
    action      text not null,
    actor       text,
    deletion_id text,
    body        text not null,
    primary key (tenant, collection, record_id, valid_from, version)
);

-- Collections whose records existed before history did and have their baseline version
-- (written once per collection by the collection migration).
create table history_baselines (
    collection  text collate "C" primary key
);

-- An erasure removes every version of the records it erases; its receipt counts them.
alter table erasures add column versions bigint not null default 0;
