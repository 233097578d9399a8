//! SQLite schema: the system tables (versioned migrations, never edited once applied)
//! and one table per collection, generated from the config.
//!
//! A collection table keeps system columns beside one column per declared field
//! (`f_<name>`), plus a folded shadow column (`ci_<name>`) for case-insensitive strings,
//! so uniqueness and filters compare the Unicode lower-case form. Indexes are partial:
//! "active" indexes cover `deleted_at IS NULL` only, so lists and unique checks do not grow
//! with the number of deleted rows.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};
use tombstone_domain::config::{Collection, FieldType};
use tombstone_domain::record::fold_case;

use crate::StoreError;

/// System migrations, in order. Each runs once, in a transaction, and is recorded in
/// `_migrations`. Never edit one that has shipped: add another.
const SYSTEM_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_system",
        r"
-- Key/value settings of this deployment (demo seeded, purge paused, …).
create table meta (
    key   text primary key,
    value text not null
) without rowid;

-- API keys. The secret is never stored, only its SHA-256.
create table api_keys (
    id          text primary key,
    tenant      text not null,
    name        text,
    scopes      text not null,
    secret_hash text not null,
    created_at  integer not null
) without rowid;

-- The applied definition of each collection, to detect incompatible changes.
create table collections (
    name       text primary key,
    definition text not null
) without rowid;

-- Deletion operations: one per DELETE; its records are listed in deletion_records.
create table deletions (
    id              text primary key,
    tenant          text not null,
    actor           text not null,
    reason          text,
    request_id      text,
    created_at      integer not null,
    root_collection text not null,
    root_id         text not null,
    status          text not null
) without rowid;

create table deletion_records (
    deletion_id text not null,
    collection  text not null,
    record_id   text not null,
    primary key (deletion_id, collection, record_id)
) without rowid;

-- Idempotency keys of POST requests, kept 24 hours.
create table idempotency (
    tenant      text not null,
    api_key     text not null,
    key         text not null,
    fingerprint text not null,
    state       text not null,          -- 'in_flight' | 'done'
    status      integer,
    headers     text,
    body        text,
    collection  text,
    record_id   text,
    created_at  integer not null,
    primary key (tenant, api_key, key)
) without rowid;
create index idempotency_created on idempotency (created_at);
",
    ),
    (
        "0002_audit_outbox",
        r"
-- The audit log: append-only, hash-chained (see tombstone_domain::audit for the
-- canonical form). seq is the rowid: assigned by the single writer, so it is the
-- commit order.
create table audit (
    seq         integer primary key,
    at          integer not null,
    tenant      text not null,
    actor       text not null,
    action      text not null,
    collection  text,
    record_id   text,
    version     integer,
    deletion_id text,
    reason      text,
    request_id  text,
    prev_hash   text not null,
    hash        text not null
);
create index audit_tenant on audit (tenant, seq);
create index audit_record on audit (tenant, record_id, seq);

-- The head of the chain, moved in the same transaction as every append, so a log cut
-- short at its end is detected too.
create table audit_head (
    id   integer primary key check (id = 1),
    seq  integer not null,
    hash text not null
);

-- The transactional outbox: one row per event, written with the change it announces.
create table outbox (
    seq         integer primary key,
    id          text not null unique,
    type        text not null,
    tenant      text not null,
    collection  text not null,
    record_id   text not null,
    version     integer,
    deletion_id text,
    occurred_at integer not null,
    request_id  text,
    data        text
);
create index outbox_tenant on outbox (tenant, seq);
create index outbox_record on outbox (tenant, collection, record_id, seq);
",
    ),
    (
        "0003_webhooks",
        r"
-- Configured webhook endpoints and how far the outbox has been fanned out to each.
create table webhook_endpoints (
    id              text primary key,
    url             text not null,
    cursor          integer not null,
    disabled_at     integer,
    disabled_reason text
) without rowid;

-- One row per (endpoint, event): the delivery and its attempts. Only the oldest pending
-- delivery of a record is sent, so each endpoint sees a record's events in order.
create table webhook_deliveries (
    id              text primary key,
    endpoint_id     text not null,
    event_seq       integer not null,
    event_id        text not null,
    event_type      text not null,
    tenant          text not null,
    record_key      text not null,
    status          text not null,     -- pending | delivered | failed | cancelled
    attempts        integer not null,
    next_attempt_at integer not null,
    last_status     integer,
    last_error      text,
    last_attempt_at integer,
    delivered_at    integer,
    created_at      integer not null,
    unique (endpoint_id, event_seq)
) without rowid;
create index webhook_due on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_queue on webhook_deliveries (endpoint_id, record_key, event_seq) where status = 'pending';
create index webhook_tenant on webhook_deliveries (tenant, id);
create index webhook_event on webhook_deliveries (event_seq);
",
    ),
    (
        "0004_retention",
        r"
-- Legal holds: stackable, named; a record is held while any of its holds is unreleased.
create table holds (
    id             text primary key,
    tenant         text not null,
    collection     text not null,
    record_id      text not null,
    case_name      text,
    reason         text,
    actor          text not null,
    at             integer not null,
    released_at    integer,
    released_by    text,
    release_reason text
) without rowid;
create index holds_active on holds (tenant, collection, record_id) where released_at is null;

-- Records erased for GDPR: ids only, never values (answers 410 to idempotent replays).
create table erasures (
    tenant     text not null,
    collection text not null,
    record_id  text not null,
    erased_at  integer not null,
    audit_seq  integer not null,
    primary key (tenant, collection, record_id)
) without rowid;
",
    ),
    (
        "0005_eventual",
        r"
-- Eventual cascades still to work through: the active children of parent_id through
-- child_collection.field, taken in id order after after_id, batch by batch.
create table deletion_queue (
    deletion_id      text not null,
    tenant           text not null,
    child_collection text not null,
    field            text not null,
    parent_id        text not null,
    after_id         text not null,
    primary key (deletion_id, child_collection, field, parent_id)
) without rowid;
create index deletions_pending on deletions (status) where status = 'pending';
",
    ),
    (
        "0006_lean_outbox",
        r"
-- Fewer index entries per event: event ids are UUIDv7 made by the writer, unique without
-- a unique index that nothing reads; only events that still carry data need finding by
-- record (erasure scrubs them), so purge and erase events stay out of that index.
create table outbox_next (
    seq         integer primary key,
    id          text not null,
    type        text not null,
    tenant      text not null,
    collection  text not null,
    record_id   text not null,
    version     integer,
    deletion_id text,
    occurred_at integer not null,
    request_id  text,
    data        text
);
insert into outbox_next
    select seq, id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data from outbox;
drop table outbox;
alter table outbox_next rename to outbox;
create index outbox_tenant on outbox (tenant, seq);
create index outbox_record on outbox (tenant, collection, record_id, seq) where data is not null;
",
    ),
    (
        "0007_webhook_lanes",
        r"
-- Ordering lanes are per tenant: two tenants may use the same client-supplied id, and one
-- tenant's failing record must not hold back the other's events. The key becomes
-- tenant/collection/record_id (tenant and collection names hold no '/'); a lane's rows
-- keep their event_seq, so an upgrade keeps each record's order.
update webhook_deliveries set record_key = tenant || '/' || record_key;

-- Endpoints that leave the config are marked, not forgotten: their deliveries stay
-- listed, and fan-out, outbox clean-up and the backlog skip them.
alter table webhook_endpoints add column removed_at integer;
-- The tenant an endpoint is confined to (null: every tenant), so a deletion's propagation
-- names only the endpoints that serve its tenant.
alter table webhook_endpoints add column tenant text;

-- A pending delivery whose event was cleaned out of the outbox can never be sent, and
-- would hold its lane for ever.
update webhook_deliveries set status = 'cancelled', last_error = 'event-gone'
where status = 'pending'
  and not exists (select 1 from outbox o where o.seq = webhook_deliveries.event_seq);

-- Tenants see an error class, never transport text (it quotes URLs, which may carry
-- tokens). Earlier messages are mapped to their class.
update webhook_deliveries set last_error = case
    when last_error like 'endpoint answered%' and last_status is not null then 'http ' || last_status
    when last_error like 'timed out%' then 'timeout'
    when last_error = 'endpoint is no longer configured' then 'endpoint-removed'
    when last_error like 'endpoint disabled%' then 'endpoint-disabled'
    else 'request'
end
where last_error is not null;
",
    ),
    (
        "0008_erasure_jobs",
        r"
-- What an erasure still has to do after its commit, one row per record and step: 'search'
-- (the index still holds its terms until the indexer has passed event_seq, the erasure's
-- record.erased event, and rewritten the segments) and 'wal' (old page images until a
-- truncating checkpoint). Written in the erasure's transaction, removed once the step is
-- done: a crash in between leaves the work to be finished after restart. Ids only.
create table erasure_jobs (
    tenant     text not null,
    collection text not null,
    record_id  text not null,
    step       text not null,
    event_seq  integer not null,
    created_at integer not null,
    primary key (tenant, collection, record_id, step)
) without rowid;
create index erasure_jobs_step on erasure_jobs (step, event_seq);

-- The receipt of an erasure, kept so that a retried :erase answers it again: what was
-- scrubbed, and the records erased with it per collection (JSON object of counts).
alter table erasures add column events integer not null default 0;
alter table erasures add column idempotent_responses integer not null default 0;
alter table erasures add column counts text;
",
    ),
    (
        "0009_audit_hold_members",
        r"
-- The hold a hold or release entry is about, and its case, as members of their own:
-- the entry's reason stays exactly as given. Null on every other entry, and on entries
-- written before this migration (those composed them into the reason), whose hashes do
-- not cover them.
alter table audit add column hold_id text;
alter table audit add column case_name text;
",
    ),
    (
        "0010_nats",
        r"
-- Leases: one holder at a time for work shared by processes on this database (the NATS
-- relay first). A holder renews its lease while it runs; once expires_at (µs since the
-- epoch) has passed, another process may claim it and take the work over.
create table leases (
    name       text primary key,
    holder     text not null,
    expires_at integer not null
) without rowid;

-- How far each relay to an outside sink has delivered the outbox: every event up to seq
-- is delivered. Written only by the holder of the lease of the same name, never backwards.
-- The outbox clean-up keeps every event past the position of a relay whose lease was
-- held within the outbox retention (a release only expires the lease, for that reason).
create table relay_positions (
    name       text primary key,
    seq        integer not null
) without rowid;
",
    ),
    (
        "0011_history",
        r"
-- History (SPEC section 14): one row per change of a record, written in the change's
-- transaction, append-only. body is the record's representation as the change left it
-- (JSON text, without holds). A version is valid from valid_from (µs, the record's
-- updated_at) until the valid_from of the record's next version: valid_to is derived,
-- never stored, so a change writes one row and updates none. The key orders a record's
-- versions by time, which is also version order: one b-tree answers the list (newest
-- first), a version by number and the version in force at an instant (the last one with
-- valid_from <= T), without reading the rest of the history.
create table versions (
    tenant      text not null,
    collection  text not null,
    record_id   text not null,
    valid_from  integer not null,
    version     integer not null,
    action      text not null,
    actor       text,
    deletion_id text,
    body        text not null,
    primary key (tenant, collection, record_id, valid_from, version)
) without rowid;

-- Collections whose records existed before history did and have their baseline version
-- (written once per collection by the collection migration).
create table history_baselines (
    collection  text primary key
) without rowid;

-- An erasure removes every version of the records it erases; its receipt counts them.
alter table erasures add column versions integer not null default 0;
",
    ),
    (
        "0012_audit_checks",
        r"
-- The last whole-chain check of the audit log (GET /v1/audit/verify): one row (id 1),
-- replaced by each check, whichever replica ran it, so every replica answers the same.
-- entries is null when the chain is broken (only the entries before the break were
-- verified); broken_seq is the first entry that fails (for a log cut short, the first
-- missing one) and broken_tenant that entry's tenant, so a tenant is told the entry only
-- when it is its own.
create table audit_checks (
    id            integer primary key check (id = 1),
    checked_at    integer not null,
    duration_ms   integer not null,
    entries       integer,
    head_seq      integer not null,
    broken_seq    integer,
    broken_tenant text,
    problem       text
);
",
    ),
    (
        "0013_files",
        r"
-- Files of `file` fields (§15). The bytes are objects <tenant>/<sha256> in the files store;
-- these tables say who references them and which may go.
-- A record references every object any of its versions had: the references go when the
-- record's row and versions go (purge, erasure, a hard delete), in that transaction.
create table file_refs (
    tenant      text not null,
    collection  text not null,
    record_id   text not null,
    sha256      text not null,
    primary key (tenant, collection, record_id, sha256)
) without rowid;
create index file_refs_object on file_refs (tenant, sha256);

-- One row per stored object. gc_due_at: when the files worker must check it (set in the
-- transaction that removed a reference, or at the end of an upload's pin); deleting: the
-- worker found it unreferenced and is removing it (an upload of the same bytes waits).
create table file_objects (
    tenant        text not null,
    sha256        text not null,
    size          integer not null,
    gc_due_at     integer,
    deleting      integer not null default 0,
    primary key (tenant, sha256)
) without rowid;
create index file_objects_due on file_objects (gc_due_at) where gc_due_at is not null;

-- An upload in flight keeps its object until `until`: its record does not reference it
-- yet. The write that makes the reference removes the pin in its transaction.
create table file_pins (
    upload_id  text primary key,
    tenant     text not null,
    sha256     text not null,
    until      integer not null
) without rowid;
create index file_pins_object on file_pins (tenant, sha256);

-- An erasure's receipt counts the stored files it removed.
alter table erasures add column files integer not null default 0;
",
    ),
];

/// Connection settings for the one writer. WAL lets readers run beside it;
/// `secure_delete` overwrites freed content so erased values do not linger in free pages.
pub(crate) const WRITER_PRAGMAS: &str = "
pragma journal_mode = wal;
pragma synchronous = normal;
pragma busy_timeout = 5000;
pragma foreign_keys = off;
pragma secure_delete = on;
pragma temp_store = memory;
pragma cache_size = -32000;
";

/// Settings for each reader connection. `mmap_size`: readers see the database file through
/// a memory map (up to SQLite's compiled limit, 2 GiB; the rest is read as before). A read
/// that touches pages scattered over a large table — an as-of list probes the `versions` key
/// once per record, one or two pages each — otherwise pays a system call and a 4 KiB copy
/// per page the reader's cache misses; mapped, it reads the kernel's page cache in place
/// (docs/PERFORMANCE.md, History). The writer keeps ordinary I/O: its pages go through
/// the WAL, and an I/O error stays an error instead of a signal on its side.
pub(crate) const READER_PRAGMAS: &str = "
pragma busy_timeout = 5000;
pragma cache_size = -16000;
pragma mmap_size = 2147418112;
pragma temp_store = memory;
";

/// Applies the system migrations that have not run yet.
pub(crate) fn migrate_system(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "create table if not exists _migrations (name text primary key, applied_at text not null) without rowid",
    )?;
    for (name, sql) in SYSTEM_MIGRATIONS {
        let tx = conn.transaction()?;
        let done: Option<String> =
            tx.query_row("select name from _migrations where name = ?1", [name], |r| r.get(0)).optional()?;
        if done.is_none() {
            tx.execute_batch(sql).map_err(|e| StoreError::Migration(format!("system migration {name}: {e}")))?;
            tx.execute("insert into _migrations (name, applied_at) values (?1, datetime('now'))", [name])?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// The SQL type of a field's column.
fn column_type(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::Integer | FieldType::Boolean | FieldType::Timestamp => "integer",
        FieldType::Number => "real",
        FieldType::String | FieldType::Json | FieldType::File(_) | FieldType::Ref { .. } => "text",
    }
}

/// The table of a collection.
pub(crate) fn table_name(collection: &str) -> String {
    format!("\"rec_{collection}\"")
}

/// The column a field's equality and uniqueness use: folded for case-insensitive strings.
pub(crate) fn compare_column(field: &str, case_insensitive: bool) -> String {
    if case_insensitive { format!("\"ci_{field}\"") } else { format!("\"f_{field}\"") }
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// Creates or evolves the table of one collection, keeping its rows.
pub(crate) fn migrate_collection(tx: &Transaction<'_>, collection: &Collection) -> Result<(), StoreError> {
    let name = &collection.name;
    let table = table_name(name);
    let err = |what: &str, e: rusqlite::Error| StoreError::Migration(format!("collections.{name}: {what}: {e}"));

    // Incompatible changes are refused before anything is touched.
    let applied: Option<String> =
        tx.query_row("select definition from collections where name = ?1", [name], |r| r.get(0)).optional()?;
    let applied: BTreeMap<String, String> = applied.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default();
    for (fname, field) in &collection.fields {
        if let Some(old) = applied.get(fname) {
            let old_type = old.split('/').next().unwrap_or_default();
            if old_type != field.ty.name() {
                return Err(StoreError::Migration(format!(
                    "collections.{name}.fields.{fname}: type changed from {old_type} to {}; existing values cannot be converted (declare a new field instead)",
                    field.ty.name()
                )));
            }
        }
    }

    tx.execute_batch(&format!(
        "create table if not exists {table} (
            tenant        text not null,
            id            text not null,
            version       integer not null,
            created_at    integer not null,
            updated_at    integer not null,
            deleted_at    integer,
            deleted_by    text,
            delete_reason text,
            deletion_id   text,
            purge_at      integer,
            archived_at   integer,
            archived_by   text,
            archive_reason text,
            primary key (tenant, id)
        ) without rowid;"
    ))
    .map_err(|e| err("create table", e))?;

    let existing: Vec<String> = {
        let mut stmt = tx.prepare(&format!("select name from pragma_table_info('rec_{name}')"))?;
        stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?
    };
    // Archive (§17) came after the first tables: older ones gain its columns, empty.
    for (col, ty) in [("archived_at", "integer"), ("archived_by", "text"), ("archive_reason", "text")] {
        if !existing.iter().any(|c| c.eq_ignore_ascii_case(col)) {
            tx.execute_batch(&format!("alter table {table} add column {col} {ty}"))
                .map_err(|e| err("add column", e))?;
        }
    }
    for field in collection.fields.values() {
        let col = format!("f_{}", field.name);
        if !existing.iter().any(|c| c.eq_ignore_ascii_case(&col)) {
            tx.execute_batch(&format!("alter table {table} add column \"{col}\" {}", column_type(&field.ty)))
                .map_err(|e| err("add column", e))?;
        }
        if field.case_insensitive {
            let ci = format!("ci_{}", field.name);
            if !existing.iter().any(|c| c.eq_ignore_ascii_case(&ci)) {
                tx.execute_batch(&format!("alter table {table} add column \"{ci}\" text"))
                    .map_err(|e| err("add column", e))?;
                backfill_folded(tx, &table, &field.name)?;
            } else if applied.get(&field.name).is_some_and(|d| !d.ends_with("/ci")) {
                // Folding was off for a while: the shadow column is stale.
                backfill_folded(tx, &table, &field.name)?;
            }
        }
    }

    // Indexes: the ones this config wants, by deterministic names; stale ones of ours go.
    // Lists by default cover records neither deleted nor archived, and that index covers
    // exactly them (`ix_{name}_active`, over every undeleted record, came before archive and
    // goes); archived ones have their own, so neither list grows with the other's rows.
    // Both carry the columns of their own condition: SQLite checks a query's
    // `deleted_at is null and archived_at is null` on each entry even inside an index with
    // that condition, so without them a count looks every row up in the table.
    // A page of the default list reads its rows from `ix_{name}_page`, which carries every
    // column the list shows: the table is ordered by id whatever each row's state, so beside
    // archived and deleted neighbours a page's rows would sit on a leaf page each, one
    // descent of the table apiece, where the index keeps them side by side (the list
    // benchmark, docs/PERFORMANCE.md). Counts keep the narrow `ix_{name}_current`, which
    // is several times smaller to read.
    let listed = super::records::TableSql::new(collection);
    let mut wanted: Vec<(String, String)> = vec![
        (
            format!("ix_{name}_page"),
            format!(
                "create index \"ix_{name}_page\" on {table} ({}) where deleted_at is null and archived_at is null",
                listed.columns()
            ),
        ),
        (
            format!("ix_{name}_current"),
            format!(
                "create index \"ix_{name}_current\" on {table} (tenant, id, deleted_at, archived_at) where deleted_at is null and archived_at is null"
            ),
        ),
        (
            format!("ix_{name}_archived"),
            format!(
                "create index \"ix_{name}_archived\" on {table} (tenant, id, deleted_at, archived_at) where deleted_at is null and archived_at is not null"
            ),
        ),
        (
            format!("ix_{name}_deleted"),
            format!(
                "create index \"ix_{name}_deleted\" on {table} (tenant, deleted_at, id) where deleted_at is not null"
            ),
        ),
        (
            format!("ix_{name}_purge"),
            format!("create index \"ix_{name}_purge\" on {table} (purge_at) where deleted_at is not null"),
        ),
    ];
    if collection.archive_after.is_some() {
        // The `archive_after` pass: the oldest records still current, first.
        wanted.push((
            format!("ix_{name}_stale"),
            format!(
                "create index \"ix_{name}_stale\" on {table} (updated_at) where deleted_at is null and archived_at is null"
            ),
        ));
    }
    for set in &collection.unique {
        let cols: Vec<String> =
            set.iter().map(|f| compare_column(f, collection.field(f).is_some_and(|d| d.case_insensitive))).collect();
        let cols = cols.join(", ");
        let idx = format!("ux_{name}_{}", short_hash(&cols));
        wanted.push((
            idx.clone(),
            format!("create unique index \"{idx}\" on {table} (tenant, {cols}) where deleted_at is null"),
        ));
    }
    for field in collection.fields.values().filter(|f| f.index) {
        let col = compare_column(&field.name, field.case_insensitive);
        let idx = format!("ix_{name}_f_{}_{}", field.name, short_hash(&col));
        wanted.push((
            idx.clone(),
            format!("create index \"{idx}\" on {table} (tenant, {col}, id) where deleted_at is null"),
        ));
    }
    // An index whose definition changed under the same name (as `ix_{name}_current` gained
    // columns) is dropped and built again: SQLite keeps each index's `create` statement as
    // written, with only its first words upper-cased.
    let present: Vec<(String, String)> = {
        let mut stmt = tx.prepare(
            "select name, sql from sqlite_master where type = 'index' and tbl_name = ?1 and sql is not null",
        )?;
        stmt.query_map([format!("rec_{name}")], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let mut kept: Vec<&str> = Vec::new();
    for (idx, sql) in &present {
        if wanted.iter().any(|(w, want)| w == idx && same_statement(want, sql)) {
            kept.push(idx);
        } else {
            tx.execute_batch(&format!("drop index \"{idx}\"")).map_err(|e| err("drop index", e))?;
        }
    }
    for (idx, sql) in &wanted {
        if !kept.contains(&idx.as_str()) {
            tx.execute_batch(sql).map_err(|e| {
                if idx.starts_with("ux_") {
                    StoreError::Migration(format!(
                        "collections.{name}.unique: active records already share a value, so the unique set cannot be added ({e})"
                    ))
                } else {
                    err("create index", e)
                }
            })?;
        }
    }

    // Each field's type, with "/ci" while it is case-insensitive; removed fields are kept
    // so that re-adding one with another type is still refused.
    let definition: BTreeMap<String, String> = collection
        .fields
        .values()
        .map(|f| (f.name.clone(), format!("{}{}", f.ty.name(), if f.case_insensitive { "/ci" } else { "" })))
        .chain(applied.iter().filter(|(k, _)| !collection.fields.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    let def_json = serde_json::to_string(&definition).unwrap_or_default();
    tx.execute(
        "insert into collections (name, definition) values (?1, ?2) on conflict (name) do update set definition = excluded.definition",
        params![name, def_json],
    )?;
    baseline_versions(tx, collection)?;
    Ok(())
}

/// Gives every record of a collection from before history (SPEC section 14) its first
/// version — its state now, action `baseline`, valid from its `updated_at` — once per
/// collection. A collection created afterwards has no rows then and only gains the mark.
fn baseline_versions(tx: &Transaction<'_>, collection: &Collection) -> Result<(), StoreError> {
    let done: Option<String> = tx
        .query_row("select collection from history_baselines where collection = ?1", [&collection.name], |r| r.get(0))
        .optional()?;
    if done.is_some() {
        return Ok(());
    }
    let sql = super::records::TableSql::new(collection);
    let records: Vec<tombstone_domain::record::Record> = {
        let mut stmt = tx.prepare(sql.select())?;
        stmt.query_map([], |r| super::records::read_record(collection, r))?.collect::<Result<_, _>>()?
    };
    let mut insert = tx.prepare(super::tx::INSERT_VERSION)?;
    for record in &records {
        let v = tombstone_domain::history::NewVersion::of(
            collection,
            record,
            tombstone_domain::history::BASELINE_ACTION,
            None,
        );
        super::tx::insert_version(&mut insert, &v)?;
    }
    tx.execute("insert into history_baselines (collection) values (?1)", [&collection.name])?;
    Ok(())
}

/// Whether two `create index` statements are the same, as SQLite keeps them: case and runs
/// of white space aside.
fn same_statement(a: &str, b: &str) -> bool {
    let words = |s: &str| s.split_whitespace().map(str::to_ascii_lowercase).collect::<Vec<_>>();
    words(a) == words(b)
}

/// Fills a new folded column from the values already stored.
fn backfill_folded(tx: &Transaction<'_>, table: &str, field: &str) -> Result<(), StoreError> {
    let rows: Vec<(String, String, String)> = {
        let mut stmt =
            tx.prepare(&format!("select tenant, id, \"f_{field}\" from {table} where \"f_{field}\" is not null"))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?
    };
    let mut update = tx.prepare(&format!("update {table} set \"ci_{field}\" = ?1 where tenant = ?2 and id = ?3"))?;
    for (tenant, id, value) in rows {
        update.execute(params![fold_case(&value), tenant, id])?;
    }
    Ok(())
}
