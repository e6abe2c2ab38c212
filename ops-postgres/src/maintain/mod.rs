//! [`Maintenance`] for PostgreSQL: inspection reports, maintenance actions, sessions,
//! integrity queries and archiving (see `ops_core::maintain` for the contract).
//!
//! Every session opened here is named [`APPLICATION_NAME`], so an operator (and the
//! session reports) can tell it from the application's.

use std::time::Duration;

use async_trait::async_trait;
use ops_core::maintain::{
    Action, ArchiveReport, ArchiveSpec, EndOptions, EndReport, Inspect, InspectOptions, Inspection,
    MaintainOptions, MaintainReport, Maintenance, QueryRows, SessionFilter, SessionInfo,
};
use ops_core::{Error, Result, TableRef};
use tokio_postgres::Client;

use crate::PostgresEngine;

mod actions;
mod archive;
mod inspect;
mod sessions;

/// The `application_name` of every maintenance session.
pub const APPLICATION_NAME: &str = "dbops-maintain";

/// Connects to the engine's database as [`APPLICATION_NAME`].
///
/// # Errors
/// Unreachable server, refused login.
pub(crate) async fn connect(engine: &PostgresEngine) -> Result<Client> {
    let mut config = engine.config.clone();
    config.application_name = APPLICATION_NAME.to_owned();
    crate::session::connect(&config).await
}

/// The tables `names` (`name` or `schema.name`; a bare name is looked up on the
/// search path), or every ordinary and partitioned table outside the system schemas
/// when `names` is empty.
///
/// # Errors
/// [`ops_core::ErrorKind::NotFound`] naming a table that does not exist.
pub(crate) async fn resolve_tables(client: &Client, names: &[String]) -> Result<Vec<TableRef>> {
    use crate::errors::query_error;
    if names.is_empty() {
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'm') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "listing the tables"))?;
        return Ok(rows
            .iter()
            .map(|r| TableRef::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect());
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let row = client
            .query_opt(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p', 'm')",
                &[name],
            )
            .await
            .map_err(|e| query_error(e, format!("looking up table {name}")))?;
        match row {
            Some(r) => out.push(TableRef::new(r.get::<_, String>(0), r.get::<_, String>(1))),
            None => {
                return Err(Error::new(
                    ops_core::ErrorKind::NotFound,
                    format!("no table '{name}' in this database (give it as schema.name)"),
                ));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Maintenance for PostgresEngine {
    fn engine_name(&self) -> &'static str {
        "postgresql"
    }

    async fn inspect(&self, what: Inspect, options: &InspectOptions) -> Result<Inspection> {
        inspect::inspect(self, what, options).await
    }

    async fn maintain(&self, action: Action, options: &MaintainOptions) -> Result<MaintainReport> {
        actions::maintain(self, action, options).await
    }

    async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionInfo>> {
        sessions::sessions(self, filter).await
    }

    async fn end_sessions(
        &self,
        filter: &SessionFilter,
        options: &EndOptions,
    ) -> Result<EndReport> {
        sessions::end_sessions(self, filter, options).await
    }

    async fn query_rows(&self, sql: &str, timeout: Duration, sample: usize) -> Result<QueryRows> {
        sessions::query_rows(self, sql, timeout, sample).await
    }

    async fn archive(&self, spec: &ArchiveSpec) -> Result<ArchiveReport> {
        archive::archive(self, spec).await
    }
}
