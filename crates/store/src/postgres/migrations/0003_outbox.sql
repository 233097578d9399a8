-- The transactional outbox: one row per event, written in the transaction of the change
-- it announces.
--
-- Followers (event feed, live streams, webhook fan-out, indexer, cache) read `seq > last`,
-- so seq must be commit order: an identity alone is not, since a transaction that takes
-- seq 5 may commit after one that took seq 6, and a follower that already passed 6 would
-- skip 5 for ever. Every append therefore takes the audit_head row lock (held until
-- commit) before drawing its seqs: the transactions that write events draw them one after
-- another, each after the previous one committed, so a follower never sees seq n+1
-- before seq n is visible. (Every change appends an audit entry too, so this is the lock
-- writers take anyway.)
--
-- txid is the writing transaction (pg_current_xact_id()). It is not the read rule: a
-- filter `txid < pg_snapshot_xmin(pg_current_snapshot())` alone would still skip, because
-- transaction ids are assigned at a transaction's first write and seqs later, so the two
-- orders differ; see docs/DECISIONS.md. It tells an operator which transaction wrote an
-- event, and lets a future follower keyed by (txid, seq) read below the oldest in-flight
-- transaction.
--
-- data is json, not jsonb: jsonb reorders object members, and the envelope must carry the
-- record's fields in declared order exactly as SQLite's store returns them.
create table outbox (
    seq         bigint generated always as identity primary key,
    txid        xid8 not null default pg_current_xact_id(),
    id          text not null,
    type        text not null,
    tenant      text collate "C" not null,
    collection  text collate "C" not null,
    record_id   text collate "C" not null,
    version     bigint,
    deletion_id text,
    occurred_at bigint not null,
    request_id  text,
    data        json
);
create index outbox_tenant on outbox (tenant, seq);
-- Only events that still carry data need finding by record (erasure scrubs them).
create index outbox_record on outbox (tenant, collection, record_id, seq) where data is not null;
