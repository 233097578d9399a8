//! Open-loop load for the purge benchmark: GETs by id (17 in 20), list pages (2 in 20)
//! and creates (1 in 20: live writes, which a purge batch must let through) sent at a
//! fixed rate, whatever the server's answers do — each on its own
//! task, so a slow answer never holds back the requests behind it (no coordinated
//! omission, unlike a closed loop of connections).
//!
//! Meanwhile it polls `/metrics` ten times a second for `tombstone_purge_rows_total` and
//! splits the samples into before / during / after the purge pass: during is from the
//! first poll that saw the counter move to the last one. The first three seconds warm the
//! caches and connections and are left out.
//!
//! Usage: load URL KEY IDS_FILE RATE SECONDS  (env READS_ONLY=1: the creates become GETs)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    List,
    Create,
}

/// Seconds of warm-up left out of every phase.
const WARM_UP: f64 = 3.0;

#[derive(Clone, Copy)]
struct Sample {
    due: f64,
    kind: Kind,
    micros: f64,
    ok: bool,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, key) = (args[1].clone(), args[2].clone());
    let ids: Vec<String> = std::fs::read_to_string(&args[3]).expect("ids").lines().map(String::from).collect();
    let rate: f64 = args[4].parse().expect("rate");
    let seconds: f64 = args[5].parse().expect("seconds");
    let reads_only = std::env::var("READS_ONLY").is_ok_and(|v| v == "1");
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let start = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let counter: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();

    let poller = {
        let (client, url, counter) = (client.clone(), url.clone(), counter.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while start.elapsed().as_secs_f64() < seconds {
                tick.tick().await;
                let Ok(resp) = client.get(format!("{url}/metrics")).send().await else { continue };
                let text = resp.text().await.unwrap_or_default();
                let rows = text
                    .lines()
                    .find(|l| l.starts_with("tombstone_purge_rows_total{collection=\"products\"}"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                counter.lock().unwrap().push((start.elapsed().as_secs_f64(), rows));
            }
        })
    };

    let total = (rate * seconds) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let kind = match i % 20 {
            9 | 19 => Kind::List,
            14 if !reads_only => Kind::Create,
            _ => Kind::Get,
        };
        let request = match kind {
            Kind::List => client.get(format!("{url}/v1/products?limit=50")),
            Kind::Get => client.get(format!("{url}/v1/products/{}", ids[(i as usize * 7919) % ids.len()])),
            Kind::Create => client
                .post(format!("{url}/v1/products"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"sku":"LOAD-{i}","name":"Load {i}"}}"#)),
        };
        let (key, samples) = (key.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = match request.bearer_auth(key).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let micros = sent.elapsed().as_secs_f64() * 1e6;
            samples.lock().unwrap().push(Sample { due: (due - start).as_secs_f64(), kind, micros, ok });
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = poller.await;

    let counter = counter.lock().unwrap().clone();
    let moved: Vec<&(f64, f64)> = counter.windows(2).filter(|w| w[1].1 > w[0].1).map(|w| &w[1]).collect::<Vec<_>>();
    let (from, to, rows) = match (moved.first(), moved.last()) {
        // The counter moved between the poll before `first` and `first`.
        (Some(first), Some(last)) => {
            let before = counter.iter().rev().find(|c| c.0 < first.0).map_or(first.0, |c| c.0);
            let base = counter.iter().rev().find(|c| c.0 < first.0).map_or(0.0, |c| c.1);
            (before, last.0, last.1 - base)
        }
        _ => (f64::MAX, f64::MAX, 0.0),
    };
    let samples = samples.lock().unwrap().clone();
    println!("rate {rate}/s for {seconds} s; purge pass seen from {from:.1} s to {to:.1} s: {rows} rows");
    if rows > 0.0 {
        println!("purge: {:.0} rows/s", rows / (to - from));
    }
    let failed = samples.iter().filter(|s| !s.ok).count();
    println!("failed requests: {failed}");
    println!(
        "{:<8} {:<7} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "phase", "kind", "n", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for (phase, lo, hi) in [("before", WARM_UP, from), ("during", from, to), ("after", to, f64::MAX)] {
        for (name, kind) in [("get", Kind::Get), ("list", Kind::List), ("create", Kind::Create)] {
            let mut v: Vec<f64> =
                samples.iter().filter(|s| s.kind == kind && s.due >= lo && s.due < hi).map(|s| s.micros).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            println!(
                "{phase:<8} {name:<7} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                v.len(),
                q(0.5),
                q(0.99),
                q(0.999),
                v[v.len() - 1]
            );
        }
    }
}
