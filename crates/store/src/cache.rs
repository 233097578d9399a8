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
//!
//! A hit copies nothing: entries are [`SharedRecord`]s behind an `Arc`, and the bytes a
//! response is written from are rendered once per entry and then shared (see
//! [`SharedRecord::rendered`]).

use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use moka::sync::Cache;
use tombstone_domain::record::Record;

/// `(tenant, collection, id)`.
pub type CacheKey = (String, String, String);

/// Which representation of a record a response carries: the two that depend on the
/// record alone (a held record's `holds` are read per request, so they are never kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Without `holds`: the caller may not read deleted records.
    Plain,
    /// With `holds: []`: the caller may, and the record is not held.
    NoHolds,
}

/// A record as readers share it: many requests read one copy at once, and the JSON they
/// answer with is written once per view, the first time a request asks for it, and then
/// handed out as a reference-counted buffer. The cache drops the whole entry when the
/// record changes, so a rendering never outlives the state it was written from.
#[derive(Debug)]
pub struct SharedRecord {
    record: Record,
    etag: Bytes,
    rendered: [OnceLock<Bytes>; 2],
}

impl SharedRecord {
    #[must_use]
    pub fn new(record: Record) -> Self {
        let etag = Bytes::from(record.etag());
        Self { record, etag, rendered: [OnceLock::new(), OnceLock::new()] }
    }

    /// The record's `ETag` (`"v<version>"`), written once.
    #[must_use]
    pub fn etag(&self) -> Bytes {
        self.etag.clone()
    }

    /// The bytes of `view`, from `render` the first time and shared after that. Two
    /// requests that both find the slot empty both render; the first to finish is kept.
    ///
    /// # Errors
    /// What `render` returned, when it was called and failed (nothing is kept then).
    pub fn rendered<E>(&self, view: View, render: impl FnOnce(&Record) -> Result<Bytes, E>) -> Result<Bytes, E> {
        let slot = &self.rendered[view as usize];
        if let Some(bytes) = slot.get() {
            return Ok(bytes.clone());
        }
        let bytes = render(&self.record)?;
        Ok(slot.get_or_init(|| bytes).clone())
    }

    /// The record itself, copied only when another reader still holds it.
    #[must_use]
    pub fn into_record(self: Arc<Self>) -> Record {
        match Arc::try_unwrap(self) {
            Ok(shared) => shared.record,
            Err(shared) => shared.record.clone(),
        }
    }
}

impl Deref for SharedRecord {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.record
    }
}

/// What the cache holds for a key: the record, or `None` when it is known to be absent.
pub type Entry = Option<Arc<SharedRecord>>;

/// A cache of records by key. Implementations: [`MemoryCache`] (one process); a shared
/// cache for several replicas implements the same four operations.
pub trait RecordCache: Send + Sync + 'static {
    /// `Some(value)` on a hit (`value` is `None` when the record is known to be absent).
    fn lookup(&self, key: &CacheKey) -> Option<Entry>;
    /// The token to present when filling after a miss.
    fn token(&self, key: &CacheKey) -> u64;
    /// Stores a value read from the database, unless the key was invalidated since `token`.
    fn fill(&self, key: CacheKey, token: u64, value: Entry);
    /// Drops the key and makes outstanding fills of it stale.
    fn invalidate(&self, key: &CacheKey);
    /// Drops every key and makes every outstanding fill stale: what is left when the news
    /// of which keys changed may have been missed.
    fn invalidate_all(&self);
}

const STRIPES: usize = 1024;

/// An in-process cache (moka), bounded by entries and time to live.
pub struct MemoryCache {
    entries: Cache<CacheKey, Entry>,
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
    fn lookup(&self, key: &CacheKey) -> Option<Entry> {
        let hit = self.entries.get(key);
        let name = if hit.is_some() { "tombstone_cache_hits_total" } else { "tombstone_cache_misses_total" };
        crate::telemetry::collection_counter(name, &key.1).increment(1);
        hit
    }

    fn token(&self, key: &CacheKey) -> u64 {
        *self.stripe(key).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fill(&self, key: CacheKey, token: u64, value: Entry) {
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
        assert!(cache.lookup(&key()).is_none(), "the stale fill must not land");
        let token = cache.token(&key());
        cache.fill(key(), token, None);
        assert!(matches!(cache.lookup(&key()), Some(None)));
        cache.invalidate(&key());
        assert!(cache.lookup(&key()).is_none());
    }

    #[test]
    fn a_hit_shares_the_entry_and_its_rendering() {
        use tombstone_domain::time::Timestamp;
        let cache = MemoryCache::new(100, Duration::from_secs(60));
        let record = Record {
            tenant: "t".into(),
            collection: "c".into(),
            id: "1".into(),
            version: 3,
            created_at: Timestamp::from_micros(1),
            updated_at: Timestamp::from_micros(2),
            deletion: None,
            archive: None,
            legal_hold: false,
            values: tombstone_domain::record::Values::default(),
        };
        let token = cache.token(&key());
        cache.fill(key(), token, Some(Arc::new(SharedRecord::new(record))));
        let (Some(Some(a)), Some(Some(b))) = (cache.lookup(&key()), cache.lookup(&key())) else {
            panic!("two hits expected");
        };
        assert!(Arc::ptr_eq(&a, &b), "a hit hands out the cached entry, not a copy");
        assert_eq!(&a.etag()[..], b"\"v3\"");

        let renders = std::cell::Cell::new(0);
        let render = |r: &Record| -> Result<Bytes, ()> {
            renders.set(renders.get() + 1);
            Ok(Bytes::from(format!("{}:{}", r.id, r.version)))
        };
        let first = a.rendered(View::Plain, render).unwrap();
        let second = b.rendered(View::Plain, render).unwrap();
        assert_eq!((&first[..], renders.get()), (&b"1:3"[..], 1), "rendered once, then shared");
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same buffer");
        b.rendered(View::NoHolds, render).unwrap();
        assert_eq!(renders.get(), 2, "each view is rendered on its own");
        assert!(a.rendered(View::NoHolds, |_| Err::<Bytes, _>("unused")).is_ok());

        // A failed render keeps nothing; the next one is tried again.
        let fresh = SharedRecord::new(Record::clone(&a));
        assert_eq!(fresh.rendered(View::Plain, |_| Err::<Bytes, _>("no")), Err("no"));
        assert!(fresh.rendered(View::Plain, |_| Ok::<_, ()>(Bytes::from_static(b"x"))).is_ok());

        cache.invalidate(&key());
        assert!(cache.lookup(&key()).is_none());
        assert_eq!(a.into_record().version, 3, "a reader keeps what it took after the entry goes");
    }
}
