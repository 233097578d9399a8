//! The audit log's entries and their hash chain.
//!
//! Each entry's `hash` is SHA-256 over the previous entry's hash and the entry's
//! canonical form, so editing, removing or reordering any entry breaks every hash after
//! it. The canonical form is the compact JSON object of these members in this order,
//! with absent values as `null`:
//!
//! `seq, at, tenant, actor, action, collection, record_id, version, deletion_id, reason, request_id`
//!
//! followed by `hold_id` and `case` only when the entry has them (holds and releases):
//! entries written before these members existed hash exactly as they did, so old chains
//! still verify, while a hold's id and case are covered like every other member.
//!
//! `at` is RFC 3339 UTC with microseconds. The hashed bytes are
//! `prev_hash` (64 hex digits; 64 zeros for the first entry) + `"\n"` + canonical form,
//! and `hash` is the lower-case hex digest. Values of `pii` fields never enter an entry.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::time::Timestamp;

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Create,
    Update,
    Delete,
    CascadeDelete,
    Restore,
    Purge,
    Erase,
    Hold,
    Release,
    Archive,
    Unarchive,
    /// A record's declared fields set back to those of an earlier version (§14).
    Revert,
    KeyCreate,
    KeyRevoke,
}

impl AuditAction {
    pub const ALL: [Self; 14] = [
        Self::Create,
        Self::Update,
        Self::Delete,
        Self::CascadeDelete,
        Self::Restore,
        Self::Purge,
        Self::Erase,
        Self::Hold,
        Self::Release,
        Self::Archive,
        Self::Unarchive,
        Self::Revert,
        Self::KeyCreate,
        Self::KeyRevoke,
    ];

    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::CascadeDelete => "cascade_delete",
            Self::Restore => "restore",
            Self::Purge => "purge",
            Self::Erase => "erase",
            Self::Hold => "hold",
            Self::Release => "release",
            Self::Archive => "archive",
            Self::Unarchive => "unarchive",
            Self::Revert => "revert",
            Self::KeyCreate => "key_create",
            Self::KeyRevoke => "key_revoke",
        }
    }

    /// Parses a stored or requested name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// An entry to append (the store assigns `seq` and the hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub at: Timestamp,
    pub tenant: String,
    pub actor: String,
    pub action: AuditAction,
    pub collection: Option<String>,
    pub record_id: Option<String>,
    pub version: Option<i64>,
    pub deletion_id: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    /// The hold a `hold` or `release` entry is about.
    pub hold_id: Option<String>,
    /// The hold's case, as given.
    pub case: Option<String>,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: Timestamp,
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub collection: Option<String>,
    pub record_id: Option<String>,
    pub version: Option<i64>,
    pub deletion_id: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    /// Present on `hold` and `release` entries only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    /// Present on `hold` and `release` entries of a hold that named a case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The members of the canonical form, in their order (serde keeps declaration order).
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    at: Timestamp,
    tenant: &'a str,
    actor: &'a str,
    action: &'a str,
    collection: Option<&'a str>,
    record_id: Option<&'a str>,
    version: Option<i64>,
    deletion_id: Option<&'a str>,
    reason: Option<&'a str>,
    request_id: Option<&'a str>,
    // Left out when absent, so entries from before these members hash as they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    case: Option<&'a str>,
}

impl<'a> Canonical<'a> {
    fn of(entry: &'a AuditEntry) -> Self {
        Self {
            seq: entry.seq,
            at: entry.at,
            tenant: &entry.tenant,
            actor: &entry.actor,
            action: &entry.action,
            collection: entry.collection.as_deref(),
            record_id: entry.record_id.as_deref(),
            version: entry.version,
            deletion_id: entry.deletion_id.as_deref(),
            reason: entry.reason.as_deref(),
            request_id: entry.request_id.as_deref(),
            hold_id: entry.hold_id.as_deref(),
            case: entry.case.as_deref(),
        }
    }
}

/// The canonical form of an entry (see the module docs).
#[must_use]
pub fn canonical_form(entry: &AuditEntry) -> String {
    serde_json::to_string(&Canonical::of(entry)).unwrap_or_default()
}

/// Feeds serialized bytes straight into the digest (no intermediate string).
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The hash an entry must carry, given its `prev_hash`.
#[must_use]
pub fn entry_hash(prev_hash: &str, entry: &AuditEntry) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    // Serializing plain strings and integers into a writer that cannot fail cannot fail.
    let _ = serde_json::to_writer(HashWriter(&mut hasher), &Canonical::of(entry));
    hex::encode(hasher.finalize())
}

/// Builds the stored form of a new entry at `seq` after `prev_hash`.
#[must_use]
pub fn seal(entry: NewAuditEntry, seq: i64, prev_hash: &str) -> AuditEntry {
    let mut sealed = AuditEntry {
        seq,
        at: entry.at,
        tenant: entry.tenant,
        actor: entry.actor,
        action: entry.action.as_str().to_string(),
        collection: entry.collection,
        record_id: entry.record_id,
        version: entry.version,
        deletion_id: entry.deletion_id,
        reason: entry.reason,
        request_id: entry.request_id,
        hold_id: entry.hold_id,
        case: entry.case,
        prev_hash: prev_hash.to_string(),
        hash: String::new(),
    };
    sealed.hash = entry_hash(prev_hash, &sealed);
    sealed
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {seq}: prev_hash does not match the hash of the entry before it (removed or reordered entries)")]
    BrokenLink { seq: i64 },
    #[error("entry {seq}: hash does not match its contents (edited entry)")]
    BadHash { seq: i64 },
    #[error("entry {seq}: sequence goes backwards or repeats (reordered entries)")]
    BadOrder { seq: i64 },
    #[error("the log ends at entry {last} but its recorded head is entry {head} (truncated log)")]
    Truncated { last: i64, head: i64 },
}

/// Checks entries one at a time, in storage order.
#[derive(Debug)]
pub struct ChainVerifier {
    prev_hash: String,
    last_seq: i64,
    count: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { prev_hash: GENESIS_HASH.to_string(), last_seq: 0, count: 0 }
    }
}

impl ChainVerifier {
    /// Checks the next entry.
    ///
    /// # Errors
    /// The first problem, naming the entry.
    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), ChainError> {
        if entry.seq <= self.last_seq {
            return Err(ChainError::BadOrder { seq: entry.seq });
        }
        if entry.prev_hash != self.prev_hash {
            return Err(ChainError::BrokenLink { seq: entry.seq });
        }
        if entry_hash(&entry.prev_hash, entry) != entry.hash {
            return Err(ChainError::BadHash { seq: entry.seq });
        }
        self.prev_hash.clone_from(&entry.hash);
        self.last_seq = entry.seq;
        self.count += 1;
        Ok(())
    }

    /// Finishes: the last entry must be the recorded head (`None`: no head recorded).
    ///
    /// # Errors
    /// The log ends before its head.
    pub fn finish(self, head: Option<(i64, &str)>) -> Result<u64, ChainError> {
        if let Some((head_seq, head_hash)) = head
            && (head_seq != self.last_seq || head_hash != self.prev_hash)
        {
            return Err(ChainError::Truncated { last: self.last_seq, head: head_seq });
        }
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> NewAuditEntry {
        NewAuditEntry {
            at: Timestamp::from_micros(n * 1000),
            tenant: "t".into(),
            actor: "key_1".into(),
            action: AuditAction::Delete,
            collection: Some("products".into()),
            record_id: Some(format!("r{n}")),
            version: Some(2),
            deletion_id: Some("del_1".into()),
            reason: Some("dup".into()),
            request_id: Some("req_1".into()),
            hold_id: None,
            case: None,
        }
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|i| {
                let e = seal(entry(i), i, &prev);
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    fn verify(entries: &[AuditEntry], head: Option<(i64, &str)>) -> Result<u64, ChainError> {
        let mut v = ChainVerifier::default();
        for e in entries {
            v.push(e)?;
        }
        v.finish(head)
    }

    #[test]
    fn canonical_form_is_fixed() {
        let e = seal(entry(1), 1, GENESIS_HASH);
        assert_eq!(
            canonical_form(&e),
            r#"{"seq":1,"at":"1970-01-01T00:00:00.001000Z","tenant":"t","actor":"key_1","action":"delete","collection":"products","record_id":"r1","version":2,"deletion_id":"del_1","reason":"dup","request_id":"req_1"}"#
        );
        // The digest of that form after the genesis hash, computed independently.
        assert_eq!(e.hash.len(), 64);
        assert_eq!(e.hash, entry_hash(GENESIS_HASH, &e));
    }

    /// The form as first defined: a JSON object built member by member.
    fn reference_form(e: &AuditEntry) -> String {
        serde_json::json!({
            "seq": e.seq, "at": e.at.to_rfc3339(), "tenant": e.tenant, "actor": e.actor,
            "action": e.action, "collection": e.collection, "record_id": e.record_id,
            "version": e.version, "deletion_id": e.deletion_id, "reason": e.reason,
            "request_id": e.request_id,
        })
        .to_string()
    }

    proptest::proptest! {
        #[test]
        fn canonical_form_matches_its_definition(
            seq in proptest::prelude::any::<i64>(),
            at in -62_000_000_000_000_000i64..250_000_000_000_000_000,
            text in proptest::option::of(".*"),
            tenant in ".*",
            version in proptest::option::of(proptest::prelude::any::<i64>()),
        ) {
            let e = AuditEntry {
                seq,
                at: Timestamp::from_micros(at),
                tenant: tenant.clone(),
                actor: tenant,
                action: "purge".into(),
                collection: text.clone(),
                record_id: text.clone(),
                version,
                deletion_id: None,
                reason: text.clone(),
                request_id: text,
                hold_id: None,
                case: None,
                prev_hash: GENESIS_HASH.into(),
                hash: String::new(),
            };
            proptest::prop_assert_eq!(canonical_form(&e), reference_form(&e));
            let mut hasher = Sha256::new();
            hasher.update(GENESIS_HASH.as_bytes());
            hasher.update(b"\n");
            hasher.update(reference_form(&e).as_bytes());
            proptest::prop_assert_eq!(entry_hash(GENESIS_HASH, &e), hex::encode(hasher.finalize()));
        }
    }

    #[test]
    fn hold_members_are_hashed_only_when_present() {
        // An entry without them keeps the form (and so the hash) it had before they existed.
        let plain = seal(entry(1), 1, GENESIS_HASH);
        assert_eq!(canonical_form(&plain), reference_form(&plain));
        let held = seal(
            NewAuditEntry {
                action: AuditAction::Hold,
                reason: Some("as given".into()),
                hold_id: Some("hold_1".into()),
                case: Some("C-7".into()),
                ..entry(2)
            },
            2,
            &plain.hash,
        );
        assert!(
            canonical_form(&held)
                .ends_with(r#""reason":"as given","request_id":"req_1","hold_id":"hold_1","case":"C-7"}"#),
            "{}",
            canonical_form(&held)
        );
        let chain = [plain, held];
        assert_eq!(verify(&chain, Some((2, chain[1].hash.as_str()))), Ok(2));
        for edit in [
            |e: &mut AuditEntry| e.case = Some("C-8".into()),
            |e: &mut AuditEntry| e.case = None,
            |e: &mut AuditEntry| e.hold_id = Some("hold_2".into()),
        ] {
            let mut edited = chain.clone();
            edit(&mut edited[1]);
            assert_eq!(verify(&edited, None), Err(ChainError::BadHash { seq: 2 }));
        }
    }

    #[test]
    fn detects_tampering() {
        let good = chain(5);
        let head = (5, good[4].hash.as_str());
        assert_eq!(verify(&good, Some(head)), Ok(5));

        let mut edited = good.clone();
        edited[2].reason = Some("nothing to see".into());
        assert_eq!(verify(&edited, Some(head)), Err(ChainError::BadHash { seq: 3 }));

        let mut removed = good.clone();
        removed.remove(1);
        assert_eq!(verify(&removed, Some(head)), Err(ChainError::BrokenLink { seq: 3 }));

        let mut reordered = good.clone();
        reordered.swap(1, 2);
        assert_eq!(verify(&reordered, Some(head)), Err(ChainError::BrokenLink { seq: 3 }));
        let mut repeated = good.clone();
        repeated[2].seq = 2;
        assert_eq!(verify(&repeated, Some(head)), Err(ChainError::BadOrder { seq: 2 }));

        let truncated = &good[..3];
        assert_eq!(verify(truncated, Some(head)), Err(ChainError::Truncated { last: 3, head: 5 }));
    }
}
