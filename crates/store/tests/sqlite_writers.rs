//! The SQLite store's writers: background work (purge batches) gives way to live writes
//! without losing or repeating a row, runs in the idle CPU class, and the read cache
//! follows from the outbox only what other processes wrote. (And a collection table from
//! before archive gains its columns and indexes, rows kept, and an index whose definition
//! changed is built again.)

use std::path::Path;
use std::sync::Arc;
use tombstone_store::prelude::*;

use tombstone_domain::config::{Collection, Config, Schema};
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{FieldValue, Record, Values, parse_patch};
use tombstone_domain::time::Timestamp;
use tombstone_store::{MemoryCache, SqliteStore, Store};

fn schema() -> Arc<Schema> {
    let toml = "[collections.notes.fields]\ntext = { type = \"string\" }\n";
    Config::parse(toml, Path::new(".")).expect("schema").schema
}

fn notes(schema: &Schema) -> Arc<Collection> {
    schema.collection("notes").expect("notes").clone()
}

fn actor() -> Actor {
    Actor { tenant: "t1".into(), key_id: "key_live".into(), request_id: "req_live".into() }
}

fn note(c: &Collection, id: &str) -> Record {
    let now = Timestamp::from_micros(1_000);
    let mut values = Values::new();
    values.insert("text".into(), FieldValue::String(format!("note {id}")));
    Record {
        tenant: "t1".into(),
        collection: c.name.clone(),
        id: id.into(),
        version: 1,
        created_at: now,
        updated_at: now,
        deletion: None,
        archive: None,
        legal_hold: false,
        values,
    }
}

/// `n` soft-deleted notes whose recovery window ended at 2 µs, written straight into the
/// table (far faster than through the API).
fn seed_expired(db: &Path, n: u32) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute(
        "with recursive k(i) as (select 1 union all select i + 1 from k where i < ?1)
         insert into rec_notes (tenant, id, version, created_at, updated_at, deleted_at, deleted_by, deletion_id, purge_at, f_text)
         select 't1', printf('expired-%08d', i), 2, 0, 0, 1, 'key_seed', 'del_seed', 2, 'old note' from k",
        [n],
    )
    .expect("seed");
}

#[tokio::test]
async fn a_purge_batch_gives_way_to_live_writes_and_still_purges_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let schema = schema();
    store.migrate(&schema).await.unwrap();
    let c = notes(&schema);
    const ROWS: u32 = 30_000;
    seed_expired(&db, ROWS);

    let purge = {
        let (store, c) = (store.clone(), c.clone());
        tokio::spawn(async move { store.purge_batch(&c, Timestamp::from_micros(10), ROWS, "purge_run").await })
    };
    // Live writes keep arriving while the batch runs.
    let mut written = 0;
    while !purge.is_finished() {
        store.create_record(&actor(), &c, note(&c, &format!("live-{written:05}")), None).await.unwrap();
        written += 1;
    }
    let batch = purge.await.unwrap().unwrap();
    assert_eq!(
        batch.purged,
        u64::from(ROWS),
        "one batch call purges its whole limit, in as many transactions as it takes"
    );
    assert!(!batch.paused);
    assert!(written > 0);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let seqs_of = |action: &str| -> Vec<i64> {
        conn.prepare("select seq from audit where action = ?1 order by seq")
            .unwrap()
            .query_map([action], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let (purges, creates) = (seqs_of("purge"), seqs_of("create"));
    assert_eq!(purges.len(), ROWS as usize, "each row purged exactly once, with its audit entry");
    let events: i64 =
        conn.query_row("select count(*) from outbox where type = 'record.purged'", [], |r| r.get(0)).unwrap();
    assert_eq!(events, i64::from(ROWS));
    let left: i64 =
        conn.query_row("select count(*) from rec_notes where deleted_at is not null", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0);
    // Live writes committed in the middle of the batch, not behind all of it.
    let (first, last) = (purges[0], purges[purges.len() - 1]);
    let inside = creates.iter().filter(|&&s| s > first && s < last).count();
    assert!(inside > 0, "no live write got in while the batch ran ({written} were made)");
    // The chain is whole across the interleaved transactions.
    assert_eq!(store.verify_audit().await.unwrap(), Ok(u64::try_from(purges.len() + creates.len()).unwrap()));
}

/// The scheduling policy of each of this process's threads named `name` (Linux's
/// `/proc/self/task/*/stat`, field 41).
#[cfg(target_os = "linux")]
fn policies_of(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // Fields after the parenthesised name start at field 3.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        out.push(after.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    out
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn background_threads_run_in_the_idle_cpu_class_and_the_live_writer_does_not() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    store.migrate(&schema()).await.unwrap();
    // Thread names are cut to 15 bytes.
    for name in ["tombstone-backg", "tombstone-check"] {
        let policies = policies_of(name);
        assert!(!policies.is_empty(), "no {name} thread");
        assert!(policies.iter().all(|&p| p == SCHED_IDLE), "{name}: {policies:?}");
    }
    let live = policies_of("tombstone-sqlit");
    assert!(!live.is_empty() && live.iter().all(|&p| p == SCHED_OTHER), "live writer: {live:?}");
}

/// Two stores on one database file, as two processes would have: `here` with a read cache,
/// `other` without. The temporary directory lives as long as the first item.
async fn two_processes() -> (tempfile::TempDir, Arc<dyn Store>, Arc<dyn Store>, Arc<Collection>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let cache = Arc::new(MemoryCache::new(1000, std::time::Duration::from_secs(3600)));
    let here: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap().with_cache(cache).unwrap());
    let other: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let schema = schema();
    here.migrate(&schema).await.unwrap();
    other.migrate(&schema).await.unwrap();
    (dir, here, other, notes(&schema))
}

#[tokio::test]
async fn the_cache_reads_from_the_outbox_only_what_other_processes_wrote() {
    let (_dir, here, other, c) = two_processes().await;
    let now = Timestamp::from_micros(5_000);

    for i in 0..5 {
        here.create_record(&actor(), &c, note(&c, &format!("n{i}")), None).await.unwrap();
    }
    assert_eq!(here.sync_cache().await.unwrap(), 0, "this process's own changes are not read back");

    // Cached here, then changed by the other process, between two changes of this one.
    assert_eq!(here.get_record("t1", &c, "n2").await.unwrap().unwrap().version, 1);
    here.create_record(&actor(), &c, note(&c, "n5"), None).await.unwrap();
    let patch = parse_patch(&c, &serde_json::json!({"text": "changed elsewhere"})).unwrap();
    other.patch_record(&actor(), &c, "n2", None, patch, now).await.unwrap();
    here.create_record(&actor(), &c, note(&c, "n6"), None).await.unwrap();
    assert_eq!(here.sync_cache().await.unwrap(), 1, "exactly the other process's change is read");
    let fresh = here.get_record("t1", &c, "n2").await.unwrap().unwrap();
    assert_eq!(fresh.version, 2);
    assert_eq!(fresh.values.get("text"), Some(&FieldValue::String("changed elsewhere".into())));
    assert_eq!(here.sync_cache().await.unwrap(), 0);
}

#[tokio::test]
async fn a_hold_placed_by_another_process_reaches_this_ones_cache() {
    let (_dir, here, other, c) = two_processes().await;
    let now = Timestamp::from_micros(5_000);
    here.create_record(&actor(), &c, note(&c, "n1"), None).await.unwrap();
    assert!(!here.get_record("t1", &c, "n1").await.unwrap().unwrap().legal_hold, "cached, not held");

    let hold = other.place_hold(&actor(), &c, "n1", Some("CASE".into()), None, now).await.unwrap();
    assert_eq!(here.sync_cache().await.unwrap(), 1, "the hold's event is followed");
    let held = here.get_record("t1", &c, "n1").await.unwrap().unwrap();
    assert!(held.legal_hold);
    assert_eq!(held.version, 2);

    other.release_hold(&actor(), &c, "n1", &hold.hold_id, None, now).await.unwrap();
    assert_eq!(here.sync_cache().await.unwrap(), 1);
    assert!(!here.get_record("t1", &c, "n1").await.unwrap().unwrap().legal_hold);
}

/// Whether a `Notified` future is complete without waiting (polled once, by hand).
fn is_woken(notified: tokio::sync::futures::Notified<'_>) -> bool {
    let mut notified = std::pin::pin!(notified);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::future::Future::poll(notified.as_mut(), &mut cx).is_ready()
}

#[tokio::test]
async fn every_commit_that_writes_events_wakes_the_followers_before_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let store = SqliteStore::open(&db).unwrap();
    let schema = schema();
    store.migrate(&schema).await.unwrap();
    let c = notes(&schema);
    let changes = store.changes();

    // The live writer: woken by the time the write has answered, no waiting involved.
    let woken = changes.notified();
    store.create_record(&actor(), &c, note(&c, "n1"), None).await.unwrap();
    assert!(is_woken(woken), "a create did not wake the followers");

    // A write that rolls back, and one that writes no event, wake nobody.
    let woken = changes.notified();
    store.create_record(&actor(), &c, note(&c, "n1"), None).await.expect_err("the id is taken");
    store.set_meta("probe", "1").await.unwrap();
    assert!(!is_woken(woken), "a rolled-back or event-less write woke the followers");

    // The background writer: a purge batch with rows to purge wakes them, an empty one does not.
    seed_expired(&db, 3);
    let woken = changes.notified();
    let batch = store.purge_batch(&c, Timestamp::from_micros(10), 100, "purge_run").await.unwrap();
    assert_eq!(batch.purged, 3);
    assert!(is_woken(woken), "a purge batch did not wake the followers");
    let woken = changes.notified();
    assert_eq!(store.purge_batch(&c, Timestamp::from_micros(10), 100, "purge_run").await.unwrap().purged, 0);
    assert!(!is_woken(woken));
}

/// A table as it was before archive (§17): no `archived_*` columns, the old default-list
/// index. Migrating adds the columns (empty), replaces the index, keeps every row, and the
/// store reads, lists and archives them.
#[tokio::test]
async fn a_table_from_before_archive_gains_its_columns_and_keeps_its_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    let sch = schema();
    let c = notes(&sch);
    {
        let store = SqliteStore::open(&path).expect("open");
        store.migrate(&sch).await.expect("migrate");
        store.create_record(&actor(), &c, note(&c, "n1"), None).await.expect("create");
    }
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "drop index ix_notes_page; drop index ix_notes_current; drop index ix_notes_archived;
             alter table rec_notes drop column archived_at; alter table rec_notes drop column archived_by;
             alter table rec_notes drop column archive_reason;
             create index ix_notes_active on rec_notes (tenant, id) where deleted_at is null;",
        )
        .expect("make the table as it was");
    }
    let store = SqliteStore::open(&path).expect("open");
    store.migrate(&sch).await.expect("migrate an old table");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let indexes: Vec<String> = conn
        .prepare("select name from sqlite_master where type = 'index' and tbl_name = 'rec_notes' and sql is not null order by name")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("indexes")
        .collect::<Result<_, _>>()
        .expect("indexes");
    assert_eq!(
        indexes,
        ["ix_notes_archived", "ix_notes_current", "ix_notes_deleted", "ix_notes_page", "ix_notes_purge"]
    );
    let n1 = store.get_record("t1", &c, "n1").await.expect("get").expect("kept");
    assert_eq!((n1.archive.clone(), n1.values.get("text")), (None, Some(&FieldValue::String("note n1".into()))));
    let request = tombstone_domain::lifecycle::ArchiveRequest::Archive { reason: None };
    let archived = store.archive_record(&actor(), &c, "n1", request, None, Timestamp::from_micros(2_000)).await;
    assert!(archived.expect("archive").is_archived());
    let page = store.list_records("t1", &c, &tombstone_domain::query::ListQuery::default()).await.expect("list");
    assert!(page.items.is_empty(), "an archived record leaves the default list");
}

/// An index of ours whose definition changed under the same name — `ix_<c>_current` and
/// `ix_<c>_archived` as they were, over `(tenant, id)` only — is built again by `migrate`,
/// so that counts on an existing database read only the index too; the rows are kept.
#[tokio::test]
async fn an_index_whose_definition_changed_is_built_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    let sch = schema();
    let c = notes(&sch);
    let definitions = || -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.prepare(
            "select name, sql from sqlite_master where type = 'index' and tbl_name = 'rec_notes' and sql is not null order by name",
        )
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("indexes")
        .collect::<Result<_, _>>()
        .expect("indexes")
    };
    {
        let store = SqliteStore::open(&path).expect("open");
        store.migrate(&sch).await.expect("migrate");
        store.create_record(&actor(), &c, note(&c, "n1"), None).await.expect("create");
    }
    let wanted = definitions();
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "drop index ix_notes_current; drop index ix_notes_archived;
             create index \"ix_notes_current\" on \"rec_notes\" (tenant, id) where deleted_at is null and archived_at is null;
             create index \"ix_notes_archived\" on \"rec_notes\" (tenant, id) where deleted_at is null and archived_at is not null;",
        )
        .expect("make the indexes as they were");
    }
    assert_ne!(definitions(), wanted);
    let store = SqliteStore::open(&path).expect("open");
    store.migrate(&sch).await.expect("migrate the old indexes");
    assert_eq!(definitions(), wanted);
    assert!(
        wanted
            .iter()
            .any(|(name, sql)| name == "ix_notes_current" && sql.contains("(tenant, id, deleted_at, archived_at)")),
        "{wanted:?}"
    );
    // Migrating again keeps them, and the record is still listed and counted.
    store.migrate(&sch).await.expect("migrate again");
    assert_eq!(definitions(), wanted);
    let query = tombstone_domain::query::ListQuery { count: true, ..Default::default() };
    let page = store.list_records("t1", &c, &query).await.expect("list");
    assert_eq!((page.items.len(), page.total), (1, Some(1)));
}

/// `migrate` over a database already migrated touches no index (no schema change at all):
/// every index of ours, of every kind, matches the statement it was created by, so a
/// restart never rebuilds one.
#[tokio::test]
async fn migrating_again_rebuilds_no_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("again.db");
    let toml = r#"
[collections.orders]
archive_after = "90d"
unique = [["code"], ["email", "code"]]
[collections.orders.fields]
code  = { type = "string" }
email = { type = "string", case_insensitive = true, index = true }
count = { type = "integer", index = true }
"#;
    let sch = Config::parse(toml, Path::new(".")).expect("schema").schema;
    let schema_version = || -> i64 {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.query_row("pragma schema_version", [], |r| r.get(0)).expect("schema_version")
    };
    let store = SqliteStore::open(&path).expect("open");
    store.migrate(&sch).await.expect("migrate");
    let before = schema_version();
    store.migrate(&sch).await.expect("migrate again");
    SqliteStore::open(&path).expect("open again").migrate(&sch).await.expect("migrate on a new start");
    assert_eq!(schema_version(), before);
}

/// A database from before history (§14): no version rows, no baseline mark. Migrating
/// gives each record one `baseline` version (its state then, valid from its `updated_at`,
/// no actor), once; the next change continues from it.
#[tokio::test]
async fn records_from_before_history_get_one_baseline_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    let sch = schema();
    let c = notes(&sch);
    {
        let store = SqliteStore::open(&path).expect("open");
        store.migrate(&sch).await.expect("migrate");
        store.create_record(&actor(), &c, note(&c, "n1"), None).await.expect("create");
    }
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("delete from versions; delete from history_baselines;").expect("make it as it was");
    }
    let store = SqliteStore::open(&path).expect("open");
    store.migrate(&sch).await.expect("migrate");
    store.migrate(&sch).await.expect("migrate again: no second baseline");
    let page = store.list_versions("t1", "notes", "n1", None, 10).await.expect("versions");
    let summary: Vec<(i64, &str, Option<&str>)> =
        page.items.iter().map(|v| (v.version, v.action.as_str(), v.actor.as_deref())).collect();
    assert_eq!(summary, vec![(1, "baseline", None)]);
    let n1 = store.get_record("t1", &c, "n1").await.expect("get").expect("kept");
    assert_eq!(page.items[0].valid_from, n1.updated_at);
    assert_eq!(page.items[0].record["text"], "note n1");
    let request = tombstone_domain::lifecycle::ArchiveRequest::Archive { reason: None };
    store.archive_record(&actor(), &c, "n1", request, None, Timestamp::from_micros(2_000)).await.expect("archive");
    let page = store.list_versions("t1", "notes", "n1", None, 10).await.expect("versions");
    assert_eq!(page.items.iter().map(|v| v.action.as_str()).collect::<Vec<_>>(), ["archive", "baseline"]);
    assert_eq!(page.items[1].valid_to, Some(Timestamp::from_micros(2_000)));
}
