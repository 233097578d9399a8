//! `tombstone audit verify` against a real database, on each store (SQLite's file, and
//! PostgreSQL's database when the tests have one): intact chains pass, and every kind of
//! tampering done directly in the database is caught and named.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::db::{TestDb, each_store};

fn tombstone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tombstone")).args(args).output().expect("run tombstone")
}

/// A config in a fresh directory over `db`, with six audit entries made by the CLI.
fn prepared(db: TestDb) -> (tempfile::TempDir, PathBuf, TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tombstone.toml");
    let toml = "[storage]\nurl = \"sqlite://data/t.db\"\n\n[collections.notes.fields]\ntext = { type = \"string\" }\n";
    std::fs::write(&config, db.config(toml)).unwrap();
    let c = config.to_str().unwrap();
    for i in 0..6 {
        let out = tombstone(&[
            "keys",
            "create",
            "--config",
            c,
            "--tenant",
            "t1",
            "--scopes",
            "read",
            "--name",
            &format!("k{i}"),
        ]);
        assert!(out.status.success(), "{}: {}", db.name(), String::from_utf8_lossy(&out.stderr));
    }
    let db = db.in_config_dir(dir.path());
    (dir, config, db)
}

fn verify(config: &Path) -> (bool, String, String) {
    let out = tombstone(&["audit", "verify", "--config", config.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Tampers with the audit log by `sql` on each store and returns what verify said there.
fn tampered(sql: &str) -> Vec<(&'static str, bool, String)> {
    each_store("t.db")
        .into_iter()
        .map(|db| {
            let (_dir, config, db) = prepared(db);
            db.execute(sql);
            let (ok, _, stderr) = verify(&config);
            (db.name(), ok, stderr)
        })
        .collect()
}

#[test]
fn an_intact_chain_verifies() {
    for db in each_store("t.db") {
        let (_dir, config, db) = prepared(db);
        let (ok, stdout, stderr) = verify(&config);
        assert!(ok, "{}: {stderr}", db.name());
        assert_eq!(stdout.trim(), "6 entries verified", "{}", db.name());
    }
}

#[test]
fn an_edited_entry_is_named() {
    for (store, ok, stderr) in tampered("update audit set actor = 'someone-else' where seq = 3") {
        assert!(!ok, "{store}");
        assert!(stderr.contains("entry 3") && stderr.contains("edited"), "{store}: {stderr}");
    }
}

#[test]
fn a_removed_entry_is_named() {
    for (store, ok, stderr) in tampered("delete from audit where seq = 2") {
        assert!(!ok, "{store}");
        assert!(stderr.contains("entry 3"), "{store}: {stderr}");
    }
}

#[test]
fn reordered_entries_are_named() {
    // Swap the contents of entries 4 and 5, keeping their seq.
    let swap = "update audit set seq = -4 where seq = 4; update audit set seq = 4 where seq = 5; update audit set seq = 5 where seq = -4;";
    for (store, ok, stderr) in tampered(swap) {
        assert!(!ok, "{store}");
        assert!(stderr.contains("entry 4"), "{store}: {stderr}");
    }
}

#[test]
fn a_truncated_log_is_detected() {
    for (store, ok, stderr) in tampered("delete from audit where seq >= 5") {
        assert!(!ok, "{store}");
        assert!(stderr.contains("truncated") && stderr.contains("entry 6"), "{store}: {stderr}");
    }
}

/// SQLite only: verify opens the file read-only and must not create one where there is
/// none. PostgreSQL's counterpart, a database that cannot be reached, is one line and a
/// non-zero exit too (`postgres_ops.rs`).
#[test]
fn verify_is_read_only_and_refuses_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tombstone.toml");
    std::fs::write(&config, "[storage]\nurl = \"sqlite://nothing/here.db\"\n").unwrap();
    let (ok, _, stderr) = verify(&config);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("nothing").exists(), "verify must not create a database");
}
