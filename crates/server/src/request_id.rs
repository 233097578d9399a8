//! `X-Request-Id` (and the request-duration histogram): echoed when the client sends a sane one, generated otherwise, set on
//! every response, and visible to the code that handles the request (errors, logs,
//! audit entries) through a task-local.
//!
//! The same middleware turns any error response that is not yet problem+json (axum's own
//! 405, for one) into a problem document, so every error has one shape.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::error::{ApiError, PROBLEM_JSON};

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, or `"-"` outside one.
#[must_use]
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".to_string())
}

fn acceptable(id: &str) -> bool {
    (1..=200).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The middleware.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = crate::telemetry::method_label(request.method());
    let path = request.uri().path().to_string();
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()), str::to_string);
    let mut response = REQUEST_ID
        .scope(id.clone(), async move {
            let response = next.run(request).await;
            ensure_problem(response)
        })
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let (route, collection) = crate::telemetry::route_of(&path, |c| state.schema.collection(c).is_some());
    tombstone_store::telemetry::histogram(
        "tombstone_http_request_duration_seconds",
        &[("route", route), ("method", method), ("status", response.status().as_str()), ("collection", collection)],
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// Rewrites a plain error response (from axum or tower) as problem+json.
fn ensure_problem(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed { allow: None },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()),
        s if s.is_server_error() => ApiError::Internal(format!("plain {s} response")),
        _ => ApiError::Malformed(status.canonical_reason().unwrap_or("bad request").to_string()),
    };
    let (parts, _) = response.into_parts();
    let mut rebuilt = axum::response::IntoResponse::into_response(error);
    // Keep the original status and headers such as Allow, with the problem body.
    *rebuilt.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let (mut parts2, body): (_, Body) = rebuilt.into_parts();
    parts2.status = status;
    Response::from_parts(parts2, body)
}
