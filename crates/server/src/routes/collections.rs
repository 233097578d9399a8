//! `GET /v1/collections`: the collections the key may read, each with its declared fields
//! and the tenant's counts (active, in the trash, expiring within 7 days, held). It is the
//! dashboard's front page; the same facts are in `/openapi.json` except the counts.
//!
//! Counts follow the scopes like every other read: `active` needs `read` on the
//! collection, the others `read_deleted` (they describe deleted records); a count the key
//! may not see is `null`, never a zero that would read as "nothing there".

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tombstone_domain::config::{Collection, DeleteMode, FieldType, OnDelete};
use tombstone_domain::scope::Permission;

use super::extract::QueryPairs;
use super::retention::PREVIEW_HORIZON;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/collections", get(list_collections))
}

fn on_delete_name(policy: OnDelete) -> &'static str {
    match policy {
        OnDelete::Restrict => "restrict",
        OnDelete::Cascade => "cascade",
        OnDelete::Orphan => "orphan",
        OnDelete::Eventual => "eventual",
    }
}

fn describe(c: &Collection) -> Value {
    let fields: Vec<Value> = c
        .fields
        .values()
        .map(|f| {
            let mut v = json!({
                "name": f.name,
                "type": f.ty.name(),
                "required": f.required,
                "search": f.search,
                "pii": f.pii,
            });
            if let FieldType::Ref { collection, on_delete } = &f.ty {
                v["ref"] = json!({"collection": collection, "on_delete": on_delete_name(*on_delete)});
            }
            v
        })
        .collect();
    json!({
        "name": c.name,
        "delete": match c.delete { DeleteMode::Soft => "soft", DeleteMode::Hard => "hard" },
        "retention_seconds": c.retention.as_secs(),
        "require_if_match": c.require_if_match,
        "archive_after_seconds": c.archive_after.map(|d| d.as_secs()),
        "unique": c.unique,
        "fields": fields,
    })
}

async fn list_collections(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    query.only(&[])?;
    let visible: Vec<Arc<Collection>> = state
        .schema
        .collections
        .values()
        .filter(|c| caller.can(Permission::Read, Some(&c.name)) || caller.can(Permission::ReadDeleted, Some(&c.name)))
        .cloned()
        .collect();
    if visible.is_empty() {
        return Err(ApiError::Forbidden(Permission::Read));
    }
    let horizon = state.now().saturating_add(PREVIEW_HORIZON);
    let counts = state.store.collection_counts(caller.tenant(), &visible, horizon).await?;
    let items: Vec<Value> = visible
        .iter()
        .zip(&counts)
        .map(|(c, n)| {
            let read = caller.can(Permission::Read, Some(&c.name));
            let deleted = caller.can(Permission::ReadDeleted, Some(&c.name));
            let mut v = describe(c);
            v["counts"] = json!({
                "active": read.then_some(n.active),
                "archived": read.then_some(n.archived),
                "deleted": deleted.then_some(n.deleted),
                "expiring_7d": deleted.then_some(n.expiring),
                "held": deleted.then_some(n.held),
            });
            v
        })
        .collect();
    Ok(axum::Json(json!({"items": items, "next_cursor": null})).into_response())
}
