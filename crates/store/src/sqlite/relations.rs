//! Relations: finding children for deletion plans, executing a plan's cascade with
//! set-based statements, ref checks on writes and restores, deletion operations and the
//! eventual-cascade queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use tombstone_domain::config::Schema;
use tombstone_domain::deletion::RecordRef;
use tombstone_domain::time::Timestamp;

use super::records::TableSql;
use super::schema::table_name;
use crate::StoreError;

/// The statements of every collection.
pub(crate) type Tables = HashMap<String, Arc<TableSql>>;

pub(crate) fn table<'a>(tables: &'a Tables, collection: &str) -> Result<&'a Arc<TableSql>, StoreError> {
    tables.get(collection).ok_or_else(|| StoreError::Internal(format!("collection {collection} has not been migrated")))
}

pub(crate) fn is_active(conn: &Connection, collection: &str, tenant: &str, id: &str) -> Result<bool, StoreError> {
    let sql = format!("select 1 from {} where tenant = ?1 and id = ?2 and deleted_at is null", table_name(collection));
    Ok(conn.prepare_cached(&sql)?.query_row([tenant, id], |_| Ok(())).optional()?.is_some())
}

/// Records per collection of an operation.
pub(crate) fn operation_counts(conn: &Connection, deletion_id: &str) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "select collection, count(*) from deletion_records where deletion_id = ?1 group by collection",
    )?;
    let rows = stmt.query_map([deletion_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (c, n) = row?;
        out.insert(c, u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// A deletion operation of the tenant, with its propagation to webhook endpoints.
pub(crate) fn get_operation(
    conn: &Connection,
    schema: &Schema,
    tenant: &str,
    id: &str,
    page: &crate::RecordsPage,
) -> Result<Option<crate::DeletionOp>, StoreError> {
    type Row = (String, String, Option<String>, i64, String, String);
    let row: Option<Row> = conn
        .prepare_cached(
            "select status, actor, reason, created_at, root_collection, root_id from deletions where id = ?1 and tenant = ?2",
        )?
        .query_row([id, tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .optional()?;
    let Some((status, actor, reason, created_at, root_collection, root_id)) = row else { return Ok(None) };
    let root = RecordRef::new(&root_collection, &root_id);
    // One page of the records: the root first, then the others by (collection, id), read
    // from the primary key after the cursor — an operation of a million records costs a page.
    let first_page = page.after.is_none();
    let after = page.after.clone().unwrap_or_else(|| RecordRef::new("", ""));
    let others = if first_page { page.limit.saturating_sub(1) } else { page.limit };
    let mut records: Vec<RecordRef> = conn
        .prepare_cached(
            "select collection, record_id from deletion_records
             where deletion_id = ?1 and (collection, record_id) > (?2, ?3) and not (collection = ?4 and record_id = ?5)
             order by collection, record_id limit +?6",
        )?
        .query_map(params![id, after.collection, after.id, root.collection, root.id, i64::from(others) + 1], |r| {
            Ok(RecordRef { collection: r.get(0)?, id: r.get(1)? })
        })?
        .collect::<Result<_, _>>()?;
    let records_next = if records.len() > others as usize {
        records.truncate(others as usize);
        // A first page of the root alone: the next one starts at the first of the others.
        records.last().cloned().or_else(|| first_page.then(|| RecordRef::new("", "")))
    } else {
        None
    };
    if first_page {
        records.insert(0, root.clone());
    }
    let pending_relations: i64 = conn
        .prepare_cached("select count(*) from deletion_queue where deletion_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    let counts = operation_counts(conn, id)?;
    let mut restorable_until: Option<i64> = None;
    for name in counts.keys() {
        if schema.collection(name).is_none() {
            continue;
        }
        let q = format!(
            "select min(purge_at) from {} where tenant = ?1 and deletion_id = ?2 and deleted_at is not null",
            table_name(name)
        );
        let min: Option<i64> = conn.prepare_cached(&q)?.query_row([tenant, id], |r| r.get(0))?;
        if let Some(m) = min {
            restorable_until = Some(restorable_until.map_or(m, |r| r.min(m)));
        }
    }
    // Propagation: per endpoint, pending until its cursor passed the operation's events
    // and their deliveries are done; failed if any delivery failed or was cancelled.
    let newest_event: Option<i64> = conn
        .prepare_cached("select max(seq) from outbox where tenant = ?1 and deletion_id = ?2")?
        .query_row([tenant, id], |r| r.get(0))?;
    let mut webhooks = BTreeMap::new();
    // Tenants read this: endpoint ids and error classes only, never URLs, and only the
    // endpoints that serve this tenant.
    let endpoints: Vec<(String, i64, Option<i64>, bool)> = conn
        .prepare_cached(
            "select id, cursor, disabled_at, removed_at is not null from webhook_endpoints
             where tenant is null or tenant = ?1 order by id",
        )?
        .query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (endpoint, cursor, disabled_at, removed) in endpoints {
        let states: Vec<(String, Option<String>)> = conn
            .prepare_cached(
                "select d.status, d.last_error from webhook_deliveries d join outbox o on o.seq = d.event_seq
                 where d.endpoint_id = ?1 and o.tenant = ?2 and o.deletion_id = ?3",
            )?
            .query_map(params![endpoint, tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if let Some(status) = crate::sink_status(&states, newest_event, cursor, disabled_at.is_some(), removed) {
            webhooks.insert(endpoint, status);
        }
    }
    Ok(Some(crate::DeletionOp {
        id: id.to_string(),
        status,
        actor,
        reason,
        created_at: Timestamp::from_micros(created_at),
        root,
        records,
        records_next,
        records_total: counts.values().sum(),
        pending_relations: u64::try_from(pending_relations).unwrap_or(0),
        counts,
        restorable_until: restorable_until.map(Timestamp::from_micros),
        webhooks,
        last_event_seq: newest_event,
    }))
}
