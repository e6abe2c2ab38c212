//! The deployment config (`dbops.toml`): repositories, databases, notifications and
//! jobs, parsed into typed components and checked before anything runs.
//!
//! Errors name the file, the line and the key (and suggest the key that was probably
//! meant); `${VAR}` takes a value from the environment; secrets are held as
//! [`Secret`]s and [`Config::redacted`] is the only way the config is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;

use ops_core::jobs::{EventKind, JobKind, Notifier};
use ops_core::maintain::{Action, ArchiveSpec, IntegrityCheck, Severity};
use ops_core::repo::{BackupFilter, GroupBy};
use ops_core::retention::KeepRules;
use ops_core::schedule::{Schedule, Timing, format_duration, parse_duration};
use ops_core::{Error, Result, Secret, redact_url};

/// Where the run history and caches go when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dbops";

// ---------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<String>>,
    max_concurrent_jobs: Option<Spanned<usize>>,
    shutdown_grace: Option<Spanned<String>>,
    hook_timeout: Option<Spanned<String>>,
    /// One-shot commands' repository when `--repo` is not given (older configs).
    repo: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    retention: Option<KeepRules>,
    #[serde(default)]
    repositories: BTreeMap<String, Spanned<RawRepository>>,
    #[serde(default)]
    databases: BTreeMap<String, Spanned<RawDatabase>>,
    #[serde(default)]
    notifications: BTreeMap<String, Spanned<RawNotification>>,
    #[serde(default)]
    jobs: BTreeMap<String, Spanned<RawJob>>,
    /// Services beside the databases (Redis).
    #[serde(default)]
    services: BTreeMap<String, Spanned<RawService>>,
    /// Health checks: budgets, limits, extra paths.
    health: Option<RawHealth>,
    /// Where one-shot runs write a node_exporter textfile.
    metrics_textfile: Option<Spanned<String>>,
    /// Where the daemon serves /metrics and /health.
    listen: Option<Spanned<String>>,
    /// Integrity checks: queries that must return no rows.
    #[serde(default)]
    checks: BTreeMap<String, Spanned<RawCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    database: Spanned<String>,
    sql: Spanned<String>,
    severity: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    kind: Spanned<String>,
    url: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    lock_timeout: Option<Spanned<String>>,
    #[serde(default)]
    disk_paths: Vec<Spanned<String>>,
    #[serde(default)]
    thresholds: BTreeMap<String, Spanned<RawLimits>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    warn: RawLimit,
    critical: RawLimit,
}

/// A limit: a number in the check's unit, or a duration (`"6h"`) for checks in seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Number(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    url: Spanned<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    lock_wait: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Spanned<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
}

/// `starttls = true | false | "tls"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StartTls {
    Flag(bool),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotification {
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    url_file: Option<Spanned<String>>,
    on: Option<Vec<Spanned<String>>>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    smtp_host: Option<Spanned<String>>,
    smtp_port: Option<u16>,
    starttls: Option<Spanned<StartTls>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    #[serde(default)]
    to: Vec<Spanned<String>>,
    command: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    kind: Spanned<String>,
    // Schedule.
    schedule: Option<Spanned<String>>,
    every: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    retry_backoff: Option<Spanned<String>>,
    catch_up: Option<bool>,
    // Hooks and notifications.
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    on_failure: Vec<String>,
    hook_timeout: Option<Spanned<String>>,
    #[serde(default)]
    notify: Vec<Spanned<String>>,
    // What the job works on.
    database: Option<Spanned<String>>,
    repository: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    parallel: Option<usize>,
    backups: Option<Spanned<String>>,
    read_data: Option<bool>,
    restore: Option<bool>,
    restore_into: Option<Spanned<String>>,
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within: Option<Spanned<String>>,
    #[serde(default)]
    keep_tags: Vec<String>,
    group_by: Option<Spanned<String>>,
    prune: Option<bool>,
    max_unused: Option<f64>,
    #[serde(default)]
    checks: Vec<String>,
    // Maintenance.
    action: Option<Spanned<String>>,
    full: Option<bool>,
    analyze: Option<bool>,
    concurrently: Option<bool>,
    #[serde(default)]
    tables: Vec<String>,
    // Backup table filters (`tables` above serves backups too).
    #[serde(default)]
    exclude_tables: Vec<String>,
    #[serde(default)]
    exclude_table_data: Vec<String>,
    #[serde(default)]
    schemas: Vec<String>,
    #[serde(default)]
    exclude_schemas: Vec<String>,
    // A physical base backup (PostgreSQL).
    #[serde(default)]
    physical: bool,
    // Backup file trees.
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    lock_wait: Option<Spanned<String>>,
    // Archive.
    table: Option<Spanned<String>>,
    #[serde(rename = "where")]
    predicate: Option<Spanned<String>>,
    into: Option<Spanned<String>>,
    batch: Option<Spanned<u64>>,
    pause: Option<Spanned<String>>,
    max_rows: Option<u64>,
    max_replication_lag: Option<Spanned<String>>,
    max_transaction_age: Option<Spanned<String>>,
    max_wait: Option<Spanned<String>>,
    // Restore.
    backup: Option<Spanned<String>>,
    clean: Option<bool>,
    create: Option<bool>,
    safety_backup: Option<bool>,
    terminate_connections: Option<bool>,
    // Forget.
    keep_safety: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------
// The config as dbops uses it.

/// A whole deployment's config, checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The file it came from (for messages).
    pub origin: String,
    /// Run history, caches.
    pub state_dir: PathBuf,
    /// How many jobs the daemon runs at once.
    pub max_concurrent_jobs: usize,
    /// How long the daemon waits for running jobs on SIGTERM before cancelling them.
    pub shutdown_grace: Duration,
    /// Repositories by name.
    pub repositories: BTreeMap<String, RepositoryConfig>,
    /// Databases by name.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// Notifiers by name.
    pub notifications: BTreeMap<String, Arc<dyn Notifier>>,
    /// Jobs by name.
    pub jobs: BTreeMap<String, JobConfig>,
    /// Top-level `repo` (for one-shot commands without `--repo`).
    pub repo: Option<String>,
    /// Top-level `password_file` (for one-shot commands).
    pub password_file: Option<PathBuf>,
    /// Top-level `[retention]` (the default rules of `forget`).
    pub retention: Option<KeepRules>,
    /// Services beside the databases, by name.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Health check settings.
    pub health: HealthConfig,
    /// Where one-shot runs write a node_exporter textfile.
    pub metrics_textfile: Option<PathBuf>,
    /// Where the daemon serves `/metrics` and `/health`.
    pub listen: Option<std::net::SocketAddr>,
    /// Integrity checks by name (`[checks.NAME]`).
    pub checks: BTreeMap<String, CheckConfig>,
    secrets: Secrets,
}

/// The values and environment variables the config took secrets from: scrubbed from
/// every message and from hook environments.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Vec<Secret>,
    env: BTreeSet<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets({} values, env {:?})",
            self.values.len(),
            self.env
        )
    }
}

impl Secrets {
    fn add(&mut self, value: &str) {
        // Very short values would scrub ordinary words out of messages.
        if value.len() >= 4 && !self.values.iter().any(|s| s.expose() == value) {
            self.values.push(Secret::new(value));
        }
    }

    /// `text` with every known secret value replaced by `******`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.values {
            if out.contains(s.expose()) {
                out = out.replace(s.expose(), ops_core::secret::REDACTED);
            }
        }
        out
    }

    /// Environment variables that hold secrets (named by `${VAR}` in a secret field,
    /// `password_env`, and the ones every engine and store reads).
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.env.iter().map(String::as_str)
    }
}

/// Variables that hold secrets in every deployment, whatever the config says.
const SECRET_ENV: &[&str] = &[
    "DBOPS_PASSWORD",
    "DBOPS_NEW_PASSWORD",
    "DBOPS_FROM_PASSWORD",
    "PGPASSWORD",
    "MYSQL_PWD",
    "MARIADB_PWD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
];

/// A service beside the databases (`[services.NAME]`).
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// `redis`.
    pub kind: String,
    /// Its URL (may carry a password: printed redacted).
    pub url: Secret,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("kind", &self.kind)
            .field("url", &redact_url(self.url.expose()))
            .finish()
    }
}

/// `[health]`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HealthConfig {
    /// How often the daemon refreshes `/health` and the probe metrics.
    pub interval: Duration,
    /// Each probe's connect, statement and lock budget.
    pub budget: ops_core::ProbeBudget,
    /// Extra local paths whose free space is checked (a database's data directory).
    pub disk_paths: Vec<PathBuf>,
    /// Limits that override the probes' defaults.
    pub thresholds: ops_core::Thresholds,
}

/// A repository's settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct RepositoryConfig {
    /// Its URL.
    pub url: String,
    /// Its password, if the config gives one (else `DBOPS_PASSWORD`, else none).
    pub password: Option<Secret>,
    /// How long a backup waits for the repository's lock.
    pub lock_wait: Duration,
    password_source: String,
}

/// A database's settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// Its URL.
    pub url: String,
    /// A password apart from the URL.
    pub password: Option<Secret>,
    password_source: Option<String>,
}

impl std::fmt::Debug for RepositoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("lock_wait", &self.lock_wait)
            .finish()
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .finish()
    }
}

impl DatabaseConfig {
    /// The engine for this database.
    ///
    /// # Errors
    /// The URL's errors.
    pub fn engine(&self) -> Result<Arc<dyn ops_core::DatabaseEngine>> {
        match &self.password {
            Some(p) => dbops::engine_with_password(&self.url, p.clone()),
            None => dbops::engine(&self.url),
        }
    }

    /// The engine of physical base backups of this (PostgreSQL) database's cluster.
    ///
    /// # Errors
    /// The URL's errors.
    pub fn physical_engine(&self) -> Result<Arc<dyn ops_core::DatabaseEngine>> {
        let mut engine = dbops::postgres::PostgresEngine::new(&self.url)?;
        if let Some(p) = &self.password {
            engine = engine.with_password(p.clone());
        }
        Ok(Arc::new(dbops::postgres::physical::PhysicalEngine::new(
            engine,
        )))
    }

    /// The maintenance side of this database (inspection, actions, sessions,
    /// integrity queries, archiving).
    ///
    /// # Errors
    /// The URL's errors.
    pub fn maintenance(&self) -> Result<Arc<dyn ops_core::maintain::Maintenance>> {
        match &self.password {
            Some(p) => dbops::maintenance_with_password(&self.url, p.clone()),
            None => dbops::maintenance(&self.url),
        }
    }

    /// The backups of this database: its name and server.
    pub fn filter(&self) -> BackupFilter {
        let mut f = BackupFilter::default();
        if let Ok(u) = url::Url::parse(&self.url) {
            let db = u.path().trim_start_matches('/');
            if !db.is_empty() {
                f = f.with_database(db);
            }
            let scheme = u.scheme();
            f = f.with_engine(if scheme.starts_with("postgres") {
                "postgresql"
            } else {
                "mariadb"
            });
        }
        f
    }
}

/// An integrity check of the config: which database it runs on, and the check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckConfig {
    /// The `[databases.NAME]` it runs on.
    pub database: String,
    /// The query, its severity and timeout.
    pub check: IntegrityCheck,
}

/// Which backups a verify or copy job takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Which {
    /// The newest (per database filter).
    Latest,
    /// Every one.
    All,
}

/// What a job does, with its own settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Work {
    /// Back up `database` into `repository`.
    Backup {
        /// The database's name in the config.
        database: String,
        /// The repository's name in the config.
        repository: String,
        /// Tags for the backup.
        tags: Vec<String>,
        /// Parallel streams.
        parallel: usize,
        /// Which tables to take (keys `tables`, `exclude_tables`, `exclude_table_data`,
        /// `schemas`, `exclude_schemas`); empty takes all.
        filter: ops_core::TableFilter,
        /// Directories and files taken in the same backup (key `paths`), checked
        /// when the job runs.
        paths: Vec<PathBuf>,
        /// What to leave out of them (key `exclude`, glob patterns).
        excludes: Vec<String>,
        /// A physical base backup of the whole PostgreSQL cluster (key `physical`),
        /// for point-in-time restores with the WAL archive.
        physical: bool,
    },
    /// Verify backups.
    Verify {
        /// The repository's name.
        repository: String,
        /// Restrict to this database's backups.
        database: Option<String>,
        /// Which backups.
        which: Which,
        /// Read every chunk.
        read_data: bool,
        /// Prove the newest by restoring it (on a throwaway server, or into
        /// `restore_into`).
        restore: bool,
        /// A scratch database URL for the restore proof (created and dropped); a
        /// secret, as it may carry a password.
        restore_into: Option<Secret>,
    },
    /// Apply retention rules.
    Forget {
        /// The repository's name.
        repository: String,
        /// Restrict to this database's backups.
        database: Option<String>,
        /// The rules.
        rules: KeepRules,
        /// How backups are grouped.
        group_by: GroupBy,
        /// Prune afterwards.
        prune: bool,
        /// How long safety backups are kept (the rules do not count them).
        keep_safety: Duration,
    },
    /// Delete unused data.
    Prune {
        /// The repository's name.
        repository: String,
        /// Unused share tolerated in packs (0–1).
        max_unused: f64,
    },
    /// Run the health checks (those named, or all).
    Health {
        /// Check or service names to run; empty for all.
        checks: Vec<String>,
    },
    /// A maintenance action on a database.
    Maintenance {
        /// The database's name in the config.
        database: String,
        /// What to do.
        action: Action,
        /// Only these tables; all when empty.
        tables: Vec<String>,
        /// The longest wait for a heavy lock (taken in short steps).
        lock_wait: Duration,
    },
    /// Run integrity checks.
    Integrity {
        /// Check names (`[checks.NAME]`); all (of `database`, when given) when empty.
        checks: Vec<String>,
        /// Only the checks of this database.
        database: Option<String>,
    },
    /// Move old rows into an archive table.
    Archive {
        /// The database's name in the config.
        database: String,
        /// What to move, where, how gently.
        spec: ArchiveSpec,
    },
    /// Copy backups to another repository.
    Copy {
        /// The source repository's name.
        repository: String,
        /// The destination repository's name.
        to: String,
        /// Restrict to this database's backups.
        database: Option<String>,
        /// Which backups.
        which: Which,
    },
    /// Restore a backup into a database.
    Restore {
        /// The target's name in the config (`[databases.NAME]`).
        database: String,
        /// The repository's name.
        repository: String,
        /// Which backup: `latest` (of the target's database name), `latest:NAME`, or
        /// an id.
        backup: String,
        /// Replace what the target holds.
        clean: bool,
        /// Create the target database.
        create: bool,
        /// With clean: back up what the target holds first.
        safety_backup: bool,
        /// With clean: end the sessions connected to the target first.
        terminate_connections: bool,
        /// Parallel connections.
        parallel: usize,
    },
}

impl Work {
    /// The repository the job works on (for a copy: the destination's is `to`); none
    /// for a health job.
    pub fn repository(&self) -> Option<&str> {
        match self {
            Work::Backup { repository, .. }
            | Work::Verify { repository, .. }
            | Work::Forget { repository, .. }
            | Work::Prune { repository, .. }
            | Work::Copy { repository, .. }
            | Work::Restore { repository, .. } => Some(repository),
            Work::Health { .. }
            | Work::Maintenance { .. }
            | Work::Integrity { .. }
            | Work::Archive { .. } => None,
        }
    }
}

/// Hook commands and their time limit.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Hooks {
    /// Run before; a failure aborts the job, exit 75 skips the run.
    pub before: Vec<String>,
    /// Run after, whenever `before` ran (failure included).
    pub after: Vec<String>,
    /// Run when the job failed.
    pub on_failure: Vec<String>,
    /// Each command's time limit.
    pub timeout: Duration,
}

/// One job.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobConfig {
    /// Its name.
    pub name: String,
    /// What it does.
    pub kind: JobKind,
    /// When it runs; `None` for a job only run by hand.
    pub timing: Option<Timing>,
    /// The whole run's time limit (attempts and backoff included; hooks apart).
    pub timeout: Option<Duration>,
    /// Its hooks.
    pub hooks: Hooks,
    /// Notifier names.
    pub notify: Vec<String>,
    /// Its work.
    pub work: Work,
    /// The retries (also in `timing`, for jobs without a schedule).
    pub retries: u32,
    /// The first retry's backoff.
    pub retry_backoff: Duration,
}

impl JobConfig {
    /// The job's timing, or one that never fires for a job run only by hand (retries
    /// still apply).
    pub fn timing_or_manual(&self) -> Timing {
        self.timing.clone().unwrap_or_else(|| {
            // A manual run has no slot, hence no next slot to stop retries at: the
            // schedule is only there to carry the retry settings.
            Timing::new(Schedule::Every {
                period: Duration::from_secs(86_400),
            })
            .with_retries(self.retries)
            .with_backoff(self.retry_backoff, self.retry_backoff.saturating_mul(20))
        })
    }
}

// ---------------------------------------------------------------------------------
// Loading.

/// Where the config file is: `path`, else `DBOPS_CONFIG`.
pub fn config_path(path: Option<&Path>) -> Option<PathBuf> {
    path.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("DBOPS_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

impl Config {
    /// Reads and checks the config at `path`, with `${VAR}` from the process
    /// environment.
    ///
    /// # Errors
    /// [`ops_core::ErrorKind::InvalidInput`] naming the file, line and key for a
    /// config that does not parse or check; I/O errors reading it or a password file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the config file {}", path.display()), e))?;
        Self::parse(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses and checks config text; `origin` names it in messages, `env` looks up
    /// `${VAR}`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        Resolver {
            text,
            origin,
            env,
            secrets: Secrets::default(),
            service_names: raw.services.keys().cloned().collect(),
        }
        .resolve(raw)
    }

    /// The secrets the config took (to scrub messages and hook environments).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// A job by name.
    ///
    /// # Errors
    /// [`ops_core::ErrorKind::InvalidInput`] naming the jobs there are.
    pub fn job(&self, name: &str) -> Result<&JobConfig> {
        self.jobs.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
            let hint = suggest(name, &names)
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            Error::invalid(format!(
                "no job '{name}' in {}{hint} (jobs: {})",
                self.origin,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        })
    }

    /// The notifiers a job names.
    pub fn notifiers_of(&self, job: &JobConfig) -> Vec<Arc<dyn Notifier>> {
        job.notify
            .iter()
            .filter_map(|n| self.notifications.get(n).cloned())
            .collect()
    }

    /// The config as `dbops config check` prints it: every default filled in, every
    /// secret replaced by `******` (URLs keep their host, never a password or a
    /// webhook path).
    pub fn redacted(&self) -> Value {
        let repositories: BTreeMap<_, _> = self
            .repositories
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    json!({
                        "url": redact_url(&r.url),
                        "password": r.password_source,
                        "lock_wait": format_duration(r.lock_wait),
                    }),
                )
            })
            .collect();
        let databases: BTreeMap<_, _> = self
            .databases
            .iter()
            .map(|(n, d)| {
                let mut v = json!({ "url": self.secrets.scrub(&redact_url(&d.url)) });
                if let Some(src) = &d.password_source {
                    v["password"] = json!(src);
                }
                (n.clone(), v)
            })
            .collect();
        let notifications: BTreeMap<_, _> = self
            .notifications
            .iter()
            .map(|(n, x)| {
                let on: Vec<&str> = EventKind::ALL
                    .into_iter()
                    .filter(|k| x.wants(*k))
                    .map(EventKind::as_str)
                    .collect();
                (
                    n.clone(),
                    json!({ "destination": self.secrets.scrub(&x.destination()), "on": on }),
                )
            })
            .collect();
        let jobs: BTreeMap<_, _> = self
            .jobs
            .iter()
            .map(|(n, j)| (n.clone(), self.job_json(j)))
            .collect();
        let mut v = json!({
            "state_dir": self.state_dir,
            "max_concurrent_jobs": self.max_concurrent_jobs,
            "shutdown_grace": format_duration(self.shutdown_grace),
            "repositories": repositories,
            "databases": databases,
            "notifications": notifications,
            "jobs": jobs,
        });
        if let Some(r) = &self.repo {
            v["repo"] = json!(redact_url(r));
        }
        if let Some(l) = self.listen {
            v["listen"] = json!(l.to_string());
        }
        if let Some(t) = &self.metrics_textfile {
            v["metrics_textfile"] = json!(t);
        }
        let services: BTreeMap<_, _> = self
            .services
            .iter()
            .map(|(n, x)| {
                (
                    n.clone(),
                    json!({ "kind": x.kind, "url": self.secrets.scrub(&redact_url(x.url.expose())) }),
                )
            })
            .collect();
        v["services"] = json!(services);
        let checks: BTreeMap<_, _> = self
            .checks
            .iter()
            .map(|(n, c)| {
                (
                    n.clone(),
                    json!({
                        "database": c.database,
                        "sql": c.check.sql,
                        "severity": c.check.severity,
                        "timeout": format_duration(c.check.timeout),
                    }),
                )
            })
            .collect();
        v["checks"] = json!(checks);
        let h = &self.health;
        let thresholds: BTreeMap<_, _> = h
            .thresholds
            .names()
            .map(|n| {
                let l = h.thresholds.limits(n, ops_core::Limits::new(0.0, 0.0));
                (
                    n.to_owned(),
                    json!({ "warn": l.warn, "critical": l.critical }),
                )
            })
            .collect();
        v["health"] = json!({
            "interval": format_duration(h.interval),
            "connect_timeout": format_duration(h.budget.connect),
            "statement_timeout": format_duration(h.budget.statement),
            "lock_timeout": format_duration(h.budget.lock),
            "disk_paths": h.disk_paths,
            "thresholds": thresholds,
        });
        v
    }

    fn job_json(&self, j: &JobConfig) -> Value {
        let mut v = json!({ "kind": j.kind });
        match &j.timing {
            Some(t) => {
                match &t.schedule {
                    Schedule::Cron { cron, tz } => {
                        v["schedule"] = json!(cron.to_string());
                        v["timezone"] = json!(tz.name());
                    }
                    Schedule::Every { period } => v["every"] = json!(format_duration(*period)),
                    _ => v["schedule"] = json!(t.schedule.to_string()),
                }
                v["jitter"] = json!(format_duration(t.jitter));
                v["catch_up"] = json!(t.catch_up);
            }
            None => v["schedule"] = json!("none (run by hand: dbops run)"),
        }
        v["retries"] = json!(j.retries);
        v["retry_backoff"] = json!(format_duration(j.retry_backoff));
        if let Some(t) = j.timeout {
            v["timeout"] = json!(format_duration(t));
        }
        // Hook commands are printed as written (never interpolated), so they hold only
        // what the operator typed.
        v["before"] = json!(j.hooks.before);
        v["after"] = json!(j.hooks.after);
        v["on_failure"] = json!(j.hooks.on_failure);
        v["hook_timeout"] = json!(format_duration(j.hooks.timeout));
        v["notify"] = json!(j.notify);
        match &j.work {
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
                if *physical {
                    v["physical"] = json!(true);
                }
                v["database"] = json!(database);
                v["repository"] = json!(repository);
                v["tags"] = json!(tags);
                v["parallel"] = json!(parallel);
                if !paths.is_empty() {
                    v["paths"] = json!(paths);
                    v["exclude"] = json!(excludes);
                }
                if !filter.is_empty() {
                    v["filter"] = json!(filter);
                }
            }
            Work::Verify {
                repository,
                database,
                which,
                read_data,
                restore,
                restore_into,
            } => {
                v["restore_into"] = json!(restore_into.as_ref().map(|u| redact_url(u.expose())));
                v["repository"] = json!(repository);
                v["database"] = json!(database);
                v["backups"] = json!(if *which == Which::All {
                    "all"
                } else {
                    "latest"
                });
                v["read_data"] = json!(read_data);
                v["restore"] = json!(restore);
            }
            Work::Forget {
                repository,
                database,
                rules,
                group_by,
                prune,
                keep_safety,
            } => {
                v["repository"] = json!(repository);
                v["database"] = json!(database);
                v["rules"] = json!(rules.to_string());
                v["group_by"] = json!(group_by.to_string());
                v["prune"] = json!(prune);
                v["keep_safety"] = json!(format_duration(*keep_safety));
            }
            Work::Prune {
                repository,
                max_unused,
            } => {
                v["repository"] = json!(repository);
                v["max_unused"] = json!(max_unused);
            }
            Work::Health { checks } => {
                v["checks"] = json!(checks);
            }
            Work::Maintenance {
                database,
                action,
                tables,
                lock_wait,
            } => {
                v["database"] = json!(database);
                v["action"] = json!(action);
                v["tables"] = json!(tables);
                v["lock_wait"] = json!(format_duration(*lock_wait));
            }
            Work::Integrity { checks, database } => {
                v["checks"] = json!(checks);
                v["database"] = json!(database);
            }
            Work::Archive { database, spec } => {
                v["database"] = json!(database);
                v["table"] = json!(spec.table);
                v["where"] = json!(spec.predicate);
                v["into"] = json!(spec.into);
                v["batch"] = json!(spec.batch);
                v["pause"] = json!(format_duration(spec.pause));
                v["max_rows"] = json!(spec.max_rows);
                v["max_replication_lag"] = json!(format_duration(spec.max_replication_lag));
                v["max_transaction_age"] = json!(format_duration(spec.max_transaction_age));
                v["max_wait"] = json!(format_duration(spec.max_wait));
            }
            Work::Copy {
                repository,
                to,
                database,
                which,
            } => {
                v["repository"] = json!(repository);
                v["to"] = json!(to);
                v["database"] = json!(database);
                v["backups"] = json!(if *which == Which::All {
                    "all"
                } else {
                    "latest"
                });
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
                v["database"] = json!(database);
                v["repository"] = json!(repository);
                v["backup"] = json!(backup);
                v["clean"] = json!(clean);
                v["create"] = json!(create);
                v["safety_backup"] = json!(safety_backup);
                v["terminate_connections"] = json!(terminate_connections);
                v["parallel"] = json!(parallel);
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------
// Errors with file, line and key.

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The `[table]` header in force at line `line`.
fn section_at(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && l.ends_with(']')).then(|| l.to_owned())
        })
        .last()
}

/// The key written on line `line`, if it holds `key = value`.
fn key_at(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim().trim_matches('"');
    (!k.is_empty() && !k.starts_with('[')).then(|| k.to_owned())
}

fn parse_error(text: &str, origin: &str, e: &toml::de::Error) -> Error {
    let line = e.span().map(|s| line_of(text, s.start));
    let at = match line {
        Some(l) => format!("{origin}:{l}"),
        None => origin.to_owned(),
    };
    let section = line
        .and_then(|l| section_at(text, l))
        .map(|s| format!(" in {s}"))
        .unwrap_or_default();
    let message = e.message().trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (key, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = tail
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        let hint = suggest(key, &expected)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        return Error::invalid(format!(
            "{at}: unknown key `{key}`{section}{hint} (keys here: {})",
            expected.join(", ")
        ))
        .with_context("file", origin)
        .with_context("key", key);
    }
    let key = line
        .and_then(|l| key_at(text, l))
        .map(|k| format!(" key `{k}`"))
        .unwrap_or_default();
    Error::invalid(format!("{at}:{section}{key}: {message}")).with_context("file", origin)
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------
// Resolving: interpolation, defaults, references, checks.

/// The config's named sections a job may refer to.
struct Sections<'a> {
    repositories: &'a BTreeMap<String, RepositoryConfig>,
    databases: &'a BTreeMap<String, DatabaseConfig>,
    notifications: &'a BTreeSet<String>,
    checks: &'a BTreeMap<String, CheckConfig>,
}

struct Resolver<'a> {
    text: &'a str,
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
    /// `[services.NAME]` names, for health jobs naming a service.
    service_names: BTreeSet<String>,
}

impl Resolver<'_> {
    fn at<T>(&self, s: &Spanned<T>) -> String {
        format!("{}:{}", self.origin, line_of(self.text, s.span().start))
    }

    fn err<T>(&self, s: &Spanned<T>, what: &str, why: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{}: {what}: {why}", self.at(s))).with_context("file", self.origin)
    }

    /// A backup job's table filter; a bad pattern is reported with its key.
    fn table_filter(&self, r: &RawJob, what: &str) -> Result<ops_core::TableFilter> {
        let key = |k: &'static str| {
            move |e: Error| self.err(&r.kind, &format!("{what} {k}"), e.message())
        };
        ops_core::TableFilter::default()
            .with_tables(&r.tables)
            .map_err(key("tables"))?
            .with_exclude_tables(&r.exclude_tables)
            .map_err(key("exclude_tables"))?
            .with_exclude_table_data(&r.exclude_table_data)
            .map_err(key("exclude_table_data"))?
            .with_schemas(&r.schemas)
            .map_err(key("schemas"))?
            .with_exclude_schemas(&r.exclude_schemas)
            .map_err(key("exclude_schemas"))
    }

    /// `${VAR}` replaced from the environment (`$${` writes a literal `${`). Values of
    /// a secret field, and the variables they came from, are remembered as secrets.
    fn interpolate(&mut self, s: &Spanned<String>, what: &str, secret: bool) -> Result<String> {
        let raw = s.get_ref();
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(after) = rest.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    return Err(self.err(s, what, "`${` without a closing `}`"));
                };
                let name = &after[..end];
                let (name, default) = match name.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (name, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.err(s, what, format!("`${{{name}}}` is not a variable name")));
                }
                let value = match ((self.env)(name), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d.to_owned(),
                    (None, None) => {
                        return Err(self.err(
                            s,
                            what,
                            format!(
                                "the environment variable {name} is not set (write ${{{name}:-default}} for a default)"
                            ),
                        ));
                    }
                };
                if secret {
                    self.secrets.env.insert(name.to_owned());
                    self.secrets.add(&value);
                }
                out.push_str(&value);
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn health(&mut self, raw: Option<&RawHealth>) -> Result<HealthConfig> {
        let default = RawHealth::default();
        let raw = raw.unwrap_or(&default);
        let base = ops_core::ProbeBudget::default();
        let mut budget = base;
        budget.connect = self.duration(
            &raw.connect_timeout,
            "[health] connect_timeout",
            base.connect,
        )?;
        budget.statement = self.duration(
            &raw.statement_timeout,
            "[health] statement_timeout",
            base.statement,
        )?;
        budget.lock = self.duration(&raw.lock_timeout, "[health] lock_timeout", base.lock)?;
        let interval =
            self.duration(&raw.interval, "[health] interval", Duration::from_secs(60))?;
        for (value, key) in [
            (budget.connect, "connect_timeout"),
            (budget.statement, "statement_timeout"),
            (budget.lock, "lock_timeout"),
            (interval, "interval"),
        ] {
            if value.is_zero() {
                return Err(Error::invalid(format!(
                    "{}: [health] {key} is zero: every check would give up at once",
                    self.origin
                )));
            }
        }
        let mut disk_paths = Vec::new();
        for p in &raw.disk_paths {
            disk_paths.push(PathBuf::from(self.interpolate(
                p,
                "[health] disk_paths",
                false,
            )?));
        }
        let mut thresholds = ops_core::Thresholds::default();
        let known = crate::health::check_names();
        for (check, l) in &raw.thresholds {
            let what = format!("[health.thresholds] {check}");
            if !known.contains(&check.as_str()) {
                let hint = suggest(check, &known)
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                return Err(self.err(
                    l,
                    &what,
                    format!("there is no health check named `{check}`{hint}"),
                ));
            }
            let value = |this: &Self, v: &RawLimit| -> Result<f64> {
                match v {
                    RawLimit::Number(n) => Ok(*n),
                    RawLimit::Text(t) => parse_duration(t)
                        .map(|d| d.as_secs_f64())
                        .map_err(|e| this.err(l, &what, e.message())),
                }
            };
            let warn = value(self, &l.get_ref().warn)?;
            let critical = value(self, &l.get_ref().critical)?;
            // Each check has one direction: free space is worse lower, everything else
            // higher. Limits the other way round (or equal, or not numbers) would judge
            // backwards without a word.
            let lower_worse = crate::health::LOWER_IS_WORSE.contains(&check.as_str());
            if !warn.is_finite() || !critical.is_finite() || warn == critical {
                return Err(self.err(l, &what, "warn and critical must be two different numbers"));
            }
            if (critical < warn) != lower_worse {
                return Err(self.err(
                    l,
                    &what,
                    if lower_worse {
                        format!("a lower {check} is worse: critical must be below warn (e.g. warn = 20, critical = 10)")
                    } else {
                        format!("a higher {check} is worse: critical must be above warn")
                    },
                ));
            }
            thresholds = thresholds.with(check.clone(), ops_core::Limits::new(warn, critical));
        }
        Ok(HealthConfig {
            interval,
            budget,
            disk_paths,
            thresholds,
        })
    }

    /// A URL, interpolated: its password (if any) becomes a secret, and so do the
    /// variables it was built from (they are taken out of hook environments).
    fn interpolate_url(&mut self, s: &Spanned<String>, what: &str) -> Result<String> {
        let url = self.interpolate(s, what, false)?;
        let parsed = url::Url::parse(&url).ok();
        let mut secrets: Vec<String> = parsed
            .as_ref()
            .and_then(|u| u.password().map(str::to_owned))
            .filter(|p| !p.is_empty())
            .into_iter()
            .collect();
        // A password in the query string (`?password=…`, `sslpassword`, tokens) is one
        // too.
        if let Some(u) = &parsed {
            for (k, v) in u.query_pairs() {
                if ops_core::secret::is_secret_param(&k) && !v.is_empty() {
                    secrets.push(v.into_owned());
                }
            }
        }
        for p in secrets {
            self.secrets.add(&p);
            if let Ok(decoded) = percent_decode(&p) {
                self.secrets.add(&decoded);
            }
            let mut rest = s.get_ref().as_str();
            while let Some(i) = rest.find("${") {
                let after = &rest[i + 2..];
                let end = after.find('}').unwrap_or(after.len());
                let name = after[..end].split(":-").next().unwrap_or_default();
                if !name.is_empty() {
                    self.secrets.env.insert(name.to_owned());
                }
                rest = &after[end..];
            }
        }
        Ok(url)
    }

    fn duration(
        &mut self,
        s: &Option<Spanned<String>>,
        what: &str,
        default: Duration,
    ) -> Result<Duration> {
        match s {
            None => Ok(default),
            Some(s) => {
                let text = self.interpolate(s, what, false)?;
                parse_duration(&text).map_err(|e| self.err(s, what, e.message()))
            }
        }
    }

    /// A password from exactly one of `password`, `password_file`, `password_env`.
    fn password(
        &mut self,
        what: &str,
        inline: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        env: &Option<Spanned<String>>,
    ) -> Result<Option<(Secret, String)>> {
        let given = [inline.is_some(), file.is_some(), env.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given > 1 {
            let s = inline.as_ref().or(file.as_ref()).or(env.as_ref());
            return Err(match s {
                Some(s) => self.err(
                    s,
                    what,
                    "give one of password, password_file and password_env",
                ),
                None => Error::invalid(format!(
                    "{what}: give one of password, password_file and password_env"
                )),
            });
        }
        if let Some(p) = inline {
            if !p.get_ref().contains("${") {
                return Err(self.err(
                    p,
                    &format!("{what} password"),
                    "a password written into the config is refused: use password = \"${VAR}\", password_file or password_env",
                ));
            }
            let value = self.interpolate(p, what, true)?;
            return Ok(Some((
                Secret::new(value),
                "****** (from the environment)".to_owned(),
            )));
        }
        if let Some(f) = file {
            let path = self.interpolate(f, what, false)?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                self.err(
                    f,
                    &format!("{what} password_file"),
                    format!("{path} cannot be read: {e}"),
                )
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            self.secrets.add(text);
            return Ok(Some((
                Secret::new(text),
                format!("****** (from the file {path})"),
            )));
        }
        if let Some(e) = env {
            let name = e.get_ref().clone();
            self.secrets.env.insert(name.clone());
            let value = (self.env)(&name).ok_or_else(|| {
                self.err(
                    e,
                    &format!("{what} password_env"),
                    format!("the environment variable {name} is not set"),
                )
            })?;
            self.secrets.add(&value);
            return Ok(Some((Secret::new(value), format!("****** (from ${name})"))));
        }
        Ok(None)
    }

    fn resolve(mut self, raw: RawConfig) -> Result<Config> {
        for name in SECRET_ENV {
            self.secrets.env.insert((*name).to_owned());
            if let Some(v) = (self.env)(name) {
                self.secrets.add(&v);
            }
        }
        let state_dir = match &raw.state_dir {
            Some(s) => PathBuf::from(self.interpolate(s, "state_dir", false)?),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let max_concurrent_jobs = match &raw.max_concurrent_jobs {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.err(n, "max_concurrent_jobs", "must be at least 1"));
            }
            Some(n) => *n.get_ref(),
            None => 2,
        };
        let shutdown_grace = self.duration(
            &raw.shutdown_grace,
            "shutdown_grace",
            Duration::from_secs(300),
        )?;
        let hook_timeout =
            self.duration(&raw.hook_timeout, "hook_timeout", Duration::from_secs(300))?;

        let mut repositories = BTreeMap::new();
        for (name, r) in &raw.repositories {
            let what = format!("[repositories.{name}]");
            let url = self.interpolate_url(&r.get_ref().url, &what)?;
            let rr = r.get_ref();
            let password =
                self.password(&what, &rr.password, &rr.password_file, &rr.password_env)?;
            let lock_wait = self.duration(&rr.lock_wait, &what, Duration::from_secs(600))?;
            let (password, password_source) = match password {
                Some((p, src)) => (Some(p), src),
                None => (
                    None,
                    "from DBOPS_PASSWORD if set, else none (unencrypted)".to_owned(),
                ),
            };
            repositories.insert(
                name.clone(),
                RepositoryConfig {
                    url,
                    password,
                    lock_wait,
                    password_source,
                },
            );
        }

        let mut databases = BTreeMap::new();
        for (name, d) in &raw.databases {
            let what = format!("[databases.{name}]");
            let dd = d.get_ref();
            let url = self.interpolate_url(&dd.url, &what)?;
            // Checks the scheme and the URL now, not at 2 a.m.
            dbops::engine(&url)
                .map_err(|e| self.err(&dd.url, &format!("{what} url"), e.message()))?;
            let password =
                self.password(&what, &dd.password, &dd.password_file, &dd.password_env)?;
            let (password, password_source) = match password {
                Some((p, s)) => (Some(p), Some(s)),
                None => (None, None),
            };
            databases.insert(
                name.clone(),
                DatabaseConfig {
                    url,
                    password,
                    password_source,
                },
            );
        }

        let mut checks = BTreeMap::new();
        for (name, c) in &raw.checks {
            checks.insert(name.clone(), self.check(name, c, &databases)?);
        }

        let notification_names: BTreeSet<String> = raw.notifications.keys().cloned().collect();
        let mut jobs = BTreeMap::new();
        for (name, j) in &raw.jobs {
            let sections = Sections {
                repositories: &repositories,
                databases: &databases,
                notifications: &notification_names,
                checks: &checks,
            };
            let job = self.job(name, j, hook_timeout, &sections)?;
            jobs.insert(name.clone(), job);
        }

        // Notifiers last, and twice: a command notifier's environment leaves out every
        // secret variable of the config, including those of notifiers after it.
        for (name, n) in &raw.notifications {
            self.notifier(name, n)?;
        }
        let mut notifications = BTreeMap::new();
        for (name, n) in &raw.notifications {
            let built = self.notifier(name, n)?;
            notifications.insert(name.clone(), built);
        }

        let mut services = BTreeMap::new();
        for (name, svc) in &raw.services {
            let what = format!("[services.{name}]");
            let r = svc.get_ref();
            if r.kind.get_ref() != "redis" {
                return Err(self.err(
                    &r.kind,
                    &format!("{what} kind"),
                    format!(
                        "unknown service kind '{}': the kinds are: redis",
                        r.kind.get_ref()
                    ),
                ));
            }
            let url = self.interpolate_url(&r.url, &format!("{what} url"))?;
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(self.err(
                    &r.url,
                    &format!("{what} url"),
                    "a redis URL starts with redis:// or rediss://",
                ));
            }
            services.insert(
                name.clone(),
                ServiceConfig {
                    kind: r.kind.get_ref().clone(),
                    url: Secret::new(url),
                },
            );
        }
        let health = self.health(raw.health.as_ref())?;
        let metrics_textfile = raw
            .metrics_textfile
            .as_ref()
            .map(|p| {
                self.interpolate(p, "metrics_textfile", false)
                    .map(PathBuf::from)
            })
            .transpose()?;
        let listen = match &raw.listen {
            Some(l) => {
                let text = self.interpolate(l, "listen", false)?;
                Some(text.parse().map_err(|_| {
                    self.err(
                        l,
                        "listen",
                        format!(
                            "'{text}' is not an address: write host:port, such as 127.0.0.1:9187"
                        ),
                    )
                })?)
            }
            None => None,
        };

        let repo = raw
            .repo
            .as_ref()
            .map(|r| self.interpolate(r, "repo", false))
            .transpose()?;
        let password_file = raw
            .password_file
            .as_ref()
            .map(|p| {
                self.interpolate(p, "password_file", false)
                    .map(PathBuf::from)
            })
            .transpose()?;
        Ok(Config {
            origin: self.origin.to_owned(),
            state_dir,
            max_concurrent_jobs,
            shutdown_grace,
            repositories,
            databases,
            notifications,
            jobs,
            repo,
            password_file,
            retention: raw.retention,
            services,
            health,
            metrics_textfile,
            listen,
            checks,
            secrets: self.secrets,
        })
    }

    fn check(
        &mut self,
        name: &str,
        c: &Spanned<RawCheck>,
        databases: &BTreeMap<String, DatabaseConfig>,
    ) -> Result<CheckConfig> {
        let what = format!("[checks.{name}]");
        let r = c.get_ref();
        let database = r.database.get_ref();
        if !databases.contains_key(database) {
            let names: Vec<&str> = databases.keys().map(String::as_str).collect();
            let hint = suggest(database, &names)
                .map(|x| format!("; did you mean '{x}'?"))
                .unwrap_or_default();
            return Err(self.err(
                &r.database,
                &format!("{what} database"),
                format!("no [databases.{database}] in the config{hint}"),
            ));
        }
        let sql = r.sql.get_ref().trim();
        if sql.is_empty() {
            return Err(self.err(
                &r.sql,
                &format!("{what} sql"),
                "empty: write a query that returns the rows that break the rule",
            ));
        }
        let severity = match &r.severity {
            None => Severity::Error,
            Some(s) => match s.get_ref().as_str() {
                "error" => Severity::Error,
                "warn" | "warning" => Severity::Warn,
                other => {
                    return Err(self.err(
                        s,
                        &format!("{what} severity"),
                        format!("'{other}': use \"error\" or \"warn\""),
                    ));
                }
            },
        };
        let timeout = self.duration(
            &r.timeout,
            &format!("{what} timeout"),
            Duration::from_secs(60),
        )?;
        if timeout.is_zero() {
            return Err(Error::invalid(format!(
                "{}: {what} timeout is zero: the query would be stopped at once",
                self.origin
            )));
        }
        Ok(CheckConfig {
            database: database.clone(),
            check: IntegrityCheck::new(name, sql)
                .with_severity(severity)
                .with_timeout(timeout),
        })
    }

    fn notifier(&mut self, name: &str, n: &Spanned<RawNotification>) -> Result<Arc<dyn Notifier>> {
        use crate::notify::{
            Channel, CommandOptions, EmailOptions, NotifierSpec, PingOptions, SlackOptions,
            SmtpSecurity, WebhookOptions,
        };
        let what = format!("[notifications.{name}]");
        let r = n.get_ref();
        let kind = r.kind.get_ref().as_str();
        let url = |this: &mut Self| -> Result<Secret> {
            let value = match (&r.url, &r.url_file) {
                (Some(_), Some(f)) => {
                    return Err(this.err(f, &what, "give `url` or `url_file`, not both"));
                }
                // A webhook's URL is its credential: held and scrubbed as a secret.
                (Some(u), None) => this.interpolate(u, &format!("{what} url"), true)?,
                (None, Some(f)) => {
                    let path = this.interpolate(f, &format!("{what} url_file"), false)?;
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        this.err(
                            f,
                            &format!("{what} url_file"),
                            format!("{path} cannot be read: {e}"),
                        )
                    })?;
                    text.trim().to_owned()
                }
                (None, None) => {
                    return Err(this.err(
                        &r.kind,
                        &what,
                        format!("a {kind} notification needs `url` (or `url_file`)"),
                    ));
                }
            };
            this.secrets.add(&value);
            Ok(Secret::new(value))
        };
        let channel = match kind {
            "webhook" => {
                let mut o = WebhookOptions::new(url(self)?);
                for (k, v) in &r.headers {
                    let value = self.interpolate(v, &format!("{what} headers.{k}"), true)?;
                    self.secrets.add(&value);
                    o = o.with_header(k.clone(), Secret::new(value));
                }
                Channel::Webhook(o)
            }
            "slack" => Channel::Slack(SlackOptions::new(url(self)?)),
            "ping" => Channel::Ping(PingOptions::new(url(self)?)),
            "command" => {
                let Some(c) = &r.command else {
                    return Err(self.err(&r.kind, &what, "a command notification needs `command`"));
                };
                Channel::Command(
                    CommandOptions::new(c.clone())
                        .with_env_remove(crate::hooks::secret_env_names(self.secrets.env_names())),
                )
            }
            "email" => {
                let Some(host) = &r.smtp_host else {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "an email notification needs `smtp_host`",
                    ));
                };
                let Some(from) = &r.from else {
                    return Err(self.err(&r.kind, &what, "an email notification needs `from`"));
                };
                if r.to.is_empty() {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "an email notification needs `to` (a list of addresses)",
                    ));
                }
                let host = self.interpolate(host, &format!("{what} smtp_host"), false)?;
                let from = self.interpolate(from, &format!("{what} from"), false)?;
                let mut to = Vec::new();
                for t in &r.to {
                    to.push(self.interpolate(t, &format!("{what} to"), false)?);
                }
                let mut o = EmailOptions::new(host, from, to);
                if let Some(p) = r.smtp_port {
                    o = o.with_port(p);
                }
                if let Some(st) = &r.starttls {
                    let security = match st.get_ref() {
                        StartTls::Flag(true) => SmtpSecurity::StartTls,
                        StartTls::Flag(false) => SmtpSecurity::None,
                        StartTls::Word(w) if w == "tls" => SmtpSecurity::Tls,
                        StartTls::Word(w) => {
                            return Err(self.err(
                                st,
                                &format!("{what} starttls"),
                                format!("'{w}': use true, false or \"tls\""),
                            ));
                        }
                    };
                    o = o.with_security(security);
                }
                let password = self.password(&what, &r.password, &r.password_file, &None)?;
                match (&r.username, password) {
                    (Some(u), Some((p, _))) => {
                        let user = self.interpolate(u, &format!("{what} username"), false)?;
                        o = o.with_login(user, p);
                    }
                    (None, None) => {}
                    _ => {
                        return Err(self.err(&r.kind, &what, "give both `username` and a password (password = \"${VAR}\" or password_file), or neither"));
                    }
                }
                Channel::Email(o)
            }
            other => {
                let kinds = ["webhook", "slack", "email", "command", "ping"];
                let hint = suggest(other, &kinds)
                    .map(|s| format!("; did you mean '{s}'?"))
                    .unwrap_or_default();
                return Err(self.err(
                    &r.kind,
                    &format!("{what} kind"),
                    format!(
                        "unknown notification kind '{other}'{hint} (kinds: {})",
                        kinds.join(", ")
                    ),
                ));
            }
        };
        let mut spec = NotifierSpec::new(channel);
        if let Some(on) = &r.on {
            let mut events = Vec::new();
            for e in on {
                events.push(
                    EventKind::parse(e.get_ref())
                        .map_err(|x| self.err(e, &format!("{what} on"), x.message()))?,
                );
            }
            spec = spec.with_on(events);
        }
        if r.timeout.is_some() {
            spec = spec.with_timeout(self.duration(
                &r.timeout,
                &format!("{what} timeout"),
                crate::notify::DEFAULT_TIMEOUT,
            )?);
        }
        if let Some(n) = r.retries {
            spec = spec.with_retries(n);
        }
        crate::notify::build(name, spec).map_err(|e| self.err(&r.kind, &what, e.message()))
    }

    #[allow(clippy::too_many_lines)]
    fn job(
        &mut self,
        name: &str,
        j: &Spanned<RawJob>,
        hook_timeout: Duration,
        sections: &Sections<'_>,
    ) -> Result<JobConfig> {
        let Sections {
            repositories,
            databases,
            notifications,
            checks,
        } = sections;
        let what = format!("[jobs.{name}]");
        let r = j.get_ref();
        let kind = JobKind::parse(r.kind.get_ref())
            .map_err(|e| self.err(&r.kind, &format!("{what} kind"), e.message()))?;

        let tz = match &r.timezone {
            Some(t) => t.get_ref().clone(),
            None => "UTC".to_owned(),
        };
        let schedule = match (&r.schedule, &r.every) {
            (Some(s), Some(_)) => {
                return Err(self.err(s, &what, "give `schedule` (cron) or `every`, not both"));
            }
            (Some(s), None) => Some(
                Schedule::cron(s.get_ref(), &tz)
                    .map_err(|e| self.err(s, &format!("{what} schedule"), e.message()))?,
            ),
            (None, Some(e)) => {
                if let Some(t) = &r.timezone {
                    return Err(self.err(
                        t,
                        &what,
                        "`timezone` applies to cron schedules; `every` is absolute time (drop the timezone, or use `schedule`)",
                    ));
                }
                let d = parse_duration(e.get_ref())
                    .map_err(|x| self.err(e, &format!("{what} every"), x.message()))?;
                Some(
                    Schedule::every(d)
                        .map_err(|x| self.err(e, &format!("{what} every"), x.message()))?,
                )
            }
            (None, None) => {
                if let Some(t) = &r.timezone {
                    return Err(self.err(
                        t,
                        &what,
                        "a timezone without a schedule: add `schedule`",
                    ));
                }
                None
            }
        };
        if schedule.is_some()
            && let Some(t) = &r.timezone
        {
            ops_core::schedule::parse_tz(t.get_ref())
                .map_err(|e| self.err(t, &format!("{what} timezone"), e.message()))?;
        }
        let retries = r.retries.as_ref().map(|s| *s.get_ref()).unwrap_or(0);
        let retry_backoff = self.duration(
            &r.retry_backoff,
            &format!("{what} retry_backoff"),
            Duration::from_secs(30),
        )?;
        let jitter = self.duration(&r.jitter, &format!("{what} jitter"), Duration::ZERO)?;
        let timeout = match &r.timeout {
            Some(t) => {
                let d = self.duration(&r.timeout, &format!("{what} timeout"), Duration::ZERO)?;
                if d.is_zero() {
                    return Err(self.err(
                        t,
                        &format!("{what} timeout"),
                        "a zero timeout would stop every run at once: leave `timeout` out for none",
                    ));
                }
                Some(d)
            }
            None => None,
        };
        let timing = schedule.map(|s| {
            Timing::new(s)
                .with_jitter(jitter)
                .with_retries(retries)
                .with_backoff(
                    retry_backoff,
                    retry_backoff
                        .saturating_mul(20)
                        .max(Duration::from_secs(600)),
                )
                .with_catch_up(r.catch_up.unwrap_or(true))
        });
        if let (Some(timing), Some(j)) = (&timing, &r.jitter) {
            timing
                .check()
                .map_err(|e| self.err(j, &format!("{what} jitter"), e.message()))?;
        }
        let hooks = Hooks {
            before: r.before.clone(),
            after: r.after.clone(),
            on_failure: r.on_failure.clone(),
            timeout: self.duration(
                &r.hook_timeout,
                &format!("{what} hook_timeout"),
                hook_timeout,
            )?,
        };
        if hooks.timeout.is_zero() {
            return Err(self.err(
                &r.kind,
                &what,
                "hook_timeout is zero: every hook would be stopped at once",
            ));
        }
        let mut notify = Vec::new();
        for n in &r.notify {
            if !notifications.contains(n.get_ref()) {
                let names: Vec<&str> = notifications.iter().map(String::as_str).collect();
                let hint = suggest(n.get_ref(), &names)
                    .map(|s| format!("; did you mean '{s}'?"))
                    .unwrap_or_default();
                return Err(self.err(
                    n,
                    &format!("{what} notify"),
                    format!("no [notifications.{}] in the config{hint}", n.get_ref()),
                ));
            }
            notify.push(n.get_ref().clone());
        }

        let repository =
            |this: &Self, key: &Option<Spanned<String>>, field: &str| -> Result<String> {
                let Some(s) = key else {
                    let only: Vec<&String> = repositories.keys().collect();
                    if only.len() == 1 {
                        return Ok(only[0].clone());
                    }
                    return Err(this.err(
                        j,
                        &what,
                        format!("a {} job needs `{field}` (a [repositories.NAME])", kind),
                    ));
                };
                if repositories.contains_key(s.get_ref()) {
                    return Ok(s.get_ref().clone());
                }
                let names: Vec<&str> = repositories.keys().map(String::as_str).collect();
                let hint = suggest(s.get_ref(), &names)
                    .map(|x| format!("; did you mean '{x}'?"))
                    .unwrap_or_default();
                Err(this.err(
                    s,
                    &format!("{what} {field}"),
                    format!("no [repositories.{}] in the config{hint}", s.get_ref()),
                ))
            };
        let database = |this: &Self,
                        key: &Option<Spanned<String>>,
                        required: bool|
         -> Result<Option<String>> {
            let Some(s) = key else {
                if required {
                    return Err(this.err(
                        j,
                        &what,
                        format!("a {kind} job needs `database` (a [databases.NAME])"),
                    ));
                }
                return Ok(None);
            };
            if databases.contains_key(s.get_ref()) {
                return Ok(Some(s.get_ref().clone()));
            }
            let names: Vec<&str> = databases.keys().map(String::as_str).collect();
            let hint = suggest(s.get_ref(), &names)
                .map(|x| format!("; did you mean '{x}'?"))
                .unwrap_or_default();
            Err(this.err(
                s,
                &format!("{what} database"),
                format!("no [databases.{}] in the config{hint}", s.get_ref()),
            ))
        };
        let which = |this: &Self| -> Result<Which> {
            match r.backups.as_ref() {
                None => Ok(Which::Latest),
                Some(s) => match s.get_ref().as_str() {
                    "latest" => Ok(Which::Latest),
                    "all" => Ok(Which::All),
                    other => Err(this.err(
                        s,
                        &format!("{what} backups"),
                        format!("'{other}': use \"latest\" or \"all\""),
                    )),
                },
            }
        };
        // Keys that belong to other kinds are mistakes, not silently ignored.
        let mut foreign: Vec<&str> = Vec::new();
        let mut not_for = |present: bool, key: &'static str, kinds: &[JobKind]| {
            if present && !kinds.contains(&kind) {
                foreign.push(key);
            }
        };
        use JobKind as K;
        not_for(
            r.database.is_some(),
            "database",
            &[
                K::Backup,
                K::Verify,
                K::Forget,
                K::Copy,
                K::Maintenance,
                K::Integrity,
                K::Archive,
                K::Restore,
            ],
        );
        not_for(r.action.is_some(), "action", &[K::Maintenance]);
        not_for(r.full.is_some(), "full", &[K::Maintenance]);
        not_for(r.analyze.is_some(), "analyze", &[K::Maintenance]);
        not_for(r.concurrently.is_some(), "concurrently", &[K::Maintenance]);
        not_for(!r.tables.is_empty(), "tables", &[K::Maintenance, K::Backup]);
        for (present, key) in [
            (!r.exclude_tables.is_empty(), "exclude_tables"),
            (!r.exclude_table_data.is_empty(), "exclude_table_data"),
            (!r.schemas.is_empty(), "schemas"),
            (!r.exclude_schemas.is_empty(), "exclude_schemas"),
            (!r.paths.is_empty(), "paths"),
            (!r.exclude.is_empty(), "exclude"),
            (r.physical, "physical"),
        ] {
            not_for(present, key, &[K::Backup]);
        }
        not_for(r.lock_wait.is_some(), "lock_wait", &[K::Maintenance]);
        for (present, key) in [
            (r.table.is_some(), "table"),
            (r.predicate.is_some(), "where"),
            (r.into.is_some(), "into"),
            (r.batch.is_some(), "batch"),
            (r.pause.is_some(), "pause"),
            (r.max_rows.is_some(), "max_rows"),
            (r.max_replication_lag.is_some(), "max_replication_lag"),
            (r.max_transaction_age.is_some(), "max_transaction_age"),
            (r.max_wait.is_some(), "max_wait"),
        ] {
            not_for(present, key, &[K::Archive]);
        }
        not_for(r.to.is_some(), "to", &[K::Copy]);
        not_for(!r.tags.is_empty(), "tags", &[K::Backup]);
        not_for(r.parallel.is_some(), "parallel", &[K::Backup, K::Restore]);
        not_for(r.backup.is_some(), "backup", &[K::Restore]);
        not_for(r.clean.is_some(), "clean", &[K::Restore]);
        not_for(r.create.is_some(), "create", &[K::Restore]);
        not_for(r.safety_backup.is_some(), "safety_backup", &[K::Restore]);
        not_for(
            r.terminate_connections.is_some(),
            "terminate_connections",
            &[K::Restore],
        );
        not_for(r.keep_safety.is_some(), "keep_safety", &[K::Forget]);
        not_for(r.backups.is_some(), "backups", &[K::Verify, K::Copy]);
        not_for(r.read_data.is_some(), "read_data", &[K::Verify]);
        not_for(r.restore.is_some(), "restore", &[K::Verify]);
        not_for(r.restore_into.is_some(), "restore_into", &[K::Verify]);
        let keeps = r.keep_last.is_some()
            || r.keep_hourly.is_some()
            || r.keep_daily.is_some()
            || r.keep_weekly.is_some()
            || r.keep_monthly.is_some()
            || r.keep_yearly.is_some()
            || r.keep_within.is_some()
            || !r.keep_tags.is_empty();
        not_for(keeps, "keep_*", &[K::Forget]);
        not_for(r.group_by.is_some(), "group_by", &[K::Forget]);
        not_for(r.prune.is_some(), "prune", &[K::Forget]);
        not_for(r.max_unused.is_some(), "max_unused", &[K::Prune]);
        not_for(!r.checks.is_empty(), "checks", &[K::Health, K::Integrity]);
        not_for(
            r.repository.is_some(),
            "repository",
            &[K::Backup, K::Verify, K::Forget, K::Prune, K::Copy],
        );
        if !foreign.is_empty() {
            return Err(self.err(
                &r.kind,
                &what,
                format!("{} do(es) not apply to a {kind} job", foreign.join(", ")),
            ));
        }

        ops_core::repo::ordinary_tags(&r.tags)
            .map_err(|e| self.err(&r.kind, &format!("{what} tags"), e.message()))?;
        let work = match kind {
            K::Backup
                if r.physical
                    && (!r.paths.is_empty() || !self.table_filter(r, &what)?.is_empty()) =>
            {
                return Err(self.err(
                    &r.kind,
                    &what,
                    "physical = true takes the whole cluster: it does not combine with paths or table filters",
                ));
            }
            K::Backup => Work::Backup {
                physical: r.physical,
                database: database(self, &r.database, true)?.unwrap_or_default(),
                repository: repository(self, &r.repository, "repository")?,
                tags: r.tags.clone(),
                parallel: r.parallel.unwrap_or(2).max(1),
                filter: self.table_filter(r, &what)?,
                paths: {
                    let paths: Vec<PathBuf> = r.paths.iter().map(PathBuf::from).collect();
                    if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
                        return Err(self.err(
                            &r.kind,
                            &format!("{what} paths"),
                            format!(
                                "'{}' is not an absolute path (a daemon's working directory is no place to resolve it)",
                                p.display()
                            ),
                        ));
                    }
                    paths
                },
                excludes: {
                    // Patterns are checked now; the paths when the job runs (the
                    // checking host may not have them).
                    if let Err(e) = ops_core::repo::FileTrees::check_excludes(&r.exclude) {
                        return Err(self.err(&r.kind, &format!("{what} exclude"), e.message()));
                    }
                    r.exclude.clone()
                },
            },
            K::Verify => {
                let restore_into = match &r.restore_into {
                    Some(u) => {
                        let url = self.interpolate_url(u, &format!("{what} restore_into"))?;
                        dbops::engine(&url).map_err(|e| {
                            self.err(u, &format!("{what} restore_into"), e.message())
                        })?;
                        Some(Secret::new(url))
                    }
                    None => None,
                };
                Work::Verify {
                    repository: repository(self, &r.repository, "repository")?,
                    database: database(self, &r.database, false)?,
                    which: which(self)?,
                    read_data: r.read_data.unwrap_or(false),
                    restore: r.restore.unwrap_or(false) || restore_into.is_some(),
                    restore_into,
                }
            }
            K::Forget => {
                let mut rules = KeepRules::default()
                    .with_last(r.keep_last.unwrap_or(0))
                    .with_hourly(r.keep_hourly.unwrap_or(0))
                    .with_daily(r.keep_daily.unwrap_or(0))
                    .with_weekly(r.keep_weekly.unwrap_or(0))
                    .with_monthly(r.keep_monthly.unwrap_or(0))
                    .with_yearly(r.keep_yearly.unwrap_or(0))
                    .with_tags(r.keep_tags.iter().cloned());
                if let Some(w) = &r.keep_within {
                    let d = ops_core::retention::parse_duration(w.get_ref())
                        .map_err(|e| self.err(w, &format!("{what} keep_within"), e.message()))?;
                    rules = rules.with_within(d);
                }
                if rules.is_empty() {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "a forget job needs a rule: keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_hourly, keep_within or keep_tags",
                    ));
                }
                let group_by = match &r.group_by {
                    Some(g) => GroupBy::parse(g.get_ref())
                        .map_err(|e| self.err(g, &format!("{what} group_by"), e.message()))?,
                    None => GroupBy::default(),
                };
                let keep_safety = self.duration(
                    &r.keep_safety,
                    &format!("{what} keep_safety"),
                    ops_core::repo::ForgetOptions::default().keep_safety,
                )?;
                Work::Forget {
                    repository: repository(self, &r.repository, "repository")?,
                    database: database(self, &r.database, false)?,
                    rules,
                    group_by,
                    prune: r.prune.unwrap_or(false),
                    keep_safety,
                }
            }
            K::Health => {
                let known = crate::health::check_names();
                for c in &r.checks {
                    let service = databases.contains_key(c)
                        || c.starts_with("repository:")
                        || c.starts_with("backups:")
                        || c.starts_with("disk:")
                        || self.service_names.contains(c);
                    if !service && !known.contains(&c.as_str()) {
                        let hint = suggest(c, &known)
                            .map(|k| format!("; did you mean `{k}`?"))
                            .unwrap_or_default();
                        return Err(self.err(
                            &r.kind,
                            &format!("{what} checks"),
                            format!("`{c}` is neither a health check nor a service{hint}"),
                        ));
                    }
                }
                Work::Health {
                    checks: r.checks.clone(),
                }
            }
            K::Maintenance => {
                let Some(a) = &r.action else {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "a maintenance job needs `action`: vacuum, analyze, reindex, optimize, check or repair",
                    ));
                };
                let action = match a.get_ref().as_str() {
                    "vacuum" => Action::Vacuum {
                        full: r.full.unwrap_or(false),
                        analyze: r.analyze.unwrap_or(false),
                    },
                    "analyze" => Action::Analyze,
                    "reindex" => Action::Reindex {
                        concurrently: r.concurrently.unwrap_or(false),
                    },
                    "optimize" => Action::Optimize,
                    "check" => Action::Check,
                    "repair" => Action::Repair,
                    other => {
                        let actions = [
                            "vacuum", "analyze", "reindex", "optimize", "check", "repair",
                        ];
                        let hint = suggest(other, &actions)
                            .map(|x| format!("; did you mean '{x}'?"))
                            .unwrap_or_default();
                        return Err(self.err(
                            a,
                            &format!("{what} action"),
                            format!(
                                "unknown action '{other}'{hint} (actions: {})",
                                actions.join(", ")
                            ),
                        ));
                    }
                };
                let is_vacuum = matches!(action, Action::Vacuum { .. });
                let is_reindex = matches!(action, Action::Reindex { .. });
                for (present, flag, fits) in [
                    (r.full.is_some(), "full", is_vacuum),
                    (r.analyze.is_some(), "analyze", is_vacuum),
                    (r.concurrently.is_some(), "concurrently", is_reindex),
                ] {
                    if present && !fits {
                        return Err(self.err(
                            a,
                            &what,
                            format!("`{flag}` does not apply to action '{}'", a.get_ref()),
                        ));
                    }
                }
                Work::Maintenance {
                    database: database(self, &r.database, true)?.unwrap_or_default(),
                    action,
                    tables: r.tables.clone(),
                    lock_wait: self.duration(
                        &r.lock_wait,
                        &format!("{what} lock_wait"),
                        Duration::from_secs(60),
                    )?,
                }
            }
            K::Integrity => {
                let database = database(self, &r.database, false)?;
                for c in &r.checks {
                    let Some(found) = checks.get(c) else {
                        let names: Vec<&str> = checks.keys().map(String::as_str).collect();
                        let hint = suggest(c, &names)
                            .map(|x| format!("; did you mean '{x}'?"))
                            .unwrap_or_default();
                        return Err(self.err(
                            &r.kind,
                            &format!("{what} checks"),
                            format!("no [checks.{c}] in the config{hint}"),
                        ));
                    };
                    if let Some(d) = &database
                        && &found.database != d
                    {
                        return Err(self.err(
                            &r.kind,
                            &format!("{what} checks"),
                            format!(
                                "[checks.{c}] runs on database '{}', not '{d}'",
                                found.database
                            ),
                        ));
                    }
                }
                if checks.is_empty() {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "an integrity job needs [checks.NAME] sections in the config",
                    ));
                }
                Work::Integrity {
                    checks: r.checks.clone(),
                    database,
                }
            }
            K::Archive => {
                let mut need = |key: &Option<Spanned<String>>, name: &str| -> Result<String> {
                    match key {
                        Some(v) => {
                            let text = self.interpolate(v, &format!("{what} {name}"), false)?;
                            if text.trim().is_empty() {
                                return Err(self.err(v, &format!("{what} {name}"), "empty"));
                            }
                            Ok(text.trim().to_owned())
                        }
                        None => {
                            Err(self.err(&r.kind, &what, format!("an archive job needs `{name}`")))
                        }
                    }
                };
                let table = need(&r.table, "table")?;
                let predicate = need(&r.predicate, "where")?;
                let into = need(&r.into, "into")?;
                let mut spec = ArchiveSpec::new(table, predicate, into);
                if let Some(b) = &r.batch {
                    if *b.get_ref() == 0 {
                        return Err(self.err(b, &format!("{what} batch"), "must be at least 1"));
                    }
                    spec = spec.with_batch(*b.get_ref());
                }
                let pause = self.duration(&r.pause, &format!("{what} pause"), Duration::ZERO)?;
                let lag = self.duration(
                    &r.max_replication_lag,
                    &format!("{what} max_replication_lag"),
                    spec.max_replication_lag,
                )?;
                let age = self.duration(
                    &r.max_transaction_age,
                    &format!("{what} max_transaction_age"),
                    spec.max_transaction_age,
                )?;
                let max_wait =
                    self.duration(&r.max_wait, &format!("{what} max_wait"), spec.max_wait)?;
                spec = spec
                    .with_pause(pause)
                    .with_limits(lag, age)
                    .with_max_wait(max_wait)
                    .with_max_rows(r.max_rows);
                Work::Archive {
                    database: database(self, &r.database, true)?.unwrap_or_default(),
                    spec,
                }
            }
            K::Prune => Work::Prune {
                repository: repository(self, &r.repository, "repository")?,
                max_unused: r.max_unused.unwrap_or(5.0) / 100.0,
            },
            K::Copy => {
                let Some(to) = &r.to else {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "a copy job needs `to` (the destination [repositories.NAME])",
                    ));
                };
                let to = repository(self, &Some(to.clone()), "to")?;
                let from = repository(self, &r.repository, "repository")?;
                if to == from {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "`repository` and `to` are the same repository",
                    ));
                }
                Work::Copy {
                    repository: from,
                    to,
                    database: database(self, &r.database, false)?,
                    which: which(self)?,
                }
            }
            K::Restore => {
                let target = database(self, &r.database, true)?.unwrap_or_default();
                let backup = match &r.backup {
                    Some(b) if b.get_ref().trim().is_empty() => {
                        return Err(self.err(b, &format!("{what} backup"), "empty"));
                    }
                    Some(b) => b.get_ref().trim().to_owned(),
                    None => "latest".to_owned(),
                };
                let clean = r.clean.unwrap_or(false);
                let create = r.create.unwrap_or(false);
                if clean && create {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "`clean` replaces what an existing database holds and `create` makes a new one: choose one",
                    ));
                }
                if !clean && (r.safety_backup.is_some() || r.terminate_connections.is_some()) {
                    return Err(self.err(
                        &r.kind,
                        &what,
                        "`safety_backup` and `terminate_connections` apply to a restore with `clean = true`",
                    ));
                }
                Work::Restore {
                    database: target,
                    repository: repository(self, &r.repository, "repository")?,
                    backup,
                    clean,
                    create,
                    safety_backup: r.safety_backup.unwrap_or(true),
                    terminate_connections: r.terminate_connections.unwrap_or(false),
                    parallel: r.parallel.unwrap_or(2).max(1),
                }
            }
            _ => {
                return Err(self.err(&r.kind, &what, format!("{kind} jobs are not supported yet")));
            }
        };
        Ok(JobConfig {
            name: name.to_owned(),
            kind,
            timing,
            timeout,
            hooks,
            notify,
            work,
            retries,
            retry_backoff,
        })
    }
}

fn percent_decode(s: &str) -> std::result::Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str, vars: &[(&str, &str)]) -> Result<Config> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse(text, "t.toml", &move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    const BASE: &str = "[repositories.main]\nurl = \"/tmp/r\"\n";

    #[test]
    fn interpolation_defaults_and_escapes() {
        let c = parse(
            &format!("state_dir = \"${{HOME_DIR}}/dbops-$${{literal}}\"\n{BASE}"),
            &[("HOME_DIR", "/srv")],
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/dbops-${literal}"));
        let c = parse(&format!("state_dir = \"${{NOPE:-/var/x}}\"\n{BASE}"), &[]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/x"));
        let e = parse(&format!("state_dir = \"${{NOPE}}\"\n{BASE}"), &[])
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("t.toml:1") && e.to_string().contains("NOPE"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_remembered_scrubbed_and_kept_out_of_hooks() {
        let text = format!(
            "{BASE}[databases.erp]\nurl = \"postgres://u:${{DB_PW}}@db1/erp\"\n\
             [notifications.ops]\nkind = \"slack\"\nurl = \"${{SLACK}}\"\n"
        );
        let c = parse(
            &text,
            &[
                ("DB_PW", "s3cret-db"),
                ("SLACK", "https://hooks.slack.test/T/B/xyz-secret"),
            ],
        )
        .unwrap();
        let scrubbed = c.secrets().scrub(
            "failed at postgres://u:s3cret-db@db1 and https://hooks.slack.test/T/B/xyz-secret",
        );
        assert!(
            !scrubbed.contains("s3cret-db") && !scrubbed.contains("xyz-secret"),
            "{scrubbed}"
        );
        let env: Vec<&str> = c.secrets().env_names().collect();
        for name in ["DB_PW", "SLACK", "PGPASSWORD", "DBOPS_PASSWORD"] {
            assert!(
                env.contains(&name),
                "{name} not removed from hooks: {env:?}"
            );
        }
        let shown = c.redacted().to_string();
        assert!(
            !shown.contains("s3cret-db") && !shown.contains("xyz-secret"),
            "{shown}"
        );
        assert!(!format!("{c:?}").contains("s3cret-db"));
    }

    #[test]
    fn a_written_password_is_refused() {
        let e = parse(
            &format!(
                "{BASE}[databases.erp]\nurl = \"postgres://u@h/erp\"\npassword = \"hunter22\"\n"
            ),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("t.toml:5") && e.contains("${VAR}") && !e.contains("hunter22"),
            "{e}"
        );
    }

    #[test]
    fn keys_of_another_kind_and_unknown_references_are_errors() {
        let e = parse(
            &format!("{BASE}[jobs.p]\nkind = \"prune\"\nkeep_daily = 7\n"),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("keep_*") && e.contains("prune job"), "{e}");
        let e = parse(
            &format!("{BASE}[jobs.b]\nkind = \"backup\"\ndatabase = \"erpp\"\n[databases.erp]\nurl = \"postgres://h/erp\"\n"),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("t.toml:5") && e.contains("did you mean 'erp'"),
            "{e}"
        );
        let e = parse(&format!("{BASE}[jobs.f]\nkind = \"forget\"\n"), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs a rule"), "{e}");
        let e = parse(&format!("{BASE}[jobs.x]\nkind = \"bakup\"\n"), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("t.toml:4") && e.contains("unknown job kind"),
            "{e}"
        );
    }

    #[test]
    fn backup_jobs_take_file_trees_with_absolute_paths_and_checked_patterns() {
        let db = "[databases.erp]\nurl = \"postgres://h/erp\"\n";
        let job = |keys: &str| {
            format!("{BASE}{db}[jobs.b]\nkind = \"backup\"\ndatabase = \"erp\"\n{keys}")
        };
        let c = parse(
            &job("paths = [\"/srv/app/storage\", \"/srv/app/.env\"]\nexclude = [\"*.tmp\"]\n"),
            &[],
        )
        .expect("valid");
        let Work::Backup {
            paths, excludes, ..
        } = &c.job("b").expect("job b").work
        else {
            panic!("a backup job");
        };
        assert_eq!(paths.len(), 2);
        assert_eq!(excludes, &["*.tmp".to_owned()]);
        let e = parse(&job("physical = true\npaths = [\"/srv\"]\n"), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("physical") && e.contains("whole cluster"), "{e}");
        let c = parse(&job("physical = true\n"), &[]).expect("valid");
        assert!(matches!(
            c.job("b").expect("job b").work,
            Work::Backup { physical: true, .. }
        ));
        let e = parse(&job("paths = [\"storage\"]\n"), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("paths") && e.contains("not an absolute path"),
            "{e}"
        );
        let e = parse(&job("paths = [\"/srv\"]\nexclude = [\"[ab\"]\n"), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("exclude") && e.contains("unclosed"), "{e}");
        let e = parse(
            &format!("{BASE}[jobs.p]\nkind = \"prune\"\npaths = [\"/srv\"]\n"),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("paths"), "{e}");
    }

    #[test]
    fn backup_jobs_take_table_filters_and_report_bad_ones_by_key() {
        let db = "[databases.erp]\nurl = \"postgres://h/erp\"\n";
        let c = parse(
            &format!(
                "{BASE}{db}[jobs.b]\nkind = \"backup\"\ndatabase = \"erp\"\ntables = [\"app.*\"]\n\
                 exclude_tables = [\"app.tmp_*\"]\nexclude_table_data = [\"sessions\"]\n"
            ),
            &[],
        )
        .expect("valid");
        let Work::Backup { filter, .. } = &c.job("b").expect("job b").work else {
            panic!("a backup job");
        };
        assert!(filter.matches_table(&ops_core::TableRef::new("app", "users")));
        assert!(!filter.matches_table(&ops_core::TableRef::new("app", "tmp_1")));
        assert!(!filter.keeps_data(&ops_core::TableRef::new("app", "sessions")));
        let e = parse(
            &format!("{BASE}{db}[jobs.b]\nkind = \"backup\"\ndatabase = \"erp\"\nexclude_table_data = [\"log_(a|b)\"]\n"),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("t.toml:")
                && e.contains("exclude_table_data")
                && e.contains("double quotes"),
            "{e}"
        );
        let e = parse(
            &format!("{BASE}{db}[jobs.b]\nkind = \"backup\"\ndatabase = \"erp\"\ntables = [\"t\"]\nschemas = [\"app\"]\n"),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("schemas") && e.contains("cannot be combined"),
            "{e}"
        );
        let e = parse(
            &format!("{BASE}[jobs.p]\nkind = \"prune\"\nexclude_schemas = [\"x\"]\n"),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("exclude_schemas") && e.contains("prune job"),
            "{e}"
        );
    }

    #[test]
    fn maintenance_integrity_and_archive_jobs_and_checks() {
        let db = "[databases.erp]\nurl = \"postgres://h/erp\"\n";
        let c = parse(
            &format!(
                "{BASE}{db}[checks.orphans]\ndatabase = \"erp\"\nsql = \"SELECT 1 WHERE false\"\nseverity = \"warn\"\n\
                 [jobs.v]\nkind = \"maintenance\"\ndatabase = \"erp\"\naction = \"vacuum\"\nfull = true\nlock_wait = \"5s\"\n\
                 [jobs.i]\nkind = \"integrity\"\nchecks = [\"orphans\"]\n\
                 [jobs.a]\nkind = \"archive\"\ndatabase = \"erp\"\ntable = \"invoices\"\nwhere = \"year < 2020\"\ninto = \"invoices_old\"\nbatch = 50\nmax_wait = \"20m\"\n"
            ),
            &[],
        )
        .unwrap();
        assert!(matches!(
            c.jobs["v"].work,
            Work::Maintenance {
                action: Action::Vacuum {
                    full: true,
                    analyze: false
                },
                lock_wait,
                ..
            } if lock_wait == Duration::from_secs(5)
        ));
        assert_eq!(c.checks["orphans"].check.severity, Severity::Warn);
        assert!(
            matches!(&c.jobs["a"].work, Work::Archive { spec, .. } if spec.batch == 50 && spec.predicate == "year < 2020" && spec.max_wait == Duration::from_secs(1200))
        );
        assert_eq!(c.redacted()["checks"]["orphans"]["severity"], "warn");

        let bad = |extra: &str| {
            parse(&format!("{BASE}{db}{extra}"), &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = bad(
            "[jobs.v]\nkind = \"maintenance\"\ndatabase = \"erp\"\naction = \"analyze\"\nfull = true\n",
        );
        assert!(
            e.contains("`full` does not apply to action 'analyze'"),
            "{e}"
        );
        let e = bad("[jobs.v]\nkind = \"maintenance\"\ndatabase = \"erp\"\naction = \"reindx\"\n");
        assert!(e.contains("did you mean 'reindex'"), "{e}");
        let e = bad("[jobs.v]\nkind = \"maintenance\"\naction = \"analyze\"\n");
        assert!(e.contains("a maintenance job needs `database`"), "{e}");
        let e = bad(
            "[checks.c]\ndatabase = \"erp\"\nsql = \"SELECT 1\"\n[jobs.i]\nkind = \"integrity\"\nchecks = [\"d\"]\n",
        );
        assert!(e.contains("no [checks.d]"), "{e}");
        let e = bad("[checks.c]\ndatabase = \"erpp\"\nsql = \"SELECT 1\"\n");
        assert!(e.contains("did you mean 'erp'"), "{e}");
        let e = bad("[checks.c]\ndatabase = \"erp\"\nsql = \"SELECT 1\"\nseverity = \"fatal\"\n");
        assert!(e.contains("'fatal'"), "{e}");
        let e =
            bad("[jobs.a]\nkind = \"archive\"\ndatabase = \"erp\"\ntable = \"t\"\ninto = \"u\"\n");
        assert!(e.contains("needs `where`"), "{e}");
        let e = bad("[jobs.b]\nkind = \"backup\"\ndatabase = \"erp\"\nbatch = 5\n");
        assert!(e.contains("batch") && e.contains("backup job"), "{e}");
    }

    #[test]
    fn health_settings_are_checked() {
        let e = parse(
            &format!(
                "{BASE}[health.thresholds]\nbackup_agee = {{ warn = \"6h\", critical = \"8h\" }}\n"
            ),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("t.toml:4") && e.contains("did you mean `backup_age`"),
            "{e}"
        );
        let e = parse(&format!("{BASE}[health]\nconnect_timeout = \"0s\"\n"), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("connect_timeout is zero"), "{e}");
        let e = parse(
            &format!("{BASE}[jobs.h]\nkind = \"health\"\nchecks = [\"backup_agge\"]\n"),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("did you mean `backup_age`"), "{e}");
        let c = parse(
            &format!(
                "listen = \"127.0.0.1:9187\"\n{BASE}[services.cache]\nkind = \"redis\"\nurl = \"redis://:${{RPW}}@127.0.0.1:6379/0\"\n\
                 [health.thresholds]\nbackup_age = {{ warn = \"6h\", critical = \"8h\" }}\n[jobs.h]\nkind = \"health\"\nchecks = [\"cache\", \"backup_age\"]\n"
            ),
            &[("RPW", "redis-secret-pw")],
        )
        .unwrap();
        let shown = c.redacted().to_string();
        assert!(
            shown.contains("127.0.0.1:9187") && shown.contains("21600"),
            "{shown}"
        );
        assert!(!shown.contains("redis-secret-pw"), "{shown}");
    }

    #[test]
    fn schedules_and_defaults() {
        let c = parse(
            &format!(
                "{BASE}[jobs.b]\nkind = \"prune\"\nschedule = \"0 3 * * sun\"\ntimezone = \"Europe/Berlin\"\njitter = \"5m\"\nretries = 2\n"
            ),
            &[],
        )
        .unwrap();
        let j = c.job("b").unwrap();
        let t = j.timing.as_ref().unwrap();
        assert_eq!(t.retries, 2);
        assert_eq!(t.jitter, Duration::from_secs(300));
        assert_eq!(c.max_concurrent_jobs, 2);
        assert_eq!(c.shutdown_grace, Duration::from_secs(300));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        let e = parse(
            &format!(
                "{BASE}[jobs.b]\nkind = \"prune\"\nschedule = \"0 3 * * *\"\nevery = \"1h\"\n"
            ),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("schedul", &["schedule", "timeout"]),
            Some("schedule")
        );
        assert_eq!(suggest("retires", &["retries", "timeout"]), Some("retries"));
        assert_eq!(suggest("zzzzzz", &["retries", "timeout"]), None);
    }
}
