//! Decides Tombstone's PostgreSQL driver: the soft-delete transaction (record update +
//! deletion row + hash-chained audit entry under a locked chain head + outbox row, one
//! transaction) through
//!
//! * tokio-postgres: tokio-postgres with a deadpool-postgres pool, cached prepared statements
//! * sqlx:           sqlx's PgPool with its defaults (it pings a connection on checkout)
//! * sqlx, no ping:  the same with `test_before_acquire(false)`
//! * unchained, sqlx-unchained: (references, only when asked for) each driver without the
//!   audit chain head lock, to show what serializing every writer on that row costs, and
//!   to compare the drivers where that lock does not hide them
//!
//! at 1, 8 and 32 concurrent clients (tokio tasks; pool size = clients), each point beside
//! `pgbench`'s built-in TPC-B-like read-write script at the same client count, on the same
//! server, in the same run. Before every point all records are made active again, the
//! written rows emptied, the tables vacuumed and a checkpoint taken; after it, what it wrote
//! is checked (row counts, gapless audit sequence, the whole hash chain, the head).
//!
//! Usage: pg-driver-bench --url postgres://… [--clients 1,8,32] [--seconds 10]
//!        [--warmup-seconds 1] [--records 100000] [--pgbench PATH] [--pgbench-scale 10]
//!        [--systems pgbench,tokio-postgres,sqlx,sqlx-noping,unchained,sqlx-unchained] [--rounds 1]
//!
//! It drops and creates two databases on that server: `tombstone_pg_driver_bench` and
//! `tombstone_pgbench`. Point it at a throwaway cluster (`run.sh` starts one).

mod db;
mod sqlx_pg;
mod tpg;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const BENCH_DB: &str = "tombstone_pg_driver_bench";
const PGBENCH_DB: &str = "tombstone_pgbench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Pgbench,
    TokioPostgres,
    Sqlx,
    SqlxNoPing,
    /// Reference only: tokio-postgres without the audit chain head lock.
    Unchained,
    /// Reference only: sqlx (defaults) without the audit chain head lock.
    SqlxUnchained,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Pgbench => "pgbench (tpcb-like)",
            System::TokioPostgres => "tokio-postgres + deadpool",
            System::Sqlx => "sqlx",
            System::SqlxNoPing => "sqlx, no ping",
            System::Unchained => "tokio-postgres, no chain lock (reference)",
            System::SqlxUnchained => "sqlx, no chain lock (reference)",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pgbench" => System::Pgbench,
            "tokio-postgres" => System::TokioPostgres,
            "sqlx" => System::Sqlx,
            "sqlx-noping" => System::SqlxNoPing,
            "unchained" => System::Unchained,
            "sqlx-unchained" => System::SqlxUnchained,
            other => {
                bail!("unknown system {other} (pgbench, tokio-postgres, sqlx, sqlx-noping, unchained, sqlx-unchained)")
            }
        })
    }
}

#[derive(Debug, Clone)]
struct Config {
    url: String,
    clients: Vec<usize>,
    seconds: f64,
    warmup_seconds: f64,
    records: u64,
    pgbench: PathBuf,
    pgbench_scale: u32,
    systems: Vec<System>,
    rounds: u32,
}

impl Config {
    fn from_args() -> Result<Self> {
        let mut cfg = Config {
            url: std::env::var("TOMBSTONE_BENCH_POSTGRES_URL").unwrap_or_default(),
            clients: vec![1, 8, 32],
            seconds: 10.0,
            warmup_seconds: 1.0,
            records: 100_000,
            pgbench: default_pgbench(),
            pgbench_scale: 10,
            systems: vec![System::Pgbench, System::TokioPostgres, System::Sqlx, System::SqlxNoPing],
            rounds: 1,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => cfg.url = value()?,
                "--clients" => cfg.clients = value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?,
                "--seconds" => cfg.seconds = value()?.parse()?,
                "--warmup-seconds" => cfg.warmup_seconds = value()?.parse()?,
                "--records" => cfg.records = value()?.parse()?,
                "--pgbench" => cfg.pgbench = PathBuf::from(value()?),
                "--pgbench-scale" => cfg.pgbench_scale = value()?.parse()?,
                "--systems" => {
                    cfg.systems = value()?.split(',').map(|s| System::parse(s.trim())).collect::<Result<_>>()?
                }
                "--rounds" => cfg.rounds = value()?.parse()?,
                "-h" | "--help" => {
                    println!(
                        "pg-driver-bench --url postgres://… [--clients 1,8,32] [--seconds 10] [--warmup-seconds 1] \
                         [--records 100000] [--pgbench PATH] [--pgbench-scale 10] \
                         [--systems pgbench,tokio-postgres,sqlx,sqlx-noping,unchained,sqlx-unchained] [--rounds 1]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}"),
            }
        }
        ensure!(!cfg.url.is_empty(), "--url (or TOMBSTONE_BENCH_POSTGRES_URL) is required");
        ensure!(cfg.clients.iter().all(|&c| c > 0) && !cfg.clients.is_empty(), "clients must be > 0");
        ensure!(cfg.seconds > 0.0 && cfg.rounds > 0 && cfg.records > 0, "seconds, rounds, records must be > 0");
        Ok(cfg)
    }
}

/// The newest pgbench of Debian's layout, or the one on PATH.
fn default_pgbench() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin/pgbench");
            p.exists().then_some((major, p))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| PathBuf::from("pgbench"))
}

/// One timed point: wall time, every operation's latency, and whether records ran out.
struct Run {
    wall: Duration,
    latencies: Vec<Duration>,
    exhausted: bool,
}

/// A pgbench point as pgbench reports it.
struct PgbenchRun {
    tps: f64,
    latency_avg_ms: f64,
    transactions: u64,
}

enum Outcome {
    Driver(Run),
    Pgbench(PgbenchRun),
}

struct Point {
    system: System,
    clients: usize,
    round: u32,
    outcome: Outcome,
    load_before: String,
    load_after: String,
    compilers: usize,
}

impl Point {
    fn tps(&self) -> f64 {
        match &self.outcome {
            Outcome::Driver(r) => r.latencies.len() as f64 / r.wall.as_secs_f64(),
            Outcome::Pgbench(p) => p.tps,
        }
    }
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How many compiler or linker processes run on the machine right now (the machine is
/// shared: a point measured beside a build is noted as such).
fn compilers_running() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|c| matches!(c.trim(), "rustc" | "cargo" | "cc1" | "cc1plus" | "ld" | "rust-lld" | "clippy-driver"))
        .count()
}

/// Record indexes in a scattered, fixed order: a point takes them one by one, so that no
/// record is deleted twice within a point.
struct Ids {
    order: Vec<u32>,
    next: AtomicU64,
}

impl Ids {
    fn new(records: u64) -> Self {
        let mut order: Vec<u32> = (0..records as u32).collect();
        // Fisher–Yates with a fixed xorshift seed: every run visits records in the same order.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        Ids { order, next: AtomicU64::new(0) }
    }

    fn reset(&self) {
        self.next.store(0, Ordering::SeqCst);
    }

    fn used(&self) -> u64 {
        self.next.load(Ordering::SeqCst).min(self.order.len() as u64)
    }

    /// The next operation: its sequence number in the point and its record.
    fn take(&self) -> Option<(u64, u64)> {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        self.order.get(seq as usize).map(|&r| (seq, u64::from(r)))
    }
}

/// `clients` tasks call `call` back to back until `until`; returns the latencies of the
/// calls made and whether the records ran out.
async fn drive<F, Fut>(clients: usize, until: Instant, ids: &Arc<Ids>, call: F) -> Result<(Vec<Duration>, bool)>
where
    F: Fn(db::DeleteOp) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<i64>> + Send,
{
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let call = call.clone();
            let ids = Arc::clone(ids);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16_384);
                while Instant::now() < until {
                    let Some((seq, record)) = ids.take() else { return Ok((latencies, true)) };
                    let op = db::DeleteOp::new(seq, record);
                    let t = Instant::now();
                    let version = call(op).await?;
                    latencies.push(t.elapsed());
                    ensure!(version == 2, "unexpected version {version}");
                }
                Ok::<_, anyhow::Error>((latencies, false))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut exhausted = false;
    for h in handles {
        let (l, e) = h.await??;
        all.extend(l);
        exhausted |= e;
    }
    Ok((all, exhausted))
}

/// A warm-up at the point's concurrency (statements get prepared on every connection),
/// then the timed part.
async fn run_driver<F, Fut>(cfg: &Config, clients: usize, ids: &Arc<Ids>, call: F) -> Result<Run>
where
    F: Fn(db::DeleteOp) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<i64>> + Send,
{
    let warm_until = Instant::now() + Duration::from_secs_f64(cfg.warmup_seconds);
    drive(clients, warm_until, ids, call.clone()).await?;
    let start = Instant::now();
    let (mut latencies, exhausted) = drive(clients, start + Duration::from_secs_f64(cfg.seconds), ids, call).await?;
    let wall = start.elapsed();
    latencies.sort_unstable();
    Ok(Run { wall, latencies, exhausted })
}

async fn run_pgbench(cfg: &Config, url: &str, clients: usize) -> Result<PgbenchRun> {
    let out = tokio::process::Command::new(&cfg.pgbench)
        .args(["-n", "-c", &clients.to_string(), "-j", &clients.min(2).to_string()])
        .args(["-T", &format!("{}", cfg.seconds.ceil() as u64), url])
        .output()
        .await
        .with_context(|| format!("run {}", cfg.pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "pgbench failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    let field = |prefix: &str| -> Result<f64> {
        let line =
            stdout.lines().find(|l| l.starts_with(prefix)).with_context(|| format!("no '{prefix}' in {stdout}"))?;
        let value = line[prefix.len()..].split_whitespace().next().context("empty value")?;
        value.parse::<f64>().with_context(|| format!("'{value}' in {line}"))
    };
    let transactions = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(PgbenchRun { tps: field("tps = ")?, latency_avg_ms: field("latency average = ")?, transactions })
}

async fn run_point(
    cfg: &Config,
    system: System,
    clients: usize,
    urls: &(String, String),
    setup: &tokio_postgres::Client,
    ids: &Arc<Ids>,
) -> Result<Outcome> {
    let (bench_url, pgbench_url) = urls;
    if system == System::Pgbench {
        setup.batch_execute("checkpoint").await?;
        return Ok(Outcome::Pgbench(run_pgbench(cfg, pgbench_url, clients).await?));
    }
    db::restore(setup).await?;
    ids.reset();
    let run = match system {
        System::TokioPostgres | System::Unchained => {
            let chained = system == System::TokioPostgres;
            let pool = tpg::open_pool(bench_url, clients).await?;
            let p = pool.clone();
            let run = run_driver(cfg, clients, ids, move |op| {
                let pool = p.clone();
                async move { tpg::soft_delete(&pool, &op, chained).await }
            })
            .await?;
            pool.close();
            run
        }
        System::Sqlx | System::SqlxNoPing | System::SqlxUnchained => {
            let chained = system != System::SqlxUnchained;
            let pool = sqlx_pg::open_pool(bench_url, clients, system != System::SqlxNoPing).await?;
            let p = pool.clone();
            let run = run_driver(cfg, clients, ids, move |op| {
                let pool = p.clone();
                async move { sqlx_pg::soft_delete(&pool, &op, chained).await }
            })
            .await?;
            pool.close().await;
            run
        }
        System::Pgbench => unreachable!("handled above"),
    };
    db::verify(setup, ids.used(), !matches!(system, System::Unchained | System::SqlxUnchained))
        .await
        .with_context(|| format!("verification of {} at {clients}", system.name()))?;
    Ok(Outcome::Driver(run))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = Config::from_args()?;
    let admin = db::connect(&cfg.url).await?;
    let version: String = admin.query_one("show server_version", &[]).await?.get(0);
    let settings = admin
        .query(
            "select name, current_setting(name) from pg_settings where name in ('fsync', 'synchronous_commit', \
             'full_page_writes', 'shared_buffers', 'wal_level', 'max_connections', 'max_wal_size', \
             'checkpoint_timeout', 'wal_sync_method') order by name",
            &[],
        )
        .await?
        .iter()
        .map(|r| format!("{}={}", r.get::<_, &str>(0), r.get::<_, &str>(1)))
        .collect::<Vec<_>>()
        .join(" ");
    println!("PostgreSQL {version}: {settings}");
    println!(
        "{} logical CPUs; load average {}; pgbench {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg(),
        cfg.pgbench.display()
    );

    let bench_url = db::url_with_db(&cfg.url, BENCH_DB)?;
    let pgbench_url = db::url_with_db(&cfg.url, PGBENCH_DB)?;
    let t = Instant::now();
    db::recreate_database(&admin, BENCH_DB).await?;
    let setup = db::connect(&bench_url).await?;
    db::create_schema(&setup, cfg.records).await?;
    println!("preloaded {} active records in {:.1}s", cfg.records, t.elapsed().as_secs_f64());

    if cfg.systems.contains(&System::Pgbench) {
        let t = Instant::now();
        db::recreate_database(&admin, PGBENCH_DB).await?;
        let out = tokio::process::Command::new(&cfg.pgbench)
            .args(["-i", "-q", "-s", &cfg.pgbench_scale.to_string(), &pgbench_url])
            .output()
            .await
            .with_context(|| format!("run {}", cfg.pgbench.display()))?;
        ensure!(out.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
        println!("pgbench -i -s {} in {:.1}s", cfg.pgbench_scale, t.elapsed().as_secs_f64());
    }
    println!(
        "{} s per point (+{} s warm-up for the drivers), clients {:?}, {} round(s)\n",
        cfg.seconds, cfg.warmup_seconds, cfg.clients, cfg.rounds
    );

    let ids = Arc::new(Ids::new(cfg.records));
    let urls = (bench_url, pgbench_url);
    let mut points = Vec::new();
    let mut turn = 0;
    for round in 1..=cfg.rounds {
        for &clients in &cfg.clients {
            // Rotate the order at every client count, so that no system always runs first.
            let mut order = cfg.systems.clone();
            let shift = turn % order.len();
            order.rotate_left(shift);
            turn += 1;
            for system in order {
                let load_before = loadavg();
                let compilers_before = compilers_running();
                let outcome = run_point(&cfg, system, clients, &urls, &setup, &ids).await?;
                let point = Point {
                    system,
                    clients,
                    round,
                    outcome,
                    load_before,
                    load_after: loadavg(),
                    compilers: compilers_before.max(compilers_running()),
                };
                let extra = match &point.outcome {
                    Outcome::Driver(r) if r.exhausted => " (ran out of records: raise --records)",
                    Outcome::Driver(_) => " (verified)",
                    Outcome::Pgbench(_) => "",
                };
                eprintln!(
                    "round {round}: {:<26} {clients:>3} clients {:>9.0} tx/s{extra}; load {} -> {}; compilers {}",
                    system.name(),
                    point.tps(),
                    point.load_before,
                    point.load_after,
                    point.compilers
                );
                points.push(point);
            }
        }
    }
    print_table(&cfg, &points);

    drop(setup);
    admin.batch_execute(&format!("drop database if exists {BENCH_DB} with (force)")).await?;
    admin.batch_execute(&format!("drop database if exists {PGBENCH_DB} with (force)")).await?;
    Ok(())
}

fn print_table(cfg: &Config, points: &[Point]) {
    println!(
        "\n| round | clients | system | tx/s | % of pgbench | p50 ms | p99 ms | max ms | load before → after | compilers |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---|---:|");
    for p in points {
        let pgbench = points
            .iter()
            .find(|q| q.system == System::Pgbench && q.clients == p.clients && q.round == p.round)
            .map(Point::tps);
        let ratio = match (p.system, pgbench) {
            (System::Pgbench, _) | (_, None) => "—".to_owned(),
            (_, Some(base)) => format!("{:.0}%", 100.0 * p.tps() / base),
        };
        let (p50, p99, max) = match &p.outcome {
            Outcome::Driver(r) => (
                ms(percentile(&r.latencies, 50.0)),
                ms(percentile(&r.latencies, 99.0)),
                ms(*r.latencies.last().unwrap_or(&Duration::ZERO)),
            ),
            Outcome::Pgbench(b) => (format!("avg {:.2}", b.latency_avg_ms), "—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} → {} | {} |",
            p.round,
            p.clients,
            p.system.name(),
            p.tps(),
            ratio,
            p50,
            p99,
            max,
            p.load_before,
            p.load_after,
            p.compilers
        );
    }
    println!(
        "\nDriver rows: operations in the timed {} s / wall time, percentiles by nearest rank over every",
        cfg.seconds
    );
    println!("timed operation (pool checkout included). pgbench rows: its own tps (without connection time) and");
    println!(
        "average latency; `transactions` below. compilers = most rustc/cargo/cc/ld processes seen at the point's start or end."
    );
    for p in points {
        if let Outcome::Pgbench(b) = &p.outcome {
            println!("  pgbench round {} at {} clients: {} transactions", p.round, p.clients, b.transactions);
        }
    }
}
