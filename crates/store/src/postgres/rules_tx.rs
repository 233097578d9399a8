//! PostgreSQL's side of the write rules: [`crate::rules::Tx`] over a [`PgTx`]. The record
//! primitives are `PgTx`'s own (`tx.rs`); the statements of deletion operations, the
//! eventual queue, holds, erasure and keys are here. Set-based statements bind arrays
//! (`= any($n)`, `unnest`), so a cascade over thousands of records is a few round trips.

use std::collections::BTreeMap;

use tombstone_domain::audit::NewAuditEntry;
use tombstone_domain::config::Collection;
use tombstone_domain::deletion::{DeletionStatus, EventualEdge, RecordRef};
use tombstone_domain::events::NewEvent;
use tombstone_domain::history::NewVersion;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{DeletionMark, Hold, Record, Values};
use tombstone_domain::time::Timestamp;

use super::records::read_record;
use super::schema::{field_column, table_name};
use super::tx::PgTx;
use crate::rules::{DeletionHead, NewDeletion, QueuedRelation, Tx};
use crate::{Erasure, ErasureStep, IdempotencyKey, StoreError, StoredKey, StoredResponse};

fn read_queued(r: &tokio_postgres::Row) -> Result<QueuedRelation, tokio_postgres::Error> {
    Ok(QueuedRelation {
        deletion_id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        child_collection: r.try_get(2)?,
        field: r.try_get(3)?,
        parent_id: r.try_get(4)?,
        after_id: r.try_get(5)?,
    })
}

const QUEUED_COLUMNS: &str = "q.deletion_id, q.tenant, q.child_collection, q.field, q.parent_id, q.after_id";

/// Stores versions (the `versions` table of migration `0007_history`) in one statement.
pub(crate) async fn insert_versions(
    tx: &deadpool_postgres::Transaction<'_>,
    versions: &[NewVersion],
) -> Result<(), StoreError> {
    if versions.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&NewVersion) -> String| versions.iter().map(f).collect::<Vec<String>>();
    let (tenants, collections, ids) =
        (col(|v| v.tenant.clone()), col(|v| v.collection.clone()), col(|v| v.record_id.clone()));
    let (actions, bodies) = (col(|v| v.action.clone()), col(|v| v.body.clone()));
    let valid_from: Vec<i64> = versions.iter().map(|v| v.valid_from.as_micros()).collect();
    let numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
    let actors: Vec<Option<String>> = versions.iter().map(|v| v.actor.clone()).collect();
    let deletions: Vec<Option<String>> = versions.iter().map(|v| v.deletion_id.clone()).collect();
    let stmt = tx
        .prepare_cached(
            "insert into versions (tenant, collection, record_id, valid_from, version, action, actor, deletion_id, body)
             select * from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[])",
        )
        .await?;
    tx.execute(&stmt, &[&tenants, &collections, &ids, &valid_from, &numbers, &actions, &actors, &deletions, &bodies])
        .await?;
    Ok(())
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgTx<'_> {
    /// Runs one statement with parameters, returning the rows it changed.
    async fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64, StoreError> {
        let tx = self.transaction();
        let stmt = tx.prepare_cached(sql).await?;
        Ok(tx.execute(&stmt, params).await?)
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let tx = self.transaction();
        let stmt = tx.prepare_cached(sql).await?;
        Ok(tx.query(&stmt, params).await?)
    }
}

impl Tx for PgTx<'_> {
    async fn get(&mut self, collection: &Collection, tenant: &str, id: &str) -> Result<Option<Record>, StoreError> {
        PgTx::get(self, collection, tenant, id).await
    }

    async fn is_active(&mut self, collection: &str, tenant: &str, id: &str) -> Result<bool, StoreError> {
        PgTx::is_active(self, collection, tenant, id).await
    }

    async fn insert(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        PgTx::insert(self, collection, record).await
    }

    async fn update_values(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        PgTx::update_values(self, collection, record).await
    }

    async fn set_deletion(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        PgTx::set_deletion(self, collection, record).await
    }

    async fn set_archive(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        PgTx::set_archive(self, collection, record).await
    }

    async fn stale_rows(
        &mut self,
        collection: &Collection,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // Locked for this transaction; rows another pass or a request holds are left for
        // the next batch.
        let q = format!(
            "select tenant, id from {} where deleted_at is null and archived_at is null and updated_at <= $1
             order by updated_at limit $2 for update skip locked",
            table_name(&collection.name)
        );
        let rows = self.rows(&q, &[&cutoff.as_micros(), &i64::from(limit)]).await?;
        Ok(rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, tokio_postgres::Error>>()?)
    }

    async fn touch(&mut self, collection: &Collection, record: &Record) -> Result<(), StoreError> {
        let sql = format!(
            "update {} set version = $3, updated_at = $4 where tenant = $1 and id = $2",
            table_name(&collection.name)
        );
        self.exec(&sql, &[&record.tenant, &record.id, &record.version, &record.updated_at.as_micros()]).await?;
        Ok(())
    }

    async fn remove(&mut self, collection: &Collection, tenant: &str, id: &str) -> Result<(), StoreError> {
        PgTx::remove(self, collection, tenant, id).await
    }

    async fn unique_conflict(
        &mut self,
        collection: &Collection,
        tenant: &str,
        id: &str,
        values: &Values,
    ) -> Result<Option<(String, Vec<String>)>, StoreError> {
        PgTx::unique_conflict(self, collection, tenant, id, values).await
    }

    async fn children(
        &mut self,
        child_collection: &str,
        field: &str,
        tenant: &str,
        parent_ids: &[String],
        active_only: bool,
    ) -> Result<Vec<(String, String)>, StoreError> {
        PgTx::children(self, child_collection, field, tenant, parent_ids, active_only).await
    }

    async fn active_rows(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<Record>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.table(&collection.name)?;
        // Locked like a single `get`: nothing changes them before this transaction ends.
        let query = format!(
            "{} where t.tenant = $1 and t.deleted_at is null and t.id = any($2) order by t.id for update of t",
            sql.select
        );
        self.rows(&query, &[&tenant, &ids]).await?.iter().map(|r| read_record(collection, r)).collect()
    }

    async fn soft_delete_many(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
        mark: &DeletionMark,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "update {} set version = version + 1, updated_at = greatest(updated_at + 1, $3), deleted_at = $3, deleted_by = $4, delete_reason = $5,
             deletion_id = $6, purge_at = $7 where tenant = $1 and deleted_at is null and id = any($2)",
            table_name(&collection.name)
        );
        let at = mark.deleted_at.as_micros();
        let purge_at = mark.purge_at.as_micros();
        self.exec(&sql, &[&tenant, &ids, &at, &mark.deleted_by, &mark.reason, &mark.deletion_id, &purge_at]).await?;
        Ok(())
    }

    async fn remove_active_many(
        &mut self,
        collection: &Collection,
        tenant: &str,
        ids: &[String],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "delete from {} where tenant = $1 and deleted_at is null and id = any($2)",
            table_name(&collection.name)
        );
        self.exec(&sql, &[&tenant, &ids]).await?;
        Ok(())
    }

    async fn add_file_ref(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        sha256: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "insert into file_refs (tenant, collection, record_id, sha256) values ($1, $2, $3, $4) on conflict do nothing",
            &[&tenant, &collection, &id, &sha256],
        )
        .await?;
        self.exec("delete from file_pins where upload_id = $1", &[&upload_id]).await?;
        Ok(())
    }

    async fn release_files(
        &mut self,
        collection: &str,
        rows: &[(String, String)],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let tenants: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|(_, i)| i.as_str()).collect();
        // The due time always moves, even later: a files worker deciding to keep an object
        // on what it saw before this commit then leaves the new check in place
        // (KEEP_FILE_SQL compares it).
        let released = self
            .rows(
                "with gone as (
                    delete from file_refs f using unnest($1::text[], $2::text[]) as d(tenant, id)
                    where f.tenant = d.tenant and f.collection = $3 and f.record_id = d.id
                    returning f.tenant, f.sha256
                 ), objects as (select distinct tenant, sha256 from gone),
                 due as (
                    update file_objects o set gc_due_at = $4 from objects
                    where o.tenant = objects.tenant and o.sha256 = objects.sha256
                 )
                 select count(*) from objects",
                &[&tenants, &ids, &collection, &now.as_micros()],
            )
            .await?;
        Ok(released.first().map_or(0, |r| count_of(r.get::<_, i64>(0))))
    }

    async fn remove_rows(&mut self, collection: &Collection, rows: &[(String, String)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (tenants, ids): (Vec<&str>, Vec<&str>) = rows.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
        let sql = format!(
            "delete from {} r using unnest($1::text[], $2::text[]) as d(tenant, id) where r.tenant = d.tenant and r.id = d.id",
            table_name(&collection.name)
        );
        self.exec(&sql, &[&tenants, &ids]).await?;
        Ok(())
    }

    async fn append_versions(&mut self, versions: Vec<NewVersion>) -> Result<(), StoreError> {
        insert_versions(self.transaction(), &versions).await
    }

    async fn version_body(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
        n: i64,
    ) -> Result<Option<String>, StoreError> {
        let rows = self
            .rows(
                "select body from versions where tenant = $1 and collection = $2 and record_id = $3 and version = $4",
                &[&tenant, &collection, &id, &n],
            )
            .await?;
        Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
    }

    async fn remove_versions(&mut self, collection: &str, rows: &[(String, String)]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let tenants: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|(_, i)| i.as_str()).collect();
        self.exec(
            "delete from versions v using unnest($1::text[], $2::text[]) as d(tenant, id)
             where v.tenant = d.tenant and v.collection = $3 and v.record_id = d.id",
            &[&tenants, &ids, &collection],
        )
        .await
    }

    async fn scrub_events(&mut self, tenant: &str, collection: &str, id: &str) -> Result<u64, StoreError> {
        self.exec(
            "update outbox set data = null where tenant = $1 and collection = $2 and record_id = $3 and data is not null",
            &[&tenant, &collection, &id],
        )
        .await
    }

    async fn scrub_idempotent_responses(
        &mut self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<u64, StoreError> {
        self.exec(
            "update idempotency set body = null, headers = null, state = 'erased' where tenant = $1 and collection = $2 and record_id = $3",
            &[&tenant, &collection, &id],
        )
        .await
    }

    async fn put_erasure(&mut self, tenant: &str, receipt: &Erasure) -> Result<(), StoreError> {
        let counts = serde_json::to_string(&receipt.counts).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.exec(
            "insert into erasures (tenant, collection, record_id, erased_at, audit_seq, events, idempotent_responses, counts, versions, files)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             on conflict (tenant, collection, record_id) do update set erased_at = excluded.erased_at, audit_seq = excluded.audit_seq,
             events = excluded.events, idempotent_responses = excluded.idempotent_responses, counts = excluded.counts,
             versions = excluded.versions, files = excluded.files",
            &[
                &tenant,
                &receipt.collection,
                &receipt.id,
                &receipt.erased_at.as_micros(),
                &receipt.audit_seq,
                &count(receipt.events),
                &count(receipt.idempotent_responses),
                &counts,
                &count(receipt.versions),
                &count(receipt.files),
            ],
        )
        .await?;
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
        let steps: Vec<&str> = steps.iter().map(|s| s.as_str()).collect();
        self.exec(
            "insert into erasure_jobs (tenant, collection, record_id, step, event_seq, created_at)
             select $1, $2, $3, step, $5, $6 from unnest($4::text[]) as s(step)
             on conflict (tenant, collection, record_id, step) do update set event_seq = excluded.event_seq, created_at = excluded.created_at",
            &[&tenant, &collection, &id, &steps, &event_seq, &now.as_micros()],
        )
        .await?;
        Ok(())
    }

    /// Deleted and updated rows stay in the table's pages as dead tuples until a vacuum
    /// prunes them.
    fn storage_erasure_step(&self) -> Option<ErasureStep> {
        Some(ErasureStep::Vacuum)
    }

    async fn insert_key(&mut self, key: &StoredKey) -> Result<(), StoreError> {
        let scopes = key.scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        self.exec(
            "insert into api_keys (id, tenant, name, scopes, secret_hash, created_at) values ($1, $2, $3, $4, $5, $6)",
            &[&key.id, &key.tenant, &key.name, &scopes, &key.secret_hash, &key.created_at.as_micros()],
        )
        .await?;
        Ok(())
    }

    async fn delete_key(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let rows = self.rows("delete from api_keys where id = $1 returning tenant", &[&id]).await?;
        Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
    }

    async fn insert_hold(&mut self, tenant: &str, collection: &str, id: &str, hold: &Hold) -> Result<(), StoreError> {
        self.exec(
            "insert into holds (id, tenant, collection, record_id, case_name, reason, actor, at) values ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&hold.hold_id, &tenant, &collection, &id, &hold.case, &hold.reason, &hold.actor, &hold.at.as_micros()],
        )
        .await?;
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
        let rows = self
            .rows(
                "update holds set released_at = $5, released_by = $6, release_reason = $7
                 where id = $1 and tenant = $2 and collection = $3 and record_id = $4 and released_at is null
                 returning case_name",
                &[&hold_id, &actor.tenant, &collection, &id, &at.as_micros(), &actor.key_id, &reason],
            )
            .await?;
        Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
    }

    async fn insert_deletion(&mut self, op: &NewDeletion<'_>) -> Result<(), StoreError> {
        self.exec(
            "insert into deletions (id, tenant, actor, reason, request_id, created_at, root_collection, root_id, status)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &op.id,
                &op.actor.tenant,
                &op.actor.key_id,
                &op.reason,
                &op.actor.request_id,
                &op.created_at.as_micros(),
                &op.root.collection,
                &op.root.id,
                &op.status.as_str(),
            ],
        )
        .await?;
        self.add_deletion_records(op.id, std::slice::from_ref(op.root)).await
    }

    async fn add_deletion_records(&mut self, deletion_id: &str, refs: &[RecordRef]) -> Result<(), StoreError> {
        if refs.is_empty() {
            return Ok(());
        }
        let (collections, ids): (Vec<&str>, Vec<&str>) =
            refs.iter().map(|r| (r.collection.as_str(), r.id.as_str())).unzip();
        self.exec(
            "insert into deletion_records (deletion_id, collection, record_id)
             select $1, c, r from unnest($2::text[], $3::text[]) as x(c, r) on conflict do nothing",
            &[&deletion_id, &collections, &ids],
        )
        .await?;
        Ok(())
    }

    async fn deletion(&mut self, tenant: Option<&str>, id: &str) -> Result<Option<DeletionHead>, StoreError> {
        let rows = self
            .rows(
                "select actor, reason, request_id, status from deletions where id = $1 and ($2::text is null or tenant = $2)",
                &[&id, &tenant],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let status: String = row.try_get(3)?;
        let status = DeletionStatus::parse(&status)
            .ok_or_else(|| StoreError::Internal(format!("deletion {id} has status {status:?}")))?;
        Ok(Some(DeletionHead { actor: row.try_get(0)?, reason: row.try_get(1)?, request_id: row.try_get(2)?, status }))
    }

    async fn deletion_root(&mut self, id: &str) -> Result<RecordRef, StoreError> {
        let rows = self.rows("select root_collection, root_id from deletions where id = $1", &[&id]).await?;
        let row = rows.first().ok_or(StoreError::NotFound)?;
        Ok(RecordRef { collection: row.try_get(0)?, id: row.try_get(1)? })
    }

    async fn deletion_records(&mut self, deletion_id: &str) -> Result<Vec<RecordRef>, StoreError> {
        let rows = self
            .rows(
                "select collection, record_id from deletion_records where deletion_id = $1 order by collection, record_id",
                &[&deletion_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok::<_, tokio_postgres::Error>(RecordRef { collection: r.try_get(0)?, id: r.try_get(1)? }))
            .collect::<Result<_, _>>()?)
    }

    async fn deletion_counts(&mut self, deletion_id: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = self
            .rows(
                "select collection, count(*) from deletion_records where deletion_id = $1 group by collection",
                &[&deletion_id],
            )
            .await?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let n: i64 = r.try_get(1)?;
            out.insert(r.try_get(0)?, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    async fn set_deletion_status(&mut self, deletion_id: &str, status: DeletionStatus) -> Result<(), StoreError> {
        self.exec("update deletions set status = $2 where id = $1", &[&deletion_id, &status.as_str()]).await?;
        Ok(())
    }

    async fn enqueue(&mut self, deletion_id: &str, tenant: &str, edges: &[EventualEdge]) -> Result<(), StoreError> {
        if edges.is_empty() {
            return Ok(());
        }
        let collections: Vec<&str> = edges.iter().map(|e| e.child_collection.as_str()).collect();
        let fields: Vec<&str> = edges.iter().map(|e| e.field.as_str()).collect();
        let parents: Vec<&str> = edges.iter().map(|e| e.parent.id.as_str()).collect();
        self.exec(
            "insert into deletion_queue (deletion_id, tenant, child_collection, field, parent_id, after_id)
             select $1, $2, c, f, p, '' from unnest($3::text[], $4::text[], $5::text[]) as e(c, f, p) on conflict do nothing",
            &[&deletion_id, &tenant, &collections, &fields, &parents],
        )
        .await?;
        Ok(())
    }

    async fn next_queued(&mut self) -> Result<Option<QueuedRelation>, StoreError> {
        let rows = self
            .rows(
                &format!(
                    "select {QUEUED_COLUMNS} from deletion_queue q join deletions d on d.id = q.deletion_id
                     order by d.created_at, q.deletion_id limit 1"
                ),
                &[],
            )
            .await?;
        Ok(rows.first().map(read_queued).transpose()?)
    }

    async fn queued(&mut self, deletion_id: &str) -> Result<Vec<QueuedRelation>, StoreError> {
        let rows = self
            .rows(&format!("select {QUEUED_COLUMNS} from deletion_queue q where q.deletion_id = $1"), &[&deletion_id])
            .await?;
        Ok(rows.iter().map(read_queued).collect::<Result<_, _>>()?)
    }

    async fn queued_children(
        &mut self,
        relation: &QueuedRelation,
        limit: Option<u32>,
    ) -> Result<Vec<String>, StoreError> {
        let q = format!(
            "select id from {} where tenant = $1 and deleted_at is null and {} = $2 and id > $3 order by id limit $4",
            table_name(&relation.child_collection),
            field_column(&relation.field)
        );
        let limit: Option<i64> = limit.map(i64::from);
        let rows = self.rows(&q, &[&relation.tenant, &relation.parent_id, &relation.after_id, &limit]).await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    async fn advance_queued(&mut self, relation: &QueuedRelation, after_id: &str) -> Result<(), StoreError> {
        self.exec(
            "update deletion_queue set after_id = $5 where deletion_id = $1 and child_collection = $2 and field = $3 and parent_id = $4",
            &[&relation.deletion_id, &relation.child_collection, &relation.field, &relation.parent_id, &after_id],
        )
        .await?;
        Ok(())
    }

    async fn drop_queued(&mut self, relation: &QueuedRelation) -> Result<(), StoreError> {
        self.exec(
            "delete from deletion_queue where deletion_id = $1 and child_collection = $2 and field = $3 and parent_id = $4",
            &[&relation.deletion_id, &relation.child_collection, &relation.field, &relation.parent_id],
        )
        .await?;
        Ok(())
    }

    async fn clear_queued(&mut self, deletion_id: &str) -> Result<(), StoreError> {
        self.exec("delete from deletion_queue where deletion_id = $1", &[&deletion_id]).await?;
        Ok(())
    }

    async fn append_audit(&mut self, entries: Vec<NewAuditEntry>) -> Result<(), StoreError> {
        PgTx::append_audit(self, entries).await
    }

    async fn append_events(&mut self, events: Vec<NewEvent>) -> Result<i64, StoreError> {
        Ok(PgTx::append_events(self, events).await?.1)
    }

    async fn append_changes(
        &mut self,
        entries: Vec<NewAuditEntry>,
        events: Vec<NewEvent>,
    ) -> Result<(i64, i64), StoreError> {
        PgTx::append_audit(self, entries).await?;
        let (_, last_event) = PgTx::append_events(self, events).await?;
        Ok((self.audit_seq().unwrap_or(0), last_event))
    }

    async fn complete_idempotency(
        &mut self,
        key: &IdempotencyKey,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        PgTx::complete_idempotency(self, key, response).await
    }
}
