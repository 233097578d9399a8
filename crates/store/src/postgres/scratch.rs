//! A throwaway database on a PostgreSQL server: what the test suites and the benchmarks
//! run each store test against, so that tests never share rows.

use tokio_postgres::NoTls;

use crate::StoreError;

/// A database created on the server behind an admin URL and dropped when this value is
/// dropped (forcefully: connections still open to it are closed).
#[derive(Debug)]
pub struct ScratchDatabase {
    admin: String,
    name: String,
    url: String,
}

/// The URL of `admin` with another database name.
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').map_or((admin, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut url = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

async fn run(admin: &str, statement: &str) -> Result<(), StoreError> {
    let (client, connection) = tokio_postgres::connect(admin, NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(statement).await;
    drop(client);
    let _ = driver.await;
    Ok(result?)
}

impl ScratchDatabase {
    /// Creates a database with a fresh name on the server `admin` points at.
    ///
    /// # Errors
    /// The server could not be reached or refused.
    pub async fn create(admin: &str) -> Result<Self, StoreError> {
        Self::create_with(admin, "").await
    }

    /// Creates a database with `options` after `create database <name>` (a locale, a
    /// template).
    ///
    /// # Errors
    /// The server could not be reached or refused.
    pub async fn create_with(admin: &str, options: &str) -> Result<Self, StoreError> {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        run(admin, &format!("create database {name} {options}")).await?;
        Ok(Self { url: with_database(admin, &name), admin: admin.to_string(), name })
    }

    /// The database's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Drop may run inside a runtime (a test's end): the drop gets a thread and a
        // runtime of its own, and is waited for, so the database is gone on return.
        let (admin, statement) = (self.admin.clone(), format!("drop database if exists {} with (force)", self.name));
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(run(&admin, &statement)).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            tracing::warn!(database = %self.name, "a scratch database could not be dropped");
        }
    }
}
