//! Repository locks as an operator meets them: a backup waits for a prune instead of
//! being lost, a killed process's lock is stale at once on its own host, and `unlock`
//! says what it removed and why. Real throwaway PostgreSQL; real processes.

mod common;

use std::time::{Duration, Instant};

use common::{Ctx, database_with_rows};
use ops_postgres::ephemeral::EphemeralPostgres;

/// The lock objects: complete files (the local store writes through a temporary
/// `name#n` file, which a process killed mid-write leaves behind, unlisted).
fn lock_files(ctx: &Ctx) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::path::Path::new(&ctx.repo).join("locks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| !p.to_string_lossy().contains('#'))
                .filter(|p| {
                    std::fs::read(p)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .is_some()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes an exclusive lock held by this (live) test process, as a running prune would.
fn hold_exclusive_lock(ctx: &Ctx) -> std::path::PathBuf {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let start: u64 = stat[stat.rfind(')').expect(")") + 1..]
        .split_whitespace()
        .nth(19)
        .expect("starttime")
        .parse()
        .expect("number");
    let now = chrono::Utc::now();
    let body = serde_json::json!({
        "kind": "exclusive", "purpose": "prune",
        "host": hostname::get().expect("hostname").to_string_lossy(),
        "pid": std::process::id(), "pid_start": start,
        "created": now, "refreshed": now,
    });
    let dir = std::path::Path::new(&ctx.repo).join("locks");
    std::fs::create_dir_all(&dir).expect("locks dir");
    let path = dir.join(format!("{}-testlock", now.format("%Y%m%dT%H%M%S")));
    std::fs::write(&path, body.to_string()).expect("write lock");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_wait_for_locks_and_dead_holders_do_not_block() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    database_with_rows(&pg, "shop", 300_000, 4).await;
    let ctx = Ctx::new();
    ctx.init();
    let url = pg.url_for("shop");

    // A backup meeting a prune's lock waits, says so, and completes once it is gone.
    let held = hold_exclusive_lock(&ctx);
    let mut child = ctx
        .command(&["--lock-wait", "60s", "backup", &url])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn backup");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the backup waits"
    );
    std::fs::remove_file(&held).expect("release the lock");
    let out = child.wait_with_output().expect("backup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("waiting") && stderr.contains("prune"),
        "the wait names the holder: {stderr}"
    );
    // Without enough wait it gives up with the locked exit code.
    let held = hold_exclusive_lock(&ctx);
    let started = Instant::now();
    let gave_up = ctx.run(&["--lock-wait", "1s", "backup", &url]);
    assert_eq!(gave_up.code, 4, "{}", gave_up.all());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(gave_up.stderr.contains("waited"), "{}", gave_up.stderr);
    // unlock keeps a live holder's lock and says why.
    let kept = ctx.run(&["--json", "unlock"]).ok().json();
    assert_eq!(kept["locks"][0]["removed"], false, "{kept}");
    std::fs::remove_file(&held).expect("release the lock");

    // A backup killed with SIGKILL leaves its lock; on this host it is stale at once.
    for next in ["prune", "unlock"] {
        let mut child = ctx
            .command(&["backup", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn backup");
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock_files(&ctx).is_empty() {
            assert!(Instant::now() < deadline, "the backup never took its lock");
            assert!(
                child.try_wait().expect("wait").is_none(),
                "backup ended early"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        assert_eq!(lock_files(&ctx).len(), 1, "the killed backup left its lock");
        if next == "prune" {
            let prune = ctx.run(&["prune"]);
            assert_eq!(prune.code, 0, "{}", prune.all());
            assert!(lock_files(&ctx).is_empty(), "prune removed the dead lock");
        } else {
            let unlocked = ctx.run(&["unlock"]).ok();
            assert!(
                unlocked.stdout.contains("removed")
                    && unlocked.stdout.contains("no longer running"),
                "{}",
                unlocked.stdout
            );
            assert!(lock_files(&ctx).is_empty());
        }
    }
    ctx.run(&["verify", "--all"]).ok();
}
