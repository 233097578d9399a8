//! Leases and relay positions on SQLite ([`WorkerStore`]): the same rows and rules as on
//! PostgreSQL. Writes go through the live writer, so a claim and a fenced position are
//! each one short transaction serialised with every other write of this process, and the
//! database lock serialises them with other processes on the same file.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tombstone_domain::time::Timestamp;

use super::SqliteStore;
use crate::{Lease, StoreError, WorkerStore};

/// The lease `name` as it stands, if anyone ever held it.
fn lease(conn: &rusqlite::Connection, name: &str) -> Result<Option<Lease>, StoreError> {
    Ok(conn
        .prepare_cached("select holder, expires_at from leases where name = ?1")?
        .query_row([name], |r| Ok(Lease { holder: r.get(0)?, expires_at: Timestamp::from_micros(r.get(1)?) }))
        .optional()?)
}

#[async_trait]
impl WorkerStore for SqliteStore {
    async fn claim_lease(&self, name: &str, holder: &str, now: Timestamp, ttl: Duration) -> Result<Lease, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let until = now.saturating_add(ttl);
        self.write(move |tx| {
            // Taken when free, expired, or already ours; otherwise the row stays as it is.
            tx.prepare_cached(
                "insert into leases (name, holder, expires_at) values (?1, ?2, ?3)
                 on conflict (name) do update set holder = excluded.holder, expires_at = excluded.expires_at
                 where leases.holder = excluded.holder or leases.expires_at <= ?4",
            )?
            .execute(params![name, holder, until.as_micros(), now.as_micros()])?;
            lease(tx, &name)?.ok_or_else(|| StoreError::Internal(format!("lease {name} vanished")))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str, now: Timestamp) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "update leases set expires_at = ?3 where name = ?1 and holder = ?2 and expires_at > ?3",
                )?
                .execute(params![name, holder, now.as_micros()])?
                > 0)
        })
        .await
    }

    async fn relay_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let name = name.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("select seq from relay_positions where name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn store_relay_position(
        &self,
        name: &str,
        holder: &str,
        seq: i64,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |tx| {
            // The writer's transaction holds the database lock: no claim can slip in
            // between this check and the write.
            if !lease(tx, &name)?.is_some_and(|l| l.is_held_by(&holder, now)) {
                return Ok(false);
            }
            tx.prepare_cached(
                "insert into relay_positions (name, seq) values (?1, ?2)
                 on conflict (name) do update set seq = max(relay_positions.seq, excluded.seq)",
            )?
            .execute(params![name, seq])?;
            Ok(true)
        })
        .await
    }
}
