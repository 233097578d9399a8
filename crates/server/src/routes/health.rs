//! `/healthz` (the process runs), `/readyz` (the database answers a read; it never
//! writes) and `/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;

pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Unauthenticated, so it answers only "ready" or a plain 503: the cause (paths, SQLite
/// messages) is operator data and goes to the log.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if let Err(e) = state.store.ping().await {
        tracing::warn!(request_id = %crate::request_id::current(), error = %e, "not ready: the database does not answer");
        return Err(ApiError::Unavailable("the database does not answer".into()));
    }
    Ok(Json(json!({"status": "ready"})))
}

pub(crate) async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], state.openapi.as_str().to_owned())
}
