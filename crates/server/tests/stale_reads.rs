//! No stale read through the record cache (SPEC §6.1, §9): once a write has answered, no
//! single-record read that starts afterwards may show the record as it was before that write.
//!
//! Readers and writers run concurrently on a multi-threaded runtime through the real router.
//! A global logical clock (one atomic ticket counter) stamps every operation when it starts
//! and when its answer has been received; after the run every read is checked against the
//! history of the writes that had completed before it started.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use axum::http::Method;
use common::{TestApp, TestResponse};
use serde_json::json;
use tokio::sync::Mutex;

/// One collection per test: the metrics recorder is global to the test binary, and the
/// cache-hit counters are labelled by collection.
const SCHEMA: &str = r#"
[retention]
default = "7d"

[collections.stale_reads.fields]
n     = { type = "integer" }
label = { type = "string" }

[collections.stale_fill.fields]
n = { type = "integer" }
"#;

const RECORDS: usize = 8;
const READERS: usize = 8;
const READS_PER_READER: usize = 500;
const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 150;
/// Readers keep at most this many reads ahead of each completed write, so that reads are
/// spread over the whole time the writes run instead of finishing before them (rounded
/// down: the last reads may run after the last write).
const READS_PER_WRITE: usize = (READERS * READS_PER_READER) / (WRITERS * WRITES_PER_WRITER);

/// The global logical clock: every call returns a larger ticket than every earlier call.
#[derive(Default)]
struct Tickets(AtomicU64);

impl Tickets {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A small deterministic generator (splitmix64), one per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Create,
    Patch,
    Delete,
    Restore,
}

/// A write that changed a record: when it started and answered, and what it left.
#[derive(Clone, Copy, Debug)]
struct WriteEvent {
    kind: WriteKind,
    start: u64,
    end: u64,
    version: i64,
    active: bool,
}

/// What a read answered.
#[derive(Clone, Copy, Debug)]
enum Seen {
    /// 200: the version and whether it was shown as deleted.
    Record { version: i64, deleted: bool },
    /// 404 (only legitimate without `include=deleted`: nothing is purged here).
    NotFound,
}

#[derive(Clone, Copy, Debug)]
struct ReadEvent {
    record: usize,
    include_deleted: bool,
    start: u64,
    end: u64,
    seen: Seen,
}

/// The state a record's writers know it to be in (writes of one record are serialized by
/// this lock, so every write knows the exact version it applies to and sends `If-Match`).
struct RecordState {
    version: i64,
    active: bool,
}

fn version_of(r: &TestResponse) -> i64 {
    r.json()["version"].as_i64().unwrap_or_else(|| panic!("no version: {}", r.text))
}

fn seen_of(r: &TestResponse) -> Seen {
    match r.status.as_u16() {
        200 => {
            let body = r.json();
            Seen::Record {
                version: body["version"].as_i64().unwrap_or_else(|| panic!("no version: {body}")),
                deleted: body["deleted"].as_bool().unwrap_or_else(|| panic!("no deleted flag: {body}")),
            }
        }
        404 => Seen::NotFound,
        other => panic!("unexpected read status {other}: {}", r.text),
    }
}

/// The value of a counter for one collection in the Prometheus text of `/metrics`.
async fn counter(app: &TestApp, name: &str, collection: &str) -> f64 {
    let r = app.send(Method::GET, "/metrics", None, &[], None).await;
    r.assert_status(200);
    let label = format!("collection=\"{collection}\"");
    r.text
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Violations found by [`check`], by kind.
#[derive(Debug, Default)]
struct Violations {
    /// (a) a read that started after a DELETE's 204 showed the record active, and no
    /// restore that started before the read completed explains it.
    active_after_delete: usize,
    /// (b) a read that started after a write's answer showed an older version.
    older_version: usize,
    /// (b') a plain read answered 404 although the latest write answered before it started
    /// left the record active and no delete that started before the read ended explains it.
    stale_not_found: usize,
    /// A version that no write produced, shown in a state other than the one its write left,
    /// or produced by a write that started only after the read had completed.
    impossible: usize,
}

impl Violations {
    fn total(&self) -> usize {
        self.active_after_delete + self.older_version + self.stale_not_found + self.impossible
    }
}

/// Checks every read against the histories of its record. Per record, writes are
/// serialized, so versions grow with completion order and the newest write completed
/// before a read started is the one with the highest version among them.
fn check(histories: &[Vec<WriteEvent>], reads: &[ReadEvent]) -> (Violations, Vec<String>) {
    let mut v = Violations::default();
    let mut examples = Vec::new();
    for read in reads {
        let history = &histories[read.record];
        let floor =
            history.iter().filter(|w| w.end < read.start).max_by_key(|w| w.version).expect("the create precedes all");
        let mut note = |what: &str| {
            if examples.len() < 10 {
                examples.push(format!("{what}: read {read:?}; newest write answered before it: {floor:?}"));
            }
        };
        match read.seen {
            Seen::Record { version, deleted } => {
                match history.iter().find(|w| w.version == version) {
                    Some(w) if w.active != deleted && w.start < read.end && (read.include_deleted || !deleted) => {}
                    _ => {
                        v.impossible += 1;
                        note("impossible");
                        continue;
                    }
                }
                if version < floor.version {
                    if !floor.active && !deleted {
                        v.active_after_delete += 1;
                        note("active after delete");
                    } else {
                        v.older_version += 1;
                        note("older version");
                    }
                }
            }
            Seen::NotFound => {
                let explained = !read.include_deleted
                    && history.iter().any(|w| !w.active && w.version >= floor.version && w.start < read.end);
                if !explained {
                    v.stale_not_found += 1;
                    note("stale 404");
                }
            }
        }
    }
    (v, examples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_is_stale_under_concurrent_deletes_restores_and_patches() {
    let app = Arc::new(TestApp::with_schema(SCHEMA).await);
    let tickets = Arc::new(Tickets::default());

    let mut ids = Vec::new();
    let mut states = Vec::new();
    let mut histories = Vec::new();
    for i in 0..RECORDS {
        let created = app.create("stale_reads", &app.admin, &json!({"n": 0, "label": format!("r{i}")})).await;
        ids.push(created["id"].as_str().expect("id").to_string());
        let version = created["version"].as_i64().expect("version");
        states.push(Mutex::new(RecordState { version, active: true }));
        let t = tickets.next();
        histories.push(vec![WriteEvent { kind: WriteKind::Create, start: t, end: t, version, active: true }]);
    }
    let ids = Arc::new(ids);
    let states = Arc::new(states);
    let histories = Arc::new(std::sync::Mutex::new(histories));
    let hits_before = counter(&app, "tombstone_cache_hits_total", "stale_reads").await;
    let misses_before = counter(&app, "tombstone_cache_misses_total", "stale_reads").await;

    let writes_done = Arc::new(AtomicUsize::new(0));
    let writers_left = Arc::new(AtomicUsize::new(WRITERS));
    let reads_started = Arc::new(AtomicUsize::new(0));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (app, tickets, ids, states, histories) =
            (app.clone(), tickets.clone(), ids.clone(), states.clone(), histories.clone());
        let (writes_done, writers_left) = (writes_done.clone(), writers_left.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x5EED_0000 + w as u64);
            for i in 0..WRITES_PER_WRITER {
                let record = rng.below(RECORDS);
                let mut state = states[record].lock().await;
                let path = format!("/v1/stale_reads/{}", ids[record]);
                let etag = format!("\"v{}\"", state.version);
                let if_match = [("if-match", etag.as_str())];
                let kind = match (state.active, rng.below(5)) {
                    (false, _) => WriteKind::Restore,
                    (true, 0 | 1) => WriteKind::Delete,
                    (true, _) => WriteKind::Patch,
                };
                let start = tickets.next();
                let (version, active) = match kind {
                    WriteKind::Patch => {
                        let body = json!({"n": i, "label": format!("w{w}-{i}")}).to_string().into_bytes();
                        let r = app.send(Method::PATCH, &path, Some(&app.admin), &if_match, Some(body)).await;
                        r.assert_status(200);
                        (version_of(&r), true)
                    }
                    WriteKind::Delete => {
                        let r = app.send(Method::DELETE, &path, Some(&app.admin), &if_match, None).await;
                        // `If-Match` on an active record: a 204 means this DELETE moved it on by one.
                        r.assert_status(204);
                        (state.version + 1, false)
                    }
                    WriteKind::Restore => {
                        let r =
                            app.send(Method::POST, &format!("{path}:restore"), Some(&app.admin), &if_match, None).await;
                        r.assert_status(200);
                        (version_of(&r), true)
                    }
                    WriteKind::Create => unreachable!("writers do not create"),
                };
                let end = tickets.next();
                assert!(version > state.version, "{kind:?} of record {record} did not move its version on");
                histories.lock().expect("histories")[record].push(WriteEvent { kind, start, end, version, active });
                *state = RecordState { version, active };
                drop(state);
                writes_done.fetch_add(1, Ordering::SeqCst);
            }
            writers_left.fetch_sub(1, Ordering::SeqCst);
        }));
    }

    let mut readers = Vec::new();
    for r in 0..READERS {
        let (app, tickets, ids) = (app.clone(), tickets.clone(), ids.clone());
        let (writes_done, writers_left, reads_started) =
            (writes_done.clone(), writers_left.clone(), reads_started.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(0x0EAD_0000 + r as u64);
            let mut reads = Vec::with_capacity(READS_PER_READER);
            for _ in 0..READS_PER_READER {
                // Pace the readers against the writers (no timing: only progress counts).
                while writers_left.load(Ordering::SeqCst) > 0
                    && reads_started.load(Ordering::SeqCst)
                        >= (writes_done.load(Ordering::SeqCst) + 1) * READS_PER_WRITE
                {
                    tokio::task::yield_now().await;
                }
                reads_started.fetch_add(1, Ordering::SeqCst);
                let record = rng.below(RECORDS);
                let include_deleted = rng.below(2) == 0;
                let path = if include_deleted {
                    format!("/v1/stale_reads/{}?include=deleted", ids[record])
                } else {
                    format!("/v1/stale_reads/{}", ids[record])
                };
                let start = tickets.next();
                let response = app.get(&path, &app.admin).await;
                let end = tickets.next();
                reads.push(ReadEvent { record, include_deleted, start, end, seen: seen_of(&response) });
            }
            reads
        }));
    }

    for writer in writers {
        writer.await.expect("writer task");
    }
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.expect("reader task"));
    }
    let hits = counter(&app, "tombstone_cache_hits_total", "stale_reads").await - hits_before;
    let misses = counter(&app, "tombstone_cache_misses_total", "stale_reads").await - misses_before;

    let histories = histories.lock().expect("histories").clone();
    let writes: Vec<&WriteEvent> = histories.iter().flatten().filter(|w| w.kind != WriteKind::Create).collect();
    let count_kind = |kind: WriteKind| writes.iter().filter(|w| w.kind == kind).count();
    let concurrent = reads
        .iter()
        .filter(|r| {
            histories[r.record].iter().any(|w| w.start < r.end && r.start < w.end && w.kind != WriteKind::Create)
        })
        .count();
    let not_found = reads.iter().filter(|r| matches!(r.seen, Seen::NotFound)).count();
    let shown_deleted = reads.iter().filter(|r| matches!(r.seen, Seen::Record { deleted: true, .. })).count();
    let (violations, examples) = check(&histories, &reads);
    println!(
        "stale_reads: reads={} (include=deleted {}, 404 {}, shown deleted {}, overlapping a write of their record {}) \
         writes={} (patch {}, delete {}, restore {}) cache hits={hits} misses={misses} violations={violations:?}",
        reads.len(),
        reads.iter().filter(|r| r.include_deleted).count(),
        not_found,
        shown_deleted,
        concurrent,
        writes.len(),
        count_kind(WriteKind::Patch),
        count_kind(WriteKind::Delete),
        count_kind(WriteKind::Restore),
    );
    for example in &examples {
        println!("  {example}");
    }

    assert_eq!(reads.len(), READERS * READS_PER_READER);
    assert_eq!(writes.len(), WRITERS * WRITES_PER_WRITER);
    assert!(
        count_kind(WriteKind::Delete) > 0 && count_kind(WriteKind::Restore) > 0 && count_kind(WriteKind::Patch) > 0
    );
    assert!(hits > 0.0, "the reads never hit the cache: the test would not exercise it");
    assert_eq!(violations.total(), 0, "stale reads: {violations:?}\n{}", examples.join("\n"));
}

/// The slow-fill race: a GET that missed the cache and read the old row must never put it
/// into the cache after a newer write invalidated the key. Many GETs of a record run while
/// PATCHes of it commit; once everything has stopped, the next GET (answered from the
/// cache whenever a fill landed) must show the final version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_fill_never_overwrites_a_newer_invalidation() {
    const ROUNDS: usize = 300;
    const FILL_RECORDS: usize = 4;
    const HAMMERS: usize = 6;
    const MAX_READS_PER_HAMMER: usize = 40;
    const PATCHES_PER_ROUND: usize = 3;

    let app = Arc::new(TestApp::with_schema(SCHEMA).await);
    let mut records = Vec::new();
    for _ in 0..FILL_RECORDS {
        let created = app.create("stale_fill", &app.admin, &json!({"n": 0})).await;
        records.push((created["id"].as_str().expect("id").to_string(), created["version"].as_i64().expect("version")));
    }

    let (mut stale_rounds, mut final_hits, mut reads) = (0, 0, 0);
    let mut examples = Vec::new();
    for round in 0..ROUNDS {
        let (id, version) = &mut records[round % FILL_RECORDS];
        let path = format!("/v1/stale_fill/{id}");
        // Warm the cache, so that a lost invalidation would show (whether this read is stale
        // was checked at the end of the previous round of this record).
        app.get(&path, &app.admin).await.assert_status(200);

        let stop = Arc::new(AtomicBool::new(false));
        let hammers: Vec<_> = (0..HAMMERS)
            .map(|h| {
                let (app, stop, path) = (app.clone(), stop.clone(), path.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while n < MAX_READS_PER_HAMMER && !stop.load(Ordering::SeqCst) {
                        let path = if (h + n) % 2 == 0 { format!("{path}?include=deleted") } else { path.clone() };
                        app.get(&path, &app.admin).await.assert_status(200);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for p in 0..PATCHES_PER_ROUND {
            tokio::task::yield_now().await;
            let etag = format!("\"v{version}\"");
            let body = json!({"n": round * PATCHES_PER_ROUND + p}).to_string().into_bytes();
            let r = app.send(Method::PATCH, &path, Some(&app.admin), &[("if-match", etag.as_str())], Some(body)).await;
            r.assert_status(200);
            *version = version_of(&r);
        }
        stop.store(true, Ordering::SeqCst);
        for hammer in hammers {
            reads += hammer.await.expect("hammer task");
        }

        // Every fill has landed or been dropped by now: whatever the cache holds is final.
        let hits_before = counter(&app, "tombstone_cache_hits_total", "stale_fill").await;
        let after = app.get(&path, &app.admin).await;
        let hit = counter(&app, "tombstone_cache_hits_total", "stale_fill").await > hits_before;
        final_hits += usize::from(hit);
        after.assert_status(200);
        let again = app.get(&format!("{path}?include=deleted"), &app.admin).await;
        again.assert_status(200);
        let seen = (version_of(&after), version_of(&again));
        if seen != (*version, *version) {
            stale_rounds += 1;
            if examples.len() < 10 {
                examples.push(format!(
                    "round {round}: final version {version}, reads after the writes {seen:?} (hit: {hit})"
                ));
            }
        }
    }
    println!(
        "slow_fill: rounds={ROUNDS} patches={} concurrent reads={reads} final reads served from the cache={final_hits} \
         stale rounds={stale_rounds}",
        ROUNDS * PATCHES_PER_ROUND
    );
    for example in &examples {
        println!("  {example}");
    }
    assert_eq!(stale_rounds, 0, "a stale value stayed in the cache:\n{}", examples.join("\n"));
}

#[test]
fn the_checker_flags_stale_reads() {
    let w = |kind, start, end, version, active| WriteEvent { kind, start, end, version, active };
    let history = vec![
        w(WriteKind::Create, 1, 1, 1, true),
        w(WriteKind::Patch, 2, 3, 2, true),
        w(WriteKind::Delete, 4, 5, 3, false),
        w(WriteKind::Restore, 8, 10, 4, true),
    ];
    let read = |include_deleted, start, end, seen| ReadEvent { record: 0, include_deleted, start, end, seen };
    let rec = |version, deleted| Seen::Record { version, deleted };
    let fine = [
        read(false, 6, 7, Seen::NotFound),  // after the delete
        read(true, 6, 7, rec(3, true)),     // after the delete, with include=deleted
        read(false, 9, 11, Seen::NotFound), // the restore is still running
        read(false, 9, 11, rec(4, false)),  // or not
        read(false, 4, 6, rec(2, false)),   // the delete is still running
        read(true, 11, 12, rec(4, false)),  // after the restore
        read(false, 2, 12, rec(1, false)),  // started before everything
    ];
    assert_eq!(check(std::slice::from_ref(&history), &fine).0.total(), 0);
    let stale = [
        read(false, 6, 7, rec(2, false)),    // (a) active after the delete's 204
        read(true, 6, 7, rec(2, false)),     // (a) with include=deleted
        read(true, 4, 7, rec(1, false)),     // (b) older than the patch's answer
        read(false, 11, 12, Seen::NotFound), // deleted again after the restore's answer
        read(true, 11, 12, rec(3, true)),    // (b) older than the restore's answer
        read(false, 2, 3, rec(3, true)),     // impossible: plain reads never show deleted records
        read(true, 2, 3, rec(4, false)),     // impossible: the restore had not started
    ];
    let (v, _) = check(std::slice::from_ref(&history), &stale);
    assert_eq!((v.active_after_delete, v.older_version, v.stale_not_found, v.impossible), (2, 2, 1, 2), "{v:?}");
}
