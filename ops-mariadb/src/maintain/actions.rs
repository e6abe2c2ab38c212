//! The maintenance actions on MariaDB: `ANALYZE`, `OPTIMIZE`, `CHECK` and `REPAIR
//! TABLE`, each table one step, every result row of the server read and judged.
//! Vacuum and reindex are PostgreSQL's and refused with what to use instead.
//!
//! Locks: these statements take the table's metadata lock (OPTIMIZE and REPAIR an
//! exclusive one, at least briefly). Each try sets `lock_wait_timeout` from
//! [`LockSteps::tries`], pg_repack style, so a step never queues in front of the
//! application's queries for longer than one try. MariaDB counts that timeout in
//! whole seconds, so every try lasts at least 1 s and the steps below 1 s of the
//! default schedule become 1 s (fewer tries fit in the total).
//!
//! Progress (`MaintainOptions::progress`) comes from MariaDB's processlist columns
//! `STAGE`, `MAX_STAGE` and `PROGRESS`, read from a second connection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::Conn;
use ops_core::maintain::{
    Action, LockSteps, MaintainOptions, MaintainReport, MaintainStep, ProgressFn, StepOutcome,
    StepProgress,
};
use ops_core::{Error, Result};

use super::sessions::table_locks;
use super::{Table, close, code, connect, database, error_code, resolve_tables};
use crate::MariaDbEngine;
use crate::conn::{self, ConnConfig, Session};
use crate::format::quote_str;

/// What InnoDB answers `REPAIR TABLE` with, in operator's words.
const INNODB_REPAIR: &str = "InnoDB does not support REPAIR TABLE; restore from a backup or \
                             rebuild with OPTIMIZE/ALTER TABLE ... FORCE";

/// Runs (or plans) `action`; see `Maintenance::maintain`.
pub(crate) async fn maintain(
    engine: &MariaDbEngine,
    action: Action,
    options: &MaintainOptions,
) -> Result<MaintainReport> {
    match action {
        Action::Vacuum { .. } => {
            return Err(Error::invalid(
                "vacuum is a PostgreSQL action: MariaDB has no dead rows to vacuum; use \
                 `optimize` (OPTIMIZE TABLE rebuilds the table and gives its free space back) \
                 and `analyze` for the statistics",
            ));
        }
        Action::Reindex { .. } => {
            return Err(Error::invalid(
                "MariaDB has no REINDEX: indexes are rebuilt with their table; use `optimize` \
                 (OPTIMIZE TABLE) or ALTER TABLE ... FORCE",
            ));
        }
        _ => {}
    }
    let db = database(engine).to_owned();
    let mut c = connect(engine, &db).await?;
    let result = run(&mut c, Arc::clone(&engine.config), &db, action, options).await;
    close(c).await;
    result
}

async fn run(
    c: &mut Conn,
    config: Arc<ConnConfig>,
    db: &str,
    action: Action,
    options: &MaintainOptions,
) -> Result<MaintainReport> {
    let tables = resolve_tables(c, db, &options.tables).await?;
    // MySQL 8 caches the sizes in information_schema (1 day by default); the figures
    // after a rebuild must be fresh. MariaDB has no such cache.
    if let Err(e) = conn::exec(c, "SET SESSION information_schema_stats_expiry = 0").await
        && error_code(&e) != Some(code::UNKNOWN_SYSTEM_VARIABLE)
    {
        return Err(e);
    }
    let tries = second_tries(&options.lock);
    let mut steps = Vec::with_capacity(tables.len());
    for t in &tables {
        let verb = match action {
            Action::Analyze => "ANALYZE",
            Action::Optimize => "OPTIMIZE",
            Action::Check => "CHECK",
            Action::Repair => "REPAIR",
            // Refused above.
            other => return Err(Error::invalid(format!("{other} is not a MariaDB action"))),
        };
        let sql = format!("{verb} TABLE {}", t.sql());
        if action == Action::Repair && t.is_innodb() {
            steps.push(
                MaintainStep::new(t.label(), sql, StepOutcome::NotSupported)
                    .with_message(INNODB_REPAIR),
            );
            continue;
        }
        if options.dry_run {
            steps.push(MaintainStep::new(t.label(), sql, StepOutcome::Planned));
            continue;
        }
        let started = Instant::now();
        let poller = options.progress.clone().map(|report| {
            tokio::spawn(poll_progress(
                Arc::clone(&config),
                c.id(),
                t.label(),
                report,
            ))
        });
        let mut step = match action {
            Action::Optimize => optimize(c, t, sql, &tries).await,
            _ => admin_step(c, t, action, sql, &tries).await,
        };
        if let Some(p) = poller {
            p.abort();
        }
        step.seconds = started.elapsed().as_secs_f64();
        steps.push(step);
    }
    Ok(MaintainReport {
        action,
        dry_run: options.dry_run,
        steps,
        dropped_leftovers: Vec::new(),
    })
}

/// Reports the progress of the statement running on connection `id` about once a
/// second, from MariaDB's `information_schema.PROCESSLIST` (`STAGE`, `MAX_STAGE`,
/// `PROGRESS` in percent of the stage), on a connection of its own, until aborted.
/// A server without these columns (MySQL) or a failed poll reports nothing.
async fn poll_progress(config: Arc<ConnConfig>, id: u32, object: String, report: ProgressFn) {
    let Ok(mut c) = conn::connect(&config, None, Session::Catalog).await else {
        return;
    };
    let sql = format!(
        "SELECT STAGE, MAX_STAGE, PROGRESS, STATE FROM information_schema.PROCESSLIST \
         WHERE ID = {id}"
    );
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let Ok(rows) = conn::query_rows(&mut c, &sql).await else {
            return;
        };
        let Some(r) = rows.first() else {
            return;
        };
        let stage = conn::number(r, 0).unwrap_or(0);
        let stages = conn::number(r, 1).unwrap_or(0);
        let percent = super::float(r, 2).ok().flatten();
        let state = conn::opt_text(r, 3).ok().flatten().unwrap_or_default();
        let phase = if stages > 0 {
            format!("stage {stage} of {stages}: {state}")
        } else {
            state
        };
        let done = percent.filter(|_| stages > 0).map(|p| p.round() as u64);
        report(&StepProgress::new(
            object.clone(),
            phase,
            done,
            done.map(|_| 100),
        ));
    }
}

/// How often a running step's progress is read.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The lock tries of `steps` in whole seconds (MariaDB's `lock_wait_timeout` unit):
/// each try at least 1 s, as many as fit in the total (always one).
pub(crate) fn second_tries(steps: &LockSteps) -> Vec<(u64, Duration)> {
    let mut out: Vec<(u64, Duration)> = Vec::new();
    let mut spent = Duration::ZERO;
    for (timeout, pause) in steps.tries() {
        let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
        let d = Duration::from_secs(secs);
        if !out.is_empty() && spent + d > steps.total {
            break;
        }
        spent += d + pause;
        out.push((secs, pause));
    }
    if out.is_empty() {
        out.push((1, Duration::ZERO));
    }
    if let Some(last) = out.last_mut() {
        last.1 = Duration::ZERO;
    }
    out
}

/// The result rows of an admin statement (`Table, Op, Msg_type, Msg_text`).
#[derive(Debug, Default)]
struct AdminResult {
    /// `(msg_type lower case, msg_text)`.
    rows: Vec<(String, String)>,
}

impl AdminResult {
    fn of(&self, kind: &str) -> impl Iterator<Item = &str> {
        self.rows
            .iter()
            .filter(move |(k, _)| k == kind)
            .map(|(_, t)| t.as_str())
    }
    fn errors(&self) -> Vec<&str> {
        self.of("error").collect()
    }
    /// Every `status` row says the table is fine.
    fn status_ok(&self) -> bool {
        self.of("status").all(|s| {
            s.eq_ignore_ascii_case("OK") || s.eq_ignore_ascii_case("Table is already up to date")
        })
    }
    fn any(&self, needle: &str) -> bool {
        self.rows.iter().any(|(_, t)| t.contains(needle))
    }
    fn lock_timeout(&self) -> bool {
        self.any("Lock wait timeout exceeded")
    }
    fn text(&self) -> String {
        self.rows
            .iter()
            .map(|(k, t)| format!("{k}: {t}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How running an admin statement through the lock tries ended.
enum Admin {
    /// It ran; the server's rows.
    Ran(AdminResult, u32),
    /// Every try timed out waiting for the lock.
    LockTimeout(u32),
    /// An SQL error.
    Failed(Error, u32),
}

/// Runs `sql` with each try's `lock_wait_timeout` until it gets its lock.
async fn with_lock_tries(c: &mut Conn, sql: &str, tries: &[(u64, Duration)]) -> Admin {
    let mut n = 0u32;
    for (secs, pause) in tries {
        n += 1;
        let set =
            format!("SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}");
        if let Err(e) = conn::exec(c, &set).await {
            return Admin::Failed(e.during("setting lock_wait_timeout"), n);
        }
        match conn::query_rows(c, sql).await {
            Ok(rows) => {
                let mut result = AdminResult::default();
                for r in &rows {
                    let kind = conn::opt_text(r, 2).ok().flatten().unwrap_or_default();
                    let text = conn::opt_text(r, 3).ok().flatten().unwrap_or_default();
                    result.rows.push((kind.to_ascii_lowercase(), text));
                }
                if !result.lock_timeout() {
                    return Admin::Ran(result, n);
                }
            }
            Err(e) if error_code(&e) == Some(code::LOCK_WAIT_TIMEOUT) => {}
            Err(e) => return Admin::Failed(e, n),
        }
        tokio::time::sleep(*pause).await;
    }
    Admin::LockTimeout(n)
}

/// A step that gave up waiting for the lock, naming who holds it.
async fn lock_timeout_step(c: &mut Conn, t: &Table, sql: String, tries: u32) -> MaintainStep {
    let who = blockers(c, t).await;
    let mut step =
        MaintainStep::new(t.label(), sql, StepOutcome::LockTimeout).with_message(format!(
            "gave up after {tries} {} waiting for the metadata lock on {}: {who}",
            if tries == 1 { "try" } else { "tries" },
            t.label()
        ));
    step.lock_tries = tries;
    step
}

/// Who holds (or may hold) the metadata lock on `t`: from `METADATA_LOCK_INFO` when
/// the plugin is installed, else the sessions with an open transaction or a statement
/// naming the table.
async fn blockers(c: &mut Conn, t: &Table) -> String {
    match table_locks(c).await {
        Ok(locks) => {
            let ids: BTreeSet<i64> = locks
                .iter()
                .filter(|l| l.db == t.db && l.table == t.name)
                .map(|l| l.thread)
                .collect();
            let modes: Vec<String> = locks
                .iter()
                .filter(|l| l.db == t.db && l.table == t.name)
                .map(|l| format!("{} ({})", l.thread, l.mode))
                .collect();
            if ids.is_empty() {
                return "no session holds it any more (try again)".to_owned();
            }
            format!(
                "held by {} [locks: {}]",
                describe(c, ids).await,
                modes.join(", ")
            )
        }
        Err(e) => {
            let unknown_plugin = error_code(&e) == Some(code::UNKNOWN_TABLE);
            let sql = format!(
                "SELECT p.ID FROM information_schema.PROCESSLIST p \
                 LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID \
                 WHERE p.ID <> CONNECTION_ID() AND (t.trx_id IS NOT NULL \
                 OR (p.INFO LIKE CONCAT('%', {}, '%') AND p.COMMAND <> 'Sleep'))",
                quote_str(&t.name)
            );
            let ids: BTreeSet<i64> = match conn::query_rows(c, &sql).await {
                Ok(rows) => rows
                    .iter()
                    .filter_map(|r| conn::number(r, 0).ok().map(|n| n as i64))
                    .collect(),
                Err(e) => return format!("the holder is unknown ({e})"),
            };
            let how = if unknown_plugin {
                "install the metadata_lock_info plugin (INSTALL SONAME 'metadata_lock_info') \
                 to see the holder for sure"
                    .to_owned()
            } else {
                format!("METADATA_LOCK_INFO could not be read: {e}")
            };
            if ids.is_empty() {
                return format!("the holder is unknown ({how})");
            }
            format!("probably held by one of {} ({how})", describe(c, ids).await)
        }
    }
}

/// `connection 12 (user 'app', idle in transaction 30 s)` for each of `ids`.
async fn describe(c: &mut Conn, ids: BTreeSet<i64>) -> String {
    let list = ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT p.ID, p.USER, p.COMMAND, p.TIME, LEFT(p.INFO, 120), t.trx_id IS NOT NULL \
         FROM information_schema.PROCESSLIST p \
         LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID \
         WHERE p.ID IN ({list}) ORDER BY p.ID"
    );
    let Ok(rows) = conn::query_rows(c, &sql).await else {
        return format!("connection(s) {list}");
    };
    let mut out = Vec::new();
    for r in &rows {
        let id = conn::number(r, 0).unwrap_or(0);
        let user = conn::opt_text(r, 1).ok().flatten().unwrap_or_default();
        let command = conn::opt_text(r, 2).ok().flatten().unwrap_or_default();
        let time = conn::number(r, 3).unwrap_or(0);
        let info = conn::opt_text(r, 4).ok().flatten().unwrap_or_default();
        let in_trx = conn::number(r, 5).unwrap_or(0) == 1;
        let doing = match (command.as_str(), in_trx) {
            ("Sleep", true) => format!("idle in transaction for {time} s"),
            ("Sleep", false) => format!("idle for {time} s"),
            _ => format!("running for {time} s: {info}"),
        };
        out.push(format!("connection {id} (user '{user}', {doing})"));
    }
    if out.is_empty() {
        format!("connection(s) {list} (gone since)")
    } else {
        out.join(", ")
    }
}

/// The table's size on disk: data, indexes and free space.
async fn table_size(c: &mut Conn, t: &Table) -> Option<u64> {
    let sql = format!(
        "SELECT COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0) + COALESCE(DATA_FREE, 0) \
         FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
        quote_str(&t.db),
        quote_str(&t.name)
    );
    let rows = conn::query_rows(c, &sql).await.ok()?;
    rows.first().and_then(|r| conn::number(r, 0).ok())
}

async fn optimize(c: &mut Conn, t: &Table, sql: String, tries: &[(u64, Duration)]) -> MaintainStep {
    let before = table_size(c, t).await;
    let mut step = match with_lock_tries(c, &sql, tries).await {
        Admin::LockTimeout(n) => return lock_timeout_step(c, t, sql, n).await,
        Admin::Failed(e, n) => {
            let mut s =
                MaintainStep::new(t.label(), sql, StepOutcome::Failed).with_message(e.to_string());
            s.lock_tries = n;
            return s;
        }
        Admin::Ran(result, n) => {
            let rebuilt = result.any("doing recreate");
            let errors = result.errors();
            let (outcome, message) = if !errors.is_empty() || !result.status_ok() {
                (StepOutcome::Failed, result.text())
            } else if rebuilt {
                (
                    StepOutcome::Done,
                    format!(
                        "rebuilt: {} has no in-place optimize, so the server recreated the \
                         table and analyzed it ({})",
                        t.engine.as_deref().unwrap_or("the engine"),
                        result.text()
                    ),
                )
            } else {
                (StepOutcome::Done, result.text())
            };
            let mut s = MaintainStep::new(t.label(), sql, outcome).with_message(message);
            s.lock_tries = n;
            s
        }
    };
    step.size_before = before;
    // OPTIMIZE on InnoDB ends with an ANALYZE, so information_schema.TABLES is current
    // (and on MySQL information_schema_stats_expiry = 0 bypasses the cache).
    step.size_after = table_size(c, t).await;
    step
}

async fn admin_step(
    c: &mut Conn,
    t: &Table,
    action: Action,
    sql: String,
    tries: &[(u64, Duration)],
) -> MaintainStep {
    match with_lock_tries(c, &sql, tries).await {
        Admin::LockTimeout(n) => lock_timeout_step(c, t, sql, n).await,
        Admin::Failed(e, n) => {
            let mut s =
                MaintainStep::new(t.label(), sql, StepOutcome::Failed).with_message(e.to_string());
            s.lock_tries = n;
            s
        }
        Admin::Ran(result, n) => {
            let errors = result.errors();
            let outcome = if action == Action::Repair
                && (result.any("doesn't support repair") || result.any("does not support repair"))
            {
                StepOutcome::NotSupported
            } else if !errors.is_empty() || !result.status_ok() {
                StepOutcome::Failed
            } else {
                StepOutcome::Done
            };
            let message = if outcome == StepOutcome::Failed && action == Action::Check {
                format!("damage found: {}", result.text())
            } else {
                result.text()
            };
            let mut s = MaintainStep::new(t.label(), sql, outcome).with_message(message);
            s.lock_tries = n;
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_tries_are_whole_seconds_within_the_total() {
        let tries = second_tries(&LockSteps::default().with_total(Duration::from_secs(10)));
        assert!(tries.iter().all(|(s, _)| *s == 1), "{tries:?}");
        let sum: Duration = tries
            .iter()
            .map(|(s, p)| Duration::from_secs(*s) + *p)
            .sum();
        assert!(sum <= Duration::from_secs(10), "{sum:?}");
        assert!(tries.len() >= 5, "{tries:?}");
        assert_eq!(tries.last().map(|t| t.1), Some(Duration::ZERO));
        let one = second_tries(&LockSteps::default().with_total(Duration::ZERO));
        assert_eq!(one, vec![(1, Duration::ZERO)]);
        let long = second_tries(
            &LockSteps::default()
                .with_max_step(Duration::from_secs(4))
                .with_total(Duration::from_secs(30)),
        );
        assert!(long.iter().any(|(s, _)| *s == 4), "{long:?}");
    }

    #[test]
    fn admin_results_are_judged_row_by_row() {
        let r = AdminResult {
            rows: vec![
                ("warning".into(), "Table is marked as crashed".into()),
                (
                    "error".into(),
                    "Size of datafile is: 100 Should be: 200".into(),
                ),
                ("error".into(), "Corrupt".into()),
            ],
        };
        assert_eq!(r.errors().len(), 2);
        assert!(r.text().contains("Should be"));
        let ok = AdminResult {
            rows: vec![("status".into(), "OK".into())],
        };
        assert!(ok.status_ok() && ok.errors().is_empty());
    }
}
