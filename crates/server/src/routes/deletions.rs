//! Deletion operations: `GET /v1/deletions/{id}` (what one DELETE took, its status and
//! how far it has propagated) and `POST /v1/deletions/{id}:restore` (exactly those
//! records back, all or nothing).

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tombstone_domain::deletion::RecordRef;
use tombstone_domain::query::parse_limit;
use tombstone_domain::scope::Permission;
use tombstone_store::{RecordsPage, StoreError};

use super::extract::{ApiPath, QueryPairs};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, item_method_not_allowed, refuse_action};

pub(crate) fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/deletions/{target}",
        get(get_deletion)
            .post(restore_deletion)
            .fallback(|uri: Uri| async move { item_method_not_allowed(&uri, DELETION_METHODS, &["restore"]) }),
    )
}

/// Records per page of an operation when `limit` is not given: the most a list takes, so
/// an operation of up to 500 records still answers all of them at once.
const DEFAULT_RECORDS: &str = "500";

/// The methods a deletion operation's URL takes (`…:restore` takes POST).
const DELETION_METHODS: &str = "GET,HEAD";

fn bad_cursor() -> ApiError {
    ApiError::BadParameter { param: "cursor".into(), message: "not a cursor issued by this server".into() }
}

/// A page cursor: the last record of the previous page.
fn encode_cursor(after: &RecordRef) -> String {
    URL_SAFE_NO_PAD.encode(json!([after.collection, after.id]).to_string())
}

fn decode_cursor(cursor: &str) -> Result<RecordRef, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad_cursor())?;
    let (collection, id): (String, String) = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    Ok(RecordRef { collection, id })
}

/// `GET /v1/deletions/{id}`: the operation with one page of its `records` (`limit`, default
/// and at most 500, and `cursor`, the previous page's `records_next_cursor`); `counts` and
/// `records_total` always cover all of them.
async fn get_deletion(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    refuse_action(&id, &["restore"])?;
    query.only(&["limit", "cursor"])?;
    // An empty parameter reads as absent.
    let limit = parse_limit(query.get("limit").filter(|v| !v.is_empty()).or(Some(DEFAULT_RECORDS)))?;
    let after = query.get("cursor").filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
    let op = state
        .store
        .get_deletion(caller.tenant(), &id, &RecordsPage { after, limit })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no deletion operation {id}")))?;
    // Reading an operation shows deleted records' ids: read_deleted on its root's collection.
    caller.require(Permission::ReadDeleted, Some(&op.root.collection))?;
    let mut propagation = json!({
        // Events are committed with the deletion itself.
        "outbox": {"status": "done"},
        // Cache entries are invalidated in the deletion's commit, before it answers.
        "cache": {"status": "done"},
        "search": search_status(&state, op.last_event_seq),
        "webhooks": op.webhooks,
    });
    if state.events.nats.is_some() {
        // Done once the relay's stored position (acked by JetStream) is past its events.
        let status = crate::nats::propagation(state.store.as_ref(), op.last_event_seq).await?;
        propagation["nats"] = json!({"status": status});
    }
    Ok(axum::Json(json!({
        "id": op.id,
        "status": op.status,
        "actor": op.actor,
        "reason": op.reason,
        "created_at": op.created_at.to_rfc3339(),
        "root": op.root,
        "records": op.records,
        "records_next_cursor": op.records_next.as_ref().map(encode_cursor),
        "records_total": op.records_total,
        "pending_relations": op.pending_relations,
        "counts": op.counts,
        "restorable_until": op.restorable_until.map(|t| t.to_rfc3339()),
        "propagation": propagation,
    }))
    .into_response())
}

/// Whether the search index has consumed the operation's events.
fn search_status(state: &AppState, last_event_seq: Option<i64>) -> Value {
    match (&state.search, last_event_seq) {
        (None, _) | (_, None) => json!({"status": "done"}),
        (Some(index), Some(seq)) => match index.position() {
            Ok(p) if p >= seq => json!({"status": "done"}),
            Ok(_) => json!({"status": "pending"}),
            Err(e) => {
                // Tenants read this answer: a class here, the cause in the operator's log.
                tracing::warn!(error = %e, "deletion.seq" = seq, "cannot read the search index position");
                json!({"status": "failed", "last_error": "index"})
            }
        },
    }
}

async fn restore_deletion(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(target): ApiPath<String>,
) -> Result<Response, ApiError> {
    let Some(id) = target.strip_suffix(":restore") else {
        return Err(ApiError::MethodNotAllowed { allow: Some(DELETION_METHODS) });
    };
    // Only its counts are needed here: one record's page.
    let op = state
        .store
        .get_deletion(caller.tenant(), id, &RecordsPage { after: None, limit: 1 })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no deletion operation {id}")))?;
    for collection in op.counts.keys() {
        caller.require(Permission::Restore, Some(collection))?;
    }
    let restored = state.store.restore_deletion(&caller.actor(), id, state.now()).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("no deletion operation {id}")),
        other => other.into(),
    })?;
    tracing::info!(
        request_id = %crate::request_id::current(),
        actor = %caller.key.id,
        "deletion.id" = %id,
        restored = restored.len(),
        "deletion operation restored"
    );
    for r in &restored {
        metrics::counter!("tombstone_restore_total", "collection" => r.collection.clone()).increment(1);
    }
    let items: Vec<Value> =
        restored.iter().filter_map(|r| state.schema.collection(&r.collection).map(|c| r.to_json(c, None))).collect();
    Ok(axum::Json(json!({"deletion_id": id, "restored": items.len(), "items": items, "next_cursor": null}))
        .into_response())
}
