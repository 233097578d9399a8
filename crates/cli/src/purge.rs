//! `tombstone purge`: one pass now, with a progress bar on a terminal (rows/s and ETA)
//! and a summary otherwise; `--dry-run` reports what is due and changes nothing. The same pass
//! archives what `archive_after` says is due (§17), paused purge or not.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tombstone_domain::config::{Collection, Config};
use tombstone_domain::time::Clock;
use tombstone_server::purge::{BatchReport, PurgeWorker, SleepPacer};

use crate::open_store;

pub(crate) async fn run(
    config: &Config,
    clock: Arc<dyn Clock>,
    dry_run: bool,
    only: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(c) = only
        && config.schema.collection(c).is_none()
    {
        bail!("--collection {c:?}: no such collection in the config");
    }
    let store = open_store(config).await?;
    let collections: Vec<Arc<Collection>> =
        config.schema.collections.values().filter(|c| only.is_none_or(|o| c.name == o)).cloned().collect();
    let now = clock.now();
    let due = store.purge_due(None, &collections, now, now).await?;
    let paused = store.purge_paused().await?;
    if dry_run {
        if json {
            let per: serde_json::Map<String, serde_json::Value> = due
                .iter()
                .map(|d| (d.collection.clone(), json!({"due": d.due_now, "held": d.held, "sample": d.sample})))
                .collect();
            println!("{}", json!({"paused": paused, "collections": per}));
        } else {
            for d in &due {
                println!("{}: {} due", d.collection, d.due_now);
            }
            if paused {
                println!("(purge is paused: a real run would purge nothing)");
            }
        }
        return Ok(());
    }
    // A pause stops purging, not archiving (archive removes nothing): with `archive_after`
    // somewhere, the pass still runs, purges nothing and archives what is due.
    let archives = collections.iter().any(|c| c.archive_after.is_some());
    if paused && !archives {
        if json {
            println!("{}", json!({"paused": true, "purged": 0}));
        } else {
            println!("purge is paused; nothing purged (resume with POST /v1/purge:resume)");
        }
        return Ok(());
    }
    let total: u64 = due.iter().map(|d| d.due_now).sum();
    let bar = if std::io::stderr().is_terminal() && !json {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} purging {msg:<16} [{bar:30}] {pos}/{len} rows  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let worker = PurgeWorker::new(store, clock, config.schema.clone(), config.purge.clone());
    let progress = |b: &BatchReport| {
        if let Some(bar) = &bar {
            bar.set_message(b.collection.clone());
            bar.inc(b.rows);
        }
    };
    let started = std::time::Instant::now();
    // One pass at a time per deployment: a pass running inside a serving replica holds the
    // purge lease, and this one waits for it (the pause and the rate cap are the
    // deployment's, not each process's).
    let waiting =
        || eprintln!("another purge pass is running (a serving replica holds the purge lease); waiting for it");
    let report = worker.run_pass_leased(&SleepPacer, only, &progress, &waiting).await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mut per: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for b in &report.batches {
        *per.entry(b.collection.clone()).or_default() += b.rows;
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            json!({"paused": report.paused, "purged": report.purged, "archived": report.archived, "errors": report.errors, "collections": per, "seconds": secs})
        );
    } else {
        let parts: Vec<String> = per.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        println!(
            "purged {} records in {:.1} s{}{}",
            report.purged,
            secs,
            if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) },
            if report.paused { "; stopped: purge was paused" } else { "" }
        );
        if report.archived > 0 {
            println!("archived {} records (archive_after)", report.archived);
        }
    }
    if report.errors > 0 {
        bail!("{} batches failed; they are retried on the next pass", report.errors);
    }
    Ok(())
}
