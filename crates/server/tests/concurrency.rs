//! Races: many identical or conflicting requests at the same instant, from several worker
//! threads, through the real router. Whatever the interleaving, exactly one request may
//! change the state and every other one must get the answer the contract gives it.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::Method;
use common::{TestApp, TestResponse};
use futures::future::join_all;
use serde_json::{Value, json};
use tokio::sync::Barrier;

const N: usize = 20;

/// One request of a race.
struct Req {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl Req {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Self { method, path: path.into(), headers: Vec::new(), body: None }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// Sends every request from its own task; a barrier releases them together so they
/// really overlap on the runtime's worker threads. Answers come back in request order.
async fn race(app: &Arc<TestApp>, requests: Vec<Req>) -> Vec<TestResponse> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let tasks = requests.into_iter().map(|req| {
        let app = Arc::clone(app);
        let barrier = Arc::clone(&barrier);
        tokio::spawn(async move {
            barrier.wait().await;
            let headers: Vec<(&str, &str)> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let body = req.body.map(|b| b.to_string().into_bytes());
            app.send(req.method, &req.path, Some(&app.admin), &headers, body).await
        })
    });
    join_all(tasks).await.into_iter().map(|r| r.expect("request task panicked")).collect()
}

fn statuses(responses: &[TestResponse]) -> Vec<u16> {
    let mut s: Vec<u16> = responses.iter().map(|r| r.status.as_u16()).collect();
    s.sort_unstable();
    s
}

fn count(responses: &[TestResponse], status: u16) -> usize {
    responses.iter().filter(|r| r.status.as_u16() == status).count()
}

async fn app() -> Arc<TestApp> {
    Arc::new(TestApp::new().await)
}

async fn version_of(app: &TestApp, collection: &str, id: &str) -> i64 {
    let r = app.get(&format!("/v1/{collection}/{id}?include=deleted"), &app.admin).await;
    r.assert_status(200);
    r.json()["version"].as_i64().expect("version")
}

/// How many audit entries of `action` the record has.
async fn audit_count(app: &TestApp, id: &str, action: &str) -> usize {
    let r = app.get(&format!("/v1/audit?record_id={id}&action={action}&limit=500"), &app.admin).await;
    r.assert_status(200);
    r.json()["items"].as_array().map_or(0, Vec::len)
}

/// How many events of `kind` concern the record.
async fn event_count(app: &TestApp, id: &str, kind: &str) -> usize {
    let r = app.get("/v1/events?after=0&limit=500", &app.admin).await;
    r.assert_status(200);
    r.json()["items"]
        .as_array()
        .map_or(0, |items| items.iter().filter(|e| e["record_id"] == id && e["type"] == kind).count())
}

async fn active_total(app: &TestApp, collection: &str) -> u64 {
    let r = app.get(&format!("/v1/{collection}?count=true"), &app.admin).await;
    r.assert_status(200);
    r.json()["total"].as_u64().expect("total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patches_with_the_same_if_match_let_exactly_one_through() {
    let app = app().await;
    for round in 0..3 {
        let created = app.create("products", &app.admin, &json!({"sku": format!("P-{round}"), "name": "n"})).await;
        let id = created["id"].as_str().unwrap().to_string();
        let requests = (0..N)
            .map(|i| {
                Req::new(Method::PATCH, format!("/v1/products/{id}"))
                    .header("if-match", "\"v1\"")
                    .body(json!({"name": format!("writer {i}")}))
            })
            .collect();
        let responses = race(&app, requests).await;
        assert_eq!(count(&responses, 200), 1, "{:?}", statuses(&responses));
        assert_eq!(count(&responses, 412), N - 1, "{:?}", statuses(&responses));
        for r in responses.iter().filter(|r| r.status.as_u16() == 412) {
            r.assert_problem(412, "precondition-failed");
        }
        let winner = responses.iter().position(|r| r.status.as_u16() == 200).unwrap();
        assert_eq!(responses[winner].header("etag"), Some("\"v2\""));
        let got = app.get(&format!("/v1/products/{id}"), &app.admin).await;
        got.assert_status(200);
        assert_eq!(got.header("etag"), Some("\"v2\""));
        assert_eq!(got.json()["version"], 2);
        assert_eq!(got.json()["name"], format!("writer {winner}"), "the stored write is the one that got 200");
        assert_eq!(audit_count(&app, &id, "update").await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_with_the_same_unique_value_let_exactly_one_through() {
    let app = app().await;
    // The same sku, server-assigned ids.
    let requests = (0..N)
        .map(|i| Req::new(Method::POST, "/v1/products").body(json!({"sku": "SAME", "name": format!("{i}")})))
        .collect();
    let responses = race(&app, requests).await;
    assert_eq!(count(&responses, 201), 1, "{:?}", statuses(&responses));
    assert_eq!(count(&responses, 409), N - 1, "{:?}", statuses(&responses));
    let winner = responses.iter().find(|r| r.status.as_u16() == 201).unwrap().json();
    for r in responses.iter().filter(|r| r.status.as_u16() == 409) {
        let problem = r.assert_problem(409, "unique-conflict");
        assert_eq!(problem["conflicting_id"], winner["id"]);
    }
    assert_eq!(active_total(&app, "products").await, 1);

    // Case variants of a case-insensitive email.
    let emails = ["ann@x", "ANN@x", "Ann@X", "aNN@X"];
    let requests = (0..N)
        .map(|i| Req::new(Method::POST, "/v1/customers").body(json!({"email": emails[i % emails.len()]})))
        .collect();
    let responses = race(&app, requests).await;
    assert_eq!(count(&responses, 201), 1, "{:?}", statuses(&responses));
    let winner = responses.iter().find(|r| r.status.as_u16() == 201).unwrap().json();
    for r in responses.iter().filter(|r| r.status.as_u16() != 201) {
        assert_eq!(r.assert_problem(409, "unique-conflict")["conflicting_id"], winner["id"]);
    }
    assert_eq!(active_total(&app, "customers").await, 1);

    // The same client-supplied id, different values.
    let requests = (0..N)
        .map(|i| {
            Req::new(Method::POST, "/v1/products").body(json!({"id": "same-id", "sku": format!("S{i}"), "name": "n"}))
        })
        .collect();
    let responses = race(&app, requests).await;
    assert_eq!(count(&responses, 201), 1, "{:?}", statuses(&responses));
    for r in responses.iter().filter(|r| r.status.as_u16() != 201) {
        assert_eq!(r.assert_problem(409, "unique-conflict")["conflicting_id"], "same-id");
    }
    assert_eq!(active_total(&app, "products").await, 2);
    assert_eq!(version_of(&app, "products", "same-id").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_of_one_record_change_it_exactly_once() {
    let app = app().await;
    for (round, if_match) in [None, Some("\"v1\""), Some("*")].into_iter().enumerate() {
        let created = app.create("products", &app.admin, &json!({"sku": format!("D-{round}"), "name": "n"})).await;
        let id = created["id"].as_str().unwrap().to_string();
        let requests = (0..N)
            .map(|_| {
                let req = Req::new(Method::DELETE, format!("/v1/products/{id}?reason=race"));
                match if_match {
                    Some(tag) => req.header("if-match", tag),
                    None => req,
                }
            })
            .collect();
        let responses = race(&app, requests).await;
        assert_eq!(count(&responses, 204), N, "{:?} {:?}", statuses(&responses), responses[0].text);
        let ids: BTreeSet<&str> = responses.iter().map(|r| r.header("deletion-id").unwrap_or("")).collect();
        assert_eq!(ids.len(), 1, "one deletion, one Deletion-Id: {ids:?}");
        let deletion_id = ids.into_iter().next().unwrap();
        assert!(!deletion_id.is_empty());
        let got = app.get(&format!("/v1/products/{id}?include=deleted"), &app.admin).await;
        got.assert_status(200);
        let body = got.json();
        assert_eq!(body["version"], 2, "{body}");
        assert_eq!(body["deletion_id"], deletion_id);
        app.get(&format!("/v1/products/{id}"), &app.admin).await.assert_problem(404, "not-found");
        assert_eq!(audit_count(&app, &id, "delete").await, 1, "one audit entry");
        assert_eq!(event_count(&app, &id, "record.deleted").await, 1, "one event");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_of_one_record_change_it_exactly_once() {
    let app = app().await;
    for (round, if_match) in [None, Some("\"v2\"")].into_iter().enumerate() {
        let created = app.create("products", &app.admin, &json!({"sku": format!("R-{round}"), "name": "n"})).await;
        let id = created["id"].as_str().unwrap().to_string();
        app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_status(204);
        let requests = (0..N)
            .map(|_| {
                let req = Req::new(Method::POST, format!("/v1/products/{id}:restore"));
                match if_match {
                    Some(tag) => req.header("if-match", tag),
                    None => req,
                }
            })
            .collect();
        let responses = race(&app, requests).await;
        assert_eq!(count(&responses, 200), N, "{:?} {}", statuses(&responses), responses[0].text);
        for r in &responses {
            let body = r.json();
            assert_eq!((body["version"].as_i64(), &body["deleted"]), (Some(3), &json!(false)), "{body}");
            assert_eq!(r.header("etag"), Some("\"v3\""));
        }
        assert_eq!(version_of(&app, "products", &id).await, 3);
        app.get(&format!("/v1/products/{id}"), &app.admin).await.assert_status(200);
        assert_eq!(audit_count(&app, &id, "restore").await, 1, "one audit entry");
        assert_eq!(event_count(&app, &id, "record.restored").await, 1, "one event");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_posts_create_exactly_one_record() {
    let app = app().await;
    for round in 0..3 {
        let key = format!("idem-{round}");
        let body = json!({"sku": format!("I-{round}"), "name": "once", "price_cents": 100});
        let requests = (0..N)
            .map(|_| Req::new(Method::POST, "/v1/products").header("idempotency-key", &key).body(body.clone()))
            .collect();
        let responses = race(&app, requests).await;
        let originals: Vec<&TestResponse> = responses
            .iter()
            .filter(|r| r.status.as_u16() == 201 && r.header("idempotent-replayed").is_none())
            .collect();
        assert_eq!(originals.len(), 1, "{:?}", statuses(&responses));
        let original = originals[0];
        let id = original.json()["id"].as_str().unwrap().to_string();
        for r in &responses {
            match r.status.as_u16() {
                201 if r.header("idempotent-replayed").is_some() => {
                    assert_eq!(r.header("idempotent-replayed"), Some("true"));
                    assert_eq!(r.json()["id"], id.as_str(), "a replay names the same record");
                    assert_eq!(r.header("location"), original.header("location"));
                    assert_eq!(r.header("etag"), original.header("etag"));
                }
                201 => {}
                _ => {
                    r.assert_problem(409, "idempotency-conflict");
                }
            }
        }
        let list = app.get(&format!("/v1/products?filter%5Bsku%5D=I-{round}&count=true"), &app.admin).await;
        assert_eq!(list.json()["total"], 1, "{}", list.text);
        // Once settled, every retry is a replay.
        let replay =
            race(&app, vec![Req::new(Method::POST, "/v1/products").header("idempotency-key", &key).body(body)])
                .await
                .remove(0);
        replay.assert_status(201);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.json()["id"], id.as_str());
    }
    assert_eq!(active_total(&app, "products").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_posts_with_different_bodies_never_create_twice() {
    let app = app().await;
    let bodies = [json!({"sku": "K-1", "name": "first"}), json!({"sku": "K-2", "name": "second"})];
    let requests = (0..N)
        .map(|i| Req::new(Method::POST, "/v1/products").header("idempotency-key", "shared").body(bodies[i % 2].clone()))
        .collect();
    let responses = race(&app, requests).await;
    let originals: Vec<usize> = (0..N)
        .filter(|&i| responses[i].status.as_u16() == 201 && responses[i].header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(originals.len(), 1, "{:?}", statuses(&responses));
    let winner = originals[0];
    let id = responses[winner].json()["id"].as_str().unwrap().to_string();
    for (i, r) in responses.iter().enumerate() {
        match r.status.as_u16() {
            201 => {
                assert_eq!(i % 2, winner % 2, "only the winner's body may be answered with its record");
                assert_eq!(r.json()["id"], id.as_str());
            }
            409 => {
                r.assert_problem(409, "idempotency-conflict");
            }
            _ => {
                assert_eq!(i % 2, 1 - winner % 2, "only the other body is a mismatch");
                r.assert_problem(422, "idempotency-mismatch");
            }
        }
    }
    assert_eq!(active_total(&app, "products").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patches_racing_deletes_leave_a_consistent_history() {
    let app = app().await;
    for round in 0..3 {
        let created = app.create("products", &app.admin, &json!({"sku": format!("M-{round}"), "name": "n"})).await;
        let id = created["id"].as_str().unwrap().to_string();
        let path = format!("/v1/products/{id}");
        let requests = (0..N)
            .map(|i| {
                if i % 2 == 0 {
                    Req::new(Method::DELETE, path.clone())
                } else {
                    Req::new(Method::PATCH, path.clone()).body(json!({"name": format!("p{i}")}))
                }
            })
            .collect();
        let responses = race(&app, requests).await;
        let (deletes, patches): (Vec<_>, Vec<_>) = responses.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        assert!(deletes.iter().all(|(_, r)| r.status.as_u16() == 204), "{:?}", statuses(&responses));
        let deletion_ids: BTreeSet<_> = deletes.iter().map(|(_, r)| r.header("deletion-id")).collect();
        assert_eq!(deletion_ids.len(), 1);
        let mut patched: Vec<i64> = Vec::new();
        for (_, r) in &patches {
            match r.status.as_u16() {
                200 => patched.push(r.json()["version"].as_i64().unwrap()),
                _ => {
                    r.assert_problem(404, "not-found");
                }
            }
        }
        // Patches that got through happened before the delete, each at its own version.
        patched.sort_unstable();
        let expected: Vec<i64> = (2..2 + patched.len() as i64).collect();
        assert_eq!(patched, expected);
        assert_eq!(version_of(&app, "products", &id).await, 2 + patched.len() as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_competing_for_one_unique_value_let_exactly_one_record_back() {
    let app = app().await;
    for round in 0..3 {
        // Two deleted records with the same email (in different case).
        let email = format!("dup{round}@x");
        let a = app.create("customers", &app.admin, &json!({"email": email})).await["id"].as_str().unwrap().to_string();
        app.delete(&format!("/v1/customers/{a}"), &app.admin).await.assert_status(204);
        let b = app.create("customers", &app.admin, &json!({"email": email.to_uppercase()})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        app.delete(&format!("/v1/customers/{b}"), &app.admin).await.assert_status(204);
        // Half restore a, half restore b, and one more create of the value in the mix.
        let mut requests: Vec<Req> = (0..N)
            .map(|i| Req::new(Method::POST, format!("/v1/customers/{}:restore", if i % 2 == 0 { &a } else { &b })))
            .collect();
        requests.push(Req::new(Method::POST, "/v1/customers").body(json!({"email": email})));
        let responses = race(&app, requests).await;
        let list = app.get("/v1/customers?count=true", &app.admin).await.json();
        let holders: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["email"].as_str().unwrap().eq_ignore_ascii_case(&email))
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(holders.len(), 1, "exactly one active holder: {holders:?}");
        let winner = &holders[0];
        for (i, r) in responses.iter().enumerate() {
            let target = if i == N {
                None
            } else if i % 2 == 0 {
                Some(&a)
            } else {
                Some(&b)
            };
            if target == Some(winner) {
                r.assert_status(200);
            } else if target.is_none() && r.status.as_u16() == 201 {
                assert_eq!(r.json()["id"], winner.as_str());
            } else {
                assert_eq!(r.assert_problem(409, "unique-conflict")["conflicting_id"], winner.as_str(), "request {i}");
            }
        }
        if winner == &a || winner == &b {
            assert_eq!(version_of(&app, "customers", winner).await, 3, "restored once");
        }
    }
}
