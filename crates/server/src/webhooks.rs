//! The webhook relay: fans the outbox out to each configured endpoint and delivers, at
//! least once, in order per record, with Standard Webhooks signatures and the Standard
//! Webhooks retry schedule. Every bit of delivery state lives in the database, so a
//! restart neither loses nor invents a delivery.
//!
//! Failures are stored as a class (`timeout`, `connect`, `http 500`, …: tenants read
//! them); the transport's own text, which quotes the URL, goes only to the operator's log,
//! with the endpoint id.

use std::sync::Arc;
use std::time::Duration;

use crate::lease::WorkerLease;
use futures_util::StreamExt;
use rand::Rng;
use sha2::{Digest, Sha256};
use tombstone_domain::config::WebhookConfig;
use tombstone_domain::time::{Clock, Timestamp};
use tombstone_domain::webhook::{DeliveryError, SCHEDULE, secret_key, sign};
use tombstone_store::{AttemptOutcome, DueDelivery, Store, StoreError, WebhookEndpoint};

/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How many deliveries are in flight at once.
const CONCURRENCY: usize = 16;
/// Events fanned out per endpoint per pass.
const FAN_OUT_BATCH: u32 = 1000;
/// Deliveries attempted per pass.
const DISPATCH_BATCH: u32 = 256;

/// One endpoint with its signing key.
#[derive(Clone)]
struct Endpoint {
    spec: WebhookEndpoint,
    key: Vec<u8>,
}

/// The stable id of an endpoint: derived from its URL, so it survives restarts.
#[must_use]
pub fn endpoint_id(url: &str) -> String {
    format!("wh_{}", &hex::encode(Sha256::digest(url.as_bytes()))[..16])
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayPass {
    pub fanned_out: u64,
    pub attempted: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// The relay.
#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    endpoints: Arc<Vec<Endpoint>>,
    client: reqwest::Client,
    attempt_timeout: Duration,
    /// The safety-net poll: commits of this process wake the relay at once.
    poll: Duration,
    /// When the retries this process scheduled come due (µs): the relay wakes for them
    /// without waiting for the poll. Bounded; beyond it the poll finds them.
    retries: Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>,
    /// One relay per deployment sends: the holder of the lease [`LEASE`].
    lease: Arc<WorkerLease>,
}

/// The name of the relay's lease in the database.
pub const LEASE: &str = "webhooks";

/// Retry instants the relay keeps in memory at most.
const TRACKED_RETRIES: usize = 10_000;

impl Relay {
    /// Builds the relay for the configured webhooks.
    ///
    /// # Errors
    /// A secret that does not decode, or an HTTP client that cannot be built.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, webhooks: &[WebhookConfig]) -> anyhow::Result<Self> {
        let mut endpoints = Vec::new();
        for (i, w) in webhooks.iter().enumerate() {
            let key = secret_key(&w.secret).map_err(|e| anyhow::anyhow!("webhooks[{i}].secret: {e}"))?;
            reqwest::Url::parse(&w.url).map_err(|e| anyhow::anyhow!("webhooks[{i}].url: {e}"))?;
            endpoints.push(Endpoint {
                spec: WebhookEndpoint {
                    id: endpoint_id(&w.url),
                    url: w.url.clone(),
                    events: w.events.clone(),
                    tenant: w.tenant.clone(),
                },
                key,
            });
        }
        let client =
            reqwest::Client::builder().user_agent(concat!("tombstone-webhooks/", env!("CARGO_PKG_VERSION"))).build()?;
        Ok(Self {
            endpoints: Arc::new(endpoints),
            client,
            attempt_timeout: ATTEMPT_TIMEOUT,
            poll: tombstone_domain::config::DEFAULT_EVENTS_POLL,
            retries: Arc::default(),
            lease: Arc::new(WorkerLease::new(store.clone(), clock.clone(), LEASE)),
            store,
            clock,
        })
    }

    /// The same relay with another time limit per attempt (default [`ATTEMPT_TIMEOUT`]).
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The same relay with another safety-net poll (`events.poll_interval`).
    #[must_use]
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The same relay with another lease (a shorter time to live, another holder: tests).
    #[must_use]
    pub fn with_lease(mut self, lease: WorkerLease) -> Self {
        self.lease = Arc::new(lease);
        self
    }

    /// Notes a retry this process scheduled, so the relay wakes when it comes due.
    fn track_retry(&self, at: Timestamp) {
        let mut retries = self.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if retries.len() < TRACKED_RETRIES {
            retries.insert(at.as_micros());
        }
    }

    /// How long to sleep after a pass that started at `started`: until the next tracked
    /// retry, at most the poll. Retries due when the pass started were its work.
    fn next_wait(&self, started: Timestamp) -> Duration {
        let mut retries = self.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *retries = retries.split_off(&(started.as_micros() + 1));
        match retries.first() {
            Some(&at) => {
                let micros = at.saturating_sub(self.clock.now().as_micros()).max(0);
                Duration::from_micros(micros.unsigned_abs()).min(self.poll)
            }
            None => self.poll,
        }
    }

    /// Whether any endpoint is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn specs(&self) -> Vec<WebhookEndpoint> {
        self.endpoints.iter().map(|e| e.spec.clone()).collect()
    }

    /// Registers the endpoints with the store (new ones start after the newest event);
    /// endpoints that left the config are marked removed and their pending deliveries
    /// cancelled.
    ///
    /// # Errors
    /// The store failed.
    pub async fn register(&self) -> Result<(), StoreError> {
        let states = self.store.sync_webhook_endpoints(&self.specs(), self.clock.now()).await?;
        for e in &states {
            match self.endpoints.iter().find(|c| c.spec.id == e.id) {
                // The id is what tenants and metrics show; the log ties it to the host
                // (the full URL may carry a token).
                Some(c) => tracing::info!(
                    "endpoint.id" = %e.id,
                    "endpoint.host" = reqwest::Url::parse(&c.spec.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default(),
                    "webhook endpoint configured"
                ),
                None if e.removed_at.is_some() => tracing::info!(
                    "endpoint.id" = %e.id,
                    "webhook endpoint is no longer configured; its pending deliveries are cancelled"
                ),
                None => {}
            }
        }
        Ok(())
    }

    /// One pass: fan out new events, then attempt due deliveries until none is due.
    ///
    /// # Errors
    /// The store failed.
    pub async fn run_once(&self) -> Result<RelayPass, StoreError> {
        let mut pass = RelayPass::default();
        if self.endpoints.is_empty() {
            return Ok(pass);
        }
        let specs = self.specs();
        loop {
            let n = self.store.fan_out_webhooks(&specs, self.clock.now(), FAN_OUT_BATCH).await?;
            pass.fanned_out += n;
            if n < u64::from(FAN_OUT_BATCH) {
                break;
            }
        }
        // Delivering a record's event makes its next event the head of the queue, so keep
        // going until nothing is due; failures are rescheduled into the future.
        loop {
            let due = self.store.due_deliveries(self.clock.now(), DISPATCH_BATCH).await?;
            if due.is_empty() {
                break;
            }
            pass.attempted += due.len() as u64;
            let outcomes: Vec<Result<bool, StoreError>> =
                futures_util::stream::iter(due).map(|d| self.attempt(d)).buffer_unordered(CONCURRENCY).collect().await;
            for outcome in outcomes {
                if outcome? {
                    pass.delivered += 1;
                } else {
                    pass.failed += 1;
                }
            }
        }
        Ok(pass)
    }

    /// Runs passes until cancelled: after every commit that wrote events, when a retry it
    /// scheduled comes due, and every poll interval (other processes' events, their retries).
    ///
    /// A pass runs only while this replica holds the lease [`LEASE`] (renewed while it
    /// runs), so one replica of a deployment sends at a time; the others try to take the
    /// lease at least every third of its time to live, and a killed holder's deliveries
    /// are taken over, from their state in the database, once its lease expires. The
    /// lease is released on shutdown, so another replica takes over at its next try.
    pub async fn run(self, mut cancel: tokio::sync::watch::Receiver<bool>) {
        if let Err(e) = self.register().await {
            tracing::error!(error = %e, "webhook relay could not register its endpoints");
        }
        if self.endpoints.is_empty() {
            // Nothing to send, and nothing to hold: the lease stays free for a replica
            // whose config has endpoints.
            let _ = cancel.changed().await;
            return;
        }
        let changes = self.store.changes();
        let standby = self.poll.min(self.lease.ttl() / 3);
        loop {
            let notified = changes.notified();
            let started = self.clock.now();
            // A replica that does not hold the lease ignores commits (it would try to
            // claim on every one) and tries again after `standby`.
            let (wait, woken_by_commits) = match self.lease.hold(self.run_once()).await {
                Ok(Some(Ok(_))) => (self.next_wait(started), true),
                Ok(None) => (standby, false),
                Ok(Some(Err(e))) | Err(e) => {
                    tracing::warn!(error = %e, "webhook relay pass failed; retrying");
                    (self.poll.min(Duration::from_secs(1)), true)
                }
            };
            tokio::select! {
                () = notified, if woken_by_commits => {}
                () = tokio::time::sleep(wait) => {}
                _ = cancel.changed() => break,
            }
        }
        self.lease.release().await;
    }

    /// Sends one delivery and records the outcome; `true` when delivered.
    async fn attempt(&self, due: DueDelivery) -> Result<bool, StoreError> {
        let Some(endpoint) = self.endpoints.iter().find(|e| e.spec.id == due.delivery.endpoint_id) else {
            // Its endpoint left the config (registering cancels those; this one was made
            // pending since, or by a process with another config): nothing can be sent.
            tracing::warn!("delivery.id" = %due.delivery.id, "endpoint.id" = %due.delivery.endpoint_id, "webhook delivery cancelled: its endpoint is not configured");
            let outcome = AttemptOutcome::Cancelled { error: DeliveryError::EndpointRemoved };
            self.store.record_attempt(&due.delivery.id, self.clock.now(), outcome).await?;
            return Ok(false);
        };
        let Some(event) = due.event else {
            // Its event was cleaned out of the outbox: there is nothing to send, and a
            // pending delivery would hold its record's lane for ever.
            tracing::warn!("delivery.id" = %due.delivery.id, "endpoint.id" = %endpoint.spec.id, "webhook delivery cancelled: its event is no longer in the outbox");
            let outcome = AttemptOutcome::Cancelled { error: DeliveryError::EventGone };
            self.store.record_attempt(&due.delivery.id, self.clock.now(), outcome).await?;
            return Ok(false);
        };
        let body = event.envelope().to_string();
        let now = self.clock.now();
        let timestamp = now.as_micros() / 1_000_000;
        let signature = sign(&endpoint.key, &event.id, timestamp, body.as_bytes());
        let result = self
            .client
            .post(&endpoint.spec.url)
            .timeout(self.attempt_timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let attempts = due.delivery.attempts + 1;
        let (status, error, retry_after) = match result {
            Ok(response) if response.status().is_success() => {
                let status = response.status().as_u16();
                self.store.record_attempt(&due.delivery.id, now, AttemptOutcome::Delivered { status }).await?;
                return Ok(true);
            }
            Ok(response) if response.status().as_u16() == 410 => {
                tracing::warn!("endpoint.id" = %endpoint.spec.id, "webhook endpoint answered 410 Gone; disabling it");
                self.store.record_attempt(&due.delivery.id, now, AttemptOutcome::EndpointGone).await?;
                return Ok(false);
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(response.headers().get("retry-after").and_then(|v| v.to_str().ok()));
                (Some(status), DeliveryError::Http(status), retry_after)
            }
            Err(e) => {
                let class = classify(&e);
                // The operator's copy: the cause chain, without the URL (it may carry a
                // token; the endpoint id names the endpoint).
                tracing::warn!(
                    "endpoint.id" = %endpoint.spec.id,
                    "delivery.id" = %due.delivery.id,
                    error = %tombstone_store::cause_chain(&e.without_url()),
                    class = %class,
                    "webhook delivery attempt failed"
                );
                (None, class, None)
            }
        };
        metrics::counter!("tombstone_webhook_failures_total", "endpoint" => endpoint.spec.id.clone()).increment(1);
        let outcome = match next_attempt(attempts, retry_after) {
            Some(delay) => {
                let next_attempt_at = now.saturating_add(delay);
                self.track_retry(next_attempt_at);
                AttemptOutcome::Retry { status, error, next_attempt_at }
            }
            None => AttemptOutcome::GiveUp { status, error },
        };
        self.store.record_attempt(&due.delivery.id, now, outcome).await?;
        Ok(false)
    }
}

/// The class of a transport failure (what tenants see).
fn classify(e: &reqwest::Error) -> DeliveryError {
    if is_tls(e) {
        DeliveryError::Tls
    } else if e.is_timeout() {
        DeliveryError::Timeout
    } else if e.is_connect() {
        DeliveryError::Connect
    } else if e.is_redirect() {
        DeliveryError::Redirect
    } else if e.is_body() || e.is_decode() {
        DeliveryError::Body
    } else {
        DeliveryError::Request
    }
}

/// Whether a rustls error is somewhere in the chain. rustls reports through io errors
/// that wrap it (an `InvalidData` inside an `Other`), and `io::Error::source` skips the
/// wrapped error itself, so io errors are opened with `get_ref`.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
    {
        return is_tls(inner);
    }
    e.source().is_some_and(is_tls)
}

/// When to try again after `attempts` failed attempts: the schedule's next step with
/// ±10% jitter, or later if the endpoint asked for it; `None` when the schedule is spent.
#[must_use]
pub fn next_attempt(attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let step = *SCHEDULE.get(attempts as usize)?;
    let jitter = rand::rng().random_range(0.9..1.1);
    let delay = step.mul_f64(jitter);
    Some(match retry_after {
        Some(asked) => delay.max(asked.min(Duration::from_secs(24 * 3600))),
        None => delay,
    })
}

/// Reads `Retry-After` as seconds (an HTTP date is read too).
fn retry_after(value: Option<&str>) -> Option<Duration> {
    let value = value?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is an RFC 2822 date.
    let when = Timestamp::parse_rfc2822(&value.replace("GMT", "+0000")).ok()?;
    let micros = when.as_micros() - tombstone_domain::time::SystemClock.now().as_micros();
    (micros > 0).then(|| Duration::from_micros(micros.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_with_jitter_and_retry_after() {
        let d = next_attempt(1, None).unwrap();
        assert!(d >= Duration::from_millis(4500) && d <= Duration::from_millis(5500), "{d:?}");
        let d = next_attempt(2, None).unwrap();
        assert!(d >= Duration::from_secs(270) && d <= Duration::from_secs(330), "{d:?}");
        let d = next_attempt(1, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(d, Duration::from_secs(60));
        assert!(next_attempt(10, None).is_none());
        assert_eq!(retry_after(Some("120")), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(Some("Sun, 06 Nov 1994 08:49:37 GMT")), None, "a past date means now");
        assert!(retry_after(Some("soon")).is_none());
    }
}
