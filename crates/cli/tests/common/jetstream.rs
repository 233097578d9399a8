//! Reading what the NATS relay published: every message of a tenant in the stream, as a
//! consumer of the stream sees them.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::Value;

/// The stream the tests' configurations name (the default).
pub const STREAM: &str = "TOMBSTONE";

/// One published message.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    /// The `Nats-Msg-Id` header (empty when missing).
    pub id: String,
    /// The payload as JSON (`Null` when it is not JSON).
    pub payload: Value,
}

/// The stream's messages of `tenant`, in stream order; none when the stream does not exist
/// yet.
pub fn messages(url: &str, tenant: &str) -> Vec<Message> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.expect("connect to nats"));
        let Ok(stream) = js.get_stream(STREAM).await else { return Vec::new() };
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("tombstone.{tenant}.>"),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut out = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(1000)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .expect("fetch");
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string());
                out.push(Message {
                    subject: m.subject.to_string(),
                    id: id.unwrap_or_default(),
                    payload: serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
                });
            }
            if out.len() == before {
                return out;
            }
        }
    })
}
