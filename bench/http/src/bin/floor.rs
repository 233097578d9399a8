//! The floor under a purge: the same rows removed and the same audit and outbox rows
//! written as a Tombstone purge pass does, by raw set-based SQL on one connection, in
//! transactions of BATCH rows with no pause, no hashing, no HTTP and nothing else
//! running. No implementation of a purge with one audit entry and one event per row can
//! go faster on this machine and this schema; the purge benchmark is read against it.
//!
//! Usage: floor DB BATCH

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch: i64 = args[2].parse().expect("batch");
    let conn = rusqlite::Connection::open(&args[1]).expect("open");
    conn.execute_batch(
        "pragma journal_mode = wal; pragma synchronous = normal; pragma secure_delete = on; pragma cache_size = -32000;
         create temp table due (n integer primary key, tenant text, id text, version integer, deletion_id text);",
    )
    .unwrap();
    let started = Instant::now();
    let mut total = 0;
    loop {
        let tx = conn.unchecked_transaction().unwrap();
        tx.execute("delete from temp.due", []).unwrap();
        let n = tx
            .execute(
                "insert into temp.due (tenant, id, version, deletion_id)
                 select tenant, id, version, deletion_id from rec_products
                 where deleted_at is not null and purge_at <= 9223372036854775807 order by purge_at limit ?1",
                [batch],
            )
            .unwrap();
        if n == 0 {
            break;
        }
        tx.execute("delete from rec_products where (tenant, id) in (select tenant, id from temp.due)", []).unwrap();
        tx.execute(
            "insert into audit (seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash)
             select (select coalesce(max(seq), 0) from audit) + n, 1, tenant, 'system:purge', 'purge', 'products', id, version,
                    deletion_id, 'recovery window elapsed', 'purge_0192aabbccddeeff0011223344556677',
                    printf('%064d', n), printf('%064d', n + 1)
             from temp.due",
            [],
        )
        .unwrap();
        tx.execute(
            "insert into outbox (id, type, tenant, collection, record_id, version, deletion_id, occurred_at, request_id, data)
             select 'evt_' || lower(hex(randomblob(16))), 'record.purged', tenant, 'products', id, version, deletion_id, 1,
                    'purge_0192aabbccddeeff0011223344556677', null
             from temp.due",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
        total += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "floor: {total} rows in {seconds:.2} s = {:.0} rows/s (raw set-based SQL, batches of {batch})",
        total as f64 / seconds
    );
}
