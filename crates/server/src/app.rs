//! The application: shared state, the router, and `serve` with its background tasks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use tokio::net::TcpListener;
use tombstone_domain::config::{EventsConfig, PurgeConfig, Schema, ServerLimits, WebhookConfig};
use tombstone_domain::time::{Clock, Timestamp};
use tombstone_store::{IDEMPOTENCY_TTL_MICROS, Store};

use crate::auth::KeyCache;
use crate::error::ApiError;
use crate::hub::EventHub;
use crate::lease::WorkerLease;
use crate::purge::PurgeWorker;
use crate::search::SearchIndex;
use crate::supervise::{Backoff, supervise};
use crate::webhooks::Relay;
use crate::{request_id, routes, telemetry};

/// The largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler can reach: one shared allocation, so handing it to a handler costs
/// one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Clone)]
pub struct AppInner {
    pub schema: Arc<Schema>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub keys: KeyCache,
    /// `/openapi.json`, rendered once: the schema does not change while serving.
    pub openapi: Arc<String>,
    /// The full-text index (absent only when no collection has a `search` field).
    pub search: Option<Arc<SearchIndex>>,
    /// Timeouts and concurrency bounds that [`serve`] applies to connections.
    pub limits: ServerLimits,
    /// `[events]`: the followers' safety-net poll and the stream caps.
    pub events: EventsConfig,
    /// The live event hub of SSE streams.
    pub hub: EventHub,
    /// Serialises this process's checks of the audit chain.
    pub verifier: crate::audit_verify::Verifier,
    /// Where the bytes of `file` fields are (§15); `None`: file endpoints answer 503.
    pub files: Option<Arc<crate::files::Files>>,
}

impl AppState {
    /// State over a migrated store.
    #[must_use]
    pub fn new(schema: Arc<Schema>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        telemetry::handle();
        let openapi = Arc::new(crate::openapi::document(&schema).to_string());
        let events = EventsConfig::default();
        let hub = EventHub::new(store.clone(), &events);
        Self(Arc::new(AppInner {
            schema,
            store,
            clock,
            keys: KeyCache::default(),
            openapi,
            search: None,
            limits: ServerLimits::default(),
            events,
            hub,
            verifier: crate::audit_verify::Verifier::default(),
            files: None,
        }))
    }

    /// The same state with other connection limits (`[server]` in the config).
    #[must_use]
    pub fn with_limits(mut self, limits: ServerLimits) -> Self {
        Arc::make_mut(&mut self.0).limits = limits;
        self
    }

    /// The same state with the `[events]` settings (caps, poll) of a config.
    #[must_use]
    pub fn with_events(mut self, events: EventsConfig) -> Self {
        let inner = Arc::make_mut(&mut self.0);
        inner.hub = EventHub::new(inner.store.clone(), &events);
        inner.events = events;
        self
    }

    /// The same state with a files store.
    #[must_use]
    pub fn with_files(mut self, files: Arc<crate::files::Files>) -> Self {
        Arc::make_mut(&mut self.0).files = Some(files);
        self
    }

    /// The same state with a search index.
    #[must_use]
    pub fn with_search(mut self, index: Arc<SearchIndex>) -> Self {
        Arc::make_mut(&mut self.0).search = Some(index);
        self
    }
}

impl AppInner {
    /// The current instant.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/openapi.json", get(routes::health::openapi))
        .route("/metrics", get(telemetry::metrics_endpoint))
        .merge(routes::keys::router())
        .merge(routes::audit::router())
        .merge(routes::events::router())
        .merge(routes::webhooks::router())
        .merge(routes::retention::router())
        .merge(routes::deletions::router())
        .merge(routes::whoami::router())
        .merge(routes::collections::router())
        .merge(crate::ui::router())
        .merge(routes::history::router())
        .merge(routes::files::router())
        .merge(routes::records::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), request_id::middleware))
        .with_state(state)
}

/// What the background workers need besides the state.
#[derive(Clone)]
pub struct Workers {
    /// The webhook relay (it does nothing without endpoints).
    pub relay: Relay,
    /// The NATS JetStream relay, when `events.nats` is set.
    pub nats: Option<Arc<crate::nats::NatsRelay>>,
    /// The purge worker.
    pub purge: PurgeWorker,
    /// How long outbox rows are kept once every sink has them.
    pub outbox_retention: Duration,
}

impl Workers {
    /// Workers for a config.
    ///
    /// # Errors
    /// A webhook that cannot be used.
    pub fn new(
        state: &AppState,
        webhooks: &[WebhookConfig],
        purge: PurgeConfig,
        outbox_retention: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            relay: Relay::new(state.store.clone(), state.clock.clone(), webhooks)?
                .with_poll(state.events.poll_interval),
            nats: state.events.nats.as_ref().map(|url| {
                Arc::new(
                    crate::nats::NatsRelay::new(
                        state.store.clone(),
                        state.clock.clone(),
                        url,
                        &state.events.nats_stream,
                    )
                    .with_poll(state.events.poll_interval),
                )
            }),
            purge: PurgeWorker::new(state.store.clone(), state.clock.clone(), state.schema.clone(), purge),
            outbox_retention,
        })
    }
}

/// Serves the API on `listener` until `shutdown` resolves, with the background workers.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    state: AppState,
    workers: Workers,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cancel = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // Every worker is supervised: a panic is logged, counted and followed by a restart
    // with backoff (see `supervise`), instead of leaving the worker dead until shutdown.
    let backoff = Backoff::default();
    let rx = || cancel.1.clone();
    let (s, retention, c) = (state.clone(), workers.outbox_retention, rx());
    tasks.spawn(supervise("housekeeping", backoff, rx(), move || housekeeping(s.clone(), retention, c.clone())));
    let (relay, c) = (workers.relay, rx());
    tasks.spawn(supervise("relay", backoff, rx(), move || relay.clone().run(c.clone())));
    if let Some(nats) = workers.nats {
        let c = rx();
        tasks.spawn(supervise("nats_relay", backoff, rx(), move || nats.clone().run(c.clone())));
    }
    let (purge, c) = (workers.purge, rx());
    tasks.spawn(supervise("purge", backoff, rx(), move || purge.clone().run(c.clone())));
    let (s, c) = (state.clone(), rx());
    tasks.spawn(supervise("eventual_cascades", backoff, rx(), move || eventual_cascades(s.clone(), c.clone())));
    let (s, c) = (state.clone(), rx());
    tasks.spawn(supervise("cache_sync", backoff, rx(), move || cache_sync(s.clone(), c.clone())));
    let (s, c) = (state.clone(), rx());
    tasks.spawn(supervise("audit_verify", backoff, rx(), move || crate::audit_verify::run(s.clone(), c.clone())));
    if let Some(files) = state.files.clone() {
        let (store, clock, c) = (state.store.clone(), state.clock.clone(), rx());
        tasks.spawn(supervise("files", backoff, rx(), move || {
            crate::files::run(store.clone(), files.clone(), clock.clone(), c.clone())
        }));
    }
    let (s, c) = (state.clone(), rx());
    tasks.spawn(supervise("erasure_followups", backoff, rx(), move || erasure_followups(s.clone(), c.clone())));
    // The indexer runs on its own thread in the idle CPU class, with a runtime of its own:
    // reading the outbox and committing segments never occupies a request's worker.
    let indexer = match state.search.clone() {
        Some(index) => {
            let (store, schema, cancel) = (state.store.clone(), state.schema.clone(), rx());
            let poll = state.events.poll_interval;
            Some(std::thread::Builder::new().name("tombstone-indexer".into()).spawn(move || {
                tombstone_store::priority::lower_current_thread();
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(supervise("indexer", backoff, cancel.clone(), move || {
                        crate::search::run(
                            index.clone(),
                            store.clone(),
                            schema.clone(),
                            RECONCILE_EVERY,
                            poll,
                            cancel.clone(),
                        )
                    })),
                    Err(e) => tracing::error!(error = %e, "cannot start the search indexer"),
                }
            })?)
        }
        None => None,
    };
    // Streams never end by themselves, and the graceful shutdown waits for open responses:
    // at shutdown the hub closes every stream (clients resume with Last-Event-ID).
    let hub = state.hub.clone();
    let shutdown = async move {
        shutdown.await;
        hub.close_all();
    };
    let result = serve_http(listener, state, shutdown).await;
    let _ = cancel.0.send(true);
    while tasks.join_next().await.is_some() {}
    if let Some(indexer) = indexer {
        let _ = tokio::task::spawn_blocking(move || indexer.join()).await;
    }
    result
}

/// Serves HTTP/1 on `listener` until `shutdown`, then waits for open requests to finish.
///
/// `axum::serve` has no read timeouts, so a client that sends its headers or body a byte at a
/// time (slowloris) could hold a connection, and with enough of them the server, for ever.
/// Here hyper reads headers under `header_read_timeout` (then closes the connection), a
/// body that stays silent for `body_read_timeout` fails its read (a 408 problem), at most
/// `max_connections` are open (more wait in the listen backlog) and at most
/// `max_concurrent_requests` are handled at once (more wait for a slot). A request holds its
/// slot until its response head is ready, so event streams do not count once they run.
async fn serve_http(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    let service = tower::ServiceBuilder::new()
        .layer(tower::limit::ConcurrencyLimitLayer::new(limits.max_concurrent_requests as usize))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_read_timeout))
        .service(router(state));
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // The peer gave up before we accepted: nothing to do.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) => continue,
                // Out of file descriptors and the like: wait rather than spin (as axum does).
                Err(e) => {
                    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let connection =
            graceful.watch(http.serve_connection(io, hyper_util::service::TowerToHyperService::new(service.clone())));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Open requests get a bounded time to finish; a stuck one does not keep the process.
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!(seconds = DRAIN_TIMEOUT.as_secs(), "requests still open at shutdown were cut off");
    }
    Ok(())
}

/// Works through eventual cascades: after every commit that wrote events (a deletion that
/// queues a cascade writes its events), and every `events.poll_interval` in case another
/// process queued work. Each batch is one transaction, so a crash resumes where it stopped.
/// Only the holder of the lease `eventual_cascades` works (one replica per deployment, so
/// the steps of an operation run in order and none twice); the others try to take it every
/// poll, and take a killed holder's work over once its lease expired.
async fn eventual_cascades(state: AppState, mut cancel: tokio::sync::watch::Receiver<bool>) {
    let changes = state.store.changes();
    let lease = WorkerLease::new(state.store.clone(), state.clock.clone(), EVENTUAL_LEASE);
    loop {
        let notified = changes.notified();
        // A replica that does not hold the lease ignores commits (it would try to claim on
        // every one) and tries again after the poll interval.
        let held = match lease.hold(state.store.run_eventual(EVENTUAL_BATCH, state.now())).await {
            Ok(Some(Ok(n))) => {
                if n > 0 {
                    tracing::info!(deleted = n, "eventual cascade progressed");
                }
                true
            }
            Ok(None) => false,
            Ok(Some(Err(e))) | Err(e) => {
                tracing::warn!(error = %e, "eventual cascade step failed; retrying");
                true
            }
        };
        tokio::select! {
            () = notified, if held => {}
            () = tokio::time::sleep(state.events.poll_interval) => {}
            _ = cancel.changed() => break,
        }
    }
    lease.release().await;
}

/// The name of the eventual-cascade worker's lease.
pub const EVENTUAL_LEASE: &str = "eventual_cascades";

/// Finishes the `wal` step of erasures whose request could not (a reader was on an older
/// snapshot), once a second — the request tries at once, so this only picks up what it
/// left (or a crash did). The `search` step is the indexer's.
async fn erasure_followups(state: AppState, mut cancel: tokio::sync::watch::Receiver<bool>) {
    loop {
        match state.store.finish_erasure_wal(ERASURE_WAL_WAIT).await {
            Ok(n) if n > 0 => tracing::info!(steps = n, "erasures: the WAL no longer holds their values"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "erasures: the WAL could not be truncated; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.changed() => break,
        }
    }
}

/// How long the erasure worker's checkpoint waits for readers on an older snapshot: short,
/// because live writes wait meanwhile (the checkpoint runs during the live writer's turn);
/// a reader that stays longer (a backup) only delays the step to a later second.
const ERASURE_WAL_WAIT: Duration = Duration::from_millis(50);

/// Once a second, tells the read cache what other processes changed (writes made through
/// this process invalidate at once).
async fn cache_sync(state: AppState, mut cancel: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = state.store.sync_cache().await {
                    tracing::warn!(error = %e, "could not sync the cache with the outbox");
                }
            }
            _ = cancel.changed() => break,
        }
    }
}

/// How long a shutdown waits for open requests to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the in-server reconciler compares the index with the database.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(600);

/// Children deleted per eventual-cascade transaction.
pub const EVENTUAL_BATCH: u32 = 500;

/// The name of the clean-ups' lease.
pub const HOUSEKEEPING_LEASE: &str = "housekeeping";

/// Periodic upkeep, hourly: expired idempotency keys go, and outbox rows past their
/// retention that every sink has received go, in batches. Only the holder of the lease
/// [`HOUSEKEEPING_LEASE`] cleans up, so replicas do not repeat each other's deletes; a
/// replica that finds it held skips that hour's turn (the holder is cleaning).
async fn housekeeping(state: AppState, outbox_retention: Duration, mut cancel: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    let lease = WorkerLease::new(state.store.clone(), state.clock.clone(), HOUSEKEEPING_LEASE);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match lease.hold(clean_up(&state, outbox_retention)).await {
                    Ok(Some(())) => lease.release().await,
                    Ok(None) => tracing::debug!("clean-ups skipped: another replica holds their lease"),
                    Err(e) => tracing::warn!(error = %e, "could not claim the clean-ups' lease; retrying in an hour"),
                }
            }
            _ = cancel.changed() => break,
        }
    }
}

/// One round of clean-ups (see [`housekeeping`]).
async fn clean_up(state: &AppState, outbox_retention: Duration) {
    let before = Timestamp::from_micros(state.now().as_micros() - IDEMPOTENCY_TTL_MICROS);
    match state.store.expire_idempotency(before).await {
        Ok(n) if n > 0 => tracing::info!(removed = n, "expired idempotency keys"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not expire idempotency keys"),
    }
    let retention = i64::try_from(outbox_retention.as_micros()).unwrap_or(i64::MAX);
    let before = Timestamp::from_micros(state.now().as_micros().saturating_sub(retention));
    loop {
        match state.store.cleanup_outbox(before, 1000).await {
            Ok(1000) => tokio::task::yield_now().await,
            Ok(n) => {
                if n > 0 {
                    tracing::info!(removed = n, "cleaned up the outbox");
                }
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not clean up the outbox");
                break;
            }
        }
    }
}
