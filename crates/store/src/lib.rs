//! Tombstone's storage layer: the store traits by area ([`RecordStore`], [`DeletionStore`],
//! [`RetentionStore`], [`EventStore`], [`KeyStore`], [`WorkerStore`], [`HistoryStore`], and [`Store`] over them), the write
//! rules every store shares (`rules`, over the transaction interface `rules::Tx`), and
//! two stores: embedded SQLite ([`SqliteStore`]) and PostgreSQL ([`PgStore`]).
//!
//! A store executes decisions the domain made (see `tombstone_domain::lifecycle`); it
//! owns transactions, so that a state change and everything that must accompany it commit
//! together or not at all.

pub mod cache;
pub mod files;
pub mod history;
pub mod postgres;
pub mod priority;
pub mod redis_cache;
pub(crate) mod rules;
pub mod sqlite;
pub mod telemetry;

use std::sync::Arc;

use async_trait::async_trait;
use tombstone_domain::audit::{AuditEntry, ChainError};
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::deletion::{DeletionPlan, RecordRef};
use tombstone_domain::events::Event;
use tombstone_domain::lifecycle::{Actor, ArchiveRequest, DeleteRequest, IfMatch};
use tombstone_domain::query::{ListQuery, Position};
use tombstone_domain::record::{Hold, Patch, Record, ValidationErrors};
use tombstone_domain::scope::Scope;
use tombstone_domain::time::Timestamp;
use tombstone_domain::webhook::DeliveryError;

pub use cache::{MemoryCache, RecordCache, SharedRecord, View};
pub use files::{DueObject, FileRef, FileStore, FileUpload, KnownObject};
pub use history::{HistoryStore, VersionPage, VersionRow};
pub use postgres::{GroupStats, PgStore, ScratchDatabase};
pub use redis_cache::RedisCache;
pub use sqlite::SqliteStore;

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No such record (or it belongs to another tenant, or it is in a state where it
    /// must look absent).
    #[error("not found")]
    NotFound,
    /// `If-Match` did not match the current version.
    #[error("precondition failed: current version is {current}")]
    PreconditionFailed { current: i64 },
    /// An active record already holds the unique value (or the client-supplied id).
    #[error("unique conflict with {conflicting_id} on {fields:?}")]
    UniqueConflict { conflicting_id: String, fields: Vec<String> },
    /// `:purge` of a record that is not soft-deleted.
    #[error("the record is not deleted")]
    NotDeleted,
    /// The record is under a legal hold.
    #[error("the record is under a legal hold")]
    LegalHold,
    /// The record is archived, and archived records are read-only (§17).
    #[error("the record is archived; unarchive it first")]
    Archived,
    /// Active `restrict` children block the delete.
    #[error("{total} active records refer to it through restrict relations")]
    Restrict { blockers: Vec<RecordRef>, total: u64 },
    /// The record points at parents that are deleted (or gone).
    #[error("its parent is deleted")]
    ParentDeleted { parents: Vec<RecordRef> },
    /// A deletion operation cannot be restored as a whole.
    #[error("the operation cannot be restored: {} conflicts", .0.len())]
    RestoreConflicts(Vec<RestoreConflict>),
    /// The merged record is invalid.
    #[error("validation failed: {0}")]
    Validation(ValidationErrors),
    /// The schema cannot be applied to the existing database.
    #[error("{0}")]
    Migration(String),
    /// Another request under the same `Idempotency-Key` runs, or answered first (in
    /// another process on the same database): this one changed nothing.
    #[error("another request with this idempotency key is running or has answered")]
    IdempotencyConflict,
    /// The database could not be reached or answered with an error.
    #[error("storage error: {0}")]
    Internal(String),
    /// Another writer (another process on the same file) held the database longer than the
    /// busy timeout, or a table was locked. Nothing was written; the same call may succeed
    /// a moment later.
    #[error("the database is busy: {source}")]
    Busy {
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The disk (or the file system's quota) is full: the transaction was rolled back and
    /// nothing was written. Writes succeed again, without a restart, once space returns.
    #[error("the storage is full: {source}")]
    StorageFull {
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The storage failed to read or write (an I/O error, a file that cannot be opened):
    /// the transaction was rolled back.
    #[error("the storage failed: {source}")]
    StorageFailed {
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A unique or primary-key constraint the store did not check before writing (it checks
    /// the ones it knows; this is the database catching one it did not, e.g. a race with
    /// another process). Nothing was written.
    #[error("a unique constraint was violated: {source}")]
    Constraint {
        /// The columns named by the database (`sku`), without their table.
        fields: Vec<String>,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Any other database error, kept with its cause for the log. (Each of these variants
    /// shows SQLite's message in its own text too: workers log errors with `%e`.)
    #[error("database error: {source}")]
    Database {
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

/// Any error and its causes, outermost first, joined by `: `, each cause said once (rusqlite
/// and reqwest repeat their source's message in their own).
#[must_use]
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

impl StoreError {
    /// The error and its causes, outermost first, joined by `: ` — what a log line of an
    /// unexpected failure shows (see [`cause_chain`]).
    #[must_use]
    pub fn cause_chain(&self) -> String {
        cause_chain(self)
    }

    /// Whether the failure is a passing condition of the storage (busy, full, failing),
    /// after which nothing was written and the same call may succeed later.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Busy { .. } | Self::StorageFull { .. } | Self::StorageFailed { .. })
    }
}

/// Classifies a database error by SQLite's result code, keeping it as the source: the
/// code, not the message, says whether the client may retry (busy, full) or the server
/// has a bug (anything else).
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        let Some(code) = e.sqlite_error_code() else { return Self::Database { source: Arc::new(e) } };
        let unique = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _)
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        );
        match code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Self::Busy { source: Arc::new(e) },
            ErrorCode::DiskFull => Self::StorageFull { source: Arc::new(e) },
            ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => Self::StorageFailed { source: Arc::new(e) },
            ErrorCode::ConstraintViolation if unique => {
                let fields = match &e {
                    rusqlite::Error::SqliteFailure(_, Some(message)) => unique_fields(message),
                    _ => Vec::new(),
                };
                Self::Constraint { fields, source: Arc::new(e) }
            }
            _ => Self::Database { source: Arc::new(e) },
        }
    }
}

/// The columns of SQLite's `UNIQUE constraint failed: t.tenant, t.sku`, without their
/// table and without `tenant` (every unique set is per tenant; the client never names it).
fn unique_fields(message: &str) -> Vec<String> {
    let Some((_, columns)) = message.split_once("constraint failed: ") else { return Vec::new() };
    columns
        .split(", ")
        .map(|c| c.rsplit('.').next().unwrap_or(c).trim().to_string())
        .filter(|c| !c.is_empty() && c != "tenant")
        .collect()
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Record>,
    /// Where the next page starts, when there is one.
    pub next: Option<Position>,
    /// Present when the query asked for `count=true`.
    pub total: Option<u64>,
}

impl Page {
    /// The page of a list read with one row more than its limit: the extra row only says
    /// that there is a next page, which starts after the last row kept.
    pub(crate) fn of(mut items: Vec<Record>, query: &ListQuery, total: Option<u64>) -> Self {
        let limit = query.limit as usize;
        let next = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(|r| Position { value: query.sort.key.value_of(r), id: r.id.clone() })
        });
        Self { items, next: next.flatten(), total }
    }
}

/// What a DELETE did.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    /// The record is now soft-deleted.
    SoftDeleted { deletion_id: String, record: Box<Record> },
    /// It was already soft-deleted; nothing changed.
    AlreadyDeleted { deletion_id: String },
    /// The row is gone (hard-delete collection).
    HardDeleted { deletion_id: String },
}

/// What a `:restore` did.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreOutcome {
    Restored(Record),
    /// It was active already; nothing changed.
    AlreadyActive(Record),
}

/// A key as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    pub created_at: Timestamp,
}

/// The scope of an idempotency key: who sent it and which key it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub tenant: String,
    pub api_key: String,
    pub key: String,
}

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// Header name and value pairs to replay (Location, ETag, …).
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The record the response is about, if any (a replay of an erased record is a 410).
    pub record: Option<(String, String)>,
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// New (or expired): the caller runs the request and completes the key.
    Claimed,
    /// The first request is still running.
    InFlight,
    /// Used before with another request body.
    Mismatch,
    /// Used before with this body: replay this.
    Replay(StoredResponse),
}

/// Filters of the audit log listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub collection: Option<String>,
    pub record_id: Option<String>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub since: Option<Timestamp>,
    /// Entries with a larger seq only.
    pub after: Option<i64>,
    pub limit: u32,
}

/// Filters of the event feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Events with a larger seq only.
    pub after: i64,
    pub collection: Option<String>,
    /// Empty: every type.
    pub types: Vec<String>,
    pub limit: u32,
}

/// A configured webhook endpoint, as the relay and the store see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Stable id derived from the URL (`wh_…`).
    pub id: String,
    pub url: String,
    /// Event types to deliver; empty means all.
    pub events: Vec<String>,
    /// Deliver only this tenant's events.
    pub tenant: Option<String>,
}

/// An endpoint's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    pub id: String,
    pub url: String,
    pub cursor: i64,
    pub disabled_at: Option<Timestamp>,
    pub disabled_reason: Option<String>,
    /// When it left the config (it is skipped by fan-out, clean-up and the backlog until
    /// it comes back).
    pub removed_at: Option<Timestamp>,
}

/// A webhook delivery and its attempts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub event_seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub tenant: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// A delivery that is due, with its event.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub delivery: Delivery,
    /// `None` when the event is no longer in the outbox: the relay cancels the delivery
    /// rather than let it hold its record's lane.
    pub event: Option<Event>,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered { status: u16 },
    /// Failed; try again at `next_attempt_at`.
    Retry { status: Option<u16>, error: DeliveryError, next_attempt_at: Timestamp },
    /// Failed for the last time.
    GiveUp { status: Option<u16>, error: DeliveryError },
    /// Not attempted and never will be (its event or its endpoint is gone).
    Cancelled { error: DeliveryError },
    /// 410 Gone: the endpoint is disabled and its pending deliveries cancelled.
    EndpointGone,
}

/// What asking for a delivery to be sent again came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivery {
    /// Pending again, due now.
    Pending(Box<Delivery>),
    /// No such delivery in the tenant.
    NotFound,
    /// Its event was cleaned out of the outbox: there is nothing to send.
    EventGone,
    /// Its endpoint left the config.
    EndpointRemoved,
}

/// Filters of the deliveries listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    pub status: Option<String>,
    pub endpoint_id: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
}

/// Where a trash page ended: the newest-first order is (deleted_at, collection, id)
/// descending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashPosition {
    pub deleted_at: Timestamp,
    pub collection: String,
    pub id: String,
}

/// Filters of the trash listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrashQuery {
    pub deleted_since: Option<Timestamp>,
    pub deleted_before: Option<Timestamp>,
    pub deleted_by: Option<String>,
    pub purge_before: Option<Timestamp>,
    pub after: Option<TrashPosition>,
    pub limit: u32,
}

/// What one purge batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeBatch {
    /// Rows hard-deleted.
    pub purged: u64,
    /// Purge is paused: nothing was done.
    pub paused: bool,
}

/// The outcome of the last whole-chain check of the audit log: one row for the deployment
/// (table `audit_checks`), written by whichever replica ran the check, so every replica
/// answers the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    /// When the check finished.
    pub checked_at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Entries verified: the whole chain when intact (`None` when broken).
    pub entries: Option<u64>,
    /// The newest entry's seq when the result was stored (0: an empty log).
    pub head_seq: i64,
    /// The first broken entry, `None` when the chain is intact.
    pub broken: Option<BrokenEntry>,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenEntry {
    /// The seq of the first entry that fails (for a log cut short: the first missing one).
    pub seq: i64,
    /// The tenant of that entry (`None` when no entry has that seq any more).
    pub tenant: Option<String>,
    /// What is wrong, in words.
    pub problem: String,
}

/// Stores a check's outcome (both stores speak this SQL): the head and the broken entry's
/// tenant come from the log itself; an older result never replaces a newer one (two
/// checks around a lease takeover).
pub(crate) const SAVE_AUDIT_CHECK_SQL: &str = "insert into audit_checks \
     (id, checked_at, duration_ms, entries, head_seq, broken_seq, broken_tenant, problem) \
     values (1, $1, $2, $3, (select coalesce(max(seq), 0) from audit), $4, (select tenant from audit where seq = $4), $5) \
     on conflict (id) do update set checked_at = excluded.checked_at, duration_ms = excluded.duration_ms, \
     entries = excluded.entries, head_seq = excluded.head_seq, broken_seq = excluded.broken_seq, \
     broken_tenant = excluded.broken_tenant, problem = excluded.problem \
     where excluded.checked_at >= audit_checks.checked_at";

/// Reads the last check (both stores).
pub(crate) const AUDIT_CHECK_SQL: &str = "select checked_at, duration_ms, entries, head_seq, broken_seq, broken_tenant, problem \
     from audit_checks where id = 1";

/// The parameters of [`SAVE_AUDIT_CHECK_SQL`]: entries, broken seq, problem.
pub(crate) fn audit_check_params(outcome: &Result<u64, ChainError>) -> (Option<i64>, Option<i64>, Option<String>) {
    match outcome {
        Ok(n) => (Some(i64::try_from(*n).unwrap_or(i64::MAX)), None, None),
        Err(e) => (None, Some(broken_seq(e)), Some(e.to_string())),
    }
}

/// A row of [`AUDIT_CHECK_SQL`] as a value.
#[allow(clippy::too_many_arguments)]
pub(crate) fn audit_check_from(
    checked_at: i64,
    duration_ms: i64,
    entries: Option<i64>,
    head_seq: i64,
    broken_seq: Option<i64>,
    broken_tenant: Option<String>,
    problem: Option<String>,
) -> AuditCheck {
    AuditCheck {
        checked_at: Timestamp::from_micros(checked_at),
        duration_ms: u64::try_from(duration_ms).unwrap_or(0),
        entries: entries.map(|n| u64::try_from(n).unwrap_or(0)),
        head_seq,
        broken: broken_seq.map(|seq| BrokenEntry { seq, tenant: broken_tenant, problem: problem.unwrap_or_default() }),
    }
}

/// The count of a list (both stores speak this SQL; `clause` is the list's WHERE clause,
/// whose columns may be qualified with the alias `t`). Undeleted records, archived or not
/// (`include=archived`), have no index of their own: they are counted as the current ones
/// plus the archived ones, each inside its own partial index, rather than through the
/// table beside every deleted row. The two conditions split the same rows, so the sum is
/// the count.
pub(crate) fn list_count_sql(table: &str, clause: &str, query: &ListQuery) -> String {
    use tombstone_domain::query::{ArchivedScope, DeletedScope};
    if query.scope == DeletedScope::Active && query.archived == ArchivedScope::Include {
        format!(
            "select (select count(*) from {table} t where {clause} and t.archived_at is null) \
             + (select count(*) from {table} t where {clause} and t.archived_at is not null)"
        )
    } else {
        format!("select count(*) from {table} t where {clause}")
    }
}

/// A walk of a list's ids, in the list's order and in batches, keeping those a search
/// matched ([`Candidates::Fingerprints`](tombstone_domain::query::Candidates)) until `want`
/// are kept. Each store feeds it batches of the size it asks for.
pub(crate) struct Walk<'a> {
    set: &'a tombstone_domain::query::Fingerprints,
    /// How many matches a page needs; `None` for a count (every match, no ids kept).
    want: Option<u64>,
    batch: usize,
    hits: Vec<String>,
    found: u64,
}

impl<'a> Walk<'a> {
    /// A walk for a page: its first `want` matches.
    pub(crate) fn page(set: &'a tombstone_domain::query::Fingerprints, want: usize) -> Self {
        Self { set, want: Some(want as u64), batch: set.first_batch(want), hits: Vec::new(), found: 0 }
    }

    /// A walk for a count: every match, counted, no ids kept.
    pub(crate) fn count(set: &'a tombstone_domain::query::Fingerprints) -> Self {
        Self { set, want: None, batch: tombstone_domain::query::MAX_WALK_BATCH, hits: Vec::new(), found: 0 }
    }

    /// How many ids the next batch should hold.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// Takes the next batch of ids; true when the walk is over (enough found, or the batch
    /// came short: the list has no more rows).
    pub(crate) fn take(&mut self, ids: Vec<String>) -> bool {
        let last = ids.len() < self.batch;
        let fps: Vec<u128> = ids.iter().map(|id| tombstone_domain::query::fingerprint(id)).collect();
        for (id, hit) in ids.into_iter().zip(self.set.hits(&fps)) {
            if hit {
                self.found += 1;
                if let Some(want) = self.want {
                    self.hits.push(id);
                    if self.found == want {
                        return true;
                    }
                }
            }
        }
        // A walk that found less than hoped reads twice as much next time.
        self.batch = (self.batch * 2).min(tombstone_domain::query::MAX_WALK_BATCH);
        last
    }

    /// The ids kept, in the list's order, and how many matched.
    pub(crate) fn finish(self) -> (Vec<String>, u64) {
        (self.hits, self.found)
    }
}

/// The seq a chain error points at: the first entry that fails, or for a log cut short
/// at its end, the first missing one.
pub(crate) fn broken_seq(e: &ChainError) -> i64 {
    match e {
        ChainError::BrokenLink { seq } | ChainError::BadHash { seq } | ChainError::BadOrder { seq } => *seq,
        ChainError::Truncated { last, .. } => last + 1,
    }
}

/// What is due for purge in one collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeDue {
    pub collection: String,
    /// Past `purge_at` and not held.
    pub due_now: u64,
    /// Up to 100 ids of those.
    pub sample: Vec<String>,
    /// Coming due within the horizon (not held), not counting those due now.
    pub due_soon: u64,
    /// Past `purge_at` but held.
    pub held: u64,
}

/// The dashboard's counts of one collection for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionCounts {
    pub collection: String,
    /// Neither deleted nor archived.
    pub active: u64,
    /// Archived and not deleted (§17).
    pub archived: u64,
    /// Soft-deleted and not purged yet (the trash).
    pub deleted: u64,
    /// Soft-deleted, not held, and due for purge before the horizon.
    pub expiring: u64,
    /// Under at least one active legal hold, deleted or not.
    pub held: u64,
}

/// What an erasure removed, and what it still has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub collection: String,
    pub id: String,
    pub erased_at: Timestamp,
    pub audit_seq: i64,
    pub versions: u64,
    pub events: u64,
    pub idempotent_responses: u64,
    /// Stored files (objects) the erased records referenced; each goes with its last
    /// reference, by the files worker, within a second of the commit.
    pub files: u64,
    /// Records erased with it, per collection, the root included (cascade relations take
    /// their children along).
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Steps still to run after the commit; empty once every copy is gone.
    pub pending: Vec<ErasureStep>,
}

/// A step of an erasure that runs after its commit, as durable work: a row written in the
/// erasure's transaction and removed only once the step is done, so a crash in between
/// leaves the work to be finished after restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErasureStep {
    /// The search index still holds the record's terms (until the indexer has taken the
    /// document out and rewritten the segments that held it).
    Search,
    /// Old page images in the WAL may still hold the values (until a truncating checkpoint).
    Wal,
    /// PostgreSQL: the deleted and scrubbed rows stay in their tables' pages as dead tuples
    /// (until a vacuum prunes them).
    Vacuum,
}

impl ErasureStep {
    /// The step's name, as stored and as shown in the receipt's `pending`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::Wal => "wal",
            Self::Vacuum => "vacuum",
        }
    }

    /// The step of a stored name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "search" => Some(Self::Search),
            "wal" => Some(Self::Wal),
            "vacuum" => Some(Self::Vacuum),
            _ => None,
        }
    }
}

/// Why one record of an operation cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreConflict {
    pub collection: String,
    pub id: String,
    /// `unique-conflict`, `parent-deleted`, `purged` or `window-elapsed`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicting_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<RecordRef>,
}

/// Whether a deletion has reached one sink. Tenants read it: it names no URL and carries
/// only an error class (see `tombstone_domain::webhook::DeliveryError`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SinkStatus {
    /// `done`, `pending` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where a trash record sorts: newest first over (deleted_at, collection, id).
fn trash_key(r: &Record) -> (Option<Timestamp>, &str, &str) {
    (r.deletion.as_ref().map(|d| d.deleted_at), &r.collection, &r.id)
}

/// One trash page from the pages each collection gave (`limit` each at most): newest first
/// over (deleted_at, collection, id), at most `limit` in all.
pub(crate) fn merge_trash(mut all: Vec<Record>, limit: u32) -> Vec<Record> {
    all.sort_by(|a, b| trash_key(b).cmp(&trash_key(a)));
    all.truncate(limit as usize);
    all
}

/// Where a deletion operation stands at one webhook endpoint, from its deliveries' states
/// (`(status, last_error)`), the operation's newest event and the endpoint's cursor: failed
/// if any delivery failed or was cancelled; pending while one is pending or the endpoint
/// has not fanned out the newest event yet (unless disabled or removed); done otherwise.
/// `None` for an endpoint that left the config before the operation's events reached it:
/// not a sink of this operation.
pub(crate) fn sink_status(
    states: &[(String, Option<String>)],
    newest_event: Option<i64>,
    cursor: i64,
    disabled: bool,
    removed: bool,
) -> Option<SinkStatus> {
    if removed && states.is_empty() {
        return None;
    }
    let failed = states.iter().find(|(s, _)| s == "failed" || s == "cancelled");
    Some(if let Some((_, error)) = failed {
        SinkStatus { status: "failed".into(), last_error: error.clone() }
    } else if states.iter().any(|(s, _)| s == "pending")
        || newest_event.is_some_and(|n| n > cursor && !disabled && !removed)
    {
        SinkStatus { status: "pending".into(), last_error: states.iter().find_map(|(_, e)| e.clone()) }
    } else {
        SinkStatus { status: "done".into(), last_error: None }
    })
}

/// A deletion operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionOp {
    pub id: String,
    pub status: String,
    pub actor: String,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub root: RecordRef,
    /// One page of its records (see [`RecordsPage`]): the root first on the first page.
    pub records: Vec<RecordRef>,
    /// Where the next page starts (the last record of this one), when there is one.
    pub records_next: Option<RecordRef>,
    /// How many records it deleted so far, the root included.
    pub records_total: u64,
    /// Relations its eventual cascade still has to work through.
    pub pending_relations: u64,
    pub counts: std::collections::BTreeMap<String, u64>,
    /// The earliest `purge_at` among its records still deleted by it.
    pub restorable_until: Option<Timestamp>,
    /// Per webhook endpoint id.
    pub webhooks: std::collections::BTreeMap<String, SinkStatus>,
    /// The newest outbox event of the operation (sinks are done once past it).
    pub last_event_seq: Option<i64>,
}

/// Which records of a deletion operation to read: the root first, then the others by
/// (collection, id), `limit` at a time, starting after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsPage {
    /// The last record of the previous page (`None`: the first page).
    pub after: Option<RecordRef>,
    pub limit: u32,
}

/// How long an idempotency key is kept.
pub const IDEMPOTENCY_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;
/// After this long an in-flight claim is taken to be abandoned (its request was cancelled,
/// or on PostgreSQL its process died). It must exceed the longest a create holds its claim
/// before it commits or fails: the pool's wait for a connection (10 s) plus its statements'
/// lock waits (PostgreSQL's default `lock_timeout`, 5 s). Even a request that outlives it
/// creates nothing twice: its completion is fenced by its own claim and refused once
/// another request took the key over.
pub const IDEMPOTENCY_STALE_MICROS: i64 = 30 * 1_000_000;

/// Records: create, read, list, patch, delete, restore, and the idempotency keys that make
/// their writes safe to retry. Every mutation is one transaction with its audit entry and
/// outbox event.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Inserts a new record (version 1). When `idempotency` is given, the key is
    /// completed with the response in the same transaction.
    async fn create_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        record: Record,
        idempotency: Option<(IdempotencyKey, StoredResponse)>,
    ) -> Result<Record, StoreError>;

    /// The record, deleted or not; `None` if it does not exist in the tenant. From the
    /// cache when there is one: a hit is the cached entry itself, not a copy.
    async fn get_shared(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        id: &str,
    ) -> Result<Option<Arc<SharedRecord>>, StoreError>;

    /// The record, deleted or not; `None` if it does not exist in the tenant.
    async fn get_record(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        id: &str,
    ) -> Result<Option<Record>, StoreError> {
        Ok(self.get_shared(tenant, collection, id).await?.map(SharedRecord::into_record))
    }

    /// One page of records.
    async fn list_records(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        query: &ListQuery,
    ) -> Result<Page, StoreError>;

    /// Applies a merge patch to an active record.
    async fn patch_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        patch: Patch,
        now: Timestamp,
    ) -> Result<Record, StoreError>;

    /// Soft- (or, for hard collections, hard-) deletes a record.
    async fn delete_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: DeleteRequest,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError>;

    /// Restores a soft-deleted record inside its recovery window.
    async fn restore_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<RestoreOutcome, StoreError>;

    /// Archives or unarchives a record (§17): the record afterwards, unchanged when it was
    /// already as asked.
    ///
    /// # Errors
    /// `NotFound` (absent or deleted), `PreconditionFailed`.
    async fn archive_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: ArchiveRequest,
        if_match: Option<IfMatch>,
        now: Timestamp,
    ) -> Result<Record, StoreError>;
    /// `(tenant, id)` of every active record of a collection.
    async fn active_ids(&self, collection: &Arc<Collection>) -> Result<Vec<(String, String)>, StoreError>;

    /// Claims an idempotency key for a request with this fingerprint.
    async fn claim_idempotency(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<IdempotencyClaim, StoreError>;
    /// Completes a claimed key with a response that changed nothing (an error answer).
    async fn complete_idempotency(&self, key: &IdempotencyKey, response: StoredResponse) -> Result<(), StoreError>;
    /// Forgets a claim so the request can be retried (the server failed).
    async fn release_idempotency(&self, key: &IdempotencyKey) -> Result<(), StoreError>;
    /// Deletes idempotency keys older than `before`; returns how many.
    async fn expire_idempotency(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// Deletion operations: the blast radius of a delete, the operation and its records, its
/// restore as a whole, eventual cascades and the trash.
#[async_trait]
pub trait DeletionStore: Send + Sync + 'static {
    /// The dry run of deleting a record by `actor`: the plan the DELETE would carry out,
    /// decided by the same rules (`None`: no such record in the tenant; an already deleted
    /// record plans nothing). A restrict shows as blockers in the plan.
    ///
    /// # Errors
    /// What the DELETE itself would fail with before planning, `LegalHold` among them.
    async fn plan_deletion(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<DeletionPlan>, StoreError>;
    /// A deletion operation of the tenant.
    async fn get_deletion(
        &self,
        tenant: &str,
        id: &str,
        records: &RecordsPage,
    ) -> Result<Option<DeletionOp>, StoreError>;
    /// Restores exactly the records an operation deleted, all or nothing.
    async fn restore_deletion(&self, actor: &Actor, id: &str, now: Timestamp) -> Result<Vec<Record>, StoreError>;
    /// Works through eventual cascades: at most `batch` children per step; returns how
    /// many records were deleted.
    async fn run_eventual(&self, batch: u32, now: Timestamp) -> Result<u64, StoreError>;

    /// Soft-deleted records still inside their window, newest first, over `collections`.
    async fn list_trash(
        &self,
        tenant: &str,
        collections: &[Arc<Collection>],
        query: &TrashQuery,
        now: Timestamp,
    ) -> Result<Vec<Record>, StoreError>;
}

/// Retention: legal holds, purge (one record, batches, the preview, the pause), erasure,
/// and the per-collection counts the dashboard shows.
#[async_trait]
pub trait RetentionStore: Send + Sync + 'static {
    /// Places a legal hold on a record (deleted or not).
    async fn place_hold(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        case: Option<String>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Hold, StoreError>;
    /// Releases one hold; the record afterwards. `NotFound` for an unknown or released hold.
    async fn release_hold(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        hold_id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Record, StoreError>;
    /// The active holds of these records.
    async fn active_holds(
        &self,
        tenant: &str,
        collection: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<Hold>>, StoreError>;

    /// Hard-deletes one soft-deleted record now (`:purge`), whether or not purge is paused.
    async fn purge_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Purges up to `limit` records of a collection past `purge_at` and not held, oldest
    /// `purge_at` first, in one transaction; nothing when purge is paused.
    async fn purge_batch(
        &self,
        collection: &Arc<Collection>,
        now: Timestamp,
        limit: u32,
        run_id: &str,
    ) -> Result<PurgeBatch, StoreError>;
    /// Archives up to `limit` active, unarchived records of a collection last updated at or
    /// before `cutoff` (its `archive_after`), oldest first, in one transaction, each as the
    /// actor `system` with its audit entry and `record.archived` event; how many.
    async fn archive_batch(
        &self,
        collection: &Arc<Collection>,
        cutoff: Timestamp,
        now: Timestamp,
        limit: u32,
        run_id: &str,
    ) -> Result<u64, StoreError>;
    /// What is due now and within `horizon` after `now`, per collection (one tenant, or all).
    async fn purge_due(
        &self,
        tenant: Option<&str>,
        collections: &[Arc<Collection>],
        now: Timestamp,
        horizon: Timestamp,
    ) -> Result<Vec<PurgeDue>, StoreError>;
    /// Per collection, for one tenant: active, deleted, expiring before `horizon`, held.
    async fn collection_counts(
        &self,
        tenant: &str,
        collections: &[Arc<Collection>],
        horizon: Timestamp,
    ) -> Result<Vec<CollectionCounts>, StoreError>;
    /// Pauses or resumes purge (kept in the database, so every process obeys it).
    async fn set_purge_paused(&self, paused: bool) -> Result<(), StoreError>;
    /// Whether purge is paused.
    async fn purge_paused(&self) -> Result<bool, StoreError>;

    /// Erases a record and every stored copy of its values.
    async fn erase_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Erasure, StoreError>;
    /// Whether the record was erased.
    async fn is_erased(&self, tenant: &str, collection: &str, id: &str) -> Result<bool, StoreError>;
    /// The receipt of an erased record as it stands now (`None`: never erased), with the
    /// steps still pending.
    async fn erasure_receipt(&self, tenant: &str, collection: &str, id: &str) -> Result<Option<Erasure>, StoreError>;
    /// Runs the pending `wal` steps: a truncating checkpoint, waiting at most `wait` for
    /// readers still on an older snapshot. Returns how many steps it finished.
    async fn finish_erasure_wal(&self, wait: std::time::Duration) -> Result<u64, StoreError>;
    /// The outbox seqs of the `record.erased` events whose `search` step is pending.
    async fn pending_erasure_searches(&self) -> Result<Vec<i64>, StoreError>;
    /// Marks the `search` steps of erasures up to outbox seq `through` done.
    async fn finish_erasure_searches(&self, through: i64) -> Result<u64, StoreError>;
}

/// What happened: the audit chain, the outbox (the event feed, the live streams and the
/// search indexer follow it) and the webhook endpoints and deliveries fed from it.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Audit entries of a tenant, oldest first.
    async fn list_audit(&self, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// Recomputes the whole hash chain; the inner result is the count of verified entries
    /// or the first broken one.
    async fn verify_audit(&self) -> Result<Result<u64, ChainError>, StoreError>;
    /// The last whole-chain check (`None`: none has run yet).
    async fn audit_check(&self) -> Result<Option<AuditCheck>, StoreError>;
    /// Stores the outcome of a check made with [`Self::verify_audit`], replacing the last
    /// one; the head and the broken entry's tenant are read from the log as it stands.
    async fn save_audit_check(
        &self,
        checked_at: Timestamp,
        duration_ms: u64,
        outcome: &Result<u64, ChainError>,
    ) -> Result<(), StoreError>;

    /// Events of a tenant from the outbox, in commit order.
    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<Event>, StoreError>;
    /// Events of every tenant from the outbox, in commit order: what the live event hub
    /// fans out to the open streams of each tenant.
    async fn list_all_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;
    /// The seq of the newest event of any tenant (0 when none).
    async fn last_event_seq(&self) -> Result<i64, StoreError>;
    /// Woken (`notify_waiters`) after every commit made through this store that wrote
    /// outbox rows, once it is committed; handlers that change what a follower would do
    /// without writing an event (re-enabling an endpoint, a redelivery) wake it too.
    /// Commits of other processes are seen only by polling, so followers keep a slow poll
    /// as a safety net. A follower creates its `notified()` future *before* it looks for
    /// work: `notify_waiters` reaches every future created before the call, polled or not,
    /// on any runtime.
    fn changes(&self) -> Arc<tokio::sync::Notify>;

    /// Changed records after outbox seq `after` (any tenant), oldest first, with the event
    /// type: what the search indexer consumes.
    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<(i64, cache::CacheKey, String)>, StoreError>;

    /// Registers the configured endpoints; a new one (or one that comes back after leaving
    /// the config) starts after the newest event. Endpoints that left the config are marked
    /// removed at `now` and their pending deliveries cancelled.
    async fn sync_webhook_endpoints(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
    ) -> Result<Vec<EndpointState>, StoreError>;
    /// The state of every endpoint ever registered.
    async fn webhook_endpoints(&self) -> Result<Vec<EndpointState>, StoreError>;
    /// Re-enables a disabled endpoint; `false` if unknown.
    async fn enable_webhook_endpoint(&self, id: &str) -> Result<bool, StoreError>;
    /// Creates deliveries for events past each enabled endpoint's cursor (at most
    /// `batch` events per endpoint) and advances the cursors, in one transaction.
    async fn fan_out_webhooks(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
        batch: u32,
    ) -> Result<u64, StoreError>;
    /// Due deliveries that are the oldest pending one of their record at their endpoint.
    async fn due_deliveries(&self, now: Timestamp, limit: u32) -> Result<Vec<DueDelivery>, StoreError>;
    /// Records an attempt's outcome.
    async fn record_attempt(&self, delivery_id: &str, at: Timestamp, outcome: AttemptOutcome)
    -> Result<(), StoreError>;
    /// A tenant's deliveries, oldest first.
    async fn list_deliveries(&self, tenant: &str, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;
    /// Makes a delivery of the tenant pending again, due now, unless its event or its
    /// endpoint is gone.
    async fn redeliver(&self, tenant: &str, id: &str, now: Timestamp) -> Result<Redelivery, StoreError>;
    /// Pending deliveries of endpoints still configured.
    async fn webhook_backlog(&self) -> Result<u64, StoreError>;
    /// Deletes outbox rows older than `before` that every enabled, still configured
    /// endpoint has fanned out, no pending delivery needs and every relay has passed, at
    /// most `limit`; returns how many. A relay counts while its lease (of the relay's
    /// name, see [`WorkerStore`]) was held at `before` or later: a relay that left every
    /// replica's config for longer than the retention no longer holds the outbox back.
    async fn cleanup_outbox(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;
}

/// API keys, stored by the hash of their secret.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new API key (audited as `key_create` in the key's tenant).
    async fn create_key(&self, key: StoredKey, actor: &Actor) -> Result<(), StoreError>;
    /// The key with that id.
    async fn find_key(&self, id: &str) -> Result<Option<StoredKey>, StoreError>;
    /// Every key, oldest first.
    async fn list_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Hard-deletes a key (audited as `key_revoke`); `false` if there was none.
    async fn revoke_key(&self, id: &str, actor: &Actor, now: Timestamp) -> Result<bool, StoreError>;
}

/// Who holds a lease, and until when (see [`WorkerStore::claim_lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires_at: Timestamp,
}

impl Lease {
    /// Whether `holder` holds it at `now`.
    #[must_use]
    pub fn is_held_by(&self, holder: &str, now: Timestamp) -> bool {
        self.holder == holder && self.expires_at > now
    }
}

/// Background work shared by the replicas of a deployment: leases (one holder at a time,
/// with an expiry, so a killed replica's work is taken over) and the stored positions of
/// the relays that follow the outbox to an outside sink (NATS JetStream).
///
/// Times are the caller's clock: replicas' clocks must agree to well within a lease's
/// time to live.
#[async_trait]
pub trait WorkerStore: Send + Sync + 'static {
    /// Claims the lease `name` for `holder` until `now + ttl`, or renews it: granted when
    /// nobody holds it, when its holder's lease expired at or before `now`, or when `holder`
    /// holds it already. Returns the lease as it stands afterwards: held by `holder` when
    /// granted, by the other holder otherwise. Two claims racing for a free lease have one
    /// winner.
    async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<Lease, StoreError>;
    /// Gives the lease `name` up if `holder` holds it: it expires at `now`, so any claim
    /// gets it at once. `false` when `holder` did not hold it. (The row stays: see
    /// [`EventStore::cleanup_outbox`].)
    async fn release_lease(&self, name: &str, holder: &str, now: Timestamp) -> Result<bool, StoreError>;
    /// The stored position (an outbox seq: everything up to it is delivered) of the relay
    /// `name`; `None` when it has none yet.
    async fn relay_position(&self, name: &str) -> Result<Option<i64>, StoreError>;
    /// Stores `seq` as the position of the relay `name`, fenced by the lease of the same
    /// name: only while `holder` holds it at `now`, and never backwards. `false` (nothing
    /// written) when the lease is not `holder`'s: another replica may have taken over.
    async fn store_relay_position(
        &self,
        name: &str,
        holder: &str,
        seq: i64,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
}

/// A whole store: every area above, plus its schema, its health and its metadata. Code that
/// needs a store takes `Arc<dyn Store>` and brings the areas it calls into scope
/// (`use tombstone_store::prelude::*`).
#[async_trait]
pub trait Store:
    RecordStore + DeletionStore + RetentionStore + EventStore + KeyStore + WorkerStore + HistoryStore + FileStore
{
    /// Creates or updates the tables and indexes the schema needs, keeping every row.
    ///
    /// # Errors
    /// [`StoreError::Migration`] when the schema cannot be applied (a field changed type,
    /// a new unique set that active records already violate).
    async fn migrate(&self, schema: &Schema) -> Result<(), StoreError>;

    /// Whether the database answers a read. Read-only: it never takes a writer.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Tells the read cache about changes other processes made (a no-op without a cache).
    async fn sync_cache(&self) -> Result<u64, StoreError>;

    /// A value from the key/value metadata table.
    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a metadata value.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
}

/// The store traits, to bring every area's methods into scope at once.
pub mod prelude {
    pub use crate::{
        DeletionStore, EventStore, HistoryStore, KeyStore, RecordStore, RetentionStore, Store, WorkerStore,
    };
}
