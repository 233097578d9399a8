//! What a single-record write costs the SQLite store, end to end through the store API
//! (writer thread, rules, audit entry, outbox event — and, since history, the version
//! row): N creates, then N soft DELETEs, one at a time. Not a test: it prints figures.
//!
//! `cargo bench -p tombstone-store --bench write_cost` (N=20000 by default; `N=…`).
//! Built the same way at two commits, it measures what a change to the write path costs.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tombstone_domain::config::Config;
use tombstone_domain::lifecycle::{Actor, DeleteRequest};
use tombstone_domain::record::{FieldValue, Record, Values};
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

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let schema = Config::parse(SCHEMA, Path::new(".")).expect("schema").schema;
        let store = SqliteStore::open(&dir.path().join("bench.db")).expect("open");
        store.migrate(&schema).await.expect("migrate");
        let store: Arc<dyn Store> = Arc::new(store);
        let products = schema.collection("products").expect("products").clone();
        let actor = Actor { tenant: "t1".into(), key_id: "key_bench".into(), request_id: "req_bench".into() };
        let base = Timestamp::from_micros(1_800_000_000_000_000);
        let started = Instant::now();
        for i in 0..n {
            let now = Timestamp::from_micros(base.as_micros() + i as i64);
            let values = Values::from([
                ("sku".to_string(), FieldValue::String(format!("SKU-{i:08}"))),
                ("name".to_string(), FieldValue::String(format!("Product number {i} with a name of some length"))),
                ("n".to_string(), FieldValue::Integer(i as i64)),
            ]);
            let record = Record {
                tenant: "t1".into(),
                collection: "products".into(),
                id: format!("r{i:08}"),
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
        let create = started.elapsed();
        let started = Instant::now();
        for i in 0..n {
            let now = Timestamp::from_micros(base.as_micros() + (n + i) as i64);
            let request = DeleteRequest { if_match: None, reason: None, deletion_id: format!("del_{i:08}") };
            store.delete_record(&actor, &products, &format!("r{i:08}"), request, now).await.expect("delete");
        }
        let delete = started.elapsed();
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!("write_cost N={n}: create {:.1} µs/record, soft DELETE {:.1} µs/record", per(create), per(delete));
    });
}
