//! The application: shared state, the router, and `serve` with its background tasks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use tokio::net::TcpListener;
use tombstone_domain::config::Schema;
use tombstone_domain::time::{Clock, Timestamp};
use tombstone_store::{IDEMPOTENCY_TTL_MICROS, Store};

use crate::auth::KeyCache;
use crate::error::ApiError;
use crate::{request_id, routes};

/// The largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub schema: Arc<Schema>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub keys: KeyCache,
}

impl AppState {
    /// State over a migrated store.
    #[must_use]
    pub fn new(schema: Arc<Schema>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { schema, store, clock, keys: KeyCache::default() }
    }

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
        .merge(routes::keys::router())
        .merge(routes::audit::router())
        .merge(routes::events::router())
        .merge(routes::records::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, with the background tasks.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cancel = tokio::sync::watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(state.clone(), cancel.1));
    let result = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    let _ = cancel.0.send(true);
    let _ = housekeeping.await;
    result
}

/// Periodic upkeep: expired idempotency keys are removed hourly.
async fn housekeeping(state: AppState, mut cancel: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let before = Timestamp::from_micros(state.now().as_micros() - IDEMPOTENCY_TTL_MICROS);
                match state.store.expire_idempotency(before).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "expired idempotency keys"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not expire idempotency keys"),
                }
            }
            _ = cancel.changed() => break,
        }
    }
}
