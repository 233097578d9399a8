//! Memory caches of several processes on one PostgreSQL database: each store's writes
//! reach the others' caches through `NOTIFY`, heard by their `LISTEN` connections, with no
//! `sync_cache` call; a lost `LISTEN` connection drops the whole cache once it is back.
//!
//! Runs when `TOMBSTONE_TEST_POSTGRES_URL` names a server whose user may create databases
//! (`scripts/test` sets it); without it every test says so and passes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tombstone_domain::config::Collection;
use tombstone_domain::lifecycle::DeleteRequest;
use tombstone_domain::record::Record;
use tombstone_store::prelude::*;
use tombstone_store::{DeleteOutcome, MemoryCache, PgStore};

use common::{SECOND, TestDb, actor, at, coll, new_record, s, schema, values};

/// How long another process may still serve the old record: a correctness bound for the
/// tests, far above what is measured (docs/PERFORMANCE.md), not a timing benchmark.
const BOUND: Duration = Duration::from_secs(2);

async fn cached(db: &TestDb) -> Arc<dyn Store> {
    let cache = Arc::new(MemoryCache::new(1000, Duration::from_secs(3600)));
    let store = PgStore::connect(db.url(), 4).await.expect("connect").with_cache(cache).await.expect("cache");
    Arc::new(store)
}

async fn get(store: &Arc<dyn Store>, c: &Arc<Collection>, id: &str) -> Option<Record> {
    store.get_record("t1", c, id).await.expect("get")
}

/// Polls `store` until `done` holds for the record, failing after [`BOUND`]; returns how
/// long it took.
async fn until(
    store: &Arc<dyn Store>,
    c: &Arc<Collection>,
    id: &str,
    done: impl Fn(Option<&Record>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if done(get(store, c, id).await.as_ref()) {
            return start.elapsed();
        }
        assert!(start.elapsed() < BOUND, "{id}: the other store still served the old state after {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_write_through_one_store_reaches_the_others_caches_without_polling() {
    let Some(db) = TestDb::create("postgres_cache").await else { return };
    let sch = schema("[collections.items.fields]\nname = { type = \"string\" }\n");
    let (a, b, c) = (cached(&db).await, cached(&db).await, cached(&db).await);
    for store in [&a, &b, &c] {
        store.migrate(&sch).await.unwrap();
    }
    let items = coll(&sch, "items");

    // B and C cache the absence, then the record A creates.
    assert_eq!(get(&b, &items, "x").await, None);
    assert_eq!(get(&c, &items, "x").await, None);
    let record = new_record("t1", &items, "x", values(&[("name", s("one"))]), at(0));
    a.create_record(&actor("t1"), &items, record, None).await.unwrap();
    for other in [&b, &c] {
        until(other, &items, "x", |r| r.is_some()).await;
    }

    // A deletes: B and C stop serving it as active, without anyone calling sync_cache.
    let request = DeleteRequest { if_match: None, reason: None, deletion_id: "del_1".into() };
    let outcome = a.delete_record(&actor("t1"), &items, "x", request, at(SECOND)).await.unwrap();
    assert!(matches!(outcome, DeleteOutcome::SoftDeleted { .. }), "{outcome:?}");
    for other in [&b, &c] {
        until(other, &items, "x", |r| r.is_some_and(Record::is_deleted)).await;
    }

    // A group of many writes (more keys than one payload holds) reaches them too.
    let ids: Vec<String> = (0..300).map(|i| format!("record-with-a-rather-long-identifier-{i:04}")).collect();
    for id in &ids {
        assert_eq!(get(&b, &items, id).await, None);
    }
    let writes = ids.iter().map(|id| {
        let a = a.clone();
        let items = items.clone();
        let record = new_record("t1", &items, id, values(&[("name", s("many"))]), at(2 * SECOND));
        async move { a.create_record(&actor("t1"), &items, record, None).await.unwrap() }
    });
    futures_join_all(writes).await;
    for id in &ids {
        until(&b, &items, id, |r| r.is_some()).await;
    }
}

#[tokio::test]
async fn a_lost_listen_connection_drops_the_whole_cache_once_back() {
    let Some(db) = TestDb::create("postgres_cache").await else { return };
    let sch = schema("[collections.items.fields]\nname = { type = \"string\" }\n");
    let b = cached(&db).await;
    b.migrate(&sch).await.unwrap();
    let items = coll(&sch, "items");
    let record = new_record("t1", &items, "x", values(&[("name", s("one"))]), at(0));
    b.create_record(&actor("t1"), &items, record, None).await.unwrap();
    assert_eq!(get(&b, &items, "x").await.unwrap().values["name"], s("one"));

    // A change no notification announces (made behind the store's back, as a missed
    // notification would leave it), then the listener's connection is killed.
    let client = db.client().await;
    client.execute("update rec_items set f_name = 'two'", &[]).await.unwrap();
    assert_eq!(get(&b, &items, "x").await.unwrap().values["name"], s("one"), "still cached: nothing told the cache");
    let killed = client
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where datname = current_database() and query ilike 'listen %'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(killed, 1, "one LISTEN connection per cached store");
    until(&b, &items, "x", |r| r.is_some_and(|r| r.values["name"] == s("two"))).await;
}

/// Runs the futures concurrently, each on its own task.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for task in tasks {
        task.await.expect("a write panicked");
    }
}
