//! Record rows: how a record maps to its collection table, and the statements that read
//! and write one record inside a transaction.

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use tombstone_domain::config::{Collection, FieldType};
use tombstone_domain::query::{ArchivedScope, Candidates, DeletedScope, ListQuery, Position, SortKey, SortValue};
use tombstone_domain::record::{ArchiveMark, DeletionMark, FieldValue, Record, Values, fold_case};
use tombstone_domain::time::Timestamp;

use super::schema::{compare_column, table_name};
use crate::{Page, StoreError, Walk};

const SYSTEM_COLUMNS: &str = "tenant, id, version, created_at, updated_at, deleted_at, deleted_by, delete_reason, deletion_id, purge_at, archived_at, archived_by, archive_reason";
const SYSTEM_COUNT: usize = 13;

/// The statements of one collection, built once.
#[derive(Debug)]
pub(crate) struct TableSql {
    pub table: String,
    /// Every column a record is read from, in `select`'s order.
    columns: String,
    select: String,
    insert: String,
    update_values: String,
}

impl TableSql {
    /// `select <every column> from <table>`.
    pub(crate) fn select(&self) -> &str {
        &self.select
    }

    /// The columns `select` reads (comma-separated), which `ix_<c>_page` carries.
    pub(crate) fn columns(&self) -> &str {
        &self.columns
    }

    pub(crate) fn new(collection: &Collection) -> Self {
        let table = table_name(&collection.name);
        let mut field_cols = Vec::new();
        let mut write_cols = Vec::new();
        for f in collection.fields.values() {
            field_cols.push(format!("\"f_{}\"", f.name));
            write_cols.push(format!("\"f_{}\"", f.name));
            if f.case_insensitive {
                write_cols.push(format!("\"ci_{}\"", f.name));
            }
        }
        let select_cols = if field_cols.is_empty() {
            SYSTEM_COLUMNS.to_string()
        } else {
            format!("{SYSTEM_COLUMNS}, {}", field_cols.join(", "))
        };
        // Whether any hold is active, read with the row so lists cost no extra query.
        let held = format!(
            "exists (select 1 from holds h where h.tenant = {table}.tenant and h.collection = '{}' and h.record_id = {table}.id and h.released_at is null)",
            collection.name
        );
        let select = format!("select {select_cols}, {held} from {table}");
        let mut insert_cols = vec!["tenant", "id", "version", "created_at", "updated_at"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        insert_cols.extend(write_cols.iter().cloned());
        let placeholders = (1..=insert_cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let insert = format!("insert into {table} ({}) values ({placeholders})", insert_cols.join(", "));
        let mut sets = vec!["version = ?3".to_string(), "updated_at = ?4".to_string()];
        for (i, c) in write_cols.iter().enumerate() {
            sets.push(format!("{c} = ?{}", i + 5));
        }
        let update_values = format!("update {table} set {} where tenant = ?1 and id = ?2", sets.join(", "));
        Self { table, columns: select_cols, select, insert, update_values }
    }
}

/// The SQL value of a field value.
pub(crate) fn to_sql(value: &FieldValue) -> SqlValue {
    match value {
        FieldValue::Null => SqlValue::Null,
        FieldValue::String(s) | FieldValue::Ref(s) => SqlValue::Text(s.clone()),
        FieldValue::Integer(i) => SqlValue::Integer(*i),
        FieldValue::Number(n) => SqlValue::Real(*n),
        FieldValue::Boolean(b) => SqlValue::Integer(i64::from(*b)),
        FieldValue::Timestamp(t) => SqlValue::Integer(t.as_micros()),
        FieldValue::Json(v) => SqlValue::Text(v.to_string()),
    }
}

fn from_sql(ty: &FieldType, value: ValueRef<'_>) -> FieldValue {
    match (ty, value) {
        (_, ValueRef::Null) => FieldValue::Null,
        (FieldType::String, ValueRef::Text(t)) => FieldValue::String(String::from_utf8_lossy(t).into_owned()),
        (FieldType::Ref { .. }, ValueRef::Text(t)) => FieldValue::Ref(String::from_utf8_lossy(t).into_owned()),
        (FieldType::Integer, ValueRef::Integer(i)) => FieldValue::Integer(i),
        (FieldType::Number, ValueRef::Real(r)) => FieldValue::Number(r),
        #[expect(clippy::cast_precision_loss, reason = "SQLite may store a whole REAL as an integer")]
        (FieldType::Number, ValueRef::Integer(i)) => FieldValue::Number(i as f64),
        (FieldType::Boolean, ValueRef::Integer(i)) => FieldValue::Boolean(i != 0),
        (FieldType::Timestamp, ValueRef::Integer(i)) => FieldValue::Timestamp(Timestamp::from_micros(i)),
        (FieldType::Json | FieldType::File(_), ValueRef::Text(t)) => {
            serde_json::from_slice(t).map_or(FieldValue::Null, FieldValue::Json)
        }
        // A value of another type can only come from outside Tombstone; show it as absent
        // rather than fail the whole read.
        _ => FieldValue::Null,
    }
}

pub(crate) fn read_record(collection: &Collection, row: &Row<'_>) -> rusqlite::Result<Record> {
    let deleted_at: Option<i64> = row.get(5)?;
    let deletion = match deleted_at {
        Some(at) => Some(DeletionMark {
            deleted_at: Timestamp::from_micros(at),
            deleted_by: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
            reason: row.get(7)?,
            deletion_id: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
            purge_at: Timestamp::from_micros(row.get::<_, Option<i64>>(9)?.unwrap_or(i64::MAX)),
        }),
        None => None,
    };
    let archive = match row.get::<_, Option<i64>>(10)? {
        Some(at) => Some(ArchiveMark {
            archived_at: Timestamp::from_micros(at),
            archived_by: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
            reason: row.get(12)?,
        }),
        None => None,
    };
    let mut values = Values::new();
    for (i, f) in collection.fields.values().enumerate() {
        let v = from_sql(&f.ty, row.get_ref(SYSTEM_COUNT + i)?);
        if !v.is_null() {
            values.insert(f.name.clone(), v);
        }
    }
    Ok(Record {
        tenant: row.get(0)?,
        collection: collection.name.clone(),
        id: row.get(1)?,
        version: row.get(2)?,
        created_at: Timestamp::from_micros(row.get(3)?),
        updated_at: Timestamp::from_micros(row.get(4)?),
        deletion,
        archive,
        legal_hold: row.get(SYSTEM_COUNT + collection.fields.len())?,
        values,
    })
}

/// Reads one record by id, deleted or not.
pub(crate) fn get(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    id: &str,
) -> Result<Option<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{} where tenant = ?1 and id = ?2", sql.select))?;
    Ok(stmt.query_row([tenant, id], |r| read_record(collection, r)).optional()?)
}

fn write_params(collection: &Collection, values: &Values) -> Vec<SqlValue> {
    let mut params = Vec::with_capacity(collection.fields.len() + 2);
    for f in collection.fields.values() {
        let v = values.get(&f.name).unwrap_or(&FieldValue::Null);
        params.push(to_sql(v));
        if f.case_insensitive {
            params.push(match v {
                FieldValue::String(s) => SqlValue::Text(fold_case(s)),
                _ => SqlValue::Null,
            });
        }
    }
    params
}

/// Inserts a new record row.
pub(crate) fn insert(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    record: &Record,
) -> Result<(), StoreError> {
    let mut params = vec![
        SqlValue::Text(record.tenant.clone()),
        SqlValue::Text(record.id.clone()),
        SqlValue::Integer(record.version),
        SqlValue::Integer(record.created_at.as_micros()),
        SqlValue::Integer(record.updated_at.as_micros()),
    ];
    params.extend(write_params(collection, &record.values));
    conn.prepare_cached(&sql.insert)?.execute(params_from_iter(params))?;
    Ok(())
}

/// Rewrites a record's values at a new version.
pub(crate) fn update_values(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    record: &Record,
) -> Result<(), StoreError> {
    let mut params = vec![
        SqlValue::Text(record.tenant.clone()),
        SqlValue::Text(record.id.clone()),
        SqlValue::Integer(record.version),
        SqlValue::Integer(record.updated_at.as_micros()),
    ];
    params.extend(write_params(collection, &record.values));
    conn.prepare_cached(&sql.update_values)?.execute(params_from_iter(params))?;
    Ok(())
}

/// Writes a record's deletion state (set or cleared) at a new version.
pub(crate) fn set_deletion(conn: &Connection, sql: &TableSql, record: &Record) -> Result<(), StoreError> {
    let d = record.deletion.as_ref();
    let mut stmt = conn.prepare_cached(&format!(
        "update {} set version = ?3, updated_at = ?4, deleted_at = ?5, deleted_by = ?6, delete_reason = ?7, deletion_id = ?8, purge_at = ?9 where tenant = ?1 and id = ?2",
        sql.table
    ))?;
    stmt.execute(rusqlite::params![
        record.tenant,
        record.id,
        record.version,
        record.updated_at.as_micros(),
        d.map(|d| d.deleted_at.as_micros()),
        d.map(|d| d.deleted_by.as_str()),
        d.and_then(|d| d.reason.as_deref()),
        d.map(|d| d.deletion_id.as_str()),
        d.map(|d| d.purge_at.as_micros()),
    ])?;
    Ok(())
}

/// Writes a record's archive state (set or cleared) at a new version.
pub(crate) fn set_archive(conn: &Connection, sql: &TableSql, record: &Record) -> Result<(), StoreError> {
    let a = record.archive.as_ref();
    let mut stmt = conn.prepare_cached(&format!(
        "update {} set version = ?3, updated_at = ?4, archived_at = ?5, archived_by = ?6, archive_reason = ?7 where tenant = ?1 and id = ?2",
        sql.table
    ))?;
    stmt.execute(rusqlite::params![
        record.tenant,
        record.id,
        record.version,
        record.updated_at.as_micros(),
        a.map(|a| a.archived_at.as_micros()),
        a.map(|a| a.archived_by.as_str()),
        a.and_then(|a| a.reason.as_deref()),
    ])?;
    Ok(())
}

/// `(tenant, id)` of up to `limit` records neither deleted nor archived, last updated at
/// or before `cutoff`, oldest first.
pub(crate) fn stale_rows(
    conn: &Connection,
    sql: &TableSql,
    cutoff: Timestamp,
    limit: u32,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "select tenant, id from {} where deleted_at is null and archived_at is null and updated_at <= ?1 order by updated_at limit +?2",
        sql.table
    ))?;
    Ok(stmt
        .query_map(rusqlite::params![cutoff.as_micros(), limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Removes a record row.
pub(crate) fn remove(conn: &Connection, sql: &TableSql, tenant: &str, id: &str) -> Result<(), StoreError> {
    conn.prepare_cached(&format!("delete from {} where tenant = ?1 and id = ?2", sql.table))?.execute([tenant, id])?;
    Ok(())
}

/// The active record (other than `id`) that already holds one of the collection's unique
/// value sets, if any, and which set.
pub(crate) fn unique_conflict(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    id: &str,
    values: &Values,
) -> Result<Option<(String, Vec<String>)>, StoreError> {
    'sets: for set in &collection.unique {
        let mut clauses = Vec::new();
        let mut params = vec![SqlValue::Text(tenant.to_string()), SqlValue::Text(id.to_string())];
        for fname in set {
            let Some(field) = collection.field(fname) else { continue 'sets };
            let value = match values.get(fname) {
                None | Some(FieldValue::Null) => continue 'sets, // NULLs never collide
                Some(FieldValue::String(s)) if field.case_insensitive => SqlValue::Text(fold_case(s)),
                Some(v) => to_sql(v),
            };
            params.push(value);
            clauses.push(format!("{} = ?{}", compare_column(fname, field.case_insensitive), params.len()));
        }
        let query = format!(
            "select id from {} where tenant = ?1 and id <> ?2 and deleted_at is null and {} limit 1",
            sql.table,
            clauses.join(" and ")
        );
        let found: Option<String> =
            conn.prepare_cached(&query)?.query_row(params_from_iter(params), |r| r.get(0)).optional()?;
        if let Some(other) = found {
            return Ok(Some((other, set.clone())));
        }
    }
    Ok(None)
}

fn sort_column(key: &SortKey, collection: &Collection) -> String {
    match key {
        SortKey::Id => "id".into(),
        SortKey::CreatedAt => "created_at".into(),
        SortKey::UpdatedAt => "updated_at".into(),
        SortKey::DeletedAt => "deleted_at".into(),
        SortKey::Field(f) => {
            let _ = collection;
            format!("\"f_{f}\"")
        }
    }
}

fn sort_value_to_sql(v: &SortValue) -> SqlValue {
    match v {
        SortValue::Null => SqlValue::Null,
        SortValue::Int(i) => SqlValue::Integer(*i),
        SortValue::Float(f) => SqlValue::Real(*f),
        SortValue::Text(t) => SqlValue::Text(t.clone()),
    }
}

/// Builds the WHERE clause shared by a list and its count.
fn filter_clause(collection: &Collection, tenant: &str, query: &ListQuery, params: &mut Vec<SqlValue>) -> String {
    params.push(SqlValue::Text(tenant.to_string()));
    let mut clauses = vec!["tenant = ?1".to_string()];
    match query.scope {
        DeletedScope::Active => clauses.push("deleted_at is null".into()),
        DeletedScope::Deleted => clauses.push("deleted_at is not null".into()),
        DeletedScope::All => {}
    }
    // Beside the deletion predicate, so that the partial indexes over both serve lists.
    match query.archived {
        ArchivedScope::Exclude => clauses.push("archived_at is null".into()),
        ArchivedScope::Only => clauses.push("archived_at is not null".into()),
        ArchivedScope::Include => {}
    }
    for filter in &query.filters {
        params.push(to_sql(&filter.value));
        clauses.push(format!("{} = ?{}", compare_column(&filter.field, filter.case_insensitive), params.len()));
    }
    let _ = collection;
    let mut push = |clause: &str, value: SqlValue| {
        params.push(value);
        clauses.push(format!("{clause} ?{}", params.len()));
    };
    if let Some(t) = query.deleted_since {
        push("deleted_at >=", SqlValue::Integer(t.as_micros()));
    }
    if let Some(t) = query.deleted_before {
        push("deleted_at <", SqlValue::Integer(t.as_micros()));
    }
    if let Some(by) = &query.deleted_by {
        push("deleted_by =", SqlValue::Text(by.clone()));
    }
    if let Some(t) = query.purge_before {
        push("purge_at <", SqlValue::Integer(t.as_micros()));
    }
    if let Some(Candidates::Ids(ids)) = &query.candidates {
        // One parameter whatever the number of candidates.
        push(
            "id in (select value from json_each(",
            SqlValue::Text(serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())),
        );
        if let Some(last) = clauses.last_mut() {
            last.push_str("))");
        }
    }
    clauses.join(" and ")
}

/// One page of a list, plus the total when asked.
pub(crate) fn list(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    query: &ListQuery,
) -> Result<Page, StoreError> {
    let mut params = Vec::new();
    let mut clause = filter_clause(collection, tenant, query, &mut params);
    let fingerprints = match &query.candidates {
        Some(Candidates::Fingerprints(set)) => Some(set),
        _ => None,
    };
    let total = match (query.count, fingerprints) {
        (false, _) => None,
        (true, None) => {
            let count_sql = crate::list_count_sql(&sql.table, &clause, query);
            let n: i64 = conn.prepare_cached(&count_sql)?.query_row(params_from_iter(params.iter()), |r| r.get(0))?;
            Some(u64::try_from(n).unwrap_or(0))
        }
        (true, Some(set)) => {
            let all = format!("select id from {} where {clause}", sql.table);
            Some(walk(conn, &all, &params, Walk::count(set))?.1)
        }
    };
    let order = keyset(collection, query, &mut clause, &mut params);
    if let Some(set) = fingerprints {
        // The list's rows in its order, ids only (its index, not the table), until the
        // page's hits are found; then the page is read by those ids, through every filter
        // again (a record deleted meanwhile drops out).
        let walked = format!("select id from {} where {clause} order by {order}", sql.table);
        let (hits, _) = walk(conn, &walked, &params, Walk::page(set, query.limit as usize + 1))?;
        let by_ids = ListQuery { candidates: Some(Candidates::Ids(hits)), count: false, ..query.clone() };
        return Ok(Page { total, ..list(conn, sql, collection, tenant, &by_ids)? });
    }
    params.push(SqlValue::Integer(i64::from(query.limit) + 1));
    // `limit +?`, never `limit ?`, in every statement of this store: SQLite's planner reads
    // a bare bound LIMIT, so each new binding expires the statement and the next run parses
    // and plans it again (14% of a list page's CPU; docs/DECISIONS.md).
    let list_sql = format!("{} where {clause} order by {order} limit +?{}", sql.select, params.len());
    let mut stmt = conn.prepare_cached(&list_sql)?;
    let items = stmt
        .query_map(params_from_iter(params.iter()), |r| read_record(collection, r))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::of(items, query, total))
}

/// Adds the cursor's keyset condition to `clause`; returns the list's `order by`.
fn keyset(collection: &Collection, query: &ListQuery, clause: &mut String, params: &mut Vec<SqlValue>) -> String {
    let col = sort_column(&query.sort.key, collection);
    let desc = query.sort.descending;
    let (cmp, dir) = if desc { ("<", "desc") } else { (">", "asc") };
    if let Some(Position { value, id }) = &query.after {
        params.push(SqlValue::Text(id.clone()));
        let id_param = params.len();
        if query.sort.key == SortKey::Id {
            clause.push_str(&format!(" and id {cmp} ?{id_param}"));
        } else {
            // SQLite orders NULLs first ascending and last descending; the keyset
            // condition follows that order exactly.
            let keyset = match (value, desc) {
                (SortValue::Null, false) => format!("(({col} is null and id > ?{id_param}) or {col} is not null)"),
                (SortValue::Null, true) => format!("({col} is null and id < ?{id_param})"),
                (v, _) => {
                    params.push(sort_value_to_sql(v));
                    let v_param = params.len();
                    let nulls_after = if desc { format!(" or {col} is null") } else { String::new() };
                    format!("({col} {cmp} ?{v_param} or ({col} = ?{v_param} and id {cmp} ?{id_param}){nulls_after})")
                }
            };
            clause.push_str(" and ");
            clause.push_str(&keyset);
        }
    }
    if query.sort.key == SortKey::Id { format!("id {dir}") } else { format!("{col} {dir}, id {dir}") }
}

/// Steps through the ids `sql` selects, in batches, as `walk` asks; the statement runs
/// no further than the rows stepped (SQLite computes rows as they are stepped).
fn walk(
    conn: &Connection,
    sql: &str,
    params: &[SqlValue],
    mut walk: Walk<'_>,
) -> Result<(Vec<String>, u64), StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    loop {
        let mut ids = Vec::with_capacity(walk.batch());
        while ids.len() < walk.batch()
            && let Some(row) = rows.next()?
        {
            ids.push(row.get(0)?);
        }
        if walk.take(ids) {
            return Ok(walk.finish());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::Connection;
    use tombstone_domain::config::Config;
    use tombstone_domain::query::{ArchivedScope, DeletedScope, ListQuery};

    use super::filter_clause;
    use crate::list_count_sql;
    use crate::sqlite::schema::{migrate_collection, migrate_system};

    /// The plan SQLite picks for `sql` (with `params`), one line per step.
    fn plan(conn: &Connection, sql: &str, params: &[rusqlite::types::Value]) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("explain query plan {sql}")).expect("explain");
        stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan")
    }

    /// The plan SQLite picks for the count of a list in a scope, one line per table read (`t`
    /// is the table's alias in the count).
    fn count_plan(
        conn: &Connection,
        collection: &tombstone_domain::config::Collection,
        query: &ListQuery,
    ) -> Vec<String> {
        let mut params = Vec::new();
        let clause = filter_clause(collection, "t1", query, &mut params);
        let sql = list_count_sql("\"rec_notes\"", &clause, query);
        plan(conn, &sql, &params)
            .into_iter()
            .filter(|d| d.starts_with("SEARCH t ") || d.starts_with("SCAN t"))
            .collect()
    }

    /// A page of the default list reads its rows from one index that carries them all,
    /// never from the table (where archived and deleted neighbours sit between them), and
    /// the id walk of a search keeps to the narrow index, as the count does.
    #[test]
    fn the_default_list_reads_a_covering_index_and_the_id_walk_the_narrow_one() {
        use super::{SqlValue, TableSql, keyset};
        use tombstone_domain::query::{Position, SortValue};
        let toml = "[collections.notes]\n[collections.notes.fields]\ntext = { type = \"string\" }\nn = { type = \"integer\" }\n";
        let schema = Config::parse(toml, Path::new(".")).expect("schema").schema;
        let notes = schema.collection("notes").expect("notes").clone();
        let mut conn = Connection::open_in_memory().expect("open");
        migrate_system(&mut conn).expect("system");
        let tx = conn.transaction().expect("tx");
        migrate_collection(&tx, &notes).expect("collection");
        tx.commit().expect("commit");
        let sql = TableSql::new(&notes);
        for after in [None, Some(Position { value: SortValue::Null, id: "x".into() })] {
            let query = ListQuery { after, ..ListQuery::default() };
            let mut params = Vec::new();
            let mut clause = filter_clause(&notes, "t1", &query, &mut params);
            let order = keyset(&notes, &query, &mut clause, &mut params);
            params.push(SqlValue::Integer(51));
            let page = format!("{} where {clause} order by {order} limit +?{}", sql.select, params.len());
            let read = plan(&conn, &page, &params);
            assert!(read.iter().any(|d| d.contains("USING COVERING INDEX ix_notes_page")), "{read:?}");
            params.pop();
            let walked = format!("select id from {} where {clause} order by {order}", sql.table);
            let read = plan(&conn, &walked, &params);
            assert!(read.iter().any(|d| d.contains("USING COVERING INDEX ix_notes_current")), "{read:?}");
        }
    }

    /// Counts of undeleted records never leave their partial indexes: every table read is a
    /// covering index (a count that looked each entry up in the table would grow with the
    /// archived and deleted rows beside it).
    #[test]
    fn counts_of_undeleted_records_read_only_covering_partial_indexes() {
        let toml =
            "[collections.notes]\nunique = [[\"text\"]]\n[collections.notes.fields]\ntext = { type = \"string\" }\n";
        let schema = Config::parse(toml, Path::new(".")).expect("schema").schema;
        let notes = schema.collection("notes").expect("notes").clone();
        let mut conn = Connection::open_in_memory().expect("open");
        migrate_system(&mut conn).expect("system");
        let tx = conn.transaction().expect("tx");
        migrate_collection(&tx, &notes).expect("collection");
        tx.commit().expect("commit");

        let plan = |archived| {
            count_plan(&conn, &notes, &ListQuery { scope: DeletedScope::Active, archived, ..ListQuery::default() })
        };
        assert_eq!(plan(ArchivedScope::Exclude), ["SEARCH t USING COVERING INDEX ix_notes_current (tenant=?)"]);
        assert_eq!(plan(ArchivedScope::Only), ["SEARCH t USING COVERING INDEX ix_notes_archived (tenant=?)"]);
        assert_eq!(
            plan(ArchivedScope::Include),
            [
                "SEARCH t USING COVERING INDEX ix_notes_current (tenant=?)",
                "SEARCH t USING COVERING INDEX ix_notes_archived (tenant=?)"
            ]
        );
    }
}
