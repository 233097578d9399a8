//! History (§14): the version a change leaves behind, the representation it keeps, and the
//! parameters of point-in-time reads.
//!
//! Every change to a record writes one version row in its transaction: the record's full
//! representation (§4, without `holds`) as the change left it, the action, the actor and
//! the deletion id. A version is valid from the change until the next version of the same
//! record: stores keep versions append-only and derive `valid_to` from the next version's
//! `valid_from` (docs/DECISIONS.md, "History: append-only versions").

use serde::Serialize;
use serde_json::Value;

use crate::audit::AuditAction;
use crate::config::Collection;
use crate::record::{ArchiveMark, DeletionMark, FieldValue, Record, Values, stored_field_value};
use crate::time::Timestamp;

/// The action of a version written for a record that existed before history did: its
/// state at the upgrade, valid from its `updated_at` (what came before is not known).
pub const BASELINE_ACTION: &str = "baseline";

/// A version to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub tenant: String,
    pub collection: String,
    pub record_id: String,
    pub version: i64,
    pub valid_from: Timestamp,
    pub action: String,
    pub actor: Option<String>,
    pub deletion_id: Option<String>,
    /// The representation, as JSON text.
    pub body: String,
}

impl NewVersion {
    /// The version `record` (as a change left it) is, written by `actor` through `action`.
    /// `valid_from` is the record's `updated_at`, which every change sets to its own time.
    #[must_use]
    pub fn of(collection: &Collection, record: &Record, action: &str, actor: Option<&str>) -> Self {
        Self {
            tenant: record.tenant.clone(),
            collection: record.collection.clone(),
            record_id: record.id.clone(),
            version: record.version,
            valid_from: record.updated_at,
            action: action.to_string(),
            actor: actor.map(str::to_string),
            deletion_id: record.deletion.as_ref().map(|d| d.deletion_id.clone()),
            body: serde_json::to_string(&record.view(collection, None)).unwrap_or_else(|_| "{}".into()),
        }
    }

    /// The version of a change audited as `action`.
    #[must_use]
    pub fn for_change(collection: &Collection, record: &Record, action: AuditAction, actor: &str) -> Self {
        Self::of(collection, record, action.as_str(), Some(actor))
    }
}

/// A stored version, as `GET /v1/{c}/{id}/versions` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    pub version: i64,
    pub valid_from: Timestamp,
    /// When the next version replaced this one; `None` for the current one.
    pub valid_to: Option<Timestamp>,
    pub action: String,
    pub actor: Option<String>,
    pub deletion_id: Option<String>,
    /// The representation as the change left it.
    pub record: Value,
}

impl Version {
    /// The record this version shows, typed by the collection as it is declared now (a
    /// stored value the declaration no longer accepts reads as null).
    #[must_use]
    pub fn to_record(&self, collection: &Collection, tenant: &str) -> Record {
        record_from_body(collection, tenant, &self.record)
    }

    /// Whether the record was soft-deleted in this version.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.record.get("deleted").and_then(Value::as_bool).unwrap_or(false)
    }
}

fn text(body: &Value, name: &str) -> Option<String> {
    body.get(name).and_then(Value::as_str).map(str::to_string)
}

fn time(body: &Value, name: &str) -> Option<Timestamp> {
    body.get(name).and_then(Value::as_str).and_then(|s| Timestamp::parse_rfc3339(s).ok())
}

/// The declared values a stored representation holds.
#[must_use]
pub fn values_from_body(collection: &Collection, body: &Value) -> Values {
    let mut values = Values::new();
    for field in collection.fields.values() {
        let raw = body.get(&field.name).unwrap_or(&Value::Null);
        match stored_field_value(field, raw) {
            Ok(FieldValue::Null) | Err(_) => {}
            Ok(v) => {
                values.insert(field.name.clone(), v);
            }
        }
    }
    values
}

/// The record a stored representation shows.
#[must_use]
pub fn record_from_body(collection: &Collection, tenant: &str, body: &Value) -> Record {
    let deletion = (body.get("deleted").and_then(Value::as_bool) == Some(true)).then(|| DeletionMark {
        deleted_at: time(body, "deleted_at").unwrap_or(Timestamp::from_micros(0)),
        deleted_by: text(body, "deleted_by").unwrap_or_default(),
        reason: text(body, "delete_reason"),
        deletion_id: text(body, "deletion_id").unwrap_or_default(),
        purge_at: time(body, "purge_at").unwrap_or(Timestamp::from_micros(0)),
    });
    let archive = (body.get("archived").and_then(Value::as_bool) == Some(true)).then(|| ArchiveMark {
        archived_at: time(body, "archived_at").unwrap_or(Timestamp::from_micros(0)),
        archived_by: text(body, "archived_by").unwrap_or_default(),
        reason: text(body, "archive_reason"),
    });
    Record {
        tenant: tenant.to_string(),
        collection: collection.name.clone(),
        id: text(body, "id").unwrap_or_default(),
        version: body.get("version").and_then(Value::as_i64).unwrap_or(0),
        created_at: time(body, "created_at").unwrap_or(Timestamp::from_micros(0)),
        updated_at: time(body, "updated_at").unwrap_or(Timestamp::from_micros(0)),
        deletion,
        archive,
        legal_hold: body.get("legal_hold").and_then(Value::as_bool).unwrap_or(false),
        values: values_from_body(collection, body),
    }
}

/// A bad history parameter (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct HistoryParamError {
    pub param: &'static str,
    pub message: String,
}

/// Parses `as_of`: an RFC 3339 instant not in the future of `now`.
///
/// # Errors
/// Not RFC 3339, or later than `now`.
pub fn parse_as_of(value: &str, now: Timestamp) -> Result<Timestamp, HistoryParamError> {
    let at = Timestamp::parse_rfc3339(value).map_err(|message| HistoryParamError { param: "as_of", message })?;
    if at > now {
        return Err(HistoryParamError { param: "as_of", message: "is in the future".into() });
    }
    Ok(at)
}

/// Parses a version number: a positive integer.
///
/// # Errors
/// Anything else.
pub fn parse_version(param: &'static str, value: &str) -> Result<i64, HistoryParamError> {
    match value.parse::<i64>() {
        Ok(n) if n > 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(HistoryParamError { param, message: format!("expected a positive integer, got {value:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn a_representation_reads_back_as_the_record() {
        let config = Config::parse(
            "[collections.c.fields]\nname = { type = \"string\" }\nn = { type = \"integer\" }\n",
            Path::new("."),
        )
        .unwrap();
        let c = config.schema.collection("c").unwrap().clone();
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        let record = Record {
            tenant: "t".into(),
            collection: "c".into(),
            id: "a".into(),
            version: 3,
            created_at: t,
            updated_at: t,
            deletion: Some(DeletionMark {
                deleted_at: t,
                deleted_by: "k".into(),
                reason: Some("r".into()),
                deletion_id: "del_1".into(),
                purge_at: t,
            }),
            archive: None,
            legal_hold: true,
            values: Values::from([
                ("name".into(), FieldValue::String("x".into())),
                ("n".into(), FieldValue::Integer(4)),
            ]),
        };
        let v = NewVersion::for_change(&c, &record, AuditAction::Delete, "k");
        assert_eq!((v.version, v.valid_from, v.deletion_id.as_deref()), (3, t, Some("del_1")));
        let body: Value = serde_json::from_str(&v.body).unwrap();
        assert_eq!(record_from_body(&c, "t", &body), record);
    }

    #[test]
    fn parameters() {
        let now = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert!(parse_as_of("2025-12-31T23:59:59Z", now).is_ok());
        assert!(parse_as_of("2026-01-01T00:00:01Z", now).is_err());
        assert!(parse_as_of("yesterday", now).is_err());
        assert_eq!(parse_version("version", "7"), Ok(7));
        for bad in ["0", "-1", "+1", "x", "", "1.0"] {
            assert!(parse_version("version", bad).is_err(), "{bad}");
        }
    }
}
