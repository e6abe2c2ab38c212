//! `EphemeralServer`: a throwaway local database server, whatever its engine.
//!
//! The engine crates start them (`ops_postgres::ephemeral::EphemeralPostgres`,
//! `ops_mariadb::ephemeral::EphemeralMariaDb`) from the binaries installed on the
//! machine; this trait is the one shape a caller holds when the engine is only known at
//! run time, such as a restore check of a backup whose manifest names the engine.
//! Starting lives with each implementation (its options differ by engine); dropping
//! the value stops the server and removes its files. Nothing here is for data that
//! must survive.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::Result;

/// A running throwaway server on a loopback port.
///
/// Object-safe; callers that pick the engine at run time hold
/// `Box<dyn EphemeralServer>`. URLs carry whatever credentials the server needs, so
/// redact them ([`crate::redact_url`]) before showing them.
#[async_trait]
pub trait EphemeralServer: Send + Sync + Debug + 'static {
    /// The engine, named as manifests and [`crate::DatabaseEngine::name`] name it
    /// (`postgresql`, `mariadb`).
    fn engine(&self) -> &'static str;

    /// The URL of the server's maintenance database (`postgres` on PostgreSQL, no
    /// default database on MariaDB).
    fn url(&self) -> String;

    /// The URL of database `db` on this server.
    fn url_for(&self, db: &str) -> String;

    /// The TCP port on 127.0.0.1.
    fn port(&self) -> u16;

    /// Creates database `name`.
    ///
    /// # Errors
    /// Connection and database errors, e.g. when it exists.
    async fn create_database(&self, name: &str) -> Result<()>;

    /// Runs SQL (several statements allowed) as the superuser in database `db`. On
    /// MariaDB `db` is the default database, and an empty `db` means none.
    ///
    /// # Errors
    /// Connection and database errors.
    async fn execute(&self, db: &str, sql: &str) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::EphemeralServer;

    fn is_shareable<T: ?Sized + Send + Sync + std::fmt::Debug + 'static>() {}

    #[test]
    fn ephemeral_server_is_object_safe_and_shareable() {
        is_shareable::<dyn EphemeralServer>();
        let _: Option<Box<dyn EphemeralServer>> = None;
        let _: Option<std::sync::Arc<dyn EphemeralServer>> = None;
    }
}
