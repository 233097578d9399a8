//! Decides Tombstone's SQLite driver: the soft-delete transaction (record
//! update + deletions + hash-chained audit + outbox, one BEGIN IMMEDIATE
//! transaction) run through
//!
//! * raw:            rusqlite on the main thread, no async, no channel (ceiling)
//! * rusqlite+writer: rusqlite on one dedicated writer thread, tokio callers
//!   send closures over an mpsc channel and await a oneshot reply
//! * sqlx:           sqlx SqlitePool with max_connections = 1
//!
//! Every scenario starts from a byte-identical copy of a preloaded database
//! file and is verified (row counts + audit hash chain) after it ran.
//!
//! Usage: driver-bench [--ops N] [--rounds R] [--concurrency C] [--records N] [--warmup N]

mod db;
mod sqlx_store;
mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::runtime::Runtime;

use crate::db::DeleteOp;

#[derive(Debug, Clone, Copy)]
struct Config {
    ops: u64,
    rounds: u32,
    concurrency: u64,
    records: u64,
    warmup: u64,
}

impl Config {
    fn from_args() -> Result<Self> {
        let mut cfg = Config { ops: 5000, rounds: 3, concurrency: 16, records: 100_000, warmup: 200 };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || -> Result<u64> {
                let v = args.next().with_context(|| format!("{flag} needs a value"))?;
                v.parse().with_context(|| format!("{flag}: not a number: {v}"))
            };
            match flag.as_str() {
                "--ops" => cfg.ops = value()?,
                "--rounds" => cfg.rounds = u32::try_from(value()?)?,
                "--concurrency" => cfg.concurrency = value()?,
                "--records" => cfg.records = value()?,
                "--warmup" => cfg.warmup = value()?,
                "-h" | "--help" => {
                    println!("driver-bench [--ops N] [--rounds R] [--concurrency C] [--records N] [--warmup N]");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}"),
            }
        }
        ensure!(cfg.ops > 0 && cfg.rounds > 0 && cfg.concurrency > 0, "ops, rounds, concurrency must be > 0");
        ensure!(
            cfg.warmup + cfg.ops <= cfg.records,
            "warmup + ops must not exceed records (each op deletes a distinct record)"
        );
        ensure!(!cfg.records.is_multiple_of(7919), "records must not be a multiple of 7919");
        Ok(cfg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Raw,
    Writer,
    Sqlx,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Raw => "raw rusqlite (main thread, no async)",
            Driver::Writer => "rusqlite + writer thread",
            Driver::Sqlx => "sqlx pool (max 1)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sequential,
    Concurrent(u64),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Sequential => "1 caller, sequential".to_owned(),
            Mode::Concurrent(c) => format!("{c} concurrent tasks"),
        }
    }
}

/// One timed run: wall time and every operation's latency.
struct Run {
    wall: Duration,
    latencies: Vec<Duration>,
}

/// All rounds of one (driver, mode) scenario.
struct Scenario {
    driver: Driver,
    mode: Mode,
    runs: Vec<Run>,
}

impl Scenario {
    fn ops_per_sec(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.runs.iter().map(|r| r.latencies.len() as f64 / r.wall.as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn latencies(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.runs.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        all.sort_unstable();
        all
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

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn main() -> Result<()> {
    let cfg = Config::from_args()?;
    let dir = tempfile::tempdir()?;
    let template = dir.path().join("template.db");

    let t = Instant::now();
    db::create_template(&template, cfg.records)?;
    println!(
        "preloaded {} active records in {:.2}s; SQLite {} (rusqlite, bundled); {} logical CPUs",
        cfg.records,
        t.elapsed().as_secs_f64(),
        rusqlite::version(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{} ops per scenario per round (+{} warm-up ops, untimed), {} rounds, concurrency {}\n",
        cfg.ops, cfg.warmup, cfg.rounds, cfg.concurrency
    );

    // Multi-threaded tokio runtime with the default worker count (= cores).
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    print_pragmas(&rt, &template)?;

    let mut scenarios: Vec<Scenario> = [
        (Driver::Raw, Mode::Sequential),
        (Driver::Writer, Mode::Sequential),
        (Driver::Sqlx, Mode::Sequential),
        (Driver::Writer, Mode::Concurrent(cfg.concurrency)),
        (Driver::Sqlx, Mode::Concurrent(cfg.concurrency)),
    ]
    .into_iter()
    .map(|(driver, mode)| Scenario { driver, mode, runs: Vec::new() })
    .collect();

    let mut file_no = 0;
    for round in 0..cfg.rounds {
        // Alternate the order each round so neither driver always runs first.
        let mut order: Vec<usize> = (0..scenarios.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let s = &mut scenarios[i];
            file_no += 1;
            let path = dir.path().join(format!("run-{file_no}.db"));
            std::fs::copy(&template, &path)?;
            let run = run_scenario(&rt, &cfg, s.driver, s.mode, &path)?;
            db::verify(&path, cfg.warmup + cfg.ops)
                .with_context(|| format!("verification failed for {} / {}", s.driver.name(), s.mode.label()))?;
            eprintln!(
                "round {}: {:<38} {:<22} {:>8.0} ops/s (verified)",
                round + 1,
                s.driver.name(),
                s.mode.label(),
                run.latencies.len() as f64 / run.wall.as_secs_f64()
            );
            s.runs.push(run);
            remove_db(&path);
        }
    }

    print_table(&cfg, &scenarios);
    Ok(())
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn print_pragmas(rt: &Runtime, template: &Path) -> Result<()> {
    let conn = db::open_rusqlite(template)?;
    println!("rusqlite pragmas: {}", db::describe_pragmas(&conn)?);
    drop(conn);
    rt.block_on(async {
        let pool = sqlx_store::open_pool(template).await?;
        println!(
            "sqlx     pragmas: {} (SQLite {})\n",
            sqlx_store::describe_pragmas(&pool).await?,
            sqlx_store::sqlite_version(&pool).await?
        );
        pool.close().await;
        Ok(())
    })
}

fn run_scenario(rt: &Runtime, cfg: &Config, driver: Driver, mode: Mode, path: &Path) -> Result<Run> {
    match (driver, mode) {
        (Driver::Raw, Mode::Sequential) => run_raw(cfg, path),
        (Driver::Raw, Mode::Concurrent(_)) => bail!("raw has no concurrent mode"),
        (Driver::Writer, mode) => {
            let writer = writer::Writer::spawn(path, 1024)?;
            let handle = writer.handle();
            let run = rt.block_on(run_async(cfg, mode, move |op| {
                let handle = handle.clone();
                async move { handle.call(move |conn| db::soft_delete(conn, &op)).await? }
            }));
            writer.join()?;
            run
        }
        (Driver::Sqlx, mode) => rt.block_on(async {
            let pool = sqlx_store::open_pool(path).await?;
            let p = pool.clone();
            let run = run_async(cfg, mode, move |op| {
                let pool = p.clone();
                async move { sqlx_store::soft_delete(&pool, &op).await }
            })
            .await;
            pool.close().await;
            run
        }),
    }
}

/// The ceiling: the same transaction, called directly on this thread.
fn run_raw(cfg: &Config, path: &Path) -> Result<Run> {
    let mut conn = db::open_rusqlite(path)?;
    for i in 0..cfg.warmup {
        db::soft_delete(&mut conn, &DeleteOp::new(i, cfg.records))?;
    }
    let mut latencies = Vec::with_capacity(cfg.ops as usize);
    let start = Instant::now();
    for i in cfg.warmup..cfg.warmup + cfg.ops {
        let op = DeleteOp::new(i, cfg.records);
        let t = Instant::now();
        db::soft_delete(&mut conn, &op)?;
        latencies.push(t.elapsed());
    }
    let wall = start.elapsed();
    conn.close().map_err(|(_, e)| e)?;
    Ok(Run { wall, latencies })
}

/// Runs warm-up ops, then the timed ops either from one task or spread over
/// `c` tasks (task k takes op indices k, k+c, k+2c, ...). `call` performs one
/// soft delete. Latency = from just before the call to its result.
async fn run_async<F, Fut>(cfg: &Config, mode: Mode, call: F) -> Result<Run>
where
    F: Fn(DeleteOp) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<i64>> + Send,
{
    let records = cfg.records;
    for i in 0..cfg.warmup {
        call(DeleteOp::new(i, records)).await?;
    }
    let tasks = match mode {
        Mode::Sequential => 1,
        Mode::Concurrent(c) => c,
    };
    let (first, end) = (cfg.warmup, cfg.warmup + cfg.ops);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = first + k;
                while i < end {
                    let op = DeleteOp::new(i, records);
                    let t = Instant::now();
                    let version = call(op).await?;
                    latencies.push(t.elapsed());
                    ensure!(version == 2, "unexpected version {version}");
                    i += tasks;
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(cfg.ops as usize);
    for h in handles {
        latencies.extend(h.await??);
    }
    let wall = start.elapsed();
    Ok(Run { wall, latencies })
}

fn print_table(cfg: &Config, scenarios: &[Scenario]) {
    let raw_ops =
        scenarios.iter().find(|s| s.driver == Driver::Raw).map(|s| median(&s.ops_per_sec())).unwrap_or(f64::NAN);
    println!(
        "\n{} ops/round x {} rounds; ops/s = median of rounds [min-max]; latency percentiles over all rounds' ops\n",
        cfg.ops, cfg.rounds
    );
    println!("| driver | workload | ops/s median [min-max] | % of raw | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|---|---|");
    for s in scenarios {
        let ops = s.ops_per_sec();
        let lat = s.latencies();
        let med = median(&ops);
        println!(
            "| {} | {} | {:.0} [{:.0}-{:.0}] | {:.0}% | {} | {} | {} |",
            s.driver.name(),
            s.mode.label(),
            med,
            ops[0],
            ops[ops.len() - 1],
            100.0 * med / raw_ops,
            us(percentile(&lat, 50.0)),
            us(percentile(&lat, 99.0)),
            us(*lat.last().unwrap_or(&Duration::ZERO)),
        );
    }
}
