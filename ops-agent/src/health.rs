//! A config's health suite: every probe of every database, service, repository, local
//! disk and backup job, each with its service name and time budget.
//!
//! Services: a database's probes go under its config name (`erp`), a service's under
//! its name (`cache`), a repository's under `repository:NAME`, a backup job's under
//! `backups:JOB`, extra disk paths under `disk`.

use std::sync::Arc;

use ops_core::{HealthSummary, Probe, Result};

use crate::config::{Config, Work};
use crate::history::RunHistory;
use crate::probes::{backups, disk};
use crate::runner::OpenRepositories;

/// Every probe of `config`. `history` feeds the backup probes; `repositories` opens
/// each repository the backup probes read once.
///
/// # Errors
/// A database or service URL that no probe can be built for (checked by the config
/// already, so in practice none).
pub fn suite(
    config: &Arc<Config>,
    history: &RunHistory,
    repositories: &OpenRepositories,
) -> Result<Vec<Probe>> {
    let h = &config.health;
    let budget = h.budget.total();
    let mut probes = Vec::new();
    for (name, db) in &config.databases {
        let url = db.url.as_str();
        let checks = if url.starts_with("postgres") {
            let mut engine = dbops::postgres::PostgresEngine::new(url)?;
            if let Some(p) = &db.password {
                engine = engine.with_password(p.clone());
            }
            dbops::postgres::health::probes(&engine, &h.thresholds, h.budget)
        } else {
            let mut engine = dbops::mariadb::MariaDbEngine::new(url)?;
            if let Some(p) = &db.password {
                engine = engine.with_password(p.clone());
            }
            dbops::mariadb::health::probes(&engine, &h.thresholds, h.budget)
        };
        probes.extend(
            checks
                .into_iter()
                .map(|c| Probe::new(name.clone(), c).with_budget(budget)),
        );
    }
    for (name, svc) in &config.services {
        if svc.kind == "redis" {
            for c in crate::probes::redis::probes(svc.url.expose(), &h.thresholds, h.budget)? {
                probes.push(Probe::new(name.clone(), c).with_budget(budget));
            }
        }
    }
    for (name, repo) in &config.repositories {
        let service = format!("repository:{name}");
        let limits = h
            .thresholds
            .limits("repository_writable", dbops::storage::health::ROUND_TRIP);
        let check: Arc<dyn ops_core::HealthCheck> =
            match dbops::target(&repo.url, &dbops::TargetOptions::default()) {
                Ok(target) => Arc::new(
                    dbops::storage::health::RepositoryWritable::new(target, limits)
                        .with_timeout(budget.saturating_sub(std::time::Duration::from_secs(1))),
                ),
                // A store that cannot even be opened is as unwritable as it gets.
                Err(e) => Arc::new(Refused {
                    name: "repository_writable",
                    reason: format!("could not open the repository's store: {e}"),
                }),
            };
        probes.push(Probe::new(service.clone(), check).with_budget(budget));
        probes.push(
            Probe::new(
                service.clone(),
                Arc::new(crate::probes::wal::WalArchiveCheck {
                    repository: name.clone(),
                    config: Arc::clone(config),
                    repositories: repositories.clone(),
                    limits: h.thresholds.limits(
                        crate::probes::wal::NAME,
                        crate::probes::wal::WAL_ARCHIVE_AGE,
                    ),
                }),
            )
            .with_budget(budget),
        );
        if let Some(path) = local_path(&repo.url) {
            probes.push(
                Probe::new(
                    service.clone(),
                    Arc::new(disk::DiskFree::new(
                        path.clone(),
                        h.thresholds.limits("disk_free", disk::DISK_FREE),
                    )),
                )
                .with_budget(budget),
            );
            let jobs: Vec<String> = config
                .jobs
                .values()
                .filter(
                    |j| matches!(&j.work, Work::Backup { repository, .. } if repository == name),
                )
                .map(|j| j.name.clone())
                .collect();
            if !jobs.is_empty() {
                probes.push(
                    Probe::new(
                        service,
                        Arc::new(disk::DiskRoom::new(
                            path,
                            jobs,
                            history.clone(),
                            h.thresholds.limits("disk_room", disk::DISK_ROOM),
                        )),
                    )
                    .with_budget(budget),
                );
            }
        }
    }
    for path in &h.disk_paths {
        probes.push(
            Probe::new(
                format!("disk:{}", path.display()),
                Arc::new(disk::DiskFree::new(
                    path.clone(),
                    h.thresholds.limits("disk_free", disk::DISK_FREE),
                )),
            )
            .with_budget(budget),
        );
    }
    probes.extend(
        backups::probes(config, history, &h.thresholds, repositories)
            .into_iter()
            .map(|p| p.with_budget(budget)),
    );
    Ok(probes)
}

/// Keeps the probes whose check or service is named in `only` (all when empty).
pub fn select(probes: Vec<Probe>, only: &[String]) -> Vec<Probe> {
    if only.is_empty() {
        return probes;
    }
    probes
        .into_iter()
        .filter(|p| only.iter().any(|o| o == p.check.name() || *o == p.service))
        .collect()
}

/// Runs `config`'s suite (or the named part of it) now, opening repositories anew.
///
/// # Errors
/// As [`suite`]; a name in `only` that matches no check or service.
pub async fn run(
    config: &Arc<Config>,
    history: &RunHistory,
    only: &[String],
) -> Result<HealthSummary> {
    run_with(config, history, only, &OpenRepositories::default()).await
}

/// [`run`], with repositories a long-lived caller (the daemon) keeps open between
/// runs.
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: &Arc<Config>,
    history: &RunHistory,
    only: &[String],
    repositories: &OpenRepositories,
) -> Result<HealthSummary> {
    let all = suite(config, history, repositories)?;
    for o in only {
        if !all.iter().any(|p| p.check.name() == o || p.service == *o) {
            let mut names: Vec<String> = all
                .iter()
                .flat_map(|p| [p.service.clone(), p.check.name().to_owned()])
                .collect();
            names.sort();
            names.dedup();
            return Err(ops_core::Error::invalid(format!(
                "no health check or service '{o}' in {} (there are: {})",
                config.origin,
                names.join(", ")
            )));
        }
    }
    let probes = select(all, only);
    Ok(ops_core::run_suite(&probes, chrono::Utc::now()).await)
}

/// The local directory of a repository URL (a path or `file://`), if it is one.
fn local_path(url: &str) -> Option<std::path::PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(rest.into());
    }
    (!url.contains("://")).then(|| url.into())
}

/// A check whose subject cannot even be set up: reports it as unhealthy.
#[derive(Debug)]
struct Refused {
    name: &'static str,
    reason: String,
}

#[async_trait::async_trait]
impl ops_core::HealthCheck for Refused {
    fn name(&self) -> &str {
        self.name
    }

    async fn check(&self) -> Result<ops_core::HealthReport> {
        Ok(ops_core::HealthReport::new(
            self.name,
            ops_core::HealthStatus::Unhealthy,
            0.0,
            "seconds",
            self.reason.clone(),
        ))
    }
}

/// The checks whose value is worse when lower (free space); every other check is
/// worse when higher.
pub const LOWER_IS_WORSE: &[&str] = &["disk_free", "disk_room"];

/// Every check name a suite can hold (for config checks: a threshold or a health job
/// naming something else is a typo).
pub fn check_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = dbops::postgres::health::CHECKS.to_vec();
    names.extend(dbops::mariadb::health::default_limits().map(|(n, _)| n));
    names.extend([
        crate::probes::redis::PING,
        crate::probes::redis::MEMORY,
        "repository_writable",
        "disk_free",
        "disk_room",
        "backup_age",
        "backup_last_attempt",
        "backup_size",
        "backup_tables",
        "restore_proof_age",
        crate::probes::wal::NAME,
    ]);
    names.sort_unstable();
    names.dedup();
    names
}
