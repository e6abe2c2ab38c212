//! The job runner: one run of one job, start to finish — slot lease, `before` hooks,
//! the work with its timeout and retries, `after`/`on_failure` hooks, the run record,
//! and notifications.
//!
//! Every way a run can end is recorded; none of them is lost to a failed notification
//! or a failed history write (both are logged, neither fails the job).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use ops_core::jobs::{Event, EventKind, RunRecord, RunStatus, Trigger};
use ops_core::maintain::{LockSteps, MaintainOptions};
use ops_core::repo::{
    BackupFilter, BackupOptions, ForgetOptions, InPlaceOptions, Manifest, PruneOptions, Repository,
    VerifyOptions,
};
use ops_core::{DumpOptions, Error, ErrorKind, PutOutcome, RestoreOptions, Result};

use crate::config::{Config, JobConfig, Which, Work};
use crate::history::{DeliveryRecord, RunHistory};
use crate::hooks::{HookOutcome, run_hook};

/// What a job's work produced.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct WorkOutcome {
    /// The backup made (backup jobs) or checked (verify jobs).
    pub backup_id: Option<String>,
    /// Bytes read.
    pub bytes: Option<u64>,
    /// Bytes new to the repository.
    pub new_bytes: Option<u64>,
    /// Bytes stored.
    pub stored_bytes: Option<u64>,
    /// One line on what was done.
    pub summary: String,
    /// For verify jobs: `structure`, `read_data` or `restore`.
    pub verified: Option<String>,
    /// Rows in the backup made.
    pub rows: Option<u64>,
}

/// Runs jobs of one config, recording them in one history.
#[derive(Debug, Clone)]
pub struct Runner {
    config: Arc<Config>,
    history: RunHistory,
}

impl Runner {
    /// A runner for `config`, recording into `history`.
    pub fn new(config: Arc<Config>, history: RunHistory) -> Self {
        Self { config, history }
    }

    /// The config it runs.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The history it records into.
    pub fn history(&self) -> &RunHistory {
        &self.history
    }

    /// Runs `job` once. `slot` is the schedule slot (none for a manual run); `cancel`
    /// ends the work early (the daemon's shutdown), which still runs the `after` hooks
    /// and records the run as failed. Never fails: the outcome is in the record.
    pub async fn run(
        &self,
        job: &JobConfig,
        trigger: Trigger,
        slot: Option<DateTime<Utc>>,
        cancel: CancellationToken,
    ) -> RunRecord {
        let mut rec = RunRecord::start(&job.name, job.kind, trigger, Utc::now()).with_slot(slot);
        let scrub = |s: String| self.config.secrets().scrub(&s);

        // Another host running the same config against the same repository takes each
        // slot once: the first to create the slot's lease object runs it.
        // The lease is bounded: a store that hangs cannot hold the run (or a shutdown).
        if let Some(slot) = slot {
            let leased = tokio::select! {
                l = tokio::time::timeout(LEASE_BUDGET, self.lease(job, slot)) => l.unwrap_or(Ok(())),
                () = cancel.cancelled() => Err("skipped: dbops was stopping".to_owned()),
            };
            if let Err(why) = leased {
                rec.finish(RunStatus::Skipped, Some(scrub(why)), Utc::now());
                self.record_new(&mut rec).await;
                return rec;
            }
        }

        self.record_new(&mut rec).await;

        let mut before_ran = false;
        let mut outcome: std::result::Result<WorkOutcome, (RunStatus, String)> =
            Ok(WorkOutcome::default());
        for cmd in &job.hooks.before {
            before_ran = true;
            match self.hook(job, cmd, &rec, "running").await {
                HookOutcome::Ok => {}
                HookOutcome::Skip => {
                    outcome = Err((
                        RunStatus::Skipped,
                        format!("the before hook `{cmd}` asked to skip this run (exit 75)"),
                    ));
                    break;
                }
                HookOutcome::Failed(why) => {
                    rec.error_kind = Some("hook".to_owned());
                    outcome = Err((
                        RunStatus::Failure,
                        format!("the before hook `{cmd}` failed ({why}); the job did not run"),
                    ));
                    break;
                }
            }
        }
        if outcome.is_ok() {
            // `start` once the run really starts: a run that a `before` hook skips
            // must not leave a dead-man ping "started" with no end.
            self.notify(&rec, EventKind::Start).await;
            outcome = self
                .attempts(job, &mut rec, &cancel)
                .await
                .map_err(|e| (RunStatus::Failure, e));
        }
        match &outcome {
            Ok(w) => {
                rec.error_kind = None;
                rec.verified.clone_from(&w.verified);
                rec.rows = w.rows;
                rec.backup_id.clone_from(&w.backup_id);
                rec.bytes = w.bytes;
                rec.new_bytes = w.new_bytes;
                rec.stored_bytes = w.stored_bytes;
                rec.status = RunStatus::Success;
            }
            Err((status, why)) => {
                rec.status = *status;
                rec.error = Some(scrub(why.clone()));
            }
        }

        // `after` runs whenever `before` ran (or there was none), failure included:
        // the maintenance mode a `before` hook turned on must be turned off.
        let status_word = rec.status.as_str();
        let mut after_errors = Vec::new();
        if before_ran || job.hooks.before.is_empty() {
            for cmd in &job.hooks.after {
                if let HookOutcome::Failed(why) = self.hook(job, cmd, &rec, status_word).await {
                    after_errors.push(format!("the after hook `{cmd}` failed ({why})"));
                }
            }
        }
        if !after_errors.is_empty() {
            // A job whose clean-up failed has left something behind: say so loudly.
            let mut why = after_errors.join("; ");
            if rec.status == RunStatus::Success {
                why = format!("the job's work succeeded but {why}");
            } else if let Some(e) = &rec.error {
                why = format!("{e}; {why}");
            }
            rec.status = RunStatus::Failure;
            rec.error = Some(scrub(why));
            rec.error_kind.get_or_insert_with(|| "hook".to_owned());
        }

        if rec.status == RunStatus::Failure {
            for cmd in &job.hooks.on_failure {
                if let HookOutcome::Failed(why) = self.hook(job, cmd, &rec, "failure").await {
                    tracing::warn!(
                        "job {}: the on_failure hook `{cmd}` failed: {}",
                        job.name,
                        scrub(why)
                    );
                }
            }
        }
        let status = rec.status;
        let error = rec.error.take();
        rec.finish(status, error, Utc::now());
        if let Err(e) = self.history.update(&rec).await {
            tracing::error!(
                "job {}: the run's outcome could not be recorded: {e}",
                job.name
            );
        }
        match rec.status {
            RunStatus::Success => tracing::info!(
                "job {} ({}) succeeded in {:.1} s{}",
                job.name,
                job.kind,
                rec.duration_secs(),
                rec.backup_id
                    .as_deref()
                    .map(|b| format!(": backup {b}"))
                    .unwrap_or_default()
            ),
            RunStatus::Skipped => tracing::info!(
                "job {} skipped: {}",
                job.name,
                rec.error.as_deref().unwrap_or_default()
            ),
            _ => tracing::error!(
                "job {} ({}) failed after {} attempt(s): {}",
                job.name,
                job.kind,
                rec.attempts,
                rec.error.as_deref().unwrap_or_default()
            ),
        }
        // (A health run writes its own textfile, with the checks' values.)
        if !matches!(job.work, Work::Health { .. }) {
            crate::metrics::write_textfile_of(&self.config, &self.history, None).await;
        }
        if rec.status.is_outcome() {
            let previous = self
                .history
                .last_outcome(&job.name, rec.id)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!("job {}: reading the previous outcome: {e}", job.name);
                    None
                });
            for kind in EventKind::for_outcome(previous, rec.status) {
                self.notify(&rec, kind).await;
            }
        }
        rec
    }

    async fn record_new(&self, rec: &mut RunRecord) {
        match self.history.insert(rec).await {
            Ok(id) => rec.id = id,
            Err(e) => tracing::error!("job {}: the run could not be recorded: {e}", rec.job),
        }
    }

    /// Delivers `kind` about `rec` to the job's notifiers that want it, and records
    /// each delivery. Never fails.
    async fn notify(&self, rec: &RunRecord, kind: EventKind) {
        let Ok(job) = self.config.job(&rec.job) else {
            return;
        };
        let notifiers = self.config.notifiers_of(job);
        if notifiers.is_empty() {
            return;
        }
        let event = Event::new(kind, rec.clone());
        let deliveries = crate::notify::deliver_all(&notifiers, &event).await;
        let records: Vec<DeliveryRecord> = deliveries
            .into_iter()
            .map(|d| {
                DeliveryRecord::new(
                    rec.id,
                    d.notifier,
                    kind,
                    d.error.map(|e| self.config.secrets().scrub(&e)),
                    d.at,
                )
            })
            .collect();
        if let Err(e) = self.history.record_deliveries(&records).await {
            tracing::warn!("job {}: recording notification deliveries: {e}", rec.job);
        }
    }

    async fn hook(&self, job: &JobConfig, cmd: &str, rec: &RunRecord, status: &str) -> HookOutcome {
        let vars = [
            ("DBOPS_JOB", job.name.clone()),
            ("DBOPS_KIND", job.kind.as_str().to_owned()),
            ("DBOPS_STATUS", status.to_owned()),
            ("DBOPS_BACKUP_ID", rec.backup_id.clone().unwrap_or_default()),
            ("DBOPS_ERROR", rec.error.clone().unwrap_or_default()),
            ("DBOPS_RUN_ID", rec.id.to_string()),
        ];
        let remove = crate::hooks::secret_env_names(self.config.secrets().env_names());
        let out = run_hook(cmd, &vars, &remove, job.hooks.timeout).await;
        match &out {
            HookOutcome::Failed(why) => tracing::warn!(
                "job {}: hook `{cmd}` failed: {}",
                job.name,
                self.config.secrets().scrub(why)
            ),
            HookOutcome::Skip => {
                tracing::info!("job {}: hook `{cmd}` asked to skip the run", job.name)
            }
            HookOutcome::Ok => tracing::debug!("job {}: hook `{cmd}` done", job.name),
        }
        out
    }

    /// The work, attempted until it succeeds, fails permanently, runs out of retries
    /// (temporary errors only, backoff never past the next slot), times out or is
    /// cancelled.
    async fn attempts(
        &self,
        job: &JobConfig,
        rec: &mut RunRecord,
        cancel: &CancellationToken,
    ) -> std::result::Result<WorkOutcome, String> {
        let timing = job.timing_or_manual();
        let next_slot = rec.slot.and_then(|s| timing.schedule.next_after(s));
        let deadline = job.timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            rec.attempts += 1;
            let _ = self.history.update(rec).await;
            let work = self.work(job);
            let result = tokio::select! {
                r = work => r,
                () = cancel.clone().cancelled_owned() => {
                    rec.error_kind = Some("interrupted".to_owned());
                    return Err("cancelled: dbops was asked to stop and the grace period ran out; nothing half-written is listed as a backup".to_owned());
                }
                () = sleep_until(deadline) => {
                    rec.error_kind = Some("timeout".to_owned());
                    return Err(format!(
                        "timed out after {} and was stopped; nothing half-written is listed as a backup",
                        ops_core::schedule::format_duration(job.timeout.unwrap_or_default())
                    ));
                }
            };
            let e = match result {
                Ok(w) => return Ok(w),
                Err(e) => e,
            };
            let message = e.to_string();
            rec.error_kind = Some(e.kind().as_str().to_owned());
            if !e.is_temporary() {
                return Err(message);
            }
            let unit: f64 = rand_unit();
            let Some(at) = timing.retry_at(rec.attempts, Utc::now(), next_slot, unit) else {
                return Err(if rec.attempts > job.retries {
                    message
                } else {
                    format!("{message} (not retried: the next run is due before a retry)")
                });
            };
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            tracing::warn!(
                "job {}: attempt {} failed with a temporary error ({}); retrying in {:.0} s",
                job.name,
                rec.attempts,
                self.config.secrets().scrub(&message),
                wait.as_secs_f64()
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.clone().cancelled_owned() => {
                    rec.error_kind = Some("interrupted".to_owned());
                    return Err(format!("{message}; cancelled before the retry"));
                }
                () = sleep_until(deadline) => {
                    rec.error_kind = Some("timeout".to_owned());
                    return Err(format!("{message}; timed out before the retry"));
                }
            }
        }
    }

    fn database_of(&self, database: &str) -> Result<&crate::config::DatabaseConfig> {
        self.config
            .databases
            .get(database)
            .ok_or_else(|| Error::invalid(format!("no database '{database}' in the config")))
    }

    fn maintenance_of(&self, database: &str) -> Result<Arc<dyn ops_core::maintain::Maintenance>> {
        self.database_of(database)?.maintenance()
    }

    fn filter_of(&self, database: Option<&String>) -> ops_core::repo::BackupFilter {
        database
            .and_then(|d| self.config.databases.get(d))
            .map(crate::config::DatabaseConfig::filter)
            .unwrap_or_default()
    }

    async fn pick(
        &self,
        repo: &Repository,
        database: Option<&String>,
        which: Which,
    ) -> Result<Vec<Manifest>> {
        let filter = self.filter_of(database);
        match which {
            Which::Latest => Ok(vec![repo.select("latest", &filter).await?]),
            Which::All => repo.list_backups_matching(&filter).await,
        }
    }

    /// One attempt at the job's work.
    ///
    /// # Errors
    /// The library's errors (temporary ones are retried by the caller).
    pub fn work<'a>(
        &'a self,
        job: &'a JobConfig,
    ) -> futures::future::BoxFuture<'a, Result<WorkOutcome>> {
        Box::pin(self.work_inner(job))
    }

    async fn work_inner(&self, job: &JobConfig) -> Result<WorkOutcome> {
        match &job.work {
            Work::Backup {
                database,
                repository,
                tags,
                parallel,
                filter,
                paths,
                excludes,
                physical,
            } => {
                let db = self.database_of(database)?;
                let engine = if *physical {
                    db.physical_engine()?
                } else {
                    db.engine()?
                };
                let repo = open_repository(&self.config, repository).await?;
                let options = BackupOptions::default()
                    .with_dump(
                        DumpOptions::default()
                            .with_jobs(*parallel)
                            .with_filter(filter.clone()),
                    )
                    .with_tags(tags.iter().cloned());
                let options = if paths.is_empty() {
                    options
                } else {
                    options.with_files(ops_core::repo::FileTrees::new(paths, excludes)?)
                };
                let m = repo.backup(engine.as_ref(), &options).await?;
                Ok(WorkOutcome {
                    backup_id: Some(m.id.clone()),
                    bytes: Some(m.stats.bytes),
                    new_bytes: Some(m.stats.new_bytes),
                    stored_bytes: Some(m.stats.stored_bytes),
                    summary: format!("backup {} of {}", m.id, m.database),
                    rows: Some(m.tables().values().sum()),
                    ..WorkOutcome::default()
                })
            }
            Work::Verify {
                repository,
                database,
                which,
                read_data,
                restore,
                restore_into,
            } => {
                let repo = open_repository(&self.config, repository).await?;
                let manifests = self.pick(&repo, database.as_ref(), *which).await?;
                let report = repo
                    .verify(&manifests, &VerifyOptions::new(*read_data))
                    .await?;
                if !report.ok() {
                    let first = report
                        .problems
                        .first()
                        .map(|p| format!("backup {}: {}", p.backup, p.message))
                        .unwrap_or_default();
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "verification found {} problem(s); first: {first}",
                            report.problems.len()
                        ),
                    ));
                }
                let newest = manifests.iter().max_by_key(|m| m.finished).cloned();
                let mut proven = false;
                let mut checked = String::new();
                if *restore && let Some(m) = &newest {
                    let checks = crate::integrity::checks_for_backup(&self.config, m);
                    let (check, integrity) = dbops::prove_restore_checked(
                        &repo,
                        m,
                        restore_into.as_ref().map(ops_core::Secret::expose),
                        &RestoreOptions::default(),
                        &checks,
                    )
                    .await?;
                    if !check.ok() {
                        return Err(Error::new(
                            ErrorKind::Mismatch,
                            format!(
                                "restoring backup {} did not give back what was backed up",
                                m.id
                            ),
                        ));
                    }
                    let failed: Vec<String> = integrity
                        .iter()
                        .filter(|r| !r.holds())
                        .map(describe_integrity)
                        .collect();
                    if !failed.is_empty() {
                        return Err(Error::new(
                            ErrorKind::Mismatch,
                            format!(
                                "backup {} restores, but on the restored copy: {}",
                                m.id,
                                failed.join("; ")
                            ),
                        ));
                    }
                    if !integrity.is_empty() {
                        checked =
                            format!(", {} integrity checks pass on the copy", integrity.len());
                    }
                    proven = true;
                }
                // A restore proof is recorded only when a backup was really restored.
                let level = if proven {
                    "restore"
                } else if *read_data {
                    "read_data"
                } else {
                    "structure"
                };
                Ok(WorkOutcome {
                    backup_id: newest.map(|m| m.id),
                    summary: format!("{} backups verified{checked}", manifests.len()),
                    verified: Some(level.to_owned()),
                    ..WorkOutcome::default()
                })
            }
            Work::Forget {
                repository,
                database,
                rules,
                group_by,
                prune,
                keep_safety,
            } => {
                let repo = open_repository(&self.config, repository).await?;
                let options = ForgetOptions::default()
                    .with_keep_safety(*keep_safety)
                    .with_group_by(*group_by)
                    .with_filter(self.filter_of(database.as_ref()));
                let report = repo.forget(rules, Utc::now(), &options).await?;
                if *prune {
                    repo.prune(&PruneOptions::default()).await?;
                }
                Ok(WorkOutcome {
                    summary: format!("forgot {} backups", report.removed.len()),
                    ..WorkOutcome::default()
                })
            }
            Work::Health { checks } => {
                let summary = crate::health::run(&self.config, &self.history, checks).await?;
                crate::metrics::write_textfile_of(&self.config, &self.history, Some(&summary))
                    .await;
                let bad: Vec<String> = summary
                    .checks
                    .iter()
                    .filter(|c| {
                        matches!(
                            c.status,
                            ops_core::HealthStatus::Unhealthy | ops_core::HealthStatus::Unknown
                        )
                    })
                    .map(|c| format!("{} {} {}: {}", c.service, c.name, c.status, c.reason))
                    .collect();
                let line = format!(
                    "health {}: {} checks, {} critical or unknown",
                    summary.status,
                    summary.checks.len(),
                    bad.len()
                );
                verdict(line, &bad)
            }
            Work::Maintenance {
                database,
                action,
                tables,
                lock_wait,
            } => {
                let db = self.maintenance_of(database)?;
                let options = MaintainOptions::default()
                    .with_tables(tables.clone())
                    .with_lock(LockSteps::default().with_total(*lock_wait));
                let report = db.maintain(*action, &options).await?;
                let bad: Vec<&ops_core::maintain::MaintainStep> =
                    report.steps.iter().filter(|s| !s.outcome.is_ok()).collect();
                let line = format!(
                    "{action} on {database}: {} steps, {} failed",
                    report.steps.len(),
                    bad.len()
                );
                if let Some(first) = bad.first() {
                    let locked = bad
                        .iter()
                        .all(|s| s.outcome == ops_core::maintain::StepOutcome::LockTimeout);
                    let err = Error::new(
                        if locked {
                            ErrorKind::Locked
                        } else {
                            ErrorKind::Database
                        },
                        format!(
                            "{line}; first: {} {:?}: {}",
                            first.object,
                            first.outcome,
                            first.message.as_deref().unwrap_or("")
                        ),
                    );
                    // Only a lock that was not free is worth another try later.
                    return Err(if locked { err.temporary() } else { err });
                }
                Ok(WorkOutcome {
                    summary: line,
                    ..WorkOutcome::default()
                })
            }
            Work::Integrity { checks, database } => {
                let run = crate::integrity::run(&self.config, checks, database.as_deref()).await?;
                let bad: Vec<String> = run
                    .checks
                    .iter()
                    .filter(|c| c.result.status != ops_core::HealthStatus::Healthy)
                    .map(|c| format!("{} on {}", describe_integrity(&c.result), c.database))
                    .collect();
                let line = format!(
                    "integrity {}: {} checks, {} not passing",
                    run.status(),
                    run.checks.len(),
                    bad.len()
                );
                verdict(line, &bad)
            }
            Work::Archive { database, spec } => {
                let db = self.maintenance_of(database)?;
                let report = db.archive(spec).await?;
                Ok(WorkOutcome {
                    summary: format!(
                        "{} rows of {} moved into {} in {} batches, {} left",
                        report.rows, spec.table, spec.into, report.batches, report.remaining
                    ),
                    rows: Some(report.rows),
                    ..WorkOutcome::default()
                })
            }
            Work::Prune {
                repository,
                max_unused,
            } => {
                let repo = open_repository(&self.config, repository).await?;
                let r = repo
                    .prune(&PruneOptions::default().with_max_unused(*max_unused))
                    .await?;
                Ok(WorkOutcome {
                    summary: format!(
                        "{} packs deleted, {} bytes freed",
                        r.packs_deleted, r.bytes_freed
                    ),
                    ..WorkOutcome::default()
                })
            }
            Work::Copy {
                repository,
                to,
                database,
                which,
            } => {
                let from = open_repository(&self.config, repository).await?;
                let dest = open_repository(&self.config, to).await?;
                let manifests = self.pick(&from, database.as_ref(), *which).await?;
                let mut copied = 0;
                let mut last = None;
                for m in &manifests {
                    let (c, new) = dest.copy_backup(&from, m).await?;
                    copied += usize::from(new);
                    last = Some(c.id);
                }
                Ok(WorkOutcome {
                    backup_id: last,
                    summary: format!("{copied} of {} backups copied", manifests.len()),
                    ..WorkOutcome::default()
                })
            }
            Work::Restore {
                database,
                repository,
                backup,
                clean,
                create,
                safety_backup,
                terminate_connections,
                parallel,
            } => {
                let db = self.database_of(database)?;
                let engine = db.engine()?;
                let sessions = db.maintenance()?;
                let repo = open_repository(&self.config, repository).await?;
                // `latest` means the newest backup of the target's own database name;
                // `latest:NAME` names another, an id names itself.
                let filter = BackupFilter::default().with_engine(engine.name());
                let filter = if backup == "latest" {
                    filter.with_database(engine.database())
                } else {
                    filter
                };
                let m = repo.select(backup, &filter).await?;
                let options = RestoreOptions::default()
                    .with_jobs(*parallel)
                    .with_clean(*clean)
                    .with_create(*create);
                let in_place = InPlaceOptions::default()
                    .with_safety_backup(*safety_backup)
                    .with_end_sessions(*terminate_connections)
                    .with_backup(
                        BackupOptions::default()
                            .with_dump(DumpOptions::default().with_jobs(*parallel)),
                    );
                let report = repo
                    .restore_in_place(&m, engine.as_ref(), sessions.as_ref(), &options, &in_place)
                    .await?;
                let ended = report.ended.as_ref().map_or(0, |r| r.sessions.len());
                Ok(WorkOutcome {
                    backup_id: Some(m.id.clone()),
                    rows: Some(report.restore.tables.values().sum()),
                    summary: format!(
                        "restored backup {} of {} into {}{}{}",
                        m.id,
                        m.database,
                        engine.database(),
                        report
                            .safety_backup
                            .as_ref()
                            .map(|s| format!("; safety backup {} holds what it replaced", s.id))
                            .unwrap_or_default(),
                        if ended > 0 {
                            format!("; {ended} connected sessions ended")
                        } else {
                            String::new()
                        }
                    ),
                    ..WorkOutcome::default()
                })
            }
        }
    }

    /// Takes the lease for `slot` of `job` in the job's repository; `Err` says who
    /// holds it. A store that cannot be reached is not a reason to skip: the job
    /// itself will meet (and report) the same problem.
    async fn lease(&self, job: &JobConfig, slot: DateTime<Utc>) -> std::result::Result<(), String> {
        let Some(r) = job
            .work
            .repository()
            .and_then(|name| self.config.repositories.get(name))
        else {
            return Ok(());
        };
        let Ok(target) = dbops::target(&r.url, &dbops::TargetOptions::default()) else {
            return Ok(());
        };
        let prefix = format!("leases/{}/", job.name);
        let key = format!("{prefix}{}", slot.timestamp_millis());
        let me = serde_json::json!({
            "host": ops_core::repo::host_name(),
            "pid": std::process::id(),
            "taken": Utc::now(),
        });
        match target
            .put_if_absent(&key, Bytes::from(me.to_string()))
            .await
        {
            Ok(PutOutcome::Created) => {
                // Earlier slots' leases are no longer needed (best effort: a store
                // that refuses deletes keeps a few small objects).
                if let Ok(list) = list_keys(target.as_ref(), &prefix).await {
                    for k in list {
                        let older = k
                            .rsplit('/')
                            .next()
                            .and_then(|s| s.parse::<i64>().ok())
                            .is_some_and(|ms| ms < slot.timestamp_millis());
                        if older {
                            let _ = target.delete(&k).await;
                        }
                    }
                }
                Ok(())
            }
            Ok(_) => {
                let holder = match target.get_range(&key, 0..4096).await {
                    Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
                        .ok()
                        .and_then(|v| v["host"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "another host".to_owned()),
                    Err(_) => "another host".to_owned(),
                };
                Err(format!(
                    "skipped: {holder} already took the slot of {} for this job (one run per slot across hosts)",
                    slot.format("%Y-%m-%d %H:%M:%S UTC")
                ))
            }
            Err(e) => {
                tracing::warn!(
                    "job {}: the slot lease could not be taken ({e}); running anyway",
                    job.name
                );
                Ok(())
            }
        }
    }
}

/// The outcome of a health or integrity run: a success, or with `bad` findings a
/// failure. Not an error of the library: the run fails so that it notifies (once, and
/// again on recovery), and nothing retries it.
fn verdict(line: String, bad: &[String]) -> Result<WorkOutcome> {
    if bad.is_empty() {
        return Ok(WorkOutcome {
            summary: line,
            ..WorkOutcome::default()
        });
    }
    Err(Error::new(
        ErrorKind::Mismatch,
        format!("{line}: {}", bad.join("; ")),
    ))
}

/// One integrity verdict in a line: the check, its status, the rows or the error.
fn describe_integrity(r: &ops_core::maintain::IntegrityResult) -> String {
    match (&r.rows, &r.error) {
        (_, Some(e)) => format!("{} could not run: {e}", r.name),
        (Some(rows), None) => format!("{} {}: {} rows", r.name, r.status, rows.count),
        (None, None) => format!("{} {}", r.name, r.status),
    }
}

/// Opens repository `name` of `config` as jobs use it: its password (else
/// `DBOPS_PASSWORD`), its lock wait, and the cache under the state directory.
///
/// # Errors
/// An unknown name; the repository's open errors.
pub async fn open_repository(config: &Config, name: &str) -> Result<Repository> {
    let r = config
        .repositories
        .get(name)
        .ok_or_else(|| Error::invalid(format!("no repository '{name}' in the config")))?;
    let target = dbops::target(&r.url, &dbops::TargetOptions::default())?;
    let env_password = std::env::var("DBOPS_PASSWORD")
        .ok()
        .map(ops_core::Secret::new);
    let password = r.password.clone().or(env_password);
    let repo = Repository::open(target, password.as_ref())
        .await
        .map_err(|e| e.during(format!("opening repository '{name}'")))?;
    Ok(repo
        .with_lock_wait(r.lock_wait)
        .with_cache_dir(config.state_dir.join("cache")))
}

/// Repositories opened once and handed out again: opening derives the key from the
/// password, deliberately slow, so checks that read several manifests, or run every
/// minute, open each repository once.
#[derive(Debug, Clone, Default)]
pub struct OpenRepositories(Arc<tokio::sync::Mutex<std::collections::HashMap<String, Repository>>>);

impl OpenRepositories {
    /// Repository `name` of `config`, opened on first use.
    ///
    /// # Errors
    /// As [`open_repository`].
    pub async fn get(&self, config: &Config, name: &str) -> Result<Repository> {
        let mut open = self.0.lock().await;
        if let Some(r) = open.get(name) {
            return Ok(r.clone());
        }
        let r = open_repository(config, name).await?;
        open.insert(name.to_owned(), r.clone());
        Ok(r)
    }
}

async fn list_keys(target: &dyn ops_core::BackupTarget, prefix: &str) -> Result<Vec<String>> {
    use futures::TryStreamExt as _;
    let items: Vec<ops_core::ObjectMeta> = target.list(prefix).await?.try_collect().await?;
    Ok(items.into_iter().map(|m| m.key).collect())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A number in [0, 1) for the retry's place in its backoff window.
fn rand_unit() -> f64 {
    rand::random::<f64>()
}

/// The most a slot lease may take; past it the run goes ahead (the job itself will
/// meet a store that hangs, and report it within its own timeout).
const LEASE_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);
