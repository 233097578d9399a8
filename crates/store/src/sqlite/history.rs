//! History reads (§14) on SQLite: the primitives of [`HistoryStore`] over the `versions`
//! table (migration `0011_history`), each a range of its primary key, and `:revert`
//! through the shared rules on the writer.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tombstone_domain::config::Collection;
use tombstone_domain::lifecycle::{Actor, IfMatch};
use tombstone_domain::ready::now;
use tombstone_domain::record::Record;
use tombstone_domain::time::Timestamp;

use super::SqliteStore;
use super::tx::SqliteTx;
use crate::history::{HistoryStore, VersionRow};
use crate::{StoreError, rules};

/// The columns of a [`VersionRow`], then the next version's `valid_from`.
const COLUMNS: &str = "v.version, v.valid_from, v.action, v.actor, v.deletion_id, v.body,
    (select n.valid_from from versions n
      where n.tenant = v.tenant and n.collection = v.collection and n.record_id = v.record_id
        and (n.valid_from > v.valid_from or (n.valid_from = v.valid_from and n.version > v.version))
      order by n.valid_from, n.version limit 1)";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        version: r.get(0)?,
        valid_from: Timestamp::from_micros(r.get(1)?),
        action: r.get(2)?,
        actor: r.get(3)?,
        deletion_id: r.get(4)?,
        body: r.get(5)?,
        valid_to: r.get::<_, Option<i64>>(6)?.map(Timestamp::from_micros),
    })
}

fn one(conn: &Connection, condition: &str, p: impl rusqlite::Params) -> Result<Option<VersionRow>, StoreError> {
    let sql = format!(
        "select {COLUMNS} from versions v where v.tenant = ?1 and v.collection = ?2 and v.record_id = ?3 and {condition}
         order by v.valid_from desc, v.version desc limit 1"
    );
    Ok(conn.prepare_cached(&sql)?.query_row(p, read_row).optional()?)
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn version_rows(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        max_version: Option<i64>,
        limit: u32,
    ) -> Result<Vec<VersionRow>, StoreError> {
        let (tenant, collection, id) = (tenant.to_string(), collection.to_string(), id.to_string());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "select v.version, v.valid_from, v.action, v.actor, v.deletion_id, v.body, null from versions v
                 where v.tenant = ?1 and v.collection = ?2 and v.record_id = ?3 and (?4 is null or v.version <= ?4)
                 order by v.valid_from desc, v.version desc limit +?5",
            )?;
            Ok(stmt
                .query_map(params![tenant, collection, id, max_version, i64::from(limit)], read_row)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn version_row(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        n: i64,
    ) -> Result<Option<VersionRow>, StoreError> {
        let (tenant, collection, id) = (tenant.to_string(), collection.to_string(), id.to_string());
        self.read(move |conn| one(conn, "v.version = ?4", params![tenant, collection, id, n])).await
    }

    async fn version_row_at(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<VersionRow>, StoreError> {
        let (tenant, collection, id) = (tenant.to_string(), collection.to_string(), id.to_string());
        self.read(move |conn| one(conn, "v.valid_from <= ?4", params![tenant, collection, id, at.as_micros()])).await
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
        let (tenant, name) = (tenant.to_string(), collection.name.clone());
        self.read(move |conn| {
            let (cmp, dir) = if descending { ("<", "desc") } else { (">", "asc") };
            // Written out only when there is a position, so that it bounds the key range
            // (`?4 is null or …` would read the table from its start).
            let after = if after_id.is_some() { format!("r.id {cmp} ?4") } else { "?4 is null".to_string() };
            // One probe of the versions key per row: the last version at or before `at`.
            let sql = format!(
                "select r.id, (select v.body from versions v
                   where v.tenant = r.tenant and v.collection = ?2 and v.record_id = r.id and v.valid_from <= ?3
                   order by v.valid_from desc, v.version desc limit 1)
                 from {table} r where r.tenant = ?1 and {after} order by r.id {dir} limit +?5"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            Ok(stmt
                .query_map(params![tenant, name, at.as_micros(), after_id, i64::from(limit)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn revert_record(
        &self,
        actor: &Actor,
        collection: &Arc<Collection>,
        id: &str,
        version: i64,
        if_match: Option<IfMatch>,
        at: Timestamp,
    ) -> Result<Record, StoreError> {
        let (_, tables) = self.catalog()?;
        let (collection, actor, id) = (collection.clone(), actor.clone(), id.to_string());
        self.write(move |tx| {
            let mut tx = SqliteTx::new(tx, &tables, None);
            now(rules::records::revert(&mut tx, &actor, &collection, &id, version, if_match.as_ref(), at))
        })
        .await
    }
}
