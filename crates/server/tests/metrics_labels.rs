//! The request-duration histogram's labels come from bounded sets: requests to made-up
//! paths with made-up methods, which need no key, must not add series to `/metrics`.
//!
//! In a test binary of its own: the metrics recorder is per process, and other tests'
//! requests would add their own (legitimate) series meanwhile.

mod common;

use axum::http::Method;
use common::TestApp;
use rand::Rng;
use rand::distr::Alphanumeric;

/// The series `/metrics` exposes: every sample line.
async fn series(app: &TestApp) -> Vec<String> {
    let r = app.send(Method::GET, "/metrics", None, &[], None).await;
    r.assert_status(200);
    r.text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            // The series is the name and labels; the value after the last space changes.
            l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string()
        })
        .collect()
}

fn word(rng: &mut impl Rng, len: usize) -> String {
    (&mut *rng).sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// A random path under the API (or beside it), with a random method.
async fn random_request(app: &TestApp, rng: &mut impl Rng) {
    let method = match rng.random_range(0..4) {
        0 => Method::GET,
        1 => Method::DELETE,
        _ => Method::from_bytes(word(rng, 6).to_uppercase().as_bytes()).expect("a token"),
    };
    let path = match rng.random_range(0..5) {
        0 => format!("/v1/{}", word(rng, 12)),
        1 => format!("/v1/{}/{}", word(rng, 12), word(rng, 8)),
        2 => format!("/v1/{}/{}/versions", word(rng, 12), word(rng, 8)),
        3 => format!("/{}", word(rng, 12)),
        _ => format!("/v1/products/{}", word(rng, 8)),
    };
    app.send(method, &path, None, &[], None).await;
}

#[tokio::test]
async fn random_paths_and_methods_add_no_series() {
    let app = TestApp::new().await;
    let mut rng = rand::rng();
    // Every shape of answer (401, 404, 405 …) once, so its series exists before counting.
    for _ in 0..200 {
        random_request(&app, &mut rng).await;
    }
    // A scrape is measured after it answers: the first one's series shows from the second.
    series(&app).await;
    let before = series(&app).await;
    for _ in 0..10_000 {
        random_request(&app, &mut rng).await;
    }
    let after = series(&app).await;
    let new: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(new.is_empty(), "{} new series, e.g. {:?}", new.len(), new.iter().take(5).collect::<Vec<_>>());
    assert_eq!(after.len(), before.len());
    assert!(
        before
            .iter()
            .any(|s| s.starts_with("tombstone_http_request_duration_seconds") && s.contains("route=\"other\"")),
        "the made-up requests are measured, under route=\"other\""
    );
}
