//! Webhook delivery state: endpoint cursors over the outbox and one delivery row per
//! (endpoint, event). All of it lives in the database, so the relay survives restarts
//! without losing or inventing deliveries.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tombstone_domain::events::Event;
use tombstone_domain::time::Timestamp;
use tombstone_domain::webhook::DeliveryError;

use crate::{
    AttemptOutcome, Delivery, DeliveryQuery, DueDelivery, EndpointState, Redelivery, StoreError, WebhookEndpoint,
};

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_seq, event_id, event_type, tenant, status, attempts, next_attempt_at, \
     last_status, last_error, last_attempt_at, delivered_at, created_at";

fn read_delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: row.get(0)?,
        endpoint_id: row.get(1)?,
        event_seq: row.get(2)?,
        event_id: row.get(3)?,
        event_type: row.get(4)?,
        tenant: row.get(5)?,
        status: row.get(6)?,
        attempts: row.get(7)?,
        next_attempt_at: Timestamp::from_micros(row.get(8)?),
        last_status: row.get(9)?,
        last_error: row.get(10)?,
        last_attempt_at: row.get::<_, Option<i64>>(11)?.map(Timestamp::from_micros),
        delivered_at: row.get::<_, Option<i64>>(12)?.map(Timestamp::from_micros),
        created_at: Timestamp::from_micros(row.get(13)?),
    })
}

fn read_endpoint(row: &Row<'_>) -> rusqlite::Result<EndpointState> {
    Ok(EndpointState {
        id: row.get(0)?,
        url: row.get(1)?,
        cursor: row.get(2)?,
        disabled_at: row.get::<_, Option<i64>>(3)?.map(Timestamp::from_micros),
        disabled_reason: row.get(4)?,
        removed_at: row.get::<_, Option<i64>>(5)?.map(Timestamp::from_micros),
    })
}

/// The ordering lane of an event: one per tenant and record, so that neither another
/// record nor another tenant's record with the same id waits behind a failing delivery.
/// Tenant and collection names hold no `/`, so the key is unambiguous.
fn lane(tenant: &str, collection: &str, record_id: &str) -> String {
    format!("{tenant}/{collection}/{record_id}")
}

pub(crate) fn endpoints(conn: &Connection) -> Result<Vec<EndpointState>, StoreError> {
    let rows = conn
        .prepare_cached(
            "select id, url, cursor, disabled_at, disabled_reason, removed_at from webhook_endpoints order by id",
        )?
        .query_map([], read_endpoint)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(crate) fn sync(
    conn: &Connection,
    configured: &[WebhookEndpoint],
    now: Timestamp,
) -> Result<Vec<EndpointState>, StoreError> {
    let newest: i64 = conn.query_row("select coalesce(max(seq), 0) from outbox", [], |r| r.get(0))?;
    for e in configured {
        // One that comes back after leaving the config starts from now, like a new one:
        // while it was away the outbox was cleaned up without waiting for it, so "where it
        // left off" would be a gap-ridden replay. A 410 disable is the endpoint's own word
        // and stays until an operator re-enables it.
        conn.prepare_cached(
            "insert into webhook_endpoints (id, url, cursor, tenant) values (?1, ?2, ?3, ?4)
             on conflict (id) do update set url = excluded.url, tenant = excluded.tenant,
                 cursor = case when removed_at is null then cursor else excluded.cursor end,
                 removed_at = null",
        )?
        .execute(params![e.id, e.url, newest, e.tenant])?;
    }
    // Endpoints that left the config: nothing can be sent to them any more (their URL and
    // secret are gone with the config), so their pending deliveries are cancelled at once
    // rather than retried for a day and a half, and they stop pinning the outbox.
    let ids: Vec<String> = configured.iter().map(|e| e.id.clone()).collect();
    let gone: Vec<String> =
        endpoints(conn)?.into_iter().filter(|e| e.removed_at.is_none() && !ids.contains(&e.id)).map(|e| e.id).collect();
    for id in gone {
        conn.prepare_cached("update webhook_endpoints set removed_at = ?2 where id = ?1")?
            .execute(params![id, now.as_micros()])?;
        conn.prepare_cached(
            "update webhook_deliveries set status = 'cancelled', last_error = ?2 where endpoint_id = ?1 and status = 'pending'",
        )?
        .execute(params![id, DeliveryError::EndpointRemoved.class()])?;
    }
    endpoints(conn)
}

pub(crate) fn fan_out(
    conn: &Connection,
    configured: &[WebhookEndpoint],
    now: Timestamp,
    batch: u32,
) -> Result<u64, StoreError> {
    let mut created = 0;
    for e in configured {
        let state: Option<(i64, Option<i64>)> = conn
            .prepare_cached("select cursor, disabled_at from webhook_endpoints where id = ?1 and removed_at is null")?
            .query_row([&e.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((cursor, None)) = state else { continue };
        let rows: Vec<(i64, String, String, String, String, String)> = conn
            .prepare_cached(
                "select seq, id, type, tenant, collection, record_id from outbox where seq > ?1 order by seq limit +?2",
            )?
            .query_map(params![cursor, batch], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last().map(|r| r.0) else { continue };
        let mut insert = conn.prepare_cached(
            "insert or ignore into webhook_deliveries (id, endpoint_id, event_seq, event_id, event_type, tenant, record_key, status, attempts, next_attempt_at, created_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, ?8)",
        )?;
        for (seq, event_id, kind, tenant, collection, record_id) in rows {
            let type_ok = e.events.is_empty() || e.events.contains(&kind);
            let tenant_ok = e.tenant.as_ref().is_none_or(|t| *t == tenant);
            if type_ok && tenant_ok {
                let id = format!("dlv_{}", uuid::Uuid::now_v7().simple());
                let record_key = lane(&tenant, &collection, &record_id);
                created +=
                    insert.execute(params![id, e.id, seq, event_id, kind, tenant, record_key, now.as_micros()])? as u64;
            }
        }
        conn.prepare_cached("update webhook_endpoints set cursor = ?2 where id = ?1")?.execute(params![e.id, last])?;
    }
    Ok(created)
}

pub(crate) fn due(conn: &Connection, now: Timestamp, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
    let sql = format!(
        "select d.{cols}, o.seq, o.id, o.type, o.tenant, o.collection, o.record_id, o.version, o.deletion_id, o.occurred_at, o.request_id, o.data
         from webhook_deliveries d left join outbox o on o.seq = d.event_seq
         where d.status = 'pending' and d.next_attempt_at <= ?1
           and not exists (
             select 1 from webhook_deliveries p
             where p.endpoint_id = d.endpoint_id and p.record_key = d.record_key and p.status = 'pending' and p.event_seq < d.event_seq)
         order by d.event_seq limit +?2",
        cols = DELIVERY_COLUMNS.replace(", ", ", d.")
    );
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params![now.as_micros(), limit], |r| {
            let delivery = read_delivery(r)?;
            let data: Option<String> = r.get(24)?;
            // A delivery whose event was cleaned up (left join: no outbox row) still comes
            // out, so the relay can cancel it instead of letting it hold its lane.
            let Some(seq) = r.get::<_, Option<i64>>(14)? else { return Ok(DueDelivery { delivery, event: None }) };
            let event = Event {
                seq,
                id: r.get(15)?,
                kind: r.get(16)?,
                tenant: r.get(17)?,
                collection: r.get(18)?,
                record_id: r.get(19)?,
                version: r.get(20)?,
                deletion_id: r.get(21)?,
                occurred_at: Timestamp::from_micros(r.get(22)?),
                request_id: r.get(23)?,
                data: data.and_then(|d| serde_json::from_str(&d).ok()),
            };
            Ok(DueDelivery { delivery, event: Some(event) })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(crate) fn record_attempt(
    conn: &Connection,
    id: &str,
    at: Timestamp,
    outcome: &AttemptOutcome,
) -> Result<(), StoreError> {
    let at = at.as_micros();
    match outcome {
        AttemptOutcome::Delivered { status } => {
            conn.prepare_cached(
                "update webhook_deliveries set status = 'delivered', attempts = attempts + 1, last_status = ?2, last_error = null, last_attempt_at = ?3, delivered_at = ?3 where id = ?1",
            )?
            .execute(params![id, status, at])?;
        }
        AttemptOutcome::Retry { status, error, next_attempt_at } => {
            conn.prepare_cached(
                "update webhook_deliveries set attempts = attempts + 1, last_status = ?2, last_error = ?3, last_attempt_at = ?4, next_attempt_at = ?5 where id = ?1",
            )?
            .execute(params![id, status, error.class(), at, next_attempt_at.as_micros()])?;
        }
        AttemptOutcome::GiveUp { status, error } => {
            conn.prepare_cached(
                "update webhook_deliveries set status = 'failed', attempts = attempts + 1, last_status = ?2, last_error = ?3, last_attempt_at = ?4 where id = ?1",
            )?
            .execute(params![id, status, error.class(), at])?;
        }
        AttemptOutcome::Cancelled { error } => {
            conn.prepare_cached(
                "update webhook_deliveries set status = 'cancelled', last_error = ?2 where id = ?1 and status = 'pending'",
            )?
            .execute(params![id, error.class()])?;
        }
        AttemptOutcome::EndpointGone => {
            let endpoint: Option<String> = conn
                .query_row("select endpoint_id from webhook_deliveries where id = ?1", [id], |r| r.get(0))
                .optional()?;
            let Some(endpoint) = endpoint else { return Ok(()) };
            conn.execute(
                "update webhook_deliveries set attempts = attempts + 1, last_status = 410, last_error = ?3, last_attempt_at = ?2 where id = ?1",
                params![id, at, DeliveryError::Http(410).class()],
            )?;
            conn.execute(
                "update webhook_endpoints set disabled_at = ?2, disabled_reason = 'answered 410 Gone' where id = ?1",
                params![endpoint, at],
            )?;
            conn.execute(
                "update webhook_deliveries set status = 'cancelled', last_error = coalesce(last_error, ?2) where endpoint_id = ?1 and status = 'pending'",
                params![endpoint, DeliveryError::EndpointDisabled.class()],
            )?;
        }
    }
    Ok(())
}

pub(crate) fn list(conn: &Connection, tenant: &str, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
    let mut params = vec![SqlValue::Text(tenant.to_string())];
    let mut clauses = vec!["tenant = ?1".to_string()];
    for (column, value) in [("status", &query.status), ("endpoint_id", &query.endpoint_id)] {
        if let Some(v) = value {
            params.push(SqlValue::Text(v.clone()));
            clauses.push(format!("{column} = ?{}", params.len()));
        }
    }
    if let Some(after) = &query.after {
        params.push(SqlValue::Text(after.clone()));
        clauses.push(format!("id > ?{}", params.len()));
    }
    params.push(SqlValue::Integer(i64::from(query.limit)));
    let sql = format!(
        "select {DELIVERY_COLUMNS} from webhook_deliveries where {} order by id limit +?{}",
        clauses.join(" and "),
        params.len()
    );
    let rows =
        conn.prepare_cached(&sql)?.query_map(params_from_iter(params), read_delivery)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(crate) fn redeliver(conn: &Connection, tenant: &str, id: &str, now: Timestamp) -> Result<Redelivery, StoreError> {
    // Checked in the writing transaction, so a concurrent outbox clean-up cannot slip in
    // between the check and the update.
    let found: Option<(bool, bool)> = conn
        .prepare_cached(
            "select exists (select 1 from outbox o where o.seq = d.event_seq),
                    exists (select 1 from webhook_endpoints e where e.id = d.endpoint_id and e.removed_at is not null)
             from webhook_deliveries d where d.id = ?1 and d.tenant = ?2",
        )?
        .query_row(params![id, tenant], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match found {
        None => return Ok(Redelivery::NotFound),
        // Pending without an event it would never be sent, and would hold its lane.
        Some((false, _)) => return Ok(Redelivery::EventGone),
        Some((_, true)) => return Ok(Redelivery::EndpointRemoved),
        Some((true, false)) => {}
    }
    conn.prepare_cached("update webhook_deliveries set status = 'pending', next_attempt_at = ?2 where id = ?1")?
        .execute(params![id, now.as_micros()])?;
    let delivery = conn
        .prepare_cached(&format!("select {DELIVERY_COLUMNS} from webhook_deliveries where id = ?1"))?
        .query_row([id], read_delivery)?;
    Ok(Redelivery::Pending(Box::new(delivery)))
}

pub(crate) fn cleanup_outbox(conn: &Connection, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
    // Only events every endpoint has fanned out, and that no pending delivery still needs;
    // never the newest one: seq is the rowid, and an empty table would hand out seqs again
    // that consumers (feeds, SSE clients, the indexer, the cache) have already passed.
    // Endpoints that left the config do not count: their cursor never moves again.
    // Relays to outside sinks (NATS) keep what they have not delivered yet: an outage
    // longer than the retention delays the clean-up instead of losing events. A relay
    // whose lease nobody held since `before` left the config: it holds nothing back.
    let min_cursor: Option<i64> = conn.query_row(
        "select min(c) from (
            select min(cursor) as c from webhook_endpoints where disabled_at is null and removed_at is null
            union all select min(p.seq) from relay_positions p join leases l on l.name = p.name
                      where l.expires_at >= ?1)",
        [before.as_micros()],
        |r| r.get(0),
    )?;
    let n = conn.execute(
        "delete from outbox where seq in (
            select o.seq from outbox o
            where o.occurred_at < ?1 and o.seq <= ?2 and o.seq < (select max(seq) from outbox)
              and not exists (select 1 from webhook_deliveries d where d.event_seq = o.seq and d.status = 'pending')
            order by o.seq limit +?3)",
        params![before.as_micros(), min_cursor.unwrap_or(i64::MAX), limit],
    )?;
    Ok(n as u64)
}

/// Whether any of these enabled endpoints has events left to fan out.
pub(crate) fn any_behind(conn: &Connection, ids: &[String]) -> Result<bool, StoreError> {
    let newest: i64 = conn.query_row("select coalesce(max(seq), 0) from outbox", [], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(
        "select cursor from webhook_endpoints where id = ?1 and disabled_at is null and removed_at is null",
    )?;
    for id in ids {
        if let Some(cursor) = stmt.query_row([id], |r| r.get::<_, i64>(0)).optional()?
            && cursor < newest
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Pending deliveries of endpoints still in the config.
pub(crate) fn backlog(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "select count(*) from webhook_deliveries d
         where d.status = 'pending'
           and not exists (select 1 from webhook_endpoints e where e.id = d.endpoint_id and e.removed_at is not null)",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}
