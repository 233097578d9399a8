//! Record, deletion and key identifiers.

use uuid::Uuid;

/// Whether a client-supplied record id is acceptable: 1–128 of `[A-Za-z0-9_-]`.
#[must_use]
pub fn is_valid_record_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A new record id: a UUIDv7, so that ids sort in creation order.
#[must_use]
pub fn new_record_id() -> String {
    Uuid::now_v7().to_string()
}

/// A new deletion operation id (`del_<uuidv7 simple>`).
#[must_use]
pub fn new_deletion_id() -> String {
    format!("del_{}", Uuid::now_v7().simple())
}

/// A new hold id.
#[must_use]
pub fn new_hold_id() -> String {
    format!("hold_{}", Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids() {
        assert!(is_valid_record_id("abc-DEF_123"));
        assert!(is_valid_record_id(&new_record_id()));
        assert!(!is_valid_record_id(""));
        assert!(!is_valid_record_id("a b"));
        assert!(!is_valid_record_id("a:restore"));
        assert!(!is_valid_record_id(&"x".repeat(129)));
        assert!(is_valid_record_id(&"x".repeat(128)));
    }

    #[test]
    fn generated_ids_sort_by_creation() {
        let a = new_record_id();
        let b = new_record_id();
        assert!(a < b);
    }
}
