//! The PostgreSQL store against a real server: migrations under the advisory lock, the
//! partial unique indexes as the source of truth (with real parallel connections, where
//! the races are real), the audit head lock, the outbox's commit order, keys, the SQLSTATE
//! mapping, and list parity with SQLite's store.
//!
//! Runs when `TOMBSTONE_TEST_POSTGRES_URL` names a server whose user may create databases
//! (`scripts/test` starts a throwaway cluster and sets it); each test creates its own
//! database and drops it at the end. Without the variable every test says so and passes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::tokio_postgres;
use tombstone_domain::audit::{AuditAction, NewAuditEntry};
use tombstone_domain::config::Collection;
use tombstone_domain::events::{EventType, NewEvent};
use tombstone_domain::lifecycle::DeleteRequest;
use tombstone_domain::query::{
    Candidates, DeletedScope, FieldFilter, Fingerprints, ListQuery, Position, Sort, SortKey, fingerprint,
};
use tombstone_domain::record::{DeletionMark, FieldValue, Record, Values, fold_case};
use tombstone_domain::scope::parse_scopes;
use tombstone_domain::time::Timestamp;
use tombstone_store::prelude::*;
use tombstone_store::{AuditQuery, EventQuery, PgStore, SqliteStore, StoreError, StoredKey};

use common::{SECOND, TestDb, actor, at, coll, new_record, s, schema, values};

// ---------------------------------------------------------------------------------------
// Helpers

fn entry(tenant: &str, n: i64) -> NewAuditEntry {
    NewAuditEntry {
        at: at(n),
        tenant: tenant.to_string(),
        actor: "key_1".into(),
        action: AuditAction::Update,
        collection: Some("products".into()),
        record_id: Some(format!("r{n}")),
        version: Some(n),
        deletion_id: None,
        reason: Some(format!("reason {n}")),
        request_id: Some("req".into()),
        hold_id: None,
        case: None,
    }
}

fn event(tenant: &str, record_id: &str, n: i64) -> NewEvent {
    NewEvent {
        kind: EventType::Updated,
        tenant: tenant.to_string(),
        collection: "products".into(),
        record_id: record_id.to_string(),
        version: Some(n),
        deletion_id: None,
        occurred_at: at(n),
        request_id: Some("req".into()),
        data: Some(serde_json::json!({ "z": n, "a": record_id })),
    }
}

/// Inserts a record in its own transaction.
async fn insert(store: &PgStore, c: &Collection, r: &Record) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let mut tx = store.transaction(&mut client).await?;
    tx.insert(c, r).await?;
    tx.commit().await
}

/// Writes a record's deletion state in its own transaction.
async fn set_deletion(store: &PgStore, c: &Collection, r: &Record) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let mut tx = store.transaction(&mut client).await?;
    tx.set_deletion(c, r).await?;
    tx.commit().await
}

fn mark(deletion_id: &str, now: Timestamp) -> DeletionMark {
    DeletionMark {
        deleted_at: now,
        deleted_by: "key_t1".into(),
        reason: None,
        deletion_id: deletion_id.into(),
        purge_at: Timestamp::from_micros(now.as_micros() + 30 * 24 * 3600 * SECOND),
    }
}

const PRODUCTS: &str = r#"
[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string" }
"#;

// ---------------------------------------------------------------------------------------
// Migrations

#[tokio::test]
async fn replicas_starting_together_apply_each_migration_once() {
    let Some(db) = TestDb::create("replicas_starting_together_apply_each_migration_once").await else { return };
    let url = db.url().to_string();
    let products = schema(PRODUCTS);
    let replicas: Vec<_> = (0..4)
        .map(|_| {
            let (url, products) = (url.clone(), products.clone());
            tokio::spawn(async move {
                let store = PgStore::connect(&url, 2).await?;
                store.migrate(&products).await
            })
        })
        .collect();
    for replica in replicas {
        replica.await.expect("replica task").expect("every replica starts without an error");
    }
    let client = db.client().await;
    let rows = client.query("select name, count(*) from _migrations group by name order by name", &[]).await.unwrap();
    let applied: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        applied,
        [
            "0001_system",
            "0002_audit",
            "0003_outbox",
            "0004_webhooks",
            "0005_retention",
            "0006_nats",
            "0007_history",
            "0008_audit_checks",
            "0009_files"
        ]
        .map(|n| (n.to_string(), 1))
        .to_vec()
    );
    let head: (i32, i64) = client
        .query_one("select count(*)::int, max(seq) from audit_head", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(head, (1, 0), "the seeded head row is there once");
    db.drop_db().await;
}

/// The server's connections wait at most `DEFAULT_LOCK_TIMEOUT` for a lock unless the URL
/// sets `lock_timeout`; a write blocked longer fails as `Busy` (a 503), and a schema change
/// is not bound by it.
#[tokio::test]
async fn connections_have_a_default_lock_timeout_that_the_url_overrides() {
    let Some(db) = TestDb::create("connections_have_a_default_lock_timeout_that_the_url_overrides").await else {
        return;
    };
    let store = PgStore::connect(db.url(), 2).await.unwrap();
    let shown: String = store.client().await.unwrap().query_one("show lock_timeout", &[]).await.unwrap().get(0);
    assert_eq!(shown, format!("{}s", tombstone_store::postgres::DEFAULT_LOCK_TIMEOUT.as_secs()));

    let sep = if db.url().contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20lock_timeout%3D200", db.url());
    let store = PgStore::connect(&url, 2).await.unwrap();
    let client = store.client().await.unwrap();
    let shown: String = client.query_one("show lock_timeout", &[]).await.unwrap().get(0);
    assert_eq!(shown, "200ms", "the operator's setting wins");

    // Blocked by another session's lock: the statement gives up, as `Busy`.
    store.migrate(&schema(PRODUCTS)).await.unwrap();
    let other = db.client().await;
    other.batch_execute("begin; lock table audit_head in exclusive mode").await.unwrap();
    let started = std::time::Instant::now();
    let blocked = client.batch_execute("select * from audit_head for update").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(matches!(StoreError::from(blocked), StoreError::Busy { .. }));
    other.batch_execute("rollback").await.unwrap();
    // A schema change waits for the migration lock instead (here held by another session,
    // as a replica applying a long migration holds it): with the URL's 200 ms it would
    // fail, but it waits until the lock is released.
    other.batch_execute("select pg_advisory_lock(8390044900425756526)").await.unwrap(); // "tombston"
    let migrating = {
        let url = url.clone();
        tokio::spawn(async move {
            let replica = PgStore::connect(&url, 1).await?;
            replica.migrate(&schema(PRODUCTS)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!migrating.is_finished(), "the migration waits for the lock");
    other.batch_execute("select pg_advisory_unlock(8390044900425756526)").await.unwrap();
    migrating.await.unwrap().expect("the migration waited for the lock instead of failing");
    drop(client);
    db.drop_db().await;
}

/// The server's statements run without parallel plans unless the URL asks for them.
#[tokio::test]
async fn connections_plan_without_parallel_workers_unless_the_url_asks() {
    let Some(db) = TestDb::create("connections_plan_without_parallel_workers_unless_the_url_asks").await else {
        return;
    };
    let store = PgStore::connect(db.url(), 1).await.unwrap();
    let show = |client: deadpool_postgres::Object| async move {
        let shown: String = client.query_one("show max_parallel_workers_per_gather", &[]).await.unwrap().get(0);
        shown
    };
    assert_eq!(show(store.client().await.unwrap()).await, "0");
    let sep = if db.url().contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20max_parallel_workers_per_gather%3D3", db.url());
    let store = PgStore::connect(&url, 1).await.unwrap();
    assert_eq!(show(store.client().await.unwrap()).await, "3", "the operator's setting wins");
    let client = store.client().await.unwrap();
    let shown: String = client.query_one("show lock_timeout", &[]).await.unwrap().get(0);
    assert_eq!(shown, "5s", "the lock timeout's default still applies beside it");
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn migrating_again_keeps_rows_and_refuses_what_sqlite_refuses() {
    let Some(db) = TestDb::create("migrating_again_keeps_rows_and_refuses_what_sqlite_refuses").await else { return };
    let store = db.store(4).await;
    let v1 = schema(PRODUCTS);
    store.migrate(&v1).await.unwrap();
    let p1 = coll(&v1, "products");
    let a = new_record("t1", &p1, "a", values(&[("sku", s("A")), ("name", s("Mug"))]), at(0));
    let b = new_record("t1", &p1, "b", values(&[("sku", s("B")), ("name", s("Mug"))]), at(1));
    insert(&store, &p1, &a).await.unwrap();
    insert(&store, &p1, &b).await.unwrap();
    store.migrate(&v1).await.expect("the same schema again");
    assert_eq!(store.get_record("t1", &p1, "a").await.unwrap(), Some(a.clone()));

    // Additive: a new field; rows keep their values, the new field is absent.
    let v2 = schema(
        &PRODUCTS.replace("name = { type = \"string\" }", "name = { type = \"string\" }\nqty = { type = \"integer\" }"),
    );
    store.migrate(&v2).await.expect("a new field");
    let p2 = coll(&v2, "products");
    assert_eq!(store.get_record("t1", &p2, "b").await.unwrap(), Some(b.clone()));

    // The refusals, word for word as SQLite's store says them.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("parity.db")).unwrap();
    sqlite.migrate(&v2).await.unwrap();
    let mut sqlite_b = b.clone();
    sqlite_b.values.insert("qty".into(), FieldValue::Integer(1));
    sqlite.create_record(&actor("t1"), &p2, new_record("t1", &p2, "a", a.values.clone(), at(0)), None).await.unwrap();
    sqlite.create_record(&actor("t1"), &p2, sqlite_b, None).await.unwrap();
    let retyped = schema(
        &PRODUCTS.replace("name = { type = \"string\" }", "name = { type = \"string\" }\nqty = { type = \"string\" }"),
    );
    let pg = store.migrate(&retyped).await;
    let lite = sqlite.migrate(&retyped).await;
    match (&pg, &lite) {
        (Err(StoreError::Migration(p)), Err(StoreError::Migration(l))) => {
            assert_eq!(p, l);
            assert!(p.contains("type changed from integer to string"), "{p}");
        }
        other => panic!("a type change is refused by both stores: {other:?}"),
    }
    let names_unique = schema(&PRODUCTS.replace("unique = [[\"sku\"]]", "unique = [[\"sku\"], [\"name\"]]"));
    match store.migrate(&names_unique).await {
        Err(StoreError::Migration(m)) => {
            assert!(m.starts_with("collections.products.unique: active records already share a value"), "{m}");
        }
        other => panic!("a unique set that active rows violate is refused: {other:?}"),
    }
    // Nothing of the refused migrations stayed: the old schema applies, rows intact.
    store.migrate(&v2).await.unwrap();
    assert_eq!(store.get_record("t1", &p2, "a").await.unwrap(), Some(a));
    // Once "b" is deleted, the set is only among active records and can be added.
    let mut deleted_b = b.clone();
    deleted_b.version = 2;
    deleted_b.deletion = Some(mark("del_b", at(2)));
    set_deletion(&store, &p2, &deleted_b).await.unwrap();
    store.migrate(&names_unique).await.expect("the set holds among active records");
    db.drop_db().await;
}

/// A table as it was before archive (§17): no `archived_*` columns, the old default-list
/// index. Migrating adds the columns (empty), replaces the index and keeps every row.
#[tokio::test]
async fn a_table_from_before_archive_gains_its_columns_and_keeps_its_rows() {
    let Some(db) = TestDb::create("a_table_from_before_archive_gains_its_columns").await else { return };
    let store = db.store(4).await;
    let v1 = schema(PRODUCTS);
    store.migrate(&v1).await.unwrap();
    let p1 = coll(&v1, "products");
    let a = new_record("t1", &p1, "a", values(&[("sku", s("A")), ("name", s("Mug"))]), at(0));
    insert(&store, &p1, &a).await.unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "drop index ix_products_current; drop index ix_products_archived;
             alter table rec_products drop column archived_at, drop column archived_by, drop column archive_reason;
             create index ix_products_active on rec_products (tenant, id) where deleted_at is null;",
        )
        .await
        .expect("make the table as it was");
    let again = db.store(4).await;
    again.migrate(&v1).await.expect("migrate an old table");
    let indexes: Vec<String> = client
        .query(
            "select indexname::text from pg_indexes where tablename = 'rec_products' and indexname like 'ix_%' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(indexes, ["ix_products_archived", "ix_products_current", "ix_products_deleted", "ix_products_purge"]);
    assert_eq!(again.get_record("t1", &p1, "a").await.unwrap(), Some(a));
    let request = tombstone_domain::lifecycle::ArchiveRequest::Archive { reason: None };
    assert!(again.archive_record(&actor("t1"), &p1, "a", request, None, at(SECOND)).await.unwrap().is_archived());
    assert!(again.list_records("t1", &p1, &ListQuery::default()).await.unwrap().items.is_empty());
    drop(again);
    drop(store);
    db.drop_db().await;
}

/// A database from before history (§14): no version rows, no baseline mark. Migrating
/// gives each record one `baseline` version, once.
#[tokio::test]
async fn records_from_before_history_get_one_baseline_version() {
    let Some(db) = TestDb::create("records_from_before_history_get_one_baseline").await else { return };
    let store = db.store(4).await;
    let v1 = schema(PRODUCTS);
    store.migrate(&v1).await.unwrap();
    let p1 = coll(&v1, "products");
    let a = new_record("t1", &p1, "a", values(&[("sku", s("A")), ("name", s("Mug"))]), at(0));
    insert(&store, &p1, &a).await.unwrap();
    let client = db.client().await;
    client.batch_execute("delete from versions; delete from history_baselines;").await.expect("make it as it was");
    let again = db.store(4).await;
    again.migrate(&v1).await.expect("migrate");
    again.migrate(&v1).await.expect("migrate again: no second baseline");
    let page = again.list_versions("t1", "products", "a", None, 10).await.unwrap();
    let summary: Vec<(i64, &str, Option<&str>, Timestamp)> =
        page.items.iter().map(|v| (v.version, v.action.as_str(), v.actor.as_deref(), v.valid_from)).collect();
    assert_eq!(summary, vec![(1, "baseline", None, at(0))]);
    assert_eq!(page.items[0].record["sku"], "A");
    drop(again);
    drop(store);
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Uniqueness: the partial unique indexes decide

#[tokio::test]
async fn concurrent_inserts_of_one_unique_value_have_one_winner() {
    let Some(db) = TestDb::create("concurrent_inserts_of_one_unique_value_have_one_winner").await else { return };
    let store = db.store(24).await;
    let products = schema(PRODUCTS);
    store.migrate(&products).await.unwrap();
    let p = coll(&products, "products");

    // 20 transactions on 20 connections, each holding its connection and transaction
    // open before any inserts, so the inserts race for real.
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (store, p, start) = (store.clone(), p.clone(), start.clone());
            tokio::spawn(async move {
                let mut client = store.client().await.unwrap();
                let mut tx = store.transaction(&mut client).await.unwrap();
                let r = new_record("t1", &p, &format!("r{i:02}"), values(&[("sku", s("SAME"))]), at(i));
                start.wait().await;
                let result = tx.insert(&p, &r).await;
                tx.commit().await.unwrap();
                result.map(|()| r.id)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut conflicts = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(id) => winners.push(id),
            Err(StoreError::UniqueConflict { conflicting_id, fields }) => conflicts.push((conflicting_id, fields)),
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one insert wins: {winners:?}");
    let winner = winners.remove(0);
    assert_eq!(conflicts.len(), 19);
    for (id, fields) in &conflicts {
        assert_eq!((id.as_str(), fields.as_slice()), (winner.as_str(), ["sku".to_string()].as_slice()));
    }

    // A duplicate id is a conflict on "id", deleted or not; the transaction goes on.
    let mut client = store.client().await.unwrap();
    let mut tx = store.transaction(&mut client).await.unwrap();
    let dup = tx.insert(&p, &new_record("t1", &p, &winner, values(&[("sku", s("OTHER"))]), at(30))).await;
    assert!(
        matches!(&dup, Err(StoreError::UniqueConflict { conflicting_id, fields }) if *conflicting_id == winner && fields == &["id"]),
        "{dup:?}"
    );
    tx.insert(&p, &new_record("t1", &p, "after", values(&[("sku", s("AFTER"))]), at(31))).await.unwrap();
    tx.commit().await.unwrap();
    assert!(store.get_record("t1", &p, "after").await.unwrap().is_some(), "a conflict leaves the transaction usable");

    // Soft-deleted, the winner leaves the index: the value is free again.
    let mut first = store.get_record("t1", &p, &winner).await.unwrap().unwrap();
    first.version += 1;
    first.deletion = Some(mark("del_1", at(40)));
    set_deletion(&store, &p, &first).await.unwrap();
    insert(&store, &p, &new_record("t1", &p, "second", values(&[("sku", s("SAME"))]), at(41))).await.unwrap();
    // Another tenant's value never collides.
    insert(&store, &p, &new_record("t2", &p, "elsewhere", values(&[("sku", s("SAME"))]), at(42))).await.unwrap();

    // Restoring the first brings its value back into the index: refused, naming "second".
    let mut restored = first.clone();
    restored.version += 1;
    restored.deletion = None;
    let result = set_deletion(&store, &p, &restored).await;
    assert!(
        matches!(&result, Err(StoreError::UniqueConflict { conflicting_id, fields }) if conflicting_id == "second" && fields == &["sku"]),
        "{result:?}"
    );
    assert!(store.get_record("t1", &p, &winner).await.unwrap().unwrap().deletion.is_some(), "nothing was restored");
    let mut active = store.active_ids(&p).await.unwrap();
    active.sort();
    let expected: Vec<(String, String)> =
        [("t1", "after"), ("t1", "second"), ("t2", "elsewhere")].map(|(t, i)| (t.to_string(), i.to_string())).to_vec();
    assert_eq!(active, expected);

    // The listing SELECT agrees with the index.
    let mut client = store.client().await.unwrap();
    let mut tx = store.transaction(&mut client).await.unwrap();
    assert_eq!(
        tx.unique_conflict(&p, "t1", &winner, &restored.values).await.unwrap(),
        Some(("second".to_string(), vec!["sku".to_string()]))
    );
    assert_eq!(tx.unique_conflict(&p, "t1", "second", &restored.values).await.unwrap(), None);
    tx.rollback().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn case_insensitive_sets_fold_like_the_domain() {
    let Some(db) = TestDb::create("case_insensitive_sets_fold_like_the_domain").await else { return };
    let store = db.store(4).await;
    let people = schema(
        "[collections.people]\nunique = [[\"email\"]]\n[collections.people.fields]\nemail = { type = \"string\", case_insensitive = true }\n",
    );
    store.migrate(&people).await.unwrap();
    let p = coll(&people, "people");
    insert(&store, &p, &new_record("t1", &p, "a", values(&[("email", s("Ann@Example.COM"))]), at(0))).await.unwrap();
    let dup = insert(&store, &p, &new_record("t1", &p, "b", values(&[("email", s("ann@example.com"))]), at(1))).await;
    assert!(matches!(&dup, Err(StoreError::UniqueConflict { conflicting_id, .. }) if conflicting_id == "a"), "{dup:?}");

    // Rust's Unicode lower-casing, which PostgreSQL's lower() does not match (it gives
    // "οδοσ" for "ΟΔΟΣ", or leaves it as is under the C locale): the index must fold like
    // the domain, or these two would both be active.
    assert_eq!(fold_case("ΟΔΟΣ"), "οδος");
    insert(&store, &p, &new_record("t1", &p, "c", values(&[("email", s("ΟΔΟΣ"))]), at(2))).await.unwrap();
    let dup = insert(&store, &p, &new_record("t1", &p, "d", values(&[("email", s("οδος"))]), at(3))).await;
    assert!(matches!(&dup, Err(StoreError::UniqueConflict { conflicting_id, .. }) if conflicting_id == "c"), "{dup:?}");

    // A filter takes the folded value, as the domain parses it.
    let query = ListQuery {
        filters: vec![FieldFilter {
            field: "email".into(),
            value: s(&fold_case("ANN@example.com")),
            case_insensitive: true,
        }],
        ..ListQuery::default()
    };
    let page = store.list_records("t1", &p, &query).await.unwrap();
    assert_eq!(page.items.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(page.items[0].values["email"], s("Ann@Example.COM"), "the value is kept as written");
    db.drop_db().await;
}

const FAMILY: &str = r#"
[collections.parents]
unique = [["code"]]

[collections.parents.fields]
code = { type = "string", required = true }

[collections.children.fields]
parent = { type = "ref", collection = "parents", on_delete = "cascade" }
label  = { type = "string" }
"#;

#[tokio::test]
async fn write_primitives_read_lock_and_write_rows() {
    let Some(db) = TestDb::create("write_primitives_read_lock_and_write_rows").await else { return };
    let store = db.store(6).await;
    let family = schema(FAMILY);
    store.migrate(&family).await.unwrap();
    let (parents, children) = (coll(&family, "parents"), coll(&family, "children"));
    let p1 = new_record("t1", &parents, "p1", values(&[("code", s("A"))]), at(0));
    let p2 = new_record("t1", &parents, "p2", values(&[("code", s("B"))]), at(1));
    insert(&store, &parents, &p1).await.unwrap();
    insert(&store, &parents, &p2).await.unwrap();
    for (id, parent) in [("c1", "p1"), ("c2", "p1"), ("c3", "p2"), ("c4", "p9")] {
        let r = new_record("t1", &children, id, values(&[("parent", FieldValue::Ref(parent.into()))]), at(2));
        insert(&store, &children, &r).await.unwrap();
    }
    // Another tenant's child of a parent with the same id is not a child.
    let other = new_record("t2", &children, "c5", values(&[("parent", FieldValue::Ref("p1".into()))]), at(2));
    insert(&store, &children, &other).await.unwrap();

    let mut client = store.client().await.unwrap();
    let mut tx = store.transaction(&mut client).await.unwrap();
    let parent_ids = vec!["p1".to_string(), "p2".to_string()];
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| ((*a).to_string(), (*b).to_string())).collect::<Vec<_>>();
    assert_eq!(
        tx.children("children", "parent", "t1", &parent_ids, true).await.unwrap(),
        pairs(&[("c1", "p1"), ("c2", "p1"), ("c3", "p2")])
    );
    let mut c2 = tx.get(&children, "t1", "c2").await.unwrap().unwrap();
    c2.version = 2;
    c2.deletion = Some(mark("del_c2", at(3)));
    tx.set_deletion(&children, &c2).await.unwrap();
    assert_eq!(
        tx.children("children", "parent", "t1", &parent_ids, true).await.unwrap(),
        pairs(&[("c1", "p1"), ("c3", "p2")])
    );
    assert_eq!(tx.children("children", "parent", "t1", &parent_ids, false).await.unwrap().len(), 3);
    assert_eq!(tx.children("children", "parent", "t1", &[], true).await.unwrap(), Vec::new());
    assert!(tx.is_active("children", "t1", "c1").await.unwrap());
    assert!(!tx.is_active("children", "t1", "c2").await.unwrap(), "soft-deleted");
    assert!(!tx.is_active("children", "t1", "nope").await.unwrap());
    assert!(!tx.is_active("children", "t2", "c1").await.unwrap(), "another tenant's");

    // update_values: new values and version; into another's unique value, a conflict.
    let mut changed = tx.get(&parents, "t1", "p2").await.unwrap().unwrap();
    changed.values.insert("code".into(), s("A"));
    changed.version = 2;
    let conflict = tx.update_values(&parents, &changed).await;
    assert!(
        matches!(&conflict, Err(StoreError::UniqueConflict { conflicting_id, fields }) if conflicting_id == "p1" && fields == &["code"]),
        "{conflict:?}"
    );
    changed.values.insert("code".into(), s("C"));
    changed.updated_at = at(4);
    tx.update_values(&parents, &changed).await.unwrap();
    tx.remove(&children, "t1", "c4").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.get_record("t1", &parents, "p2").await.unwrap(), Some(changed.clone()));
    assert_eq!(store.get_record("t1", &children, "c2").await.unwrap(), Some(c2));
    assert_eq!(store.get_record("t1", &children, "c4").await.unwrap(), None);

    // get locks the row until the transaction ends: a second get waits, then reads the
    // version the first one committed.
    let mut first_client = store.client().await.unwrap();
    let mut first = store.transaction(&mut first_client).await.unwrap();
    let mut locked = first.get(&parents, "t1", "p2").await.unwrap().unwrap();
    let second = {
        let (store, parents) = (store.clone(), parents.clone());
        tokio::spawn(async move {
            let mut client = store.client().await.unwrap();
            let mut tx = store.transaction(&mut client).await.unwrap();
            let seen = tx.get(&parents, "t1", "p2").await.unwrap().unwrap();
            tx.commit().await.unwrap();
            seen.version
        })
    };
    until_waiting_on_locks(&db.client().await, 1).await;
    locked.version = 3;
    first.update_values(&parents, &locked).await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), 3, "the waiting get reads the committed version");

    // is_active locks an active parent in share mode: a delete of it waits for the
    // transaction that wrote a child under it.
    let mut child_client = store.client().await.unwrap();
    let mut child_tx = store.transaction(&mut child_client).await.unwrap();
    assert!(child_tx.is_active("parents", "t1", "p1").await.unwrap());
    let delete = {
        let (store, parents) = (store.clone(), parents.clone());
        tokio::spawn(async move {
            let mut client = store.client().await.unwrap();
            let mut tx = store.transaction(&mut client).await.unwrap();
            let mut p1 = tx.get(&parents, "t1", "p1").await.unwrap().unwrap();
            p1.version += 1;
            p1.deletion = Some(mark("del_p1", at(9)));
            tx.set_deletion(&parents, &p1).await.unwrap();
            tx.commit().await.unwrap();
        })
    };
    until_waiting_on_locks(&db.client().await, 1).await;
    child_tx.rollback().await.unwrap();
    delete.await.unwrap();
    assert!(store.get_record("t1", &parents, "p1").await.unwrap().unwrap().deletion.is_some());
    db.drop_db().await;
}

#[tokio::test]
async fn names_longer_than_postgresql_keeps_stay_distinct() {
    let Some(db) = TestDb::create("names_longer_than_postgresql_keeps_stay_distinct").await else { return };
    let store = db.store(4).await;
    // 63 characters each, the longest the config allows: `rec_…`, `ci_…`, the index names
    // are longer than PostgreSQL's 63 bytes, and two fields differ only at their end.
    let collection = format!("c{}", "x".repeat(62));
    let (a, b) = (format!("f{}a", "y".repeat(61)), format!("f{}b", "y".repeat(61)));
    let toml = format!(
        "[collections.{collection}]\nunique = [[\"{a}\"], [\"{b}\"]]\n[collections.{collection}.fields]\n{a} = {{ type = \"string\", case_insensitive = true }}\n{b} = {{ type = \"string\" }}\n"
    );
    let long = schema(&toml);
    store.migrate(&long).await.unwrap();
    store.migrate(&long).await.expect("the hashed names are found again");
    let c = coll(&long, &collection);
    let first = new_record("t1", &c, "one", values(&[(a.as_str(), s("X")), (b.as_str(), s("Y"))]), at(0));
    insert(&store, &c, &first).await.unwrap();
    assert_eq!(store.get_record("t1", &c, "one").await.unwrap(), Some(first));
    // "x" folds to the first record's "X" (the case-insensitive set on the first field);
    // "Y" is the second field's value.
    for (value_a, value_b, field) in [("x", "Z", &a), ("W", "Y", &b)] {
        let r = new_record("t1", &c, "two", values(&[(a.as_str(), s(value_a)), (b.as_str(), s(value_b))]), at(1));
        let result = insert(&store, &c, &r).await;
        assert!(
            matches!(&result, Err(StoreError::UniqueConflict { conflicting_id, fields }) if conflicting_id == "one" && fields == std::slice::from_ref(field)),
            "{result:?}"
        );
    }
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// The audit chain and the outbox

#[tokio::test]
async fn concurrent_audit_appends_never_fork_the_chain() {
    let Some(db) = TestDb::create("concurrent_audit_appends_never_fork_the_chain").await else { return };
    let store = db.store(24).await;
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                let mut client = store.client().await.unwrap();
                let mut tx = store.transaction(&mut client).await.unwrap();
                start.wait().await;
                let entries = vec![entry("t1", i * 10), entry("t2", i * 10 + 1), entry("t1", i * 10 + 2)];
                // Entries alone, entries then events, events before and after entries:
                // every way a write can append.
                match i % 3 {
                    0 => tx.append_audit(entries).await.unwrap(),
                    1 => {
                        tx.append_audit(entries).await.unwrap();
                        tx.append_events(vec![event("t1", "r", i)]).await.unwrap();
                    }
                    _ => {
                        tx.append_events(vec![event("t1", "r", i)]).await.unwrap();
                        tx.append_audit(entries).await.unwrap();
                        tx.append_events(vec![event("t2", "r", i)]).await.unwrap();
                    }
                }
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.verify_audit().await.unwrap(), Ok(60));
    let t1 = store.list_audit("t1", &AuditQuery { limit: 500, ..AuditQuery::default() }).await.unwrap();
    assert_eq!(t1.len(), 40);
    let client = db.client().await;
    let seqs: Vec<i64> =
        client.query("select seq from audit order by seq", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "gapless, one chain");
    let events: Vec<i64> =
        client.query("select seq from outbox order by seq", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(events, (1..=19).collect::<Vec<_>>());

    // An edited entry is caught by the shared verifier.
    client.batch_execute("update audit set reason = 'edited' where seq = 7").await.unwrap();
    assert!(store.verify_audit().await.unwrap().is_err());
    db.drop_db().await;
}

/// Waits until `n` sessions of the test database wait on a lock (the writers queued
/// behind the open transaction).
async fn until_waiting_on_locks(client: &tokio_postgres::Client, n: i64) {
    for _ in 0..500 {
        let waiting: i64 = client
            .query_one(
                "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the writers never queued on the lock");
}

#[tokio::test]
async fn a_late_commit_is_never_skipped_by_a_follower() {
    let Some(db) = TestDb::create("a_late_commit_is_never_skipped_by_a_follower").await else { return };
    let store = db.store(8).await;
    let all = |after| EventQuery { after, limit: 100, ..EventQuery::default() };
    let mut old_client = store.client().await.unwrap();
    let mut old = store.transaction(&mut old_client).await.unwrap();
    let (first, last) = old.append_events(vec![event("t1", "old", 1)]).await.unwrap();
    assert_eq!(first, last);

    // Newer transactions write events and commit while the old one stays open.
    let newer: Vec<_> = (0..3)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut client = store.client().await.unwrap();
                let mut tx = store.transaction(&mut client).await.unwrap();
                tx.append_events(vec![
                    event("t1", &format!("new{i}"), 10 + i),
                    event("t2", &format!("new{i}"), 20 + i),
                ])
                .await
                .unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    until_waiting_on_locks(&db.client().await, 3).await;
    // A follower that has read everything so far sees nothing newer while the old
    // transaction is open: nothing past its seq is visible, so nothing can be passed.
    assert_eq!(store.list_all_events(&all(0)).await.unwrap(), Vec::new());
    assert_eq!(store.last_event_seq().await.unwrap(), 0);
    old.commit().await.unwrap();
    for task in newer {
        task.await.unwrap();
    }
    let events = store.list_all_events(&all(0)).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (first..first + 7).collect::<Vec<_>>(), "every event, in seq order, none skipped");
    assert_eq!(events[0].record_id, "old", "the old transaction's event comes first");
    assert_eq!(events[0].data, Some(serde_json::json!({ "z": 1, "a": "old" })), "data keeps its member order");
    // The indexer's feed is the same rows.
    let changed = store.changes_since(first, 100).await.unwrap();
    assert_eq!(changed.iter().map(|c| c.0).collect::<Vec<_>>(), seqs[1..].to_vec());
    let keys: Vec<_> =
        events[1..].iter().map(|e| (e.tenant.clone(), e.collection.clone(), e.record_id.clone())).collect();
    assert_eq!(changed.iter().map(|c| c.1.clone()).collect::<Vec<_>>(), keys);
    assert!(changed.iter().all(|c| c.2 == "record.updated"), "{changed:?}");
    // Per tenant, the same order.
    let t2 = store.list_events("t2", &all(0)).await.unwrap();
    assert_eq!(t2.len(), 3);
    assert!(t2.windows(2).all(|w| w[0].seq < w[1].seq));
    db.drop_db().await;
}

#[tokio::test]
async fn a_follower_polling_under_concurrent_writers_misses_nothing() {
    let Some(db) = TestDb::create("a_follower_polling_under_concurrent_writers_misses_nothing").await else { return };
    let store = db.store(12).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..15_i64 {
                    let mut client = store.client().await.unwrap();
                    let mut tx = store.transaction(&mut client).await.unwrap();
                    let events = (0..=(n % 3)).map(|k| event("t1", &format!("w{w}"), n * 10 + k)).collect();
                    tx.append_events(events).await.unwrap();
                    // Some transactions stay open a while after drawing their seqs, and
                    // some roll back (leaving gaps the follower must step over).
                    tokio::time::sleep(Duration::from_millis(u64::try_from((w * 7 + n) % 4).unwrap())).await;
                    if (w + n) % 5 == 0 { tx.rollback().await.unwrap() } else { tx.commit().await.unwrap() }
                }
            })
        })
        .collect();
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut cursor = 0;
            let mut idle_after_done = 0;
            loop {
                let batch = store
                    .list_all_events(&EventQuery { after: cursor, limit: 7, ..EventQuery::default() })
                    .await
                    .unwrap();
                if let Some(last) = batch.last() {
                    cursor = last.seq;
                }
                let empty = batch.is_empty();
                seen.extend(batch.into_iter().map(|e| e.seq));
                if empty {
                    if store.get_meta("writers_done").await.unwrap().is_some() {
                        idle_after_done += 1;
                        if idle_after_done > 1 {
                            return seen;
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    store.set_meta("writers_done", "1").await.unwrap();
    let seen = follower.await.unwrap();
    let committed: Vec<i64> = db
        .client()
        .await
        .query("select seq from outbox order by seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(committed.len() > 100, "the writers committed events: {}", committed.len());
    assert_eq!(seen, committed, "the follower read every committed event once, in order");
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Keys, metadata, errors

#[tokio::test]
async fn keys_round_trip_and_are_audited() {
    let Some(db) = TestDb::create("keys_round_trip_and_are_audited").await else { return };
    let store = db.store(4).await;
    let key = StoredKey {
        id: "key_abc".into(),
        tenant: "t1".into(),
        name: Some("ci".into()),
        scopes: parse_scopes("read,delete:products").unwrap(),
        secret_hash: "00ff".into(),
        created_at: at(0),
    };
    let admin = actor("t1");
    store.create_key(key.clone(), &admin).await.unwrap();
    let dup = store.create_key(key.clone(), &admin).await;
    assert!(matches!(&dup, Err(StoreError::Constraint { fields, .. }) if fields == &["id"]), "{dup:?}");
    assert_eq!(store.find_key("key_abc").await.unwrap(), Some(key.clone()));
    assert_eq!(store.list_keys().await.unwrap(), vec![key.clone()]);
    assert!(store.revoke_key("key_abc", &admin, at(5)).await.unwrap());
    assert!(!store.revoke_key("key_abc", &admin, at(6)).await.unwrap());
    assert_eq!(store.find_key("key_abc").await.unwrap(), None);
    let audit = store.list_audit("t1", &AuditQuery { limit: 10, ..AuditQuery::default() }).await.unwrap();
    let seen: Vec<(&str, Option<&str>, Option<&str>)> =
        audit.iter().map(|e| (e.action.as_str(), e.collection.as_deref(), e.record_id.as_deref())).collect();
    assert_eq!(seen, [("key_create", Some("keys"), Some("key_abc")), ("key_revoke", Some("keys"), Some("key_abc"))]);
    assert_eq!(store.verify_audit().await.unwrap(), Ok(2));

    // A write that needs its entries' seqs writes them before its commit.
    let mut client = store.client().await.unwrap();
    let mut tx = store.transaction(&mut client).await.unwrap();
    assert_eq!(tx.flush_audit().await.unwrap(), None);
    tx.append_audit(vec![entry("t1", 1), entry("t1", 2)]).await.unwrap();
    assert_eq!(tx.flush_audit().await.unwrap(), Some((3, 4)));
    tx.append_audit(vec![entry("t1", 3)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.verify_audit().await.unwrap(), Ok(5));

    assert_eq!(store.get_meta("demo").await.unwrap(), None);
    store.set_meta("demo", "1").await.unwrap();
    store.set_meta("demo", "2").await.unwrap();
    assert_eq!(store.get_meta("demo").await.unwrap().as_deref(), Some("2"));
    store.ping().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn an_unreachable_database_is_one_line_naming_the_host() {
    // No server needed: nothing listens on port 1.
    let error = PgStore::connect("postgres://tombstone:secret@127.0.0.1:1/tombstone", 2).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains('\n') && !text.contains("secret"), "{text}");
    assert!(matches!(error, StoreError::StorageFailed { .. }), "{error:?}");
}

#[tokio::test]
async fn errors_are_classified_by_sqlstate() {
    let Some(db) = TestDb::create("errors_are_classified_by_sqlstate").await else { return };
    let store = db.store(4).await;

    // lock_not_available (55P03) is busy.
    let mut holder = store.client().await.unwrap();
    let holding = holder.transaction().await.unwrap();
    holding.batch_execute("select * from audit_head for update").await.unwrap();
    let other = store.client().await.unwrap();
    let e: StoreError = other.batch_execute("select * from audit_head for update nowait").await.unwrap_err().into();
    assert!(matches!(e, StoreError::Busy { .. }), "{e:?}");
    holding.rollback().await.unwrap();

    // A connection the server terminates (57P01 admin_shutdown, then a closed
    // connection) is a storage failure, which the server answers with 503.
    let victim = store.client().await.unwrap();
    let pid: i32 = victim.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    db.client().await.query_one("select pg_terminate_backend($1)", &[&pid]).await.unwrap();
    let e: StoreError = victim.query_one("select 1", &[]).await.unwrap_err().into();
    assert!(matches!(e, StoreError::StorageFailed { .. }), "{e:?}");
    drop(victim);

    // Anything else is a database error (a bug), kept with its cause.
    let e: StoreError = other.batch_execute("select 1 / 0").await.unwrap_err().into();
    assert!(matches!(e, StoreError::Database { .. }), "{e:?}");
    assert!(e.cause_chain().contains("division by zero"), "{}", e.cause_chain());
    // So is an error on the client's side that is not the connection's.
    let e: StoreError = other.query_one("select 1 where false", &[]).await.unwrap_err().into();
    assert!(matches!(e, StoreError::Database { .. }), "{e:?}");

    // The pool replaces the terminated connection: a use that races the connection's
    // closing may fail once more, as a storage failure, and then it is discarded.
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let result = store.ping().await;
        let ok = result.is_ok();
        attempts.push(result);
        if ok {
            break;
        }
    }
    assert!(attempts.last().is_some_and(Result::is_ok), "{attempts:?}");
    assert!(attempts.iter().all(|a| matches!(a, Ok(()) | Err(StoreError::StorageFailed { .. }))), "{attempts:?}");
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Lists: the same answers as SQLite's store

const CATALOG: &str = r#"
[collections.items]
unique = [["sku"]]

[collections.items.fields]
sku   = { type = "string", required = true }
name  = { type = "string", case_insensitive = true }
price = { type = "integer" }
ratio = { type = "number" }
live  = { type = "boolean" }
seen  = { type = "timestamp" }
meta  = { type = "json" }
"#;

fn catalog_values(i: i64) -> Values {
    let mut v = values(&[("sku", s(&format!("SKU-{:02}", (i * 7) % 13)))]);
    // Some fields absent on some records, so NULL ordering is exercised, and repeated
    // values, so ties are broken by id.
    if i % 4 != 0 {
        v.insert("name".into(), s(["Mug", "cup", "Bowl", "ÉCLAIR", "mug"][usize::try_from(i % 5).unwrap()]));
    }
    if i % 3 != 0 {
        v.insert("price".into(), FieldValue::Integer((i % 5) * 100 - 150));
    }
    if i % 5 != 1 {
        v.insert("ratio".into(), FieldValue::Number(f64::from(u8::try_from(i % 4).unwrap()) * 0.25 - 0.3));
    }
    if i % 2 == 0 {
        v.insert("live".into(), FieldValue::Boolean(i % 4 == 0));
    }
    if i % 3 != 2 {
        v.insert("seen".into(), FieldValue::Timestamp(at((i % 4) * SECOND)));
    }
    if i % 6 == 0 {
        v.insert("meta".into(), FieldValue::Json(serde_json::json!({ "z": i, "a": [1, 2] })));
    }
    v
}

/// Every page of a query, following the cursors.
async fn all_pages<F, Fut>(query: &ListQuery, mut list: F) -> (Vec<Record>, Option<u64>)
where
    F: FnMut(ListQuery) -> Fut,
    Fut: std::future::Future<Output = Result<tombstone_store::Page, StoreError>>,
{
    let mut query = query.clone();
    let mut items = Vec::new();
    let mut total = None;
    for _ in 0..100 {
        let page = list(query.clone()).await.unwrap();
        total = total.or(page.total);
        items.extend(page.items);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return (items, total),
        }
    }
    panic!("more pages than records");
}

#[tokio::test]
async fn lists_answer_like_sqlite() {
    // A database whose default collation is not byte order (ICU, English): text must
    // still sort as SQLite sorts it ("Bowl" < "Mug" < "cup"), by the columns' own "C".
    let icu = "template template0 locale_provider icu icu_locale 'en-US' locale 'C.UTF-8'";
    let Some(db) = TestDb::create_with("lists_answer_like_sqlite", icu).await else { return };
    let store = db.store(4).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("parity.db")).unwrap());
    let catalog = schema(CATALOG);
    store.migrate(&catalog).await.unwrap();
    sqlite.migrate(&catalog).await.unwrap();
    let items = coll(&catalog, "items");

    // The same records in both: created, some soft-deleted by SQLite's store, whose
    // resulting rows are written to PostgreSQL as they are.
    for i in 0..13 {
        let tenant = if i == 12 { "t2" } else { "t1" };
        let r = new_record(tenant, &items, &format!("id-{:02}", (i * 5) % 13), catalog_values(i), at(i * SECOND));
        sqlite.create_record(&actor(tenant), &items, r.clone(), None).await.unwrap();
        insert(&store, &items, &r).await.unwrap();
    }
    for (i, id) in ["id-00", "id-03", "id-07", "id-11"].iter().enumerate() {
        let request = DeleteRequest { if_match: None, reason: None, deletion_id: format!("del_{i}") };
        sqlite
            .delete_record(&actor("t1"), &items, id, request, at((20 + i64::try_from(i).unwrap()) * SECOND))
            .await
            .unwrap();
        let deleted = sqlite.get_record("t1", &items, id).await.unwrap().unwrap();
        set_deletion(&store, &items, &deleted).await.unwrap();
    }

    let mut queries = Vec::new();
    let keys = [
        SortKey::Id,
        SortKey::CreatedAt,
        SortKey::UpdatedAt,
        SortKey::DeletedAt,
        SortKey::Field("sku".into()),
        SortKey::Field("name".into()),
        SortKey::Field("price".into()),
        SortKey::Field("ratio".into()),
        SortKey::Field("live".into()),
        SortKey::Field("seen".into()),
        SortKey::Field("meta".into()),
    ];
    for key in &keys {
        for descending in [false, true] {
            for scope in [DeletedScope::Active, DeletedScope::All, DeletedScope::Deleted] {
                queries.push(ListQuery {
                    scope,
                    sort: Sort { key: key.clone(), descending },
                    limit: 3,
                    count: true,
                    ..ListQuery::default()
                });
            }
        }
    }
    let filtered = |filters: Vec<FieldFilter>| ListQuery { filters, limit: 2, count: true, ..ListQuery::default() };
    let filter = |field: &str, value: FieldValue, case_insensitive: bool| FieldFilter {
        field: field.into(),
        value,
        case_insensitive,
    };
    queries.extend([
        filtered(vec![filter("name", s("mug"), true)]),
        filtered(vec![filter("name", s(&fold_case("ÉCLAIR")), true)]),
        filtered(vec![filter("price", FieldValue::Integer(50), false)]),
        filtered(vec![filter("live", FieldValue::Boolean(true), false)]),
        filtered(vec![
            filter("live", FieldValue::Boolean(false), false),
            filter("price", FieldValue::Integer(-150), false),
        ]),
        filtered(vec![filter("seen", FieldValue::Timestamp(at(SECOND)), false)]),
        filtered(vec![filter("ratio", FieldValue::Number(0.2), false)]),
        filtered(vec![filter("sku", s("SKU-01"), false)]),
        ListQuery { scope: DeletedScope::Deleted, deleted_since: Some(at(21 * SECOND)), ..ListQuery::default() },
        ListQuery { scope: DeletedScope::Deleted, deleted_before: Some(at(22 * SECOND)), ..ListQuery::default() },
        ListQuery {
            scope: DeletedScope::Deleted,
            deleted_by: Some("key_t1".into()),
            count: true,
            ..ListQuery::default()
        },
        ListQuery { scope: DeletedScope::Deleted, deleted_by: Some("nobody".into()), ..ListQuery::default() },
        ListQuery {
            scope: DeletedScope::All,
            purge_before: Some(Timestamp::from_micros(i64::MAX)),
            count: true,
            ..ListQuery::default()
        },
        ListQuery {
            candidates: Some(Candidates::Ids(vec!["id-01".into(), "id-03".into(), "id-08".into(), "missing".into()])),
            scope: DeletedScope::All,
            limit: 1,
            count: true,
            ..ListQuery::default()
        },
        ListQuery {
            candidates: Some(Candidates::Fingerprints(Arc::new(Fingerprints::new(
                ["id-01", "id-03", "id-08", "missing"].iter().map(|id| fingerprint(id)).collect(),
                0,
            )))),
            scope: DeletedScope::All,
            limit: 1,
            count: true,
            ..ListQuery::default()
        },
        ListQuery { candidates: Some(Candidates::Ids(Vec::new())), ..ListQuery::default() },
        ListQuery {
            candidates: Some(Candidates::Fingerprints(Arc::new(Fingerprints::default()))),
            count: true,
            ..ListQuery::default()
        },
    ]);
    // A cursor issued by one store reads the same in the other (booleans as 0 and 1).
    queries.push(ListQuery {
        sort: Sort { key: SortKey::Field("live".into()), descending: false },
        after: Some(Position { value: tombstone_domain::query::SortValue::Int(0), id: "id-05".into() }),
        ..ListQuery::default()
    });

    for query in &queries {
        for tenant in ["t1", "t2"] {
            let (pg, pg_total) = all_pages(query, |q| {
                let (store, items) = (store.clone(), items.clone());
                async move { store.list_records(tenant, &items, &q).await }
            })
            .await;
            let (lite, lite_total) = all_pages(query, |q| {
                let (sqlite, items) = (sqlite.clone(), items.clone());
                async move { sqlite.list_records(tenant, &items, &q).await }
            })
            .await;
            let ids = |rs: &[Record]| rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&pg), ids(&lite), "{tenant} {query:?}");
            assert_eq!(pg, lite, "{tenant} {query:?}");
            assert_eq!(pg_total, lite_total, "{tenant} {query:?}");
        }
    }
    // Not vacuous: the queries found records, deleted ones included.
    let everything = ListQuery { scope: DeletedScope::All, limit: 100, ..ListQuery::default() };
    let page = store.list_records("t1", &items, &everything).await.unwrap();
    assert_eq!(page.items.len(), 12);
    assert_eq!(page.items.iter().filter(|r| r.deletion.is_some()).count(), 4);
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Group commit

/// Waits until `n` writes wait for the next group.
async fn until_queued(store: &PgStore, n: usize) {
    for _ in 0..500 {
        if store.waiting_writes() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the writes never queued");
}

/// A grouped write that appends `entries` audit entries and one event for `record`, then
/// fails with `fail` if given.
fn grouped_write(
    store: &Arc<PgStore>,
    record: &str,
    entries: i64,
    fail: Option<StoreError>,
) -> tokio::task::JoinHandle<Result<String, StoreError>> {
    let (store, record) = (store.clone(), record.to_string());
    tokio::spawn(async move {
        store
            .grouped(move |tx| {
                Box::pin(async move {
                    let n = record.trim_start_matches('r').parse::<i64>().unwrap_or(0);
                    tx.append_audit((0..entries).map(|i| entry("t1", n * 10 + i)).collect()).await?;
                    if record != "audit-only" {
                        tx.append_events(vec![event("t1", &record, n)]).await?;
                    }
                    match fail {
                        Some(e) => Err(e),
                        None => Ok(record),
                    }
                })
            })
            .await
    })
}

#[tokio::test]
async fn writes_arriving_together_share_one_commit_and_fail_alone() {
    let Some(db) = TestDb::create("writes_arriving_together_share_one_commit_and_fail_alone").await else { return };
    let store = db.store(8).await;
    let client = db.client().await;

    // Another transaction holds the audit head: the first write's group waits on it, and
    // the writes sent meanwhile gather into the next group.
    let mut holder = db.client().await;
    let holding = holder.transaction().await.unwrap();
    holding.batch_execute("select * from audit_head for update").await.unwrap();
    let first = grouped_write(&store, "r0", 1, None);
    until_waiting_on_locks(&client, 1).await;

    // The next group: a failure after its appends as the group's first write (it took the
    // head's lock inside its savepoint, and its rollback gave it back), writes with and
    // without events, a failure in the middle, a write whose caller stopped waiting.
    let fails = || Some(StoreError::NotFound);
    let mut next = vec![
        ("r1", grouped_write(&store, "r1", 2, fails())),
        ("r2", grouped_write(&store, "r2", 1, None)),
        ("audit-only", grouped_write(&store, "audit-only", 2, None)),
    ];
    until_queued(&store, 3).await;
    let gone = grouped_write(&store, "r9", 1, None);
    until_queued(&store, 4).await;
    gone.abort();
    next.push(("r3", grouped_write(&store, "r3", 1, fails())));
    next.push(("r4", grouped_write(&store, "r4", 3, None)));
    until_queued(&store, 6).await;
    holding.commit().await.unwrap();

    assert_eq!(first.await.unwrap().unwrap(), "r0");
    for (record, write) in next {
        let answer = write.await.unwrap();
        match record {
            "r1" | "r3" => assert!(matches!(answer, Err(StoreError::NotFound)), "{record}: {answer:?}"),
            _ => assert_eq!(answer.unwrap(), record),
        }
    }
    assert_eq!(store.group_stats(), tombstone_store::GroupStats { commits: 2, writes: 4 });

    // Only the writes that succeeded left rows; the chain is whole and gapless.
    assert_eq!(store.verify_audit().await.unwrap(), Ok(1 + 1 + 2 + 3));
    let reasons: Vec<String> =
        client.query("select reason from audit order by seq", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(reasons, ["reason 0", "reason 20", "reason 0", "reason 1", "reason 40", "reason 41", "reason 42"]);
    let events: Vec<String> = client
        .query("select record_id from outbox order by seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, ["r0", "r2", "r4"], "in arrival order; nothing of the failed or abandoned writes");
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_requests_through_the_rules_are_grouped_and_each_answered() {
    let Some(db) = TestDb::create("concurrent_requests_through_the_rules_are_grouped_and_each_answered").await else {
        return;
    };
    let store = db.store(8).await;
    let products = schema(PRODUCTS);
    store.migrate(&products).await.unwrap();
    let p = coll(&products, "products");
    let who = actor("t1");
    for i in 0..40 {
        let r = new_record("t1", &p, &format!("p{i:02}"), values(&[("sku", s(&format!("S{i}")))]), at(i));
        store.create_record(&who, &p, r, None).await.unwrap();
    }
    let before = store.group_stats();

    // 40 at once: deletes of half, patches of the rest (every fourth with a stale
    // If-Match), and creates of which one reuses an active SKU.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (store, p, who) = (store.clone(), p.clone(), who.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("p{i:02}");
            if i % 2 == 0 {
                let request = DeleteRequest { if_match: None, reason: None, deletion_id: format!("del_{i}") };
                store.delete_record(&who, &p, &id, request, at(100 + i)).await.map(|_| "deleted")
            } else {
                let if_match = (i % 4 == 1).then(|| tombstone_domain::lifecycle::IfMatch::Tags(vec![Some(7)]));
                let mut body = serde_json::Map::new();
                body.insert("name".into(), serde_json::json!("renamed"));
                let patch = tombstone_domain::record::Patch(body);
                store.patch_record(&who, &p, &id, if_match, patch, at(100 + i)).await.map(|_| "patched")
            }
        }));
    }
    for i in 0..2 {
        let (store, p, who) = (store.clone(), p.clone(), who.clone());
        tasks.push(tokio::spawn(async move {
            let sku = if i == 0 { "S1".to_string() } else { "NEW".to_string() };
            let r = new_record("t1", &p, &format!("n{i}"), values(&[("sku", s(&sku))]), at(200));
            store.create_record(&who, &p, r, None).await.map(|_| "created")
        }));
    }
    let mut answers = std::collections::BTreeMap::new();
    for task in tasks {
        let answer = match task.await.unwrap() {
            Ok(what) => what.to_string(),
            Err(StoreError::PreconditionFailed { current }) => format!("412 at {current}"),
            Err(StoreError::UniqueConflict { conflicting_id, .. }) => format!("409 {conflicting_id}"),
            Err(e) => panic!("unexpected: {e:?}"),
        };
        *answers.entry(answer).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<String, i32> =
        [("deleted", 20), ("patched", 10), ("412 at 1", 10), ("409 p01", 1), ("created", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(answers, expected);

    let after = store.group_stats();
    assert_eq!(after.writes - before.writes, 31, "every write that succeeded committed in a group");
    assert!(after.commits - before.commits < 31, "writes that arrived together shared commits: {after:?}");
    assert_eq!(store.verify_audit().await.unwrap(), Ok(40 + 31));
    let events = store.list_all_events(&EventQuery { after: 0, limit: 500, ..EventQuery::default() }).await.unwrap();
    // A delete announces the record and its completed deletion operation.
    assert_eq!(events.len(), 40 + 31 + 20, "the events of every write that succeeded, and none more");
    db.drop_db().await;
}
