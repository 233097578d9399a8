//! Soft-delete throughput of the PostgreSQL store: each operation is one transaction
//! through `PgTx` — load the record `FOR UPDATE`, ask the domain to decide, write the
//! deletion mark, append the audit entry (head row locked) and the outbox event, commit —
//! run by 1, 8 and 32 concurrent tasks over a pool of as many connections.
//!
//! Usage: `tombstone-pgstore-bench <postgres-url> [seconds per run] [records]`. The
//! database must be empty (the run script creates it). Prints one line per concurrency.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tombstone_domain::audit::{AuditAction, NewAuditEntry};
use tombstone_domain::config::Config;
use tombstone_domain::events::{EventType, record_event};
use tombstone_domain::lifecycle::{Actor, DeleteDecision, DeleteRequest, decide_delete};
use tombstone_domain::record::{FieldValue, Record, Values};
use tombstone_domain::time::Timestamp;
use tombstone_store::PgStore;

const SCHEMA: &str = r#"
[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku   = { type = "string", required = true }
name  = { type = "string" }
price = { type = "integer" }
"#;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: tombstone-pgstore-bench <postgres-url> [seconds] [records]");
    let seconds: u64 = args.next().map_or(5, |s| s.parse().expect("seconds"));
    let records: usize = args.next().map_or(60_000, |s| s.parse().expect("records"));
    let schema = Config::parse(SCHEMA, Path::new(".")).expect("schema").schema;
    let products = schema.collection("products").expect("products").clone();

    let store = Arc::new(PgStore::connect(&url, 34).await.expect("connect"));
    store.migrate(&schema).await.expect("migrate");
    // Preload, 1000 per transaction.
    let now = Timestamp::from_micros(1_767_225_600_000_000);
    for chunk in (0..records).collect::<Vec<_>>().chunks(1000) {
        let mut client = store.client().await.expect("client");
        let mut tx = store.transaction(&mut client).await.expect("tx");
        for i in chunk {
            let mut values = Values::new();
            values.insert("sku".into(), FieldValue::String(format!("SKU-{i:07}")));
            values.insert("name".into(), FieldValue::String(format!("Product {i}")));
            values.insert("price".into(), FieldValue::Integer(i64::try_from(*i).unwrap_or(0)));
            let record = Record {
                tenant: "t1".into(),
                collection: "products".into(),
                id: format!("p{i:07}"),
                version: 1,
                created_at: now,
                updated_at: now,
                deletion: None,
                archive: None,
                legal_hold: false,
                values,
            };
            tx.insert(&products, &record).await.expect("insert");
        }
        tx.commit().await.expect("commit");
    }

    // Records are handed out in a scattered order, each deleted once.
    let next = Arc::new(AtomicUsize::new(0));
    let order: Arc<Vec<usize>> = Arc::new((0..records).map(|i| (i * 7919) % records).collect());
    for clients in [1_usize, 8, 32] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (store, products, next, order) = (store.clone(), products.clone(), next.clone(), order.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = order.get(n) else { break };
                        let id = format!("p{i:07}");
                        let actor =
                            Actor { tenant: "t1".into(), key_id: "key_bench".into(), request_id: "req_bench".into() };
                        let started = Instant::now();
                        let mut client = store.client().await.expect("client");
                        let mut tx = store.transaction(&mut client).await.expect("tx");
                        let current = tx.get(&products, "t1", &id).await.expect("get").expect("record");
                        let request = DeleteRequest {
                            if_match: None,
                            reason: Some("bench".into()),
                            deletion_id: format!("del_{n}"),
                        };
                        let (mark, version) = match decide_delete(&products, &current, &request, &actor, now) {
                            DeleteDecision::SoftDelete { mark, version } => (mark, version),
                            other => panic!("unexpected decision {other:?}"),
                        };
                        let mut deleted = current;
                        deleted.deletion = Some(mark);
                        deleted.version = version;
                        deleted.updated_at = now;
                        tx.set_deletion(&products, &deleted).await.expect("set_deletion");
                        tx.append_audit(vec![NewAuditEntry {
                            at: now,
                            tenant: "t1".into(),
                            actor: "key_bench".into(),
                            action: AuditAction::Delete,
                            collection: Some("products".into()),
                            record_id: Some(id.clone()),
                            version: Some(version),
                            deletion_id: Some(format!("del_{n}")),
                            reason: Some("bench".into()),
                            request_id: Some("req_bench".into()),
                            hold_id: None,
                            case: None,
                        }])
                        .await
                        .expect("audit");
                        tx.append_events(vec![record_event(EventType::Deleted, &products, &deleted, "req_bench", now)])
                            .await
                            .expect("event");
                        tx.commit().await.expect("commit");
                        latencies.push(started.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let started = Instant::now();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("task"));
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "soft-delete clients={clients:<2} ops={:<6} tps={:>8.0} p50={:.2}ms p99={:.2}ms",
            latencies.len(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
        );
    }
    match store.verify_audit().await.expect("verify") {
        Ok(n) => println!("audit chain verifies: {n} entries"),
        Err(e) => panic!("audit chain broken: {e}"),
    }
}
