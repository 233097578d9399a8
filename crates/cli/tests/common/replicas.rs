//! Several `tombstone serve` processes on one PostgreSQL database, as a deployment behind
//! a load balancer runs them: each replica has its own config file (its own search index,
//! SPEC §12) and listens on a free port; [`Replicas::start`] returns once every one
//! answers `/readyz`. Dropping the set SIGKILLs whatever still runs; [`Replicas::kill`]
//! does it to one replica in the middle of a test.
//!
//! The database comes from `TOMBSTONE_TEST_POSTGRES_URL` (a fresh one per test, dropped
//! with it): [`postgres_admin_url`] says whether this run has one, and refuses to skip
//! inside `scripts/test` or CI.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tombstone_store::ScratchDatabase;

use super::db::TestDb;
use super::{Server, Workspace, create_key, path_str, run_bounded};

/// How long a replica may take to answer `/readyz` once it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The admin URL of the test PostgreSQL server, or `None` (with a printed reason) when this
/// run has none. Inside `scripts/test` (`TOMBSTONE_TEST_REQUIRE_POSTGRES=1`) or CI a missing
/// URL fails the test instead: a multi-replica test must not pass by not running.
pub fn postgres_admin_url() -> Option<String> {
    if let Ok(url) = std::env::var("TOMBSTONE_TEST_POSTGRES_URL") {
        return Some(url);
    }
    let required =
        std::env::var("TOMBSTONE_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok();
    assert!(!required, "TOMBSTONE_TEST_POSTGRES_URL is not set, and this run requires the PostgreSQL tests");
    eprintln!(
        "TOMBSTONE_TEST_POSTGRES_URL is not set: this multi-replica test is skipped (scripts/test starts a cluster)"
    );
    None
}

/// The URL of the test NATS server (`TOMBSTONE_TEST_NATS_URL`), or `None` with a printed
/// reason; required inside `scripts/test` (`TOMBSTONE_TEST_REQUIRE_NATS=1`) and CI.
pub fn nats_url() -> Option<String> {
    if let Ok(url) = std::env::var("TOMBSTONE_TEST_NATS_URL") {
        return Some(url);
    }
    let required = std::env::var("TOMBSTONE_TEST_REQUIRE_NATS").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok();
    assert!(!required, "TOMBSTONE_TEST_NATS_URL is not set, and this run requires the NATS tests (scripts/test, CI)");
    eprintln!("TOMBSTONE_TEST_NATS_URL is not set: the JetStream part of this test is skipped");
    None
}

/// One `serve` process of the set.
pub struct Replica {
    /// `None` once killed.
    pub server: Option<Server>,
    pub config: PathBuf,
    /// The process id (lease holders are named `host-PID-random`).
    pub pid: u32,
}

impl Replica {
    /// The running server.
    #[track_caller]
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("a replica that is still running")
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }
}

/// N replicas on one fresh PostgreSQL database.
pub struct Replicas {
    /// Replicas before the database: dropped first, so no process still uses the database
    /// when it is dropped.
    pub replicas: Vec<Replica>,
    pub db: TestDb,
    pub ws: Workspace,
}

impl Replicas {
    /// Starts `n` replicas on a fresh database of the server at `admin`, each with the
    /// config `[storage]` + `[search]` (its own index) + `body` (events, webhooks, purge,
    /// collections: the same for all), and waits until every one answers `/readyz`.
    pub fn start(admin: &str, n: usize, body: &str) -> Self {
        let database = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(ScratchDatabase::create(admin))
            .expect("create a test database");
        let ws = Workspace::new();
        let mut configs = Vec::new();
        for i in 0..n {
            let text = format!("[storage]\nurl = \"{}\"\n\n[search]\npath = \"search-{i}\"\n\n{body}", database.url());
            let path = ws.config_dir.join(format!("replica-{i}.toml"));
            std::fs::write(&path, text).expect("write config");
            configs.push(path);
        }
        let mut replicas = Vec::new();
        for config in configs {
            // Started one after the other: the first applies the schema, the others find it.
            let server =
                Server::spawn(&ws.cwd, &["serve", "--config", path_str(&config), "--listen", "127.0.0.1:0"], None);
            let pid = server.child.id();
            replicas.push(Replica { server: Some(server), config, pid });
        }
        for r in &replicas {
            wait_ready(r.server());
        }
        Self { replicas, db: TestDb::Postgres(database), ws }
    }

    /// Replica `i` (panics if it was killed).
    #[track_caller]
    pub fn get(&self, i: usize) -> &Server {
        self.replicas[i].server()
    }

    /// The replicas still running, by index.
    pub fn running(&self) -> Vec<usize> {
        (0..self.replicas.len()).filter(|&i| self.replicas[i].is_running()).collect()
    }

    /// `tombstone keys create` for `tenant` with `scopes`; returns the printed object.
    pub fn create_key(&self, tenant: &str, scopes: &str) -> Value {
        let config = path_str(&self.replicas[0].config).to_string();
        create_key(|a| run_bounded(Some(&self.ws.cwd), a, Duration::from_secs(60)), &config, tenant, scopes)
    }

    /// Runs a one-shot command against the deployment (with replica 0's config).
    pub fn command(&self, args: &[&str]) -> super::Output {
        let config = path_str(&self.replicas[0].config).to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &config]);
        run_bounded(Some(&self.ws.cwd), &all, Duration::from_secs(60))
    }

    /// SIGKILLs replica `i` (its leases are left to expire).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut server) = self.replicas[i].server.take() {
            server.child.kill().expect("SIGKILL");
            server.child.wait().expect("wait");
        }
    }

    /// The replica whose process holds the lease `name` now, if a running one does.
    pub fn lease_holder(&self, name: &str) -> Option<usize> {
        let now = micros_now();
        let holders =
            self.db.column(&format!("select holder from leases where name = '{name}' and expires_at > {now}"));
        let pid: u32 = holders.first()?.rsplit('-').nth(1)?.parse().ok()?;
        self.replicas.iter().position(|r| r.pid == pid && r.is_running())
    }

    /// Every replica's stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if let Some(s) = &r.server {
                out.push_str(&format!("--- replica {i}\n{}\n", s.stderr_text()));
            }
        }
        out
    }
}

/// Microseconds since the epoch (the unit of `leases.expires_at`).
pub fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Polls `/readyz` until it answers 200.
fn wait_ready(server: &Server) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(r) = server.http.get(server.url("/readyz")).send()
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "not ready within {READY_TIMEOUT:?}:\n{}", server.stderr_text());
        thread::sleep(Duration::from_millis(50));
    }
}
