//! Retention over the API: the recovery window, the trash, legal holds, `:purge`, GDPR
//! erasure and the Prometheus metrics that count them.
//!
//! Time only moves when a test advances the manual clock, so "after the window" is exact
//! and nothing sleeps. Raw checks of the database go through the harness's `raw`
//! helpers, so they run on both stores.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tombstone_store::prelude::*;

use axum::http::Method;
use common::{TEST_SCHEMA, TestApp, TestResponse};
use serde_json::{Value, json};
use tombstone_domain::time::{Clock, ManualClock, Timestamp};
use tombstone_server::purge::{Pacer, PurgeWorker};

const DAY: Duration = Duration::from_secs(86_400);

// ---------------------------------------------------------------------------------------
// Helpers

fn product(sku: &str) -> Value {
    json!({"sku": sku, "name": format!("Product {sku}")})
}

fn id_of(record: &Value) -> String {
    record["id"].as_str().expect("id").to_string()
}

fn ts(value: &Value) -> Timestamp {
    Timestamp::parse_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}")))
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

/// Creates a record and soft-deletes it; returns its deleted representation (`key` needs
/// `read_deleted`).
async fn create_deleted(app: &TestApp, collection: &str, key: &str, body: &Value) -> Value {
    let id = id_of(&app.create(collection, key, body).await);
    app.delete(&format!("/v1/{collection}/{id}"), key).await.assert_status(204);
    let r = app.get(&format!("/v1/{collection}/{id}?include=deleted"), key).await;
    r.assert_status(200);
    r.json()
}

/// One trash page: its items and next cursor.
async fn trash_page(app: &TestApp, key: &str, query: &str) -> (Vec<Value>, Option<String>) {
    let r = app.get(&format!("/v1/trash{query}"), key).await;
    r.assert_status(200);
    let body = r.json();
    let items = body["items"].as_array().unwrap_or_else(|| panic!("items: {body}")).clone();
    let next = match &body["next_cursor"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("next_cursor must be a string or null, got {other}"),
    };
    (items, next)
}

/// The (collection, id) pairs of a trash page, in order.
fn pairs(items: &[Value]) -> Vec<(String, String)> {
    items.iter().map(|i| (i["collection"].as_str().unwrap().to_string(), id_of(i))).collect()
}

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/audit{query}"), &app.admin).await;
    r.assert_status(200);
    r.json()["items"].as_array().expect("items").clone()
}

async fn events(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/events{query}"), &app.admin).await;
    r.assert_status(200);
    r.json()["items"].as_array().expect("items").clone()
}

/// The key id (`key_…`) a record was deleted by, as the API shows it.
fn deleted_by(record: &Value) -> String {
    record["deleted_by"].as_str().unwrap_or_else(|| panic!("deleted_by: {record}")).to_string()
}

#[track_caller]
fn assert_missing_scope(r: &TestResponse, scope: &str) {
    let body = r.assert_problem(403, "forbidden");
    assert_eq!(body["missing_scope"], scope, "{body}");
}

// ---------------------------------------------------------------------------------------
// The recovery window

#[tokio::test]
async fn restore_works_inside_the_window_and_not_after_purge_at() {
    let app = TestApp::new().await;
    let a = create_deleted(&app, "products", &app.admin, &product("W-A")).await;
    let b = create_deleted(&app, "products", &app.admin, &product("W-B")).await;
    let (a_id, b_id) = (id_of(&a), id_of(&b));
    // The window is the collection's retention (products inherit the 7d default).
    assert_eq!(ts(&a["purge_at"]).as_micros() - ts(&a["deleted_at"]).as_micros(), 7 * 86_400 * 1_000_000, "{a}");

    // One second before purge_at: restorable, and in the trash.
    app.clock.advance(7 * DAY - Duration::from_secs(1));
    let (items, _) = trash_page(&app, &app.admin, "?collection=products").await;
    assert!(pairs(&items).contains(&("products".into(), b_id.clone())), "{items:?}");
    let restored = app.post_empty(&format!("/v1/products/{a_id}:restore"), &app.admin).await;
    restored.assert_status(200);
    assert_eq!(restored.json()["deleted"], false);
    assert_eq!(restored.json()["purge_at"], Value::Null);

    // Past purge_at: restore is a 404 although no purge has run ...
    app.clock.advance(Duration::from_secs(2));
    app.post_empty(&format!("/v1/products/{b_id}:restore"), &app.admin).await.assert_problem(404, "not-found");
    // ... the record is still there for include=deleted readers, unchanged ...
    let still = app.get(&format!("/v1/products/{b_id}?include=deleted"), &app.admin).await;
    still.assert_status(200);
    let still = still.json();
    assert_eq!(still["deleted"], true);
    assert_eq!(still["version"], b["version"], "a refused restore changes nothing");
    assert_eq!(still["purge_at"], b["purge_at"]);
    let listed = app.get("/v1/products?include=deleted", &app.admin).await;
    listed.assert_status(200);
    assert!(listed.json()["items"].as_array().unwrap().iter().any(|i| i["id"] == b_id.as_str()));
    app.get(&format!("/v1/products/{b_id}"), &app.admin).await.assert_problem(404, "not-found");
    // ... and it has left the trash.
    let (items, _) = trash_page(&app, &app.admin, "").await;
    assert!(!items.iter().any(|i| i["id"] == b_id.as_str()), "expired records are not in the trash: {items:?}");
    assert_eq!(
        app.raw_int(&format!("select count(*) from rec_products where id = '{b_id}'")).await,
        1,
        "no purge has run"
    );
}

#[tokio::test]
async fn each_collection_has_its_own_window() {
    let app = TestApp::new().await;
    let customer = create_deleted(&app, "customers", &app.admin, &json!({"email": "w@example.com"})).await;
    let item = create_deleted(&app, "products", &app.admin, &product("W-1")).await;
    assert_eq!(ts(&customer["purge_at"]).as_micros() - ts(&customer["deleted_at"]).as_micros(), 86_400 * 1_000_000);

    app.clock.advance(DAY + Duration::from_secs(1));
    let (items, _) = trash_page(&app, &app.admin, "").await;
    assert_eq!(pairs(&items), [("products".to_string(), id_of(&item))], "only the 7d record is still restorable");
    app.post_empty(&format!("/v1/customers/{}:restore", id_of(&customer)), &app.admin)
        .await
        .assert_problem(404, "not-found");
    app.post_empty(&format!("/v1/products/{}:restore", id_of(&item)), &app.admin).await.assert_status(200);
}

// ---------------------------------------------------------------------------------------
// The trash

#[tokio::test]
async fn trash_lists_deleted_records_newest_first_across_collections() {
    let app = TestApp::new().await;
    let mut expected = Vec::new();
    for (i, collection) in ["products", "customers", "categories", "products", "customers"].iter().enumerate() {
        let body = match *collection {
            "products" => product(&format!("T-{i}")),
            "customers" => json!({"email": format!("t{i}@example.com")}),
            _ => json!({"name": format!("Category {i}")}),
        };
        let r = create_deleted(&app, collection, &app.admin, &body).await;
        expected.push(((*collection).to_string(), id_of(&r)));
        app.clock.advance(Duration::from_secs(60));
    }
    // Neither active records nor another tenant's deleted ones belong in the trash.
    app.create("products", &app.admin, &product("ACTIVE")).await;
    let other = app.key("t2", "admin").await;
    create_deleted(&app, "products", &other, &product("OTHER")).await;

    let (items, next) = trash_page(&app, &app.admin, "").await;
    expected.reverse();
    assert_eq!(pairs(&items), expected);
    assert_eq!(next, None);
    let deleted_at: Vec<Timestamp> = items.iter().map(|i| ts(&i["deleted_at"])).collect();
    assert!(deleted_at.windows(2).all(|w| w[0] > w[1]), "{deleted_at:?}");
    for item in &items {
        assert_eq!(item["deleted"], true, "{item}");
        for member in ["version", "created_at", "deleted_by", "deletion_id", "purge_at", "legal_hold"] {
            assert!(!item[member].is_null(), "{member} missing in {item}");
        }
    }
}

#[tokio::test]
async fn trash_filters_by_collection_time_actor_and_expiry() {
    let app = TestApp::new().await;
    let alice = app.key("t1", "write,delete,read_deleted").await;
    let bob = app.key("t1", "write,delete,read_deleted").await;
    let p1 = create_deleted(&app, "products", &alice, &product("F-1")).await;
    app.clock.advance(Duration::from_secs(60));
    let c1 = create_deleted(&app, "customers", &bob, &json!({"email": "f1@example.com"})).await;
    app.clock.advance(Duration::from_secs(60));
    let p2 = create_deleted(&app, "products", &bob, &product("F-2")).await;
    app.clock.advance(Duration::from_secs(60));
    let c2 = create_deleted(&app, "customers", &alice, &json!({"email": "f2@example.com"})).await;
    let ids = |items: &[Value]| items.iter().map(id_of).collect::<Vec<_>>();

    let (items, _) = trash_page(&app, &app.admin, "?collection=products").await;
    assert_eq!(ids(&items), [id_of(&p2), id_of(&p1)]);
    let (items, _) = trash_page(&app, &app.admin, "?collection=customers").await;
    assert_eq!(ids(&items), [id_of(&c2), id_of(&c1)]);

    // deleted_since is inclusive, deleted_before exclusive.
    let since = c1["deleted_at"].as_str().unwrap();
    let (items, _) = trash_page(&app, &app.admin, &format!("?deleted_since={since}")).await;
    assert_eq!(ids(&items), [id_of(&c2), id_of(&p2), id_of(&c1)]);
    let before = p2["deleted_at"].as_str().unwrap();
    let (items, _) = trash_page(&app, &app.admin, &format!("?deleted_before={before}")).await;
    assert_eq!(ids(&items), [id_of(&c1), id_of(&p1)]);
    let (items, _) = trash_page(&app, &app.admin, &format!("?deleted_since={since}&deleted_before={before}")).await;
    assert_eq!(ids(&items), [id_of(&c1)]);

    let alice_id = deleted_by(&p1);
    assert_eq!(deleted_by(&c2), alice_id);
    assert_ne!(deleted_by(&c1), alice_id);
    let (items, _) = trash_page(&app, &app.admin, &format!("?deleted_by={alice_id}")).await;
    assert_eq!(ids(&items), [id_of(&c2), id_of(&p1)]);
    let (items, _) =
        trash_page(&app, &app.admin, &format!("?deleted_by={}&collection=customers", deleted_by(&c1))).await;
    assert_eq!(ids(&items), [id_of(&c1)]);

    // "Expiring soon": customers keep 1 day, products 7.
    let soon = Timestamp::from_micros(ts(&c2["deleted_at"]).as_micros() + 2 * 86_400 * 1_000_000).to_rfc3339();
    let (items, _) = trash_page(&app, &app.admin, &format!("?purge_before={soon}")).await;
    assert_eq!(ids(&items), [id_of(&c2), id_of(&c1)]);
    let (items, _) = trash_page(&app, &app.admin, &format!("?purge_before={soon}&collection=products")).await;
    assert!(items.is_empty(), "{items:?}");

    // Bad parameters are 400s, never 500s.
    for query in [
        "?collection=nope",
        "?deleted_since=yesterday",
        "?deleted_before=2026-13-01T00:00:00Z",
        "?purge_before=1",
        "?limit=0",
        "?limit=501",
        "?cursor=not-a-cursor",
        "?filter[deleted]=true",
        "?colection=products",
    ] {
        let r = app.get(&format!("/v1/trash{query}"), &app.admin).await;
        r.assert_problem(400, "invalid-parameter");
    }
}

#[tokio::test]
async fn trash_cursor_paging_returns_each_item_exactly_once() {
    let app = TestApp::new().await;
    let mut all = HashSet::new();
    let mut created = Vec::new();
    for group in 0..6 {
        for (j, collection) in ["products", "customers", "categories", "products"].iter().enumerate() {
            let body = match *collection {
                "products" => product(&format!("P-{group}-{j}")),
                "customers" => json!({"email": format!("p{group}-{j}@example.com")}),
                _ => json!({"name": format!("C {group} {j}")}),
            };
            created.push((group, (*collection).to_string(), id_of(&app.create(collection, &app.admin, &body).await)));
        }
    }
    // Each group is deleted at one and the same instant (as a cascade does), so the
    // keyset's tie-break over (collection, id) is exercised across collections.
    let base = app.clock.now().as_micros() + 60_000_000;
    for (group, collection, id) in created {
        app.clock.set(Timestamp::from_micros(base + group * 1_000_000));
        app.delete(&format!("/v1/{collection}/{id}"), &app.admin).await.assert_status(204);
        all.insert((collection, id));
    }
    app.clock.set(Timestamp::from_micros(base + 3_600_000_000));
    let (items, _) = trash_page(&app, &app.admin, "?limit=500").await;
    let instants: HashSet<&str> = items.iter().map(|i| i["deleted_at"].as_str().unwrap()).collect();
    assert_eq!(instants.len(), 6, "four records share each deletion instant");

    let (everything, next) = trash_page(&app, &app.admin, "?limit=500").await;
    assert_eq!(next, None);
    assert_eq!(everything.len(), all.len());
    let everything = pairs(&everything);
    assert_eq!(everything.iter().cloned().collect::<HashSet<_>>(), all);

    for limit in [1, 3, 4, 5, 7, 24] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let query = match &cursor {
                None => format!("?limit={limit}"),
                Some(c) => format!("?limit={limit}&cursor={c}"),
            };
            let (items, next) = trash_page(&app, &app.admin, &query).await;
            assert!(items.len() <= limit, "a page holds at most limit items");
            pages += 1;
            assert!(pages <= all.len() + 1, "paging does not terminate");
            seen.extend(pairs(&items));
            match next {
                Some(n) => {
                    assert_eq!(items.len(), limit, "only a full page has a next cursor");
                    cursor = Some(n);
                }
                None => break,
            }
        }
        assert_eq!(seen, everything, "limit {limit}: pages concatenate to the full, ordered list");
    }

    // Paging stays stable while records are deleted and restored between pages: what was
    // there and stays there is returned exactly once.
    let (first, cursor) = trash_page(&app, &app.admin, "?limit=5").await;
    let cursor = cursor.expect("more pages");
    let fresh = create_deleted(&app, "products", &app.admin, &product("NEW")).await;
    let (collection, gone) = everything.last().unwrap().clone();
    app.post_empty(&format!("/v1/{collection}/{gone}:restore"), &app.admin).await.assert_status(200);
    let (rest, next) = trash_page(&app, &app.admin, &format!("?limit=500&cursor={cursor}")).await;
    assert_eq!(next, None);
    let mut seen = pairs(&first);
    seen.extend(pairs(&rest));
    let expected: Vec<_> = everything.iter().filter(|p| p.1 != gone).cloned().collect();
    assert_eq!(seen, expected, "a record deleted after the first page sorts before the cursor and is not repeated");
    assert!(!seen.iter().any(|p| p.1 == id_of(&fresh)));
}

#[tokio::test]
async fn trash_needs_read_deleted_and_honours_narrowed_scopes() {
    let app = TestApp::new().await;
    let p = create_deleted(&app, "products", &app.admin, &product("S-1")).await;
    create_deleted(&app, "customers", &app.admin, &json!({"email": "s1@example.com"})).await;

    let reader = app.key("t1", "read,write,delete,restore").await;
    assert_missing_scope(&app.get("/v1/trash", &reader).await, "read_deleted");
    assert_missing_scope(&app.get("/v1/trash?collection=products", &reader).await, "read_deleted");

    let narrow = app.key("t1", "read_deleted:products").await;
    let (items, _) = trash_page(&app, &narrow, "").await;
    assert_eq!(pairs(&items), [("products".to_string(), id_of(&p))]);
    let (items, _) = trash_page(&app, &narrow, "?collection=products").await;
    assert_eq!(items.len(), 1);
    assert_missing_scope(&app.get("/v1/trash?collection=customers", &narrow).await, "read_deleted");

    let wide = app.key("t1", "read_deleted").await;
    assert_eq!(trash_page(&app, &wide, "").await.0.len(), 2);
}

#[tokio::test]
async fn trash_is_confined_to_the_tenant() {
    let app = TestApp::new().await;
    let mine = create_deleted(&app, "products", &app.admin, &product("SAME")).await;
    let other_admin = app.key("t2", "admin").await;
    let theirs = create_deleted(&app, "products", &other_admin, &product("SAME")).await;

    let (items, _) = trash_page(&app, &app.admin, "").await;
    assert_eq!(items.iter().map(id_of).collect::<Vec<_>>(), [id_of(&mine)]);
    let (items, _) = trash_page(&app, &other_admin, "").await;
    assert_eq!(items.iter().map(id_of).collect::<Vec<_>>(), [id_of(&theirs)]);
    // Another tenant's deleted_by does not open a door either.
    let (items, _) = trash_page(&app, &app.admin, &format!("?deleted_by={}", deleted_by(&theirs))).await;
    assert!(items.is_empty(), "{items:?}");
}

// ---------------------------------------------------------------------------------------
// Legal holds

async fn hold(app: &TestApp, path: &str, case: &str, reason: &str) -> Value {
    let r = app.post(&format!("{path}:hold"), &app.admin, &json!({"case": case, "reason": reason})).await;
    r.assert_status(201);
    r.json()
}

fn hold_ids(record: &Value) -> Vec<String> {
    record["holds"]
        .as_array()
        .unwrap_or_else(|| panic!("holds missing: {record}"))
        .iter()
        .map(|h| h["hold_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn holds_stack_until_the_last_one_is_released() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-1")).await);
    let path = format!("/v1/products/{id}");
    let fresh = app.get(&path, &app.admin).await.json();
    assert_eq!(fresh["legal_hold"], false);
    assert_eq!(fresh["holds"], json!([]));

    let first = hold(&app, &path, "CASE-1", "litigation").await;
    let mut members: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    members.sort_unstable();
    assert_eq!(members, ["actor", "at", "case", "hold_id", "reason"], "{first}");
    assert_eq!(first["case"], "CASE-1");
    assert_eq!(first["reason"], "litigation");
    assert!(first["actor"].as_str().is_some_and(|a| a.starts_with("key_")), "{first}");
    assert!(ts(&first["at"]).as_micros() > 0);
    let second = hold(&app, &path, "CASE-2", "regulator").await;
    let (h1, h2) = (first["hold_id"].as_str().unwrap(), second["hold_id"].as_str().unwrap());
    assert_ne!(h1, h2);

    let held = app.get(&path, &app.admin).await.json();
    assert_eq!(held["legal_hold"], true);
    assert_eq!(hold_ids(&held), [h1, h2]);
    assert_eq!(held["holds"][1]["case"], "CASE-2");

    let after_one = app.post_empty(&format!("{path}:release?hold_id={h1}"), &app.admin).await;
    after_one.assert_status(200);
    let after_one = after_one.json();
    assert_eq!(after_one["id"], id.as_str());
    assert_eq!(after_one["legal_hold"], true, "one hold remains");
    assert_eq!(hold_ids(&after_one), [h2]);
    assert_eq!(hold_ids(&app.get(&path, &app.admin).await.json()), [h2]);
    // A released hold cannot be released again.
    app.post_empty(&format!("{path}:release?hold_id={h1}"), &app.admin).await.assert_problem(404, "not-found");

    let free = app.post_empty(&format!("{path}:release?hold_id={h2}&reason=case%20closed"), &app.admin).await;
    free.assert_status(200);
    assert_eq!(free.json()["legal_hold"], false);
    assert_eq!(free.json()["holds"], json!([]));
    assert_eq!(app.get(&path, &app.admin).await.json()["legal_hold"], false);
}

// SPEC §13: the audit entries of holds and releases carry the reason exactly as given, with
// hold_id and case as members of their own, covered by the hash chain.
#[tokio::test]
async fn hold_audit_entries_keep_the_reason_as_given_with_hold_id_and_case() {
    let app = TestApp::new().await;
    let record = app.create("products", &app.admin, &product("AUD")).await;
    let path = format!("/v1/products/{}", id_of(&record));
    let reason = "litigation: keep everything (see case=not-this)";
    let held = hold(&app, &path, "CASE-42", reason).await;
    let hold_id = held["hold_id"].as_str().unwrap();
    app.post_empty(&format!("{path}:release?hold_id={hold_id}&reason=case%20closed"), &app.admin)
        .await
        .assert_status(200);
    // A hold without a case and without a reason: the members are absent, not invented.
    let bare = app.post(&format!("{path}:hold"), &app.admin, &json!({})).await;
    bare.assert_status(201);
    let bare_id = bare.json()["hold_id"].as_str().unwrap().to_string();

    let holds = audit(&app, "?action=hold").await;
    assert_eq!(holds.len(), 2, "{holds:?}");
    assert_eq!(holds[0]["reason"], reason, "{}", holds[0]);
    assert_eq!(holds[0]["hold_id"], hold_id);
    assert_eq!(holds[0]["case"], "CASE-42");
    assert_eq!(holds[1]["hold_id"], bare_id.as_str());
    assert!(holds[1]["reason"].is_null(), "{}", holds[1]);
    assert!(holds[1].get("case").is_none(), "{}", holds[1]);
    let releases = audit(&app, "?action=release").await;
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0]["reason"], "case closed", "{}", releases[0]);
    assert_eq!(releases[0]["hold_id"], hold_id);
    assert_eq!(releases[0]["case"], "CASE-42");
    // Entries that are not about a hold have neither member.
    let created = audit(&app, "?action=create").await;
    assert!(created[0].get("hold_id").is_none() && created[0].get("case").is_none(), "{}", created[0]);
    let seq = holds[0]["seq"].as_i64().unwrap();
    let one = app.get(&format!("/v1/audit/{seq}"), &app.admin).await.json();
    assert_eq!(one, holds[0]);

    // The chain covers them: it verifies as written, and an edited case is caught.
    assert_eq!(app.store.verify_audit().await.unwrap(), Ok(audit(&app, "?limit=500").await.len() as u64));
    app.raw_execute(&format!("update audit set case_name = 'CASE-43' where seq = {seq}")).await;
    assert_eq!(
        app.store.verify_audit().await.unwrap(),
        Err(tombstone_domain::audit::ChainError::BadHash { seq }),
        "an edited case breaks the chain"
    );
    app.raw_execute(&format!("update audit set case_name = 'CASE-42', hold_id = 'hold_other' where seq = {seq}")).await;
    assert_eq!(app.store.verify_audit().await.unwrap(), Err(tombstone_domain::audit::ChainError::BadHash { seq }));
}

#[tokio::test]
async fn a_held_record_is_never_purged_or_erased_but_can_be_deleted_and_restored() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-2")).await);
    let path = format!("/v1/products/{id}");
    let h = hold(&app, &path, "CASE-9", "discovery").await;

    // Erasing an active held record is refused as well.
    app.post_empty(&format!("{path}:erase"), &app.admin).await.assert_problem(409, "legal-hold");
    app.delete(&path, &app.admin).await.assert_status(204);
    let deleted = app.get(&format!("{path}?include=deleted"), &app.admin).await.json();
    assert_eq!((deleted["deleted"].clone(), deleted["legal_hold"].clone()), (json!(true), json!(true)));
    app.post_empty(&format!("{path}:purge"), &app.admin).await.assert_problem(409, "legal-hold");
    app.post_empty(&format!("{path}:erase"), &app.admin).await.assert_problem(409, "legal-hold");
    // Refusals change nothing.
    let after = app.get(&format!("{path}?include=deleted"), &app.admin).await.json();
    assert_eq!(after, deleted);
    assert!(audit(&app, &format!("?record_id={id}&action=purge")).await.is_empty());
    assert!(audit(&app, &format!("?record_id={id}&action=erase")).await.is_empty());

    let restored = app.post_empty(&format!("{path}:restore"), &app.admin).await;
    restored.assert_status(200);
    assert_eq!(restored.json()["deleted"], false);
    assert_eq!(restored.json()["legal_hold"], true);

    app.delete(&path, &app.admin).await.assert_status(204);
    let release = format!("{path}:release?hold_id={}", h["hold_id"].as_str().unwrap());
    app.post_empty(&release, &app.admin).await.assert_status(200);
    app.post_empty(&format!("{path}:purge"), &app.admin).await.assert_status(204);
    app.get(&format!("{path}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
}

#[tokio::test]
async fn holds_and_releases_are_audited_with_their_reason() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-3")).await);
    let path = format!("/v1/products/{id}");
    let h = hold(&app, &path, "CASE-7", "preserve evidence").await;
    let hold_id = h["hold_id"].as_str().unwrap();
    app.post_empty(&format!("{path}:release?hold_id={hold_id}&reason=settled"), &app.admin).await.assert_status(200);

    let holds = audit(&app, "?action=hold").await;
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0]["record_id"], id.as_str());
    assert_eq!(holds[0]["collection"], "products");
    assert_eq!(holds[0]["actor"], h["actor"]);
    assert_eq!(holds[0]["reason"], "preserve evidence", "the reason as given");
    assert_eq!(holds[0]["case"], "CASE-7");
    let releases = audit(&app, "?action=release").await;
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0]["record_id"], id.as_str());
    assert_eq!(releases[0]["reason"], "settled", "{releases:?}");
    assert!(releases[0]["seq"].as_i64() > holds[0]["seq"].as_i64());
}

#[tokio::test]
async fn holds_and_releases_are_announced_as_updates_so_no_version_is_missing() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-5")).await);
    let path = format!("/v1/products/{id}");
    let h = hold(&app, &path, "CASE-9", "audit").await;
    app.delete(&path, &app.admin).await.assert_status(204);
    let hold_id = h["hold_id"].as_str().unwrap();
    let released = app.post_empty(&format!("{path}:release?hold_id={hold_id}"), &app.admin).await;
    released.assert_status(200);

    let mine: Vec<Value> = events(&app, "?after=0&limit=500")
        .await
        .into_iter()
        .filter(|e| e["record_id"] == id.as_str() && e["type"] != "deletion.completed")
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["record.created", "record.updated", "record.deleted", "record.updated"]);
    // Every version the record had is announced, each once, in order.
    let versions: Vec<i64> = mine.iter().map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    assert_eq!(released.json()["version"], 4);
    assert_eq!(mine[1]["data"]["legal_hold"], true);
    assert_eq!(mine[3]["data"]["legal_hold"], false);
    assert_eq!(mine[3]["data"]["deleted"], true, "released while deleted: the event says so");
}

#[tokio::test]
async fn release_needs_a_known_hold_id() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-4")).await);
    let other = id_of(&app.create("products", &app.admin, &product("H-5")).await);
    let path = format!("/v1/products/{id}");
    let h = hold(&app, &path, "CASE-1", "x").await;
    let hold_id = h["hold_id"].as_str().unwrap();

    let missing = app.post_empty(&format!("{path}:release"), &app.admin).await;
    assert_eq!(missing.assert_problem(400, "invalid-parameter")["errors"][0]["field"], "hold_id", "{}", missing.text);
    app.post_empty(&format!("{path}:release?hold_id=hold_nope"), &app.admin).await.assert_problem(404, "not-found");
    // A hold of another record does not release this one.
    app.post_empty(&format!("/v1/products/{other}:release?hold_id={hold_id}"), &app.admin)
        .await
        .assert_problem(404, "not-found");
    // Nor from another tenant.
    let t2 = app.key("t2", "admin").await;
    app.post_empty(&format!("{path}:release?hold_id={hold_id}"), &t2).await.assert_problem(404, "not-found");
    app.post(&format!("{path}:hold"), &t2, &json!({"case": "X"})).await.assert_problem(404, "not-found");
    // Holding a record that does not exist.
    app.post(&format!("/v1/products/{}:hold", "nope"), &app.admin, &json!({})).await.assert_problem(404, "not-found");
    // The hold scope is needed.
    let plain = app.key("t1", "read,write,delete,read_deleted").await;
    assert_missing_scope(&app.post(&format!("{path}:hold"), &plain, &json!({})).await, "hold");
    assert_missing_scope(&app.post_empty(&format!("{path}:release?hold_id={hold_id}"), &plain).await, "hold");
    assert_eq!(app.get(&path, &app.admin).await.json()["legal_hold"], true, "nothing was released");
}

#[tokio::test]
async fn holds_are_shown_only_to_read_deleted_keys_and_legal_hold_always() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-6")).await);
    let active = id_of(&app.create("products", &app.admin, &product("H-7")).await);
    let path = format!("/v1/products/{id}");
    hold(&app, &path, "CASE-3", "audit").await;

    let reader = app.key("t1", "read").await;
    for (record, held) in [
        (app.get(&path, &reader).await.json(), true),
        (app.get(&format!("/v1/products/{active}"), &reader).await.json(), false),
    ] {
        assert_eq!(record["legal_hold"], held, "{record}");
        assert!(record.get("holds").is_none(), "holds need read_deleted: {record}");
    }
    let listed = app.get("/v1/products", &reader).await.json();
    for item in listed["items"].as_array().unwrap() {
        assert!(item["legal_hold"].is_boolean(), "{item}");
        assert!(item.get("holds").is_none(), "{item}");
    }

    let deleted_reader = app.key("t1", "read_deleted").await;
    assert_eq!(hold_ids(&app.get(&path, &deleted_reader).await.json()).len(), 1);
    let listed = app.get("/v1/products", &deleted_reader).await.json();
    let items = listed["items"].as_array().unwrap();
    let held = items.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(hold_ids(held).len(), 1, "{held}");
    let free = items.iter().find(|i| i["id"] == active.as_str()).unwrap();
    assert_eq!(free["holds"], json!([]), "{free}");
    // A key narrowed to another collection's deleted records does not see these holds.
    let elsewhere = app.key("t1", "read,read_deleted:customers").await;
    assert!(app.get(&path, &elsewhere).await.json().get("holds").is_none());
}

#[tokio::test]
async fn trash_items_show_their_holds() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-8")).await);
    let h = hold(&app, &format!("/v1/products/{id}"), "CASE-5", "keep").await;
    app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_status(204);
    let (items, _) = trash_page(&app, &app.admin, "").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["legal_hold"], true);
    assert_eq!(hold_ids(&items[0]), [h["hold_id"].as_str().unwrap()]);
}

#[tokio::test]
async fn a_held_record_of_a_hard_delete_collection_is_not_destroyed() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("secrets", &app.admin, &json!({"value": "s3cr3t"})).await);
    let path = format!("/v1/secrets/{id}");
    hold(&app, &path, "CASE-H", "evidence").await;
    // The dry run decides as the DELETE does: not a plan that the click would refuse.
    app.delete(&format!("{path}?dry_run=true"), &app.admin).await.assert_problem(409, "legal-hold");
    app.delete(&path, &app.admin).await.assert_problem(409, "legal-hold");
    let still = app.get(&path, &app.admin).await;
    still.assert_status(200);
    assert_eq!(still.json()["legal_hold"], true);
    assert!(audit(&app, &format!("?record_id={id}&action=purge")).await.is_empty());
}

/// A cascade that reaches a held record of a hard-delete collection would purge it: the
/// DELETE is refused, and so is its dry run, both before anything changes.
#[tokio::test]
async fn a_cascade_into_a_held_hard_record_is_refused_by_the_dry_run_too() {
    let schema = format!(
        "{TEST_SCHEMA}\n[collections.vaults.fields]\nname = {{ type = \"string\" }}\n\n\
         [collections.keys_of_vault]\ndelete = \"hard\"\n\n[collections.keys_of_vault.fields]\n\
         vault_id = {{ type = \"ref\", collection = \"vaults\", on_delete = \"cascade\" }}\n"
    );
    let app = TestApp::with_schema(&schema).await;
    let vault = id_of(&app.create("vaults", &app.admin, &json!({"name": "v"})).await);
    let key = id_of(&app.create("keys_of_vault", &app.admin, &json!({"vault_id": vault})).await);
    let vault_path = format!("/v1/vaults/{vault}");
    // Unheld, the dry run shows the key going with the vault.
    let plan = app.delete(&format!("{vault_path}?dry_run=true"), &app.admin).await;
    plan.assert_status(200);
    assert_eq!(plan.json()["counts"], json!({"vaults": 1, "keys_of_vault": 1}));
    hold(&app, &format!("/v1/keys_of_vault/{key}"), "CASE-K", "evidence").await;
    app.delete(&format!("{vault_path}?dry_run=true"), &app.admin).await.assert_problem(409, "legal-hold");
    app.delete(&vault_path, &app.admin).await.assert_problem(409, "legal-hold");
    app.get(&vault_path, &app.admin).await.assert_status(200);
    app.get(&format!("/v1/keys_of_vault/{key}"), &app.admin).await.assert_status(200);
}

#[tokio::test]
async fn a_hold_changes_the_etag() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-E")).await);
    let path = format!("/v1/products/{id}");
    let etag = app.get(&path, &app.admin).await.header("etag").expect("ETag").to_string();
    hold(&app, &path, "CASE-E", "etag").await;
    let r = app.send(Method::GET, &path, Some(&app.admin), &[("if-none-match", &etag)], None).await;
    r.assert_status(200);
    assert_eq!(r.json()["legal_hold"], true);
    assert_ne!(r.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn hold_bodies_are_validated() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("products", &app.admin, &product("H-9")).await);
    let target = format!("/v1/products/{id}:hold");
    let send = |body: &'static [u8]| app.send(Method::POST, &target, Some(&app.admin), &[], Some(body.to_vec()));
    send(b"{\"case\": ").await.assert_problem(400, "malformed");
    send(b"[1, 2]").await.assert_problem(422, "validation");
    send(b"{\"case\": \"A\", \"why\": \"x\"}").await.assert_problem(422, "validation");
    send(b"{\"case\": 7}").await.assert_problem(422, "validation");
    let long = json!({"case": "A", "reason": "r".repeat(501)});
    app.post(&target, &app.admin, &long).await.assert_problem(422, "validation");
    assert_eq!(app.get(&format!("/v1/products/{id}"), &app.admin).await.json()["legal_hold"], false);
    assert!(audit(&app, "?action=hold").await.is_empty(), "refused holds are not audited");
    // Both members are optional; 500 characters are fine.
    let ok = app.post(&target, &app.admin, &json!({"reason": "r".repeat(500)})).await;
    ok.assert_status(201);
    assert_eq!(ok.json()["case"], Value::Null);
    app.send(Method::POST, &target, Some(&app.admin), &[], None).await.assert_status(201);
    assert_eq!(hold_ids(&app.get(&format!("/v1/products/{id}"), &app.admin).await.json()).len(), 2);
}

// ---------------------------------------------------------------------------------------
// :purge

#[tokio::test]
async fn purge_hard_deletes_a_soft_deleted_record() {
    let app = TestApp::new().await;
    let active = id_of(&app.create("products", &app.admin, &product("U-0")).await);
    let victim = create_deleted(&app, "products", &app.admin, &product("U-1")).await;
    let id = id_of(&victim);
    let path = format!("/v1/products/{id}");

    // Destruction takes two deliberate steps.
    app.post_empty(&format!("/v1/products/{active}:purge"), &app.admin).await.assert_problem(409, "not-deleted");
    assert_eq!(app.get(&format!("/v1/products/{active}"), &app.admin).await.json()["deleted"], false);

    let r = app.post_empty(&format!("{path}:purge?reason=spam"), &app.admin).await;
    r.assert_status(204);
    assert!(r.text.is_empty());

    app.get(&path, &app.admin).await.assert_problem(404, "not-found");
    app.get(&format!("{path}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
    app.post_empty(&format!("{path}:restore"), &app.admin).await.assert_problem(404, "not-found");
    app.post_empty(&format!("{path}:purge"), &app.admin).await.assert_problem(404, "not-found");
    app.delete(&path, &app.admin).await.assert_problem(404, "not-found");
    let listed = app.get("/v1/products?include=deleted", &app.admin).await.json();
    assert!(!listed["items"].as_array().unwrap().iter().any(|i| i["id"] == id.as_str()));
    assert!(trash_page(&app, &app.admin, "").await.0.is_empty());
    assert_eq!(app.raw_int(&format!("select count(*) from rec_products where id = '{id}'")).await, 0);

    let entries = audit(&app, &format!("?record_id={id}&action=purge")).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["reason"], "spam");
    assert_eq!(entries[0]["actor"], victim["deleted_by"], "the admin key both deleted and purged");
    let purged: Vec<Value> =
        events(&app, "?type=record.purged").await.into_iter().filter(|e| e["record_id"] == id.as_str()).collect();
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert_eq!(purged[0]["data"], Value::Null);
    assert_eq!(purged[0]["collection"], "products");
}

#[tokio::test]
async fn purge_needs_its_scope_and_ignores_the_pause() {
    let app = TestApp::new().await;
    let a = id_of(&create_deleted(&app, "products", &app.admin, &product("V-1")).await);
    let b = id_of(&create_deleted(&app, "customers", &app.admin, &json!({"email": "v@example.com"})).await);

    let deleter = app.key("t1", "read,write,delete,restore,read_deleted").await;
    assert_missing_scope(&app.post_empty(&format!("/v1/products/{a}:purge"), &deleter).await, "purge");
    let narrow = app.key("t1", "purge:customers").await;
    assert_missing_scope(&app.post_empty(&format!("/v1/products/{a}:purge"), &narrow).await, "purge");
    // Another tenant cannot even see it.
    let t2 = app.key("t2", "admin").await;
    app.post_empty(&format!("/v1/products/{a}:purge"), &t2).await.assert_problem(404, "not-found");
    assert_eq!(app.get(&format!("/v1/products/{a}?include=deleted"), &app.admin).await.json()["deleted"], true);

    let paused = app.post_empty("/v1/purge:pause", &app.admin).await;
    paused.assert_status(200);
    assert_eq!(paused.json()["paused"], true);
    // Pausing needs admin.
    assert_missing_scope(&app.post_empty("/v1/purge:resume", &narrow).await, "admin");
    app.post_empty(&format!("/v1/customers/{b}:purge"), &narrow).await.assert_status(204);
    app.post_empty(&format!("/v1/products/{a}:purge"), &app.admin).await.assert_status(204);
    app.get(&format!("/v1/products/{a}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
    assert_eq!(app.get("/v1/purge/preview", &app.admin).await.json()["paused"], true, "still paused");
}

// ---------------------------------------------------------------------------------------
// Erasure

#[tokio::test]
async fn erase_removes_every_copy_of_the_values() {
    let app = TestApp::new().await;
    let key = app.key("t1", "read,write,delete").await;
    // Markers that can only come from this record's values.
    let pii = format!("zq{}", uuid_like());
    let plain = format!("xv{}", uuid_like());
    let email = format!("{pii}@example.com");
    let body = json!({"email": email, "name": format!("Name {plain}")});
    let idem = [("idempotency-key", "erase-me-1")];
    let created = app.send(Method::POST, "/v1/customers", Some(&key), &idem, Some(body.to_string().into_bytes())).await;
    created.assert_status(201);
    let id = id_of(&created.json());
    let path = format!("/v1/customers/{id}");
    app.patch(&path, &key, &json!({"name": format!("Renamed {plain}"), "email": format!("{pii}.2@example.com")}))
        .await
        .assert_status(200);
    app.delete(&format!("{path}?reason=customer%20left"), &key).await.assert_status(204);
    // A bystander whose values must survive.
    let bystander = app.create("customers", &key, &json!({"email": "keep@example.com", "name": "Keeper"})).await;

    // What is there to scrub, counted before the erasure.
    let with_data = app
        .raw_int(&format!(
            "select count(*) from outbox where tenant = 't1' and collection = 'customers' and record_id = '{id}' and data is not null"
        ))
        .await;
    assert!(with_data >= 3, "created, updated and deleted events carry data: {with_data}");
    let responses = app.raw_int(&format!("select count(*) from idempotency where record_id = '{id}'")).await;
    assert_eq!(responses, 1);
    let audit_before = audit(&app, &format!("?record_id={id}")).await.len();
    assert!(
        !app.bytes_holding(&pii).await.is_empty(),
        "the marker is stored before the erasure (otherwise the check below proves nothing)"
    );

    // A read puts the record in the cache; the erasure must take it out again.
    let cached = app.get(&format!("{path}?include=deleted"), &app.admin).await;
    cached.assert_status(200);
    assert!(cached.text.contains(&pii), "the admin sees the pii before the erasure");

    let erasure = app.post_empty(&format!("{path}:erase?reason=gdpr%20art.%2017"), &app.admin).await;
    erasure.assert_status(200);
    let receipt = app.erasure_settled(&path, erasure.json()).await;
    assert_eq!(receipt["collection"], "customers");
    assert_eq!(receipt["id"], id.as_str());
    ts(&receipt["erased_at"]);
    assert!(receipt["audit_seq"].as_i64().is_some(), "{receipt}");
    assert_eq!(receipt["scrubbed"]["events"], with_data, "{receipt}");
    assert_eq!(receipt["scrubbed"]["idempotent_responses"], responses, "{receipt}");
    assert!(receipt["scrubbed"]["versions"].as_u64().is_some(), "{receipt}");
    assert_eq!(receipt["scrubbed"]["search"], true);
    assert_eq!(receipt["scrubbed"]["cache"], true);
    assert_eq!(receipt["pending"], json!([]), "no reader held the WAL or the dead rows: every step is done");

    // Every endpoint answers 404.
    for (method, target) in [
        (Method::GET, path.clone()),
        (Method::GET, format!("{path}?include=deleted")),
        (Method::PATCH, path.clone()),
        (Method::DELETE, path.clone()),
        (Method::DELETE, format!("{path}?dry_run=true")),
        (Method::POST, format!("{path}:restore")),
        (Method::POST, format!("{path}:purge")),
        (Method::POST, format!("{path}:hold")),
        (Method::POST, format!("{path}:release?hold_id=hold_x")),
    ] {
        let body = (method == Method::PATCH).then(|| br#"{"name":"x"}"#.to_vec());
        let r = app.send(method.clone(), &target, Some(&app.admin), &[], body).await;
        assert_eq!(r.status.as_u16(), 404, "{method} {target}: {}", r.text);
    }
    // ... except a retried erasure, which answers the stored receipt and changes nothing.
    let again = app.post_empty(&format!("{path}:erase"), &app.admin).await;
    again.assert_status(200);
    assert_eq!(again.json(), receipt);
    let listed = app.get("/v1/customers?include=deleted", &app.admin).await.json();
    assert_eq!(listed["items"].as_array().unwrap().iter().map(id_of).collect::<Vec<_>>(), [id_of(&bystander)]);
    assert!(trash_page(&app, &app.admin, "").await.0.is_empty());

    // The idempotent replay is gone for good, and creates nothing.
    let replay = app.send(Method::POST, "/v1/customers", Some(&key), &idem, Some(body.to_string().into_bytes())).await;
    replay.assert_problem(410, "erased");
    assert!(!replay.text.contains(&pii) && !replay.text.contains(&plain), "{}", replay.text);
    let listed = app.get("/v1/customers?include=deleted", &app.admin).await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "the replay created nothing");

    // The audit keeps who, when, why and the id — and no values.
    let entries = audit(&app, &format!("?record_id={id}")).await;
    assert_eq!(entries.len(), audit_before + 1, "the history stays, plus the erasure");
    let erase = entries.last().unwrap();
    assert_eq!(erase["action"], "erase");
    assert_eq!(erase["record_id"], id.as_str());
    assert_eq!(erase["reason"], "gdpr art. 17");
    assert_eq!(erase["seq"], receipt["audit_seq"]);
    assert!(erase["actor"].as_str().is_some_and(|a| a.starts_with("key_")));
    let verified = app.store.verify_audit().await.unwrap();
    assert!(verified.is_ok(), "the chain survives an erasure: {verified:?}");
    let feed = events(&app, "?limit=500").await;
    let mine: Vec<&Value> = feed.iter().filter(|e| e["record_id"] == id.as_str()).collect();
    assert!(mine.iter().all(|e| e["data"].is_null()), "{mine:?}");
    assert_eq!(mine.last().unwrap()["type"], "record.erased");
    assert!(feed.iter().any(|e| e["record_id"] == id_of(&bystander).as_str() && !e["data"].is_null()));

    // Nowhere in any row ...
    let stored = app.stored_text().await;
    for (table, text) in &stored {
        assert!(!text.contains(&pii) && !text.contains(&plain), "{table} still holds a value: {text}");
    }
    assert!(stored.iter().any(|(_, text)| text.contains("keep@example.com")), "the bystander stays");
    // ... nor in the bytes the database keeps — SQLite's file and WAL; PostgreSQL's pages
    // of every table, TOAST table and index, dead tuples included — nor in any other file
    // the app keeps (search index, shared memory, journals).
    for marker in [&pii, &plain] {
        let found = app.bytes_holding(marker).await;
        assert!(found.is_empty(), "a value is still stored in {found:?}");
    }
    assert!(!app.bytes_holding("keep@example.com").await.is_empty(), "the bystander's bytes stay");
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    format!("{:016x}{:08x}", h.finish(), std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().subsec_nanos())
}

#[tokio::test]
async fn erase_works_on_active_records_and_needs_its_scope() {
    let app = TestApp::new().await;
    let id = id_of(&app.create("customers", &app.admin, &json!({"email": "active@example.com"})).await);
    let path = format!("/v1/customers/{id}");
    let limited = app.key("t1", "read,write,delete,purge,read_deleted").await;
    assert_missing_scope(&app.post_empty(&format!("{path}:erase"), &limited).await, "erase");
    let t2 = app.key("t2", "admin").await;
    app.post_empty(&format!("{path}:erase"), &t2).await.assert_problem(404, "not-found");
    app.get(&path, &app.admin).await.assert_status(200);

    let eraser = app.key("t1", "erase:customers").await;
    app.post_empty(&format!("{path}:erase"), &eraser).await.assert_status(200);
    app.get(&format!("{path}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
    // The email is free again: an erased record holds no unique value.
    app.create("customers", &app.admin, &json!({"email": "ACTIVE@example.com"})).await;
    assert_eq!(audit(&app, &format!("?record_id={id}&action=erase")).await.len(), 1);
}

#[tokio::test]
async fn erasure_is_confined_to_the_tenant() {
    let app = TestApp::new().await;
    let other = app.key("t2", "admin").await;
    // The same client-supplied id in two tenants.
    let body = json!({"id": "cust-1", "email": "twin@example.com", "name": "Twin"});
    app.create("customers", &app.admin, &body).await;
    app.create("customers", &other, &body).await;
    app.post_empty("/v1/customers/cust-1:erase", &app.admin).await.assert_status(200);

    app.get("/v1/customers/cust-1", &app.admin).await.assert_problem(404, "not-found");
    let theirs = app.get("/v1/customers/cust-1", &other).await;
    theirs.assert_status(200);
    assert_eq!(theirs.json()["email"], "twin@example.com");
    let feed = app.get("/v1/events", &other).await.json();
    let created = &feed["items"][0];
    assert_eq!((created["type"].clone(), created["data"]["name"].clone()), (json!("record.created"), json!("Twin")));
}

// ---------------------------------------------------------------------------------------
// Metrics

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `{a="b",c="d"}` (the braces included); returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("no {")?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or_else(|| format!("no = in {rest:?}"))?;
        let name = rest[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or_else(|| format!("label {name} is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of {name}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in {name}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A histogram series: its family and its labels other than `le`.
type SeriesKey = (String, Vec<(String, String)>);

/// Parses the Prometheus text exposition format strictly enough to catch a broken
/// exporter: well-formed `# HELP`/`# TYPE` lines, one TYPE per family before its samples,
/// every sample `name{labels} value [timestamp]` of a declared family, and histograms
/// whose cumulative buckets end in `+Inf` = `_count`.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let parts: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match parts.first().copied() {
                Some("HELP") if parts.len() < 2 || !is_metric_name(parts[1]) => {
                    return Err(at("malformed HELP".into()));
                }
                Some("TYPE") => {
                    let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if parts.len() != 3 || !is_metric_name(parts[1]) || !kinds.contains(&parts[2].trim()) {
                        return Err(at("malformed TYPE".into()));
                    }
                    if types.insert(parts[1].to_string(), parts[2].trim().to_string()).is_some() {
                        return Err(at("TYPE repeated".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.is_empty() || fields.len() > 2 || !rest.starts_with(' ') {
            return Err(at("expected ` value [timestamp]`".into()));
        }
        let value = parse_value(fields[0]).map_err(at)?;
        if let Some(t) = fields.get(1) {
            t.parse::<i64>().map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| matches!(types.get(*f).map(String::as_str), Some("histogram" | "summary")))
            })
            .unwrap_or(name);
        let kind = types.get(family).ok_or_else(|| at(format!("no TYPE before the samples of {family}")))?;
        if kind == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("a bucket without le".into()));
        }
        if kind == "counter" && value < 0.0 {
            return Err(at("a negative counter".into()));
        }
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    // Histograms: cumulative buckets, the last (+Inf) equal to _count.
    let mut buckets: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let le = parse_value(&s.labels["le"])?;
        let rest: Vec<(String, String)> =
            s.labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
        buckets.entry((s.name.trim_end_matches("_bucket").to_string(), rest)).or_default().push((le, s.value));
    }
    for ((family, labels), mut list) in buckets {
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !list.windows(2).all(|w| w[0].1 <= w[1].1) {
            return Err(format!("{family}{labels:?}: buckets are not cumulative: {list:?}"));
        }
        let count = samples
            .iter()
            .find(|s| {
                s.name == format!("{family}_count")
                    && s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>() == labels
            })
            .ok_or_else(|| format!("{family}{labels:?}: no _count"))?;
        let last = list.last().unwrap();
        if !last.0.is_infinite() || (last.1 - count.value).abs() > f64::EPSILON {
            return Err(format!("{family}{labels:?}: +Inf bucket {last:?} != count {}", count.value));
        }
    }
    Ok(samples)
}

#[test]
fn the_prometheus_parser_rejects_malformed_text() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{collection=\"x\",q=\"a\\\"b\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let samples = parse_prometheus(good).expect("well-formed");
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0].labels["q"], "a\"b");
    for bad in [
        "a_total 1\n",                                                                    // no TYPE
        "# TYPE a_total counter\na_total{x=\"1} 1\n",                                     // unterminated label
        "# TYPE a_total counter\na_total{x=1} 1\n",                                       // unquoted label
        "# TYPE a_total counter\na_total one\n",                                          // not a number
        "# TYPE a_total counter\na_total\n",                                              // no value
        "# TYPE a_total countr\na_total 1\n",                                             // bad type
        "# TYPE 1a counter\n",                                                            // bad name
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",                       // +Inf != count
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted: {bad:?}");
    }
}

async fn scrape(app: &TestApp) -> Vec<Sample> {
    let r = app.send(Method::GET, "/metrics", None, &[], None).await;
    r.assert_status(200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", r.headers);
    parse_prometheus(&r.text).unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{}", r.text))
}

/// The value of a sample whose labels include `labels` (0 when there is none yet).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    matching.iter().map(|s| s.value).sum()
}

struct ClockPacer(Arc<ManualClock>);

impl Pacer for ClockPacer {
    fn wait(&self, duration: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.0.advance(duration);
        Box::pin(async {})
    }
}

#[tokio::test]
async fn metrics_move_with_operations() {
    // A collection of its own: the recorder is global to the test process, and other tests
    // running beside this one count their own collections.
    let app = TestApp::with_schema(
        "[retention]\ndefault = \"1h\"\n[purge]\nbatch_size = 10\npause = \"1ms\"\nmax_rows_per_second = 1000\n\
         [collections.metered.fields]\ntext = { type = \"string\" }\n",
    )
    .await;
    let c = [("collection", "metered")];
    let before = scrape(&app).await;

    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(id_of(&app.create("metered", &app.admin, &json!({"text": format!("m{i}")})).await));
        }
        ids
    };
    app.get(&format!("/v1/metered/{}", ids[0]), &app.admin).await.assert_status(200);
    app.get(&format!("/v1/metered/{}", ids[1]), &app.admin).await.assert_status(200);
    app.get("/v1/metered", &app.admin).await.assert_status(200);
    for id in &ids[..4] {
        app.delete(&format!("/v1/metered/{id}"), &app.admin).await.assert_status(204);
    }
    app.delete(&format!("/v1/metered/{}", ids[0]), &app.admin).await.assert_status(204); // a repeat counts nothing
    app.get(&format!("/v1/metered/{}?include=deleted", ids[0]), &app.admin).await.assert_status(200);
    app.get("/v1/metered?filter[deleted]=true", &app.admin).await.assert_status(200);
    app.post_empty(&format!("/v1/metered/{}:restore", ids[0]), &app.admin).await.assert_status(200);
    app.post_empty(&format!("/v1/metered/{}:restore", ids[0]), &app.admin).await.assert_status(200); // no-op
    app.post_empty(&format!("/v1/metered/{}:purge", ids[1]), &app.admin).await.assert_status(204);
    app.post_empty(&format!("/v1/metered/{}:erase", ids[4]), &app.admin).await.assert_status(200);
    // The worker purges the other two once their window has passed.
    app.clock.advance(Duration::from_secs(3601));
    let worker = PurgeWorker::new(
        app.store.clone() as Arc<dyn Store>,
        app.clock.clone(),
        app.config.schema.clone(),
        app.config.purge.clone(),
    );
    worker.measure_backlog().await.unwrap();
    let mid = scrape(&app).await;
    assert_eq!(value(&mid, "tombstone_purge_backlog", &c), 2.0, "two records are due");
    let report = worker.run_pass(&ClockPacer(app.clock.clone()), Some("metered"), &|_| {}).await;
    assert_eq!(report.purged, 2);
    worker.measure_backlog().await.unwrap();

    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(delta("tombstone_soft_delete_total", &c), 4.0);
    assert_eq!(delta("tombstone_restore_total", &c), 1.0);
    assert_eq!(delta("tombstone_erase_total", &c), 1.0);
    assert_eq!(delta("tombstone_purge_rows_total", &c), 3.0, ":purge of one and the worker's two");
    assert_eq!(delta("tombstone_reads_total", &c), 5.0, "four GETs and lists, with or without deleted");
    assert_eq!(delta("tombstone_include_deleted_reads_total", &c), 2.0);
    assert_eq!(value(&after, "tombstone_purge_backlog", &c), 0.0);
    let deletes = [("collection", "metered"), ("method", "DELETE"), ("status", "204")];
    assert_eq!(delta("tombstone_http_request_duration_seconds_count", &deletes), 5.0);
    let reads = [("collection", "metered"), ("method", "GET"), ("route", "/v1/{collection}/{id}")];
    assert_eq!(delta("tombstone_http_request_duration_seconds_count", &reads), 3.0);
    assert!(delta("tombstone_http_request_duration_seconds_sum", &reads) > 0.0);
    assert!(after.iter().any(|s| s.name == "tombstone_purge_job_runtime_seconds_count"));
    for name in
        ["tombstone_soft_delete_total", "tombstone_reads_total", "tombstone_http_request_duration_seconds_bucket"]
    {
        assert!(after.iter().any(|s| s.name == name), "{name} is exported");
    }
}

// Counters and gauges exist from the start; the purge runtime histogram has its first
// sample after the first pass (a histogram without observations is not exported), so the
// test runs one.
#[tokio::test]
async fn every_metric_the_spec_names_is_exported() {
    let app = TestApp::with_schema("[collections.listed.fields]\ntext = { type = \"string\" }\n").await;
    let id = id_of(&app.create("listed", &app.admin, &json!({"text": "x"})).await);
    app.get(&format!("/v1/listed/{id}"), &app.admin).await.assert_status(200);
    let worker = PurgeWorker::new(
        app.store.clone() as Arc<dyn Store>,
        app.clock.clone(),
        app.config.schema.clone(),
        app.config.purge.clone(),
    );
    worker.run_pass(&ClockPacer(app.clock.clone()), None, &|_| {}).await;
    let samples = scrape(&app).await;
    let names: HashSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    let missing: Vec<&str> = [
        "tombstone_soft_delete_total",
        "tombstone_restore_total",
        "tombstone_purge_rows_total",
        "tombstone_purge_job_runtime_seconds_count",
        "tombstone_purge_job_errors_total",
        "tombstone_purge_backlog",
        "tombstone_erase_total",
        "tombstone_include_deleted_reads_total",
        "tombstone_reads_total",
        "tombstone_cache_hits_total",
        "tombstone_cache_misses_total",
        "tombstone_outbox_backlog",
        "tombstone_webhook_failures_total",
        "tombstone_search_drift",
        "tombstone_http_request_duration_seconds_count",
    ]
    .into_iter()
    .filter(|n| !names.contains(n))
    .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}
