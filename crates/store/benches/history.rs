//! As-of reads against plain reads on SQLite (SPEC §14), through the store API: R records
//! with V versions each (a create and V-1 patches, so R×V version rows), then
//! - GET by id: `get_record` (no cache) against `version_row_at` at a random instant;
//! - a list page (limit 50, after a random id): `list_records` against `list_as_of` at a
//!   random instant;
//! - storage per version: the bytes the `versions` table and its key take, per row.
//!
//! Not a test: it prints figures. `cargo bench -p tombstone-store --bench history`
//! (R=100000, V=10 by default: 1,000,000 version rows; `R=… V=… READS=…`). With
//! `DB=path`, the loaded database is kept there and a later run with the same R and V
//! reads it again instead of writing the million rows anew (the load takes minutes); a
//! database written by an older build is migrated by this one first, as a deployment's
//! would be.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tombstone_domain::config::Config;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::query::{ListQuery, Position, SortValue};
use tombstone_domain::record::{FieldValue, Patch, Record, Values};
use tombstone_domain::time::Timestamp;
use tombstone_store::SqliteStore;
use tombstone_store::prelude::*;

const SCHEMA: &str = r#"
[collections.products]
unique = [["sku"]]
[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string", required = true }
n    = { type = "integer" }
"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator (no dependency for a benchmark).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Wall and CPU time of a stretch of the bench.
struct Meter {
    wall: Instant,
    cpu: Option<f64>,
}

impl Meter {
    fn start() -> Self {
        Self { wall: Instant::now(), cpu: cpu_micros() }
    }

    /// Microseconds per operation: wall, and CPU (the whole process) when /proc tells.
    fn per_op(&self, n: usize) -> (f64, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64() * 1e6 / n as f64;
        let cpu = self.cpu.zip(cpu_micros()).map(|(a, b)| (b - a) / n as f64);
        (wall, cpu)
    }
}

/// The process's user and system CPU time so far, in µs (Linux, 100 ticks a second).
fn cpu_micros() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) * 10_000.0)
}

fn compare((plain, plain_cpu): (f64, Option<f64>), (as_of, as_of_cpu): (f64, Option<f64>)) -> String {
    let cpu = match (plain_cpu, as_of_cpu) {
        (Some(p), Some(a)) if p > 0.0 => format!("; CPU {p:.1} µs, as_of {a:.1} µs ({:.2}×)", a / p),
        _ => String::new(),
    };
    format!("{plain:.1} µs, as_of {as_of:.1} µs ({:.2}×){cpu}", as_of / plain)
}

fn main() {
    let (records, versions, reads) = (env("R", 100_000), env("V", 10), env("READS", 20_000));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = std::env::var_os("DB").map_or_else(|| dir.path().join("bench.db"), std::path::PathBuf::from);
        let loaded_before = path.exists();
        let schema = Config::parse(SCHEMA, Path::new(".")).expect("schema").schema;
        let store = SqliteStore::open(&path).expect("open");
        store.migrate(&schema).await.expect("migrate");
        let store = Arc::new(store);
        let products = schema.collection("products").expect("products").clone();
        let actor = Actor { tenant: "t1".into(), key_id: "key_bench".into(), request_id: "req_bench".into() };
        let base = 1_800_000_000_000_000_i64;
        let mut clock = base;
        let id = |i: usize| format!("0190a3c2-7b1e-7c3d-9a51-{i:012}");

        let started = Instant::now();
        let rows_before: i64 = if loaded_before {
            let conn = rusqlite::Connection::open(&path).expect("open for count");
            conn.query_row("select count(*) from versions", [], |r| r.get(0)).expect("count")
        } else {
            0
        };
        let reuse = rows_before == (records * versions) as i64;
        assert!(!loaded_before || reuse, "{} holds {rows_before} versions, not R×V", path.display());
        for i in (0..records).filter(|_| !reuse) {
            clock += 1_000;
            let now = Timestamp::from_micros(clock);
            let values = Values::from([
                ("sku".to_string(), FieldValue::String(format!("SKU-{i:08}"))),
                ("name".to_string(), FieldValue::String(format!("Product number {i} with a name of some length"))),
                ("n".to_string(), FieldValue::Integer(0)),
            ]);
            let record = Record {
                tenant: "t1".into(),
                collection: "products".into(),
                id: id(i),
                version: 1,
                created_at: now,
                updated_at: now,
                deletion: None,
                archive: None,
                legal_hold: false,
                values,
            };
            store.create_record(&actor, &products, record, None).await.expect("create");
        }
        // Each round patches every record once, in a random order: the versions in force at
        // an instant are then spread over the table as a real workload's are (in id order,
        // neighbours would sit side by side in the table, which flatters a read).
        let mut order: Vec<usize> = (0..records).collect();
        let mut shuffle = Rng(0x2545_f491_4f6c_dd1d);
        for v in (1..versions).filter(|_| !reuse) {
            for k in (1..records).rev() {
                order.swap(k, shuffle.below(k + 1));
            }
            for &i in &order {
                clock += 1_000;
                let mut patch = serde_json::Map::new();
                patch.insert("n".into(), serde_json::json!(v));
                store
                    .patch_record(&actor, &products, &id(i), None, Patch(patch), Timestamp::from_micros(clock))
                    .await
                    .expect("patch");
            }
        }
        // Every write advances the clock by 1 ms: where the load left it.
        clock = base + (records * versions) as i64 * 1_000;
        let loaded = started.elapsed();
        println!(
            "history: {records} records × {versions} versions = {} version rows, {} in {:.0} s",
            records * versions,
            if reuse { "read again" } else { "written" },
            loaded.as_secs_f64()
        );
        // Instants after every record existed: "as it was last Tuesday" of records that were
        // there. (An instant before most records were created makes an as-of list walk past
        // every later one: see docs/PERFORMANCE.md.)
        let (first, last) = (base + records as i64 * 1_000, clock);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let span = ((last - first) / 1_000) as usize;
        let instant = |rng: &mut Rng| Timestamp::from_micros(first + rng.below(span) as i64 * 1_000);

        // Storage: what the versions table and its key hold, per row.
        let conn = rusqlite::Connection::open(&path).expect("open for stats");
        // A load outruns the checkpointer: copy the WAL back first, or every read below
        // would look its pages up in a log of gigabytes (a server's checkpointer catches up).
        let _: rusqlite::Result<i64> = conn.query_row("pragma wal_checkpoint(truncate)", [], |r| r.get(0));
        let rows: i64 = conn.query_row("select count(*) from versions", [], |r| r.get(0)).expect("count");
        let body: i64 = conn.query_row("select sum(length(body)) from versions", [], |r| r.get(0)).expect("sum");
        let pages: Option<i64> = conn
            .query_row("select sum(pgsize) from dbstat where name = 'versions'", [], |r| r.get(0))
            .ok();
        match pages {
            Some(bytes) => println!(
                "storage: {:.0} bytes per version on disk (table and key: {bytes} bytes for {rows} rows; representation alone {:.0} bytes)",
                bytes as f64 / rows as f64,
                body as f64 / rows as f64
            ),
            None => println!(
                "storage: representation {:.0} bytes per version (dbstat not compiled in; database file {} bytes in all)",
                body as f64 / rows as f64,
                std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            ),
        }
        drop(conn);

        // Wall time moves with whatever else the machine runs; the process's CPU time (all
        // its threads, from /proc) much less: both are printed.
        for round in 0..2 {
            // GET by id.
            let m = Meter::start();
            for _ in 0..reads {
                let i = rng.below(records);
                store.get_record("t1", &products, &id(i)).await.expect("get").expect("found");
            }
            let plain = m.per_op(reads);
            let m = Meter::start();
            for _ in 0..reads {
                let (i, t) = (rng.below(records), instant(&mut rng));
                std::hint::black_box(store.version_row_at("t1", "products", &id(i), t).await.expect("as of"));
            }
            let as_of = m.per_op(reads);
            println!("round {round}: GET by id {}", compare(plain, as_of));

            // A list page of 50 after a random id.
            let pages = reads / 10;
            let query = |i: usize| ListQuery {
                limit: 50,
                after: Some(Position { value: SortValue::Text(id(i)), id: id(i) }),
                ..ListQuery::default()
            };
            let m = Meter::start();
            for _ in 0..pages {
                let page = store.list_records("t1", &products, &query(rng.below(records))).await.expect("list");
                std::hint::black_box(page);
            }
            let plain = m.per_op(pages);
            let m = Meter::start();
            for _ in 0..pages {
                let (i, t) = (rng.below(records), instant(&mut rng));
                std::hint::black_box(store.list_as_of("t1", &products, t, &query(i)).await.expect("as of list"));
            }
            let as_of = m.per_op(pages);
            println!("round {round}: list page (50) {}", compare(plain, as_of));

            // Where an as-of page's time goes: the rows (SQL), then reading the bodies.
            if std::env::var_os("SPLIT").is_some() {
                let mut bodies = Vec::new();
                let m = Meter::start();
                for _ in 0..pages {
                    let (i, t) = (rng.below(records), instant(&mut rng));
                    let rows = store.as_of_rows("t1", &products, t, Some(id(i)), false, 51).await.expect("rows");
                    bodies.extend(rows.into_iter().filter_map(|(_, b)| b));
                }
                let (sql, _) = m.per_op(pages);
                let m = Meter::start();
                for b in &bodies {
                    let record = tombstone_domain::history::record_from_body_text(&products, "t1", b).expect("JSON");
                    std::hint::black_box(record);
                }
                let (read, _) = m.per_op(pages);
                println!("round {round}: an as-of page: rows {sql:.1} µs, bodies into records {read:.1} µs");
            }
        }
    });
}
