//! PostgreSQL errors as [`StoreError`]s, classified by SQLSTATE (never by message): the
//! code says whether the client may retry (busy, full, unreachable) or the server has a
//! bug (anything else). Unique violations name their fields through the violated
//! constraint's name, which Tombstone generates per unique set and registers here.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use deadpool_postgres::{PoolError, TimeoutType};
use tokio_postgres::error::SqlState;

use crate::StoreError;

/// Field names of every constraint Tombstone created, by constraint (or unique index)
/// name: a unique violation reports only the name. Names are deterministic (a hash of the
/// columns they cover), so one name means one field list in every database a process
/// talks to.
static CONSTRAINT_FIELDS: LazyLock<parking_lot::RwLock<HashMap<String, Vec<String>>>> = LazyLock::new(|| {
    // The system tables' keys, without `tenant` (the client never names it).
    let fixed: &[(&str, &[&str])] = &[
        ("meta_pkey", &["key"]),
        ("api_keys_pkey", &["id"]),
        ("collections_pkey", &["name"]),
        ("deletions_pkey", &["id"]),
        ("deletion_records_pkey", &["deletion_id", "collection", "record_id"]),
        ("deletion_queue_pkey", &["deletion_id", "child_collection", "field", "parent_id"]),
        ("idempotency_pkey", &["api_key", "key"]),
        ("audit_pkey", &["seq"]),
        ("webhook_endpoints_pkey", &["id"]),
        ("webhook_deliveries_pkey", &["id"]),
        ("webhook_deliveries_endpoint_id_event_seq_key", &["endpoint_id", "event_seq"]),
        ("holds_pkey", &["id"]),
        ("erasures_pkey", &["collection", "record_id"]),
        ("erasure_jobs_pkey", &["collection", "record_id", "step"]),
    ];
    parking_lot::RwLock::new(
        fixed
            .iter()
            .map(|(name, fields)| ((*name).to_string(), fields.iter().map(|f| (*f).to_string()).collect()))
            .collect(),
    )
});

/// Remembers which fields a constraint covers.
pub(crate) fn register_constraint(name: &str, fields: &[String]) {
    CONSTRAINT_FIELDS.write().insert(name.to_string(), fields.to_vec());
}

/// The fields a constraint covers (empty: not one of Tombstone's).
pub(crate) fn constraint_fields(name: &str) -> Vec<String> {
    CONSTRAINT_FIELDS.read().get(name).cloned().unwrap_or_default()
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(code) = e.code().cloned() else {
            // No SQLSTATE: the error happened on the client's side of the wire. A closed
            // connection or an I/O error (refused, reset, timed out) is the database
            // being unreachable; anything else (a conversion, a statement that returned
            // an unexpected number of rows) is a bug.
            let io = std::error::Error::source(&e).is_some_and(|cause| cause.is::<std::io::Error>());
            return if e.is_closed() || io {
                Self::StorageFailed { source: Arc::new(e) }
            } else {
                Self::Database { source: Arc::new(e) }
            };
        };
        if code == SqlState::UNIQUE_VIOLATION {
            let fields = e.as_db_error().and_then(|d| d.constraint()).map(constraint_fields).unwrap_or_default();
            return Self::Constraint { fields, source: Arc::new(e) };
        }
        if code == SqlState::T_R_SERIALIZATION_FAILURE
            || code == SqlState::T_R_DEADLOCK_DETECTED
            || code == SqlState::LOCK_NOT_AVAILABLE
            || code == SqlState::TOO_MANY_CONNECTIONS
            || code == SqlState::OUT_OF_MEMORY
        {
            return Self::Busy { source: Arc::new(e) };
        }
        if code == SqlState::DISK_FULL {
            return Self::StorageFull { source: Arc::new(e) };
        }
        // Class 08 (connection exception), the server shutting down or starting up
        // (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now), and I/O
        // or corruption on its side (58030, XX001, XX002): the server answers 503 and
        // recovers by itself once the database is back.
        let failed = code.code().starts_with("08")
            || code == SqlState::ADMIN_SHUTDOWN
            || code == SqlState::CRASH_SHUTDOWN
            || code == SqlState::CANNOT_CONNECT_NOW
            || code == SqlState::IO_ERROR
            || code == SqlState::DATA_CORRUPTED
            || code == SqlState::INDEX_CORRUPTED;
        if failed { Self::StorageFailed { source: Arc::new(e) } } else { Self::Database { source: Arc::new(e) } }
    }
}

/// Taking a connection from the pool: the backend's own errors as above; every slot busy
/// for the whole wait is `Busy`; a connection that could not be made in time, or a closed
/// pool, is the database being unreachable.
impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(TimeoutType::Wait) => Self::Busy { source: Arc::new(e) },
            PoolError::Timeout(_) | PoolError::Closed => Self::StorageFailed { source: Arc::new(e) },
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => Self::Database { source: Arc::new(e) },
        }
    }
}
