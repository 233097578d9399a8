//! The API the dashboard stands on: `GET /v1/whoami`, `GET /v1/collections` with its
//! counts, and the embedded assets under `/ui/` (content types, ETag revalidation, the
//! Content-Security-Policy).

mod common;

use axum::http::Method;
use common::TestApp;
use serde_json::json;

const SCHEMA: &str = r#"
[retention]
default = "30d"

[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string", required = true, search = true }
category_id = { type = "ref", collection = "categories", on_delete = "restrict" }

[collections.categories.fields]
name = { type = "string", required = true }

[collections.customers]
retention = "1d"

[collections.customers.fields]
email = { type = "string", required = true, pii = true }
"#;

#[tokio::test]
async fn whoami_names_the_tenant_key_and_scopes_of_any_valid_key() {
    let app = TestApp::new().await;
    let key = app.key("t2", "read,delete:products").await;
    let me = app.get("/v1/whoami", &key).await;
    me.assert_status(200);
    let body = me.json();
    assert_eq!(body["tenant"], "t2");
    assert_eq!(body["scopes"], json!(["read", "delete:products"]));
    let id = body["key_id"].as_str().expect("key id");
    assert!(key.contains(id), "the key id is the public part of the secret: {id}");
    assert!(body.get("secret").is_none() && !me.text.contains(&key), "never the secret: {}", me.text);

    // A key with no record scope at all may still ask who it is.
    let events_only = app.key("t2", "events").await;
    app.get("/v1/whoami", &events_only).await.assert_status(200);
    app.get("/v1/whoami", "tsk_nope_nope").await.assert_problem(401, "unauthorized");
    app.get("/v1/whoami?x=1", &key).await.assert_problem(400, "invalid-parameter");
}

#[tokio::test]
async fn collections_count_active_trash_expiring_and_held_records_of_the_callers_tenant() {
    let app = TestApp::with_schema(SCHEMA).await;
    let admin = app.admin.clone();
    for sku in ["A", "B", "C"] {
        app.create("products", &admin, &json!({"id": sku, "sku": sku, "name": sku})).await;
    }
    app.delete("/v1/products/C", &admin).await.assert_status(204);
    app.post("/v1/products/A:hold", &admin, &json!({"case": "K-1"})).await.assert_status(201);
    for id in ["x", "y"] {
        app.create("customers", &admin, &json!({"id": id, "email": format!("{id}@example.com")})).await;
        app.delete(&format!("/v1/customers/{id}"), &admin).await.assert_status(204);
    }
    // A held deleted record is not about to expire.
    app.post("/v1/customers/y:hold", &admin, &json!({"case": "K-2"})).await.assert_status(201);
    // Another tenant's records count for nobody here.
    let other = app.key("t2", "admin").await;
    app.create("products", &other, &json!({"sku": "Z", "name": "Z"})).await;

    let list = app.get("/v1/collections", &admin).await;
    list.assert_status(200);
    let body = list.json();
    assert!(body["next_cursor"].is_null());
    let by_name = |name: &str| body["items"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(
        by_name("products")["counts"],
        json!({"active": 2, "archived": 0, "deleted": 1, "expiring_7d": 0, "held": 1})
    );
    assert_eq!(
        by_name("customers")["counts"],
        json!({"active": 0, "archived": 0, "deleted": 2, "expiring_7d": 1, "held": 1})
    );
    assert_eq!(
        by_name("categories")["counts"],
        json!({"active": 0, "archived": 0, "deleted": 0, "expiring_7d": 0, "held": 0})
    );
    let products = by_name("products");
    assert_eq!(products["unique"], json!([["sku"]]));
    assert_eq!(products["delete"], "soft");
    assert_eq!(products["retention_seconds"], 30 * 86_400);
    assert_eq!(
        products["fields"][1],
        json!({"name": "name", "type": "string", "required": true, "search": true, "pii": false})
    );
    assert_eq!(products["fields"][2]["ref"], json!({"collection": "categories", "on_delete": "restrict"}));

    let t2 = app.get("/v1/collections", &other).await.json();
    let t2_products = t2["items"].as_array().unwrap().iter().find(|c| c["name"] == "products").cloned().unwrap();
    assert_eq!(t2_products["counts"], json!({"active": 1, "archived": 0, "deleted": 0, "expiring_7d": 0, "held": 0}));
}

#[tokio::test]
async fn collections_follow_the_keys_scopes() {
    let app = TestApp::with_schema(SCHEMA).await;
    app.create("products", &app.admin, &json!({"sku": "A", "name": "A"})).await;
    // `read` only: active counts, and null (not zero) for what describes deleted records.
    let reader = app.key("t1", "read").await;
    let body = app.get("/v1/collections", &reader).await.json();
    let products = body["items"].as_array().unwrap().iter().find(|c| c["name"] == "products").cloned().unwrap();
    assert_eq!(
        products["counts"],
        json!({"active": 1, "archived": 0, "deleted": null, "expiring_7d": null, "held": null})
    );

    // Narrowed to one collection: only that one is listed.
    let narrow = app.key("t1", "read_deleted:products").await;
    let body = app.get("/v1/collections", &narrow).await.json();
    let names: Vec<_> = body["items"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
    assert_eq!(names, vec![json!("products")]);
    assert_eq!(body["items"][0]["counts"]["active"], 1);
    assert_eq!(body["items"][0]["counts"]["deleted"], 0);

    let events_only = app.key("t1", "events").await;
    let refused = app.get("/v1/collections", &events_only).await.assert_problem(403, "forbidden");
    assert_eq!(refused["missing_scope"], "read");
    app.get("/v1/collections", "tsk_nope_nope").await.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn the_dashboard_is_served_embedded_with_a_strict_policy_and_revalidated_by_etag() {
    let app = TestApp::new().await;
    let redirect = app.send(Method::GET, "/ui", None, &[], None).await;
    assert_eq!(redirect.status.as_u16(), 308);
    assert_eq!(redirect.header("location"), Some("/ui/"));

    let index = app.send(Method::GET, "/ui/", None, &[], None).await;
    index.assert_status(200);
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = index.header("content-security-policy").expect("CSP");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    assert!(index.text.contains(r#"<script type="module" src="app.js"></script>"#));
    // No inline script and nothing from another origin.
    assert!(!index.text.contains("<script>") && !index.text.contains("http://") && !index.text.contains("https://"));

    for (name, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("pages.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let r = app.send(Method::GET, &format!("/ui/{name}"), None, &[], None).await;
        r.assert_status(200);
        assert_eq!(r.header("content-type"), Some(kind), "{name}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{name}");
        let etag = r.header("etag").expect("etag").to_string();
        let again = app.send(Method::GET, &format!("/ui/{name}"), None, &[("if-none-match", &etag)], None).await;
        assert_eq!(again.status.as_u16(), 304, "{name}");
        assert!(again.text.is_empty());
        let stale = app.send(Method::GET, &format!("/ui/{name}"), None, &[("if-none-match", "\"old\"")], None).await;
        stale.assert_status(200);
    }
    // Every module the app imports is served.
    for module in ["api.js", "dom.js", "retention.js"] {
        app.send(Method::GET, &format!("/ui/{module}"), None, &[], None).await.assert_status(200);
    }
    app.send(Method::GET, "/ui/../Cargo.toml", None, &[], None).await.assert_status(404);
    app.send(Method::GET, "/ui/nope.js", None, &[], None).await.assert_problem(404, "not-found");
}

#[test]
fn collections_and_whoami_cannot_name_a_collection() {
    // They would be shadowed by the dashboard's routes under /v1/.
    for name in ["collections", "whoami"] {
        let toml = format!("[collections.{name}.fields]\nx = {{ type = \"string\" }}\n");
        let refused = tombstone_domain::config::Config::parse(&toml, std::path::Path::new("."));
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(name), "{name} was accepted as a collection name: {message:?}");
    }
}
