//! The real binary with `events.nats`: HTTP writes reach JetStream, and with two `serve`
//! processes on one database the relay is taken over when its holder is killed, every
//! event arriving once. Needs a nats-server with JetStream (`TOMBSTONE_TEST_NATS_URL`,
//! which `scripts/test` always sets); the takeover runs on PostgreSQL when
//! `TOMBSTONE_TEST_POSTGRES_URL` is set, on one SQLite file otherwise.

mod common;

use std::time::{Duration, Instant};

use common::{Server, Workspace, create_key, path_str, run_bounded};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tombstone_store::ScratchDatabase;

const SCHEMA: &str = r#"
[collections.products.fields]
name = { type = "string", required = true }
"#;

/// As in `crates/server/tests/nats.rs`: skipped with a notice only outside `scripts/test`
/// and CI.
fn nats_url() -> Option<String> {
    if let Ok(url) = std::env::var("TOMBSTONE_TEST_NATS_URL") {
        return Some(url);
    }
    let required = std::env::var("TOMBSTONE_TEST_REQUIRE_NATS").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok();
    assert!(!required, "TOMBSTONE_TEST_NATS_URL is not set, and this run requires the NATS tests (scripts/test, CI)");
    eprintln!("TOMBSTONE_TEST_NATS_URL is not set: this NATS test is skipped (scripts/test starts a nats-server)");
    None
}

/// The stream's messages of `tenant` as (subject, Nats-Msg-Id, payload), oldest first.
fn received(url: &str, tenant: &str) -> Vec<(String, String, Value)> {
    common::jetstream::messages(url, tenant).into_iter().map(|m| (m.subject, m.id, m.payload)).collect()
}

/// Waits until the stream holds `n` messages of `tenant` (at most `timeout`).
fn wait_for(url: &str, tenant: &str, n: usize, timeout: Duration) -> Vec<(String, String, Value)> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = received(url, tenant);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json_of(response: reqwest::blocking::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    response.json().expect("json")
}

#[test]
fn serve_relays_http_writes_to_jetstream() {
    let Some(url) = nats_url() else { return };
    let ws = Workspace::new();
    let config = ws.write_config(&format!("[events]\nnats = \"{url}\"\n{SCHEMA}"));
    let config = path_str(&config).to_string();
    let tenant = format!("tn{}", uuid::Uuid::now_v7().simple());
    let key = create_key(|a| run_bounded(Some(&ws.cwd), a, Duration::from_secs(60)), &config, &tenant, "admin");
    let key = key["secret"].as_str().unwrap().to_string();
    let server = Server::spawn(&ws.cwd, &["serve", "--config", &config, "--listen", "127.0.0.1:0"], None);
    assert!(server.stderr_text().contains("relaying events to NATS JetStream"), "{}", server.stderr_text());

    let created = json_of(server.post("/v1/products", &key, &json!({"name": "a"})), StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    let deleted = server.http.delete(server.url(&format!("/v1/products/{id}"))).bearer_auth(&key).send().unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let deletion = deleted.headers()["deletion-id"].to_str().unwrap().to_string();

    let got = wait_for(&url, &tenant, 3, Duration::from_secs(20));
    let subjects: Vec<&str> = got.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            format!("tombstone.{tenant}.products.record.created"),
            format!("tombstone.{tenant}.products.record.deleted"),
            format!("tombstone.{tenant}._.deletion.completed"),
        ],
        "{}",
        server.stderr_text()
    );
    for (_, msg_id, payload) in &got {
        assert_eq!(payload["id"].as_str(), Some(msg_id.as_str()), "Nats-Msg-Id is the event id");
        assert_eq!(payload["tenant"], tenant.as_str());
    }
    // The propagation status follows the relay's stored position.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let op = json_of(server.get(&format!("/v1/deletions/{deletion}"), &key), StatusCode::OK);
        if op["propagation"]["nats"]["status"] == "done" {
            break;
        }
        assert!(Instant::now() < deadline, "propagation.nats never became done: {op}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_relay_is_taken_over_and_every_event_arrives_once() {
    let Some(url) = nats_url() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let database = std::env::var("TOMBSTONE_TEST_POSTGRES_URL")
        .ok()
        .map(|admin| rt.block_on(ScratchDatabase::create(&admin)).expect("create a test database"));
    let ws = Workspace::new();
    let storage = match &database {
        Some(db) => format!("[storage]\nurl = \"{}\"\n", db.url()),
        None => String::new(),
    };
    // Each replica keeps its own search index (SPEC §12): a config each.
    let replica = |n: u32| {
        format!(
            "{storage}[search]\npath = \"search-{n}\"\n[events]\nnats = \"{url}\"\npoll_interval = \"200ms\"\n{SCHEMA}"
        )
    };
    let config = path_str(&ws.write_config(&replica(1))).to_string();
    let second_config = ws.config_dir.join("second.toml");
    std::fs::write(&second_config, replica(2)).expect("write config");
    let second_config = path_str(&second_config).to_string();
    let tenant = format!("tn{}", uuid::Uuid::now_v7().simple());
    let key = create_key(|a| run_bounded(Some(&ws.cwd), a, Duration::from_secs(60)), &config, &tenant, "admin");
    let key = key["secret"].as_str().unwrap().to_string();
    let mut first = Server::spawn(&ws.cwd, &["serve", "--config", &config, "--listen", "127.0.0.1:0"], None);
    let second = Server::spawn(&ws.cwd, &["serve", "--config", &second_config, "--listen", "127.0.0.1:0"], None);

    // Writes through both; the relay of one of them publishes.
    let mut ids = Vec::new();
    for i in 0..10 {
        let server = if i % 2 == 0 { &first } else { &second };
        let created =
            json_of(server.post("/v1/products", &key, &json!({"name": format!("p{i}")})), StatusCode::CREATED);
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    assert_eq!(wait_for(&url, &tenant, 10, Duration::from_secs(20)).len(), 10);

    // The first started first and holds the lease; the second waits.
    let took = "NATS relay lease changed hands";
    assert!(first.stderr_text().contains(took), "the first holds the lease:\n{}", first.stderr_text());
    assert!(!second.stderr_text().contains(took), "the second waits:\n{}", second.stderr_text());

    // SIGKILL the first (its lease is left to expire), while writes go on through the second.
    first.child.kill().expect("kill");
    first.child.wait().expect("wait");
    for i in 10..20 {
        json_of(second.post("/v1/products", &key, &json!({"name": format!("p{i}")})), StatusCode::CREATED);
    }
    // The lease lives 15 s; the second claims it at most 5 s after it expired.
    let got = wait_for(&url, &tenant, 20, Duration::from_secs(40));
    let names: Vec<&str> = got.iter().map(|(_, _, p)| p["data"]["name"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    assert_eq!(names, expected, "every event once, in commit order\n{}", second.stderr_text());
    let mut msg_ids: Vec<&str> = got.iter().map(|(_, id, _)| id.as_str()).collect();
    msg_ids.sort_unstable();
    msg_ids.dedup();
    assert_eq!(msg_ids.len(), 20, "no event twice");
    assert!(second.stderr_text().contains(took), "the second took over:\n{}", second.stderr_text());
    drop(second);
    drop(database);
}
