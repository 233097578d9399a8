//! The database a binary test runs against, on each store: SQLite's file in the config
//! directory always, and a fresh PostgreSQL database when `TOMBSTONE_TEST_POSTGRES_URL`
//! is set (which `scripts/test` does). A test written over [`each_store`] runs once per
//! store in the same `cargo test`; what it must see or change beneath the binary (a
//! tampered audit row, rows seeded faster than the API could, counts of rows) goes
//! through [`TestDb`], one implementation per store, so the test is written once.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::{NoTls, SimpleQueryMessage};
use tombstone_store::ScratchDatabase;

/// Where a test's data lives.
pub enum TestDb {
    /// `data/<file>` below the config directory (`storage.url = "sqlite://data/<file>"`).
    Sqlite {
        file: String,
        config_dir: Option<PathBuf>,
    },
    Postgres(ScratchDatabase),
}

/// The stores this run tests the binary on: SQLite's (file `data/<file>`), then
/// PostgreSQL's when the tests have one.
pub fn each_store(file: &str) -> Vec<TestDb> {
    let mut stores = vec![TestDb::Sqlite { file: file.to_string(), config_dir: None }];
    match std::env::var("TOMBSTONE_TEST_POSTGRES_URL") {
        Ok(admin) => {
            let database = runtime().block_on(ScratchDatabase::create(&admin)).expect("create a test database");
            stores.push(TestDb::Postgres(database));
        }
        Err(_) => eprintln!("TOMBSTONE_TEST_POSTGRES_URL is not set: the PostgreSQL run is skipped"),
    }
    stores
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

impl TestDb {
    /// The store's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The config's `storage.url` (SQLite's relative to the config file).
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { file, .. } => format!("sqlite://data/{file}"),
            Self::Postgres(database) => database.url().to_string(),
        }
    }

    /// `toml` with its `storage.url` line pointing at this store.
    pub fn config(&self, toml: &str) -> String {
        let url = self.url();
        let mut out: Vec<String> = Vec::new();
        for line in toml.lines() {
            if line.trim_start().starts_with("url = \"sqlite://") {
                out.push(format!("url = \"{url}\""));
            } else {
                out.push(line.to_string());
            }
        }
        assert!(out.iter().any(|l| l.contains(&url)), "the config has no storage.url line to point at the store");
        out.join("\n") + "\n"
    }

    /// Tells an SQLite database where its config directory is (its file is relative to it).
    pub fn in_config_dir(mut self, dir: &std::path::Path) -> Self {
        if let Self::Sqlite { config_dir, .. } = &mut self {
            *config_dir = Some(dir.to_path_buf());
        }
        self
    }

    fn sqlite(&self) -> rusqlite::Connection {
        let Self::Sqlite { file, config_dir } = self else { unreachable!("an SQLite database") };
        let dir = config_dir.as_ref().expect("TestDb::in_config_dir before opening SQLite's file");
        let conn = rusqlite::Connection::open(dir.join("data").join(file)).expect("open the database file");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        conn
    }

    fn postgres<T>(&self, work: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
        let Self::Postgres(database) = self else { unreachable!("a PostgreSQL database") };
        runtime().block_on(async {
            let (client, connection) = tokio_postgres::connect(database.url(), NoTls).await.expect("connect");
            let driver = tokio::spawn(connection);
            let out = work(&client).await;
            drop(client);
            let _ = driver.await;
            out
        })
    }

    /// Runs statements (`;`-separated) in the store's SQL; keep to what both dialects share.
    pub fn execute(&self, sql: &str) {
        match self {
            Self::Sqlite { .. } => self.sqlite().execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}")),
            Self::Postgres(_) => {
                self.postgres(async |c| c.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")));
            }
        }
    }

    /// The first column of every row, as text.
    pub fn column(&self, sql: &str) -> Vec<String> {
        match self {
            Self::Sqlite { .. } => {
                let conn = self.sqlite();
                let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let rows = stmt.query_map([], |r| {
                    Ok(match r.get_ref(0)? {
                        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        other => panic!("{sql}: unexpected {other:?}"),
                    })
                });
                rows.unwrap_or_else(|e| panic!("{sql}: {e}")).collect::<Result<_, _>>().unwrap()
            }
            Self::Postgres(_) => self.postgres(async |c| {
                c.simple_query(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .into_iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_string()),
                        _ => None,
                    })
                    .collect()
            }),
        }
    }

    /// The first column of the first row, as an integer (a `count(*)`).
    pub fn int(&self, sql: &str) -> i64 {
        let values = self.column(sql);
        values.first().unwrap_or_else(|| panic!("{sql}: no row")).parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Writes `n` soft-deleted notes of tenant t1 (`n0000000`…) whose window ended long
    /// ago straight into `rec_notes`, in one transaction (the API would take minutes for
    /// this many); returns their ids.
    pub fn seed_expired_notes(&self, n: usize) -> Vec<String> {
        let sql = match self {
            Self::Sqlite { .. } => format!(
                "with recursive k(i) as (select 0 union all select i + 1 from k where i < {n} - 1)
                 insert into rec_notes (tenant, id, version, created_at, updated_at, deleted_at, deleted_by, deletion_id, purge_at, f_text)
                 select 't1', printf('n%07d', i), 2, 1000, 2000, 2000, 'key_seed', 'del_' || printf('n%07d', i), 3000 + i, 'note' from k"
            ),
            Self::Postgres(_) => format!(
                "insert into rec_notes (tenant, id, version, created_at, updated_at, deleted_at, deleted_by, deletion_id, purge_at, f_text)
                 select 't1', 'n' || lpad(i::text, 7, '0'), 2, 1000, 2000, 2000, 'key_seed', 'del_n' || lpad(i::text, 7, '0'), 3000 + i, 'note'
                 from generate_series(0, {n} - 1) as i"
            ),
        };
        self.execute(&sql);
        (0..n).map(|i| format!("n{i:07}")).collect()
    }
}
