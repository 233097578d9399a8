//! Record rows on PostgreSQL: how a record maps to its collection table (the same columns
//! and conversions as SQLite's `records.rs`), the statements of one collection, and the
//! list query with every filter, sort and cursor SQLite's store supports.

use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tombstone_domain::config::{Collection, FieldType};
use tombstone_domain::query::{
    ArchivedScope, Candidates, DeletedScope, Fingerprints, ListQuery, Position, SortKey, SortValue,
};
use tombstone_domain::record::{ArchiveMark, DeletionMark, FieldValue, Record, Values, fold_case};
use tombstone_domain::time::Timestamp;

use super::schema::{compare_column, field_column, folded_column, table_name};
use crate::{Page, StoreError, Walk};

const SYSTEM_COLUMNS: &str = "t.tenant, t.id, t.version, t.created_at, t.updated_at, t.deleted_at, t.deleted_by, t.delete_reason, t.deletion_id, t.purge_at, t.archived_at, t.archived_by, t.archive_reason";
const SYSTEM_COUNT: usize = 13;

/// A statement parameter of the type of the column it is bound to (tokio-postgres checks
/// each parameter's Rust type against the column's, nulls included).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Text(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    TextArray(Vec<String>),
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Self::Text(v) => v.to_sql_checked(ty, out),
            Self::Int(v) => v.to_sql_checked(ty, out),
            Self::Float(v) => v.to_sql_checked(ty, out),
            Self::Bool(v) => v.to_sql_checked(ty, out),
            Self::TextArray(v) => v.to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, by the variant's own type.
        true
    }

    to_sql_checked!();
}

/// The parameter slice tokio-postgres takes.
pub(crate) fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// The parameter of a field value, typed by the field's column.
pub(crate) fn to_param(ty: &FieldType, value: &FieldValue) -> Param {
    match ty {
        FieldType::Integer | FieldType::Timestamp => Param::Int(match value {
            FieldValue::Integer(i) => Some(*i),
            FieldValue::Timestamp(t) => Some(t.as_micros()),
            _ => None,
        }),
        FieldType::Number => Param::Float(match value {
            FieldValue::Number(n) => Some(*n),
            #[expect(clippy::cast_precision_loss, reason = "a whole number given for a number field")]
            FieldValue::Integer(i) => Some(*i as f64),
            _ => None,
        }),
        FieldType::Boolean => Param::Bool(match value {
            FieldValue::Boolean(b) => Some(*b),
            _ => None,
        }),
        FieldType::String | FieldType::Ref { .. } | FieldType::Json | FieldType::File(_) => Param::Text(match value {
            FieldValue::String(s) | FieldValue::Ref(s) => Some(s.clone()),
            FieldValue::Json(v) => Some(v.to_string()),
            _ => None,
        }),
    }
}

/// The folded parameter of a case-insensitive field's shadow column.
pub(crate) fn folded_param(value: &FieldValue) -> Param {
    Param::Text(match value {
        FieldValue::String(s) => Some(fold_case(s)),
        _ => None,
    })
}

fn from_row(ty: &FieldType, row: &Row, i: usize) -> Result<FieldValue, tokio_postgres::Error> {
    Ok(match ty {
        FieldType::String => row.try_get::<_, Option<String>>(i)?.map_or(FieldValue::Null, FieldValue::String),
        FieldType::Ref { .. } => row.try_get::<_, Option<String>>(i)?.map_or(FieldValue::Null, FieldValue::Ref),
        FieldType::Integer => row.try_get::<_, Option<i64>>(i)?.map_or(FieldValue::Null, FieldValue::Integer),
        FieldType::Number => row.try_get::<_, Option<f64>>(i)?.map_or(FieldValue::Null, FieldValue::Number),
        FieldType::Boolean => row.try_get::<_, Option<bool>>(i)?.map_or(FieldValue::Null, FieldValue::Boolean),
        FieldType::Timestamp => row
            .try_get::<_, Option<i64>>(i)?
            .map_or(FieldValue::Null, |m| FieldValue::Timestamp(Timestamp::from_micros(m))),
        // Text that does not parse can only come from outside Tombstone; show it as absent
        // rather than fail the whole read, as SQLite's store does.
        FieldType::Json | FieldType::File(_) => row
            .try_get::<_, Option<String>>(i)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .map_or(FieldValue::Null, FieldValue::Json),
    })
}

/// The statements of one collection, built once.
#[derive(Debug)]
pub(crate) struct TableSql {
    pub table: String,
    /// `select <every column>, <held> from <table> t`.
    pub select: String,
    pub insert: String,
    pub update_values: String,
    pub set_deletion: String,
    pub set_archive: String,
    pub remove: String,
}

impl TableSql {
    pub(crate) fn new(collection: &Collection) -> Self {
        let table = table_name(&collection.name);
        let mut field_cols = Vec::new();
        let mut write_cols = Vec::new();
        for f in collection.fields.values() {
            field_cols.push(format!("t.{}", field_column(&f.name)));
            write_cols.push(field_column(&f.name));
            if f.case_insensitive {
                write_cols.push(folded_column(&f.name));
            }
        }
        let select_cols = if field_cols.is_empty() {
            SYSTEM_COLUMNS.to_string()
        } else {
            format!("{SYSTEM_COLUMNS}, {}", field_cols.join(", "))
        };
        // Whether any hold is active, read with the row so lists cost no extra query.
        let held = format!(
            "exists (select 1 from holds h where h.tenant = t.tenant and h.collection = '{}' and h.record_id = t.id and h.released_at is null)",
            collection.name
        );
        let select = format!("select {select_cols}, {held} from {table} t");
        let mut insert_cols: Vec<String> =
            ["tenant", "id", "version", "created_at", "updated_at"].into_iter().map(String::from).collect();
        insert_cols.extend(write_cols.iter().cloned());
        let placeholders = (1..=insert_cols.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let insert = format!("insert into {table} ({}) values ({placeholders})", insert_cols.join(", "));
        let mut sets = vec!["version = $3".to_string(), "updated_at = $4".to_string()];
        for (i, c) in write_cols.iter().enumerate() {
            sets.push(format!("{c} = ${}", i + 5));
        }
        let update_values = format!("update {table} set {} where tenant = $1 and id = $2", sets.join(", "));
        let set_deletion = format!(
            "update {table} set version = $3, updated_at = $4, deleted_at = $5, deleted_by = $6, delete_reason = $7, deletion_id = $8, purge_at = $9 where tenant = $1 and id = $2"
        );
        let set_archive = format!(
            "update {table} set version = $3, updated_at = $4, archived_at = $5, archived_by = $6, archive_reason = $7 where tenant = $1 and id = $2"
        );
        let remove = format!("delete from {table} where tenant = $1 and id = $2");
        Self { table, select, insert, update_values, set_deletion, set_archive, remove }
    }
}

/// A record from a row of [`TableSql::select`].
pub(crate) fn read_record(collection: &Collection, row: &Row) -> Result<Record, StoreError> {
    let deleted_at: Option<i64> = row.try_get(5)?;
    let deletion = match deleted_at {
        Some(at) => Some(DeletionMark {
            deleted_at: Timestamp::from_micros(at),
            deleted_by: row.try_get::<_, Option<String>>(6)?.unwrap_or_default(),
            reason: row.try_get(7)?,
            deletion_id: row.try_get::<_, Option<String>>(8)?.unwrap_or_default(),
            purge_at: Timestamp::from_micros(row.try_get::<_, Option<i64>>(9)?.unwrap_or(i64::MAX)),
        }),
        None => None,
    };
    let archive = match row.try_get::<_, Option<i64>>(10)? {
        Some(at) => Some(ArchiveMark {
            archived_at: Timestamp::from_micros(at),
            archived_by: row.try_get::<_, Option<String>>(11)?.unwrap_or_default(),
            reason: row.try_get(12)?,
        }),
        None => None,
    };
    let mut values = Values::new();
    for (i, f) in collection.fields.values().enumerate() {
        let v = from_row(&f.ty, row, SYSTEM_COUNT + i)?;
        if !v.is_null() {
            values.insert(f.name.clone(), v);
        }
    }
    Ok(Record {
        tenant: row.try_get(0)?,
        collection: collection.name.clone(),
        id: row.try_get(1)?,
        version: row.try_get(2)?,
        created_at: Timestamp::from_micros(row.try_get(3)?),
        updated_at: Timestamp::from_micros(row.try_get(4)?),
        deletion,
        archive,
        legal_hold: row.try_get(SYSTEM_COUNT + collection.fields.len())?,
        values,
    })
}

/// The field parameters of an insert or a values update, in `write_cols` order.
pub(crate) fn write_params(collection: &Collection, values: &Values) -> Vec<Param> {
    let mut params = Vec::with_capacity(collection.fields.len() + 2);
    for f in collection.fields.values() {
        let v = values.get(&f.name).unwrap_or(&FieldValue::Null);
        params.push(to_param(&f.ty, v));
        if f.case_insensitive {
            params.push(folded_param(v));
        }
    }
    params
}

/// The parameters of [`TableSql::insert`].
pub(crate) fn insert_params(collection: &Collection, record: &Record) -> Vec<Param> {
    let mut params = vec![
        Param::Text(Some(record.tenant.clone())),
        Param::Text(Some(record.id.clone())),
        Param::Int(Some(record.version)),
        Param::Int(Some(record.created_at.as_micros())),
        Param::Int(Some(record.updated_at.as_micros())),
    ];
    params.extend(write_params(collection, &record.values));
    params
}

/// The parameters of [`TableSql::update_values`].
pub(crate) fn update_params(collection: &Collection, record: &Record) -> Vec<Param> {
    let mut params = vec![
        Param::Text(Some(record.tenant.clone())),
        Param::Text(Some(record.id.clone())),
        Param::Int(Some(record.version)),
        Param::Int(Some(record.updated_at.as_micros())),
    ];
    params.extend(write_params(collection, &record.values));
    params
}

/// The parameters of [`TableSql::set_deletion`]: the mark, or nulls for a restore.
pub(crate) fn deletion_params(record: &Record) -> Vec<Param> {
    let d = record.deletion.as_ref();
    vec![
        Param::Text(Some(record.tenant.clone())),
        Param::Text(Some(record.id.clone())),
        Param::Int(Some(record.version)),
        Param::Int(Some(record.updated_at.as_micros())),
        Param::Int(d.map(|d| d.deleted_at.as_micros())),
        Param::Text(d.map(|d| d.deleted_by.clone())),
        Param::Text(d.and_then(|d| d.reason.clone())),
        Param::Text(d.map(|d| d.deletion_id.clone())),
        Param::Int(d.map(|d| d.purge_at.as_micros())),
    ]
}

/// The parameters of [`TableSql::set_archive`]: the mark, or nulls for an unarchive.
pub(crate) fn archive_params(record: &Record) -> Vec<Param> {
    let a = record.archive.as_ref();
    vec![
        Param::Text(Some(record.tenant.clone())),
        Param::Text(Some(record.id.clone())),
        Param::Int(Some(record.version)),
        Param::Int(Some(record.updated_at.as_micros())),
        Param::Int(a.map(|a| a.archived_at.as_micros())),
        Param::Text(a.map(|a| a.archived_by.clone())),
        Param::Text(a.and_then(|a| a.reason.clone())),
    ]
}

/// The SELECT that finds the active record (other than `$2`) holding one unique set's
/// values, and its parameters; `None` when a value of the set is null (nulls never
/// collide).
pub(crate) fn conflict_query(
    sql: &TableSql,
    collection: &Collection,
    set: &[String],
    tenant: &str,
    id: &str,
    values: &Values,
) -> Option<(String, Vec<Param>)> {
    let mut clauses = Vec::new();
    let mut params = vec![Param::Text(Some(tenant.to_string())), Param::Text(Some(id.to_string()))];
    for fname in set {
        let field = collection.field(fname)?;
        let value = match values.get(fname) {
            None | Some(FieldValue::Null) => return None,
            Some(v) if field.case_insensitive => folded_param(v),
            Some(v) => to_param(&field.ty, v),
        };
        params.push(value);
        clauses.push(format!("{} = ${}", compare_column(fname, field.case_insensitive), params.len()));
    }
    let query = format!(
        "select id from {} where tenant = $1 and id <> $2 and deleted_at is null and {} limit 1",
        sql.table,
        clauses.join(" and ")
    );
    Some((query, params))
}

fn sort_column(key: &SortKey) -> String {
    match key {
        SortKey::Id => "t.id".into(),
        SortKey::CreatedAt => "t.created_at".into(),
        SortKey::UpdatedAt => "t.updated_at".into(),
        SortKey::DeletedAt => "t.deleted_at".into(),
        SortKey::Field(f) => format!("t.{}", field_column(f)),
    }
}

/// A cursor's sort value as a parameter of the sort column's type.
fn sort_param(key: &SortKey, collection: &Collection, v: &SortValue) -> Param {
    let ty = match key {
        SortKey::Id => &FieldType::String,
        SortKey::CreatedAt | SortKey::UpdatedAt | SortKey::DeletedAt => &FieldType::Integer,
        SortKey::Field(f) => collection.field(f).map_or(&FieldType::String, |d| &d.ty),
    };
    match (ty, v) {
        (_, SortValue::Null) => Param::Text(None),
        (FieldType::Integer | FieldType::Timestamp, SortValue::Int(i)) => Param::Int(Some(*i)),
        #[expect(clippy::cast_possible_truncation, reason = "a float cursor on an integer column is forged")]
        (FieldType::Integer | FieldType::Timestamp, SortValue::Float(f)) => Param::Int(Some(*f as i64)),
        (FieldType::Number, SortValue::Float(f)) => Param::Float(Some(*f)),
        #[expect(clippy::cast_precision_loss, reason = "a whole number in a number column's cursor")]
        (FieldType::Number, SortValue::Int(i)) => Param::Float(Some(*i as f64)),
        // SQLite stores booleans as 0 and 1, and its cursors carry them so.
        (FieldType::Boolean, SortValue::Int(i)) => Param::Bool(Some(*i != 0)),
        (FieldType::Boolean, SortValue::Float(f)) => Param::Bool(Some(*f != 0.0)),
        (FieldType::String | FieldType::Ref { .. } | FieldType::Json | FieldType::File(_), SortValue::Text(t)) => {
            Param::Text(Some(t.clone()))
        }
        (FieldType::String | FieldType::Ref { .. } | FieldType::Json | FieldType::File(_), SortValue::Int(i)) => {
            Param::Text(Some(i.to_string()))
        }
        (FieldType::String | FieldType::Ref { .. } | FieldType::Json | FieldType::File(_), SortValue::Float(f)) => {
            Param::Text(Some(f.to_string()))
        }
        (FieldType::Integer | FieldType::Timestamp, SortValue::Text(t)) => Param::Int(t.parse().ok()),
        (FieldType::Number, SortValue::Text(t)) => Param::Float(t.parse().ok()),
        (FieldType::Boolean, SortValue::Text(t)) => Param::Bool(Some(t == "1" || t == "true")),
    }
}

/// Builds the WHERE clause shared by a list and its count.
fn filter_clause(collection: &Collection, tenant: &str, query: &ListQuery, params: &mut Vec<Param>) -> String {
    params.push(Param::Text(Some(tenant.to_string())));
    let mut clauses = vec!["t.tenant = $1".to_string()];
    match query.scope {
        DeletedScope::Active => clauses.push("t.deleted_at is null".into()),
        DeletedScope::Deleted => clauses.push("t.deleted_at is not null".into()),
        DeletedScope::All => {}
    }
    // Beside the deletion predicate, so that the partial indexes over both serve lists.
    match query.archived {
        ArchivedScope::Exclude => clauses.push("t.archived_at is null".into()),
        ArchivedScope::Only => clauses.push("t.archived_at is not null".into()),
        ArchivedScope::Include => {}
    }
    for filter in &query.filters {
        // The value of a case-insensitive filter is folded already.
        let ty = collection.field(&filter.field).map_or(&FieldType::String, |f| &f.ty);
        let value = if filter.case_insensitive {
            match &filter.value {
                FieldValue::String(s) => Param::Text(Some(s.clone())),
                _ => Param::Text(None),
            }
        } else {
            to_param(ty, &filter.value)
        };
        params.push(value);
        clauses.push(format!("t.{} = ${}", compare_column(&filter.field, filter.case_insensitive), params.len()));
    }
    let mut push = |clause: &str, value: Param| {
        params.push(value);
        clauses.push(format!("{clause} ${}", params.len()));
    };
    if let Some(t) = query.deleted_since {
        push("t.deleted_at >=", Param::Int(Some(t.as_micros())));
    }
    if let Some(t) = query.deleted_before {
        push("t.deleted_at <", Param::Int(Some(t.as_micros())));
    }
    if let Some(by) = &query.deleted_by {
        push("t.deleted_by =", Param::Text(Some(by.clone())));
    }
    if let Some(t) = query.purge_before {
        push("t.purge_at <", Param::Int(Some(t.as_micros())));
    }
    if let Some(Candidates::Ids(ids)) = &query.candidates {
        // One parameter whatever the number of candidates.
        params.push(Param::TextArray(ids.clone()));
        clauses.push(format!("t.id = any(${})", params.len()));
    }
    clauses.join(" and ")
}

/// One page of a list, plus the total when asked (a list narrowed by fingerprints is
/// [`list_walking`]'s).
pub(crate) async fn list(
    client: &impl deadpool_postgres::GenericClient,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    query: &ListQuery,
) -> Result<Page, StoreError> {
    let mut params = Vec::new();
    let mut clause = filter_clause(collection, tenant, query, &mut params);
    let total = if query.count {
        let count_sql = crate::list_count_sql(&sql.table, &clause, query);
        let n: i64 = client.query_one(&count_sql, &refs(&params)).await?.try_get(0)?;
        Some(u64::try_from(n).unwrap_or(0))
    } else {
        None
    };
    let order = keyset(collection, query, &mut clause, &mut params);
    params.push(Param::Int(Some(i64::from(query.limit) + 1)));
    let list_sql = format!("{} where {clause} order by {order} limit ${}", sql.select, params.len());
    let rows = client.query(&list_sql, &refs(&params)).await?;
    let items = rows.iter().map(|r| read_record(collection, r)).collect::<Result<Vec<_>, _>>()?;
    Ok(Page::of(items, query, total))
}

/// One page of a list narrowed by the fingerprints of a search's matches: the list's rows
/// in its order, ids only, fetched through a portal until the page's hits are found; then
/// the page is read by those ids, through every filter again (a record deleted meanwhile
/// drops out). A count walks every row of the list.
pub(crate) async fn list_walking(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    query: &ListQuery,
    set: &Fingerprints,
) -> Result<Page, StoreError> {
    let mut params = Vec::new();
    let mut clause = filter_clause(collection, tenant, query, &mut params);
    let total = if query.count {
        let all = format!("select t.id from {} t where {clause}", sql.table);
        Some(walk(tx, &all, &params, Walk::count(set)).await?.1)
    } else {
        None
    };
    let order = keyset(collection, query, &mut clause, &mut params);
    let walked = format!("select t.id from {} t where {clause} order by {order}", sql.table);
    let (hits, _) = walk(tx, &walked, &params, Walk::page(set, query.limit as usize + 1)).await?;
    let by_ids = ListQuery { candidates: Some(Candidates::Ids(hits)), count: false, ..query.clone() };
    Ok(Page { total, ..list(tx, sql, collection, tenant, &by_ids).await? })
}

/// Adds the cursor's keyset condition to `clause`; returns the list's `order by`.
fn keyset(collection: &Collection, query: &ListQuery, clause: &mut String, params: &mut Vec<Param>) -> String {
    let col = sort_column(&query.sort.key);
    let desc = query.sort.descending;
    let (cmp, dir) = if desc { ("<", "desc") } else { (">", "asc") };
    if let Some(Position { value, id }) = &query.after {
        params.push(Param::Text(Some(id.clone())));
        let id_param = params.len();
        if query.sort.key == SortKey::Id {
            clause.push_str(&format!(" and t.id {cmp} ${id_param}"));
        } else {
            // SQLite's order, which both stores keep: NULLs first ascending and last
            // descending. The keyset condition follows it exactly.
            let keyset = match (value, desc) {
                (SortValue::Null, false) => format!("(({col} is null and t.id > ${id_param}) or {col} is not null)"),
                (SortValue::Null, true) => format!("({col} is null and t.id < ${id_param})"),
                (v, _) => {
                    params.push(sort_param(&query.sort.key, collection, v));
                    let v_param = params.len();
                    let nulls_after = if desc { format!(" or {col} is null") } else { String::new() };
                    format!("({col} {cmp} ${v_param} or ({col} = ${v_param} and t.id {cmp} ${id_param}){nulls_after})")
                }
            };
            clause.push_str(" and ");
            clause.push_str(&keyset);
        }
    }
    let nulls = if desc { "nulls last" } else { "nulls first" };
    if query.sort.key == SortKey::Id { format!("t.id {dir}") } else { format!("{col} {dir} {nulls}, t.id {dir}") }
}

/// Fetches the ids `sql` selects from one portal, in batches, as `walk` asks; the database
/// runs the query no further than the batches fetched.
async fn walk(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[Param],
    mut walk: Walk<'_>,
) -> Result<(Vec<String>, u64), StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    let portal = tx.bind(&statement, &refs(params)).await?;
    loop {
        let rows = tx.query_portal(&portal, i32::try_from(walk.batch()).unwrap_or(i32::MAX)).await?;
        let ids = rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<String>, _>>()?;
        if walk.take(ids) {
            return Ok(walk.finish());
        }
    }
}
