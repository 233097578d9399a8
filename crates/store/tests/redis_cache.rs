//! The shared cache in Redis in front of PostgreSQL stores: a write through one store is
//! seen through the others at once; the fill race is closed (a fill that read before an
//! invalidation is never written after it); Redis failing or slow does not fail reads or
//! writes, and nothing an invalidation missed is served once Redis answers again.
//!
//! Needs PostgreSQL (`TOMBSTONE_TEST_POSTGRES_URL`) and Redis (`TOMBSTONE_TEST_REDIS_URL`);
//! `scripts/test` starts both and sets `TOMBSTONE_TEST_REQUIRE_REDIS=1`, under which a
//! missing URL fails the test instead of skipping it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tombstone_domain::config::Collection;
use tombstone_domain::lifecycle::DeleteRequest;
use tombstone_domain::record::Record;
use tombstone_store::prelude::*;
use tombstone_store::redis_cache::{Lookup, OP_TIMEOUT, RETRY_AFTER};
use tombstone_store::{DeleteOutcome, PgStore};

use common::{SECOND, TestDb, actor, at, coll, new_record, s, schema, values};

/// The Redis of the tests; `None` (after a notice) only outside `scripts/test` and CI.
fn redis_url() -> Option<String> {
    if let Ok(url) = std::env::var("TOMBSTONE_TEST_REDIS_URL") {
        return Some(url);
    }
    let required = std::env::var("TOMBSTONE_TEST_REQUIRE_REDIS").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok();
    assert!(!required, "TOMBSTONE_TEST_REDIS_URL is not set, and this run requires the Redis tests (scripts/test, CI)");
    eprintln!("TOMBSTONE_TEST_REDIS_URL is not set: this Redis test is skipped (scripts/test starts a redis-server)");
    None
}

async fn redis_store(db: &TestDb, redis: &str) -> Arc<PgStore> {
    let store = PgStore::connect(db.url(), 4).await.expect("connect");
    Arc::new(store.with_redis(redis, Duration::from_secs(3600)).await.expect("redis cache"))
}

async fn setup(test: &str, n: usize) -> Option<(TestDb, String, Vec<Arc<PgStore>>, Arc<Collection>)> {
    let redis = redis_url()?;
    let db = TestDb::create(test).await?;
    let sch = schema("[collections.items.fields]\nname = { type = \"string\" }\n");
    let mut stores = Vec::new();
    for _ in 0..n {
        let store = redis_store(&db, &redis).await;
        store.migrate(&sch).await.unwrap();
        stores.push(store);
    }
    Some((db, redis, stores, coll(&sch, "items")))
}

async fn get(store: &PgStore, c: &Arc<Collection>, id: &str) -> Option<Record> {
    RecordStore::get_record(store, "t1", c, id).await.expect("get")
}

async fn create(store: &PgStore, c: &Arc<Collection>, id: &str, name: &str) {
    let record = new_record("t1", c, id, values(&[("name", s(name))]), at(0));
    RecordStore::create_record(store, &actor("t1"), c, record, None).await.expect("create");
}

async fn delete(store: &PgStore, c: &Arc<Collection>, id: &str, n: i64) {
    let request = DeleteRequest { if_match: None, reason: None, deletion_id: format!("del_{id}_{n}") };
    let outcome =
        RecordStore::delete_record(store, &actor("t1"), c, id, request, at(n * SECOND)).await.expect("delete");
    assert!(matches!(outcome, DeleteOutcome::SoftDeleted { .. }), "{outcome:?}");
}

#[tokio::test]
async fn a_write_through_one_store_is_seen_through_the_others_at_once() {
    let Some((_db, _redis, stores, items)) = setup("redis_cache", 3).await else { return };
    let (a, b, c) = (&stores[0], &stores[1], &stores[2]);
    assert_eq!(get(b, &items, "x").await, None, "the absence is cached");
    create(a, &items, "x", "one").await;
    assert!(get(b, &items, "x").await.is_some(), "the cached absence was invalidated by A's create");
    assert!(get(c, &items, "x").await.is_some());
    // B and C now serve it from Redis; A deletes; both see it deleted with no wait at all.
    for _ in 0..3 {
        assert!(!get(b, &items, "x").await.unwrap().is_deleted());
    }
    delete(a, &items, "x", 1).await;
    assert!(get(b, &items, "x").await.unwrap().is_deleted());
    assert!(get(c, &items, "x").await.unwrap().is_deleted());
}

#[tokio::test]
async fn a_fill_that_read_before_a_delete_is_not_written_after_it() {
    let Some((_db, _redis, stores, items)) = setup("redis_cache", 2).await else { return };
    let (reader, writer) = (&stores[0], &stores[1]);
    create(writer, &items, "x", "one").await;
    let cache = reader.redis_cache().expect("a Redis cache").clone();
    let key = ("t1".to_string(), "items".to_string(), "x".to_string());

    // The reader misses and reads the database: the record, active...
    let Lookup::Miss(token) = cache.lookup(&key).await else { panic!("a miss expected") };
    let old = get(writer, &items, "x").await;
    assert!(old.as_ref().is_some_and(|r| !r.is_deleted()));
    // ...is paused; meanwhile the delete commits and invalidates...
    delete(writer, &items, "x", 1).await;
    // ...and the paused fill is refused: the old record never lands after the delete.
    assert!(!cache.fill(&key, token, old.as_ref()).await, "a stale fill must be refused");
    assert!(get(reader, &items, "x").await.unwrap().is_deleted());
    assert!(get(reader, &items, "x").await.unwrap().is_deleted(), "and the fresh state is what is cached");

    // A fill with a current token lands (the test above can fail).
    let Lookup::Hit(_) = cache.lookup(&key).await else { panic!("the fresh fill should be cached") };
    cache.invalidate(std::slice::from_ref(&key)).await;
    let Lookup::Miss(token) = cache.lookup(&key).await else { panic!("a miss expected") };
    assert!(cache.fill(&key, token, None).await);
    assert!(matches!(cache.lookup(&key).await, Lookup::Hit(None)));
}

#[tokio::test]
async fn invalidations_lost_while_redis_is_unreachable_are_not_served_once_it_is_back() {
    let Some((db, redis, stores, items)) = setup("redis_cache", 1).await else { return };
    let reader = &stores[0];
    // The writer reaches Redis through a link the test can cut (a network failure: Redis
    // keeps its entries); the reader reaches it directly and never sees a failure.
    let link = Link::to(redis.trim_start_matches("redis://")).await;
    let writer = redis_store(&db, &format!("redis://{}", link.addr)).await;
    writer.migrate(&schema("[collections.items.fields]\nname = { type = \"string\" }\n")).await.unwrap();
    create(&writer, &items, "x", "one").await;
    assert!(!get(reader, &items, "x").await.unwrap().is_deleted());
    assert!(!get(reader, &items, "x").await.unwrap().is_deleted(), "cached in Redis now");

    // The link is cut while the writer deletes: the delete answers, within the bounded
    // Redis timeout, and its invalidation is lost.
    link.cut();
    let started = Instant::now();
    delete(&writer, &items, "x", 1).await;
    assert!(started.elapsed() < OP_TIMEOUT * 4, "the delete waited {:?} for Redis", started.elapsed());
    assert!(writer.redis_cache().unwrap().is_suspect(), "the lost invalidation is known");
    assert!(get(&writer, &items, "x").await.unwrap().is_deleted(), "the writer reads the database meanwhile");

    // The link is back. The writer's first use of Redis after it (a request, or the
    // server's sync_cache once a second, which heals first) moves the epoch before
    // anything else. (sync_cache would also invalidate the delete again from the outbox:
    // what is tested here is the epoch alone.)
    link.restore();
    tokio::time::sleep(RETRY_AFTER + Duration::from_millis(100)).await;
    assert!(writer.redis_cache().unwrap().heal().await, "Redis is reachable again");
    assert!(!writer.redis_cache().unwrap().is_suspect());
    // ...so the entry that missed its invalidation is never served, by anyone.
    assert!(get(reader, &items, "x").await.unwrap().is_deleted(), "a stale entry was served after Redis came back");
    assert!(get(&writer, &items, "x").await.unwrap().is_deleted());
}

/// A TCP link to Redis that can be cut (open connections dropped, new ones refused at
/// once) and restored.
struct Link {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    async fn to(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (upstream, c, o) = (upstream.to_string(), cut.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let upstream = upstream.clone();
                o.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self { addr, cut, open, accept }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test]
async fn with_redis_down_reads_and_writes_answer_from_the_database() {
    let Some((_db, _redis, _stores, items)) = setup("redis_cache", 0).await else { return };
    let db = TestDb::create("redis_cache").await.unwrap();
    // Nothing listens on this port: every Redis call fails at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = redis_store(&db, &format!("redis://127.0.0.1:{port}")).await;
    let sch = schema("[collections.items.fields]\nname = { type = \"string\" }\n");
    store.migrate(&sch).await.unwrap();
    let started = Instant::now();
    create(&store, &items, "x", "one").await;
    assert_eq!(get(&store, &items, "x").await.unwrap().values["name"], s("one"));
    delete(&store, &items, "x", 1).await;
    assert!(get(&store, &items, "x").await.unwrap().is_deleted());
    assert!(started.elapsed() < Duration::from_secs(3), "Redis being down must not hold requests");
    assert!(store.redis_cache().unwrap().is_suspect());
}
