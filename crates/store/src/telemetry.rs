//! Cheap metric handles on hot paths.
//!
//! `metrics::counter!("name", "label" => value)` builds a key (allocating its labels),
//! hashes it and looks it up in the registry on every call. On paths that run for every
//! request, handles are looked up once per thread and label set and then reused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use metrics::{Counter, Histogram};

thread_local! {
    static COUNTERS: RefCell<HashMap<u64, Counter>> = RefCell::new(HashMap::new());
    static HISTOGRAMS: RefCell<HashMap<u64, Histogram>> = RefCell::new(HashMap::new());
}

fn key_of(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// The counter `name{collection="…"}`.
pub fn collection_counter(name: &'static str, collection: &str) -> Counter {
    let key = key_of(&[name, collection]);
    COUNTERS.with(|c| {
        c.borrow_mut()
            .entry(key)
            .or_insert_with(|| metrics::counter!(name, "collection" => collection.to_string()))
            .clone()
    })
}

/// The histogram `name{label=value, …}`.
pub fn histogram(name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
    let mut parts: Vec<&str> = Vec::with_capacity(1 + 2 * labels.len());
    parts.push(name);
    for (k, v) in labels {
        parts.push(k);
        parts.push(v);
    }
    let key = key_of(&parts);
    HISTOGRAMS.with(|c| {
        c.borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let labels: Vec<metrics::Label> =
                    labels.iter().map(|(k, v)| metrics::Label::new(*k, (*v).to_string())).collect();
                metrics::histogram!(name, labels)
            })
            .clone()
    })
}
