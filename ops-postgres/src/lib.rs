#![doc = include_str!("../README.md")]

mod catalog;
mod config;
mod credentials;
mod dump;
pub mod ephemeral;
mod errors;
mod globals;
pub mod health;
pub mod maintain;
pub mod physical;
pub mod receive;
mod restore;
mod roles;
mod schedule;
mod session;
mod tls;
mod toc;
mod tools;
pub mod wal;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ops_core::{
    DatabaseEngine, DumpOptions, DumpReport, DumpSink, GlobalsOptions, GlobalsReport,
    GlobalsRestoreOptions, RestoreOptions, RestoreReport, Result, ServerInfo, StreamSource,
    TableInfo, TableRef,
};
use sqlx::Connection;

use crate::config::ConnConfig;
use crate::errors::sqlx_error;

/// The PostgreSQL [`DatabaseEngine`], bound to one database.
///
/// Creating one only parses the URL; every operation connects anew. `Debug`,
/// [`DatabaseEngine::location`] and every error show the URL with its password
/// replaced by `******`.
#[derive(Clone)]
pub struct PostgresEngine {
    config: ConnConfig,
    bin_dir: Option<PathBuf>,
    lock_wait_timeout: Duration,
}

/// How long a dump waits for a table lock by default (see
/// [`PostgresEngine::with_lock_wait_timeout`]).
pub const DEFAULT_LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

impl fmt::Debug for PostgresEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEngine")
            .field("url", &self.config.redacted_url())
            .field("bin_dir", &self.bin_dir)
            .field("lock_wait_timeout", &self.lock_wait_timeout)
            .finish()
    }
}

impl PostgresEngine {
    /// Parses a `postgres://` or `postgresql://` URL; what it lacks comes from its
    /// connection service (`service=`, `PGSERVICE`), then the `PG*` environment
    /// variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGAPPNAME`,
    /// `PGCONNECT_TIMEOUT`), then libpq's defaults; without a password, the password
    /// file's (`passfile=`, `PGPASSFILE`, `~/.pgpass`). Does not connect. See the crate
    /// documentation for the rules.
    ///
    /// # Errors
    /// [`ops_core::ErrorKind::InvalidInput`] for a malformed URL, an unknown parameter,
    /// an unknown `sslmode`, or a service that is defined nowhere or holds a setting
    /// not supported; the message shows the URL redacted.
    pub fn new(url: &str) -> Result<Self> {
        let config = ConnConfig::parse(url, &|name| std::env::var(name).ok())?;
        Ok(Self {
            config,
            bin_dir: None,
            lock_wait_timeout: DEFAULT_LOCK_WAIT_TIMEOUT,
        })
    }

    /// The same server and credentials, another database.
    #[must_use]
    pub fn with_database(&self, name: &str) -> Self {
        Self {
            config: self.config.with_dbname(name),
            bin_dir: self.bin_dir.clone(),
            lock_wait_timeout: self.lock_wait_timeout,
        }
    }

    /// Uses `password` for every connection (and for pg_dump and pg_restore, through
    /// a private password file), whatever the URL, the environment or the password
    /// file say: for programs that keep credentials elsewhere than in a URL.
    #[must_use]
    pub fn with_password(&self, password: ops_core::Secret) -> Self {
        Self {
            config: self.config.with_password(password),
            bin_dir: self.bin_dir.clone(),
            lock_wait_timeout: self.lock_wait_timeout,
        }
    }

    /// Takes pg_dump and pg_restore from `dir` only, instead of searching
    /// (`DBOPS_PG_BINDIR`, `pg_config --bindir`, `/usr/lib/postgresql/*/bin`, `PATH`).
    #[must_use]
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// How long a dump waits for each table lock it takes at the start (ours and
    /// pg_dump's `--lock-wait-timeout`) before failing with
    /// [`ops_core::ErrorKind::Locked`]; default [`DEFAULT_LOCK_WAIT_TIMEOUT`]. A lock
    /// can wait behind a queued `ALTER TABLE` that itself waits for the dump: without
    /// a limit that would hang forever.
    #[must_use]
    pub fn with_lock_wait_timeout(mut self, timeout: Duration) -> Self {
        self.lock_wait_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    async fn sqlx_connection(&self) -> Result<sqlx::PgConnection> {
        self.config.sqlx_connect().await
    }
}

#[async_trait]
impl DatabaseEngine for PostgresEngine {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn location(&self) -> String {
        self.config.redacted_url()
    }

    fn database(&self) -> String {
        self.config.dbname.clone()
    }

    async fn describe(&self) -> Result<ServerInfo> {
        let mut conn = self.sqlx_connection().await?;
        let (version, database): (String, String) =
            sqlx::query_as("SELECT version(), current_database()::text")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| sqlx_error(e, "reading the server version"))?;
        let databases: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(|e| sqlx_error(e, "listing databases"))?;
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, pg_relation_size(c.oid)::int8,
                    greatest(c.reltuples, 0)::int8
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence <> 't'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
              ORDER BY 1, 2",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(|e| sqlx_error(e, "listing tables"))?;
        let _ = conn.close().await;
        let mut info = ServerInfo::default();
        info.engine = "postgresql".to_owned();
        info.version = version;
        info.databases = databases;
        info.database = database;
        info.tables = rows
            .into_iter()
            .map(|(schema, name, bytes, rows)| TableInfo {
                table: TableRef::new(schema, name),
                bytes: u64::try_from(bytes).unwrap_or(0),
                estimated_rows: u64::try_from(rows).unwrap_or(0),
            })
            .collect();
        Ok(info)
    }

    async fn dump(&self, options: &DumpOptions, sink: Arc<dyn DumpSink>) -> Result<DumpReport> {
        self.config.require_database("a backup")?;
        dump::dump(
            &self.config,
            self.bin_dir.clone(),
            self.lock_wait_timeout,
            options,
            sink,
        )
        .await
    }

    async fn restore(
        &self,
        source: Arc<dyn StreamSource>,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        self.config.require_database("a restore")?;
        restore::restore(&self.config, self.bin_dir.clone(), source, options).await
    }

    async fn drop_database(&self) -> Result<()> {
        self.config.require_database("dropping a database")?;
        restore::drop_database(&self.config).await
    }

    fn for_database(&self, database: &str) -> Result<Arc<dyn DatabaseEngine>> {
        if database.is_empty() {
            return Err(ops_core::Error::invalid("a database name cannot be empty"));
        }
        Ok(Arc::new(self.with_database(database)))
    }

    async fn databases(&self) -> Result<Vec<String>> {
        globals::databases(&self.config).await
    }

    async fn dump_globals(&self, options: &GlobalsOptions, sink: Arc<dyn DumpSink>) -> Result<()> {
        globals::dump_globals(&self.config, options, sink).await
    }

    async fn restore_globals(
        &self,
        source: Arc<dyn StreamSource>,
        options: &GlobalsRestoreOptions,
    ) -> Result<GlobalsReport> {
        globals::restore_globals(&self.config, self.bin_dir.clone(), source, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_object_safe_and_debug_is_redacted() {
        let engine = PostgresEngine::new("postgres://alice:hunter2secret@db.example:5433/shop")
            .expect("valid URL");
        let shared: Arc<dyn DatabaseEngine> = Arc::new(engine.clone());
        assert_eq!(shared.name(), "postgresql");
        let shown = format!("{engine:?} {}", shared.location());
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(
            shown.contains("alice:******@db.example:5433/shop"),
            "{shown}"
        );
        assert_eq!(engine.with_database("other").database(), "other");
    }
}
