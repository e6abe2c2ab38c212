//! Verification, the three rungs of the ladder in DESIGN.md:
//! 1. structure: every manifest parses, every chunk it names is indexed and lies inside
//!    an existing pack;
//! 2. `read_data`: every stream is read back, every chunk authenticated, decompressed
//!    and re-hashed, every stream's length and digest recomputed;
//! 3. restore: the backup is restored into a scratch database, which is re-dumped and
//!    compared table by table (row count and content digest) with what was stored.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::digest::{TableComparison, TableDigestSink, compare_tables};
use crate::engine::{
    DatabaseEngine, DumpOptions, DumpSink, RestoreOptions, RestoreReport, StreamSource,
};
use crate::{Error, Result};

use super::Repository;
use super::format::{ChunkId, PACKS_DIR};
use super::index::Index;
use super::manifest::Manifest;
use super::pack::decode_list;

/// Options of [`Repository::verify`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Read and check every byte.
    pub read_data: bool,
    /// Streams read at once.
    pub jobs: usize,
}

impl VerifyOptions {
    /// Structure only, or with `read_data` every byte.
    pub fn new(read_data: bool) -> Self {
        Self { read_data, jobs: 2 }
    }

    /// Sets the streams read at once.
    #[must_use]
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The backup affected.
    pub backup: String,
    /// The stream affected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The table affected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The damaged or missing chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<String>,
    /// The pack concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The backed-up files whose content the damage touches (file trees).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl Problem {
    fn from_error(backup: &str, stream: &str, table: Option<String>, e: &Error) -> Self {
        Self {
            backup: backup.to_owned(),
            stream: Some(e.context_value("stream").unwrap_or(stream).to_owned()),
            table: e.context_value("table").map(str::to_owned).or(table),
            chunk: e.context_value("chunk").map(str::to_owned),
            pack: e.context_value("pack").map(str::to_owned),
            message: e.to_string(),
            files: Vec::new(),
        }
    }
}

/// What [`Repository::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Backups checked.
    pub backups: Vec<String>,
    /// Streams checked.
    pub streams: u64,
    /// Plain bytes read (with `read_data`).
    pub bytes_read: u64,
    /// Problems; empty when all is well.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`Repository::verify_restore`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreCheck {
    /// The backup.
    pub backup: String,
    /// The scratch database restored into.
    pub database: String,
    /// Table by table: stored versus restored.
    pub tables: Vec<TableComparison>,
    /// Tables whose stored row count differs from the manifest's.
    pub problems: Vec<String>,
    /// What the engine reported.
    pub restore: RestoreReport,
}

impl RestoreCheck {
    /// True when every table matches.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.tables.iter().all(|t| t.matches)
    }
}

impl Repository {
    /// Verifies backups (structure, and with `read_data` every byte).
    ///
    /// Problems are collected, not returned as errors: the report says what is damaged,
    /// table by table.
    ///
    /// # Errors
    /// Only when verification itself cannot proceed (storage unreachable).
    pub async fn verify(
        &self,
        manifests: &[Manifest],
        options: &VerifyOptions,
    ) -> Result<VerifyReport> {
        let index = Arc::new(self.load_index().await?);
        let packs: HashMap<String, u64> = self
            .target()
            .list(PACKS_DIR)
            .await?
            .map_ok(|m| {
                (
                    m.key.rsplit('/').next().unwrap_or_default().to_owned(),
                    m.size,
                )
            })
            .try_collect()
            .await?;
        let mut report = VerifyReport::default();
        // Outcomes are remembered per list blob (not per chunk: that would grow with the
        // repository), so that a list shared by many backups is checked once but its
        // damage is reported for every backup that needs it.
        let mut list_outcome: HashMap<ChunkId, Option<(Option<String>, String)>> = HashMap::new();
        let mut list_problems: HashMap<ChunkId, Vec<(ChunkId, Option<String>, String)>> =
            HashMap::new();
        for m in manifests {
            report.backups.push(m.id.clone());
            let source = self.source_with_index(m, Arc::clone(&index), false);
            for s in &m.streams {
                report.streams += 1;
                let table = s.spec.table.as_ref().map(ToString::to_string);
                let problem = |chunk: &ChunkId, pack: Option<String>, message: String| Problem {
                    backup: m.id.clone(),
                    stream: Some(s.spec.name.clone()),
                    table: table.clone(),
                    chunk: Some(chunk.hex()),
                    pack,
                    message,
                    files: Vec::new(),
                };
                for list in &s.lists {
                    let outcome = match list_outcome.get(list) {
                        Some(o) => o.clone(),
                        None => {
                            let o = check_chunk(&index, &packs, list)?;
                            list_outcome.insert(*list, o.clone());
                            o
                        }
                    };
                    if let Some((pack, message)) = outcome {
                        report.problems.push(problem(list, pack, message));
                        continue;
                    }
                    if let Some(found) = list_problems.get(list) {
                        for (chunk, pack, message) in found {
                            report
                                .problems
                                .push(problem(chunk, pack.clone(), message.clone()));
                        }
                        continue;
                    }
                    let mut found = Vec::new();
                    match source
                        .read_blob(*list)
                        .await
                        .and_then(|plain| decode_list(&plain))
                    {
                        Ok(refs) => {
                            for (id, _) in refs {
                                if let Some((pack, message)) = check_chunk(&index, &packs, &id)? {
                                    found.push((id, pack, message));
                                }
                            }
                        }
                        Err(e) => found.push((
                            *list,
                            e.context_value("pack").map(str::to_owned),
                            e.to_string(),
                        )),
                    }
                    for (chunk, pack, message) in &found {
                        report
                            .problems
                            .push(problem(chunk, pack.clone(), message.clone()));
                    }
                    list_problems.insert(*list, found);
                }
            }
        }
        if options.read_data {
            if let Some(p) = self.progress() {
                let mut seen = std::collections::HashSet::new();
                let (mut bytes, mut streams) = (0u64, 0u64);
                for s in manifests.iter().flat_map(|m| &m.streams) {
                    if seen.insert((s.digest.as_str(), s.bytes)) {
                        bytes += s.bytes;
                        streams += 1;
                    }
                }
                p.set_totals(bytes, streams, false);
                p.set_status("reading and checking every chunk");
            }
            let mut stream_outcome: HashMap<String, Option<Problem>> = HashMap::new();
            for m in manifests {
                let source = Arc::new(self.source_with_index(m, Arc::clone(&index), false));
                let key = |s: &super::manifest::StreamRecord| format!("{}:{}", s.digest, s.bytes);
                let mut todo = Vec::new();
                for s in &m.streams {
                    match stream_outcome.get(&key(s)) {
                        Some(Some(p)) => report.problems.push(Problem {
                            backup: m.id.clone(),
                            stream: Some(s.spec.name.clone()),
                            table: s.spec.table.as_ref().map(ToString::to_string),
                            ..p.clone()
                        }),
                        Some(None) => {}
                        None => todo.push((
                            key(s),
                            s.spec.name.clone(),
                            s.spec.table.as_ref().map(ToString::to_string),
                        )),
                    }
                }
                let results: Vec<(String, String, Option<String>, Result<u64>)> =
                    futures::stream::iter(todo)
                        .map(|(k, name, table)| {
                            let source = Arc::clone(&source);
                            async move {
                                let read = async {
                                    let mut stream = source.open(&name).await?;
                                    let mut n = 0u64;
                                    while let Some(b) = stream.try_next().await? {
                                        n += b.len() as u64;
                                    }
                                    Ok(n)
                                }
                                .await;
                                (k, name, table, read)
                            }
                        })
                        .buffer_unordered(options.jobs.max(1))
                        .collect()
                        .await;
                for (k, name, table, r) in results {
                    match r {
                        Ok(n) => {
                            report.bytes_read += n;
                            stream_outcome.insert(k, None);
                        }
                        Err(e) => {
                            let mut p = Problem::from_error(&m.id, &name, table, &e);
                            if let Some(chunk) = e.context_value("chunk") {
                                // Best effort: the listing may be what is damaged.
                                if let Ok(files) = self.files_in_chunk(&source, &name, chunk).await
                                {
                                    p.files =
                                        files.iter().map(|f| f.display().to_string()).collect();
                                    if !p.files.is_empty() {
                                        p.message =
                                            format!("{} (in {})", p.message, p.files.join(", "));
                                    }
                                }
                            }
                            report.problems.push(p.clone());
                            stream_outcome.insert(k, Some(p));
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    /// Restores a backup into `scratch` and compares every table with what was stored.
    ///
    /// # Errors
    /// The restore's or the re-dump's errors (a damaged chunk fails the restore).
    pub async fn verify_restore(
        &self,
        manifest: &Manifest,
        scratch: &dyn DatabaseEngine,
        options: &RestoreOptions,
    ) -> Result<RestoreCheck> {
        refuse_server(manifest)?;
        let source = Arc::new(self.source(manifest, true).await?);
        self.expect_restore(manifest);
        let restore = scratch
            .restore(Arc::clone(&source) as Arc<dyn StreamSource>, options)
            .await?;
        self.status(format!("comparing every table of backup {}", manifest.id));
        let expected = source.table_digests();
        let mut problems = Vec::new();
        for (table, rows) in manifest.tables() {
            let stored = expected.get(&table.to_string()).map_or(0, |d| d.rows);
            if stored != rows {
                problems.push(format!(
                    "table {table}: the manifest records {rows} rows but {stored} were read back"
                ));
            }
        }
        let sink = Arc::new(TableDigestSink::new());
        scratch
            .dump(
                &DumpOptions::default()
                    .with_jobs(options.jobs)
                    .with_data_only(true),
                Arc::clone(&sink) as Arc<dyn DumpSink>,
            )
            .await
            .map_err(|e| e.during("re-reading the restored database"))?;
        let mut actual = sink.digests();
        let renamed = scratch.schema_is_database() && scratch.database() != manifest.database;
        if !manifest.filter.is_empty() {
            // A table whose rows the filter left out is restored empty: it is no
            // mismatch. (Tables left out altogether are not restored at all.)
            let refs = sink.table_refs();
            actual.retain(|key, _| {
                let Some(table) = refs.get(key) else {
                    return true;
                };
                let table = if renamed {
                    crate::TableRef::new(&manifest.database, &table.name)
                } else {
                    table.clone()
                };
                expected.contains_key(&table.to_string()) || manifest.filter.keeps_data(&table)
            });
        }
        if renamed {
            // Restored under another database name: compare under the source's name.
            actual = crate::digest::rename_schema(actual, &scratch.database(), &manifest.database);
        }
        let tables = compare_tables(&expected, &actual);
        Ok(RestoreCheck {
            backup: manifest.id.clone(),
            database: scratch.database(),
            tables,
            problems,
            restore,
        })
    }

    /// Restores a backup into the database `engine` is bound to.
    ///
    /// # Errors
    /// The engine's errors, and [`crate::ErrorKind::Corrupt`] naming the chunk and table
    /// when stored data is damaged. A failed restore never reports success.
    pub async fn restore(
        &self,
        manifest: &Manifest,
        engine: &dyn DatabaseEngine,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        refuse_server(manifest)?;
        self.status(format!("loading the index for backup {}", manifest.id));
        let source = Arc::new(self.source(manifest, false).await?);
        self.expect_restore(manifest);
        let report = engine
            .restore(source as Arc<dyn StreamSource>, options)
            .await;
        self.status("");
        report
    }

    /// Sets the progress totals of restoring `manifest`.
    fn expect_restore(&self, manifest: &Manifest) {
        if let Some(p) = self.progress() {
            p.set_totals(
                manifest.streams.iter().map(|s| s.bytes).sum(),
                manifest.streams.len() as u64,
                false,
            );
            p.set_status(format!(
                "restoring backup {} of database {}",
                manifest.id, manifest.database
            ));
        }
    }
}

/// A whole-server backup is restored database by database: one engine bound to one
/// database cannot take it whole.
fn refuse_server(manifest: &Manifest) -> Result<()> {
    if manifest.is_server() {
        return Err(Error::invalid(format!(
            "backup {} is a whole-server backup (databases {}): restore it onto a server \
             (Repository::restore_server), or one of its databases (Manifest::database_view)",
            manifest.id,
            manifest.database_names().join(", ")
        )));
    }
    Ok(())
}

/// Checks that a chunk is indexed and lies inside an existing pack of the indexed size.
/// `None` when fine, else the pack concerned and what is wrong.
fn check_chunk(
    index: &Index,
    packs: &HashMap<String, u64>,
    id: &ChunkId,
) -> Result<Option<(Option<String>, String)>> {
    let Some(loc) = index.get(id)? else {
        return Ok(Some((None, format!("chunk {id} is not in the index"))));
    };
    let indexed = index.pack(loc.pack)?;
    let pack = indexed.id;
    Ok(match packs.get(&pack) {
        None => Some((
            Some(pack.clone()),
            format!("pack {pack} holding chunk {id} is missing"),
        )),
        Some(size)
            if *size != indexed.size || u64::from(loc.offset) + u64::from(loc.length) > *size =>
        {
            Some((
                Some(pack.clone()),
                format!(
                    "pack {pack} has {size} bytes, not the {} its index records",
                    indexed.size
                ),
            ))
        }
        Some(_) => None,
    })
}
