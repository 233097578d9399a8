//! The audit log and the event feed: one entry and one event per change, in the same
//! transaction; nothing for idempotent repeats; tenant confinement; no pii anywhere.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use common::TestApp;
use http_body_util::BodyExt;
use serde_json::{Value, json};

async fn audit(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/audit{query}"), key).await;
    r.assert_status(200);
    r.json()["items"].as_array().unwrap().clone()
}

async fn events(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/events{query}"), key).await;
    r.assert_status(200);
    r.json()["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_change_has_one_audit_entry_and_one_event() {
    let app = TestApp::new().await;
    let key = app.key("t1", "read,write,delete,restore,audit,events").await;
    let p = app.create("products", &key, &json!({"sku": "A", "name": "Mug"})).await;
    let id = p["id"].as_str().unwrap();
    app.send(
        Method::PATCH,
        &format!("/v1/products/{id}"),
        Some(&key),
        &[("x-request-id", "req-patch-1")],
        Some(br#"{"name":"Big mug"}"#.to_vec()),
    )
    .await
    .assert_status(200);
    app.delete(&format!("/v1/products/{id}?reason=duplicate%20listing"), &key).await.assert_status(204);
    // Idempotent repeats write nothing.
    app.delete(&format!("/v1/products/{id}"), &key).await.assert_status(204);
    app.post_empty(&format!("/v1/products/{id}:restore?reason=oops"), &key).await.assert_status(200);
    app.post_empty(&format!("/v1/products/{id}:restore"), &key).await.assert_status(200);

    let entries = audit(&app, &key, &format!("?record_id={id}")).await;
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "update", "delete", "restore"]);
    let key_id = entries[0]["actor"].as_str().unwrap();
    assert!(key_id.starts_with("key_"));
    assert!(entries.iter().all(|e| e["actor"] == key_id && e["tenant"] == "t1" && e["collection"] == "products"));
    assert_eq!(entries[1]["request_id"], "req-patch-1");
    assert_eq!(entries[2]["reason"], "duplicate listing");
    assert!(entries[2]["deletion_id"].as_str().unwrap().starts_with("del_"));
    assert_eq!(entries[3]["reason"], "oops");
    let versions: Vec<i64> = entries.iter().map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }

    let feed = events(&app, &key, "").await;
    let types: Vec<&str> = feed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["record.created", "record.updated", "record.deleted", "deletion.completed", "record.restored"]);
    let seqs: Vec<i64> = feed.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let ids: std::collections::HashSet<&str> = feed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), feed.len());
    let deleted = &feed[2];
    assert_eq!(deleted["record_id"], id);
    assert_eq!(deleted["version"], 3);
    assert_eq!(deleted["data"]["deleted"], true);
    assert_eq!(deleted["data"]["name"], "Big mug");
    assert_eq!(feed[3]["deletion_id"], deleted["deletion_id"]);
    assert_eq!(feed[3]["record_id"], id);
    for member in [
        "id",
        "seq",
        "type",
        "tenant",
        "collection",
        "record_id",
        "version",
        "deletion_id",
        "occurred_at",
        "request_id",
        "data",
    ] {
        assert!(deleted.get(member).is_some(), "envelope lacks {member}: {deleted}");
    }
}

#[tokio::test]
async fn hard_delete_is_audited_as_purge_with_a_purged_event_without_data() {
    let app = TestApp::new().await;
    let s = app.create("secrets", &app.admin, &json!({"value": "hunter2"})).await;
    let id = s["id"].as_str().unwrap();
    app.delete(&format!("/v1/secrets/{id}"), &app.admin).await.assert_status(204);
    let entries = audit(&app, &app.admin, &format!("?record_id={id}&action=purge")).await;
    assert_eq!(entries.len(), 1);
    let feed = events(&app, &app.admin, "?type=record.purged").await;
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0]["data"], Value::Null);
}

#[tokio::test]
async fn audit_and_events_are_confined_to_the_tenant_and_scoped() {
    let app = TestApp::new().await;
    let other = app.key("t2", "admin").await;
    app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    assert!(audit(&app, &other, "?collection=products").await.is_empty());
    assert!(events(&app, &other, "").await.is_empty());
    assert_eq!(events(&app, &app.admin, "").await.len(), 1);
    let reader = app.key("t1", "read").await;
    app.get("/v1/audit", &reader).await.assert_problem(403, "forbidden");
    app.get("/v1/events", &reader).await.assert_problem(403, "forbidden");
    app.get("/v1/events?after=x", &app.admin).await.assert_problem(400, "invalid-parameter");
    app.get("/v1/audit?action=nope", &app.admin).await.assert_problem(400, "invalid-parameter");
    app.get("/v1/events?type=record.nope", &app.admin).await.assert_problem(400, "invalid-parameter");
}

#[tokio::test]
async fn the_audit_log_cannot_be_changed_through_the_api() {
    let app = TestApp::new().await;
    app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    let seq = audit(&app, &app.admin, "").await.last().unwrap()["seq"].as_i64().unwrap();
    for method in [Method::DELETE, Method::PATCH, Method::PUT, Method::POST] {
        let r = app.send(method.clone(), &format!("/v1/audit/{seq}"), Some(&app.admin), &[], None).await;
        r.assert_problem(405, "method-not-allowed");
        let r = app.send(method, "/v1/audit", Some(&app.admin), &[], None).await;
        r.assert_problem(405, "method-not-allowed");
    }
    app.get(&format!("/v1/audit/{seq}"), &app.admin).await.assert_status(200);
}

#[tokio::test]
async fn audit_and_event_pages_walk_every_entry_once() {
    let app = TestApp::new().await;
    for i in 0..7 {
        app.create("categories", &app.admin, &json!({"name": format!("c{i}")})).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.as_ref().map_or("?limit=3".to_string(), |c| format!("?limit=3&cursor={c}"));
        let body = app.get(&format!("/v1/events{q}"), &app.admin).await.json();
        seen.extend(body["items"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()));
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let after = events(&app, &app.admin, &format!("?after={}", seen[4])).await;
    assert_eq!(after.len(), 2);
}

#[tokio::test]
async fn pii_values_never_reach_audit_or_outbox_rows() {
    let app = TestApp::new().await;
    let marker = "pii-marker-7f3a9c@example.com";
    let c = app.create("customers", &app.admin, &json!({"email": marker, "name": "Ada"})).await;
    let id = c["id"].as_str().unwrap();
    app.patch(&format!("/v1/customers/{id}"), &app.admin, &json!({"email": format!("x{marker}")}))
        .await
        .assert_status(200);
    app.delete(&format!("/v1/customers/{id}"), &app.admin).await.assert_status(204);
    app.post_empty(&format!("/v1/customers/{id}:restore"), &app.admin).await.assert_status(200);
    for table in ["audit", "outbox"] {
        let rows = app.raw_rows(&format!("select * from {table}")).await;
        for text in rows.iter().flatten().flatten() {
            assert!(!text.contains("pii-marker"), "{table} row holds a pii value: {text}");
        }
        assert!(rows.len() >= 4, "{table} has {} rows", rows.len());
    }
    // The non-pii field still travels.
    let feed = events(&app, &app.admin, "?collection=customers").await;
    assert_eq!(feed[0]["data"]["name"], "Ada");
    assert!(feed[0]["data"].get("email").is_none());
}

/// Reads SSE frames from a streaming body until `want` events arrived.
async fn read_sse(body: Body, want: usize) -> Vec<(String, Value)> {
    let mut body = body;
    let mut buffer = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("an SSE frame in time");
        let Some(Ok(frame)) = frame else { break };
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let id = block.lines().find_map(|l| l.strip_prefix("id:")).map(|s| s.trim().to_string());
            let data = block.lines().find_map(|l| l.strip_prefix("data:")).map(|s| s.trim().to_string());
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

fn sse_request(app: &TestApp, last_event_id: Option<&str>, query: &str) -> Request<Body> {
    let mut b = Request::builder()
        .uri(format!("/v1/events/stream{query}"))
        .header("authorization", format!("Bearer {}", app.admin));
    if let Some(id) = last_event_id {
        b = b.header("last-event-id", id);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_with_exactly_the_missed_events() {
    let app = TestApp::new().await;
    for i in 0..5 {
        app.create("categories", &app.admin, &json!({"name": format!("c{i}")})).await;
    }
    let all = events(&app, &app.admin, "").await;
    let resume_after = all[1]["seq"].as_i64().unwrap().to_string();
    let response =
        tower::ServiceExt::oneshot(app.router.clone(), sse_request(&app, Some(&resume_after), "")).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let got = read_sse(response.into_body(), 3).await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    let expected: Vec<String> = all[2..].iter().map(|e| e["seq"].to_string()).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(got[0].1, all[2]);
}

#[tokio::test]
async fn sse_without_a_position_streams_new_events_live() {
    let app = TestApp::new().await;
    app.create("categories", &app.admin, &json!({"name": "old"})).await;
    let response = tower::ServiceExt::oneshot(app.router.clone(), sse_request(&app, None, "")).await.unwrap();
    let reader = tokio::spawn(read_sse(response.into_body(), 2));
    app.create("categories", &app.admin, &json!({"name": "new1"})).await;
    app.create("categories", &app.admin, &json!({"name": "new2"})).await;
    let got = reader.await.unwrap();
    let names: Vec<&str> = got.iter().map(|(_, e)| e["data"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["new1", "new2"]);
}

#[tokio::test]
async fn sse_is_confined_to_the_tenant() {
    let app = TestApp::new().await;
    let other = app.key("t2", "admin").await;
    app.create("categories", &other, &json!({"name": "theirs"})).await;
    app.create("categories", &app.admin, &json!({"name": "mine"})).await;
    let response = tower::ServiceExt::oneshot(app.router.clone(), sse_request(&app, Some("0"), "")).await.unwrap();
    let got = read_sse(response.into_body(), 1).await;
    assert_eq!(got[0].1["data"]["name"], "mine");
    assert_eq!(got[0].1["tenant"], "t1");
}

#[tokio::test]
async fn a_malformed_stream_position_is_400_even_beside_a_valid_one() {
    let app = TestApp::new().await;
    for (last_event_id, query) in [
        (Some("0"), "?after=9223372036854775808"),
        (Some("0"), "?after=-1"),
        (None, "?after=x"),
        (Some("x"), "?after=0"),
        (Some("-3"), ""),
    ] {
        let response =
            tower::ServiceExt::oneshot(app.router.clone(), sse_request(&app, last_event_id, query)).await.unwrap();
        assert_eq!(response.status(), 400, "Last-Event-ID {last_event_id:?} {query}");
    }
}
