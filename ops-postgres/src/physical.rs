//! Physical base backups and point-in-time recovery.
//!
//! [`PhysicalEngine`] is a [`DatabaseEngine`] over a whole cluster: its dump runs
//! `pg_basebackup` in tar format to stdout and cuts the tar stream into one stream per
//! file of the data directory (`pgdata/<path>`), so that an unchanged relation file
//! de-duplicates against the previous base backup; its restore lays those files down
//! in an empty directory and writes the recovery settings (`recovery.signal` and
//! lines appended to `postgresql.auto.conf`). [`start_recovered`] starts a server on
//! such a directory and waits until recovery reached its target; [`prove_restore`] is
//! the proof of a physical backup (restore, recover to consistency, `pg_amcheck`).
//!
//! WAL itself does not pass through here: the server archives it (into the
//! repository's log archive, [`ops_core::repo::Repository::push_log`]) and a restore
//! reads it back through the `restore_command` the caller gives. The names of that
//! command are the caller's: this library never spells them.
//!
//! Nothing here buffers a file: a tar member moves to its stream in chunks of
//! 256 KiB, and a restored file is written as its stream arrives.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Uid};
use ops_core::chrono::{DateTime, FixedOffset, Utc};
use ops_core::repo::{LOG_FILES_KEY, LOG_KIND_KEY, LOG_SERIES_KEY, LOG_START_KEY, LOG_STOP_KEY};
use ops_core::{
    DatabaseEngine, DumpOptions, DumpReport, DumpSink, Error, ErrorKind, GlobalsOptions,
    RestoreOptions, RestoreReport, Result, ServerInfo, StreamRole, StreamSource, StreamSpec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::PostgresEngine;
use crate::config::ConnConfig;
use crate::errors::{column, query_error};
use crate::tools;
use crate::wal::{self, Lsn, Segment};

/// The engine name stored in the manifests of physical backups.
pub const ENGINE_NAME: &str = "postgresql-physical";
/// The "database" of a physical backup: the whole cluster.
pub const CLUSTER: &str = "cluster";
/// Streams holding the data directory's files and directories: `pgdata/<path>`.
pub const PGDATA_PREFIX: &str = "pgdata/";
/// The stream holding the `backup_manifest` PostgreSQL sends with the backup.
pub const MANIFEST_STREAM: &str = "backup_manifest";

/// Stream meta: `file` or `dir`.
pub const META_TYPE: &str = "type";
/// Stream meta: permission bits, octal (`0600`).
pub const META_MODE: &str = "mode";
/// Stream meta: bytes of a file.
pub const META_SIZE: &str = "size";
/// Stream meta: modification time, seconds since the epoch.
pub const META_MTIME: &str = "mtime";

/// Snapshot key: the backup's start position (`0/2000028`).
pub const START_LSN_KEY: &str = "start_lsn";
/// Snapshot key: the position where the backup becomes consistent.
pub const STOP_LSN_KEY: &str = "stop_lsn";
/// Snapshot key: the timeline the backup started on.
pub const TIMELINE_KEY: &str = "timeline";
/// Snapshot key: `wal_segment_size` in bytes.
pub const SEGMENT_SIZE_KEY: &str = "segment_size";
/// Snapshot key: the cluster's system identifier.
pub const SYSTEM_IDENTIFIER_KEY: &str = "system_identifier";
/// Snapshot key: the first WAL segment a restore needs.
pub const WAL_START_KEY: &str = "wal_start";
/// Snapshot key: the last WAL segment a restore needs to be consistent.
pub const WAL_STOP_KEY: &str = "wal_stop";

/// Bytes moved per write, both ways.
const CHUNK: usize = 256 * 1024;
/// How long a dump waits, by default, for the server to archive the backup's last
/// WAL segment once the files are sent (see [`PhysicalEngine::with_archive_wait`]).
pub const DEFAULT_ARCHIVE_WAIT: Duration = Duration::from_secs(300);
/// How long [`start_recovered`] waits, by default, for recovery to reach its target.
pub const DEFAULT_RECOVERY_WAIT: Duration = Duration::from_secs(600);
/// The most of `backup_manifest` kept in memory: its end, where the WAL ranges are.
const MANIFEST_TAIL: usize = 64 * 1024;

/// Which side of a physical backup an engine is for.
#[derive(Clone)]
enum Side {
    /// Takes base backups of this server.
    Source {
        engine: Box<PostgresEngine>,
        archive_wait: Duration,
    },
    /// Restores into this data directory.
    Target {
        dir: PathBuf,
        recovery: RecoverySettings,
    },
}

/// Physical base backups of a whole PostgreSQL cluster, and their restore into a data
/// directory. See the module documentation.
///
/// Built for one side: [`PhysicalEngine::new`] / [`PhysicalEngine::from_url`] take
/// backups of a server (restore refuses), [`PhysicalEngine::restore_to`] restores into
/// a directory (dump refuses). `Debug` shows the URL with its password as `******`.
#[derive(Clone)]
pub struct PhysicalEngine {
    side: Side,
}

impl fmt::Debug for PhysicalEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.side {
            Side::Source {
                engine,
                archive_wait,
            } => f
                .debug_struct("PhysicalEngine")
                .field("source", engine)
                .field("archive_wait", archive_wait)
                .finish(),
            Side::Target { dir, recovery } => f
                .debug_struct("PhysicalEngine")
                .field("target", dir)
                .field("recovery", recovery)
                .finish(),
        }
    }
}

impl PhysicalEngine {
    /// Takes base backups of the server `engine` connects to (its database only serves
    /// the checks before the backup; the backup is the whole cluster).
    pub fn new(engine: PostgresEngine) -> Self {
        Self {
            side: Side::Source {
                engine: Box::new(engine),
                archive_wait: DEFAULT_ARCHIVE_WAIT,
            },
        }
    }

    /// [`PhysicalEngine::new`] over [`PostgresEngine::new`]`(url)`.
    ///
    /// # Errors
    /// As [`PostgresEngine::new`].
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::new(PostgresEngine::new(url)?))
    }

    /// Restores into the data directory `dir` (which must be absent or empty), with
    /// these recovery settings.
    pub fn restore_to(dir: impl Into<PathBuf>, recovery: RecoverySettings) -> Self {
        Self {
            side: Side::Target {
                dir: dir.into(),
                recovery,
            },
        }
    }

    /// How long a backup waits for the server to archive its last WAL segment once
    /// every file is sent (default [`DEFAULT_ARCHIVE_WAIT`]); `pg_basebackup` itself
    /// would wait for ever behind a failing archive command.
    #[must_use]
    pub fn with_archive_wait(mut self, wait: Duration) -> Self {
        if let Side::Source { archive_wait, .. } = &mut self.side {
            *archive_wait = wait.max(Duration::from_secs(1));
        }
        self
    }

    fn source(&self, doing: &str) -> Result<(&PostgresEngine, Duration)> {
        match &self.side {
            Side::Source {
                engine,
                archive_wait,
            } => Ok((engine, *archive_wait)),
            Side::Target { dir, .. } => Err(Error::invalid(format!(
                "{doing} needs a server: this physical engine restores into {} \
                 (PhysicalEngine::restore_to); build one with PhysicalEngine::new",
                dir.display()
            ))),
        }
    }
}

#[async_trait]
impl DatabaseEngine for PhysicalEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn location(&self) -> String {
        match &self.side {
            Side::Source { engine, .. } => engine.location(),
            Side::Target { dir, .. } => dir.display().to_string(),
        }
    }

    fn database(&self) -> String {
        CLUSTER.to_owned()
    }

    async fn describe(&self) -> Result<ServerInfo> {
        let (engine, _) = self.source("describing a cluster")?;
        let mut info = engine.describe().await?;
        info.engine = ENGINE_NAME.to_owned();
        Ok(info)
    }

    async fn dump(&self, options: &DumpOptions, sink: Arc<dyn DumpSink>) -> Result<DumpReport> {
        let (engine, archive_wait) = self.source("a physical base backup")?;
        if !options.tables.is_empty() || !options.filter.is_empty() || options.data_only {
            return Err(Error::invalid(
                "a physical base backup copies the whole cluster: table filters, table lists \
                 and data-only dumps do not apply to it",
            ));
        }
        dump_cluster(engine, archive_wait, sink).await
    }

    async fn restore(
        &self,
        source: Arc<dyn StreamSource>,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        match &self.side {
            Side::Target { dir, recovery } => lay_down(dir, recovery, source, options.jobs).await,
            Side::Source { engine, .. } => Err(Error::invalid(format!(
                "a physical backup is restored into a data directory \
                 (PhysicalEngine::restore_to), not onto the running server {}",
                engine.location()
            ))),
        }
    }

    async fn drop_database(&self) -> Result<()> {
        Err(Error::invalid(
            "a physical backup restores a whole data directory: there is no database to drop",
        ))
    }

    /// Roles, memberships and tablespaces live in the cluster's own files, which the
    /// base backup holds: there is nothing to take beside it.
    async fn dump_globals(
        &self,
        _options: &GlobalsOptions,
        _sink: Arc<dyn DumpSink>,
    ) -> Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------

/// What the server says before a backup.
#[derive(Debug, Clone, Default)]
struct ServerFacts {
    version: String,
    version_num: i32,
    archive_mode: String,
    /// `None` when this role may not read it.
    archive_command: Option<String>,
    archive_library: Option<String>,
    segment_size: u64,
    user: String,
    may_replicate: bool,
    system_identifier: Option<u64>,
    /// Tablespaces other than `pg_default` and `pg_global`: (oid, name, location).
    tablespaces: Vec<(u32, String, String)>,
}

/// Refuses a server whose base backups could never be restored: archiving off, or
/// on with nothing to archive with (only checked when the role can read the command).
fn check_archiving(facts: &ServerFacts) -> Result<()> {
    if !matches!(facts.archive_mode.as_str(), "on" | "always") {
        return Err(Error::invalid(format!(
            "archive_mode is {} on this server: a base backup is only consistent with the \
             WAL written while it was taken, and nothing archives it. Set archive_mode = on \
             (a restart) and an archive_command that pushes WAL into the repository's \
             archive, then take the backup",
            facts.archive_mode
        )));
    }
    let command = facts.archive_command.as_deref().map(str::trim);
    let library = facts.archive_library.as_deref().map(str::trim);
    if command == Some("") && library.is_none_or(str::is_empty) {
        return Err(Error::invalid(
            "archive_mode is on but neither archive_command nor archive_library is set: the \
             server keeps its WAL and archives none of it. Set archive_command to push WAL \
             into the repository's archive (a reload), then take the backup",
        ));
    }
    Ok(())
}

/// Refuses a role that cannot open a replication connection.
fn check_replication_role(facts: &ServerFacts) -> Result<()> {
    if facts.may_replicate {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "role '{0}' cannot take a base backup: it needs the REPLICATION attribute \
             (as a superuser: ALTER ROLE \"{0}\" WITH REPLICATION) and a pg_hba.conf line \
             allowing it replication connections (database keyword 'replication')",
            facts.user
        ),
    )
    .with_context("role", &facts.user))
}

/// Refuses a cluster with tablespaces outside the data directory: one tar stream
/// (`-D -`) carries the main data directory only.
fn check_tablespaces(tablespaces: &[(u32, String, String)]) -> Result<()> {
    if tablespaces.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = tablespaces
        .iter()
        .map(|(oid, name, location)| format!("'{name}' (oid {oid}, at {location})"))
        .collect();
    Err(Error::invalid(format!(
        "the cluster has tablespace(s) {}: a physical base backup is taken as one stream \
         of the data directory, which cannot carry tablespaces kept elsewhere; move their \
         objects to pg_default (ALTER TABLE … SET TABLESPACE pg_default) or take logical \
         backups of this cluster",
        named.join(", ")
    )))
}

fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "" | "B" => 1,
        "kB" => 1024,
        "8kB" => 8192,
        "MB" => 1024 * 1024,
        "GB" => 1024 * 1024 * 1024,
        _ => return None,
    })
}

async fn server_facts(config: &ConnConfig) -> Result<ServerFacts> {
    const DOING: &str = "reading the server's settings before a base backup";
    let client = crate::session::connect(config).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    current_setting('server_version_num')::int4,
                    current_setting('archive_mode'),
                    (SELECT setting FROM pg_settings WHERE name = 'archive_command'),
                    (SELECT setting FROM pg_settings WHERE name = 'archive_library'),
                    (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size'),
                    (SELECT coalesce(unit, '') FROM pg_settings WHERE name = 'wal_segment_size'),
                    current_user::text,
                    coalesce((SELECT rolsuper OR rolreplication FROM pg_roles
                               WHERE rolname = current_user), false),
                    has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')",
            &[],
        )
        .await
        .map_err(|e| query_error(e, DOING))?;
    let mut facts = ServerFacts {
        version: column(&row, 0, DOING)?,
        version_num: column(&row, 1, DOING)?,
        archive_mode: column(&row, 2, DOING)?,
        archive_command: column(&row, 3, DOING)?,
        archive_library: column(&row, 4, DOING)?,
        user: column(&row, 7, DOING)?,
        may_replicate: column(&row, 8, DOING)?,
        ..ServerFacts::default()
    };
    let setting: Option<i64> = column(&row, 5, DOING)?;
    let unit: Option<String> = column(&row, 6, DOING)?;
    facts.segment_size = setting
        .and_then(|s| u64::try_from(s).ok())
        .zip(unit.as_deref().and_then(unit_bytes))
        .map(|(s, u)| s * u)
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Database,
                format!("the server reports no usable wal_segment_size ({setting:?} {unit:?})"),
            )
        })?;
    let may_read_control: bool = column(&row, 9, DOING)?;
    if may_read_control {
        let row = client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "reading the system identifier"))?;
        let text: String = column(&row, 0, "reading the system identifier")?;
        facts.system_identifier = text.parse().ok();
    }
    let rows = client
        .query(
            "SELECT oid::int8, spcname::text, pg_tablespace_location(oid)
               FROM pg_tablespace
              WHERE spcname NOT IN ('pg_default', 'pg_global')
              ORDER BY spcname",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "listing tablespaces"))?;
    for row in rows {
        let oid: i64 = column(&row, 0, "listing tablespaces")?;
        facts.tablespaces.push((
            u32::try_from(oid).unwrap_or(0),
            column(&row, 1, "listing tablespaces")?,
            column(&row, 2, "listing tablespaces")?,
        ));
    }
    Ok(facts)
}

/// What the archiver reports, for an error message: failures and the last failed file.
async fn archiver_state(config: &ConnConfig) -> String {
    let Ok(client) = crate::session::connect(config).await else {
        return String::new();
    };
    let row = client
        .query_one(
            "SELECT coalesce(last_archived_wal, '-'), failed_count::int8,
                    coalesce(last_failed_wal, '-')
               FROM pg_stat_archiver",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            let archived: String = row.try_get(0).unwrap_or_default();
            let failed: i64 = row.try_get(1).unwrap_or_default();
            let last_failed: String = row.try_get(2).unwrap_or_default();
            format!(
                " (pg_stat_archiver: last archived {archived}, {failed} failure(s), last failed \
                 {last_failed})"
            )
        }
        Err(_) => String::new(),
    }
}

/// Takes one base backup into `sink`.
async fn dump_cluster(
    engine: &PostgresEngine,
    archive_wait: Duration,
    sink: Arc<dyn DumpSink>,
) -> Result<DumpReport> {
    let config = &engine.config;
    let (program, major) = tools::resolve_program("pg_basebackup", engine.bin_dir.clone()).await?;
    let facts = server_facts(config).await?;
    tools::check_client_version(
        "pg_basebackup",
        major,
        tools::server_major(facts.version_num),
    )?;
    check_archiving(&facts)?;
    check_replication_role(&facts)?;
    check_tablespaces(&facts.tablespaces)?;

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(["-D", "-", "-Ft", "-X", "none", "--checkpoint=fast", "-v"])
        .args(["--no-password", "--label", "dbops base backup"]);
    // Host, port, user and the private password file travel in the environment, as
    // for pg_dump: never a password on a command line.
    let env = config.tool_env()?;
    env.apply(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", program.display()), e))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::internal("pg_basebackup started without pipes"));
    };
    let stderr_task = tokio::spawn(tools::read_tail(stderr));

    let mut reader = TarReader::new(BufReader::with_capacity(CHUNK, stdout));
    let split = split_archive(&mut reader, &facts, sink.as_ref(), archive_wait).await;
    let end = match split {
        // The manifest comes after the server's wait for the archive: the process
        // only has to end.
        Ok(Some(found)) => match tokio::time::timeout(archive_wait, child.wait()).await {
            Ok(Ok(status)) => End::Done(status, found),
            Ok(Err(e)) => End::Failed(None, Error::io("waiting for pg_basebackup", e)),
            Err(_) => End::ArchiveWait,
        },
        Ok(None) => End::ArchiveWait,
        // A stream that ends early is usually pg_basebackup failing: its own message
        // says why, so give it a moment to exit with it.
        Err(e) => match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) => End::Failed(Some(status), e),
            _ => End::Failed(None, e),
        },
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    drop(env);
    let stderr = stderr_task.await.unwrap_or_default();
    match end {
        End::Done(status, found) if status.success() => report_of(&facts, &found),
        End::Done(status, _) | End::Failed(Some(status), _) if !status.success() => {
            Err(config.explain_auth(basebackup_failure(&status, &stderr, &facts.user)))
        }
        End::Done(..) => Err(Error::internal("pg_basebackup's end was misread")),
        End::Failed(_, e) => Err(e),
        End::ArchiveWait => Err(archive_timeout(config, archive_wait).await),
    }
}

/// How a pg_basebackup run ended.
enum End {
    /// The stream was read whole and the process exited.
    Done(std::process::ExitStatus, Found),
    /// The server did not archive the stop segment in time.
    ArchiveWait,
    /// Reading failed; the process's exit status when it had exited by itself.
    Failed(Option<std::process::ExitStatus>, Error),
}

async fn archive_timeout(config: &ConnConfig, waited: Duration) -> Error {
    let state = archiver_state(config).await;
    Error::new(
        ErrorKind::Interrupted,
        format!(
            "the server sent every file but had not archived the backup's last WAL segment \
             after {} s{state}: archiving is failing or far behind. Check the archive \
             command and the server log; the backup was abandoned",
            waited.as_secs()
        ),
    )
}

/// Classifies a failed pg_basebackup from its stderr.
fn basebackup_failure(status: &std::process::ExitStatus, stderr: &str, user: &str) -> Error {
    if stderr.contains("pg_hba.conf") && stderr.contains("replication connection") {
        return Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "the server refuses replication connections from role '{user}' here \
                 ({status}): add a pg_hba.conf line for the database keyword 'replication' \
                 (e.g. host replication {user} <client address> scram-sha-256) and reload: \
                 {stderr}"
            ),
        )
        .with_context("tool", "pg_basebackup");
    }
    if stderr.contains("must be superuser or replication role")
        || stderr.contains("permission denied to start WAL sender")
    {
        return Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "role '{user}' may not open a replication connection ({status}): grant it \
                 the REPLICATION attribute (ALTER ROLE \"{user}\" WITH REPLICATION): {stderr}"
            ),
        )
        .with_context("tool", "pg_basebackup");
    }
    if stderr.contains("max_wal_senders") || stderr.contains("too many clients") {
        return Error::new(
            ErrorKind::Database,
            format!(
                "the server has no free WAL sender for the backup ({status}): raise \
                 max_wal_senders (a restart) or wait for another backup or replica to \
                 disconnect: {stderr}"
            ),
        )
        .with_context("tool", "pg_basebackup");
    }
    crate::dump::tool_failure("pg_basebackup", status, stderr)
}

/// What the tar stream told us besides the files.
#[derive(Debug, Default)]
struct Found {
    backup_label: Option<String>,
    control_sysid: Option<u64>,
    manifest_tail: Option<String>,
    files: u64,
}

/// Reads the tar stream entry by entry and writes one stream per entry.
async fn split_archive<R: AsyncRead + Unpin>(
    reader: &mut TarReader<R>,
    facts: &ServerFacts,
    sink: &dyn DumpSink,
    archive_wait: Duration,
) -> Result<Option<Found>> {
    let mut found = Found::default();
    // Until pg_control (sent last of the files) has passed, reads wait as long as the
    // server needs to send its files; after it, the server is waiting for the archive.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, reader.next_entry()).await {
                Ok(next) => next?,
                Err(_) => return Ok(None),
            },
            None => reader.next_entry().await?,
        };
        let Some(entry) = next else { break };
        let Some(path) = member_path(&entry.name)? else {
            reader.skip_data(&entry).await?;
            continue;
        };
        match entry.kind {
            EntryKind::Symlink => {
                let tablespace = path
                    .strip_prefix("pg_tblspc/")
                    .and_then(|oid| oid.parse::<u32>().ok())
                    .and_then(|oid| facts.tablespaces.iter().find(|t| t.0 == oid))
                    .map(|(oid, name, _)| format!("tablespace '{name}' (oid {oid}): "))
                    .unwrap_or_default();
                return Err(Error::invalid(format!(
                    "{tablespace}the data directory holds the symbolic link {path} -> {}: a \
                     physical base backup through one stream cannot carry what a link points \
                     to outside the data directory",
                    entry.link
                )));
            }
            EntryKind::Other(flag) => {
                return Err(Error::new(
                    ErrorKind::Database,
                    format!(
                        "pg_basebackup sent {path} as tar entry type '{}', which a data \
                         directory never holds",
                        char::from(flag)
                    ),
                ));
            }
            EntryKind::Directory | EntryKind::File => {}
        }
        let is_manifest = path == MANIFEST_STREAM && entry.kind == EntryKind::File;
        let name = if is_manifest {
            MANIFEST_STREAM.to_owned()
        } else {
            format!("{PGDATA_PREFIX}{path}")
        };
        let kind = if entry.kind == EntryKind::Directory {
            "dir"
        } else {
            "file"
        };
        let spec = StreamSpec::new(name, StreamRole::Auxiliary)
            .with_meta(META_TYPE, kind)
            .with_meta(META_MODE, format!("{:04o}", entry.mode & 0o7777))
            .with_meta(META_SIZE, entry.size.to_string())
            .with_meta(META_MTIME, entry.mtime.to_string());
        let mut writer = sink.open_stream(spec).await?;
        let mut keep: Option<Vec<u8>> = match path.as_str() {
            "backup_label" | "global/pg_control" => Some(Vec::new()),
            _ if is_manifest => Some(Vec::new()),
            _ => None,
        };
        let mut remaining = entry.size;
        while remaining > 0 {
            let want = usize::try_from(remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
            let data = reader.read_data(want).await?;
            remaining -= data.len() as u64;
            if let Some(kept) = &mut keep {
                kept.extend_from_slice(&data);
                if kept.len() > 2 * MANIFEST_TAIL {
                    kept.drain(..kept.len() - MANIFEST_TAIL);
                }
            }
            writer.write(data).await?;
        }
        reader.skip_padding(entry.size).await?;
        writer.finish().await?;
        found.files += 1;

        if let Some(kept) = keep {
            match path.as_str() {
                "backup_label" => {
                    found.backup_label = Some(String::from_utf8_lossy(&kept).into_owned());
                }
                "global/pg_control" => {
                    found.control_sysid = kept
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes);
                    deadline = Some(tokio::time::Instant::now() + archive_wait);
                }
                _ => {
                    let from = kept.len().saturating_sub(MANIFEST_TAIL);
                    found.manifest_tail = Some(String::from_utf8_lossy(&kept[from..]).into_owned());
                }
            }
        }
    }
    Ok(Some(found))
}

/// The WAL range a backup needs, as read from what PostgreSQL sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WalRange {
    start: Lsn,
    start_timeline: u32,
    checkpoint: Option<Lsn>,
    stop: Lsn,
    stop_timeline: u32,
}

/// `START WAL LOCATION`, `START TIMELINE` and `CHECKPOINT LOCATION` of a
/// `backup_label`.
fn parse_backup_label(label: &str) -> Result<(Lsn, u32, Option<Lsn>)> {
    let field = |key: &str| {
        label
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let bad = |what: &str| {
        Error::new(
            ErrorKind::Database,
            format!("the backup's backup_label has no usable {what}: {label}"),
        )
    };
    let start = field("START WAL LOCATION:")
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| bad("START WAL LOCATION"))?;
    let start = Lsn::parse(start).map_err(|_| bad("START WAL LOCATION"))?;
    let timeline = field("START TIMELINE:")
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| bad("START TIMELINE"))?;
    let checkpoint = field("CHECKPOINT LOCATION:").and_then(|v| Lsn::parse(v).ok());
    Ok((start, timeline, checkpoint))
}

/// The WAL ranges at the end of a `backup_manifest`: (timeline, start, end) each.
fn parse_manifest_wal_ranges(tail: &str) -> Result<Vec<(u32, Lsn, Lsn)>> {
    #[derive(serde::Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "Start-LSN")]
        start: String,
        #[serde(rename = "End-LSN")]
        end: String,
    }
    #[derive(serde::Deserialize)]
    struct Ranges {
        #[serde(rename = "WAL-Ranges")]
        ranges: Vec<Range>,
    }
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Database,
            format!("the backup_manifest PostgreSQL sent has no usable WAL-Ranges: {why}"),
        )
    };
    let start = tail
        .rfind("\"WAL-Ranges\"")
        .ok_or_else(|| bad("not found"))?;
    let end = tail[start..]
        .find(']')
        .map(|n| start + n)
        .ok_or_else(|| bad("unterminated"))?;
    let parsed: Ranges = serde_json::from_str(&format!("{{{}}}", &tail[start..=end]))
        .map_err(|e| bad(&e.to_string()))?;
    parsed
        .ranges
        .into_iter()
        .map(|r| Ok((r.timeline, Lsn::parse(&r.start)?, Lsn::parse(&r.end)?)))
        .collect()
}

fn wal_range(found: &Found) -> Result<WalRange> {
    let label = found.backup_label.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::Database,
            "pg_basebackup's stream held no backup_label: it is not a base backup",
        )
    })?;
    let (start, start_timeline, checkpoint) = parse_backup_label(label)?;
    let tail = found.manifest_tail.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::MissingTool,
            "pg_basebackup sent no backup_manifest, where the backup's end position is: \
             physical backups need PostgreSQL 13 or later on both server and client",
        )
    })?;
    let ranges = parse_manifest_wal_ranges(tail)?;
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
        return Err(Error::new(
            ErrorKind::Database,
            "the backup_manifest PostgreSQL sent lists no WAL range",
        ));
    };
    if first.1 != start || first.0 != start_timeline {
        return Err(Error::new(
            ErrorKind::Database,
            format!(
                "backup_label starts at {start} on timeline {start_timeline} but backup_manifest \
                 at {} on timeline {}: the backup is inconsistent",
                first.1, first.0
            ),
        ));
    }
    if last.2 < start {
        return Err(Error::new(
            ErrorKind::Database,
            format!("the backup ends at {} before it starts at {start}", last.2),
        ));
    }
    Ok(WalRange {
        start,
        start_timeline,
        checkpoint,
        stop: last.2,
        stop_timeline: last.0,
    })
}

fn report_of(facts: &ServerFacts, found: &Found) -> Result<DumpReport> {
    let range = wal_range(found)?;
    let sysid = match (facts.system_identifier, found.control_sysid) {
        (Some(sql), Some(control)) if sql != control => {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "the server says its system identifier is {sql} but the pg_control it sent \
                     says {control}: the backup is not of the server asked"
                ),
            ));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            return Err(Error::new(
                ErrorKind::Database,
                "pg_basebackup's stream held no global/pg_control: it is not a base backup",
            ));
        }
    };
    let seg = facts.segment_size;
    let wal_start = Segment::of(range.start_timeline, range.start, seg).file_name(seg);
    let wal_stop = Segment::ending_at(range.stop_timeline, range.stop, seg).file_name(seg);
    // Every segment from start to stop: the backup is recorded only once all are in
    // the archive (an asynchronous archiver may store the last before an earlier one).
    let first = Segment::of(range.start_timeline, range.start, seg);
    let last = Segment::ending_at(range.stop_timeline, range.stop, seg);
    let needed: Vec<String> = if first.timeline == last.timeline && last.number >= first.number {
        (first.number..=last.number)
            .map(|number| Segment { number, ..first }.file_name(seg))
            .collect()
    } else {
        vec![wal_start.clone(), wal_stop.clone()]
    };
    let mut report = DumpReport::default();
    report.server_version = facts.version.clone();
    report.database = CLUSTER.to_owned();
    report.server_id = Some(format!("pg:{sysid}"));
    let snapshot: BTreeMap<String, String> = [
        ("method", "pg_basebackup".to_owned()),
        (START_LSN_KEY, range.start.to_string()),
        (STOP_LSN_KEY, range.stop.to_string()),
        (TIMELINE_KEY, range.start_timeline.to_string()),
        (SEGMENT_SIZE_KEY, seg.to_string()),
        (SYSTEM_IDENTIFIER_KEY, sysid.to_string()),
        (WAL_START_KEY, wal_start.clone()),
        (WAL_STOP_KEY, wal_stop.clone()),
        (LOG_KIND_KEY, "wal".to_owned()),
        (LOG_SERIES_KEY, wal::series_name(sysid)),
        (LOG_START_KEY, wal_start),
        (LOG_STOP_KEY, wal_stop),
        (LOG_FILES_KEY, needed.join(" ")),
        ("files", found.files.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(
        range
            .checkpoint
            .map(|c| ("checkpoint_lsn".to_owned(), c.to_string())),
    )
    .chain(
        (range.stop_timeline != range.start_timeline)
            .then(|| ("stop_timeline".to_owned(), range.stop_timeline.to_string())),
    )
    .collect();
    report.snapshot = snapshot;
    Ok(report)
}

// ---------------------------------------------------------------------------------
// Tar
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    File,
    Directory,
    Symlink,
    Other(u8),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: EntryKind,
    mode: u32,
    size: u64,
    mtime: u64,
    link: String,
}

/// A streaming reader of the ustar archives pg_basebackup writes (with GNU long names
/// and pax path records understood, in case a future version sends them).
struct TarReader<R> {
    inner: R,
}

fn tar_error(why: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Database,
        format!("pg_basebackup's tar stream cannot be read: {why}"),
    )
}

/// A NUL- or space-terminated octal number, or GNU base-256 (first byte 0x80).
fn tar_number(field: &[u8]) -> Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(b)))
                .ok_or_else(|| tar_error("a number field overflows"))?;
        }
        return Ok(n);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| char::from(b))
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| tar_error(format!("'{text}' is not an octal number")))
}

fn tar_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    fn new(inner: R) -> Self {
        Self { inner }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).await.map(|_| ()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                tar_error("it ended in the middle of an entry")
            } else {
                Error::io("reading pg_basebackup's output", e)
            }
        })
    }

    async fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let take = usize::try_from(n.min(8192)).unwrap_or(8192);
            self.read_exact(&mut buf[..take]).await?;
            n -= take as u64;
        }
        Ok(())
    }

    /// The next entry, `None` at the end-of-archive block.
    async fn next_entry(&mut self) -> Result<Option<Entry>> {
        let mut long_name: Option<String> = None;
        loop {
            let mut h = [0u8; 512];
            self.read_exact(&mut h).await?;
            if h.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let stored = tar_number(&h[148..156])?;
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            if stored != sum {
                return Err(tar_error("a header's checksum does not match"));
            }
            let size = tar_number(&h[124..136])?;
            let flag = h[156];
            match flag {
                b'L' | b'x' | b'g' => {
                    if size > 1024 * 1024 {
                        return Err(tar_error("an extended header is larger than 1 MiB"));
                    }
                    let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
                    self.read_exact(&mut data).await?;
                    self.skip(padding(size)).await?;
                    if flag == b'L' {
                        long_name = Some(tar_text(&data));
                    } else if flag == b'x' {
                        long_name = pax_path(&data).or(long_name);
                    }
                    continue;
                }
                _ => {}
            }
            let name = match long_name.take() {
                Some(n) => n,
                None => {
                    let name = tar_text(&h[0..100]);
                    let prefix = if &h[257..262] == b"ustar" {
                        tar_text(&h[345..500])
                    } else {
                        String::new()
                    };
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                }
            };
            let kind = match flag {
                b'0' | 0 | b'7' => EntryKind::File,
                b'5' => EntryKind::Directory,
                b'2' => EntryKind::Symlink,
                other => EntryKind::Other(other),
            };
            return Ok(Some(Entry {
                name,
                kind,
                mode: u32::try_from(tar_number(&h[100..108])?).unwrap_or(0o600),
                size: if kind == EntryKind::File { size } else { 0 },
                mtime: tar_number(&h[136..148])?,
                link: tar_text(&h[157..257]),
            }));
        }
    }

    /// Up to `want` bytes of the current entry's data (exactly `want` unless the
    /// stream ends, which is an error).
    async fn read_data(&mut self, want: usize) -> Result<Bytes> {
        let mut buf = BytesMut::zeroed(want);
        self.read_exact(&mut buf).await?;
        Ok(buf.freeze())
    }

    async fn skip_padding(&mut self, size: u64) -> Result<()> {
        self.skip(padding(size)).await
    }

    async fn skip_data(&mut self, entry: &Entry) -> Result<()> {
        self.skip(entry.size + padding(entry.size)).await
    }
}

/// The `path` record of a pax extended header (`<len> path=<value>\n`).
fn pax_path(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|record| {
        let (_, kv) = record.split_once(' ')?;
        kv.strip_prefix("path=").map(str::to_owned)
    })
}

/// A tar member's or a stream's path inside the data directory, checked: relative,
/// no `.`/`..`/empty component, no NUL. `None` for the directory itself (`./`).
fn member_path(raw: &str) -> Result<Option<String>> {
    let mut s = raw;
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    let s = s.trim_end_matches('/');
    if s.is_empty() || s == "." {
        return Ok(None);
    }
    let ok = !s.starts_with('/')
        && !s.contains('\0')
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(Some(s.to_owned()))
    } else {
        Err(Error::corrupt(format!(
            "'{raw}' is not a path inside a data directory (absolute, empty or '..' parts): \
             refusing it"
        )))
    }
}

// ---------------------------------------------------------------------------------
// Recovery settings
// ---------------------------------------------------------------------------------

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryTarget {
    /// Replay every archived WAL segment (no target).
    #[default]
    EndOfArchive,
    /// As soon as the backup is consistent (`recovery_target = 'immediate'`).
    Immediate,
    /// The last transaction committed at or before this time (`recovery_target_time`).
    Time(DateTime<Utc>),
    /// This WAL position (`recovery_target_lsn`).
    Lsn(Lsn),
    /// This transaction id (`recovery_target_xid`).
    Xid(u64),
    /// A restore point made with `pg_create_restore_point` (`recovery_target_name`).
    Name(String),
}

impl RecoveryTarget {
    /// A time target from RFC 3339 (`2024-05-01T10:00:00Z`, `…+02:00`, fractions of
    /// a second allowed) or PostgreSQL's form (`2024-05-01 10:00:00+00`,
    /// `…+05:30`). A time without an offset is refused: it would be read in the
    /// server's time zone, which is rarely the operator's.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for anything else.
    pub fn time(text: &str) -> Result<Self> {
        parse_target_time(text).map(Self::Time)
    }

    /// An LSN target (`0/3000028`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed position.
    pub fn lsn(text: &str) -> Result<Self> {
        Lsn::parse(text).map(Self::Lsn)
    }

    /// A transaction id target (decimal).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for anything but a positive decimal number.
    pub fn xid(text: &str) -> Result<Self> {
        match text.trim().parse::<u64>() {
            Ok(x) if x >= 3 => Ok(Self::Xid(x)),
            _ => Err(Error::invalid(format!(
                "'{text}' is not a transaction id: expected a decimal number (3 or more), \
                 as txid_current() prints it"
            ))),
        }
    }

    /// A restore point name target.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an empty name or one longer than PostgreSQL's
    /// 63 bytes.
    pub fn name(text: &str) -> Result<Self> {
        if text.is_empty() || text.len() > 63 {
            return Err(Error::invalid(format!(
                "'{text}' is not a restore point name: 1 to 63 bytes"
            )));
        }
        Ok(Self::Name(text.to_owned()))
    }

    /// The `recovery_target*` setting and value this target writes, `None` for
    /// [`RecoveryTarget::EndOfArchive`].
    fn setting(&self) -> Option<(&'static str, String)> {
        Some(match self {
            Self::EndOfArchive => return None,
            Self::Immediate => ("recovery_target", "immediate".to_owned()),
            Self::Time(t) => ("recovery_target_time", format_target_time(t)),
            Self::Lsn(l) => ("recovery_target_lsn", l.to_string()),
            Self::Xid(x) => ("recovery_target_xid", x.to_string()),
            Self::Name(n) => ("recovery_target_name", n.clone()),
        })
    }
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.setting() {
            None => f.write_str("the end of the archive"),
            Some((key, value)) => write!(f, "{key} = {value}"),
        }
    }
}

/// Parses a target time (see [`RecoveryTarget::time`]) into UTC.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] naming the accepted forms.
pub fn parse_target_time(text: &str) -> Result<DateTime<Utc>> {
    let t = text.trim();
    let parsed = DateTime::parse_from_rfc3339(t).ok().or_else(|| {
        [
            "%Y-%m-%d %H:%M:%S%.f%#z",
            "%Y-%m-%d %H:%M:%S%#z",
            "%Y-%m-%dT%H:%M:%S%.f%#z",
            "%Y-%m-%dT%H:%M:%S%#z",
        ]
        .iter()
        .find_map(|f| DateTime::<FixedOffset>::parse_from_str(t, f).ok())
    });
    parsed.map(|d| d.with_timezone(&Utc)).ok_or_else(|| {
        Error::invalid(format!(
            "'{text}' is not a target time with a UTC offset: write it as RFC 3339 \
             (2024-05-01T10:00:00Z or 2024-05-01T12:00:00+02:00) or as PostgreSQL prints \
             it (2024-05-01 10:00:00+00)"
        ))
    })
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]+00`: UTC, at most microseconds (PostgreSQL's
/// precision; a finer time is cut, never rounded up past the moment asked).
fn format_target_time(t: &DateTime<Utc>) -> String {
    let micros = t.timestamp_subsec_micros();
    if micros == 0 {
        format!("{}+00", t.format("%Y-%m-%d %H:%M:%S"))
    } else {
        format!("{}.{micros:06}+00", t.format("%Y-%m-%d %H:%M:%S"))
    }
}

/// What the server does once recovery reached its target
/// (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetAction {
    /// End recovery and accept writes (a new timeline).
    #[default]
    Promote,
    /// Stay in recovery, paused, read-only: to look before deciding.
    Pause,
    /// Stop the server.
    Shutdown,
}

impl TargetAction {
    /// `promote`, `pause` or `shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Pause => "pause",
            Self::Shutdown => "shutdown",
        }
    }

    /// Parses [`TargetAction::as_str`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for another word.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "promote" => Ok(Self::Promote),
            "pause" => Ok(Self::Pause),
            "shutdown" => Ok(Self::Shutdown),
            other => Err(Error::invalid(format!(
                "unknown recovery target action '{other}': expected promote, pause or shutdown"
            ))),
        }
    }
}

/// The recovery settings a restore writes. `Default`: no restore command (a restore
/// refuses it), replay to the end of the archive, then promote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoverySettings {
    /// The `restore_command` the server runs to fetch each WAL file (`%f` the file
    /// name, `%p` the path to copy it to), as the caller's tooling spells it.
    pub restore_command: String,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// What the server does there.
    pub action: TargetAction,
    /// Whether the target itself is included (stop just after it) or not (just
    /// before); `recovery_target_inclusive`, default true.
    pub inclusive: bool,
    /// `recovery_target_timeline` (`latest`, `current` or a number); `None` leaves
    /// PostgreSQL's default (`latest`).
    pub timeline: Option<String>,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self {
            restore_command: String::new(),
            target: RecoveryTarget::EndOfArchive,
            action: TargetAction::Promote,
            inclusive: true,
            timeline: None,
        }
    }
}

impl RecoverySettings {
    /// Settings fetching WAL with `restore_command`, replaying to the end of the
    /// archive, then promoting.
    pub fn new(restore_command: impl Into<String>) -> Self {
        Self {
            restore_command: restore_command.into(),
            ..Self::default()
        }
    }

    /// Stops at `target`.
    #[must_use]
    pub fn with_target(mut self, target: RecoveryTarget) -> Self {
        self.target = target;
        self
    }

    /// Does `action` at the target.
    #[must_use]
    pub fn with_action(mut self, action: TargetAction) -> Self {
        self.action = action;
        self
    }

    /// Includes the target (true, the default) or stops just before it.
    #[must_use]
    pub fn with_inclusive(mut self, inclusive: bool) -> Self {
        self.inclusive = inclusive;
        self
    }

    /// Follows this timeline (`latest`, `current` or a number).
    #[must_use]
    pub fn with_timeline(mut self, timeline: impl Into<String>) -> Self {
        self.timeline = Some(timeline.into());
        self
    }

    /// The lines appended to `postgresql.auto.conf`. Every recovery target setting is
    /// written, the unused ones empty and before the chosen one: the last value of a
    /// setting wins and `postgresql.auto.conf` is read after `postgresql.conf`, so a
    /// target the source left configured cannot combine with this one ("multiple
    /// recovery targets specified").
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an empty restore command, or a value that
    /// holds a control character (a line break would end the setting).
    pub fn to_conf(&self) -> Result<String> {
        if self.restore_command.trim().is_empty() {
            return Err(Error::invalid(
                "a physical restore needs a restore command (RecoverySettings::restore_command) \
                 to fetch the WAL the base backup needs from the archive",
            ));
        }
        if let Some(t) = &self.timeline {
            let t = t.trim();
            if !(t == "latest" || t == "current" || t.parse::<u32>().is_ok_and(|n| n >= 1)) {
                return Err(Error::invalid(format!(
                    "'{t}' is not a timeline: latest, current or a number"
                )));
            }
        }
        let chosen = self.target.setting();
        let mut out = String::new();
        out.push_str(&format!(
            "\n# Point-in-time recovery settings written by the physical restore: \
             stop at {}, then {}.\n",
            self.target,
            self.action.as_str()
        ));
        out.push_str(&format!(
            "restore_command = {}\n",
            conf_quote(&self.restore_command)?
        ));
        out.push_str("recovery_end_command = ''\n");
        // A restored copy must never archive into the source's archive: promoted, it
        // would push a new timeline there, and a later restore following the latest
        // timeline would replay the copy's writes. Turn it on again by hand for a
        // copy that is to become the new primary, with its own archive.
        out.push_str(
            "# The copy does not archive (it would write its timeline into the source's archive).\n",
        );
        out.push_str("archive_mode = 'off'\n");
        // The server refuses a target setting assigned (even empty) after another
        // target was set: the empty ones first, the chosen one last.
        for key in [
            "recovery_target",
            "recovery_target_lsn",
            "recovery_target_name",
            "recovery_target_time",
            "recovery_target_xid",
        ] {
            if chosen.as_ref().is_none_or(|(k, _)| *k != key) {
                out.push_str(&format!("{key} = ''\n"));
            }
        }
        if let Some((key, value)) = &chosen {
            out.push_str(&format!("{key} = {}\n", conf_quote(value)?));
        }
        out.push_str(&format!(
            "recovery_target_inclusive = {}\n",
            if self.inclusive { "on" } else { "off" }
        ));
        out.push_str(&format!(
            "recovery_target_action = {}\n",
            conf_quote(self.action.as_str())?
        ));
        if let Some(t) = &self.timeline {
            out.push_str(&format!(
                "recovery_target_timeline = {}\n",
                conf_quote(t.trim())?
            ));
        }
        Ok(out)
    }
}

/// A postgresql.conf string value: single quotes, a quote doubled, a backslash
/// doubled (the configuration parser reads `\` as an escape).
fn conf_quote(value: &str) -> Result<String> {
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{value:?} holds a control character (a line break?): a server setting cannot \
             hold one"
        )));
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

// ---------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------

/// Creates `dir` owner-only, or checks that it is an empty directory. True when it
/// created it.
fn prepare_target(dir: &Path) -> Result<bool> {
    let mut created = false;
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::new(
                ErrorKind::TargetNotEmpty,
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir)
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            if let Some(first) = entries.next() {
                let first = first
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::TargetNotEmpty,
                    format!(
                        "{} is not empty (it holds {first}, …): a physical restore lays a \
                         data directory down only into an empty or new directory",
                        dir.display()
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            created = true;
        }
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("making {} private", dir.display()), e))?;
    Ok(created)
}

/// Makes sure every directory of `rel` (components below `root`) exists as a real
/// directory, creating missing ones 0700; a symbolic link or a file on the way is
/// refused (nothing here follows a link).
fn ensure_dirs(root: &Path, rel: &str) -> Result<()> {
    let mut path = root.to_path_buf();
    for part in rel.split('/') {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Error::corrupt(format!(
                    "{} exists and is not a directory: the backup lists it as one",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                    Ok(()) => {}
                    // Another file's writer created it just now: a real directory?
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let meta = std::fs::symlink_metadata(&path)
                            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                        if !meta.file_type().is_dir() {
                            return Err(Error::corrupt(format!(
                                "{} exists and is not a directory: the backup lists it as one",
                                path.display()
                            )));
                        }
                    }
                    Err(e) => {
                        return Err(Error::io(format!("creating {}", path.display()), e));
                    }
                }
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    Ok(())
}

/// Writes one stream to a new file `path` (0600, never through a symbolic link) and
/// returns the bytes written.
async fn write_file(path: &Path, source: &dyn StreamSource, stream: &str) -> Result<u64> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .await
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut data = source.open(stream).await?;
    let mut written = 0u64;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| e.during(format!("reading stream {stream}")))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        written += chunk.len() as u64;
    }
    // No fsync per file: PostgreSQL syncs the whole data directory itself before it
    // starts recovery from a backup (its pg_control says "in production").
    file.flush()
        .await
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(written)
}

/// Files written at once by a restore (at least; more with more restore jobs). A
/// data directory is mostly small files, each costing a read of its chunk list
/// before its first byte: a few at once hide that latency. Memory stays bounded by
/// the source's read-ahead per stream.
const FILES_AT_ONCE: usize = 4;

/// Lays the base backup of `source` down in `dir` and writes the recovery settings.
/// Every stream name is checked before anything is written; a restore that fails
/// part-way removes what it wrote (the directory was empty or absent before).
async fn lay_down(
    dir: &Path,
    recovery: &RecoverySettings,
    source: Arc<dyn StreamSource>,
    jobs: usize,
) -> Result<RestoreReport> {
    // Refused settings fail before anything is written.
    let conf = recovery.to_conf()?;
    let mut warnings = Vec::new();
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for spec in source.streams() {
        let rel = if spec.name == MANIFEST_STREAM {
            MANIFEST_STREAM.to_owned()
        } else if let Some(rest) = spec.name.strip_prefix(PGDATA_PREFIX) {
            member_path(rest)?
                .ok_or_else(|| Error::corrupt(format!("stream {} names no file", spec.name)))?
        } else {
            warnings.push(format!(
                "stream {} is not part of a data directory: not restored",
                spec.name
            ));
            continue;
        };
        match spec.meta.get(META_TYPE).map(String::as_str) {
            Some("dir") => dirs.push(rel),
            Some("file") => {
                let size = spec.meta.get(META_SIZE).and_then(|s| s.parse::<u64>().ok());
                files.push((spec.name.clone(), rel, size));
            }
            other => {
                return Err(Error::corrupt(format!(
                    "stream {} has type {other:?}, neither file nor dir",
                    spec.name
                )));
            }
        }
    }
    if !files
        .iter()
        .any(|(name, ..)| name.starts_with(PGDATA_PREFIX))
    {
        return Err(Error::invalid(
            "this backup holds no data directory: it is not a physical base backup",
        ));
    }
    let owned = dir.to_path_buf();
    let created = tokio::task::spawn_blocking(move || prepare_target(&owned))
        .await
        .map_err(|e| Error::internal(format!("preparing the directory failed: {e}")))??;
    let written = write_tree(dir, &dirs, &files, source, jobs)
        .await
        .and_then(|()| finish_data_dir(dir, &conf, &mut warnings));
    if let Err(e) = written {
        if let Err(cleanup) = remove_restored(dir, created) {
            tracing::warn!("could not remove the failed restore's files: {cleanup}");
        }
        return Err(e);
    }
    let mut report = RestoreReport::default();
    report.database = CLUSTER.to_owned();
    tracing::debug!(files = files.len(), dir = %dir.display(), "base backup laid down");
    report.warnings = warnings;
    Ok(report)
}

/// Creates the directories, then writes the files, a few at once.
async fn write_tree(
    dir: &Path,
    dirs: &[String],
    files: &[(String, String, Option<u64>)],
    source: Arc<dyn StreamSource>,
    jobs: usize,
) -> Result<()> {
    for rel in dirs {
        ensure_dirs(dir, rel)?;
    }
    // Owned items: the futures must not borrow across the stream (Send bounds of the
    // engine trait's boxed future).
    let mut writes = futures::stream::iter(files.iter().cloned().map(|(name, rel, size)| {
        let source = Arc::clone(&source);
        let dir = dir.to_path_buf();
        async move {
            if let Some((parent, _)) = rel.rsplit_once('/') {
                ensure_dirs(&dir, parent)?;
            }
            let written = write_file(&dir.join(&rel), source.as_ref(), &name).await?;
            match size {
                Some(size) if size != written => Err(Error::corrupt(format!(
                    "stream {name} gave {written} bytes, not the {size} the backup recorded"
                ))),
                _ => Ok(()),
            }
        }
    }))
    .buffer_unordered(jobs.max(FILES_AT_ONCE));
    while let Some(done) = writes.next().await {
        done?;
    }
    Ok(())
}

/// Removes what a failed restore wrote: the directory's contents, and the directory
/// itself when the restore created it.
fn remove_restored(dir: &Path, created: bool) -> Result<()> {
    if created {
        return std::fs::remove_dir_all(dir)
            .map_err(|e| Error::io(format!("removing {}", dir.display()), e));
    }
    for entry in
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
    {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

/// After the files: what a data directory must hold, and the recovery settings.
fn finish_data_dir(dir: &Path, conf: &str, warnings: &mut Vec<String>) -> Result<()> {
    for needed in ["PG_VERSION", "global/pg_control", "backup_label"] {
        if !dir.join(needed).is_file() {
            return Err(Error::corrupt(format!(
                "the restored directory lacks {needed}: the backup is not a complete base backup"
            )));
        }
    }
    // pg_basebackup -X none sends pg_wal empty, but a data directory needs it.
    ensure_dirs(dir, "pg_wal/archive_status")?;
    let write_new = |name: &str, text: &str| -> Result<()> {
        use std::io::Write;
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    if !dir.join("postgresql.conf").exists() {
        // Debian keeps the configuration in /etc: the server needs a file to start.
        write_new(
            "postgresql.conf",
            "# The source kept its configuration outside the data directory; the base\n\
             # backup holds none. Add the settings this copy needs here.\n",
        )?;
        warnings.push(
            "the backup holds no postgresql.conf (the source kept it outside the data \
             directory): an empty one was written; copy the settings this server needs \
             into it"
                .to_owned(),
        );
    }
    let standby = dir.join("standby.signal");
    if standby.exists() {
        std::fs::remove_file(&standby)
            .map_err(|e| Error::io(format!("removing {}", standby.display()), e))?;
        warnings.push(
            "the backup held standby.signal (it was taken from a standby): removed, so \
             that this copy recovers to its target instead of following a primary"
                .to_owned(),
        );
    }
    // Appended, never rewritten: the source's own settings stay as they were; ours
    // come last, and the last value of a setting wins.
    let auto = dir.join("postgresql.auto.conf");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&auto)
            .map_err(|e| Error::io(format!("opening {}", auto.display()), e))?;
        file.write_all(conf.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(format!("writing {}", auto.display()), e))?;
    }
    // A backup of a server that was itself in archive recovery holds the file
    // already; it only has to exist.
    if !dir.join("recovery.signal").exists() {
        write_new("recovery.signal", "")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Starting a recovered server
// ---------------------------------------------------------------------------------

/// How [`start_recovered`] starts and waits. `Default`: a free loopback port, connect
/// as `postgres`, wait up to [`DEFAULT_RECOVERY_WAIT`], the target action read from
/// the directory's recovery settings, programs found as [`crate::ephemeral`] finds
/// them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StartOptions {
    /// TCP port on 127.0.0.1; `None`: a free one.
    pub port: Option<u16>,
    /// The role to check recovery as, through the private socket (trusted there);
    /// `None`: `postgres`. It must exist in the restored cluster.
    pub user: Option<String>,
    /// How long to wait for the target; `None`: [`DEFAULT_RECOVERY_WAIT`].
    pub wait: Option<Duration>,
    /// What recovery does at the target; `None`: as the directory's
    /// `postgresql.auto.conf` says.
    pub action: Option<TargetAction>,
    /// Directory of `postgres` (and `pg_amcheck`, `pg_verifybackup`); `None`: search.
    pub bin_dir: Option<PathBuf>,
    /// Extra server settings, after ours (`-c name=value`).
    pub settings: Vec<(String, String)>,
}

impl StartOptions {
    /// Listens on this port.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Checks recovery as this role.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Waits this long for the target.
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Waits for this action's state instead of reading it from the directory.
    #[must_use]
    pub fn with_action(mut self, action: TargetAction) -> Self {
        self.action = Some(action);
        self
    }

    /// Takes the server programs from `dir`.
    #[must_use]
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Adds a server setting.
    #[must_use]
    pub fn with_setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// A server running on a restored data directory, past its recovery target. Dropping
/// it stops the server at once (immediate shutdown: the next start runs crash
/// recovery); [`RecoveredServer::stop`] stops it cleanly; [`RecoveredServer::detach`]
/// leaves it running.
pub struct RecoveredServer {
    data_dir: PathBuf,
    /// Removed with the handle, unless detached.
    runtime: Option<tempfile::TempDir>,
    runtime_path: PathBuf,
    bin_dir: PathBuf,
    wait: Duration,
    port: u16,
    user: String,
    child: Mutex<Option<Child>>,
    recovery: Vec<String>,
}

impl fmt::Debug for RecoveredServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveredServer")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("socket_dir", &self.socket_dir())
            .finish_non_exhaustive()
    }
}

/// The user the server runs as when we are root (PostgreSQL refuses root).
fn unprivileged() -> Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("nobody") {
        Ok(Some(u)) => Ok(Some((u.uid, u.gid))),
        _ => Err(Error::new(
            ErrorKind::MissingTool,
            "running as root, and there is no user 'nobody' to run PostgreSQL as",
        )),
    }
}

/// Gives a whole tree to `owner`, never following a link.
fn chown_tree(path: &Path, owner: (Uid, Gid)) -> Result<()> {
    let (uid, gid) = (owner.0.as_raw(), owner.1.as_raw());
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("giving {} to the server user", path.display()), e))?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if meta.file_type().is_dir() {
        for entry in std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            chown_tree(&entry.path(), owner)?;
        }
    }
    Ok(())
}

/// The target action the directory's `postgresql.auto.conf` ends with (a restore
/// writes one last); without one, PostgreSQL's default: pause at a target when one
/// is set, else promote at the end of the archive.
fn configured_action(dir: &Path) -> TargetAction {
    let text = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap_or_default();
    let last = |name: &str| {
        text.lines().rev().find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('\'').to_owned())
        })
    };
    if let Some(action) = last("recovery_target_action").and_then(|v| TargetAction::parse(&v).ok())
    {
        return action;
    }
    let targeted = [
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
    ]
    .iter()
    .any(|k| last(k).is_some_and(|v| !v.is_empty()));
    if targeted {
        TargetAction::Pause
    } else {
        TargetAction::Promote
    }
}

/// The first FATAL or PANIC line of a server log that is not a connection turned
/// away while the server starts or stops (our own polling makes those), else its
/// last lines.
fn log_failure(log: &str) -> String {
    log.lines()
        .find(|l| {
            (l.contains("FATAL:") || l.contains("PANIC:"))
                && !l.contains("the database system is")
                && !l.contains("terminating connection")
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n")
        })
}

/// Starts a server on the restored data directory `dir` and waits until recovery
/// reached its target: with [`TargetAction::Promote`] until the server left recovery,
/// with [`TargetAction::Pause`] until replay is paused there.
///
/// The server listens on 127.0.0.1 (password authentication with the cluster's own
/// roles) and on a Unix socket in a private temporary directory (trusted; only the
/// server's user and root can enter it), with its own `pg_hba.conf` for exactly
/// that, and with `archive_mode = off` so that a copy never archives into the
/// source's archive (a setting in `options` overrides). When run as root the
/// server runs as `nobody`, and the directory is given to that user. The server is
/// `postgres` itself, started as our child from the directory the ephemeral server's
/// programs come from, so that its exit is seen at once and dropping the handle stops
/// it.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for [`TargetAction::Shutdown`] (there would be nothing
/// to wait for) or a directory without `PG_VERSION`; [`ErrorKind::Database`] quoting
/// the server log's FATAL line when the server exits (e.g. "recovery ended before
/// configured recovery target was reached"); [`ErrorKind::Interrupted`] when the
/// target is not reached in time; [`ErrorKind::MissingTool`] when PostgreSQL is not
/// installed.
pub async fn start_recovered(dir: &Path, options: &StartOptions) -> Result<RecoveredServer> {
    let dir = dir.to_path_buf();
    let options = options.clone();
    let action = options.action.unwrap_or_else(|| configured_action(&dir));
    if action == TargetAction::Shutdown {
        return Err(Error::invalid(
            "recovery ending in shutdown leaves no server to wait for: start with the \
             promote or pause action",
        ));
    }
    let mut server = tokio::task::spawn_blocking(move || RecoveredServer::spawn(&dir, &options))
        .await
        .map_err(|e| Error::internal(format!("server start task failed: {e}")))??;
    let wait = server.wait_for(action).await;
    match wait {
        Ok(()) => Ok(server),
        Err(e) => {
            drop(server);
            Err(e)
        }
    }
}

impl RecoveredServer {
    fn spawn(dir: &Path, options: &StartOptions) -> Result<Self> {
        if !dir.join("PG_VERSION").is_file() {
            return Err(Error::invalid(format!(
                "{} holds no PG_VERSION: it is not a data directory",
                dir.display()
            )));
        }
        let bin_dir = match &options.bin_dir {
            Some(d) => d.clone(),
            None => tools::find_server_bin_dir()?,
        };
        let owner = unprivileged()?;
        let runtime = tempfile::Builder::new()
            .prefix("dbops-recovered-")
            .tempdir()
            .map_err(|e| Error::io("creating the server's runtime directory", e))?;
        let sock = runtime.path().join("sock");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sock)
            .map_err(|e| Error::io("creating the socket directory", e))?;
        let hba = runtime.path().join("pg_hba.conf");
        let ident = runtime.path().join("pg_ident.conf");
        std::fs::write(
            &hba,
            "# Written for a recovered copy: the private socket trusts, TCP asks for the\n\
             # cluster's own passwords.\n\
             local all all trust\n\
             host all all 127.0.0.1/32 md5\n",
        )
        .and_then(|()| std::fs::write(&ident, ""))
        .map_err(|e| Error::io("writing the server's pg_hba.conf", e))?;
        if let Some(owner) = owner {
            chown_tree(runtime.path(), owner)?;
            chown_tree(dir, owner)?;
        }
        let log_path = runtime.path().join("server.log");
        let port = match options.port {
            Some(p) => p,
            None => crate::ephemeral::free_port()?,
        };
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Error::io("creating the server log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("creating the server log", e))?;
        let mut cmd = Command::new(bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&sock);
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            ("hba_file".into(), hba.display().to_string()),
            ("ident_file".into(), ident.display().to_string()),
            ("unix_socket_permissions".into(), "0700".into()),
            ("archive_mode".into(), "off".into()),
            ("hot_standby".into(), "on".into()),
            ("logging_collector".into(), "off".into()),
            ("log_destination".into(), "stderr".into()),
            ("external_pid_file".into(), String::new()),
            ("ssl".into(), "off".into()),
        ];
        settings.extend(options.settings.iter().cloned());
        for (k, v) in &settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.current_dir(runtime.path())
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        if let Some((uid, gid)) = owner {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        let child = cmd.spawn().map_err(|e| {
            Error::io(
                format!("starting {}", bin_dir.join("postgres").display()),
                e,
            )
        })?;
        Ok(Self {
            data_dir: dir.to_path_buf(),
            runtime_path: runtime.path().to_path_buf(),
            runtime: Some(runtime),
            bin_dir,
            wait: options.wait.unwrap_or(DEFAULT_RECOVERY_WAIT),
            port,
            user: options
                .user
                .clone()
                .unwrap_or_else(|| "postgres".to_owned()),
            child: Mutex::new(Some(child)),
            recovery: Vec::new(),
        })
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the server has exited, and how.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port)
            .user(&self.user)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| crate::errors::connect_error(e, "the recovered server"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Polls until the server's state is the one `action` leads to.
    async fn wait_for(&mut self, action: TargetAction) -> Result<()> {
        let wait = self.wait;
        let deadline = Instant::now() + wait;
        let check = match action {
            TargetAction::Pause => {
                "SELECT pg_is_in_recovery() AND CASE WHEN current_setting('server_version_num')::int >= 140000
                      THEN pg_get_wal_replay_pause_state() = 'paused'
                      ELSE pg_is_wal_replay_paused() END"
            }
            _ => "SELECT NOT pg_is_in_recovery()",
        };
        let mut last_error = String::new();
        loop {
            if let Some(status) = self.exited() {
                let log = self.read_log();
                return Err(Error::new(
                    ErrorKind::Database,
                    format!(
                        "the recovered server exited ({status}) before reaching its target: {}",
                        log_failure(&log)
                    ),
                )
                .with_context("log", self.log_path().display()));
            }
            match self.connect("postgres").await {
                Ok(client) => match client.query_one(check, &[]).await {
                    Ok(row) if row.try_get::<_, bool>(0).unwrap_or(false) => {
                        self.recovery = recovery_lines(&self.read_log());
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Interrupted,
                    format!(
                        "recovery did not reach its target within {} s (last: {last_error}); \
                         the server log ends: {}",
                        wait.as_secs(),
                        log_failure(&self.read_log())
                    ),
                )
                .with_context("log", self.log_path().display()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A URL of database `db` through the private socket, as the checking role
    /// (no password: the socket trusts). Parses with [`PostgresEngine::new`].
    pub fn url_for(&self, db: &str) -> String {
        let enc = |s: &str| {
            url::form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        };
        format!(
            "postgres://{}@:{}/{}?host={}",
            enc(&self.user),
            self.port,
            enc(db),
            enc(&self.socket_dir().display().to_string())
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.runtime_dir().join("sock")
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.runtime_dir().join("server.log")
    }

    /// The data directory it runs on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the server programs used.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// What the server logged about where recovery stopped ("recovery stopping
    /// before commit of transaction …", "last completed transaction was at log time
    /// …", "recovery has paused", "selected new timeline ID").
    pub fn recovery_summary(&self) -> &[String] {
        &self.recovery
    }

    fn runtime_dir(&self) -> PathBuf {
        self.runtime_path.clone()
    }

    /// Stops the server cleanly (fast shutdown); the data directory stays.
    ///
    /// # Errors
    /// The server does not stop within a minute (it is then killed).
    pub async fn stop(self) -> Result<()> {
        let child = self.child().take();
        if let Some(mut child) = child {
            let pid = crate::ephemeral::pid_of(&child)?;
            let _ = kill(pid, Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => {
                        let _ = killpg(pid, Signal::SIGKILL);
                        let _ = child.wait();
                        return Err(Error::new(
                            ErrorKind::Interrupted,
                            "the recovered server did not stop within a minute; killed it",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Leaves the server running after this handle (and this process) is gone;
    /// returns its process id. Its socket directory and log stay where
    /// [`RecoveredServer::socket_dir`] and [`RecoveredServer::log_path`] say.
    pub fn detach(mut self) -> u32 {
        if let Some(runtime) = self.runtime.take() {
            let _kept = runtime.keep();
        }
        self.child().take().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for RecoveredServer {
    fn drop(&mut self) {
        if let Some(child) = self.child().take() {
            crate::ephemeral::stop_immediately(child, Duration::from_secs(2));
        }
    }
}

/// The log lines that say where recovery stopped.
fn recovery_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            [
                "recovery stopping",
                "last completed transaction",
                "recovery has paused",
                "selected new timeline ID",
                "consistent recovery state reached",
                "archive recovery complete",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------
// Proof
// ---------------------------------------------------------------------------------

/// Options of [`prove_restore`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ProofOptions {
    /// The restore command that fetches the backup's WAL (see
    /// [`RecoverySettings::restore_command`]).
    pub restore_command: String,
    /// How the throwaway server starts.
    pub start: StartOptions,
    /// Where the throwaway copy is made; `None`: the system's temporary directory.
    pub work_dir: Option<PathBuf>,
}

impl ProofOptions {
    /// Proves with WAL fetched by `restore_command`.
    pub fn new(restore_command: impl Into<String>) -> Self {
        Self {
            restore_command: restore_command.into(),
            ..Self::default()
        }
    }

    /// Starts the throwaway server with these options.
    #[must_use]
    pub fn with_start(mut self, start: StartOptions) -> Self {
        self.start = start;
        self
    }

    /// Makes the throwaway copy under `dir`.
    #[must_use]
    pub fn with_work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }
}

/// What [`prove_restore`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProofReport {
    /// The files laid down.
    pub files: u64,
    /// pg_verifybackup checked every file against the backup_manifest PostgreSQL
    /// wrote (false when the backup holds none).
    pub manifest_verified: bool,
    /// The databases pg_amcheck checked.
    pub databases: Vec<String>,
    /// What the server logged about recovery (see [`RecoveredServer::recovery_summary`]).
    pub recovery: Vec<String>,
    /// pg_amcheck's own output (empty when it found nothing).
    pub amcheck_output: String,
    /// Warnings of the restore.
    pub warnings: Vec<String>,
}

async fn run_tool(program: &Path, args: &[std::ffi::OsString]) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::io(format!("running {}", program.display()), e))?;
    let mut text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(err.trim());
    }
    Ok((out.status.success(), text))
}

/// The proof of a physical backup: lays it down in a throwaway directory, checks
/// every file against PostgreSQL's own `backup_manifest` (`pg_verifybackup`, WAL not
/// parsed), starts a server on it recovering to the first consistent point
/// (`recovery_target = 'immediate'`, then promote), and runs `pg_amcheck` over every
/// relation of every database (installing `amcheck` where missing). The copy is
/// removed afterwards, whatever the outcome.
///
/// # Errors
/// [`ErrorKind::Mismatch`] naming what pg_verifybackup or pg_amcheck report; the
/// errors of the restore and of [`start_recovered`] (a server that cannot reach
/// consistency names the server log's FATAL line).
pub async fn prove_restore(
    source: Arc<dyn StreamSource>,
    options: &ProofOptions,
) -> Result<ProofReport> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("dbops-proof-");
    let work = match &options.work_dir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .map_err(|e| Error::io("creating the proof's directory", e))?;
    let data = work.path().join("data");
    let settings = RecoverySettings::new(options.restore_command.clone())
        .with_target(RecoveryTarget::Immediate)
        .with_action(TargetAction::Promote);
    let files = source
        .streams()
        .iter()
        .filter(|s| {
            s.name.starts_with(PGDATA_PREFIX)
                && s.meta.get(META_TYPE).map(String::as_str) == Some("file")
        })
        .count() as u64;
    let restored = PhysicalEngine::restore_to(&data, settings)
        .restore(source, &RestoreOptions::default())
        .await?;
    let mut report = ProofReport {
        files,
        warnings: restored.warnings,
        ..ProofReport::default()
    };
    if let Some(owner) = unprivileged()? {
        // The server's user must reach the data directory below the proof's own.
        chown_tree(work.path(), owner)?;
    }
    let bin_dir = match &options.start.bin_dir {
        Some(d) => d.clone(),
        None => tools::find_server_bin_dir()?,
    };
    if data.join("backup_manifest").is_file() {
        let (ok, output) = run_tool(
            &bin_dir.join("pg_verifybackup"),
            &["-n".into(), "-q".into(), data.clone().into_os_string()],
        )
        .await?;
        if !ok {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the restored files do not match the backup_manifest PostgreSQL wrote when \
                     the backup was taken: {output}"
                ),
            ));
        }
        report.manifest_verified = true;
    }
    let start = options
        .start
        .clone()
        .with_bin_dir(bin_dir.clone())
        .with_action(TargetAction::Promote);
    let server = start_recovered(&data, &start).await?;
    report.recovery = server.recovery_summary().to_vec();
    let checked = async {
        let client = server.connect("postgres").await?;
        let rows = client
            .query(
                "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "listing the recovered databases"))?;
        let databases: Vec<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .collect();
        let args: Vec<std::ffi::OsString> = vec![
            "-h".into(),
            server.socket_dir().into_os_string(),
            "-p".into(),
            server.port().to_string().into(),
            "-U".into(),
            server.user.clone().into(),
            "--no-password".into(),
            "-a".into(),
            "--install-missing".into(),
        ];
        let (ok, output) = run_tool(&bin_dir.join("pg_amcheck"), &args).await?;
        if !ok {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!("pg_amcheck found problems in the recovered copy: {output}"),
            ));
        }
        Ok((databases, output))
    }
    .await;
    let stopped = server.stop().await;
    let (databases, output) = checked?;
    stopped?;
    report.databases = databases;
    report.amcheck_output = output;
    work.close()
        .map_err(|e| Error::io("removing the proof's directory", e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_object_safe_and_debug_is_redacted() {
        let engine = PhysicalEngine::from_url("postgres://alice:hunter2secret@db.example/app")
            .expect("valid URL");
        let shared: Arc<dyn DatabaseEngine> = Arc::new(engine.clone());
        assert_eq!(shared.name(), ENGINE_NAME);
        assert_eq!(shared.database(), CLUSTER);
        let shown = format!("{engine:?} {}", shared.location());
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(shown.contains("alice:******@db.example"), "{shown}");
    }

    #[test]
    fn target_times_are_normalised_to_utc() {
        let cases = [
            ("2024-05-01T10:00:00Z", "2024-05-01 10:00:00+00"),
            ("2024-05-01T12:00:00+02:00", "2024-05-01 10:00:00+00"),
            ("2024-05-01t10:00:00.25z", "2024-05-01 10:00:00.250000+00"),
            ("2024-05-01 10:00:00+00", "2024-05-01 10:00:00+00"),
            (
                "2024-05-01 15:30:00.123456+05:30",
                "2024-05-01 10:00:00.123456+00",
            ),
            ("2024-05-01 05:00:00-05", "2024-05-01 10:00:00+00"),
            ("2024-05-01 10:00:00.000000123Z", "2024-05-01 10:00:00+00"),
        ];
        for (given, written) in cases {
            let t = parse_target_time(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(format_target_time(&t), written, "{given}");
        }
        for bad in ["2024-05-01 10:00:00", "yesterday", "2024-05-01", ""] {
            let err = parse_target_time(bad).expect_err(bad);
            assert!(err.message().contains("UTC offset"), "{err}");
        }
    }

    #[test]
    fn recovery_settings_quote_and_set_every_target() {
        let conf = RecoverySettings::new(r"copy-wal 'it''s' C:\x %f %p")
            .with_target(RecoveryTarget::lsn("0/3000028").expect("lsn"))
            .with_action(TargetAction::Pause)
            .with_inclusive(false)
            .with_timeline("current")
            .to_conf()
            .expect("valid settings");
        assert!(
            conf.contains(r"restore_command = 'copy-wal ''it''''s'' C:\\x %f %p'"),
            "{conf}"
        );
        assert!(
            conf.contains("recovery_target_lsn = '0/3000028'\n"),
            "{conf}"
        );
        for empty in [
            "recovery_target = ''",
            "recovery_target_time = ''",
            "recovery_target_xid = ''",
            "recovery_target_name = ''",
            "recovery_end_command = ''",
        ] {
            assert!(conf.contains(empty), "{empty}: {conf}");
        }
        // The server refuses a target assigned after another one, even empty.
        let chosen = conf.find("recovery_target_lsn = '0/3000028'");
        assert!(conf.find("recovery_target_xid = ''") < chosen, "{conf}");
        assert!(conf.contains("recovery_target_inclusive = off"), "{conf}");
        assert!(conf.contains("recovery_target_action = 'pause'"), "{conf}");
        assert!(
            conf.contains("recovery_target_timeline = 'current'"),
            "{conf}"
        );
        let immediate = RecoverySettings::new("x %f %p")
            .with_target(RecoveryTarget::Immediate)
            .to_conf()
            .expect("valid");
        assert!(
            immediate.contains("recovery_target = 'immediate'"),
            "{immediate}"
        );

        assert!(RecoverySettings::default().to_conf().is_err());
        assert!(RecoverySettings::new("a\nb").to_conf().is_err());
        assert!(
            RecoverySettings::new("x")
                .with_timeline("soon")
                .to_conf()
                .is_err()
        );
        assert!(RecoveryTarget::xid("abc").is_err());
        assert!(RecoveryTarget::name(&"n".repeat(64)).is_err());
        assert_eq!(TargetAction::parse("pause").ok(), Some(TargetAction::Pause));
        assert!(TargetAction::parse("stop").is_err());
    }

    #[test]
    fn member_paths_stay_inside() {
        assert_eq!(
            member_path("./pg_wal/archive_status/")
                .ok()
                .flatten()
                .as_deref(),
            Some("pg_wal/archive_status")
        );
        assert_eq!(
            member_path("base/1/1259").ok().flatten().as_deref(),
            Some("base/1/1259")
        );
        assert_eq!(member_path("./").ok().flatten(), None);
        for bad in ["../x", "/etc/passwd", "base/../../x", "a//b", "a/./b"] {
            assert!(member_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn archiving_and_role_checks_name_the_fix() {
        let mut facts = ServerFacts {
            archive_mode: "off".into(),
            archive_command: Some(String::new()),
            user: "backup".into(),
            ..ServerFacts::default()
        };
        let err = check_archiving(&facts).expect_err("archive_mode off");
        assert!(err.message().contains("archive_mode is off"), "{err}");
        facts.archive_mode = "on".into();
        let err = check_archiving(&facts).expect_err("no command");
        assert!(err.message().contains("archive_command"), "{err}");
        facts.archive_command = Some("copy %p".into());
        check_archiving(&facts).expect("archiving configured");
        facts.archive_command = None;
        check_archiving(&facts).expect("a command this role cannot read is not judged");
        let err = check_replication_role(&facts).expect_err("no REPLICATION");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.message().contains("WITH REPLICATION"), "{err}");
        let err = check_tablespaces(&[(16385, "fast".into(), "/ssd/pg".into())]).expect_err("ts");
        assert!(err.message().contains("'fast'"), "{err}");
    }

    #[test]
    fn labels_and_manifest_ranges_are_read() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIMELINE: 1\n";
        let (start, tli, checkpoint) = parse_backup_label(label).expect("label");
        assert_eq!((start.to_string(), tli), ("0/2000028".to_owned(), 1));
        assert_eq!(
            checkpoint.map(|c| c.to_string()).as_deref(),
            Some("0/2000060")
        );
        let tail = "{ \"Path\": \"x\" }\n],\n\"WAL-Ranges\": [\n\
                    { \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n\
                    ],\n\"Manifest-Checksum\": \"ab\"}\n";
        let ranges = parse_manifest_wal_ranges(tail).expect("ranges");
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].2.to_string(), "0/2000100");
    }

    #[test]
    fn the_server_failure_is_not_our_own_polling() {
        let log = "LOG:  starting PostgreSQL 15\n\
                   FATAL:  the database system is starting up\n\
                   FATAL:  recovery ended before configured recovery target was reached\n\
                   LOG:  startup process (PID 9) exited with exit code 1\n";
        assert_eq!(
            log_failure(log),
            "FATAL:  recovery ended before configured recovery target was reached"
        );
        assert_eq!(
            configured_action(Path::new("/nonexistent")),
            TargetAction::Promote
        );
    }

    #[tokio::test]
    async fn tar_entries_are_read_with_their_modes() {
        fn header(name: &str, flag: u8, size: u64, mode: u32) -> Vec<u8> {
            let mut h = vec![0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
            h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
            h[136..148].copy_from_slice(format!("{:011o}\0", 1_700_000_000u64).as_bytes());
            h[156] = flag;
            h[257..263].copy_from_slice(b"ustar\0");
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            h
        }
        let mut tar = header("global/", b'5', 0, 0o700);
        tar.extend(header("global/pg_control", b'0', 5, 0o600));
        tar.extend(b"hello");
        tar.extend(vec![0u8; 507]);
        tar.extend(vec![0u8; 1024]);
        let mut reader = TarReader::new(tar.as_slice());
        let dir = reader.next_entry().await.expect("read").expect("entry");
        assert_eq!((dir.kind, dir.mode), (EntryKind::Directory, 0o700));
        let file = reader.next_entry().await.expect("read").expect("entry");
        assert_eq!((file.name.as_str(), file.size), ("global/pg_control", 5));
        assert_eq!(&reader.read_data(5).await.expect("data")[..], b"hello");
        reader.skip_padding(5).await.expect("padding");
        assert!(reader.next_entry().await.expect("read").is_none());

        let mut damaged = header("x", b'0', 0, 0o600);
        damaged[0] = b'y';
        let err = TarReader::new(damaged.as_slice())
            .next_entry()
            .await
            .expect_err("checksum");
        assert!(err.message().contains("checksum"), "{err}");
    }
}
