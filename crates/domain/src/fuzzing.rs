//! Fuzz targets: the parsers that read untrusted input (the config file, list parameters
//! and cursors, merge patches, webhook signatures), each wrapped as a function of raw bytes
//! that must never panic and that asserts the properties its area promises.
//!
//! The same functions run in two places: the cargo-fuzz targets under `fuzz/` (nightly,
//! coverage-guided, run by hand) and `tests/fuzz_corpus.rs` (stable, in CI), which replays
//! every file of `fuzz/corpus/` and feeds structured inputs from proptest. A failed
//! assertion here is a finding, exactly like a panic in the parser itself.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::config::{Collection, Config, FieldType};
use crate::query::{ListQuery, Sort, SortKey, decode_cursor, encode_cursor};
use crate::record::{apply_patch, parse_create, parse_field_value, parse_patch};
use crate::webhook::{TOLERANCE_SECS, VerifyError, sign, verify};

/// The collection the list and patch targets run against: every field type, a required
/// field, a case-insensitive one and a search field.
pub const SCHEMA: &str = r#"
[collections.things]
unique = [["code"]]

[collections.things.fields]
code   = { type = "string", required = true, max_length = 8 }
name   = { type = "string", case_insensitive = true, search = true }
n      = { type = "integer" }
x      = { type = "number" }
ok     = { type = "boolean" }
at     = { type = "timestamp" }
meta   = { type = "json" }
parent = { type = "ref", collection = "parents", on_delete = "cascade" }

[collections.parents.fields]
title = { type = "string" }
"#;

/// The `things` collection of [`SCHEMA`].
///
/// # Panics
/// Never: [`SCHEMA`] is valid (a unit test holds it so).
#[must_use]
pub fn collection() -> Arc<Collection> {
    static THINGS: OnceLock<Arc<Collection>> = OnceLock::new();
    THINGS
        .get_or_init(|| {
            let config = Config::parse(SCHEMA, Path::new("/fuzz")).expect("the fuzzing schema is valid");
            config.schema.collection("things").expect("things is declared").clone()
        })
        .clone()
}

/// The config parser on arbitrary bytes: a document either parses or gives an error with a
/// reason that names a key or a line inside the document.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        config_text(text);
    }
}

/// [`config`] on a text.
///
/// # Panics
/// When the property does not hold (a finding).
pub fn config_text(text: &str) {
    match Config::parse(text, Path::new("/fuzz")) {
        Ok(config) => {
            for c in config.schema.collections.values() {
                assert!(!c.name.is_empty(), "a collection without a name");
            }
        }
        Err(e) => {
            assert!(!e.reason.trim().is_empty(), "an error without a reason: {e:?}");
            assert!(!e.key.is_empty() || e.line.is_some(), "an error naming neither key nor line: {e:?}");
            if let Some(line) = e.line {
                let lines = text.lines().count().max(1);
                assert!((1..=lines + 1).contains(&line), "line {line} of a {lines}-line document: {e:?}");
            }
            // The message renders (it is what the operator reads).
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Splits a query string into the pairs the server hands the parser (already decoded:
/// the parser sees whatever text a client can send).
fn pairs_of(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// The record-list parameter parser (`filter[…]`, `sort`, `cursor`, …) on a query string.
pub fn list_query(data: &[u8]) {
    list_query_pairs(&pairs_of(&String::from_utf8_lossy(data)));
}

/// [`list_query`] on pairs: a query parses or names the bad parameter; a parsed query's
/// cursor, re-encoded by the server, parses back to the same query.
///
/// # Panics
/// When the property does not hold (a finding).
pub fn list_query_pairs(pairs: &[(String, String)]) {
    let collection = collection();
    let q = match ListQuery::parse(&collection, pairs) {
        Ok(q) => q,
        Err(e) => {
            assert!(
                pairs.iter().any(|(n, _)| *n == e.param) || e.param == "filter[deleted]",
                "{e:?} names no parameter given"
            );
            assert!(!e.message.is_empty());
            return;
        }
    };
    assert!((1..=crate::query::MAX_LIMIT).contains(&q.limit), "limit {}", q.limit);
    if let Some(text) = &q.q {
        assert!(!text.is_empty() && text.chars().count() <= 500 && text.trim() == text, "q {text:?}");
    }
    for f in &q.filters {
        assert!(collection.field(&f.field).is_some_and(|d| d.ty.is_scalar()), "filter on {:?}", f.field);
        // Equality with null matches no row: it would be a silently empty list.
        assert!(!f.value.is_null(), "a null filter on {:?}", f.field);
    }
    if let SortKey::Field(name) = &q.sort.key {
        assert!(collection.field(name).is_some_and(|d| d.ty.is_scalar()), "sort on {name:?}");
    }
    if let Some(position) = &q.after {
        let issued = encode_cursor(&q.sort, position);
        let again: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| if n == "cursor" { (n.clone(), issued.clone()) } else { (n.clone(), v.clone()) })
            .collect();
        assert_eq!(ListQuery::parse(&collection, &again).as_ref(), Ok(&q), "the re-encoded cursor {issued}");
    }
}

/// The sorts a cursor may be bound to.
fn sorts() -> Vec<Sort> {
    let mut sorts = Vec::new();
    for key in [SortKey::Id, SortKey::CreatedAt, SortKey::Field("n".into()), SortKey::Field("name".into())] {
        for descending in [false, true] {
            sorts.push(Sort { key: key.clone(), descending });
        }
    }
    sorts
}

/// The cursor decoder, on the bytes as a cursor and on the bytes as the JSON inside one:
/// anything it reads, encoded again, reads back the same.
///
/// # Panics
/// When the property does not hold (a finding).
pub fn cursor(data: &[u8]) {
    use base64::Engine;
    let as_text = String::from_utf8_lossy(data).into_owned();
    let as_wire = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
    for sort in sorts() {
        for text in [&as_text, &as_wire] {
            match decode_cursor(&sort, text) {
                Ok(position) => {
                    let issued = encode_cursor(&sort, &position);
                    assert_eq!(decode_cursor(&sort, &issued), Ok(position), "round trip of {issued}");
                }
                Err(e) => assert_eq!(e.param, "cursor"),
            }
        }
    }
}

/// The merge-patch path on JSON: `[create body, patch]`, or a patch applied to a minimal
/// record.
pub fn merge_patch(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    match value {
        Value::Array(items) if items.len() == 2 => merge_patch_case(&items[0], &items[1]),
        patch => merge_patch_case(&serde_json::json!({"code": "c"}), &patch),
    }
}

/// A create body validated, a patch validated and applied: a patch that applies leaves a
/// record that validates again (required fields present, every value of its field's type),
/// touches only the fields it names, and applying it twice changes nothing more (RFC 7396
/// is idempotent).
///
/// # Panics
/// When the property does not hold (a finding).
pub fn merge_patch_case(create: &Value, patch: &Value) {
    let collection = collection();
    let created = match parse_create(&collection, create) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal without errors");
            return;
        }
    };
    let patch = match parse_patch(&collection, patch) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal without errors");
            return;
        }
    };
    let patched = match apply_patch(&collection, &created.values, &patch) {
        Ok(v) => v,
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal without errors");
            return;
        }
    };
    for field in collection.fields.values() {
        if field.required {
            assert!(patched.get(&field.name).is_some_and(|v| !v.is_null()), "{} lost", field.name);
        }
        if !patch.0.contains_key(&field.name) {
            assert_eq!(patched.get(&field.name), created.values.get(&field.name), "{} changed", field.name);
        }
    }
    for (name, value) in &patched {
        let field = collection.field(name).unwrap_or_else(|| panic!("{name} is not a field"));
        assert!(!value.is_null(), "{name} stored as null");
        if field.ty != FieldType::Json {
            assert_eq!(parse_field_value(field, &value.to_json()).as_ref(), Ok(value), "{name} does not validate");
        }
    }
    assert_eq!(apply_patch(&collection, &patched, &patch).as_ref(), Ok(&patched), "a second application changed more");
}

/// One verification case: the HMAC key, `webhook-id`, the signing time, the body, then
/// what an attacker controls: a `webhook-timestamp` header (the signing time when none),
/// a `webhook-signature` header, and which body byte to change.
#[derive(Debug, Clone)]
pub struct WebhookCase {
    pub key: Vec<u8>,
    pub id: String,
    pub timestamp: i64,
    pub timestamp_header: Option<String>,
    pub signature_header: String,
    pub body: Vec<u8>,
    pub flip: usize,
}

/// Reads bytes as a [`WebhookCase`]: lengths first, then the parts.
#[must_use]
pub fn webhook_case_of(data: &[u8]) -> WebhookCase {
    let mut rest = data;
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    let lens = take(4);
    let len = |i: usize| lens.get(i).copied().map_or(0, usize::from);
    let key = take(len(0) % 65);
    let id = String::from_utf8_lossy(&take(len(1) % 41)).into_owned();
    let mut ts = [0u8; 8];
    let raw = take(8);
    ts[..raw.len()].copy_from_slice(&raw);
    let timestamp = i64::from_le_bytes(ts);
    let timestamp_header = (len(2) % 2 == 1).then(|| String::from_utf8_lossy(&take(len(2) % 24)).into_owned());
    let signature_header = String::from_utf8_lossy(&take(len(3))).into_owned();
    let flip = take(1).first().copied().map_or(0, usize::from);
    WebhookCase { key, id, timestamp, timestamp_header, signature_header, body: take(usize::MAX), flip }
}

/// The webhook signature verifier on bytes (see [`webhook_case`]).
pub fn webhook_verify(data: &[u8]) {
    webhook_case(&webhook_case_of(data));
}

/// The verifier accepts the real signature, never the same signature over a modified body,
/// another id or a time outside the tolerance, and accepts an attacker's header only when
/// it carries the exact signature.
///
/// # Panics
/// When the property does not hold (a finding).
pub fn webhook_case(case: &WebhookCase) {
    let WebhookCase { key, id, timestamp: ts, body, .. } = case;
    let now = *ts;
    let good = sign(key, id, *ts, body);
    let ts_text = ts.to_string();
    let check =
        |id: &str, sig: &str, body: &[u8], now: i64| verify(key, Some(id), Some(&ts_text), Some(sig), body, now);
    if id.is_empty() {
        assert_eq!(check(id, &good, body, now), Err(VerifyError::MissingHeader));
        return;
    }
    assert_eq!(check(id, &good, body, now), Ok(()), "the real signature is refused");

    let mut modified = body.clone();
    match modified.get_mut(case.flip % body.len().max(1)) {
        Some(b) => *b ^= 1 + (case.flip as u8 >> 1),
        None => modified.push(case.flip as u8),
    }
    assert_ne!(&modified, body);
    assert_eq!(check(id, &good, &modified, now), Err(VerifyError::NoMatchingSignature), "a modified body passed");
    assert_eq!(check(&format!("{id}x"), &good, body, now), Err(VerifyError::NoMatchingSignature), "another id passed");
    if let Some(late) = ts.checked_add(TOLERANCE_SECS + 1) {
        assert_eq!(check(id, &good, body, late), Err(VerifyError::TimestampOutOfTolerance));
    }
    // Half a signature, or the right one with a byte lost, never passes.
    assert!(check(id, &good[..good.len() / 2], body, now).is_err());
    assert!(check(id, &good[..good.len() - 2], body, now).is_err());

    let header_ts = case.timestamp_header.as_deref().unwrap_or(&ts_text);
    let answer = verify(key, Some(id), Some(header_ts), Some(&case.signature_header), body, now);
    if answer.is_ok() {
        let signed_at: i64 = header_ts.trim().parse().expect("an accepted timestamp is a number");
        let expected = sign(key, id, signed_at, body);
        assert!(case.signature_header.split(' ').any(|c| c == expected), "accepted {:?}", case.signature_header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_valid_and_the_targets_take_simple_inputs() {
        assert_eq!(collection().name, "things");
        config(SCHEMA.as_bytes());
        config(b"[collections.x.fields]\na = { type = \"nope\" }\n");
        list_query(b"limit=5&sort=-n&filter[name]=Abc&include=deleted");
        cursor(b"{\"s\":\"id\",\"v\":1,\"i\":\"a\"}");
        merge_patch(br#"[{"code": "a", "meta": {"x": 1}}, {"meta": {"x": null, "y": [1]}, "n": 3}]"#);
        webhook_verify(b"\x08\x03\x00\x10keykeykeyid1\x01\x02\x03\x04\x05\x06\x07\x08v1,AAAA\x05body");
    }
}
