//! Bad input on every record endpoint: each answer is a clear problem+json (never a 500),
//! and a refused request changes nothing.

mod common;

use axum::http::Method;
use common::{TEST_SCHEMA, TestApp, TestResponse};
use serde_json::{Value, json};

const COLLECTIONS: [&str; 5] = ["products", "categories", "customers", "secrets", "contracts"];

fn product(sku: &str) -> Value {
    json!({"sku": sku, "name": format!("Product {sku}")})
}

async fn send_raw(app: &TestApp, method: Method, path: &str, body: Vec<u8>) -> TestResponse {
    app.send(method, path, Some(&app.admin), &[], Some(body)).await
}

/// Every record of tenant t1 in every collection, deleted or not: compared before and
/// after a refused request to prove it changed nothing.
async fn snapshot(app: &TestApp) -> Value {
    let mut all = serde_json::Map::new();
    for c in COLLECTIONS {
        let r = app.get(&format!("/v1/{c}?include=deleted&limit=500"), &app.admin).await;
        r.assert_status(200);
        let body = r.json();
        assert!(body["next_cursor"].is_null(), "snapshot too large for one page");
        all.insert(c.to_string(), body["items"].clone());
    }
    Value::Object(all)
}

/// Fixtures: an active product, a deleted product, an active contract.
struct Fixture {
    app: TestApp,
    active: String,
    deleted: String,
}

async fn fixture() -> Fixture {
    fixture_with(TestApp::new().await).await
}

async fn fixture_with(app: TestApp) -> Fixture {
    let active = app
        .create(
            "products",
            &app.admin,
            &json!({"sku": "A", "name": "Alpha", "price_cents": 100, "meta": {"k": "v"}, "launched_at": "2026-01-01T00:00:00Z"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = app.create("products", &app.admin, &product("D")).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/products/{deleted}"), &app.admin).await.assert_status(204);
    app.create("contracts", &app.admin, &json!({"title": "NDA"})).await;
    app.create("customers", &app.admin, &json!({"email": "a@x.com"})).await;
    Fixture { app, active, deleted }
}

/// The `field` names of a validation problem's `errors`.
fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {problem}"))
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {e}");
            e["field"].as_str().unwrap_or_else(|| panic!("error without a field: {e}")).to_string()
        })
        .collect()
}

#[track_caller]
fn assert_names(problem: &Value, field: &str) {
    let fields = error_fields(problem);
    assert!(fields.iter().any(|f| f == field), "errors should name {field:?}: {problem}");
}

// ---------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_malformed_and_changes_nothing() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"sku": "#.to_vec(),
        br"{'sku': 'x', 'name': 'y'}".to_vec(),
        br#"{"sku": "X", "name": "Y",}"#.to_vec(),
        br#"{"sku": "X", "name": "Y"} trailing"#.to_vec(),
        br#"{"sku": "X" "name": "Y"}"#.to_vec(),
        b"nul".to_vec(),
        b"<xml/>".to_vec(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let r = send_raw(app, Method::POST, "/v1/products", body.clone()).await;
        assert_eq!(r.status.as_u16(), 400, "POST {shown}: {}", r.text);
        r.assert_problem(400, "malformed");
        let r = send_raw(app, Method::PATCH, &format!("/v1/products/{}", f.active), body.clone()).await;
        assert_eq!(r.status.as_u16(), 400, "PATCH {shown}: {}", r.text);
        r.assert_problem(400, "malformed");
        let r = send_raw(app, Method::POST, "/v1/keys", body).await;
        r.assert_problem(400, "malformed");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn an_empty_body_is_400_malformed() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    for body in [&b""[..], b"   ", b"\n\t"] {
        send_raw(app, Method::POST, "/v1/products", body.to_vec()).await.assert_problem(400, "malformed");
        send_raw(app, Method::PATCH, &format!("/v1/products/{}", f.active), body.to_vec())
            .await
            .assert_problem(400, "malformed");
    }
    // No body at all.
    app.post_empty("/v1/products", &app.admin).await.assert_problem(400, "malformed");
    app.send(Method::PATCH, &format!("/v1/products/{}", f.active), Some(&app.admin), &[], None)
        .await
        .assert_problem(400, "malformed");
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_422_validation() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    for body in [json!([]), json!([{"sku": "X", "name": "Y"}]), json!("sku"), json!(42), json!(true), json!(null)] {
        let r = app.post("/v1/products", &app.admin, &body).await;
        assert_eq!(r.status.as_u16(), 422, "POST {body}: {}", r.text);
        r.assert_problem(422, "validation");
        let r = app.patch(&format!("/v1/products/{}", f.active), &app.admin, &body).await;
        assert_eq!(r.status.as_u16(), 422, "PATCH {body}: {}", r.text);
        r.assert_problem(422, "validation");
        app.post("/v1/keys", &app.admin, &body).await.assert_problem(422, "validation");
    }
    assert_eq!(snapshot(app).await, before);
}

/// (field, bad value) for every declared field type of products.
fn wrong_types() -> Vec<(&'static str, Value)> {
    vec![
        // string
        ("name", json!(5)),
        ("name", json!(true)),
        ("name", json!(["a"])),
        ("name", json!({"a": 1})),
        // integer
        ("price_cents", json!(1.5)),
        ("price_cents", json!("1")),
        ("price_cents", json!(true)),
        ("price_cents", json!(9_223_372_036_854_775_808_u64)),
        ("price_cents", json!([1])),
        // number
        ("rating", json!("1.5")),
        ("rating", json!(false)),
        ("rating", json!({})),
        // boolean
        ("active", json!("true")),
        ("active", json!(1)),
        ("active", json!(0)),
        // timestamp
        ("launched_at", json!("2026-01-01")),
        ("launched_at", json!("2026-01-01T00:00:00")),
        ("launched_at", json!("2026-13-01T00:00:00Z")),
        ("launched_at", json!("yesterday")),
        ("launched_at", json!(1_767_225_600)),
        ("launched_at", json!("01/02/2026 10:00")),
        // ref
        ("category_id", json!("has space")),
        ("category_id", json!("a/b")),
        ("category_id", json!("x".repeat(129))),
        ("category_id", json!("")),
        ("category_id", json!(5)),
    ]
}

#[tokio::test]
async fn wrong_types_are_422_naming_the_field_on_create() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    for (field, value) in wrong_types() {
        let mut body = product("NEW");
        body[field] = value.clone();
        let r = app.post("/v1/products", &app.admin, &body).await;
        assert_eq!(r.status.as_u16(), 422, "{field} = {value}: {}", r.text);
        let problem = r.assert_problem(422, "validation");
        assert_eq!(error_fields(&problem), [field], "{field} = {value}: {problem}");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn wrong_types_are_422_naming_the_field_on_patch() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    for (field, value) in wrong_types() {
        let r = app.patch(&format!("/v1/products/{}", f.active), &app.admin, &json!({ field: value })).await;
        assert_eq!(r.status.as_u16(), 422, "{field} = {value}: {}", r.text);
        let problem = r.assert_problem(422, "validation");
        assert_eq!(error_fields(&problem), [field], "{field} = {value}: {problem}");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let app = TestApp::new().await;
    let r = app
        .post("/v1/products", &app.admin, &json!({"sku": 1, "price_cents": "x", "colour": "red", "version": 2}))
        .await;
    let problem = r.assert_problem(422, "validation");
    let mut fields = error_fields(&problem);
    fields.sort();
    assert_eq!(fields, ["colour", "name", "price_cents", "sku", "version"]);
    assert_eq!(snapshot(&app).await["products"], json!([]));
}

#[tokio::test]
async fn deeply_nested_json_is_refused_cleanly() {
    let app = TestApp::new().await;
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(r#"{{"sku": "N", "name": "n", "meta": {nested}}}"#).into_bytes();
    let r = send_raw(&app, Method::POST, "/v1/products", body).await;
    r.assert_problem(400, "malformed");
    let body = format!(r#"{{"meta": {nested}}}"#).into_bytes();
    let r = send_raw(&app, Method::PATCH, "/v1/products/x", body).await;
    r.assert_problem(400, "malformed");
    assert_eq!(snapshot(&app).await["products"], json!([]));
}

#[tokio::test]
async fn a_ref_to_a_missing_or_deleted_parent_is_422() {
    let app = TestApp::new().await;
    let mut body = product("ORPHAN");
    body["category_id"] = json!("no-such-category");
    let problem = app.post("/v1/products", &app.admin, &body).await.assert_problem(422, "validation");
    assert_names(&problem, "category_id");
    let cat = app.create("categories", &app.admin, &json!({"name": "Gone"})).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/categories/{cat}"), &app.admin).await.assert_status(204);
    body["category_id"] = json!(cat);
    assert_names(&app.post("/v1/products", &app.admin, &body).await.assert_problem(422, "validation"), "category_id");
    let id = app.create("products", &app.admin, &product("OK")).await["id"].as_str().unwrap().to_string();
    let problem = app
        .patch(&format!("/v1/products/{id}"), &app.admin, &json!({"category_id": "no-such-category"}))
        .await
        .assert_problem(422, "validation");
    assert_names(&problem, "category_id");
}

#[tokio::test]
async fn json_fields_accept_any_json() {
    let app = TestApp::new().await;
    let values = [
        json!(1),
        json!(-2.5),
        json!("text"),
        json!(true),
        json!([1, "two", {"three": 3}, null]),
        json!({"a": {"b": [1, 2]}, "c": "d"}),
        json!({}),
        json!([]),
    ];
    for (i, value) in values.iter().enumerate() {
        let mut body = product(&format!("J-{i}"));
        body["meta"] = value.clone();
        let created = app.create("products", &app.admin, &body).await;
        assert_eq!(&created["meta"], value);
        let got = app.get(&format!("/v1/products/{}", created["id"].as_str().unwrap()), &app.admin).await;
        assert_eq!(&got.json()["meta"], value, "{}", got.text);
    }
}

#[tokio::test]
async fn unknown_fields_are_422_naming_them() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    for name in ["colour", "Name", "SKU", "f_sku", "tenant", "_id", ""] {
        let mut body = product("NEW");
        body[name] = json!("x");
        let problem = app.post("/v1/products", &app.admin, &body).await.assert_problem(422, "validation");
        assert_eq!(error_fields(&problem), [name], "{problem}");
        let problem = app
            .patch(&format!("/v1/products/{}", f.active), &app.admin, &json!({ name: "x" }))
            .await
            .assert_problem(422, "validation");
        assert_eq!(error_fields(&problem), [name], "{problem}");
    }
    // A field of another collection is unknown here.
    let mut body = product("NEW");
    body["email"] = json!("a@b.c");
    assert_names(&app.post("/v1/products", &app.admin, &body).await.assert_problem(422, "validation"), "email");
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn system_fields_in_a_body_are_422() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let system = [
        ("version", json!(5)),
        ("collection", json!("products")),
        ("created_at", json!("2026-01-01T00:00:00Z")),
        ("updated_at", json!("2026-01-01T00:00:00Z")),
        ("deleted", json!(false)),
        ("deleted_at", json!(null)),
        ("deleted_at", json!("2026-01-01T00:00:00Z")),
        ("deleted_by", json!("key_x")),
        ("delete_reason", json!("x")),
        ("deletion_id", json!("del_x")),
        ("purge_at", json!("2026-01-01T00:00:00Z")),
        ("legal_hold", json!(false)),
        ("holds", json!([])),
    ];
    for (name, value) in &system {
        let mut body = product("NEW");
        body[*name] = value.clone();
        let r = app.post("/v1/products", &app.admin, &body).await;
        assert_eq!(r.status.as_u16(), 422, "create with {name}: {}", r.text);
        assert_eq!(error_fields(&r.assert_problem(422, "validation")), [*name]);
        let r = app.patch(&format!("/v1/products/{}", f.active), &app.admin, &json!({ *name: value })).await;
        assert_eq!(r.status.as_u16(), 422, "patch with {name}: {}", r.text);
        assert_eq!(error_fields(&r.assert_problem(422, "validation")), [*name]);
    }
    // The id cannot be patched, not even to its own value.
    for value in [json!(f.active), json!("other"), json!(null)] {
        let r = app.patch(&format!("/v1/products/{}", f.active), &app.admin, &json!({ "id": value })).await;
        assert_eq!(error_fields(&r.assert_problem(422, "validation")), ["id"]);
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn bad_client_ids_in_a_create_body_are_422() {
    let app = TestApp::new().await;
    for id in
        [json!(""), json!("has space"), json!("a.b"), json!("a:restore"), json!("x".repeat(129)), json!(5), json!("é")]
    {
        let mut body = product("NEW");
        body["id"] = id.clone();
        let r = app.post("/v1/products", &app.admin, &body).await;
        assert_eq!(r.status.as_u16(), 422, "id {id}: {}", r.text);
        assert_eq!(error_fields(&r.assert_problem(422, "validation")), ["id"]);
    }
    assert_eq!(snapshot(&app).await["products"], json!([]));
}

#[tokio::test]
async fn missing_required_fields_are_422_naming_them() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let cases = [
        (json!({}), vec!["name", "sku"]),
        (json!({"sku": "X"}), vec!["name"]),
        (json!({"name": "X"}), vec!["sku"]),
        (json!({"sku": null, "name": "X"}), vec!["sku"]),
        (json!({"sku": "X", "name": null, "price_cents": 1}), vec!["name"]),
    ];
    for (body, expected) in cases {
        let problem = app.post("/v1/products", &app.admin, &body).await.assert_problem(422, "validation");
        let mut fields = error_fields(&problem);
        fields.sort();
        assert_eq!(fields, expected, "{body}");
    }
    // Removing a required field by merge patch.
    let problem = app
        .patch(&format!("/v1/products/{}", f.active), &app.admin, &json!({"name": null}))
        .await
        .assert_problem(422, "validation");
    assert_names(&problem, "name");
    let problem = app
        .patch(&format!("/v1/products/{}", f.active), &app.admin, &json!({"sku": null, "price_cents": 5}))
        .await
        .assert_problem(422, "validation");
    assert_names(&problem, "sku");
    app.post("/v1/customers", &app.admin, &json!({"name": "no email"})).await.assert_problem(422, "validation");
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn max_length_counts_characters_not_bytes() {
    let app = TestApp::new().await;
    // sku has max_length = 32.
    for sku in ["é".repeat(32), "😀".repeat(32), "x".repeat(32), "日本".repeat(16)] {
        let r = app.post("/v1/products", &app.admin, &json!({"sku": sku, "name": "n"})).await;
        r.assert_status(201);
        assert_eq!(r.json()["sku"], sku.as_str());
    }
    let before = snapshot(&app).await;
    for sku in ["é".repeat(33), "x".repeat(33), "😀".repeat(33)] {
        let problem = app
            .post("/v1/products", &app.admin, &json!({"sku": sku, "name": "n"}))
            .await
            .assert_problem(422, "validation");
        assert_eq!(error_fields(&problem), ["sku"]);
    }
    let id = before["products"][0]["id"].as_str().unwrap();
    let problem = app
        .patch(&format!("/v1/products/{id}"), &app.admin, &json!({"sku": "é".repeat(33)}))
        .await
        .assert_problem(422, "validation");
    assert_eq!(error_fields(&problem), ["sku"]);
    assert_eq!(snapshot(&app).await, before);
}

#[tokio::test]
async fn a_body_over_one_mib_is_413() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let big = json!({"sku": "BIG", "name": "x".repeat(1024 * 1024 + 10)}).to_string().into_bytes();
    let r = send_raw(app, Method::POST, "/v1/products", big.clone()).await;
    r.assert_problem(413, "payload-too-large");
    send_raw(app, Method::PATCH, &format!("/v1/products/{}", f.active), big.clone())
        .await
        .assert_problem(413, "payload-too-large");
    send_raw(app, Method::POST, "/v1/keys", big.clone()).await.assert_problem(413, "payload-too-large");
    // Even when it is not JSON at all.
    send_raw(app, Method::POST, "/v1/products", vec![b'x'; 2 * 1024 * 1024])
        .await
        .assert_problem(413, "payload-too-large");
    assert_eq!(snapshot(app).await, before);

    // Just under the limit is fine.
    let name = "y".repeat(1024 * 1024 - 100);
    let r = app.post("/v1/products", &app.admin, &json!({"sku": "NEAR", "name": name})).await;
    r.assert_status(201);
    assert_eq!(r.json()["name"].as_str().map(str::len), Some(name.len()));
}

#[tokio::test]
async fn a_too_long_idempotency_key_is_400_and_creates_nothing() {
    let app = TestApp::new().await;
    let long = "k".repeat(256);
    let r = app
        .send(
            Method::POST,
            "/v1/products",
            Some(&app.admin),
            &[("idempotency-key", &long)],
            Some(product("A").to_string().into_bytes()),
        )
        .await;
    r.assert_problem(400, "invalid-parameter");
    assert_eq!(snapshot(&app).await["products"], json!([]));
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_collections_are_404_on_every_endpoint() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let id = &f.active;
    for c in ["nope", "Products", "product", "keys2", "_migrations", "rec_products"] {
        app.get(&format!("/v1/{c}"), &app.admin).await.assert_problem(404, "not-found");
        app.get(&format!("/v1/{c}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
        app.get(&format!("/v1/{c}/{id}"), &app.admin).await.assert_problem(404, "not-found");
        app.post(&format!("/v1/{c}"), &app.admin, &product("X")).await.assert_problem(404, "not-found");
        app.patch(&format!("/v1/{c}/{id}"), &app.admin, &json!({"name": "x"})).await.assert_problem(404, "not-found");
        app.delete(&format!("/v1/{c}/{id}"), &app.admin).await.assert_problem(404, "not-found");
        app.delete(&format!("/v1/{c}/{id}?dry_run=true"), &app.admin).await.assert_problem(404, "not-found");
        app.post_empty(&format!("/v1/{c}/{id}:restore"), &app.admin).await.assert_problem(404, "not-found");
    }
    // Routes that do not exist at all.
    for path in ["/v2/products", "/v1", "/", "/v1/products/a/b"] {
        app.get(path, &app.admin).await.assert_problem(404, "not-found");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn the_collection_and_the_scope_are_checked_before_the_body() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let reader = app.key("t1", "read").await;
    for body in [b"{not json".to_vec(), Vec::new()] {
        let shown = String::from_utf8_lossy(&body).into_owned();
        // An unknown collection is a 404 whatever the body.
        let r = send_raw(app, Method::POST, "/v1/nope", body.clone()).await;
        assert_eq!(r.status.as_u16(), 404, "POST /v1/nope {shown:?}: {}", r.text);
        let r = send_raw(app, Method::PATCH, &format!("/v1/nope/{}", f.active), body.clone()).await;
        assert_eq!(r.status.as_u16(), 404, "PATCH /v1/nope {shown:?}: {}", r.text);
        // A key without the scope hears 403, not what is wrong with its body.
        let as_reader = |method: Method, path: String| {
            let body = Some(body.clone());
            let reader = reader.clone();
            async move { app.send(method, &path, Some(&reader), &[], body).await }
        };
        as_reader(Method::POST, "/v1/products".into()).await.assert_problem(403, "forbidden");
        as_reader(Method::PATCH, format!("/v1/products/{}", f.active)).await.assert_problem(403, "forbidden");
        as_reader(Method::POST, "/v1/keys".into()).await.assert_problem(403, "forbidden");
        as_reader(Method::POST, format!("/v1/products/{}:hold", f.active)).await.assert_problem(403, "forbidden");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn ids_that_cannot_exist_are_404() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let long = "x".repeat(129);
    for id in [long.as_str(), "a.b", "a%20b", "a%2Fb", "%C3%A9", "a%3Ab", "a%00b", "a*b", "..", "a+b"] {
        app.get(&format!("/v1/products/{id}"), &app.admin).await.assert_problem(404, "not-found");
        app.get(&format!("/v1/products/{id}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
        app.patch(&format!("/v1/products/{id}"), &app.admin, &json!({"name": "x"}))
            .await
            .assert_problem(404, "not-found");
        app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_problem(404, "not-found");
        app.delete(&format!("/v1/products/{id}?dry_run=true"), &app.admin).await.assert_problem(404, "not-found");
        app.post_empty(&format!("/v1/products/{id}:restore"), &app.admin).await.assert_problem(404, "not-found");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn an_unknown_action_is_404_and_changes_nothing() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    for id in [&f.active, &f.deleted] {
        for action in ["frobnicate", "Restore", "restorex", "", "delete"] {
            let r = app.post_empty(&format!("/v1/products/{id}:{action}"), &app.admin).await;
            assert_eq!(r.status.as_u16(), 404, ":{action}: {}", r.text);
            r.assert_problem(404, "not-found");
        }
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn a_wrong_method_is_405_problem() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let id = &f.active;
    let cases = [
        (Method::PUT, format!("/v1/products/{id}")),
        (Method::PUT, "/v1/products".to_string()),
        (Method::DELETE, "/v1/products".to_string()),
        (Method::PATCH, "/v1/products".to_string()),
        (Method::POST, format!("/v1/products/{id}")),
        (Method::PUT, "/v1/keys".to_string()),
        (Method::PATCH, "/v1/keys/key_x".to_string()),
        (Method::POST, "/healthz".to_string()),
        (Method::DELETE, "/readyz".to_string()),
    ];
    for (method, path) in cases {
        let r = app.send(method.clone(), &path, Some(&app.admin), &[], Some(b"{}".to_vec())).await;
        assert_eq!(r.status.as_u16(), 405, "{method} {path}: {}", r.text);
        let problem = r.assert_problem(405, "method-not-allowed");
        assert_eq!(problem["request_id"].as_str(), r.header("x-request-id"), "{method} {path}");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    let f = fixture().await;
    let app = &f.app;
    let id = &f.active;
    for (method, path) in [
        (Method::PUT, format!("/v1/products/{id}")),
        (Method::DELETE, "/v1/products".to_string()),
        (Method::POST, format!("/v1/products/{id}")),
    ] {
        let r = app.send(method.clone(), &path, Some(&app.admin), &[], Some(b"{}".to_vec())).await;
        r.assert_problem(405, "method-not-allowed");
        let allow = r.header("allow").unwrap_or_else(|| panic!("{method} {path}: no Allow header: {:?}", r.headers));
        assert!(allow.contains("GET"), "{method} {path}: Allow: {allow}");
    }
    // Allow names the methods of the resource addressed: a record, or one of its actions.
    for (method, path, expected) in [
        (Method::OPTIONS, format!("/v1/products/{id}"), "GET,HEAD,PATCH,DELETE"),
        (Method::PUT, format!("/v1/products/{id}"), "GET,HEAD,PATCH,DELETE"),
        (Method::OPTIONS, format!("/v1/products/{id}:restore"), "POST"),
        (Method::PUT, format!("/v1/products/{id}:erase"), "POST"),
        (Method::GET, "/v1/purge:pause".to_string(), "POST"),
        (Method::PUT, "/v1/deletions/del_x".to_string(), "GET,HEAD"),
        // GET, PATCH and DELETE of an action, whatever its query, are 405 too.
        (Method::PATCH, format!("/v1/products/{id}:erase?reason=x"), "POST"),
        (Method::DELETE, format!("/v1/products/{id}:release?hold_id=h"), "POST"),
        (Method::GET, "/v1/deletions/del_x:restore".to_string(), "POST"),
    ]
    .into_iter()
    .chain(
        ["restore", "purge", "erase", "hold", "release"]
            .map(|action| (Method::GET, format!("/v1/products/{id}:{action}"), "POST")),
    ) {
        let r = app.send(method.clone(), &path, Some(&app.admin), &[], None).await;
        r.assert_problem(405, "method-not-allowed");
        assert_eq!(r.header("allow"), Some(expected), "{method} {path}");
    }
}

// ---------------------------------------------------------------------------------------
// Query parameters
// ---------------------------------------------------------------------------------------

/// Asserts a 400 `invalid-parameter` naming `param`.
async fn assert_bad_param(app: &TestApp, path: &str, param: &str) {
    let r = app.get(path, &app.admin).await;
    assert_eq!(r.status.as_u16(), 400, "GET {path}: {}", r.text);
    let problem = r.assert_problem(400, "invalid-parameter");
    assert_names(&problem, param);
}

#[tokio::test]
async fn bad_cursors_are_400() {
    let f = fixture().await;
    let app = &f.app;
    for i in 0..3 {
        let mut body = product(&format!("P-{i}"));
        body["price_cents"] = json!(i);
        app.create("products", &app.admin, &body).await;
    }
    for garbage in ["!!!", "abc", "eyJ4IjoxfQ", "bnVsbA", "%FF%FE"] {
        assert_bad_param(app, &format!("/v1/products?cursor={garbage}"), "cursor").await;
    }
    // An empty cursor is the first page, not garbage (the OpenAPI document allows it).
    app.get("/v1/products?cursor=", &app.admin).await.assert_status(200);
    // A cursor issued for one sort is refused by another.
    let page = app.get("/v1/products?sort=price_cents&limit=1", &app.admin).await.json();
    let cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    app.get(&format!("/v1/products?sort=price_cents&limit=1&cursor={cursor}"), &app.admin).await.assert_status(200);
    for other in ["", "&sort=-price_cents", "&sort=name", "&sort=id", "&sort=created_at"] {
        assert_bad_param(app, &format!("/v1/products?limit=1&cursor={cursor}{other}"), "cursor").await;
    }
    let page = app.get("/v1/products?limit=1", &app.admin).await.json();
    let id_cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    assert_bad_param(app, &format!("/v1/products?limit=1&sort=-id&cursor={id_cursor}"), "cursor").await;
    // A tampered cursor is refused too.
    let mut tampered = id_cursor.clone();
    tampered.insert(3, '*');
    assert_bad_param(app, &format!("/v1/products?cursor={tampered}"), "cursor").await;
}

#[tokio::test]
async fn bad_filters_sorts_and_flags_are_400() {
    let f = fixture().await;
    let app = &f.app;
    let cases = [
        ("filter[nope]=1", "filter[nope]"),
        ("filter[email]=a@x.com", "filter[email]"),
        ("filter[meta]=1", "filter[meta]"),
        ("filter[price_cents]=abc", "filter[price_cents]"),
        ("filter[price_cents]=1.5", "filter[price_cents]"),
        ("filter[price_cents]=", "filter[price_cents]"),
        ("filter[rating]=abc", "filter[rating]"),
        ("filter[active]=yes", "filter[active]"),
        ("filter[active]=1", "filter[active]"),
        ("filter[launched_at]=yesterday", "filter[launched_at]"),
        ("filter[launched_at]=2026-01-01", "filter[launched_at]"),
        ("filter[category_id]=a%20b", "filter[category_id]"),
        ("filter[deleted]=maybe", "filter[deleted]"),
        ("filter[deleted_since]=yesterday", "filter[deleted_since]"),
        ("filter[deleted_before]=2026-01-01", "filter[deleted_before]"),
        ("filter[purge_before]=soon", "filter[purge_before]"),
        ("sort=nope", "sort"),
        ("sort=-nope", "sort"),
        ("sort=meta", "sort"),
        ("sort=", "sort"),
        ("sort=--price_cents", "sort"),
        ("include=everything", "include"),
        ("include=", "include"),
        ("count=yes", "count"),
        ("count=1", "count"),
    ];
    for (query, param) in cases {
        assert_bad_param(app, &format!("/v1/products?{query}"), param).await;
    }
    // filter[deleted]=false contradicts the deleted_* filters.
    let r = app.get("/v1/products?filter[deleted]=false&filter[deleted_by]=key_x", &app.admin).await;
    r.assert_problem(400, "invalid-parameter");
    // GET of one record takes include=deleted only.
    assert_bad_param(app, &format!("/v1/products/{}?include=all", f.active), "include").await;
    // dry_run is true or false.
    let r = app.delete(&format!("/v1/products/{}?dry_run=yes", f.active), &app.admin).await;
    assert_names(&r.assert_problem(400, "invalid-parameter"), "dry_run");
    assert_eq!(app.get(&format!("/v1/products/{}", f.active), &app.admin).await.json()["deleted"], false);
}

#[tokio::test]
async fn bad_limits_are_400() {
    let f = fixture().await;
    let app = &f.app;
    for limit in ["0", "501", "abc", "-1", "1.5", "", "1e2", "99999999999999999999"] {
        assert_bad_param(app, &format!("/v1/products?limit={limit}"), "limit").await;
        assert_bad_param(app, &format!("/v1/keys?limit={limit}"), "limit").await;
    }
    for limit in ["1", "500"] {
        app.get(&format!("/v1/products?limit={limit}"), &app.admin).await.assert_status(200);
        app.get(&format!("/v1/keys?limit={limit}"), &app.admin).await.assert_status(200);
    }
}

#[tokio::test]
async fn unknown_query_parameters_are_400_everywhere_and_change_nothing() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let (a, d) = (&f.active, &f.deleted);
    let checks: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/products?foo=1".into(), None),
        (Method::GET, "/v1/products?filter=1".into(), None),
        (Method::GET, "/v1/products?filter[sku=A".into(), None),
        (Method::GET, "/v1/products?Limit=5".into(), None),
        (Method::GET, format!("/v1/products/{a}?foo=1"), None),
        (Method::GET, format!("/v1/products/{a}?limit=1"), None),
        (Method::POST, "/v1/products?foo=1".into(), Some(product("NEW"))),
        (Method::POST, "/v1/products?dry_run=true".into(), Some(product("NEW"))),
        (Method::PATCH, format!("/v1/products/{a}?foo=1"), Some(json!({"name": "changed"}))),
        (Method::PATCH, format!("/v1/products/{a}?reason=x"), Some(json!({"name": "changed"}))),
        (Method::DELETE, format!("/v1/products/{a}?foo=1"), None),
        (Method::DELETE, format!("/v1/products/{a}?Reason=x"), None),
        (Method::POST, format!("/v1/products/{d}:restore?foo=1"), None),
        (Method::POST, format!("/v1/products/{d}:restore?dry_run=true"), None),
        (Method::GET, "/v1/keys?foo=1".into(), None),
        (Method::POST, "/v1/keys?foo=1".into(), Some(json!({"scopes": ["read"]}))),
    ];
    for (method, path, body) in checks {
        let r = app.send(method.clone(), &path, Some(&app.admin), &[], body.map(|b| b.to_string().into_bytes())).await;
        assert_eq!(r.status.as_u16(), 400, "{method} {path}: {}", r.text);
        r.assert_problem(400, "invalid-parameter");
    }
    assert_eq!(snapshot(app).await, before);
    let keys = app.get("/v1/keys", &app.admin).await.json();
    assert_eq!(keys["items"].as_array().unwrap().len(), 1, "no key was created: {keys}");
}

#[tokio::test]
async fn repeated_query_parameters_are_400_and_change_nothing() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let (a, d) = (&f.active, &f.deleted);
    let checks: Vec<(Method, String)> = vec![
        (Method::GET, "/v1/products?limit=1&limit=2".into()),
        (Method::GET, "/v1/products?limit=1&limit=1".into()),
        (Method::GET, "/v1/products?filter[sku]=A&filter[sku]=B".into()),
        (Method::GET, "/v1/products?sort=sku&sort=-sku".into()),
        (Method::GET, "/v1/products?include=deleted&include=deleted".into()),
        (Method::GET, format!("/v1/products/{a}?include=deleted&include=deleted")),
        (Method::DELETE, format!("/v1/products/{a}?reason=a&reason=b")),
        (Method::DELETE, format!("/v1/products/{a}?dry_run=false&dry_run=false")),
        (Method::POST, format!("/v1/products/{d}:restore?reason=a&reason=a")),
        (Method::GET, "/v1/keys?limit=1&limit=2".into()),
    ];
    for (method, path) in checks {
        let r = app.send(method.clone(), &path, Some(&app.admin), &[], None).await;
        assert_eq!(r.status.as_u16(), 400, "{method} {path}: {}", r.text);
        r.assert_problem(400, "invalid-parameter");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn a_reason_over_500_characters_is_422() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let (a, d) = (&f.active, &f.deleted);
    // 501 characters; the multi-byte one is 1002 bytes.
    for reason in ["x".repeat(501), "%C3%A9".repeat(501)] {
        for (method, path) in [
            (Method::DELETE, format!("/v1/products/{a}?reason={reason}")),
            (Method::DELETE, format!("/v1/products/{d}?reason={reason}")),
            (Method::POST, format!("/v1/products/{d}:restore?reason={reason}")),
            (Method::POST, format!("/v1/products/{a}:restore?reason={reason}")),
        ] {
            let r = app.send(method.clone(), &path, Some(&app.admin), &[], None).await;
            assert_eq!(r.status.as_u16(), 422, "{method} {}: {}", &path[..60], r.text);
            assert_names(&r.assert_problem(422, "validation"), "reason");
        }
    }
    assert_eq!(snapshot(app).await, before);

    // 500 characters (1000 bytes) are fine, and stored whole.
    let reason = "é".repeat(500);
    let encoded = "%C3%A9".repeat(500);
    app.delete(&format!("/v1/products/{a}?reason={encoded}"), &app.admin).await.assert_status(204);
    let got = app.get(&format!("/v1/products/{a}?include=deleted"), &app.admin).await.json();
    assert_eq!(got["delete_reason"], reason.as_str());
    app.post_empty(&format!("/v1/products/{a}:restore?reason={encoded}"), &app.admin).await.assert_status(200);
}

// ---------------------------------------------------------------------------------------
// Preconditions as input
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unparseable_if_match_never_matches() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    let path = format!("/v1/products/{}", f.active);
    for tag in ["garbage", "v1", "\"1\"", "\"v1", "\"vx\"", ""] {
        let r = app
            .send(Method::PATCH, &path, Some(&app.admin), &[("if-match", tag)], Some(b"{\"name\":\"x\"}".to_vec()))
            .await;
        assert_eq!(r.status.as_u16(), 412, "If-Match {tag:?}: {}", r.text);
        r.assert_problem(412, "precondition-failed");
        let r = app.send(Method::DELETE, &path, Some(&app.admin), &[("if-match", tag)], None).await;
        r.assert_problem(412, "precondition-failed");
    }
    assert_eq!(snapshot(app).await, before);
}

#[tokio::test]
async fn odd_but_valid_query_values_are_not_errors() {
    let f = fixture().await;
    let app = &f.app;
    // Values that cannot match anything give an empty list, not an error.
    for query in ["filter[sku]=%FF%FE", "filter[sku]=%E2%80%AE", "filter[name]=a%26b%3Dc"] {
        let r = app.get(&format!("/v1/products?{query}"), &app.admin).await;
        r.assert_status(200);
        assert_eq!(r.json()["items"], json!([]), "{query}");
    }
}

/// U+0000 cannot be stored in PostgreSQL's text, so neither store takes it: a query
/// parameter with one is a 400, a record value, reason or hold member with one a 422, and
/// nothing is written.
#[tokio::test]
async fn the_nul_character_is_refused_everywhere_and_changes_nothing() {
    let f = fixture().await;
    let app = &f.app;
    let before = snapshot(app).await;
    for query in ["filter[name]=%00", "filter[sku]=a%00b", "limit=1%00", "sort%00=name"] {
        let r = app.get(&format!("/v1/products?{query}"), &app.admin).await;
        let problem = r.assert_problem(400, "invalid-parameter");
        assert!(problem["detail"].as_str().unwrap().contains("U+0000"), "{query}: {problem}");
    }
    app.get("/v1/audit?actor=%00", &app.admin).await.assert_problem(400, "invalid-parameter");
    app.get("/v1/trash?deleted_by=x%00", &app.admin).await.assert_problem(400, "invalid-parameter");
    let path = format!("/v1/products/{}", f.active);
    app.delete(&format!("{path}?reason=a%00b"), &app.admin).await.assert_problem(400, "invalid-parameter");
    app.post("/v1/products", &app.admin, &json!({"sku": "N\u{0}", "name": "x"}))
        .await
        .assert_problem(422, "validation");
    app.patch(&path, &app.admin, &json!({"name": "a\u{0}b"})).await.assert_problem(422, "validation");
    app.post(&format!("{path}:hold"), &app.admin, &json!({"case": "C\u{0}"})).await.assert_problem(422, "validation");
    assert_eq!(snapshot(app).await, before, "nothing was written");
}

// ---------------------------------------------------------------------------------------
// Storage that refuses a write
// ---------------------------------------------------------------------------------------

/// Another process (`tombstone purge`, a backup, a long transaction) holds the database's
/// write lock past the time a write may wait for it — SQLite's busy timeout, PostgreSQL's
/// `lock_timeout` (here 300 ms, set in the URL as an operator would) — so the write is a
/// 503 `busy` with `Retry-After`, not a 500, and nothing of it — record, audit entry,
/// event — is written.
#[tokio::test]
async fn a_write_blocked_by_another_process_is_a_503_busy_with_retry_after() {
    let f = fixture_with(TestApp::with_postgres_options(TEST_SCHEMA, "-c lock_timeout=300").await).await;
    let app = &f.app;
    let before = snapshot(app).await;
    let audit_before = app.get("/v1/audit?limit=500", &app.admin).await.json()["items"].as_array().unwrap().len();

    let other = app.raw().await;
    other.hold_write_lock().await;
    let r = app.post("/v1/products", &app.admin, &json!({"id": "p_busy", "sku": "B", "name": "Busy"})).await;
    let problem = r.assert_problem(503, "busy");
    assert_eq!(r.header("retry-after"), Some("1"), "{problem}");
    assert!(!r.text.contains("lock"), "the cause stays in the log: {}", r.text);
    let r = app.delete(&format!("/v1/products/{}", f.active), &app.admin).await;
    r.assert_problem(503, "busy");
    other.execute("rollback").await;
    other.close().await;

    assert_eq!(snapshot(app).await, before, "a refused write changed nothing");
    let audit = app.get("/v1/audit?limit=500", &app.admin).await.json();
    assert_eq!(audit["items"].as_array().unwrap().len(), audit_before, "{audit}");
    app.get("/v1/products/p_busy", &app.admin).await.assert_status(404);
    // Once the lock is gone the same request succeeds.
    app.post("/v1/products", &app.admin, &json!({"id": "p_busy", "sku": "B", "name": "Busy"})).await.assert_status(201);
}
