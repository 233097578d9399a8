//! The audit log and the outbox: appended inside the transaction of the change they
//! record, so a change, its audit entry and its event commit together or not at all.

use std::sync::LazyLock;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tombstone_domain::audit::{AuditEntry, GENESIS_HASH, NewAuditEntry, seal};
use tombstone_domain::events::{Event, NewEvent, new_event_id};
use tombstone_domain::time::Timestamp;

use crate::{AuditQuery, EventQuery, StoreError};

/// The chain's head as the running transaction sees it.
fn audit_head(conn: &Connection) -> Result<(i64, String), StoreError> {
    // The head is read once per transaction and kept on the writer thread; it is written
    // back once, just before the commit (`flush_audit_head`).
    if let Some(head) = AUDIT_HEAD.with(|h| h.borrow().clone()) {
        return Ok(head);
    }
    Ok(conn
        .prepare_cached("select seq, hash from audit_head where id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, GENESIS_HASH.to_string())))
}

/// Rows per multi-row insert of [`append_audit_many`] and [`append_events`]: one
/// statement's overhead spread over many rows.
const ROWS_PER_INSERT: usize = 64;

/// The columns of an audit row, in insert order.
const AUDIT_INSERT: &str = "insert into audit (seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash, hold_id, case_name) values ";

/// How many values an audit row binds.
const AUDIT_VALUES: usize = 15;

/// The columns of an outbox row, in insert order.
const OUTBOX_INSERT: &str = "insert into outbox (id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data) values ";

/// `insert ... values (?, ?), (?, ?)` for `rows` rows of `columns` values.
fn multi_row(insert: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!("{insert}{}", vec![row; rows].join(", "))
}

/// The audit inserts of one row and of [`ROWS_PER_INSERT`] rows, built once.
static AUDIT_ONE: LazyLock<String> = LazyLock::new(|| multi_row(AUDIT_INSERT, AUDIT_VALUES, 1));
static AUDIT_MANY: LazyLock<String> = LazyLock::new(|| multi_row(AUDIT_INSERT, AUDIT_VALUES, ROWS_PER_INSERT));
/// The outbox inserts of one row and of [`ROWS_PER_INSERT`] rows, built once.
static OUTBOX_ONE: LazyLock<String> = LazyLock::new(|| multi_row(OUTBOX_INSERT, 10, 1));
static OUTBOX_MANY: LazyLock<String> = LazyLock::new(|| multi_row(OUTBOX_INSERT, 10, ROWS_PER_INSERT));

fn bind_audit(stmt: &mut rusqlite::CachedStatement<'_>, at: usize, e: &AuditEntry) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(at + 1, e.seq)?;
    stmt.raw_bind_parameter(at + 2, e.at.as_micros())?;
    stmt.raw_bind_parameter(at + 3, &e.tenant)?;
    stmt.raw_bind_parameter(at + 4, &e.actor)?;
    stmt.raw_bind_parameter(at + 5, &e.action)?;
    stmt.raw_bind_parameter(at + 6, &e.collection)?;
    stmt.raw_bind_parameter(at + 7, &e.record_id)?;
    stmt.raw_bind_parameter(at + 8, e.version)?;
    stmt.raw_bind_parameter(at + 9, &e.deletion_id)?;
    stmt.raw_bind_parameter(at + 10, &e.reason)?;
    stmt.raw_bind_parameter(at + 11, &e.request_id)?;
    stmt.raw_bind_parameter(at + 12, &e.prev_hash)?;
    stmt.raw_bind_parameter(at + 13, &e.hash)?;
    stmt.raw_bind_parameter(at + 14, &e.hold_id)?;
    stmt.raw_bind_parameter(at + 15, &e.case)
}

/// Appends entries in order, sealed one after the other as [`append_audit`] would, with
/// multi-row inserts.
/// Returns the seq of the last entry (the head's, when there are none).
pub(crate) fn append_audit_many(conn: &Connection, entries: Vec<NewAuditEntry>) -> Result<i64, StoreError> {
    let (mut seq, mut prev) = audit_head(conn)?;
    let sealed: Vec<AuditEntry> = entries
        .into_iter()
        .map(|entry| {
            seq += 1;
            let e = seal(entry, seq, &prev);
            prev.clone_from(&e.hash);
            e
        })
        .collect();
    let mut chunks = sealed.chunks_exact(ROWS_PER_INSERT);
    for chunk in chunks.by_ref() {
        let mut stmt = conn.prepare_cached(&AUDIT_MANY)?;
        for (i, e) in chunk.iter().enumerate() {
            bind_audit(&mut stmt, i * AUDIT_VALUES, e)?;
        }
        stmt.raw_execute()?;
    }
    let mut stmt = conn.prepare_cached(&AUDIT_ONE)?;
    for e in chunks.remainder() {
        bind_audit(&mut stmt, 0, e)?;
        stmt.raw_execute()?;
    }
    if let Some(last) = sealed.last() {
        AUDIT_HEAD.with(|h| *h.borrow_mut() = Some((last.seq, last.hash.clone())));
    }
    Ok(seq)
}

std::thread_local! {
    /// The audit chain's head as moved by the running transaction (`None`: untouched).
    static AUDIT_HEAD: std::cell::RefCell<Option<(i64, String)>> = const { std::cell::RefCell::new(None) };
}

/// Forgets the in-transaction audit head (at the start and end of every write).
pub(crate) fn reset_audit_head() {
    AUDIT_HEAD.with(|h| *h.borrow_mut() = None);
}

/// The in-transaction audit head, to put back if the write about to run is rolled back
/// to its savepoint (group commit).
pub(crate) fn audit_head_mark() -> Option<(i64, String)> {
    AUDIT_HEAD.with(|h| h.borrow().clone())
}

/// Puts back a head taken by [`audit_head_mark`].
pub(crate) fn restore_audit_head(mark: Option<(i64, String)>) {
    AUDIT_HEAD.with(|h| *h.borrow_mut() = mark);
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

std::thread_local! {
    /// The first and last outbox seq written by the running transaction on this thread.
    pub(crate) static WRITTEN: std::cell::Cell<Option<(i64, i64)>> = const { std::cell::Cell::new(None) };
}

/// Notes that the running transaction wrote outbox rows `first..=last`.
fn wrote(first: i64, last: i64) {
    WRITTEN.with(|w| {
        w.set(Some(match w.get() {
            Some((a, b)) => (a.min(first), b.max(last)),
            None => (first, last),
        }));
    });
}

/// An event as bound into an insert (its `data` already serialized).
struct EventRow {
    id: String,
    data: Option<String>,
    event: NewEvent,
}

impl EventRow {
    fn new(event: NewEvent) -> Self {
        CHANGED.with(|c| {
            c.borrow_mut().push((event.tenant.clone(), event.collection.clone(), event.record_id.clone()));
        });
        Self { id: new_event_id(), data: event.data.as_ref().map(ToString::to_string), event }
    }

    fn bind(&self, stmt: &mut rusqlite::CachedStatement<'_>, at: usize) -> rusqlite::Result<()> {
        let e = &self.event;
        stmt.raw_bind_parameter(at + 1, &self.id)?;
        stmt.raw_bind_parameter(at + 2, e.kind.as_str())?;
        stmt.raw_bind_parameter(at + 3, &e.tenant)?;
        stmt.raw_bind_parameter(at + 4, &e.collection)?;
        stmt.raw_bind_parameter(at + 5, &e.record_id)?;
        stmt.raw_bind_parameter(at + 6, e.version)?;
        stmt.raw_bind_parameter(at + 7, &e.deletion_id)?;
        stmt.raw_bind_parameter(at + 8, e.occurred_at.as_micros())?;
        stmt.raw_bind_parameter(at + 9, &e.request_id)?;
        stmt.raw_bind_parameter(at + 10, &self.data)
    }
}

/// Appends an event to the outbox; returns its seq.
pub(crate) fn append_event(conn: &Connection, event: NewEvent) -> Result<i64, StoreError> {
    let row = EventRow::new(event);
    let mut stmt = conn.prepare_cached(&OUTBOX_ONE)?;
    row.bind(&mut stmt, 0)?;
    stmt.raw_execute()?;
    let seq = conn.last_insert_rowid();
    wrote(seq, seq);
    Ok(seq)
}

/// Appends events in order, with multi-row inserts; returns the seq of the last one (0 for
/// none).
pub(crate) fn append_events(conn: &Connection, events: Vec<NewEvent>) -> Result<i64, StoreError> {
    let rows: Vec<EventRow> = events.into_iter().map(EventRow::new).collect();
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    for chunk in chunks.by_ref() {
        let mut stmt = conn.prepare_cached(&OUTBOX_MANY)?;
        for (i, row) in chunk.iter().enumerate() {
            row.bind(&mut stmt, i * 10)?;
        }
        stmt.raw_execute()?;
        // One statement's rows take consecutive seqs: the writer holds the write lock.
        let last = conn.last_insert_rowid();
        wrote(last - ROWS_PER_INSERT as i64 + 1, last);
    }
    let mut stmt = conn.prepare_cached(&OUTBOX_ONE)?;
    for row in chunks.remainder() {
        row.bind(&mut stmt, 0)?;
        stmt.raw_execute()?;
        let seq = conn.last_insert_rowid();
        wrote(seq, seq);
    }
    Ok(WRITTEN.with(std::cell::Cell::get).map_or(0, |(_, last)| last))
}

const AUDIT_COLUMNS: &str = "seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash, hold_id, case_name";

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
        hold_id: row.get(13)?,
        case: row.get(14)?,
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
        "select {AUDIT_COLUMNS} from audit where {} order by seq limit +?{}",
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
    // The entries and the head from one snapshot: read in two, a server committing between
    // them moved the head past the last entry read, and a verify beside a busy server
    // reported a truncated log.
    let snapshot = conn.unchecked_transaction()?;
    {
        let mut stmt = snapshot.prepare(&format!("select {AUDIT_COLUMNS} from audit order by seq"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            if !each(&read_audit(row)?) {
                break;
            }
        }
    }
    Ok(snapshot
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
    select_events(conn, Some(tenant), query)
}

/// Events of every tenant, in commit order: the live hub's feed.
pub(crate) fn list_all_events(conn: &Connection, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
    select_events(conn, None, query)
}

fn select_events(conn: &Connection, tenant: Option<&str>, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let mut params = vec![SqlValue::Integer(query.after)];
    let mut clauses = vec!["seq > ?1".to_string()];
    if let Some(tenant) = tenant {
        params.push(SqlValue::Text(tenant.to_string()));
        clauses.push(format!("tenant = ?{}", params.len()));
    }
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
         from outbox where {} order by seq limit +?{}",
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

/// Records changed after `after` and before `before` (any tenant), oldest first.
pub(crate) fn changed_between(
    conn: &Connection,
    after: i64,
    before: i64,
    limit: u32,
) -> Result<Vec<(i64, crate::cache::CacheKey, String)>, StoreError> {
    let rows = conn
        .prepare_cached(
            "select seq, tenant, collection, record_id, type from outbox where seq > ?1 and seq < ?2 order by seq limit +?3",
        )?
        .query_map(params![after, before, limit], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?), r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Records changed after `after` (any tenant), oldest first.
pub(crate) fn changed_since(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<(i64, crate::cache::CacheKey, String)>, StoreError> {
    changed_between(conn, after, i64::MAX, limit)
}
