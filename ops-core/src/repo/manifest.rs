//! Manifests: one per backup, written last. A backup exists when, and only when, its
//! manifest exists.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::{StreamRole, StreamSpec, TableRef};

use super::format::ChunkId;

/// One stream of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// What the engine said about the stream.
    #[serde(flatten)]
    pub spec: StreamSpec,
    /// Plain bytes.
    pub bytes: u64,
    /// Records (`\n`-terminated lines).
    pub rows: u64,
    /// Number of chunk references.
    pub chunks: u64,
    /// Keyed BLAKE3 over the stream's chunk ids in order (see docs/FORMAT.md): a digest
    /// of the plain bytes through their chunk hashes.
    pub digest: String,
    /// The list blobs that hold the chunk references, in order.
    pub lists: Vec<ChunkId>,
}

/// Sizes of one backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    /// Plain bytes of all streams.
    pub bytes: u64,
    /// Chunk references.
    pub chunks: u64,
    /// Chunks this backup stored (not already in the repository).
    pub new_chunks: u64,
    /// Plain bytes of those new chunks.
    pub new_bytes: u64,
    /// Bytes this backup added to the target (packs, after compression and encryption).
    pub stored_bytes: u64,
    /// Packs written.
    pub packs: u64,
}

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Repository format version that wrote it.
    pub format_version: u32,
    /// Time-sortable backup id.
    pub id: String,
    /// Engine (`postgresql`, `mariadb`).
    pub engine: String,
    /// Server version.
    pub server_version: String,
    /// The database backed up.
    pub database: String,
    /// Where from (URL with password redacted).
    pub source: String,
    /// The server's stable identity where the engine reads one (see
    /// [`crate::DumpReport::server_id`]); absent in manifests of dbops before 0.2,
    /// which are grouped by `source`'s address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Host that ran the backup.
    pub host: String,
    /// dbops version.
    pub tool_version: String,
    /// Start of the backup (the snapshot is taken right after).
    pub started: DateTime<Utc>,
    /// End of the backup.
    pub finished: DateTime<Utc>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// How consistency was obtained (snapshot id, binlog/GTID, WAL position).
    pub snapshot: BTreeMap<String, String>,
    /// Warnings raised during the backup.
    pub warnings: Vec<String>,
    /// Sizes.
    pub stats: BackupStats,
    /// The streams, schema first, in the order the engine created them.
    pub streams: Vec<StreamRecord>,
    /// A whole-server backup's databases (then [`Manifest::database`] is empty), each
    /// with its own snapshot and the prefix of its streams; empty for a backup of one
    /// database. Absent in manifests written before whole-server backups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<ServerDatabase>,
    /// The table filter the backup was taken with; absent (empty) when it took every
    /// table with its rows. Verification compares only what it says was taken.
    #[serde(default, skip_serializing_if = "crate::TableFilter::is_empty")]
    pub filter: crate::TableFilter,
}

/// One database of a whole-server backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerDatabase {
    /// Its name on the source server.
    pub name: String,
    /// The start of its streams' names: `db/<name>/` with `%` and `/` percent-encoded.
    pub prefix: String,
    /// How its own consistency was obtained: each database is its own snapshot, and
    /// there is none across databases.
    pub snapshot: BTreeMap<String, String>,
}

impl ServerDatabase {
    /// The entry of database `name` (its prefix derived from the name).
    pub fn new(name: impl Into<String>, snapshot: BTreeMap<String, String>) -> Self {
        let name = name.into();
        Self {
            prefix: database_prefix(&name),
            name,
            snapshot,
        }
    }
}

/// Where the globals streams of a backup start (roles, users, grants, tablespaces).
pub const GLOBALS_PREFIX: &str = "globals/";

/// `db/<name>/`, with `%` and `/` percent-encoded so that no prefix starts another.
pub fn database_prefix(name: &str) -> String {
    format!("db/{}/", name.replace('%', "%25").replace('/', "%2F"))
}

impl Manifest {
    /// Refuses to restore this backup into another engine's database.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] naming both engines.
    pub fn require_engine(&self, engine: &str) -> crate::Result<()> {
        if self.engine != engine {
            return Err(crate::Error::invalid(format!(
                "backup {} is a {} backup; it cannot be restored into a {engine} database",
                self.id, self.engine
            )));
        }
        Ok(())
    }

    /// True for a whole-server backup (see [`Manifest::databases`]).
    pub fn is_server(&self) -> bool {
        !self.databases.is_empty()
    }

    /// The names of the databases this backup holds: a whole-server backup's, or the
    /// one database.
    pub fn database_names(&self) -> Vec<String> {
        if self.is_server() {
            self.databases.iter().map(|d| d.name.clone()).collect()
        } else {
            vec![self.database.clone()]
        }
    }

    /// True when the backup holds globals streams (roles, users, grants).
    pub fn has_globals(&self) -> bool {
        self.streams
            .iter()
            .any(|s| s.spec.name.starts_with(GLOBALS_PREFIX))
    }

    /// The backup of one database as an engine restores it: for a whole-server
    /// backup, that database's streams with their prefix taken off and its snapshot;
    /// for a one-database backup, itself. An engine's restore sees what a one-database
    /// dump wrote either way: a repository source never shows it the globals or file
    /// streams (see [`super::is_engine_stream`]). `None` when the backup does not hold
    /// `name`.
    pub fn database_view(&self, name: &str) -> Option<Manifest> {
        if !self.is_server() {
            return (self.database == name).then(|| self.clone());
        }
        let entry = self.databases.iter().find(|d| d.name == name)?;
        let streams: Vec<StreamRecord> = self
            .streams
            .iter()
            .filter_map(|s| {
                let rest = s.spec.name.strip_prefix(&entry.prefix)?;
                let mut s = s.clone();
                s.spec.name = rest.to_owned();
                Some(s)
            })
            .collect();
        Some(Manifest {
            database: entry.name.clone(),
            snapshot: entry.snapshot.clone(),
            databases: Vec::new(),
            streams,
            ..self.clone()
        })
    }

    /// What a globals restore reads: the globals streams, and the streams of
    /// `databases` (all when empty) under their stored names, from which an engine
    /// can tell which roles those databases need.
    pub fn globals_view(&self, databases: &[String]) -> Manifest {
        let wanted = |name: &str| -> bool {
            if name.starts_with(GLOBALS_PREFIX) {
                return true;
            }
            if !self.is_server() {
                return databases.is_empty() || databases.contains(&self.database);
            }
            self.databases.iter().any(|d| {
                name.starts_with(&d.prefix) && (databases.is_empty() || databases.contains(&d.name))
            })
        };
        Manifest {
            streams: self
                .streams
                .iter()
                .filter(|s| wanted(&s.spec.name))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// The tables with data in this backup, with their row counts (summed over ranges).
    pub fn tables(&self) -> BTreeMap<TableRef, u64> {
        let mut out = BTreeMap::new();
        for s in &self.streams {
            if let (StreamRole::TableData, Some(t)) = (s.spec.role, &s.spec.table) {
                *out.entry(t.clone()).or_insert(0) += s.rows;
            }
        }
        out
    }

    /// The stream with this name.
    pub fn stream(&self, name: &str) -> Option<&StreamRecord> {
        self.streams.iter().find(|s| s.spec.name == name)
    }

    /// The group this backup belongs to under the default grouping (server and
    /// database). Grouping a single manifest cannot join it with older manifests that
    /// lack a server identity; [`super::groups_of`] over the whole list does.
    pub fn group(&self) -> super::BackupGroup {
        super::groups_of(std::slice::from_ref(self), &super::GroupBy::default())
            .pop()
            .expect("one group per manifest")
    }

    /// As a retention input.
    pub fn summary(&self) -> crate::BackupSummary {
        crate::BackupSummary {
            id: self.id.clone(),
            time: self.started,
            tags: self.tags.clone(),
            complete: true,
        }
    }
}
