//! The request-duration histogram keeps no sample for long: the recorder holds each one
//! until its upkeep folds it into the buckets, and the server runs that upkeep itself, so
//! requests — an unauthenticated client's too — do not grow memory on a server whose
//! `/metrics` nobody scrapes.
//!
//! In a test binary of its own: it counts the process's live heap bytes (a counting
//! global allocator) and installs the process's one metrics recorder.

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes handed out and not yet taken back, process-wide.
#[expect(clippy::cast_possible_wrap, reason = "a heap's size fits an i64")]
fn live() -> i64 {
    let s = ALLOCATOR.stats();
    s.bytes_allocated as i64 + s.bytes_reallocated as i64 - s.bytes_deallocated as i64
}

#[test]
fn recorded_request_durations_are_folded_away_without_a_scrape() {
    tombstone_server::telemetry::handle().expect("the recorder");
    let labels = [("route", "other"), ("method", "other"), ("status", "401"), ("collection", "")];
    let histogram = tombstone_store::telemetry::histogram("tombstone_http_request_duration_seconds", &labels);
    histogram.record(0.001);
    std::thread::sleep(tombstone_server::telemetry::UPKEEP_EVERY * 2);
    let before = live();
    // Half a million requests' worth of samples: ~4 MB while they are held.
    for i in 0..500_000_u32 {
        histogram.record(f64::from(i % 1000) / 1e6);
    }
    // Within a few upkeep periods they are buckets again, while requests go on arriving (a
    // few, whose recording also lets the recorder free what it folded); nothing scrapes.
    let deadline = Instant::now() + tombstone_server::telemetry::UPKEEP_EVERY * 10;
    let mut grown = live() - before;
    while grown > 256 * 1024 && Instant::now() < deadline {
        for _ in 0..100 {
            histogram.record(0.002);
        }
        std::thread::sleep(Duration::from_millis(5));
        grown = live() - before;
    }
    assert!(grown <= 256 * 1024, "500,000 samples still hold {grown} bytes");
}
