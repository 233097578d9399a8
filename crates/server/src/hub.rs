//! The live event hub behind `GET /v1/events/stream`: one follower per process reads new
//! outbox rows once and fans them out to every open stream, which filters by its tenant
//! and type; the hub also admits streams (per-tenant and total caps) and closes the
//! streams of a revoked key.
//!
//! - **One reader.** A stream reads the store only to catch up (from its `Last-Event-ID`,
//!   `after`, or after falling behind); live events come from the hub's broadcast. The
//!   follower runs while at least one stream is open and stops with the last one.
//! - **Woken by commits.** The follower waits on [`Store::changes`], which every commit
//!   that wrote events wakes; the poll (`events.poll_interval`) only catches commits of
//!   other processes.
//! - **No gap, no duplicate.** A stream subscribes *before* it catches up from the store,
//!   so every event is either in its catch-up or in its broadcast queue, and it drops
//!   anything at or below the last seq it has passed. SQLite assigns outbox seqs in
//!   commit order (one writer at a time), so the follower never sees a seq after a larger
//!   one.
//! - **Falling behind.** A stream whose queue overflowed ([`BROADCAST_CAPACITY`] events
//!   unread) catches up from the store by seq, then goes back to the broadcast.
//! - **Revocation.** Revoking a key through the API closes its streams at once; a
//!   revocation elsewhere (the CLI, another replica) is found by the follower, which
//!   checks the keys of the open streams every [`KEY_CHECK`] — within the 1 second
//!   SPEC §3 promises.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tombstone_domain::config::EventsConfig;
use tombstone_domain::events::Event;
use tombstone_store::{EventQuery, Store, StoreError};

use crate::error::ApiError;

/// Events a stream may leave unread before it falls behind and catches up from the store.
pub const BROADCAST_CAPACITY: usize = 1024;
/// How often the keys of open streams are checked against the store.
pub const KEY_CHECK: Duration = Duration::from_millis(500);
/// Rows per outbox read (the follower's and a catching-up stream's).
pub const PAGE: u32 = 500;
/// What a refused stream is told to wait before trying again.
const RETRY_AFTER_SECS: u64 = 5;

/// The hub of one process (cheap to clone).
#[derive(Clone)]
pub struct EventHub(Arc<HubInner>);

struct HubInner {
    store: Arc<dyn Store>,
    poll: Duration,
    max_streams: usize,
    max_per_tenant: usize,
    /// The running follower's channel; `None` while no stream is open. An async lock:
    /// starting the follower reads the store while holding it.
    feed: tokio::sync::Mutex<Option<Follower>>,
    streams: Mutex<Registry>,
}

/// The running follower: its broadcast and its task.
type Follower = (broadcast::Sender<Arc<Event>>, tokio::task::JoinHandle<()>);

/// The open streams.
#[derive(Default)]
struct Registry {
    next_id: u64,
    per_tenant: HashMap<String, usize>,
    /// Stream id → its key id and the sender that closes it.
    open: HashMap<u64, (String, oneshot::Sender<()>)>,
    /// Set once the server shuts down: open streams are closed, new ones refused.
    closing: bool,
}

/// A stream's admission: holds its slot until dropped.
pub struct StreamSlot {
    hub: Arc<HubInner>,
    id: u64,
    tenant: String,
    /// Resolves when the stream must close (its key was revoked, or the server stops).
    pub closed: oneshot::Receiver<()>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut reg = self.hub.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        reg.open.remove(&self.id);
        if let Some(n) = reg.per_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                reg.per_tenant.remove(&self.tenant);
            }
        }
        metrics::gauge!("tombstone_event_streams").set(reg.open.len() as f64);
    }
}

impl EventHub {
    /// A hub over `store` with the caps and poll of `config`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, config: &EventsConfig) -> Self {
        Self(Arc::new(HubInner {
            store,
            poll: config.poll_interval,
            max_streams: config.max_streams as usize,
            max_per_tenant: config.max_streams_per_tenant as usize,
            feed: tokio::sync::Mutex::new(None),
            streams: Mutex::new(Registry::default()),
        }))
    }

    /// Open streams, all tenants together.
    #[must_use]
    pub fn open_streams(&self) -> usize {
        self.0.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).open.len()
    }

    /// Takes a stream slot for a key of `tenant`.
    ///
    /// # Errors
    /// 503 with `Retry-After` when the tenant's or the server's streams are all taken.
    pub fn admit(&self, tenant: &str, key_id: &str) -> Result<StreamSlot, ApiError> {
        let mut reg = self.0.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = |message: String| ApiError::StreamsFull { message, retry_after_secs: RETRY_AFTER_SECS };
        if reg.closing {
            return Err(full("the server is shutting down; resume with Last-Event-ID on another".into()));
        }
        if reg.open.len() >= self.0.max_streams {
            return Err(full(format!("the server already serves {} event streams; try again later", reg.open.len())));
        }
        let of_tenant = reg.per_tenant.get(tenant).copied().unwrap_or(0);
        if of_tenant >= self.0.max_per_tenant {
            return Err(full(format!(
                "this tenant already has {of_tenant} open event streams; close one or try later"
            )));
        }
        reg.next_id += 1;
        let id = reg.next_id;
        let (close, closed) = oneshot::channel();
        reg.open.insert(id, (key_id.to_string(), close));
        *reg.per_tenant.entry(tenant.to_string()).or_default() += 1;
        metrics::gauge!("tombstone_event_streams").set(reg.open.len() as f64);
        Ok(StreamSlot { hub: self.0.clone(), id, tenant: tenant.to_string(), closed })
    }

    /// Closes every open stream of a key (it was revoked through this process).
    pub fn close_key(&self, key_id: &str) {
        self.0.close_keys(&|k| k == key_id);
    }

    /// Closes every open stream and refuses new ones: the server is shutting down, and a
    /// graceful shutdown waits for open responses, which a stream never ends by itself.
    /// Clients resume with `Last-Event-ID`, so nothing is lost.
    pub fn close_all(&self) {
        self.0.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).closing = true;
        self.0.close_keys(&|_| true);
    }

    /// The live feed: every event committed after the follower's position, in seq order.
    /// Starts the follower when no stream had it running.
    ///
    /// # Errors
    /// The store cannot tell where the outbox ends.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<Event>>, StoreError> {
        let mut feed = self.0.feed.lock().await;
        // A follower that died (a panic) is replaced rather than left silent.
        if let Some((tx, task)) = feed.as_ref()
            && !task.is_finished()
        {
            return Ok(tx.subscribe());
        }
        // Read before the subscriber's catch-up, so whatever the follower skips here the
        // catch-up finds.
        let start = self.0.store.last_event_seq().await?;
        let (tx, rx) = broadcast::channel(BROADCAST_CAPACITY);
        let task = tokio::spawn(follow(self.0.clone(), tx.clone(), start));
        *feed = Some((tx, task));
        Ok(rx)
    }

    /// Reads the store for one tenant's events after `after` (a stream catching up).
    ///
    /// # Errors
    /// The store failed.
    pub async fn catch_up(&self, tenant: &str, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.0.store.list_events(tenant, query).await
    }
}

impl HubInner {
    fn close_keys(&self, revoked: &dyn Fn(&str) -> bool) {
        let mut reg = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ids: Vec<u64> = reg.open.iter().filter(|(_, (key, _))| revoked(key)).map(|(id, _)| *id).collect();
        for id in ids {
            // The slot stays counted until the stream drops it; the stream ends at once.
            if let Some((key, close)) = reg.open.get_mut(&id) {
                tracing::info!("key.id" = %key, "closing an event stream");
                let (dead, _) = oneshot::channel();
                let _ = std::mem::replace(close, dead).send(());
            }
        }
    }

    /// Closes the streams whose key no longer exists (revoked by another process).
    async fn check_keys(&self) {
        let keys: HashSet<String> = {
            let reg = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            reg.open.values().map(|(key, _)| key.clone()).collect()
        };
        let mut gone = HashSet::new();
        for key in keys {
            match self.store.find_key(&key).await {
                Ok(None) => {
                    gone.insert(key);
                }
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not check the keys of open event streams"),
            }
        }
        if !gone.is_empty() {
            self.close_keys(&|k| gone.contains(k));
        }
    }
}

/// The follower: reads what was committed after `after` when a commit wakes it (or the
/// poll fires), broadcasts it, and checks the open streams' keys; stops when no stream
/// listens any more.
async fn follow(hub: Arc<HubInner>, tx: broadcast::Sender<Arc<Event>>, mut after: i64) {
    let changes = hub.store.changes();
    let mut key_check = tokio::time::interval(KEY_CHECK);
    key_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Created before reading: a commit during the read still wakes the next wait.
        let notified = changes.notified();
        loop {
            let query = EventQuery { after, collection: None, types: Vec::new(), limit: PAGE };
            match hub.store.list_all_events(&query).await {
                Ok(events) => {
                    let full = events.len() >= PAGE as usize;
                    for e in events {
                        after = e.seq;
                        // No receiver is not an error: the check below stops the follower.
                        let _ = tx.send(Arc::new(e));
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the event hub could not read the outbox; retrying");
                    break;
                }
            }
        }
        let mut notified = std::pin::pin!(notified);
        let poll = tokio::time::sleep(hub.poll);
        let mut poll = std::pin::pin!(poll);
        loop {
            if tx.receiver_count() == 0 {
                // Under the lock a new stream would subscribe through: either it sees the
                // follower gone and starts another, or this one sees it and goes on.
                let mut feed = hub.feed.lock().await;
                if tx.receiver_count() == 0 {
                    *feed = None;
                    return;
                }
            }
            tokio::select! {
                () = &mut notified => break,
                () = &mut poll => break,
                _ = key_check.tick() => hub.check_keys().await,
            }
        }
    }
}
