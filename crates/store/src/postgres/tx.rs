//! [`PgTx`]: one write transaction on PostgreSQL and its record-level primitives — what
//! the backend-neutral write rules run over.
//!
//! Uniqueness among active records is the database's: the partial unique indexes decide,
//! never a SELECT before the write (which two concurrent writers would both pass). A
//! statement that may violate one runs inside a savepoint, so that on a violation the
//! transaction stays usable and the record holding the value can be named.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;
use tombstone_domain::audit::NewAuditEntry;
use tombstone_domain::config::Collection;
use tombstone_domain::events::NewEvent;
use tombstone_domain::record::{Record, Values};

use super::Tables;
use super::changes;
use super::records::{
    Param, TableSql, archive_params, conflict_query, deletion_params, insert_params, read_record, refs, update_params,
};
use super::schema::{primary_key_name, table_name, unique_indexes};
use crate::StoreError;
use crate::cache::CacheKey;

/// The savepoint a guarded statement runs in (released right after it).
const SAVEPOINT: &str = "savepoint tombstone_write";
const RELEASE: &str = "release savepoint tombstone_write";
/// Sends each payload of `$1` on the cache's channel (one round trip whatever their number).
const NOTIFY: &str = "select pg_notify('tombstone_cache', p) from unnest($1::text[]) p";
const ROLL_BACK: &str = "rollback to savepoint tombstone_write; release savepoint tombstone_write";

/// One write transaction (READ COMMITTED, PostgreSQL's default: a statement after a unique
/// violation sees the committed winner). Dropped without [`PgTx::commit`], it rolls back.
///
/// Lock order: record rows first ([`PgTx::get`], [`PgTx::is_active`], the writes), the
/// audit head last (taken by [`PgTx::append_events`] or the commit), held to the commit.
pub struct PgTx<'a> {
    tx: Transaction<'a>,
    tables: Arc<Tables>,
    notify: Arc<tokio::sync::Notify>,
    /// The store's name in the cache notifications this transaction sends.
    origin: Arc<str>,
    /// Records whose events this transaction wrote: what a cache must forget on commit.
    changed: Vec<CacheKey>,
    /// The first and last outbox seq written.
    written: Option<(i64, i64)>,
    /// The audit chain's head while this transaction holds its lock (`None`: not yet).
    head: Option<(i64, String)>,
    /// Audit entries to seal and write with the next events, or at the commit.
    audit: Vec<NewAuditEntry>,
}

impl std::fmt::Debug for PgTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTx").field("changed", &self.changed).field("written", &self.written).finish_non_exhaustive()
    }
}

/// What a [`PgTx`] knows of its own writes at one point: what [`PgTx::reset`] returns to
/// after the writes since were rolled back to a savepoint.
pub(super) struct Mark {
    changed: usize,
    written: Option<(i64, i64)>,
    head: Option<(i64, String)>,
    audit: usize,
}

impl<'a> PgTx<'a> {
    /// Where this transaction's bookkeeping stands now.
    pub(super) fn mark(&self) -> Mark {
        Mark { changed: self.changed.len(), written: self.written, head: self.head.clone(), audit: self.audit.len() }
    }

    /// Forgets the writes since `mark`, after the transaction was rolled back to a savepoint
    /// taken then. The audit head goes back too: if its lock was first taken after `mark`,
    /// the rollback released it, and the next append takes it again.
    pub(super) fn reset(&mut self, mark: Mark) {
        self.changed.truncate(mark.changed);
        self.written = mark.written;
        self.head = mark.head;
        self.audit.truncate(mark.audit);
    }

    pub(crate) fn new(
        tx: Transaction<'a>,
        tables: Arc<Tables>,
        notify: Arc<tokio::sync::Notify>,
        origin: Arc<str>,
    ) -> Self {
        Self { tx, tables, notify, origin, changed: Vec::new(), written: None, head: None, audit: Vec::new() }
    }

    /// The underlying transaction, for the statements of areas without a primitive here.
    #[must_use]
    pub fn transaction(&self) -> &Transaction<'a> {
        &self.tx
    }

    /// The seq of the last audit entry this transaction sealed (`None`: none yet).
    pub(super) fn audit_seq(&self) -> Option<i64> {
        self.head.as_ref().map(|(seq, _)| *seq)
    }

    /// Records whose events this transaction wrote.
    #[must_use]
    pub fn changed(&self) -> &[CacheKey] {
        &self.changed
    }

    /// The first and last outbox seq this transaction wrote.
    #[must_use]
    pub fn written(&self) -> Option<(i64, i64)> {
        self.written
    }

    /// Commits; wakes the outbox's followers when events were written. The records it
    /// changed are announced to every process's cache with `NOTIFY`, sent inside the
    /// transaction so that it is delivered exactly when, and only if, the commit succeeds.
    ///
    /// # Errors
    /// The commit failed (the transaction is rolled back): [`StoreError::StorageFailed`]
    /// when the connection was lost, [`StoreError::Busy`] on a serialization failure.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if !self.audit.is_empty() {
            let entries = std::mem::take(&mut self.audit);
            changes::append(&self.tx, &mut self.head, entries, &[]).await?;
        }
        if !self.changed.is_empty() {
            let payloads = super::notify::payloads(&self.origin, &self.changed);
            let stmt = self.tx.prepare_cached(NOTIFY).await?;
            self.tx.execute(&stmt, &[&payloads]).await?;
        }
        let wrote = self.written.is_some();
        let notify = self.notify.clone();
        self.tx.commit().await?;
        if wrote {
            notify.notify_waiters();
        }
        Ok(())
    }

    /// Rolls back.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn rollback(self) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }

    pub(super) fn table(&self, collection: &str) -> Result<Arc<TableSql>, StoreError> {
        self.tables
            .get(collection)
            .cloned()
            .ok_or_else(|| StoreError::Internal(format!("collection {collection} has not been migrated")))
    }

    /// The record, deleted or not, locked (`FOR UPDATE`) until the transaction ends;
    /// `None` if it does not exist in the tenant.
    ///
    /// # Errors
    /// The database failed.
    pub async fn get(&mut self, c: &Collection, tenant: &str, id: &str) -> Result<Option<Record>, StoreError> {
        let sql = self.table(&c.name)?;
        let stmt = self
            .tx
            .prepare_cached(&format!("{} where t.tenant = $1 and t.id = $2 for update of t", sql.select))
            .await?;
        let row = self.tx.query_opt(&stmt, &[&tenant, &id]).await?;
        row.map(|r| read_record(c, &r)).transpose()
    }

    /// Whether the record exists and is not deleted. An active record is locked in share
    /// mode until the transaction ends: a child written with a ref to it cannot race the
    /// parent's delete (which locks the row for update).
    ///
    /// # Errors
    /// The database failed.
    pub async fn is_active(&mut self, collection: &str, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let table = table_name(collection);
        let stmt = self
            .tx
            .prepare_cached(&format!(
                "select 1 from {table} where tenant = $1 and id = $2 and deleted_at is null for share"
            ))
            .await?;
        Ok(self.tx.query_opt(&stmt, &[&tenant, &id]).await?.is_some())
    }

    /// Inserts a new record row.
    ///
    /// # Errors
    /// [`StoreError::UniqueConflict`] when the id is taken (`fields: ["id"]`, deleted
    /// records included) or an active record holds a unique value; the transaction goes on.
    pub async fn insert(&mut self, c: &Collection, r: &Record) -> Result<(), StoreError> {
        let sql = self.table(&c.name)?;
        self.guarded(&sql.insert, &insert_params(c, r), c, &r.tenant, &r.id, &r.values).await?;
        Ok(())
    }

    /// Rewrites a record's values, version and `updated_at`.
    ///
    /// # Errors
    /// [`StoreError::UniqueConflict`] when an active record holds a unique value.
    pub async fn update_values(&mut self, c: &Collection, r: &Record) -> Result<(), StoreError> {
        let sql = self.table(&c.name)?;
        let params = update_params(c, r);
        if c.unique.is_empty() {
            self.plain(&sql.update_values, &params).await
        } else {
            self.guarded(&sql.update_values, &params, c, &r.tenant, &r.id, &r.values).await
        }
    }

    /// Writes a record's deletion mark (cleared when `r.deletion` is `None`: a restore),
    /// version and `updated_at`.
    ///
    /// # Errors
    /// [`StoreError::UniqueConflict`] when a restore brings back a value an active record
    /// now holds.
    pub async fn set_deletion(&mut self, c: &Collection, r: &Record) -> Result<(), StoreError> {
        let sql = self.table(&c.name)?;
        let params = deletion_params(r);
        // Only a restore enters the partial unique indexes.
        if c.unique.is_empty() || r.deletion.is_some() {
            self.plain(&sql.set_deletion, &params).await
        } else {
            self.guarded(&sql.set_deletion, &params, c, &r.tenant, &r.id, &r.values).await
        }
    }

    /// Writes a record's archive mark (cleared for an unarchive), version and `updated_at`.
    /// Archived records keep their unique values, so no index is entered or left.
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_archive(&mut self, c: &Collection, r: &Record) -> Result<(), StoreError> {
        let sql = self.table(&c.name)?;
        self.plain(&sql.set_archive, &archive_params(r)).await
    }

    /// Removes a record row.
    ///
    /// # Errors
    /// The database failed.
    pub async fn remove(&mut self, c: &Collection, tenant: &str, id: &str) -> Result<(), StoreError> {
        let sql = self.table(&c.name)?;
        let params = [Param::Text(Some(tenant.to_string())), Param::Text(Some(id.to_string()))];
        self.plain(&sql.remove, &params).await
    }

    /// The active record (other than `id`) that holds one of the collection's unique value
    /// sets, and which set — a SELECT, for where every conflict must be listed before
    /// writing (restoring a whole operation); a single write relies on the index instead.
    ///
    /// # Errors
    /// The database failed.
    pub async fn unique_conflict(
        &mut self,
        c: &Collection,
        tenant: &str,
        id: &str,
        values: &Values,
    ) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let sql = self.table(&c.name)?;
        for set in &c.unique {
            if let Some(other) = self.holder(&sql, c, set, tenant, id, values).await? {
                return Ok(Some((other, set.clone())));
            }
        }
        Ok(None)
    }

    /// `(child id, parent id)` of the records of `child_collection` whose ref `field`
    /// points at one of `parent_ids` (active ones only, or all), in child id order.
    ///
    /// # Errors
    /// The database failed.
    pub async fn children(
        &mut self,
        child_collection: &str,
        field: &str,
        tenant: &str,
        parent_ids: &[String],
        active_only: bool,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if parent_ids.is_empty() {
            return Ok(Vec::new());
        }
        let col = super::schema::field_column(field);
        let which = if active_only { "deleted_at is null and " } else { "" };
        let stmt = self
            .tx
            .prepare_cached(&format!(
                "select id, {col} from {} where tenant = $1 and {which}{col} = any($2) order by id",
                table_name(child_collection)
            ))
            .await?;
        let rows = self.tx.query(&stmt, &[&tenant, &parent_ids]).await?;
        Ok(rows
            .iter()
            .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, _>>()?)
    }

    /// Appends audit entries to the chain. They are sealed and written with the next
    /// [`PgTx::append_events`], or at the commit, in the same round trip as the events:
    /// the head's lock is taken then, so it is held only for the tail of the transaction.
    ///
    /// # Errors
    /// None here; a failure to write them is the commit's (or the events') error.
    pub async fn append_audit(&mut self, entries: Vec<NewAuditEntry>) -> Result<(), StoreError> {
        self.audit.extend(entries);
        Ok(())
    }

    /// Writes the pending audit entries now (taking the head's lock) and returns the seqs
    /// of the first and last (`None`: none was pending) — for a write that must record an
    /// entry's seq in its own transaction (an erasure's receipt).
    ///
    /// # Errors
    /// The database failed.
    pub async fn flush_audit(&mut self) -> Result<Option<(i64, i64)>, StoreError> {
        if self.audit.is_empty() {
            return Ok(None);
        }
        let entries = std::mem::take(&mut self.audit);
        let count = i64::try_from(entries.len()).unwrap_or(i64::MAX);
        changes::append(&self.tx, &mut self.head, entries, &[]).await?;
        // Entries are sealed one after the other from the head: the last one is the head.
        let last = self.head.as_ref().map_or(0, |(seq, _)| *seq);
        Ok(Some((last - count + 1, last)))
    }

    /// Appends events to the outbox (with the pending audit entries, under the head's
    /// lock, so seq order is commit order); returns the first and last seq (`(0, 0)` when
    /// `events` is empty and no entry was pending).
    ///
    /// # Errors
    /// The database failed.
    pub async fn append_events(&mut self, events: Vec<NewEvent>) -> Result<(i64, i64), StoreError> {
        let entries = std::mem::take(&mut self.audit);
        let (first, last) = changes::append(&self.tx, &mut self.head, entries, &events).await?;
        if !events.is_empty() {
            self.changed.extend(events.into_iter().map(|e| (e.tenant, e.collection, e.record_id)));
            self.written = Some(match self.written {
                Some((a, b)) => (a.min(first), b.max(last)),
                None => (first, last),
            });
        }
        Ok((first, last))
    }

    /// A statement that cannot violate a unique index.
    async fn plain(&self, sql: &str, params: &[Param]) -> Result<(), StoreError> {
        let stmt = self.tx.prepare_cached(sql).await?;
        self.tx.execute(&stmt, &refs(params)).await?;
        Ok(())
    }

    /// A statement that may violate a unique index, in a savepoint. The savepoint, the
    /// statement and the release are pipelined: one round trip when nothing is violated.
    async fn guarded(
        &self,
        sql: &str,
        params: &[Param],
        c: &Collection,
        tenant: &str,
        id: &str,
        values: &Values,
    ) -> Result<(), StoreError> {
        let stmt = self.tx.prepare_cached(sql).await?;
        let params = refs(params);
        let (opened, done, released) = tokio::join!(
            self.tx.batch_execute(SAVEPOINT),
            self.tx.execute(&stmt, &params),
            self.tx.batch_execute(RELEASE),
        );
        opened?;
        match done {
            Ok(_) => {
                released?;
                Ok(())
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                // The release failed too (the transaction was aborted at the statement):
                // back to the savepoint, and the transaction goes on.
                self.tx.batch_execute(ROLL_BACK).await?;
                let constraint = e.as_db_error().and_then(|d| d.constraint()).unwrap_or_default().to_string();
                Err(self.name_conflict(c, &constraint, tenant, id, values, e).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The [`StoreError::UniqueConflict`] of a violated constraint: the record holding
    /// the value, found by the violated index's fields.
    async fn name_conflict(
        &self,
        c: &Collection,
        constraint: &str,
        tenant: &str,
        id: &str,
        values: &Values,
        violation: tokio_postgres::Error,
    ) -> StoreError {
        if constraint == primary_key_name(&c.name) {
            return StoreError::UniqueConflict { conflicting_id: id.to_string(), fields: vec!["id".into()] };
        }
        let Some((_, set, _)) = unique_indexes(c).into_iter().find(|(name, _, _)| name == constraint) else {
            return violation.into();
        };
        let sql = match self.table(&c.name) {
            Ok(sql) => sql,
            Err(e) => return e,
        };
        match self.holder(&sql, c, &set, tenant, id, values).await {
            Ok(Some(other)) => StoreError::UniqueConflict { conflicting_id: other, fields: set },
            // The holder was deleted between the violation and the look-up: the conflict
            // stands (nothing was written) but has no record to name.
            Ok(None) => StoreError::Constraint { fields: set, source: Arc::new(violation) },
            Err(e) => e,
        }
    }

    /// The active record other than `id` holding `set`'s values.
    async fn holder(
        &self,
        sql: &TableSql,
        c: &Collection,
        set: &[String],
        tenant: &str,
        id: &str,
        values: &Values,
    ) -> Result<Option<String>, StoreError> {
        let Some((query, params)) = conflict_query(sql, c, set, tenant, id, values) else { return Ok(None) };
        let stmt = self.tx.prepare_cached(&query).await?;
        let row = self.tx.query_opt(&stmt, &refs(&params)).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}
