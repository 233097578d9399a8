//! The configuration file (TOML) and the validated schema it declares.
//!
//! Parsing happens in two steps: serde reads the raw document (unknown keys are errors,
//! never silently ignored), then [`Config::parse`] checks the meaning of every value and
//! builds the typed [`Schema`]. Every error names the offending key and, where the TOML
//! parser knows it, the line.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

/// Collection names that would shadow a fixed API route under `/v1/`.
pub const RESERVED_COLLECTIONS: &[&str] = &[
    "keys",
    "trash",
    "audit",
    "events",
    "deletions",
    "purge",
    "webhooks",
    "search",
    "metrics",
    "ui",
    "collections",
    "whoami",
];

/// Field names used by the record representation itself.
pub const RESERVED_FIELDS: &[&str] =
    &["id", "collection", "version", "created_at", "updated_at", "holds", "archive_reason"];

/// Prefixes that are reserved for system fields (`deleted_at`, `purge_at`, `legal_hold`,
/// `archived_at`, …).
pub const RESERVED_PREFIXES: &[&str] = &["deleted", "purge", "legal_hold", "archived"];

/// Event types a webhook may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "record.created",
    "record.updated",
    "record.deleted",
    "record.restored",
    "record.purged",
    "record.erased",
    "record.archived",
    "record.unarchived",
    "deletion.completed",
];

/// An invalid configuration: which key, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted path of the offending key (`collections.products.fields.sku.type`).
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.line) {
            (false, Some(line)) => write!(f, "`{}` (line {line}): {}", self.key, self.reason),
            (false, None) => write!(f, "`{}`: {}", self.key, self.reason),
            (true, Some(line)) => write!(f, "line {line}: {}", self.reason),
            (true, None) => f.write_str(&self.reason),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    pub search: SearchConfig,
    pub files: FilesConfig,
    pub events: EventsConfig,
    pub webhooks: Vec<WebhookConfig>,
    pub purge: PurgeConfig,
    pub schema: Arc<Schema>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub limits: ServerLimits,
}

/// What a client may take of the server: bounds that keep slow or idle clients (slowloris)
/// from holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// How long a client may take to send a request's headers (`[server] header_read_timeout`).
    pub header_read_timeout: Duration,
    /// How long a request body may go without sending anything (`[server] body_read_timeout`).
    pub body_read_timeout: Duration,
    /// Open connections at most; beyond it new ones wait in the listen backlog
    /// (`[server] max_connections`).
    pub max_connections: u32,
    /// Requests being handled at once at most; beyond it they wait for a slot
    /// (`[server] max_concurrent_requests`). A stream counts only until its head is sent.
    pub max_concurrent_requests: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_concurrent_requests: 1024,
        }
    }
}

/// Where records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// An SQLite database file.
    Sqlite { path: PathBuf },
    /// A PostgreSQL connection URL, and how many connections each process keeps to it.
    Postgres { url: String, pool_size: u32 },
}

/// PostgreSQL connections per process when `storage.pool_size` is not set.
pub const DEFAULT_POOL_SIZE: u32 = 16;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub url: String,
    pub capacity: u64,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct SearchConfig {
    pub path: PathBuf,
}

/// Where the bytes of `file` fields live (`[files]`, §15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesConfig {
    /// A local directory (`file://…`, relative to the config file's directory).
    Local { path: PathBuf },
    /// An S3-compatible bucket (`s3://bucket/prefix`). What is not given here comes from the
    /// standard AWS environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
    },
}

/// A file field's size limit when `max_bytes` is not set: 25 MiB.
pub const DEFAULT_FILE_MAX_BYTES: u64 = 25 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The NATS server of the JetStream relay (`nats://…`); none: no relay.
    pub nats: Option<String>,
    /// The JetStream stream the relay publishes to (created if missing, subjects
    /// `tombstone.>`).
    pub nats_stream: String,
    pub retention: Duration,
    /// The safety-net poll of every outbox follower (SSE hub, webhook relay, search
    /// indexer, eventual cascades): commits of this process wake them at once, commits of
    /// other processes (the CLI, other replicas) are seen within this interval.
    pub poll_interval: Duration,
    /// Open SSE streams allowed at once, all tenants together.
    pub max_streams: u32,
    /// Open SSE streams allowed at once per tenant.
    pub max_streams_per_tenant: u32,
}

/// Default of `events.nats_stream`.
pub const DEFAULT_NATS_STREAM: &str = "TOMBSTONE";
/// Default of `events.poll_interval`.
pub const DEFAULT_EVENTS_POLL: Duration = Duration::from_secs(1);
/// Default of `events.max_streams`.
pub const DEFAULT_MAX_STREAMS: u32 = 1000;
/// Default of `events.max_streams_per_tenant`.
pub const DEFAULT_MAX_STREAMS_PER_TENANT: u32 = 100;

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            nats: None,
            nats_stream: DEFAULT_NATS_STREAM.into(),
            retention: Duration::from_secs(7 * 86_400),
            poll_interval: DEFAULT_EVENTS_POLL,
            max_streams: DEFAULT_MAX_STREAMS,
            max_streams_per_tenant: DEFAULT_MAX_STREAMS_PER_TENANT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
    /// Empty means every event type.
    pub events: Vec<String>,
    pub tenant: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PurgeConfig {
    pub interval: Duration,
    pub batch_size: u32,
    pub pause: Duration,
    pub max_rows_per_second: u32,
}

/// The declared collections.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub collections: IndexMap<String, Arc<Collection>>,
    /// How cascades are carried out (`[relations]`).
    pub relations: RelationsConfig,
}

/// `[relations]`: how cascades are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelationsConfig {
    /// At most this many records are deleted by cascade inside a DELETE's own transaction
    /// (the root not counted); the rest of the cascade continues as an eventual one, so a
    /// parent with a million children never holds the only writer for the whole cascade.
    pub max_immediate_cascade: usize,
}

impl Default for RelationsConfig {
    fn default() -> Self {
        Self { max_immediate_cascade: 10_000 }
    }
}

impl Schema {
    /// The collection of that name.
    #[must_use]
    pub fn collection(&self, name: &str) -> Option<&Arc<Collection>> {
        self.collections.get(name)
    }
}

/// How `DELETE` treats a collection's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// Soft delete with a recovery window (the default).
    Soft,
    /// Removed at once: credentials, transient data.
    Hard,
}

/// A declared collection.
#[derive(Debug, Clone)]
pub struct Collection {
    pub name: String,
    pub retention: Duration,
    pub delete: DeleteMode,
    pub require_if_match: bool,
    pub fields: IndexMap<String, Field>,
    /// Each entry a set of field names, unique among the active records of a tenant.
    pub unique: Vec<Vec<String>>,
    /// Records not updated for this long are archived by the purge worker (§17); `None`:
    /// never automatically.
    pub archive_after: Option<Duration>,
}

impl Collection {
    /// The declared field of that name.
    #[must_use]
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// Whether any of its fields is a `file` (its records may reference stored objects).
    #[must_use]
    pub fn has_files(&self) -> bool {
        self.fields.values().any(|f| matches!(f.ty, FieldType::File(_)))
    }
}

/// What happens to children when the record a ref points at is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Restrict,
    Cascade,
    Orphan,
    Eventual,
}

/// A field's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    Timestamp,
    Json,
    Ref {
        collection: String,
        on_delete: OnDelete,
    },
    /// A stored file (§15): its value is the file's metadata.
    File(FileRules),
}

/// What a `file` field accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRules {
    /// The largest file, in bytes.
    pub max_bytes: u64,
    /// Allowed media types (`image/png`, or `image/*` for a whole type); empty: any.
    pub content_types: Vec<String>,
}

impl FileRules {
    /// Whether a file of this media type (parameters such as `; charset=…` ignored) may be
    /// stored.
    #[must_use]
    pub fn allows(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if self.content_types.is_empty() {
            return !essence.is_empty();
        }
        self.content_types.iter().any(|allowed| match allowed.strip_suffix("/*") {
            Some(kind) => essence.split_once('/').is_some_and(|(k, sub)| k == kind && !sub.is_empty()),
            None => *allowed == essence,
        })
    }
}

impl FieldType {
    /// The name used in the config file.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Timestamp => "timestamp",
            Self::Json => "json",
            Self::Ref { .. } => "ref",
            Self::File(_) => "file",
        }
    }

    /// Whether equality filters, sorting and unique sets make sense for it.
    #[must_use]
    pub fn is_scalar(&self) -> bool {
        !matches!(self, Self::Json | Self::File(_))
    }
}

/// A declared field.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
    pub max_length: Option<usize>,
    pub case_insensitive: bool,
    pub search: bool,
    pub pii: bool,
    /// Keep a partial index on it so equality filters and sorts stay cheap.
    pub index: bool,
}

// ---------------------------------------------------------------------------------------
// Raw document, exactly as serde reads it.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    search: RawSearch,
    #[serde(default)]
    files: RawFiles,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    webhooks: Vec<Spanned<RawWebhook>>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    purge: RawPurge,
    #[serde(default)]
    relations: RawRelations,
    #[serde(default)]
    collections: IndexMap<Spanned<String>, Spanned<RawCollection>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    body_read_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_concurrent_requests: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Option<Spanned<String>>,
    pool_size: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    url: Option<Spanned<String>>,
    capacity: Option<u64>,
    ttl: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSearch {
    path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    url: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    nats: Option<Spanned<String>>,
    nats_stream: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    max_streams: Option<Spanned<i64>>,
    max_streams_per_tenant: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    secret: Spanned<String>,
    events: Option<Vec<Spanned<String>>>,
    tenant: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    default: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPurge {
    interval: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    pause: Option<Spanned<String>>,
    max_rows_per_second: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelations {
    max_immediate_cascade: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollection {
    retention: Option<Spanned<String>>,
    delete: Option<Spanned<String>>,
    #[serde(default)]
    require_if_match: bool,
    archive_after: Option<Spanned<String>>,
    #[serde(default)]
    unique: Vec<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    fields: IndexMap<Spanned<String>, Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: Spanned<String>,
    #[serde(default)]
    required: bool,
    max_length: Option<Spanned<i64>>,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    search: bool,
    #[serde(default)]
    pii: bool,
    #[serde(default)]
    index: bool,
    collection: Option<Spanned<String>>,
    on_delete: Option<Spanned<String>>,
    max_bytes: Option<Spanned<toml::Value>>,
    content_types: Option<Spanned<Vec<String>>>,
}

// ---------------------------------------------------------------------------------------

/// Turns byte offsets into 1-based line numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of<T>(&self, spanned: &Spanned<T>) -> Option<usize> {
        let start = spanned.span().start.min(self.0.len());
        Some(self.0[..start].bytes().filter(|b| *b == b'\n').count() + 1)
    }

    fn err<T>(&self, key: impl Into<String>, at: &Spanned<T>, reason: impl Into<String>) -> ConfigError {
        ConfigError { key: key.into(), line: self.of(at), reason: reason.into() }
    }
}

/// Parses a duration such as `30d`, `1h`, `50ms`.
///
/// # Errors
/// Returns a message naming the accepted units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|e| format!("bad duration {text:?} ({e}); use a number and a unit: ms, s, m, h, d"))?;
    if parsed.is_zero() {
        return Err(format!("bad duration {text:?}: must be greater than zero"));
    }
    Ok(parsed)
}

/// Writes a duration the way a config gives it: the largest unit that divides it exactly
/// (`90d`, `36h`, `50ms`).
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Config {
    /// Reads and validates a configuration document. Relative paths are resolved against
    /// `base_dir` (the directory of the config file).
    ///
    /// # Errors
    /// Returns the first problem found, naming the key and line.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line =
                e.span().map(|span| text[..span.start.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1);
            ConfigError { key: String::new(), line, reason: e.message().trim().to_string() }
        })?;
        let lines = Lines(text);

        let listen = match &raw.server.listen {
            Some(s) => s.get_ref().parse().map_err(|_| {
                lines.err("server.listen", s, format!("{:?} is not an address like 127.0.0.1:8080", s.get_ref()))
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let defaults = ServerLimits::default();
        let limits = ServerLimits {
            header_read_timeout: match &raw.server.header_read_timeout {
                Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("server.header_read_timeout", t, r))?,
                None => defaults.header_read_timeout,
            },
            body_read_timeout: match &raw.server.body_read_timeout {
                Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("server.body_read_timeout", t, r))?,
                None => defaults.body_read_timeout,
            },
            max_connections: positive(
                &lines,
                "server.max_connections",
                raw.server.max_connections.as_ref(),
                defaults.max_connections,
            )?,
            max_concurrent_requests: positive(
                &lines,
                "server.max_concurrent_requests",
                raw.server.max_concurrent_requests.as_ref(),
                defaults.max_concurrent_requests,
            )?,
        };

        let mut storage = match &raw.storage.url {
            None => StorageConfig::Sqlite { path: base_dir.join("tombstone-data/tombstone.db") },
            Some(url) => {
                parse_storage_url(url.get_ref(), base_dir).map_err(|reason| lines.err("storage.url", url, reason))?
            }
        };
        // Checked whatever the store, so a bad value is found before the move to PostgreSQL.
        let pool = positive(&lines, "storage.pool_size", raw.storage.pool_size.as_ref(), DEFAULT_POOL_SIZE)?;
        if let StorageConfig::Postgres { pool_size, .. } = &mut storage {
            *pool_size = pool;
        }

        let cache = CacheConfig {
            url: match &raw.cache.url {
                Some(u)
                    if ["memory", "none"].contains(&u.get_ref().as_str()) || u.get_ref().starts_with("redis://") =>
                {
                    u.get_ref().clone()
                }
                Some(u) => return Err(lines.err("cache.url", u, "must be \"memory\", \"none\" or a redis:// URL")),
                None => "memory".into(),
            },
            capacity: raw.cache.capacity.unwrap_or(100_000),
            ttl: match &raw.cache.ttl {
                Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("cache.ttl", t, r))?,
                None => Duration::from_secs(300),
            },
        };

        let search =
            SearchConfig { path: base_dir.join(raw.search.path.as_deref().unwrap_or("tombstone-data/search")) };
        let files = files_config(&raw.files, base_dir, &lines)?;

        let events = EventsConfig {
            nats: match &raw.events.nats {
                Some(n) if n.get_ref().starts_with("nats://") => Some(n.get_ref().clone()),
                Some(n) => return Err(lines.err("events.nats", n, "must be a nats:// URL")),
                None => None,
            },
            nats_stream: match &raw.events.nats_stream {
                // JetStream stream names: no whitespace, `.`, `*`, `>`, path separators.
                Some(n)
                    if !n.get_ref().is_empty()
                        && n.get_ref().len() <= 255
                        && n.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                {
                    n.get_ref().clone()
                }
                Some(n) => {
                    return Err(lines.err(
                        "events.nats_stream",
                        n,
                        "must be letters, digits, `_` or `-` (a JetStream stream name)",
                    ));
                }
                None => DEFAULT_NATS_STREAM.into(),
            },
            retention: match &raw.events.retention {
                Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("events.retention", t, r))?,
                None => Duration::from_secs(7 * 86_400),
            },
            poll_interval: match &raw.events.poll_interval {
                Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("events.poll_interval", t, r))?,
                None => DEFAULT_EVENTS_POLL,
            },
            max_streams: positive(&lines, "events.max_streams", raw.events.max_streams.as_ref(), DEFAULT_MAX_STREAMS)?,
            max_streams_per_tenant: positive(
                &lines,
                "events.max_streams_per_tenant",
                raw.events.max_streams_per_tenant.as_ref(),
                DEFAULT_MAX_STREAMS_PER_TENANT,
            )?,
        };
        if let Some(per_tenant) = &raw.events.max_streams_per_tenant
            && events.max_streams_per_tenant > events.max_streams
        {
            return Err(lines.err(
                "events.max_streams_per_tenant",
                per_tenant,
                format!("cannot exceed events.max_streams ({})", events.max_streams),
            ));
        }

        let mut webhooks = Vec::new();
        for (i, hook) in raw.webhooks.iter().enumerate() {
            let key = format!("webhooks[{i}]");
            let h = hook.get_ref();
            let url = h.url.get_ref();
            let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or("");
            if host.is_empty() || host.starts_with('/') || url.contains(char::is_whitespace) {
                return Err(lines.err(format!("{key}.url"), &h.url, "must be an http:// or https:// URL with a host"));
            }
            if webhooks.iter().any(|w: &WebhookConfig| w.url == *url) {
                return Err(lines.err(format!("{key}.url"), &h.url, "the same URL is configured twice"));
            }
            let secret = h.secret.get_ref();
            let decoded = secret
                .strip_prefix("whsec_")
                .and_then(|b64| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).ok());
            if !matches!(decoded, Some(ref bytes) if bytes.len() >= 16) {
                return Err(lines.err(
                    format!("{key}.secret"),
                    &h.secret,
                    "must be whsec_ followed by at least 16 base64-encoded bytes",
                ));
            }
            let mut events = Vec::new();
            for ev in h.events.iter().flatten() {
                if !EVENT_TYPES.contains(&ev.get_ref().as_str()) {
                    return Err(lines.err(
                        format!("{key}.events"),
                        ev,
                        format!("unknown event type {:?}; one of {}", ev.get_ref(), EVENT_TYPES.join(", ")),
                    ));
                }
                events.push(ev.get_ref().clone());
            }
            webhooks.push(WebhookConfig { url: url.clone(), secret: secret.clone(), events, tenant: h.tenant.clone() });
        }

        let default_retention = match &raw.retention.default {
            Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("retention.default", t, r))?,
            None => Duration::from_secs(30 * 86_400),
        };

        let purge = PurgeConfig {
            interval: match &raw.purge.interval {
                Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("purge.interval", t, r))?,
                None => Duration::from_secs(3600),
            },
            batch_size: positive(&lines, "purge.batch_size", raw.purge.batch_size.as_ref(), 1000)?,
            pause: match &raw.purge.pause {
                Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err("purge.pause", t, r))?,
                None => Duration::from_millis(50),
            },
            max_rows_per_second: positive(
                &lines,
                "purge.max_rows_per_second",
                raw.purge.max_rows_per_second.as_ref(),
                5000,
            )?,
        };

        let mut schema = build_schema(&lines, &raw.collections, default_retention)?;
        schema.relations = RelationsConfig {
            max_immediate_cascade: positive(
                &lines,
                "relations.max_immediate_cascade",
                raw.relations.max_immediate_cascade.as_ref(),
                10_000,
            )? as usize,
        };

        Ok(Self {
            server: ServerConfig { listen, limits },
            storage,
            cache,
            search,
            files,
            events,
            webhooks,
            purge,
            schema: Arc::new(schema),
        })
    }
}

fn positive(lines: &Lines<'_>, key: &str, value: Option<&Spanned<i64>>, default: u32) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => u32::try_from(*v.get_ref())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| lines.err(key, v, "must be a positive integer")),
    }
}

fn parse_storage_url(url: &str, base_dir: &Path) -> Result<StorageConfig, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StorageConfig::Postgres { url: url.to_string(), pool_size: DEFAULT_POOL_SIZE });
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| format!("unsupported storage URL {url:?}; use sqlite://PATH or postgres://…"))?;
    if rest.is_empty() {
        return Err("sqlite URL has no file path".into());
    }
    Ok(StorageConfig::Sqlite { path: base_dir.join(rest) })
}

fn build_schema(
    lines: &Lines<'_>,
    raw: &IndexMap<Spanned<String>, Spanned<RawCollection>>,
    default_retention: Duration,
) -> Result<Schema, ConfigError> {
    let mut schema = Schema::default();
    for (name, coll) in raw {
        let cname = name.get_ref();
        let key = format!("collections.{cname}");
        if !valid_name(cname) || cname.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(lines.err(
                &key,
                name,
                "collection names are lower-case letters, digits and _, starting with a letter (at most 63)",
            ));
        }
        if RESERVED_COLLECTIONS.contains(&cname.as_str()) {
            return Err(lines.err(&key, name, format!("{cname:?} is reserved for an API route")));
        }
        let c = coll.get_ref();
        let retention = match &c.retention {
            Some(t) => parse_duration(t.get_ref()).map_err(|r| lines.err(format!("{key}.retention"), t, r))?,
            None => default_retention,
        };
        let archive_after = match &c.archive_after {
            Some(t) => Some(parse_duration(t.get_ref()).map_err(|r| lines.err(format!("{key}.archive_after"), t, r))?),
            None => None,
        };
        let delete = match c.delete.as_ref().map(|d| (d, d.get_ref().as_str())) {
            None | Some((_, "soft")) => DeleteMode::Soft,
            Some((_, "hard")) => DeleteMode::Hard,
            Some((d, other)) => {
                return Err(lines.err(
                    format!("{key}.delete"),
                    d,
                    format!("must be \"soft\" or \"hard\", not {other:?}"),
                ));
            }
        };
        let mut fields: IndexMap<String, Field> = IndexMap::new();
        let mut lowered = std::collections::HashSet::new();
        for (fname, fdef) in &c.fields {
            let fname_s = fname.get_ref();
            let fkey = format!("{key}.fields.{fname_s}");
            if !valid_name(fname_s) {
                return Err(lines.err(
                    &fkey,
                    fname,
                    "field names are letters, digits and _, starting with a letter (at most 63)",
                ));
            }
            let lower = fname_s.to_ascii_lowercase();
            if RESERVED_FIELDS.contains(&lower.as_str()) || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p)) {
                return Err(lines.err(&fkey, fname, format!("{fname_s:?} is a reserved system field name")));
            }
            if !lowered.insert(lower) {
                return Err(lines.err(&fkey, fname, "differs from another field only in case"));
            }
            let f = fdef.get_ref();
            let ty = match f.ty.get_ref().as_str() {
                "string" => FieldType::String,
                "integer" => FieldType::Integer,
                "number" => FieldType::Number,
                "boolean" => FieldType::Boolean,
                "timestamp" => FieldType::Timestamp,
                "json" => FieldType::Json,
                "file" => {
                    if f.required {
                        return Err(lines.err(
                            format!("{fkey}.required"),
                            fdef,
                            "a file field cannot be required: a record exists before its file is uploaded",
                        ));
                    }
                    let max_bytes = match &f.max_bytes {
                        None => DEFAULT_FILE_MAX_BYTES,
                        Some(m) => parse_bytes(m.get_ref())
                            .map_err(|reason| lines.err(format!("{fkey}.max_bytes"), m, reason))?,
                    };
                    let mut content_types = Vec::new();
                    for t in f.content_types.as_ref().map(Spanned::get_ref).into_iter().flatten() {
                        let t = t.trim().to_ascii_lowercase();
                        let valid = t.split_once('/').is_some_and(|(kind, sub)| {
                            let token = |s: &str| {
                                !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
                            };
                            token(kind) && (sub == "*" || token(sub))
                        });
                        if !valid {
                            return Err(lines.err(
                                format!("{fkey}.content_types"),
                                f.content_types.as_ref().expect("iterated"),
                                format!("{t:?} is not a media type (type/subtype, or type/* for a whole type)"),
                            ));
                        }
                        content_types.push(t);
                    }
                    FieldType::File(FileRules { max_bytes, content_types })
                }
                "ref" => {
                    let target = f.collection.as_ref().ok_or_else(|| {
                        lines.err(format!("{fkey}.collection"), fdef, "a ref field names its target collection")
                    })?;
                    if !raw.keys().any(|k| k.get_ref() == target.get_ref()) {
                        return Err(lines.err(
                            format!("{fkey}.collection"),
                            target,
                            format!("unknown collection {:?}", target.get_ref()),
                        ));
                    }
                    let on_delete = match f.on_delete.as_ref().map(|o| (o, o.get_ref().as_str())) {
                        None | Some((_, "restrict")) => OnDelete::Restrict,
                        Some((_, "cascade")) => OnDelete::Cascade,
                        Some((_, "orphan")) => OnDelete::Orphan,
                        Some((_, "eventual")) => OnDelete::Eventual,
                        Some((o, other)) => {
                            return Err(lines.err(
                                format!("{fkey}.on_delete"),
                                o,
                                format!("must be restrict, cascade, orphan or eventual, not {other:?}"),
                            ));
                        }
                    };
                    FieldType::Ref { collection: target.get_ref().clone(), on_delete }
                }
                other => {
                    return Err(lines.err(
                        format!("{fkey}.type"),
                        &f.ty,
                        format!(
                            "unknown field type {other:?}; one of string, integer, number, boolean, timestamp, json, ref, file"
                        ),
                    ));
                }
            };
            if !matches!(ty, FieldType::Ref { .. }) {
                if let Some(c) = &f.collection {
                    return Err(lines.err(format!("{fkey}.collection"), c, "only ref fields name a collection"));
                }
                if let Some(o) = &f.on_delete {
                    return Err(lines.err(format!("{fkey}.on_delete"), o, "only ref fields have on_delete"));
                }
            }
            if !matches!(ty, FieldType::File(_)) {
                if let Some(m) = &f.max_bytes {
                    return Err(lines.err(format!("{fkey}.max_bytes"), m, "only file fields have max_bytes"));
                }
                if let Some(c) = &f.content_types {
                    return Err(lines.err(format!("{fkey}.content_types"), c, "only file fields have content_types"));
                }
            }
            let max_length = match &f.max_length {
                None => None,
                Some(m) if ty != FieldType::String => {
                    return Err(lines.err(format!("{fkey}.max_length"), m, "only string fields have max_length"));
                }
                Some(m) => Some(
                    usize::try_from(*m.get_ref())
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| lines.err(format!("{fkey}.max_length"), m, "must be a positive integer"))?,
                ),
            };
            if f.case_insensitive && ty != FieldType::String {
                return Err(lines.err(
                    format!("{fkey}.case_insensitive"),
                    fdef,
                    "only string fields can be case_insensitive",
                ));
            }
            if f.search && ty != FieldType::String {
                return Err(lines.err(format!("{fkey}.search"), fdef, "only string fields can be searched"));
            }
            if f.index && !ty.is_scalar() {
                return Err(lines.err(
                    format!("{fkey}.index"),
                    fdef,
                    format!("{} fields cannot be indexed", ty.name()),
                ));
            }
            fields.insert(
                fname_s.clone(),
                Field {
                    name: fname_s.clone(),
                    // Refs are always indexed: restrict and cascade look children up by them.
                    index: f.index || matches!(ty, FieldType::Ref { .. }),
                    ty,
                    required: f.required,
                    max_length,
                    case_insensitive: f.case_insensitive,
                    search: f.search,
                    pii: f.pii,
                },
            );
        }
        let mut unique = Vec::new();
        for (i, set) in c.unique.iter().enumerate() {
            let ukey = format!("{key}.unique[{i}]");
            if set.get_ref().is_empty() {
                return Err(lines.err(&ukey, set, "a unique set names at least one field"));
            }
            let mut names: Vec<String> = Vec::new();
            for field in set.get_ref() {
                let fname = field.get_ref();
                match fields.get(fname) {
                    None => return Err(lines.err(&ukey, field, format!("unique over undeclared field {fname:?}"))),
                    Some(f) if !f.ty.is_scalar() => {
                        return Err(lines.err(
                            &ukey,
                            field,
                            format!("{} field {fname:?} cannot be unique", f.ty.name()),
                        ));
                    }
                    Some(_) if names.contains(fname) => {
                        return Err(lines.err(&ukey, field, format!("field {fname:?} appears twice")));
                    }
                    Some(_) => names.push(fname.clone()),
                }
            }
            if unique.contains(&names) {
                return Err(lines.err(&ukey, set, "the same unique set is declared twice"));
            }
            unique.push(names);
        }
        schema.collections.insert(
            cname.clone(),
            Arc::new(Collection {
                name: cname.clone(),
                retention,
                delete,
                require_if_match: c.require_if_match,
                fields,
                unique,
                archive_after,
            }),
        );
    }
    Ok(schema)
}

/// A size in bytes: an integer, or a string with a unit (`"5 MiB"`, `"500KB"`).
fn parse_bytes(value: &toml::Value) -> Result<u64, String> {
    let n = match value {
        toml::Value::Integer(n) => u64::try_from(*n).map_err(|_| "must be a positive size".to_string())?,
        toml::Value::String(s) => {
            s.parse::<bytesize::ByteSize>().map_err(|e| format!("{s:?} is not a size like \"25 MiB\": {e}"))?.as_u64()
        }
        _ => return Err("must be a size in bytes (25000000) or with a unit (\"25 MiB\")".into()),
    };
    if n == 0 { Err("must be a positive size".into()) } else { Ok(n) }
}

/// `[files]`: a local directory by default, or an S3-compatible bucket.
fn files_config(raw: &RawFiles, base_dir: &Path, lines: &Lines<'_>) -> Result<FilesConfig, ConfigError> {
    let s3_only = |key: &str| format!("only an s3:// files.url takes files.{key}");
    let Some(url) = &raw.url else {
        return Ok(FilesConfig::Local { path: base_dir.join("tombstone-data/files") });
    };
    let text = url.get_ref();
    if let Some(path) = text.strip_prefix("file://") {
        if path.is_empty() {
            return Err(lines.err("files.url", url, "a file:// URL names a directory"));
        }
        if let Some(e) = &raw.endpoint {
            return Err(lines.err("files.endpoint", e, s3_only("endpoint")));
        }
        if raw.region.is_some() || raw.access_key_id.is_some() || raw.secret_access_key.is_some() {
            return Err(lines.err("files.url", url, s3_only("region and credentials")));
        }
        return Ok(FilesConfig::Local { path: base_dir.join(path) });
    }
    let Some(rest) = text.strip_prefix("s3://") else {
        return Err(lines.err("files.url", url, "must be a file:// or s3:// URL"));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        return Err(lines.err("files.url", url, format!("{bucket:?} is not an S3 bucket name")));
    }
    let endpoint = match &raw.endpoint {
        Some(e) if e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://") => {
            Some(e.get_ref().clone())
        }
        Some(e) => return Err(lines.err("files.endpoint", e, "must be an http:// or https:// URL")),
        None => None,
    };
    Ok(FilesConfig::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
        endpoint,
        region: raw.region.clone(),
        access_key_id: raw.access_key_id.clone(),
        secret_access_key: raw.secret_access_key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/tombstone"))
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9090"

[storage]
url = "sqlite://data/t.db"

[retention]
default = "7d"

[collections.categories.fields]
name = { type = "string", required = true }

[collections.products]
retention = "30d"
unique = [["sku"]]

[collections.products.fields]
sku = { type = "string", required = true, max_length = 32, case_insensitive = true }
price_cents = { type = "integer" }
category_id = { type = "ref", collection = "categories", on_delete = "restrict" }
"#;

    #[test]
    fn the_immediate_cascade_bound_is_configurable_and_checked() {
        assert_eq!(parse(GOOD).unwrap().schema.relations.max_immediate_cascade, 10_000, "the default");
        let bounded = parse(&format!("[relations]\nmax_immediate_cascade = 50\n{GOOD}")).unwrap();
        assert_eq!(bounded.schema.relations.max_immediate_cascade, 50);
        for bad in ["0", "-3"] {
            let err = parse(&format!("[relations]\nmax_immediate_cascade = {bad}\n{GOOD}")).unwrap_err();
            assert!(err.to_string().contains("max_immediate_cascade") && err.to_string().contains("line 2"), "{err}");
        }
    }

    #[test]
    fn parses_a_good_config() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.server.listen.port(), 9090);
        assert_eq!(config.storage, StorageConfig::Sqlite { path: PathBuf::from("/etc/tombstone/data/t.db") });
        let products = config.schema.collection("products").unwrap();
        assert_eq!(products.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(products.unique, vec![vec!["sku".to_string()]]);
        assert!(products.field("sku").unwrap().case_insensitive);
        assert!(products.field("category_id").unwrap().index);
        let categories = config.schema.collection("categories").unwrap();
        assert_eq!(categories.retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn server_limits_have_defaults_and_can_be_set() {
        assert_eq!(parse(GOOD).unwrap().server.limits, ServerLimits::default());
        let config = parse(
            "[server]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"1m\"\nmax_connections = 50\nmax_concurrent_requests = 8\n",
        )
        .unwrap();
        let limits = config.server.limits;
        assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(limits.body_read_timeout, Duration::from_secs(60));
        assert_eq!((limits.max_connections, limits.max_concurrent_requests), (50, 8));
        let e = error_of("[server]\nmax_connections = 0\n");
        assert!(e.key == "server.max_connections" && e.line == Some(2), "{e}");
        let e = error_of("[server]\nheader_read_timeout = \"soon\"\n");
        assert_eq!(e.key, "server.header_read_timeout", "{e}");
    }

    #[test]
    fn the_nats_relay_takes_a_nats_url_and_a_stream_name() {
        let defaults = parse("").unwrap().events;
        assert_eq!((defaults.nats, defaults.nats_stream.as_str()), (None, DEFAULT_NATS_STREAM));
        let events = parse("[events]\nnats = \"nats://n:4222\"\nnats_stream = \"shop-events_1\"\n").unwrap().events;
        assert_eq!((events.nats.as_deref(), events.nats_stream.as_str()), (Some("nats://n:4222"), "shop-events_1"));
        let e = error_of("[events]\nnats = \"tls://n:4222\"\n");
        assert!(e.key == "events.nats" && e.line == Some(2), "{e}");
        for bad in ["a.b", "a b", "a>", "", "x/y"] {
            let e = error_of(&format!("[events]\nnats_stream = \"{bad}\"\n"));
            assert!(e.key == "events.nats_stream" && e.line == Some(2), "{bad}: {e}");
        }
    }

    fn error_of(text: &str) -> ConfigError {
        parse(text).expect_err("config should be refused")
    }

    #[test]
    fn file_fields_take_a_size_and_media_types() {
        let c = parse(
            "[collections.docs.fields]\n\
             a = { type = \"file\" }\n\
             b = { type = \"file\", max_bytes = 1000, content_types = [\"application/pdf\", \"Image/*\"] }\n\
             c = { type = \"file\", max_bytes = \"5 MiB\" }\n",
        )
        .unwrap();
        let docs = c.schema.collection("docs").unwrap();
        assert!(docs.has_files());
        let rules = |f: &str| match &docs.field(f).unwrap().ty {
            FieldType::File(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(rules("a"), FileRules { max_bytes: DEFAULT_FILE_MAX_BYTES, content_types: vec![] });
        assert_eq!(rules("b").max_bytes, 1000);
        assert_eq!(rules("c").max_bytes, 5 * 1024 * 1024);
        let b = rules("b");
        assert!(b.allows("application/pdf") && b.allows("application/PDF; name=x") && b.allows("image/png"));
        assert!(!b.allows("text/plain") && !b.allows("image/") && !b.allows("") && !b.allows("imagex/png"));
        assert!(rules("a").allows("text/plain") && !rules("a").allows(""));
        assert_eq!(c.files, FilesConfig::Local { path: PathBuf::from("/etc/tombstone/tombstone-data/files") });
    }

    #[test]
    fn bad_file_fields_and_files_settings_are_refused_with_their_key() {
        for (field, key) in [
            ("{ type = \"file\", required = true }", "collections.d.fields.f.required"),
            ("{ type = \"file\", max_bytes = 0 }", "collections.d.fields.f.max_bytes"),
            ("{ type = \"file\", max_bytes = -5 }", "collections.d.fields.f.max_bytes"),
            ("{ type = \"file\", max_bytes = \"lots\" }", "collections.d.fields.f.max_bytes"),
            ("{ type = \"file\", content_types = [\"pdf\"] }", "collections.d.fields.f.content_types"),
            ("{ type = \"string\", max_bytes = 10 }", "collections.d.fields.f.max_bytes"),
            ("{ type = \"json\", content_types = [\"a/b\"] }", "collections.d.fields.f.content_types"),
            ("{ type = \"file\", index = true }", "collections.d.fields.f.index"),
        ] {
            let e = error_of(&format!("[collections.d.fields]\nf = {field}\n"));
            assert_eq!(e.key, key, "{field}: {e}");
        }
        let e = error_of("[collections.d]\nunique = [[\"f\"]]\n[collections.d.fields]\nf = { type = \"file\" }\n");
        assert!(e.to_string().contains("file field"), "{e}");
        for (files, key) in [
            ("url = \"ftp://x\"", "files.url"),
            ("url = \"s3://A_B\"", "files.url"),
            ("url = \"file://\"", "files.url"),
            ("url = \"file://x\"\nendpoint = \"http://h\"", "files.endpoint"),
            ("url = \"s3://bucket\"\nendpoint = \"h:9000\"", "files.endpoint"),
        ] {
            assert_eq!(error_of(&format!("[files]\n{files}\n")).key, key, "{files}");
        }
        let s3 =
            parse("[files]\nurl = \"s3://my-bucket/a/b/\"\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu\"\n")
                .unwrap();
        assert_eq!(
            s3.files,
            FilesConfig::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu".into()),
                access_key_id: None,
                secret_access_key: None,
            }
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = error_of("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n");
        assert!(e.reason.contains("lisen"), "{e}");
        assert_eq!(e.line, Some(3));
        let e = error_of("[collections.a.fields]\nx = { type = \"string\", serach = true }\n");
        assert!(e.reason.contains("serach"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let e = error_of("[collections.a.fields]\nx = { type = \"strng\" }\n");
        assert_eq!(e.key, "collections.a.fields.x.type");
        assert_eq!(e.line, Some(2));
        let e = error_of("[collections.a]\nunique = [[\"nope\"]]\n[collections.a.fields]\nx = { type = \"string\" }\n");
        assert_eq!(e.key, "collections.a.unique[0]");
        assert!(e.reason.contains("undeclared"));
        let e = error_of("[collections.a.fields]\ndeleted_at = { type = \"string\" }\n");
        assert!(e.reason.contains("reserved"));
        let e = error_of("[collections.a.fields]\nid = { type = \"string\" }\n");
        assert!(e.reason.contains("reserved"));
        let e = error_of("[collections.a]\nretention = \"forever\"\n");
        assert_eq!(e.key, "collections.a.retention");
        assert_eq!(format_duration(parse_duration("90d").unwrap()), "90d");
        assert_eq!(format_duration(parse_duration("36h").unwrap()), "36h");
        assert_eq!(format_duration(parse_duration("1500ms").unwrap()), "1500ms");
        let e = error_of("[collections.a]\narchive_after = \"ninety days\"\n");
        assert_eq!(e.key, "collections.a.archive_after");
        let e = error_of("[collections.a.fields]\narchived = { type = \"boolean\" }\n");
        assert!(e.reason.contains("reserved"));
        let e = error_of("[retention]\ndefault = \"0s\"\n");
        assert_eq!(e.key, "retention.default");
        let e = error_of("[collections.keys.fields]\nx = { type = \"string\" }\n");
        assert!(e.reason.contains("reserved"));
        let e = error_of("[collections.a.fields]\nx = { type = \"ref\", collection = \"b\" }\n");
        assert_eq!(e.key, "collections.a.fields.x.collection");
        let e = error_of("[collections.a]\ndelete = \"maybe\"\n");
        assert_eq!(e.key, "collections.a.delete");
        let e = error_of("[collections.a.fields]\nx = { type = \"integer\", max_length = 3 }\n");
        assert_eq!(e.key, "collections.a.fields.x.max_length");
        let e = error_of("[[webhooks]]\nurl = \"http://x\"\nsecret = \"nope\"\n");
        assert_eq!(e.key, "webhooks[0].secret");
    }

    #[test]
    fn storage_url_pool_size_and_cache_url_are_checked() {
        let pg = parse("[storage]\nurl = \"postgres://u@db:5432/t\"\npool_size = 4\n").unwrap();
        assert_eq!(pg.storage, StorageConfig::Postgres { url: "postgres://u@db:5432/t".into(), pool_size: 4 });
        let pg = parse("[storage]\nurl = \"postgresql://db/t\"\n").unwrap();
        assert_eq!(
            pg.storage,
            StorageConfig::Postgres { url: "postgresql://db/t".into(), pool_size: DEFAULT_POOL_SIZE }
        );
        for text in ["[storage]\npool_size = 0\n", "[storage]\npool_size = -3\n"] {
            let e = error_of(text);
            assert!(e.key == "storage.pool_size" && e.line == Some(2), "{e}");
        }
        let e = error_of("[storage]\nurl = \"mysql://db\"\n");
        assert_eq!(e.key, "storage.url", "{e}");
        assert_eq!(parse("[cache]\nurl = \"none\"\n").unwrap().cache.url, "none");
        let e = error_of("[cache]\nurl = \"off\"\n");
        assert!(e.key == "cache.url" && e.reason.contains("\"none\""), "{e}");
    }

    #[test]
    fn event_stream_caps_and_poll_are_checked() {
        let config =
            parse("[events]\nmax_streams = 10\nmax_streams_per_tenant = 3\npoll_interval = \"250ms\"\n").unwrap();
        assert_eq!(config.events.max_streams, 10);
        assert_eq!(config.events.max_streams_per_tenant, 3);
        assert_eq!(config.events.poll_interval, Duration::from_millis(250));
        let defaults = parse("").unwrap().events;
        assert_eq!(defaults.max_streams, DEFAULT_MAX_STREAMS);
        assert_eq!(defaults.max_streams_per_tenant, DEFAULT_MAX_STREAMS_PER_TENANT);
        assert_eq!(defaults.poll_interval, DEFAULT_EVENTS_POLL);
        for (text, key) in [
            ("[events]\nmax_streams = 0\n", "events.max_streams"),
            ("[events]\nmax_streams = -1\n", "events.max_streams"),
            ("[events]\nmax_streams_per_tenant = 0\n", "events.max_streams_per_tenant"),
            ("[events]\nmax_streams = 5\nmax_streams_per_tenant = 6\n", "events.max_streams_per_tenant"),
            ("[events]\npoll_interval = \"0s\"\n", "events.poll_interval"),
            ("[events]\npoll_interval = \"often\"\n", "events.poll_interval"),
        ] {
            let e = error_of(text);
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.line.is_some(), "{text}: {e}");
        }
        let e = error_of("[events]\nmax_stream = 5\n");
        assert!(e.reason.contains("max_stream"), "{e}");
    }
}
