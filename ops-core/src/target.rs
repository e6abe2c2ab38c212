//! `BackupTarget`: one place where objects are kept (a directory, memory, a bucket).
//!
//! A target knows keys and bytes, never what the bytes mean: the repository
//! (`crate::repo`) gives them meaning. Keys are `/`-separated relative paths such as
//! `packs/3f/3f9a…`. Implementations convert their own errors into [`crate::Error`] with
//! the object key as context and a [`crate::ErrorStatus::Temporary`] status where a retry
//! can help; the repository retries only idempotent calls.

use std::fmt::Debug;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;

use crate::Result;

/// A stream of bytes, the unit in which data moves through dbops.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'static>>;

/// A stream of listed objects.
pub type ObjectStream = Pin<Box<dyn Stream<Item = Result<ObjectMeta>> + Send + 'static>>;

/// What a target knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key, relative to the target's root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time as the store reports it.
    pub modified: DateTime<Utc>,
}

/// The outcome of [`BackupTarget::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created.
    Created,
    /// An object with that key already existed; nothing was written.
    AlreadyExists,
}

/// One storage location. Objects are written whole and never modified in place.
///
/// Object-safe; users hold `Arc<dyn BackupTarget>`. Wrappers (retries, fault
/// injection, rate limits) implement every method and forward it.
#[async_trait]
pub trait BackupTarget: Send + Sync + Debug + 'static {
    /// Where this target is, for messages: a URL with any secret redacted.
    fn location(&self) -> String;

    /// True when the objects leave this machine (S3, GCS, Azure). Unencrypted
    /// repositories on remote targets need an explicit opt-in.
    fn is_remote(&self) -> bool;

    /// Writes `data` under `key`, replacing nothing that a reader could observe half
    /// written: after success the whole object is visible, after failure none of it.
    ///
    /// # Errors
    /// Storage errors, with `object` context; temporary when a retry may help.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;

    /// Writes a stream of unknown length under `key` (multipart where the store has
    /// it), never holding the whole object in memory. Returns the bytes written.
    /// Atomic like [`BackupTarget::put`].
    ///
    /// # Errors
    /// Storage errors, or the first error the stream yields (then nothing is written).
    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64>;

    /// Creates `key` only if it does not exist, atomically (used for locks).
    ///
    /// # Errors
    /// Storage errors.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome>;

    /// Reads a whole object as a stream.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] when there is no such object; storage errors.
    async fn get(&self, key: &str) -> Result<ByteStream>;

    /// Reads `range` (byte offsets, end exclusive) of an object.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`]; [`crate::ErrorKind::InvalidInput`] when the range
    /// lies outside the object; storage errors.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Metadata of one object, or `None` when it does not exist.
    ///
    /// # Errors
    /// Storage errors.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix` (a folder such as `"packs/"`), in no
    /// particular order.
    ///
    /// # Errors
    /// Storage errors, up front or as items of the stream.
    async fn list(&self, prefix: &str) -> Result<ObjectStream>;

    /// Deletes `key`. Deleting an object that does not exist succeeds.
    ///
    /// # Errors
    /// Storage errors.
    async fn delete(&self, key: &str) -> Result<()>;
}
