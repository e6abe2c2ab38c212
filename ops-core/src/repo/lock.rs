//! Repository locks: small objects under `locks/`, created with create-if-absent.
//!
//! Backups (and forget, copy) take shared locks; prune takes an exclusive one. A
//! process first creates its own lock, then lists the others: a conflicting fresh lock
//! makes it remove its own and fail with [`ErrorKind::Locked`]. Two processes racing
//! both see each other and both back off.
//!
//! Staleness is judged by the store's clock, never by comparing two hosts' clocks: a
//! lock is stale when its object was last written more than [`STALE_AFTER`] before the
//! object the judging process just wrote. Holders re-write their lock every
//! [`REFRESH`]; a holder whose refreshes have failed for half of [`STALE_AFTER`] stops
//! before recording anything ([`LockGuard::ensure_held`]). Prune deletes stale locks
//! before it reads the manifests, and a backup checks that its lock still exists after
//! writing its manifest (deleting the manifest if not), so a prune can never delete a
//! chunk that a backup it judged dead went on to reference.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::target::BackupTarget;
use crate::{Error, ErrorKind, PutOutcome, Result};

use super::format::LOCKS_DIR;

/// How often a held lock is refreshed.
pub const REFRESH: Duration = Duration::from_secs(60);
/// After how long without refresh (by the store's clock) a lock counts as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// Many may hold it (backups, copies into the repository).
    Shared,
    /// Nobody else may hold any lock (prune).
    Exclusive,
}

/// What a lock object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Shared or exclusive.
    pub kind: LockKind,
    /// What the holder does (`backup`, `prune`).
    pub purpose: String,
    /// Holder's host.
    pub host: String,
    /// Holder's process id.
    pub pid: u32,
    /// When it was taken (holder's clock, for people).
    pub created: DateTime<Utc>,
    /// Last refresh (holder's clock, for people).
    pub refreshed: DateTime<Utc>,
    /// The holder's process start time (Linux clock ticks since boot), so that a lock
    /// of a dead process on this host is recognised even when its pid was reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

/// One lock as listed: its key, content, and when the store last saw it written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEntry {
    /// Object key.
    pub key: String,
    /// Content.
    pub info: LockInfo,
    /// The store's modification time of the object.
    pub modified: DateTime<Utc>,
}

impl LockEntry {
    /// True when the lock holds nobody: see [`LockEntry::stale_reason`].
    pub fn is_stale(&self, store_now: DateTime<Utc>) -> bool {
        self.stale_reason(store_now).is_some()
    }

    /// Why the lock is stale, or `None` while its holder may be alive: it was taken on
    /// this host by a process that is no longer running (pid and start time, as
    /// restic does), or it was not re-written for [`STALE_AFTER`] before `store_now` (a
    /// time read from the same store, so that no two clocks are compared).
    pub fn stale_reason(&self, store_now: DateTime<Utc>) -> Option<String> {
        if self.info.host == super::host_name()
            && !process_alive(self.info.pid, self.info.pid_start)
        {
            return Some(format!(
                "its process (pid {}) on this host is no longer running",
                self.info.pid
            ));
        }
        let silent = store_now
            .signed_duration_since(self.modified)
            .to_std()
            .unwrap_or_default();
        (silent > STALE_AFTER).then(|| {
            format!(
                "it was not refreshed for {} minutes (its holder stopped)",
                silent.as_secs() / 60
            )
        })
    }
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`, field 22).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `pid` runs and, where known, started at `start`. Where `/proc` cannot
/// tell (another OS), assumes alive: only the store-clock rule applies then.
pub fn process_alive(pid: u32, start: Option<u64>) -> bool {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return true;
    }
    match (process_start(pid), start) {
        (None, _) => false,
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
    }
}

/// A held lock; refreshed in the background until released.
#[derive(Debug)]
pub struct LockGuard {
    target: Arc<dyn BackupTarget>,
    key: String,
    store_now: DateTime<Utc>,
    last_refresh: Arc<Mutex<Instant>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl LockGuard {
    /// Takes a lock of `kind` on the repository at `target`.
    ///
    /// # Errors
    /// [`ErrorKind::Locked`] naming the holder of a conflicting lock; storage errors.
    pub async fn acquire(
        target: Arc<dyn BackupTarget>,
        kind: LockKind,
        purpose: &str,
    ) -> Result<Self> {
        let now = Utc::now();
        let info = LockInfo {
            kind,
            purpose: purpose.to_owned(),
            host: super::host_name(),
            pid: std::process::id(),
            created: now,
            refreshed: now,
            pid_start: process_start(std::process::id()),
        };
        let key = format!(
            "{LOCKS_DIR}{}-{}",
            now.format("%Y%m%dT%H%M%S"),
            super::random_hex(8)
        );
        let body =
            Bytes::from(serde_json::to_vec(&info).map_err(|e| Error::internal(e.to_string()))?);
        // The key is random: AlreadyExists can only mean a retried call whose first
        // reply was lost, i.e. the lock is ours.
        let _: PutOutcome = target.put_if_absent(&key, body).await?;
        let mut guard = Self {
            target: Arc::clone(&target),
            key: key.clone(),
            store_now: now,
            last_refresh: Arc::new(Mutex::new(Instant::now())),
            refresher: None,
        };
        let others = async {
            if let Some(meta) = target.head(&key).await? {
                guard.store_now = meta.modified;
            }
            list_locks(target.as_ref()).await
        }
        .await;
        let others = match others {
            Ok(o) => o,
            Err(e) => {
                let _ = guard.release().await;
                return Err(e);
            }
        };
        for other in others {
            if other.key == key || other.is_stale(guard.store_now) {
                continue;
            }
            if kind == LockKind::Exclusive || other.info.kind == LockKind::Exclusive {
                let location = target.location();
                let _ = guard.release().await;
                // Temporary: the holder ends, so a caller that retries (or waits, see
                // Repository::with_lock_wait) gets through.
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!(
                        "the repository at {location} is locked by a {} on {} (pid {}) since {}; try again when it ends, or wait for it. A lock not refreshed for {} minutes, or whose process on its host is gone, is stale and ignored (Repository::unlock removes stale locks)",
                        other.info.purpose,
                        other.info.host,
                        other.info.pid,
                        other.info.created.format("%Y-%m-%d %H:%M:%S UTC"),
                        STALE_AFTER.as_secs() / 60
                    ),
                )
                .temporary()
                .with_context("holder", &other.info.purpose)
                .with_context("holder_host", &other.info.host)
                .with_context("holder_pid", other.info.pid)
                .with_context("since", other.info.created.to_rfc3339()));
            }
        }
        let refresh_target = Arc::clone(&target);
        let last_refresh = Arc::clone(&guard.last_refresh);
        guard.refresher = Some(tokio::spawn(async move {
            let mut info = info;
            loop {
                tokio::time::sleep(REFRESH).await;
                info.refreshed = Utc::now();
                let Ok(body) = serde_json::to_vec(&info) else {
                    continue;
                };
                match refresh_target.put(&key, Bytes::from(body)).await {
                    Ok(()) => {
                        *last_refresh.lock().unwrap_or_else(PoisonError::into_inner) =
                            Instant::now();
                    }
                    Err(e) => tracing::warn!("could not refresh lock {key}: {e}"),
                }
            }
        }));
        Ok(guard)
    }

    /// The store's time when the lock was taken.
    pub fn store_now(&self) -> DateTime<Utc> {
        self.store_now
    }

    /// Fails when the lock may have been judged stale: its refreshes have failed for
    /// half of [`STALE_AFTER`], or its object is gone (removed by `dbops unlock` or by
    /// a prune that judged it stale). Called before recording anything.
    ///
    /// # Errors
    /// [`ErrorKind::Locked`] saying why; storage errors.
    pub async fn ensure_held(&self) -> Result<()> {
        let since = self
            .last_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        if since > STALE_AFTER / 2 {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "the repository lock could not be refreshed for {} minutes, so a prune may have judged it stale; stopping without recording anything",
                    since.as_secs() / 60
                ),
            ));
        }
        if self.target.head(&self.key).await?.is_none() {
            return Err(Error::new(
                ErrorKind::Locked,
                "this process's repository lock was removed (by an unlock, or a prune that judged it stale); stopping without recording anything",
            ));
        }
        Ok(())
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// Storage errors deleting the lock object (it then goes stale).
    pub async fn release(mut self) -> Result<()> {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        let key = std::mem::take(&mut self.key);
        self.target.delete(&key).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if !self.key.is_empty() {
            let target = Arc::clone(&self.target);
            let key = std::mem::take(&mut self.key);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = target.delete(&key).await;
                });
            }
        }
    }
}

/// Every lock in the repository.
///
/// # Errors
/// Storage errors; a lock that vanished meanwhile is skipped.
pub async fn list_locks(target: &dyn BackupTarget) -> Result<Vec<LockEntry>> {
    let metas: Vec<crate::ObjectMeta> = target.list(LOCKS_DIR).await?.try_collect().await?;
    let mut out = Vec::new();
    for meta in metas {
        match super::read_object(target, &meta.key).await {
            Ok(bytes) => match serde_json::from_slice::<LockInfo>(&bytes) {
                Ok(info) => out.push(LockEntry {
                    key: meta.key,
                    info,
                    modified: meta.modified,
                }),
                Err(e) => tracing::warn!("ignoring malformed lock {}: {e}", meta.key),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One lock as [`super::Repository::unlock`] judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockDecision {
    /// Object key.
    pub key: String,
    /// What the lock says.
    pub info: LockInfo,
    /// True when removed.
    pub removed: bool,
    /// Why it was removed or kept.
    pub reason: String,
}

impl super::Repository {
    /// Removes stale locks (every lock with `all`), each with the reason; live locks
    /// are kept and reported with why. A lock is stale when its process on this host
    /// is gone (pid and start time), or when it was not refreshed for
    /// [`STALE_AFTER`] by the store's clock.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn unlock(&self, all: bool) -> Result<Vec<UnlockDecision>> {
        let target = self.target();
        // The store's clock, read from an object written now.
        let store_now =
            match LockGuard::acquire(Arc::clone(target), LockKind::Shared, "unlock").await {
                Ok(g) => {
                    let now = g.store_now();
                    g.release().await?;
                    now
                }
                Err(_) => Utc::now(),
            };
        let mut out = Vec::new();
        for entry in list_locks(target.as_ref()).await? {
            let (removed, reason) = match (entry.stale_reason(store_now), all) {
                (Some(why), _) => (true, format!("stale: {why}")),
                (None, true) => (
                    true,
                    "removed on request (all); its holder may still be running".to_owned(),
                ),
                (None, false) => (
                    false,
                    format!(
                        "held: refreshed {} s ago by {} on {} (pid {})",
                        store_now
                            .signed_duration_since(entry.modified)
                            .num_seconds()
                            .max(0),
                        entry.info.purpose,
                        entry.info.host,
                        entry.info.pid
                    ),
                ),
            };
            if removed {
                target.delete(&entry.key).await?;
            }
            out.push(UnlockDecision {
                key: entry.key,
                info: entry.info,
                removed,
                reason,
            });
        }
        Ok(out)
    }
}
