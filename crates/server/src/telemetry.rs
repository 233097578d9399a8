//! Prometheus metrics: the recorder (installed once per process), `/metrics`, and the
//! request-duration middleware.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's metrics recorder; installed on first use. `None` when another recorder
/// was installed first (then `/metrics` answers with what it can: nothing).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()
                .and_then(|b| b.install_recorder().ok());
            if let Some(handle) = &handle {
                register_all();
                keep_up(handle.clone());
            }
            handle
        })
        .as_ref()
}

/// How often the recorder's histograms are folded into their buckets.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds the histograms' recorded samples into their buckets every [`UPKEEP_EVERY`], on a
/// thread of its own for the life of the process. The recorder keeps each sample until
/// then (a scrape of `/metrics` folds them too), so without it every request — an
/// unauthenticated one as well — would leave ~16 bytes behind on a server nobody scrapes.
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the metrics upkeep thread: histograms grow until /metrics is scraped");
    }
}

/// Every counter and gauge exists from the start (at zero), so dashboards and alerts do
/// not see a metric appear only after its first event.
fn register_all() {
    for name in [
        "tombstone_soft_delete_total",
        "tombstone_restore_total",
        "tombstone_purge_rows_total",
        "tombstone_purge_job_errors_total",
        "tombstone_erase_total",
        "tombstone_include_deleted_reads_total",
        "tombstone_reads_total",
        "tombstone_cache_hits_total",
        "tombstone_cache_misses_total",
        "tombstone_cache_bypass_total",
        "tombstone_cache_notifications_total",
        "tombstone_cache_listen_reconnects_total",
        "tombstone_webhook_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in ["tombstone_purge_backlog", "tombstone_outbox_backlog", "tombstone_search_drift"] {
        metrics::gauge!(name).set(0.0);
    }
    for worker in crate::supervise::WORKERS {
        metrics::counter!(crate::supervise::PANICS_METRIC, "worker" => worker).increment(0);
    }
}

/// `GET /metrics`: Prometheus text format. Gauges that are cheap to read from the
/// database are refreshed at scrape time.
pub(crate) async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    if let Ok(backlog) = state.store.webhook_backlog().await {
        #[expect(clippy::cast_precision_loss, reason = "a gauge")]
        metrics::gauge!("tombstone_outbox_backlog").set(backlog as f64);
    }
    if state.events.nats.is_some() {
        crate::nats::refresh_backlog(state.store.as_ref()).await;
    }
    // The chain's status as the database has it, whichever replica checked it.
    if let Ok(Some(check)) = state.store.audit_check().await {
        crate::audit_verify::record_metrics(&check);
    }
    let body = handle().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The route template of a path, for the duration histogram's `route` label, and the
/// collection it addresses (record routes only). Computed from the path itself so the
/// measurement can live in the one outer middleware instead of a layer per route.
///
/// Every label comes from a bounded set: a template written here, or a collection for
/// which `is_collection` holds (a configured one). Anything else is `other`, so requests
/// to made-up paths, which need no key, cannot add series to `/metrics` without bound.
#[must_use]
pub fn route_of(path: &str, is_collection: impl Fn(&str) -> bool) -> (&'static str, &str) {
    // On every request: the first four segments on the stack, no allocation. No route has
    // more, and the record patterns below match exact lengths, so a longer path still
    // matches only what its first four segments allow.
    let mut buf = [""; 4];
    let mut n = 0;
    for part in path.trim_start_matches('/').split('/').take(4) {
        buf[n] = part;
        n += 1;
    }
    match &buf[..n] {
        ["ui", ..] => ("/ui", ""),
        ["v1", "whoami"] => ("/v1/whoami", ""),
        ["v1", "collections"] => ("/v1/collections", ""),
        ["healthz"] => ("/healthz", ""),
        ["readyz"] => ("/readyz", ""),
        ["metrics"] => ("/metrics", ""),
        ["openapi.json"] => ("/openapi.json", ""),
        ["v1", "keys", ..] => ("/v1/keys", ""),
        ["v1", "audit", ..] => ("/v1/audit", ""),
        ["v1", "events", "stream"] => ("/v1/events/stream", ""),
        ["v1", "events", ..] => ("/v1/events", ""),
        ["v1", "trash", ..] => ("/v1/trash", ""),
        ["v1", "deletions", ..] => ("/v1/deletions/{id}", ""),
        ["v1", "webhooks", ..] => ("/v1/webhooks", ""),
        ["v1", p, ..] if p.starts_with("purge") => ("/v1/purge", ""),
        ["v1", c] if is_collection(c) => ("/v1/{collection}", c),
        ["v1", c, _] if is_collection(c) => ("/v1/{collection}/{id}", c),
        _ => ("other", ""),
    }
}

/// The `method` label: a method the API knows, or `other` (a client may send any token).
#[must_use]
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_a_bounded_set() {
        let configured = |c: &str| c == "products";
        assert_eq!(route_of("/v1/products", configured), ("/v1/{collection}", "products"));
        assert_eq!(route_of("/v1/products/p1:restore", configured), ("/v1/{collection}/{id}", "products"));
        assert_eq!(route_of("/v1/made-up", configured), ("other", ""));
        assert_eq!(route_of("/v1/made-up/x", configured), ("other", ""));
        assert_eq!(route_of("/v1/keys/key_1", configured), ("/v1/keys", ""));
        assert_eq!(route_of("/v1/products/p1/x/y/z", configured), ("other", ""));
        assert_eq!(route_of("/ui/app.js", configured), ("/ui", ""));
        assert_eq!(route_of("/v1/whoami", configured), ("/v1/whoami", ""));
        assert_eq!(method_label(&axum::http::Method::from_bytes(b"FROB").unwrap()), "other");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
    }
}
