//! The event feed: `GET /v1/events?after=SEQ` pages through the tenant's outbox in commit
//! order, and `GET /v1/events/stream` follows it live as server-sent events (`id:` is the
//! seq, so `Last-Event-ID` resumes exactly after the last event seen).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde_json::{Value, json};
use tombstone_domain::events::EventType;
use tombstone_domain::query::parse_limit;
use tombstone_domain::scope::Permission;
use tombstone_store::EventQuery;

use super::extract::QueryPairs;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// How often the stream looks for events committed by other processes.
const POLL: Duration = Duration::from_secs(1);

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(list_events)).route("/v1/events/stream", get(stream_events))
}

fn bad(param: &str, message: &str) -> ApiError {
    ApiError::BadParameter { param: param.into(), message: message.into() }
}

fn parse_seq(param: &str, value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| bad(param, "must be an event seq (a non-negative integer)"))
}

/// Filters shared by the feed and the stream.
fn filters(state: &AppState, query: &QueryPairs) -> Result<(Option<String>, Vec<String>), ApiError> {
    let collection = query.get("collection").map(str::to_string);
    if let Some(c) = &collection
        && state.schema.collection(c).is_none()
    {
        return Err(bad("collection", "unknown collection"));
    }
    let mut types = Vec::new();
    if let Some(list) = query.get("type") {
        for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if EventType::parse(t).is_none() {
                return Err(bad("type", "unknown event type"));
            }
            types.push(t.to_string());
        }
    }
    Ok((collection, types))
}

async fn list_events(State(state): State<AppState>, caller: Caller, query: QueryPairs) -> Result<Response, ApiError> {
    caller.require(Permission::Events, None)?;
    query.only(&["after", "cursor", "limit", "collection", "type"])?;
    let limit = parse_limit(query.get("limit"))?;
    // Both are checked, and `cursor` wins (as `Last-Event-ID` wins over `after` on the
    // stream): a client generated from the document may keep its first `after` while it
    // follows `next_cursor`, and each page must then continue where the last one ended.
    let after = query.get("after").map(|a| parse_seq("after", a)).transpose()?;
    let cursor = query.cursor().map(|c| parse_seq("cursor", c)).transpose()?;
    let after = cursor.or(after).unwrap_or(0);
    let (collection, types) = filters(&state, &query)?;
    let q = EventQuery { after, collection, types, limit: limit + 1 };
    let mut events = state.store.list_events(caller.tenant(), &q).await?;
    let next = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    let items: Vec<Value> = events.iter().map(tombstone_domain::events::Event::envelope).collect();
    Ok(axum::Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    caller.require(Permission::Events, None)?;
    query.only(&["after", "collection", "type"])?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    // Both are checked, though Last-Event-ID wins: a malformed `after` is refused either way.
    let after = query.get("after").map(|a| parse_seq("after", a)).transpose()?;
    let start = match (last_event_id, after) {
        (Some(id), _) => parse_seq("Last-Event-ID", id.trim())?,
        (None, Some(a)) => a,
        // Without a position the stream starts with new events only.
        (None, None) => state.store.last_event_seq().await?,
    };
    let (collection, types) = filters(&state, &query)?;
    let tenant = caller.tenant().to_string();
    let store = state.store.clone();
    let changes = store.changes();
    let stream = async_stream::stream! {
        let mut after = start;
        loop {
            // Register interest before reading, so a commit between the read and the
            // wait still wakes us.
            let notified = changes.notified();
            let q = EventQuery { after, collection: collection.clone(), types: types.clone(), limit: 500 };
            match store.list_events(&tenant, &q).await {
                Ok(events) if !events.is_empty() => {
                    for e in events {
                        after = e.seq;
                        yield Ok(SseEvent::default().id(e.seq.to_string()).event(e.kind.clone()).data(e.envelope().to_string()));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "event stream could not read the outbox"),
            }
            let _ = tokio::time::timeout(POLL, notified).await;
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}
