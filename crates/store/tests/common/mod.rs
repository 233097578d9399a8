//! What the PostgreSQL store's own tests share: a database of their own per test.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::sync::Arc;

use deadpool_postgres::tokio_postgres::{self, NoTls};
use tombstone_store::{PgStore, ScratchDatabase};

/// A fresh database on the test server, dropped with this value (also when the test
/// fails).
pub struct TestDb {
    db: ScratchDatabase,
}

impl TestDb {
    /// `None` (after a notice) when no test server is configured.
    pub async fn create(test: &str) -> Option<Self> {
        Self::create_with(test, "").await
    }

    /// A database made with `options` after `create database <name>`.
    pub async fn create_with(test: &str, options: &str) -> Option<Self> {
        let Ok(admin) = std::env::var("TOMBSTONE_TEST_POSTGRES_URL") else {
            eprintln!("{test}: TOMBSTONE_TEST_POSTGRES_URL is not set; skipping the PostgreSQL test");
            return None;
        };
        Some(Self { db: ScratchDatabase::create_with(&admin, options).await.expect("create database") })
    }

    pub fn url(&self) -> &str {
        self.db.url()
    }

    pub async fn store(&self, pool_size: usize) -> Arc<PgStore> {
        Arc::new(PgStore::connect(self.db.url(), pool_size).await.expect("connect"))
    }

    /// A plain connection to the test database, beside the store's pool.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(self.db.url(), NoTls).await.expect("connect to the test database");
        tokio::spawn(connection);
        client
    }

    /// Drops the database now.
    pub async fn drop_db(self) {
        drop(self);
    }
}
