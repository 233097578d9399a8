//! Relations: finding children for deletion plans, executing a plan's cascade with
//! set-based statements, ref checks on writes and restores, deletion operations and the
//! eventual-cascade queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};
use tombstone_domain::audit::{AuditAction, NewAuditEntry};
use tombstone_domain::config::{Collection, DeleteMode, FieldType, OnDelete, Schema};
use tombstone_domain::deletion::{ChildFinder, DeletionPlan, EventualEdge, RecordRef};
use tombstone_domain::events::{EventType, NewEvent, record_event};
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{FieldError, FieldValue, Record, ValidationErrors, Values};
use tombstone_domain::time::Timestamp;

use super::changes;
use super::records::{self, TableSql};
use super::schema::table_name;
use crate::StoreError;

/// Parameters per `in (…)` list, well under SQLite's limit.
const CHUNK: usize = 500;

/// The statements of every collection.
pub(crate) type Tables = HashMap<String, Arc<TableSql>>;

pub(crate) fn table<'a>(tables: &'a Tables, collection: &str) -> Result<&'a Arc<TableSql>, StoreError> {
    tables.get(collection).ok_or_else(|| StoreError::Internal(format!("collection {collection} has not been migrated")))
}

/// Finds active children through one connection, in one tenant.
pub(crate) struct Finder<'a> {
    pub conn: &'a Connection,
    pub tenant: &'a str,
}

impl Finder<'_> {
    /// `(child id, parent id)` of the children of `parent_ids`; `which` is an extra
    /// condition on the child rows.
    fn children(
        &self,
        child_collection: &str,
        field: &str,
        parent_ids: &[String],
        which: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in parent_ids.chunks(CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
            let sql = format!(
                "select id, \"f_{field}\" from {} where tenant = ?1 and {which} \"f_{field}\" in ({}) order by id",
                table_name(child_collection),
                marks.join(", ")
            );
            let mut params: Vec<SqlValue> = vec![SqlValue::Text(self.tenant.to_string())];
            params.extend(chunk.iter().map(|id| SqlValue::Text(id.clone())));
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let rows =
                stmt.query_map(params_from_iter(params), |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                out.push(row?);
            }
        }
        Ok(out)
    }
}

impl ChildFinder for Finder<'_> {
    type Error = StoreError;

    fn active_children(
        &mut self,
        child_collection: &str,
        field: &str,
        parent_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.children(child_collection, field, parent_ids, "deleted_at is null and")
    }

    fn all_children(
        &mut self,
        child_collection: &str,
        field: &str,
        parent_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.children(child_collection, field, parent_ids, "")
    }
}

/// Whether any ref field points at `collection` (if not, a plan is the root alone).
pub(crate) fn has_children(schema: &Schema, collection: &str) -> bool {
    schema
        .collections
        .values()
        .flat_map(|c| c.fields.values())
        .any(|f| matches!(&f.ty, FieldType::Ref { collection: target, .. } if target == collection))
}

/// The plan for deleting `root` in `tenant`.
pub(crate) fn plan(
    conn: &Connection,
    schema: &Schema,
    tenant: &str,
    root: RecordRef,
) -> Result<DeletionPlan, StoreError> {
    if !has_children(schema, &root.collection) {
        return Ok(DeletionPlan { root: Some(root.clone()), immediate: vec![root], ..DeletionPlan::default() });
    }
    tombstone_domain::deletion::plan_from_bounded(
        schema,
        &[root],
        &mut Finder { conn, tenant },
        schema.relations.max_immediate_cascade,
    )
}

/// The plan for erasing `root` in `tenant` (see `tombstone_domain::deletion::plan_erasure`).
pub(crate) fn plan_erasure(
    conn: &Connection,
    schema: &Schema,
    tenant: &str,
    root: RecordRef,
) -> Result<DeletionPlan, StoreError> {
    if !has_children(schema, &root.collection) {
        return Ok(DeletionPlan { root: Some(root.clone()), immediate: vec![root], ..DeletionPlan::default() });
    }
    tombstone_domain::deletion::plan_erasure(schema, root, &mut Finder { conn, tenant })
}

/// Checks that every ref in `values` (or only in `fields`, when given) points at an active
/// record of its collection in the tenant.
pub(crate) fn check_refs(
    conn: &Connection,
    collection: &Collection,
    tenant: &str,
    values: &Values,
    fields: Option<&[String]>,
) -> Result<(), StoreError> {
    let mut errors = Vec::new();
    for field in collection.fields.values() {
        let FieldType::Ref { collection: target, .. } = &field.ty else { continue };
        if fields.is_some_and(|only| !only.contains(&field.name)) {
            continue;
        }
        let Some(FieldValue::Ref(id)) = values.get(&field.name) else { continue };
        if !is_active(conn, target, tenant, id)? {
            errors.push(FieldError {
                field: field.name.clone(),
                message: format!("points to no active {target} record ({id})"),
            });
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(StoreError::Validation(ValidationErrors(errors))) }
}

fn is_active(conn: &Connection, collection: &str, tenant: &str, id: &str) -> Result<bool, StoreError> {
    let sql = format!("select 1 from {} where tenant = ?1 and id = ?2 and deleted_at is null", table_name(collection));
    Ok(conn.prepare_cached(&sql)?.query_row([tenant, id], |_| Ok(())).optional()?.is_some())
}

/// The parents a record points at (through non-orphan refs) that are not active:
/// restoring it alone would leave it pointing at a deleted record.
pub(crate) fn inactive_parents(
    conn: &Connection,
    collection: &Collection,
    record: &Record,
) -> Result<Vec<RecordRef>, StoreError> {
    let mut out = Vec::new();
    for field in collection.fields.values() {
        let FieldType::Ref { collection: target, on_delete } = &field.ty else { continue };
        if *on_delete == OnDelete::Orphan {
            continue;
        }
        if let Some(FieldValue::Ref(id)) = record.values.get(&field.name)
            && !is_active(conn, target, &record.tenant, id)?
        {
            out.push(RecordRef::new(target, id));
        }
    }
    Ok(out)
}

/// What every record of one deletion carries.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    pub deletion_id: String,
    pub deleted_by: String,
    pub reason: Option<String>,
    pub at: Timestamp,
}

fn append_audit(
    tx: &Transaction<'_>,
    actor: &Actor,
    action: AuditAction,
    record: &Record,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    changes::append_audit(
        tx,
        NewAuditEntry {
            at: record.updated_at,
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
        },
    )?;
    Ok(())
}

/// Deletes `refs` (active records, not the root) as part of deletion `mark`: soft-deletes
/// them with set-based statements per collection (hard-delete collections lose the rows),
/// then writes each one's audit entry (`cascade_delete`, or `purge` for hard collections)
/// and event, and lists them in the operation. Returns how many were deleted per collection.
pub(crate) fn delete_records(
    tx: &Transaction<'_>,
    schema: &Schema,
    tables: &Tables,
    actor: &Actor,
    refs: &[RecordRef],
    mark: &Mark,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut by_collection: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in refs {
        by_collection.entry(r.collection.as_str()).or_default().push(r.id.clone());
    }
    let mut counts = BTreeMap::new();
    for (name, ids) in by_collection {
        let collection =
            schema.collection(name).ok_or_else(|| StoreError::Internal(format!("unknown collection {name}")))?;
        let sql = table(tables, name)?;
        let purge_at = mark.at.saturating_add(collection.retention);
        for chunk in ids.chunks(CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
            let in_list = marks.join(", ");
            let mut params: Vec<SqlValue> = vec![SqlValue::Text(actor.tenant.clone())];
            params.extend(chunk.iter().map(|id| SqlValue::Text(id.clone())));
            // Read the rows first: their audit entries and events carry their state.
            let select = format!("{} where tenant = ?1 and deleted_at is null and id in ({in_list})", sql.select());
            let rows: Vec<Record> = tx
                .prepare_cached(&select)?
                .query_map(params_from_iter(params.iter()), |r| records::read_record(collection, r))?
                .collect::<Result<_, _>>()?;
            let n = rows.len() as u64;
            if collection.delete == DeleteMode::Hard && rows.iter().any(|r| r.legal_hold) {
                // Cascading into a hard-delete collection purges, and held records are
                // never purged: the whole delete stops.
                return Err(StoreError::LegalHold);
            }
            if collection.delete == DeleteMode::Hard {
                let delete =
                    format!("delete from {} where tenant = ?1 and deleted_at is null and id in ({in_list})", sql.table);
                tx.prepare_cached(&delete)?.execute(params_from_iter(params.iter()))?;
            } else {
                let base = params.len();
                let update = format!(
                    "update {} set version = version + 1, updated_at = ?{a}, deleted_at = ?{a}, deleted_by = ?{b}, delete_reason = ?{c},
                     deletion_id = ?{d}, purge_at = ?{e} where tenant = ?1 and deleted_at is null and id in ({in_list})",
                    sql.table,
                    a = base + 1,
                    b = base + 2,
                    c = base + 3,
                    d = base + 4,
                    e = base + 5,
                );
                params.extend([
                    SqlValue::Integer(mark.at.as_micros()),
                    SqlValue::Text(mark.deleted_by.clone()),
                    mark.reason.clone().map_or(SqlValue::Null, SqlValue::Text),
                    SqlValue::Text(mark.deletion_id.clone()),
                    SqlValue::Integer(purge_at.as_micros()),
                ]);
                tx.prepare_cached(&update)?.execute(params_from_iter(params.iter()))?;
            }
            for row in rows {
                let deleted = Record {
                    version: row.version + 1,
                    updated_at: mark.at,
                    deletion: Some(tombstone_domain::record::DeletionMark {
                        deleted_at: mark.at,
                        deleted_by: mark.deleted_by.clone(),
                        reason: mark.reason.clone(),
                        deletion_id: mark.deletion_id.clone(),
                        purge_at,
                    }),
                    ..row
                };
                let (action, kind) = if collection.delete == DeleteMode::Hard {
                    (AuditAction::Purge, EventType::Purged)
                } else {
                    (AuditAction::CascadeDelete, EventType::Deleted)
                };
                append_audit(tx, actor, action, &deleted, mark.reason.as_deref())?;
                changes::append_event(tx, record_event(kind, collection, &deleted, &actor.request_id, mark.at))?;
                tx.prepare_cached(
                    "insert or ignore into deletion_records (deletion_id, collection, record_id) values (?1, ?2, ?3)",
                )?
                .execute(params![mark.deletion_id, name, deleted.id])?;
            }
            *counts.entry(name.to_string()).or_insert(0) += n;
        }
    }
    Ok(counts)
}

/// Queues eventual relations for the worker.
pub(crate) fn enqueue(
    tx: &Transaction<'_>,
    deletion_id: &str,
    tenant: &str,
    edges: &[EventualEdge],
) -> Result<(), StoreError> {
    for e in edges {
        tx.prepare_cached(
            "insert or ignore into deletion_queue (deletion_id, tenant, child_collection, field, parent_id, after_id) values (?1, ?2, ?3, ?4, ?5, '')",
        )?
        .execute(params![deletion_id, tenant, e.child_collection, e.field, e.parent.id])?;
    }
    Ok(())
}

/// The `deletion.completed` event of an operation that reached `done`.
pub(crate) fn completed(
    tx: &Transaction<'_>,
    deletion_id: &str,
    request_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let (tenant, root_collection, root_id): (String, String, String) =
        tx.query_row("select tenant, root_collection, root_id from deletions where id = ?1", [deletion_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let counts = operation_counts(tx, deletion_id)?;
    let total: u64 = counts.values().sum();
    tx.prepare_cached("update deletions set status = 'done' where id = ?1")?.execute([deletion_id])?;
    changes::append_event(
        tx,
        NewEvent {
            kind: EventType::DeletionCompleted,
            tenant,
            collection: root_collection,
            record_id: root_id,
            version: None,
            deletion_id: Some(deletion_id.to_string()),
            occurred_at: now,
            request_id: Some(request_id.to_string()),
            data: Some(serde_json::json!({"status": "done", "records": total, "counts": counts})),
        },
    )?;
    Ok(())
}

/// Records per collection of an operation.
pub(crate) fn operation_counts(conn: &Connection, deletion_id: &str) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "select collection, count(*) from deletion_records where deletion_id = ?1 group by collection",
    )?;
    let rows = stmt.query_map([deletion_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (c, n) = row?;
        out.insert(c, u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// The plan of a DELETE for a dry run.
pub(crate) fn dry_run(
    conn: &Connection,
    schema: &Schema,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    id: &str,
) -> Result<Option<DeletionPlan>, StoreError> {
    let Some(record) = records::get(conn, sql, collection, tenant, id)? else { return Ok(None) };
    let root = RecordRef::new(&collection.name, id);
    if record.is_deleted() {
        // Deleting it again changes nothing.
        return Ok(Some(DeletionPlan { root: Some(root), ..DeletionPlan::default() }));
    }
    plan(conn, schema, tenant, root).map(Some)
}

/// A deletion operation of the tenant, with its propagation to webhook endpoints.
pub(crate) fn get_operation(
    conn: &Connection,
    schema: &Schema,
    tenant: &str,
    id: &str,
    page: &crate::RecordsPage,
) -> Result<Option<crate::DeletionOp>, StoreError> {
    type Row = (String, String, Option<String>, i64, String, String);
    let row: Option<Row> = conn
        .prepare_cached(
            "select status, actor, reason, created_at, root_collection, root_id from deletions where id = ?1 and tenant = ?2",
        )?
        .query_row([id, tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .optional()?;
    let Some((status, actor, reason, created_at, root_collection, root_id)) = row else { return Ok(None) };
    let root = RecordRef::new(&root_collection, &root_id);
    // One page of the records: the root first, then the others by (collection, id), read
    // from the primary key after the cursor — an operation of a million records costs a page.
    let first_page = page.after.is_none();
    let after = page.after.clone().unwrap_or_else(|| RecordRef::new("", ""));
    let others = if first_page { page.limit.saturating_sub(1) } else { page.limit };
    let mut records: Vec<RecordRef> = conn
        .prepare_cached(
            "select collection, record_id from deletion_records
             where deletion_id = ?1 and (collection, record_id) > (?2, ?3) and not (collection = ?4 and record_id = ?5)
             order by collection, record_id limit ?6",
        )?
        .query_map(params![id, after.collection, after.id, root.collection, root.id, i64::from(others) + 1], |r| {
            Ok(RecordRef { collection: r.get(0)?, id: r.get(1)? })
        })?
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
    let pending_relations: i64 = conn
        .prepare_cached("select count(*) from deletion_queue where deletion_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    let counts = operation_counts(conn, id)?;
    let mut restorable_until: Option<i64> = None;
    for name in counts.keys() {
        if schema.collection(name).is_none() {
            continue;
        }
        let q = format!(
            "select min(purge_at) from {} where tenant = ?1 and deletion_id = ?2 and deleted_at is not null",
            table_name(name)
        );
        let min: Option<i64> = conn.prepare_cached(&q)?.query_row([tenant, id], |r| r.get(0))?;
        if let Some(m) = min {
            restorable_until = Some(restorable_until.map_or(m, |r| r.min(m)));
        }
    }
    // Propagation: per endpoint, pending until its cursor passed the operation's events
    // and their deliveries are done; failed if any delivery failed or was cancelled.
    let newest_event: Option<i64> = conn
        .prepare_cached("select max(seq) from outbox where tenant = ?1 and deletion_id = ?2")?
        .query_row([tenant, id], |r| r.get(0))?;
    let mut webhooks = BTreeMap::new();
    // Tenants read this: endpoint ids and error classes only, never URLs, and only the
    // endpoints that serve this tenant.
    let endpoints: Vec<(String, i64, Option<i64>, bool)> = conn
        .prepare_cached(
            "select id, cursor, disabled_at, removed_at is not null from webhook_endpoints
             where tenant is null or tenant = ?1 order by id",
        )?
        .query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (endpoint, cursor, disabled_at, removed) in endpoints {
        let states: Vec<(String, Option<String>)> = conn
            .prepare_cached(
                "select d.status, d.last_error from webhook_deliveries d join outbox o on o.seq = d.event_seq
                 where d.endpoint_id = ?1 and o.tenant = ?2 and o.deletion_id = ?3",
            )?
            .query_map(params![endpoint, tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if removed && states.is_empty() {
            // It left the config before this operation's events reached it: not a sink of
            // this operation.
            continue;
        }
        let failed = states.iter().find(|(s, _)| s == "failed" || s == "cancelled");
        let status = if let Some((_, error)) = failed {
            crate::SinkStatus { status: "failed".into(), last_error: error.clone() }
        } else if states.iter().any(|(s, _)| s == "pending")
            || newest_event.is_some_and(|n| n > cursor && disabled_at.is_none() && !removed)
        {
            let last_error = states.iter().find_map(|(_, e)| e.clone());
            crate::SinkStatus { status: "pending".into(), last_error }
        } else {
            crate::SinkStatus { status: "done".into(), last_error: None }
        };
        webhooks.insert(endpoint, status);
    }
    Ok(Some(crate::DeletionOp {
        id: id.to_string(),
        status,
        actor,
        reason,
        created_at: Timestamp::from_micros(created_at),
        root,
        records,
        records_next,
        records_total: counts.values().sum(),
        pending_relations: u64::try_from(pending_relations).unwrap_or(0),
        counts,
        restorable_until: restorable_until.map(Timestamp::from_micros),
        webhooks,
        last_event_seq: newest_event,
    }))
}

/// Restores exactly the records an operation deleted (those still deleted by it), all or
/// nothing.
pub(crate) fn restore_operation(
    tx: &Transaction<'_>,
    schema: &Schema,
    tables: &Tables,
    actor: &Actor,
    id: &str,
    now: Timestamp,
) -> Result<Vec<Record>, StoreError> {
    let op: Option<(String, String)> = tx
        .prepare_cached("select root_collection, root_id from deletions where id = ?1 and tenant = ?2")?
        .query_row([id, actor.tenant.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if op.is_none() {
        return Err(StoreError::NotFound);
    }
    let listed: Vec<RecordRef> = tx
        .prepare_cached(
            "select collection, record_id from deletion_records where deletion_id = ?1 order by collection, record_id",
        )?
        .query_map([id], |r| Ok(RecordRef { collection: r.get(0)?, id: r.get(1)? }))?
        .collect::<Result<_, _>>()?;
    let mut conflicts = Vec::new();
    let mut to_restore: Vec<(Arc<Collection>, Record)> = Vec::new();
    for r in &listed {
        let Some(collection) = schema.collection(&r.collection) else { continue };
        let sql = table(tables, &r.collection)?;
        let conflict = |kind: &str| crate::RestoreConflict {
            collection: r.collection.clone(),
            id: r.id.clone(),
            kind: kind.into(),
            conflicting_id: None,
            parent: None,
        };
        match records::get(tx, sql, collection, &actor.tenant, &r.id)? {
            None if collection.delete == DeleteMode::Hard => {}
            None => conflicts.push(conflict("purged")),
            Some(record) => match &record.deletion {
                // Restored since, or deleted again by another operation: not ours to restore.
                None => {}
                Some(mark) if mark.deletion_id != id => {}
                Some(mark) if now >= mark.purge_at => conflicts.push(conflict("window-elapsed")),
                Some(_) => to_restore.push((collection.clone(), record)),
            },
        }
    }
    let restoring: std::collections::HashSet<RecordRef> =
        to_restore.iter().map(|(c, r)| RecordRef::new(&c.name, &r.id)).collect();
    for (collection, record) in &to_restore {
        let sql = table(tables, &collection.name)?;
        if let Some((other, _)) =
            records::unique_conflict(tx, sql, collection, &actor.tenant, &record.id, &record.values)?
        {
            conflicts.push(crate::RestoreConflict {
                collection: collection.name.clone(),
                id: record.id.clone(),
                kind: "unique-conflict".into(),
                conflicting_id: Some(other),
                parent: None,
            });
        }
        for parent in inactive_parents(tx, collection, record)? {
            if !restoring.contains(&parent) {
                conflicts.push(crate::RestoreConflict {
                    collection: collection.name.clone(),
                    id: record.id.clone(),
                    kind: "parent-deleted".into(),
                    conflicting_id: None,
                    parent: Some(parent),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(StoreError::RestoreConflicts(conflicts));
    }
    // The operation is over: no eventual work continues after a restore.
    let pending: bool =
        tx.prepare_cached("select status = 'pending' from deletions where id = ?1")?.query_row([id], |r| r.get(0))?;
    tx.prepare_cached("delete from deletion_queue where deletion_id = ?1")?.execute([id])?;
    if pending {
        completed(tx, id, &actor.request_id, now)?;
    }
    let mut restored = Vec::with_capacity(to_restore.len());
    for (collection, record) in to_restore {
        let sql = table(tables, &collection.name)?;
        let back = Record { version: record.version + 1, updated_at: now, deletion: None, ..record };
        records::set_deletion(tx, sql, &back)?;
        let with_op = Record { deletion: None, ..back.clone() };
        changes::append_audit(
            tx,
            NewAuditEntry {
                at: now,
                tenant: with_op.tenant.clone(),
                actor: actor.key_id.clone(),
                action: AuditAction::Restore,
                collection: Some(with_op.collection.clone()),
                record_id: Some(with_op.id.clone()),
                version: Some(with_op.version),
                deletion_id: Some(id.to_string()),
                reason: None,
                request_id: Some(actor.request_id.clone()),
                hold_id: None,
                case: None,
            },
        )?;
        let mut event = record_event(EventType::Restored, &collection, &with_op, &actor.request_id, now);
        event.deletion_id = Some(id.to_string());
        changes::append_event(tx, event)?;
        restored.push(back);
    }
    Ok(restored)
}

/// Everything operation `deletion_id` still has to delete, as the data stands now: the
/// active children not yet worked through of every relation left in its queue, and all
/// that deleting them takes
/// (their cascades and eventual descendants, level by level).
fn still_to_delete(
    tx: &Transaction<'_>,
    schema: &Schema,
    deletion_id: &str,
    tenant: &str,
) -> Result<std::collections::HashSet<RecordRef>, StoreError> {
    let edges: Vec<(String, String, String, String)> = tx
        .prepare_cached(
            "select child_collection, field, parent_id, after_id from deletion_queue where deletion_id = ?1",
        )?
        .query_map([deletion_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut roots = Vec::new();
    for (collection, field, parent, after) in edges {
        if schema.collection(&collection).is_none() {
            continue;
        }
        // Children at or before `after_id` were worked through (those still active were
        // held back by a restrict): they are not still to be deleted.
        let q = format!(
            "select id from {} where tenant = ?1 and deleted_at is null and \"f_{field}\" = ?2 and id > ?3",
            table_name(&collection)
        );
        for id in
            tx.prepare_cached(&q)?.query_map([tenant, parent.as_str(), after.as_str()], |r| r.get::<_, String>(0))?
        {
            roots.push(RecordRef::new(&collection, &id?));
        }
    }
    let plan = tombstone_domain::deletion::plan_from(schema, &roots, &mut Finder { conn: tx, tenant })?;
    Ok(plan.would_delete().into_iter().collect())
}

/// One step of eventual cascades: the next batch of children of the oldest queued
/// relation. Returns the records deleted and whether the queue has more.
pub(crate) fn eventual_step(
    tx: &Transaction<'_>,
    schema: &Schema,
    tables: &Tables,
    batch: u32,
    now: Timestamp,
) -> Result<(u64, bool), StoreError> {
    type Entry = (String, String, String, String, String, String);
    let entry: Option<Entry> = tx
        .prepare_cached(
            "select q.deletion_id, q.tenant, q.child_collection, q.field, q.parent_id, q.after_id
             from deletion_queue q join deletions d on d.id = q.deletion_id order by d.created_at, q.deletion_id limit 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .optional()?;
    let Some((deletion_id, tenant, child_collection, field, parent_id, after_id)) = entry else {
        return Ok((0, false));
    };
    let (op_actor, op_reason, op_request): (String, Option<String>, Option<String>) = tx
        .prepare_cached("select actor, reason, request_id from deletions where id = ?1")?
        .query_row([&deletion_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let key = params![deletion_id, child_collection, field, parent_id];
    let children: Vec<String> = if schema.collection(&child_collection).is_some() {
        let q = format!(
            "select id from {} where tenant = ?1 and deleted_at is null and \"f_{field}\" = ?2 and id > ?3 order by id limit ?4",
            table_name(&child_collection)
        );
        tx.prepare_cached(&q)?
            .query_map(params![tenant, parent_id, after_id, batch], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let actor = Actor {
        tenant: tenant.clone(),
        key_id: op_actor,
        request_id: op_request.unwrap_or_else(|| deletion_id.clone()),
    };
    let mut deleted = 0;
    if let Some(last) = children.last() {
        let roots: Vec<RecordRef> = children.iter().map(|c| RecordRef::new(&child_collection, c)).collect();
        let mut finder = Finder { conn: tx, tenant: &tenant };
        let bound = schema.relations.max_immediate_cascade;
        let mut plan = tombstone_domain::deletion::plan_from_bounded(schema, &roots, &mut finder, bound)?;
        // The DELETE checked restricts over the whole eventual tree when it was planned. A
        // blocker that this same operation will delete in a later batch — anywhere in
        // what it still has to delete, even under a relation not queued yet — is not a
        // reason to stop; one that appeared since (a new record pointing at a child) is.
        let mut remaining: Option<std::collections::HashSet<RecordRef>> = None;
        let mut blocked = |tx: &Transaction<'_>, plan: &DeletionPlan| -> Result<bool, StoreError> {
            if plan.blockers.is_empty() {
                return Ok(false);
            }
            if plan.blockers_total as usize > plan.blockers.len() {
                return Ok(true);
            }
            if remaining.is_none() {
                remaining = Some(still_to_delete(tx, schema, &deletion_id, &tenant)?);
            }
            let remaining = remaining.as_ref().expect("just computed");
            Ok(plan.blockers.iter().any(|b| !remaining.contains(b)))
        };
        if blocked(tx, &plan)? {
            // Find which children a restrict holds back; they stay, the others go.
            let mut allowed = Vec::new();
            for root in roots {
                let single =
                    tombstone_domain::deletion::plan(schema, root.clone(), &mut Finder { conn: tx, tenant: &tenant })?;
                if blocked(tx, &single)? {
                    tracing::warn!(deletion = %deletion_id, record = %root.id, "eventual cascade skipped a record held by a restrict relation");
                } else {
                    allowed.push(root);
                }
            }
            plan = tombstone_domain::deletion::plan_from_bounded(
                schema,
                &allowed,
                &mut Finder { conn: tx, tenant: &tenant },
                bound,
            )?;
        }
        let mark =
            Mark { deletion_id: deletion_id.clone(), deleted_by: actor.key_id.clone(), reason: op_reason, at: now };
        let counts = delete_records(tx, schema, tables, &actor, &plan.immediate, &mark)?;
        deleted = counts.values().sum();
        enqueue(tx, &deletion_id, &tenant, &plan.eventual_edges)?;
        tx.prepare_cached(
            "update deletion_queue set after_id = ?5 where deletion_id = ?1 and child_collection = ?2 and field = ?3 and parent_id = ?4",
        )?
        .execute(params![deletion_id, child_collection, field, parent_id, last])?;
    }
    if children.len() < batch as usize {
        tx.prepare_cached("delete from deletion_queue where deletion_id = ?1 and child_collection = ?2 and field = ?3 and parent_id = ?4")?
            .execute(key)?;
        let left: i64 = tx
            .prepare_cached("select count(*) from deletion_queue where deletion_id = ?1")?
            .query_row([&deletion_id], |r| r.get(0))?;
        if left == 0 {
            completed(tx, &deletion_id, &actor.request_id, now)?;
        }
    }
    let more: i64 = tx.query_row("select count(*) from deletion_queue", [], |r| r.get(0))?;
    Ok((deleted, more > 0))
}
