//! Authentication, scopes, tenant isolation and the keys API.

mod common;

use std::collections::{BTreeSet, HashSet};

use axum::http::Method;
use common::{TestApp, TestResponse};
use serde_json::{Value, json};
use tombstone_server::keys::{hash_secret, key_id_of};

const COLLECTIONS: [&str; 5] = ["products", "categories", "customers", "secrets", "contracts"];

fn product(sku: &str) -> Value {
    json!({"sku": sku, "name": format!("Product {sku}")})
}

fn key_id(secret: &str) -> String {
    key_id_of(secret).expect("a well-formed secret").to_string()
}

/// A request with a raw Authorization header (or none).
async fn with_auth(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> TestResponse {
    let mut headers = Vec::new();
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    app.send(method, path, None, &headers, body.map(|b| b.to_string().into_bytes())).await
}

/// Every record of tenant t1, deleted or not.
async fn snapshot(app: &TestApp) -> Value {
    let mut all = serde_json::Map::new();
    for c in COLLECTIONS {
        let r = app.get(&format!("/v1/{c}?include=deleted&limit=500"), &app.admin).await;
        r.assert_status(200);
        all.insert(c.to_string(), r.json()["items"].clone());
    }
    Value::Object(all)
}

/// Every key, following the cursor.
async fn all_keys(app: &TestApp) -> Vec<Value> {
    let mut keys = Vec::new();
    let mut path = "/v1/keys?limit=2".to_string();
    loop {
        let r = app.get(&path, &app.admin).await;
        r.assert_status(200);
        let body = r.json();
        keys.extend(body["items"].as_array().expect("items").iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/keys?limit=2&cursor={c}"),
            None => {
                assert!(body["next_cursor"].is_null(), "{body}");
                return keys;
            }
        }
    }
}

/// An active and a deleted product, plus a deleted customer.
struct Fixture {
    app: TestApp,
    active: String,
    deleted: String,
    deleted_customer: String,
}

async fn fixture() -> Fixture {
    let app = TestApp::new().await;
    let active = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let deleted = app.create("products", &app.admin, &product("D")).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/products/{deleted}"), &app.admin).await.assert_status(204);
    let deleted_customer =
        app.create("customers", &app.admin, &json!({"email": "c@x.com"})).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/customers/{deleted_customer}"), &app.admin).await.assert_status(204);
    Fixture { app, active, deleted, deleted_customer }
}

/// A request on every record endpoint: (method, path, body).
fn every_endpoint(active: &str, deleted: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/v1/products".into(), None),
        (Method::GET, format!("/v1/products/{active}"), None),
        (Method::GET, format!("/v1/products/{deleted}?include=deleted"), None),
        (Method::POST, "/v1/products".into(), Some(product("NEW"))),
        (Method::PATCH, format!("/v1/products/{active}"), Some(json!({"name": "changed"}))),
        (Method::DELETE, format!("/v1/products/{active}"), None),
        (Method::DELETE, format!("/v1/products/{active}?dry_run=true"), None),
        (Method::POST, format!("/v1/products/{deleted}:restore"), None),
        (Method::GET, "/v1/nope".into(), None),
        (Method::GET, "/v1/keys".into(), None),
        (Method::POST, "/v1/keys".into(), Some(json!({"scopes": ["admin"]}))),
        (Method::DELETE, "/v1/keys/key_0123".into(), None),
    ]
}

#[track_caller]
fn assert_unauthorized(r: &TestResponse, what: &str) -> Value {
    assert_eq!(r.status.as_u16(), 401, "{what}: {}", r.text);
    let problem = r.assert_problem(401, "unauthorized");
    let challenge = r.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer"), "{what}: WWW-Authenticate: {challenge}");
    problem
}

/// The problem without its request id, to compare answers.
fn without_request_id(mut problem: Value) -> Value {
    problem.as_object_mut().unwrap().remove("request_id");
    problem
}

// ---------------------------------------------------------------------------------------
// 401
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn no_key_is_401_with_a_bearer_challenge_on_every_endpoint() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let keys_before = all_keys(app).await;
    for (method, path, body) in every_endpoint(&f.active, &f.deleted) {
        let r = with_auth(app, method.clone(), &path, None, body.as_ref()).await;
        assert_unauthorized(&r, &format!("{method} {path}"));
    }
    assert_eq!(snapshot(app).await, before);
    assert_eq!(all_keys(app).await, keys_before);
}

#[tokio::test]
async fn unknown_garbage_and_malformed_credentials_are_401() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let admin = app.admin.clone();
    let id = key_id(&admin);
    let random = "A".repeat(43);
    let mut wrong_secret = admin.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'A' { 'B' } else { 'A' });
    let authorizations = vec![
        "Bearer garbage".to_string(),
        "Bearer ".to_string(),
        "Bearer".to_string(),
        "Bearer tsk_".to_string(),
        "Bearer tsk_key_".to_string(),
        format!("Bearer tsk_key_zz_{random}"),
        // Well-formed, but no such key.
        format!("Bearer tsk_key_0123456789abcdef0123456789abcdef_{random}"),
        // A real key id with the wrong secret.
        format!("Bearer tsk_{id}_{random}"),
        format!("Bearer {wrong_secret}"),
        format!("Bearer {admin}x"),
        format!("Bearer {}", &admin[..admin.len() - 1]),
        // Not a bearer credential.
        admin.clone(),
        format!("Basic {admin}"),
        format!("Token {admin}"),
        format!("Bearer{admin}"),
    ];
    let mut bodies = HashSet::new();
    for authorization in &authorizations {
        for (method, path, body) in every_endpoint(&f.active, &f.deleted) {
            let r = with_auth(app, method.clone(), &path, Some(authorization), body.as_ref()).await;
            let problem = assert_unauthorized(&r, &format!("{method} {path} with {authorization:?}"));
            bodies.insert(without_request_id(problem).to_string());
        }
    }
    // Every 401 reads the same: nothing tells a wrong secret from an unknown key.
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(snapshot(app).await, before);
    // The real key still works.
    with_auth(app, Method::GET, "/v1/products", Some(&format!("Bearer {admin}")), None).await.assert_status(200);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::new().await;
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let r = with_auth(&app, Method::GET, "/v1/products", Some(&format!("{scheme} {}", app.admin)), None).await;
        assert_eq!(r.status.as_u16(), 200, "scheme {scheme}: {}", r.text);
    }
}

#[tokio::test]
async fn a_revoked_key_is_401_at_once() {
    let f = fixture().await;
    let app = &f.app;
    let r = app.post("/v1/keys", &app.admin, &json!({"scopes": ["read", "write", "delete"], "name": "temp"})).await;
    r.assert_status(201);
    let created = r.json();
    let (id, secret) = (created["id"].as_str().unwrap().to_string(), created["secret"].as_str().unwrap().to_string());
    // Used (and so cached) before the revocation.
    app.get("/v1/products", &secret).await.assert_status(200);
    app.get(&format!("/v1/products/{}", f.active), &secret).await.assert_status(200);

    let r = app.delete(&format!("/v1/keys/{id}"), &app.admin).await;
    r.assert_status(204);
    assert!(r.text.is_empty());
    let before = snapshot(app).await;
    for (method, path, body) in every_endpoint(&f.active, &f.deleted) {
        let r = app.send(method.clone(), &path, Some(&secret), &[], body.map(|b| b.to_string().into_bytes())).await;
        assert_unauthorized(&r, &format!("{method} {path} with a revoked key"));
    }
    assert_eq!(snapshot(app).await, before);
    assert!(all_keys(app).await.iter().all(|k| k["id"] != id.as_str()), "a revoked key is gone from the list");
    app.delete(&format!("/v1/keys/{id}"), &app.admin).await.assert_problem(404, "not-found");
    // The admin key is untouched.
    app.get("/v1/products", &app.admin).await.assert_status(200);
}

// ---------------------------------------------------------------------------------------
// 403
// ---------------------------------------------------------------------------------------

#[track_caller]
fn assert_forbidden(r: &TestResponse, scope: &str, what: &str) {
    assert_eq!(r.status.as_u16(), 403, "{what}: {}", r.text);
    let problem = r.assert_problem(403, "forbidden");
    assert_eq!(problem["missing_scope"], scope, "{what}: {problem}");
}

#[tokio::test]
async fn each_missing_scope_is_403_naming_it() {
    let f = fixture().await;
    let app = &f.app;
    let (a, d) = (f.active.clone(), f.deleted.clone());
    let before = snapshot(app).await;
    let keys_before = all_keys(app).await.len();

    let write_only = app.key("t1", "write").await;
    let reader = app.key("t1", "read").await;
    let no_admin = app.key("t1", "read,write,delete,restore,read_deleted,purge,erase,hold,audit,events").await;
    let since = "2000-01-01T00:00:00Z";

    let cases: Vec<(&str, Method, String, Option<Value>, &str)> = vec![
        (&write_only, Method::GET, "/v1/products".into(), None, "read"),
        (&write_only, Method::GET, "/v1/products?count=true".into(), None, "read"),
        (&write_only, Method::GET, format!("/v1/products/{a}"), None, "read"),
        (&reader, Method::POST, "/v1/products".into(), Some(product("NEW")), "write"),
        (&reader, Method::PATCH, format!("/v1/products/{a}"), Some(json!({"name": "x"})), "write"),
        (&reader, Method::DELETE, format!("/v1/products/{a}"), None, "delete"),
        (&reader, Method::DELETE, format!("/v1/products/{a}?dry_run=true"), None, "delete"),
        (&reader, Method::POST, format!("/v1/products/{d}:restore"), None, "restore"),
        (&reader, Method::POST, format!("/v1/products/{a}:restore"), None, "restore"),
        (&reader, Method::GET, format!("/v1/products/{d}?include=deleted"), None, "read_deleted"),
        (&reader, Method::GET, format!("/v1/products/{a}?include=deleted"), None, "read_deleted"),
        (&reader, Method::GET, "/v1/products?include=deleted".into(), None, "read_deleted"),
        (&reader, Method::GET, "/v1/products?filter[deleted]=true".into(), None, "read_deleted"),
        (&reader, Method::GET, format!("/v1/products?filter[deleted_since]={since}"), None, "read_deleted"),
        (&reader, Method::GET, format!("/v1/products?filter[deleted_before]={since}"), None, "read_deleted"),
        (&reader, Method::GET, "/v1/products?filter[deleted_by]=key_x".into(), None, "read_deleted"),
        (&reader, Method::GET, format!("/v1/products?filter[purge_before]={since}"), None, "read_deleted"),
        (&reader, Method::GET, "/v1/keys".into(), None, "admin"),
        (&no_admin, Method::GET, "/v1/keys".into(), None, "admin"),
        (&no_admin, Method::POST, "/v1/keys".into(), Some(json!({"scopes": ["admin"]})), "admin"),
        (&no_admin, Method::DELETE, format!("/v1/keys/{}", key_id(&app.admin)), None, "admin"),
        (&no_admin, Method::GET, format!("/v1/keys/{}", key_id(&app.admin)), None, "admin"),
    ];
    for (key, method, path, body, scope) in cases {
        let r = app.send(method.clone(), &path, Some(key), &[], body.map(|b| b.to_string().into_bytes())).await;
        assert_forbidden(&r, scope, &format!("{method} {path}"));
    }
    assert_eq!(snapshot(app).await, before);
    assert_eq!(all_keys(app).await.len(), keys_before + 3, "no key was created or revoked");

    // The key that lacks only admin can do everything else.
    app.get(&format!("/v1/products/{d}?include=deleted"), &no_admin).await.assert_status(200);
    app.post_empty(&format!("/v1/products/{d}:restore"), &no_admin).await.assert_status(200);
    // And a write-only key can create.
    app.post("/v1/products", &write_only, &product("W")).await.assert_status(201);
    // filter[deleted]=false reads active records only: read is enough.
    app.get("/v1/products?filter[deleted]=false", &reader).await.assert_status(200);
}

#[tokio::test]
async fn missing_scope_is_the_bare_scope_even_when_a_narrowed_one_is_held() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let (a, d) = (&f.active, &f.deleted);
    let narrowed =
        app.key("t1", "read:customers,write:customers,delete:customers,restore:customers,read_deleted:customers").await;
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/products".into(), None, "read"),
        (Method::GET, format!("/v1/products/{a}"), None, "read"),
        (Method::POST, "/v1/products".into(), Some(product("NEW")), "write"),
        (Method::PATCH, format!("/v1/products/{a}"), Some(json!({"name": "x"})), "write"),
        (Method::DELETE, format!("/v1/products/{a}"), None, "delete"),
        (Method::POST, format!("/v1/products/{d}:restore"), None, "restore"),
    ];
    for (method, path, body, scope) in cases {
        let r = app.send(method.clone(), &path, Some(&narrowed), &[], body.map(|b| b.to_string().into_bytes())).await;
        assert_forbidden(&r, scope, &format!("{method} {path}"));
    }
    let reader_of_products = app.key("t1", "read,read_deleted:customers").await;
    let r = app.get(&format!("/v1/products/{d}?include=deleted"), &reader_of_products).await;
    assert_forbidden(&r, "read_deleted", "include=deleted on products");
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn collection_narrowed_scopes_allow_that_collection_only() {
    let f = fixture().await;
    let app = &f.app;
    let key = app.key("t1", "read,write:products,delete:products,restore:products,read_deleted:products").await;

    // products: everything.
    let created = app.post("/v1/products", &key, &product("N")).await;
    created.assert_status(201);
    let id = created.json()["id"].as_str().unwrap().to_string();
    app.patch(&format!("/v1/products/{id}"), &key, &json!({"name": "n2"})).await.assert_status(200);
    app.delete(&format!("/v1/products/{id}?dry_run=true"), &key).await.assert_status(200);
    app.delete(&format!("/v1/products/{id}"), &key).await.assert_status(204);
    app.get(&format!("/v1/products/{id}?include=deleted"), &key).await.assert_status(200);
    app.get("/v1/products?filter[deleted]=true", &key).await.assert_status(200);
    app.post_empty(&format!("/v1/products/{id}:restore"), &key).await.assert_status(200);

    // customers: read only.
    let before = snapshot(app).await;
    let customer = before["customers"][0]["id"].as_str().unwrap().to_string();
    app.get("/v1/customers", &key).await.assert_status(200);
    assert_forbidden(&app.post("/v1/customers", &key, &json!({"email": "n@x.com"})).await, "write", "POST customers");
    assert_forbidden(&app.delete(&format!("/v1/customers/{customer}"), &key).await, "delete", "DELETE customer");
    assert_forbidden(
        &app.post_empty(&format!("/v1/customers/{}:restore", f.deleted_customer), &key).await,
        "restore",
        "restore customer",
    );
    assert_forbidden(&app.get("/v1/customers?include=deleted", &key).await, "read_deleted", "list customers deleted");
    assert_forbidden(
        &app.get(&format!("/v1/customers/{}?include=deleted", f.deleted_customer), &key).await,
        "read_deleted",
        "get customer deleted",
    );
    assert_eq!(snapshot(app).await, before);

    // read narrowed too.
    let product_reader = app.key("t1", "read:products").await;
    app.get("/v1/products", &product_reader).await.assert_status(200);
    assert_forbidden(&app.get("/v1/customers", &product_reader).await, "read", "list customers");
    assert_forbidden(&app.get(&format!("/v1/customers/{customer}"), &product_reader).await, "read", "get customer");
}

// ---------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------

/// The 404 of a record, with the id replaced so two answers can be compared.
fn normalised_404(r: &TestResponse, id: &str) -> Value {
    let problem = without_request_id(r.assert_problem(404, "not-found"));
    serde_json::from_str(&problem.to_string().replace(id, "ID")).unwrap()
}

#[tokio::test]
async fn another_tenants_record_is_404_everywhere_and_never_changes() {
    let f = fixture().await;
    let app = &f.app;
    let t2 = app.key("t2", "admin").await;
    let before = snapshot(app).await;

    // What a record that never existed looks like to t2.
    let ghost = "0190a3c2-7b1e-7c3d-9a51-3f1f2a4b5c6d";
    for id in [&f.active, &f.deleted] {
        let checks: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, format!("/v1/products/{id}"), None),
            (Method::GET, format!("/v1/products/{id}?include=deleted"), None),
            (Method::PATCH, format!("/v1/products/{id}"), Some(json!({"name": "hijacked"}))),
            (Method::DELETE, format!("/v1/products/{id}"), None),
            (Method::DELETE, format!("/v1/products/{id}?reason=x"), None),
            (Method::DELETE, format!("/v1/products/{id}?dry_run=true"), None),
            (Method::POST, format!("/v1/products/{id}:restore"), None),
        ];
        for (method, path, body) in checks {
            let bytes = body.as_ref().map(|b| b.to_string().into_bytes());
            let theirs = app.send(method.clone(), &path, Some(&t2), &[], bytes.clone()).await;
            assert_eq!(theirs.status.as_u16(), 404, "{method} {path} as t2: {}", theirs.text);
            assert!(theirs.header("deletion-id").is_none());
            let ghost_path = path.replace(id.as_str(), ghost);
            let never = app.send(method.clone(), &ghost_path, Some(&t2), &[], bytes).await;
            assert_eq!(
                normalised_404(&theirs, id),
                normalised_404(&never, ghost),
                "{method} {path}: the answer must not tell another tenant's record from none"
            );
            // With If-Match too.
            let r = app.send(method.clone(), &path, Some(&t2), &[("if-match", "\"v1\"")], None).await;
            assert_ne!(r.status.as_u16() / 100, 2, "{method} {path} with If-Match as t2: {}", r.text);
        }
    }
    // Lists: not present, not counted.
    for query in [
        "",
        "?count=true",
        "?include=deleted&count=true",
        "?filter[deleted]=true&count=true",
        "?filter[sku]=A&count=true",
    ] {
        let r = app.get(&format!("/v1/products{query}"), &t2).await;
        r.assert_status(200);
        let body = r.json();
        assert_eq!(body["items"], json!([]), "{query}: {body}");
        if query.contains("count") {
            assert_eq!(body["total"], 0, "{query}: {body}");
        }
    }
    assert_eq!(snapshot(app).await, before, "t2 changed nothing of t1");
}

#[tokio::test]
async fn tenants_have_separate_ids_and_unique_values() {
    let f = fixture().await;
    let app = &f.app;
    let t2 = app.key("t2", "admin").await;
    let t1_record = app.get(&format!("/v1/products/{}", f.active), &app.admin).await.json();

    // t2 may use the same id and the same sku.
    let r = app.post("/v1/products", &t2, &json!({"id": f.active, "sku": "A", "name": "t2 thing"})).await;
    r.assert_status(201);
    assert_eq!(r.json()["name"], "t2 thing");
    let r = app.get(&format!("/v1/products/{}", f.active), &t2).await;
    assert_eq!(r.json()["name"], "t2 thing");
    app.delete(&format!("/v1/products/{}", f.active), &t2).await.assert_status(204);

    // t1's record is untouched by any of it.
    assert_eq!(app.get(&format!("/v1/products/{}", f.active), &app.admin).await.json(), t1_record);
    let t1_list = app.get("/v1/products?include=deleted&count=true", &app.admin).await.json();
    assert_eq!(t1_list["total"], 2);
    assert!(t1_list["items"].as_array().unwrap().iter().all(|r| r["name"] != "t2 thing"));
    let t2_list = app.get("/v1/products?include=deleted&count=true", &t2).await.json();
    assert_eq!(t2_list["total"], 1);
}

// ---------------------------------------------------------------------------------------
// Keys API
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_created_through_the_api_works_at_once_with_its_scopes() {
    let f = fixture().await;
    let app = &f.app;
    let r = app
        .post("/v1/keys", &app.admin, &json!({"tenant": "t1", "scopes": ["read", "delete:products"], "name": "ci"}))
        .await;
    r.assert_status(201);
    let key = r.json();
    let secret = key["secret"].as_str().expect("secret shown once").to_string();
    assert!(key["id"].as_str().is_some_and(|id| id.starts_with("key_")), "{key}");
    assert_eq!(key_id(&secret), key["id"].as_str().unwrap());
    assert_eq!(key["tenant"], "t1");
    assert_eq!(key["name"], "ci");
    let scopes: BTreeSet<&str> = key["scopes"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(scopes, BTreeSet::from(["read", "delete:products"]));
    assert!(key["created_at"].is_string());
    assert!(key.get("secret_hash").is_none(), "{key}");

    // Usable at once, with exactly those scopes.
    app.get("/v1/products", &secret).await.assert_status(200);
    assert_forbidden(
        &app.post("/v1/products", &secret, &product("X")).await,
        "write",
        "POST with read,delete:products",
    );
    let customer =
        app.create("customers", &app.admin, &json!({"email": "z@x.com"})).await["id"].as_str().unwrap().to_string();
    assert_forbidden(&app.delete(&format!("/v1/customers/{customer}"), &secret).await, "delete", "DELETE customer");
    let r = app.delete(&format!("/v1/products/{}", f.active), &secret).await;
    r.assert_status(204);
    let deleted = app.get(&format!("/v1/products/{}?include=deleted", f.active), &app.admin).await.json();
    assert_eq!(deleted["deleted_by"], key["id"], "deletions are attributed to the key id");
}

#[tokio::test]
async fn keys_default_to_the_callers_tenant() {
    let f = fixture().await;
    let app = &f.app;
    let r = app.post("/v1/keys", &app.admin, &json!({"scopes": ["read"]})).await;
    r.assert_status(201);
    let own = r.json();
    assert_eq!(own["tenant"], "t1");
    assert!(own["name"].is_null());
    let items = app.get("/v1/products", own["secret"].as_str().unwrap()).await.json()["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    let r = app.post("/v1/keys", &app.admin, &json!({"tenant": "t1", "scopes": "read,write"})).await;
    r.assert_status(201);
    assert_eq!(r.json()["tenant"], "t1", "naming one's own tenant is accepted");
}

#[tokio::test]
async fn invalid_key_requests_are_422_and_create_nothing() {
    let app = TestApp::new().await;
    let keys_before = all_keys(&app).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"scopes": ["reed"]}), "scopes"),
        (json!({"scopes": ["read", "frobnicate"]}), "scopes"),
        (json!({"scopes": ["delete:nope"]}), "scopes"),
        (json!({"scopes": ["read:Products"]}), "scopes"),
        (json!({"scopes": ["admin:products"]}), "scopes"),
        (json!({"scopes": ["read:"]}), "scopes"),
        (json!({"scopes": []}), "scopes"),
        (json!({"scopes": [1]}), "scopes"),
        (json!({"scopes": null}), "scopes"),
        (json!({"name": "no scopes"}), "scopes"),
        (json!({"scopes": "reed"}), "scopes"),
        (json!({"scopes": ["read"], "tenant": "bad tenant"}), "tenant"),
        (json!({"scopes": ["read"], "tenant": ""}), "tenant"),
        (json!({"scopes": ["read"], "tenant": 5}), "tenant"),
        (json!({"scopes": ["read"], "name": 5}), "name"),
        (json!({"scopes": ["read"], "name": "n".repeat(201)}), "name"),
        (json!({"scopes": ["read"], "role": "x"}), "role"),
        (json!({"scopes": ["read"], "secret": "mine"}), "secret"),
    ];
    for (body, field) in cases {
        let r = app.post("/v1/keys", &app.admin, &body).await;
        assert_eq!(r.status.as_u16(), 422, "{body}: {}", r.text);
        let problem = r.assert_problem(422, "validation");
        let fields: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
        assert!(fields.contains(&field), "{body}: errors should name {field}: {problem}");
    }
    assert_eq!(all_keys(&app).await, keys_before);
}

#[tokio::test]
async fn listing_keys_never_shows_secrets_or_hashes() {
    let app = TestApp::new().await;
    let mut secrets = vec![app.admin.clone()];
    for i in 0..4 {
        let r = app.post("/v1/keys", &app.admin, &json!({"scopes": ["read"], "name": format!("k{i}")})).await;
        r.assert_status(201);
        secrets.push(r.json()["secret"].as_str().unwrap().to_string());
    }
    // Another tenant's key is never listed (nor, below, leaked).
    let other_tenant = app.key("t2", "read").await;

    let r = app.get("/v1/keys", &app.admin).await;
    r.assert_status(200);
    let body = r.json();
    assert!(body["next_cursor"].is_null(), "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), secrets.len());

    let paged = all_keys(&app).await;
    assert_eq!(&paged, items, "paging shows every key once, in the same order");
    let ids: BTreeSet<String> = paged.iter().map(|k| k["id"].as_str().unwrap().to_string()).collect();
    let expected: BTreeSet<String> = secrets.iter().map(|s| key_id(s)).collect();
    assert_eq!(ids, expected);

    for key in items {
        for field in ["id", "tenant", "scopes", "created_at"] {
            assert!(key.get(field).is_some(), "{field} missing: {key}");
        }
        for field in ["secret", "secret_hash", "hash"] {
            assert!(key.get(field).is_none(), "{field} shown: {key}");
        }
    }
    let single = app.get(&format!("/v1/keys/{}", key_id(&secrets[1])), &app.admin).await;
    single.assert_status(200);
    assert_eq!(single.json()["name"], "k0");
    assert!(!r.text.contains(&key_id(&other_tenant)), "another tenant's key is listed");
    for text in [&r.text, &single.text] {
        for secret in secrets.iter().chain([&other_tenant]) {
            assert!(!text.contains(secret.as_str()), "a secret leaked");
            assert!(!text.contains(&hash_secret(secret)), "a secret hash leaked");
            let random_part = &secret[secret.len() - 20..];
            assert!(!text.contains(random_part), "part of a secret leaked");
        }
    }
}

#[tokio::test]
async fn revoking_an_unknown_key_is_404() {
    let app = TestApp::new().await;
    let keys_before = all_keys(&app).await;
    for id in ["key_0123456789abcdef", "nope", "key_"] {
        app.delete(&format!("/v1/keys/{id}"), &app.admin).await.assert_problem(404, "not-found");
    }
    assert_eq!(all_keys(&app).await, keys_before);
    app.get("/v1/products", &app.admin).await.assert_status(200);
}

// ---------------------------------------------------------------------------------------
// Key management across tenants (§3: every read and write is confined to the key's tenant)
// ---------------------------------------------------------------------------------------

// `/v1/keys` is confined to the caller's tenant (docs/DECISIONS.md): one tenant's admin key
// must not reach another tenant through key management. Operators use the CLI for that.
#[tokio::test]
async fn admin_keys_cannot_reach_the_keys_of_another_tenant() {
    let app = TestApp::new().await;
    let t2_admin = app.key("t2", "admin").await;
    let t2_reader = app.key("t2", "read").await;
    let t2_reader_id = key_id(&t2_reader);
    app.create("products", &app.key("t2", "read,write").await, &product("T2")).await;
    let t1_ids: Vec<String> = all_keys(&app).await.iter().map(|k| k["id"].as_str().unwrap().to_string()).collect();

    // Listing shows only the caller's tenant, whatever `tenant` asks for.
    let listed = app.get("/v1/keys?limit=500", &app.admin).await.json();
    assert!(listed["items"].as_array().unwrap().iter().all(|k| k["tenant"] == "t1"), "{listed}");
    assert!(!t1_ids.contains(&t2_reader_id), "t2's keys are not in t1's list: {t1_ids:?}");
    let asked = app.get("/v1/keys?tenant=t2", &app.admin).await.json();
    assert_eq!(asked["items"], json!([]), "{asked}");

    // Reading and revoking another tenant's key is a 404, word for word as for an absent key.
    let foreign = app.get(&format!("/v1/keys/{t2_reader_id}"), &app.admin).await.assert_problem(404, "not-found");
    let absent = app.get("/v1/keys/key_0123456789abcdef", &app.admin).await.assert_problem(404, "not-found");
    assert_eq!(
        foreign["detail"].as_str().unwrap().replace(&t2_reader_id, "ID"),
        absent["detail"].as_str().unwrap().replace("key_0123456789abcdef", "ID")
    );
    app.delete(&format!("/v1/keys/{t2_reader_id}"), &app.admin).await.assert_problem(404, "not-found");
    app.get("/v1/products", &t2_reader).await.assert_status(200);

    // Creating a key for another tenant is refused and creates nothing.
    let t2_before = app.get("/v1/keys?limit=500", &t2_admin).await.json();
    for body in [json!({"tenant": "t2", "scopes": ["read"]}), json!({"tenant": "t3", "scopes": ["admin"]})] {
        let problem = app.post("/v1/keys", &app.admin, &body).await.assert_problem(403, "forbidden");
        assert!(problem.get("missing_scope").is_none(), "no scope would allow it: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("own tenant"), "{problem}");
    }
    assert_eq!(app.get("/v1/keys?limit=500", &t2_admin).await.json(), t2_before);
    assert_eq!(all_keys(&app).await.iter().map(|k| k["id"].as_str().unwrap().to_string()).collect::<Vec<_>>(), t1_ids);

    // t2's own admin manages t2's keys as before.
    app.get(&format!("/v1/keys/{t2_reader_id}"), &t2_admin).await.assert_status(200);
    app.delete(&format!("/v1/keys/{t2_reader_id}"), &t2_admin).await.assert_status(204);
    app.get("/v1/products", &t2_reader).await.assert_problem(401, "unauthorized");
}
