//! The write path, once for every store.
//!
//! Each mutation — create, patch, delete with its cascade, restore, hold and release,
//! `:purge`, the restore of a whole deletion operation, a step of an eventual cascade — is
//! a function here: it loads what it needs, lets the domain decide
//! (`tombstone_domain::lifecycle`, `tombstone_domain::deletion`), writes the rows, the
//! audit entries and the outbox events, and completes the idempotency key, all through
//! [`Tx`], one transaction of one store. A store provides the transaction and the SQL; it
//! never decides. The SQLite store runs these functions on its writer thread, where every
//! step completes at once (`tombstone_domain::ready::now`); the PostgreSQL store awaits
//! them on its pool's connections.

pub(crate) mod deletions;
pub(crate) mod files;
pub(crate) mod keys;
pub(crate) mod records;
pub(crate) mod retention;

use std::collections::BTreeMap;

use tombstone_domain::audit::{AuditAction, NewAuditEntry};
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::deletion::{ChildFinder, DeletionStatus, EventualEdge, RecordRef};
use tombstone_domain::events::{EventType, NewEvent, record_event};
use tombstone_domain::history::NewVersion;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{DeletionMark, Hold, Record, Values};
use tombstone_domain::time::Timestamp;

use crate::{Erasure, ErasureStep, IdempotencyKey, StoreError, StoredKey, StoredResponse};

/// A new deletion operation, as its row records it.
#[derive(Debug, Clone)]
pub(crate) struct NewDeletion<'a> {
    pub id: &'a str,
    pub actor: &'a Actor,
    pub reason: Option<&'a str>,
    pub created_at: Timestamp,
    pub root: &'a RecordRef,
    pub status: DeletionStatus,
}

/// A stored deletion operation, as the rules need it.
#[derive(Debug, Clone)]
pub(crate) struct DeletionHead {
    pub actor: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub status: DeletionStatus,
}

/// One relation an eventual cascade still has to work through: the active children of
/// `parent_id` through `child_collection.field`, past `after_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueuedRelation {
    pub deletion_id: String,
    pub tenant: String,
    pub child_collection: String,
    pub field: String,
    pub parent_id: String,
    pub after_id: String,
}

/// One transaction of a store: what the rules read and write through. Every method runs
/// inside the transaction it belongs to; the store commits it when the rule succeeds and
/// rolls it back when the rule fails.
///
/// The contract a store must keep:
/// - [`Tx::get`] returns the row as this transaction sees it, and no other transaction can
///   change it before this one ends (SQLite: the single writer; PostgreSQL: `FOR UPDATE`).
/// - Writes that would give an active record a unique value another active record holds
///   fail with [`StoreError::UniqueConflict`] naming that record — whether the store asks
///   first (SQLite) or learns it from the violated index (PostgreSQL).
/// - [`Tx::append_audit`] continues the one hash chain without forking it, whatever other
///   transactions run; [`Tx::append_events`] gives events seqs that followers read in
///   commit order.
pub(crate) trait Tx {
    /// The record, deleted or not, locked for the rest of the transaction.
    async fn get(&mut self, collection: &Collection, tenant: &str, id: &str) -> Result<Option<Record>, StoreError>;
    /// Whether the record exists and is not deleted.
    async fn is_active(&mut self, collection: &str, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// Inserts a new record row (a client-supplied id already in use is a unique conflict
    /// on `id`).
    async fn insert(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError>;
    /// Rewrites the record's values, version and `updated_at`.
    async fn update_values(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError>;
    /// Writes the record's deletion mark (cleared when it has none: a restore), version
    /// and `updated_at`.
    async fn set_deletion(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError>;
    /// Writes the record's archive mark (cleared when it has none: an unarchive), version
    /// and `updated_at`.
    async fn set_archive(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError>;
    /// `(tenant, id)` of up to `limit` records neither deleted nor archived whose
    /// `updated_at` is at or before `cutoff`, oldest first (the `archive_after` pass).
    async fn stale_rows(
        &mut self,
        collection: &Collection,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Moves the record to its version and `updated_at` without other changes (a hold).
    async fn touch(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError>;
    /// Removes the record row.
    async fn remove(&mut self, collection: &Collection, tenant: &str, id: &str) -> Result<(), StoreError>;
    /// The active record other than `id` holding one of the collection's unique sets in
    /// `values`, and the set: where every conflict must be listed before anything is
    /// written (restoring a whole operation).
    async fn unique_conflict(
        &mut self,
        collection: &Collection,
        tenant: &str,
        id: &str,
        values: &Values,
    ) -> Result<Option<(String, Vec<String>)>, StoreError>;
    /// `(child id, parent id)` of the records of `child_collection` whose `field` is one of
    /// `parent_ids`, the active ones only or all.
    async fn children(
        &mut self,
        child_collection: &str,
        field: &str,
        tenant: &str,
        parent_ids: &[String],
        active_only: bool,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// The active records among `ids`.
    async fn active_rows(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<Record>, StoreError>;
    /// Soft-deletes the active records among `ids` with `mark`, each at its next version,
    /// its `updated_at` the mark's instant or, if the row changed later than that (a clock
    /// behind), one microsecond after its last change (`Timestamp::following`).
    async fn soft_delete_many(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
        mark: &DeletionMark,
    ) -> Result<(), StoreError>;
    /// Removes the active records among `ids`.
    async fn remove_active_many(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
    ) -> Result<(), StoreError>;

    /// Stores versions of records (§14), in order; append-only.
    async fn append_versions(&mut self, versions: Vec<NewVersion>) -> Result<(), StoreError>;
    /// The stored representation of version `n` of a record.
    async fn version_body(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        n: i64,
    ) -> Result<Option<String>, StoreError>;
    /// Removes every version of these records (`(tenant, id)` pairs of `collection`);
    /// returns how many rows went.
    async fn remove_versions(&mut self, collection: &str, rows: &[(String, String)]) -> Result<u64, StoreError>;

    /// Notes that the record references the stored object `sha256` (§15), kept until the
    /// record's row and versions go, and drops the pin of the upload that stored it.
    async fn add_file_ref(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        sha256: &str,
        upload_id: &str,
    ) -> Result<(), StoreError>;
    /// Drops every file reference of these records (`(tenant, id)` pairs of `collection`)
    /// and makes each object they referenced due for the files worker's check at `now`;
    /// returns how many distinct objects that was.
    async fn release_files(
        &mut self,
        collection: &str,
        rows: &[(String, String)],
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Removes these rows (`(tenant, id)` pairs), whatever their state.
    async fn remove_rows(&mut self, collection: &Collection, rows: &[(String, String)]) -> Result<(), StoreError>;

    /// Clears the stored payloads of a record's events; returns how many.
    async fn scrub_events(&mut self, tenant: &str, collection: &str, id: &str) -> Result<u64, StoreError>;
    /// Clears the stored responses of the idempotency keys about a record (a replay then
    /// answers 410); returns how many.
    async fn scrub_idempotent_responses(&mut self, tenant: &str, collection: &str, id: &str)
    -> Result<u64, StoreError>;
    /// Stores (or replaces) the receipt of an erased record.
    async fn put_erasure(&mut self, tenant: &str, receipt: &Erasure) -> Result<(), StoreError>;
    /// Records the steps of an erasure still to run after the commit; `event_seq` is its
    /// `record.erased` event (the indexer is past it once the search step is done).
    async fn add_erasure_jobs(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        steps: &[ErasureStep],
        event_seq: i64,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// The step, if any, that erasing from this store's files takes after the commit (old
    /// page images that may still hold the values).
    fn storage_erasure_step(&self) -> Option<ErasureStep>;

    /// Stores a new API key.
    async fn insert_key(&mut self, key: &StoredKey) -> Result<(), StoreError>;
    /// Removes a key; its tenant, or `None` when there was none.
    async fn delete_key(&mut self, id: &str) -> Result<Option<String>, StoreError>;

    /// Stores a new hold on a record.
    async fn insert_hold(&mut self, tenant: &str, collection: &str, id: &str, hold: &Hold) -> Result<(), StoreError>;
    /// Releases an active hold of the record; `None` when there is no such active hold,
    /// else the hold's case.
    async fn release_hold(
        &mut self,
        actor: &Actor,
        collection: &str,
        id: &str,
        hold_id: &str,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<Option<Option<String>>, StoreError>;

    /// Stores a new deletion operation with its root as its first record.
    async fn insert_deletion(&mut self, op: &NewDeletion<'_>) -> Result<(), StoreError>;
    /// Lists records in an operation (once each).
    async fn add_deletion_records(&mut self, deletion_id: &str, refs: &[RecordRef]) -> Result<(), StoreError>;
    /// The operation (of `tenant`, when given).
    async fn deletion(&mut self, tenant: Option<&str>, id: &str) -> Result<Option<DeletionHead>, StoreError>;
    /// The root of an operation.
    async fn deletion_root(&mut self, id: &str) -> Result<RecordRef, StoreError>;
    /// Every record an operation lists, by (collection, id).
    async fn deletion_records(&mut self, deletion_id: &str) -> Result<Vec<RecordRef>, StoreError>;
    /// Records an operation deleted so far, per collection.
    async fn deletion_counts(&mut self, deletion_id: &str) -> Result<BTreeMap<String, u64>, StoreError>;
    async fn set_deletion_status(&mut self, deletion_id: &str, status: DeletionStatus) -> Result<(), StoreError>;

    /// Queues eventual relations for the worker.
    async fn enqueue(&mut self, deletion_id: &str, tenant: &str, edges: &[EventualEdge]) -> Result<(), StoreError>;
    /// The oldest operation's next queued relation.
    async fn next_queued(&mut self) -> Result<Option<QueuedRelation>, StoreError>;
    /// The relations an operation still has queued.
    async fn queued(&mut self, deletion_id: &str) -> Result<Vec<QueuedRelation>, StoreError>;
    /// Active children of a queued relation past its `after_id`, by id, at most `limit`
    /// (`None`: all).
    async fn queued_children(
        &mut self,
        relation: &QueuedRelation,
        limit: Option<u32>,
    ) -> Result<Vec<String>, StoreError>;
    /// Moves a queued relation past `after_id`.
    async fn advance_queued(&mut self, relation: &QueuedRelation, after_id: &str) -> Result<(), StoreError>;
    /// Removes a queued relation.
    async fn drop_queued(&mut self, relation: &QueuedRelation) -> Result<(), StoreError>;
    /// Removes every queued relation of an operation.
    async fn clear_queued(&mut self, deletion_id: &str) -> Result<(), StoreError>;

    /// Appends entries to the audit chain, in order. (A store may write them with the next
    /// events or at the commit.)
    async fn append_audit(&mut self, entries: Vec<NewAuditEntry>) -> Result<(), StoreError>;
    /// Appends events to the outbox, in order; returns the seq of the last one.
    async fn append_events(&mut self, events: Vec<NewEvent>) -> Result<i64, StoreError>;
    /// Appends audit entries and events together (one round trip where the store can);
    /// returns the seqs of the last entry and of the last event.
    async fn append_changes(
        &mut self,
        entries: Vec<NewAuditEntry>,
        events: Vec<NewEvent>,
    ) -> Result<(i64, i64), StoreError>;
    /// Completes a claimed idempotency key with the response, in this transaction.
    async fn complete_idempotency(&mut self, key: &IdempotencyKey, response: &StoredResponse)
    -> Result<(), StoreError>;
}

/// The planner's view of a transaction: children through [`Tx::children`], in one tenant.
pub(crate) struct Finder<'t, T> {
    pub tx: &'t mut T,
    pub tenant: &'t str,
}

impl<T: Tx> ChildFinder for Finder<'_, T> {
    type Error = StoreError;

    async fn active_children(
        &mut self,
        child_collection: &str,
        field: &str,
        parent_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.tx.children(child_collection, field, self.tenant, parent_ids, true).await
    }

    async fn all_children(
        &mut self,
        child_collection: &str,
        field: &str,
        parent_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.tx.children(child_collection, field, self.tenant, parent_ids, false).await
    }
}

/// The collection `name` of the schema.
pub(crate) fn collection<'s>(schema: &'s Schema, name: &str) -> Result<&'s std::sync::Arc<Collection>, StoreError> {
    schema.collection(name).ok_or_else(|| StoreError::Internal(format!("unknown collection {name}")))
}

/// The audit entry of a change to a record by `actor`.
pub(crate) fn audit_entry(
    actor: &Actor,
    action: AuditAction,
    record: &Record,
    reason: Option<&str>,
    now: Timestamp,
) -> NewAuditEntry {
    NewAuditEntry {
        at: now,
        tenant: record.tenant.clone(),
        actor: actor.key_id.clone(),
        action,
        collection: Some(record.collection.clone()),
        record_id: Some(record.id.clone()),
        version: Some(record.version),
        deletion_id: record.deletion.as_ref().map(|d| d.deletion_id.clone()),
        reason: reason.map(str::to_string),
        request_id: Some(actor.request_id.clone()),
        hold_id: None,
        case: None,
    }
}

/// Records a change to a record: its audit entry and its event, and — unless the record
/// is gone (a purge, an erasure) — its version.
pub(crate) async fn record_change<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    (action, kind): (AuditAction, EventType),
    collection: &Collection,
    record: &Record,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    if kind != EventType::Purged && kind != EventType::Erased {
        tx.append_versions(vec![NewVersion::for_change(collection, record, action, &actor.key_id)]).await?;
    }
    let entry = audit_entry(actor, action, record, reason, now);
    tx.append_changes(vec![entry], vec![record_event(kind, collection, record, &actor.request_id, now)]).await?;
    Ok(())
}

/// Drops the file references of records whose rows and versions go, when their collection
/// has file fields: the objects only they referenced become due for removal by the files
/// worker, a durable job of this transaction. Returns how many objects they referenced.
pub(crate) async fn release_files<T: Tx>(
    tx: &mut T,
    collection: &Collection,
    rows: &[(String, String)],
    now: Timestamp,
) -> Result<u64, StoreError> {
    if !collection.has_files() || rows.is_empty() {
        return Ok(0);
    }
    tx.release_files(&collection.name, rows, now).await
}

/// Ends an operation: `done`, with its `deletion.completed` event (root, totals per
/// collection).
pub(crate) async fn complete_deletion<T: Tx>(
    tx: &mut T,
    deletion_id: &str,
    tenant: &str,
    request_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let root = tx.deletion_root(deletion_id).await?;
    let counts = tx.deletion_counts(deletion_id).await?;
    tx.set_deletion_status(deletion_id, DeletionStatus::Done).await?;
    tx.append_events(vec![completion_event(deletion_id, tenant, request_id, now, root, &counts)]).await.map(|_| ())
}

/// The `deletion.completed` event of an operation whose records are `counts` per
/// collection.
pub(crate) fn completion_event(
    deletion_id: &str,
    tenant: &str,
    request_id: &str,
    now: Timestamp,
    root: RecordRef,
    counts: &BTreeMap<String, u64>,
) -> NewEvent {
    let total: u64 = counts.values().sum();
    NewEvent {
        kind: EventType::DeletionCompleted,
        tenant: tenant.to_string(),
        collection: root.collection,
        record_id: root.id,
        version: None,
        deletion_id: Some(deletion_id.to_string()),
        occurred_at: now,
        request_id: Some(request_id.to_string()),
        data: Some(serde_json::json!({"status": DeletionStatus::Done.as_str(), "records": total, "counts": counts})),
    }
}
