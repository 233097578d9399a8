//! Webhook deliveries and endpoints: `GET /v1/webhooks/deliveries` (filters `status`,
//! `endpoint`), `POST /v1/webhooks/deliveries/{id}:redeliver`, and for operators
//! `GET /v1/webhooks/endpoints` and `POST /v1/webhooks/endpoints/{id}:enable`.
//!
//! Every answer here is read by tenants: endpoints appear by id (and, to admins, by
//! scheme and host), errors as a class; full URLs stay in the config and the log.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tombstone_domain::query::parse_limit;
use tombstone_domain::scope::Permission;
use tombstone_store::{Delivery, DeliveryQuery, Redelivery};

use super::extract::{ApiPath, QueryPairs};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks/deliveries", get(list_deliveries))
        .route("/v1/webhooks/deliveries/{target}", post(redeliver))
        .route("/v1/webhooks/endpoints", get(list_endpoints))
        .route("/v1/webhooks/endpoints/{target}", post(enable_endpoint))
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "endpoint_id": d.endpoint_id,
        "event_id": d.event_id,
        "event_seq": d.event_seq,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": (d.status == "pending").then(|| d.next_attempt_at.to_rfc3339()),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "last_attempt_at": d.last_attempt_at.map(|t| t.to_rfc3339()),
        "delivered_at": d.delivered_at.map(|t| t.to_rfc3339()),
        "created_at": d.created_at.to_rfc3339(),
    })
}

async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    caller.require(Permission::Events, None)?;
    query.only(&["status", "endpoint", "cursor", "limit"])?;
    let limit = parse_limit(query.get("limit"))?;
    let status = query.get("status").map(str::to_string);
    if let Some(s) = &status
        && !["pending", "delivered", "failed", "cancelled"].contains(&s.as_str())
    {
        return Err(ApiError::BadParameter {
            param: "status".into(),
            message: "one of pending, delivered, failed, cancelled".into(),
        });
    }
    let q = DeliveryQuery {
        status,
        endpoint_id: query.get("endpoint").map(str::to_string),
        after: query.cursor().map(str::to_string),
        limit: limit + 1,
    };
    let mut items = state.store.list_deliveries(caller.tenant(), &q).await?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|d| d.id.clone())
    } else {
        None
    };
    let items: Vec<Value> = items.iter().map(delivery_json).collect();
    Ok(axum::Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(target): ApiPath<String>,
) -> Result<Response, ApiError> {
    let Some(id) = target.strip_suffix(":redeliver") else {
        return Err(ApiError::NotFound(format!("no action on deliveries in {target:?}")));
    };
    caller.require(Permission::Events, None)?;
    let delivery = match state.store.redeliver(caller.tenant(), id, state.now()).await? {
        Redelivery::Pending(delivery) => delivery,
        Redelivery::NotFound => return Err(ApiError::NotFound(format!("no delivery {id}"))),
        Redelivery::EventGone => {
            return Err(ApiError::EventGone(format!(
                "the event of delivery {id} was cleaned out of the outbox; there is nothing left to send"
            )));
        }
        Redelivery::EndpointRemoved => {
            return Err(ApiError::EndpointRemoved(format!(
                "the endpoint of delivery {id} is no longer configured; nothing can be sent to it"
            )));
        }
    };
    state.store.changes().notify_waiters();
    Ok(axum::Json(delivery_json(&delivery)).into_response())
}

async fn list_endpoints(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    let items: Vec<Value> = state
        .store
        .webhook_endpoints()
        .await?
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "url": redacted_url(&e.url),
                "cursor": e.cursor,
                "disabled": e.disabled_at.is_some(),
                "disabled_at": e.disabled_at.map(|t| t.to_rfc3339()),
                "disabled_reason": e.disabled_reason,
                "removed": e.removed_at.is_some(),
                "removed_at": e.removed_at.map(|t| t.to_rfc3339()),
            })
        })
        .collect();
    Ok(axum::Json(json!({"items": items, "next_cursor": null})).into_response())
}

/// An endpoint URL as an admin key may see it: scheme, host and port. Admin keys belong
/// to a tenant, and the path, query or user part may carry a token (`?token=…`,
/// `/services/T0/B0/secret`, `user:pass@`).
fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}/…", u.scheme())
        }
        Err(_) => "…".into(),
    }
}

async fn enable_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(target): ApiPath<String>,
) -> Result<Response, ApiError> {
    let Some(id) = target.strip_suffix(":enable") else {
        return Err(ApiError::NotFound(format!("no action on endpoints in {target:?}")));
    };
    caller.require(Permission::Admin, None)?;
    if !state.store.enable_webhook_endpoint(id).await? {
        return Err(ApiError::NotFound(format!("no webhook endpoint {id}")));
    }
    state.store.changes().notify_waiters();
    Ok(axum::Json(json!({"id": id, "disabled": false})).into_response())
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn urls_are_shown_as_scheme_and_host() {
        assert_eq!(
            redacted_url("https://user:pw@hooks.example.com/services/T0/B0/x?token=s3"),
            "https://hooks.example.com/…"
        );
        assert_eq!(redacted_url("http://127.0.0.1:8080/hook?token=s3"), "http://127.0.0.1:8080/…");
        assert_eq!(redacted_url("not a url"), "…");
    }
}
