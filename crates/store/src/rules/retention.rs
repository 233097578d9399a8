//! The rules of retention writes on one record: legal holds and `:purge`.

use tombstone_domain::audit::AuditAction;
use tombstone_domain::config::Collection;
use tombstone_domain::events::{EventType, record_event};
use tombstone_domain::id::new_hold_id;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{Hold, Record};
use tombstone_domain::time::Timestamp;

use super::{Tx, audit_entry, record_change};
use crate::StoreError;

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
    tx.append_events(vec![record_event(EventType::Updated, collection, &current, &actor.request_id, now)]).await?;
    let mut entry = audit_entry(actor, action, bumped, reason, now);
    entry.hold_id = Some(hold_id.to_string());
    entry.case = case;
    tx.append_audit(vec![entry]).await?;
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
    let bumped = Record { version: record.version + 1, updated_at: now, ..record };
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
    let bumped = Record { version: record.version + 1, updated_at: now, ..record };
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
    record_change(tx, actor, (AuditAction::Purge, EventType::Purged), collection, &record, reason, now).await
}
