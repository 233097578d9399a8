//! The test harness: a [`TestApp`] with its own fresh store, a manual clock and typed
//! request helpers. Requests go through the real router in-process.
//!
//! The store is SQLite in a temporary directory, or — with `TOMBSTONE_TEST_STORE=postgres`
//! — a fresh database on the server `TOMBSTONE_TEST_POSTGRES_URL` points at (`scripts/test`
//! runs this suite both ways). A test that must look beneath the `Store` trait (raw
//! rows, another connection, the bytes an erasure leaves) does it through [`raw`], whose
//! helpers have one implementation per store, so the test is written once for both. With
//! `TOMBSTONE_TEST_CACHE=redis` too, PostgreSQL's apps read through the shared cache in the
//! Redis of `TOMBSTONE_TEST_REDIS_URL` instead of a memory cache. Only a
//! test of a mechanism SQLite alone has (its read-only store, its file locks) makes its app
//! with [`TestApp::new_sqlite`], which is SQLite whatever the run.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

pub mod raw;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tempfile::TempDir;
use tombstone_domain::config::Config;
use tombstone_domain::scope::parse_scopes;
use tombstone_domain::time::{Clock, ManualClock};
use tombstone_server::keys::create_key;
use tombstone_server::search::SearchIndex;
use tombstone_server::{AppState, router};
use tombstone_store::{MemoryCache, PgStore, ScratchDatabase, SqliteStore, Store};

/// The schema most tests use.
pub const TEST_SCHEMA: &str = r#"
[retention]
default = "7d"

[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku         = { type = "string", required = true, max_length = 32 }
name        = { type = "string", required = true }
price_cents = { type = "integer" }
rating      = { type = "number" }
active      = { type = "boolean" }
launched_at = { type = "timestamp" }
meta        = { type = "json" }
category_id = { type = "ref", collection = "categories", on_delete = "restrict" }

[collections.categories.fields]
name = { type = "string", required = true }

[collections.customers]
retention = "1d"
unique = [["email"]]

[collections.customers.fields]
email = { type = "string", required = true, case_insensitive = true, pii = true }
name  = { type = "string" }

[collections.secrets]
delete = "hard"

[collections.secrets.fields]
value = { type = "string", required = true }

[collections.contracts]
require_if_match = true

[collections.contracts.fields]
title = { type = "string", required = true }
"#;

/// A running application over a fresh database.
pub struct TestApp {
    pub router: Router,
    pub store: Arc<dyn Store>,
    /// The same store when it is SQLite's.
    pub sqlite_store: Option<Arc<SqliteStore>>,
    /// The same store when it is PostgreSQL's.
    pub pg_store: Option<Arc<PgStore>>,
    /// The PostgreSQL database of this app, dropped with it.
    pub database: Option<ScratchDatabase>,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    /// An admin key of tenant `t1`.
    pub admin: String,
    pub dir: TempDir,
    /// The full-text index; tests drive its indexer with [`TestApp::index`].
    pub search: Arc<SearchIndex>,
    /// The files store (`[files]` of the config), when a collection has a file field.
    pub files: Option<Arc<tombstone_server::files::Files>>,
}

/// A response, with its body read.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl TestResponse {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(self.status.as_u16(), expected, "unexpected status; body: {}", self.text);
        self
    }

    /// Asserts a problem+json answer with this status and type.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) -> Value {
        self.assert_status(status);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.text);
        let body = self.json();
        assert_eq!(body["type"], kind, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(body["request_id"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
        assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
        body
    }
}

/// Whether this run's stores are PostgreSQL's (`TOMBSTONE_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("TOMBSTONE_TEST_STORE").is_ok_and(|s| s == "postgres")
}

impl TestApp {
    /// An app over [`TEST_SCHEMA`].
    pub async fn new() -> Self {
        Self::with_schema(TEST_SCHEMA).await
    }

    /// An app over another schema.
    pub async fn with_schema(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::in_dir(toml, dir).await
    }

    /// An app over [`TEST_SCHEMA`] on SQLite whatever the run: for a test of SQLite's own
    /// files and connections.
    pub async fn new_sqlite() -> Self {
        Self::sqlite_with_schema(TEST_SCHEMA).await
    }

    /// An app over another schema on SQLite whatever the run.
    pub async fn sqlite_with_schema(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::build(toml, dir, false).await
    }

    /// An app over a schema, with its files in `dir`.
    pub async fn in_dir(toml: &str, dir: TempDir) -> Self {
        Self::build(toml, dir, on_postgres()).await
    }

    /// An app whose PostgreSQL connections start with these server settings (the URL's
    /// `options`, as an operator would put them in `storage.url`: `-c lock_timeout=300`);
    /// on SQLite, [`TestApp::with_schema`].
    pub async fn with_postgres_options(toml: &str, options: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = Self::scratch_database(on_postgres()).await;
        Self::open_with(toml, dir, database, Some(options)).await
    }

    async fn scratch_database(postgres: bool) -> Option<ScratchDatabase> {
        if !postgres {
            return None;
        }
        let admin = std::env::var("TOMBSTONE_TEST_POSTGRES_URL")
            .expect("TOMBSTONE_TEST_STORE=postgres needs TOMBSTONE_TEST_POSTGRES_URL");
        Some(ScratchDatabase::create(&admin).await.expect("create a test database"))
    }

    async fn build(toml: &str, dir: TempDir, postgres: bool) -> Self {
        let database = Self::scratch_database(postgres).await;
        Self::open(toml, dir, database).await
    }

    /// The app stopped and started again over the same data (its database, its files),
    /// with `toml` as its config: what a restart of the server sees.
    pub async fn restart(self, toml: &str) -> Self {
        let TestApp { dir, database, router, store, sqlite_store, pg_store, search, files, .. } = self;
        drop((router, store, sqlite_store, pg_store, search, files));
        Self::open(toml, dir, database).await
    }

    async fn open(toml: &str, dir: TempDir, database: Option<ScratchDatabase>) -> Self {
        Self::open_with(toml, dir, database, None).await
    }

    async fn open_with(toml: &str, dir: TempDir, database: Option<ScratchDatabase>, options: Option<&str>) -> Self {
        let config = Config::parse(toml, dir.path()).expect("test schema");
        // The production path: a read cache in front of the store.
        let cache = Arc::new(MemoryCache::new(10_000, std::time::Duration::from_secs(300)));
        let (store, sqlite_store, pg_store): (Arc<dyn Store>, _, _) = if let Some(database) = &database {
            let url = match options {
                Some(options) => {
                    let separator = if database.url().contains('?') { '&' } else { '?' };
                    let encoded = options.replace('%', "%25").replace(' ', "%20").replace('=', "%3D");
                    format!("{}{separator}options={encoded}", database.url())
                }
                None => database.url().to_string(),
            };
            let store = PgStore::connect(&url, 8).await.expect("connect");
            // TOMBSTONE_TEST_CACHE=redis: the shared cache of TOMBSTONE_TEST_REDIS_URL instead
            // (each database has its own namespace in it), to run the suite as replicas do.
            let store = if std::env::var("TOMBSTONE_TEST_CACHE").is_ok_and(|c| c == "redis") {
                let redis = std::env::var("TOMBSTONE_TEST_REDIS_URL")
                    .expect("TOMBSTONE_TEST_CACHE=redis needs TOMBSTONE_TEST_REDIS_URL");
                store.with_redis(&redis, std::time::Duration::from_secs(300)).await.expect("redis cache")
            } else {
                store.with_cache(cache).await.expect("cache")
            };
            let store = Arc::new(store);
            (store.clone() as Arc<dyn Store>, None, Some(store))
        } else {
            let store = SqliteStore::open(&dir.path().join("test.db")).expect("open store");
            let store = Arc::new(store.with_cache(cache).expect("cache"));
            (store.clone() as Arc<dyn Store>, Some(store), None)
        };
        store.migrate(&config.schema).await.expect("migrate");
        let clock = Arc::new(ManualClock::default());
        let search = Arc::new(SearchIndex::open(&dir.path().join("search"), true).expect("search index"));
        let mut state = AppState::new(config.schema.clone(), store.clone(), clock.clone())
            .with_search(search.clone())
            .with_events(config.events.clone());
        let files = config
            .schema
            .collections
            .values()
            .any(|c| c.has_files())
            .then(|| Arc::new(tombstone_server::files::Files::open(&config.files).expect("files store")));
        if let Some(files) = &files {
            state = state.with_files(files.clone());
        }
        let router = router(state);
        let mut app = Self {
            router,
            store,
            sqlite_store,
            pg_store,
            database,
            clock,
            config,
            admin: String::new(),
            dir,
            search,
            files,
        };
        app.admin = app.key("t1", "admin").await;
        app
    }

    /// Lets the search indexer consume the outbox (the server does this after every commit).
    pub async fn index(&self) -> u64 {
        self.search.catch_up(self.store.as_ref(), &self.config.schema).await.expect("indexer")
    }

    /// The SQLite store of an app made by [`TestApp::new_sqlite`].
    pub fn sqlite(&self) -> &Arc<SqliteStore> {
        self.sqlite_store.as_ref().expect("an SQLite test made its app with TestApp::new_sqlite")
    }

    /// How many times the store's event feed read the outbox (either store).
    pub fn event_reads(&self) -> u64 {
        match (&self.sqlite_store, &self.pg_store) {
            (Some(store), _) => store.event_reads(),
            (_, Some(store)) => store.event_reads(),
            (None, None) => unreachable!("an app has one store"),
        }
    }

    /// The database file of an app made by [`TestApp::new_sqlite`].
    pub fn db_path(&self) -> &Path {
        self.sqlite().path()
    }

    /// Creates a key and returns its secret.
    pub async fn key(&self, tenant: &str, scopes: &str) -> String {
        let scopes = parse_scopes(scopes).expect("scopes");
        create_key(self.store.as_ref(), tenant, scopes, None, Clock::now(self.clock.as_ref()))
            .await
            .expect("create key")
            .secret
    }

    /// Sends a request.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body.map_or_else(Body::empty, Body::from)).expect("request");
        let response = tower::ServiceExt::oneshot(self.router.clone(), request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        TestResponse { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&self, path: &str, key: &str) -> TestResponse {
        self.send(Method::GET, path, Some(key), &[], None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> TestResponse {
        self.send(Method::POST, path, Some(key), &[], Some(body.to_string().into_bytes())).await
    }

    pub async fn post_empty(&self, path: &str, key: &str) -> TestResponse {
        self.send(Method::POST, path, Some(key), &[], None).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: &Value) -> TestResponse {
        self.send(Method::PATCH, path, Some(key), &[], Some(body.to_string().into_bytes())).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> TestResponse {
        self.send(Method::DELETE, path, Some(key), &[], None).await
    }

    /// Creates a record and returns its representation (asserting 201).
    pub async fn create(&self, collection: &str, key: &str, body: &Value) -> Value {
        let r = self.post(&format!("/v1/{collection}"), key, body).await;
        r.assert_status(201);
        r.json()
    }
}
