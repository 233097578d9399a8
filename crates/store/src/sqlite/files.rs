//! [`FileStore`] on SQLite: the shared SQL of `crate::files` on the writer and the readers.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tombstone_domain::config::Collection;
use tombstone_domain::lifecycle::{Actor, IfMatch};
use tombstone_domain::ready::now;
use tombstone_domain::record::Record;
use tombstone_domain::time::Timestamp;

use super::SqliteStore;
use super::tx::SqliteTx;
use crate::files::{self, DueObject, FileRef, FileStore, FileUpload, KnownObject};
use crate::{StoreError, rules};

fn size(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl FileStore for SqliteStore {
    async fn set_file(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        field: &str,
        file: Option<FileUpload>,
        if_match: Option<IfMatch>,
        at: Timestamp,
    ) -> Result<Record, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id, field) = (collection.clone(), actor.clone(), id.to_string(), field.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::files::set_file(
                &mut tx,
                &actor,
                &collection,
                &id,
                (&field, file.as_ref()),
                if_match.as_ref(),
                at,
            ))
        })
        .await
    }

    async fn pin_file(
        &self,
        upload_id: &str,
        tenant: &str,
        sha256: &str,
        bytes: u64,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let (upload_id, tenant, sha256) = (upload_id.to_string(), tenant.to_string(), sha256.to_string());
        self.write(move |tx| {
            let end = until.as_micros();
            if tx.prepare_cached(files::OBJECT_FILE_SQL)?.execute(params![tenant, sha256, size(bytes), end])? != 1 {
                return Ok(false);
            }
            tx.prepare_cached(files::PIN_FILE_SQL)?.execute(params![upload_id, tenant, sha256, end])?;
            Ok(true)
        })
        .await
    }

    async fn due_files(&self, at: Timestamp, limit: u32) -> Result<Vec<DueObject>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(files::DUE_FILES_SQL)?;
            let rows = stmt.query_map(params![at.as_micros(), limit], |r| {
                Ok(DueObject {
                    tenant: r.get(0)?,
                    sha256: r.get(1)?,
                    due_at: Timestamp::from_micros(r.get(2)?),
                    deleting: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn claim_file_removal(&self, object: &DueObject, at: Timestamp) -> Result<bool, StoreError> {
        let object = object.clone();
        self.write(move |tx| {
            let (tenant, sha) = (&object.tenant, &object.sha256);
            tx.prepare_cached(files::EXPIRE_PINS_SQL)?.execute(params![tenant, sha, at.as_micros()])?;
            if tx.prepare_cached(files::CLAIM_FILE_SQL)?.execute(params![tenant, sha])? == 1 {
                return Ok(true);
            }
            let deleting: Option<bool> = tx
                .prepare_cached(files::DELETING_FILE_SQL)?
                .query_row(params![tenant, sha], |r| r.get(0))
                .optional()?;
            if deleting == Some(true) {
                return Ok(true);
            }
            tx.prepare_cached(files::KEEP_FILE_SQL)?.execute(params![tenant, sha, object.due_at.as_micros()])?;
            Ok(false)
        })
        .await
    }

    async fn finish_file_removal(&self, tenant: &str, sha256: &str) -> Result<(), StoreError> {
        let (tenant, sha256) = (tenant.to_string(), sha256.to_string());
        self.write(move |tx| {
            tx.prepare_cached(files::FINISH_FILE_SQL)?.execute(params![tenant, sha256])?;
            Ok(())
        })
        .await
    }

    async fn file_refs(&self) -> Result<Vec<FileRef>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(files::FILE_REFS_SQL)?;
            let rows = stmt.query_map([], |r| {
                Ok(FileRef { tenant: r.get(0)?, sha256: r.get(1)?, collection: r.get(2)?, record_id: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn known_files(&self) -> Result<Vec<KnownObject>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(files::KNOWN_FILES_SQL)?;
            let rows = stmt.query_map([], |r| {
                Ok(KnownObject {
                    tenant: r.get(0)?,
                    sha256: r.get(1)?,
                    pinned_until: Timestamp::from_micros(r.get(2)?),
                    deleting: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
