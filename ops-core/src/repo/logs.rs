//! Log archives: PostgreSQL WAL segments and MariaDB binary logs, kept in the
//! repository beside the backups that need them.
//!
//! A log file is archived whole, as one object `logs/<kind>/<series>/<name>`: zstd,
//! then sealed with the repository key bound to the object's key (so an object
//! copied under another name fails authentication). Log files are written once and
//! never changed by the server, so they do not go through the chunker: they would
//! not de-duplicate, and one object per file is what a per-file `archive_command`
//! wants (one request, nothing to merge). Archiving never overwrites or deletes:
//! a second push of the same name succeeds when the content is the same and fails
//! loudly when it is not, which is what PostgreSQL asks of an `archive_command`.
//!
//! The series names one source of logs (a PostgreSQL system identifier, a MariaDB
//! server); names within a series sort in log order (PostgreSQL's segment names and
//! zero-padded binlog positions both do), which is what retention relies on.

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use crate::target::PutOutcome;
use crate::{Error, ErrorKind, Result};

use super::{Manifest, Repository, read_object};

/// Where log archives live in a repository.
pub const LOGS_PREFIX: &str = "logs/";

/// Manifest snapshot keys through which a backup says which logs it needs: the kind,
/// the series and the first name (every later name of the series is needed too, for
/// a restore to a later point).
pub const LOG_KIND_KEY: &str = "log_kind";
/// See [`LOG_KIND_KEY`].
pub const LOG_SERIES_KEY: &str = "log_series";
/// See [`LOG_KIND_KEY`].
pub const LOG_START_KEY: &str = "log_start";
/// The last log file a backup needs to be consistent (a base backup's stop
/// segment): the backup is recorded only once the archive holds it.
pub const LOG_STOP_KEY: &str = "log_stop";
/// Every log file a backup needs to be consistent, space-separated (a base backup's
/// segments from start to stop): the backup is recorded only once the archive holds
/// all of them. Without it, [`LOG_STOP_KEY`] alone is waited for.
pub const LOG_FILES_KEY: &str = "log_files";

/// What kind of log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogKind {
    /// PostgreSQL write-ahead log segments, timeline history and backup history files.
    Wal,
    /// MariaDB binary log pieces.
    Binlog,
}

impl LogKind {
    /// The folder name (`wal`, `binlog`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wal => "wal",
            Self::Binlog => "binlog",
        }
    }

    /// Parses [`LogKind::as_str`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for another word.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "wal" => Ok(Self::Wal),
            "binlog" => Ok(Self::Binlog),
            other => Err(Error::invalid(format!(
                "unknown log kind '{other}': expected wal or binlog"
            ))),
        }
    }

    /// Names kept whatever the retention: a timeline history file is tiny and a
    /// restore on any later timeline needs the whole chain of them.
    fn always_kept(self, name: &str) -> bool {
        self == Self::Wal && name.ends_with(".history")
    }
}

impl std::fmt::Display for LogKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One archived log file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogObject {
    /// Its kind.
    pub kind: LogKind,
    /// Its series (a system identifier, a server).
    pub series: String,
    /// Its name within the series.
    pub name: String,
    /// Bytes in the store (compressed and sealed).
    pub stored_bytes: u64,
    /// When the store received it.
    pub archived: DateTime<Utc>,
}

/// What [`Repository::push_log`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogPush {
    /// Stored now.
    Stored {
        /// Plain bytes.
        bytes: u64,
        /// Bytes added to the store.
        stored: u64,
    },
    /// The archive already held this name with the same content: nothing written.
    AlreadyArchived,
}

/// What [`Repository::expire_logs`] decided for one series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogExpiry {
    /// Kind.
    pub kind: LogKind,
    /// Series.
    pub series: String,
    /// The oldest name a kept backup needs (`None`: no kept backup names this
    /// series, so nothing of it is removed).
    pub keep_from: Option<String>,
    /// Files removed (or that would be, in a dry run).
    pub removed: u64,
    /// Their stored bytes.
    pub removed_bytes: u64,
    /// Files kept.
    pub kept: u64,
}

/// Checks a series or file name: plain characters only, so that a name can never
/// reach outside its folder, and a crafted name from a server is refused.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "'{name}' is not a valid log {what}: letters, digits, '.', '_' and '-' only"
        )))
    }
}

fn series_prefix(kind: LogKind, series: &str) -> String {
    format!("{LOGS_PREFIX}{kind}/{series}/")
}

fn object_key(kind: LogKind, series: &str, name: &str) -> String {
    format!("{}{name}", series_prefix(kind, series))
}

fn aad(key: &str) -> Vec<u8> {
    format!("dbops log v1 {key}").into_bytes()
}

impl Repository {
    /// Archives one log file. Never overwrites: a name already archived with the
    /// same content is [`LogPush::AlreadyArchived`]; with other content it is an
    /// error and the archived file stays as it was.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad series or name;
    /// [`ErrorKind::AlreadyExists`] when the name holds other content;
    /// storage errors.
    pub async fn push_log(
        &self,
        kind: LogKind,
        series: &str,
        name: &str,
        data: &[u8],
    ) -> Result<LogPush> {
        check_name("series", series)?;
        check_name("file name", name)?;
        let key = object_key(kind, series, name);
        let sealed = {
            let level = self.config.compression.level;
            let keys = self.keys.clone();
            let plain = data.to_vec();
            let aad = aad(&key);
            tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                let packed = zstd::bulk::compress(&plain, level)
                    .map_err(|e| Error::internal(format!("compression failed: {e}")))?;
                keys.seal(&aad, &packed)
            })
            .await
            .map_err(|e| Error::internal(format!("log sealing task failed: {e}")))??
        };
        let stored = sealed.len() as u64;
        match self.target.put_if_absent(&key, sealed.into()).await {
            Ok(PutOutcome::Created) => Ok(LogPush::Stored {
                bytes: data.len() as u64,
                stored,
            }),
            Ok(PutOutcome::AlreadyExists) => {
                let archived = self.fetch_log(kind, series, name).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Storage,
                        format!("{key} was reported present, then could not be read"),
                    )
                })?;
                if archived == data {
                    Ok(LogPush::AlreadyArchived)
                } else {
                    Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!(
                            "{kind} file {name} is already archived with different content \
                             ({} archived bytes, {} offered): the archive was not changed; \
                             two servers may be archiving into one series, or the server \
                             was restored without a new timeline",
                            archived.len(),
                            data.len()
                        ),
                    )
                    .with_context("log", &key))
                }
            }
            Err(e) => Err(e.during(format!("archiving {kind} file {name}"))),
        }
    }

    /// Reads one archived log file back; `None` when the archive does not hold it.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad name; [`ErrorKind::Corrupt`] when the
    /// object fails authentication or decompression; storage errors.
    pub async fn fetch_log(
        &self,
        kind: LogKind,
        series: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>> {
        check_name("series", series)?;
        check_name("file name", name)?;
        let key = object_key(kind, series, name);
        let sealed = match read_object(self.target.as_ref(), &key).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.during(format!("reading {kind} file {name}"))),
        };
        let keys = self.keys.clone();
        let aad = aad(&key);
        let plain = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let packed = keys.open(&aad, &sealed)?;
            zstd::stream::decode_all(packed.as_slice())
                .map_err(|e| Error::corrupt(format!("does not decompress: {e}")))
        })
        .await
        .map_err(|e| Error::internal(format!("log reading task failed: {e}")))?
        .map_err(|e| {
            Error::new(
                e.kind(),
                format!("archived {kind} file {name} is damaged: {e}"),
            )
            .with_context("log", &key)
        })?;
        Ok(Some(plain))
    }

    /// Every archived file of a kind, of one series or of all, sorted by series
    /// then name (log order).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn list_logs(&self, kind: LogKind, series: Option<&str>) -> Result<Vec<LogObject>> {
        let prefix = match series {
            Some(s) => {
                check_name("series", s)?;
                series_prefix(kind, s)
            }
            None => format!("{LOGS_PREFIX}{kind}/"),
        };
        let base = format!("{LOGS_PREFIX}{kind}/");
        let mut out: Vec<LogObject> =
            self.target
                .list(&prefix)
                .await?
                .try_filter_map(|meta| {
                    let rest = meta.key.strip_prefix(&base).unwrap_or_default();
                    let found = rest.split_once('/').and_then(|(series, name)| {
                        // Temporary uploads and anything not ours are not log files.
                        (check_name("series", series).is_ok() && check_name("name", name).is_ok())
                            .then(|| LogObject {
                                kind,
                                series: series.to_owned(),
                                name: name.to_owned(),
                                stored_bytes: meta.size,
                                archived: meta.modified,
                            })
                    });
                    futures::future::ready(Ok(found))
                })
                .try_collect()
                .await?;
        out.sort_by(|a, b| (&a.series, &a.name).cmp(&(&b.series, &b.name)));
        Ok(out)
    }

    /// Removes the log files no kept backup needs: for every series that a backup in
    /// `kept` names, the files before the oldest first name those backups need
    /// (timeline history files always stay). Series no kept backup names are left
    /// alone: they may belong to a server whose first base backup is still to come.
    /// With `dry_run` nothing is removed.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn expire_logs(&self, kept: &[Manifest], dry_run: bool) -> Result<Vec<LogExpiry>> {
        let needs = log_needs(kept);
        let mut out = Vec::new();
        for kind in [LogKind::Wal, LogKind::Binlog] {
            let objects = self.list_logs(kind, None).await?;
            let mut i = 0;
            while i < objects.len() {
                let series = objects[i].series.clone();
                let end = objects[i..]
                    .iter()
                    .position(|o| o.series != series)
                    .map_or(objects.len(), |n| i + n);
                let keep_from = needs.get(&(kind, series.clone())).cloned();
                let mut entry = LogExpiry {
                    kind,
                    series: series.clone(),
                    keep_from: keep_from.clone(),
                    removed: 0,
                    removed_bytes: 0,
                    kept: 0,
                };
                for object in &objects[i..end] {
                    let expired = keep_from
                        .as_deref()
                        .is_some_and(|from| object.name.as_str() < from)
                        && !kind.always_kept(&object.name);
                    if expired {
                        if !dry_run {
                            self.target
                                .delete(&object_key(kind, &series, &object.name))
                                .await?;
                        }
                        entry.removed += 1;
                        entry.removed_bytes += object.stored_bytes;
                    } else {
                        entry.kept += 1;
                    }
                }
                out.push(entry);
                i = end;
            }
        }
        Ok(out)
    }
}

impl Repository {
    /// Waits until the archive holds the last log file `manifest` needs
    /// ([`LOG_STOP_KEY`]), polling; a manifest that names none returns at once.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the file has not arrived within `wait`, naming it
    /// and where archiving must send it; storage errors.
    pub(super) async fn wait_for_logs(
        &self,
        manifest: &Manifest,
        wait: std::time::Duration,
    ) -> Result<()> {
        let (Some(kind), Some(series), Some(stop)) = (
            manifest.snapshot.get(LOG_KIND_KEY),
            manifest.snapshot.get(LOG_SERIES_KEY),
            manifest.snapshot.get(LOG_STOP_KEY),
        ) else {
            return Ok(());
        };
        let kind = LogKind::parse(kind)?;
        check_name("series", series)?;
        let needed: Vec<&str> = match manifest.snapshot.get(LOG_FILES_KEY) {
            Some(all) => all.split_whitespace().collect(),
            None => vec![stop.as_str()],
        };
        for name in &needed {
            check_name("file name", name)?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(100);
        self.status(format!("waiting for {kind} file {stop} to be archived"));
        loop {
            let missing: Vec<&str> = if let [one] = needed.as_slice() {
                let key = object_key(kind, series, one);
                if self.target.head(&key).await?.is_some() {
                    Vec::new()
                } else {
                    vec![*one]
                }
            } else {
                let archived: std::collections::BTreeSet<String> = self
                    .list_logs(kind, Some(series))
                    .await?
                    .into_iter()
                    .map(|o| o.name)
                    .collect();
                needed
                    .iter()
                    .copied()
                    .filter(|n| !archived.contains(*n))
                    .collect()
            };
            let Some(first_missing) = missing.first() else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the backup needs {kind} file {first_missing} ({} of the {} it needs are missing), which did not reach this repository's \
                         archive within {} s: check that the server archives into this repository \
                         (archive_mode on, its archive command pushing here) and that archiving is \
                         not failing; the backup was not recorded",
                        missing.len(),
                        needed.len(),
                        wait.as_secs()
                    ),
                )
                .with_context("log", object_key(kind, series, first_missing)));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
    }
}

impl Repository {
    /// Copies into this repository the log files `manifest` needs from `from`: every
    /// file of its series from its first needed name on (a restore may go to any later
    /// point), and the series' timeline history files. Files this repository holds
    /// already are left alone; each is re-sealed under this repository's key. Returns
    /// how many were copied; a manifest that names no logs copies nothing.
    ///
    /// # Errors
    /// Storage errors; [`ErrorKind::AlreadyExists`] when a name holds other content
    /// here.
    pub async fn copy_logs(&self, from: &Repository, manifest: &Manifest) -> Result<u64> {
        let (Some(kind), Some(series), Some(start)) = (
            manifest.snapshot.get(LOG_KIND_KEY),
            manifest.snapshot.get(LOG_SERIES_KEY),
            manifest.snapshot.get(LOG_START_KEY),
        ) else {
            return Ok(0);
        };
        let kind = LogKind::parse(kind)?;
        let here: std::collections::BTreeSet<String> = self
            .list_logs(kind, Some(series))
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect();
        let mut copied = 0;
        for o in from.list_logs(kind, Some(series)).await? {
            if here.contains(&o.name) || (o.name < *start && !kind.always_kept(&o.name)) {
                continue;
            }
            let Some(data) = from.fetch_log(kind, series, &o.name).await? else {
                // Removed by a forget since the listing: nothing to copy.
                continue;
            };
            self.push_log(kind, series, &o.name, &data).await?;
            copied += 1;
        }
        Ok(copied)
    }
}

/// For every (kind, series) that a manifest names, the oldest first name needed.
pub fn log_needs(manifests: &[Manifest]) -> std::collections::BTreeMap<(LogKind, String), String> {
    let mut needs = std::collections::BTreeMap::<(LogKind, String), String>::new();
    for m in manifests {
        let (Some(kind), Some(series), Some(start)) = (
            m.snapshot.get(LOG_KIND_KEY),
            m.snapshot.get(LOG_SERIES_KEY),
            m.snapshot.get(LOG_START_KEY),
        ) else {
            continue;
        };
        let Ok(kind) = LogKind::parse(kind) else {
            continue;
        };
        needs
            .entry((kind, series.clone()))
            .and_modify(|s| {
                if start < s {
                    s.clone_from(start);
                }
            })
            .or_insert_with(|| start.clone());
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_their_folder() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", "ä"] {
            assert!(check_name("file name", bad).is_err(), "{bad:?}");
        }
        for good in [
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000003.00000028.backup",
            "mariadb-bin.000012",
        ] {
            check_name("file name", good).expect("a valid name");
        }
    }

    #[test]
    fn history_files_are_always_kept() {
        assert!(LogKind::Wal.always_kept("00000002.history"));
        assert!(!LogKind::Wal.always_kept("000000020000000000000001"));
        assert!(!LogKind::Binlog.always_kept("x.history"));
    }
}
