//! Supervised background workers: a worker that panics is restarted with backoff, its work
//! completes, the panics are counted in `tombstone_worker_panics_total{worker}`, and
//! cancellation still stops everything.
//!
//! In a test binary of its own: the metrics recorder is per process. Tokio's clock is
//! paused, so the backoff's sleeps pass at once and nothing here depends on timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tombstone_server::supervise::{Backoff, PANICS_METRIC, WORKERS, supervise};

/// The value of `tombstone_worker_panics_total{worker="…"}` in the `/metrics` text.
fn panics_counted(worker: &str) -> Option<u64> {
    let text = tombstone_server::telemetry::handle().expect("the recorder").render();
    let series = format!("{PANICS_METRIC}{{worker=\"{worker}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(|v| v.trim().parse().expect("a count"))
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worker_is_restarted_with_backoff_and_its_work_completes() {
    // Installs the recorder, which registers every known worker's counter at zero.
    tombstone_server::telemetry::handle();
    for worker in WORKERS {
        assert_eq!(panics_counted(worker), Some(0), "{worker} is registered at zero");
    }

    let runs = Arc::new(AtomicU32::new(0));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (cancel_tx, cancel) = watch::channel(false);
    let started = tokio::time::Instant::now();
    let worker = {
        let (runs, cancel) = (runs.clone(), cancel.clone());
        // Panics on its first three runs (as a worker might on a poison row), then does its
        // work and waits for cancellation like the real workers.
        move || {
            let (runs, done_tx, mut cancel) = (runs.clone(), done_tx.clone(), cancel.clone());
            async move {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(run > 3, "poison row on run {run}");
                done_tx.send(run).expect("test listens");
                let _ = cancel.changed().await;
            }
        }
    };
    let supervisor = tokio::spawn(supervise("test_worker", Backoff::default(), cancel, worker));

    assert_eq!(done.recv().await, Some(4), "the fourth run did the work");
    assert_eq!(panics_counted("test_worker"), Some(3));
    // Three backoffs of 1, 2 and 4 s (on tokio's paused clock).
    assert_eq!(started.elapsed().as_secs(), 7);

    // Shutdown stops the supervised worker, and nothing restarts it.
    cancel_tx.send(true).unwrap();
    supervisor.await.expect("the supervisor ends");
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn cancellation_during_a_backoff_stops_at_once() {
    let (cancel_tx, cancel) = watch::channel(false);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let supervisor = tokio::spawn(supervise("always_panics", Backoff::default(), cancel, move || {
        let runs = counted.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            panic!("always");
        }
    }));
    // Let it panic a few times, then cancel while it waits.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    cancel_tx.send(true).unwrap();
    supervisor.await.expect("the supervisor ends");
    let runs = runs.load(Ordering::SeqCst);
    assert_eq!(runs, 3, "runs at 0 s, 1 s and 3 s; cancelled during the 4 s wait");
}
