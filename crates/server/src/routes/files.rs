//! File endpoints (§15): `PUT`, `GET` and `DELETE /v1/{c}/{id}/files/{field}`.
//!
//! A PUT streams the body into the files store (never whole in memory), hashing it, and
//! only then points the record at it: the bytes are staged, pinned in the database (so the
//! files worker keeps them while no record references them yet), moved to their
//! content-addressed object, and the record's new version, audit entry, event and
//! reference commit in one transaction. A PUT that fails after storing leaves its pin to
//! expire, after which the files worker removes the bytes if nothing took them.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use futures_util::TryStreamExt;
use tombstone_domain::config::{Collection, FieldType, FileRules};
use tombstone_domain::files::FileMeta;
use tombstone_domain::scope::Permission;
use tombstone_store::{FileUpload, SharedRecord};

use super::extract::{ApiPath, QueryPairs};
use super::records::{checked_id, collection, include_deleted, map_not_found, record_response, write_precondition};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::files::{ByteRange, Files, KeepError, UploadError, byte_range};

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/{collection}/{id}/files/{field}", put(put_file).get(get_file).delete(delete_file))
}

/// The collection, the checked id and the file field's rules of a file URL.
fn file_target<'a>(
    state: &AppState,
    name: &str,
    id: &'a str,
    field: &str,
) -> Result<(Arc<Collection>, &'a str, FileRules), ApiError> {
    let collection = collection(state, name)?;
    let rules = match collection.field(field).map(|f| &f.ty) {
        Some(FieldType::File(rules)) => rules.clone(),
        Some(_) => return Err(ApiError::NotFound(format!("{field:?} is not a file field of {name}"))),
        None => return Err(ApiError::NotFound(format!("{field:?} is not a field of {name}"))),
    };
    let id = checked_id(&collection, id)?;
    Ok((collection, id, rules))
}

fn files(state: &AppState) -> Result<&Arc<Files>, ApiError> {
    state.files.as_ref().ok_or_else(|| ApiError::Unavailable("no files store is configured ([files] url)".into()))
}

fn store_failed(e: &object_store::Error) -> ApiError {
    ApiError::StorageFailed(format!("the files store failed: {e}"))
}

fn body_failed(e: &axum::Error) -> ApiError {
    if crate::error::is_body_timeout(e) {
        return ApiError::RequestTimeout;
    }
    ApiError::Malformed(format!("the request body could not be read: {e}"))
}

/// The record a file write changes, as it is now: 404 when it is absent, deleted or
/// another tenant's, 409 when archived — checked before any byte is stored (the write
/// checks again, under its lock).
async fn writable_record(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
) -> Result<Arc<SharedRecord>, ApiError> {
    let current = state
        .store
        .get_shared(caller.tenant(), collection, id)
        .await?
        .filter(|r| !r.is_deleted())
        .ok_or_else(|| ApiError::record_not_found(&collection.name, id))?;
    if current.archive.is_some() {
        return Err(ApiError::Archived);
    }
    Ok(current)
}

async fn put_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id, field)): ApiPath<(String, String, String)>,
    headers: HeaderMap,
    query: QueryPairs,
    body: Body,
) -> Result<Response, ApiError> {
    let (collection, id, rules) = file_target(&state, &name, &id, &field)?;
    caller.require(Permission::Write, Some(&collection.name))?;
    query.only(&[])?;
    let cond = write_precondition(&collection, &headers)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
    if !rules.allows(content_type) {
        let message = if content_type.is_empty() {
            "a file upload needs a Content-Type".to_string()
        } else {
            format!("{field} does not take {content_type:?}")
        };
        return Err(ApiError::UnsupportedMediaType { message, allowed: rules.content_types.clone() });
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > rules.max_bytes) {
        return Err(ApiError::FileTooLarge { max_bytes: rules.max_bytes });
    }
    writable_record(&state, &caller, &collection, id).await?;
    let files = files(&state)?;
    let staged = files.stage(body.into_data_stream(), rules.max_bytes).await.map_err(|e| match e {
        UploadError::TooLarge(max_bytes) => ApiError::FileTooLarge { max_bytes },
        UploadError::Body(e) => body_failed(&e),
        UploadError::Store(e) => store_failed(&e),
    })?;
    files.keep(state.store.as_ref(), caller.tenant(), &staged, state.now()).await.map_err(|e| match e {
        KeepError::Busy => ApiError::Unavailable(e.to_string()),
        KeepError::Database(e) => e.into(),
        KeepError::Files(e) => store_failed(&e),
    })?;
    let meta = FileMeta {
        content_type: content_type.to_string(),
        size: staged.size,
        sha256: staged.sha256.clone(),
        uploaded_at: state.now(),
    };
    let upload = FileUpload { meta, upload_id: staged.upload_id };
    let record = state
        .store
        .set_file(&caller.actor(), &collection, id, &field, Some(upload), cond, state.now())
        .await
        .map_err(map_not_found(&collection, id))?;
    record_response(&state, StatusCode::OK, &caller, &collection, &record).await
}

async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id, field)): ApiPath<(String, String, String)>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let (collection, id, _) = file_target(&state, &name, &id, &field)?;
    caller.require(Permission::Read, Some(&collection.name))?;
    query.only(&["include"])?;
    let include_deleted = include_deleted(&query, &caller, &collection)?;
    let record = state
        .store
        .get_shared(caller.tenant(), &collection, id)
        .await?
        .filter(|r| include_deleted || !r.is_deleted())
        .ok_or_else(|| ApiError::record_not_found(&collection.name, id))?;
    let meta = record
        .values
        .get(&field)
        .and_then(|v| FileMeta::from_json(&v.to_json()))
        .ok_or_else(|| ApiError::NotFound(format!("{}/{id} has no file in {field}", collection.name)))?;
    let etag = meta.etag();
    let inm = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if inm.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        insert(&mut response, header::ETAG, &etag);
        return Ok(response);
    }
    // If-Range: a range only of these very bytes; otherwise the whole file.
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).filter(|_| if_range_ok);
    let (status, part) = match byte_range(range, meta.size) {
        ByteRange::Whole => (StatusCode::OK, None),
        ByteRange::Part(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        ByteRange::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size: meta.size }),
    };
    let stream = files(&state)?.get(caller.tenant(), &meta.sha256, part.clone()).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            tracing::error!(
                collection = %collection.name, id, field, sha256 = %meta.sha256,
                "a record's file is missing from the files store (tombstone reconcile lists such records)"
            );
            ApiError::NotFound(format!("the file of {}/{id} is missing from the files store", collection.name))
        }
        other => store_failed(&other),
    })?;
    let length = part.as_ref().map_or(meta.size, |r| r.end - r.start);
    let mut response = (status, Body::from_stream(stream.map_err(axum::Error::new))).into_response();
    insert(&mut response, header::CONTENT_TYPE, &meta.content_type);
    insert(&mut response, header::CONTENT_LENGTH, &length.to_string());
    insert(&mut response, header::ETAG, &etag);
    insert(&mut response, header::ACCEPT_RANGES, "bytes");
    // Uploaded bytes are never run as a page of this origin (an SVG or HTML file opened
    // directly could otherwise script the dashboard's origin).
    insert(&mut response, header::CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox");
    insert(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if let Some(r) = part {
        insert(&mut response, header::CONTENT_RANGE, &format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size));
    }
    Ok(response)
}

fn insert(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id, field)): ApiPath<(String, String, String)>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let (collection, id, _) = file_target(&state, &name, &id, &field)?;
    caller.require(Permission::Write, Some(&collection.name))?;
    query.only(&[])?;
    let cond = write_precondition(&collection, &headers)?;
    let current = writable_record(&state, &caller, &collection, id).await?;
    if current.values.get(&field).is_none_or(|v| v.is_null()) {
        return Err(ApiError::NotFound(format!("{}/{id} has no file in {field}", collection.name)));
    }
    // The bytes stay: earlier versions still point at them (a revert brings them back);
    // they go with the record's purge.
    let record = state
        .store
        .set_file(&caller.actor(), &collection, id, &field, None, cond, state.now())
        .await
        .map_err(map_not_found(&collection, id))?;
    record_response(&state, StatusCode::OK, &caller, &collection, &record).await
}
