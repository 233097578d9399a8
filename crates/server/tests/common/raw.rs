//! The physical database beneath an app, for the few tests that must look at or change
//! what the `Store` trait hides: a tampered audit row, an event written by another
//! process, a row edited behind the server's back, the bytes an erasure must leave
//! nowhere. Each helper has one implementation per store — rusqlite on the app's SQLite
//! file, tokio-postgres on its PostgreSQL database — so the test using it is written once
//! and runs on both. This is the only place the tests speak SQL drivers.
//!
//! The SQL a test passes runs as it is on either store: keep it to what both dialects
//! share (plain `select`, `update`, `delete`, `insert … values`, `count(*)`, literals
//! instead of parameters).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{NoTls, SimpleQueryMessage};
use tombstone_store::{PgStore, SqliteStore, Store};

use super::TestApp;

/// A connection to the app's database of its own, as another process would open it.
pub enum RawConnection {
    Sqlite(rusqlite::Connection),
    Postgres { client: tokio_postgres::Client, driver: tokio::task::JoinHandle<()> },
}

impl RawConnection {
    /// Runs statements (`;`-separated) and returns nothing.
    pub async fn execute(&self, sql: &str) {
        match self {
            Self::Sqlite(conn) => conn.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}")),
            Self::Postgres { client, .. } => client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// The rows of a query, every value as text (`None` for null).
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            Self::Sqlite(conn) => {
                let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let columns = stmt.column_count();
                let mut rows = stmt.query([]).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let mut out = Vec::new();
                while let Some(row) = rows.next().unwrap() {
                    out.push((0..columns).map(|i| sqlite_text(row.get_ref(i).unwrap())).collect());
                }
                out
            }
            Self::Postgres { client, .. } => client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => {
                        Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect(),
        }
    }

    /// The first column of the first row, as an integer (a `count(*)`, a `seq`).
    pub async fn int(&self, sql: &str) -> i64 {
        let rows = self.rows(sql).await;
        let value = rows.first().and_then(|r| r.first().cloned().flatten());
        value.unwrap_or_else(|| panic!("{sql}: no value")).parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first column of every row, as text.
    pub async fn column(&self, sql: &str) -> Vec<String> {
        self.rows(sql).await.into_iter().map(|r| r.into_iter().next().flatten().unwrap_or_default()).collect()
    }

    /// Opens a read transaction and reads, so this connection holds a snapshot older than
    /// whatever commits next (SQLite: a WAL reader the checkpoint cannot pass;
    /// PostgreSQL: a snapshot whose xmin keeps VACUUM from pruning newer dead tuples).
    pub async fn hold_snapshot(&self) {
        match self {
            Self::Sqlite(_) => self.execute("begin; select count(*) from outbox;").await,
            Self::Postgres { .. } => {
                self.execute("begin isolation level repeatable read; select count(*) from outbox;").await;
            }
        }
    }

    /// Takes the database's write lock and keeps it until [`RawConnection::execute`]`("rollback")`
    /// or [`RawConnection::close`] (SQLite: `begin immediate`, the one writer's lock;
    /// PostgreSQL: the audit chain's head row, which every write locks before it commits).
    pub async fn hold_write_lock(&self) {
        match self {
            Self::Sqlite(_) => self.execute("begin immediate").await,
            Self::Postgres { .. } => self.execute("begin; select seq from audit_head for update;").await,
        }
    }

    /// Ends the connection, and with it any transaction it held, and returns once the
    /// database knows (PostgreSQL: the backend is gone from `pg_stat_activity`).
    pub async fn close(self) {
        match self {
            Self::Sqlite(conn) => drop(conn),
            Self::Postgres { client, driver } => {
                let _ = client.batch_execute("rollback").await;
                drop(client);
                let _ = driver.await;
            }
        }
    }
}

fn sqlite_text(value: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(r) => Some(r.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

/// Every file below `dir`.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { pending.push(path) } else { out.push(path) }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

impl TestApp {
    /// A connection of its own to the app's database (a second process).
    pub async fn raw(&self) -> RawConnection {
        if let Some(database) = &self.database {
            let (client, connection) = tokio_postgres::connect(database.url(), NoTls).await.expect("connect");
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            RawConnection::Postgres { client, driver }
        } else {
            let conn = rusqlite::Connection::open(self.db_path()).expect("open the database file");
            conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
            RawConnection::Sqlite(conn)
        }
    }

    /// Runs statements on a connection of their own (see [`RawConnection::execute`]).
    pub async fn raw_execute(&self, sql: &str) {
        let conn = self.raw().await;
        conn.execute(sql).await;
        conn.close().await;
    }

    /// [`RawConnection::rows`] on a connection of their own.
    pub async fn raw_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let conn = self.raw().await;
        let rows = conn.rows(sql).await;
        conn.close().await;
        rows
    }

    /// [`RawConnection::int`] on a connection of its own.
    pub async fn raw_int(&self, sql: &str) -> i64 {
        let conn = self.raw().await;
        let value = conn.int(sql).await;
        conn.close().await;
        value
    }

    /// A second store over the app's database, migrated to its schema: what another
    /// process (a replica, `tombstone purge`, `tombstone keys revoke`) works through.
    pub async fn another_store(&self) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = if let Some(database) = &self.database {
            Arc::new(PgStore::connect(database.url(), 2).await.expect("second store"))
        } else {
            Arc::new(SqliteStore::open(self.db_path()).expect("second store"))
        };
        store.migrate(&self.config.schema).await.expect("migrate the second store");
        store
    }

    /// Every value stored in any row of any table, as text, with its table: the logical
    /// view of everything the database holds.
    pub async fn stored_text(&self) -> Vec<(String, String)> {
        let conn = self.raw().await;
        let tables = match &conn {
            RawConnection::Sqlite(_) => conn.column("select name from sqlite_master where type = 'table'").await,
            RawConnection::Postgres { .. } => {
                conn.column("select tablename from pg_tables where schemaname = current_schema() order by 1").await
            }
        };
        let mut out = Vec::new();
        for table in tables {
            for row in conn.rows(&format!("select * from \"{table}\"")).await {
                out.extend(row.into_iter().flatten().map(|v| (table.clone(), v)));
            }
        }
        conn.close().await;
        out
    }

    /// Where the bytes of `needle` are physically stored, live or dead: every file of the
    /// app's directory (SQLite's database, WAL and shared memory; the search index) and,
    /// on PostgreSQL, every page of every relation of the database — tables, their TOAST
    /// tables and indexes, read raw with `pageinspect` — named `relation/block`.
    ///
    /// PostgreSQL's raw pages are read through its buffer cache, so they are the pages
    /// as they are now, before a checkpoint writes them out; what a page once held stays
    /// in the WAL until it is recycled, which no test can see (docs/OPERATIONS.md).
    pub async fn bytes_holding(&self, needle: &str) -> Vec<String> {
        let mut found: Vec<String> = files_under(self.dir.path())
            .into_iter()
            .filter(|f| contains(&std::fs::read(f).unwrap_or_default(), needle))
            .map(|f| f.display().to_string())
            .collect();
        if let Some(database) = &self.database {
            let (client, connection) = tokio_postgres::connect(database.url(), NoTls).await.expect("connect");
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            client.batch_execute("create extension if not exists pageinspect").await.expect("pageinspect");
            let rows = client
                .query(
                    "with rels as (
                         select c.oid from pg_class c
                         where c.relnamespace = current_schema()::regnamespace and c.relkind in ('r', 'i', 'm')
                         union all
                         select c.reltoastrelid from pg_class c
                         where c.relnamespace = current_schema()::regnamespace and c.reltoastrelid <> 0
                         union all
                         select i.indexrelid from pg_class c join pg_index i on i.indrelid = c.reltoastrelid
                         where c.relnamespace = current_schema()::regnamespace and c.reltoastrelid <> 0
                     )
                     select r.oid::regclass::text || '/' || b
                     from rels r,
                          generate_series(0, pg_relation_size(r.oid) / current_setting('block_size')::bigint - 1) b
                     where position(convert_to($1, 'UTF8') in get_raw_page(r.oid::regclass::text, b)) > 0
                     order by 1",
                    &[&needle],
                )
                .await
                .expect("scan raw pages");
            found.extend(rows.iter().map(|r| r.get::<_, String>(0)));
            drop(client);
            let _ = driver.await;
        }
        found
    }
}

impl TestApp {
    /// The receipt of the erasure of `path` once PostgreSQL's vacuum step is done.
    ///
    /// The store vacuums at once after the erasure when no transaction older than it is
    /// still running in the cluster; while tests run in parallel, another test's open
    /// write (in another database of the same cluster) makes it wait for the worker, which
    /// this drives, a moment at a time, until the step is done. SQLite's WAL step and a
    /// receipt without a `vacuum` step come back as they are.
    pub async fn erasure_settled(&self, path: &str, receipt: serde_json::Value) -> serde_json::Value {
        let mut receipt = receipt;
        for _ in 0..100 {
            if !receipt["pending"].as_array().is_some_and(|p| p.iter().any(|s| s == "vacuum")) {
                return receipt;
            }
            self.store.finish_erasure_wal(Duration::from_millis(100)).await.expect("the vacuum step");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let again = self.post_empty(&format!("{path}:erase"), &self.admin).await;
            again.assert_status(200);
            receipt = again.json();
        }
        panic!("the vacuum step never finished: {receipt}");
    }
}

impl TestApp {
    /// Writes `n` `record.created` events of tenant t1 into the outbox in one transaction of
    /// another connection (as another process committing a large batch would), for records
    /// `{collection}-000001`… with data `{"name": "seeded 1"}`…; the app hears of them
    /// only when its own next commit wakes its followers.
    pub async fn seed_created_events(&self, collection: &str, n: usize) {
        let sql = if self.database.is_some() {
            format!(
                "insert into outbox (id, type, tenant, collection, record_id, version, occurred_at, data)
                 select 'evt_seeded_' || lpad(i::text, 6, '0'), 'record.created', 't1', '{collection}',
                        '{collection}-' || lpad(i::text, 6, '0'), 1, 0, json_build_object('name', 'seeded ' || i)
                 from generate_series(1, {n}) as i"
            )
        } else {
            format!(
                "with recursive k(i) as (select 1 union all select i + 1 from k where i < {n})
                 insert into outbox (id, type, tenant, collection, record_id, version, occurred_at, data)
                 select printf('evt_seeded_%06d', i), 'record.created', 't1', '{collection}',
                        printf('{collection}-%06d', i), 1, 0, json_object('name', printf('seeded %d', i)) from k"
            )
        };
        self.raw_execute(&sql).await;
    }
}

/// A store that does not answer, and what keeps it from answering (drop it last).
pub struct Unanswering {
    pub store: Arc<dyn Store>,
    /// SQLite: the connection holding the file exclusively.
    pub blocker: Option<rusqlite::Connection>,
}

impl TestApp {
    /// A store whose database does not answer: on SQLite, a read-only store over a file in
    /// rollback-journal mode that another connection holds exclusively (no read can start;
    /// after the readers' busy timeout, "database is locked"); on PostgreSQL, a store
    /// whose database was dropped under it (its connections are ended, and new ones are
    /// refused: "database does not exist").
    pub async fn unanswering_store(&self) -> Unanswering {
        if self.database.is_some() {
            let admin = std::env::var("TOMBSTONE_TEST_POSTGRES_URL").expect("TOMBSTONE_TEST_POSTGRES_URL");
            let doomed = tombstone_store::ScratchDatabase::create(&admin).await.expect("a database to drop");
            let store = PgStore::connect(doomed.url(), 2).await.expect("connect");
            store.ping().await.expect("it answers before its database is dropped");
            drop(doomed);
            Unanswering { store: Arc::new(store), blocker: None }
        } else {
            let path = self.dir.path().join("locked.db");
            let blocker = rusqlite::Connection::open(&path).unwrap();
            blocker.execute_batch("create table t (x integer)").unwrap();
            let store = SqliteStore::open_read_only(&path).unwrap();
            blocker.execute_batch("begin exclusive; insert into t values (1);").unwrap();
            Unanswering { store: Arc::new(store), blocker: Some(blocker) }
        }
    }
}
