#![doc = include_str!("../README.md")]

pub mod binlog;
mod catalog;
mod conn;
mod credentials;
mod dump;
pub mod ephemeral;
mod error;
mod format;
mod globals;
pub mod health;
mod keys;
pub mod maintain;
mod restore;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ops_core::{
    DatabaseEngine, DumpOptions, DumpReport, DumpSink, GlobalsOptions, GlobalsReport,
    GlobalsRestoreOptions, RestoreOptions, RestoreReport, Result, ServerInfo, StreamSource,
    TableInfo, TableRef,
};

pub use conn::TlsMode;

/// What a restore does with the `DEFINER=` clause of views, routines, triggers and
/// events.
///
/// The definer is an account of the source server; on another server it may not
/// exist, and creating an object with an unknown definer needs `SET USER` (or `SUPER`)
/// and leaves an object that fails when used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DefinerPolicy {
    /// Restore the definer as dumped (the default, like `mariadb-dump`).
    #[default]
    Keep,
    /// Leave the clause out: the restoring account becomes the definer.
    Drop,
    /// Replace the definer with this account: `user@host`, or already quoted
    /// (`` `user`@`host` ``).
    Rewrite(String),
}

/// The MariaDB (and MySQL, where it costs nothing) [`DatabaseEngine`].
///
/// Bound to one database of one server. Construction only parses the URL; nothing
/// connects until a method that needs the server is called.
#[derive(Clone)]
pub struct MariaDbEngine {
    config: Arc<conn::ConnConfig>,
    definer: DefinerPolicy,
    binlog: bool,
    /// Accounts a globals restore created on this server, shared with the engines made
    /// from this one (see [`DatabaseEngine::restore_globals`] below).
    globals: Arc<globals::Created>,
}

impl fmt::Debug for MariaDbEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MariaDbEngine")
            .field("location", &self.config.redacted_url())
            .field("tls", &self.config.tls)
            .field("definer", &self.definer)
            .field("binlog", &self.binlog)
            .finish()
    }
}

impl MariaDbEngine {
    /// Parses a `mariadb://` or `mysql://` URL:
    /// `mariadb://user:password@host:port/database?ssl-mode=verify-full&ssl-ca=/path/ca.pem`.
    ///
    /// `ssl-mode` (or `sslmode`) is one of `disable`, `prefer` (the default: TLS when
    /// the server offers it, certificate not checked), `require` (TLS, certificate not
    /// checked), `verify-ca` (TLS, certificate checked against `ssl-ca` or the system
    /// roots, host name not checked), `verify-full` (both checked); MySQL's spellings
    /// (`DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`) are
    /// understood too, in any case. A given `ssl-ca` is the only CA trusted. A client
    /// certificate for accounts that `REQUIRE X509` is `ssl-cert=/path&ssl-key=/path`.
    /// A certificate that does not verify is an [`ops_core::ErrorKind::Authentication`]
    /// error saying what to fix; nothing falls back to an unverified or plain
    /// connection. The point-in-time replay's `mariadb` client is given the same mode
    /// and files. `socket=/path` connects over a Unix socket instead of TCP. The
    /// password is kept as a [`ops_core::Secret`].
    ///
    /// When the URL has no password it comes from `password_file=/path` (first line),
    /// the option file `defaults_file=/path`, `MARIADB_PWD`, `MYSQL_PWD` or
    /// `~/.my.cnf`, in that order; the option files also give the user, host, port and
    /// socket the URL leaves out (see the crate documentation). These are read here,
    /// once.
    ///
    /// # Errors
    /// [`ops_core::ErrorKind::InvalidInput`] for anything that is not such a URL;
    /// [`ops_core::ErrorKind::Authentication`] when a password file or option file the
    /// URL names cannot be read. The message never contains the password.
    pub fn new(url: &str) -> Result<Self> {
        Ok(Self {
            config: Arc::new(conn::ConnConfig::parse(url)?),
            definer: DefinerPolicy::Keep,
            binlog: true,
            globals: Arc::default(),
        })
    }

    /// Uses `password` for every connection, whatever the URL, the environment or the
    /// option files say: for programs that keep credentials elsewhere than in a URL.
    #[must_use]
    pub fn with_password(&self, password: ops_core::Secret) -> Self {
        Self {
            config: Arc::new(self.config.with_password(password)),
            definer: self.definer.clone(),
            binlog: self.binlog,
            globals: Arc::clone(&self.globals),
        }
    }

    /// The same server bound to another database (for example a restore target).
    #[must_use]
    pub fn with_database(&self, name: &str) -> Self {
        Self {
            config: Arc::new(self.config.with_database(name)),
            definer: self.definer.clone(),
            binlog: self.binlog,
            globals: Arc::clone(&self.globals),
        }
    }

    /// Sets what restores do with `DEFINER=` clauses.
    #[must_use]
    pub fn with_definer(mut self, policy: DefinerPolicy) -> Self {
        self.definer = policy;
        self
    }

    /// Whether restores write to the target's binary log (`true`, the default).
    ///
    /// `false` runs every restore session with `SET SESSION sql_log_bin = 0`: the
    /// restore is faster on a server with the binary log on, but replicas (and
    /// point-in-time recovery from the binlog) never see the restored schema or data.
    /// It needs the `BINLOG ADMIN` (or `SUPER`) privilege; without it the restore fails
    /// with `PermissionDenied` before it changes anything.
    #[must_use]
    pub fn with_binlog(mut self, on: bool) -> Self {
        self.binlog = on;
        self
    }

    /// Whether restores write to the binary log.
    pub fn binlog(&self) -> bool {
        self.binlog
    }

    /// The definer policy in force.
    pub fn definer(&self) -> &DefinerPolicy {
        &self.definer
    }

    /// The TLS mode parsed from the URL.
    pub fn tls_mode(&self) -> TlsMode {
        self.config.tls
    }

    fn require_database(&self) -> Result<&str> {
        if self.config.database.is_empty() {
            return Err(ops_core::Error::invalid(format!(
                "the URL {} names no database; add it as the path (mariadb://host/dbname)",
                self.config.redacted_url()
            )));
        }
        Ok(&self.config.database)
    }
}

#[async_trait]
impl DatabaseEngine for MariaDbEngine {
    fn name(&self) -> &'static str {
        "mariadb"
    }

    fn location(&self) -> String {
        self.config.redacted_url()
    }

    fn database(&self) -> String {
        self.config.database.clone()
    }

    fn schema_is_database(&self) -> bool {
        true
    }

    async fn describe(&self) -> Result<ServerInfo> {
        let mut c = conn::connect(&self.config, None, conn::Session::Catalog).await?;
        let version = conn::query_string(&mut c, "SELECT VERSION()").await?;
        let databases = conn::query_strings(
            &mut c,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
        )
        .await?;
        let db = self.config.database.clone();
        let mut tables = Vec::new();
        if !db.is_empty() {
            let sql = format!(
                "SELECT TABLE_NAME, COALESCE(DATA_LENGTH, 0), COALESCE(TABLE_ROWS, 0) \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} \
                 AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME",
                format::quote_str(&db)
            );
            for row in conn::query_rows(&mut c, &sql).await? {
                tables.push(TableInfo {
                    table: TableRef::new(db.clone(), conn::text(&row, 0)?),
                    bytes: conn::number(&row, 1)?,
                    estimated_rows: conn::number(&row, 2)?,
                });
            }
        }
        conn::disconnect(c).await;
        let mut info = ServerInfo::default();
        info.engine = "mariadb".into();
        info.version = version;
        info.databases = databases;
        info.database = db;
        info.tables = tables;
        Ok(info)
    }

    async fn dump(&self, options: &DumpOptions, sink: Arc<dyn DumpSink>) -> Result<DumpReport> {
        let db = self.require_database()?.to_owned();
        dump::dump(Arc::clone(&self.config), db, options.clone(), sink).await
    }

    async fn restore(
        &self,
        source: Arc<dyn StreamSource>,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let db = self.require_database()?.to_owned();
        restore::restore(
            Arc::clone(&self.config),
            db,
            self.definer.clone(),
            self.binlog,
            source,
            options.clone(),
        )
        .await
    }

    async fn drop_database(&self) -> Result<()> {
        let db = self.require_database()?;
        let mut c = conn::connect(&self.config, None, conn::Session::Catalog).await?;
        conn::exec(
            &mut c,
            &format!("DROP DATABASE IF EXISTS {}", format::quote_ident(db)),
        )
        .await
        .map_err(|e| e.during(format!("dropping database {db}")))?;
        conn::disconnect(c).await;
        Ok(())
    }

    fn for_database(&self, database: &str) -> Result<Arc<dyn DatabaseEngine>> {
        if database.is_empty() || database.chars().count() > 64 || database.contains('\0') {
            return Err(ops_core::Error::invalid(format!(
                "'{database}' is not a MariaDB database name (1 to 64 characters, no NUL)"
            )));
        }
        Ok(Arc::new(self.with_database(database)))
    }

    /// Every database the account can see but `mysql`, `information_schema`,
    /// `performance_schema` and `sys`.
    async fn databases(&self) -> Result<Vec<String>> {
        let mut c = conn::connect(&self.config, None, conn::Session::Catalog).await?;
        let all = conn::query_strings(
            &mut c,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA",
        )
        .await
        .map_err(|e| e.during("listing the databases"));
        conn::disconnect(c).await;
        let mut out: Vec<String> = all?
            .into_iter()
            .filter(|d| !globals::SYSTEM_DATABASES.contains(&d.as_str()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Users (`SHOW CREATE USER`), roles, role grants, default roles and privileges
    /// (`SHOW GRANTS FOR`) into the stream `globals/mariadb`, without the accounts an
    /// installation makes (every `root`, `mariadb.sys`, `mysql@localhost`) and
    /// anonymous ones (a warning names them). Without
    /// [`GlobalsOptions::role_passwords`] each password method becomes one that no
    /// password matches; `unix_socket`, `pam` and `gssapi` stay as they are. Needs
    /// SELECT on the `mysql` database: without it the error is
    /// [`ops_core::ErrorKind::PermissionDenied`]. MariaDB only (MySQL:
    /// [`ops_core::ErrorKind::InvalidInput`]).
    async fn dump_globals(&self, options: &GlobalsOptions, sink: Arc<dyn DumpSink>) -> Result<()> {
        globals::dump(&self.config, options, sink).await
    }

    /// Before the databases: creates the users and roles (one that exists is left as
    /// it is and named in `existing`), then gives the ones it created their global,
    /// proxy and role grants. After them: database, table, column and routine grants
    /// and default roles, to the accounts that the before phase of this engine (or of
    /// an engine made from it by [`DatabaseEngine::for_database`] or
    /// [`MariaDbEngine::with_database`]) created: an account the server had before is
    /// never changed. A grant whose table or routine is missing is a warning. Each
    /// role is created by the restoring account, which holds it `WITH ADMIN OPTION`
    /// as its creator did on the source.
    async fn restore_globals(
        &self,
        source: Arc<dyn StreamSource>,
        options: &GlobalsRestoreOptions,
    ) -> Result<GlobalsReport> {
        globals::restore(&self.config, &self.globals, source.as_ref(), options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_object_safe_and_debug_hides_password() {
        let e = MariaDbEngine::new("mariadb://app:hunter2@db.example:3307/shop?ssl-mode=require")
            .expect("valid URL");
        let shared: Arc<dyn DatabaseEngine> = Arc::new(e.clone());
        assert_eq!(shared.name(), "mariadb");
        assert_eq!(shared.database(), "shop");
        let debug = format!("{e:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!shared.location().contains("hunter2"));
        assert!(shared.location().contains("db.example:3307/shop"));
        let other = e.with_database("shop_copy");
        assert_eq!(other.database(), "shop_copy");
        assert!(!other.location().contains("hunter2"));
        assert!(other.location().contains("/shop_copy"));

        // A password from a file is as hidden as one in the URL.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cr3t-from-file\n").expect("write");
        let e = MariaDbEngine::new(&format!(
            "mariadb://app@db.example/shop?password_file={}",
            file.display()
        ))
        .expect("valid URL");
        let shown = format!("{e:?} {}", e.location());
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
