//! Authentication: `Authorization: Bearer <secret>` → the calling key, its tenant and
//! scopes. Keys are cached for at most 750 ms, so a revocation made anywhere (API,
//! CLI, another replica) takes effect within a second.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use moka::sync::Cache;
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::scope::{Permission, Scope, allows};
use tombstone_store::{Store, StoredKey};

use crate::app::AppState;
use crate::error::ApiError;
use crate::keys::{key_id_of, verify};
use crate::request_id;

/// How long a looked-up key is trusted without asking the store again. Below a second: a
/// lookup that read the key just before a revocation committed (on another replica) may
/// insert it just after, and the entry lives this long from its insert; the margin keeps
/// "revoked everywhere within one second" true with a slow read.
pub const KEY_CACHE_TTL: Duration = Duration::from_millis(750);

/// Cached key lookups (absent keys too, so unknown secrets cannot hammer the store).
#[derive(Clone)]
pub struct KeyCache {
    cache: Cache<String, Option<Arc<StoredKey>>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self { cache: Cache::builder().max_capacity(100_000).time_to_live(KEY_CACHE_TTL).build() }
    }
}

impl KeyCache {
    async fn get(&self, store: &Arc<dyn Store>, id: &str) -> Result<Option<Arc<StoredKey>>, ApiError> {
        if let Some(hit) = self.cache.get(id) {
            return Ok(hit);
        }
        let found = store.find_key(id).await?.map(Arc::new);
        self.cache.insert(id.to_string(), found.clone());
        Ok(found)
    }

    /// Forgets a key at once (after a revocation through this process).
    pub async fn forget(&self, id: &str) {
        self.cache.invalidate(id);
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<StoredKey>,
}

impl Caller {
    /// The key's tenant.
    #[must_use]
    pub fn tenant(&self) -> &str {
        &self.key.tenant
    }

    /// The key's scopes.
    #[must_use]
    pub fn scopes(&self) -> &[Scope] {
        &self.key.scopes
    }

    /// Succeeds when the key holds `permission` (for `collection`, if given).
    ///
    /// # Errors
    /// 403 naming the bare scope.
    pub fn require(&self, permission: Permission, collection: Option<&str>) -> Result<(), ApiError> {
        if allows(&self.key.scopes, permission, collection) { Ok(()) } else { Err(ApiError::Forbidden(permission)) }
    }

    /// Whether the key holds `permission` for `collection`.
    #[must_use]
    pub fn can(&self, permission: Permission, collection: Option<&str>) -> bool {
        allows(&self.key.scopes, permission, collection)
    }

    /// The actor that changes made by this request are attributed to.
    #[must_use]
    pub fn actor(&self) -> Actor {
        Actor { tenant: self.key.tenant.clone(), key_id: self.key.id.clone(), request_id: request_id::current() }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(ApiError::Unauthorized)?;
        let id = key_id_of(secret).ok_or(ApiError::Unauthorized)?;
        let key = state.keys.get(&state.store, id).await?.ok_or(ApiError::Unauthorized)?;
        if !verify(&key, secret) {
            return Err(ApiError::Unauthorized);
        }
        Ok(Self { key })
    }
}
