//! The maintenance actions on MariaDB: `ANALYZE`, `OPTIMIZE`, `CHECK` and `REPAIR
//! TABLE`, each table one step, every result row of the server read and judged.
//! Vacuum and reindex are PostgreSQL's and refused with what to use instead.
//!
//! Locks: these statements take the table's metadata lock (OPTIMIZE and REPAIR an
//! exclusive one, at least briefly). Each try sets `lock_wait_timeout` from
//! [`LockSteps::tries`], pg_repack style, so a step never queues in front of the
//! application's queries for longer than one try, and no try starts once the
//! step's total has passed. MariaDB counts that timeout in whole seconds, so every
//! try lasts at least 1 s and the steps below 1 s of the default schedule become 1 s
//! (fewer tries fit in the total).
//!
//! Only a try that gave up on its *first* lock is tried again: that costs nothing.
//! OPTIMIZE on InnoDB is an online `ALTER TABLE ... FORCE`: it takes the exclusive
//! lock briefly, rebuilds the whole table, then needs the exclusive lock again to
//! put the copy in place. A try that timed out there has done (and lost) the whole
//! rebuild, so it is not run again by itself; the step says so, and whether the
//! failed rebuild left an intermediate `#sql-*` table behind.
//!
//! What the statement's connection is doing (waiting for a lock, altering the table)
//! is read from a second connection: MariaDB's processlist columns `STATE`, `STAGE`,
//! `MAX_STAGE` and `PROGRESS`. It feeds `MaintainOptions::progress` and tells a try
//! that never got its first lock from one that worked.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mysql_async::Conn;
use ops_core::maintain::{
    Action, LockSteps, MaintainOptions, MaintainReport, MaintainStep, ProgressFn, StepOutcome,
    StepProgress,
};
use ops_core::{Error, Result};
use tokio::task::JoinHandle;

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
    let watch = (!options.dry_run).then(|| Watch::start(config, c.id(), options.progress.clone()));
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
        let Some(watch) = &watch else {
            steps.push(MaintainStep::new(t.label(), sql, StepOutcome::Planned));
            continue;
        };
        let started = Instant::now();
        watch.begin(t.label());
        let mut step = match action {
            Action::Optimize => optimize(c, t, sql, &options.lock, watch).await,
            _ => admin_step(c, t, action, sql, &options.lock, watch).await,
        };
        watch.end();
        step.seconds = started.elapsed().as_secs_f64();
        steps.push(step);
    }
    if let Some(watch) = watch {
        watch.stop();
    }
    Ok(MaintainReport {
        action,
        dry_run: options.dry_run,
        steps,
        dropped_leftovers: Vec::new(),
    })
}

/// How often the watching connection reads the step's state.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// How often a running step's progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A try that took longer than its lock timeout by more than this got past its first
/// lock and worked, whatever the watcher saw (it may have missed a short state).
const WORK_MARGIN: Duration = Duration::from_secs(1);

/// What the watching connection saw of the running step.
#[derive(Default)]
struct Watched {
    /// The step's object while one runs.
    object: Option<String>,
    /// Each state of the step's connection when first seen (repeats merged).
    states: Vec<(Instant, String)>,
}

/// A second connection that reads what the step's connection is doing about every
/// [`WATCH_EVERY`] from `information_schema.PROCESSLIST`, and reports progress
/// about every [`PROGRESS_EVERY`]. A server without the progress columns (MySQL) or
/// a failed read only leaves the states unseen: the tries then judge by time.
struct Watch {
    shared: Arc<Mutex<Watched>>,
    task: JoinHandle<()>,
}

impl Watch {
    fn start(config: Arc<ConnConfig>, id: u32, progress: Option<ProgressFn>) -> Self {
        let shared = Arc::new(Mutex::new(Watched::default()));
        let task = tokio::spawn(watch(config, id, Arc::clone(&shared), progress));
        Self { shared, task }
    }

    fn lock(&self) -> MutexGuard<'_, Watched> {
        // The watcher holds the lock only to copy or push a state: a panic there
        // leaves nothing half-written.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self, object: String) {
        let mut w = self.lock();
        w.object = Some(object);
        w.states.clear();
    }

    fn end(&self) {
        self.lock().object = None;
    }

    /// The states seen since `since` that show the statement working (past its first
    /// lock): every state but the ones around opening the table and waiting for it.
    fn work_since(&self, since: Instant) -> Vec<String> {
        self.lock()
            .states
            .iter()
            .filter(|(at, s)| *at >= since && is_work_state(s))
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Whether a processlist state of an admin statement means it got past its first
/// metadata lock and is doing the work (MariaDB stage names).
fn is_work_state(state: &str) -> bool {
    let s = state.to_ascii_lowercase();
    s.contains("alter table")
        || s == "altering table"
        || s.contains("tmp table")
        || s.contains("rename result table")
        || s.starts_with("repair")
        || s.contains("enabling keys")
        || s.starts_with("analyzing")
        || s.starts_with("optimizing")
        || s == "checking table"
}

async fn watch(
    config: Arc<ConnConfig>,
    id: u32,
    shared: Arc<Mutex<Watched>>,
    progress: Option<ProgressFn>,
) {
    let Ok(mut c) = conn::connect(&config, None, Session::Catalog).await else {
        return;
    };
    let sql = format!(
        "SELECT STAGE, MAX_STAGE, PROGRESS, STATE FROM information_schema.PROCESSLIST \
         WHERE ID = {id}"
    );
    let mut reported: Option<(String, Instant)> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let object = {
            let w = shared.lock().unwrap_or_else(|p| p.into_inner());
            w.object.clone()
        };
        let Some(object) = object else {
            reported = None;
            continue;
        };
        let Ok(rows) = conn::query_rows(&mut c, &sql).await else {
            return;
        };
        let Some(r) = rows.first() else {
            continue;
        };
        let stage = conn::number(r, 0).unwrap_or(0);
        let stages = conn::number(r, 1).unwrap_or(0);
        let percent = super::float(r, 2).ok().flatten();
        let state = conn::opt_text(r, 3).ok().flatten().unwrap_or_default();
        {
            let mut w = shared.lock().unwrap_or_else(|p| p.into_inner());
            if w.object.as_deref() == Some(object.as_str())
                && w.states.last().is_none_or(|(_, last)| *last != state)
            {
                w.states.push((Instant::now(), state.clone()));
            }
        }
        let Some(report) = &progress else {
            continue;
        };
        // The first report about a second into the step, then about every second.
        let due = match &mut reported {
            Some((o, at)) if *o == object => {
                let due = at.elapsed() >= PROGRESS_EVERY;
                if due {
                    *at = Instant::now();
                }
                due
            }
            _ => {
                reported = Some((object.clone(), Instant::now()));
                false
            }
        };
        if !due {
            continue;
        }
        let phase = if stages > 0 {
            format!("stage {stage} of {stages}: {state}")
        } else {
            state
        };
        let done = percent.filter(|_| stages > 0).map(|p| p.round() as u64);
        report(&StepProgress::new(object, phase, done, done.map(|_| 100)));
    }
}

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

/// Whether a result text says the engine cannot do the operation at all (MEMORY,
/// SEQUENCE, InnoDB `REPAIR`): "The storage engine for the table doesn't support
/// check". InnoDB's OPTIMIZE note ("does not support optimize, doing recreate +
/// analyze instead") is not: it goes on and rebuilds.
fn says_unsupported(text: &str) -> bool {
    (text.contains("doesn't support") || text.contains("does not support"))
        && !text.contains("doing recreate")
}

impl AdminResult {
    fn of(&self, kind: &str) -> impl Iterator<Item = &str> {
        self.rows
            .iter()
            .filter(move |(k, _)| k == kind)
            .map(|(_, t)| t.as_str())
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

    /// How `action` ended by these rows. Only an `error` row (or the status
    /// `Operation failed` that follows one) is a failure; every other status (`OK`,
    /// `Table is already up to date`, `Engine-independent statistics collected`),
    /// notes and warnings are success. An engine without the operation is
    /// [`StepOutcome::NotSupported`], never [`StepOutcome::Failed`] (for `check`,
    /// failed means damage found) — except an ANALYZE that still collected the
    /// engine-independent statistics, which is what it is for.
    fn verdict(&self, action: Action) -> StepOutcome {
        let unsupported = self.rows.iter().any(|(_, t)| says_unsupported(t));
        let errors = self.of("error").filter(|t| !says_unsupported(t)).count();
        if errors > 0 {
            return StepOutcome::Failed;
        }
        if unsupported {
            if action == Action::Analyze && self.any("statistics collected") {
                return StepOutcome::Done;
            }
            return StepOutcome::NotSupported;
        }
        if self
            .of("status")
            .any(|s| s.eq_ignore_ascii_case("Operation failed"))
        {
            return StepOutcome::Failed;
        }
        StepOutcome::Done
    }
}

/// A try that gave up on a lock after it had got past its first one and worked.
struct WorkLost {
    /// The try's number.
    try_number: u32,
    /// How long it ran.
    seconds: f64,
    /// Its lock timeout (the wait at the end).
    lock_wait: u64,
    /// The working states the watcher saw.
    states: Vec<String>,
}

/// How running an admin statement through the lock tries ended.
enum Tried {
    /// It ran; the server's rows and the tries it took.
    Ran(AdminResult, u32),
    /// Gave up waiting for a lock after `tries` tries in `seconds`; `lost` when the
    /// last try had got past its first lock (and so was not tried again).
    LockTimeout {
        tries: u32,
        seconds: f64,
        lost: Option<WorkLost>,
    },
    /// An SQL error.
    Failed(Error, u32),
}

/// Runs `sql` with each try's `lock_wait_timeout` until it gets its locks, no try
/// starting once `steps.total` has passed; a try that got past its first lock and
/// then timed out is not run again (it would redo its work).
async fn with_lock_tries(c: &mut Conn, sql: &str, steps: &LockSteps, watch: &Watch) -> Tried {
    let started = Instant::now();
    let mut n = 0u32;
    for (planned, pause) in second_tries(steps) {
        // The whole seconds still left; the first try always runs.
        let left = steps.total.saturating_sub(started.elapsed()).as_secs();
        let secs = if n == 0 { planned } else { planned.min(left) };
        if secs == 0 {
            break;
        }
        n += 1;
        let set =
            format!("SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}");
        if let Err(e) = conn::exec(c, &set).await {
            return Tried::Failed(e.during("setting lock_wait_timeout"), n);
        }
        let try_started = Instant::now();
        match conn::query_rows(c, sql).await {
            Ok(rows) => {
                let mut result = AdminResult::default();
                for r in &rows {
                    let kind = conn::opt_text(r, 2).ok().flatten().unwrap_or_default();
                    let text = conn::opt_text(r, 3).ok().flatten().unwrap_or_default();
                    result.rows.push((kind.to_ascii_lowercase(), text));
                }
                if !result.lock_timeout() {
                    return Tried::Ran(result, n);
                }
            }
            Err(e) if error_code(&e) == Some(code::LOCK_WAIT_TIMEOUT) => {}
            Err(e) => return Tried::Failed(e, n),
        }
        let took = try_started.elapsed();
        let states = watch.work_since(try_started);
        if !states.is_empty() || took > Duration::from_secs(secs) + WORK_MARGIN {
            return Tried::LockTimeout {
                tries: n,
                seconds: started.elapsed().as_secs_f64(),
                lost: Some(WorkLost {
                    try_number: n,
                    seconds: took.as_secs_f64(),
                    lock_wait: secs,
                    states,
                }),
            };
        }
        if started.elapsed() + pause >= steps.total {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Tried::LockTimeout {
        tries: n,
        seconds: started.elapsed().as_secs_f64(),
        lost: None,
    }
}

/// A step that gave up waiting for a lock, naming who holds it.
async fn lock_timeout_step(
    c: &mut Conn,
    t: &Table,
    sql: String,
    tries: u32,
    seconds: f64,
    lost: Option<WorkLost>,
    steps: &LockSteps,
) -> MaintainStep {
    let who = blockers(c, t).await;
    let message = match lost {
        None => format!(
            "gave up after {tries} {} in {seconds:.1} s (the limit is {:.1} s) waiting for the \
             metadata lock on {}: {who}",
            if tries == 1 { "try" } else { "tries" },
            steps.total.as_secs_f64(),
            t.label()
        ),
        Some(w) => {
            let seen = if w.states.is_empty() {
                String::new()
            } else {
                format!(" ({})", w.states.join(", "))
            };
            format!(
                "try {} got the metadata lock on {} and worked{seen}, then gave up waiting \
                 {} s for the exclusive lock it needs to finish ({:.1} s in all): {who}. The \
                 server rolled that try back, so the table is unchanged and the work is lost; \
                 it was not tried again, since every try redoes the whole work: run it again \
                 when the holder is done",
                w.try_number,
                t.label(),
                w.lock_wait,
                w.seconds
            )
        }
    };
    let mut step =
        MaintainStep::new(t.label(), sql, StepOutcome::LockTimeout).with_message(message);
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

/// The intermediate tables InnoDB knows on the server (`#sql-ib…`, `#sql-alter-…`):
/// what an ALTER (OPTIMIZE on InnoDB is one) builds and drops again when it fails.
async fn intermediate_tables(c: &mut Conn) -> Result<BTreeSet<String>> {
    conn::query_rows(
        c,
        "SELECT NAME FROM information_schema.INNODB_SYS_TABLES WHERE NAME LIKE '%/#sql%'",
    )
    .await
    .map(|rows| {
        rows.iter()
            .filter_map(|r| conn::opt_text(r, 0).ok().flatten())
            .collect()
    })
}

/// What a failed rebuild left behind: intermediate tables that were not there before.
async fn leftovers_note(c: &mut Conn, before: &Result<BTreeSet<String>>) -> String {
    let after = intermediate_tables(c).await;
    match (before, after) {
        (Ok(before), Ok(after)) => {
            let new: Vec<&String> = after.difference(before).collect();
            let old: Vec<&String> = after.intersection(before).collect();
            let mut note = if new.is_empty() {
                "no intermediate #sql table was left behind".to_owned()
            } else {
                format!(
                    "left behind: {} (an intermediate table of the failed rebuild; it takes \
                     disk space until dropped: DROP TABLE `db`.`#mysql50#<name>`)",
                    new.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            if !old.is_empty() {
                note.push_str(&format!(
                    "; intermediate tables of earlier failed ALTERs are still there: {}",
                    old.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            note
        }
        (Err(e), _) => {
            format!("whether the failed rebuild left an intermediate #sql table is unknown ({e})")
        }
        (_, Err(e)) => {
            format!("whether the failed rebuild left an intermediate #sql table is unknown ({e})")
        }
    }
}

async fn optimize(
    c: &mut Conn,
    t: &Table,
    sql: String,
    steps: &LockSteps,
    watch: &Watch,
) -> MaintainStep {
    let before = table_size(c, t).await;
    let intermediate = intermediate_tables(c).await;
    let mut step = match with_lock_tries(c, &sql, steps, watch).await {
        Tried::LockTimeout {
            tries,
            seconds,
            lost,
        } => {
            let worked = lost.is_some();
            let mut s = lock_timeout_step(c, t, sql, tries, seconds, lost, steps).await;
            if worked {
                let note = leftovers_note(c, &intermediate).await;
                s.message = s.message.map(|m| format!("{m}; {note}"));
            }
            s
        }
        Tried::Failed(e, n) => {
            let note = leftovers_note(c, &intermediate).await;
            let mut s = MaintainStep::new(t.label(), sql, StepOutcome::Failed)
                .with_message(format!("{e}; {note}"));
            s.lock_tries = n;
            s
        }
        Tried::Ran(result, n) => {
            let outcome = result.verdict(Action::Optimize);
            let message = if outcome == StepOutcome::Failed {
                let note = leftovers_note(c, &intermediate).await;
                format!("{}; {note}", result.text())
            } else if outcome == StepOutcome::Done && result.any("doing recreate") {
                format!(
                    "rebuilt: {} has no in-place optimize, so the server recreated the table \
                     and analyzed it ({})",
                    t.engine.as_deref().unwrap_or("the engine"),
                    result.text()
                )
            } else {
                result.text()
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
    steps: &LockSteps,
    watch: &Watch,
) -> MaintainStep {
    match with_lock_tries(c, &sql, steps, watch).await {
        Tried::LockTimeout {
            tries,
            seconds,
            lost,
        } => lock_timeout_step(c, t, sql, tries, seconds, lost, steps).await,
        Tried::Failed(e, n) => {
            let mut s =
                MaintainStep::new(t.label(), sql, StepOutcome::Failed).with_message(e.to_string());
            s.lock_tries = n;
            s
        }
        Tried::Ran(result, n) => {
            let outcome = result.verdict(action);
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

    fn result(rows: &[(&str, &str)]) -> AdminResult {
        AdminResult {
            rows: rows
                .iter()
                .map(|(k, t)| ((*k).to_owned(), (*t).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn admin_results_are_judged_row_by_row() {
        let damaged = result(&[
            ("warning", "Table is marked as crashed"),
            ("error", "Size of datafile is: 100 Should be: 200"),
            ("error", "Corrupt"),
        ]);
        assert_eq!(damaged.verdict(Action::Check), StepOutcome::Failed);
        assert!(damaged.text().contains("Should be"));
        for ok in [
            result(&[("status", "OK")]),
            result(&[("status", "Table is already up to date")]),
            result(&[
                ("status", "Engine-independent statistics collected"),
                ("status", "OK"),
            ]),
            result(&[("note", "something to know"), ("status", "OK")]),
            result(&[
                (
                    "note",
                    "Table does not support optimize, doing recreate + analyze instead",
                ),
                ("status", "OK"),
            ]),
        ] {
            assert_eq!(ok.verdict(Action::Analyze), StepOutcome::Done, "{ok:?}");
            assert_eq!(ok.verdict(Action::Optimize), StepOutcome::Done, "{ok:?}");
        }
        let failed = result(&[
            (
                "error",
                "Lock wait timeout exceeded; try restarting transaction",
            ),
            ("status", "Operation failed"),
        ]);
        assert_eq!(failed.verdict(Action::Optimize), StepOutcome::Failed);
    }

    #[test]
    fn an_engine_without_the_operation_is_not_supported_never_failed() {
        for action in [
            Action::Check,
            Action::Analyze,
            Action::Optimize,
            Action::Repair,
        ] {
            let note = result(&[(
                "note",
                &format!(
                    "The storage engine for the table doesn't support {}",
                    action.as_str()
                ),
            )]);
            assert_eq!(note.verdict(action), StepOutcome::NotSupported, "{action}");
            let error = result(&[
                (
                    "error",
                    "The storage engine for the table doesn't support check",
                ),
                ("status", "Operation failed"),
            ]);
            assert_eq!(error.verdict(action), StepOutcome::NotSupported, "{action}");
        }
        // ANALYZE of a MEMORY table still collects the engine-independent statistics.
        let memory = result(&[
            ("status", "Engine-independent statistics collected"),
            (
                "note",
                "The storage engine for the table doesn't support analyze",
            ),
        ]);
        assert_eq!(memory.verdict(Action::Analyze), StepOutcome::Done);
    }

    #[test]
    fn work_states_are_the_ones_past_the_first_lock() {
        for s in [
            "altering table",
            "committing alter table to storage engine",
            "preparing for alter table",
            "copy to tmp table",
            "Repair by sorting",
        ] {
            assert!(is_work_state(s), "{s}");
        }
        for s in [
            "",
            "starting",
            "checking permissions",
            "Opening tables",
            "setup",
            "Waiting for table metadata lock",
            "closing tables",
            "freeing items",
        ] {
            assert!(!is_work_state(s), "{s}");
        }
    }
}
