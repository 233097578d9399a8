//! The NATS JetStream relay against a real nats-server (`TOMBSTONE_TEST_NATS_URL`, which
//! `scripts/test` always sets), on both stores: subjects, envelope, `Nats-Msg-Id`, order
//! per record, duplicates dropped, two relays on one database (one publishes, the other
//! takes over), an outage that loses nothing, and the deletion's propagation status.
//!
//! Each test writes as a tenant of its own and reads the stream through a consumer
//! filtered on `tombstone.<tenant>.>`, so tests share the one stream (`TOMBSTONE`, the
//! default; every stream on a server must have subjects of its own) without seeing each
//! other's events.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use common::{TEST_SCHEMA, TestApp};
use futures::StreamExt;
use serde_json::{Value, json};
use tombstone_domain::time::Clock;
use tombstone_server::nats::{NatsRelay, publish, subject};
use tombstone_store::{EventQuery, PgStore, SqliteStore, Store};

const STREAM: &str = "TOMBSTONE";

/// The test server's URL; `None` (after saying why) only outside `scripts/test` and CI,
/// which always provide one: there a missing URL fails the test.
fn nats_url() -> Option<String> {
    if let Ok(url) = std::env::var("TOMBSTONE_TEST_NATS_URL") {
        return Some(url);
    }
    let required = std::env::var("TOMBSTONE_TEST_REQUIRE_NATS").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok();
    assert!(!required, "TOMBSTONE_TEST_NATS_URL is not set, and this run requires the NATS tests (scripts/test, CI)");
    eprintln!("TOMBSTONE_TEST_NATS_URL is not set: this NATS test is skipped (scripts/test starts a nats-server)");
    None
}

/// A tenant no other test writes as.
fn tenant() -> String {
    format!("tn{}", uuid::Uuid::now_v7().simple())
}

/// An app whose config relays to `url`, and an admin key of a fresh tenant.
async fn app(url: &str) -> (TestApp, String, String) {
    let app =
        TestApp::with_schema(&format!("[events]\nnats = \"{url}\"\nnats_stream = \"{STREAM}\"\n{TEST_SCHEMA}")).await;
    let tenant = tenant();
    let key = app.key(&tenant, "admin").await;
    (app, tenant, key)
}

fn relay(store: &Arc<dyn Store>, clock: Arc<dyn Clock>, url: &str) -> NatsRelay {
    NatsRelay::new(store.clone(), clock, url, STREAM).with_lease_ttl(Duration::from_secs(15))
}

/// One message of the stream.
#[derive(Debug)]
struct Received {
    subject: String,
    msg_id: String,
    payload: Value,
}

/// Everything the stream holds for `tenant`, oldest first.
async fn received(url: &str, tenant: &str) -> Vec<Received> {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = jetstream::new(client);
    let stream = js.get_stream(STREAM).await.expect("the relay created the stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: format!("tombstone.{tenant}.>"),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::new();
    loop {
        let mut batch =
            consumer.fetch().max_messages(500).expires(Duration::from_millis(300)).messages().await.expect("fetch");
        let before = out.len();
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            out.push(Received {
                subject: message.subject.to_string(),
                msg_id: message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
                payload: serde_json::from_slice(&message.payload).expect("a JSON payload"),
            });
        }
        if out.len() == before {
            return out;
        }
    }
}

/// The app's events of `tenant`, in commit order.
async fn outbox(store: &Arc<dyn Store>, tenant: &str) -> Vec<tombstone_domain::events::Event> {
    store
        .list_events(tenant, &EventQuery { after: 0, collection: None, types: vec![], limit: 1000 })
        .await
        .expect("events")
}

/// Asserts that the stream holds exactly the outbox's events of `tenant`: each once, in
/// commit order, with its subject, its id as `Nats-Msg-Id` and its envelope as payload.
async fn assert_stream_matches_outbox(url: &str, store: &Arc<dyn Store>, tenant: &str) {
    let events = outbox(store, tenant).await;
    let got = received(url, tenant).await;
    assert_eq!(
        got.iter().map(|m| m.msg_id.as_str()).collect::<Vec<_>>(),
        events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        "every event once, in commit order"
    );
    for (m, e) in got.iter().zip(&events) {
        assert_eq!(m.subject, subject(e));
        assert_eq!(m.payload, e.envelope(), "the payload is the envelope webhooks get");
    }
}

#[tokio::test]
async fn events_reach_their_subjects_with_the_envelope_in_order() {
    let Some(url) = nats_url() else { return };
    let (app, tenant, key) = app(&url).await;
    let nats = relay(&app.store, app.clock.clone(), &url);

    let category = app.create("categories", &key, &json!({"name": "tools"})).await;
    let cid = category["id"].as_str().unwrap().to_string();
    let p = app.create("products", &key, &json!({"sku": "a1", "name": "Hammer", "category_id": cid})).await;
    let pid = p["id"].as_str().unwrap().to_string();
    app.patch(&format!("/v1/products/{pid}"), &key, &json!({"name": "Big hammer"})).await.assert_status(200);
    let deleted = app.delete(&format!("/v1/products/{pid}"), &key).await;
    deleted.assert_status(204);
    let deletion = deleted.header("deletion-id").expect("Deletion-Id").to_string();

    // Before the relay ran, the deletion has not reached NATS.
    let op = app.get(&format!("/v1/deletions/{deletion}"), &key).await;
    op.assert_status(200);
    assert_eq!(op.json()["propagation"]["nats"]["status"], "pending", "{}", op.text);

    app.post_empty(&format!("/v1/products/{pid}:restore"), &key).await.assert_status(200);
    let pass = nats.run_once().await.expect("relay pass");
    assert!(pass.held, "a lone relay holds the lease");
    assert!(pass.published >= 5, "{pass:?}");

    let op = app.get(&format!("/v1/deletions/{deletion}"), &key).await;
    assert_eq!(op.json()["propagation"]["nats"]["status"], "done", "{}", op.text);

    assert_stream_matches_outbox(&url, &app.store, &tenant).await;
    let got = received(&url, &tenant).await;
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    let p = |t: &str| format!("tombstone.{tenant}.products.record.{t}");
    assert_eq!(
        subjects,
        [
            format!("tombstone.{tenant}.categories.record.created"),
            p("created"),
            p("updated"),
            p("deleted"),
            format!("tombstone.{tenant}._.deletion.completed"),
            p("restored"),
        ]
    );
    // Per record, versions only go up.
    let versions: Vec<i64> = got
        .iter()
        .filter(|m| m.payload["record_id"] == pid.as_str() && m.payload["type"] != "deletion.completed")
        .map(|m| m.payload["version"].as_i64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // Nothing new: a second pass publishes nothing.
    assert_eq!(nats.run_once().await.unwrap().published, 0);

    // A re-publish of what was already delivered (a relay restarted before storing its
    // position) is dropped by JetStream as a duplicate of its Nats-Msg-Id.
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = jetstream::new(client);
    for event in outbox(&app.store, &tenant).await {
        assert!(publish(&js, STREAM, &event).await.expect("re-publish"), "{} is a duplicate", event.id);
    }
    assert_stream_matches_outbox(&url, &app.store, &tenant).await;
}

/// A second store over the app's database: another replica.
async fn second_store(app: &TestApp) -> Arc<dyn Store> {
    match &app.database {
        Some(db) => Arc::new(PgStore::connect(db.url(), 4).await.expect("connect")),
        None => Arc::new(SqliteStore::open(&app.dir.path().join("test.db")).expect("open")),
    }
}

#[tokio::test]
async fn two_relays_on_one_database_publish_each_event_once_and_the_other_takes_over() {
    let Some(url) = nats_url() else { return };
    let (app, tenant, key) = app(&url).await;
    let other = second_store(&app).await;
    let a = relay(&app.store, app.clock.clone(), &url);
    let b = relay(&other, app.clock.clone(), &url);

    for i in 0..5 {
        let p = app.create("products", &key, &json!({"sku": format!("s{i}"), "name": "n"})).await;
        app.delete(&format!("/v1/products/{}", p["id"].as_str().unwrap()), &key).await.assert_status(204);
        let (pa, pb) = (a.run_once().await.unwrap(), b.run_once().await.unwrap());
        assert!(pa.held && !pb.held, "a holds the lease, b waits: {pa:?} {pb:?}");
        assert_eq!(pb.published, 0);
        assert_eq!(pa.duplicates, 0);
    }
    assert_stream_matches_outbox(&url, &app.store, &tenant).await;

    // a stops (killed: its lease is not released); b takes over once the lease expires,
    // from the stored position: nothing is published twice.
    for i in 5..8 {
        app.create("products", &key, &json!({"sku": format!("s{i}"), "name": "n"})).await;
    }
    assert!(!b.run_once().await.unwrap().held, "a's lease still runs");
    app.clock.advance(Duration::from_secs(16));
    let pb = b.run_once().await.unwrap();
    assert!(pb.held, "{pb:?}");
    assert_eq!((pb.published, pb.duplicates), (3, 0), "only what a had not published");
    assert!(!a.run_once().await.unwrap().held, "a comes back to find b holding the lease");
    assert_stream_matches_outbox(&url, &app.store, &tenant).await;
}

#[tokio::test]
async fn nothing_is_lost_while_nats_is_down() {
    if nats_url().is_none() {
        return;
    }
    // A server of its own, to stop and start again.
    let server = OwnNats::start();
    let url = server.url.clone();
    let (app, tenant, key) = app(&url).await;
    let nats = relay(&app.store, app.clock.clone(), &url);
    app.create("products", &key, &json!({"sku": "before", "name": "n"})).await;
    assert_eq!(nats.run_once().await.unwrap().published, 1);

    server.halt();
    for i in 0..10 {
        let p = app.create("products", &key, &json!({"sku": format!("d{i}"), "name": "n"})).await;
        if i % 2 == 0 {
            app.delete(&format!("/v1/products/{}", p["id"].as_str().unwrap()), &key).await.assert_status(204);
        }
        if i % 5 == 0 {
            // (Each failing pass waits for its publish's ack up to the relay's timeout.)
            assert!(nats.run_once().await.is_err(), "NATS is down: the pass fails, the events wait");
        }
    }
    // The backlog shows on /metrics, on any replica.
    let metrics = app.send(axum::http::Method::GET, "/metrics", None, &[], None).await.text;
    let backlog: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tombstone_nats_backlog "))
        .expect("tombstone_nats_backlog on /metrics")
        .trim()
        .parse()
        .unwrap();
    assert!(backlog >= 20.0, "20 events wait (10 creates, 5 deletes with their deletion.completed): {backlog}");
    // Writes go on meanwhile.
    app.get("/v1/products?limit=1", &key).await.assert_status(200);

    server.resume();
    // The client reconnects by itself; the relay retries until NATS takes the events.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut published = 0;
    loop {
        match nats.run_once().await {
            Ok(pass) => {
                published += pass.published;
                if published >= 20 {
                    break;
                }
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "NATS is back but the relay still fails: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_stream_matches_outbox(&url, &app.store, &tenant).await;
}

/// A nats-server of one test (`scripts/nats`), stopped and removed on drop.
struct OwnNats {
    dir: tempfile::TempDir,
    url: String,
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/nats")
}

impl OwnNats {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = std::process::Command::new(script()).arg("start").arg(dir.path()).output().expect("scripts/nats");
        assert!(out.status.success(), "scripts/nats start: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self { dir, url }
    }

    fn run(&self, command: &str) {
        let out =
            std::process::Command::new(script()).arg(command).arg(self.dir.path()).output().expect("scripts/nats");
        assert!(out.status.success(), "scripts/nats {command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn halt(&self) {
        self.run("halt");
    }

    fn resume(&self) {
        self.run("resume");
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script()).arg("stop").arg(self.dir.path()).output();
    }
}
