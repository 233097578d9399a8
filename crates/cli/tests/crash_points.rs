//! Crash at every write step: the real `tombstone` binary is killed with SIGKILL at random
//! instants while several client threads send a burst of mixed writes — create, patch,
//! delete with a cascade, restore (of one record and of a whole deletion operation),
//! `:purge` and `:erase` — and is restarted on the same port after each kill. Right after
//! each restart, while the clients go on, every write acknowledged before the kill must be
//! there with the events it asked for, and `tombstone audit verify` must pass beside the
//! serving server. Once the burst is over, the server is killed once more, restarted, and
//! its whole history is checked against what the clients asked for:
//!
//! - every acknowledged (2xx) write is there exactly once: one event and one audit entry
//!   per record it changed, exactly the records the client predicted (a cascade commits
//!   whole or not at all);
//! - no event is invented: every event was written by a request a client sent (each request
//!   carries its own `X-Request-Id`, which the server writes into the audit entries and
//!   events), and matches the change that request asked for; an unanswered request either
//!   committed all of its changes or none;
//! - every event has its audit entry and every audit entry its event, with the same request;
//! - each record's events run through versions 1, 2, … without a gap up to its state now
//!   (erased records keep their event rows, with no values left in them);
//! - `tombstone audit verify` accepts the chain;
//! - a create sent with an `Idempotency-Key` whose answer was lost in a crash is retried
//!   with the same key after the restart and replays or creates — exactly once.
//!
//! `CRASH_SEED=<n>` replays a run's random choices (operations, kill instants); the seed is
//! printed first.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{RestartableServer, Rng, all_pages, free_port, lock, path_str, run_bounded, seed_from_env};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};
use tombstone_store::cause_chain;

const TENANT: &str = "t1";
const PARENTS: &str = "parents";
const CHILDREN: &str = "children";

/// Mutations the clients send in all (requests refused at connect time are not counted).
const MUTATIONS: u64 = 3000;
/// Client threads; each owns its own families, so it always knows what they look like.
const CLIENTS: usize = 4;
/// A family is a parent and its cascade children: the unit a client keeps track of.
const FAMILIES_PER_CLIENT: usize = 8;
const CHILDREN_PER_FAMILY: usize = 3;
/// SIGKILLs while the clients run (one more follows once they are done).
const KILLS: usize = 10;
/// At most this many extra rounds of creates only, each with one kill, until two creates
/// lost their answer and were retried under their `Idempotency-Key`.
const IDEMPOTENCY_ROUNDS: usize = 8;
/// Load between two kills, in milliseconds: at least the first, below the sum.
const KILL_GAP_MS: (u64, u64) = (150, 600);

/// How long the clients may run (a safety net against a server that stops answering).
const CLIENT_DEADLINE: Duration = Duration::from_secs(45);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// What the clients know and predict

/// One record change as the server reports it in an event and an audit entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Change {
    collection: &'static str,
    id: String,
    version: i64,
    /// The event type (`record.deleted` for a cascade too).
    kind: &'static str,
}

impl Change {
    fn of_event(e: &Value) -> Self {
        Self {
            collection: collection_name(e["collection"].as_str().expect("collection")),
            id: e["record_id"].as_str().expect("record_id").to_string(),
            version: e["version"].as_i64().unwrap_or_else(|| panic!("no version: {e}")),
            kind: event_type(e["type"].as_str().expect("type")),
        }
    }
}

fn collection_name(name: &str) -> &'static str {
    match name {
        PARENTS => PARENTS,
        CHILDREN => CHILDREN,
        other => panic!("unexpected collection {other}"),
    }
}

fn event_type(kind: &str) -> &'static str {
    [
        "record.created",
        "record.updated",
        "record.deleted",
        "record.restored",
        "record.purged",
        "record.erased",
        "deletion.completed",
    ]
    .into_iter()
    .find(|k| *k == kind)
    .unwrap_or_else(|| panic!("unexpected event type {kind}"))
}

/// The event type an audit action goes with.
fn event_of_action(action: &str) -> &'static str {
    match action {
        "create" => "record.created",
        "update" => "record.updated",
        "delete" | "cascade_delete" => "record.deleted",
        "restore" => "record.restored",
        "purge" => "record.purged",
        "erase" => "record.erased",
        other => panic!("unexpected audit action {other}"),
    }
}

/// What a client knows about one of its records.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    Absent,
    Active(i64),
    Deleted {
        version: i64,
        deletion: String,
    },
    /// Purged or erased: its id is not used again.
    Gone,
}

/// A parent and its children (index 0 is the parent).
struct Family {
    ids: Vec<String>,
    known: Vec<Known>,
    /// A request about it may or may not have committed: read it again before the next one.
    unsure: bool,
}

impl Family {
    fn collection(i: usize) -> &'static str {
        if i == 0 { PARENTS } else { CHILDREN }
    }

    /// A child deleted by the parent's current deletion: only restoring that operation
    /// brings it back, so it is left alone meanwhile.
    fn held_by_parent(&self, i: usize) -> bool {
        match (&self.known[0], &self.known[i]) {
            (Known::Deleted { deletion: p, .. }, Known::Deleted { deletion: c, .. }) => p == c,
            _ => false,
        }
    }
}

/// One request a client sent, and the changes it asked for.
#[derive(Debug, Clone)]
struct Sent {
    /// What it was, for messages: `DELETE parents/c0-f3`.
    what: String,
    /// Every `X-Request-Id` it was sent with (a create is retried after a crash).
    request_ids: Vec<String>,
    changes: BTreeSet<Change>,
    /// For deletes and restores of an operation: the deletion id the events must carry.
    deletion: Option<String>,
}

#[derive(Default)]
struct ClientLog {
    acked: Vec<Sent>,
    /// Sent, no answer: each may or may not have committed.
    uncertain: Vec<(Sent, String)>,
    /// Answered, but not 2xx: what was asked, and the answer.
    refused: Vec<String>,
    /// Refused at connect time (the server was down): never sent.
    not_sent: u64,
    /// Creates whose answer was lost and that were sent again with the same key.
    retried_creates: u64,
    /// … of which the retry was answered `Idempotent-Replayed: true`.
    replayed: u64,
}

/// A request as the client builds it (again, for a retry).
struct Plan {
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
    if_match: Option<i64>,
    idempotency_key: Option<String>,
    /// The states of the family's records once it committed (by index).
    after: Vec<(usize, Known)>,
    sent: Sent,
}

/// Chooses the next mutation of a family, or None when the chosen record has nothing to do.
fn plan(family: &Family, rng: &mut Rng, tag: &str) -> Option<Plan> {
    let i = rng.below(family.known.len() as u64) as usize;
    let id = &family.ids[i];
    let collection = Family::collection(i);
    let change = |version: i64, kind: &'static str| Change { collection, id: id.clone(), version, kind };
    let n = rng.below(1_000_000);
    let record_path = format!("/v1/{collection}/{id}");
    let mut p = Plan {
        method: reqwest::Method::POST,
        path: record_path.clone(),
        body: None,
        if_match: None,
        idempotency_key: None,
        after: Vec::new(),
        sent: Sent { what: String::new(), request_ids: Vec::new(), changes: BTreeSet::new(), deletion: None },
    };
    match (&family.known[i], i) {
        (Known::Gone, _) => return None,
        (Known::Absent, 0) => {
            p.path = format!("/v1/{PARENTS}");
            p.body = Some(json!({"id": id, "name": format!("parent {n}")}));
            p.idempotency_key = Some(format!("create-{tag}"));
            p.sent.changes.insert(change(1, "record.created"));
            p.after.push((i, Known::Active(1)));
        }
        (Known::Absent, _) => {
            // A child needs an active parent (else 422).
            if !matches!(family.known[0], Known::Active(_)) {
                return None;
            }
            p.path = format!("/v1/{CHILDREN}");
            p.body = Some(json!({"id": id, "n": n, "parent_id": family.ids[0]}));
            p.idempotency_key = Some(format!("create-{tag}"));
            p.sent.changes.insert(change(1, "record.created"));
            p.after.push((i, Known::Active(1)));
        }
        (Known::Active(v), _) if rng.chance(65) => {
            p.method = reqwest::Method::PATCH;
            p.body = Some(if i == 0 { json!({"name": format!("parent {n}")}) } else { json!({"n": n}) });
            p.if_match = Some(*v);
            p.sent.changes.insert(change(v + 1, "record.updated"));
            p.after.push((i, Known::Active(v + 1)));
        }
        (Known::Active(v), 0) => {
            // Delete the parent: its active children go with it, in the same transaction.
            p.method = reqwest::Method::DELETE;
            p.if_match = Some(*v);
            p.sent.changes.insert(change(v + 1, "record.deleted"));
            p.after.push((0, Known::Deleted { version: v + 1, deletion: String::new() }));
            for (c, known) in family.known.iter().enumerate().skip(1) {
                if let Known::Active(cv) = known {
                    p.sent.changes.insert(Change {
                        collection: CHILDREN,
                        id: family.ids[c].clone(),
                        version: cv + 1,
                        kind: "record.deleted",
                    });
                    p.after.push((c, Known::Deleted { version: cv + 1, deletion: String::new() }));
                }
            }
        }
        (Known::Active(v), _) if rng.chance(80) => {
            p.method = reqwest::Method::DELETE;
            p.if_match = Some(*v);
            p.sent.changes.insert(change(v + 1, "record.deleted"));
            p.after.push((i, Known::Deleted { version: v + 1, deletion: String::new() }));
        }
        (Known::Active(v), _) => {
            // Erase an active child: the event keeps the record's last version.
            p.path = format!("{record_path}:erase");
            p.sent.changes.insert(change(*v, "record.erased"));
            p.after.push((i, Known::Gone));
        }
        (Known::Deleted { version, deletion }, 0) => {
            // Restore the parent's deletion operation: the parent and every child it took.
            p.path = format!("/v1/deletions/{deletion}:restore");
            p.sent.deletion = Some(deletion.clone());
            p.sent.changes.insert(change(version + 1, "record.restored"));
            p.after.push((0, Known::Active(version + 1)));
            for c in 1..family.known.len() {
                if let (true, Known::Deleted { version: cv, .. }) = (family.held_by_parent(c), &family.known[c]) {
                    p.sent.changes.insert(Change {
                        collection: CHILDREN,
                        id: family.ids[c].clone(),
                        version: cv + 1,
                        kind: "record.restored",
                    });
                    p.after.push((c, Known::Active(cv + 1)));
                }
            }
        }
        (Known::Deleted { .. }, _) if family.held_by_parent(i) => return None,
        (Known::Deleted { version, .. }, _) => {
            let parent_active = matches!(family.known[0], Known::Active(_));
            let roll = rng.below(100);
            if parent_active && roll < 50 {
                p.path = format!("{record_path}:restore");
                p.if_match = Some(*version);
                p.sent.changes.insert(change(version + 1, "record.restored"));
                p.after.push((i, Known::Active(version + 1)));
            } else if roll < 80 {
                p.path = format!("{record_path}:purge");
                p.sent.changes.insert(change(*version, "record.purged"));
                p.after.push((i, Known::Gone));
            } else {
                p.path = format!("{record_path}:erase");
                p.sent.changes.insert(change(*version, "record.erased"));
                p.after.push((i, Known::Gone));
            }
        }
    }
    p.sent.what = format!("{} {}", p.method, p.path);
    Some(p)
}

/// Sends a planned request once, under a fresh request id.
fn send(http: &Client, base: &str, secret: &str, p: &mut Plan, request_id: String) -> reqwest::Result<Response> {
    let mut request = http
        .request(p.method.clone(), format!("{base}{}", p.path))
        .bearer_auth(secret)
        .header("x-request-id", &request_id);
    if let Some(body) = &p.body {
        request = request.json(body);
    }
    if let Some(v) = p.if_match {
        request = request.header("if-match", format!("\"v{v}\""));
    }
    if let Some(key) = &p.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    p.sent.request_ids.push(request_id);
    request.send()
}

/// Reads a family again after a request whose outcome is unknown.
fn reread(http: &Client, base: &str, secret: &str, family: &mut Family) -> bool {
    let mut known = Vec::with_capacity(family.ids.len());
    for (i, id) in family.ids.iter().enumerate() {
        let url = format!("{base}/v1/{}/{id}?include=deleted", Family::collection(i));
        let Ok(r) = http.get(&url).bearer_auth(secret).send() else { return false };
        known.push(match r.status() {
            // Gone once it existed: purged or erased (ids are never used again).
            StatusCode::NOT_FOUND if family.known[i] == Known::Absent => Known::Absent,
            StatusCode::NOT_FOUND => Known::Gone,
            StatusCode::OK => {
                // The server may die before the whole body is out: then read again later.
                let Ok(body) = r.json::<Value>() else { return false };
                let version = body["version"].as_i64().expect("version");
                if body["deleted"] == true {
                    let deletion = body["deletion_id"].as_str().expect("deletion_id").to_string();
                    Known::Deleted { version, deletion }
                } else {
                    Known::Active(version)
                }
            }
            other => panic!("GET {url}: {other} {}", r.text().unwrap_or_default()),
        });
    }
    family.known = known;
    family.unsure = false;
    true
}

/// One stretch of load: the clients share a budget of mutations.
struct Phase {
    /// Mutations sent so far.
    sent: AtomicU64,
    limit: u64,
    /// Only creates (the idempotency rounds): every request in flight at a kill is one.
    creates_only: bool,
}

/// Runs one client until the phase's budget of mutations is spent; returns every record
/// (collection, id) it used.
fn client(
    base: &str,
    secret: &str,
    c: usize,
    mut rng: Rng,
    phase: &Phase,
    log: &Mutex<ClientLog>,
) -> Vec<(&'static str, String)> {
    let http = Client::builder().timeout(REQUEST_TIMEOUT).build().expect("http client");
    let mut families: Vec<Family> = (0..FAMILIES_PER_CLIENT)
        .map(|f| {
            let mut ids = vec![format!("c{c}-f{f}")];
            ids.extend((0..CHILDREN_PER_FAMILY).map(|k| format!("c{c}-f{f}-k{k}-g0")));
            Family { known: vec![Known::Absent; ids.len()], ids, unsure: false }
        })
        .collect();
    let mut used: Vec<(&'static str, String)> = Vec::new();
    for family in &families {
        used.extend(family.ids.iter().enumerate().map(|(i, id)| (Family::collection(i), id.clone())));
    }
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut attempts = 0u64;
    loop {
        assert!(Instant::now() < deadline, "the clients did not finish within {CLIENT_DEADLINE:?}");
        let f = rng.below(families.len() as u64) as usize;
        let family = &mut families[f];
        if family.unsure {
            // Reads are not mutations: they do not spend the budget.
            if !reread(&http, base, secret, family) {
                thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        // A purged or erased child is followed by a new one (ids are not used again), so
        // creates go on all through the burst.
        for i in 1..family.ids.len() {
            if family.known[i] == Known::Gone {
                let (stem, generation) = family.ids[i].rsplit_once("-g").expect("child id");
                let next = format!("{stem}-g{}", generation.parse::<u32>().expect("generation") + 1);
                used.push((CHILDREN, next.clone()));
                family.ids[i] = next;
                family.known[i] = Known::Absent;
            }
        }
        if phase.creates_only && family.known.iter().all(|k| *k != Known::Absent) {
            if families.iter().all(|f| f.known.iter().all(|k| *k != Known::Absent)) {
                return used;
            }
            continue;
        }
        let tag = format!("c{c}-{attempts}");
        let Some(mut p) = plan(family, &mut rng, &tag) else { continue };
        if phase.creates_only && p.idempotency_key.is_none() {
            continue;
        }
        if phase.sent.fetch_add(1, Ordering::SeqCst) >= phase.limit {
            return used;
        }
        // Until answered: a create whose answer was lost is sent again with its key.
        let mut retried = false;
        loop {
            assert!(Instant::now() < deadline, "{} still unanswered after {CLIENT_DEADLINE:?}", p.sent.what);
            attempts += 1;
            match send(&http, base, secret, &mut p, format!("c{c}-{attempts}")) {
                Ok(r) if r.status().is_success() => {
                    // A 2xx status is the acknowledgement: the change committed.
                    let deletion = r.headers().get("deletion-id").and_then(|v| v.to_str().ok()).map(str::to_string);
                    let replayed = r.headers().get("idempotent-replayed").is_some();
                    if p.method == reqwest::Method::DELETE {
                        let deletion = deletion.unwrap_or_else(|| panic!("{}: no Deletion-Id", p.sent.what));
                        for (_, known) in &mut p.after {
                            if let Known::Deleted { deletion: d, .. } = known {
                                d.clone_from(&deletion);
                            }
                        }
                        p.sent.deletion = Some(deletion);
                    }
                    for (i, known) in p.after.drain(..) {
                        family.known[i] = known;
                    }
                    let mut log = lock(log);
                    if retried {
                        log.retried_creates += 1;
                        log.replayed += u64::from(replayed);
                    }
                    log.acked.push(p.sent);
                    break;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().unwrap_or_default();
                    let mut log = lock(log);
                    log.refused.push(format!("{} (request {:?}): {status} {text}", p.sent.what, p.sent.request_ids));
                    // If an earlier attempt committed, its events are explained by this request.
                    if retried {
                        log.uncertain.push((p.sent, format!("answered {status} on a retry")));
                    }
                    family.unsure = true;
                    break;
                }
                Err(e) if e.is_connect() => {
                    // Nothing was sent: wait for the restart and send it again (a create
                    // under the same key).
                    p.sent.request_ids.pop();
                    lock(log).not_sent += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(_) if p.idempotency_key.is_some() => {
                    // The answer was lost: the create may or may not have committed. The
                    // same key must now replay it or create it, exactly once.
                    retried = true;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    lock(log).uncertain.push((p.sent, cause_chain(&e)));
                    family.unsure = true;
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading the server's view

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("tombstone.toml");
    let text = format!(
        r#"
[storage]
url = "sqlite://data/tombstone.db"

[retention]
default = "7d"

[collections.{PARENTS}.fields]
name = {{ type = "string", required = true }}

[collections.{CHILDREN}.fields]
n         = {{ type = "integer" }}
parent_id = {{ type = "ref", collection = "{PARENTS}", on_delete = "cascade", required = true }}
"#
    );
    std::fs::write(&config, text).expect("write config");
    config
}

// ---------------------------------------------------------------------------------------
// The test

/// Checks, right after a restart and while the clients go on, that every write
/// acknowledged before the kill is there with exactly the events it asked for, and that
/// `tombstone audit verify` (read-only, safe beside the server) accepts the chain.
fn check_after_restart(http: &Client, base: &str, secret: &str, config: &Path, cwd: &Path, acked: &[Sent]) {
    let mut by_request: HashMap<String, BTreeSet<Change>> = HashMap::new();
    for e in all_pages(http, base, secret, "/v1/events?limit=500", "after") {
        if e["type"] != "deletion.completed" {
            let request = e["request_id"].as_str().unwrap_or_else(|| panic!("event without a request id: {e}"));
            by_request.entry(request.to_string()).or_default().insert(Change::of_event(&e));
        }
    }
    for s in acked {
        let found: Vec<&BTreeSet<Change>> = s.request_ids.iter().filter_map(|id| by_request.get(id)).collect();
        assert_eq!(
            found.len(),
            1,
            "after a restart: acknowledged {} has events under {} of its requests {:?}",
            s.what,
            found.len(),
            s.request_ids
        );
        assert_eq!(found[0], &s.changes, "after a restart: the events of acknowledged {}", s.what);
    }
    let verify = run_bounded(Some(cwd), &["audit", "verify", "--config", path_str(config)], COMMAND_TIMEOUT);
    assert!(
        verify.status.success(),
        "after a restart, tombstone audit verify failed:\n{}\n{}",
        verify.stdout,
        verify.stderr
    );
}

/// Runs `CLIENTS` clients (numbered from `first`) through `phase` while another thread
/// kills the server up to `kills` times, after a random gap (ms, at least `gap.0`, below
/// `gap.0 + gap.1`) of load each, restarting it at once; returns the kills done and the
/// records the clients used.
#[expect(clippy::too_many_arguments, reason = "the test's shared state, passed once")]
fn run_phase(
    base: &str,
    secret: &str,
    server: &Arc<Mutex<RestartableServer>>,
    log: &Arc<Mutex<ClientLog>>,
    rng: &mut Rng,
    first: usize,
    phase: Phase,
    kills: usize,
    gap: (u64, u64),
) -> (usize, Vec<(&'static str, String)>) {
    let phase = Arc::new(phase);
    let clients: Vec<_> = (first..first + CLIENTS)
        .map(|c| {
            let (base, secret, phase, log) = (base.to_string(), secret.to_string(), phase.clone(), log.clone());
            let rng = Rng(rng.next());
            thread::spawn(move || client(&base, &secret, c, rng, &phase, &log))
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (server, done, phase, log) = (server.clone(), done.clone(), phase.clone(), log.clone());
        let (base, secret) = (base.to_string(), secret.to_string());
        let mut rng = Rng(rng.next());
        thread::spawn(move || {
            let http = Client::builder().timeout(REQUEST_TIMEOUT).build().expect("http client");
            let mut done_kills = 0;
            while done_kills < kills && !done.load(Ordering::SeqCst) {
                // The next kill after a random stretch of load, whatever the requests in
                // flight are doing then.
                let until = Instant::now() + Duration::from_millis(gap.0 + rng.below(gap.1));
                while Instant::now() < until && !done.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
                if done.load(Ordering::SeqCst) || phase.sent.load(Ordering::SeqCst) >= phase.limit {
                    break;
                }
                let mut server = lock(&server);
                server.kill();
                done_kills += 1;
                // Whatever was acknowledged before the kill has committed.
                let acked = lock(&log).acked.clone();
                thread::sleep(Duration::from_millis(rng.below(100)));
                server.start();
                let (config, cwd) = (server.config.clone(), server.cwd.clone());
                drop(server);
                check_after_restart(&http, &base, &secret, &config, &cwd, &acked);
            }
            done_kills
        })
    };
    // Stop the killer before looking at the clients' outcome, so a failing client never
    // leaves the killer (and the server it holds) running.
    let outcomes: Vec<_> = clients.into_iter().map(thread::JoinHandle::join).collect();
    done.store(true, Ordering::SeqCst);
    let kills = killer.join().expect("killer thread");
    let mut used = Vec::new();
    for outcome in outcomes {
        used.extend(outcome.expect("client thread"));
    }
    (kills, used)
}

#[test]
fn sigkill_at_random_write_steps_loses_duplicates_and_invents_nothing() {
    let started = Instant::now();
    let seed = seed_from_env("CRASH_SEED");
    eprintln!("crash test seed: CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let root = tempfile::tempdir().expect("temp dir");
    let config = write_config(root.path());
    let config_str = path_str(&config).to_string();
    let out = run_bounded(
        Some(root.path()),
        &["keys", "create", "--config", &config_str, "--tenant", TENANT, "--scopes", "admin", "--json"],
        COMMAND_TIMEOUT,
    );
    out.assert_success();
    let secret = out.json()["secret"].as_str().expect("secret").to_string();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = Arc::new(Mutex::new(RestartableServer::new(port, config.clone(), root.path().to_path_buf())));
    lock(&server).start();

    // ---- The burst, with SIGKILLs at random instants
    let log = Arc::new(Mutex::new(ClientLog::default()));
    let burst = Phase { sent: AtomicU64::new(0), limit: MUTATIONS, creates_only: false };
    let (mut kills, mut used) = run_phase(&base, &secret, &server, &log, &mut rng, 0, burst, KILLS, KILL_GAP_MS);
    let burst_time = started.elapsed();

    // ---- Idempotency rounds: creates only, one kill each, until answers were lost
    let mut rounds = 0;
    while rounds < IDEMPOTENCY_ROUNDS && lock(&log).retried_creates < 2 {
        rounds += 1;
        let phase = Phase { sent: AtomicU64::new(0), limit: 200, creates_only: true };
        let (k, u) = run_phase(&base, &secret, &server, &log, &mut rng, rounds * CLIENTS, phase, 1, (10, 60));
        kills += k;
        used.extend(u);
    }

    {
        // One more, with nothing in flight, and the final restart.
        let mut server = lock(&server);
        server.kill();
        kills += 1;
        server.start();
    }

    // ---- The server's view after the last restart
    let http = Client::builder().timeout(REQUEST_TIMEOUT).build().expect("http client");
    let events = all_pages(&http, &base, &secret, "/v1/events?limit=500", "after");
    let mut audit = Vec::new();
    for collection in [PARENTS, CHILDREN] {
        audit.extend(all_pages(
            &http,
            &base,
            &secret,
            &format!("/v1/audit?collection={collection}&limit=500"),
            "cursor",
        ));
    }
    let mut finals: BTreeMap<String, Option<(i64, bool)>> = BTreeMap::new();
    for (collection, id) in used {
        let url = format!("{base}/v1/{collection}/{id}?include=deleted");
        let r = http.get(&url).bearer_auth(&secret).send().expect("GET record");
        let state = match r.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => {
                let body: Value = r.json().expect("record");
                Some((body["version"].as_i64().expect("version"), body["deleted"] == true))
            }
            other => panic!("GET {url}: {other}"),
        };
        finals.insert(id, state);
    }
    lock(&server).kill();

    let verify = run_bounded(Some(root.path()), &["audit", "verify", "--config", &config_str], COMMAND_TIMEOUT);
    assert!(verify.status.success(), "tombstone audit verify failed:\n{}\n{}", verify.stdout, verify.stderr);

    let log = lock(&log);
    eprintln!(
        "crash test figures (CRASH_SEED={seed}):\n  mutations sent:      {}\n  acknowledged:        {}\n  \
         uncertain:           {}\n  refused (non-2xx):   {}\n  not sent (down):     {}\n  \
         creates retried with their Idempotency-Key after a lost answer: {} ({} replayed, {} created by the retry)\n  \
         events:              {}\n  audit entries:       {}\n  kills:               {kills}\n  \
         burst: {burst_time:.1?}, idempotency rounds: {rounds}, total: {:.1?}\n  audit verify: {}",
        log.acked.len() + log.uncertain.len() + log.refused.len(),
        log.acked.len(),
        log.uncertain.len(),
        log.refused.len(),
        log.not_sent,
        log.retried_creates,
        log.replayed,
        log.retried_creates - log.replayed,
        events.len(),
        audit.len(),
        started.elapsed(),
        verify.stdout.trim(),
    );
    for (u, error) in log.uncertain.iter().take(5) {
        eprintln!("  uncertain: {} {:?}: {error}", u.what, u.request_ids);
    }

    // ---- The clients
    assert!(log.refused.is_empty(), "requests answered with an error: {:#?}", log.refused);
    assert!(
        log.retried_creates > 0,
        "no create lost its answer in {rounds} idempotency rounds: the retry under the same key was never tried"
    );
    assert!(kills >= 2, "at least one kill during the burst and the last one: {kills}");
    // Every request sent, answered or not, and the request ids it went out under.
    let sent: Vec<&Sent> = log.acked.iter().chain(log.uncertain.iter().map(|(s, _)| s)).collect();
    let mut by_request: HashMap<&str, usize> = HashMap::new();
    for (n, s) in sent.iter().enumerate() {
        for id in &s.request_ids {
            assert!(by_request.insert(id, n).is_none(), "request id {id} used twice");
        }
    }

    // ---- The feed: ordered, unique ids, one event per change, grouped by request
    let mut seen_ids = HashSet::new();
    let mut last_seq = 0;
    let mut changes: HashMap<Change, &Value> = HashMap::new();
    let mut by_request_events: HashMap<&str, BTreeSet<Change>> = HashMap::new();
    let mut completions: HashMap<&str, &Value> = HashMap::new();
    for e in &events {
        let seq = e["seq"].as_i64().expect("seq");
        assert!(seq > last_seq, "feed seq not strictly increasing: {seq} after {last_seq}");
        last_seq = seq;
        assert!(seen_ids.insert(e["id"].as_str().expect("id")), "event id twice in the feed: {e}");
        assert_eq!(e["tenant"], TENANT, "{e}");
        let request = e["request_id"].as_str().unwrap_or_else(|| panic!("event without a request id: {e}"));
        if e["type"] == "deletion.completed" {
            let deletion = e["deletion_id"].as_str().unwrap_or_else(|| panic!("no deletion_id: {e}"));
            if let Some(other) = completions.insert(deletion, e) {
                panic!("two deletion.completed events for one deletion:\n{other}\n{e}");
            }
            continue;
        }
        let change = Change::of_event(e);
        if let Some(other) = changes.insert(change.clone(), e) {
            panic!("two events for {change:?} (a duplicate):\n{other}\n{e}");
        }
        by_request_events.entry(request).or_default().insert(change);
    }

    // ---- No event invented: each request's events are exactly the changes it asked for
    let mut committed: HashSet<usize> = HashSet::new();
    for (request, got) in &by_request_events {
        let n = *by_request.get(request).unwrap_or_else(|| panic!("events of request {request} nobody sent: {got:?}"));
        let s = sent[n];
        assert_eq!(got, &s.changes, "{} ({request}): its events against the changes it asked for", s.what);
        assert!(committed.insert(n), "{} committed twice (requests {:?})", s.what, s.request_ids);
        if let Some(deletion) = &s.deletion {
            for change in got.iter().filter(|c| c.kind != "record.updated") {
                assert_eq!(changes[change]["deletion_id"], deletion.as_str(), "{}: {change:?}", s.what);
            }
        }
    }

    // ---- Every acknowledged write is there (exactly once: each change has one event)
    for (n, s) in sent.iter().enumerate().take(log.acked.len()) {
        assert!(
            committed.contains(&n),
            "acknowledged but lost: {} (requests {:?}), changes {:?}",
            s.what,
            s.request_ids,
            s.changes
        );
    }
    let uncertain_committed = committed.iter().filter(|n| **n >= log.acked.len()).count();
    eprintln!("  unanswered requests that committed: {uncertain_committed} of {}", log.uncertain.len());

    // ---- Each deletion completed once, in its own transaction
    let mut deletions: HashMap<&str, &Value> = HashMap::new();
    for e in changes.values().filter(|e| e["type"] == "record.deleted") {
        let deletion = e["deletion_id"].as_str().unwrap_or_else(|| panic!("record.deleted without deletion_id: {e}"));
        let root = deletions.entry(deletion).or_insert(e);
        if e["seq"].as_i64() < root["seq"].as_i64() {
            *root = e;
        }
    }
    for (deletion, root) in &deletions {
        let done = completions.get(deletion).unwrap_or_else(|| panic!("no deletion.completed for {root}"));
        assert_eq!(done["request_id"], root["request_id"], "deletion.completed outside its delete: {done}");
        assert_eq!((&done["collection"], &done["record_id"]), (&root["collection"], &root["record_id"]), "{done}");
    }
    assert_eq!(completions.len(), deletions.len(), "deletion.completed events without a record.deleted");

    // ---- Every event has its audit entry and every audit entry its event
    let mut audited: HashSet<Change> = HashSet::new();
    for a in &audit {
        let change = Change {
            collection: collection_name(a["collection"].as_str().expect("collection")),
            id: a["record_id"].as_str().expect("record_id").to_string(),
            version: a["version"].as_i64().unwrap_or_else(|| panic!("audit entry without a version: {a}")),
            kind: event_of_action(a["action"].as_str().expect("action")),
        };
        let e = changes.get(&change).unwrap_or_else(|| panic!("audit entry without its event (lost): {a}"));
        assert_eq!(a["request_id"], e["request_id"], "audit entry and event of different requests: {a} {e}");
        if change.kind == "record.deleted" {
            assert_eq!(a["deletion_id"], e["deletion_id"], "{a} {e}");
            let cascade = a["action"] == "cascade_delete";
            assert_eq!(
                cascade,
                change.collection == CHILDREN
                    && deletions[e["deletion_id"].as_str().unwrap()]["record_id"] != e["record_id"],
                "{a}"
            );
        }
        assert!(audited.insert(change.clone()), "two audit entries for {change:?}");
    }
    let unaudited: Vec<_> = changes.keys().filter(|c| !audited.contains(*c)).collect();
    assert!(unaudited.is_empty(), "events without an audit entry (invented): {unaudited:?}");

    // ---- Per record: versions 1..=now without a gap, the state now matching the last event
    for (id, state) in &finals {
        let mut mine: Vec<&Value> = changes.values().filter(|e| e["record_id"] == id.as_str()).copied().collect();
        mine.sort_by_key(|e| e["seq"].as_i64());
        let Some(last) = mine.last() else {
            assert_eq!(*state, None, "{id} exists without any event");
            continue;
        };
        let terminal = last["type"] == "record.purged" || last["type"] == "record.erased";
        let steps: Vec<i64> = mine.iter().filter_map(|e| e["version"].as_i64()).collect();
        let expected: Vec<i64> = if terminal {
            (1..steps.len() as i64).chain(std::iter::once(steps.len() as i64 - 1)).collect()
        } else {
            (1..=steps.len() as i64).collect()
        };
        assert_eq!(steps, expected, "{id}: the versions of its events, in seq order");
        match state {
            None => assert!(terminal, "{id} is gone but its last event is {last}"),
            Some((version, deleted)) => {
                assert!(!terminal, "{id} is still there after {last}");
                assert_eq!(Some(*version), last["version"].as_i64(), "{id}: its version against its last event");
                assert_eq!(*deleted, last["type"] == "record.deleted", "{id}: its state against its last event {last}");
            }
        }
        if last["type"] == "record.erased" {
            for e in &mine {
                assert_eq!(e["data"], Value::Null, "an event of erased {id} still holds values: {e}");
            }
        }
    }
    eprintln!("crash test passed in {:.1?}", started.elapsed());
}
