//! The HTTP ceiling: a bare axum endpoint answering a record-sized JSON body with an ETag,
//! no auth, no storage. Cached GETs of Tombstone are compared with it.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

async fn record(Path((collection, id)): Path<(String, String)>) -> impl IntoResponse {
    let body = serde_json::json!({
        "id": id, "collection": collection, "version": 1,
        "created_at": "2026-11-25T12:00:00.000000Z", "updated_at": "2026-11-25T12:00:00.000000Z",
        "deleted": false, "deleted_at": null, "deleted_by": null, "delete_reason": null,
        "deletion_id": null, "purge_at": null, "legal_hold": false,
        "sku": "SKU-000001", "name": "Product 1 blue mug"
    });
    ([(header::ETAG, "\"v1\"")], axum::Json(body))
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9101".into());
    let app = Router::new().route("/v1/{collection}/{id}", get(record));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("listening on http://{addr}");
    axum::serve(listener, app).await.expect("serve");
}
