//! API keys: creation, the secret format, and verification.
//!
//! A secret is `tsk_<key id>_<43 random base64url chars>` (256 bits of randomness). The
//! key id inside lets the server find the stored key without scanning; only the
//! secret's SHA-256 is stored, and it is compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::scope::Scope;
use tombstone_domain::time::Timestamp;
use tombstone_store::{Store, StoreError, StoredKey};

/// A key just created, with its secret (shown once).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: StoredKey,
    pub secret: String,
}

/// The SHA-256 of a secret, hex.
#[must_use]
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The key id a secret names, if it has the right shape.
#[must_use]
pub fn key_id_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix("tsk_")?;
    // The id is `key_<hex>`; the random part may itself contain `_`.
    let (hex, random) = rest.strip_prefix("key_")?.split_once('_')?;
    let id = &rest[..4 + hex.len()];
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) && random.len() >= 32).then_some(id)
}

/// Whether `secret` is the secret of `key`, compared in constant time.
#[must_use]
pub fn verify(key: &StoredKey, secret: &str) -> bool {
    let mut stored = [0u8; 32];
    if hex::decode_to_slice(&key.secret_hash, &mut stored).is_err() {
        return false;
    }
    let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    presented.ct_eq(&stored).into()
}

/// The actor of key changes made from the command line.
#[must_use]
pub fn cli_actor(tenant: &str) -> Actor {
    Actor {
        tenant: tenant.to_string(),
        key_id: "cli".into(),
        request_id: format!("cli_{}", uuid::Uuid::now_v7().simple()),
    }
}

/// Creates and stores a key on behalf of the command line.
///
/// # Errors
/// The store failed.
pub async fn create_key(
    store: &dyn Store,
    tenant: &str,
    scopes: Vec<Scope>,
    name: Option<String>,
    now: Timestamp,
) -> Result<NewKey, StoreError> {
    create_key_by(store, &cli_actor(tenant), tenant, scopes, name, now).await
}

/// Creates and stores a key on behalf of `actor`.
///
/// # Errors
/// The store failed.
pub async fn create_key_by(
    store: &dyn Store,
    actor: &Actor,
    tenant: &str,
    scopes: Vec<Scope>,
    name: Option<String>,
    now: Timestamp,
) -> Result<NewKey, StoreError> {
    let id = format!("key_{}", uuid::Uuid::now_v7().simple());
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    let secret = format!("tsk_{id}_{}", URL_SAFE_NO_PAD.encode(random));
    let key =
        StoredKey { id, tenant: tenant.to_string(), name, scopes, secret_hash: hash_secret(&secret), created_at: now };
    store.create_key(key.clone(), actor).await?;
    Ok(NewKey { key, secret })
}

/// Whether a tenant name is acceptable: 1–64 of `[A-Za-z0-9_-]`.
#[must_use]
pub fn valid_tenant(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len()) && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_shape() {
        let secret = "tsk_key_0190abc_AAAAAAAAAAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(key_id_of(secret), Some("key_0190abc"));
        assert_eq!(key_id_of("tsk_key_1_short"), None);
        assert_eq!(key_id_of("Bearer x"), None);
        let key = StoredKey {
            id: "key_0190abc".into(),
            tenant: "t".into(),
            name: None,
            scopes: vec![],
            secret_hash: hash_secret(secret),
            created_at: Timestamp::from_micros(0),
        };
        assert!(verify(&key, secret));
        assert!(!verify(&key, &secret.replace('A', "B")));
    }
}
