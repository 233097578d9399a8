//! History reads (§14) on every store: a record's versions, the version in force at an
//! instant, the list of records as it was at an instant, and `:revert`.
//!
//! A store answers a few indexed primitives — rows of one record's history by number, the
//! row in force at an instant, and, for a list, the collection's rows in id order each
//! with its version at the instant (one index probe per row). The paging, the filters and
//! the sort of an as-of list are decided here, once, over the representations those rows
//! keep, so that both stores answer alike.

use std::cmp::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use tombstone_domain::config::Collection;
use tombstone_domain::history::{Version, record_from_body_text};
use tombstone_domain::lifecycle::{Actor, IfMatch};
use tombstone_domain::query::{ArchivedScope, DeletedScope, ListQuery, SortKey, SortValue};
use tombstone_domain::record::{FieldValue, Record, fold_case};
use tombstone_domain::time::Timestamp;

use crate::{Page, StoreError};

/// One stored version as a store reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub version: i64,
    pub valid_from: Timestamp,
    /// The next version's `valid_from`, when the store read it with the row.
    pub valid_to: Option<Timestamp>,
    pub action: String,
    pub actor: Option<String>,
    pub deletion_id: Option<String>,
    pub body: String,
}

impl VersionRow {
    /// The version as the API shows it.
    ///
    /// # Errors
    /// `Internal` when the stored body is not JSON.
    pub fn into_version(self) -> Result<Version, StoreError> {
        let record = serde_json::from_str(&self.body)
            .map_err(|e| StoreError::Internal(format!("version {} has a body that is not JSON: {e}", self.version)))?;
        Ok(Version {
            version: self.version,
            valid_from: self.valid_from,
            valid_to: self.valid_to,
            action: self.action,
            actor: self.actor,
            deletion_id: self.deletion_id,
            record,
        })
    }
}

/// A page of a record's versions, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionPage {
    pub items: Vec<Version>,
    /// The version number the next page continues below.
    pub next: Option<i64>,
}

/// How many rows an as-of list reads per round.
const AS_OF_BATCH: u32 = 500;

/// History: versions, point-in-time reads and revert (§14).
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Up to `limit` versions of a record with numbers up to `max_version` (all when
    /// `None`), newest first, `valid_to` left unset.
    async fn version_rows(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        max_version: Option<i64>,
        limit: u32,
    ) -> Result<Vec<VersionRow>, StoreError>;

    /// Version `n` of a record, with its `valid_to`.
    async fn version_row(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        n: i64,
    ) -> Result<Option<VersionRow>, StoreError>;

    /// The version of a record in force at `at` (the last one whose `valid_from` is at or
    /// before it), with its `valid_to`; `None` when the record did not exist yet (or is
    /// gone with its history).
    async fn version_row_at(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<VersionRow>, StoreError>;

    /// Up to `limit` records of the collection in the tenant as they are stored now, in id
    /// order (descending when asked) after `after_id`, each with the body of its version in
    /// force at `at` (`None`: created later).
    async fn as_of_rows(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        at: Timestamp,
        after_id: Option<String>,
        descending: bool,
        limit: u32,
    ) -> Result<Vec<(String, Option<String>)>, StoreError>;

    /// Writes a new version of an active record whose declared fields equal those of
    /// version `version` (audited `revert`, event `record.updated`).
    ///
    /// # Errors
    /// `NotFound` (absent or deleted), `Archived`, `PreconditionFailed`,
    /// `Validation` (no such version; a ref that points at no active record now),
    /// `UniqueConflict`.
    async fn revert_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        version: i64,
        if_match: Option<IfMatch>,
        now: Timestamp,
    ) -> Result<Record, StoreError>;

    /// A page of a record's versions, newest first, below version `before` when given.
    async fn list_versions(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<VersionPage, StoreError> {
        // The version just above the page (the last one of the previous page) is read too:
        // its valid_from is the valid_to of the page's first.
        let max = before;
        let mut rows = self.version_rows(tenant, collection, id, max, limit + 2).await?;
        let mut newer = None;
        if let (Some(b), Some(first)) = (before, rows.first())
            && first.version == b
        {
            newer = Some(rows.remove(0).valid_from);
        }
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut items = Vec::with_capacity(rows.len());
        let mut valid_to = newer;
        for mut row in rows {
            row.valid_to = valid_to;
            valid_to = Some(row.valid_from);
            items.push(row.into_version()?);
        }
        let next = if more { items.last().map(|v| v.version) } else { None };
        Ok(VersionPage { items, next })
    }

    /// The list as it was at `at` (§14): the records whose version in force then matches
    /// the query, with the plain list's filters, sort and keyset cursors.
    async fn list_as_of(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        at: Timestamp,
        query: &ListQuery,
    ) -> Result<Page, StoreError> {
        let by_id = query.sort.key == SortKey::Id;
        let limit = query.limit as usize;
        // Sorted by id and not counted: pages are read in id order until one is full.
        // Otherwise every record is read (the order or the total depends on all of them).
        let whole = !by_id || query.count;
        let mut after_id = if whole { None } else { query.after.as_ref().map(|p| p.id.clone()) };
        let descending = by_id && query.sort.descending;
        let mut matched: Vec<Record> = Vec::new();
        // A page reads what it needs, one more to know whether another follows; rows that
        // did not match (created later, deleted or filtered out then) widen the next read.
        let mut batch = if whole { AS_OF_BATCH } else { (query.limit + 1).min(AS_OF_BATCH) };
        loop {
            let rows = self.as_of_rows(tenant, collection, at, after_id.clone(), descending, batch).await?;
            let n = rows.len();
            for (id, body) in rows {
                after_id = Some(id);
                let Some(body) = body else { continue };
                let record = record_from_body_text(collection, tenant, &body)
                    .map_err(|e| StoreError::Internal(format!("a version body is not JSON: {e}")))?;
                if matches(query, &record) {
                    matched.push(record);
                }
            }
            if n < batch as usize || (!whole && matched.len() > limit) {
                break;
            }
            batch = (batch * 2).min(AS_OF_BATCH);
        }
        let total = query.count.then_some(matched.len() as u64);
        if whole {
            let key = &query.sort.key;
            matched.sort_by(|a, b| ordered(query, &key.value_of(a), &a.id, &key.value_of(b), &b.id));
            if let Some(after) = &query.after {
                matched
                    .retain(|r| ordered(query, &key.value_of(r), &r.id, &after.value, &after.id) == Ordering::Greater);
            }
        }
        Ok(Page::of(matched, query, total))
    }
}

/// Whether a record (as it was) belongs to the list `query` asks for.
fn matches(query: &ListQuery, record: &Record) -> bool {
    let deleted = record.deletion.as_ref();
    let scope_ok = match query.scope {
        DeletedScope::Active => deleted.is_none(),
        DeletedScope::Deleted => deleted.is_some(),
        DeletedScope::All => true,
    };
    let archived_ok = match query.archived {
        ArchivedScope::Exclude => record.archive.is_none(),
        ArchivedScope::Only => record.archive.is_some(),
        ArchivedScope::Include => true,
    };
    if !scope_ok || !archived_ok {
        return false;
    }
    let filters_ok = query.filters.iter().all(|f| match (record.values.get(&f.field), &f.value) {
        (Some(FieldValue::String(v)), FieldValue::String(want)) if f.case_insensitive => fold_case(v) == *want,
        (Some(v), want) => v == want,
        (None, _) => false,
    });
    let deletion_ok = query.deleted_since.is_none_or(|t| deleted.is_some_and(|d| d.deleted_at >= t))
        && query.deleted_before.is_none_or(|t| deleted.is_some_and(|d| d.deleted_at < t))
        && query.deleted_by.as_ref().is_none_or(|by| deleted.is_some_and(|d| &d.deleted_by == by))
        && query.purge_before.is_none_or(|t| deleted.is_some_and(|d| d.purge_at < t));
    let ids_ok = query.candidates.as_ref().is_none_or(|c| c.admits(&record.id));
    filters_ok && deletion_ok && ids_ok
}

/// Nulls first, then numbers, then text; ascending.
fn compare_values(a: &SortValue, b: &SortValue) -> Ordering {
    let rank = |v: &SortValue| match v {
        SortValue::Null => 0,
        SortValue::Int(_) | SortValue::Float(_) => 1,
        SortValue::Text(_) => 2,
    };
    match (a, b) {
        (SortValue::Int(x), SortValue::Int(y)) => x.cmp(y),
        (SortValue::Text(x), SortValue::Text(y)) => x.cmp(y),
        (SortValue::Int(_) | SortValue::Float(_), SortValue::Int(_) | SortValue::Float(_)) => {
            let f = |v: &SortValue| match v {
                SortValue::Int(i) => *i as f64,
                SortValue::Float(f) => *f,
                _ => 0.0,
            };
            f(a).total_cmp(&f(b))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The order of two items in the query's sort (ties broken by id in the same direction).
fn ordered(query: &ListQuery, a: &SortValue, a_id: &str, b: &SortValue, b_id: &str) -> Ordering {
    let order = compare_values(a, b).then_with(|| a_id.cmp(b_id));
    if query.sort.descending { order.reverse() } else { order }
}
