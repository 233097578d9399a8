//! The rules of retention writes: legal holds, `:purge`, the purge worker's rows, erasure.

use std::collections::BTreeMap;

use tombstone_domain::audit::{AuditAction, NewAuditEntry};
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::deletion::{DeletionPlan, RecordRef};
use tombstone_domain::events::{EventType, NewEvent, record_event};
use tombstone_domain::history::NewVersion;
use tombstone_domain::id::new_hold_id;
use tombstone_domain::lifecycle::{Actor, ArchiveRequest};
use tombstone_domain::record::{Hold, Record};
use tombstone_domain::time::Timestamp;

use super::records::has_children;
use super::{Finder, Tx, audit_entry, collection as schema_collection, record_change};
use crate::{Erasure, ErasureStep, StoreError};

/// A hold or release changes the record's representation (`legal_hold`, a new version):
/// like every change it writes an event — `record.updated`, with the record as it now is —
/// so subscribers see every version and other processes' caches forget the old one. The
/// audit entry names the hold and its case in members of their own, so that `reason`
/// stays exactly as given.
#[expect(clippy::too_many_arguments, reason = "each argument is one part of the entry")]
async fn held_changed<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    action: AuditAction,
    collection: &Collection,
    bumped: &Record,
    (hold_id, case): (&str, Option<String>),
    reason: Option<&str>,
    now: Timestamp,
) -> Result<Record, StoreError> {
    let current = tx.get(collection, &actor.tenant, &bumped.id).await?.ok_or(StoreError::NotFound)?;
    let mut entry = audit_entry(actor, action, bumped, reason, now);
    entry.hold_id = Some(hold_id.to_string());
    entry.case = case;
    let event = record_event(EventType::Updated, collection, &current, &actor.request_id, now);
    tx.append_versions(vec![NewVersion::for_change(collection, &current, action, &actor.key_id)]).await?;
    tx.append_changes(vec![entry], vec![event]).await?;
    Ok(current)
}

/// Places a legal hold on a record, deleted or not, at its next version.
pub(crate) async fn place_hold<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    case: Option<String>,
    reason: Option<String>,
    now: Timestamp,
) -> Result<Hold, StoreError> {
    let record = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    let bumped = Record { version: record.version + 1, updated_at: now.following(record.updated_at), ..record };
    tx.touch(collection, &bumped).await?;
    let hold = Hold { hold_id: new_hold_id(), case, reason, actor: actor.key_id.clone(), at: now };
    tx.insert_hold(&actor.tenant, &collection.name, id, &hold).await?;
    let members = (hold.hold_id.as_str(), hold.case.clone());
    held_changed(tx, actor, AuditAction::Hold, collection, &bumped, members, hold.reason.as_deref(), now).await?;
    Ok(hold)
}

/// Releases one active hold of a record; the record afterwards. `NotFound` for an unknown
/// or released hold.
pub(crate) async fn release_hold<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    hold_id: &str,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<Record, StoreError> {
    let record = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    let Some(case) = tx.release_hold(actor, &collection.name, id, hold_id, reason, now).await? else {
        return Err(StoreError::NotFound);
    };
    let bumped = Record { version: record.version + 1, updated_at: now.following(record.updated_at), ..record };
    tx.touch(collection, &bumped).await?;
    held_changed(tx, actor, AuditAction::Release, collection, &bumped, (hold_id, case), reason, now).await
}

/// Hard-deletes one soft-deleted record now (`:purge`): never an active one, never a held
/// one.
pub(crate) async fn purge_record<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let record = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    if !record.is_deleted() {
        return Err(StoreError::NotDeleted);
    }
    if record.legal_hold {
        return Err(StoreError::LegalHold);
    }
    tx.remove(collection, &actor.tenant, id).await?;
    let row = [(actor.tenant.clone(), id.to_string())];
    tx.remove_versions(&collection.name, &row).await?;
    super::release_files(tx, collection, &row, now).await?;
    record_change(tx, actor, (AuditAction::Purge, EventType::Purged), collection, &record, reason, now).await
}

/// The actor of the `archive_after` pass (§17).
pub(crate) const ARCHIVE_ACTOR: &str = "system";

/// Archives the records of a collection not updated since `cutoff` (its `archive_after`),
/// up to `limit`, oldest first: each through the same rule as `:archive`, as the actor
/// `system` with the reason `archive_after <duration>`, audited and announced. Returns how
/// many.
pub(crate) async fn archive_stale<T: Tx>(
    tx: &mut T,
    collection: &Collection,
    cutoff: Timestamp,
    limit: u32,
    run_id: &str,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let Some(after) = collection.archive_after else { return Ok(0) };
    let reason = format!("archive_after {}", tombstone_domain::config::format_duration(after));
    let request = ArchiveRequest::Archive { reason: Some(reason) };
    // The rows are this transaction's (locked, or the single writer's) until it ends: each
    // one is archived now.
    let rows = tx.stale_rows(collection, cutoff, limit).await?;
    for (tenant, id) in &rows {
        let actor = Actor { tenant: tenant.clone(), key_id: ARCHIVE_ACTOR.into(), request_id: run_id.to_string() };
        super::records::archive(tx, &actor, collection, id, &request, None, now).await?;
    }
    Ok(rows.len() as u64)
}

/// The actor of the purge worker's audit entries.
const PURGE_ACTOR: &str = "system:purge";

/// The reason of the purge worker's audit entries.
const PURGE_REASON: &str = "recovery window elapsed";

/// A row the purge worker removes: what its audit entry and event name (a purged record's
/// values go nowhere).
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub deletion_id: Option<String>,
}

/// Removes rows past their window (chosen by the store, which knows how to find them
/// cheaply and how to share the work), each with its `purge` audit entry and
/// `record.purged` event, as the purge worker `run_id`.
pub(crate) async fn purge_rows<T: Tx>(
    tx: &mut T,
    collection: &Collection,
    due: &[Due],
    run_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let pairs: Vec<(String, String)> = due.iter().map(|r| (r.tenant.clone(), r.id.clone())).collect();
    tx.remove_rows(collection, &pairs).await?;
    tx.remove_versions(&collection.name, &pairs).await?;
    super::release_files(tx, collection, &pairs, now).await?;
    let mut entries = Vec::with_capacity(due.len());
    let mut events = Vec::with_capacity(due.len());
    for row in due {
        entries.push(NewAuditEntry {
            at: now,
            tenant: row.tenant.clone(),
            actor: PURGE_ACTOR.into(),
            action: AuditAction::Purge,
            collection: Some(collection.name.clone()),
            record_id: Some(row.id.clone()),
            version: Some(row.version),
            deletion_id: row.deletion_id.clone(),
            reason: Some(PURGE_REASON.into()),
            request_id: Some(run_id.into()),
            hold_id: None,
            case: None,
        });
        events.push(NewEvent {
            kind: EventType::Purged,
            tenant: row.tenant.clone(),
            collection: collection.name.clone(),
            record_id: row.id.clone(),
            version: Some(row.version),
            deletion_id: row.deletion_id.clone(),
            occurred_at: now,
            request_id: Some(run_id.into()),
            data: None,
        });
    }
    tx.append_changes(entries, events).await?;
    Ok(())
}

/// Erases a record and everything its relations take along (see
/// `tombstone_domain::deletion::plan_erasure`), in one transaction: an active restrict
/// child anywhere → 409 `restrict`, a hold on any of them → 409 `legal-hold`, nothing
/// erased. Each erased record gets its `erase` audit entry, its `record.erased` event, its
/// receipt and the jobs of the steps that run after the commit (search, the store's files).
pub(crate) async fn erase<T: Tx>(
    tx: &mut T,
    schema: &Schema,
    collection: &Collection,
    actor: &Actor,
    id: &str,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<Erasure, StoreError> {
    let record = tx.get(collection, &actor.tenant, id).await?.ok_or(StoreError::NotFound)?;
    let root = RecordRef::new(&collection.name, id);
    let plan = if has_children(schema, &collection.name) {
        let tenant = actor.tenant.as_str();
        tombstone_domain::deletion::plan_erasure(schema, root.clone(), &mut Finder { tx, tenant }).await?
    } else {
        DeletionPlan { root: Some(root.clone()), immediate: vec![root], ..DeletionPlan::default() }
    };
    if plan.is_blocked() {
        return Err(StoreError::Restrict { blockers: plan.blockers, total: plan.blockers_total });
    }
    // Every record first: a hold on any of them stops the whole erasure.
    let mut doomed: Vec<(&Collection, Record)> = vec![(collection, record)];
    for r in plan.immediate.iter().skip(1) {
        let c = schema_collection(schema, &r.collection)?;
        if let Some(child) = tx.get(c, &actor.tenant, &r.id).await? {
            doomed.push((c, child));
        }
    }
    if doomed.iter().any(|(_, r)| r.legal_hold) {
        return Err(StoreError::LegalHold);
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (c, _) in &doomed {
        *counts.entry(c.name.clone()).or_insert(0) += 1;
    }
    let mut receipt: Option<Erasure> = None;
    let (mut events, mut responses, mut versions, mut files) = (0, 0, 0, 0);
    for (c, record) in &doomed {
        let one = erase_one(tx, c, actor, record, reason, now).await?;
        events += one.events;
        versions += one.versions;
        files += one.files;
        responses += one.idempotent_responses;
        if receipt.is_none() {
            receipt = Some(one);
        }
    }
    let mut receipt = receipt.ok_or(StoreError::NotFound)?;
    receipt.events = events;
    receipt.versions = versions;
    receipt.files = files;
    receipt.idempotent_responses = responses;
    receipt.counts = counts;
    // The root's receipt covers the whole erasure.
    tx.put_erasure(&actor.tenant, &receipt).await?;
    Ok(receipt)
}

/// Erases one record: scrubs its stored events and idempotent responses, removes its row,
/// audits, announces, and leaves its receipt and its after-commit jobs.
async fn erase_one<T: Tx>(
    tx: &mut T,
    collection: &Collection,
    actor: &Actor,
    record: &Record,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<Erasure, StoreError> {
    let id = record.id.as_str();
    let events = tx.scrub_events(&actor.tenant, &collection.name, id).await?;
    let responses = tx.scrub_idempotent_responses(&actor.tenant, &collection.name, id).await?;
    tx.remove(collection, &actor.tenant, id).await?;
    // Every version held the values: they go with the row (the strongest scrub), counted.
    let row = [(actor.tenant.clone(), id.to_string())];
    let versions = tx.remove_versions(&collection.name, &row).await?;
    let files = super::release_files(tx, collection, &row, now).await?;
    let (audit_seq, event_seq) = tx
        .append_changes(
            vec![audit_entry(actor, AuditAction::Erase, record, reason, now)],
            vec![record_event(EventType::Erased, collection, record, &actor.request_id, now)],
        )
        .await?;
    // What is left once this commits: the index's copy (only a searchable collection has
    // one) and whatever the store's own files keep until they are rewritten.
    let mut pending = Vec::new();
    if collection.fields.values().any(|f| f.search) {
        pending.push(ErasureStep::Search);
    }
    pending.extend(tx.storage_erasure_step());
    let receipt = Erasure {
        collection: collection.name.clone(),
        id: id.to_string(),
        erased_at: now,
        audit_seq,
        versions,
        events,
        idempotent_responses: responses,
        files,
        counts: BTreeMap::from([(collection.name.clone(), 1)]),
        pending,
    };
    tx.put_erasure(&actor.tenant, &receipt).await?;
    tx.add_erasure_jobs(&actor.tenant, &collection.name, id, &receipt.pending, event_seq, now).await?;
    Ok(receipt)
}
