//! Hook commands under a real `sh`: exit codes, the skip convention, time limits that
//! end the whole process group, and the environment they see.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ops_agent::hooks::{HookOutcome, run_hook};

#[tokio::test]
async fn exit_codes_skip_and_the_reason_from_stderr() {
    let t = Duration::from_secs(10);
    assert_eq!(run_hook("true", &[], &[], t).await, HookOutcome::Ok);
    assert_eq!(run_hook("exit 75", &[], &[], t).await, HookOutcome::Skip);
    match run_hook("echo first >&2; echo 'disk full' >&2; exit 3", &[], &[], t).await {
        HookOutcome::Failed(why) => assert_eq!(why, "exited with 3: disk full"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_timeout_ends_the_hook_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let cmd = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let started = Instant::now();
    let out = run_hook(&cmd, &[], &[], Duration::from_millis(500)).await;
    assert!(
        matches!(&out, HookOutcome::Failed(w) if w.contains("timed out")),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background `sleep` was in the hook's process group: it is gone too.
    std::thread::sleep(Duration::from_millis(200));
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    assert!(!alive, "the hook's child {pid} survived the timeout");
}

#[tokio::test]
async fn the_environment_has_the_job_and_not_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    // SAFETY-free: the variable is set for this test process only through the child.
    let cmd = format!("env > {}", out.display());
    let remove = vec!["HOME".to_owned()];
    let vars = [("DBOPS_JOB", "erp-backup".to_owned())];
    assert_eq!(
        run_hook(&cmd, &vars, &remove, Duration::from_secs(10)).await,
        HookOutcome::Ok
    );
    let env = std::fs::read_to_string(out).unwrap();
    assert!(env.contains("DBOPS_JOB=erp-backup"));
    assert!(!env.lines().any(|l| l.starts_with("HOME=")), "{env}");
    assert!(
        env.lines().any(|l| l.starts_with("PATH=")),
        "the rest is inherited"
    );
}
