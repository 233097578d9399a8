//! Relations: `ref` fields and their `on_delete` policies (restrict, cascade, orphan,
//! eventual) through the real router, the deletion operation each DELETE creates, the dry
//! run that answers the same plan, and the exact, all-or-nothing restore of an operation.
//!
//! Eventual cascades are driven by calling `run_eventual` on the store directly (the test
//! app starts no background worker), so nothing here sleeps.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestApp, TestResponse};
use serde_json::{Value, json};
use tombstone_domain::time::Clock;

/// Every relation the tests need, one group of collections per scenario.
const SCHEMA: &str = r#"
[retention]
default = "7d"

# restrict
[collections.categories.fields]
name = { type = "string" }

[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku         = { type = "string", required = true }
category_id = { type = "ref", collection = "categories", on_delete = "restrict" }

# cascade, three levels below the root
[collections.authors.fields]
name = { type = "string" }

[collections.books]
unique = [["isbn"]]

[collections.books.fields]
isbn      = { type = "string" }
author_id = { type = "ref", collection = "authors", on_delete = "cascade" }

[collections.chapters.fields]
title   = { type = "string" }
book_id = { type = "ref", collection = "books", on_delete = "cascade" }

[collections.paragraphs.fields]
text       = { type = "string" }
chapter_id = { type = "ref", collection = "chapters", on_delete = "cascade" }

[collections.drafts]
delete = "hard"

[collections.drafts.fields]
body      = { type = "string" }
author_id = { type = "ref", collection = "authors", on_delete = "cascade" }

# orphan
[collections.customers.fields]
name = { type = "string" }

[collections.orders.fields]
total       = { type = "integer" }
customer_id = { type = "ref", collection = "customers", on_delete = "orphan" }

# eventual, whose children cascade further
[collections.feeds.fields]
name = { type = "string" }

[collections.items.fields]
title   = { type = "string" }
feed_id = { type = "ref", collection = "feeds", on_delete = "eventual" }

[collections.item_tags.fields]
tag     = { type = "string" }
item_id = { type = "ref", collection = "items", on_delete = "cascade" }

# cycles in the schema: a collection cascading to itself, two cascading to each other
[collections.nodes.fields]
name      = { type = "string" }
parent_id = { type = "ref", collection = "nodes", on_delete = "cascade" }

[collections.lefts.fields]
right_id = { type = "ref", collection = "rights", on_delete = "cascade" }

[collections.rights.fields]
left_id = { type = "ref", collection = "lefts", on_delete = "cascade" }

# a restrict inside a cascade subtree
[collections.projects.fields]
name = { type = "string" }

[collections.tasks.fields]
title      = { type = "string" }
project_id = { type = "ref", collection = "projects", on_delete = "cascade" }

[collections.assignments.fields]
person  = { type = "string" }
task_id = { type = "ref", collection = "tasks", on_delete = "restrict" }

[collections.reviews.fields]
project_id = { type = "ref", collection = "projects", on_delete = "cascade" }
task_id    = { type = "ref", collection = "tasks", on_delete = "restrict" }
"#;

/// A record named as the API names it.
type Ref = (String, String);

fn r(collection: &str, id: &str) -> Ref {
    (collection.to_string(), id.to_string())
}

/// `[{collection,id}]` as a list of pairs, in the order answered.
fn refs(value: &Value) -> Vec<Ref> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list of records: {value}"))
        .iter()
        .map(|v| r(v["collection"].as_str().expect("collection"), v["id"].as_str().expect("id")))
        .collect()
}

fn set(value: &Value) -> BTreeSet<Ref> {
    refs(value).into_iter().collect()
}

fn counts(value: &Value) -> BTreeMap<String, u64> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("counts is not an object: {value}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

fn counts_of(records: &BTreeSet<Ref>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (c, _) in records {
        *out.entry(c.clone()).or_insert(0) += 1;
    }
    out
}

async fn app() -> TestApp {
    TestApp::with_schema(SCHEMA).await
}

/// Creates a record with a client-chosen id (as admin of t1).
async fn make(app: &TestApp, collection: &str, id: &str, fields: Value) -> Value {
    make_as(app, &app.admin, collection, id, fields).await
}

async fn make_as(app: &TestApp, key: &str, collection: &str, id: &str, fields: Value) -> Value {
    let mut body = fields;
    body["id"] = json!(id);
    app.create(collection, key, &body).await
}

/// DELETE, asserting 204; returns the `Deletion-Id`.
async fn delete_ok(app: &TestApp, collection: &str, id: &str) -> String {
    let resp = app.delete(&format!("/v1/{collection}/{id}"), &app.admin).await;
    resp.assert_status(204);
    let deletion = resp.header("deletion-id").expect("Deletion-Id header").to_string();
    assert!(deletion.starts_with("del_"), "{deletion}");
    deletion
}

async fn dry_run(app: &TestApp, collection: &str, id: &str) -> Value {
    let resp = app.delete(&format!("/v1/{collection}/{id}?dry_run=true"), &app.admin).await;
    resp.assert_status(200);
    resp.json()
}

/// A record as `include=deleted` shows it.
async fn fetch(app: &TestApp, collection: &str, id: &str) -> Value {
    let resp = app.get(&format!("/v1/{collection}/{id}?include=deleted"), &app.admin).await;
    resp.assert_status(200);
    resp.json()
}

/// Whether the active read finds the record.
async fn is_active(app: &TestApp, collection: &str, id: &str) -> bool {
    let resp = app.get(&format!("/v1/{collection}/{id}"), &app.admin).await;
    match resp.status.as_u16() {
        200 => true,
        404 => false,
        other => panic!("GET {collection}/{id}: unexpected {other}: {}", resp.text),
    }
}

/// Every record of `collections` (deleted or not) of t1, by id.
async fn all_records(app: &TestApp, collections: &[&str]) -> BTreeMap<Ref, Value> {
    let mut out = BTreeMap::new();
    for c in collections {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/{c}?include=deleted&limit=500");
            if let Some(cur) = &cursor {
                path.push_str(&format!("&cursor={cur}"));
            }
            let body = app.get(&path, &app.admin).await;
            body.assert_status(200);
            let body = body.json();
            for item in body["items"].as_array().expect("items") {
                out.insert(r(c, item["id"].as_str().expect("id")), item.clone());
            }
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
    }
    out
}

/// The records of `collections` carrying `deletion_id`.
async fn deleted_by(app: &TestApp, collections: &[&str], deletion_id: &str) -> BTreeSet<Ref> {
    all_records(app, collections)
        .await
        .into_iter()
        .filter(|(_, v)| v["deletion_id"] == deletion_id)
        .inspect(|(k, v)| assert_eq!(v["deleted"], true, "{k:?} carries the deletion id but is not deleted: {v}"))
        .map(|(k, _)| k)
        .collect()
}

async fn operation(app: &TestApp, deletion_id: &str) -> Value {
    let resp = app.get(&format!("/v1/deletions/{deletion_id}"), &app.admin).await;
    resp.assert_status(200);
    resp.json()
}

async fn list(app: &TestApp, path: &str) -> Vec<Value> {
    let resp = app.get(path, &app.admin).await;
    resp.assert_status(200);
    resp.json()["items"].as_array().expect("items").clone()
}

async fn audit_actions(app: &TestApp, id: &str) -> Vec<(String, Option<String>)> {
    list(app, &format!("/v1/audit?record_id={id}&limit=500"))
        .await
        .into_iter()
        .map(|e| (e["action"].as_str().expect("action").to_string(), e["deletion_id"].as_str().map(str::to_string)))
        .collect()
}

async fn events_of_type(app: &TestApp, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = list(app, &format!("/v1/events?type={kind}&after={after}&limit=500")).await;
        let Some(last) = page.last() else { break };
        after = last["seq"].as_i64().expect("seq");
        out.extend(page);
    }
    out
}

async fn all_events(app: &TestApp) -> usize {
    let mut n = 0;
    let mut after = 0;
    loop {
        let page = list(app, &format!("/v1/events?after={after}&limit=500")).await;
        let Some(last) = page.last() else { break };
        after = last["seq"].as_i64().expect("seq");
        n += page.len();
    }
    n
}

async fn run_eventual(app: &TestApp, batch: u32) -> u64 {
    app.store.run_eventual(batch, Clock::now(app.clock.as_ref())).await.expect("run_eventual")
}

/// Asserts a 422 `validation` problem naming `field`.
#[track_caller]
fn assert_names_field(resp: &TestResponse, field: &str) {
    let body = resp.assert_problem(422, "validation");
    let fields: Vec<&str> =
        body["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, vec![field], "{body}");
}

const BOOKISH: [&str; 4] = ["authors", "books", "chapters", "paragraphs"];

// ---------------------------------------------------------------------------------------
// restrict

#[tokio::test]
async fn restrict_blocks_with_at_most_100_blockers_and_their_total() {
    let app = app().await;
    make(&app, "categories", "c1", json!({"name": "Mugs"})).await;
    make(&app, "categories", "c2", json!({"name": "Empty"})).await;
    let mut children = BTreeSet::new();
    for i in 0..150 {
        let id = format!("p{i:03}");
        make(&app, "products", &id, json!({"sku": format!("SKU-{i}"), "category_id": "c1"})).await;
        children.insert(r("products", &id));
    }
    let events_before = all_events(&app).await;

    let resp = app.delete("/v1/categories/c1", &app.admin).await;
    let body = resp.assert_problem(409, "restrict");
    assert!(resp.header("deletion-id").is_none(), "a blocked delete creates no operation");
    assert_eq!(body["blockers_total"], 150, "{body}");
    let blockers = refs(&body["blockers"]);
    assert_eq!(blockers.len(), 100, "the list is capped at 100");
    let distinct: BTreeSet<Ref> = blockers.iter().cloned().collect();
    assert_eq!(distinct.len(), 100, "no blocker is listed twice");
    assert!(distinct.is_subset(&children), "blockers are the category's products: {blockers:?}");

    // The dry run says the same, and nothing changed.
    let plan = dry_run(&app, "categories", "c1").await;
    assert_eq!(plan["blockers_total"], 150, "{plan}");
    assert_eq!(plan["blockers"].as_array().map(Vec::len), Some(100), "{plan}");
    assert!(is_active(&app, "categories", "c1").await);
    assert_eq!(fetch(&app, "categories", "c1").await["version"], 1);
    assert_eq!(all_events(&app).await, events_before, "a blocked delete emits nothing");
    assert!(audit_actions(&app, "c1").await.iter().all(|(a, _)| a == "create"));

    // An unused category goes; once the products move away, so does c1.
    delete_ok(&app, "categories", "c2").await;
    for i in 0..150 {
        app.patch(&format!("/v1/products/p{i:03}"), &app.admin, &json!({"category_id": null})).await.assert_status(200);
    }
    delete_ok(&app, "categories", "c1").await;
}

// ---------------------------------------------------------------------------------------
// cascade

#[tokio::test]
async fn cascade_takes_three_levels_in_one_operation_audited_and_evented() {
    let app = app().await;
    make(&app, "authors", "a1", json!({"name": "Ann"})).await;
    make(&app, "authors", "a2", json!({"name": "Bob"})).await;
    let mut expected = BTreeSet::from([r("authors", "a1")]);
    for b in 0..2 {
        let book = format!("b{b}");
        make(&app, "books", &book, json!({"isbn": format!("isbn-{b}"), "author_id": "a1"})).await;
        expected.insert(r("books", &book));
        for c in 0..2 {
            let chapter = format!("b{b}c{c}");
            make(&app, "chapters", &chapter, json!({"title": "T", "book_id": book})).await;
            expected.insert(r("chapters", &chapter));
            let para = format!("b{b}c{c}p0");
            make(&app, "paragraphs", &para, json!({"text": "x", "chapter_id": chapter})).await;
            expected.insert(r("paragraphs", &para));
        }
    }
    // Another author's subtree stays.
    make(&app, "books", "other", json!({"isbn": "isbn-other", "author_id": "a2"})).await;
    make(&app, "chapters", "other-c", json!({"title": "T", "book_id": "other"})).await;

    let resp = app.delete("/v1/authors/a1?reason=duplicate", &app.admin).await;
    resp.assert_status(204);
    let del = resp.header("deletion-id").expect("Deletion-Id").to_string();

    assert_eq!(deleted_by(&app, &BOOKISH, &del).await, expected, "every record of the tree, one deletion id");
    for (c, id) in &expected {
        assert!(!is_active(&app, c, id).await, "{c}/{id} still readable as active");
        let rec = fetch(&app, c, id).await;
        assert_eq!(rec["version"], 2, "{rec}");
        assert_eq!(rec["delete_reason"], "duplicate", "{rec}");
        let want = if c == "authors" { "delete" } else { "cascade_delete" };
        assert_eq!(
            audit_actions(&app, id).await,
            vec![("create".to_string(), None), (want.to_string(), Some(del.clone()))],
            "audit of {c}/{id}"
        );
    }
    assert!(is_active(&app, "books", "other").await && is_active(&app, "chapters", "other-c").await);
    assert!(is_active(&app, "authors", "a2").await);

    // One record.deleted event per record, each carrying the operation.
    let deleted_events = events_of_type(&app, "record.deleted").await;
    let evented: Vec<Ref> = deleted_events
        .iter()
        .map(|e| {
            assert_eq!(e["deletion_id"], del.as_str(), "{e}");
            r(e["collection"].as_str().unwrap(), e["record_id"].as_str().unwrap())
        })
        .collect();
    assert_eq!(evented.len(), expected.len(), "one event per record: {evented:?}");
    assert_eq!(evented.into_iter().collect::<BTreeSet<_>>(), expected);
    let completed = events_of_type(&app, "deletion.completed").await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(
        (completed[0]["collection"].as_str(), completed[0]["record_id"].as_str()),
        (Some("authors"), Some("a1"))
    );

    // The operation lists exactly those, root first, done at once.
    let op = operation(&app, &del).await;
    assert_eq!(op["id"], del.as_str());
    assert_eq!(op["status"], "done", "{op}");
    assert_eq!(op["reason"], "duplicate");
    assert_eq!(op["actor"], fetch(&app, "authors", "a1").await["deleted_by"]);
    assert_eq!(op["root"], json!({"collection": "authors", "id": "a1"}));
    assert_eq!(refs(&op["records"])[0], r("authors", "a1"), "root first: {op}");
    assert_eq!(set(&op["records"]), expected);
    assert_eq!(op["records"].as_array().map(Vec::len), Some(expected.len()));
    assert_eq!(counts(&op["counts"]), counts_of(&expected));
    assert_eq!(op["restorable_until"], fetch(&app, "authors", "a1").await["purge_at"], "{op}");
    assert!(op["propagation"]["outbox"].is_object() && op["propagation"]["webhooks"].is_object(), "{op}");
    assert!(op["created_at"].is_string());
}

#[tokio::test]
async fn cycles_in_the_schema_and_in_the_data_terminate() {
    let app = app().await;
    // nodes -> nodes: a chain n1 <- n2 <- n3, closed into a ring by pointing n1 at n3.
    make(&app, "nodes", "n1", json!({"name": "1"})).await;
    make(&app, "nodes", "n2", json!({"name": "2", "parent_id": "n1"})).await;
    make(&app, "nodes", "n3", json!({"name": "3", "parent_id": "n2"})).await;
    make(&app, "nodes", "n4", json!({"name": "4", "parent_id": "n3"})).await;
    make(&app, "nodes", "loner", json!({"name": "x"})).await;
    app.patch("/v1/nodes/n1", &app.admin, &json!({"parent_id": "n3"})).await.assert_status(200);
    // lefts <-> rights: l1 <- r1 <- l2, and l1 pointing back at r1.
    make(&app, "lefts", "l1", json!({})).await;
    make(&app, "rights", "r1", json!({"left_id": "l1"})).await;
    make(&app, "lefts", "l2", json!({"right_id": "r1"})).await;
    app.patch("/v1/lefts/l1", &app.admin, &json!({"right_id": "r1"})).await.assert_status(200);

    let bound = Duration::from_secs(60);
    let plan = tokio::time::timeout(bound, dry_run(&app, "nodes", "n2")).await.expect("dry run terminates");
    let ring = BTreeSet::from([r("nodes", "n1"), r("nodes", "n2"), r("nodes", "n3"), r("nodes", "n4")]);
    assert_eq!(set(&plan["would_delete"]), ring, "{plan}");
    assert_eq!(plan["would_delete"].as_array().map(Vec::len), Some(4), "each once: {plan}");
    let del = tokio::time::timeout(bound, delete_ok(&app, "nodes", "n2")).await.expect("delete terminates");
    assert_eq!(deleted_by(&app, &["nodes"], &del).await, ring);
    assert!(is_active(&app, "nodes", "loner").await);
    assert_eq!(counts(&operation(&app, &del).await["counts"]), BTreeMap::from([("nodes".to_string(), 4)]));

    let del = tokio::time::timeout(bound, delete_ok(&app, "rights", "r1")).await.expect("delete terminates");
    assert_eq!(
        deleted_by(&app, &["lefts", "rights"], &del).await,
        BTreeSet::from([r("lefts", "l1"), r("lefts", "l2"), r("rights", "r1")])
    );

    // Restoring a ring brings it all back (every parent comes back with it).
    let resp = app.post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["restored"], 3, "{}", resp.text);
    for (c, id) in [("lefts", "l1"), ("lefts", "l2"), ("rights", "r1")] {
        assert!(is_active(&app, c, id).await, "{c}/{id}");
    }
}

#[tokio::test]
async fn a_restrict_inside_a_cascade_subtree_blocks_everything_and_names_the_blocker() {
    let app = app().await;
    make(&app, "projects", "p1", json!({"name": "Apollo"})).await;
    make(&app, "tasks", "t1", json!({"title": "a", "project_id": "p1"})).await;
    make(&app, "tasks", "t2", json!({"title": "b", "project_id": "p1"})).await;
    make(&app, "assignments", "as1", json!({"person": "ann", "task_id": "t2"})).await;
    let collections = ["projects", "tasks", "assignments", "reviews"];
    let before = all_records(&app, &collections).await;
    let events_before = all_events(&app).await;

    let body = app.delete("/v1/projects/p1", &app.admin).await.assert_problem(409, "restrict");
    assert_eq!(refs(&body["blockers"]), vec![r("assignments", "as1")], "{body}");
    assert_eq!(body["blockers_total"], 1);
    let plan = dry_run(&app, "projects", "p1").await;
    assert_eq!(refs(&plan["blockers"]), vec![r("assignments", "as1")], "{plan}");
    assert_eq!(plan["blockers_total"], 1);
    assert_eq!(all_records(&app, &collections).await, before, "a blocked delete changes nothing");
    assert_eq!(all_events(&app).await, events_before);

    // A restrict child that the same cascade takes does not block.
    app.delete("/v1/assignments/as1", &app.admin).await.assert_status(204);
    make(&app, "reviews", "rv1", json!({"project_id": "p1", "task_id": "t1"})).await;
    let plan = dry_run(&app, "projects", "p1").await;
    assert_eq!(plan["blockers_total"], 0, "{plan}");
    let del = delete_ok(&app, "projects", "p1").await;
    assert_eq!(
        deleted_by(&app, &collections, &del).await,
        BTreeSet::from([r("projects", "p1"), r("tasks", "t1"), r("tasks", "t2"), r("reviews", "rv1")])
    );
}

#[tokio::test]
async fn the_dry_run_is_exactly_what_the_delete_then_does() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    make(&app, "books", "b2", json!({"isbn": "2", "author_id": "a1"})).await;
    make(&app, "chapters", "c1", json!({"book_id": "b1"})).await;
    make(&app, "chapters", "c2", json!({"book_id": "b1"})).await;
    make(&app, "paragraphs", "x1", json!({"chapter_id": "c2"})).await;
    // Deleted before: not part of the plan.
    make(&app, "chapters", "c3", json!({"book_id": "b2"})).await;
    delete_ok(&app, "chapters", "c3").await;
    let before = all_records(&app, &BOOKISH).await;
    let events_before = all_events(&app).await;

    let plan = dry_run(&app, "authors", "a1").await;
    assert_eq!(plan["root"], json!({"collection": "authors", "id": "a1"}));
    let would = refs(&plan["would_delete"]);
    assert_eq!(would[0], r("authors", "a1"), "root first: {plan}");
    let expected: BTreeSet<Ref> =
        [("authors", "a1"), ("books", "b1"), ("books", "b2"), ("chapters", "c1"), ("chapters", "c2")]
            .into_iter()
            .map(|(c, i)| r(c, i))
            .chain([r("paragraphs", "x1")])
            .collect();
    assert_eq!(would.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(would.len(), expected.len());
    assert_eq!(counts(&plan["counts"]), counts_of(&expected));
    assert_eq!(plan["blockers"], json!([]));
    assert_eq!(plan["blockers_total"], 0);
    assert_eq!(plan["orphaned"], json!([]));
    assert_eq!(plan["eventual"], json!([]));
    assert_eq!(all_records(&app, &BOOKISH).await, before, "a dry run changes nothing");
    assert_eq!(all_events(&app).await, events_before, "a dry run emits nothing");

    let del = delete_ok(&app, "authors", "a1").await;
    assert_eq!(deleted_by(&app, &BOOKISH, &del).await, expected);
    let op = operation(&app, &del).await;
    assert_eq!(set(&op["records"]), expected);
    assert_eq!(counts(&op["counts"]), counts(&plan["counts"]));
}

// ---------------------------------------------------------------------------------------
// orphan

#[tokio::test]
async fn orphan_children_stay_active_and_keep_their_ref() {
    let app = app().await;
    make(&app, "customers", "cu1", json!({"name": "Ann"})).await;
    make(&app, "orders", "o1", json!({"total": 10, "customer_id": "cu1"})).await;
    make(&app, "orders", "o2", json!({"total": 20, "customer_id": "cu1"})).await;

    let plan = dry_run(&app, "customers", "cu1").await;
    assert_eq!(refs(&plan["would_delete"]), vec![r("customers", "cu1")], "{plan}");
    assert_eq!(set(&plan["orphaned"]), BTreeSet::from([r("orders", "o1"), r("orders", "o2")]), "{plan}");
    assert_eq!(plan["blockers_total"], 0);

    let del = delete_ok(&app, "customers", "cu1").await;
    for id in ["o1", "o2"] {
        let resp = app.get(&format!("/v1/orders/{id}"), &app.admin).await;
        resp.assert_status(200);
        let order = resp.json();
        assert_eq!(order["deleted"], false, "{order}");
        assert_eq!(order["customer_id"], "cu1", "the ref keeps its value: {order}");
        assert_eq!(order["version"], 1, "an orphaned child is not changed: {order}");
    }
    // The ref resolves to a deleted target.
    assert!(!is_active(&app, "customers", "cu1").await);
    assert_eq!(fetch(&app, "customers", "cu1").await["deleted"], true);
    let op = operation(&app, &del).await;
    assert_eq!(refs(&op["records"]), vec![r("customers", "cu1")], "{op}");
    assert_eq!(deleted_by(&app, &["customers", "orders"], &del).await, BTreeSet::from([r("customers", "cu1")]));
    // An orphan can still be patched (other fields), and be deleted on its own.
    app.patch("/v1/orders/o1", &app.admin, &json!({"total": 11})).await.assert_status(200);
    delete_ok(&app, "orders", "o2").await;
}

// ---------------------------------------------------------------------------------------
// eventual

#[tokio::test]
async fn eventual_answers_at_once_and_the_worker_finishes_the_operation() {
    let app = app().await;
    make(&app, "feeds", "f1", json!({"name": "news"})).await;
    make(&app, "feeds", "f2", json!({"name": "other"})).await;
    let mut expected = BTreeSet::from([r("feeds", "f1")]);
    for i in 0..7 {
        let item = format!("i{i}");
        make(&app, "items", &item, json!({"title": "t", "feed_id": "f1"})).await;
        make(&app, "item_tags", &format!("{item}-tag"), json!({"tag": "x", "item_id": item})).await;
        expected.insert(r("items", &item));
        expected.insert(r("item_tags", &format!("{item}-tag")));
    }
    make(&app, "items", "keep", json!({"title": "t", "feed_id": "f2"})).await;
    let collections = ["feeds", "items", "item_tags"];

    let plan = dry_run(&app, "feeds", "f1").await;
    assert_eq!(set(&plan["would_delete"]), expected, "{plan}");
    assert_eq!(refs(&plan["would_delete"])[0], r("feeds", "f1"));
    let eventual: BTreeSet<Ref> = expected.iter().filter(|(c, _)| c != "feeds").cloned().collect();
    assert_eq!(set(&plan["eventual"]), eventual, "{plan}");

    let del = delete_ok(&app, "feeds", "f1").await;
    assert!(!is_active(&app, "feeds", "f1").await);
    let op = operation(&app, &del).await;
    assert_eq!(op["status"], "pending", "{op}");
    for (c, id) in &eventual {
        assert!(is_active(&app, c, id).await, "{c}/{id} went before the worker ran");
    }
    assert!(events_of_type(&app, "deletion.completed").await.is_empty(), "not completed yet");

    // The worker, in batches of 3 (so several transactions).
    let n = run_eventual(&app, 3).await;
    assert_eq!(n, eventual.len() as u64, "every child and grandchild in the worker's count");
    assert_eq!(deleted_by(&app, &collections, &del).await, expected);
    for (c, id) in &eventual {
        assert!(!is_active(&app, c, id).await, "{c}/{id}");
        assert_eq!(audit_actions(&app, id).await.last().map(|(a, _)| a.as_str()), Some("cascade_delete"));
    }
    assert!(is_active(&app, "items", "keep").await && is_active(&app, "feeds", "f2").await);
    let op = operation(&app, &del).await;
    assert_eq!(op["status"], "done", "{op}");
    assert_eq!(set(&op["records"]), expected);
    assert_eq!(counts(&op["counts"]), counts(&plan["counts"]));
    let completed = events_of_type(&app, "deletion.completed").await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0]["deletion_id"], del.as_str());
    assert_eq!(completed[0]["record_id"], "f1");

    // Nothing left to do: another pass changes nothing and completes nothing twice.
    assert_eq!(run_eventual(&app, 3).await, 0);
    assert_eq!(events_of_type(&app, "deletion.completed").await.len(), 1);
}

#[tokio::test]
async fn an_eventual_child_held_by_a_restrict_blocks_the_delete_at_once() {
    let app = TestApp::with_schema(
        r#"
[collections.feeds.fields]
name = { type = "string" }
[collections.items.fields]
feed_id = { type = "ref", collection = "feeds", on_delete = "eventual" }
[collections.pins.fields]
item_id = { type = "ref", collection = "items", on_delete = "restrict" }
"#,
    )
    .await;
    make(&app, "feeds", "f1", json!({})).await;
    make(&app, "items", "i1", json!({"feed_id": "f1"})).await;
    make(&app, "pins", "pin1", json!({"item_id": "i1"})).await;
    let body = app.delete("/v1/feeds/f1", &app.admin).await.assert_problem(409, "restrict");
    assert_eq!(refs(&body["blockers"]), vec![r("pins", "pin1")], "{body}");
    assert!(is_active(&app, "feeds", "f1").await);
}

/// A restrict child that the eventual part itself deletes does not block (the dry run
/// says so), so the worker must delete both: it may not skip a record because its
/// restrict child is queued under another relation of the same operation.
#[tokio::test]
async fn the_eventual_worker_deletes_what_the_plan_promised_even_with_restrict_inside() {
    let app = TestApp::with_schema(
        r#"
[collections.feeds.fields]
name = { type = "string" }
[collections.items.fields]
feed_id = { type = "ref", collection = "feeds", on_delete = "eventual" }
[collections.pins.fields]
feed_id = { type = "ref", collection = "feeds", on_delete = "eventual" }
item_id = { type = "ref", collection = "items", on_delete = "restrict" }
"#,
    )
    .await;
    make(&app, "feeds", "f1", json!({})).await;
    make(&app, "items", "i1", json!({"feed_id": "f1"})).await;
    make(&app, "pins", "pin1", json!({"feed_id": "f1", "item_id": "i1"})).await;
    let plan = dry_run(&app, "feeds", "f1").await;
    let expected = BTreeSet::from([r("feeds", "f1"), r("items", "i1"), r("pins", "pin1")]);
    assert_eq!(set(&plan["would_delete"]), expected, "{plan}");
    assert_eq!(plan["blockers_total"], 0, "{plan}");
    let del = delete_ok(&app, "feeds", "f1").await;
    run_eventual(&app, 10).await;
    assert_eq!(operation(&app, &del).await["status"], "done");
    assert_eq!(deleted_by(&app, &["feeds", "items", "pins"], &del).await, expected);
}

#[tokio::test]
async fn restoring_a_pending_eventual_operation_stops_it() {
    let app = app().await;
    make(&app, "feeds", "f1", json!({})).await;
    make(&app, "items", "i1", json!({"feed_id": "f1"})).await;
    make(&app, "items", "i2", json!({"feed_id": "f1"})).await;
    let del = delete_ok(&app, "feeds", "f1").await;
    assert_eq!(operation(&app, &del).await["status"], "pending");

    let resp = app.post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["restored"], 1, "only the parent was deleted so far: {}", resp.text);
    assert_eq!(run_eventual(&app, 10).await, 0, "nothing is left for the worker");
    for (c, id) in [("feeds", "f1"), ("items", "i1"), ("items", "i2")] {
        assert!(is_active(&app, c, id).await, "{c}/{id}");
    }
    assert_eq!(fetch(&app, "items", "i1").await["version"], 1, "never deleted");
    assert_eq!(operation(&app, &del).await["status"], "done");
    let completed = events_of_type(&app, "deletion.completed").await;
    assert_eq!(completed.len(), 1, "{completed:?}");
}

/// The parent of a pending eventual cascade restored on its own: the cascade still ends as
/// an immediate one would have (restoring a cascade's root alone leaves its children
/// deleted), and restoring the operation brings the children back.
#[tokio::test]
async fn a_parent_restored_alone_while_its_eventual_cascade_is_pending_ends_like_a_cascade() {
    let app = app().await;
    make(&app, "feeds", "f1", json!({})).await;
    make(&app, "items", "i1", json!({"feed_id": "f1"})).await;
    let del = delete_ok(&app, "feeds", "f1").await;
    app.post_empty("/v1/feeds/f1:restore", &app.admin).await.assert_status(200);
    run_eventual(&app, 10).await;
    assert!(is_active(&app, "feeds", "f1").await);
    assert_eq!(deleted_by(&app, &["feeds", "items"], &del).await, BTreeSet::from([r("items", "i1")]));
    assert_eq!(operation(&app, &del).await["status"], "done");
    let resp = app.post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["restored"], 1, "{}", resp.text);
    assert!(is_active(&app, "items", "i1").await);
}

#[tokio::test]
async fn eventual_cascades_stay_in_their_tenant() {
    let app = app().await;
    let t2 = app.key("t2", "admin").await;
    make(&app, "feeds", "f1", json!({})).await;
    make(&app, "items", "i1", json!({"feed_id": "f1"})).await;
    make_as(&app, &t2, "feeds", "f1", json!({})).await;
    make_as(&app, &t2, "items", "i1", json!({"feed_id": "f1"})).await;
    make_as(&app, &t2, "items", "i2", json!({"feed_id": "f1"})).await;
    let del = delete_ok(&app, "feeds", "f1").await;
    assert_eq!(run_eventual(&app, 1).await, 1, "t1's one item only");
    assert_eq!(deleted_by(&app, &["feeds", "items"], &del).await, BTreeSet::from([r("feeds", "f1"), r("items", "i1")]));
    for (c, id) in [("feeds", "f1"), ("items", "i1"), ("items", "i2")] {
        let resp = app.get(&format!("/v1/{c}/{id}"), &t2).await;
        resp.assert_status(200);
        assert_eq!(resp.json()["version"], 1, "{}", resp.text);
    }
}

#[tokio::test]
async fn a_cascade_into_a_hard_delete_collection_purges_the_children() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "drafts", "d1", json!({"body": "x", "author_id": "a1"})).await;
    make(&app, "drafts", "d2", json!({"body": "y", "author_id": "a1"})).await;
    let plan = dry_run(&app, "authors", "a1").await;
    assert_eq!(set(&plan["would_delete"]), BTreeSet::from([r("authors", "a1"), r("drafts", "d1"), r("drafts", "d2")]));
    let del = delete_ok(&app, "authors", "a1").await;
    for id in ["d1", "d2"] {
        app.get(&format!("/v1/drafts/{id}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
        assert_eq!(audit_actions(&app, id).await.last(), Some(&("purge".to_string(), Some(del.clone()))));
    }
    let purged: BTreeSet<String> = events_of_type(&app, "record.purged")
        .await
        .iter()
        .map(|e| e["record_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(purged, BTreeSet::from(["d1".to_string(), "d2".to_string()]));
    assert_eq!(
        counts(&operation(&app, &del).await["counts"]),
        BTreeMap::from([("authors".into(), 1), ("drafts".into(), 2)])
    );
    // The purged children cannot come back; the rest of the operation can.
    let resp = app.post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["restored"], 1, "{}", resp.text);
    assert!(is_active(&app, "authors", "a1").await);
}

// ---------------------------------------------------------------------------------------
// restoring operations

#[tokio::test]
async fn a_cascaded_child_answers_repeated_deletes_with_its_operation() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    let del = delete_ok(&app, "authors", "a1").await;
    let again = delete_ok(&app, "books", "b1").await;
    assert_eq!(again, del, "an already deleted record names the operation that deleted it");
    assert_eq!(fetch(&app, "books", "b1").await["version"], 2, "nothing changed");
    assert_eq!(audit_actions(&app, "b1").await.len(), 2);
}

#[tokio::test]
async fn the_root_restored_alone_then_the_operation_brings_the_rest() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    make(&app, "chapters", "c1", json!({"book_id": "b1"})).await;
    let del = delete_ok(&app, "authors", "a1").await;
    app.post_empty("/v1/authors/a1:restore", &app.admin).await.assert_status(200);
    assert!(!is_active(&app, "books", "b1").await, "restoring the root alone leaves its cascade deleted");
    let resp = app.post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin).await;
    resp.assert_status(200);
    let body = resp.json();
    assert_eq!(body["restored"], 2, "{body}");
    assert_eq!(fetch(&app, "authors", "a1").await["version"], 3, "the root is not restored twice");
    assert!(is_active(&app, "books", "b1").await && is_active(&app, "chapters", "c1").await);
}

#[tokio::test]
async fn restoring_an_operation_leaves_records_deleted_before_it_deleted() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    make(&app, "books", "b2", json!({"isbn": "2", "author_id": "a1"})).await;
    make(&app, "chapters", "c1", json!({"book_id": "b1"})).await;
    make(&app, "chapters", "c2", json!({"book_id": "b2"})).await;
    // b2 (with c2) is deleted on its own first.
    let first = delete_ok(&app, "books", "b2").await;
    let second = delete_ok(&app, "authors", "a1").await;
    assert_eq!(
        deleted_by(&app, &BOOKISH, &second).await,
        BTreeSet::from([r("authors", "a1"), r("books", "b1"), r("chapters", "c1")])
    );

    let resp = app.post_empty(&format!("/v1/deletions/{second}:restore"), &app.admin).await;
    resp.assert_status(200);
    let body = resp.json();
    assert_eq!(body["deletion_id"], second.as_str());
    assert_eq!(body["restored"], 3, "{body}");
    assert_eq!(body["next_cursor"], Value::Null);
    let items: BTreeSet<Ref> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|v| {
            assert_eq!(v["deleted"], false, "{v}");
            r(v["collection"].as_str().unwrap(), v["id"].as_str().unwrap())
        })
        .collect();
    assert_eq!(items, BTreeSet::from([r("authors", "a1"), r("books", "b1"), r("chapters", "c1")]));
    for (c, id) in [("authors", "a1"), ("books", "b1"), ("chapters", "c1")] {
        let rec = fetch(&app, c, id).await;
        assert_eq!((rec["deleted"].clone(), rec["version"].clone()), (json!(false), json!(3)), "{rec}");
        assert_eq!(audit_actions(&app, id).await.last(), Some(&("restore".to_string(), Some(second.clone()))));
    }
    // Deleted before, by another operation: still deleted, untouched.
    for (c, id) in [("books", "b2"), ("chapters", "c2")] {
        let rec = fetch(&app, c, id).await;
        assert_eq!(rec["deleted"], true, "{rec}");
        assert_eq!(rec["deletion_id"], first.as_str(), "{rec}");
        assert_eq!(rec["version"], 2, "{rec}");
    }
    assert_eq!(events_of_type(&app, "record.restored").await.len(), 3);

    // Restoring again changes nothing; the other operation can now come back too.
    let again = app.post_empty(&format!("/v1/deletions/{second}:restore"), &app.admin).await;
    again.assert_status(200);
    assert_eq!(again.json()["restored"], 0, "{}", again.text);
    assert_eq!(fetch(&app, "authors", "a1").await["version"], 3);
    let resp = app.post_empty(&format!("/v1/deletions/{first}:restore"), &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["restored"], 2, "{}", resp.text);
}

#[tokio::test]
async fn restoring_an_operation_is_all_or_nothing() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "authors", "a2", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "978-1", "author_id": "a1"})).await;
    make(&app, "chapters", "c1", json!({"book_id": "b1"})).await;
    let del = delete_ok(&app, "authors", "a1").await;
    // A new book takes the cascaded book's unique value.
    make(&app, "books", "thief", json!({"isbn": "978-1", "author_id": "a2"})).await;
    let before = all_records(&app, &BOOKISH).await;
    let events_before = all_events(&app).await;

    let resp = app.post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin).await;
    let body = resp.assert_problem(409, "restore-conflict");
    assert_eq!(
        body["conflicts"],
        json!([{"collection": "books", "id": "b1", "type": "unique-conflict", "conflicting_id": "thief"}]),
        "{body}"
    );
    assert_eq!(all_records(&app, &BOOKISH).await, before, "nothing restored");
    assert_eq!(all_events(&app).await, events_before);
    assert_eq!(operation(&app, &del).await["status"], "done");

    // Once the value is free again, the whole operation comes back.
    delete_ok(&app, "books", "thief").await;
    let resp = app.post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["restored"], 3, "{}", resp.text);
}

#[tokio::test]
async fn a_refused_restore_lists_every_conflict() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "authors", "a2", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    make(&app, "books", "b2", json!({"isbn": "2", "author_id": "a2"})).await;
    make(&app, "chapters", "c1", json!({"book_id": "b1"})).await;
    make(&app, "chapters", "c2", json!({"book_id": "b2"})).await;
    make(&app, "chapters", "c3", json!({"book_id": "b2"})).await;
    // One operation takes a book (and its chapters); then each conflict is set up.
    let op = delete_ok(&app, "books", "b2").await;
    // c2: purged since. c3: fine on its own. b2: its isbn taken, and its author deleted.
    app.post_empty("/v1/chapters/c2:purge", &app.admin).await.assert_status(204);
    make(&app, "books", "b3", json!({"isbn": "2", "author_id": "a1"})).await;
    delete_ok(&app, "authors", "a2").await;
    let before = all_records(&app, &BOOKISH).await;

    let body = app
        .post_empty(&format!("/v1/deletions/{op}:restore"), &app.admin)
        .await
        .assert_problem(409, "restore-conflict");
    let mut conflicts: Vec<Value> = body["conflicts"].as_array().expect("conflicts").clone();
    conflicts.sort_by_key(|c| (c["id"].to_string(), c["type"].to_string()));
    assert_eq!(
        conflicts,
        vec![
            json!({"collection": "books", "id": "b2", "type": "parent-deleted", "parent": {"collection": "authors", "id": "a2"}}),
            json!({"collection": "books", "id": "b2", "type": "unique-conflict", "conflicting_id": "b3"}),
            json!({"collection": "chapters", "id": "c2", "type": "purged"}),
        ],
        "{body}"
    );
    assert_eq!(all_records(&app, &BOOKISH).await, before, "nothing restored");
}

#[tokio::test]
async fn a_dry_run_of_another_tenants_record_is_not_found() {
    let app = app().await;
    let t2 = app.key("t2", "admin").await;
    make(&app, "authors", "a1", json!({})).await;
    app.delete("/v1/authors/a1?dry_run=true", &t2).await.assert_problem(404, "not-found");
    app.delete("/v1/authors/nope?dry_run=true", &app.admin).await.assert_problem(404, "not-found");
    let reader = app.key("t1", "read").await;
    let body = app.delete("/v1/authors/a1?dry_run=true", &reader).await.assert_problem(403, "forbidden");
    assert_eq!(body["missing_scope"], "delete");
}

#[tokio::test]
async fn an_operation_past_its_window_cannot_be_restored() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    let del = delete_ok(&app, "authors", "a1").await;
    app.clock.advance(Duration::from_secs(7 * 24 * 3600 + 1));
    let body = app
        .post_empty(&format!("/v1/deletions/{del}:restore"), &app.admin)
        .await
        .assert_problem(409, "restore-conflict");
    let conflicts: BTreeSet<(String, String, String)> = body["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .map(|c| {
            (
                c["collection"].as_str().unwrap().into(),
                c["id"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        conflicts,
        BTreeSet::from([
            ("authors".into(), "a1".into(), "window-elapsed".into()),
            ("books".into(), "b1".into(), "window-elapsed".into())
        ]),
        "{body}"
    );
    assert_eq!(fetch(&app, "authors", "a1").await["deleted"], true);
}

#[tokio::test]
async fn a_cascaded_child_cannot_come_back_alone_except_under_orphan() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    delete_ok(&app, "authors", "a1").await;
    let body = app.post_empty("/v1/books/b1:restore", &app.admin).await.assert_problem(409, "parent-deleted");
    assert_eq!(refs(&body["blockers"]), vec![r("authors", "a1")], "{body}");
    assert_eq!(fetch(&app, "books", "b1").await["deleted"], true);
    // The parent alone may come back (it has no parent); then the child may.
    app.post_empty("/v1/authors/a1:restore", &app.admin).await.assert_status(200);
    let resp = app.post_empty("/v1/books/b1:restore", &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["deleted"], false);

    // Under orphan: an order deleted on its own comes back although its customer is gone.
    make(&app, "customers", "cu1", json!({})).await;
    make(&app, "orders", "o1", json!({"customer_id": "cu1"})).await;
    delete_ok(&app, "orders", "o1").await;
    delete_ok(&app, "customers", "cu1").await;
    let resp = app.post_empty("/v1/orders/o1:restore", &app.admin).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["customer_id"], "cu1", "{}", resp.text);
}

// ---------------------------------------------------------------------------------------
// refs on writes

#[tokio::test]
async fn refs_must_point_at_an_active_parent_of_the_tenant() {
    let app = app().await;
    let t2 = app.key("t2", "admin").await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "authors", "gone", json!({})).await;
    delete_ok(&app, "authors", "gone").await;
    make_as(&app, &t2, "authors", "theirs", json!({})).await;

    for (parent, why) in [("nope", "missing"), ("gone", "deleted"), ("theirs", "another tenant's")] {
        let resp = app.post("/v1/books", &app.admin, &json!({"isbn": why, "author_id": parent})).await;
        assert_names_field(&resp, "author_id");
    }
    // The same parent id in t2 resolves in t2 only.
    make_as(&app, &t2, "books", "tb", json!({"isbn": "t2", "author_id": "theirs"})).await;

    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    for parent in ["nope", "gone", "theirs"] {
        let resp = app.patch("/v1/books/b1", &app.admin, &json!({"author_id": parent})).await;
        assert_names_field(&resp, "author_id");
    }
    let rec = fetch(&app, "books", "b1").await;
    assert_eq!((rec["author_id"].clone(), rec["version"].clone()), (json!("a1"), json!(1)), "{rec}");
    // A patch of other fields keeps working, and so does moving to an active parent.
    make(&app, "authors", "a2", json!({})).await;
    let resp = app.patch("/v1/books/b1", &app.admin, &json!({"author_id": "a2"})).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["author_id"], "a2");
}

// ---------------------------------------------------------------------------------------
// tenants and scopes

#[tokio::test]
async fn cascades_and_restricts_never_cross_tenants() {
    let app = app().await;
    let t2 = app.key("t2", "admin").await;
    // Both tenants own an author "a1" with a book under it, and a category "c1" with a product.
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    make_as(&app, &t2, "authors", "a1", json!({})).await;
    make_as(&app, &t2, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    make_as(&app, &t2, "books", "b2", json!({"isbn": "2", "author_id": "a1"})).await;
    make(&app, "categories", "c1", json!({})).await;
    make_as(&app, &t2, "categories", "c1", json!({})).await;
    make_as(&app, &t2, "products", "p1", json!({"sku": "s", "category_id": "c1"})).await;

    let plan = dry_run(&app, "authors", "a1").await;
    assert_eq!(set(&plan["would_delete"]), BTreeSet::from([r("authors", "a1"), r("books", "b1")]), "{plan}");
    let del = delete_ok(&app, "authors", "a1").await;
    let op = operation(&app, &del).await;
    assert_eq!(counts(&op["counts"]), BTreeMap::from([("authors".into(), 1), ("books".into(), 1)]), "{op}");
    // t2's records are untouched.
    for (c, id) in [("authors", "a1"), ("books", "b1"), ("books", "b2")] {
        let resp = app.get(&format!("/v1/{c}/{id}"), &t2).await;
        resp.assert_status(200);
        assert_eq!(resp.json()["version"], 1, "{}", resp.text);
    }
    // t2's product does not hold t1's category back.
    delete_ok(&app, "categories", "c1").await;
    app.get("/v1/products/p1", &t2).await.assert_status(200);
    // And t1's operation is invisible to t2.
    app.get(&format!("/v1/deletions/{del}"), &t2).await.assert_problem(404, "not-found");
    app.post_empty(&format!("/v1/deletions/{del}:restore"), &t2).await.assert_problem(404, "not-found");
    assert_eq!(fetch(&app, "authors", "a1").await["deleted"], true, "t2's restore attempt changed nothing");
}

#[tokio::test]
async fn deletion_operations_need_read_deleted_and_restore() {
    let app = app().await;
    make(&app, "authors", "a1", json!({})).await;
    make(&app, "books", "b1", json!({"isbn": "1", "author_id": "a1"})).await;
    let del = delete_ok(&app, "authors", "a1").await;
    let path = format!("/v1/deletions/{del}");
    let restore = format!("/v1/deletions/{del}:restore");

    let reader = app.key("t1", "read").await;
    let body = app.get(&path, &reader).await.assert_problem(403, "forbidden");
    assert_eq!(body["missing_scope"], "read_deleted");
    let deleted_reader = app.key("t1", "read_deleted").await;
    app.get(&path, &deleted_reader).await.assert_status(200);

    let body = app.post_empty(&restore, &deleted_reader).await.assert_problem(403, "forbidden");
    assert_eq!(body["missing_scope"], "restore");
    // Restore narrowed to the root's collection does not cover the cascaded books.
    let narrow = app.key("t1", "restore:authors").await;
    let body = app.post_empty(&restore, &narrow).await.assert_problem(403, "forbidden");
    assert_eq!(body["missing_scope"], "restore");
    assert_eq!(fetch(&app, "authors", "a1").await["deleted"], true, "a refused restore changes nothing");

    let restorer = app.key("t1", "restore").await;
    let resp = app.post_empty(&restore, &restorer).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["restored"], 2, "{}", resp.text);
    app.get("/v1/deletions/del_unknown", &app.admin).await.assert_problem(404, "not-found");
}
