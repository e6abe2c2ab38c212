//! The run history: every run of every job, and every notification delivery, in a
//! SQLite file under the state directory (`history.sqlite`).
//!
//! The history is the truth about attempts (the repository is the truth about
//! backups): one-shot `dbops run` processes and the daemon write to the same file, so
//! it uses WAL mode and a busy timeout; losing it loses counts, never backups.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
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
        verified TEXT,
        rows INTEGER,
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

/// Columns of `runs` newer than the table itself (name, declaration).
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("error_kind", "TEXT"),
    ("verified", "TEXT"),
    ("rows", "INTEGER"),
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

/// How many runs (and attempts) a job had with one status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunCount {
    /// The job.
    pub job: String,
    /// Its kind.
    pub kind: JobKind,
    /// The status.
    pub status: RunStatus,
    /// Runs.
    pub runs: u64,
    /// Attempts over those runs.
    pub attempts: u64,
}

/// The run history store.
#[derive(Debug, Clone)]
pub struct RunHistory {
    pool: SqlitePool,
    path: PathBuf,
    /// This process's owner lock (`owners/HOST-PID.lock` under the state directory),
    /// held while the process lives: another process that finds a run of ours
    /// "running" can tell from it whether we are still alive — across hosts and
    /// containers sharing the state directory, where pids mean nothing.
    _owner: Arc<Owner>,
}

/// A held owner lock; its file is removed when the process is done with the history
/// (a process that dies leaves it, which is how others tell it died).
struct Owner {
    _lock: nix::fcntl::Flock<std::fs::File>,
    file: PathBuf,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner")
    }
}

/// The owner lock file of process `pid` on `host`.
fn owner_file(state_dir: &Path, host: &str, pid: u32) -> PathBuf {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("owners").join(format!("{host}-{pid}.lock"))
}

/// Whether the process that owns `file` still holds its lock: `Some(true)` alive,
/// `Some(false)` gone, `None` no such file.
fn owner_alive(file: &Path) -> Option<bool> {
    let f = std::fs::File::open(file).ok()?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => Some(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Some(true),
        // Cannot tell (a filesystem without locks): assume alive, never fail a live run.
        Err(_) => Some(true),
    }
}

fn take_owner_lock(state_dir: &Path) -> Result<Owner> {
    let file = owner_file(state_dir, &host_name(), std::process::id());
    if let Some(dir) = file.parent() {
        create_private_dir(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&file)
        .map_err(|e| Error::io(format!("creating the owner lock {}", file.display()), e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(|lock| Owner {
            _lock: lock,
            file: file.clone(),
        })
        .map_err(|(_, e)| {
            Error::io(
                format!("locking {}", file.display()),
                std::io::Error::from(e),
            )
        })
}

/// An exclusive lock on `<state_dir>/history.lock`, held while one process opens and
/// sets up the history file; released on drop.
async fn lock_for_opening(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = state_dir.join("history.lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .map_err(|e| Error::io(format!("creating {}", file.display()), e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            Error::io(
                format!("locking {}", file.display()),
                std::io::Error::from(e),
            )
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Io, format!("locking the run history: {e}")))?
}

/// SQLite's "database is locked" (`SQLITE_BUSY`, code 5, and its extended codes).
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

fn db_error(doing: &str, path: &Path, e: sqlx::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("{doing} in the run history {}: {e}", path.display()),
    )
}

/// Column `i` of a row, or an error naming the damage (never a panic on a file
/// someone edited or a disk that lost a page).
fn col<'r, T>(row: &'r SqliteRow, i: usize) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(i).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("the run history has a value this version cannot read (column {i}): {e}; move the file away to start a new history"),
        )
    })
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
        // Processes opening the file at once take turns: switching a new file to WAL
        // and creating its tables can fail at once with "database is locked" (SQLite
        // does not wait on its busy handler for a journal-mode change), which stopped
        // a daemon at start while a `history` command opened the same file.
        let _opening = lock_for_opening(state_dir).await?;
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| db_error("opening", &path, e))?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL: no fsync per commit, still never corrupt; a power cut
            // may lose the newest records, never the repository's backups. Under a
            // busy disk a fsync per record made runs crawl.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        // And a connection refused as busy is tried again for a while: the busy
        // handler covers reads and writes, not every step of setting a connection up.
        let mut pause = Duration::from_millis(50);
        let started = std::time::Instant::now();
        let pool = loop {
            match SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(e) if is_busy(&e) && started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(db_error("opening", &path, e)),
            }
        };
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&pool)
                .await
                .map_err(|e| db_error("creating tables", &path, e))?;
        }
        // Columns added after the first release of the file: an older history gains
        // them (empty for its old runs).
        let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('runs')")
            .fetch_all(&pool)
            .await
            .map_err(|e| db_error("reading the table layout", &path, e))?
            .iter()
            .map(|r| col::<String>(r, 0))
            .collect::<Result<_>>()?;
        for (column, decl) in ADDED_COLUMNS {
            if !columns.iter().any(|c| c == column) {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE runs ADD COLUMN {column} {decl}"
                )))
                .execute(&pool)
                .await
                .or_else(|e| {
                    // Another process opening the same file added it first.
                    if e.to_string().contains("duplicate column") {
                        Ok(Default::default())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| db_error("adding a column", &path, e))?;
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        let owner = Arc::new(take_owner_lock(state_dir)?);
        Ok(Self {
            pool,
            path,
            _owner: owner,
        })
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
                backup_id, bytes, new_bytes, stored_bytes, error, error_kind, verified, rows, host, pid, pid_start)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        .bind(&r.verified)
        .bind(opt_i64(r.rows))
        .bind(&r.host)
        .bind(i64::from(r.pid))
        .bind(pid_start)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("recording a run", &self.path, e))?;
        col::<i64>(&row, 0)
    }

    /// Stores several finished runs (skipped slots) in one transaction.
    ///
    /// # Errors
    /// Database errors (then none is stored).
    pub async fn insert_many(&self, records: &[RunRecord]) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db_error("recording runs", &self.path, e))?;
        for r in records {
            sqlx::query(
                "INSERT INTO runs (job, kind, trigger, slot_ms, started_ms, ended_ms, status, attempts,
                    error, host, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&r.job)
            .bind(r.kind.as_str())
            .bind(r.trigger.as_str())
            .bind(r.slot.map(ms))
            .bind(ms(r.started))
            .bind(r.ended.map(ms))
            .bind(r.status.as_str())
            .bind(i64::from(r.attempts))
            .bind(&r.error)
            .bind(&r.host)
            .bind(i64::from(r.pid))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("recording runs", &self.path, e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("recording runs", &self.path, e))
    }

    /// Marks this process's runs of `job` still recorded as running as failed, with
    /// `why` (a run task that ended abnormally).
    ///
    /// # Errors
    /// Database errors.
    pub async fn fail_running(&self, job: &str, why: &str) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET status = 'failure', ended_ms = ?, error = ?, error_kind = 'internal'
             WHERE job = ? AND status = 'running' AND host = ? AND pid = ?",
        )
        .bind(ms(chrono::Utc::now()))
        .bind(why)
        .bind(job)
        .bind(host_name())
        .bind(i64::from(std::process::id()))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("updating a run", &self.path, e))?;
        Ok(())
    }

    /// Stores a run's new state (by its id).
    ///
    /// # Errors
    /// Database errors.
    pub async fn update(&self, r: &RunRecord) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET ended_ms = ?, status = ?, attempts = ?, backup_id = ?, bytes = ?,
                new_bytes = ?, stored_bytes = ?, error = ?, error_kind = ?, verified = ?, rows = ? WHERE id = ?",
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
        .bind(&r.verified)
        .bind(opt_i64(r.rows))
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
                    run_id: col(r, 0)?,
                    notifier: col(r, 1)?,
                    event: EventKind::parse(col::<&str>(r, 2)?)?,
                    ok: col(r, 3)?,
                    error: col(r, 4)?,
                    at: from_ms(col(r, 5)?),
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
        row.map(|r| RunStatus::parse(col::<&str>(&r, 0)?))
            .transpose()
    }

    /// `job`'s newest successful run, however many runs or skips came after it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn last_success(&self, job: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_RUN} WHERE job = ? AND status = 'success' ORDER BY id DESC LIMIT 1"
        )))
        .bind(job)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading runs", &self.path, e))?;
        row.as_ref().map(run_from_row).transpose()
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
        Ok(col::<Option<i64>>(&row, 0)?.map(from_ms))
    }

    /// Marks as failed every run left `running` by a process on this host that is no
    /// longer running (a crash, a kill, a power cut). Returns how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<usize> {
        let state_dir = self.path.parent().unwrap_or(Path::new("."));
        let rows =
            sqlx::query("SELECT id, pid, pid_start, host FROM runs WHERE status = 'running'")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("reading runs", &self.path, e))?;
        let me = (host_name(), std::process::id());
        let mut n = 0;
        for r in rows {
            let id: i64 = col(&r, 0)?;
            let pid = u32::try_from(col::<i64>(&r, 1)?).unwrap_or(0);
            let start = col::<Option<i64>>(&r, 2)?.and_then(|v| u64::try_from(v).ok());
            let host: String = col(&r, 3)?;
            if (host.clone(), pid) == me {
                continue;
            }
            let file = owner_file(state_dir, &host, pid);
            let alive = match owner_alive(&file) {
                Some(alive) => alive,
                // No owner file: on this host, ask the kernel; elsewhere the owner
                // would have made one, so it is gone.
                None if host == me.0 => process_alive(pid, start),
                None => false,
            };
            if alive {
                continue;
            }
            let _ = std::fs::remove_file(&file);
            sqlx::query("UPDATE runs SET status = 'failure', ended_ms = ?, error = ?, error_kind = 'interrupted' WHERE id = ? AND status = 'running'")
                .bind(ms(now))
                .bind(format!(
                    "interrupted: the process running it (pid {pid} on {host}) ended without recording an outcome (crash, kill or power loss); nothing it half-wrote is listed as a backup"
                ))
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("updating a run", &self.path, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Runs and attempts per job, kind and status, over the whole history (for the
    /// metrics' counters, which therefore survive restarts and one-shot runs).
    ///
    /// # Errors
    /// Database errors.
    pub async fn counts(&self) -> Result<Vec<RunCount>> {
        let rows = sqlx::query(
            "SELECT job, kind, status, COUNT(*), SUM(attempts) FROM runs GROUP BY job, kind, status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("counting runs", &self.path, e))?;
        rows.iter()
            .map(|r| {
                Ok(RunCount {
                    job: col(r, 0)?,
                    kind: JobKind::parse(col::<&str>(r, 1)?)?,
                    status: RunStatus::parse(col::<&str>(r, 2)?)?,
                    runs: u64::try_from(col::<i64>(r, 3)?).unwrap_or(0),
                    attempts: u64::try_from(col::<Option<i64>>(r, 4)?.unwrap_or(0)).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Failed notification deliveries per notifier, over the whole history.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delivery_failures(&self) -> Result<Vec<(String, u64)>> {
        let rows =
            sqlx::query("SELECT notifier, COUNT(*) FROM deliveries WHERE ok = 0 GROUP BY notifier")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("counting deliveries", &self.path, e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    col::<String>(r, 0)?,
                    u64::try_from(col::<i64>(r, 1)?).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Closes the store.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

const SELECT_RUN: &str =
    "SELECT id, job, kind, trigger, slot_ms, started_ms, ended_ms, status, attempts,
    backup_id, bytes, new_bytes, stored_bytes, error, host, pid, error_kind, verified, rows FROM runs";

fn run_from_row(r: &SqliteRow) -> Result<RunRecord> {
    let mut rec = RunRecord::start(
        col::<String>(r, 1)?,
        JobKind::parse(col::<&str>(r, 2)?)?,
        Trigger::parse(col::<&str>(r, 3)?)?,
        from_ms(col(r, 5)?),
    )
    .with_slot(col::<Option<i64>>(r, 4)?.map(from_ms));
    rec.id = col(r, 0)?;
    rec.ended = col::<Option<i64>>(r, 6)?.map(from_ms);
    rec.status = RunStatus::parse(col::<&str>(r, 7)?)?;
    rec.attempts = u32::try_from(col::<i64>(r, 8)?).unwrap_or(0);
    rec.backup_id = col(r, 9)?;
    rec.bytes = opt_u64(col(r, 10)?);
    rec.new_bytes = opt_u64(col(r, 11)?);
    rec.stored_bytes = opt_u64(col(r, 12)?);
    rec.error = col(r, 13)?;
    rec.host = col(r, 14)?;
    rec.pid = u32::try_from(col::<i64>(r, 15)?).unwrap_or(0);
    rec.error_kind = col(r, 16)?;
    rec.verified = col(r, 17)?;
    rec.rows = opt_u64(col(r, 18)?);
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
