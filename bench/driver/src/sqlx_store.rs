//! The same soft-delete transaction through sqlx: a pool capped at one
//! connection (the single writer), runtime queries via `sqlx::query`, and
//! sqlx's per-connection statement cache (on by default).

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::db::{
    AuditFields, COLLECTION, DeleteOp, EVENT_TYPE, SQL_INSERT_AUDIT, SQL_INSERT_DELETION, SQL_INSERT_OUTBOX,
    SQL_LAST_HASH, SQL_SELECT, SQL_UPDATE,
};

pub async fn open_pool(path: &Path) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_millis(5000))
        .foreign_keys(false);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await?;
    Ok(pool)
}

pub async fn describe_pragmas(pool: &SqlitePool) -> Result<String> {
    let jm: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(pool).await?;
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await?;
    let bt: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(pool).await?;
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(pool).await?;
    Ok(format!("journal_mode={jm} synchronous={sync} busy_timeout={bt} foreign_keys={fk}"))
}

pub async fn sqlite_version(pool: &SqlitePool) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT sqlite_version()").fetch_one(pool).await?)
}

/// The soft-delete transaction; returns the record's new version.
pub async fn soft_delete(pool: &SqlitePool, op: &DeleteOp) -> Result<i64> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let row = sqlx::query(SQL_SELECT).bind(&op.tenant).bind(&op.id).fetch_optional(&mut *tx).await?;
    let version = match row {
        None => bail!("record {}/{} not found", op.tenant, op.id),
        Some(r) => {
            if r.try_get::<Option<i64>, _>(1)?.is_some() {
                bail!("record {}/{} already deleted", op.tenant, op.id);
            }
            r.try_get::<i64, _>(0)? + 1
        }
    };
    let changed = sqlx::query(SQL_UPDATE)
        .bind(&op.tenant)
        .bind(&op.id)
        .bind(op.now_ms)
        .bind(&op.actor)
        .bind(&op.reason)
        .bind(&op.deletion_id)
        .bind(op.purge_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    ensure!(changed == 1, "update touched {changed} rows");
    sqlx::query(SQL_INSERT_DELETION)
        .bind(&op.deletion_id)
        .bind(&op.tenant)
        .bind(&op.actor)
        .bind(&op.reason)
        .bind(op.now_ms)
        .bind(COLLECTION)
        .bind(&op.id)
        .execute(&mut *tx)
        .await?;
    let prev: String = sqlx::query_scalar(SQL_LAST_HASH).fetch_optional(&mut *tx).await?.unwrap_or_default();
    let audit = AuditFields::from_op(op, version);
    let hash = audit.hash(&prev);
    sqlx::query(SQL_INSERT_AUDIT)
        .bind(audit.at)
        .bind(audit.tenant)
        .bind(audit.actor)
        .bind(audit.action)
        .bind(audit.collection)
        .bind(audit.record_id)
        .bind(audit.version)
        .bind(audit.deletion_id)
        .bind(audit.reason)
        .bind(audit.request_id)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query(SQL_INSERT_OUTBOX)
        .bind(&op.event_id)
        .bind(EVENT_TYPE)
        .bind(&op.tenant)
        .bind(COLLECTION)
        .bind(&op.id)
        .bind(version)
        .bind(&op.deletion_id)
        .bind(op.now_ms)
        .bind(&op.request_id)
        .bind(op.outbox_data(version))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(version)
}
