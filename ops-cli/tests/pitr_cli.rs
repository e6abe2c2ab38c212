//! Point-in-time recovery through the CLI: a real PostgreSQL archiving its WAL with
//! `dbops wal-push` as its archive_command, read back with `wal-fetch` and checked by
//! PostgreSQL's own `pg_waldump`; gaps found by `verify`; the asynchronous spool; the
//! streaming receiver.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Ctx, psql, wait_for};
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};

/// Gives the server's user (tests run as root; the server as `nobody`) the
/// repository and the key file, as an operator would for the postgres account.
fn hand_to_server(pg: &EphemeralPostgres, paths: &[&Path]) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(pg.socket_dir()).expect("socket dir");
    for path in paths {
        let status = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", meta.uid(), meta.gid()))
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success());
    }
}

fn archiver_stats(pg: &EphemeralPostgres) -> (i64, i64, String) {
    let out = psql(
        pg,
        "postgres",
        &[
            "-At",
            "-F",
            "|",
            "-c",
            "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        ],
    );
    let mut f = out.trim().split('|');
    (
        f.next()
            .expect("as the test set it up")
            .parse()
            .expect("as the test set it up"),
        f.next()
            .expect("as the test set it up")
            .parse()
            .expect("as the test set it up"),
        f.next().unwrap_or_default().to_owned(),
    )
}

/// Writes rows and switches to a new segment; returns the segment just closed.
fn write_and_switch(pg: &EphemeralPostgres, step: u32) -> String {
    psql(
        pg,
        "shop",
        &[
            "-c",
            &format!("INSERT INTO steps SELECT {step}, g FROM generate_series(1, 100) g"),
        ],
    );
    psql(
        pg,
        "shop",
        &["-At", "-c", "SELECT pg_walfile_name(pg_switch_wal())"],
    )
    .trim()
    .to_owned()
}

fn wait_archived(pg: &EphemeralPostgres, segment: &str) {
    wait_for(
        &format!("{segment} to be archived"),
        Duration::from_secs(60),
        || {
            let (_, failed, last) = archiver_stats(pg);
            assert_eq!(
                failed,
                0,
                "the archive command failed; server log:\n{}",
                std::fs::read_to_string(pg.log_path()).unwrap_or_default()
            );
            last.as_str() >= segment
        },
    );
}

/// A server archiving its WAL into `ctx`'s repository through `dbops wal-push` with
/// the key file `key`, both handed to the server's user.
async fn archiving_server(ctx: &Ctx, key: &Path, settings: &[(&str, &str)]) -> EphemeralPostgres {
    let exe = env!("CARGO_BIN_EXE_dbops");
    let mut options = EphemeralOptions::default()
        .with_setting("wal_level", "replica")
        .with_setting("archive_mode", "on")
        .with_setting(
            "archive_command",
            format!(
                "{exe} --repo {} --key-file {} --no-cache wal-push %p",
                ctx.repo,
                key.display()
            ),
        );
    for (name, value) in settings {
        options = options.with_setting(*name, *value);
    }
    let pg = EphemeralPostgres::start_with(options)
        .await
        .expect("start postgres");
    hand_to_server(&pg, &[Path::new(&ctx.repo), key]);
    pg
}

fn segment_object(ctx: &Ctx, series: &str, name: &str) -> PathBuf {
    Path::new(&ctx.repo)
        .join("logs/wal")
        .join(series)
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_archived_through_dbops_reads_back_checks_gaps_spools_and_streams() {
    let ctx = Ctx::new();
    ctx.init();
    let key = ctx.dir.path().join("repo.key");
    ctx.run(&[
        "key",
        "save-local",
        key.to_str().expect("as the test set it up"),
    ])
    .ok();
    assert_eq!(
        std::fs::metadata(&key)
            .expect("as the test set it up")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A key file is never written over.
    let again = ctx.run(&[
        "key",
        "save-local",
        key.to_str().expect("as the test set it up"),
    ]);
    assert_ne!(again.code, 0, "{}", again.all());

    let pg = archiving_server(&ctx, &key, &[("wal_keep_size", "256MB")]).await;
    pg.create_database("shop").await.expect("create db");
    psql(&pg, "shop", &["-c", "CREATE TABLE steps (step int, n int)"]);
    let datadir =
        PathBuf::from(psql(&pg, "postgres", &["-At", "-c", "SHOW data_directory"]).trim());
    let sysid = psql(
        &pg,
        "postgres",
        &[
            "-At",
            "-c",
            "SELECT system_identifier FROM pg_control_system()",
        ],
    )
    .trim()
    .to_owned();
    let series = format!("pg-{sysid}");

    let segments: Vec<String> = (1..=3).map(|s| write_and_switch(&pg, s)).collect();
    wait_archived(&pg, &segments[2]);

    // The archive is whole.
    let v = ctx.run(&["verify", "--wal", "--json"]).ok().json();
    let state = &v["wal_archives"][0];
    assert_eq!(state["series"], series.as_str());
    assert!(
        state["missing"]
            .as_array()
            .expect("as the test set it up")
            .is_empty(),
        "{v}"
    );

    // Read back, and PostgreSQL's own pg_waldump reads it as WAL.
    let fetched = ctx.dir.path().join("fetched");
    std::fs::create_dir(&fetched).expect("as the test set it up");
    let dest = fetched.join(&segments[1]);
    let datadir_arg = datadir.to_str().expect("as the test set it up");
    let run = ctx.run(&[
        "--key-file",
        key.to_str().expect("as the test set it up"),
        "wal-fetch",
        &segments[1],
        dest.to_str().expect("as the test set it up"),
        "--pgdata",
        datadir_arg,
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    let waldump = std::process::Command::new(pg.bin_dir().join("pg_waldump"))
        .arg(&dest)
        .output()
        .expect("pg_waldump");
    let dump = String::from_utf8_lossy(&waldump.stdout);
    assert!(
        dump.contains("rmgr: Heap") && dump.contains("INSERT"),
        "pg_waldump on the fetched segment:\n{}\n{}",
        dump.chars().take(2000).collect::<String>(),
        String::from_utf8_lossy(&waldump.stderr)
    );

    // Not in the archive: exit 1, as PostgreSQL expects; nothing written.
    let absent = fetched.join("absent");
    let run = ctx.run(&[
        "--key-file",
        key.to_str().expect("as the test set it up"),
        "wal-fetch",
        "0000000100000000000000FE",
        absent.to_str().expect("as the test set it up"),
        "--pgdata",
        datadir_arg,
    ]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(!absent.exists());

    // Pushed again with the same content: fine. With other content: refused, and
    // the archived file stays as it was.
    let push = |path: &Path| {
        ctx.run(&[
            "--key-file",
            key.to_str().expect("as the test set it up"),
            "wal-push",
            path.to_str().expect("as the test set it up"),
            "--pgdata",
            datadir_arg,
        ])
    };
    push(&dest).ok();
    let mut other = std::fs::read(&dest).expect("as the test set it up");
    let n = other.len();
    other[n - 100] ^= 0xff;
    let tampered_dir = ctx.dir.path().join("tampered");
    std::fs::create_dir(&tampered_dir).expect("as the test set it up");
    let tampered = tampered_dir.join(&segments[1]);
    std::fs::write(&tampered, &other).expect("as the test set it up");
    let run = push(&tampered);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("different content"), "{}", run.all());

    // A segment of another cluster is refused before it reaches the archive.
    let mut foreign = std::fs::read(&dest).expect("as the test set it up");
    foreign[24] ^= 0x01;
    std::fs::write(&tampered, &foreign).expect("as the test set it up");
    let run = push(&tampered);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("another cluster"), "{}", run.all());

    // A key file others can read is refused; wal-fetch then stops recovery (255)
    // rather than say "not found".
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
        .expect("as the test set it up");
    let run = ctx.run(&[
        "--key-file",
        key.to_str().expect("as the test set it up"),
        "wal-fetch",
        &segments[1],
        fetched.join("x").to_str().expect("as the test set it up"),
        "--pgdata",
        datadir_arg,
    ]);
    assert_eq!(run.code, 255, "{}", run.all());
    assert!(run.stderr.contains("chmod 600"), "{}", run.all());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .expect("as the test set it up");

    // A segment missing in the middle is named by verify.
    let hole = segment_object(&ctx, &series, &segments[1]);
    std::fs::remove_file(&hole).expect("as the test set it up");
    let run = ctx.run(&["verify", "--wal"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stdout
            .contains(&format!("MISSING WAL {series}: segment {}", segments[1])),
        "{}",
        run.all()
    );

    // ... and by the health probe, while the server's archiver stays healthy.
    let config = common::write_config(
        &ctx,
        "dbops.toml",
        &format!(
            "state_dir = \"{}/state\"\n\n[repositories.main]\nurl = \"{}\"\npassword_env = \"DBOPS_PASSWORD\"\n\n[databases.shop]\nurl = \"{}\"\n",
            ctx.dir.path().display(),
            ctx.repo,
            pg.url_for("shop")
        ),
    );
    let health = common::run(
        &ctx,
        &config,
        &["health", "wal_archive_age", "wal_archiver", "--json"],
        &[],
    );
    assert_eq!(health.code, 2, "{}", health.all());
    let doc = health.json();
    let check = |name: &str| {
        doc["checks"]
            .as_array()
            .expect("as the test set it up")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {doc}"))
            .clone()
    };
    assert_eq!(check("wal_archive_age")["status"], "unhealthy", "{doc}");
    assert!(
        check("wal_archive_age")["reason"]
            .as_str()
            .expect("as the test set it up")
            .contains(&segments[1]),
        "{doc}"
    );
    assert_eq!(check("wal_archiver")["status"], "healthy", "{doc}");

    // The spool: wal-push --spool returns once the file is on local disk; the
    // uploader it starts fills the hole.
    let spool = ctx.dir.path().join("spool");
    let run = ctx.run(&[
        "--key-file",
        key.to_str().expect("as the test set it up"),
        "wal-push",
        dest.to_str().expect("as the test set it up"),
        "--pgdata",
        datadir_arg,
        "--spool",
        spool.to_str().expect("as the test set it up"),
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    wait_for("the spool to be uploaded", Duration::from_secs(60), || {
        hole.exists()
    });
    ctx.run(&["verify", "--wal"]).ok();
    let health = common::run(&ctx, &config, &["health", "wal_archive_age"], &[]);
    assert_eq!(health.code, 0, "{}", health.all());
    let metrics = common::run(&ctx, &config, &["metrics"], &[]);
    assert_eq!(metrics.code, 0, "{}", metrics.all());
    assert!(
        metrics
            .stdout
            .lines()
            .any(|l| l.starts_with("dbops_wal_archived_bytes{repository=\"main\"}")),
        "{}",
        metrics.stdout
    );
    wait_for("the spool to empty", Duration::from_secs(30), || {
        !spool.join(&series).join(&segments[1]).exists()
    });

    // The streaming receiver, with a slot, archives what the server writes while it
    // runs (segments the archiver sent already are the same content).
    let receive_dir = ctx.dir.path().join("receive");
    let receiver = ctx
        .command(&[
            "--key-file",
            key.to_str().expect("as the test set it up"),
            "wal-receive",
            &pg.url_for("postgres"),
            "--slot",
            "dbops_test",
            "--spool",
            receive_dir.to_str().expect("as the test set it up"),
            "--duration",
            "8s",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start wal-receive");
    wait_for("the replication slot", Duration::from_secs(20), || {
        psql(
            &pg,
            "postgres",
            &["-At", "-c", "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dbops_test' AND active"],
        )
        .trim()
            == "1"
    });
    let streamed = write_and_switch(&pg, 4);
    let out = receiver.wait_with_output().expect("wal-receive");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert!(
        report["received"]["archived"]
            .as_u64()
            .expect("as the test set it up")
            >= 1,
        "{report}"
    );
    assert!(
        report["received"]["last"]
            .as_str()
            .expect("as the test set it up")
            >= streamed.as_str(),
        "{report} vs {streamed}"
    );
    wait_archived(&pg, &streamed);
    ctx.run(&["verify", "--wal"]).ok();
}

fn mariadb(port: u16, db: &str, sql: &str) -> String {
    let o = std::process::Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", "-N", "-B"])
        .arg(format!("-P{port}"))
        .arg(db)
        .args(["-e", sql])
        .output()
        .expect("mariadb");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restores_to_a_point_in_time_from_the_binlog_archive() {
    let server = ops_mariadb::ephemeral::EphemeralMariaDb::start()
        .await
        .expect("start mariadb");
    let port = server.port();
    mariadb(port, "mysql", "CREATE DATABASE shop");
    mariadb(
        port,
        "shop",
        "CREATE TABLE t (id int PRIMARY KEY, step int) ENGINE=InnoDB; INSERT INTO t VALUES (1, 0)",
    );
    let ctx = Ctx::new();
    ctx.init();
    let id = ctx
        .run(&["--json", "backup", &server.url_for("shop")])
        .ok()
        .json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let archiver = ctx
        .command(&[
            "--json",
            "binlog-archive",
            &server.url_for("shop"),
            "--duration",
            "7s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start binlog-archive");
    std::thread::sleep(Duration::from_millis(1200));
    mariadb(port, "shop", "INSERT INTO t VALUES (2, 1)");
    std::thread::sleep(Duration::from_millis(1200));
    let between = mariadb(
        port,
        "shop",
        "SELECT DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%dT%H:%i:%sZ')",
    );
    std::thread::sleep(Duration::from_millis(1200));
    mariadb(
        port,
        "shop",
        "INSERT INTO t VALUES (3, 2); UPDATE t SET step = 9 WHERE id = 1",
    );
    let out = archiver.wait_with_output().expect("binlog-archive");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A time the archive does not reach is refused before anything is restored.
    let run = ctx.run(&[
        "restore",
        &id,
        &server.url_for("late"),
        "--create",
        "--target-time",
        "2099-01-01T00:00:00Z",
    ]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("reaches"), "{}", run.all());
    assert_eq!(
        mariadb(
            port,
            "mysql",
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'late'"
        ),
        "0"
    );

    // Between the steps: the backup's row and step 1, not step 2 nor its update.
    let r = ctx
        .run(&[
            "--json",
            "restore",
            &id,
            &server.url_for("shop_pitr"),
            "--create",
            "--target-time",
            &between,
        ])
        .ok()
        .json();
    assert!(
        r["replayed"]["events"]
            .as_u64()
            .expect("as the test set it up")
            > 0,
        "{r}"
    );
    assert_eq!(
        mariadb(
            port,
            "shop_pitr",
            "SELECT group_concat(concat(id, ':', step) ORDER BY id) FROM t"
        ),
        "1:0,2:1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physical_backup_restores_to_a_point_in_time_proves_itself_and_keeps_its_wal() {
    let ctx = Ctx::new();
    ctx.init();
    let key = ctx.dir.path().join("repo.key");
    ctx.run(&[
        "key",
        "save-local",
        key.to_str().expect("as the test set it up"),
    ])
    .ok();
    let pg = archiving_server(&ctx, &key, &[]).await;
    pg.create_database("shop").await.expect("create db");
    psql(&pg, "shop", &["-c", "CREATE TABLE steps (step int, n int)"]);
    let keyed = |args: &[&str]| {
        let mut all = vec!["--key-file", key.to_str().expect("as the test set it up")];
        all.extend_from_slice(args);
        ctx.run(&all)
    };

    let first = write_and_switch(&pg, 1);
    wait_archived(&pg, &first);
    let b1 = keyed(&["--json", "backup", &pg.url_for("shop"), "--physical"])
        .ok()
        .json();
    assert_eq!(b1["engine"], "postgresql-physical");
    let b1_start = b1["snapshot"]["wal_start"]
        .as_str()
        .expect("as the test set it up")
        .to_owned();

    // Step 2, a point in time, step 3.
    let _ = write_and_switch(&pg, 2);
    let at = psql(
        &pg,
        "shop",
        &["-At", "-c", "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"],
    )
    .trim()
    .to_owned();
    std::thread::sleep(Duration::from_millis(300));
    let last = write_and_switch(&pg, 3);
    wait_archived(&pg, &last);
    hand_to_server(&pg, &[Path::new(&ctx.repo)]);

    // Restored to the time between steps 2 and 3: exactly steps 1 and 2, as a query
    // on the source says.
    let dir = ctx.dir.path().join("restored");
    let r = keyed(&[
        "--json",
        "restore",
        b1["id"].as_str().expect("as the test set it up"),
        "--physical",
        "--to-datadir",
        dir.to_str().expect("as the test set it up"),
        "--target-time",
        &at,
        "--start",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let r = r.json();
    assert!(r["files"].as_u64().is_some_and(|n| n > 100), "{r}");
    let pid = r["server"]["pid"].as_u64().expect("pid") as i32;
    let socket = r["server"]["socket_dir"]
        .as_str()
        .expect("as the test set it up")
        .to_owned();
    let url = r["server"]["url"].as_str().expect("as the test set it up");
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("a port in the server's URL")
        .to_owned();
    let restored = std::process::Command::new(pg.bin_dir().join("psql"))
        .args([
            "-X", "-At", "-h", &socket, "-p", &port, "-U", "postgres", "-d", "shop", "-c",
        ])
        .arg("SELECT step, count(*) FROM steps GROUP BY step ORDER BY step")
        .output()
        .expect("psql");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    );
    let source = psql(
        &pg,
        "shop",
        &[
            "-At",
            "-c",
            "SELECT step, count(*) FROM steps WHERE step <= 2 GROUP BY step ORDER BY step",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&restored.stdout).trim(),
        source.trim(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(source.trim(), "1|100\n2|100");

    // verify --restore proves it: manifest, recovery to consistency, pg_amcheck.
    let v = keyed(&[
        "--json",
        "verify",
        b1["id"].as_str().expect("as the test set it up"),
        "--restore",
    ]);
    assert_eq!(v.code, 0, "{}", v.all());
    let v = v.json();
    assert_eq!(v["restores"][0]["ok"], true, "{v}");
    assert_eq!(
        v["restores"][0]["physical"]["manifest_verified"], true,
        "{v}"
    );

    // A second base backup; keeping it alone removes the WAL only the first needed,
    // and the archive from its start on is still whole.
    let b2 = keyed(&["--json", "backup", &pg.url_for("shop"), "--physical"])
        .ok()
        .json();
    let b2_start = b2["snapshot"]["wal_start"]
        .as_str()
        .expect("as the test set it up")
        .to_owned();
    assert!(b2_start > b1_start);
    assert!(
        b2["stats"]["stored_bytes"]
            .as_u64()
            .expect("as the test set it up")
            * 10
            < b1["stats"]["stored_bytes"]
                .as_u64()
                .expect("as the test set it up"),
        "a second base backup of a barely changed cluster stores little: {} vs {}",
        b2["stats"]["stored_bytes"],
        b1["stats"]["stored_bytes"]
    );
    let f = ctx
        .run(&[
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--engine",
            "postgresql-physical",
        ])
        .ok()
        .json();
    let logs = &f["logs"][0];
    assert_eq!(logs["keep_from"], b2_start.as_str(), "{f}");
    assert!(
        logs["removed"].as_u64().expect("as the test set it up") >= 1,
        "{f}"
    );
    let series = b2["snapshot"]["log_series"]
        .as_str()
        .expect("as the test set it up");
    let wal_dir = Path::new(&ctx.repo).join("logs/wal").join(series);
    let left: Vec<String> = std::fs::read_dir(&wal_dir)
        .expect("as the test set it up")
        .map(|e| {
            e.expect("as the test set it up")
                .file_name()
                .into_string()
                .expect("as the test set it up")
        })
        .collect();
    assert!(
        left.iter()
            .all(|n| n.ends_with(".history") || n.as_str() >= b2_start.as_str()),
        "{left:?}"
    );
    assert!(left.contains(&b2_start), "{left:?}");
    assert!(!left.contains(&b1_start), "{left:?}");
    let v = ctx.run(&["--json", "verify", "--wal"]).ok().json();
    assert!(
        v["wal_archives"][0]["missing"]
            .as_array()
            .expect("as the test set it up")
            .is_empty(),
        "{v}"
    );

    // A copy to another repository brings the WAL the base backup needs along.
    let offsite = ctx.dir.path().join("offsite");
    let offsite = offsite.to_str().expect("utf-8");
    ctx.run(&["--repo", offsite, "init", "--kdf-memory-mib", "8"])
        .ok();
    let mut copy = ctx.command(&["--repo", offsite, "copy", "--from", &ctx.repo, "--all"]);
    copy.env("DBOPS_FROM_PASSWORD", &ctx.password);
    let out = copy.output().expect("copy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let here = ctx.run(&["--json", "verify", "--wal"]).ok().json();
    let there = ctx
        .run(&["--repo", offsite, "--json", "verify", "--wal"])
        .ok()
        .json();
    assert_eq!(
        there["wal_archives"][0]["files"], here["wal_archives"][0]["files"],
        "{there}"
    );
    assert_eq!(
        there["wal_archives"][0]["last"], here["wal_archives"][0]["last"],
        "{there}"
    );

    // The same as a job: `physical = true` on a backup job.
    let config = common::write_config(
        &ctx,
        "dbops.toml",
        &format!(
            "state_dir = \"{}/state\"\n[repositories.main]\nurl = \"{}\"\npassword_env = \"DBOPS_PASSWORD\"\n\
             [databases.shop]\nurl = \"{}\"\n[jobs.base]\nkind = \"backup\"\ndatabase = \"shop\"\nphysical = true\n",
            ctx.dir.path().display(),
            ctx.repo,
            pg.url_for("shop")
        ),
    );
    common::run(&ctx, &config, &["run", "base"], &[]).ok();
    let list = ctx
        .run(&["--json", "list", "--engine", "postgresql-physical"])
        .ok()
        .json();
    assert_eq!(
        list["backups"]
            .as_array()
            .expect("as the test set it up")
            .len(),
        2,
        "{list}"
    );
}
