//! Leases and relay positions on PostgreSQL ([`WorkerStore`]), shared by every replica on
//! the database. A claim is one upsert (the row lock of `on conflict` decides a race for a
//! free lease); a position is written under the lease's row lock, so a takeover cannot
//! slip in between the holder check and the write.

use std::time::Duration;

use async_trait::async_trait;
use tombstone_domain::time::Timestamp;

use super::PgStore;
use crate::{Lease, StoreError, WorkerStore};

fn to_lease(row: &tokio_postgres::Row) -> Result<Lease, StoreError> {
    Ok(Lease { holder: row.try_get(0)?, expires_at: Timestamp::from_micros(row.try_get(1)?) })
}

#[async_trait]
impl WorkerStore for PgStore {
    async fn claim_lease(&self, name: &str, holder: &str, now: Timestamp, ttl: Duration) -> Result<Lease, StoreError> {
        let client = self.client().await?;
        let until = now.saturating_add(ttl).as_micros();
        // Taken when free, expired, or already ours; `returning` gives no row when the
        // other holder keeps it, and the read after it (a new snapshot) shows that holder.
        let stmt = client
            .prepare_cached(
                "insert into leases (name, holder, expires_at) values ($1, $2, $3)
                 on conflict (name) do update set holder = excluded.holder, expires_at = excluded.expires_at
                 where leases.holder = excluded.holder or leases.expires_at <= $4
                 returning holder, expires_at",
            )
            .await?;
        if let Some(row) = client.query_opt(&stmt, &[&name, &holder, &until, &now.as_micros()]).await? {
            return to_lease(&row);
        }
        let row = client.query_one("select holder, expires_at from leases where name = $1", &[&name]).await?;
        to_lease(&row)
    }

    async fn release_lease(&self, name: &str, holder: &str, now: Timestamp) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "update leases set expires_at = $3 where name = $1 and holder = $2 and expires_at > $3",
                &[&name, &holder, &now.as_micros()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn relay_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("select seq from relay_positions where name = $1").await?;
        Ok(client.query_opt(&stmt, &[&name]).await?.map(|r| r.try_get(0)).transpose()?)
    }

    async fn store_relay_position(
        &self,
        name: &str,
        holder: &str,
        seq: i64,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The lease row stays locked until commit: a claim that would take it over waits,
        // and then sees the position this holder stored.
        let lease = tx.query_opt("select holder, expires_at from leases where name = $1 for update", &[&name]).await?;
        if !lease.map(|r| to_lease(&r)).transpose()?.is_some_and(|l| l.is_held_by(holder, now)) {
            return Ok(false);
        }
        tx.execute(
            "insert into relay_positions (name, seq) values ($1, $2)
             on conflict (name) do update set seq = greatest(relay_positions.seq, excluded.seq)",
            &[&name, &seq],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
