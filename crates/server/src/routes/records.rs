//! The record endpoints: create, get, list, patch, delete (and its dry run), restore, archive;
//! `as_of` reads and `:revert` are answered by `routes::history`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tombstone_domain::config::Collection;
use tombstone_domain::deletion::{MAX_LISTED, RecordRef};
use tombstone_domain::id::{is_valid_record_id, new_deletion_id};
use tombstone_domain::lifecycle::{ArchiveRequest, DeleteRequest, IfMatch, check_reason, if_none_match};
use tombstone_domain::query::{ListQuery, encode_cursor};
use tombstone_domain::record::{FieldError, Hold, Record, RecordView, ValidationErrors, parse_create, parse_patch};
use tombstone_domain::scope::Permission;
use tombstone_store::telemetry::collection_counter;
use tombstone_store::{
    DeleteOutcome, IdempotencyClaim, IdempotencyKey, RestoreOutcome, StoreError, StoredResponse, View,
};

use super::extract::{ApiPath, IfNoneMatch, JsonBody, QueryPairs, parse_json};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, RECORD_METHODS, item_method_not_allowed, refuse_action};
use crate::search::SearchError;

static DELETION_ID: HeaderName = HeaderName::from_static("deletion-id");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/{collection}", get(list_records).post(create_record)).route(
        "/v1/{collection}/{id}",
        get(get_record)
            .patch(patch_record)
            .delete(delete_record)
            .post(record_action)
            .fallback(|uri: Uri| async move { item_method_not_allowed(&uri, RECORD_METHODS, RECORD_ACTIONS) }),
    )
}

/// The actions of a record (`POST /v1/{c}/{id}:action`).
const RECORD_ACTIONS: &[&str] = &["restore", "purge", "erase", "hold", "release", "archive", "unarchive", "revert"];

pub(crate) fn collection(state: &AppState, name: &str) -> Result<Arc<Collection>, ApiError> {
    state.schema.collection(name).cloned().ok_or_else(|| ApiError::NotFound(format!("no collection {name:?}")))
}

pub(crate) fn checked_id<'a>(collection: &Collection, id: &'a str) -> Result<&'a str, ApiError> {
    if is_valid_record_id(id) {
        Ok(id)
    } else {
        // An id that cannot exist cannot be found.
        Err(ApiError::record_not_found(&collection.name, id))
    }
}

/// `include=deleted` of a single read (the only value it takes), which needs `read_deleted`.
pub(crate) fn include_deleted(query: &QueryPairs, caller: &Caller, collection: &Collection) -> Result<bool, ApiError> {
    let include = match query.get("include") {
        None => false,
        Some("deleted") => true,
        Some(_) => {
            return Err(ApiError::BadParameter {
                param: "include".into(),
                message: "the only supported value is \"deleted\"".into(),
            });
        }
    };
    if include {
        caller.require(Permission::ReadDeleted, Some(&collection.name))?;
    }
    Ok(include)
}

/// Counts a read, and whether it could see deleted records.
fn count_read(collection: &Collection, include_deleted: bool) {
    collection_counter("tombstone_reads_total", &collection.name).increment(1);
    if include_deleted {
        collection_counter("tombstone_include_deleted_reads_total", &collection.name).increment(1);
    }
}

fn if_match(headers: &HeaderMap) -> Option<IfMatch> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(IfMatch::parse)
}

/// `If-Match`, refusing its absence where the collection requires it.
pub(crate) fn write_precondition(collection: &Collection, headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let cond = if_match(headers);
    if collection.require_if_match && cond.is_none() {
        return Err(ApiError::PreconditionRequired);
    }
    Ok(cond)
}

fn reason(query: &QueryPairs) -> Result<Option<String>, ApiError> {
    let reason = query.get("reason").map(str::to_string);
    check_reason(reason.as_deref()).map_err(|message| {
        ApiError::Validation(ValidationErrors(vec![FieldError { field: "reason".into(), message }]))
    })?;
    Ok(reason)
}

pub(crate) fn map_not_found(collection: &Collection, id: &str) -> impl Fn(StoreError) -> ApiError {
    let (c, i) = (collection.name.clone(), id.to_string());
    move |e| match e {
        StoreError::NotFound => ApiError::record_not_found(&c, &i),
        other => other.into(),
    }
}

/// The representation a caller sees: `holds` only with `read_deleted`.
fn represent<'a>(
    caller: &Caller,
    collection: &'a Collection,
    record: &'a Record,
    holds: &'a HashMap<String, Vec<Hold>>,
) -> RecordView<'a> {
    let shown = caller
        .can(Permission::ReadDeleted, Some(&collection.name))
        .then(|| holds.get(&record.id).map_or(&[][..], Vec::as_slice));
    record.view(collection, shown)
}

/// A JSON response written straight from a serializable value.
fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => ApiError::Internal(format!("cannot render a response: {e}")).into_response(),
    }
}

/// A page of records.
#[derive(serde::Serialize)]
struct ListBody<'a> {
    items: Vec<RecordView<'a>>,
    next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
}

/// The active holds of the held records among `records`, when the caller may see them.
async fn holds_of(
    state: &AppState,
    caller: &Caller,
    collection: &Collection,
    records: &[&Record],
) -> Result<HashMap<String, Vec<Hold>>, ApiError> {
    let held: Vec<String> = records.iter().filter(|r| r.legal_hold).map(|r| r.id.clone()).collect();
    if held.is_empty() || !caller.can(Permission::ReadDeleted, Some(&collection.name)) {
        return Ok(HashMap::new());
    }
    Ok(state.store.active_holds(caller.tenant(), &collection.name, &held).await?)
}

pub(crate) async fn record_response(
    state: &AppState,
    status: StatusCode,
    caller: &Caller,
    collection: &Collection,
    record: &Record,
) -> Result<Response, ApiError> {
    let holds = holds_of(state, caller, collection, &[record]).await?;
    let mut response = json_response(status, &represent(caller, collection, record, &holds));
    if let Ok(etag) = HeaderValue::from_str(&record.etag()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

async fn create_record(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    query: QueryPairs,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let collection = collection(&state, &name)?;
    caller.require(Permission::Write, Some(&collection.name))?;
    query.only(&[])?;
    let body = body.parse()?;
    let parsed = parse_create(&collection, &body).map_err(ApiError::Validation)?;

    let idempotency = match headers.get(&IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let key =
                value.to_str().ok().filter(|k| (1..=255).contains(&k.len())).ok_or_else(|| ApiError::BadParameter {
                    param: "Idempotency-Key".into(),
                    message: "must be 1-255 visible ASCII characters".into(),
                })?;
            let key = IdempotencyKey {
                tenant: caller.tenant().to_string(),
                api_key: caller.key.id.clone(),
                key: key.to_string(),
            };
            // serde_json's map keeps insertion order, so the fingerprint sorts keys itself.
            let fingerprint = fingerprint(&format!("POST /v1/{name}"), &body);
            match state.store.claim_idempotency(&key, &fingerprint, state.now()).await? {
                IdempotencyClaim::Claimed => Some(key),
                IdempotencyClaim::InFlight => return Err(ApiError::IdempotencyConflict),
                IdempotencyClaim::Mismatch => return Err(ApiError::IdempotencyMismatch),
                IdempotencyClaim::Replay(stored) => {
                    if let Some((c, id)) = &stored.record
                        && state.store.is_erased(caller.tenant(), c, id).await?
                    {
                        return Err(ApiError::Erased);
                    }
                    return Ok(replay(&stored));
                }
            }
        }
    };

    let now = state.now();
    let record = parsed.into_record(caller.tenant(), &collection.name, now);
    let location = format!("/v1/{}/{}", collection.name, record.id);
    let no_holds = HashMap::new();
    let body = serde_json::to_string(&represent(&caller, &collection, &record, &no_holds))
        .map_err(|e| ApiError::Internal(format!("cannot render a response: {e}")))?;
    let stored = idempotency.clone().map(|key| {
        (
            key,
            StoredResponse {
                status: 201,
                headers: vec![("location".into(), location.clone()), ("etag".into(), record.etag())],
                body: body.clone(),
                record: Some((collection.name.clone(), record.id.clone())),
            },
        )
    });
    match state.store.create_record(&caller.actor(), &collection, record, stored).await {
        Ok(record) => {
            let mut response =
                (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&record.etag()) {
                h.insert(header::ETAG, v);
            }
            Ok(response)
        }
        Err(e) => {
            let error = ApiError::from(e);
            if let Some(key) = idempotency {
                if matches!(error, ApiError::UniqueConflict { .. }) {
                    // A conflict is a final answer for this request: keep it for replays.
                    let (status, _) = error.status_and_type();
                    let stored = StoredResponse {
                        status: status.as_u16(),
                        headers: vec![("content-type".into(), crate::error::PROBLEM_JSON.into())],
                        body: error.to_problem().to_string(),
                        record: None,
                    };
                    state.store.complete_idempotency(&key, stored).await?;
                } else {
                    state.store.release_idempotency(&key).await?;
                }
            }
            Err(error)
        }
    }
}

fn fingerprint(target: &str, body: &Value) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(target.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical(body).to_string().as_bytes());
    hex::encode(hasher.finalize())
}

fn replay(stored: &StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, stored.body.clone()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in &stored.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            h.insert(n, v);
        }
    }
    h.insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

async fn get_record(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id)): ApiPath<(String, String)>,
    IfNoneMatch(inm): IfNoneMatch,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    refuse_action(&id, RECORD_ACTIONS)?;
    let collection = collection(&state, &name)?;
    caller.require(Permission::Read, Some(&collection.name))?;
    query.only(&["include", "as_of"])?;
    let include_deleted = include_deleted(&query, &caller, &collection)?;
    count_read(&collection, include_deleted);
    let at = super::history::as_of(&state, &query)?;
    let id = checked_id(&collection, &id)?;
    if let Some(at) = at {
        return super::history::get_record_as_of(&state, &caller, &collection, id, at, include_deleted).await;
    }
    let record = state
        .store
        .get_shared(caller.tenant(), &collection, id)
        .await?
        .filter(|r| include_deleted || !r.is_deleted())
        .ok_or_else(|| ApiError::record_not_found(&collection.name, id))?;
    let etag = HeaderValue::from_maybe_shared(record.etag()).ok();
    if let Some(inm) = inm.as_ref().and_then(|v| v.to_str().ok())
        && if_none_match(inm, record.version)
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Some(etag) = etag {
            response.headers_mut().insert(header::ETAG, etag);
        }
        return Ok(response);
    }
    let sees_holds = caller.can(Permission::ReadDeleted, Some(&collection.name));
    if record.legal_hold && sees_holds {
        // The holds are read per request (they belong to the caller's scope, not to the
        // record), so this representation is not kept with the entry.
        return record_response(&state, StatusCode::OK, &caller, &collection, &record).await;
    }
    // The representation depends on the record and on whether `holds` is shown, so it is
    // rendered once per cache entry and shared by every request that reads the entry.
    let view = if sees_holds { View::NoHolds } else { View::Plain };
    let body = record
        .rendered(view, |r| serde_json::to_vec(&r.view(&collection, sees_holds.then_some(&[][..]))).map(Bytes::from))
        .map_err(|e| ApiError::Internal(format!("cannot render a response: {e}")))?;
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

async fn list_records(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let collection = collection(&state, &name)?;
    caller.require(Permission::Read, Some(&collection.name))?;
    if let Some(at) = super::history::as_of(&state, &query)? {
        count_read(&collection, false);
        return super::history::list_as_of(&state, &caller, &collection, &query.0, at).await;
    }
    let mut list = ListQuery::parse(&collection, &query.0)?;
    if let Some(q) = &list.q {
        // The index proposes candidates; the database decides (deleted, purged and erased
        // records are filtered out however far the index lags).
        let index =
            state.search.as_ref().ok_or_else(|| ApiError::Unavailable("full-text search is not configured".into()))?;
        let candidates =
            index.candidates(caller.tenant(), &collection.name, q, list.limit, list.count).map_err(|e| match e {
                SearchError::Rebuilding => ApiError::Unavailable(e.to_string()),
                e => ApiError::Internal(format!("search failed: {e}")),
            })?;
        list.candidates = Some(candidates);
    }
    if list.reads_deleted() {
        caller.require(Permission::ReadDeleted, Some(&collection.name))?;
    }
    count_read(&collection, list.reads_deleted());
    let page = state.store.list_records(caller.tenant(), &collection, &list).await?;
    let holds = holds_of(&state, &caller, &collection, &page.items.iter().collect::<Vec<_>>()).await?;
    let body = ListBody {
        items: page.items.iter().map(|r| represent(&caller, &collection, r, &holds)).collect(),
        next_cursor: page.next.as_ref().map(|p| encode_cursor(&list.sort, p)),
        total: page.total,
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn patch_record(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    query: QueryPairs,
    body: JsonBody,
) -> Result<Response, ApiError> {
    refuse_action(&id, RECORD_ACTIONS)?;
    let collection = collection(&state, &name)?;
    caller.require(Permission::Write, Some(&collection.name))?;
    query.only(&[])?;
    let id = checked_id(&collection, &id)?;
    let cond = write_precondition(&collection, &headers)?;
    let patch = parse_patch(&collection, &body.parse()?).map_err(ApiError::Validation)?;
    let record = state
        .store
        .patch_record(&caller.actor(), &collection, id, cond, patch, state.now())
        .await
        .map_err(map_not_found(&collection, id))?;
    record_response(&state, StatusCode::OK, &caller, &collection, &record).await
}

async fn delete_record(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    refuse_action(&id, RECORD_ACTIONS)?;
    let collection = collection(&state, &name)?;
    caller.require(Permission::Delete, Some(&collection.name))?;
    query.only(&["reason", "dry_run"])?;
    let id = checked_id(&collection, &id)?;
    let dry_run = match query.get("dry_run") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::BadParameter { param: "dry_run".into(), message: "must be true or false".into() });
        }
    };
    let reason = reason(&query)?;
    if dry_run {
        // A dry run changes nothing, so it needs no precondition.
        return dry_run_plan(&state, &caller, &collection, id).await;
    }
    let cond = write_precondition(&collection, &headers)?;
    let request = DeleteRequest { if_match: cond, reason, deletion_id: new_deletion_id() };
    let outcome = state
        .store
        .delete_record(&caller.actor(), &collection, id, request, state.now())
        .await
        .map_err(map_not_found(&collection, id))?;
    let deletion_id = match &outcome {
        DeleteOutcome::SoftDeleted { deletion_id, .. }
        | DeleteOutcome::AlreadyDeleted { deletion_id }
        | DeleteOutcome::HardDeleted { deletion_id } => deletion_id.clone(),
    };
    match &outcome {
        DeleteOutcome::SoftDeleted { .. } => {
            metrics::counter!("tombstone_soft_delete_total", "collection" => collection.name.clone()).increment(1);
        }
        DeleteOutcome::HardDeleted { .. } => {
            metrics::counter!("tombstone_purge_rows_total", "collection" => collection.name.clone()).increment(1);
        }
        DeleteOutcome::AlreadyDeleted { .. } => {}
    }
    if let DeleteOutcome::SoftDeleted { .. } | DeleteOutcome::HardDeleted { .. } = &outcome {
        tracing::info!(
            request_id = %crate::request_id::current(),
            actor = %caller.key.id,
            collection = %collection.name,
            "record.id" = %id,
            "deletion.id" = %deletion_id,
            reason = query.get("reason").unwrap_or(""),
            hard = matches!(outcome, DeleteOutcome::HardDeleted { .. }),
            "record deleted"
        );
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&deletion_id) {
        response.headers_mut().insert(DELETION_ID.clone(), v);
    }
    Ok(response)
}

/// The blast radius of a DELETE, without changing anything: the plan the delete would
/// execute, computed by the same code.
async fn dry_run_plan(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
) -> Result<Response, ApiError> {
    let plan = state
        .store
        .plan_deletion(&caller.actor(), collection, id, state.now())
        .await
        .map_err(map_not_found(collection, id))?
        .ok_or_else(|| ApiError::record_not_found(&collection.name, id))?;
    // Each list shows its first MAX_LISTED records and says how many there are in all: a
    // parent of a million children answers a page, not a million ids.
    let listed = |refs: &[RecordRef]| refs.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>();
    let would_delete = plan.would_delete();
    Ok(axum::Json(json!({
        "root": {"collection": collection.name, "id": id},
        "would_delete": listed(&would_delete),
        "would_delete_total": would_delete.len(),
        "blockers": plan.blockers,
        "blockers_total": plan.blockers_total,
        "orphaned": listed(&plan.orphaned),
        "orphaned_total": plan.orphaned.len(),
        "eventual": listed(&plan.eventual),
        "eventual_total": plan.eventual.len(),
        "counts": plan.counts(),
    }))
    .into_response())
}

/// `POST /v1/{c}/{id}:action`.
async fn record_action(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, target)): ApiPath<(String, String)>,
    headers: HeaderMap,
    query: QueryPairs,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A body that could not be read (too large, or stalled past the body read timeout)
    // fails the request as it always has, before anything else, with its own problem.
    let body = body?;
    let collection = collection(&state, &name)?;
    let Some((id, action)) = target.rsplit_once(':') else {
        return Err(ApiError::RecordMethodNotAllowed);
    };
    match action {
        "restore" => restore_record(&state, &caller, &collection, id, &headers, &query).await,
        "purge" => purge_record(&state, &caller, &collection, id, &query).await,
        "erase" => erase_record(&state, &caller, &collection, id, &query).await,
        "hold" => hold_record(&state, &caller, &collection, id, &query, body).await,
        "release" => release_hold(&state, &caller, &collection, id, &query).await,
        "archive" => archive_record(&state, &caller, &collection, id, &headers, &query, Some(body)).await,
        "unarchive" => archive_record(&state, &caller, &collection, id, &headers, &query, None).await,
        "revert" => {
            caller.require(Permission::Write, Some(&collection.name))?;
            let cond = write_precondition(&collection, &headers)?;
            let record = super::history::revert_record(&state, &caller, &collection, id, &query, cond).await?;
            log_action(&caller, &collection, id, None, "reverted");
            record_response(&state, StatusCode::OK, &caller, &collection, &record).await
        }
        other => Err(ApiError::NotFound(format!("no action {other:?} on records"))),
    }
}

/// `:archive` (with its optional body `{"reason"}`) and `:unarchive` (`body` is `None`)
/// (§17): 200 with the record, whether it changed or already was as asked.
async fn archive_record(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    headers: &HeaderMap,
    query: &QueryPairs,
    body: Option<Bytes>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Write, Some(&collection.name))?;
    query.only(&[])?;
    let id = checked_id(collection, id)?;
    let cond = write_precondition(collection, headers)?;
    let request = match body {
        Some(body) => {
            let value: Value = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { parse_json(&body)? };
            let Some(object) = value.as_object() else {
                return Err(ApiError::Validation(ValidationErrors(vec![FieldError {
                    field: String::new(),
                    message: "the body must be a JSON object {\"reason\"}".into(),
                }])));
            };
            if let Some(unknown) = object.keys().find(|k| *k != "reason") {
                return Err(ApiError::Validation(ValidationErrors(vec![FieldError {
                    field: unknown.clone(),
                    message: "is not an archive field (reason)".into(),
                }])));
            }
            ArchiveRequest::Archive { reason: optional_text(object, "reason")? }
        }
        None => ArchiveRequest::Unarchive,
    };
    let before = state.now();
    let record = state
        .store
        .archive_record(&caller.actor(), collection, id, request.clone(), cond, before)
        .await
        .map_err(map_not_found(collection, id))?;
    if record.updated_at == before {
        let (action, reason) = match &request {
            ArchiveRequest::Archive { reason } => ("archived", reason.as_deref()),
            ArchiveRequest::Unarchive => ("unarchived", None),
        };
        log_action(caller, collection, id, reason, action);
    }
    record_response(state, StatusCode::OK, caller, collection, &record).await
}

async fn restore_record(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    headers: &HeaderMap,
    query: &QueryPairs,
) -> Result<Response, ApiError> {
    let (id, reason) = action_request(caller, collection, id, query, Permission::Restore)?;
    let cond = write_precondition(collection, headers)?;
    let outcome = state
        .store
        .restore_record(&caller.actor(), collection, id, cond, reason.clone(), state.now())
        .await
        .map_err(map_not_found(collection, id))?;
    let record = match outcome {
        RestoreOutcome::Restored(record) => {
            metrics::counter!("tombstone_restore_total", "collection" => collection.name.clone()).increment(1);
            log_action(caller, collection, id, reason.as_deref(), "restored");
            record
        }
        RestoreOutcome::AlreadyActive(record) => record,
    };
    record_response(state, StatusCode::OK, caller, collection, &record).await
}

/// The common start of `:restore`, `:purge` and `:erase`: the scope, the only parameter
/// (`reason`), a possible id.
fn action_request<'a>(
    caller: &Caller,
    collection: &Collection,
    id: &'a str,
    query: &QueryPairs,
    permission: Permission,
) -> Result<(&'a str, Option<String>), ApiError> {
    caller.require(permission, Some(&collection.name))?;
    query.only(&["reason"])?;
    let id = checked_id(collection, id)?;
    Ok((id, reason(query)?))
}

/// Logs a lifecycle step: who, which record, why — never values.
fn log_action(caller: &Caller, collection: &Collection, id: &str, reason: Option<&str>, action: &'static str) {
    tracing::info!(
        request_id = %crate::request_id::current(),
        actor = %caller.key.id,
        collection = %collection.name,
        "record.id" = %id,
        reason = reason.unwrap_or(""),
        action,
        "record {action}"
    );
}

async fn purge_record(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    query: &QueryPairs,
) -> Result<Response, ApiError> {
    let (id, reason) = action_request(caller, collection, id, query, Permission::Purge)?;
    state
        .store
        .purge_record(&caller.actor(), collection, id, reason.clone(), state.now())
        .await
        .map_err(map_not_found(collection, id))?;
    metrics::counter!("tombstone_purge_rows_total", "collection" => collection.name.clone()).increment(1);
    log_action(caller, collection, id, reason.as_deref(), "purged");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn erase_record(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    query: &QueryPairs,
) -> Result<Response, ApiError> {
    let (id, reason) = action_request(caller, collection, id, query, Permission::Erase)?;
    let erasure = match state.store.erase_record(&caller.actor(), collection, id, reason.clone(), state.now()).await {
        Ok(erasure) => {
            for (name, n) in &erasure.counts {
                metrics::counter!("tombstone_erase_total", "collection" => name.clone()).increment(*n);
            }
            log_action(caller, collection, id, reason.as_deref(), "erased");
            erasure
        }
        // Erased before (a retry after a lost answer, or a look at what is still pending):
        // the stored receipt as it stands now, changing nothing.
        Err(StoreError::NotFound) => state
            .store
            .erasure_receipt(caller.tenant(), &collection.name, id)
            .await?
            .ok_or_else(|| ApiError::record_not_found(&collection.name, id))?,
        Err(other) => return Err(other.into()),
    };
    Ok(axum::Json(erasure_receipt(&erasure)).into_response())
}

/// The receipt of an erasure (SPEC §6.11), with `pending`: the steps that run after the
/// commit and are not done yet (`search`, `wal`), empty once no copy is left anywhere.
fn erasure_receipt(erasure: &tombstone_store::Erasure) -> Value {
    let pending: Vec<&str> = erasure.pending.iter().map(|s| s.as_str()).collect();
    json!({
        "collection": erasure.collection,
        "id": erasure.id,
        "erased_at": erasure.erased_at.to_rfc3339(),
        "audit_seq": erasure.audit_seq,
        "scrubbed": {
            "versions": erasure.versions,
            "events": erasure.events,
            "idempotent_responses": erasure.idempotent_responses,
            // True once the index holds no term of it; until then `pending` names "search".
            "search": !erasure.pending.contains(&tombstone_store::ErasureStep::Search),
            // The cache entries were invalidated in the erasure's commit.
            "cache": true,
        },
        "counts": erasure.counts,
        // Stored files the erased records referenced; each goes with its last reference,
        // removed by the files worker within a second of the commit (§15).
        "files": erasure.files,
        "pending": pending,
    })
}

fn optional_text(object: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= 500 && !s.contains('\0') => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::Validation(ValidationErrors(vec![FieldError {
            field: name.into(),
            message: "must be a string of at most 500 characters, without U+0000".into(),
        }]))),
    }
}

async fn hold_record(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    query: &QueryPairs,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Permission::Hold, Some(&collection.name))?;
    query.only(&[])?;
    let id = checked_id(collection, id)?;
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { parse_json(&body)? };
    let Some(object) = value.as_object() else {
        return Err(ApiError::Validation(ValidationErrors(vec![FieldError {
            field: String::new(),
            message: "the body must be a JSON object {\"case\", \"reason\"}".into(),
        }])));
    };
    if let Some(unknown) = object.keys().find(|k| *k != "case" && *k != "reason") {
        return Err(ApiError::Validation(ValidationErrors(vec![FieldError {
            field: unknown.clone(),
            message: "is not a hold field (case, reason)".into(),
        }])));
    }
    let case = optional_text(object, "case")?;
    let reason = optional_text(object, "reason")?;
    let hold = state
        .store
        .place_hold(&caller.actor(), collection, id, case, reason, state.now())
        .await
        .map_err(map_not_found(collection, id))?;
    tracing::info!(
        request_id = %crate::request_id::current(),
        actor = %caller.key.id,
        collection = %collection.name,
        "record.id" = %id,
        "hold.id" = %hold.hold_id,
        "legal hold placed"
    );
    Ok((StatusCode::CREATED, axum::Json(hold)).into_response())
}

async fn release_hold(
    state: &AppState,
    caller: &Caller,
    collection: &Arc<Collection>,
    id: &str,
    query: &QueryPairs,
) -> Result<Response, ApiError> {
    caller.require(Permission::Hold, Some(&collection.name))?;
    query.only(&["hold_id", "reason"])?;
    let id = checked_id(collection, id)?;
    let hold_id = query.get("hold_id").ok_or_else(|| ApiError::BadParameter {
        param: "hold_id".into(),
        message: "is required: the hold to release".into(),
    })?;
    let reason = reason(query)?;
    let record =
        state.store.release_hold(&caller.actor(), collection, id, hold_id, reason, state.now()).await.map_err(|e| {
            match e {
                StoreError::NotFound => ApiError::NotFound(format!("no active hold {hold_id} on {id}")),
                other => other.into(),
            }
        })?;
    record_response(state, StatusCode::OK, caller, collection, &record).await
}
