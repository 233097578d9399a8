//! The PostgreSQL test wiring, end to end: `TOMBSTONE_TEST_POSTGRES_URL` (which
//! `scripts/test` sets to a throwaway cluster it starts) reaches a server on which a test
//! can create a database of its own, use it, and drop it — what every PostgreSQL test does.
//!
//! Without the variable the test prints a notice and passes: that is the only way it skips.
//! With it, an unreachable server or a missing privilege fails the test.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, Config, NoTls};

const URL_VAR: &str = "TOMBSTONE_TEST_POSTGRES_URL";

/// Connects with `config`, driving the connection on its own task.
async fn connect(config: &Config) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    let driver = tokio::spawn(async move {
        // The connection ends with an error only if the server goes away mid-test; the
        // client's next call reports that.
        let _ = connection.await;
    });
    (client, driver)
}

#[tokio::test]
async fn a_test_gets_a_database_of_its_own() {
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!("{URL_VAR} is not set: PostgreSQL smoke test skipped (scripts/test sets it)");
        return;
    };
    let admin_config = Config::from_str(&url).expect("TOMBSTONE_TEST_POSTGRES_URL is a postgres:// URL");
    let (admin, admin_driver) = connect(&admin_config).await;

    // Unique per process and per call, so that parallel test binaries never share one.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    let name = format!("tombstone_smoke_{}_{nanos}", std::process::id());
    admin.batch_execute(&format!("create database {name}")).await.expect("create database");

    let mut config = admin_config.clone();
    config.dbname(&name);
    let (client, driver) = connect(&config).await;
    let row = client.query_one("select current_database()", &[]).await.expect("current_database");
    assert_eq!(row.get::<_, String>(0), name);

    // A partial unique index over lower(): the shape the PostgreSQL store's uniqueness rests on.
    client
        .batch_execute(
            "create table items (id bigint generated always as identity primary key, sku text not null, \
                 deleted_at timestamptz);
             create unique index items_sku_active on items (lower(sku)) where deleted_at is null;",
        )
        .await
        .expect("schema");
    client.execute("insert into items (sku) values ($1)", &[&"Tea-1"]).await.expect("first insert");
    let duplicate = client.execute("insert into items (sku) values ($1)", &[&"TEA-1"]).await;
    let err = duplicate.expect_err("a second active TEA-1 violates the partial unique index");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.constraint(), Some("items_sku_active"));
    client.execute("update items set deleted_at = now() where lower(sku) = 'tea-1'", &[]).await.expect("delete");
    client.execute("insert into items (sku) values ($1)", &[&"TEA-1"]).await.expect("unique among active only");
    let row = client
        .query_one("select count(*), count(*) filter (where deleted_at is null) from items", &[])
        .await
        .expect("count");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 1));

    drop(client);
    driver.await.expect("connection task");
    admin.batch_execute(&format!("drop database {name}")).await.expect("drop database");
    let gone =
        admin.query_one("select count(*) from pg_database where datname = $1", &[&name]).await.expect("pg_database");
    assert_eq!(gone.get::<_, i64>(0), 0);
    drop(admin);
    admin_driver.await.expect("admin connection task");
}
