//! Verification, the three rungs of the ladder in DESIGN.md:
//! 1. structure: every manifest parses, every chunk it names is indexed and lies inside
//!    an existing pack;
//! 2. `read_data`: every stream is read back, every chunk authenticated, decompressed
//!    and re-hashed, every stream's length and digest recomputed;
//! 3. restore: the backup is restored into a scratch database, which is re-dumped and
//!    compared table by table (row count and content digest) with what was stored.

use std::collections::{HashMap, HashSet};
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
        let mut checked: HashSet<ChunkId> = HashSet::new();
        let mut verified_digests: HashSet<String> = HashSet::new();
        for m in manifests {
            report.backups.push(m.id.clone());
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
                };
                let mut check = |id: &ChunkId, report: &mut VerifyReport| -> bool {
                    if !checked.insert(*id) {
                        return true;
                    }
                    let Some(loc) = index.get(id) else {
                        report.problems.push(problem(
                            id,
                            None,
                            format!("chunk {id} is not in the index"),
                        ));
                        return false;
                    };
                    let pack = index.pack_id(loc.pack).to_owned();
                    match packs.get(&pack) {
                        None => {
                            report.problems.push(problem(
                                id,
                                Some(pack.clone()),
                                format!("pack {pack} holding chunk {id} is missing"),
                            ));
                            false
                        }
                        Some(size)
                            if *size != index.pack_size(loc.pack)
                                || u64::from(loc.offset) + u64::from(loc.length) > *size =>
                        {
                            report.problems.push(problem(
                                id,
                                Some(pack.clone()),
                                format!(
                                    "pack {pack} has {size} bytes, not the {} its index records",
                                    index.pack_size(loc.pack)
                                ),
                            ));
                            false
                        }
                        Some(_) => true,
                    }
                };
                for list in &s.lists {
                    if !check(list, &mut report) {
                        continue;
                    }
                    let source = self.source_with_index(m, Arc::clone(&index), false);
                    match source.read_blob(*list).await {
                        Ok(plain) => match decode_list(&plain) {
                            Ok(refs) => {
                                for (id, _) in refs {
                                    check(&id, &mut report);
                                }
                            }
                            Err(e) => report.problems.push(Problem::from_error(
                                &m.id,
                                &s.spec.name,
                                table.clone(),
                                &e,
                            )),
                        },
                        Err(e) => report.problems.push(Problem::from_error(
                            &m.id,
                            &s.spec.name,
                            table.clone(),
                            &e,
                        )),
                    }
                }
            }
        }
        if options.read_data {
            for m in manifests {
                let source = Arc::new(self.source_with_index(m, Arc::clone(&index), false));
                let todo: Vec<_> = m
                    .streams
                    .iter()
                    .filter(|s| verified_digests.insert(format!("{}:{}", s.digest, s.bytes)))
                    .collect();
                let results: Vec<(String, Option<String>, Result<u64>)> =
                    futures::stream::iter(todo)
                        .map(|s| {
                            let source = Arc::clone(&source);
                            async move {
                                let read = async {
                                    let mut stream = source.open(&s.spec.name).await?;
                                    let mut n = 0u64;
                                    while let Some(b) = stream.try_next().await? {
                                        n += b.len() as u64;
                                    }
                                    Ok(n)
                                }
                                .await;
                                (
                                    s.spec.name.clone(),
                                    s.spec.table.as_ref().map(ToString::to_string),
                                    read,
                                )
                            }
                        })
                        .buffer_unordered(options.jobs.max(1))
                        .collect()
                        .await;
                for (name, table, r) in results {
                    match r {
                        Ok(n) => report.bytes_read += n,
                        Err(e) => report
                            .problems
                            .push(Problem::from_error(&m.id, &name, table, &e)),
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
        let source = Arc::new(self.source(manifest, true).await?);
        let restore = scratch
            .restore(Arc::clone(&source) as Arc<dyn StreamSource>, options)
            .await?;
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
        if scratch.schema_is_database() && scratch.database() != manifest.database {
            // Restored under another database name: compare under the source's name.
            let prefix = format!("{}.", scratch.database());
            actual = actual
                .into_iter()
                .map(|(k, v)| match k.strip_prefix(&prefix) {
                    Some(name) => (format!("{}.{name}", manifest.database), v),
                    None => (k, v),
                })
                .collect();
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
        let source = Arc::new(self.source(manifest, false).await?);
        engine
            .restore(source as Arc<dyn StreamSource>, options)
            .await
    }
}
