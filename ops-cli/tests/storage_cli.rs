//! Object storage and repository maintenance end to end: a real S3-API server (moto)
//! on loopback, copies between repositories with different keys, backups through a
//! target that fails 5 % of calls, and backups racing prunes.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use common::{Ctx, load_sample, psql, table_checksums};
use ops_core::repo::{
    BackupOptions, Encryption, InitOptions, KdfParams, PruneOptions, Repository, VerifyOptions,
};
use ops_core::{BackupSummary, DumpOptions, ErrorKind, RetentionDecision, RetentionPolicy, Secret};
use ops_postgres::ephemeral::EphemeralPostgres;
use ops_storage::s3_test_server::S3TestServer;
use ops_storage::{FaultConfig, FaultyTarget, RetryTarget, TargetOptions, open_target};

fn with_s3(ctx: &Ctx, server: &S3TestServer, url: &str, args: &[&str]) -> common::Run {
    let mut c = ctx.command(args);
    c.envs(server.env()).env("DBOPS_REPO", url);
    let o = c.output().expect("run dbops");
    common::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backup_verify_restore_and_copy_to_another_repository() {
    let server = S3TestServer::start().expect("start the S3 test server");
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    let which = load_sample(&pg, "shop").await;
    let ctx = Ctx::new();
    let s3 = server.url("dbops-test");

    // No password and no explicit opt-in: refused on a remote target.
    let mut refused = ctx.command(&["init"]);
    refused
        .envs(server.env())
        .env("DBOPS_REPO", &s3)
        .env_remove("DBOPS_PASSWORD");
    let r = refused.output().expect("run");
    assert_ne!(r.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--no-encryption"));

    with_s3(&ctx, &server, &s3, &["init", "--kdf-memory-mib", "8"]).ok();
    let id = with_s3(
        &ctx,
        &server,
        &s3,
        &["backup", &pg.url_for("shop"), "--jobs", "2"],
    )
    .ok()
    .stdout
    .trim()
    .to_owned();
    let v = with_s3(&ctx, &server, &s3, &["verify", &id, "--read-data"]);
    assert_eq!(v.code, 0, "{}", v.all());
    with_s3(
        &ctx,
        &server,
        &s3,
        &["restore", &id, &pg.url_for("from_s3"), "--create"],
    )
    .ok();
    let source = table_checksums(&pg, "shop");
    assert_eq!(
        source,
        table_checksums(&pg, "from_s3"),
        "{which}: restore from S3 differs"
    );

    // Copy to a local repository with another password; restore from the copy.
    let local = ctx
        .dir
        .path()
        .join("offsite")
        .to_str()
        .expect("utf8")
        .to_owned();
    let mut init_local = ctx.command(&["--repo", &local, "init", "--kdf-memory-mib", "8"]);
    init_local.env("DBOPS_PASSWORD", "another password");
    assert!(init_local.status().expect("run").success());
    let copy = |args: &[&str]| {
        let mut c =
            ctx.command(&[&["--json", "copy", "--from", &s3, "--to", &local][..], args].concat());
        c.envs(server.env())
            .env("DBOPS_FROM_PASSWORD", &ctx.password)
            .env("DBOPS_PASSWORD", "another password");
        let o = c.output().expect("run");
        assert!(
            o.status.success(),
            "copy failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    let first = copy(&["--all"]);
    assert_eq!(first["backups"][0]["copied"], true);
    let again = copy(&["--latest"]);
    assert_eq!(
        again["backups"][0]["copied"], false,
        "a copied backup is not copied twice"
    );

    psql(
        &pg,
        "shop",
        &[
            "-c",
            "CREATE TABLE extra AS SELECT g AS id FROM generate_series(1, 1000) g",
        ],
    );
    let id2 = with_s3(&ctx, &server, &s3, &["backup", &pg.url_for("shop")])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let second = copy(&[&id2]);
    let stats = &second["backups"][0]["stats"];
    let (new, total) = (
        stats["new_bytes"].as_u64().expect("new"),
        stats["bytes"].as_u64().expect("bytes"),
    );
    assert!(
        new * 5 < total,
        "the second copy sends only what the destination lacks: {new} of {total}"
    );

    let mut restore = ctx.command(&[
        "--repo",
        &local,
        "restore",
        &id2,
        &pg.url_for("from_copy"),
        "--create",
    ]);
    restore.env("DBOPS_PASSWORD", "another password");
    let o = restore.output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        table_checksums(&pg, "shop"),
        table_checksums(&pg, "from_copy")
    );
}

/// A throwaway server with database `app` holding table `t(id, v)` of `rows` rows,
/// `v` computed from `g` by `value`.
async fn app_server(value: &str, rows: u32) -> EphemeralPostgres {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    pg.create_database("app").await.expect("create");
    let sql = format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, {value} FROM generate_series(1, {rows}) g;"
    );
    psql(&pg, "app", &["-c", &sql]);
    pg
}

fn fast(enc: Encryption) -> InitOptions {
    InitOptions::new(enc)
        .with_kdf(KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
        .with_pack_size(256 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_through_a_failing_target_complete_and_verify_or_leave_nothing() {
    let pg = app_server("repeat(md5(g::text), 8)", 30000).await;
    let engine = pg.engine_for("app").expect("engine");
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = open_target(
        dir.path().to_str().expect("utf8"),
        &TargetOptions::default().with_retry(None),
    )
    .expect("target");
    let repo = Repository::init(
        Arc::clone(&plain),
        fast(Encryption::Password(Secret::new("pw"))),
    )
    .await
    .expect("init");
    let (mut completed, mut failed) = (0, 0);
    for seed in 0..6u64 {
        let faulty: Arc<dyn ops_core::BackupTarget> = Arc::new(FaultyTarget::new(
            Arc::clone(&plain),
            FaultConfig::default()
                .with_failure_rate(0.05)
                .with_lost_reply_rate(0.02)
                .with_seed(seed),
        ));
        // Seeds 0..3 with retries (should complete), 3..6 without (may fail cleanly).
        let target: Arc<dyn ops_core::BackupTarget> = if seed < 3 {
            Arc::new(RetryTarget::new(faulty))
        } else {
            faulty
        };
        let before = repo.list_backups().await.expect("list").len();
        let r = match Repository::open(target, Some(&Secret::new("pw"))).await {
            Ok(faulty_repo) => faulty_repo
                .backup(
                    &engine,
                    &BackupOptions::default().with_dump(DumpOptions::default().with_jobs(2)),
                )
                .await
                .map(|m| m.id),
            Err(e) => Err(e),
        };
        let after = repo.list_backups().await.expect("list");
        match r {
            Ok(id) => {
                completed += 1;
                let m = after.iter().find(|m| m.id == id).expect("listed");
                let report = repo
                    .verify(std::slice::from_ref(m), &VerifyOptions::new(true))
                    .await
                    .expect("verify");
                assert!(report.ok(), "seed {seed}: {:?}", report.problems);
            }
            Err(e) => {
                failed += 1;
                assert!(!e.to_string().is_empty());
                assert_eq!(
                    after.len(),
                    before,
                    "seed {seed}: a failed backup left a manifest ({e})"
                );
            }
        }
    }
    assert!(
        completed >= 3,
        "with retries every backup completes ({completed} completed, {failed} failed)"
    );
    let all = repo.list_backups().await.expect("list");
    assert!(
        repo.verify(&all, &VerifyOptions::new(true))
            .await
            .expect("verify")
            .ok()
    );
}

/// Keeps the newest `n` backups (the test's own policy: prune safety, not retention
/// rules, is under test here).
#[derive(Debug)]
struct KeepNewest(usize);

impl RetentionPolicy for KeepNewest {
    fn apply(&self, backups: &[BackupSummary], _now: DateTime<Utc>) -> Vec<RetentionDecision> {
        let mut order: Vec<&BackupSummary> = backups.iter().collect();
        order.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
        let keep: BTreeSet<&str> = order.iter().take(self.0).map(|b| b.id.as_str()).collect();
        backups
            .iter()
            .map(|b| RetentionDecision {
                id: b.id.clone(),
                time: b.time,
                keep: keep.contains(b.id.as_str()),
                reasons: vec![if keep.contains(b.id.as_str()) {
                    "newest".into()
                } else {
                    "old".into()
                }],
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_prunes_racing_never_lose_a_backup() {
    let pg = app_server("md5(g::text)", 20000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = open_target(
        dir.path().to_str().expect("utf8"),
        &TargetOptions::default(),
    )
    .expect("target");
    let repo = Repository::init(target, fast(Encryption::Password(Secret::new("pw"))))
        .await
        .expect("init");
    let prunes = Arc::new(AtomicUsize::new(0));
    let locked = Arc::new(AtomicUsize::new(0));

    let backups = {
        let repo = repo.clone();
        let url = pg.url_for("app");
        let admin = pg.url_for("app");
        tokio::spawn(async move {
            let engine = ops_postgres::PostgresEngine::new(&url).expect("engine");
            for i in 0..8 {
                // Change the data a little each time so prunes have something to remove.
                let sql = format!("UPDATE t SET v = md5(v || '{i}') WHERE id % 50 = {i}");
                let status = std::process::Command::new("psql")
                    .args(["-X", "-q", "-d", &admin, "-c", &sql])
                    .status();
                if !status.is_ok_and(|s| s.success()) {
                    panic!("update failed");
                }
                loop {
                    match repo.backup(&engine, &BackupOptions::default()).await {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::Locked => {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await
                        }
                        Err(e) => panic!("backup failed: {e}"),
                    }
                }
            }
        })
    };
    let pruner = {
        let repo = repo.clone();
        let (prunes, locked) = (Arc::clone(&prunes), Arc::clone(&locked));
        tokio::spawn(async move {
            for _ in 0..40 {
                let forget = repo
                    .forget(
                        &KeepNewest(2),
                        Utc::now(),
                        &ops_core::repo::ForgetOptions::default(),
                    )
                    .await;
                match forget {
                    Ok(_) | Err(_) => {}
                }
                match repo
                    .prune(
                        &PruneOptions::default()
                            .with_max_unused(0.0)
                            .with_unindexed_grace_secs(0),
                    )
                    .await
                {
                    Ok(_) => {
                        prunes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::Locked => {
                        locked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("prune failed: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
        })
    };
    backups.await.expect("backups");
    pruner.await.expect("pruner");
    repo.prune(
        &PruneOptions::default()
            .with_max_unused(0.0)
            .with_unindexed_grace_secs(0),
    )
    .await
    .expect("final prune");
    assert!(
        prunes.load(Ordering::SeqCst) >= 2,
        "prunes ran ({} locked out)",
        locked.load(Ordering::SeqCst)
    );
    let all = repo.list_backups().await.expect("list");
    assert!(!all.is_empty());
    let report = repo
        .verify(&all, &VerifyOptions::new(true))
        .await
        .expect("verify");
    assert!(report.ok(), "after racing prunes: {:?}", report.problems);
    // The newest backup restores and equals the database.
    let restored = pg.engine_for("restored").expect("engine");
    repo.restore(
        all.last().expect("newest"),
        &restored,
        &ops_core::RestoreOptions::default().with_create(true),
    )
    .await
    .expect("restore");
    assert_eq!(
        table_checksums(&pg, "app"),
        table_checksums(&pg, "restored")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_explains_every_decision_and_prune_keeps_what_is_kept() {
    let pg = app_server("md5(g::text)", 5000).await;
    let ctx = Ctx::new();
    ctx.init();
    let url = pg.url_for("app");
    let mut ids = Vec::new();
    for (i, tag) in ["keep", "x", "y"].iter().enumerate() {
        psql(
            &pg,
            "app",
            &[
                "-c",
                &format!("UPDATE t SET v = md5(v) WHERE id % 10 = {i}"),
            ],
        );
        ids.push(
            ctx.run(&["backup", &url, "--tag", tag])
                .ok()
                .stdout
                .trim()
                .to_owned(),
        );
    }

    let none = ctx.run(&["forget"]);
    assert_eq!(none.code, 2, "{}", none.all());
    assert!(none.stderr.contains("no retention rule"), "{}", none.stderr);

    let dry = ctx.run(&["forget", "--keep-last", "1", "--dry-run"]).ok();
    assert!(
        dry.stdout.contains("last 1") && dry.stdout.contains("no rule keeps it"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    assert_eq!(
        ctx.run(&["--json", "list"]).ok().json()["backups"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    let config = ctx.dir.path().join("dbops.toml");
    std::fs::write(&config, "[retention]\nlast = 1\ntags = [\"keep\"]\n").expect("write config");
    let done = ctx
        .run(&[
            "--config",
            config.to_str().expect("utf8"),
            "--json",
            "forget",
            "--prune",
        ])
        .ok()
        .json();
    assert_eq!(done["removed"], serde_json::json!([ids[1]]));
    let kept: Vec<String> = ctx.run(&["--json", "list"]).ok().json()["backups"]
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(kept, vec![ids[0].clone(), ids[2].clone()]);
    ctx.run(&["verify", "--all", "--read-data"]).ok();
    ctx.run(&["restore", &ids[0], &pg.url_for("first"), "--create"])
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_name_the_bucket_the_endpoint_and_the_fix() {
    let server = S3TestServer::start().expect("start the S3 test server");
    let ctx = Ctx::new();
    let missing = server.url("no-such-bucket-here");
    for args in [&["init", "--kdf-memory-mib", "8"][..], &["list"][..]] {
        let r = with_s3(&ctx, &server, &missing, args);
        assert_ne!(r.code, 0);
        assert!(
            r.stderr.contains("no-such-bucket-here")
                && r.stderr.contains(&server.endpoint())
                && r.stderr.contains("does not exist"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("<?xml") && !r.stderr.contains("<Error>"),
            "{}",
            r.stderr
        );
    }
    // A plain-HTTP endpoint without the opt-in: what is wrong and what to do.
    let mut c = ctx.command(&["list"]);
    c.envs(server.env())
        .env("DBOPS_REPO", server.url("dbops-test"))
        .env_remove("AWS_ALLOW_HTTP");
    let o = c.output().expect("run dbops");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("AWS_ALLOW_HTTP") && stderr.contains(&server.endpoint()),
        "{stderr}"
    );
    assert!(!stderr.contains("builder error"), "{stderr}");
}
