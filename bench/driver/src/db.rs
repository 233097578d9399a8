//! Schema, preload, the soft-delete transaction (rusqlite flavour), and the
//! post-run verification. Everything here is synchronous rusqlite; the async
//! front ends live in `writer.rs` (dedicated thread) and `sqlx_store.rs`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

/// Number of tenants the preloaded records are spread over.
pub const TENANTS: u64 = 4;

pub const SCHEMA: &str = "
CREATE TABLE rec_products(
    tenant        TEXT NOT NULL,
    id            TEXT NOT NULL,
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    deleted_at    INTEGER,
    deleted_by    TEXT,
    delete_reason TEXT,
    deletion_id   TEXT,
    purge_at      INTEGER,
    f_sku         TEXT,
    f_name        TEXT,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX rec_products_sku_live ON rec_products(tenant, f_sku) WHERE deleted_at IS NULL;
CREATE INDEX rec_products_live ON rec_products(tenant, id) WHERE deleted_at IS NULL;
CREATE TABLE audit(
    seq INTEGER PRIMARY KEY, at INTEGER, tenant TEXT, actor TEXT, action TEXT,
    collection TEXT, record_id TEXT, version INTEGER, deletion_id TEXT, reason TEXT,
    request_id TEXT, prev_hash TEXT, hash TEXT
);
CREATE TABLE outbox(
    seq INTEGER PRIMARY KEY, id TEXT, type TEXT, tenant TEXT, collection TEXT,
    record_id TEXT, version INTEGER, deletion_id TEXT, occurred_at INTEGER,
    request_id TEXT, data TEXT
);
CREATE TABLE deletions(
    id TEXT PRIMARY KEY, tenant TEXT, actor TEXT, reason TEXT, created_at INTEGER,
    root_collection TEXT, root_id TEXT, status TEXT
);
";

// The statements of the transaction, shared verbatim by both drivers.
pub const SQL_SELECT: &str = "SELECT version, deleted_at FROM rec_products WHERE tenant = ?1 AND id = ?2";
pub const SQL_UPDATE: &str = "UPDATE rec_products SET deleted_at = ?3, deleted_by = ?4, \
     delete_reason = ?5, deletion_id = ?6, purge_at = ?7, version = version + 1, updated_at = ?3 \
     WHERE tenant = ?1 AND id = ?2 AND deleted_at IS NULL";
pub const SQL_INSERT_DELETION: &str = "INSERT INTO deletions(id, tenant, actor, reason, \
     created_at, root_collection, root_id, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'completed')";
pub const SQL_LAST_HASH: &str = "SELECT hash FROM audit ORDER BY seq DESC LIMIT 1";
pub const SQL_INSERT_AUDIT: &str = "INSERT INTO audit(at, tenant, actor, action, collection, \
     record_id, version, deletion_id, reason, request_id, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
pub const SQL_INSERT_OUTBOX: &str = "INSERT INTO outbox(id, type, tenant, collection, record_id, \
     version, deletion_id, occurred_at, request_id, data) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

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

/// Maps an operation index (0-based, within one scenario) onto a distinct
/// preloaded record, visiting records in a scattered order rather than
/// sequentially. 7919 is prime and coprime to any power-of-ten record count.
pub fn record_index(op_index: u64, records: u64) -> u64 {
    (op_index * 7919) % records
}

pub fn record_key(index: u64) -> (String, String) {
    (format!("t{}", index % TENANTS), format!("p{index:07}"))
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl DeleteOp {
    pub fn new(op_index: u64, records: u64) -> Self {
        let (tenant, id) = record_key(record_index(op_index, records));
        let now = now_ms();
        DeleteOp {
            tenant,
            id,
            actor: "user:bench".to_owned(),
            reason: "benchmark soft delete".to_owned(),
            deletion_id: format!("del-{op_index:08}"),
            event_id: format!("evt-{op_index:08}"),
            request_id: format!("req-{op_index:08}"),
            now_ms: now,
            purge_at_ms: now + RETENTION_MS,
        }
    }

    /// Small JSON payload for the outbox row.
    pub fn outbox_data(&self, version: i64) -> String {
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
        .to_string()
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

    /// Canonical string: every field as `len:value;`, so no separator can be
    /// forged by a field's content.
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

/// Opens a rusqlite connection with the pragmas used by every scenario.
pub fn open_rusqlite(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}, not wal");
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")?;
    conn.busy_timeout(Duration::from_millis(5000))?;
    Ok(conn)
}

/// `journal_mode / synchronous / busy_timeout / foreign_keys` as SQLite reports them.
pub fn describe_pragmas(conn: &Connection) -> Result<String> {
    let jm: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    let bt: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
    let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    Ok(format!("journal_mode={jm} synchronous={sync} busy_timeout={bt} foreign_keys={fk}"))
}

/// Creates the schema and `records` active rows in a fresh database file,
/// then checkpoints so the file can be copied on its own.
pub fn create_template(path: &Path, records: u64) -> Result<()> {
    let mut conn = open_rusqlite(path)?;
    conn.execute_batch(SCHEMA)?;
    let created = now_ms() - 86_400_000;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO rec_products(tenant, id, version, created_at, updated_at, f_sku, f_name) \
             VALUES (?1, ?2, 1, ?3, ?3, ?4, ?5)",
        )?;
        for i in 0..records {
            let (tenant, id) = record_key(i);
            stmt.execute(params![tenant, id, created, format!("SKU-{i:07}"), format!("Product {i}")])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// The soft-delete transaction, executed synchronously on a rusqlite
/// connection. Returns the record's new version.
pub fn soft_delete(conn: &mut Connection, op: &DeleteOp) -> Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row: Option<(i64, Option<i64>)> = tx
        .prepare_cached(SQL_SELECT)?
        .query_row(params![op.tenant, op.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let version = match row {
        None => bail!("record {}/{} not found", op.tenant, op.id),
        Some((_, Some(_))) => bail!("record {}/{} already deleted", op.tenant, op.id),
        Some((v, None)) => v + 1,
    };
    let changed = tx.prepare_cached(SQL_UPDATE)?.execute(params![
        op.tenant,
        op.id,
        op.now_ms,
        op.actor,
        op.reason,
        op.deletion_id,
        op.purge_at_ms
    ])?;
    ensure!(changed == 1, "update touched {changed} rows");
    tx.prepare_cached(SQL_INSERT_DELETION)?.execute(params![
        op.deletion_id,
        op.tenant,
        op.actor,
        op.reason,
        op.now_ms,
        COLLECTION,
        op.id
    ])?;
    let prev: String = tx.prepare_cached(SQL_LAST_HASH)?.query_row([], |r| r.get(0)).optional()?.unwrap_or_default();
    let audit = AuditFields::from_op(op, version);
    let hash = audit.hash(&prev);
    tx.prepare_cached(SQL_INSERT_AUDIT)?.execute(params![
        audit.at,
        audit.tenant,
        audit.actor,
        audit.action,
        audit.collection,
        audit.record_id,
        audit.version,
        audit.deletion_id,
        audit.reason,
        audit.request_id,
        prev,
        hash
    ])?;
    tx.prepare_cached(SQL_INSERT_OUTBOX)?.execute(params![
        op.event_id,
        EVENT_TYPE,
        op.tenant,
        COLLECTION,
        op.id,
        version,
        op.deletion_id,
        op.now_ms,
        op.request_id,
        op.outbox_data(version)
    ])?;
    tx.commit()?;
    Ok(version)
}

/// Checks, outside any timing, that a scenario did exactly `expected`
/// soft deletes and left an intact audit hash chain.
pub fn verify(path: &Path, expected: u64) -> Result<()> {
    let conn = open_rusqlite(path)?;
    let count = |sql: &str| -> Result<u64> { Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
    let deleted = count("SELECT count(*) FROM rec_products WHERE deleted_at IS NOT NULL")?;
    let bumped = count("SELECT count(*) FROM rec_products WHERE deleted_at IS NOT NULL AND version = 2")?;
    let audits = count("SELECT count(*) FROM audit")?;
    let outbox = count("SELECT count(*) FROM outbox")?;
    let deletions = count("SELECT count(*) FROM deletions")?;
    ensure!(
        [deleted, bumped, audits, outbox, deletions].iter().all(|&n| n == expected),
        "expected {expected} of each, got deleted={deleted} version2={bumped} audit={audits} \
         outbox={outbox} deletions={deletions}"
    );
    let mut stmt = conn.prepare(
        "SELECT at, tenant, actor, action, collection, record_id, version, deletion_id, reason, \
         request_id, prev_hash, hash FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = String::new();
    while let Some(r) = rows.next()? {
        let (tenant, actor, action, collection, record_id): (String, String, String, String, String) =
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?);
        let (deletion_id, reason, request_id): (String, String, String) = (r.get(7)?, r.get(8)?, r.get(9)?);
        let fields = AuditFields {
            at: r.get(0)?,
            tenant: &tenant,
            actor: &actor,
            action: &action,
            collection: &collection,
            record_id: &record_id,
            version: r.get(6)?,
            deletion_id: &deletion_id,
            reason: &reason,
            request_id: &request_id,
        };
        let stored_prev: String = r.get(10)?;
        let stored_hash: String = r.get(11)?;
        ensure!(stored_prev == prev, "audit chain broken: prev_hash mismatch");
        ensure!(fields.hash(&prev) == stored_hash, "audit chain broken: hash mismatch");
        prev = stored_hash;
    }
    Ok(())
}
