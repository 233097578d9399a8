//! tokio-postgres with a deadpool-postgres pool: every statement prepared once per
//! connection (`prepare_cached`) and reused; the pool's fast recycling (no query on
//! checkout), its default.

use anyhow::{Context, Result, bail, ensure};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::db::{self, AuditFields, DeleteOp};

/// A pool of `size` connections, all opened before it is returned.
pub async fn open_pool(url: &str, size: usize) -> Result<Pool> {
    let config: tokio_postgres::Config = url.parse().context("postgres URL")?;
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager).max_size(size).build().context("deadpool")?;
    // Open every connection now, so that no timed operation pays for a connect.
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.get().await.context("pool connection")?);
    }
    drop(held);
    Ok(pool)
}

/// The soft-delete transaction. Returns the record's new version. `chained` false is the
/// reference variant without the chain head lock (`db::SQL_INSERT_AUDIT_UNCHAINED`).
pub async fn soft_delete(pool: &Pool, op: &DeleteOp, chained: bool) -> Result<i64> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;

    let select = tx.prepare_cached(db::SQL_SELECT).await?;
    let row = tx.query_opt(&select, &[&op.tenant, &op.id]).await?;
    let version = match row {
        None => bail!("record {}/{} not found", op.tenant, op.id),
        Some(r) if r.get::<_, Option<i64>>(1).is_some() => bail!("record {}/{} already deleted", op.tenant, op.id),
        Some(r) => r.get::<_, i64>(0) + 1,
    };

    let update = tx.prepare_cached(db::SQL_UPDATE).await?;
    let changed = tx
        .execute(&update, &[&op.tenant, &op.id, &op.now_ms, &op.actor, &op.reason, &op.deletion_id, &op.purge_at_ms])
        .await?;
    ensure!(changed == 1, "update touched {changed} rows");

    let deletion = tx.prepare_cached(db::SQL_INSERT_DELETION).await?;
    tx.execute(
        &deletion,
        &[&op.deletion_id, &op.tenant, &op.actor, &op.reason, &op.request_id, &op.now_ms, &db::COLLECTION, &op.id],
    )
    .await?;

    if chained {
        let lock_head = tx.prepare_cached(db::SQL_LOCK_HEAD).await?;
        let head = tx.query_one(&lock_head, &[]).await?;
        let (seq, prev): (i64, String) = (head.get::<_, i64>(0) + 1, head.get(1));
        let audit = AuditFields::from_op(op, version);
        let hash = audit.hash(&prev);
        let insert_audit = tx.prepare_cached(db::SQL_INSERT_AUDIT).await?;
        tx.execute(
            &insert_audit,
            &[
                &seq,
                &audit.at,
                &audit.tenant,
                &audit.actor,
                &audit.action,
                &audit.collection,
                &audit.record_id,
                &audit.version,
                &audit.deletion_id,
                &audit.reason,
                &audit.request_id,
                &prev,
                &hash,
            ],
        )
        .await?;
        let update_head = tx.prepare_cached(db::SQL_UPDATE_HEAD).await?;
        tx.execute(&update_head, &[&seq, &hash]).await?;
    } else {
        let audit = AuditFields::from_op(op, version);
        let hash = audit.hash("");
        let insert_audit = tx.prepare_cached(db::SQL_INSERT_AUDIT_UNCHAINED).await?;
        tx.execute(
            &insert_audit,
            &[
                &audit.at,
                &audit.tenant,
                &audit.actor,
                &audit.action,
                &audit.collection,
                &audit.record_id,
                &audit.version,
                &audit.deletion_id,
                &audit.reason,
                &audit.request_id,
                &"",
                &hash,
            ],
        )
        .await?;
    }

    let outbox = tx.prepare_cached(db::SQL_INSERT_OUTBOX).await?;
    let data = op.outbox_data(version);
    tx.execute(
        &outbox,
        &[
            &op.event_id,
            &db::EVENT_TYPE,
            &op.tenant,
            &db::COLLECTION,
            &op.id,
            &version,
            &op.deletion_id,
            &op.now_ms,
            &op.request_id,
            &data,
        ],
    )
    .await?;

    tx.commit().await?;
    Ok(version)
}
