//! As-of reads against plain reads on SQLite (SPEC §14), through the store API: R records
//! with V versions each (a create and V-1 patches, so R×V version rows), then
//! - GET by id: `get_record` (no cache) against `version_row_at` at a random instant;
//! - a list page (limit 50, after a random id): `list_records` against `list_as_of` at a
//!   random instant;
//! - storage per version: the bytes the `versions` table and its key take, per row.
//!
//! Not a test: it prints figures. `cargo bench -p tombstone-store --bench history`
//! (R=100000, V=10 by default: 1,000,000 version rows; `R=… V=… READS=…`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let (records, versions, reads) = (env("R", 100_000), env("V", 10), env("READS", 20_000));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench.db");
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
        for i in 0..records {
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
        for v in 1..versions {
            for i in 0..records {
                clock += 1_000;
                let mut patch = serde_json::Map::new();
                patch.insert("n".into(), serde_json::json!(v));
                store
                    .patch_record(&actor, &products, &id(i), None, Patch(patch), Timestamp::from_micros(clock))
                    .await
                    .expect("patch");
            }
        }
        let loaded = started.elapsed();
        println!(
            "history: {records} records × {versions} versions = {} version rows, written in {:.0} s",
            records * versions,
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

        for round in 0..2 {
            // GET by id.
            let started = Instant::now();
            for _ in 0..reads {
                let i = rng.below(records);
                store.get_record("t1", &products, &id(i)).await.expect("get").expect("found");
            }
            let plain = per_op(started.elapsed(), reads);
            let started = Instant::now();
            for _ in 0..reads {
                let (i, t) = (rng.below(records), instant(&mut rng));
                std::hint::black_box(store.version_row_at("t1", "products", &id(i), t).await.expect("as of"));
            }
            let as_of = per_op(started.elapsed(), reads);
            println!("round {round}: GET by id {plain:.1} µs, as_of {as_of:.1} µs ({:.2}×)", as_of / plain);

            // A list page of 50 after a random id.
            let pages = reads / 10;
            let query = |i: usize| ListQuery {
                limit: 50,
                after: Some(Position { value: SortValue::Text(id(i)), id: id(i) }),
                ..ListQuery::default()
            };
            let started = Instant::now();
            for _ in 0..pages {
                let page = store.list_records("t1", &products, &query(rng.below(records))).await.expect("list");
                std::hint::black_box(page);
            }
            let plain = per_op(started.elapsed(), pages);
            let started = Instant::now();
            for _ in 0..pages {
                let (i, t) = (rng.below(records), instant(&mut rng));
                std::hint::black_box(store.list_as_of("t1", &products, t, &query(i)).await.expect("as of list"));
            }
            let as_of = per_op(started.elapsed(), pages);
            println!("round {round}: list page (50) {plain:.1} µs, as_of {as_of:.1} µs ({:.2}×)", as_of / plain);
        }
    });
}
