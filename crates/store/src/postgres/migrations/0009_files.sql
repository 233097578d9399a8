-- Files of `file` fields (§15). The bytes are objects <tenant>/<sha256> in the files store;
-- these tables say who references them and which may go.
-- A record references every object any of its versions had: the references go when the
-- record's row and versions go (purge, erasure, a hard delete), in that transaction.
create table file_refs (
    tenant      text collate "C" not null,
    collection  text collate "C" not null,
    record_id   text collate "C" not null,
    sha256      text collate "C" not null,
    primary key (tenant, collection, record_id, sha256)
);
create index file_refs_object on file_refs (tenant, sha256);

-- One row per stored object. gc_due_at: when the files worker must check it (set in the
-- transaction that removed a reference, or at the end of an upload's pin); deleting: the
-- worker found it unreferenced and is removing it (an upload of the same bytes waits).
create table file_objects (
    tenant        text collate "C" not null,
    sha256        text collate "C" not null,
    size          bigint not null,
    gc_due_at     bigint,
    deleting      boolean not null default false,
    primary key (tenant, sha256)
);
create index file_objects_due on file_objects (gc_due_at) where gc_due_at is not null;

-- An upload in flight keeps its object until `until`: its record does not reference it
-- yet. The write that makes the reference removes the pin in its transaction.
create table file_pins (
    upload_id  text collate "C" primary key,
    tenant     text collate "C" not null,
    sha256     text collate "C" not null,
    until      bigint not null
);
create index file_pins_object on file_pins (tenant, sha256);

-- An erasure's receipt counts the stored files it removed.
alter table erasures add column files bigint not null default 0;
