//! `GET /v1/whoami`: the calling key's tenant, id, name and scopes. Any valid key may ask;
//! a client (the dashboard) uses it to offer only what the key is allowed to do, so that a
//! 403 never comes as a surprise.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::extract::QueryPairs;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/whoami", get(whoami))
}

async fn whoami(caller: Caller, query: QueryPairs) -> Result<Response, ApiError> {
    query.only(&[])?;
    let scopes: Vec<String> = caller.scopes().iter().map(ToString::to_string).collect();
    Ok(axum::Json(json!({
        "tenant": caller.tenant(),
        "key_id": caller.key.id,
        "name": caller.key.name,
        "scopes": scopes,
    }))
    .into_response())
}
