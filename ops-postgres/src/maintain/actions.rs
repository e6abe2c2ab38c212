//! Maintenance actions on PostgreSQL: vacuum, analyze, reindex (concurrently), and
//! `check` with amcheck. One statement per table, each taken the pg_repack way: a
//! short `lock_timeout` per try ([`LockSteps::tries`]), a pause between tries so the
//! application's queued queries run, no new try once the steps' total has passed, and
//! then a refusal that names the sessions holding the lock. The statement itself runs
//! without a statement timeout.
//!
//! A try must fail cheaply, never halfway through the work: what can run in a
//! transaction (ANALYZE, plain REINDEX) first takes its heavy lock with `LOCK TABLE`
//! under the try's timeout, so only that LOCK is tried again. VACUUM cannot run in a
//! transaction, but takes the table's lock first anyway. REINDEX CONCURRENTLY cannot
//! either, and waits for other sessions at several points of its work: the indexes a
//! failed try leaves (`_ccnew`, `_ccold`) are dropped before the next try (a drop waits
//! for the same sessions, cheaply), and a try that failed after the new indexes took
//! over is not run again: only the old copies are left to drop.
//!
//! Partitioned tables: every partition that holds rows is worked on once, whether it
//! was named or reached through its partitioned table; the partitioned table itself
//! only for ANALYZE (its own statistics, which autovacuum never collects).
//!
//! What must not live here: reports (inspect.rs), session ending (sessions.rs),
//! archiving (archive.rs).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use ops_core::maintain::{
    Action, LockSteps, MaintainOptions, MaintainReport, MaintainStep, ProgressFn, StepOutcome,
    StepProgress,
};
use ops_core::{Error, ErrorKind, Result, TableRef};
use tokio_postgres::Client;

use super::{connect, resolve_tables};
use crate::PostgresEngine;
use crate::errors::{column, query_error};
use crate::session::{qualified, quote_ident};

/// SQLSTATE `lock_not_available`: a `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `index_corrupted` (amcheck's verdict on an index's structure).
const INDEX_CORRUPTED: &str = "XX002";
/// SQLSTATE `data_corrupted` (amcheck's heapallindexed verdict: a table row the index
/// lacks).
const DATA_CORRUPTED: &str = "XX001";

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
                "optimize is MariaDB's OPTIMIZE TABLE; on PostgreSQL use vacuum (marks dead \
                 rows reusable), a full vacuum (VACUUM FULL: rewrites the table and gives \
                 space back to the operating system, under an exclusive lock) or a concurrent \
                 reindex (REINDEX CONCURRENTLY)",
            ));
        }
        Action::Repair => {
            return Err(Error::invalid(
                "repair is MariaDB's REPAIR TABLE; PostgreSQL has no table repair: run check \
                 (amcheck) to find damaged indexes and a concurrent reindex (REINDEX \
                 CONCURRENTLY) to rebuild them; damaged table data needs a restore from backup",
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
    let chosen = resolve_tables(&runner.client, &options.tables).await?;
    let plan = Plan::of(&runner.client, &chosen).await?;
    let mut steps = Vec::new();
    let mut dropped = Vec::new();
    for leaf in &plan.leaves {
        runner.reconnect_if_closed().await?;
        let table = &leaf.table;
        match action {
            Action::Vacuum { full, analyze } => {
                // A partition under a partitioned table that is analyzed below is
                // analyzed there, once.
                let analyze = analyze && !leaf.under_parent;
                steps.push(runner.vacuum(table, full, analyze).await?);
            }
            Action::Analyze if !leaf.under_parent => steps.push(runner.analyze(table).await?),
            Action::Reindex { concurrently } => {
                runner
                    .reindex(table, concurrently, &mut steps, &mut dropped)
                    .await?;
            }
            Action::Check => runner.check(table, &mut steps).await?,
            // Analyzed with its partitioned table; the others are refused above.
            _ => {}
        }
    }
    if matches!(
        action,
        Action::Analyze | Action::Vacuum { analyze: true, .. }
    ) {
        // ANALYZE of a partitioned table samples its partitions for its own statistics
        // and (before PostgreSQL 18, which has ANALYZE ONLY) analyzes each of them as
        // well: its partitions got no ANALYZE of their own above.
        for parent in &plan.parents {
            runner.reconnect_if_closed().await?;
            steps.push(runner.analyze(parent).await?);
        }
    }
    Ok(MaintainReport {
        action,
        dry_run: options.dry_run,
        steps,
        dropped_leftovers: dropped,
    })
}

/// One table that holds rows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    table: TableRef,
    /// Whether a chosen partitioned table is above it (its ANALYZE covers this one).
    under_parent: bool,
}

/// The tables an action works on. A partitioned table holds no rows: VACUUM of it
/// only recurses into its partitions and REINDEX rebuilds theirs, so each partition
/// is worked on once, on its own (with its own lock steps), whether it was named,
/// reached through its partitioned table, or both.
#[derive(Debug, Default)]
struct Plan {
    /// Ordinary tables, partitions and materialized views, each once, in the order
    /// they were chosen.
    leaves: Vec<Leaf>,
    /// The chosen partitioned tables that no other chosen one is above.
    parents: Vec<TableRef>,
}

impl Plan {
    async fn of(client: &Client, chosen: &[TableRef]) -> Result<Plan> {
        struct Chosen {
            table: TableRef,
            oid: u32,
            /// Partitioned: its partitions that hold rows (foreign tables have no
            /// storage here); `None` for a table that holds rows itself.
            leaves: Option<Vec<TableRef>>,
            /// The partitioned tables above it.
            ancestors: Vec<u32>,
        }
        let doing = "listing the partitions of the chosen tables";
        let mut all = Vec::with_capacity(chosen.len());
        for table in chosen {
            let row = client
                .query_one(
                    "SELECT c.oid, c.relkind = 'p',
                            ARRAY(SELECT a.relid::oid FROM pg_partition_ancestors(c.oid) a
                                   WHERE a.relid <> c.oid),
                            ARRAY(SELECT ln.nspname::text FROM pg_partition_tree(c.oid) t
                                    JOIN pg_class l ON l.oid = t.relid
                                    JOIN pg_namespace ln ON ln.oid = l.relnamespace
                                   WHERE t.isleaf AND l.relkind IN ('r', 'm')
                                   ORDER BY ln.nspname, l.relname),
                            ARRAY(SELECT l.relname::text FROM pg_partition_tree(c.oid) t
                                    JOIN pg_class l ON l.oid = t.relid
                                    JOIN pg_namespace ln ON ln.oid = l.relnamespace
                                   WHERE t.isleaf AND l.relkind IN ('r', 'm')
                                   ORDER BY ln.nspname, l.relname)
                       FROM pg_class c WHERE c.oid = $1::text::regclass",
                    &[&qualified(table)],
                )
                .await
                .map_err(|e| query_error(e, doing))?;
            let partitioned: bool = column(&row, 1, doing)?;
            let schemas: Vec<String> = column(&row, 3, doing)?;
            let names: Vec<String> = column(&row, 4, doing)?;
            all.push(Chosen {
                table: table.clone(),
                oid: column(&row, 0, doing)?,
                leaves: partitioned.then(|| {
                    schemas
                        .into_iter()
                        .zip(names)
                        .map(|(s, n)| TableRef::new(s, n))
                        .collect()
                }),
                ancestors: column(&row, 2, doing)?,
            });
        }
        let parent_oids: BTreeSet<u32> = all
            .iter()
            .filter(|c| c.leaves.is_some())
            .map(|c| c.oid)
            .collect();
        let mut plan = Plan::default();
        let mut covered = BTreeSet::new();
        for c in &all {
            if let Some(leaves) = &c.leaves
                && !c.ancestors.iter().any(|a| parent_oids.contains(a))
            {
                plan.parents.push(c.table.clone());
                covered.extend(leaves.iter().cloned());
            }
        }
        let mut seen = BTreeSet::new();
        for c in &all {
            let leaves = match &c.leaves {
                Some(leaves) => leaves.clone(),
                None => vec![c.table.clone()],
            };
            for table in leaves {
                if seen.insert(table.clone()) {
                    let under_parent = covered.contains(&table);
                    plan.leaves.push(Leaf {
                        table,
                        under_parent,
                    });
                }
            }
        }
        Ok(plan)
    }
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

/// How a try takes its locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// The statement alone, under the try's lock timeout. VACUUM (which cannot run in
    /// a transaction) takes the table's lock, its heaviest, before any work.
    Alone,
    /// In a transaction: `LOCK TABLE ... IN <mode> MODE` under the try's lock timeout,
    /// then the statement. A try fails on that LOCK, before any work; on a partitioned
    /// table the LOCK takes every partition too.
    LockFirst(&'static str),
    /// REINDEX CONCURRENTLY: before each try the indexes the failed tries left are
    /// dropped (under the try's timeout; the drop waits for the same sessions as the
    /// reindex, and fails as cheaply), and a try that got past the swap is the last.
    Concurrently,
}

/// How one lock-stepped statement ended.
struct Tried {
    /// `Ok`, or the server's error (a lock timeout only when every try timed out).
    result: std::result::Result<(), tokio_postgres::Error>,
    tries: u32,
    /// After the last try timed out: who holds the conflicting locks.
    blockers: Option<String>,
    seconds: f64,
    /// REINDEX CONCURRENTLY: the leftovers of failed tries that were dropped before
    /// the next one.
    dropped: Vec<String>,
    /// REINDEX CONCURRENTLY: a try failed on a lock after the new indexes had taken
    /// over (its `_ccold` leftovers say so): the rebuild is done, only the old copies
    /// are left.
    rebuilt: bool,
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

    /// The lock steps that fit in `budget` (at least one short try).
    fn steps_within(&self, budget: Duration) -> Vec<(Duration, Duration)> {
        LockSteps {
            total: budget,
            ..self.options.lock
        }
        .tries()
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
        self.table_step(table, sql, Take::Alone, conflicts, view, full, "VACUUM")
            .await
    }

    /// `ANALYZE` of one table (of a partitioned table: of it and its partitions).
    async fn analyze(&mut self, table: &TableRef) -> Result<MaintainStep> {
        let sql = format!("ANALYZE {}", qualified(table));
        self.table_step(
            table,
            sql,
            Take::LockFirst("SHARE UPDATE EXCLUSIVE"),
            CONFLICTS_SHARE_UPDATE_EXCLUSIVE,
            ProgressView::Analyze,
            false,
            "ANALYZE",
        )
        .await
    }

    /// One statement on one table: privilege check, sizes, lock steps, verdict.
    #[allow(clippy::too_many_arguments)]
    async fn table_step(
        &mut self,
        table: &TableRef,
        sql: String,
        take: Take,
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
        let statement = Statement::new(&name, &sql, &object).with(take, conflicts, view);
        let tried = self.run_locked(&statement).await;
        let mut step = self.judge(table, &object, sql, &tried, verb);
        if sizes {
            step.size_before = size_before;
            step.size_after = self.size(&name).await.ok().flatten();
        }
        Ok(step)
    }

    /// `REINDEX TABLE [CONCURRENTLY]`; the invalid leftovers of earlier failed
    /// concurrent runs are dropped first, those of failed tries before the next try,
    /// and those of this run's last try after it.
    async fn reindex(
        &mut self,
        table: &TableRef,
        concurrently: bool,
        steps: &mut Vec<MaintainStep>,
        dropped: &mut Vec<String>,
    ) -> Result<()> {
        let name = qualified(table);
        let object = table.to_string();
        let sql = if concurrently {
            format!("REINDEX TABLE CONCURRENTLY {name}")
        } else {
            format!("REINDEX TABLE {name}")
        };
        // Leftovers go first in both modes: a plain REINDEX would make them valid
        // duplicates of the indexes they were to replace.
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
                        .with_message("invalid leftover of an earlier failed concurrent reindex"),
                    );
                }
            } else {
                let started = Instant::now();
                let (gone, left, message) = self
                    .drop_leftovers(&name, &before, self.options.lock.total)
                    .await;
                dropped.extend(gone.iter().cloned());
                let outcome = if left.is_empty() {
                    StepOutcome::Done
                } else {
                    StepOutcome::LockTimeout
                };
                let mut step = MaintainStep::new(
                    object.clone(),
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
                step.seconds = started.elapsed().as_secs_f64();
                steps.push(step);
                if !left.is_empty() {
                    // The sessions that kept them wait in front of the reindex too (a
                    // concurrent one waits for every session holding a lock on the
                    // table at its end, a plain one locks the table's indexes
                    // exclusively): a second full wait behind them would be no wiser.
                    steps.push(
                        MaintainStep::new(object, sql, StepOutcome::LockTimeout).with_message(
                            "not run: the sessions that kept the leftovers of an earlier \
                             failed concurrent reindex from being dropped would block it too",
                        ),
                    );
                    return Ok(());
                }
            }
        }
        if self.options.dry_run {
            steps.push(MaintainStep::new(object, sql, StepOutcome::Planned));
            return Ok(());
        }
        if let Some(missing) = self.missing_privilege(table, "REINDEX").await? {
            steps.push(MaintainStep::new(object, sql, StepOutcome::Failed).with_message(missing));
            return Ok(());
        }
        let size_before = self.size(&name).await?;
        let started = Instant::now();
        // Concurrently, it starts with a ShareUpdateExclusiveLock but then waits for
        // the writers and, before it drops the old indexes, for every session that
        // holds any lock on the table: any holder can be the one it waits for. A plain
        // REINDEX locks each index exclusively, which every query planned on the table
        // conflicts with: the table's ACCESS EXCLUSIVE lock, taken first, costs the
        // application nothing more and lets no try fail after the first rebuilt index.
        let (take, view) = if concurrently {
            (Take::Concurrently, ProgressView::CreateIndex)
        } else {
            (
                Take::LockFirst("ACCESS EXCLUSIVE"),
                ProgressView::CreateIndex,
            )
        };
        let statement =
            Statement::new(&name, &sql, &object).with(take, CONFLICTS_ACCESS_EXCLUSIVE, view);
        let tried = self.run_locked(&statement).await;
        dropped.extend(tried.dropped.iter().cloned());
        let mut step = self.judge(table, &object, sql, &tried, "REINDEX");
        let mut notes = Vec::new();
        if !tried.dropped.is_empty() {
            notes.push(format!(
                "dropped the invalid leftover index(es) of failed tries before trying again: {}",
                tried.dropped.join(", ")
            ));
        }
        if concurrently {
            // Every failed try (lock timeout, cancel, unique violation) leaves invalid
            // indexes that each write keeps up to date; they go now.
            self.reconnect_if_closed().await?;
            let after = self.leftovers(&name).await?;
            if tried.rebuilt {
                // The new indexes took over before a lock wait stopped the try: the
                // work is done, the old copies are all that is left.
                let budget = self.options.lock.total.saturating_sub(started.elapsed());
                let (gone, left, message) = self.drop_leftovers(&name, &after, budget).await;
                dropped.extend(gone.iter().cloned());
                let rebuilt = "the indexes were rebuilt and are in use; a lock wait stopped \
                               the reindex before it could drop the old copies";
                step = if left.is_empty() {
                    MaintainStep::new(object.clone(), step.sql, StepOutcome::Done)
                        .with_message(format!("{rebuilt}: {message}"))
                } else {
                    MaintainStep::new(object.clone(), step.sql, StepOutcome::LockTimeout)
                        .with_message(format!(
                            "{rebuilt}, and they could not be dropped within the lock wait: \
                             {message}"
                        ))
                };
                step.lock_tries = tried.tries;
            } else if !after.is_empty() {
                // When the blocker outlasted every try it is most likely still there:
                // one short try, not a second full wait.
                let budget = if step.outcome == StepOutcome::LockTimeout {
                    Duration::ZERO
                } else {
                    self.options.lock.total.saturating_sub(started.elapsed())
                };
                let (gone, _left, message) = self.drop_leftovers(&name, &after, budget).await;
                dropped.extend(gone.iter().cloned());
                notes.push(message);
            }
        }
        if !notes.is_empty() {
            let notes = notes.join("; ");
            step.message = Some(match step.message.take() {
                Some(m) => format!("{m}; {notes}"),
                None => notes,
            });
        }
        step.seconds = started.elapsed().as_secs_f64();
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
            // Nothing was looked at, so nothing was found: not a verdict on the data.
            steps.push(
                MaintainStep::new(
                    table.to_string(),
                    "SELECT bt_index_check(...)",
                    StepOutcome::NotSupported,
                )
                .with_message(
                    "not checked: the amcheck extension (one of PostgreSQL's contrib \
                     modules) is not installed in this database; run CREATE EXTENSION amcheck \
                     (as a superuser, or a user allowed to create extensions) and check again",
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
                   AND c.relkind = 'i' AND i.indisvalid AND i.indisready ORDER BY 1",
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
        // The index's name goes as a parameter, never pasted into the SQL.
        let sql = format!(
            "SELECT {}.bt_index_check($1::text::regclass, true)",
            quote_ident(&schema)
        );
        for row in &rows {
            let index: String = column(row, 0, "index name")?;
            if self.options.dry_run {
                steps.push(MaintainStep::new(index, sql.clone(), StepOutcome::Planned));
                continue;
            }
            self.reconnect_if_closed().await?;
            let statement = Statement::new(&name, &sql, &index)
                .with(Take::Alone, CONFLICTS_ACCESS_SHARE, ProgressView::None)
                .with_param(&index);
            let tried = self.run_locked(&statement).await;
            let mut step = self.judge(table, &index, sql.clone(), &tried, "CHECK");
            if matches!(tried.sqlstate(), Some(INDEX_CORRUPTED | DATA_CORRUPTED)) {
                step.message = Some(format!(
                    "damaged: {}; rebuild it with a concurrent reindex (REINDEX INDEX \
                     CONCURRENTLY {index}), and look for the cause: storage, memory, a \
                     collation change",
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
                MaintainStep::new(object, sql, StepOutcome::LockTimeout).with_message(format!(
                    "gave up after {} tries ({:.1} s, the lock wait's total being {:.1} s) \
                     waiting for a lock on {table}; {}; end those sessions (cancel or terminate \
                     them) or run again when they are done",
                    tried.tries,
                    tried.seconds,
                    self.options.lock.total.as_secs_f64(),
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

    /// Runs `statement` once per lock step until it gets its locks, starting no try
    /// once the steps' total has passed (a try's work counts, not only its waits);
    /// after the last try timed out, names the sessions holding a conflicting lock.
    async fn run_locked(&self, statement: &Statement<'_>) -> Tried {
        let started = Instant::now();
        let total = self.options.lock.total;
        let mut take = statement.take;
        // REINDEX CONCURRENTLY: leftovers there before are not this run's to judge by.
        let mut known: BTreeSet<String> = BTreeSet::new();
        if take == Take::Concurrently {
            known.extend(self.leftovers(statement.table).await.unwrap_or_default());
        }
        let mut pending: Vec<String> = Vec::new();
        let mut dropped = Vec::new();
        let mut rebuilt = false;
        let mut result = Ok(());
        let mut count = 0;
        let mut last_try: Option<Instant> = None;
        for (timeout, pause) in self.steps() {
            let left = total.saturating_sub(started.elapsed());
            if count > 0 && left.is_zero() {
                break;
            }
            count += 1;
            let timeout = timeout.min(left).max(Duration::from_millis(1));
            if take == Take::Concurrently
                && let Some(at) = last_try
                && self.snapshots_older_than(at).await
            {
                // A transaction with a snapshot from before the last try is still
                // open: the reindex waits for it after building and validating the
                // new indexes, and would build them again only to fail there. The
                // try waits its time here instead; the last error stands.
                tokio::time::sleep(timeout + pause.min(total.saturating_sub(started.elapsed())))
                    .await;
                continue;
            }
            last_try = Some(Instant::now());
            result = match take {
                Take::Alone => self.alone(statement, timeout).await,
                Take::LockFirst(mode) => {
                    match self.lock_table(statement.table, mode, timeout).await {
                        Ok(()) => self.rest_of_transaction(statement).await,
                        Err(e) if sqlstate(&e) == Some(INSUFFICIENT_PRIVILEGE) => {
                            // LOCK TABLE asks for UPDATE, DELETE or TRUNCATE (or, from
                            // PostgreSQL 17, MAINTAIN), which a database owner who may
                            // ANALYZE every table need not have: the statement alone then.
                            take = Take::Alone;
                            self.alone(statement, timeout).await
                        }
                        Err(e) => Err(e),
                    }
                }
                Take::Concurrently => match self.drop_indexes(&mut pending, timeout).await {
                    Ok(gone) => {
                        dropped.extend(gone);
                        self.alone(statement, timeout).await
                    }
                    Err((gone, e)) => {
                        dropped.extend(gone);
                        Err(e)
                    }
                },
            };
            match &result {
                Err(e) if sqlstate(e) == Some(LOCK_NOT_AVAILABLE) => {
                    if take == Take::Concurrently {
                        // What did this try leave? `_ccold` copies exist only once the
                        // new indexes have taken over their names.
                        let now = self.leftovers(statement.table).await.unwrap_or_default();
                        let new: Vec<String> = now
                            .into_iter()
                            .filter(|i| !known.contains(i) && !pending.contains(i))
                            .collect();
                        rebuilt = new.iter().any(|i| is_old_copy(i));
                        pending.extend(new);
                        if rebuilt {
                            break;
                        }
                    }
                    let pause = pause.min(total.saturating_sub(started.elapsed()));
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                _ => break,
            }
        }
        // Back to no lock timeout for the bookkeeping queries; a failure here shows
        // in the next statement.
        let _ = self.client.batch_execute("SET lock_timeout = 0").await;
        let blockers = match &result {
            Err(e) if sqlstate(e) == Some(LOCK_NOT_AVAILABLE) => Some(
                self.blockers(statement.table, statement.conflicts, started)
                    .await,
            ),
            _ => None,
        };
        Tried {
            result,
            tries: count,
            blockers,
            seconds: started.elapsed().as_secs_f64(),
            dropped,
            rebuilt,
        }
    }

    /// Whether a client session of this database holds a snapshot (`backend_xmin`)
    /// in a transaction older than `since`: REINDEX CONCURRENTLY, once its new indexes
    /// are built and validated, waits for every such session.
    async fn snapshots_older_than(&self, since: Instant) -> bool {
        self.client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND datname = current_database() \
                   AND backend_type = 'client backend' AND backend_xmin IS NOT NULL \
                   AND xact_start < now() - make_interval(secs => $1))",
                &[&since.elapsed().as_secs_f64()],
            )
            .await
            .ok()
            .and_then(|r| r.try_get::<_, bool>(0).ok())
            .unwrap_or(false)
    }

    /// One try of the statement on its own, under `timeout`.
    async fn alone(
        &self,
        statement: &Statement<'_>,
        timeout: Duration,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute(&set_lock_timeout(timeout))
            .await?;
        self.watched(
            self.execute(statement.sql, statement.param),
            statement.view,
            statement.object,
        )
        .await
    }

    /// Opens a transaction and locks `table` in `mode` under `timeout`; rolled back
    /// when the lock does not come.
    async fn lock_table(
        &self,
        table: &str,
        mode: &str,
        timeout: Duration,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let sql = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {table} IN {mode} MODE",
            timeout.as_millis().max(1)
        );
        let locked = self.client.batch_execute(&sql).await;
        if locked.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        locked
    }

    /// The statement inside the transaction [`Self::lock_table`] opened (its lock
    /// timeout still the try's: with the heavy lock held, a later wait is not
    /// expected, and it must not queue the application for longer), then COMMIT.
    async fn rest_of_transaction(
        &self,
        statement: &Statement<'_>,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let done = match self
            .watched(
                self.execute(statement.sql, statement.param),
                statement.view,
                statement.object,
            )
            .await
        {
            Ok(()) => self.client.batch_execute("COMMIT").await,
            Err(e) => Err(e),
        };
        if done.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        done
    }

    /// `sql`, with its one text parameter when it has one.
    async fn execute(
        &self,
        sql: &str,
        param: Option<&str>,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        match param {
            None => self.client.batch_execute(sql).await,
            Some(p) => self.client.execute(sql, &[&p]).await.map(|_| ()),
        }
    }

    /// Drops the indexes of `pending` (leftovers of failed tries), each under
    /// `timeout`, taking those dropped out of it: the names dropped, or with the error
    /// that stopped the dropping, the names dropped before it.
    async fn drop_indexes(
        &self,
        pending: &mut Vec<String>,
        timeout: Duration,
    ) -> std::result::Result<Vec<String>, (Vec<String>, tokio_postgres::Error)> {
        let mut gone = Vec::new();
        while let Some(index) = pending.first().cloned() {
            let dropped = match self.client.batch_execute(&set_lock_timeout(timeout)).await {
                Ok(()) => {
                    self.client
                        .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
                        .await
                }
                Err(e) => Err(e),
            };
            match dropped {
                Ok(()) => {
                    pending.remove(0);
                    gone.push(index);
                }
                Err(e) => return Err((gone, e)),
            }
        }
        Ok(gone)
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
                // The table, and for a partitioned table its partitions, with their
                // indexes: LOCK TABLE and ANALYZE of a partitioned table lock them all.
                "WITH tables AS (SELECT to_regclass($1)::oid AS r \
                                 UNION SELECT relid::oid FROM pg_partition_tree(to_regclass($1))) \
                 SELECT a.pid, a.usename::text, a.application_name, a.state, \
                        extract(epoch FROM now() - a.xact_start)::float8, \
                        left(rtrim(regexp_replace(a.query, '\\s+', ' ', 'g'), '; '), 200), \
                        string_agg(DISTINCT l.mode, ', ') \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.granted AND l.pid <> ALL($3) AND l.mode = ANY($2) \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.relation IN (SELECT r FROM tables UNION ALL \
                                      SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT r FROM tables)) \
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
            Err(e) => return format!("could not list the blockers: {}", error_words(&e)),
        }
        // A prepared transaction holds its locks with no session behind it (pg_locks
        // shows it without a pid): only COMMIT PREPARED or ROLLBACK PREPARED ends it.
        let prepared = self
            .client
            .query(
                "WITH tables AS (SELECT to_regclass($1)::oid AS r \
                                 UNION SELECT relid::oid FROM pg_partition_tree(to_regclass($1))) \
                 SELECT DISTINCT p.gid, p.owner::text, \
                        extract(epoch FROM now() - p.prepared)::float8 \
                 FROM pg_locks l JOIN pg_prepared_xacts p \
                   ON l.virtualtransaction = '-1/' || p.transaction::text \
                 WHERE l.pid IS NULL AND l.granted AND l.mode = ANY($2) \
                   AND l.relation IN (SELECT r FROM tables UNION ALL \
                                      SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT r FROM tables)) \
                 ORDER BY 3 DESC",
                &[&table, &modes],
            )
            .await;
        if let Ok(rows) = prepared
            && !rows.is_empty()
        {
            let named: Vec<String> = rows
                .iter()
                .map(|r| {
                    let gid: String = r.try_get(0).unwrap_or_default();
                    let owner: Option<String> = r.try_get(1).ok().flatten();
                    let age: Option<f64> = r.try_get(2).ok().flatten();
                    format!(
                        "prepared transaction '{gid}' (owner {}, prepared {} ago; no session \
                         to end: COMMIT PREPARED or ROLLBACK PREPARED it)",
                        owner.as_deref().unwrap_or("?"),
                        age.map_or_else(|| "-".to_owned(), |a| format!("{a:.1} s")),
                    )
                })
                .collect();
            return format!("blocked by {}", named.join("; "));
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
            Err(e) => format!("could not list the blockers: {}", error_words(&e)),
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

    /// Drops `indexes` with `DROP INDEX CONCURRENTLY`, lock-stepped within `budget`
    /// (at least one short try); returns those dropped, those left and a sentence
    /// naming both.
    async fn drop_leftovers(
        &self,
        table: &str,
        indexes: &[String],
        budget: Duration,
    ) -> (Vec<String>, Vec<String>, String) {
        let started = Instant::now();
        let tries = self.steps_within(budget);
        let mut pending = indexes.to_vec();
        let mut gone = Vec::new();
        let mut failure = None;
        for (n, (timeout, pause)) in tries.into_iter().enumerate() {
            let left = budget.saturating_sub(started.elapsed());
            if n > 0 && left.is_zero() {
                break;
            }
            // The first try as planned: with no budget left, that is one short try.
            let timeout = if n == 0 {
                timeout
            } else {
                timeout.min(left).max(Duration::from_millis(1))
            };
            match self.drop_indexes(&mut pending, timeout).await {
                Ok(dropped) => {
                    gone.extend(dropped);
                    failure = None;
                    break;
                }
                Err((dropped, e)) => {
                    gone.extend(dropped);
                    let lock = sqlstate(&e) == Some(LOCK_NOT_AVAILABLE);
                    failure = Some(e);
                    if !lock {
                        break;
                    }
                    let pause = pause.min(budget.saturating_sub(started.elapsed()));
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
        let _ = self.client.batch_execute("SET lock_timeout = 0").await;
        let why = match &failure {
            None => None,
            // The same blocker stands in front of every one of them.
            Some(e) if sqlstate(e) == Some(LOCK_NOT_AVAILABLE) => Some(format!(
                "lock timeout, {}",
                self.blockers(table, CONFLICTS_ACCESS_EXCLUSIVE, started)
                    .await
            )),
            Some(e) => Some(error_words(e)),
        };
        let mut message = Vec::new();
        if !gone.is_empty() {
            message.push(format!(
                "dropped the invalid leftover index(es) of a failed concurrent reindex: {}",
                gone.join(", ")
            ));
        }
        if !pending.is_empty() {
            message.push(format!(
                "left the invalid leftover index(es) {} ({}); the next concurrent reindex of \
                 the table drops them, or run DROP INDEX CONCURRENTLY on each",
                pending.join(", "),
                why.as_deref().unwrap_or("not tried")
            ));
        }
        (gone, pending, message.join("; "))
    }
}

/// A statement of a step and how it is lock-stepped.
struct Statement<'a> {
    /// The table, qualified: whose lock holders are named, which LOCK TABLE locks.
    table: &'a str,
    sql: &'a str,
    /// The one text parameter of `sql` (`$1`), if any.
    param: Option<&'a str>,
    /// The table or index, as the step and its progress name it.
    object: &'a str,
    take: Take,
    conflicts: &'a [&'a str],
    view: ProgressView,
}

impl<'a> Statement<'a> {
    fn new(table: &'a str, sql: &'a str, object: &'a str) -> Self {
        Self {
            table,
            sql,
            param: None,
            object,
            take: Take::Alone,
            conflicts: CONFLICTS_ACCESS_EXCLUSIVE,
            view: ProgressView::None,
        }
    }

    fn with(mut self, take: Take, conflicts: &'a [&'a str], view: ProgressView) -> Self {
        self.take = take;
        self.conflicts = conflicts;
        self.view = view;
        self
    }

    fn with_param(mut self, param: &'a str) -> Self {
        self.param = Some(param);
        self
    }
}

fn set_lock_timeout(timeout: Duration) -> String {
    format!("SET lock_timeout = '{}ms'", timeout.as_millis().max(1))
}

/// Whether `index` is the old copy a concurrent reindex leaves after the new index
/// took over its name (`_ccold`, `_ccold1`, ...), rather than an unfinished new one.
fn is_old_copy(index: &str) -> bool {
    index
        .trim_end_matches('"')
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .ends_with("_ccold")
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// The server's words for a failed statement (message, detail, hint, SQLSTATE).
fn error_text(result: &std::result::Result<(), tokio_postgres::Error>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(e) => error_words(e),
    }
}

/// The server's words for `e` (message, detail, hint, SQLSTATE), or what became of
/// the session.
fn error_words(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
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
    fn old_copies_are_told_from_new_ones() {
        assert!(is_old_copy("public.t_pkey_ccold"));
        assert!(is_old_copy("public.t_pkey_ccold12"));
        assert!(is_old_copy("public.\"T_pkey_ccold1\""));
        assert!(!is_old_copy("public.t_pkey_ccnew"));
        assert!(!is_old_copy("public.t_pkey_ccnew1"));
        assert!(!is_old_copy("public.ccold_t"));
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
