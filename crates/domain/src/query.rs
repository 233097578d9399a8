//! List queries: parameters parsed into a typed query, and opaque keyset cursors.
//!
//! The query string of a record list is parsed here, once, into a [`ListQuery`] that every
//! store executes the same way. Cursors carry the sort they were issued for and the
//! position (sort value, id) of the last item, so pages stay stable under concurrent
//! writes: an insert or delete never shifts the next page.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::config::{Collection, FieldType};
use crate::record::{FieldValue, Record, fold_case, parse_field_value};
use crate::time::Timestamp;

/// The default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest page size; more is a 400.
pub const MAX_LIMIT: u32 = 500;

/// Which records a list covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletedScope {
    /// Active records only (the default).
    Active,
    /// Active and soft-deleted (`include=deleted`).
    All,
    /// Soft-deleted only (`filter[deleted]=true` and the `filter[deleted_*]` filters).
    Deleted,
}

/// Whether a list covers archived records (§17), beside its [`DeletedScope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchivedScope {
    /// Not archived only (the default).
    #[default]
    Exclude,
    /// Archived or not (`include=archived`).
    Include,
    /// Archived only (`filter[archived]=true`).
    Only,
}

/// What a list is ordered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    Id,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
    Field(String),
}

impl SortKey {
    /// A record's value of this key, as a cursor carries it — the same in every store and in
    /// as-of lists: booleans as 0 and 1, instants as microseconds, a missing value as null
    /// (json and file fields are never sort keys).
    #[must_use]
    pub fn value_of(&self, record: &Record) -> SortValue {
        match self {
            Self::Id => SortValue::Text(record.id.clone()),
            Self::CreatedAt => SortValue::Int(record.created_at.as_micros()),
            Self::UpdatedAt => SortValue::Int(record.updated_at.as_micros()),
            Self::DeletedAt => {
                record.deletion.as_ref().map_or(SortValue::Null, |d| SortValue::Int(d.deleted_at.as_micros()))
            }
            Self::Field(f) => match record.values.get(f) {
                Some(FieldValue::String(s) | FieldValue::Ref(s)) => SortValue::Text(s.clone()),
                Some(FieldValue::Integer(i)) => SortValue::Int(*i),
                Some(FieldValue::Number(n)) => SortValue::Float(*n),
                Some(FieldValue::Boolean(b)) => SortValue::Int(i64::from(*b)),
                Some(FieldValue::Timestamp(t)) => SortValue::Int(t.as_micros()),
                None | Some(FieldValue::Null | FieldValue::Json(_)) => SortValue::Null,
            },
        }
    }
}

/// An order: key and direction; ties are broken by id in the same direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

impl Sort {
    fn to_param(&self) -> String {
        let name = match &self.key {
            SortKey::Id => "id",
            SortKey::CreatedAt => "created_at",
            SortKey::UpdatedAt => "updated_at",
            SortKey::DeletedAt => "deleted_at",
            SortKey::Field(f) => f.as_str(),
        };
        if self.descending { format!("-{name}") } else { name.to_string() }
    }
}

/// A sort key's value as stored, for cursors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// Where the previous page ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub value: SortValue,
    pub id: String,
}

#[derive(Serialize, Deserialize)]
struct CursorWire {
    s: String,
    v: SortValue,
    i: String,
}

/// An equality filter on a declared field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldFilter {
    pub field: String,
    /// Already case-folded for case-insensitive fields.
    pub value: FieldValue,
    pub case_insensitive: bool,
}

/// A parsed record list request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub scope: DeletedScope,
    pub archived: ArchivedScope,
    pub filters: Vec<FieldFilter>,
    pub deleted_since: Option<Timestamp>,
    pub deleted_before: Option<Timestamp>,
    pub deleted_by: Option<String>,
    pub purge_before: Option<Timestamp>,
    pub sort: Sort,
    pub limit: u32,
    pub after: Option<Position>,
    pub count: bool,
    /// Full-text query (`q`), over the collection's `search` fields.
    pub q: Option<String>,
    /// Only these records (the search's candidates); set by the server, not by the client.
    pub candidates: Option<Candidates>,
}

/// The records a search (`q`) matched, which a store intersects with the list's own
/// filters, order and cursor: the index proposes, the database decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidates {
    /// The matching ids, for a search with few matches: the store looks each one up.
    Ids(Vec<String>),
    /// The fingerprints of the matching ids, for a search with many: the store walks the
    /// list in its order and keeps the rows whose id is in the set, until the page is full.
    Fingerprints(Arc<Fingerprints>),
}

impl Candidates {
    /// Whether the record `id` is a candidate.
    #[must_use]
    pub fn admits(&self, id: &str) -> bool {
        match self {
            Self::Ids(ids) => ids.iter().any(|i| i == id),
            Self::Fingerprints(set) => set.contains(id),
        }
    }
}

/// The fingerprints ([`fingerprint`]) of a search's matching ids: 128 bits each, so that
/// two ids of one collection share one with odds of about n²/2¹²⁹ — never, in practice,
/// for any n a machine can hold.
///
/// They are kept as they came from the index, unsorted and unhashed: a list page needs a
/// few hundred rows tested against them, so the store fingerprints a batch of rows and
/// [`Fingerprints::hits`] probes the batch with each match, instead of every search first
/// building a set of all its matches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fingerprints {
    matches: Vec<u128>,
    rows_per_match: f64,
}

impl Fingerprints {
    /// The fingerprints of `matches` among about `records` records (the store sizes its
    /// first batch of rows by that ratio).
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "an estimate")]
    pub fn new(matches: Vec<u128>, records: usize) -> Self {
        let rows_per_match = records as f64 / matches.len().max(1) as f64;
        Self { matches, rows_per_match: rows_per_match.max(1.0) }
    }

    /// Which of `rows` (fingerprints of walked ids) are matches: a flag per row.
    #[must_use]
    pub fn hits(&self, rows: &[u128]) -> Vec<bool> {
        // A bitmap of the rows' low bits, sixteen or more bits a row, answers most matches'
        // "not in this batch" with one load; only the rest look in the map.
        let bits = (rows.len() * 16).next_power_of_two().max(64);
        let slot = |fp: u128| (fp as usize) & (bits - 1);
        let mut bitmap = vec![0u64; bits / 64];
        let mut position: HashMap<u128, usize, BuildHasherDefault<Prehashed>> =
            HashMap::with_capacity_and_hasher(rows.len(), BuildHasherDefault::default());
        for (i, fp) in rows.iter().enumerate() {
            bitmap[slot(*fp) / 64] |= 1 << (slot(*fp) % 64);
            position.insert(*fp, i);
        }
        let mut hit = vec![false; rows.len()];
        for fp in &self.matches {
            if bitmap[slot(*fp) / 64] & (1 << (slot(*fp) % 64)) != 0
                && let Some(&i) = position.get(fp)
            {
                hit[i] = true;
            }
        }
        hit
    }

    /// Whether `id` is a match (a scan: for one id, not for a walk).
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        self.matches.contains(&fingerprint(id))
    }

    /// Rows to walk first to find `want` matches, by the ratio of records to matches (with a
    /// margin, so one batch usually suffices).
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an estimate, capped"
    )]
    pub fn first_batch(&self, want: usize) -> usize {
        ((want as f64 * self.rows_per_match * 1.25).ceil() as usize).clamp(want.min(MAX_WALK_BATCH), MAX_WALK_BATCH)
    }

    /// How many matches there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.matches.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.matches.is_empty()
    }
}

/// The most rows a store fingerprints and probes at once.
pub const MAX_WALK_BATCH: usize = 8192;

/// A record id's fingerprint: its 128-bit XXH3 hash, the same in every process and release
/// (the search index stores it).
#[must_use]
pub fn fingerprint(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// A hasher for values that are hashes already: the low 64 bits of a fingerprint are its
/// bucket, without hashing it again.
#[derive(Debug, Clone, Copy, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for fingerprints (`write_u128`); any other key is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    #[expect(clippy::cast_possible_truncation, reason = "the low half of a uniform hash is uniform")]
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            scope: DeletedScope::Active,
            archived: ArchivedScope::Exclude,
            filters: Vec::new(),
            deleted_since: None,
            deleted_before: None,
            deleted_by: None,
            purge_before: None,
            sort: Sort { key: SortKey::Id, descending: false },
            limit: DEFAULT_LIMIT,
            after: None,
            count: false,
            q: None,
            candidates: None,
        }
    }
}

/// A bad list parameter: which one and why (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct QueryError {
    pub param: String,
    pub message: String,
}

fn qerr(param: &str, message: impl Into<String>) -> QueryError {
    QueryError { param: param.to_string(), message: message.into() }
}

/// Parses `limit`: 1..=500, default 50.
///
/// # Errors
/// Not a number, zero, or above the maximum.
pub fn parse_limit(value: Option<&str>) -> Result<u32, QueryError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(qerr("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))),
        },
    }
}

/// Parses a `true`/`false` parameter.
///
/// # Errors
/// Anything else.
pub fn parse_bool(param: &str, value: &str) -> Result<bool, QueryError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(qerr(param, "must be true or false")),
    }
}

/// Parses an RFC 3339 parameter.
///
/// # Errors
/// Not a timestamp.
pub fn parse_time_param(param: &str, value: &str) -> Result<Timestamp, QueryError> {
    Timestamp::parse_rfc3339(value).map_err(|m| qerr(param, m))
}

impl ListQuery {
    /// Parses the query pairs of `GET /v1/{collection}`.
    ///
    /// # Errors
    /// The first unknown, repeated or malformed parameter.
    pub fn parse(collection: &Collection, pairs: &[(String, String)]) -> Result<Self, QueryError> {
        let mut q = Self::default();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = None;
        let mut include_deleted = false;
        let mut include_archived = false;
        let mut only_deleted = None;
        let mut only_archived = None;
        for (name, value) in pairs {
            if !seen.insert(name.as_str()) {
                return Err(qerr(name, "given more than once"));
            }
            match name.as_str() {
                "limit" => q.limit = parse_limit(Some(value))?,
                // An empty cursor is the first page: clients generated from the OpenAPI
                // document send `cursor=` for "no cursor yet", and the document allows it.
                "cursor" => cursor = Some(value.as_str()).filter(|c| !c.is_empty()),
                "count" => q.count = parse_bool(name, value)?,
                "include" => {
                    for part in value.split(',') {
                        match part.trim() {
                            "deleted" => include_deleted = true,
                            "archived" => include_archived = true,
                            _ => return Err(qerr(name, "supported values are \"deleted\" and \"archived\"")),
                        }
                    }
                }
                "sort" => q.sort = parse_sort(collection, value)?,
                "q" => {
                    if !collection.fields.values().any(|f| f.search) {
                        return Err(qerr(name, format!("{} has no search fields", collection.name)));
                    }
                    let text = value.trim();
                    if text.is_empty() || text.chars().count() > 500 {
                        return Err(qerr(name, "must be 1 to 500 characters"));
                    }
                    q.q = Some(text.to_string());
                }
                _ => {
                    let Some(inner) = name.strip_prefix("filter[").and_then(|r| r.strip_suffix(']')) else {
                        return Err(qerr(name, "unknown parameter"));
                    };
                    match inner {
                        "deleted" => only_deleted = Some(parse_bool(name, value)?),
                        "archived" => only_archived = Some(parse_bool(name, value)?),
                        "deleted_since" => q.deleted_since = Some(parse_time_param(name, value)?),
                        "deleted_before" => q.deleted_before = Some(parse_time_param(name, value)?),
                        "deleted_by" => q.deleted_by = Some(value.clone()),
                        "purge_before" => q.purge_before = Some(parse_time_param(name, value)?),
                        field_name => q.filters.push(parse_filter(collection, name, field_name, value)?),
                    }
                }
            }
        }
        let deleted_filters = q.deleted_since.is_some()
            || q.deleted_before.is_some()
            || q.deleted_by.is_some()
            || q.purge_before.is_some();
        q.scope = match (only_deleted, include_deleted, deleted_filters) {
            (Some(true), _, _) | (None, _, true) => DeletedScope::Deleted,
            (Some(false), _, true) => {
                return Err(qerr("filter[deleted]", "false contradicts the filter[deleted_*] filters"));
            }
            (Some(false), _, false) => DeletedScope::Active,
            (None, true, false) => DeletedScope::All,
            (None, false, false) => DeletedScope::Active,
        };
        q.archived = match (only_archived, include_archived) {
            (Some(true), _) => ArchivedScope::Only,
            (Some(false), _) | (None, false) => ArchivedScope::Exclude,
            (None, true) => ArchivedScope::Include,
        };
        if let Some(c) = cursor {
            q.after = Some(decode_cursor(&q.sort, c)?);
        }
        Ok(q)
    }

    /// Whether the query can return deleted records (needs `read_deleted`).
    #[must_use]
    pub fn reads_deleted(&self) -> bool {
        self.scope != DeletedScope::Active
    }
}

fn parse_sort(collection: &Collection, value: &str) -> Result<Sort, QueryError> {
    let (descending, name) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let key = match name {
        "id" => SortKey::Id,
        "created_at" => SortKey::CreatedAt,
        "updated_at" => SortKey::UpdatedAt,
        "deleted_at" => SortKey::DeletedAt,
        other => match collection.field(other) {
            Some(f) if f.ty.is_scalar() => SortKey::Field(other.to_string()),
            Some(_) => return Err(qerr("sort", format!("json field {other:?} cannot be sorted on"))),
            None => return Err(qerr("sort", format!("unknown sort field {other:?}"))),
        },
    };
    Ok(Sort { key, descending })
}

fn parse_filter(collection: &Collection, param: &str, field_name: &str, raw: &str) -> Result<FieldFilter, QueryError> {
    let field = collection
        .field(field_name)
        .ok_or_else(|| qerr(param, format!("{field_name:?} is not a field of {}", collection.name)))?;
    let json = match &field.ty {
        FieldType::Json | FieldType::File(_) => {
            return Err(qerr(param, format!("{} fields cannot be filtered on", field.ty.name())));
        }
        FieldType::String | FieldType::Ref { .. } | FieldType::Timestamp => serde_json::Value::String(raw.to_string()),
        FieldType::Integer | FieldType::Number | FieldType::Boolean => {
            serde_json::from_str(raw).map_err(|_| qerr(param, format!("expected a {} value", field.ty.name())))?
        }
    };
    let value = parse_field_value(field, &json).map_err(|m| qerr(param, m))?;
    // `filter[n]=null` read as JSON is a null, and `= null` matches no row: a list that is
    // silently empty. The document promises a value of the field's type; anything else is a 400.
    if value.is_null() {
        return Err(qerr(param, format!("expected a {} value", field.ty.name())));
    }
    let value = match value {
        FieldValue::String(s) if field.case_insensitive => FieldValue::String(fold_case(&s)),
        other => other,
    };
    Ok(FieldFilter { field: field_name.to_string(), value, case_insensitive: field.case_insensitive })
}

/// Encodes a cursor for the position after the given item.
#[must_use]
pub fn encode_cursor(sort: &Sort, position: &Position) -> String {
    let wire = CursorWire { s: sort.to_param(), v: position.value.clone(), i: position.id.clone() };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default())
}

pub(crate) fn decode_cursor(sort: &Sort, cursor: &str) -> Result<Position, QueryError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| qerr("cursor", "not a cursor issued by this server"))?;
    let wire: CursorWire =
        serde_json::from_slice(&bytes).map_err(|_| qerr("cursor", "not a cursor issued by this server"))?;
    if wire.s != sort.to_param() {
        return Err(qerr("cursor", format!("issued for sort={}, not sort={}", wire.s, sort.to_param())));
    }
    Ok(Position { value: wire.v, id: wire.i })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn coll() -> std::sync::Arc<Collection> {
        let c = Config::parse(
            "[collections.c.fields]\nname = { type = \"string\", case_insensitive = true }\nn = { type = \"integer\" }\nm = { type = \"json\" }\n",
            Path::new("."),
        )
        .unwrap();
        c.schema.collection("c").unwrap().clone()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| ((*a).to_string(), (*b).to_string())).collect()
    }

    #[test]
    fn parses_filters_and_scopes() {
        let c = coll();
        let q = ListQuery::parse(&c, &pairs(&[("filter[name]", "ABC"), ("filter[n]", "3"), ("limit", "10")])).unwrap();
        assert_eq!(q.filters[0].value, FieldValue::String("abc".into()));
        assert_eq!(q.filters[1].value, FieldValue::Integer(3));
        assert_eq!(q.scope, DeletedScope::Active);
        assert!(!q.reads_deleted());
        let q = ListQuery::parse(&c, &pairs(&[("include", "deleted")])).unwrap();
        assert_eq!(q.scope, DeletedScope::All);
        assert_eq!(q.archived, ArchivedScope::Exclude);
        let q = ListQuery::parse(&c, &pairs(&[("include", "archived,deleted")])).unwrap();
        assert_eq!((q.scope, q.archived), (DeletedScope::All, ArchivedScope::Include));
        let q = ListQuery::parse(&c, &pairs(&[("filter[archived]", "true")])).unwrap();
        assert_eq!((q.scope, q.archived), (DeletedScope::Active, ArchivedScope::Only));
        assert!(ListQuery::parse(&c, &pairs(&[("include", "archived,nope")])).is_err());
        let q = ListQuery::parse(&c, &pairs(&[("filter[deleted_by]", "key_1")])).unwrap();
        assert_eq!(q.scope, DeletedScope::Deleted);
    }

    #[test]
    fn rejects_bad_parameters() {
        let c = coll();
        for bad in [
            vec![("limit", "0")],
            vec![("limit", "501")],
            vec![("limit", "x")],
            vec![("filter[n]", "x")],
            vec![("filter[n]", "null")],
            vec![("filter[m]", "1")],
            vec![("filter[nope]", "1")],
            vec![("nope", "1")],
            vec![("cursor", "!!!")],
            vec![("cursor", "eyJ4IjoxfQ")],
            vec![("sort", "nope")],
            vec![("include", "everything")],
            vec![("filter[deleted_since]", "yesterday")],
            vec![("limit", "1"), ("limit", "2")],
        ] {
            assert!(ListQuery::parse(&c, &pairs(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_sort() {
        let c = coll();
        let sort = parse_sort(&c, "-n").unwrap();
        let pos = Position { value: SortValue::Int(7), id: "abc".into() };
        let cursor = encode_cursor(&sort, &pos);
        let q = ListQuery::parse(&c, &pairs(&[("sort", "-n"), ("cursor", &cursor)])).unwrap();
        assert_eq!(q.after, Some(pos));
        assert!(ListQuery::parse(&c, &pairs(&[("sort", "n"), ("cursor", &cursor)])).is_err());
    }

    #[test]
    fn float_sort_values_come_back_exactly() {
        // Read back one ULP off, this value made the next page skip its equals.
        let c = coll();
        let sort = Sort { key: SortKey::Id, descending: false };
        for v in [4.018_987_554_707_154e-131, 0.1 + 0.2, f64::MAX, f64::MIN_POSITIVE, -1.5e300] {
            let pos = Position { value: SortValue::Float(v), id: "a".into() };
            let cursor = encode_cursor(&sort, &pos);
            let q = ListQuery::parse(&c, &pairs(&[("cursor", &cursor)])).unwrap();
            assert_eq!(q.after, Some(pos), "{v:e}");
        }
    }

    #[test]
    fn an_empty_cursor_is_the_first_page() {
        let q = ListQuery::parse(&coll(), &pairs(&[("cursor", ""), ("sort", "-n")])).unwrap();
        assert_eq!(q.after, None);
        // Still given once only.
        assert!(ListQuery::parse(&coll(), &pairs(&[("cursor", ""), ("cursor", "")])).is_err());
    }
}
