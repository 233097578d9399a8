//! Webhook delivery against a real HTTP receiver on a local port: signatures that the
//! shipped verifier accepts, retries with the same webhook-id, per-record ordering while
//! one record's deliveries fail, 410 disabling the endpoint, Retry-After, redelivery.
//! The relay is driven pass by pass (`run_once`) with the manual clock: no sleeping for
//! retries.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{TEST_SCHEMA, TestApp};
use serde_json::{Value, json};
use tombstone_domain::time::Clock;
use tombstone_domain::webhook::{secret_key, verify};
use tombstone_server::webhooks::Relay;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Value,
    raw: Vec<u8>,
}

/// How the receiver answers: per record id, a list of statuses to answer in turn
/// (then 200), plus extra headers.
#[derive(Default)]
struct Behaviour {
    script: HashMap<String, Vec<u16>>,
    retry_after: Option<String>,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> impl IntoResponse {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let record = parsed["record_id"].as_str().unwrap_or_default().to_string();
    r.got.lock().unwrap().push(Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body: parsed,
        raw: body.to_vec(),
    });
    let mut b = r.behaviour.lock().unwrap();
    let status = b.script.get_mut(&record).filter(|s| !s.is_empty()).map_or(200, |s| s.remove(0));
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(ra) = b.retry_after.as_ref().filter(|_| status != 200) {
        response.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    response
}

async fn start_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, format!("http://{addr}/hook"))
}

async fn setup(extra: &str) -> (TestApp, Relay, Receiver) {
    let (receiver, url) = start_receiver().await;
    let config = format!("{TEST_SCHEMA}\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n");
    let app = TestApp::with_schema(&config).await;
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks).unwrap();
    relay.register().await.unwrap();
    (app, relay, receiver)
}

fn got(r: &Receiver) -> Vec<Received> {
    r.got.lock().unwrap().clone()
}

#[tokio::test]
async fn deliveries_are_signed_and_verify_with_the_shipped_verifier() {
    let (app, relay, receiver) = setup("").await;
    let p = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    let pass = relay.run_once().await.unwrap();
    assert_eq!((pass.attempted, pass.delivered), (1, 1));
    let got = got(&receiver);
    assert_eq!(got.len(), 1);
    let key = secret_key(SECRET).unwrap();
    let now = app.clock.now().as_micros() / 1_000_000;
    let d = &got[0];
    verify(&key, Some(&d.id), Some(&d.timestamp), Some(&d.signature), &d.raw, now).expect("signature verifies");
    assert!(verify(&key, Some(&d.id), Some(&d.timestamp), Some("v1,"), &d.raw, now).is_err());
    assert_eq!(d.body["type"], "record.created");
    assert_eq!(d.body["record_id"], p["id"]);
    assert_eq!(d.id, d.body["id"], "webhook-id is the event id");
    // Delivered once: another pass sends nothing.
    assert_eq!(relay.run_once().await.unwrap().attempted, 0);
    let deliveries = app.get("/v1/webhooks/deliveries?status=delivered", &app.admin).await.json();
    assert_eq!(deliveries["items"].as_array().unwrap().len(), 1);
    assert_eq!(deliveries["items"][0]["attempts"], 1);
}

#[tokio::test]
async fn failed_attempts_are_retried_on_schedule_with_the_same_webhook_id() {
    let (app, relay, receiver) = setup("").await;
    let p = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    let id = p["id"].as_str().unwrap().to_string();
    receiver.behaviour.lock().unwrap().script.insert(id.clone(), vec![500, 503]);
    assert_eq!(relay.run_once().await.unwrap().failed, 1);
    // Not due again before the 5 s step (±10%).
    app.clock.advance(Duration::from_secs(4));
    assert_eq!(relay.run_once().await.unwrap().attempted, 0);
    app.clock.advance(Duration::from_secs(2));
    assert_eq!(relay.run_once().await.unwrap().failed, 1);
    let failing = app.get("/v1/webhooks/deliveries?status=pending", &app.admin).await.json();
    assert_eq!(failing["items"][0]["attempts"], 2);
    assert_eq!(failing["items"][0]["last_status"], 503);
    // The third attempt comes after about 5 minutes.
    app.clock.advance(Duration::from_secs(240));
    assert_eq!(relay.run_once().await.unwrap().attempted, 0);
    app.clock.advance(Duration::from_secs(100));
    assert_eq!(relay.run_once().await.unwrap().delivered, 1);
    let got = got(&receiver);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|r| r.id == got[0].id), "every retry carries the same webhook-id");
}

#[tokio::test]
async fn a_failing_record_holds_back_only_its_own_later_events() {
    let (app, relay, receiver) = setup("").await;
    let x = app.create("products", &app.admin, &json!({"sku": "X", "name": "x"})).await;
    let y = app.create("products", &app.admin, &json!({"sku": "Y", "name": "y"})).await;
    let (xid, yid) = (x["id"].as_str().unwrap().to_string(), y["id"].as_str().unwrap().to_string());
    receiver.behaviour.lock().unwrap().script.insert(xid.clone(), vec![500, 500]);
    app.patch(&format!("/v1/products/{xid}"), &app.admin, &json!({"name": "x2"})).await.assert_status(200);
    app.delete(&format!("/v1/products/{xid}"), &app.admin).await.assert_status(204);
    app.patch(&format!("/v1/products/{yid}"), &app.admin, &json!({"name": "y2"})).await.assert_status(200);
    relay.run_once().await.unwrap();
    relay.run_once().await.unwrap();
    let seen: Vec<(String, String)> = got(&receiver)
        .iter()
        .map(|r| (r.body["record_id"].as_str().unwrap().to_string(), r.body["type"].as_str().unwrap().to_string()))
        .collect();
    // Y flowed; X is stuck at its first event and nothing later of X was sent.
    assert!(seen.contains(&(yid.clone(), "record.updated".into())), "{seen:?}");
    assert!(seen.iter().filter(|(r, _)| *r == xid).all(|(_, t)| t == "record.created"), "{seen:?}");
    for _ in 0..4 {
        app.clock.advance(Duration::from_secs(400));
        relay.run_once().await.unwrap();
    }
    let x_types: Vec<String> = got(&receiver)
        .iter()
        .filter(|r| r.body["record_id"] == xid.as_str() && r.body["record_id"].is_string())
        .map(|r| r.body["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        x_types,
        [
            "record.created",
            "record.created",
            "record.created",
            "record.updated",
            "record.deleted",
            "deletion.completed"
        ]
    );
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let (app, relay, receiver) = setup("").await;
    let p = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    receiver.behaviour.lock().unwrap().script.insert(p["id"].as_str().unwrap().into(), vec![410]);
    relay.run_once().await.unwrap();
    app.create("products", &app.admin, &json!({"sku": "B", "name": "Cup"})).await;
    app.clock.advance(Duration::from_secs(3600));
    relay.run_once().await.unwrap();
    assert_eq!(got(&receiver).len(), 1, "nothing is sent to a disabled endpoint");
    let endpoints = app.get("/v1/webhooks/endpoints", &app.admin).await.json();
    assert_eq!(endpoints["items"][0]["disabled"], true);
    let cancelled = app.get("/v1/webhooks/deliveries?status=cancelled", &app.admin).await.json();
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    // An operator re-enables it; later events flow again.
    let id = endpoints["items"][0]["id"].as_str().unwrap();
    app.post_empty(&format!("/v1/webhooks/endpoints/{id}:enable"), &app.admin).await.assert_status(200);
    app.create("products", &app.admin, &json!({"sku": "C", "name": "Bowl"})).await;
    relay.run_once().await.unwrap();
    assert_eq!(got(&receiver).last().unwrap().body["data"]["sku"], "C");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (app, relay, receiver) = setup("").await;
    {
        let mut b = receiver.behaviour.lock().unwrap();
        b.retry_after = Some("600".into());
    }
    let p = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    receiver.behaviour.lock().unwrap().script.insert(p["id"].as_str().unwrap().into(), vec![429]);
    relay.run_once().await.unwrap();
    app.clock.advance(Duration::from_secs(590));
    assert_eq!(relay.run_once().await.unwrap().attempted, 0, "the 5 s step waits for Retry-After");
    app.clock.advance(Duration::from_secs(20));
    assert_eq!(relay.run_once().await.unwrap().delivered, 1);
}

#[tokio::test]
async fn deliveries_give_up_after_the_schedule_and_can_be_redelivered() {
    let (app, relay, receiver) = setup("").await;
    let p = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    receiver.behaviour.lock().unwrap().script.insert(p["id"].as_str().unwrap().into(), vec![500; 10]);
    for _ in 0..12 {
        relay.run_once().await.unwrap();
        app.clock.advance(Duration::from_secs(27 * 3600));
    }
    assert_eq!(got(&receiver).len(), 10, "ten attempts in all");
    let failed = app.get("/v1/webhooks/deliveries?status=failed", &app.admin).await.json();
    let delivery = &failed["items"][0];
    assert_eq!(delivery["attempts"], 10);
    let id = delivery["id"].as_str().unwrap();
    let other = app.key("t2", "events").await;
    app.post_empty(&format!("/v1/webhooks/deliveries/{id}:redeliver"), &other).await.assert_problem(404, "not-found");
    app.post_empty(&format!("/v1/webhooks/deliveries/{id}:redeliver"), &app.admin).await.assert_status(200);
    assert_eq!(relay.run_once().await.unwrap().delivered, 1);
    let all = got(&receiver);
    assert_eq!(all.last().unwrap().id, all[0].id);
}

#[tokio::test]
async fn event_and_tenant_filters_choose_what_an_endpoint_gets() {
    let (app, relay, receiver) = setup("events = [\"record.deleted\"]\ntenant = \"t1\"").await;
    let other = app.key("t2", "admin").await;
    let mine = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    let theirs = app.create("products", &other, &json!({"sku": "A", "name": "Mug"})).await;
    app.delete(&format!("/v1/products/{}", mine["id"].as_str().unwrap()), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/products/{}", theirs["id"].as_str().unwrap()), &other).await.assert_status(204);
    relay.run_once().await.unwrap();
    let got = got(&receiver);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["type"], "record.deleted");
    assert_eq!(got[0].body["tenant"], "t1");
}

#[tokio::test]
async fn deliveries_are_confined_to_the_tenant() {
    let (app, relay, _receiver) = setup("").await;
    app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    relay.run_once().await.unwrap();
    let other = app.key("t2", "events").await;
    let list = app.get("/v1/webhooks/deliveries", &other).await.json();
    assert!(list["items"].as_array().unwrap().is_empty());
    app.get("/v1/webhooks/deliveries?status=nope", &app.admin).await.assert_problem(400, "invalid-parameter");
    let reader = app.key("t1", "read").await;
    app.get("/v1/webhooks/deliveries", &reader).await.assert_problem(403, "forbidden");
}

#[tokio::test]
async fn outbox_rows_are_cleaned_up_only_after_retention_and_delivery() {
    use tombstone_store::Store;
    let (app, relay, receiver) = setup("").await;
    let p = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    receiver.behaviour.lock().unwrap().script.insert(p["id"].as_str().unwrap().into(), vec![500]);
    app.create("products", &app.admin, &json!({"sku": "B", "name": "Cup"})).await;
    let newest = app.create("products", &app.admin, &json!({"sku": "N", "name": "Jug"})).await;
    relay.run_once().await.unwrap();
    let far_future = app.clock.now().saturating_add(Duration::from_secs(365 * 86_400));
    // A's delivery is still pending: its row stays; B's went out: its row may go; the
    // newest event always stays (its seq must never be handed out again).
    assert_eq!(app.store.cleanup_outbox(far_future, 1000).await.unwrap(), 1);
    let left = app.get("/v1/events", &app.admin).await.json();
    let ids: Vec<&str> = left["items"].as_array().unwrap().iter().map(|e| e["record_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [p["id"].as_str().unwrap(), newest["id"].as_str().unwrap()]);
    // Nothing younger than the retention goes.
    app.clock.advance(Duration::from_secs(10));
    relay.run_once().await.unwrap();
    assert_eq!(
        app.store.cleanup_outbox(app.clock.now().saturating_add(Duration::from_secs(0)), 1000).await.unwrap(),
        1
    );
    let past = tombstone_domain::time::Timestamp::from_micros(0);
    app.create("products", &app.admin, &json!({"sku": "C", "name": "Bowl"})).await;
    relay.run_once().await.unwrap();
    assert_eq!(app.store.cleanup_outbox(past, 1000).await.unwrap(), 0, "rows newer than the cut-off stay");
}

#[tokio::test]
async fn cleaning_the_outbox_never_hands_out_a_seq_twice() {
    use tombstone_store::Store;
    let (app, relay, _receiver) = setup("").await;
    for sku in ["A", "B", "C"] {
        app.create("products", &app.admin, &json!({"sku": sku, "name": "Mug"})).await;
    }
    relay.run_once().await.unwrap();
    let feed = app.get("/v1/events", &app.admin).await.json();
    let last_seen = feed["items"].as_array().unwrap().last().unwrap()["seq"].as_i64().unwrap();
    // Everything is delivered and past retention: all rows but the newest go.
    let far_future = app.clock.now().saturating_add(Duration::from_secs(365 * 86_400));
    assert_eq!(app.store.cleanup_outbox(far_future, 1000).await.unwrap(), 2);
    assert_eq!(app.store.cleanup_outbox(far_future, 1000).await.unwrap(), 0);
    // A consumer that read up to `last_seen` still sees the next change.
    let d = app.create("products", &app.admin, &json!({"sku": "D", "name": "Mug"})).await;
    let next = app.get(&format!("/v1/events?after={last_seen}"), &app.admin).await.json();
    let items = next["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["record_id"], d["id"]);
    assert!(items[0]["seq"].as_i64().unwrap() > last_seen);
}
