//! The PostgreSQL driver question: the soft-delete transaction's SQL, identical for each
//! driver, through tokio-postgres (deadpool pool; statements one after the other, and
//! pipelined as the store sends them) and through sqlx (`PgPool`, whose connections run
//! one statement at a time). Without Tombstone's store code around it, so only the driver
//! differs.
//!
//! Usage: `drivers <postgres-url of an empty database> [seconds per run] [records]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SETUP: &str = "
create table rec_products (
    tenant text collate \"C\" not null, id text collate \"C\" not null, version bigint not null,
    created_at bigint not null, updated_at bigint not null, deleted_at bigint, deleted_by text,
    delete_reason text, deletion_id text, purge_at bigint, f_sku text collate \"C\", f_name text collate \"C\",
    primary key (tenant, id));
create unique index ux_products_sku on rec_products (tenant, f_sku) where deleted_at is null;
create index ix_products_active on rec_products (tenant, id) where deleted_at is null;
create index ix_products_deleted on rec_products (tenant, deleted_at, id) where deleted_at is not null;
create table audit (seq bigint primary key, at bigint not null, tenant text not null, action text not null,
    record_id text, prev_hash text not null, hash text not null);
create table audit_head (id int primary key, seq bigint not null, hash text not null);
insert into audit_head values (1, 0, 'genesis');
create table outbox (seq bigint generated always as identity primary key, type text not null,
    tenant text not null, record_id text not null, data json);
";

const GET: &str = "select version from rec_products where tenant = $1 and id = $2 for update";
const MARK: &str = "update rec_products set version = $3, updated_at = $4::bigint, deleted_at = $4::bigint, deleted_by = 'key', delete_reason = 'bench', deletion_id = $5, purge_at = $4::bigint + 1000 where tenant = $1 and id = $2";
const HEAD: &str = "select seq, hash from audit_head where id = 1 for update";
const AUDIT: &str = "insert into audit (seq, at, tenant, action, record_id, prev_hash, hash) values ($1, $2, 't1', 'delete', $3, $4, $5)";
const MOVE: &str = "update audit_head set seq = $1, hash = $2 where id = 1";
const EVENT: &str =
    "insert into outbox (type, tenant, record_id, data) values ('record.deleted', 't1', $1, $2) returning seq";

/// The chain's next hash (a stand-in for the domain's sha256 over the canonical form:
/// the same for every driver).
fn next_hash(prev: &str, seq: i64) -> String {
    format!("{:016x}", {
        let mut h: u64 = 1469598103934665603;
        for b in prev.bytes().chain(seq.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
        }
        h
    })
}

#[derive(Clone, Copy, Debug)]
enum Driver {
    TokioPostgres,
    TokioPostgresPipelined,
    Sqlx,
}

async fn run_tokio(pool: &deadpool_postgres::Pool, id: &str, n: usize, pipelined: bool) {
    let mut client = pool.get().await.expect("client");
    let tx = client.transaction().await.expect("begin");
    let (get, mark, head, audit, mv, event) = (
        tx.prepare_cached(GET).await.unwrap(),
        tx.prepare_cached(MARK).await.unwrap(),
        tx.prepare_cached(HEAD).await.unwrap(),
        tx.prepare_cached(AUDIT).await.unwrap(),
        tx.prepare_cached(MOVE).await.unwrap(),
        tx.prepare_cached(EVENT).await.unwrap(),
    );
    let version: i64 = tx.query_one(&get, &[&"t1", &id]).await.unwrap().get(0);
    let deletion = format!("del_{n}");
    let now = 1_767_225_600_000_000_i64;
    tx.execute(&mark, &[&"t1", &id, &(version + 1), &now, &deletion]).await.unwrap();
    let data = serde_json::json!({ "id": id, "version": version + 1 });
    if pipelined {
        let row = tx.query_one(&head, &[]).await.unwrap();
        let (seq, prev): (i64, String) = (row.get::<_, i64>(0) + 1, row.get(1));
        let hash = next_hash(&prev, seq);
        let audit_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&seq, &now, &id, &prev, &hash];
        let move_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&seq, &hash];
        let event_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &data];
        let (a, b, c) = tokio::join!(
            tx.execute(&audit, &audit_params),
            tx.execute(&mv, &move_params),
            tx.query_one(&event, &event_params),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
    } else {
        let row = tx.query_one(&head, &[]).await.unwrap();
        let (seq, prev): (i64, String) = (row.get::<_, i64>(0) + 1, row.get(1));
        let hash = next_hash(&prev, seq);
        tx.execute(&audit, &[&seq, &now, &id, &prev, &hash]).await.unwrap();
        tx.execute(&mv, &[&seq, &hash]).await.unwrap();
        tx.query_one(&event, &[&id, &data]).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn run_sqlx(pool: &sqlx::PgPool, id: &str, n: usize) {
    use sqlx::Row;
    let mut tx = pool.begin().await.expect("begin");
    let version: i64 = sqlx::query(GET).bind("t1").bind(id).fetch_one(&mut *tx).await.unwrap().get(0);
    let now = 1_767_225_600_000_000_i64;
    sqlx::query(MARK)
        .bind("t1")
        .bind(id)
        .bind(version + 1)
        .bind(now)
        .bind(format!("del_{n}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let row = sqlx::query(HEAD).fetch_one(&mut *tx).await.unwrap();
    let (seq, prev): (i64, String) = (row.get::<i64, _>(0) + 1, row.get(1));
    let hash = next_hash(&prev, seq);
    sqlx::query(AUDIT).bind(seq).bind(now).bind(id).bind(&prev).bind(&hash).execute(&mut *tx).await.unwrap();
    sqlx::query(MOVE).bind(seq).bind(&hash).execute(&mut *tx).await.unwrap();
    let data = serde_json::json!({ "id": id, "version": version + 1 });
    sqlx::query(EVENT).bind(id).bind(sqlx::types::Json(data)).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: drivers <postgres-url> [seconds] [records]");
    let seconds: u64 = args.next().map_or(4, |s| s.parse().expect("seconds"));
    let records: usize = args.next().map_or(100_000, |s| s.parse().expect("records"));

    let config: tokio_postgres::Config = url.parse().expect("url");
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    let deadpool = deadpool_postgres::Pool::builder(manager).max_size(32).build().expect("pool");
    let sqlx_pool = sqlx::postgres::PgPoolOptions::new().max_connections(32).connect(&url).await.expect("sqlx pool");
    {
        let client = deadpool.get().await.unwrap();
        client.batch_execute(SETUP).await.expect("setup");
        client
            .execute(
                "insert into rec_products (tenant, id, version, created_at, updated_at, f_sku, f_name)
                 select 't1', 'p' || lpad(i::text, 7, '0'), 1, 0, 0, 'SKU-' || i, 'Product ' || i from generate_series(0, $1 - 1) i",
                &[&i32::try_from(records).unwrap()],
            )
            .await
            .expect("preload");
        client.batch_execute("vacuum analyze").await.unwrap();
    }

    let next = Arc::new(AtomicUsize::new(0));
    for clients in [1_usize, 8, 32] {
        for driver in [Driver::TokioPostgres, Driver::TokioPostgresPipelined, Driver::Sqlx] {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let (deadpool, sqlx_pool, next) = (deadpool.clone(), sqlx_pool.clone(), next.clone());
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        while Instant::now() < deadline {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= records {
                                break;
                            }
                            let id = format!("p{:07}", (n * 7919) % records);
                            let started = Instant::now();
                            match driver {
                                Driver::TokioPostgres => run_tokio(&deadpool, &id, n, false).await,
                                Driver::TokioPostgresPipelined => run_tokio(&deadpool, &id, n, true).await,
                                Driver::Sqlx => run_sqlx(&sqlx_pool, &id, n).await,
                            }
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
                "{:<24} clients={clients:<2} ops={:<6} tps={:>7.0} p50={:.2}ms p99={:.2}ms",
                format!("{driver:?}"),
                latencies.len(),
                latencies.len() as f64 / elapsed.as_secs_f64(),
                pct(0.50),
                pct(0.99),
            );
        }
    }
}
