//! One holder per deployment for the background workers whose work lives in the shared
//! database (purge and archive passes, the webhook relay, eventual cascades, clean-ups):
//! every replica runs them, but a pass runs only while its replica holds the worker's
//! lease (table `leases`, see [`tombstone_store::WorkerStore`]). The lease is renewed
//! every third of its time to live while the pass runs; a killed replica's lease expires
//! and another replica's next try takes the work over from what the database says (every
//! bit of a worker's progress is in the database, committed batch by batch).
//!
//! A pass that loses its lease (it stalled past its time to live and another replica took
//! over, or the database would not renew it) is dropped between two awaits: a batch is one
//! transaction, so it is done whole or not at all, and the new holder finds what is left.
//! The same lease is taken by `tombstone purge`, so a pass from the command line and one
//! inside `serve` take turns, and the purge's pause and rate cap hold for the deployment.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tombstone_domain::time::{Clock, Timestamp};
use tombstone_store::{Store, StoreError};

/// How long a worker's lease lasts without renewal (by default): a killed replica's work
/// is taken over at most this long (plus one retry interval) after it died.
pub const WORKER_LEASE_TTL: Duration = Duration::from_secs(15);

/// Who this process is in every lease it takes: host, process id and a random tail (a
/// restarted process with a recycled pid is someone else).
#[must_use]
pub fn replica_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "replica".into());
        format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[20..])
    })
}

/// The lease of one worker, as this process sees it.
pub struct WorkerLease {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    name: &'static str,
    holder: String,
    ttl: Duration,
    /// Until when this process holds it, as of its last successful claim: a claim within
    /// the first third of that time is skipped, so a busy worker does not write the lease
    /// row on every pass.
    held_until: Mutex<Option<Timestamp>>,
}

impl WorkerLease {
    /// The lease `name`, held as [`replica_id`] for [`WORKER_LEASE_TTL`].
    #[must_use]
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, name: &'static str) -> Self {
        Self {
            store,
            clock,
            name,
            holder: replica_id().to_string(),
            ttl: WORKER_LEASE_TTL,
            held_until: Mutex::new(None),
        }
    }

    /// The same lease with another time to live (tests shorten it).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same lease under another holder name (a second "replica" inside one test).
    #[must_use]
    pub fn with_holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// Who holds it on this process's behalf.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How long it lasts without renewal.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn held_until(&self) -> Option<Timestamp> {
        *self.held_until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims or renews the lease; whether this process holds it now. Skips the write when
    /// the last claim is less than a third of the time to live old.
    ///
    /// # Errors
    /// The store failed (the lease is then treated as not held).
    pub async fn claim(&self) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let fresh = self.ttl.saturating_sub(self.ttl / 3);
        if self.held_until().is_some_and(|until| until >= now.saturating_add(fresh)) {
            return Ok(true);
        }
        self.renew(now).await
    }

    async fn renew(&self, now: Timestamp) -> Result<bool, StoreError> {
        let was = self.held_until().is_some_and(|until| until > now);
        let result = self.store.claim_lease(self.name, &self.holder, now, self.ttl).await;
        let held = match &result {
            Ok(lease) => lease.is_held_by(&self.holder, now).then_some(lease.expires_at),
            Err(_) => None,
        };
        *self.held_until.lock().unwrap_or_else(PoisonError::into_inner) = held;
        if held.is_some() != was {
            match &result {
                Ok(_) if held.is_some() => {
                    tracing::info!(lease = self.name, holder = %self.holder, "this replica took the worker lease");
                }
                Ok(lease) => tracing::info!(
                    lease = self.name,
                    holder = %lease.holder,
                    "the worker lease is held by another replica"
                ),
                Err(_) => {}
            }
        }
        result.map(|_| held.is_some())
    }

    /// Runs `work` while this process holds the lease, renewing it every third of its time
    /// to live meanwhile. `None` when the lease is another replica's, or when it was lost
    /// while `work` ran (then `work` was dropped between two of its awaits).
    ///
    /// # Errors
    /// The store failed to grant the lease.
    pub async fn hold<F: Future>(&self, work: F) -> Result<Option<F::Output>, StoreError> {
        if !self.claim().await? {
            return Ok(None);
        }
        tokio::pin!(work);
        let every = (self.ttl / 3).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                out = &mut work => return Ok(Some(out)),
                () = tokio::time::sleep(every) => {
                    match self.renew(self.clock.now()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(lease = self.name, holder = %self.holder, "worker lost its lease mid-pass; another replica goes on from the database");
                            return Ok(None);
                        }
                        Err(e) => {
                            tracing::warn!(lease = self.name, error = %e, "worker could not renew its lease; stopping its pass");
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// Gives the lease up (at shutdown, or after a pass that others may follow at once).
    pub async fn release(&self) {
        *self.held_until.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if let Err(e) = self.store.release_lease(self.name, &self.holder, self.clock.now()).await {
            tracing::warn!(lease = self.name, error = %e, "could not release the worker lease; it expires by itself");
        }
    }
}
