//! The backup repository: joins an engine's streams to a target's objects.
//!
//! Everything about how bytes are kept lives here, once, for every engine and every
//! target: content-defined chunking, keyed chunk ids, de-duplication, zstd,
//! XChaCha20-Poly1305, packs and indexes, manifests, locks and verification. Engines
//! and targets know nothing of it. The format is described in `docs/FORMAT.md`.

mod backup;
mod chunker;
mod crypto;
mod files;
mod format;
mod group;
mod health;
mod index;
mod inplace;
mod keys;
mod lock;
mod logs;
mod maintain;
mod manifest;
mod pack;
mod progress;
mod server;
mod source;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt as _, TryStreamExt};

pub use backup::{BackupOptions, DEFAULT_LOG_WAIT};
pub use crypto::KdfParams;
pub use files::{
    EntryKind, FILES_ENGINE, FILES_PREFIX, FileEntry, FileRestoreOptions, FileRestoreReport,
    FileTree, FileTrees, trees_of,
};
pub use format::{
    ChunkId, ChunkerParams, CompressionAlgorithm, CompressionParams, EncryptionScheme,
    FORMAT_VERSION, RepoConfig,
};
pub use group::{
    BackupFilter, BackupGroup, GroupBy, GroupDecisions, SAFETY_TAG, Selector, apply_per_group,
    groups_of, match_ids, ordinary_tags, source_address,
};
pub use health::LastBackupAge;
pub use inplace::{InPlaceOptions, InPlaceReport};
pub use crate::access::read_private_file;
pub use keys::KeyInfo;
pub(crate) use lock::LockGuard;
pub use lock::{
    LockInfo, LockKind, REFRESH, STALE_AFTER, UnlockDecision, process_alive, process_start,
};
pub use logs::{
    LOG_FILES_KEY, LOG_KIND_KEY, LOG_SERIES_KEY, LOG_START_KEY, LOG_STOP_KEY, LOGS_PREFIX,
    LogExpiry, LogKind, LogObject, LogPush, log_needs,
};
pub use maintain::{ForgetOptions, ForgetReport, PruneOptions, PruneReport};
pub use manifest::{
    BackupStats, GLOBALS_PREFIX, Manifest, ServerDatabase, StreamRecord, database_prefix,
};
// Pack and index-file layouts are the format's business, not an embedder's: a program
// reads and writes backups through the Repository only (docs/FORMAT.md describes them).
// The testkit's synthetic history writes index files.
#[cfg(feature = "testkit")]
pub(crate) use pack::{BlobKind, IndexBlob, IndexFile, IndexPack};
pub use progress::Progress;
pub use server::{ServerRestoreOptions, ServerRestoreReport};
pub use source::{NON_ENGINE_PREFIXES, RepoSource, is_engine_stream};
pub use verify::{Problem, RestoreCheck, VerifyOptions, VerifyReport};

use crate::secret::Secret;
use crate::target::BackupTarget;
use crate::{Error, ErrorKind, Result};

use crypto::{KeyFile, Keys};
use format::{BACKUPS_DIR, CONFIG_KEY, INDEX_DIR, KEYS_DIR};

/// How a new repository protects its data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encryption {
    /// Encrypt with a key unwrapped by this password.
    Password(Secret),
    /// Store data unencrypted (chunk ids are still keyed). Remote targets need
    /// [`InitOptions::allow_unencrypted_remote`] too.
    None,
}

/// Options of [`Repository::init`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InitOptions {
    /// Encryption.
    pub encryption: Encryption,
    /// Chunking.
    pub chunker: ChunkerParams,
    /// Target pack size, bytes.
    pub pack_size: u32,
    /// zstd level.
    pub compression_level: i32,
    /// Argon2id cost.
    pub kdf: KdfParams,
    /// The operator explicitly accepts unencrypted data on a remote target.
    pub allow_unencrypted_remote: bool,
}

impl InitOptions {
    /// Defaults with the given encryption.
    pub fn new(encryption: Encryption) -> Self {
        Self {
            encryption,
            chunker: ChunkerParams::default(),
            pack_size: 8 * 1024 * 1024,
            compression_level: CompressionParams::default().level,
            kdf: KdfParams::default(),
            allow_unencrypted_remote: false,
        }
    }

    /// Sets chunking parameters.
    #[must_use]
    pub fn with_chunker(mut self, chunker: ChunkerParams) -> Self {
        self.chunker = chunker;
        self
    }

    /// Sets the pack size.
    #[must_use]
    pub fn with_pack_size(mut self, bytes: u32) -> Self {
        self.pack_size = bytes;
        self
    }

    /// Sets the zstd level.
    #[must_use]
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.compression_level = level;
        self
    }

    /// Sets the KDF cost (lower it only for tests).
    #[must_use]
    pub fn with_kdf(mut self, kdf: KdfParams) -> Self {
        self.kdf = kdf;
        self
    }

    /// Accepts unencrypted data on a remote target.
    #[must_use]
    pub fn with_allow_unencrypted_remote(mut self, allow: bool) -> Self {
        self.allow_unencrypted_remote = allow;
        self
    }
}

/// A backup repository: the front door for everything dbops does with backups.
///
/// Open one on any [`BackupTarget`] (a directory, S3, memory: see the `ops-storage`
/// crate, or the `dbops` facade's `target(url)`), then:
///
/// | to | call |
/// |---|---|
/// | create / open | [`Repository::init`], [`Repository::open`] (+ [`Repository::with_cache_dir`], [`Repository::with_lock_wait`], [`Repository::with_progress`]) |
/// | back up a database | [`Repository::backup`] with any [`crate::DatabaseEngine`] |
/// | list, choose | [`Repository::list_backups`], [`Repository::list_backups_matching`], [`Repository::select`] (`latest`, `latest:DB`, ids) |
/// | restore | [`Repository::restore`] |
/// | whole servers | [`Repository::backup_server`], [`Repository::restore_server`], [`Repository::restore_globals`] |
/// | prove | [`Repository::verify`] (structure, every byte), [`Repository::verify_restore`] (restore and compare every table) |
/// | keep | [`Repository::forget`] with a [`crate::RetentionPolicy`] such as [`crate::retention::KeepRules`], per group; [`Repository::prune`] |
/// | copy offsite | [`Repository::copy_backup`] |
/// | passwords, locks | [`Repository::add_key`], [`Repository::list_keys`], [`Repository::remove_key`], [`Repository::change_password`], [`Repository::unlock`] |
///
/// Clones share the target and keys; a clone is cheap and can move to another task.
/// The whole job with a real database is the `dbops` facade crate's first example
/// and `examples/quickstart.rs`; without one:
///
/// ```
/// # async fn demo() -> ops_core::Result<()> {
/// use std::sync::Arc;
/// use ops_core::repo::{Encryption, ForgetOptions, InitOptions, KdfParams, Repository};
/// use ops_core::retention::KeepRules;
/// use ops_core::Secret;
///
/// let target = ops_storage::open_target("memory://", &Default::default())?;
/// let password = Secret::new("correct horse battery staple");
/// let options = InitOptions::new(Encryption::Password(password.clone()))
///     .with_kdf(KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 });
/// Repository::init(Arc::clone(&target), options).await?;
///
/// let repo = Repository::open(target, Some(&password))
///     .await?
///     .with_lock_wait(std::time::Duration::from_secs(600));
/// assert!(repo.list_backups().await?.is_empty());
/// let rules = KeepRules::default().with_daily(7).with_weekly(4);
/// let report = repo
///     .forget(&rules, chrono::Utc::now(), &ForgetOptions::default().with_dry_run(true))
///     .await?;
/// assert!(report.groups.is_empty());
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().expect("runtime").block_on(demo()).expect("demo");
/// ```
#[derive(Clone, Debug)]
pub struct Repository {
    target: Arc<dyn BackupTarget>,
    config: RepoConfig,
    keys: Keys,
    /// Root of the local cache (its per-repository folder is below it), if any.
    cache: Option<Arc<PathBuf>>,
    /// How long to wait for a conflicting lock before giving up.
    lock_wait: std::time::Duration,
    /// Counters that long operations update, if anyone watches.
    progress: Option<Arc<Progress>>,
}

/// This host's name as locks, manifests and run records record it.
pub fn host_name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Repository {
    /// Creates a repository on `target`.
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] when one is there; [`ErrorKind::InvalidInput`] for
    /// unencrypted data on a remote target without the explicit opt-in or bad
    /// parameters; storage errors (a read-only location gives
    /// [`ErrorKind::PermissionDenied`]).
    pub async fn init(target: Arc<dyn BackupTarget>, options: InitOptions) -> Result<Self> {
        options.chunker.validate()?;
        if !(1..=22).contains(&options.compression_level) {
            return Err(Error::invalid("zstd level must be between 1 and 22"));
        }
        if options.pack_size < 64 * 1024 || options.pack_size > 512 * 1024 * 1024 {
            return Err(Error::invalid(
                "pack size must be between 64 KiB and 512 MiB",
            ));
        }
        let encrypted = matches!(options.encryption, Encryption::Password(_));
        if !encrypted && target.is_remote() && !options.allow_unencrypted_remote {
            return Err(Error::invalid(format!(
                "refusing to create an unencrypted repository on the remote target {}: data would leave this machine in the clear; give a password (Encryption::Password), or accept it explicitly (InitOptions::with_allow_unencrypted_remote)",
                target.location()
            )));
        }
        if target.head(CONFIG_KEY).await?.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("a dbops repository already exists at {}", target.location()),
            ));
        }
        let (mut keys, material) = Keys::generate(encrypted);
        let mut config = RepoConfig {
            format: "dbops-repository".into(),
            version: FORMAT_VERSION,
            id: random_hex(16),
            created: chrono::Utc::now(),
            chunker: options.chunker,
            pack_size: options.pack_size,
            compression: CompressionParams {
                algorithm: CompressionAlgorithm::Zstd,
                level: options.compression_level,
            },
            encryption: EncryptionScheme::None,
            id_key: None,
        };
        match &options.encryption {
            Encryption::Password(password) => {
                if password.is_empty() {
                    return Err(Error::invalid("the repository password is empty"));
                }
                config.encryption = EncryptionScheme::Xchacha20poly1305;
                let kdf = options.kdf;
                let password = password.clone();
                let key =
                    tokio::task::spawn_blocking(move || KeyFile::wrap(&material, &password, kdf))
                        .await
                        .map_err(|e| {
                            Error::internal(format!("key derivation task failed: {e}"))
                        })??;
                let body = serde_json::to_vec_pretty(&key)
                    .map_err(|e| Error::internal(format!("serialize key: {e}")))?;
                let key_file = format!("{KEYS_DIR}{}", random_hex(16));
                target
                    .put(&key_file, Bytes::from(body))
                    .await
                    .map_err(|e| e.during(format!("writing the key to {}", target.location())))?;
                keys = keys.with_key_file(key_file);
            }
            Encryption::None => {
                config.id_key = Some(hex::encode(&material[32..]));
            }
        }
        let body = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::internal(format!("serialize config: {e}")))?;
        match target.put_if_absent(CONFIG_KEY, Bytes::from(body)).await? {
            crate::PutOutcome::Created => {}
            crate::PutOutcome::AlreadyExists => {
                // A retried call whose first reply was lost finds its own config.
                let existing = read_object(target.as_ref(), CONFIG_KEY).await?;
                if RepoConfig::parse(&existing).is_ok_and(|c| c.id == config.id) {
                    return Ok(Self {
                        target,
                        config,
                        keys,
                        cache: None,
                        lock_wait: std::time::Duration::ZERO,
                        progress: None,
                    });
                }
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("a dbops repository already exists at {}", target.location()),
                ));
            }
        }
        Ok(Self {
            target,
            config,
            keys,
            cache: None,
            lock_wait: std::time::Duration::ZERO,
            progress: None,
        })
    }

    /// Opens the repository on `target`. The password is checked here, before any
    /// data moves.
    ///
    /// # Errors
    /// [`ErrorKind::NotInitialized`] when there is no repository;
    /// [`ErrorKind::WrongPassword`] when the password is missing or opens no key;
    /// [`ErrorKind::UnsupportedFormat`] for an unknown format version; storage errors.
    pub async fn open(target: Arc<dyn BackupTarget>, password: Option<&Secret>) -> Result<Self> {
        Self::open_keyed(target, Unlock::Password(password)).await
    }

    /// Opens with an already unwrapped master key (see [`Repository::open_with_local_key`]).
    pub(crate) async fn open_with_material(
        target: Arc<dyn BackupTarget>,
        material: &[u8; 64],
    ) -> Result<Self> {
        Self::open_keyed(target, Unlock::Material(material)).await
    }

    async fn open_keyed(target: Arc<dyn BackupTarget>, unlock_with: Unlock<'_>) -> Result<Self> {
        let config_bytes = match read_object(target.as_ref(), CONFIG_KEY).await {
            Ok(b) => b,
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && e.context_value("store_missing").is_some() =>
            {
                // The store itself is missing (an S3 bucket, as the target marks it):
                // its own words say which and what to do.
                return Err(Error::new(ErrorKind::NotInitialized, e.to_string()));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotInitialized,
                    format!(
                        "there is no dbops repository at {}; create one first",
                        target.location()
                    ),
                ));
            }
            Err(e) => {
                return Err(e.during(format!(
                    "reading the repository config at {}",
                    target.location()
                )));
            }
        };
        let config = RepoConfig::parse(&config_bytes)?;
        let keys = match config.encryption {
            EncryptionScheme::None => {
                let mut id_key = [0u8; 32];
                hex::decode_to_slice(config.id_key.as_deref().unwrap_or_default(), &mut id_key)
                    .map_err(|_| {
                        Error::corrupt("the unencrypted repository's id key is malformed")
                    })?;
                Keys::plain(id_key)
            }
            EncryptionScheme::Xchacha20poly1305 => {
                let password = match unlock_with {
                    Unlock::Material(material) => {
                        return Ok(Self::opened(
                            target,
                            config,
                            Keys::from_material(material, true),
                        ));
                    }
                    Unlock::Password(p) => p,
                };
                let password = password.filter(|p| !p.is_empty()).ok_or_else(|| {
                    Error::new(
                        ErrorKind::WrongPassword,
                        format!(
                            "the repository at {} is encrypted and no password was given: give its password",
                            target.location()
                        ),
                    )
                })?;
                unlock(target.as_ref(), password).await?
            }
        };
        Ok(Self::opened(target, config, keys))
    }

    fn opened(target: Arc<dyn BackupTarget>, config: RepoConfig, keys: Keys) -> Self {
        Self {
            target,
            config,
            keys,
            cache: None,
            lock_wait: std::time::Duration::ZERO,
            progress: None,
        }
    }

    /// Keeps a local cache of the chunk index and the manifests below `root` (in a
    /// folder named by the repository id), so that opening a repository with years of
    /// history does not re-read all of it. The cache is never the truth: it is checked
    /// against the store's listing and its own checksums, and rebuilt when it is
    /// missing, stale or damaged. Without a cache (the default) the chunk index is
    /// built in a temporary directory for each operation that needs it.
    #[must_use]
    pub fn with_cache_dir(mut self, root: impl Into<PathBuf>) -> Self {
        self.cache = Some(Arc::new(root.into()));
        self
    }

    /// Waits up to `wait` for a conflicting lock (a prune running while a backup
    /// starts, a backup running while a prune starts) instead of failing at once with
    /// [`ErrorKind::Locked`]. The wait is logged with the holder. Default: no wait.
    #[must_use]
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Counters that restore, verify, copy, prune (and backup, unless its options
    /// bring their own) update while they run, for a progress display.
    #[must_use]
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The progress counters, when set.
    pub fn progress(&self) -> Option<&Arc<Progress>> {
        self.progress.as_ref()
    }

    /// Says what the operation is doing, to the progress display and the debug log.
    pub(crate) fn status(&self, status: impl Into<String>) {
        let status = status.into();
        tracing::debug!("{status}");
        if let Some(p) = &self.progress {
            p.set_status(status);
        }
    }

    /// Takes a repository lock, waiting up to the configured lock wait.
    pub(crate) async fn lock(&self, kind: LockKind, purpose: &str) -> Result<LockGuard> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(250);
        let mut said = false;
        loop {
            match LockGuard::acquire(Arc::clone(&self.target), kind, purpose).await {
                Err(e) if e.kind() == ErrorKind::Locked && started.elapsed() < self.lock_wait => {
                    let waiting = format!(
                        "waiting up to {} s for the repository lock: {e}",
                        self.lock_wait.saturating_sub(started.elapsed()).as_secs()
                    );
                    if !said {
                        // Logged once (cron mails, journals); the display keeps it current.
                        match &self.progress {
                            Some(p) => p.set_status(waiting),
                            None => tracing::warn!("{waiting}"),
                        }
                        said = true;
                    } else if let Some(p) = &self.progress {
                        p.set_status(waiting);
                    }
                    tokio::time::sleep(pause.min(self.lock_wait.saturating_sub(started.elapsed())))
                        .await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) if e.kind() == ErrorKind::Locked && !self.lock_wait.is_zero() => {
                    let message = format!("{e} (waited {} s)", started.elapsed().as_secs());
                    return Err(e.with_message(message));
                }
                other => {
                    if said {
                        self.status("");
                    }
                    return other;
                }
            }
        }
    }

    /// The usual cache root: `$XDG_CACHE_HOME/dbops`, else `$HOME/.cache/dbops`; `None`
    /// when neither is set.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        var("XDG_CACHE_HOME")
            .map(|d| PathBuf::from(d).join("dbops"))
            .or_else(|| var("HOME").map(|d| PathBuf::from(d).join(".cache").join("dbops")))
    }

    /// This repository's cache folder, when a cache is used.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache.as_ref().map(|root| root.join(&self.config.id))
    }

    /// The target.
    pub fn target(&self) -> &Arc<dyn BackupTarget> {
        &self.target
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// True when data is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.keys.is_encrypted()
    }

    /// Every backup id, oldest first.
    async fn backup_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .target
            .list(BACKUPS_DIR)
            .await?
            .map_ok(|m| m.key.trim_start_matches(BACKUPS_DIR).to_owned())
            .try_collect()
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// Every backup's manifest, oldest first.
    ///
    /// # Errors
    /// Storage errors; a manifest that fails authentication or parsing.
    pub async fn list_backups(&self) -> Result<Vec<Manifest>> {
        let ids = self.backup_ids().await?;
        if let Some(dir) = self.cache_dir() {
            forget_cached_manifests(&dir.join("manifests"), &ids);
        }
        let loaded: Vec<Option<Manifest>> = futures::stream::iter(ids)
            .map(|id| async move {
                match self.load_listed_manifest(&id).await {
                    Ok(m) => Ok(Some(m)),
                    // Deleted between list and get by a concurrent forget.
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(loaded.into_iter().flatten().collect())
    }

    /// Loads a manifest that the store's listing just showed, from the local cache
    /// when it has it (manifests never change: the id names one content, and the
    /// cached copy is checked against its BLAKE3 and authenticated like a fresh one).
    async fn load_listed_manifest(&self, id: &str) -> Result<Manifest> {
        let Some(dir) = self.cache_dir() else {
            return self.load_manifest(id).await;
        };
        let path = dir.join("manifests").join(id);
        let bytes = match read_cached(&path) {
            Some(b) => b,
            None => {
                let b = read_object(self.target.as_ref(), &format!("{BACKUPS_DIR}{id}")).await?;
                if let Err(e) = write_cached(&path, &b) {
                    tracing::debug!("could not cache manifest {id}: {e}");
                }
                b
            }
        };
        self.open_manifest(id, &bytes)
    }

    /// Loads one manifest by its full id.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`]; [`ErrorKind::Corrupt`] when it fails authentication.
    pub async fn load_manifest(&self, id: &str) -> Result<Manifest> {
        let key = format!("{BACKUPS_DIR}{id}");
        let bytes = read_object(self.target.as_ref(), &key).await?;
        self.open_manifest(id, &bytes)
    }

    fn open_manifest(&self, id: &str, bytes: &[u8]) -> Result<Manifest> {
        let manifest: Manifest = format::open_document(
            &self.keys,
            manifest_aad(id).as_bytes(),
            bytes,
            &format!("manifest {id}"),
        )?;
        if !(FORMAT_VERSION..=format::MANIFEST_VERSION_TREES).contains(&manifest.format_version) {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                format!(
                    "backup {id} has format version {}, which this dbops does not read",
                    manifest.format_version
                ),
            ));
        }
        Ok(manifest)
    }

    /// Finds a backup by `latest`, `latest:DATABASE`, its full id, or a unique prefix
    /// of its id or of its random suffix; the same as [`Repository::select`] with no
    /// filter.
    ///
    /// # Errors
    /// As [`Repository::select`].
    pub async fn find_backup(&self, spec: &str) -> Result<Manifest> {
        self.select(spec, &BackupFilter::default()).await
    }

    /// Resolves a selector (see [`Selector`]) within `filter`.
    ///
    /// `latest` is the newest backup of ONE group: when the backups that pass the
    /// filter belong to several groups (two databases in one repository), it is
    /// refused with the groups listed, so that a restore can never pick another
    /// database's backup. An id that names a backup outside the filter is refused too.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when nothing matches; [`ErrorKind::InvalidInput`] when the
    /// selector is ambiguous (several ids, or several groups for `latest`), with the
    /// candidates in the message; storage errors.
    pub async fn select(&self, spec: &str, filter: &BackupFilter) -> Result<Manifest> {
        let mut filter = filter.clone();
        let selector = Selector::parse(spec, &mut filter)?;
        let location = self.target.location();
        match selector {
            Selector::Latest => {
                let mut candidates = self.list_backups_matching(&filter).await?;
                // A safety backup (the state before an in-place restore) is never
                // `latest` unless asked for by its tag.
                if !filter.tags.contains(SAFETY_TAG) {
                    candidates.retain(|m| !m.tags.contains(SAFETY_TAG));
                }
                let groups = groups_of(&candidates, &GroupBy::default());
                let mut newest: std::collections::BTreeMap<&BackupGroup, &Manifest> =
                    std::collections::BTreeMap::new();
                for (m, g) in candidates.iter().zip(&groups) {
                    let slot = newest.entry(g).or_insert(m);
                    if m.id > slot.id {
                        *slot = m;
                    }
                }
                // Partial backups (a table filter) are a series of their own: beside
                // the full series of the same database, `latest` is the full one.
                let full: Vec<&BackupGroup> = newest
                    .keys()
                    .filter(|g| g.partial.is_none())
                    .copied()
                    .collect();
                if newest.len() > 1
                    && full.len() == 1
                    && newest
                        .keys()
                        .all(|g| g.database == full[0].database && g.server == full[0].server)
                {
                    let keep = full[0].clone();
                    newest.retain(|g, _| **g == keep);
                }
                match newest.len() {
                    0 if filter.is_empty() => Err(Error::new(
                        ErrorKind::NotFound,
                        format!("there is no backup in the repository at {location}"),
                    )),
                    0 => Err(Error::new(
                        ErrorKind::NotFound,
                        format!("there is no backup of {filter} in the repository at {location}"),
                    )),
                    1 => Ok(newest.into_values().next().expect("one group").clone()),
                    _ => Err(Error::invalid(format!(
                        "'latest' is ambiguous: the repository at {location} holds backups of {} groups{}; name the database (a database filter, or latest:NAME) or a backup id. The groups and their newest backups: {}",
                        newest.len(),
                        if filter.is_empty() {
                            String::new()
                        } else {
                            format!(" matching {filter}")
                        },
                        newest
                            .iter()
                            .map(|(g, m)| format!("{g}: {}", m.id))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))),
                }
            }
            Selector::Id(spec) => {
                let ids = self.backup_ids().await?;
                let matching = match_ids(&ids, &spec);
                let id = match matching.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(Error::new(
                            ErrorKind::NotFound,
                            format!("there is no backup '{spec}' in the repository at {location}"),
                        ));
                    }
                    many => {
                        return Err(Error::invalid(format!(
                            "'{spec}' is ambiguous: it matches {} backups ({}{}); give more of the id",
                            many.len(),
                            many.iter()
                                .take(10)
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            if many.len() > 10 { ", …" } else { "" }
                        )));
                    }
                };
                let m = self.load_listed_manifest(&id).await?;
                if !filter.matches(&m) {
                    return Err(Error::invalid(format!(
                        "backup {id} is of database {} ({} {}), which does not match {filter}",
                        m.database,
                        m.engine,
                        source_address(&m)
                    )));
                }
                Ok(m)
            }
        }
    }

    /// The manifests that pass `filter`, oldest first.
    ///
    /// # Errors
    /// As [`Repository::list_backups`].
    pub async fn list_backups_matching(&self, filter: &BackupFilter) -> Result<Vec<Manifest>> {
        let mut all = self.list_backups().await?;
        all.retain(|m| filter.matches(m));
        Ok(all)
    }

    /// Writes an index file, for tests and benchmarks that build a repository's
    /// history without moving data (see `testkit::scale`).
    ///
    /// # Errors
    /// Storage errors.
    #[cfg(feature = "testkit")]
    pub(crate) async fn write_index_file(&self, file: &IndexFile) -> Result<String> {
        self.write_index(file).await
    }

    /// Writes an index file (named by its content) and returns its key.
    pub(crate) async fn write_index(&self, file: &pack::IndexFile) -> Result<String> {
        let body = format::seal_document(&self.keys, b"dbops index", file)?;
        let key = format!("{INDEX_DIR}{}", blake3::hash(&body).to_hex());
        self.target.put(&key, Bytes::from(body)).await?;
        Ok(key)
    }

    /// Writes a manifest: the act that makes a backup exist.
    ///
    /// A put is atomic and the id unique, so when the put reports an error the manifest
    /// either exists whole (the reply was lost) or not at all: a `head` settles which,
    /// and when even that is unknown the manifest is deleted, so that a backup
    /// reported as failed never appears in a listing.
    pub(crate) async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let body =
            format::seal_document(&self.keys, manifest_aad(&manifest.id).as_bytes(), manifest)?;
        let key = format!("{BACKUPS_DIR}{}", manifest.id);
        let Err(put_error) = self.target.put(&key, Bytes::from(body)).await else {
            return Ok(());
        };
        match self.target.head(&key).await {
            Ok(Some(_)) => {
                tracing::warn!(
                    "storing manifest {key} reported an error, but it is stored whole: {put_error}"
                );
                Ok(())
            }
            Ok(None) => Err(put_error),
            Err(_) => match self.target.delete(&key).await {
                Ok(()) => Err(put_error),
                Err(_) => Err(put_error.with_message(format!(
                    "storing the manifest {key} failed and its state is unknown; the list of backups shows whether backup {} exists",
                    manifest.id
                ))),
            },
        }
    }

    /// Writes a manifest under `lock`, which must still be held before and after: a
    /// manifest written after a prune judged the lock stale is deleted again (see
    /// lock.rs for why that closes the race).
    pub(crate) async fn record_manifest(
        &self,
        manifest: &Manifest,
        lock: &LockGuard,
    ) -> Result<()> {
        lock.ensure_held().await?;
        self.write_manifest(manifest).await?;
        if let Err(e) = lock.ensure_held().await {
            let _ = self.delete_manifest(&manifest.id).await;
            return Err(e);
        }
        Ok(())
    }

    /// Removes a manifest (the backup stops existing; its chunks stay until prune).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn delete_manifest(&self, id: &str) -> Result<()> {
        self.target.delete(&format!("{BACKUPS_DIR}{id}")).await
    }
}

/// How [`Repository::open_keyed`] unlocks an encrypted repository.
enum Unlock<'a> {
    Password(Option<&'a Secret>),
    Material(&'a [u8; 64]),
}

fn manifest_aad(id: &str) -> String {
    format!("dbops manifest {id}")
}

async fn unlock(target: &dyn BackupTarget, password: &Secret) -> Result<Keys> {
    let keys: Vec<String> = target
        .list(KEYS_DIR)
        .await?
        .map_ok(|m| m.key)
        .try_collect()
        .await?;
    if keys.is_empty() {
        return Err(Error::corrupt(format!(
            "the encrypted repository at {} has no key files",
            target.location()
        )));
    }
    for key in keys {
        let bytes = read_object(target, &key).await?;
        let file: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("key file {key} is malformed: {e}")))?;
        let password = password.clone();
        let material = tokio::task::spawn_blocking(move || file.unwrap_with(&password))
            .await
            .map_err(|e| Error::internal(format!("key derivation task failed: {e}")))??;
        if let Some(m) = material {
            return Ok(Keys::from_material(&m, true).with_key_file(key));
        }
    }
    Err(Error::new(
        ErrorKind::WrongPassword,
        format!(
            "the password does not open the repository at {}: check that it is this repository's password",
            target.location()
        ),
    ))
}

/// A cached object: its BLAKE3 then its bytes; `None` when absent or damaged.
fn read_cached(path: &std::path::Path) -> Option<Bytes> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 32 || blake3::hash(&data[32..]).as_bytes()[..] != data[..32] {
        return None;
    }
    Some(Bytes::from(data).slice(32..))
}

/// Writes a cached object atomically (a reader sees all of it or none), owner-only.
fn write_cached(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".tmp-{}", random_hex(8)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(blake3::hash(bytes).as_bytes())?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Removes cached manifests of backups the store no longer lists.
fn forget_cached_manifests(dir: &std::path::Path, listed: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".tmp-") && listed.binary_search(&name).is_err() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads a whole (small) object.
pub(crate) async fn read_object(target: &dyn BackupTarget, key: &str) -> Result<Bytes> {
    let mut stream = target.get(key).await?;
    let mut buf = BytesMut::new();
    while let Some(piece) = stream.try_next().await? {
        buf.extend_from_slice(&piece);
    }
    Ok(buf.freeze())
}
