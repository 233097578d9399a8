//! The OpenAPI document served at `/openapi.json`.

use serde_json::{Value, json};
use tombstone_domain::config::Schema;

/// The document for this schema.
#[must_use]
pub fn document(schema: &Schema) -> Value {
    json!({"openapi": "3.1.0", "info": {"title": "Tombstone", "version": env!("CARGO_PKG_VERSION")}, "x-collections": schema.collections.keys().collect::<Vec<_>>()})
}
