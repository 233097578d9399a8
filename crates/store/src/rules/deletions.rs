//! The rules of deletion operations: a cascade's records, the restore of a whole
//! operation, and the steps of eventual cascades.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tombstone_domain::audit::AuditAction;
use tombstone_domain::config::{Collection, DeleteMode, Schema};
use tombstone_domain::deletion::{DeletionPlan, DeletionStatus, RecordRef};
use tombstone_domain::events::{EventType, record_event};
use tombstone_domain::history::NewVersion;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{DeletionMark, Record};
use tombstone_domain::time::Timestamp;

use super::records::inactive_parents;
use super::{Finder, QueuedRelation, Tx, audit_entry, collection as schema_collection, complete_deletion};
use crate::{RestoreConflict, StoreError};

/// Deletes `refs` (active records, not the root) as part of the deletion `mark` names:
/// soft-deletes them per collection with set-based statements (hard-delete collections
/// lose the rows), then writes each one's audit entry (`cascade_delete`, or `purge` for
/// hard collections) and event, and lists them in the operation. Returns how many were
/// deleted per collection.
pub(crate) async fn delete_records<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    actor: &Actor,
    refs: &[RecordRef],
    mark: &DeletionMark,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut by_collection: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in refs {
        by_collection.entry(r.collection.as_str()).or_default().push(r.id.clone());
    }
    let mut counts = BTreeMap::new();
    for (name, ids) in by_collection {
        let collection = schema_collection(schema, name)?;
        let hard = collection.delete == DeleteMode::Hard;
        // Read the rows first: their audit entries and events carry their state.
        let rows = tx.active_rows(collection, &actor.tenant, &ids).await?;
        if hard && rows.iter().any(|r| r.legal_hold) {
            // Cascading into a hard-delete collection purges, and held records are never
            // purged: the whole delete stops.
            return Err(StoreError::LegalHold);
        }
        let child_mark =
            DeletionMark { purge_at: mark.deleted_at.saturating_add(collection.retention), ..mark.clone() };
        if hard {
            let pairs: Vec<(String, String)> = rows.iter().map(|r| (r.tenant.clone(), r.id.clone())).collect();
            tx.remove_versions(&collection.name, &pairs).await?;
            tx.remove_active_many(collection, &actor.tenant, &ids).await?;
            super::release_files(tx, collection, &pairs, mark.deleted_at).await?;
        } else {
            tx.soft_delete_many(collection, &actor.tenant, &ids, &child_mark).await?;
        }
        let (action, kind) = if hard {
            (AuditAction::Purge, EventType::Purged)
        } else {
            (AuditAction::CascadeDelete, EventType::Deleted)
        };
        let n = rows.len() as u64;
        let mut entries = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        let mut listed = Vec::with_capacity(rows.len());
        let mut versions = Vec::with_capacity(if hard { 0 } else { rows.len() });
        for row in rows {
            // As `soft_delete_many` wrote it: never before the row's last change.
            let deleted = Record {
                version: row.version + 1,
                updated_at: mark.deleted_at.following(row.updated_at),
                deletion: Some(child_mark.clone()),
                ..row
            };
            entries.push(audit_entry(actor, action, &deleted, mark.reason.as_deref(), mark.deleted_at));
            events.push(record_event(kind, collection, &deleted, &actor.request_id, mark.deleted_at));
            listed.push(RecordRef::new(name, &deleted.id));
            if !hard {
                versions.push(NewVersion::for_change(collection, &deleted, action, &actor.key_id));
            }
        }
        if !versions.is_empty() {
            tx.append_versions(versions).await?;
        }
        tx.append_changes(entries, events).await?;
        tx.add_deletion_records(&mark.deletion_id, &listed).await?;
        *counts.entry(name.to_string()).or_insert(0) += n;
    }
    Ok(counts)
}

/// Restores exactly the records an operation deleted (those still deleted by it), all or
/// nothing: every conflict is listed before anything is written.
pub(crate) async fn restore_operation<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    actor: &Actor,
    id: &str,
    now: Timestamp,
) -> Result<Vec<Record>, StoreError> {
    let Some(op) = tx.deletion(Some(&actor.tenant), id).await? else { return Err(StoreError::NotFound) };
    let listed = tx.deletion_records(id).await?;
    let mut conflicts = Vec::new();
    let mut to_restore: Vec<(Arc<Collection>, Record)> = Vec::new();
    for r in &listed {
        let Some(collection) = schema.collection(&r.collection) else { continue };
        let conflict = |kind: &str| RestoreConflict {
            collection: r.collection.clone(),
            id: r.id.clone(),
            kind: kind.into(),
            conflicting_id: None,
            parent: None,
        };
        match tx.get(collection, &actor.tenant, &r.id).await? {
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
    let restoring: HashSet<RecordRef> = to_restore.iter().map(|(c, r)| RecordRef::new(&c.name, &r.id)).collect();
    for (collection, record) in &to_restore {
        if let Some((other, _)) = tx.unique_conflict(collection, &actor.tenant, &record.id, &record.values).await? {
            conflicts.push(RestoreConflict {
                collection: collection.name.clone(),
                id: record.id.clone(),
                kind: "unique-conflict".into(),
                conflicting_id: Some(other),
                parent: None,
            });
        }
        for parent in inactive_parents(tx, collection, record).await? {
            if !restoring.contains(&parent) {
                conflicts.push(RestoreConflict {
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
    tx.clear_queued(id).await?;
    if op.status == DeletionStatus::Pending {
        complete_deletion(tx, id, &actor.tenant, &actor.request_id, now).await?;
    }
    let mut restored = Vec::with_capacity(to_restore.len());
    for (collection, record) in to_restore {
        let back = Record {
            version: record.version + 1,
            updated_at: now.following(record.updated_at),
            deletion: None,
            ..record
        };
        tx.set_deletion(&collection, &back).await?;
        // Restored by the operation: its entry and event name it.
        let mut entry = audit_entry(actor, AuditAction::Restore, &back, None, now);
        entry.deletion_id = Some(id.to_string());
        let mut event = record_event(EventType::Restored, &collection, &back, &actor.request_id, now);
        event.deletion_id = Some(id.to_string());
        let mut version = NewVersion::for_change(&collection, &back, AuditAction::Restore, &actor.key_id);
        version.deletion_id = Some(id.to_string());
        tx.append_versions(vec![version]).await?;
        tx.append_changes(vec![entry], vec![event]).await?;
        restored.push(back);
    }
    Ok(restored)
}

/// Everything operation `deletion_id` still has to delete, as the data stands now: the
/// active children not yet worked through of every relation left in its queue, and all
/// that deleting them takes (their cascades and eventual descendants, level by level).
async fn still_to_delete<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    deletion_id: &str,
    tenant: &str,
) -> Result<HashSet<RecordRef>, StoreError> {
    let mut roots = Vec::new();
    for relation in tx.queued(deletion_id).await? {
        if schema.collection(&relation.child_collection).is_none() {
            continue;
        }
        // Children at or before `after_id` were worked through (those still active were
        // held back by a restrict): they are not still to be deleted.
        for id in tx.queued_children(&relation, None).await? {
            roots.push(RecordRef::new(&relation.child_collection, &id));
        }
    }
    let plan = tombstone_domain::deletion::plan_from(schema, &roots, &mut Finder { tx, tenant }).await?;
    Ok(plan.would_delete().into_iter().collect())
}

/// Whether a restrict holds back `plan`. The DELETE checked restricts over the whole
/// eventual tree when it was planned: a blocker that this same operation will delete in a
/// later batch — anywhere in what it still has to delete, even under a relation not queued
/// yet — is no reason to stop; one that appeared since (a new record pointing at a child)
/// is.
async fn blocked<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    relation: &QueuedRelation,
    remaining: &mut Option<HashSet<RecordRef>>,
    plan: &DeletionPlan,
) -> Result<bool, StoreError> {
    if plan.blockers.is_empty() {
        return Ok(false);
    }
    if plan.blockers_total as usize > plan.blockers.len() {
        return Ok(true);
    }
    if remaining.is_none() {
        *remaining = Some(still_to_delete(tx, schema, &relation.deletion_id, &relation.tenant).await?);
    }
    let remaining = remaining.as_ref().ok_or_else(|| StoreError::Internal("no remaining set".into()))?;
    Ok(plan.blockers.iter().any(|b| !remaining.contains(b)))
}

/// Whether deleting `refs` would purge a held record: one of a hard-delete collection (a
/// hold placed after the DELETE planned its eventual part). The eventual worker leaves such
/// a child rather than fail its step over and over, which would stall every operation
/// queued after it.
async fn purges_held<T: Tx>(tx: &mut T, schema: &Schema, tenant: &str, refs: &[RecordRef]) -> Result<bool, StoreError> {
    let mut hard: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in refs {
        if schema.collection(&r.collection).is_some_and(|c| c.delete == DeleteMode::Hard) {
            hard.entry(r.collection.as_str()).or_default().push(r.id.clone());
        }
    }
    for (name, ids) in hard {
        let collection = schema_collection(schema, name)?;
        if tx.active_rows(collection, tenant, &ids).await?.iter().any(|r| r.legal_hold) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One step of eventual cascades: the next batch of children of the oldest queued
/// relation. Returns the records deleted and whether the queue has more.
pub(crate) async fn eventual_step<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    batch: u32,
    now: Timestamp,
) -> Result<(u64, bool), StoreError> {
    let Some(relation) = tx.next_queued().await? else { return Ok((0, false)) };
    let op = tx
        .deletion(None, &relation.deletion_id)
        .await?
        .ok_or_else(|| StoreError::Internal(format!("queued deletion {} has no operation", relation.deletion_id)))?;
    let children = if schema.collection(&relation.child_collection).is_some() {
        tx.queued_children(&relation, Some(batch)).await?
    } else {
        Vec::new()
    };
    let actor = Actor {
        tenant: relation.tenant.clone(),
        key_id: op.actor,
        request_id: op.request_id.unwrap_or_else(|| relation.deletion_id.clone()),
    };
    let mut deleted = 0;
    if let Some(last) = children.last() {
        let roots: Vec<RecordRef> = children.iter().map(|c| RecordRef::new(&relation.child_collection, c)).collect();
        let bound = schema.relations.max_immediate_cascade;
        let tenant = relation.tenant.as_str();
        let mut plan =
            tombstone_domain::deletion::plan_from_bounded(schema, &roots, &mut Finder { tx, tenant }, bound).await?;
        let mut remaining = None;
        if blocked(tx, schema, &relation, &mut remaining, &plan).await?
            || purges_held(tx, schema, tenant, &plan.immediate).await?
        {
            // Find which children a restrict or a legal hold holds back; they stay, the
            // others go.
            let mut allowed = Vec::new();
            for root in roots {
                let single = tombstone_domain::deletion::plan(schema, root.clone(), &mut Finder { tx, tenant }).await?;
                if blocked(tx, schema, &relation, &mut remaining, &single).await? {
                    tracing::warn!(deletion = %relation.deletion_id, record = %root.id, "eventual cascade skipped a record held by a restrict relation");
                } else if purges_held(tx, schema, tenant, &single.immediate).await? {
                    tracing::warn!(deletion = %relation.deletion_id, record = %root.id, "eventual cascade skipped a record whose deletion would purge a record under a legal hold");
                } else {
                    allowed.push(root);
                }
            }
            plan = tombstone_domain::deletion::plan_from_bounded(schema, &allowed, &mut Finder { tx, tenant }, bound)
                .await?;
        }
        let mark = DeletionMark {
            deleted_at: now,
            deleted_by: actor.key_id.clone(),
            reason: op.reason,
            deletion_id: relation.deletion_id.clone(),
            purge_at: now,
        };
        let counts = delete_records(tx, schema, &actor, &plan.immediate, &mark).await?;
        deleted = counts.values().sum();
        tx.enqueue(&relation.deletion_id, &relation.tenant, &plan.eventual_edges).await?;
        tx.advance_queued(&relation, last).await?;
    }
    if children.len() < batch as usize {
        tx.drop_queued(&relation).await?;
        if tx.queued(&relation.deletion_id).await?.is_empty() {
            complete_deletion(tx, &relation.deletion_id, &relation.tenant, &actor.request_id, now).await?;
        }
    }
    Ok((deleted, tx.next_queued().await?.is_some()))
}
