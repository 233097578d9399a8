//! The record, event and whole-store traits on PostgreSQL: writes through the shared
//! rules (`areas.rs`), reads and bookkeeping from this store's own modules.

use std::sync::Arc;

use async_trait::async_trait;
use tombstone_domain::audit::{AuditEntry, ChainError};
use tombstone_domain::config::{Collection, Schema};
use tombstone_domain::events::Event;
use tombstone_domain::lifecycle::{Actor, ArchiveRequest, DeleteRequest, IfMatch};
use tombstone_domain::query::ListQuery;
use tombstone_domain::record::{Patch, Record};
use tombstone_domain::time::Timestamp;

use super::PgStore;
use crate::{
    AttemptOutcome, AuditCheck, AuditQuery, DeleteOutcome, Delivery, DeliveryQuery, DueDelivery, EndpointState,
    EventQuery, EventStore, IdempotencyClaim, IdempotencyKey, Page, RecordStore, Redelivery, RestoreOutcome, Store,
    StoreError, StoredResponse, WebhookEndpoint,
};

#[async_trait]
impl RecordStore for PgStore {
    async fn create_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        record: Record,
        idempotency: Option<(IdempotencyKey, StoredResponse)>,
    ) -> Result<Record, StoreError> {
        self.create_with_rules(actor, collection, record, idempotency).await
    }

    async fn get_shared(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        id: &str,
    ) -> Result<Option<Arc<crate::SharedRecord>>, StoreError> {
        PgStore::get_shared(self, tenant, collection, id).await
    }

    async fn list_records(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        query: &ListQuery,
    ) -> Result<Page, StoreError> {
        PgStore::list_records(self, tenant, collection, query).await
    }

    async fn patch_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        patch: Patch,
        now: Timestamp,
    ) -> Result<Record, StoreError> {
        self.patch_with_rules(actor, collection, id, if_match, patch, now).await
    }

    async fn delete_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: DeleteRequest,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        self.delete_with_rules(actor, collection, id, request, now).await
    }

    async fn restore_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        if_match: Option<IfMatch>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<RestoreOutcome, StoreError> {
        self.restore_with_rules(actor, collection, id, if_match, reason, now).await
    }

    async fn archive_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        request: ArchiveRequest,
        if_match: Option<IfMatch>,
        now: Timestamp,
    ) -> Result<Record, StoreError> {
        self.archive_with_rules(actor, collection, id, request, if_match, now).await
    }

    async fn active_ids(&self, collection: &Arc<Collection>) -> Result<Vec<(String, String)>, StoreError> {
        PgStore::active_ids(self, collection).await
    }

    async fn claim_idempotency(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<IdempotencyClaim, StoreError> {
        PgStore::claim_idempotency(self, key, fingerprint, now).await
    }

    async fn complete_idempotency(&self, key: &IdempotencyKey, response: StoredResponse) -> Result<(), StoreError> {
        PgStore::complete_idempotency(self, key, response).await
    }

    async fn release_idempotency(&self, key: &IdempotencyKey) -> Result<(), StoreError> {
        PgStore::release_idempotency(self, key).await
    }

    async fn expire_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        PgStore::expire_idempotency(self, before).await
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn list_audit(&self, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        PgStore::list_audit(self, tenant, query).await
    }

    async fn verify_audit(&self) -> Result<Result<u64, ChainError>, StoreError> {
        PgStore::verify_audit(self).await
    }

    async fn audit_check(&self) -> Result<Option<AuditCheck>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(crate::AUDIT_CHECK_SQL).await?;
        Ok(client
            .query_opt(&stmt, &[])
            .await?
            .map(|r| crate::audit_check_from(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))))
    }

    async fn save_audit_check(
        &self,
        checked_at: Timestamp,
        duration_ms: u64,
        outcome: &Result<u64, ChainError>,
    ) -> Result<(), StoreError> {
        let (entries, broken, problem) = crate::audit_check_params(outcome);
        let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client.prepare_cached(crate::SAVE_AUDIT_CHECK_SQL).await?;
        client.execute(&stmt, &[&checked_at.as_micros(), &duration, &entries, &broken, &problem]).await?;
        Ok(())
    }

    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        PgStore::list_events(self, tenant, query).await
    }

    async fn list_all_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        PgStore::list_all_events(self, query).await
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        PgStore::last_event_seq(self).await
    }

    fn changes(&self) -> Arc<tokio::sync::Notify> {
        PgStore::changes(self)
    }

    async fn changes_since(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, crate::cache::CacheKey, String)>, StoreError> {
        PgStore::changes_since(self, after, limit).await
    }

    async fn sync_webhook_endpoints(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
    ) -> Result<Vec<EndpointState>, StoreError> {
        PgStore::sync_webhook_endpoints(self, endpoints, now).await
    }

    async fn webhook_endpoints(&self) -> Result<Vec<EndpointState>, StoreError> {
        PgStore::webhook_endpoints(self).await
    }

    async fn enable_webhook_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        PgStore::enable_webhook_endpoint(self, id).await
    }

    async fn fan_out_webhooks(
        &self,
        endpoints: &[WebhookEndpoint],
        now: Timestamp,
        batch: u32,
    ) -> Result<u64, StoreError> {
        PgStore::fan_out_webhooks(self, endpoints, now, batch).await
    }

    async fn due_deliveries(&self, now: Timestamp, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
        PgStore::due_deliveries(self, now, limit).await
    }

    async fn record_attempt(
        &self,
        delivery_id: &str,
        at: Timestamp,
        outcome: AttemptOutcome,
    ) -> Result<(), StoreError> {
        PgStore::record_attempt(self, delivery_id, at, outcome).await
    }

    async fn list_deliveries(&self, tenant: &str, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        PgStore::list_deliveries(self, tenant, query).await
    }

    async fn redeliver(&self, tenant: &str, id: &str, now: Timestamp) -> Result<Redelivery, StoreError> {
        PgStore::redeliver(self, tenant, id, now).await
    }

    async fn webhook_backlog(&self) -> Result<u64, StoreError> {
        PgStore::webhook_backlog(self).await
    }

    async fn cleanup_outbox(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        PgStore::cleanup_outbox(self, before, limit).await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self, schema: &Schema) -> Result<(), StoreError> {
        PgStore::migrate(self, schema).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        PgStore::ping(self).await
    }

    async fn sync_cache(&self) -> Result<u64, StoreError> {
        self.follow_outbox().await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        PgStore::get_meta(self, key).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        PgStore::set_meta(self, key, value).await
    }
}
