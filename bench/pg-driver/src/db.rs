//! The schema, the preload, the soft-delete transaction's SQL (shared verbatim by both
//! drivers), the audit hash, and the work done between timed points: restoring every
//! record and checking what a point wrote. Setup and checks use one plain tokio-postgres
//! connection, outside any timing.

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

/// Number of tenants the preloaded records are spread over.
pub const TENANTS: u64 = 4;

/// Tables as Tombstone's SQLite store has them (times in ms since the epoch), with
/// PostgreSQL's own tools: partial indexes for uniqueness and lists among active records,
/// a one-row head of the audit chain that each writer locks, an identity outbox sequence
/// and a jsonb payload.
pub const SCHEMA: &str = "
create table rec_products (
    tenant        text not null,
    id            text not null,
    version       bigint not null,
    created_at    bigint not null,
    updated_at    bigint not null,
    deleted_at    bigint,
    deleted_by    text,
    delete_reason text,
    deletion_id   text,
    purge_at      bigint,
    f_sku         text not null,
    f_name        text not null,
    primary key (tenant, id)
);
-- unique among active records, case-insensitively
create unique index rec_products_sku_active on rec_products (tenant, lower(f_sku)) where deleted_at is null;
-- default lists read only active records
create index rec_products_active on rec_products (tenant, id) where deleted_at is null;
create table deletions (
    id              text primary key,
    tenant          text not null,
    actor           text not null,
    reason          text,
    request_id      text,
    created_at      bigint not null,
    root_collection text not null,
    root_id         text not null,
    status          text not null
);
create table audit (
    seq         bigint primary key,
    at          bigint not null,
    tenant      text not null,
    actor       text not null,
    action      text not null,
    collection  text,
    record_id   text,
    version     bigint,
    deletion_id text,
    reason      text,
    request_id  text,
    prev_hash   text not null,
    hash        text not null
);
create index audit_tenant on audit (tenant, seq);
-- the chain head, locked by every writer: concurrent writers never fork the chain
create table audit_head (
    id   int primary key check (id = 1),
    seq  bigint not null,
    hash text not null
);
insert into audit_head values (1, 0, '');
-- only for the reference variant without the chain lock (see README)
create sequence audit_unchained;
create table outbox (
    seq         bigint generated always as identity primary key,
    id          text not null unique,
    type        text not null,
    tenant      text not null,
    collection  text not null,
    record_id   text not null,
    version     bigint,
    deletion_id text,
    occurred_at bigint not null,
    request_id  text,
    data        jsonb
);
create index outbox_tenant on outbox (tenant, seq);
";

// The statements of the transaction, shared verbatim by both drivers (BEGIN and COMMIT are
// each driver's own).
pub const SQL_SELECT: &str = "SELECT version, deleted_at FROM rec_products WHERE tenant = $1 AND id = $2 FOR UPDATE";
pub const SQL_UPDATE: &str = "UPDATE rec_products SET deleted_at = $3, deleted_by = $4, \
     delete_reason = $5, deletion_id = $6, purge_at = $7, version = version + 1, updated_at = $3 \
     WHERE tenant = $1 AND id = $2 AND deleted_at IS NULL";
pub const SQL_INSERT_DELETION: &str = "INSERT INTO deletions (id, tenant, actor, reason, request_id, \
     created_at, root_collection, root_id, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'completed')";
pub const SQL_LOCK_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
pub const SQL_INSERT_AUDIT: &str = "INSERT INTO audit (seq, at, tenant, actor, action, collection, \
     record_id, version, deletion_id, reason, request_id, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
/// The reference variant without the chain lock: the audit entry's seq from a sequence and
/// no previous hash (not a design Tombstone can use: concurrent writers would fork the chain;
/// it shows what the lock costs).
pub const SQL_INSERT_AUDIT_UNCHAINED: &str = "INSERT INTO audit (seq, at, tenant, actor, action, \
     collection, record_id, version, deletion_id, reason, request_id, prev_hash, hash) \
     VALUES (nextval('audit_unchained'), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
pub const SQL_UPDATE_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";
pub const SQL_INSERT_OUTBOX: &str = "INSERT INTO outbox (id, type, tenant, collection, record_id, \
     version, deletion_id, occurred_at, request_id, data) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

pub const COLLECTION: &str = "products";
pub const ACTION: &str = "delete";
pub const EVENT_TYPE: &str = "record.deleted";
/// Retention before a soft-deleted record may be purged (30 days).
const RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// One soft-delete request, built by the caller before it is timed.
#[derive(Debug, Clone)]
pub struct DeleteOp {
    pub tenant: String,
    pub id: String,
    pub actor: String,
    pub reason: String,
    pub deletion_id: String,
    pub event_id: String,
    pub request_id: String,
    pub now_ms: i64,
    pub purge_at_ms: i64,
}

pub fn record_key(index: u64) -> (String, String) {
    (format!("t{}", index % TENANTS), format!("p{index:07}"))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl DeleteOp {
    /// The `seq`-th operation of a point (unique within it), on preloaded record `record`.
    pub fn new(seq: u64, record: u64) -> Self {
        let (tenant, id) = record_key(record);
        let now = now_ms();
        DeleteOp {
            tenant,
            id,
            actor: "user:bench".to_owned(),
            reason: "benchmark soft delete".to_owned(),
            deletion_id: format!("del-{seq:08}"),
            event_id: format!("evt-{seq:08}"),
            request_id: format!("req-{seq:08}"),
            now_ms: now,
            purge_at_ms: now + RETENTION_MS,
        }
    }

    /// The outbox row's small JSON payload.
    pub fn outbox_data(&self, version: i64) -> serde_json::Value {
        serde_json::json!({
            "tenant": self.tenant,
            "collection": COLLECTION,
            "id": self.id,
            "version": version,
            "deletion_id": self.deletion_id,
            "deleted_by": self.actor,
            "reason": self.reason,
            "purge_at": self.purge_at_ms,
        })
    }
}

/// The audit fields that enter the hash, in a fixed order.
pub struct AuditFields<'a> {
    pub at: i64,
    pub tenant: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub collection: &'a str,
    pub record_id: &'a str,
    pub version: i64,
    pub deletion_id: &'a str,
    pub reason: &'a str,
    pub request_id: &'a str,
}

impl AuditFields<'_> {
    pub fn from_op(op: &DeleteOp, version: i64) -> AuditFields<'_> {
        AuditFields {
            at: op.now_ms,
            tenant: &op.tenant,
            actor: &op.actor,
            action: ACTION,
            collection: COLLECTION,
            record_id: &op.id,
            version,
            deletion_id: &op.deletion_id,
            reason: &op.reason,
            request_id: &op.request_id,
        }
    }

    /// Canonical string: every field as `len:value;`, so that no field's content can forge
    /// a separator.
    pub fn canonical(&self) -> String {
        let at = self.at.to_string();
        let version = self.version.to_string();
        let fields = [
            at.as_str(),
            self.tenant,
            self.actor,
            self.action,
            self.collection,
            self.record_id,
            version.as_str(),
            self.deletion_id,
            self.reason,
            self.request_id,
        ];
        let mut out = String::with_capacity(256);
        for f in fields {
            out.push_str(&f.len().to_string());
            out.push(':');
            out.push_str(f);
            out.push(';');
        }
        out
    }

    /// sha256 hex over prev_hash, a newline, and the canonical string.
    pub fn hash(&self, prev_hash: &str) -> String {
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(b"\n");
        h.update(self.canonical().as_bytes());
        hex::encode(h.finalize())
    }
}

/// A plain connection for setup and checks.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("setup connection ended: {e}");
        }
    });
    Ok(client)
}

/// `url` with its database replaced by `db`.
pub fn url_with_db(url: &str, db: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").context("the URL has no scheme")? + 3;
    let path_start = base[scheme_end..].find('/').map(|i| scheme_end + i).unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Drops and creates database `db` through the server's maintenance connection.
pub async fn recreate_database(admin: &Client, db: &str) -> Result<()> {
    admin.batch_execute(&format!("drop database if exists {db} with (force)")).await?;
    admin.batch_execute(&format!("create database {db}")).await?;
    Ok(())
}

/// Creates the schema and `records` active records (records `0..records`).
pub async fn create_schema(client: &Client, records: u64) -> Result<()> {
    client.batch_execute(SCHEMA).await.context("schema")?;
    let created = now_ms() - 86_400_000;
    client
        .execute(
            "insert into rec_products (tenant, id, version, created_at, updated_at, f_sku, f_name) \
             select 't' || (i % 4), 'p' || lpad(i::text, 7, '0'), 1, $1, $1, \
                    'SKU-' || lpad(i::text, 7, '0'), 'Product ' || i \
             from generate_series(0, $2::bigint - 1) as i",
            &[&created, &(records as i64)],
        )
        .await
        .context("preload")?;
    client.batch_execute("vacuum analyze").await?;
    Ok(())
}

/// Makes every record active again and empties what the soft deletes wrote, then vacuums,
/// so that each timed point starts from the same state. Also a checkpoint, so that no point
/// pays for another's dirty pages.
pub async fn restore(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "begin;
             update rec_products set deleted_at = null, deleted_by = null, delete_reason = null,
                 deletion_id = null, purge_at = null, version = 1 where deleted_at is not null;
             truncate deletions, audit, outbox restart identity;
             update audit_head set seq = 0, hash = '';
             alter sequence audit_unchained restart;
             commit;",
        )
        .await
        .context("restore")?;
    client.batch_execute("vacuum analyze rec_products").await?;
    client.batch_execute("vacuum analyze deletions").await?;
    client.batch_execute("vacuum analyze audit").await?;
    client.batch_execute("vacuum analyze audit_head").await?;
    client.batch_execute("vacuum analyze outbox").await?;
    client.batch_execute("checkpoint").await?;
    Ok(())
}

/// Checks, outside any timing, that a point did exactly `expected` soft deletes: one
/// deleted record at version 2, one deletion, one audit entry and one outbox row each; the
/// audit sequence has no gap, the chain recomputes, and the head names its last entry (when
/// `chained`; the reference variant without the chain lock is checked by its counts only).
pub async fn verify(client: &Client, expected: u64, chained: bool) -> Result<()> {
    let count = |sql: &'static str| async move {
        let row = client.query_one(sql, &[]).await?;
        Ok::<u64, anyhow::Error>(row.get::<_, i64>(0) as u64)
    };
    let deleted = count("select count(*) from rec_products where deleted_at is not null").await?;
    let bumped = count("select count(*) from rec_products where deleted_at is not null and version = 2").await?;
    let audits = count("select count(*) from audit").await?;
    let outbox = count("select count(*) from outbox").await?;
    let deletions = count("select count(*) from deletions").await?;
    ensure!(
        [deleted, bumped, audits, outbox, deletions].iter().all(|&n| n == expected),
        "expected {expected} of each, got deleted={deleted} version2={bumped} audit={audits} \
         outbox={outbox} deletions={deletions}"
    );
    if !chained {
        return Ok(());
    }
    let rows = client
        .query(
            "select seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, \
             request_id, prev_hash, hash from audit order by seq",
            &[],
        )
        .await?;
    let mut prev = String::new();
    for (i, r) in rows.iter().enumerate() {
        let seq: i64 = r.get(0);
        ensure!(seq == i as i64 + 1, "audit seq {seq} at position {}", i + 1);
        let fields = AuditFields {
            at: r.get(1),
            tenant: r.get(2),
            actor: r.get(3),
            action: r.get(4),
            collection: r.get(5),
            record_id: r.get(6),
            version: r.get(7),
            deletion_id: r.get(8),
            reason: r.get(9),
            request_id: r.get(10),
        };
        let stored_prev: &str = r.get(11);
        let stored_hash: &str = r.get(12);
        ensure!(stored_prev == prev, "audit chain forked at seq {seq}: prev_hash is not the previous hash");
        ensure!(fields.hash(&prev) == stored_hash, "audit chain broken at seq {seq}: hash mismatch");
        prev = stored_hash.to_owned();
    }
    let head = client.query_one("select seq, hash from audit_head where id = 1", &[]).await?;
    ensure!(head.get::<_, i64>(0) == expected as i64, "audit head seq is not the last entry's");
    ensure!(head.get::<_, &str>(1) == prev, "audit head hash is not the last entry's");
    Ok(())
}
