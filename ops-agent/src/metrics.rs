//! Prometheus metrics: the families dbops exposes, filled from the run history (so
//! counters survive restarts and one-shot runs), the newest health summary, and the
//! repositories' backup counts; encoded by `prometheus-client`.
//!
//! Names: the five backup series an operator's dashboards already query
//! (`backup_attempts_total`, `backup_success_total`, `backup_last_success_timestamp`,
//! `backup_duration_seconds`, `backup_size_bytes`, labelled `job`, `engine`,
//! `database`, `repository`), everything else under `dbops_`. Label values come from
//! the config (job, database, repository, notifier, check and service names), never
//! from data, so they are bounded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use ops_core::jobs::RunStatus;
use ops_core::{Error, HealthSummary, Result};

use crate::config::{Config, Work};
use crate::history::RunHistory;
use crate::probes::backups::median;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupLabels {
    job: String,
    engine: String,
    database: String,
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerifyLabels {
    job: String,
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierLabels {
    notifier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    service: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepositoryLabels {
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// What the metrics are made of, gathered once per refresh.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// The newest health summary, if health ran.
    pub health: Option<HealthSummary>,
    /// Backups per repository, where the repository was read.
    pub repository_backups: BTreeMap<String, u64>,
    /// Bytes its backups stored, per repository (what the repository holds, before
    /// prune reclaims what forgotten backups alone used).
    pub repository_bytes: BTreeMap<String, u64>,
    /// Stored bytes of the archived WAL, per repository that holds some.
    pub wal_archived_bytes: BTreeMap<String, u64>,
    /// How far back a point-in-time restore reaches, per repository: from the oldest
    /// base backup's start to the newest archived WAL, seconds.
    pub recovery_window_seconds: BTreeMap<String, f64>,
}

/// Reads what the metrics say of each repository: its backups' count and stored
/// bytes, and its WAL archive's size and recovery window (from the oldest base
/// backup's start to the newest archived WAL). Each read is bounded by `budget`: a
/// store that hangs leaves its numbers as they were, never the caller waiting.
pub async fn refresh_repositories(
    config: &Config,
    repositories: &crate::runner::OpenRepositories,
    snapshot: &mut Snapshot,
    budget: std::time::Duration,
) {
    for name in config.repositories.keys() {
        let counted = tokio::time::timeout(budget, async {
            repositories.get(config, name).await?.list_backups().await
        })
        .await;
        let list = match counted {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                tracing::warn!("counting the backups of repository {name}: {e}");
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    "counting the backups of repository {name}: no answer within {} s",
                    budget.as_secs()
                );
                continue;
            }
        };
        snapshot
            .repository_backups
            .insert(name.clone(), list.len() as u64);
        snapshot.repository_bytes.insert(
            name.clone(),
            list.iter().map(|m| m.stats.stored_bytes).sum(),
        );
        let oldest_base = list
            .iter()
            .filter(|m| {
                m.snapshot
                    .get(ops_core::repo::LOG_KIND_KEY)
                    .map(String::as_str)
                    == Some("wal")
            })
            .map(|m| m.started)
            .min();
        let wal = tokio::time::timeout(budget, async {
            let repo = repositories.get(config, name).await?;
            dbops::postgres::wal::check_archive(&repo).await
        })
        .await;
        match wal {
            Ok(Ok(states)) if !states.is_empty() => {
                snapshot
                    .wal_archived_bytes
                    .insert(name.clone(), states.iter().map(|s| s.stored_bytes).sum());
                let newest = states.iter().filter_map(|s| s.last_archived).max();
                if let (Some(from), Some(to)) = (oldest_base, newest) {
                    snapshot
                        .recovery_window_seconds
                        .insert(name.clone(), (to - from).num_seconds().max(0) as f64);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("reading the WAL archive of repository {name}: {e}"),
            Err(_) => tracing::warn!(
                "reading the WAL archive of repository {name}: no answer within {} s",
                budget.as_secs()
            ),
        }
    }
}

/// The engine and database labels of configured database `database`: the URL's
/// engine and database name (as backups record them), else the config's name.
fn database_label(config: &Config, database: &str) -> (String, String) {
    let filter = config
        .databases
        .get(database)
        .map(crate::config::DatabaseConfig::filter)
        .unwrap_or_default();
    (
        filter.engine.unwrap_or_default(),
        filter.database.unwrap_or_else(|| database.to_owned()),
    )
}

/// Renders every metric as Prometheus text (OpenMetrics as `prometheus-client`
/// encodes it).
///
/// # Errors
/// Run history errors; an encoding error (internal).
pub async fn render(config: &Config, history: &RunHistory, snapshot: &Snapshot) -> Result<String> {
    let mut registry = Registry::default();

    let attempts = Family::<BackupLabels, Counter>::default();
    let success = Family::<BackupLabels, Counter>::default();
    let last_success = Family::<BackupLabels, FGauge>::default();
    let duration = Family::<BackupLabels, FGauge>::default();
    let size = Family::<BackupLabels, FGauge>::default();
    let stored = Family::<BackupLabels, FGauge>::default();
    let new_bytes = Family::<BackupLabels, FGauge>::default();
    let median_size = Family::<BackupLabels, FGauge>::default();
    let rows = Family::<BackupLabels, FGauge>::default();
    let runs_total = Family::<RunLabels, Counter>::default();
    let retries = Family::<JobLabels, Counter>::default();
    let last_failed = Family::<JobLabels, Gauge>::default();
    let job_last_success = Family::<JobLabels, FGauge>::default();
    let verify_success = Family::<VerifyLabels, FGauge>::default();
    let verify_proof = Family::<VerifyLabels, FGauge>::default();
    let notify_failures = Family::<NotifierLabels, Counter>::default();
    let health_status = Family::<CheckLabels, Gauge>::default();
    let health_value = Family::<CheckLabels, FGauge>::default();
    let repo_backups = Family::<RepositoryLabels, Gauge>::default();
    let repo_bytes = Family::<RepositoryLabels, FGauge>::default();
    let wal_bytes = Family::<RepositoryLabels, FGauge>::default();
    let recovery_window = Family::<RepositoryLabels, FGauge>::default();
    let build = Family::<BuildLabels, Gauge>::default();

    let counts = history.counts().await?;
    for job in config.jobs.values() {
        let kind = job.kind.as_str().to_owned();
        let jl = JobLabels {
            job: job.name.clone(),
            kind: kind.clone(),
        };
        let mut outcomes = 0u64;
        let mut attempts_sum = 0u64;
        for status in [RunStatus::Success, RunStatus::Failure, RunStatus::Skipped] {
            let n: u64 = counts
                .iter()
                .filter(|c| c.job == job.name && c.status == status)
                .map(|c| c.runs)
                .sum();
            runs_total
                .get_or_create(&RunLabels {
                    job: job.name.clone(),
                    kind: kind.clone(),
                    status: status.as_str().to_owned(),
                })
                .inc_by(n);
            if status.is_outcome() {
                outcomes += n;
                attempts_sum += counts
                    .iter()
                    .filter(|c| c.job == job.name && c.status == status)
                    .map(|c| c.attempts)
                    .sum::<u64>();
            }
        }
        retries
            .get_or_create(&jl)
            .inc_by(attempts_sum.saturating_sub(outcomes));

        let recent = history.runs(Some(&job.name), 50).await?;
        let last_outcome = recent.iter().find(|r| r.status.is_outcome());
        last_failed.get_or_create(&jl).set(i64::from(
            last_outcome.is_some_and(|r| r.status == RunStatus::Failure),
        ));
        let successes: Vec<_> = recent
            .iter()
            .filter(|r| r.status == RunStatus::Success)
            .collect();
        if let Some(t) = successes.first().and_then(|r| r.ended) {
            job_last_success
                .get_or_create(&jl)
                .set(t.timestamp_millis() as f64 / 1000.0);
        }

        match &job.work {
            Work::Backup {
                database,
                repository,
                ..
            } => {
                let (engine, dbname) = database_label(config, database);
                let bl = BackupLabels {
                    job: job.name.clone(),
                    engine,
                    database: dbname,
                    repository: repository.clone(),
                };
                let ok: u64 = counts
                    .iter()
                    .filter(|c| c.job == job.name && c.status == RunStatus::Success)
                    .map(|c| c.runs)
                    .sum();
                attempts.get_or_create(&bl).inc_by(outcomes);
                success.get_or_create(&bl).inc_by(ok);
                // Never succeeded: 0, so that `time() - backup_last_success_timestamp`
                // is huge and "no backup in 8 hours" fires for a job that never ran.
                last_success.get_or_create(&bl).set(
                    successes
                        .first()
                        .and_then(|r| r.ended)
                        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
                );
                if let Some(r) = successes.first() {
                    duration.get_or_create(&bl).set(r.duration_secs());
                    if let Some(n) = r.rows {
                        rows.get_or_create(&bl).set(n as f64);
                    }
                    size.get_or_create(&bl).set(r.bytes.unwrap_or(0) as f64);
                    stored
                        .get_or_create(&bl)
                        .set(r.stored_bytes.unwrap_or(0) as f64);
                    new_bytes
                        .get_or_create(&bl)
                        .set(r.new_bytes.unwrap_or(0) as f64);
                }
                let mut before: Vec<u64> = successes
                    .iter()
                    .skip(1)
                    .take(7)
                    .filter_map(|r| r.bytes)
                    .collect();
                if let Some(m) = median(&mut before) {
                    median_size.get_or_create(&bl).set(m as f64);
                }
            }
            Work::Verify { repository, .. } => {
                let vl = VerifyLabels {
                    job: job.name.clone(),
                    repository: repository.clone(),
                };
                if let Some(t) = successes.first().and_then(|r| r.ended) {
                    verify_success
                        .get_or_create(&vl)
                        .set(t.timestamp_millis() as f64 / 1000.0);
                }
                // A job meant to prove restores shows 0 until it has: an alert on the
                // proof's age fires for a proof that never happened.
                let proof = successes
                    .iter()
                    .find(|r| r.verified.as_deref() == Some("restore"))
                    .and_then(|r| r.ended);
                if proof.is_some() || matches!(job.work, Work::Verify { restore: true, .. }) {
                    verify_proof
                        .get_or_create(&vl)
                        .set(proof.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0));
                }
            }
            _ => {}
        }
    }
    // Every configured notifier from 0, so that the first failures are an increase.
    let failures: BTreeMap<String, u64> = history.delivery_failures().await?.into_iter().collect();
    for notifier in config.notifications.keys() {
        notify_failures
            .get_or_create(&NotifierLabels {
                notifier: notifier.clone(),
            })
            .inc_by(failures.get(notifier).copied().unwrap_or(0));
    }
    if let Some(h) = &snapshot.health {
        for c in &h.checks {
            let l = CheckLabels {
                service: c.service.clone(),
                check: c.name.clone(),
            };
            health_status
                .get_or_create(&l)
                .set(i64::from(c.status.nagios_code()));
            // Negative values mean "none yet" (no backup, no proof): not a number to plot.
            if let Some(v) = c.value.filter(|v| *v >= 0.0) {
                health_value.get_or_create(&l).set(v);
            }
        }
    }
    for (repository, n) in &snapshot.repository_backups {
        repo_backups
            .get_or_create(&RepositoryLabels {
                repository: repository.clone(),
            })
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    for (repository, n) in &snapshot.wal_archived_bytes {
        wal_bytes
            .get_or_create(&RepositoryLabels {
                repository: repository.clone(),
            })
            .set(*n as f64);
    }
    for (repository, n) in &snapshot.recovery_window_seconds {
        recovery_window
            .get_or_create(&RepositoryLabels {
                repository: repository.clone(),
            })
            .set(*n);
    }
    for (repository, n) in &snapshot.repository_bytes {
        repo_bytes
            .get_or_create(&RepositoryLabels {
                repository: repository.clone(),
            })
            .set(*n as f64);
    }
    build
        .get_or_create(&BuildLabels {
            version: ops_core::VERSION.to_owned(),
        })
        .set(1);

    registry.register(
        "backup_attempts",
        "Finished backup runs (after their retries)",
        attempts,
    );
    registry.register("backup_success", "Successful backup runs", success);
    registry.register(
        "backup_last_success_timestamp",
        "When the newest successful backup finished (Unix seconds)",
        last_success,
    );
    registry.register(
        "backup_duration_seconds",
        "How long the newest successful backup took",
        duration,
    );
    registry.register(
        "backup_size_bytes",
        "Logical size of the newest successful backup",
        size,
    );
    registry.register(
        "dbops_backup_stored_bytes",
        "Bytes the newest successful backup stored (compressed, new)",
        stored,
    );
    registry.register(
        "dbops_backup_new_bytes",
        "Bytes of the newest successful backup not already in the repository",
        new_bytes,
    );
    registry.register(
        "dbops_backup_size_median_bytes",
        "Median logical size of the 7 successful backups before the newest",
        median_size,
    );
    registry.register(
        "dbops_job_runs",
        "Runs by job and status (skipped slots included)",
        runs_total,
    );
    registry.register(
        "dbops_job_retries",
        "Extra attempts made after temporary failures",
        retries,
    );
    registry.register(
        "dbops_job_last_run_failed",
        "1 when the job's newest finished run failed",
        last_failed,
    );
    registry.register(
        "dbops_job_last_success_timestamp_seconds",
        "When the job last succeeded (Unix seconds)",
        job_last_success,
    );
    registry.register(
        "dbops_verify_last_success_timestamp_seconds",
        "When the verify job last succeeded (Unix seconds)",
        verify_success,
    );
    registry.register(
        "dbops_verify_last_restore_proof_timestamp_seconds",
        "When a backup was last proven by a real restore (Unix seconds)",
        verify_proof,
    );
    registry.register(
        "dbops_notification_failures",
        "Notification deliveries that failed",
        notify_failures,
    );
    registry.register(
        "dbops_health_status",
        "Health check status: 0 ok, 1 warning, 2 critical, 3 unknown",
        health_status,
    );
    registry.register(
        "dbops_health_value",
        "Health check value, in the check's unit",
        health_value,
    );
    registry.register(
        "dbops_repository_backups",
        "Backups in the repository",
        repo_backups,
    );
    registry.register(
        "dbops_backup_rows",
        "Rows in the newest successful backup (all tables)",
        rows,
    );
    registry.register(
        "dbops_repository_stored_bytes",
        "Bytes the repository's listed backups stored",
        repo_bytes,
    );
    registry.register(
        "dbops_wal_archived_bytes",
        "Stored bytes of the repository's WAL archive",
        wal_bytes,
    );
    registry.register(
        "dbops_recovery_window_seconds",
        "From the oldest base backup's start to the newest archived WAL: how far back a point-in-time restore reaches",
        recovery_window,
    );
    registry.register("dbops_build_info", "The dbops version", build);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| Error::internal(format!("encoding metrics: {e}")))?;
    Ok(prometheus_text(&text))
}

/// The crate's OpenMetrics text as the Prometheus text format (0.0.4) that
/// node_exporter's textfile collector and `promtool check metrics` read: a counter's
/// HELP and TYPE name its `_total` samples, and there is no `# EOF`. Prometheus
/// itself reads either.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Writes `text` to `path` for node_exporter's textfile collector: a temporary file
/// beside it, then a rename, so the collector never reads half a file.
///
/// # Errors
/// [`ops_core::ErrorKind::Io`] naming the file.
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dbops.prom".to_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                // The collector runs as another user: the textfile is world-readable.
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
            }
            std::fs::rename(&tmp, path)
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(
                format!("writing the metrics textfile {}", path.display()),
                e,
            )
        })
}

/// Writes the config's textfile (if it has one) with what the history holds and, when
/// given, a health summary. Failures are logged: metrics never fail a run.
pub async fn write_textfile_of(
    config: &Config,
    history: &RunHistory,
    health: Option<&HealthSummary>,
) {
    let Some(path) = &config.metrics_textfile else {
        return;
    };
    let snapshot = Snapshot {
        health: merged_health(config, health),
        ..Snapshot::default()
    };
    let written = match render(config, history, &snapshot).await {
        Ok(text) => write_textfile(path, &text),
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::warn!("the metrics textfile was not written: {e}");
    }
}

/// The health summary the textfile shows: the newest result of every check, kept in
/// `state_dir/health.json` between one-shot runs, so that a run that checks part of
/// the suite (or none) does not make the other checks' series vanish.
fn merged_health(config: &Config, fresh: Option<&HealthSummary>) -> Option<HealthSummary> {
    let file = config.state_dir.join("health.json");
    let kept: Option<HealthSummary> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let merged = match (kept, fresh) {
        (None, None) => return None,
        (Some(k), None) => return Some(k),
        (None, Some(f)) => f.clone(),
        (Some(mut k), Some(f)) => {
            k.checks.retain(|c| {
                !f.checks
                    .iter()
                    .any(|n| n.name == c.name && n.service == c.service)
            });
            k.checks.extend(f.checks.iter().cloned());
            k.timestamp = f.timestamp;
            k
        }
    };
    if let Ok(text) = serde_json::to_vec(&merged) {
        let tmp = file.with_extension("json.tmp");
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .is_err()
        {
            tracing::warn!("the health state {} could not be written", file.display());
        }
    }
    Some(merged)
}
