//! The MariaDB database probes: login, connection saturation, the longest running
//! query, the oldest open transaction, sessions waiting for a lock, and replication
//! lag. Each is a [`HealthCheck`] named as the PostgreSQL probes are (the names are
//! metric labels and `[health.thresholds]` keys).
//!
//! Every run of a check opens its own connection the way the engine's dumps do (so
//! the URL, TLS mode and password sources are the engine's), inside a [`ProbeBudget`]:
//! the connect budget bounds the login; `max_statement_time` on the server and a
//! deadline in this process bound the statements together; `lock_wait_timeout` and
//! `innodb_lock_wait_timeout` carry the lock budget. Nothing is pooled: a check meets
//! the server as a new client does. Probes only read; ending sessions or changing the
//! server belongs to maintenance, not here.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use ops_core::{
    Error, ErrorKind, HealthCheck, HealthReport, HealthStatus, Limits, ProbeBudget, Result,
    Thresholds,
};
use tokio::time::{Instant, timeout, timeout_at};

use crate::MariaDbEngine;
use crate::conn::{self, ConnConfig, Session};
use crate::error::db_error;

/// Server error codes the probes react to.
mod code {
    /// `Too many connections`.
    pub const TOO_MANY_CONNECTIONS: &str = "1040";
    /// `Unknown column` (MySQL has no `PROCESSLIST.TIME_MS`).
    pub const BAD_FIELD: &str = "1054";
    /// A syntax error (MySQL has no `SHOW ALL SLAVES STATUS`).
    pub const PARSE_ERROR: &str = "1064";
    /// `Unknown system variable` (MySQL has no `max_statement_time`).
    pub const UNKNOWN_SYSTEM_VARIABLE: &str = "1193";
    /// A privilege such as `PROCESS` is missing.
    pub const SPECIFIC_ACCESS_DENIED: &str = "1227";
}

/// How long closing a connection may take. A hung server never answers `COM_QUIT`'s
/// preceding clean-up; past this the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How much of a statement's text a reason shows.
const EXCERPT_CHARS: usize = 80;

/// The checks [`probes`] builds, in that order, with their default limits (units:
/// `database_login`, `longest_query`, `oldest_transaction` and `replication_lag` in
/// seconds, `connections` in percent of `max_connections`, `blocked_locks` a count).
pub fn default_limits() -> impl Iterator<Item = (&'static str, Limits)> {
    KINDS.iter().map(|k| (k.name(), k.default_limits()))
}

/// The MariaDB database checks of `engine`'s server, with `thresholds` overriding the
/// default limits (see [`default_limits`]) and `budget` bounding every run.
///
/// - `database_login`: log in (to the URL's database, if it names one) and run
///   `SELECT 1`; the value is the time that took. A refused login (unknown user, wrong
///   password) or an unreachable server is *unhealthy*, with a reason naming
///   authentication or reachability, never "alive".
/// - `connections`: `Threads_connected` as a percentage of `max_connections`, this
///   probe's own connection not counted (its sibling probes' are). A server that refuses the probe with
///   `Too many connections` is unhealthy at 100 %.
/// - `longest_query`: the longest running statement in `information_schema.PROCESSLIST`
///   (other than the probe's own; system, event scheduler and replication threads
///   left out), with its connection, user and the start of its text (withheld when it
///   may hold a password).
/// - `oldest_transaction`: the age of the oldest InnoDB transaction
///   (`information_schema.INNODB_TRX`), saying whether its session is idle.
/// - `blocked_locks`: sessions waiting for a row lock (InnoDB) or a metadata / table
///   lock, naming the longest waiter and, for row locks, its blocker.
/// - `replication_lag`: `Seconds_Behind_Master` of every replication connection; 0 on
///   a server that is not a replica; unhealthy with the threads' states and the last
///   error when replication is stopped (the value is then −1: no lag can be measured).
///
/// The account needs no privilege for `database_login` and `connections`; the
/// others need `PROCESS`, and `replication_lag` needs `SLAVE MONITOR` (or `SUPER`).
/// Without them a check returns an error (the suite reports "unknown") instead of a
/// reassuring answer from a partial view.
pub fn probes(
    engine: &MariaDbEngine,
    thresholds: &Thresholds,
    budget: ProbeBudget,
) -> Vec<Arc<dyn HealthCheck>> {
    KINDS
        .iter()
        .map(|&kind| {
            let check: Arc<dyn HealthCheck> = Arc::new(DatabaseCheck {
                kind,
                config: Arc::clone(&engine.config),
                budget,
                limits: thresholds.limits(kind.name(), kind.default_limits()),
            });
            check
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Login,
    Connections,
    LongestQuery,
    OldestTransaction,
    BlockedLocks,
    ReplicationLag,
}

const KINDS: [Kind; 6] = [
    Kind::Login,
    Kind::Connections,
    Kind::LongestQuery,
    Kind::OldestTransaction,
    Kind::BlockedLocks,
    Kind::ReplicationLag,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Login => "database_login",
            Kind::Connections => "connections",
            Kind::LongestQuery => "longest_query",
            Kind::OldestTransaction => "oldest_transaction",
            Kind::BlockedLocks => "blocked_locks",
            Kind::ReplicationLag => "replication_lag",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Kind::Connections => "percent",
            Kind::BlockedLocks => "count",
            _ => "seconds",
        }
    }

    fn default_limits(self) -> Limits {
        match self {
            Kind::Login => Limits::new(0.5, 2.0),
            Kind::Connections => Limits::new(80.0, 90.0),
            Kind::LongestQuery | Kind::OldestTransaction => Limits::new(300.0, 1800.0),
            Kind::BlockedLocks => Limits::new(1.0, 10.0),
            Kind::ReplicationLag => Limits::new(60.0, 300.0),
        }
    }
}

/// One check of one server.
struct DatabaseCheck {
    kind: Kind,
    config: Arc<ConnConfig>,
    budget: ProbeBudget,
    limits: Limits,
}

impl fmt::Debug for DatabaseCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MariaDbHealthCheck")
            .field("check", &self.kind.name())
            .field("location", &self.config.redacted_url())
            .field("budget", &self.budget)
            .field("limits", &self.limits)
            .finish()
    }
}

#[async_trait]
impl HealthCheck for DatabaseCheck {
    fn name(&self) -> &str {
        self.kind.name()
    }

    async fn check(&self) -> Result<HealthReport> {
        let started = Instant::now();
        // The login check logs in as the application does, to its database; the
        // others are about the whole server.
        let database = match self.kind {
            Kind::Login if !self.config.database.is_empty() => Some(self.config.database.as_str()),
            _ => None,
        };
        let mut session = match ProbeSession::open(&self.config, self.budget, database).await {
            Ok(s) => s,
            // A server that refuses the account, cannot be reached or does not answer
            // is down for the application, whatever `mariadb-admin ping` says: for the
            // login check that is the measurement.
            Err(e) if self.kind == Kind::Login => {
                return Ok(self.unhealthy(started.elapsed().as_secs_f64(), login_failure(&e)));
            }
            // Refused for want of a free slot: that is the measurement too.
            Err(e) if self.kind == Kind::Connections && too_many_connections(&e) => {
                return Ok(self.unhealthy(
                    100.0,
                    format!("the server refuses new connections (all slots taken): {e}"),
                ));
            }
            Err(e) => return Err(e),
        };
        let report = match self.kind {
            Kind::Login => Ok(self.select_one(&mut session, started).await),
            Kind::Connections => self.connections(&mut session).await,
            Kind::LongestQuery => self.longest_query(&mut session).await,
            Kind::OldestTransaction => self.oldest_transaction(&mut session).await,
            Kind::BlockedLocks => self.blocked_locks(&mut session).await,
            Kind::ReplicationLag => self.replication_lag(&mut session).await,
        };
        session.close().await;
        report
    }
}

impl DatabaseCheck {
    /// Judges `value` and puts `context` in front of the limits' verdict.
    fn judge(&self, value: f64, context: impl fmt::Display) -> HealthReport {
        let report = self.limits.judge(self.kind.name(), value, self.kind.unit());
        let reason = format!("{context}; {}", report.reason);
        report.with_reason(reason)
    }

    /// Unhealthy whatever the limits say.
    fn unhealthy(&self, value: f64, reason: String) -> HealthReport {
        HealthReport::new(
            self.kind.name(),
            HealthStatus::Unhealthy,
            value,
            self.kind.unit(),
            reason,
        )
        .with_limits(self.limits)
    }

    /// `SELECT 1` on a fresh login; the value is the time since `started`, before
    /// the login.
    async fn select_one(&self, s: &mut ProbeSession, started: Instant) -> HealthReport {
        let answer = s.rows("SELECT 1", "running SELECT 1").await;
        let latency = started.elapsed().as_secs_f64();
        let who = format!("user '{}'", self.config.user);
        match answer {
            Ok(rows) if rows.len() == 1 => {
                self.judge(latency, format_args!("login as {who} and SELECT 1"))
            }
            Ok(rows) => self.unhealthy(
                latency,
                format!(
                    "logged in as {who}, but SELECT 1 returned {} rows",
                    rows.len()
                ),
            ),
            // Past the statement budget the latency is past any sensible critical
            // limit too: the server is not answering queries.
            Err(e) => self.unhealthy(
                latency,
                format!("logged in as {who}, but SELECT 1 failed: {e}"),
            ),
        }
    }

    async fn connections(&self, s: &mut ProbeSession) -> Result<HealthReport> {
        let rows = s
            .rows(
                "SHOW GLOBAL STATUS LIKE 'Threads_connected'",
                "reading Threads_connected",
            )
            .await?;
        let connected = match rows.first() {
            Some(row) => conn::number(row, 1)?,
            None => return Err(Error::internal("the server reports no Threads_connected")),
        };
        let max = s
            .number("SELECT @@GLOBAL.max_connections", "reading max_connections")
            .await?;
        if max == 0 {
            return Err(Error::internal("the server reports max_connections = 0"));
        }
        // The whole of max_connections is for clients: MariaDB keeps its reserve
        // elsewhere, as one more connection for CONNECTION ADMIN (SUPER) accounts and
        // `extra_max_connections` on the separate `extra_port`, so neither is taken
        // off the denominator. This probe's own connection is not counted: it is not
        // load the application put there. Its sibling probes' connections (a suite
        // opens all six at once) are in Threads_connected and stay counted: while they
        // run they hold slots the application would need.
        let others = connected.saturating_sub(1);
        let percent = others as f64 * 100.0 / max as f64;
        Ok(self.judge(
            percent,
            format_args!(
                "{others} of max_connections {max} in use (this probe not counted, other \
                 probes' sessions are)"
            ),
        ))
    }

    async fn longest_query(&self, s: &mut ProbeSession) -> Result<HealthReport> {
        require_process(
            s,
            "see other accounts' queries in information_schema.PROCESSLIST",
        )
        .await?;
        // Statements of prepared-statement clients show as `Execute`, not `Query`.
        // System, event scheduler and replication threads run as 'system user' /
        // 'event_scheduler' (or with another COMMAND, such as Binlog Dump).
        let filter = "WHERE COMMAND IN ('Query', 'Execute') AND ID <> CONNECTION_ID() \
                      AND USER NOT IN ('system user', 'event_scheduler', 'DELAYED')";
        let what = "reading information_schema.PROCESSLIST";
        let precise = format!(
            "SELECT ID, USER, DB, TIME_MS / 1000, LEFT(INFO, 400) \
             FROM information_schema.PROCESSLIST {filter} ORDER BY TIME_MS DESC LIMIT 1"
        );
        let rows = match s.rows(&precise, what).await {
            // MySQL has whole seconds only.
            Err(e) if e.context_value("code") == Some(code::BAD_FIELD) => {
                let coarse = format!(
                    "SELECT ID, USER, DB, TIME, LEFT(INFO, 400) \
                     FROM information_schema.PROCESSLIST {filter} ORDER BY TIME DESC LIMIT 1"
                );
                s.rows(&coarse, what).await?
            }
            other => other?,
        };
        let Some(row) = rows.first() else {
            return Ok(self.judge(0.0, "no query is running (other than this probe's)"));
        };
        let id = conn::number(row, 0)?;
        let user = conn::opt_text(row, 1)?.unwrap_or_default();
        let db = conn::opt_text(row, 2)?;
        let seconds = float(row, 3)?.unwrap_or(0.0).max(0.0);
        let text = conn::opt_text(row, 4)?.unwrap_or_default();
        let db = db.map(|d| format!(", database '{d}'")).unwrap_or_default();
        Ok(self.judge(
            seconds,
            format_args!(
                "longest query: connection {id} (user '{user}'{db}) running {seconds:.1} s: {}",
                excerpt(&text)
            ),
        ))
    }

    async fn oldest_transaction(&self, s: &mut ProbeSession) -> Result<HealthReport> {
        // trx_started is in the server's system time zone, as is NOW() in a session
        // with time_zone = 'SYSTEM' (set by ProbeSession::open).
        let rows = s
            .rows(
                "SELECT t.trx_id, t.trx_mysql_thread_id, \
                 TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) / 1000000, t.trx_state, \
                 p.USER, p.COMMAND, p.TIME, LEFT(COALESCE(t.trx_query, p.INFO), 400) \
                 FROM information_schema.INNODB_TRX t \
                 LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
                 WHERE t.trx_mysql_thread_id <> CONNECTION_ID() \
                 ORDER BY t.trx_started, t.trx_id LIMIT 1",
                "reading information_schema.INNODB_TRX",
            )
            .await
            .map_err(|e| needs_process(e, "see open transactions"))?;
        let Some(row) = rows.first() else {
            return Ok(self.judge(0.0, "no transaction is open (other than this probe's)"));
        };
        let trx = conn::text(row, 0)?;
        let thread = conn::number(row, 1)?;
        let age = float(row, 2)?.unwrap_or(0.0).max(0.0);
        let state = conn::opt_text(row, 3)?.unwrap_or_default();
        let user = conn::opt_text(row, 4)?;
        let command = conn::opt_text(row, 5)?.unwrap_or_default();
        let idle = conn::number(row, 6)?;
        let text = conn::opt_text(row, 7)?;
        let owner = match (thread, user) {
            // Recovered (for example XA PREPARED after a crash) or internal.
            (0, _) => "no connection (a recovered or internal transaction)".to_owned(),
            (id, Some(user)) => format!("connection {id} (user '{user}')"),
            (id, None) => format!("connection {id}"),
        };
        let doing = if command == "Sleep" {
            format!("idle in transaction for {idle} s")
        } else {
            match text {
                Some(t) if !t.is_empty() => format!("{state}: {}", excerpt(&t)),
                _ => state,
            }
        };
        Ok(self.judge(
            age,
            format_args!(
                "oldest transaction: transaction {trx} of {owner}, open {age:.1} s, {doing}"
            ),
        ))
    }

    async fn blocked_locks(&self, s: &mut ProbeSession) -> Result<HealthReport> {
        let mut waiters = Vec::new();
        // Row locks: InnoDB transactions in LOCK WAIT. (INNODB_TRX and
        // INNODB_LOCK_WAITS are a snapshot InnoDB refreshes at most every 0.1 s.)
        let rows = s
            .rows(
                "SELECT trx_id, trx_mysql_thread_id, \
                 TIMESTAMPDIFF(MICROSECOND, trx_wait_started, NOW(6)) / 1000000, \
                 LEFT(trx_query, 400) FROM information_schema.INNODB_TRX \
                 WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id <> CONNECTION_ID()",
                "reading information_schema.INNODB_TRX",
            )
            .await
            .map_err(|e| needs_process(e, "see lock waits"))?;
        for row in &rows {
            waiters.push(Waiter {
                trx: Some(conn::text(row, 0)?),
                thread: conn::number(row, 1)?,
                seconds: float(row, 2)?.unwrap_or(0.0).max(0.0),
                lock: "a row lock".to_owned(),
                text: conn::opt_text(row, 3)?.unwrap_or_default(),
            });
        }
        // Metadata and table locks (an ALTER queued behind a long transaction, and
        // everything queued behind the ALTER) never reach InnoDB.
        let rows = s
            .rows(
                "SELECT ID, TIME, STATE, LEFT(INFO, 400) FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND USER <> 'system user' \
                 AND STATE LIKE 'Waiting for%lock%'",
                "reading information_schema.PROCESSLIST",
            )
            .await?;
        let row_waiters: BTreeSet<u64> = waiters.iter().map(|w| w.thread).collect();
        for row in &rows {
            let thread = conn::number(row, 0)?;
            if row_waiters.contains(&thread) {
                continue;
            }
            let state = conn::opt_text(row, 2)?.unwrap_or_default();
            waiters.push(Waiter {
                trx: None,
                thread,
                seconds: float(row, 1)?.unwrap_or(0.0).max(0.0),
                lock: state
                    .strip_prefix("Waiting for ")
                    .map_or_else(|| state.clone(), |l| format!("a {l}")),
                text: conn::opt_text(row, 3)?.unwrap_or_default(),
            });
        }
        let count = waiters.len();
        let Some(longest) = waiters
            .iter()
            .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
        else {
            return Ok(self.judge(0.0, "no session is waiting for a lock"));
        };
        let blocker = match &longest.trx {
            Some(trx) => self.row_lock_blocker(s, trx).await,
            None => String::new(),
        };
        Ok(self.judge(
            count as f64,
            format_args!(
                "{count} session(s) waiting for a lock; longest: connection {} waiting {:.1} s \
                 for {}: {}{blocker}",
                longest.thread,
                longest.seconds,
                longest.lock,
                excerpt(&longest.text)
            ),
        ))
    }

    /// Who holds the row lock transaction `trx` waits for, as the end of a reason.
    /// `INNODB_LOCK_WAITS` is not on every server (MySQL 8 moved it); without it the
    /// count still stands, only the blocker goes unnamed.
    async fn row_lock_blocker(&self, s: &mut ProbeSession, trx: &str) -> String {
        let Ok(trx) = trx.parse::<u64>() else {
            return String::new();
        };
        let sql = format!(
            "SELECT b.trx_mysql_thread_id, p.USER, p.COMMAND, \
             LEFT(COALESCE(b.trx_query, p.INFO), 400) \
             FROM information_schema.INNODB_LOCK_WAITS w \
             JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id \
             LEFT JOIN information_schema.PROCESSLIST p ON p.ID = b.trx_mysql_thread_id \
             WHERE w.requesting_trx_id = {trx}"
        );
        let rows = match s
            .rows(&sql, "reading information_schema.INNODB_LOCK_WAITS")
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("the blocker of transaction {trx} is unknown: {e}");
                return String::new();
            }
        };
        let blockers: Vec<String> = rows
            .iter()
            .filter_map(|row| {
                let thread = conn::number(row, 0).ok()?;
                let user = conn::opt_text(row, 1).ok()?.unwrap_or_default();
                let command = conn::opt_text(row, 2).ok()?.unwrap_or_default();
                let text = conn::opt_text(row, 3).ok()?.unwrap_or_default();
                let doing = if command == "Sleep" || text.is_empty() {
                    "idle in transaction".to_owned()
                } else {
                    excerpt(&text)
                };
                Some(format!("connection {thread} (user '{user}', {doing})"))
            })
            .collect();
        if blockers.is_empty() {
            String::new()
        } else {
            format!(" — blocked by {}", blockers.join(", "))
        }
    }

    async fn replication_lag(&self, s: &mut ProbeSession) -> Result<HealthReport> {
        let what = "reading the replication status";
        let rows = match s.rows("SHOW ALL SLAVES STATUS", what).await {
            // MySQL knows one unnamed connection only.
            Err(e) if e.context_value("code") == Some(code::PARSE_ERROR) => {
                s.rows("SHOW SLAVE STATUS", what).await?
            }
            other => other.map_err(|e| {
                if e.context_value("code") == Some(code::SPECIFIC_ACCESS_DENIED) {
                    e.during("the replication check needs the SLAVE MONITOR (or SUPER) privilege")
                } else {
                    e
                }
            })?,
        };
        if rows.is_empty() {
            return Ok(self.judge(0.0, "not a replica (no replication is configured)"));
        }
        let mut stopped = Vec::new();
        let mut lags = Vec::new();
        for row in &rows {
            let name = column_text(row, "Connection_name").unwrap_or_default();
            let name = if name.is_empty() {
                "the default connection".to_owned()
            } else {
                format!("connection '{name}'")
            };
            let io = column_text(row, "Slave_IO_Running").unwrap_or_default();
            let sql = column_text(row, "Slave_SQL_Running").unwrap_or_default();
            let behind = column_text(row, "Seconds_Behind_Master")
                .and_then(|v| v.trim().parse::<f64>().ok());
            match behind {
                // NULL: the IO or the SQL thread is not running.
                None => {
                    let mut reason = format!(
                        "replication is stopped ({name}): Slave_IO_Running: {io}, \
                         Slave_SQL_Running: {sql}"
                    );
                    for field in ["Last_Error", "Last_IO_Error", "Last_SQL_Error"] {
                        if let Some(text) = column_text(row, field).filter(|t| !t.is_empty()) {
                            // Last_Error repeats Last_SQL_Error.
                            if !reason.contains(&text) {
                                reason.push_str(&format!(", {field}: {text}"));
                            }
                        }
                    }
                    stopped.push(reason);
                }
                Some(seconds) => lags.push((seconds, name)),
            }
        }
        if !stopped.is_empty() {
            return Ok(self.unhealthy(-1.0, stopped.join("; ")));
        }
        let (seconds, name) = lags
            .into_iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((0.0, String::new()));
        Ok(self.judge(
            seconds,
            format_args!("replica ({name}) {seconds:.0} s behind its primary"),
        ))
    }
}

/// A session waiting for a lock.
struct Waiter {
    /// The InnoDB transaction, for a row lock.
    trx: Option<String>,
    thread: u64,
    seconds: f64,
    lock: String,
    text: String,
}

/// One probe's connection, with its statement deadline.
struct ProbeSession {
    conn: Conn,
    deadline: Instant,
    statement: Duration,
}

impl ProbeSession {
    /// Connects within the connect budget and sets the session's statement and lock
    /// budgets.
    async fn open(
        config: &ConnConfig,
        budget: ProbeBudget,
        database: Option<&str>,
    ) -> Result<Self> {
        let conn = match timeout(
            budget.connect,
            conn::connect(config, database, Session::Catalog),
        )
        .await
        {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Unreachable,
                    format!(
                        "no answer within the connect budget of {:.1} s",
                        budget.connect.as_secs_f64()
                    ),
                )
                .temporary()
                .during(format!("connecting to {}", config.redacted_url())));
            }
        };
        let mut session = Self {
            conn,
            deadline: Instant::now() + budget.statement,
            statement: budget.statement,
        };
        if let Err(e) = session.limit(budget).await {
            session.close().await;
            return Err(e);
        }
        Ok(session)
    }

    async fn limit(&mut self, budget: ProbeBudget) -> Result<()> {
        // 0 would mean "no limit".
        let statement = budget.statement.as_secs_f64().max(0.001);
        let lock = budget.lock.as_secs_f64().ceil().max(1.0);
        let what = "setting the probe's statement and lock budget";
        let mariadb = format!(
            "SET SESSION max_statement_time = {statement:.3}, lock_wait_timeout = {lock:.0}, \
             innodb_lock_wait_timeout = {lock:.0}, time_zone = 'SYSTEM'"
        );
        match self.exec(&mariadb, what).await {
            Err(e) if e.context_value("code") == Some(code::UNKNOWN_SYSTEM_VARIABLE) => {
                let mysql = format!(
                    "SET SESSION max_execution_time = {:.0}, lock_wait_timeout = {lock:.0}, \
                     innodb_lock_wait_timeout = {lock:.0}, time_zone = 'SYSTEM'",
                    (statement * 1000.0).ceil()
                );
                self.exec(&mysql, what).await
            }
            other => other,
        }
    }

    /// Runs a query within what is left of the statement budget.
    async fn rows(&mut self, sql: &str, what: &str) -> Result<Vec<Row>> {
        match timeout_at(self.deadline, self.conn.query::<Row, _>(sql)).await {
            Ok(rows) => rows.map_err(|e| db_error(e).during(what)),
            Err(_) => Err(self.out_of_time(what)),
        }
    }

    async fn exec(&mut self, sql: &str, what: &str) -> Result<()> {
        match timeout_at(self.deadline, self.conn.query_drop(sql)).await {
            Ok(done) => done.map_err(|e| db_error(e).during(what)),
            Err(_) => Err(self.out_of_time(what)),
        }
    }

    async fn number(&mut self, sql: &str, what: &str) -> Result<u64> {
        match self.rows(sql, what).await?.first() {
            Some(row) => conn::number(row, 0),
            None => Err(Error::internal(format!("{what}: no row"))),
        }
    }

    fn out_of_time(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Database,
            format!(
                "{what}: no answer within the statement budget of {:.1} s",
                self.statement.as_secs_f64()
            ),
        )
        .temporary()
    }

    /// Says goodbye, or drops the socket when the server does not take it: a
    /// connection left for the driver to close in the background would wait for a
    /// hung server forever, one per probe run.
    async fn close(self) {
        if let Err(e) = timeout(CLOSE_GRACE, self.conn.disconnect())
            .await
            .unwrap_or(Ok(()))
        {
            tracing::debug!("closing a probe connection: {e}");
        }
    }
}

/// What an operator reads about a refused or failed login.
fn login_failure(e: &Error) -> String {
    match e.kind() {
        ErrorKind::Authentication => format!("authentication failed: {e}"),
        ErrorKind::Unreachable | ErrorKind::Interrupted => format!("not reachable: {e}"),
        _ if too_many_connections(e) => {
            format!("the server refuses new connections (all slots taken): {e}")
        }
        _ => format!("login failed: {e}"),
    }
}

fn too_many_connections(e: &Error) -> bool {
    e.context_value("code") == Some(code::TOO_MANY_CONNECTIONS)
}

/// Fails unless the account has `PROCESS`. Without it `information_schema.PROCESSLIST`
/// silently shows only the account's own sessions, which would read as "all quiet";
/// `INNODB_TRX` (same privilege) refuses outright, so asking it makes the server say
/// which privilege is missing.
async fn require_process(s: &mut ProbeSession, to: &str) -> Result<()> {
    s.rows(
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX",
        "checking for the PROCESS privilege",
    )
    .await
    .map(drop)
    .map_err(|e| needs_process(e, to))
}

fn needs_process(e: Error, to: &str) -> Error {
    if e.context_value("code") == Some(code::SPECIFIC_ACCESS_DENIED) {
        e.during(format!(
            "the probe account needs the PROCESS privilege to {to}"
        ))
    } else {
        e
    }
}

/// A column by name (`SHOW … STATUS` columns move between versions), NULL as `None`.
fn column_text(row: &Row, name: &str) -> Option<String> {
    let i = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str().eq_ignore_ascii_case(name))?;
    conn::opt_text(row, i).ok().flatten()
}

/// Column `i` as a decimal number, NULL as `None`.
fn float(row: &Row, i: usize) -> Result<Option<f64>> {
    conn::opt_text(row, i)?
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| Error::internal(format!("'{s}' in column {i} is not a number")))
        })
        .transpose()
}

/// The start of a statement on one line. A statement that may carry a password
/// (`CREATE USER … IDENTIFIED BY`, `SET PASSWORD`) shows its first word only: reasons
/// go to `/health`, logs and alerts.
fn excerpt(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().collect();
    if words.is_empty() {
        return "(no statement text)".to_owned();
    }
    let upper = sql.to_ascii_uppercase();
    if upper.contains("IDENTIFIED") || upper.contains("PASSWORD") {
        return format!("{} … (text withheld: it may hold a password)", words[0]);
    }
    let line = words.join(" ");
    if line.chars().count() > EXCERPT_CHARS {
        let cut: String = line.chars().take(EXCERPT_CHARS).collect();
        format!("{cut}…")
    } else {
        line
    }
}
