//! The cache across replicas with the real binary: several `tombstone serve` processes on
//! one PostgreSQL database, sharing one Redis (`cache.url = "redis://…"`) or each with its
//! own memory cache (invalidated through `LISTEN/NOTIFY`); and `cache.url = "none"`.
//!
//! - With Redis, a delete through one replica is a 404 through the others at once, and a
//!   hammer of reads on two replicas while the third deletes sees no record active after
//!   its 204.
//! - Redis stopped: reads answer from the database (counted in
//!   `tombstone_cache_bypass_total`), writes answer; Redis back: nothing stale.
//! - Memory caches: another replica stops serving a deleted record within a bound.
//!
//! Needs PostgreSQL and Redis (`TOMBSTONE_TEST_POSTGRES_URL`, `TOMBSTONE_TEST_REDIS_URL`,
//! both set by `scripts/test`, which also sets `TOMBSTONE_TEST_REQUIRE_REDIS=1`: there a
//! missing URL fails the test rather than skipping it).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, Workspace, create_key, path_str, run_bounded};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tombstone_store::ScratchDatabase;

const SCHEMA: &str = r#"
[collections.products.fields]
name = { type = "string", required = true }
"#;

/// How long another replica's memory cache may still serve a deleted record: a generous
/// correctness bound, far above the measured window (docs/PERFORMANCE.md).
const MEMORY_BOUND: Duration = Duration::from_secs(2);

fn redis_url() -> Option<String> {
    if let Ok(url) = std::env::var("TOMBSTONE_TEST_REDIS_URL") {
        return Some(url);
    }
    let required = std::env::var("TOMBSTONE_TEST_REQUIRE_REDIS").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok();
    assert!(!required, "TOMBSTONE_TEST_REDIS_URL is not set, and this run requires the Redis tests (scripts/test, CI)");
    eprintln!("TOMBSTONE_TEST_REDIS_URL is not set: this Redis test is skipped (scripts/test starts a redis-server)");
    None
}

fn postgres() -> Option<ScratchDatabase> {
    let Ok(admin) = std::env::var("TOMBSTONE_TEST_POSTGRES_URL") else {
        eprintln!("TOMBSTONE_TEST_POSTGRES_URL is not set: this multi-replica test is skipped");
        return None;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    Some(rt.block_on(ScratchDatabase::create(&admin)).expect("create a test database"))
}

/// `n` replicas of one deployment: one database, `cache` as `cache.url`, a search index
/// each; and an admin key of a fresh tenant.
struct Deployment {
    _ws: Workspace,
    replicas: Vec<Server>,
    key: String,
}

impl Deployment {
    fn start(database: &ScratchDatabase, cache: &str, n: u32) -> Self {
        let ws = Workspace::new();
        let replica = |i: u32| {
            format!(
                "[storage]\nurl = \"{}\"\n[cache]\nurl = \"{cache}\"\n[search]\npath = \"search-{i}\"\n{SCHEMA}",
                database.url()
            )
        };
        let configs: Vec<String> = (0..n)
            .map(|i| {
                let path = ws.config_dir.join(format!("replica-{i}.toml"));
                std::fs::write(&path, replica(i)).expect("write config");
                path_str(&path).to_string()
            })
            .collect();
        let tenant = format!("tn{}", uuid::Uuid::now_v7().simple());
        let key = create_key(|a| run_bounded(Some(&ws.cwd), a, Duration::from_secs(60)), &configs[0], &tenant, "admin");
        let key = key["secret"].as_str().unwrap().to_string();
        let replicas = configs
            .iter()
            .map(|c| Server::spawn(&ws.cwd, &["serve", "--config", c, "--listen", "127.0.0.1:0"], None))
            .collect();
        Self { _ws: ws, replicas, key }
    }

    fn create(&self, replica: usize, name: &str) -> String {
        let r = self.replicas[replica].post("/v1/products", &self.key, &json!({"name": name}));
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string()
    }

    fn status(&self, replica: usize, id: &str) -> StatusCode {
        self.replicas[replica].get(&format!("/v1/products/{id}"), &self.key).status()
    }

    fn delete(&self, replica: usize, id: &str) {
        let server = &self.replicas[replica];
        let r = server.http.delete(server.url(&format!("/v1/products/{id}"))).bearer_auth(&self.key).send().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    /// The sum of a counter's series on `replica`'s `/metrics`.
    fn counter(&self, replica: usize, name: &str) -> f64 {
        let server = &self.replicas[replica];
        let text = server.http.get(server.url("/metrics")).send().expect("GET /metrics").text().expect("metrics");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[test]
fn with_redis_a_delete_through_one_replica_is_a_404_through_the_others_at_once() {
    let Some(redis) = redis_url() else { return };
    let Some(database) = postgres() else { return };
    let d = Deployment::start(&database, &redis, 3);
    let ids: Vec<String> = (0..20).map(|i| d.create(i % 3, &format!("p{i}"))).collect();
    for id in &ids {
        for replica in [1, 2] {
            assert_eq!(d.status(replica, id), StatusCode::OK);
            assert_eq!(d.status(replica, id), StatusCode::OK, "now served from Redis");
        }
    }
    assert!(d.counter(1, "tombstone_cache_hits_total") > 0.0, "B served from the cache");
    for id in &ids {
        d.delete(0, id);
        assert_eq!(d.status(1, id), StatusCode::NOT_FOUND, "B served {id} after A's 204");
        assert_eq!(d.status(2, id), StatusCode::NOT_FOUND, "C served {id} after A's 204");
    }
}

#[test]
fn with_redis_reads_hammering_two_replicas_see_no_record_active_after_its_204() {
    let Some(redis) = redis_url() else { return };
    let Some(database) = postgres() else { return };
    let d = Arc::new(Deployment::start(&database, &redis, 3));
    let ids: Vec<String> = (0..40).map(|i| d.create(0, &format!("p{i}"))).collect();
    // id → when its DELETE answered 204.
    let deleted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let (d, ids, deleted, stop) = (d.clone(), ids.clone(), deleted.clone(), stop.clone());
            thread::spawn(move || {
                let replica = 1 + t % 2;
                let (mut reads, mut stale) = (0, Vec::new());
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    let id = &ids[i % ids.len()];
                    i += 1;
                    let started = Instant::now();
                    let status = d.status(replica, id);
                    reads += 1;
                    let answered = deleted.lock().unwrap().get(id).copied();
                    if status == StatusCode::OK && answered.is_some_and(|at| started > at) {
                        stale.push(format!("{id} on replica {replica}"));
                    }
                }
                (reads, stale)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    for id in &ids {
        d.delete(0, id);
        deleted.lock().unwrap().insert(id.clone(), Instant::now());
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for reader in readers {
        let (reads, stale) = reader.join().expect("reader");
        assert!(stale.is_empty(), "reads that started after the 204 saw the record active: {stale:?}");
        total += reads;
    }
    assert!(total > ids.len() * 4, "the hammer read too little to mean anything: {total} reads");
}

/// A Redis of this test's own (scripts/redis), so that it can be stopped and started.
struct OwnRedis {
    dir: tempfile::TempDir,
    url: String,
}

fn redis_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis")
}

impl OwnRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(redis_script()).arg("start").arg(dir.path()).output().expect("run scripts/redis");
        assert!(out.status.success(), "scripts/redis start: {}", String::from_utf8_lossy(&out.stderr));
        Self { url: String::from_utf8(out.stdout).unwrap().trim().to_string(), dir }
    }

    fn run(&self, command: &str) {
        let out = Command::new(redis_script()).arg(command).arg(self.dir.path()).output().expect("run scripts/redis");
        assert!(out.status.success(), "scripts/redis {command}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = Command::new(redis_script()).arg("stop").arg(self.dir.path()).output();
    }
}

#[test]
fn with_redis_stopped_reads_and_writes_answer_and_nothing_stale_is_served_once_it_is_back() {
    if redis_url().is_none() {
        return;
    }
    let Some(database) = postgres() else { return };
    let redis = OwnRedis::start();
    let d = Deployment::start(&database, &redis.url, 2);
    let ids: Vec<String> = (0..6).map(|i| d.create(0, &format!("p{i}"))).collect();
    for id in &ids {
        assert_eq!(d.status(1, id), StatusCode::OK);
        assert_eq!(d.status(1, id), StatusCode::OK);
    }

    redis.run("halt");
    let before = d.counter(1, "tombstone_cache_bypass_total");
    let started = Instant::now();
    for id in &ids[..3] {
        d.delete(0, id);
        assert_eq!(d.status(1, id), StatusCode::NOT_FOUND, "B answers from the database");
    }
    for id in &ids[3..] {
        assert_eq!(d.status(1, id), StatusCode::OK, "B answers from the database");
    }
    let fresh = d.create(0, "created while Redis is down");
    assert_eq!(d.status(1, &fresh), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(10), "requests waited for Redis: {:?}", started.elapsed());
    assert!(d.counter(1, "tombstone_cache_bypass_total") > before, "reads past the cache are counted");

    redis.run("resume");
    // Deletes while Redis comes back, and reads from both replicas: nothing stale.
    d.delete(0, &ids[3]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for id in &ids[..4] {
            assert_eq!(d.status(1, id), StatusCode::NOT_FOUND, "{id} served after its delete");
            assert_eq!(d.status(0, id), StatusCode::NOT_FOUND, "{id} served after its delete");
        }
        for id in ids[4..].iter().chain([&fresh]) {
            assert_eq!(d.status(1, id), StatusCode::OK);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let hits = d.counter(1, "tombstone_cache_hits_total");
    for id in &ids[4..] {
        assert_eq!(d.status(1, id), StatusCode::OK);
    }
    assert!(d.counter(1, "tombstone_cache_hits_total") > hits, "Redis serves again once it is back");
}

#[test]
fn memory_caches_on_postgresql_stop_serving_a_deleted_record_within_the_bound() {
    let Some(database) = postgres() else { return };
    let d = Deployment::start(&database, "memory", 2);
    let ids: Vec<String> = (0..10).map(|i| d.create(0, &format!("p{i}"))).collect();
    for id in &ids {
        assert_eq!(d.status(1, id), StatusCode::OK);
        assert_eq!(d.status(1, id), StatusCode::OK, "now in B's memory cache");
    }
    for id in &ids {
        d.delete(0, id);
        let answered = Instant::now();
        while d.status(1, id) != StatusCode::NOT_FOUND {
            assert!(answered.elapsed() < MEMORY_BOUND, "B still served {id} {MEMORY_BOUND:?} after A's 204");
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn cache_url_none_turns_caching_off() {
    let ws = Workspace::new();
    let config =
        ws.write_config(&format!("[storage]\nurl = \"sqlite://data/t.db\"\n[cache]\nurl = \"none\"\n{SCHEMA}"));
    let config = path_str(&config).to_string();
    let key = create_key(|a| run_bounded(Some(&ws.cwd), a, Duration::from_secs(60)), &config, "t1", "admin");
    let key = key["secret"].as_str().unwrap().to_string();
    let server = Server::spawn(&ws.cwd, &["serve", "--config", &config, "--listen", "127.0.0.1:0"], None);
    let r = server.post("/v1/products", &key, &json!({"name": "a"}));
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        assert_eq!(server.get(&format!("/v1/products/{id}"), &key).status(), StatusCode::OK);
    }
    let d = Deployment { _ws: Workspace::new(), replicas: vec![server], key };
    assert_eq!(d.counter(0, "tombstone_cache_hits_total"), 0.0, "no cache: no hits");
    assert_eq!(d.counter(0, "tombstone_cache_misses_total"), 0.0, "no cache: no lookups at all");
    d.delete(0, &id);
    assert_eq!(d.status(0, &id), StatusCode::NOT_FOUND);

    // And the default (memory) does count, so the assertions above can fail.
    let ws = Workspace::new();
    let config = ws.write_config(&format!("[storage]\nurl = \"sqlite://data/t.db\"\n{SCHEMA}"));
    let config = path_str(&config).to_string();
    let key = create_key(|a| run_bounded(Some(&ws.cwd), a, Duration::from_secs(60)), &config, "t1", "admin");
    let key = key["secret"].as_str().unwrap().to_string();
    let server = Server::spawn(&ws.cwd, &["serve", "--config", &config, "--listen", "127.0.0.1:0"], None);
    let r = server.post("/v1/products", &key, &json!({"name": "a"}));
    let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        assert_eq!(server.get(&format!("/v1/products/{id}"), &key).status(), StatusCode::OK);
    }
    let d = Deployment { _ws: ws, replicas: vec![server], key };
    assert!(d.counter(0, "tombstone_cache_hits_total") > 0.0);
}

#[test]
fn a_redis_cache_on_sqlite_is_refused_with_one_line() {
    let ws = Workspace::new();
    let config = ws.write_config(&format!(
        "[storage]\nurl = \"sqlite://data/t.db\"\n[cache]\nurl = \"redis://127.0.0.1:1\"\n{SCHEMA}"
    ));
    let out = run_bounded(
        Some(&ws.cwd),
        &["serve", "--config", path_str(&config), "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    );
    let line = out.assert_one_line_failure();
    assert!(line.contains("cache.url") && line.contains("postgres"), "{line}");
}
