//! Database errors keep their cause and are classified by SQLite's result code: a busy
//! database, a full disk and a unique violation each become their own `StoreError`, made
//! here by a real SQLite file in the state that causes them.

use std::path::Path;

use rusqlite::Connection;
use tombstone_store::{SqliteStore, Store, StoreError};

/// A table with a per-tenant unique value, as the store's record tables have.
fn unique_table(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join("u.db")).expect("open");
    conn.execute_batch(
        "create table t_items (tenant text not null, id text primary key, sku text, unique (tenant, sku));",
    )
    .expect("table");
    conn.execute("insert into t_items values ('t1', 'a', 'X')", []).expect("first row");
    conn
}

#[test]
fn a_unique_violation_is_a_constraint_error_naming_its_fields() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = unique_table(dir.path());
    let err: StoreError =
        conn.execute("insert into t_items values ('t1', 'b', 'X')", []).expect_err("duplicate sku").into();
    let StoreError::Constraint { fields, .. } = &err else { panic!("not a constraint error: {err:?}") };
    // The table and the tenant column are the store's business, not the client's.
    assert_eq!(fields, &["sku"]);
    assert!(
        err.cause_chain().contains("UNIQUE constraint failed: t_items.tenant, t_items.sku"),
        "{}",
        err.cause_chain()
    );

    let err: StoreError = conn.execute("insert into t_items values ('t2', 'a', 'Y')", []).expect_err("same id").into();
    assert!(matches!(&err, StoreError::Constraint { fields, .. } if fields == &["id"]), "{err:?}");
    // Other constraints are not unique conflicts.
    conn.execute_batch("create table n (v text not null)").expect("table");
    let err: StoreError = conn.execute("insert into n values (null)", []).expect_err("not null").into();
    assert!(matches!(err, StoreError::Database { .. }), "{err:?}");
}

#[test]
fn a_full_database_is_storage_full_and_keeps_its_cause() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = Connection::open(dir.path().join("f.db")).expect("open");
    conn.execute_batch("create table blobs (b blob); pragma max_page_count = 8;").expect("limit");
    let err: StoreError = conn
        .execute("insert into blobs values (zeroblob(100000))", [])
        .expect_err("a row larger than the size limit")
        .into();
    assert!(matches!(err, StoreError::StorageFull { .. }), "{err:?}");
    assert!(err.is_transient());
    let chain = err.cause_chain();
    assert!(chain.starts_with("the storage is full: ") && chain.contains("full"), "{chain}");
    assert!(std::error::Error::source(&err).is_some(), "the rusqlite error is kept as the source");
    // Workers log errors with `%e`: the text alone names SQLite's reason.
    assert!(err.to_string().contains("database or disk is full"), "{err}");
}

#[test]
fn an_unopenable_file_is_a_storage_failure() {
    let dir = tempfile::tempdir().expect("dir");
    let err: StoreError =
        Connection::open_with_flags(dir.path().join("missing/x.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .expect_err("no such directory")
            .into();
    assert!(matches!(err, StoreError::StorageFailed { .. }), "{err:?}");
}

/// Another process holds the write lock past the busy timeout: the store's write fails as
/// `Busy` (not an opaque internal error), writes nothing, and works again once the lock
/// is released.
#[tokio::test]
async fn a_write_blocked_by_another_process_is_busy_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("b.db");
    let store = SqliteStore::open(&path).expect("store");
    store.set_meta("k", "before").await.expect("first write");

    let other = Connection::open(&path).expect("second connection");
    other.execute_batch("begin immediate").expect("take the write lock");
    let err = store.set_meta("k", "during").await.expect_err("the lock is held");
    assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");
    assert!(err.cause_chain().contains("database is locked"), "{}", err.cause_chain());
    other.execute_batch("rollback").expect("release");

    assert_eq!(store.get_meta("k").await.expect("read").as_deref(), Some("before"), "the refused write left nothing");
    store.set_meta("k", "after").await.expect("writes work again");
    assert_eq!(store.get_meta("k").await.expect("read").as_deref(), Some("after"));
}
