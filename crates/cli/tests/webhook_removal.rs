//! A webhook endpoint removed from the config, through the real binary: `tombstone serve`
//! with an endpoint that cannot be reached, then a restart over the same database without
//! it. The restart cancels its deliveries, the outbox drains in the first clean-up pass,
//! the backlog gauge reads 0, and neither answers nor logs ever show the URL's token.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Server, Workspace, create_key, json_of, path_str, run_bounded};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "tok-b41c9e07d2";
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

const SCHEMA: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[events]
retention = "1ms"

[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string", required = true }
"#;

/// Polls `check` until it holds, for at most 30 s (the relay and the clean-up run in the
/// background; this bounds the wait, it measures nothing).
#[track_caller]
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().expect("items").clone()
}

#[test]
fn a_removed_endpoint_is_cancelled_at_restart_and_the_outbox_drains() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook?token={TOKEN}", refused.local_addr().unwrap());
    drop(refused);
    let ws = Workspace::with_config(&format!("{SCHEMA}\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"));
    let config = ws.config_dir.join("tombstone.toml");
    let key =
        create_key(|args| run_bounded(Some(&ws.cwd), args, Duration::from_secs(20)), path_str(&config), "t1", "admin");
    let key = key["secret"].as_str().expect("secret").to_string();
    let serve = ["serve", "--config", path_str(&config), "--listen", "127.0.0.1:0"];

    let server = Server::spawn(&ws.cwd, &serve, Some("info"));
    for sku in ["a", "b", "c"] {
        json_of(server.post("/v1/products", &key, &json!({"sku": sku, "name": "Mug"})), StatusCode::CREATED);
    }
    eventually("every record's first delivery was attempted", || {
        let list = json_of(server.get("/v1/webhooks/deliveries?status=pending", &key), StatusCode::OK);
        let tried = items(&list).iter().filter(|d| d["attempts"].as_u64() >= Some(1)).count();
        tried == 3 && items(&list).iter().all(|d| d["last_error"] == "connect")
    });
    let endpoint = tombstone_server::webhooks::endpoint_id(&url);
    let logs = server.stderr_text();
    assert!(logs.contains("webhook delivery attempt failed") && logs.contains(&endpoint), "{logs}");
    assert!(!logs.contains(TOKEN), "the log shows the URL's token: {logs}");
    drop(server);

    // The same database, the endpoint gone from the config.
    ws.write_config(SCHEMA);
    let server = Server::spawn(&ws.cwd, &serve, Some("info"));
    let pending = json_of(server.get("/v1/webhooks/deliveries?status=pending", &key), StatusCode::OK);
    assert!(items(&pending).is_empty(), "{pending}");
    let cancelled = json_of(server.get("/v1/webhooks/deliveries?status=cancelled", &key), StatusCode::OK);
    assert_eq!(items(&cancelled).len(), 3, "{cancelled}");
    assert!(items(&cancelled).iter().all(|d| d["last_error"] == "endpoint-removed"), "{cancelled}");
    // The first clean-up pass runs at start: everything but the newest event goes.
    eventually("the outbox drained", || items(&json_of(server.get("/v1/events", &key), StatusCode::OK)).len() == 1);
    let metrics = server.http.get(server.url("/metrics")).send().expect("GET /metrics").text().expect("body");
    assert!(metrics.lines().any(|l| l == "tombstone_outbox_backlog 0"), "{metrics}");
    let endpoints = server.get("/v1/webhooks/endpoints", &key).text().expect("body");
    assert!(!endpoints.contains(TOKEN), "{endpoints}");
    assert!(!server.stderr_text().contains(TOKEN), "{}", server.stderr_text());
}
