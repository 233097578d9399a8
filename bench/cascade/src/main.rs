//! Cascade benchmark: how long the SQLite store takes to delete a parent with N cascade
//! children (one transaction: plan, soft-delete, audit entries, outbox events, operation
//! rows) and to restore that deletion operation (all or nothing, one transaction).
//!
//! Usage: `cargo run --release -- [CHILDREN] [RUNS]` (defaults 10000 and 5). The data is
//! inserted once through the store API; each run deletes the parent and restores the
//! operation, so every run starts from the same active graph. A last, untimed pass counts
//! the SQL statements the store's own connections execute for one delete and one restore
//! (SQLite's `sqlite3_trace_v2`, installed on every connection through an auto-extension),
//! to show which parts of the cascade are set-based and which are per row.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::trace::{TraceEvent, TraceEventCodes};
use tombstone_domain::config::{Collection, Config};
use tombstone_domain::id::new_deletion_id;
use tombstone_domain::lifecycle::{Actor, DeleteRequest};
use tombstone_domain::record::{FieldValue, Record};
use tombstone_domain::time::{Clock, SystemClock};
use tombstone_store::{DeleteOutcome, RecordsPage, SqliteStore, Store};

const SCHEMA: &str = r#"
[retention]
default = "30d"

[collections.parents.fields]
name = { type = "string" }

[collections.children.fields]
n         = { type = "integer" }
label     = { type = "string" }
parent_id = { type = "ref", collection = "parents", on_delete = "cascade" }
"#;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether the statement tracer counts (only during the counting pass).
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Per statement text: how many executions, and their time (from SQLite's profile events).
fn counts() -> &'static Mutex<HashMap<String, (u64, Duration)>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, (u64, Duration)>>> = OnceLock::new();
    COUNTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A statement's SQL text, whitespace collapsed and the parameter lists of `in (…)`
/// shortened, so that chunks of different sizes group together.
fn key(sql: &str) -> String {
    let mut key = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(start) = key.find(" in (?")
        && let Some(len) = key[start..].find(')')
    {
        key.replace_range(start..start + len + 1, " in (?…)");
    }
    if key.len() > 100 {
        let mut cut = 100;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
        key.push('…');
    }
    key
}

/// One statement execution starting (counted) or finishing (timed).
fn on_trace(event: TraceEvent<'_>) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    match event {
        TraceEvent::Stmt(_, sql) => counts().lock().expect("counts").entry(key(sql)).or_default().0 += 1,
        TraceEvent::Profile(stmt, took) => {
            counts().lock().expect("counts").entry(key(&stmt.sql())).or_default().1 += took
        }
        _ => {}
    }
}

/// Installs [`on_trace`] on every SQLite connection opened from now on.
fn install_tracer() -> Result<(), BoxError> {
    fn init(conn: rusqlite::Connection) -> rusqlite::Result<()> {
        conn.trace_v2(TraceEventCodes::SQLITE_TRACE_STMT | TraceEventCodes::SQLITE_TRACE_PROFILE, Some(on_trace));
        Ok(())
    }
    unsafe extern "C" fn entry(
        db: *mut rusqlite::ffi::sqlite3,
        err: *mut *mut std::ffi::c_char,
        _: *const rusqlite::ffi::sqlite3_api_routines,
    ) -> std::ffi::c_int {
        // SAFETY: SQLite hands a valid, open connection to auto-extensions; `init` only
        // registers a trace callback on it and neither closes nor opens connections.
        unsafe { rusqlite::auto_extension::init_auto_extension(db, err, init) }
    }
    // SAFETY: `entry` does not open databases nor touch the auto-extension list.
    unsafe { rusqlite::auto_extension::register_auto_extension(entry)? };
    Ok(())
}

fn actor(request: &str) -> Actor {
    Actor { tenant: "t1".into(), key_id: "key_bench".into(), request_id: request.into() }
}

async fn open(path: &Path, config: &Config) -> Result<Arc<SqliteStore>, BoxError> {
    let store = Arc::new(SqliteStore::open(path)?);
    store.migrate(&config.schema).await?;
    Ok(store)
}

/// Inserts the parent and its children through the store, many writes in flight.
async fn populate(store: &Arc<SqliteStore>, config: &Config, children: usize) -> Result<Duration, BoxError> {
    let parents = config.schema.collection("parents").ok_or("no parents")?.clone();
    let kids = config.schema.collection("children").ok_or("no children")?.clone();
    let record = |collection: &Collection, id: String, values: Vec<(&str, FieldValue)>| {
        let now = SystemClock.now();
        Record {
            tenant: "t1".into(),
            collection: collection.name.clone(),
            id,
            version: 1,
            created_at: now,
            updated_at: now,
            deletion: None,
            archive: None,
            legal_hold: false,
            values: values.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    };
    let started = Instant::now();
    let parent = record(&parents, "p1".into(), vec![("name", FieldValue::String("parent".into()))]);
    store.create_record(&actor("populate"), &parents, parent, None).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..children {
        let child = record(
            &kids,
            format!("c{i:06}"),
            vec![
                ("n", FieldValue::Integer(i64::try_from(i)?)),
                ("label", FieldValue::String(format!("child number {i}"))),
                ("parent_id", FieldValue::Ref("p1".into())),
            ],
        );
        let (store, kids) = (store.clone(), kids.clone());
        tasks.spawn(async move { store.create_record(&actor("populate"), &kids, child, None).await });
        if tasks.len() >= 256 {
            tasks.join_next().await.ok_or("no task")???;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// Deletes the parent (the whole cascade); returns the operation id and the time taken.
async fn delete(store: &SqliteStore, parents: &Arc<Collection>) -> Result<(String, Duration), BoxError> {
    let request = DeleteRequest { if_match: None, reason: Some("bench".into()), deletion_id: new_deletion_id() };
    let started = Instant::now();
    let outcome = store.delete_record(&actor("delete"), parents, "p1", request, SystemClock.now()).await?;
    let took = started.elapsed();
    let DeleteOutcome::SoftDeleted { deletion_id, .. } = outcome else {
        return Err(format!("unexpected outcome {outcome:?}").into());
    };
    Ok((deletion_id, took))
}

/// Checks (untimed) that the operation took every child at once.
async fn check(store: &SqliteStore, deletion_id: &str, children: usize) -> Result<(), BoxError> {
    let page = RecordsPage { after: None, limit: 1 };
    let op = store.get_deletion("t1", deletion_id, &page).await?.ok_or("operation missing")?;
    if op.counts.get("children").copied() != Some(children as u64) || op.status != "done" {
        return Err(format!("the cascade took {:?} ({})", op.counts, op.status).into());
    }
    Ok(())
}

async fn restore(store: &SqliteStore, deletion_id: &str, children: usize) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let restored = store.restore_deletion(&actor("restore"), deletion_id, SystemClock.now()).await?;
    let took = started.elapsed();
    if restored.len() != children + 1 {
        return Err(format!("restored {} records, expected {}", restored.len(), children + 1).into());
    }
    Ok(took)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn rate(rows: usize, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

fn print_counts(what: &str) -> u64 {
    let mut map = counts().lock().expect("counts");
    let mut rows: Vec<(String, (u64, Duration))> = map.drain().collect();
    rows.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
    let total: u64 = rows.iter().map(|(_, (n, _))| n).sum();
    let time: Duration = rows.iter().map(|(_, (_, t))| *t).sum();
    println!("\nstatements executed by {what}: {total}, {time:.2?} inside SQLite (traced, so slower than untraced)");
    println!("  {:>7}  {:>9}  statement", "runs", "time");
    for (sql, (n, t)) in rows {
        println!("  {n:>7}  {t:>9.2?}  {sql}");
    }
    total
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let children: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    // The whole cascade in the DELETE's own transaction: what this measures (past
    // `max_immediate_cascade` the rest would go to the eventual worker instead).
    let schema = format!("[relations]\nmax_immediate_cascade = {}\n{SCHEMA}", children.max(1));
    let config = Config::parse(&schema, dir.path())?;
    let path = dir.path().join("bench.db");
    let parents = config.schema.collection("parents").ok_or("no parents")?.clone();
    let rows = children + 1;

    let store = open(&path, &config).await?;
    let took = populate(&store, &config, children).await?;
    println!("inserted 1 parent + {children} children in {took:.2?} ({:.0} records/s)", rate(rows, took));

    let (mut deletes, mut restores) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let (deletion_id, d) = delete(&store, &parents).await?;
        check(&store, &deletion_id, children).await?;
        let r = restore(&store, &deletion_id, children).await?;
        println!(
            "run {run}: delete {d:>9.2?} ({:>7.0} rows/s)   restore {r:>9.2?} ({:>7.0} rows/s)",
            rate(rows, d),
            rate(rows, r)
        );
        deletes.push(d);
        restores.push(r);
    }
    let (d, r) = (median(deletes), median(restores));
    println!(
        "\nmedian of {runs}: delete_record {d:.2?} ({:.0} rows/s), restore_deletion {r:.2?} ({:.0} rows/s), {rows} rows each",
        rate(rows, d),
        rate(rows, r)
    );

    // The statement count, on a store reopened with the tracer on its connections.
    drop(store);
    install_tracer()?;
    let store = open(&path, &config).await?;
    COUNTING.store(true, Ordering::SeqCst);
    let (deletion_id, _) = delete(&store, &parents).await?;
    COUNTING.store(false, Ordering::SeqCst);
    check(&store, &deletion_id, children).await?;
    let in_delete = print_counts("one delete_record (plan + cascade + checks)");
    COUNTING.store(true, Ordering::SeqCst);
    restore(&store, &deletion_id, children).await?;
    COUNTING.store(false, Ordering::SeqCst);
    let in_restore = print_counts("one restore_deletion");
    let per = |n: u64| n as f64 / rows as f64;
    let summary: BTreeMap<&str, (u64, f64)> =
        BTreeMap::from([("delete", (in_delete, per(in_delete))), ("restore", (in_restore, per(in_restore)))]);
    println!("\nstatements (total, per record): {summary:?}");
    Ok(())
}
