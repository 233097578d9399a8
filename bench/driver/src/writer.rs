//! rusqlite behind one dedicated writer thread. Async callers send a boxed
//! closure over a bounded tokio mpsc channel (async send = backpressure) and
//! await the result on a tokio oneshot. The thread owns the connection and
//! runs jobs strictly one at a time, so each closure is a whole transaction.

use std::path::Path;
use std::thread::JoinHandle;

use anyhow::{Result, anyhow};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// Cheap, cloneable handle used by async callers.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
}

/// Owns the writer thread; dropping every handle and calling `join` stops it.
pub struct Writer {
    handle: WriterHandle,
    thread: JoinHandle<()>,
}

impl Writer {
    pub fn spawn(path: &Path, queue: usize) -> Result<Self> {
        let mut conn = crate::db::open_rusqlite(path)?;
        let (tx, mut rx) = mpsc::channel::<Job>(queue);
        let thread = std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                job(&mut conn);
            }
        })?;
        Ok(Writer { handle: WriterHandle { tx }, thread })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Waits for queued jobs to finish and the thread to exit. Any handle
    /// clones must already be dropped.
    pub fn join(self) -> Result<()> {
        drop(self.handle);
        self.thread.join().map_err(|_| anyhow!("writer thread panicked"))
    }
}

impl WriterHandle {
    /// Runs `f` on the writer thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> R + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone away; nothing to do then.
            let _ = reply_tx.send(f(conn));
        });
        self.tx.send(job).await.map_err(|_| anyhow!("writer thread stopped"))?;
        reply_rx.await.map_err(|_| anyhow!("writer thread dropped the reply"))
    }
}
