//! The store traits on PostgreSQL: every write goes through the shared rules
//! (`crate::rules`) over a [`PgTx`]; the reads of deletion operations, the trash, holds,
//! the purge preview and erasure receipts are here, each mirroring SQLite's answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use tombstone_domain::config::Collection;
use tombstone_domain::deletion::{DeletionPlan, RecordRef};
use tombstone_domain::lifecycle::{Actor, ArchiveRequest, DeleteRequest, IfMatch};
use tombstone_domain::record::{Hold, Patch, Record};
use tombstone_domain::time::Timestamp;

use super::records::read_record;
use super::schema::table_name;
use super::{BoxFuture, PgStore, PgTx};
use crate::rules;
use crate::rules::retention::Due;
use crate::{
    CollectionCounts, DeleteOutcome, DeletionOp, DeletionStore, Erasure, ErasureStep, PurgeBatch, PurgeDue,
    RecordsPage, RestoreOutcome, RetentionStore, StoreError, TrashQuery,
};

/// The meta key of the purge pause (the same as SQLite's).
const PURGE_PAUSED: &str = "purge.paused";

/// Rows of a purge batch per statement.
const PURGE_CHUNK: u32 = 256;

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Whether any hold is active on a row of `t` (the table's alias), for one collection.
fn held_clause(collection: &str) -> String {
    format!(
        "exists (select 1 from holds h where h.tenant = t.tenant and h.collection = '{collection}' and h.record_id = t.id and h.released_at is null)"
    )
}

impl PgStore {
    /// Runs `f` in one write transaction on a pooled connection: it commits when `f`
    /// succeeds (waking the outbox's followers when events were written) and rolls back
    /// when it fails.
    pub(crate) async fn write<T>(
        &self,
        f: impl for<'t> FnOnce(&'t mut PgTx<'_>) -> BoxFuture<'t, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let mut tx = self.transaction(&mut client).await?;
        match f(&mut tx).await {
            Ok(value) => {
                let changed = tx.changed().to_vec();
                tx.commit().await?;
                // Before the caller hears of the commit: no answer to a change can be
                // followed by a read of the old state from this process's cache.
                self.invalidate(&changed).await;
                Ok(value)
            }
            Err(e) => {
                // The error is the answer; a failed rollback only means the connection
                // is gone, and the pool drops it.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Runs `f` in the next group of writes (see the `group` module): a request's
    /// single-record write, which shares its commit with the writes arriving beside it.
    /// It answers after that commit, or at once with `f`'s error, in which case only
    /// `f`'s own writes were rolled back (to a savepoint).
    ///
    /// # Errors
    /// `f`'s error; the database's when the group could not begin or commit.
    pub async fn grouped<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t, 'c> FnOnce(&'t mut PgTx<'c>) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
    {
        self.group.write(self.tables()?, f).await
    }

    /// How many groups of writes committed, carrying how many writes.
    #[must_use]
    pub fn group_stats(&self) -> super::GroupStats {
        self.group.stats()
    }

    /// Writes waiting for the next group.
    #[must_use]
    pub fn waiting_writes(&self) -> usize {
        self.group.waiting()
    }

    /// Runs `f` in a transaction that is always rolled back: a dry run takes the same
    /// locks as the write it previews, for the moment it runs, and changes nothing.
    async fn preview<T>(
        &self,
        f: impl for<'t> FnOnce(&'t mut PgTx<'_>) -> BoxFuture<'t, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let mut tx = self.transaction(&mut client).await?;
        let result = f(&mut tx).await;
        let _ = tx.rollback().await;
        result
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.query(&stmt, params).await?)
    }

    async fn any_active_hold(&self, collection: &str) -> Result<bool, StoreError> {
        let rows = self
            .query("select exists (select 1 from holds where collection = $1 and released_at is null)", &[&collection])
            .await?;
        Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(false))
    }

    async fn is_paused(&self) -> Result<bool, StoreError> {
        Ok(self.get_meta(PURGE_PAUSED).await?.as_deref() == Some("true"))
    }

    /// Records created through the rules (for `create_record`; the trait's impl).
    pub(crate) async fn create_with_rules(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        record: Record,
        idempotency: Option<(crate::IdempotencyKey, crate::StoredResponse)>,
    ) -> Result<Record, StoreError> {
        let (actor, collection) = (actor.clone(), collection.clone());
        self.grouped(move |tx| {
            Box::pin(async move { rules::records::create(tx, &actor, &collection, record, idempotency.as_ref()).await })
        })
        .await
    }

    pub(crate) async fn patch_with_rules(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        patch: Patch,
        now: Timestamp,
    ) -> Result<Record, StoreError> {
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.grouped(move |tx| {
            Box::pin(async move {
                rules::records::patch(tx, &actor, &collection, &id, if_match.as_ref(), &patch, now).await
            })
        })
        .await
    }

    pub(crate) async fn delete_with_rules(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: DeleteRequest,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let schema = self.schema()?;
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.grouped(move |tx| {
            Box::pin(async move { rules::records::delete(tx, &schema, &collection, &actor, &id, request, now).await })
        })
        .await
    }

    pub(crate) async fn restore_with_rules(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<RestoreOutcome, StoreError> {
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.grouped(move |tx| {
            Box::pin(async move {
                rules::records::restore(tx, &actor, &collection, &id, if_match.as_ref(), reason.as_deref(), now).await
            })
        })
        .await
    }

    /// Archives or unarchives a record through the shared rules (§17).
    pub(crate) async fn archive_with_rules(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: ArchiveRequest,
        if_match: Option<IfMatch>,
        now: Timestamp,
    ) -> Result<Record, StoreError> {
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.grouped(move |tx| {
            Box::pin(async move {
                rules::records::archive(tx, &actor, &collection, &id, &request, if_match.as_ref(), now).await
            })
        })
        .await
    }

    /// One collection's part of a trash page (see SQLite's `retention::trash`).
    async fn trash(
        &self,
        collection: &Collection,
        tenant: &str,
        query: &TrashQuery,
        now: Timestamp,
    ) -> Result<Vec<Record>, StoreError> {
        let sql = self.table(collection)?;
        let mut ints: Vec<Option<i64>> = vec![Some(now.as_micros())];
        let mut clauses =
            vec!["t.tenant = $1".to_string(), "t.deleted_at is not null".into(), "t.purge_at > $2".into()];
        // $1 tenant, $2 now, $3 deleted_since, $4 deleted_before, $5 purge_before,
        // $6 deleted_by, $7 after.deleted_at, $8 after.id, $9 limit.
        ints.push(query.deleted_since.map(Timestamp::as_micros));
        ints.push(query.deleted_before.map(Timestamp::as_micros));
        ints.push(query.purge_before.map(Timestamp::as_micros));
        clauses.push("($3::bigint is null or t.deleted_at >= $3)".into());
        clauses.push("($4::bigint is null or t.deleted_at < $4)".into());
        clauses.push("($5::bigint is null or t.purge_at < $5)".into());
        clauses.push("($6::text is null or t.deleted_by = $6)".into());
        let after_at = query.after.as_ref().map(|a| a.deleted_at.as_micros());
        let after_id = query.after.as_ref().map(|a| a.id.clone());
        if let Some(after) = &query.after {
            // Newest first over (deleted_at, collection, id); this collection's name is a
            // constant, so the tuple comparison reduces to one of three forms.
            clauses.push(match collection.name.as_str().cmp(after.collection.as_str()) {
                std::cmp::Ordering::Less => "t.deleted_at <= $7 and $8::text is not null".into(),
                std::cmp::Ordering::Greater => "t.deleted_at < $7 and $8::text is not null".into(),
                std::cmp::Ordering::Equal => "(t.deleted_at < $7 or (t.deleted_at = $7 and t.id < $8))".into(),
            });
        } else {
            clauses.push("$7::bigint is null and $8::text is null".into());
        }
        let q =
            format!("{} where {} order by t.deleted_at desc, t.id desc limit $9", sql.select, clauses.join(" and "));
        let limit = i64::from(query.limit);
        let rows = self
            .query(
                &q,
                &[&tenant, &ints[0], &ints[1], &ints[2], &ints[3], &query.deleted_by, &after_at, &after_id, &limit],
            )
            .await?;
        rows.iter().map(|r| read_record(collection, r)).collect()
    }

    /// What is due for purge in one collection.
    async fn due(
        &self,
        collection: &Collection,
        tenant: Option<&str>,
        now: Timestamp,
        horizon: Timestamp,
    ) -> Result<PurgeDue, StoreError> {
        let table = table_name(&collection.name);
        let held =
            if self.any_active_hold(&collection.name).await? { held_clause(&collection.name) } else { "false".into() };
        let (now, horizon) = (now.as_micros(), horizon.as_micros());
        let q = format!(
            "select count(*) filter (where t.purge_at <= $1 and not {held}),
                    count(*) filter (where t.purge_at > $1 and t.purge_at <= $2 and not {held}),
                    count(*) filter (where t.purge_at <= $1 and {held})
             from {table} t where ($3::text is null or t.tenant = $3) and t.deleted_at is not null"
        );
        let rows = self.query(&q, &[&now, &horizon, &tenant]).await?;
        let row = rows.first().ok_or_else(|| StoreError::Internal("a count answered no row".into()))?;
        let sample_q = format!(
            "select t.id from {table} t where ($2::text is null or t.tenant = $2) and t.deleted_at is not null
             and t.purge_at <= $1 and not {held} order by t.purge_at limit 100"
        );
        let sample = self.query(&sample_q, &[&now, &tenant]).await?;
        Ok(PurgeDue {
            collection: collection.name.clone(),
            due_now: count(row.try_get(0)?),
            sample: sample.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?,
            due_soon: count(row.try_get(1)?),
            held: count(row.try_get(2)?),
        })
    }

    /// Purges up to `limit` due rows of one collection in one transaction. Due rows are
    /// claimed `FOR UPDATE SKIP LOCKED`: two processes purging at once take different rows,
    /// and none waits behind a request that holds one.
    async fn purge_chunk(
        &self,
        collection: &Arc<Collection>,
        now: Timestamp,
        limit: u32,
        run_id: &str,
    ) -> Result<PurgeBatch, StoreError> {
        let held = if self.any_active_hold(&collection.name).await? {
            format!("and not {}", held_clause(&collection.name))
        } else {
            String::new()
        };
        let query = format!(
            "select t.tenant, t.id, t.version, t.deletion_id from {} t
             where t.deleted_at is not null and t.purge_at <= $1 {held}
             order by t.purge_at limit $2 for update of t skip locked",
            table_name(&collection.name)
        );
        let (collection, run_id) = (collection.clone(), run_id.to_string());
        self.write(move |tx| {
            Box::pin(async move {
                // Checked inside the batch's transaction: once a pause commits, no batch
                // purges.
                let paused = tx
                    .transaction()
                    .query_opt("select value from meta where key = $1", &[&PURGE_PAUSED])
                    .await?
                    .map(|r| r.try_get::<_, String>(0))
                    .transpose()?;
                if paused.as_deref() == Some("true") {
                    return Ok(PurgeBatch { purged: 0, paused: true });
                }
                let rows = tx.transaction().query(&query, &[&now.as_micros(), &i64::from(limit)]).await?;
                let due: Vec<Due> = rows
                    .iter()
                    .map(|r| {
                        Ok::<_, tokio_postgres::Error>(Due {
                            tenant: r.try_get(0)?,
                            id: r.try_get(1)?,
                            version: r.try_get(2)?,
                            deletion_id: r.try_get(3)?,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                rules::retention::purge_rows(tx, &collection, &due, &run_id, now).await?;
                Ok(PurgeBatch { purged: due.len() as u64, paused: false })
            })
        })
        .await
    }
}

#[async_trait]
impl DeletionStore for PgStore {
    async fn plan_deletion(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<DeletionPlan>, StoreError> {
        let schema = self.schema()?;
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.preview(move |tx| {
            Box::pin(async move { rules::records::dry_run(tx, &schema, &collection, &actor, &id, now).await })
        })
        .await
    }

    async fn get_deletion(&self, tenant: &str, id: &str, page: &RecordsPage) -> Result<Option<DeletionOp>, StoreError> {
        let rows = self
            .query(
                "select status, actor, reason, created_at, root_collection, root_id from deletions where id = $1 and tenant = $2",
                &[&id, &tenant],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let root = RecordRef { collection: row.try_get(4)?, id: row.try_get(5)? };
        // One page of the records: the root first, then the others by (collection, id),
        // read from the primary key after the cursor.
        let first_page = page.after.is_none();
        let after = page.after.clone().unwrap_or_else(|| RecordRef::new("", ""));
        let others = if first_page { page.limit.saturating_sub(1) } else { page.limit };
        let listed = self
            .query(
                "select collection, record_id from deletion_records
                 where deletion_id = $1 and (collection, record_id) > ($2, $3) and not (collection = $4 and record_id = $5)
                 order by collection, record_id limit $6",
                &[&id, &after.collection, &after.id, &root.collection, &root.id, &(i64::from(others) + 1)],
            )
            .await?;
        let mut records: Vec<RecordRef> = listed
            .iter()
            .map(|r| Ok::<_, tokio_postgres::Error>(RecordRef { collection: r.try_get(0)?, id: r.try_get(1)? }))
            .collect::<Result<_, _>>()?;
        let records_next = if records.len() > others as usize {
            records.truncate(others as usize);
            // A first page of the root alone: the next one starts at the first of the others.
            records.last().cloned().or_else(|| first_page.then(|| RecordRef::new("", "")))
        } else {
            None
        };
        if first_page {
            records.insert(0, root.clone());
        }
        let pending: i64 = self
            .query("select count(*) from deletion_queue where deletion_id = $1", &[&id])
            .await?
            .first()
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let mut counts = BTreeMap::new();
        for r in &self
            .query(
                "select collection, count(*) from deletion_records where deletion_id = $1 group by collection",
                &[&id],
            )
            .await?
        {
            counts.insert(r.try_get::<_, String>(0)?, count(r.try_get(1)?));
        }
        let schema = self.schema()?;
        let mut restorable_until: Option<i64> = None;
        for name in counts.keys() {
            if schema.collection(name).is_none() {
                continue;
            }
            let q = format!(
                "select min(purge_at) from {} where tenant = $1 and deletion_id = $2 and deleted_at is not null",
                table_name(name)
            );
            let min: Option<i64> =
                self.query(&q, &[&tenant, &id]).await?.first().map(|r| r.try_get(0)).transpose()?.flatten();
            if let Some(m) = min {
                restorable_until = Some(restorable_until.map_or(m, |r| r.min(m)));
            }
        }
        // Propagation: per endpoint, pending until its cursor passed the operation's events
        // and their deliveries are done; failed if any delivery failed or was cancelled.
        // Tenants read this: endpoint ids and error classes only, never URLs, and only
        // the endpoints that serve this tenant.
        let newest_event: Option<i64> = self
            .query("select max(seq) from outbox where tenant = $1 and deletion_id = $2", &[&tenant, &id])
            .await?
            .first()
            .map(|r| r.try_get(0))
            .transpose()?
            .flatten();
        let endpoints = self
            .query(
                "select id, cursor, disabled_at, removed_at is not null from webhook_endpoints
                 where tenant is null or tenant = $1 order by id",
                &[&tenant],
            )
            .await?;
        let mut webhooks = BTreeMap::new();
        for e in &endpoints {
            let endpoint: String = e.try_get(0)?;
            let cursor: i64 = e.try_get(1)?;
            let disabled_at: Option<i64> = e.try_get(2)?;
            let removed: bool = e.try_get(3)?;
            let states: Vec<(String, Option<String>)> = self
                .query(
                    "select d.status, d.last_error from webhook_deliveries d join outbox o on o.seq = d.event_seq
                     where d.endpoint_id = $1 and o.tenant = $2 and o.deletion_id = $3",
                    &[&endpoint, &tenant, &id],
                )
                .await?
                .iter()
                .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, _>>()?;
            if let Some(status) = crate::sink_status(&states, newest_event, cursor, disabled_at.is_some(), removed) {
                webhooks.insert(endpoint, status);
            }
        }
        Ok(Some(DeletionOp {
            id: id.to_string(),
            status: row.try_get(0)?,
            actor: row.try_get(1)?,
            reason: row.try_get(2)?,
            created_at: Timestamp::from_micros(row.try_get(3)?),
            root,
            records,
            records_next,
            records_total: counts.values().sum(),
            pending_relations: count(pending),
            counts,
            restorable_until: restorable_until.map(Timestamp::from_micros),
            webhooks,
            last_event_seq: newest_event,
        }))
    }

    async fn restore_deletion(&self, actor: &Actor, id: &str, now: Timestamp) -> Result<Vec<Record>, StoreError> {
        let schema = self.schema()?;
        let (actor, id) = (actor.clone(), id.to_string());
        self.write(move |tx| {
            Box::pin(async move { rules::deletions::restore_operation(tx, &schema, &actor, &id, now).await })
        })
        .await
    }

    async fn run_eventual(&self, batch: u32, now: Timestamp) -> Result<u64, StoreError> {
        // Idle passes only read.
        let queued: bool = self
            .query("select exists (select 1 from deletion_queue)", &[])
            .await?
            .first()
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(false);
        if !queued {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let schema = self.schema()?;
            let (deleted, more) = self
                .write(move |tx| {
                    Box::pin(async move { rules::deletions::eventual_step(tx, &schema, batch, now).await })
                })
                .await?;
            total += deleted;
            if !more {
                return Ok(total);
            }
        }
    }

    async fn list_trash(
        &self,
        tenant: &str,
        collections: &[Arc<Collection>],
        query: &TrashQuery,
        now: Timestamp,
    ) -> Result<Vec<Record>, StoreError> {
        let mut all = Vec::new();
        for c in collections {
            all.extend(self.trash(c, tenant, query, now).await?);
        }
        Ok(crate::merge_trash(all, query.limit))
    }
}

#[async_trait]
impl RetentionStore for PgStore {
    async fn place_hold(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        case: Option<String>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Hold, StoreError> {
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.write(move |tx| {
            Box::pin(async move { rules::retention::place_hold(tx, &actor, &collection, &id, case, reason, now).await })
        })
        .await
    }

    async fn release_hold(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        hold_id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Record, StoreError> {
        let (actor, collection, id, hold_id) = (actor.clone(), collection.clone(), id.to_string(), hold_id.to_string());
        self.write(move |tx| {
            Box::pin(async move {
                rules::retention::release_hold(tx, &actor, &collection, &id, &hold_id, reason.as_deref(), now).await
            })
        })
        .await
    }

    async fn active_holds(
        &self,
        tenant: &str,
        collection: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<Hold>>, StoreError> {
        let rows = self
            .query(
                "select record_id, id, case_name, reason, actor, at from holds
                 where tenant = $1 and collection = $2 and record_id = any($3) and released_at is null order by at, id",
                &[&tenant, &collection, &ids],
            )
            .await?;
        let mut out: HashMap<String, Vec<Hold>> = ids.iter().map(|id| (id.clone(), Vec::new())).collect();
        for r in &rows {
            let record: String = r.try_get(0)?;
            out.entry(record).or_default().push(Hold {
                hold_id: r.try_get(1)?,
                case: r.try_get(2)?,
                reason: r.try_get(3)?,
                actor: r.try_get(4)?,
                at: Timestamp::from_micros(r.try_get(5)?),
            });
        }
        Ok(out)
    }

    async fn purge_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.write(move |tx| {
            Box::pin(async move {
                rules::retention::purge_record(tx, &actor, &collection, &id, reason.as_deref(), now).await
            })
        })
        .await
    }

    async fn purge_batch(
        &self,
        collection: &Arc<Collection>,
        now: Timestamp,
        limit: u32,
        run_id: &str,
    ) -> Result<PurgeBatch, StoreError> {
        // In chunks, each its own transaction: a batch never holds many row locks, or the
        // audit head, for long.
        let mut batch = PurgeBatch::default();
        while batch.purged < u64::from(limit) {
            let want = (limit - u32::try_from(batch.purged).unwrap_or(limit)).min(PURGE_CHUNK);
            let part = self.purge_chunk(collection, now, want, run_id).await?;
            batch.purged += part.purged;
            batch.paused = part.paused;
            if part.paused || part.purged < u64::from(want) {
                break;
            }
        }
        Ok(batch)
    }

    async fn archive_batch(
        &self,
        collection: &Arc<Collection>,
        cutoff: Timestamp,
        now: Timestamp,
        limit: u32,
        run_id: &str,
    ) -> Result<u64, StoreError> {
        // In chunks, each its own transaction, as purge batches: a batch never holds many
        // row locks, or the audit head, for long.
        let mut archived = 0;
        while archived < u64::from(limit) {
            let want = (limit - u32::try_from(archived).unwrap_or(limit)).min(PURGE_CHUNK);
            let (collection, run_id) = (collection.clone(), run_id.to_string());
            let part = self
                .write(move |tx| {
                    Box::pin(async move {
                        rules::retention::archive_stale(tx, &collection, cutoff, want, &run_id, now).await
                    })
                })
                .await?;
            archived += part;
            if part < u64::from(want) {
                break;
            }
        }
        Ok(archived)
    }

    async fn purge_due(
        &self,
        tenant: Option<&str>,
        collections: &[Arc<Collection>],
        now: Timestamp,
        horizon: Timestamp,
    ) -> Result<Vec<PurgeDue>, StoreError> {
        let mut out = Vec::with_capacity(collections.len());
        for c in collections {
            out.push(self.due(c, tenant, now, horizon).await?);
        }
        Ok(out)
    }

    async fn collection_counts(
        &self,
        tenant: &str,
        collections: &[Arc<Collection>],
        horizon: Timestamp,
    ) -> Result<Vec<CollectionCounts>, StoreError> {
        let mut out = Vec::with_capacity(collections.len());
        for c in collections {
            let held = if self.any_active_hold(&c.name).await? { held_clause(&c.name) } else { "false".to_string() };
            let q = format!(
                "select count(*) filter (where t.deleted_at is null and t.archived_at is null),
                        count(*) filter (where t.deleted_at is not null),
                        count(*) filter (where t.deleted_at is not null and t.purge_at <= $2 and not {held}),
                        count(*) filter (where t.deleted_at is null and t.archived_at is not null)
                 from {} t where t.tenant = $1",
                table_name(&c.name)
            );
            let rows = self.query(&q, &[&tenant, &horizon.as_micros()]).await?;
            let row = rows.first().ok_or_else(|| StoreError::Internal("a count answered no row".into()))?;
            let held_count: i64 = self
                .query(
                    "select count(distinct record_id) from holds where tenant = $1 and collection = $2 and released_at is null",
                    &[&tenant, &c.name],
                )
                .await?
                .first()
                .map(|r| r.try_get(0))
                .transpose()?
                .unwrap_or(0);
            out.push(CollectionCounts {
                collection: c.name.clone(),
                active: count(row.try_get(0)?),
                archived: count(row.try_get(3)?),
                deleted: count(row.try_get(1)?),
                expiring: count(row.try_get(2)?),
                held: count(held_count),
            });
        }
        Ok(out)
    }

    async fn set_purge_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.set_meta(PURGE_PAUSED, if paused { "true" } else { "false" }).await
    }

    async fn purge_paused(&self) -> Result<bool, StoreError> {
        self.is_paused().await
    }

    async fn erase_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Erasure, StoreError> {
        let schema = self.schema()?;
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        let mut erasure = self
            .write(move |tx| {
                Box::pin(async move {
                    rules::retention::erase(tx, &schema, &collection, &actor, &id, reason.as_deref(), now).await
                })
            })
            .await?;
        // Committed: the dead tuples that still hold the values are pruned at once when
        // no older snapshot can see them; otherwise the erasure worker finishes the job.
        match self.finish_erasure_wal(std::time::Duration::ZERO).await {
            Ok(n) if n > 0 => erasure.pending.retain(|s| *s != ErasureStep::Vacuum),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the vacuum after an erasure failed; retried by the worker"),
        }
        Ok(erasure)
    }

    async fn is_erased(&self, tenant: &str, collection: &str, id: &str) -> Result<bool, StoreError> {
        Ok(!self
            .query(
                "select 1 from erasures where tenant = $1 and collection = $2 and record_id = $3",
                &[&tenant, &collection, &id],
            )
            .await?
            .is_empty())
    }

    async fn erasure_receipt(&self, tenant: &str, collection: &str, id: &str) -> Result<Option<Erasure>, StoreError> {
        let rows = self
            .query(
                "select erased_at, audit_seq, events, idempotent_responses, counts, versions, files from erasures
                 where tenant = $1 and collection = $2 and record_id = $3",
                &[&tenant, &collection, &id],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let mut pending: Vec<ErasureStep> = self
            .query(
                "select step from erasure_jobs where tenant = $1 and collection = $2 and record_id = $3",
                &[&tenant, &collection, &id],
            )
            .await?
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).map(|s| ErasureStep::parse(&s)).transpose())
            .collect::<Result<_, _>>()?;
        pending.sort();
        let counts: Option<String> = row.try_get(4)?;
        let counts = counts
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_else(|| BTreeMap::from([(collection.to_string(), 1)]));
        Ok(Some(Erasure {
            collection: collection.to_string(),
            id: id.to_string(),
            erased_at: Timestamp::from_micros(row.try_get(0)?),
            audit_seq: row.try_get(1)?,
            versions: count(row.try_get(5)?),
            events: count(row.try_get(2)?),
            idempotent_responses: count(row.try_get(3)?),
            files: count(row.try_get(6)?),
            counts,
            pending,
        }))
    }

    /// PostgreSQL's storage step is a vacuum: the erased rows and their removed history
    /// rows (`versions`), and the scrubbed versions of outbox and idempotency rows, stay in
    /// their tables' pages as dead tuples until one
    /// prunes them — and a vacuum keeps every tuple deleted by a transaction that is not
    /// older than the oldest snapshot xmin of the database's backends, the vacuum's own
    /// included. A snapshot's xmin is the oldest transaction running anywhere in the
    /// cluster when it was taken, so a write still open in another database holds the
    /// tuples back as well. So a job is ready only when the erasing transaction (the `xmin`
    /// of its job row) is older than every transaction still running in the cluster (a
    /// fresh snapshot's xmin) and than every snapshot a backend holds; a job that is not
    /// waits for the next pass.
    ///
    /// A plain `VACUUM` would not do: it marks the dead tuples' space free but leaves their
    /// bytes in the page until new rows happen to overwrite them (`get_raw_page` still
    /// shows the erased value). `VACUUM FULL` rewrites each table and its indexes into new
    /// files, so the pages hold only live rows. It takes each table's exclusive lock while
    /// it copies: under `lock_timeout` it gives way to long-running work (the job stays
    /// pending and the worker tries again) rather than queueing every request behind it.
    async fn finish_erasure_wal(&self, wait: std::time::Duration) -> Result<u64, StoreError> {
        // Jobs that are not ready yet wait up to `wait` for the transactions holding them
        // back to end, looking again every 50 ms (as SQLite's step waits for its readers).
        let deadline = std::time::Instant::now() + wait;
        let jobs = loop {
            // The jobs whose erasing transaction (the job row's xmin; age counts back from
            // now) is older than every running transaction and every backend's snapshot.
            let jobs = self
                .query(
                    "select j.tenant, j.collection, j.record_id, e.counts,
                            age(j.xmin) > age(xid(pg_snapshot_xmin(pg_current_snapshot())))
                            and not exists (
                                select 1 from pg_stat_activity a
                                where a.pid <> pg_backend_pid() and age(a.backend_xmin) >= age(j.xmin))
                     from erasure_jobs j
                     left join erasures e
                       on e.tenant = j.tenant and e.collection = j.collection and e.record_id = j.record_id
                     where j.step = 'vacuum'",
                    &[],
                )
                .await?;
            if jobs.is_empty() {
                return Ok(0);
            }
            let ready: Vec<_> = jobs.into_iter().filter(|j| j.try_get::<_, bool>(4).unwrap_or(false)).collect();
            if !ready.is_empty() || std::time::Instant::now() >= deadline {
                break ready;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if jobs.is_empty() {
            return Ok(0);
        }
        let schema = self.schema()?;
        let mut tables: Vec<String> = Vec::new();
        let mut ready = Vec::new();
        for job in &jobs {
            let collection: String = job.try_get(1)?;
            // The erased record's collection and those of the children erased with it.
            let counts: Option<String> = job.try_get(3)?;
            let mut erased: Vec<String> = counts
                .and_then(|c| serde_json::from_str::<BTreeMap<String, u64>>(&c).ok())
                .map(|c| c.into_keys().collect())
                .unwrap_or_default();
            erased.push(collection.clone());
            tables.extend(erased.iter().filter(|c| schema.collection(c).is_some()).map(|c| table_name(c)));
            ready.push((job.try_get::<_, String>(0)?, collection, job.try_get::<_, String>(2)?));
        }
        tables.sort();
        tables.dedup();
        tables.extend(["outbox".to_string(), "idempotency".to_string(), "versions".to_string()]);
        // VACUUM cannot run inside a transaction block: plain statements on their own.
        let client = self.client().await?;
        client.batch_execute("set lock_timeout = '2s'").await?;
        let vacuumed = client.batch_execute(&format!("vacuum full {}", tables.join(", "))).await;
        let reset = client.batch_execute("reset lock_timeout").await;
        vacuumed?;
        reset?;
        let (tenants, rest): (Vec<String>, Vec<(String, String)>) =
            ready.into_iter().map(|(t, c, i)| (t, (c, i))).unzip();
        let (collections, ids): (Vec<String>, Vec<String>) = rest.into_iter().unzip();
        let done = client
            .execute(
                "delete from erasure_jobs j using unnest($1::text[], $2::text[], $3::text[]) as d(tenant, collection, record_id)
                 where j.step = 'vacuum' and j.tenant = d.tenant and j.collection = d.collection and j.record_id = d.record_id",
                &[&tenants, &collections, &ids],
            )
            .await?;
        Ok(done)
    }

    async fn pending_erasure_searches(&self) -> Result<Vec<i64>, StoreError> {
        let rows =
            self.query("select event_seq from erasure_jobs where step = 'search' order by event_seq", &[]).await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    async fn finish_erasure_searches(&self, through: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("delete from erasure_jobs where step = 'search' and event_seq <= $1", &[&through]).await?)
    }
}
