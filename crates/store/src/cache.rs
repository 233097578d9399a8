//! The read cache of single records.
//!
//! Entries hold a record in every state (active, soft-deleted, absent), so one entry
//! answers both plain and `include=deleted` reads; the caller applies the visibility rule.
//! Writes invalidate on the writer thread after commit and before the write's caller
//! gets its answer, so a response to a change is never followed by a stale read.
//!
//! The classic race — a slow fill that read the database before a change committed but
//! writes its result into the cache after the change invalidated it — is closed with fill
//! tokens: a reader takes the token of the key's stripe before reading the database, every
//! invalidation bumps the stripe, and a fill whose token is no longer current is dropped.

use std::sync::Mutex;
use std::time::Duration;

use moka::sync::Cache;
use tombstone_domain::record::Record;

/// `(tenant, collection, id)`.
pub type CacheKey = (String, String, String);

/// A cache of records by key. Implementations: [`MemoryCache`] (one process); a shared
/// cache for several replicas implements the same four operations.
pub trait RecordCache: Send + Sync + 'static {
    /// `Some(value)` on a hit (`value` is `None` when the record is known to be absent).
    fn lookup(&self, key: &CacheKey) -> Option<Option<Record>>;
    /// The token to present when filling after a miss.
    fn token(&self, key: &CacheKey) -> u64;
    /// Stores a value read from the database, unless the key was invalidated since `token`.
    fn fill(&self, key: CacheKey, token: u64, value: Option<Record>);
    /// Drops the key and makes outstanding fills of it stale.
    fn invalidate(&self, key: &CacheKey);
    /// Drops every key and makes every outstanding fill stale: what is left when the news
    /// of which keys changed may have been missed.
    fn invalidate_all(&self);
}

const STRIPES: usize = 1024;

/// An in-process cache (moka), bounded by entries and time to live.
pub struct MemoryCache {
    entries: Cache<CacheKey, Option<Record>>,
    stripes: Vec<Mutex<u64>>,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache").field("entries", &self.entries.entry_count()).finish()
    }
}

impl MemoryCache {
    /// A cache of at most `capacity` records, each kept at most `ttl`.
    #[must_use]
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
        }
    }

    fn stripe(&self, key: &CacheKey) -> &Mutex<u64> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.stripes[(hash as usize) % STRIPES]
    }
}

impl RecordCache for MemoryCache {
    fn lookup(&self, key: &CacheKey) -> Option<Option<Record>> {
        let hit = self.entries.get(key);
        let name = if hit.is_some() { "tombstone_cache_hits_total" } else { "tombstone_cache_misses_total" };
        crate::telemetry::collection_counter(name, &key.1).increment(1);
        hit
    }

    fn token(&self, key: &CacheKey) -> u64 {
        *self.stripe(key).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fill(&self, key: CacheKey, token: u64, value: Option<Record>) {
        let stripe = self.stripe(&key).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *stripe == token {
            self.entries.insert(key, value);
        }
    }

    fn invalidate(&self, key: &CacheKey) {
        let mut stripe = self.stripe(key).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *stripe = stripe.wrapping_add(1);
        self.entries.invalidate(key);
    }

    fn invalidate_all(&self) {
        // Stripes first: a fill racing this call either sees its stripe bumped, or landed
        // before the entries below are dropped.
        for stripe in &self.stripes {
            let mut stripe = stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *stripe = stripe.wrapping_add(1);
        }
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        ("t".into(), "c".into(), "1".into())
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = MemoryCache::new(100, Duration::from_secs(60));
        let token = cache.token(&key());
        cache.invalidate(&key());
        cache.fill(key(), token, None);
        assert_eq!(cache.lookup(&key()), None, "the stale fill must not land");
        let token = cache.token(&key());
        cache.fill(key(), token, None);
        assert_eq!(cache.lookup(&key()), Some(None));
        cache.invalidate(&key());
        assert_eq!(cache.lookup(&key()), None);
    }
}
