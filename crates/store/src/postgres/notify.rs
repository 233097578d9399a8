//! Cache invalidation across processes on PostgreSQL: `NOTIFY` sent inside each writing
//! transaction, and one `LISTEN` connection per store that has a memory cache.
//!
//! Why inside the transaction: PostgreSQL delivers a notification only if, and only when,
//! the transaction that sent it commits, and in commit order — so another replica hears of
//! exactly the changes that happened, right after they happened, with no second write that
//! could be lost between the commit and a "best effort" publish.
//!
//! A payload is at most [`MAX_PAYLOAD`] bytes (PostgreSQL refuses 8000 or more), so the
//! keys one transaction changed — a group commit carries many writes — are split over as
//! many notifications as needed. A key too long to fit alone is sent as "forget
//! everything", which is always safe.
//!
//! A lost `LISTEN` connection may have missed notifications: the listener reconnects,
//! `LISTEN`s again, and only then drops the whole cache, so no change committed while it
//! was deaf can be followed by a read of the old state from this cache.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::cache::{CacheKey, RecordCache};

/// The channel every store notifies and listens on.
pub(super) const CHANNEL: &str = "tombstone_cache";

/// The largest payload sent (PostgreSQL's limit is 8000 bytes, less a margin).
pub(super) const MAX_PAYLOAD: usize = 7900;

/// The payload that asks every listener to drop its whole cache.
const ALL: &str = "*";

/// The payloads announcing that `keys` changed, from the store `origin`: each is `origin`,
/// a newline, and a JSON array of `[tenant, collection, id]` triples (or [`ALL`]).
pub(super) fn payloads(origin: &str, keys: &[CacheKey]) -> Vec<String> {
    let mut keys: Vec<&CacheKey> = keys.iter().collect();
    keys.sort_unstable();
    keys.dedup();
    let head = origin.len() + 1;
    let mut out = Vec::new();
    let mut current = String::new();
    for key in keys {
        let one = serde_json::to_string(&[&key.0, &key.1, &key.2]).unwrap_or_default();
        if head + one.len() + 2 > MAX_PAYLOAD {
            // Cannot travel alone: everyone forgets everything instead.
            return vec![format!("{origin}\n{ALL}")];
        }
        if !current.is_empty() && head + current.len() + one.len() + 2 > MAX_PAYLOAD {
            out.push(format!("{origin}\n[{current}]"));
            current.clear();
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&one);
    }
    if !current.is_empty() {
        out.push(format!("{origin}\n[{current}]"));
    }
    out
}

/// What one notification asks of a cache.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    Keys(Vec<CacheKey>),
    All,
}

/// The sender and the change of a payload; a payload that does not parse is "forget
/// everything" (a newer version's format, say), which is always safe.
pub(super) fn parse(payload: &str) -> (&str, Change) {
    let Some((origin, body)) = payload.split_once('\n') else { return ("", Change::All) };
    if body == ALL {
        return (origin, Change::All);
    }
    match serde_json::from_str::<Vec<(String, String, String)>>(body) {
        Ok(keys) => (origin, Change::Keys(keys)),
        Err(_) => (origin, Change::All),
    }
}

/// The listening task of one store; stops when dropped.
#[derive(Debug)]
pub(super) struct Listener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the first `LISTEN` is in place (or failed), so that a write committed after
/// `with_cache` returns is heard; then listens in the background for as long as the
/// returned [`Listener`] lives.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    origin: Arc<str>,
    cache: &Arc<dyn RecordCache>,
) -> Listener {
    let (ready, started) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(config, tls, origin, Arc::downgrade(cache), ready));
    // A first connection that fails is retried in the background; the cache is dropped
    // once it succeeds, so nothing missed meanwhile is served.
    let _ = tokio::time::timeout(Duration::from_secs(10), started).await;
    Listener { task }
}

async fn run(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    origin: Arc<str>,
    cache: Weak<dyn RecordCache>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match listen_once(&config, &tls, &origin, &cache, &mut ready, first).await {
            Ok(()) => return, // the cache is gone: so is the store
            Err(e) => {
                tracing::warn!(error = %e, "the cache's LISTEN connection was lost; reconnecting");
                metrics::counter!("tombstone_cache_listen_reconnects_total").increment(1);
            }
        }
        first = false;
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        // Whatever was heard before, notifications may have been missed since.
        match cache.upgrade() {
            Some(cache) => cache.invalidate_all(),
            None => return,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: `LISTEN`, then invalidate on every notification until the
/// connection fails (`Err`, its cause) or the cache is dropped (`Ok`).
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    origin: &str,
    cache: &Weak<dyn RecordCache>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    first: bool,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(tls.clone()).await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection delivers notifications only while it is polled, which this task does
    // for as long as the connection lives; its end (an error, or the server gone) closes
    // the channel.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n)).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
                None => return,
            }
        }
    });
    let _stop = AbortOnDrop(driver);
    client.batch_execute(&format!("listen {CHANNEL}")).await.map_err(|e| e.to_string())?;
    if !first && let Some(cache) = cache.upgrade() {
        // Listening again: whatever committed while deaf is now forgotten.
        cache.invalidate_all();
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(Ok(n)) => {
                    let Some(cache) = cache.upgrade() else { return Ok(()) };
                    metrics::counter!("tombstone_cache_notifications_total").increment(1);
                    match parse(n.payload()) {
                        (from, _) if from == origin => {}
                        (_, Change::Keys(keys)) => {
                            for key in &keys {
                                cache.invalidate(key);
                            }
                        }
                        (_, Change::All) => cache.invalidate_all(),
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err("the connection closed".into()),
            },
            // A connection that silently died (a dropped network path) is found by its
            // next query failing or hanging, at most this often.
            _ = ping.tick() => {
                if cache.upgrade().is_none() {
                    return Ok(());
                }
                match tokio::time::timeout(PING_EVERY, client.simple_query("select 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("the connection stopped answering".into()),
                }
            }
        }
    }
}

/// How often an idle `LISTEN` connection checks that it is alive.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> CacheKey {
        ("tenant".into(), "products".into(), id.into())
    }

    #[test]
    fn keys_travel_split_under_the_payload_limit_and_come_back() {
        let keys: Vec<CacheKey> = (0..2000).map(|i| key(&format!("record-{i:05}"))).collect();
        let payloads = payloads("origin-1", &keys);
        assert!(payloads.len() > 1, "2000 keys do not fit one payload");
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
            let (origin, change) = parse(p);
            assert_eq!(origin, "origin-1");
            let Change::Keys(k) = change else { panic!("keys expected") };
            back.extend(k);
        }
        assert_eq!(back, keys);
    }

    #[test]
    fn duplicates_are_sent_once_and_an_oversized_key_forgets_everything() {
        let payloads = payloads("o", &[key("a"), key("a")]);
        assert_eq!(payloads, vec!["o\n[[\"tenant\",\"products\",\"a\"]]".to_string()]);
        let huge = key(&"x".repeat(MAX_PAYLOAD));
        let payloads = super::payloads("o", &[key("a"), huge]);
        assert_eq!(payloads.len(), 1);
        assert_eq!(parse(&payloads[0]), ("o", Change::All));
        assert_eq!(parse("garbage"), ("", Change::All));
        assert!(super::payloads("o", &[]).is_empty());
    }
}
