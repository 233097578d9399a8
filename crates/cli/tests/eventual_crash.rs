//! An eventual cascade survives a crash: the real binary deletes a parent with 5,000
//! eventual children, is killed with SIGKILL while its worker is part-way through the
//! children, and is started again on the same config. The operation must then finish by
//! itself, and every child must be deleted exactly once — one version bump, one
//! `cascade_delete` audit entry, one `record.deleted` event — with exactly one
//! `deletion.completed` event for the operation, and an intact audit chain.
//!
//! Waits are bounded polls; the server's own stderr is kept for failure messages.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, path_str, run_bounded};
use reqwest::blocking::Client;
use serde_json::{Value, json};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the restarted server may take to finish the operation.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to watch for the first children to go before killing anyway.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);
const CHILDREN: usize = 5_000;
/// Children of a second parent, which must stay active.
const BYSTANDERS: usize = 20;

const CONFIG: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[retention]
default = "7d"

[collections.parents.fields]
name = { type = "string" }

[collections.children.fields]
n         = { type = "integer" }
parent_id = { type = "ref", collection = "parents", on_delete = "eventual" }
"#;

/// `tombstone serve` on a config, in its directory; killed (SIGKILL) on drop.
impl Server {
    fn start(config: &Path) -> Self {
        let cwd = config.parent().expect("config dir");
        Server::spawn(cwd, &["serve", "--config", path_str(config), "--listen", "127.0.0.1:0"], Some("info"))
    }

    /// SIGKILL, no chance to finish anything.
    fn kill(mut self) {
        self.child.kill().expect("kill the server");
        let status = self.child.wait().expect("reap the server");
        assert!(!status.success(), "the server was killed, not stopped: {status:?}");
    }
}

/// Runs a one-shot command, bounded; returns (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = run_bounded(None, args, COMMAND_TIMEOUT);
    (out.status.success(), out.stdout, out.stderr)
}

/// A small typed client over one server.
struct Api<'a> {
    http: &'a Client,
    server: &'a Server,
    key: &'a str,
}

impl Api<'_> {
    fn get(&self, path: &str) -> Value {
        let resp = self.http.get(self.server.url(path)).bearer_auth(self.key).send().expect("GET");
        let status = resp.status();
        let text = resp.text().expect("body");
        assert_eq!(status.as_u16(), 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    fn create(&self, collection: &str, body: &Value) {
        let resp =
            self.http.post(self.server.url(&format!("/v1/{collection}"))).bearer_auth(self.key).json(body).send();
        let resp = resp.expect("POST");
        let status = resp.status().as_u16();
        assert_eq!(status, 201, "create {body}: {}", resp.text().unwrap_or_default());
    }

    /// Every item of a list, following `next_cursor`.
    fn all(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let page = match &cursor {
                Some(c) => self.get(&format!("{path}{sep}limit=500&cursor={c}")),
                None => self.get(&format!("{path}{sep}limit=500")),
            };
            out.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return out,
            }
        }
        panic!("{path}: the cursor never ended");
    }

    /// Every event of a filtered feed, following `after=SEQ`.
    fn events(&self, filter: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!("/v1/events?{filter}&after={after}&limit=500"));
            let items = page["items"].as_array().expect("items");
            let Some(last) = items.last() else { return out };
            after = last["seq"].as_i64().expect("seq");
            out.extend(items.iter().cloned());
        }
    }

    fn children_deleted(&self, deletion_id: &str) -> (String, u64) {
        let op = self.get(&format!("/v1/deletions/{deletion_id}"));
        (op["status"].as_str().expect("status").to_string(), op["counts"]["children"].as_u64().unwrap_or(0))
    }
}

fn child_id(i: usize) -> String {
    format!("ch{i:05}")
}

#[test]
fn an_eventual_cascade_killed_midway_finishes_exactly_once_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config: PathBuf = dir.path().join("tombstone.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let (ok, stdout, stderr) =
        run(&["keys", "create", "--config", path_str(&config), "--tenant", "t1", "--scopes", "admin", "--json"]);
    assert!(ok, "keys create failed: {stderr}");
    let key: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("keys create --json: {e}: {stdout}"));
    let key = key["secret"].as_str().expect("secret").to_string();
    let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");

    // -- the data: one parent with 5,000 eventual children, and a bystander parent.
    let server = Server::start(&config);
    let started = Instant::now();
    {
        let api = Api { http: &http, server: &server, key: &key };
        api.create("parents", &json!({"id": "p1", "name": "doomed"}));
        api.create("parents", &json!({"id": "p2", "name": "bystander"}));
        thread::scope(|s| {
            for t in 0..4 {
                let (http, server, key) = (&http, &server, key.as_str());
                s.spawn(move || {
                    let api = Api { http, server, key };
                    for i in (t..CHILDREN).step_by(4) {
                        api.create("children", &json!({"id": child_id(i), "n": i, "parent_id": "p1"}));
                    }
                });
            }
        });
        for i in 0..BYSTANDERS {
            api.create("children", &json!({"id": format!("by{i:02}"), "n": i, "parent_id": "p2"}));
        }
    }
    println!("created {CHILDREN} children in {:?}", started.elapsed());

    // -- the delete answers at once; kill the server while the worker is part-way.
    let resp = http.delete(server.url("/v1/parents/p1")).bearer_auth(&key).send().expect("DELETE");
    assert_eq!(resp.status().as_u16(), 204, "{}", resp.text().unwrap_or_default());
    let deletion_id = resp.headers().get("deletion-id").and_then(|v| v.to_str().ok()).expect("Deletion-Id").to_string();
    let deleted_at = Instant::now();
    let mut observed = Vec::new();
    let (status_at_kill, deleted_at_kill) = {
        let api = Api { http: &http, server: &server, key: &key };
        loop {
            let (status, n) = api.children_deleted(&deletion_id);
            if observed.last() != Some(&n) {
                observed.push(n);
            }
            let midway = n > 0 && (n as usize) < CHILDREN;
            if midway || status == "done" || deleted_at.elapsed() > WATCH_TIMEOUT {
                break (status, n);
            }
        }
    };
    server.kill();
    let midway = deleted_at_kill > 0 && (deleted_at_kill as usize) < CHILDREN;
    println!(
        "killed {:?} after the DELETE: operation {status_at_kill}, {deleted_at_kill}/{CHILDREN} children deleted \
         (polls saw {observed:?}){}",
        deleted_at.elapsed(),
        if midway { "" } else { " — the window was missed; the restart still has to be exact" }
    );
    assert!(deleted_at_kill as usize <= CHILDREN, "the operation lists more children than exist: {deleted_at_kill}");

    // -- restart on the same config; the queue resumes by itself.
    let server = Server::start(&config);
    let api = Api { http: &http, server: &server, key: &key };
    let restarted = Instant::now();
    let deadline = restarted + FINISH_TIMEOUT;
    loop {
        let (status, n) = api.children_deleted(&deletion_id);
        if status == "done" {
            assert_eq!(n as usize, CHILDREN, "done with {n} children");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} with {n}/{CHILDREN} children {FINISH_TIMEOUT:?} after the restart; stderr:\n{}",
            server.stderr_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    println!("the restarted server finished the operation in {:?}", restarted.elapsed());

    // -- the operation itself.
    let op = api.get(&format!("/v1/deletions/{deletion_id}"));
    assert_eq!(op["counts"], json!({"children": CHILDREN, "parents": 1}), "{}", op["counts"]);
    assert_eq!(op["records_total"], CHILDREN + 1);
    // `records` comes a page at a time.
    let mut records: Vec<Value> = op["records"].as_array().expect("records").clone();
    let mut next = op["records_next_cursor"].as_str().map(str::to_string);
    while let Some(cursor) = next {
        let page = api.get(&format!("/v1/deletions/{deletion_id}?cursor={cursor}"));
        records.extend(page["records"].as_array().expect("records").iter().cloned());
        next = page["records_next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(records.len(), CHILDREN + 1);
    let distinct: std::collections::HashSet<String> = records.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), CHILDREN + 1, "each record once");
    assert_eq!(records[0], json!({"collection": "parents", "id": "p1"}), "root first");

    // -- every child deleted exactly once, by this operation.
    let children = api.all("/v1/children?include=deleted");
    assert_eq!(children.len(), CHILDREN + BYSTANDERS);
    let mut deleted = 0;
    for c in &children {
        let id = c["id"].as_str().expect("id");
        if id.starts_with("by") {
            assert_eq!((c["deleted"].clone(), c["version"].clone()), (json!(false), json!(1)), "bystander {c}");
            continue;
        }
        assert_eq!(c["deleted"], true, "{c}");
        assert_eq!(c["deletion_id"], deletion_id.as_str(), "{c}");
        assert_eq!(c["version"], 2, "deleted once, so one version bump: {c}");
        deleted += 1;
    }
    assert_eq!(deleted, CHILDREN);

    // -- one cascade_delete audit entry per child.
    let audit = api.all("/v1/audit?action=cascade_delete&collection=children");
    let mut per_child: BTreeMap<String, usize> = BTreeMap::new();
    for e in &audit {
        assert_eq!(e["deletion_id"], deletion_id.as_str(), "{e}");
        *per_child.entry(e["record_id"].as_str().expect("record_id").to_string()).or_default() += 1;
    }
    let twice: Vec<_> = per_child.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "children audited more than once: {twice:?}");
    assert_eq!(per_child.len(), CHILDREN, "every child audited");
    assert!(per_child.keys().all(|id| id.starts_with("ch")));
    // And per record, for a sample: create then cascade_delete, nothing else.
    for i in (0..CHILDREN).step_by(25) {
        let entries = api.get(&format!("/v1/audit?record_id={}", child_id(i)));
        let actions: Vec<&str> =
            entries["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
        assert_eq!(actions, vec!["create", "cascade_delete"], "audit of {}", child_id(i));
    }

    // -- one record.deleted event per child, one deletion.completed for the operation.
    let events = api.events("type=record.deleted&collection=children");
    let mut per_child: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["deletion_id"], deletion_id.as_str(), "{e}");
        *per_child.entry(e["record_id"].as_str().expect("record_id").to_string()).or_default() += 1;
    }
    assert!(per_child.values().all(|n| *n == 1), "children with several record.deleted events");
    assert_eq!(per_child.len(), CHILDREN);
    let completed = api.events("type=deletion.completed");
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0]["deletion_id"], deletion_id.as_str());
    assert_eq!(
        (completed[0]["collection"].as_str(), completed[0]["record_id"].as_str()),
        (Some("parents"), Some("p1"))
    );

    // -- the audit chain survived the kill.
    let (ok, stdout, stderr) = run(&["audit", "verify", "--config", path_str(&config)]);
    assert!(ok, "audit verify: {stdout}{stderr}");

    println!(
        "children deleted: {deleted}; cascade_delete audit entries: {}; record.deleted events for children: {}; \
         deletion.completed events: {}; audit verify: {}",
        audit.len(),
        events.len(),
        completed.len(),
        stdout.trim()
    );
}
