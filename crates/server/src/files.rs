//! The files store (§15): the bytes of `file` fields, in a local directory or an
//! S3-compatible bucket, through `object_store`; the files worker that removes objects
//! nothing references any more; and `tombstone reconcile`'s comparison of the store with
//! the database.
//!
//! Layout under the configured prefix:
//! - `objects/<tenant>/<sha256>`: the bytes, content-addressed per tenant (every version of
//!   every record of the tenant with these bytes points at this one object);
//! - `staging/<uuid>`: an upload in flight, renamed into `objects/` once its hash is known.
//!
//! What the database keeps beside (references, pins, due checks) is
//! `tombstone_store::files`.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tombstone_domain::config::FilesConfig;
use tombstone_domain::time::{Clock, Timestamp};
use tombstone_store::{DueObject, FileRef, Store};

use crate::lease::WorkerLease;

/// An upload's part size: bodies up to this are stored with one request; larger ones are
/// streamed as a multipart upload of parts this size (S3's minimum is 5 MiB).
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts of one upload in flight at once: with [`PART_BYTES`], what an upload can hold in
/// memory whatever its size.
const PARTS_IN_FLIGHT: usize = 2;
/// How long an upload's bytes are kept before its record must reference them.
pub const PIN: Duration = Duration::from_secs(3600);
/// Staged uploads older than this are leftovers of a crash (`tombstone reconcile`).
pub const STALE_STAGING: Duration = Duration::from_secs(3600);
/// The name of the files worker's lease.
pub const FILES_LEASE: &str = "files";
/// Objects the worker decides per batch.
const BATCH: u32 = 100;

/// Where the bytes are.
#[derive(Debug)]
pub struct Files {
    store: Arc<dyn ObjectStore>,
    objects: Path,
    staging: Path,
    /// `file:///…` or `s3://bucket/prefix`, for logs and errors.
    pub location: String,
}

/// An upload stored under `staging/`, with what its bytes are.
#[derive(Debug, Clone)]
pub struct Staged {
    path: Path,
    /// The upload's id (its staging name, and its pin's).
    pub upload_id: String,
    pub sha256: String,
    pub size: u64,
}

/// Why an upload did not complete (nothing stays behind in either case).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body failed: {0}")]
    Body(#[source] axum::Error),
    #[error("the files store failed: {0}")]
    Store(#[from] object_store::Error),
}

/// Why staged bytes could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("the same bytes are being removed right now; retry shortly")]
    Busy,
    #[error(transparent)]
    Database(tombstone_store::StoreError),
    #[error("the files store failed: {0}")]
    Files(object_store::Error),
}

/// How often [`Files::keep`] tries to pin bytes the files worker is removing.
const PIN_ATTEMPTS: u32 = 50;

/// A requested byte range, resolved against the file's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole file (no `Range`, or one this server ignores: several ranges, bad syntax).
    Whole,
    /// `start..end` (end exclusive) of the file.
    Part(Range<u64>),
    /// Outside the file: 416.
    Unsatisfiable,
}

/// Resolves a `Range` header (RFC 9110 §14: one `bytes=` range; a header this server does
/// not take is ignored, as the RFC allows) for a file of `size` bytes.
#[must_use]
pub fn byte_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return ByteRange::Whole };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return ByteRange::Whole };
    let number =
        |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten();
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part(size.saturating_sub(n)..size),
            None => ByteRange::Whole,
        },
        (start, "") => match number(start) {
            Some(s) if s < size => ByteRange::Part(s..size),
            Some(_) => ByteRange::Unsatisfiable,
            None => ByteRange::Whole,
        },
        (start, end) => match (number(start), number(end)) {
            (Some(s), Some(e)) if s <= e && s < size => ByteRange::Part(s..e.min(size - 1) + 1),
            (Some(s), Some(e)) if s <= e => ByteRange::Unsatisfiable,
            _ => ByteRange::Whole,
        },
    }
}

impl Files {
    /// The files store of a config: a local directory (created when missing) or a bucket.
    ///
    /// # Errors
    /// The directory cannot be created, or the S3 settings are incomplete.
    pub fn open(config: &FilesConfig) -> anyhow::Result<Self> {
        match config {
            FilesConfig::Local { path } => {
                std::fs::create_dir_all(path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(path)?;
                Ok(Self::new(Arc::new(store), "", format!("file://{}", path.display())))
            }
            FilesConfig::S3 { bucket, prefix, endpoint, region, access_key_id, secret_access_key } => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = endpoint {
                    // An explicit endpoint is an S3-compatible server (MinIO, Ceph, …):
                    // path-style requests, plain HTTP allowed when the URL says so.
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let store = builder.build()?;
                Ok(Self::new(Arc::new(store), prefix, format!("s3://{bucket}/{prefix}")))
            }
        }
    }

    /// A files store over any object store, under `prefix`.
    #[must_use]
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, location: String) -> Self {
        let base: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
        let under = |part: &str| Path::from_iter(base.iter().copied().chain(std::iter::once(part)));
        Self { store, objects: under("objects"), staging: under("staging"), location }
    }

    /// Where the bytes `sha256` of `tenant` are.
    #[must_use]
    pub fn object_path(&self, tenant: &str, sha256: &str) -> Path {
        self.objects.child(tenant).child(sha256)
    }

    /// Streams a request body into `staging/`, hashing it on the way, refusing it past
    /// `max_bytes`. Memory stays bounded (about [`PARTS_IN_FLIGHT`] + 1 parts) whatever the
    /// size. On any error nothing is left stored.
    ///
    /// # Errors
    /// [`UploadError`].
    pub async fn stage<S>(&self, mut body: S, max_bytes: u64) -> Result<Staged, UploadError>
    where
        S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    {
        let upload_id = uuid::Uuid::now_v7().to_string();
        let path = self.staging.child(upload_id.as_str());
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0usize;
        let mut writer: Option<WriteMultipart> = None;
        let outcome: Result<(), UploadError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(UploadError::Body)?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(UploadError::TooLarge(max_bytes));
                }
                hasher.update(&chunk);
                match writer.as_mut() {
                    Some(w) => {
                        w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                        w.write(&chunk);
                    }
                    None => {
                        head_len += chunk.len();
                        head.push(chunk);
                        if head_len >= PART_BYTES {
                            let upload = self.store.put_multipart(&path).await?;
                            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                            for part in head.drain(..) {
                                w.write(&part);
                            }
                            writer = Some(w);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match (outcome, writer) {
            (Ok(()), Some(w)) => {
                w.finish().await?;
            }
            (Ok(()), None) => {
                self.store.put(&path, PutPayload::from_iter(head)).await?;
            }
            (Err(e), Some(w)) => {
                let _ = w.abort().await;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        }
        Ok(Staged { path, upload_id, sha256: hex::encode(hasher.finalize()), size })
    }

    /// [`Files::stage`] of bytes already in memory (the demo's seed files).
    ///
    /// # Errors
    /// [`UploadError`].
    pub async fn stage_bytes(&self, bytes: Bytes, max_bytes: u64) -> Result<Staged, UploadError> {
        self.stage(futures_util::stream::iter([Ok(bytes)]), max_bytes).await
    }

    /// Keeps a staged upload as the object of `tenant`: pins it in the database (so the
    /// files worker leaves it while no record references it yet, and removes it after the
    /// pin if none ever does), then moves it into place. Bytes the worker is removing at
    /// that very moment are waited for (up to five seconds) and stored again. On an error
    /// the staged copy is dropped.
    ///
    /// # Errors
    /// [`KeepError`].
    pub async fn keep(
        &self,
        store: &dyn Store,
        tenant: &str,
        staged: &Staged,
        now: Timestamp,
    ) -> Result<(), KeepError> {
        let until = now.saturating_add(PIN);
        let mut pinned = false;
        for _ in 0..PIN_ATTEMPTS {
            match store.pin_file(&staged.upload_id, tenant, &staged.sha256, staged.size, until).await {
                Ok(true) => {
                    pinned = true;
                    break;
                }
                Ok(false) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    let _ = self.discard(staged).await;
                    return Err(KeepError::Database(e));
                }
            }
        }
        if !pinned {
            let _ = self.discard(staged).await;
            return Err(KeepError::Busy);
        }
        self.promote(staged, tenant).await.map_err(KeepError::Files)
    }

    /// Moves a staged upload to its object (`objects/<tenant>/<sha256>`); when the object is
    /// there already (same bytes, by their hash), the staged copy is simply dropped.
    ///
    /// # Errors
    /// The store failed; the staged copy is then left for `tombstone reconcile`.
    pub async fn promote(&self, staged: &Staged, tenant: &str) -> Result<(), object_store::Error> {
        let target = self.object_path(tenant, &staged.sha256);
        match self.store.head(&target).await {
            Ok(meta) if meta.size == staged.size => self.discard(staged).await,
            Ok(_) | Err(object_store::Error::NotFound { .. }) => self.store.rename(&staged.path, &target).await,
            Err(e) => Err(e),
        }
    }

    /// Drops a staged upload.
    ///
    /// # Errors
    /// The store failed.
    pub async fn discard(&self, staged: &Staged) -> Result<(), object_store::Error> {
        match self.store.delete(&staged.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The bytes of an object, all of them or `range`, as a stream.
    ///
    /// # Errors
    /// The object is missing (`NotFound`) or the store failed.
    pub async fn get(
        &self,
        tenant: &str,
        sha256: &str,
        range: Option<Range<u64>>,
    ) -> Result<impl Stream<Item = Result<Bytes, object_store::Error>> + Send + use<>, object_store::Error> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        Ok(self.store.get_opts(&self.object_path(tenant, sha256), options).await?.into_stream())
    }

    /// Removes an object; one that is gone already is fine.
    ///
    /// # Errors
    /// The store failed.
    pub async fn remove(&self, tenant: &str, sha256: &str) -> Result<(), object_store::Error> {
        match self.store.delete(&self.object_path(tenant, sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every stored object, as (tenant, sha256, size); anything else under `objects/` is
    /// not the server's and is left out.
    ///
    /// # Errors
    /// The store failed.
    pub async fn stored(&self) -> Result<Vec<(String, String, u64)>, object_store::Error> {
        let depth = self.objects.parts().count();
        let metas: Vec<_> = self.store.list(Some(&self.objects)).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<String> = m.location.parts().skip(depth).map(|p| p.as_ref().to_string()).collect();
                match parts.as_slice() {
                    [tenant, sha] if tombstone_domain::files::is_sha256_hex(sha) => {
                        Some((tenant.clone(), sha.clone(), m.size))
                    }
                    _ => None,
                }
            })
            .collect())
    }

    /// Staged uploads last modified before `before` (left by a crash or a lost client).
    ///
    /// # Errors
    /// The store failed.
    pub async fn stale_staging(&self, before: Timestamp) -> Result<Vec<Path>, object_store::Error> {
        let metas: Vec<_> = self.store.list(Some(&self.staging)).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter(|m| m.last_modified.timestamp_micros() < before.as_micros())
            .map(|m| m.location)
            .collect())
    }

    /// Removes a path found by [`Files::stale_staging`].
    ///
    /// # Errors
    /// The store failed.
    pub async fn remove_path(&self, path: &Path) -> Result<(), object_store::Error> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Removes the objects due for removal, one batch after another, until none is due:
/// each is claimed in the database (nothing references it, no upload pins it), removed
/// from the files store, then forgotten. Returns how many were removed.
///
/// # Errors
/// The database or the files store failed; what was claimed and not finished is taken up
/// again by the next pass.
pub async fn remove_due(store: &dyn Store, files: &Files, clock: &dyn Clock) -> anyhow::Result<u64> {
    let mut removed = 0;
    loop {
        let now = clock.now();
        let due: Vec<DueObject> = store.due_files(now, BATCH).await?;
        for object in &due {
            if store.claim_file_removal(object, now).await? {
                files.remove(&object.tenant, &object.sha256).await?;
                store.finish_file_removal(&object.tenant, &object.sha256).await?;
                removed += 1;
            }
        }
        if due.len() < BATCH as usize {
            return Ok(removed);
        }
    }
}

/// The files worker: removes unreferenced objects once a second, while this process holds
/// the lease [`FILES_LEASE`]. It polls rather than waking on every commit: most commits
/// release no file, and one indexed read a second costs nothing, while a read per commit
/// would sit beside every write; an erased or purged record's objects go within a second.
pub async fn run(
    store: Arc<dyn Store>,
    files: Arc<Files>,
    clock: Arc<dyn Clock>,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) {
    let lease = WorkerLease::new(store.clone(), clock.clone(), FILES_LEASE);
    loop {
        match lease.hold(remove_due(store.as_ref(), &files, clock.as_ref())).await {
            Ok(Some(Ok(n))) if n > 0 => {
                tracing::info!(removed = n, "files: removed objects nothing references any more");
                metrics::counter!("tombstone_files_removed_total").increment(n);
            }
            Ok(Some(Ok(_)) | None) => {}
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "files: removing unreferenced objects failed; retrying"),
            Err(e) => tracing::warn!(error = %e, "files: could not claim the worker's lease; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.changed() => break,
        }
    }
    lease.release().await;
}

/// What `tombstone reconcile` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reconciliation {
    /// Objects stored.
    pub stored: u64,
    /// References in the database.
    pub references: u64,
    /// Stored objects that no record or version references and no upload pins.
    pub orphans: Vec<Orphan>,
    /// References whose object is not stored.
    pub missing: Vec<Missing>,
    /// Staged uploads older than an hour.
    pub stale_uploads: Vec<String>,
    /// With `--repair`: orphans and stale uploads removed.
    pub removed: u64,
}

/// A stored object nothing references.
#[derive(Debug, serde::Serialize)]
pub struct Orphan {
    pub tenant: String,
    pub sha256: String,
    pub size: u64,
}

/// A record whose object is missing.
#[derive(Debug, serde::Serialize)]
pub struct Missing {
    pub tenant: String,
    pub collection: String,
    pub id: String,
    pub sha256: String,
}

/// Compares the files store with the database; with `repair`, removes the orphans and the
/// stale uploads (never a missing object's reference: that record's history still says
/// what the file was).
///
/// # Errors
/// The database or the files store failed.
pub async fn reconcile(
    store: &dyn Store,
    files: &Files,
    now: Timestamp,
    repair: bool,
) -> anyhow::Result<Reconciliation> {
    // The database first: an object stored after this read is pinned, so it is not taken
    // for an orphan below.
    let refs: Vec<FileRef> = store.file_refs().await?;
    let known = store.known_files().await?;
    let stored = files.stored().await?;
    let referenced: std::collections::HashSet<(&str, &str)> =
        refs.iter().map(|r| (r.tenant.as_str(), r.sha256.as_str())).collect();
    let pinned: std::collections::HashSet<(&str, &str)> =
        known.iter().filter(|k| k.pinned_until > now).map(|k| (k.tenant.as_str(), k.sha256.as_str())).collect();
    let present: std::collections::HashSet<(&str, &str)> =
        stored.iter().map(|(t, s, _)| (t.as_str(), s.as_str())).collect();
    let mut report =
        Reconciliation { stored: stored.len() as u64, references: refs.len() as u64, ..Default::default() };
    for (tenant, sha, size) in &stored {
        let key = (tenant.as_str(), sha.as_str());
        if !referenced.contains(&key) && !pinned.contains(&key) {
            report.orphans.push(Orphan { tenant: tenant.clone(), sha256: sha.clone(), size: *size });
        }
    }
    for r in &refs {
        if !present.contains(&(r.tenant.as_str(), r.sha256.as_str())) {
            report.missing.push(Missing {
                tenant: r.tenant.clone(),
                collection: r.collection.clone(),
                id: r.record_id.clone(),
                sha256: r.sha256.clone(),
            });
        }
    }
    let stale_before = Timestamp::from_micros(now.as_micros() - i64::try_from(STALE_STAGING.as_micros()).unwrap_or(0));
    let stale = files.stale_staging(stale_before).await?;
    report.stale_uploads = stale.iter().map(ToString::to_string).collect();
    if repair {
        for orphan in &report.orphans {
            files.remove(&orphan.tenant, &orphan.sha256).await?;
            report.removed += 1;
        }
        for path in &stale {
            files.remove_path(path).await?;
            report.removed += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_as_rfc_9110_says() {
        let r = |h: &str| byte_range(Some(h), 100);
        assert_eq!(byte_range(None, 100), ByteRange::Whole);
        assert_eq!(r("bytes=0-9"), ByteRange::Part(0..10));
        assert_eq!(r("bytes=90-"), ByteRange::Part(90..100));
        assert_eq!(r("bytes=-10"), ByteRange::Part(90..100));
        assert_eq!(r("bytes=-1000"), ByteRange::Part(0..100));
        assert_eq!(r("bytes=95-1000"), ByteRange::Part(95..100));
        assert_eq!(r("bytes=100-"), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=100-200"), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=-0"), ByteRange::Unsatisfiable);
        // Not taken: ignored, the whole file.
        for ignored in ["bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=a-b", "bytes=-", "bytes=1"] {
            assert_eq!(r(ignored), ByteRange::Whole, "{ignored}");
        }
        assert_eq!(byte_range(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=-5"), 0), ByteRange::Unsatisfiable);
    }
}
