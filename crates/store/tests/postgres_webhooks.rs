//! The PostgreSQL store's webhooks, outbox clean-up and idempotency keys against a real
//! server: every method with the semantics SQLite's store has, and the races several
//! replicas bring (concurrent fan-outs, a fan-out waiting for another's endpoint lock,
//! concurrent claims of one key on parallel connections, a claim taken over elsewhere).
//!
//! Runs when `TOMBSTONE_TEST_POSTGRES_URL` names a server whose user may create databases;
//! each test creates its own database and drops it at the end. Without the variable every
//! test says so and passes.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tombstone_domain::events::{EventType, NewEvent};
use tombstone_domain::time::Timestamp;
use tombstone_domain::webhook::DeliveryError;
use tombstone_store::{
    AttemptOutcome, DeliveryQuery, IDEMPOTENCY_STALE_MICROS, IDEMPOTENCY_TTL_MICROS, IdempotencyClaim, IdempotencyKey,
    PgStore, Redelivery, StoreError, StoredResponse, WebhookEndpoint,
};

use common::TestDb;

// ---------------------------------------------------------------------------------------
// Helpers

const T0: i64 = 1_767_225_600_000_000;
const SECOND: i64 = 1_000_000;
const HOUR: i64 = 3600 * SECOND;

fn at(offset_micros: i64) -> Timestamp {
    Timestamp::from_micros(T0 + offset_micros)
}

fn event(kind: EventType, tenant: &str, record_id: &str, n: i64) -> NewEvent {
    NewEvent {
        kind,
        tenant: tenant.to_string(),
        collection: "products".into(),
        record_id: record_id.to_string(),
        version: Some(n),
        deletion_id: None,
        occurred_at: at(n * SECOND),
        request_id: Some(format!("req_{n}")),
        data: Some(serde_json::json!({ "z": n, "a": record_id })),
    }
}

/// Appends events in one transaction; their first and last seq.
async fn append(store: &PgStore, events: Vec<NewEvent>) -> (i64, i64) {
    let mut client = store.client().await.expect("client");
    let mut tx = store.transaction(&mut client).await.expect("begin");
    let range = tx.append_events(events).await.expect("append events");
    tx.commit().await.expect("commit");
    range
}

fn endpoint(id: &str, events: &[&str], tenant: Option<&str>) -> WebhookEndpoint {
    WebhookEndpoint {
        id: id.to_string(),
        url: format!("https://hooks.example/{id}"),
        events: events.iter().map(|e| (*e).to_string()).collect(),
        tenant: tenant.map(str::to_string),
    }
}

/// Every delivery of the tenant the listing is asked for.
fn all() -> DeliveryQuery {
    DeliveryQuery { limit: 1000, ..DeliveryQuery::default() }
}

/// (endpoint, event seq) of every delivery, with its status, by endpoint and seq.
async fn deliveries(db: &TestDb) -> Vec<(String, i64, String)> {
    db.client()
        .await
        .query("select endpoint_id, event_seq, status from webhook_deliveries order by endpoint_id, event_seq", &[])
        .await
        .expect("deliveries")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn cursor(store: &PgStore, id: &str) -> i64 {
    store.webhook_endpoints().await.unwrap().into_iter().find(|e| e.id == id).expect("endpoint").cursor
}

// ---------------------------------------------------------------------------------------
// Endpoints

#[tokio::test]
async fn endpoints_register_at_the_newest_event_leave_and_come_back() {
    let Some(db) = TestDb::create("endpoints_register_at_the_newest_event_leave_and_come_back").await else { return };
    let store = db.store(4).await;
    let (_, last) = append(&store, (1..=3).map(|n| event(EventType::Updated, "t1", "r1", n)).collect()).await;

    let a = endpoint("wh_a", &[], None);
    let b = endpoint("wh_b", &[], Some("t1"));
    let states = store.sync_webhook_endpoints(&[b.clone(), a.clone()], at(0)).await.unwrap();
    assert_eq!(states.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["wh_a", "wh_b"], "listed by id");
    assert!(states.iter().all(|e| e.cursor == last && e.removed_at.is_none() && e.disabled_at.is_none()));
    assert_eq!(states[0].url, "https://hooks.example/wh_a");
    assert_eq!(store.webhook_endpoints().await.unwrap(), states);

    // Events after the registration are fanned out, and a pending delivery of b is left.
    append(&store, vec![event(EventType::Deleted, "t1", "r2", 4)]).await;
    assert_eq!(store.fan_out_webhooks(&[a.clone(), b.clone()], at(5 * SECOND), 10).await.unwrap(), 2);

    // b leaves the config: removed, its pending delivery cancelled; a's is untouched.
    let states = store.sync_webhook_endpoints(std::slice::from_ref(&a), at(6 * SECOND)).await.unwrap();
    let b_state = states.iter().find(|e| e.id == "wh_b").unwrap();
    assert_eq!(b_state.removed_at, Some(at(6 * SECOND)));
    assert_eq!(states.iter().find(|e| e.id == "wh_a").unwrap().removed_at, None);
    let rows = store.list_deliveries("t1", &all()).await.unwrap();
    let of = |id: &str| rows.iter().find(|d| d.endpoint_id == id).unwrap().clone();
    assert_eq!(of("wh_b").status, "cancelled");
    assert_eq!(of("wh_b").last_error.as_deref(), Some("endpoint-removed"));
    assert_eq!(of("wh_a").status, "pending");
    // Syncing again does not move the removal time.
    let states = store.sync_webhook_endpoints(std::slice::from_ref(&a), at(7 * SECOND)).await.unwrap();
    assert_eq!(states.iter().find(|e| e.id == "wh_b").unwrap().removed_at, Some(at(6 * SECOND)));

    // More events while b is away; b comes back with a new URL and starts after them.
    let (_, newest) = append(&store, vec![event(EventType::Updated, "t1", "r3", 8)]).await;
    let b2 = WebhookEndpoint { url: "https://hooks.example/moved".into(), ..b.clone() };
    let states = store.sync_webhook_endpoints(&[a.clone(), b2], at(9 * SECOND)).await.unwrap();
    let b_state = states.iter().find(|e| e.id == "wh_b").unwrap();
    assert_eq!(
        (b_state.cursor, b_state.removed_at, b_state.url.as_str()),
        (newest, None, "https://hooks.example/moved")
    );
    // a kept its cursor (it had not left).
    assert_eq!(states.iter().find(|e| e.id == "wh_a").unwrap().cursor, last + 1);

    // Re-enabling: false for an unknown endpoint; a disabled one comes back enabled.
    assert!(!store.enable_webhook_endpoint("wh_nope").await.unwrap());
    db.client()
        .await
        .execute(
            "update webhook_endpoints set disabled_at = 1, disabled_reason = 'answered 410 Gone' where id = 'wh_a'",
            &[],
        )
        .await
        .unwrap();
    // A sync does not re-enable what the endpoint itself disabled.
    let states = store.sync_webhook_endpoints(std::slice::from_ref(&a), at(10 * SECOND)).await.unwrap();
    assert!(states.iter().find(|e| e.id == "wh_a").unwrap().disabled_at.is_some());
    assert!(store.enable_webhook_endpoint("wh_a").await.unwrap());
    let a_state = store.webhook_endpoints().await.unwrap().into_iter().find(|e| e.id == "wh_a").unwrap();
    assert_eq!((a_state.disabled_at, a_state.disabled_reason), (None, None));
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Fan-out

#[tokio::test]
async fn fan_out_filters_by_type_and_tenant_in_batches_and_advances_cursors() {
    let Some(db) = TestDb::create("fan_out_filters_by_type_and_tenant_in_batches_and_advances_cursors").await else {
        return;
    };
    let store = db.store(4).await;
    let every = endpoint("wh_all", &[], None);
    let deletes = endpoint("wh_del", &["record.deleted"], None);
    let t2 = endpoint("wh_t2", &[], Some("t2"));
    let configured = [every.clone(), deletes.clone(), t2.clone()];
    store.sync_webhook_endpoints(&configured, at(0)).await.unwrap();
    // Nothing to do: an idle pass creates nothing and moves nothing.
    assert_eq!(store.fan_out_webhooks(&configured, at(0), 10).await.unwrap(), 0);

    // 6 events: t1 update, t2 delete, t1 delete, t2 update, t1 delete, t2 delete.
    let kinds = [EventType::Updated, EventType::Deleted];
    let events: Vec<NewEvent> =
        (1..=6).map(|n| event(kinds[usize::from(n % 3 != 1)], if n % 2 == 1 { "t1" } else { "t2" }, "r", n)).collect();
    let expected_kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let (first, last) = append(&store, events).await;
    assert_eq!(last - first, 5);

    // At most 4 events per endpoint per pass.
    let created = store.fan_out_webhooks(&configured, at(10 * SECOND), 4).await.unwrap();
    let seqs_of = |rows: &[(String, i64, String)], id: &str| -> Vec<i64> {
        rows.iter().filter(|r| r.0 == id).map(|r| r.1).collect()
    };
    let rows = deliveries(&db).await;
    assert_eq!(seqs_of(&rows, "wh_all"), (first..first + 4).collect::<Vec<_>>());
    let deleted: Vec<i64> =
        (first..=last).filter(|s| expected_kinds[usize::try_from(s - first).unwrap()] == "record.deleted").collect();
    assert_eq!(seqs_of(&rows, "wh_del"), deleted.iter().copied().filter(|s| *s < first + 4).collect::<Vec<_>>());
    let even: Vec<i64> = (first..=last).filter(|s| (s - first) % 2 == 1).collect(); // t2's events
    assert_eq!(seqs_of(&rows, "wh_t2"), even.iter().copied().filter(|s| *s < first + 4).collect::<Vec<_>>());
    assert_eq!(created, u64::try_from(rows.len()).unwrap());
    for e in &configured {
        assert_eq!(cursor(&store, &e.id).await, first + 3, "{} advanced past the batch, filtered or not", e.id);
    }

    // The rest on the next pass; then nothing more, and no delivery twice.
    let more = store.fan_out_webhooks(&configured, at(11 * SECOND), 4).await.unwrap();
    let rows = deliveries(&db).await;
    assert_eq!(created + more, u64::try_from(rows.len()).unwrap());
    assert_eq!(seqs_of(&rows, "wh_all"), (first..=last).collect::<Vec<_>>());
    assert_eq!(seqs_of(&rows, "wh_del"), deleted);
    assert_eq!(seqs_of(&rows, "wh_t2"), even);
    assert_eq!(store.fan_out_webhooks(&configured, at(12 * SECOND), 4).await.unwrap(), 0);
    assert_eq!(deliveries(&db).await.len(), rows.len());
    for e in &configured {
        assert_eq!(cursor(&store, &e.id).await, last);
    }

    // Each delivery carries its event and lane; it is pending, due at once.
    let listed = store.list_deliveries("t2", &all()).await.unwrap();
    let d = listed.iter().find(|d| d.endpoint_id == "wh_t2" && d.event_seq == first + 1).unwrap();
    assert_eq!((d.event_type.as_str(), d.tenant.as_str(), d.status.as_str()), ("record.deleted", "t2", "pending"));
    assert_eq!((d.attempts, d.next_attempt_at, d.created_at), (0, at(10 * SECOND), at(10 * SECOND)));
    let event_id: String =
        db.client().await.query_one("select id from outbox where seq = $1", &[&d.event_seq]).await.unwrap().get(0);
    assert_eq!(d.event_id, event_id);

    // A disabled endpoint and one not in the list passed are not fanned out.
    append(&store, vec![event(EventType::Updated, "t1", "r9", 7)]).await;
    db.client().await.execute("update webhook_endpoints set disabled_at = 1 where id = 'wh_all'", &[]).await.unwrap();
    assert_eq!(store.fan_out_webhooks(&[every.clone(), deletes.clone()], at(13 * SECOND), 4).await.unwrap(), 0);
    assert_eq!(cursor(&store, "wh_all").await, last, "a disabled endpoint's cursor stays");
    assert_eq!(cursor(&store, "wh_del").await, last + 1, "filtered out, but passed");
    assert_eq!(cursor(&store, "wh_t2").await, last, "not asked");
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_fan_outs_never_create_a_delivery_twice() {
    let Some(db) = TestDb::create("concurrent_fan_outs_never_create_a_delivery_twice").await else { return };
    let store = db.store(8).await;
    let configured = vec![endpoint("wh_a", &[], None), endpoint("wh_b", &[], None), endpoint("wh_c", &[], Some("t1"))];
    store.sync_webhook_endpoints(&configured, at(0)).await.unwrap();
    let mut t1_events = 0;
    for chunk in 0..10 {
        let events: Vec<NewEvent> = (0..30)
            .map(|i| {
                let n = chunk * 30 + i;
                event(EventType::Updated, if n % 3 == 0 { "t2" } else { "t1" }, &format!("r{}", n % 7), n)
            })
            .collect();
        t1_events += events.iter().filter(|e| e.tenant == "t1").count();
        append(&store, events).await;
    }
    // Four replicas' relays fan out at once, in small batches, until none has work.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, configured) = (store.clone(), configured.clone());
        tasks.push(tokio::spawn(async move {
            let mut created = 0;
            loop {
                let n = store.fan_out_webhooks(&configured, at(SECOND), 7).await.expect("fan out");
                created += n;
                if n == 0 && !behind(&store, &configured).await {
                    return created;
                }
            }
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap();
    }
    let rows = deliveries(&db).await;
    let distinct: HashSet<(String, i64)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(distinct.len(), rows.len(), "a delivery was created twice");
    assert_eq!(created, u64::try_from(rows.len()).unwrap(), "the counts of the passes add up to the rows");
    let count = |id: &str| rows.iter().filter(|r| r.0 == id).count();
    assert_eq!((count("wh_a"), count("wh_b"), count("wh_c")), (300, 300, t1_events));
    db.drop_db().await;
}

/// Whether any of these endpoints has events left to fan out.
async fn behind(store: &PgStore, configured: &[WebhookEndpoint]) -> bool {
    let newest = store.last_event_seq().await.unwrap();
    let states = store.webhook_endpoints().await.unwrap();
    configured.iter().any(|e| states.iter().any(|s| s.id == e.id && s.cursor < newest))
}

#[tokio::test]
async fn a_fan_out_waits_for_the_endpoint_lock_and_starts_after_the_cursor_committed_meanwhile() {
    let Some(db) =
        TestDb::create("a_fan_out_waits_for_the_endpoint_lock_and_starts_after_the_cursor_committed_meanwhile").await
    else {
        return;
    };
    let store = db.store(4).await;
    let configured = vec![endpoint("wh_a", &[], None)];
    store.sync_webhook_endpoints(&configured, at(0)).await.unwrap();
    let (first, last) = append(&store, (1..=10).map(|n| event(EventType::Updated, "t1", "r", n)).collect()).await;

    // Another replica's fan-out holds the endpoint: it has delivered the first 6 events.
    let mut other = db.client().await;
    let other_tx = other.transaction().await.unwrap();
    other_tx.query_one("select cursor from webhook_endpoints where id = 'wh_a' for update", &[]).await.unwrap();
    let ours = tokio::spawn({
        let (store, configured) = (store.clone(), configured.clone());
        async move { store.fan_out_webhooks(&configured, at(SECOND), 100).await }
    });
    // Ours waits on the row lock (seen in pg_stat_activity, not guessed by sleeping long).
    let observer = db.client().await;
    let mut waited = false;
    for _ in 0..500 {
        let n: i64 = observer
            .query_one(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock' and query like '%for update%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waited, "the fan-out did not wait for the endpoint lock");
    assert!(!ours.is_finished());
    let moved = first + 5;
    other_tx
        .execute(
            "insert into webhook_deliveries (id, endpoint_id, event_seq, event_id, event_type, tenant, record_key, status, attempts, next_attempt_at, created_at)
             select 'dlv_other_' || seq, 'wh_a', seq, id, type, tenant, tenant || '/' || collection || '/' || record_id, 'pending', 0, 0, 0
             from outbox where seq <= $1",
            &[&moved],
        )
        .await
        .unwrap();
    other_tx.execute("update webhook_endpoints set cursor = $1 where id = 'wh_a'", &[&moved]).await.unwrap();
    other_tx.commit().await.unwrap();

    // Ours read the committed cursor and made only the deliveries after it.
    assert_eq!(ours.await.unwrap().unwrap(), u64::try_from(last - moved).unwrap());
    let rows = deliveries(&db).await;
    assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), (first..=last).collect::<Vec<_>>());
    assert_eq!(cursor(&store, "wh_a").await, last);
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Due deliveries and attempts

#[tokio::test]
async fn due_deliveries_are_the_oldest_pending_of_each_lane_with_their_event() {
    let Some(db) = TestDb::create("due_deliveries_are_the_oldest_pending_of_each_lane_with_their_event").await else {
        return;
    };
    let store = db.store(4).await;
    let configured = vec![endpoint("wh_a", &[], None), endpoint("wh_b", &[], None)];
    store.sync_webhook_endpoints(&configured, at(0)).await.unwrap();
    // r1 twice in t1, r2 once in t1, r1 once in t2 (another tenant's record, its own lane).
    let (s1, _) = append(&store, vec![event(EventType::Created, "t1", "r1", 1)]).await;
    let (s2, _) = append(&store, vec![event(EventType::Updated, "t1", "r1", 2)]).await;
    let (s3, _) = append(&store, vec![event(EventType::Created, "t1", "r2", 3)]).await;
    let (s4, _) = append(&store, vec![event(EventType::Created, "t2", "r1", 4)]).await;
    store.fan_out_webhooks(&configured, at(5 * SECOND), 100).await.unwrap();

    let due = store.due_deliveries(at(5 * SECOND), 100).await.unwrap();
    let keys: Vec<(String, i64)> = due.iter().map(|d| (d.delivery.endpoint_id.clone(), d.delivery.event_seq)).collect();
    let expected: Vec<(String, i64)> =
        [s1, s3, s4].iter().flat_map(|s| [("wh_a".to_string(), *s), ("wh_b".to_string(), *s)]).collect();
    assert_eq!(keys, expected, "oldest event first; r1's second event waits behind its first");
    // The event comes along, its data as written.
    let e = due[0].event.as_ref().expect("event");
    assert_eq!((e.seq, e.kind.as_str(), e.tenant.as_str(), e.record_id.as_str()), (s1, "record.created", "t1", "r1"));
    assert_eq!(e.data, Some(serde_json::json!({ "z": 1, "a": "r1" })));
    assert_eq!((e.version, e.request_id.as_deref(), e.occurred_at), (Some(1), Some("req_1"), at(SECOND)));
    assert_eq!(e.id, due[0].delivery.event_id);
    // The limit.
    assert_eq!(store.due_deliveries(at(5 * SECOND), 2).await.unwrap().len(), 2);
    // Not yet due: nothing.
    assert!(store.due_deliveries(at(4 * SECOND), 100).await.unwrap().is_empty());

    // wh_a's first r1 delivery is retried later: the lane stays blocked behind it at wh_a
    // only; at wh_b it is delivered, and the next of the lane becomes due.
    let first_of =
        |ep: &str, seq: i64| due.iter().find(|d| d.delivery.endpoint_id == ep && d.delivery.event_seq == seq);
    let a1 = first_of("wh_a", s1).unwrap().delivery.id.clone();
    let b1 = first_of("wh_b", s1).unwrap().delivery.id.clone();
    let retry =
        AttemptOutcome::Retry { status: Some(503), error: DeliveryError::Http(503), next_attempt_at: at(60 * SECOND) };
    store.record_attempt(&a1, at(6 * SECOND), retry).await.unwrap();
    store.record_attempt(&b1, at(6 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    let due = store.due_deliveries(at(7 * SECOND), 100).await.unwrap();
    let keys: Vec<(String, i64)> = due.iter().map(|d| (d.delivery.endpoint_id.clone(), d.delivery.event_seq)).collect();
    assert_eq!(
        keys,
        [("wh_b", s2), ("wh_a", s3), ("wh_b", s3), ("wh_a", s4), ("wh_b", s4)]
            .map(|(e, s)| (e.to_string(), s))
            .to_vec()
    );
    // Once its time comes, wh_a's retry is due again (and still ahead of r1's second).
    let due = store.due_deliveries(at(60 * SECOND), 100).await.unwrap();
    assert!(due.iter().any(|d| d.delivery.id == a1));
    assert!(!due.iter().any(|d| d.delivery.endpoint_id == "wh_a" && d.delivery.event_seq == s2));

    // An event cleaned out of the outbox: its delivery still comes, without the event.
    db.client().await.execute("delete from outbox where seq = $1", &[&s3]).await.unwrap();
    let due = store.due_deliveries(at(60 * SECOND), 100).await.unwrap();
    let gone: Vec<_> = due.iter().filter(|d| d.delivery.event_seq == s3).collect();
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|d| d.event.is_none()));
    assert!(due.iter().filter(|d| d.delivery.event_seq != s3).all(|d| d.event.is_some()));
    db.drop_db().await;
}

#[tokio::test]
async fn record_attempt_stores_every_outcome() {
    let Some(db) = TestDb::create("record_attempt_stores_every_outcome").await else { return };
    let store = db.store(4).await;
    let configured = vec![endpoint("wh_a", &[], None), endpoint("wh_b", &[], None)];
    store.sync_webhook_endpoints(&configured, at(0)).await.unwrap();
    append(&store, (1..=5).map(|n| event(EventType::Updated, "t1", &format!("r{n}"), n)).collect()).await;
    store.fan_out_webhooks(&configured, at(SECOND), 100).await.unwrap();
    let listed = store.list_deliveries("t1", &all()).await.unwrap();
    let ids: Vec<String> = listed.iter().filter(|d| d.endpoint_id == "wh_a").map(|d| d.id.clone()).collect();
    let get = |id: &str| {
        let store = store.clone();
        let id = id.to_string();
        async move { store.list_deliveries("t1", &all()).await.unwrap().into_iter().find(|d| d.id == id).unwrap() }
    };

    store.record_attempt(&ids[0], at(2 * SECOND), AttemptOutcome::Delivered { status: 204 }).await.unwrap();
    let d = get(&ids[0]).await;
    assert_eq!((d.status.as_str(), d.attempts, d.last_status, d.last_error), ("delivered", 1, Some(204), None));
    assert_eq!((d.last_attempt_at, d.delivered_at), (Some(at(2 * SECOND)), Some(at(2 * SECOND))));

    let retry = AttemptOutcome::Retry { status: None, error: DeliveryError::Timeout, next_attempt_at: at(30 * SECOND) };
    store.record_attempt(&ids[1], at(3 * SECOND), retry.clone()).await.unwrap();
    store.record_attempt(&ids[1], at(4 * SECOND), retry).await.unwrap();
    let d = get(&ids[1]).await;
    assert_eq!(
        (d.status.as_str(), d.attempts, d.last_status, d.last_error.as_deref()),
        ("pending", 2, None, Some("timeout"))
    );
    assert_eq!((d.last_attempt_at, d.next_attempt_at, d.delivered_at), (Some(at(4 * SECOND)), at(30 * SECOND), None));

    let give_up = AttemptOutcome::GiveUp { status: Some(500), error: DeliveryError::Http(500) };
    store.record_attempt(&ids[2], at(5 * SECOND), give_up).await.unwrap();
    let d = get(&ids[2]).await;
    assert_eq!(
        (d.status.as_str(), d.attempts, d.last_status, d.last_error.as_deref()),
        ("failed", 1, Some(500), Some("http 500"))
    );

    // Cancelling touches only a pending delivery, and counts no attempt.
    let cancel = AttemptOutcome::Cancelled { error: DeliveryError::EventGone };
    store.record_attempt(&ids[3], at(6 * SECOND), cancel.clone()).await.unwrap();
    let d = get(&ids[3]).await;
    assert_eq!((d.status.as_str(), d.attempts, d.last_error.as_deref()), ("cancelled", 0, Some("event-gone")));
    store.record_attempt(&ids[0], at(6 * SECOND), cancel).await.unwrap();
    assert_eq!(get(&ids[0]).await.status, "delivered");

    // 410: the endpoint is disabled, its pending deliveries cancelled (keeping an earlier
    // error), the other endpoint's untouched.
    store.record_attempt(&ids[4], at(7 * SECOND), AttemptOutcome::EndpointGone).await.unwrap();
    let d = get(&ids[4]).await;
    assert_eq!(
        (d.status.as_str(), d.attempts, d.last_status, d.last_error.as_deref()),
        ("cancelled", 1, Some(410), Some("http 410"))
    );
    let d = get(&ids[1]).await;
    assert_eq!((d.status.as_str(), d.last_error.as_deref()), ("cancelled", Some("timeout")));
    let a = store.webhook_endpoints().await.unwrap().into_iter().find(|e| e.id == "wh_a").unwrap();
    assert_eq!((a.disabled_at, a.disabled_reason.as_deref()), (Some(at(7 * SECOND)), Some("answered 410 Gone")));
    let rows = store.list_deliveries("t1", &all()).await.unwrap();
    assert!(rows.iter().filter(|d| d.endpoint_id == "wh_b").all(|d| d.status == "pending"));
    // Unknown deliveries change nothing and are no error.
    store.record_attempt("dlv_unknown", at(8 * SECOND), AttemptOutcome::EndpointGone).await.unwrap();
    store.record_attempt("dlv_unknown", at(8 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    assert_eq!(store.list_deliveries("t1", &all()).await.unwrap(), rows);
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Listing, redelivery, backlog

#[tokio::test]
async fn deliveries_are_listed_per_tenant_with_filters_and_a_cursor() {
    let Some(db) = TestDb::create("deliveries_are_listed_per_tenant_with_filters_and_a_cursor").await else { return };
    let store = db.store(4).await;
    let configured = vec![endpoint("wh_a", &[], None), endpoint("wh_b", &[], None)];
    store.sync_webhook_endpoints(&configured, at(0)).await.unwrap();
    append(&store, (1..=6).map(|n| event(EventType::Updated, if n <= 4 { "t1" } else { "t2" }, "r", n)).collect())
        .await;
    store.fan_out_webhooks(&configured, at(SECOND), 100).await.unwrap();

    let t1 = store.list_deliveries("t1", &all()).await.unwrap();
    assert_eq!(t1.len(), 8);
    assert!(t1.iter().all(|d| d.tenant == "t1"), "another tenant's delivery listed");
    assert!(t1.windows(2).all(|w| w[0].id < w[1].id), "not in id order");
    // Ids are time-ordered: within one fan-out, oldest event first per endpoint.
    let a: Vec<i64> = t1.iter().filter(|d| d.endpoint_id == "wh_a").map(|d| d.event_seq).collect();
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(store.list_deliveries("t2", &all()).await.unwrap().len(), 4);
    assert!(store.list_deliveries("t3", &all()).await.unwrap().is_empty());

    let by_endpoint = DeliveryQuery { endpoint_id: Some("wh_b".into()), limit: 100, ..DeliveryQuery::default() };
    let b = store.list_deliveries("t1", &by_endpoint).await.unwrap();
    assert_eq!(b.len(), 4);
    assert!(b.iter().all(|d| d.endpoint_id == "wh_b"));

    store.record_attempt(&t1[0].id, at(2 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    let delivered = DeliveryQuery { status: Some("delivered".into()), limit: 100, ..DeliveryQuery::default() };
    assert_eq!(
        store.list_deliveries("t1", &delivered).await.unwrap().iter().map(|d| &d.id).collect::<Vec<_>>(),
        [&t1[0].id]
    );
    assert!(store.list_deliveries("t2", &delivered).await.unwrap().is_empty());
    let both = DeliveryQuery {
        status: Some("pending".into()),
        endpoint_id: Some("wh_b".into()),
        limit: 100,
        ..DeliveryQuery::default()
    };
    assert_eq!(store.list_deliveries("t1", &both).await.unwrap().len(), 4 - usize::from(t1[0].endpoint_id == "wh_b"));

    // Pages of 3 after a cursor cover the listing exactly once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_deliveries("t1", &DeliveryQuery { after: after.clone(), limit: 3, ..DeliveryQuery::default() })
            .await
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        seen.extend(page.into_iter().map(|d| d.id));
    }
    let all_ids: Vec<String> = store.list_deliveries("t1", &all()).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(seen, all_ids);
    db.drop_db().await;
}

#[tokio::test]
async fn redeliver_makes_a_delivery_pending_unless_its_event_or_endpoint_is_gone() {
    let Some(db) = TestDb::create("redeliver_makes_a_delivery_pending_unless_its_event_or_endpoint_is_gone").await
    else {
        return;
    };
    let store = db.store(4).await;
    let (a, b) = (endpoint("wh_a", &[], None), endpoint("wh_b", &[], None));
    store.sync_webhook_endpoints(&[a.clone(), b.clone()], at(0)).await.unwrap();
    let (s1, _) = append(&store, vec![event(EventType::Updated, "t1", "r1", 1)]).await;
    let (s2, _) = append(&store, vec![event(EventType::Updated, "t1", "r2", 2)]).await;
    store.fan_out_webhooks(&[a.clone(), b.clone()], at(SECOND), 100).await.unwrap();
    let listed = store.list_deliveries("t1", &all()).await.unwrap();
    let find =
        |ep: &str, seq: i64| listed.iter().find(|d| d.endpoint_id == ep && d.event_seq == seq).unwrap().id.clone();
    let (a1, a2, b1) = (find("wh_a", s1), find("wh_a", s2), find("wh_b", s1));
    store
        .record_attempt(
            &a1,
            at(2 * SECOND),
            AttemptOutcome::GiveUp { status: Some(500), error: DeliveryError::Http(500) },
        )
        .await
        .unwrap();

    // A failed delivery is pending again, due now, its history kept.
    let Redelivery::Pending(d) = store.redeliver("t1", &a1, at(100 * SECOND)).await.unwrap() else {
        panic!("not pending")
    };
    assert_eq!(
        (d.id.as_str(), d.status.as_str(), d.next_attempt_at, d.attempts),
        (a1.as_str(), "pending", at(100 * SECOND), 1)
    );
    assert_eq!(d.last_error.as_deref(), Some("http 500"));
    assert!(store.due_deliveries(at(100 * SECOND), 100).await.unwrap().iter().any(|x| x.delivery.id == a1));

    // Another tenant's, or an unknown one: not found.
    assert_eq!(store.redeliver("t2", &a1, at(101 * SECOND)).await.unwrap(), Redelivery::NotFound);
    assert_eq!(store.redeliver("t1", "dlv_nope", at(101 * SECOND)).await.unwrap(), Redelivery::NotFound);

    // Its event cleaned out: gone, and nothing changes.
    store.record_attempt(&a2, at(3 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    db.client().await.execute("delete from outbox where seq = $1", &[&s2]).await.unwrap();
    assert_eq!(store.redeliver("t1", &a2, at(102 * SECOND)).await.unwrap(), Redelivery::EventGone);
    let d = store.list_deliveries("t1", &all()).await.unwrap().into_iter().find(|d| d.id == a2).unwrap();
    assert_eq!(d.status, "delivered");

    // Its endpoint left the config.
    store.sync_webhook_endpoints(std::slice::from_ref(&a), at(103 * SECOND)).await.unwrap();
    assert_eq!(store.redeliver("t1", &b1, at(104 * SECOND)).await.unwrap(), Redelivery::EndpointRemoved);
    let d = store.list_deliveries("t1", &all()).await.unwrap().into_iter().find(|d| d.id == b1).unwrap();
    assert_eq!(d.status, "cancelled");
    db.drop_db().await;
}

#[tokio::test]
async fn the_backlog_counts_pending_deliveries_of_configured_endpoints() {
    let Some(db) = TestDb::create("the_backlog_counts_pending_deliveries_of_configured_endpoints").await else {
        return;
    };
    let store = db.store(4).await;
    let (a, b) = (endpoint("wh_a", &[], None), endpoint("wh_b", &[], None));
    store.sync_webhook_endpoints(&[a.clone(), b.clone()], at(0)).await.unwrap();
    assert_eq!(store.webhook_backlog().await.unwrap(), 0);
    append(&store, (1..=3).map(|n| event(EventType::Updated, "t1", "r", n)).collect()).await;
    store.fan_out_webhooks(&[a.clone(), b.clone()], at(SECOND), 100).await.unwrap();
    assert_eq!(store.webhook_backlog().await.unwrap(), 6);
    let first = store.list_deliveries("t1", &all()).await.unwrap()[0].id.clone();
    store.record_attempt(&first, at(2 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    assert_eq!(store.webhook_backlog().await.unwrap(), 5);
    // A removed endpoint's deliveries do not count, even one left pending by hand.
    store.sync_webhook_endpoints(std::slice::from_ref(&a), at(3 * SECOND)).await.unwrap();
    db.client()
        .await
        .execute("update webhook_deliveries set status = 'pending' where endpoint_id = 'wh_b'", &[])
        .await
        .unwrap();
    let a_pending = store
        .list_deliveries(
            "t1",
            &DeliveryQuery {
                endpoint_id: Some("wh_a".into()),
                status: Some("pending".into()),
                limit: 100,
                ..DeliveryQuery::default()
            },
        )
        .await
        .unwrap()
        .len();
    assert_eq!(store.webhook_backlog().await.unwrap(), u64::try_from(a_pending).unwrap());
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Outbox clean-up

async fn outbox_seqs(db: &TestDb) -> Vec<i64> {
    db.client()
        .await
        .query("select seq from outbox order by seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn cleanup_deletes_only_old_fanned_out_events_no_pending_delivery_needs() {
    let Some(db) = TestDb::create("cleanup_deletes_only_old_fanned_out_events_no_pending_delivery_needs").await else {
        return;
    };
    let store = db.store(4).await;
    // Without endpoints, old events go, except the newest.
    let (first, last) = append(&store, (1..=5).map(|n| event(EventType::Updated, "t1", "r", n)).collect()).await;
    assert_eq!(store.cleanup_outbox(at(3 * SECOND), 100).await.unwrap(), 2, "occurred before the cutoff only");
    assert_eq!(outbox_seqs(&db).await, (first + 2..=last).collect::<Vec<_>>());
    assert_eq!(store.cleanup_outbox(at(HOUR), 100).await.unwrap(), 2);
    assert_eq!(outbox_seqs(&db).await, [last], "the newest event stays");
    assert_eq!(store.last_event_seq().await.unwrap(), last);

    // Endpoints: a (enabled), b (will lag), c (disabled), d (removed).
    let ends: Vec<WebhookEndpoint> =
        ["wh_a", "wh_b", "wh_c", "wh_d"].iter().map(|id| endpoint(id, &[], None)).collect();
    store.sync_webhook_endpoints(&ends, at(0)).await.unwrap();
    let (f2, l2) =
        append(&store, (10..20).map(|n| event(EventType::Updated, "t1", &format!("r{n}"), n)).collect()).await;
    // a fans out all; b only 4 events, c only 1 before it is disabled; d is gone from the
    // config first. Neither c nor d holds the clean-up back.
    store.sync_webhook_endpoints(&ends[..3], at(SECOND)).await.unwrap();
    store.fan_out_webhooks(&[ends[0].clone()], at(SECOND), 100).await.unwrap();
    store.fan_out_webhooks(&[ends[1].clone()], at(SECOND), 4).await.unwrap();
    store.fan_out_webhooks(&[ends[2].clone()], at(SECOND), 1).await.unwrap();
    db.client().await.execute("update webhook_endpoints set disabled_at = 1 where id = 'wh_c'", &[]).await.unwrap();
    // Deliver everything except a's delivery of the 2nd event (f2 + 1): it stays pending.
    let listed = store.list_deliveries("t1", &all()).await.unwrap();
    for d in listed.iter().filter(|d| !(d.endpoint_id == "wh_a" && d.event_seq == f2 + 1)) {
        store.record_attempt(&d.id, at(2 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    }
    // Up to b's cursor (f2 + 3), but not the one a pending delivery needs; the previous
    // newest (last) goes now, it is no longer the newest.
    let removed = store.cleanup_outbox(at(HOUR), 100).await.unwrap();
    assert_eq!(removed, 4, "last, f2, f2+2, f2+3");
    assert_eq!(outbox_seqs(&db).await, [vec![f2 + 1], (f2 + 4..=l2).collect()].concat());

    // The limit, oldest first.
    store.fan_out_webhooks(&[ends[1].clone()], at(3 * SECOND), 100).await.unwrap();
    let pending_b: Vec<String> = store
        .list_deliveries(
            "t1",
            &DeliveryQuery {
                endpoint_id: Some("wh_b".into()),
                status: Some("pending".into()),
                limit: 100,
                ..DeliveryQuery::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    for id in &pending_b {
        store.record_attempt(id, at(4 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    }
    assert_eq!(store.cleanup_outbox(at(HOUR), 2).await.unwrap(), 2);
    assert_eq!(outbox_seqs(&db).await, [vec![f2 + 1], (f2 + 6..=l2).collect()].concat());
    // Once a's delivery is done, its event goes too; the newest never.
    let a2 = listed.iter().find(|d| d.endpoint_id == "wh_a" && d.event_seq == f2 + 1).unwrap().id.clone();
    store.record_attempt(&a2, at(5 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    assert_eq!(store.cleanup_outbox(at(HOUR), 100).await.unwrap(), u64::try_from(l2 - (f2 + 6)).unwrap() + 1);
    assert_eq!(outbox_seqs(&db).await, [l2]);
    db.drop_db().await;
}

#[tokio::test]
async fn a_redelivery_and_a_cleanup_racing_never_leave_a_pending_delivery_without_its_event() {
    let Some(db) =
        TestDb::create("a_redelivery_and_a_cleanup_racing_never_leave_a_pending_delivery_without_its_event").await
    else {
        return;
    };
    let store = db.store(8).await;
    let a = endpoint("wh_a", &[], None);
    store.sync_webhook_endpoints(std::slice::from_ref(&a), at(0)).await.unwrap();
    append(&store, (1..=60).map(|n| event(EventType::Updated, "t1", &format!("r{n}"), n)).collect()).await;
    store.fan_out_webhooks(std::slice::from_ref(&a), at(SECOND), 100).await.unwrap();
    let listed = store.list_deliveries("t1", &all()).await.unwrap();
    for d in &listed {
        store.record_attempt(&d.id, at(2 * SECOND), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
    }
    // Every delivery is redelivered while clean-ups run in small batches.
    let mut tasks = Vec::new();
    for chunk in listed.chunks(10) {
        let (store, ids) = (store.clone(), chunk.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
        tasks.push(tokio::spawn(async move {
            for id in ids {
                store.redeliver("t1", &id, at(3 * SECOND)).await.expect("redeliver");
            }
        }));
    }
    for _ in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                store.cleanup_outbox(at(HOUR), 3).await.expect("clean up");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let orphans: i64 = db
        .client()
        .await
        .query_one(
            "select count(*) from webhook_deliveries d
             where d.status = 'pending' and not exists (select 1 from outbox o where o.seq = d.event_seq)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "a pending delivery lost its event");
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Idempotency keys

fn key(tenant: &str, api_key: &str, k: &str) -> IdempotencyKey {
    IdempotencyKey { tenant: tenant.to_string(), api_key: api_key.to_string(), key: k.to_string() }
}

fn response(id: &str) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![("location".into(), format!("/v1/customers/{id}")), ("etag".into(), "\"v1\"".into())],
        body: format!("{{\"id\":\"{id}\"}}"),
        record: Some(("customers".into(), id.to_string())),
    }
}

/// Completes `k` inside a write transaction that also appends an event; commits it, or
/// rolls it back when `commit` is false.
async fn complete_in_write(
    store: &PgStore,
    k: &IdempotencyKey,
    r: &StoredResponse,
    commit: bool,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let mut tx = store.transaction(&mut client).await?;
    tx.append_events(vec![event(EventType::Created, &k.tenant, "c1", 1)]).await?;
    tx.complete_idempotency(k, r).await?;
    if commit { tx.commit().await } else { tx.rollback().await }
}

#[tokio::test]
async fn idempotency_claim_in_flight_complete_replay_release_and_takeover() {
    let Some(db) = TestDb::create("idempotency_claim_in_flight_complete_replay_release_and_takeover").await else {
        return;
    };
    let store = db.store(4).await;
    let k = key("t1", "key_1", "abc");
    assert_eq!(store.claim_idempotency(&k, "fp1", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    assert_eq!(store.claim_idempotency(&k, "fp1", at(SECOND)).await.unwrap(), IdempotencyClaim::InFlight);
    assert_eq!(store.claim_idempotency(&k, "fp2", at(SECOND)).await.unwrap(), IdempotencyClaim::Mismatch);
    // The same key string is another key for another api key or tenant.
    assert_eq!(
        store.claim_idempotency(&key("t1", "key_2", "abc"), "fp1", at(2)).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        store.claim_idempotency(&key("t2", "key_1", "abc"), "fp1", at(2)).await.unwrap(),
        IdempotencyClaim::Claimed
    );

    // A write whose transaction rolls back leaves the key in flight, and its retry's
    // answer can still complete it; a committed write's answer is replayed.
    complete_in_write(&store, &k, &response("c0"), false).await.unwrap();
    assert_eq!(store.claim_idempotency(&k, "fp1", at(3)).await.unwrap(), IdempotencyClaim::InFlight);
    complete_in_write(&store, &k, &response("c1"), true).await.unwrap();
    assert_eq!(store.claim_idempotency(&k, "fp1", at(4)).await.unwrap(), IdempotencyClaim::Replay(response("c1")));
    assert_eq!(store.claim_idempotency(&k, "fp2", at(4)).await.unwrap(), IdempotencyClaim::Mismatch);
    // Answered: a second completion is a conflict, and changes nothing.
    let r = complete_in_write(&store, &k, &response("c2"), true).await;
    assert!(matches!(r, Err(StoreError::IdempotencyConflict)), "{r:?}");
    let r = store.complete_idempotency(&k, response("c2")).await;
    assert!(matches!(r, Err(StoreError::IdempotencyConflict)), "{r:?}");
    // Still a replay just inside 24 h, even after the stale-claim delay; new after.
    assert_eq!(
        store.claim_idempotency(&k, "fp1", at(IDEMPOTENCY_TTL_MICROS - 1)).await.unwrap(),
        IdempotencyClaim::Replay(response("c1"))
    );
    assert_eq!(
        store.claim_idempotency(&k, "fp2", at(IDEMPOTENCY_TTL_MICROS + 1)).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        store.claim_idempotency(&k, "fp2", at(IDEMPOTENCY_TTL_MICROS + 2)).await.unwrap(),
        IdempotencyClaim::InFlight
    );

    // An error answer is completed on its own and replayed, headers and all.
    let k2 = key("t1", "key_1", "dup");
    assert_eq!(store.claim_idempotency(&k2, "fpd", at(10)).await.unwrap(), IdempotencyClaim::Claimed);
    let problem = StoredResponse {
        status: 409,
        headers: vec![("content-type".into(), "application/problem+json".into())],
        body: "{\"type\":\"unique-conflict\"}".into(),
        record: None,
    };
    store.complete_idempotency(&k2, problem.clone()).await.unwrap();
    assert_eq!(store.claim_idempotency(&k2, "fpd", at(13)).await.unwrap(), IdempotencyClaim::Replay(problem));
    // Releasing a completed key does not forget its response.
    store.release_idempotency(&k2).await.unwrap();
    assert!(matches!(store.claim_idempotency(&k2, "fpd", at(30)).await.unwrap(), IdempotencyClaim::Replay(_)));

    // A released claim can be retried at once; an abandoned one is taken over once stale.
    let k3 = key("t1", "key_1", "retry");
    assert_eq!(store.claim_idempotency(&k3, "fpr", at(20)).await.unwrap(), IdempotencyClaim::Claimed);
    store.release_idempotency(&k3).await.unwrap();
    assert_eq!(store.claim_idempotency(&k3, "fpr", at(21)).await.unwrap(), IdempotencyClaim::Claimed);
    assert_eq!(
        store.claim_idempotency(&k3, "fpr", at(21 + IDEMPOTENCY_STALE_MICROS - 1)).await.unwrap(),
        IdempotencyClaim::InFlight
    );
    assert_eq!(
        store.claim_idempotency(&k3, "other", at(21 + IDEMPOTENCY_STALE_MICROS - 1)).await.unwrap(),
        IdempotencyClaim::Mismatch
    );
    assert_eq!(
        store.claim_idempotency(&k3, "fpr", at(21 + IDEMPOTENCY_STALE_MICROS + 1)).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    // Completing a key never claimed is a conflict.
    let r = store.complete_idempotency(&key("t1", "key_1", "never"), response("x")).await;
    assert!(matches!(r, Err(StoreError::IdempotencyConflict)), "{r:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn idempotency_claims_are_shared_by_replicas_and_taken_over_only_once_stale() {
    let Some(db) = TestDb::create("idempotency_claims_are_shared_by_replicas_and_taken_over_only_once_stale").await
    else {
        return;
    };
    let (a, b) = (db.store(2).await, db.store(2).await);
    let k = key("t1", "key_1", "shared");
    // Claimed on one replica: running on the other, and a mismatch there with another body.
    assert_eq!(a.claim_idempotency(&k, "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    assert_eq!(b.claim_idempotency(&k, "fp", at(SECOND)).await.unwrap(), IdempotencyClaim::InFlight);
    assert_eq!(b.claim_idempotency(&k, "fp2", at(SECOND)).await.unwrap(), IdempotencyClaim::Mismatch);
    let row: (String, String, i64) = {
        let r = db
            .client()
            .await
            .query_one("select state, fingerprint, created_at from idempotency where key = 'shared'", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(row, ("in_flight".to_string(), "fp".to_string(), at(0).as_micros()), "the claim is a committed row");
    a.complete_idempotency(&k, response("c1")).await.unwrap();
    assert_eq!(b.claim_idempotency(&k, "fp", at(2 * SECOND)).await.unwrap(), IdempotencyClaim::Replay(response("c1")));

    // A claim left by a process that died (a row no process remembers): held until stale,
    // then taken over by the retry.
    let k2 = key("t1", "key_1", "orphan");
    db.client()
        .await
        .execute(
            "insert into idempotency (tenant, api_key, key, fingerprint, state, created_at) values ('t1', 'key_1', 'orphan', 'fp', 'in_flight', $1)",
            &[&at(0).as_micros()],
        )
        .await
        .unwrap();
    assert_eq!(a.claim_idempotency(&k2, "fp", at(SECOND)).await.unwrap(), IdempotencyClaim::InFlight);
    // This process never claimed it: it cannot complete or release it.
    assert!(matches!(a.complete_idempotency(&k2, response("x")).await, Err(StoreError::IdempotencyConflict)));
    a.release_idempotency(&k2).await.unwrap();
    assert_eq!(b.claim_idempotency(&k2, "fp", at(2 * SECOND)).await.unwrap(), IdempotencyClaim::InFlight);
    assert_eq!(
        b.claim_idempotency(&k2, "fp", at(IDEMPOTENCY_STALE_MICROS + 1)).await.unwrap(),
        IdempotencyClaim::Claimed
    );

    // Our claim, taken over by another replica once stale (another body, a later time):
    // our completion is refused, inside a write or on its own, and the takeover's row is
    // left as it was.
    let k3 = key("t1", "key_1", "slow");
    assert_eq!(a.claim_idempotency(&k3, "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    db.client()
        .await
        .execute(
            "update idempotency set fingerprint = 'theirs', created_at = $1 where key = 'slow'",
            &[&at(IDEMPOTENCY_STALE_MICROS + 5).as_micros()],
        )
        .await
        .unwrap();
    let r = complete_in_write(&a, &k3, &response("mine"), true).await;
    assert!(matches!(r, Err(StoreError::IdempotencyConflict)), "{r:?}");
    assert!(matches!(a.complete_idempotency(&k3, response("mine")).await, Err(StoreError::IdempotencyConflict)));
    a.release_idempotency(&k3).await.unwrap();
    let state: (String, String) = {
        let r = db
            .client()
            .await
            .query_one("select state, fingerprint from idempotency where key = 'slow'", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(state, ("in_flight".to_string(), "theirs".to_string()));
    // Answered first by another replica: refused too.
    let k4 = key("t1", "key_1", "raced");
    assert_eq!(a.claim_idempotency(&k4, "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    db.client()
        .await
        .execute("update idempotency set state = 'done', status = 201, body = '{}' where key = 'raced'", &[])
        .await
        .unwrap();
    assert!(matches!(complete_in_write(&a, &k4, &response("mine"), true).await, Err(StoreError::IdempotencyConflict)));
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_claims_of_one_key_have_one_winner() {
    let Some(db) = TestDb::create("concurrent_claims_of_one_key_have_one_winner").await else { return };
    let store = db.store(16).await;
    for round in 0..10 {
        let k = key("t1", "key_1", &format!("race-{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (store, k, barrier) = (store.clone(), k.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                // Each on its own connection, taken before the start line.
                let client = store.client().await.unwrap();
                barrier.wait().await;
                drop(client);
                store.claim_idempotency(&k, "fp", at(SECOND)).await.unwrap()
            }));
        }
        let mut claimed = 0;
        for t in tasks {
            match t.await.unwrap() {
                IdempotencyClaim::Claimed => claimed += 1,
                IdempotencyClaim::InFlight => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(claimed, 1, "round {round}: {claimed} requests claimed one key");
    }
    db.drop_db().await;
}

#[tokio::test]
async fn idempotency_keys_expire_after_24_hours() {
    let Some(db) = TestDb::create("idempotency_keys_expire_after_24_hours").await else { return };
    let store = db.store(4).await;
    let (old, young) = (key("t1", "key_1", "old"), key("t1", "key_1", "young"));
    assert_eq!(store.claim_idempotency(&old, "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
    store.complete_idempotency(&old, response("x")).await.unwrap();
    assert_eq!(store.claim_idempotency(&young, "fp", at(HOUR)).await.unwrap(), IdempotencyClaim::Claimed);
    store.complete_idempotency(&young, response("y")).await.unwrap();
    let now = at(IDEMPOTENCY_TTL_MICROS + SECOND);
    let removed = store.expire_idempotency(Timestamp::from_micros(now.as_micros() - IDEMPOTENCY_TTL_MICROS)).await;
    assert_eq!(removed.unwrap(), 1);
    let left: i64 = db.client().await.query_one("select count(*) from idempotency", &[]).await.unwrap().get(0);
    assert_eq!(left, 1);
    assert_eq!(store.claim_idempotency(&young, "fp", now).await.unwrap(), IdempotencyClaim::Replay(response("y")));
    // The expired key is new: another body is no mismatch any more.
    assert_eq!(store.claim_idempotency(&old, "other", now).await.unwrap(), IdempotencyClaim::Claimed);
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Parity with SQLite's store

/// One store or the other, behind the webhook methods (PostgreSQL's are inherent until its
/// store implements the traits).
enum Either {
    Sqlite(tombstone_store::SqliteStore),
    Pg(Arc<PgStore>),
}

/// A delivery without its id (each store makes its own): what must be equal.
type Shape = (
    String,
    i64,
    String,
    String,
    String,
    u32,
    Timestamp,
    Option<u16>,
    Option<String>,
    Option<Timestamp>,
    Option<Timestamp>,
    Timestamp,
);

fn shape(d: &tombstone_store::Delivery) -> Shape {
    (
        d.endpoint_id.clone(),
        d.event_seq,
        d.event_type.clone(),
        d.tenant.clone(),
        d.status.clone(),
        d.attempts,
        d.next_attempt_at,
        d.last_status,
        d.last_error.clone(),
        d.last_attempt_at,
        d.delivered_at,
        d.created_at,
    )
}

impl Either {
    async fn sync(&self, e: &[WebhookEndpoint], now: Timestamp) -> Vec<tombstone_store::EndpointState> {
        match self {
            Self::Sqlite(s) => tombstone_store::EventStore::sync_webhook_endpoints(s, e, now).await,
            Self::Pg(s) => s.sync_webhook_endpoints(e, now).await,
        }
        .unwrap()
    }

    async fn fan_out(&self, e: &[WebhookEndpoint], now: Timestamp, batch: u32) -> u64 {
        match self {
            Self::Sqlite(s) => tombstone_store::EventStore::fan_out_webhooks(s, e, now, batch).await,
            Self::Pg(s) => s.fan_out_webhooks(e, now, batch).await,
        }
        .unwrap()
    }

    /// Due deliveries as (shape, event seq if present), by (seq, endpoint), and their ids.
    async fn due(&self, now: Timestamp) -> Vec<(Shape, Option<i64>, String)> {
        let mut due = match self {
            Self::Sqlite(s) => tombstone_store::EventStore::due_deliveries(s, now, 100).await,
            Self::Pg(s) => s.due_deliveries(now, 100).await,
        }
        .unwrap()
        .into_iter()
        .map(|d| (shape(&d.delivery), d.event.map(|e| e.seq), d.delivery.id))
        .collect::<Vec<_>>();
        due.sort_by(|a, b| (a.0.1, &a.0.0).cmp(&(b.0.1, &b.0.0)));
        due
    }

    async fn attempt(&self, id: &str, at: Timestamp, outcome: AttemptOutcome) {
        match self {
            Self::Sqlite(s) => tombstone_store::EventStore::record_attempt(s, id, at, outcome).await,
            Self::Pg(s) => s.record_attempt(id, at, outcome).await,
        }
        .unwrap();
    }

    /// Every delivery of a tenant, with its id, by (endpoint, seq).
    async fn deliveries(&self, tenant: &str) -> Vec<(Shape, String)> {
        let mut rows = match self {
            Self::Sqlite(s) => tombstone_store::EventStore::list_deliveries(s, tenant, &all()).await,
            Self::Pg(s) => s.list_deliveries(tenant, &all()).await,
        }
        .unwrap()
        .iter()
        .map(|d| (shape(d), d.id.clone()))
        .collect::<Vec<_>>();
        rows.sort_by(|a, b| (&a.0.0, a.0.1).cmp(&(&b.0.0, b.0.1)));
        rows
    }

    /// A redelivery's answer, the delivery reduced to its shape.
    async fn redeliver(&self, tenant: &str, id: &str, now: Timestamp) -> Result<Shape, Redelivery> {
        let r = match self {
            Self::Sqlite(s) => tombstone_store::EventStore::redeliver(s, tenant, id, now).await,
            Self::Pg(s) => s.redeliver(tenant, id, now).await,
        }
        .unwrap();
        match r {
            Redelivery::Pending(d) => Ok(shape(&d)),
            other => Err(other),
        }
    }

    async fn backlog(&self) -> u64 {
        match self {
            Self::Sqlite(s) => tombstone_store::EventStore::webhook_backlog(s).await,
            Self::Pg(s) => s.webhook_backlog().await,
        }
        .unwrap()
    }

    async fn cleanup(&self, before: Timestamp, limit: u32) -> u64 {
        match self {
            Self::Sqlite(s) => tombstone_store::EventStore::cleanup_outbox(s, before, limit).await,
            Self::Pg(s) => s.cleanup_outbox(before, limit).await,
        }
        .unwrap()
    }

    /// (seq, type, tenant, record id) of every event left.
    async fn events(&self) -> Vec<(i64, String, String, String)> {
        let q = tombstone_store::EventQuery { after: 0, limit: 1000, ..tombstone_store::EventQuery::default() };
        match self {
            Self::Sqlite(s) => tombstone_store::EventStore::list_all_events(s, &q).await,
            Self::Pg(s) => s.list_all_events(&q).await,
        }
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind, e.tenant, e.record_id))
        .collect()
    }
}

/// The same steps on both stores, and every answer compared.
#[tokio::test]
async fn webhook_state_matches_sqlites_step_by_step() {
    use tombstone_domain::config::Config;
    use tombstone_domain::lifecycle::{Actor, DeleteRequest};
    use tombstone_domain::record::{FieldValue, Patch, Record, Values};
    use tombstone_store::{RecordStore, Store};

    let Some(db) = TestDb::create("webhook_state_matches_sqlites_step_by_step").await else { return };
    let pg = db.store(4).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = tombstone_store::SqliteStore::open(&dir.path().join("t.db")).unwrap();
    let schema =
        Config::parse("[collections.products.fields]\nname = { type = \"string\" }\n", std::path::Path::new("."))
            .unwrap()
            .schema;
    sqlite.migrate(&schema).await.unwrap();
    let products = schema.collection("products").unwrap().clone();
    let stores = [Either::Sqlite(sqlite), Either::Pg(pg.clone())];

    let ends = vec![
        endpoint("wh_a", &[], None),
        endpoint("wh_b", &["record.deleted", "record.created"], None),
        endpoint("wh_c", &[], Some("t2")),
    ];
    let synced: Vec<_> = [stores[0].sync(&ends, at(0)).await, stores[1].sync(&ends, at(0)).await].into();
    assert_eq!(synced[0], synced[1]);

    // The writes: through SQLite's store, and the same events appended on PostgreSQL.
    let steps: Vec<(EventType, &str, &str)> = vec![
        (EventType::Created, "t1", "r1"),
        (EventType::Created, "t2", "r1"),
        (EventType::Updated, "t1", "r1"),
        (EventType::Created, "t1", "r2"),
        (EventType::Updated, "t2", "r1"),
        (EventType::Deleted, "t1", "r2"),
        (EventType::Updated, "t1", "r1"),
        (EventType::Deleted, "t2", "r1"),
        (EventType::Created, "t2", "r3"),
        (EventType::Updated, "t2", "r3"),
    ];
    let Either::Sqlite(sqlite) = &stores[0] else { unreachable!() };
    for (n, (kind, tenant, id)) in steps.iter().enumerate() {
        let n = i64::try_from(n).unwrap() + 1;
        let now = at(n * SECOND);
        let who = Actor { tenant: (*tenant).to_string(), key_id: "key".into(), request_id: format!("req_{n}") };
        match kind {
            EventType::Created => {
                let values: Values = [("name".to_string(), FieldValue::String(format!("v{n}")))].into_iter().collect();
                let record = Record {
                    tenant: (*tenant).to_string(),
                    collection: "products".into(),
                    id: (*id).to_string(),
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    deletion: None,
                    archive: None,
                    legal_hold: false,
                    values,
                };
                sqlite.create_record(&who, &products, record, None).await.unwrap();
            }
            EventType::Updated => {
                let patch = Patch(serde_json::json!({ "name": format!("v{n}") }).as_object().unwrap().clone());
                sqlite.patch_record(&who, &products, id, None, patch, now).await.unwrap();
            }
            _ => {
                let request = DeleteRequest { if_match: None, reason: None, deletion_id: format!("del_{n}") };
                sqlite.delete_record(&who, &products, id, request, now).await.unwrap();
            }
        }
    }
    // The same events on PostgreSQL (a delete writes `deletion.completed` too).
    let q = tombstone_store::EventQuery { after: 0, limit: 1000, ..tombstone_store::EventQuery::default() };
    let written = tombstone_store::EventStore::list_all_events(sqlite, &q).await.unwrap();
    let copies: Vec<NewEvent> = written
        .into_iter()
        .map(|e| NewEvent {
            kind: EventType::parse(&e.kind).expect("a known event type"),
            tenant: e.tenant,
            collection: e.collection,
            record_id: e.record_id,
            version: e.version,
            deletion_id: e.deletion_id,
            occurred_at: e.occurred_at,
            request_id: e.request_id,
            data: e.data,
        })
        .collect();
    append(&pg, copies).await;
    let events = stores[0].events().await;
    assert_eq!(events, stores[1].events().await, "the two outboxes differ before the test starts");
    assert!(events.len() > steps.len(), "deletes write deletion.completed too");

    // Fan-out in two passes, then the due deliveries.
    for batch in [4, 100] {
        assert_eq!(
            stores[0].fan_out(&ends, at(20 * SECOND), batch).await,
            stores[1].fan_out(&ends, at(20 * SECOND), batch).await
        );
    }
    let shapes = |rows: &[(Shape, Option<i64>, String)]| rows.iter().map(|r| (r.0.clone(), r.1)).collect::<Vec<_>>();
    let due = [stores[0].due(at(20 * SECOND)).await, stores[1].due(at(20 * SECOND)).await];
    assert_eq!(shapes(&due[0]), shapes(&due[1]));
    assert!(due[0].len() >= 5, "too few due deliveries to exercise every outcome: {}", due[0].len());

    // Every outcome, on the same deliveries of both.
    let c_index = due[0].iter().position(|r| r.0.0 == "wh_c").expect("a due delivery of wh_c");
    let others: Vec<usize> = (0..due[0].len()).filter(|i| due[0][*i].0.0 != "wh_c").take(4).collect();
    let outcomes = [
        AttemptOutcome::Delivered { status: 200 },
        AttemptOutcome::Retry { status: Some(502), error: DeliveryError::Http(502), next_attempt_at: at(90 * SECOND) },
        AttemptOutcome::GiveUp { status: None, error: DeliveryError::Connect },
        AttemptOutcome::Cancelled { error: DeliveryError::EventGone },
    ];
    for (store, rows) in stores.iter().zip(&due) {
        for (i, outcome) in others.iter().zip(outcomes.clone()) {
            store.attempt(&rows[*i].2, at(21 * SECOND), outcome).await;
        }
        store.attempt(&rows[c_index].2, at(22 * SECOND), AttemptOutcome::EndpointGone).await;
    }
    for tenant in ["t1", "t2"] {
        let rows = [stores[0].deliveries(tenant).await, stores[1].deliveries(tenant).await];
        let shapes: Vec<Vec<Shape>> = rows.iter().map(|r| r.iter().map(|x| x.0.clone()).collect()).collect();
        assert_eq!(shapes[0], shapes[1], "deliveries of {tenant}");
    }
    for now in [at(30 * SECOND), at(90 * SECOND)] {
        assert_eq!(shapes(&stores[0].due(now).await), shapes(&stores[1].due(now).await));
    }
    assert_eq!(stores[0].backlog().await, stores[1].backlog().await);
    let states = [stores[0].sync(&ends, at(23 * SECOND)).await, stores[1].sync(&ends, at(23 * SECOND)).await];
    assert_eq!(states[0], states[1]);

    // A redelivery of the given-up one, of another tenant's, of an unknown one.
    let given_up = others[2];
    let tenant_of = due[0][given_up].0.3.clone();
    let answers = [
        stores[0].redeliver(&tenant_of, &due[0][given_up].2, at(40 * SECOND)).await,
        stores[1].redeliver(&tenant_of, &due[1][given_up].2, at(40 * SECOND)).await,
    ];
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].is_ok());
    let other_tenant = if tenant_of == "t1" { "t2" } else { "t1" };
    assert_eq!(
        stores[0].redeliver(other_tenant, &due[0][given_up].2, at(41 * SECOND)).await,
        Err(Redelivery::NotFound)
    );
    assert_eq!(
        stores[1].redeliver(other_tenant, &due[1][given_up].2, at(41 * SECOND)).await,
        Err(Redelivery::NotFound)
    );

    // wh_c leaves the config; clean-ups in small steps, then everything they may take.
    let kept = &ends[..2];
    let states = [stores[0].sync(kept, at(50 * SECOND)).await, stores[1].sync(kept, at(50 * SECOND)).await];
    assert_eq!(states[0], states[1]);
    assert_eq!(stores[0].backlog().await, stores[1].backlog().await);
    // Everything never attempted is delivered; the retried one stays pending and keeps
    // its event.
    for store in &stores {
        for tenant in ["t1", "t2"] {
            for (d, id) in store.deliveries(tenant).await {
                if d.4 == "pending" && d.5 == 0 {
                    store.attempt(&id, at(45 * SECOND), AttemptOutcome::Delivered { status: 200 }).await;
                }
            }
        }
    }
    for (before, limit) in [(at(5 * SECOND), 100), (at(HOUR), 2), (at(HOUR), 100)] {
        assert_eq!(stores[0].cleanup(before, limit).await, stores[1].cleanup(before, limit).await);
        assert_eq!(stores[0].events().await, stores[1].events().await);
    }
    let left = stores[0].events().await;
    assert!(left.len() < events.len() && left.len() > 1, "the clean-ups took nothing, or everything: {left:?}");
    // A delivery whose event is gone: EventGone on both, and due without its event.
    let gone = |rows: &[(Shape, String)], left: &[(i64, String, String, String)]| {
        rows.iter().find(|r| !left.iter().any(|e| e.0 == r.0.1)).map(|r| (r.0.3.clone(), r.1.clone()))
    };
    let both = |rows: [Vec<(Shape, String)>; 2]| rows.into_iter().flatten().collect::<Vec<_>>();
    let rows0 = both([stores[0].deliveries("t1").await, stores[0].deliveries("t2").await]);
    let rows1 = both([stores[1].deliveries("t1").await, stores[1].deliveries("t2").await]);
    let (t, id0) = gone(&rows0, &left).unwrap_or_else(|| panic!("no delivery of a cleaned event: {left:?} {rows0:?}"));
    let (_, id1) = gone(&rows1, &left).unwrap();
    assert_eq!(stores[0].redeliver(&t, &id0, at(60 * SECOND)).await, Err(Redelivery::EventGone));
    assert_eq!(stores[1].redeliver(&t, &id1, at(60 * SECOND)).await, Err(Redelivery::EventGone));
    assert_eq!(shapes(&stores[0].due(at(HOUR)).await), shapes(&stores[1].due(at(HOUR)).await));
    db.drop_db().await;
}
