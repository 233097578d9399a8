//! Retention: legal holds, purge (one record or a batch), erasure, the trash and the
//! purge preview.

use std::collections::{BTreeMap, HashMap};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};
use tombstone_domain::audit::{AuditAction, NewAuditEntry};
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::deletion::RecordRef;
use tombstone_domain::events::{EventType, NewEvent, record_event};
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{Hold, Record};
use tombstone_domain::time::Timestamp;

use super::records::{self, TableSql};
use super::{changes, relations};
use crate::{CollectionCounts, Erasure, ErasureStep, PurgeBatch, PurgeDue, StoreError, TrashQuery};

/// The actor of the purge worker's audit entries.
const PURGE_ACTOR: &str = "system:purge";

/// The reason of the purge worker's audit entries.
const PURGE_REASON: &str = "recovery window elapsed";

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

/// The `hold_id` and `case` members of a hold's or release's audit entry. They are members
/// of their own (SPEC §13) so that `reason` stays exactly as given and each can be
/// filtered and read without parsing a composed text.
#[derive(Default)]
struct HoldMembers {
    hold_id: Option<String>,
    case: Option<String>,
}

fn audit(
    conn: &Connection,
    actor: &Actor,
    action: AuditAction,
    record: &Record,
    reason: Option<String>,
    hold: HoldMembers,
    now: Timestamp,
) -> Result<i64, StoreError> {
    let entry = changes::append_audit(
        conn,
        NewAuditEntry {
            at: now,
            tenant: record.tenant.clone(),
            actor: actor.key_id.clone(),
            action,
            collection: Some(record.collection.clone()),
            record_id: Some(record.id.clone()),
            version: Some(record.version),
            deletion_id: record.deletion.as_ref().map(|d| d.deletion_id.clone()),
            reason,
            request_id: Some(actor.request_id.clone()),
            hold_id: hold.hold_id,
            case: hold.case,
        },
    )?;
    Ok(entry.seq)
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

/// A row the purge worker removes: what its audit entry and event name.
struct Due {
    tenant: String,
    id: String,
    version: i64,
    deletion_id: Option<String>,
}

/// Removes many rows with one statement per 64 of them.
fn remove_many(tx: &Transaction<'_>, sql: &TableSql, rows: &[Due]) -> Result<(), StoreError> {
    for chunk in rows.chunks(GIVE_WAY_EVERY as usize) {
        let pairs: Vec<String> = (0..chunk.len()).map(|i| format!("(?{}, ?{})", 2 * i + 1, 2 * i + 2)).collect();
        let statement = format!("delete from {} where (tenant, id) in (values {})", sql.table, pairs.join(", "));
        let params: Vec<&str> = chunk.iter().flat_map(|r| [r.tenant.as_str(), r.id.as_str()]).collect();
        tx.prepare_cached(&statement)?.execute(rusqlite::params_from_iter(params))?;
    }
    Ok(())
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
    sql: &TableSql,
    collection: &Collection,
    now: Timestamp,
    limit: u32,
    run_id: &str,
    give_way: &dyn Fn() -> bool,
) -> Result<(PurgeBatch, bool), StoreError> {
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
        "select tenant, id, version, deletion_id from {} where deleted_at is not null and purge_at <= ?1 {held} order by purge_at limit ?2",
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
        purge_rows(tx, sql, collection, &due, run_id, now)?;
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

/// Removes rows with set-based statements; each still gets its audit entry and event.
fn purge_rows(
    tx: &Transaction<'_>,
    sql: &TableSql,
    collection: &Collection,
    due: &[Due],
    run_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    remove_many(tx, sql, due)?;
    let mut entries = Vec::with_capacity(due.len());
    let mut events = Vec::with_capacity(due.len());
    for row in due {
        entries.push(NewAuditEntry {
            at: now,
            tenant: row.tenant.clone(),
            actor: PURGE_ACTOR.into(),
            action: AuditAction::Purge,
            collection: Some(collection.name.clone()),
            record_id: Some(row.id.clone()),
            version: Some(row.version),
            deletion_id: row.deletion_id.clone(),
            reason: Some(PURGE_REASON.into()),
            request_id: Some(run_id.into()),
            hold_id: None,
            case: None,
        });
        events.push(NewEvent {
            kind: EventType::Purged,
            tenant: row.tenant.clone(),
            collection: collection.name.clone(),
            record_id: row.id.clone(),
            version: Some(row.version),
            deletion_id: row.deletion_id.clone(),
            occurred_at: now,
            request_id: Some(run_id.into()),
            data: None,
        });
    }
    changes::append_audit_many(tx, entries)?;
    changes::append_events(tx, events)
}

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
        active: count("deleted_at is null")?,
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

/// Erases a record and everything its relations take along (see
/// `tombstone_domain::deletion::plan_erasure`), in one transaction: an active restrict
/// child anywhere → 409 `restrict`, a hold on any of them → 409 `legal-hold`, nothing
/// erased. Each erased record gets its `erase` audit entry, its `record.erased` event, its
/// receipt row and the jobs of the steps that run after the commit (`search`, `wal`).
#[expect(clippy::too_many_arguments, reason = "each argument is one part of the erasure")]
pub(crate) fn erase(
    tx: &Transaction<'_>,
    schema: &Schema,
    tables: &relations::Tables,
    collection: &Collection,
    actor: &Actor,
    id: &str,
    reason: Option<String>,
    now: Timestamp,
) -> Result<Erasure, StoreError> {
    let sql = relations::table(tables, &collection.name)?;
    let record = records::get(tx, sql, collection, &actor.tenant, id)?.ok_or(StoreError::NotFound)?;
    let plan = relations::plan_erasure(tx, schema, tables, &actor.tenant, RecordRef::new(&collection.name, id))?;
    if plan.is_blocked() {
        return Err(StoreError::Restrict { blockers: plan.blockers, total: plan.blockers_total });
    }
    // Every record first: a hold on any of them stops the whole erasure.
    let mut doomed: Vec<(&Collection, Record)> = vec![(collection, record)];
    for r in plan.immediate.iter().skip(1) {
        let c = schema
            .collection(&r.collection)
            .ok_or_else(|| StoreError::Internal(format!("unknown collection {}", r.collection)))?;
        if let Some(child) = records::get(tx, relations::table(tables, &r.collection)?, c, &actor.tenant, &r.id)? {
            doomed.push((c, child));
        }
    }
    if doomed.iter().any(|(_, r)| r.legal_hold) {
        return Err(StoreError::LegalHold);
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (c, _) in &doomed {
        *counts.entry(c.name.clone()).or_insert(0) += 1;
    }
    let mut receipt: Option<Erasure> = None;
    let (mut events, mut responses) = (0, 0);
    for (c, record) in &doomed {
        let one = erase_one(tx, relations::table(tables, &c.name)?, c, actor, record, reason.clone(), now)?;
        events += one.events;
        responses += one.idempotent_responses;
        if receipt.is_none() {
            receipt = Some(one);
        }
    }
    let mut receipt = receipt.ok_or(StoreError::NotFound)?;
    receipt.events = events;
    receipt.idempotent_responses = responses;
    receipt.counts = counts;
    // The root's receipt covers the whole erasure.
    tx.prepare_cached(
        "update erasures set events = ?4, idempotent_responses = ?5, counts = ?6 where tenant = ?1 and collection = ?2 and record_id = ?3",
    )?
    .execute(params![
        actor.tenant,
        collection.name,
        id,
        i64::try_from(receipt.events).unwrap_or(i64::MAX),
        i64::try_from(receipt.idempotent_responses).unwrap_or(i64::MAX),
        serde_json::to_string(&receipt.counts).map_err(|e| StoreError::Internal(e.to_string()))?
    ])?;
    Ok(receipt)
}

/// Erases one record: scrubs its stored events and idempotent responses, removes its row,
/// audits, announces, and leaves its receipt and its after-commit jobs.
fn erase_one(
    tx: &Transaction<'_>,
    sql: &TableSql,
    collection: &Collection,
    actor: &Actor,
    record: &Record,
    reason: Option<String>,
    now: Timestamp,
) -> Result<Erasure, StoreError> {
    let id = record.id.as_str();
    let events = tx
        .prepare_cached(
            "update outbox set data = null where tenant = ?1 and collection = ?2 and record_id = ?3 and data is not null",
        )?
        .execute(params![actor.tenant, collection.name, id])?;
    let responses = tx
        .prepare_cached(
            "update idempotency set body = null, headers = null, state = 'erased' where tenant = ?1 and collection = ?2 and record_id = ?3",
        )?
        .execute(params![actor.tenant, collection.name, id])?;
    records::remove(tx, sql, &actor.tenant, id)?;
    let audit_seq = audit(tx, actor, AuditAction::Erase, record, reason, HoldMembers::default(), now)?;
    let event_seq =
        changes::append_event(tx, record_event(EventType::Erased, collection, record, &actor.request_id, now))?;
    tx.prepare_cached(
        "insert into erasures (tenant, collection, record_id, erased_at, audit_seq, events, idempotent_responses, counts)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         on conflict do update set erased_at = excluded.erased_at, audit_seq = excluded.audit_seq, events = excluded.events,
         idempotent_responses = excluded.idempotent_responses, counts = excluded.counts",
    )?
    .execute(params![
        actor.tenant,
        collection.name,
        id,
        now.as_micros(),
        audit_seq,
        i64::try_from(events).unwrap_or(i64::MAX),
        i64::try_from(responses).unwrap_or(i64::MAX),
        serde_json::json!({ collection.name.as_str(): 1 }).to_string()
    ])?;
    // What is left once this commits: the index's copy (only a searchable collection has
    // one) and the WAL's old page images.
    let mut pending = Vec::new();
    if collection.fields.values().any(|f| f.search) {
        pending.push(ErasureStep::Search);
    }
    pending.push(ErasureStep::Wal);
    for step in &pending {
        tx.prepare_cached(
            "insert into erasure_jobs (tenant, collection, record_id, step, event_seq, created_at) values (?1, ?2, ?3, ?4, ?5, ?6)
             on conflict do update set event_seq = excluded.event_seq, created_at = excluded.created_at",
        )?
        .execute(params![actor.tenant, collection.name, id, step.as_str(), event_seq, now.as_micros()])?;
    }
    Ok(Erasure {
        collection: collection.name.clone(),
        id: id.to_string(),
        erased_at: now,
        audit_seq,
        versions: 0,
        events: events as u64,
        idempotent_responses: responses as u64,
        counts: BTreeMap::from([(collection.name.clone(), 1)]),
        pending,
    })
}

/// The receipt of an erased record, with the steps still pending.
pub(crate) fn erasure_receipt(
    conn: &Connection,
    tenant: &str,
    collection: &str,
    id: &str,
) -> Result<Option<Erasure>, StoreError> {
    type Row = (i64, i64, i64, i64, Option<String>);
    let row: Option<Row> = conn
        .prepare_cached(
            "select erased_at, audit_seq, events, idempotent_responses, counts from erasures
             where tenant = ?1 and collection = ?2 and record_id = ?3",
        )?
        .query_row(params![tenant, collection, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    let Some((erased_at, audit_seq, events, responses, counts)) = row else { return Ok(None) };
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
        versions: 0,
        events: u64::try_from(events).unwrap_or(0),
        idempotent_responses: u64::try_from(responses).unwrap_or(0),
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
        "{} where {} order by deleted_at desc, id desc limit ?{}",
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
