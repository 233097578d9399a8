//! [`FileStore`] on PostgreSQL: the shared SQL of `crate::files` over the pool.

use std::sync::Arc;

use async_trait::async_trait;
use tombstone_domain::config::Collection;
use tombstone_domain::lifecycle::{Actor, IfMatch};
use tombstone_domain::record::Record;
use tombstone_domain::time::Timestamp;

use super::PgStore;
use crate::files::{self, DueObject, FileRef, FileStore, FileUpload, KnownObject};
use crate::{StoreError, rules};

#[async_trait]
impl FileStore for PgStore {
    async fn set_file(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        field: &str,
        file: Option<FileUpload>,
        if_match: Option<IfMatch>,
        now: Timestamp,
    ) -> Result<Record, StoreError> {
        let (actor, collection, id, field) = (actor.clone(), collection.clone(), id.to_string(), field.to_string());
        self.grouped(move |tx| {
            Box::pin(async move {
                rules::files::set_file(tx, &actor, &collection, &id, (&field, file.as_ref()), if_match.as_ref(), now)
                    .await
            })
        })
        .await
    }

    async fn pin_file(
        &self,
        upload_id: &str,
        tenant: &str,
        sha256: &str,
        size: u64,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let object = tx.prepare_cached(files::OBJECT_FILE_SQL).await?;
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        if tx.execute(&object, &[&tenant, &sha256, &size, &until.as_micros()]).await? != 1 {
            return Ok(false);
        }
        let pin = tx.prepare_cached(files::PIN_FILE_SQL).await?;
        tx.execute(&pin, &[&upload_id, &tenant, &sha256, &until.as_micros()]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn due_files(&self, now: Timestamp, limit: u32) -> Result<Vec<DueObject>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(files::DUE_FILES_SQL).await?;
        let rows = client.query(&stmt, &[&now.as_micros(), &i64::from(limit)]).await?;
        Ok(rows
            .iter()
            .map(|r| DueObject {
                tenant: r.get(0),
                sha256: r.get(1),
                due_at: Timestamp::from_micros(r.get(2)),
                deleting: r.get(3),
            })
            .collect())
    }

    async fn claim_file_removal(&self, object: &DueObject, now: Timestamp) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (tenant, sha) = (&object.tenant, &object.sha256);
        let expire = tx.prepare_cached(files::EXPIRE_PINS_SQL).await?;
        tx.execute(&expire, &[tenant, sha, &now.as_micros()]).await?;
        let claim = tx.prepare_cached(files::CLAIM_FILE_SQL).await?;
        let remove = if tx.execute(&claim, &[tenant, sha]).await? == 1 {
            true
        } else {
            let deleting = tx.prepare_cached(files::DELETING_FILE_SQL).await?;
            if tx.query_opt(&deleting, &[tenant, sha]).await?.is_some_and(|r| r.get::<_, bool>(0)) {
                true
            } else {
                let keep = tx.prepare_cached(files::KEEP_FILE_SQL).await?;
                tx.execute(&keep, &[tenant, sha, &object.due_at.as_micros()]).await?;
                false
            }
        };
        tx.commit().await?;
        Ok(remove)
    }

    async fn finish_file_removal(&self, tenant: &str, sha256: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(files::FINISH_FILE_SQL).await?;
        client.execute(&stmt, &[&tenant, &sha256]).await?;
        Ok(())
    }

    async fn file_refs(&self) -> Result<Vec<FileRef>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(files::FILE_REFS_SQL).await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| FileRef { tenant: r.get(0), sha256: r.get(1), collection: r.get(2), record_id: r.get(3) })
            .collect())
    }

    async fn known_files(&self) -> Result<Vec<KnownObject>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(files::KNOWN_FILES_SQL).await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| KnownObject {
                tenant: r.get(0),
                sha256: r.get(1),
                pinned_until: Timestamp::from_micros(r.get(2)),
                deleting: r.get(3),
            })
            .collect())
    }
}
