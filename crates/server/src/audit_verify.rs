//! The audit chain's verify status (`GET`/`POST /v1/audit/verify`, the dashboard's audit
//! page): the whole hash chain is recomputed with the store's `verify_audit` — what
//! `tombstone audit verify` runs — at start and then every [`EVERY`], and the outcome is
//! stored in the database (table `audit_checks`), so every replica answers the same.
//!
//! A check runs only while its process holds the lease [`LEASE`] (one check at a time in
//! the deployment) and, inside a process, under [`Verifier`]'s lock. A check asked for
//! while one runs, or within [`REUSE_WITHIN`] of the last one, reuses that one: asking
//! cannot make the server read its whole log over and over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tombstone_store::{AuditCheck, StoreError};

use crate::app::AppState;
use crate::lease::WorkerLease;

/// The name of the check's lease in the database.
pub const LEASE: &str = "audit_verify";

/// How often the background worker checks the whole chain.
pub const EVERY: Duration = Duration::from_secs(3600);

/// A check that finished this recently is answered again instead of running a new one.
pub const REUSE_WITHIN: Duration = Duration::from_secs(10);

/// ... or this many times as long as the last check took, when that is longer: asking for
/// checks keeps them under a tenth of one core however large the log grows (a log that
/// takes 13 s to check is checked again at most every 130 s), so no tenant's admin can
/// keep a replica reading the whole log.
pub const REUSE_COST_FACTOR: u32 = 10;

/// The gauge: 1 when the last check found the chain broken, 0 when intact (absent before
/// the first check).
pub const BROKEN_METRIC: &str = "tombstone_audit_chain_broken";

/// The gauge: when the last check finished (Unix seconds).
pub const CHECKED_AT_METRIC: &str = "tombstone_audit_chain_checked_at_seconds";

/// One per process: serialises the checks this process runs.
#[derive(Default, Clone)]
pub struct Verifier {
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// What asking for a check gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A check ran now (or one that had just finished was reused): its outcome.
    Done { check: AuditCheck, reused: bool },
    /// Another replica is checking; the last stored outcome meanwhile.
    Running(Option<AuditCheck>),
}

fn fresh(state: &AppState, check: &AuditCheck, within: Duration) -> bool {
    let age = state.now().as_micros().saturating_sub(check.checked_at.as_micros());
    u128::try_from(age).is_ok_and(|age| age < within.as_micros())
}

/// Runs a check unless one finished within `reuse`, or within [`REUSE_COST_FACTOR`] times
/// its own duration (then that one is the answer).
///
/// # Errors
/// The store failed.
pub async fn check(state: &AppState, reuse: Duration) -> Result<Checked, StoreError> {
    let _one_here = state.verifier.lock.lock().await;
    // Read after the lock: a check that ran while this one waited is reused.
    if let Some(last) = state.store.audit_check().await?
        && fresh(state, &last, reuse.max(Duration::from_millis(last.duration_ms) * REUSE_COST_FACTOR))
    {
        return Ok(Checked::Done { check: last, reused: true });
    }
    let lease = WorkerLease::new(state.store.clone(), state.clock.clone(), LEASE);
    let ran = lease.hold(verify_and_store(state)).await?;
    if ran.is_some() {
        lease.release().await;
    }
    match ran {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(e),
        None => return Ok(Checked::Running(state.store.audit_check().await?)),
    }
    let check = state
        .store
        .audit_check()
        .await?
        .ok_or_else(|| StoreError::Internal("the stored audit check vanished".into()))?;
    record_metrics(&check);
    Ok(Checked::Done { check, reused: false })
}

async fn verify_and_store(state: &AppState) -> Result<(), StoreError> {
    let started = Instant::now();
    let outcome = state.store.verify_audit().await?;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &outcome {
        Ok(n) => tracing::info!(entries = n, duration_ms, "audit chain verified: intact"),
        Err(e) => tracing::error!(problem = %e, duration_ms, "audit chain verified: BROKEN"),
    }
    state.store.save_audit_check(state.now(), duration_ms, &outcome).await
}

/// Sets the gauges from a stored check.
pub fn record_metrics(check: &AuditCheck) {
    metrics::gauge!(BROKEN_METRIC).set(if check.broken.is_some() { 1.0 } else { 0.0 });
    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
    metrics::gauge!(CHECKED_AT_METRIC).set(check.checked_at.as_micros() as f64 / 1e6);
}

/// The background worker: a check at start and every [`EVERY`]; a turn whose last check
/// (by any replica) is younger than [`EVERY`] is skipped, so replicas do not repeat each
/// other.
pub async fn run(state: AppState, mut cancel: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = check(&state, EVERY).await {
                    tracing::warn!(error = %e, "could not verify the audit chain; retrying in a minute");
                }
            }
            _ = cancel.changed() => break,
        }
    }
}
