//! PostgreSQL health probes: one [`HealthCheck`] per thing an operator watches on a
//! server — login, connection saturation, long queries, old and idle transactions,
//! lock waits, replication lag, WAL kept by inactive slots, transaction-ID age.
//!
//! Every check connects afresh (so a restarted server or a changed password shows at the
//! next run) with the engine's URL, TLS and password sources, but with the probe's own
//! budget: `connect` bounds the whole login, and the session sets `statement_timeout`
//! and `lock_timeout` from it, with a client-side deadline a little longer, so a server
//! that stops answering mid-query cannot hold a probe. Sessions are named
//! [`APPLICATION_NAME`]; the age and lock checks leave out their own backend and other
//! probes' sessions, which are short and bounded by the same budget, but `connections`
//! counts them: while they run they hold slots like any other client.
//!
//! PostgreSQL hides the state, timings and wait events of other users' sessions (and
//! the WAL receiver's and standbys' details) from a user that is neither a superuser
//! nor a member of `pg_read_all_stats` (which `pg_monitor` includes): the rows are
//! there, their columns NULL. A check that reads them would find nothing and say OK,
//! so each first asks whether its user may see them and, if not, fails with
//! [`ErrorKind::PermissionDenied`] naming the grant.
//!
//! Only [`DatabaseLogin`] turns a refused login or an unreachable server into a verdict
//! (unhealthy, never "alive"); every other check needs a working session to measure its
//! value, so for it the same failures, a permission it lacks or a timeout are errors
//! ("could not check", `unknown` in a suite). The URL's password never reaches a
//! reason, an error or `Debug`: the location is always shown redacted.
//!
//! What must not live here: judging rules and the suite runner (`ops_core::health`), and
//! anything that changes the server — the probes only read statistics views.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ops_core::{
    Error, ErrorKind, HealthCheck, HealthReport, HealthStatus, Limits, ProbeBudget, Result,
    Thresholds,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, SimpleQueryMessage};

use crate::PostgresEngine;
use crate::config::ConnConfig;
use crate::errors::{column, query_error};

/// The `application_name` of every probe session: how the probes (and an operator
/// reading `pg_stat_activity`) tell them from the application's sessions.
pub const APPLICATION_NAME: &str = "dbops-health";

/// The names of the checks [`probes`] returns, in that order. They are a contract:
/// metric labels and keys under `[health.thresholds]`.
pub const CHECKS: [&str; 10] = [
    DatabaseLogin::NAME,
    Connections::NAME,
    LongestQuery::NAME,
    OldestTransaction::NAME,
    IdleInTransaction::NAME,
    BlockedLocks::NAME,
    ReplicationLag::NAME,
    ReplicationSlots::NAME,
    XidAge::NAME,
    WalArchiver::NAME,
];

/// Every PostgreSQL check of `engine`'s server (see [`CHECKS`]), each judged by the
/// limits `thresholds` give its name, else its default, and bounded by `budget`.
///
/// Nothing is contacted here. The checks that read `pg_stat_activity`,
/// `pg_stat_replication` or `pg_stat_wal_receiver` see other users' sessions fully
/// only as a superuser or a member of `pg_monitor` (`pg_read_all_stats`); without it
/// they return a [`ErrorKind::PermissionDenied`] error instead of a blind "OK".
pub fn probes(
    engine: &PostgresEngine,
    thresholds: &Thresholds,
    budget: ProbeBudget,
) -> Vec<Arc<dyn HealthCheck>> {
    vec![
        Arc::new(DatabaseLogin::with_thresholds(engine, thresholds, budget)),
        Arc::new(Connections::with_thresholds(engine, thresholds, budget)),
        Arc::new(LongestQuery::with_thresholds(engine, thresholds, budget)),
        Arc::new(OldestTransaction::with_thresholds(
            engine, thresholds, budget,
        )),
        Arc::new(IdleInTransaction::with_thresholds(
            engine, thresholds, budget,
        )),
        Arc::new(BlockedLocks::with_thresholds(engine, thresholds, budget)),
        Arc::new(ReplicationLag::with_thresholds(engine, thresholds, budget)),
        Arc::new(ReplicationSlots::with_thresholds(
            engine, thresholds, budget,
        )),
        Arc::new(XidAge::with_thresholds(engine, thresholds, budget)),
        Arc::new(WalArchiver::with_thresholds(engine, thresholds, budget)),
    ]
}

/// Where a probe connects and within what time. `Debug` shows the URL redacted.
#[derive(Clone)]
struct Target {
    config: ConnConfig,
    budget: ProbeBudget,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.config.redacted_url())
            .field("budget", &self.budget)
            .finish()
    }
}

/// How much longer than the server's `statement_timeout` we wait on our side: the
/// server's error (which says what timed out) should normally arrive first.
const CLIENT_MARGIN: Duration = Duration::from_millis(250);

impl Target {
    fn new(engine: &PostgresEngine, budget: ProbeBudget) -> Self {
        let mut config = engine.config.clone();
        config.application_name = APPLICATION_NAME.to_owned();
        // The probe's budget, not the URL's connect_timeout (whose floor is 2 s).
        config.connect_timeout = budget.connect;
        Self { config, budget }
    }

    fn location(&self) -> String {
        self.config.redacted_url()
    }

    /// `SET statement_timeout …; SET lock_timeout …;` from the budget (0 would mean
    /// "no limit" to the server, so the least is 1 ms).
    fn settings(&self) -> String {
        let ms = |d: Duration| d.as_millis().max(1);
        format!(
            "SET statement_timeout = {}; SET lock_timeout = {};",
            ms(self.budget.statement),
            ms(self.budget.lock)
        )
    }

    /// How long the statements of one session may take on our side.
    fn statement_wait(&self) -> Duration {
        self.budget.statement + CLIENT_MARGIN
    }

    /// Connects, sets the timeouts, and returns a session whose statements share one
    /// client-side deadline.
    ///
    /// # Errors
    /// Unreachable server, refused login, a server that does not answer in time.
    async fn session(&self) -> Result<Session> {
        let client = crate::session::connect(&self.config).await?;
        let session = Session {
            client,
            deadline: tokio::time::Instant::now() + self.statement_wait(),
            wait: self.statement_wait(),
        };
        session
            .bounded(
                session.client.batch_execute(&self.settings()),
                "setting the probe's statement_timeout and lock_timeout",
            )
            .await?;
        Ok(session)
    }

    /// [`Target::session`], for a check that reads other users' sessions: fails
    /// unless its user may see them (see the module documentation).
    ///
    /// # Errors
    /// As [`Target::session`]; [`ErrorKind::PermissionDenied`] naming the grant.
    async fn stats_session(&self, to: &str) -> Result<Session> {
        let s = self.session().await?;
        s.require_stats(to).await?;
        Ok(s)
    }
}

/// A probe's connection.
struct Session {
    client: Client,
    deadline: tokio::time::Instant,
    wait: Duration,
}

impl Session {
    async fn bounded<T>(
        &self,
        step: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
        doing: &str,
    ) -> Result<T> {
        match tokio::time::timeout_at(self.deadline, step).await {
            Ok(done) => done.map_err(|e| query_error(e, doing)),
            Err(_) => Err(Error::new(
                ErrorKind::Interrupted,
                format!(
                    "{doing}: the server did not answer within {:.1} s",
                    self.wait.as_secs_f64()
                ),
            )
            .temporary()),
        }
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        doing: &str,
    ) -> Result<Vec<Row>> {
        self.bounded(self.client.query(sql, params), doing).await
    }

    async fn row(&self, sql: &str, params: &[&(dyn ToSql + Sync)], doing: &str) -> Result<Row> {
        self.rows(sql, params, doing)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::new(ErrorKind::Database, format!("{doing}: no row returned")))
    }

    /// Fails unless the session's user is a superuser or a member of
    /// `pg_read_all_stats` (`pg_monitor` includes it): without it PostgreSQL shows
    /// other users' sessions with NULL state, timings and wait events, which would read
    /// as "nothing running, nothing waiting".
    async fn require_stats(&self, to: &str) -> Result<()> {
        let doing = "checking whether the probe's user may see other users' sessions";
        let row = self
            .row(
                "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
                        OR coalesce((SELECT rolsuper FROM pg_roles
                                      WHERE rolname = current_user), false),
                        quote_ident(current_user)",
                &[],
                doing,
            )
            .await?;
        let allowed: bool = column(&row, 0, doing)?;
        if allowed {
            return Ok(());
        }
        let user: String = column(&row, 1, doing)?;
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "user {user} may not see other users' sessions, so the probe cannot {to} \
                 (PostgreSQL would show them without state or timings); grant it \
                 pg_monitor: GRANT pg_monitor TO {user}"
            ),
        ))
    }
}

/// A report judged by `limits`, its reason prefixed by what was measured.
fn judged(name: &str, limits: Limits, value: f64, unit: &str, detail: &str) -> HealthReport {
    let r = limits.judge(name, value, unit);
    let reason = format!("{detail}; {}", r.reason);
    r.with_reason(reason)
}

/// The start of a query as a reason shows it: whitespace collapsed, at most 80
/// characters, and nothing after the word "password" (`ALTER ROLE … PASSWORD '…'`
/// must not end up in a report or a notification).
fn snippet(query: &str) -> String {
    let words = query.split_whitespace().collect::<Vec<_>>().join(" ");
    // ASCII lower-casing keeps byte offsets, so `at` is a boundary in `words` too.
    let words = match words.to_ascii_lowercase().find("password") {
        Some(at) => format!("{} ******", &words[..at + "password".len()]),
        None => words,
    };
    const MAX: usize = 80;
    if words.chars().count() > MAX {
        let mut out: String = words.chars().take(MAX).collect();
        out.push('…');
        out
    } else {
        words
    }
}

/// Bytes in binary units (`1.5 GiB`).
fn show_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes:.0} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Declares a check struct: its name, default limits, constructors and the
/// [`HealthCheck`] impl that calls its `measure`.
macro_rules! check {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $limits:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $ty {
            target: Target,
            limits: Limits,
        }

        impl $ty {
            /// The check's name: its metric label and its key under
            /// `[health.thresholds]`.
            pub const NAME: &'static str = $name;
            /// The limits it is judged by unless overridden.
            pub const DEFAULT_LIMITS: Limits = $limits;

            /// The check of `engine`'s server, judged by `limits`, bounded by `budget`.
            /// Does not connect.
            pub fn new(engine: &PostgresEngine, limits: Limits, budget: ProbeBudget) -> Self {
                Self {
                    target: Target::new(engine, budget),
                    limits,
                }
            }

            /// The check with the limits `thresholds` give its name, else
            /// [`Self::DEFAULT_LIMITS`].
            pub fn with_thresholds(
                engine: &PostgresEngine,
                thresholds: &Thresholds,
                budget: ProbeBudget,
            ) -> Self {
                Self::new(
                    engine,
                    thresholds.limits(Self::NAME, Self::DEFAULT_LIMITS),
                    budget,
                )
            }

            /// The limits it judges by.
            pub fn limits(&self) -> Limits {
                self.limits
            }
        }

        #[async_trait]
        impl HealthCheck for $ty {
            fn name(&self) -> &str {
                Self::NAME
            }

            async fn check(&self) -> Result<HealthReport> {
                self.measure().await
            }
        }
    };
}

check!(
    /// `database_login`: connects (TCP, TLS, authentication) and runs `SELECT 1`; the
    /// value is the whole round trip in seconds (default limits 0.5 s and 2 s).
    ///
    /// A refused login (wrong password, unknown user, no `pg_hba.conf` entry, no
    /// `CONNECT` privilege, too many connections), an unreachable server and one that
    /// logs in but does not answer `SELECT 1` within the statement budget are all
    /// *unhealthy*, with the reason — never "alive". Only a setup that cannot be tried
    /// at all (a TLS root certificate that cannot be read) is an error.
    DatabaseLogin,
    "database_login",
    Limits::new(0.5, 2.0)
);

impl DatabaseLogin {
    async fn measure(&self) -> Result<HealthReport> {
        let started = Instant::now();
        let location = self.target.location();
        let client = match crate::session::connect(&self.target.config).await {
            Ok(client) => client,
            Err(e) => return self.refused(e, started.elapsed()),
        };
        let wait = self.target.statement_wait();
        let sql = format!("{} SELECT 1", self.target.settings());
        let answer = tokio::time::timeout(wait, client.simple_query(&sql)).await;
        let secs = started.elapsed().as_secs_f64();
        let down = |reason: String| {
            Ok(
                HealthReport::new(Self::NAME, HealthStatus::Unhealthy, secs, "seconds", reason)
                    .with_limits(self.limits),
            )
        };
        match answer {
            Ok(Ok(messages)) => {
                let one = messages.iter().any(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0) == Some("1"),
                    _ => false,
                });
                if !one {
                    return down(format!(
                        "{location} accepted the login but SELECT 1 did not return 1"
                    ));
                }
                Ok(judged(
                    Self::NAME,
                    self.limits,
                    secs,
                    "seconds",
                    &format!(
                        "{location}: logged in as {} and ran SELECT 1",
                        self.target.config.user
                    ),
                ))
            }
            Ok(Err(e)) => down(format!(
                "{location} accepted the login but SELECT 1 failed: {}",
                query_error(e, "SELECT 1")
            )),
            Err(_) => down(format!(
                "{location} accepted the login but did not answer SELECT 1 within {:.1} s",
                wait.as_secs_f64()
            )),
        }
    }

    /// The verdict for a login that failed with `err` after `spent`.
    fn refused(&self, err: Error, spent: Duration) -> Result<HealthReport> {
        let user = &self.target.config.user;
        let reason = if err.kind() == ErrorKind::Authentication {
            format!("authentication failed for user {user}, so the database is not usable: {err}")
        } else if err.context_value("sqlstate").is_some() {
            // The server answered, with an error: it is up, but this login cannot work
            // (unknown database, no CONNECT privilege, too many connections, starting up
            // or shutting down).
            format!("the server refused the login of user {user}: {err}")
        } else if matches!(err.kind(), ErrorKind::Unreachable | ErrorKind::Interrupted) {
            format!("not reachable: {err}")
        } else {
            return Err(err);
        };
        Ok(HealthReport::new(
            Self::NAME,
            HealthStatus::Unhealthy,
            spent.as_secs_f64(),
            "seconds",
            reason,
        )
        .with_limits(self.limits))
    }
}

check!(
    /// `connections`: client connections in use as a percentage of those open to
    /// ordinary users, `max_connections` less `superuser_reserved_connections` and (on
    /// PostgreSQL 16 and later) `reserved_connections`; default limits 80 and 90 %.
    ///
    /// Every client backend counts, this probe's and its sibling probes' included: a
    /// suite opens all its sessions at once, and while they run they take slots an
    /// application would need. A server that refuses the probe for want of a slot
    /// (SQLSTATE 53300) is unhealthy at 100 %: that is the measurement. Needs
    /// `pg_monitor` (see [`probes`]).
    Connections,
    "connections",
    Limits::new(80.0, 90.0)
);

impl Connections {
    async fn measure(&self) -> Result<HealthReport> {
        let s = match self.target.session().await {
            Ok(s) => s,
            Err(e) if e.context_value("sqlstate") == Some(TOO_MANY_CONNECTIONS) => {
                return Ok(HealthReport::new(
                    Self::NAME,
                    HealthStatus::Unhealthy,
                    100.0,
                    "percent",
                    format!(
                        "the server refuses new connections of user {} (all slots open to \
                         it are taken): {e}",
                        self.target.config.user
                    ),
                )
                .with_limits(self.limits));
            }
            Err(e) => return Err(e),
        };
        s.require_stats("count other users' connections").await?;
        let doing = "counting connections in pg_stat_activity";
        let row = s
            .row(
                "SELECT count(*)::int8,
                        count(*) FILTER (WHERE application_name = $1)::int8,
                        current_setting('max_connections')::int8,
                        current_setting('superuser_reserved_connections')::int8,
                        coalesce(nullif(current_setting('reserved_connections', true), ''),
                                 '0')::int8
                   FROM pg_stat_activity
                  WHERE backend_type = 'client backend'",
                &[&APPLICATION_NAME],
                doing,
            )
            .await?;
        let used: i64 = column(&row, 0, doing)?;
        let probes: i64 = column(&row, 1, doing)?;
        let max: i64 = column(&row, 2, doing)?;
        let superuser: i64 = column(&row, 3, doing)?;
        let reserved: i64 = column(&row, 4, doing)?;
        let open = (max - superuser - reserved).max(1);
        let percent = used as f64 * 100.0 / open as f64;
        let reserved_text = if reserved > 0 {
            format!(
                "{superuser} reserved for superusers and {reserved} for pg_use_reserved_connections"
            )
        } else {
            format!("{superuser} reserved for superusers")
        };
        Ok(judged(
            Self::NAME,
            self.limits,
            percent,
            "percent",
            &format!(
                "{used} of {open} connections in use, {probes} of them health probes' \
                 (max_connections {max}, {reserved_text})"
            ),
        ))
    }
}

/// SQLSTATE `too_many_connections`: no slot left for the user (including "remaining
/// connection slots are reserved").
const TOO_MANY_CONNECTIONS: &str = "53300";

/// The session columns the age checks read, after the age: pid, user, database,
/// state, and the start of the query.
const SESSION_COLUMNS: &str = "pid, coalesce(usename::text, '?'), coalesce(datname::text, '?'),
       coalesce(state, '?'), coalesce(left(query, 400), '')";

/// Client sessions other than the probes'.
const OTHER_CLIENTS: &str = "backend_type = 'client backend'
   AND pid <> pg_backend_pid()
   AND application_name IS DISTINCT FROM $1";

/// One session as a reason names it.
struct SessionFacts {
    age: f64,
    pid: i32,
    user: String,
    database: String,
    state: String,
    query: String,
}

impl SessionFacts {
    fn from_row(row: &Row, doing: &str) -> Result<Self> {
        Ok(Self {
            age: column::<f64>(row, 0, doing)?.max(0.0),
            pid: column(row, 1, doing)?,
            user: column(row, 2, doing)?,
            database: column(row, 3, doing)?,
            state: column(row, 4, doing)?,
            query: column(row, 5, doing)?,
        })
    }

    /// `pid 123 (user app, database shop)`.
    fn who(&self) -> String {
        format!(
            "pid {} (user {}, database {})",
            self.pid, self.user, self.database
        )
    }
}

/// The one session with the greatest age `age_sql` among those `filter` selects, if
/// any (`$1` in `filter` is [`APPLICATION_NAME`]).
async fn oldest_session(
    target: &Target,
    age_sql: &str,
    filter: &str,
    doing: &str,
) -> Result<Option<SessionFacts>> {
    let s = target
        .stats_session("see other users' sessions in pg_stat_activity")
        .await?;
    let sql = format!(
        "SELECT extract(epoch FROM clock_timestamp() - {age_sql})::float8, {SESSION_COLUMNS}
           FROM pg_stat_activity
          WHERE {OTHER_CLIENTS} AND {age_sql} IS NOT NULL AND {filter}
          ORDER BY {age_sql}
          LIMIT 1"
    );
    s.rows(&sql, &[&APPLICATION_NAME], doing)
        .await?
        .first()
        .map(|row| SessionFacts::from_row(row, doing))
        .transpose()
}

check!(
    /// `longest_query`: how long the longest-running active query has run, in seconds
    /// (0 when none); client sessions only, so autovacuum workers, WAL senders and
    /// this probe are left out. Default limits 5 and 30 minutes. The reason names the
    /// session and the start of its query.
    LongestQuery,
    "longest_query",
    Limits::new(300.0, 1800.0)
);

impl LongestQuery {
    async fn measure(&self) -> Result<HealthReport> {
        let doing = "finding the longest-running query in pg_stat_activity";
        let found = oldest_session(&self.target, "query_start", "state = 'active'", doing).await?;
        Ok(match found {
            Some(q) => judged(
                Self::NAME,
                self.limits,
                q.age,
                "seconds",
                &format!(
                    "longest-running query: {} for {:.0} s: {}",
                    q.who(),
                    q.age,
                    snippet(&q.query)
                ),
            ),
            None => judged(
                Self::NAME,
                self.limits,
                0.0,
                "seconds",
                "no query is running",
            ),
        })
    }
}

check!(
    /// `oldest_transaction`: the age in seconds of the oldest open transaction
    /// (`xact_start`) of a client session, this probe's left out (0 when none). An old
    /// transaction holds back vacuum on every table. Default limits 5 and 30 minutes.
    OldestTransaction,
    "oldest_transaction",
    Limits::new(300.0, 1800.0)
);

impl OldestTransaction {
    async fn measure(&self) -> Result<HealthReport> {
        let doing = "finding the oldest open transaction in pg_stat_activity";
        let found = oldest_session(&self.target, "xact_start", "true", doing).await?;
        Ok(match found {
            Some(t) => judged(
                Self::NAME,
                self.limits,
                t.age,
                "seconds",
                &format!(
                    "oldest open transaction: {}, open for {:.0} s, now {}; last query: {}",
                    t.who(),
                    t.age,
                    t.state,
                    snippet(&t.query)
                ),
            ),
            None => judged(
                Self::NAME,
                self.limits,
                0.0,
                "seconds",
                "no transaction is open",
            ),
        })
    }
}

check!(
    /// `idle_in_transaction`: how long, in seconds, the longest `idle in transaction`
    /// (or aborted) session has been idle (`state_change`); 0 when none. Such a session
    /// holds its locks and its snapshot while doing nothing. Default limits 5 and 30
    /// minutes.
    IdleInTransaction,
    "idle_in_transaction",
    Limits::new(300.0, 1800.0)
);

impl IdleInTransaction {
    async fn measure(&self) -> Result<HealthReport> {
        let doing = "finding sessions idle in transaction in pg_stat_activity";
        let found = oldest_session(
            &self.target,
            "state_change",
            "state IN ('idle in transaction', 'idle in transaction (aborted)')",
            doing,
        )
        .await?;
        Ok(match found {
            Some(t) => judged(
                Self::NAME,
                self.limits,
                t.age,
                "seconds",
                &format!(
                    "longest {}: {} for {:.0} s; last query: {}",
                    t.state,
                    t.who(),
                    t.age,
                    snippet(&t.query)
                ),
            ),
            None => judged(
                Self::NAME,
                self.limits,
                0.0,
                "seconds",
                "no session is idle in a transaction",
            ),
        })
    }
}

check!(
    /// `blocked_locks`: how many sessions wait for a lock another session holds
    /// (`pg_blocking_pids`); default limits 1 and 10. The reason names the session that
    /// has waited longest and what blocks it.
    BlockedLocks,
    "blocked_locks",
    Limits::new(1.0, 10.0)
);

impl BlockedLocks {
    async fn measure(&self) -> Result<HealthReport> {
        let s = self
            .target
            .stats_session("see which sessions wait for locks")
            .await?;
        let doing = "finding sessions blocked on locks";
        // pg_blocking_pids takes the lock manager's locks: call it only for sessions
        // that do wait on a lock, and once each.
        let rows = s
            .rows(
                "WITH waiting AS (
                     SELECT pid, usename, datname, query_start, query,
                            pg_blocking_pids(pid) AS blockers
                       FROM pg_stat_activity
                      WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()
                 )
                 SELECT count(*) OVER ()::int8,
                        extract(epoch FROM clock_timestamp() - query_start)::float8,
                        pid, coalesce(usename::text, '?'), coalesce(datname::text, '?'),
                        coalesce(left(query, 400), ''), blockers,
                        (SELECT coalesce(b.usename::text, '?') || ', ' || coalesce(b.state, '?')
                           FROM pg_stat_activity b WHERE b.pid = blockers[1])
                   FROM waiting
                  WHERE cardinality(blockers) > 0
                  ORDER BY query_start NULLS LAST
                  LIMIT 1",
                &[],
                doing,
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(judged(
                Self::NAME,
                self.limits,
                0.0,
                "count",
                "no session waits for a lock",
            ));
        };
        let count: i64 = column(row, 0, doing)?;
        let age: Option<f64> = column(row, 1, doing)?;
        let pid: i32 = column(row, 2, doing)?;
        let user: String = column(row, 3, doing)?;
        let database: String = column(row, 4, doing)?;
        let query: String = column(row, 5, doing)?;
        let blockers: Vec<i32> = column(row, 6, doing)?;
        let first: Option<String> = column(row, 7, doing)?;
        let blockers_text = blockers
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let first_text = first
            .map(|f| format!(" (pid {}: {f})", blockers[0]))
            .unwrap_or_default();
        Ok(judged(
            Self::NAME,
            self.limits,
            count as f64,
            "count",
            &format!(
                "{count} session(s) wait for a lock; the longest, pid {pid} (user {user}, \
                 database {database}) for {:.0} s, is blocked by pid {blockers_text}{first_text}: {}",
                age.unwrap_or(0.0).max(0.0),
                snippet(&query)
            ),
        ))
    }
}

check!(
    /// `replication_lag`, in seconds; default limits 1 and 5 minutes.
    ///
    /// On a standby: its WAL receiver must be streaming (a standby cut off from its
    /// primary replays nothing and would otherwise look caught up): if it is not, the
    /// check is unhealthy, with the receiver's status, and the value is −1 (no lag can
    /// be measured). Streaming: 0 when everything received has been replayed — unless
    /// no message has come from the primary for the critical limit or longer
    /// (`last_msg_receipt_time`; a healthy primary answers the receiver's pings every
    /// `wal_receiver_timeout / 2`), which is unhealthy — else how old the last replayed
    /// transaction is (`now() - pg_last_xact_replay_timestamp()`); a standby that is
    /// behind but has replayed nothing yet cannot be measured (an error).
    ///
    /// On a primary: the greatest `replay_lag` among the standbys in
    /// `pg_stat_replication` (0, "primary without standbys", when there are none). A
    /// standby without a `replay_lag` (catching up, or idle) is judged by the WAL it has
    /// not replayed yet: more than [`UNMEASURED_BYTES_LIMIT`] makes the check at least
    /// degraded.
    ///
    /// Needs `pg_monitor` on a standby, and on a primary with standbys.
    ReplicationLag,
    "replication_lag",
    Limits::new(60.0, 300.0)
);

/// How much WAL a standby whose `replay_lag` PostgreSQL does not report (catching
/// up, just connected) may have left to replay before the check is degraded: one WAL
/// segment's worth.
pub const UNMEASURED_BYTES_LIMIT: f64 = 16.0 * 1024.0 * 1024.0;

/// One row of `pg_stat_replication`, as the lag check reads it.
#[derive(Debug, Clone, PartialEq)]
struct StandbyLag {
    name: String,
    addr: String,
    state: String,
    /// `replay_lag` in seconds; NULL while catching up or once idle.
    seconds: Option<f64>,
    /// WAL sent but not replayed yet (`pg_current_wal_lsn() - replay_lsn`).
    bytes: Option<f64>,
}

impl StandbyLag {
    /// `'name' (addr, state)`.
    fn who(&self) -> String {
        format!("'{}' ({}, {})", self.name, self.addr, self.state)
    }

    fn bytes_text(&self) -> String {
        self.bytes.map_or_else(
            || "an unknown amount".to_owned(),
            |b| show_bytes(b.max(0.0)),
        )
    }
}

/// The primary's verdict on its standbys (none: "primary without standbys"): the
/// greatest `replay_lag` judged by `limits`, and at least degraded when a standby
/// without a `replay_lag` has more than [`UNMEASURED_BYTES_LIMIT`] left to replay.
fn judge_standbys(limits: Limits, standbys: &[StandbyLag]) -> HealthReport {
    let name = ReplicationLag::NAME;
    let by_time = standbys
        .iter()
        .filter(|s| s.seconds.is_some())
        .max_by(|a, b| {
            a.seconds
                .unwrap_or(0.0)
                .total_cmp(&b.seconds.unwrap_or(0.0))
        });
    let unmeasured = standbys
        .iter()
        .filter(|s| s.seconds.is_none())
        .max_by(|a, b| a.bytes.unwrap_or(0.0).total_cmp(&b.bytes.unwrap_or(0.0)));
    let Some(any) = by_time.or(unmeasured) else {
        return judged(name, limits, 0.0, "seconds", "primary without standbys");
    };
    let seconds = by_time.and_then(|s| s.seconds).unwrap_or(0.0).max(0.0);
    let mut detail = format!("primary with {} standby(s); ", standbys.len());
    match by_time {
        Some(s) => detail.push_str(&format!(
            "the furthest behind, {}, replays {seconds:.1} s behind ({} of WAL not replayed)",
            s.who(),
            s.bytes_text()
        )),
        None => detail.push_str(&format!(
            "none reports a replay_lag; {} has {} of WAL not replayed",
            any.who(),
            any.bytes_text()
        )),
    }
    let far = unmeasured.filter(|s| s.bytes.is_some_and(|b| b > UNMEASURED_BYTES_LIMIT));
    if let (Some(s), Some(_)) = (far, by_time) {
        detail.push_str(&format!(
            "; {} reports no replay_lag and has {} of WAL not replayed",
            s.who(),
            s.bytes_text()
        ));
    }
    let mut report = judged(name, limits, seconds, "seconds", &detail);
    if let Some(s) = far
        && report.status == HealthStatus::Healthy
    {
        report.status = HealthStatus::Degraded;
        report.reason = format!(
            "{detail}; standby {} is more than {} behind with no replay_lag to judge by \
             (catching up?): at or past the warning limit",
            s.who(),
            show_bytes(UNMEASURED_BYTES_LIMIT)
        );
    }
    report
}

impl ReplicationLag {
    async fn measure(&self) -> Result<HealthReport> {
        let s = self.target.session().await?;
        let doing = "reading the replication state";
        let standby: bool = column(
            &s.row("SELECT pg_is_in_recovery()", &[], doing).await?,
            0,
            doing,
        )?;
        if standby {
            self.standby(&s).await
        } else {
            self.primary(&s).await
        }
    }

    async fn standby(&self, s: &Session) -> Result<HealthReport> {
        s.require_stats("see the state of the standby's WAL receiver")
            .await?;
        let doing = "reading the standby's replication state";
        let row = s
            .row(
                "SELECT coalesce(pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), false),
                        extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
                        pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
                        r.status,
                        extract(epoch FROM clock_timestamp() - r.last_msg_receipt_time)::float8,
                        r.sender_host
                   FROM (SELECT 1) AS one
                   LEFT JOIN pg_stat_wal_receiver AS r ON true",
                &[],
                doing,
            )
            .await?;
        let caught_up: bool = column(&row, 0, doing)?;
        let behind: Option<f64> = column(&row, 1, doing)?;
        let received: Option<String> = column(&row, 2, doing)?;
        let replayed: Option<String> = column(&row, 3, doing)?;
        let status: Option<String> = column(&row, 4, doing)?;
        let silence: Option<f64> = column(&row, 5, doing)?;
        let sender: Option<String> = column(&row, 6, doing)?;
        let received = received.unwrap_or_else(|| "none".to_owned());
        let replayed = replayed.unwrap_or_else(|| "none".to_owned());
        if status.as_deref() != Some("streaming") {
            let status = status.unwrap_or_else(|| "no WAL receiver running".to_owned());
            return Ok(HealthReport::new(
                Self::NAME,
                HealthStatus::Unhealthy,
                -1.0,
                "seconds",
                format!(
                    "standby: the WAL receiver is not streaming (status {status}), so the \
                     standby receives nothing from its primary and its lag cannot be \
                     measured (received WAL {received}, replayed {replayed}); check \
                     primary_conninfo, the primary and the network"
                ),
            )
            .with_limits(self.limits));
        }
        let sender = sender.unwrap_or_else(|| "the primary".to_owned());
        if caught_up {
            let silence = silence.unwrap_or(0.0).max(0.0);
            // Caught up with what it received, but perhaps receiving nothing: a
            // primary that answers no pings is as bad as a lag past the limit.
            if !self.limits.lower_is_worse() && silence >= self.limits.critical {
                return Ok(HealthReport::new(
                    Self::NAME,
                    HealthStatus::Unhealthy,
                    silence,
                    "seconds",
                    format!(
                        "standby: no message from the primary ({sender}) for {silence:.0} s, \
                         though the WAL receiver says streaming; replayed all it received \
                         (WAL {replayed})"
                    ),
                )
                .with_limits(self.limits));
            }
            return Ok(judged(
                Self::NAME,
                self.limits,
                0.0,
                "seconds",
                &format!(
                    "standby streaming from {sender} has replayed all it received (WAL \
                     {replayed}); last message from the primary {silence:.1} s ago"
                ),
            ));
        }
        let Some(behind) = behind else {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "{doing}: the standby has replayed no transaction since it started \
                     (received {received}, replayed {replayed}), so its lag cannot be \
                     measured yet"
                ),
            ));
        };
        Ok(judged(
            Self::NAME,
            self.limits,
            behind.max(0.0),
            "seconds",
            &format!(
                "standby streaming from {sender}: last replayed transaction is {:.1} s old \
                 (received WAL {received}, replayed {replayed})",
                behind.max(0.0)
            ),
        ))
    }

    async fn primary(&self, s: &Session) -> Result<HealthReport> {
        let doing = "reading pg_stat_replication";
        let rows = s
            .rows(
                "SELECT coalesce(application_name, ''), coalesce(client_addr::text, 'local'),
                        state, extract(epoch FROM replay_lag)::float8,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8
                   FROM pg_stat_replication",
                &[],
                doing,
            )
            .await?;
        let mut standbys = Vec::with_capacity(rows.len());
        for row in &rows {
            let state: Option<String> = column(row, 2, doing)?;
            // Without pg_read_all_stats every column but pid is NULL: a lag of 0 would lie.
            let Some(state) = state else {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "{doing}: user {} may not see the standbys' state; grant it \
                         pg_monitor: GRANT pg_monitor TO {}",
                        self.target.config.user, self.target.config.user
                    ),
                ));
            };
            standbys.push(StandbyLag {
                name: column(row, 0, doing)?,
                addr: column(row, 1, doing)?,
                state,
                seconds: column(row, 3, doing)?,
                bytes: column(row, 4, doing)?,
            });
        }
        Ok(judge_standbys(self.limits, &standbys))
    }
}

check!(
    /// `replication_slots`: bytes of WAL the primary keeps for inactive replication
    /// slots (`pg_current_wal_lsn() - restart_lsn`, the worst slot: they share the
    /// same WAL); 0 on a standby. A forgotten slot fills the disk. Default limits 1 GiB
    /// and 10 GiB; the reason names the worst slot.
    ReplicationSlots,
    "replication_slots",
    Limits::new(1024.0 * 1024.0 * 1024.0, 10.0 * 1024.0 * 1024.0 * 1024.0)
);

impl ReplicationSlots {
    async fn measure(&self) -> Result<HealthReport> {
        let s = self.target.session().await?;
        let doing = "reading pg_replication_slots";
        let standby: bool = column(
            &s.row("SELECT pg_is_in_recovery()", &[], doing).await?,
            0,
            doing,
        )?;
        if standby {
            return Ok(judged(
                Self::NAME,
                self.limits,
                0.0,
                "bytes",
                "standby: WAL kept by slots is checked on the primary",
            ));
        }
        let rows = s
            .rows(
                "SELECT slot_name::text, slot_type::text,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8,
                        count(*) OVER ()::int8
                   FROM pg_replication_slots
                  WHERE NOT active AND restart_lsn IS NOT NULL
                  ORDER BY restart_lsn
                  LIMIT 1",
                &[],
                doing,
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(judged(
                Self::NAME,
                self.limits,
                0.0,
                "bytes",
                "no inactive replication slot keeps WAL",
            ));
        };
        let slot: String = column(row, 0, doing)?;
        let kind: String = column(row, 1, doing)?;
        let kept: f64 = column::<f64>(row, 2, doing)?.max(0.0);
        let count: i64 = column(row, 3, doing)?;
        Ok(judged(
            Self::NAME,
            self.limits,
            kept,
            "bytes",
            &format!(
                "{count} inactive slot(s); the worst, {kind} slot '{slot}', keeps {} of WAL \
                 (drop it with pg_drop_replication_slot if its consumer is gone)",
                show_bytes(kept)
            ),
        ))
    }
}

/// Where transaction IDs wrap around: 2^31.
const WRAPAROUND: f64 = 2_147_483_648.0;

check!(
    /// `xid_age`: the greatest `age(datfrozenxid)` over all databases, in transactions.
    /// At 2^31 the server would wrap around, and it stops accepting writes well before;
    /// default limits 1.0 and 1.5 billion.
    XidAge,
    "xid_age",
    Limits::new(1_000_000_000.0, 1_500_000_000.0)
);

impl XidAge {
    async fn measure(&self) -> Result<HealthReport> {
        let s = self.target.session().await?;
        let doing = "reading age(datfrozenxid) from pg_database";
        let row = s
            .row(
                "SELECT datname::text, age(datfrozenxid)::int8
                   FROM pg_database ORDER BY 2 DESC LIMIT 1",
                &[],
                doing,
            )
            .await?;
        let database: String = column(&row, 0, doing)?;
        let age: i64 = column(&row, 1, doing)?;
        let age = age as f64;
        Ok(judged(
            Self::NAME,
            self.limits,
            age,
            "count",
            &format!(
                "database {database} has the oldest unfrozen transaction IDs: {age:.0} \
                 transactions old, {:.2} % of the way to wraparound",
                age * 100.0 / WRAPAROUND
            ),
        ))
    }
}

check!(
    /// `wal_archiver`: the server's side of the WAL archive. The value is the number of
    /// segments waiting to be archived (`.ready` in `pg_wal/archive_status`; default
    /// limits 10 and 100). Archiving that fails (a failure newer than the last
    /// success, in `pg_stat_archiver`) is unhealthy whatever the count, with the last
    /// failed segment named. With `archive_mode` off it is healthy and says so.
    WalArchiver,
    "wal_archiver",
    Limits::new(10.0, 100.0)
);

impl WalArchiver {
    async fn measure(&self) -> Result<HealthReport> {
        let s = self.target.session().await?;
        let doing = "reading pg_stat_archiver";
        let row = s
            .row(
                "SELECT current_setting('archive_mode'),
                        (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')::int8,
                        coalesce(last_failed_wal, ''),
                        coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false),
                        coalesce(to_char(last_failed_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), ''),
                        coalesce(last_archived_wal, ''),
                        failed_count
                   FROM pg_stat_archiver",
                &[],
                doing,
            )
            .await?;
        let mode: String = column(&row, 0, doing)?;
        let waiting = column::<i64>(&row, 1, doing)? as f64;
        let failed_wal: String = column(&row, 2, doing)?;
        let failing: bool = column(&row, 3, doing)?;
        let failed_at: String = column(&row, 4, doing)?;
        let last: String = column(&row, 5, doing)?;
        let failures: i64 = column(&row, 6, doing)?;
        if mode == "off" {
            return Ok(judged(
                Self::NAME,
                self.limits,
                0.0,
                "count",
                "archive_mode is off: this server keeps no WAL archive (no point-in-time recovery)",
            ));
        }
        if failing {
            return Ok(HealthReport::new(
                Self::NAME,
                HealthStatus::Unhealthy,
                waiting,
                "count",
                format!(
                    "archiving fails: the archive command last failed at {failed_at} UTC on {failed_wal}                      ({failures} failures since the statistics were reset), and {waiting:.0} segments                      wait; the server keeps them until archiving works again, and the disk fills"
                ),
            )
            .with_limits(self.limits));
        }
        Ok(judged(
            Self::NAME,
            self.limits,
            waiting,
            "count",
            &format!(
                "{waiting:.0} segments wait to be archived; the last archived is {}",
                if last.is_empty() {
                    "none yet"
                } else {
                    last.as_str()
                }
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_short_single_line_and_hide_passwords() {
        assert_eq!(
            snippet("SELECT\n  pg_sleep(30)\t;"),
            "SELECT pg_sleep(30) ;"
        );
        assert_eq!(
            snippet("ALTER ROLE app PASSWORD 'hunter2'"),
            "ALTER ROLE app PASSWORD ******"
        );
        let long = format!("SELECT '{}'", "é".repeat(200));
        let s = snippet(&long);
        assert_eq!(s.chars().count(), 81);
        assert!(s.ends_with('…'));
    }

    fn standby(seconds: Option<f64>, bytes: Option<f64>, state: &str) -> StandbyLag {
        StandbyLag {
            name: "replica".to_owned(),
            addr: "10.0.0.2".to_owned(),
            state: state.to_owned(),
            seconds,
            bytes,
        }
    }

    #[test]
    fn a_standby_without_replay_lag_is_judged_by_its_bytes() {
        let limits = ReplicationLag::DEFAULT_LIMITS;
        let r = judge_standbys(limits, &[]);
        assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
        assert!(
            r.reason.contains("primary without standbys"),
            "{}",
            r.reason
        );

        // Idle and caught up: no replay_lag, nothing to replay.
        let r = judge_standbys(limits, &[standby(None, Some(0.0), "streaming")]);
        assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
        assert!(
            r.reason.contains("0 bytes of WAL not replayed"),
            "{}",
            r.reason
        );

        // Catching up, 100 MiB behind, no time measured: never "0 s, OK".
        let r = judge_standbys(
            limits,
            &[standby(None, Some(100.0 * 1024.0 * 1024.0), "catchup")],
        );
        assert_eq!(r.status, HealthStatus::Degraded, "{r:?}");
        assert!(r.reason.contains("100.0 MiB"), "{}", r.reason);
        assert!(r.reason.contains("catchup"), "{}", r.reason);

        // Another standby with a small measured lag does not hide it.
        let r = judge_standbys(
            limits,
            &[
                standby(Some(2.0), Some(1024.0), "streaming"),
                standby(None, Some(32.0 * 1024.0 * 1024.0), "catchup"),
            ],
        );
        assert_eq!((r.status, r.value), (HealthStatus::Degraded, 2.0), "{r:?}");
        assert!(r.reason.contains("32.0 MiB"), "{}", r.reason);

        // A measured lag past the critical limit stays unhealthy.
        let r = judge_standbys(
            limits,
            &[
                standby(Some(400.0), Some(1024.0), "streaming"),
                standby(None, Some(32.0 * 1024.0 * 1024.0), "catchup"),
            ],
        );
        assert_eq!(
            (r.status, r.value),
            (HealthStatus::Unhealthy, 400.0),
            "{r:?}"
        );
    }

    #[test]
    fn bytes_read_as_binary_units() {
        assert_eq!(show_bytes(512.0), "512 bytes");
        assert_eq!(show_bytes(1536.0), "1.5 KiB");
        assert_eq!(show_bytes(10.0 * 1024.0 * 1024.0 * 1024.0), "10.0 GiB");
    }

    #[test]
    fn settings_come_from_the_budget_and_debug_hides_the_password() {
        let engine =
            PostgresEngine::new("postgres://app:s3cret-pw@db.example/shop").expect("valid URL");
        let mut budget = ProbeBudget::default();
        budget.statement = Duration::from_millis(1500);
        budget.lock = Duration::ZERO;
        let check = LongestQuery::new(&engine, LongestQuery::DEFAULT_LIMITS, budget);
        assert_eq!(
            check.target.settings(),
            "SET statement_timeout = 1500; SET lock_timeout = 1;"
        );
        assert_eq!(check.target.config.application_name, APPLICATION_NAME);
        assert_eq!(check.target.config.connect_timeout, budget.connect);
        let shown = format!("{check:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("app:******@db.example"), "{shown}");
    }
}
