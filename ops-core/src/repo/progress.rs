//! Live counters of a running operation, for a progress display.
//!
//! The library only counts; whoever embeds it decides how (and whether) to show the
//! counts. Every long operation updates the [`Progress`] given to it
//! ([`super::BackupOptions::with_progress`], [`super::Repository::with_progress`]):
//! bytes done of a total where one is known, streams done of a total, and a status
//! line that says what it is doing or waiting for.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of one running operation. All fields only grow, except the totals and the
/// status, which the operation sets when it learns them.
#[derive(Debug, Default)]
pub struct Progress {
    /// Plain bytes done: received from the engine (backup), handed to the engine
    /// (restore), read and checked (verify), copied (copy).
    pub bytes: AtomicU64,
    /// Plain bytes of chunks that were new (backup, copy).
    pub new_bytes: AtomicU64,
    /// Bytes of packs stored.
    pub stored_bytes: AtomicU64,
    /// Streams finished.
    pub streams_done: AtomicU64,
    /// Plain bytes expected in all; 0 while unknown.
    pub total_bytes: AtomicU64,
    /// True when `total_bytes` is an estimate (a backup's, from the catalog).
    pub total_is_estimate: AtomicBool,
    /// Streams expected in all; 0 while unknown.
    pub total_streams: AtomicU64,
    status: Mutex<String>,
}

impl Progress {
    /// Sets what the operation is doing or waiting for (empty: nothing to say).
    pub fn set_status(&self, status: impl Into<String>) {
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status.into();
    }

    /// What the operation is doing or waiting for.
    pub fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the totals (0: unknown).
    pub fn set_totals(&self, bytes: u64, streams: u64, estimate: bool) {
        self.total_bytes.store(bytes, Ordering::Relaxed);
        self.total_streams.store(streams, Ordering::Relaxed);
        self.total_is_estimate.store(estimate, Ordering::Relaxed);
    }

    /// Adds to the totals (verify of several backups learns them one by one).
    pub fn add_totals(&self, bytes: u64, streams: u64) {
        self.total_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.total_streams.fetch_add(streams, Ordering::Relaxed);
    }
}
