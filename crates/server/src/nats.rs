//! The NATS JetStream relay (SPEC §12): follows the outbox in seq order — commit order on
//! both stores — and publishes every event to the stream `events.nats_stream` (created if
//! missing, subjects `tombstone.>`) on `tombstone.<tenant>.<collection>.<type>`
//! (`tombstone.<tenant>._.deletion.completed` for deletion events), with `Nats-Msg-Id` =
//! the event id and the §8 envelope as payload, exactly as webhooks get it.
//!
//! At least once, in order: an event is published and its JetStream ack awaited before the
//! next one is published, and the relay's position (the seq of the last acked event) is
//! stored in the database after each batch. A crash between the ack and the stored
//! position publishes those events again; JetStream drops them as duplicates of their
//! `Nats-Msg-Id` inside the stream's duplicate window.
//!
//! One relay per deployment: the replica that holds the lease `nats` publishes; the others
//! wait. The lease is renewed between batches; a killed replica's lease expires and
//! another takes over from the stored position, which only the lease holder can move.
//! While NATS is unreachable the events wait in the outbox (the clean-up keeps them), the
//! relay retries with backoff, and `tombstone_nats_backlog` shows how far it is behind.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use tombstone_domain::events::{Event, EventType};
use tombstone_domain::time::Clock;
use tombstone_store::{EventQuery, Store, StoreError};

/// The name of the relay's lease and position in the database.
pub const RELAY: &str = "nats";
/// The subjects of the stream the relay creates.
pub const STREAM_SUBJECTS: &str = "tombstone.>";
/// The gauge of outbox seqs past the relay's position.
pub const BACKLOG_METRIC: &str = "tombstone_nats_backlog";
/// Events published per batch; the lease is renewed and the position stored between them.
const BATCH: u32 = 256;
/// How long a holder's lease lasts without renewal (by default).
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How long to wait for NATS to answer a connection, a stream lookup or a publish.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry waits after a failure: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a pass stopped short.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS could not be reached, or did not ack a publish.
    #[error("nats: {0}")]
    Nats(String),
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NatsPass {
    /// This replica held the lease (otherwise it did nothing).
    pub held: bool,
    /// Events published and acked.
    pub published: u64,
    /// Of those, the ones JetStream already had (a re-publish after a crash or takeover).
    pub duplicates: u64,
}

/// The relay of one replica.
pub struct NatsRelay {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    url: String,
    stream: String,
    /// Who this replica is in the lease.
    holder: String,
    lease_ttl: Duration,
    poll: Duration,
    /// The connection, once made (async-nats reconnects it by itself after that).
    jetstream: tokio::sync::Mutex<Option<jetstream::Context>>,
    /// Until when this replica's lease runs, as of its last claim: a pass within the first
    /// third of it publishes without claiming again (the stored position is fenced by the
    /// lease anyway), so a busy relay does not write the lease row on every commit.
    held_until: std::sync::Mutex<Option<tombstone_domain::time::Timestamp>>,
}

impl NatsRelay {
    /// A relay to the NATS server at `url`, publishing to `stream`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, url: &str, stream: &str) -> Self {
        let holder =
            format!("{}-{}-{}", hostname(), std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[20..]);
        Self {
            store,
            clock,
            url: url.to_string(),
            stream: stream.to_string(),
            holder,
            lease_ttl: LEASE_TTL,
            poll: tombstone_domain::config::DEFAULT_EVENTS_POLL,
            jetstream: tokio::sync::Mutex::new(None),
            held_until: std::sync::Mutex::new(None),
        }
    }

    /// The same relay with another lease time to live (default [`LEASE_TTL`]); it renews
    /// every third of it.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The same relay with another safety-net poll (`events.poll_interval`).
    #[must_use]
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Who this relay is in the lease.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The JetStream context, connecting (and creating the stream if missing) the first time.
    async fn context(&self) -> Result<jetstream::Context, RelayError> {
        let mut slot = self.jetstream.lock().await;
        if let Some(js) = slot.as_ref() {
            return Ok(js.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .name(format!("tombstone-relay {}", self.holder))
            .connection_timeout(NATS_TIMEOUT)
            .connect(self.url.as_str())
            .await
            .map_err(|e| RelayError::Nats(format!("connect: {e}")))?;
        let mut js = jetstream::new(client);
        js.set_timeout(NATS_TIMEOUT);
        ensure_stream(&js, &self.stream).await?;
        tracing::info!("nats.stream" = %self.stream, holder = %self.holder, "NATS relay connected");
        *slot = Some(js.clone());
        Ok(js)
    }

    /// One pass: claims (or renews) the lease, and if this replica holds it, publishes the
    /// events past the stored position, a batch at a time, until none is left.
    ///
    /// # Errors
    /// The store failed, or NATS did not take an event (what was acked before is stored).
    pub async fn run_once(&self) -> Result<NatsPass, RelayError> {
        let mut pass = NatsPass::default();
        if !self.claim().await? {
            return Ok(pass);
        }
        pass.held = true;
        let mut position = match self.store.relay_position(RELAY).await? {
            Some(p) => p,
            None => {
                // A first start: the whole outbox is to be published, and the clean-up
                // must wait for it from now on.
                if !self.store.store_relay_position(RELAY, &self.holder, 0, self.clock.now()).await? {
                    return Ok(NatsPass::default());
                }
                0
            }
        };
        self.set_backlog(position).await;
        let js = self.context().await?;
        loop {
            let events = self
                .store
                .list_all_events(&EventQuery { after: position, collection: None, types: vec![], limit: BATCH })
                .await?;
            if events.is_empty() {
                break;
            }
            let mut acked = position;
            let mut failure = None;
            for event in &events {
                match publish(&js, &self.stream, event).await {
                    Ok(duplicate) => {
                        acked = event.seq;
                        pass.published += 1;
                        pass.duplicates += u64::from(duplicate);
                        metrics::counter!("tombstone_nats_published_total").increment(1);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if acked > position {
                if !self.store.store_relay_position(RELAY, &self.holder, acked, self.clock.now()).await? {
                    // Another replica took over (this one stalled past its lease): it
                    // resumes from the stored position; JetStream drops what both sent.
                    tracing::warn!(holder = %self.holder, "NATS relay lost its lease; stopping");
                    *self.held_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                    pass.held = false;
                    return Ok(pass);
                }
                position = acked;
                self.set_backlog(position).await;
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if events.len() < BATCH as usize {
                // Short of a batch: nothing more for now.
                break;
            }
            // Renew between batches: a long catch-up keeps the lease.
            if !self.claim().await? {
                pass.held = false;
                break;
            }
        }
        Ok(pass)
    }

    /// Claims or renews the lease (unless a claim made less than a third of its time to
    /// live ago still runs); whether this replica holds it.
    async fn claim(&self) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let fresh = self.lease_ttl.saturating_sub(self.lease_ttl / 3);
        if self
            .held_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| now.saturating_add(fresh) < until)
        {
            return Ok(true);
        }
        let lease = self.store.claim_lease(RELAY, &self.holder, now, self.lease_ttl).await?;
        let held = lease.is_held_by(&self.holder, now);
        *self.held_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = held.then_some(lease.expires_at);
        Ok(held)
    }

    /// Sets the backlog gauge from `position` and the newest event.
    async fn set_backlog(&self, position: i64) {
        if let Ok(newest) = self.store.last_event_seq().await {
            #[expect(clippy::cast_precision_loss, reason = "a gauge")]
            metrics::gauge!(BACKLOG_METRIC).set(newest.saturating_sub(position).max(0) as f64);
        }
    }

    /// Runs passes until cancelled: after every commit that wrote events, every poll
    /// interval (other processes' events) and at least every third of the lease (to renew
    /// it, or to take it over once it expires); after a failure, with backoff. At the end
    /// the lease is released, so another replica takes over at once.
    pub async fn run(self: Arc<Self>, mut cancel: tokio::sync::watch::Receiver<bool>) {
        let changes = self.store.changes();
        let renew = self.lease_ttl / 3;
        let mut backoff: Option<Duration> = None;
        let mut held = false;
        loop {
            let notified = changes.notified();
            let wait = match self.run_once().await {
                Ok(pass) => {
                    if pass.held != held {
                        tracing::info!(holder = %self.holder, held = pass.held, "NATS relay lease changed hands");
                        held = pass.held;
                    }
                    if backoff.take().is_some() {
                        tracing::info!("NATS relay delivering again");
                    }
                    self.poll.min(renew)
                }
                Err(e) => {
                    let next = backoff.map_or(BACKOFF_FIRST, |b| (b * 2).min(BACKOFF_MAX));
                    backoff = Some(next);
                    metrics::counter!("tombstone_nats_publish_errors_total").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = u64::try_from(next.as_millis()).unwrap_or(u64::MAX), "NATS relay pass failed; events wait in the outbox");
                    if matches!(e, RelayError::Nats(_)) && next >= BACKOFF_MAX {
                        // Connect afresh next time (the stream may have been deleted).
                        *self.jetstream.lock().await = None;
                    }
                    next.min(renew)
                }
            };
            tokio::select! {
                () = notified, if backoff.is_none() => {}
                () = tokio::time::sleep(wait) => {}
                _ = cancel.changed() => break,
            }
        }
        match self.store.release_lease(RELAY, &self.holder, self.clock.now()).await {
            Ok(true) => tracing::info!(holder = %self.holder, "NATS relay released its lease"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "NATS relay could not release its lease; it expires by itself"),
        }
    }
}

/// Creates the stream if it is missing (subjects `tombstone.>`, JetStream's default
/// two-minute duplicate window); an existing stream is used as it is.
async fn ensure_stream(js: &jetstream::Context, name: &str) -> Result<(), RelayError> {
    js.get_or_create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![STREAM_SUBJECTS.to_string()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| RelayError::Nats(format!("stream {name}: {e}")))?;
    Ok(())
}

/// Publishes one event and waits for JetStream's ack; `true` when JetStream already had it
/// (same `Nats-Msg-Id` inside the duplicate window).
///
/// # Errors
/// NATS did not take it, or acked it into another stream.
pub async fn publish(js: &jetstream::Context, stream: &str, event: &Event) -> Result<bool, RelayError> {
    let body = event.envelope().to_string();
    let ack = js
        .send_publish(subject(event), PublishMessage::build().payload(body.into()).message_id(&event.id))
        .await
        .map_err(|e| RelayError::Nats(format!("publish: {e}")))?
        .await
        .map_err(|e| RelayError::Nats(format!("ack: {e}")))?;
    if ack.stream != stream {
        return Err(RelayError::Nats(format!(
            "subject {} belongs to stream {}, not {stream}",
            subject(event),
            ack.stream
        )));
    }
    Ok(ack.duplicate)
}

/// `tombstone.<tenant>.<collection>.<type>`; `_` for the collection of deletion events.
#[must_use]
pub fn subject(event: &Event) -> String {
    let collection = if event.kind == EventType::DeletionCompleted.as_str() { "_" } else { event.collection.as_str() };
    format!("tombstone.{}.{}.{}", token(&event.tenant), token(collection), event.kind)
}

/// A name as one subject token: the characters NATS gives a meaning (`.`, `*`, `>`,
/// whitespace) become `_`, and an empty name is `_`.
fn token(name: &str) -> String {
    if name.is_empty() {
        return "_".into();
    }
    name.chars().map(|c| if c == '.' || c == '*' || c == '>' || c.is_whitespace() { '_' } else { c }).collect()
}

/// This machine's name, for the lease holder (it shows which replica relays).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into())
}

/// A deletion's propagation to NATS: `done` once the relay's stored position is past the
/// operation's newest event, `pending` before.
///
/// # Errors
/// The store failed.
pub async fn propagation(store: &dyn Store, last_event_seq: Option<i64>) -> Result<&'static str, StoreError> {
    let Some(seq) = last_event_seq else { return Ok("done") };
    Ok(if store.relay_position(RELAY).await?.is_some_and(|p| p >= seq) { "done" } else { "pending" })
}

/// Refreshes the backlog gauge (at scrape time: every replica shows it, holder or not).
pub async fn refresh_backlog(store: &dyn Store) {
    if let (Ok(newest), Ok(position)) = (store.last_event_seq().await, store.relay_position(RELAY).await) {
        #[expect(clippy::cast_precision_loss, reason = "a gauge")]
        metrics::gauge!(BACKLOG_METRIC).set(newest.saturating_sub(position.unwrap_or(0)).max(0) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, tenant: &str, collection: &str) -> Event {
        Event {
            id: "evt_1".into(),
            seq: 1,
            kind: kind.as_str().into(),
            tenant: tenant.into(),
            collection: collection.into(),
            record_id: "r1".into(),
            version: Some(1),
            deletion_id: None,
            occurred_at: tombstone_domain::time::Timestamp::from_micros(0),
            request_id: None,
            data: None,
        }
    }

    #[test]
    fn subjects() {
        assert_eq!(subject(&event(EventType::Deleted, "t1", "products")), "tombstone.t1.products.record.deleted");
        assert_eq!(
            subject(&event(EventType::DeletionCompleted, "t1", "products")),
            "tombstone.t1._.deletion.completed"
        );
        assert_eq!(subject(&event(EventType::Created, "a.b c*>", "x")), "tombstone.a_b_c__.x.record.created");
        assert_eq!(subject(&event(EventType::Created, "", "x")), "tombstone._.x.record.created");
    }
}
