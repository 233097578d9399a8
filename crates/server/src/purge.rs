//! The purge worker: hard-deletes soft-deleted records whose recovery window has elapsed
//! and that no legal hold protects, gently — in batches of `batch_size`, pausing `pause`
//! between batches and never exceeding `max_rows_per_second` per collection — so live
//! traffic keeps its latency.
//!
//! The same pass archives, at the same pacing, the records of collections with
//! `archive_after` that were not updated for that long (§17), as the actor `system`; a
//! pause of purge does not stop it (archive removes nothing).
//!
//! Each batch is one transaction (rows, audit entries, `record.purged` events), so a crash
//! mid-pass loses nothing and purges nothing twice: the rolled-back batch is simply due
//! again on the next pass. The pause flag is read inside each batch's transaction.
//!
//! With several replicas (or `tombstone purge` beside `serve`) a pass runs only while its
//! process holds the lease [`LEASE`], so one pass runs at a time in the whole deployment:
//! the pause between batches and the rate cap hold for the deployment, not per process.
//! Batches are also claimed row by row (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the
//! writer's transaction on SQLite), so even two passes around a takeover never purge a
//! row twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tombstone_domain::config::{Collection, PurgeConfig, Schema};
use tombstone_domain::time::{Clock, Timestamp};
use tombstone_store::{Store, StoreError};

use crate::lease::WorkerLease;

/// The name of the purge pass's lease in the database.
pub const LEASE: &str = "purge";

/// Waits between batches. The server sleeps; tests advance a manual clock instead.
pub trait Pacer: Send + Sync {
    /// Waits `duration`.
    fn wait(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Sleeps on the tokio timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct SleepPacer;

impl Pacer for SleepPacer {
    fn wait(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// How often the backlog gauge is refreshed between passes: records come due all the
/// time, and an hourly pass would otherwise leave the gauge an hour behind.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(60);

/// One batch of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub collection: String,
    pub rows: u64,
    /// The wait after this batch (pause, stretched by the rate cap).
    pub waited: Duration,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub batches: Vec<BatchReport>,
    pub purged: u64,
    /// Records archived by `archive_after`.
    pub archived: u64,
    /// The batches of the archive part of the pass.
    pub archive_batches: Vec<BatchReport>,
    /// Failed batches (retried on the next pass).
    pub errors: u64,
    /// Purge was paused (before or during the pass).
    pub paused: bool,
}

/// The worker.
#[derive(Clone)]
pub struct PurgeWorker {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    schema: Arc<Schema>,
    config: PurgeConfig,
    /// One pass per deployment at a time: the holder of the lease [`LEASE`].
    lease: Arc<WorkerLease>,
}

impl PurgeWorker {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, schema: Arc<Schema>, config: PurgeConfig) -> Self {
        let lease = Arc::new(WorkerLease::new(store.clone(), clock.clone(), LEASE));
        Self { store, clock, schema, config, lease }
    }

    /// The same worker with another lease (a shorter time to live, another holder: tests).
    #[must_use]
    pub fn with_lease(mut self, lease: WorkerLease) -> Self {
        self.lease = Arc::new(lease);
        self
    }

    /// Runs one pass (as [`Self::run_pass`]) as the holder of the purge lease, waiting for
    /// the lease while another process's pass holds it (`waiting` is called once then):
    /// what `tombstone purge` runs beside serving replicas. The lease is released after
    /// the pass.
    ///
    /// # Errors
    /// The store failed to grant the lease.
    pub async fn run_pass_leased(
        &self,
        pacer: &dyn Pacer,
        only: Option<&str>,
        progress: &(dyn Fn(&BatchReport) + Sync),
        waiting: &(dyn Fn() + Sync),
    ) -> Result<PassReport, StoreError> {
        let mut told = false;
        loop {
            if let Some(report) = self.lease.hold(self.run_pass(pacer, only, progress)).await? {
                self.lease.release().await;
                return Ok(report);
            }
            if !told {
                waiting();
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The collections a pass covers (all, or one).
    fn collections(&self, only: Option<&str>) -> Vec<Arc<Collection>> {
        self.schema.collections.values().filter(|c| only.is_none_or(|o| c.name == o)).cloned().collect()
    }

    /// Runs one pass over every collection (or `only`), calling `progress` after each
    /// batch.
    pub async fn run_pass(
        &self,
        pacer: &dyn Pacer,
        only: Option<&str>,
        progress: &(dyn Fn(&BatchReport) + Sync),
    ) -> PassReport {
        let started = Instant::now();
        let run_id = format!("purge_{}", uuid::Uuid::now_v7().simple());
        let mut report = PassReport::default();
        'collections: for collection in self.collections(only) {
            let cap = f64::from(self.config.max_rows_per_second);
            loop {
                let batch_start = self.clock.now();
                let result = self.store.purge_batch(&collection, batch_start, self.config.batch_size, &run_id).await;
                let batch = match result {
                    Ok(b) => b,
                    Err(e) => {
                        report.errors += 1;
                        metrics::counter!("tombstone_purge_job_errors_total", "collection" => collection.name.clone())
                            .increment(1);
                        tracing::warn!(collection = %collection.name, error = %e, "purge batch failed; it is retried on the next pass");
                        continue 'collections;
                    }
                };
                if batch.paused {
                    report.paused = true;
                    break 'collections;
                }
                if batch.purged == 0 {
                    break;
                }
                metrics::counter!("tombstone_purge_rows_total", "collection" => collection.name.clone())
                    .increment(batch.purged);
                report.purged += batch.purged;
                // The rate cap: this batch may not take less than rows / cap seconds.
                #[expect(clippy::cast_precision_loss, reason = "batch sizes are far below 2^52")]
                let minimum = Duration::from_secs_f64(batch.purged as f64 / cap);
                let spent = elapsed(batch_start, self.clock.now());
                let waited = self.config.pause.max(minimum.saturating_sub(spent));
                let b = BatchReport { collection: collection.name.clone(), rows: batch.purged, waited };
                progress(&b);
                report.batches.push(b);
                if batch.purged < u64::from(self.config.batch_size) {
                    break;
                }
                pacer.wait(waited).await;
            }
        }
        self.archive_pass(pacer, only, &run_id, &mut report).await;
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("tombstone_purge_job_runtime_seconds").record(seconds);
        if report.purged > 0 || report.archived > 0 || report.errors > 0 {
            #[expect(clippy::cast_precision_loss, reason = "a rate for the log")]
            let rows_per_second = (report.purged as f64 / seconds.max(1e-6)).round();
            tracing::info!(
                purged = report.purged,
                archived = report.archived,
                errors = report.errors,
                seconds,
                rows_per_second,
                run = %run_id,
                "purge pass finished"
            );
        }
        report
    }

    /// Archives, collection by collection, what `archive_after` says is due: records not
    /// updated since `now - archive_after`, in batches of `batch_size` at the purge pacing
    /// (the pause between batches, stretched by the rate cap).
    async fn archive_pass(&self, pacer: &dyn Pacer, only: Option<&str>, run_id: &str, report: &mut PassReport) {
        let cap = f64::from(self.config.max_rows_per_second);
        for collection in self.collections(only) {
            let Some(after) = collection.archive_after else { continue };
            loop {
                let batch_start = self.clock.now();
                let micros = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
                let cutoff = Timestamp::from_micros(batch_start.as_micros().saturating_sub(micros));
                let archived = match self
                    .store
                    .archive_batch(&collection, cutoff, batch_start, self.config.batch_size, run_id)
                    .await
                {
                    Ok(n) => n,
                    Err(e) => {
                        report.errors += 1;
                        metrics::counter!("tombstone_purge_job_errors_total", "collection" => collection.name.clone())
                            .increment(1);
                        tracing::warn!(collection = %collection.name, error = %e, "archive batch failed; it is retried on the next pass");
                        break;
                    }
                };
                if archived == 0 {
                    break;
                }
                metrics::counter!("tombstone_archive_rows_total", "collection" => collection.name.clone())
                    .increment(archived);
                report.archived += archived;
                #[expect(clippy::cast_precision_loss, reason = "batch sizes are far below 2^52")]
                let minimum = Duration::from_secs_f64(archived as f64 / cap);
                let spent = elapsed(batch_start, self.clock.now());
                let waited = self.config.pause.max(minimum.saturating_sub(spent));
                let b = BatchReport { collection: collection.name.clone(), rows: archived, waited };
                report.archive_batches.push(b);
                if archived < u64::from(self.config.batch_size) {
                    break;
                }
                pacer.wait(waited).await;
            }
        }
    }

    /// Updates the backlog gauge: records due now, per collection.
    ///
    /// # Errors
    /// The store failed.
    pub async fn measure_backlog(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let due = self.store.purge_due(None, &self.collections(None), now, now).await?;
        for d in due {
            #[expect(clippy::cast_precision_loss, reason = "a gauge")]
            metrics::gauge!("tombstone_purge_backlog", "collection" => d.collection.clone()).set(d.due_now as f64);
        }
        Ok(())
    }

    /// Runs a pass every `interval` (the first one interval after start) until cancelled,
    /// and measures the backlog at start, after each pass and every [`BACKLOG_EVERY`].
    pub async fn run(self, mut cancel: tokio::sync::watch::Receiver<bool>) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.config.interval, self.config.interval);
        let mut backlog_tick = tokio::time::interval(BACKLOG_EVERY);
        backlog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = backlog_tick.tick() => {
                    if let Err(e) = self.measure_backlog().await {
                        tracing::warn!(error = %e, "could not measure the purge backlog");
                    }
                }
                _ = tick.tick() => {
                    // Only the lease holder passes; another replica's pass (or `tombstone
                    // purge`) holding it means this tick's work is being done.
                    let pass = self.lease.hold(self.run_pass(&SleepPacer, None, &|_| {}));
                    tokio::select! {
                        held = pass => {
                            if let Err(e) = held {
                                tracing::warn!(error = %e, "could not claim the purge lease; the pass is retried on the next tick");
                            }
                            // Released between passes, so `tombstone purge` or another
                            // replica need not wait for it to expire.
                            self.lease.release().await;
                        }
                        // Cancellation waits for the current batch's transaction, never
                        // splits one: the pass future is only dropped between awaits.
                        _ = cancel.changed() => break,
                    }
                    if let Err(e) = self.measure_backlog().await {
                        tracing::warn!(error = %e, "could not measure the purge backlog");
                    }
                }
                _ = cancel.changed() => break,
            }
        }
        self.lease.release().await;
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::from_micros(u64::try_from(to.as_micros() - from.as_micros()).unwrap_or(0))
}
