//! `tombstone purge` as an operator runs it: the real binary beside a real `tombstone serve`
//! on the same database. Records get a one-second recovery window, so the tests wait for
//! real time to pass — bounded, by polling the preview rather than sleeping blindly.
//!
//! The dry run must agree with `GET /v1/purge/preview` and change nothing; the real run
//! purges exactly what was due; a paused purge purges nothing and says so; a pass killed
//! with SIGKILL leaves every removed row with exactly one audit entry and one event, and
//! the next pass purges the rest, each row once.
//!
//! Each test runs on each store: SQLite's file, then a fresh PostgreSQL database when
//! `TOMBSTONE_TEST_POSTGRES_URL` is set (`common::db`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::thread;
use std::time::{Duration, Instant};

use common::db::{TestDb, each_store};
use common::{Output, Server, Workspace, create_key, run_bounded};
use reqwest::StatusCode;
use serde_json::{Value, json};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long records may take to come due (their window is one second).
const DUE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may show a record another process purged (it polls the outbox).
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(3);

const CONFIG: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[retention]
default = "1s"

[purge]
interval = "1h"
batch_size = 2
pause = "10ms"
max_rows_per_second = 1000

[collections.notes.fields]
text = { type = "string" }

[collections.memos]
retention = "1h"

[collections.memos.fields]
text = { type = "string" }
"#;

// ---------------------------------------------------------------------------------------
// Harness

impl Workspace {
    fn config(&self) -> String {
        self.config_dir.join("tombstone.toml").to_str().expect("utf-8 path").to_string()
    }

    /// Runs a one-shot command.
    fn run(&self, args: &[&str]) -> Output {
        run_bounded(Some(&self.cwd), args, COMMAND_TIMEOUT)
    }

    /// `tombstone purge --config F ARGS…`, asserting success.
    fn purge(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = vec!["purge", "--config", config.as_str()];
        all.extend_from_slice(args);
        let out = self.run(&all);
        out.assert_success();
        out
    }

    /// An admin key of tenant t1 (its secret).
    fn admin_key(&self) -> String {
        let config = self.config();
        let key = create_key(|args| self.run(args), &config, "t1", "admin");
        key["secret"].as_str().expect("secret").to_string()
    }

    fn serve(&self) -> Server {
        let config = self.config();
        Server::spawn(&self.cwd, &["serve", "--config", &config, "--listen", "127.0.0.1:0"], None)
    }
}

/// Typed requests against a running server.
impl Server {
    /// Sends a request and returns the status and the JSON body (`null` when empty).
    fn call(&self, method: reqwest::Method, path: &str, key: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method.clone(), self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.text().expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        (status, json)
    }

    #[track_caller]
    fn expect(&self, method: reqwest::Method, path: &str, key: &str, body: Option<&Value>, status: u16) -> Value {
        let (got, json) = self.call(method.clone(), path, key, body);
        assert_eq!(got.as_u16(), status, "{method} {path}: {json}");
        json
    }

    /// Creates a record and returns its id.
    fn create(&self, collection: &str, key: &str, text: &str) -> String {
        let r =
            self.expect(reqwest::Method::POST, &format!("/v1/{collection}"), key, Some(&json!({"text": text})), 201);
        r["id"].as_str().expect("id").to_string()
    }

    fn delete(&self, collection: &str, id: &str, key: &str) {
        self.expect(reqwest::Method::DELETE, &format!("/v1/{collection}/{id}"), key, None, 204);
    }

    fn preview(&self, key: &str) -> Value {
        self.expect(reqwest::Method::GET, "/v1/purge/preview", key, None, 200)
    }

    /// Polls the preview until `collection` has `count` records due (real time must pass
    /// for a one-second window); returns that preview.
    /// Polls the preview until `count` records of `collection` are due and `held` more are
    /// past their window but held. Both matter: records deleted a moment apart come due a
    /// moment apart, so the held one may still be inside its window when the rest are due.
    fn wait_until_due(&self, key: &str, collection: &str, count: u64, held: u64) -> Value {
        let deadline = Instant::now() + DUE_TIMEOUT;
        loop {
            let preview = self.preview(key);
            let counts = &preview["collections"][collection];
            if counts["count"].as_u64() == Some(count) && counts["held"].as_u64() == Some(held) {
                return preview;
            }
            assert!(Instant::now() < deadline, "{collection} never had {count} records due and {held} held: {preview}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `COLLECTION: N due` lines of a dry run; panics on any other line except a note
/// about the pause (returned separately).
fn due_lines(stdout: &str) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut due = BTreeMap::new();
    let mut notes = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = line.strip_suffix(" due").and_then(|l| l.split_once(": ")).and_then(|(c, n)| {
            (!c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
                .then_some(())
                .and(n.parse::<u64>().ok().map(|n| (c.to_string(), n)))
        });
        match parsed {
            Some((c, n)) => assert!(due.insert(c, n).is_none(), "a collection printed twice:\n{stdout}"),
            None => {
                assert!(line.contains("paused"), "unexpected dry-run line {line:?} in:\n{stdout}");
                notes.push(line.to_string());
            }
        }
    }
    (due, notes)
}

/// Row counts that any purge would change.
fn fingerprint(db: &TestDb) -> (i64, i64, i64, i64) {
    let count = |sql: &str| db.int(sql);
    (
        count("select count(*) from rec_notes"),
        count("select count(*) from rec_memos"),
        count("select count(*) from audit"),
        count("select count(*) from outbox"),
    )
}

fn ids_of(values: &Value) -> HashSet<String> {
    values
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {values}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn dry_run_matches_the_preview_and_changes_nothing_then_purge_purges() {
    for db in each_store("tombstone.db") {
        dry_run_matches_the_preview_and_changes_nothing_then_purge_purges_on(db);
    }
}

fn dry_run_matches_the_preview_and_changes_nothing_then_purge_purges_on(db: TestDb) {
    let ws = Workspace::with_config(&db.config(CONFIG));
    let db = db.in_config_dir(&ws.config_dir);
    let key = ws.admin_key();
    let server = ws.serve();
    let notes: Vec<String> = (0..5).map(|i| server.create("notes", &key, &format!("note {i}"))).collect();
    for id in &notes[..4] {
        server.delete("notes", id, &key);
    }
    let held = &notes[3];
    server.expect(reqwest::Method::POST, &format!("/v1/notes/{held}:hold"), &key, Some(&json!({"case": "K"})), 201);
    let memos: Vec<String> = (0..2).map(|i| server.create("memos", &key, &format!("memo {i}"))).collect();
    for id in &memos {
        server.delete("memos", id, &key);
    }

    let preview = server.wait_until_due(&key, "notes", 3, 1);
    assert_eq!(preview["paused"], false);
    assert_eq!(preview["total"], 3);
    assert_eq!(preview["collections"]["notes"]["held"], 1);
    assert_eq!(preview["collections"]["memos"]["count"], 0);
    assert_eq!(preview["collections"]["memos"]["due_next_7_days"], 2);
    let due_ids: HashSet<String> = notes[..3].iter().cloned().collect();
    assert_eq!(ids_of(&preview["collections"]["notes"]["sample"]), due_ids);
    let before = fingerprint(&db);

    // The text dry run: one line per collection, the preview's counts.
    let out = ws.purge(&["--dry-run"]);
    let (due, notes_printed) = due_lines(&out.stdout);
    let expected: BTreeMap<String, u64> = preview["collections"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(c, v)| (c.clone(), v["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(due, expected, "dry run:\n{}", out.stdout);
    assert!(notes_printed.is_empty(), "nothing is paused:\n{}", out.stdout);

    // The JSON dry run.
    let json = ws.purge(&["--dry-run", "--json"]).json();
    assert_eq!(json["paused"], false, "{json}");
    assert_eq!(json["collections"]["notes"]["due"], 3, "{json}");
    assert_eq!(json["collections"]["notes"]["held"], 1, "{json}");
    assert_eq!(ids_of(&json["collections"]["notes"]["sample"]), due_ids);
    assert_eq!(json["collections"]["memos"]["due"], 0, "{json}");

    // One collection only.
    let out = ws.purge(&["--dry-run", "--collection", "memos"]);
    assert_eq!(due_lines(&out.stdout).0, BTreeMap::from([("memos".to_string(), 0)]), "{}", out.stdout);

    // None of that changed anything.
    assert_eq!(fingerprint(&db), before);
    assert_eq!(server.preview(&key)["collections"]["notes"]["count"], 3);

    // The server reads (and caches) one of them before another process purges it.
    let cached = &notes[0];
    server.expect(reqwest::Method::GET, &format!("/v1/notes/{cached}?include=deleted"), &key, None, 200);

    // The real pass purges exactly what was due and says so.
    let out = ws.purge(&[]);
    let summary = out.stdout.trim();
    assert!(summary.starts_with("purged 3 records"), "{summary}");
    assert!(summary.contains("notes: 3"), "{summary}");
    assert!(!summary.contains("memos"), "nothing was purged from memos: {summary}");
    let after = fingerprint(&db);
    assert_eq!((after.0, after.1), (before.0 - 3, before.1));
    assert_eq!(after.2, before.2 + 3, "one audit entry per purged record");
    assert_eq!(after.3, before.3 + 3, "one event per purged record");

    // The server learns of a purge made by another process within a bound (its cache is
    // told through the outbox), and of those it never cached at once.
    let deadline = Instant::now() + CACHE_SYNC_TIMEOUT;
    while server.call(reqwest::Method::GET, &format!("/v1/notes/{cached}?include=deleted"), &key, None).0
        != StatusCode::NOT_FOUND
    {
        assert!(Instant::now() < deadline, "the server still shows {cached} {CACHE_SYNC_TIMEOUT:?} after its purge");
        thread::sleep(Duration::from_millis(100));
    }
    for id in &notes[..3] {
        server.expect(reqwest::Method::GET, &format!("/v1/notes/{id}?include=deleted"), &key, None, 404);
        server.expect(reqwest::Method::POST, &format!("/v1/notes/{id}:restore"), &key, None, 404);
    }
    let kept = server.expect(reqwest::Method::GET, &format!("/v1/notes/{held}?include=deleted"), &key, None, 200);
    assert_eq!(kept["legal_hold"], true);
    server.expect(reqwest::Method::GET, &format!("/v1/notes/{}", notes[4]), &key, None, 200);
    for id in &memos {
        server.expect(reqwest::Method::GET, &format!("/v1/memos/{id}?include=deleted"), &key, None, 200);
    }
    let audit = server.expect(reqwest::Method::GET, "/v1/audit?action=purge", &key, None, 200);
    let purged: HashSet<String> =
        audit["items"].as_array().unwrap().iter().map(|e| e["record_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(purged, due_ids);
    assert_eq!(audit["items"].as_array().unwrap().len(), 3);
    let events = server.expect(reqwest::Method::GET, "/v1/events?type=record.purged", &key, None, 200);
    assert_eq!(events["items"].as_array().unwrap().len(), 3, "{events}");
    let preview = server.preview(&key);
    assert_eq!((preview["total"].clone(), preview["collections"]["notes"]["held"].clone()), (json!(0), json!(1)));

    // A second pass has nothing left to do.
    let json = ws.purge(&["--json"]).json();
    assert_eq!(
        (json["purged"].clone(), json["paused"].clone(), json["errors"].clone()),
        (json!(0), json!(false), json!(0))
    );
    assert_eq!(fingerprint(&db), after);
}

#[test]
fn a_paused_purge_purges_nothing_says_so_and_stays_paused_across_restarts() {
    for db in each_store("tombstone.db") {
        a_paused_purge_purges_nothing_says_so_and_stays_paused_across_restarts_on(db);
    }
}

fn a_paused_purge_purges_nothing_says_so_and_stays_paused_across_restarts_on(db: TestDb) {
    let ws = Workspace::with_config(&db.config(CONFIG));
    let db = db.in_config_dir(&ws.config_dir);
    let key = ws.admin_key();
    let server = ws.serve();
    let ids: Vec<String> = (0..2).map(|i| server.create("notes", &key, &format!("note {i}"))).collect();
    for id in &ids {
        server.delete("notes", id, &key);
    }
    server.wait_until_due(&key, "notes", 2, 0);
    let paused = server.expect(reqwest::Method::POST, "/v1/purge:pause", &key, None, 200);
    assert_eq!(paused["paused"], true);
    let before = fingerprint(&db);

    let out = ws.purge(&[]);
    assert!(out.stdout.contains("paused"), "the command says why nothing happened: {}", out.stdout);
    assert!(out.stdout.contains("nothing purged") || out.stdout.contains("purged 0"), "{}", out.stdout);
    let json = ws.purge(&["--json"]).json();
    assert_eq!((json["paused"].clone(), json["purged"].clone()), (json!(true), json!(0)), "{json}");
    let (due, notes) = due_lines(&ws.purge(&["--dry-run"]).stdout);
    assert_eq!(due["notes"], 2, "the dry run still shows what is due");
    assert_eq!(notes.len(), 1, "and says the pause would stop it");
    assert_eq!(ws.purge(&["--dry-run", "--json"]).json()["paused"], true);
    assert_eq!(fingerprint(&db), before, "nothing purged while paused");

    // The pause lives in the database: a restarted server still reports it.
    drop(server);
    let server = ws.serve();
    assert_eq!(server.preview(&key)["paused"], true);
    assert_eq!(ws.purge(&["--json"]).json()["purged"], 0);

    server.expect(reqwest::Method::POST, "/v1/purge:resume", &key, None, 200);
    let json = ws.purge(&["--json"]).json();
    assert_eq!((json["paused"].clone(), json["purged"].clone()), (json!(false), json!(2)), "{json}");
    assert_eq!(json["collections"]["notes"], 2, "{json}");
    for id in &ids {
        server.expect(reqwest::Method::GET, &format!("/v1/notes/{id}?include=deleted"), &key, None, 404);
    }
}

#[test]
fn purge_refuses_an_unknown_collection_in_one_line() {
    let ws = Workspace::with_config(CONFIG);
    let config = ws.config();
    for args in [
        vec!["purge", "--config", config.as_str(), "--collection", "nope"],
        vec!["purge", "--config", config.as_str(), "--dry-run", "--collection", "nope"],
    ] {
        let out = ws.run(&args);
        assert!(!out.status.success(), "{args:?} succeeded: {}", out.stdout);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line on stderr:\n{}", out.stderr);
        assert!(lines[0].contains("nope"), "{}", lines[0]);
        assert!(out.stdout.trim().is_empty(), "{}", out.stdout);
    }
    let out = ws.run(&["purge", "--config", "/nonexistent/tombstone.toml"]);
    assert!(!out.status.success());
    assert_eq!(out.stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{}", out.stderr);
}

/// A config whose purge runs flat out, so a pass over many rows is long enough to kill.
const FAST_PURGE: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[purge]
batch_size = 500
pause = "1ms"
max_rows_per_second = 10000000

[collections.notes.fields]
text = { type = "string" }
"#;

/// A migrated workspace with the [`FAST_PURGE`] config over `db` and `n` notes due for
/// purging, written straight into the table (the API would take minutes for this many).
fn expired_notes(db: TestDb, n: usize) -> (Workspace, TestDb, HashSet<String>) {
    let ws = Workspace::with_config(&db.config(FAST_PURGE));
    let db = db.in_config_dir(&ws.config_dir);
    ws.run(&["migrate", "--config", &ws.config()]).assert_success();
    let seeded = db.seed_expired_notes(n).into_iter().collect();
    (ws, db, seeded)
}

/// What the database says was purged: ids gone from the table, and the ids of every
/// `purge` audit entry and `record.purged` event (with repeats, if any).
fn purged_traces(db: &TestDb, seeded: &HashSet<String>) -> (HashSet<String>, Vec<String>, Vec<String>) {
    let column = |sql: &str| db.column(sql);
    let present: HashSet<String> = column("select id from rec_notes").into_iter().collect();
    let gone = seeded.difference(&present).cloned().collect();
    let audited = column("select record_id from audit where action = 'purge'");
    let announced = column("select record_id from outbox where type = 'record.purged'");
    (gone, audited, announced)
}

/// Every purged row has exactly one audit entry and one event, and nothing else has any.
#[track_caller]
fn assert_traces_match(gone: &HashSet<String>, audited: &[String], announced: &[String]) {
    let audited_set: HashSet<String> = audited.iter().cloned().collect();
    let announced_set: HashSet<String> = announced.iter().cloned().collect();
    assert_eq!(audited.len(), audited_set.len(), "a record was audited as purged twice");
    assert_eq!(announced.len(), announced_set.len(), "a record.purged event was written twice");
    assert_eq!(&audited_set, gone, "purge audit entries and removed rows differ");
    assert_eq!(&announced_set, gone, "record.purged events and removed rows differ");
}

#[test]
fn a_purge_killed_mid_pass_loses_nothing_and_the_next_pass_finishes() {
    for db in each_store("tombstone.db") {
        a_purge_killed_mid_pass_loses_nothing_and_the_next_pass_finishes_on(db);
    }
}

fn a_purge_killed_mid_pass_loses_nothing_and_the_next_pass_finishes_on(db: TestDb) {
    let (ws, db, seeded) = expired_notes(db, 50_000);
    let config = ws.config();

    let mut child = std::process::Command::new(common::BIN)
        .args(["purge", "--config", &config])
        .current_dir(&ws.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn tombstone purge");
    // Kill it (SIGKILL) once some batches have committed, well before the pass is done.
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let audited = db.int("select count(*) from audit where action = 'purge'");
        if audited >= 2_000 {
            break;
        }
        assert!(child.try_wait().expect("wait").is_none(), "the pass ended before it could be killed");
        assert!(Instant::now() < deadline, "the pass purged nothing in {COMMAND_TIMEOUT:?}");
        thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the pass was killed, not finished");

    let (gone, audited, announced) = purged_traces(&db, &seeded);
    assert!(
        !gone.is_empty() && gone.len() < seeded.len(),
        "killed mid-pass: {} of {} purged",
        gone.len(),
        seeded.len()
    );
    assert_traces_match(&gone, &audited, &announced);
    ws.run(&["audit", "verify", "--config", &config]).assert_success();

    // The next pass purges the rest, each row once.
    let out = ws.purge(&["--json"]);
    assert_eq!(out.json()["purged"].as_u64(), Some((seeded.len() - gone.len()) as u64), "{}", out.stdout);
    let (gone, audited, announced) = purged_traces(&db, &seeded);
    assert_eq!(gone, seeded);
    assert_traces_match(&gone, &audited, &announced);
    let verified = ws.run(&["audit", "verify", "--config", &config]);
    verified.assert_success();
    assert!(verified.stdout.contains(&seeded.len().to_string()), "{}", verified.stdout);
}

#[test]
fn the_backlog_gauge_counts_what_is_due_from_the_start() {
    for db in each_store("tombstone.db") {
        the_backlog_gauge_counts_what_is_due_from_the_start_on(db);
    }
}

fn the_backlog_gauge_counts_what_is_due_from_the_start_on(db: TestDb) {
    let (ws, _db, seeded) = expired_notes(db, 1_234);
    // The first pass is an hour away; the gauge must not wait for it.
    let server = ws.serve();
    let deadline = Instant::now() + CACHE_SYNC_TIMEOUT;
    loop {
        let text = server.http.get(server.url("/metrics")).send().expect("GET /metrics").text().expect("metrics");
        let backlog = text
            .lines()
            .find(|l| l.starts_with("tombstone_purge_backlog{collection=\"notes\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if backlog == Some(seeded.len() as f64) {
            break;
        }
        assert!(Instant::now() < deadline, "backlog {backlog:?}, {} due", seeded.len());
        thread::sleep(Duration::from_millis(50));
    }
}
