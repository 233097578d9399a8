//! History endpoints (§14): a record's versions, one version, the record or the list as it
//! was at an instant (`as_of`), and `:revert`.
//!
//! Scopes: the history of an active record is readable with `read`; of a deleted one with
//! `read_deleted` as well (403 naming it otherwise, like every other way of reading
//! deleted records). Another tenant's record is a 404, as everywhere.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tombstone_domain::config::Collection;
use tombstone_domain::history::{HistoryParamError, Version, parse_as_of, parse_version};
use tombstone_domain::query::{ListQuery, encode_cursor, parse_limit};
use tombstone_domain::scope::Permission;
use tombstone_domain::time::Timestamp;
use tombstone_store::StoreError;

use super::extract::{ApiPath, QueryPairs};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/{collection}/{id}/versions", get(list_versions))
        .route("/v1/{collection}/{id}/versions/{version}", get(get_version))
}

impl From<HistoryParamError> for ApiError {
    fn from(e: HistoryParamError) -> Self {
        Self::BadParameter { param: e.param.into(), message: e.message }
    }
}

fn collection(state: &AppState, name: &str) -> Result<Arc<Collection>, ApiError> {
    state.schema.collection(name).cloned().ok_or_else(|| ApiError::NotFound(format!("no collection {name:?}")))
}

/// `as_of`, when given: an RFC 3339 instant, not in the future.
pub(crate) fn as_of(state: &AppState, query: &QueryPairs) -> Result<Option<Timestamp>, ApiError> {
    query.get("as_of").map(|v| parse_as_of(v, state.now()).map_err(ApiError::from)).transpose()
}

fn json(status: StatusCode, body: &impl serde::Serialize, etag: Option<i64>) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
            if let Some(v) = etag.and_then(|v| HeaderValue::from_str(&format!("\"v{v}\"")).ok()) {
                response.headers_mut().insert(header::ETAG, v);
            }
            response
        }
        Err(e) => ApiError::Internal(format!("cannot render a response: {e}")).into_response(),
    }
}

/// Checks that the caller may read the record's history: it exists in the tenant, and
/// when it is deleted the caller holds `read_deleted`.
async fn readable(state: &AppState, caller: &Caller, collection: &Arc<Collection>, id: &str) -> Result<(), ApiError> {
    caller.require(Permission::Read, Some(&collection.name))?;
    if !tombstone_domain::id::is_valid_record_id(id) {
        return Err(ApiError::record_not_found(&collection.name, id));
    }
    let record = state
        .store
        .get_record(caller.tenant(), collection, id)
        .await?
        .ok_or_else(|| ApiError::record_not_found(&collection.name, id))?;
    if record.is_deleted() {
        caller.require(Permission::ReadDeleted, Some(&collection.name))?;
    }
    Ok(())
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    let bad =
        || ApiError::BadParameter { param: "cursor".into(), message: "not a cursor issued by this server".into() };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix("v:").and_then(|n| n.parse::<i64>().ok()).filter(|n| *n > 0).ok_or_else(bad)
}

/// A page of versions.
#[derive(serde::Serialize)]
struct VersionList {
    items: Vec<Version>,
    next_cursor: Option<String>,
}

/// `GET /v1/{c}/{id}/versions`: newest first, `limit` and `cursor` as every list.
async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id)): ApiPath<(String, String)>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let collection = collection(&state, &name)?;
    query.only(&["limit", "cursor"])?;
    let limit = parse_limit(query.get("limit"))?;
    let before = query.cursor().map(decode_cursor).transpose()?;
    readable(&state, &caller, &collection, &id).await?;
    let page = state.store.list_versions(caller.tenant(), &collection.name, &id, before, limit).await?;
    if page.items.is_empty() && before.is_none() {
        // Purged between the two reads: its history went with it.
        return Err(ApiError::record_not_found(&collection.name, &id));
    }
    let body =
        VersionList { items: page.items, next_cursor: page.next.map(|n| URL_SAFE_NO_PAD.encode(format!("v:{n}"))) };
    Ok(json(StatusCode::OK, &body, None))
}

/// `GET /v1/{c}/{id}/versions/{n}`: one version.
async fn get_version(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id, version)): ApiPath<(String, String, String)>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let collection = collection(&state, &name)?;
    query.only(&[])?;
    let n = parse_version("version", &version)?;
    readable(&state, &caller, &collection, &id).await?;
    let row = state
        .store
        .version_row(caller.tenant(), &collection.name, &id, n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{}/{id} has no version {n}", collection.name)))?;
    let version = row.into_version()?;
    Ok(json(StatusCode::OK, &version, Some(n)))
}

/// `GET /v1/{c}/{id}?as_of=T`: the record as it was at T — 404 if it did not exist yet,
/// or was deleted then unless `include=deleted` (checked by the caller of this function).
pub(crate) async fn get_record_as_of(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    at: Timestamp,
    include_deleted: bool,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .version_row_at(caller.tenant(), &collection.name, id, at)
        .await?
        .ok_or_else(|| ApiError::record_not_found(&collection.name, id))?;
    let version = row.into_version()?;
    if version.is_deleted() && !include_deleted {
        return Err(ApiError::record_not_found(&collection.name, id));
    }
    Ok(json(StatusCode::OK, &version.record, Some(version.version)))
}

/// A page of records as they were.
#[derive(serde::Serialize)]
struct AsOfList<'a> {
    items: Vec<tombstone_domain::record::RecordView<'a>>,
    next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
}

/// `GET /v1/{c}?as_of=T`: the list of records as it was at T, with the filters, sort and
/// cursors of a plain list; full-text search (`q`) is not available.
pub(crate) async fn list_as_of(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    pairs: &[(String, String)],
    at: Timestamp,
) -> Result<Response, ApiError> {
    let rest: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "as_of").cloned().collect();
    let list = ListQuery::parse(collection, &rest)?;
    if list.q.is_some() {
        return Err(ApiError::BadParameter {
            param: "q".into(),
            message: "full-text search is not available with as_of".into(),
        });
    }
    if list.reads_deleted() {
        caller.require(Permission::ReadDeleted, Some(&collection.name))?;
    }
    let page = state.store.list_as_of(caller.tenant(), collection, at, &list).await?;
    let body = AsOfList {
        items: page.items.iter().map(|r| r.view(collection, None)).collect(),
        next_cursor: page.next.as_ref().map(|p| encode_cursor(&list.sort, p)),
        total: page.total,
    };
    Ok(json(StatusCode::OK, &body, None))
}

/// `POST /v1/{c}/{id}:revert?version=n`: a new version whose declared fields equal those
/// of version n (200 with the record). Unknown version → 422; a deleted record → 404, an
/// archived one → 409, as for a PATCH.
pub(crate) async fn revert_record(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    query: &QueryPairs,
    cond: Option<tombstone_domain::lifecycle::IfMatch>,
) -> Result<tombstone_domain::record::Record, ApiError> {
    caller.require(Permission::Write, Some(&collection.name))?;
    query.only(&["version"])?;
    let raw = query.get("version").ok_or_else(|| ApiError::BadParameter {
        param: "version".into(),
        message: "required: the version to revert to".into(),
    })?;
    let n = parse_version("version", raw)?;
    if !tombstone_domain::id::is_valid_record_id(id) {
        return Err(ApiError::record_not_found(&collection.name, id));
    }
    state.store.revert_record(&caller.actor(), collection, id, n, cond, state.now()).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::record_not_found(&collection.name, id),
        other => other.into(),
    })
}
