//! Idempotency keys on SQLite across processes: a claim dies with the process that took it
//! (a crash between claim and commit must not leave the key "in flight" for the retry),
//! and two processes on one database file never both create under one key.

use std::path::Path;
use std::sync::Arc;
use tombstone_store::prelude::*;

use tombstone_domain::config::{Collection, Config, Schema};
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::record::{FieldValue, Record, Values};
use tombstone_domain::time::Timestamp;
use tombstone_store::{IdempotencyClaim, IdempotencyKey, SqliteStore, Store, StoreError, StoredResponse};

fn schema() -> Arc<Schema> {
    let toml = "[collections.notes.fields]\ntext = { type = \"string\" }\n";
    Config::parse(toml, Path::new(".")).expect("schema").schema
}

fn notes(schema: &Schema) -> Arc<Collection> {
    schema.collection("notes").expect("notes").clone()
}

fn actor() -> Actor {
    Actor { tenant: "t1".into(), key_id: "key_1".into(), request_id: "req_1".into() }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros(1_767_225_600_000_000 + seconds * 1_000_000)
}

fn note(c: &Collection, id: &str) -> Record {
    let mut values = Values::new();
    values.insert("text".into(), FieldValue::String(format!("note {id}")));
    Record {
        tenant: "t1".into(),
        collection: c.name.clone(),
        id: id.into(),
        version: 1,
        created_at: at(0),
        updated_at: at(0),
        deletion: None,
        archive: None,
        legal_hold: false,
        values,
    }
}

fn key() -> IdempotencyKey {
    IdempotencyKey { tenant: "t1".into(), api_key: "key_1".into(), key: "create-1".into() }
}

fn answer(id: &str) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![("location".into(), format!("/v1/notes/{id}"))],
        body: format!("{{\"id\":\"{id}\"}}"),
        record: Some(("notes".into(), id.into())),
    }
}

async fn open(db: &Path, schema: &Schema) -> SqliteStore {
    let store = SqliteStore::open(db).expect("open");
    store.migrate(schema).await.expect("migrate");
    store
}

#[tokio::test]
async fn a_claim_left_by_a_dead_process_does_not_hold_back_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let schema = schema();
    {
        // The process claims the key and dies before its create commits.
        let store = open(&db, &schema).await;
        assert_eq!(store.claim_idempotency(&key(), "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    }
    // Restarted a second later, the retry of the same request runs, once.
    let store = open(&db, &schema).await;
    let c = notes(&schema);
    assert_eq!(store.claim_idempotency(&key(), "fp", at(1)).await.unwrap(), IdempotencyClaim::Claimed);
    store.create_record(&actor(), &c, note(&c, "n1"), Some((key(), answer("n1")))).await.unwrap();
    assert_eq!(store.claim_idempotency(&key(), "fp", at(2)).await.unwrap(), IdempotencyClaim::Replay(answer("n1")));
    drop(store);
    // A committed answer survives the restart.
    let store = open(&db, &schema).await;
    assert_eq!(store.claim_idempotency(&key(), "fp", at(3)).await.unwrap(), IdempotencyClaim::Replay(answer("n1")));
    assert_eq!(store.claim_idempotency(&key(), "other", at(3)).await.unwrap(), IdempotencyClaim::Mismatch);
}

#[tokio::test]
async fn two_processes_on_one_file_never_both_create_under_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let schema = schema();
    let (a, b) = (open(&db, &schema).await, open(&db, &schema).await);
    let c = notes(&schema);
    // Neither sees the other's claim: both run the request.
    assert_eq!(a.claim_idempotency(&key(), "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    assert_eq!(b.claim_idempotency(&key(), "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    a.create_record(&actor(), &c, note(&c, "from-a"), Some((key(), answer("from-a")))).await.unwrap();
    // The second create finds the answer stored at commit and changes nothing.
    let r = b.create_record(&actor(), &c, note(&c, "from-b"), Some((key(), answer("from-b")))).await;
    assert!(matches!(r, Err(StoreError::IdempotencyConflict)), "{r:?}");
    assert!(b.get_record("t1", &c, "from-b").await.unwrap().is_none(), "the losing create left a record");
    b.release_idempotency(&key()).await.unwrap();
    // Its retry replays the winner's answer, in either process.
    for store in [&a, &b] {
        assert_eq!(
            store.claim_idempotency(&key(), "fp", at(1)).await.unwrap(),
            IdempotencyClaim::Replay(answer("from-a"))
        );
    }
}
