//! Webhook delivery against a real HTTP receiver on a local port: signatures that the
//! shipped verifier accepts, retries with the same webhook-id, per-record ordering while
//! one record's deliveries fail (lanes per tenant and record), 410 disabling the endpoint,
//! Retry-After, redelivery (refused once the event is gone), error classes that never
//! show a URL, and endpoints that leave the config.
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
    let tenant_record = format!("{}/{record}", parsed["tenant"].as_str().unwrap_or_default());
    r.got.lock().unwrap().push(Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body: parsed,
        raw: body.to_vec(),
    });
    let mut b = r.behaviour.lock().unwrap();
    // A script keyed `tenant/record` wins over one keyed by the record id alone.
    let key = if b.script.contains_key(&tenant_record) { tenant_record } else { record };
    let status = b.script.get_mut(&key).filter(|s| !s.is_empty()).map_or(200, |s| s.remove(0));
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(ra) = b.retry_after.as_ref().filter(|_| status != 200) {
        response.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    response
}

async fn start_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .route("/fail", axum::routing::post(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route(
            "/slow",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }),
        )
        .with_state(receiver.clone());
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
    let deleted = app.delete(&format!("/v1/products/{}", theirs["id"].as_str().unwrap()), &other).await;
    deleted.assert_status(204);
    relay.run_once().await.unwrap();
    // t2's deletion does not name t1's endpoint among its sinks.
    let op = app.get(&format!("/v1/deletions/{}", deleted.header("deletion-id").unwrap()), &other).await.json();
    assert_eq!(op["propagation"]["webhooks"], json!({}), "{op}");
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

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_failing_record_of_one_tenant_does_not_hold_another_tenants_record_with_the_same_id() {
    let (app, relay, receiver) = setup("").await;
    let other = app.key("t2", "admin").await;
    // Both tenants choose the id "shared"; only t1's receiver answers fail.
    receiver.behaviour.lock().unwrap().script.insert("t1/shared".into(), vec![500; 20]);
    app.create("products", &app.admin, &json!({"id": "shared", "sku": "A", "name": "Mug"})).await;
    app.create("products", &other, &json!({"id": "shared", "sku": "A", "name": "Mug"})).await;
    app.patch("/v1/products/shared", &other, &json!({"name": "Cup"})).await.assert_status(200);
    relay.run_once().await.unwrap();
    let t2: Vec<String> = got(&receiver)
        .iter()
        .filter(|r| r.body["tenant"] == "t2")
        .map(|r| r.body["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(t2, ["record.created", "record.updated"], "t2's events flow while t1's same id fails");
    let t1 = app.get("/v1/webhooks/deliveries?status=pending", &app.admin).await.json();
    assert_eq!(items(&t1).len(), 1, "t1's record waits, alone in its lane");
    assert_eq!(t1["items"][0]["last_status"], 500);
}

#[tokio::test]
async fn an_upgrade_keys_existing_lanes_by_tenant_keeps_their_order_and_hides_old_error_text() {
    let (receiver, url) = start_receiver().await;
    let config = format!("{TEST_SCHEMA}\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n");
    // SQLite only: the upgrade is SQLite's migration 0007_webhook_lanes over the layout an
    // earlier version of its store wrote. PostgreSQL's store was born with tenant lanes
    // (its 0004_webhooks), so it has no older layout to upgrade from.
    let app = TestApp::sqlite_with_schema(&config).await;
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks).unwrap();
    relay.register().await.unwrap();
    app.create("products", &app.admin, &json!({"id": "p1", "sku": "A", "name": "Mug"})).await;
    receiver.behaviour.lock().unwrap().script.insert("t1/p1".into(), vec![500]);
    relay.run_once().await.unwrap();
    app.patch("/v1/products/p1", &app.admin, &json!({"name": "Cup"})).await.assert_status(200);
    relay.run_once().await.unwrap();
    drop(relay);
    let keys = "select record_key from webhook_deliveries order by event_seq";
    assert_eq!(app.raw().await.column(keys).await, ["t1/products/p1", "t1/products/p1"], "lanes carry the tenant");
    // Put the database back as the previous version left it: lanes without the tenant, raw
    // transport text, no removed_at column, and the lane migration not applied.
    app.raw_execute(&format!(
        "update webhook_deliveries set record_key = substr(record_key, length(tenant) + 2);
         update webhook_deliveries set last_error = 'request failed: error sending request for url ({url}?token={TOKEN})'
             where last_error is not null;
         alter table webhook_endpoints drop column removed_at;
         alter table webhook_endpoints drop column tenant;
         delete from _migrations where name = '0007_webhook_lanes';"
    ))
    .await;
    assert_eq!(app.raw().await.column(keys).await, ["products/p1", "products/p1"]);

    let app = restart(app, &config).await;
    assert_eq!(
        app.raw().await.column(keys).await,
        ["t1/products/p1", "t1/products/p1"],
        "the upgrade keyed the lanes by tenant"
    );
    let list = app.get("/v1/webhooks/deliveries", &app.admin).await;
    assert!(!list.text.contains(TOKEN), "{}", list.text);
    assert_eq!(list.json()["items"][0]["last_error"], "request");
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks).unwrap();
    relay.register().await.unwrap();
    app.clock.advance(Duration::from_secs(10));
    relay.run_once().await.unwrap();
    let types: Vec<String> = got(&receiver).iter().map(|r| r.body["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["record.created", "record.created", "record.updated"], "the record's order held");
}

#[tokio::test]
async fn a_delivery_whose_event_was_cleaned_up_cannot_be_redelivered() {
    let (app, relay, _receiver) = setup("").await;
    app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    relay.run_once().await.unwrap();
    let delivered = app.get("/v1/webhooks/deliveries?status=delivered", &app.admin).await.json();
    let id = delivered["items"][0]["id"].as_str().unwrap().to_string();
    // A later event, so the first one is not the newest and may be cleaned up.
    app.create("products", &app.admin, &json!({"sku": "B", "name": "Cup"})).await;
    relay.run_once().await.unwrap();
    let far_future = app.clock.now().saturating_add(Duration::from_secs(365 * 86_400));
    assert_eq!(app.store.cleanup_outbox(far_future, 1000).await.unwrap(), 1);
    let body = app
        .post_empty(&format!("/v1/webhooks/deliveries/{id}:redeliver"), &app.admin)
        .await
        .assert_problem(409, "event-gone");
    assert!(body["detail"].as_str().unwrap().contains(&id), "{body}");
    let pending = app.get("/v1/webhooks/deliveries?status=pending", &app.admin).await.json();
    assert!(items(&pending).is_empty(), "nothing was made pending: {pending}");
    assert_eq!(app.store.webhook_backlog().await.unwrap(), 0);
    let again = app.get("/v1/webhooks/deliveries?status=delivered", &app.admin).await.json();
    assert!(items(&again).iter().any(|d| d["id"] == id.as_str()), "it keeps its delivered state");
}

#[tokio::test]
async fn a_pending_delivery_whose_event_is_gone_is_cancelled_and_frees_its_lane() {
    let (app, relay, receiver) = setup("").await;
    app.create("products", &app.admin, &json!({"id": "p1", "sku": "A", "name": "Mug"})).await;
    receiver.behaviour.lock().unwrap().script.insert("p1".into(), vec![500]);
    relay.run_once().await.unwrap();
    app.patch("/v1/products/p1", &app.admin, &json!({"name": "Cup"})).await.assert_status(200);
    relay.run_once().await.unwrap();
    // The failing delivery's event disappears from under it (an older version's clean-up,
    // a hand-edited database): nothing can send it any more.
    let gone = app.raw_int("select event_seq from webhook_deliveries where status = 'pending' and attempts = 1").await;
    app.raw_execute(&format!("delete from outbox where seq = {gone}")).await;
    assert_eq!(app.raw_int(&format!("select count(*) from outbox where seq = {gone}")).await, 0);
    app.clock.advance(Duration::from_secs(10));
    relay.run_once().await.unwrap();
    let sent: Vec<String> = got(&receiver).iter().map(|r| r.body["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(sent, ["record.created", "record.updated"], "the record's later event is not held");
    let cancelled = app.get("/v1/webhooks/deliveries?status=cancelled", &app.admin).await.json();
    assert_eq!(items(&cancelled).len(), 1, "{cancelled}");
    assert_eq!(cancelled["items"][0]["last_error"], "event-gone");
    assert_eq!(cancelled["items"][0]["event_seq"], gone);
    let pending = app.get("/v1/webhooks/deliveries?status=pending", &app.admin).await.json();
    assert!(items(&pending).is_empty(), "{pending}");
}

const TOKEN: &str = "tok-7f3a9c2e51";

#[tokio::test]
async fn tenants_never_see_an_endpoint_url_or_transport_text() {
    // An endpoint whose URL carries a token, on a port where nothing listens.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = refused.local_addr().unwrap().port();
    drop(refused);
    let url = format!("http://127.0.0.1:{port}/hook?token={TOKEN}");
    let config =
        format!("{TEST_SCHEMA}\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nevents = [\"record.deleted\"]\n");
    let app = TestApp::with_schema(&config).await;
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks).unwrap();
    relay.register().await.unwrap();
    let p = app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    let deleted = app.delete(&format!("/v1/products/{}", p["id"].as_str().unwrap()), &app.admin).await;
    deleted.assert_status(204);
    let deletion_id = deleted.header("deletion-id").unwrap().to_string();
    assert_eq!(relay.run_once().await.unwrap().failed, 1);

    let endpoint = tombstone_server::webhooks::endpoint_id(&url);
    let deliveries = app.get("/v1/webhooks/deliveries", &app.admin).await;
    let d = &deliveries.json()["items"][0];
    assert_eq!(d["endpoint_id"], endpoint.as_str());
    assert_eq!(d["last_error"], "connect", "{d}");
    let redelivered =
        app.post_empty(&format!("/v1/webhooks/deliveries/{}:redeliver", d["id"].as_str().unwrap()), &app.admin).await;
    redelivered.assert_status(200);
    let op = app.get(&format!("/v1/deletions/{deletion_id}"), &app.admin).await;
    let sink = &op.json()["propagation"]["webhooks"][&endpoint];
    assert_eq!(sink["status"], "pending", "{}", op.text);
    assert_eq!(sink["last_error"], "connect", "{}", op.text);
    let endpoints = app.get("/v1/webhooks/endpoints", &app.admin).await;
    assert_eq!(endpoints.json()["items"][0]["url"], format!("http://127.0.0.1:{port}/…"));
    for answer in [&deliveries, &redelivered, &op, &endpoints] {
        assert!(!answer.text.contains(TOKEN), "the token leaked: {}", answer.text);
        assert!(!answer.text.contains("/hook"), "the URL leaked: {}", answer.text);
        assert!(!answer.text.contains("error sending request"), "transport text leaked: {}", answer.text);
    }
}

#[tokio::test]
async fn transport_failures_are_classified() {
    let (_receiver, hook) = start_receiver().await;
    let base = hook.trim_end_matches("/hook").to_string();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_url = format!("http://{}/hook", refused.local_addr().unwrap());
    drop(refused);
    let cases = [
        (refused_url, "connect"),
        (format!("{base}/fail"), "http 500"),
        (format!("{base}/slow"), "timeout"),
        // TLS spoken to a plain HTTP server: the handshake fails.
        (format!("{}/hook", base.replace("http://", "https://")), "tls"),
    ];
    let mut config = TEST_SCHEMA.to_string();
    for (url, _) in &cases {
        config.push_str(&format!("\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"));
    }
    let app = TestApp::with_schema(&config).await;
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks)
        .unwrap()
        .with_attempt_timeout(Duration::from_millis(500));
    relay.register().await.unwrap();
    app.create("products", &app.admin, &json!({"sku": "A", "name": "Mug"})).await;
    assert_eq!(relay.run_once().await.unwrap().failed, 4);
    let list = app.get("/v1/webhooks/deliveries", &app.admin).await.json();
    for (url, class) in &cases {
        let id = tombstone_server::webhooks::endpoint_id(url);
        let d = items(&list).into_iter().find(|d| d["endpoint_id"] == id.as_str()).expect("a delivery per endpoint");
        assert_eq!(d["last_error"], *class, "{url}: {d}");
        assert_eq!(d["status"], "pending", "{d}");
    }
}

/// A restart over the same database with another config (the old app is dropped first).
async fn restart(app: TestApp, config: &str) -> TestApp {
    app.restart(config).await
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn an_endpoint_removed_from_the_config_stops_pinning_the_outbox() {
    let (receiver, url) = start_receiver().await;
    let with_hook = format!("{TEST_SCHEMA}\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n");
    let app = TestApp::with_schema(&with_hook).await;
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks).unwrap();
    relay.register().await.unwrap();
    for id in ["a", "b", "c"] {
        receiver.behaviour.lock().unwrap().script.insert(id.into(), vec![500; 100]);
        app.create("products", &app.admin, &json!({"id": id, "sku": id, "name": "Mug"})).await;
    }
    assert_eq!(relay.run_once().await.unwrap().failed, 3);
    drop(relay);

    // Restart without the endpoint, and keep writing.
    let app = restart(app, TEST_SCHEMA).await;
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks).unwrap();
    relay.register().await.unwrap();
    for id in ["d", "e"] {
        app.create("products", &app.admin, &json!({"id": id, "sku": id, "name": "Mug"})).await;
    }
    relay.run_once().await.unwrap();
    let pending = app.get("/v1/webhooks/deliveries?status=pending", &app.admin).await.json();
    assert!(items(&pending).is_empty(), "{pending}");
    let cancelled = app.get("/v1/webhooks/deliveries?status=cancelled", &app.admin).await.json();
    assert_eq!(items(&cancelled).len(), 3);
    assert!(items(&cancelled).iter().all(|d| d["last_error"] == "endpoint-removed"), "{cancelled}");
    let endpoints = app.get("/v1/webhooks/endpoints", &app.admin).await.json();
    assert_eq!(endpoints["items"][0]["removed"], true, "{endpoints}");
    assert!(endpoints["items"][0]["removed_at"].is_string(), "{endpoints}");
    let d = &cancelled["items"][0]["id"];
    app.post_empty(&format!("/v1/webhooks/deliveries/{}:redeliver", d.as_str().unwrap()), &app.admin)
        .await
        .assert_problem(409, "endpoint-removed");

    // The outbox drains down to its newest row, and the backlog is empty.
    let far_future = app.clock.now().saturating_add(Duration::from_secs(365 * 86_400));
    assert_eq!(app.store.cleanup_outbox(far_future, 1000).await.unwrap(), 4);
    let left = app.get("/v1/events", &app.admin).await.json();
    assert_eq!(items(&left).len(), 1, "{left}");
    assert_eq!(app.store.webhook_backlog().await.unwrap(), 0);
    let metrics = app.send(axum::http::Method::GET, "/metrics", None, &[], None).await;
    if !metrics.text.is_empty() {
        assert_eq!(gauge(&metrics.text, "tombstone_outbox_backlog"), 0.0);
    }

    // It comes back: it resumes with new events, not with what it missed.
    let app = restart(app, &with_hook).await;
    let relay = Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks).unwrap();
    relay.register().await.unwrap();
    let before = got(&receiver).len();
    app.create("products", &app.admin, &json!({"id": "f", "sku": "f", "name": "Mug"})).await;
    assert_eq!(relay.run_once().await.unwrap().delivered, 1);
    let sent = got(&receiver);
    assert_eq!(sent.len(), before + 1);
    assert_eq!(sent.last().unwrap().body["record_id"], "f");
    let endpoints = app.get("/v1/webhooks/endpoints", &app.admin).await.json();
    assert_eq!(endpoints["items"][0]["removed"], false, "{endpoints}");
    let cancelled = app.get("/v1/webhooks/deliveries?status=cancelled", &app.admin).await.json();
    assert_eq!(items(&cancelled).len(), 3, "cancelled deliveries stay cancelled");
}

/// Waits (real time, at most 10 s) until the receiver holds `n` requests.
async fn wait_for_requests(receiver: &Receiver, n: usize) -> Vec<Received> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = got(receiver);
        if now.len() >= n || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two relays on one database, as two replicas run them: only the holder of the lease
/// `webhooks` sends, so each delivery goes out once; when the holder dies without releasing
/// its lease (its task is aborted, as a SIGKILL would), the other takes over once the lease
/// has expired (the manual clock jumps past it) and sends what came after, once.
#[tokio::test]
async fn two_replicas_relays_send_each_event_once_and_one_takes_over_when_the_lease_expires() {
    use tombstone_server::lease::WorkerLease;
    use tombstone_server::webhooks::LEASE;

    let (app, _, receiver) = setup("").await;
    let relay = |holder: &str| {
        let lease = WorkerLease::new(app.store.clone(), app.clock.clone(), LEASE).with_holder(holder);
        Relay::new(app.store.clone(), app.clock.clone(), &app.config.webhooks)
            .unwrap()
            .with_poll(Duration::from_millis(50))
            .with_lease(lease)
    };
    let (_stop, cancel) = tokio::sync::watch::channel(false);
    let mut a = Some(tokio::spawn(relay("replica-a").run(cancel.clone())));
    let mut b = Some(tokio::spawn(relay("replica-b").run(cancel.clone())));
    for i in 0..5 {
        app.create("products", &app.admin, &json!({"sku": format!("A{i}"), "name": "n"})).await;
    }
    let first = wait_for_requests(&receiver, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got(&receiver).len(), 5, "each delivery sent once by one of the two");
    let ids: std::collections::HashSet<_> = first.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 5);

    // Who holds it: a claim by a third party shows the holder and takes nothing.
    let holder = app.store.claim_lease(LEASE, "probe", app.clock.now(), Duration::from_secs(1)).await.unwrap().holder;
    let dead = if holder == "replica-a" { a.take() } else { b.take() };
    dead.expect("the holder is one of the two").abort();
    for i in 0..3 {
        app.create("products", &app.admin, &json!({"sku": format!("B{i}"), "name": "n"})).await;
    }
    // Not before the dead holder's lease expires.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got(&receiver).len(), 5, "the lease still belongs to the dead holder");
    app.clock.advance(tombstone_server::lease::WORKER_LEASE_TTL + Duration::from_secs(1));
    let all = wait_for_requests(&receiver, 8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got(&receiver).len(), 8, "the survivor sent what was left, once");
    let ids: std::collections::HashSet<_> = all.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 8);
    let now = app.store.claim_lease(LEASE, "probe", app.clock.now(), Duration::from_secs(1)).await.unwrap();
    assert_ne!(now.holder, holder, "the survivor holds the lease");
    for task in [a, b].into_iter().flatten() {
        task.abort();
    }
}
