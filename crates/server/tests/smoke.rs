//! A first end-to-end pass over the record lifecycle through the router.

mod common;

use common::TestApp;
use serde_json::json;

#[tokio::test]
async fn create_get_delete_restore() {
    let app = TestApp::new().await;
    let created = app.create("products", &app.admin, &json!({"sku": "A-1", "name": "Mug"})).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["version"], 1);
    assert_eq!(created["deleted"], false);
    let got = app.get(&format!("/v1/products/{id}"), &app.admin).await;
    got.assert_status(200);
    assert_eq!(got.header("etag"), Some("\"v1\""));
    app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_status(204);
    app.get(&format!("/v1/products/{id}"), &app.admin).await.assert_problem(404, "not-found");
    let restored = app.post_empty(&format!("/v1/products/{id}:restore"), &app.admin).await;
    restored.assert_status(200);
    assert_eq!(restored.json()["version"], 3);
}
