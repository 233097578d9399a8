//! `GET /v1/audit`: the tenant's audit entries, oldest first. There is no way to change
//! or delete an entry: every other method answers 405.
//!
//! `GET /v1/audit/verify` (admin): the last whole-chain check, as the database has it;
//! `POST /v1/audit/verify` asks for a fresh one (coalesced, see [`crate::audit_verify`]).
//! The chain is one for the deployment, so a tenant is told its status and when it was
//! checked, and where it breaks only when the broken entry is the tenant's own: never
//! another tenant's entry or how many entries the log holds.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tombstone_domain::audit::AuditAction;
use tombstone_domain::query::{parse_limit, parse_time_param};
use tombstone_domain::scope::Permission;
use tombstone_store::{AuditCheck, AuditQuery};

use super::extract::{ApiPath, QueryPairs};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_status).post(verify_now))
        .route("/v1/audit/{seq}", get(get_entry))
}

/// The verify status as one tenant may see it.
fn verify_body(tenant: &str, check: Option<&AuditCheck>) -> Value {
    let Some(check) = check else {
        return json!({"status": "pending", "checked_at": null, "broken_entry": null, "broken_in_this_tenant": null});
    };
    let broken = check.broken.as_ref();
    let own = broken.map(|b| b.tenant.as_deref() == Some(tenant));
    json!({
        "status": if broken.is_some() { "broken" } else { "intact" },
        "checked_at": check.checked_at.to_rfc3339(),
        "broken_entry": broken.filter(|_| own == Some(true)).map(|b| json!({"seq": b.seq, "problem": b.problem})),
        "broken_in_this_tenant": own,
    })
}

async fn verify_status(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    let check = state.store.audit_check().await?;
    Ok(axum::Json(verify_body(caller.tenant(), check.as_ref())).into_response())
}

async fn verify_now(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Permission::Admin, None)?;
    Ok(match crate::audit_verify::check(&state, crate::audit_verify::REUSE_WITHIN).await? {
        crate::audit_verify::Checked::Done { check, reused } => {
            let mut body = verify_body(caller.tenant(), Some(&check));
            body["running"] = json!(false);
            body["reused"] = json!(reused);
            axum::Json(body).into_response()
        }
        crate::audit_verify::Checked::Running(last) => {
            let mut body = verify_body(caller.tenant(), last.as_ref());
            body["running"] = json!(true);
            body["reused"] = json!(false);
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
    })
}

fn bad(param: &str, message: &str) -> ApiError {
    ApiError::BadParameter { param: param.into(), message: message.into() }
}

async fn list_audit(State(state): State<AppState>, caller: Caller, query: QueryPairs) -> Result<Response, ApiError> {
    caller.require(Permission::Audit, None)?;
    query.only(&["collection", "record_id", "action", "actor", "since", "cursor", "limit"])?;
    let limit = parse_limit(query.get("limit"))?;
    if let Some(a) = query.get("action")
        && AuditAction::parse(a).is_none()
    {
        return Err(bad("action", "unknown action"));
    }
    let after = match query.cursor() {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| bad("cursor", "not a cursor issued by this server"))?),
    };
    let since = query.get("since").map(|s| parse_time_param("since", s)).transpose()?;
    let q = AuditQuery {
        collection: query.get("collection").map(str::to_string),
        record_id: query.get("record_id").map(str::to_string),
        action: query.get("action").map(str::to_string),
        actor: query.get("actor").map(str::to_string),
        since,
        after,
        limit: limit + 1,
    };
    let mut entries = state.store.list_audit(caller.tenant(), &q).await?;
    let next = if entries.len() > limit as usize {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(axum::Json(json!({"items": entries, "next_cursor": next})).into_response())
}

async fn get_entry(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(seq): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Audit, None)?;
    let not_found = || ApiError::NotFound(format!("no audit entry {seq}"));
    let n: i64 = seq.parse().map_err(|_| not_found())?;
    let q = AuditQuery { after: Some(n - 1), limit: 1, ..AuditQuery::default() };
    let entry =
        state.store.list_audit(caller.tenant(), &q).await?.into_iter().find(|e| e.seq == n).ok_or_else(not_found)?;
    Ok(axum::Json(entry).into_response())
}
