//! Archive (SPEC §17) over HTTP, on whichever store the run uses: `:archive` and
//! `:unarchive` (versioned, audited, announced, idempotent, `If-Match`), reads and lists
//! (`include=archived`, `filter[archived]=true`, counts, search), read-only records,
//! delete and restore keeping the flag, the `archive_after` pass of the purge worker with
//! a manual clock, and a property: an archived record never shows in a default list,
//! count or search.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestApp;
use proptest::prelude::*;
use serde_json::{Value, json};
use tombstone_domain::time::ManualClock;
use tombstone_server::purge::{Pacer, PurgeWorker};
use tombstone_store::Store;

const SCHEMA: &str = r#"
[retention]
default = "7d"

[purge]
interval = "1h"
batch_size = 2
pause = "10ms"
max_rows_per_second = 1000

[collections.projects]
unique = [["code"]]

[collections.projects.fields]
code = { type = "string", required = true }
name = { type = "string", search = true }

[collections.tasks.fields]
title      = { type = "string" }
project_id = { type = "ref", collection = "projects", on_delete = "restrict" }

[collections.orders]
archive_after = "90d"
retention = "365d"

[collections.orders.fields]
title = { type = "string" }

[collections.contracts]
require_if_match = true

[collections.contracts.fields]
title = { type = "string" }
"#;

const DAY: Duration = Duration::from_secs(86_400);

async fn app() -> TestApp {
    TestApp::with_schema(SCHEMA).await
}

async fn items(app: &TestApp, path: &str) -> Vec<Value> {
    let r = app.get(path, &app.admin).await;
    r.assert_status(200);
    r.json()["items"].as_array().unwrap().clone()
}

fn ids(items: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = items.iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

async fn audit_actions(app: &TestApp, id: &str) -> Vec<(String, String, Option<String>)> {
    let mut entries = items(app, &format!("/v1/audit?record_id={id}")).await;
    entries.sort_by_key(|e| e["seq"].as_i64());
    entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
                e["reason"].as_str().map(str::to_string),
            )
        })
        .collect()
}

async fn event_types(app: &TestApp, id: &str) -> Vec<(String, i64)> {
    items(app, "/v1/events?after=0&limit=500")
        .await
        .iter()
        .filter(|e| e["record_id"] == id)
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["version"].as_i64().unwrap_or(0)))
        .collect()
}

async fn send_with(app: &TestApp, path: &str, if_match: &str, body: Option<&Value>) -> common::TestResponse {
    app.send(
        axum::http::Method::POST,
        path,
        Some(&app.admin),
        &[("if-match", if_match)],
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

#[tokio::test]
async fn archive_and_unarchive_are_versioned_audited_announced_and_idempotent() {
    let app = app().await;
    let key_id = app.get("/v1/whoami", &app.admin).await.json()["key_id"].as_str().unwrap().to_string();
    let p = app.create("projects", &app.admin, &json!({"code": "P1", "name": "Apollo"})).await;
    let id = p["id"].as_str().unwrap();
    assert_eq!(p["archived"], false);
    assert!(p["archived_at"].is_null() && p["archived_by"].is_null() && p["archive_reason"].is_null());

    let r = app.post(&format!("/v1/projects/{id}:archive"), &app.admin, &json!({"reason": "shipped"})).await;
    r.assert_status(200);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    let body = r.json();
    assert_eq!((body["archived"].clone(), body["version"].clone()), (json!(true), json!(2)));
    assert_eq!(body["archived_by"], key_id.as_str());
    assert_eq!(body["archive_reason"], "shipped");
    assert!(body["archived_at"].is_string());
    assert_eq!(body["deleted"], false);

    // Readable by id: links keep working.
    let got = app.get(&format!("/v1/projects/{id}"), &app.admin).await;
    got.assert_status(200);
    assert_eq!(got.json()["archived"], true);
    assert_eq!(got.json()["archive_reason"], "shipped");

    // Archiving again: 200, the record unchanged, nothing new — whatever its If-Match.
    let again = send_with(&app, &format!("/v1/projects/{id}:archive"), "\"v1\"", Some(&json!({"reason": "x"}))).await;
    again.assert_status(200);
    assert_eq!(again.json(), body);

    let r = app.post_empty(&format!("/v1/projects/{id}:unarchive"), &app.admin).await;
    r.assert_status(200);
    let un = r.json();
    assert_eq!((un["archived"].clone(), un["version"].clone()), (json!(false), json!(3)));
    assert!(un["archived_at"].is_null() && un["archived_by"].is_null() && un["archive_reason"].is_null());
    let again = app.post_empty(&format!("/v1/projects/{id}:unarchive"), &app.admin).await;
    again.assert_status(200);
    assert_eq!(again.json(), un);

    assert_eq!(
        audit_actions(&app, id).await,
        vec![
            ("create".into(), key_id.clone(), None),
            ("archive".into(), key_id.clone(), Some("shipped".into())),
            ("unarchive".into(), key_id.clone(), None),
        ]
    );
    assert_eq!(
        event_types(&app, id).await,
        vec![("record.created".into(), 1), ("record.archived".into(), 2), ("record.unarchived".into(), 3)]
    );
    // The event carries the record as it now is.
    let feed = items(&app, "/v1/events?after=0&limit=500").await;
    let archived = feed.iter().find(|e| e["type"] == "record.archived").unwrap();
    assert_eq!(archived["data"]["archived"], true);
    assert_eq!(archived["data"]["archive_reason"], "shipped");
}

#[tokio::test]
async fn if_match_is_honoured_and_bad_requests_change_nothing() {
    let app = app().await;
    let p = app.create("projects", &app.admin, &json!({"code": "P1"})).await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/v1/projects/{id}:archive");
    let stale = send_with(&app, &path, "\"v7\"", None).await;
    let problem = stale.assert_problem(412, "precondition-failed");
    assert_eq!(problem["current_etag"], "\"v1\"");
    send_with(&app, &path, "\"v1\"", None).await.assert_status(200);
    send_with(&app, &format!("/v1/projects/{id}:unarchive"), "\"v1\"", None)
        .await
        .assert_problem(412, "precondition-failed");
    send_with(&app, &format!("/v1/projects/{id}:unarchive"), "\"v2\"", None).await.assert_status(200);

    // A collection that requires If-Match requires it here too.
    let c = app.create("contracts", &app.admin, &json!({"title": "NDA"})).await;
    let cid = c["id"].as_str().unwrap();
    app.post_empty(&format!("/v1/contracts/{cid}:archive"), &app.admin)
        .await
        .assert_problem(428, "precondition-required");

    let q = app.create("projects", &app.admin, &json!({"code": "P2"})).await;
    let qid = q["id"].as_str().unwrap();
    let long = "x".repeat(501);
    app.post(&format!("/v1/projects/{qid}:archive"), &app.admin, &json!({"reason": long}))
        .await
        .assert_problem(422, "validation");
    app.post(&format!("/v1/projects/{qid}:archive"), &app.admin, &json!({"why": "x"}))
        .await
        .assert_problem(422, "validation");
    app.post(&format!("/v1/projects/{qid}:archive"), &app.admin, &json!(["x"])).await.assert_problem(422, "validation");
    let reader = app.key("t1", "read").await;
    app.post_empty(&format!("/v1/projects/{qid}:archive"), &reader).await.assert_problem(403, "forbidden");
    app.post_empty("/v1/projects/nope:archive", &app.admin).await.assert_problem(404, "not-found");
    // Another tenant's record is not there.
    let other = app.key("t2", "admin").await;
    app.post_empty(&format!("/v1/projects/{qid}:archive"), &other).await.assert_problem(404, "not-found");
    // None of these changed anything.
    assert_eq!(app.get(&format!("/v1/projects/{qid}"), &app.admin).await.json()["version"], 1);
    assert_eq!(audit_actions(&app, qid).await.len(), 1);
}

#[tokio::test]
async fn lists_counts_and_search_leave_archived_records_out_unless_asked() {
    let app = app().await;
    let mut made = Vec::new();
    for (code, name) in [("A", "alpha rocket"), ("B", "beta rocket"), ("C", "gamma rocket"), ("D", "delta rocket")] {
        made.push(
            app.create("projects", &app.admin, &json!({"code": code, "name": name})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let (a, b, c, d) = (&made[0], &made[1], &made[2], &made[3]);
    app.post_empty(&format!("/v1/projects/{b}:archive"), &app.admin).await.assert_status(200);
    app.post_empty(&format!("/v1/projects/{c}:archive"), &app.admin).await.assert_status(200);
    app.delete(&format!("/v1/projects/{c}"), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/projects/{d}"), &app.admin).await.assert_status(204);
    app.index().await;

    let sorted = |v: &[&String]| {
        let mut v: Vec<String> = v.iter().map(|s| (*s).clone()).collect();
        v.sort();
        v
    };
    let list = app.get("/v1/projects?count=true", &app.admin).await.json();
    assert_eq!(ids(list["items"].as_array().unwrap()), sorted(&[a]));
    assert_eq!(list["total"], 1);
    let list = app.get("/v1/projects?include=archived&count=true", &app.admin).await.json();
    assert_eq!(ids(list["items"].as_array().unwrap()), sorted(&[a, b]));
    assert_eq!(list["total"], 2);
    let list = app.get("/v1/projects?filter[archived]=true&count=true", &app.admin).await.json();
    assert_eq!(ids(list["items"].as_array().unwrap()), sorted(&[b]));
    assert_eq!(list["total"], 1);
    assert_eq!(ids(&items(&app, "/v1/projects?include=deleted").await), sorted(&[a, d]));
    assert_eq!(ids(&items(&app, "/v1/projects?include=archived,deleted").await), sorted(&[a, b, c, d]));
    assert_eq!(ids(&items(&app, "/v1/projects?filter[deleted]=true&include=archived").await), sorted(&[c, d]));
    assert_eq!(ids(&items(&app, "/v1/projects?filter[deleted]=true&filter[archived]=true").await), sorted(&[c]));
    assert_eq!(ids(&items(&app, "/v1/projects?filter[archived]=false").await), sorted(&[a]));
    app.get("/v1/projects?include=everything", &app.admin).await.assert_problem(400, "invalid-parameter");
    app.get("/v1/projects?filter[archived]=maybe", &app.admin).await.assert_problem(400, "invalid-parameter");
    // Deleted ones still need read_deleted; archived ones only read.
    let reader = app.key("t1", "read").await;
    app.get("/v1/projects?include=archived,deleted", &reader).await.assert_problem(403, "forbidden");
    app.get("/v1/projects?filter[archived]=true", &reader).await.assert_status(200);

    // Search: the same predicate.
    assert_eq!(ids(&items(&app, "/v1/projects?q=rocket").await), sorted(&[a]));
    assert_eq!(ids(&items(&app, "/v1/projects?q=rocket&include=archived").await), sorted(&[a, b]));
    assert_eq!(ids(&items(&app, "/v1/projects?q=beta&filter[archived]=true").await), sorted(&[b]));

    // The collection counts tell archived records apart.
    let cols = items(&app, "/v1/collections").await;
    let projects = cols.iter().find(|c| c["name"] == "projects").unwrap();
    assert_eq!(projects["counts"]["active"], 1);
    assert_eq!(projects["counts"]["archived"], 1);
    assert_eq!(projects["counts"]["deleted"], 2);
    let orders = cols.iter().find(|c| c["name"] == "orders").unwrap();
    assert_eq!(orders["archive_after_seconds"], 90 * 86_400);
}

#[tokio::test]
async fn an_archived_record_is_read_only_keeps_its_unique_values_and_references() {
    let app = app().await;
    let p = app.create("projects", &app.admin, &json!({"code": "P1", "name": "old"})).await;
    let id = p["id"].as_str().unwrap();
    let t = app.create("tasks", &app.admin, &json!({"title": "t", "project_id": id})).await;
    app.post_empty(&format!("/v1/projects/{id}:archive"), &app.admin).await.assert_status(200);

    let r = app.patch(&format!("/v1/projects/{id}"), &app.admin, &json!({"name": "new"})).await;
    let problem = r.assert_problem(409, "archived");
    assert!(problem["detail"].as_str().unwrap().contains("unarchive"));
    let now = app.get(&format!("/v1/projects/{id}"), &app.admin).await.json();
    assert_eq!((now["name"].clone(), now["version"].clone()), (json!("old"), json!(2)));

    // Its unique value stays taken; others may still point at it.
    let dup = app.post("/v1/projects", &app.admin, &json!({"code": "P1"})).await;
    assert_eq!(dup.assert_problem(409, "unique-conflict")["conflicting_id"], id);
    app.create("tasks", &app.admin, &json!({"title": "t2", "project_id": id})).await;
    let t_id = t["id"].as_str().unwrap();
    app.patch(&format!("/v1/tasks/{t_id}"), &app.admin, &json!({"title": "t1"})).await.assert_status(200);
    // Archive does not cascade, and a restrict still holds.
    assert_eq!(app.get(&format!("/v1/tasks/{t_id}"), &app.admin).await.json()["archived"], false);
    app.delete(&format!("/v1/projects/{id}"), &app.admin).await.assert_problem(409, "restrict");

    // Unarchived, it takes writes again.
    app.post_empty(&format!("/v1/projects/{id}:unarchive"), &app.admin).await.assert_status(200);
    app.patch(&format!("/v1/projects/{id}"), &app.admin, &json!({"name": "new"})).await.assert_status(200);
}

#[tokio::test]
async fn delete_and_restore_keep_the_flag_and_a_deleted_record_takes_no_archive() {
    let app = app().await;
    let p = app.create("projects", &app.admin, &json!({"code": "P1"})).await;
    let id = p["id"].as_str().unwrap();
    app.post(&format!("/v1/projects/{id}:archive"), &app.admin, &json!({"reason": "done"})).await.assert_status(200);
    app.delete(&format!("/v1/projects/{id}"), &app.admin).await.assert_status(204);
    app.get(&format!("/v1/projects/{id}"), &app.admin).await.assert_problem(404, "not-found");
    let trashed = app.get(&format!("/v1/projects/{id}?include=deleted"), &app.admin).await.json();
    assert_eq!((trashed["deleted"].clone(), trashed["archived"].clone()), (json!(true), json!(true)));
    assert_eq!(trashed["archive_reason"], "done");
    let trash = items(&app, "/v1/trash").await;
    assert_eq!(trash.iter().find(|r| r["id"] == id).unwrap()["archived"], true);

    app.post_empty(&format!("/v1/projects/{id}:archive"), &app.admin).await.assert_problem(404, "not-found");
    app.post_empty(&format!("/v1/projects/{id}:unarchive"), &app.admin).await.assert_problem(404, "not-found");

    let restored = app.post_empty(&format!("/v1/projects/{id}:restore"), &app.admin).await;
    restored.assert_status(200);
    let body = restored.json();
    assert_eq!((body["deleted"].clone(), body["archived"].clone()), (json!(false), json!(true)));
    assert_eq!(body["archive_reason"], "done");
    assert_eq!(ids(&items(&app, "/v1/projects").await), Vec::<String>::new());
    assert_eq!(ids(&items(&app, "/v1/projects?filter[archived]=true").await), vec![id.to_string()]);
}

/// Advances the manual clock by each wait and records it.
struct ClockPacer {
    clock: Arc<ManualClock>,
    waits: Mutex<Vec<Duration>>,
}

impl Pacer for ClockPacer {
    fn wait(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.waits.lock().unwrap().push(duration);
        self.clock.advance(duration);
        Box::pin(async {})
    }
}

fn worker(app: &TestApp) -> PurgeWorker {
    PurgeWorker::new(
        app.store.clone() as Arc<dyn Store>,
        app.clock.clone(),
        app.config.schema.clone(),
        app.config.purge.clone(),
    )
}

#[tokio::test]
async fn archive_after_archives_stale_records_in_batches_as_system() {
    let app = app().await;
    let mut orders = Vec::new();
    for i in 0..5 {
        orders.push(
            app.create("orders", &app.admin, &json!({"title": format!("order {i}")})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let project = app.create("projects", &app.admin, &json!({"code": "old"})).await;
    // A held record is archived like any other; a deleted one is left alone.
    app.post(&format!("/v1/orders/{}:hold", orders[1]), &app.admin, &json!({"case": "c-1"})).await.assert_status(201);
    app.delete(&format!("/v1/orders/{}", orders[4]), &app.admin).await.assert_status(204);
    app.clock.advance(60 * DAY);
    // Updated 60 days in: not stale for another 90.
    app.patch(&format!("/v1/orders/{}", orders[3]), &app.admin, &json!({"title": "touched"})).await.assert_status(200);
    app.clock.advance(31 * DAY);

    let pacer = ClockPacer { clock: app.clock.clone(), waits: Mutex::new(Vec::new()) };
    let report = worker(&app).run_pass(&pacer, None, &|_| {}).await;
    assert_eq!((report.archived, report.errors, report.purged), (3, 0, 0), "{report:?}");
    // batch_size 2: a full batch, a wait at the purge pacing, then the rest.
    let sizes: Vec<u64> = report.archive_batches.iter().map(|b| b.rows).collect();
    assert_eq!(sizes, vec![2, 1]);
    assert_eq!(pacer.waits.lock().unwrap().clone(), vec![Duration::from_millis(10)]);

    let archived = ids(&items(&app, "/v1/orders?filter[archived]=true").await);
    let mut expected = vec![orders[0].clone(), orders[1].clone(), orders[2].clone()];
    expected.sort();
    assert_eq!(archived, expected);
    assert_eq!(ids(&items(&app, "/v1/orders").await), vec![orders[3].clone()]);
    let one = app.get(&format!("/v1/orders/{}", orders[0]), &app.admin).await.json();
    assert_eq!(
        (one["archived_by"].clone(), one["archive_reason"].clone()),
        (json!("system"), json!("archive_after 90d"))
    );
    assert_eq!(one["version"], 2);
    assert_eq!(
        audit_actions(&app, &orders[0]).await.last().unwrap(),
        &("archive".to_string(), "system".to_string(), Some("archive_after 90d".to_string()))
    );
    assert_eq!(event_types(&app, &orders[0]).await.last().unwrap(), &("record.archived".to_string(), 2));
    // Still in the trash, unarchived; a collection without archive_after is never touched.
    let trashed = app.get(&format!("/v1/orders/{}?include=deleted", orders[4]), &app.admin).await.json();
    assert_eq!(trashed["archived"], false);
    let pid = project["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/v1/projects/{pid}"), &app.admin).await.json()["archived"], false);

    // The next pass finds nothing new; an unarchived record waits another 90 days.
    let again = worker(&app).run_pass(&pacer, None, &|_| {}).await;
    assert_eq!(again.archived, 0);
    app.post_empty(&format!("/v1/orders/{}:unarchive", orders[0]), &app.admin).await.assert_status(200);
    app.clock.advance(89 * DAY);
    assert_eq!(
        worker(&app).run_pass(&pacer, None, &|_| {}).await.archived,
        1,
        "only orders[3], 90 days after its update"
    );
    app.clock.advance(2 * DAY);
    assert_eq!(
        worker(&app).run_pass(&pacer, None, &|_| {}).await.archived,
        1,
        "orders[0], 90 days after its unarchive"
    );
    assert_eq!(ids(&items(&app, "/v1/orders").await), Vec::<String>::new());
}

#[tokio::test]
async fn a_pass_over_one_collection_archives_only_there_and_a_pause_does_not_stop_it() {
    let app = app().await;
    let o = app.create("orders", &app.admin, &json!({"title": "x"})).await;
    app.post_empty("/v1/purge:pause", &app.admin).await.assert_status(200);
    app.clock.advance(91 * DAY);
    let pacer = ClockPacer { clock: app.clock.clone(), waits: Mutex::new(Vec::new()) };
    assert_eq!(worker(&app).run_pass(&pacer, Some("projects"), &|_| {}).await.archived, 0);
    let report = worker(&app).run_pass(&pacer, Some("orders"), &|_| {}).await;
    assert!(report.paused);
    assert_eq!(report.archived, 1);
    let id = o["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/v1/orders/{id}"), &app.admin).await.json()["archived"], true);
}

// ---------------------------------------------------------------------------------------
// The property: whatever happens, a default list, count and search show exactly the
// records neither deleted nor archived; `include=archived` adds the archived ones.

#[derive(Debug, Clone, Copy)]
enum Op {
    Archive(usize),
    Unarchive(usize),
    Delete(usize),
    Restore(usize),
    Patch(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    (0..5usize, 0..5u8).prop_map(|(i, k)| match k {
        0 => Op::Archive(i),
        1 => Op::Unarchive(i),
        2 => Op::Delete(i),
        3 => Op::Restore(i),
        _ => Op::Patch(i),
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    archived: bool,
    deleted: bool,
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let app = app().await;
    let mut ids_made = Vec::new();
    for i in 0..5 {
        let r = app.create("projects", &app.admin, &json!({"code": format!("c{i}"), "name": "shared word"})).await;
        ids_made.push(r["id"].as_str().unwrap().to_string());
    }
    let mut model: BTreeMap<usize, State> = (0..5).map(|i| (i, State::default())).collect();
    for op in ops {
        let (path, expected) = match op {
            Op::Archive(i) | Op::Unarchive(i) => {
                let s = model.get_mut(&i).unwrap();
                let action = if matches!(op, Op::Archive(_)) { "archive" } else { "unarchive" };
                let status = if s.deleted { 404 } else { 200 };
                if !s.deleted {
                    s.archived = matches!(op, Op::Archive(_));
                }
                (format!("/v1/projects/{}:{action}", ids_made[i]), status)
            }
            Op::Restore(i) => {
                model.get_mut(&i).unwrap().deleted = false;
                (format!("/v1/projects/{}:restore", ids_made[i]), 200)
            }
            Op::Delete(i) => {
                model.get_mut(&i).unwrap().deleted = true;
                let r = app.delete(&format!("/v1/projects/{}", ids_made[i]), &app.admin).await;
                prop_assert_eq!(r.status.as_u16(), 204, "{:?}: {}", op, r.text);
                continue;
            }
            Op::Patch(i) => {
                let s = model[&i];
                let expected = match (s.deleted, s.archived) {
                    (true, _) => 404,
                    (false, true) => 409,
                    (false, false) => 200,
                };
                let r = app
                    .patch(&format!("/v1/projects/{}", ids_made[i]), &app.admin, &json!({"name": "shared word"}))
                    .await;
                prop_assert_eq!(r.status.as_u16(), expected, "{:?}: {}", op, r.text);
                continue;
            }
        };
        let r = app.post_empty(&path, &app.admin).await;
        prop_assert_eq!(r.status.as_u16(), expected, "{:?}: {}", op, r.text);
    }
    app.index().await;
    let expect = |f: &dyn Fn(&State) -> bool| {
        let mut v: Vec<String> = model.iter().filter(|(_, s)| f(s)).map(|(i, _)| ids_made[*i].clone()).collect();
        v.sort();
        v
    };
    let current = expect(&|s| !s.deleted && !s.archived);
    let list = app.get("/v1/projects?count=true", &app.admin).await.json();
    prop_assert_eq!(ids(list["items"].as_array().unwrap()), current.clone());
    prop_assert_eq!(list["total"].as_u64(), Some(current.len() as u64));
    prop_assert_eq!(ids(&items(&app, "/v1/projects?q=shared").await), current);
    let with_archived = app.get("/v1/projects?include=archived&count=true", &app.admin).await.json();
    let not_deleted = expect(&|s| !s.deleted);
    prop_assert_eq!(ids(with_archived["items"].as_array().unwrap()), not_deleted.clone());
    prop_assert_eq!(with_archived["total"].as_u64(), Some(not_deleted.len() as u64));
    prop_assert_eq!(
        ids(&items(&app, "/v1/projects?filter[archived]=true").await),
        expect(&|s| !s.deleted && s.archived)
    );
    prop_assert_eq!(
        ids(&items(&app, "/v1/projects?filter[archived]=true&include=deleted").await),
        expect(&|s| s.archived)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn archived_records_never_show_in_a_default_list_count_or_search(ops in prop::collection::vec(op_strategy(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_ops(ops))?;
    }
}
