//! `tombstone audit verify` against a real database file: intact chains pass, and every
//! kind of tampering done directly in the database is caught and named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tombstone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tombstone")).args(args).output().expect("run tombstone")
}

/// A config in a fresh directory, with six audit entries made by the CLI.
fn prepared() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tombstone.toml");
    std::fs::write(
        &config,
        "[storage]\nurl = \"sqlite://data/t.db\"\n\n[collections.notes.fields]\ntext = { type = \"string\" }\n",
    )
    .unwrap();
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
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    (dir, config)
}

fn verify(config: &Path) -> (bool, String, String) {
    let out = tombstone(&["audit", "verify", "--config", config.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tamper(dir: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(dir.join("data/t.db")).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[test]
fn an_intact_chain_verifies() {
    let (_dir, config) = prepared();
    let (ok, stdout, _) = verify(&config);
    assert!(ok);
    assert_eq!(stdout.trim(), "6 entries verified");
}

#[test]
fn an_edited_entry_is_named() {
    let (dir, config) = prepared();
    tamper(dir.path(), "update audit set actor = 'someone-else' where seq = 3");
    let (ok, _, stderr) = verify(&config);
    assert!(!ok);
    assert!(stderr.contains("entry 3") && stderr.contains("edited"), "{stderr}");
}

#[test]
fn a_removed_entry_is_named() {
    let (dir, config) = prepared();
    tamper(dir.path(), "delete from audit where seq = 2");
    let (ok, _, stderr) = verify(&config);
    assert!(!ok);
    assert!(stderr.contains("entry 3"), "{stderr}");
}

#[test]
fn reordered_entries_are_named() {
    let (dir, config) = prepared();
    // Swap the contents of entries 4 and 5, keeping their seq.
    tamper(
        dir.path(),
        "update audit set seq = -4 where seq = 4; update audit set seq = 4 where seq = 5; update audit set seq = 5 where seq = -4;",
    );
    let (ok, _, stderr) = verify(&config);
    assert!(!ok);
    assert!(stderr.contains("entry 4"), "{stderr}");
}

#[test]
fn a_truncated_log_is_detected() {
    let (dir, config) = prepared();
    tamper(dir.path(), "delete from audit where seq >= 5");
    let (ok, _, stderr) = verify(&config);
    assert!(!ok);
    assert!(stderr.contains("truncated") && stderr.contains("entry 6"), "{stderr}");
}

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
