//! Request extraction that answers problem+json on failure: JSON bodies, query pairs and
//! path segments.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::app::AppState;
use crate::error::ApiError;

/// A JSON body, read but not yet parsed: handlers parse it after resolving the collection
/// and checking scopes, so an unknown collection is a 404 and a missing scope a 403
/// whatever the body holds. Any content type is read as JSON, so `curl -d` works as
/// people expect.
pub(crate) struct JsonBody(Bytes);

impl JsonBody {
    /// The body as JSON; an empty body is malformed.
    pub(crate) fn parse(&self) -> Result<Value, ApiError> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::Malformed("the body is empty; send a JSON object".into()));
        }
        parse_json(&self.0)
    }
}

/// Parses JSON, answering `malformed` when it is not.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Malformed(format!("the body is not valid JSON: {e}")))
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(Bytes::from_request(req, state).await?))
    }
}

/// Query parameters as ordered pairs (repeated names kept, so they can be refused).
pub(crate) struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    /// Refuses any parameter not in `allowed`, and repeated ones.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        let mut seen = Vec::new();
        for (name, _) in &self.0 {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::BadParameter { param: name.clone(), message: "unknown parameter".into() });
            }
            if seen.contains(&name) {
                return Err(ApiError::BadParameter { param: name.clone(), message: "given more than once".into() });
            }
            seen.push(name);
        }
        Ok(())
    }

    /// The value of a parameter.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The `cursor` of a list, an empty one read as absent (the first page): a client
    /// generated from the OpenAPI document sends `cursor=` before it has one, and the
    /// document allows it.
    pub(crate) fn cursor(&self) -> Option<&str> {
        self.get("cursor").filter(|c| !c.is_empty())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        // No stored text can hold U+0000 (PostgreSQL's cannot, so neither store accepts it):
        // a parameter with one is refused rather than compared.
        if let Some((name, _)) = pairs.iter().find(|(k, v)| k.contains('\0') || v.contains('\0')) {
            return Err(ApiError::BadParameter {
                param: name.replace('\0', "\u{fffd}"),
                message: tombstone_domain::record::NUL_REFUSED.into(),
            });
        }
        Ok(Self(pairs))
    }
}

/// Path parameters with problem+json rejections.
pub(crate) struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(Path::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// The `If-None-Match` header alone (taking the whole `HeaderMap` would copy every header).
pub(crate) struct IfNoneMatch(pub Option<axum::http::HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(axum::http::header::IF_NONE_MATCH).cloned()))
    }
}
