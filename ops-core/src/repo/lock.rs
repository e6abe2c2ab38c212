//! Repository locks: small objects under `locks/`, created with create-if-absent.
//!
//! Backups take shared locks; prune takes an exclusive one. A process first creates
//! its own lock, then lists the others: a conflicting fresh lock makes it remove its
//! own and fail with [`ErrorKind::Locked`]. Two processes racing both see each other
//! and both back off, so a prune can never run while a backup that might reference a
//! chunk is running. Holders refresh their lock every [`REFRESH`]; a lock not refreshed
//! for [`STALE_AFTER`] belongs to a dead process and is ignored (and removed by prune).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::target::BackupTarget;
use crate::{Error, ErrorKind, PutOutcome, Result};

use super::format::LOCKS_DIR;

/// How often a held lock is refreshed.
pub const REFRESH: Duration = Duration::from_secs(60);
/// After how long without refresh a lock counts as stale.
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
    /// When it was taken.
    pub created: DateTime<Utc>,
    /// Last refresh.
    pub refreshed: DateTime<Utc>,
}

impl LockInfo {
    /// True when not refreshed for [`STALE_AFTER`] at `now`.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(self.refreshed)
            .to_std()
            .unwrap_or_default()
            > STALE_AFTER
    }
}

/// A held lock; refreshed in the background until released.
#[derive(Debug)]
pub struct LockGuard {
    target: Arc<dyn BackupTarget>,
    key: String,
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
        let guard = Self {
            target: Arc::clone(&target),
            key: key.clone(),
            refresher: None,
        };
        let others = match list_locks(target.as_ref()).await {
            Ok(o) => o,
            Err(e) => {
                let _ = guard.release().await;
                return Err(e);
            }
        };
        for (other_key, other) in others {
            if other_key == key || other.is_stale(Utc::now()) {
                continue;
            }
            if kind == LockKind::Exclusive || other.kind == LockKind::Exclusive {
                let _ = guard.release().await;
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!(
                        "the repository at {} is locked by a {} on {} (pid {}) since {}; try again when it ends. A lock not refreshed for {} minutes is stale and ignored; `dbops unlock` removes stale locks",
                        target.location(),
                        other.purpose,
                        other.host,
                        other.pid,
                        other.created.format("%Y-%m-%d %H:%M:%S UTC"),
                        STALE_AFTER.as_secs() / 60
                    ),
                ));
            }
        }
        let mut guard = guard;
        let refresh_target = Arc::clone(&target);
        let refresh_key = key;
        guard.refresher = Some(tokio::spawn(async move {
            let mut info = info;
            loop {
                tokio::time::sleep(REFRESH).await;
                info.refreshed = Utc::now();
                if let Ok(body) = serde_json::to_vec(&info)
                    && let Err(e) = refresh_target.put(&refresh_key, Bytes::from(body)).await
                {
                    tracing::warn!("could not refresh lock {refresh_key}: {e}");
                }
            }
        }));
        Ok(guard)
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
pub async fn list_locks(target: &dyn BackupTarget) -> Result<Vec<(String, LockInfo)>> {
    let keys: Vec<String> = target
        .list(LOCKS_DIR)
        .await?
        .map_ok(|m| m.key)
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for key in keys {
        match super::read_object(target, &key).await {
            Ok(bytes) => match serde_json::from_slice::<LockInfo>(&bytes) {
                Ok(info) => out.push((key, info)),
                Err(e) => tracing::warn!("ignoring malformed lock {key}: {e}"),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
