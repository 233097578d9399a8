//! Files of `file` fields (§15) through the API: upload, download (ranges, ETags), the
//! record's lifecycle carrying its files (trash, restore, revert, purge, erasure, a hard
//! delete), limits (413, 415), tenants, and the files worker's durable removal.
//!
//! Every test runs on the local files store (a directory) and, when
//! `TOMBSTONE_TEST_S3_ENDPOINT` is set (scripts/test starts one: `scripts/s3`), again on an
//! S3-compatible server, each time on the run's database (SQLite, or PostgreSQL with
//! `TOMBSTONE_TEST_STORE=postgres`). The files worker is driven by the test
//! (`files::remove_due`), with the app's manual clock.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use common::TestApp;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tombstone_domain::time::Clock;
use tombstone_server::files::{self, Files};

const SCHEMA: &str = r#"
[retention]
default = "1h"

[collections.docs.fields]
title = { type = "string", required = true }
scan  = { type = "file", max_bytes = 1000, content_types = ["application/pdf", "image/*"] }
notes = { type = "file" }

[collections.tokens]
delete = "hard"

[collections.tokens.fields]
name   = { type = "string" }
backup = { type = "file" }
"#;

/// The files stores to run on: the local directory always, S3 when one is given.
fn backends() -> Vec<String> {
    let mut configs = vec![String::new()];
    match std::env::var("TOMBSTONE_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let bucket = std::env::var("TOMBSTONE_TEST_S3_BUCKET").unwrap_or_else(|_| "tombstone-test".into());
            // A prefix of its own per app: tests share the bucket.
            let prefix = uuid::Uuid::now_v7();
            configs.push(format!(
                "[files]\nurl = \"s3://{bucket}/{prefix}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
                 access_key_id = \"test\"\nsecret_access_key = \"test\"\n"
            ));
        }
        Err(_) => assert!(
            std::env::var("TOMBSTONE_TEST_REQUIRE_S3").is_err(),
            "TOMBSTONE_TEST_REQUIRE_S3 is set but TOMBSTONE_TEST_S3_ENDPOINT is not"
        ),
    }
    configs
}

async fn apps() -> Vec<TestApp> {
    let mut apps = Vec::new();
    for files in backends() {
        apps.push(TestApp::with_schema(&format!("{files}{SCHEMA}")).await);
    }
    apps
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    fn status(&self, expected: u16) -> &Self {
        assert_eq!(self.status.as_u16(), expected, "{}", self.text());
        self
    }

    #[track_caller]
    fn problem(&self, status: u16, kind: &str) -> Value {
        self.status(status);
        let body = self.json();
        assert_eq!(body["type"], kind, "{body}");
        body
    }
}

async fn request(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {key}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response =
        tower::ServiceExt::oneshot(app.router.clone(), builder.body(Body::from(body)).expect("request")).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.into_body().collect().await.expect("body").to_bytes().to_vec();
    Answer { status, headers, body }
}

async fn put_file(app: &TestApp, key: &str, path: &str, content_type: &str, bytes: &[u8]) -> Answer {
    request(app, Method::PUT, path, key, &[("content-type", content_type)], bytes.to_vec()).await
}

async fn get_file(app: &TestApp, key: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(app, Method::GET, path, key, headers, Vec::new()).await
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn files_of(app: &TestApp) -> &Files {
    app.files.as_deref().expect("a files store")
}

/// The stored objects, as (tenant, sha256).
async fn stored(app: &TestApp) -> Vec<(String, String)> {
    let mut all: Vec<_> = files_of(app).stored().await.expect("list").into_iter().map(|(t, s, _)| (t, s)).collect();
    all.sort();
    all
}

async fn run_worker(app: &TestApp) -> u64 {
    files::remove_due(app.store.as_ref(), files_of(app), app.clock.as_ref()).await.expect("files worker")
}

async fn new_doc(app: &TestApp, key: &str) -> String {
    app.create("docs", key, &json!({"title": "a doc"})).await["id"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_file_lives_and_dies_with_its_record() {
    for app in apps().await {
        let key = &app.admin;
        let id = new_doc(&app, key).await;
        let path = format!("/v1/docs/{id}/files/scan");
        let first = b"%PDF-1.4 the first scan".to_vec();
        let put = put_file(&app, key, &path, "application/pdf", &first).await;
        put.status(200);
        assert_eq!(put.header("etag"), Some("\"v2\""));
        let record = put.json();
        assert_eq!(record["version"], 2);
        assert_eq!(record["scan"]["content_type"], "application/pdf");
        assert_eq!(record["scan"]["size"], first.len());
        assert_eq!(record["scan"]["sha256"], sha256(&first));
        assert_eq!(app.get(&format!("/v1/docs/{id}"), key).await.json()["scan"], record["scan"]);

        // Download: the bytes, their type and length, an ETag of their hash.
        let got = get_file(&app, key, &path, &[]).await;
        got.status(200);
        assert_eq!(got.body, first);
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(got.header("content-length"), Some(first.len().to_string().as_str()));
        let etag = format!("\"sha256:{}\"", sha256(&first));
        assert_eq!(got.header("etag"), Some(etag.as_str()));
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        get_file(&app, key, &path, &[("if-none-match", &etag)]).await.status(304);
        // Ranges.
        let part = get_file(&app, key, &path, &[("range", "bytes=0-7")]).await;
        part.status(206);
        assert_eq!(part.body, &first[..8]);
        assert_eq!(part.header("content-range"), Some(format!("bytes 0-7/{}", first.len()).as_str()));
        let tail = get_file(&app, key, &path, &[("range", "bytes=-4")]).await;
        assert_eq!(tail.body, &first[first.len() - 4..]);
        let outside = get_file(&app, key, &path, &[("range", "bytes=5000-")]).await;
        outside.problem(416, "range-not-satisfiable");
        assert_eq!(outside.header("content-range"), Some(format!("bytes */{}", first.len()).as_str()));
        // If-Range with another ETag: the whole file.
        let stale = get_file(&app, key, &path, &[("range", "bytes=0-1"), ("if-range", "\"sha256:00\"")]).await;
        stale.status(200);
        assert_eq!(stale.body, first);

        // Replace it: the new version points at the new bytes; the old version still at
        // the old ones, which stay stored.
        let second = b"%PDF-1.4 the second scan, longer".to_vec();
        put_file(&app, key, &path, "application/pdf", &second).await.status(200);
        assert_eq!(get_file(&app, key, &path, &[]).await.body, second);
        let v2 = app.get(&format!("/v1/docs/{id}/versions/2"), key).await.json();
        assert_eq!(v2["record"]["scan"]["sha256"], sha256(&first), "{v2}");
        let tenant = "t1".to_string();
        assert_eq!(stored(&app).await.len(), 2);

        // In the trash: 404, unless include=deleted with read_deleted.
        app.delete(&format!("/v1/docs/{id}"), key).await.assert_status(204);
        get_file(&app, key, &path, &[]).await.problem(404, "not-found");
        let reader = app.key("t1", "read:docs").await;
        get_file(&app, &reader, &format!("{path}?include=deleted"), &[]).await.problem(403, "forbidden");
        let trash = get_file(&app, key, &format!("{path}?include=deleted"), &[]).await;
        trash.status(200);
        assert_eq!(trash.body, second);
        put_file(&app, key, &path, "application/pdf", b"%PDF no").await.problem(404, "not-found");
        // The worker removes nothing: the record is only in the trash.
        app.clock.advance(Duration::from_secs(1800));
        run_worker(&app).await;
        assert_eq!(stored(&app).await.len(), 2);

        // Restore brings it back; revert brings the replaced file back.
        app.post_empty(&format!("/v1/docs/{id}:restore"), key).await.assert_status(200);
        assert_eq!(get_file(&app, key, &path, &[]).await.body, second);
        app.post_empty(&format!("/v1/docs/{id}:revert?version=2"), key).await.assert_status(200);
        assert_eq!(get_file(&app, key, &path, &[]).await.body, first);

        // DELETE of the file: the field goes, the bytes stay for the history.
        let removed = request(&app, Method::DELETE, &path, key, &[], Vec::new()).await;
        removed.status(200);
        assert_eq!(removed.json()["scan"], Value::Null);
        get_file(&app, key, &path, &[]).await.problem(404, "not-found");
        request(&app, Method::DELETE, &path, key, &[], Vec::new()).await.problem(404, "not-found");
        run_worker(&app).await;
        assert_eq!(stored(&app).await.len(), 2);

        // Purge: the record, its versions and then, by the worker, both objects go.
        app.delete(&format!("/v1/docs/{id}"), key).await.assert_status(204);
        app.post_empty(&format!("/v1/docs/{id}:purge"), key).await.assert_status(204);
        assert_eq!(stored(&app).await.len(), 2, "objects go by the worker, not in the request");
        assert_eq!(run_worker(&app).await, 2);
        assert!(stored(&app).await.is_empty(), "{:?}", stored(&app).await);
        assert!(app.store.known_files().await.unwrap().is_empty());
        assert!(app.store.file_refs().await.unwrap().iter().all(|r| r.tenant != tenant || r.record_id != id));
    }
}

#[tokio::test]
async fn erasure_removes_every_object_of_the_record_and_counts_them() {
    for app in apps().await {
        let key = &app.admin;
        let id = new_doc(&app, key).await;
        put_file(&app, key, &format!("/v1/docs/{id}/files/scan"), "image/png", b"png one").await.status(200);
        put_file(&app, key, &format!("/v1/docs/{id}/files/scan"), "image/png", b"png two").await.status(200);
        put_file(&app, key, &format!("/v1/docs/{id}/files/notes"), "text/plain", b"notes").await.status(200);
        // Another record with the same bytes keeps its copy.
        let other = new_doc(&app, key).await;
        put_file(&app, key, &format!("/v1/docs/{other}/files/notes"), "text/plain", b"notes").await.status(200);
        assert_eq!(stored(&app).await.len(), 3);

        let receipt = app.post_empty(&format!("/v1/docs/{id}:erase"), key).await;
        receipt.assert_status(200);
        assert_eq!(receipt.json()["files"], 3, "{}", receipt.text);
        assert_eq!(run_worker(&app).await, 2);
        let left = stored(&app).await;
        assert_eq!(left, vec![("t1".to_string(), sha256(b"notes"))]);
        assert_eq!(get_file(&app, key, &format!("/v1/docs/{other}/files/notes"), &[]).await.body, b"notes");
    }
}

#[tokio::test]
async fn a_hard_delete_removes_the_file() {
    for app in apps().await {
        let key = &app.admin;
        let id = app.create("tokens", key, &json!({"name": "t"})).await["id"].as_str().unwrap().to_string();
        put_file(&app, key, &format!("/v1/tokens/{id}/files/backup"), "application/octet-stream", b"secret backup")
            .await
            .status(200);
        app.delete(&format!("/v1/tokens/{id}"), key).await.assert_status(204);
        assert_eq!(run_worker(&app).await, 1);
        assert!(stored(&app).await.is_empty());
    }
}

#[tokio::test]
async fn bad_uploads_are_refused_and_store_nothing() {
    for app in apps().await {
        let key = &app.admin;
        let id = new_doc(&app, key).await;
        let path = format!("/v1/docs/{id}/files/scan");
        // Over max_bytes (1000): by Content-Length, and streamed without one.
        let big = vec![7u8; 1001];
        let body = put_file(&app, key, &path, "application/pdf", &big).await.problem(413, "payload-too-large");
        assert_eq!(body["max_bytes"], 1000);
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            (0..11).map(|_| Ok(bytes::Bytes::from(vec![1u8; 100]))).collect();
        let streamed = Request::builder()
            .method(Method::PUT)
            .uri(&path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/pdf")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
        let response = tower::ServiceExt::oneshot(app.router.clone(), streamed).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Types.
        put_file(&app, key, &path, "text/html", b"<p>").await.problem(415, "unsupported-media-type");
        let untyped = request_without_type(&app, key, &path).await;
        untyped.problem(415, "unsupported-media-type");
        // No such record, a deleted one, a field that is not a file, one that does not exist.
        put_file(&app, key, "/v1/docs/nope/files/scan", "application/pdf", b"x").await.problem(404, "not-found");
        put_file(&app, key, &format!("/v1/docs/{id}/files/title"), "application/pdf", b"x")
            .await
            .problem(404, "not-found");
        put_file(&app, key, &format!("/v1/docs/{id}/files/nope"), "application/pdf", b"x")
            .await
            .problem(404, "not-found");
        // A stale If-Match: 412, and the bytes, already stored, are kept only for their pin.
        let stale = request(
            &app,
            Method::PUT,
            &path,
            key,
            &[("content-type", "application/pdf"), ("if-match", "\"v9\"")],
            b"pinned bytes".to_vec(),
        )
        .await;
        stale.problem(412, "precondition-failed");
        assert_eq!(app.get(&format!("/v1/docs/{id}"), key).await.json()["version"], 1, "nothing changed");
        assert_eq!(stored(&app).await.len(), 1);
        run_worker(&app).await;
        assert_eq!(stored(&app).await.len(), 1, "pinned for an hour");
        app.clock.advance(files::PIN + Duration::from_secs(1));
        assert_eq!(run_worker(&app).await, 1);
        assert!(stored(&app).await.is_empty());
        // The body of a record cannot set a file field.
        let r = app.post("/v1/docs", key, &json!({"title": "x", "scan": {"sha256": "ab"}})).await;
        r.assert_problem(422, "validation");
        app.patch(&format!("/v1/docs/{id}"), key, &json!({"scan": "x"})).await.assert_problem(422, "validation");
        app.get("/v1/docs?filter[scan]=x", key).await.assert_problem(400, "invalid-parameter");
        // An archived record is read-only: its file too (and nothing is stored).
        let archived = new_doc(&app, key).await;
        app.post(&format!("/v1/docs/{archived}:archive"), key, &json!({})).await.assert_status(200);
        put_file(&app, key, &format!("/v1/docs/{archived}/files/scan"), "application/pdf", b"%PDF archived")
            .await
            .problem(409, "archived");
        // A writer without write scope.
        let reader = app.key("t1", "read:docs").await;
        put_file(&app, &reader, &path, "application/pdf", b"x").await.problem(403, "forbidden");
        assert!(stored(&app).await.is_empty());
        assert!(
            files_of(&app)
                .stale_staging(Clock::now(app.clock.as_ref()).saturating_add(Duration::from_secs(60)))
                .await
                .unwrap()
                .is_empty(),
            "no upload left in staging"
        );
    }
}

async fn request_without_type(app: &TestApp, key: &str, path: &str) -> Answer {
    request(app, Method::PUT, path, key, &[], b"bytes".to_vec()).await
}

#[tokio::test]
async fn files_are_confined_to_their_tenant() {
    for app in apps().await {
        let key = &app.admin;
        let other = app.key("t2", "admin").await;
        let id = new_doc(&app, key).await;
        let path = format!("/v1/docs/{id}/files/scan");
        put_file(&app, key, &path, "application/pdf", b"%PDF mine").await.status(200);
        get_file(&app, &other, &path, &[]).await.problem(404, "not-found");
        put_file(&app, &other, &path, "application/pdf", b"%PDF theirs").await.problem(404, "not-found");
        request(&app, Method::DELETE, &path, &other, &[], Vec::new()).await.problem(404, "not-found");
        // The same bytes in another tenant are another object.
        let theirs = new_doc(&app, &other).await;
        put_file(&app, &other, &format!("/v1/docs/{theirs}/files/scan"), "application/pdf", b"%PDF mine")
            .await
            .status(200);
        let objects = stored(&app).await;
        assert_eq!(objects, vec![("t1".to_string(), sha256(b"%PDF mine")), ("t2".to_string(), sha256(b"%PDF mine"))]);
        assert_eq!(get_file(&app, key, &path, &[]).await.body, b"%PDF mine");
    }
}

#[tokio::test]
async fn a_large_upload_streams_in_parts() {
    // Larger than one part (5 MiB): the multipart path of the store.
    let schema = SCHEMA.replace("notes = { type = \"file\" }", "notes = { type = \"file\", max_bytes = \"64 MiB\" }");
    for files in backends() {
        let app = TestApp::with_schema(&format!("{files}{schema}")).await;
        let key = &app.admin;
        let id = new_doc(&app, key).await;
        let bytes: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let path = format!("/v1/docs/{id}/files/notes");
        put_file(&app, key, &path, "application/octet-stream", &bytes).await.status(200);
        let got = get_file(&app, key, &path, &[]).await;
        assert_eq!(got.body.len(), bytes.len());
        assert!(got.body == bytes, "the bytes differ");
        let middle = get_file(&app, key, &path, &[("range", "bytes=5242870-5242889")]).await;
        middle.status(206);
        assert_eq!(middle.body, &bytes[5_242_870..5_242_890]);
    }
}

#[tokio::test]
async fn reconcile_finds_orphans_and_missing_objects() {
    for app in apps().await {
        let key = &app.admin;
        let id = new_doc(&app, key).await;
        put_file(&app, key, &format!("/v1/docs/{id}/files/scan"), "application/pdf", b"%PDF kept").await.status(200);
        let gone = new_doc(&app, key).await;
        put_file(&app, key, &format!("/v1/docs/{gone}/files/scan"), "application/pdf", b"%PDF lost").await.status(200);
        let files = files_of(&app);
        // An object nobody references (written behind the server's back), and a record's
        // object removed behind its back.
        let stray = files.stage_bytes(bytes::Bytes::from_static(b"stray"), 100).await.unwrap();
        files.promote(&stray, "t1").await.unwrap();
        files.remove("t1", &sha256(b"%PDF lost")).await.unwrap();

        let now = Clock::now(app.clock.as_ref()).saturating_add(files::PIN + Duration::from_secs(1));
        let report = files::reconcile(app.store.as_ref(), files, now, false).await.unwrap();
        let orphans: Vec<&str> = report.orphans.iter().map(|o| o.sha256.as_str()).collect();
        assert_eq!(orphans, vec![sha256(b"stray").as_str()]);
        assert_eq!(report.missing.len(), 1);
        assert_eq!((report.missing[0].collection.as_str(), report.missing[0].id.as_str()), ("docs", gone.as_str()));
        // Within its pin a new upload is not an orphan.
        let early = files::reconcile(app.store.as_ref(), files, Clock::now(app.clock.as_ref()), false).await.unwrap();
        assert!(early.orphans.is_empty() || early.orphans.iter().all(|o| o.sha256 == sha256(b"stray")));
        get_file(&app, key, &format!("/v1/docs/{gone}/files/scan"), &[]).await.problem(404, "not-found");

        let repaired = files::reconcile(app.store.as_ref(), files, now, true).await.unwrap();
        assert_eq!(repaired.removed, 1);
        let after = files::reconcile(app.store.as_ref(), files, now, false).await.unwrap();
        assert!(after.orphans.is_empty());
        assert_eq!(get_file(&app, key, &format!("/v1/docs/{id}/files/scan"), &[]).await.body, b"%PDF kept");
    }
}
