//! sqlx's PostgreSQL driver and pool, runtime queries (no macros, no `DATABASE_URL`):
//! sqlx prepares each statement once per connection and caches it (its default statement
//! cache). Its pool pings a connection on checkout by default (`test_before_acquire`);
//! the `sqlx, no ping` variant turns that off, the closest match to deadpool's fast
//! recycling.

use anyhow::{Context, Result, bail, ensure};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::db::{self, AuditFields, DeleteOp};

/// A pool of `size` connections, all opened before it is returned.
pub async fn open_pool(url: &str, size: usize, test_before_acquire: bool) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(size as u32)
        .min_connections(size as u32)
        .test_before_acquire(test_before_acquire)
        .connect(url)
        .await
        .context("sqlx pool")?;
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.acquire().await.context("pool connection")?);
    }
    drop(held);
    Ok(pool)
}

/// The soft-delete transaction. Returns the record's new version. `chained` false is the
/// reference variant without the chain head lock (`db::SQL_INSERT_AUDIT_UNCHAINED`).
pub async fn soft_delete(pool: &PgPool, op: &DeleteOp, chained: bool) -> Result<i64> {
    let mut tx = pool.begin().await?;

    let row = sqlx::query(db::SQL_SELECT).bind(&op.tenant).bind(&op.id).fetch_optional(&mut *tx).await?;
    let version = match row {
        None => bail!("record {}/{} not found", op.tenant, op.id),
        Some(r) if r.try_get::<Option<i64>, _>(1)?.is_some() => {
            bail!("record {}/{} already deleted", op.tenant, op.id)
        }
        Some(r) => r.try_get::<i64, _>(0)? + 1,
    };

    let changed = sqlx::query(db::SQL_UPDATE)
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

    sqlx::query(db::SQL_INSERT_DELETION)
        .bind(&op.deletion_id)
        .bind(&op.tenant)
        .bind(&op.actor)
        .bind(&op.reason)
        .bind(&op.request_id)
        .bind(op.now_ms)
        .bind(db::COLLECTION)
        .bind(&op.id)
        .execute(&mut *tx)
        .await?;

    if chained {
        let head = sqlx::query(db::SQL_LOCK_HEAD).fetch_one(&mut *tx).await?;
        let (seq, prev): (i64, String) = (head.try_get::<i64, _>(0)? + 1, head.try_get(1)?);
        let audit = AuditFields::from_op(op, version);
        let hash = audit.hash(&prev);
        sqlx::query(db::SQL_INSERT_AUDIT)
            .bind(seq)
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
        sqlx::query(db::SQL_UPDATE_HEAD).bind(seq).bind(&hash).execute(&mut *tx).await?;
    } else {
        let audit = AuditFields::from_op(op, version);
        let hash = audit.hash("");
        sqlx::query(db::SQL_INSERT_AUDIT_UNCHAINED)
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
            .bind("")
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
    }

    sqlx::query(db::SQL_INSERT_OUTBOX)
        .bind(&op.event_id)
        .bind(db::EVENT_TYPE)
        .bind(&op.tenant)
        .bind(db::COLLECTION)
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
