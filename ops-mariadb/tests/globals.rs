//! Server globals: users, roles, role grants, default roles and global, proxy,
//! database, table, column and routine grants dumped from one server and recreated on
//! a new one, judged by the servers' own `SHOW GRANTS FOR` and `SHOW CREATE USER`. One
//! source and one target server for the whole binary (one test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::{MemoryDump, MemorySink};
use ops_core::{
    DatabaseEngine, ErrorKind, GlobalsOptions, GlobalsPhase, GlobalsReport, GlobalsRestoreOptions,
    StreamSource,
};
use ops_mariadb::MariaDbEngine;
use ops_mariadb::ephemeral::EphemeralMariaDb;

/// The databases' objects, made on both servers (the grants need them; a database
/// restore would make them on the target).
const OBJECTS: &str = "
CREATE DATABASE shop; CREATE DATABASE crm;
CREATE TABLE shop.orders (id INT PRIMARY KEY, total INT);
CREATE TABLE crm.people (id INT PRIMARY KEY, name TEXT, secret TEXT);
CREATE PROCEDURE shop.tally() SELECT COUNT(*) FROM shop.orders;
";

const ACCOUNTS: &str = "
CREATE USER 'app'@'%' IDENTIFIED BY 'app-secret' WITH MAX_USER_CONNECTIONS 20;
CREATE USER 'report'@'10.0.%' IDENTIFIED BY 'report-secret' PASSWORD EXPIRE INTERVAL 90 DAY;
CREATE USER 'ops'@'localhost' IDENTIFIED VIA unix_socket;
CREATE USER 'odd`name'@'%' ACCOUNT LOCK;
CREATE ROLE reader; CREATE ROLE writer;
GRANT SELECT ON shop.* TO reader;
GRANT INSERT, UPDATE ON shop.orders TO writer;
GRANT SELECT (id, name), UPDATE (name) ON crm.people TO writer;
GRANT reader TO writer;
GRANT writer TO 'app'@'%';
SET DEFAULT ROLE writer FOR 'app'@'%';
GRANT reader TO 'report'@'10.0.%' WITH ADMIN OPTION;
GRANT PROCESS, RELOAD ON *.* TO 'ops'@'localhost' WITH GRANT OPTION;
GRANT EXECUTE ON PROCEDURE shop.tally TO 'app'@'%';
GRANT SELECT ON `crm`.* TO 'odd`name'@'%';
GRANT PROXY ON 'report'@'10.0.%' TO 'ops'@'localhost';
GRANT SELECT ON shop.* TO PUBLIC;
";

/// Per account but the installation's own (root, mariadb.sys, PUBLIC's row): its
/// `SHOW GRANTS FOR` lines sorted, and `SHOW CREATE USER` for a user.
async fn globals_of(server: &EphemeralMariaDb) -> BTreeMap<String, Vec<String>> {
    let mut c = common::connect(server, "mysql").await;
    let accounts: Vec<(String, String, String)> = c
        .query(
            "SELECT User, Host, is_role FROM mysql.user \
             WHERE User NOT IN ('root', 'mariadb.sys', 'PUBLIC')",
        )
        .await
        .expect("accounts");
    let mut out = BTreeMap::new();
    for (user, host, is_role) in accounts {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let name = if is_role == "Y" {
            q(&user)
        } else {
            format!("{}@{}", q(&user), q(&host))
        };
        let lines: Vec<String> = c
            .query(format!("SHOW GRANTS FOR {name}"))
            .await
            .unwrap_or_else(|e| panic!("SHOW GRANTS FOR {name}: {e}"));
        let mut lines: Vec<String> = lines.iter().map(|l| columns_sorted(l)).collect();
        lines.sort();
        if is_role != "Y" {
            let create: String = c
                .query_first(format!("SHOW CREATE USER {name}"))
                .await
                .expect("show create user")
                .expect("a row");
            lines.push(create);
        }
        out.insert(name, lines);
    }
    let public: Vec<String> = c.query("SHOW GRANTS FOR PUBLIC").await.unwrap_or_default();
    out.insert("PUBLIC".into(), public);
    c.disconnect().await.ok();
    out
}

/// A grant line with each column list sorted: the server prints a table's columns in
/// the order of its own hash table, which differs between servers.
fn columns_sorted(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find(" (`") {
        let Some(close) = rest[open..].find("`)") else {
            break;
        };
        let inner = &rest[open + 2..open + close + 1];
        let mut columns: Vec<&str> = inner.split(", ").collect();
        columns.sort_unstable();
        out.push_str(&rest[..open + 2]);
        out.push_str(&columns.join(", "));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

async fn dump(engine: &MariaDbEngine, options: &GlobalsOptions) -> Arc<MemoryDump> {
    let dump = MemoryDump::new();
    engine
        .dump_globals(options, Arc::new(MemorySink(Arc::clone(&dump))))
        .await
        .unwrap_or_else(|e| panic!("dump_globals: {e}"));
    dump.into_source()
}

async fn restore(
    engine: &MariaDbEngine,
    dump: &Arc<MemoryDump>,
    phase: GlobalsPhase,
    databases: &[&str],
) -> GlobalsReport {
    let options = GlobalsRestoreOptions::new(phase)
        .with_databases(databases.iter().map(|d| (*d).to_owned()).collect());
    engine
        .restore_globals(Arc::clone(dump) as Arc<dyn StreamSource>, &options)
        .await
        .unwrap_or_else(|e| panic!("restore_globals {phase:?} {databases:?}: {e}"))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The login's error kind, or `None` when it got in.
async fn login(server: &EphemeralMariaDb, user: &str, password: &str) -> Option<ErrorKind> {
    let url = format!(
        "mariadb://{user}:{password}@127.0.0.1:{}/?ssl-mode=disable",
        server.port()
    );
    let engine = MariaDbEngine::new(&url).expect("url");
    engine.describe().await.err().map(|e| e.kind())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_grants_restore_onto_a_new_server() {
    let (source, target) = tokio::join!(common::server(), common::server());
    source.execute("", OBJECTS).await.expect("objects");
    source.execute("", ACCOUNTS).await.expect("accounts");
    let expected = globals_of(&source).await;
    assert!(expected.len() >= 6, "{expected:?}");

    let from = MariaDbEngine::new(&source.url()).expect("url");
    assert_eq!(from.databases().await.expect("databases"), ["crm", "shop"]);
    assert_eq!(from.for_database("shop").expect("bound").database(), "shop");
    assert_eq!(
        from.for_database("").err().map(|e| e.kind()),
        Some(ErrorKind::InvalidInput)
    );

    // Without passwords: no hash in the backup.
    let without = dump(&from, &GlobalsOptions::default()).await;
    let with = dump(&from, &GlobalsOptions::default().with_role_passwords(true)).await;
    let hash: String = common::connect(&source, "mysql")
        .await
        .query_first("SELECT authentication_string FROM mysql.user WHERE User = 'app'")
        .await
        .expect("hash")
        .expect("a row");
    assert!(hash.starts_with('*'), "{hash}");
    let text = String::from_utf8(without.content("globals/mariadb").expect("stream")).unwrap();
    assert!(!text.contains(&hash), "{text}");
    assert!(
        !text.contains("root"),
        "installation accounts left out: {text}"
    );
    let text = String::from_utf8(with.content("globals/mariadb").expect("stream")).unwrap();
    assert!(text.contains(&hash));

    // Only what crm needs: the accounts with grants there (writer; odd`name), the
    // users holding such a role (app) and the roles those hold (reader). Grants on
    // shop are left out; app has no usable password.
    target.execute("", OBJECTS).await.expect("objects");
    let to = MariaDbEngine::new(&target.url()).expect("url");
    let before = restore(&to, &without, GlobalsPhase::BeforeDatabases, &["crm"]).await;
    assert_eq!(
        sorted(
            before
                .created
                .iter()
                .filter(|c| !c.starts_with("grant"))
                .cloned()
                .collect()
        ),
        [
            "role reader",
            "role writer",
            "user 'app'@'%'",
            "user 'odd`name'@'%'"
        ],
        "{before:?}"
    );
    assert!(before.existing.is_empty(), "{before:?}");
    assert!(
        before
            .warnings
            .iter()
            .any(|w| w.contains("'app'@'%'") && w.contains("no passwords")),
        "{before:?}"
    );
    let after = restore(&to, &without, GlobalsPhase::AfterDatabases, &["crm"]).await;
    assert!(
        after
            .created
            .iter()
            .any(|c| c.contains("`crm`.`people` TO `writer`")),
        "{after:?}"
    );
    assert!(
        after
            .created
            .iter()
            .any(|c| c.starts_with("default role writer"))
    );
    assert!(
        after.created.iter().all(|c| !c.contains("shop")),
        "{after:?}"
    );
    let partial = globals_of(&target).await;
    assert!(
        partial["'writer'"].iter().all(|l| !l.contains("shop"))
            && partial["'writer'"].iter().any(|l| l.contains("crm")),
        "{partial:?}"
    );
    assert!(!partial.contains_key("'report'@'10.0.%'"));
    assert_eq!(
        login(&target, "app", "app-secret").await,
        Some(ErrorKind::Authentication)
    );
    assert_eq!(
        login(&target, "app", "").await,
        Some(ErrorKind::Authentication)
    );

    // The whole server, with passwords, by a new restore: identical.
    target
        .execute(
            "",
            "DROP USER 'app'@'%', 'odd`name'@'%'; DROP ROLE reader; DROP ROLE writer",
        )
        .await
        .expect("drop");
    let to = MariaDbEngine::new(&target.url()).expect("url");
    let before = restore(&to, &with, GlobalsPhase::BeforeDatabases, &[]).await;
    assert!(before.existing.is_empty(), "{before:?}");
    assert!(before.warnings.is_empty(), "{before:?}");
    let after = restore(&to, &with, GlobalsPhase::AfterDatabases, &[]).await;
    assert!(after.warnings.is_empty(), "{after:?}");
    let restored = globals_of(&target).await;
    for (name, lines) in &expected {
        common::assert_same_text(name, &lines.join("\n"), &restored[name].join("\n"));
    }
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(login(&target, "app", "app-secret").await, None);

    // Again: everything exists and is left alone (app keeps its password).
    let to = MariaDbEngine::new(&target.url()).expect("url");
    let again = restore(&to, &without, GlobalsPhase::BeforeDatabases, &[]).await;
    assert_eq!(again.created, Vec::<String>::new());
    assert_eq!(again.existing.len(), 7, "{again:?}");
    let again = restore(&to, &without, GlobalsPhase::AfterDatabases, &[]).await;
    assert_eq!(again.created, Vec::<String>::new());
    assert_eq!(globals_of(&target).await, restored);
    assert_eq!(login(&target, "app", "app-secret").await, None);

    // A role the target has of its own, which the restoring account does not hold:
    // left alone, and the grant of it to a user the restore makes is a warning.
    target
        .execute(
            "",
            "DROP USER 'report'@'10.0.%'; DROP ROLE reader; \
             CREATE ROLE reader WITH ADMIN 'nobody'@'nowhere'",
        )
        .await
        .expect("a role of the target's own");
    let to = MariaDbEngine::new(&target.url()).expect("url");
    let before = restore(&to, &without, GlobalsPhase::BeforeDatabases, &[]).await;
    assert_eq!(before.created[0], "user 'report'@'10.0.%'", "{before:?}");
    assert!(
        before.existing.iter().any(|e| e.starts_with("role reader")),
        "{before:?}"
    );
    assert!(
        before
            .warnings
            .iter()
            .any(|w| w.contains("GRANT `reader` TO `report`") && w.contains("WITH ADMIN OPTION")),
        "{before:?}"
    );

    // An account that may not read the mysql database is told what it needs.
    source
        .execute(
            "",
            "CREATE USER 'limited'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON shop.* TO 'limited'@'%'",
        )
        .await
        .expect("limited");
    let limited = MariaDbEngine::new(&format!(
        "mariadb://limited:pw@127.0.0.1:{}/?ssl-mode=disable",
        source.port()
    ))
    .expect("url");
    let err = limited
        .dump_globals(
            &GlobalsOptions::default(),
            Arc::new(MemorySink(MemoryDump::new())),
        )
        .await
        .expect_err("no SELECT on mysql.*");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("GRANT SELECT ON mysql.*"), "{err}");
}
