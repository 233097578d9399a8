//! SQLite's side of the write rules: [`crate::rules::Tx`] over a connection inside a
//! transaction (the writer's `BEGIN IMMEDIATE`, or a reader's snapshot for a dry run).
//!
//! Every method does its work before returning, so the rules' futures complete on their
//! first poll and run on the writer thread without a runtime
//! (`tombstone_domain::ready::now`). SQLite has one writer at a time, so a row read here
//! cannot change before the transaction ends, and the uniqueness of active values is
//! checked by a query before each write that could break it (the partial unique indexes
//! stay as a backstop).

use std::collections::BTreeMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tombstone_domain::audit::NewAuditEntry;
use tombstone_domain::config::Collection;
use tombstone_domain::deletion::{DeletionStatus, EventualEdge, RecordRef};
use tombstone_domain::events::NewEvent;
use tombstone_domain::history::NewVersion;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{DeletionMark, Hold, Record, Values};
use tombstone_domain::time::Timestamp;

use super::changes;
use super::idempotency::Claims;
use super::records::{self, TableSql};
use super::relations::{self, Tables};
use super::schema::table_name;
use crate::rules::{DeletionHead, NewDeletion, QueuedRelation, Tx};
use crate::{Erasure, ErasureStep, IdempotencyKey, StoreError, StoredKey, StoredResponse};

/// Parameters per `in (…)` list, well under SQLite's limit.
const CHUNK: usize = 500;

/// One SQLite transaction as the rules see it.
pub(crate) struct SqliteTx<'c> {
    conn: &'c Connection,
    tables: &'c Tables,
    claims: Option<&'c Claims>,
}

impl<'c> SqliteTx<'c> {
    /// A transaction on `conn`; `claims` are the idempotency keys this process holds (none
    /// for a read-only dry run).
    pub(crate) fn new(conn: &'c Connection, tables: &'c Tables, claims: Option<&'c Claims>) -> Self {
        Self { conn, tables, claims }
    }

    fn table(&self, collection: &str) -> Result<&'c TableSql, StoreError> {
        relations::table(self.tables, collection).map(AsRef::as_ref)
    }

    /// Fails with the conflict when an active record other than `record` holds one of its
    /// unique values.
    fn check_unique(&self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        let sql = self.table(&collection.name)?;
        match records::unique_conflict(self.conn, sql, collection, &record.tenant, &record.id, &record.values)? {
            Some((conflicting_id, fields)) => Err(StoreError::UniqueConflict { conflicting_id, fields }),
            None => Ok(()),
        }
    }

    /// Runs `statement` once per chunk of `ids`, with `?1` the tenant, the chunk's ids from
    /// `?2` on (`{ids}` in the text), then `extra`.
    fn per_chunk<T>(
        &self,
        ids: &[String],
        tenant: &str,
        extra: &[SqlValue],
        statement: impl Fn(&str, usize) -> String,
        mut each: impl FnMut(&mut rusqlite::CachedStatement<'_>, Vec<SqlValue>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
            let mut values = vec![SqlValue::Text(tenant.to_string())];
            values.extend(chunk.iter().map(|id| SqlValue::Text(id.clone())));
            let base = values.len();
            values.extend_from_slice(extra);
            let mut stmt = self.conn.prepare_cached(&statement(&marks.join(", "), base))?;
            out.push(each(&mut stmt, values)?);
        }
        Ok(out)
    }
}

/// Stores one version (the `versions` table of migration `0011_history`).
pub(crate) const INSERT_VERSION: &str =
    "insert into versions (tenant, collection, record_id, valid_from, version, action, actor, deletion_id, body)
     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Binds and runs [`INSERT_VERSION`].
pub(crate) fn insert_version(stmt: &mut rusqlite::Statement<'_>, v: &NewVersion) -> Result<(), StoreError> {
    stmt.execute(params![
        v.tenant,
        v.collection,
        v.record_id,
        v.valid_from.as_micros(),
        v.version,
        v.action,
        v.actor,
        v.deletion_id,
        v.body
    ])?;
    Ok(())
}

fn read_queued(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedRelation> {
    Ok(QueuedRelation {
        deletion_id: r.get(0)?,
        tenant: r.get(1)?,
        child_collection: r.get(2)?,
        field: r.get(3)?,
        parent_id: r.get(4)?,
        after_id: r.get(5)?,
    })
}

const QUEUED_COLUMNS: &str = "q.deletion_id, q.tenant, q.child_collection, q.field, q.parent_id, q.after_id";

impl Tx for SqliteTx<'_> {
    async fn get(&mut self, collection: &Collection, tenant: &str, id: &str) -> Result<Option<Record>, StoreError> {
        records::get(self.conn, self.table(&collection.name)?, collection, tenant, id)
    }

    async fn is_active(&mut self, collection: &str, tenant: &str, id: &str) -> Result<bool, StoreError> {
        relations::is_active(self.conn, collection, tenant, id)
    }

    async fn insert(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        let sql = self.table(&collection.name)?;
        let existing: Option<String> = self
            .conn
            .prepare_cached(&format!("select id from {} where tenant = ?1 and id = ?2", sql.table))?
            .query_row([&record.tenant, &record.id], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Err(StoreError::UniqueConflict { conflicting_id: id, fields: vec!["id".into()] });
        }
        self.check_unique(collection, record)?;
        records::insert(self.conn, sql, collection, record)
    }

    async fn update_values(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        self.check_unique(collection, record)?;
        records::update_values(self.conn, self.table(&collection.name)?, collection, record)
    }

    async fn set_deletion(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        if record.deletion.is_none() {
            self.check_unique(collection, record)?;
        }
        records::set_deletion(self.conn, self.table(&collection.name)?, record)
    }

    async fn set_archive(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        records::set_archive(self.conn, self.table(&collection.name)?, record)
    }

    async fn stale_rows(
        &mut self,
        collection: &Collection,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        records::stale_rows(self.conn, self.table(&collection.name)?, cutoff, limit)
    }

    async fn touch(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        let sql = self.table(&collection.name)?;
        self.conn
            .prepare_cached(&format!(
                "update {} set version = ?3, updated_at = ?4 where tenant = ?1 and id = ?2",
                sql.table
            ))?
            .execute(params![record.tenant, record.id, record.version, record.updated_at.as_micros()])?;
        Ok(())
    }

    async fn remove(&mut self, collection: &Collection, tenant: &str, id: &str) -> Result<(), StoreError> {
        records::remove(self.conn, self.table(&collection.name)?, tenant, id)
    }

    async fn unique_conflict(
        &mut self,
        collection: &Collection,
        tenant: &str,
        id: &str,
        values: &Values,
    ) -> Result<Option<(String, Vec<String>)>, StoreError> {
        records::unique_conflict(self.conn, self.table(&collection.name)?, collection, tenant, id, values)
    }

    async fn children(
        &mut self,
        child_collection: &str,
        field: &str,
        tenant: &str,
        parent_ids: &[String],
        active_only: bool,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let which = if active_only { "deleted_at is null and" } else { "" };
        let table = table_name(child_collection);
        let pages = self.per_chunk(
            parent_ids,
            tenant,
            &[],
            |ids, _| format!("select id, \"f_{field}\" from {table} where tenant = ?1 and {which} \"f_{field}\" in ({ids}) order by id"),
            |stmt, values| {
                Ok(stmt
                    .query_map(params_from_iter(values), |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )?;
        Ok(pages.into_iter().flatten().collect())
    }

    async fn active_rows(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<Record>, StoreError> {
        let sql = self.table(&collection.name)?;
        let pages = self.per_chunk(
            ids,
            tenant,
            &[],
            |ids, _| format!("{} where tenant = ?1 and deleted_at is null and id in ({ids})", sql.select()),
            |stmt, values| {
                Ok(stmt
                    .query_map(params_from_iter(values), |r| records::read_record(collection, r))?
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )?;
        Ok(pages.into_iter().flatten().collect())
    }

    async fn soft_delete_many(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
        mark: &DeletionMark,
    ) -> Result<(), StoreError> {
        let sql = self.table(&collection.name)?;
        let extra = [
            SqlValue::Integer(mark.deleted_at.as_micros()),
            SqlValue::Text(mark.deleted_by.clone()),
            mark.reason.clone().map_or(SqlValue::Null, SqlValue::Text),
            SqlValue::Text(mark.deletion_id.clone()),
            SqlValue::Integer(mark.purge_at.as_micros()),
        ];
        self.per_chunk(
            ids,
            tenant,
            &extra,
            |ids, base| {
                format!(
                    "update {} set version = version + 1, updated_at = max(updated_at + 1, ?{a}), deleted_at = ?{a}, deleted_by = ?{b}, delete_reason = ?{c},
                     deletion_id = ?{d}, purge_at = ?{e} where tenant = ?1 and deleted_at is null and id in ({ids})",
                    sql.table,
                    a = base + 1,
                    b = base + 2,
                    c = base + 3,
                    d = base + 4,
                    e = base + 5,
                )
            },
            |stmt, values| Ok(stmt.execute(params_from_iter(values))?),
        )?;
        Ok(())
    }

    async fn remove_active_many(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let sql = self.table(&collection.name)?;
        self.per_chunk(
            ids,
            tenant,
            &[],
            |ids, _| format!("delete from {} where tenant = ?1 and deleted_at is null and id in ({ids})", sql.table),
            |stmt, values| Ok(stmt.execute(params_from_iter(values))?),
        )?;
        Ok(())
    }

    async fn insert_hold(&mut self, tenant: &str, collection: &str, id: &str, hold: &Hold) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "insert into holds (id, tenant, collection, record_id, case_name, reason, actor, at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![hold.hold_id, tenant, collection, id, hold.case, hold.reason, hold.actor, hold.at.as_micros()])?;
        Ok(())
    }

    async fn release_hold(
        &mut self,
        actor: &Actor,
        collection: &str,
        id: &str,
        hold_id: &str,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<Option<Option<String>>, StoreError> {
        let case: Option<Option<String>> = self
            .conn
            .prepare_cached(
                "select case_name from holds where id = ?1 and tenant = ?2 and collection = ?3 and record_id = ?4 and released_at is null",
            )?
            .query_row(params![hold_id, actor.tenant, collection, id], |r| r.get(0))
            .optional()?;
        if case.is_some() {
            self.conn
                .prepare_cached(
                    "update holds set released_at = ?2, released_by = ?3, release_reason = ?4 where id = ?1",
                )?
                .execute(params![hold_id, at.as_micros(), actor.key_id, reason])?;
        }
        Ok(case)
    }

    async fn insert_deletion(&mut self, op: &NewDeletion<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "insert into deletions (id, tenant, actor, reason, request_id, created_at, root_collection, root_id, status) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                op.id,
                op.actor.tenant,
                op.actor.key_id,
                op.reason,
                op.actor.request_id,
                op.created_at.as_micros(),
                op.root.collection,
                op.root.id,
                op.status.as_str()
            ])?;
        self.add_deletion_records(op.id, std::slice::from_ref(op.root)).await
    }

    async fn add_deletion_records(&mut self, deletion_id: &str, refs: &[RecordRef]) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "insert or ignore into deletion_records (deletion_id, collection, record_id) values (?1, ?2, ?3)",
        )?;
        for r in refs {
            stmt.execute(params![deletion_id, r.collection, r.id])?;
        }
        Ok(())
    }

    async fn deletion(&mut self, tenant: Option<&str>, id: &str) -> Result<Option<DeletionHead>, StoreError> {
        let row: Option<(String, Option<String>, Option<String>, String)> = self
            .conn
            .prepare_cached(
                "select actor, reason, request_id, status from deletions where id = ?1 and (?2 is null or tenant = ?2)",
            )?
            .query_row(params![id, tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        row.map(|(actor, reason, request_id, status)| {
            let status = DeletionStatus::parse(&status)
                .ok_or_else(|| StoreError::Internal(format!("deletion {id} has status {status:?}")))?;
            Ok(DeletionHead { actor, reason, request_id, status })
        })
        .transpose()
    }

    async fn deletion_root(&mut self, id: &str) -> Result<RecordRef, StoreError> {
        Ok(self
            .conn
            .prepare_cached("select root_collection, root_id from deletions where id = ?1")?
            .query_row([id], |r| Ok(RecordRef { collection: r.get(0)?, id: r.get(1)? }))?)
    }

    async fn deletion_records(&mut self, deletion_id: &str) -> Result<Vec<RecordRef>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "select collection, record_id from deletion_records where deletion_id = ?1 order by collection, record_id",
            )?
            .query_map([deletion_id], |r| Ok(RecordRef { collection: r.get(0)?, id: r.get(1)? }))?
            .collect::<Result<_, _>>()?)
    }

    async fn deletion_counts(&mut self, deletion_id: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        relations::operation_counts(self.conn, deletion_id)
    }

    async fn set_deletion_status(&mut self, deletion_id: &str, status: DeletionStatus) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("update deletions set status = ?2 where id = ?1")?
            .execute(params![deletion_id, status.as_str()])?;
        Ok(())
    }

    async fn enqueue(&mut self, deletion_id: &str, tenant: &str, edges: &[EventualEdge]) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "insert or ignore into deletion_queue (deletion_id, tenant, child_collection, field, parent_id, after_id) values (?1, ?2, ?3, ?4, ?5, '')",
        )?;
        for e in edges {
            stmt.execute(params![deletion_id, tenant, e.child_collection, e.field, e.parent.id])?;
        }
        Ok(())
    }

    async fn next_queued(&mut self) -> Result<Option<QueuedRelation>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "select {QUEUED_COLUMNS} from deletion_queue q join deletions d on d.id = q.deletion_id order by d.created_at, q.deletion_id limit 1"
            ))?
            .query_row([], read_queued)
            .optional()?)
    }

    async fn queued(&mut self, deletion_id: &str) -> Result<Vec<QueuedRelation>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!("select {QUEUED_COLUMNS} from deletion_queue q where q.deletion_id = ?1"))?
            .query_map([deletion_id], read_queued)?
            .collect::<Result<_, _>>()?)
    }

    async fn queued_children(
        &mut self,
        relation: &QueuedRelation,
        limit: Option<u32>,
    ) -> Result<Vec<String>, StoreError> {
        let q = format!(
            "select id from {} where tenant = ?1 and deleted_at is null and \"f_{}\" = ?2 and id > ?3 order by id limit +?4",
            table_name(&relation.child_collection),
            relation.field
        );
        let limit = limit.map_or(-1, i64::from);
        Ok(self
            .conn
            .prepare_cached(&q)?
            .query_map(params![relation.tenant, relation.parent_id, relation.after_id, limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    async fn advance_queued(&mut self, relation: &QueuedRelation, after_id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "update deletion_queue set after_id = ?5 where deletion_id = ?1 and child_collection = ?2 and field = ?3 and parent_id = ?4",
            )?
            .execute(params![
                relation.deletion_id,
                relation.child_collection,
                relation.field,
                relation.parent_id,
                after_id
            ])?;
        Ok(())
    }

    async fn drop_queued(&mut self, relation: &QueuedRelation) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "delete from deletion_queue where deletion_id = ?1 and child_collection = ?2 and field = ?3 and parent_id = ?4",
            )?
            .execute(params![relation.deletion_id, relation.child_collection, relation.field, relation.parent_id])?;
        Ok(())
    }

    async fn clear_queued(&mut self, deletion_id: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached("delete from deletion_queue where deletion_id = ?1")?.execute([deletion_id])?;
        Ok(())
    }

    async fn append_audit(&mut self, entries: Vec<NewAuditEntry>) -> Result<(), StoreError> {
        changes::append_audit_many(self.conn, entries).map(|_| ())
    }

    async fn append_changes(
        &mut self,
        entries: Vec<NewAuditEntry>,
        events: Vec<NewEvent>,
    ) -> Result<(i64, i64), StoreError> {
        let audit_seq = changes::append_audit_many(self.conn, entries)?;
        Ok((audit_seq, self.append_events(events).await?))
    }

    async fn append_events(&mut self, events: Vec<NewEvent>) -> Result<i64, StoreError> {
        if events.len() == 1 {
            let event = events.into_iter().next().ok_or_else(|| StoreError::Internal("no event".into()))?;
            return changes::append_event(self.conn, event);
        }
        changes::append_events(self.conn, events)
    }

    async fn add_file_ref(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        sha256: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "insert into file_refs (tenant, collection, record_id, sha256) values (?1, ?2, ?3, ?4) on conflict do nothing",
            )?
            .execute(params![tenant, collection, id, sha256])?;
        self.conn.prepare_cached("delete from file_pins where upload_id = ?1")?.execute(params![upload_id])?;
        Ok(())
    }

    async fn release_files(
        &mut self,
        collection: &str,
        rows: &[(String, String)],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut objects = std::collections::BTreeSet::new();
        {
            let mut refs = self.conn.prepare_cached(
                "select sha256 from file_refs where tenant = ?1 and collection = ?2 and record_id = ?3",
            )?;
            let mut drop = self
                .conn
                .prepare_cached("delete from file_refs where tenant = ?1 and collection = ?2 and record_id = ?3")?;
            for (tenant, id) in rows {
                for sha in refs.query_map(params![tenant, collection, id], |r| r.get::<_, String>(0))? {
                    objects.insert((tenant.as_str(), sha?));
                }
                drop.execute(params![tenant, collection, id])?;
            }
        }
        let mut due = self.conn.prepare_cached(
            // Always moved, even later: a files worker deciding to keep the object on what it
            // saw before this commit then leaves the new check in place (KEEP_FILE_SQL).
            "update file_objects set gc_due_at = ?3 where tenant = ?1 and sha256 = ?2",
        )?;
        for (tenant, sha) in &objects {
            due.execute(params![tenant, sha, now.as_micros()])?;
        }
        Ok(objects.len() as u64)
    }

    async fn remove_rows(&mut self, collection: &Collection, rows: &[(String, String)]) -> Result<(), StoreError> {
        let sql = self.table(&collection.name)?;
        for chunk in rows.chunks(64) {
            let pairs: Vec<String> = (0..chunk.len()).map(|i| format!("(?{}, ?{})", 2 * i + 1, 2 * i + 2)).collect();
            let statement = format!("delete from {} where (tenant, id) in (values {})", sql.table, pairs.join(", "));
            let params: Vec<&str> = chunk.iter().flat_map(|(t, id)| [t.as_str(), id.as_str()]).collect();
            self.conn.prepare_cached(&statement)?.execute(params_from_iter(params))?;
        }
        Ok(())
    }

    async fn append_versions(&mut self, versions: Vec<NewVersion>) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(INSERT_VERSION)?;
        for v in &versions {
            insert_version(&mut stmt, v)?;
        }
        Ok(())
    }

    async fn version_body(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        n: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "select body from versions where tenant = ?1 and collection = ?2 and record_id = ?3 and version = ?4",
            )?
            .query_row(params![tenant, collection, id, n], |r| r.get(0))
            .optional()?)
    }

    async fn remove_versions(&mut self, collection: &str, rows: &[(String, String)]) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("delete from versions where tenant = ?1 and collection = ?2 and record_id = ?3")?;
        let mut n = 0;
        for (tenant, id) in rows {
            n += stmt.execute(params![tenant, collection, id])? as u64;
        }
        Ok(n)
    }

    async fn scrub_events(&mut self, tenant: &str, collection: &str, id: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "update outbox set data = null where tenant = ?1 and collection = ?2 and record_id = ?3 and data is not null",
            )?
            .execute(params![tenant, collection, id])? as u64)
    }

    async fn scrub_idempotent_responses(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "update idempotency set body = null, headers = null, state = 'erased' where tenant = ?1 and collection = ?2 and record_id = ?3",
            )?
            .execute(params![tenant, collection, id])? as u64)
    }

    async fn put_erasure(&mut self, tenant: &str, receipt: &Erasure) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "insert into erasures (tenant, collection, record_id, erased_at, audit_seq, events, idempotent_responses, counts, versions, files)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 on conflict do update set erased_at = excluded.erased_at, audit_seq = excluded.audit_seq, events = excluded.events,
                 idempotent_responses = excluded.idempotent_responses, counts = excluded.counts, versions = excluded.versions,
                 files = excluded.files",
            )?
            .execute(params![
                tenant,
                receipt.collection,
                receipt.id,
                receipt.erased_at.as_micros(),
                receipt.audit_seq,
                i64::try_from(receipt.events).unwrap_or(i64::MAX),
                i64::try_from(receipt.idempotent_responses).unwrap_or(i64::MAX),
                serde_json::to_string(&receipt.counts).map_err(|e| StoreError::Internal(e.to_string()))?,
                i64::try_from(receipt.versions).unwrap_or(i64::MAX),
                i64::try_from(receipt.files).unwrap_or(i64::MAX)
            ])?;
        Ok(())
    }

    async fn add_erasure_jobs(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        steps: &[ErasureStep],
        event_seq: i64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "insert into erasure_jobs (tenant, collection, record_id, step, event_seq, created_at) values (?1, ?2, ?3, ?4, ?5, ?6)
             on conflict do update set event_seq = excluded.event_seq, created_at = excluded.created_at",
        )?;
        for step in steps {
            stmt.execute(params![tenant, collection, id, step.as_str(), event_seq, now.as_micros()])?;
        }
        Ok(())
    }

    /// Old page images in the WAL may hold the values until a truncating checkpoint.
    fn storage_erasure_step(&self) -> Option<ErasureStep> {
        Some(ErasureStep::Wal)
    }

    async fn insert_key(&mut self, key: &StoredKey) -> Result<(), StoreError> {
        let scopes = key.scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        self.conn.execute(
            "insert into api_keys (id, tenant, name, scopes, secret_hash, created_at) values (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key.id, key.tenant, key.name, scopes, key.secret_hash, key.created_at.as_micros()],
        )?;
        Ok(())
    }

    async fn delete_key(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let tenant: Option<String> =
            self.conn.query_row("select tenant from api_keys where id = ?1", [id], |r| r.get(0)).optional()?;
        if tenant.is_some() {
            self.conn.execute("delete from api_keys where id = ?1", [id])?;
        }
        Ok(tenant)
    }

    async fn complete_idempotency(
        &mut self,
        key: &IdempotencyKey,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        let claims =
            self.claims.ok_or_else(|| StoreError::Internal("a read-only transaction cannot complete a key".into()))?;
        claims.complete(self.conn, key, response)
    }
}
