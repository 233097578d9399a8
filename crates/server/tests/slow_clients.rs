//! Slow clients over a real TCP port: a client that stalls in its headers is disconnected
//! after the header read timeout, one that stalls in its body gets a 408 problem after the
//! body read timeout, and while the server holds many such connections a normal request
//! still answers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tombstone_domain::config::ServerLimits;
use tombstone_domain::time::Clock;
use tombstone_server::{AppState, Workers, serve};

/// A generous bound on how long anything here may take: a test that hangs fails instead.
const PATIENCE: Duration = Duration::from_secs(30);

struct Server {
    app: TestApp,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: ServerLimits) -> Self {
        let app = TestApp::new().await;
        let clock: Arc<dyn Clock> = app.clock.clone();
        let state = AppState::new(app.config.schema.clone(), app.store.clone(), clock).with_limits(limits);
        let workers = Workers::new(&state, &[], app.config.purge.clone(), Duration::from_secs(3600)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(state, workers, listener, async move {
            let _ = stopped.await;
        }));
        Self { app, addr, stop, task }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// A complete request on a fresh connection; the whole answer as text.
    async fn request(&self, head: &str, body: &str) -> String {
        let mut stream = self.connect().await;
        let request =
            format!("{head}\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        stream.write_all(request.as_bytes()).await.unwrap();
        read_all(&mut stream).await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task).await.expect("the server stops").unwrap().unwrap();
    }
}

/// Everything the server sends until it closes the connection.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection")
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

fn quick(header: Duration, body: Duration) -> ServerLimits {
    ServerLimits { header_read_timeout: header, body_read_timeout: body, ..ServerLimits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_headers_is_disconnected() {
    let server = Server::start(quick(Duration::from_millis(300), Duration::from_secs(60))).await;
    let mut stream = server.connect().await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: a").await.unwrap();
    // The client never finishes its headers: the server must hang up on it by itself.
    let answer = read_all(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_body_gets_a_408_problem_and_nothing_is_written() {
    let server = Server::start(quick(Duration::from_secs(60), Duration::from_millis(300))).await;
    let mut stream = server.connect().await;
    let head = format!(
        "POST /v1/products HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sku\": ",
        server.app.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("\"type\":\"request-timeout\""), "{answer}");
    let listed = server.app.get("/v1/products?count=true", &server.app.admin).await.json();
    assert_eq!(listed["total"], 0, "nothing was created");

    // A record action's body too: a stalled `:hold` places no hold.
    let created =
        server.app.create("products", &server.app.admin, &serde_json::json!({"sku": "S-1", "name": "Mug"})).await;
    let id = created["id"].as_str().unwrap();
    let mut stream = server.connect().await;
    let head = format!(
        "POST /v1/products/{id}:hold HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"case\": ",
        server.app.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"type\":\"request-timeout\""), "{answer}");
    let record = server.app.get(&format!("/v1/products/{id}"), &server.app.admin).await.json();
    assert_eq!(record["legal_hold"], false, "no hold was placed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_request_answers_while_many_slow_clients_hang_on() {
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(60),
        body_read_timeout: Duration::from_secs(60),
        max_connections: 1000,
        max_concurrent_requests: 64,
    };
    let server = Server::start(limits).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = server.connect().await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: a").await.unwrap();
        slow.push(stream);
    }
    for _ in 0..40 {
        let mut stream = server.connect().await;
        let head = format!(
            "POST /v1/products HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{",
            server.app.admin
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let health = server.request("GET /healthz HTTP/1.1", "").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let created = server
        .request(
            &format!("POST /v1/products HTTP/1.1\r\nAuthorization: Bearer {}", server.app.admin),
            r#"{"sku": "FAST", "name": "answered"}"#,
        )
        .await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    // The slow clients leave; the server stops without waiting for their timeouts.
    drop(slow);
    server.stop().await;
}
