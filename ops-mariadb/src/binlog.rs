//! The binary log archive and point-in-time replay.
//!
//! [`BinlogArchiver`] follows a server's binary log over the replication protocol (as
//! a replica would, with a server id of its own) and writes it to the repository's
//! log archive ([`Repository::push_log`]) as *pieces*: `<binlog file>.<offset>`, the
//! offset zero-padded to 12 digits, each holding the events exactly as they sit in
//! that file from that offset. A file is rebuilt by writing the magic `\xfebin` and
//! its pieces in name order; names sort in log order, which retention relies on.
//! A piece is pushed whole or not at all, and a restarted archiver continues after
//! the last piece, so a killed archiver loses nothing it had not archived yet and
//! the server still has.
//!
//! [`replay_to_time`] rebuilds the files from a backup's binlog position into a
//! private directory and pipes `mariadb-binlog` into the `mariadb` client connected
//! to the target: the only place this crate starts a client program, and why the
//! password goes into an option file of that directory (owner-only, removed after).
//!
//! What must not live here: anything that parses row images or rewrites events.
//! Events are archived byte for byte; their meaning is `mariadb-binlog`'s business.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::{Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use mysql_async::binlog::BinlogChecksumAlg;
use mysql_async::binlog::events::Event;
use mysql_async::{BinlogStreamRequest, Conn};
use ops_core::chrono::{DateTime, TimeZone as _, Utc};
use ops_core::repo::{LOG_KIND_KEY, LOG_SERIES_KEY, LOG_START_KEY, LogKind, LogObject, Repository};
use ops_core::{Error, ErrorKind, Result};
use tokio::time::Instant;

use crate::MariaDbEngine;
use crate::conn::{self, ConnConfig, Session, TlsMode};
use crate::error::{db_error, server_code};

/// Every binlog file starts with these four bytes.
pub const BINLOG_MAGIC: &[u8; 4] = b"\xfebin";
/// Digits of the offset in a piece name: enough for any offset a binlog can reach.
const OFFSET_DIGITS: usize = 12;
/// The common event header (binlog format 4).
const HEADER_LEN: usize = 19;
const STOP_EVENT: u8 = 3;
const QUERY_EVENT: u8 = 2;
const ROTATE_EVENT: u8 = 4;
const FORMAT_DESCRIPTION_EVENT: u8 = 15;
const TABLE_MAP_EVENT: u8 = 19;
const HEARTBEAT_EVENT: u8 = 27;
/// MySQL's heartbeat v2; MariaDB does not send it, but it is never a file's event.
const HEARTBEAT_V2_EVENT: u8 = 41;
/// `LOG_EVENT_ARTIFICIAL_F`: made up by the server for the stream, not in any file.
const ARTIFICIAL_FLAG: u16 = 0x20;
/// `MARIA_SLAVE_CAPABILITY_GTID`: without it the server rewrites GTID and annotate
/// events for old replicas, and the archive would not be the server's bytes.
const REPLICA_CAPABILITY: u32 = 4;
/// The package holding `mariadb-binlog` and `mariadb`.
const CLIENT_PACKAGE_HINT: &str = "install it with `apt-get install mariadb-client`";

/// A place in a server's binary log: a file name and a byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct BinlogPosition {
    /// The binlog file name (`binlog.000012`), without a directory.
    pub file: String,
    /// The byte offset in that file.
    pub position: u64,
}

impl BinlogPosition {
    /// A position.
    pub fn new(file: impl Into<String>, position: u64) -> Self {
        Self {
            file: file.into(),
            position,
        }
    }

    /// The position a MariaDB logical backup recorded (`binlog_file` and
    /// `binlog_position` of its manifest's snapshot).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the backup recorded none (the server wrote no
    /// binary log, or the backup is not a MariaDB one).
    pub fn from_snapshot(snapshot: &BTreeMap<String, String>) -> Result<Self> {
        let file = snapshot.get("binlog_file").filter(|f| !f.is_empty());
        let position = snapshot
            .get("binlog_position")
            .and_then(|p| p.trim().parse::<u64>().ok());
        match (file, position) {
            (Some(file), Some(position)) => Ok(Self::new(file.clone(), position)),
            _ => Err(Error::invalid(
                "the backup recorded no binary log position (the server had log_bin off, or \
                 it is not a MariaDB backup): it cannot be rolled forward from the binlog archive",
            )),
        }
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.position)
    }
}

/// The archive name of the piece of `file` that starts at `offset`.
pub fn piece_name(file: &str, offset: u64) -> String {
    format!("{file}.{offset:0OFFSET_DIGITS$}")
}

/// Splits a piece name into its binlog file and offset; `None` for another name.
pub fn parse_piece_name(name: &str) -> Option<BinlogPosition> {
    let (file, digits) = name.rsplit_once('.')?;
    if file.is_empty()
        || digits.len() != OFFSET_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(BinlogPosition::new(file, digits.parse().ok()?))
}

/// The series name of a server: `mariadb-<@@server_id>-<@@hostname>-<@@port>`, the
/// host name reduced to letters, digits, `.`, `_` and `-` (others become `-`) and to
/// 100 characters.
///
/// Server id and host name alone would put two servers of one machine (both with
/// the default server id 1) into one series; the port tells them apart. A server
/// whose host name changes (a re-created container) starts a new series: the
/// archiver then starts at the oldest binlog the server has, and backups taken from
/// then on name the new series.
pub fn series_name(server_id: u64, hostname: &str, port: u16) -> String {
    let host: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let host = if host.is_empty() {
        "unknown".into()
    } else {
        host
    };
    format!("mariadb-{server_id}-{host}-{port}")
}

/// The series of the server `engine` connects to ([`series_name`] of its
/// `@@server_id`, `@@hostname` and `@@port`).
///
/// # Errors
/// Connection errors.
pub async fn binlog_series(engine: &MariaDbEngine) -> Result<String> {
    let mut c = conn::connect(&engine.config, None, Session::Catalog).await?;
    let series = series_on(&mut c).await;
    conn::disconnect(c).await;
    series
}

/// [`binlog_series`] on an open connection (the dump's leader can name the series
/// without a connection of its own).
pub(crate) async fn series_on(c: &mut Conn) -> Result<String> {
    let rows = conn::query_rows(c, "SELECT @@server_id, @@hostname, @@port").await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::internal("SELECT @@server_id returned no row"))?;
    let port = u16::try_from(conn::number(row, 2)?)
        .map_err(|_| Error::internal("@@port is not a port number"))?;
    Ok(series_name(
        conn::number(row, 0)?,
        &conn::text(row, 1)?,
        port,
    ))
}

/// The archive name retention must keep for a backup taken at a position in `file`:
/// `<file>.000000000000`. Pieces are cut wherever the archiver flushed, so the piece
/// covering a position is not known when the backup is taken (it may not even be
/// archived yet); this name sorts at or before every piece of the file, so the
/// covering one and everything after it are kept. It costs at most the part of that
/// one file before the position (`max_binlog_size`, 1 GiB by default, compressed).
pub fn start_piece(file: &str) -> String {
    piece_name(file, 0)
}

/// Adds the keys that tie a logical backup to the binlog archive to its manifest
/// snapshot: [`LOG_KIND_KEY`] = `binlog`, [`LOG_SERIES_KEY`] = `series` and
/// [`LOG_START_KEY`] = [`start_piece`] of the recorded `binlog_file`. Returns whether
/// it did: a backup of a server without a binary log records no position and gets
/// no keys.
pub fn record_archive_keys(snapshot: &mut BTreeMap<String, String>, series: &str) -> bool {
    let Some(file) = snapshot
        .get("binlog_file")
        .filter(|f| !f.is_empty())
        .cloned()
    else {
        return false;
    };
    snapshot.insert(LOG_KIND_KEY.into(), LogKind::Binlog.as_str().into());
    snapshot.insert(LOG_SERIES_KEY.into(), series.into());
    snapshot.insert(LOG_START_KEY.into(), start_piece(&file));
    true
}

/// Options of a [`BinlogArchiver`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ArchiveOptions {
    /// The server id the archiver registers with (`None`: derived from this host's
    /// name, the repository and the series, so that two archivers do not clash and a
    /// restarted one replaces its own stale connection).
    pub server_id: Option<u32>,
    /// A piece is pushed once it holds this many bytes (a larger event makes a piece
    /// of its own). Default 4 MiB.
    pub piece_bytes: usize,
    /// A piece is pushed at the latest this long after its first event arrived: the
    /// recovery point when the server is lost. Default 5 s.
    pub piece_interval: Duration,
    /// Where to start when the series holds nothing yet (`None`: the oldest binlog
    /// the server still has). Once something is archived, the archive decides.
    pub start: Option<BinlogPosition>,
    /// The series to archive into (`None`: [`binlog_series`] of the server).
    pub series: Option<String>,
    /// How often the server sends a heartbeat when it has nothing to send; a
    /// connection silent for three of them is taken as lost. Default 10 s.
    pub heartbeat: Duration,
    /// Reconnect after a lost connection or a server restart (waiting 1 s, doubling
    /// up to 30 s) instead of returning the error. Default on.
    pub reconnect: bool,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        Self {
            server_id: None,
            piece_bytes: 4 * 1024 * 1024,
            piece_interval: Duration::from_secs(5),
            start: None,
            series: None,
            heartbeat: Duration::from_secs(10),
            reconnect: true,
        }
    }
}

impl ArchiveOptions {
    /// Sets [`ArchiveOptions::server_id`].
    #[must_use]
    pub fn with_server_id(mut self, id: u32) -> Self {
        self.server_id = Some(id);
        self
    }

    /// Sets [`ArchiveOptions::piece_bytes`] (at least 1).
    #[must_use]
    pub fn with_piece_bytes(mut self, bytes: usize) -> Self {
        self.piece_bytes = bytes.max(1);
        self
    }

    /// Sets [`ArchiveOptions::piece_interval`].
    #[must_use]
    pub fn with_piece_interval(mut self, interval: Duration) -> Self {
        self.piece_interval = interval;
        self
    }

    /// Sets [`ArchiveOptions::start`].
    #[must_use]
    pub fn with_start(mut self, start: BinlogPosition) -> Self {
        self.start = Some(start);
        self
    }

    /// Sets [`ArchiveOptions::series`].
    #[must_use]
    pub fn with_series(mut self, series: impl Into<String>) -> Self {
        self.series = Some(series.into());
        self
    }

    /// Sets [`ArchiveOptions::heartbeat`] (at least 1 s).
    #[must_use]
    pub fn with_heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period.max(Duration::from_secs(1));
        self
    }

    /// Sets [`ArchiveOptions::reconnect`].
    #[must_use]
    pub fn with_reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
}

/// What a [`BinlogArchiver::run`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ArchiveReport {
    /// The series archived into.
    pub series: String,
    /// The server id the archiver registered with.
    pub server_id: u32,
    /// Where it started.
    pub started_at: BinlogPosition,
    /// Where the archive ends now: the next byte to archive.
    pub archived_to: BinlogPosition,
    /// Pieces pushed.
    pub pieces: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Events in them.
    pub events: u64,
    /// Connections lost and made again.
    pub reconnects: u64,
}

/// Follows a server's binary log into the repository's log archive (see the module
/// documentation for the layout).
///
/// The account needs `REPLICATION SLAVE` (to read the binlog) and `BINLOG MONITOR`
/// (or `REPLICATION CLIENT`, for `SHOW BINARY LOGS`).
#[derive(Clone)]
pub struct BinlogArchiver {
    config: Arc<ConnConfig>,
    repo: Arc<Repository>,
    options: ArchiveOptions,
}

impl fmt::Debug for BinlogArchiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinlogArchiver")
            .field("server", &self.config.redacted_url())
            .field("repository", &self.repo.target().location())
            .field("options", &self.options)
            .finish()
    }
}

/// Why one connection's stream ended.
enum Ended {
    /// The shutdown future completed: everything received is archived.
    Shutdown,
}

/// The archiver's place and the piece being filled.
struct Follow {
    /// The file being read and the offset of the next byte not yet taken.
    at: BinlogPosition,
    /// The piece being filled: its file, first offset and bytes.
    piece_file: String,
    piece_start: u64,
    piece: Vec<u8>,
    /// When the piece's first event arrived.
    piece_since: Option<Instant>,
    /// Whether this connection has delivered a format description yet (until then
    /// the driver cannot tell a checksum from the event, see `on_event`).
    seen_format: bool,
    report: ArchiveReport,
}

impl BinlogArchiver {
    /// An archiver of the server `engine` connects to (its database is not used)
    /// into `repo`, with default [`ArchiveOptions`].
    pub fn new(engine: &MariaDbEngine, repo: Arc<Repository>) -> Self {
        Self {
            config: Arc::clone(&engine.config),
            repo,
            options: ArchiveOptions::default(),
        }
    }

    /// Sets the options.
    #[must_use]
    pub fn with_options(mut self, options: ArchiveOptions) -> Self {
        self.options = options;
        self
    }

    /// The options in force.
    pub fn options(&self) -> &ArchiveOptions {
        &self.options
    }

    /// The series this archiver writes ([`ArchiveOptions::series`] or the server's
    /// [`binlog_series`]).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn series(&self) -> Result<String> {
        if let Some(s) = &self.options.series {
            return Ok(s.clone());
        }
        let mut c = conn::connect(&self.config, None, Session::Catalog).await?;
        let series = series_on(&mut c).await;
        conn::disconnect(c).await;
        series
    }

    /// Where the archive of `series` ends (the next byte to archive), from its last
    /// piece; `None` when the series holds nothing.
    async fn archive_end(&self, series: &str) -> Result<Option<BinlogPosition>> {
        Ok(archive_reach(&self.repo, series).await?.map(|r| r.end))
    }

    /// Archives until `shutdown` completes, then pushes what it holds and returns.
    ///
    /// Starts after the last archived piece of the series, or (nothing archived) at
    /// [`ArchiveOptions::start`] or the oldest binlog the server has. A piece is
    /// pushed at every binlog rotation and server stop, when it reaches
    /// [`ArchiveOptions::piece_bytes`], [`ArchiveOptions::piece_interval`] after its
    /// first event, and at shutdown. Dropping the future instead loses only the
    /// piece being filled, which the next run reads again from the server.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the server writes no binary log;
    /// [`ErrorKind::PermissionDenied`] without the privileges above;
    /// [`ErrorKind::NotFound`] when the server no longer has the binlog the archive
    /// continues from (purged before it was archived: the archive would have a gap);
    /// [`ErrorKind::Mismatch`] when the stream skips bytes;
    /// [`ErrorKind::AlreadyExists`] when the archive holds a piece of the same name
    /// with other bytes (another server or archiver writes the series); storage
    /// errors; connection errors when [`ArchiveOptions::reconnect`] is off.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<ArchiveReport> {
        let series = self.series().await?;
        let start = match self.archive_end(&series).await? {
            Some(end) => {
                if let Some(asked) = &self.options.start {
                    tracing::info!(
                        "series {series} is archived up to {end}: continuing there, not at {asked}"
                    );
                }
                end
            }
            None => match &self.options.start {
                Some(p) => p.clone(),
                None => self.oldest_binlog().await?,
            },
        };
        let server_id = self.options.server_id.unwrap_or_else(|| {
            derived_server_id(
                &ops_core::repo::host_name(),
                &self.repo.target().location(),
                &series,
            )
        });
        let mut follow = Follow {
            at: start.clone(),
            piece_file: start.file.clone(),
            piece_start: start.position,
            piece: Vec::new(),
            piece_since: None,
            seen_format: false,
            report: ArchiveReport {
                series: series.clone(),
                server_id,
                started_at: start.clone(),
                archived_to: start,
                pieces: 0,
                bytes: 0,
                events: 0,
                reconnects: 0,
            },
        };
        tracing::info!(
            "archiving the binary log of {} from {} into series {series}",
            self.config.redacted_url(),
            follow.at
        );
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = Duration::from_secs(1);
        loop {
            let result = self
                .follow_once(&series, server_id, &mut follow, shutdown.as_mut())
                .await;
            // Whatever ended the stream, the piece holds whole events: keep them.
            let pushed = self.push_piece(&series, &mut follow).await;
            match result {
                Ok(Ended::Shutdown) => {
                    pushed?;
                    follow.report.archived_to = follow.at.clone();
                    return Ok(follow.report);
                }
                Err(e) if e.is_temporary() && self.options.reconnect => {
                    pushed?;
                    tracing::warn!(
                        "binary log stream from {} lost at {} ({e}); reconnecting in {} s",
                        self.config.redacted_url(),
                        follow.at,
                        pause.as_secs()
                    );
                    tokio::select! {
                        () = shutdown.as_mut() => {
                            follow.report.archived_to = follow.at.clone();
                            return Ok(follow.report);
                        }
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                    follow.report.reconnects += 1;
                }
                Err(e) => {
                    if let Err(p) = pushed {
                        tracing::warn!("pushing the last piece failed too: {p}");
                    }
                    return Err(e.during(format!(
                        "archiving the binary log of {} at {}",
                        self.config.redacted_url(),
                        follow.at
                    )));
                }
            }
        }
    }

    /// The first file of `SHOW BINARY LOGS`, at its first event.
    async fn oldest_binlog(&self) -> Result<BinlogPosition> {
        let mut c = conn::connect(&self.config, None, Session::Catalog).await?;
        let rows = conn::query_rows(&mut c, "SHOW BINARY LOGS").await;
        conn::disconnect(c).await;
        let rows = rows.map_err(|e| {
            if e.context_value("code") == Some("1381") {
                Error::invalid(
                    "the server writes no binary log (log_bin is off): there is nothing to \
                     archive; start it with log_bin (and binlog_format=ROW)",
                )
            } else {
                e.during("listing the server's binary logs (SHOW BINARY LOGS)")
            }
        })?;
        let first = rows
            .first()
            .ok_or_else(|| Error::invalid("the server lists no binary log file"))?;
        Ok(BinlogPosition::new(conn::text(first, 0)?, 4))
    }

    /// One connection: streams from `follow.at` until shutdown or an error.
    async fn follow_once(
        &self,
        series: &str,
        server_id: u32,
        follow: &mut Follow,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Ended> {
        let mut c = conn::connect(&self.config, None, Session::Catalog).await?;
        let own = conn::query_string(&mut c, "SELECT @@server_id").await?;
        // A replica with the server's own id would be refused; never be that one.
        let server_id = if own.trim() == server_id.to_string() {
            server_id ^ 1
        } else {
            server_id
        };
        let heartbeat_ns = self.options.heartbeat.as_nanos();
        conn::exec(
            &mut c,
            &format!(
                "SET @mariadb_slave_capability = {REPLICA_CAPABILITY}, \
                 @master_heartbeat_period = {heartbeat_ns}"
            ),
        )
        .await?;
        let file = follow.at.file.clone();
        let request = BinlogStreamRequest::new(server_id)
            .with_filename(file.as_bytes())
            .with_pos(follow.at.position);
        let mut stream = c
            .get_binlog_stream(request)
            .await
            .map_err(|e| stream_error(e, &follow.at, series))?;
        follow.seen_format = false;
        let silence = self.options.heartbeat * 3;
        loop {
            let due = follow.piece_since.map(|t| t + self.options.piece_interval);
            tokio::select! {
                () = shutdown.as_mut() => {
                    if let Err(e) = stream.close().await {
                        tracing::debug!("closing the binlog stream: {e}");
                    }
                    return Ok(Ended::Shutdown);
                }
                () = sleep_until(due) => {
                    self.push_piece(series, follow).await?;
                }
                next = tokio::time::timeout(silence, stream.next()) => match next {
                    Err(_) => {
                        return Err(Error::new(
                            ErrorKind::Interrupted,
                            format!(
                                "no event and no heartbeat for {} s: the connection is taken as lost",
                                silence.as_secs()
                            ),
                        )
                        .temporary());
                    }
                    Ok(None) => {
                        return Err(Error::new(
                            ErrorKind::Interrupted,
                            "the server ended the binary log stream (shut down or restarted)",
                        )
                        .temporary());
                    }
                    Ok(Some(Err(e))) => return Err(stream_error(e, &follow.at, series)),
                    Ok(Some(Ok(event))) => {
                        if self.on_event(&event, follow)? {
                            self.push_piece(series, follow).await?;
                        }
                    }
                }
            }
        }
    }

    /// Takes one event from the stream; returns whether the piece must be pushed now.
    fn on_event(&self, event: &Event, follow: &mut Follow) -> Result<bool> {
        let header = event.header();
        let kind = header.event_type_raw();
        if matches!(kind, HEARTBEAT_EVENT | HEARTBEAT_V2_EVENT) {
            return Ok(false);
        }
        let end = u64::from(header.log_pos());
        let size = u64::from(header.event_size());
        let artificial =
            header.flags_raw() & ARTIFICIAL_FLAG != 0 || header.timestamp() == 0 || end == 0;
        if kind == FORMAT_DESCRIPTION_EVENT {
            follow.seen_format = true;
        }
        if artificial {
            // The stream's own events: the rotate that names where it starts (or the
            // next file after one that ended without a rotate: a crash or a stop), and
            // the format description re-sent when it starts mid-file. The files hold
            // their real ones, archived at offset 4.
            if kind == ROTATE_EVENT && follow.seen_format {
                let next = rotate_target(event)?;
                if next.file != follow.at.file {
                    follow.at = next;
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        let start = end.checked_sub(size).ok_or_else(|| {
            Error::corrupt(format!(
                "an event of type {kind} claims to end at {end} but is {size} bytes long"
            ))
        })?;
        if start < follow.at.position {
            tracing::debug!("event at {}:{start} already taken, skipped", follow.at.file);
            return Ok(false);
        }
        if start > follow.at.position {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the server sent an event at {}:{start} where {} was expected: bytes \
                     {} to {start} would be missing from the archive, so nothing more is \
                     archived",
                    follow.at.file, follow.at.position, follow.at.position
                ),
            ));
        }
        let raw = raw_event(event, kind, size)?;
        if follow.piece.is_empty() {
            follow.piece_file.clone_from(&follow.at.file);
            follow.piece_start = follow.at.position;
            follow.piece_since = Some(Instant::now());
        }
        follow.piece.extend_from_slice(&raw);
        follow.at.position = end;
        follow.report.events += 1;
        match kind {
            ROTATE_EVENT => {
                // The file ends here; the next starts after the push.
                follow.at = rotate_target(event)?;
                Ok(true)
            }
            STOP_EVENT => Ok(true),
            _ => Ok(follow.piece.len() >= self.options.piece_bytes),
        }
    }

    /// Pushes the piece being filled, if any.
    async fn push_piece(&self, series: &str, follow: &mut Follow) -> Result<()> {
        if follow.piece.is_empty() {
            return Ok(());
        }
        let name = piece_name(&follow.piece_file, follow.piece_start);
        self.repo
            .push_log(LogKind::Binlog, series, &name, &follow.piece)
            .await
            .map_err(|e| e.during(format!("archiving binlog piece {name} of series {series}")))?;
        tracing::debug!(
            "archived binlog piece {name} ({} bytes)",
            follow.piece.len()
        );
        follow.report.pieces += 1;
        follow.report.bytes += follow.piece.len() as u64;
        follow.piece.clear();
        follow.piece_since = None;
        follow.report.archived_to = follow.at.clone();
        Ok(())
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A server id of the upper half of the range (operators number their servers from
/// 1), stable for one archiver: FNV-1a of where it runs, where it writes and what.
fn derived_server_id(host: &str, repository: &str, series: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in host
        .bytes()
        .chain([0])
        .chain(repository.bytes())
        .chain([0])
        .chain(series.bytes())
    {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    0x8000_0000 | (hash & 0x7fff_ffff)
}

/// A stream error in the operator's words: error 1236 is the server saying it
/// cannot send from there.
fn stream_error(e: mysql_async::Error, at: &BinlogPosition, series: &str) -> Error {
    if server_code(&e) == Some(1236) {
        let message = db_error(e).message().to_owned();
        return Error::new(
            ErrorKind::NotFound,
            format!(
                "the server cannot send its binary log from {at}: {message}. If the file was \
                 purged (or the log reset) before it was archived, series {series} cannot \
                 continue without a gap: take a new backup and archive into a new series \
                 (ArchiveOptions::series)"
            ),
        );
    }
    let err = db_error(e);
    if err.kind() == ErrorKind::PermissionDenied {
        let message = err.message().to_owned();
        return err.with_message(format!(
            "{message}: reading the binary log needs the REPLICATION SLAVE privilege"
        ));
    }
    err
}

/// The event's bytes as they sit in the binlog file: the driver splits off the
/// checksum (and a format description's checksum algorithm), so they are put back.
fn raw_event(event: &Event, kind: u8, size: u64) -> Result<Vec<u8>> {
    let header = event.header();
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    out.extend_from_slice(&header.timestamp().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&header.server_id().to_le_bytes());
    out.extend_from_slice(&header.event_size().to_le_bytes());
    out.extend_from_slice(&header.log_pos().to_le_bytes());
    out.extend_from_slice(&header.flags_raw().to_le_bytes());
    out.extend_from_slice(event.data());
    let algorithm = event.footer().get_checksum_alg();
    if kind == FORMAT_DESCRIPTION_EVENT
        && let Ok(Some(alg)) = algorithm
    {
        out.push(alg as u8);
    }
    if let Some(sum) = event.checksum() {
        if let Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32)) = algorithm
            && event.calc_checksum(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32)
                != u32::from_le_bytes(sum)
        {
            return Err(Error::corrupt(format!(
                "an event of type {kind} ending at {} fails its CRC32 checksum",
                header.log_pos()
            )));
        }
        out.extend_from_slice(&sum);
    }
    if out.len() as u64 != size {
        return Err(Error::corrupt(format!(
            "an event of type {kind} ending at {} could not be rebuilt byte for byte \
             ({} bytes instead of {size})",
            header.log_pos(),
            out.len()
        )));
    }
    Ok(out)
}

/// Where a rotate event points: the next file and the offset in it.
fn rotate_target(event: &Event) -> Result<BinlogPosition> {
    parse_rotate(event.data())
}

/// A rotate event's body (checksum removed): 8 bytes of position, then the name.
fn parse_rotate(body: &[u8]) -> Result<BinlogPosition> {
    let bad = || Error::corrupt("a rotate event does not name a binlog file");
    let pos = body.get(..8).ok_or_else(bad)?;
    let pos = u64::from_le_bytes(pos.try_into().map_err(|_| bad())?);
    let name = std::str::from_utf8(&body[8..]).map_err(|_| bad())?;
    let plain = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain {
        return Err(Error::corrupt(format!(
            "the server rotated to binlog file '{}', whose name cannot be archived (letters, \
             digits, '.', '_' and '-' only)",
            name.escape_debug()
        )));
    }
    Ok(BinlogPosition::new(name, pos))
}

/// One event in a rebuilt file.
#[derive(Debug, Clone, Copy)]
struct RawEvent {
    offset: u64,
    kind: u8,
    timestamp: u32,
    size: u64,
}

/// The events of `bytes`, which start at `offset` in their file.
///
/// # Errors
/// [`ErrorKind::Corrupt`] when the bytes are not whole events.
fn events_of(bytes: &[u8], offset: u64, what: &str) -> Result<Vec<RawEvent>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < bytes.len() {
        let header = bytes.get(i..i + HEADER_LEN).ok_or_else(|| {
            Error::corrupt(format!("{what} ends inside an event header at byte {i}"))
        })?;
        let size = u32::from_le_bytes([header[9], header[10], header[11], header[12]]) as usize;
        if size < HEADER_LEN || i + size > bytes.len() {
            return Err(Error::corrupt(format!(
                "{what} holds a cut event at byte {i} ({size} bytes long)"
            )));
        }
        out.push(RawEvent {
            offset: offset + i as u64,
            kind: header[4],
            timestamp: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            size: size as u64,
        });
        i += size;
    }
    Ok(out)
}

/// How far a series' archive reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveReach {
    /// The last piece's name.
    pub last_piece: String,
    /// The next byte to archive: where the archiver continues.
    pub end: BinlogPosition,
    /// The time of the last archived event (second resolution, as in the binlog).
    pub last_event: Option<DateTime<Utc>>,
    /// When the last piece reached the store.
    pub archived: DateTime<Utc>,
}

/// How far the archive of `series` reaches; `None` when it holds nothing. Reads the
/// last piece only: a caller restoring to a time checks this before it restores
/// anything.
///
/// # Errors
/// [`ErrorKind::Corrupt`] when the last piece is not whole events; storage errors.
pub async fn archive_reach(repo: &Repository, series: &str) -> Result<Option<ArchiveReach>> {
    let pieces = repo.list_logs(LogKind::Binlog, Some(series)).await?;
    let Some((last, at)) = pieces
        .iter()
        .rev()
        .find_map(|o| parse_piece_name(&o.name).map(|p| (o, p)))
    else {
        return Ok(None);
    };
    let bytes = fetch_piece(repo, series, &last.name).await?;
    let events = events_of(&bytes, at.position, &format!("binlog piece {}", last.name))?;
    let mut end = BinlogPosition::new(at.file.clone(), at.position + bytes.len() as u64);
    if let Some(e) = events.last()
        && e.kind == ROTATE_EVENT
    {
        // The piece ends its file: the archive continues in the next one.
        let start = usize::try_from(e.offset - at.position).unwrap_or(usize::MAX);
        let event = bytes
            .get(start..start + e.size as usize)
            .ok_or_else(|| Error::internal("event walk out of its piece"))?;
        end = rotate_of_raw(event, checksummed(repo, series, &at.file, &pieces).await?)?;
    }
    Ok(Some(ArchiveReach {
        last_piece: last.name.clone(),
        end,
        last_event: events.iter().map(|e| e.timestamp).max().map(timestamp),
        archived: last.archived,
    }))
}

/// Whether the events of `file` carry a CRC32 checksum, from its format description
/// (the first event of its piece at offset 4).
async fn checksummed(
    repo: &Repository,
    series: &str,
    file: &str,
    pieces: &[LogObject],
) -> Result<bool> {
    let first = piece_name(file, 4);
    if !pieces.iter().any(|p| p.name == first) {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("the archive of series {series} lacks {first}, the start of {file}"),
        ));
    }
    let bytes = fetch_piece(repo, series, &first).await?;
    format_checksummed(&bytes)
}

/// Whether a file whose first event (its format description) starts `bytes` has
/// CRC32 checksums: the algorithm byte sits before the description's own checksum.
fn format_checksummed(bytes: &[u8]) -> Result<bool> {
    let events = events_of(bytes, 4, "a binlog file's first piece")?;
    let fde = events
        .first()
        .filter(|e| e.kind == FORMAT_DESCRIPTION_EVENT)
        .ok_or_else(|| {
            Error::corrupt("a binlog file's first piece does not start with its format description")
        })?;
    let end = fde.size as usize;
    Ok(bytes.get(end - 5).copied() == Some(1))
}

/// The target of a rotate event given whole (header and all).
fn rotate_of_raw(event: &[u8], checksum: bool) -> Result<BinlogPosition> {
    let end = if checksum {
        event.len().saturating_sub(4)
    } else {
        event.len()
    };
    parse_rotate(event.get(HEADER_LEN..end).unwrap_or_default())
}

fn timestamp(secs: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(i64::from(secs), 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

async fn fetch_piece(repo: &Repository, series: &str, name: &str) -> Result<Vec<u8>> {
    repo.fetch_log(LogKind::Binlog, series, name)
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("binlog piece {name} of series {series} vanished from the archive"),
            )
        })
}

/// What [`replay_to_time`] replayed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The binlog files read, in order.
    pub files: Vec<String>,
    /// Events read from the start position up to the target time (of every database;
    /// `mariadb-binlog` applied those of the source database).
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The time of the last event read (`None`: none before the target time).
    pub last_event: Option<DateTime<Utc>>,
    /// The first event not replayed: the first one at or after the target time.
    pub stopped_at: BinlogPosition,
}

/// Replays the archived binlog events of `source_database` from `from` (a backup's
/// [`BinlogPosition::from_snapshot`]) up to `until` into the database `target` is
/// bound to (renamed when the names differ), after the backup was restored there.
///
/// The pieces are rebuilt into binlog files in a private directory; `mariadb-binlog`
/// (run with `TZ=UTC`) reads them from `from` and stops at the first event stamped at
/// or after `until`, and its output goes to the `mariadb` client connected to the
/// target. Binlog times have one-second resolution: an `until` with a fraction is
/// taken down to its whole second, so no event of a later instant is replayed.
///
/// Nothing touches the target unless the archive holds an event at or after `until`
/// (else the archive might end early and the restore would silently stop short), and
/// unless the events to replay leave the target database alone (`mariadb-binlog`
/// renames before it filters, so writes to a database of the target's name, such as
/// a restore into it that went to the binary log, would be applied twice).
/// [`archive_reach`] tells in advance whether the time is reachable.
///
/// The client is given the target's user, password, host, port, socket and TLS
/// settings in an option file readable by this user only, in a directory that is
/// removed afterwards; never on a command line. Its account needs the privileges of
/// the replayed statements and `BINLOG REPLAY` (or `SUPER`) for row events; with
/// [`MariaDbEngine::with_binlog`] off, the replay is not written to the target's
/// binary log (`BINLOG ADMIN`). Statement-format events that name tables with their
/// database are not renamed: use `binlog_format=ROW` for restores under another name.
///
/// # Errors
/// [`ErrorKind::NotFound`] when the archive does not hold `from` or does not reach
/// `until` (the message says how far it reaches); [`ErrorKind::Mismatch`] when the
/// archive has a gap, naming it; [`ErrorKind::InvalidInput`] when `from` is not an
/// event boundary, the target engine names no database, or the events to replay
/// write to the target database; [`ErrorKind::MissingTool`] without `mariadb-binlog`
/// or `mariadb`; [`ErrorKind::Database`] when the replay fails (with the tools'
/// messages: the target then holds the events before the failing one).
pub async fn replay_to_time(
    repo: &Repository,
    series: &str,
    from: &BinlogPosition,
    until: DateTime<Utc>,
    source_database: &str,
    target: &MariaDbEngine,
) -> Result<ReplayReport> {
    let target_database = target.require_database()?.to_owned();
    prepare_replay(repo, series, from, until, source_database, &target_database)
        .await?
        .apply(target)
        .await
}

/// A replay read from the archive and checked, ready to apply: the binlog files
/// rebuilt in a private directory (removed with the value), the tools found. Made
/// before anything is restored, so that a replay that cannot happen (a gap, an
/// archive that does not hold the backup's position or reach the time, a missing
/// tool) refuses before the target is touched.
#[derive(Debug)]
pub struct PreparedReplay {
    dir: tempfile::TempDir,
    plan: Rebuilt,
    from: BinlogPosition,
    stop: i64,
    source_database: String,
    target_database: String,
    binlog_tool: std::path::PathBuf,
    client_tool: std::path::PathBuf,
}

/// Prepares the replay of [`replay_to_time`] into a database named
/// `target_database`, without touching it (see [`PreparedReplay`]).
///
/// # Errors
/// As [`replay_to_time`], but for the replay itself.
pub async fn prepare_replay(
    repo: &Repository,
    series: &str,
    from: &BinlogPosition,
    until: DateTime<Utc>,
    source_database: &str,
    target_database: &str,
) -> Result<PreparedReplay> {
    let stop = until.timestamp();
    let binlog_tool = find_tool(&["mariadb-binlog", "mysqlbinlog"])?;
    let client_tool = find_tool(&["mariadb", "mysql"])?;
    let dir = private_dir()?;
    let plan = rebuild(repo, series, from, stop, dir.path()).await?;
    if source_database != target_database
        && let Some(at) = plan.writes_to(target_database)
    {
        return Err(Error::invalid(format!(
            "the archived events to replay write to database {target_database} itself (at \
             {at}): renamed events of {source_database} could not be told from them, and they \
             would be applied twice; restore into a database that the binary log does not \
             write to before the target time, or restore without writing to the binary log \
             (MariaDbEngine::with_binlog(false))"
        )));
    }
    Ok(PreparedReplay {
        dir,
        plan,
        from: from.clone(),
        stop,
        source_database: source_database.to_owned(),
        target_database: target_database.to_owned(),
        binlog_tool,
        client_tool,
    })
}

impl PreparedReplay {
    /// Applies the replay to `target`, which must be bound to the database it was
    /// prepared for.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for another database; [`ErrorKind::Database`] when
    /// the replay fails (the target then holds the events before the failing one).
    pub async fn apply(self, target: &MariaDbEngine) -> Result<ReplayReport> {
        let PreparedReplay {
            dir,
            plan,
            from,
            stop,
            source_database,
            target_database,
            binlog_tool,
            client_tool,
        } = self;
        if target.require_database()? != target_database {
            return Err(Error::invalid(format!(
                "the replay was prepared for database {target_database}, not {}",
                target.require_database()?
            )));
        }
        let source_database = source_database.as_str();
        let from = &from;
        let options = client_options(&target.config)?;
        let option_file = dir.path().join("client.cnf");
        write_private(&option_file, options.as_bytes())?;

        let stop_text = timestamp_text(stop);
        let mut binlog = tokio::process::Command::new(&binlog_tool);
        binlog
            .arg("--no-defaults")
            .arg("--skip-gtid-strict-mode")
            .arg(format!("--start-position={}", from.position))
            .arg(format!("--stop-datetime={stop_text}"))
            .arg(format!("--database={source_database}"));
        if source_database != target_database {
            binlog.arg(format!("--rewrite-db={source_database}->{target_database}"));
        }
        if !target.binlog() {
            binlog.arg("--disable-log-bin");
        }
        binlog
            .args(plan.files.iter().map(|f| dir.path().join(f)))
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&dir.path().join("binlog.err"))?)
            .kill_on_drop(true);
        let mut reader = binlog
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", binlog_tool.display()), e))?;
        let piped: Stdio = reader
            .stdout
            .take()
            .ok_or_else(|| Error::internal("mariadb-binlog has no stdout"))?
            .try_into()
            .map_err(|e| Error::io("passing mariadb-binlog's output on", e))?;
        let mut client = tokio::process::Command::new(&client_tool);
        client
            .arg(format!("--defaults-file={}", option_file.display()))
            .arg("--binary-mode")
            .arg("--batch")
            .arg(&target_database)
            .stdin(piped)
            .stdout(Stdio::null())
            .stderr(log_file(&dir.path().join("client.err"))?)
            .kill_on_drop(true);
        let mut applier = client
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", client_tool.display()), e))?;
        let (read, applied) = tokio::join!(reader.wait(), applier.wait());
        let read = read.map_err(|e| Error::io("waiting for mariadb-binlog", e))?;
        let applied = applied.map_err(|e| Error::io("waiting for the mariadb client", e))?;
        if !read.success() || !applied.success() {
            let tail = |name: &str| {
                let text = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(5)..].join(" / ")
            };
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "replaying the binary log from {from} until {stop_text} UTC into database \
                     {target_database} failed (mariadb-binlog: {read}, {}; mariadb: {applied}, {}): \
                     the target holds the events before the failing one",
                    tail("binlog.err"),
                    tail("client.err")
                ),
            ));
        }
        Ok(ReplayReport {
            files: plan.files,
            events: plan.events,
            bytes: plan.bytes,
            last_event: plan.last_event.map(timestamp),
            stopped_at: plan.stopped_at,
        })
    }
}

/// The binlog files rebuilt for a replay, and what is in range.
#[derive(Debug)]
struct Rebuilt {
    files: Vec<String>,
    events: u64,
    bytes: u64,
    last_event: Option<u32>,
    stopped_at: BinlogPosition,
    /// The databases the events in range write to (query and table map events), with
    /// the first position of each.
    databases: BTreeMap<String, BinlogPosition>,
}

impl Rebuilt {
    fn writes_to(&self, database: &str) -> Option<&BinlogPosition> {
        self.databases.get(database)
    }
}

/// Rebuilds the files from `from` until the first event stamped at or after `stop`
/// (seconds), into `dir`. The first file gets its first piece (the format
/// description `mariadb-binlog` reads first) and the pieces from `from` on; the
/// bytes between are left a hole, never read.
async fn rebuild(
    repo: &Repository,
    series: &str,
    from: &BinlogPosition,
    stop: i64,
    dir: &Path,
) -> Result<Rebuilt> {
    let objects = repo.list_logs(LogKind::Binlog, Some(series)).await?;
    let pieces: Vec<(BinlogPosition, String)> = objects
        .iter()
        .filter_map(|o| parse_piece_name(&o.name).map(|p| (p, o.name.clone())))
        .collect();
    let covering = pieces
        .iter()
        .rposition(|(p, _)| p.file == from.file && p.position <= from.position)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "the binlog archive of series {series} holds nothing at {from}: was the \
                     archiver running when the backup was taken, and into this series?"
                ),
            )
        })?;
    let mut out = Rebuilt {
        files: Vec::new(),
        events: 0,
        bytes: 0,
        last_event: None,
        stopped_at: from.clone(),
        databases: BTreeMap::new(),
    };
    let mut file: Option<(String, std::fs::File)> = None;
    let mut expected = from.clone();
    // Where the previous file said the next one is, when it ended with a rotate.
    let mut rotated_to: Option<BinlogPosition> = None;
    let mut checksum = false;
    let mut layout: Option<Layout> = None;
    let mut reached = false;
    let mut last_seen: Option<(u32, BinlogPosition)> = None;
    for (index, (at, name)) in pieces.iter().enumerate().skip(covering) {
        let opening = file.as_ref().is_none_or(|(f, _)| *f != at.file);
        if opening {
            if index == covering {
                expected = BinlogPosition::new(at.file.clone(), at.position);
            } else {
                if at.position != 4 {
                    return Err(gap(series, &expected, at));
                }
                if let Some(next) = &rotated_to
                    && next.file != at.file
                {
                    return Err(gap(series, next, at));
                }
                expected = BinlogPosition::new(at.file.clone(), 4);
            }
            let path = dir.join(&at.file);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            f.write_all(BINLOG_MAGIC)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            // The format description, which tells how to read the rest.
            let first = fetch_piece_or_gap(repo, series, &piece_name(&at.file, 4)).await?;
            checksum = format_checksummed(&first)?;
            layout = Some(Layout::of(&first)?);
            write_at(&mut f, 4, &first, &path)?;
            out.files.push(at.file.clone());
            file = Some((at.file.clone(), f));
            rotated_to = None;
        }
        if at.position != expected.position {
            return Err(gap(series, &expected, at));
        }
        let bytes = fetch_piece(repo, series, name).await?;
        let (current, f) = file
            .as_mut()
            .ok_or_else(|| Error::internal("no file open for a piece"))?;
        let path = dir.join(&*current);
        write_at(f, at.position, &bytes, &path)?;
        let events = events_of(&bytes, at.position, &format!("binlog piece {name}"))?;
        for e in &events {
            let here = BinlogPosition::new(current.clone(), e.offset);
            if index == covering && e.offset < from.position {
                if e.offset + e.size > from.position {
                    return Err(Error::invalid(format!(
                        "{from} is not the start of an event in the archived binary log \
                         (an event runs from {} to {})",
                        e.offset,
                        e.offset + e.size
                    )));
                }
                continue;
            }
            last_seen = Some((e.timestamp, here.clone()));
            if i64::from(e.timestamp) >= stop {
                out.stopped_at = here;
                reached = true;
                break;
            }
            out.events += 1;
            out.bytes += e.size;
            out.last_event = Some(e.timestamp);
            let start = usize::try_from(e.offset - at.position).unwrap_or(usize::MAX);
            let raw = bytes
                .get(start..start + e.size as usize)
                .ok_or_else(|| Error::internal("event walk out of its piece"))?;
            if let Some(db) = layout.as_ref().and_then(|l| l.database_of(raw)) {
                out.databases.entry(db).or_insert(here);
            }
            if e.kind == ROTATE_EVENT {
                rotated_to = Some(rotate_of_raw(raw, checksum)?);
            }
        }
        expected = BinlogPosition::new(current.clone(), at.position + bytes.len() as u64);
        if reached {
            break;
        }
    }
    if let Some((_, f)) = file {
        f.sync_all()
            .map_err(|e| Error::io("writing the rebuilt binlog files", e))?;
    }
    if !reached {
        let until = timestamp_text(stop);
        let reach = match last_seen {
            Some((secs, at)) => format!(
                "its last event is of {} UTC (at {at})",
                timestamp_text(i64::from(secs))
            ),
            None => format!("it holds no event after {from}"),
        };
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "the binlog archive of series {series} does not reach {until} UTC: {reach}, so \
                 a replay would stop short; nothing was replayed. The archiver pushes what it \
                 has every few seconds: wait and try again; a server idle since then needs one \
                 write (or FLUSH BINARY LOGS) for the archive to hold an event at or after that \
                 time"
            ),
        ));
    }
    Ok(out)
}

fn gap(series: &str, expected: &BinlogPosition, found: &BinlogPosition) -> Error {
    Error::new(
        ErrorKind::Mismatch,
        format!(
            "the binlog archive of series {series} has a gap: after {expected} comes {found}; \
             the events between are missing, so no time after {expected} can be restored"
        ),
    )
}

async fn fetch_piece_or_gap(repo: &Repository, series: &str, name: &str) -> Result<Vec<u8>> {
    repo.fetch_log(LogKind::Binlog, series, name)
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "the binlog archive of series {series} lacks {name}, the start of its file \
                     (its format description): the file cannot be read"
                ),
            )
        })
}

/// How to find the database of query and table map events in one file: the header
/// lengths its format description gives.
struct Layout {
    post_header: Vec<u8>,
}

impl Layout {
    /// From a file's first piece (its format description first): binlog version (2),
    /// server version (50), creation time (4), header length (1), then one post-header
    /// length per event type.
    fn of(first: &[u8]) -> Result<Self> {
        let events = events_of(first, 4, "a binlog file's first piece")?;
        let size = events.first().map_or(0, |e| e.size as usize);
        let body = first
            .get(HEADER_LEN + 57..size.saturating_sub(5))
            .ok_or_else(|| Error::corrupt("a format description event is too short"))?;
        Ok(Self {
            post_header: body.to_vec(),
        })
    }

    fn post_header_len(&self, kind: u8) -> Option<usize> {
        self.post_header
            .get(usize::from(kind).checked_sub(1)?)
            .map(|&n| usize::from(n))
    }

    /// The database a query or table map event names (`None` for other events and
    /// for a query without a current database).
    fn database_of(&self, raw: &[u8]) -> Option<String> {
        let kind = *raw.get(4)?;
        let body = raw.get(HEADER_LEN..)?;
        match kind {
            QUERY_EVENT => {
                // thread id 4, exec time 4, db length 1, error code 2, status length 2.
                let post = self.post_header_len(kind)?;
                let db_len = usize::from(*body.get(8)?);
                let status_len = usize::from(u16::from_le_bytes([*body.get(11)?, *body.get(12)?]));
                let start = post + status_len;
                let db = body.get(start..start + db_len)?;
                (!db.is_empty()).then(|| String::from_utf8_lossy(db).into_owned())
            }
            TABLE_MAP_EVENT => {
                let post = self.post_header_len(kind)?;
                let db_len = usize::from(*body.get(post)?);
                let db = body.get(post + 1..post + 1 + db_len)?;
                Some(String::from_utf8_lossy(db).into_owned())
            }
            _ => None,
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time, in UTC (`mariadb-binlog`'s form; it reads
/// it in its local zone, which the replay sets to UTC).
fn timestamp_text(secs: i64) -> String {
    Utc.timestamp_opt(secs, 0).single().map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn write_at(f: &mut std::fs::File, offset: u64, bytes: &[u8], path: &Path) -> Result<()> {
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(bytes))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A directory only this user can enter, removed on drop.
fn private_dir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix("dbops-binlog-")
        .tempdir()
        .map_err(|e| Error::io("creating a private temporary directory", e))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("restricting the temporary directory", e))?;
    Ok(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// An option-file value in double quotes, with the escapes the client reads.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `[client]` group that connects the `mariadb` client where `config` connects.
///
/// The socket and TLS files come from the URL (`socket=`, `ssl-ca=`, `ssl-cert=`,
/// `ssl-key=`); a socket that only an option file gave is not known here, so such a
/// `localhost` target is reached over TCP. TLS: `disable` and `prefer` connect without
/// it (the client cannot fall back), `require` with it, `verify-ca` and `verify-full`
/// check the certificate against the same CA file and the host name (the client checks
/// both or neither, so verify-ca is stricter here than in dbops' own connections).
fn client_options(config: &ConnConfig) -> Result<String> {
    let url = url::Url::parse(&config.redacted_url())
        .map_err(|e| Error::internal(format!("the engine's URL does not parse again: {e}")))?;
    let param = |names: &[&str]| {
        url.query_pairs()
            .find(|(k, _)| names.contains(&k.as_ref()))
            .map(|(_, v)| v.into_owned())
    };
    let mut out = String::from("[client]\n");
    out.push_str(&format!("user = {}\n", quoted(&config.user)));
    out.push_str(&format!(
        "password = {}\n",
        quoted(config.password.expose())
    ));
    out.push_str(&format!("host = {}\n", quoted(&config.host)));
    out.push_str(&format!("port = {}\n", config.port));
    match param(&["socket"]) {
        Some(socket) => {
            out.push_str(&format!("socket = {}\n", quoted(&socket)));
            out.push_str("protocol = SOCKET\n");
        }
        None => out.push_str("protocol = TCP\n"),
    }
    let (mode, ca, client_cert) = config.tls_files();
    match mode {
        TlsMode::Disable | TlsMode::Prefer => out.push_str("skip-ssl\n"),
        TlsMode::Require => out.push_str("ssl\n"),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            out.push_str("ssl\nssl-verify-server-cert\n");
            if let Some(ca) = ca {
                out.push_str(&format!("ssl-ca = {}\n", quoted(&ca.display().to_string())));
            }
        }
    }
    if let Some((cert, key)) = client_cert.filter(|_| mode != TlsMode::Disable) {
        out.push_str(&format!(
            "ssl-cert = {}\n",
            quoted(&cert.display().to_string())
        ));
        out.push_str(&format!(
            "ssl-key = {}\n",
            quoted(&key.display().to_string())
        ));
    }
    out.push_str("default-character-set = utf8mb4\n");
    Ok(out)
}

/// Finds a MariaDB client program where the server's are looked for.
fn find_tool(names: &[&str]) -> Result<PathBuf> {
    crate::ephemeral::find_program(names, CLIENT_PACKAGE_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_names_sort_in_log_order_and_parse_back() {
        let names = [
            piece_name("binlog.000001", 4),
            piece_name("binlog.000001", 1_000),
            piece_name("binlog.000001", 99_999_999),
            piece_name("binlog.000002", 4),
        ];
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        assert_eq!(names[1], "binlog.000001.000000001000");
        assert_eq!(
            parse_piece_name(&names[2]),
            Some(BinlogPosition::new("binlog.000001", 99_999_999))
        );
        assert!(start_piece("binlog.000001") < names[0]);
        assert!(start_piece("binlog.000002") > names[2]);
        for bad in [
            "binlog.000001",
            "binlog.000001.12",
            "x.00000000000a",
            ".000000000004",
        ] {
            assert_eq!(parse_piece_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn series_names_are_plain() {
        assert_eq!(
            series_name(1, "db-1.example", 3306),
            "mariadb-1-db-1.example-3306"
        );
        assert_eq!(series_name(7, "ä b/c", 3307), "mariadb-7---b-c-3307");
        assert_eq!(series_name(7, "", 1), "mariadb-7-unknown-1");
    }

    #[test]
    fn snapshot_keys_name_the_start_of_the_backup_file() {
        let mut snapshot = BTreeMap::new();
        assert!(!record_archive_keys(&mut snapshot, "s"));
        snapshot.insert("binlog_file".to_owned(), "binlog.000003".to_owned());
        snapshot.insert("binlog_position".to_owned(), "1234".to_owned());
        assert!(record_archive_keys(&mut snapshot, "mariadb-1-h-3306"));
        assert_eq!(snapshot[LOG_KIND_KEY], "binlog");
        assert_eq!(snapshot[LOG_SERIES_KEY], "mariadb-1-h-3306");
        assert_eq!(snapshot[LOG_START_KEY], "binlog.000003.000000000000");
        assert_eq!(
            BinlogPosition::from_snapshot(&snapshot).expect("recorded"),
            BinlogPosition::new("binlog.000003", 1234)
        );
    }

    #[test]
    fn derived_server_ids_differ_and_stay() {
        let a = derived_server_id("host-a", "/repo", "s");
        assert_eq!(a, derived_server_id("host-a", "/repo", "s"));
        assert_ne!(a, derived_server_id("host-b", "/repo", "s"));
        assert!(a >= 0x8000_0000);
    }

    #[test]
    fn option_files_quote_what_the_client_unquotes() {
        assert_eq!(quoted(r#"a"b\c#d"#), r#""a\"b\\c#d""#);
        let config = ConnConfig::parse_with(
            "mariadb://app:p%22w%23@db.example:3307/shop?ssl-mode=verify-full",
            &|_| None,
            None,
        )
        .expect("valid");
        let text = client_options(&config).expect("options");
        assert!(text.contains("password = \"p\\\"w#\"\n"), "{text}");
        assert!(text.contains("port = 3307\n"), "{text}");
        assert!(text.contains("ssl-verify-server-cert"), "{text}");
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["ca.pem", "c.pem", "c.key"] {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        let d = dir.path().display();
        let config = ConnConfig::parse_with(
            &format!(
                "mariadb://app:pw@db:3307/shop?ssl-mode=VERIFY_IDENTITY&ssl-ca={d}/ca.pem\
                 &ssl-cert={d}/c.pem&ssl-key={d}/c.key"
            ),
            &|_| None,
            None,
        )
        .expect("valid");
        let text = client_options(&config).expect("options");
        for line in [
            "ssl-verify-server-cert\n".to_owned(),
            format!("ssl-ca = \"{d}/ca.pem\"\n"),
            format!("ssl-cert = \"{d}/c.pem\"\n"),
            format!("ssl-key = \"{d}/c.key\"\n"),
        ] {
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn events_are_walked_whole() {
        let mut event = vec![0u8; 25];
        event[4] = STOP_EVENT;
        event[9] = 25;
        let two = [event.clone(), event.clone()].concat();
        let found = events_of(&two, 4, "test").expect("whole");
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].offset, 29);
        assert!(events_of(&two[..30], 4, "test").is_err());
    }

    #[test]
    fn rotates_name_their_file() {
        let mut body = 4u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"binlog.000009");
        assert_eq!(
            parse_rotate(&body).expect("rotate"),
            BinlogPosition::new("binlog.000009", 4)
        );
        body.extend_from_slice(b"/../x");
        assert!(parse_rotate(&body).is_err());
    }
}
