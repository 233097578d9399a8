//! What the store's test binaries share: a time line, schemas and records to build tests
//! from, and a PostgreSQL database of their own per test.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::Path;
use std::sync::Arc;

use deadpool_postgres::tokio_postgres::{self, NoTls};
use tombstone_domain::config::{Collection, Config, Schema};
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{FieldValue, Record, Values};
use tombstone_domain::time::Timestamp;
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

/// 2026-01-01T00:00:00Z, the start of every test's time line.
pub const T0: i64 = 1_767_225_600_000_000;
pub const SECOND: i64 = 1_000_000;
pub const HOUR: i64 = 3600 * SECOND;

pub fn at(offset_micros: i64) -> Timestamp {
    Timestamp::from_micros(T0 + offset_micros)
}

pub fn schema(toml: &str) -> Arc<Schema> {
    Config::parse(toml, Path::new(".")).expect("test schema").schema
}

pub fn coll(schema: &Schema, name: &str) -> Arc<Collection> {
    schema.collection(name).unwrap_or_else(|| panic!("no collection {name}")).clone()
}

pub fn s(v: &str) -> FieldValue {
    FieldValue::String(v.to_string())
}

pub fn values(pairs: &[(&str, FieldValue)]) -> Values {
    pairs.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect()
}

/// A new record (version 1) as a create would store it.
pub fn new_record(tenant: &str, collection: &Collection, id: &str, vals: Values, now: Timestamp) -> Record {
    Record {
        tenant: tenant.to_string(),
        collection: collection.name.clone(),
        id: id.to_string(),
        version: 1,
        created_at: now,
        updated_at: now,
        deletion: None,
        archive: None,
        legal_hold: false,
        values: vals,
    }
}

pub fn actor(tenant: &str) -> Actor {
    Actor { tenant: tenant.to_string(), key_id: format!("key_{tenant}"), request_id: "req_test".into() }
}
