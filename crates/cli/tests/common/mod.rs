//! The process harness shared by the CLI tests: one-shot commands with a bounded run time,
//! a `tombstone serve` guard that waits for its `listening on` line and is killed on drop,
//! and small response helpers.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

pub mod db;
pub mod jetstream;
pub mod replicas;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_tombstone");

/// How long a server may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A temporary workspace: a config directory and a separate working directory, so that
/// anything resolved against the cwd instead of the config file shows up in the wrong place.
pub struct Workspace {
    _root: TempDir,
    pub config_dir: PathBuf,
    pub cwd: PathBuf,
}

impl Workspace {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let config_dir = root.path().join("etc");
        let cwd = root.path().join("work");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        std::fs::create_dir_all(&cwd).expect("cwd");
        Self { _root: root, config_dir, cwd }
    }

    /// A workspace whose config file already holds `toml`.
    pub fn with_config(toml: &str) -> Self {
        let ws = Self::new();
        ws.write_config(toml);
        ws
    }

    /// Writes the config file and returns its path.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        let path = self.config_dir.join("tombstone.toml");
        std::fs::write(&path, toml).expect("write config");
        path
    }
}

// ---------------------------------------------------------------------------------------
// One-shot commands

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", self.status, self.stdout, self.stderr);
        self
    }

    /// Asserts a non-zero exit with exactly one non-empty line on stderr; returns it.
    #[track_caller]
    pub fn assert_one_line_failure(&self) -> String {
        assert!(!self.status.success(), "expected failure, got {:?}\nstdout: {}", self.status, self.stdout);
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr, got:\n{}", self.stderr);
        lines[0].to_string()
    }

    /// The printed JSON object.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Reads a pipe to the end on a thread.
pub fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs the binary (in `cwd`, or the test's own working directory), killing it if it
/// outlives `timeout` (a `serve` that accepted a config it should have refused would
/// otherwise hang the test).
pub fn run_bounded(cwd: Option<&Path>, args: &[&str], timeout: Duration) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn tombstone");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tombstone {args:?} still running after {timeout:?}; stderr: {}", stderr.join().unwrap());
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().expect("stdout"), stderr: stderr.join().expect("stderr") }
}

/// `tombstone keys create --config CONFIG --tenant T --scopes S --json` run by `run`,
/// asserting success; returns the printed object.
#[track_caller]
pub fn create_key(run: impl FnOnce(&[&str]) -> Output, config: &str, tenant: &str, scopes: &str) -> Value {
    let out = run(&["keys", "create", "--config", config, "--tenant", tenant, "--scopes", scopes, "--json"]);
    out.assert_success();
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("keys create --json: {e}: {}", out.stdout))
}

// ---------------------------------------------------------------------------------------
// The server process

/// Spawns `tombstone serve` (or whatever `args` say) in `cwd` with stderr piped, and with
/// `TOMBSTONE_LOG` set to `log` when given.
pub fn spawn_serve(cwd: &Path, args: &[&str], log: Option<&str>) -> Child {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(cwd);
    if let Some(log) = log {
        command.env("TOMBSTONE_LOG", log);
    }
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn tombstone serve")
}

/// Forwards stderr lines to a channel (until the test stops listening) and keeps them all,
/// each as `keep` makes it.
pub fn spawn_line_reader(
    pipe: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    keep: impl Fn(&str) -> String + Send + 'static,
) -> Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(keep(&line));
            let _ = tx.send(line);
        }
    });
    rx
}

/// How waiting for the `listening on http://ADDR` line ended.
pub enum Listening {
    /// The address after `http://`.
    At(String),
    TimedOut,
    /// stderr closed first: the process exited.
    Exited,
}

/// Reads stderr lines until the `listening on http://ADDR` line, for at most `timeout`.
pub fn wait_for_listening(rx: &Receiver<String>, timeout: Duration) -> Listening {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                    return Listening::At(addr.to_string());
                }
            }
            Err(RecvTimeoutError::Timeout) => return Listening::TimedOut,
            Err(RecvTimeoutError::Disconnected) => return Listening::Exited,
        }
    }
}

/// A running `tombstone serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Every stderr line so far (the reader thread keeps the pipe drained).
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub http: Client,
}

impl Server {
    /// Starts the binary with `args` in `cwd` and waits for its `listening on` line.
    pub fn spawn(cwd: &Path, args: &[&str], log: Option<&str>) -> Self {
        let mut child = spawn_serve(cwd, args, log);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let rx = spawn_line_reader(child.stderr.take().expect("stderr"), lines.clone(), str::to_string);
        let http = Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
        let mut server = Self { child, base: String::new(), stderr: lines, http };
        match wait_for_listening(&rx, START_TIMEOUT) {
            Listening::At(addr) => {
                server.base = format!("http://{addr}");
                server
            }
            Listening::TimedOut => {
                panic!("no `listening on` line within {START_TIMEOUT:?}; stderr:\n{}", server.stderr_text())
            }
            Listening::Exited => {
                let status = server.child.wait().ok();
                panic!("tombstone serve exited ({status:?}) before listening; stderr:\n{}", server.stderr_text())
            }
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str, key: &str) -> Response {
        self.http.get(self.url(path)).bearer_auth(key).send().expect("GET")
    }

    pub fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.http.post(self.url(path)).bearer_auth(key).json(body).send().expect("POST")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tombstone serve` on one fixed port that a test kills with SIGKILL and starts again;
/// killed on drop.
pub struct RestartableServer {
    pub child: Option<Child>,
    pub port: u16,
    pub config: PathBuf,
    pub cwd: PathBuf,
    /// stderr of every run, for diagnostics.
    pub log: Arc<Mutex<Vec<String>>>,
    pub starts: u32,
}

impl RestartableServer {
    /// A server not started yet.
    pub fn new(port: u16, config: PathBuf, cwd: PathBuf) -> Self {
        Self { child: None, port, config, cwd, log: Arc::new(Mutex::new(Vec::new())), starts: 0 }
    }

    /// Starts `tombstone serve` on the fixed port and waits for its `listening on` line.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        // The port was free a moment ago; if something grabbed it, or the old socket
        // lingers, try again a few times before giving up.
        for attempt in 1..=5 {
            self.starts += 1;
            let run = self.starts;
            let listen = format!("127.0.0.1:{}", self.port);
            let mut child = spawn_serve(
                &self.cwd,
                &["serve", "--config", path_str(&self.config), "--listen", &listen],
                Some("warn"),
            );
            let stderr = child.stderr.take().expect("stderr");
            let rx = spawn_line_reader(stderr, self.log.clone(), move |line| format!("[run {run}] {line}"));
            match wait_for_listening(&rx, START_TIMEOUT) {
                Listening::At(addr) => {
                    assert_eq!(addr, listen);
                    self.child = Some(child);
                    return;
                }
                Listening::TimedOut => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("no `listening on` line within {START_TIMEOUT:?}; stderr:\n{}", self.log_text());
                }
                Listening::Exited => {
                    let status = child.wait();
                    eprintln!("server run {run} exited before listening ({status:?}), attempt {attempt}");
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("the server would not start; stderr:\n{}", self.log_text());
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
        }
    }

    /// The last 200 stderr lines of all runs.
    pub fn log_text(&self) -> String {
        let log = lock(&self.log);
        let from = log.len().saturating_sub(200);
        log[from..].join("\n")
    }
}

impl Drop for RestartableServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind :0").local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------------------
// Randomness and threads (for the crash tests)

/// SplitMix64: no dependency, and a seed replays a run's choices.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with `percent` % probability.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// SplitMix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed in the environment variable `var`, or one from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1))
}

/// Locks, whether or not another thread panicked holding the lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// Responses

/// GET `url` with the bearer `secret`, asserting 200; the JSON body.
pub fn get_json(http: &Client, url: &str, secret: &str) -> Value {
    let r = http.get(url).bearer_auth(secret).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let text = r.text().expect("body");
    assert_eq!(status, StatusCode::OK, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// Every page of a cursor-paginated list; `first` is the path with its query, `param`
/// the name the next cursor goes in.
pub fn all_pages(http: &Client, base: &str, secret: &str, first: &str, param: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut url = format!("{base}{first}");
    loop {
        let page = get_json(http, &url, secret);
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => url = format!("{base}{first}&{param}={next}"),
            None => return items,
        }
    }
}

pub fn header(response: &Response, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[track_caller]
pub fn json_of(response: Response, expected: StatusCode) -> Value {
    let status = response.status();
    let text = response.text().expect("body");
    assert_eq!(status, expected, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts a problem+json answer of this status and type.
#[track_caller]
pub fn problem(response: Response, status: StatusCode, kind: &str) -> Value {
    assert_eq!(header(&response, "content-type").as_deref(), Some("application/problem+json"));
    let body = json_of(response, status);
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    body
}
