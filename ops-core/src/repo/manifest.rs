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
