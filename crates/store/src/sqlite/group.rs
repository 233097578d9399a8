//! Group commit on the live writer: the writes that queue up while one transaction runs
//! share the next one.
//!
//! SQLite has one writer, so requests' writes already run one after another on the writer
//! thread; what each still paid alone was its transaction — `BEGIN IMMEDIATE`, and at
//! `COMMIT` every page it dirtied written to the WAL as a whole frame, the pages every
//! write touches (the audit chain's tail and head, the outbox's tail, the deletions') once
//! per write. Here the writer takes every write waiting in its queue (at most
//! [`MAX_GROUP`]) into one transaction, each inside its own savepoint:
//! - a write that fails is rolled back to its savepoint alone (its audit head restored)
//!   and answered at once — nothing of it is in the transaction;
//! - the writes that succeeded are answered after the `COMMIT` returned (durable as every
//!   commit is, `synchronous = normal` in WAL mode), and the cache forgets their records
//!   before any of them is answered;
//! - if SQLite abandons the whole transaction (a full disk, an I/O error: it may roll back
//!   by itself) or the commit fails, every write of the group that had succeeded is
//!   answered with that error, and the writes not yet run start a new group.
//!
//! A write alone in the queue runs exactly as before: one transaction, no savepoint.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::{CacheFeed, WriteGate, changes, finish_checkpoint};
use crate::StoreError;

/// At most this many writes share a transaction: a bound on how long the first of them
/// waits for the others, and on what one failed commit takes with it.
pub(super) const MAX_GROUP: usize = 32;

/// What a group needs of its store, carried by each write (all writes of one writer come
/// from one store).
#[derive(Clone)]
pub(super) struct Context {
    pub(super) gate: Arc<WriteGate>,
    pub(super) cache: Option<Arc<dyn crate::RecordCache>>,
    pub(super) feed: Arc<CacheFeed>,
    pub(super) events: Arc<tokio::sync::Notify>,
    pub(super) stats: Arc<Stats>,
}

/// Groups committed and the writes they carried (see [`crate::GroupStats`]).
#[derive(Debug, Default)]
pub(super) struct Stats {
    commits: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
}

impl Stats {
    pub(super) fn get(&self) -> crate::GroupStats {
        crate::GroupStats { commits: self.commits.load(Ordering::Relaxed), writes: self.writes.load(Ordering::Relaxed) }
    }
}

/// A write waiting for its group.
pub(super) trait Write: Send {
    /// Runs the write inside the group's transaction, keeping its value for the answer.
    fn run(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError>;
    /// Answers the caller: the kept value when `outcome` is `Ok`.
    fn answer(self: Box<Self>, outcome: Result<(), StoreError>);
}

/// A write's closure, then its value, and where the answer goes.
pub(super) struct Pending<T, F> {
    pub(super) f: Option<F>,
    pub(super) value: Option<T>,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Write for Pending<T, F>
where
    T: Send,
    F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
        let f = self.f.take().ok_or_else(|| StoreError::Internal("a write ran twice".into()))?;
        self.value = Some(f(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<(), StoreError>) {
        let Pending { value, reply, .. } = *self;
        let answer = outcome.and_then(|()| value.ok_or_else(|| StoreError::Internal("a write never ran".into())));
        let _ = reply.send(answer);
    }
}

/// Why a write of a group did not go in.
enum Undone {
    /// It was rolled back to its savepoint; the transaction goes on.
    Alone(StoreError),
    /// The transaction is gone with it.
    Abandoned(StoreError),
}

impl From<Undone> for StoreError {
    fn from(undone: Undone) -> Self {
        match undone {
            Undone::Alone(e) | Undone::Abandoned(e) => e,
        }
    }
}

/// Runs `write` inside a savepoint of `tx`, rolling back to it when the write fails.
fn savepoint(tx: &rusqlite::Transaction<'_>, write: &mut dyn Write) -> Result<(), Undone> {
    let abandoned = |e: rusqlite::Error| Undone::Abandoned(e.into());
    tx.execute_batch("savepoint w").map_err(abandoned)?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| write.run(tx)))
        .unwrap_or_else(|_| Err(StoreError::Internal("a write panicked; it was rolled back".into())));
    match result {
        Ok(()) => tx.execute_batch("release w").map_err(abandoned),
        Err(e) if tx.is_autocommit() => Err(Undone::Abandoned(e)),
        Err(e) => {
            tx.execute_batch("rollback to w; release w").map_err(abandoned)?;
            Err(Undone::Alone(e))
        }
    }
}

/// Clears what a writer's transaction collects on its thread, before it begins.
pub(super) fn begin() {
    changes::CHANGED.with(|c| c.borrow_mut().clear());
    changes::WRITTEN.with(|w| w.set(None));
    changes::reset_audit_head();
}

/// After a writer's transaction ended: when it committed, the cache forgets the records
/// it changed — before any of its callers is answered, so no response to a change can be
/// followed by a read of the old state from the cache — and the event followers are woken
/// (only once the commit has returned, so a woken follower always finds the rows; a
/// rolled-back write wakes nobody).
pub(super) fn settle(ctx: &Context, committed: bool) {
    changes::reset_audit_head();
    let changed = changes::CHANGED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let written = changes::WRITTEN.with(std::cell::Cell::take);
    if !committed {
        return;
    }
    if let Some(cache) = &ctx.cache {
        for key in &changed {
            cache.invalidate(key);
        }
        if let Some(range) = written {
            ctx.feed.note_own(range);
        }
    }
    // `notify_waiters` reaches every `Notified` created before this call, polled or not,
    // on any runtime: followers create theirs before looking for work.
    if written.is_some() {
        ctx.events.notify_waiters();
    }
}

/// Runs `writes` in as few transactions as it can (one, unless SQLite abandons one).
pub(super) fn run(conn: &mut Connection, ctx: &Context, mut writes: Vec<Box<dyn Write>>) {
    while !writes.is_empty() {
        writes = run_one(conn, ctx, writes);
    }
}

/// Runs one transaction over the writes, in order; returns those it could not run because
/// SQLite abandoned the transaction under them.
fn run_one(conn: &mut Connection, ctx: &Context, writes: Vec<Box<dyn Write>>) -> Vec<Box<dyn Write>> {
    let turn = ctx.gate.enter_live();
    if ctx.gate.restart_wal.swap(false, Ordering::Relaxed) {
        finish_checkpoint(conn);
    }
    begin();
    let alone = writes.len() == 1;
    let mut done: Vec<Box<dyn Write>> = Vec::with_capacity(writes.len());
    let mut rest = Vec::new();
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        // Another process holds the write lock past the busy timeout, or the file is gone:
        // every write of the group hears why.
        Err(e) => {
            parking_lot::MutexGuard::unlock_fair(turn);
            settle(ctx, false);
            let e = StoreError::from(e);
            for write in writes {
                write.answer(Err(e.clone()));
            }
            return Vec::new();
        }
    };
    let outcome = (|| -> Result<(), StoreError> {
        let mut queue = writes.into_iter();
        while let Some(mut write) = queue.next() {
            let head = changes::audit_head_mark();
            let result = if alone {
                std::panic::catch_unwind(AssertUnwindSafe(|| write.run(&tx)))
                    .unwrap_or_else(|_| Err(StoreError::Internal("a write panicked; it was rolled back".into())))
                    .map_err(Undone::Alone)
            } else {
                savepoint(&tx, &mut *write)
            };
            match result {
                Ok(()) => done.push(write),
                // Alone, the transaction's rollback undoes it.
                Err(e) if alone => {
                    write.answer(Err(e.into()));
                    return Ok(());
                }
                // SQLite rolled the whole transaction back (a full disk, an I/O error), or
                // the savepoint itself failed: the writes before this one are gone with
                // it; those after it get a transaction of their own.
                Err(Undone::Abandoned(e)) => {
                    write.answer(Err(e.clone()));
                    rest = queue.collect();
                    return Err(e);
                }
                Err(Undone::Alone(e)) => {
                    changes::restore_audit_head(head);
                    write.answer(Err(e));
                }
            }
        }
        if done.is_empty() {
            return Ok(());
        }
        changes::flush_audit_head(&tx)?;
        tx.commit()?;
        Ok(())
    })();
    // The database is done: hand the lock straight to a waiting writer rather than racing
    // it for the next turn.
    parking_lot::MutexGuard::unlock_fair(turn);
    // The keys of writes rolled back to their savepoints are among those forgotten:
    // forgetting an unchanged record costs one read.
    let committed = outcome.is_ok() && !done.is_empty();
    settle(ctx, committed);
    if committed {
        ctx.stats.commits.fetch_add(1, Ordering::Relaxed);
        ctx.stats.writes.fetch_add(done.len() as u64, Ordering::Relaxed);
    }
    for write in done {
        write.answer(outcome.clone());
    }
    rest
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use tombstone_domain::audit::{AuditAction, NewAuditEntry};
    use tombstone_domain::config::Config;
    use tombstone_domain::events::{EventType, NewEvent};
    use tombstone_domain::time::Timestamp;

    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::{EventQuery, EventStore, Store};

    fn entry(n: i64) -> NewAuditEntry {
        NewAuditEntry {
            at: Timestamp::from_micros(1_000 + n),
            tenant: "t1".into(),
            actor: "key_1".into(),
            action: AuditAction::Update,
            collection: Some("notes".into()),
            record_id: Some(format!("r{n}")),
            version: Some(n),
            deletion_id: None,
            reason: None,
            request_id: Some("req".into()),
            hold_id: None,
            case: None,
        }
    }

    fn event(n: i64) -> NewEvent {
        NewEvent {
            kind: EventType::Updated,
            tenant: "t1".into(),
            collection: "notes".into(),
            record_id: format!("r{n}"),
            version: Some(n),
            deletion_id: None,
            occurred_at: Timestamp::from_micros(1_000 + n),
            request_id: Some("req".into()),
            data: None,
        }
    }

    /// How a test write ends after its appends.
    #[derive(Clone, Copy)]
    enum End {
        Ok,
        Fail,
        Panic,
    }

    /// A live write of record `n`: `entries` audit entries and one event, then `end`.
    fn write(
        store: &Arc<SqliteStore>,
        n: i64,
        entries: i64,
        end: End,
    ) -> tokio::task::JoinHandle<Result<i64, StoreError>> {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(move |tx| {
                    changes::append_audit_many(tx, (0..entries).map(|i| entry(n * 10 + i)).collect())?;
                    changes::append_event(tx, event(n))?;
                    match end {
                        End::Ok => Ok(n),
                        End::Fail => Err(StoreError::Internal(format!("write {n} fails"))),
                        End::Panic => panic!("write {n} panics"),
                    }
                })
                .await
        })
    }

    #[tokio::test]
    async fn writes_queued_together_share_one_commit_and_a_failed_one_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let toml = "[collections.notes.fields]\ntext = { type = \"string\" }\n";
        store.migrate(&Config::parse(toml, Path::new(".")).unwrap().schema).await.unwrap();
        let before = store.group_stats();

        // Another connection holds SQLite's write lock: the first write waits in its
        // BEGIN, and the writes sent meanwhile queue up behind it.
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("begin immediate").unwrap();
        let first = write(&store, 0, 1, End::Ok);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut next = Vec::new();
        for (n, entries, end) in
            [(1, 2, End::Ok), (2, 2, End::Fail), (3, 1, End::Ok), (4, 1, End::Panic), (5, 3, End::Ok)]
        {
            next.push((n, end, write(&store, n, entries, end)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        blocker.execute_batch("commit").unwrap();

        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (n, end, handle) in next {
            let answer = handle.await.unwrap();
            match end {
                End::Ok => assert_eq!(answer.unwrap(), n),
                End::Fail => assert!(answer.unwrap_err().to_string().contains("fails"), "write {n}"),
                End::Panic => assert!(answer.unwrap_err().to_string().contains("panicked"), "write {n}"),
            }
        }
        // Two commits: the first write alone, then the four others that succeeded together.
        let after = store.group_stats();
        assert_eq!((after.commits - before.commits, after.writes - before.writes), (2, 4));
        // The chain holds exactly the entries of the writes that committed, unbroken.
        assert_eq!(store.verify_audit().await.unwrap().unwrap(), 1 + 2 + 1 + 3);
        let events = store
            .list_all_events(&EventQuery { after: 0, collection: None, types: Vec::new(), limit: 100 })
            .await
            .unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.record_id.as_str()).collect();
        assert_eq!(ids, ["r0", "r1", "r3", "r5"]);
    }
}
