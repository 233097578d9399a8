//! The rules of a record's life: preconditions, delete, restore and patch decisions.
//!
//! Each function looks at the current record and the request and answers what must
//! happen, as a value. The store executes the decision inside its transaction, so SQLite,
//! PostgreSQL, the API and the workers all follow the same rules.

use crate::config::{Collection, DeleteMode};
use crate::record::{ArchiveMark, DeletionMark, Record};
use crate::time::Timestamp;

/// The longest accepted `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// An `If-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: any current representation.
    Any,
    /// A list of entity tags; versions that could not be read never match.
    Tags(Vec<Option<i64>>),
}

impl IfMatch {
    /// Parses a header value: `*`, or a comma-separated list of `"v<n>"` (weak tags too).
    #[must_use]
    pub fn parse(header: &str) -> Self {
        if header.trim() == "*" {
            return Self::Any;
        }
        Self::Tags(header.split(',').map(|t| parse_etag(t.trim())).collect())
    }

    /// Whether the record at `version` satisfies the condition.
    #[must_use]
    pub fn matches(&self, version: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.contains(&Some(version)),
        }
    }
}

/// Reads `"v7"` or `W/"v7"` as version 7.
#[must_use]
pub fn parse_etag(tag: &str) -> Option<i64> {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix("\"v")?.strip_suffix('"')?.parse().ok()
}

/// Whether an `If-None-Match` header matches the current version (→ 304).
#[must_use]
pub fn if_none_match(header: &str, version: i64) -> bool {
    header.trim() == "*" || header.split(',').any(|t| parse_etag(t.trim()) == Some(version))
}

/// Checks a `reason`.
///
/// # Errors
/// Too long.
pub fn check_reason(reason: Option<&str>) -> Result<(), String> {
    match reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => {
            Err(format!("reason is longer than {MAX_REASON_CHARS} characters"))
        }
        Some(r) if r.contains('\0') => Err(format!("reason {}", crate::record::NUL_REFUSED)),
        _ => Ok(()),
    }
}

/// Who asks for a change, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub tenant: String,
    /// The key id.
    pub key_id: String,
    pub request_id: String,
}

/// A DELETE request as the rules see it.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub if_match: Option<IfMatch>,
    pub reason: Option<String>,
    /// The id of the deletion operation to create if the record is deleted now.
    pub deletion_id: String,
}

/// What a DELETE does to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteDecision {
    /// Already soft-deleted: answer 204 with the existing deletion, change nothing.
    AlreadyDeleted { deletion_id: String },
    /// `If-Match` is stale for an active record.
    PreconditionFailed { current: i64 },
    /// Mark the record deleted with this mark, at this new version.
    SoftDelete { mark: DeletionMark, version: i64 },
    /// Remove the row now (hard-delete collection). The mark is what its audit entry and
    /// event name: purged at once.
    HardDelete { mark: DeletionMark },
    /// A hard delete is a purge, and a record under a legal hold is never purged: 409.
    LegalHold,
}

/// Decides a DELETE.
#[must_use]
pub fn decide_delete(
    collection: &Collection,
    record: &Record,
    request: &DeleteRequest,
    actor: &Actor,
    now: Timestamp,
) -> DeleteDecision {
    if let Some(mark) = &record.deletion {
        return DeleteDecision::AlreadyDeleted { deletion_id: mark.deletion_id.clone() };
    }
    if let Some(cond) = &request.if_match
        && !cond.matches(record.version)
    {
        return DeleteDecision::PreconditionFailed { current: record.version };
    }
    let mark = |purge_at| DeletionMark {
        deleted_at: now,
        deleted_by: actor.key_id.clone(),
        reason: request.reason.clone(),
        deletion_id: request.deletion_id.clone(),
        purge_at,
    };
    match collection.delete {
        DeleteMode::Hard if record.legal_hold => DeleteDecision::LegalHold,
        DeleteMode::Hard => DeleteDecision::HardDelete { mark: mark(now) },
        DeleteMode::Soft => DeleteDecision::SoftDelete {
            mark: mark(now.saturating_add(collection.retention)),
            version: record.version + 1,
        },
    }
}

/// What a `:restore` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreDecision {
    /// Active already: answer 200 with it, change nothing.
    AlreadyActive,
    /// The recovery window has elapsed: 404, even before the purge ran.
    WindowElapsed,
    /// Stale `If-Match` on a deleted record.
    PreconditionFailed { current: i64 },
    /// Clear the deletion mark at this new version (after the uniqueness check).
    Restore { version: i64 },
}

/// Decides a `:restore`.
#[must_use]
pub fn decide_restore(record: &Record, if_match: Option<&IfMatch>, now: Timestamp) -> RestoreDecision {
    let Some(mark) = &record.deletion else {
        return RestoreDecision::AlreadyActive;
    };
    if now >= mark.purge_at {
        return RestoreDecision::WindowElapsed;
    }
    if let Some(cond) = if_match
        && !cond.matches(record.version)
    {
        return RestoreDecision::PreconditionFailed { current: record.version };
    }
    RestoreDecision::Restore { version: record.version + 1 }
}

/// What a PATCH may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchDecision {
    /// Deleted records cannot be patched: 404.
    NotFound,
    /// Archived records are read-only: 409 `archived` (unarchive first).
    Archived,
    PreconditionFailed {
        current: i64,
    },
    Apply {
        version: i64,
    },
}

/// Decides a PATCH.
#[must_use]
pub fn decide_patch(record: &Record, if_match: Option<&IfMatch>) -> PatchDecision {
    if record.is_deleted() {
        return PatchDecision::NotFound;
    }
    if let Some(cond) = if_match
        && !cond.matches(record.version)
    {
        return PatchDecision::PreconditionFailed { current: record.version };
    }
    if record.is_archived() {
        return PatchDecision::Archived;
    }
    PatchDecision::Apply { version: record.version + 1 }
}

/// An `:archive` (with its reason) or an `:unarchive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveRequest {
    Archive { reason: Option<String> },
    Unarchive,
}

/// What an `:archive` or `:unarchive` does (§17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveDecision {
    /// Deleted records take no writes: 404.
    NotFound,
    /// The record is already as asked: answer 200 with it, change nothing (no version,
    /// audit entry or event), whatever its `If-Match` — like a repeated DELETE.
    Unchanged,
    /// Stale `If-Match`.
    PreconditionFailed { current: i64 },
    /// Set (or clear) the archive mark at this new version.
    Apply { archive: Option<ArchiveMark>, version: i64 },
}

/// Decides an `:archive` or `:unarchive` by `actor_id` (a key id, or `system` for the
/// purge worker's `archive_after`).
#[must_use]
pub fn decide_archive(
    record: &Record,
    request: &ArchiveRequest,
    if_match: Option<&IfMatch>,
    actor_id: &str,
    now: Timestamp,
) -> ArchiveDecision {
    if record.is_deleted() {
        return ArchiveDecision::NotFound;
    }
    let wanted = matches!(request, ArchiveRequest::Archive { .. });
    if record.is_archived() == wanted {
        return ArchiveDecision::Unchanged;
    }
    if let Some(cond) = if_match
        && !cond.matches(record.version)
    {
        return ArchiveDecision::PreconditionFailed { current: record.version };
    }
    let archive = match request {
        ArchiveRequest::Archive { reason } => {
            Some(ArchiveMark { archived_at: now, archived_by: actor_id.to_string(), reason: reason.clone() })
        }
        ArchiveRequest::Unarchive => None,
    };
    ArchiveDecision::Apply { archive, version: record.version + 1 }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::Values;

    fn record(deleted: Option<DeletionMark>) -> Record {
        Record {
            tenant: "t".into(),
            collection: "c".into(),
            id: "r".into(),
            version: 3,
            created_at: Timestamp::from_micros(0),
            updated_at: Timestamp::from_micros(0),
            deletion: deleted,
            archive: None,
            legal_hold: false,
            values: Values::new(),
        }
    }

    fn collection(delete: DeleteMode) -> Collection {
        Collection {
            name: "c".into(),
            retention: Duration::from_secs(10),
            delete,
            require_if_match: false,
            fields: Default::default(),
            unique: vec![],
            archive_after: None,
        }
    }

    fn actor() -> Actor {
        Actor { tenant: "t".into(), key_id: "key_1".into(), request_id: "req".into() }
    }

    #[test]
    fn etags() {
        assert!(IfMatch::parse("\"v3\"").matches(3));
        assert!(IfMatch::parse("W/\"v3\", \"v4\"").matches(4));
        assert!(!IfMatch::parse("\"v3\"").matches(4));
        assert!(!IfMatch::parse("garbage").matches(3));
        assert!(IfMatch::parse("*").matches(99));
        assert!(if_none_match("\"v3\"", 3));
        assert!(!if_none_match("\"v2\"", 3));
    }

    #[test]
    fn delete_rules() {
        let now = Timestamp::from_micros(1_000_000);
        let req = DeleteRequest {
            if_match: Some(IfMatch::parse("\"v2\"")),
            reason: Some("dup".into()),
            deletion_id: "del_1".into(),
        };
        let active = record(None);
        assert_eq!(
            decide_delete(&collection(DeleteMode::Soft), &active, &req, &actor(), now),
            DeleteDecision::PreconditionFailed { current: 3 }
        );
        let req_ok = DeleteRequest { if_match: None, ..req.clone() };
        match decide_delete(&collection(DeleteMode::Soft), &active, &req_ok, &actor(), now) {
            DeleteDecision::SoftDelete { mark, version } => {
                assert_eq!(version, 4);
                assert_eq!(mark.purge_at, Timestamp::from_micros(11_000_000));
                assert_eq!(mark.deleted_by, "key_1");
            }
            other => panic!("{other:?}"),
        }
        match decide_delete(&collection(DeleteMode::Hard), &active, &req_ok, &actor(), now) {
            DeleteDecision::HardDelete { mark } => assert_eq!(mark.purge_at, now),
            other => panic!("{other:?}"),
        }
        let held = Record { legal_hold: true, ..active.clone() };
        assert_eq!(
            decide_delete(&collection(DeleteMode::Hard), &held, &req_ok, &actor(), now),
            DeleteDecision::LegalHold
        );
        // A hold does not stop a soft delete: the record waits in the trash, never purged.
        assert!(matches!(
            decide_delete(&collection(DeleteMode::Soft), &held, &req_ok, &actor(), now),
            DeleteDecision::SoftDelete { .. }
        ));
        let mark = DeletionMark {
            deleted_at: now,
            deleted_by: "key_1".into(),
            reason: None,
            deletion_id: "del_0".into(),
            purge_at: Timestamp::from_micros(5_000_000),
        };
        // A repeated delete succeeds whatever its If-Match.
        assert_eq!(
            decide_delete(&collection(DeleteMode::Soft), &record(Some(mark.clone())), &req, &actor(), now),
            DeleteDecision::AlreadyDeleted { deletion_id: "del_0".into() }
        );
        let deleted = record(Some(mark));
        assert_eq!(decide_restore(&deleted, None, now), RestoreDecision::Restore { version: 4 });
        assert_eq!(decide_restore(&deleted, None, Timestamp::from_micros(5_000_000)), RestoreDecision::WindowElapsed);
        assert_eq!(decide_restore(&active, None, now), RestoreDecision::AlreadyActive);
        assert_eq!(decide_patch(&deleted, None), PatchDecision::NotFound);
        assert!(check_reason(Some(&"x".repeat(500))).is_ok());
        assert_eq!(decide_archive(&deleted, &ArchiveRequest::Unarchive, None, "k", now), ArchiveDecision::NotFound);
        assert!(check_reason(Some(&"x".repeat(501))).is_err());
    }

    #[test]
    fn archive_rules() {
        let now = Timestamp::from_micros(1_000_000);
        let active = record(None);
        let archive = ArchiveRequest::Archive { reason: Some("done".into()) };
        let ArchiveDecision::Apply { archive: Some(mark), version } =
            decide_archive(&active, &archive, None, "key_1", now)
        else {
            panic!("an active record is archived");
        };
        assert_eq!((version, mark.archived_by.as_str(), mark.reason.as_deref()), (4, "key_1", Some("done")));
        assert_eq!(
            decide_archive(&active, &archive, Some(&IfMatch::parse("\"v2\"")), "key_1", now),
            ArchiveDecision::PreconditionFailed { current: 3 }
        );
        assert_eq!(decide_archive(&active, &ArchiveRequest::Unarchive, None, "k", now), ArchiveDecision::Unchanged);
        let archived = Record { archive: Some(mark), ..active };
        // Idempotent whatever the If-Match, as a repeated DELETE.
        assert_eq!(
            decide_archive(&archived, &archive, Some(&IfMatch::parse("\"v1\"")), "k", now),
            ArchiveDecision::Unchanged
        );
        assert_eq!(
            decide_archive(&archived, &ArchiveRequest::Unarchive, None, "k", now),
            ArchiveDecision::Apply { archive: None, version: 4 }
        );
        assert_eq!(decide_patch(&archived, None), PatchDecision::Archived);
        assert_eq!(
            decide_patch(&archived, Some(&IfMatch::parse("\"v1\""))),
            PatchDecision::PreconditionFailed { current: 3 }
        );
    }
}
