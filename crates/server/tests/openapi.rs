//! `/openapi.json`: an OpenAPI 3.1 document generated from the configured schema, held to
//! what the router really does.

mod common;

use axum::http::Method;
use common::{TEST_SCHEMA, TestApp};
use serde_json::{Value, json};

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn fetch(app: &TestApp) -> Value {
    // No key: the document is public.
    let r = app.send(Method::GET, "/openapi.json", None, &[], None).await;
    r.assert_status(200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", r.headers);
    r.json()
}

/// Every (path, method, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                ops.push((path.clone(), (*method).to_string(), op.clone()));
            }
        }
    }
    ops
}

fn operation<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no component schema {name}");
    s
}

fn param<'a>(op: &'a Value, name: &str) -> Option<&'a Value> {
    op["parameters"].as_array()?.iter().find(|p| p["name"] == name)
}

fn param_names(op: &Value) -> Vec<String> {
    op["parameters"].as_array().map_or_else(Vec::new, |ps| {
        ps.iter().map(|p| p["name"].as_str().expect("parameter name").to_string()).collect()
    })
}

fn is_problem(response: &Value) -> bool {
    response["content"]["application/problem+json"]["schema"]["$ref"] == "#/components/schemas/Problem"
}

/// The operation is open to anyone (`security: []`).
fn is_public(op: &Value) -> bool {
    op["security"].as_array().is_some_and(Vec::is_empty)
}

fn pascal(name: &str) -> String {
    name.split('_')
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Every `$ref` in the document.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().expect("$ref is a string").to_string());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn document_is_openapi_3_1_and_covers_every_endpoint_of_every_collection() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "Tombstone");
    assert!(doc["info"]["version"].is_string());

    for name in app.config.schema.collections.keys() {
        let base = format!("/v1/{name}");
        let item = format!("{base}/{{id}}");
        for (path, method) in [
            (base.as_str(), "get"),
            (base.as_str(), "post"),
            (item.as_str(), "get"),
            (item.as_str(), "patch"),
            (item.as_str(), "delete"),
            (&format!("{item}:restore"), "post"),
            (&format!("{item}:purge"), "post"),
            (&format!("{item}:erase"), "post"),
            (&format!("{item}:hold"), "post"),
            (&format!("{item}:release"), "post"),
        ] {
            let op = operation(&doc, path, method);
            assert!(op["tags"].as_array().is_some_and(|t| t.contains(&json!(name))), "{method} {path}: tag");
        }
        let record = pascal(name);
        schema(&doc, &record);
        schema(&doc, &format!("New{record}"));
        schema(&doc, &format!("{record}Patch"));
        schema(&doc, &format!("{record}List"));
    }
    for (path, method) in [
        ("/v1/keys", "post"),
        ("/v1/keys", "get"),
        ("/v1/keys/{id}", "get"),
        ("/v1/keys/{id}", "delete"),
        ("/v1/trash", "get"),
        ("/v1/purge/preview", "get"),
        ("/v1/purge:pause", "post"),
        ("/v1/purge:resume", "post"),
        ("/metrics", "get"),
        ("/v1/audit", "get"),
        ("/v1/audit/{seq}", "get"),
        ("/v1/audit/verify", "get"),
        ("/v1/audit/verify", "post"),
        ("/v1/events", "get"),
        ("/v1/events/stream", "get"),
        ("/v1/webhooks/deliveries", "get"),
        ("/v1/webhooks/deliveries/{id}:redeliver", "post"),
        ("/v1/webhooks/endpoints", "get"),
        ("/v1/webhooks/endpoints/{id}:enable", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
    ] {
        operation(&doc, path, method);
    }

    // Operation ids are unique; every $ref resolves.
    let ops = operations(&doc);
    let mut ids: Vec<&str> = ops.iter().map(|(_, _, op)| op["operationId"].as_str().expect("operationId")).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "duplicate operationId");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        schema(&doc, name);
    }
}

#[tokio::test]
async fn every_operation_documents_its_errors_as_problems() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    let problem = schema(&doc, "Problem");
    for member in ["type", "title", "status", "detail", "request_id"] {
        assert!(problem["properties"][member].is_object(), "Problem.{member}");
        assert!(problem["required"].as_array().unwrap().contains(&json!(member)), "Problem.{member} is required");
    }
    for member in ["conflicting_id", "fields", "errors", "missing_scope", "current_etag"] {
        assert!(problem["properties"][member].is_object(), "Problem.{member}");
    }
    assert_eq!(problem["properties"]["errors"]["items"]["$ref"], "#/components/schemas/FieldError");
    let field_error = schema(&doc, "FieldError");
    assert!(field_error["properties"]["field"].is_object() && field_error["properties"]["message"].is_object());

    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(doc["security"], json!([{"bearer": []}]));

    for (path, method, op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: responses"));
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success response");
        for (status, response) in responses {
            assert!(response["headers"]["X-Request-Id"].is_object(), "{method} {path} {status}: X-Request-Id");
            if status.as_str() >= "400" {
                assert!(is_problem(response), "{method} {path} {status}: not a problem+json Problem: {response}");
            }
        }
        if is_public(&op) {
            continue;
        }
        assert!(
            responses.iter().any(|(s, r)| s.starts_with('4') && is_problem(r)),
            "{method} {path}: no 4xx problem response"
        );
        for status in ["401", "403"] {
            assert!(responses.contains_key(status), "{method} {path}: no {status}");
        }
        assert_eq!(responses["401"]["headers"]["WWW-Authenticate"]["schema"]["type"], "string");
    }
    assert!(is_public(operation(&doc, "/healthz", "get")));
    assert!(is_problem(&operation(&doc, "/readyz", "get")["responses"]["503"]));
}

#[tokio::test]
async fn record_schemas_list_declared_fields_with_their_types() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    let products = schema(&doc, "Products");
    let props = &products["properties"];
    // System fields.
    for (name, ty) in [
        ("id", json!("string")),
        ("collection", json!("string")),
        ("version", json!("integer")),
        ("created_at", json!("string")),
        ("updated_at", json!("string")),
        ("deleted", json!("boolean")),
        ("deleted_at", json!(["string", "null"])),
        ("deleted_by", json!(["string", "null"])),
        ("delete_reason", json!(["string", "null"])),
        ("deletion_id", json!(["string", "null"])),
        ("purge_at", json!(["string", "null"])),
        ("legal_hold", json!("boolean")),
    ] {
        assert_eq!(props[name]["type"], ty, "products.{name}");
        assert!(products["required"].as_array().unwrap().contains(&json!(name)), "products.{name} is always present");
    }
    for name in ["created_at", "updated_at", "deleted_at", "purge_at"] {
        assert_eq!(props[name]["format"], "date-time", "products.{name}");
    }
    assert_eq!(props["collection"]["enum"], json!(["products"]));

    // Declared fields: required ones are never null; optional ones may be.
    assert_eq!(props["sku"]["type"], "string");
    assert_eq!(props["sku"]["maxLength"], 32);
    assert_eq!(props["name"]["type"], "string");
    assert_eq!(props["price_cents"]["type"], json!(["integer", "null"]));
    assert_eq!(props["rating"]["type"], json!(["number", "null"]));
    assert_eq!(props["active"]["type"], json!(["boolean", "null"]));
    assert_eq!(props["launched_at"]["type"], json!(["string", "null"]));
    assert_eq!(props["launched_at"]["format"], "date-time");
    assert!(props["meta"].is_object() && props["meta"].get("type").is_none(), "json fields take any value");
    assert_eq!(props["category_id"]["type"], json!(["string", "null"]));
    assert_eq!(props["category_id"]["x-tombstone-ref"], json!({"collection": "categories", "on_delete": "restrict"}));

    // The create body: required fields as declared, nothing else accepted.
    let new = schema(&doc, "NewProducts");
    let mut required: Vec<&str> = new["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    required.sort_unstable();
    assert_eq!(required, ["name", "sku"]);
    assert_eq!(new["additionalProperties"], false);
    assert!(new["properties"]["id"].is_object(), "a client may choose the id");
    assert!(new["properties"].get("version").is_none() && new["properties"].get("deleted_at").is_none());
    assert_eq!(new["properties"]["sku"]["maxLength"], 32);

    // Customers: pii and case-insensitivity are documented.
    let customers = schema(&doc, "Customers");
    let email = customers["properties"]["email"]["description"].as_str().unwrap().to_lowercase();
    assert!(email.contains("case-insensitive") && email.contains("personal data"), "{email}");

    // The list page.
    let list = schema(&doc, "ProductsList");
    assert_eq!(list["properties"]["items"]["items"]["$ref"], "#/components/schemas/Products");
    assert_eq!(list["properties"]["next_cursor"]["type"], json!(["string", "null"]));
}

#[tokio::test]
async fn operations_document_parameters_and_headers() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;

    let list = operation(&doc, "/v1/products", "get");
    let names = param_names(list);
    for name in [
        "limit",
        "cursor",
        "include",
        "filter[deleted]",
        "filter[deleted_since]",
        "filter[deleted_before]",
        "filter[deleted_by]",
        "filter[purge_before]",
        "filter[sku]",
        "filter[name]",
        "filter[price_cents]",
        "filter[rating]",
        "filter[active]",
        "filter[launched_at]",
        "filter[category_id]",
        "sort",
        "count",
    ] {
        assert!(names.contains(&name.to_string()), "GET /v1/products lacks {name}: {names:?}");
    }
    assert!(!names.contains(&"filter[meta]".to_string()), "json fields cannot be filtered on");
    let limit = &param(list, "limit").unwrap()["schema"];
    assert_eq!(
        (limit["minimum"].as_u64(), limit["maximum"].as_u64(), limit["default"].as_u64()),
        (Some(1), Some(500), Some(50))
    );
    let sorts = param(list, "sort").unwrap()["schema"]["enum"].as_array().unwrap();
    for s in ["id", "-created_at", "sku", "-price_cents", "deleted_at"] {
        assert!(sorts.contains(&json!(s)), "sort {s}");
    }
    assert!(!sorts.contains(&json!("meta")));
    assert_eq!(param(list, "filter[price_cents]").unwrap()["schema"]["type"], "integer");
    assert_eq!(param(list, "filter[deleted_since]").unwrap()["schema"]["format"], "date-time");
    assert_eq!(
        list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ProductsList"
    );

    let create = operation(&doc, "/v1/products", "post");
    assert_eq!(param(create, "Idempotency-Key").unwrap()["in"], "header");
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewProducts"
    );
    let created = &create["responses"]["201"];
    for h in ["Location", "ETag", "Idempotent-Replayed", "X-Request-Id"] {
        assert!(created["headers"][h].is_object(), "201 header {h}");
    }
    for status in ["400", "409", "413", "422"] {
        assert!(create["responses"][status].is_object(), "create {status}");
    }

    let get = operation(&doc, "/v1/products/{id}", "get");
    assert_eq!(param(get, "id").unwrap()["in"], "path");
    assert_eq!(param(get, "If-None-Match").unwrap()["in"], "header");
    assert_eq!(param(get, "include").unwrap()["schema"]["enum"], json!(["deleted"]));
    assert!(get["responses"]["200"]["headers"]["ETag"].is_object());
    assert!(get["responses"]["304"].is_object());
    assert!(get["responses"]["404"].is_object());

    let patch = operation(&doc, "/v1/products/{id}", "patch");
    assert_eq!(
        patch["requestBody"]["content"]["application/merge-patch+json"]["schema"]["$ref"],
        "#/components/schemas/ProductsPatch"
    );
    assert_eq!(param(patch, "If-Match").unwrap()["required"], false);
    for status in ["404", "409", "412", "413", "422"] {
        assert!(patch["responses"][status].is_object(), "patch {status}");
    }
    assert!(patch["responses"].get("428").is_none(), "products does not require If-Match");

    let delete = operation(&doc, "/v1/products/{id}", "delete");
    for name in ["reason", "dry_run", "If-Match"] {
        assert!(param(delete, name).is_some(), "DELETE lacks {name}");
    }
    assert!(delete["responses"]["204"]["headers"]["Deletion-Id"].is_object());
    assert_eq!(
        delete["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/DeletionPlan"
    );
    assert!(delete["responses"]["412"].is_object());
    // categories are restricted by products.category_id; products by nothing.
    assert!(operation(&doc, "/v1/categories/{id}", "delete")["responses"]["409"].is_object());
    assert!(delete["responses"].get("409").is_none());

    let restore = operation(&doc, "/v1/products/{id}:restore", "post");
    assert!(param(restore, "reason").is_some() && param(restore, "If-Match").is_some());
    assert_eq!(
        restore["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Products"
    );
    for status in ["404", "409", "412"] {
        assert!(restore["responses"][status].is_object(), "restore {status}");
    }

    // contracts require If-Match: the document says so, with the 428.
    for (path, method) in
        [("/v1/contracts/{id}", "patch"), ("/v1/contracts/{id}", "delete"), ("/v1/contracts/{id}:restore", "post")]
    {
        let op = operation(&doc, path, method);
        assert_eq!(param(op, "If-Match").unwrap()["required"], true, "{method} {path}");
        assert!(op["responses"]["428"].is_object(), "{method} {path}: 428");
    }
    assert!(operation(&doc, "/v1/contracts", "post")["responses"].get("428").is_none(), "never on create");

    let keys = operation(&doc, "/v1/keys", "post");
    assert_eq!(keys["requestBody"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/NewKey");
    assert_eq!(
        keys["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreatedKey"
    );
    assert!(schema(&doc, "CreatedKey")["required"].as_array().unwrap().contains(&json!("secret")));
    assert!(schema(&doc, "Key")["properties"].get("secret").is_none(), "listed keys never show a secret");
}

#[tokio::test]
async fn new_collections_appear_without_code_changes() {
    let app = TestApp::with_schema(
        "[collections.warehouse_bins.fields]\ncode = { type = \"string\", required = true }\nqty = { type = \"integer\" }\n\
         [collections.new_warehouse_bins.fields]\nx = { type = \"boolean\" }\n",
    )
    .await;
    let doc = fetch(&app).await;
    operation(&doc, "/v1/warehouse_bins", "get");
    operation(&doc, "/v1/warehouse_bins/{id}:restore", "post");
    operation(&doc, "/v1/new_warehouse_bins/{id}", "patch");
    assert_eq!(schema(&doc, "WarehouseBins")["properties"]["qty"]["type"], json!(["integer", "null"]));
    assert_eq!(schema(&doc, "NewWarehouseBins")["required"], json!(["code"]));
    // `new_warehouse_bins` would clash with the create body of `warehouse_bins`: it gets a suffix.
    let clashing = &operation(&doc, "/v1/new_warehouse_bins/{id}", "get")["responses"]["200"]["content"]["application/json"]
        ["schema"]["$ref"];
    assert_eq!(clashing, "#/components/schemas/NewWarehouseBins_2");
    assert!(doc["paths"].get("/v1/products").is_none());
}

/// Every documented operation is routed, and answers a probe with a status it documents.
#[tokio::test]
async fn the_router_answers_what_the_document_promises() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    for (path, method, op) in operations(&doc) {
        let uri = path.replace("{id}", "no-such-id").replace("{seq}", "999999");
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let key = (!is_public(&op)).then_some(app.admin.as_str());
        // An event stream never ends: only its refusals are probed.
        let streams = op["responses"]["200"]["content"].get("text/event-stream").is_some();
        if !streams {
            let body = op.get("requestBody").map(|_| b"{}".to_vec());
            let r = app.send(method.clone(), &uri, key, &[], body).await;
            let status = r.status.as_str().to_string();
            assert!(
                op["responses"].get(&status).is_some(),
                "{method} {uri} answered {status}, which its operation does not document: {}",
                r.text
            );
            if r.status.as_u16() == 404 {
                assert!(!r.text.contains("no such route"), "{method} {uri} is documented but not routed");
            }
            if r.status.as_u16() >= 400 {
                conforms(&doc, &json!({"$ref": "#/components/schemas/Problem"}), &r.json(), &format!("{method} {uri}"));
            }
        }
        // An unknown query parameter is refused (or ignored) with a documented status.
        let body = op.get("requestBody").map(|_| b"{}".to_vec());
        let r = app.send(method.clone(), &format!("{uri}?bogus=1"), key, &[], body).await;
        let status = r.status.as_str().to_string();
        assert!(op["responses"].get(&status).is_some(), "{method} {uri}?bogus=1 answered undocumented {status}");
        // Without a key, every authenticated operation answers the documented 401.
        if key.is_some() {
            let r = app.send(method.clone(), &uri, None, &[], None).await;
            r.assert_problem(401, "unauthorized");
        }
    }
}

/// The success answers of the record operations, on a real record, are the documented ones.
#[tokio::test]
async fn record_lifecycle_answers_are_documented() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    let created = app.post("/v1/products", &app.admin, &json!({"sku": "S-1", "name": "Mug"})).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    let item = format!("/v1/products/{id}");
    let etag = created.header("etag").unwrap().to_string();
    let steps: Vec<(&str, &str, common::TestResponse)> = vec![
        ("/v1/products", "post", created),
        ("/v1/products", "get", app.get("/v1/products?count=true&sort=-sku", &app.admin).await),
        ("/v1/products/{id}", "get", app.get(&item, &app.admin).await),
        (
            "/v1/products/{id}",
            "get",
            app.send(Method::GET, &item, Some(&app.admin), &[("if-none-match", &etag)], None).await,
        ),
        ("/v1/products/{id}", "patch", app.patch(&item, &app.admin, &json!({"price_cents": 5})).await),
        (
            "/v1/products/{id}",
            "patch",
            app.send(Method::PATCH, &item, Some(&app.admin), &[("if-match", "\"v1\"")], Some(b"{}".to_vec())).await,
        ),
        ("/v1/products/{id}", "delete", app.delete(&format!("{item}?dry_run=true"), &app.admin).await),
        ("/v1/products/{id}", "delete", app.delete(&format!("{item}?reason=test"), &app.admin).await),
        ("/v1/products/{id}", "get", app.get(&format!("{item}?include=deleted"), &app.admin).await),
        ("/v1/products/{id}:restore", "post", app.post_empty(&format!("{item}:restore"), &app.admin).await),
        ("/v1/contracts", "post", app.post("/v1/contracts", &app.admin, &json!({"title": "T"})).await),
    ];
    let expected = ["201", "200", "200", "304", "200", "412", "200", "204", "200", "200", "201"];
    check_documented(&doc, steps, &expected);

    // Holds, purge and erasure.
    let hold = app.post(&format!("{item}:hold"), &app.admin, &json!({"case": "C-1", "reason": "litigation"})).await;
    let hold_id = hold.json()["hold_id"].as_str().unwrap_or_default().to_string();
    let other = app.create("products", &app.admin, &json!({"sku": "S-2", "name": "Cup"})).await;
    let other = format!("/v1/products/{}", other["id"].as_str().unwrap());
    let steps: Vec<(&str, &str, common::TestResponse)> = vec![
        ("/v1/products/{id}:hold", "post", hold),
        (
            "/v1/products/{id}:release",
            "post",
            app.post_empty(&format!("{item}:release?hold_id={hold_id}&reason=settled"), &app.admin).await,
        ),
        ("/v1/products/{id}", "delete", app.delete(&item, &app.admin).await),
        ("/v1/trash", "get", app.get("/v1/trash?collection=products", &app.admin).await),
        ("/v1/purge/preview", "get", app.get("/v1/purge/preview", &app.admin).await),
        ("/v1/products/{id}:purge", "post", app.post_empty(&format!("{item}:purge?reason=done"), &app.admin).await),
        ("/v1/products/{id}:erase", "post", app.post_empty(&format!("{other}:erase?reason=gdpr"), &app.admin).await),
        ("/v1/audit", "get", app.get("/v1/audit?limit=5", &app.admin).await),
        ("/v1/events", "get", app.get("/v1/events?limit=5", &app.admin).await),
        ("/v1/audit/verify", "get", app.get("/v1/audit/verify", &app.admin).await),
        ("/v1/audit/verify", "post", app.post_empty("/v1/audit/verify", &app.admin).await),
        ("/v1/audit/verify", "get", app.get("/v1/audit/verify", &app.admin).await),
    ];
    check_documented(
        &doc,
        steps,
        &["201", "200", "204", "200", "200", "204", "200", "200", "200", "200", "200", "200"],
    );

    // Archive (§17): both actions, the read-only refusal, the lists that ask for archived.
    let kept = app.create("products", &app.admin, &json!({"sku": "S-3", "name": "Jug"})).await;
    let kept = format!("/v1/products/{}", kept["id"].as_str().unwrap());
    let steps: Vec<(&str, &str, common::TestResponse)> = vec![
        (
            "/v1/products/{id}:archive",
            "post",
            app.post(&format!("{kept}:archive"), &app.admin, &json!({"reason": "discontinued"})).await,
        ),
        ("/v1/products/{id}:archive", "post", app.post(&format!("{kept}:archive"), &app.admin, &json!({"x": 1})).await),
        ("/v1/products/{id}", "patch", app.patch(&kept, &app.admin, &json!({"name": "Jar"})).await),
        ("/v1/products", "get", app.get("/v1/products?filter[archived]=true&count=true", &app.admin).await),
        ("/v1/products", "get", app.get("/v1/products?include=archived,deleted", &app.admin).await),
        ("/v1/products/{id}:unarchive", "post", app.post_empty(&format!("{kept}:unarchive"), &app.admin).await),
        (
            "/v1/products/{id}:unarchive",
            "post",
            app.send(Method::POST, &format!("{kept}:unarchive"), Some(&app.admin), &[("if-match", "\"v1\"")], None)
                .await,
        ),
    ];
    check_documented(&doc, steps, &["200", "422", "409", "200", "200", "200", "200"]);

    // History (§14): versions, one version, as_of reads and revert, answers and refusals.
    let now = app.get(&kept, &app.admin).await.json()["updated_at"].as_str().unwrap().replace(':', "%3A");
    let steps: Vec<(&str, &str, common::TestResponse)> = vec![
        ("/v1/products/{id}/versions", "get", app.get(&format!("{kept}/versions?limit=2"), &app.admin).await),
        ("/v1/products/{id}/versions", "get", app.get(&format!("{kept}/versions?limit=501"), &app.admin).await),
        ("/v1/products/{id}/versions/{version}", "get", app.get(&format!("{kept}/versions/1"), &app.admin).await),
        ("/v1/products/{id}/versions/{version}", "get", app.get(&format!("{kept}/versions/9"), &app.admin).await),
        ("/v1/products/{id}", "get", app.get(&format!("{kept}?as_of={now}"), &app.admin).await),
        ("/v1/products/{id}", "get", app.get(&format!("{kept}?as_of=yesterday"), &app.admin).await),
        ("/v1/products", "get", app.get(&format!("/v1/products?as_of={now}&count=true"), &app.admin).await),
        ("/v1/products/{id}:revert", "post", app.post_empty(&format!("{kept}:revert?version=1"), &app.admin).await),
        ("/v1/products/{id}:revert", "post", app.post_empty(&format!("{kept}:revert?version=99"), &app.admin).await),
        ("/v1/products/{id}:revert", "post", app.post_empty(&format!("{kept}:revert?version=x"), &app.admin).await),
    ];
    check_documented(&doc, steps, &["200", "400", "200", "404", "200", "400", "200", "200", "422", "400"]);
}

fn check_documented(doc: &Value, steps: Vec<(&str, &str, common::TestResponse)>, expected: &[&str]) {
    assert_eq!(steps.len(), expected.len());
    for ((path, method, r), want) in steps.into_iter().zip(expected) {
        let want = *want;
        assert_eq!(r.status.as_str(), want, "{method} {path}: {}", r.text);
        let documented = &operation(doc, path, method)["responses"][want];
        assert!(documented.is_object(), "{method} {path}: {want} is not documented");
        if let Some(schema) = documented["content"]["application/json"].get("schema") {
            conforms(doc, schema, &r.json(), &format!("{method} {path} {want}"));
        }
        for (name, _) in documented["headers"].as_object().unwrap() {
            if ["Idempotent-Replayed"].contains(&name.as_str()) {
                continue; // only on replays
            }
            assert!(r.header(name).is_some(), "{method} {path} {want}: documented header {name} is missing");
        }
    }
}

/// The served document is the one the library builds, and stable between calls.
#[tokio::test]
async fn served_document_matches_the_builder() {
    let app = TestApp::new().await;
    let served = fetch(&app).await;
    assert_eq!(served, tombstone_server::openapi::document(&app.config.schema));
    assert_eq!(served, fetch(&app).await);
    let config = tombstone_domain::config::Config::parse(TEST_SCHEMA, app.dir.path()).unwrap();
    assert_eq!(served, tombstone_server::openapi::document(&config.schema));
}

/// A small structural check of a JSON value against a schema of the document: `$ref`,
/// `type` (single or list), `required`, `properties`, `items`, `enum`, `additionalProperties`
/// and `oneOf` with a discriminator. Enough to catch a document drifting from the answers.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let property = schema["discriminator"]["propertyName"].as_str().expect("oneOf has a discriminator");
        let tag = value[property].as_str().unwrap_or_else(|| panic!("{at}: no {property}"));
        let target = schema["discriminator"]["mapping"][tag].as_str().unwrap_or_else(|| panic!("{at}: {tag}?"));
        assert!(options.iter().any(|o| o["$ref"] == target), "{at}: mapping outside oneOf");
        return conforms(doc, &json!({"$ref": target}), value, at);
    }
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return, // any value
    };
    assert!(
        allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number")),
        "{at}: {actual} where the document says {allowed:?}: {value}"
    );
    if let Some(values) = schema["enum"].as_array() {
        assert!(values.contains(value), "{at}: {value} is not one of {values:?}");
    }
    match value {
        Value::Object(map) => {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                assert!(map.contains_key(name), "{at}: required member {name} is missing: {value}");
            }
            for (name, member) in map {
                match schema["properties"].get(name) {
                    Some(sub) => conforms(doc, sub, member, &format!("{at}.{name}")),
                    None => match &schema["additionalProperties"] {
                        Value::Bool(false) => panic!("{at}: undocumented member {name}"),
                        Value::Object(_) => {
                            conforms(doc, &schema["additionalProperties"], member, &format!("{at}.{name}"))
                        }
                        // Open objects: an answer may carry members the document does not name yet.
                        _ => assert!(
                            schema["properties"].as_object().is_none_or(serde_json::Map::is_empty),
                            "{at}: member {name} is not documented"
                        ),
                    },
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

#[test]
#[should_panic(expected = "string where the document says")]
fn the_conformance_check_catches_a_wrong_type() {
    let doc = json!({"components": {"schemas": {"X": {"type": "object", "properties": {"n": {"type": "integer"}}}}}});
    conforms(&doc, &json!({"$ref": "#/components/schemas/X"}), &json!({"n": "1"}), "X");
}

#[test]
#[should_panic(expected = "is not documented")]
fn the_conformance_check_catches_an_undocumented_member() {
    let doc = json!({"components": {"schemas": {"X": {"type": "object", "properties": {"n": {"type": "integer"}}}}}});
    conforms(&doc, &json!({"$ref": "#/components/schemas/X"}), &json!({"n": 1, "m": 2}), "X");
}

/// The pattern a document gives one parameter of an operation.
fn pattern(doc: &Value, path: &str, method: &str, name: &str) -> regex::Regex {
    let params = operation(doc, path, method)["parameters"].as_array().expect("parameters");
    let param = params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{method} {path}: no {name}"));
    let text = param["schema"]["pattern"].as_str().unwrap_or_else(|| panic!("{name}: no pattern"));
    regex::Regex::new(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test]
async fn documented_patterns_accept_what_the_server_accepts_and_no_more() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    let get = |path: String, headers: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            app.send(Method::GET, &path, Some(&app.admin), &headers, None).await.status.as_u16()
        }
    };

    let types = pattern(&doc, "/v1/events", "get", "type");
    for (value, accepted) in [
        ("record.created", true),
        ("record.deleted,deletion.completed", true),
        (" record.purged , ,record.erased", true),
        ("", true),
        ("record.nope", false),
        ("recordXcreated", false),
        ("record.created;record.deleted", false),
    ] {
        assert_eq!(types.is_match(value), accepted, "pattern on {value:?}");
        let status = get(format!("/v1/events?type={}", value.replace(' ', "%20")), vec![]).await;
        assert_eq!(status == 200, accepted, "server on {value:?}: {status}");
    }

    let last_event_id = pattern(&doc, "/v1/events/stream", "get", "Last-Event-ID");
    for (value, accepted) in [("0", true), ("123456789", true), ("-1", false), ("x", false), ("1.5", false)] {
        assert_eq!(last_event_id.is_match(value), accepted, "pattern on {value:?}");
        if !accepted {
            // (An accepted one opens an endless stream; the refusals answer at once.)
            let status = get("/v1/events/stream".into(), vec![("last-event-id", value.into())]).await;
            assert_eq!(status, 400, "server on {value:?}");
        }
    }

    let idempotency_key = pattern(&doc, "/v1/products", "post", "Idempotency-Key");
    let too_long = "k".repeat(256);
    for (value, accepted) in
        [("k1", true), ("a b-c_d.e", true), ("k".repeat(255).as_str(), true), (too_long.as_str(), false)]
    {
        assert_eq!(idempotency_key.is_match(value), accepted, "pattern on {} chars", value.len());
        let body = json!({"sku": format!("IK-{}", value.len()), "name": "key check"}).to_string().into_bytes();
        let r =
            app.send(Method::POST, "/v1/products", Some(&app.admin), &[("idempotency-key", value)], Some(body)).await;
        assert_eq!(r.status.as_u16() == 201, accepted, "server on {} chars: {}", value.len(), r.text);
    }
}

/// A client generated from the document sends `cursor=` before it has a cursor: the
/// document allows it on every list, so every list reads it as the first page.
#[tokio::test]
async fn an_empty_cursor_is_the_first_page_of_every_list() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    app.create("products", &app.admin, &json!({"sku": "C-1", "name": "Mug"})).await;
    let mut lists = 0;
    for (path, method, op) in operations(&doc) {
        let Some(cursor) = param(&op, "cursor") else { continue };
        // Key management is documented with its own rules; a deletion operation pages its
        // records inside one object, not as a list answer.
        if method != "get" || path.starts_with("/v1/keys") || path.contains('{') {
            continue;
        }
        if let Some(p) = cursor["schema"]["pattern"].as_str() {
            assert!(regex::Regex::new(p).unwrap().is_match(""), "{path}: the documented cursor refuses \"\"");
        }
        let first = app.get(&path, &app.admin).await;
        let empty = app.get(&format!("{path}?cursor="), &app.admin).await;
        empty.assert_status(200);
        assert_eq!(empty.json()["items"], first.json()["items"], "{path}");
        lists += 1;
    }
    // Seven collections, trash, audit, events and webhook deliveries.
    assert!(lists >= 9, "only {lists} lists take a cursor");
}

/// `GET /v1/events` documents `after` and `cursor` side by side: given both, the server
/// answers (the cursor wins, as `Last-Event-ID` wins over `after` on the stream).
#[tokio::test]
async fn events_take_after_and_cursor_together_and_the_cursor_wins() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    let op = operation(&doc, "/v1/events", "get");
    assert!(param(op, "after").is_some() && param(op, "cursor").is_some());
    for i in 0..4 {
        app.create("products", &app.admin, &json!({"sku": format!("E-{i}"), "name": "Mug"})).await;
    }
    let page = app.get("/v1/events?limit=2", &app.admin).await;
    page.assert_status(200);
    let cursor = page.json()["next_cursor"].as_str().expect("a next page").to_string();
    let next = app.get(&format!("/v1/events?limit=2&cursor={cursor}"), &app.admin).await.json();
    for after in ["0", "1", "999"] {
        let both = app.get(&format!("/v1/events?limit=2&after={after}&cursor={cursor}"), &app.admin).await;
        both.assert_status(200);
        assert_eq!(both.json(), next, "after={after}");
    }
    // Each is still checked.
    app.get(&format!("/v1/events?after=x&cursor={cursor}"), &app.admin).await.assert_problem(400, "invalid-parameter");
    app.get("/v1/events?after=1&cursor=x", &app.admin).await.assert_problem(400, "invalid-parameter");
}

/// The documented cursor patterns accept the cursors the server issues, and the audit
/// cursor (a position, any integer) is accepted whatever integer it is.
#[tokio::test]
async fn documented_cursor_patterns_fit_the_issued_cursors() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    for i in 0..3 {
        let r = app.create("products", &app.admin, &json!({"sku": format!("P-{i}"), "name": "Mug"})).await;
        app.delete(&format!("/v1/products/{}", r["id"].as_str().unwrap()), &app.admin).await.assert_status(204);
    }
    for (path, list) in [
        ("/v1/products", "/v1/products?limit=1&sort=-sku&include=deleted"),
        ("/v1/trash", "/v1/trash?limit=1"),
        ("/v1/audit", "/v1/audit?limit=1"),
    ] {
        let issued = app.get(list, &app.admin).await.json()["next_cursor"].as_str().expect("a next page").to_string();
        assert!(pattern(&doc, path, "get", "cursor").is_match(&issued), "{path}: {issued:?} is not documented");
    }
    let audit = pattern(&doc, "/v1/audit", "get", "cursor");
    for (value, accepted) in [("0", true), ("-3", true), ("123456789012345678", true), ("x", false), ("1.5", false)] {
        assert_eq!(audit.is_match(value), accepted, "pattern on {value:?}");
        let status = app.get(&format!("/v1/audit?cursor={value}"), &app.admin).await.status.as_u16();
        assert_eq!(status == 200, accepted, "server on {value:?}: {status}");
    }
}

/// DELETE of a held record in a hard-delete collection is a 409 `legal-hold`: the document
/// says so for that collection and for every collection whose cascade can reach one.
#[tokio::test]
async fn delete_documents_the_legal_hold_conflict() {
    let schema = format!(
        "{TEST_SCHEMA}\n[collections.vaults.fields]\nname = {{ type = \"string\" }}\n\n\
         [collections.keys_of_vault]\ndelete = \"hard\"\n\n[collections.keys_of_vault.fields]\n\
         vault_id = {{ type = \"ref\", collection = \"vaults\", on_delete = \"cascade\" }}\n"
    );
    let app = TestApp::with_schema(&schema).await;
    let doc = fetch(&app).await;
    let secret = app.create("secrets", &app.admin, &json!({"value": "s"})).await;
    let item = format!("/v1/secrets/{}", secret["id"].as_str().unwrap());
    app.post(&format!("{item}:hold"), &app.admin, &json!({"case": "C", "reason": "r"})).await.assert_status(201);
    let r = app.delete(&item, &app.admin).await;
    r.assert_problem(409, "legal-hold");
    check_documented(&doc, vec![("/v1/secrets/{id}", "delete", r)], &["409"]);

    let vault = app.create("vaults", &app.admin, &json!({"name": "v"})).await;
    let vault_id = vault["id"].as_str().unwrap();
    let key = app.create("keys_of_vault", &app.admin, &json!({"vault_id": vault_id})).await;
    let key_item = format!("/v1/keys_of_vault/{}", key["id"].as_str().unwrap());
    app.post(&format!("{key_item}:hold"), &app.admin, &json!({"case": "C", "reason": "r"})).await.assert_status(201);
    let r = app.delete(&format!("/v1/vaults/{vault_id}"), &app.admin).await;
    r.assert_problem(409, "legal-hold");
    check_documented(&doc, vec![("/v1/vaults/{id}", "delete", r)], &["409"]);
    // A collection with no hard-delete collection in reach promises no such conflict.
    assert!(operation(&doc, "/v1/customers/{id}", "delete")["responses"].get("409").is_none());
}

/// `filter[price_cents]` is documented as an integer: `null` is not one, and read as a JSON
/// null it matched no row (a silently empty list). It is a 400 like any other non-integer.
#[tokio::test]
async fn a_null_filter_on_a_typed_field_is_refused() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    let list = operation(&doc, "/v1/products", "get");
    assert_eq!(param(list, "filter[price_cents]").expect("documented")["schema"]["type"], "integer");
    app.create("products", &app.admin, &json!({"sku": "N-1", "name": "Mug"})).await;
    for filter in ["filter[price_cents]=null", "filter[rating]=null", "filter[active]=null"] {
        app.get(&format!("/v1/products?{filter}"), &app.admin).await.assert_problem(400, "invalid-parameter");
    }
    app.get("/v1/products?filter[price_cents]=3", &app.admin).await.assert_status(200);
}

/// `NewKey.tenant` allows exactly what `POST /v1/keys` takes: null or the caller's own
/// tenant name; an empty or malformed name is outside the document and refused with 422.
#[tokio::test]
async fn the_documented_key_tenant_is_what_the_server_takes() {
    let app = TestApp::new().await;
    let doc = fetch(&app).await;
    let tenant = &schema(&doc, "NewKey")["properties"]["tenant"];
    assert_eq!(tenant["type"], json!(["string", "null"]));
    let pattern = regex::Regex::new(tenant["pattern"].as_str().unwrap()).unwrap();
    assert!(!pattern.is_match(""));
    assert!(!pattern.is_match("a/b"));

    let own = app.get("/v1/whoami", &app.admin).await.json()["tenant"].as_str().unwrap().to_string();
    assert!(pattern.is_match(&own));
    for body in [json!({"tenant": null, "scopes": ["read"]}), json!({"tenant": own, "scopes": ["read"]})] {
        app.post("/v1/keys", &app.admin, &body).await.assert_status(201);
    }
    for bad in ["", "a/b"] {
        app.post("/v1/keys", &app.admin, &json!({"tenant": bad, "scopes": ["read"]}))
            .await
            .assert_problem(422, "validation");
    }
}

/// File fields (§15): their three endpoints per field, their answers, the metadata in the
/// record schema (read-only: a body takes only null), and a real upload's answer conforms.
#[tokio::test]
async fn file_fields_are_documented_and_answers_conform() {
    let app = TestApp::with_schema(
        "[collections.invoices.fields]\nnumber = { type = \"string\" }\n\
         pdf = { type = \"file\", max_bytes = 2000, content_types = [\"application/pdf\"] }\n",
    )
    .await;
    let doc = fetch(&app).await;
    let path = "/v1/invoices/{id}/files/pdf";
    let put = operation(&doc, path, "put");
    assert!(put["requestBody"]["content"]["application/pdf"].is_object(), "{put}");
    for status in ["404", "409", "412", "413", "415"] {
        assert!(is_problem(&put["responses"][status]), "PUT {status}: {put}");
    }
    let get = operation(&doc, path, "get");
    assert!(get["responses"]["206"].is_object() && is_problem(&get["responses"]["416"]), "{get}");
    assert!(param(get, "Range").is_some() && param(get, "include").is_some(), "{get}");
    assert!(is_problem(&operation(&doc, path, "delete")["responses"]["404"]));
    assert!(doc["paths"].get("/v1/invoices/{id}/files/number").is_none(), "only file fields have file paths");
    let pdf = &schema(&doc, "Invoices")["properties"]["pdf"];
    assert_eq!(pdf["required"], json!(["content_type", "size", "sha256", "uploaded_at"]), "{pdf}");
    assert_eq!(schema(&doc, "NewInvoices")["properties"]["pdf"]["type"], "null");
    let problems = schema(&doc, "Problem")["properties"]["type"]["description"].as_str().unwrap().to_string();
    for slug in ["unsupported-media-type", "range-not-satisfiable"] {
        assert!(problems.contains(slug), "{problems}");
    }

    let id = app.create("invoices", &app.admin, &json!({"number": "F-1"})).await["id"].as_str().unwrap().to_string();
    let uri = format!("/v1/invoices/{id}/files/pdf");
    let r = app.send(Method::PUT, &uri, Some(&app.admin), &[("content-type", "application/pdf")], None).await;
    // An empty body is a file too (0 bytes).
    r.assert_status(200);
    let schema_of_put = &put["responses"]["200"]["content"]["application/json"]["schema"];
    conforms(&doc, schema_of_put, &r.json(), "PUT 200");
    let wrong = app.send(Method::PUT, &uri, Some(&app.admin), &[("content-type", "text/plain")], None).await;
    wrong.assert_problem(415, "unsupported-media-type");
}

#[tokio::test]
async fn q_is_documented_where_a_collection_has_search_fields_with_its_503() {
    let app = TestApp::with_schema(
        r#"
[collections.notes.fields]
title = { type = "string", search = true }
[collections.tags.fields]
label = { type = "string" }
"#,
    )
    .await;
    let doc = fetch(&app).await;
    let notes = operation(&doc, "/v1/notes", "get");
    let q = &param(notes, "q").expect("q on a searchable collection")["schema"];
    assert_eq!(
        (q["minLength"].as_u64(), q["maxLength"].as_u64(), q["pattern"].as_str()),
        (Some(1), Some(500), Some(r"\S"))
    );
    let filling =
        |op: &Value| op["responses"]["503"]["description"].as_str().unwrap_or_default().contains("search index");
    assert!(filling(notes), "the index may be being filled: {}", notes["responses"]["503"]);
    let tags = operation(&doc, "/v1/tags", "get");
    assert!(param(tags, "q").is_none(), "no q where nothing is searchable (it answers 400)");
    assert!(!filling(tags));
    // What the document allows is accepted, and what it rules out is refused.
    app.index().await;
    app.get("/v1/notes?q=anything", &app.admin).await.assert_status(200);
    app.get("/v1/notes?q=%20%20", &app.admin).await.assert_problem(400, "invalid-parameter");
    app.get("/v1/tags?q=anything", &app.admin).await.assert_problem(400, "invalid-parameter");
}
