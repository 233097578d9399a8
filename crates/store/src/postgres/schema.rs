//! PostgreSQL schema: the system tables (versioned migrations under `migrations/`, never
//! edited once applied) and one table per collection, generated from the config.
//!
//! The layout is SQLite's, on purpose: a collection table keeps the system columns beside
//! one typed column per declared field (`f_<name>`), so a filter or a sort on a field is a
//! plain column comparison an index can serve, a type is enforced by the database, and a
//! unique set is a partial unique index on real columns — the source of truth for
//! uniqueness among active records (`WHERE deleted_at IS NULL`). One JSON document per
//! record (one table for all) would need expression indexes per field and per collection
//! anyway, and would let a value of the wrong type in. Both stores share one mapping of
//! records to rows, so the rules above them see the same records.
//!
//! Case-insensitive strings keep a folded shadow column (`ci_<name>`), written by Tombstone
//! with the domain's `fold_case` (Unicode lower-casing in Rust), rather than indexes on
//! `lower(f_<name>)`: PostgreSQL's `lower()` depends on the database's collation and ctype
//! (under `C` it folds ASCII only; under any locale it maps one character at a time, so the
//! final sigma of `ΟΔΟΣ` becomes `σ` where Rust gives `ς`). An index that disagrees with
//! the domain would let two values the domain calls equal both be active, or refuse a
//! filter match; the shadow column makes the index, the filters and SQLite agree byte for
//! byte on every deployment.

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;
use sha2::{Digest, Sha256};
use tombstone_domain::config::{Collection, FieldType};
use tombstone_domain::record::fold_case;

use super::error::register_constraint;
use crate::StoreError;

/// System migrations, in order. Each runs once, in a transaction taken under
/// [`MIGRATION_LOCK`], and is recorded in `_migrations`. Never edit one that has shipped:
/// add another.
const SYSTEM_MIGRATIONS: &[(&str, &str)] = &[
    ("0001_system", include_str!("migrations/0001_system.sql")),
    ("0002_audit", include_str!("migrations/0002_audit.sql")),
    ("0003_outbox", include_str!("migrations/0003_outbox.sql")),
    ("0004_webhooks", include_str!("migrations/0004_webhooks.sql")),
    ("0005_retention", include_str!("migrations/0005_retention.sql")),
    ("0006_nats", include_str!("migrations/0006_nats.sql")),
    ("0007_history", include_str!("migrations/0007_history.sql")),
    ("0008_audit_checks", include_str!("migrations/0008_audit_checks.sql")),
    ("0009_files", include_str!("migrations/0009_files.sql")),
];

/// The advisory lock every schema change takes (`pg_advisory_xact_lock`): replicas that
/// start together apply each migration once, one after the other, and a collection table
/// is never created twice at the same time. ("tombston" in ASCII.)
pub(crate) const MIGRATION_LOCK: i64 = 0x746f_6d62_7374_6f6e;

/// PostgreSQL's longest identifier, in bytes: longer names are truncated silently.
const MAX_IDENT: usize = 63;

/// Applies the system migrations that have not run yet.
pub(crate) async fn migrate_system(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    for (name, sql) in SYSTEM_MIGRATIONS {
        let tx = client.transaction().await?;
        // Not under the connection's default `lock_timeout`: a replica starting beside
        // another's long migration waits for it.
        tx.batch_execute("set local lock_timeout = 0").await?;
        tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        // Under the lock too: two `create table if not exists` racing can both try to
        // create the table's type and one of them fails.
        tx.batch_execute(
            "create table if not exists _migrations (name text primary key, applied_at timestamptz not null default now())",
        )
        .await?;
        let done = tx.query_opt("select 1 from _migrations where name = $1", &[name]).await?;
        if done.is_none() {
            tx.batch_execute(sql)
                .await
                .map_err(|e| StoreError::Migration(format!("system migration {name}: {}", crate::cause_chain(&e))))?;
            tx.execute("insert into _migrations (name) values ($1)", &[name]).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// A name PostgreSQL keeps whole: one longer than 63 bytes is cut and given a hash of the
/// whole, so two long names never collide the way PostgreSQL's own truncation would make
/// them. (Names are ASCII: collection and field names are validated.)
pub(crate) fn ident(name: &str) -> String {
    if name.len() <= MAX_IDENT {
        return name.to_string();
    }
    let hash = short_hash(name);
    format!("{}_{hash}", &name[..MAX_IDENT - hash.len() - 1])
}

/// The table of a collection, quoted.
pub(crate) fn table_name(collection: &str) -> String {
    format!("\"{}\"", ident(&format!("rec_{collection}")))
}

/// The column of a field's value, quoted.
pub(crate) fn field_column(field: &str) -> String {
    format!("\"{}\"", ident(&format!("f_{field}")))
}

/// The folded shadow column of a case-insensitive field, quoted.
pub(crate) fn folded_column(field: &str) -> String {
    format!("\"{}\"", ident(&format!("ci_{field}")))
}

/// The column a field's equality and uniqueness use: folded for case-insensitive strings.
pub(crate) fn compare_column(field: &str, case_insensitive: bool) -> String {
    if case_insensitive { folded_column(field) } else { field_column(field) }
}

/// The primary key constraint of a collection table.
pub(crate) fn primary_key_name(collection: &str) -> String {
    ident(&format!("pk_{collection}"))
}

/// Each unique set of a collection: its index's name, its fields, and the columns it
/// covers after `tenant`.
pub(crate) fn unique_indexes(collection: &Collection) -> Vec<(String, Vec<String>, String)> {
    collection
        .unique
        .iter()
        .map(|set| {
            let cols = set
                .iter()
                .map(|f| compare_column(f, collection.field(f).is_some_and(|d| d.case_insensitive)))
                .collect::<Vec<_>>()
                .join(", ");
            (ident(&format!("ux_{}_{}", collection.name, short_hash(&cols))), set.clone(), cols)
        })
        .collect()
}

/// Tells the error mapping which fields a collection's constraints cover.
pub(crate) fn register_constraints(collection: &Collection) {
    register_constraint(&primary_key_name(&collection.name), &["id".to_string()]);
    for (name, fields, _) in unique_indexes(collection) {
        register_constraint(&name, &fields);
    }
}

/// The SQL type of a field's column. Text compares and sorts in byte order like SQLite,
/// whatever the database's locale; JSON is kept as the text Tombstone wrote (jsonb would
/// reorder object members, and json has no equality for filters).
fn column_type(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::Integer | FieldType::Timestamp => "bigint",
        FieldType::Boolean => "boolean",
        FieldType::Number => "double precision",
        FieldType::String | FieldType::Ref { .. } | FieldType::Json | FieldType::File(_) => "text collate \"C\"",
    }
}

/// Creates or evolves the table of one collection, keeping its rows. The caller holds
/// [`MIGRATION_LOCK`] in the same transaction.
pub(crate) async fn migrate_collection(tx: &Transaction<'_>, collection: &Collection) -> Result<(), StoreError> {
    let name = &collection.name;
    let table = table_name(name);
    let bare_table = ident(&format!("rec_{name}"));
    let err = |what: &str, e: &tokio_postgres::Error| {
        StoreError::Migration(format!("collections.{name}: {what}: {}", crate::cause_chain(e)))
    };

    // Incompatible changes are refused before anything is touched.
    let applied: Option<String> =
        tx.query_opt("select definition from collections where name = $1", &[name]).await?.map(|r| r.get(0));
    let applied: BTreeMap<String, String> = applied.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default();
    for (fname, field) in &collection.fields {
        if let Some(old) = applied.get(fname) {
            let old_type = old.split('/').next().unwrap_or_default();
            if old_type != field.ty.name() {
                return Err(StoreError::Migration(format!(
                    "collections.{name}.fields.{fname}: type changed from {old_type} to {}; existing values cannot be converted (declare a new field instead)",
                    field.ty.name()
                )));
            }
        }
    }

    let pk = primary_key_name(name);
    tx.batch_execute(&format!(
        "create table if not exists {table} (
            tenant        text collate \"C\" not null,
            id            text collate \"C\" not null,
            version       bigint not null,
            created_at    bigint not null,
            updated_at    bigint not null,
            deleted_at    bigint,
            deleted_by    text,
            delete_reason text,
            deletion_id   text,
            purge_at      bigint,
            archived_at   bigint,
            archived_by   text,
            archive_reason text,
            constraint \"{pk}\" primary key (tenant, id)
        )"
    ))
    .await
    .map_err(|e| err("create table", &e))?;

    let existing: Vec<String> = tx
        .query(
            "select column_name::text from information_schema.columns where table_schema = current_schema() and table_name = $1",
            &[&bare_table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Archive (§17) came after the first tables: older ones gain its columns, empty.
    for (col, ty) in [("archived_at", "bigint"), ("archived_by", "text"), ("archive_reason", "text")] {
        if !existing.iter().any(|c| c == col) {
            tx.batch_execute(&format!("alter table {table} add column {col} {ty}"))
                .await
                .map_err(|e| err("add column", &e))?;
        }
    }
    for field in collection.fields.values() {
        let col = ident(&format!("f_{}", field.name));
        if !existing.contains(&col) {
            tx.batch_execute(&format!("alter table {table} add column \"{col}\" {}", column_type(&field.ty)))
                .await
                .map_err(|e| err("add column", &e))?;
        }
        if field.case_insensitive {
            let ci = ident(&format!("ci_{}", field.name));
            if !existing.contains(&ci) {
                tx.batch_execute(&format!("alter table {table} add column \"{ci}\" text collate \"C\""))
                    .await
                    .map_err(|e| err("add column", &e))?;
                backfill_folded(tx, &table, &field.name).await?;
            } else if applied.get(&field.name).is_some_and(|d| !d.ends_with("/ci")) {
                // Folding was off for a while: the shadow column is stale.
                backfill_folded(tx, &table, &field.name).await?;
            }
        }
    }

    // Indexes: the ones this config wants, by deterministic names; stale ones of ours go.
    // Lists by default cover records neither deleted nor archived, and that index covers
    // exactly them (`ix_{name}_active`, over every undeleted record, came before archive and
    // goes); archived ones have their own, so neither list grows with the other's rows.
    let current = ident(&format!("ix_{name}_current"));
    let archived = ident(&format!("ix_{name}_archived"));
    let deleted = ident(&format!("ix_{name}_deleted"));
    let purge = ident(&format!("ix_{name}_purge"));
    let mut wanted: Vec<(String, String)> = vec![
        (
            current.clone(),
            format!(
                "create index \"{current}\" on {table} (tenant, id) where deleted_at is null and archived_at is null"
            ),
        ),
        (
            archived.clone(),
            format!(
                "create index \"{archived}\" on {table} (tenant, id) where deleted_at is null and archived_at is not null"
            ),
        ),
        (
            deleted.clone(),
            format!("create index \"{deleted}\" on {table} (tenant, deleted_at, id) where deleted_at is not null"),
        ),
        (purge.clone(), format!("create index \"{purge}\" on {table} (purge_at) where deleted_at is not null")),
    ];
    if collection.archive_after.is_some() {
        // The `archive_after` pass: the oldest records still current, first.
        let stale = ident(&format!("ix_{name}_stale"));
        wanted.push((
            stale.clone(),
            format!(
                "create index \"{stale}\" on {table} (updated_at) where deleted_at is null and archived_at is null"
            ),
        ));
    }
    let uniques = unique_indexes(collection);
    for (idx, _, cols) in &uniques {
        wanted.push((
            idx.clone(),
            format!("create unique index \"{idx}\" on {table} (tenant, {cols}) where deleted_at is null"),
        ));
    }
    for field in collection.fields.values().filter(|f| f.index) {
        let col = compare_column(&field.name, field.case_insensitive);
        let idx = ident(&format!("ix_{name}_f_{}_{}", field.name, short_hash(&col)));
        wanted.push((
            idx.clone(),
            format!("create index \"{idx}\" on {table} (tenant, {col}, id) where deleted_at is null"),
        ));
    }
    let present: Vec<String> = tx
        .query(
            "select indexname::text from pg_indexes where schemaname = current_schema() and tablename = $1 and indexname <> $2",
            &[&bare_table, &pk],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for idx in &present {
        if !wanted.iter().any(|(w, _)| w == idx) {
            tx.batch_execute(&format!("drop index \"{idx}\"")).await.map_err(|e| err("drop index", &e))?;
        }
    }
    for (idx, sql) in &wanted {
        if !present.contains(idx) {
            tx.batch_execute(sql).await.map_err(|e| {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    StoreError::Migration(format!(
                        "collections.{name}.unique: active records already share a value, so the unique set cannot be added ({})",
                        crate::cause_chain(&e)
                    ))
                } else {
                    err("create index", &e)
                }
            })?;
        }
    }

    // Each field's type, with "/ci" while it is case-insensitive; removed fields are kept
    // so that re-adding one with another type is still refused.
    let definition: BTreeMap<String, String> = collection
        .fields
        .values()
        .map(|f| (f.name.clone(), format!("{}{}", f.ty.name(), if f.case_insensitive { "/ci" } else { "" })))
        .chain(applied.iter().filter(|(k, _)| !collection.fields.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    let def_json = serde_json::to_string(&definition).unwrap_or_default();
    tx.execute(
        "insert into collections (name, definition) values ($1, $2) on conflict (name) do update set definition = excluded.definition",
        &[name, &def_json],
    )
    .await?;
    register_constraints(collection);
    baseline_versions(tx, collection).await?;
    Ok(())
}

/// Gives every record of a collection from before history (SPEC section 14) its first
/// version — its state now, action `baseline`, valid from its `updated_at` — once per
/// collection. A collection created afterwards has no rows then and only gains the mark.
async fn baseline_versions(tx: &Transaction<'_>, collection: &Collection) -> Result<(), StoreError> {
    let name = &collection.name;
    if tx.query_opt("select 1 from history_baselines where collection = $1", &[name]).await?.is_some() {
        return Ok(());
    }
    let sql = super::records::TableSql::new(collection);
    let rows = tx.query(&sql.select, &[]).await?;
    let versions = rows
        .iter()
        .map(|row| {
            let record = super::records::read_record(collection, row)?;
            Ok(tombstone_domain::history::NewVersion::of(
                collection,
                &record,
                tombstone_domain::history::BASELINE_ACTION,
                None,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    for chunk in versions.chunks(1000) {
        super::rules_tx::insert_versions(tx, chunk).await?;
    }
    tx.execute("insert into history_baselines (collection) values ($1)", &[name]).await?;
    Ok(())
}

/// Fills a new folded column from the values already stored.
async fn backfill_folded(tx: &Transaction<'_>, table: &str, field: &str) -> Result<(), StoreError> {
    let col = field_column(field);
    let rows = tx.query(&format!("select tenant, id, {col} from {table} where {col} is not null"), &[]).await?;
    let update =
        tx.prepare(&format!("update {table} set {} = $1 where tenant = $2 and id = $3", folded_column(field))).await?;
    for row in rows {
        let (tenant, id, value): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        tx.execute(&update, &[&fold_case(&value), &tenant, &id]).await?;
    }
    Ok(())
}
