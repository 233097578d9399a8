//! Idempotency keys on PostgreSQL: several replicas share the keys, so a claim is a row
//! every replica sees, committed at claim time, and the answer replaces it.
//!
//! - **claim**: one upsert inserts an `in_flight` row stamped with the claiming time, or
//!   takes over a row that stands for nothing any more (an answer older than
//!   [`IDEMPOTENCY_TTL_MICROS`], or a claim older than [`IDEMPOTENCY_STALE_MICROS`]: its
//!   request was cancelled, or its process died). `ON CONFLICT DO UPDATE` locks the row it
//!   conflicts with even when its `WHERE` declines the update, so when the key was not
//!   claimed, the row read next in the same transaction is the one that stopped the claim,
//!   and it says what the key stands for: a running request (`InFlight`), an answer to
//!   replay, or another body (`Mismatch`). Two claims racing for one key meet at the
//!   primary key: the second waits for the first to commit, then finds its row in flight.
//! - **complete**: the `in_flight` row becomes `done` with the response, only if it is
//!   still this request's claim: the same fingerprint and claiming time, remembered by
//!   this process when it claimed ([`Claims`]). A stale claim taken over by another
//!   request, or an answer stored first, makes it [`StoreError::IdempotencyConflict`]
//!   and the write's transaction must not commit.
//! - **release** deletes this request's `in_flight` row, so a retry runs at once.
//!
//! What it costs compared with SQLite, whose claims live in the process's memory: a
//! process killed between a claim and its answer leaves the row in flight, and a retry of
//! that request gets `InFlight` (409) until the claim is stale, a minute later. With
//! several replicas a claim has to outlive the connection that made it (the request's
//! write runs on another pooled connection, or the retry reaches another replica), so a
//! row with a deadline is the price of making the claim visible to all.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_postgres::Row;
use tombstone_domain::time::Timestamp;

use super::{PgStore, PgTx};
use crate::{
    IDEMPOTENCY_STALE_MICROS, IDEMPOTENCY_TTL_MICROS, IdempotencyClaim, IdempotencyKey, StoreError, StoredResponse,
};

/// (tenant, api key id, key)
type Scope = (String, String, String);

fn scope(key: &IdempotencyKey) -> Scope {
    (key.tenant.clone(), key.api_key.clone(), key.key.clone())
}

/// A claim this process made: what identifies its row (a takeover stamps a later time).
#[derive(Debug, Clone)]
struct Claim {
    fingerprint: String,
    claimed_at: i64,
    /// When it was made, by this process's clock, to forget it in time.
    made: Instant,
}

/// After this long a claim is forgotten by the process that made it (its request can no
/// longer complete the key): the stale delay, by the monotonic clock.
const FORGET_AFTER: Duration = Duration::from_micros(IDEMPOTENCY_STALE_MICROS.unsigned_abs());

/// The claims made by requests running in this process, by key. Process-wide rather than
/// per store: a claim belongs to a request of this process, and the row it matches lives
/// in one database only, so stores on other databases never match it. A key may hold
/// several (a takeover of this process's own stale claim; one per database in tests).
#[derive(Debug, Default)]
struct Claims(Mutex<HashMap<Scope, Vec<Claim>>>);

static CLAIMS: LazyLock<Claims> = LazyLock::new(Claims::default);

impl Claims {
    fn remember(&self, key: &IdempotencyKey, fingerprint: &str, claimed_at: i64) {
        let mut claims = self.0.lock();
        // A request cancelled between its claim and its answer never forgets its claim:
        // forgotten once stale, here.
        claims.retain(|_, list| {
            list.retain(|c| c.made.elapsed() < FORGET_AFTER);
            !list.is_empty()
        });
        claims.entry(scope(key)).or_default().push(Claim {
            fingerprint: fingerprint.to_string(),
            claimed_at,
            made: Instant::now(),
        });
    }

    /// This process's claims of `key`, as the arrays the statements bind.
    fn of(&self, key: &IdempotencyKey) -> (Vec<String>, Vec<i64>) {
        self.0
            .lock()
            .get(&scope(key))
            .map(|list| list.iter().map(|c| (c.fingerprint.clone(), c.claimed_at)).unzip())
            .unwrap_or_default()
    }

    fn forget(&self, key: &IdempotencyKey, fingerprint: &str, claimed_at: i64) {
        let mut claims = self.0.lock();
        if let Some(list) = claims.get_mut(&scope(key)) {
            if let Some(i) = list.iter().position(|c| c.fingerprint == fingerprint && c.claimed_at == claimed_at) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                claims.remove(&scope(key));
            }
        }
    }
}

/// Turns this request's `in_flight` row into the answer; the claim it completed.
const COMPLETE: &str = "update idempotency set state = 'done', status = $6, headers = $7, body = $8,
        collection = $9, record_id = $10
    where tenant = $1 and api_key = $2 and key = $3 and state = 'in_flight'
      and (fingerprint, created_at) in (select * from unnest($4::text[], $5::bigint[]))
    returning fingerprint, created_at";

/// Completes this process's claim of `key` with `response` on `client` (in whatever
/// transaction it runs); the claim completed.
async fn complete(
    client: &impl deadpool_postgres::GenericClient,
    key: &IdempotencyKey,
    response: &StoredResponse,
) -> Result<(String, i64), StoreError> {
    let (fingerprints, times) = CLAIMS.of(key);
    if times.is_empty() {
        return Err(StoreError::IdempotencyConflict);
    }
    let headers = serde_json::to_string(&response.headers).unwrap_or_else(|_| "[]".into());
    let (collection, record_id) = response.record.clone().unzip();
    let stmt = client.prepare_cached(COMPLETE).await?;
    let row = client
        .query_opt(
            &stmt,
            &[
                &key.tenant,
                &key.api_key,
                &key.key,
                &fingerprints,
                &times,
                &i32::from(response.status),
                &headers,
                &response.body,
                &collection,
                &record_id,
            ],
        )
        .await?;
    // No row: not claimed by this process any more (taken over once stale, released,
    // expired), or answered already.
    let row = row.ok_or(StoreError::IdempotencyConflict)?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

fn stored_response(row: &Row) -> Result<StoredResponse, StoreError> {
    let status: Option<i32> = row.try_get(2)?;
    let headers: Option<String> = row.try_get(3)?;
    let collection: Option<String> = row.try_get(5)?;
    let record_id: Option<String> = row.try_get(6)?;
    Ok(StoredResponse {
        status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
        headers: headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
        body: row.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
        record: collection.zip(record_id),
    })
}

impl PgStore {
    /// Claims an idempotency key for a request with this fingerprint: `Claimed` (the
    /// caller runs the request and completes or releases the key), `InFlight`,
    /// `Mismatch`, or `Replay` of the stored answer. The claim is committed before this
    /// returns, so every replica sees it.
    ///
    /// # Errors
    /// The database failed.
    pub async fn claim_idempotency(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<IdempotencyClaim, StoreError> {
        let now_us = now.as_micros();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let claim = tx
            .prepare_cached(
                "insert into idempotency (tenant, api_key, key, fingerprint, state, created_at)
                 values ($1, $2, $3, $4, 'in_flight', $5)
                 on conflict (tenant, api_key, key) do update set fingerprint = excluded.fingerprint,
                     state = 'in_flight', status = null, headers = null, body = null, collection = null,
                     record_id = null, created_at = excluded.created_at
                 where (idempotency.state = 'done' and idempotency.created_at < $6)
                    or (idempotency.state = 'in_flight' and idempotency.created_at < $7)
                 returning 1",
            )
            .await?;
        let claimed = tx
            .query_opt(
                &claim,
                &[
                    &key.tenant,
                    &key.api_key,
                    &key.key,
                    &fingerprint,
                    &now_us,
                    &(now_us - IDEMPOTENCY_TTL_MICROS),
                    &(now_us - IDEMPOTENCY_STALE_MICROS),
                ],
            )
            .await?;
        if claimed.is_some() {
            tx.commit().await?;
            CLAIMS.remember(key, fingerprint, now_us);
            return Ok(IdempotencyClaim::Claimed);
        }
        // Locked by the upsert above: nobody changes it before this transaction ends.
        let read = tx
            .prepare_cached(
                "select fingerprint, state, status, headers, body, collection, record_id
                 from idempotency where tenant = $1 and api_key = $2 and key = $3",
            )
            .await?;
        let row = tx.query_one(&read, &[&key.tenant, &key.api_key, &key.key]).await?;
        let (stored, state): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let answer = if stored != fingerprint {
            IdempotencyClaim::Mismatch
        } else if state == "in_flight" {
            IdempotencyClaim::InFlight
        } else {
            IdempotencyClaim::Replay(stored_response(&row)?)
        };
        tx.commit().await?;
        Ok(answer)
    }

    /// Completes a claimed key with a response that changed nothing (an error answer), in
    /// a transaction of its own.
    ///
    /// # Errors
    /// [`StoreError::IdempotencyConflict`] when the key is no longer this request's claim
    /// (taken over once stale, or answered); the database failed.
    pub async fn complete_idempotency(&self, key: &IdempotencyKey, response: StoredResponse) -> Result<(), StoreError> {
        let client = self.client().await?;
        // One statement: its own transaction.
        let (fingerprint, claimed_at) = complete(&client, key, &response).await?;
        CLAIMS.forget(key, &fingerprint, claimed_at);
        Ok(())
    }

    /// Forgets this request's claim so the request can be retried at once (the server
    /// failed). A completed key keeps its answer.
    ///
    /// # Errors
    /// The database failed.
    pub async fn release_idempotency(&self, key: &IdempotencyKey) -> Result<(), StoreError> {
        let (fingerprints, times) = CLAIMS.of(key);
        if times.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "delete from idempotency
                 where tenant = $1 and api_key = $2 and key = $3 and state = 'in_flight'
                   and (fingerprint, created_at) in (select * from unnest($4::text[], $5::bigint[]))
                 returning fingerprint, created_at",
            )
            .await?;
        let rows = client.query(&stmt, &[&key.tenant, &key.api_key, &key.key, &fingerprints, &times]).await?;
        for row in rows {
            CLAIMS.forget(key, row.try_get(0)?, row.try_get(1)?);
        }
        Ok(())
    }

    /// Deletes idempotency keys (answers, and claims long abandoned) older than `before`;
    /// returns how many.
    ///
    /// # Errors
    /// The database failed.
    pub async fn expire_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("delete from idempotency where created_at < $1", &[&before.as_micros()]).await?)
    }
}

impl PgTx<'_> {
    /// Completes this request's claim of `key` with `response` inside this transaction
    /// (the create it answers): both commit, or neither.
    ///
    /// The process keeps its claim until the commit is known, so that a
    /// [`PgStore::release_idempotency`] after a failed commit still frees the key.
    ///
    /// # Errors
    /// [`StoreError::IdempotencyConflict`] when the key is no longer this request's claim
    /// (taken over once stale, or answered first by another replica): the transaction
    /// must not commit. The database failed.
    pub async fn complete_idempotency(
        &mut self,
        key: &IdempotencyKey,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        complete(self.transaction(), key, response).await.map(|_| ())
    }
}
