//! `ObjectStoreTarget`: the one [`BackupTarget`] implementation, over any
//! `object_store` store plus a key prefix.
//!
//! What each store guarantees, and what this type relies on:
//! - `put`: one request (S3, GCS, Azure) or a staged file renamed into place
//!   (`LocalFileSystem`), or a map insert (`InMemory`): readers see the old or the
//!   new object, never a part.
//! - `put_if_absent`: `PutMode::Create` — a hard link on the local fs, a map check
//!   under a lock in memory, `If-None-Match: *` on S3 (conditional put, which
//!   object_store enables by default as `S3ConditionalPut::ETagMatch`).
//! - `put_stream`: a multipart upload, completed only after the stream ended cleanly,
//!   aborted otherwise — parts of an unfinished upload are invisible.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload,
};
use ops_core::{
    BackupTarget, ByteStream, Error, ErrorKind, ObjectMeta, ObjectStream, PutOutcome, Result,
};
use tokio::task::JoinSet;

use crate::error::from_store;
use crate::multipart::MultipartOptions;

/// A [`BackupTarget`] over an `object_store` store and a key prefix.
///
/// Usually built by [`crate::open_target`]; build it directly to use a store that
/// `open_target` does not know.
#[derive(Clone)]
pub struct ObjectStoreTarget {
    store: Arc<dyn ObjectStore>,
    /// The store `put_stream` uses, when it is not `store`: the same bucket with
    /// more HTTP retries, because nothing above retries a streamed upload.
    stream_store: Option<Arc<dyn ObjectStore>>,
    /// Prepended to every key; empty for the store's root.
    prefix: Path,
    /// Redacted, for messages.
    location: String,
    remote: bool,
    multipart: MultipartOptions,
}

impl fmt::Debug for ObjectStoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store's own Debug would print its configuration (for S3 that includes
        // the credential provider); the redacted location says enough.
        f.debug_struct("ObjectStoreTarget")
            .field("location", &self.location)
            .field("prefix", &self.prefix.as_ref())
            .field("remote", &self.remote)
            .field("separate_stream_store", &self.stream_store.is_some())
            .field("multipart", &self.multipart)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreTarget {
    /// Wraps `store`; every key is stored under `prefix` (`/`-separated, may be
    /// empty). `location` is what messages show: it is redacted with
    /// [`ops_core::redact_url`] here. `remote` is what
    /// [`BackupTarget::is_remote`] answers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when `prefix` is not a valid object path (empty
    /// segments, `.` or `..`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: &str,
        remote: bool,
    ) -> Result<Self> {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            Path::default()
        } else {
            Path::parse(trimmed).map_err(|e| {
                Error::invalid(format!("invalid key prefix {trimmed:?}: {e}"))
                    .with_context("target", ops_core::redact_url(location))
            })?
        };
        Ok(Self::from_parts(store, prefix, location, remote))
    }

    /// As [`ObjectStoreTarget::new`] with an already parsed prefix.
    pub fn from_parts(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        location: &str,
        remote: bool,
    ) -> Self {
        Self {
            store,
            stream_store: None,
            prefix,
            location: ops_core::redact_url(location),
            remote,
            multipart: MultipartOptions::default(),
        }
    }

    /// Sets how [`BackupTarget::put_stream`] cuts objects into parts.
    #[must_use]
    pub fn with_multipart(mut self, multipart: MultipartOptions) -> Self {
        self.multipart = multipart;
        self
    }

    /// Sets the store [`BackupTarget::put_stream`] writes through (its single put
    /// and its multipart uploads); by default the target's store. It must reach the
    /// same objects: [`crate::open_target`] passes the same bucket configured with
    /// more HTTP retries, because [`crate::RetryTarget`] cannot retry a stream, nor
    /// a part of a multipart upload.
    #[must_use]
    pub fn with_stream_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.stream_store = Some(store);
        self
    }

    /// The underlying store, for operations the trait does not have.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The store `put_stream` writes through (see
    /// [`ObjectStoreTarget::with_stream_store`]).
    pub fn stream_store(&self) -> &Arc<dyn ObjectStore> {
        self.stream_store.as_ref().unwrap_or(&self.store)
    }

    /// The store path of `key`.
    fn path(&self, key: &str) -> Result<Path> {
        let bad = key.is_empty() || key.starts_with('/') || key.ends_with('/');
        let full = if self.prefix.as_ref().is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix.as_ref())
        };
        match Path::parse(&full) {
            Ok(path) if !bad => Ok(path),
            Ok(_) => Err(self.invalid_key(key, "keys are relative and name a file")),
            Err(e) => Err(self.invalid_key(key, &e.to_string())),
        }
    }

    fn invalid_key(&self, key: &str, why: &str) -> Error {
        Error::invalid(format!("invalid object key: {why}"))
            .with_context("object", key)
            .with_context("target", &self.location)
    }

    /// The key of a store path under this target's prefix.
    fn key_of(&self, path: &Path) -> Option<String> {
        let parts = path.prefix_match(&self.prefix)?;
        let key = parts
            .map(|part| part.as_ref().to_owned())
            .collect::<Vec<_>>()
            .join("/");
        (!key.is_empty()).then_some(key)
    }

    fn meta(&self, meta: object_store::ObjectMeta) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            key: self.key_of(&meta.location)?,
            size: meta.size,
            modified: meta.last_modified,
        })
    }

    fn err(&self, err: object_store::Error, doing: &str, key: &str) -> Error {
        from_store(err, doing, key, &self.location)
    }

    /// Uploads `first` (already taken from `data`) and the rest of `data` as a
    /// multipart upload; see [`crate::multipart`] for the part-size rule.
    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        mut pending: PartBuffer,
        mut data: ByteStream,
    ) -> Result<u64> {
        let sizer = self.multipart.sizer();
        let upload = self
            .stream_store()
            .put_multipart_opts(path, PutMultipartOptions::default())
            .await
            .map_err(|e| self.err(e, "starting multipart upload", key))?;
        let mut guard = AbortOnDrop(Some(upload));
        let mut parts: JoinSet<object_store::Result<()>> = JoinSet::new();
        let mut index: u64 = 0;
        let mut total: u64 = 0;

        let result: Result<()> = async {
            let mut ended = false;
            loop {
                let size = sizer.part_size(index).ok_or_else(|| {
                    Error::invalid(format!(
                        "object too large for a multipart upload: more than {} bytes in {} parts",
                        sizer.capacity(),
                        self.multipart.max_parts
                    ))
                    .with_context("object", key)
                    .with_context("target", &self.location)
                })?;
                while !ended && pending.len < size {
                    // Surface a failed part early instead of after the whole stream.
                    if let Some(done) = parts.try_join_next() {
                        self.part_done(done, key)?;
                    }
                    match data.next().await {
                        Some(Ok(bytes)) => pending.push(bytes),
                        Some(Err(e)) => return Err(e.with_context("object", key)),
                        None => ended = true,
                    }
                }
                if pending.len == 0 {
                    break;
                }
                let payload = pending.take(size);
                total += payload.content_length() as u64;
                while parts.len() >= self.multipart.max_concurrency {
                    if let Some(done) = parts.join_next().await {
                        self.part_done(done, key)?;
                    }
                }
                let upload = guard
                    .0
                    .as_mut()
                    .ok_or_else(|| Error::internal("multipart upload is gone before completion"))?;
                parts.spawn(upload.put_part(payload));
                index += 1;
                if ended && pending.len == 0 {
                    break;
                }
            }
            while let Some(done) = parts.join_next().await {
                self.part_done(done, key)?;
            }
            Ok(())
        }
        .await;

        let Some(mut upload) = guard.0.take() else {
            return Err(Error::internal(
                "multipart upload is gone before completion",
            ));
        };
        match result {
            Ok(()) => match upload.complete().await {
                Ok(_) => Ok(total),
                Err(e) => {
                    abort(upload.as_mut(), key).await;
                    Err(self.err(e, "completing multipart upload", key))
                }
            },
            Err(e) => {
                parts.abort_all();
                while parts.join_next().await.is_some() {}
                abort(upload.as_mut(), key).await;
                Err(e)
            }
        }
    }

    fn part_done(
        &self,
        done: std::result::Result<object_store::Result<()>, tokio::task::JoinError>,
        key: &str,
    ) -> Result<()> {
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.err(e, "uploading a part", key)),
            Err(e) => Err(
                Error::new(ErrorKind::Interrupted, "a part upload task failed")
                    .with_context("object", key)
                    .with_source(e),
            ),
        }
    }
}

/// Best-effort abort; a failure leaves invisible parts that a bucket lifecycle rule
/// (`AbortIncompleteMultipartUpload`) removes, so it is logged, not returned.
async fn abort(upload: &mut dyn MultipartUpload, key: &str) {
    if let Err(e) = upload.abort().await {
        tracing::warn!(object = key, error = %e, "could not abort multipart upload");
    }
}

/// Aborts a multipart upload whose future was dropped (cancelled) before it
/// completed or aborted it, so a cancelled backup leaves no parts behind.
struct AbortOnDrop(Option<Box<dyn MultipartUpload>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(mut upload) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

/// Bytes read from the stream and not yet sent, kept as the stream's own buffers so
/// that cutting a part copies nothing.
#[derive(Default)]
struct PartBuffer {
    chunks: Vec<Bytes>,
    len: u64,
}

impl PartBuffer {
    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len() as u64;
            self.chunks.push(bytes);
        }
    }

    /// Takes exactly `size` bytes (or everything, if less is buffered).
    fn take(&mut self, size: u64) -> PutPayload {
        if self.len <= size {
            self.len = 0;
            return PutPayload::from_iter(std::mem::take(&mut self.chunks));
        }
        let mut out = Vec::new();
        let mut need = size;
        let mut rest = Vec::new();
        for mut chunk in self.chunks.drain(..) {
            if need == 0 {
                rest.push(chunk);
            } else if (chunk.len() as u64) <= need {
                need -= chunk.len() as u64;
                out.push(chunk);
            } else {
                // `need` < chunk.len() here, so it fits in usize.
                let head = chunk.split_to(need as usize);
                need = 0;
                out.push(head);
                rest.push(chunk);
            }
        }
        self.chunks = rest;
        self.len -= size;
        PutPayload::from_iter(out)
    }
}

#[async_trait]
impl BackupTarget for ObjectStoreTarget {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn is_remote(&self) -> bool {
        self.remote
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(|e| self.err(e, "writing", key))?;
        Ok(())
    }

    async fn put_stream(&self, key: &str, mut data: ByteStream) -> Result<u64> {
        let path = self.path(key)?;
        let first = self.multipart.sizer().part_size(0).unwrap_or(u64::MAX);
        let mut pending = PartBuffer::default();
        // Small objects never start a multipart upload: one put is cheaper and atomic.
        while pending.len < first {
            match data.next().await {
                Some(Ok(bytes)) => pending.push(bytes),
                Some(Err(e)) => return Err(e.with_context("object", key)),
                None => {
                    let len = pending.len;
                    self.stream_store()
                        .put(&path, pending.take(u64::MAX))
                        .await
                        .map_err(|e| self.err(e, "writing", key))?;
                    return Ok(len);
                }
            }
        }
        self.put_multipart(key, &path, pending, data).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let path = self.path(key)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            // S3's 409 ConditionalRequestConflict: another create of this key is in
            // flight and may still fail, so the object need not exist. A temporary
            // error (RetryTarget retries it), never `AlreadyExists`.
            Err(e) if crate::error::is_conflict_in_progress(&e) => {
                Err(self.err(e, "creating if absent", key))
            }
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(PutOutcome::AlreadyExists),
            Err(e @ object_store::Error::NotImplemented { .. }) => {
                Err(self.err(e, "creating if absent", key).with_message(
                    "this store cannot create an object atomically; for S3-compatible stores \
                     without conditional writes set AWS_CONDITIONAL_PUT",
                ))
            }
            Err(e) => Err(self.err(e, "creating if absent", key)),
        }
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let path = self.path(key)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.err(e, "reading", key))?;
        let key = key.to_owned();
        let location = self.location.clone();
        Ok(result
            .into_stream()
            .map_err(move |e| from_store(e, "reading", &key, &location))
            .boxed())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        if range.start >= range.end {
            return Err(Error::invalid(format!(
                "empty or reversed range {}..{}",
                range.start, range.end
            ))
            .with_context("object", key)
            .with_context("target", &self.location));
        }
        let outside = |size: u64| {
            Error::invalid(format!(
                "range {}..{} lies outside the object of {size} bytes",
                range.start, range.end
            ))
            .with_context("object", key)
            .with_context("target", &self.location)
        };
        match self.store.get_range(&path, range.clone()).await {
            Ok(bytes) if bytes.len() as u64 == range.end - range.start => Ok(bytes),
            // Stores truncate a range that runs past the end; the trait promises
            // the whole range or an error.
            Ok(bytes) => Err(outside(range.start + bytes.len() as u64)),
            Err(e @ object_store::Error::NotFound { .. }) => Err(self.err(e, "reading", key)),
            Err(e) => {
                // Stores report a range past the end in their own words (416, or
                // "wanted range starting at"); ask for the size to tell that apart.
                match self.store.head(&path).await {
                    Ok(meta) if range.end > meta.size => Err(outside(meta.size)),
                    _ => Err(self.err(e, "reading", key)),
                }
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(self.meta(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e, "reading metadata", key)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<ObjectStream> {
        // object_store lists whole path segments ("packs/a" does not match
        // "packs/ab"); the trait promises a string prefix. List the enclosing folder
        // and filter.
        let folder = match prefix.rfind('/') {
            Some(at) => prefix[..at].trim_matches('/'),
            None => "",
        };
        let list_path = if folder.is_empty() {
            self.prefix.clone()
        } else {
            let full = if self.prefix.as_ref().is_empty() {
                folder.to_owned()
            } else {
                format!("{}/{folder}", self.prefix.as_ref())
            };
            Path::parse(&full).map_err(|e| {
                Error::invalid(format!("invalid list prefix: {e}"))
                    .with_context("object", prefix)
                    .with_context("target", &self.location)
            })?
        };
        let this = self.clone();
        let wanted = prefix.to_owned();
        let listing = self.store.list(if list_path.as_ref().is_empty() {
            None
        } else {
            Some(&list_path)
        });
        Ok(listing
            .filter_map(move |item| {
                let out = match item {
                    Ok(meta) => this
                        .meta(meta)
                        .filter(|m| m.key.starts_with(&wanted))
                        .map(Ok),
                    // A folder that does not exist holds no objects.
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => Some(Err(this.err(e, "listing", &wanted))),
                };
                futures::future::ready(out)
            })
            .boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e, "deleting", key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_buffer_cuts_exact_parts_without_copying() {
        let mut buf = PartBuffer::default();
        for piece in [&b"abc"[..], b"defg", b"", b"hi"] {
            buf.push(Bytes::copy_from_slice(piece));
        }
        let part: Vec<u8> = buf.take(5).into_iter().flatten().collect();
        assert_eq!(part, b"abcde");
        assert_eq!(buf.len, 4);
        let rest: Vec<u8> = buf.take(100).into_iter().flatten().collect();
        assert_eq!(rest, b"fghi");
        assert_eq!(buf.len, 0);
    }

    #[test]
    fn keys_are_validated() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let target = ObjectStoreTarget::new(store, "/base/", "memory://", false).expect("valid");
        assert_eq!(target.path("a/b").expect("valid").as_ref(), "base/a/b");
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a"] {
            let err = target.path(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }
}
