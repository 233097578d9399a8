//! The audit log and the outbox on PostgreSQL: appended inside the transaction of the
//! change they record, and read back in commit order.
//!
//! Both appends lock the one `audit_head` row (`SELECT … FOR UPDATE`) first and hold it to
//! the commit: concurrent writers queue there, so each seals its entries after the head the
//! previous one committed (the chain never forks), and each draws its outbox seqs after the
//! previous one committed (seq order is commit order: a follower reading `seq > last` never
//! passes an event that commits later). Callers take their record row locks before
//! appending, so the head is always the last lock a transaction takes.

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::Row;
use tombstone_domain::audit::{AuditEntry, NewAuditEntry, seal};
use tombstone_domain::events::{Event, NewEvent, new_event_id};
use tombstone_domain::time::Timestamp;

use super::records::{Param, refs};
use crate::{AuditQuery, EventQuery, StoreError};

const LOCK_HEAD: &str = "select seq, hash from audit_head where id = 1 for update";

const AUDIT_INSERT: &str = "insert into audit (seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash, hold_id, case_name)
select * from unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[])";

const OUTBOX_INSERT: &str = "insert into outbox (id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data)
select id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data
from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::json[])
    with ordinality as e(id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data, n)
order by n
returning seq";

/// Seals `entries` after the head and appends them, moving the head: one round trip for
/// the lock, one for the insert and the head's update (pipelined).
pub(crate) async fn append_audit(tx: &Transaction<'_>, entries: Vec<NewAuditEntry>) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let lock = tx.prepare_cached(LOCK_HEAD).await?;
    let head = tx.query_one(&lock, &[]).await?;
    let (mut seq, mut prev): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
    let sealed: Vec<AuditEntry> = entries
        .into_iter()
        .map(|entry| {
            seq += 1;
            let e = seal(entry, seq, &prev);
            prev.clone_from(&e.hash);
            e
        })
        .collect();
    let column = |f: fn(&AuditEntry) -> Option<String>| sealed.iter().map(f).collect::<Vec<_>>();
    let seqs: Vec<i64> = sealed.iter().map(|e| e.seq).collect();
    let ats: Vec<i64> = sealed.iter().map(|e| e.at.as_micros()).collect();
    let tenants = column(|e| Some(e.tenant.clone()));
    let actors = column(|e| Some(e.actor.clone()));
    let actions = column(|e| Some(e.action.clone()));
    let collections = column(|e| e.collection.clone());
    let record_ids = column(|e| e.record_id.clone());
    let versions: Vec<Option<i64>> = sealed.iter().map(|e| e.version).collect();
    let deletion_ids = column(|e| e.deletion_id.clone());
    let reasons = column(|e| e.reason.clone());
    let request_ids = column(|e| e.request_id.clone());
    let prev_hashes = column(|e| Some(e.prev_hash.clone()));
    let hashes = column(|e| Some(e.hash.clone()));
    let hold_ids = column(|e| e.hold_id.clone());
    let cases = column(|e| e.case.clone());
    let insert = tx.prepare_cached(AUDIT_INSERT).await?;
    let move_head = tx.prepare_cached("update audit_head set seq = $1, hash = $2 where id = 1").await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 15] = [
        &seqs,
        &ats,
        &tenants,
        &actors,
        &actions,
        &collections,
        &record_ids,
        &versions,
        &deletion_ids,
        &reasons,
        &request_ids,
        &prev_hashes,
        &hashes,
        &hold_ids,
        &cases,
    ];
    let head: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&seq, &prev];
    let (inserted, moved) = tokio::join!(tx.execute(&insert, &params), tx.execute(&move_head, &head));
    inserted?;
    moved?;
    Ok(())
}

/// Appends events in order under the head's lock; returns the first and last seq
/// (`(0, 0)` for no events).
pub(crate) async fn append_events(tx: &Transaction<'_>, events: &[NewEvent]) -> Result<(i64, i64), StoreError> {
    if events.is_empty() {
        return Ok((0, 0));
    }
    let text = |f: fn(&NewEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Option<String>> = events.iter().map(|_| Some(new_event_id())).collect();
    let kinds = text(|e| Some(e.kind.as_str().to_string()));
    let tenants = text(|e| Some(e.tenant.clone()));
    let collections = text(|e| Some(e.collection.clone()));
    let record_ids = text(|e| Some(e.record_id.clone()));
    let versions: Vec<Option<i64>> = events.iter().map(|e| e.version).collect();
    let deletion_ids = text(|e| e.deletion_id.clone());
    let occurred: Vec<i64> = events.iter().map(|e| e.occurred_at.as_micros()).collect();
    let request_ids = text(|e| e.request_id.clone());
    let data: Vec<Option<serde_json::Value>> = events.iter().map(|e| e.data.clone()).collect();
    let lock = tx.prepare_cached(LOCK_HEAD).await?;
    let insert = tx.prepare_cached(OUTBOX_INSERT).await?;
    // Pipelined: the server runs the lock before the insert draws its seqs.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] =
        [&ids, &kinds, &tenants, &collections, &record_ids, &versions, &deletion_ids, &occurred, &request_ids, &data];
    let (locked, rows) = tokio::join!(tx.query(&lock, &[]), tx.query(&insert, &params));
    locked?;
    let seqs = rows?.iter().map(|r| r.try_get::<_, i64>(0)).collect::<Result<Vec<_>, _>>()?;
    let first = seqs.iter().copied().min().unwrap_or(0);
    let last = seqs.iter().copied().max().unwrap_or(0);
    Ok((first, last))
}

const AUDIT_COLUMNS: &str = "seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash, hold_id, case_name";

pub(crate) fn read_audit(row: &Row) -> Result<AuditEntry, tokio_postgres::Error> {
    Ok(AuditEntry {
        seq: row.try_get(0)?,
        at: Timestamp::from_micros(row.try_get(1)?),
        tenant: row.try_get(2)?,
        actor: row.try_get(3)?,
        action: row.try_get(4)?,
        collection: row.try_get(5)?,
        record_id: row.try_get(6)?,
        version: row.try_get(7)?,
        deletion_id: row.try_get(8)?,
        reason: row.try_get(9)?,
        request_id: row.try_get(10)?,
        prev_hash: row.try_get(11)?,
        hash: row.try_get(12)?,
        hold_id: row.try_get(13)?,
        case: row.try_get(14)?,
    })
}

/// Entries of a tenant, oldest first, after `query.after`.
pub(crate) async fn list_audit(
    client: &Client,
    tenant: &str,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut params = vec![Param::Text(Some(tenant.to_string())), Param::Int(Some(query.after.unwrap_or(0)))];
    let mut clauses = vec!["tenant = $1".to_string(), "seq > $2".to_string()];
    let mut push = |clause: &str, v: Param| {
        params.push(v);
        clauses.push(format!("{clause} ${}", params.len()));
    };
    if let Some(c) = &query.collection {
        push("collection =", Param::Text(Some(c.clone())));
    }
    if let Some(r) = &query.record_id {
        push("record_id =", Param::Text(Some(r.clone())));
    }
    if let Some(a) = &query.action {
        push("action =", Param::Text(Some(a.clone())));
    }
    if let Some(a) = &query.actor {
        push("actor =", Param::Text(Some(a.clone())));
    }
    if let Some(t) = query.since {
        push("at >=", Param::Int(Some(t.as_micros())));
    }
    params.push(Param::Int(Some(i64::from(query.limit))));
    let sql = format!(
        "select {AUDIT_COLUMNS} from audit where {} order by seq limit ${}",
        clauses.join(" and "),
        params.len()
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &refs(&params)).await?;
    Ok(rows.iter().map(read_audit).collect::<Result<_, _>>()?)
}

/// Entries read per round trip while walking the whole chain.
const WALK_PAGE: i64 = 5000;

/// Every entry in seq order, handed to `each` (which may stop the walk); then the recorded
/// head. The entries and the head come from one snapshot (a read-only repeatable-read
/// transaction): read apart, a commit between them would move the head past the last
/// entry read and look like a truncated log.
pub(crate) async fn walk_audit(
    client: &mut Client,
    mut each: impl FnMut(&AuditEntry) -> bool,
) -> Result<Option<(i64, String)>, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let page =
        tx.prepare_cached(&format!("select {AUDIT_COLUMNS} from audit where seq > $1 order by seq limit $2")).await?;
    let mut after = 0_i64;
    'walk: loop {
        let rows = tx.query(&page, &[&after, &WALK_PAGE]).await?;
        for row in &rows {
            let entry = read_audit(row)?;
            after = entry.seq;
            if !each(&entry) {
                break 'walk;
            }
        }
        if rows.len() < WALK_PAGE as usize {
            break;
        }
    }
    let head = tx.query_opt("select seq, hash from audit_head where id = 1", &[]).await?;
    let head = head.map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?))).transpose()?;
    tx.commit().await?;
    Ok(head)
}

fn read_event(row: &Row) -> Result<Event, tokio_postgres::Error> {
    Ok(Event {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        kind: row.try_get(2)?,
        tenant: row.try_get(3)?,
        collection: row.try_get(4)?,
        record_id: row.try_get(5)?,
        version: row.try_get(6)?,
        deletion_id: row.try_get(7)?,
        occurred_at: Timestamp::from_micros(row.try_get(8)?),
        request_id: row.try_get(9)?,
        data: row.try_get(10)?,
    })
}

/// Events after `query.after` (of one tenant, or of all), in seq order — commit order,
/// since seqs are drawn under the head's lock (see the module's documentation).
pub(crate) async fn select_events(
    client: &Client,
    tenant: Option<&str>,
    query: &EventQuery,
) -> Result<Vec<Event>, StoreError> {
    let mut params = vec![Param::Int(Some(query.after))];
    let mut clauses = vec!["seq > $1".to_string()];
    if let Some(tenant) = tenant {
        params.push(Param::Text(Some(tenant.to_string())));
        clauses.push(format!("tenant = ${}", params.len()));
    }
    if let Some(c) = &query.collection {
        params.push(Param::Text(Some(c.clone())));
        clauses.push(format!("collection = ${}", params.len()));
    }
    if !query.types.is_empty() {
        params.push(Param::TextArray(query.types.clone()));
        clauses.push(format!("type = any(${})", params.len()));
    }
    params.push(Param::Int(Some(i64::from(query.limit))));
    let sql = format!(
        "select seq, id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data
         from outbox where {} order by seq limit ${}",
        clauses.join(" and "),
        params.len()
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &refs(&params)).await?;
    Ok(rows.iter().map(read_event).collect::<Result<_, _>>()?)
}

/// The newest event seq (0 when there is none).
pub(crate) async fn last_event_seq(client: &Client) -> Result<i64, StoreError> {
    Ok(client.query_one("select coalesce(max(seq), 0)::bigint from outbox", &[]).await?.try_get(0)?)
}
