//! Files (§15): which records reference which stored objects, and which objects may go.
//!
//! The bytes live in the files store (`<tenant>/<sha256>`, see `tombstone_domain::files`);
//! the database keeps two tables beside the records, written in the transactions of the
//! changes that concern them:
//! - `file_refs`: a record references every object any of its versions had. The rows go
//!   with the record's row and versions (purge, erasure, a hard delete), and that same
//!   transaction makes each object they referenced due for a check.
//! - `file_objects`: one row per stored object — when the files worker must check it
//!   (`gc_due_at`), and whether it is being removed (`deleting`);
//! - `file_pins`: one row per upload in flight — its bytes are stored before its record
//!   points at them, so they are kept until the pin ends; the write that makes the
//!   reference removes its pin in the same transaction.
//!
//! The files worker takes due objects: one that nothing references and no upload pins is
//! marked `deleting` (a transaction), removed from the files store, then forgotten (another
//! one). A crash anywhere leaves the row due or deleting, so the next pass finishes the
//! work; an upload of the same bytes meanwhile waits for the removal to finish and stores
//! them again. Nothing is removed "after commit, best effort".

use std::sync::Arc;

use async_trait::async_trait;
use tombstone_domain::config::Collection;
use tombstone_domain::files::FileMeta;
use tombstone_domain::lifecycle::{Actor, IfMatch};
use tombstone_domain::record::Record;
use tombstone_domain::time::Timestamp;

use crate::StoreError;

/// A stored upload a record is to point at: its metadata and the pin that keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUpload {
    pub meta: FileMeta,
    /// The pin of [`FileStore::pin_file`], removed by the write that references the bytes.
    pub upload_id: String,
}

/// An object the files worker must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueObject {
    pub tenant: String,
    pub sha256: String,
    /// When the check became due (the claim clears it only if nobody moved it since).
    pub due_at: Timestamp,
    /// A removal was started and not finished.
    pub deleting: bool,
}

/// A record's reference to a stored object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileRef {
    pub tenant: String,
    pub sha256: String,
    pub collection: String,
    pub record_id: String,
}

/// An object the database knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownObject {
    pub tenant: String,
    pub sha256: String,
    pub pinned_until: Timestamp,
    pub deleting: bool,
}

/// Files: the records' file fields and the lifecycle of the stored objects (§15).
#[async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Points `field` of an active, unarchived record at a stored file (`Some`) or at none
    /// (`None`): a new version, audited as an update, with a `record.updated` event, and the
    /// record's reference to the object, in one transaction.
    ///
    /// # Errors
    /// `NotFound` (absent, deleted, another tenant's), `Archived`, `PreconditionFailed`.
    #[allow(clippy::too_many_arguments)]
    async fn set_file(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        field: &str,
        file: Option<FileUpload>,
        if_match: Option<IfMatch>,
        now: Timestamp,
    ) -> Result<Record, StoreError>;

    /// Pins the object an upload (`upload_id`) is storing until `until`, so the files
    /// worker keeps it while its record does not reference it yet, and schedules a check
    /// for then (an upload that never gets its reference leaves no orphan). `false`: the
    /// object is being removed right now; the upload must wait and try again.
    async fn pin_file(
        &self,
        upload_id: &str,
        tenant: &str,
        sha256: &str,
        size: u64,
        until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` objects whose check is due at `now`, oldest first.
    async fn due_files(&self, now: Timestamp, limit: u32) -> Result<Vec<DueObject>, StoreError>;

    /// Decides a due object: `true` when it must be removed now (unreferenced and
    /// unpinned, or a removal already started), marked `deleting` first; `false` when it
    /// stays, its check moved to the end of its pin or cleared.
    async fn claim_file_removal(&self, object: &DueObject, now: Timestamp) -> Result<bool, StoreError>;

    /// Forgets an object whose bytes were removed.
    async fn finish_file_removal(&self, tenant: &str, sha256: &str) -> Result<(), StoreError>;

    /// Every reference, ordered by tenant and object (`tombstone reconcile`).
    async fn file_refs(&self) -> Result<Vec<FileRef>, StoreError>;

    /// Every object the database knows of (`tombstone reconcile`).
    async fn known_files(&self) -> Result<Vec<KnownObject>, StoreError>;
}

// Both stores speak this SQL (`$n` parameters, first used in order; booleans as
// true/false, which SQLite reads as 1/0).

/// Notes an object an upload stores (see [`FileStore::pin_file`]): `$1` tenant, `$2`
/// sha256, `$3` size, `$4` pin end, when the next check is due at the latest. No row
/// changes while it is being removed.
pub(crate) const OBJECT_FILE_SQL: &str = "insert into file_objects (tenant, sha256, size, gc_due_at, deleting) \
     values ($1, $2, $3, $4, false) \
     on conflict (tenant, sha256) do update set \
     gc_due_at = case when file_objects.gc_due_at is null or file_objects.gc_due_at > excluded.gc_due_at \
                      then excluded.gc_due_at else file_objects.gc_due_at end \
     where file_objects.deleting = false";

/// The upload's pin: `$1` upload id, `$2` tenant, `$3` sha256, `$4` end.
pub(crate) const PIN_FILE_SQL: &str =
    "insert into file_pins (upload_id, tenant, sha256, until) values ($1, $2, $3, $4)";

/// Drops the pins of an object that ended: `$1` tenant, `$2` sha256, `$3` now.
pub(crate) const EXPIRE_PINS_SQL: &str = "delete from file_pins where tenant = $1 and sha256 = $2 and until <= $3";

/// Due objects: `$1` now, `$2` limit.
pub(crate) const DUE_FILES_SQL: &str = "select tenant, sha256, gc_due_at, deleting from file_objects \
     where gc_due_at <= $1 order by gc_due_at limit $2";

/// Starts a removal: `$1` tenant, `$2` sha256 — only if nothing references the object and
/// no upload pins it (expired pins were dropped first).
pub(crate) const CLAIM_FILE_SQL: &str = "update file_objects set deleting = true \
     where tenant = $1 and sha256 = $2 and deleting = false \
     and not exists (select 1 from file_refs r where r.tenant = $1 and r.sha256 = $2) \
     and not exists (select 1 from file_pins p where p.tenant = $1 and p.sha256 = $2)";

/// Keeps an object: `$1` tenant, `$2` sha256, `$3` the due time read — its next check at
/// the end of its last pin, or none; unless a reference was dropped since (the due time
/// moved), which needs its own check.
pub(crate) const KEEP_FILE_SQL: &str = "update file_objects \
     set gc_due_at = (select max(p.until) from file_pins p where p.tenant = $1 and p.sha256 = $2) \
     where tenant = $1 and sha256 = $2 and deleting = false and gc_due_at = $3";

/// Forgets a removed object: `$1` tenant, `$2` sha256.
pub(crate) const FINISH_FILE_SQL: &str =
    "delete from file_objects where tenant = $1 and sha256 = $2 and deleting = true";

/// A removal in progress: `$1` tenant, `$2` sha256.
pub(crate) const DELETING_FILE_SQL: &str = "select deleting from file_objects where tenant = $1 and sha256 = $2";

/// Every reference.
pub(crate) const FILE_REFS_SQL: &str =
    "select tenant, sha256, collection, record_id from file_refs order by tenant, sha256, collection, record_id";

/// Every known object, with the end of its last pin (0: none).
pub(crate) const KNOWN_FILES_SQL: &str = "select o.tenant, o.sha256, \
     coalesce((select max(p.until) from file_pins p where p.tenant = o.tenant and p.sha256 = o.sha256), 0), \
     o.deleting from file_objects o";
