//! Webhook delivery state on PostgreSQL: endpoint cursors over the outbox, one delivery
//! row per (endpoint, event), and the outbox's clean-up — the same rules as SQLite's
//! `webhooks.rs`, written for a database that several replicas share.
//!
//! What holds with several replicas calling these at once:
//! - **fan-out** locks the endpoint rows it advances (`FOR UPDATE`, in id order) for the
//!   whole transaction, so two fan-outs of one endpoint take turns: the second reads the
//!   cursor the first committed and starts after it. The unique (endpoint, event) pair,
//!   inserted with `on conflict do nothing`, is the second line: no event is ever delivered
//!   twice to one endpoint by fan-out, whatever the interleaving. Outbox seqs are drawn
//!   in commit order (see `changes.rs`), so reading `seq > cursor` skips nothing.
//! - **clean-up** never deletes an event a pending delivery needs: it locks its candidates
//!   (`FOR UPDATE SKIP LOCKED`) and deletes them in a second statement that looks again
//!   for pending deliveries with a fresh snapshot; a **redelivery** share-locks the event
//!   before making its delivery pending. Whichever comes first, the other sees it: the
//!   redelivery finds the event gone (`EventGone`), or the clean-up skips the event.
//! - **due deliveries** are read without a lease: two relays reading at once may both send
//!   the same delivery (receivers deduplicate by `webhook-id`, which the signature covers),
//!   and the attempt they record last wins. Only one relay per database is assumed today.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tombstone_domain::events::Event;
use tombstone_domain::time::Timestamp;
use tombstone_domain::webhook::DeliveryError;

use super::PgStore;
use super::records::{Param, refs};
use crate::{
    AttemptOutcome, Delivery, DeliveryQuery, DueDelivery, EndpointState, Redelivery, StoreError, WebhookEndpoint,
};

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_seq, event_id, event_type, tenant, status, attempts, next_attempt_at, \
     last_status, last_error, last_attempt_at, delivered_at, created_at";
/// How many columns [`DELIVERY_COLUMNS`] reads.
const DELIVERY_COUNT: usize = 14;

const ENDPOINT_COLUMNS: &str = "id, url, cursor, disabled_at, disabled_reason, removed_at";

fn read_delivery(row: &Row) -> Result<Delivery, StoreError> {
    let attempts: i32 = row.try_get(7)?;
    let last_status: Option<i32> = row.try_get(9)?;
    Ok(Delivery {
        id: row.try_get(0)?,
        endpoint_id: row.try_get(1)?,
        event_seq: row.try_get(2)?,
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        tenant: row.try_get(5)?,
        status: row.try_get(6)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: Timestamp::from_micros(row.try_get(8)?),
        last_status: last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get(10)?,
        last_attempt_at: row.try_get::<_, Option<i64>>(11)?.map(Timestamp::from_micros),
        delivered_at: row.try_get::<_, Option<i64>>(12)?.map(Timestamp::from_micros),
        created_at: Timestamp::from_micros(row.try_get(13)?),
    })
}

fn read_endpoint(row: &Row) -> Result<EndpointState, StoreError> {
    Ok(EndpointState {
        id: row.try_get(0)?,
        url: row.try_get(1)?,
        cursor: row.try_get(2)?,
        disabled_at: row.try_get::<_, Option<i64>>(3)?.map(Timestamp::from_micros),
        disabled_reason: row.try_get(4)?,
        removed_at: row.try_get::<_, Option<i64>>(5)?.map(Timestamp::from_micros),
    })
}

/// The event joined to a delivery (columns from `at` on), or `None` when the outbox row is
/// gone (the left join found nothing).
fn read_joined_event(row: &Row, at: usize) -> Result<Option<Event>, StoreError> {
    let Some(seq) = row.try_get::<_, Option<i64>>(at)? else { return Ok(None) };
    Ok(Some(Event {
        seq,
        id: row.try_get(at + 1)?,
        kind: row.try_get(at + 2)?,
        tenant: row.try_get(at + 3)?,
        collection: row.try_get(at + 4)?,
        record_id: row.try_get(at + 5)?,
        version: row.try_get(at + 6)?,
        deletion_id: row.try_get(at + 7)?,
        occurred_at: Timestamp::from_micros(row.try_get(at + 8)?),
        request_id: row.try_get(at + 9)?,
        data: row.try_get(at + 10)?,
    }))
}

/// The ordering lane of an event: one per tenant and record, so that neither another
/// record nor another tenant's record with the same id waits behind a failing delivery.
/// Tenant and collection names hold no `/`, so the key is unambiguous (the same key as
/// SQLite's store).
fn lane(tenant: &str, collection: &str, record_id: &str) -> String {
    format!("{tenant}/{collection}/{record_id}")
}

async fn endpoints(client: &impl GenericClient) -> Result<Vec<EndpointState>, StoreError> {
    let stmt = client.prepare_cached(&format!("select {ENDPOINT_COLUMNS} from webhook_endpoints order by id")).await?;
    client.query(&stmt, &[]).await?.iter().map(read_endpoint).collect()
}

/// The newest outbox seq (0 when the outbox is empty).
async fn newest_seq(client: &impl GenericClient) -> Result<i64, StoreError> {
    let stmt = client.prepare_cached("select coalesce(max(seq), 0)::bigint from outbox").await?;
    Ok(client.query_one(&stmt, &[]).await?.try_get(0)?)
}

/// One event past an endpoint's cursor, as fan-out reads it.
struct Pending {
    seq: i64,
    id: String,
    kind: String,
    tenant: String,
    collection: String,
    record_id: String,
}

impl PgStore {
    /// Registers the configured endpoints; a new one (or one that comes back after leaving
    /// the config) starts after the newest event. Endpoints that left the config are marked
    /// removed at `now` and their pending deliveries cancelled. One transaction.
    ///
    /// # Errors
    /// The database failed.
    pub async fn sync_webhook_endpoints(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
    ) -> Result<Vec<EndpointState>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let newest = newest_seq(&tx).await?;
        // In id order, the order fan-out locks them in: two replicas syncing and fanning
        // out at once queue instead of deadlocking.
        let mut configured: Vec<&WebhookEndpoint> = endpoints.iter().collect();
        configured.sort_by(|a, b| a.id.cmp(&b.id));
        // One that comes back after leaving the config starts from now, like a new one:
        // while it was away the outbox was cleaned up without waiting for it, so "where it
        // left off" would be a gap-ridden replay. A 410 disable is the endpoint's own word
        // and stays until an operator re-enables it.
        let upsert = tx
            .prepare_cached(
                "insert into webhook_endpoints (id, url, cursor, tenant) values ($1, $2, $3, $4)
                 on conflict (id) do update set url = excluded.url, tenant = excluded.tenant,
                     cursor = case when webhook_endpoints.removed_at is null then webhook_endpoints.cursor else excluded.cursor end,
                     removed_at = null",
            )
            .await?;
        for e in configured {
            tx.execute(&upsert, &[&e.id, &e.url, &newest, &e.tenant]).await?;
        }
        // Endpoints that left the config: nothing can be sent to them any more (their URL
        // and secret are gone with the config), so their pending deliveries are cancelled
        // at once rather than retried for a day and a half, and they stop pinning the
        // outbox.
        let ids: Vec<String> = endpoints.iter().map(|e| e.id.clone()).collect();
        let gone: Vec<String> = tx
            .query(
                "update webhook_endpoints set removed_at = $2
                 where removed_at is null and id <> all($1::text[]) returning id",
                &[&ids, &now.as_micros()],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if !gone.is_empty() {
            tx.execute(
                "update webhook_deliveries set status = 'cancelled', last_error = $2
                 where endpoint_id = any($1::text[]) and status = 'pending'",
                &[&gone, &DeliveryError::EndpointRemoved.class()],
            )
            .await?;
        }
        let states = self::endpoints(&tx).await?;
        tx.commit().await?;
        Ok(states)
    }

    /// The state of every endpoint ever registered, by id.
    ///
    /// # Errors
    /// The database failed.
    pub async fn webhook_endpoints(&self) -> Result<Vec<EndpointState>, StoreError> {
        let client = self.client().await?;
        endpoints(&client).await
    }

    /// Re-enables a disabled endpoint; `false` if unknown.
    ///
    /// # Errors
    /// The database failed.
    pub async fn enable_webhook_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute("update webhook_endpoints set disabled_at = null, disabled_reason = null where id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    /// Creates deliveries for events past each enabled endpoint's cursor (at most `batch`
    /// events per endpoint, filtered by the endpoint's event types and tenant) and advances
    /// the cursors, in one transaction; returns how many deliveries it created.
    ///
    /// Several replicas may run it at once: see the module's documentation.
    ///
    /// # Errors
    /// The database failed; [`StoreError::Busy`] if it chose this transaction as a
    /// deadlock's victim (nothing was written).
    pub async fn fan_out_webhooks(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = endpoints.iter().map(|e| e.id.clone()).collect();
        let mut client = self.client().await?;
        // Idle passes only read, and take no lock.
        let behind = client
            .query_one(
                "select exists (select 1 from webhook_endpoints
                    where id = any($1::text[]) and disabled_at is null and removed_at is null
                      and cursor < (select coalesce(max(seq), 0) from outbox))",
                &[&ids],
            )
            .await?
            .try_get::<_, bool>(0)?;
        if !behind {
            return Ok(0);
        }
        let tx = client.transaction().await?;
        // Locked until the commit; a concurrent fan-out waits here and then reads the
        // cursor this one committed (READ COMMITTED re-reads a row it waited for).
        let locked: Vec<(String, i64)> = tx
            .query(
                "select id, cursor from webhook_endpoints
                 where id = any($1::text[]) and removed_at is null and disabled_at is null
                 order by id for update",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, _>>()?;
        let read = tx
            .prepare_cached(
                "select seq, id, type, tenant, collection, record_id from outbox where seq > $1 order by seq limit $2",
            )
            .await?;
        let insert = tx
            .prepare_cached(
                "insert into webhook_deliveries (id, endpoint_id, event_seq, event_id, event_type, tenant, record_key, status, attempts, next_attempt_at, created_at)
                 select d.id, $1, d.seq, d.event_id, d.type, d.tenant, d.record_key, 'pending', 0, $2, $2
                 from unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[])
                     with ordinality as d(id, seq, event_id, type, tenant, record_key, n)
                 order by d.n
                 on conflict (endpoint_id, event_seq) do nothing",
            )
            .await?;
        let advance = tx.prepare_cached("update webhook_endpoints set cursor = $2 where id = $1").await?;
        let mut created = 0;
        for (id, cursor) in locked {
            let Some(e) = endpoints.iter().find(|e| e.id == id) else { continue };
            let rows = tx.query(&read, &[&cursor, &i64::from(batch)]).await?;
            let events: Vec<Pending> = rows
                .iter()
                .map(|r| {
                    Ok::<_, tokio_postgres::Error>(Pending {
                        seq: r.try_get(0)?,
                        id: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        tenant: r.try_get(3)?,
                        collection: r.try_get(4)?,
                        record_id: r.try_get(5)?,
                    })
                })
                .collect::<Result<_, _>>()?;
            let Some(last) = events.last().map(|p| p.seq) else { continue };
            let wanted: Vec<&Pending> = events
                .iter()
                .filter(|p| e.events.is_empty() || e.events.contains(&p.kind))
                .filter(|p| e.tenant.as_ref().is_none_or(|t| *t == p.tenant))
                .collect();
            // Ids are time-ordered (UUIDv7, monotonic in this process) and made in seq
            // order, so a listing by id is oldest first.
            let delivery_ids: Vec<String> =
                wanted.iter().map(|_| format!("dlv_{}", uuid::Uuid::now_v7().simple())).collect();
            let seqs: Vec<i64> = wanted.iter().map(|p| p.seq).collect();
            let event_ids: Vec<&str> = wanted.iter().map(|p| p.id.as_str()).collect();
            let kinds: Vec<&str> = wanted.iter().map(|p| p.kind.as_str()).collect();
            let tenants: Vec<&str> = wanted.iter().map(|p| p.tenant.as_str()).collect();
            let lanes: Vec<String> = wanted.iter().map(|p| lane(&p.tenant, &p.collection, &p.record_id)).collect();
            let now_us = now.as_micros();
            let params: [&(dyn ToSql + Sync); 8] =
                [&id, &now_us, &delivery_ids, &seqs, &event_ids, &kinds, &tenants, &lanes];
            let advance_params: [&(dyn ToSql + Sync); 2] = [&id, &last];
            let (inserted, advanced) = tokio::join!(
                async { if wanted.is_empty() { Ok(0) } else { tx.execute(&insert, &params).await } },
                tx.execute(&advance, &advance_params),
            );
            created += inserted?;
            advanced?;
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Due deliveries that are the oldest pending one of their record at their endpoint,
    /// oldest event first, each with its event (`None` when the event is gone from the
    /// outbox, so the relay can cancel the delivery instead of letting it hold its lane).
    ///
    /// # Errors
    /// The database failed.
    pub async fn due_deliveries(&self, now: Timestamp, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "select d.{cols}, o.seq, o.id, o.type, o.tenant, o.collection, o.record_id, o.version, o.deletion_id, o.occurred_at, o.request_id, o.data
             from webhook_deliveries d left join outbox o on o.seq = d.event_seq
             where d.status = 'pending' and d.next_attempt_at <= $1
               and not exists (
                 select 1 from webhook_deliveries p
                 where p.endpoint_id = d.endpoint_id and p.record_key = d.record_key and p.status = 'pending'
                   and p.event_seq < d.event_seq)
             order by d.event_seq, d.endpoint_id limit $2",
            cols = DELIVERY_COLUMNS.replace(", ", ", d.")
        );
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &[&now.as_micros(), &i64::from(limit)]).await?;
        rows.iter()
            .map(|r| Ok(DueDelivery { delivery: read_delivery(r)?, event: read_joined_event(r, DELIVERY_COUNT)? }))
            .collect()
    }

    /// Records an attempt's outcome. A 410 ([`AttemptOutcome::EndpointGone`]) disables the
    /// endpoint and cancels its pending deliveries in the same transaction.
    ///
    /// # Errors
    /// The database failed.
    pub async fn record_attempt(
        &self,
        delivery_id: &str,
        at: Timestamp,
        outcome: AttemptOutcome,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let id = delivery_id;
        let at = at.as_micros();
        match outcome {
            AttemptOutcome::Delivered { status } => {
                let stmt = client
                    .prepare_cached(
                        "update webhook_deliveries set status = 'delivered', attempts = attempts + 1, last_status = $2,
                             last_error = null, last_attempt_at = $3, delivered_at = $3 where id = $1",
                    )
                    .await?;
                client.execute(&stmt, &[&id, &i32::from(status), &at]).await?;
            }
            AttemptOutcome::Retry { status, error, next_attempt_at } => {
                let stmt = client
                    .prepare_cached(
                        "update webhook_deliveries set attempts = attempts + 1, last_status = $2, last_error = $3,
                             last_attempt_at = $4, next_attempt_at = $5 where id = $1",
                    )
                    .await?;
                let status = status.map(i32::from);
                client.execute(&stmt, &[&id, &status, &error.class(), &at, &next_attempt_at.as_micros()]).await?;
            }
            AttemptOutcome::GiveUp { status, error } => {
                let stmt = client
                    .prepare_cached(
                        "update webhook_deliveries set status = 'failed', attempts = attempts + 1, last_status = $2,
                             last_error = $3, last_attempt_at = $4 where id = $1",
                    )
                    .await?;
                let status = status.map(i32::from);
                client.execute(&stmt, &[&id, &status, &error.class(), &at]).await?;
            }
            AttemptOutcome::Cancelled { error } => {
                let stmt = client
                    .prepare_cached(
                        "update webhook_deliveries set status = 'cancelled', last_error = $2 where id = $1 and status = 'pending'",
                    )
                    .await?;
                client.execute(&stmt, &[&id, &error.class()]).await?;
            }
            AttemptOutcome::EndpointGone => {
                let tx = client.transaction().await?;
                let row = tx
                    .query_opt(
                        "update webhook_deliveries set attempts = attempts + 1, last_status = 410, last_error = $3,
                             last_attempt_at = $2 where id = $1 returning endpoint_id",
                        &[&id, &at, &DeliveryError::Http(410).class()],
                    )
                    .await?;
                let Some(row) = row else { return Ok(()) };
                let endpoint: String = row.try_get(0)?;
                tx.execute(
                    "update webhook_endpoints set disabled_at = $2, disabled_reason = 'answered 410 Gone' where id = $1",
                    &[&endpoint, &at],
                )
                .await?;
                tx.execute(
                    "update webhook_deliveries set status = 'cancelled', last_error = coalesce(last_error, $2)
                     where endpoint_id = $1 and status = 'pending'",
                    &[&endpoint, &DeliveryError::EndpointDisabled.class()],
                )
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// A tenant's deliveries, oldest first (by id), after `query.after`, filtered by
    /// status and endpoint.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list_deliveries(&self, tenant: &str, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let mut params = vec![Param::Text(Some(tenant.to_string()))];
        let mut clauses = vec!["tenant = $1".to_string()];
        for (column, value) in [("status", &query.status), ("endpoint_id", &query.endpoint_id)] {
            if let Some(v) = value {
                params.push(Param::Text(Some(v.clone())));
                clauses.push(format!("{column} = ${}", params.len()));
            }
        }
        if let Some(after) = &query.after {
            params.push(Param::Text(Some(after.clone())));
            clauses.push(format!("id > ${}", params.len()));
        }
        params.push(Param::Int(Some(i64::from(query.limit))));
        let sql = format!(
            "select {DELIVERY_COLUMNS} from webhook_deliveries where {} order by id limit ${}",
            clauses.join(" and "),
            params.len()
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        client.query(&stmt, &refs(&params)).await?.iter().map(read_delivery).collect()
    }

    /// Makes a delivery of the tenant pending again, due now, unless its event or its
    /// endpoint is gone.
    ///
    /// # Errors
    /// The database failed.
    pub async fn redeliver(&self, tenant: &str, id: &str, now: Timestamp) -> Result<Redelivery, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let found = tx
            .query_opt(
                "select d.event_seq,
                        exists (select 1 from webhook_endpoints e where e.id = d.endpoint_id and e.removed_at is not null)
                 from webhook_deliveries d where d.id = $1 and d.tenant = $2 for update of d",
                &[&id, &tenant],
            )
            .await?;
        let Some(found) = found else { return Ok(Redelivery::NotFound) };
        let (seq, removed): (i64, bool) = (found.try_get(0)?, found.try_get(1)?);
        // Share-locked until the commit: a clean-up that has not locked the event yet
        // skips it, one that has makes this wait and then find it gone.
        let event = tx.query_opt("select 1 from outbox where seq = $1 for share", &[&seq]).await?;
        if event.is_none() {
            // Pending without an event it would never be sent, and would hold its lane.
            return Ok(Redelivery::EventGone);
        }
        if removed {
            return Ok(Redelivery::EndpointRemoved);
        }
        let row = tx
            .query_one(
                &format!(
                    "update webhook_deliveries set status = 'pending', next_attempt_at = $2 where id = $1 returning {DELIVERY_COLUMNS}"
                ),
                &[&id, &now.as_micros()],
            )
            .await?;
        let delivery = read_delivery(&row)?;
        tx.commit().await?;
        Ok(Redelivery::Pending(Box::new(delivery)))
    }

    /// Pending deliveries of endpoints still in the config.
    ///
    /// # Errors
    /// The database failed.
    pub async fn webhook_backlog(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "select count(*) from webhook_deliveries d
                 where d.status = 'pending'
                   and not exists (select 1 from webhook_endpoints e where e.id = d.endpoint_id and e.removed_at is not null)",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes outbox rows older than `before` that every enabled, still configured
    /// endpoint has fanned out and no pending delivery needs, at most `limit`, oldest
    /// first; returns how many.
    ///
    /// Never the newest event: [`PgStore::last_event_seq`] is the outbox's largest seq,
    /// and followers that start from it (the live streams, a new endpoint's cursor) would
    /// be sent back to 0 by an empty outbox.
    ///
    /// # Errors
    /// The database failed.
    pub async fn cleanup_outbox(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Endpoints that left the config, or were disabled, do not count: their cursor
        // does not move until they come back. Relays to outside sinks (NATS) keep what
        // they have not delivered yet: an outage longer than the retention delays the
        // clean-up instead of losing events. A relay whose lease nobody held since
        // `before` left the config: it holds nothing back.
        let min_cursor: Option<i64> = tx
            .query_one(
                "select min(c) from (
                    select min(cursor) as c from webhook_endpoints where disabled_at is null and removed_at is null
                    union all select min(p.seq) from relay_positions p join leases l on l.name = p.name
                              where l.expires_at >= $1) m",
                &[&before.as_micros()],
            )
            .await?
            .try_get(0)?;
        // Candidates, locked; one a redelivery holds is skipped (it is needed again).
        let candidates: Vec<i64> = tx
            .query(
                "select o.seq from outbox o
                 where o.occurred_at < $1 and o.seq <= $2 and o.seq < (select max(seq) from outbox)
                   and not exists (select 1 from webhook_deliveries d where d.event_seq = o.seq and d.status = 'pending')
                 order by o.seq limit $3
                 for update of o skip locked",
                &[&before.as_micros(), &min_cursor.unwrap_or(i64::MAX), &i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if candidates.is_empty() {
            return Ok(0);
        }
        // A second statement, a fresh snapshot: a delivery made pending again between the
        // look above and the locks keeps its event.
        let n = tx
            .execute(
                "delete from outbox o where o.seq = any($1::bigint[])
                   and not exists (select 1 from webhook_deliveries d where d.event_seq = o.seq and d.status = 'pending')",
                &[&candidates],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}
