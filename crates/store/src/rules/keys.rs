//! The rules of API keys: stored and revoked with their audit entries, in the key's
//! tenant, under the pseudo-collection `keys`; the secret never appears.

use tombstone_domain::audit::{AuditAction, NewAuditEntry};
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::time::Timestamp;

use super::Tx;
use crate::{StoreError, StoredKey};

fn entry(actor: &Actor, action: AuditAction, tenant: &str, key_id: &str, at: Timestamp) -> NewAuditEntry {
    NewAuditEntry {
        at,
        tenant: tenant.to_string(),
        actor: actor.key_id.clone(),
        action,
        collection: Some("keys".into()),
        record_id: Some(key_id.to_string()),
        version: None,
        deletion_id: None,
        reason: None,
        request_id: Some(actor.request_id.clone()),
        hold_id: None,
        case: None,
    }
}

/// Stores a new key, audited as `key_create`.
pub(crate) async fn create<T: Tx>(tx: &mut T, key: &StoredKey, actor: &Actor) -> Result<(), StoreError> {
    tx.insert_key(key).await?;
    tx.append_audit(vec![entry(actor, AuditAction::KeyCreate, &key.tenant, &key.id, key.created_at)]).await?;
    Ok(())
}

/// Removes a key, audited as `key_revoke`; `false` when there was none.
pub(crate) async fn revoke<T: Tx>(tx: &mut T, id: &str, actor: &Actor, now: Timestamp) -> Result<bool, StoreError> {
    let Some(tenant) = tx.delete_key(id).await? else { return Ok(false) };
    tx.append_audit(vec![entry(actor, AuditAction::KeyRevoke, &tenant, id, now)]).await?;
    Ok(true)
}
