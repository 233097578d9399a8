//! A clock behind the record's last change — another replica's, or a wall clock stepped
//! back — never puts a version before the one it follows (SPEC §14): every change of a
//! record, a cascade's set-based one included, takes its instant or one microsecond after
//! the record's last change, so `valid_from` grows along the versions, `valid_to` chains,
//! and `as_of` at each version's `valid_from` reads that version.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::{Value, json};
use tombstone_domain::time::Timestamp;

const SCHEMA: &str = r#"
[collections.projects.fields]
name = { type = "string" }

[collections.tasks.fields]
title      = { type = "string" }
project_id = { type = "ref", collection = "projects", on_delete = "cascade" }
"#;

/// Moves the app's clock back by `by` (as a replica whose clock is behind would be).
fn step_back(app: &TestApp, by: Duration) {
    let now = tombstone_domain::time::Clock::now(app.clock.as_ref());
    app.clock.set(Timestamp::from_micros(now.as_micros() - i64::try_from(by.as_micros()).unwrap()));
}

async fn versions(app: &TestApp, path: &str) -> Vec<Value> {
    let mut items = app.get(&format!("{path}/versions"), &app.admin).await.json()["items"].as_array().unwrap().clone();
    items.reverse();
    items
}

#[tokio::test]
async fn versions_stay_in_order_when_the_clock_goes_back() {
    let app = TestApp::with_schema(SCHEMA).await;
    let key = &app.admin;
    let project = app.create("projects", key, &json!({"name": "p"})).await["id"].as_str().unwrap().to_string();
    let task = app.create("tasks", key, &json!({"title": "t", "project_id": project})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = Duration::from_secs(1);
    step_back(&app, second);
    app.patch(&format!("/v1/projects/{project}"), key, &json!({"name": "renamed"})).await.assert_status(200);
    app.patch(&format!("/v1/tasks/{task}"), key, &json!({"title": "renamed"})).await.assert_status(200);
    step_back(&app, second);
    // A cascade: the task's soft delete is set-based.
    app.delete(&format!("/v1/projects/{project}"), key).await.assert_status(204);
    step_back(&app, second);
    app.post_empty(&format!("/v1/projects/{project}:restore"), key).await.assert_status(200);
    step_back(&app, second);
    app.post_empty(&format!("/v1/projects/{project}:revert?version=1"), key).await.assert_status(200);

    // Later, with the clock past every change (as_of refuses instants in the future).
    app.clock.advance(Duration::from_secs(10));
    for path in [format!("/v1/projects/{project}"), format!("/v1/tasks/{task}")] {
        let all = versions(&app, &path).await;
        assert!(all.len() >= 3, "{all:?}");
        for pair in all.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let (from_a, from_b) = (a["valid_from"].as_str().unwrap(), b["valid_from"].as_str().unwrap());
            assert_eq!(b["version"].as_i64(), a["version"].as_i64().map(|n| n + 1), "{path}: {all:?}");
            assert!(
                from_a < from_b,
                "{path}: version {} from {from_a}, version {} from {from_b}",
                a["version"],
                b["version"]
            );
            assert_eq!(a["valid_to"], b["valid_from"], "{path}: the versions chain");
            assert_eq!(a["record"]["updated_at"].as_str(), Some(from_a));
        }
        // Each version is what as_of its valid_from reads.
        for v in &all {
            let at = v["valid_from"].as_str().unwrap();
            let read = app.get(&format!("{path}?as_of={at}&include=deleted"), key).await;
            read.assert_status(200);
            assert_eq!(read.json()["version"], v["version"], "{path} as_of {at}");
        }
    }
}
