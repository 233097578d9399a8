//! The audit log and the outbox: appended inside the transaction of the change they
//! record, so a change, its audit entry and its event commit together or not at all.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tombstone_domain::audit::{AuditEntry, GENESIS_HASH, NewAuditEntry, seal};
use tombstone_domain::events::{Event, NewEvent, new_event_id};
use tombstone_domain::time::Timestamp;

use crate::{AuditQuery, EventQuery, StoreError};

/// Appends an audit entry after the current head and moves the head.
pub(crate) fn append_audit(conn: &Connection, entry: NewAuditEntry) -> Result<AuditEntry, StoreError> {
    // The head is read once per transaction and kept on the writer thread; it is written
    // back once, just before the commit (`flush_audit_head`).
    let head = AUDIT_HEAD.with(|h| h.borrow().clone());
    let (last_seq, prev_hash) = match head {
        Some(head) => head,
        None => conn
            .prepare_cached("select seq, hash from audit_head where id = 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, GENESIS_HASH.to_string())),
    };
    let sealed = seal(entry, last_seq + 1, &prev_hash);
    conn.prepare_cached(
        "insert into audit (seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        sealed.seq,
        sealed.at.as_micros(),
        sealed.tenant,
        sealed.actor,
        sealed.action,
        sealed.collection,
        sealed.record_id,
        sealed.version,
        sealed.deletion_id,
        sealed.reason,
        sealed.request_id,
        sealed.prev_hash,
        sealed.hash,
    ])?;
    AUDIT_HEAD.with(|h| *h.borrow_mut() = Some((sealed.seq, sealed.hash.clone())));
    Ok(sealed)
}

std::thread_local! {
    /// The audit chain's head as moved by the running transaction (`None`: untouched).
    static AUDIT_HEAD: std::cell::RefCell<Option<(i64, String)>> = const { std::cell::RefCell::new(None) };
}

/// Forgets the in-transaction audit head (at the start and end of every write).
pub(crate) fn reset_audit_head() {
    AUDIT_HEAD.with(|h| *h.borrow_mut() = None);
}

/// Writes the moved audit head, inside the transaction, right before it commits.
pub(crate) fn flush_audit_head(conn: &Connection) -> Result<(), StoreError> {
    if let Some((seq, hash)) = AUDIT_HEAD.with(|h| h.borrow().clone()) {
        conn.prepare_cached(
            "insert into audit_head (id, seq, hash) values (1, ?1, ?2) on conflict (id) do update set seq = excluded.seq, hash = excluded.hash",
        )?
        .execute(params![seq, hash])?;
    }
    Ok(())
}

std::thread_local! {
    /// Records changed by the transaction running on this (the writer) thread: every
    /// change writes an event, so this is where the cache learns what to invalidate.
    pub(crate) static CHANGED: std::cell::RefCell<Vec<crate::cache::CacheKey>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes a change to a record that writes no event (a hold), so the cache forgets it.
pub(crate) fn touched(tenant: &str, collection: &str, id: &str) {
    CHANGED.with(|c| c.borrow_mut().push((tenant.to_string(), collection.to_string(), id.to_string())));
}

/// Appends an event to the outbox.
pub(crate) fn append_event(conn: &Connection, event: NewEvent) -> Result<i64, StoreError> {
    CHANGED.with(|c| c.borrow_mut().push((event.tenant.clone(), event.collection.clone(), event.record_id.clone())));
    let data = event.data.as_ref().map(ToString::to_string);
    conn.prepare_cached(
        "insert into outbox (id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        new_event_id(),
        event.kind.as_str(),
        event.tenant,
        event.collection,
        event.record_id,
        event.version,
        event.deletion_id,
        event.occurred_at.as_micros(),
        event.request_id,
        data,
    ])?;
    Ok(conn.last_insert_rowid())
}

const AUDIT_COLUMNS: &str =
    "seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash";

pub(crate) fn read_audit(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: row.get(0)?,
        at: Timestamp::from_micros(row.get(1)?),
        tenant: row.get(2)?,
        actor: row.get(3)?,
        action: row.get(4)?,
        collection: row.get(5)?,
        record_id: row.get(6)?,
        version: row.get(7)?,
        deletion_id: row.get(8)?,
        reason: row.get(9)?,
        request_id: row.get(10)?,
        prev_hash: row.get(11)?,
        hash: row.get(12)?,
    })
}

/// Entries of a tenant, oldest first, after `query.after`.
pub(crate) fn list_audit(conn: &Connection, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
    let mut params = vec![SqlValue::Text(tenant.to_string()), SqlValue::Integer(query.after.unwrap_or(0))];
    let mut clauses = vec!["tenant = ?1".to_string(), "seq > ?2".to_string()];
    let mut push = |clause: &str, v: SqlValue| {
        params.push(v);
        clauses.push(format!("{clause} ?{}", params.len()));
    };
    if let Some(c) = &query.collection {
        push("collection =", SqlValue::Text(c.clone()));
    }
    if let Some(r) = &query.record_id {
        push("record_id =", SqlValue::Text(r.clone()));
    }
    if let Some(a) = &query.action {
        push("action =", SqlValue::Text(a.clone()));
    }
    if let Some(a) = &query.actor {
        push("actor =", SqlValue::Text(a.clone()));
    }
    if let Some(t) = query.since {
        push("at >=", SqlValue::Integer(t.as_micros()));
    }
    params.push(SqlValue::Integer(i64::from(query.limit)));
    let sql = format!(
        "select {AUDIT_COLUMNS} from audit where {} order by seq limit ?{}",
        clauses.join(" and "),
        params.len()
    );
    let rows = conn.prepare_cached(&sql)?.query_map(params_from_iter(params), read_audit)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Every entry in seq order, handed to `each`; then the recorded head.
pub(crate) fn walk_audit(
    conn: &Connection,
    mut each: impl FnMut(&AuditEntry) -> bool,
) -> Result<Option<(i64, String)>, StoreError> {
    let mut stmt = conn.prepare(&format!("select {AUDIT_COLUMNS} from audit order by seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        if !each(&read_audit(row)?) {
            break;
        }
    }
    Ok(conn
        .query_row("select seq, hash from audit_head where id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

fn read_event(row: &Row<'_>) -> rusqlite::Result<Event> {
    let data: Option<String> = row.get(10)?;
    Ok(Event {
        seq: row.get(0)?,
        id: row.get(1)?,
        kind: row.get(2)?,
        tenant: row.get(3)?,
        collection: row.get(4)?,
        record_id: row.get(5)?,
        version: row.get(6)?,
        deletion_id: row.get(7)?,
        occurred_at: Timestamp::from_micros(row.get(8)?),
        request_id: row.get(9)?,
        data: data.and_then(|d| serde_json::from_str(&d).ok()),
    })
}

/// Events of a tenant after `query.after`, in seq order.
pub(crate) fn list_events(conn: &Connection, tenant: &str, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let mut params = vec![SqlValue::Text(tenant.to_string()), SqlValue::Integer(query.after)];
    let mut clauses = vec!["tenant = ?1".to_string(), "seq > ?2".to_string()];
    if let Some(c) = &query.collection {
        params.push(SqlValue::Text(c.clone()));
        clauses.push(format!("collection = ?{}", params.len()));
    }
    if !query.types.is_empty() {
        let mut marks = Vec::new();
        for t in &query.types {
            params.push(SqlValue::Text(t.clone()));
            marks.push(format!("?{}", params.len()));
        }
        clauses.push(format!("type in ({})", marks.join(", ")));
    }
    params.push(SqlValue::Integer(i64::from(query.limit)));
    let sql = format!(
        "select seq, id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data
         from outbox where {} order by seq limit ?{}",
        clauses.join(" and "),
        params.len()
    );
    let rows = conn.prepare_cached(&sql)?.query_map(params_from_iter(params), read_event)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The newest event seq (0 when there is none).
pub(crate) fn last_event_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("select coalesce(max(seq), 0) from outbox", [], |r| r.get(0))?)
}

/// Records changed after `after` (any tenant), oldest first: what other processes changed.
pub(crate) fn changed_since(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<(i64, crate::cache::CacheKey, String)>, StoreError> {
    let rows = conn
        .prepare_cached(
            "select seq, tenant, collection, record_id, type from outbox where seq > ?1 order by seq limit ?2",
        )?
        .query_map(params![after, limit], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?), r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
