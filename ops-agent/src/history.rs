//! The run history: every run of every job, and every notification delivery, in a
//! SQLite file under the state directory (`history.sqlite`).
//!
//! The history is the truth about attempts (the repository is the truth about
//! backups): one-shot `dbops run` processes and the daemon write to the same file, so
//! it uses WAL mode and a busy timeout; losing it loses counts, never backups.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row as _, sqlite::SqliteRow};

use ops_core::jobs::{EventKind, JobKind, RunRecord, RunStatus, Trigger};
use ops_core::repo::{host_name, process_alive, process_start};
use ops_core::{Error, ErrorKind, Result};

/// The history file's name under the state directory.
pub const HISTORY_FILE: &str = "history.sqlite";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT NOT NULL,
        kind TEXT NOT NULL,
        trigger TEXT NOT NULL,
        slot_ms INTEGER,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        backup_id TEXT,
        bytes INTEGER,
        new_bytes INTEGER,
        stored_bytes INTEGER,
        error TEXT,
        error_kind TEXT,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_start INTEGER
    )",
    "CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job, id)",
    "CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        notifier TEXT NOT NULL,
        event TEXT NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT,
        at_ms INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS deliveries_by_run ON deliveries (run_id)",
];

/// One notification delivery, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct DeliveryRecord {
    /// The run it was about.
    pub run_id: i64,
    /// The notifier's name.
    pub notifier: String,
    /// The event.
    pub event: EventKind,
    /// Whether it was delivered.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl DeliveryRecord {
    /// A delivery record.
    pub fn new(
        run_id: i64,
        notifier: impl Into<String>,
        event: EventKind,
        error: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            run_id,
            notifier: notifier.into(),
            event,
            ok: error.is_none(),
            error,
            at,
        }
    }
}

/// The run history store.
#[derive(Debug, Clone)]
pub struct RunHistory {
    pool: SqlitePool,
    path: PathBuf,
}

fn db_error(doing: &str, path: &Path, e: sqlx::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("{doing} in the run history {}: {e}", path.display()),
    )
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|x| u64::try_from(x).ok())
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.and_then(|x| i64::try_from(x).ok())
}

impl RunHistory {
    /// Opens (creating if needed) the history under `state_dir`, which is created
    /// owner-only when missing.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] naming the path when the directory or file cannot be made or
    /// opened.
    pub async fn open(state_dir: &Path) -> Result<Self> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(HISTORY_FILE);
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| db_error("opening", &path, e))?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| db_error("opening", &path, e))?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&pool)
                .await
                .map_err(|e| db_error("creating tables", &path, e))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Self { pool, path })
    }

    /// Where the history file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a new run; returns its id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert(&self, r: &RunRecord) -> Result<i64> {
        let pid_start = process_start(r.pid).and_then(|v| i64::try_from(v).ok());
        let row = sqlx::query(
            "INSERT INTO runs (job, kind, trigger, slot_ms, started_ms, ended_ms, status, attempts,
                backup_id, bytes, new_bytes, stored_bytes, error, error_kind, host, pid, pid_start)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&r.job)
        .bind(r.kind.as_str())
        .bind(r.trigger.as_str())
        .bind(r.slot.map(ms))
        .bind(ms(r.started))
        .bind(r.ended.map(ms))
        .bind(r.status.as_str())
        .bind(i64::from(r.attempts))
        .bind(&r.backup_id)
        .bind(opt_i64(r.bytes))
        .bind(opt_i64(r.new_bytes))
        .bind(opt_i64(r.stored_bytes))
        .bind(&r.error)
        .bind(&r.error_kind)
        .bind(&r.host)
        .bind(i64::from(r.pid))
        .bind(pid_start)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("recording a run", &self.path, e))?;
        Ok(row.get::<i64, _>(0))
    }

    /// Stores a run's new state (by its id).
    ///
    /// # Errors
    /// Database errors.
    pub async fn update(&self, r: &RunRecord) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET ended_ms = ?, status = ?, attempts = ?, backup_id = ?, bytes = ?,
                new_bytes = ?, stored_bytes = ?, error = ?, error_kind = ? WHERE id = ?",
        )
        .bind(r.ended.map(ms))
        .bind(r.status.as_str())
        .bind(i64::from(r.attempts))
        .bind(&r.backup_id)
        .bind(opt_i64(r.bytes))
        .bind(opt_i64(r.new_bytes))
        .bind(opt_i64(r.stored_bytes))
        .bind(&r.error)
        .bind(&r.error_kind)
        .bind(r.id)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("updating a run", &self.path, e))?;
        Ok(())
    }

    /// Records notification deliveries.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_deliveries(&self, deliveries: &[DeliveryRecord]) -> Result<()> {
        for d in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (run_id, notifier, event, ok, error, at_ms) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(d.run_id)
            .bind(&d.notifier)
            .bind(d.event.as_str())
            .bind(d.ok)
            .bind(&d.error)
            .bind(ms(d.at))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("recording a delivery", &self.path, e))?;
        }
        Ok(())
    }

    /// The deliveries about run `run_id`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn deliveries(&self, run_id: i64) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(
            "SELECT run_id, notifier, event, ok, error, at_ms FROM deliveries WHERE run_id = ? ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading deliveries", &self.path, e))?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    run_id: r.get(0),
                    notifier: r.get(1),
                    event: EventKind::parse(r.get::<&str, _>(2))?,
                    ok: r.get(3),
                    error: r.get(4),
                    at: from_ms(r.get(5)),
                })
            })
            .collect()
    }

    /// Runs, newest first: of `job` (or every job), at most `limit`.
    ///
    /// # Errors
    /// Database errors; a row this version cannot read.
    pub async fn runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match job {
            Some(j) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT_RUN} WHERE job = ? ORDER BY id DESC LIMIT ?"
                )))
                .bind(j)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT_RUN} ORDER BY id DESC LIMIT ?"
                )))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(|e| db_error("reading runs", &self.path, e))?;
        rows.iter().map(run_from_row).collect()
    }

    /// How `job`'s newest finished run (success or failure) other than `except` ended.
    ///
    /// # Errors
    /// Database errors.
    pub async fn last_outcome(&self, job: &str, except: i64) -> Result<Option<RunStatus>> {
        let row = sqlx::query(
            "SELECT status FROM runs WHERE job = ? AND id <> ? AND status IN ('success', 'failure')
             ORDER BY id DESC LIMIT 1",
        )
        .bind(job)
        .bind(except)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading runs", &self.path, e))?;
        row.map(|r| RunStatus::parse(r.get::<&str, _>(0)))
            .transpose()
    }

    /// The newest schedule slot `job` has a run or skip recorded for.
    ///
    /// # Errors
    /// Database errors.
    pub async fn last_slot(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query("SELECT MAX(slot_ms) FROM runs WHERE job = ?")
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("reading runs", &self.path, e))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_ms))
    }

    /// Marks as failed every run left `running` by a process on this host that is no
    /// longer running (a crash, a kill, a power cut). Returns how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<usize> {
        let rows = sqlx::query(
            "SELECT id, pid, pid_start FROM runs WHERE status = 'running' AND host = ?",
        )
        .bind(host_name())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading runs", &self.path, e))?;
        let mut n = 0;
        for r in rows {
            let id: i64 = r.get(0);
            let pid = u32::try_from(r.get::<i64, _>(1)).unwrap_or(0);
            let start = r
                .get::<Option<i64>, _>(2)
                .and_then(|v| u64::try_from(v).ok());
            if process_alive(pid, start) {
                continue;
            }
            sqlx::query("UPDATE runs SET status = 'failure', ended_ms = ?, error = ?, error_kind = 'interrupted' WHERE id = ? AND status = 'running'")
                .bind(ms(now))
                .bind(format!(
                    "interrupted: the process running it (pid {pid}) ended without recording an outcome (crash, kill or power loss); nothing it half-wrote is listed as a backup"
                ))
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("updating a run", &self.path, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Closes the store.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

const SELECT_RUN: &str =
    "SELECT id, job, kind, trigger, slot_ms, started_ms, ended_ms, status, attempts,
    backup_id, bytes, new_bytes, stored_bytes, error, host, pid, error_kind FROM runs";

fn run_from_row(r: &SqliteRow) -> Result<RunRecord> {
    let mut rec = RunRecord::start(
        r.get::<String, _>(1),
        JobKind::parse(r.get::<&str, _>(2))?,
        Trigger::parse(r.get::<&str, _>(3))?,
        from_ms(r.get(5)),
    )
    .with_slot(r.get::<Option<i64>, _>(4).map(from_ms));
    rec.id = r.get(0);
    rec.ended = r.get::<Option<i64>, _>(6).map(from_ms);
    rec.status = RunStatus::parse(r.get::<&str, _>(7))?;
    rec.attempts = u32::try_from(r.get::<i64, _>(8)).unwrap_or(0);
    rec.backup_id = r.get(9);
    rec.bytes = opt_u64(r.get(10));
    rec.new_bytes = opt_u64(r.get(11));
    rec.stored_bytes = opt_u64(r.get(12));
    rec.error = r.get(13);
    rec.host = r.get(14);
    rec.pid = u32::try_from(r.get::<i64, _>(15)).unwrap_or(0);
    rec.error_kind = r.get(16);
    Ok(rec)
}

/// Creates `dir` (and parents) owner-only when missing.
///
/// # Errors
/// [`ErrorKind::Io`] naming the directory.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| {
        Error::io(
            format!(
                "creating the state directory {} (set state_dir in the config to a writable place)",
                dir.display()
            ),
            e,
        )
    })
}
