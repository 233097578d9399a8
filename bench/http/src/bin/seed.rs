//! Loads rows straight into a migrated Tombstone database (the bench schema's
//! `rec_products` table), far faster than through the API: `active` live records and
//! `expired` soft-deleted ones whose recovery window has already passed.
//!
//! Usage: seed DB TENANT ACTIVE EXPIRED

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (db, tenant) = (&args[1], &args[2]);
    let active: u64 = args[3].parse().expect("active");
    let expired: u64 = args[4].parse().expect("expired");
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap();
    let mut conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch("pragma journal_mode = wal; pragma synchronous = off;").unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "insert into rec_products (tenant, id, version, created_at, updated_at, deleted_at, deleted_by, deletion_id, purge_at, f_sku, f_name)
                 values (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .unwrap();
        let words = ["blue", "green", "red", "mug", "cup", "teapot", "bowl", "plate", "glass", "jar"];
        for i in 0..active + expired {
            let id = uuid::Uuid::now_v7().to_string();
            let name = format!("Product {i} {} {}", words[(i % 10) as usize], words[((i / 10) % 10) as usize]);
            let sku = format!("SKU-{i:08}");
            if i < active {
                insert
                    .execute(rusqlite::params![
                        tenant,
                        id,
                        1,
                        now,
                        None::<i64>,
                        None::<String>,
                        None::<String>,
                        None::<i64>,
                        sku,
                        name
                    ])
                    .unwrap();
            } else {
                let deleted_at = now - 40 * 86_400 * 1_000_000;
                insert
                    .execute(rusqlite::params![
                        tenant,
                        id,
                        2,
                        deleted_at,
                        deleted_at,
                        "key_seed",
                        "del_seed",
                        now - 1_000_000,
                        sku,
                        name
                    ])
                    .unwrap();
            }
        }
    }
    tx.commit().unwrap();
    println!("seeded {active} active and {expired} expired products");
}
