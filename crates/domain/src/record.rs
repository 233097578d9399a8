//! Records: typed field values, validation of create bodies and merge patches (RFC 7396),
//! and the JSON representation every endpoint answers with.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Collection, Field, FieldType, RESERVED_FIELDS, RESERVED_PREFIXES};
use crate::id::is_valid_record_id;
use crate::time::Timestamp;

/// One field's value, typed by its declaration.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Null,
    String(String),
    Integer(i64),
    Number(f64),
    Boolean(bool),
    Timestamp(Timestamp),
    Json(Value),
    Ref(String),
}

impl FieldValue {
    /// The JSON form used in representations.
    #[must_use]
    pub fn to_json(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::String(s) | Self::Ref(s) => Value::String(s.clone()),
            Self::Integer(i) => Value::from(*i),
            Self::Number(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Self::Boolean(b) => Value::Bool(*b),
            Self::Timestamp(t) => Value::String(t.to_rfc3339()),
            Self::Json(v) => v.clone(),
        }
    }

    /// Whether the value is null.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }
}

/// A record's declared field values by name. Absent and null mean the same.
pub type Values = BTreeMap<String, FieldValue>;

/// What a soft delete recorded on the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionMark {
    pub deleted_at: Timestamp,
    pub deleted_by: String,
    pub reason: Option<String>,
    pub deletion_id: String,
    pub purge_at: Timestamp,
}

/// What an archive recorded on the record (§17): a flag beside the deletion mark, with no
/// window and no purge clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveMark {
    pub archived_at: Timestamp,
    /// The key id, or `system` for the purge worker's `archive_after`.
    pub archived_by: String,
    pub reason: Option<String>,
}

/// A legal hold as shown on a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub hold_id: String,
    pub case: Option<String>,
    pub reason: Option<String>,
    pub actor: String,
    pub at: Timestamp,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub tenant: String,
    pub collection: String,
    pub id: String,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deletion: Option<DeletionMark>,
    /// Set while the record is archived, deleted or not.
    pub archive: Option<ArchiveMark>,
    pub legal_hold: bool,
    pub values: Values,
}

impl Record {
    /// Whether the record is soft-deleted.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.deletion.is_some()
    }

    /// Whether the record is archived.
    #[must_use]
    pub fn is_archived(&self) -> bool {
        self.archive.is_some()
    }

    /// The `ETag` value: `"v<version>"`.
    #[must_use]
    pub fn etag(&self) -> String {
        format!("\"v{}\"", self.version)
    }

    /// The JSON representation: every system field, then the declared fields in declared
    /// order (absent ones as null). `holds` is added when the caller may see them.
    #[must_use]
    pub fn to_json(&self, collection: &Collection, holds: Option<&[Hold]>) -> Value {
        serde_json::to_value(self.view(collection, holds)).unwrap_or(Value::Null)
    }

    /// The representation as a serializable view (no intermediate JSON tree: what
    /// responses are written from).
    #[must_use]
    pub fn view<'a>(&'a self, collection: &'a Collection, holds: Option<&'a [Hold]>) -> RecordView<'a> {
        RecordView { record: self, collection, holds }
    }
}

/// A record as it is represented, ready to serialize.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    record: &'a Record,
    collection: &'a Collection,
    holds: Option<&'a [Hold]>,
}

/// A field value as JSON, without copying it.
struct FieldJson<'a>(Option<&'a FieldValue>);

impl Serialize for FieldJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None | Some(FieldValue::Null) => s.serialize_none(),
            Some(FieldValue::String(v) | FieldValue::Ref(v)) => s.serialize_str(v),
            Some(FieldValue::Integer(i)) => s.serialize_i64(*i),
            Some(FieldValue::Number(n)) if n.is_finite() => s.serialize_f64(*n),
            Some(FieldValue::Number(_)) => s.serialize_none(),
            Some(FieldValue::Boolean(b)) => s.serialize_bool(*b),
            Some(FieldValue::Timestamp(t)) => t.serialize(s),
            Some(FieldValue::Json(v)) => v.serialize(s),
        }
    }
}

/// The system keys every representation carries, in the order it writes them (then
/// `holds`, for readers who may see them, then the declared fields).
pub const SYSTEM_KEYS: [&str; 16] = [
    "id",
    "collection",
    "version",
    "created_at",
    "updated_at",
    "deleted",
    "deleted_at",
    "deleted_by",
    "delete_reason",
    "deletion_id",
    "purge_at",
    "archived",
    "archived_at",
    "archived_by",
    "archive_reason",
    "legal_hold",
];

impl Serialize for RecordView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.record;
        let d = r.deletion.as_ref();
        let a = r.archive.as_ref();
        let mut map = s.serialize_map(Some(
            SYSTEM_KEYS.len() + usize::from(self.holds.is_some()) + self.collection.fields.len(),
        ))?;
        map.serialize_entry("id", &r.id)?;
        map.serialize_entry("collection", &r.collection)?;
        map.serialize_entry("version", &r.version)?;
        map.serialize_entry("created_at", &r.created_at)?;
        map.serialize_entry("updated_at", &r.updated_at)?;
        map.serialize_entry("deleted", &d.is_some())?;
        map.serialize_entry("deleted_at", &d.map(|d| d.deleted_at))?;
        map.serialize_entry("deleted_by", &d.map(|d| &d.deleted_by))?;
        map.serialize_entry("delete_reason", &d.and_then(|d| d.reason.as_ref()))?;
        map.serialize_entry("deletion_id", &d.map(|d| &d.deletion_id))?;
        map.serialize_entry("purge_at", &d.map(|d| d.purge_at))?;
        map.serialize_entry("archived", &a.is_some())?;
        map.serialize_entry("archived_at", &a.map(|a| a.archived_at))?;
        map.serialize_entry("archived_by", &a.map(|a| &a.archived_by))?;
        map.serialize_entry("archive_reason", &a.and_then(|a| a.reason.as_ref()))?;
        map.serialize_entry("legal_hold", &r.legal_hold)?;
        if let Some(holds) = self.holds {
            map.serialize_entry("holds", holds)?;
        }
        for name in self.collection.fields.keys() {
            map.serialize_entry(name, &FieldJson(r.values.get(name)))?;
        }
        map.end()
    }
}

/// A problem with one field of a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in a body; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    fn one(field: &str, message: impl Into<String>) -> Self {
        Self(vec![FieldError { field: field.to_string(), message: message.into() }])
    }
}

fn is_system_field(name: &str) -> bool {
    RESERVED_FIELDS.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Why text with U+0000 in it is refused, on every store: PostgreSQL's `text` cannot hold
/// the character, and data one store accepts must move to the other.
pub const NUL_REFUSED: &str = "must not contain the NUL character (U+0000)";

/// A value as a store or a version keeps it: what [`parse_field_value`] accepts, and the
/// metadata of a `file` field, which no client body may set.
///
/// # Errors
/// Says what the field expected.
pub fn stored_field_value(field: &Field, value: &Value) -> Result<FieldValue, String> {
    match &field.ty {
        FieldType::File(_) if !value.is_null() => crate::files::FileMeta::from_json(value)
            .map(|m| FieldValue::Json(m.to_json()))
            .ok_or_else(|| "expected file metadata".to_string()),
        _ => parse_field_value(field, value),
    }
}

/// Checks one JSON value against a field declaration.
///
/// # Errors
/// Says what the field expected.
pub fn parse_field_value(field: &Field, value: &Value) -> Result<FieldValue, String> {
    if value.is_null() {
        return Ok(FieldValue::Null);
    }
    match &field.ty {
        FieldType::String => {
            let s = value.as_str().ok_or("expected a string")?;
            if s.contains('\0') {
                return Err(NUL_REFUSED.into());
            }
            if let Some(max) = field.max_length {
                let len = s.chars().count();
                if len > max {
                    return Err(format!("longer than max_length {max} ({len} characters)"));
                }
            }
            Ok(FieldValue::String(s.to_string()))
        }
        FieldType::Integer => {
            value.as_i64().map(FieldValue::Integer).ok_or_else(|| "expected an integer (64-bit)".to_string())
        }
        FieldType::Number => value.as_f64().map(FieldValue::Number).ok_or_else(|| "expected a number".to_string()),
        FieldType::Boolean => {
            value.as_bool().map(FieldValue::Boolean).ok_or_else(|| "expected true or false".to_string())
        }
        FieldType::Timestamp => {
            let s = value.as_str().ok_or("expected an RFC 3339 timestamp string")?;
            Timestamp::parse_rfc3339(s).map(FieldValue::Timestamp)
        }
        FieldType::Json => Ok(FieldValue::Json(value.clone())),
        FieldType::File(_) => Err(format!(
            "is a file: upload it with PUT /v1/{{collection}}/{{id}}/files/{}, remove it with DELETE there",
            field.name
        )),
        FieldType::Ref { .. } => {
            let s = value.as_str().ok_or("expected a record id (string)")?;
            if is_valid_record_id(s) {
                Ok(FieldValue::Ref(s.to_string()))
            } else {
                Err("not a valid record id (1-128 of A-Z a-z 0-9 _ -)".into())
            }
        }
    }
}

/// A validated create body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecordBody {
    /// The client-supplied id, if any.
    pub id: Option<String>,
    pub values: Values,
}

impl NewRecordBody {
    /// The record it creates: version 1, active, with the client's id or a new UUIDv7.
    #[must_use]
    pub fn into_record(self, tenant: &str, collection: &str, now: Timestamp) -> Record {
        Record {
            tenant: tenant.to_string(),
            collection: collection.to_string(),
            id: self.id.unwrap_or_else(crate::id::new_record_id),
            version: 1,
            created_at: now,
            updated_at: now,
            deletion: None,
            archive: None,
            legal_hold: false,
            values: self.values,
        }
    }
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, ValidationErrors> {
    body.as_object().ok_or_else(|| ValidationErrors::one("", "the body must be a JSON object"))
}

/// Validates a create body against the collection.
///
/// # Errors
/// Every unknown, read-only, mistyped or missing required field.
pub fn parse_create(collection: &Collection, body: &Value) -> Result<NewRecordBody, ValidationErrors> {
    let object = as_object(body)?;
    let mut errors = Vec::new();
    let mut values = Values::new();
    let mut id = None;
    for (name, value) in object {
        if name == "id" {
            match value.as_str() {
                Some(s) if is_valid_record_id(s) => id = Some(s.to_string()),
                _ => errors.push(FieldError { field: "id".into(), message: "must be 1-128 of A-Z a-z 0-9 _ -".into() }),
            }
            continue;
        }
        match collection.field(name) {
            Some(field) => match parse_field_value(field, value) {
                Ok(v) if !v.is_null() => {
                    values.insert(name.clone(), v);
                }
                Ok(_) => {}
                Err(message) => errors.push(FieldError { field: name.clone(), message }),
            },
            None => errors.push(unknown_field(collection, name)),
        }
    }
    for field in collection.fields.values() {
        if field.required && !values.contains_key(&field.name) && !errors.iter().any(|e| e.field == field.name) {
            errors.push(FieldError { field: field.name.clone(), message: "is required".into() });
        }
    }
    if errors.is_empty() { Ok(NewRecordBody { id, values }) } else { Err(ValidationErrors(errors)) }
}

fn unknown_field(collection: &Collection, name: &str) -> FieldError {
    let message = if is_system_field(name) {
        "is a read-only system field".to_string()
    } else {
        format!("is not a field of {}", collection.name)
    };
    FieldError { field: name.to_string(), message }
}

/// A validated merge patch: the fields it sets (null = remove).
#[derive(Debug, Clone, PartialEq)]
pub struct Patch(pub Map<String, Value>);

/// Validates a merge patch body (RFC 7396) against the collection, without the record.
///
/// # Errors
/// Every unknown, read-only or mistyped field.
pub fn parse_patch(collection: &Collection, body: &Value) -> Result<Patch, ValidationErrors> {
    let object = as_object(body)?;
    let mut errors = Vec::new();
    for (name, value) in object {
        match collection.field(name) {
            Some(field) => {
                // json fields merge recursively, so only their top level is checked here.
                if field.ty != FieldType::Json
                    && let Err(message) = parse_field_value(field, value)
                {
                    errors.push(FieldError { field: name.clone(), message });
                }
            }
            None => errors.push(unknown_field(collection, name)),
        }
    }
    if errors.is_empty() { Ok(Patch(object.clone())) } else { Err(ValidationErrors(errors)) }
}

/// RFC 7396 applied to a JSON value.
fn merge_json(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_map) = target {
                for (k, v) in patch_map {
                    if v.is_null() {
                        target_map.remove(k);
                    } else {
                        merge_json(target_map.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies a patch to a record's values and re-checks the required fields.
///
/// # Errors
/// A required field removed, or a value invalid after the merge.
pub fn apply_patch(collection: &Collection, current: &Values, patch: &Patch) -> Result<Values, ValidationErrors> {
    let mut values = current.clone();
    let mut errors = Vec::new();
    for (name, value) in &patch.0 {
        let Some(field) = collection.field(name) else { continue };
        let new_value = if field.ty == FieldType::Json {
            let mut merged = match values.get(name) {
                Some(FieldValue::Json(v)) => v.clone(),
                _ => Value::Null,
            };
            merge_json(&mut merged, value);
            if merged.is_null() { FieldValue::Null } else { FieldValue::Json(merged) }
        } else {
            match parse_field_value(field, value) {
                Ok(v) => v,
                Err(message) => {
                    errors.push(FieldError { field: name.clone(), message });
                    continue;
                }
            }
        };
        if new_value.is_null() {
            if field.required {
                errors.push(FieldError { field: name.clone(), message: "is required and cannot be removed".into() });
            }
            values.remove(name);
        } else {
            values.insert(name.clone(), new_value);
        }
    }
    if errors.is_empty() { Ok(values) } else { Err(ValidationErrors(errors)) }
}

/// The lower-case form a case-insensitive field is compared and indexed by.
#[must_use]
pub fn fold_case(s: &str) -> String {
    s.to_lowercase()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::Config;

    fn products() -> std::sync::Arc<Collection> {
        let config = Config::parse(
            r#"
[collections.products.fields]
sku = { type = "string", required = true, max_length = 5 }
price = { type = "integer" }
ratio = { type = "number" }
live = { type = "boolean" }
at = { type = "timestamp" }
meta = { type = "json" }
"#,
            Path::new("."),
        )
        .unwrap();
        config.schema.collection("products").unwrap().clone()
    }

    #[test]
    fn a_representation_writes_the_system_keys_in_order_then_holds_then_the_fields() {
        let c = products();
        let record = Record {
            tenant: "t".into(),
            collection: "products".into(),
            id: "p1".into(),
            version: 1,
            created_at: crate::time::Timestamp::from_micros(0),
            updated_at: crate::time::Timestamp::from_micros(0),
            deletion: None,
            archive: None,
            legal_hold: false,
            values: Values::new(),
        };
        let keys = |holds| {
            let json = record.to_json(&c, holds);
            json.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
        };
        let fields: Vec<String> = c.fields.keys().cloned().collect();
        assert_eq!(keys(None), [SYSTEM_KEYS.map(String::from).to_vec(), fields.clone()].concat());
        let with_holds = [SYSTEM_KEYS.map(String::from).to_vec(), vec!["holds".to_string()], fields].concat();
        assert_eq!(keys(Some(&[])), with_holds);
    }

    #[test]
    fn create_checks_types_and_required() {
        let c = products();
        let ok = parse_create(&c, &json!({"sku": "A1", "price": 3, "at": "2026-01-01T00:00:00+01:00", "id": "x-1"}))
            .unwrap();
        assert_eq!(ok.id.as_deref(), Some("x-1"));
        assert_eq!(ok.values["price"], FieldValue::Integer(3));
        let err = parse_create(&c, &json!({"price": 1.5, "nope": 1, "version": 3, "id": "a b"})).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["price", "nope", "version", "id", "sku"]);
        assert!(err.0[2].message.contains("read-only"));
        assert!(parse_create(&c, &json!({"sku": "toolong"})).is_err());
        assert!(parse_create(&c, &json!([1])).is_err());
        assert!(parse_create(&c, &json!({"sku": "é€é€é"})).is_ok());
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let c = products();
        let created = parse_create(&c, &json!({"sku": "A", "price": 1, "meta": {"a": 1, "b": {"c": 2}}})).unwrap();
        let patch = parse_patch(&c, &json!({"price": null, "meta": {"a": null, "b": {"d": 3}}})).unwrap();
        let merged = apply_patch(&c, &created.values, &patch).unwrap();
        assert!(!merged.contains_key("price"));
        assert_eq!(merged["meta"], FieldValue::Json(json!({"b": {"c": 2, "d": 3}})));
        let remove_required = parse_patch(&c, &json!({"sku": null})).unwrap();
        assert!(apply_patch(&c, &created.values, &remove_required).is_err());
        assert!(parse_patch(&c, &json!({"price": "x"})).is_err());
        assert!(parse_patch(&c, &json!({"deleted_at": null})).is_err());
    }
}
