//! Maintenance actions on PostgreSQL: vacuum, analyze, reindex (concurrently), and
//! `check` with amcheck. One autocommit statement per table (VACUUM cannot run in a
//! transaction), each taken the pg_repack way: a short `lock_timeout` per try
//! ([`LockSteps::tries`]), a pause between tries so the application's queued queries
//! run, and after the last try a refusal that names the sessions holding the lock.
//! The statement itself runs without a statement timeout.
//!
//! What must not live here: reports (inspect.rs), session ending (sessions.rs),
//! archiving (archive.rs).

use std::future::Future;
use std::time::{Duration, Instant};

use ops_core::maintain::{
    Action, MaintainOptions, MaintainReport, MaintainStep, ProgressFn, StepOutcome, StepProgress,
};
use ops_core::{Error, ErrorKind, Result, TableRef};
use tokio_postgres::Client;

use super::{connect, resolve_tables};
use crate::PostgresEngine;
use crate::errors::{column, query_error};
use crate::session::{qualified, quote_ident, quote_literal};

/// SQLSTATE `lock_not_available`: a `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `index_corrupted` (amcheck's verdict).
const INDEX_CORRUPTED: &str = "XX002";

/// Lock modes that conflict with `ShareUpdateExclusiveLock` (VACUUM, ANALYZE, the
/// first phase of REINDEX CONCURRENTLY).
const CONFLICTS_SHARE_UPDATE_EXCLUSIVE: &[&str] = &[
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];
/// Lock modes that conflict with `AccessExclusiveLock` (VACUUM FULL; REINDEX takes
/// the index exclusively, which every query using it conflicts with): all of them.
const CONFLICTS_ACCESS_EXCLUSIVE: &[&str] = &[
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];
/// Lock modes that conflict with `AccessShareLock` (amcheck's `bt_index_check`).
const CONFLICTS_ACCESS_SHARE: &[&str] = &["AccessExclusiveLock"];

/// Runs (or plans) `action` on the chosen tables of `engine`'s database.
///
/// # Errors
/// Connection errors, an unknown table, and `optimize`/`repair`, which PostgreSQL
/// does not have ([`ErrorKind::InvalidInput`] naming what to use instead).
pub(crate) async fn maintain(
    engine: &PostgresEngine,
    action: Action,
    options: &MaintainOptions,
) -> Result<MaintainReport> {
    match action {
        Action::Optimize => {
            return Err(Error::invalid(
                "optimize is MariaDB's OPTIMIZE TABLE; on PostgreSQL use `vacuum` (marks dead \
                 rows reusable), `vacuum --full` (rewrites the table and gives space back to \
                 the operating system, under an exclusive lock) or `reindex --concurrently`",
            ));
        }
        Action::Repair => {
            return Err(Error::invalid(
                "repair is MariaDB's REPAIR TABLE; PostgreSQL has no table repair: run `check` \
                 (amcheck) to find damaged indexes and `reindex --concurrently` to rebuild them; \
                 damaged table data needs a restore from backup",
            ));
        }
        Action::Vacuum { .. } | Action::Analyze | Action::Reindex { .. } | Action::Check => {}
        _ => {
            return Err(Error::invalid(format!(
                "{action}: not an action this version of dbops knows for PostgreSQL"
            )));
        }
    }
    let mut runner = Runner::open(engine, options).await?;
    let tables = resolve_tables(&runner.client, &options.tables).await?;
    let mut steps = Vec::new();
    let mut dropped = Vec::new();
    for table in &tables {
        runner.reconnect_if_closed().await?;
        match action {
            Action::Vacuum { full, analyze } => {
                steps.push(runner.vacuum(table, full, analyze).await?);
            }
            Action::Analyze => steps.push(runner.analyze(table).await?),
            Action::Reindex { concurrently } => {
                runner
                    .reindex(table, concurrently, &mut steps, &mut dropped)
                    .await?;
            }
            Action::Check => runner.check(table, &mut steps).await?,
            // Refused above.
            _ => {}
        }
    }
    Ok(MaintainReport {
        action,
        dry_run: options.dry_run,
        steps,
        dropped_leftovers: dropped,
    })
}

/// Which `pg_stat_progress_*` view reports a step.
#[derive(Debug, Clone, Copy)]
enum ProgressView {
    Vacuum,
    /// VACUUM FULL reports as CLUSTER does.
    Cluster,
    Analyze,
    CreateIndex,
    None,
}

impl ProgressView {
    fn query(self) -> Option<&'static str> {
        Some(match self {
            ProgressView::Vacuum => {
                "SELECT phase::text, heap_blks_scanned::int8, heap_blks_total::int8 \
                 FROM pg_stat_progress_vacuum WHERE pid = $1"
            }
            ProgressView::Cluster => {
                "SELECT phase::text, heap_blks_scanned::int8, heap_blks_total::int8 \
                 FROM pg_stat_progress_cluster WHERE pid = $1"
            }
            ProgressView::Analyze => {
                "SELECT phase::text, sample_blks_scanned::int8, sample_blks_total::int8 \
                 FROM pg_stat_progress_analyze WHERE pid = $1"
            }
            ProgressView::CreateIndex => {
                "SELECT phase::text, \
                        CASE WHEN blocks_total > 0 THEN blocks_done ELSE tuples_done END::int8, \
                        CASE WHEN blocks_total > 0 THEN blocks_total ELSE tuples_total END::int8 \
                 FROM pg_stat_progress_create_index WHERE pid = $1"
            }
            ProgressView::None => return None,
        })
    }
}

/// How one lock-stepped statement ended.
struct Tried {
    /// `Ok`, or the server's error (a lock timeout only when every try timed out).
    result: std::result::Result<(), tokio_postgres::Error>,
    tries: u32,
    /// After the last try timed out: who holds the conflicting locks.
    blockers: Option<String>,
    seconds: f64,
}

impl Tried {
    fn sqlstate(&self) -> Option<&str> {
        self.result
            .as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .map(|d| d.code().code())
    }
}

/// The connections of one run: the one that runs the steps, and a second one (only
/// when progress is asked for) that watches it.
struct Runner<'a> {
    engine: &'a PostgresEngine,
    options: &'a MaintainOptions,
    client: Client,
    pid: i32,
    watcher: Option<(Client, ProgressFn)>,
    /// PostgreSQL's `server_version_num`.
    version: i32,
}

impl<'a> Runner<'a> {
    async fn open(engine: &'a PostgresEngine, options: &'a MaintainOptions) -> Result<Self> {
        let (client, pid, version) = Self::connect_runner(engine).await?;
        let watcher = match (&options.progress, options.dry_run) {
            (Some(f), false) => Some((connect(engine).await?, f.clone())),
            _ => None,
        };
        Ok(Self {
            engine,
            options,
            client,
            pid,
            watcher,
            version,
        })
    }

    async fn connect_runner(engine: &PostgresEngine) -> Result<(Client, i32, i32)> {
        let client = connect(engine).await?;
        // The step's own statement has no time limit: lock_timeout bounds the wait
        // for its lock, and the work itself takes what it takes.
        client
            .batch_execute(
                "SET statement_timeout = 0; SET lock_timeout = 0; \
                 SET idle_in_transaction_session_timeout = 0",
            )
            .await
            .map_err(|e| query_error(e, "setting the maintenance session's timeouts"))?;
        // PostgreSQL 14+: a statement whose client is gone (dbops killed) stops
        // within a second instead of holding its locks to the end; older servers
        // do not know the setting, which only costs that.
        let _ = client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await;
        let row = client
            .query_one(
                "SELECT pg_backend_pid(), current_setting('server_version_num')::int4",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "reading the session's pid"))?;
        Ok((
            client,
            column(&row, 0, "backend pid")?,
            column(&row, 1, "server version")?,
        ))
    }

    /// A step that failed because the server ended our session must not take every
    /// step after it along: the next one gets a new session.
    async fn reconnect_if_closed(&mut self) -> Result<()> {
        if self.client.is_closed() {
            let (client, pid, version) = Self::connect_runner(self.engine).await?;
            self.client = client;
            self.pid = pid;
            self.version = version;
        }
        if let Some((watcher, f)) = &self.watcher
            && watcher.is_closed()
        {
            let f = f.clone();
            self.watcher = Some((connect(self.engine).await?, f));
        }
        Ok(())
    }

    fn steps(&self) -> Vec<(Duration, Duration)> {
        self.options.lock.tries()
    }

    /// `VACUUM [FULL] [ANALYZE]` of one table.
    async fn vacuum(
        &mut self,
        table: &TableRef,
        full: bool,
        analyze: bool,
    ) -> Result<MaintainStep> {
        let name = qualified(table);
        let mut flags = Vec::new();
        if full {
            flags.push("FULL");
        }
        if analyze {
            flags.push("ANALYZE");
        }
        let sql = if flags.is_empty() {
            format!("VACUUM {name}")
        } else {
            format!("VACUUM ({}) {name}", flags.join(", "))
        };
        let (conflicts, view) = if full {
            (CONFLICTS_ACCESS_EXCLUSIVE, ProgressView::Cluster)
        } else {
            (CONFLICTS_SHARE_UPDATE_EXCLUSIVE, ProgressView::Vacuum)
        };
        self.table_step(table, sql, conflicts, view, full, "VACUUM")
            .await
    }

    /// `ANALYZE` of one table.
    async fn analyze(&mut self, table: &TableRef) -> Result<MaintainStep> {
        let sql = format!("ANALYZE {}", qualified(table));
        self.table_step(
            table,
            sql,
            CONFLICTS_SHARE_UPDATE_EXCLUSIVE,
            ProgressView::Analyze,
            false,
            "ANALYZE",
        )
        .await
    }

    /// One statement on one table: privilege check, sizes, lock steps, verdict.
    async fn table_step(
        &mut self,
        table: &TableRef,
        sql: String,
        conflicts: &[&str],
        view: ProgressView,
        sizes: bool,
        verb: &str,
    ) -> Result<MaintainStep> {
        let name = qualified(table);
        let object = table.to_string();
        if self.options.dry_run {
            return Ok(MaintainStep::new(object, sql, StepOutcome::Planned));
        }
        if let Some(missing) = self.missing_privilege(table, verb).await? {
            return Ok(MaintainStep::new(object, sql, StepOutcome::Failed).with_message(missing));
        }
        let size_before = if sizes { self.size(&name).await? } else { None };
        let tried = self.run_locked(&name, &sql, conflicts, view, &object).await;
        let mut step = self.judge(table, &object, sql, &tried, verb);
        if sizes {
            step.size_before = size_before;
            step.size_after = self.size(&name).await.ok().flatten();
        }
        Ok(step)
    }

    /// `REINDEX TABLE [CONCURRENTLY]`; the invalid leftovers of earlier failed
    /// concurrent runs are dropped first, and concurrently those of this run after it.
    async fn reindex(
        &mut self,
        table: &TableRef,
        concurrently: bool,
        steps: &mut Vec<MaintainStep>,
        dropped: &mut Vec<String>,
    ) -> Result<()> {
        let name = qualified(table);
        let sql = if concurrently {
            format!("REINDEX TABLE CONCURRENTLY {name}")
        } else {
            format!("REINDEX TABLE {name}")
        };
        // Leftovers go first in both modes: a plain REINDEX would make them valid
        // duplicates of the indexes they were to replace.
        {
            let before = self.leftovers(&name).await?;
            if !before.is_empty() {
                if self.options.dry_run {
                    for index in &before {
                        steps.push(
                            MaintainStep::new(
                                index.clone(),
                                format!("DROP INDEX CONCURRENTLY {index}"),
                                StepOutcome::Planned,
                            )
                            .with_message(
                                "invalid leftover of an earlier failed concurrent reindex",
                            ),
                        );
                    }
                } else {
                    let (gone, left, message) =
                        self.drop_leftovers(&name, &before, &self.steps()).await;
                    dropped.extend(gone.iter().cloned());
                    let outcome = if left.is_empty() {
                        StepOutcome::Done
                    } else {
                        StepOutcome::LockTimeout
                    };
                    let mut step = MaintainStep::new(
                        table.to_string(),
                        before
                            .iter()
                            .map(|i| format!("DROP INDEX CONCURRENTLY {i}"))
                            .collect::<Vec<_>>()
                            .join("; "),
                        outcome,
                    )
                    .with_message(format!(
                        "invalid leftovers of an earlier failed concurrent reindex: {message}"
                    ));
                    step.lock_tries = 1;
                    steps.push(step);
                }
            }
        }
        if self.options.dry_run {
            steps.push(MaintainStep::new(
                table.to_string(),
                sql,
                StepOutcome::Planned,
            ));
            return Ok(());
        }
        if let Some(missing) = self.missing_privilege(table, "REINDEX").await? {
            steps.push(
                MaintainStep::new(table.to_string(), sql, StepOutcome::Failed)
                    .with_message(missing),
            );
            return Ok(());
        }
        let size_before = self.size(&name).await?;
        // Concurrently, it starts with a ShareUpdateExclusiveLock but then waits for
        // the writers and, before it drops the old indexes, for every session that
        // holds any lock on the table: any holder can be the one it waits for.
        let conflicts = CONFLICTS_ACCESS_EXCLUSIVE;
        let tried = self
            .run_locked(
                &name,
                &sql,
                conflicts,
                ProgressView::CreateIndex,
                &table.to_string(),
            )
            .await;
        let mut step = self.judge(table, &table.to_string(), sql, &tried, "REINDEX");
        if concurrently {
            // Every failed try (lock timeout, cancel, unique violation) leaves an
            // invalid `_ccnew` index that each write keeps up to date; they go now.
            self.reconnect_if_closed().await?;
            let after = self.leftovers(&name).await?;
            if !after.is_empty() {
                // When the blocker outlasted every try it is most likely still there:
                // one short try, not a second full wait.
                let tries = if step.outcome == StepOutcome::LockTimeout {
                    vec![(self.options.lock.first, Duration::ZERO)]
                } else {
                    self.steps()
                };
                let (gone, _left, message) = self.drop_leftovers(&name, &after, &tries).await;
                dropped.extend(gone.iter().cloned());
                let text = match step.message.take() {
                    Some(m) => format!("{m}; {message}"),
                    None => message,
                };
                step.message = Some(text);
            }
        }
        step.size_before = size_before;
        step.size_after = self.size(&name).await.ok().flatten();
        steps.push(step);
        Ok(())
    }

    /// amcheck's `bt_index_check` (with `heapallindexed`) on each valid B-tree index
    /// of the table.
    async fn check(&mut self, table: &TableRef, steps: &mut Vec<MaintainStep>) -> Result<()> {
        let name = qualified(table);
        let schema = self
            .client
            .query_opt(
                "SELECT n.nspname::text FROM pg_extension e \
                 JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "looking for the amcheck extension"))?;
        let Some(schema) = schema else {
            steps.push(
                MaintainStep::new(
                    table.to_string(),
                    "SELECT bt_index_check(...)",
                    StepOutcome::Failed,
                )
                .with_message(
                    "not checked: the amcheck extension is not installed in this database; \
                     run CREATE EXTENSION amcheck (as a superuser, or a user allowed to create \
                     extensions) and check again",
                ),
            );
            return Ok(());
        };
        let schema: String = column(&schema, 0, "amcheck schema")?;
        let rows = self
            .client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_am am ON am.oid = c.relam \
                 WHERE i.indrelid = to_regclass($1) AND am.amname = 'btree' \
                   AND i.indisvalid AND i.indisready ORDER BY 1",
                &[&name],
            )
            .await
            .map_err(|e| query_error(e, format!("listing the B-tree indexes of {name}")))?;
        if rows.is_empty() {
            steps.push(
                MaintainStep::new(table.to_string(), "", StepOutcome::Skipped)
                    .with_message("no valid B-tree index to check"),
            );
            return Ok(());
        }
        for row in &rows {
            let index: String = column(row, 0, "index name")?;
            let sql = format!(
                "SELECT {}.bt_index_check({}::regclass, true)",
                quote_ident(&schema),
                quote_literal(&index)
            );
            if self.options.dry_run {
                steps.push(MaintainStep::new(index, sql, StepOutcome::Planned));
                continue;
            }
            self.reconnect_if_closed().await?;
            let tried = self
                .run_locked(
                    &name,
                    &sql,
                    CONFLICTS_ACCESS_SHARE,
                    ProgressView::None,
                    &index,
                )
                .await;
            let mut step = self.judge(table, &index, sql, &tried, "CHECK");
            if tried.sqlstate() == Some(INDEX_CORRUPTED) {
                step.message = Some(format!(
                    "damaged: {}; rebuild it with `reindex --concurrently` (and look for the \
                     cause: storage, memory, a collation change)",
                    error_text(&tried.result)
                ));
            } else if step.outcome == StepOutcome::Done {
                step.message = Some("no damage found (heapallindexed)".into());
            }
            steps.push(step);
        }
        Ok(())
    }

    /// The verdict of a lock-stepped statement.
    fn judge(
        &self,
        table: &TableRef,
        object: &str,
        sql: String,
        tried: &Tried,
        verb: &str,
    ) -> MaintainStep {
        let mut step = match (&tried.result, tried.sqlstate()) {
            (Ok(()), _) => MaintainStep::new(object, sql, StepOutcome::Done),
            (Err(_), Some(LOCK_NOT_AVAILABLE)) => {
                let total: f64 = self
                    .steps()
                    .iter()
                    .map(|(t, p)| (*t + *p).as_secs_f64())
                    .sum();
                MaintainStep::new(object, sql, StepOutcome::LockTimeout).with_message(format!(
                    "gave up after {} tries ({total:.1} s) waiting for a lock on {table}; {}; \
                     end those sessions (cancel or terminate them) or run again when they are done",
                    tried.tries,
                    tried
                        .blockers
                        .as_deref()
                        .unwrap_or("no holder of a conflicting lock is left")
                ))
            }
            (Err(_), Some(INSUFFICIENT_PRIVILEGE)) => {
                MaintainStep::new(object, sql, StepOutcome::Failed).with_message(format!(
                    "{}; {}",
                    error_text(&tried.result),
                    self.privilege_hint(table, verb)
                ))
            }
            (Err(_), _) => MaintainStep::new(object, sql, StepOutcome::Failed)
                .with_message(error_text(&tried.result)),
        };
        step.lock_tries = tried.tries;
        step.seconds = tried.seconds;
        step
    }

    fn privilege_hint(&self, table: &TableRef, verb: &str) -> String {
        let name = qualified(table);
        if verb == "CHECK" {
            return "amcheck's functions are for superusers unless granted: GRANT EXECUTE ON \
                    FUNCTION bt_index_check(regclass, boolean) TO <user> (in amcheck's schema)"
                .to_owned();
        }
        if self.version >= 170_000 {
            format!(
                "{verb} needs the table's owner (or a member of the owning role), the MAINTAIN \
                 privilege (GRANT MAINTAIN ON {name} TO <user>) or the pg_maintain role \
                 (GRANT pg_maintain TO <user>)"
            )
        } else {
            format!(
                "{verb} needs the table's owner, a member of the owning role (GRANT <owner> TO \
                 <user>, or ALTER TABLE {name} OWNER TO <user>){} or a superuser; PostgreSQL 17 \
                 and later also have GRANT MAINTAIN and the pg_maintain role",
                if verb == "REINDEX" {
                    ""
                } else {
                    ", the database's owner"
                }
            )
        }
    }

    /// Why this session may not run `verb` on `table`, or `None` when it may. Checked
    /// before running, because VACUUM and ANALYZE of a table one may not touch only
    /// warn and skip it: the step would look done.
    async fn missing_privilege(&self, table: &TableRef, verb: &str) -> Result<Option<String>> {
        let name = qualified(table);
        let row = if self.version >= 170_000 {
            self.client
                .query_opt(
                    "SELECT has_table_privilege(to_regclass($1), 'MAINTAIN'), \
                            pg_get_userbyid(c.relowner)::text \
                     FROM pg_class c WHERE c.oid = to_regclass($1)",
                    &[&name],
                )
                .await
        } else {
            // Before 17 the database's owner may vacuum and analyze (not reindex)
            // every table of it; superusers pass pg_has_role.
            let database_owner_may = verb != "REINDEX";
            self.client
                .query_opt(
                    "SELECT pg_has_role(c.relowner, 'USAGE') \
                            OR ($2 AND pg_has_role((SELECT datdba FROM pg_database \
                                       WHERE datname = current_database()), 'USAGE')), \
                            pg_get_userbyid(c.relowner)::text \
                     FROM pg_class c WHERE c.oid = to_regclass($1)",
                    &[&name, &database_owner_may],
                )
                .await
        };
        let row = row.map_err(|e| query_error(e, format!("checking the privileges on {name}")))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let allowed: Option<bool> = column(&row, 0, "privilege")?;
        let owner: Option<String> = column(&row, 1, "owner")?;
        if allowed.unwrap_or(false) {
            return Ok(None);
        }
        Ok(Some(format!(
            "not allowed: {name} belongs to {}; {}",
            owner.as_deref().unwrap_or("another role"),
            self.privilege_hint(table, verb)
        )))
    }

    /// `pg_total_relation_size`, when the table is still there.
    async fn size(&self, name: &str) -> Result<Option<u64>> {
        let row = self
            .client
            .query_one(
                "SELECT pg_total_relation_size(to_regclass($1))::int8",
                &[&name],
            )
            .await
            .map_err(|e| query_error(e, format!("reading the size of {name}")))?;
        let size: Option<i64> = column(&row, 0, "size")?;
        Ok(size.and_then(|s| u64::try_from(s).ok()))
    }

    /// Runs `sql` once per lock step until it gets its locks; after the last try
    /// timed out, names the sessions holding a conflicting lock on `table`.
    async fn run_locked(
        &self,
        table: &str,
        sql: &str,
        conflicts: &[&str],
        view: ProgressView,
        object: &str,
    ) -> Tried {
        let started = Instant::now();
        let tries = self.steps();
        let mut result = Ok(());
        let mut count = 0;
        for (timeout, pause) in &tries {
            count += 1;
            let set = format!("SET lock_timeout = '{}ms'", timeout.as_millis().max(1));
            if let Err(e) = self.client.batch_execute(&set).await {
                result = Err(e);
                break;
            }
            result = self
                .watched(self.client.batch_execute(sql), view, object)
                .await;
            match &result {
                Err(e) if sqlstate(e) == Some(LOCK_NOT_AVAILABLE) => {
                    if !pause.is_zero() {
                        tokio::time::sleep(*pause).await;
                    }
                }
                _ => break,
            }
        }
        // Back to no lock timeout for the bookkeeping queries; a failure here shows
        // in the next statement.
        let _ = self.client.batch_execute("SET lock_timeout = 0").await;
        let blockers = match &result {
            Err(e) if sqlstate(e) == Some(LOCK_NOT_AVAILABLE) => {
                Some(self.blockers(table, conflicts, started).await)
            }
            _ => None,
        };
        Tried {
            result,
            tries: count,
            blockers,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Runs `work`, reporting the step's progress about once a second from the
    /// second connection.
    async fn watched<F: Future>(&self, work: F, view: ProgressView, object: &str) -> F::Output {
        let (Some((watcher, report)), Some(query)) = (&self.watcher, view.query()) else {
            return work.await;
        };
        tokio::pin!(work);
        // The first look after half a second (a step that short needs none), then
        // about once a second.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(500),
            Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    // Progress is a courtesy: a failed poll is skipped, never fatal.
                    if let Ok(Some(row)) = watcher.query_opt(query, &[&self.pid]).await {
                        let phase: String = row.try_get(0).unwrap_or_default();
                        let done: Option<i64> = row.try_get(1).ok().flatten();
                        let total: Option<i64> = row.try_get(2).ok().flatten();
                        report(&StepProgress::new(
                            object,
                            phase,
                            done.and_then(|v| u64::try_from(v).ok()),
                            total.and_then(|v| u64::try_from(v).ok()),
                        ));
                    }
                }
            }
        }
    }

    /// Who holds a lock on `table` (or its indexes) that conflicts with the step's:
    /// our statement is gone after its timeout, so its own `pg_blocking_pids` is
    /// not there to ask. A concurrent reindex also waits for transactions that hold
    /// no lock on the table (old snapshots); when no lock holder is found, those are
    /// named.
    async fn blockers(&self, table: &str, conflicts: &[&str], since: Instant) -> String {
        let modes: Vec<String> = conflicts.iter().map(|m| (*m).to_owned()).collect();
        let own: Vec<i32> = vec![self.pid];
        let holders = self
            .client
            .query(
                "SELECT a.pid, a.usename::text, a.application_name, a.state, \
                        extract(epoch FROM now() - a.xact_start)::float8, \
                        left(rtrim(regexp_replace(a.query, '\\s+', ' ', 'g'), '; '), 200), \
                        string_agg(DISTINCT l.mode, ', ') \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.granted AND l.pid <> ALL($3) AND l.mode = ANY($2) \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.relation IN (SELECT to_regclass($1)::oid UNION ALL \
                                      SELECT indexrelid FROM pg_index WHERE indrelid = to_regclass($1)) \
                 GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 5 DESC NULLS LAST",
                &[&table, &modes, &own],
            )
            .await;
        let describe = |rows: &[tokio_postgres::Row], with_mode: bool| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    let pid: i32 = r.try_get(0).unwrap_or_default();
                    let user: Option<String> = r.try_get(1).ok().flatten();
                    let app: Option<String> = r.try_get(2).ok().flatten();
                    let state: Option<String> = r.try_get(3).ok().flatten();
                    let age: Option<f64> = r.try_get(4).ok().flatten();
                    let query: Option<String> = r.try_get(5).ok().flatten();
                    let mut s = format!(
                        "pid {pid} (user {}, application '{}', {}, transaction open {})",
                        user.as_deref().unwrap_or("?"),
                        app.as_deref().unwrap_or(""),
                        state.as_deref().unwrap_or("state unknown"),
                        age.map_or_else(|| "-".to_owned(), |a| format!("{a:.1} s")),
                    );
                    if with_mode {
                        let mode: Option<String> = r.try_get(6).ok().flatten();
                        if let Some(mode) = mode {
                            s.push_str(&format!(" holding {mode}"));
                        }
                    }
                    if let Some(q) = query.filter(|q| !q.is_empty()) {
                        s.push_str(&format!(", last query: {q}"));
                    }
                    s
                })
                .collect()
        };
        match holders {
            Ok(rows) if !rows.is_empty() => {
                return format!("blocked by {}", describe(&rows, true).join("; "));
            }
            Ok(_) => {}
            Err(e) => return format!("could not list the blockers: {}", error_text(&Err(e))),
        }
        let waited = since.elapsed().as_secs_f64();
        let old = self
            .client
            .query(
                "SELECT a.pid, a.usename::text, a.application_name, a.state, \
                        extract(epoch FROM now() - a.xact_start)::float8, \
                        left(rtrim(regexp_replace(a.query, '\\s+', ' ', 'g'), '; '), 200) \
                 FROM pg_stat_activity a \
                 WHERE a.pid <> ALL($2) AND a.datname = current_database() \
                   AND a.backend_type = 'client backend' \
                   AND (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL) \
                   AND a.xact_start < now() - make_interval(secs => $1) \
                 ORDER BY a.xact_start",
                &[&waited, &own],
            )
            .await;
        match old {
            Ok(rows) if !rows.is_empty() => format!(
                "waiting for transactions older than the step to end: {}",
                describe(&rows, false).join("; ")
            ),
            Ok(_) => "no holder of a conflicting lock is left".to_owned(),
            Err(e) => format!("could not list the blockers: {}", error_text(&Err(e))),
        }
    }

    /// The invalid `_ccnew`/`_ccold` indexes failed concurrent reindexes left on
    /// `table` (and its TOAST table), unless another session is reindexing the table
    /// right now (its `_ccnew` is work in progress, not a leftover).
    async fn leftovers(&self, table: &str) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$' \
                   AND i.indrelid IN (SELECT to_regclass($1)::oid UNION ALL \
                                      SELECT reltoastrelid FROM pg_class WHERE oid = to_regclass($1)) \
                   AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p \
                                   WHERE p.relid = to_regclass($1) AND p.pid <> pg_backend_pid()) \
                 ORDER BY 1",
                &[&table],
            )
            .await
            .map_err(|e| query_error(e, format!("looking for invalid leftover indexes on {table}")))?;
        rows.iter()
            .map(|r| column::<String>(r, 0, "leftover index"))
            .collect()
    }

    /// Drops `indexes` with `DROP INDEX CONCURRENTLY`, lock-stepped by `tries`;
    /// returns those dropped, those left and a sentence naming both.
    async fn drop_leftovers(
        &self,
        table: &str,
        indexes: &[String],
        tries: &[(Duration, Duration)],
    ) -> (Vec<String>, Vec<String>, String) {
        let mut gone = Vec::new();
        let mut left = Vec::new();
        let mut why = None;
        for index in indexes {
            if why.is_some() {
                // The same blocker stands in front of the next one.
                left.push(index.clone());
                continue;
            }
            let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {index}");
            let mut result = Ok(());
            for (timeout, pause) in tries {
                let set = format!("SET lock_timeout = '{}ms'", timeout.as_millis().max(1));
                result = match self.client.batch_execute(&set).await {
                    Ok(()) => self.client.batch_execute(&sql).await,
                    Err(e) => Err(e),
                };
                match &result {
                    Err(e) if sqlstate(e) == Some(LOCK_NOT_AVAILABLE) => {
                        if !pause.is_zero() {
                            tokio::time::sleep(*pause).await;
                        }
                    }
                    _ => break,
                }
            }
            let _ = self.client.batch_execute("SET lock_timeout = 0").await;
            match result {
                Ok(()) => gone.push(index.clone()),
                Err(e) => {
                    let reason = if sqlstate(&e) == Some(LOCK_NOT_AVAILABLE) {
                        let who = self
                            .blockers(table, CONFLICTS_ACCESS_EXCLUSIVE, Instant::now())
                            .await;
                        format!("lock timeout, {who}")
                    } else {
                        error_text(&Err(e))
                    };
                    why = Some(reason);
                    left.push(index.clone());
                }
            }
        }
        let mut message = Vec::new();
        if !gone.is_empty() {
            message.push(format!(
                "dropped the invalid leftover index(es) of a failed concurrent reindex: {}",
                gone.join(", ")
            ));
        }
        if !left.is_empty() {
            message.push(format!(
                "left the invalid leftover index(es) {} ({}); the next `reindex \
                 --concurrently` drops them, or run DROP INDEX CONCURRENTLY on each",
                left.join(", "),
                why.as_deref().unwrap_or("not tried")
            ));
        }
        (gone, left, message.join("; "))
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// The server's words for a failed statement (message, detail, hint, SQLSTATE).
fn error_text(result: &std::result::Result<(), tokio_postgres::Error>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(e) => match e.as_db_error() {
            Some(db) => {
                let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(d) = db.detail() {
                    s.push_str(&format!("; detail: {d}"));
                }
                if let Some(h) = db.hint() {
                    s.push_str(&format!("; hint: {h}"));
                }
                s
            }
            None => {
                let kind = if e.is_closed() {
                    ErrorKind::Interrupted
                } else {
                    ErrorKind::Database
                };
                format!("{kind:?}: {e} (the session was lost; the step may not have run)")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ops_core::maintain::LockSteps;

    #[test]
    fn a_step_carries_its_message() {
        let s = MaintainStep::new("public.t", "VACUUM public.t", StepOutcome::LockTimeout)
            .with_message("blocked by pid 7");
        assert_eq!(s.outcome, StepOutcome::LockTimeout);
        assert_eq!(s.message.as_deref(), Some("blocked by pid 7"));
        assert_eq!(s.lock_tries, 0);
    }

    #[test]
    fn only_lock_steps_of_the_options_are_used() {
        let tries = LockSteps::default()
            .with_total(Duration::from_secs(3))
            .with_max_step(Duration::from_millis(500))
            .tries();
        assert!(tries.iter().all(|(t, _)| *t <= Duration::from_millis(500)));
    }
}
