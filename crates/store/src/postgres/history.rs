//! History reads (§14) on PostgreSQL: the primitives of [`HistoryStore`] over the
//! `versions` table (migration `0007_history`), each a range of its primary key, and
//! `:revert` through the shared rules in the group commit like the other single-record
//! writes.

use std::sync::Arc;

use async_trait::async_trait;
use tombstone_domain::config::Collection;
use tombstone_domain::lifecycle::{Actor, IfMatch};
use tombstone_domain::record::Record;
use tombstone_domain::time::Timestamp;

use super::PgStore;
use crate::history::{HistoryStore, VersionRow};
use crate::{StoreError, rules};

/// The columns of a [`VersionRow`], then the next version's `valid_from`.
const COLUMNS: &str = "v.version, v.valid_from, v.action, v.actor, v.deletion_id, v.body,
    (select n.valid_from from versions n
      where n.tenant = v.tenant and n.collection = v.collection and n.record_id = v.record_id
        and (n.valid_from, n.version) > (v.valid_from, v.version)
      order by n.valid_from, n.version limit 1)";

fn read_row(r: &tokio_postgres::Row) -> Result<VersionRow, StoreError> {
    Ok(VersionRow {
        version: r.try_get(0)?,
        valid_from: Timestamp::from_micros(r.try_get(1)?),
        action: r.try_get(2)?,
        actor: r.try_get(3)?,
        deletion_id: r.try_get(4)?,
        body: r.try_get(5)?,
        valid_to: r.try_get::<_, Option<i64>>(6)?.map(Timestamp::from_micros),
    })
}

impl PgStore {
    async fn one_version(
        &self,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<VersionRow>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "select {COLUMNS} from versions v where v.tenant = $1 and v.collection = $2 and v.record_id = $3 and {condition}
             order by v.valid_from desc, v.version desc limit 1"
        );
        let stmt = client.prepare_cached(&sql).await?;
        client.query_opt(&stmt, params).await?.as_ref().map(read_row).transpose()
    }
}

#[async_trait]
impl HistoryStore for PgStore {
    async fn version_rows(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        max_version: Option<i64>,
        limit: u32,
    ) -> Result<Vec<VersionRow>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "select v.version, v.valid_from, v.action, v.actor, v.deletion_id, v.body, null::bigint from versions v
                 where v.tenant = $1 and v.collection = $2 and v.record_id = $3 and ($4::bigint is null or v.version <= $4)
                 order by v.valid_from desc, v.version desc limit $5",
            )
            .await?;
        let rows = client.query(&stmt, &[&tenant, &collection, &id, &max_version, &i64::from(limit)]).await?;
        rows.iter().map(read_row).collect()
    }

    async fn version_row(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        n: i64,
    ) -> Result<Option<VersionRow>, StoreError> {
        self.one_version("v.version = $4", &[&tenant, &collection, &id, &n]).await
    }

    async fn version_row_at(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<VersionRow>, StoreError> {
        self.one_version("v.valid_from <= $4", &[&tenant, &collection, &id, &at.as_micros()]).await
    }

    async fn as_of_rows(
        &self,
        tenant: &str,
        collection: &Arc<Collection>,
        at: Timestamp,
        after_id: Option<String>,
        descending: bool,
        limit: u32,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let table = self.table(collection)?.table.clone();
        let (cmp, dir) = if descending { ("<", "desc") } else { (">", "asc") };
        // Written out only when there is a position, so that it bounds the key range
        // (`$4 is null or …` would read the table from its start).
        let after = if after_id.is_some() { format!("r.id {cmp} $4") } else { "$4::text is null".to_string() };
        // One probe of the versions key per row: the last version at or before `at`.
        let sql = format!(
            "select r.id, (select v.body from versions v
               where v.tenant = r.tenant and v.collection = $2 and v.record_id = r.id and v.valid_from <= $3
               order by v.valid_from desc, v.version desc limit 1)
             from {table} r where r.tenant = $1 and {after} order by r.id {dir} limit $5"
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let rows =
            client.query(&stmt, &[&tenant, &collection.name, &at.as_micros(), &after_id, &i64::from(limit)]).await?;
        Ok(rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, tokio_postgres::Error>>()?)
    }

    async fn revert_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        version: i64,
        if_match: Option<IfMatch>,
        now: Timestamp,
    ) -> Result<Record, StoreError> {
        let (actor, collection, id) = (actor.clone(), collection.clone(), id.to_string());
        self.grouped(move |tx| {
            Box::pin(async move {
                rules::records::revert(tx, &actor, &collection, &id, version, if_match.as_ref(), now).await
            })
        })
        .await
    }
}
