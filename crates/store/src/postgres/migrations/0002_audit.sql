-- The audit log: append-only, hash-chained (see tombstone_domain::audit for the canonical
-- form, shared with SQLite so one verifier checks both). seq is not a sequence: each
-- append reads the head below under its row lock and takes the next number, so seqs are
-- gapless and in chain order.
create table audit (
    seq         bigint primary key,
    at          bigint not null,
    tenant      text collate "C" not null,
    actor       text not null,
    action      text not null,
    collection  text collate "C",
    record_id   text collate "C",
    version     bigint,
    deletion_id text,
    reason      text,
    request_id  text,
    prev_hash   text not null,
    hash        text not null,
    -- The hold a hold or release entry is about, and its case (null on other entries).
    hold_id     text,
    case_name   text
);
create index audit_tenant on audit (tenant, seq);
create index audit_record on audit (tenant, record_id, seq);

-- The head of the chain: one row, locked with SELECT … FOR UPDATE by every transaction
-- that appends, until it commits. Concurrent writers queue on this row instead of reading
-- the same head and forking the chain; a log cut short at its end is detected because the
-- head names the last entry. It starts at the genesis hash (seq 0: no entry yet).
create table audit_head (
    id   int primary key check (id = 1),
    seq  bigint not null,
    hash text not null
);
insert into audit_head (id, seq, hash)
values (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
