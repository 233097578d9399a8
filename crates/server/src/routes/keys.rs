//! Key management: `POST/GET /v1/keys`, `DELETE /v1/keys/{id}` (admin scope).
//!
//! Confined to the caller's tenant like every other route: another tenant's key answers
//! 404 exactly as an absent one (no existence leak), a key for another tenant is refused
//! (403), and a new key may hold only scopes its creator holds (403 naming the first
//! missing one), so whoever is given one tenant's admin key cannot reach another tenant.
//! Operators manage every tenant with the CLI (`tombstone keys …`), which works on the
//! database directly.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Value, json};
use tombstone_domain::query::parse_limit;
use tombstone_domain::record::{FieldError, ValidationErrors};
use tombstone_domain::scope::{Permission, Scope, first_not_granted, parse_scope_items, parse_scopes};
use tombstone_store::StoredKey;

use super::extract::{ApiPath, JsonBody, QueryPairs};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::keys::{create_key_by, valid_tenant};

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/keys", get(list_keys).post(create)).route("/v1/keys/{id}", delete(revoke).get(get_key))
}

/// A key as the API shows it (never the secret or its hash).
pub(crate) fn key_json(key: &StoredKey) -> Value {
    json!({
        "id": key.id,
        "tenant": key.tenant,
        "name": key.name,
        "scopes": key.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "created_at": key.created_at.to_rfc3339(),
    })
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation(ValidationErrors(vec![FieldError { field: field.into(), message: message.into() }]))
}

/// Checks that collection-narrowed scopes name configured collections.
pub(crate) fn check_scope_collections(state: &AppState, scopes: &[Scope]) -> Result<(), String> {
    for s in scopes {
        if let Some(c) = &s.collection
            && state.schema.collection(c).is_none()
        {
            return Err(format!("scope {s} names unknown collection {c:?}"));
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryPairs,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    query.only(&[])?;
    let body = body.parse()?;
    let object = body.as_object().ok_or_else(|| invalid("", "the body must be a JSON object"))?;
    if let Some(unknown) = object.keys().find(|k| !["tenant", "scopes", "name"].contains(&k.as_str())) {
        return Err(invalid(unknown, "is not a key field (tenant, scopes, name)"));
    }
    let tenant = match object.get("tenant") {
        None | Some(Value::Null) => caller.tenant().to_string(),
        Some(Value::String(t)) if valid_tenant(t) => t.clone(),
        Some(_) => return Err(invalid("tenant", "must be 1-64 of A-Z a-z 0-9 _ -")),
    };
    // The tenant is named in the body only so that a client can state it; naming another
    // one is an authorisation failure, not a malformed body: no key may create it.
    if tenant != caller.tenant() {
        return Err(ApiError::Denied(format!(
            "a key can only create keys for its own tenant ({}); operators manage other tenants with `tombstone keys create`",
            caller.tenant()
        )));
    }
    let scopes = match object.get("scopes") {
        Some(Value::Array(items)) => {
            let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let names = names.ok_or_else(|| invalid("scopes", "must be strings"))?;
            parse_scope_items(names).map_err(|m| invalid("scopes", m))?
        }
        Some(Value::String(list)) => parse_scopes(list).map_err(|m| invalid("scopes", m))?,
        _ => return Err(invalid("scopes", "is required: a list such as [\"read\", \"delete:products\"]")),
    };
    check_scope_collections(&state, &scopes).map_err(|m| invalid("scopes", m))?;
    if let Some(missing) = first_not_granted(caller.scopes(), &scopes) {
        return Err(ApiError::Forbidden(missing.permission));
    }
    let name = match object.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= 200 => Some(n.clone()),
        Some(_) => return Err(invalid("name", "must be a string of at most 200 characters")),
    };
    let created = create_key_by(state.store.as_ref(), &caller.actor(), &tenant, scopes, name, state.now()).await?;
    let mut body = key_json(&created.key);
    body["secret"] = json!(created.secret);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn list_keys(State(state): State<AppState>, caller: Caller, query: QueryPairs) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    query.only(&["limit", "cursor", "tenant"])?;
    let limit = parse_limit(query.get("limit"))? as usize;
    let after = query.get("cursor");
    // `tenant` is kept for clients that send it; another tenant's keys are never listed.
    let tenant = query.get("tenant");
    let keys = state.store.list_keys().await?;
    let mut matching = keys
        .iter()
        .filter(|k| k.tenant == caller.tenant())
        .filter(|k| tenant.is_none_or(|t| k.tenant == t))
        .filter(|k| after.is_none_or(|a| k.id.as_str() > a));
    let items: Vec<Value> = matching.by_ref().take(limit).map(key_json).collect();
    let next =
        if matching.next().is_some() { items.last().and_then(|k| k["id"].as_str()).map(str::to_string) } else { None };
    Ok(axum::Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn get_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    let key = own_key(&state, &caller, &id).await?;
    Ok(axum::Json(key_json(&key)).into_response())
}

/// The key `id` if it belongs to the caller's tenant; otherwise the same 404 as for a key
/// that does not exist.
async fn own_key(state: &AppState, caller: &Caller, id: &str) -> Result<StoredKey, ApiError> {
    match state.store.find_key(id).await? {
        Some(key) if key.tenant == caller.tenant() => Ok(key),
        _ => Err(ApiError::NotFound(format!("no key {id}"))),
    }
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    // A key's tenant never changes, so checking it before the revocation is not a race.
    own_key(&state, &caller, &id).await?;
    if !state.store.revoke_key(&id, &caller.actor(), state.now()).await? {
        return Err(ApiError::NotFound(format!("no key {id}")));
    }
    state.keys.forget(&id).await;
    // Its open event streams end now, not at the hub's next key check.
    state.hub.close_key(&id);
    tracing::info!(request_id = %crate::request_id::current(), actor = %caller.key.id, "key.id" = %id, "key revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}
