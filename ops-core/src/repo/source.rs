//! Reading a backup back: the repository as a [`StreamSource`].
//!
//! A stream is read through its list blobs; consecutive chunks that lie next to each
//! other in one pack are fetched with one ranged read (up to [`MAX_READ`]), a few reads
//! ahead ([`PREFETCH`] on a local disk, [`REMOTE_PREFETCH`] on object storage, where
//! each request waits a round trip before its first byte), each blob authenticated,
//! decompressed and re-hashed against its id. The next chunk list is fetched while the
//! current one's chunks are read. At the end of the stream its byte count and digest are checked against the
//! manifest: a restore is also a verification.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};

use crate::digest::{RecordHasher, TableDigest};
use crate::engine::{StreamRole, StreamSource, StreamSpec};
use crate::target::ByteStream;
use crate::{Error, ErrorKind, Result};

use super::Repository;
use super::format::{self, ChunkId};
use super::index::{Index, Location};
use super::manifest::{Manifest, StreamRecord};
use super::pack::decode_list;

/// Largest single ranged read, in stored bytes.
const MAX_READ: u32 = 2 * 1024 * 1024;
/// Largest single ranged read, in decoded bytes: what a read costs in memory once
/// decompressed (highly compressible tables decode to 20x their stored size).
const MAX_READ_RAW: u64 = 2 * 1024 * 1024;
/// Ranged reads in flight per stream, on a local disk.
const PREFETCH: usize = 3;
/// Ranged reads in flight per stream, on object storage: enough to hide a request's
/// latency behind the others' transfers. Memory stays bounded: at most this many reads
/// of [`MAX_READ`] stored and [`MAX_READ_RAW`] decoded bytes per open stream.
const REMOTE_PREFETCH: usize = 8;
/// Chunk lists fetched ahead per stream.
const LIST_PREFETCH: usize = 2;

/// One ranged read: contiguous blobs of one pack.
struct Read {
    pack: u32,
    start: u32,
    end: u32,
    raw: u64,
    items: Vec<(ChunkId, Location)>,
}

/// The streams of one backup, read from the repository.
#[derive(Clone)]
pub struct RepoSource {
    repo: Repository,
    index: Arc<Index>,
    manifest: Arc<Manifest>,
    specs: Vec<StreamSpec>,
    digests: Option<Arc<Mutex<BTreeMap<String, TableDigest>>>>,
}

impl std::fmt::Debug for RepoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoSource")
            .field("backup", &self.manifest.id)
            .finish_non_exhaustive()
    }
}

impl RepoSource {
    /// The backup read.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Per-table digests of the table data read so far (only when created with
    /// digests on, as `verify --restore` does).
    pub fn table_digests(&self) -> BTreeMap<String, TableDigest> {
        self.digests
            .as_ref()
            .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    pub(super) async fn read_blob(&self, id: ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(&id)?;
        let key = format::pack_key(&self.index.pack(loc.pack)?.id);
        let stored = self
            .repo
            .target()
            .get_range(
                &key,
                u64::from(loc.offset)..u64::from(loc.offset) + u64::from(loc.length),
            )
            .await?;
        let keys = self.repo.keys.clone();
        tokio::task::spawn_blocking(move || format::decode_blob(&keys, &id, loc.raw, &stored))
            .await
            .map_err(|e| Error::internal(format!("decode task failed: {e}")))?
    }

    fn locate(&self, id: &ChunkId) -> Result<Location> {
        self.index.get(id)?.ok_or_else(|| {
            Error::corrupt(format!(
                "chunk {id} is not in the repository's index: the repository is damaged (verify it to see what else is)"
            ))
            .with_context("chunk", id.hex())
        })
    }

    fn plan(&self, refs: &[(ChunkId, u32)]) -> Result<Vec<Read>> {
        let mut reads: Vec<Read> = Vec::new();
        for (id, len) in refs {
            let loc = self.locate(id)?;
            if loc.raw != *len {
                return Err(Error::corrupt(format!(
                    "chunk {id} has length {} in the index but {len} in the chunk list",
                    loc.raw
                ))
                .with_context("chunk", id.hex()));
            }
            match reads.last_mut() {
                Some(r)
                    if r.pack == loc.pack
                        && r.end == loc.offset
                        && loc.offset + loc.length - r.start <= MAX_READ
                        && r.raw + u64::from(loc.raw) <= MAX_READ_RAW =>
                {
                    r.end = loc.offset + loc.length;
                    r.raw += u64::from(loc.raw);
                    r.items.push((*id, loc));
                }
                _ => reads.push(Read {
                    pack: loc.pack,
                    start: loc.offset,
                    end: loc.offset + loc.length,
                    raw: u64::from(loc.raw),
                    items: vec![(*id, loc)],
                }),
            }
        }
        Ok(reads)
    }

    /// Reads and decodes one ranged read. A damaged blob ends the batch: the blobs
    /// before it are returned with the error, so a reader gets every intact byte up to
    /// the damage (a restore of chosen files before it succeeds).
    async fn fetch(&self, read: Read) -> Result<(Vec<(ChunkId, Bytes)>, Option<Error>)> {
        let pack = self.index.pack(read.pack)?.id;
        let key = format::pack_key(&pack);
        let data = self
            .repo
            .target()
            .get_range(&key, u64::from(read.start)..u64::from(read.end))
            .await
            .map_err(|e| e.with_context("pack", &pack))?;
        if data.len() != (read.end - read.start) as usize {
            return Err(
                Error::corrupt(format!("pack {pack} is shorter than the index says"))
                    .with_context("pack", pack),
            );
        }
        let keys = self.repo.keys.clone();
        tokio::task::spawn_blocking(move || {
            let mut good = Vec::with_capacity(read.items.len());
            for (id, loc) in &read.items {
                let from = (loc.offset - read.start) as usize;
                let stored = &data[from..from + loc.length as usize];
                match format::decode_blob(&keys, id, loc.raw, stored) {
                    Ok(plain) => good.push((*id, Bytes::from(plain))),
                    Err(e) => return Ok((good, Some(e.with_context("pack", &pack)))),
                }
            }
            Ok((good, None))
        })
        .await
        .map_err(|e| Error::internal(format!("decode task failed: {e}")))?
    }
}

impl Repository {
    /// A [`StreamSource`] over one backup. With `digests`, the table data read is
    /// hashed per table as it passes (see [`RepoSource::table_digests`]).
    ///
    /// # Errors
    /// Storage errors while loading the index.
    pub async fn source(&self, manifest: &Manifest, digests: bool) -> Result<RepoSource> {
        let index = self.load_index().await?;
        Ok(self.source_with_index(manifest, Arc::new(index), digests))
    }

    pub(super) fn source_with_index(
        &self,
        manifest: &Manifest,
        index: Arc<Index>,
        digests: bool,
    ) -> RepoSource {
        RepoSource {
            repo: self.clone(),
            index,
            manifest: Arc::new(manifest.clone()),
            specs: manifest
                .streams
                .iter()
                .filter(|s| is_engine_stream(&s.spec.name))
                .map(|s| s.spec.clone())
                .collect(),
            digests: digests.then(|| Arc::new(Mutex::new(BTreeMap::new()))),
        }
    }
}

/// Streams the repository keeps beside a database's own: file trees (`files/…`) and
/// server globals (`globals/…`). An engine's restore never sees them in
/// [`StreamSource::streams`] (they can still be opened by name), so an engine that
/// predates them restores a backup that holds them unchanged.
pub const NON_ENGINE_PREFIXES: [&str; 2] = [super::FILES_PREFIX, super::GLOBALS_PREFIX];

/// True for a stream that belongs to the database engine (see [`NON_ENGINE_PREFIXES`]).
pub fn is_engine_stream(name: &str) -> bool {
    !NON_ENGINE_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[async_trait]
impl StreamSource for RepoSource {
    fn streams(&self) -> &[StreamSpec] {
        &self.specs
    }

    async fn open(&self, name: &str) -> Result<ByteStream> {
        let record = self
            .manifest
            .stream(name)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("backup {} has no stream '{name}'", self.manifest.id),
                )
            })?
            .clone();
        let this = self.clone();
        let lists = record.lists.clone();
        let reads = stream::iter(lists)
            .map({
                let this = this.clone();
                move |list| {
                    let this = this.clone();
                    async move {
                        let plain = this.read_blob(list).await?;
                        let refs = decode_list(&plain)?;
                        let reads = this.plan(&refs)?;
                        Ok::<_, Error>(stream::iter(reads.into_iter().map(Ok)))
                    }
                }
            })
            .buffered(LIST_PREFETCH)
            .try_flatten();
        let prefetch = if self.repo.target().is_remote() {
            REMOTE_PREFETCH
        } else {
            PREFETCH
        };
        let chunks = reads
            .map_ok(move |read| {
                let this = this.clone();
                async move { this.fetch(read).await }
            })
            .try_buffered(prefetch);
        let hasher = match (&self.digests, record.spec.role, &record.spec.table) {
            (Some(d), StreamRole::TableData, Some(t)) => {
                Some((Arc::clone(d), t.to_string(), RecordHasher::new()))
            }
            _ => None,
        };
        let checked = Checked {
            progress: self.repo.progress.clone(),
            inner: Box::pin(chunks),
            pending: std::collections::VecDeque::new(),
            digest: self.repo.keys.digest_hasher(),
            bytes: 0,
            chunks: 0,
            record,
            hasher,
            failed: None,
            done: false,
        };
        Ok(Box::pin(checked))
    }
}

/// Where a stream's table digest goes, the table's name, and the running hash.
type TableHashing = (
    Arc<Mutex<BTreeMap<String, TableDigest>>>,
    String,
    RecordHasher,
);

/// Decoded chunks of one ranged read, and the damage that ended it early.
type ChunkBatch = (Vec<(ChunkId, Bytes)>, Option<Error>);
type ChunkBatches = Pin<Box<dyn Stream<Item = Result<ChunkBatch>> + Send>>;

/// Yields a stream's plain bytes and checks its length and digest at the end.
struct Checked {
    progress: Option<Arc<super::Progress>>,
    inner: ChunkBatches,
    pending: std::collections::VecDeque<Bytes>,
    digest: blake3::Hasher,
    bytes: u64,
    chunks: u64,
    record: StreamRecord,
    hasher: Option<TableHashing>,
    /// Damage met after the chunks in `pending`: yielded once they are.
    failed: Option<Error>,
    done: bool,
}

impl Checked {
    fn context(&self, e: Error) -> Error {
        let e = e.with_context("stream", &self.record.spec.name);
        match &self.record.spec.table {
            Some(t) => e.with_context("table", t),
            None => e,
        }
    }

    fn finish(&mut self) -> Result<()> {
        let digest = self.digest.finalize().to_hex().to_string();
        if self.bytes != self.record.bytes
            || self.chunks != self.record.chunks
            || digest != self.record.digest
        {
            return Err(self.context(Error::corrupt(format!(
                "stream '{}' does not match its manifest: {} bytes in {} chunks read, {} bytes in {} chunks recorded, digest {}",
                self.record.spec.name,
                self.bytes,
                self.chunks,
                self.record.bytes,
                self.record.chunks,
                if digest == self.record.digest { "equal" } else { "different" }
            ))));
        }
        if let Some((map, table, hasher)) = self.hasher.take() {
            let d = hasher.finish();
            map.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(table)
                .or_default()
                .merge(&d);
        }
        Ok(())
    }
}

impl Stream for Checked {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                if let Some(p) = &self.progress {
                    p.bytes
                        .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                return Poll::Ready(Some(Ok(b)));
            }
            if let Some(e) = self.failed.take() {
                self.done = true;
                let e = self.context(e);
                return Poll::Ready(Some(Err(e)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    let e = self.context(e);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok((batch, failed)))) => {
                    self.failed = failed;
                    for (id, bytes) in batch {
                        self.digest.update(&id.0);
                        self.bytes += bytes.len() as u64;
                        self.chunks += 1;
                        if let Some((_, _, h)) = self.hasher.as_mut() {
                            h.update(&bytes);
                        }
                        self.pending.push_back(bytes);
                    }
                }
                Poll::Ready(None) => {
                    self.done = true;
                    if let Err(e) = self.finish() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    if let Some(p) = &self.progress {
                        p.streams_done
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}
