//! `dbops` end to end on a throwaway MariaDB server: backup, verify (read-data and by
//! restoring into another throwaway server), restore under another name, compared with
//! mariadb-dump and CHECKSUM TABLE, independently of dbops.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Ctx, fixtures};
use ops_mariadb::ephemeral::EphemeralMariaDb;

fn client(port: u16, db: Option<&str>) -> Command {
    let mut c = Command::new("mariadb");
    c.args([
        "-h127.0.0.1",
        "-uroot",
        "--default-character-set=utf8mb4",
        "-N",
        "-B",
    ])
    .arg(format!("-P{port}"));
    if let Some(db) = db {
        c.arg(db);
    }
    c
}

fn load(port: u16, db: Option<&str>, file: &Path) {
    let o = client(port, db)
        .stdin(std::fs::File::open(file).expect("open fixture"))
        .output()
        .expect("mariadb");
    assert!(
        o.status.success(),
        "loading {}: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn query(port: u16, db: &str, sql: &str) -> String {
    let o = client(port, Some(db))
        .args(["-e", sql])
        .output()
        .expect("mariadb");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn schema(port: u16, db: &str) -> String {
    let o = Command::new("mariadb-dump")
        .args([
            "-h127.0.0.1",
            "-uroot",
            "--no-data",
            "--routines",
            "--triggers",
            "--events",
            "--skip-dump-date",
            "--skip-comments",
        ])
        .arg(format!("-P{port}"))
        .arg(db)
        .output()
        .expect("mariadb-dump");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).replace(&format!("`{db}`"), "`DB`")
}

fn tables(port: u16, db: &str) -> BTreeMap<String, String> {
    let names = query(
        port,
        db,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1",
    );
    names
        .lines()
        .map(|t| {
            let count = query(port, db, &format!("SELECT COUNT(*) FROM `{t}`"));
            let sum = query(port, db, &format!("CHECKSUM TABLE `{t}`"));
            let sum = sum.split_whitespace().last().unwrap_or_default().to_owned();
            (t.to_owned(), format!("{} {sum}", count.trim()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_backup_verifies_by_restore_and_restores_under_another_name() {
    let server = EphemeralMariaDb::start().await.expect("start mariadb");
    let port = server.port();
    let db = match fixtures("sakila") {
        Some(dir) => {
            load(port, None, &dir.join("sakila-schema.sql"));
            load(port, None, &dir.join("sakila-data.sql"));
            "sakila"
        }
        None => {
            query(port, "mysql", "CREATE DATABASE kitchen");
            let file = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ops-mariadb/tests/fixtures/kitchen_sink.sql");
            load(port, Some("kitchen"), &file);
            "kitchen"
        }
    };
    let ctx = Ctx::new();
    ctx.init();
    let url = server.url_for(db);
    let b = ctx
        .run(&["--json", "backup", &url, "--jobs", "2"])
        .ok()
        .json();
    assert_eq!(b["engine"], "mariadb");
    let id = b["id"].as_str().expect("id").to_owned();
    assert!(
        b["snapshot"].as_object().is_some_and(|s| !s.is_empty()),
        "binlog/GTID position recorded: {b}"
    );

    ctx.run(&["verify", &id, "--read-data"]).ok();
    let v = ctx.run(&["--json", "verify", &id, "--restore"]);
    assert_eq!(v.code, 0, "{}", v.all());
    let checks = v.json();
    let t = checks["restores"][0]["check"]["tables"]
        .as_array()
        .expect("tables")
        .clone();
    assert!(t.len() >= 5, "{t:?}");
    assert!(t.iter().all(|t| t["matches"] == true), "{t:?}");

    let copy = format!("{db}_copy");
    ctx.run(&[
        "restore",
        &id,
        &server.url_for(&copy),
        "--create",
        "--jobs",
        "2",
    ])
    .ok();
    assert_eq!(schema(port, db), schema(port, &copy), "schema differs");
    assert_eq!(
        tables(port, db),
        tables(port, &copy),
        "table contents differ"
    );

    let refused = ctx.run(&["restore", &id, &server.url_for(&copy)]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("not empty") && refused.stderr.contains("clean"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_checks_find_an_injected_orphan_and_duplicate_in_sakila() {
    let server = EphemeralMariaDb::start().await.expect("start mariadb");
    let port = server.port();
    let dir = fixtures("sakila").expect("the sakila fixture (../shared/fixtures/sakila)");
    load(port, None, &dir.join("sakila-schema.sql"));
    load(port, None, &dir.join("sakila-data.sql"));
    let ctx = Ctx::new();
    let config = common::write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"

[databases.sakila]
url = "{url}"

[checks.orphan-rentals]
database = "sakila"
sql = "SELECT r.rental_id, r.customer_id FROM rental r LEFT JOIN customer c ON c.customer_id = r.customer_id WHERE c.customer_id IS NULL"

[checks.duplicate-emails]
database = "sakila"
sql = "SELECT email, COUNT(*) AS customers FROM customer GROUP BY email HAVING COUNT(*) > 1"
severity = "warn"

[checks.broken]
database = "sakila"
sql = "SELEC 1"
"#,
            state = ctx.dir.path().join("state").display(),
            url = server.url_for("sakila"),
        ),
    );
    let both = ["integrity", "orphan-rentals", "duplicate-emails", "--json"];
    let r = common::run(&ctx, &config, &both, &[]);
    assert_eq!(r.code, 0, "clean sakila passes: {}", r.all());

    query(
        port,
        "sakila",
        "SET foreign_key_checks = 0; \
         INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id) \
         VALUES ('2022-06-01', 1, 65000, 1); \
         INSERT INTO customer (store_id, first_name, last_name, email, address_id, create_date) \
         SELECT store_id, 'DUP', 'LICATE', email, address_id, NOW() FROM customer WHERE customer_id = 1;",
    );
    let email = query(
        port,
        "sakila",
        "SELECT email FROM customer WHERE customer_id = 1",
    );
    let r = common::run(&ctx, &config, &both, &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    let doc = r.json();
    let find = |name: &str| {
        doc["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {doc}"))
    };
    let orphan = find("orphan-rentals");
    assert_eq!(orphan["status"], "unhealthy");
    assert_eq!(orphan["rows"]["count"], 1);
    assert_eq!(orphan["rows"]["sample"][0][1], "65000", "{orphan}");
    let dup = find("duplicate-emails");
    assert_eq!(dup["status"], "degraded");
    assert_eq!(dup["rows"]["sample"][0][0], email.trim(), "{dup}");

    let r = common::run(&ctx, &config, &["integrity", "broken"], &[]);
    assert_eq!(r.code, 3, "a syntax error could not run: {}", r.all());
    assert!(r.stdout.contains("could not run"), "{}", r.stdout);
}

/// `restore --clean` over a MariaDB database in use: a connected session is named and
/// stops the restore, --terminate-connections ends it; the safety backup taken first
/// is not `latest` and restores the replaced content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_over_a_database_in_use_keeps_a_safety_backup() {
    use std::io::Write as _;
    let db = EphemeralMariaDb::start().await.expect("start mariadb");
    let port = db.port();
    db.create_database("shop").await.expect("create db");
    db.execute(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, total int NOT NULL) ENGINE=InnoDB;
         INSERT INTO orders SELECT seq, seq * 3 FROM seq_1_to_100;",
    )
    .await
    .expect("set up");
    let ctx = Ctx::new();
    ctx.init();
    let url = db.url_for("shop");
    let first = ctx.run(&["backup", &url, "--json"]).ok().json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    db.execute(
        "shop",
        "INSERT INTO orders SELECT seq, seq * 3 FROM seq_101_to_150;",
    )
    .await
    .expect("more rows");
    let before = tables(port, "shop");
    let count = || {
        query(port, "shop", "SELECT count(*) FROM orders")
            .trim()
            .to_owned()
    };

    let mut app = client(port, Some("shop"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("a client session");
    writeln!(app.stdin.as_mut().expect("stdin"), "SELECT 1;").expect("write");
    let mut app_id = String::new();
    common::wait_for(
        "the client session",
        std::time::Duration::from_secs(30),
        || {
            app_id = query(
            port,
            "shop",
            "SELECT id FROM information_schema.processlist WHERE db = 'shop' AND command = 'Sleep' AND id <> CONNECTION_ID()",
        )
        .trim()
        .to_owned();
            !app_id.is_empty()
        },
    );
    let r = ctx.run(&["restore", &first, &url, "--clean"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains(&app_id), "{}", r.all());
    assert_eq!(count(), "150");

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
    assert_eq!(
        done["ended_sessions"].to_string(),
        format!("[{app_id}]"),
        "{done}"
    );
    assert_eq!(count(), "100");
    let _ = app.kill();
    let _ = app.wait();

    let again = ctx
        .run(&["restore", "latest", &url, "--clean", "--json"])
        .ok()
        .json();
    assert_eq!(again["backup"], first.as_str(), "{again}");
    ctx.run(&["restore", &safety, &url, "--clean", "--no-safety-backup"])
        .ok();
    assert_eq!(tables(port, "shop"), before);
}

/// Tables with their row counts, views, routines and triggers, read by the client.
fn contents(port: u16, db: &str) -> Vec<String> {
    let mut out = Vec::new();
    let objects = query(
        port,
        db,
        "SELECT CONCAT(IF(table_type = 'VIEW', 'view ', 'table '), table_name) \
         FROM information_schema.tables WHERE table_schema = DATABASE() \
         UNION ALL SELECT CONCAT(LOWER(routine_type), ' ', routine_name) \
         FROM information_schema.routines WHERE routine_schema = DATABASE() \
         UNION ALL SELECT CONCAT('trigger ', trigger_name, ' on ', event_object_table) \
         FROM information_schema.triggers WHERE trigger_schema = DATABASE() ORDER BY 1",
    );
    for line in objects.lines() {
        match line.strip_prefix("table ") {
            Some(t) => {
                let rows = query(port, db, &format!("SELECT COUNT(*) FROM `{t}`"));
                out.push(format!("{line} {}", rows.trim()));
            }
            None => out.push(line.to_owned()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_filters_take_exactly_what_they_say() {
    let server = EphemeralMariaDb::start().await.expect("start mariadb");
    let port = server.port();
    server.create_database("app").await.expect("create db");
    server
        .execute(
            "app",
            "CREATE TABLE Users (id int PRIMARY KEY, name text) ENGINE=InnoDB;
             INSERT INTO Users VALUES (1, 'a'), (2, 'b'), (3, 'c');
             CREATE TABLE sessions (id int PRIMARY KEY, user_id int,
                 FOREIGN KEY (user_id) REFERENCES Users (id)) ENGINE=InnoDB;
             INSERT INTO sessions SELECT seq, 1 + seq % 3 FROM seq_1_to_5;
             CREATE TABLE log_a (id int PRIMARY KEY, line text) ENGINE=InnoDB;
             INSERT INTO log_a VALUES (1, 'x'), (2, 'y');
             CREATE VIEW user_names AS SELECT name FROM Users;
             CREATE TRIGGER users_name BEFORE INSERT ON Users FOR EACH ROW SET NEW.name = TRIM(NEW.name);
             CREATE PROCEDURE clear_sessions() DELETE FROM sessions;",
        )
        .await
        .expect("set up");
    let ctx = Ctx::new();
    ctx.init();
    let url = server.url_for("app");

    // As pg_dump's -t: the matching tables with their triggers, no view or routine;
    // unquoted letters match either case (MariaDB keeps a name's case).
    let b = ctx
        .run(&[
            "--json",
            "backup",
            &url,
            "--table",
            "users",
            "--table",
            "app.log_*",
            "--exclude-table-data",
            "log_?",
        ])
        .ok()
        .json();
    let id = b["id"].as_str().expect("id").to_owned();
    ctx.run(&["restore", &id, &server.url_for("only_users"), "--create"])
        .ok();
    assert_eq!(
        contents(port, "only_users"),
        [
            "table log_a 0",
            "table Users 3",
            "trigger users_name on Users"
        ]
    );
    // Restored on a throwaway server under another name: compared all the same.
    let v = ctx.run(&["--json", "verify", &id, "--restore"]);
    assert_eq!(v.code, 0, "{}", v.all());
    let compared = v.json()["restores"][0]["check"]["tables"].clone();
    assert_eq!(compared.as_array().map(Vec::len), Some(1), "{compared}");

    // Exclusions: everything else, the sessions' definition without rows.
    let b = ctx
        .run(&[
            "--json",
            "backup",
            &url,
            "--exclude-table-data",
            "sessions",
            "--exclude-table",
            "log*",
        ])
        .ok()
        .json();
    let id = b["id"].as_str().expect("id").to_owned();
    ctx.run(&["restore", &id, &server.url_for("no_logs"), "--create"])
        .ok();
    assert_eq!(
        contents(port, "no_logs"),
        [
            "procedure clear_sessions",
            "table sessions 0",
            "table Users 3",
            "trigger users_name on Users",
            "view user_names",
        ]
    );
    let v = ctx.run(&["verify", &id, "--restore"]);
    assert_eq!(v.code, 0, "{}", v.all());

    // The schema is the database: a schema pattern naming another matches nothing.
    let r = ctx.run(&["backup", &url, "--schema", "other"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("'other'") && r.stderr.contains("matched no table"),
        "{}",
        r.all()
    );
}

/// Three databases, users (one the definer of a view), roles, role grants, a default
/// role and global, database, table, column, routine and proxy grants.
const SERVER: &str = "
CREATE DATABASE shop; CREATE DATABASE crm; CREATE DATABASE logs;
CREATE TABLE shop.orders (id INT PRIMARY KEY, total INT NOT NULL);
INSERT INTO shop.orders SELECT seq, seq * 7 FROM seq_1_to_50;
CREATE TABLE crm.people (id INT PRIMARY KEY, name VARCHAR(40), note TEXT);
INSERT INTO crm.people VALUES (1, 'Ada', NULL), (2, 'Grace', 'x');
CREATE TABLE logs.events (id INT PRIMARY KEY, at DATETIME);
INSERT INTO logs.events SELECT seq, '2026-01-01' + INTERVAL seq MINUTE FROM seq_1_to_20;
CREATE PROCEDURE shop.tally() SELECT COUNT(*) FROM shop.orders;
CREATE USER 'app'@'%' IDENTIFIED BY 'app-secret' WITH MAX_USER_CONNECTIONS 20;
CREATE USER 'report'@'10.0.%' IDENTIFIED BY 'report-secret';
CREATE USER 'ops'@'localhost' IDENTIFIED VIA unix_socket;
CREATE ROLE reader; CREATE ROLE writer;
GRANT SELECT ON shop.* TO reader; GRANT SELECT ON logs.* TO reader;
GRANT INSERT, UPDATE ON shop.orders TO writer;
GRANT SELECT (name) ON crm.people TO writer;
GRANT reader TO writer; GRANT writer TO 'app'@'%';
SET DEFAULT ROLE writer FOR 'app'@'%';
GRANT reader TO 'report'@'10.0.%' WITH ADMIN OPTION;
GRANT PROCESS ON *.* TO 'ops'@'localhost' WITH GRANT OPTION;
GRANT EXECUTE ON PROCEDURE shop.tally TO 'app'@'%';
GRANT PROXY ON 'report'@'10.0.%' TO 'ops'@'localhost';
CREATE DEFINER='app'@'%' SQL SECURITY DEFINER VIEW shop.big AS SELECT id FROM shop.orders WHERE total > 100;
";

/// Every account but root's and mariadb.sys: `SHOW GRANTS FOR` sorted, and `SHOW
/// CREATE USER` for users.
fn grants(port: u16) -> BTreeMap<String, Vec<String>> {
    query(
        port,
        "mysql",
        "SELECT IF(is_role = 'Y', QUOTE(User), CONCAT(QUOTE(User), '@', QUOTE(Host))), is_role \
         FROM mysql.user WHERE User NOT IN ('root', 'mariadb.sys')",
    )
    .lines()
    .map(|line| {
        let (name, is_role) = line.split_once('\t').expect("two columns");
        let mut lines: Vec<String> = query(port, "mysql", &format!("SHOW GRANTS FOR {name}"))
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        if is_role == "N" {
            lines.push(query(port, "mysql", &format!("SHOW CREATE USER {name}")));
        }
        (name.to_owned(), lines)
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_server_with_users_roles_and_grants_restores_onto_a_new_server() {
    let (source, target) = tokio::join!(EphemeralMariaDb::start(), EphemeralMariaDb::start());
    let (source, target) = (source.expect("source"), target.expect("target"));
    query(source.port(), "mysql", SERVER);
    let expected = grants(source.port());
    assert!(expected.len() >= 5, "{expected:?}");
    let ctx = Ctx::new();
    ctx.init();
    let b = ctx
        .run(&[
            "--json",
            "backup",
            &source.url(),
            "--all-databases",
            "--with-role-passwords",
        ])
        .ok()
        .json();
    let id = b["id"].as_str().expect("id").to_owned();
    ctx.run(&["restore", &id, &target.url(), "--all-databases"])
        .ok();

    let restored = grants(target.port());
    for (name, lines) in &expected {
        assert_eq!(Some(lines), restored.get(name), "{name}");
    }
    assert_eq!(expected.len(), restored.len(), "{restored:?}");
    for db in ["crm", "logs", "shop"] {
        assert_eq!(
            schema(source.port(), db),
            schema(target.port(), db),
            "schema of {db}"
        );
        assert_eq!(
            tables(source.port(), db),
            tables(target.port(), db),
            "rows of {db}"
        );
    }
    // The password came with the backup: app logs in on the new server.
    let o = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            "-uapp",
            "-papp-secret",
            "-N",
            "-e",
            "SELECT CURRENT_ROLE()",
        ])
        .arg(format!("-P{}", target.port()))
        .output()
        .expect("mariadb");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "writer");

    // Grants name their database: one restored under another name with its globals is
    // refused before anything is created.
    let r = ctx.run(&[
        "restore",
        &id,
        &target.url_for("crm_copy"),
        "--create",
        "--with-globals",
        "--source-database",
        "crm",
    ]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("under its own name"), "{}", r.all());
    let dbs = query(target.port(), "mysql", "SHOW DATABASES LIKE 'crm_copy'");
    assert!(dbs.trim().is_empty(), "{dbs}");
}
