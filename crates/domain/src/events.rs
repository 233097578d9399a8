//! Events: what the outbox carries to the feed, SSE, webhooks and NATS.
//!
//! An event is written in the same transaction as the change it announces. Its `data` is
//! the record's representation without its `pii` fields, and is absent for purged and
//! erased records.

use serde_json::{Value, json};

use crate::config::Collection;
use crate::record::Record;
use crate::time::Timestamp;

/// The event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Created,
    Updated,
    Deleted,
    Restored,
    Purged,
    Erased,
    Archived,
    Unarchived,
    DeletionCompleted,
}

impl EventType {
    pub const ALL: [Self; 9] = [
        Self::Created,
        Self::Updated,
        Self::Deleted,
        Self::Restored,
        Self::Purged,
        Self::Erased,
        Self::Archived,
        Self::Unarchived,
        Self::DeletionCompleted,
    ];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "record.created",
            Self::Updated => "record.updated",
            Self::Deleted => "record.deleted",
            Self::Restored => "record.restored",
            Self::Purged => "record.purged",
            Self::Erased => "record.erased",
            Self::Archived => "record.archived",
            Self::Unarchived => "record.unarchived",
            Self::DeletionCompleted => "deletion.completed",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// An event to append (the store assigns `id` and `seq`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventType,
    pub tenant: String,
    pub collection: String,
    pub record_id: String,
    pub version: Option<i64>,
    pub deletion_id: Option<String>,
    pub occurred_at: Timestamp,
    pub request_id: Option<String>,
    pub data: Option<Value>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub seq: i64,
    pub kind: String,
    pub tenant: String,
    pub collection: String,
    pub record_id: String,
    pub version: Option<i64>,
    pub deletion_id: Option<String>,
    pub occurred_at: Timestamp,
    pub request_id: Option<String>,
    pub data: Option<Value>,
}

impl Event {
    /// The envelope, exactly as delivered everywhere.
    #[must_use]
    pub fn envelope(&self) -> Value {
        json!({
            "id": self.id,
            "seq": self.seq,
            "type": self.kind,
            "tenant": self.tenant,
            "collection": self.collection,
            "record_id": self.record_id,
            "version": self.version,
            "deletion_id": self.deletion_id,
            "occurred_at": self.occurred_at.to_rfc3339(),
            "request_id": self.request_id,
            "data": self.data,
        })
    }
}

/// A new event id: `evt_<uuidv7>`.
#[must_use]
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// The `data` of an event about `record`: its representation without `pii` fields.
#[must_use]
pub fn event_data(collection: &Collection, record: &Record) -> Value {
    let mut value = record.to_json(collection, None);
    if let Value::Object(map) = &mut value {
        for field in collection.fields.values().filter(|f| f.pii) {
            map.remove(&field.name);
        }
    }
    value
}

/// An event about a change to a record, carrying its data.
#[must_use]
pub fn record_event(
    kind: EventType,
    collection: &Collection,
    record: &Record,
    request_id: &str,
    occurred_at: Timestamp,
) -> NewEvent {
    let data = match kind {
        EventType::Purged | EventType::Erased => None,
        _ => Some(event_data(collection, record)),
    };
    NewEvent {
        kind,
        tenant: record.tenant.clone(),
        collection: record.collection.clone(),
        record_id: record.id.clone(),
        version: Some(record.version),
        deletion_id: record.deletion.as_ref().map(|d| d.deletion_id.clone()),
        occurred_at,
        request_id: Some(request_id.to_string()),
        data,
    }
}
