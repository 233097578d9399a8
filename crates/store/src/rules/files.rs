//! The rule of a file field's change (§15): `PUT` and `DELETE /v1/{c}/{id}/files/{field}`.
//!
//! The bytes are already in the files store (pinned, so the files worker keeps them) when
//! this runs; the rule only points the record at them — a new version, its audit entry, a
//! `record.updated` event — and notes the reference, all in the write's transaction.

use tombstone_domain::audit::AuditAction;
use tombstone_domain::config::{Collection, FieldType};
use tombstone_domain::events::EventType;
use tombstone_domain::lifecycle::{Actor, IfMatch};
use tombstone_domain::record::{FieldValue, Record};
use tombstone_domain::time::Timestamp;

use super::{Tx, record_change};
use crate::StoreError;
use crate::files::FileUpload;

/// Sets (`Some`) or removes (`None`) the file of `field` on an active, unarchived record.
///
/// # Errors
/// `NotFound` (no such record, or deleted), `Archived`, `PreconditionFailed`; an
/// undeclared or non-file field is the caller's error, reported as `Internal`.
pub(crate) async fn set_file<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    collection: &Collection,
    id: &str,
    (field, file): (&str, Option<&FileUpload>),
    if_match: Option<&IfMatch>,
    now: Timestamp,
) -> Result<Record, StoreError> {
    if !collection.field(field).is_some_and(|f| matches!(f.ty, FieldType::File(_))) {
        return Err(StoreError::Internal(format!("{}.{field} is not a file field", collection.name)));
    }
    let (current, version) = super::records::load_for_change(tx, actor, collection, id, if_match).await?;
    let mut values = current.values.clone();
    match file {
        Some(upload) => {
            values.insert(field.to_string(), FieldValue::Json(upload.meta.to_json()));
            tx.add_file_ref(&actor.tenant, &collection.name, id, &upload.meta.sha256, &upload.upload_id).await?;
        }
        None => {
            values.remove(field);
        }
    }
    let updated = Record { version, updated_at: now.following(current.updated_at), values, ..current };
    tx.update_values(collection, &updated).await?;
    record_change(tx, actor, (AuditAction::Update, EventType::Updated), collection, &updated, None, now).await?;
    Ok(updated)
}
