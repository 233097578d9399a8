//! The disk fills up under a running server: the real `tombstone serve` keeps its database
//! and its search index on a small tmpfs (mounted by this test, as root), a filler file
//! takes the rest of the space, and clients write until the server refuses. Then:
//!
//! - every refused write is a clear problem (507 `storage-full` or 503
//!   `storage-unavailable`, with `Retry-After`), never a 500 and never a hang;
//! - nothing is half-applied: every acknowledged write has exactly one audit entry and one
//!   event, and nothing the server refused is visible anywhere;
//! - reads keep working, and `tombstone audit verify` passes beside the full server;
//! - once the filler is deleted the same process writes again by itself (no restart), and
//!   the search index catches up with everything written, before and after.
//!
//! Without root (or where tmpfs cannot be mounted) the test says why and passes without
//! running: CI runs it as root. Waits are bounded polls.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, Workspace, create_key, header, path_str, run_bounded};
use reqwest::StatusCode;
use reqwest::blocking::Response;
use serde_json::{Value, json};

/// The database's file system: the database, its WAL and a filler.
const DATA_SIZE: &str = "16m";
/// The search index's own file system, filled first: the index fails alone while the
/// database still has room.
const SEARCH_SIZE: &str = "8m";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to write again after space returns, and the index to
/// catch up (both happen by themselves; this only bounds the wait).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Writes tried before concluding the disk never filled (a broken filler, not a pass).
const MAX_WRITES: usize = 20_000;
/// Records written before the disk fills.
const BEFORE: usize = 20;

const CONFIG: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[search]
path = "search"

[collections.notes.fields]
text = { type = "string", search = true }
n    = { type = "integer" }
"#;

/// A size-limited tmpfs, unmounted on drop (also when the test panics). Declared before
/// the server, so the server is dropped (killed) first and the mount is not busy.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `Err` says why it could not.
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path_str(dir)])
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Fills the file system holding `path` with one file, to the last byte it accepts.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let mut written = 0u64;
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let bytes = vec![0xA5u8; chunk];
        while file.write_all(&bytes).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = file.sync_all();
    assert!(written > 0, "the filler wrote nothing: the disk was full before it");
    written
}

/// Text that fills pages quickly and carries a word the search can find.
fn text(word: &str, i: usize) -> String {
    let mut t = format!("{word} ");
    while t.len() < 3000 {
        t.push_str(&format!("filler{} ", (i * 7919 + t.len()) % 100_003));
    }
    t
}

/// What a write the server refused must look like: a problem saying the storage refused
/// it, with `Retry-After`; never a 500.
#[track_caller]
fn assert_storage_refusal(response: Response, what: &str) -> String {
    let status = response.status();
    let retry_after = header(&response, "retry-after");
    let content_type = header(&response, "content-type");
    let body = response.text().expect("body");
    assert!(
        status == StatusCode::INSUFFICIENT_STORAGE || status == StatusCode::SERVICE_UNAVAILABLE,
        "{what}: a write on a full disk must be a 507 or 503, got {status}: {body}"
    );
    assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{what}: {body}");
    let problem: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    let kind = problem["type"].as_str().unwrap_or_default().to_string();
    match status {
        StatusCode::INSUFFICIENT_STORAGE => assert_eq!(kind, "storage-full", "{what}: {problem}"),
        _ => assert_eq!(kind, "storage-unavailable", "{what}: {problem}"),
    }
    assert!(retry_after.is_some(), "{what}: no Retry-After: {problem}");
    assert!(problem["request_id"].as_str().is_some_and(|r| !r.is_empty()), "{what}: {problem}");
    kind
}

/// Every item of a paged list (`items`, `next_cursor`).
fn all_pages(server: &Server, key: &str, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_string(),
        };
        let r = server.get(&url, key);
        assert_eq!(r.status(), StatusCode::OK, "GET {url}");
        let page: Value = r.json().expect("page");
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
}

/// The audit actions and event types of each record, in order.
type History = BTreeMap<String, Vec<String>>;

fn histories(server: &Server, key: &str) -> (History, History) {
    let mut audit = History::new();
    for entry in all_pages(server, key, "/v1/audit?collection=notes&limit=500") {
        let id = entry["record_id"].as_str().expect("record_id").to_string();
        audit.entry(id).or_default().push(entry["action"].as_str().expect("action").to_string());
    }
    let mut events = History::new();
    for event in all_pages(server, key, "/v1/events?after=0&collection=notes&limit=500") {
        let id = event["record_id"].as_str().expect("record_id").to_string();
        events.entry(id).or_default().push(event["type"].as_str().expect("type").to_string());
    }
    (audit, events)
}

/// What the clients were told: per record, the writes acknowledged (in order), and the
/// creates refused.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeMap<String, Vec<&'static str>>,
    refused_creates: BTreeSet<String>,
    refusals: BTreeMap<String, usize>,
}

impl Ledger {
    fn ack(&mut self, id: &str, action: &'static str) {
        self.acknowledged.entry(id.to_string()).or_default().push(action);
    }

    fn refuse(&mut self, kind: String) {
        *self.refusals.entry(kind).or_default() += 1;
    }

    /// Audit actions and event types the acknowledged writes must have left, nothing else.
    fn expected(&self) -> (History, History) {
        let mut audit = History::new();
        let mut events = History::new();
        for (id, actions) in &self.acknowledged {
            audit.insert(id.clone(), actions.iter().map(|a| (*a).to_string()).collect());
            // A delete without a cascade completes its operation at once (§13).
            let types = actions
                .iter()
                .flat_map(|a| match *a {
                    "create" => &["record.created"][..],
                    "update" => &["record.updated"][..],
                    "delete" => &["record.deleted", "deletion.completed"][..],
                    other => panic!("no event type for {other}"),
                })
                .map(|t| (*t).to_string())
                .collect();
            events.insert(id.clone(), types);
        }
        (audit, events)
    }
}

fn create(server: &Server, key: &str, id: &str, word: &str, i: usize) -> Response {
    server
        .http
        .post(server.url("/v1/notes"))
        .bearer_auth(key)
        .json(&json!({"id": id, "text": text(word, i), "n": i}))
        .send()
        .unwrap_or_else(|e| panic!("POST {id}: no answer (a hang or a crash): {e}"))
}

fn patch(server: &Server, key: &str, id: &str, n: usize) -> Response {
    server
        .http
        .patch(server.url(&format!("/v1/notes/{id}")))
        .bearer_auth(key)
        .json(&json!({"n": n}))
        .send()
        .unwrap_or_else(|e| panic!("PATCH {id}: no answer (a hang or a crash): {e}"))
}

fn delete(server: &Server, key: &str, id: &str) -> Response {
    server
        .http
        .delete(server.url(&format!("/v1/notes/{id}")))
        .bearer_auth(key)
        .send()
        .unwrap_or_else(|e| panic!("DELETE {id}: no answer (a hang or a crash): {e}"))
}

fn audit_verify(config: &Path) -> String {
    let out = run_bounded(None, &["audit", "verify", "--config", path_str(config)], COMMAND_TIMEOUT);
    out.assert_success();
    out.stdout.trim().to_string()
}

/// The server's warnings and errors (the last 40), for failure messages.
fn log_tail(server: &Server) -> String {
    let text = server.stderr_text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Ids of the notes the search finds for `word`.
fn search(server: &Server, key: &str, word: &str) -> BTreeSet<String> {
    let r = server.get(&format!("/v1/notes?q={word}&limit=500"), key);
    assert_eq!(r.status(), StatusCode::OK, "search {word}");
    let page: Value = r.json().expect("search page");
    page["items"].as_array().expect("items").iter().map(|i| i["id"].as_str().expect("id").to_string()).collect()
}

#[test]
fn a_full_disk_refuses_writes_cleanly_and_the_server_resumes_when_space_returns() {
    if !is_root() {
        eprintln!("SKIPPED disk_full: mounting a size-limited tmpfs needs root (CI runs this test as root)");
        return;
    }
    let ws = Workspace::new();
    let config = ws.write_config(CONFIG);
    let mounts = Tmpfs::mount(&ws.config_dir.join("data"), DATA_SIZE)
        .and_then(|data| Ok((data, Tmpfs::mount(&ws.config_dir.join("search"), SEARCH_SIZE)?)));
    let (tmpfs, search_fs) = match mounts {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED disk_full: {why}");
            return;
        }
    };
    let key = create_key(|args| run_bounded(None, args, COMMAND_TIMEOUT), path_str(&config), "t1", "admin")["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let server = Server::spawn(
        &ws.config_dir,
        &["serve", "--config", path_str(&config), "--listen", "127.0.0.1:0"],
        Some("info"),
    );
    let mut ledger = Ledger::default();

    for i in 0..BEFORE {
        let id = format!("before{i}");
        let r = create(&server, &key, &id, "early", i);
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().unwrap_or_default());
        ledger.ack(&id, "create");
    }

    // The index holds them before the disk fills, so what follows tests its recovery.
    let want: BTreeSet<String> = ledger.acknowledged.keys().cloned().collect();
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    while search(&server, &key, "early") != want {
        assert!(Instant::now() < deadline, "the index never caught up; server log:\n{}", log_tail(&server));
        thread::sleep(Duration::from_millis(100));
    }

    // The index's disk fills first: writes go on (the index never holds them back), the
    // indexer fails to commit, and searches still answer.
    let search_filler = search_fs.dir.join("filler");
    fill(&search_filler);
    for i in 0..BEFORE {
        let id = format!("unindexed{i}");
        let r = create(&server, &key, &id, "during", i);
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "a full index disk refused a write: {}",
            r.text().unwrap_or_default()
        );
        ledger.ack(&id, "create");
    }
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    while !server.stderr_text().contains("search indexer could not catch up") {
        assert!(Instant::now() < deadline, "the indexer never hit the full disk; server log:\n{}", log_tail(&server));
        thread::sleep(Duration::from_millis(100));
    }
    let r = server.get("/v1/notes?q=early&limit=10", &key);
    assert_eq!(r.status(), StatusCode::OK, "search with its disk full");

    // Fill the disk, then write until the server refuses.
    let filler = tmpfs.dir.join("filler");
    let filled = fill(&filler);
    let mut first_refusal = None;
    for i in 0..MAX_WRITES {
        let id = format!("full{i}");
        let r = create(&server, &key, &id, "during", i);
        if r.status() == StatusCode::CREATED {
            ledger.ack(&id, "create");
            continue;
        }
        let kind = assert_storage_refusal(r, &format!("create {id}"));
        ledger.refuse(kind);
        ledger.refused_creates.insert(id);
        first_refusal = Some(i);
        break;
    }
    let first_refusal = first_refusal.unwrap_or_else(|| panic!("{MAX_WRITES} writes on a full disk all succeeded"));

    // More writes of every kind on the full disk: each succeeds (some space may remain in
    // the WAL) or is refused cleanly; the ledger keeps what the client was told.
    let targets: Vec<String> = (0..10).map(|i| format!("before{i}")).collect();
    for (round, target) in targets.iter().enumerate() {
        let id = format!("late{round}");
        let r = create(&server, &key, &id, "during", round);
        if r.status() == StatusCode::CREATED {
            ledger.ack(&id, "create");
        } else {
            let kind = assert_storage_refusal(r, &format!("create {id}"));
            ledger.refuse(kind);
            ledger.refused_creates.insert(id);
        }
        let r = if round % 2 == 0 { patch(&server, &key, target, 1000 + round) } else { delete(&server, &key, target) };
        match r.status() {
            StatusCode::OK => ledger.ack(target, "update"),
            StatusCode::NO_CONTENT => ledger.ack(target, "delete"),
            _ => {
                let kind = assert_storage_refusal(r, &format!("write to {target}"));
                ledger.refuse(kind);
            }
        }
    }

    // Reads keep working while the disk is full, and the audit chain verifies beside it.
    for i in BEFORE - 5..BEFORE {
        let r = server.get(&format!("/v1/notes/before{i}"), &key);
        assert_eq!(r.status(), StatusCode::OK, "read on a full disk: {}", r.text().unwrap_or_default());
    }
    let r = server.get("/v1/notes?limit=10", &key);
    assert_eq!(r.status(), StatusCode::OK, "list on a full disk");
    let r = server.get("/v1/notes?q=early&limit=10", &key);
    assert_eq!(r.status(), StatusCode::OK, "search on a full disk");
    let (audit_full, _) = histories(&server, &key);
    assert!(!audit_full.is_empty());
    let verified_full = audit_verify(&config);
    assert!(verified_full.ends_with("entries verified"), "{verified_full}");

    // Space returns: the same process writes again, by itself.
    std::fs::remove_file(&filler).expect("remove the filler");
    std::fs::remove_file(&search_filler).expect("remove the search filler");
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = create(&server, &key, "after0", "later", 0);
        if r.status() == StatusCode::CREATED {
            ledger.ack("after0", "create");
            break;
        }
        let kind = assert_storage_refusal(r, "create after0 once space returned");
        assert!(Instant::now() < deadline, "still refusing writes {RECOVERY_TIMEOUT:?} after space returned");
        ledger.refuse(kind);
        thread::sleep(Duration::from_millis(200));
    }
    for i in 1..20 {
        let id = format!("after{i}");
        let r = create(&server, &key, &id, "later", i);
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().unwrap_or_default());
        ledger.ack(&id, "create");
    }
    let r = patch(&server, &key, "after1", 7);
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().unwrap_or_default());
    ledger.ack("after1", "update");
    let r = delete(&server, &key, "after2");
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{}", r.text().unwrap_or_default());
    ledger.ack("after2", "delete");

    eprintln!(
        "disk full: filler {filled} bytes; first refusal after {first_refusal} writes; refusals {:?}; \
         {attempts} attempt(s) to write again after space returned",
        ledger.refusals
    );

    // Nothing half-applied: the audit log and the outbox hold exactly what was
    // acknowledged, once each, and nothing refused is visible.
    let (audit, events) = histories(&server, &key);
    let (expected_audit, expected_events) = ledger.expected();
    assert_eq!(audit, expected_audit, "audit entries differ from the acknowledged writes");
    assert_eq!(events, expected_events, "events differ from the acknowledged writes");
    for id in &ledger.refused_creates {
        let r = server.get(&format!("/v1/notes/{id}?include=deleted"), &key);
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "refused create {id} is visible");
    }
    let verified = audit_verify(&config);
    let entries: usize = 1 + ledger.acknowledged.values().map(Vec::len).sum::<usize>(); // + key_create
    assert_eq!(verified, format!("{entries} entries verified"));

    // The index recovers too: everything active, written before, during and after the
    // full disk, becomes searchable without a restart.
    let active = |prefix: &str| -> BTreeSet<String> {
        ledger
            .acknowledged
            .iter()
            .filter(|(id, actions)| id.starts_with(prefix) && !actions.contains(&"delete"))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    for (word, prefixes) in
        [("early", &["before"][..]), ("during", &["unindexed", "full", "late"][..]), ("later", &["after"][..])]
    {
        let want: BTreeSet<String> = prefixes.iter().flat_map(|p| active(p)).collect();
        loop {
            let found = search(&server, &key, word);
            if found == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "search for {word} still differs: found {found:?}, want {want:?}; server log:\n{}",
                log_tail(&server)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    let stderr = server.stderr_text();
    assert!(!stderr.contains("panicked at"), "the server panicked:\n{stderr}");
    // What the server said about it, by message (printed for the record, not asserted).
    let mut said: BTreeMap<String, usize> = BTreeMap::new();
    for line in stderr.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
        let message = serde_json::from_str::<Value>(line).ok().and_then(|v| v["message"].as_str().map(str::to_string));
        *said.entry(message.unwrap_or_else(|| line.to_string())).or_default() += 1;
    }
    eprintln!("disk full: server warnings and errors {said:?}");
    drop(server);
    drop(search_fs);
    drop(tmpfs);
}
