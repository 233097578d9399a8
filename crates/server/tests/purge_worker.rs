//! The purge worker, driven deterministically: thousands of expired soft-deleted rows, a
//! manual clock, and a test [`Pacer`] that advances that clock instead of sleeping and
//! records every wait — so batch sizes, the rate cap, holds, the pause and crash safety are
//! checked exactly, with no real time passing.
//!
//! "Exactly once" is counted in the database itself: one `purge` audit entry and one
//! `record.purged` event per purged record, never more, and none for a record still there.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestApp, on_postgres};
use futures::FutureExt;
use serde_json::{Value, json};
use tombstone_domain::config::Collection;
use tombstone_domain::id::{new_deletion_id, new_record_id};
use tombstone_domain::lifecycle::{Actor, DeleteRequest};
use tombstone_domain::record::{FieldValue, Record, Values};
use tombstone_domain::time::{Clock, ManualClock, Timestamp};
use tombstone_server::purge::{BatchReport, Pacer, PassReport, PurgeWorker};
use tombstone_store::Store;

const SCHEMA: &str = r#"
[retention]
default = "1h"

[purge]
interval = "1h"
batch_size = 100
pause = "10ms"
max_rows_per_second = 500

[collections.notes.fields]
text = { type = "string" }

[collections.memos]
retention = "2h"

[collections.memos.fields]
text = { type = "string" }
"#;

const BATCH: u64 = 100;
const CAP: u64 = 500;
const PAUSE: Duration = Duration::from_millis(10);
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// Pacers

/// Advances the manual clock by each wait and records it.
struct ClockPacer {
    clock: Arc<ManualClock>,
    waits: Mutex<Vec<Duration>>,
}

impl ClockPacer {
    fn new(app: &TestApp) -> Self {
        Self { clock: app.clock.clone(), waits: Mutex::new(Vec::new()) }
    }

    fn waits(&self) -> Vec<Duration> {
        self.waits.lock().unwrap().clone()
    }
}

impl Pacer for ClockPacer {
    fn wait(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.waits.lock().unwrap().push(duration);
        self.clock.advance(duration);
        Box::pin(async {})
    }
}

/// Like [`ClockPacer`] for `allowed` waits; the next one never ends (and says so), so the
/// pass can be dropped between two batches as a crashing process would leave it.
struct StallingPacer {
    clock: Arc<ManualClock>,
    allowed: usize,
    calls: AtomicUsize,
    stalled: tokio::sync::Notify,
}

impl Pacer for StallingPacer {
    fn wait(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.allowed {
            self.clock.advance(duration);
            Box::pin(async {})
        } else {
            self.stalled.notify_one();
            Box::pin(std::future::pending())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

fn worker(app: &TestApp) -> PurgeWorker {
    PurgeWorker::new(
        app.store.clone() as Arc<dyn Store>,
        app.clock.clone(),
        app.config.schema.clone(),
        app.config.purge.clone(),
    )
}

fn collection(app: &TestApp, name: &str) -> Arc<Collection> {
    app.config.schema.collection(name).expect("collection").clone()
}

/// Creates `n` records and soft-deletes them through the store (one transaction each, as
/// the API would, with audit entries and events); returns their ids.
async fn load(app: &TestApp, name: &str, n: usize) -> Vec<String> {
    let c = collection(app, name);
    let actor = Actor { tenant: "t1".into(), key_id: "key_loader".into(), request_id: "req_load".into() };
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(250) {
        let batch: Vec<String> = (chunk * 250..n.min((chunk + 1) * 250)).map(|_| new_record_id()).collect();
        let creates = batch.iter().map(|id| {
            let now = app.clock.now();
            let mut values = Values::new();
            values.insert("text".into(), FieldValue::String(format!("{name} {id}")));
            let record = Record {
                tenant: "t1".into(),
                collection: name.into(),
                id: id.clone(),
                version: 1,
                created_at: now,
                updated_at: now,
                deletion: None,
                archive: None,
                legal_hold: false,
                values,
            };
            app.store.create_record(&actor, &c, record, None)
        });
        for r in futures::future::join_all(creates).await {
            r.expect("create");
        }
        let deletes = batch.iter().map(|id| {
            let request = DeleteRequest { if_match: None, reason: None, deletion_id: new_deletion_id() };
            app.store.delete_record(&actor, &c, id, request, app.clock.now())
        });
        for r in futures::future::join_all(deletes).await {
            r.expect("delete");
        }
        ids.extend(batch);
    }
    ids
}

/// Rows still present in a collection's table: id → purge_at (µs).
async fn present(app: &TestApp, name: &str) -> HashMap<String, i64> {
    app.raw_rows(&format!("select id, purge_at from \"rec_{name}\""))
        .await
        .into_iter()
        .map(|r| {
            let id = r[0].clone().expect("id");
            (id, r[1].as_deref().map_or(i64::MAX, |p| p.parse().expect("purge_at")))
        })
        .collect()
}

/// Purge audit entries per record id, with the instant of each.
async fn purge_audit(app: &TestApp, name: &str) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    let rows = app
        .raw_rows(&format!("select record_id, at from audit where action = 'purge' and collection = '{name}'"))
        .await;
    for row in rows {
        out.entry(row[0].clone().expect("record_id")).or_default().push(row[1].as_deref().unwrap().parse().unwrap());
    }
    out
}

/// `record.purged` events per record id (and whether any carried data).
async fn purged_events(app: &TestApp, name: &str) -> HashMap<String, (usize, bool)> {
    let mut out: HashMap<String, (usize, bool)> = HashMap::new();
    let rows = app
        .raw_rows(&format!(
            "select record_id, case when data is null then 0 else 1 end from outbox
             where type = 'record.purged' and collection = '{name}'"
        ))
        .await;
    for row in rows {
        let e = out.entry(row[0].clone().expect("record_id")).or_default();
        e.0 += 1;
        e.1 |= row[1].as_deref() == Some("1");
    }
    out
}

/// Every record of `ids` is either whole (row present, no purge entry, no purged event)
/// or fully purged (row gone, exactly one of each). Returns the purged ones.
async fn assert_all_or_nothing(app: &TestApp, name: &str, ids: &[String]) -> HashSet<String> {
    let rows = present(app, name).await;
    let audit = purge_audit(app, name).await;
    let events = purged_events(app, name).await;
    let mut purged = HashSet::new();
    for id in ids {
        let a = audit.get(id).map_or(0, Vec::len);
        let (e, with_data) = events.get(id).copied().unwrap_or((0, false));
        if rows.contains_key(id) {
            assert_eq!((a, e), (0, 0), "{id} is still there but has {a} purge entries and {e} purged events");
        } else {
            assert_eq!((a, e), (1, 1), "{id} is gone with {a} purge entries and {e} purged events (want 1 and 1)");
            assert!(!with_data, "a record.purged event carries no data");
            purged.insert(id.clone());
        }
    }
    // Nothing outside `ids` was purged in this collection.
    let known: HashSet<&String> = ids.iter().collect();
    assert!(audit.keys().all(|id| known.contains(id)), "purge entries for unknown records");
    purged
}

/// Rows per collection in a report.
fn rows_of(report: &PassReport, name: &str) -> u64 {
    report.batches.iter().filter(|b| b.collection == name).map(|b| b.rows).sum()
}

#[track_caller]
fn assert_batches_bounded(report: &PassReport) {
    for b in &report.batches {
        assert!(b.rows > 0 && b.rows <= BATCH, "batch of {} rows (batch_size {BATCH})", b.rows);
        assert!(b.waited >= PAUSE, "every batch is followed by at least the pause: {b:?}");
    }
    assert_eq!(report.purged, report.batches.iter().map(|b| b.rows).sum::<u64>());
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_pass_purges_expired_records_in_paced_batches_and_nothing_early_or_twice() {
    let app = TestApp::with_schema(SCHEMA).await;
    let early = load(&app, "notes", 2050).await;
    let memos = load(&app, "memos", 450).await;
    app.clock.advance(HOUR / 2);
    let late = load(&app, "notes", 300).await;
    let mut notes = early.clone();
    notes.extend(late.iter().cloned());
    // Holds on 20 expired records: skipped, whatever their age.
    let held: Vec<String> = early.iter().step_by(100).take(20).cloned().collect();
    let mut holds = Vec::new();
    for id in &held {
        let r = app.post(&format!("/v1/notes/{id}:hold"), &app.admin, &json!({"case": "C-1"})).await;
        r.assert_status(201);
        holds.push(r.json()["hold_id"].as_str().unwrap().to_string());
    }
    let snapshot = present(&app, "notes").await;
    // One of them is read (and cached) before the pass; the pass must take it out again.
    let cached = early.iter().find(|id| !held.contains(id)).unwrap().clone();
    app.get(&format!("/v1/notes/{cached}?include=deleted"), &app.admin).await.assert_status(200);

    // The early notes' window has passed; the late notes' and the memos' have not.
    app.clock.advance(HOUR / 2 + Duration::from_secs(60));
    let pass_start = app.clock.now();
    let pacer = ClockPacer::new(&app);
    let marks = Mutex::new(Vec::new());
    let clock = app.clock.clone();
    let progress = |b: &BatchReport| marks.lock().unwrap().push((clock.now(), b.clone()));
    let report = worker(&app).run_pass(&pacer, None, &progress).await;
    let pass_end = app.clock.now();

    assert!(!report.paused);
    assert_eq!(report.errors, 0);
    assert_eq!(report.purged, 2030, "every expired unheld note, nothing else");
    assert_eq!(rows_of(&report, "notes"), 2030);
    assert_eq!(rows_of(&report, "memos"), 0);
    assert_batches_bounded(&report);
    assert_eq!(report.batches.len(), 21, "20 full batches and one of 30");
    let marks = marks.into_inner().unwrap();
    assert_eq!(marks.iter().map(|m| m.1.clone()).collect::<Vec<_>>(), report.batches, "progress saw every batch");

    // The pacer waited after every full batch, exactly as reported; the final partial
    // batch ends the pass, and the next pass is an interval away.
    let waits = pacer.waits();
    let full: Vec<Duration> = report.batches.iter().filter(|b| b.rows == BATCH).map(|b| b.waited).collect();
    assert_eq!(waits, full);

    // The rate cap, two ways. (1) Over the pass: rows / (waits + processing time).
    let reported_waits: Duration = report.batches.iter().map(|b| b.waited).sum();
    let processing = micros(pass_end) - micros(pass_start) - waits.iter().sum::<Duration>().as_micros() as i64;
    let budget_ns = reported_waits.as_nanos() as u64 + u64::try_from(processing).unwrap() * 1000;
    assert!(
        report.purged * 1_000_000_000 <= CAP * budget_ns,
        "{} rows in {budget_ns} ns exceed {CAP} rows/s",
        report.purged
    );
    // (2) No window of one second holds more than the cap.
    for (i, (start, _)) in marks.iter().enumerate() {
        let window: u64 =
            marks[i..].iter().take_while(|(t, _)| micros(*t) < micros(*start) + 1_000_000).map(|(_, b)| b.rows).sum();
        assert!(window <= CAP, "{window} rows within one second from batch {i}");
    }
    // The clock really moved: a pass over 2030 rows at 500/s takes about four seconds.
    assert!(micros(pass_end) - micros(pass_start) >= 4_000_000 - 100);

    // Exactly once, and never before purge_at.
    let purged = assert_all_or_nothing(&app, "notes", &notes).await;
    assert_eq!(purged.len(), 2030);
    let audit = purge_audit(&app, "notes").await;
    for id in &purged {
        assert!(audit[id][0] >= snapshot[id], "{id} purged at {} before its purge_at {}", audit[id][0], snapshot[id]);
    }
    let expected: HashSet<String> = early.iter().filter(|id| !held.contains(id)).cloned().collect();
    assert_eq!(purged, expected);
    assert!(assert_all_or_nothing(&app, "memos", &memos).await.is_empty());
    app.get(&format!("/v1/notes/{cached}?include=deleted"), &app.admin).await.assert_problem(404, "not-found");
    // The purge is attributed to the worker, with a reason, per record and per run.
    let entry = app.raw_rows("select actor, reason, request_id from audit where action = 'purge' limit 1").await;
    let [actor, reason, request] = [0, 1, 2].map(|i| entry[0][i].clone().unwrap_or_default());
    assert!(actor.starts_with("system"), "{actor}");
    assert!(!reason.is_empty() && request.starts_with("purge_"), "{reason} {request}");

    // A second pass finds nothing to do.
    let again = worker(&app).run_pass(&ClockPacer::new(&app), None, &|_| {}).await;
    assert_eq!((again.purged, again.batches.len(), again.errors), (0, 0, 0));
    assert_eq!(assert_all_or_nothing(&app, "notes", &notes).await, purged);

    // Released holds are purged by the next pass.
    for (id, hold) in held.iter().zip(&holds) {
        app.post_empty(&format!("/v1/notes/{id}:release?hold_id={hold}"), &app.admin).await.assert_status(200);
    }
    let released = worker(&app).run_pass(&ClockPacer::new(&app), None, &|_| {}).await;
    assert_eq!(released.purged, 20);
    let purged = assert_all_or_nothing(&app, "notes", &notes).await;
    assert_eq!(purged, early.iter().cloned().collect::<HashSet<_>>());

    // Once every window has passed, everything goes; the memos pass is paced too.
    app.clock.advance(2 * HOUR);
    let pacer = ClockPacer::new(&app);
    let last = worker(&app).run_pass(&pacer, None, &|_| {}).await;
    assert_eq!((rows_of(&last, "notes"), rows_of(&last, "memos")), (300, 450));
    assert_batches_bounded(&last);
    assert_eq!(assert_all_or_nothing(&app, "notes", &notes).await.len(), notes.len());
    assert_eq!(assert_all_or_nothing(&app, "memos", &memos).await.len(), memos.len());
    assert!(present(&app, "notes").await.is_empty() && present(&app, "memos").await.is_empty());
    assert!(app.store.verify_audit().await.unwrap().is_ok(), "the audit chain is intact");
}

fn micros(t: Timestamp) -> i64 {
    t.as_micros()
}

#[tokio::test]
async fn a_paused_purge_purges_nothing_until_resumed() {
    let app = TestApp::with_schema(SCHEMA).await;
    let ids = load(&app, "notes", 250).await;
    app.clock.advance(2 * HOUR);

    let r = app.post_empty("/v1/purge:pause", &app.admin).await;
    r.assert_status(200);
    assert_eq!(r.json()["paused"], true);
    let preview = app.get("/v1/purge/preview", &app.admin).await.json();
    assert_eq!(preview["paused"], true);
    assert_eq!(preview["collections"]["notes"]["count"], 250, "the preview still shows what is due");

    let pacer = ClockPacer::new(&app);
    let report = worker(&app).run_pass(&pacer, None, &|_| {}).await;
    assert!(report.paused, "the report says the pass was paused");
    assert_eq!((report.purged, report.batches.len()), (0, 0));
    assert!(pacer.waits().is_empty());
    assert!(assert_all_or_nothing(&app, "notes", &ids).await.is_empty());
    // Only one collection, by name: still paused.
    assert!(worker(&app).run_pass(&pacer, Some("notes"), &|_| {}).await.paused);

    // The pause lives in the database: another process (or a restarted one) obeys it.
    let other = app.another_store().await;
    assert!(other.purge_paused().await.unwrap());
    let other_worker =
        PurgeWorker::new(other.clone(), app.clock.clone(), app.config.schema.clone(), app.config.purge.clone());
    let report = other_worker.run_pass(&pacer, None, &|_| {}).await;
    assert!(report.paused && report.purged == 0, "{report:?}");

    let r = app.post_empty("/v1/purge:resume", &app.admin).await;
    r.assert_status(200);
    assert_eq!(r.json()["paused"], false);
    assert_eq!(app.get("/v1/purge/preview", &app.admin).await.json()["paused"], false);
    let report = worker(&app).run_pass(&ClockPacer::new(&app), None, &|_| {}).await;
    assert!(!report.paused);
    assert_eq!(report.purged, 250);
    assert_eq!(assert_all_or_nothing(&app, "notes", &ids).await.len(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_during_the_pass_stops_it_at_a_batch_boundary() {
    let app = TestApp::with_schema(SCHEMA).await;
    let ids = load(&app, "notes", 1000).await;
    app.clock.advance(2 * HOUR);
    // Another replica pauses purge while this one is in the middle of its pass.
    let replica = app.another_store().await;
    let seen = AtomicUsize::new(0);
    // The progress callback is synchronous: it waits for the pause on a worker thread of
    // its own, so the runtime keeps driving the database connections meanwhile.
    let progress = |_: &BatchReport| {
        if seen.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(replica.set_purge_paused(true)).expect("pause");
            });
        }
    };
    let report = worker(&app).run_pass(&ClockPacer::new(&app), None, &progress).await;
    assert!(report.paused, "{report:?}");
    assert_eq!(report.purged, 300, "three batches, then the pause");
    assert_eq!(report.batches.len(), 3);
    let purged = assert_all_or_nothing(&app, "notes", &ids).await;
    assert_eq!(purged.len(), 300);

    replica.set_purge_paused(false).await.unwrap();
    let rest = worker(&app).run_pass(&ClockPacer::new(&app), None, &|_| {}).await;
    assert_eq!(rest.purged, 700);
    assert_eq!(assert_all_or_nothing(&app, "notes", &ids).await.len(), 1000, "each exactly once");
}

#[tokio::test]
async fn a_pass_dropped_mid_flight_leaves_every_record_whole_and_the_next_pass_finishes() {
    let app = TestApp::with_schema(SCHEMA).await;
    let ids = load(&app, "notes", 650).await;
    app.clock.advance(2 * HOUR);
    let w = worker(&app);

    // Dropped while its first batch is with the database: the batch's transaction either
    // commits whole or not at all. On SQLite it was already handed to the writer thread,
    // which finishes it; on PostgreSQL the transaction lives in the dropped future, and
    // dropping it rolls the batch back unless its commit had already been sent.
    let pacer = StallingPacer {
        clock: app.clock.clone(),
        allowed: 0,
        calls: AtomicUsize::new(0),
        stalled: tokio::sync::Notify::new(),
    };
    let pass = w.run_pass(&pacer, None, &|_| {});
    assert!(pass.now_or_never().is_none(), "the pass cannot finish in one poll");
    // Background work queued behind the batch (on the same writer): once it is done, so
    // is the batch. (A live write would not do: the batch would give way to it.)
    app.store.expire_idempotency(tombstone_domain::time::Timestamp::from_micros(0)).await.unwrap();
    let first = assert_all_or_nothing(&app, "notes", &ids).await.len() as u64;
    if on_postgres() {
        assert!(first == 0 || first == BATCH, "the batch in flight, whole or not at all: {first}");
    } else {
        assert_eq!(first, BATCH, "exactly the one batch in flight");
    }

    // Dropped between batches, after three more (a crash while pausing).
    let pacer = StallingPacer {
        clock: app.clock.clone(),
        allowed: 2,
        calls: AtomicUsize::new(0),
        stalled: tokio::sync::Notify::new(),
    };
    {
        let pass = w.run_pass(&pacer, None, &|_| {});
        tokio::select! {
            _ = pass => panic!("the pass cannot finish past a stalled pacer"),
            () = pacer.stalled.notified() => {}
        }
    }
    let purged = assert_all_or_nothing(&app, "notes", &ids).await;
    assert_eq!(purged.len() as u64, first + 3 * BATCH);

    // The next pass finishes the rest; nothing is purged twice.
    let rest = w.run_pass(&ClockPacer::new(&app), None, &|_| {}).await;
    assert_eq!(rest.purged, 650 - first - 3 * BATCH);
    assert_eq!(assert_all_or_nothing(&app, "notes", &ids).await.len(), 650);
    assert!(app.store.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn a_hold_placed_after_the_window_still_prevents_the_purge() {
    let app = TestApp::with_schema(SCHEMA).await;
    let ids = load(&app, "notes", 3).await;
    app.clock.advance(2 * HOUR);
    // Litigation arrives late: the window has passed, the record is not purged yet.
    let r = app.post(&format!("/v1/notes/{}:hold", ids[0]), &app.admin, &json!({"case": "LATE"})).await;
    r.assert_status(201);
    let hold = r.json()["hold_id"].as_str().unwrap().to_string();
    app.post_empty(&format!("/v1/notes/{}:restore", ids[0]), &app.admin).await.assert_problem(404, "not-found");

    let preview = app.get("/v1/purge/preview", &app.admin).await.json();
    assert_eq!(preview["collections"]["notes"]["count"], 2);
    assert_eq!(preview["collections"]["notes"]["held"], 1);
    let report = worker(&app).run_pass(&ClockPacer::new(&app), None, &|_| {}).await;
    assert_eq!(report.purged, 2);
    let held = app.get(&format!("/v1/notes/{}?include=deleted", ids[0]), &app.admin).await;
    held.assert_status(200);
    assert_eq!(held.json()["legal_hold"], true);

    app.post_empty(&format!("/v1/notes/{}:release?hold_id={hold}", ids[0]), &app.admin).await.assert_status(200);
    assert_eq!(worker(&app).run_pass(&ClockPacer::new(&app), None, &|_| {}).await.purged, 1);
    app.get(&format!("/v1/notes/{}?include=deleted", ids[0]), &app.admin).await.assert_problem(404, "not-found");
}

#[tokio::test]
async fn the_preview_matches_what_a_pass_purges() {
    let app = TestApp::with_schema(SCHEMA).await;
    let due = load(&app, "notes", 180).await;
    let memos = load(&app, "memos", 40).await;
    // Another tenant's expired records are not this tenant's business.
    let other = app.key("t2", "admin").await;
    for i in 0..3 {
        let r = app.create("notes", &other, &json!({"text": format!("t2 {i}")})).await;
        app.delete(&format!("/v1/notes/{}", r["id"].as_str().unwrap()), &other).await.assert_status(204);
    }
    app.clock.advance(HOUR - Duration::from_secs(60));
    let soon = load(&app, "notes", 25).await;
    for id in &due[..5] {
        app.post(&format!("/v1/notes/{id}:hold"), &app.admin, &json!({})).await.assert_status(201);
    }
    app.clock.advance(Duration::from_secs(120));

    let purger = app.key("t1", "purge").await;
    let r = app.get("/v1/purge/preview", &purger).await;
    r.assert_status(200);
    let preview = r.json();
    ts(&preview["as_of"]);
    assert_eq!(preview["paused"], false);
    assert_eq!(preview["total"], 175);
    let notes = &preview["collections"]["notes"];
    assert_eq!(notes["count"], 175);
    assert_eq!(notes["held"], 5);
    assert_eq!(notes["due_next_7_days"], 25);
    let memo = &preview["collections"]["memos"];
    assert_eq!((memo["count"].clone(), memo["due_next_7_days"].clone()), (json!(0), json!(40)));
    let sample: Vec<&str> = notes["sample"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(sample.len(), 100, "a sample of up to 100 ids");
    assert_eq!(sample.iter().collect::<HashSet<_>>().len(), 100);
    let purgeable: HashSet<&str> = due[5..].iter().map(String::as_str).collect();
    assert!(sample.iter().all(|id| purgeable.contains(id)), "the sample holds only due, unheld records");
    let t2 = app.get("/v1/purge/preview", &other).await.json();
    assert_eq!(t2["total"], 3);

    let reader = app.key("t1", "read,read_deleted,delete").await;
    let denied = app.get("/v1/purge/preview", &reader).await;
    assert_eq!(denied.assert_problem(403, "forbidden")["missing_scope"], "purge");
    app.get("/v1/purge/preview?collection=nope", &purger).await.assert_problem(400, "invalid-parameter");

    // A pass over this tenant's and the other's due records.
    let report = worker(&app).run_pass(&ClockPacer::new(&app), None, &|_| {}).await;
    assert_eq!(report.purged, 175 + 3);
    let after = app.get("/v1/purge/preview", &purger).await.json();
    assert_eq!(after["total"], 0);
    assert_eq!(after["collections"]["notes"]["held"], 5);
    assert_eq!(after["collections"]["notes"]["sample"], json!([]));
    let mut all = due.clone();
    all.extend(soon);
    all.extend(t2_ids(&app).await);
    let purged = assert_all_or_nothing(&app, "notes", &all).await;
    assert_eq!(purged.len(), 178);
    assert!(assert_all_or_nothing(&app, "memos", &memos).await.is_empty());
}

/// Ids of tenant t2's notes that were purged (known only from the audit).
async fn t2_ids(app: &TestApp) -> Vec<String> {
    app.raw()
        .await
        .column("select record_id from audit where tenant = 't2' and collection = 'notes' and action = 'create'")
        .await
}

fn ts(value: &Value) -> Timestamp {
    Timestamp::parse_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"))).unwrap()
}

#[tokio::test]
async fn a_key_narrowed_to_one_collection_can_preview_it() {
    let app = TestApp::with_schema(SCHEMA).await;
    load(&app, "notes", 2).await;
    app.clock.advance(2 * HOUR);
    let narrow = app.key("t1", "purge:notes").await;
    let r = app.get("/v1/purge/preview?collection=notes", &narrow).await;
    r.assert_status(200);
    assert_eq!(r.json()["collections"]["notes"]["count"], 2);
    assert!(r.json()["collections"].get("memos").is_none());
}

/// One pass per deployment: while another process (a serving replica) holds the lease
/// `purge`, a leased pass (what `tombstone purge` runs) waits, says so once and purges
/// nothing; once the lease is released it runs, purges every due record once, and
/// releases the lease again.
#[tokio::test]
async fn a_leased_pass_waits_while_another_process_holds_the_purge_lease() {
    use tombstone_server::lease::WorkerLease;
    use tombstone_server::purge::{LEASE, SleepPacer};

    let app = TestApp::with_schema(SCHEMA).await;
    let ids = load(&app, "notes", 150).await;
    app.clock.advance(HOUR * 2);
    let ttl = Duration::from_secs(15);
    let held = app.store.claim_lease(LEASE, "replica-a", app.clock.now(), ttl).await.unwrap();
    assert_eq!(held.holder, "replica-a");

    let worker =
        worker(&app).with_lease(WorkerLease::new(app.store.clone(), app.clock.clone(), LEASE).with_holder("cli"));
    let waited = Arc::new(AtomicUsize::new(0));
    let pass = {
        let (worker, waited) = (worker.clone(), waited.clone());
        tokio::spawn(async move {
            let waiting = move || {
                waited.fetch_add(1, Ordering::SeqCst);
            };
            worker.run_pass_leased(&SleepPacer, None, &|_| {}, &waiting).await
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!pass.is_finished(), "the pass waits for the lease");
    assert_eq!(waited.load(Ordering::SeqCst), 1, "it says once that it waits");
    assert_eq!(present(&app, "notes").await.len(), 150, "nothing purged while another holds the lease");

    assert!(app.store.release_lease(LEASE, "replica-a", app.clock.now()).await.unwrap());
    let report = tokio::time::timeout(Duration::from_secs(10), pass).await.expect("the pass ran").unwrap().unwrap();
    assert_eq!(report.purged, 150);
    assert!(present(&app, "notes").await.is_empty());
    assert_all_or_nothing(&app, "notes", &ids).await;
    // Released after the pass: another process gets it at once.
    let next = app.store.claim_lease(LEASE, "replica-b", app.clock.now(), ttl).await.unwrap();
    assert_eq!(next.holder, "replica-b");
}
