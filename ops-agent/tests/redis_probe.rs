//! The Redis probe against real, throwaway `redis-server`s started here on free loopback
//! ports (never the system one on :6379): healthy; `requirepass` with no, the right
//! and a wrong password; a stopped server; a blackholed address; memory filled past
//! the limits; TLS with a certificate nobody trusts. Each check runs the shared
//! conformance suite, and no password shows in a reason, an error or `Debug`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ops_agent::probes::redis::{self as probe, MEMORY, PING};
use ops_core::testkit::health::{conformance, unreachable_is_an_error};
use ops_core::{
    ErrorKind, HealthCheck, HealthReport, HealthStatus, Limits, Probe, ProbeBudget, Thresholds,
    run_suite,
};

const PASSWORD: &str = "hunter2-redis-secret";
const WRONG: &str = "not-the-redis-password";

/// A `redis-server` of our own in a temporary directory; killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts `redis-server` on a free port with `extra` arguments; `tls` makes the
    /// port a TLS port (and turns the plain one off).
    fn start_with(extra: &[&str], tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let port_s = port.to_string();
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        match tls {
            None => {
                cmd.args(["--port", &port_s]);
            }
            Some((cert, key)) => {
                cmd.args(["--port", "0", "--tls-port", &port_s])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(cert)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: install Debian's redis-server (scripts/test does)"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        let mut server = Self {
            child: Some(child),
            port,
            _dir: dir,
        };
        server.wait_listening(&log);
        server
    }

    fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, None)
    }

    fn wait_listening(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!(
                    "redis-server on port {} did not come up ({exited:?}); its log:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, password: Option<&str>) -> String {
        match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn budget(connect: Duration, statement: Duration) -> ProbeBudget {
    let mut b = ProbeBudget::default();
    b.connect = connect;
    b.statement = statement;
    b
}

/// The probe's two checks, by name.
fn checks(
    url: &str,
    thresholds: &Thresholds,
    b: ProbeBudget,
) -> (Arc<dyn HealthCheck>, Arc<dyn HealthCheck>) {
    let all = probe::probes(url, thresholds, b).unwrap();
    assert_eq!(all.len(), 2);
    let by = |n: &str| all.iter().find(|c| c.name() == n).unwrap().clone();
    (by(PING), by(MEMORY))
}

fn default_checks(url: &str) -> (Arc<dyn HealthCheck>, Arc<dyn HealthCheck>) {
    checks(url, &Thresholds::default(), ProbeBudget::default())
}

fn assert_no_secret(what: &str, text: &str) {
    for s in [PASSWORD, WRONG] {
        assert!(!text.contains(s), "{what} shows a password: {text}");
    }
}

#[tokio::test]
async fn a_healthy_server_answers_pong_and_has_no_maxmemory() {
    let server = RedisServer::start(&[]);
    let (ping, memory) = default_checks(&server.url(None));
    conformance(ping.as_ref()).await;
    conformance(memory.as_ref()).await;

    let r = ping.check().await.unwrap();
    assert_eq!(r.status, HealthStatus::Healthy, "{}", r.reason);
    assert_eq!(r.unit, "seconds");
    assert!(r.value >= 0.0 && r.value < 0.1, "{}", r.value);
    assert_eq!((r.warn, r.critical), (Some(0.1), Some(1.0)));
    assert!(r.reason.contains("PONG"), "{}", r.reason);

    let m = memory.check().await.unwrap();
    assert_eq!(m.status, HealthStatus::Healthy, "{}", m.reason);
    assert_eq!(m.value, 0.0);
    assert_eq!(m.unit, "percent");
    assert!(m.reason.contains("no maxmemory set"), "{}", m.reason);
    assert_eq!((m.warn, m.critical), (Some(80.0), Some(90.0)));

    let s = run_suite(
        &[Probe::new("cache", ping), Probe::new("cache", memory)],
        Utc::now(),
    )
    .await;
    assert_eq!(s.status, "ok", "{s:?}");
    assert_eq!(s.services["cache"], HealthStatus::Healthy);
}

#[tokio::test]
async fn requirepass_without_the_password_is_unhealthy_and_says_authentication() {
    let server = RedisServer::start(&["--requirepass", PASSWORD]);

    // No password: Redis accepts the connection and answers NOAUTH to everything —
    // what `redis-cli ping` reports with exit code 0.
    let (ping, memory) = default_checks(&server.url(None));
    let r = ping.check().await.unwrap();
    assert_eq!(r.status, HealthStatus::Unhealthy, "{}", r.reason);
    assert!(r.reason.contains("authentication"), "{}", r.reason);
    assert!(r.reason.contains("NOAUTH"), "{}", r.reason);
    let e = memory.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
    let s = run_suite(
        &[Probe::new("cache", ping), Probe::new("cache", memory)],
        Utc::now(),
    )
    .await;
    assert_eq!(s.status, "unhealthy", "{s:?}");
    assert_eq!(s.exit_code(), 2);

    // The right password: healthy.
    let (ping, memory) = default_checks(&server.url(Some(PASSWORD)));
    conformance(ping.as_ref()).await;
    conformance(memory.as_ref()).await;
    let r = ping.check().await.unwrap();
    assert_eq!(r.status, HealthStatus::Healthy, "{}", r.reason);
    assert_no_secret("a healthy reason", &r.reason);
    assert_no_secret("Debug", &format!("{ping:?} {memory:?}"));

    // A wrong one: unhealthy, naming authentication, and neither password anywhere.
    let (ping, memory) = default_checks(&server.url(Some(WRONG)));
    let r = ping.check().await.unwrap();
    assert_eq!(r.status, HealthStatus::Unhealthy, "{}", r.reason);
    assert!(r.reason.contains("authentication"), "{}", r.reason);
    assert!(r.reason.contains("******"), "{}", r.reason);
    assert_no_secret("the reason", &r.reason);
    assert_no_secret("the report's Debug", &format!("{r:?}"));
    assert_no_secret("the checks' Debug", &format!("{ping:?} {memory:?}"));
    let e = memory.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
    assert_no_secret("the error", &format!("{e} {e:?}"));
}

#[tokio::test]
async fn a_stopped_server_is_unhealthy_not_reachable() {
    let mut server = RedisServer::start(&["--requirepass", PASSWORD]);
    let url = server.url(Some(PASSWORD));
    let (ping, memory) = default_checks(&url);
    assert_eq!(ping.check().await.unwrap().status, HealthStatus::Healthy);
    server.stop();

    let r = ping.check().await.unwrap();
    assert_eq!(r.status, HealthStatus::Unhealthy, "{}", r.reason);
    assert!(r.reason.contains("not reachable"), "{}", r.reason);
    assert_no_secret("the reason", &r.reason);
    // Memory cannot be measured on a server that is not there: could not check.
    unreachable_is_an_error(memory.as_ref()).await;
    let e = memory.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert_no_secret("the error", &format!("{e} {e:?}"));
}

/// A port that accepts connections and never says a word: a hung server, or a
/// firewall that lets the handshake through and drops the rest.
fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// Both checks of `url` give their verdict within the budget: the ping unhealthy and
/// "not reachable", memory could not check; in a suite the same, with no probe cut
/// off by the suite's own timeout.
async fn answers_within_budget(url: &str) {
    let b = budget(Duration::from_secs(1), Duration::from_secs(1));
    let (ping, memory) = checks(url, &Thresholds::default(), b);

    let started = Instant::now();
    let r = ping.check().await.unwrap();
    let took = started.elapsed();
    assert!(took < b.total(), "{url}: answered after {took:?}");
    assert_eq!(r.status, HealthStatus::Unhealthy, "{}", r.reason);
    assert!(r.reason.contains("not reachable"), "{}", r.reason);
    assert_no_secret("the reason", &r.reason);

    let probes = [
        Probe::new("cache", ping).with_budget(b.total()),
        Probe::new("cache", memory).with_budget(b.total()),
    ];
    let started = Instant::now();
    let s = run_suite(&probes, Utc::now()).await;
    let took = started.elapsed();
    assert!(took < b.total(), "{url}: the suite took {took:?}");
    assert_eq!(s.checks[0].status, HealthStatus::Unhealthy, "{s:?}");
    assert_eq!(s.checks[1].status, HealthStatus::Unknown, "{s:?}");
    // The check's own verdict, not the suite's "no answer within" cut-off.
    assert!(s.checks[1].reason.contains("not reachable"), "{s:?}");
    assert_no_secret("the suite", &format!("{s:?}"));
}

#[tokio::test]
async fn a_blackholed_address_answers_within_its_budget() {
    // Where the network drops packets to this address, connecting times out; behind a
    // proxy that answers every outbound connection (HTTP 400), what answers is not
    // Redis. Either way: unhealthy, not reachable, in time.
    answers_within_budget(&format!("redis://:{PASSWORD}@10.255.255.1:6379/0")).await;
}

#[tokio::test]
async fn a_server_that_never_answers_is_unhealthy_within_its_budget() {
    let port = silent_listener();
    answers_within_budget(&format!("redis://:{PASSWORD}@127.0.0.1:{port}/0")).await;
    answers_within_budget(&format!("redis://127.0.0.1:{port}/0")).await;
}

/// Fills `url`'s Redis with `n` keys of 256 bytes each, from key number `from`; false
/// once Redis refuses writes (used memory reached maxmemory).
async fn fill(con: &mut redis::aio::MultiplexedConnection, from: usize, n: usize) -> bool {
    let mut pipe = redis::pipe();
    for i in from..from + n {
        pipe.set(format!("fill:{i:08}"), "x".repeat(256)).ignore();
    }
    pipe.query_async::<()>(con).await.is_ok()
}

async fn memory_of(check: &Arc<dyn HealthCheck>) -> HealthReport {
    check.check().await.unwrap()
}

#[tokio::test]
async fn memory_filled_past_the_limits_degrades_then_is_unhealthy() {
    let server = RedisServer::start(&["--maxmemory", "1mb", "--requirepass", PASSWORD]);
    let url = server.url(Some(PASSWORD));
    let (_, by_default) = default_checks(&url);
    conformance(by_default.as_ref()).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();

    // An empty Redis 7 already uses ~0.9 MB, so the limits are set just above what
    // this one uses empty; a newer Redis whose empty footprint leaves too little room
    // in 1 MB gets 2 MB.
    let mut empty = memory_of(&by_default).await.value;
    if empty > 90.0 {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("2mb")
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        empty = memory_of(&by_default).await.value;
    }
    assert!(empty > 0.0 && empty < 92.0, "empty Redis uses {empty} %");
    let limits = Limits::new(empty + 2.0, empty + 4.0);
    let (_, overridden) = checks(
        &url,
        &Thresholds::default().with(MEMORY, limits),
        ProbeBudget::default(),
    );
    let r = memory_of(&overridden).await;
    assert_eq!(r.status, HealthStatus::Healthy, "{}", r.reason);
    assert_eq!(
        (r.warn, r.critical),
        (Some(limits.warn), Some(limits.critical))
    );
    assert!(r.reason.contains("maxmemory"), "{}", r.reason);

    let mut seen = vec![r.status];
    let mut next = 0;
    while seen.last() != Some(&HealthStatus::Unhealthy) && next < 200_000 {
        assert!(fill(&mut con, next, 20).await, "Redis refused writes first");
        next += 20;
        let r = memory_of(&overridden).await;
        if seen.last() != Some(&r.status) {
            seen.push(r.status);
        }
    }
    assert_eq!(
        seen,
        [
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Unhealthy
        ],
        "statuses while filling"
    );
    conformance(overridden.as_ref()).await;

    // With the default limits (80 / 90 %) the same Redis is unhealthy once filled to
    // 90 % (or once it refuses writes at 100 %).
    loop {
        let r = memory_of(&by_default).await;
        if r.status == HealthStatus::Unhealthy {
            assert!(r.value >= 90.0, "{}", r.reason);
            assert!(r.reason.contains("critical"), "{}", r.reason);
            assert_no_secret("the reason", &r.reason);
            break;
        }
        assert!(next < 200_000, "never reached 90 %: {}", r.reason);
        if !fill(&mut con, next, 20).await {
            let r = memory_of(&by_default).await;
            assert_eq!(r.status, HealthStatus::Unhealthy, "{}", r.reason);
            break;
        }
        next += 20;
    }
}

/// A self-signed certificate for 127.0.0.1 made with `openssl`: (cert, key).
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the TLS test needs the openssl program ({e}): install Debian's openssl (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[tokio::test]
async fn tls_to_a_server_nobody_trusts_is_unhealthy_not_alive() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let server = RedisServer::start_with(&["--requirepass", PASSWORD], Some((&cert, &key)));
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}/0", server.port);
    let (ping, memory) = default_checks(&url);
    let r = ping.check().await.unwrap();
    assert_eq!(r.status, HealthStatus::Unhealthy, "{}", r.reason);
    assert!(r.reason.contains("TLS"), "{}", r.reason);
    assert_no_secret("the reason", &r.reason);
    let e = memory.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");

    // Plain redis:// to the TLS port is not alive either.
    let plain = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", server.port);
    let b = budget(Duration::from_secs(1), Duration::from_secs(1));
    let (ping, _) = checks(&plain, &Thresholds::default(), b);
    let r = ping.check().await.unwrap();
    assert_eq!(r.status, HealthStatus::Unhealthy, "{}", r.reason);
    assert_no_secret("the reason", &r.reason);
}

#[test]
fn a_bad_url_is_invalid_input_and_hides_the_password() {
    let e = probe::probes(
        &format!("http://:{PASSWORD}@127.0.0.1:6379/0"),
        &Thresholds::default(),
        ProbeBudget::default(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("******"), "{e}");
    assert_no_secret("the error", &format!("{e} {e:?}"));
}

#[test]
fn the_checks_stay_object_safe_and_shareable() {
    fn shareable<T: Send + Sync + 'static>(_: &T) {}
    let all = probe::probes(
        "redis://127.0.0.1:1/0",
        &Thresholds::default(),
        ProbeBudget::default(),
    )
    .unwrap();
    shareable(&all);
    let names: Vec<&str> = all.iter().map(|c| c.name()).collect();
    assert_eq!(names, [PING, MEMORY]);
}
