//! A huge cascade never holds the only writer: past `relations.max_immediate_cascade`
//! children the rest of the cascade continues as an eventual one (the operation `pending`,
//! then `done`), the dry run lists a capped page with totals, and a deletion operation's
//! records are paged with cursors.
//!
//! The eventual worker is driven by calling `run_eventual` on the store, as the server's
//! worker does after every commit.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::TestApp;
use serde_json::{Value, json};
use tombstone_domain::time::Clock;

/// A small bound, so a test needs only a few hundred records.
const BOUND: usize = 50;

fn schema() -> String {
    format!(
        r#"
[relations]
max_immediate_cascade = {BOUND}

[collections.products.fields]
name = {{ type = "string", required = true }}

[collections.cart_items.fields]
product_id = {{ type = "ref", collection = "products", on_delete = "cascade" }}

[collections.cart_notes.fields]
cart_item_id = {{ type = "ref", collection = "cart_items", on_delete = "cascade" }}

[collections.reviews.fields]
product_id = {{ type = "ref", collection = "products", on_delete = "orphan" }}
"#
    )
}

fn id_of(record: &Value) -> String {
    record["id"].as_str().expect("id").to_string()
}

async fn list(app: &TestApp, path: &str) -> Vec<Value> {
    let resp = app.get(path, &app.admin).await;
    resp.assert_status(200);
    resp.json()["items"].as_array().expect("items").clone()
}

/// Every item of a seq-ordered list (`audit`, `events`), following `after`.
async fn all_after(app: &TestApp, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = list(app, &format!("{path}&after={after}&limit=500")).await;
        let Some(last) = page.last() else { break };
        after = last["seq"].as_i64().expect("seq");
        out.extend(page);
    }
    out
}

/// Every item of a cursor-paged list.
async fn all_pages(app: &TestApp, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut target = format!("{path}&limit=500");
        if let Some(c) = &cursor {
            target.push_str(&format!("&cursor={c}"));
        }
        let page = app.get(&target, &app.admin).await;
        page.assert_status(200);
        let page = page.json();
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return out,
        }
    }
}

/// How many times each record id appears in a list of audit entries or events.
fn per_record(items: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item["record_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    out
}

/// A product with `children` cart items (each with a note) and `reviews` reviews.
async fn product_with(app: &TestApp, children: usize, reviews: usize) -> (String, Vec<String>, Vec<String>) {
    let product = id_of(&app.create("products", &app.admin, &json!({"name": "Mug"})).await);
    let mut items = Vec::new();
    let mut notes = Vec::new();
    for _ in 0..children {
        let item = id_of(&app.create("cart_items", &app.admin, &json!({"product_id": product})).await);
        notes.push(id_of(&app.create("cart_notes", &app.admin, &json!({"cart_item_id": item})).await));
        items.push(item);
    }
    for _ in 0..reviews {
        app.create("reviews", &app.admin, &json!({"product_id": product})).await;
    }
    (product, items, notes)
}

#[tokio::test]
async fn past_the_bound_the_cascade_continues_eventually_once_per_child_and_restores_exactly() {
    let app = TestApp::with_schema(&schema()).await;
    let (product, mut items, mut notes) = product_with(&app, 80, 0).await;
    // Deleted on its own before: not part of the operation, and stays deleted after its restore.
    let (loner, loner_note) = (items.pop().unwrap(), notes.pop().unwrap());
    app.delete(&format!("/v1/cart_items/{loner}"), &app.admin).await.assert_status(204);

    let deleted = app.delete(&format!("/v1/products/{product}"), &app.admin).await;
    deleted.assert_status(204);
    let deletion_id = deleted.header("deletion-id").unwrap().to_string();
    let op = app.get(&format!("/v1/deletions/{deletion_id}"), &app.admin).await.json();
    assert_eq!(op["status"], "pending", "{op}");
    assert_eq!(op["records_total"], BOUND + 1, "the root and at most the bound at once: {op}");
    assert!(op["pending_relations"].as_u64().unwrap() >= 1, "{op}");
    // The rest is still active, for the worker to take.
    assert_eq!(list(&app, "/v1/cart_items?limit=500").await.len(), items.len() - BOUND);

    while app.store.run_eventual(7, Clock::now(app.clock.as_ref())).await.unwrap() > 0 {}
    let op = app.get(&format!("/v1/deletions/{deletion_id}"), &app.admin).await.json();
    assert_eq!(op["status"], "done", "{op}");
    assert_eq!(op["pending_relations"], 0);
    let expected = 1 + items.len() + notes.len();
    assert_eq!(op["records_total"], expected, "{op}");
    assert_eq!(op["counts"], json!({"products": 1, "cart_items": items.len(), "cart_notes": notes.len()}));
    assert!(list(&app, "/v1/cart_items?limit=500").await.is_empty());
    assert!(list(&app, "/v1/cart_notes?limit=500").await.is_empty());

    // Each record deleted exactly once: one audit entry and one event each.
    let audit = all_pages(&app, "/v1/audit?action=cascade_delete").await;
    let events: Vec<Value> = all_after(&app, "/v1/events?type=record.deleted")
        .await
        .into_iter()
        .filter(|e| e["deletion_id"] == deletion_id.as_str())
        .collect();
    let audited =
        per_record(&audit.iter().filter(|e| e["deletion_id"] == deletion_id.as_str()).cloned().collect::<Vec<_>>());
    let announced = per_record(&events);
    for id in items.iter().chain(&notes) {
        assert_eq!(audited.get(id), Some(&1), "audit of {id}");
        assert_eq!(announced.get(id), Some(&1), "event of {id}");
    }
    assert_eq!(audited.len(), items.len() + notes.len());
    assert_eq!(announced.len(), items.len() + notes.len() + 1, "the children and the root");
    let completed: Vec<Value> = all_after(&app, "/v1/events?type=deletion.completed")
        .await
        .into_iter()
        .filter(|e| e["deletion_id"] == deletion_id.as_str())
        .collect();
    assert_eq!(completed.len(), 1);

    // Restoring the operation brings back exactly what it deleted.
    let restored = app.post_empty(&format!("/v1/deletions/{deletion_id}:restore"), &app.admin).await;
    restored.assert_status(200);
    assert_eq!(restored.json()["restored"], expected);
    assert_eq!(list(&app, "/v1/cart_items?limit=500").await.len(), items.len());
    assert_eq!(list(&app, "/v1/cart_notes?limit=500").await.len(), notes.len());
    app.get(&format!("/v1/cart_items/{loner}"), &app.admin).await.assert_problem(404, "not-found");
    app.get(&format!("/v1/cart_notes/{loner_note}"), &app.admin).await.assert_problem(404, "not-found");
}

#[tokio::test]
async fn the_dry_run_lists_a_capped_page_with_correct_totals() {
    let app = TestApp::with_schema(&schema()).await;
    let (product, items, notes) = product_with(&app, 60, 105).await;
    let plan = app.delete(&format!("/v1/products/{product}?dry_run=true"), &app.admin).await;
    plan.assert_status(200);
    let plan = plan.json();
    let total = 1 + items.len() + notes.len();
    assert_eq!(plan["would_delete"].as_array().unwrap().len(), 100, "capped");
    assert_eq!(plan["would_delete"][0], json!({"collection": "products", "id": product}), "the root first");
    assert_eq!(plan["would_delete_total"], total);
    assert_eq!(plan["counts"], json!({"products": 1, "cart_items": items.len(), "cart_notes": notes.len()}));
    assert_eq!(plan["orphaned"].as_array().unwrap().len(), 100, "capped");
    assert_eq!(plan["orphaned_total"], 105);
    // Past the bound the rest would go eventually.
    assert_eq!(plan["eventual_total"], total - 1 - BOUND);
    assert_eq!(plan["eventual"].as_array().unwrap().len(), 100.min(total - 1 - BOUND));
    let listed: HashSet<String> =
        plan["would_delete"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed.len(), 100, "no record listed twice");
}

#[tokio::test]
async fn an_operations_records_are_paged_with_cursors_covering_each_exactly_once() {
    let app = TestApp::with_schema(&schema()).await;
    let (product, items, notes) = product_with(&app, 23, 0).await;
    let deleted = app.delete(&format!("/v1/products/{product}"), &app.admin).await;
    let deletion_id = deleted.header("deletion-id").unwrap().to_string();
    let everything: HashSet<(String, String)> = std::iter::once(("products".to_string(), product.clone()))
        .chain(items.iter().map(|i| ("cart_items".to_string(), i.clone())))
        .chain(notes.iter().map(|n| ("cart_notes".to_string(), n.clone())))
        .collect();

    for limit in [1, 7, 47, 500] {
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/deletions/{deletion_id}?limit={limit}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = app.get(&path, &app.admin).await;
            page.assert_status(200);
            let page = page.json();
            assert_eq!(page["records_total"], everything.len());
            let records = page["records"].as_array().unwrap();
            assert!(records.len() <= limit, "limit {limit}: {}", records.len());
            seen.extend(
                records
                    .iter()
                    .map(|r| (r["collection"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string())),
            );
            match page["records_next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seen[0], ("products".to_string(), product.clone()), "the root first");
        assert_eq!(seen.len(), everything.len(), "limit {limit}: each record once");
        assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), everything, "limit {limit}");
    }
    // Without a limit, up to 500 at once: this operation in one page.
    let whole = app.get(&format!("/v1/deletions/{deletion_id}"), &app.admin).await.json();
    assert_eq!(whole["records"].as_array().unwrap().len(), everything.len());
    assert!(whole["records_next_cursor"].is_null());
    // An empty cursor is the first page, as on every list.
    let empty = app.get(&format!("/v1/deletions/{deletion_id}?cursor="), &app.admin).await;
    empty.assert_status(200);
    assert_eq!(empty.json()["records"], whole["records"]);
    app.get(&format!("/v1/deletions/{deletion_id}?limit=501"), &app.admin)
        .await
        .assert_problem(400, "invalid-parameter");
    app.get(&format!("/v1/deletions/{deletion_id}?cursor=nonsense"), &app.admin)
        .await
        .assert_problem(400, "invalid-parameter");
}
