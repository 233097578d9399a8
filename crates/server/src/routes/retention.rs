//! The trash (`GET /v1/trash`: deleted records still inside their window, newest first)
//! and purge control: `GET /v1/purge/preview`, `POST /v1/purge:pause`, `POST /v1/purge:resume`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use tombstone_domain::config::Collection;
use tombstone_domain::query::{parse_limit, parse_time_param};
use tombstone_domain::scope::Permission;
use tombstone_domain::time::Timestamp;
use tombstone_store::{TrashPosition, TrashQuery};

use super::extract::QueryPairs;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// How far ahead the preview looks.
pub const PREVIEW_HORIZON: Duration = Duration::from_secs(7 * 86_400);

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/trash", get(list_trash))
        .route("/v1/purge/preview", get(preview))
        .route("/v1/purge:pause", post(pause))
        .route("/v1/purge:resume", post(resume))
}

fn bad_cursor() -> ApiError {
    ApiError::BadParameter { param: "cursor".into(), message: "not a cursor issued by this server".into() }
}

fn encode_position(p: &TrashPosition) -> String {
    let wire = json!([p.deleted_at.as_micros(), p.collection, p.id]);
    URL_SAFE_NO_PAD.encode(wire.to_string())
}

fn decode_position(cursor: &str) -> Result<TrashPosition, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad_cursor())?;
    let (at, collection, id): (i64, String, String) = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    Ok(TrashPosition { deleted_at: Timestamp::from_micros(at), collection, id })
}

/// The collections a request covers: the one named (which the key must hold `permission`
/// on), or every collection the key holds it on — at least one, else 403.
fn scoped_collections(
    state: &AppState,
    caller: &Caller,
    named: Option<&str>,
    permission: Permission,
) -> Result<Vec<Arc<Collection>>, ApiError> {
    if let Some(name) = named {
        let c = state.schema.collection(name).cloned().ok_or_else(|| ApiError::BadParameter {
            param: "collection".into(),
            message: "unknown collection".into(),
        })?;
        caller.require(permission, Some(name))?;
        return Ok(vec![c]);
    }
    let allowed: Vec<_> =
        state.schema.collections.values().filter(|c| caller.can(permission, Some(&c.name))).cloned().collect();
    if allowed.is_empty() {
        return Err(ApiError::Forbidden(permission));
    }
    Ok(allowed)
}

async fn list_trash(State(state): State<AppState>, caller: Caller, query: QueryPairs) -> Result<Response, ApiError> {
    query.only(&["collection", "deleted_since", "deleted_before", "deleted_by", "purge_before", "limit", "cursor"])?;
    let collections = scoped_collections(&state, &caller, query.get("collection"), Permission::ReadDeleted)?;
    let limit = parse_limit(query.get("limit"))?;
    let time = |name: &str| query.get(name).map(|v| parse_time_param(name, v)).transpose();
    let q = TrashQuery {
        deleted_since: time("deleted_since")?,
        deleted_before: time("deleted_before")?,
        deleted_by: query.get("deleted_by").map(str::to_string),
        purge_before: time("purge_before")?,
        after: query.cursor().map(decode_position).transpose()?,
        limit: limit + 1,
    };
    let mut records = state.store.list_trash(caller.tenant(), &collections, &q, state.now()).await?;
    let next = if records.len() > limit as usize {
        records.truncate(limit as usize);
        records.last().and_then(|r| {
            r.deletion.as_ref().map(|d| {
                encode_position(&TrashPosition {
                    deleted_at: d.deleted_at,
                    collection: r.collection.clone(),
                    id: r.id.clone(),
                })
            })
        })
    } else {
        None
    };
    // Every trash reader has read_deleted, so holds are shown.
    let mut holds = std::collections::HashMap::new();
    for c in &collections {
        let held: Vec<String> =
            records.iter().filter(|r| r.collection == c.name && r.legal_hold).map(|r| r.id.clone()).collect();
        if !held.is_empty() {
            for (id, h) in state.store.active_holds(caller.tenant(), &c.name, &held).await? {
                holds.insert((c.name.clone(), id), h);
            }
        }
    }
    let items: Vec<Value> = records
        .iter()
        .filter_map(|r| {
            let shown = holds.get(&(r.collection.clone(), r.id.clone())).map_or(&[][..], Vec::as_slice);
            state.schema.collection(&r.collection).map(|c| r.to_json(c, Some(shown)))
        })
        .collect();
    for c in &collections {
        metrics::counter!("tombstone_include_deleted_reads_total", "collection" => c.name.clone()).increment(1);
    }
    Ok(axum::Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn preview(State(state): State<AppState>, caller: Caller, query: QueryPairs) -> Result<Response, ApiError> {
    query.only(&["collection"])?;
    let collections = scoped_collections(&state, &caller, query.get("collection"), Permission::Purge)?;
    let now = state.now();
    let due =
        state.store.purge_due(Some(caller.tenant()), &collections, now, now.saturating_add(PREVIEW_HORIZON)).await?;
    let mut per_collection = Map::new();
    let mut total = 0;
    for d in &due {
        total += d.due_now;
        per_collection.insert(
            d.collection.clone(),
            json!({"count": d.due_now, "sample": d.sample, "due_next_7_days": d.due_soon, "held": d.held}),
        );
    }
    Ok(axum::Json(json!({
        "as_of": now.to_rfc3339(),
        "paused": state.store.purge_paused().await?,
        "total": total,
        "collections": per_collection,
    }))
    .into_response())
}

async fn set_paused(state: &AppState, caller: &Caller, paused: bool) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    state.store.set_purge_paused(paused).await?;
    tracing::info!(request_id = %crate::request_id::current(), actor = %caller.key.id, paused, "purge pause changed");
    Ok(axum::Json(json!({"paused": paused})).into_response())
}

async fn pause(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    set_paused(&state, &caller, true).await
}

async fn resume(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    set_paused(&state, &caller, false).await
}
