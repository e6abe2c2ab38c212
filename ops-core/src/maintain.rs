//! Routine care of a live database, engine-neutral: what to look at (sizes, bloat,
//! indexes, sessions, locks, top queries, vacuum state), what to do (vacuum, analyze,
//! reindex, optimize, check, repair), which sessions to end, the application's own
//! integrity queries, and moving old rows into an archive table.
//!
//! An engine implements [`Maintenance`]; the reports are plain data (serde) that a
//! program reads and the command-line tool prints as tables or JSON. Every number says
//! how it was obtained where that matters (`method`, [`Confidence`]): an estimate is
//! never printed as a fact.
//!
//! Heavy locks are taken the way pg_repack takes them ([`LockSteps`]): a short lock
//! timeout, tried again with a growing one and a pause between tries, up to a total
//! wait, then a refusal that names the blocking session. A maintenance step therefore
//! never queues in front of the application's queries for longer than one step.
//!
//! The reports are plain data that each engine fills in: their structs are open
//! (not `#[non_exhaustive]`), so a field added later is a breaking change for
//! engines outside this workspace, made on purpose. Options and enums stay
//! non-exhaustive.
//!
//! What must not live here: SQL (each engine crate), words of the command-line tool,
//! the config and the scheduler (`ops-agent`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::health::HealthStatus;
use crate::{Error, ErrorKind, Result};

// ---------------------------------------------------------------------------------
// The trait.

/// Inspection, maintenance, sessions, integrity queries and archiving on one database
/// (the database of the engine's URL; a server-wide view where the report says so).
///
/// Every method connects anew. Read-only methods work with monitoring privileges
/// (PostgreSQL `pg_monitor`; MariaDB `PROCESS`, `SLAVE MONITOR`); a method that lacks
/// a privilege fails with [`crate::ErrorKind::PermissionDenied`] naming the grant —
/// never with an empty, reassuring answer.
#[async_trait]
pub trait Maintenance: Send + Sync + fmt::Debug {
    /// The engine's name, as a manifest names it (`postgresql`, `mariadb`).
    fn engine_name(&self) -> &'static str;

    /// One read-only report.
    ///
    /// # Errors
    /// Connection and permission errors; [`crate::ErrorKind::InvalidInput`] for a
    /// report the engine does not have (naming what to use instead).
    async fn inspect(&self, what: Inspect, options: &InspectOptions) -> Result<Inspection>;

    /// Runs (or with [`MaintainOptions::dry_run`], plans) one maintenance action on
    /// the chosen tables, or every table of the database.
    ///
    /// A step that fails does not stop the others; the report says which failed and
    /// why ([`MaintainReport::ok`]).
    ///
    /// # Errors
    /// Connection errors, an unknown table, an action the engine does not have.
    async fn maintain(&self, action: Action, options: &MaintainOptions) -> Result<MaintainReport>;

    /// The sessions of the server that pass `filter`, the own session and the
    /// server's internal ones marked ([`SessionKind`]).
    ///
    /// # Errors
    /// Connection errors; missing monitoring privileges.
    async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionInfo>>;

    /// Cancels or terminates the client sessions that pass `filter` (never the own
    /// session, replication, background workers or system threads). With `Terminate`
    /// each session's query is cancelled first and the session ended only when it is
    /// still there after [`EndOptions::grace`]. A dry run ends nothing and reports what
    /// it would end.
    ///
    /// # Errors
    /// Connection errors; [`crate::ErrorKind::PermissionDenied`] naming the grant
    /// when the user may not end other users' sessions.
    async fn end_sessions(&self, filter: &SessionFilter, options: &EndOptions)
    -> Result<EndReport>;

    /// Runs `sql` read-only (a read-only transaction, a statement timeout of
    /// `timeout`) and counts its rows, keeping the first `sample` of them. A SQL error
    /// is an error, never zero rows.
    ///
    /// # Errors
    /// Connection errors; the server's error for the query (syntax, permission,
    /// timeout).
    async fn query_rows(&self, sql: &str, timeout: Duration, sample: usize) -> Result<QueryRows>;

    /// Moves the rows of `spec.table` that match `spec.predicate` into `spec.into` in
    /// batches keyed on the primary key, each batch one transaction; see
    /// [`ArchiveSpec`].
    ///
    /// # Errors
    /// Connection errors; a table without a primary key; an archive table whose
    /// columns differ from the source's; a batch whose row counts disagree (rolled
    /// back, nothing moved by it).
    async fn archive(&self, spec: &ArchiveSpec) -> Result<ArchiveReport>;
}

// ---------------------------------------------------------------------------------
// Inspection.

/// What [`Maintenance::inspect`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Inspect {
    /// Database, table, index and TOAST sizes, row estimates.
    Sizes,
    /// Wasted space per table and index, with the method and a confidence.
    Bloat,
    /// Unused, duplicate and invalid indexes.
    Indexes,
    /// Sessions by state, user and application; long queries; idle transactions.
    Activity,
    /// Who blocks whom, as trees from each root blocker.
    Locks,
    /// Top statements (pg_stat_statements, performance_schema digests).
    Queries,
    /// Dead rows, last (auto)vacuum and analyze, transaction-ID age.
    Vacuum,
}

impl Inspect {
    /// Every report, in the order the documentation lists them.
    pub const ALL: [Inspect; 7] = [
        Inspect::Sizes,
        Inspect::Bloat,
        Inspect::Indexes,
        Inspect::Activity,
        Inspect::Locks,
        Inspect::Queries,
        Inspect::Vacuum,
    ];

    /// The report's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Inspect::Sizes => "sizes",
            Inspect::Bloat => "bloat",
            Inspect::Indexes => "indexes",
            Inspect::Activity => "activity",
            Inspect::Locks => "locks",
            Inspect::Queries => "queries",
            Inspect::Vacuum => "vacuum",
        }
    }
}

impl fmt::Display for Inspect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Inspect {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Inspect::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown report '{s}': one of {}",
                    Inspect::ALL.map(Inspect::as_str).join(", ")
                ))
            })
    }
}

/// Options of [`Maintenance::inspect`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InspectOptions {
    /// Only these tables (`name` or `schema.name`); all when empty.
    pub tables: Vec<String>,
    /// Activity: what counts as a long-running query (default 5 minutes).
    pub longer_than: Duration,
    /// At most this many rows per list (largest, slowest first; default 50).
    pub limit: usize,
}

impl Default for InspectOptions {
    fn default() -> Self {
        Self {
            tables: Vec::new(),
            longer_than: Duration::from_secs(300),
            limit: 50,
        }
    }
}

impl InspectOptions {
    /// Only these tables.
    #[must_use]
    pub fn with_tables(mut self, tables: Vec<String>) -> Self {
        self.tables = tables;
        self
    }
    /// What counts as long-running.
    #[must_use]
    pub fn with_longer_than(mut self, d: Duration) -> Self {
        self.longer_than = d;
        self
    }
    /// Rows per list.
    #[must_use]
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// One report of [`Maintenance::inspect`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Inspection {
    /// [`Inspect::Sizes`].
    Sizes(SizeReport),
    /// [`Inspect::Bloat`].
    Bloat(BloatReport),
    /// [`Inspect::Indexes`].
    Indexes(IndexReport),
    /// [`Inspect::Activity`].
    Activity(ActivityReport),
    /// [`Inspect::Locks`].
    Locks(LockReport),
    /// [`Inspect::Queries`].
    Queries(QueryReport),
    /// [`Inspect::Vacuum`].
    Vacuum(VacuumReport),
}

/// Sizes of a database and its tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SizeReport {
    /// The database.
    pub database: String,
    /// Its size on disk.
    pub database_bytes: u64,
    /// Tables, largest first.
    pub tables: Vec<TableSize>,
    /// What the reader should know (estimates, missing statistics).
    pub notes: Vec<String>,
}

/// One table's sizes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableSize {
    /// Schema (PostgreSQL) or database (MariaDB).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Heap (PostgreSQL main fork; MariaDB data length).
    pub heap_bytes: u64,
    /// All indexes.
    pub index_bytes: u64,
    /// TOAST (PostgreSQL); `None` where the engine has none.
    pub toast_bytes: Option<u64>,
    /// Everything together.
    pub total_bytes: u64,
    /// Row count, estimated; `None` when the engine has no estimate yet.
    pub rows: Option<u64>,
    /// How `rows` was obtained (for example `pg_class.reltuples`, `never analyzed`).
    pub rows_method: String,
}

/// How far a figure can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Confidence {
    /// Measured by reading the pages (pgstattuple).
    Exact,
    /// Measured on a sample of the pages, or reported by the engine as approximate.
    Approximate,
    /// Computed from statistics; good to a few percent on ordinary tables.
    Estimate,
    /// Not given: the inputs were missing or not trustworthy (see the note).
    Withheld,
}

/// Table or index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ObjectKind {
    /// A table.
    Table,
    /// An index.
    Index,
}

/// Wasted space in tables and indexes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BloatReport {
    /// Largest waste first.
    pub objects: Vec<Bloat>,
    /// What the reader should know (how to get exact figures).
    pub notes: Vec<String>,
}

/// Wasted space of one table or index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bloat {
    /// Schema (PostgreSQL) or database (MariaDB).
    pub schema: String,
    /// Table or index name.
    pub name: String,
    /// Table or index.
    pub kind: ObjectKind,
    /// The table of an index.
    pub table: Option<String>,
    /// Size on disk.
    pub size_bytes: u64,
    /// Space that holds no live data; `None` when withheld.
    pub wasted_bytes: Option<u64>,
    /// `wasted_bytes` in percent of `size_bytes`; `None` when withheld.
    pub wasted_percent: Option<f64>,
    /// How it was obtained (`pgstattuple_approx`, `pgstatindex`, `statistics`,
    /// `DATA_FREE`).
    pub method: String,
    /// How far to trust it.
    pub confidence: Confidence,
    /// Why a figure is withheld or flagged (stale statistics, deduplicated B-tree).
    pub note: Option<String>,
}

/// Indexes that cost without serving.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexReport {
    /// Never scanned since the statistics were reset (not primary keys, unique,
    /// exclusion or replica-identity indexes).
    pub unused: Vec<IndexIssue>,
    /// Same table, same columns and definition as another index.
    pub duplicate: Vec<IndexIssue>,
    /// Invalid (a failed concurrent build or reindex left them); not used by queries
    /// but kept up to date by every write.
    pub invalid: Vec<IndexIssue>,
    /// Since when the scan counts run (statistics reset); `None` when unknown.
    pub stats_since: Option<DateTime<Utc>>,
    /// What the reader should know.
    pub notes: Vec<String>,
}

/// One index and what is wrong with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexIssue {
    /// Schema (PostgreSQL) or database (MariaDB).
    pub schema: String,
    /// The table.
    pub table: String,
    /// The index.
    pub index: String,
    /// Its size.
    pub size_bytes: u64,
    /// Scans counted, where the engine counts them.
    pub scans: Option<u64>,
    /// Its definition.
    pub definition: Option<String>,
    /// What is wrong (`never scanned`, `duplicate of X`, `invalid: leftover of a
    /// failed concurrent reindex`).
    pub detail: String,
}

/// What kind of session a server connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionKind {
    /// An application's (or an operator's) connection.
    Client,
    /// The session asking.
    Own,
    /// A replication sender or receiver.
    Replication,
    /// A background worker or system thread (autovacuum, event scheduler, ...).
    System,
}

impl SessionKind {
    /// Whether a session of this kind may be cancelled or terminated by dbops.
    pub fn may_end(self) -> bool {
        self == SessionKind::Client
    }
}

/// One server session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// PostgreSQL backend pid; MariaDB connection id.
    pub id: i64,
    /// What kind of session.
    pub kind: SessionKind,
    /// User name.
    pub user: Option<String>,
    /// Database.
    pub database: Option<String>,
    /// `application_name` (PostgreSQL); program name from the connection
    /// attributes (MariaDB), where given.
    pub application: Option<String>,
    /// Client address.
    pub client: Option<String>,
    /// State: `active`, `idle`, `idle in transaction`, ... (PostgreSQL
    /// `pg_stat_activity.state`; MariaDB processlist command, lower case).
    pub state: String,
    /// What it waits for (wait event, lock).
    pub wait: Option<String>,
    /// The running or last query (truncated to 1000 characters).
    pub query: Option<String>,
    /// Seconds since the query started.
    pub query_seconds: Option<f64>,
    /// Seconds since the transaction started.
    pub transaction_seconds: Option<f64>,
    /// Seconds in the current state.
    pub state_seconds: Option<f64>,
    /// Sessions this one waits for.
    pub blocked_by: Vec<i64>,
}

/// Sessions of the server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActivityReport {
    /// Client sessions per state.
    pub by_state: BTreeMap<String, u64>,
    /// Client sessions per user.
    pub by_user: BTreeMap<String, u64>,
    /// Client sessions per application.
    pub by_application: BTreeMap<String, u64>,
    /// Queries running longer than [`InspectOptions::longer_than`], longest first.
    pub long_running: Vec<SessionInfo>,
    /// Sessions idle inside an open transaction, longest first.
    pub idle_in_transaction: Vec<SessionInfo>,
    /// Every session, the own one and the server's internal ones included.
    pub sessions: Vec<SessionInfo>,
}

/// Who blocks whom.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockReport {
    /// One tree per root blocker (a session that blocks others and waits for no
    /// one), most sessions held first.
    pub trees: Vec<LockNode>,
    /// Sessions that wait in a cycle (a deadlock the server has not broken yet).
    pub cycles: Vec<Vec<i64>>,
}

/// A session and the sessions waiting for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockNode {
    /// The session.
    pub session: SessionInfo,
    /// The sessions it blocks, each with the ones it blocks in turn.
    pub blocks: Vec<LockNode>,
}

impl LockNode {
    /// This session and every one below it.
    pub fn count(&self) -> usize {
        1 + self.blocks.iter().map(LockNode::count).sum::<usize>()
    }
}

/// Builds the blocking trees from each session's `blocked_by`: the roots are
/// sessions that block someone and wait for no one; a session blocked by several is
/// shown under each. Sessions on a cycle with no root above are returned as cycles.
pub fn lock_trees(sessions: &[SessionInfo]) -> LockReport {
    let by_id: BTreeMap<i64, &SessionInfo> = sessions.iter().map(|s| (s.id, s)).collect();
    let mut children: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for s in sessions {
        for b in &s.blocked_by {
            children.entry(*b).or_default().push(s.id);
        }
    }
    fn build(
        id: i64,
        by_id: &BTreeMap<i64, &SessionInfo>,
        children: &BTreeMap<i64, Vec<i64>>,
        path: &mut Vec<i64>,
    ) -> Option<LockNode> {
        let session = (*by_id.get(&id)?).clone();
        path.push(id);
        let next: Vec<i64> = children
            .get(&id)
            .map(|c| c.iter().filter(|k| !path.contains(k)).copied().collect())
            .unwrap_or_default();
        let blocks = next
            .into_iter()
            .filter_map(|k| build(k, by_id, children, path))
            .collect();
        path.pop();
        Some(LockNode { session, blocks })
    }
    let mut trees: Vec<LockNode> = sessions
        .iter()
        .filter(|s| s.blocked_by.is_empty() && children.contains_key(&s.id))
        .filter_map(|s| build(s.id, &by_id, &children, &mut Vec::new()))
        .collect();
    trees.sort_by_key(|t| std::cmp::Reverse(t.count()));
    // Waiting sessions not reachable from a root wait in a cycle.
    let mut reached = std::collections::BTreeSet::new();
    fn mark(n: &LockNode, reached: &mut std::collections::BTreeSet<i64>) {
        reached.insert(n.session.id);
        for c in &n.blocks {
            mark(c, reached);
        }
    }
    for t in &trees {
        mark(t, &mut reached);
    }
    let mut cycles = Vec::new();
    for s in sessions {
        if s.blocked_by.is_empty() || reached.contains(&s.id) {
            continue;
        }
        let mut cycle = vec![s.id];
        let mut at = s.blocked_by[0];
        while !cycle.contains(&at) {
            cycle.push(at);
            match by_id.get(&at).and_then(|n| n.blocked_by.first()) {
                Some(next) => at = *next,
                None => break,
            }
        }
        for id in &cycle {
            reached.insert(*id);
        }
        cycles.push(cycle);
    }
    LockReport { trees, cycles }
}

/// Top statements.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryReport {
    /// Where the figures come from (`pg_stat_statements`,
    /// `performance_schema.events_statements_summary_by_digest`).
    pub source: String,
    /// Whether the source is there; when not, `message` says how to enable it.
    pub available: bool,
    /// How to enable the source, when it is not available.
    pub message: Option<String>,
    /// Most total time first.
    pub statements: Vec<StatementStats>,
}

/// One normalised statement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementStats {
    /// The normalised text (truncated to 1000 characters).
    pub query: String,
    /// Executions.
    pub calls: u64,
    /// Total execution time, milliseconds.
    pub total_ms: f64,
    /// Mean execution time, milliseconds.
    pub mean_ms: f64,
    /// Rows returned or affected.
    pub rows: u64,
}

/// Vacuum state of the tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VacuumReport {
    /// The database's transaction-ID age (`age(datfrozenxid)`).
    pub database_xid_age: Option<u64>,
    /// `autovacuum_freeze_max_age`: at this age autovacuum forces a freeze.
    pub freeze_max_age: Option<u64>,
    /// Tables, most dead rows first.
    pub tables: Vec<TableVacuum>,
}

/// Vacuum state of one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableVacuum {
    /// Schema.
    pub schema: String,
    /// Table.
    pub name: String,
    /// Live rows (statistics).
    pub live_rows: u64,
    /// Dead rows (statistics).
    pub dead_rows: u64,
    /// Rows changed since the last analyze.
    pub modified_since_analyze: u64,
    /// Last manual vacuum.
    pub last_vacuum: Option<DateTime<Utc>>,
    /// Last autovacuum.
    pub last_autovacuum: Option<DateTime<Utc>>,
    /// Last manual analyze.
    pub last_analyze: Option<DateTime<Utc>>,
    /// Last autoanalyze.
    pub last_autoanalyze: Option<DateTime<Utc>>,
    /// Dead rows at which autovacuum will next vacuum the table (its threshold
    /// plus scale factor times the rows, table settings applied).
    pub autovacuum_at_dead_rows: Option<u64>,
    /// Whether the table is past that threshold (autovacuum will take it on its next
    /// round, unless it is disabled for the table).
    pub autovacuum_due: bool,
    /// `age(relfrozenxid)`.
    pub xid_age: Option<u64>,
}

// ---------------------------------------------------------------------------------
// Maintenance.

/// A maintenance action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// PostgreSQL `VACUUM` (`FULL` rewrites the table under an exclusive lock);
    /// MariaDB has no vacuum (use `optimize`).
    Vacuum {
        /// `VACUUM FULL`.
        full: bool,
        /// `VACUUM ANALYZE`.
        analyze: bool,
    },
    /// Refresh the planner's statistics.
    Analyze,
    /// Rebuild indexes (`concurrently`: without blocking writes, PostgreSQL).
    Reindex {
        /// `REINDEX ... CONCURRENTLY`.
        concurrently: bool,
    },
    /// MariaDB `OPTIMIZE TABLE` (InnoDB: a rebuild); PostgreSQL: use vacuum.
    Optimize,
    /// MariaDB `CHECK TABLE`; PostgreSQL: `amcheck` on B-tree indexes.
    Check,
    /// MariaDB `REPAIR TABLE` (MyISAM, Aria, Archive, CSV; not InnoDB).
    Repair,
}

impl Action {
    /// The action's name (`vacuum`, `analyze`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Vacuum { .. } => "vacuum",
            Action::Analyze => "analyze",
            Action::Reindex { .. } => "reindex",
            Action::Optimize => "optimize",
            Action::Check => "check",
            Action::Repair => "repair",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a running step reports (PostgreSQL `pg_stat_progress_*`).
#[derive(Debug, Clone, Serialize)]
pub struct StepProgress {
    /// The table or index.
    pub object: String,
    /// The phase the server reports.
    pub phase: String,
    /// Work done and total, in the phase's unit (blocks, tuples), when known.
    pub done: Option<u64>,
    /// Total work in the phase.
    pub total: Option<u64>,
}

impl StepProgress {
    /// `object` in `phase`, with `done` of `total` units where the engine says.
    pub fn new(
        object: impl Into<String>,
        phase: impl Into<String>,
        done: Option<u64>,
        total: Option<u64>,
    ) -> Self {
        Self {
            object: object.into(),
            phase: phase.into(),
            done,
            total,
        }
    }
}

/// Called with progress while a step runs.
pub type ProgressFn = Arc<dyn Fn(&StepProgress) + Send + Sync>;

/// Options of [`Maintenance::maintain`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct MaintainOptions {
    /// Only these tables (`name` or `schema.name`); every table when empty.
    pub tables: Vec<String>,
    /// Plan and report the steps without running them.
    pub dry_run: bool,
    /// How heavy locks are waited for.
    pub lock: LockSteps,
    /// Progress of the running step, polled about once a second.
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for MaintainOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaintainOptions")
            .field("tables", &self.tables)
            .field("dry_run", &self.dry_run)
            .field("lock", &self.lock)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl MaintainOptions {
    /// Only these tables.
    #[must_use]
    pub fn with_tables(mut self, tables: Vec<String>) -> Self {
        self.tables = tables;
        self
    }
    /// Plan only.
    #[must_use]
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Lock waiting.
    #[must_use]
    pub fn with_lock(mut self, lock: LockSteps) -> Self {
        self.lock = lock;
        self
    }
    /// Progress reporting.
    #[must_use]
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// How a heavy lock is waited for: tries with a lock timeout that starts at `first`
/// and doubles up to `max_step`, a pause of the same length between tries (so the
/// application's queued queries run), until `total` has passed. Each try holds the
/// application's queries behind it for at most its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSteps {
    /// The first try's lock timeout (default 100 ms).
    pub first: Duration,
    /// The longest try (default 1 s).
    pub max_step: Duration,
    /// The whole wait (default 60 s).
    pub total: Duration,
}

impl Default for LockSteps {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max_step: Duration::from_secs(1),
            total: Duration::from_secs(60),
        }
    }
}

impl LockSteps {
    /// The whole wait.
    #[must_use]
    pub fn with_total(mut self, total: Duration) -> Self {
        self.total = total;
        self
    }

    /// The longest single try.
    #[must_use]
    pub fn with_max_step(mut self, max_step: Duration) -> Self {
        self.max_step = max_step;
        self
    }

    /// The lock timeout of each try and the pause after it, in order; their sum stays
    /// within `total` (the last try is shortened to fit, and there is always one try).
    pub fn tries(&self) -> Vec<(Duration, Duration)> {
        let first = self.first.max(Duration::from_millis(1));
        let max_step = self.max_step.max(first);
        let mut out = Vec::new();
        let mut spent = Duration::ZERO;
        let mut step = first;
        loop {
            let left = self.total.saturating_sub(spent);
            let timeout = step.min(left).max(if out.is_empty() {
                first.min(max_step)
            } else {
                Duration::ZERO
            });
            if timeout.is_zero() {
                break;
            }
            spent += timeout;
            let pause = step.min(self.total.saturating_sub(spent));
            spent += pause;
            out.push((timeout, pause));
            if spent >= self.total {
                break;
            }
            step = (step * 2).min(max_step);
        }
        if let Some(last) = out.last_mut() {
            last.1 = Duration::ZERO;
        }
        out
    }
}

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepOutcome {
    /// Done.
    Done,
    /// A dry run: it would run.
    Planned,
    /// Not needed or not applicable (the message says why).
    Skipped,
    /// The engine cannot do it for this object (InnoDB `REPAIR`): never "OK".
    NotSupported,
    /// Gave up waiting for a lock (the message names the blocker).
    LockTimeout,
    /// Failed (the message says why), or found damage (`check`).
    Failed,
}

impl StepOutcome {
    /// Whether the step leaves the run successful.
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            StepOutcome::Done | StepOutcome::Planned | StepOutcome::Skipped
        )
    }
}

/// One statement of a maintenance run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintainStep {
    /// The table or index.
    pub object: String,
    /// The statement run (or that would run).
    pub sql: String,
    /// How it ended.
    pub outcome: StepOutcome,
    /// What the engine said (check results, the blocker, the error).
    pub message: Option<String>,
    /// Size before, where the action changes it.
    pub size_before: Option<u64>,
    /// Size after.
    pub size_after: Option<u64>,
    /// Tries at taking the lock (1 when it came at once).
    pub lock_tries: u32,
    /// Seconds the step took.
    pub seconds: f64,
}

impl MaintainStep {
    /// A step on `object` running `sql` that ended as `outcome`; the rest empty.
    pub fn new(object: impl Into<String>, sql: impl Into<String>, outcome: StepOutcome) -> Self {
        Self {
            object: object.into(),
            sql: sql.into(),
            outcome,
            message: None,
            size_before: None,
            size_after: None,
            lock_tries: 0,
            seconds: 0.0,
        }
    }

    /// The step with `message`.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// What [`Maintenance::maintain`] did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintainReport {
    /// The action.
    pub action: Action,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Each statement, in order.
    pub steps: Vec<MaintainStep>,
    /// Invalid leftovers of a failed concurrent reindex that were dropped.
    pub dropped_leftovers: Vec<String>,
}

impl MaintainReport {
    /// Whether every step succeeded.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.outcome.is_ok())
    }
}

// ---------------------------------------------------------------------------------
// Sessions.

/// Which sessions [`Maintenance::sessions`] and [`Maintenance::end_sessions`] take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Older than this: an active session by its running query, a session idle
    /// inside a transaction by its transaction. An idle session (a pooled
    /// connection) has no age here and never passes, unless [`state`](Self::state)
    /// asks for idle sessions, which are then judged by the time in that state.
    pub longer_than: Option<Duration>,
    /// In this state (`active`, `idle`, `idle in transaction`, ...).
    pub state: Option<String>,
    /// Of this user.
    pub user: Option<String>,
    /// Of this application.
    pub application: Option<String>,
    /// Connected to this database.
    pub database: Option<String>,
    /// Only sessions that block others and wait for no one.
    pub root_blockers: bool,
    /// Ending sessions with no other condition takes every client session of the
    /// server; it is refused unless this says so.
    pub all: bool,
}

impl SessionFilter {
    /// Whether `s` passes every condition but `root_blockers` (which needs every
    /// session to judge).
    pub fn matches(&self, s: &SessionInfo) -> bool {
        if let Some(d) = self.longer_than {
            let age = s
                .query_seconds
                .or(s.transaction_seconds)
                .or(self.state.as_ref().and(s.state_seconds));
            if age.is_none_or(|a| a < d.as_secs_f64()) {
                return false;
            }
        }
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        if let Some(state) = &self.state
            && !s.state.eq_ignore_ascii_case(state)
        {
            return false;
        }
        // Database names are case-sensitive on both engines (MariaDB on Linux):
        // `shop` never takes the sessions of `Shop`.
        eq(&self.user, &s.user)
            && eq(&self.application, &s.application)
            && self
                .database
                .as_ref()
                .is_none_or(|want| s.database.as_deref() == Some(want.as_str()))
    }

    /// Whether the filter names no condition at all (every session passes).
    pub fn is_unconditional(&self) -> bool {
        self.longer_than.is_none()
            && self.state.is_none()
            && self.user.is_none()
            && self.application.is_none()
            && self.database.is_none()
            && !self.root_blockers
    }

    /// Refuses to end sessions on a filter without conditions unless
    /// [`all`](Self::all) is set: a slip would end every client session of the
    /// server. Engines call it first in [`Maintenance::end_sessions`], dry runs
    /// included.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when there is no condition and `all` is unset.
    pub fn check_for_ending(&self) -> Result<()> {
        if self.is_unconditional() && !self.all {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "no condition chooses the sessions to end, so every client session of the server would end: name a database, user, application, state, age or the root blockers, or ask for all sessions explicitly",
            ));
        }
        Ok(())
    }

    /// The sessions that pass the filter, `all` being every session of the server.
    pub fn select(&self, all: &[SessionInfo]) -> Vec<SessionInfo> {
        let roots: Option<std::collections::BTreeSet<i64>> = self
            .root_blockers
            .then(|| lock_trees(all).trees.iter().map(|t| t.session.id).collect());
        all.iter()
            .filter(|s| roots.as_ref().is_none_or(|r| r.contains(&s.id)))
            .filter(|s| self.matches(s))
            .cloned()
            .collect()
    }
}

/// How sessions are ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndMode {
    /// Cancel the running query; the session stays.
    Cancel,
    /// Cancel, then end the session if it is still there after the grace period.
    Terminate,
}

/// Options of [`Maintenance::end_sessions`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct EndOptions {
    /// Cancel or terminate.
    pub mode: EndMode,
    /// Between cancel and terminate (default 5 s).
    pub grace: Duration,
    /// Report only.
    pub dry_run: bool,
}

impl EndOptions {
    /// `mode`, a 5 s grace, for real.
    pub fn new(mode: EndMode) -> Self {
        Self {
            mode,
            grace: Duration::from_secs(5),
            dry_run: false,
        }
    }
    /// The grace period.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// Report only.
    #[must_use]
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What happened to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Ended {
    /// A dry run: it would be cancelled.
    WouldCancel,
    /// A dry run: it would be terminated.
    WouldTerminate,
    /// Its query was cancelled.
    Cancelled,
    /// The session was ended.
    Terminated,
    /// It went away by itself before it was ended.
    Gone,
    /// Not touched: the own session, replication or a system session.
    Refused,
}

/// One session of an [`EndReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndedSession {
    /// The session, as seen before.
    pub session: SessionInfo,
    /// What happened.
    pub outcome: Ended,
}

/// What [`Maintenance::end_sessions`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndReport {
    /// Every selected session.
    pub sessions: Vec<EndedSession>,
}

// ---------------------------------------------------------------------------------
// Integrity queries.

/// The rows of a read-only query: how many, and the first few.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryRows {
    /// Rows returned.
    pub count: u64,
    /// Column names.
    pub columns: Vec<String>,
    /// The first rows, values as text (`None` for NULL).
    pub sample: Vec<Vec<Option<String>>>,
}

impl QueryRows {
    /// `count` rows named by `columns`, `sample` the first of them.
    pub fn new(count: u64, columns: Vec<String>, sample: Vec<Vec<Option<String>>>) -> Self {
        Self {
            count,
            columns,
            sample,
        }
    }
}

/// How bad a failed integrity check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Severity {
    /// A warning (exit 1).
    Warn,
    /// An error (exit 2).
    #[default]
    Error,
}

/// An application invariant: a query that must return no rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IntegrityCheck {
    /// The check's name.
    pub name: String,
    /// The query; every row it returns is a violation.
    pub sql: String,
    /// How bad a violation is.
    pub severity: Severity,
    /// The query's statement timeout.
    pub timeout: Duration,
}

impl IntegrityCheck {
    /// `name` running `sql`, an error when it returns rows, 60 s timeout.
    pub fn new(name: impl Into<String>, sql: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            sql: sql.into(),
            severity: Severity::Error,
            timeout: Duration::from_secs(60),
        }
    }
    /// The severity.
    #[must_use]
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
    /// The statement timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the check on `db` and judges it: no rows is OK, rows are a warning or a
    /// critical result by severity, and a query that could not run is unknown —
    /// never OK.
    pub async fn run(&self, db: &dyn Maintenance) -> IntegrityResult {
        let started = std::time::Instant::now();
        let outcome = db.query_rows(&self.sql, self.timeout, SAMPLE_ROWS).await;
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(rows) => IntegrityResult {
                name: self.name.clone(),
                status: match (rows.count, self.severity) {
                    (0, _) => HealthStatus::Healthy,
                    (_, Severity::Warn) => HealthStatus::Degraded,
                    (_, Severity::Error) => HealthStatus::Unhealthy,
                },
                rows: Some(rows),
                error: None,
                seconds,
            },
            Err(e) => IntegrityResult {
                name: self.name.clone(),
                status: HealthStatus::Unknown,
                rows: None,
                error: Some(e.to_string()),
                seconds,
            },
        }
    }
}

impl IntegrityResult {
    /// Whether the invariant holds well enough for a restore proof: no error-severity
    /// violation, and the check could run (a warning is reported, not failed).
    pub fn holds(&self) -> bool {
        matches!(self.status, HealthStatus::Healthy | HealthStatus::Degraded)
    }

    /// The verdict of check `name` that could not run, and why.
    pub fn unknown(name: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: HealthStatus::Unknown,
            rows: None,
            error: Some(error.into()),
            seconds: 0.0,
        }
    }
}

/// Sample rows kept of a failed integrity check.
pub const SAMPLE_ROWS: usize = 10;

/// The verdict of one [`IntegrityCheck`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntegrityResult {
    /// The check.
    pub name: String,
    /// Healthy (no rows), degraded or unhealthy (rows, by severity: exit 1 or 2), unknown
    /// (could not run: exit 3).
    pub status: HealthStatus,
    /// The rows found, when the query ran.
    pub rows: Option<QueryRows>,
    /// Why it could not run.
    pub error: Option<String>,
    /// How long it took.
    pub seconds: f64,
}

// ---------------------------------------------------------------------------------
// Archiving.

/// What [`Maintenance::archive`] moves and how gently.
///
/// Rows move in batches of `batch` rows in primary-key order; each batch is one
/// transaction that copies its rows into the archive and deletes them from the
/// source, so a kill at any point loses or duplicates nothing, and running again
/// resumes where it stopped. The archive table is created like the source when
/// missing. Between batches the archiver sleeps `pause`, and waits while replication
/// lag or the oldest open transaction exceeds its limit.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ArchiveSpec {
    /// Source table (`name` or `schema.name`).
    pub table: String,
    /// SQL condition on the source's rows (`created_at < now() - interval '2 years'`).
    pub predicate: String,
    /// Archive table (`name` or `schema.name`).
    pub into: String,
    /// Rows per batch (default 1000).
    pub batch: u64,
    /// Count what would move, change nothing.
    pub dry_run: bool,
    /// Sleep between batches (default 0).
    pub pause: Duration,
    /// Wait while a replica lags more than this (default 10 s).
    pub max_replication_lag: Duration,
    /// Wait while another transaction has been open longer than this (default
    /// 5 min): vacuum cannot clean behind it, and every batch adds dead rows.
    pub max_transaction_age: Duration,
    /// Give up waiting for the limits after this long (default 10 min).
    pub max_wait: Duration,
    /// Stop after this many rows (for a first, careful run); all when `None`.
    pub max_rows: Option<u64>,
}

impl ArchiveSpec {
    /// Moves the rows of `table` matching `predicate` into `into`, with the defaults.
    pub fn new(
        table: impl Into<String>,
        predicate: impl Into<String>,
        into: impl Into<String>,
    ) -> Self {
        Self {
            table: table.into(),
            predicate: predicate.into(),
            into: into.into(),
            batch: 1000,
            dry_run: false,
            pause: Duration::ZERO,
            max_replication_lag: Duration::from_secs(10),
            max_transaction_age: Duration::from_secs(300),
            max_wait: Duration::from_secs(600),
            max_rows: None,
        }
    }
    /// Rows per batch.
    #[must_use]
    pub fn with_batch(mut self, batch: u64) -> Self {
        self.batch = batch.max(1);
        self
    }
    /// Count only.
    #[must_use]
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Sleep between batches.
    #[must_use]
    pub fn with_pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }
    /// The throttling limits.
    #[must_use]
    pub fn with_limits(
        mut self,
        max_replication_lag: Duration,
        max_transaction_age: Duration,
    ) -> Self {
        self.max_replication_lag = max_replication_lag;
        self.max_transaction_age = max_transaction_age;
        self
    }
    /// The longest wait for the limits.
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }
    /// Stop after this many rows.
    #[must_use]
    pub fn with_max_rows(mut self, max_rows: Option<u64>) -> Self {
        self.max_rows = max_rows;
        self
    }
}

/// What [`Maintenance::archive`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ArchiveReport {
    /// Rows moved (a dry run: rows that would move).
    pub rows: u64,
    /// Batches committed.
    pub batches: u64,
    /// Whether the archive table was created.
    pub created_archive: bool,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Seconds spent waiting for the throttling limits.
    pub throttled_seconds: f64,
    /// Rows still matching when it stopped (0 when done; more with `max_rows`).
    pub remaining: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: i64, blocked_by: &[i64]) -> SessionInfo {
        SessionInfo {
            id,
            kind: SessionKind::Client,
            user: Some("app".into()),
            database: Some("db".into()),
            application: None,
            client: None,
            state: "active".into(),
            wait: None,
            query: None,
            query_seconds: Some(id as f64),
            transaction_seconds: None,
            state_seconds: None,
            blocked_by: blocked_by.to_vec(),
        }
    }

    #[test]
    fn a_chain_is_one_tree_from_its_root() {
        // 1 blocks 2, 2 blocks 3; 4 is alone; 5 and 6 wait for each other.
        let all = vec![
            session(3, &[2]),
            session(1, &[]),
            session(2, &[1]),
            session(4, &[]),
            session(5, &[6]),
            session(6, &[5]),
        ];
        let report = lock_trees(&all);
        assert_eq!(report.trees.len(), 1);
        let root = &report.trees[0];
        assert_eq!(root.session.id, 1);
        assert_eq!(root.count(), 3);
        assert_eq!(root.blocks[0].session.id, 2);
        assert_eq!(root.blocks[0].blocks[0].session.id, 3);
        assert_eq!(report.cycles.len(), 1);
        let mut cycle = report.cycles[0].clone();
        cycle.sort_unstable();
        assert_eq!(cycle, vec![5, 6]);
        let roots = SessionFilter {
            root_blockers: true,
            ..SessionFilter::default()
        }
        .select(&all);
        assert_eq!(roots.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn lock_tries_grow_pause_and_fit_the_total() {
        let steps = LockSteps::default().with_total(Duration::from_secs(10));
        let tries = steps.tries();
        assert_eq!(
            tries[0],
            (Duration::from_millis(100), Duration::from_millis(100))
        );
        assert_eq!(tries[1].0, Duration::from_millis(200));
        assert!(tries.iter().all(|(t, _)| *t <= Duration::from_secs(1)));
        let sum: Duration = tries.iter().map(|(t, p)| *t + *p).sum();
        assert!(sum <= Duration::from_secs(10), "{sum:?}");
        assert!(sum >= Duration::from_secs(9), "{sum:?}");
        assert_eq!(tries.last().expect("a try").1, Duration::ZERO);
        // A total shorter than one step still tries once.
        let one = LockSteps::default().with_total(Duration::ZERO).tries();
        assert_eq!(one, vec![(Duration::from_millis(100), Duration::ZERO)]);
    }

    #[test]
    fn filters_match_case_insensitively_and_by_age() {
        let mut s = session(7, &[]);
        s.application = Some("Portal".into());
        let f = SessionFilter {
            application: Some("portal".into()),
            longer_than: Some(Duration::from_secs(5)),
            ..SessionFilter::default()
        };
        assert!(f.matches(&s));
        s.query_seconds = Some(1.0);
        assert!(!f.matches(&s));
        // Idle inside a transaction: judged by the transaction's age.
        s.state = "idle in transaction".into();
        s.query_seconds = None;
        s.transaction_seconds = Some(60.0);
        s.state_seconds = Some(60.0);
        assert!(f.matches(&s));
        // Idle (a pooled connection): no age, unless idle sessions are asked for.
        s.state = "idle".into();
        s.transaction_seconds = None;
        assert!(!f.matches(&s));
        let idle = SessionFilter {
            state: Some("idle".into()),
            ..f.clone()
        };
        assert!(idle.matches(&s));
        assert_eq!("bloat".parse::<Inspect>().expect("parse"), Inspect::Bloat);
        assert!("nope".parse::<Inspect>().is_err());
    }

    #[test]
    fn ending_needs_a_condition_or_all() {
        let none = SessionFilter::default();
        let e = none.check_for_ending().expect_err("refused");
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("every client session"), "{e}");
        let all = SessionFilter {
            all: true,
            ..SessionFilter::default()
        };
        assert!(all.check_for_ending().is_ok());
        let one_db = SessionFilter {
            database: Some("erp".into()),
            ..SessionFilter::default()
        };
        assert!(one_db.check_for_ending().is_ok());
        let mut s = session(1, &[]);
        assert!(one_db.matches(&s) == (s.database.as_deref() == Some("erp")));
        s.database = Some("erp".into());
        assert!(one_db.matches(&s));
        s.database = Some("ERP".into());
        assert!(!one_db.matches(&s), "database names are case-sensitive");
    }
}
