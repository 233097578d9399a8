//! Live event delivery: commits wake every outbox follower (SSE streams, the webhook relay,
//! eventual cascades) without waiting for the safety-net poll; open streams share one
//! reader of the outbox; a stream that falls behind catches up without a gap or a repeat;
//! streams are capped per tenant and in all; a revoked key's streams end.
//!
//! Where a test must not be helped by the poll, the config sets `events.poll_interval` to
//! an hour: the event can then only arrive because a commit woke its follower. Deadlines
//! are generous and only stop a failing test from hanging; nothing here measures time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::{TEST_SCHEMA, TestApp};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tombstone_domain::lifecycle::Actor;
use tombstone_domain::time::Clock;
use tombstone_server::hub::BROADCAST_CAPACITY;
use tombstone_server::keys::key_id_of;
use tombstone_server::{AppState, Workers, serve};

/// Long enough that a test passing within [`DEADLINE`] was not helped by the poll.
const NO_POLL: &str = "\n[events]\npoll_interval = \"1h\"\n";
/// How long a test waits for something that must happen before calling it a failure.
const DEADLINE: Duration = Duration::from_secs(30);

const FEEDS: &str = r#"
[collections.feeds.fields]
name = { type = "string" }

[collections.items.fields]
title   = { type = "string" }
feed_id = { type = "ref", collection = "feeds", on_delete = "eventual" }
"#;

const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";

/// Webhook bodies received, in arrival order.
type Received = Arc<Mutex<Vec<Value>>>;

async fn start_receiver() -> (Received, String) {
    let got = Received::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|axum::extract::State(got): axum::extract::State<Received>, body: String| async move {
                got.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(Value::Null));
                "ok"
            }),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, format!("http://{addr}/hook"))
}

/// Reads an SSE body over real HTTP until an event satisfies `until`.
async fn wait_for_sse(response: &mut reqwest::Response, buffer: &mut String, until: impl Fn(&Value) -> bool) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:"))
                    && until(&serde_json::from_str(data.trim()).unwrap())
                {
                    return;
                }
            }
            let chunk = response.chunk().await.unwrap().expect("the stream ended");
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the event reached the stream");
}

/// Waits until `check` holds, asking again every few milliseconds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn commits_wake_the_stream_the_relay_and_eventual_cascades_without_the_poll() {
    let (hooks, url) = start_receiver().await;
    let toml = format!(
        "{TEST_SCHEMA}{FEEDS}\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nevents = [\"record.deleted\"]\n{NO_POLL}"
    );
    let app = TestApp::with_schema(&toml).await;
    // The real server with its workers, over the test app's store.
    let state = AppState::new(app.config.schema.clone(), app.store.clone(), app.clock.clone())
        .with_events(app.config.events.clone());
    let workers = Workers::new(&state, &app.config.webhooks, app.config.purge.clone(), app.config.events.retention)
        .expect("workers");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(state, workers, listener, std::future::pending()));

    let client = reqwest::Client::new();
    let mut stream = client.get(format!("{base}/v1/events/stream")).bearer_auth(&app.admin).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut buffer = String::new();
    // Twice: the first round may meet each worker's first pass at start; the second can
    // only be seen because its commit woke the followers waiting on the hour-long poll.
    for round in 0..2 {
        let create = async |collection: &str, body: Value| -> String {
            let r = client.post(format!("{base}/v1/{collection}")).bearer_auth(&app.admin).json(&body).send().await;
            let r = r.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        };
        let feed = create("feeds", json!({"name": format!("feed {round}")})).await;
        let item = create("items", json!({"title": "item", "feed_id": feed})).await;
        let r = client.delete(format!("{base}/v1/feeds/{feed}")).bearer_auth(&app.admin).send().await.unwrap();
        assert_eq!(r.status(), 204);

        let is_deletion = |e: &Value| e["type"] == "record.deleted" && e["record_id"] == feed.as_str();
        wait_for_sse(&mut stream, &mut buffer, is_deletion).await;
        eventually("the webhook delivery", async || hooks.lock().unwrap().iter().any(is_deletion)).await;
        eventually("the eventual cascade", async || {
            let r = client.get(format!("{base}/v1/items/{item}")).bearer_auth(&app.admin).send().await.unwrap();
            r.status() == 404
        })
        .await;
    }
    drop(stream);
    server.abort();
}

fn sse_request(key: &str, last_event_id: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().uri("/v1/events/stream").header("authorization", format!("Bearer {key}"));
    if let Some(id) = last_event_id {
        b = b.header("last-event-id", id);
    }
    b.body(Body::empty()).unwrap()
}

/// Opens a stream in-process and returns its body (asserting 200).
async fn open(app: &TestApp, key: &str, last_event_id: Option<&str>) -> Body {
    let response = tower::ServiceExt::oneshot(app.router.clone(), sse_request(key, last_event_id)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.into_body()
}

/// Reads SSE frames until `want` events arrived (panics if the stream ends first).
async fn read_events(mut body: Body, want: usize) -> Vec<Value> {
    read_events_keep(&mut body, want).await
}

/// Reads a stream until it ends; returns how many events it carried.
async fn read_to_end(mut body: Body) -> usize {
    let mut events = 0;
    tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                events += String::from_utf8_lossy(&data).matches("data:").count();
            }
        }
    })
    .await
    .expect("the stream was closed");
    events
}

#[tokio::test]
async fn open_streams_share_one_reader_of_the_outbox() {
    let app = TestApp::with_schema(&format!("{TEST_SCHEMA}{NO_POLL}")).await;
    const STREAMS: usize = 8;
    const CREATES: usize = 20;
    let before = app.event_reads();
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        readers.push(tokio::spawn(read_events(open(&app, &app.admin, None).await, CREATES)));
    }
    for i in 0..CREATES {
        app.create("categories", &app.admin, &json!({"name": format!("c{i}")})).await;
    }
    for reader in readers {
        let got = reader.await.unwrap();
        let names: Vec<String> = got.iter().map(|e| e["data"]["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, (0..CREATES).map(|i| format!("c{i}")).collect::<Vec<_>>(), "every event once, in order");
    }
    // Each stream reads the store once to catch up; the live events are read once for all
    // of them (at most once per commit, plus the follower's first read). Streams polling
    // on their own would read at least STREAMS × CREATES times.
    let reads = usize::try_from(app.event_reads() - before).unwrap();
    assert!(reads <= STREAMS + CREATES + 2, "{reads} outbox reads for {STREAMS} streams and {CREATES} commits");
}

#[tokio::test]
async fn a_stream_that_falls_behind_catches_up_without_a_gap_or_a_repeat() {
    let app = TestApp::with_schema(&format!("{TEST_SCHEMA}{NO_POLL}")).await;
    app.create("categories", &app.admin, &json!({"name": "before"})).await;
    // `behind` is never read while the hub broadcasts; `reader` keeps up as best it can.
    let behind = open(&app, &app.admin, None).await;
    let seeded = BROADCAST_CAPACITY + 100;
    let reader = tokio::spawn(read_events(open(&app, &app.admin, None).await, seeded + 1));
    // More events than a stream may leave unread, committed by another process in one
    // transaction (faster than as many requests)...
    app.seed_created_events("categories", seeded).await;
    // ...then one through this process, whose commit wakes the hub.
    app.create("categories", &app.admin, &json!({"name": "after"})).await;

    let kept_up = reader.await.unwrap();
    let fell_behind = read_events(behind, seeded + 1).await;
    for got in [&kept_up, &fell_behind] {
        let seqs: Vec<i64> = got.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a gap or a repeat in {seqs:?}");
        assert_eq!(got[0]["data"]["name"], "seeded 1");
        assert_eq!(got[seeded]["data"]["name"], "after");
    }
    // Resuming where the lagging stream stopped still works: nothing is left after it.
    let last = fell_behind.last().unwrap()["seq"].to_string();
    let resumed = tokio::spawn(read_events(open(&app, &app.admin, Some(&last)).await, 1));
    app.create("categories", &app.admin, &json!({"name": "later"})).await;
    assert_eq!(resumed.await.unwrap()[0]["data"]["name"], "later");
}

#[tokio::test]
async fn streams_are_capped_per_tenant_and_in_all_until_a_slot_frees() {
    let app =
        TestApp::with_schema(&format!("{TEST_SCHEMA}\n[events]\nmax_streams = 3\nmax_streams_per_tenant = 2\n")).await;
    let other = app.key("t2", "events").await;
    let refused = async |key: &str| {
        let r = app.send(axum::http::Method::GET, "/v1/events/stream", Some(key), &[], None).await;
        let body = r.assert_problem(503, "unavailable");
        let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("seconds");
        assert!(retry > 0);
        body
    };

    let first = open(&app, &app.admin, None).await;
    let _second = open(&app, &app.admin, None).await;
    let body = refused(&app.admin).await;
    assert!(body["detail"].as_str().unwrap().contains("tenant"), "{body}");
    // Another tenant still has room, up to the server's total.
    let _third = open(&app, &other, None).await;
    let body = refused(&other).await;
    assert!(body["detail"].as_str().unwrap().contains("server"), "{body}");

    // A client going away frees its slot.
    drop(first);
    let again = tokio::spawn(read_events(open(&app, &app.admin, None).await, 1));
    app.create("categories", &app.admin, &json!({"name": "live"})).await;
    assert_eq!(again.await.unwrap()[0]["data"]["name"], "live");
}

#[tokio::test]
async fn revoking_a_key_through_the_api_ends_its_streams() {
    let app = TestApp::with_schema(&format!("{TEST_SCHEMA}{NO_POLL}")).await;
    let key = app.key("t1", "events").await;
    let mut body = open(&app, &key, None).await;
    // The stream works...
    let first = tokio::spawn(async move {
        let got = read_events_keep(&mut body, 1).await;
        (body, got)
    });
    app.create("categories", &app.admin, &json!({"name": "seen"})).await;
    let (body, got) = first.await.unwrap();
    assert_eq!(got[0]["data"]["name"], "seen");
    // ...until its key is revoked: then it ends, without another event.
    let id = key_id_of(&key).unwrap();
    app.delete(&format!("/v1/keys/{id}"), &app.admin).await.assert_status(204);
    assert_eq!(read_to_end(body).await, 0);
    app.get("/v1/events/stream", &key).await.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn revoking_a_key_in_another_process_ends_its_streams() {
    let app = TestApp::with_schema(&format!("{TEST_SCHEMA}{NO_POLL}")).await;
    let key = app.key("t1", "events").await;
    let body = open(&app, &key, None).await;
    let ended = tokio::spawn(read_to_end(body));
    // As `tombstone keys revoke` does: its own store on the same database.
    let cli = app.another_store().await;
    let actor = Actor { tenant: "t1".into(), key_id: "cli".into(), request_id: "req-cli".into() };
    let id = key_id_of(&key).unwrap();
    assert!(cli.revoke_key(id, &actor, Clock::now(app.clock.as_ref())).await.unwrap());
    assert_eq!(ended.await.unwrap(), 0);
    assert_eq!(app.store.find_key(id).await.unwrap(), None);
}

/// [`read_events`] over a borrowed body, so the test can keep reading it afterwards.
async fn read_events_keep(body: &mut Body, want: usize) -> Vec<Value> {
    let mut buffer = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let frame = tokio::time::timeout(DEADLINE, body.frame()).await.expect("an SSE frame in time");
        let frame = frame.expect("the stream ended early").unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let id = block.lines().find_map(|l| l.strip_prefix("id:")).map(str::trim);
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                assert_eq!(id, Some(event["seq"].to_string().as_str()), "the SSE id is the seq");
                out.push(event);
            }
        }
    }
    out
}

/// A graceful shutdown waits for open responses, and a stream never ends by itself: the
/// server closes its streams when it stops, so `serve` returns instead of hanging.
#[tokio::test]
async fn shutdown_closes_open_streams() {
    let app = TestApp::new().await;
    let state = AppState::new(app.config.schema.clone(), app.store.clone(), app.clock.clone());
    let workers = Workers::new(&state, &[], app.config.purge.clone(), app.config.events.retention).expect("workers");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(state, workers, listener, async move {
        let _ = stopped.await;
    }));
    let mut stream =
        reqwest::Client::new().get(format!("{base}/v1/events/stream")).bearer_auth(&app.admin).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    stop.send(()).unwrap();
    // The stream's body ends, and the server with it: well before the drain timeout,
    // which would end it too, but only after cutting it off.
    let ended = tokio::time::timeout(tombstone_server::app::DRAIN_TIMEOUT / 3, async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open after shutdown");
    let served = tokio::time::timeout(DEADLINE, server).await;
    assert!(served.is_ok(), "serve did not return after shutdown");
    served.unwrap().unwrap().unwrap();
}
