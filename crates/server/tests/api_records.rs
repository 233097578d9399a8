//! The record lifecycle through the HTTP API: every success status and header of create,
//! read, list, patch, delete (soft, hard, dry run), restore and idempotent create.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use axum::http::Method;
use common::{TestApp, TestResponse};
use serde_json::{Value, json};
use tombstone_domain::time::Timestamp;
use tombstone_server::keys::key_id_of;

const DAY: Duration = Duration::from_secs(86_400);

/// The system fields every representation carries, active or deleted.
const SYSTEM_FIELDS: [&str; 12] = [
    "id",
    "collection",
    "version",
    "created_at",
    "updated_at",
    "deleted",
    "deleted_at",
    "deleted_by",
    "delete_reason",
    "deletion_id",
    "purge_at",
    "legal_hold",
];

fn product(sku: &str) -> Value {
    json!({"sku": sku, "name": format!("Product {sku}")})
}

fn key_id(secret: &str) -> String {
    key_id_of(secret).expect("a well-formed secret").to_string()
}

fn ts(text: &Value) -> Timestamp {
    Timestamp::parse_rfc3339(text.as_str().unwrap_or_else(|| panic!("not a timestamp: {text}")))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Sends a request with headers and an optional JSON body.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> TestResponse {
    app.send(method, path, Some(key), headers, body.map(|b| b.to_string().into_bytes())).await
}

/// GET that must answer 200; the body.
async fn get_ok(app: &TestApp, path: &str, key: &str) -> Value {
    let r = app.get(path, key).await;
    r.assert_status(200);
    r.json()
}

/// The record as `include=deleted` shows it.
async fn get_any(app: &TestApp, collection: &str, id: &str) -> Value {
    get_ok(app, &format!("/v1/{collection}/{id}?include=deleted"), &app.admin).await
}

fn ids_of(items: &[Value]) -> Vec<String> {
    items.iter().map(|r| r["id"].as_str().expect("id").to_string()).collect()
}

/// Follows `next_cursor` from `base` to the end; every item of every page, in order.
async fn collect_pages(app: &TestApp, base: &str, key: &str, limit: usize) -> Vec<Value> {
    collect_pages_from(app, base, key, limit, None).await
}

/// Like [`collect_pages`], starting at a cursor.
async fn collect_pages_from(app: &TestApp, base: &str, key: &str, limit: usize, start: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = start.map(str::to_string);
    for _ in 0..1000 {
        let sep = if base.contains('?') { '&' } else { '?' };
        let path = match &cursor {
            Some(c) => format!("{base}{sep}cursor={c}"),
            None => base.to_string(),
        };
        let body = get_ok(app, &path, key).await;
        let page = body["items"].as_array().expect("items");
        assert!(page.len() <= limit, "page larger than limit {limit}: {}", page.len());
        items.extend(page.iter().cloned());
        match &body["next_cursor"] {
            Value::String(c) => cursor = Some(c.clone()),
            Value::Null => return items,
            other => panic!("next_cursor must be a string or null, got {other}"),
        }
    }
    panic!("more than 1000 pages from {base}");
}

async fn count(app: &TestApp, query: &str) -> u64 {
    let body = get_ok(app, &format!("/v1/products?count=true&{query}"), &app.admin).await;
    body["total"].as_u64().unwrap_or_else(|| panic!("no total in {body}"))
}

/// Every record of the collection, deleted or not (as the admin of t1 sees them).
async fn all_records(app: &TestApp, collection: &str) -> Vec<Value> {
    collect_pages(app, &format!("/v1/{collection}?include=deleted&limit=500"), &app.admin, 500).await
}

// ---------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_answers_201_with_location_etag_and_a_uuidv7_id() {
    let app = TestApp::new().await;
    let r = app.post("/v1/products", &app.admin, &product("A-1")).await;
    r.assert_status(201);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", r.headers);
    let body = r.json();
    let id = body["id"].as_str().expect("id");
    let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("id {id} is not a UUID: {e}"));
    assert_eq!(uuid.get_version_num(), 7, "server ids are UUIDv7: {id}");
    assert_eq!(r.header("location"), Some(format!("/v1/products/{id}").as_str()));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(body["version"], 1);
    assert_eq!(body["collection"], "products");
    assert_eq!(body["sku"], "A-1");
    assert_eq!(body["name"], "Product A-1");

    // The Location can be followed, and shows the same representation.
    let got = app.get(r.header("location").unwrap(), &app.admin).await;
    got.assert_status(200);
    assert_eq!(got.json(), body);

    // Ids sort in creation order.
    let second = app.create("products", &app.admin, &product("A-2")).await;
    assert!(second["id"].as_str().unwrap() > id, "{} !> {id}", second["id"]);
}

#[tokio::test]
async fn create_accepts_client_supplied_ids() {
    let app = TestApp::new().await;
    let longest = "x".repeat(128);
    for (i, id) in ["a", "ABC-def_123", "0", "_-_", longest.as_str()].into_iter().enumerate() {
        let mut body = product(&format!("S-{i}"));
        body["id"] = json!(id);
        let r = app.post("/v1/products", &app.admin, &body).await;
        r.assert_status(201);
        assert_eq!(r.json()["id"], id);
        assert_eq!(r.header("location"), Some(format!("/v1/products/{id}").as_str()));
        assert_eq!(get_ok(&app, &format!("/v1/products/{id}"), &app.admin).await["id"], id);
    }
}

#[tokio::test]
async fn create_with_a_used_id_conflicts_even_when_that_record_is_deleted() {
    let app = TestApp::new().await;
    let mut first = product("S-1");
    first["id"] = json!("my-id");
    app.create("products", &app.admin, &first).await;

    // Same id, different values: still the id is taken.
    let mut again = product("S-2");
    again["id"] = json!("my-id");
    let problem = app.post("/v1/products", &app.admin, &again).await.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], "my-id");
    assert_eq!(get_ok(&app, "/v1/products/my-id", &app.admin).await["sku"], "S-1");

    app.delete("/v1/products/my-id", &app.admin).await.assert_status(204);
    let problem = app.post("/v1/products", &app.admin, &again).await.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], "my-id");
    let stored = get_any(&app, "products", "my-id").await;
    assert_eq!(stored["deleted"], true);
    assert_eq!(stored["sku"], "S-1");
    assert_eq!(stored["version"], 2);
    assert_eq!(all_records(&app, "products").await.len(), 1);

    // The same id is free in another collection.
    let r = app.post("/v1/categories", &app.admin, &json!({"id": "my-id", "name": "Mugs"})).await;
    r.assert_status(201);
}

#[tokio::test]
async fn active_records_carry_every_system_field() {
    let app = TestApp::new().await;
    let created = app.create("products", &app.admin, &product("A-1")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let got = get_ok(&app, &format!("/v1/products/{id}"), &app.admin).await;
    let listed = get_ok(&app, "/v1/products", &app.admin).await["items"][0].clone();
    for record in [&created, &got, &listed] {
        let object = record.as_object().expect("object");
        for field in SYSTEM_FIELDS {
            assert!(object.contains_key(field), "{field} missing from {record}");
        }
        assert_eq!(record["id"], id.as_str());
        assert_eq!(record["collection"], "products");
        assert_eq!(record["version"], 1);
        assert_eq!(record["deleted"], false);
        for field in ["deleted_at", "deleted_by", "delete_reason", "deletion_id", "purge_at"] {
            assert!(record[field].is_null(), "{field} must be null on an active record: {record}");
        }
        assert_eq!(record["legal_hold"], false);
        // Declared fields are present too, null when absent.
        for field in ["sku", "name", "price_cents", "rating", "active", "launched_at", "meta", "category_id"] {
            assert!(object.contains_key(field), "declared field {field} missing from {record}");
        }
        assert!(record["price_cents"].is_null());
        // UTC RFC 3339.
        for field in ["created_at", "updated_at"] {
            let text = record[field].as_str().unwrap();
            assert!(text.ends_with('Z'), "{field} is not UTC: {text}");
            assert_eq!(ts(&record[field]).to_rfc3339(), text);
        }
        assert_eq!(record["created_at"], record["updated_at"]);
    }
    assert_eq!(created, got);
    assert_eq!(got, listed);
}

#[tokio::test]
async fn holds_appear_only_for_keys_with_read_deleted() {
    let app = TestApp::new().await;
    let created = app.create("products", &app.admin, &product("A-1")).await;
    let id = created["id"].as_str().unwrap();
    let admin_view = get_ok(&app, &format!("/v1/products/{id}"), &app.admin).await;
    assert_eq!(admin_view["holds"], json!([]), "{admin_view}");
    let reader = app.key("t1", "read").await;
    let reader_view = get_ok(&app, &format!("/v1/products/{id}"), &reader).await;
    assert!(reader_view.get("holds").is_none(), "{reader_view}");
    assert_eq!(reader_view["legal_hold"], false);

    // A cached record's rendering is kept per view and shared: reads alternating between
    // the two kinds of key each get their own, and a change (a hold) replaces both.
    let path = format!("/v1/products/{id}");
    for _ in 0..2 {
        assert_eq!(get_ok(&app, &path, &reader).await, reader_view);
        assert_eq!(get_ok(&app, &path, &app.admin).await, admin_view);
    }
    app.post(&format!("{path}:hold"), &app.admin, &json!({"case": "C-1", "reason": "audit"})).await.assert_status(201);
    for _ in 0..2 {
        let admin_held = app.get(&path, &app.admin).await;
        let etag = admin_held.header("etag").map(str::to_string);
        let admin_held = admin_held.json();
        assert_eq!(etag, Some(format!("\"v{}\"", admin_held["version"])));
        assert_eq!(
            (admin_held["legal_hold"].clone(), admin_held["holds"][0]["case"].clone()),
            (json!(true), json!("C-1"))
        );
        let reader_held = app.get(&path, &reader).await;
        assert_eq!(reader_held.header("etag").map(str::to_string), etag);
        let reader_held = reader_held.json();
        assert_eq!(reader_held["legal_hold"], true);
        assert!(reader_held.get("holds").is_none(), "{reader_held}");
    }
}

#[tokio::test]
async fn create_stores_every_field_type() {
    let app = TestApp::new().await;
    app.create("categories", &app.admin, &json!({"id": "cat-1", "name": "Mugs"})).await;
    let body = json!({
        "sku": "T-1",
        "name": "Typed",
        "price_cents": 1299,
        "rating": 4.5,
        "active": true,
        "launched_at": "2026-04-17T17:10:02.5+02:00",
        "meta": {"tags": ["a", "b"], "nested": {"x": 1}},
        "category_id": "cat-1",
    });
    let created = app.create("products", &app.admin, &body).await;
    let got = get_ok(&app, &format!("/v1/products/{}", created["id"].as_str().unwrap()), &app.admin).await;
    for record in [&created, &got] {
        assert_eq!(record["price_cents"], 1299);
        assert_eq!(record["rating"], 4.5);
        assert_eq!(record["active"], true);
        // Timestamps come back in UTC.
        assert_eq!(record["launched_at"], "2026-04-17T15:10:02.500000Z");
        assert_eq!(record["meta"], json!({"tags": ["a", "b"], "nested": {"x": 1}}));
        assert_eq!(record["category_id"], "cat-1");
    }
}

// ---------------------------------------------------------------------------------------
// Read
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn get_answers_etag_and_304_on_if_none_match() {
    let app = TestApp::new().await;
    let created = app.create("products", &app.admin, &product("A-1")).await;
    let path = format!("/v1/products/{}", created["id"].as_str().unwrap());

    let r = app.get(&path, &app.admin).await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v1\""));

    for matching in ["\"v1\"", "*", "\"v7\", \"v1\"", "W/\"v1\""] {
        let r = send(&app, Method::GET, &path, &app.admin, &[("if-none-match", matching)], None).await;
        assert_eq!(r.status.as_u16(), 304, "If-None-Match {matching}: {}", r.text);
        assert!(r.text.is_empty(), "a 304 has no body: {}", r.text);
        assert_eq!(r.header("etag"), Some("\"v1\""));
    }
    let r = send(&app, Method::GET, &path, &app.admin, &[("if-none-match", "\"v2\"")], None).await;
    r.assert_status(200);
    assert_eq!(r.json()["version"], 1);

    // After a change the old tag no longer matches.
    app.patch(&path, &app.admin, &json!({"name": "New"})).await.assert_status(200);
    let r = send(&app, Method::GET, &path, &app.admin, &[("if-none-match", "\"v1\"")], None).await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    assert_eq!(r.json()["name"], "New");
    let r = send(&app, Method::GET, &path, &app.admin, &[("if-none-match", "\"v2\"")], None).await;
    r.assert_status(304);
}

#[tokio::test]
async fn get_of_a_deleted_record_is_404_but_include_deleted_shows_it() {
    let app = TestApp::new().await;
    let created = app.create("products", &app.admin, &product("A-1")).await;
    let id = created["id"].as_str().unwrap();
    app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_status(204);
    app.get(&format!("/v1/products/{id}"), &app.admin).await.assert_problem(404, "not-found");
    let r = app.get(&format!("/v1/products/{id}?include=deleted"), &app.admin).await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    assert_eq!(r.json()["deleted"], true);
    // A never-existing id is a 404 too.
    app.get("/v1/products/nope", &app.admin).await.assert_problem(404, "not-found");
    app.get("/v1/products/nope?include=deleted", &app.admin).await.assert_problem(404, "not-found");
}

// ---------------------------------------------------------------------------------------
// List
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn list_pages_through_every_record_exactly_once() {
    let app = TestApp::new().await;
    let mut expected = Vec::new();
    for i in 0..23 {
        expected.push(app.create("products", &app.admin, &product(&format!("P-{i:02}"))).await["id"].clone());
    }
    let expected: Vec<String> = expected.iter().map(|v| v.as_str().unwrap().to_string()).collect();

    let first = get_ok(&app, "/v1/products?limit=5", &app.admin).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 5);
    assert!(first["next_cursor"].is_string(), "{first}");
    assert!(first.get("total").is_none(), "total only with count=true: {first}");

    for limit in [1, 5, 7, 23, 50] {
        let items = collect_pages(&app, &format!("/v1/products?limit={limit}"), &app.admin, limit).await;
        // Default order is by id, i.e. creation order.
        assert_eq!(ids_of(&items), expected, "limit={limit}");
    }
    // A total stays the total of the whole list on later pages.
    let second = get_ok(
        &app,
        &format!("/v1/products?limit=5&count=true&cursor={}", first["next_cursor"].as_str().unwrap()),
        &app.admin,
    )
    .await;
    assert_eq!(second["total"], 23);
    assert_eq!(ids_of(second["items"].as_array().unwrap()), expected[5..10]);

    // The default limit is 50: everything fits on one page.
    let all = get_ok(&app, "/v1/products", &app.admin).await;
    assert_eq!(ids_of(all["items"].as_array().unwrap()), expected);
    assert!(all["next_cursor"].is_null());
}

#[tokio::test]
async fn default_limit_is_50_and_500_is_accepted() {
    let app = TestApp::new().await;
    for i in 0..51 {
        app.create("categories", &app.admin, &json!({"name": format!("C{i}")})).await;
    }
    let page = get_ok(&app, "/v1/categories", &app.admin).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    assert!(page["next_cursor"].is_string());
    let page = get_ok(&app, "/v1/categories?limit=500", &app.admin).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 51);
    assert!(page["next_cursor"].is_null());
}

#[tokio::test]
async fn list_cursors_are_keyset_stable_while_records_are_created_and_deleted() {
    let app = TestApp::new().await;
    let mut ids = Vec::new();
    for i in 0..14 {
        ids.push(
            app.create("products", &app.admin, &product(&format!("P-{i}"))).await["id"].as_str().unwrap().to_string(),
        );
    }
    let page1 = get_ok(&app, "/v1/products?limit=4", &app.admin).await;
    let mut seen = ids_of(page1["items"].as_array().unwrap());
    assert_eq!(seen, ids[..4]);
    let mut cursor = page1["next_cursor"].as_str().unwrap().to_string();

    // Between pages: delete a seen record and an unseen one, create two new ones.
    app.delete(&format!("/v1/products/{}", ids[1]), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/products/{}", ids[6]), &app.admin).await.assert_status(204);
    let new_a = app.create("products", &app.admin, &product("N-A")).await["id"].as_str().unwrap().to_string();

    let page2 = get_ok(&app, &format!("/v1/products?limit=4&cursor={cursor}"), &app.admin).await;
    seen.extend(ids_of(page2["items"].as_array().unwrap()));
    cursor = page2["next_cursor"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/products/{}", ids[9]), &app.admin).await.assert_status(204);
    let new_b = app.create("products", &app.admin, &product("N-B")).await["id"].as_str().unwrap().to_string();
    let rest = collect_pages_from(&app, "/v1/products?limit=4", &app.admin, 4, Some(&cursor)).await;
    seen.extend(ids_of(&rest));

    assert!(rest.len() > 4, "the rest spans several pages: {}", rest.len());
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a record was listed twice: {seen:?}");
    let mut expected: Vec<String> =
        ids.iter().enumerate().filter(|(i, _)| ![6, 9].contains(i)).map(|(_, id)| id.clone()).collect();
    expected.push(new_a);
    expected.push(new_b);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn list_cursors_are_keyset_stable_under_a_field_sort() {
    let app = TestApp::new().await;
    let mut by_price = std::collections::BTreeMap::new();
    for price in [10, 20, 30, 40, 50, 60, 70, 80, 90, 100] {
        let mut body = product(&format!("P-{price}"));
        body["price_cents"] = json!(price);
        by_price.insert(price, app.create("products", &app.admin, &body).await["id"].as_str().unwrap().to_string());
    }
    let page1 = get_ok(&app, "/v1/products?sort=price_cents&limit=3", &app.admin).await;
    let prices: Vec<i64> =
        page1["items"].as_array().unwrap().iter().map(|r| r["price_cents"].as_i64().unwrap()).collect();
    assert_eq!(prices, [10, 20, 30]);
    let cursor = page1["next_cursor"].as_str().unwrap();

    // A record inserted before the cursor is not shown, one after it is; deletions of
    // unseen records drop out, deletions of seen ones shift nothing.
    for price in [15, 65] {
        let mut body = product(&format!("P-{price}"));
        body["price_cents"] = json!(price);
        app.create("products", &app.admin, &body).await;
    }
    app.delete(&format!("/v1/products/{}", by_price[&70]), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/products/{}", by_price[&20]), &app.admin).await.assert_status(204);
    let rest = collect_pages_from(&app, "/v1/products?sort=price_cents&limit=3", &app.admin, 3, Some(cursor)).await;
    let prices: Vec<i64> = rest.iter().map(|r| r["price_cents"].as_i64().unwrap()).collect();
    assert_eq!(prices, [40, 50, 60, 65, 80, 90, 100]);
}

/// Pages through `sort` with a small limit and returns the values of `field` in order.
async fn sorted_values(app: &TestApp, collection: &str, sort: &str, field: &str) -> (Vec<Value>, Vec<String>) {
    let items = collect_pages(app, &format!("/v1/{collection}?sort={sort}&limit=2"), &app.admin, 2).await;
    (items.iter().map(|r| r[field].clone()).collect(), ids_of(&items))
}

#[tokio::test]
async fn list_sorts_by_a_field_ascending_and_descending_across_pages() {
    let app = TestApp::new().await;
    let prices = [300, 100, 500, 100, 200, 400, 300];
    let mut created = Vec::new();
    for (i, price) in prices.iter().enumerate() {
        let mut body = product(&format!("P-{i}"));
        body["price_cents"] = json!(price);
        body["rating"] = json!(f64::from(u8::try_from(i).unwrap()) / 2.0);
        created.push(app.create("products", &app.admin, &body).await["id"].as_str().unwrap().to_string());
    }
    let all: BTreeSet<String> = created.iter().cloned().collect();

    let (asc, asc_ids) = sorted_values(&app, "products", "price_cents", "price_cents").await;
    let asc: Vec<i64> = asc.iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(asc, [100, 100, 200, 300, 300, 400, 500]);
    assert_eq!(asc_ids.iter().cloned().collect::<BTreeSet<_>>(), all);
    assert_eq!(asc_ids.len(), all.len());

    let (desc, desc_ids) = sorted_values(&app, "products", "-price_cents", "price_cents").await;
    let desc: Vec<i64> = desc.iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(desc, [500, 400, 300, 300, 200, 100, 100]);
    assert_eq!(desc_ids.len(), all.len());
    assert_eq!(desc_ids.iter().cloned().collect::<BTreeSet<_>>(), all);
    // Ties are broken consistently: the descending order is the ascending one reversed.
    assert_eq!(desc_ids, asc_ids.iter().rev().cloned().collect::<Vec<_>>());

    // Strings, numbers and system timestamps sort too.
    let (names, _) = sorted_values(&app, "products", "-sku", "sku").await;
    let names: Vec<&str> = names.iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names, ["P-6", "P-5", "P-4", "P-3", "P-2", "P-1", "P-0"]);
    let (ratings, _) = sorted_values(&app, "products", "rating", "rating").await;
    let ratings: Vec<f64> = ratings.iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(ratings, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
    // One per page, so that every cursor sits on a value (0.0, 1.0, ... are whole numbers).
    for (sort, expected) in
        [("rating", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]), ("-rating", [3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0])]
    {
        let items = collect_pages(&app, &format!("/v1/products?sort={sort}&limit=1"), &app.admin, 1).await;
        let got: Vec<f64> = items.iter().map(|r| r["rating"].as_f64().unwrap()).collect();
        assert_eq!(got, expected, "sort={sort}");
    }
    let (_, newest_first) = sorted_values(&app, "products", "-created_at", "created_at").await;
    assert_eq!(newest_first, created.iter().rev().cloned().collect::<Vec<_>>());
    let (_, by_id_desc) = sorted_values(&app, "products", "-id", "id").await;
    assert_eq!(by_id_desc, created.iter().rev().cloned().collect::<Vec<_>>());

    // updated_at follows the latest change.
    app.patch(&format!("/v1/products/{}", created[0]), &app.admin, &json!({"name": "touched"}))
        .await
        .assert_status(200);
    let (_, by_update) = sorted_values(&app, "products", "-updated_at", "updated_at").await;
    assert_eq!(by_update[0], created[0]);
}

#[tokio::test]
async fn list_sort_with_missing_values_still_lists_every_record_once() {
    let app = TestApp::new().await;
    let mut created = BTreeSet::new();
    for (i, price) in [Some(3), None, Some(1), None, Some(2), None].iter().enumerate() {
        let mut body = product(&format!("P-{i}"));
        if let Some(p) = price {
            body["price_cents"] = json!(p);
        }
        created.insert(app.create("products", &app.admin, &body).await["id"].as_str().unwrap().to_string());
    }
    for sort in ["price_cents", "-price_cents"] {
        let (values, ids) = sorted_values(&app, "products", sort, "price_cents").await;
        assert_eq!(ids.len(), 6, "sort={sort}: {ids:?}");
        assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), created, "sort={sort}");
        let present: Vec<i64> = values.iter().filter_map(Value::as_i64).collect();
        let expected: Vec<i64> = if sort.starts_with('-') { vec![3, 2, 1] } else { vec![1, 2, 3] };
        assert_eq!(present, expected, "sort={sort}");
    }
}

#[tokio::test]
async fn list_filters_by_field_equality() {
    let app = TestApp::new().await;
    for cat in ["cat-1", "cat-2"] {
        app.create("categories", &app.admin, &json!({"id": cat, "name": cat})).await;
    }
    let a = app
        .create(
            "products",
            &app.admin,
            &json!({"sku": "A", "name": "Alpha", "price_cents": 100, "active": true, "rating": 1.5,
                    "launched_at": "2026-01-01T00:00:00Z", "category_id": "cat-1"}),
        )
        .await;
    let b = app
        .create(
            "products",
            &app.admin,
            &json!({"sku": "B", "name": "Beta", "price_cents": 100, "active": false, "rating": 2.5,
                    "launched_at": "2026-01-02T00:00:00Z", "category_id": "cat-2"}),
        )
        .await;
    let c = app.create("products", &app.admin, &json!({"sku": "C", "name": "Alpha", "price_cents": 200})).await;
    let (a, b, c) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap(), c["id"].as_str().unwrap());

    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("filter[sku]=A", vec![a]),
        ("filter[sku]=a", vec![]),
        ("filter[name]=Alpha", vec![a, c]),
        ("filter[price_cents]=100", vec![a, b]),
        ("filter[price_cents]=100&filter[name]=Beta", vec![b]),
        ("filter[price_cents]=999", vec![]),
        ("filter[active]=true", vec![a]),
        ("filter[active]=false", vec![b]),
        ("filter[rating]=2.5", vec![b]),
        // Timestamps compare as instants, whatever the offset.
        ("filter[launched_at]=2026-01-01T01:00:00%2B01:00", vec![a]),
        ("filter[category_id]=cat-2", vec![b]),
        ("filter[name]=Alpha&count=true", vec![a, c]),
    ];
    for (query, expected) in cases {
        let body = get_ok(&app, &format!("/v1/products?{query}"), &app.admin).await;
        assert_eq!(ids_of(body["items"].as_array().unwrap()), expected, "{query}");
    }
    assert_eq!(count(&app, "filter[name]=Alpha").await, 2);

    // A deleted record drops out of filtered lists.
    app.delete(&format!("/v1/products/{a}"), &app.admin).await.assert_status(204);
    let body = get_ok(&app, "/v1/products?filter[name]=Alpha", &app.admin).await;
    assert_eq!(ids_of(body["items"].as_array().unwrap()), [c]);
}

#[tokio::test]
async fn list_filter_on_a_case_insensitive_field_ignores_case() {
    let app = TestApp::new().await;
    let alice = app.create("customers", &app.admin, &json!({"email": "Alice@Example.com", "name": "Alice"})).await;
    app.create("customers", &app.admin, &json!({"email": "bob@example.com"})).await;
    // The stored value keeps its case.
    assert_eq!(alice["email"], "Alice@Example.com");
    for value in ["alice@example.com", "ALICE@EXAMPLE.COM", "Alice@Example.com", "aLiCe@eXaMpLe.CoM"] {
        let body = get_ok(&app, &format!("/v1/customers?filter[email]={value}"), &app.admin).await;
        assert_eq!(ids_of(body["items"].as_array().unwrap()), [alice["id"].as_str().unwrap()], "{value}");
    }
    let body = get_ok(&app, "/v1/customers?filter[email]=carol@example.com", &app.admin).await;
    assert!(body["items"].as_array().unwrap().is_empty());
    // The name field is not case-insensitive.
    let body = get_ok(&app, "/v1/customers?filter[name]=alice", &app.admin).await;
    assert!(body["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn count_excludes_deleted_records_unless_asked_for() {
    let app = TestApp::new().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.create("products", &app.admin, &product(&format!("P-{i}"))).await["id"].as_str().unwrap().to_string(),
        );
    }
    assert_eq!(count(&app, "").await, 5);
    for id in &ids[..2] {
        app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_status(204);
    }
    assert_eq!(count(&app, "").await, 3);
    // The total counts the whole result, not the page.
    let body = get_ok(&app, "/v1/products?count=true&limit=1", &app.admin).await;
    assert_eq!(body["total"], 3);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(count(&app, "include=deleted").await, 5);
    assert_eq!(count(&app, "filter[deleted]=true").await, 2);
    assert_eq!(count(&app, "filter[sku]=P-0").await, 0, "P-0 is deleted");
    assert_eq!(count(&app, "filter[sku]=P-4").await, 1);
    // count=false is the same as no count.
    let body = get_ok(&app, "/v1/products?count=false", &app.admin).await;
    assert!(body.get("total").is_none(), "{body}");

    // Restoring puts it back in the count.
    app.post_empty(&format!("/v1/products/{}:restore", ids[0]), &app.admin).await.assert_status(200);
    assert_eq!(count(&app, "").await, 4);
}

#[tokio::test]
async fn include_deleted_and_filter_deleted_select_what_they_say() {
    let app = TestApp::new().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            app.create("products", &app.admin, &product(&format!("P-{i}"))).await["id"].as_str().unwrap().to_string(),
        );
    }
    app.delete(&format!("/v1/products/{}", ids[1]), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/products/{}", ids[3]), &app.admin).await.assert_status(204);

    let active = get_ok(&app, "/v1/products", &app.admin).await;
    assert_eq!(ids_of(active["items"].as_array().unwrap()), [ids[0].clone(), ids[2].clone()]);

    let all = collect_pages(&app, "/v1/products?include=deleted&limit=1", &app.admin, 1).await;
    assert_eq!(ids_of(&all), ids);
    let flags: Vec<bool> = all.iter().map(|r| r["deleted"].as_bool().unwrap()).collect();
    assert_eq!(flags, [false, true, false, true]);
    assert!(all[1]["deleted_at"].is_string() && all[0]["deleted_at"].is_null());

    let deleted = collect_pages(&app, "/v1/products?filter[deleted]=true&limit=1", &app.admin, 1).await;
    assert_eq!(ids_of(&deleted), [ids[1].clone(), ids[3].clone()]);
    assert!(deleted.iter().all(|r| r["deleted"] == true));

    let not_deleted = get_ok(&app, "/v1/products?filter[deleted]=false", &app.admin).await;
    assert_eq!(ids_of(not_deleted["items"].as_array().unwrap()), [ids[0].clone(), ids[2].clone()]);

    // Sorting by deletion time: newest deletion first, active records after.
    let by_deletion = collect_pages(&app, "/v1/products?include=deleted&sort=-deleted_at&limit=1", &app.admin, 1).await;
    let by_deletion = ids_of(&by_deletion);
    assert_eq!(by_deletion.len(), 4);
    assert_eq!(by_deletion[..2], [ids[3].clone(), ids[1].clone()]);
    assert_eq!(by_deletion.iter().collect::<HashSet<_>>(), ids.iter().collect::<HashSet<_>>());

    // Field filters combine with include=deleted.
    let one = get_ok(&app, "/v1/products?include=deleted&filter[sku]=P-1", &app.admin).await;
    assert_eq!(ids_of(one["items"].as_array().unwrap()), [ids[1].clone()]);
}

#[tokio::test]
async fn deleted_since_before_by_and_purge_before_filter_deleted_records() {
    let app = TestApp::new().await;
    let other = app.key("t1", "read,delete").await;
    let a = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let b = app.create("products", &app.admin, &product("B")).await["id"].as_str().unwrap().to_string();
    let c = app.create("products", &app.admin, &product("C")).await["id"].as_str().unwrap().to_string();
    let _active = app.create("products", &app.admin, &product("D")).await;

    app.delete(&format!("/v1/products/{a}"), &app.admin).await.assert_status(204);
    app.clock.advance(Duration::from_secs(3600));
    app.delete(&format!("/v1/products/{b}"), &other).await.assert_status(204);
    app.clock.advance(Duration::from_secs(3600));
    app.delete(&format!("/v1/products/{c}"), &app.admin).await.assert_status(204);

    let deleted_at = |r: &Value| ts(&r["deleted_at"]);
    let (ra, rb, rc) =
        (get_any(&app, "products", &a).await, get_any(&app, "products", &b).await, get_any(&app, "products", &c).await);
    let between_ab = Timestamp::from_micros(deleted_at(&ra).as_micros() + 1_800_000_000).to_rfc3339();
    let between_bc = Timestamp::from_micros(deleted_at(&rb).as_micros() + 1_800_000_000).to_rfc3339();

    let query = |q: String| {
        let app = &app;
        async move {
            let items = collect_pages(app, &format!("/v1/products?{q}&limit=500"), &app.admin, 500).await;
            ids_of(&items)
        }
    };
    assert_eq!(query(format!("filter[deleted_since]={between_ab}")).await, [b.clone(), c.clone()]);
    assert_eq!(query(format!("filter[deleted_since]={between_bc}")).await, [c.as_str()]);
    assert_eq!(query(format!("filter[deleted_before]={between_ab}")).await, [a.as_str()]);
    assert_eq!(query(format!("filter[deleted_before]={between_bc}")).await, [a.clone(), b.clone()]);
    assert_eq!(
        query(format!("filter[deleted_since]={between_ab}&filter[deleted_before]={between_bc}")).await,
        [b.as_str()]
    );
    // Bounds: since is inclusive of the exact deletion instant.
    let exact = rb["deleted_at"].as_str().unwrap();
    assert!(query(format!("filter[deleted_since]={exact}")).await.contains(&b));

    assert_eq!(query(format!("filter[deleted_by]={}", key_id(&other))).await, [b.as_str()]);
    assert_eq!(query(format!("filter[deleted_by]={}", key_id(&app.admin))).await, [a.clone(), c.clone()]);
    assert!(query("filter[deleted_by]=key_nobody".into()).await.is_empty());

    // purge_before: "expiring soon" = purge_at before the given instant (retention 7d).
    let purge_between_ab = Timestamp::from_micros(ts(&ra["purge_at"]).as_micros() + 1_800_000_000).to_rfc3339();
    assert_eq!(query(format!("filter[purge_before]={purge_between_ab}")).await, [a.as_str()]);
    let far = Timestamp::from_micros(ts(&rc["purge_at"]).as_micros() + 1).to_rfc3339();
    assert_eq!(query(format!("filter[purge_before]={far}")).await, [a.clone(), b.clone(), c.clone()]);
    assert!(query(format!("filter[purge_before]={}", ra["deleted_at"].as_str().unwrap())).await.is_empty());

    // The deleted filters never return active records, and count the same way.
    let body = get_ok(&app, &format!("/v1/products?count=true&filter[deleted_before]={between_bc}"), &app.admin).await;
    assert_eq!(body["total"], 2);
}

// ---------------------------------------------------------------------------------------
// Patch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn patch_is_a_json_merge_patch() {
    let app = TestApp::new().await;
    let created = app
        .create(
            "products",
            &app.admin,
            &json!({"sku": "A", "name": "Alpha", "price_cents": 100, "rating": 1.0,
                    "meta": {"a": 1, "b": {"c": 2, "e": 5}, "list": [1, 2]}}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/products/{id}");
    app.clock.advance(Duration::from_secs(5));

    let r = app
        .patch(
            &path,
            &app.admin,
            &json!({"price_cents": null, "name": "Beta", "meta": {"a": null, "b": {"d": 3, "e": null}, "list": [3]}}),
        )
        .await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    let patched = r.json();
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["name"], "Beta");
    assert!(patched["price_cents"].is_null(), "null removes: {patched}");
    assert_eq!(patched["sku"], "A", "untouched fields stay");
    assert_eq!(patched["rating"], 1.0);
    assert_eq!(patched["meta"], json!({"b": {"c": 2, "d": 3}, "list": [3]}));
    assert_eq!(patched["created_at"], created["created_at"]);
    assert!(ts(&patched["updated_at"]) > ts(&created["updated_at"]));
    assert_eq!(patched["deleted"], false);

    let got = app.get(&path, &app.admin).await;
    assert_eq!(got.header("etag"), Some("\"v2\""));
    assert_eq!(got.json(), patched);

    // Replacing a json value by a scalar, then removing it entirely.
    let patched = app.patch(&path, &app.admin, &json!({"meta": "plain"})).await;
    patched.assert_status(200);
    assert_eq!(patched.json()["meta"], "plain");
    let patched = app.patch(&path, &app.admin, &json!({"meta": null})).await;
    assert_eq!(patched.json()["meta"], Value::Null);
    assert_eq!(patched.json()["version"], 4);
    // A merge into an absent json value creates it.
    let patched = app.patch(&path, &app.admin, &json!({"meta": {"x": {"y": 1}}})).await;
    assert_eq!(patched.json()["meta"], json!({"x": {"y": 1}}));
}

#[tokio::test]
async fn patch_honours_if_match() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");
    let with = |tag: &'static str, name: &'static str| {
        let app = &app;
        let path = path.clone();
        async move { send(app, Method::PATCH, &path, &app.admin, &[("if-match", tag)], Some(&json!({"name": name}))).await }
    };
    let r = with("\"v2\"", "stale").await;
    let problem = r.assert_problem(412, "precondition-failed");
    assert!(problem["detail"].as_str().unwrap().contains("v1"), "{problem}");
    let current = get_ok(&app, &path, &app.admin).await;
    assert_eq!(current["version"], 1);
    assert_eq!(current["name"], "Product A");

    let r = with("\"v1\"", "fresh").await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    // The old tag is stale now.
    with("\"v1\"", "again").await.assert_problem(412, "precondition-failed");
    // A list containing the current tag matches; so does *.
    with("\"v9\", \"v2\"", "listed").await.assert_status(200);
    with("*", "any").await.assert_status(200);
    let current = get_ok(&app, &path, &app.admin).await;
    assert_eq!(current["version"], 4);
    assert_eq!(current["name"], "any");
}

#[tokio::test]
async fn patch_of_a_deleted_record_is_404_and_changes_nothing() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");
    app.delete(&path, &app.admin).await.assert_status(204);
    let before = get_any(&app, "products", &id).await;
    app.patch(&path, &app.admin, &json!({"name": "zombie"})).await.assert_problem(404, "not-found");
    send(&app, Method::PATCH, &path, &app.admin, &[("if-match", "\"v2\"")], Some(&json!({"name": "zombie"})))
        .await
        .assert_problem(404, "not-found");
    assert_eq!(get_any(&app, "products", &id).await, before);
    app.patch("/v1/products/never-existed", &app.admin, &json!({"name": "x"})).await.assert_problem(404, "not-found");
}

#[tokio::test]
async fn patch_into_an_active_unique_value_conflicts() {
    let app = TestApp::new().await;
    let a = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let b = app.create("products", &app.admin, &product("B")).await["id"].as_str().unwrap().to_string();
    let problem = app
        .patch(&format!("/v1/products/{b}"), &app.admin, &json!({"sku": "A"}))
        .await
        .assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], a.as_str());
    let current = get_ok(&app, &format!("/v1/products/{b}"), &app.admin).await;
    assert_eq!((current["sku"].as_str(), current["version"].as_i64()), (Some("B"), Some(1)));
    // Patching a record to its own value is no conflict.
    app.patch(&format!("/v1/products/{a}"), &app.admin, &json!({"sku": "A"})).await.assert_status(200);
    // Once A is deleted its value is free.
    app.delete(&format!("/v1/products/{a}"), &app.admin).await.assert_status(204);
    let r = app.patch(&format!("/v1/products/{b}"), &app.admin, &json!({"sku": "A"})).await;
    r.assert_status(200);
    assert_eq!(r.json()["sku"], "A");

    // Case-insensitive uniqueness on patch.
    let c1 =
        app.create("customers", &app.admin, &json!({"email": "one@x.com"})).await["id"].as_str().unwrap().to_string();
    let c2 =
        app.create("customers", &app.admin, &json!({"email": "two@x.com"})).await["id"].as_str().unwrap().to_string();
    let problem = app
        .patch(&format!("/v1/customers/{c2}"), &app.admin, &json!({"email": "ONE@X.COM"}))
        .await
        .assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], c1.as_str());
}

// ---------------------------------------------------------------------------------------
// require_if_match
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn contracts_require_if_match_on_patch_delete_and_restore_but_not_on_create() {
    let app = TestApp::new().await;
    let r = app.post("/v1/contracts", &app.admin, &json!({"title": "NDA"})).await;
    r.assert_status(201);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/contracts/{id}");

    app.patch(&path, &app.admin, &json!({"title": "changed"})).await.assert_problem(428, "precondition-required");
    app.delete(&path, &app.admin).await.assert_problem(428, "precondition-required");
    let current = get_ok(&app, &path, &app.admin).await;
    assert_eq!((current["version"].as_i64(), current["title"].as_str()), (Some(1), Some("NDA")));

    let r =
        send(&app, Method::PATCH, &path, &app.admin, &[("if-match", "\"v1\"")], Some(&json!({"title": "v2"}))).await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    send(&app, Method::PATCH, &path, &app.admin, &[("if-match", "\"v1\"")], Some(&json!({"title": "x"})))
        .await
        .assert_problem(412, "precondition-failed");

    let r = send(&app, Method::DELETE, &path, &app.admin, &[("if-match", "\"v2\"")], None).await;
    r.assert_status(204);
    assert!(r.header("deletion-id").is_some());
    app.get(&path, &app.admin).await.assert_problem(404, "not-found");

    app.post_empty(&format!("{path}:restore"), &app.admin).await.assert_problem(428, "precondition-required");
    assert_eq!(get_any(&app, "contracts", &id).await["deleted"], true);
    send(&app, Method::POST, &format!("{path}:restore"), &app.admin, &[("if-match", "\"v2\"")], None)
        .await
        .assert_problem(412, "precondition-failed");
    let r = send(&app, Method::POST, &format!("{path}:restore"), &app.admin, &[("if-match", "\"v3\"")], None).await;
    r.assert_status(200);
    assert_eq!(r.json()["version"], 4);
    assert_eq!(r.json()["deleted"], false);
    assert_eq!(r.header("etag"), Some("\"v4\""));
}

// ---------------------------------------------------------------------------------------
// Delete
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_is_a_soft_delete_with_a_deletion_id_and_the_audit_fields() {
    let app = TestApp::new().await;
    let deleter = app.key("t1", "read,delete,read_deleted").await;
    let created = app.create("products", &app.admin, &product("A")).await;
    let id = created["id"].as_str().unwrap();
    app.clock.advance(Duration::from_secs(60));

    let r = app.delete(&format!("/v1/products/{id}?reason=duplicate%20listing"), &deleter).await;
    r.assert_status(204);
    assert!(r.text.is_empty(), "204 has no body: {}", r.text);
    let deletion_id = r.header("deletion-id").expect("Deletion-Id header").to_string();
    assert!(deletion_id.starts_with("del_") && deletion_id.len() > 4, "{deletion_id}");

    let deleted = get_any(&app, "products", id).await;
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["version"], 2);
    assert_eq!(deleted["deleted_by"], key_id(&deleter));
    assert_eq!(deleted["delete_reason"], "duplicate listing");
    assert_eq!(deleted["deletion_id"], deletion_id);
    assert_eq!(deleted["legal_hold"], false);
    assert_eq!(deleted["sku"], "A", "values are kept while in the window");
    let deleted_at = ts(&deleted["deleted_at"]);
    assert!(deleted_at > ts(&created["created_at"]));
    assert_eq!(ts(&deleted["purge_at"]), deleted_at.saturating_add(7 * DAY), "{deleted}");
    assert!(deleted["purge_at"].as_str().unwrap().ends_with('Z'));

    // Gone from every active read.
    app.get(&format!("/v1/products/{id}"), &app.admin).await.assert_problem(404, "not-found");
    assert!(get_ok(&app, "/v1/products", &app.admin).await["items"].as_array().unwrap().is_empty());
    assert_eq!(count(&app, "").await, 0);

    // A second deletion of another record gets another deletion id; no reason → null.
    let other = app.create("products", &app.admin, &product("B")).await;
    let r = app.delete(&format!("/v1/products/{}", other["id"].as_str().unwrap()), &app.admin).await;
    r.assert_status(204);
    assert_ne!(r.header("deletion-id"), Some(deletion_id.as_str()));
    let other = get_any(&app, "products", other["id"].as_str().unwrap()).await;
    assert!(other["delete_reason"].is_null());
    assert_eq!(other["deleted_by"], key_id(&app.admin));
}

#[tokio::test]
async fn purge_at_follows_the_collection_retention() {
    let app = TestApp::new().await;
    let c = app.create("customers", &app.admin, &json!({"email": "a@x.com"})).await;
    let id = c["id"].as_str().unwrap();
    app.delete(&format!("/v1/customers/{id}"), &app.admin).await.assert_status(204);
    let deleted = get_any(&app, "customers", id).await;
    assert_eq!(ts(&deleted["purge_at"]), ts(&deleted["deleted_at"]).saturating_add(DAY));
}

#[tokio::test]
async fn deleting_twice_answers_204_and_changes_nothing() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");
    let first = app.delete(&format!("{path}?reason=first"), &app.admin).await;
    first.assert_status(204);
    let deletion_id = first.header("deletion-id").unwrap().to_string();
    let before = get_any(&app, "products", &id).await;

    app.clock.advance(Duration::from_secs(3600));
    let other = app.key("t1", "delete,read").await;
    for (key, path) in [(&app.admin, format!("{path}?reason=second")), (&other, path.clone())] {
        let again = app.delete(&path, key).await;
        again.assert_status(204);
        assert_eq!(again.header("deletion-id"), Some(deletion_id.as_str()));
    }
    // Whatever the If-Match: the requested state already holds.
    for tag in ["\"v1\"", "\"v2\"", "\"v99\"", "*"] {
        let r = send(&app, Method::DELETE, &path, &app.admin, &[("if-match", tag)], None).await;
        r.assert_status(204);
        assert_eq!(r.header("deletion-id"), Some(deletion_id.as_str()), "If-Match {tag}");
    }
    let after = get_any(&app, "products", &id).await;
    assert_eq!(after, before);
    assert_eq!(after["version"], 2);
    assert_eq!(after["delete_reason"], "first");
}

#[tokio::test]
async fn delete_with_a_stale_if_match_on_an_active_record_is_412() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");
    app.patch(&path, &app.admin, &json!({"name": "v2"})).await.assert_status(200);
    let r = send(&app, Method::DELETE, &path, &app.admin, &[("if-match", "\"v1\"")], None).await;
    r.assert_problem(412, "precondition-failed");
    assert!(r.header("deletion-id").is_none());
    let current = get_ok(&app, &path, &app.admin).await;
    assert_eq!((current["deleted"].as_bool(), current["version"].as_i64()), (Some(false), Some(2)));
    send(&app, Method::DELETE, &path, &app.admin, &[("if-match", "\"v2\"")], None).await.assert_status(204);
    assert_eq!(get_any(&app, "products", &id).await["version"], 3);
}

#[tokio::test]
async fn delete_of_a_missing_record_is_404() {
    let app = TestApp::new().await;
    let r = app.delete("/v1/products/nope", &app.admin).await;
    r.assert_problem(404, "not-found");
    assert!(r.header("deletion-id").is_none());
}

// ---------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn restore_answers_200_with_the_record_at_a_new_version() {
    let app = TestApp::new().await;
    let created = app.create("products", &app.admin, &json!({"sku": "A", "name": "Alpha", "price_cents": 7})).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/products/{id}");
    app.delete(&format!("{path}?reason=oops"), &app.admin).await.assert_status(204);

    let r = app.post_empty(&format!("{path}:restore?reason=mistake"), &app.admin).await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v3\""));
    let restored = r.json();
    assert_eq!(restored["version"], 3);
    assert_eq!(restored["deleted"], false);
    for field in ["deleted_at", "deleted_by", "delete_reason", "deletion_id", "purge_at"] {
        assert!(restored[field].is_null(), "{field} after restore: {restored}");
    }
    assert_eq!(restored["price_cents"], 7, "values survive the round trip");
    assert_eq!(restored["sku"], "A");
    assert_eq!(restored["created_at"], created["created_at"]);
    assert_eq!(get_ok(&app, &path, &app.admin).await, restored);
    assert_eq!(count(&app, "").await, 1);

    // Restoring an active record changes nothing.
    let r = app.post_empty(&format!("{path}:restore"), &app.admin).await;
    r.assert_status(200);
    assert_eq!(r.json(), restored);
    assert_eq!(r.header("etag"), Some("\"v3\""));
    assert_eq!(get_ok(&app, &path, &app.admin).await["version"], 3);

    // A restored record can be deleted again, with a new deletion.
    app.delete(&path, &app.admin).await.assert_status(204);
    assert_eq!(get_any(&app, "products", id).await["version"], 4);
}

#[tokio::test]
async fn restore_honours_if_match() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");
    app.delete(&path, &app.admin).await.assert_status(204);
    send(&app, Method::POST, &format!("{path}:restore"), &app.admin, &[("if-match", "\"v1\"")], None)
        .await
        .assert_problem(412, "precondition-failed");
    assert_eq!(get_any(&app, "products", &id).await["deleted"], true);
    send(&app, Method::POST, &format!("{path}:restore"), &app.admin, &[("if-match", "\"v2\"")], None)
        .await
        .assert_status(200);
    assert_eq!(get_ok(&app, &path, &app.admin).await["version"], 3);
}

#[tokio::test]
async fn restore_when_the_unique_value_was_taken_is_409_naming_the_holder() {
    let app = TestApp::new().await;
    let a = app.create("products", &app.admin, &product("SKU-1")).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/products/{a}"), &app.admin).await.assert_status(204);
    // Uniqueness holds among active records only: the sku is free again.
    let r = app.post("/v1/products", &app.admin, &product("SKU-1")).await;
    r.assert_status(201);
    let b = r.json()["id"].as_str().unwrap().to_string();

    let before = get_any(&app, "products", &a).await;
    let problem =
        app.post_empty(&format!("/v1/products/{a}:restore"), &app.admin).await.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], b.as_str());
    assert_eq!(get_any(&app, "products", &a).await, before, "a refused restore changes nothing");

    // Once B goes, A can come back.
    app.delete(&format!("/v1/products/{b}"), &app.admin).await.assert_status(204);
    app.post_empty(&format!("/v1/products/{a}:restore"), &app.admin).await.assert_status(200);
    let problem =
        app.post_empty(&format!("/v1/products/{b}:restore"), &app.admin).await.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], a.as_str());

    // Case-insensitive values conflict across case.
    let c1 =
        app.create("customers", &app.admin, &json!({"email": "Ann@X.com"})).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/customers/{c1}"), &app.admin).await.assert_status(204);
    let c2 =
        app.create("customers", &app.admin, &json!({"email": "ann@x.COM"})).await["id"].as_str().unwrap().to_string();
    let problem =
        app.post_empty(&format!("/v1/customers/{c1}:restore"), &app.admin).await.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], c2.as_str());
}

#[tokio::test]
async fn restore_after_the_window_is_404_while_include_deleted_still_shows_it() {
    let app = TestApp::new().await;
    // customers keep deleted records for 1 day.
    let late =
        app.create("customers", &app.admin, &json!({"email": "late@x.com"})).await["id"].as_str().unwrap().to_string();
    let early =
        app.create("customers", &app.admin, &json!({"email": "early@x.com"})).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/customers/{late}"), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/customers/{early}"), &app.admin).await.assert_status(204);

    // Still inside the window.
    app.clock.advance(Duration::from_secs(23 * 3600));
    app.post_empty(&format!("/v1/customers/{early}:restore"), &app.admin).await.assert_status(200);

    app.clock.advance(Duration::from_secs(3600 + 1));
    let before = get_any(&app, "customers", &late).await;
    app.post_empty(&format!("/v1/customers/{late}:restore"), &app.admin).await.assert_problem(404, "not-found");
    let after = get_any(&app, "customers", &late).await;
    assert_eq!(after, before);
    assert_eq!(after["deleted"], true);
    // It still appears in deleted lists until purged.
    let body = get_ok(&app, "/v1/customers?filter[deleted]=true", &app.admin).await;
    assert_eq!(ids_of(body["items"].as_array().unwrap()), [late.as_str()]);
    // A repeated delete is still a no-op 204.
    app.delete(&format!("/v1/customers/{late}"), &app.admin).await.assert_status(204);
}

#[tokio::test]
async fn restore_of_a_missing_record_is_404() {
    let app = TestApp::new().await;
    app.post_empty("/v1/products/never:restore", &app.admin).await.assert_problem(404, "not-found");
}

#[tokio::test]
async fn uniqueness_holds_among_active_records_only() {
    let app = TestApp::new().await;
    let first = app.create("products", &app.admin, &product("SKU-1")).await["id"].as_str().unwrap().to_string();
    let problem = app.post("/v1/products", &app.admin, &product("SKU-1")).await.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], first.as_str());
    assert_eq!(count(&app, "").await, 1);
    // Another sku is fine.
    app.create("products", &app.admin, &product("SKU-2")).await;

    app.delete(&format!("/v1/products/{first}"), &app.admin).await.assert_status(204);
    let second = app.post("/v1/products", &app.admin, &product("SKU-1")).await;
    second.assert_status(201);
    // And again: several deleted records may share the value.
    app.delete(&format!("/v1/products/{}", second.json()["id"].as_str().unwrap()), &app.admin).await.assert_status(204);
    app.post("/v1/products", &app.admin, &product("SKU-1")).await.assert_status(201);
    assert_eq!(count(&app, "include=deleted").await, 4);
    assert_eq!(count(&app, "filter[sku]=SKU-1").await, 1);

    // Case-insensitive unique fields collide across case.
    let c = app.create("customers", &app.admin, &json!({"email": "Mixed@Case.org"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let problem = app
        .post("/v1/customers", &app.admin, &json!({"email": "mixed@case.ORG"}))
        .await
        .assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], c.as_str());
    // Case-sensitive ones do not.
    app.post("/v1/products", &app.admin, &product("sku-1")).await.assert_status(201);
}

// ---------------------------------------------------------------------------------------
// Hard delete and dry run
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hard_delete_collections_remove_at_once() {
    let app = TestApp::new().await;
    let id = app.create("secrets", &app.admin, &json!({"value": "s3cr3t"})).await["id"].as_str().unwrap().to_string();
    let keep = app.create("secrets", &app.admin, &json!({"value": "other"})).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/secrets/{id}");
    let r = app.delete(&format!("{path}?reason=rotated"), &app.admin).await;
    r.assert_status(204);
    assert!(r.header("deletion-id").is_some_and(|d| d.starts_with("del_")), "{:?}", r.headers);

    app.get(&path, &app.admin).await.assert_problem(404, "not-found");
    app.get(&format!("{path}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
    let all = all_records(&app, "secrets").await;
    assert_eq!(ids_of(&all), [keep.as_str()]);
    let deleted = get_ok(&app, "/v1/secrets?filter[deleted]=true&count=true", &app.admin).await;
    assert_eq!(deleted["total"], 0);
    app.post_empty(&format!("{path}:restore"), &app.admin).await.assert_problem(404, "not-found");
    app.delete(&path, &app.admin).await.assert_problem(404, "not-found");
    // The id is free again: nothing of the record is left.
    app.post("/v1/secrets", &app.admin, &json!({"id": id, "value": "new"})).await.assert_status(201);
}

#[tokio::test]
async fn dry_run_answers_the_plan_and_changes_nothing() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");
    let r = app.delete(&format!("{path}?dry_run=true"), &app.admin).await;
    r.assert_status(200);
    let plan = r.json();
    assert_eq!(plan["root"], json!({"collection": "products", "id": id}));
    assert_eq!(plan["would_delete"], json!([{"collection": "products", "id": id}]));
    assert_eq!(plan["blockers"], json!([]));
    assert_eq!(plan["orphaned"], json!([]));
    assert_eq!(plan["counts"], json!({"products": 1}));
    assert!(r.header("deletion-id").is_none());

    let current = get_ok(&app, &path, &app.admin).await;
    assert_eq!((current["version"].as_i64(), current["deleted"].as_bool()), (Some(1), Some(false)));
    // A dry run with a reason is still a dry run; dry_run=false really deletes.
    app.delete(&format!("{path}?dry_run=true&reason=test"), &app.admin).await.assert_status(200);
    assert_eq!(get_ok(&app, &path, &app.admin).await["version"], 1);
    app.delete(&format!("{path}?dry_run=false"), &app.admin).await.assert_status(204);
    assert_eq!(get_any(&app, "products", &id).await["deleted"], true);
    app.delete("/v1/products/nope?dry_run=true", &app.admin).await.assert_problem(404, "not-found");
}

// ---------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn x_request_id_is_echoed_or_generated_on_every_answer() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");

    // Echoed, on success and on error.
    let ok = send(&app, Method::GET, &path, &app.admin, &[("x-request-id", "my-req-1")], None).await;
    ok.assert_status(200);
    assert_eq!(ok.header("x-request-id"), Some("my-req-1"));
    let created =
        send(&app, Method::POST, "/v1/products", &app.admin, &[("x-request-id", "my-req-2")], Some(&product("B")))
            .await;
    created.assert_status(201);
    assert_eq!(created.header("x-request-id"), Some("my-req-2"));
    let deleted = send(&app, Method::DELETE, &path, &app.admin, &[("x-request-id", "my-req-3")], None).await;
    deleted.assert_status(204);
    assert_eq!(deleted.header("x-request-id"), Some("my-req-3"));
    let err = send(&app, Method::GET, &path, &app.admin, &[("x-request-id", "my-req-4")], None).await;
    let problem = err.assert_problem(404, "not-found");
    assert_eq!(err.header("x-request-id"), Some("my-req-4"));
    assert_eq!(problem["request_id"], "my-req-4");
    let unauth = app.send(Method::GET, "/v1/products", None, &[("x-request-id", "my-req-5")], None).await;
    assert_eq!(unauth.assert_problem(401, "unauthorized")["request_id"], "my-req-5");
    assert_eq!(unauth.header("x-request-id"), Some("my-req-5"));

    // Generated when absent: present, non-empty, distinct per request, and the same as
    // the problem's request_id.
    let a = app.get("/v1/products", &app.admin).await;
    let b = app.get("/v1/products", &app.admin).await;
    let (ida, idb) = (a.header("x-request-id").unwrap(), b.header("x-request-id").unwrap());
    assert!(!ida.is_empty() && !idb.is_empty());
    assert_ne!(ida, idb);
    let err = app.get(&path, &app.admin).await;
    let problem = err.assert_problem(404, "not-found");
    assert_eq!(problem["request_id"].as_str(), err.header("x-request-id"));
    // An unacceptable id (too long, or with spaces) is replaced by a generated one.
    for bad in ["x".repeat(201), "has space".to_string()] {
        let r = send(&app, Method::GET, "/v1/products", &app.admin, &[("x-request-id", &bad)], None).await;
        r.assert_status(200);
        let echoed = r.header("x-request-id").expect("x-request-id");
        assert!(!echoed.is_empty() && echoed != bad, "{echoed}");
    }
    let health = app.send(Method::GET, "/healthz", None, &[], None).await;
    assert!(health.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

// ---------------------------------------------------------------------------------------
// Idempotency-Key
// ---------------------------------------------------------------------------------------

async fn post_idem(app: &TestApp, key: &str, idem: &str, body: &Value) -> TestResponse {
    send(app, Method::POST, "/v1/products", key, &[("idempotency-key", idem)], Some(body)).await
}

#[tokio::test]
async fn idempotency_key_replays_the_first_response() {
    let app = TestApp::new().await;
    let body = json!({"sku": "I-1", "name": "Idem", "price_cents": 5});
    let first = post_idem(&app, &app.admin, "k-1", &body).await;
    first.assert_status(201);
    assert!(first.header("idempotent-replayed").is_none(), "{:?}", first.headers);
    let id = first.json()["id"].as_str().unwrap().to_string();

    app.clock.advance(Duration::from_secs(3600));
    // Same body, keys in another order: the same request.
    let reordered = json!({"price_cents": 5, "name": "Idem", "sku": "I-1"});
    for again in [&body, &reordered] {
        let replay = post_idem(&app, &app.admin, "k-1", again).await;
        replay.assert_status(201);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.json(), first.json(), "the replay has the first body");
        assert_eq!(replay.text, first.text);
        assert_eq!(replay.header("location"), first.header("location"));
        assert_eq!(replay.header("etag"), Some("\"v1\""));
        assert!(replay.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    }
    let all = all_records(&app, "products").await;
    assert_eq!(ids_of(&all), [id.as_str()], "only one record exists");

    // The replay shows the first response even after the record changed.
    app.patch(&format!("/v1/products/{id}"), &app.admin, &json!({"name": "changed"})).await.assert_status(200);
    let replay = post_idem(&app, &app.admin, "k-1", &body).await;
    assert_eq!(replay.status.as_u16(), 201);
    assert_eq!(replay.json()["name"], "Idem");
    assert_eq!(all_records(&app, "products").await.len(), 1);

    // Another Idempotency-Key is another request (the sku is taken now).
    let mut other = body.clone();
    other["sku"] = json!("I-2");
    let second = post_idem(&app, &app.admin, "k-2", &other).await;
    second.assert_status(201);
    assert_ne!(second.json()["id"], id.as_str());
}

#[tokio::test]
async fn idempotency_keys_are_kept_for_24_hours() {
    let app = TestApp::new().await;
    post_idem(&app, &app.admin, "k-day", &product("A")).await.assert_status(201);
    app.clock.advance(Duration::from_secs(23 * 3600));
    let replay = post_idem(&app, &app.admin, "k-day", &product("A")).await;
    replay.assert_status(201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    post_idem(&app, &app.admin, "k-day", &product("B")).await.assert_problem(422, "idempotency-mismatch");
    assert_eq!(all_records(&app, "products").await.len(), 1);

    // After 24 hours the key is forgotten: the same key is a new request.
    app.clock.advance(Duration::from_secs(3600 + 1));
    let fresh = post_idem(&app, &app.admin, "k-day", &product("B")).await;
    fresh.assert_status(201);
    assert!(fresh.header("idempotent-replayed").is_none());
    assert_eq!(fresh.json()["sku"], "B");
    assert_eq!(all_records(&app, "products").await.len(), 2);
}

#[tokio::test]
async fn idempotency_key_with_another_body_is_422_and_creates_nothing() {
    let app = TestApp::new().await;
    post_idem(&app, &app.admin, "k-1", &product("A")).await.assert_status(201);
    let r = post_idem(&app, &app.admin, "k-1", &product("B")).await;
    r.assert_problem(422, "idempotency-mismatch");
    assert!(r.header("idempotent-replayed").is_none());
    // The same key on another collection is another request too.
    let r = send(
        &app,
        Method::POST,
        "/v1/categories",
        &app.admin,
        &[("idempotency-key", "k-1")],
        Some(&json!({"name": "A"})),
    )
    .await;
    r.assert_problem(422, "idempotency-mismatch");
    let all = all_records(&app, "products").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["sku"], "A");
    assert!(all_records(&app, "categories").await.is_empty());
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_api_key_and_tenant() {
    let app = TestApp::new().await;
    let writer = app.key("t1", "read,write").await;
    let other_tenant = app.key("t2", "admin").await;
    let first = post_idem(&app, &app.admin, "shared", &product("A")).await;
    first.assert_status(201);

    // Another key of the same tenant: a new request (here a unique conflict with the first).
    let r = post_idem(&app, &writer, "shared", &product("A")).await;
    assert!(r.header("idempotent-replayed").is_none());
    let problem = r.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], first.json()["id"]);
    let r = post_idem(&app, &writer, "shared-2", &product("B")).await;
    r.assert_status(201);
    let r = post_idem(&app, &writer, "shared", &product("C")).await;
    // "shared" from writer was answered with a 409 for sku A: C is another body.
    r.assert_problem(422, "idempotency-mismatch");

    // Another tenant: a new record in that tenant.
    let r = post_idem(&app, &other_tenant, "shared", &product("A")).await;
    r.assert_status(201);
    assert!(r.header("idempotent-replayed").is_none());
    assert_ne!(r.json()["id"], first.json()["id"]);
    assert_eq!(all_records(&app, "products").await.len(), 2, "t1 has A and B");
    let t2 = collect_pages(&app, "/v1/products?include=deleted", &other_tenant, 50).await;
    assert_eq!(t2.len(), 1);
}

#[tokio::test]
async fn a_unique_conflict_is_replayed_as_the_same_409() {
    let app = TestApp::new().await;
    let holder = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let first = post_idem(&app, &app.admin, "k-conflict", &product("A")).await;
    let problem = first.assert_problem(409, "unique-conflict");
    assert_eq!(problem["conflicting_id"], holder.as_str());

    // Even once the value is free, the key answers what it answered first.
    app.delete(&format!("/v1/products/{holder}"), &app.admin).await.assert_status(204);
    let replay = post_idem(&app, &app.admin, "k-conflict", &product("A")).await;
    assert_eq!(replay.status.as_u16(), 409, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.header("content-type"), Some("application/problem+json"));
    let replayed = replay.json();
    assert_eq!(replayed["type"], "unique-conflict");
    assert_eq!(replayed["conflicting_id"], holder.as_str());
    assert_eq!(replayed["detail"], problem["detail"]);
    assert_eq!(count(&app, "").await, 0, "the replay created nothing");
    // Without the key, the same body now succeeds.
    app.post("/v1/products", &app.admin, &product("A")).await.assert_status(201);
}

#[tokio::test]
async fn an_invalid_body_does_not_use_up_the_idempotency_key() {
    let app = TestApp::new().await;
    let r = post_idem(&app, &app.admin, "k-1", &json!({"sku": "A"})).await;
    r.assert_problem(422, "validation");
    let r = post_idem(&app, &app.admin, "k-1", &product("A")).await;
    r.assert_status(201);
    assert!(r.header("idempotent-replayed").is_none());
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_create_one_record() {
    let app = TestApp::new().await;
    let body = product("RACE");
    let (a, b) = tokio::join!(post_idem(&app, &app.admin, "race", &body), post_idem(&app, &app.admin, "race", &body));
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    for r in [&a, &b] {
        match r.status.as_u16() {
            201 => {}
            409 => assert_eq!(r.json()["type"], "idempotency-conflict", "{}", r.text),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert!(statuses[0] == 201, "one of them creates: {statuses:?}");
    assert_eq!(all_records(&app, "products").await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_creates_of_one_unique_value_make_exactly_one_record() {
    let app = TestApp::new().await;
    let body = product("HOT");
    let responses = futures::future::join_all((0..8).map(|_| app.post("/v1/products", &app.admin, &body))).await;
    let created: Vec<&TestResponse> = responses.iter().filter(|r| r.status.as_u16() == 201).collect();
    assert_eq!(created.len(), 1, "{responses:?}");
    let winner = created[0].json()["id"].clone();
    for r in responses.iter().filter(|r| r.status.as_u16() != 201) {
        assert_eq!(r.assert_problem(409, "unique-conflict")["conflicting_id"], winner);
    }
    assert_eq!(all_records(&app, "products").await.len(), 1);
}

#[tokio::test]
async fn concurrent_deletes_of_one_record_make_one_deletion() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("A")).await["id"].as_str().unwrap().to_string();
    let path = format!("/v1/products/{id}");
    let responses = futures::future::join_all((0..6).map(|_| app.delete(&path, &app.admin))).await;
    let deletion_ids: HashSet<Option<&str>> = responses
        .iter()
        .map(|r| {
            r.assert_status(204);
            r.header("deletion-id")
        })
        .collect();
    assert_eq!(deletion_ids.len(), 1, "{deletion_ids:?}");
    let record = get_any(&app, "products", &id).await;
    assert_eq!(record["version"], 2);
    assert_eq!(Some(record["deletion_id"].as_str()), deletion_ids.into_iter().next());
}

#[tokio::test]
async fn a_restore_racing_a_create_of_the_same_unique_value_leaves_one_active() {
    let app = TestApp::new().await;
    let id = app.create("products", &app.admin, &product("X")).await["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_status(204);
    let restore = format!("/v1/products/{id}:restore");
    let body = product("X");
    let (restored, created) =
        tokio::join!(app.post_empty(&restore, &app.admin), app.post("/v1/products", &app.admin, &body));
    let outcome = (restored.status.as_u16(), created.status.as_u16());
    assert!(outcome == (200, 409) || outcome == (409, 201), "{outcome:?}: {} / {}", restored.text, created.text);
    assert_eq!(count(&app, "filter[sku]=X").await, 1);
}

// ---------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn health_and_readiness_answer_200_without_a_key() {
    let app = TestApp::new().await;
    for path in ["/healthz", "/readyz"] {
        let r = app.send(Method::GET, path, None, &[], None).await;
        r.assert_status(200);
        assert!(r.json().is_object(), "{path}: {}", r.text);
        // A key does not hurt either.
        app.get(path, &app.admin).await.assert_status(200);
    }
}

/// `/readyz` of a router over `store`, without a key.
async fn readyz_over(app: &TestApp, store: std::sync::Arc<dyn tombstone_store::Store>) -> TestResponse {
    use http_body_util::BodyExt;
    let clock: std::sync::Arc<dyn tombstone_domain::time::Clock> = app.clock.clone();
    let state = tombstone_server::AppState::new(app.config.schema.clone(), store, clock);
    let request = axum::http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(tombstone_server::router(state), request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    TestResponse { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}

// A store opened read-only has no writer at all: every write fails. Readiness must not
// need one (it used to run an empty write transaction on the live writer). SQLite only:
// the read-only store is SQLite's (`tombstone audit verify` opens one); PostgreSQL's
// readiness is one `select 1` on a pooled connection (docs/OPERATIONS.md).
#[tokio::test]
async fn readiness_only_reads() {
    let app = TestApp::new_sqlite().await;
    let store = tombstone_store::SqliteStore::open_read_only(app.db_path()).unwrap();
    let r = readyz_over(&app, std::sync::Arc::new(store)).await;
    r.assert_status(200);
    assert_eq!(r.json()["status"], "ready");
}

// When the database does not answer, the unauthenticated probe says so with a plain 503:
// no SQLite or PostgreSQL message, no path, no database name (they go to the log).
#[tokio::test]
async fn unreadiness_is_a_plain_503_without_internal_text() {
    let app = TestApp::new().await;
    let unanswering = app.unanswering_store().await;
    let r = readyz_over(&app, unanswering.store.clone()).await;
    let problem = r.assert_problem(503, "unavailable");
    let detail = problem["detail"].as_str().unwrap();
    assert_eq!(detail, "the database does not answer", "{problem}");
    let dir = app.dir.path().to_string_lossy().to_string();
    for leak in ["locked", "sqlite", "busy", "postgres", "does not exist", "t_0", dir.as_str()] {
        assert!(!r.text.to_lowercase().contains(leak), "{leak:?} leaked: {}", r.text);
    }
    drop(unanswering);
}

#[tokio::test]
async fn a_dry_run_needs_no_if_match_even_where_writes_do() {
    let app = TestApp::new().await;
    let c = app.create("contracts", &app.admin, &json!({"title": "lease"})).await;
    let id = c["id"].as_str().unwrap();
    let plan = app.delete(&format!("/v1/contracts/{id}?dry_run=true"), &app.admin).await;
    plan.assert_status(200);
    assert_eq!(plan.json()["would_delete"][0]["id"], id);
    app.delete(&format!("/v1/contracts/{id}"), &app.admin).await.assert_problem(428, "precondition-required");
    assert_eq!(app.get(&format!("/v1/contracts/{id}"), &app.admin).await.json()["version"], 1);
}
