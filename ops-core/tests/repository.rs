//! Repository behaviour over real targets (memory and a local directory), fed by a
//! deterministic generator engine: de-duplication, damage detection that names the
//! chunk and the table, passwords, format versions, and failed backups that leave no
//! manifest. Real database round trips are in the engine crates and the CLI tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;

use ops_core::repo::{
    BackupOptions, ChunkerParams, Encryption, InitOptions, KdfParams, Repository, VerifyOptions,
};
use ops_core::{
    BackupTarget, DatabaseEngine, DumpOptions, DumpReport, DumpSink, Error, ErrorKind,
    RestoreOptions, RestoreReport, Result, Secret, ServerInfo, StreamRole, StreamSource,
    StreamSpec, TableRef,
};
use ops_storage::{TargetOptions, open_target};

/// Emits tables of pseudo-random rows; `version` changes a few rows of table 0.
#[derive(Debug)]
struct Generator {
    tables: usize,
    rows: usize,
    version: u64,
    fail_after_first_stream: bool,
    /// Deletes every lock during the dump, as a prune that judged them stale would.
    steal_locks: Option<Arc<dyn BackupTarget>>,
    restored: Mutex<BTreeMap<String, Vec<u8>>>,
    restore_started: AtomicBool,
}

impl Generator {
    fn new(tables: usize, rows: usize) -> Self {
        Self {
            tables,
            rows,
            version: 0,
            fail_after_first_stream: false,
            steal_locks: None,
            restored: Mutex::new(BTreeMap::new()),
            restore_started: AtomicBool::new(false),
        }
    }

    fn table_rows(&self, t: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
        for r in 0..self.rows {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let changed = t == 0 && self.version > 0 && r % 997 == 0;
            let v = if changed {
                x.wrapping_add(self.version)
            } else {
                x
            };
            out.extend_from_slice(
                format!("{r}\t{v:x}\tsome text {}\\tescaped\n", v % 1000).as_bytes(),
            );
        }
        out
    }
}

#[async_trait]
impl DatabaseEngine for Generator {
    fn name(&self) -> &'static str {
        "generator"
    }
    fn location(&self) -> String {
        "generator://test".into()
    }
    fn database(&self) -> String {
        "gen".into()
    }
    async fn describe(&self) -> Result<ServerInfo> {
        Ok(ServerInfo::default())
    }
    async fn dump(&self, _o: &DumpOptions, sink: Arc<dyn DumpSink>) -> Result<DumpReport> {
        let mut schema = sink
            .open_stream(StreamSpec::new("schema", StreamRole::Schema))
            .await?;
        schema
            .write(Bytes::from_static(b"CREATE TABLE t0 ...;\n"))
            .await?;
        schema.finish().await?;
        for t in 0..self.tables {
            let spec = StreamSpec::table_data(
                format!("data/s.t{t}/0"),
                TableRef::new("s", format!("t{t}")),
            );
            let mut w = sink.open_stream(spec).await?;
            for piece in self.table_rows(t).chunks(1000) {
                w.write(Bytes::copy_from_slice(piece)).await?;
            }
            if let Some(target) = &self.steal_locks {
                let locks: Vec<_> = target.list("locks/").await?.try_collect().await?;
                for l in locks {
                    target.delete(&l.key).await?;
                }
            }
            if self.fail_after_first_stream {
                return Err(Error::new(
                    ErrorKind::Interrupted,
                    "server closed the connection",
                ));
            }
            w.finish().await?;
        }
        Ok(DumpReport::default())
    }
    async fn restore(
        &self,
        source: Arc<dyn StreamSource>,
        _o: &RestoreOptions,
    ) -> Result<RestoreReport> {
        self.restore_started.store(true, Ordering::SeqCst);
        for spec in source.streams().to_vec() {
            let data: Vec<Bytes> = source.open(&spec.name).await?.try_collect().await?;
            let joined: Vec<u8> = data.iter().flat_map(|b| b.iter().copied()).collect();
            self.restored
                .lock()
                .expect("lock")
                .insert(spec.name.clone(), joined);
        }
        Ok(RestoreReport::default())
    }
    async fn drop_database(&self) -> Result<()> {
        Ok(())
    }
}

fn fast_init(encryption: Encryption) -> InitOptions {
    InitOptions::new(encryption)
        .with_kdf(KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
        .with_pack_size(256 * 1024)
        .with_chunker(ChunkerParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        })
}

fn memory() -> Arc<dyn BackupTarget> {
    open_target("memory://", &TargetOptions::default()).expect("memory target")
}

async fn repo_on(target: Arc<dyn BackupTarget>) -> Repository {
    Repository::init(target, fast_init(Encryption::Password(Secret::new("pw"))))
        .await
        .expect("init")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_round_trip_with_dedup() {
    let target = memory();
    let repo = repo_on(Arc::clone(&target)).await;
    let mut engine = Generator::new(4, 20_000);
    let first = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup");
    assert_eq!(first.streams.len(), 5);
    assert_eq!(first.tables().values().sum::<u64>(), 80_000);
    assert!(first.stats.stored_bytes > 0 && first.stats.stored_bytes < first.stats.bytes);

    engine.version = 1;
    let second = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup");
    let share = second.stats.new_bytes as f64 / second.stats.bytes as f64;
    assert!(
        share < 0.10,
        "second backup stored {:.1} % new bytes",
        share * 100.0
    );

    repo.restore(&second, &engine, &RestoreOptions::default())
        .await
        .expect("restore");
    let restored = engine.restored.lock().expect("lock").clone();
    for t in 0..4 {
        assert_eq!(
            restored[&format!("data/s.t{t}/0")],
            engine.table_rows(t),
            "table {t}"
        );
    }
    let listed = repo.list_backups().await.expect("list");
    assert_eq!(
        listed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![first.id.clone(), second.id.clone()]
    );
    assert_eq!(
        repo.find_backup("latest").await.expect("latest").id,
        second.id
    );
    let report = repo
        .verify(&listed, &VerifyOptions::new(true))
        .await
        .expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    let age = ops_core::HealthCheck::check(&ops_core::repo::LastBackupAge::new(repo.clone()))
        .await
        .expect("health check");
    assert_eq!(
        age.status,
        ops_core::HealthStatus::Healthy,
        "{}",
        age.reason
    );
    assert!(age.reason.contains(&second.id), "{}", age.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_found_and_named_and_restore_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().to_str().expect("utf8").to_owned();
    let target = open_target(&url, &TargetOptions::default()).expect("fs target");
    let repo = repo_on(Arc::clone(&target)).await;
    let engine = Generator::new(3, 5_000);
    let m = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup");

    // Flip one byte in the middle of one pack.
    let pack = walk(dir.path().join("packs"))
        .into_iter()
        .next()
        .expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x01;
    std::fs::write(&pack, bytes).expect("write pack");

    let structure = repo
        .verify(std::slice::from_ref(&m), &VerifyOptions::new(false))
        .await
        .expect("verify");
    assert!(
        structure.ok(),
        "structure check reads no data: {:?}",
        structure.problems
    );
    let report = repo
        .verify(std::slice::from_ref(&m), &VerifyOptions::new(true))
        .await
        .expect("verify");
    assert!(!report.ok());
    let p = &report.problems[0];
    assert!(p.chunk.is_some(), "{p:?}");
    assert!(
        p.table.as_deref().is_some_and(|t| t.starts_with("s.t"))
            || p.stream.as_deref() == Some("schema"),
        "{p:?}"
    );

    let err = repo
        .restore(&m, &engine, &RestoreOptions::default())
        .await
        .expect_err("restore must fail");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("chunk"), "{err}");
}

fn walk(dir: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backup_leaves_no_manifest() {
    let target = memory();
    let repo = repo_on(Arc::clone(&target)).await;
    let mut engine = Generator::new(3, 5_000);
    engine.fail_after_first_stream = true;
    let err = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect_err("must fail");
    assert_eq!(err.kind(), ErrorKind::Interrupted);
    assert!(repo.list_backups().await.expect("list").is_empty());
    let locks: Vec<_> = target
        .list("locks/")
        .await
        .expect("list")
        .try_collect()
        .await
        .expect("locks");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(locks.is_empty(), "lock left behind: {locks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_password_is_refused_up_front() {
    let target = memory();
    repo_on(Arc::clone(&target)).await;
    let wrong = Repository::open(Arc::clone(&target), Some(&Secret::new("nope")))
        .await
        .expect_err("wrong");
    assert_eq!(wrong.kind(), ErrorKind::WrongPassword);
    assert!(!wrong.to_string().contains("nope"));
    let missing = Repository::open(Arc::clone(&target), None)
        .await
        .expect_err("missing");
    assert_eq!(missing.kind(), ErrorKind::WrongPassword);
    assert!(
        missing.to_string().contains("no password was given"),
        "{missing}"
    );
    Repository::open(target, Some(&Secret::new("pw")))
        .await
        .expect("right password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninitialised_and_unknown_versions_are_clear() {
    let target = memory();
    let err = Repository::open(Arc::clone(&target), None)
        .await
        .expect_err("empty");
    assert_eq!(err.kind(), ErrorKind::NotInitialized);
    assert!(
        err.to_string().contains("no dbops repository") && err.to_string().contains("create one"),
        "{err}"
    );
    target
        .put(
            "config",
            Bytes::from_static(br#"{"format":"dbops-repository","version":7}"#),
        )
        .await
        .expect("put");
    let err = Repository::open(target, None)
        .await
        .expect_err("future version");
    assert_eq!(err.kind(), ErrorKind::UnsupportedFormat);
    assert!(err.to_string().contains('7'), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_repository_round_trips_and_init_twice_fails() {
    let target = memory();
    let repo = Repository::init(Arc::clone(&target), fast_init(Encryption::None))
        .await
        .expect("init");
    assert!(!repo.is_encrypted());
    let again = Repository::init(Arc::clone(&target), fast_init(Encryption::None))
        .await
        .expect_err("twice");
    assert_eq!(again.kind(), ErrorKind::AlreadyExists);
    let engine = Generator::new(2, 3_000);
    let m = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup");
    let reopened = Repository::open(target, None).await.expect("open");
    reopened
        .restore(&m, &engine, &RestoreOptions::default())
        .await
        .expect("restore");
    assert_eq!(
        engine.restored.lock().expect("lock")["data/s.t1/0"],
        engine.table_rows(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backups_share_chunks_safely() {
    let target = memory();
    let repo = repo_on(Arc::clone(&target)).await;
    let a = Generator::new(3, 8_000);
    let b = Generator::new(3, 8_000);
    let options = BackupOptions::default();
    let (ra, rb) = tokio::join!(repo.backup(&a, &options), repo.backup(&b, &options));
    let (ma, mb) = (ra.expect("a"), rb.expect("b"));
    let report = repo
        .verify(&[ma, mb], &VerifyOptions::new(true))
        .await
        .expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_lock_was_removed_records_nothing() {
    let target = memory();
    let repo = repo_on(Arc::clone(&target)).await;
    let mut engine = Generator::new(2, 2_000);
    engine.steal_locks = Some(Arc::clone(&target));
    let err = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect_err("must fail");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(err.to_string().contains("lock was removed"), "{err}");
    assert!(repo.list_backups().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_shared_by_backups_is_reported_for_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().to_str().expect("utf8").to_owned();
    let target = open_target(&url, &TargetOptions::default()).expect("fs target");
    let repo = repo_on(Arc::clone(&target)).await;
    let engine = Generator::new(2, 3_000);
    let a = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("a");
    let b = repo
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("b");
    assert_eq!(
        b.stats.new_chunks, 0,
        "the second backup shares every chunk"
    );
    let backups = [a.clone(), b.clone()];

    let pack = walk(dir.path().join("packs"))
        .into_iter()
        .next()
        .expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read");
    let at = bytes.len() / 4;
    bytes[at] ^= 0x10;
    std::fs::write(&pack, &bytes).expect("write");
    let read = repo
        .verify(&backups, &VerifyOptions::new(true))
        .await
        .expect("verify");
    for m in &backups {
        assert!(
            read.problems.iter().any(|p| p.backup == m.id),
            "no read-data problem for {}: {:?}",
            m.id,
            read.problems
        );
    }

    std::fs::remove_file(&pack).expect("remove pack");
    let structure = repo
        .verify(&backups, &VerifyOptions::new(false))
        .await
        .expect("verify");
    for m in &backups {
        assert!(
            structure
                .problems
                .iter()
                .any(|p| p.backup == m.id && p.message.contains("missing")),
            "no structure problem for {}: {:?}",
            m.id,
            structure.problems
        );
    }
}

/// Every file below `dir`, recursively.
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Processes that share a cache directory (the CLI's default) update it in turn: one
/// never reads the name of a pack table or run that another one then removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_sharing_one_cache_directory_run_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("repo").to_str().expect("utf8").to_owned();
    let target = open_target(&url, &TargetOptions::default()).expect("fs target");
    let plain = repo_on(target).await;
    let cache = dir.path().join("cache");
    let options = BackupOptions::default();
    let (rounds, at_once) = (10u64, 4u64);
    for round in 0..rounds {
        let engines: Vec<Generator> = (0..at_once)
            .map(|i| {
                let mut g = Generator::new(1, 200);
                g.version = round * at_once + i;
                g
            })
            .collect();
        // A handle each, as separate processes would have.
        let repos: Vec<Repository> = (0..at_once)
            .map(|_| plain.clone().with_cache_dir(&cache))
            .collect();
        let results = futures::future::join_all(
            repos
                .iter()
                .zip(&engines)
                .map(|(repo, engine)| repo.backup(engine, &options)),
        )
        .await;
        for (n, r) in results.into_iter().enumerate() {
            r.unwrap_or_else(|e| panic!("round {round}, backup {n}: {e}"));
        }
    }
    let listed = plain.list_backups().await.expect("list");
    assert_eq!(listed.len() as u64, rounds * at_once);
    let report = plain
        .verify(&listed, &VerifyOptions::new(true))
        .await
        .expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

/// What a repository answers, to compare a cached repository with an uncached one:
/// the listing, a verification of every byte, and the restored content.
async fn answers(repo: &Repository, engine: &Generator) -> (Vec<String>, bool, Vec<u8>) {
    let listed = repo.list_backups().await.expect("list");
    let ids = listed.iter().map(|m| m.id.clone()).collect();
    let report = repo
        .verify(&listed, &VerifyOptions::new(true))
        .await
        .expect("verify");
    let newest = listed.last().expect("a backup");
    repo.restore(newest, engine, &RestoreOptions::default())
        .await
        .expect("restore");
    let restored = engine.restored.lock().expect("lock").clone();
    (ids, report.ok(), restored.into_values().flatten().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stale_or_damaged_cache_never_changes_an_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("repo").to_str().expect("utf8").to_owned();
    let target = open_target(&url, &TargetOptions::default()).expect("fs target");
    let plain = repo_on(target).await;
    let cache = dir.path().join("cache");
    let cached = plain.clone().with_cache_dir(&cache);
    let mut engine = Generator::new(3, 8_000);
    cached
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup");
    engine.version = 1;
    cached
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup");
    let truth = answers(&plain, &engine).await;
    assert!(truth.1, "the repository verifies");
    assert_eq!(answers(&cached, &engine).await, truth);
    let cache_dir = cached.cache_dir().expect("cache dir");
    assert!(
        files_below(&cache_dir.join("index"))
            .iter()
            .any(|p| p.ends_with("meta.json")),
        "the index cache was written"
    );
    assert!(!files_below(&cache_dir.join("manifests")).is_empty());

    // Damage every cached file in turn, one byte; then delete the cache.
    let damage: Vec<std::path::PathBuf> = files_below(&cache_dir);
    for file in &damage {
        let mut bytes = std::fs::read(file).expect("read cache file");
        if bytes.is_empty() {
            continue;
        }
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        std::fs::write(file, &bytes).expect("damage cache file");
        assert_eq!(
            answers(&cached, &engine).await,
            truth,
            "after damaging {}",
            file.display()
        );
        // An unchanged backup through the repaired cache stores nothing new, as one
        // without a cache would.
    }
    std::fs::remove_dir_all(&cache).expect("delete cache");
    assert_eq!(answers(&cached, &engine).await, truth);
    let again = cached
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup");
    assert_eq!(
        again.stats.new_chunks, 0,
        "dedup works through the rebuilt cache"
    );

    // A stale cache: another host forgets the first backups and prunes (index files
    // are replaced, packs deleted). A backup of the old content through the stale
    // cache must store the chunks again, not reference deleted ones.
    let listed = plain.list_backups().await.expect("list");
    for m in &listed[..listed.len() - 1] {
        plain.delete_manifest(&m.id).await.expect("forget");
    }
    plain
        .prune(
            &ops_core::repo::PruneOptions::default()
                .with_max_unused(0.0)
                .with_unindexed_grace_secs(0),
        )
        .await
        .expect("prune");
    engine.version = 0;
    let old_content = cached
        .backup(&engine, &BackupOptions::default())
        .await
        .expect("backup through a stale cache");
    assert!(old_content.stats.new_chunks > 0);
    let after = answers(&cached, &engine).await;
    assert!(
        after.1,
        "every backup verifies after a backup through a stale cache"
    );
    assert_eq!(after, answers(&plain, &engine).await);
    let restored = engine.restored.lock().expect("lock").clone();
    assert_eq!(restored["data/s.t0/0"], engine.table_rows(0));
}
