//! `dbops backup` of PostgreSQL with the password in a password file only: it
//! authenticates, and the password appears on no command line of dbops or of any
//! process it starts (pg_dump), observed from /proc while the backup runs. Wrong and
//! missing passwords end with exit code 7 without printing the password; a URL that
//! names no database ends with exit code 2.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Ctx;
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};

const PASSWORD: &str = "Cred3ntial-Test-Pa55w0rd-5741";

/// A password file of mode 0600 at `dir/name`; returns its path.
fn passfile(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the password file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_str().expect("utf8").to_owned()
}

/// The parent of each live process, from /proc/PID/stat.
fn parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // `PID (COMM) STATE PPID …`; COMM may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// `root` and all its descendants.
fn family(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut found = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in &parents {
            if found.contains(ppid) && !found.contains(pid) {
                found.push(*pid);
                grew = true;
            }
        }
    }
    found
}

/// What the watcher saw.
#[derive(Default, Debug)]
struct Seen {
    /// Command lines observed (NUL replaced by spaces).
    cmdlines: Vec<String>,
    /// Command lines and environments that held the password.
    leaks: Vec<String>,
    /// Observations of pg_dump dumping (not `pg_dump --version`).
    pg_dumps: usize,
    /// The PGPASSFILE values pg_dump was given.
    pg_dump_passfiles: Vec<String>,
}

/// Reads /proc of `root` and its descendants as fast as it can until `stop`, looking
/// for `secret`.
fn watch(root: u32, secret: &str, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        for pid in family(root) {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(secret) {
                seen.leaks.push(format!("cmdline of {pid}: {cmdline}"));
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| String::from_utf8_lossy(&e).into_owned())
                .unwrap_or_default();
            if environ.contains(secret) {
                seen.leaks.push(format!("environment of {pid} ({cmdline})"));
            }
            let is_dump = cmdline
                .split(' ')
                .next()
                .is_some_and(|argv0| argv0.ends_with("/pg_dump") || argv0 == "pg_dump")
                && cmdline.contains("--snapshot=");
            if is_dump {
                seen.pg_dumps += 1;
                for var in environ.split('\0') {
                    if let Some(v) = var.strip_prefix("PGPASSFILE=")
                        && !seen.pg_dump_passfiles.iter().any(|p| p == v)
                    {
                        seen.pg_dump_passfiles.push(v.to_owned());
                    }
                }
            }
            if !cmdline.is_empty() && !seen.cmdlines.contains(&cmdline) {
                seen.cmdlines.push(cmdline);
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_files_never_on_a_command_line_and_auth_errors_exit_7() {
    let pg =
        EphemeralPostgres::start_with(EphemeralOptions::default().with_password_auth(PASSWORD))
            .await
            .expect("start postgres");
    pg.create_database("shop").await.expect("create shop");
    // Many tables keep pg_dump busy (one query per excluded table) long enough to be
    // seen; some rows give the COPY workers something to do.
    pg.execute(
        "shop",
        "DO $$ BEGIN
           FOR i IN 1..300 LOOP
             EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
             EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text) FROM generate_series(1, 50) g', i);
           END LOOP;
         END $$",
    )
    .await
    .expect("fill shop");
    let port = pg.port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/shop?sslmode=disable");
    let files = tempfile::tempdir().expect("tempdir");
    let empty_home = files.path().join("home");
    std::fs::create_dir(&empty_home).expect("home");
    let ctx = Ctx::new();
    ctx.init();
    let command = |args: &[&str]| {
        let mut c = ctx.command(args);
        for var in [
            "PGPASSFILE",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGDATABASE",
            "PGUSER",
        ] {
            c.env_remove(var);
        }
        c.env("HOME", &empty_home);
        c
    };

    // (a) The password only in PGPASSFILE: the backup authenticates, and no command
    // line (nor environment) of dbops or its children holds the password.
    let good = passfile(
        files.path(),
        "good",
        &format!("# dbops test\n127.0.0.1:{port}:*:postgres:{PASSWORD}\n"),
    );
    let (out, seen) = run_watched(
        command(&["--json", "backup", &url]).env("PGPASSFILE", &good),
        PASSWORD,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "backup with PGPASSFILE failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains(PASSWORD),
        "{stdout}{stderr}"
    );
    assert!(seen.leaks.is_empty(), "the password was visible: {seen:?}");
    eprintln!(
        "observed a dumping pg_dump {} time(s); {} command lines",
        seen.pg_dumps,
        seen.cmdlines.len()
    );
    assert!(
        seen.pg_dumps > 0,
        "no pg_dump was observed, so nothing was checked: {:?}",
        seen.cmdlines
    );
    assert!(
        !seen.pg_dump_passfiles.is_empty() && !seen.pg_dump_passfiles.contains(&good),
        "pg_dump gets a private copy of the password in its own file: {seen:?}"
    );
    let backup: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(backup["database"], "shop");
    assert_eq!(backup["tables"], 300);

    // (b) A wrong password, from the file or the URL: exit 7, never printed.
    let wrong_pw = "Wr0ng-Pa55-8813";
    let wrong = passfile(
        files.path(),
        "wrong",
        &format!("*:*:*:postgres:{wrong_pw}\n"),
    );
    let run = common_run(command(&["backup", &url]).env("PGPASSFILE", &wrong));
    assert_eq!(run.code, 7, "{}", run.all());
    assert!(!run.all().contains(wrong_pw), "{}", run.all());
    assert!(run.all().contains(&wrong), "names the file: {}", run.all());
    let with_pw = format!("postgres://postgres:{wrong_pw}@127.0.0.1:{port}/shop?sslmode=disable");
    let (out, seen) = run_watched(&mut command(&["backup", &with_pw]), wrong_pw);
    let run = common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(run.code, 7, "{}", run.all());
    assert!(!run.all().contains(wrong_pw), "{}", run.all());
    // The watcher does see a password where one is: on dbops' own command line,
    // where this run put it.
    assert!(
        seen.leaks
            .iter()
            .any(|l| l.starts_with("cmdline of") && l.contains("backup")),
        "the watcher missed the password in dbops' arguments: {seen:?}"
    );

    // (c) No password anywhere: exit 7, saying where to put one.
    let run = common_run(&mut command(&["backup", &url]));
    assert_eq!(run.code, 7, "{}", run.all());
    for part in ["PGPASSFILE", "~/.pgpass", "PGPASSWORD"] {
        assert!(run.all().contains(part), "{part}: {}", run.all());
    }
    assert!(!run.all().contains(PASSWORD));

    // (d) A URL without a database: exit 2, before any connection.
    for no_db in [
        format!("postgres://postgres@127.0.0.1:{port}?sslmode=disable"),
        format!("postgres://postgres@127.0.0.1:{port}/"),
    ] {
        let run = common_run(command(&["backup", &no_db]).env("PGPASSFILE", &good));
        assert_eq!(run.code, 2, "{no_db}: {}", run.all());
        assert!(run.all().contains("needs a database"), "{}", run.all());
    }
    // PGDATABASE names it.
    let run = common_run(
        command(&["backup", &format!("postgres://postgres@127.0.0.1:{port}/")])
            .env("PGPASSFILE", &good)
            .env("PGDATABASE", "shop"),
    );
    assert_eq!(run.code, 0, "{}", run.all());
}

/// Runs `cmd` while a thread watches it and its descendants for `secret`.
fn run_watched(cmd: &mut std::process::Command, secret: &str) -> (std::process::Output, Seen) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dbops");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        let pid = child.id();
        let secret = secret.to_owned();
        std::thread::spawn(move || watch(pid, &secret, stop))
    };
    let out = child.wait_with_output().expect("dbops runs");
    stop.store(true, Ordering::Relaxed);
    (out, watcher.join().expect("watcher"))
}

/// Runs a prepared dbops command to completion.
fn common_run(cmd: &mut std::process::Command) -> common::Run {
    let out = cmd.output().expect("run dbops");
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn watcher_sees_children() {
    // The /proc walk finds a grandchild, so the check above cannot miss pg_dump for
    // a reason of its own.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 5 & wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut found = None;
    while std::time::Instant::now() < deadline && found.is_none() {
        found = family(child.id()).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        });
    }
    if let Some(sleep) = found {
        let _ = std::process::Command::new("kill")
            .arg(sleep.to_string())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(found.is_some(), "the sleep grandchild was not seen");
}
