//! Engine conformance suite.
//!
//! [`round_trip`] dumps a source database into memory, checks the streams against the
//! engine contract (unique names, table data as `\n`-terminated records, row counts),
//! restores them into a target database, then re-dumps both databases' data and
//! compares every table by row count and order-independent content digest. Engines add
//! their own schema comparison with their native tools (pg_dump, mariadb-dump), which
//! this suite cannot do engine-independently.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream;

use crate::digest::{TableDigest, compare_tables};
use crate::{
    ByteStream, DatabaseEngine, DumpOptions, DumpReport, DumpSink, Error, ErrorKind,
    RestoreOptions, Result, StreamRole, StreamSource, StreamSpec, StreamSummary, StreamWriter,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A dump held in memory: the streams in the order they were finished.
#[derive(Debug, Default)]
pub struct MemoryDump {
    streams: Mutex<Vec<(StreamSpec, Vec<Bytes>, StreamSummary)>>,
    open: Mutex<Vec<String>>,
    warnings: Mutex<Vec<String>>,
    specs: Vec<StreamSpec>,
}

impl MemoryDump {
    /// An empty dump to pass to [`DatabaseEngine::dump`] as the sink.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Freezes the dump into a [`StreamSource`] for a restore.
    pub fn into_source(self: Arc<Self>) -> Arc<Self> {
        let streams = lock(&self.streams).clone();
        let warnings = lock(&self.warnings).clone();
        let specs = streams.iter().map(|(s, _, _)| s.clone()).collect();
        Arc::new(Self {
            streams: Mutex::new(streams),
            open: Mutex::new(Vec::new()),
            warnings: Mutex::new(warnings),
            specs,
        })
    }

    /// Every stream with its summary.
    pub fn summaries(&self) -> Vec<(StreamSpec, StreamSummary)> {
        lock(&self.streams)
            .iter()
            .map(|(s, _, m)| (s.clone(), m.clone()))
            .collect()
    }

    /// The whole content of one stream.
    pub fn content(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.streams)
            .iter()
            .find(|(s, _, _)| s.name == name)
            .map(|(_, parts, _)| parts.iter().flat_map(|b| b.iter().copied()).collect())
    }

    /// Warnings recorded by the engine.
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }

    /// Per-table digests of the table data streams.
    pub fn table_digests(&self) -> BTreeMap<String, TableDigest> {
        let mut out: BTreeMap<String, TableDigest> = BTreeMap::new();
        for (spec, parts, _) in lock(&self.streams).iter() {
            if let (StreamRole::TableData, Some(t)) = (spec.role, &spec.table) {
                let mut h = crate::digest::RecordHasher::new();
                for p in parts {
                    h.update(p);
                }
                out.entry(t.to_string()).or_default().merge(&h.finish());
            }
        }
        out
    }
}

struct MemoryWriter {
    spec: StreamSpec,
    parts: Vec<Bytes>,
    bytes: u64,
    dump: Arc<MemoryDump>,
}

/// The sink side: [`MemoryDump`] behind an `Arc` records streams.
#[derive(Debug)]
pub struct MemorySink(pub Arc<MemoryDump>);

#[async_trait]
impl DumpSink for MemorySink {
    async fn open_stream(&self, spec: StreamSpec) -> Result<Box<dyn StreamWriter>> {
        let mut open = lock(&self.0.open);
        let finished = lock(&self.0.streams)
            .iter()
            .any(|(s, _, _)| s.name == spec.name);
        if finished || open.contains(&spec.name) {
            return Err(Error::internal(format!(
                "engine opened stream '{}' twice",
                spec.name
            )));
        }
        open.push(spec.name.clone());
        Ok(Box::new(MemoryWriter {
            spec,
            parts: Vec::new(),
            bytes: 0,
            dump: Arc::clone(&self.0),
        }))
    }

    fn warn(&self, message: String) {
        lock(&self.0.warnings).push(message);
    }
}

#[async_trait]
impl StreamWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.bytes += data.len() as u64;
        if !data.is_empty() {
            self.parts.push(data);
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<StreamSummary> {
        let this = *self;
        let rows = this
            .parts
            .iter()
            .map(|p| memchr::memchr_iter(b'\n', p).count() as u64)
            .sum();
        let summary = StreamSummary {
            bytes: this.bytes,
            rows,
        };
        lock(&this.dump.streams).push((this.spec, this.parts, summary.clone()));
        Ok(summary)
    }
}

#[async_trait]
impl StreamSource for MemoryDump {
    fn streams(&self) -> &[StreamSpec] {
        &self.specs
    }

    async fn open(&self, name: &str) -> Result<ByteStream> {
        let parts = lock(&self.streams)
            .iter()
            .find(|(s, _, _)| s.name == name)
            .map(|(_, p, _)| p.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no stream named '{name}' in the dump"),
                )
            })?;
        Ok(Box::pin(stream::iter(parts.into_iter().map(Ok))))
    }
}

/// Dumps `engine` into memory with `options` and checks the stream contract.
///
/// # Panics
/// When the engine breaks the contract; the message says how.
pub async fn dump_to_memory(
    engine: &dyn DatabaseEngine,
    options: &DumpOptions,
) -> (Arc<MemoryDump>, DumpReport) {
    let dump = MemoryDump::new();
    let report = engine
        .dump(options, Arc::new(MemorySink(Arc::clone(&dump))))
        .await
        .unwrap_or_else(|e| panic!("dump of {} failed: {e}", engine.location()));
    assert!(
        lock(&dump.open).len() == lock(&dump.streams).len(),
        "the engine left streams unfinished: opened {:?}",
        lock(&dump.open)
    );
    for (spec, parts, summary) in lock(&dump.streams).iter() {
        if spec.role == StreamRole::TableData {
            assert!(
                spec.table.is_some(),
                "table data stream '{}' names no table",
                spec.name
            );
            if let Some(last) = parts.last() {
                assert!(
                    last.ends_with(b"\n"),
                    "table data stream '{}' does not end with a newline",
                    spec.name
                );
            }
        }
        assert_eq!(
            summary.bytes,
            parts.iter().map(|p| p.len() as u64).sum::<u64>(),
            "byte count of '{}'",
            spec.name
        );
    }
    if !options.data_only {
        assert!(
            lock(&dump.streams)
                .iter()
                .any(|(s, _, _)| s.role == StreamRole::Schema),
            "a full dump has no schema stream"
        );
    }
    (dump, report)
}

/// Re-dumps the data of `engine` and returns per-table digests (the library's
/// [`crate::digest::table_digests`], kept here for the suites' callers).
pub use crate::digest::table_digests;

/// The full round trip: dump `source`, restore into `target` (an empty database, or
/// one that `restore.create` creates), compare every table. Then checks that a second
/// restore into the now non-empty target without `clean` is refused with
/// [`ErrorKind::TargetNotEmpty`].
///
/// Returns the dump for engine-specific checks.
///
/// # Panics
/// On any failure, with a message that says which table or rule failed.
pub async fn round_trip(
    source: &dyn DatabaseEngine,
    target: &dyn DatabaseEngine,
    dump: &DumpOptions,
    restore: &RestoreOptions,
) -> Arc<MemoryDump> {
    let (memory, _report) = dump_to_memory(source, dump).await;
    let src = Arc::clone(&memory).into_source();
    target
        .restore(Arc::clone(&src) as Arc<dyn StreamSource>, restore)
        .await
        .unwrap_or_else(|e| panic!("restore into {} failed: {e}", target.location()));

    let expected = table_digests(source, dump.jobs)
        .await
        .unwrap_or_else(|e| panic!("re-dump of the source failed: {e}"));
    assert_eq!(
        expected,
        memory.table_digests(),
        "the source's data changed between two dumps, or the dump is not deterministic"
    );
    let mut actual = table_digests(target, dump.jobs)
        .await
        .unwrap_or_else(|e| panic!("re-dump of the restored database failed: {e}"));
    if target.schema_is_database() && target.database() != source.database() {
        actual = crate::digest::rename_schema(actual, &target.database(), &source.database());
    }
    let diffs: Vec<_> = compare_tables(&expected, &actual)
        .into_iter()
        .filter(|c| !c.matches)
        .collect();
    assert!(
        diffs.is_empty(),
        "restored tables differ from the source: {diffs:#?}"
    );

    let again = target
        .restore(src as Arc<dyn StreamSource>, &RestoreOptions::default())
        .await;
    match again {
        Err(e) if e.kind() == ErrorKind::TargetNotEmpty => {}
        Err(e) => panic!("restore into a non-empty target failed with the wrong kind: {e:?}"),
        Ok(_) => panic!("restore into a non-empty target without clean succeeded"),
    }
    memory
}
