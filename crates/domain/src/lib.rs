//! Tombstone's domain: the configuration model, record validation, queries and the
//! lifecycle rules every deletion path shares. Nothing here performs I/O, so the rules
//! are the same for SQLite, PostgreSQL, the HTTP API and the workers.

pub mod audit;
pub mod config;
pub mod deletion;
pub mod events;
pub mod files;
pub mod fuzzing;
pub mod history;
pub mod id;
pub mod lifecycle;
pub mod query;
pub mod ready;
pub mod record;
pub mod scope;
pub mod time;
pub mod webhook;

pub use config::{Collection, Config, DeleteMode, Field, FieldType, Schema};
pub use record::{FieldValue, Record, Values};
pub use time::{Clock, SystemClock, Timestamp};
