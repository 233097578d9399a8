//! The kill test: the real `tombstone` binary is killed with SIGKILL at random moments
//! while clients mutate records and the webhook relay delivers to a receiver in this
//! process, then restarted on the same port. At the end every change the server
//! acknowledged must have exactly one event, no event may exist without an audit entry
//! (none invented), and the receiver must have seen every event at least once, in order
//! per record (§8: "a crash at any instant loses no committed event and invents none").
//!
//! `KILL_SEED=<n>` replays a run's random choices (kill points, operations, which
//! deliveries the receiver refuses); the seed is printed with the figures.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{BIN, RestartableServer, Rng, all_pages, free_port, get_json, lock, mix, seed_from_env};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use tempfile::TempDir;
use tombstone_domain::webhook::{secret_key, verify};
use tombstone_store::cause_chain;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const TENANT: &str = "t1";
const COLLECTION: &str = "items";

/// Mutations the clients send in all (requests refused at connect time are not counted).
const MUTATIONS: u64 = 3000;
/// Client threads; each owns its own records, so it always knows what a record looks like.
const CLIENTS: usize = 6;
const RECORDS_PER_CLIENT: usize = 25;
/// SIGKILLs while the clients run (one more follows once they are done).
const KILLS: usize = 5;
/// Share of events whose first delivery attempt the receiver answers with 500. A refused
/// event holds back its record's later events for the 5 s retry delay, so at most one
/// event per record is refused: the drain then takes one retry delay, not a chain of them.
const FAIL_PERCENT: u64 = 10;

/// How long the relay may take to deliver everything after the last restart (a refused
/// first attempt is retried after 5 s, and one record's later events wait behind it).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the clients may run (a safety net against a server that stops answering).
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// FNV-1a, to turn an event id into a stable coin flip.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The webhook receiver: std TCP, a minimal HTTP/1.1 server with keep-alive

/// One delivery the receiver accepted (answered 200).
struct Accepted {
    /// Order of arrival among all requests, accepted or refused.
    arrival: u64,
    id: String,
    body: Value,
}

#[derive(Default)]
struct Inbox {
    arrivals: u64,
    accepted: Vec<Accepted>,
    /// The arrival of each event id's first request, whatever the answer.
    first_seen: HashMap<String, u64>,
    /// Requests answered 500 on purpose.
    refused: u64,
    /// Records with an event refused already.
    refused_records: HashSet<String>,
    /// Requests that failed verification or could not be read.
    bad: Vec<String>,
}

struct WebhookReceiver {
    addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
}

impl WebhookReceiver {
    fn start(seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let key = Arc::new(secret_key(SECRET).expect("webhook secret"));
        let shared = inbox.clone();
        // Accepts until the test process ends; connections close when the server dies.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (inbox, key) = (shared.clone(), key.clone());
                thread::spawn(move || {
                    let _ = serve_connection(stream, &inbox, &key, seed);
                });
            }
        });
        Self { addr, inbox }
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        lock(&self.inbox)
    }
}

fn serve_connection(stream: TcpStream, inbox: &Mutex<Inbox>, key: &[u8], seed: u64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        if request_line.trim().is_empty() {
            continue;
        }
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let status = receive(inbox, key, seed, request_line.trim(), &headers, &body);
        let reason = if status == 200 { "OK" } else { "Error" };
        write!(writer, "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n")?;
        writer.flush()?;
    }
}

/// Records one request and decides the answer.
fn receive(inbox: &Mutex<Inbox>, key: &[u8], seed: u64, line: &str, h: &HashMap<String, String>, body: &[u8]) -> u16 {
    let id = h.get("webhook-id").map(String::as_str);
    let verified = verify(
        key,
        id,
        h.get("webhook-timestamp").map(String::as_str),
        h.get("webhook-signature").map(String::as_str),
        body,
        now_secs(),
    );
    let mut inbox = lock(inbox);
    inbox.arrivals += 1;
    let arrival = inbox.arrivals;
    if !line.starts_with("POST /hook ") {
        inbox.bad.push(format!("unexpected request {line:?}"));
        return 404;
    }
    if let Err(e) = verified {
        inbox.bad.push(format!("{id:?}: signature refused: {e}"));
        return 401;
    }
    let id = id.unwrap_or_default().to_string();
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            inbox.bad.push(format!("{id}: body is not JSON: {e}"));
            return 400;
        }
    };
    if body["id"] != id.as_str() {
        inbox.bad.push(format!("{id}: webhook-id differs from the envelope id {}", body["id"]));
    }
    // Refuse the first attempt of about one event in ten (one per record at most);
    // retries always succeed.
    let first = !inbox.first_seen.contains_key(&id);
    inbox.first_seen.entry(id.clone()).or_insert(arrival);
    let record = body["record_id"].as_str().unwrap_or_default().to_string();
    if first && mix(fnv(&id) ^ seed) % 100 < FAIL_PERCENT && inbox.refused_records.insert(record) {
        inbox.refused += 1;
        return 500;
    }
    inbox.accepted.push(Accepted { arrival, id, body });
    200
}

// ---------------------------------------------------------------------------------------
// The clients

/// What a client knows about one of its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Absent,
    Active(i64),
    Deleted(i64),
    /// A request about it may or may not have committed: read it before the next change.
    Unknown,
}

/// A change the server acknowledged with a 2xx.
#[derive(Debug, Clone)]
struct Ack {
    record: String,
    version: i64,
    kind: &'static str,
    deletion_id: Option<String>,
}

/// A change whose request failed without an answer: it may or may not have committed.
#[derive(Debug, Clone)]
struct Uncertain {
    record: String,
    version: i64,
    kind: &'static str,
    error: String,
}

#[derive(Default)]
struct ClientLog {
    acks: Vec<Ack>,
    uncertain: Vec<Uncertain>,
    /// Answered, but not 2xx: what was asked, and the answer.
    refused: Vec<String>,
    /// Refused at connect time (the server was down): never sent.
    not_sent: u64,
}

/// Runs one client until the shared budget of mutations is spent.
fn client(base: &str, secret: &str, records: &[String], mut rng: Rng, sent: &AtomicU64, log: &Mutex<ClientLog>) {
    let http = Client::builder().timeout(REQUEST_TIMEOUT).build().expect("http client");
    let mut known: Vec<Known> = vec![Known::Absent; records.len()];
    let deadline = Instant::now() + CLIENT_DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the clients did not finish within {CLIENT_DEADLINE:?}");
        let i = rng.below(records.len() as u64) as usize;
        let id = &records[i];
        let url = format!("{base}/v1/{COLLECTION}/{id}");
        if known[i] == Known::Unknown {
            // Reads are not mutations: they do not spend the budget.
            match http.get(format!("{url}?include=deleted")).bearer_auth(secret).send() {
                Ok(r) if r.status() == StatusCode::NOT_FOUND => known[i] = Known::Absent,
                Ok(r) if r.status() == StatusCode::OK => {
                    // The server may die before the whole body is out: then read again.
                    if let Ok(body) = r.json::<Value>() {
                        let version = body["version"].as_i64().expect("version");
                        known[i] =
                            if body["deleted"] == true { Known::Deleted(version) } else { Known::Active(version) };
                    }
                }
                Ok(r) => panic!("GET {url}: {} {}", r.status(), r.text().unwrap_or_default()),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
            continue;
        }
        if sent.fetch_add(1, Ordering::SeqCst) >= MUTATIONS {
            return;
        }
        let n = rng.below(1_000_000);
        let (kind, version, request) = match known[i] {
            Known::Absent => (
                "record.created",
                1,
                http.post(format!("{base}/v1/{COLLECTION}"))
                    .json(&json!({"id": id, "label": format!("label {n}"), "n": n})),
            ),
            Known::Active(v) if rng.below(4) == 0 => ("record.deleted", v + 1, http.delete(&url)),
            Known::Active(v) => ("record.updated", v + 1, http.patch(&url).json(&json!({"n": n}))),
            Known::Deleted(v) => ("record.restored", v + 1, http.post(format!("{url}:restore"))),
            Known::Unknown => unreachable!(),
        };
        let request = match known[i] {
            Known::Active(v) | Known::Deleted(v) => request.header("if-match", format!("\"v{v}\"")),
            _ => request,
        };
        match request.bearer_auth(secret).send() {
            Ok(r) if r.status().is_success() => {
                // A 2xx status is the acknowledgement: the change committed.
                let status = r.status();
                let deletion_id = r.headers().get("deletion-id").and_then(|v| v.to_str().ok()).map(str::to_string);
                if kind == "record.deleted" {
                    assert_eq!(status, StatusCode::NO_CONTENT, "DELETE {id}");
                    assert!(deletion_id.is_some(), "DELETE {id}: no Deletion-Id");
                    known[i] = Known::Deleted(version);
                } else {
                    // The server may die before the whole body is out: then read the record.
                    known[i] = match r.json::<Value>() {
                        Ok(body) => {
                            assert_eq!(body["version"].as_i64(), Some(version), "{kind} {id}: the answer's version");
                            Known::Active(version)
                        }
                        Err(_) => Known::Unknown,
                    };
                }
                lock(log).acks.push(Ack { record: id.clone(), version, kind, deletion_id });
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().unwrap_or_default();
                lock(log).refused.push(format!("{kind} {id} v{version}: {status} {text}"));
                known[i] = Known::Unknown;
            }
            Err(e) if e.is_connect() => {
                // Nothing was sent: give the mutation back and wait for the restart.
                sent.fetch_sub(1, Ordering::SeqCst);
                lock(log).not_sent += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                lock(log).uncertain.push(Uncertain { record: id.clone(), version, kind, error: cause_chain(&e) });
                known[i] = Known::Unknown;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading the server's view

fn feed(http: &Client, base: &str, secret: &str) -> Vec<Value> {
    all_pages(http, base, secret, "/v1/events?limit=500", "after")
}

fn write_config(dir: &Path, hook: SocketAddr) -> PathBuf {
    let config = dir.join("tombstone.toml");
    let text = format!(
        r#"
[storage]
url = "sqlite://data/tombstone.db"

[retention]
default = "7d"

[collections.{COLLECTION}.fields]
label = {{ type = "string", required = true }}
n     = {{ type = "integer" }}

[[webhooks]]
url = "http://{hook}/hook"
secret = "{SECRET}"
"#
    );
    std::fs::write(&config, text).expect("write config");
    config
}

fn run_cli(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).current_dir(cwd).stdin(Stdio::null()).output().expect("run tombstone");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// The test

#[test]
fn sigkill_under_load_loses_and_invents_no_event_and_the_relay_delivers_each_once_in_order() {
    let started = Instant::now();
    let seed = seed_from_env("KILL_SEED");
    eprintln!("kill test seed: KILL_SEED={seed}");
    let mut rng = Rng(seed);

    let root: TempDir = tempfile::tempdir().expect("temp dir");
    let receiver = WebhookReceiver::start(seed);
    let config = write_config(root.path(), receiver.addr);
    let config_str = config.to_str().expect("utf-8 path").to_string();
    let cwd = root.path().to_path_buf();

    let (ok, stdout, stderr) =
        run_cli(&cwd, &["keys", "create", "--config", &config_str, "--tenant", TENANT, "--scopes", "admin", "--json"]);
    assert!(ok, "keys create: {stdout}\n{stderr}");
    let key: Value = serde_json::from_str(stdout.trim()).expect("keys create --json");
    let secret = key["secret"].as_str().expect("secret").to_string();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = Arc::new(Mutex::new(RestartableServer::new(port, config.clone(), cwd.clone())));
    lock(&server).start();

    // Clients, each with its own records (ids chosen here, so an uncertain create can be
    // looked up afterwards).
    let sent = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(ClientLog::default()));
    let pools: Vec<Vec<String>> =
        (0..CLIENTS).map(|c| (0..RECORDS_PER_CLIENT).map(|r| format!("c{c}-r{r:02}")).collect()).collect();
    let clients: Vec<_> = pools
        .iter()
        .enumerate()
        .map(|(c, records)| {
            let (base, secret, records) = (base.clone(), secret.clone(), records.clone());
            let (sent, log) = (sent.clone(), log.clone());
            let rng = Rng(mix(seed ^ (c as u64 + 1)));
            thread::spawn(move || client(&base, &secret, &records, rng, &sent, &log))
        })
        .collect();

    // The killer: SIGKILL at random points of the run (by progress, so the kills land
    // among the mutations however fast the machine is), then restart after a random pause.
    let done = Arc::new(AtomicBool::new(false));
    let mut points: Vec<u64> = (0..KILLS).map(|_| MUTATIONS / 20 + rng.below(MUTATIONS * 17 / 20)).collect();
    points.sort_unstable();
    let killer = {
        let (server, sent, done) = (server.clone(), sent.clone(), done.clone());
        let mut rng = Rng(mix(seed ^ 0xDEAD));
        thread::spawn(move || {
            let mut kills = 0;
            for point in points {
                while sent.load(Ordering::SeqCst) < point && !done.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
                if done.load(Ordering::SeqCst) {
                    break;
                }
                thread::sleep(Duration::from_millis(rng.below(15)));
                let mut server = lock(&server);
                server.kill();
                kills += 1;
                thread::sleep(Duration::from_millis(rng.below(150)));
                server.start();
            }
            kills
        })
    };
    // Stop the killer before looking at the clients' outcome, so a failing client never
    // leaves the killer (and the server it holds) running.
    let outcomes: Vec<_> = clients.into_iter().map(thread::JoinHandle::join).collect();
    done.store(true, Ordering::SeqCst);
    let mut kills = killer.join().expect("killer thread");
    for outcome in outcomes {
        outcome.expect("client thread");
    }
    let load_time = started.elapsed();

    // One more kill while the relay is busy delivering (once the receiver has a random
    // share of the events), and the final restart.
    let acked = lock(&log).acks.len();
    let share = acked * (10 + rng.below(50) as usize) / 100;
    let waiting = Instant::now();
    while receiver.inbox().accepted.len() < share && waiting.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(1));
    }
    {
        let mut server = lock(&server);
        server.kill();
        kills += 1;
        server.start();
    }

    let http = Client::builder().timeout(REQUEST_TIMEOUT).build().expect("http client");
    // Wait until the relay has nothing pending and the receiver has every feed event. All
    // changes are committed by now, and the relay fans new events out within a second, so
    // nothing pending while events are missing for a while means they were lost.
    let drain_started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    let events = loop {
        let pending = get_json(&http, &format!("{base}/v1/webhooks/deliveries?status=pending&limit=5"), &secret);
        let pending = pending["items"].as_array().expect("items").clone();
        let events = feed(&http, &base, &secret);
        let missing: Vec<Value> = {
            let inbox = receiver.inbox();
            let got: HashSet<&str> = inbox.accepted.iter().map(|a| a.id.as_str()).collect();
            events.iter().filter(|e| !got.contains(e["id"].as_str().unwrap_or_default())).cloned().collect()
        };
        if pending.is_empty() && missing.is_empty() {
            break events;
        }
        let idle = *idle_since.get_or_insert_with(Instant::now);
        if !pending.is_empty() {
            idle_since = None;
        }
        let lost = pending.is_empty() && idle.elapsed() > Duration::from_secs(15);
        if lost || drain_started.elapsed() > DRAIN_TIMEOUT {
            let deliveries = all_pages(&http, &base, &secret, "/v1/webhooks/deliveries?limit=500", "cursor");
            let short = |e: &Value| {
                let rows: Vec<String> =
                    deliveries.iter().filter(|d| d["event_id"] == e["id"]).map(ToString::to_string).collect();
                format!(
                    "  seq {} {} {} v{} {}; deliveries: {}",
                    e["seq"],
                    e["type"],
                    e["record_id"],
                    e["version"],
                    e["id"],
                    rows.join(", ")
                )
            };
            let shown: Vec<String> = missing.iter().take(10).map(short).collect();
            panic!(
                "after {:.1?} the relay has {} pending deliveries (first: {pending:?}) and {} feed events never reached \
                 the receiver; the first ten:\n{}\nserver log:\n{}",
                drain_started.elapsed(),
                pending.len(),
                missing.len(),
                shown.join("\n"),
                lock(&server).log_text()
            );
        }
        thread::sleep(Duration::from_millis(250));
    };
    let drain_time = drain_started.elapsed();

    for status in ["failed", "cancelled"] {
        let page = get_json(&http, &format!("{base}/v1/webhooks/deliveries?status={status}"), &secret);
        assert_eq!(page["items"], json!([]), "no delivery may be {status}");
    }

    let audit: Vec<Value> =
        all_pages(&http, &base, &secret, &format!("/v1/audit?collection={COLLECTION}&limit=500"), "cursor");

    // The records as the server has them now.
    let mut finals: HashMap<String, Option<(i64, bool)>> = HashMap::new();
    for id in pools.iter().flatten() {
        let r = http
            .get(format!("{base}/v1/{COLLECTION}/{id}?include=deleted"))
            .bearer_auth(&secret)
            .send()
            .expect("GET record");
        let state = match r.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => {
                let body: Value = r.json().expect("record");
                Some((body["version"].as_i64().expect("version"), body["deleted"] == true))
            }
            other => panic!("GET {id}: {other}"),
        };
        finals.insert(id.clone(), state);
    }
    lock(&server).kill();

    let (ok, stdout, stderr) = run_cli(&cwd, &["audit", "verify", "--config", &config_str]);
    assert!(ok, "tombstone audit verify failed:\n{stdout}\n{stderr}");
    eprintln!("tombstone audit verify: {}", stdout.trim());

    let log = lock(&log);
    let inbox = receiver.inbox();

    // ---- Figures
    let completed = events.iter().filter(|e| e["type"] == "deletion.completed").count();
    let unique_received: HashSet<&str> = inbox.accepted.iter().map(|a| a.id.as_str()).collect();
    eprintln!(
        "kill test figures (KILL_SEED={seed}):\n  mutations sent:      {}\n  acknowledged:        {}\n  uncertain:           {}\n  \
         refused (non-2xx):   {}\n  not sent (down):     {}\n  events in the feed:  {} ({} record changes + {} deletion.completed)\n  audit entries:       {}\n  \
         deliveries received: {} (200) + {} refused on purpose (500)\n  duplicates:          {}\n  kills:               {kills}\n  \
         load phase: {:.1?}, drain after the last restart: {:.1?}, total: {:.1?}",
        log.acks.len() + log.uncertain.len() + log.refused.len(),
        log.acks.len(),
        log.uncertain.len(),
        log.refused.len(),
        log.not_sent,
        events.len(),
        events.len() - completed,
        completed,
        audit.len(),
        inbox.accepted.len(),
        inbox.refused,
        inbox.accepted.len() - unique_received.len(),
        load_time,
        drain_time,
        started.elapsed(),
    );
    for u in log.uncertain.iter().take(5) {
        eprintln!("  uncertain: {} {} v{}: {}", u.kind, u.record, u.version, u.error);
    }

    // ---- The clients
    assert_eq!(
        (log.acks.len() + log.uncertain.len() + log.refused.len()) as u64,
        MUTATIONS,
        "every mutation counted once"
    );
    assert_eq!(kills, KILLS + 1, "every planned kill happened");
    assert!(log.refused.is_empty(), "requests answered with an error: {:#?}", log.refused);
    assert!(inbox.bad.is_empty(), "deliveries the receiver could not accept: {:#?}", inbox.bad);

    // ---- The feed: ordered, unique ids, one event per (record, version)
    // A delete writes two events in its transaction: `record.deleted` at the record's new
    // version, and `deletion.completed` (no version) for the deletion operation.
    let mut by_change: HashMap<(String, i64), &Value> = HashMap::new();
    let mut completions: HashMap<String, &Value> = HashMap::new();
    let mut ids = HashSet::new();
    let mut last_seq = 0;
    for e in &events {
        let seq = e["seq"].as_i64().expect("seq");
        assert!(seq > last_seq, "feed seq not strictly increasing: {seq} after {last_seq}");
        last_seq = seq;
        let id = e["id"].as_str().expect("id");
        assert!(ids.insert(id), "event id {id} twice in the feed");
        assert_eq!(e["tenant"], TENANT, "{e}");
        assert_eq!(e["collection"], COLLECTION, "{e}");
        if e["type"] == "deletion.completed" {
            assert_eq!(e["version"], Value::Null, "{e}");
            let deletion = e["deletion_id"].as_str().unwrap_or_else(|| panic!("no deletion_id: {e}")).to_string();
            if let Some(other) = completions.insert(deletion, e) {
                panic!("two deletion.completed events for one deletion:\n{other}\n{e}");
            }
            continue;
        }
        let version = e["version"].as_i64().unwrap_or_else(|| panic!("no version: {e}"));
        let change = (e["record_id"].as_str().expect("record_id").to_string(), version);
        if let Some(other) = by_change.insert(change.clone(), e) {
            panic!("two events for {change:?}:\n{other}\n{e}");
        }
    }
    // Each deletion has its completion, after its record.deleted, and no completion is alone.
    let mut deletions = 0;
    for e in by_change.values().filter(|e| e["type"] == "record.deleted") {
        deletions += 1;
        let deletion = e["deletion_id"].as_str().unwrap_or_else(|| panic!("record.deleted without deletion_id: {e}"));
        let done = completions.get(deletion).unwrap_or_else(|| panic!("no deletion.completed for {e}"));
        assert_eq!(done["record_id"], e["record_id"], "{done}");
        assert!(done["seq"].as_i64() > e["seq"].as_i64(), "deletion.completed before its record.deleted: {done}");
    }
    assert_eq!(completions.len(), deletions, "deletion.completed events without a record.deleted");

    // ---- The audit log backs every event, and every audited change has its event
    let mut audited: HashMap<(String, i64), (String, Value)> = HashMap::new();
    for a in &audit {
        let change = (a["record_id"].as_str().expect("record_id").to_string(), a["version"].as_i64().expect("version"));
        let action = a["action"].as_str().expect("action").to_string();
        if let Some(other) = audited.insert(change.clone(), (action.clone(), a["deletion_id"].clone())) {
            panic!("two audit entries for {change:?}: {other:?} and {action}");
        }
    }
    let action_of = |kind: &str| match kind {
        "record.created" => "create",
        "record.updated" => "update",
        "record.deleted" => "delete",
        "record.restored" => "restore",
        other => panic!("unexpected event type {other}"),
    };
    for (change, e) in &by_change {
        let kind = e["type"].as_str().expect("type");
        match audited.get(change) {
            Some((action, deletion)) => {
                assert_eq!(action, action_of(kind), "event {e} against its audit entry");
                assert_eq!(&e["deletion_id"], deletion, "event {e} against its audit entry");
            }
            None => panic!("event without an audit entry (invented): {e}"),
        }
    }
    let unevented: Vec<_> = audited.keys().filter(|c| !by_change.contains_key(*c)).collect();
    assert!(unevented.is_empty(), "audited changes without an event (lost): {unevented:?}");

    // ---- Every acknowledged change has exactly one event, of its kind
    let mut acked: HashSet<(String, i64)> = HashSet::new();
    for ack in &log.acks {
        let change = (ack.record.clone(), ack.version);
        assert!(acked.insert(change.clone()), "two acknowledgements for {change:?}");
        let e =
            by_change.get(&change).unwrap_or_else(|| panic!("acknowledged change without an event (lost): {ack:?}"));
        assert_eq!(e["type"], ack.kind, "{ack:?}: {e}");
        if let Some(deletion_id) = &ack.deletion_id {
            assert_eq!(e["deletion_id"], deletion_id.as_str(), "{ack:?}: {e}");
        }
    }
    // Any other event must be the outcome of a distinct uncertain request.
    let mut uncertain: HashMap<(String, i64), &Uncertain> = HashMap::new();
    for u in &log.uncertain {
        uncertain.insert((u.record.clone(), u.version), u);
    }
    let mut explained = 0;
    for (change, e) in &by_change {
        if acked.contains(change) {
            continue;
        }
        let u = uncertain.remove(change).unwrap_or_else(|| panic!("event for a change nobody asked for: {e}"));
        assert_eq!(e["type"], u.kind, "{u:?}: {e}");
        explained += 1;
    }
    eprintln!("  uncertain requests that committed: {explained} of {}", log.uncertain.len());

    // ---- Per record: versions 1..=current, each with its event; nothing for records never created
    for (id, state) in &finals {
        let versions: Vec<i64> = by_change
            .keys()
            .filter(|(r, _)| r == id)
            .map(|(_, v)| *v)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        match state {
            None => assert!(versions.is_empty(), "{id} does not exist but has events {versions:?}"),
            Some((current, deleted)) => {
                assert_eq!(versions, (1..=*current).collect::<Vec<_>>(), "{id}: versions with an event");
                let last = by_change[&(id.clone(), *current)];
                let expected_deleted = last["type"] == "record.deleted";
                assert_eq!(*deleted, expected_deleted, "{id}: its state against its last event {last}");
            }
        }
    }

    // ---- The receiver: every event, the feed's envelope, exactly once after dedupe, in order per record
    let feed_by_id: HashMap<&str, &Value> = events.iter().map(|e| (e["id"].as_str().expect("id"), e)).collect();
    for a in &inbox.accepted {
        let e = feed_by_id.get(a.id.as_str()).unwrap_or_else(|| panic!("delivered event {} is not in the feed", a.id));
        assert_eq!(&a.body, *e, "the delivered envelope differs from the feed's");
    }
    assert_eq!(unique_received.len(), events.len(), "after dedupe, one delivery per event");
    let mut first_accepted: HashMap<&str, u64> = HashMap::new();
    for a in &inbox.accepted {
        first_accepted.entry(a.id.as_str()).or_insert(a.arrival);
    }
    let mut per_record: BTreeMap<&str, Vec<(i64, u64, u64)>> = BTreeMap::new();
    for e in &events {
        let id = e["id"].as_str().expect("id");
        per_record.entry(e["record_id"].as_str().expect("record_id")).or_default().push((
            e["seq"].as_i64().expect("seq"),
            inbox.first_seen[id],
            first_accepted[id],
        ));
    }
    for (record, arrivals) in &per_record {
        // `arrivals` is in seq order (the feed is). A record's event may reach the receiver
        // only once the previous one was accepted (while one fails, the later ones wait);
        // so first arrivals, and first acceptances, are in seq order.
        for pair in arrivals.windows(2) {
            let ((seq_a, _, accepted_a), (seq_b, seen_b, _)) = (pair[0], pair[1]);
            assert!(
                accepted_a < seen_b,
                "{record}: event seq {seq_b} reached the receiver (arrival {seen_b}) before seq {seq_a} was accepted (arrival {accepted_a})"
            );
        }
    }
    eprintln!("kill test passed in {:.1?}", started.elapsed());
}
