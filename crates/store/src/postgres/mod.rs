//! The PostgreSQL store: a pool of connections (deadpool over tokio-postgres), the same
//! tables and row mapping as SQLite's store, and the record-level write primitives
//! ([`PgTx`]) that the backend-neutral write rules run over.
//!
//! What PostgreSQL does differently from SQLite's single writer, and why it stays correct
//! with many writers at once:
//! - uniqueness among active records is enforced by partial unique indexes, and a
//!   violation (SQLSTATE 23505, by constraint name) is the answer — never a SELECT first;
//! - the audit chain's head is one row locked `FOR UPDATE` by each appending transaction
//!   until it commits, so the chain never forks;
//! - outbox seqs are drawn under that same lock, so seq order is commit order and a
//!   follower reading `seq > last` skips nothing;
//! - schema changes run under an advisory lock, so replicas starting together apply each
//!   migration once;
//! - the single-record writes of requests arriving together share one transaction and one
//!   commit (`group`), each in its own savepoint, so the head lock and the WAL flush are
//!   paid once per group rather than once per write.

mod areas;
mod changes;
mod error;
mod files;
mod group;
mod history;
mod idempotency;
mod leases;
mod notify;
mod records;
mod rules_tx;
mod schema;
mod scratch;
mod tls;
mod traits;
mod tx;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tombstone_domain::audit::{AuditEntry, ChainError, ChainVerifier};
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::events::Event;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::query::{Candidates, ListQuery};
use tombstone_domain::record::Record;
use tombstone_domain::scope::parse_scopes;
use tombstone_domain::time::Timestamp;

pub use self::group::GroupStats;
use self::records::TableSql;
pub use self::scratch::ScratchDatabase;
pub use self::tx::PgTx;
use crate::{AuditQuery, EventQuery, KeyStore, Page, StoreError, StoredKey};

/// A boxed future that borrows for `'a` (what a closure over a transaction returns).
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The statements of every migrated collection, by name.
pub(crate) type Tables = HashMap<String, Arc<TableSql>>;

/// How long a request waits for a free connection before the store answers `Busy`.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// How long opening (or checking) one connection may take before the database counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a statement of the server's waits for a lock before it fails (503 `busy`),
/// unless `storage.url` sets `lock_timeout` in its `options`. Half the pool's wait: a
/// request blocked behind a lock frees its connection before the requests queued for one
/// give up. No `statement_timeout` is set: purge batches, erasure's `VACUUM FULL` and
/// migrations on large tables legitimately run for longer than any request should, and
/// the operator can still set one in the URL.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store could not reach the database: one line naming where it looked and what
/// went wrong (never the URL: it may carry a password).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {host}: {cause}")]
pub struct ConnectError {
    pub host: String,
    pub cause: String,
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// Where it connects, for messages.
    host: String,
    tables: RwLock<Arc<Tables>>,
    schema: RwLock<Arc<Schema>>,
    changes: Arc<tokio::sync::Notify>,
    /// The read cache in front of `get_record`, when there is one.
    cache: Option<Arc<dyn crate::RecordCache>>,
    /// The shared cache in Redis in front of `get_record`, when there is one.
    shared: Option<Arc<crate::RedisCache>>,
    /// Where it connects, and through which TLS connector: what the cache's `LISTEN`
    /// connection opens.
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// This store's name in the cache notifications it sends, so that its own listener
    /// skips them (its writes invalidated its cache already).
    origin: Arc<str>,
    /// The `LISTEN` task that invalidates the memory cache on other processes' writes.
    listener: Option<notify::Listener>,
    /// How far the cache has followed the outbox for other processes' changes.
    followed: Arc<tokio::sync::Mutex<i64>>,
    /// The group committer of the requests' single-record writes.
    group: Arc<group::Group>,
    /// Event-feed reads of the outbox so far (see [`PgStore::event_reads`]).
    event_reads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("host", &self.host).finish_non_exhaustive()
    }
}

/// `host:port` of each host the configuration names.
fn describe_hosts(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            }
        })
        .collect();
    if hosts.is_empty() { format!("localhost:{}", ports.first().copied().unwrap_or(5432)) } else { hosts.join(",") }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl PgStore {
    /// Opens a pool of at most `pool_size` connections to `url` (`postgres://…`), checks
    /// that the database answers, and applies the system migrations it lacks.
    ///
    /// # Errors
    /// [`StoreError::StorageFailed`] with a [`ConnectError`] when the database cannot be
    /// reached (its text is one line: the host and the cause); [`StoreError::Internal`]
    /// for a URL that does not parse or TLS settings that cannot be honoured (see the
    /// `tls` module for `sslmode` and `sslrootcert`); [`StoreError::Migration`] when a
    /// system migration fails.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let tls::Connection { mut config, tls } = tls::connection(url).map_err(StoreError::Internal)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tombstone");
        }
        // A write waiting for a lock (a long transaction of someone's, an erasure's
        // `VACUUM FULL`, a `lock table` by hand) gives up after `DEFAULT_LOCK_TIMEOUT` and
        // answers 503 `busy`, instead of holding its request, its pool connection and
        // everything queued behind it for as long as the lock is held. An operator's own
        // `lock_timeout` in the URL's `options` (`0` turns it off) wins. Schema changes
        // lift it for their transaction (replicas starting together wait their turn).
        let options = config.get_options().unwrap_or_default().to_string();
        let mut options = options;
        if !options.contains("lock_timeout") {
            let ms = DEFAULT_LOCK_TIMEOUT.as_millis();
            options = format!("{options} -c lock_timeout={ms}").trim().to_string();
        }
        // No parallel plans for the server's statements unless the URL asks for them: its
        // queries are index probes and short ranges, and the one aggregate, `count=true`,
        // ran slower in parallel under concurrent requests (each count took workers from
        // the cores the other requests needed; docs/DECISIONS.md, "Archive").
        if !options.contains("max_parallel_workers_per_gather") {
            options = format!("{options} -c max_parallel_workers_per_gather=0").trim().to_string();
        }
        config.options(options);
        let host = describe_hosts(&config);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let unreachable = |e: &dyn std::error::Error| StoreError::StorageFailed {
            source: Arc::new(ConnectError { host: host.clone(), cause: one_line(&crate::cause_chain(e)) }),
        };
        let mut client = pool.get().await.map_err(|e| unreachable(&e))?;
        schema::migrate_system(&mut client).await?;
        drop(client);
        let changes = Arc::new(tokio::sync::Notify::new());
        let origin: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        Ok(Self {
            group: Arc::new(group::Group::new(pool.clone(), changes.clone(), None, None, origin.clone())),
            pool,
            host,
            tables: RwLock::new(Arc::new(Tables::new())),
            schema: RwLock::new(Arc::new(Schema::default())),
            changes,
            cache: None,
            shared: None,
            config,
            tls,
            origin,
            listener: None,
            followed: Arc::new(tokio::sync::Mutex::new(0)),
            event_reads: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many times the event feed (`list_events`, `list_all_events`) read the outbox:
    /// lets a test see that open streams share one follower instead of each polling.
    #[must_use]
    pub fn event_reads(&self) -> u64 {
        self.event_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Puts a read cache in front of `get_record`. Every write through this store
    /// invalidates what it changed after its commit and before its caller hears of it;
    /// what other processes (replicas, the CLI) change reaches the cache through the
    /// `NOTIFY` every writing transaction sends, heard by a `LISTEN` connection this
    /// store opens now (see `notify`). [`crate::Store::sync_cache`], which the server
    /// runs once a second, follows the outbox as well: a backstop for writers that do not
    /// notify (an older version during a rolling upgrade).
    ///
    /// # Errors
    /// The database failed (reading where the outbox ends now).
    pub async fn with_cache(mut self, cache: Arc<dyn crate::RecordCache>) -> Result<Self, StoreError> {
        *self.followed.lock().await = self.last_event_seq().await?;
        self.listener = Some(notify::listen(self.config.clone(), self.tls.clone(), self.origin.clone(), &cache).await);
        self.group = Arc::new(group::Group::new(
            self.pool.clone(),
            self.changes.clone(),
            Some(cache.clone()),
            None,
            self.origin.clone(),
        ));
        self.cache = Some(cache);
        Ok(self)
    }

    /// Puts the shared cache in Redis at `url` in front of `get_record`, keeping entries at
    /// most `ttl`, under this database's cache namespace (so that one Redis may serve
    /// several deployments, and tests). Every write through this store invalidates what
    /// it changed in Redis after its commit and before its caller hears of it; see
    /// [`crate::redis_cache`] for the fill race and for Redis being unavailable.
    ///
    /// # Errors
    /// The database failed (reading the namespace or where the outbox ends), or `url` is
    /// not a Redis URL. Redis itself being down is not an error: reads go to the database.
    pub async fn with_redis(mut self, url: &str, ttl: Duration) -> Result<Self, StoreError> {
        let namespace = self.cache_namespace().await?;
        let shared = Arc::new(crate::RedisCache::new(url, &namespace, ttl)?);
        *self.followed.lock().await = self.last_event_seq().await?;
        self.group = Arc::new(group::Group::new(
            self.pool.clone(),
            self.changes.clone(),
            None,
            Some(shared.clone()),
            self.origin.clone(),
        ));
        self.shared = Some(shared);
        Ok(self)
    }

    /// The shared cache in Redis, when there is one (for tests and health reports).
    #[must_use]
    pub fn redis_cache(&self) -> Option<&Arc<crate::RedisCache>> {
        self.shared.as_ref()
    }

    /// This database's name in a shared cache: made once, by whichever replica asks first,
    /// and the same for every replica after.
    async fn cache_namespace(&self) -> Result<String, StoreError> {
        let client = self.client().await?;
        let fresh = uuid::Uuid::now_v7().simple().to_string();
        client
            .execute(
                "insert into meta (key, value) values ('cache_namespace', $1) on conflict (key) do nothing",
                &[&fresh],
            )
            .await?;
        let row = client.query_one("select value from meta where key = 'cache_namespace'", &[]).await?;
        Ok(row.get(0))
    }

    /// Forgets what a committed write changed.
    pub(crate) async fn invalidate(&self, changed: &[crate::cache::CacheKey]) {
        if let Some(cache) = &self.cache {
            for key in changed {
                cache.invalidate(key);
            }
        }
        if let Some(shared) = &self.shared {
            shared.invalidate(changed).await;
        }
    }

    /// Invalidates what the outbox says changed since the cache last looked; returns how
    /// many changes it saw.
    ///
    /// With the shared cache this is a backstop too: a replica that wrote while it could
    /// not reach Redis (but others could) has its changes invalidated in Redis by every
    /// replica that follows the outbox; and a replica that saw Redis fail moves the cache's
    /// epoch here, soon after Redis is back, even if no request comes.
    pub(crate) async fn follow_outbox(&self) -> Result<u64, StoreError> {
        if self.cache.is_none() && self.shared.is_none() {
            return Ok(0);
        }
        if let Some(shared) = &self.shared {
            shared.heal().await;
        }
        let mut followed = self.followed.lock().await;
        let mut seen = 0;
        loop {
            let changes = self.changes_since(*followed, 500).await?;
            let Some(last) = changes.last().map(|(seq, _, _)| *seq) else { return Ok(seen) };
            seen += changes.len() as u64;
            let keys: Vec<crate::cache::CacheKey> = changes.into_iter().map(|(_, key, _)| key).collect();
            self.invalidate(&keys).await;
            *followed = last;
        }
    }

    /// A connection from the pool.
    ///
    /// # Errors
    /// [`StoreError::Busy`] when every connection stayed taken for the whole wait;
    /// [`StoreError::StorageFailed`] when the database cannot be reached.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Begins a write transaction on `client` (a connection from [`PgStore::client`]).
    ///
    /// # Errors
    /// The database failed.
    pub async fn transaction<'a>(&self, client: &'a mut deadpool_postgres::Object) -> Result<PgTx<'a>, StoreError> {
        let tx = client.transaction().await?;
        Ok(PgTx::new(tx, self.tables()?, self.changes.clone(), self.origin.clone()))
    }

    fn tables(&self) -> Result<Arc<Tables>, StoreError> {
        Ok(self.tables.read().map_err(|_| StoreError::Internal("table cache poisoned".into()))?.clone())
    }

    fn table(&self, collection: &Collection) -> Result<Arc<TableSql>, StoreError> {
        self.tables()?
            .get(&collection.name)
            .cloned()
            .ok_or_else(|| StoreError::Internal(format!("collection {} has not been migrated", collection.name)))
    }

    /// The schema the store was last migrated to.
    ///
    /// # Errors
    /// Never in practice (a poisoned lock).
    pub fn schema(&self) -> Result<Arc<Schema>, StoreError> {
        Ok(self.schema.read().map_err(|_| StoreError::Internal("schema poisoned".into()))?.clone())
    }

    /// Woken after every commit made through this store that wrote outbox rows.
    #[must_use]
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changes.clone()
    }

    /// Creates or updates the tables and indexes the schema needs, keeping every row, in
    /// one transaction under the migration lock (replicas migrating together take turns).
    ///
    /// # Errors
    /// [`StoreError::Migration`] when the schema cannot be applied (a field changed type,
    /// a new unique set that active records already violate).
    pub async fn migrate(&self, schema: &Schema) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("set local lock_timeout = 0").await?;
        tx.execute("select pg_advisory_xact_lock($1)", &[&schema::MIGRATION_LOCK]).await?;
        for c in schema.collections.values() {
            schema::migrate_collection(&tx, c).await?;
        }
        tx.commit().await?;
        let tables: Tables =
            schema.collections.values().map(|c| (c.name.clone(), Arc::new(TableSql::new(c)))).collect();
        *self.tables.write().map_err(|_| StoreError::Internal("table cache poisoned".into()))? = Arc::new(tables);
        *self.schema.write().map_err(|_| StoreError::Internal("schema poisoned".into()))? = Arc::new(schema.clone());
        Ok(())
    }

    /// Whether the database answers a read (a cheap one: readiness probes run it often).
    ///
    /// # Errors
    /// [`StoreError::StorageFailed`] when the database cannot be reached.
    pub async fn ping(&self) -> Result<(), StoreError> {
        // The simple query protocol: one round trip, no statement to prepare.
        let client = self.client().await?;
        client.batch_execute("select 1").await?;
        Ok(())
    }

    /// A value from the key/value metadata table.
    ///
    /// # Errors
    /// The database failed.
    pub async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("select value from meta where key = $1").await?;
        Ok(client.query_opt(&stmt, &[&key]).await?.map(|r| r.try_get(0)).transpose()?)
    }

    /// Sets a metadata value.
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "insert into meta (key, value) values ($1, $2) on conflict (key) do update set value = excluded.value",
            )
            .await?;
        client.execute(&stmt, &[&key, &value]).await?;
        Ok(())
    }

    /// The record, deleted or not; `None` if it does not exist in the tenant.
    ///
    /// # Errors
    /// The database failed.
    pub async fn get_record(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        id: &str,
    ) -> Result<Option<Record>, StoreError> {
        Ok(self.get_shared(tenant, collection, id).await?.map(crate::SharedRecord::into_record))
    }

    /// [`Self::get_record`] as the cache shares it: a hit of the memory cache is the cached
    /// entry itself, not a copy.
    ///
    /// # Errors
    /// The database failed.
    pub async fn get_shared(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        id: &str,
    ) -> Result<Option<Arc<crate::SharedRecord>>, StoreError> {
        let key = (tenant.to_string(), collection.name.clone(), id.to_string());
        if let Some(shared) = &self.shared {
            let token = match shared.lookup(&key).await {
                crate::redis_cache::Lookup::Hit(hit) => return Ok(hit.map(|r| Arc::new(crate::SharedRecord::new(r)))),
                crate::redis_cache::Lookup::Miss(token) => Some(token),
                crate::redis_cache::Lookup::Bypass => None,
            };
            let found = self.read_record(tenant, collection, id).await?;
            if let Some(token) = token {
                shared.fill(&key, token, found.as_ref()).await;
            }
            return Ok(found.map(|r| Arc::new(crate::SharedRecord::new(r))));
        }
        // A fill carries the token taken before the read: one that raced an invalidation
        // is dropped, so a read that began before a write committed never caches the old
        // state after it.
        let token = match &self.cache {
            Some(cache) => match cache.lookup(&key) {
                Some(hit) => return Ok(hit),
                None => Some(cache.token(&key)),
            },
            None => None,
        };
        let found = self.read_record(tenant, collection, id).await?.map(|r| Arc::new(crate::SharedRecord::new(r)));
        if let (Some(cache), Some(token)) = (&self.cache, token) {
            cache.fill(key, token, found.clone());
        }
        Ok(found)
    }

    /// The record as the database has it now, past any cache.
    async fn read_record(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        id: &str,
    ) -> Result<Option<Record>, StoreError> {
        let sql = self.table(collection)?;
        let client = self.client().await?;
        let stmt = client.prepare_cached(&format!("{} where t.tenant = $1 and t.id = $2", sql.select)).await?;
        let row = client.query_opt(&stmt, &[&tenant, &id]).await?;
        row.map(|r| records::read_record(collection, &r)).transpose()
    }

    /// One page of records.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list_records(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        query: &ListQuery,
    ) -> Result<Page, StoreError> {
        let sql = self.table(collection)?;
        let mut client = self.client().await?;
        if let Some(Candidates::Fingerprints(set)) = &query.candidates {
            // A portal lives in a transaction.
            let tx = client.build_transaction().read_only(true).start().await?;
            let page = records::list_walking(&tx, &sql, collection, tenant, query, set).await?;
            tx.commit().await?;
            return Ok(page);
        }
        records::list(&client, &sql, collection, tenant, query).await
    }

    /// Audit entries of a tenant, oldest first.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list_audit(&self, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        changes::list_audit(&client, tenant, query).await
    }

    /// Recomputes the whole hash chain; the inner result is the count of verified entries
    /// or the first broken one.
    ///
    /// # Errors
    /// The database failed.
    pub async fn verify_audit(&self) -> Result<Result<u64, ChainError>, StoreError> {
        let mut client = self.client().await?;
        let mut verifier = ChainVerifier::default();
        let mut failure = None;
        let head = changes::walk_audit(&mut client, |entry| match verifier.push(entry) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        })
        .await?;
        if let Some(e) = failure {
            return Ok(Err(e));
        }
        Ok(verifier.finish(head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()))))
    }

    /// Events of a tenant from the outbox, in commit order.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.event_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = self.client().await?;
        changes::select_events(&client, Some(tenant), query).await
    }

    /// Events of every tenant from the outbox, in commit order.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list_all_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.event_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = self.client().await?;
        changes::select_events(&client, None, query).await
    }

    /// The seq of the newest event of any tenant (0 when none).
    ///
    /// # Errors
    /// The database failed.
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        changes::last_event_seq(&client).await
    }

    /// Changed records after outbox seq `after` (any tenant), oldest first, with the event
    /// type: what the search indexer and a cache follow.
    ///
    /// # Errors
    /// The database failed.
    pub async fn changes_since(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, crate::cache::CacheKey, String)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "select seq, tenant, collection, record_id, type from outbox where seq > $1 order by seq limit $2",
            )
            .await?;
        let rows = client.query(&stmt, &[&after, &i64::from(limit)]).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?), r.try_get(4)?))).collect()
    }

    /// `(tenant, id)` of every active record of a collection.
    ///
    /// # Errors
    /// The database failed.
    pub async fn active_ids(&self, collection: &Arc<Collection>) -> Result<Vec<(String, String)>, StoreError> {
        let sql = self.table(collection)?;
        let client = self.client().await?;
        let rows = client.query(&format!("select tenant, id from {} where deleted_at is null", sql.table), &[]).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}

fn read_key(row: &tokio_postgres::Row) -> Result<StoredKey, StoreError> {
    let id: String = row.try_get(0)?;
    let scopes: String = row.try_get(3)?;
    Ok(StoredKey {
        scopes: parse_scopes(&scopes).map_err(|e| StoreError::Internal(format!("key {id} has bad scopes: {e}")))?,
        tenant: row.try_get(1)?,
        name: row.try_get(2)?,
        secret_hash: row.try_get(4)?,
        created_at: Timestamp::from_micros(row.try_get(5)?),
        id,
    })
}

#[async_trait]
impl KeyStore for PgStore {
    async fn create_key(&self, key: StoredKey, actor: &Actor) -> Result<(), StoreError> {
        let actor = actor.clone();
        self.write(move |tx| Box::pin(async move { crate::rules::keys::create(tx, &key, &actor).await })).await
    }

    async fn find_key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("select id, tenant, name, scopes, secret_hash, created_at from api_keys where id = $1")
            .await?;
        client.query_opt(&stmt, &[&id]).await?.as_ref().map(read_key).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "select id, tenant, name, scopes, secret_hash, created_at from api_keys order by created_at, id",
            )
            .await?;
        client.query(&stmt, &[]).await?.iter().map(read_key).collect()
    }

    async fn revoke_key(&self, id: &str, actor: &Actor, now: Timestamp) -> Result<bool, StoreError> {
        let (id, actor) = (id.to_string(), actor.clone());
        self.write(move |tx| Box::pin(async move { crate::rules::keys::revoke(tx, &id, &actor, now).await })).await
    }
}
