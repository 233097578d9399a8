//! `/healthz` (the process runs), `/readyz` (the database answers) and `/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;

pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.store.ping().await.map_err(|e| ApiError::Unavailable(format!("the database does not answer: {e}")))?;
    Ok(Json(json!({"status": "ready"})))
}

pub(crate) async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], state.openapi.as_str().to_owned())
}
