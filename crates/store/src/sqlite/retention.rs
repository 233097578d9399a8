//! Retention: legal holds, purge (one record or a batch), erasure, the trash and the
//! purge preview.

use std::collections::{BTreeMap, HashMap};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};
use tombstone_domain::config::Collection;
use tombstone_domain::record::{Hold, Record};
use tombstone_domain::time::Timestamp;

use super::records::{self, TableSql};
use super::tx::SqliteTx;
use crate::rules::retention::Due;
use crate::{CollectionCounts, Erasure, ErasureStep, PurgeBatch, PurgeDue, StoreError, TrashQuery};

/// The meta key of the purge pause.
pub(crate) const PURGE_PAUSED: &str = "purge.paused";

/// Whether any record of the collection is under a hold.
fn any_active_hold(conn: &Connection, collection: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("select exists (select 1 from holds where collection = ?1 and released_at is null)")?
        .query_row([collection], |r| r.get(0))?)
}

fn active_hold_clause(sql: &TableSql, collection: &str) -> String {
    format!(
        "exists (select 1 from holds h where h.tenant = {t}.tenant and h.collection = '{collection}' and h.record_id = {t}.id and h.released_at is null)",
        t = sql.table
    )
}

pub(crate) fn active_holds(
    conn: &Connection,
    tenant: &str,
    collection: &str,
    ids: &[String],
) -> Result<HashMap<String, Vec<Hold>>, StoreError> {
    let mut out: HashMap<String, Vec<Hold>> = HashMap::new();
    let mut stmt = conn.prepare_cached(
        "select record_id, id, case_name, reason, actor, at from holds
         where tenant = ?1 and collection = ?2 and record_id = ?3 and released_at is null order by at, id",
    )?;
    for id in ids {
        let holds = stmt
            .query_map(params![tenant, collection, id], |r| {
                Ok(Hold {
                    hold_id: r.get(1)?,
                    case: r.get(2)?,
                    reason: r.get(3)?,
                    actor: r.get(4)?,
                    at: Timestamp::from_micros(r.get(5)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(id.clone(), holds);
    }
    Ok(out)
}

fn paused(conn: &Connection) -> Result<bool, StoreError> {
    let v: Option<String> = conn
        .prepare_cached("select value from meta where key = ?1")?
        .query_row([PURGE_PAUSED], |r| r.get(0))
        .optional()?;
    Ok(v.as_deref() == Some("true"))
}

pub(crate) fn purge_batch(
    tx: &Transaction<'_>,
    tables: &super::relations::Tables,
    collection: &Collection,
    now: Timestamp,
    limit: u32,
    run_id: &str,
    give_way: &dyn Fn() -> bool,
) -> Result<(PurgeBatch, bool), StoreError> {
    let sql = super::relations::table(tables, &collection.name)?;
    // Checked inside the batch's transaction: once a pause commits, no batch purges.
    if paused(tx)? {
        return Ok((PurgeBatch { purged: 0, paused: true }, false));
    }
    // Records under a hold are skipped; when the collection has none (the usual case) the
    // per-row check is left out of the query.
    let held = if any_active_hold(tx, &collection.name)? {
        format!("and not {}", active_hold_clause(sql, &collection.name))
    } else {
        String::new()
    };
    // Only what the audit entry and the event name: a purged record's values go nowhere.
    let query = format!(
        "select tenant, id, version, deletion_id from {} where deleted_at is not null and purge_at <= ?1 {held} order by purge_at limit +?2",
        sql.table,
    );
    // Chunk by chunk — due rows read, removed, each with its audit entry and event — and
    // between chunks, give way to live writes that wait (the caller commits what is done
    // and goes on in a new transaction afterwards).
    let mut done: u32 = 0;
    while done < limit {
        if done > 0 && give_way() {
            return Ok((PurgeBatch { purged: u64::from(done), paused: false }, true));
        }
        let want = (limit - done).min(GIVE_WAY_EVERY);
        let due: Vec<Due> = tx
            .prepare_cached(&query)?
            .query_map(params![now.as_micros(), want], |r| {
                Ok(Due { tenant: r.get(0)?, id: r.get(1)?, version: r.get(2)?, deletion_id: r.get(3)? })
            })?
            .collect::<Result<_, _>>()?;
        let mut rules_tx = SqliteTx::new(tx, tables, None);
        tombstone_domain::ready::now(crate::rules::retention::purge_rows(
            &mut rules_tx,
            collection,
            &due,
            run_id,
            now,
        ))?;
        let got = u32::try_from(due.len()).unwrap_or(u32::MAX);
        done += got;
        if got < want {
            break;
        }
    }
    Ok((PurgeBatch { purged: u64::from(done), paused: false }, false))
}

/// Rows of a purge batch processed between two looks at the write gate.
const GIVE_WAY_EVERY: u32 = 64;

pub(crate) fn purge_due(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    tenant: Option<&str>,
    now: Timestamp,
    horizon: Timestamp,
) -> Result<PurgeDue, StoreError> {
    // Without an active hold in the collection (the usual case) no row needs the per-row
    // hold check: counting a million due rows then reads only the purge index.
    let held = if any_active_hold(conn, &collection.name)? {
        active_hold_clause(sql, &collection.name)
    } else {
        "false".to_string()
    };
    let tenant_clause = if tenant.is_some() { "tenant = ?3 and" } else { "?3 is null and" };
    let count = |condition: &str| -> Result<u64, StoreError> {
        let q =
            format!("select count(*) from {} where {tenant_clause} deleted_at is not null and {condition}", sql.table);
        let n: i64 =
            conn.prepare_cached(&q)?.query_row(params![now.as_micros(), horizon.as_micros(), tenant], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let due_now = count(&format!("purge_at <= ?1 and not {held} and ?2 = ?2"))?;
    let due_soon = count(&format!("purge_at > ?1 and purge_at <= ?2 and not {held}"))?;
    let held_count = count(&format!("purge_at <= ?1 and {held} and ?2 = ?2"))?;
    let sample_q = format!(
        "select id from {} where {tenant_clause} deleted_at is not null and purge_at <= ?1 and not {held} and ?2 = ?2 order by purge_at limit 100",
        sql.table
    );
    let sample = conn
        .prepare_cached(&sample_q)?
        .query_map(params![now.as_micros(), horizon.as_micros(), tenant], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(PurgeDue { collection: collection.name.clone(), due_now, sample, due_soon, held: held_count })
}

/// One collection's counts for the dashboard. Each count is one indexed `count(*)`; the
/// held count reads the holds table, which only ever holds a few rows per record.
pub(crate) fn collection_counts(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    horizon: Timestamp,
) -> Result<CollectionCounts, StoreError> {
    let held_clause = if any_active_hold(conn, &collection.name)? {
        active_hold_clause(sql, &collection.name)
    } else {
        "false".to_string()
    };
    let count = |condition: &str| -> Result<u64, StoreError> {
        let q = format!("select count(*) from {} where tenant = ?1 and {condition} and ?2 = ?2", sql.table);
        let n: i64 = conn.prepare_cached(&q)?.query_row(params![tenant, horizon.as_micros()], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let held: i64 = conn
        .prepare_cached(
            "select count(distinct record_id) from holds where tenant = ?1 and collection = ?2 and released_at is null",
        )?
        .query_row(params![tenant, collection.name], |r| r.get(0))?;
    Ok(CollectionCounts {
        collection: collection.name.clone(),
        active: count("deleted_at is null and archived_at is null")?,
        archived: count("deleted_at is null and archived_at is not null")?,
        deleted: count("deleted_at is not null")?,
        expiring: count(&format!("deleted_at is not null and purge_at <= ?2 and not {held_clause}"))?,
        held: u64::try_from(held).unwrap_or(0),
    })
}

pub(crate) fn set_paused(conn: &Connection, paused: bool) -> Result<(), StoreError> {
    conn.prepare_cached(
        "insert into meta (key, value) values (?1, ?2) on conflict (key) do update set value = excluded.value",
    )?
    .execute(params![PURGE_PAUSED, if paused { "true" } else { "false" }])?;
    Ok(())
}

pub(crate) fn is_paused(conn: &Connection) -> Result<bool, StoreError> {
    paused(conn)
}

/// The receipt of an erased record, with the steps still pending.
pub(crate) fn erasure_receipt(
    conn: &Connection,
    tenant: &str,
    collection: &str,
    id: &str,
) -> Result<Option<Erasure>, StoreError> {
    type Row = (i64, i64, i64, i64, Option<String>, i64, i64);
    let row: Option<Row> = conn
        .prepare_cached(
            "select erased_at, audit_seq, events, idempotent_responses, counts, versions, files from erasures
             where tenant = ?1 and collection = ?2 and record_id = ?3",
        )?
        .query_row(params![tenant, collection, id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .optional()?;
    let Some((erased_at, audit_seq, events, responses, counts, versions, files)) = row else { return Ok(None) };
    let mut pending: Vec<ErasureStep> = conn
        .prepare_cached("select step from erasure_jobs where tenant = ?1 and collection = ?2 and record_id = ?3")?
        .query_map(params![tenant, collection, id], |r| r.get::<_, String>(0))?
        .filter_map(|s| s.map(|s| ErasureStep::parse(&s)).transpose())
        .collect::<Result<_, _>>()?;
    pending.sort();
    let counts = counts
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or_else(|| BTreeMap::from([(collection.to_string(), 1)]));
    Ok(Some(Erasure {
        collection: collection.to_string(),
        id: id.to_string(),
        erased_at: Timestamp::from_micros(erased_at),
        audit_seq,
        versions: u64::try_from(versions).unwrap_or(0),
        events: u64::try_from(events).unwrap_or(0),
        idempotent_responses: u64::try_from(responses).unwrap_or(0),
        files: u64::try_from(files).unwrap_or(0),
        counts,
        pending,
    }))
}

pub(crate) fn is_erased(conn: &Connection, tenant: &str, collection: &str, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("select 1 from erasures where tenant = ?1 and collection = ?2 and record_id = ?3")?
        .query_row(params![tenant, collection, id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// One collection's part of a trash page.
pub(crate) fn trash(
    conn: &Connection,
    sql: &TableSql,
    collection: &Collection,
    tenant: &str,
    query: &TrashQuery,
    now: Timestamp,
) -> Result<Vec<Record>, StoreError> {
    let mut params = vec![SqlValue::Text(tenant.to_string()), SqlValue::Integer(now.as_micros())];
    let mut clauses = vec!["tenant = ?1".to_string(), "deleted_at is not null".into(), "purge_at > ?2".into()];
    let mut push = |clause: &str, v: SqlValue| {
        params.push(v);
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
    if let Some(after) = &query.after {
        // Newest first over (deleted_at, collection, id); this collection's name is a
        // constant, so the tuple comparison reduces to one of three forms.
        let at = after.deleted_at.as_micros();
        params.push(SqlValue::Integer(at));
        let at_param = params.len();
        match collection.name.as_str().cmp(after.collection.as_str()) {
            std::cmp::Ordering::Less => clauses.push(format!("deleted_at <= ?{at_param}")),
            std::cmp::Ordering::Greater => clauses.push(format!("deleted_at < ?{at_param}")),
            std::cmp::Ordering::Equal => {
                params.push(SqlValue::Text(after.id.clone()));
                clauses.push(format!(
                    "(deleted_at < ?{at_param} or (deleted_at = ?{at_param} and id < ?{}))",
                    params.len()
                ));
            }
        }
    }
    params.push(SqlValue::Integer(i64::from(query.limit)));
    let q = format!(
        "{} where {} order by deleted_at desc, id desc limit +?{}",
        sql.select(),
        clauses.join(" and "),
        params.len()
    );
    let rows = conn
        .prepare_cached(&q)?
        .query_map(params_from_iter(params), |r| records::read_record(collection, r))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
