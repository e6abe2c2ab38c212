//! `DatabaseEngine`: what dbops knows about one database engine.
//!
//! An engine turns a database into a set of named byte streams (schema before data,
//! one stream per table or table range, schema after data) and turns such a set back
//! into a database. It never knows where bytes are stored: dump writes into a
//! [`DumpSink`], restore reads from a [`StreamSource`]; the repository implements both.
//!
//! The contract for table data streams, which the repository relies on to count rows
//! and verification relies on to compare tables: a data stream is a sequence of
//! records, each ending in `\n`, with no other `\n` byte in it (PostgreSQL's COPY text
//! format and dbops' MariaDB format both escape newlines). Dumping the same table
//! content twice yields the same multiset of records.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::target::ByteStream;

mod filter;
pub use filter::{NamePattern, TableFilter};

/// A schema-qualified table name (`schema` is the database on MariaDB).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableRef {
    /// Schema (PostgreSQL) or database (MariaDB).
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl TableRef {
    /// A table reference.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.name`; a bare `name` gets `default_schema`. Quoting is not
    /// supported: the first `.` separates.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an empty name.
    pub fn parse(text: &str, default_schema: &str) -> Result<Self> {
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (s, n),
            None => (default_schema, text),
        };
        if schema.is_empty() || name.is_empty() {
            return Err(crate::Error::invalid(format!(
                "'{text}' is not a table name; write schema.table"
            )));
        }
        Ok(Self::new(schema, name))
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Options of [`DatabaseEngine::dump_globals`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GlobalsOptions {
    /// Include role password hashes (PostgreSQL `pg_authid`, MariaDB authentication
    /// strings). Off by default: a backup then recreates roles that cannot log in with
    /// a password until one is set.
    pub role_passwords: bool,
}

impl GlobalsOptions {
    /// Includes password hashes.
    #[must_use]
    pub fn with_role_passwords(mut self, on: bool) -> Self {
        self.role_passwords = on;
        self
    }
}

/// When [`DatabaseEngine::restore_globals`] runs relative to the databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalsPhase {
    /// Before any database is restored: roles and users.
    BeforeDatabases,
    /// After the databases exist: what refers to them.
    AfterDatabases,
}

/// Options of [`DatabaseEngine::restore_globals`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GlobalsRestoreOptions {
    /// Which phase to run.
    pub phase: GlobalsPhase,
    /// Only what these databases need (their owners, grantees, definers); empty means
    /// everything (a whole-server restore). Names are the backup's; the repository's
    /// source then also lists those databases' own streams (under their stored names),
    /// from which an engine can tell what they need. When one database is named and
    /// the engine is bound to another, that database is being restored under the
    /// bound name, and what the globals hold about it follows it there.
    pub databases: Vec<String>,
}

impl GlobalsRestoreOptions {
    /// Everything, in `phase`.
    pub fn new(phase: GlobalsPhase) -> Self {
        Self {
            phase,
            databases: Vec::new(),
        }
    }

    /// Only what these databases need.
    #[must_use]
    pub fn with_databases(mut self, databases: Vec<String>) -> Self {
        self.databases = databases;
        self
    }
}

/// What [`DatabaseEngine::restore_globals`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GlobalsReport {
    /// Objects created (`role app`, `user 'app'@'%'`, `grant …`).
    pub created: Vec<String>,
    /// Objects that existed already and were left alone.
    pub existing: Vec<String>,
    /// Anything the operator should know (a tablespace whose directory is missing).
    pub warnings: Vec<String>,
}

/// What a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamRole {
    /// Schema (DDL) in the engine's own form.
    Schema,
    /// Rows of one table, or of one range of it (see the module docs for the format).
    TableData,
    /// Anything else the engine needs back (sequence values, large objects, ...).
    Auxiliary,
}

/// One named stream of a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// Unique within a backup, e.g. `schema` or `data/public.film/0`.
    pub name: String,
    /// What it holds.
    pub role: StreamRole,
    /// The table, for [`StreamRole::TableData`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableRef>,
    /// Engine-private facts needed to restore the stream (column lists, formats).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl StreamSpec {
    /// A stream spec with no table and no meta.
    pub fn new(name: impl Into<String>, role: StreamRole) -> Self {
        Self {
            name: name.into(),
            role,
            table: None,
            meta: BTreeMap::new(),
        }
    }

    /// A table data stream.
    pub fn table_data(name: impl Into<String>, table: TableRef) -> Self {
        Self {
            table: Some(table),
            ..Self::new(name, StreamRole::TableData)
        }
    }

    /// Adds an engine-private fact.
    #[must_use]
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// What the repository measured of one finished stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// Plain bytes.
    pub bytes: u64,
    /// Records (rows) for table data streams; `\n`-terminated lines otherwise.
    pub rows: u64,
}

/// Receives the streams of a dump. Implemented by the repository (store) and by
/// verification (hash and compare).
#[async_trait]
pub trait DumpSink: Send + Sync {
    /// Starts a stream. Engines may have several open at once, one per worker.
    ///
    /// # Errors
    /// The sink cannot accept the stream (duplicate name, storage failure).
    async fn open_stream(&self, spec: StreamSpec) -> Result<Box<dyn StreamWriter>>;

    /// Records a warning that belongs in the backup's manifest and the operator's
    /// output (e.g. "table x is MyISAM: not snapshot-consistent").
    fn warn(&self, message: String);
}

/// Writes one stream. Dropping a writer without [`StreamWriter::finish`] abandons the
/// stream: it is not recorded.
#[async_trait]
pub trait StreamWriter: Send {
    /// Appends bytes. Applies back-pressure: returns when the data is accepted.
    ///
    /// # Errors
    /// Storage or processing failures downstream.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Ends the stream and returns what was measured.
    ///
    /// # Errors
    /// Storage or processing failures downstream.
    async fn finish(self: Box<Self>) -> Result<StreamSummary>;
}

/// Supplies the streams of a stored dump for a restore.
#[async_trait]
pub trait StreamSource: Send + Sync {
    /// The streams available, in dump order.
    fn streams(&self) -> &[StreamSpec];

    /// Opens one stream by name. Items are authenticated plain bytes; a damaged chunk
    /// yields an error item naming it, and the engine must fail the restore with it.
    ///
    /// # Errors
    /// No such stream; storage errors.
    async fn open(&self, name: &str) -> Result<ByteStream>;
}

/// Options of a dump. `Default` is a full dump with one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DumpOptions {
    /// Parallel connections (all on one snapshot).
    pub jobs: usize,
    /// Only these tables' data (and no schema streams) when non-empty.
    pub tables: Vec<TableRef>,
    /// Leave out schema and auxiliary streams (verification re-dumps).
    pub data_only: bool,
    /// A table larger than this many bytes is split into several streams.
    pub split_bytes: u64,
    /// Which tables to take, and which without rows (pg_dump's `-t`, `-T`, `-n`, `-N`,
    /// `--exclude-table-data`); empty takes everything. Applies to schema and data
    /// streams alike; with [`DumpOptions::tables`] set, only those tables' data is
    /// dumped and the filter further narrows it.
    #[serde(default, skip_serializing_if = "TableFilter::is_empty")]
    pub filter: TableFilter,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            jobs: 1,
            tables: Vec::new(),
            data_only: false,
            split_bytes: 256 * 1024 * 1024,
            filter: TableFilter::default(),
        }
    }
}

impl DumpOptions {
    /// Sets the number of parallel connections (at least 1).
    #[must_use]
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// Restricts the dump to these tables' data.
    #[must_use]
    pub fn with_tables(mut self, tables: Vec<TableRef>) -> Self {
        self.tables = tables;
        self
    }

    /// Leaves out schema and auxiliary streams.
    #[must_use]
    pub fn with_data_only(mut self, data_only: bool) -> Self {
        self.data_only = data_only;
        self
    }

    /// Sets the size above which a table is split into several streams.
    #[must_use]
    pub fn with_split_bytes(mut self, split_bytes: u64) -> Self {
        self.split_bytes = split_bytes.max(1);
        self
    }

    /// Takes only the tables `filter` chooses (see [`TableFilter`]).
    #[must_use]
    pub fn with_filter(mut self, filter: TableFilter) -> Self {
        self.filter = filter;
        self
    }
}

/// What an engine reports about a finished dump; it goes into the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DumpReport {
    /// Server version as the server states it.
    pub server_version: String,
    /// The database dumped.
    pub database: String,
    /// How consistency was obtained and where (snapshot id, binlog/GTID position).
    pub snapshot: BTreeMap<String, String>,
    /// Warnings for the operator (also recorded by [`DumpSink::warn`]).
    pub warnings: Vec<String>,
    /// A stable identity of the server that survives renames and address changes
    /// (PostgreSQL: `pg:` and the system identifier; MySQL: `mysql:` and
    /// `server_uuid`), when the engine can read one. With the address and the
    /// database it decides which backups form one group (see
    /// [`crate::repo::BackupGroup`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
}

/// Options of a restore. `Default` restores everything into an existing empty database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Parallel connections.
    pub jobs: usize,
    /// Create the target database (it must not exist).
    pub create: bool,
    /// Drop what the target holds first (or, with a table filter, those tables).
    pub clean: bool,
    /// Keep a database that `create` made when the restore fails.
    pub keep_failed: bool,
    /// Only these tables (with their indexes, constraints and triggers).
    pub tables: Vec<TableRef>,
    /// Only these schemas.
    pub schemas: Vec<String>,
    /// Restore without ownership statements (targets without the source's roles).
    pub no_owner: bool,
    /// The target is a throwaway server made for this restore (the proof of
    /// `verify --restore`): create there what the backup needs to stand — the roles
    /// that own or are granted objects (without passwords, unable to log in), the
    /// definers of views and routines — and name each in
    /// [`RestoreReport::prepared`]. Never set for a server that matters.
    #[serde(default)]
    pub scratch: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            jobs: 1,
            create: false,
            clean: false,
            keep_failed: false,
            tables: Vec::new(),
            schemas: Vec::new(),
            no_owner: false,
            scratch: false,
        }
    }
}

impl RestoreOptions {
    /// Sets the number of parallel connections (at least 1).
    #[must_use]
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// Creates the target database.
    #[must_use]
    pub fn with_create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Cleans the target first.
    #[must_use]
    pub fn with_clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }

    /// Keeps a created database after a failure.
    #[must_use]
    pub fn with_keep_failed(mut self, keep: bool) -> Self {
        self.keep_failed = keep;
        self
    }

    /// Restores only these tables.
    #[must_use]
    pub fn with_tables(mut self, tables: Vec<TableRef>) -> Self {
        self.tables = tables;
        self
    }

    /// Restores only these schemas.
    #[must_use]
    pub fn with_schemas(mut self, schemas: Vec<String>) -> Self {
        self.schemas = schemas;
        self
    }

    /// Leaves out ownership statements.
    #[must_use]
    pub fn with_no_owner(mut self, no_owner: bool) -> Self {
        self.no_owner = no_owner;
        self
    }

    /// Marks the target as a throwaway server (see [`RestoreOptions::scratch`]).
    #[must_use]
    pub fn with_scratch(mut self, scratch: bool) -> Self {
        self.scratch = scratch;
        self
    }
}

/// What an engine reports about a finished restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The database restored into.
    pub database: String,
    /// Tables whose data was loaded, with the rows loaded.
    pub tables: BTreeMap<String, u64>,
    /// Warnings for the operator.
    pub warnings: Vec<String>,
    /// What a scratch restore created so that the backup could stand (e.g.
    /// `role erpgo (owner)`, `user 'app'@'%' (definer)`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prepared: Vec<String>,
}

/// Size of one table, as `describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The table.
    pub table: TableRef,
    /// On-disk size in bytes (data, without indexes).
    pub bytes: u64,
    /// Estimated rows.
    pub estimated_rows: u64,
}

/// What `describe` reports about a server and its database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// Engine name (`postgresql`, `mariadb`).
    pub engine: String,
    /// Server version string.
    pub version: String,
    /// Databases on the server.
    pub databases: Vec<String>,
    /// The connected database.
    pub database: String,
    /// Its tables with sizes.
    pub tables: Vec<TableInfo>,
}

/// One database engine, bound to one database URL.
///
/// Object-safe; users hold `Arc<dyn DatabaseEngine>`.
#[async_trait]
pub trait DatabaseEngine: Send + Sync + Debug + 'static {
    /// `postgresql` or `mariadb`; stored in manifests.
    fn name(&self) -> &'static str;

    /// The database URL with its password redacted.
    fn location(&self) -> String;

    /// The database name this engine is bound to.
    fn database(&self) -> String;

    /// True when a table's [`TableRef::schema`] is the database itself (MariaDB), so
    /// that restoring under another database name renames it; false when schemas live
    /// inside the database (PostgreSQL). Verification compares tables across such a
    /// rename.
    fn schema_is_database(&self) -> bool {
        false
    }

    /// Connects and reports version, databases and tables with sizes.
    ///
    /// # Errors
    /// Unreachable server, failed authentication, database errors.
    async fn describe(&self) -> Result<ServerInfo>;

    /// Takes a consistent snapshot and writes every stream into `sink`.
    ///
    /// # Errors
    /// Connection, privilege and database errors; sink errors; a missing or too old
    /// client tool. On error, streams already written are abandoned by the caller.
    async fn dump(&self, options: &DumpOptions, sink: Arc<dyn DumpSink>) -> Result<DumpReport>;

    /// Restores the streams of `source` into the bound database.
    ///
    /// # Errors
    /// [`crate::ErrorKind::TargetNotEmpty`] when the target holds data and `clean` is
    /// off; connection and database errors; the source's own errors (damaged data).
    /// A failed restore never reports success.
    async fn restore(
        &self,
        source: Arc<dyn StreamSource>,
        options: &RestoreOptions,
    ) -> Result<RestoreReport>;

    /// Drops the bound database (used to remove scratch databases).
    ///
    /// # Errors
    /// Connection and database errors.
    async fn drop_database(&self) -> Result<()>;

    /// The same server, reached with the same credentials and settings, bound to
    /// another database: how a whole-server backup or restore walks the databases.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for a name the engine cannot address; the
    /// default is [`crate::ErrorKind::InvalidInput`] saying the engine has no
    /// whole-server operations.
    fn for_database(&self, database: &str) -> Result<Arc<dyn DatabaseEngine>> {
        Err(crate::Error::invalid(format!(
            "{} cannot address database '{database}': whole-server operations are not built for this engine",
            self.name()
        )))
    }

    /// The databases a whole-server backup takes, sorted: every database a client
    /// created, without templates and the engine's own system databases.
    ///
    /// # Errors
    /// Connection, privilege and database errors.
    async fn databases(&self) -> Result<Vec<String>> {
        Err(crate::Error::invalid(format!(
            "{} has no whole-server backup",
            self.name()
        )))
    }

    /// Writes the server's globals (PostgreSQL: roles, memberships, role settings,
    /// tablespaces; MariaDB: users, roles, grants) as streams whose names start with
    /// `globals/`, in the engine's own form, restorable by
    /// [`DatabaseEngine::restore_globals`]. Passwords only with
    /// [`GlobalsOptions::role_passwords`].
    ///
    /// # Errors
    /// Connection, privilege and database errors; sink errors.
    async fn dump_globals(&self, options: &GlobalsOptions, sink: Arc<dyn DumpSink>) -> Result<()> {
        let _ = (options, sink);
        Err(crate::Error::invalid(format!(
            "{} cannot back up server globals",
            self.name()
        )))
    }

    /// Recreates globals from the `globals/` streams of `source` on the bound server,
    /// in two phases: [`GlobalsPhase::BeforeDatabases`] creates what databases need to
    /// be restored (roles, users), [`GlobalsPhase::AfterDatabases`] what needs the
    /// databases to exist (per-database role settings, object grants). An object that
    /// already exists is left as it is and named in [`GlobalsReport::existing`].
    ///
    /// # Errors
    /// Connection, privilege and database errors; damaged streams.
    async fn restore_globals(
        &self,
        source: Arc<dyn StreamSource>,
        options: &GlobalsRestoreOptions,
    ) -> Result<GlobalsReport> {
        let _ = (source, options);
        Err(crate::Error::invalid(format!(
            "{} cannot restore server globals",
            self.name()
        )))
    }
}
