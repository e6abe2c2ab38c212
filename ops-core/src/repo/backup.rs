//! Taking a backup: the repository as a [`DumpSink`].
//!
//! Each stream the engine opens gets a worker on the blocking pool, fed through a small
//! bounded channel: the engine's task only copies bytes into a buffer. The worker cuts
//! chunks, names them, skips those the repository has, compresses and seals the rest
//! into a pack, and hands full packs to one uploader task that keeps a few puts in
//! flight. Every queue is bounded, so memory is about (jobs + uploads in flight + 1) ×
//! pack size whatever the database size. Index and manifest are written only after
//! every pack is stored; a failed backup leaves unreferenced packs for prune, and no
//! manifest.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::engine::{
    DatabaseEngine, DumpOptions, DumpSink, GlobalsOptions, StreamSpec, StreamSummary, StreamWriter,
};
use crate::{Error, ErrorKind, Result};

use super::Repository;
use super::chunker::Chunker;
use super::crypto::Keys;
use super::format::{self, ChunkId, FORMAT_VERSION, RepoConfig};
use super::index::Index;
use super::lock::{LockGuard, LockKind};
use super::manifest::{BackupStats, Manifest, StreamRecord};
use super::pack::{BlobKind, IndexFile, IndexPack, PackBuilder, SealedPack, encode_list};
use super::progress::Progress;

/// Chunk references per list blob (36 bytes each: ~144 KiB).
const LIST_REFS: usize = 4096;
/// Bytes gathered from the engine before they are handed to the stream's worker.
const HANDOFF_BYTES: usize = 512 * 1024;
/// Packs uploaded at once.
const UPLOADS_IN_FLIGHT: usize = 3;
/// Packs per index file: index files are written as packs accumulate, so the index of
/// a large backup is never held whole in memory (restic does the same).
const PACKS_PER_INDEX: usize = 16;

/// What the uploader stored.
struct Uploaded {
    stored_bytes: u64,
    packs: u64,
    /// Stored packs not yet in an index file.
    pending: Vec<IndexPack>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Options of [`Repository::backup`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BackupOptions {
    /// What and how to dump.
    pub dump: DumpOptions,
    /// Tags recorded in the manifest.
    pub tags: BTreeSet<String>,
    /// Counters to update while running.
    pub progress: Option<Arc<Progress>>,
    /// File trees taken in the same backup, after the database (one backup id for
    /// both, as the runbooks' manifest of a dump and its uploads).
    pub files: Option<super::FileTrees>,
    /// How the server's globals (roles, users, grants) are taken beside the
    /// database: every backup holds them where the engine can read them.
    pub globals: GlobalsOptions,
    /// How long a backup that needs archived logs (a physical base backup names its
    /// last WAL segment) waits for them to reach the archive before it fails
    /// unrecorded; `None` is [`DEFAULT_LOG_WAIT`].
    pub log_wait: Option<std::time::Duration>,
}

/// How long a backup waits for the logs it needs to be archived, by default.
pub const DEFAULT_LOG_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl BackupOptions {
    /// Sets how long to wait for the logs the backup needs (see
    /// [`BackupOptions::log_wait`]).
    #[must_use]
    pub fn with_log_wait(mut self, wait: std::time::Duration) -> Self {
        self.log_wait = Some(wait);
        self
    }

    /// Sets the dump options.
    #[must_use]
    pub fn with_dump(mut self, dump: DumpOptions) -> Self {
        self.dump = dump;
        self
    }

    /// Adds tags.
    #[must_use]
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = String>) -> Self {
        self.tags.extend(tags);
        self
    }

    /// Sets how the server's globals are taken (role passwords or not).
    #[must_use]
    pub fn with_globals(mut self, globals: GlobalsOptions) -> Self {
        self.globals = globals;
        self
    }

    /// Takes these file trees in the same backup.
    #[must_use]
    pub fn with_files(mut self, files: super::FileTrees) -> Self {
        self.files = Some(files);
        self
    }

    /// Sets progress counters.
    #[must_use]
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

struct State {
    keys: Keys,
    config: RepoConfig,
    seed: u64,
    index: Index,
    claimed: Mutex<HashSet<ChunkId>>,
    packs: Mutex<Vec<PackBuilder>>,
    upload: Mutex<Option<mpsc::Sender<SealedPack>>>,
    active_workers: AtomicU64,
    failure: Mutex<Option<Error>>,
    records: Mutex<Vec<(u64, StreamRecord)>>,
    next_seq: AtomicU64,
    warnings: Mutex<Vec<String>>,
    progress: Arc<Progress>,
    chunks: AtomicU64,
    new_chunks: AtomicU64,
    /// This backup's own count: a shared [`Progress`] may count several operations.
    new_bytes: AtomicU64,
}

impl State {
    /// True when `id` is new to the repository and this call claimed it for storing.
    fn claim(&self, id: ChunkId) -> Result<bool> {
        Ok(!self.index.contains(&id)? && lock(&self.claimed).insert(id))
    }

    fn take_pack(&self) -> PackBuilder {
        lock(&self.packs).pop().unwrap_or_else(|| {
            PackBuilder::with_capacity(self.config.pack_size as usize + 256 * 1024)
        })
    }

    fn return_pack(&self, pack: PackBuilder) {
        if !pack.is_empty() {
            lock(&self.packs).push(pack);
        }
    }

    fn fail(&self, err: Error) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            *f = Some(err);
        }
    }

    fn failure(&self) -> Error {
        lock(&self.failure)
            .as_ref()
            .map(|e| Error::new(e.kind(), e.to_string()))
            .unwrap_or_else(|| Error::new(ErrorKind::Interrupted, "the backup's upload stopped"))
    }

    /// Seals a full pack and queues it (blocking: called from a worker).
    fn ship(&self, pack: PackBuilder) -> Result<()> {
        let sealed = pack.seal(&self.keys)?;
        let sender = lock(&self.upload).clone();
        match sender {
            Some(tx) => tx.blocking_send(sealed).map_err(|_| self.failure()),
            None => Err(self.failure()),
        }
    }

    /// Closes the upload queue: the uploader ends once the queued packs are stored.
    fn close_queue(&self) {
        lock(&self.upload).take();
    }
}

/// What [`Repository::ingest`] stored.
pub(super) struct Ingested {
    pub report: crate::engine::DumpReport,
    pub streams: Vec<StreamRecord>,
    pub warnings: Vec<String>,
    pub stats: BackupStats,
}

struct Sink {
    state: Arc<State>,
}

#[async_trait]
impl DumpSink for Sink {
    async fn open_stream(&self, spec: StreamSpec) -> Result<Box<dyn StreamWriter>> {
        let seq = self.state.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let state = Arc::clone(&self.state);
        let worker_spec = spec.clone();
        state.active_workers.fetch_add(1, Ordering::SeqCst);
        let worker = tokio::task::spawn_blocking(move || {
            let r = stream_worker(&state, worker_spec, rx);
            state.active_workers.fetch_sub(1, Ordering::SeqCst);
            r
        });
        Ok(Box::new(Writer {
            seq,
            spec,
            buf: BytesMut::with_capacity(HANDOFF_BYTES * 2),
            tx: Some(tx),
            worker: Some(worker),
            state: Arc::clone(&self.state),
        }))
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        lock(&self.state.warnings).push(message);
    }
}

struct Writer {
    seq: u64,
    spec: StreamSpec,
    buf: BytesMut,
    tx: Option<mpsc::Sender<Bytes>>,
    worker: Option<JoinHandle<Result<StreamRecord>>>,
    state: Arc<State>,
}

impl Writer {
    async fn worker_error(&mut self) -> Error {
        match self.worker.take() {
            Some(handle) => match handle.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => Error::internal("stream worker ended early"),
                Err(e) => Error::internal(format!("stream worker failed: {e}")),
            },
            None => Error::internal("stream writer used after an error"),
        }
    }

    async fn hand_off(&mut self) -> Result<()> {
        let data = self.buf.split().freeze();
        let sent = match &self.tx {
            Some(tx) => tx.send(data).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            self.tx = None;
            Err(self.worker_error().await)
        }
    }
}

#[async_trait]
impl StreamWriter for Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.state
            .progress
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.buf.is_empty() && data.len() >= HANDOFF_BYTES {
            self.buf = BytesMut::from(data.as_ref());
        } else {
            self.buf.extend_from_slice(&data);
        }
        if self.buf.len() >= HANDOFF_BYTES {
            self.hand_off().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<StreamSummary> {
        if !self.buf.is_empty() {
            self.hand_off().await?;
        }
        self.tx = None;
        let record = match self.worker.take() {
            Some(h) => h
                .await
                .map_err(|e| Error::internal(format!("stream worker failed: {e}")))??,
            None => return Err(Error::internal("stream finished twice")),
        };
        let summary = StreamSummary {
            bytes: record.bytes,
            rows: record.rows,
        };
        self.state
            .progress
            .streams_done
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.state.records).push((self.seq, record));
        tracing::debug!(stream = %self.spec.name, bytes = summary.bytes, rows = summary.rows, "stream stored");
        Ok(summary)
    }
}

/// Cuts, names, de-duplicates, compresses, seals and packs one stream.
fn stream_worker(
    state: &State,
    spec: StreamSpec,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<StreamRecord> {
    let mut compressor = zstd::bulk::Compressor::new(state.config.compression.level)
        .map_err(|e| Error::internal(format!("zstd: {e}")))?;
    let mut chunker = Chunker::new(state.config.chunker, state.seed);
    let mut pending: Vec<Bytes> = Vec::new();
    let mut w = StreamState {
        pack: None,
        refs: Vec::with_capacity(LIST_REFS),
        lists: Vec::new(),
        digest: state.keys.digest_hasher(),
        bytes: 0,
        rows: 0,
        chunks: 0,
    };
    let result = (|| -> Result<()> {
        while let Some(data) = rx.blocking_recv() {
            chunker.push(&data, &mut pending);
            for chunk in pending.drain(..) {
                w.add_chunk(state, &mut compressor, &chunk)?;
            }
        }
        chunker.finish(&mut pending);
        for chunk in pending.drain(..) {
            w.add_chunk(state, &mut compressor, &chunk)?;
        }
        w.flush_list(state, &mut compressor)?;
        Ok(())
    })();
    if let Some(pack) = w.pack.take() {
        state.return_pack(pack);
    }
    result?;
    Ok(StreamRecord {
        spec,
        bytes: w.bytes,
        rows: w.rows,
        chunks: w.chunks,
        digest: w.digest.finalize().to_hex().to_string(),
        lists: w.lists,
    })
}

struct StreamState {
    pack: Option<PackBuilder>,
    refs: Vec<(ChunkId, u32)>,
    lists: Vec<ChunkId>,
    digest: blake3::Hasher,
    bytes: u64,
    rows: u64,
    chunks: u64,
}

impl StreamState {
    fn add_chunk(
        &mut self,
        state: &State,
        compressor: &mut zstd::bulk::Compressor<'static>,
        chunk: &[u8],
    ) -> Result<()> {
        let id = state.keys.chunk_id(chunk);
        let len = chunk.len() as u32;
        self.digest.update(&id.0);
        self.bytes += u64::from(len);
        self.rows += memchr::memchr_iter(b'\n', chunk).count() as u64;
        self.chunks += 1;
        state.chunks.fetch_add(1, Ordering::Relaxed);
        self.refs.push((id, len));
        if state.claim(id)? {
            state.new_chunks.fetch_add(1, Ordering::Relaxed);
            state.new_bytes.fetch_add(u64::from(len), Ordering::Relaxed);
            state
                .progress
                .new_bytes
                .fetch_add(u64::from(len), Ordering::Relaxed);
            let sealed = format::encode_blob(&state.keys, compressor, &id, chunk)?;
            self.store(state, id, BlobKind::Data, len, &sealed)?;
        }
        if self.refs.len() >= LIST_REFS {
            self.flush_list(state, compressor)?;
        }
        Ok(())
    }

    fn flush_list(
        &mut self,
        state: &State,
        compressor: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<()> {
        if self.refs.is_empty() {
            return Ok(());
        }
        let plain = encode_list(&self.refs);
        self.refs.clear();
        let id = state.keys.chunk_id(&plain);
        self.lists.push(id);
        if state.claim(id)? {
            let sealed = format::encode_blob(&state.keys, compressor, &id, &plain)?;
            self.store(state, id, BlobKind::List, plain.len() as u32, &sealed)?;
        }
        Ok(())
    }

    fn store(
        &mut self,
        state: &State,
        id: ChunkId,
        kind: BlobKind,
        raw: u32,
        sealed: &[u8],
    ) -> Result<()> {
        let pack = self.pack.get_or_insert_with(|| state.take_pack());
        pack.add(id, kind, raw, sealed);
        if pack.len() >= state.config.pack_size as usize
            && let Some(full) = self.pack.take()
        {
            state.ship(full)?;
        }
        Ok(())
    }
}

/// Uploads packs as they come, a few at a time; returns what was stored.
async fn uploader(
    repo: Repository,
    state: Arc<State>,
    mut rx: mpsc::Receiver<SealedPack>,
) -> Result<Uploaded> {
    let limit = Arc::new(Semaphore::new(UPLOADS_IN_FLIGHT));
    let mut running: JoinSet<Result<IndexPack>> = JoinSet::new();
    let mut done = Vec::new();
    let mut failed: Option<Error> = None;
    let (mut stored_bytes, mut packs) = (0u64, 0u64);
    while let Some(pack) = rx.recv().await {
        while let Some(r) = running.try_join_next() {
            collect(r, &mut done, &mut failed);
        }
        if failed.is_none() && done.len() >= PACKS_PER_INDEX {
            let batch: Vec<IndexPack> = std::mem::take(&mut done);
            stored_bytes += batch.iter().map(|p| p.size).sum::<u64>();
            packs += batch.len() as u64;
            if let Err(e) = repo
                .write_index(&IndexFile {
                    version: FORMAT_VERSION,
                    packs: batch,
                })
                .await
            {
                failed = Some(e.during("writing an index file"));
            }
        }
        if failed.is_some() {
            break;
        }
        let permit = Arc::clone(&limit)
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("upload limiter closed"))?;
        let target = Arc::clone(repo.target());
        let progress = Arc::clone(&state.progress);
        running.spawn(async move {
            let _permit = permit;
            let key = format::pack_key(&pack.id);
            let size = pack.bytes.len() as u64;
            target
                .put(&key, pack.bytes)
                .await
                .map_err(|e| e.during(format!("storing pack {}", pack.id)))?;
            progress.stored_bytes.fetch_add(size, Ordering::Relaxed);
            Ok(IndexPack {
                id: pack.id,
                size,
                blobs: pack.blobs,
            })
        });
    }
    while let Some(r) = running.join_next().await {
        collect(r, &mut done, &mut failed);
    }
    match failed {
        Some(e) => {
            state.fail(Error::new(e.kind(), e.to_string()));
            drop(rx);
            Err(e)
        }
        None => Ok(Uploaded {
            stored_bytes: stored_bytes + done.iter().map(|p| p.size).sum::<u64>(),
            packs: packs + done.len() as u64,
            pending: done,
        }),
    }
}

fn collect(
    r: std::result::Result<Result<IndexPack>, tokio::task::JoinError>,
    done: &mut Vec<IndexPack>,
    failed: &mut Option<Error>,
) {
    match r {
        Ok(Ok(p)) => done.push(p),
        Ok(Err(e)) => {
            if failed.is_none() {
                *failed = Some(e);
            }
        }
        Err(e) => {
            if failed.is_none() {
                *failed = Some(Error::internal(format!("upload task failed: {e}")));
            }
        }
    }
}

/// Takes the server's globals beside a one-database backup. An engine that cannot
/// read them leaves a warning in the manifest instead: the database is what was asked
/// for. Role passwords asked for and not readable fail the backup.
async fn take_globals(
    engine: &dyn DatabaseEngine,
    options: &GlobalsOptions,
    sink: Arc<dyn DumpSink>,
) -> Result<()> {
    match engine.dump_globals(options, Arc::clone(&sink)).await {
        Ok(()) => Ok(()),
        Err(e) if options.role_passwords => Err(e.during("reading the server's globals")),
        Err(e) => {
            sink.warn(format!(
                "the server's globals (roles, users, grants) are not in this backup: {e}"
            ));
            Ok(())
        }
    }
}

impl Repository {
    /// Takes a backup of `engine`'s database and returns its manifest.
    ///
    /// # Errors
    /// Engine errors (unreachable, authentication, privileges, missing tools), storage
    /// errors, [`ErrorKind::Locked`] when a prune holds the repository. On any error no
    /// manifest is written: the backup does not exist.
    pub async fn backup(
        &self,
        engine: &dyn DatabaseEngine,
        options: &BackupOptions,
    ) -> Result<Manifest> {
        let started = chrono::Utc::now();
        self.under_backup_lock(async |lock| {
            self.backup_locked(engine, options, started, lock).await
        })
        .await
    }

    /// Runs `work` under a shared backup lock, released afterwards: the one shape of
    /// every kind of backup (a database, files alone, a whole server).
    pub(super) async fn under_backup_lock(
        &self,
        work: impl AsyncFnOnce(&LockGuard) -> Result<Manifest>,
    ) -> Result<Manifest> {
        let lock = self.lock(LockKind::Shared, "backup").await?;
        let result = work(&lock).await;
        let released = lock.release().await;
        let manifest = result?;
        if let Err(e) = released {
            // The work is done; an unreleased lock only goes stale and is removed later.
            tracing::warn!("could not release the repository lock: {e}");
        }
        Ok(manifest)
    }

    /// A new backup's manifest from what was ingested, with what every kind of backup
    /// records the same way; the caller sets what names the source (engine, database,
    /// source, server id, snapshot, databases).
    pub(super) fn new_manifest(
        started: chrono::DateTime<chrono::Utc>,
        options: &BackupOptions,
        ingested: Ingested,
        trees_or_server: bool,
    ) -> Manifest {
        Manifest {
            format_version: if trees_or_server || options.files.is_some() {
                format::MANIFEST_VERSION_TREES
            } else {
                FORMAT_VERSION
            },
            id: format::new_backup_id(started),
            engine: String::new(),
            server_version: ingested.report.server_version,
            database: String::new(),
            source: String::new(),
            server_id: ingested.report.server_id,
            host: super::host_name(),
            tool_version: crate::VERSION.to_owned(),
            started,
            finished: chrono::Utc::now(),
            tags: options.tags.clone(),
            snapshot: ingested.report.snapshot,
            warnings: ingested.warnings,
            stats: ingested.stats,
            streams: ingested.streams,
            databases: Vec::new(),
            filter: options.dump.filter.clone(),
        }
    }

    /// Writes a new backup's manifest: the backup exists from now on.
    pub(super) async fn record_backup(&self, manifest: &Manifest, lock: &LockGuard) -> Result<()> {
        self.record_manifest(manifest, lock)
            .await
            .map_err(|e| e.during("writing the backup's manifest"))
    }

    async fn backup_locked(
        &self,
        engine: &dyn DatabaseEngine,
        options: &BackupOptions,
        started: chrono::DateTime<chrono::Utc>,
        lock: &LockGuard,
    ) -> Result<Manifest> {
        let progress = options.progress.clone().or_else(|| self.progress.clone());
        if let Some(p) = &progress {
            // The catalog's on-disk sizes: an estimate of the dump's bytes.
            if let Ok(info) = engine.describe().await {
                let bytes = info.tables.iter().map(|t| t.bytes).sum();
                p.set_totals(bytes, 0, true);
            }
        }
        let ingested = self
            .ingest(progress, lock, |sink| async move {
                let report = engine.dump(&options.dump, Arc::clone(&sink)).await?;
                take_globals(engine, &options.globals, Arc::clone(&sink)).await?;
                if let Some(files) = &options.files {
                    files.dump(&sink).await?;
                }
                Ok(report)
            })
            .await
            .map_err(|e| e.during(format!("backup of {}", engine.location())))?;
        let database = if ingested.report.database.is_empty() {
            engine.database()
        } else {
            ingested.report.database.clone()
        };
        let manifest = Manifest {
            engine: engine.name().to_owned(),
            database,
            source: engine.location(),
            ..Self::new_manifest(started, options, ingested, false)
        };
        self.wait_for_logs(&manifest, options.log_wait.unwrap_or(DEFAULT_LOG_WAIT))
            .await?;
        self.record_backup(&manifest, lock).await?;
        Ok(manifest)
    }

    /// Runs `run` with the repository as its sink and stores everything it writes:
    /// the shared path of backups and copies. Returns what the manifest needs.
    pub(super) async fn ingest<'a, F, Fut>(
        &self,
        progress: Option<Arc<Progress>>,
        repo_lock: &LockGuard,
        run: F,
    ) -> Result<Ingested>
    where
        F: FnOnce(Arc<dyn DumpSink>) -> Fut,
        Fut: std::future::Future<Output = Result<crate::engine::DumpReport>> + 'a,
    {
        let index = self.load_index().await?;
        let (tx, rx) = mpsc::channel::<SealedPack>(1);
        let seed_hash = blake3::keyed_hash(&self.keys.chunk_id(b"dbops chunker seed").0, b"seed");
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&seed_hash.as_bytes()[..8]);
        let state = Arc::new(State {
            keys: self.keys.clone(),
            config: self.config.clone(),
            seed: u64::from_le_bytes(seed),
            index,
            claimed: Mutex::new(HashSet::new()),
            packs: Mutex::new(Vec::new()),
            upload: Mutex::new(Some(tx)),
            active_workers: AtomicU64::new(0),
            failure: Mutex::new(None),
            records: Mutex::new(Vec::new()),
            next_seq: AtomicU64::new(0),
            warnings: Mutex::new(Vec::new()),
            progress: progress.unwrap_or_default(),
            chunks: AtomicU64::new(0),
            new_chunks: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
        });
        let upload = tokio::spawn(uploader(self.clone(), Arc::clone(&state), rx));

        let sink: Arc<dyn DumpSink> = Arc::new(Sink {
            state: Arc::clone(&state),
        });
        let dumped = run(Arc::clone(&sink)).await;
        drop(sink);
        let report = match dumped {
            Ok(r) => r,
            Err(e) => {
                state.close_queue();
                let _ = upload.await;
                return Err(e);
            }
        };
        // An engine that dropped a writer without finishing it leaves a worker ending
        // on its own; wait for it, since it returns its pack (with chunks other streams
        // may reference) to the pool.
        while state.active_workers.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let partial: Vec<PackBuilder> = std::mem::take(&mut *lock(&state.packs));
        let flushing = Arc::clone(&state);
        let flushed = tokio::task::spawn_blocking(move || -> Result<()> {
            for p in partial {
                flushing.ship(p)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("flushing packs failed: {e}")));
        state.close_queue();
        let packs = upload
            .await
            .map_err(|e| Error::internal(format!("uploader failed: {e}")))?;
        let uploaded = packs?;
        flushed??;

        let stored_bytes = uploaded.stored_bytes;
        let pack_count = uploaded.packs;
        repo_lock.ensure_held().await?;
        if !uploaded.pending.is_empty() {
            self.write_index(&IndexFile {
                version: FORMAT_VERSION,
                packs: uploaded.pending,
            })
            .await
            .map_err(|e| e.during("writing the backup's index"))?;
        }

        let mut records = std::mem::take(&mut *lock(&state.records));
        records.sort_by_key(|(seq, _)| *seq);
        let streams: Vec<StreamRecord> = records.into_iter().map(|(_, r)| r).collect();
        let mut warnings = std::mem::take(&mut *lock(&state.warnings));
        for w in &report.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
        let stats = BackupStats {
            bytes: streams.iter().map(|s| s.bytes).sum(),
            chunks: state.chunks.load(Ordering::Relaxed),
            new_chunks: state.new_chunks.load(Ordering::Relaxed),
            new_bytes: state.new_bytes.load(Ordering::Relaxed),
            stored_bytes,
            packs: pack_count,
        };
        Ok(Ingested {
            report,
            streams,
            warnings,
            stats,
        })
    }
}
