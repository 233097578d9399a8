//! The storage conformance suite: every test is written once against `Arc<dyn Store>` and
//! runs against every backend [`each_store`] yields. Today that is a fresh SQLite store in a
//! temporary directory; a PostgreSQL store joins with one line there.
//!
//! The tests speak only the [`Store`] trait and domain values (schemas parsed from TOML,
//! `Record` values built directly), with explicit timestamps instead of a clock. One module
//! per area of the trait:
//!
//! - `migrations`: the schema of a store (`migrate`);
//! - `records`: create, get, list, patch, delete, restore, tenants (`RecordStore`);
//! - `deletions`: plans, cascades, operations, eventual cascades, the trash (`DeletionStore`);
//! - `retention`: holds, purge, erasure, counts (`RetentionStore`);
//! - `archive`: archive and unarchive, archived records in lists and counts, the
//!   `archive_after` batches (`RecordStore`, `RetentionStore`);
//! - `events`: the outbox, its followers and the audit chain (`EventStore`);
//! - `history`: versions, as-of reads and lists, revert, purge and erasure of history (`HistoryStore`);
//! - `webhooks`: endpoints, fan-out, deliveries, clean-up (`EventStore`);
//! - `keys`: API keys (`KeyStore`);
//! - `idempotency`: idempotency keys (`RecordStore`);
//! - `concurrency`: races that must have exactly one winner;
//! - `properties`: random sequences of writes against a model;
//! - `search`: lists narrowed by a search's candidates, as ids or as fingerprints;
//! - `store`: health, metadata and the read cache (`Store`);
//! - `workers`: leases and relay positions (`WorkerStore`).

mod archive;
#[path = "../common/mod.rs"]
mod common;
mod concurrency;
mod deletions;
mod events;
mod history;
mod idempotency;
mod keys;
mod migrations;
mod properties;
mod records;
mod retention;
mod search;
mod store;
mod webhooks;
mod workers;

use common::{HOUR, SECOND, actor, at, coll, new_record, s, schema, values};
use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use tombstone_domain::audit::AuditEntry;
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::deletion::RecordRef;
use tombstone_domain::events::Event;
use tombstone_domain::lifecycle::{Actor, DeleteRequest, IfMatch};
use tombstone_domain::query::{DeletedScope, FieldFilter, ListQuery, Sort, SortKey};
use tombstone_domain::record::{DeletionMark, FieldValue, Patch, Record, Values};
use tombstone_domain::scope::parse_scopes;
use tombstone_domain::time::Timestamp;
use tombstone_store::{
    AuditQuery, DeleteOutcome, EventQuery, IDEMPOTENCY_STALE_MICROS, IDEMPOTENCY_TTL_MICROS, IdempotencyClaim,
    IdempotencyKey, MemoryCache, PgStore, RestoreOutcome, ScratchDatabase, SqliteStore, Store, StoreError, StoredKey,
    StoredResponse,
};

/// Runs `test` once against a fresh, empty store of every backend.
async fn each_store<F, Fut>(test: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("conformance.db")).expect("open sqlite store");
    test(Arc::new(sqlite)).await;
    if let Some(database) = postgres_database().await {
        let store = PgStore::connect(database.url(), 24).await.expect("connect to the test database");
        test(Arc::new(store)).await;
    }
}

/// A fresh database on the test server (`TOMBSTONE_TEST_POSTGRES_URL`, which
/// `scripts/test` always sets); `None` without one, after saying so once per test.
async fn postgres_database() -> Option<ScratchDatabase> {
    let Ok(admin) = std::env::var("TOMBSTONE_TEST_POSTGRES_URL") else {
        eprintln!("TOMBSTONE_TEST_POSTGRES_URL is not set: this test ran on SQLite only");
        return None;
    };
    Some(ScratchDatabase::create(&admin).await.expect("create a test database"))
}

/// Runs `test` once per backend with two stores over one fresh, empty database, as two
/// processes (or replicas) would open it: the first with a [`MemoryCache`] in front of its
/// reads, the second without.
async fn each_store_pair<F, Fut>(test: F)
where
    F: Fn(Arc<dyn Store>, Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("conformance.db");
    let cache = Arc::new(MemoryCache::new(1000, std::time::Duration::from_secs(3600)));
    let cached = SqliteStore::open(&path).expect("open sqlite store").with_cache(cache).expect("cache");
    let plain = SqliteStore::open(&path).expect("open sqlite store again");
    test(Arc::new(cached), Arc::new(plain)).await;
    if let Some(database) = postgres_database().await {
        let cache = Arc::new(MemoryCache::new(1000, std::time::Duration::from_secs(3600)));
        let first = PgStore::connect(database.url(), 8).await.expect("connect to the test database");
        let first = first.with_cache(cache).await.expect("cache");
        let second = PgStore::connect(database.url(), 8).await.expect("connect to the test database");
        test(Arc::new(first), Arc::new(second)).await;
    }
}

fn delete_req(deletion_id: &str) -> DeleteRequest {
    DeleteRequest { if_match: None, reason: None, deletion_id: deletion_id.to_string() }
}

fn patch(body: serde_json::Value) -> Patch {
    match body {
        serde_json::Value::Object(map) => Patch(map),
        other => panic!("a patch is an object, not {other}"),
    }
}

async fn create(store: &Arc<dyn Store>, c: &Arc<Collection>, tenant: &str, id: &str, vals: Values, now: Timestamp) {
    let record = new_record(tenant, c, id, vals, now);
    let created = store.create_record(&actor(tenant), c, record.clone(), None).await.expect("create");
    assert_eq!(created, record);
}

async fn get(store: &Arc<dyn Store>, c: &Arc<Collection>, tenant: &str, id: &str) -> Option<Record> {
    store.get_record(tenant, c, id).await.expect("get")
}

async fn must_get(store: &Arc<dyn Store>, c: &Arc<Collection>, tenant: &str, id: &str) -> Record {
    get(store, c, tenant, id).await.unwrap_or_else(|| panic!("{id} should exist in {tenant}"))
}

async fn soft_delete(store: &Arc<dyn Store>, c: &Arc<Collection>, tenant: &str, id: &str, now: Timestamp) -> String {
    let deletion_id = format!("del_{tenant}_{}_{id}_{}", c.name, now.as_micros());
    match store.delete_record(&actor(tenant), c, id, delete_req(&deletion_id), now).await {
        Ok(DeleteOutcome::SoftDeleted { deletion_id: got, .. }) => assert_eq!(got, deletion_id),
        other => panic!("expected a soft delete of {id}, got {other:?}"),
    }
    deletion_id
}

fn query(scope: DeletedScope, key: SortKey, descending: bool, limit: u32) -> ListQuery {
    ListQuery { scope, sort: Sort { key, descending }, limit, ..ListQuery::default() }
}

/// Every id a query yields, following cursors; asserts no page is over-long and that
/// the walk ends.
async fn walk(store: &Arc<dyn Store>, c: &Arc<Collection>, tenant: &str, mut q: ListQuery) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..1000 {
        let page = store.list_records(tenant, c, &q).await.expect("list");
        assert!(page.items.len() <= q.limit as usize, "page longer than limit {}", q.limit);
        ids.extend(page.items.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => {
                assert!(!page.items.is_empty(), "a cursor after an empty page");
                q.after = Some(next);
            }
            None => return ids,
        }
    }
    panic!("pagination does not end");
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn idem(tenant: &str, api_key: &str, k: &str) -> IdempotencyKey {
    IdempotencyKey { tenant: tenant.to_string(), api_key: api_key.to_string(), key: k.to_string() }
}

fn response(id: &str) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![("location".into(), format!("/v1/customers/{id}")), ("etag".into(), "\"v1\"".into())],
        body: format!("{{\"id\":\"{id}\"}}"),
        record: Some(("customers".into(), id.to_string())),
    }
}

/// Every event of a tenant, oldest first.
async fn events_of(store: &Arc<dyn Store>, tenant: &str) -> Vec<Event> {
    store.list_events(tenant, &EventQuery { limit: 10_000, ..EventQuery::default() }).await.expect("list events")
}

/// Every audit entry of a tenant, oldest first.
async fn audit_of(store: &Arc<dyn Store>, tenant: &str) -> Vec<AuditEntry> {
    store.list_audit(tenant, &AuditQuery { limit: 10_000, ..AuditQuery::default() }).await.expect("list audit")
}

/// A record named by collection and id.
fn rr(collection: &str, id: &str) -> RecordRef {
    RecordRef::new(collection, id)
}

/// The refs, sorted: plans and operations list records in an order of their own.
fn refs_sorted(mut refs: Vec<RecordRef>) -> Vec<RecordRef> {
    refs.sort();
    refs
}

fn reference(id: &str) -> FieldValue {
    FieldValue::Ref(id.to_string())
}

/// Deletes a record with a request naming `deletion_id`.
async fn delete_as(
    store: &Arc<dyn Store>,
    c: &Arc<Collection>,
    tenant: &str,
    id: &str,
    deletion_id: &str,
    now: Timestamp,
) -> Result<DeleteOutcome, StoreError> {
    store.delete_record(&actor(tenant), c, id, delete_req(deletion_id), now).await
}

fn plus(t: Timestamp, micros: i64) -> Timestamp {
    Timestamp::from_micros(t.as_micros() + micros)
}

/// Two collections with unique sets: a case-insensitive one, and a plain and a composite one.
const PEOPLE: &str = r#"
[collections.customers]
unique = [["email"]]

[collections.customers.fields]
email = { type = "string", required = true, case_insensitive = true }
name  = { type = "string" }

[collections.products]
unique = [["sku"], ["maker", "model"]]

[collections.products.fields]
sku   = { type = "string", required = true }
maker = { type = "string" }
model = { type = "integer" }
"#;

fn is_conflict(result: &Result<Record, StoreError>, with: &str, on: &[&str]) -> bool {
    matches!(result, Err(StoreError::UniqueConflict { conflicting_id, fields }) if conflicting_id == with && fields == on)
}
