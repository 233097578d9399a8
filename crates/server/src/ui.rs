//! The dashboard (`/ui/`, SPEC §16): a small single-page app in plain JavaScript modules
//! and one stylesheet, embedded in the binary so that it needs no install step and nothing
//! loads from the network. It is only a client: every action goes through the public API
//! with the signed-in key, so it is audited, scoped and tenant-confined like any other call.
//!
//! Every answer carries a strict Content-Security-Policy (`default-src 'self'`, no inline
//! script or style) and an `ETag` over the asset's bytes with `Cache-Control: no-cache`:
//! a browser revalidates each load (a 304 costs a few bytes) and never runs a stale app
//! after an upgrade.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::ApiError;

/// The policy of every dashboard answer: only this origin's own scripts, styles, images
/// and API; no framing, no `<base>` tricks, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", bytes: include_bytes!("../ui/index.html") },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("../ui/app.css") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../ui/app.js") },
    Asset { name: "api.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../ui/api.js") },
    Asset { name: "dom.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../ui/dom.js") },
    Asset { name: "pages.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../ui/pages.js") },
    Asset {
        name: "retention.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../ui/retention.js"),
    },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", bytes: include_bytes!("../ui/favicon.svg") },
];

/// The strong ETag of each asset, computed once.
static ETAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.bytes)[..12]))).collect());

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/ui/{name}", get(|Path(name): Path<String>, headers: HeaderMap| async move { serve(&name, &headers) }))
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::NotFound("no such dashboard file".into()).into_response();
    };
    let (asset, etag) = (&ASSETS[index], ETAGS[index].as_str());
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.bytes.into_response() };
    let h = response.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
