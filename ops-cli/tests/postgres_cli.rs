//! `dbops` end to end on real, throwaway PostgreSQL servers: backup → list → verify
//! (structure, read-data, restore) → restore into another database, compared with the
//! source by pg_dump and per-table checksums computed by PostgreSQL; damage detection;
//! and the errors an operator meets.

mod common;

use std::path::PathBuf;

use common::{Ctx, database_exists, load_sample, psql, schema_dump, table_checksums};
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_database_backs_up_verifies_and_restores_identically() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    let which = load_sample(&pg, "shop").await;
    let ctx = Ctx::new();
    ctx.init();

    let backup = ctx
        .run(&[
            "--json",
            "backup",
            &pg.url_for("shop"),
            "--jobs",
            "2",
            "--tag",
            "nightly",
            "--split-mib",
            "1",
        ])
        .ok();
    let b = backup.json();
    let id = b["id"].as_str().expect("id").to_owned();
    assert!(b["stats"]["stored_bytes"].as_u64().expect("stored") > 0);

    let list = ctx.run(&["--json", "list"]).ok().json();
    assert_eq!(list["backups"][0]["id"], id.as_str());
    assert_eq!(list["backups"][0]["tags"][0], "nightly");
    let show = ctx.run(&["--json", "show", "latest"]).ok().json();
    assert_eq!(show["id"], id.as_str());
    assert_eq!(show["engine"], "postgresql");

    ctx.run(&["verify", "latest"]).ok();
    let read = ctx
        .run(&["--json", "verify", &id, "--read-data"])
        .ok()
        .json();
    assert_eq!(read["ok"], true);

    // verify --restore on a throwaway server: every table matches.
    let vr = ctx.run(&["--json", "verify", "latest", "--restore"]);
    assert_eq!(vr.code, 0, "{}", vr.all());
    let v = vr.json();
    let tables = v["restores"][0]["check"]["tables"]
        .as_array()
        .expect("tables");
    assert!(!tables.is_empty());
    for t in tables {
        assert_eq!(t["matches"], true, "{t}");
    }
    let human = ctx
        .run(&[
            "verify",
            "latest",
            "--restore",
            "--into",
            &pg.url_for("shop_verify"),
        ])
        .ok();
    assert!(
        human.stdout.contains("every table matches"),
        "{}",
        human.stdout
    );
    assert!(
        !database_exists(&pg, "shop_verify"),
        "the scratch database it created is dropped"
    );

    // Restore under another name, compare with PostgreSQL's own tools.
    ctx.run(&[
        "restore",
        &id,
        &pg.url_for("shop_restore"),
        "--create",
        "--jobs",
        "2",
    ])
    .ok();
    assert_eq!(
        schema_dump(&pg, "shop"),
        schema_dump(&pg, "shop_restore"),
        "{which}: schema differs"
    );
    let (src, dst) = (
        table_checksums(&pg, "shop"),
        table_checksums(&pg, "shop_restore"),
    );
    assert!(src.len() > 5, "{which}: {src:?}");
    assert_eq!(src, dst, "{which}: table contents differ");
    let seq = "SELECT string_agg(last_value::text, ',' ORDER BY sequencename) FROM pg_sequences";
    assert_eq!(
        psql(&pg, "shop", &["-At", "-c", seq]),
        psql(&pg, "shop_restore", &["-At", "-c", seq])
    );

    // A non-empty target is refused without --clean, and accepted with it.
    let refused = ctx.run(&["restore", &id, &pg.url_for("shop_restore")]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--clean"), "{}", refused.stderr);
    ctx.run(&["restore", &id, &pg.url_for("shop_restore"), "--clean"])
        .ok();
    assert_eq!(src, table_checksums(&pg, "shop_restore"));

    // Unknown backup id.
    let unknown = ctx.run(&["restore", "19990101", &pg.url_for("nothing"), "--create"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("no backup") && unknown.stderr.contains("dbops list"),
        "{}",
        unknown.stderr
    );
    assert!(!database_exists(&pg, "nothing"));

    // The database and its uploaded files in one backup, restored together.
    let uploads = ctx.dir.path().join("app/storage");
    std::fs::create_dir_all(uploads.join("avatars")).expect("dir");
    std::fs::write(uploads.join("avatars/1.png"), b"png").expect("write");
    std::fs::write(uploads.join(".env"), b"APP_KEY=x\n").expect("write");
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(uploads.join(".env"), private).expect("chmod");
    let both = ctx
        .run(&[
            "--json",
            "backup",
            &pg.url_for("shop"),
            "--path",
            uploads.to_str().expect("utf8"),
        ])
        .ok()
        .json();
    assert_eq!(both["engine"], "postgresql");
    assert_eq!(both["files"][0]["entries"], 4, "{both}");
    let both_id = both["id"].as_str().expect("id");
    let to = ctx.dir.path().join("dr");
    let r = ctx
        .run(&[
            "--json",
            "restore",
            both_id,
            &pg.url_for("shop_dr"),
            "--create",
            "--path-to",
            to.to_str().expect("utf8"),
        ])
        .ok()
        .json();
    assert_eq!(r["files"]["files"], 2, "{r}");
    assert_eq!(src, table_checksums(&pg, "shop_dr"));
    let restored = to.join(uploads.strip_prefix("/").expect("absolute"));
    assert_eq!(
        std::fs::read(restored.join(".env")).expect("restored"),
        b"APP_KEY=x\n"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(restored.join(".env"))
            .expect("stat")
            .permissions(),
    );
    assert_eq!(mode & 0o7777, 0o600);
    // Files that exist stop the restore before the database is touched.
    let again = ctx.run(&[
        "restore",
        both_id,
        &pg.url_for("shop_dr2"),
        "--create",
        "--path-to",
        to.to_str().expect("utf8"),
    ]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("--overwrite"), "{}", again.stderr);
    assert!(!database_exists(&pg, "shop_dr2"));
}

fn files_under(dir: PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_damage_named_by_chunk_and_table() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    pg.create_database("small").await.expect("create");
    psql(
        &pg,
        "small",
        &[
            "-c",
            "CREATE TABLE items (id int PRIMARY KEY, body text); \
        INSERT INTO items SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 20000) g;",
        ],
    );
    let ctx = Ctx::new();
    ctx.init();
    let id = ctx
        .run(&["backup", &pg.url_for("small")])
        .ok()
        .stdout
        .trim()
        .to_owned();

    // The biggest pack holds the table's data; flip one byte in its middle.
    let mut packs = files_under(PathBuf::from(&ctx.repo).join("packs"));
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let pack = packs.pop().expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&pack, &bytes).expect("write");

    let v = ctx.run(&["verify", &id, "--read-data"]);
    assert_eq!(v.code, 3, "damage has its own exit code: {}", v.all());
    assert!(v.stdout.contains("chunk"), "{}", v.stdout);
    assert!(
        v.stdout.contains("public.items"),
        "names the table: {}",
        v.stdout
    );
    let j = ctx.run(&["--json", "verify", &id, "--read-data"]);
    assert_eq!(j.code, 3);
    let problem = &j.json()["report"]["problems"][0];
    assert_eq!(problem["table"], "public.items");
    assert!(problem["chunk"].as_str().is_some_and(|c| c.len() == 64));

    let r = ctx.run(&["restore", &id, &pg.url_for("small_copy"), "--create"]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert!(
        !database_exists(&pg, "small_copy"),
        "a failed --create restore drops its database"
    );
    let kept = ctx.run(&[
        "restore",
        &id,
        &pg.url_for("small_kept"),
        "--create",
        "--keep-failed",
    ]);
    assert_ne!(kept.code, 0);
    assert!(database_exists(&pg, "small_kept"), "--keep-failed keeps it");

    let vr = ctx.run(&["verify", &id, "--restore"]);
    assert_eq!(vr.code, 3, "{}", vr.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_errors_are_clear() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    let ctx = Ctx::new();

    let r = ctx.run(&["list"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(
        r.stderr.contains("no dbops repository") && r.stderr.contains("init"),
        "{}",
        r.stderr
    );

    let mut no_pw = ctx.command(&["init"]);
    no_pw.env_remove("DBOPS_PASSWORD");
    let o = no_pw.output().expect("run");
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("DBOPS_PASSWORD"));

    ctx.init();
    let again = ctx.run(&["init", "--kdf-memory-mib", "8"]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    let mut wrong = ctx.command(&["backup", &pg.url()]);
    wrong.env("DBOPS_PASSWORD", "not the password");
    let w = wrong.output().expect("run");
    assert_eq!(w.status.code(), Some(5));
    let text = String::from_utf8_lossy(&w.stderr);
    assert!(text.contains("password does not open"), "{text}");
    assert!(!text.contains("not the password"));

    let mut missing = ctx.command(&["list"]);
    missing.env_remove("DBOPS_PASSWORD");
    let m = missing.output().expect("run");
    assert_eq!(m.status.code(), Some(5));

    let pwfile = ctx.dir.path().join("pw");
    std::fs::write(&pwfile, format!("{}\n", ctx.password)).expect("write");
    let mut from_file = ctx.command(&["--password-file", pwfile.to_str().expect("utf8"), "list"]);
    from_file.env_remove("DBOPS_PASSWORD");
    assert_eq!(from_file.output().expect("run").status.code(), Some(0));

    let unknown = ctx.run(&["show", "nope"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("no backup 'nope'"),
        "{}",
        unknown.stderr
    );

    let json_err = ctx.run(&["--json", "show", "nope"]);
    let doc = json_err.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["error"]["kind"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_clear_and_passwords_never_leak() {
    let secret = "Sup3r-s3cret-pw";
    let pg = EphemeralPostgres::start_with(EphemeralOptions::default().with_password_auth(secret))
        .await
        .expect("start postgres");
    pg.create_database("app").await.expect("create");
    psql(
        &pg,
        "app",
        &[
            "-c",
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1),(2);",
        ],
    );
    let ctx = Ctx::new();
    ctx.init();
    let with_pw = |pw: &str| format!("postgres://postgres:{pw}@127.0.0.1:{}/app", pg.port());

    // Right password in the URL: works; the password appears nowhere.
    let ok = ctx.run(&["-vv", "--json", "backup", &with_pw(secret)]).ok();
    assert!(!ok.all().contains(secret), "password leaked:\n{}", ok.all());
    let id = ok.json()["id"].as_str().expect("id").to_owned();
    let show = ctx.run(&["--json", "show", &id]).ok();
    assert!(!show.all().contains(secret));
    assert!(
        show.stdout.contains("******"),
        "the source URL is stored redacted"
    );

    // Wrong password.
    let bad = ctx.run(&["-vv", "backup", &with_pw("wrong-pw-123")]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.to_lowercase().contains("authentication") || bad.stderr.contains("password"),
        "{}",
        bad.stderr
    );
    assert!(!bad.all().contains("wrong-pw-123"), "{}", bad.all());

    // Unreachable server.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let unreachable = ctx.run(&[
        "backup",
        &format!("postgres://postgres:{secret}@127.0.0.1:{port}/app"),
    ]);
    assert_eq!(unreachable.code, 6, "{}", unreachable.all());
    assert!(!unreachable.all().contains(secret));

    // pg_dump missing: the message says what to install.
    let empty = tempfile::tempdir().expect("tempdir");
    let mut no_tools = ctx.command(&["backup", &with_pw(secret)]);
    no_tools.env("DBOPS_PG_BINDIR", empty.path());
    let nt = no_tools.output().expect("run");
    assert_ne!(nt.status.code(), Some(0));
    let text = String::from_utf8_lossy(&nt.stderr);
    assert!(
        text.contains("pg_dump") && text.contains("apt-get install"),
        "{text}"
    );

    // Only the one good backup is listed.
    let list = ctx.run(&["--json", "list"]).ok().json();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_backup_leaves_no_backup() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    pg.create_database("big").await.expect("create");
    psql(
        &pg,
        "big",
        &[
            "-c",
            "CREATE TABLE big (id bigint, body text); \
        INSERT INTO big SELECT g, md5(g::text) || md5((g+1)::text) || md5((g+2)::text) FROM generate_series(1, 1500000) g;",
        ],
    );
    let ctx = Ctx::new();
    ctx.init();
    let child = ctx
        .command(&["backup", &pg.url_for("big"), "--jobs", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until data is flowing (a pack or the lock exists), then kill the server.
    let repo = PathBuf::from(&ctx.repo);
    for _ in 0..200 {
        if repo
            .join("locks")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    pg.kill().expect("kill");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a backup whose server died must fail: {stderr}"
    );
    assert!(!stderr.is_empty());
    let list = ctx.run(&["--json", "list"]).ok().json();
    assert_eq!(
        list["backups"].as_array().map(Vec::len),
        Some(0),
        "nothing half-written is listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_repository_is_a_clear_error() {
    // As root, permissions do not bind: run dbops as `nobody` against a root-owned dir.
    let ctx = Ctx::new();
    let locked = ctx.dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    let repo = locked.join("repo");
    let is_root = nix_is_root();
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_dbops"),
        ]);
        c
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        std::process::Command::new(env!("CARGO_BIN_EXE_dbops"))
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ctx.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let o = cmd
        .args([
            "--repo",
            repo.to_str().expect("utf8"),
            "init",
            "--kdf-memory-mib",
            "8",
        ])
        .env("DBOPS_PASSWORD", "pw")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.to_lowercase().contains("permission"), "{stderr}");
    assert!(
        stderr.contains(locked.to_str().expect("utf8")),
        "names the path: {stderr}"
    );
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `restore --clean` over a database in use: connected sessions stop it before
/// anything changes (named in the error) unless --terminate-connections; a safety
/// backup of the replaced content is taken first, never chosen as `latest`, restores
/// the pre-restore state, is named when a restore fails, and expires by
/// --keep-safety rather than by the retention rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_over_a_database_in_use_keeps_a_safety_backup() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    pg.create_database("shop").await.expect("create db");
    pg.execute(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, total int NOT NULL);
         INSERT INTO orders SELECT g, g * 3 FROM generate_series(1, 100) g;",
    )
    .await
    .expect("set up");
    let ctx = Ctx::new();
    ctx.init();
    let url = pg.url_for("shop");
    let backup = ctx.run(&["backup", &url, "--json"]).ok().json();
    let first = backup["id"].as_str().expect("id").to_owned();
    pg.execute(
        "shop",
        "INSERT INTO orders SELECT g, g * 3 FROM generate_series(101, 150) g;",
    )
    .await
    .expect("more rows");
    let before = table_checksums(&pg, "shop");
    let count = || psql(&pg, "shop", &["-At", "-c", "SELECT count(*) FROM orders"]);
    let backups = |ctx: &Ctx| -> usize {
        ctx.run(&["list", "--json"]).ok().json()["backups"]
            .as_array()
            .map_or(0, Vec::len)
    };

    // A session connected to the target: refused before anything changes.
    let mut app = common::open_session(&pg, "shop", "portal", "SELECT 1;");
    let (app_pid, _) = common::session_of(&pg, "portal", "idle");
    let r = ctx.run(&["restore", &first, &url, "--clean"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains(&app_pid.to_string()), "{}", r.all());
    assert!(r.stderr.contains("--terminate-connections"), "{}", r.all());
    assert_eq!(count().trim(), "150");
    assert_eq!(backups(&ctx), 1, "no safety backup before a refusal");

    // With --terminate-connections: a safety backup, the sessions ended — also a
    // blocker idle in its transaction whose waiter is cancelled first (it stops
    // blocking, yet must go) — and the restore.
    let mut holder =
        common::open_session(&pg, "shop", "holder", "BEGIN; SELECT count(*) FROM orders;");
    let (holder_pid, _) = common::session_of(&pg, "holder", "idle in transaction");
    let mut waiter = common::open_session(
        &pg,
        "shop",
        "waiter",
        "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;",
    );
    let (waiter_pid, _) = common::session_of(&pg, "waiter", "active");
    let done = ctx
        .run(&[
            "restore",
            &first,
            &url,
            "--clean",
            "--terminate-connections",
            "--json",
        ])
        .ok()
        .json();
    let safety = done["safety_backup"]
        .as_str()
        .expect("safety backup")
        .to_owned();
    let mut ended: Vec<i64> = done["ended_sessions"]
        .as_array()
        .expect("ended sessions")
        .iter()
        .filter_map(serde_json::Value::as_i64)
        .collect();
    ended.sort_unstable();
    let mut want = vec![app_pid, holder_pid, waiter_pid];
    want.sort_unstable();
    assert_eq!(ended, want, "{done}");
    assert!(holder.wait().is_ok() && waiter.wait().is_ok());
    assert_eq!(count().trim(), "100");
    assert!(app.wait().is_ok());
    let tagged = ctx.run(&["list", "--tag", "safety", "--json"]).ok().json();
    assert!(tagged.to_string().contains(&safety), "{tagged}");

    // `latest` is the real backup, never the safety one.
    let again = ctx
        .run(&["restore", "latest", &url, "--clean", "--json"])
        .ok()
        .json();
    assert_eq!(again["backup"], first.as_str(), "{again}");
    assert_eq!(count().trim(), "100");
    // The safety backup restores the state before the first restore.
    ctx.run(&["restore", &safety, &url, "--clean", "--no-safety-backup"])
        .ok();
    assert_eq!(table_checksums(&pg, "shop"), before);

    // A restore that fails after its safety backup names it: a table restore with
    // clean stops at a view the clean does not drop but that needs the table.
    pg.execute(
        "shop",
        "CREATE SCHEMA extra; CREATE VIEW extra.big AS SELECT * FROM orders WHERE total > 100;",
    )
    .await
    .expect("a dependent view");
    let failed = ctx.run(&[
        "restore",
        &first,
        &url,
        "--clean",
        "--table",
        "public.orders",
    ]);
    assert_ne!(failed.code, 0, "{}", failed.all());
    assert!(failed.stderr.contains("safety backup"), "{}", failed.all());
    assert!(
        failed.stderr.contains("to roll back, dbops restore 2"),
        "{}",
        failed.all()
    );
    assert_eq!(count().trim(), "150", "nothing was dropped");

    // Retention: the rules do not count safety backups; they expire by age.
    let kept = ctx
        .run(&["forget", "--keep-last", "1", "--dry-run", "--json"])
        .ok()
        .json();
    let safety_decisions = kept["safety"].as_array().expect("safety decisions");
    assert!(safety_decisions.len() >= 2, "{kept}");
    assert!(safety_decisions.iter().all(|d| d["keep"] == true), "{kept}");
    let gone = ctx
        .run(&[
            "forget",
            "--keep-last",
            "1",
            "--keep-safety",
            "0s",
            "--json",
        ])
        .ok()
        .json();
    assert!(
        gone["safety"]
            .as_array()
            .expect("safety")
            .iter()
            .all(|d| d["keep"] == false),
        "{gone}"
    );
    let left = ctx.run(&["list", "--json"]).ok().json();
    let ids: Vec<&str> = left["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids, vec![first.as_str()], "{left}");
}

/// Relations (tables, views, sequences) and each table's row count, read by psql.
fn contents(pg: &EphemeralPostgres, db: &str) -> Vec<String> {
    let relations = psql(
        pg,
        db,
        &[
            "-At",
            "-c",
            "SELECT c.relkind::text || ' ' || n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'v', 'S') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname !~ '^pg_toast' ORDER BY 1",
        ],
    );
    relations
        .lines()
        .map(|line| match line.strip_prefix("r ") {
            Some(table) => {
                let sql = format!("SELECT count(*) FROM {table}");
                let rows = psql(pg, db, &["-At", "-c", &sql]);
                format!("{line} {}", rows.trim())
            }
            None => line.to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_filters_take_exactly_what_they_say() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    pg.create_database("app").await.expect("create db");
    pg.execute(
        "app",
        "CREATE TABLE users (id serial PRIMARY KEY, name text);
         INSERT INTO users (name) VALUES ('a'), ('b'), ('c');
         CREATE TABLE sessions (id int PRIMARY KEY, user_id int REFERENCES users);
         INSERT INTO sessions SELECT g, 1 + g % 3 FROM generate_series(1, 5) g;
         CREATE TABLE log_a (id serial PRIMARY KEY, line text);
         INSERT INTO log_a (line) VALUES ('x'), ('y');
         CREATE VIEW user_names AS SELECT name FROM users;
         CREATE SCHEMA audit;
         CREATE TABLE audit.events (id int);
         INSERT INTO audit.events VALUES (1), (2);",
    )
    .await
    .expect("set up");
    let ctx = Ctx::new();
    ctx.init();
    let url = pg.url_for("app");

    // pg_dump's -t: the matching tables with their owned sequences, nothing else; one
    // of them without its rows.
    let b = ctx
        .run(&[
            "--json",
            "backup",
            &url,
            "--table",
            "USERS",
            "--table",
            "public.log_*",
            "--exclude-table-data",
            "log_?",
        ])
        .ok()
        .json();
    let id = b["id"].as_str().expect("id").to_owned();
    assert_eq!(
        b["filter"]["tables"],
        serde_json::json!(["USERS", "public.log_*"])
    );
    let show = ctx.run(&["show", &id]).ok();
    assert!(
        show.stdout
            .contains("tables      tables USERS, public.log_*; no data of log_?"),
        "{}",
        show.stdout
    );
    ctx.run(&["restore", &id, &pg.url_for("only_users"), "--create"])
        .ok();
    assert_eq!(
        contents(&pg, "only_users"),
        [
            "S public.log_a_id_seq",
            "S public.users_id_seq",
            "r public.log_a 0",
            "r public.users 3",
        ]
    );
    let v = ctx.run(&["--json", "verify", &id, "--restore"]);
    assert_eq!(v.code, 0, "{}", v.all());
    let compared = v.json()["restores"][0]["check"]["tables"].clone();
    assert_eq!(
        compared.as_array().map(Vec::len),
        Some(1),
        "only users has rows to compare: {compared}"
    );

    // Exclusions: everything else, the sessions' definition without rows.
    let b = ctx
        .run(&[
            "--json",
            "backup",
            &url,
            "--exclude-table-data",
            "sessions",
            "--exclude-schema",
            "audit",
        ])
        .ok()
        .json();
    let id = b["id"].as_str().expect("id").to_owned();
    ctx.run(&["restore", &id, &pg.url_for("no_audit"), "--create"])
        .ok();
    assert_eq!(
        contents(&pg, "no_audit"),
        [
            "S public.log_a_id_seq",
            "S public.users_id_seq",
            "r public.log_a 2",
            "r public.sessions 0",
            "r public.users 3",
            "v public.user_names",
        ]
    );
    let v = ctx.run(&["verify", &id, "--restore"]);
    assert_eq!(v.code, 0, "{}", v.all());

    // A pattern that matches no table is an error naming it; nothing is stored.
    let r = ctx.run(&["backup", &url, "--table", "users", "--table", "nosuch*"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("'nosuch*'") && !r.stderr.contains("'users'"),
        "{}",
        r.all()
    );
    let r = ctx.run(&["backup", &url, "--exclude-table", "log_(a|b)"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--exclude-table") && r.stderr.contains("double quotes"),
        "{}",
        r.all()
    );
    let listed = ctx.run(&["--json", "list"]).ok().json();
    assert_eq!(listed["backups"].as_array().map(Vec::len), Some(2));

    // A partitioned table's rows are in its partitions, matched by their own names:
    // a filter that takes the parent and not them is refused, naming them.
    pg.execute(
        "app",
        "CREATE TABLE measure (id int, at date) PARTITION BY RANGE (at);
         CREATE TABLE measure_2025 PARTITION OF measure FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE measure_2026 PARTITION OF measure FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         INSERT INTO measure VALUES (1, '2025-05-01'), (2, '2026-05-01');",
    )
    .await
    .expect("partitions");
    for args in [
        &["--table", "measure"][..],
        &["--exclude-table-data", "measure"][..],
        &["--exclude-table", "measure_2025"][..],
    ] {
        let r = ctx.run(&[&["backup", url.as_str()][..], args].concat());
        assert_ne!(r.code, 0, "{args:?}: {}", r.all());
        assert!(
            r.stderr.contains("partitioned") && r.stderr.contains("measure_2025"),
            "{}",
            r.all()
        );
    }
    let b = ctx
        .run(&["--json", "backup", &url, "--table", "measure*"])
        .ok()
        .json();
    assert_eq!(b["tables"], 2, "{b}");
    // Partial backups are a series of their own: beside a full backup of the same
    // database, `latest` is the full one, whichever is newer.
    let full = ctx.run(&["--json", "backup", &url]).ok().json();
    ctx.run(&["backup", &url, "--table", "users"]).ok();
    let latest = ctx.run(&["--json", "show", "latest"]).ok().json();
    assert_eq!(latest["id"], full["id"], "{latest}");
}

/// `pg_dumpall --globals-only`, without comments, the per-dump `\restrict` keys and
/// the bootstrap superuser's lines (each server has its own, with its own password).
fn globals_dump(pg: &EphemeralPostgres) -> String {
    let o = std::process::Command::new(pg.bin_dir().join("pg_dumpall"))
        .arg("--globals-only")
        .arg("-d")
        .arg(pg.url())
        .output()
        .expect("run pg_dumpall");
    assert!(
        o.status.success(),
        "pg_dumpall failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            !l.starts_with("--")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
                && !l.starts_with("CREATE ROLE postgres;")
                && !l.starts_with("ALTER ROLE postgres WITH")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Database properties and every role setting, as the catalogs hold them.
fn server_properties(pg: &EphemeralPostgres) -> String {
    psql(
        pg,
        "postgres",
        &[
            "-At",
            "-c",
            "SELECT d.datname, pg_get_userbyid(d.datdba), coalesce(shobj_description(d.oid, 'pg_database'), '-'),
                    d.datconnlimit, pg_encoding_to_char(d.encoding), d.datcollate, d.datctype
               FROM pg_database d WHERE NOT d.datistemplate ORDER BY 1;
             SELECT coalesce(d.datname, '-'), coalesce(r.rolname, '-'), s.setconfig::text
               FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
               LEFT JOIN pg_roles r ON r.oid = s.setrole ORDER BY 1, 2",
        ],
    )
}

/// Runs each statement of `sql` (`;`-separated) on its own, outside a transaction.
fn statements(pg: &EphemeralPostgres, db: &str, sql: &[&str]) {
    let mut args = Vec::new();
    for stmt in sql.concat().split(';').filter(|s| !s.trim().is_empty()) {
        args.push("-c".to_owned());
        args.push(stmt.to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    psql(pg, db, &args);
}

/// Three databases, two login roles with memberships and grants, a role setting, a
/// per-database role setting and database settings: backed up whole (with password
/// hashes) and rebuilt on a fresh server, where pg_dumpall --globals-only, the
/// catalogs' database properties and every database (schema and rows) are the same;
/// then one database backed up alone comes back on another fresh server with the
/// roles it needs (and not the others) and its own properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_server_restores_roles_settings_and_every_database_onto_a_fresh_server() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    statements(
        &pg,
        "postgres",
        &["CREATE ROLE app_owner LOGIN PASSWORD 'owner secret';
             CREATE ROLE app_reader LOGIN PASSWORD 'reader secret' CONNECTION LIMIT 5;
             CREATE ROLE readers NOLOGIN;
             COMMENT ON ROLE readers IS 'read-only group';
             GRANT readers TO app_reader WITH ADMIN OPTION;
             GRANT app_owner TO app_reader;
             ALTER ROLE app_reader SET search_path TO app, public;
             CREATE DATABASE shop OWNER app_owner;
             CREATE DATABASE crm;
             CREATE DATABASE logs;
             COMMENT ON DATABASE shop IS 'the shop';
             ALTER DATABASE shop SET statement_timeout TO '30s';
             ALTER DATABASE crm SET search_path TO crm, public;
             ALTER ROLE app_owner IN DATABASE shop SET work_mem TO '8MB';"],
    );
    statements(
        &pg,
        "shop",
        &["CREATE SCHEMA app AUTHORIZATION app_owner;
             CREATE TABLE app.items (id int PRIMARY KEY, name text);
             ALTER TABLE app.items OWNER TO app_owner;
             INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 50) g;
             GRANT USAGE ON SCHEMA app TO readers;
             GRANT SELECT ON app.items TO readers;"],
    );
    statements(
        &pg,
        "crm",
        &["CREATE SCHEMA crm;
             CREATE TABLE crm.customers (id serial PRIMARY KEY, name text);
             INSERT INTO crm.customers (name) SELECT 'c' || g FROM generate_series(1, 20) g;
             GRANT SELECT ON crm.customers TO app_reader;"],
    );
    statements(
        &pg,
        "logs",
        &["CREATE TABLE events (at timestamptz, msg text);
             INSERT INTO events VALUES ('2026-01-01', 'a'), ('2026-01-02', 'b');"],
    );
    let ctx = Ctx::new();
    ctx.init();

    let backup = ctx
        .run(&[
            "--json",
            "backup",
            &pg.url(),
            "--all-databases",
            "--with-role-passwords",
        ])
        .ok();
    assert!(!backup.all().contains("SCRAM-SHA-256$"), "{}", backup.all());
    let b = backup.json();
    let id = b["id"].as_str().expect("id").to_owned();
    let names: Vec<&str> = b["databases"]
        .as_array()
        .expect("databases")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["crm", "logs", "postgres", "shop"]);
    assert!(
        b["warnings"].as_array().expect("warnings").iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("no snapshot across databases"))),
        "{b}"
    );
    let list = ctx.run(&["--json", "list"]).ok().json();
    assert_eq!(list["backups"][0]["whole_server"], true);
    assert_eq!(list["backups"][0]["group"]["all_databases"], true);
    let show = ctx.run(&["show", &id]).ok();
    assert!(
        show.stdout.contains("crm, logs, postgres, shop") && show.stdout.contains("db/shop/schema"),
        "{}",
        show.stdout
    );
    let read = ctx
        .run(&["--json", "verify", &id, "--read-data"])
        .ok()
        .json();
    assert_eq!(read["ok"], true);
    // Four globals streams, four schema streams, three tables.
    assert_eq!(read["report"]["streams"].as_u64(), Some(11), "{read}");
    // The restore proof takes the databases one by one.
    let proof = ctx
        .run(&[
            "--json",
            "verify",
            &id,
            "--restore",
            "--into",
            &pg.url_for("proof"),
        ])
        .ok()
        .json();
    let proved: Vec<&str> = proof["restores"]
        .as_array()
        .expect("restores")
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "{r}");
            r["database"].as_str().expect("database")
        })
        .collect();
    assert_eq!(proved, ["crm", "logs", "postgres", "shop"]);
    assert!(!database_exists(&pg, "proof"));

    let fresh = EphemeralPostgres::start().await.expect("start postgres");
    let restored = ctx
        .run(&["--json", "restore", &id, &fresh.url(), "--all-databases"])
        .ok()
        .json();
    assert_eq!(restored["databases"].as_array().map(Vec::len), Some(4));
    assert_eq!(globals_dump(&pg), globals_dump(&fresh));
    assert!(globals_dump(&fresh).contains("SET search_path TO 'app', 'public'"));
    assert_eq!(server_properties(&pg), server_properties(&fresh));
    for db in ["shop", "crm", "logs"] {
        assert_eq!(schema_dump(&pg, db), schema_dump(&fresh, db), "{db}");
        assert_eq!(
            table_checksums(&pg, db),
            table_checksums(&fresh, db),
            "{db}"
        );
    }

    // Again onto the same server: its databases are in the way.
    let again = ctx.run(&["restore", &id, &fresh.url(), "--all-databases"]);
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains("already has database(s)") && again.stderr.contains("--clean"),
        "{}",
        again.stderr
    );
    // A whole-server backup into one database: say how, then one database of it.
    let one = ctx.run(&["restore", &id, &fresh.url_for("crm_copy"), "--create"]);
    assert_ne!(one.code, 0);
    assert!(
        one.stderr.contains("--all-databases") && one.stderr.contains("--source-database"),
        "{}",
        one.stderr
    );
    ctx.run(&[
        "restore",
        &id,
        &fresh.url_for("crm_copy"),
        "--create",
        "--source-database",
        "crm",
    ])
    .ok();
    assert_eq!(
        table_checksums(&pg, "crm"),
        table_checksums(&fresh, "crm_copy")
    );
    // A server URL without --all-databases is pointed to it.
    let server_url = pg.url().replace("/postgres?", "/?");
    let bare = ctx.run(&["backup", &server_url]);
    assert_ne!(bare.code, 0);
    assert!(bare.stderr.contains("--all-databases"), "{}", bare.stderr);
    drop(fresh);

    // One database backed up alone carries the globals too; restored under another
    // name on a fresh server with --with-globals --create.
    let single = ctx
        .run(&["--json", "backup", &pg.url_for("shop")])
        .ok()
        .json();
    let single = single["id"].as_str().expect("id").to_owned();
    let other = EphemeralPostgres::start().await.expect("start postgres");
    let r = ctx
        .run(&[
            "--json",
            "restore",
            &single,
            &other.url_for("shop_copy"),
            "--create",
            "--with-globals",
        ])
        .ok()
        .json();
    assert_eq!(r["warnings"].as_array().map(Vec::len), Some(0), "{r}");
    let roles = psql(
        &other,
        "postgres",
        &[
            "-At",
            "-c",
            "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname !~ '^pg_'",
        ],
    );
    // app_reader is not needed by shop: it is neither an owner nor a grantee there.
    assert_eq!(roles.trim(), "app_owner,postgres,readers");
    let props = psql(
        &other,
        "postgres",
        &[
            "-At",
            "-c",
            "SELECT pg_get_userbyid(d.datdba), shobj_description(d.oid, 'pg_database'),
                    (SELECT setconfig::text FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0),
                    (SELECT setconfig::text FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                      WHERE s.setdatabase = d.oid AND r.rolname = 'app_owner')
               FROM pg_database d WHERE d.datname = 'shop_copy'",
        ],
    );
    assert_eq!(
        props.trim(),
        "app_owner|the shop|{statement_timeout=30s}|{work_mem=8MB}"
    );
    assert_eq!(
        table_checksums(&pg, "shop"),
        table_checksums(&other, "shop_copy")
    );

    // Password hashes need a superuser: a user who may read the database but not
    // pg_authid is told so, and no backup is made.
    statements(
        &pg,
        "postgres",
        &["CREATE ROLE plain LOGIN PASSWORD 'plain pw'"],
    );
    statements(&pg, "logs", &["GRANT SELECT ON events TO plain"]);
    let plain = format!(
        "postgres://plain:plain%20pw@127.0.0.1:{}/logs?sslmode=disable",
        pg.port()
    );
    let refused = ctx.run(&["backup", &plain, "--with-role-passwords"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("only a superuser") && !refused.stderr.contains("SCRAM-SHA-256$"),
        "{}",
        refused.stderr
    );
    // Without passwords the same user's backup carries the roles.
    let b = ctx.run(&["--json", "backup", &plain]).ok().json();
    assert_eq!(b["globals"], true, "{b}");
}
