//! Idempotency keys on SQLite: the claim of a running request lives in the memory of the
//! process running it, and the database holds only finished answers, each written in the
//! transaction of the request it answers.
//!
//! A claim written to the database in a transaction of its own (as this store once did)
//! outlives a crash of its process: after a SIGKILL between the claim and the create's
//! commit, the retry of the very request whose answer was lost got 409 "still being
//! processed" for a minute, although nothing was running any more. Kept in memory, the
//! claim dies with the request it stands for, so the retry after a restart replays the
//! stored answer (the create committed) or runs (it did not) — exactly once either way.
//!
//! Between processes sharing the database file (another `serve` on it), no claim is
//! visible, but SQLite runs one write transaction at a time: the answer's row is inserted
//! in the create's transaction and an answer already there makes that transaction fail
//! with [`StoreError::IdempotencyConflict`], so two processes never both create for one key.

use std::collections::HashMap;

use parking_lot::Mutex;
use rusqlite::{OptionalExtension, Transaction, params};
use tombstone_domain::time::Timestamp;

use crate::{
    IDEMPOTENCY_STALE_MICROS, IDEMPOTENCY_TTL_MICROS, IdempotencyClaim, IdempotencyKey, StoreError, StoredResponse,
};

/// (tenant, api key id, key)
type Scope = (String, String, String);

fn scope(key: &IdempotencyKey) -> Scope {
    (key.tenant.clone(), key.api_key.clone(), key.key.clone())
}

/// A request running under a key in this process.
#[derive(Debug)]
struct Claim {
    fingerprint: String,
    claimed_at: i64,
}

/// The keys claimed by requests running in this process.
#[derive(Debug, Default)]
pub(crate) struct Claims(Mutex<HashMap<Scope, Claim>>);

impl Claims {
    /// Claims `key`, or says what the key already stands for. Runs on the writer, so no
    /// create can commit between the look at the stored answer and the claim.
    pub(crate) fn claim(
        &self,
        tx: &Transaction<'_>,
        key: &IdempotencyKey,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<IdempotencyClaim, StoreError> {
        type Row = (String, String, Option<u16>, Option<String>, Option<String>, Option<String>, Option<String>, i64);
        let now_us = now.as_micros();
        let row: Option<Row> = tx
            .prepare_cached(
                "select fingerprint, state, status, headers, body, collection, record_id, created_at from idempotency where tenant = ?1 and api_key = ?2 and key = ?3",
            )?
            .query_row(params![key.tenant, key.api_key, key.key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })
            .optional()?;
        // An expired answer is forgotten; an `in_flight` row was left by an older version
        // of this store, whose process is gone: neither stands for anything any more.
        let row = row.filter(|(_, state, .., created_at)| {
            *created_at >= now_us - IDEMPOTENCY_TTL_MICROS && state != "in_flight"
        });
        if let Some((fp, _, status, headers, body, coll, rid, _)) = row {
            if fp != fingerprint {
                return Ok(IdempotencyClaim::Mismatch);
            }
            return Ok(IdempotencyClaim::Replay(StoredResponse {
                status: status.unwrap_or(500),
                headers: headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
                body: body.unwrap_or_default(),
                record: coll.zip(rid),
            }));
        }
        let mut claims = self.0.lock();
        // A request cancelled between its claim and its answer (its client went away)
        // leaves its claim behind: it is taken over once stale.
        claims.retain(|_, c| c.claimed_at >= now_us - IDEMPOTENCY_STALE_MICROS);
        match claims.get(&scope(key)) {
            Some(running) if running.fingerprint != fingerprint => Ok(IdempotencyClaim::Mismatch),
            Some(_) => Ok(IdempotencyClaim::InFlight),
            None => {
                claims.insert(scope(key), Claim { fingerprint: fingerprint.to_string(), claimed_at: now_us });
                Ok(IdempotencyClaim::Claimed)
            }
        }
    }

    /// Stores the answer of the request that claimed `key`, in that request's transaction.
    ///
    /// # Errors
    /// [`StoreError::IdempotencyConflict`] when the key is not claimed here (any more), or
    /// another process stored an answer for it first: the transaction must not commit.
    pub(crate) fn complete(
        &self,
        tx: &rusqlite::Connection,
        key: &IdempotencyKey,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        let mut claims = self.0.lock();
        let Some(claim) = claims.get(&scope(key)) else { return Err(StoreError::IdempotencyConflict) };
        let headers = serde_json::to_string(&response.headers).unwrap_or_else(|_| "[]".into());
        let (coll, rid) = response.record.clone().unzip();
        // A stored row is replaced only when it stands for nothing (see `claim`): expired by
        // the time of the claim, or left in flight by an older version.
        let written = tx
            .prepare_cached(
                "insert into idempotency (tenant, api_key, key, fingerprint, state, status, headers, body, collection, record_id, created_at)
                 values (?1, ?2, ?3, ?4, 'done', ?5, ?6, ?7, ?8, ?9, ?10)
                 on conflict (tenant, api_key, key) do update set fingerprint = excluded.fingerprint, state = 'done',
                   status = excluded.status, headers = excluded.headers, body = excluded.body,
                   collection = excluded.collection, record_id = excluded.record_id, created_at = excluded.created_at
                 where idempotency.state = 'in_flight' or idempotency.created_at < ?11",
            )?
            .execute(params![
                key.tenant,
                key.api_key,
                key.key,
                claim.fingerprint,
                response.status,
                headers,
                response.body,
                coll,
                rid,
                claim.claimed_at,
                claim.claimed_at - IDEMPOTENCY_TTL_MICROS,
            ])?;
        if written == 0 {
            return Err(StoreError::IdempotencyConflict);
        }
        // Should the commit still fail, the request failed: the key is free again.
        claims.remove(&scope(key));
        Ok(())
    }

    /// Forgets the claim of a request that failed without an answer worth keeping.
    pub(crate) fn release(&self, key: &IdempotencyKey) {
        self.0.lock().remove(&scope(key));
    }
}
