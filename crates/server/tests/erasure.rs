//! Erasure (SPEC §6.11): the receipt answers once the database part is committed, the
//! steps after the commit (search index; SQLite's WAL, PostgreSQL's dead rows) are durable jobs that finish later — also
//! after a crash — and an erasure follows the relation policies of the schema.

mod common;

use std::time::Duration;

use common::{TestApp, on_postgres};
use serde_json::{Value, json};

/// The demo shop's relations, with searchable text.
const SHOP: &str = r#"
[retention]
default = "7d"

[collections.categories.fields]
name = { type = "string", required = true }

[collections.products.fields]
name        = { type = "string", required = true, search = true }
category_id = { type = "ref", collection = "categories", on_delete = "restrict" }

[collections.customers]
unique = [["email"]]

[collections.customers.fields]
email = { type = "string", required = true, case_insensitive = true, pii = true }
name  = { type = "string", search = true }

[collections.orders.fields]
customer_id = { type = "ref", collection = "customers", on_delete = "orphan" }
total_cents = { type = "integer" }

[collections.cart_items.fields]
customer_id = { type = "ref", collection = "customers", on_delete = "cascade" }
product_id  = { type = "ref", collection = "products", on_delete = "cascade" }
note        = { type = "string", search = true }

[collections.page_views.fields]
customer_id = { type = "ref", collection = "customers", on_delete = "eventual" }
path        = { type = "string" }
"#;

fn id_of(record: &Value) -> String {
    record["id"].as_str().expect("id").to_string()
}

/// A marker that can only come from this test's values.
fn marker(prefix: &str) -> String {
    format!("{prefix}{:x}", std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos())
}

/// Whether anything the app keeps (database file and WAL, or PostgreSQL's pages; the
/// search index) holds `needle`.
async fn on_disk(app: &TestApp, needle: &str) -> bool {
    !app.bytes_holding(needle).await.is_empty()
}

fn pending(receipt: &Value) -> Vec<String> {
    receipt["pending"].as_array().expect("pending").iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let page = app.get(&format!("/v1/audit{query}"), &app.admin).await;
    page.assert_status(200);
    page.json()["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_receipt_answers_at_commit_and_the_search_step_finishes_later() {
    let app = TestApp::with_schema(SHOP).await;
    let word = marker("srchmark");
    let customer =
        app.create("customers", &app.admin, &json!({"email": "a@example.com", "name": format!("Ann {word}")})).await;
    let id = id_of(&customer);
    app.index().await;
    assert!(app.search.holds_term(&word).unwrap(), "indexed before the erasure");

    // The indexer is not running (as when the index is busy or failing): the erasure does not
    // wait for it, and says what is left.
    let r = app.post_empty(&format!("/v1/customers/{id}:erase"), &app.admin).await;
    r.assert_status(200);
    let receipt = app.erasure_settled(&format!("/v1/customers/{id}"), r.json()).await;
    assert_eq!(pending(&receipt), ["search"], "{receipt}");
    assert_eq!(receipt["scrubbed"]["search"], false, "{receipt}");
    assert_eq!(receipt["counts"], json!({"customers": 1}));
    app.get(&format!("/v1/customers/{id}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
    assert!(app.search.holds_term(&word).unwrap(), "the index was not touched by the request");

    // A retry changes nothing and answers the same receipt, still pending.
    let again = app.post_empty(&format!("/v1/customers/{id}:erase"), &app.admin).await;
    again.assert_status(200);
    let again = again.json();
    assert_eq!(
        (again["audit_seq"].clone(), again["erased_at"].clone()),
        (receipt["audit_seq"].clone(), receipt["erased_at"].clone())
    );
    assert_eq!(pending(&again), ["search"]);
    assert_eq!(audit(&app, &format!("?record_id={id}&action=erase")).await.len(), 1);

    // The indexer's pass finishes the step: no term of it is left in any segment or file.
    app.index().await;
    assert!(!app.search.holds_term(&word).unwrap(), "the erased term is gone from the index");
    assert!(!on_disk(&app, &word).await, "no file holds the erased value");
    let done = app.post_empty(&format!("/v1/customers/{id}:erase"), &app.admin).await.json();
    assert_eq!(pending(&done), Vec::<String>::new(), "{done}");
    assert_eq!(done["scrubbed"]["search"], true);
    assert_eq!(done["audit_seq"], receipt["audit_seq"]);

    // Never erased (or another tenant's): still a plain 404.
    app.post_empty("/v1/customers/nobody:erase", &app.admin).await.assert_problem(404, "not-found");
    let other = app.key("t2", "admin").await;
    app.post_empty(&format!("/v1/customers/{id}:erase"), &other).await.assert_problem(404, "not-found");
}

#[tokio::test]
async fn a_crash_after_the_commit_leaves_jobs_that_finish_after_restart() {
    let app = TestApp::with_schema(SHOP).await;
    let word = marker("crashmark");
    let customer = app
        .create("customers", &app.admin, &json!({"email": format!("{word}@example.com"), "name": format!("Bo {word}")}))
        .await;
    let id = id_of(&customer);
    let path = format!("/v1/customers/{id}");
    app.index().await;
    // The store's own step after the commit: SQLite truncates its WAL, PostgreSQL vacuums
    // the dead rows out of the pages.
    let storage = if on_postgres() { "vacuum" } else { "wal" };

    // A reader on an older snapshot keeps the WAL from being truncated (SQLite) or the dead
    // rows from being removed (PostgreSQL): the request cannot finish that step (it waits
    // only a moment) and leaves it as a job.
    let reader = app.raw().await;
    reader.hold_snapshot().await;
    let receipt = app.post_empty(&format!("{path}:erase"), &app.admin).await;
    receipt.assert_status(200);
    assert_eq!(pending(&receipt.json()), ["search", storage], "{}", receipt.text);
    assert!(on_disk(&app, &word).await, "the old copies are still there, so the pending steps are real");

    // The process dies before any follow-up work runs.
    reader.close().await;
    let app = app.restart(SHOP).await;
    let after = app.post_empty(&format!("{path}:erase"), &app.admin).await.json();
    assert_eq!(pending(&after), ["search", storage], "the jobs survived the crash: {after}");

    // What the server's workers run after start: the indexer's pass and the storage step.
    app.index().await;
    app.store.finish_erasure_wal(Duration::from_secs(5)).await.unwrap();
    let done = app.post_empty(&format!("{path}:erase"), &app.admin).await.json();
    let done = app.erasure_settled(&path, done).await;
    assert_eq!(pending(&done), Vec::<String>::new(), "{done}");
    assert!(!app.search.holds_term(&word).unwrap());
    assert!(!on_disk(&app, &word).await, "nothing the app keeps holds the erased value after the jobs ran");
    assert_eq!(audit(&app, &format!("?record_id={id}&action=erase")).await.len(), 1, "erased once");
}

// ---------------------------------------------------------------------------------------
// Relations

#[tokio::test]
async fn restrict_children_block_an_erasure_until_they_are_gone() {
    let app = TestApp::with_schema(SHOP).await;
    let kitchen = id_of(&app.create("categories", &app.admin, &json!({"name": "Kitchen"})).await);
    let mug = id_of(&app.create("products", &app.admin, &json!({"name": "Mug", "category_id": kitchen})).await);

    let blocked = app.post_empty(&format!("/v1/categories/{kitchen}:erase"), &app.admin).await;
    let problem = blocked.assert_problem(409, "restrict");
    assert_eq!(problem["blockers"], json!([{"collection": "products", "id": mug}]));
    assert_eq!(problem["blockers_total"], 1);
    app.get(&format!("/v1/categories/{kitchen}"), &app.admin).await.assert_status(200);
    assert!(audit(&app, "?action=erase").await.is_empty(), "nothing was erased");

    // A deleted child no longer blocks; it stays in the trash, pointing at a record that is
    // gone, and cannot come back alone.
    app.delete(&format!("/v1/products/{mug}"), &app.admin).await.assert_status(204);
    let receipt = app.post_empty(&format!("/v1/categories/{kitchen}:erase"), &app.admin).await;
    receipt.assert_status(200);
    assert_eq!(receipt.json()["counts"], json!({"categories": 1}));
    let kept = app.get(&format!("/v1/products/{mug}?include=deleted"), &app.admin).await;
    kept.assert_status(200);
    assert_eq!(kept.json()["category_id"], kitchen.as_str());
    app.post_empty(&format!("/v1/products/{mug}:restore"), &app.admin).await.assert_problem(409, "parent-deleted");
}

#[tokio::test]
async fn cascade_and_eventual_children_are_erased_with_the_customer_and_orders_stay() {
    let app = TestApp::with_schema(SHOP).await;
    let word = marker("cartnote");
    let ann = id_of(&app.create("customers", &app.admin, &json!({"email": "ann@example.com", "name": "Ann"})).await);
    let bob = id_of(&app.create("customers", &app.admin, &json!({"email": "bob@example.com", "name": "Bob"})).await);
    let cart = |customer: &str, note: &str| json!({"customer_id": customer, "note": note});
    let active = id_of(&app.create("cart_items", &app.admin, &cart(&ann, &format!("gift {word}"))).await);
    // A cart item the customer removed earlier: in the trash, still the customer's data.
    let trashed = id_of(&app.create("cart_items", &app.admin, &cart(&ann, &format!("old {word}"))).await);
    app.delete(&format!("/v1/cart_items/{trashed}"), &app.admin).await.assert_status(204);
    let bobs = id_of(&app.create("cart_items", &app.admin, &cart(&bob, "bob's")).await);
    let view = id_of(&app.create("page_views", &app.admin, &json!({"customer_id": ann, "path": "/mugs"})).await);
    let order = id_of(&app.create("orders", &app.admin, &json!({"customer_id": ann, "total_cents": 1200})).await);
    app.index().await;

    let r = app.post_empty(&format!("/v1/customers/{ann}:erase?reason=gdpr"), &app.admin).await;
    r.assert_status(200);
    let receipt = app.erasure_settled(&format!("/v1/customers/{ann}"), r.json()).await;
    assert_eq!(receipt["counts"], json!({"customers": 1, "cart_items": 2, "page_views": 1}), "{receipt}");

    // Cascade (active and trashed) and eventual children: erased at once, each audited and
    // announced, their stored events scrubbed.
    for (collection, id) in [("cart_items", &active), ("cart_items", &trashed), ("page_views", &view)] {
        app.get(&format!("/v1/{collection}/{id}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
        let entries = audit(&app, &format!("?record_id={id}&action=erase")).await;
        assert_eq!(entries.len(), 1, "{collection}/{id}");
        assert_eq!(entries[0]["reason"], "gdpr");
        let feed = app.get("/v1/events?limit=500", &app.admin).await.json();
        let mine: Vec<&Value> =
            feed["items"].as_array().unwrap().iter().filter(|e| e["record_id"] == id.as_str()).collect();
        assert!(mine.iter().all(|e| e["data"].is_null()), "{mine:?}");
        assert_eq!(mine.last().unwrap()["type"], "record.erased");
        // A retried erasure of a child answers its own receipt.
        let own = app.post_empty(&format!("/v1/{collection}/{id}:erase"), &app.admin).await;
        own.assert_status(200);
        assert_eq!(own.json()["counts"], json!({collection: 1}), "{}", own.text);
        assert_eq!(own.json()["audit_seq"], entries[0]["seq"]);
    }
    // Orphan children stay, their ref keeping the value of a record that is gone.
    let kept = app.get(&format!("/v1/orders/{order}"), &app.admin).await;
    kept.assert_status(200);
    assert_eq!(kept.json()["customer_id"], ann.as_str());
    app.get(&format!("/v1/customers/{ann}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
    // Another customer's data is untouched.
    app.get(&format!("/v1/cart_items/{bobs}"), &app.admin).await.assert_status(200);
    app.get(&format!("/v1/customers/{bob}"), &app.admin).await.assert_status(200);

    app.index().await;
    assert!(!app.search.holds_term(&word).unwrap(), "the children's terms left the index too");
    assert!(!on_disk(&app, &word).await, "no file holds a child's value");
    let verified = app.store.verify_audit().await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");
}

#[tokio::test]
async fn a_hold_on_a_child_stops_the_whole_erasure() {
    let app = TestApp::with_schema(SHOP).await;
    let ann = id_of(&app.create("customers", &app.admin, &json!({"email": "ann@example.com"})).await);
    let item = id_of(&app.create("cart_items", &app.admin, &json!({"customer_id": ann, "note": "n"})).await);
    app.post(&format!("/v1/cart_items/{item}:hold"), &app.admin, &json!({"case": "C-1"})).await.assert_status(201);

    app.post_empty(&format!("/v1/customers/{ann}:erase"), &app.admin).await.assert_problem(409, "legal-hold");
    app.get(&format!("/v1/customers/{ann}"), &app.admin).await.assert_status(200);
    app.get(&format!("/v1/cart_items/{item}"), &app.admin).await.assert_status(200);
    assert!(audit(&app, "?action=erase").await.is_empty());
}
