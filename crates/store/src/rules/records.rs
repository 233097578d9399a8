//! The rules of one record's writes: create, patch, delete (with the blast radius of its
//! cascade), restore.

use tombstone_domain::audit::AuditAction;
use tombstone_domain::config::{Collection, DeleteMode, FieldType, OnDelete, Schema};
use tombstone_domain::deletion::{DeletionPlan, DeletionStatus, RecordRef};
use tombstone_domain::events::EventType;
use tombstone_domain::history::NewVersion;
use tombstone_domain::lifecycle::{
    Actor, ArchiveDecision, ArchiveRequest, DeleteDecision, DeleteRequest, IfMatch, PatchDecision, RestoreDecision,
    decide_archive, decide_delete, decide_patch, decide_restore,
};
use tombstone_domain::record::{FieldError, FieldValue, Patch, Record, ValidationErrors, Values, apply_patch};
use tombstone_domain::time::Timestamp;

use super::{
    Finder, NewDeletion, Tx, audit_entry, collection as schema_collection, complete_deletion, completion_event,
    deletions, record_change, record_event,
};
use crate::{DeleteOutcome, IdempotencyKey, RestoreOutcome, StoreError, StoredResponse};

/// The record a change of its values applies to (PATCH, `:revert`, a file's upload or
/// removal), locked, and the version the change gives it.
///
/// # Errors
/// `NotFound` (absent or deleted), `Archived` (read-only), `PreconditionFailed`.
pub(crate) async fn load_for_change<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    if_match: Option<&IfMatch>,
) -> Result<(Record, i64), StoreError> {
    let current = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    match decide_patch(&current, if_match) {
        PatchDecision::NotFound => Err(StoreError::NotFound),
        PatchDecision::Archived => Err(StoreError::Archived),
        PatchDecision::PreconditionFailed { current } => Err(StoreError::PreconditionFailed { current }),
        PatchDecision::Apply { version } => Ok((current, version)),
    }
}

/// Checks that every ref in `values` (or only in `fields`, when given) points at an active
/// record of its collection in the tenant: 422 naming each field that does not.
pub(crate) async fn check_refs<T: Tx>(
    tx: &mut T,
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
        if !tx.is_active(target, tenant, id).await? {
            errors.push(FieldError {
                field: field.name.clone(),
                message: format!("points to no active {target} record ({id})"),
            });
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(StoreError::Validation(ValidationErrors(errors))) }
}

/// The parents a record points at (through non-orphan refs) that are not active:
/// restoring it alone would leave it pointing at a deleted record.
pub(crate) async fn inactive_parents<T: Tx>(
    tx: &mut T,
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
            && !tx.is_active(target, &record.tenant, id).await?
        {
            out.push(RecordRef::new(target, id));
        }
    }
    Ok(out)
}

/// Inserts a new record (version 1) with its audit entry and event; completes the
/// idempotency key in the same transaction when one is given.
pub(crate) async fn create<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    record: Record,
    idempotency: Option<&(IdempotencyKey, StoredResponse)>,
) -> Result<Record, StoreError> {
    check_refs(tx, collection, &record.tenant, &record.values, None).await?;
    tx.insert(collection, &record).await?;
    record_change(tx, actor, (AuditAction::Create, EventType::Created), collection, &record, None, record.created_at)
        .await?;
    if let Some((key, response)) = idempotency {
        tx.complete_idempotency(key, response).await?;
    }
    Ok(record)
}

/// Applies a merge patch to an active record at its next version.
pub(crate) async fn patch<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    if_match: Option<&IfMatch>,
    patch: &Patch,
    now: Timestamp,
) -> Result<Record, StoreError> {
    let (current, version) = load_for_change(tx, actor, collection, id, if_match).await?;
    let values = apply_patch(collection, &current.values, patch).map_err(StoreError::Validation)?;
    let changed: Vec<String> = patch.0.keys().cloned().collect();
    check_refs(tx, collection, &actor.tenant, &values, Some(&changed)).await?;
    let updated = Record { version, updated_at: now.following(current.updated_at), values, ..current };
    tx.update_values(collection, &updated).await?;
    record_change(tx, actor, (AuditAction::Update, EventType::Updated), collection, &updated, None, now).await?;
    Ok(updated)
}

/// What a DELETE would do, decided by the rules the DELETE itself runs.
#[derive(Debug)]
pub(crate) enum Planned {
    /// Deleted already: nothing to do.
    AlreadyDeleted { deletion_id: String },
    /// The record as the delete leaves it, whether its row goes (a hard delete), and the
    /// blast radius.
    Delete { deleted: Box<Record>, hard: bool, plan: DeletionPlan },
}

/// Loads the record, decides its DELETE and plans the cascade — everything before the
/// first write, shared by the DELETE and its dry run so that both answer alike. A restrict
/// is left in the plan (the dry run shows the blockers; the DELETE refuses).
///
/// # Errors
/// `NotFound`, `PreconditionFailed`, and `LegalHold` when the delete would purge a held
/// record — the root of a hard-delete collection, or a held record its cascade reaches in
/// one.
pub(crate) async fn plan_delete<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    collection: &Collection,
    actor: &Actor,
    id: &str,
    request: &DeleteRequest,
    now: Timestamp,
) -> Result<Planned, StoreError> {
    let current = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    let (deleted, hard) = match decide_delete(collection, &current, request, actor, now) {
        DeleteDecision::AlreadyDeleted { deletion_id } => return Ok(Planned::AlreadyDeleted { deletion_id }),
        DeleteDecision::PreconditionFailed { current } => return Err(StoreError::PreconditionFailed { current }),
        DeleteDecision::LegalHold => return Err(StoreError::LegalHold),
        DeleteDecision::HardDelete { mark } => (Record { deletion: Some(mark), ..current }, true),
        DeleteDecision::SoftDelete { mark, version } => {
            (Record { version, updated_at: now.following(current.updated_at), deletion: Some(mark), ..current }, false)
        }
    };
    let plan = plan(tx, schema, &actor.tenant, RecordRef::new(&collection.name, id)).await?;
    // Cascading into a hard-delete collection purges (now, or later by the eventual worker),
    // and held records are never purged: one held record there stops the whole delete.
    let mut hard_children: std::collections::BTreeMap<&str, Vec<String>> = std::collections::BTreeMap::new();
    for r in plan.immediate[1..].iter().chain(&plan.eventual) {
        if schema.collection(&r.collection).is_some_and(|c| c.delete == DeleteMode::Hard) {
            hard_children.entry(r.collection.as_str()).or_default().push(r.id.clone());
        }
    }
    for (name, ids) in hard_children {
        let child = schema_collection(schema, name)?;
        if tx.active_rows(child, &actor.tenant, &ids).await?.iter().any(|r| r.legal_hold) {
            return Err(StoreError::LegalHold);
        }
    }
    Ok(Planned::Delete { deleted: Box::new(deleted), hard, plan })
}

/// The plan for deleting `root` (an active record) in `tenant`: its cascade up to the
/// schema's bound, the rest as eventual.
pub(crate) async fn plan<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    tenant: &str,
    root: RecordRef,
) -> Result<DeletionPlan, StoreError> {
    if !has_children(schema, &root.collection) {
        return Ok(DeletionPlan { root: Some(root.clone()), immediate: vec![root], ..DeletionPlan::default() });
    }
    let bound = schema.relations.max_immediate_cascade;
    tombstone_domain::deletion::plan_from_bounded(schema, &[root], &mut Finder { tx, tenant }, bound).await
}

/// Whether any ref field points at `collection` (if not, a plan is the root alone).
pub(crate) fn has_children(schema: &Schema, collection: &str) -> bool {
    schema
        .collections
        .values()
        .flat_map(|c| c.fields.values())
        .any(|f| matches!(&f.ty, FieldType::Ref { collection: target, .. } if target == collection))
}

/// The dry run of a DELETE: the plan it would carry out (`None`: no such record; an
/// already deleted record plans nothing), refused for the same reasons as the DELETE
/// except a restrict, whose blockers the plan lists.
pub(crate) async fn dry_run<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    collection: &Collection,
    actor: &Actor,
    id: &str,
    now: Timestamp,
) -> Result<Option<DeletionPlan>, StoreError> {
    let request = DeleteRequest { if_match: None, reason: None, deletion_id: String::new() };
    match plan_delete(tx, schema, collection, actor, id, &request, now).await {
        Ok(Planned::Delete { plan, .. }) => Ok(Some(plan)),
        Ok(Planned::AlreadyDeleted { .. }) => {
            Ok(Some(DeletionPlan { root: Some(RecordRef::new(&collection.name, id)), ..DeletionPlan::default() }))
        }
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Soft- (or, for hard collections, hard-) deletes a record and what its cascade takes,
/// as one deletion operation.
pub(crate) async fn delete<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    collection: &Collection,
    actor: &Actor,
    id: &str,
    request: DeleteRequest,
    now: Timestamp,
) -> Result<DeleteOutcome, StoreError> {
    let (deleted, hard, plan) = match plan_delete(tx, schema, collection, actor, id, &request, now).await? {
        Planned::AlreadyDeleted { deletion_id } => return Ok(DeleteOutcome::AlreadyDeleted { deletion_id }),
        Planned::Delete { deleted, hard, plan } => (*deleted, hard, plan),
    };
    // A restrict anywhere blocks everything.
    if plan.is_blocked() {
        return Err(StoreError::Restrict { blockers: plan.blockers, total: plan.blockers_total });
    }
    let reason = request.reason.as_deref();
    let status = if plan.eventual_edges.is_empty() { DeletionStatus::Done } else { DeletionStatus::Pending };
    let root = RecordRef::new(&collection.name, id);
    tx.insert_deletion(&NewDeletion { id: &request.deletion_id, actor, reason, created_at: now, root: &root, status })
        .await?;
    let change = if hard {
        tx.remove(collection, &actor.tenant, id).await?;
        (AuditAction::Purge, EventType::Purged)
    } else {
        tx.set_deletion(collection, &deleted).await?;
        (AuditAction::Delete, EventType::Deleted)
    };
    if hard {
        let row = [(actor.tenant.clone(), id.to_string())];
        tx.remove_versions(&collection.name, &row).await?;
        super::release_files(tx, collection, &row, now).await?;
    } else {
        tx.append_versions(vec![NewVersion::for_change(collection, &deleted, AuditAction::Delete, &actor.key_id)])
            .await?;
    }
    if plan.immediate.len() == 1 && plan.eventual_edges.is_empty() {
        // The operation is this record alone, inserted as done: its completion is known
        // without reading back what was just written, and goes out with the record's own
        // entry and event in one append (the most common DELETE; on PostgreSQL four round
        // trips fewer).
        let entry = audit_entry(actor, change.0, &deleted, reason, now);
        let event = record_event(change.1, collection, &deleted, &actor.request_id, now);
        let counts = std::collections::BTreeMap::from([(collection.name.clone(), 1)]);
        let completed = completion_event(&request.deletion_id, &actor.tenant, &actor.request_id, now, root, &counts);
        tx.append_changes(vec![entry], vec![event, completed]).await?;
        return Ok(if hard {
            DeleteOutcome::HardDeleted { deletion_id: request.deletion_id }
        } else {
            DeleteOutcome::SoftDeleted { deletion_id: request.deletion_id, record: Box::new(deleted) }
        });
    }
    let entry = audit_entry(actor, change.0, &deleted, reason, now);
    tx.append_changes(vec![entry], vec![record_event(change.1, collection, &deleted, &actor.request_id, now)]).await?;
    let mark = deleted.deletion.clone().ok_or_else(|| StoreError::Internal("a deleted record has no mark".into()))?;
    deletions::delete_records(tx, schema, actor, &plan.immediate[1..], &mark).await?;
    if plan.eventual_edges.is_empty() {
        complete_deletion(tx, &request.deletion_id, &actor.tenant, &actor.request_id, now).await?;
    } else {
        tx.enqueue(&request.deletion_id, &actor.tenant, &plan.eventual_edges).await?;
    }
    Ok(if hard {
        DeleteOutcome::HardDeleted { deletion_id: request.deletion_id }
    } else {
        DeleteOutcome::SoftDeleted { deletion_id: request.deletion_id, record: Box::new(deleted) }
    })
}

/// Restores a soft-deleted record inside its recovery window.
pub(crate) async fn restore<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    if_match: Option<&IfMatch>,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<RestoreOutcome, StoreError> {
    let current = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    match decide_restore(&current, if_match, now) {
        RestoreDecision::AlreadyActive => Ok(RestoreOutcome::AlreadyActive(current)),
        RestoreDecision::WindowElapsed => Err(StoreError::NotFound),
        RestoreDecision::PreconditionFailed { current } => Err(StoreError::PreconditionFailed { current }),
        RestoreDecision::Restore { version } => {
            // A child whose parent is deleted cannot come back alone (orphan relations
            // excepted): restore the operation that deleted both.
            let parents = inactive_parents(tx, collection, &current).await?;
            if !parents.is_empty() {
                return Err(StoreError::ParentDeleted { parents });
            }
            let restored = Record { version, updated_at: now.following(current.updated_at), deletion: None, ..current };
            tx.set_deletion(collection, &restored).await?;
            record_change(tx, actor, (AuditAction::Restore, EventType::Restored), collection, &restored, reason, now)
                .await?;
            Ok(RestoreOutcome::Restored(restored))
        }
    }
}

/// Archives or unarchives a record (§17) at its next version, with its audit entry and
/// event; an archive or unarchive that finds the record already as asked changes nothing.
/// `actor_id` is the key id, or `system` for the `archive_after` pass.
pub(crate) async fn archive<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    request: &ArchiveRequest,
    if_match: Option<&IfMatch>,
    now: Timestamp,
) -> Result<Record, StoreError> {
    let current = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    match decide_archive(&current, request, if_match, &actor.key_id, now) {
        ArchiveDecision::NotFound => Err(StoreError::NotFound),
        ArchiveDecision::Unchanged => Ok(current),
        ArchiveDecision::PreconditionFailed { current } => Err(StoreError::PreconditionFailed { current }),
        ArchiveDecision::Apply { archive, version } => {
            let reason = archive.as_ref().and_then(|a| a.reason.clone());
            let kinds = if archive.is_some() {
                (AuditAction::Archive, EventType::Archived)
            } else {
                (AuditAction::Unarchive, EventType::Unarchived)
            };
            let changed = Record { version, updated_at: now.following(current.updated_at), archive, ..current };
            tx.set_archive(collection, &changed).await?;
            record_change(tx, actor, kinds, collection, &changed, reason.as_deref(), now).await?;
            Ok(changed)
        }
    }
}

/// Reverts an active record to the declared fields of its version `n` (§14): a new
/// version — version numbers only grow — audited `revert`, announced `record.updated`.
/// The same preconditions as a PATCH hold (deleted → `NotFound`, archived, `If-Match`);
/// refs must point at active records now and unique values must be free now.
pub(crate) async fn revert<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    n: i64,
    if_match: Option<&IfMatch>,
    now: Timestamp,
) -> Result<Record, StoreError> {
    let (current, version) = load_for_change(tx, actor, collection, id, if_match).await?;
    let Some(body) = tx.version_body(&actor.tenant, &collection.name, id, n).await? else {
        return Err(StoreError::Validation(ValidationErrors(vec![FieldError {
            field: "version".into(),
            message: format!("the record has no version {n}"),
        }])));
    };
    let body: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| StoreError::Internal(format!("version {n} is not JSON: {e}")))?;
    let values = tombstone_domain::history::values_from_body(collection, &body);
    check_refs(tx, collection, &actor.tenant, &values, None).await?;
    let reverted = Record { version, updated_at: now.following(current.updated_at), values, ..current };
    tx.update_values(collection, &reverted).await?;
    record_change(tx, actor, (AuditAction::Revert, EventType::Updated), collection, &reverted, None, now).await?;
    Ok(reverted)
}
