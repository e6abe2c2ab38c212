//! Shared helpers of the CLI tests: run `dbops`, load fixtures, and compare databases
//! with PostgreSQL's own tools (pg_dump, psql), independently of dbops.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use ops_postgres::ephemeral::EphemeralPostgres;

/// What one `dbops` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "dbops failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

fn output(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A repository in a temp dir with a password, and how to call dbops on it.
pub struct Ctx {
    pub dir: tempfile::TempDir,
    pub repo: String,
    pub password: String,
}

impl Ctx {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo").to_str().expect("utf8").to_owned();
        Self {
            dir,
            repo,
            password: "correct horse battery staple".into(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dbops"));
        c.args(args)
            .env("DBOPS_REPO", &self.repo)
            .env("DBOPS_PASSWORD", &self.password)
            .env("DBOPS_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("DBOPS_PASSWORD_FILE")
            .env_remove("PGPASSWORD")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        output(self.command(args).output().expect("run dbops"))
    }

    pub fn init(&self) {
        self.run(&["init", "--kdf-memory-mib", "8"]).ok();
    }
}

/// The external fixtures folder, or None with a loud message.
pub fn fixtures(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DBOPS_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let path = dir.join(name);
    if path.is_dir() {
        Some(path)
    } else {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! EXTERNAL FIXTURE MISSING: {} (set DBOPS_FIXTURES_DIR).\n\
             !!! Falling back to the project's own kitchen-sink fixture.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
            path.display()
        );
        None
    }
}

/// The project's own PostgreSQL kitchen-sink fixture.
pub fn kitchen_sink_pg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops-postgres/tests/fixtures/kitchen_sink.sql")
}

/// Runs psql on `db` with `args`; panics with its stderr on failure.
pub fn psql(pg: &EphemeralPostgres, db: &str, args: &[&str]) -> String {
    let o = Command::new(pg.bin_dir().join("psql"))
        .arg("-X")
        .arg("-q")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-d")
        .arg(pg.url_for(db))
        .args(args)
        .output()
        .expect("run psql");
    assert!(
        o.status.success(),
        "psql {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Loads pagila (external) or the kitchen sink (own) into a new database `db`;
/// returns which one.
pub async fn load_sample(pg: &EphemeralPostgres, db: &str) -> &'static str {
    pg.create_database(db).await.expect("create database");
    match fixtures("pagila") {
        Some(dir) => {
            psql(
                pg,
                db,
                &["-f", dir.join("pagila-schema.sql").to_str().expect("utf8")],
            );
            psql(
                pg,
                db,
                &["-f", dir.join("pagila-data.sql").to_str().expect("utf8")],
            );
            "pagila"
        }
        None => {
            psql(pg, db, &["-f", kitchen_sink_pg().to_str().expect("utf8")]);
            "kitchen_sink"
        }
    }
}

/// `pg_dump --schema-only`, without comments and the per-dump `\restrict` keys.
pub fn schema_dump(pg: &EphemeralPostgres, db: &str) -> String {
    let o = Command::new(pg.bin_dir().join("pg_dump"))
        .arg("--schema-only")
        .arg("-d")
        .arg(pg.url_for(db))
        .output()
        .expect("run pg_dump");
    assert!(
        o.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// For every table and materialized view: row count and an order-independent md5 of
/// its rows' text, computed by PostgreSQL itself.
pub fn table_checksums(pg: &EphemeralPostgres, db: &str) -> BTreeMap<String, String> {
    let tables = psql(
        pg,
        db,
        &[
            "-At",
            "-c",
            "SELECT format('%I.%I', n.nspname, c.relname) || '|' || c.relispopulated FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','m') AND n.nspname NOT IN ('pg_catalog','information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        ],
    );
    let mut out = BTreeMap::new();
    for line in tables.lines().filter(|l| !l.is_empty()) {
        let (t, populated) = line.rsplit_once('|').expect("name|populated");
        if populated != "t" {
            // A materialized view created WITH NO DATA cannot be read; that it is still
            // unpopulated after a restore is itself compared.
            out.insert(t.to_owned(), "not populated".to_owned());
            continue;
        }
        let q = format!(
            "SELECT count(*) || ' ' || md5(coalesce(string_agg(md5(x::text), '' ORDER BY md5(x::text)), '')) FROM ONLY {t} x"
        );
        out.insert(
            t.to_owned(),
            psql(pg, db, &["-At", "-c", &q]).trim().to_owned(),
        );
    }
    out
}

/// True when database `db` exists on `pg`.
pub fn database_exists(pg: &EphemeralPostgres, db: &str) -> bool {
    psql(
        pg,
        "postgres",
        &[
            "-At",
            "-c",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        ],
    )
    .trim()
        == "1"
}

/// Creates database `db` on `pg` with one table `t (id int PRIMARY KEY, v text)` of
/// `rows` rows, each `v` being `width` md5 digests (32 characters each).
pub async fn database_with_rows(pg: &EphemeralPostgres, db: &str, rows: u32, width: u32) {
    pg.create_database(db).await.expect("create database");
    psql(
        pg,
        db,
        &[
            "-c",
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY, v text); \
                 INSERT INTO t SELECT g, repeat(md5('{db}' || g), {width}) \
                 FROM generate_series(1, {rows}) g;"
            ),
        ],
    );
}

/// An HTTP receiver: records each request's path and body, answers 200.
pub struct Receiver {
    pub port: u16,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                g.lock()
                    .expect("lock")
                    .push((path, String::from_utf8_lossy(&body).into_owned()));
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Self { port, got }
    }

    pub fn bodies(&self) -> Vec<(String, String)> {
        self.got.lock().expect("lock").clone()
    }
}

// ---------------------------------------------------------------------------------
// The config-driven commands (run, daemon, health, …): one config file per test.

/// Writes a config file `name` in the context's directory; returns its path.
pub fn write_config(ctx: &Ctx, name: &str, text: &str) -> PathBuf {
    let path = ctx.dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn dbops(ctx: &Ctx, config: &Path, args: &[&str]) -> std::process::Command {
    let mut c = ctx.command(args);
    c.env("DBOPS_CONFIG", config).env_remove("DBOPS_REPO");
    c
}

pub fn run(ctx: &Ctx, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = dbops(ctx, config, args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run dbops");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub async fn shop(pg: &EphemeralPostgres) {
    pg.create_database("shop").await.expect("create db");
    pg.execute(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, note text); \
         INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
    )
    .await
    .expect("load");
}

pub fn wait_for(what: &str, limit: std::time::Duration, done: impl FnMut() -> bool) {
    assert!(poll(limit, done), "timed out waiting for {what}");
}

/// Calls `done` every 100 ms until it says yes (true) or `limit` passes (false).
pub fn poll(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !done() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    true
}

pub fn sigterm(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
}

pub fn wait_exit(child: &mut std::process::Child, limit: std::time::Duration) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("dbops did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A psql session left open on `db` under `application_name = app`, running `sql`
/// (for instance `BEGIN; SELECT …;` to hold a lock while idle in the transaction).
/// Its stdin stays open: the session lives until the child is killed or ended.
pub fn open_session(pg: &EphemeralPostgres, db: &str, app: &str, sql: &str) -> std::process::Child {
    let mut child = std::process::Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-d", &pg.url_for(db)])
        .env("PGAPPNAME", app)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start psql");
    let stdin = child.stdin.as_mut().expect("stdin");
    writeln!(stdin, "{sql}").expect("write to psql");
    stdin.flush().expect("flush");
    child
}

/// The pid and wait event type of the session of `app`, once it is in `state`.
pub fn session_of(pg: &EphemeralPostgres, app: &str, state: &str) -> (i64, String) {
    let mut found = None;
    wait_for(
        &format!("{app} to be {state}"),
        std::time::Duration::from_secs(30),
        || {
            let out = psql(
                pg,
                "postgres",
                &[
                    "-At",
                    "-c",
                    &format!(
                        "SELECT pid, coalesce(wait_event_type, '') FROM pg_stat_activity \
                     WHERE application_name = '{app}' AND state = '{state}'"
                    ),
                ],
            );
            found = out.lines().next().and_then(|l| {
                let (pid, wait) = l.split_once('|')?;
                Some((pid.parse().ok()?, wait.to_owned()))
            });
            found.is_some()
        },
    );
    found.expect("found")
}
