//! The audit log and the outbox on PostgreSQL: appended inside the transaction of the
//! change they record, and read back in commit order.
//!
//! Appending locks the one `audit_head` row (`SELECT … FOR UPDATE`) first and holds it to
//! the commit: concurrent writers queue there, so each seals its entries after the head the
//! previous one committed (the chain never forks), and each draws its outbox seqs after the
//! previous one committed (seq order is commit order: a follower reading `seq > last` never
//! passes an event that commits later). A transaction appends its entries and events
//! together, at its end, after its record row locks: the head is the last lock it takes
//! and is held for one round trip and the commit.

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
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

/// The audit rows of sealed entries, as the arrays [`AUDIT_INSERT`] binds.
struct AuditRows {
    seqs: Vec<i64>,
    ats: Vec<i64>,
    text: [Vec<Option<String>>; 12],
    versions: Vec<Option<i64>>,
}

impl AuditRows {
    fn new(sealed: &[AuditEntry]) -> Self {
        let column = |f: fn(&AuditEntry) -> Option<String>| sealed.iter().map(f).collect::<Vec<_>>();
        Self {
            seqs: sealed.iter().map(|e| e.seq).collect(),
            ats: sealed.iter().map(|e| e.at.as_micros()).collect(),
            text: [
                column(|e| Some(e.tenant.clone())),
                column(|e| Some(e.actor.clone())),
                column(|e| Some(e.action.clone())),
                column(|e| e.collection.clone()),
                column(|e| e.record_id.clone()),
                column(|e| e.deletion_id.clone()),
                column(|e| e.reason.clone()),
                column(|e| e.request_id.clone()),
                column(|e| Some(e.prev_hash.clone())),
                column(|e| Some(e.hash.clone())),
                column(|e| e.hold_id.clone()),
                column(|e| e.case.clone()),
            ],
            versions: sealed.iter().map(|e| e.version).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        let t = &self.text;
        [
            &self.seqs,
            &self.ats,
            &t[0],
            &t[1],
            &t[2],
            &t[3],
            &t[4],
            &self.versions,
            &t[5],
            &t[6],
            &t[7],
            &t[8],
            &t[9],
            &t[10],
            &t[11],
        ]
    }
}

/// The outbox rows of events, as the arrays [`OUTBOX_INSERT`] binds.
struct OutboxRows {
    text: [Vec<Option<String>>; 7],
    versions: Vec<Option<i64>>,
    occurred: Vec<i64>,
    data: Vec<Option<serde_json::Value>>,
}

impl OutboxRows {
    fn new(events: &[NewEvent]) -> Self {
        let column = |f: fn(&NewEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
        Self {
            text: [
                events.iter().map(|_| Some(new_event_id())).collect(),
                column(|e| Some(e.kind.as_str().to_string())),
                column(|e| Some(e.tenant.clone())),
                column(|e| Some(e.collection.clone())),
                column(|e| Some(e.record_id.clone())),
                column(|e| e.deletion_id.clone()),
                column(|e| e.request_id.clone()),
            ],
            versions: events.iter().map(|e| e.version).collect(),
            occurred: events.iter().map(|e| e.occurred_at.as_micros()).collect(),
            data: events.iter().map(|e| e.data.clone()).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        let t = &self.text;
        [&t[0], &t[1], &t[2], &t[3], &t[4], &self.versions, &t[5], &self.occurred, &t[6], &self.data]
    }
}

fn read_head(row: &Row) -> Result<(i64, String), tokio_postgres::Error> {
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Appends audit entries (sealed after the head) and events, in one round trip once the
/// transaction holds the head's lock; returns the events' first and last seq (`(0, 0)`
/// for none).
///
/// `head` is the chain's head as this transaction holds it (`None`: not locked yet). The
/// lock is taken here: alone first when there are entries to seal (their hashes need the
/// head), pipelined with the outbox insert when there are only events (the server runs
/// the lock before the insert draws its seqs). Afterwards `head` is the new head.
pub(crate) async fn append(
    tx: &Transaction<'_>,
    head: &mut Option<(i64, String)>,
    entries: Vec<NewAuditEntry>,
    events: &[NewEvent],
) -> Result<(i64, i64), StoreError> {
    if entries.is_empty() && events.is_empty() {
        return Ok((0, 0));
    }
    let lock = tx.prepare_cached(LOCK_HEAD).await?;
    let insert_events = tx.prepare_cached(OUTBOX_INSERT).await?;
    let outbox = OutboxRows::new(events);
    let outbox_params = outbox.params();
    if head.is_none() && entries.is_empty() {
        let (locked, rows) = tokio::join!(tx.query_one(&lock, &[]), tx.query(&insert_events, &outbox_params));
        *head = Some(read_head(&locked?)?);
        return seq_range(&rows?);
    }
    let (mut seq, mut prev) = match head.take() {
        Some(head) => head,
        None => read_head(&tx.query_one(&lock, &[]).await?)?,
    };
    let sealed: Vec<AuditEntry> = entries
        .into_iter()
        .map(|entry| {
            seq += 1;
            let e = seal(entry, seq, &prev);
            prev.clone_from(&e.hash);
            e
        })
        .collect();
    let audit = AuditRows::new(&sealed);
    let audit_params = audit.params();
    let insert_audit = tx.prepare_cached(AUDIT_INSERT).await?;
    let move_head = tx.prepare_cached("update audit_head set seq = $1, hash = $2 where id = 1").await?;
    let head_params: [&(dyn ToSql + Sync); 2] = [&seq, &prev];
    let audit_written = async {
        if sealed.is_empty() {
            return Ok(());
        }
        let (inserted, moved) =
            tokio::join!(tx.execute(&insert_audit, &audit_params), tx.execute(&move_head, &head_params));
        inserted?;
        moved?;
        Ok::<_, tokio_postgres::Error>(())
    };
    let events_written =
        async { if events.is_empty() { Ok(Vec::new()) } else { tx.query(&insert_events, &outbox_params).await } };
    let (audit_done, rows) = tokio::join!(audit_written, events_written);
    let head_now = (seq, prev.clone());
    audit_done?;
    let range = seq_range(&rows?)?;
    *head = Some(head_now);
    Ok(range)
}

fn seq_range(rows: &[Row]) -> Result<(i64, i64), StoreError> {
    let seqs = rows.iter().map(|r| r.try_get::<_, i64>(0)).collect::<Result<Vec<_>, _>>()?;
    Ok((seqs.iter().copied().min().unwrap_or(0), seqs.iter().copied().max().unwrap_or(0)))
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
