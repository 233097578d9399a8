//! Event latency: how long after a DELETE's 204 its `record.deleted` event reaches an open
//! SSE stream and a webhook receiver.
//!
//! It listens for webhooks itself (a tiny axum server at WEBHOOK_ADDR, `POST /hook`; the
//! server's config must point a webhook for `record.deleted` there), opens
//! `GET /v1/events/stream?type=record.deleted`, creates N records, then deletes them one
//! at a time: each DELETE waits until both the stream and the receiver saw its event, so
//! every sample is one event alone on an idle server (sequential, light load). The clock
//! starts when the 204 has been read and stops when the event's bytes arrived.
//!
//! Usage: eventlat URL KEY N WEBHOOK_ADDR

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use tokio::sync::mpsc;

/// Where an event arrived, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sink {
    Stream,
    Webhook,
}

type Arrivals = mpsc::UnboundedSender<(Sink, String, Instant)>;

async fn hook(State(tx): State<Arrivals>, body: String) -> &'static str {
    let at = Instant::now();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if v["type"] == "record.deleted"
        && let Some(id) = v["record_id"].as_str()
    {
        let _ = tx.send((Sink::Webhook, id.to_string(), at));
    }
    "ok"
}

/// Reads the SSE body and reports each `record.deleted` event's record id.
async fn follow(mut response: reqwest::Response, tx: Arrivals) {
    let mut buf = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let at = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap_or_default();
                    if v["type"] == "record.deleted"
                        && let Some(id) = v["record_id"].as_str()
                    {
                        let _ = tx.send((Sink::Stream, id.to_string(), at));
                    }
                }
            }
        }
    }
    eprintln!("the event stream ended");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<f64>, lost: usize) {
    samples.sort_by(f64::total_cmp);
    println!(
        "{label:<26} n={:<5} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   lost {lost}",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(f64::NAN),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, key) = (args[1].clone(), args[2].clone());
    let n: usize = args[3].parse().expect("N");
    let hook_addr = args[4].clone();
    let auth = format!("Bearer {key}");
    let client = reqwest::Client::new();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(&hook_addr).await.expect("bind the webhook receiver");
    let app = Router::new().route("/hook", post(hook)).with_state(tx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.expect("webhook receiver") });

    let stream = client
        .get(format!("{url}/v1/events/stream?type=record.deleted"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("open the stream");
    assert_eq!(stream.status().as_u16(), 200, "the stream was refused");
    tokio::spawn(follow(stream, tx));

    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = serde_json::json!({"sku": format!("LAT-{i}-{}", uuid::Uuid::now_v7()), "name": "latency probe"});
        let r = client
            .post(format!("{url}/v1/products"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("create");
        assert_eq!(r.status().as_u16(), 201, "create refused");
        let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Let the creates' events and their webhook deliveries pass before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}

    let early: Arc<Mutex<HashMap<(Sink, String), Instant>>> = Arc::default();
    let (mut stream_ms, mut hook_ms) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut stream_lost, mut hook_lost) = (0, 0);
    for id in &ids {
        let r = client
            .delete(format!("{url}/v1/products/{id}"))
            .header("authorization", &auth)
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status().as_u16(), 204, "delete refused");
        let _ = r.bytes().await;
        let done = Instant::now();
        let mut seen: HashMap<Sink, Instant> = HashMap::new();
        for sink in [Sink::Stream, Sink::Webhook] {
            if let Some(at) = early.lock().unwrap().remove(&(sink, id.clone())) {
                seen.insert(sink, at);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < 2 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((sink, rid, at))) if rid == *id => {
                    seen.insert(sink, at);
                }
                Ok(Some((sink, rid, at))) => {
                    early.lock().unwrap().insert((sink, rid), at);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // An event can beat the 204 to the client: that is a latency of zero, not less.
        let ms = |at: Instant| at.saturating_duration_since(done).as_secs_f64() * 1000.0;
        match seen.get(&Sink::Stream) {
            Some(at) => stream_ms.push(ms(*at)),
            None => stream_lost += 1,
        }
        match seen.get(&Sink::Webhook) {
            Some(at) => hook_ms.push(ms(*at)),
            None => hook_lost += 1,
        }
    }
    println!("DELETE 204 → event, {n} sequential deletes:");
    report("SSE stream", stream_ms, stream_lost);
    report("webhook receiver", hook_ms, hook_lost);
}
