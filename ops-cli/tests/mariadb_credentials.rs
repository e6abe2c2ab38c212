//! `dbops` against a throwaway MariaDB server with the password kept out of the URL:
//! from `MYSQL_PWD`, from an option file named in the URL, from `~/.my.cnf`; while
//! each backup runs, a watcher reads the command line of the dbops process and of
//! every process it starts, and the password must never be there. A wrong password is
//! exit code 7 and is not printed. A backup whose view and routine have a definer the
//! throwaway server of `verify --restore` lacks passes, and the report names the
//! account it made.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Ctx, Run};
use ops_mariadb::ephemeral::EphemeralMariaDb;

const PASSWORD: &str = "Pw-9f3e#Secret word";

const SCHEMA: &str = "
CREATE DATABASE shop;
CREATE TABLE shop.items (id int PRIMARY KEY, name varchar(20));
INSERT INTO shop.items VALUES (1, 'one'), (2, 'two'), (3, 'three');
CREATE USER 'app'@'%' IDENTIFIED BY 'Pw-9f3e#Secret word';
GRANT ALL ON shop.* TO 'app'@'%';
GRANT RELOAD ON *.* TO 'app'@'%';
CREATE DEFINER='app'@'%' VIEW shop.named_items AS SELECT id, name FROM shop.items WHERE name <> '';
CREATE DEFINER='app'@'%' PROCEDURE shop.count_items() SELECT COUNT(*) FROM shop.items;
";

/// What a watcher saw of a process tree.
#[derive(Debug, Default)]
struct Seen {
    /// Command lines read (non-empty), over all passes and processes.
    observations: usize,
    /// Distinct command lines, for the failure message.
    commands: BTreeSet<String>,
    /// Command lines that held the password.
    leaks: Vec<String>,
}

/// The parent of every process, from `/proc/<pid>/stat`.
fn parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// `root` and every process below it.
fn tree(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found
}

/// Watches the command lines of `root`'s process tree until `stop`.
fn watch(root: u32, secret: &'static str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        loop {
            let last = stop.load(Ordering::SeqCst);
            for pid in tree(root) {
                let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    continue;
                };
                if raw.is_empty() {
                    continue;
                }
                let text = String::from_utf8_lossy(&raw).replace('\0', " ");
                seen.observations += 1;
                if text.contains(secret) {
                    seen.leaks.push(text.clone());
                }
                seen.commands.insert(text);
            }
            if last {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// Runs `cmd` while watching its process tree for `secret` on a command line.
fn run_watched_for(mut cmd: Command, secret: &'static str) -> (Run, Seen) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dbops");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(child.id(), secret, Arc::clone(&stop));
    let out = child.wait_with_output().expect("wait for dbops");
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().expect("watcher");
    assert!(
        seen.observations > 0 && seen.commands.iter().any(|c| c.contains("dbops")),
        "the watcher never saw the dbops command line: {seen:?}"
    );
    (finished(out), seen)
}

/// Runs `cmd` while watching its process tree; the password must never appear on a
/// command line, and the watcher must have seen the dbops process itself.
fn run_watched(cmd: Command) -> Run {
    let (run, seen) = run_watched_for(cmd, PASSWORD);
    assert!(
        seen.leaks.is_empty(),
        "the password is on a command line: {:?}",
        seen.leaks
    );
    run
}

fn finished(out: std::process::Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A file only its owner may read.
fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// `dbops` with no MariaDB password anywhere but where a step puts it: an empty home
/// (no `~/.my.cnf` of the machine's), no password variables.
fn command(ctx: &Ctx, home: &Path, args: &[&str]) -> Command {
    let mut c = ctx.command(args);
    c.env("HOME", home)
        .env_remove("MYSQL_PWD")
        .env_remove("MARIADB_PWD");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_passwords_stay_off_command_lines() {
    let server = EphemeralMariaDb::start().await.expect("start mariadb");
    server.execute("", SCHEMA).await.expect("schema");
    let port = server.port();
    let ctx = Ctx::new();
    ctx.init();
    let home = tempfile::tempdir().expect("home");
    let files = tempfile::tempdir().expect("files");
    let url = format!("mariadb://app@127.0.0.1:{port}/shop");

    // The watcher finds a password where one is: in a URL on the command line.
    let encoded = "Pw-9f3e%23Secret%20word";
    let in_url = format!("mariadb://app:{encoded}@127.0.0.1:{port}/shop");
    let (run, seen) = run_watched_for(command(&ctx, home.path(), &["backup", &in_url]), encoded);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!seen.leaks.is_empty(), "{seen:?}");

    // (a) The password from MYSQL_PWD alone.
    let mut cmd = command(&ctx, home.path(), &["--json", "backup", &url]);
    cmd.env("MYSQL_PWD", PASSWORD);
    let run = run_watched(cmd).ok();
    assert_eq!(run.json()["engine"], "mariadb");
    assert!(!run.all().contains(PASSWORD), "{}", run.all());

    // (b) From an option file named in the URL, which gives the user too.
    let cnf = files.path().join("backup.cnf");
    private_file(
        &cnf,
        &format!("[client]\nuser = app\npassword = \"{PASSWORD}\"  # quoted: it has a '#'\n"),
    );
    let from_file = format!(
        "mariadb://127.0.0.1:{port}/shop?defaults_file={}",
        cnf.display()
    );
    let run = run_watched(command(
        &ctx,
        home.path(),
        &["--json", "backup", &from_file],
    ))
    .ok();
    assert!(!run.all().contains(PASSWORD), "{}", run.all());

    // ... and from ~/.my.cnf.
    private_file(
        &home.path().join(".my.cnf"),
        &format!("[client-mariadb]\npassword='{PASSWORD}'\n"),
    );
    let run = run_watched(command(&ctx, home.path(), &["backup", &url])).ok();
    assert!(!run.all().contains(PASSWORD), "{}", run.all());
    std::fs::remove_file(home.path().join(".my.cnf")).expect("remove");

    // (c) A wrong password: exit code 7, the sources named, the password not printed.
    let wrong = "Wr0ng-pw-7c1d";
    let mut cmd = command(&ctx, home.path(), &["backup", &url]);
    cmd.env("MYSQL_PWD", wrong);
    let run = finished(cmd.output().expect("run dbops"));
    assert_eq!(run.code, 7, "{}", run.all());
    assert!(!run.all().contains(wrong), "{}", run.all());
    assert!(run.stderr.contains("MYSQL_PWD"), "{}", run.stderr);
    // No password at all: the same.
    let run = finished(
        command(&ctx, home.path(), &["backup", &url])
            .output()
            .expect("run dbops"),
    );
    assert_eq!(run.code, 7, "{}", run.all());

    // (d) The view and the routine have a definer the throwaway server lacks: the
    // proof still passes, and says which account it made. MYSQL_PWD is set, as in a
    // job that backs up and verifies: the throwaway server must not be sent it.
    let mut cmd = command(
        &ctx,
        home.path(),
        &["--json", "verify", "latest", "--restore"],
    );
    cmd.env("MYSQL_PWD", PASSWORD);
    let run = finished(cmd.output().expect("run dbops"));
    assert_eq!(run.code, 0, "{}", run.all());
    let report = run.json();
    let prepared = report["restores"][0]["check"]["restore"]["prepared"].clone();
    assert_eq!(
        prepared,
        serde_json::json!(["user 'app'@'%' (definer of 1 view, 1 routine)"]),
        "{report:#}"
    );
    let tables = report["restores"][0]["check"]["tables"]
        .as_array()
        .expect("tables")
        .clone();
    assert!(
        !tables.is_empty() && tables.iter().all(|t| t["matches"] == true),
        "{report:#}"
    );
    let run = finished(
        command(&ctx, home.path(), &["verify", "latest", "--restore"])
            .output()
            .expect("run dbops"),
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains(
            "created on the throwaway server: user 'app'@'%' (definer of 1 view, 1 routine)"
        ),
        "{}",
        run.all()
    );
}
