//! Supervision of the background workers: a worker that panics is logged with the panic's
//! message, counted in `tombstone_worker_panics_total{worker}`, and started again after a
//! backoff, instead of staying dead silently until shutdown.
//!
//! Each run of a worker is its own tokio task, so a panic unwinds only that task and
//! reaches the supervisor as a [`tokio::task::JoinError`]. Workers keep their state in the
//! database (cursors, leases, queues), so a restarted one resumes where the last one
//! committed. Shutdown is the workers' own: the supervisor never aborts a run, it waits for
//! it to finish its batch and stops restarting once cancelled.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// The workers `serve` supervises, by the `worker` label they are counted under.
pub const WORKERS: [&str; 8] =
    ["housekeeping", "relay", "nats_relay", "purge", "eventual_cascades", "cache_sync", "indexer", "audit_verify"];

/// The counter of panics.
pub const PANICS_METRIC: &str = "tombstone_worker_panics_total";

/// How long to wait before restarting a worker that panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after a first panic.
    pub first: Duration,
    /// The longest wait: each further panic doubles the wait up to this.
    pub max: Duration,
    /// A run that lasted this long was healthy: the next panic waits `first` again.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    /// 1 s doubling to 60 s, reset after a healthy minute: a worker that panics on every
    /// batch (a poison row, say) is retried about once a minute instead of spinning, and
    /// one that panicked once long ago starts again at once.
    fn default() -> Self {
        Self { first: Duration::from_secs(1), max: Duration::from_secs(60), healthy_after: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The wait after a panic, given the previous wait (`None`: no panic yet, or the run
    /// that panicked had been healthy).
    #[must_use]
    pub fn next(&self, previous: Option<Duration>) -> Duration {
        previous.map_or(self.first, |p| (p * 2).min(self.max))
    }
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs the worker `start()` makes, again and again after each panic, until a run ends
/// without panicking (workers return when `cancel` says so) or `cancel` fires during a
/// backoff.
pub async fn supervise<F, Fut>(worker: &'static str, backoff: Backoff, mut cancel: watch::Receiver<bool>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let panics = metrics::counter!(PANICS_METRIC, "worker" => worker);
    let mut wait: Option<Duration> = None;
    loop {
        let started = tokio::time::Instant::now();
        let error = match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => e.into_panic(),
            // Cancelled: only a runtime shutting down cancels a task.
            Err(_) => return,
        };
        panics.increment(1);
        if started.elapsed() >= backoff.healthy_after {
            wait = None;
        }
        let delay = backoff.next(wait);
        wait = Some(delay);
        tracing::error!(
            worker,
            panic = %panic_message(error.as_ref()),
            restart_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "background worker panicked; restarting it"
        );
        if *cancel.borrow() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = cancel.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let b = Backoff::default();
        let mut wait = None;
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                let next = b.next(wait);
                wait = Some(next);
                next.as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
