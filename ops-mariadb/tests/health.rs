//! The MariaDB health probes, each driven into each of its states against real
//! throwaway servers: a primary that every scenario shares (one after the other, since
//! a sleeping query would show in the lock scenario and held connections everywhere),
//! and a replica of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use ops_core::testkit::health::{conformance, unreachable_is_an_error};
use ops_core::{
    HealthCheck, HealthReport, HealthStatus, Limits, Probe, ProbeBudget, Thresholds, run_suite,
};
use ops_mariadb::MariaDbEngine;
use ops_mariadb::ephemeral::EphemeralMariaDb;
use ops_mariadb::health::{default_limits, probes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// The monitoring account's password: it must never show.
const WATCHER_PASSWORD: &str = "W4tcher-Pa55word";

fn engine(url: &str) -> MariaDbEngine {
    MariaDbEngine::new(url).unwrap()
}

/// The monitoring account (PROCESS and SLAVE MONITOR only) on `server`.
fn watcher(server: &EphemeralMariaDb) -> MariaDbEngine {
    engine(&format!(
        "mariadb://watcher:{WATCHER_PASSWORD}@127.0.0.1:{}/app",
        server.port()
    ))
}

fn check(
    engine: &MariaDbEngine,
    thresholds: &Thresholds,
    budget: ProbeBudget,
    name: &str,
) -> Arc<dyn HealthCheck> {
    probes(engine, thresholds, budget)
        .into_iter()
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

async fn run(engine: &MariaDbEngine, thresholds: &Thresholds, name: &str) -> HealthReport {
    let report = check(engine, thresholds, ProbeBudget::default(), name)
        .check()
        .await
        .unwrap_or_else(|e| panic!("{name} could not check: {e}"));
    assert!(
        !format!("{report:?}").contains(WATCHER_PASSWORD),
        "{report:?}"
    );
    report
}

async fn connect(server: &EphemeralMariaDb) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(server.port())
        .user(Some("root"))
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await.expect("connect as root")
}

/// Runs `sql` on a connection of its own in the background; returns the connection's
/// id and the task (which gives the connection back when the statement ends).
async fn in_background(server: &EphemeralMariaDb, sql: &'static str) -> (u32, JoinHandle<()>) {
    let mut c = connect(server).await;
    let id = c.id();
    let task = tokio::spawn(async move {
        if let Err(e) = c.query_drop(sql).await {
            eprintln!("background `{sql}` ended: {e}");
        }
        c.disconnect().await.ok();
    });
    (id, task)
}

/// Polls `name` until `done` holds (at most 10 s; lock waits and replication take
/// their time to show).
async fn until(
    engine: &MariaDbEngine,
    thresholds: &Thresholds,
    name: &str,
    done: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = run(engine, thresholds, name).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{name} never got there: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The names are a contract with the PostgreSQL probes (metric labels, config keys);
/// the defaults are the issue's; overrides replace them per check.
#[test]
fn names_defaults_and_overrides() {
    let defaults: Vec<(&str, Limits)> = default_limits().collect();
    assert_eq!(
        defaults,
        [
            ("database_login", Limits::new(0.5, 2.0)),
            ("connections", Limits::new(80.0, 90.0)),
            ("longest_query", Limits::new(300.0, 1800.0)),
            ("oldest_transaction", Limits::new(300.0, 1800.0)),
            ("blocked_locks", Limits::new(1.0, 10.0)),
            ("replication_lag", Limits::new(60.0, 300.0)),
        ]
    );
    let e = engine(&format!(
        "mariadb://watcher:{WATCHER_PASSWORD}@db.example/app"
    ));
    let overridden = Thresholds::default().with("replication_lag", Limits::new(5.0, 7.0));
    let checks = probes(&e, &overridden, ProbeBudget::default());
    let names: Vec<&str> = checks.iter().map(|c| c.name()).collect();
    let expected: Vec<&str> = defaults.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected);
    for c in &checks {
        let shown = format!("{c:?}");
        assert!(!shown.contains(WATCHER_PASSWORD), "{shown}");
        let limits = if c.name() == "replication_lag" {
            "warn: 5.0, critical: 7.0"
        } else {
            "warn: "
        };
        assert!(shown.contains(limits), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_in_every_state() {
    let started = Instant::now();
    let (primary, replica) = tokio::join!(
        EphemeralMariaDb::start(),
        EphemeralMariaDb::builder()
            .with_arg("--server-id=2")
            .start()
    );
    let mut primary = primary.expect("starting the primary");
    let replica = replica.expect("starting the replica");
    eprintln!("servers up in {:.1} s", started.elapsed().as_secs_f64());
    primary
        .execute(
            "",
            &format!(
                "CREATE DATABASE app; \
                 CREATE TABLE app.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB; \
                 INSERT INTO app.t VALUES (1, 1), (2, 2), (3, 3); \
                 CREATE USER watcher@'%' IDENTIFIED BY '{WATCHER_PASSWORD}'; \
                 GRANT PROCESS, SLAVE MONITOR ON *.* TO watcher@'%'; \
                 GRANT SELECT ON app.* TO watcher@'%'; \
                 CREATE USER nopriv@'%' IDENTIFIED BY 'np'; \
                 GRANT SELECT ON app.* TO nopriv@'%'"
            ),
        )
        .await
        .unwrap();
    let db = watcher(&primary);
    let defaults = Thresholds::default();

    healthy(&primary, &db).await;
    connections(&primary, &db).await;
    logins(&primary).await;
    longest_query(&primary, &db).await;
    transactions_and_locks(&primary, &db).await;
    missing_privileges(&primary).await;
    statement_budget(&primary).await;
    replication(&primary, &replica).await;

    // A stopped server: the login says so, every other check could not check.
    primary.kill();
    let r = run(&db, &defaults, "database_login").await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
    assert!(r.reason.starts_with("not reachable"), "{}", r.reason);
    for c in probes(&db, &defaults, ProbeBudget::default()) {
        if c.name() == "database_login" {
            conformance(c.as_ref()).await;
        } else {
            unreachable_is_an_error(c.as_ref()).await;
        }
    }
    eprintln!(
        "every_probe_in_every_state: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Every check passes the conformance suite and is healthy on a quiet server; the
/// whole set through the suite runner says ok.
async fn healthy(server: &EphemeralMariaDb, db: &MariaDbEngine) {
    let t = Instant::now();
    let checks = probes(db, &Thresholds::default(), ProbeBudget::default());
    assert_eq!(checks.len(), 6);
    for c in &checks {
        conformance(c.as_ref()).await;
        let shown = format!("{c:?}");
        assert!(!shown.contains(WATCHER_PASSWORD), "{shown}");
        assert!(
            shown.contains(&format!("127.0.0.1:{}", server.port())),
            "{shown}"
        );
    }
    let suite: Vec<Probe> = checks
        .iter()
        .map(|c| Probe::new("app", Arc::clone(c)))
        .collect();
    let summary = run_suite(&suite, ops_core::chrono::Utc::now()).await;
    for c in &summary.checks {
        assert_eq!(c.status, HealthStatus::Healthy, "{c:?}");
    }
    assert_eq!(summary.status, "ok");
    assert_eq!(summary.exit_code(), 0);
    let login = &summary.checks[0];
    assert_eq!(login.name, "database_login");
    assert_eq!((login.warn, login.critical), (Some(0.5), Some(2.0)));
    assert!(login.reason.contains("user 'watcher'"), "{}", login.reason);
    let lag = summary
        .checks
        .iter()
        .find(|c| c.name == "replication_lag")
        .unwrap();
    assert_eq!(lag.value, Some(0.0));
    assert!(lag.reason.contains("not a replica"), "{}", lag.reason);
    eprintln!(
        "healthy: conformance and suite {:.2} s (suite alone: slowest check {:.3} s)",
        t.elapsed().as_secs_f64(),
        summary
            .checks
            .iter()
            .map(|c| c.duration)
            .fold(0.0, f64::max)
    );
}

/// max_connections = 10: 8 others in use is 80 % (degraded), 9 is 90 % (unhealthy),
/// and with all 10 taken the (non-SUPER) probe account is refused: unhealthy, 100 %.
async fn connections(server: &EphemeralMariaDb, db: &MariaDbEngine) {
    let t = Instant::now();
    server
        .execute("", "SET GLOBAL max_connections = 10")
        .await
        .unwrap();
    let mut held = Vec::new();
    for (others, status) in [
        (8, HealthStatus::Degraded),
        (9, HealthStatus::Unhealthy),
        (10, HealthStatus::Unhealthy),
    ] {
        while held.len() < others {
            held.push(connect(server).await);
        }
        // Closed connections leave Threads_connected a moment later.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n: Option<(String, u64)> = held[0]
                .query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                .await
                .unwrap();
            if n.as_ref().map(|n| n.1) == Some(others as u64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Threads_connected stays at {n:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = run(db, &Thresholds::default(), "connections").await;
        assert_eq!(r.status, status, "{others} held: {r:?}");
        assert_eq!(r.value, others as f64 * 10.0, "{r:?}");
        if others == 10 {
            assert!(r.reason.contains("refuses new connections"), "{}", r.reason);
        } else {
            assert!(
                r.reason
                    .contains(&format!("{others} of max_connections 10")),
                "{}",
                r.reason
            );
            assert!(
                r.reason.contains("other probes' sessions are"),
                "{}",
                r.reason
            );
        }
        assert_eq!((r.warn, r.critical), (Some(80.0), Some(90.0)));
    }
    for c in held {
        c.disconnect().await.unwrap();
    }
    server
        .execute("", "SET GLOBAL max_connections = 200")
        .await
        .unwrap();
    eprintln!("connections: {:.2} s", t.elapsed().as_secs_f64());
}

/// A user that does not exist and a wrong password are unhealthy, naming
/// authentication and never the password (`mariadb-admin ping` calls both "alive").
async fn logins(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let port = server.port();
    let ghost_pw = "Gh0st-Secret-77";
    for (who, url, secret) in [
        (
            "unknown user",
            format!("mariadb://ghost:{ghost_pw}@127.0.0.1:{port}/app"),
            ghost_pw,
        ),
        (
            "wrong password",
            format!("mariadb://watcher:Wr0ng-Secret-88@127.0.0.1:{port}/app"),
            "Wr0ng-Secret-88",
        ),
        (
            "wrong password in the query",
            format!("mariadb://watcher@127.0.0.1:{port}/app?password=Qu3ry-Secret-99"),
            "Qu3ry-Secret-99",
        ),
    ] {
        let e = engine(&url);
        let c = check(
            &e,
            &Thresholds::default(),
            ProbeBudget::default(),
            "database_login",
        );
        let r = c.check().await.expect("a refused login is a status");
        assert_eq!(r.status, HealthStatus::Unhealthy, "{who}: {r:?}");
        assert!(
            r.reason.starts_with("authentication failed"),
            "{who}: {}",
            r.reason
        );
        let shown = format!("{r:?} {c:?}");
        assert!(!shown.contains(secret), "{who}: {shown}");
        conformance(c.as_ref()).await;
    }
    // The application's database is part of the login.
    let r = run(
        &engine(&format!(
            "mariadb://watcher:{WATCHER_PASSWORD}@127.0.0.1:{port}/nosuchdb"
        )),
        &Thresholds::default(),
        "database_login",
    )
    .await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
    assert!(r.reason.contains("login failed"), "{}", r.reason);
    eprintln!("logins: {:.2} s", t.elapsed().as_secs_f64());
}

/// `SELECT SLEEP(30)` elsewhere with limits of 1 s / 2 s: degraded, then unhealthy,
/// naming the connection, the user and the statement.
async fn longest_query(server: &EphemeralMariaDb, db: &MariaDbEngine) {
    let t = Instant::now();
    let quick = Thresholds::default().with("longest_query", Limits::new(1.0, 2.0));
    let r = run(db, &quick, "longest_query").await;
    assert_eq!(r.status, HealthStatus::Healthy, "{r:?}");
    assert!(r.reason.contains("no query is running"), "{}", r.reason);

    let since = Instant::now();
    let (id, task) = in_background(
        server,
        "SELECT SLEEP(30),\n       \
         'a statement longer than the eighty characters that a reason shows' AS padding",
    )
    .await;
    tokio::time::sleep_until((since + Duration::from_millis(1300)).into()).await;
    let r = run(db, &quick, "longest_query").await;
    assert_eq!(r.status, HealthStatus::Degraded, "{r:?}");
    assert!((1.0..2.0).contains(&r.value), "{r:?}");
    for part in [
        format!("connection {id} "),
        "user 'root'".into(),
        // One line, cut at 80 characters.
        "SELECT SLEEP(30), 'a statement longer than the eighty".into(),
        "…; ".into(),
    ] {
        assert!(r.reason.contains(&part), "{part}: {}", r.reason);
    }
    assert!(!r.reason.contains("padding"), "{}", r.reason);
    tokio::time::sleep_until((since + Duration::from_millis(2300)).into()).await;
    let r = run(db, &quick, "longest_query").await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
    assert!(r.value >= 2.0, "{r:?}");
    // The defaults (5 / 30 min) see nothing wrong.
    let r = run(db, &Thresholds::default(), "longest_query").await;
    assert_eq!(r.status, HealthStatus::Healthy, "{r:?}");
    server
        .execute("", &format!("KILL QUERY {id}"))
        .await
        .unwrap();
    task.await.unwrap();

    // Statement text that may carry a password is withheld: reasons reach /health.
    let (id, task) = in_background(server, "SELECT SLEEP(30), 'SET PASSWORD = hunter2'").await;
    let r = until(db, &quick, "longest_query", |r| {
        r.reason.contains(&format!("connection {id} "))
    })
    .await;
    assert!(!r.reason.contains("hunter2"), "{}", r.reason);
    assert!(r.reason.contains("SELECT … (text withheld"), "{}", r.reason);
    server
        .execute("", &format!("KILL QUERY {id}"))
        .await
        .unwrap();
    task.await.unwrap();
    eprintln!("longest_query: {:.2} s", t.elapsed().as_secs_f64());
}

/// An idle open transaction: oldest_transaction degraded (and unhealthy) with small
/// limits. It holds row locks: an UPDATE behind it is a blocked lock naming both
/// sessions. A transaction holding a table's metadata lock: an ALTER behind it is one.
async fn transactions_and_locks(server: &EphemeralMariaDb, db: &MariaDbEngine) {
    let t = Instant::now();
    let r = run(db, &Thresholds::default(), "oldest_transaction").await;
    assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");

    let mut holder = connect(server).await;
    let holder_id = holder.id();
    holder.query_drop("START TRANSACTION").await.unwrap();
    holder
        .query_drop("SELECT * FROM app.t FOR UPDATE")
        .await
        .unwrap();
    let since = Instant::now();
    tokio::time::sleep_until((since + Duration::from_millis(1200)).into()).await;
    let warn = Thresholds::default().with("oldest_transaction", Limits::new(1.0, 3600.0));
    let r = run(db, &warn, "oldest_transaction").await;
    assert_eq!(r.status, HealthStatus::Degraded, "{r:?}");
    assert!(r.value >= 1.0 && r.value < 60.0, "{r:?}");
    assert!(
        r.reason
            .contains(&format!("connection {holder_id} (user 'root')")),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("idle in transaction"), "{}", r.reason);
    assert!(
        r.reason.starts_with("oldest transaction: transaction "),
        "{}",
        r.reason
    );
    let crit = Thresholds::default().with("oldest_transaction", Limits::new(0.5, 1.0));
    let r = run(db, &crit, "oldest_transaction").await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");

    // A row lock held by the transaction blocks another session's UPDATE.
    let defaults = Thresholds::default();
    let r = run(db, &defaults, "blocked_locks").await;
    assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
    let (waiter_id, waiter) =
        in_background(server, "UPDATE app.t SET v = v + 1 WHERE id = 1").await;
    let r = until(db, &defaults, "blocked_locks", |r| r.value >= 1.0).await;
    assert_eq!(r.value, 1.0, "{r:?}");
    assert_eq!(r.status, HealthStatus::Degraded, "{r:?}");
    assert_eq!((r.warn, r.critical), (Some(1.0), Some(10.0)));
    for part in [
        format!("longest: connection {waiter_id} "),
        "a row lock".into(),
        "UPDATE app.t SET v = v + 1".into(),
        format!("blocked by connection {holder_id} (user 'root', idle in transaction)"),
    ] {
        assert!(r.reason.contains(&part), "{part}: {}", r.reason);
    }
    holder.query_drop("ROLLBACK").await.unwrap();
    waiter.await.unwrap();
    // INNODB_TRX is a snapshot InnoDB refreshes at most every 0.1 s.
    until(db, &defaults, "blocked_locks", |r| r.value == 0.0).await;

    // A metadata lock: an open transaction that read the table holds it; ALTER waits.
    holder.query_drop("START TRANSACTION").await.unwrap();
    holder.query_drop("SELECT * FROM app.t").await.unwrap();
    let (alter_id, alter) = in_background(server, "ALTER TABLE app.t ADD COLUMN extra INT").await;
    let r = until(db, &defaults, "blocked_locks", |r| r.value >= 1.0).await;
    assert_eq!((r.status, r.value), (HealthStatus::Degraded, 1.0), "{r:?}");
    assert!(
        r.reason.contains(&format!("connection {alter_id} ")) && r.reason.contains("metadata lock"),
        "{}",
        r.reason
    );
    holder.query_drop("ROLLBACK").await.unwrap();
    alter.await.unwrap();
    holder.disconnect().await.unwrap();
    let r = until(db, &defaults, "blocked_locks", |r| r.value == 0.0).await;
    assert_eq!(r.status, HealthStatus::Healthy, "{r:?}");
    eprintln!("transactions and locks: {:.2} s", t.elapsed().as_secs_f64());
}

/// An account without PROCESS and SLAVE MONITOR would see only its own sessions: the
/// checks that need them could not check (unknown), and say which privilege; login
/// and connections work for any account.
async fn missing_privileges(server: &EphemeralMariaDb) {
    let t = Instant::now();
    let e = engine(&format!(
        "mariadb://nopriv:np@127.0.0.1:{}/app",
        server.port()
    ));
    let checks = probes(&e, &Thresholds::default(), ProbeBudget::default());
    for c in &checks {
        match c.name() {
            "database_login" | "connections" => conformance(c.as_ref()).await,
            "replication_lag" => {
                let err = c.check().await.expect_err("no SLAVE MONITOR");
                assert!(err.to_string().contains("SLAVE MONITOR"), "{err}");
            }
            name => {
                let err = c.check().await.expect_err(name);
                assert!(
                    err.to_string().contains("PROCESS privilege"),
                    "{name}: {err}"
                );
            }
        }
    }
    let suite: Vec<Probe> = checks
        .iter()
        .map(|c| Probe::new("app", Arc::clone(c)))
        .collect();
    let s = run_suite(&suite, ops_core::chrono::Utc::now()).await;
    let unknown: Vec<&str> = s
        .checks
        .iter()
        .filter(|c| c.status == HealthStatus::Unknown)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        unknown,
        [
            "longest_query",
            "oldest_transaction",
            "blocked_locks",
            "replication_lag"
        ]
    );
    assert_eq!(s.exit_code(), 3);
    eprintln!("missing privileges: {:.2} s", t.elapsed().as_secs_f64());
}

/// A server that stops answering in the middle of a check (a proxy that swallows the
/// answer to the PROCESSLIST query): the check could not check, and says so within
/// its statement budget.
async fn statement_budget(server: &EphemeralMariaDb) {
    let port = swallowing_proxy(server.port(), b"PROCESSLIST").await;
    let e = engine(&format!(
        "mariadb://watcher:{WATCHER_PASSWORD}@127.0.0.1:{port}/app?ssl-mode=disable"
    ));
    let mut budget = ProbeBudget::default();
    budget.connect = Duration::from_secs(2);
    budget.statement = Duration::from_secs(1);
    let c = check(&e, &Thresholds::default(), budget, "longest_query");
    let t = Instant::now();
    let err = c.check().await.expect_err("no answer");
    let took = t.elapsed();
    assert!(err.to_string().contains("statement budget"), "{err}");
    assert!(took < budget.statement + Duration::from_secs(1), "{took:?}");
    assert!(!format!("{err:?}").contains(WATCHER_PASSWORD));
    eprintln!(
        "statement budget: unknown after {:.2} s",
        took.as_secs_f64()
    );
}

/// A TCP proxy to `upstream` that stops passing the server's answers once the client
/// sent `trigger`.
async fn swallowing_proxy(upstream: u16, trigger: &'static [u8]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let frozen = Arc::new(AtomicBool::new(false));
                let seen = Arc::clone(&frozen);
                let up = async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if buf[..n].windows(trigger.len()).any(|w| w == trigger) {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if frozen.load(Ordering::SeqCst) {
                            continue;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    port
}

/// A replica of `primary`: healthy at 0 s behind while both threads run; a stopped SQL
/// thread, and an SQL thread stopped by an error, are unhealthy with the threads'
/// states and the error.
async fn replication(primary: &EphemeralMariaDb, replica: &EphemeralMariaDb) {
    let t = Instant::now();
    let mut p = connect(primary).await;
    let (file, pos): (String, u64) = p
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .map(|row: mysql_async::Row| {
            (
                row.get::<String, _>(0).unwrap(),
                row.get::<u64, _>(1).unwrap(),
            )
        })
        .expect("the primary writes a binary log");
    replica
        .execute(
            "",
            &format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
                 MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_LOG_FILE = '{file}', \
                 MASTER_LOG_POS = {pos}, MASTER_CONNECT_RETRY = 1; START SLAVE",
                primary.port()
            ),
        )
        .await
        .unwrap();
    let db = engine(&replica.url());
    let defaults = Thresholds::default();
    // Seconds_Behind_Master can read a few seconds while the replica applies what
    // came before it connected (seen under load): wait until it has caught up.
    let r = until(&db, &defaults, "replication_lag", |r| {
        r.status == HealthStatus::Healthy && r.value == 0.0
    })
    .await;
    assert_eq!(r.value, 0.0, "{r:?}");
    assert!(r.reason.contains("behind its primary"), "{}", r.reason);
    conformance(check(&db, &defaults, ProbeBudget::default(), "replication_lag").as_ref()).await;

    // The replica gets a row of its own: the same row from the primary cannot apply.
    p.query_drop("CREATE DATABASE rep; CREATE TABLE rep.c (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = replica.execute("", "INSERT INTO rep.c VALUES (1)").await {
        assert!(
            Instant::now() < deadline,
            "rep.c never reached the replica: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    replica.execute("", "STOP SLAVE SQL_THREAD").await.unwrap();
    let r = run(&db, &defaults, "replication_lag").await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
    assert_eq!(r.value, -1.0);
    for part in [
        "replication is stopped",
        "Slave_IO_Running: Yes",
        "Slave_SQL_Running: No",
    ] {
        assert!(r.reason.contains(part), "{part}: {}", r.reason);
    }

    // An event the replica cannot apply stops its SQL thread with an error.
    replica.execute("", "START SLAVE SQL_THREAD").await.unwrap();
    p.query_drop("INSERT INTO rep.c VALUES (1)").await.unwrap();
    let r = until(&db, &defaults, "replication_lag", |r| {
        r.status == HealthStatus::Unhealthy
    })
    .await;
    for part in [
        "replication is stopped",
        "Slave_SQL_Running: No",
        "Last_Error",
        "Duplicate entry '1'",
    ] {
        assert!(r.reason.contains(part), "{part}: {}", r.reason);
    }
    p.disconnect().await.unwrap();
    eprintln!("replication: {:.2} s", t.elapsed().as_secs_f64());
}

/// A blackholed address and a server that accepts but never speaks: the login check
/// is unhealthy ("not reachable"), every other check unknown, all within the connect
/// budget plus a second, while the suite would allow each 7 s.
#[tokio::test]
async fn a_blackholed_or_silent_server_answers_within_the_connect_budget() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut budget = ProbeBudget::default();
    budget.connect = Duration::from_secs(1);
    for url in [
        format!("mariadb://watcher:{WATCHER_PASSWORD}@10.255.255.1:3306/app"),
        format!("mariadb://watcher:{WATCHER_PASSWORD}@127.0.0.1:{silent_port}/app"),
    ] {
        let e = engine(&url);
        let checks = probes(&e, &Thresholds::default(), budget);
        let suite: Vec<Probe> = checks
            .iter()
            .map(|c| Probe::new("app", Arc::clone(c)).with_budget(budget.total()))
            .collect();
        let t = Instant::now();
        let s = run_suite(&suite, ops_core::chrono::Utc::now()).await;
        let took = t.elapsed();
        assert!(
            took < budget.connect + Duration::from_secs(1),
            "{url}: {took:?}"
        );
        for c in &s.checks {
            assert!(!c.reason.contains(WATCHER_PASSWORD), "{}", c.reason);
            if c.name == "database_login" {
                assert_eq!(c.status, HealthStatus::Unhealthy, "{c:?}");
                assert!(c.reason.starts_with("not reachable"), "{}", c.reason);
            } else {
                assert_eq!(c.status, HealthStatus::Unknown, "{c:?}");
            }
        }
        assert_eq!(s.status, "unhealthy");
        assert_eq!(s.exit_code(), 2);
        assert!(!s.serving());
        eprintln!(
            "{}: suite answered in {:.2} s",
            ops_core::redact_url(&url),
            took.as_secs_f64()
        );
    }
    keep.abort();
}
