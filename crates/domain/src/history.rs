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
use crate::config::{Collection, Field};
use crate::record::{ArchiveMark, DeletionMark, FieldValue, Record, SYSTEM_KEYS, Values, stored_field_value};
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

/// The declared values a stored representation holds, `raw` giving each field's value
/// (none: absent).
fn declared_values<'v>(collection: &Collection, raw: impl Fn(usize, &Field) -> Option<&'v Value>) -> Values {
    let mut values = Values::new();
    for (i, field) in collection.fields.values().enumerate() {
        match stored_field_value(field, raw(i, field).unwrap_or(&Value::Null)) {
            Ok(FieldValue::Null) | Err(_) => {}
            Ok(v) => {
                values.insert(field.name.clone(), v);
            }
        }
    }
    values
}

/// The record a representation shows, `system` giving the value of each system key and
/// `values` its declared values: the one conversion of both readers of stored bodies.
fn record_of<'v>(
    collection: &Collection,
    tenant: &str,
    system: impl Fn(&str) -> Option<&'v Value>,
    values: Values,
) -> Record {
    let text = |key| system(key).and_then(Value::as_str).map(str::to_string);
    let time = |key| system(key).and_then(Value::as_str).and_then(|s| Timestamp::parse_rfc3339(s).ok());
    let flag = |key| system(key).and_then(Value::as_bool) == Some(true);
    let zero = Timestamp::from_micros(0);
    let deletion = flag("deleted").then(|| DeletionMark {
        deleted_at: time("deleted_at").unwrap_or(zero),
        deleted_by: text("deleted_by").unwrap_or_default(),
        reason: text("delete_reason"),
        deletion_id: text("deletion_id").unwrap_or_default(),
        purge_at: time("purge_at").unwrap_or(zero),
    });
    let archive = flag("archived").then(|| ArchiveMark {
        archived_at: time("archived_at").unwrap_or(zero),
        archived_by: text("archived_by").unwrap_or_default(),
        reason: text("archive_reason"),
    });
    Record {
        tenant: tenant.to_string(),
        collection: collection.name.clone(),
        id: text("id").unwrap_or_default(),
        version: system("version").and_then(Value::as_i64).unwrap_or(0),
        created_at: time("created_at").unwrap_or(zero),
        updated_at: time("updated_at").unwrap_or(zero),
        deletion,
        archive,
        legal_hold: flag("legal_hold"),
        values,
    }
}

/// The declared values a stored representation holds.
#[must_use]
pub fn values_from_body(collection: &Collection, body: &Value) -> Values {
    declared_values(collection, |_, field| body.get(&field.name))
}

/// The record a stored representation shows.
#[must_use]
pub fn record_from_body(collection: &Collection, tenant: &str, body: &Value) -> Record {
    record_of(collection, tenant, |key| body.get(key), values_from_body(collection, body))
}

/// The record a stored representation shows, read from its JSON text: what
/// `record_from_body` answers for that text parsed, without building the whole document
/// first. An as-of list reads one representation per record of its page, and building
/// each document (a map of every key, then looked up key by key) cost more than the rest
/// of the conversion.
///
/// Each key the conversion uses, and any key it does not know, is read as a [`Value`] and
/// converted as `record_from_body` converts it, the last of a repeated key winning as in a
/// parsed document; text that is not an object is handed to `record_from_body` whole.
///
/// # Errors
/// The text is not JSON (as `serde_json::from_str` would say).
pub fn record_from_body_text(collection: &Collection, tenant: &str, text: &str) -> Result<Record, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let fast = serde::de::DeserializeSeed::deserialize(BodySeed { collection, tenant }, &mut de).and_then(|r| {
        de.end()?;
        Ok(r)
    });
    match fast {
        Ok(record) => Ok(record),
        // Not an object, or not JSON: the general path says which.
        Err(_) => Ok(record_from_body(collection, tenant, &serde_json::from_str(text)?)),
    }
}

/// Reads a representation into a [`Record`] key by key (see [`record_from_body_text`]).
struct BodySeed<'a> {
    collection: &'a Collection,
    tenant: &'a str,
}

/// The values of [`SYSTEM_KEYS`] read from a representation.
#[derive(Default)]
struct SystemKeys([Option<Value>; SYSTEM_KEYS.len()]);

impl SystemKeys {
    /// A system key's value, as read.
    fn get(&self, key: &str) -> Option<&Value> {
        SYSTEM_KEYS.iter().position(|k| *k == key).and_then(|i| self.0[i].as_ref())
    }

    /// Where a system key's value goes; `None` for any other key.
    fn slot(&mut self, key: &str) -> Option<&mut Option<Value>> {
        SYSTEM_KEYS.iter().position(|k| *k == key).map(|i| &mut self.0[i])
    }
}

/// A key of the representation, borrowed from the text when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Record;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BodySeed<'_> {
    type Value = Record;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a record's representation")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut system = SystemKeys::default();
        // The declared fields' raw values, in declaration order.
        let mut raw: Vec<Option<Value>> = vec![None; self.collection.fields.len()];
        while let Some(Key(key)) = map.next_key()? {
            let value: Value = map.next_value()?;
            if let Some(slot) = system.slot(&key) {
                *slot = Some(value);
            } else if let Some(i) = self.collection.fields.get_index_of(key.as_ref()) {
                raw[i] = Some(value);
            }
        }
        let values = declared_values(self.collection, |i, _| raw[i].as_ref());
        Ok(record_of(self.collection, self.tenant, |key| system.get(key), values))
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

    /// Keys a stored representation may hold, some of them spelled with escapes.
    const KEYS: &[&str] = &[
        "id",
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
        "collection",
        "holds",
        "s",
        "n",
        "x",
        "b",
        "t",
        "j",
        "r",
        "ci",
        "gone",
        r"\u0069d",
        r"\u0064eleted",
        r"s\n",
    ];

    /// Values of every JSON type, including ones no declaration accepts and corrupt ones.
    const VALUES: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "-3",
        "7",
        "1.5",
        "-0.0",
        "1e400",
        "9223372036854775808",
        "12345678901234567890123",
        r#""""#,
        r#""abc""#,
        r#""abcd""#,
        r#""ÄbC""#,
        r#""a\u0000b""#,
        r#""\ud800""#,
        r#""\u00e9\n""#,
        r#""2026-01-01T00:00:00Z""#,
        r#""2026-01-01T00:00:00.123456+02:00""#,
        r#""not a time""#,
        r#""del_1""#,
        "[]",
        "[1,\"a\",null]",
        r#"{"a":{"b":[1]}}"#,
        "{}",
    ];

    fn agreement_collection() -> Collection {
        let config = Config::parse(
            r#"[collections.c.fields]
s  = { type = "string", max_length = 3 }
n  = { type = "integer" }
x  = { type = "number" }
b  = { type = "boolean" }
t  = { type = "timestamp" }
j  = { type = "json" }
r  = { type = "ref", collection = "c", on_delete = "restrict" }
ci = { type = "string", case_insensitive = true }
"#,
            Path::new("."),
        )
        .unwrap();
        config.schema.collection("c").unwrap().as_ref().clone()
    }

    /// What `record_from_body_text` must answer: the text parsed, then `record_from_body`.
    fn general(c: &Collection, text: &str) -> Result<Record, String> {
        serde_json::from_str::<Value>(text).map(|v| record_from_body(c, "t", &v)).map_err(|e| e.to_string())
    }

    #[test]
    fn reading_the_text_agrees_with_parsing_it_on_cases() {
        let c = agreement_collection();
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        let record = Record {
            tenant: "t".into(),
            collection: "c".into(),
            id: "a".into(),
            version: 3,
            created_at: t,
            updated_at: t,
            deletion: None,
            archive: Some(ArchiveMark { archived_at: t, archived_by: "k".into(), reason: None }),
            legal_hold: false,
            values: Values::from([
                ("s".into(), FieldValue::String("x\"y".into())),
                ("n".into(), FieldValue::Integer(-4)),
                ("x".into(), FieldValue::Number(0.1)),
                ("b".into(), FieldValue::Boolean(true)),
                ("t".into(), FieldValue::Timestamp(t)),
                ("j".into(), FieldValue::Json(serde_json::json!({"k": [1, 2]}))),
                ("ci".into(), FieldValue::String("MiXed".into())),
            ]),
        };
        let body = NewVersion::of(&c, &record, "update", Some("k")).body;
        assert_eq!(record_from_body_text(&c, "t", &body).unwrap(), record);
        for text in [
            body.as_str(),
            "{}",
            "[]",
            "null",
            "3",
            r#""id""#,
            "",
            "{",
            r#"{"id":"a"} x"#,
            r#"{"id":"a",}"#,
            r#"{"id":"a","id":"b"}"#,
            r#"{"id":"a","id":7}"#,
            r#"{"deleted":true,"deleted":false}"#,
            r#"{"deleted":true,"deleted_at":"2026-01-01T00:00:00Z","purge_at":5}"#,
            r#"{"s":"abc","s":"abcd"}"#,
            r#"{"gone":1e400}"#,
            r#"{"gone":"\ud800"}"#,
            r#"{"\u0069d":"escaped"}"#,
            r#"{"id":"a"}  "#,
        ] {
            let fast = record_from_body_text(&c, "t", text).map_err(|e| e.to_string());
            assert_eq!(fast, general(&c, text), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn reading_the_text_agrees_with_parsing_it(
            pairs in proptest::collection::vec(
                (proptest::sample::select(KEYS), proptest::sample::select(VALUES)),
                0..24,
            ),
            spaced in proptest::prelude::any::<bool>(),
        ) {
            let c = agreement_collection();
            let sep = if spaced { " , " } else { "," };
            let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let text = format!("{{{}}}", inner.join(sep));
            let fast = record_from_body_text(&c, "t", &text).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(fast, general(&c, &text), "{}", text);
        }
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
