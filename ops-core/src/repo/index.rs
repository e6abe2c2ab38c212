//! The chunk index on local disk: blob id → pack, offset and lengths.
//!
//! The repository's index files (`index/…`) together say where every blob is. Held in
//! memory that union costs ~160 bytes a chunk: 10 GB for a 500 GB database at 8 KiB
//! chunks, on every backup, restore and verify. So it is kept on disk instead, as a
//! few sorted *runs* of fixed 48-byte records (id, pack number, offset, stored length,
//! plain length) and a pack table (pack number → pack id, size). A lookup finds its
//! 4 KiB block through an in-memory fence (8 bytes per 85 records, ~0.1 byte a chunk)
//! and reads that one block: memory no longer grows with the repository.
//!
//! The runs live in a directory: the local cache (`<cache>/<repository id>/index/`),
//! kept between runs and refreshed from the store's listing of `index/` (new index
//! files become a new run; runs are merged when there are more than [`MAX_RUNS`]), or
//! a temporary directory removed afterwards. The cache is never the truth: a cache
//! whose index files are no longer all in the store (a prune replaced them) is
//! rebuilt, and every file is checked before use — the pack table and the fences
//! against their BLAKE3, a run against its BLAKE3 unless its size, inode and
//! modification time are as recorded when it was written (git's index trusts stat
//! data the same way, so that opening does not hash 480 MB for 10 million chunks).
//! Damage that kept a run's stat data could only make a lookup miss (a chunk stored
//! again) or point a restore at wrong bytes, which authentication rejects: a missing,
//! stale or damaged cache costs time, never a wrong answer.
//!
//! What must not live here: anything about pack contents or manifests.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

use super::Repository;
use super::format::{self, ChunkId, INDEX_DIR};
use super::pack::IndexFile;

/// Bytes per index record: id (32), pack number, offset, stored length, plain length.
const RECORD: usize = 48;
/// Records per block: one block is one read of a lookup (4080 bytes).
const BLOCK_RECORDS: usize = 85;
/// Bytes per pack table record: pack id (32), size (8).
const PACK_RECORD: usize = 40;
/// Records sorted in memory before they spill to a file (12 MiB).
const SORT_BUFFER: usize = 256 * 1024;
/// Runs kept before they are merged into one.
pub(crate) const MAX_RUNS: usize = 8;
/// Index files fetched at once while building.
const FETCH_AHEAD: usize = 4;
/// Version of the cache layout; another version is rebuilt.
const CACHE_VERSION: u32 = 1;

type Rec = [u8; RECORD];

/// Where a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw: u32,
}

/// A pack as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackRef {
    pub id: String,
    pub size: u64,
}

fn encode(id: &ChunkId, loc: &Location) -> Rec {
    let mut r = [0u8; RECORD];
    r[..32].copy_from_slice(&id.0);
    r[32..36].copy_from_slice(&loc.pack.to_le_bytes());
    r[36..40].copy_from_slice(&loc.offset.to_le_bytes());
    r[40..44].copy_from_slice(&loc.length.to_le_bytes());
    r[44..48].copy_from_slice(&loc.raw.to_le_bytes());
    r
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn decode(r: &[u8]) -> (ChunkId, Location) {
    let mut id = [0u8; 32];
    id.copy_from_slice(&r[..32]);
    (
        ChunkId(id),
        Location {
            pack: u32_at(r, 32),
            offset: u32_at(r, 36),
            length: u32_at(r, 40),
            raw: u32_at(r, 44),
        },
    )
}

fn prefix(id: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&id[..8]);
    u64::from_be_bytes(p)
}

fn io_error(what: impl Into<String>, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{} {}", what.into(), path.display()), e)
}

fn random_name(kind: &str) -> String {
    format!("{kind}-{}", super::random_hex(8))
}

fn create_private(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error("creating", path, e))
}

/// One sorted run of records, read by block.
#[derive(Debug)]
struct Run {
    file: File,
    path: PathBuf,
    records: u64,
    /// The id prefix of each block's first record.
    fences: Vec<u64>,
}

impl Run {
    fn get(&self, id: &ChunkId) -> Result<Option<Location>> {
        let p = prefix(&id.0);
        let mut block = self.fences.partition_point(|f| *f <= p);
        let mut buf = [0u8; RECORD * BLOCK_RECORDS];
        while block > 0 {
            block -= 1;
            let first = block as u64 * BLOCK_RECORDS as u64;
            let n = (self.records - first).min(BLOCK_RECORDS as u64) as usize;
            let bytes = &mut buf[..n * RECORD];
            self.file
                .read_exact_at(bytes, first * RECORD as u64)
                .map_err(|e| Error::io("reading the local chunk index", e))?;
            let (mut lo, mut hi) = (0usize, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                let r = &bytes[mid * RECORD..(mid + 1) * RECORD];
                match r[..32].cmp(&id.0[..]) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return Ok(Some(decode(r).1)),
                }
            }
            // Records with this prefix may begin in the block before.
            if self.fences[block] != p {
                break;
            }
        }
        Ok(None)
    }

    /// Opens a run file, checking its length and BLAKE3 and collecting its fences.
    fn open_checked(path: &Path, records: u64, blake3_hex: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_error("opening", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error("reading", path, e))?
            .len();
        if len != records * RECORD as u64 {
            return Err(Error::corrupt(format!(
                "{} has {len} bytes, not {records} records",
                path.display()
            )));
        }
        let mut reader = BufReader::with_capacity(256 * 1024, &file);
        let mut hasher = blake3::Hasher::new();
        let mut fences = Vec::with_capacity((records as usize).div_ceil(BLOCK_RECORDS));
        let mut rec = [0u8; RECORD];
        for i in 0..records {
            reader
                .read_exact(&mut rec)
                .map_err(|e| io_error("reading", path, e))?;
            if i.is_multiple_of(BLOCK_RECORDS as u64) {
                fences.push(prefix(&rec));
            }
            hasher.update(&rec);
        }
        if hasher.finalize().to_hex().as_str() != blake3_hex {
            return Err(Error::corrupt(format!(
                "{} does not match its checksum",
                path.display()
            )));
        }
        drop(reader);
        Ok(Self {
            file,
            path: path.to_owned(),
            records,
            fences,
        })
    }
}

/// Writes sorted records into a run file, skipping repeated ids.
struct RunOut {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    records: u64,
    fences: Vec<u64>,
    last: Option<[u8; 32]>,
}

impl RunOut {
    fn create(path: PathBuf) -> Result<Self> {
        let file = create_private(&path)?;
        Ok(Self {
            path,
            out: BufWriter::with_capacity(256 * 1024, file),
            hasher: blake3::Hasher::new(),
            records: 0,
            fences: Vec::new(),
            last: None,
        })
    }

    fn push(&mut self, rec: &Rec) -> Result<()> {
        let mut id = [0u8; 32];
        id.copy_from_slice(&rec[..32]);
        if self.last == Some(id) {
            return Ok(());
        }
        self.last = Some(id);
        if self.records.is_multiple_of(BLOCK_RECORDS as u64) {
            self.fences.push(prefix(rec));
        }
        self.hasher.update(rec);
        self.out
            .write_all(rec)
            .map_err(|e| io_error("writing", &self.path, e))?;
        self.records += 1;
        Ok(())
    }

    fn finish(self) -> Result<(Run, String)> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_error("writing", &self.path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_error("writing", &self.path, e))?;
        drop(file);
        Ok((
            Run {
                file: File::open(&self.path).map_err(|e| io_error("opening", &self.path, e))?,
                path: self.path,
                records: self.records,
                fences: self.fences,
            },
            self.hasher.finalize().to_hex().to_string(),
        ))
    }
}

/// Merges sorted record files into one run; of equal ids the earliest input wins.
fn merge(inputs: &[PathBuf], out: PathBuf) -> Result<(Run, String)> {
    let mut readers = Vec::with_capacity(inputs.len());
    for p in inputs {
        let f = File::open(p).map_err(|e| io_error("opening", p, e))?;
        readers.push((BufReader::with_capacity(64 * 1024, f), p));
    }
    let next = |i: usize, readers: &mut Vec<(BufReader<File>, &PathBuf)>| -> Result<Option<Rec>> {
        let mut rec = [0u8; RECORD];
        let (r, p) = &mut readers[i];
        match r.read_exact(&mut rec) {
            Ok(()) => Ok(Some(rec)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io_error("reading", p, e)),
        }
    };
    let mut heap: BinaryHeap<Reverse<([u8; 32], usize, Rec)>> = BinaryHeap::new();
    for i in 0..readers.len() {
        if let Some(rec) = next(i, &mut readers)? {
            heap.push(Reverse((id_key(&rec), i, rec)));
        }
    }
    let mut w = RunOut::create(out)?;
    while let Some(Reverse((_, i, rec))) = heap.pop() {
        w.push(&rec)?;
        if let Some(rec) = next(i, &mut readers)? {
            heap.push(Reverse((id_key(&rec), i, rec)));
        }
    }
    w.finish()
}

fn id_key(rec: &Rec) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(&rec[..32]);
    k
}

/// Sorts records of any number into one run with bounded memory: batches of
/// [`SORT_BUFFER`] are sorted and spilled, then merged.
struct Sorter {
    dir: PathBuf,
    buffer: Vec<Rec>,
    spills: Vec<PathBuf>,
}

impl Sorter {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            buffer: Vec::new(),
            spills: Vec::new(),
        }
    }

    fn push(&mut self, rec: Rec) -> Result<()> {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(SORT_BUFFER);
        }
        self.buffer.push(rec);
        if self.buffer.len() >= SORT_BUFFER {
            let path = self.dir.join(random_name("spill"));
            let (_, _) = self.write_sorted(path.clone())?;
            self.spills.push(path);
        }
        Ok(())
    }

    fn write_sorted(&mut self, path: PathBuf) -> Result<(Run, String)> {
        // Unstable, so no scratch buffer: of two records with one id either may be
        // kept, and both name a valid copy. The buffer keeps its capacity: growing it
        // again on another thread would leave another allocator arena at its peak.
        self.buffer.sort_unstable_by(|a, b| a[..32].cmp(&b[..32]));
        let mut w = RunOut::create(path)?;
        for rec in &self.buffer {
            w.push(rec)?;
        }
        self.buffer.clear();
        w.finish()
    }

    fn finish(mut self, out: PathBuf) -> Result<(Run, String)> {
        if self.spills.is_empty() {
            return self.write_sorted(out);
        }
        if !self.buffer.is_empty() {
            let path = self.dir.join(random_name("spill"));
            self.write_sorted(path.clone())?;
            self.spills.push(path);
        }
        let result = merge(&self.spills, out);
        for p in &self.spills {
            let _ = fs::remove_file(p);
        }
        result
    }
}

/// Pack number → pack id and size, a file of fixed records.
#[derive(Debug)]
struct PackTable {
    file: File,
    count: u32,
}

impl PackTable {
    fn get(&self, number: u32) -> Result<PackRef> {
        if number >= self.count {
            return Err(Error::internal(format!(
                "pack number {number} is outside the local index's {} packs",
                self.count
            )));
        }
        let mut rec = [0u8; PACK_RECORD];
        self.file
            .read_exact_at(&mut rec, u64::from(number) * PACK_RECORD as u64)
            .map_err(|e| Error::io("reading the local pack table", e))?;
        let mut size = [0u8; 8];
        size.copy_from_slice(&rec[32..]);
        Ok(PackRef {
            id: hex::encode(&rec[..32]),
            size: u64::from_le_bytes(size),
        })
    }

    fn open_checked(path: &Path, count: u32, blake3_hex: &str) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| io_error("reading", path, e))?;
        if bytes.len() != count as usize * PACK_RECORD
            || blake3::hash(&bytes).to_hex().as_str() != blake3_hex
        {
            return Err(Error::corrupt(format!(
                "{} does not match its checksum",
                path.display()
            )));
        }
        let file = File::open(path).map_err(|e| io_error("opening", path, e))?;
        Ok(Self { file, count })
    }
}

/// Builds runs and the pack table from index files.
struct Builder {
    dir: PathBuf,
    sorter: Sorter,
    packs_path: PathBuf,
    packs: BufWriter<File>,
    packs_hasher: blake3::Hasher,
    pack_count: u32,
}

impl Builder {
    /// Starts a pack table that continues `base` (the cache's current one).
    fn new(dir: &Path, base: Option<&Path>) -> Result<Self> {
        let packs_path = dir.join(random_name("packs"));
        let mut packs = BufWriter::new(create_private(&packs_path)?);
        let mut packs_hasher = blake3::Hasher::new();
        let mut pack_count = 0u32;
        if let Some(base) = base {
            let bytes = fs::read(base).map_err(|e| io_error("reading", base, e))?;
            packs
                .write_all(&bytes)
                .map_err(|e| io_error("writing", &packs_path, e))?;
            packs_hasher.update(&bytes);
            pack_count = (bytes.len() / PACK_RECORD) as u32;
        }
        Ok(Self {
            dir: dir.to_owned(),
            sorter: Sorter::new(dir),
            packs_path,
            packs,
            packs_hasher,
            pack_count,
        })
    }

    fn add(&mut self, key: &str, file: &IndexFile) -> Result<()> {
        for pack in &file.packs {
            let mut rec = [0u8; PACK_RECORD];
            hex::decode_to_slice(&pack.id, &mut rec[..32]).map_err(|_| {
                Error::corrupt(format!(
                    "index file {key} names a pack with a malformed id '{}'",
                    pack.id
                ))
            })?;
            rec[32..].copy_from_slice(&pack.size.to_le_bytes());
            self.packs
                .write_all(&rec)
                .map_err(|e| io_error("writing", &self.packs_path, e))?;
            self.packs_hasher.update(&rec);
            let number = self.pack_count;
            self.pack_count = self
                .pack_count
                .checked_add(1)
                .ok_or_else(|| Error::internal("more than 4 billion packs"))?;
            for b in &pack.blobs {
                self.sorter.push(encode(
                    &b.id,
                    &Location {
                        pack: number,
                        offset: b.offset,
                        length: b.length,
                        raw: b.raw,
                    },
                ))?;
            }
        }
        Ok(())
    }

    /// Writes the run and the pack table.
    fn finish(self) -> Result<Built> {
        let run_name = random_name("run");
        let (run, run_hash) = self.sorter.finish(self.dir.join(&run_name))?;
        let file = self
            .packs
            .into_inner()
            .map_err(|e| io_error("writing", &self.packs_path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_error("writing", &self.packs_path, e))?;
        let packs = PackTable {
            file: File::open(&self.packs_path)
                .map_err(|e| io_error("opening", &self.packs_path, e))?,
            count: self.pack_count,
        };
        Ok(Built {
            run,
            run_name,
            run_hash,
            packs,
            packs_name: file_name(&self.packs_path),
            packs_hash: self.packs_hasher.finalize().to_hex().to_string(),
        })
    }
}

struct Built {
    run: Run,
    run_name: String,
    run_hash: String,
    packs: PackTable,
    packs_name: String,
    packs_hash: String,
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The cache directory's table of contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheMeta {
    version: u32,
    repository: String,
    runs: Vec<RunMeta>,
    packs: FileMeta,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunMeta {
    file: String,
    records: u64,
    blake3: String,
    /// The index files (`index/…` keys) whose blobs this run holds.
    index_keys: Vec<String>,
    /// How the run file looked when written, and its fences: while size, inode and
    /// modification time are unchanged, the run opens by reading its fences (one
    /// 8-byte prefix per 85 records) instead of hashing all of it, so that opening
    /// does not grow with the repository. A file that changed is hashed whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seal: Option<RunSeal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RunSeal {
    len: u64,
    inode: u64,
    modified_ns: i128,
    fences_blake3: String,
}

fn stat_of(path: &Path) -> Result<(u64, u64, i128)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).map_err(|e| io_error("reading", path, e))?;
    Ok((
        m.len(),
        m.ino(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

fn fences_path(dir: &Path, run_file: &str) -> PathBuf {
    dir.join(format!("{run_file}.fences"))
}

/// Describes a run just written: writes its fences beside it and records its stat.
fn run_meta(
    dir: &Path,
    file: &str,
    run: &Run,
    blake3: String,
    index_keys: Vec<String>,
) -> Result<RunMeta> {
    let bytes: Vec<u8> = run.fences.iter().flat_map(|f| f.to_le_bytes()).collect();
    let path = fences_path(dir, file);
    let _ = fs::remove_file(&path);
    let mut f = create_private(&path)?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error("writing", &path, e))?;
    let (len, inode, modified_ns) = stat_of(&dir.join(file))?;
    Ok(RunMeta {
        file: file.to_owned(),
        records: run.records,
        blake3,
        index_keys,
        seal: Some(RunSeal {
            len,
            inode,
            modified_ns,
            fences_blake3: blake3::hash(&bytes).to_hex().to_string(),
        }),
    })
}

/// Opens a run of the cache: by its fences while the file is as written, else by
/// hashing it whole.
fn open_run(dir: &Path, meta: &RunMeta) -> Result<Run> {
    let path = dir.join(&meta.file);
    if let Some(seal) = &meta.seal
        && stat_of(&path)? == (seal.len, seal.inode, seal.modified_ns)
        && seal.len == meta.records * RECORD as u64
    {
        let fpath = fences_path(dir, &meta.file);
        let bytes = fs::read(&fpath).map_err(|e| io_error("reading", &fpath, e))?;
        let blocks = (meta.records as usize).div_ceil(BLOCK_RECORDS);
        if bytes.len() == blocks * 8 && blake3::hash(&bytes).to_hex().as_str() == seal.fences_blake3
        {
            let fences = bytes
                .chunks_exact(8)
                .map(|b| {
                    let mut x = [0u8; 8];
                    x.copy_from_slice(b);
                    u64::from_le_bytes(x)
                })
                .collect();
            return Ok(Run {
                file: File::open(&path).map_err(|e| io_error("opening", &path, e))?,
                path,
                records: meta.records,
                fences,
            });
        }
    }
    Run::open_checked(&path, meta.records, &meta.blake3)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileMeta {
    file: String,
    records: u32,
    blake3: String,
}

const META: &str = "meta.json";
/// Held (flock) while a process reads or updates the cache: without it, one process
/// could remove the pack table or a run another one had just read the name of.
const LOCK: &str = "lock";

/// Takes the cache's lock, waiting for another process that holds it.
fn lock_cache(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_error("opening", &path, e))?;
    file.lock().map_err(|e| io_error("locking", &path, e))?;
    Ok(file)
}

/// The union of the repository's index files, on local disk.
#[derive(Debug)]
pub(crate) struct Index {
    runs: Vec<Run>,
    packs: PackTable,
    /// Keeps a temporary directory (no cache) alive as long as the index.
    _temp: Option<tempfile::TempDir>,
}

impl Index {
    /// Where the blob is, if the repository has it.
    pub(crate) fn get(&self, id: &ChunkId) -> Result<Option<Location>> {
        for run in self.runs.iter().rev() {
            if let Some(loc) = run.get(id)? {
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }

    /// True when the repository has the blob.
    pub(crate) fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.get(id)?.is_some())
    }

    /// The pack with this number.
    pub(crate) fn pack(&self, number: u32) -> Result<PackRef> {
        self.packs.get(number)
    }

    fn from_built(built: Built, older: Vec<Run>, temp: Option<tempfile::TempDir>) -> Self {
        let mut runs = older;
        runs.push(built.run);
        Self {
            runs,
            packs: built.packs,
            _temp: temp,
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("creating the directory", dir, e))
}

/// The items of a channel as a stream.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("index task failed: {e}")))?
}

impl Repository {
    /// The keys of every index file in the store, sorted.
    pub(crate) async fn index_keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .target()
            .list(INDEX_DIR)
            .await?
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// Fetches and opens index files, a few at a time, in the order of `keys`.
    ///
    /// Opening (decrypt, decompress, parse a few MB of JSON) happens on one dedicated
    /// thread: spread over the blocking pool, each thread's allocator arena kept its
    /// own high-water mark of those buffers, and a cold index build of 10 million
    /// chunks peaked at 340 MB instead of 80.
    pub(crate) fn fetch_index_files(
        &self,
        keys: Vec<String>,
    ) -> impl futures::Stream<Item = Result<(String, IndexFile)>> + use<> {
        let (raw_tx, mut raw_rx) =
            tokio::sync::mpsc::channel::<Result<(String, bytes::Bytes)>>(FETCH_AHEAD);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<(String, IndexFile)>>(1);
        let repo = self.clone();
        tokio::spawn(async move {
            let fetches = futures::stream::iter(keys)
                .map(|key| {
                    let repo = &repo;
                    async move {
                        super::read_object(repo.target().as_ref(), &key)
                            .await
                            .map(|bytes| (key, bytes))
                    }
                })
                .buffered(FETCH_AHEAD);
            let mut fetches = std::pin::pin!(fetches);
            while let Some(item) = fetches.next().await {
                let failed = item.is_err();
                if raw_tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        let keys = self.keys.clone();
        let spawned = std::thread::Builder::new()
            .name("dbops-index".into())
            .spawn(move || {
                while let Some(item) = raw_rx.blocking_recv() {
                    let opened = item.and_then(|(key, bytes)| {
                        let file: IndexFile = format::open_document(
                            &keys,
                            b"dbops index",
                            &bytes,
                            &format!("index file {key}"),
                        )?;
                        Ok((key, file))
                    });
                    let failed = opened.is_err();
                    if tx.blocking_send(opened).is_err() || failed {
                        break;
                    }
                }
            });
        let spawn_error = spawned
            .err()
            .map(|e| Error::internal(format!("starting the index reader thread: {e}")));
        futures::stream::iter(spawn_error.map(Err)).chain(tokio_stream_of(rx))
    }

    /// Adds the index files `keys` to `builder`, one at a time.
    async fn add_index_files(&self, mut builder: Builder, keys: Vec<String>) -> Result<Builder> {
        let mut files = std::pin::pin!(self.fetch_index_files(keys));
        while let Some((key, file)) = files.try_next().await? {
            builder = blocking(move || {
                builder.add(&key, &file)?;
                Ok(builder)
            })
            .await?;
        }
        Ok(builder)
    }

    /// Loads the index: from the local cache when this repository has one (see the
    /// module docs), else into a temporary directory.
    ///
    /// # Errors
    /// Storage errors and damaged index files. A damaged or unusable cache is not an
    /// error: it is rebuilt, or bypassed with a warning.
    pub(crate) async fn load_index(&self) -> Result<Index> {
        let keys = self.index_keys().await?;
        if let Some(root) = self.cache_dir() {
            let dir = root.join("index");
            match self.load_cached_index(&dir, &keys).await {
                Ok(index) => return Ok(index),
                Err(e) if e.kind() == crate::ErrorKind::Io => {
                    tracing::warn!(
                        "the local index cache at {} cannot be used ({e}); reading the index without it",
                        dir.display()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let temp = tempfile::Builder::new()
            .prefix("dbops-index-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory for the chunk index", e))?;
        let builder = Builder::new(temp.path(), None)?;
        let built = blocking({
            let b = self.add_index_files(builder, keys).await?;
            move || b.finish()
        })
        .await?;
        Ok(Index::from_built(built, Vec::new(), Some(temp)))
    }

    async fn load_cached_index(&self, dir: &Path, keys: &[String]) -> Result<Index> {
        create_private_dir(dir)?;
        // Released when this function returns (the file closes).
        let _lock = {
            let dir = dir.to_owned();
            blocking(move || lock_cache(&dir)).await?
        };
        let repository = self.config().id.clone();
        let listed: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let cached = {
            let dir = dir.to_owned();
            let repository = repository.clone();
            blocking(move || Ok(open_cache(&dir, &repository))).await?
        };
        let (mut meta, runs, packs) = match cached {
            Ok(Some(found)) => found,
            Ok(None) => return self.rebuild_cache(dir, keys, None).await,
            Err(e) => {
                tracing::warn!(
                    "the local index cache at {} is damaged ({e}); rebuilding it from the repository",
                    dir.display()
                );
                return self.rebuild_cache(dir, keys, None).await;
            }
        };
        let covered: BTreeSet<&str> = meta
            .runs
            .iter()
            .flat_map(|r| r.index_keys.iter().map(String::as_str))
            .collect();
        if !covered.is_subset(&listed) {
            // Index files were replaced (by a prune): entries may point at packs that
            // are gone, so none of the cache can be trusted.
            tracing::debug!("index files were replaced since the cache was built; rebuilding");
            return self.rebuild_cache(dir, keys, Some(meta)).await;
        }
        let new: Vec<String> = keys
            .iter()
            .filter(|k| !covered.contains(k.as_str()))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(Index {
                runs,
                packs,
                _temp: None,
            });
        }
        let old_packs = dir.join(&meta.packs.file);
        let builder = {
            let dir = dir.to_owned();
            blocking(move || Builder::new(&dir, Some(&old_packs))).await?
        };
        let built = blocking({
            let b = self.add_index_files(builder, new.clone()).await?;
            move || b.finish()
        })
        .await?;
        let replaced = meta.clone();
        meta.runs.push(run_meta(
            dir,
            &built.run_name,
            &built.run,
            built.run_hash.clone(),
            new,
        )?);
        meta.packs = FileMeta {
            file: built.packs_name.clone(),
            records: built.packs.count,
            blake3: built.packs_hash.clone(),
        };
        let mut index = Index::from_built(built, runs, None);
        if index.runs.len() > MAX_RUNS {
            let dir2 = dir.to_owned();
            let meta2 = meta.clone();
            let (run, run_meta) = blocking(move || compact(&dir2, &meta2)).await?;
            index.runs = vec![run];
            meta.runs = vec![run_meta];
        }
        let dir = dir.to_owned();
        blocking(move || write_meta(&dir, &meta, Some(&replaced))).await?;
        Ok(index)
    }

    async fn rebuild_cache(
        &self,
        dir: &Path,
        keys: &[String],
        replaced: Option<CacheMeta>,
    ) -> Result<Index> {
        let builder = {
            let dir = dir.to_owned();
            blocking(move || Builder::new(&dir, None)).await?
        };
        let built = blocking({
            let b = self.add_index_files(builder, keys.to_vec()).await?;
            move || b.finish()
        })
        .await?;
        let meta = CacheMeta {
            version: CACHE_VERSION,
            repository: self.config().id.clone(),
            runs: vec![run_meta(
                dir,
                &built.run_name,
                &built.run,
                built.run_hash.clone(),
                keys.to_vec(),
            )?],
            packs: FileMeta {
                file: built.packs_name.clone(),
                records: built.packs.count,
                blake3: built.packs_hash.clone(),
            },
        };
        let d = dir.to_owned();
        blocking(move || write_meta(&d, &meta, replaced.as_ref())).await?;
        Ok(Index::from_built(built, Vec::new(), None))
    }
}

/// Reads and checks the cache: `Ok(None)` when there is none (or of another version or
/// repository), an error when it is damaged.
#[allow(clippy::type_complexity)]
fn open_cache(dir: &Path, repository: &str) -> Result<Option<(CacheMeta, Vec<Run>, PackTable)>> {
    let path = dir.join(META);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::corrupt(format!("{}: {e}", path.display()))),
    };
    let meta: CacheMeta = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(format!("{} is malformed: {e}", path.display())))?;
    if meta.version != CACHE_VERSION || meta.repository != repository {
        return Ok(None);
    }
    let mut runs = Vec::with_capacity(meta.runs.len());
    for r in &meta.runs {
        runs.push(open_run(dir, r)?);
    }
    let packs = PackTable::open_checked(
        &dir.join(&meta.packs.file),
        meta.packs.records,
        &meta.packs.blake3,
    )?;
    Ok(Some((meta, runs, packs)))
}

/// Merges every run of `meta` into one.
fn compact(dir: &Path, meta: &CacheMeta) -> Result<(Run, RunMeta)> {
    let inputs: Vec<PathBuf> = meta.runs.iter().rev().map(|r| dir.join(&r.file)).collect();
    let name = random_name("run");
    let (run, hash) = merge(&inputs, dir.join(&name))?;
    let keys = meta
        .runs
        .iter()
        .flat_map(|r| r.index_keys.iter().cloned())
        .collect();
    let described = run_meta(dir, &name, &run, hash, keys)?;
    Ok((run, described))
}

/// Replaces the table of contents atomically, then removes the files it no longer
/// names: those of the contents it replaced, and leftovers older than an hour (another
/// process may be writing younger ones).
fn write_meta(dir: &Path, meta: &CacheMeta, replaced: Option<&CacheMeta>) -> Result<()> {
    let tmp = dir.join(random_name("meta"));
    {
        let mut f = create_private(&tmp)?;
        let body = serde_json::to_vec(meta)
            .map_err(|e| Error::internal(format!("serialize cache meta: {e}")))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_error("writing", &tmp, e))?;
    }
    fs::rename(&tmp, dir.join(META)).map_err(|e| io_error("replacing", &dir.join(META), e))?;
    let keep: BTreeSet<&str> = meta
        .runs
        .iter()
        .map(|r| r.file.as_str())
        .chain([meta.packs.file.as_str(), META, LOCK])
        .collect();
    let old: BTreeSet<&str> = replaced
        .map(|m| {
            m.runs
                .iter()
                .map(|r| r.file.as_str())
                .chain([m.packs.file.as_str()])
                .collect()
        })
        .unwrap_or_default();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.strip_suffix(".fences").unwrap_or(&name);
        if keep.contains(owner) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if old.contains(owner) || stale {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// A set of blob ids on local disk, for prune: every id some backup references,
/// however many. Memory: the sort buffer (12 MiB) while building, fences after.
pub(crate) struct IdSetBuilder {
    sorter: Sorter,
    temp: tempfile::TempDir,
}

/// A finished [`IdSetBuilder`].
pub(crate) struct IdSet {
    run: Run,
    _temp: tempfile::TempDir,
}

impl IdSetBuilder {
    pub(crate) fn new() -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("dbops-ids-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory for prune", e))?;
        Ok(Self {
            sorter: Sorter::new(temp.path()),
            temp,
        })
    }

    pub(crate) fn insert(&mut self, id: &ChunkId) -> Result<()> {
        let mut rec = [0u8; RECORD];
        rec[..32].copy_from_slice(&id.0);
        self.sorter.push(rec)
    }

    pub(crate) fn finish(self) -> Result<IdSet> {
        let (run, _) = self.sorter.finish(self.temp.path().join("ids"))?;
        Ok(IdSet {
            run,
            _temp: self.temp,
        })
    }
}

impl IdSet {
    pub(crate) fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.run.get(id)?.is_some())
    }

    pub(crate) fn len(&self) -> u64 {
        self.run.records
    }

    /// Every id, in order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(ChunkId) -> Result<()>) -> Result<()> {
        let file =
            File::open(&self.run.path).map_err(|e| io_error("opening", &self.run.path, e))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut rec = [0u8; RECORD];
        for _ in 0..self.run.records {
            reader
                .read_exact(&mut rec)
                .map_err(|e| Error::io("reading prune's set of referenced chunks", e))?;
            f(decode(&rec).0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Rec {
        let id = blake3::hash(&i.to_le_bytes());
        encode(
            &ChunkId(*id.as_bytes()),
            &Location {
                pack: (i % 7) as u32,
                offset: i as u32,
                length: 1,
                raw: 2,
            },
        )
    }

    #[test]
    fn sorter_spills_merges_and_finds_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Sorter::new(dir.path());
        let n = SORT_BUFFER as u64 * 2 + 1234;
        for i in 0..n {
            s.push(rec(i)).expect("push");
        }
        // A repeated id is kept once, first one wins.
        let mut dup = rec(5);
        dup[36] ^= 0xff;
        s.push(dup).expect("push");
        let (run, _) = s.finish(dir.path().join("run")).expect("finish");
        assert_eq!(run.records, n);
        for i in (0..n).step_by(997).chain([5, n - 1]) {
            let (id, loc) = decode(&rec(i));
            assert_eq!(run.get(&id).expect("get"), Some(loc), "record {i}");
        }
        let absent = ChunkId(*blake3::hash(b"absent").as_bytes());
        assert_eq!(run.get(&absent).expect("get"), None);
        let leftovers = fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "spill files are removed");
    }

    #[test]
    fn equal_prefixes_across_blocks_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Sorter::new(dir.path());
        // 300 ids sharing their first 8 bytes span several blocks.
        let mut ids = Vec::new();
        for i in 0..300u32 {
            let mut id = [7u8; 32];
            id[8..12].copy_from_slice(&i.to_be_bytes());
            ids.push(ChunkId(id));
            s.push(encode(
                &ChunkId(id),
                &Location {
                    pack: i,
                    offset: 0,
                    length: 0,
                    raw: 0,
                },
            ))
            .expect("push");
        }
        let (run, hash) = s.finish(dir.path().join("run")).expect("finish");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(run.get(id).expect("get").map(|l| l.pack), Some(i as u32));
        }
        let reopened =
            Run::open_checked(&dir.path().join("run"), run.records, &hash).expect("reopen");
        assert_eq!(reopened.fences, run.fences);
        assert!(Run::open_checked(&dir.path().join("run"), run.records, "00").is_err());
    }
}
