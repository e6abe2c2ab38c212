//! Keeping a repository tidy: forget (remove manifests by a retention policy), prune
//! (remove what no manifest references), copy (backups into another repository).
//!
//! Prune never loses a backup: it holds the exclusive lock (no backup can be running
//! and about to reference a chunk), computes the referenced set from every manifest,
//! writes the new index *before* deleting the old index files, and deletes packs last.
//! A crash at any point leaves every remaining manifest fully readable; what is left
//! over is found and removed by the next prune.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::engine::{DumpReport, DumpSink};
use crate::retention::{RetentionDecision, RetentionPolicy};
use crate::{Error, ErrorKind, Result};

use super::Repository;
use super::format::{self, ChunkId, FORMAT_VERSION, PACKS_DIR};
use super::group::{BackupFilter, GroupBy, GroupDecisions, apply_per_group};
use super::index::IdSetBuilder;
use super::lock::{LockGuard, LockKind, list_locks};
use super::manifest::Manifest;
use super::pack::{IndexFile, IndexPack, PackBuilder, decode_list, parse_pack};
use super::source::RepoSource;

/// Index files a prune writes hold this many packs each, so that none is held whole.
const PACKS_PER_INDEX: usize = 16;

/// What prune does with one indexed pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PackFate {
    /// Every blob in it is used (or few enough are not).
    Keep,
    /// Its used blobs are copied into a new pack, then it is deleted.
    Repack,
    /// No blob in it is used.
    Delete,
    /// Indexed but not in the store (its entries are dropped from the new index).
    Gone,
}

/// Options of [`Repository::prune`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Repack a pack when more than this share of its bytes is unused (0.0–1.0).
    pub max_unused: f64,
    /// Packs in no index (left by a failed backup) are removed only when older than
    /// this many seconds, in case a backup on a host with a skewed clock still runs.
    pub unindexed_grace_secs: u64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            max_unused: 0.2,
            unindexed_grace_secs: 3600,
        }
    }
}

impl PruneOptions {
    /// Sets dry-run.
    #[must_use]
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Sets the unused share above which a pack is repacked.
    #[must_use]
    pub fn with_max_unused(mut self, share: f64) -> Self {
        self.max_unused = share.clamp(0.0, 1.0);
        self
    }

    /// Sets the grace period of unindexed packs.
    #[must_use]
    pub fn with_unindexed_grace_secs(mut self, secs: u64) -> Self {
        self.unindexed_grace_secs = secs;
        self
    }
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Backups whose references were kept.
    pub backups: usize,
    /// Blobs referenced.
    pub referenced_blobs: u64,
    /// Packs before.
    pub packs_before: u64,
    /// Packs deleted entirely (every blob unused, or in no index).
    pub packs_deleted: u64,
    /// Packs rewritten without their unused blobs.
    pub packs_repacked: u64,
    /// Packs written by repacking.
    pub packs_written: u64,
    /// Bytes freed on the target.
    pub bytes_freed: u64,
    /// Index files replaced.
    pub index_files_replaced: u64,
    /// Stale locks removed.
    pub stale_locks_removed: u64,
    /// True when nothing was changed.
    pub dry_run: bool,
}

/// Options of [`Repository::forget`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ForgetOptions {
    /// Say what would be forgotten; change nothing.
    pub dry_run: bool,
    /// Which backups form one series (default: server and database).
    pub group_by: GroupBy,
    /// Only these backups are considered; the others are neither kept nor forgotten.
    pub filter: BackupFilter,
    /// How long a safety backup (tag [`super::SAFETY_TAG`]) is kept after it was
    /// taken (default 7 days). The retention rules do not count safety backups.
    pub keep_safety: std::time::Duration,
}

impl Default for ForgetOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            group_by: GroupBy::default(),
            filter: BackupFilter::default(),
            keep_safety: std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ForgetOptions {
    /// How long safety backups are kept.
    #[must_use]
    pub fn with_keep_safety(mut self, keep: std::time::Duration) -> Self {
        self.keep_safety = keep;
        self
    }

    /// Sets dry run.
    #[must_use]
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Sets the grouping.
    #[must_use]
    pub fn with_group_by(mut self, group_by: GroupBy) -> Self {
        self.group_by = group_by;
        self
    }

    /// Acts on the backups that pass `filter` only.
    #[must_use]
    pub fn with_filter(mut self, filter: BackupFilter) -> Self {
        self.filter = filter;
        self
    }
}

/// What a forget did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetReport {
    /// Per group, one decision per backup, oldest first, with the reasons.
    pub groups: Vec<GroupDecisions>,
    /// The safety backups, judged by their age alone, oldest first.
    #[serde(default)]
    pub safety: Vec<RetentionDecision>,
    /// Manifests removed (empty on a dry run).
    pub removed: Vec<String>,
    /// True when nothing was changed.
    pub dry_run: bool,
    /// Per series of archived logs (WAL, binlogs), what the kept backups need and
    /// what was removed.
    #[serde(default)]
    pub logs: Vec<super::logs::LogExpiry>,
}

/// Keeps each safety backup while it is younger than `keep`, oldest first.
fn safety_decisions(
    safety: &[Manifest],
    keep: std::time::Duration,
    now: DateTime<Utc>,
) -> Vec<RetentionDecision> {
    let keep_for = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let days = keep.as_secs_f64() / 86_400.0;
    let mut out: Vec<RetentionDecision> = safety
        .iter()
        .map(|m| {
            let until = m.started.checked_add_signed(keep_for);
            let kept = until.is_none_or(|u| now < u);
            RetentionDecision {
                id: m.id.clone(),
                time: m.started,
                keep: kept,
                reasons: vec![if kept {
                    format!(
                        "safety backup: kept {days:.1} days after it was taken, until {}",
                        until.map_or_else(|| "ever".to_owned(), |u| u.to_rfc3339())
                    )
                } else {
                    format!("safety backup older than {days:.1} days")
                }],
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

impl ForgetReport {
    /// Every decision, group after group, then the safety backups.
    pub fn decisions(&self) -> impl Iterator<Item = &RetentionDecision> {
        self.groups
            .iter()
            .flat_map(|g| g.decisions.iter())
            .chain(&self.safety)
    }
}

impl Repository {
    /// Applies `policy` at `now` to each group of backups separately (see
    /// [`apply_per_group`]) and removes the manifests it forgets (their data stays
    /// until [`Repository::prune`]). Backups outside `options.filter` are untouched.
    ///
    /// # Errors
    /// Storage errors; [`ErrorKind::Locked`] while a prune runs.
    pub async fn forget(
        &self,
        policy: &dyn RetentionPolicy,
        now: DateTime<Utc>,
        options: &ForgetOptions,
    ) -> Result<ForgetReport> {
        let lock = self.lock(LockKind::Shared, "forget").await?;
        let result = async {
            let (safety, manifests): (Vec<Manifest>, Vec<Manifest>) = self
                .list_backups_matching(&options.filter)
                .await?
                .into_iter()
                .partition(|m| m.tags.contains(super::SAFETY_TAG));
            let groups = apply_per_group(policy, &manifests, &options.group_by, now)?;
            let safety = safety_decisions(&safety, options.keep_safety, now);
            let mut removed = Vec::new();
            if !options.dry_run {
                for d in groups
                    .iter()
                    .flat_map(|g| &g.decisions)
                    .chain(&safety)
                    .filter(|d| !d.keep)
                {
                    self.delete_manifest(&d.id).await?;
                    removed.push(d.id.clone());
                }
            }
            // Logs are judged against every backup that stays, in or out of the
            // filter: a series another group's backup needs keeps what it needs.
            let going: std::collections::BTreeSet<&str> = groups
                .iter()
                .flat_map(|g| &g.decisions)
                .chain(&safety)
                .filter(|d| !d.keep)
                .map(|d| d.id.as_str())
                .collect();
            let staying: Vec<Manifest> = self
                .list_backups()
                .await?
                .into_iter()
                .filter(|m| !going.contains(m.id.as_str()))
                .collect();
            let logs = self.expire_logs(&staying, options.dry_run).await?;
            Ok::<_, Error>(ForgetReport {
                groups,
                safety,
                removed,
                dry_run: options.dry_run,
                logs,
            })
        }
        .await;
        let released = lock.release().await;
        let report = result?;
        if let Err(e) = released {
            // The work is done; an unreleased lock only goes stale and is removed later.
            tracing::warn!("could not release the repository lock: {e}");
        }
        Ok(report)
    }

    /// Removes data no backup references (see the module docs for why it is safe).
    ///
    /// # Errors
    /// [`ErrorKind::Locked`] while any backup, forget or copy runs; storage errors;
    /// [`ErrorKind::Corrupt`] when a manifest's chunk list cannot be read (then nothing
    /// is deleted).
    pub async fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        let lock = self.lock(LockKind::Exclusive, "prune").await?;
        let result = self.prune_locked(options, &lock).await;
        let released = lock.release().await;
        let report = result?;
        if let Err(e) = released {
            // The work is done; an unreleased lock only goes stale and is removed later.
            tracing::warn!("could not release the repository lock: {e}");
        }
        Ok(report)
    }

    async fn prune_locked(&self, options: &PruneOptions, lock: &LockGuard) -> Result<PruneReport> {
        let mut report = PruneReport {
            dry_run: options.dry_run,
            ..PruneReport::default()
        };
        // Stale locks go first, before the manifests are read: a backup whose lock
        // this prune judged stale then finds its lock gone and records nothing, or
        // has recorded its manifest already and is seen below (see lock.rs).
        if !options.dry_run {
            for entry in list_locks(self.target().as_ref()).await? {
                if entry.is_stale(lock.store_now()) {
                    self.target().delete(&entry.key).await?;
                    report.stale_locks_removed += 1;
                }
            }
        }
        // Everything referenced: list blobs and the chunks they name, gathered on
        // local disk (the set can be as large as the repository). List blobs are
        // remembered in memory to read each once: one per 4096 chunk references.
        self.status("reading the manifests and the index");
        let manifests = self.list_backups().await?;
        report.backups = manifests.len();
        let index = Arc::new(self.load_index().await?);
        self.status(format!(
            "gathering the chunks {} backups reference",
            manifests.len()
        ));
        let mut used = IdSetBuilder::new()?;
        let mut lists_read: HashSet<ChunkId> = HashSet::new();
        for m in &manifests {
            let source = self.source_with_index(m, Arc::clone(&index), false);
            for s in &m.streams {
                for list in &s.lists {
                    if !lists_read.insert(*list) {
                        continue;
                    }
                    used.insert(list)?;
                    let plain = source.read_blob(*list).await.map_err(|e| {
                        e.during(format!(
                            "reading the chunk list of backup {} stream {}; nothing was deleted (verify the repository)",
                            m.id, s.spec.name
                        ))
                    })?;
                    for (id, _) in decode_list(&plain)? {
                        used.insert(&id)?;
                    }
                }
            }
        }
        drop(lists_read);
        let used = used.finish()?;
        report.referenced_blobs = used.len();

        // Where each referenced blob is kept: the copy the index resolves it to. Every
        // one must be somewhere, or the prune would lose data.
        let mut used_bytes_by_number: HashMap<u32, u64> = HashMap::new();
        let mut missing: Option<ChunkId> = None;
        used.for_each(|id| {
            match index.get(&id)? {
                Some(loc) => {
                    *used_bytes_by_number.entry(loc.pack).or_default() += u64::from(loc.length);
                }
                None => {
                    missing.get_or_insert(id);
                }
            }
            Ok(())
        })?;
        if let Some(missing) = missing {
            return Err(Error::corrupt(format!(
                "chunk {missing} is referenced by a backup but stored in no pack; nothing was deleted (verify every backup)"
            )));
        }
        let mut used_bytes: HashMap<String, u64> = HashMap::new();
        for (number, bytes) in used_bytes_by_number {
            *used_bytes.entry(index.pack(number)?.id).or_default() += bytes;
        }

        let stored: HashMap<String, crate::ObjectMeta> = self
            .target()
            .list(PACKS_DIR)
            .await?
            .map_ok(|m| (m.key.rsplit('/').next().unwrap_or_default().to_owned(), m))
            .try_collect()
            .await?;
        report.packs_before = stored.len() as u64;
        if let Some(id) = used_bytes.keys().find(|id| !stored.contains_key(*id)) {
            return Err(Error::corrupt(format!(
                "pack {id} holds chunks that backups reference but is missing from the store; nothing was deleted (verify every backup)"
            )));
        }

        self.status("deciding pack by pack");
        // Decide per pack, index file by index file.
        let index_keys = self.index_keys().await?;
        let mut decided: HashMap<String, PackFate> = HashMap::new();
        {
            let mut files = std::pin::pin!(self.fetch_index_files(index_keys.clone()));
            while let Some((_, file)) = files.try_next().await? {
                for pack in file.packs {
                    if decided.contains_key(&pack.id) {
                        continue;
                    }
                    let all: u64 = pack.blobs.iter().map(|b| u64::from(b.length)).sum();
                    let used = used_bytes.get(&pack.id).copied().unwrap_or(0);
                    let fate = if !stored.contains_key(&pack.id) {
                        PackFate::Gone
                    } else if used == 0 {
                        PackFate::Delete
                    } else if (all.saturating_sub(used)) as f64 > options.max_unused * all as f64 {
                        PackFate::Repack
                    } else {
                        PackFate::Keep
                    };
                    decided.insert(pack.id, fate);
                }
            }
        }
        let now = Utc::now();
        let mut delete: Vec<(String, u64)> = Vec::new();
        let mut repack: Vec<String> = Vec::new();
        for (id, meta) in &stored {
            match decided.get(id) {
                None => {
                    let age = now
                        .signed_duration_since(meta.modified)
                        .num_seconds()
                        .max(0) as u64;
                    if age >= options.unindexed_grace_secs {
                        delete.push((meta.key.clone(), meta.size));
                    }
                }
                Some(PackFate::Delete) => delete.push((meta.key.clone(), meta.size)),
                Some(PackFate::Repack) => repack.push(id.clone()),
                Some(PackFate::Keep | PackFate::Gone) => {}
            }
        }
        delete.sort();
        repack.sort();
        report.packs_deleted = delete.len() as u64;
        report.packs_repacked = repack.len() as u64;
        report.bytes_freed = delete.iter().map(|(_, s)| s).sum();
        let gone = decided.values().any(|f| matches!(f, PackFate::Gone));
        let changed = !delete.is_empty() || !repack.is_empty() || index_keys.len() > 1 || gone;
        if options.dry_run || !changed {
            return Ok(report);
        }

        // Repack: copy the used sealed blobs verbatim (their AAD is their id) into new
        // packs: those whose resolved copy is in this pack, each once.
        if let Some(p) = self.progress() {
            let total = repack
                .iter()
                .filter_map(|id| stored.get(id))
                .map(|m| m.size)
                .sum();
            p.set_totals(total, repack.len() as u64, false);
        }
        self.status(format!("repacking {} packs", repack.len()));
        let mut written: Vec<IndexPack> = Vec::new();
        let mut copied: HashSet<ChunkId> = HashSet::new();
        let mut builder = PackBuilder::with_capacity(self.config.pack_size as usize);
        for pack_id in &repack {
            let key = format::pack_key(pack_id);
            let bytes = super::read_object(self.target().as_ref(), &key).await?;
            for b in parse_pack(&self.keys, pack_id, &bytes)? {
                if !used.contains(&b.id)? || copied.contains(&b.id) {
                    continue;
                }
                let resolved = match index.get(&b.id)? {
                    Some(loc) => index.pack(loc.pack)?.id == *pack_id,
                    None => false,
                };
                if !resolved {
                    continue;
                }
                copied.insert(b.id);
                let (from, to) = (b.offset as usize, b.offset as usize + b.length as usize);
                builder.add(b.id, b.kind, b.raw, &bytes[from..to]);
                if builder.len() >= self.config.pack_size as usize {
                    let full = std::mem::replace(
                        &mut builder,
                        PackBuilder::with_capacity(self.config.pack_size as usize),
                    );
                    written.push(self.store_pack(full).await?);
                }
            }
            report.bytes_freed += bytes.len() as u64;
            if let Some(p) = self.progress() {
                p.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                p.streams_done.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !builder.is_empty() {
            written.push(self.store_pack(builder).await?);
        }
        report.packs_written = written.len() as u64;
        self.status(format!(
            "writing the new index, then deleting {} packs",
            delete.len() + repack.len()
        ));
        report.bytes_freed = report
            .bytes_freed
            .saturating_sub(written.iter().map(|p| p.size).sum());

        // New index first (kept packs as their index files list them, then the new
        // packs), a few packs per file; then old index files; then packs.
        let mut new_keys: HashSet<String> = HashSet::new();
        let mut batch: Vec<IndexPack> = Vec::new();
        let mut emitted: HashSet<String> = HashSet::new();
        {
            let mut files = std::pin::pin!(self.fetch_index_files(index_keys.clone()));
            while let Some((_, file)) = files.try_next().await? {
                for pack in file.packs {
                    if matches!(decided.get(&pack.id), Some(PackFate::Keep))
                        && emitted.insert(pack.id.clone())
                    {
                        batch.push(pack);
                        if batch.len() >= PACKS_PER_INDEX {
                            new_keys.insert(self.write_index_batch(&mut batch).await?);
                        }
                    }
                }
            }
        }
        for pack in written {
            batch.push(pack);
            if batch.len() >= PACKS_PER_INDEX {
                new_keys.insert(self.write_index_batch(&mut batch).await?);
            }
        }
        if !batch.is_empty() {
            new_keys.insert(self.write_index_batch(&mut batch).await?);
        }
        for key in index_keys.iter().filter(|k| !new_keys.contains(*k)) {
            self.target().delete(key).await?;
            report.index_files_replaced += 1;
        }
        for (key, _) in &delete {
            self.target().delete(key).await?;
        }
        for pack in &repack {
            self.target().delete(&format::pack_key(pack)).await?;
        }
        Ok(report)
    }

    async fn write_index_batch(&self, batch: &mut Vec<IndexPack>) -> Result<String> {
        self.write_index(&IndexFile {
            version: FORMAT_VERSION,
            packs: std::mem::take(batch),
        })
        .await
    }

    async fn store_pack(&self, builder: PackBuilder) -> Result<IndexPack> {
        let sealed = builder.seal(&self.keys)?;
        let size = sealed.bytes.len() as u64;
        self.target()
            .put(&format::pack_key(&sealed.id), sealed.bytes)
            .await?;
        Ok(IndexPack {
            id: sealed.id,
            size,
            blobs: sealed.blobs,
        })
    }

    /// Copies one backup from `from` into this repository, keeping its id and
    /// metadata. Chunks are re-keyed (repositories have their own keys) and only those
    /// this repository lacks are stored. Copying a backup that is already here does
    /// nothing and returns the existing manifest.
    ///
    /// # Errors
    /// Storage errors on either side; damaged source data ([`ErrorKind::Corrupt`]).
    pub async fn copy_backup(
        &self,
        from: &Repository,
        manifest: &Manifest,
    ) -> Result<(Manifest, bool)> {
        // The logs it needs go first (and again for a backup copied before: the
        // archive has grown since), so that a copy is never a base backup without
        // the WAL that makes it consistent.
        self.copy_logs(from, manifest).await?;
        match self.load_manifest(&manifest.id).await {
            Ok(existing) => return Ok((existing, false)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let lock = self.lock(LockKind::Shared, "copy").await?;
        let result: Result<Manifest> = async {
            let source = Arc::new(from.source(manifest, false).await?);
            if let Some(p) = self.progress() {
                p.set_totals(manifest.stats.bytes, manifest.streams.len() as u64, false);
                p.set_status(format!("copying backup {}", manifest.id));
            }
            let ingested = self
                .ingest(self.progress.clone(), &lock, |sink| replay(source, sink))
                .await
                .map_err(|e| e.during(format!("copying backup {}", manifest.id)))?;
            let copy = Manifest {
                streams: ingested.streams,
                stats: ingested.stats,
                ..manifest.clone()
            };
            self.record_manifest(&copy, &lock).await?;
            Ok(copy)
        }
        .await;
        let released = lock.release().await;
        let copy = result?;
        if let Err(e) = released {
            // The work is done; an unreleased lock only goes stale and is removed later.
            tracing::warn!("could not release the repository lock: {e}");
        }
        Ok((copy, true))
    }
}

/// Writes every stream of `source` into `sink` unchanged, in order.
async fn replay(source: Arc<RepoSource>, sink: Arc<dyn DumpSink>) -> Result<DumpReport> {
    for s in &source.manifest().streams {
        let mut stream = crate::StreamSource::open(source.as_ref(), &s.spec.name).await?;
        let mut writer = sink.open_stream(s.spec.clone()).await?;
        while let Some(piece) = stream.try_next().await? {
            writer.write(piece).await?;
        }
        writer.finish().await?;
    }
    Ok(DumpReport::default())
}
