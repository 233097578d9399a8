//! Group commit: the single-record writes of requests (create, patch, delete, restore,
//! archive) that arrive together share one transaction, and so one commit and one flush of
//! the WAL.
//!
//! Each write keeps its own decision, audit entry, event and answer: it runs in a savepoint
//! of the shared transaction, and a write that fails is rolled back to its savepoint alone
//! and answered at once (it changed nothing). The writes that succeeded are answered after
//! the commit returns — never before their commit is durable at the database's configured
//! level — and the records they changed are forgotten by the cache first.
//!
//! Why: every write appends to the audit chain, whose head row is locked from the first
//! append to the commit (that is what keeps the chain unforked and outbox order equal to
//! commit order). With one transaction per write, the commits of all writers happen one
//! flush at a time. A group takes the head lock once and flushes once for all its writes.
//!
//! One group runs at a time per process, on one connection, the writes in arrival order;
//! the next group gathers while the current one runs. Two groups of one process never wait
//! on each other's row locks (a deadlock between unrelated requests); the groups of several
//! replicas wait on each other as single transactions do.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use tokio::sync::{Notify, oneshot};

use super::{BoxFuture, PgTx, Tables};
use crate::{RecordCache, StoreError};

/// At most this many writes share a transaction. Each savepoint that writes takes a
/// subtransaction id, and PostgreSQL keeps 64 of them per backend in shared memory before
/// every other snapshot has to look them up on disk; a write can take two (its own
/// savepoint and a unique check's).
const MAX_GROUP: usize = 24;

const OPEN_FIRST: &str = "savepoint tombstone_group";
const OPEN_NEXT: &str = "release savepoint tombstone_group; savepoint tombstone_group";
const UNDO: &str = "rollback to savepoint tombstone_group";

type Output = Box<dyn Any + Send>;
type Run = Box<dyn for<'t, 'c> FnOnce(&'t mut PgTx<'c>) -> BoxFuture<'t, Result<Output, StoreError>> + Send>;

/// One write waiting for a group.
struct Job {
    tables: Arc<Tables>,
    run: Run,
    answer: oneshot::Sender<Result<Output, StoreError>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Whether a task is running groups (it takes the queue until it finds it empty).
    running: bool,
}

/// How many groups committed and how many writes they carried (failed writes not
/// counted), since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub commits: u64,
    pub writes: u64,
}

/// The group committer of one store.
pub(super) struct Group {
    pool: Pool,
    changes: Arc<Notify>,
    cache: Option<Arc<dyn RecordCache>>,
    shared: Option<Arc<crate::RedisCache>>,
    /// The store's name in the cache notifications its transactions send.
    origin: Arc<str>,
    queue: Mutex<Queue>,
    commits: AtomicU64,
    writes: AtomicU64,
}

impl Group {
    pub(super) fn new(
        pool: Pool,
        changes: Arc<Notify>,
        cache: Option<Arc<dyn RecordCache>>,
        shared: Option<Arc<crate::RedisCache>>,
        origin: Arc<str>,
    ) -> Self {
        Self {
            pool,
            changes,
            cache,
            shared,
            origin,
            queue: Mutex::new(Queue::default()),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> GroupStats {
        GroupStats { commits: self.commits.load(Ordering::Relaxed), writes: self.writes.load(Ordering::Relaxed) }
    }

    /// Writes waiting for a group (the one running not counted).
    pub(super) fn waiting(&self) -> usize {
        self.queue.lock().map_or(0, |queue| queue.jobs.len())
    }

    /// Runs `f` in the next group and answers once that group has committed (or at once
    /// with `f`'s error, which rolled back only `f`'s own writes).
    ///
    /// The write goes on if the caller stops waiting once its group has started, as a
    /// request's write does on SQLite's writer thread; a write whose caller is gone before
    /// its group starts is skipped.
    pub(super) async fn write<T, F>(self: &Arc<Self>, tables: Arc<Tables>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t, 'c> FnOnce(&'t mut PgTx<'c>) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
    {
        let run: Run = Box::new(move |tx| {
            let written = f(tx);
            Box::pin(async move { written.await.map(|value| Box::new(value) as Output) })
        });
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue =
                self.queue.lock().map_err(|_| StoreError::Internal("the write queue is poisoned".into()))?;
            queue.jobs.push(Job { tables, run, answer });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).drain());
        }
        let value =
            answered.await.map_err(|_| StoreError::Internal("a write was abandoned (its group failed)".into()))??;
        value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| StoreError::Internal("a write answered with the wrong type".into()))
    }

    /// Runs groups until the queue is empty.
    async fn drain(self: Arc<Self>) {
        // If a group panics, the queue must not stay marked as running: the writes still
        // waiting are dropped (their callers hear an error) and the next write starts over.
        let stop = Stop(&self);
        loop {
            let jobs = {
                let Ok(mut queue) = self.queue.lock() else { return };
                if queue.jobs.is_empty() {
                    queue.running = false;
                    // A write arriving from now on starts a new task, whose queue this
                    // one must not touch on its way out.
                    std::mem::forget(stop);
                    return;
                }
                let take = queue.jobs.len().min(MAX_GROUP);
                queue.jobs.drain(..take).collect::<Vec<_>>()
            };
            self.run(jobs).await;
        }
    }

    /// One group: one transaction, a savepoint per write, one commit.
    async fn run(&self, jobs: Vec<Job>) {
        let jobs: Vec<Job> = jobs.into_iter().filter(|job| !job.answer.is_closed()).collect();
        let Some(tables) = jobs.last().map(|job| job.tables.clone()) else { return };
        let mut client = match self.pool.get().await {
            Ok(client) => client,
            Err(e) => return fail(jobs.into_iter().map(|job| job.answer), &e.into()),
        };
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => return fail(jobs.into_iter().map(|job| job.answer), &e.into()),
        };
        let mut tx = PgTx::new(tx, tables, self.changes.clone(), self.origin.clone());
        let mut written = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        let mut open = false;
        while let Some(job) = jobs.next() {
            let opened = tx.transaction().batch_execute(if open { OPEN_NEXT } else { OPEN_FIRST }).await;
            if let Err(e) = opened {
                let e = StoreError::from(e);
                return fail(written.into_iter().map(|(answer, _)| answer).chain(once(job, jobs)), &e);
            }
            open = true;
            let mark = tx.mark();
            let result = match (job.run)(&mut tx).await {
                // Its audit entries are sealed inside its own savepoint, so that a later
                // write's failure cannot take them back.
                Ok(value) => tx.flush_audit().await.map(|_| value),
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => written.push((job.answer, value)),
                Err(e) => {
                    if let Err(undo) = tx.transaction().batch_execute(UNDO).await {
                        // The connection is gone: nothing of the group commits.
                        let _ = job.answer.send(Err(e));
                        let answers = written.into_iter().map(|(answer, _)| answer).chain(jobs.map(|j| j.answer));
                        return fail(answers, &undo.into());
                    }
                    tx.reset(mark);
                    let _ = job.answer.send(Err(e));
                }
            }
        }
        if written.is_empty() {
            let _ = tx.rollback().await;
            return;
        }
        let changed = tx.changed().to_vec();
        match tx.commit().await {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.writes.fetch_add(written.len() as u64, Ordering::Relaxed);
                crate::telemetry::histogram("tombstone_write_group_size", &[("store", "postgres")])
                    .record(written.len() as f64);
                // Before any caller hears of the commit: no answer to a change can be
                // followed by a read of the old state from this process's cache.
                if let Some(cache) = &self.cache {
                    for key in &changed {
                        cache.invalidate(key);
                    }
                }
                if let Some(shared) = &self.shared {
                    shared.invalidate(&changed).await;
                }
                for (answer, value) in written {
                    let _ = answer.send(Ok(value));
                }
            }
            Err(e) => fail(written.into_iter().map(|(answer, _)| answer), &e),
        }
    }
}

/// The answer channels of `job` and of the jobs after it.
fn once(job: Job, rest: std::vec::IntoIter<Job>) -> impl Iterator<Item = oneshot::Sender<Result<Output, StoreError>>> {
    std::iter::once(job.answer).chain(rest.map(|j| j.answer))
}

fn fail(answers: impl Iterator<Item = oneshot::Sender<Result<Output, StoreError>>>, e: &StoreError) {
    for answer in answers {
        let _ = answer.send(Err(e.clone()));
    }
}

/// Marks the queue as not running when the task that drains it ends by a panic.
struct Stop<'a>(&'a Group);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let mut queue = match self.0.queue.lock() {
            Ok(queue) => queue,
            Err(poisoned) => poisoned.into_inner(),
        };
        queue.running = false;
        queue.jobs.clear();
    }
}
