//! A SIGKILL between the database's purge and the removal of the stored objects (§15): the
//! real binary purges records with files (one transaction), its files worker starts
//! removing their objects one by one, and the test kills it with SIGKILL while some are
//! still stored. After a restart, the worker finishes the job the purge left in the
//! database: every object goes, and `tombstone reconcile` finds no orphan.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{RestartableServer, Workspace, create_key, free_port, path_str, run_bounded};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[files]
url = "file://data/files"

[retention]
default = "3s"

[purge]
interval = "1s"
batch_size = 5000
pause = "10ms"
max_rows_per_second = 100000

[collections.docs.fields]
title = { type = "string" }
scan  = { type = "file" }
"#;

/// Records (each with its own file) per attempt: enough that removing their objects takes
/// far longer than one look at the directory.
const RECORDS: usize = 600;
const TIMEOUT: Duration = Duration::from_secs(60);

fn stored_objects(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|entries| entries.count()).unwrap_or(0)
}

/// One attempt: `Some(objects left at the kill)`, or `None` when the worker removed them
/// all between two looks (the kill came too late to prove anything).
fn attempt() -> Option<usize> {
    let ws = Workspace::with_config(CONFIG);
    let config = ws.config_dir.join("tombstone.toml");
    let key = create_key(|args| run_bounded(Some(&ws.cwd), args, TIMEOUT), path_str(&config), "t1", "admin");
    let key = key["secret"].as_str().expect("secret").to_string();
    let mut server = RestartableServer::new(free_port(), config.clone(), ws.cwd.clone());
    server.start();
    let base = format!("http://127.0.0.1:{}", server.port);
    let http = Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let objects = ws.config_dir.join("data/files/objects/t1");

    let mut ids = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let created = http
            .post(format!("{base}/v1/docs"))
            .bearer_auth(&key)
            .json(&json!({"title": format!("doc {i}")}))
            .send()
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let id = created.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
        let put = http
            .put(format!("{base}/v1/docs/{id}/files/scan"))
            .bearer_auth(&key)
            .header("content-type", "text/plain")
            .body(format!("the file of record {i}"))
            .send()
            .unwrap();
        assert_eq!(put.status(), StatusCode::OK, "{}", put.text().unwrap_or_default());
        ids.push(id);
    }
    // Deleted together, so that they come due together (three seconds on).
    for id in &ids {
        let deleted = http.delete(format!("{base}/v1/docs/{id}")).bearer_auth(&key).send().unwrap();
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(stored_objects(&objects), RECORDS, "one object per record, none removed while in the trash");

    // The purge pass comes within a second or two of the window's end; then the worker.
    let deadline = Instant::now() + TIMEOUT;
    let left = loop {
        let n = stored_objects(&objects);
        if n == 0 {
            break None;
        }
        if n < RECORDS {
            server.kill();
            break Some(stored_objects(&objects));
        }
        assert!(Instant::now() < deadline, "the purge never removed anything:\n{}", server.log_text());
        thread::sleep(Duration::from_millis(1));
    };
    let left = left?;
    if left == 0 {
        return None;
    }

    // The database says the records are gone; nothing in the request path will ever ask
    // for these objects again. The restarted worker must finish the job.
    server.start();
    let deadline = Instant::now() + TIMEOUT;
    while stored_objects(&objects) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} objects still stored after the restart:\n{}",
            stored_objects(&objects),
            server.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    let out = run_bounded(Some(&ws.cwd), &["reconcile", "--config", path_str(&config), "--json"], TIMEOUT);
    out.assert_success();
    let report = out.json();
    assert_eq!(report["files"]["stored"], 0, "{report}");
    assert_eq!(report["files"]["references"], 0, "{report}");
    assert_eq!(report["files"]["orphans"], json!([]), "{report}");
    assert_eq!(report["files"]["missing"], json!([]), "{report}");
    Some(left)
}

#[test]
fn a_sigkill_between_the_purge_and_the_object_removal_leaves_no_orphan() {
    for n in 1..=3 {
        if let Some(left) = attempt() {
            eprintln!(
                "attempt {n}: killed with {left} of {RECORDS} objects still stored; all removed after the restart"
            );
            return;
        }
        eprintln!("attempt {n}: the worker removed every object between two looks; trying again");
    }
    panic!("three attempts never caught the worker between the purge and the last removal");
}
