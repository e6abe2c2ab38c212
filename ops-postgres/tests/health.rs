//! The PostgreSQL health probes against real throwaway servers: each probe driven into
//! each of its states by real sessions (a `pg_sleep`, an idle transaction, a lock held
//! by one session blocking another, connections up to saturation, a wrong password, a
//! killed server, a blackholed address), the shared conformance suite on every check,
//! and the whole set through `run_suite` with its timing.
//!
//! One server carries most scenarios, one after another (they would see each other's
//! sessions: the probes look at the whole server); a second one, with
//! `max_connections = 10`, is saturated and then killed; a third watches it with a
//! role without `pg_monitor`, then with it; a fourth gets a streaming standby (a base
//! backup started by hand) and is then killed under it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_core::chrono::Utc;
use ops_core::testkit::health::{conformance, unreachable_is_an_error};
use ops_core::{
    ErrorKind, HealthCheck, HealthReport, HealthStatus, Limits, Probe, ProbeBudget, Secret,
    Thresholds, run_suite,
};
use ops_postgres::PostgresEngine;
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};
use ops_postgres::health::{
    APPLICATION_NAME, BlockedLocks, CHECKS, Connections, DatabaseLogin, IdleInTransaction,
    LongestQuery, OldestTransaction, ReplicationLag, ReplicationSlots, XidAge, probes,
};

mod common;
use common::{end_sessions_named, session, timed};

/// The `application_name` of the sessions the tests open to create load.
const LOAD: &str = "health-test";

/// Runs `check` until it reports `want`, for at most `within`.
async fn wait_for(check: &dyn HealthCheck, want: HealthStatus, within: Duration) -> HealthReport {
    let deadline = Instant::now() + within;
    loop {
        let r = check
            .check()
            .await
            .unwrap_or_else(|e| panic!("{} could not run: {e}", check.name()));
        if r.status == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{}: still {} after {within:?} (wanted {want}): value {}, {}",
            check.name(),
            r.status,
            r.value,
            r.reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn measure(check: &dyn HealthCheck) -> HealthReport {
    check
        .check()
        .await
        .unwrap_or_else(|e| panic!("{} could not run: {e}", check.name()))
}

fn pick(checks: &[Arc<dyn HealthCheck>], name: &str) -> Arc<dyn HealthCheck> {
    checks
        .iter()
        .find(|c| c.name() == name)
        .cloned()
        .unwrap_or_else(|| panic!("no check {name}"))
}

/// The password in an ephemeral server's URL (`postgres://postgres:PW@…`).
fn password_of(server: &EphemeralPostgres) -> String {
    let url = server.url();
    let rest = url.strip_prefix("postgres://postgres:").expect("URL shape");
    rest[..rest.find('@').expect("URL shape")].to_owned()
}

fn overridden(name: &str, limits: Limits) -> Thresholds {
    Thresholds::default().with(name, limits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_in_every_state_on_one_server() {
    let started = Instant::now();
    let server = EphemeralPostgres::start().await.expect("server starts");
    println!("server start: {:.2} s", started.elapsed().as_secs_f64());
    let engine = server.engine_for("postgres").expect("engine");
    let budget = ProbeBudget::default();
    let (admin, _) = session(&server, "postgres", None, "health-admin").await;
    let all = probes(&engine, &Thresholds::default(), budget);

    timed("names, Debug and conformance", async {
        let names: Vec<&str> = all.iter().map(|c| c.name()).collect();
        assert_eq!(names, CHECKS);
        let shown = format!("{all:?}");
        assert!(!shown.contains(&password_of(&server)), "{shown}");
        for check in &all {
            conformance(check.as_ref()).await;
        }
    })
    .await;

    timed("suite: 9 probes x 20 runs", async {
        let suite: Vec<Probe> = all
            .iter()
            .map(|c| Probe::new("erp", Arc::clone(c)).with_budget(budget.total()))
            .collect();
        let mut took = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let summary = run_suite(&suite, Utc::now()).await;
            took.push(t.elapsed().as_secs_f64());
            for c in &summary.checks {
                // A login slower than its 0.5 s warning is the machine (a loaded CI
                // runner), not the probe: degraded is the right answer then.
                let slow_login = c.name == "database_login" && c.status == HealthStatus::Degraded;
                assert!(c.status == HealthStatus::Healthy || slow_login, "{c:?}");
            }
            assert!(summary.exit_code() <= 1, "{summary:?}");
        }
        took.sort_by(f64::total_cmp);
        let p95 = took[(took.len() * 95).div_ceil(100) - 1];
        println!(
            "suite of {} probes: p50 {:.3} s, p95 {p95:.3} s, max {:.3} s",
            suite.len(),
            took[took.len() / 2],
            took[took.len() - 1]
        );
        // Speed is measured in bench/; here only that no run comes near the probes'
        // time budget (a hang).
        assert!(p95 < budget.total().as_secs_f64(), "p95 {p95} s");
    })
    .await;

    timed("database_login", async {
        let login = DatabaseLogin::with_thresholds(&engine, &Thresholds::default(), budget);
        assert_eq!(login.limits(), Limits::new(0.5, 2.0));
        let r = measure(&login).await;
        assert_eq!(r.status, HealthStatus::Healthy, "{r:?}");
        assert!(r.value > 0.0 && r.value < 0.5, "{r:?}");
        assert_eq!((r.warn, r.critical), (Some(0.5), Some(2.0)));
        assert!(r.reason.contains("SELECT 1"), "{}", r.reason);

        // A tiny warning limit from the thresholds degrades the same login.
        let strict = probes(
            &engine,
            &overridden("database_login", Limits::new(0.000_001, 100.0)),
            budget,
        );
        let r = measure(pick(&strict, "database_login").as_ref()).await;
        assert_eq!(r.status, HealthStatus::Degraded, "{r:?}");
        assert_eq!(r.warn, Some(0.000_001));

        // A wrong password is a verdict, never "alive", and never shows a password.
        let wrong_pw = "wrong-horse-battery-staple";
        let wrong = engine.with_password(Secret::new(wrong_pw));
        let login = DatabaseLogin::new(&wrong, DatabaseLogin::DEFAULT_LIMITS, budget);
        let r = measure(&login).await;
        assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
        assert!(r.reason.contains("authentication"), "{}", r.reason);
        assert!(!r.reason.contains("alive"), "{}", r.reason);
        for secret in [wrong_pw.to_owned(), password_of(&server)] {
            assert!(!r.reason.contains(&secret), "{}", r.reason);
            assert!(!format!("{login:?}").contains(&secret));
        }
        conformance(&login).await;
        // Every other check needs a session: for it the refusal is "could not check".
        let xid = XidAge::new(&wrong, XidAge::DEFAULT_LIMITS, budget);
        let err = xid.check().await.expect_err("no session, no measurement");
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
        assert!(!err.to_string().contains(wrong_pw), "{err}");
        unreachable_is_an_error(&xid).await;

        // A database that does not exist: the server answers, and refuses the login.
        let missing = engine.with_database("no_such_database");
        let r = measure(&DatabaseLogin::new(
            &missing,
            DatabaseLogin::DEFAULT_LIMITS,
            budget,
        ))
        .await;
        assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
        assert!(r.reason.contains("3D000"), "{}", r.reason);
    })
    .await;

    timed("longest_query", async {
        let check = LongestQuery::new(&engine, Limits::new(1.0, 2.0), budget);
        let r = measure(&check).await;
        assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
        let (sleeper, pid) = session(&server, "postgres", None, LOAD).await;
        let sleeping = tokio::spawn(async move {
            // Ends with an error when the load sessions are ended.
            let _ = sleeper.simple_query("SELECT pg_sleep(30)").await;
        });
        let r = wait_for(&check, HealthStatus::Degraded, Duration::from_secs(5)).await;
        assert!((1.0..2.0).contains(&r.value), "{r:?}");
        for part in [
            format!("pid {pid}"),
            "user postgres".to_owned(),
            "SELECT pg_sleep(30)".to_owned(),
        ] {
            assert!(r.reason.contains(&part), "{part}: {}", r.reason);
        }
        let r = wait_for(&check, HealthStatus::Unhealthy, Duration::from_secs(5)).await;
        assert!(r.value >= 2.0, "{r:?}");
        end_sessions_named(&admin, LOAD).await;
        sleeping.await.expect("sleeper task");
        let r = measure(&check).await;
        assert_eq!(r.status, HealthStatus::Healthy, "{r:?}");
    })
    .await;

    timed("oldest_transaction and idle_in_transaction", async {
        let tight = Limits::new(1.0, 2.0);
        let oldest = OldestTransaction::new(&engine, tight, budget);
        let idle = IdleInTransaction::new(&engine, tight, budget);
        let longest = LongestQuery::new(&engine, tight, budget);
        for check in [&oldest as &dyn HealthCheck, &idle] {
            let r = measure(check).await;
            assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
        }
        let (open, pid) = session(&server, "postgres", None, LOAD).await;
        open.batch_execute("BEGIN; SELECT 1").await.expect("begin");
        for check in [&oldest as &dyn HealthCheck, &idle] {
            let r = wait_for(check, HealthStatus::Degraded, Duration::from_secs(5)).await;
            assert!(r.reason.contains(&format!("pid {pid}")), "{}", r.reason);
            assert!(r.reason.contains("idle in transaction"), "{}", r.reason);
        }
        for check in [&oldest as &dyn HealthCheck, &idle] {
            let r = wait_for(check, HealthStatus::Unhealthy, Duration::from_secs(5)).await;
            assert!(r.value >= 2.0, "{r:?}");
        }
        // Idle is not running: the longest query does not see it.
        let r = measure(&longest).await;
        assert_eq!(r.value, 0.0, "{r:?}");
        drop(open);
        end_sessions_named(&admin, LOAD).await;
        let r = measure(&idle).await;
        assert_eq!(r.status, HealthStatus::Healthy, "{r:?}");
    })
    .await;

    timed("blocked_locks", async {
        let check = pick(&all, BlockedLocks::NAME);
        let r = measure(check.as_ref()).await;
        assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
        admin
            .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
            .await
            .expect("table");
        let (holder, holder_pid) = session(&server, "postgres", None, LOAD).await;
        holder
            .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        let (reader, reader_pid) = session(&server, "postgres", None, LOAD).await;
        let reading = tokio::spawn(async move {
            let _ = reader.simple_query("SELECT * FROM t").await;
        });
        let r = wait_for(
            check.as_ref(),
            HealthStatus::Degraded,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.value, 1.0, "{r:?}");
        assert!(
            r.reason.contains(&format!("pid {reader_pid}")),
            "{}",
            r.reason
        );
        assert!(
            r.reason.contains(&format!("blocked by pid {holder_pid}")),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("idle in transaction"), "{}", r.reason);
        assert!(r.reason.contains("SELECT * FROM t"), "{}", r.reason);
        drop(holder);
        end_sessions_named(&admin, LOAD).await;
        reading.await.expect("reader task");
        let r = measure(check.as_ref()).await;
        assert_eq!(r.value, 0.0, "{r:?}");
    })
    .await;

    timed("replication_lag and replication_slots", async {
        let lag = ReplicationLag::with_thresholds(&engine, &Thresholds::default(), budget);
        let r = measure(&lag).await;
        assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
        assert!(
            r.reason.contains("primary without standbys"),
            "{}",
            r.reason
        );

        let slots = ReplicationSlots::new(&engine, Limits::new(64.0 * 1024.0, 1e12), budget);
        let r = measure(&slots).await;
        assert_eq!((r.status, r.value), (HealthStatus::Healthy, 0.0), "{r:?}");
        admin
            .batch_execute(
                "SELECT pg_create_physical_replication_slot('forgotten_standby', true);
                 CREATE TABLE wal_filler AS SELECT g, repeat('x', 100) AS pad
                   FROM generate_series(1, 5000) g;",
            )
            .await
            .expect("slot and WAL");
        let r = measure(&slots).await;
        assert_eq!(r.status, HealthStatus::Degraded, "{r:?}");
        assert!(r.value > 64.0 * 1024.0, "{r:?}");
        assert!(r.reason.contains("forgotten_standby"), "{}", r.reason);
        assert_eq!(r.unit, "bytes");
        admin
            .batch_execute("SELECT pg_drop_replication_slot('forgotten_standby')")
            .await
            .expect("drop slot");
        let r = measure(&slots).await;
        assert_eq!(r.value, 0.0, "{r:?}");
    })
    .await;

    timed("xid_age", async {
        let r = measure(pick(&all, "xid_age").as_ref()).await;
        assert_eq!(r.status, HealthStatus::Healthy, "{r:?}");
        assert!(r.value > 0.0, "{r:?}");
        assert_eq!((r.warn, r.critical), (Some(1e9), Some(1.5e9)));
        // Limits the server is already past (any transaction ages its databases'
        // frozen XIDs): a tiny warning limit is degraded, tiny limits both critical.
        for (limits, want) in [
            (Limits::new(1.0, 1e12), HealthStatus::Degraded),
            (Limits::new(0.5, 1.0), HealthStatus::Unhealthy),
        ] {
            let r = measure(&XidAge::new(&engine, limits, budget)).await;
            assert_eq!(r.status, want, "{r:?}");
            assert!(r.reason.contains("at or past"), "{r:?}");
        }
    })
    .await;

    println!("whole test: {:.2} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_saturate_and_then_the_server_stops() {
    let started = Instant::now();
    let server = EphemeralPostgres::start_with(
        EphemeralOptions::default().with_setting("max_connections", "10"),
    )
    .await
    .expect("server starts");
    println!("server start: {:.2} s", started.elapsed().as_secs_f64());
    server
        .execute(
            "postgres",
            "CREATE ROLE app LOGIN PASSWORD 'app-pw-9f3'; GRANT pg_monitor TO app",
        )
        .await
        .expect("role");
    let engine = server.engine_for("postgres").expect("engine");
    let budget = ProbeBudget::default();
    let check = Connections::with_thresholds(&engine, &Thresholds::default(), budget);
    let app = PostgresEngine::new(&format!(
        "postgres://app:app-pw-9f3@127.0.0.1:{}/postgres?sslmode=disable",
        server.port()
    ))
    .expect("URL");
    let app_login = DatabaseLogin::new(&app, DatabaseLogin::DEFAULT_LIMITS, budget);
    let app_connections = Connections::with_thresholds(&app, &Thresholds::default(), budget);

    // 10 connections, 3 reserved for superusers: 7 open to everyone. The probe's own
    // session is one of them, and so are its sibling probes' (a suite opens them all
    // at once): two of the loads below are probe sessions.
    let mut held = Vec::new();
    for (load, status) in [
        (0, HealthStatus::Healthy),
        (4, HealthStatus::Healthy),
        (5, HealthStatus::Degraded),
        (6, HealthStatus::Unhealthy),
    ] {
        while held.len() < load {
            let name = if held.len() < 2 {
                APPLICATION_NAME
            } else {
                LOAD
            };
            held.push(session(&server, "postgres", None, name).await.0);
        }
        // A backend that was just closed (the role's creation) may take a moment to
        // leave pg_stat_activity.
        let percent = (load + 1) as f64 * 100.0 / 7.0;
        let deadline = Instant::now() + Duration::from_secs(5);
        let r = loop {
            let r = measure(&check).await;
            if (r.value - percent).abs() < 1e-9 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!((r.value - percent).abs() < 1e-9, "{load} held: {r:?}");
        assert_eq!(r.status, status, "{load} held: {r:?}");
        assert!(r.reason.contains("of 7 connections"), "{}", r.reason);
        let probes_held = load.min(2);
        assert!(
            r.reason
                .contains(&format!("{} of them health probes'", probes_held + 1)),
            "{}",
            r.reason
        );
    }
    // All but the reserved slots taken: an ordinary user cannot log in, and the
    // connections check of an ordinary user, refused too, measures that: 100 %.
    held.push(session(&server, "postgres", None, LOAD).await.0);
    let r = measure(&app_login).await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
    assert!(r.reason.contains("53300"), "{}", r.reason);
    assert!(!r.reason.contains("app-pw-9f3"), "{}", r.reason);
    let r = measure(&app_connections).await;
    assert_eq!(
        (r.status, r.value),
        (HealthStatus::Unhealthy, 100.0),
        "{r:?}"
    );
    assert!(r.reason.contains("refuses new connections"), "{}", r.reason);
    assert!(r.reason.contains("53300"), "{}", r.reason);
    assert!(!r.reason.contains("app-pw-9f3"), "{}", r.reason);
    // The superuser's probe gets a reserved slot and counts past 100 %.
    let r = measure(&check).await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
    assert!(r.value > 100.0, "{r:?}");
    drop(held);

    // A stopped server: the login says "not reachable", the rest could not check.
    server.kill().expect("kill");
    let login = DatabaseLogin::with_thresholds(&engine, &Thresholds::default(), budget);
    let r = measure(&login).await;
    assert_eq!(r.status, HealthStatus::Unhealthy, "{r:?}");
    assert!(r.reason.contains("not reachable"), "{}", r.reason);
    let err = check.check().await.expect_err("nothing to count");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err:?}");
    unreachable_is_an_error(&check).await;

    let suite: Vec<Probe> = probes(&engine, &Thresholds::default(), budget)
        .into_iter()
        .map(|c| Probe::new("erp", c).with_budget(budget.total()))
        .collect();
    let t = Instant::now();
    let summary = run_suite(&suite, Utc::now()).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for c in &summary.checks {
        let want = if c.name == "database_login" {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Unknown
        };
        assert_eq!(c.status, want, "{c:?}");
    }
    assert_eq!(summary.exit_code(), 2);
    assert!(!summary.serving());
    println!("whole test: {:.2} s", started.elapsed().as_secs_f64());
}

/// Runs every probe of `url` with a 1 s connect budget: the login is unhealthy, the rest
/// unknown, all within the budget + 1 s, and no reason shows the password.
async fn unreachable_within_budget(url: &str, password: &str) -> Duration {
    let engine = PostgresEngine::new(url).expect("URL");
    let mut budget = ProbeBudget::default();
    budget.connect = Duration::from_secs(1);
    let suite: Vec<Probe> = probes(&engine, &Thresholds::default(), budget)
        .into_iter()
        .map(|c| Probe::new("erp", c).with_budget(budget.total()))
        .collect();
    let t = Instant::now();
    let summary = run_suite(&suite, Utc::now()).await;
    let took = t.elapsed();
    assert!(took < budget.connect + Duration::from_secs(1), "{took:?}");
    for c in &summary.checks {
        let want = if c.name == DatabaseLogin::NAME {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Unknown
        };
        assert_eq!(c.status, want, "{c:?}");
        assert!(!c.reason.contains(password), "{}", c.reason);
    }
    let login = &summary.checks[0];
    assert!(login.reason.contains("not reachable"), "{}", login.reason);
    println!(
        "{}: {:.2} s: {}",
        engine_host(url),
        took.as_secs_f64(),
        login.reason
    );
    took
}

fn engine_host(url: &str) -> &str {
    url.split('@').nth(1).unwrap_or(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_answer_within_the_budget() {
    // A blackholed address: no answer at all (or, without a route, an immediate error).
    unreachable_within_budget(
        "postgres://postgres:pw-blackhole@10.255.255.1:5432/postgres?sslmode=disable",
        "pw-blackhole",
    )
    .await;
    // A server that accepts the connection and never says a word: only the connect
    // budget ends the wait, wherever the test runs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let took = unreachable_within_budget(
        &format!("postgres://postgres:pw-silent@127.0.0.1:{port}/postgres?sslmode=disable"),
        "pw-silent",
    )
    .await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pg_monitor_the_session_checks_refuse_to_guess() {
    let server = EphemeralPostgres::start().await.expect("server starts");
    server
        .execute(
            "postgres",
            "CREATE ROLE watcher LOGIN PASSWORD 'watch-pw-7c1'",
        )
        .await
        .expect("role");
    let watcher = PostgresEngine::new(&format!(
        "postgres://watcher:watch-pw-7c1@127.0.0.1:{}/postgres?sslmode=disable",
        server.port()
    ))
    .expect("URL");
    let budget = ProbeBudget::default();
    let tight = Limits::new(1.0, 2.0);
    let checks: Vec<Arc<dyn HealthCheck>> = vec![
        Arc::new(Connections::new(
            &watcher,
            Connections::DEFAULT_LIMITS,
            budget,
        )),
        Arc::new(LongestQuery::new(&watcher, tight, budget)),
        Arc::new(OldestTransaction::new(&watcher, tight, budget)),
        Arc::new(IdleInTransaction::new(&watcher, tight, budget)),
        Arc::new(BlockedLocks::new(
            &watcher,
            BlockedLocks::DEFAULT_LIMITS,
            budget,
        )),
    ];

    // Other users' sessions to be blind to: a long query and a lock wait.
    let (admin, _) = session(&server, "postgres", None, "health-admin").await;
    admin
        .batch_execute("CREATE TABLE t (id int); GRANT SELECT ON t TO watcher")
        .await
        .expect("table");
    let (sleeper, sleeper_pid) = session(&server, "postgres", None, LOAD).await;
    let sleeping = tokio::spawn(async move {
        let _ = sleeper.simple_query("SELECT pg_sleep(30)").await;
    });
    let (holder, holder_pid) = session(&server, "postgres", None, LOAD).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let (reader, reader_pid) = session(&server, "postgres", None, LOAD).await;
    let reading = tokio::spawn(async move {
        let _ = reader.simple_query("SELECT * FROM t").await;
    });

    for check in &checks {
        let err = check
            .check()
            .await
            .expect_err("a blind check must not say OK");
        assert_eq!(
            err.kind(),
            ErrorKind::PermissionDenied,
            "{}: {err:?}",
            check.name()
        );
        let text = err.to_string();
        assert!(text.contains("GRANT pg_monitor TO watcher"), "{text}");
        assert!(!text.contains("watch-pw-7c1"), "{text}");
    }
    // In a suite: unknown, never ok.
    let suite: Vec<Probe> = checks
        .iter()
        .map(|c| Probe::new("erp", Arc::clone(c)).with_budget(budget.total()))
        .collect();
    let summary = run_suite(&suite, Utc::now()).await;
    for c in &summary.checks {
        assert_eq!(c.status, HealthStatus::Unknown, "{c:?}");
        assert!(c.reason.contains("pg_monitor"), "{}", c.reason);
    }

    // With the grant, the same role sees them.
    admin
        .batch_execute("GRANT pg_monitor TO watcher")
        .await
        .expect("grant");
    let r = wait_for(
        checks[1].as_ref(),
        HealthStatus::Unhealthy,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        r.reason.contains(&format!("pid {sleeper_pid}")),
        "{}",
        r.reason
    );
    let r = wait_for(
        checks[4].as_ref(),
        HealthStatus::Degraded,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.value, 1.0, "{r:?}");
    assert!(
        r.reason.contains(&format!("pid {reader_pid}")),
        "{}",
        r.reason
    );
    assert!(
        r.reason.contains(&format!("blocked by pid {holder_pid}")),
        "{}",
        r.reason
    );
    let r = wait_for(
        checks[2].as_ref(),
        HealthStatus::Unhealthy,
        Duration::from_secs(5),
    )
    .await;
    // The sleeper's transaction began first.
    assert!(
        r.reason.contains(&format!("pid {sleeper_pid}")),
        "{}",
        r.reason
    );
    // admin, sleeper, holder, reader and the probe: 5 of 47 (the session that created
    // the role may take a moment to leave).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = measure(checks[0].as_ref()).await;
        if r.reason.contains("5 of 47 connections") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.reason);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    drop(holder);
    end_sessions_named(&admin, LOAD).await;
    sleeping.await.expect("sleeper task");
    reading.await.expect("reader task");
}

/// A standby of `primary`, started by hand from a base backup (`pg_basebackup -R`),
/// as the same user as the primary; killed (its whole process group) on drop.
struct Standby {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Standby {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Standby {
    fn start(primary: &EphemeralPostgres) -> Standby {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        // PostgreSQL refuses to run as root; the ephemeral server runs as nobody then.
        let owner = nix::unistd::Uid::effective().is_root().then(|| {
            let u = nix::unistd::User::from_name("nobody")
                .expect("user lookup")
                .expect("a user 'nobody'");
            (u.uid, u.gid)
        });
        let as_owner = |cmd: &mut Command| {
            if let Some((uid, gid)) = owner {
                cmd.uid(uid.as_raw()).gid(gid.as_raw());
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("dbops-pg-standby-")
            .tempdir()
            .expect("temp dir");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).expect("socket dir");
        for path in [dir.path(), sock.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            if let Some((uid, gid)) = owner {
                nix::unistd::chown(path, Some(uid), Some(gid)).expect("chown");
            }
        }
        let data = dir.path().join("data");
        let mut backup = Command::new(primary.bin_dir().join("pg_basebackup"));
        backup
            .arg("-h")
            .arg(primary.socket_dir())
            .args(["-p", &primary.port().to_string(), "-U", "postgres", "-D"])
            .arg(&data)
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .current_dir(dir.path())
            .stdin(Stdio::null());
        as_owner(&mut backup);
        let out = backup.output().expect("pg_basebackup runs");
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(dir.path().join("standby.log")).expect("log");
        let mut cmd = Command::new(primary.bin_dir().join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&sock)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "unix_socket_permissions=0700",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0);
        as_owner(&mut cmd);
        let child = cmd.spawn().expect("standby starts");
        Standby { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("standby.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_cut_off_from_its_primary_is_unhealthy() {
    let started = Instant::now();
    let server = EphemeralPostgres::start().await.expect("server starts");
    let standby = Standby::start(&server);
    let budget = ProbeBudget::default();
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
        password_of(&server),
        standby.port
    );
    let on_standby = ReplicationLag::with_thresholds(
        &PostgresEngine::new(&url).expect("URL"),
        &Thresholds::default(),
        budget,
    );
    let primary = server.engine_for("postgres").expect("engine");
    let on_primary = ReplicationLag::with_thresholds(&primary, &Thresholds::default(), budget);

    // Up and streaming: healthy on both sides.
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        match on_standby.check().await {
            Ok(r) if r.status == HealthStatus::Healthy => break r,
            other => assert!(
                Instant::now() < deadline,
                "standby not streaming: {other:?}\n{}",
                standby.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("standby up: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(r.value, 0.0, "{r:?}");
    assert!(r.reason.contains("streaming"), "{}", r.reason);
    assert!(
        r.reason.contains("last message from the primary"),
        "{}",
        r.reason
    );
    let r = wait_for(&on_primary, HealthStatus::Healthy, Duration::from_secs(5)).await;
    assert!(r.reason.contains("primary with 1 standby"), "{}", r.reason);
    assert!(r.reason.contains("of WAL not replayed"), "{}", r.reason);
    // Slots on a standby are the primary's business.
    let slots = ReplicationSlots::with_thresholds(
        &PostgresEngine::new(&url).expect("URL"),
        &Thresholds::default(),
        budget,
    );
    assert_eq!(measure(&slots).await.value, 0.0);

    // The primary dies: the standby has replayed all it received, and receives
    // nothing — never "0 s, OK".
    server.kill().expect("kill");
    let r = wait_for(
        &on_standby,
        HealthStatus::Unhealthy,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.value, -1.0, "{r:?}");
    assert!(
        r.reason.contains("the WAL receiver is not streaming"),
        "{}",
        r.reason
    );
    assert!(!r.reason.contains(&password_of(&server)), "{}", r.reason);
    println!("whole test: {:.2} s", started.elapsed().as_secs_f64());
}
