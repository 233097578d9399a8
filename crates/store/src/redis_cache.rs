//! The shared read cache in Redis (`cache.url = "redis://…"`): one cache for every replica
//! of a deployment on PostgreSQL.
//!
//! Entries hold a record in every state (active, soft-deleted, absent), as the memory
//! cache's do, under `tombstone:<namespace>:<epoch>:r:<key>`, where the namespace is the
//! database's own (one Redis may serve several deployments) and the key is the JSON of
//! `[tenant, collection, id]` (unambiguous whatever the characters of the parts).
//!
//! **The fill race** — a read that found the old record before a delete committed, and
//! writes it into the cache after the delete invalidated it — is closed with fill tokens
//! kept in Redis, the memory cache's scheme shared by all processes: each key has a
//! generation counter (`…:g:<key>`); a miss returns the current generation with the
//! (absent) entry in one script call; every invalidation increments the generation and
//! deletes the entry in one script; a fill is a script that writes only if the generation
//! (and the epoch) are still those of its token. Scripts run atomically in Redis, so no
//! invalidation can fall between the check and the write. (Version-stamped entries were
//! the alternative; they need the version of what the delete left behind — an absent
//! record has none — and a tombstone per invalidated key, which is what the generation is,
//! without the version comparison: see docs/DECISIONS.md.)
//!
//! **Redis unavailable**: every call is bounded by [`OP_TIMEOUT`]. A read that cannot reach
//! Redis goes to the database (counted in `tombstone_cache_bypass_total`) and fills
//! nothing; a write's invalidation that cannot reach Redis does not fail the write, but
//! marks the cache *suspect*: before this process uses Redis again it increments the
//! deployment's epoch, which makes every entry written before unreachable to every
//! process at once (they expire by their time to live). So an entry that missed its
//! invalidation is never served once Redis is back. While Redis is failing, it is tried
//! again at most every [`RETRY_AFTER`], so that a request does not wait for a dead server
//! each time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde_json::{Value, json};
use tombstone_domain::record::{ArchiveMark, DeletionMark, FieldValue, Record, Values};
use tombstone_domain::time::Timestamp;

use crate::StoreError;
use crate::cache::CacheKey;

/// The longest any one Redis call may take before the cache is bypassed.
pub const OP_TIMEOUT: Duration = Duration::from_millis(250);

/// How long after a failure Redis is left alone before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a key's generation outlives its last invalidation: far longer than any fill
/// can take (a fill older than this whose key's generation expired could land).
const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// `ARGV`: prefix, key. Returns `{epoch, entry}` on a hit, `{epoch, "", generation}` on a
/// miss.
const LOOKUP: &str = r"
local p = ARGV[1]
local e = redis.call('GET', p .. 'epoch') or '0'
local v = redis.call('GET', p .. e .. ':r:' .. ARGV[2])
if v then return {e, v} end
return {e, '', redis.call('GET', p .. 'g:' .. ARGV[2]) or '0'}
";

/// `ARGV`: prefix, key, epoch, generation, entry, ttl in ms. Writes the entry only if
/// neither the epoch nor the key's generation moved since the token was taken.
const FILL: &str = r"
local p = ARGV[1]
if (redis.call('GET', p .. 'epoch') or '0') ~= ARGV[3] then return 0 end
if (redis.call('GET', p .. 'g:' .. ARGV[2]) or '0') ~= ARGV[4] then return 0 end
redis.call('SET', p .. ARGV[3] .. ':r:' .. ARGV[2], ARGV[5], 'PX', ARGV[6])
return 1
";

/// `ARGV`: prefix, generation ttl in ms, keys…. Moves each key's generation and deletes its
/// entry.
const INVALIDATE: &str = r"
local p = ARGV[1]
local e = redis.call('GET', p .. 'epoch') or '0'
for i = 3, #ARGV do
  local g = p .. 'g:' .. ARGV[i]
  redis.call('INCR', g)
  redis.call('PEXPIRE', g, ARGV[2])
  redis.call('DEL', p .. e .. ':r:' .. ARGV[i])
end
return #ARGV - 2
";

/// What a lookup found.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "a hit is the common case and is returned as it is")]
pub enum Lookup {
    /// The cached state (`None`: known to be absent).
    Hit(Option<Record>),
    /// Not cached: read the database, then [`RedisCache::fill`] with this token.
    Miss(FillToken),
    /// Redis is unavailable: read the database and fill nothing.
    Bypass,
}

/// What a fill presents: the epoch and the key's generation seen by the missed lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillToken {
    epoch: String,
    generation: String,
}

/// The shared cache of one deployment in one Redis.
pub struct RedisCache {
    client: redis::Client,
    /// The connection in use; dropped on a failure, so that the next try after
    /// [`RETRY_AFTER`] starts from a fresh connection rather than one that may still be
    /// reconnecting.
    conn: Mutex<Option<ConnectionManager>>,
    prefix: String,
    ttl: Duration,
    lookup: Script,
    fill: Script,
    invalidate: Script,
    /// Set when an invalidation may have been lost: the epoch must move before Redis is
    /// read again.
    suspect: AtomicBool,
    /// While set and in the future, Redis is not tried.
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisCache {
    /// A cache in the Redis at `url` (`redis://…`) under the deployment's `namespace`,
    /// keeping entries at most `ttl`. Connects lazily: a Redis down at start only means
    /// reads go to the database until it is up.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the URL does not parse.
    pub fn new(url: &str, namespace: &str, ttl: Duration) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Internal(format!("cache.url is not a Redis URL: {e}")))?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
            prefix: format!("tombstone:{namespace}:"),
            ttl,
            lookup: Script::new(LOOKUP),
            fill: Script::new(FILL),
            invalidate: Script::new(INVALIDATE),
            suspect: AtomicBool::new(false),
            down_until: Mutex::new(None),
        })
    }

    /// The state of `key`, or the token to fill it with after reading the database.
    pub async fn lookup(&self, key: &CacheKey) -> Lookup {
        let counter = |name| crate::telemetry::collection_counter(name, &key.1).increment(1);
        let Some(mut conn) = self.connection().await else {
            counter("tombstone_cache_bypass_total");
            return Lookup::Bypass;
        };
        let mut call = self.lookup.prepare_invoke();
        call.arg(&self.prefix).arg(encode_key(key));
        match bounded(call.invoke_async::<Vec<String>>(&mut conn)).await {
            Ok(reply) => match reply.as_slice() {
                [_, entry] => match decode(entry) {
                    Some(value) => {
                        counter("tombstone_cache_hits_total");
                        Lookup::Hit(value)
                    }
                    None => {
                        // An entry this version cannot read (another version wrote it):
                        // read the database, and let the next write replace the entry.
                        counter("tombstone_cache_misses_total");
                        Lookup::Bypass
                    }
                },
                [epoch, _, generation] => {
                    counter("tombstone_cache_misses_total");
                    Lookup::Miss(FillToken { epoch: epoch.clone(), generation: generation.clone() })
                }
                _ => {
                    counter("tombstone_cache_bypass_total");
                    Lookup::Bypass
                }
            },
            Err(e) => {
                self.failed("lookup", &e);
                counter("tombstone_cache_bypass_total");
                Lookup::Bypass
            }
        }
    }

    /// Stores what the database said of `key`, unless the key was invalidated (or the
    /// epoch moved) since `token` was taken. Returns whether the entry was written.
    pub async fn fill(&self, key: &CacheKey, token: FillToken, value: Option<&Record>) -> bool {
        let Some(mut conn) = self.connection().await else { return false };
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut call = self.fill.prepare_invoke();
        call.arg(&self.prefix)
            .arg(encode_key(key))
            .arg(&token.epoch)
            .arg(&token.generation)
            .arg(encode(value))
            .arg(ttl_ms);
        match bounded(call.invoke_async::<i64>(&mut conn)).await {
            Ok(written) => written == 1,
            Err(e) => {
                // Nothing was written, or it was written under a token that was current:
                // either way nothing stale.
                self.failed("fill", &e);
                false
            }
        }
    }

    /// Drops `keys` and makes outstanding fills of them stale. Never fails: when Redis
    /// cannot be reached, the cache is marked suspect and its epoch moves before it is
    /// read again (see the module's documentation).
    pub async fn invalidate(&self, keys: &[CacheKey]) {
        if keys.is_empty() {
            return;
        }
        let Some(mut conn) = self.connection().await else {
            self.suspect.store(true, Ordering::SeqCst);
            return;
        };
        let mut call = self.invalidate.prepare_invoke();
        call.arg(&self.prefix).arg(u64::try_from(GENERATION_TTL.as_millis()).unwrap_or(u64::MAX));
        for key in keys {
            call.arg(encode_key(key));
        }
        if let Err(e) = bounded(call.invoke_async::<i64>(&mut conn)).await {
            // The script may or may not have run: assume not (`failed` marks the cache
            // suspect).
            self.failed("invalidate", &e);
        }
    }

    /// Makes every entry written so far unreachable, for every process (moves the epoch).
    /// Returns whether Redis could be reached; if not, the epoch moves on the next use.
    pub async fn invalidate_all(&self) -> bool {
        self.suspect.store(true, Ordering::SeqCst);
        self.heal().await
    }

    /// Whether Redis is usable now; a suspect cache moves its epoch first. Called once a
    /// second by the server (with `sync_cache`), so that a process that saw Redis fail
    /// moves the epoch soon after Redis is back, whether or not it serves requests.
    pub async fn heal(&self) -> bool {
        self.connection().await.is_some()
    }

    /// Whether an invalidation may have been lost and the epoch has not moved since.
    #[must_use]
    pub fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::SeqCst)
    }

    /// A connection to use now, or `None` while Redis is failing. A suspect cache first
    /// moves the epoch; until that succeeds Redis is not used.
    async fn connection(&self) -> Option<ConnectionManager> {
        if self.down_until.lock().ok().and_then(|d| *d).is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let current = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut conn = match current {
            Some(conn) => conn,
            None => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(OP_TIMEOUT)
                    .set_response_timeout(OP_TIMEOUT)
                    .set_number_of_retries(1);
                match bounded(self.client.get_connection_manager_with_config(config)).await {
                    Ok(conn) => {
                        *self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
                        conn
                    }
                    Err(e) => {
                        self.failed("connect", &e);
                        return None;
                    }
                }
            }
        };
        if self.suspect.load(Ordering::SeqCst) {
            // Cleared before the bump: an invalidation failing during it sets it again.
            self.suspect.store(false, Ordering::SeqCst);
            let epoch = format!("{}epoch", self.prefix);
            if let Err(e) = bounded(conn.incr::<_, _, i64>(epoch, 1)).await {
                self.failed("epoch", &e);
                return None;
            }
            tracing::info!("Redis is back: the shared cache's epoch moved, entries from before are not served");
        }
        Some(conn)
    }

    /// Counts and logs a failed call, and leaves Redis alone for [`RETRY_AFTER`]. The cache
    /// becomes suspect whatever the call was: when Redis fails for this process it may
    /// have failed for the others' invalidations too, which this process must not read
    /// past once Redis is back.
    fn failed(&self, op: &'static str, e: &redis::RedisError) {
        self.suspect.store(true, Ordering::SeqCst);
        *self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        metrics::counter!("tombstone_cache_redis_errors_total", "op" => op).increment(1);
        let mut down = self.down_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if down.is_none_or(|until| Instant::now() >= until) {
            tracing::warn!(error = %e, cache.op = op, "Redis is unavailable: reads go to the database");
        }
        *down = Some(Instant::now() + RETRY_AFTER);
    }
}

/// Runs a Redis call for at most [`OP_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((redis::ErrorKind::IoError, "timed out"))),
    }
}

fn encode_key(key: &CacheKey) -> String {
    json!([key.0, key.1, key.2]).to_string()
}

/// `a` for an absent record, `r` and the record's JSON otherwise.
fn encode(value: Option<&Record>) -> String {
    let Some(r) = value else { return "a".into() };
    let values: serde_json::Map<String, Value> = r.values.iter().map(|(k, v)| (k.clone(), field(v))).collect();
    let record = json!({
        "t": r.tenant, "c": r.collection, "i": r.id, "v": r.version,
        "ca": r.created_at.as_micros(), "ua": r.updated_at.as_micros(),
        "d": r.deletion.as_ref().map(|d| json!({
            "at": d.deleted_at.as_micros(), "by": d.deleted_by, "r": d.reason,
            "id": d.deletion_id, "p": d.purge_at.as_micros(),
        })),
        "a": r.archive.as_ref().map(|a| json!({"at": a.archived_at.as_micros(), "by": a.archived_by, "r": a.reason})),
        "h": r.legal_hold,
        "f": values,
    });
    format!("r{record}")
}

fn field(v: &FieldValue) -> Value {
    match v {
        FieldValue::Null => Value::Null,
        FieldValue::String(s) => json!({"s": s}),
        FieldValue::Ref(s) => json!({"r": s}),
        FieldValue::Integer(i) => json!({"i": i}),
        FieldValue::Number(n) => json!({"n": n}),
        FieldValue::Boolean(b) => json!({"b": b}),
        FieldValue::Timestamp(t) => json!({"t": t.as_micros()}),
        FieldValue::Json(j) => json!({"j": j}),
    }
}

/// The state an entry holds; `None` for an entry that does not parse.
fn decode(entry: &str) -> Option<Option<Record>> {
    if entry == "a" {
        return Some(None);
    }
    let v: Value = serde_json::from_str(entry.strip_prefix('r')?).ok()?;
    let ts = |v: &Value| v.as_i64().map(Timestamp::from_micros);
    let text = |v: &Value| v.as_str().map(str::to_string);
    let deletion = match &v["d"] {
        Value::Null => None,
        d => Some(DeletionMark {
            deleted_at: ts(&d["at"])?,
            deleted_by: text(&d["by"])?,
            reason: text(&d["r"]),
            deletion_id: text(&d["id"])?,
            purge_at: ts(&d["p"])?,
        }),
    };
    let archive = match &v["a"] {
        Value::Null => None,
        a => Some(ArchiveMark { archived_at: ts(&a["at"])?, archived_by: text(&a["by"])?, reason: text(&a["r"]) }),
    };
    let mut values = Values::new();
    for (name, f) in v["f"].as_object()? {
        values.insert(name.clone(), unfield(f)?);
    }
    Some(Some(Record {
        tenant: text(&v["t"])?,
        collection: text(&v["c"])?,
        id: text(&v["i"])?,
        version: v["v"].as_i64()?,
        created_at: ts(&v["ca"])?,
        updated_at: ts(&v["ua"])?,
        deletion,
        archive,
        legal_hold: v["h"].as_bool()?,
        values,
    }))
}

fn unfield(v: &Value) -> Option<FieldValue> {
    if v.is_null() {
        return Some(FieldValue::Null);
    }
    let (tag, inner) = v.as_object()?.iter().next()?;
    Some(match tag.as_str() {
        "s" => FieldValue::String(inner.as_str()?.to_string()),
        "r" => FieldValue::Ref(inner.as_str()?.to_string()),
        "i" => FieldValue::Integer(inner.as_i64()?),
        "n" => FieldValue::Number(inner.as_f64()?),
        "b" => FieldValue::Boolean(inner.as_bool()?),
        "t" => FieldValue::Timestamp(Timestamp::from_micros(inner.as_i64()?)),
        "j" => FieldValue::Json(inner.clone()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_every_state_and_field_type() {
        let t = Timestamp::from_micros(1_767_225_600_123_456);
        let mut values = Values::new();
        values.insert("s".into(), FieldValue::String("naïve: \"quoted\"".into()));
        values.insert("r".into(), FieldValue::Ref("other".into()));
        values.insert("i".into(), FieldValue::Integer(-42));
        values.insert("n".into(), FieldValue::Number(1.5));
        values.insert("b".into(), FieldValue::Boolean(true));
        values.insert("t".into(), FieldValue::Timestamp(t));
        values.insert("j".into(), FieldValue::Json(json!({"a": [1, null]})));
        values.insert("z".into(), FieldValue::Null);
        let mut record = Record {
            tenant: "t1".into(),
            collection: "items".into(),
            id: "x".into(),
            version: 3,
            created_at: t,
            updated_at: t,
            deletion: None,
            archive: None,
            legal_hold: true,
            values,
        };
        assert_eq!(decode(&encode(Some(&record))), Some(Some(record.clone())));
        record.deletion = Some(DeletionMark {
            deleted_at: t,
            deleted_by: "key_1".into(),
            reason: Some("why".into()),
            deletion_id: "del_1".into(),
            purge_at: t,
        });
        record.archive = Some(ArchiveMark { archived_at: t, archived_by: "system".into(), reason: None });
        assert_eq!(decode(&encode(Some(&record))), Some(Some(record)));
        assert_eq!(decode(&encode(None)), Some(None));
        assert_eq!(decode("r{not json"), None);
        assert_eq!(decode(""), None);
    }
}
