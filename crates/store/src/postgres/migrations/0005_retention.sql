-- Legal holds: stackable, named; a record is held while any of its holds is unreleased.
create table holds (
    id             text collate "C" primary key,
    tenant         text collate "C" not null,
    collection     text collate "C" not null,
    record_id      text collate "C" not null,
    case_name      text,
    reason         text,
    actor          text not null,
    at             bigint not null,
    released_at    bigint,
    released_by    text,
    release_reason text
);
create index holds_active on holds (tenant, collection, record_id) where released_at is null;

-- Records erased for GDPR: ids only, never values (answers 410 to idempotent replays),
-- with the receipt a retried :erase answers again: what was scrubbed, and the records
-- erased with it per collection (JSON object of counts).
create table erasures (
    tenant               text collate "C" not null,
    collection           text collate "C" not null,
    record_id            text collate "C" not null,
    erased_at            bigint not null,
    audit_seq            bigint not null,
    events               bigint not null default 0,
    idempotent_responses bigint not null default 0,
    counts               text,
    primary key (tenant, collection, record_id)
);

-- What an erasure still has to do after its commit, one row per record and step: 'search'
-- (the index keeps its terms until the indexer has passed event_seq, the erasure's
-- record.erased event) and the storage step (on PostgreSQL, dead row versions keep old
-- values until VACUUM reclaims them). Written in the erasure's transaction, removed once
-- the step is done: a crash in between leaves the work to be finished after restart.
-- Ids only.
create table erasure_jobs (
    tenant     text collate "C" not null,
    collection text collate "C" not null,
    record_id  text collate "C" not null,
    step       text not null,
    event_seq  bigint not null,
    created_at bigint not null,
    primary key (tenant, collection, record_id, step)
);
create index erasure_jobs_step on erasure_jobs (step, event_seq);
