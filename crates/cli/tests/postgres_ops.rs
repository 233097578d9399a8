//! `tombstone` on PostgreSQL as an operator runs it: the real binary, a real cluster of its
//! own (started with `scripts/postgres`, so that the test can take it away), real HTTP.
//!
//! - An unreachable database at start is one line on stderr and a non-zero exit.
//! - While the database is gone, `/readyz` and requests answer 503 problems and the server
//!   stays up; when it returns, the server recovers by itself — no restart — and nothing
//!   answered before the outage is lost.
//! - `keys`, `migrate`, `audit verify` and `purge` work on PostgreSQL.
//!
//! The tests run where PostgreSQL is available, which `scripts/test` guarantees by setting
//! `TOMBSTONE_TEST_POSTGRES_URL`; without it they say so and return.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{Output, Server, Workspace, create_key, run_bounded};
use reqwest::StatusCode;
use serde_json::json;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to see the database again once it is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster of this test's own, stopped and removed on drop.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
}

impl Cluster {
    /// `None` where the tests have no PostgreSQL.
    fn start(test: &str) -> Option<Self> {
        if std::env::var("TOMBSTONE_TEST_POSTGRES_URL").is_err() {
            eprintln!("{test}: TOMBSTONE_TEST_POSTGRES_URL is not set; skipping the PostgreSQL test");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(script()).arg("start").arg(dir.path()).output().expect("run scripts/postgres");
        assert!(out.status.success(), "scripts/postgres start: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout).expect("utf-8 URL").trim().to_string();
        Some(Self { dir, url })
    }

    fn run(&self, command: &str) {
        let out = Command::new(script()).arg(command).arg(self.dir.path()).output().expect("run scripts/postgres");
        assert!(out.status.success(), "scripts/postgres {command}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).output();
    }
}

fn config(url: &str) -> String {
    format!(
        r#"
[storage]
url = "{url}"
pool_size = 4

[retention]
default = "1s"

[purge]
interval = "1h"

[collections.notes]
unique = [["title"]]

[collections.notes.fields]
title = {{ type = "string", required = true }}
"#
    )
}

#[test]
fn an_unreachable_database_at_start_is_one_line_and_a_non_zero_exit() {
    if std::env::var("TOMBSTONE_TEST_POSTGRES_URL").is_err() {
        eprintln!("skipping: TOMBSTONE_TEST_POSTGRES_URL is not set");
        return;
    }
    let ws = Workspace::with_config(&config("postgres://tombstone:secret@127.0.0.1:1/nowhere"));
    let config = ws.config_dir.join("tombstone.toml");
    let config = config.to_str().expect("utf-8 path");
    for args in [vec!["serve", "--config", config], vec!["migrate", "--config", config]] {
        let out = run_bounded(Some(&ws.cwd), &args, COMMAND_TIMEOUT);
        let line = out.assert_one_line_failure();
        assert!(line.contains("cannot connect to PostgreSQL at 127.0.0.1:1"), "{args:?}: {line}");
        assert!(!line.contains("secret"), "the password never shows: {line}");
    }
}

#[test]
fn the_server_answers_503_while_the_database_is_gone_and_recovers_by_itself() {
    let Some(cluster) = Cluster::start("outage") else { return };
    let ws = Workspace::with_config(&config(&cluster.url));
    let config = ws.config_dir.join("tombstone.toml");
    let config = config.to_str().expect("utf-8 path").to_string();
    let run = |args: &[&str]| -> Output { run_bounded(Some(&ws.cwd), args, COMMAND_TIMEOUT) };
    run(&["migrate", "--config", &config]).assert_success();
    let key = create_key(run, &config, "t1", "admin")["secret"].as_str().expect("secret").to_string();

    let server = Server::spawn(&ws.cwd, &["serve", "--config", &config, "--listen", "127.0.0.1:0"], None);
    assert_eq!(server.http.get(server.url("/readyz")).send().expect("readyz").status(), StatusCode::OK);
    let created = server.post("/v1/notes", &key, &json!({"title": "before"}));
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<serde_json::Value>().expect("JSON")["id"].as_str().expect("id").to_string();
    // Unique among active records, by the partial index.
    let dup = server.post("/v1/notes", &key, &json!({"title": "before"}));
    assert_eq!(dup.status(), StatusCode::CONFLICT);

    cluster.run("halt");
    let ready = server.http.get(server.url("/readyz")).send().expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.headers()["content-type"], "application/problem+json");
    // Requests fail as the storage's, not as the server's: 503 problems, never a 500.
    let write = server.post("/v1/notes", &key, &json!({"title": "during"}));
    assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE, "{:?}", write.text());
    let read = server.get("/v1/notes?limit=5", &key);
    assert_eq!(read.status(), StatusCode::SERVICE_UNAVAILABLE, "{:?}", read.text());

    cluster.run("resume");
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    while server.http.get(server.url("/readyz")).send().map(|r| r.status()).ok() != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "not ready {RECOVERY_TIMEOUT:?} after the database returned");
        thread::sleep(Duration::from_millis(200));
    }
    // The same process serves again, with everything answered before the outage.
    assert_eq!(server.get(&format!("/v1/notes/{id}"), &key).status(), StatusCode::OK);
    assert_eq!(server.post("/v1/notes", &key, &json!({"title": "after"})).status(), StatusCode::CREATED);
    let list = server.get("/v1/notes?count=true", &key).json::<serde_json::Value>().expect("JSON");
    assert_eq!(list["total"], 2, "{list}");
    drop(server);

    // The one-shot commands on the same database.
    let verified = run(&["audit", "verify", "--config", &config]);
    verified.assert_success();
    assert!(verified.stdout.contains("entries verified"), "{}", verified.stdout);
    run(&["purge", "--config", &config, "--dry-run"]).assert_success();
}
