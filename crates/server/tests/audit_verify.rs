//! The audit chain's verify status over HTTP (`GET`/`POST /v1/audit/verify`): pending
//! before any check, intact after one, broken once an entry is edited behind the server's
//! back (through the raw database), coalesced requests, a check running on another replica,
//! what another tenant's admin is told, and the admin scope. Runs on both stores.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::{Value, json};
use tombstone_domain::time::Clock;
use tombstone_server::audit_verify::{LEASE, REUSE_COST_FACTOR, REUSE_WITHIN};

async fn status(app: &TestApp, key: &str) -> Value {
    let r = app.get("/v1/audit/verify", key).await;
    r.assert_status(200);
    r.json()
}

async fn check_now(app: &TestApp, key: &str) -> Value {
    let r = app.post_empty("/v1/audit/verify", key).await;
    r.assert_status(200);
    r.json()
}

#[tokio::test]
async fn an_edited_entry_turns_the_status_broken_and_only_its_tenant_is_told_which() {
    let app = TestApp::new().await;
    let other_admin = app.key("t2", "admin").await;
    let before = status(&app, &app.admin).await;
    assert_eq!(before["status"], "pending", "{before}");
    assert_eq!(before["checked_at"], Value::Null, "{before}");

    let mug = app.create("products", &app.admin, &json!({"sku": "A-1", "name": "Mug"})).await;
    app.create("products", &other_admin, &json!({"sku": "B-1", "name": "Bowl"})).await;

    let first = check_now(&app, &app.admin).await;
    assert_eq!(first["status"], "intact", "{first}");
    assert_eq!(first["reused"], false, "{first}");
    assert_eq!(first["broken_entry"], Value::Null, "{first}");
    assert!(first["checked_at"].is_string(), "{first}");
    // Every replica answers from the database: GET gives the same check.
    let stored = status(&app, &app.admin).await;
    assert_eq!(stored["status"], "intact");
    assert_eq!(stored["checked_at"], first["checked_at"]);
    // The other tenant sees the same status, and nothing about how many entries there are.
    let theirs = status(&app, &other_admin).await;
    assert_eq!(theirs["status"], "intact");
    for member in ["entries", "head_seq", "entries_checked"] {
        assert!(theirs.get(member).is_none(), "{member} is not for tenants: {theirs}");
    }

    // Edit the tenant's create entry of the mug, as someone with database access would.
    let seq = app
        .raw_int(&format!(
            "select seq from audit where tenant = 't1' and action = 'create' and record_id = '{}'",
            mug["id"].as_str().unwrap()
        ))
        .await;
    app.raw_execute(&format!("update audit set reason = 'nothing to see' where seq = {seq}")).await;

    // Asked again within a few seconds: the check that just ran is answered, not a new one.
    let again = check_now(&app, &app.admin).await;
    assert_eq!(again["reused"], true, "{again}");
    assert_eq!(again["status"], "intact", "{again}");
    assert_eq!(again["checked_at"], first["checked_at"]);

    app.clock.advance(REUSE_WITHIN + Duration::from_secs(1));
    let broken = check_now(&app, &app.admin).await;
    assert_eq!(broken["status"], "broken", "{broken}");
    assert_eq!(broken["reused"], false, "{broken}");
    assert_eq!(broken["broken_in_this_tenant"], true, "{broken}");
    assert_eq!(broken["broken_entry"]["seq"], seq, "{broken}");
    assert!(broken["broken_entry"]["problem"].as_str().unwrap().contains("hash"), "{broken}");
    assert_ne!(broken["checked_at"], first["checked_at"]);
    assert_eq!(status(&app, &app.admin).await["status"], "broken");

    // Another tenant learns that the chain is broken, not where: the entry is not theirs.
    let theirs = status(&app, &other_admin).await;
    assert_eq!(theirs["status"], "broken", "{theirs}");
    assert_eq!(theirs["broken_in_this_tenant"], false, "{theirs}");
    assert_eq!(theirs["broken_entry"], Value::Null, "{theirs}");
    let asked = check_now(&app, &other_admin).await;
    assert_eq!(asked["reused"], true, "{asked}");
    assert_eq!(asked["broken_entry"], Value::Null, "{asked}");

    // Put back, checked again: intact.
    app.raw_execute(&format!("update audit set reason = null where seq = {seq}")).await;
    app.clock.advance(REUSE_WITHIN + Duration::from_secs(1));
    let mended = check_now(&app, &other_admin).await;
    assert_eq!(mended["status"], "intact", "{mended}");
    assert_eq!(mended["broken_in_this_tenant"], Value::Null, "{mended}");
}

#[tokio::test]
async fn a_check_another_replica_is_running_is_not_repeated() {
    let app = TestApp::new().await;
    app.create("products", &app.admin, &json!({"sku": "A-1", "name": "Mug"})).await;
    // Another replica holds the check's lease: it is checking now.
    app.store.claim_lease(LEASE, "another-replica", app.clock.now(), Duration::from_secs(15)).await.unwrap();
    let r = app.post_empty("/v1/audit/verify", &app.admin).await;
    r.assert_status(202);
    let body = r.json();
    assert_eq!(body["running"], true, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    // Its lease lapses (the replica died): the next request checks.
    app.clock.advance(Duration::from_secs(16));
    let done = check_now(&app, &app.admin).await;
    assert_eq!(done["status"], "intact", "{done}");
    assert_eq!(done["running"], false, "{done}");
}

/// A log whose check took long is not checked again on request until ten times that has
/// passed: asking cannot keep a replica reading the whole log.
#[tokio::test]
async fn a_slow_check_is_reused_for_ten_times_its_duration() {
    let app = TestApp::new().await;
    // The last check took a minute (a large log), as another replica stored it.
    let took = Duration::from_secs(60);
    let intact: Result<u64, tombstone_domain::audit::ChainError> = Ok(1);
    app.store.save_audit_check(app.clock.now(), 60_000, &intact).await.unwrap();
    app.clock.advance(REUSE_WITHIN + Duration::from_secs(1));
    let asked = check_now(&app, &app.admin).await;
    assert_eq!(asked["reused"], true, "past REUSE_WITHIN, within ten times the duration: {asked}");
    app.clock.advance(took * REUSE_COST_FACTOR);
    let fresh = check_now(&app, &app.admin).await;
    assert_eq!(fresh["reused"], false, "{fresh}");
    assert_eq!(fresh["status"], "intact", "{fresh}");
}

#[tokio::test]
async fn the_verify_status_needs_the_admin_scope() {
    let app = TestApp::new().await;
    let auditor = app.key("t1", "read,audit,read_deleted,purge").await;
    let body = app.get("/v1/audit/verify", &auditor).await.assert_problem(403, "forbidden");
    assert_eq!(body["missing_scope"], "admin", "{body}");
    let body = app.post_empty("/v1/audit/verify", &auditor).await.assert_problem(403, "forbidden");
    assert_eq!(body["missing_scope"], "admin", "{body}");
    // Nothing was checked on its behalf.
    assert_eq!(status(&app, &app.admin).await["status"], "pending");
    // The log itself still cannot be changed through the API.
    let r = app.delete("/v1/audit/verify", &app.admin).await;
    r.assert_status(405);
}
