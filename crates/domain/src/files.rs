//! Files of `file` fields (§15): the metadata a record holds, and where the bytes are kept.
//!
//! The bytes live beside the database, in an object store, content-addressed per tenant:
//! `<tenant>/<sha256>`. Every version of a record keeps the metadata of the file it had, so
//! a version, a revert and a restore find the same bytes by the same key; two records of a
//! tenant with the same bytes share one object. An object is removed only when nothing
//! references it any more — a record's references go when its row and versions go (purge,
//! erasure, a hard delete) — by a durable job, never "after commit, best effort".

use serde_json::{Value, json};

use crate::time::Timestamp;

/// What a `file` field holds: `{"content_type","size","sha256","uploaded_at"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub content_type: String,
    pub size: u64,
    /// Lower-case hex of the SHA-256 of the bytes.
    pub sha256: String,
    pub uploaded_at: Timestamp,
}

impl FileMeta {
    /// The field's JSON value.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "uploaded_at": self.uploaded_at.to_rfc3339(),
        })
    }

    /// Reads a stored value back; `None` when it is not file metadata.
    #[must_use]
    pub fn from_json(value: &Value) -> Option<Self> {
        let sha256 = value.get("sha256")?.as_str()?;
        if !is_sha256_hex(sha256) {
            return None;
        }
        Some(Self {
            content_type: value.get("content_type")?.as_str()?.to_string(),
            size: value.get("size")?.as_u64()?,
            sha256: sha256.to_string(),
            uploaded_at: Timestamp::parse_rfc3339(value.get("uploaded_at")?.as_str()?).ok()?,
        })
    }

    /// The `ETag` of the bytes: `"sha256:<hex>"`.
    #[must_use]
    pub fn etag(&self) -> String {
        format!("\"sha256:{}\"", self.sha256)
    }
}

/// Whether `text` is 64 lower-case hex digits.
#[must_use]
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_junk_is_not_metadata() {
        let meta = FileMeta {
            content_type: "image/png".into(),
            size: 42,
            sha256: "ab".repeat(32),
            uploaded_at: Timestamp::from_micros(1_700_000_000_000_000),
        };
        assert_eq!(FileMeta::from_json(&meta.to_json()), Some(meta.clone()));
        assert_eq!(meta.etag(), format!("\"sha256:{}\"", "ab".repeat(32)));
        for junk in [json!(null), json!("x"), json!({"sha256": "AB".repeat(32)}), json!({"sha256": "ab"})] {
            assert_eq!(FileMeta::from_json(&junk), None, "{junk}");
        }
        let mut bad = meta.to_json();
        bad["size"] = json!(-1);
        assert_eq!(FileMeta::from_json(&bad), None);
    }
}
