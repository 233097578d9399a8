//! The embedded SQLite store: a pool of read-only connections that run beside the writers
//! thanks to WAL, and two writer connections, each on its own thread:
//!
//! - the **live writer** runs the writes of requests, at normal priority;
//! - the **background writer** runs bulk work (purge batches, eventual cascades, webhook
//!   fan-out, clean-ups) in the idle CPU class (see [`crate::priority`]).
//!
//! A checkpointer thread, also in the idle class, copies the WAL into the database file
//! beside them, so no commit pays for a checkpoint.
//!
//! SQLite allows one write transaction at a time; the two threads take turns through a
//! [`WriteGate`] instead of SQLite's sleeping busy handler. A live write never waits
//! behind more than a few dozen rows of background work: long background transactions
//! check the gate between chunks and commit early when a live write is waiting (the way
//! PostgreSQL's autovacuum gives way to a conflicting lock request).

mod changes;
mod files;
mod group;
mod history;
mod idempotency;
mod leases;
mod records;
mod relations;
mod retention;
mod schema;
mod tx;
mod webhooks;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, mpsc};

use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;
use tombstone_domain::audit::{AuditEntry, ChainError, ChainVerifier};
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::deletion::DeletionPlan;
use tombstone_domain::events::Event;
use tombstone_domain::lifecycle::{Actor, ArchiveRequest, DeleteRequest, IfMatch};
use tombstone_domain::query::ListQuery;
use tombstone_domain::record::{Hold, Patch, Record};
use tombstone_domain::scope::parse_scopes;
use tombstone_domain::time::Timestamp;

use self::records::TableSql;
use self::tx::SqliteTx;
use crate::CollectionCounts;
use crate::prelude::*;
use crate::rules;
use crate::{
    AttemptOutcome, AuditCheck, AuditQuery, DeleteOutcome, DeletionOp, Delivery, DeliveryQuery, DueDelivery,
    EndpointState, Erasure, ErasureStep, EventQuery, IdempotencyClaim, IdempotencyKey, Page, PurgeBatch, PurgeDue,
    RecordsPage, Redelivery, RestoreOutcome, StoreError, StoredKey, StoredResponse, TrashQuery, WebhookEndpoint,
};
use tombstone_domain::ready::now;

/// What a writer thread runs.
enum Job {
    /// A job with the connection to itself (background work, checkpoints).
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
    /// A live write that may share its transaction with others queued beside it.
    Grouped(group::Context, Box<dyn group::Write>),
}

/// Takes the two writer threads in turn through SQLite's single write lock.
#[derive(Debug, Default)]
struct WriteGate {
    lock: parking_lot::Mutex<()>,
    /// Live writes waiting for their turn: background work gives way to them.
    waiting: AtomicUsize,
    /// Set by the checkpointer when the WAL has grown past [`WAL_RESTART_FRAMES`]: the
    /// next writer finishes the checkpoint between two transactions (see
    /// [`finish_checkpoint`]).
    restart_wal: std::sync::atomic::AtomicBool,
}

impl WriteGate {
    fn enter_live(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let turn = self.lock.lock();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        turn
    }

    /// Whether a live write waits: a background transaction commits early when it does.
    fn contended(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }
}

/// What the cache has been told of the outbox: the newest seq it has followed, and the
/// seq ranges this process wrote itself (already invalidated on commit), so following
/// the outbox reads only what other processes wrote.
#[derive(Debug, Default)]
struct CacheFeed {
    seen: std::sync::atomic::AtomicI64,
    own: parking_lot::Mutex<std::collections::VecDeque<(i64, i64)>>,
}

/// Own ranges kept at most: past that, following the outbox just reads them too.
const OWN_RANGES_MAX: usize = 10_000;

impl CacheFeed {
    fn note_own(&self, range: (i64, i64)) {
        let mut own = self.own.lock();
        if own.len() < OWN_RANGES_MAX {
            own.push_back(range);
        }
    }

    /// Invalidates what other processes changed after `seen`, skipping this process's own
    /// ranges. Returns how many changes were read.
    fn follow(&self, conn: &Connection, cache: &dyn crate::RecordCache) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let after = self.seen.load(Ordering::SeqCst);
            // The next own range: rows before it are other processes'.
            let next_own = {
                let mut own = self.own.lock();
                while own.front().is_some_and(|&(_, last)| last <= after) {
                    own.pop_front();
                }
                own.front().copied()
            };
            let before = next_own.map_or(i64::MAX, |(first, _)| first);
            let batch = changes::changed_between(conn, after, before, 1000)?;
            match batch.last().map(|(seq, ..)| *seq) {
                Some(last) => {
                    for (_, key, _) in &batch {
                        cache.invalidate(key);
                    }
                    total += batch.len() as u64;
                    self.seen.fetch_max(last, Ordering::SeqCst);
                }
                None => match next_own {
                    // Nothing foreign before the own range: skip over it.
                    Some((_, last)) => {
                        self.seen.fetch_max(last, Ordering::SeqCst);
                    }
                    None => return Ok(total),
                },
            }
        }
    }
}

/// Which writer runs a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Live,
    Background,
}

/// How long an erasure's request waits for readers on an older snapshot before leaving
/// the truncation of the WAL to the erasure worker.
const ERASE_WAL_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The writers' busy timeout (`WRITER_PRAGMAS`), restored after a shorter wait.
const WRITER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(5000);

/// How often the checkpointer copies new WAL frames into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest pause between two checkpoints while they fail (a full disk).
const CHECKPOINT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// WAL frames after which the checkpointer asks the writer to let the WAL start over.
///
/// A checkpointer beside a writer that never pauses cannot catch up: new frames arrive
/// while it copies, so the WAL is never fully copied when a transaction begins, SQLite
/// never rewinds it, and it grows until the backstop below (1 GB) — every commit then
/// appends to a growing file, paying the file system's block allocation and page zeroing
/// (a third of the writer's CPU under a steady delete load). So past this size the writer
/// copies the few frames written since the checkpointer's last pass before its next
/// transaction; that transaction then starts the WAL over, and the file's pages are
/// reused instead of allocated.
const WAL_RESTART_FRAMES: i64 = 32768;

/// WAL pages after which the live writer's commit checkpoints by itself: only a backstop
/// for a WAL growing without bound (the checkpointer starved of CPU for a long time), so a
/// request's commit practically never pays for a checkpoint. The background writer never
/// does: its commit runs during its turn at the gate, which live writes would wait out.
const CHECKPOINT_BACKSTOP_PAGES: u32 = 250_000;

/// Runs `f` inside one `BEGIN IMMEDIATE` transaction on `conn` during the background
/// writer's turn at the gate: it commits when `f` succeeds and rolls back when it fails.
/// The records it changed leave the cache before this returns, so before the caller hears
/// of the commit; when it wrote outbox rows, the followers (`changes`) are woken once it
/// has committed. (Live writes go through the `group` module instead.)
fn transaction<T>(
    conn: &mut Connection,
    ctx: &group::Context,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let turn = ctx.gate.lock.lock();
    group::begin();
    let result = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        changes::flush_audit_head(&tx)?;
        tx.commit()?;
        Ok(value)
    })();
    // The database is done: hand the lock straight to a waiting writer rather than racing
    // it for the next turn.
    parking_lot::MutexGuard::unlock_fair(turn);
    group::settle(ctx, result.is_ok());
    result
}

/// Copies into the database file what the WAL holds beyond the checkpointer's last pass,
/// between two transactions of the writer: nothing can be appended meanwhile, so unless an
/// older reader still needs a frame the WAL is then fully copied, and the next transaction
/// rewinds it (see [`WAL_RESTART_FRAMES`]). Passive: it never waits — a checkpoint in
/// progress elsewhere or an old reader just leaves it for the next time.
fn finish_checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("pragma wal_checkpoint(passive)", [], |_| Ok(())) {
        tracing::debug!(error = %e, "the writer's checkpoint did not run; the checkpointer retries");
    }
}

/// Starts a writer thread that runs the jobs sent to it on `conn`; the background one
/// lowers its CPU priority first.
fn spawn_writer(lane: Lane, mut conn: Connection) -> Result<mpsc::Sender<Job>, StoreError> {
    let (tx, rx) = mpsc::channel::<Job>();
    let name = match lane {
        Lane::Live => "tombstone-sqlite-writer",
        Lane::Background => "tombstone-background-writer",
    };
    let backstop = match lane {
        Lane::Live => CHECKPOINT_BACKSTOP_PAGES,
        Lane::Background => 0,
    };
    conn.execute_batch(&format!("pragma wal_autocheckpoint = {backstop};"))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if lane == Lane::Background {
                crate::priority::lower_current_thread();
            }
            let mut next = None;
            while let Some(job) = next.take().or_else(|| rx.recv().ok()) {
                match job {
                    // A panicking job must not take the writer down with it; its
                    // transaction rolls back when dropped during unwinding.
                    Job::Alone(job) => {
                        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                            tracing::error!("a write job panicked; its transaction was rolled back");
                        }
                    }
                    // Every write already queued joins this one's transaction, up to the
                    // group's bound; a job that must run alone waits for the group.
                    Job::Grouped(ctx, write) => {
                        let mut writes = vec![write];
                        while writes.len() < group::MAX_GROUP {
                            match rx.try_recv() {
                                Ok(Job::Grouped(_, write)) => writes.push(write),
                                Ok(alone) => {
                                    next = Some(alone);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        crate::telemetry::histogram("tombstone_write_group_size", &[("store", "sqlite")])
                            .record(writes.len() as f64);
                        group::run(&mut conn, &ctx, writes);
                    }
                }
            }
        })
        .map_err(|e| StoreError::Internal(format!("cannot start the {name} thread: {e}")))?;
    Ok(tx)
}

/// Starts the checkpointer: on its own connection, in the idle CPU class, it copies new
/// WAL frames into the database file a few times a second, beside the writers rather
/// than inside their commits. It stops when `stop`'s sender is dropped.
///
/// When the WAL is due to start over (past [`WAL_RESTART_FRAMES`]) it also does what
/// would otherwise stall the live writer: SQLite syncs the database file only after a
/// pass that reached the WAL's end, which a writer that never pauses does not allow, so
/// every copied page would wait, unsynced, for the writer's own pass
/// ([`finish_checkpoint`]) — measured at 40–130 ms of `fsync` during which every write
/// queued (docs/PERFORMANCE.md, "The write tail"). The checkpointer syncs those pages
/// itself and copies again what arrived meanwhile, up to [`CATCH_UP_PASSES`] times, so the
/// writer's pass has only the last few frames to copy and sync.
fn spawn_checkpointer(
    conn: Connection,
    stop: mpsc::Receiver<()>,
    passes: Arc<parking_lot::Mutex<()>>,
    gate: Arc<WriteGate>,
) -> Result<(), StoreError> {
    // Another handle on the database file, for `fdatasync`: any handle flushes the file's
    // pages, whoever wrote them.
    let file = conn.path().filter(|p| !p.is_empty()).and_then(|p| std::fs::File::open(p).ok());
    std::thread::Builder::new()
        .name("tombstone-checkpointer".into())
        .spawn(move || {
            crate::priority::lower_current_thread();
            let mut every = CHECKPOINT_EVERY;
            let mut failing = false;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
                // Passive: never waits for readers or writers, and cheap when there is
                // nothing new. Under `passes`, so a truncating checkpoint (erasure) waits for
                // this pass instead of failing on SQLite's checkpoint lock.
                let _pass = passes.lock();
                match checkpoint_pass(&conn) {
                    Ok(wal) => {
                        if wal.frames >= WAL_RESTART_FRAMES {
                            // In the normal class while it lasts: the writer's next pass,
                            // which every write waits for, gets what this leaves.
                            crate::priority::urgently(|| catch_up(&conn, file.as_ref(), wal));
                            gate.restart_wal.store(true, Ordering::Relaxed);
                        }
                        if failing {
                            tracing::info!("WAL checkpoints work again");
                        }
                        (every, failing) = (CHECKPOINT_EVERY, false);
                    }
                    // A full disk fails every pass until space returns (the database file
                    // cannot grow): say so once, then retry ever less often, up to every
                    // CHECKPOINT_BACKOFF_MAX; the WAL keeps every commit meanwhile.
                    Err(e) => {
                        if !failing {
                            let e = StoreError::from(e);
                            tracing::warn!(error = %e.cause_chain(), "WAL checkpoint failed; retrying with backoff");
                        }
                        (every, failing) = ((every * 2).min(CHECKPOINT_BACKOFF_MAX), true);
                    }
                }
            }
        })
        .map_err(|e| StoreError::Internal(format!("cannot start the checkpointer thread: {e}")))?;
    Ok(())
}

/// At most this many extra passes (each after syncing the database file) before the
/// checkpointer hands the WAL's rewind to the writer.
const CATCH_UP_PASSES: usize = 4;

/// A pass that copied no more frames than this leaves the writer about as many (those
/// appended while it ran): the checkpointer stops catching up.
const CATCH_UP_ENOUGH: i64 = 256;

/// The WAL after a passive checkpoint: its frames, and how many of them are copied into
/// the database file (both as of the pass's start).
#[derive(Debug, Clone, Copy)]
struct WalState {
    frames: i64,
    copied: i64,
}

fn checkpoint_pass(conn: &Connection) -> rusqlite::Result<WalState> {
    conn.query_row("pragma wal_checkpoint(passive)", [], |r| Ok(WalState { frames: r.get(1)?, copied: r.get(2)? }))
}

/// Syncs the pages the last pass copied and copies again what the writer appended
/// meanwhile, until a pass finds little new (see [`spawn_checkpointer`]). Best effort: a
/// failure leaves the rest to the writer's pass, which syncs as SQLite always does.
fn catch_up(conn: &Connection, file: Option<&std::fs::File>, wal: WalState) {
    let Some(file) = file else { return };
    let sync = || {
        file.sync_data()
            .inspect_err(|e| tracing::debug!(error = %e, "cannot sync the database file; the writer's checkpoint will"))
            .is_ok()
    };
    let mut copied = wal.copied;
    for _ in 0..CATCH_UP_PASSES {
        if !sync() {
            return;
        }
        let Ok(next) = checkpoint_pass(conn) else { return };
        let fresh = next.copied - std::mem::replace(&mut copied, next.copied);
        if fresh <= CATCH_UP_ENOUGH {
            break;
        }
    }
    sync();
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    background: mpsc::Sender<Job>,
    /// Dropped with the store, which stops the checkpointer.
    _checkpointer: mpsc::Sender<()>,
    /// Held by each checkpoint pass of this process.
    checkpoints: Arc<parking_lot::Mutex<()>>,
    gate: Arc<WriteGate>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    tables: RwLock<Arc<relations::Tables>>,
    schema: RwLock<Arc<Schema>>,
    changes: Arc<tokio::sync::Notify>,
    cache: Option<Arc<dyn crate::RecordCache>>,
    /// The newest outbox seq whose records the cache has been told about.
    feed: Arc<CacheFeed>,
    /// Idempotency keys claimed by requests running in this process.
    claims: Arc<idempotency::Claims>,
    /// Event-feed reads of the outbox so far (see [`SqliteStore::event_reads`]).
    event_reads: std::sync::atomic::AtomicU64,
    group_stats: Arc<group::Stats>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, applies the system migrations and
    /// starts the writer thread.
    ///
    /// # Errors
    /// The file cannot be created or opened, or is not a Tombstone database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn =
            Connection::open(path).map_err(|e| StoreError::Internal(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(schema::WRITER_PRAGMAS)
            .map_err(|e| StoreError::Internal(format!("cannot use {} as a database: {e}", path.display())))?;
        schema::migrate_system(&mut conn)?;

        let open = || -> Result<Connection, StoreError> {
            let conn = Connection::open(path)
                .map_err(|e| StoreError::Internal(format!("cannot open {}: {e}", path.display())))?;
            conn.execute_batch(schema::WRITER_PRAGMAS)?;
            Ok(conn)
        };
        let writer = spawn_writer(Lane::Live, conn)?;
        let background = spawn_writer(Lane::Background, open()?)?;
        let (checkpointer, stop) = mpsc::channel();
        let checkpoints = Arc::new(parking_lot::Mutex::new(()));
        let gate = Arc::new(WriteGate::default());
        spawn_checkpointer(open()?, stop, checkpoints.clone(), gate.clone())?;

        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI)
            .with_init(|c| c.execute_batch(schema::READER_PRAGMAS));
        let size = std::thread::available_parallelism().map_or(4, |n| n.get() * 2).max(4);
        let readers = r2d2::Pool::builder()
            .max_size(u32::try_from(size).unwrap_or(8))
            .min_idle(Some(1))
            .build(manager)
            .map_err(|e| StoreError::Internal(format!("cannot open readers on {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            background,
            _checkpointer: checkpointer,
            checkpoints,
            gate,
            readers,
            tables: RwLock::new(Arc::new(HashMap::new())),
            schema: RwLock::new(Arc::new(Schema::default())),
            changes: Arc::new(tokio::sync::Notify::new()),
            cache: None,
            feed: Arc::default(),
            claims: Arc::default(),
            event_reads: std::sync::atomic::AtomicU64::new(0),
            group_stats: Arc::default(),
        })
    }

    /// Opens an existing database for reading only: no migration, no writer. Used by
    /// commands that may run beside a serving server (`audit verify`).
    ///
    /// # Errors
    /// There is no database at `path`, or it cannot be opened.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Internal(format!("no database at {}", path.display())));
        }
        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI)
            .with_init(|c| c.execute_batch(schema::READER_PRAGMAS));
        let readers = r2d2::Pool::builder()
            .max_size(2)
            .build(manager)
            .map_err(|e| StoreError::Internal(format!("cannot open {}: {e}", path.display())))?;
        // Writers whose threads never existed: every write fails, none can happen.
        let (writer, _) = mpsc::channel::<Job>();
        let (background, _) = mpsc::channel::<Job>();
        let (checkpointer, _) = mpsc::channel();
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            background,
            _checkpointer: checkpointer,
            checkpoints: Arc::default(),
            gate: Arc::default(),
            readers,
            tables: RwLock::new(Arc::new(HashMap::new())),
            schema: RwLock::new(Arc::new(Schema::default())),
            changes: Arc::new(tokio::sync::Notify::new()),
            cache: None,
            feed: Arc::default(),
            claims: Arc::default(),
            event_reads: std::sync::atomic::AtomicU64::new(0),
            group_stats: Arc::default(),
        })
    }

    /// Puts a read cache in front of single-record reads. Every write through this store
    /// invalidates what it changed before answering; changes made by other processes are
    /// picked up by `Store::sync_cache`.
    ///
    /// # Errors
    /// The outbox position cannot be read.
    pub fn with_cache(mut self, cache: Arc<dyn crate::RecordCache>) -> Result<Self, StoreError> {
        let conn = self.readers.get().map_err(|e| StoreError::Internal(format!("no reader connection: {e}")))?;
        let newest = changes::last_event_seq(&conn)?;
        self.feed.seen.store(newest, Ordering::SeqCst);
        self.cache = Some(cache);
        Ok(self)
    }

    /// Invalidates the records that changed since the last call (other processes write
    /// too: `tombstone purge`, other replicas). Returns how many changes were seen.
    async fn sync_cache_now(&self) -> Result<u64, StoreError> {
        let Some(cache) = self.cache.clone() else { return Ok(0) };
        let feed = self.feed.clone();
        self.read(move |conn| feed.follow(conn, cache.as_ref())).await
    }

    /// How many times the event feed (`list_events`, `list_all_events`) read the outbox:
    /// lets a test see that open streams share one follower instead of each polling.
    #[must_use]
    pub fn event_reads(&self) -> u64 {
        self.event_reads.load(Ordering::Relaxed)
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a writer's transaction needs of this store.
    fn context(&self) -> group::Context {
        group::Context {
            gate: self.gate.clone(),
            cache: self.cache.clone(),
            feed: self.feed.clone(),
            events: self.changes.clone(),
            stats: self.group_stats.clone(),
        }
    }

    /// How many transactions of live writes committed, carrying how many writes (group
    /// commit: see the `group` module).
    #[must_use]
    pub fn group_stats(&self) -> crate::GroupStats {
        self.group_stats.get()
    }

    /// Runs `f` on the live writer, inside a transaction it may share with the writes
    /// queued beside it, each in its own savepoint (see the `group` module).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let ctx = self.context();
        let (reply, answer) = oneshot::channel();
        let write = Box::new(group::Pending { f: Some(f), value: None, reply });
        self.writer
            .send(Job::Grouped(ctx, write))
            .map_err(|_| StoreError::Internal("the store is read-only or its writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Internal("a write was abandoned (the writer panicked)".into()))?
    }

    /// Runs `f` on the background writer, inside one transaction: bulk work that must not
    /// take CPU from requests.
    async fn write_background<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let ctx = self.context();
        self.run_job(Lane::Background, move |conn| transaction(conn, &ctx, f)).await
    }

    /// Runs `job` on a writer's thread and waits for its answer.
    async fn run_job<T, F>(&self, lane: Lane, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job::Alone(Box::new(move |conn| {
            let _ = reply.send(job(conn));
        }));
        let queue = match lane {
            Lane::Live => &self.writer,
            Lane::Background => &self.background,
        };
        queue.send(job).map_err(|_| StoreError::Internal("the store is read-only or its writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Internal("a write was abandoned (the writer panicked)".into()))?
    }

    /// Runs `f` on a pooled read-only connection.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(|e| StoreError::Internal(format!("no reader connection: {e}")))?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("a read task failed: {e}")))?
    }

    /// The schema and statements the store was migrated to.
    fn catalog(&self) -> Result<(Arc<Schema>, Arc<relations::Tables>), StoreError> {
        let schema = self.schema.read().map_err(|_| StoreError::Internal("schema poisoned".into()))?.clone();
        let tables = self.tables.read().map_err(|_| StoreError::Internal("table cache poisoned".into()))?.clone();
        Ok((schema, tables))
    }

    fn table(&self, collection: &Collection) -> Result<Arc<TableSql>, StoreError> {
        self.tables
            .read()
            .map_err(|_| StoreError::Internal("table cache poisoned".into()))?
            .get(&collection.name)
            .cloned()
            .ok_or_else(|| StoreError::Internal(format!("collection {} has not been migrated", collection.name)))
    }
}

fn read_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, Option<String>, String, String, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
}

fn to_stored_key(
    (id, tenant, name, scopes, secret_hash, created_at): (String, String, Option<String>, String, String, i64),
) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        scopes: parse_scopes(&scopes).map_err(|e| StoreError::Internal(format!("key {id} has bad scopes: {e}")))?,
        id,
        tenant,
        name,
        secret_hash,
        created_at: Timestamp::from_micros(created_at),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self, schema: &Schema) -> Result<(), StoreError> {
        let collections: Vec<Arc<Collection>> = schema.collections.values().cloned().collect();
        let for_tx = collections.clone();
        self.write(move |tx| {
            for c in &for_tx {
                schema::migrate_collection(tx, c)?;
            }
            Ok(())
        })
        .await?;
        let tables: relations::Tables =
            collections.iter().map(|c| (c.name.clone(), Arc::new(TableSql::new(c)))).collect();
        *self.tables.write().map_err(|_| StoreError::Internal("table cache poisoned".into()))? = Arc::new(tables);
        *self.schema.write().map_err(|_| StoreError::Internal("schema poisoned".into()))? = Arc::new(schema.clone());
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A read on the reader pool that touches the file (`select 1` would not): readiness
        // probes run every few seconds on every replica, and must neither queue behind
        // the writer nor take it from requests.
        self.read(|conn| {
            Ok(conn.query_row("select count(*) from sqlite_schema", [], |r| r.get::<_, i64>(0)).map(|_| ())?)
        })
        .await
    }

    async fn sync_cache(&self) -> Result<u64, StoreError> {
        self.sync_cache_now().await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("select value from meta where key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |tx| {
            tx.execute(
                "insert into meta (key, value) values (?1, ?2) on conflict (key) do update set value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn create_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        record: Record,
        idempotency: Option<(IdempotencyKey, StoredResponse)>,
    ) -> Result<Record, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, claims) = (collection.clone(), actor.clone(), self.claims.clone());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, Some(&claims));
            now(rules::records::create(&mut tx, &actor, &collection, record, idempotency.as_ref()))
        })
        .await
    }

    async fn get_shared(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        id: &str,
    ) -> Result<Option<Arc<crate::SharedRecord>>, StoreError> {
        let sql = self.table(collection)?;
        let key = (tenant.to_string(), collection.name.clone(), id.to_string());
        let token = match &self.cache {
            Some(cache) => match cache.lookup(&key) {
                Some(hit) => return Ok(hit),
                None => Some(cache.token(&key)),
            },
            None => None,
        };
        let collection = collection.clone();
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let found = self.read(move |conn| records::get(conn, &sql, &collection, &tenant, &id)).await?;
        let found = found.map(|r| Arc::new(crate::SharedRecord::new(r)));
        if let (Some(cache), Some(token)) = (&self.cache, token) {
            cache.fill(key, token, found.clone());
        }
        Ok(found)
    }

    async fn list_records(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        query: &ListQuery,
    ) -> Result<Page, StoreError> {
        let sql = self.table(collection)?;
        let collection = collection.clone();
        let tenant = tenant.to_string();
        let query = query.clone();
        self.read(move |conn| records::list(conn, &sql, &collection, &tenant, &query)).await
    }

    async fn patch_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        patch: Patch,
        at: Timestamp,
    ) -> Result<Record, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::records::patch(&mut tx, &actor, &collection, &id, if_match.as_ref(), &patch, at))
        })
        .await
    }

    async fn delete_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: DeleteRequest,
        at: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        let (schema, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::records::delete(&mut tx, &schema, &collection, &actor, &id, request, at))
        })
        .await
    }

    async fn restore_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        reason: Option<String>,
        at: Timestamp,
    ) -> Result<RestoreOutcome, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::records::restore(&mut tx, &actor, &collection, &id, if_match.as_ref(), reason.as_deref(), at))
        })
        .await
    }

    async fn archive_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: ArchiveRequest,
        if_match: Option<IfMatch>,
        at: Timestamp,
    ) -> Result<Record, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::records::archive(&mut tx, &actor, &collection, &id, &request, if_match.as_ref(), at))
        })
        .await
    }

    async fn active_ids(&self, collection: &Arc<Collection>) -> Result<Vec<(String, String)>, StoreError> {
        let sql = self.table(collection)?;
        self.read(move |conn| {
            let q = format!("select tenant, id from {} where deleted_at is null", sql.table);
            Ok(conn.prepare(&q)?.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn claim_idempotency(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<IdempotencyClaim, StoreError> {
        let (key, fingerprint, claims) = (key.clone(), fingerprint.to_string(), self.claims.clone());
        self.write(move |tx| claims.claim(tx, &key, &fingerprint, now)).await
    }

    async fn complete_idempotency(&self, key: &IdempotencyKey, response: StoredResponse) -> Result<(), StoreError> {
        let (key, claims) = (key.clone(), self.claims.clone());
        self.write(move |tx| claims.complete(tx, &key, &response)).await
    }

    async fn release_idempotency(&self, key: &IdempotencyKey) -> Result<(), StoreError> {
        self.claims.release(key);
        Ok(())
    }

    async fn expire_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.write_background(move |tx| {
            let n = tx.execute("delete from idempotency where created_at < ?1", [before.as_micros()])?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl DeletionStore for SqliteStore {
    async fn plan_deletion(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<DeletionPlan>, StoreError> {
        let (schema, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        // On a reader: a dry run writes nothing, so it never waits for the writer.
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let mut tx = SqliteTx::new(&tx, &tables, None);
            now(rules::records::dry_run(&mut tx, &schema, &collection, &actor, &id, at))
        })
        .await
    }

    async fn get_deletion(
        &self,
        tenant: &str,
        id: &str,
        records: &RecordsPage,
    ) -> Result<Option<DeletionOp>, StoreError> {
        let (schema, _) = self.catalog()?;
        let (tenant, id, page) = (tenant.to_string(), id.to_string(), records.clone());
        self.read(move |conn| relations::get_operation(conn, &schema, &tenant, &id, &page)).await
    }

    async fn restore_deletion(&self, actor: &Actor, id: &str, at: Timestamp) -> Result<Vec<Record>, StoreError> {
        let (schema, tables) = self.catalog()?;
        let (actor, id) = (actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::deletions::restore_operation(&mut tx, &schema, &actor, &id, at))
        })
        .await
    }

    async fn run_eventual(&self, batch: u32, at: Timestamp) -> Result<u64, StoreError> {
        // Idle passes only read: a write would wake every waiter, the worker included.
        let queued: bool = self
            .read(|conn| Ok(conn.query_row("select exists (select 1 from deletion_queue)", [], |r| r.get(0))?))
            .await?;
        if !queued {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let (schema, tables) = self.catalog()?;
            let (deleted, more) = self
                .write_background(move |tx| {
                    let mut tx = SqliteTx::new(tx, &tables, None);
                    now(rules::deletions::eventual_step(&mut tx, &schema, batch, at))
                })
                .await?;
            total += deleted;
            if !more {
                return Ok(total);
            }
        }
    }

    async fn list_trash(
        &self,
        tenant: &str,
        collections: &[Arc<Collection>],
        query: &TrashQuery,
        now: Timestamp,
    ) -> Result<Vec<Record>, StoreError> {
        let tables =
            collections.iter().map(|c| Ok((c.clone(), self.table(c)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let (tenant, query) = (tenant.to_string(), query.clone());
        self.read(move |conn| {
            let mut all = Vec::new();
            for (c, sql) in &tables {
                all.extend(retention::trash(conn, sql, c, &tenant, &query, now)?);
            }
            Ok(crate::merge_trash(all, query.limit))
        })
        .await
    }
}

#[async_trait]
impl RetentionStore for SqliteStore {
    async fn place_hold(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        case: Option<String>,
        reason: Option<String>,
        at: Timestamp,
    ) -> Result<Hold, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::retention::place_hold(&mut tx, &actor, &collection, &id, case, reason, at))
        })
        .await
    }

    async fn release_hold(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        hold_id: &str,
        reason: Option<String>,
        at: Timestamp,
    ) -> Result<Record, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id, hold_id) = (collection.clone(), actor.clone(), id.to_string(), hold_id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::retention::release_hold(&mut tx, &actor, &collection, &id, &hold_id, reason.as_deref(), at))
        })
        .await
    }

    async fn active_holds(
        &self,
        tenant: &str,
        collection: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<Hold>>, StoreError> {
        let (tenant, collection, ids) = (tenant.to_string(), collection.to_string(), ids.to_vec());
        self.read(move |conn| retention::active_holds(conn, &tenant, &collection, &ids)).await
    }

    async fn purge_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        reason: Option<String>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::retention::purge_record(&mut tx, &actor, &collection, &id, reason.as_deref(), at))
        })
        .await
    }

    async fn purge_batch(
        &self,
        collection: &Arc<Collection>,
        now: Timestamp,
        limit: u32,
        run_id: &str,
    ) -> Result<PurgeBatch, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, run_id) = (collection.clone(), run_id.to_string());
        let ctx = self.context();
        // Up to `limit` rows, in one transaction unless live writes arrive meanwhile: then
        // in several, each committed early to let them in.
        self.run_job(Lane::Background, move |conn| {
            let mut batch = PurgeBatch { purged: 0, paused: false };
            loop {
                let left = limit.saturating_sub(u32::try_from(batch.purged).unwrap_or(u32::MAX));
                let (part, yielded) = transaction(conn, &ctx, |tx| {
                    retention::purge_batch(tx, &tables, &collection, now, left, &run_id, &|| ctx.gate.contended())
                })?;
                batch.purged += part.purged;
                batch.paused = part.paused;
                if !yielded || batch.purged >= u64::from(limit) {
                    return Ok(batch);
                }
            }
        })
        .await
    }

    async fn archive_batch(
        &self,
        collection: &Arc<Collection>,
        cutoff: Timestamp,
        at: Timestamp,
        limit: u32,
        run_id: &str,
    ) -> Result<u64, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, run_id) = (collection.clone(), run_id.to_string());
        // Bulk work: on the background writer, like purge batches.
        self.write_background(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::retention::archive_stale(&mut tx, &collection, cutoff, limit, &run_id, at))
        })
        .await
    }

    async fn purge_due(
        &self,
        tenant: Option<&str>,
        collections: &[Arc<Collection>],
        now: Timestamp,
        horizon: Timestamp,
    ) -> Result<Vec<PurgeDue>, StoreError> {
        let tables =
            collections.iter().map(|c| Ok((c.clone(), self.table(c)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let tenant = tenant.map(str::to_string);
        self.read(move |conn| {
            tables.iter().map(|(c, sql)| retention::purge_due(conn, sql, c, tenant.as_deref(), now, horizon)).collect()
        })
        .await
    }

    async fn collection_counts(
        &self,
        tenant: &str,
        collections: &[Arc<Collection>],
        horizon: Timestamp,
    ) -> Result<Vec<CollectionCounts>, StoreError> {
        let tables =
            collections.iter().map(|c| Ok((c.clone(), self.table(c)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let tenant = tenant.to_string();
        self.read(move |conn| {
            tables.iter().map(|(c, sql)| retention::collection_counts(conn, sql, c, &tenant, horizon)).collect()
        })
        .await
    }

    async fn set_purge_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.write(move |tx| retention::set_paused(tx, paused)).await
    }

    async fn purge_paused(&self) -> Result<bool, StoreError> {
        self.read(retention::is_paused).await
    }

    async fn erase_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        reason: Option<String>,
        at: Timestamp,
    ) -> Result<Erasure, StoreError> {
        let (schema, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        let mut erasure = self
            .write(move |tx| {
                let mut tx = SqliteTx::new(tx, &tables, None);
                now(rules::retention::erase(&mut tx, &schema, &collection, &actor, &id, reason.as_deref(), at))
            })
            .await?;
        // The erasure is committed: what follows is its durable after-commit work, which the
        // receipt shows as pending until done. Old page images in the WAL may still hold the
        // values; copying the pages back into the database file (where secure_delete zeroed
        // the freed space) and truncating it is tried at once, waiting only a moment for
        // readers on an older snapshot — a failure here is not the erasure's: the job stays
        // and the erasure worker finishes it.
        match self.finish_erasure_wal(ERASE_WAL_WAIT).await {
            Ok(n) if n > 0 => erasure.pending.retain(|s| *s != ErasureStep::Wal),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the WAL could not be truncated after an erasure; retried by the worker")
            }
        }
        Ok(erasure)
    }

    async fn is_erased(&self, tenant: &str, collection: &str, id: &str) -> Result<bool, StoreError> {
        let (tenant, collection, id) = (tenant.to_string(), collection.to_string(), id.to_string());
        self.read(move |conn| retention::is_erased(conn, &tenant, &collection, &id)).await
    }

    async fn erasure_receipt(&self, tenant: &str, collection: &str, id: &str) -> Result<Option<Erasure>, StoreError> {
        let (tenant, collection, id) = (tenant.to_string(), collection.to_string(), id.to_string());
        self.read(move |conn| retention::erasure_receipt(conn, &tenant, &collection, &id)).await
    }

    async fn finish_erasure_wal(&self, wait: std::time::Duration) -> Result<u64, StoreError> {
        // Idle passes only read.
        let pending: bool = self
            .read(|conn| {
                Ok(conn.query_row("select exists (select 1 from erasure_jobs where step = 'wal')", [], |r| r.get(0))?)
            })
            .await?;
        if !pending {
            return Ok(0);
        }
        let (gate, checkpoints) = (self.gate.clone(), self.checkpoints.clone());
        self.run_job(Lane::Live, move |conn| {
            // During the live writer's turn: no writer of this process commits between the
            // checkpoint and the removal of the jobs it covers. After the checkpointer's
            // current pass, which would otherwise make this one fail at once.
            let _turn = gate.enter_live();
            let _pass = checkpoints.lock();
            conn.busy_timeout(wait)?;
            let outcome = conn.query_row("pragma wal_checkpoint(truncate)", [], |r| r.get::<_, i64>(0));
            conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
            match outcome {
                // Every frame is in the database file and the WAL is empty.
                Ok(0) => {}
                // A reader still uses an older snapshot: next time.
                Ok(_) => return Ok(0),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                    return Ok(0);
                }
                Err(e) => return Err(e.into()),
            }
            let done = conn.execute("delete from erasure_jobs where step = 'wal'", [])?;
            Ok(done as u64)
        })
        .await
    }

    async fn pending_erasure_searches(&self) -> Result<Vec<i64>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("select event_seq from erasure_jobs where step = 'search' order by event_seq")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn finish_erasure_searches(&self, through: i64) -> Result<u64, StoreError> {
        self.write_background(move |tx| {
            let n = tx
                .prepare_cached("delete from erasure_jobs where step = 'search' and event_seq <= ?1")?
                .execute([through])?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn list_audit(&self, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let (tenant, query) = (tenant.to_string(), query.clone());
        self.read(move |conn| changes::list_audit(conn, &tenant, &query)).await
    }

    async fn verify_audit(&self) -> Result<Result<u64, ChainError>, StoreError> {
        self.read(|conn| {
            let mut verifier = ChainVerifier::default();
            let mut failure = None;
            let head = changes::walk_audit(conn, |entry| match verifier.push(entry) {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            })?;
            if let Some(e) = failure {
                return Ok(Err(e));
            }
            Ok(verifier.finish(head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()))))
        })
        .await
    }

    async fn audit_check(&self) -> Result<Option<AuditCheck>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(crate::AUDIT_CHECK_SQL)?
                .query_row([], |r| {
                    Ok(crate::audit_check_from(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
                .optional()?)
        })
        .await
    }

    async fn save_audit_check(
        &self,
        checked_at: Timestamp,
        duration_ms: u64,
        outcome: &Result<u64, ChainError>,
    ) -> Result<(), StoreError> {
        let (entries, broken, problem) = crate::audit_check_params(outcome);
        let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        self.write(move |tx| {
            tx.prepare_cached(crate::SAVE_AUDIT_CHECK_SQL)?.execute(params![
                checked_at.as_micros(),
                duration,
                entries,
                broken,
                problem
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.event_reads.fetch_add(1, Ordering::Relaxed);
        let (tenant, query) = (tenant.to_string(), query.clone());
        self.read(move |conn| changes::list_events(conn, &tenant, &query)).await
    }

    async fn list_all_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.event_reads.fetch_add(1, Ordering::Relaxed);
        let query = query.clone();
        self.read(move |conn| changes::list_all_events(conn, &query)).await
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.read(changes::last_event_seq).await
    }

    fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changes.clone()
    }

    async fn changes_since(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, crate::cache::CacheKey, String)>, StoreError> {
        self.read(move |conn| changes::changed_since(conn, after, limit)).await
    }

    async fn sync_webhook_endpoints(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
    ) -> Result<Vec<EndpointState>, StoreError> {
        let endpoints = endpoints.to_vec();
        self.write(move |tx| webhooks::sync(tx, &endpoints, now)).await
    }

    async fn webhook_endpoints(&self) -> Result<Vec<EndpointState>, StoreError> {
        self.read(webhooks::endpoints).await
    }

    async fn enable_webhook_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |tx| {
            Ok(tx.execute(
                "update webhook_endpoints set disabled_at = null, disabled_reason = null where id = ?1",
                [id],
            )? > 0)
        })
        .await
    }

    async fn fan_out_webhooks(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
        batch: u32,
    ) -> Result<u64, StoreError> {
        // Idle passes only read: a write would wake every waiter, the relay included.
        let ids: Vec<String> = endpoints.iter().map(|e| e.id.clone()).collect();
        if !self.read(move |conn| webhooks::any_behind(conn, &ids)).await? {
            return Ok(0);
        }
        let endpoints = endpoints.to_vec();
        self.write_background(move |tx| webhooks::fan_out(tx, &endpoints, now, batch)).await
    }

    async fn due_deliveries(&self, now: Timestamp, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
        self.read(move |conn| webhooks::due(conn, now, limit)).await
    }

    async fn record_attempt(
        &self,
        delivery_id: &str,
        at: Timestamp,
        outcome: AttemptOutcome,
    ) -> Result<(), StoreError> {
        let id = delivery_id.to_string();
        self.write(move |tx| webhooks::record_attempt(tx, &id, at, &outcome)).await
    }

    async fn list_deliveries(&self, tenant: &str, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let (tenant, query) = (tenant.to_string(), query.clone());
        self.read(move |conn| webhooks::list(conn, &tenant, &query)).await
    }

    async fn redeliver(&self, tenant: &str, id: &str, now: Timestamp) -> Result<Redelivery, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.write(move |tx| webhooks::redeliver(tx, &tenant, &id, now)).await
    }

    async fn webhook_backlog(&self) -> Result<u64, StoreError> {
        self.read(webhooks::backlog).await
    }

    async fn cleanup_outbox(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.write_background(move |tx| webhooks::cleanup_outbox(tx, before, limit)).await
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create_key(&self, key: StoredKey, actor: &Actor) -> Result<(), StoreError> {
        let (_, tables) = self.catalog()?;
        let actor = actor.clone();
        self.write(move |tx| now(rules::keys::create(&mut SqliteTx::new(tx, &tables, None), &key, &actor))).await
    }

    async fn find_key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let row = conn
                .prepare_cached("select id, tenant, name, scopes, secret_hash, created_at from api_keys where id = ?1")?
                .query_row([id], read_key)
                .optional()?;
            row.map(to_stored_key).transpose()
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached(
                    "select id, tenant, name, scopes, secret_hash, created_at from api_keys order by created_at, id",
                )?
                .query_map([], read_key)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_stored_key).collect()
        })
        .await
    }

    async fn revoke_key(&self, id: &str, actor: &Actor, at: Timestamp) -> Result<bool, StoreError> {
        let (_, tables) = self.catalog()?;
        let (id, actor) = (id.to_string(), actor.clone());
        self.write(move |tx| now(rules::keys::revoke(&mut SqliteTx::new(tx, &tables, None), &id, &actor, at))).await
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use std::path::Path;

    use rusqlite::Connection;

    use super::{WalState, catch_up, checkpoint_pass, schema};

    fn open(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(schema::WRITER_PRAGMAS).unwrap();
        conn.execute_batch("pragma wal_autocheckpoint = 0").unwrap();
        conn
    }

    fn append(conn: &Connection, rows: usize) {
        for _ in 0..rows {
            conn.execute("insert into t values (randomblob(3000))", []).unwrap();
        }
    }

    /// A WAL the checkpointer has passed over once, and 400 frames appended after its
    /// pass (what a writer that never pauses appends meanwhile): more than a pass may
    /// leave for the writer.
    fn lagging_wal() -> (tempfile::TempDir, Connection, Connection, WalState) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = open(&path);
        writer.execute_batch("create table t (x blob)").unwrap();
        append(&writer, 100);
        let checkpointer = open(&path);
        let first = checkpoint_pass(&checkpointer).unwrap();
        assert!(first.frames >= 100 && first.copied == first.frames, "{first:?}");
        append(&writer, 400);
        (dir, writer, checkpointer, first)
    }

    #[test]
    fn catching_up_copies_what_arrived_after_the_pass_so_the_next_write_rewinds_the_wal() {
        let (dir, writer, checkpointer, first) = lagging_wal();
        catch_up(&checkpointer, Some(&std::fs::File::open(dir.path().join("t.db")).unwrap()), first);
        // Everything is copied: the writer's next transaction starts the WAL over instead
        // of appending after ~500 frames.
        append(&writer, 1);
        let after = checkpoint_pass(&checkpointer).unwrap();
        assert!(after.frames < 10, "the WAL did not start over: {after:?}");
    }

    #[test]
    fn without_a_handle_on_the_file_catching_up_leaves_the_rest_to_the_writer() {
        let (_dir, writer, checkpointer, first) = lagging_wal();
        catch_up(&checkpointer, None, first);
        append(&writer, 1);
        let after = checkpoint_pass(&checkpointer).unwrap();
        assert!(after.frames > first.frames + 400, "{after:?}");
    }
}
