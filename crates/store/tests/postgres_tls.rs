//! TLS to PostgreSQL with libpq's `sslmode` meanings, against the test cluster, which
//! `scripts/postgres` starts with TLS on and a certificate for `localhost` only, signed by
//! a CA of its own (`tombstone-test-ca.crt` in the data directory).

mod common;

use std::path::{Path, PathBuf};

use common::TestDb;
use tombstone_store::PgStore;

/// The test database's URL with `host` and extra query parameters.
fn url(db: &TestDb, host: &str, params: &str) -> String {
    let base = db.url().replacen("127.0.0.1", host, 1);
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{params}")
}

/// Whether the store's connection, named `name`, is encrypted (seen from the server).
async fn encrypted(db: &TestDb, name: &str) -> bool {
    let client = db.client().await;
    let row = client
        .query_one(
            "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) where a.application_name = $1",
            &[&name],
        )
        .await
        .expect("the store's connection is listed");
    row.get(0)
}

/// A file of the data directory, written to `dir`.
async fn server_file(db: &TestDb, name: &str, dir: &Path) -> PathBuf {
    let client = db.client().await;
    let text: String = client.query_one("select pg_read_file($1)", &[&name]).await.expect("read").get(0);
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[tokio::test]
async fn each_sslmode_encrypts_and_checks_what_libpq_would() {
    let Some(db) = TestDb::create("sslmode").await else { return };
    let ssl_on: String = db.client().await.query_one("show ssl", &[]).await.expect("show ssl").get(0);
    assert_eq!(ssl_on, "on", "the test cluster speaks TLS (scripts/postgres turns it on)");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = server_file(&db, "tombstone-test-ca.crt", dir.path()).await;
    let leaf = server_file(&db, "server.crt", dir.path()).await;
    let ca = ca.display();
    let leaf = leaf.display();

    let accepted = [
        ("disable", "127.0.0.1", "sslmode=disable".to_owned(), false),
        ("default", "127.0.0.1", String::new(), true),
        ("require", "127.0.0.1", "sslmode=require".to_owned(), true),
        ("require_ca", "127.0.0.1", format!("sslmode=require&sslrootcert={ca}"), true),
        // verify-ca checks the chain, not the name: 127.0.0.1 is not on the certificate.
        ("verify_ca", "127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}"), true),
        ("verify_full", "localhost", format!("sslmode=verify-full&sslrootcert={ca}"), true),
    ];
    for (name, host, params, tls) in accepted {
        let url = url(&db, host, &format!("application_name={name}&{params}"));
        let store = PgStore::connect(&url, 1).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(encrypted(&db, name).await, tls, "{name}");
        drop(store);
    }

    let refused = [
        // The name is checked: the certificate is for localhost.
        ("full_by_ip", "127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}")),
        // The chain is checked: the server's own certificate is not a CA.
        ("wrong_root", "localhost", format!("sslmode=verify-full&sslrootcert={leaf}")),
        ("ca_wrong_root", "localhost", format!("sslmode=verify-ca&sslrootcert={leaf}")),
        ("require_wrong_root", "localhost", format!("sslmode=require&sslrootcert={leaf}")),
    ];
    for (name, host, params) in refused {
        let url = url(&db, host, &format!("application_name={name}&{params}"));
        let err = PgStore::connect(&url, 1).await.err().unwrap_or_else(|| panic!("{name} connected"));
        let text = err.to_string();
        assert!(!text.contains('\n'), "{name}: one line: {text}");
        assert!(text.to_lowercase().contains("certificate"), "{name}: says why: {text}");
    }
}
