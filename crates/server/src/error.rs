//! The one error type of the API, rendered as `application/problem+json` (RFC 9457).
//!
//! Each variant documents its status and problem `type` slug. There is deliberately no
//! blanket conversion from arbitrary errors: storage failures map variant by variant, and
//! an unexpected one becomes [`ApiError::Internal`], logged once with its cause while the
//! client sees only the request id.

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tombstone_domain::deletion::RecordRef;
use tombstone_domain::query::QueryError;
use tombstone_domain::record::ValidationErrors;
use tombstone_domain::scope::Permission;
use tombstone_store::{RestoreConflict, StoreError};

use crate::request_id;

/// The content type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything the API can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed`: the body is not JSON.
    #[error("{0}")]
    Malformed(String),
    /// 400 `invalid-parameter`: a query parameter or header is not acceptable.
    #[error("{param}: {message}")]
    BadParameter { param: String, message: String },
    /// 401 `unauthorized`: no key, or an unknown or revoked one.
    #[error("a valid API key is required")]
    Unauthorized,
    /// 403 `forbidden`: the key lacks a scope.
    #[error("the key lacks the {0} scope")]
    Forbidden(Permission),
    /// 403 `forbidden` without `missing_scope`: no scope allows it, such as creating a key
    /// for another tenant (operators do that with the CLI).
    #[error("{0}")]
    Denied(String),
    /// 404 `not-found`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method-not-allowed`; `Allow` names the methods the resource takes (`None`:
    /// the route's own list, which axum adds).
    #[error("method not allowed")]
    MethodNotAllowed { allow: Option<&'static str> },
    /// 405 for a POST to a record URL without an action: `Allow` is [`RECORD_METHODS`].
    #[error(
        "POST needs an action: /v1/{{collection}}/{{id}}:restore, :purge, :erase, :hold, :release, :archive or :unarchive"
    )]
    RecordMethodNotAllowed,
    /// 409 `unique-conflict`: an active record holds the value (`conflicting_id`).
    #[error("an active record already has this value of {}", fields.join(", "))]
    UniqueConflict { conflicting_id: String, fields: Vec<String> },
    /// 409 `not-deleted`: `:purge` of an active record (destruction takes two steps).
    #[error("only a soft-deleted record can be purged; delete it first")]
    NotDeleted,
    /// 409 `legal-hold`: the record is held, so it cannot be purged or erased.
    #[error("the record is under a legal hold")]
    LegalHold,
    /// 409 `archived`: the record is archived, so it is read-only (§17); unarchive it first.
    #[error("the record is archived and read-only; unarchive it first")]
    Archived,
    /// 409 `restrict`: active children refer to the record (`blockers`, `blockers_total`).
    #[error("{total} active records refer to this one through restrict relations; delete or re-point them first")]
    Restrict { blockers: Vec<RecordRef>, total: u64 },
    /// 409 `parent-deleted`: the record's parent is deleted (`blockers` names it).
    #[error("a record this one refers to is deleted; restore it first, or restore the deletion operation")]
    ParentDeleted { parents: Vec<RecordRef> },
    /// 409 `restore-conflict`: a deletion operation cannot be restored as a whole
    /// (`conflicts` lists every reason); nothing was restored.
    #[error("the deletion operation cannot be restored as a whole; nothing was restored")]
    RestoreConflicts(Vec<RestoreConflict>),
    /// 409 `idempotency-conflict`: the first request with this key is still running.
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyConflict,
    /// 409 `event-gone`: a redelivery of a delivery whose event was cleaned out of the
    /// outbox (there is nothing left to send).
    #[error("{0}")]
    EventGone(String),
    /// 409 `endpoint-removed`: a redelivery to a webhook endpoint that left the config.
    #[error("{0}")]
    EndpointRemoved(String),
    /// 410 `erased`: the record this idempotent response created has been erased.
    #[error("the record created by this request has been erased")]
    Erased,
    /// 408 `request-timeout`: the body stopped arriving for longer than the body read
    /// timeout (`[server] body_read_timeout`).
    #[error("the request body stopped arriving; send it without pauses")]
    RequestTimeout,
    /// 412 `precondition-failed`: `If-Match` is stale.
    #[error("If-Match does not match the current version (v{current})")]
    PreconditionFailed { current: i64 },
    /// 413 `payload-too-large`: more than 1 MiB.
    #[error("the body is larger than 1 MiB")]
    PayloadTooLarge,
    /// 413 `payload-too-large`: a file larger than its field's `max_bytes` (§15); nothing
    /// was stored.
    #[error("the file is larger than this field's max_bytes ({max_bytes} bytes); nothing was stored")]
    FileTooLarge { max_bytes: u64 },
    /// 415 `unsupported-media-type`: a file whose `Content-Type` the field does not allow
    /// (or none); `allowed` lists what it takes (empty: any).
    #[error("{message}")]
    UnsupportedMediaType { message: String, allowed: Vec<String> },
    /// 416 `range-not-satisfiable`: a `Range` outside the file (`Content-Range: bytes */size`).
    #[error("the range is outside the file ({size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    /// 422 `validation`: well-formed but invalid; `errors` per field.
    #[error("{0}")]
    Validation(ValidationErrors),
    /// 422 `idempotency-mismatch`: the key was used with another body.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// 428 `precondition-required`: the collection requires `If-Match`.
    #[error("this collection requires If-Match on writes")]
    PreconditionRequired,
    /// 500 `internal`: logged with its cause; the client sees the request id only.
    #[error("internal error: {0}")]
    Internal(String),
    /// 503 `unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// 409 `unique-conflict` caught by the database itself rather than by the store's own
    /// check (a race with another process): `fields` as the database named them, no
    /// `conflicting_id` (the database does not say which record holds the value).
    /// `cause` is for the log only.
    #[error("an active record already has this value of {}", fields.join(", "))]
    UniqueViolation { fields: Vec<String>, cause: String },
    /// 503 `busy` with `Retry-After`: another writer held the database past the busy
    /// timeout; nothing was written. The string is the cause, for the log only.
    #[error("the database is busy; nothing was written, retry shortly")]
    Busy(String),
    /// 507 `storage-full` with `Retry-After`: the server's disk is full; nothing was
    /// written, reads still work, and writes resume by themselves once space returns. The
    /// string is the cause, for the log only.
    #[error("the server's storage is full; nothing was written, retry later")]
    StorageFull(String),
    /// 503 `storage-unavailable` with `Retry-After`: the storage failed to read or write
    /// (an I/O error); nothing was written. The string is the cause, for the log only.
    #[error("the server's storage failed to read or write; nothing was written, retry later")]
    StorageFailed(String),
    /// 503 `unavailable` with `Retry-After` (seconds): every event-stream slot of the
    /// tenant or of the server is taken.
    #[error("{message}")]
    StreamsFull { message: String, retry_after_secs: u64 },
}

/// `Retry-After` (seconds) of a 503 `busy`: a lock held past the 5 s busy timeout is
/// usually a long transaction of another process, over within a second or two.
const RETRY_BUSY_SECS: &str = "1";
/// `Retry-After` (seconds) of a 507 `storage-full` and a 503 `storage-unavailable`: space
/// comes back by an operator's act, not within a second; a shorter hint only multiplies
/// refused retries.
const RETRY_STORAGE_SECS: &str = "30";

impl ApiError {
    /// A 404 for a record, worded the same whether it never existed, was deleted, or
    /// belongs to another tenant.
    #[must_use]
    pub fn record_not_found(collection: &str, id: &str) -> Self {
        Self::NotFound(format!("no record {id} in {collection}"))
    }

    /// Status and `type` slug.
    #[must_use]
    pub fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed"),
            Self::BadParameter { .. } => (StatusCode::BAD_REQUEST, "invalid-parameter"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) | Self::Denied(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Self::MethodNotAllowed { .. } | Self::RecordMethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
            }
            Self::UniqueConflict { .. } => (StatusCode::CONFLICT, "unique-conflict"),
            Self::IdempotencyConflict => (StatusCode::CONFLICT, "idempotency-conflict"),
            Self::NotDeleted => (StatusCode::CONFLICT, "not-deleted"),
            Self::Restrict { .. } => (StatusCode::CONFLICT, "restrict"),
            Self::ParentDeleted { .. } => (StatusCode::CONFLICT, "parent-deleted"),
            Self::RestoreConflicts(_) => (StatusCode::CONFLICT, "restore-conflict"),
            Self::LegalHold => (StatusCode::CONFLICT, "legal-hold"),
            Self::Archived => (StatusCode::CONFLICT, "archived"),
            Self::EventGone(_) => (StatusCode::CONFLICT, "event-gone"),
            Self::EndpointRemoved(_) => (StatusCode::CONFLICT, "endpoint-removed"),
            Self::Erased => (StatusCode::GONE, "erased"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request-timeout"),
            Self::PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, "precondition-failed"),
            Self::PayloadTooLarge | Self::FileTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            Self::UnsupportedMediaType { .. } => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
            Self::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "range-not-satisfiable"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            Self::IdempotencyMismatch => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-mismatch"),
            Self::PreconditionRequired => (StatusCode::PRECONDITION_REQUIRED, "precondition-required"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::Unavailable(_) | Self::StreamsFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::UniqueViolation { .. } => (StatusCode::CONFLICT, "unique-conflict"),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "storage-full"),
            Self::StorageFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage-unavailable"),
        }
    }

    /// The problem document.
    #[must_use]
    pub fn to_problem(&self) -> Value {
        let (status, slug) = self.status_and_type();
        let detail = match self {
            Self::Internal(_) => "an unexpected error occurred; quote the request_id when reporting it".to_string(),
            other => other.to_string(),
        };
        let mut body = Map::new();
        body.insert("type".into(), json!(slug));
        body.insert("title".into(), json!(status.canonical_reason().unwrap_or("Error")));
        body.insert("status".into(), json!(status.as_u16()));
        body.insert("detail".into(), json!(detail));
        body.insert("request_id".into(), json!(request_id::current()));
        match self {
            Self::Forbidden(scope) => {
                body.insert("missing_scope".into(), json!(scope.as_str()));
            }
            Self::UniqueConflict { conflicting_id, fields } => {
                body.insert("conflicting_id".into(), json!(conflicting_id));
                body.insert("fields".into(), json!(fields));
            }
            Self::UniqueViolation { fields, .. } => {
                body.insert("fields".into(), json!(fields));
            }
            Self::Validation(errors) => {
                body.insert("errors".into(), json!(errors.0));
            }
            Self::Restrict { blockers, total } => {
                body.insert("blockers".into(), json!(blockers));
                body.insert("blockers_total".into(), json!(total));
            }
            Self::ParentDeleted { parents } => {
                body.insert("blockers".into(), json!(parents));
                body.insert("blockers_total".into(), json!(parents.len()));
            }
            Self::RestoreConflicts(conflicts) => {
                body.insert("conflicts".into(), json!(conflicts));
            }
            Self::BadParameter { param, .. } => {
                body.insert("errors".into(), json!([{"field": param, "message": self.to_string()}]));
            }
            Self::PreconditionFailed { current } => {
                body.insert("current_etag".into(), json!(format!("\"v{current}\"")));
            }
            Self::FileTooLarge { max_bytes } => {
                body.insert("max_bytes".into(), json!(max_bytes));
            }
            Self::UnsupportedMediaType { allowed, .. } => {
                body.insert("allowed".into(), json!(allowed));
            }
            _ => {}
        }
        Value::Object(body)
    }
}

/// Renders a problem document with the right content type.
#[must_use]
pub fn problem_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// The methods a record URL (`/v1/{c}/{id}`) takes.
pub(crate) const RECORD_METHODS: &str = "GET,HEAD,PATCH,DELETE";

/// 405 for a method an item URL that also has actions does not take: the item takes
/// `item_methods`, an action (`…/{id}:restore`) only POST. axum adds its route's list
/// (both together) only when the answer names none.
pub(crate) fn item_method_not_allowed(uri: &axum::http::Uri, item_methods: &'static str, actions: &[&str]) -> ApiError {
    let last = uri.path().rsplit('/').next().unwrap_or_default();
    refuse_action(last, actions).err().unwrap_or(ApiError::MethodNotAllowed { allow: Some(item_methods) })
}

/// For GET, PATCH and DELETE on an item URL: one naming one of its `actions`
/// (`{id}:restore`) takes only POST. (Ids never hold a `:`, so anything else with one is
/// simply not found.)
pub(crate) fn refuse_action(last_segment: &str, actions: &[&str]) -> Result<(), ApiError> {
    match last_segment.rsplit_once(':') {
        Some((_, action)) if actions.contains(&action) => Err(ApiError::MethodNotAllowed { allow: Some("POST") }),
        _ => Ok(()),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_type();
        match &self {
            Self::Internal(cause) | Self::StorageFailed(cause) => {
                tracing::error!(request_id = %request_id::current(), error = %cause, "request failed");
            }
            // Expected under pressure and already reported by the store's own threads: a
            // warning per request, not an error.
            Self::StorageFull(cause) | Self::Busy(cause) | Self::UniqueViolation { cause, .. } => {
                tracing::warn!(request_id = %request_id::current(), error = %cause, "write refused");
            }
            _ => {}
        }
        let mut response = problem_response(status, &self.to_problem());
        let allow = match &self {
            Self::RecordMethodNotAllowed => Some(RECORD_METHODS),
            Self::MethodNotAllowed { allow } => *allow,
            _ => None,
        };
        if let Some(allow) = allow {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        let retry_after = match &self {
            Self::Busy(_) => Some(RETRY_BUSY_SECS),
            Self::StorageFull(_) | Self::StorageFailed(_) => Some(RETRY_STORAGE_SECS),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::RangeNotSatisfiable { size } = &self
            && let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        if let Self::StreamsFull { retry_after_secs, .. } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("no such record".into()),
            StoreError::PreconditionFailed { current } => Self::PreconditionFailed { current },
            StoreError::UniqueConflict { conflicting_id, fields } => Self::UniqueConflict { conflicting_id, fields },
            StoreError::Validation(errors) => Self::Validation(errors),
            StoreError::NotDeleted => Self::NotDeleted,
            StoreError::Restrict { blockers, total } => Self::Restrict { blockers, total },
            StoreError::ParentDeleted { parents } => Self::ParentDeleted { parents },
            StoreError::RestoreConflicts(c) => Self::RestoreConflicts(c),
            StoreError::LegalHold => Self::LegalHold,
            StoreError::Archived => Self::Archived,
            StoreError::IdempotencyConflict => Self::IdempotencyConflict,
            StoreError::Migration(m) | StoreError::Internal(m) => Self::Internal(m),
            StoreError::Constraint { fields, source } => Self::UniqueViolation { fields, cause: source.to_string() },
            e @ StoreError::Busy { .. } => Self::Busy(e.cause_chain()),
            e @ StoreError::StorageFull { .. } => Self::StorageFull(e.cause_chain()),
            e @ StoreError::StorageFailed { .. } => Self::StorageFailed(e.cause_chain()),
            e @ StoreError::Database { .. } => Self::Internal(e.cause_chain()),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        Self::BadParameter { param: e.param, message: e.message }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::BadParameter { param: "path".into(), message: e.body_text() }
    }
}

/// Whether a body error is the body read timeout (`[server] body_read_timeout`), which
/// surfaces somewhere in its cause chain.
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge;
        }
        if is_body_timeout(&e) {
            return Self::RequestTimeout;
        }
        Self::Malformed(e.body_text())
    }
}
