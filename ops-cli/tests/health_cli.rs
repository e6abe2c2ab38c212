//! `dbops health`, metrics and the daemon's endpoints against real parts: a throwaway
//! PostgreSQL, a real redis-server, a repository on disk, `promtool` checking what
//! dbops exposes, and a real Prometheus server scraping the daemon and evaluating the
//! runbooks' four queries.

mod common;
#[path = "../../ops-agent/tests/metrics_contract/mod.rs"]
mod metrics_contract;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Ctx, Receiver, free_port, run, shop, write_config};
use ops_postgres::ephemeral::EphemeralPostgres;

/// A TCP listener that accepts and never answers: a hung service.
fn silent_listener() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
            if held.len() > 50 {
                break;
            }
        }
    });
    (port, h)
}

/// A real redis-server on a free loopback port, without persistence.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): install Debian's redis-server (scripts/test does)"));
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET on loopback: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): install Debian's prometheus package (it ships promtool; scripts/test does)"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let o = child.wait_with_output().expect("promtool");
    assert!(
        o.status.success(),
        "promtool check metrics refused:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The number in a sample line `name{labels} value`.
fn sample(text: &str, name: &str, labels_contain: &str) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(labels_contain)
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_has_the_shape_and_exit_codes_and_a_hung_service_answers_within_its_budget() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let (hung, _h) = silent_listener();
    let base = format!(
        r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[databases.shop]
url = "{db}"
[services.cache]
kind = "redis"
url = "redis://127.0.0.1:{hung}/0"
[jobs.nightly]
kind = "backup"
database = "shop"
[jobs.proof]
kind = "verify"
restore = true
[health]
connect_timeout = "1s"
statement_timeout = "1s"
"#,
        state = ctx.dir.path().join("state").display(),
        repo = ctx.repo,
        db = pg.url_for("shop"),
    );
    let config = write_config(&ctx, "dbops.toml", &base);
    run(&ctx, &config, &["run", "nightly"], &[]).ok();

    // The database alone: ok, exit 0, and the /health shape.
    let r = run(&ctx, &config, &["--json", "health", "shop"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let h = r.json();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["services"]["shop"], "healthy");
    assert!(
        chrono::DateTime::parse_from_rfc3339(h["timestamp"].as_str().expect("timestamp")).is_ok()
    );
    let checks = h["checks"].as_array().expect("checks");
    assert!(checks.len() >= 9, "{h}");
    for c in checks {
        for key in [
            "name", "service", "status", "value", "unit", "warn", "critical", "reason", "duration",
        ] {
            assert!(c.get(key).is_some(), "check without {key}: {c}");
        }
    }

    // Everything, with the cache hung: reported within its budget (1 s connect + 1 s
    // statement + 1 s) + 1 s, while every other check answers at once.
    let started = Instant::now();
    let r = run(&ctx, &config, &["--json", "health"], &[]);
    let took = started.elapsed();
    let h = r.json();
    assert!(took < Duration::from_secs(4), "took {took:?}: {h}");
    assert!(
        matches!(
            h["services"]["cache"].as_str(),
            Some("unhealthy" | "unknown")
        ),
        "{h}"
    );
    assert_eq!(h["services"]["shop"], "healthy", "{h}");
    for c in h["checks"].as_array().expect("checks") {
        if c["service"] == "shop" {
            assert!(c["duration"].as_f64().expect("duration") < 1.0, "{c}");
        }
    }
    let worst = if h["status"] == "unhealthy" { 2 } else { 3 };
    assert_eq!(r.code, worst, "exit code matches the status: {h}");

    // Degraded: exit 1.
    let degraded = write_config(
        &ctx,
        "degraded.toml",
        &format!("{base}[health.thresholds]\ndatabase_login = {{ warn = 0, critical = 100 }}\n"),
    );
    let r = run(&ctx, &degraded, &["--json", "health", "shop"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(r.json()["status"], "degraded");

    // A restore proof: none yet is degraded, naming the remedy; the verify job with
    // `restore = true` restores the newest backup into a throwaway server, the history
    // records the run as verified by restore, and the check is healthy.
    let r = run(
        &ctx,
        &config,
        &["--json", "health", "restore_proof_age"],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    let c = &r.json()["checks"][0];
    assert_eq!(c["status"], "degraded", "{c}");
    assert!(
        c["reason"].as_str().is_some_and(
            |s| s.contains("was ever proven by a restore") && s.contains("restore = true")
        ),
        "{c}"
    );
    run(&ctx, &config, &["run", "proof"], &[]).ok();
    let h = run(&ctx, &config, &["--json", "history", "proof"], &[])
        .ok()
        .json();
    let proof = &h["runs"][0];
    assert_eq!(proof["status"], "success", "{h}");
    assert_eq!(proof["verified"], "restore", "{h}");
    let newest = ctx.run(&["--json", "list"]).ok().json()["backups"]
        .as_array()
        .and_then(|b| {
            b.iter()
                .max_by_key(|m| m["finished"].as_str().map(str::to_owned))
        })
        .and_then(|m| m["id"].as_str().map(str::to_owned))
        .expect("a backup");
    assert_eq!(proof["backup_id"], newest.as_str(), "{h}");
    let r = run(
        &ctx,
        &config,
        &["--json", "health", "restore_proof_age"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let c = &r.json()["checks"][0];
    assert_eq!(c["status"], "healthy", "{c}");
    assert!(
        c["reason"]
            .as_str()
            .is_some_and(|s| s.contains(&newest) && s.contains("job proof")),
        "{c}"
    );

    // A table emptied between two backups: critical, naming the table.
    pg.execute("shop", "TRUNCATE orders")
        .await
        .expect("truncate");
    run(&ctx, &config, &["run", "nightly"], &[]).ok();
    let r = run(&ctx, &config, &["--json", "health", "backup_tables"], &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    let c = &r.json()["checks"][0];
    assert!(
        c["reason"]
            .as_str()
            .is_some_and(|s| s.contains("orders") && s.contains("2000 to 0")),
        "{c}"
    );

    // An old backup: past the limits (seconds here, hours by default).
    let old = write_config(
        &ctx,
        "old.toml",
        &format!(
            "{base}[health.thresholds]\nbackup_age = {{ warn = \"1s\", critical = \"2s\" }}\n\
             restore_proof_age = {{ warn = \"1s\", critical = \"2s\" }}\n"
        ),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let r = run(&ctx, &old, &["--json", "health", "backup_age"], &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(r.json()["checks"][0]["status"], "unhealthy");
    // So is the restore proof taken above, now older than its limits.
    let r = run(&ctx, &old, &["--json", "health", "restore_proof_age"], &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(r.json()["checks"][0]["status"], "unhealthy");
    // A one-shot `dbops verify --restore` is a proof too: recorded in the history
    // under the repository's name, it is now the newest.
    run(&ctx, &config, &["verify", "--restore"], &[]).ok();
    let r = run(
        &ctx,
        &config,
        &["--json", "health", "restore_proof_age"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let c = &r.json()["checks"][0];
    assert!(
        c["reason"]
            .as_str()
            .is_some_and(|s| s.contains("job @verify:")),
        "{c}"
    );

    // Local disk past its limits (the machine's own disk is whatever it is: limits
    // around every possible value). Free space is worse lower: warn above 100 % is
    // always reached; a critical limit above it too is always critical.
    // `disk_room` (free bytes over 3× the largest backup, a ratio in the millions
    // here) likewise.
    for (limits, code, status) in [
        ("{ warn = 100.5, critical = 0.001 }", 1, "degraded"),
        ("{ warn = 100.5, critical = 100.1 }", 2, "unhealthy"),
    ] {
        let disk = write_config(
            &ctx,
            "disk.toml",
            &format!("{base}[health.thresholds]\ndisk_free = {limits}\n"),
        );
        let r = run(&ctx, &disk, &["--json", "health", "disk_free"], &[]);
        assert_eq!(r.code, code, "{}", r.all());
        let c = &r.json()["checks"][0];
        assert_eq!(c["status"], status, "{c}");
        assert_eq!(c["service"], "repository:main", "{c}");
    }
    for (limits, code, status) in [
        ("{ warn = 1e15, critical = 0.001 }", 1, "degraded"),
        ("{ warn = 1e15, critical = 1e14 }", 2, "unhealthy"),
    ] {
        let disk = write_config(
            &ctx,
            "disk.toml",
            &format!("{base}[health.thresholds]\ndisk_room = {limits}\n"),
        );
        let r = run(&ctx, &disk, &["--json", "health", "disk_room"], &[]);
        assert_eq!(r.code, code, "{}", r.all());
        let c = &r.json()["checks"][0];
        assert_eq!(c["status"], status, "{c}");
        assert!(
            c["reason"]
                .as_str()
                .is_some_and(|s| s.contains("the largest database")),
            "a backup size is recorded to compare with: {c}"
        );
    }

    // A repository made unwritable: critical.
    let moved = ctx.dir.path().join("repo-moved");
    std::fs::rename(&ctx.repo, &moved).expect("move");
    std::fs::write(&ctx.repo, "not a directory").expect("file");
    let r = run(
        &ctx,
        &config,
        &["--json", "health", "repository_writable"],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.json()["checks"][0]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("could not"))
    );
    std::fs::remove_file(&ctx.repo).expect("rm");
    std::fs::rename(&moved, &ctx.repo).expect("move back");

    // Could not check: unknown, exit 3 (a stopped server: `connections` cannot run;
    // the login check itself reports the outage as critical).
    pg.kill().expect("kill");
    let r = run(&ctx, &config, &["--json", "health", "connections"], &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(r.json()["checks"][0]["status"], "unknown");
    let r = run(&ctx, &config, &["--json", "health", "database_login"], &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    // An unknown name is a clear error (exit 3, as a monitoring plugin reports it).
    let r = run(&ctx, &config, &["health", "no_such_check"], &[]);
    assert_eq!(r.code, 3);
    assert!(
        r.stderr
            .contains("no health check or service 'no_such_check'"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_probes_against_local_servers_answer_in_under_a_second() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let redis = Redis::start();
    let ctx = Ctx::new();
    ctx.init();
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[databases.shop]
url = "{db}"
[services.cache]
kind = "redis"
url = "redis://127.0.0.1:{port}/0"
# The machine's own disk is whatever it is: this test is about time, not space.
[health.thresholds]
disk_free = {{ warn = 0.02, critical = 0.01 }}
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            db = pg.url_for("shop"),
            port = redis.port,
        ),
    );
    let mut times = Vec::new();
    let mut probes = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let r = run(&ctx, &config, &["--json", "health"], &[]);
        times.push(started.elapsed().as_secs_f64());
        // A login or PING slower than its warning limit is the machine (a loaded CI
        // runner), not the probe: degraded (exit 1) is the right answer then, as in
        // ops-postgres/tests/health.rs. Anything else is a failure.
        let h = r.json();
        let checks = h["checks"].as_array().cloned().unwrap_or_default();
        for c in &checks {
            let slow = matches!(c["name"].as_str(), Some("database_login" | "redis_ping"))
                && c["status"] == "degraded";
            assert!(c["status"] == "healthy" || slow, "{c}");
        }
        assert!(matches!(r.code, 0 | 1), "{}", r.all());
        probes = checks.len();
    }
    times.sort_by(f64::total_cmp);
    let p95 = times[(times.len() * 95).div_ceil(100) - 1];
    let p50 = times[times.len() / 2];
    eprintln!("health of {probes} probes (whole dbops process): p50 {p50:.3} s, p95 {p95:.3} s");
    assert!(probes >= 10, "{probes} probes");
    assert!(p95 < 1.0, "p95 {p95:.3} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_one_shot_runs_and_the_textfile_passes_promtool() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let textfile = ctx.dir.path().join("textfile").join("dbops.prom");
    std::fs::create_dir_all(textfile.parent().expect("dir")).expect("mkdir");
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
metrics_textfile = "{textfile}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[databases.shop]
url = "${{SHOP_URL}}"
[jobs.nightly]
kind = "backup"
database = "shop"
"#,
            state = ctx.dir.path().join("state").display(),
            textfile = textfile.display(),
            repo = ctx.repo,
        ),
    );
    let good = pg.url_for("shop");
    let bad = format!("postgres://backup@127.0.0.1:{}/shop", free_port());
    for url in [&good, &bad, &good] {
        run(&ctx, &config, &["run", "nightly"], &[("SHOP_URL", url)]);
    }
    let text = std::fs::read_to_string(&textfile).expect("the textfile was written");
    let labels = r#"job="nightly",engine="postgresql",database="shop",repository="main""#;
    assert_eq!(
        sample(&text, "backup_attempts_total", labels),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "backup_success_total", labels),
        Some(2.0),
        "{text}"
    );
    assert!(sample(&text, "backup_last_success_timestamp", labels).is_some_and(|t| t > 1.7e9));
    assert!(sample(&text, "backup_duration_seconds", labels).is_some_and(|d| d > 0.0));
    assert!(sample(&text, "backup_size_bytes", labels).is_some_and(|b| b > 10_000.0));
    assert_eq!(
        sample(&text, "dbops_backup_rows", labels),
        Some(2000.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "dbops_job_runs_total", r#"status="failure""#),
        Some(1.0)
    );
    assert!(!text.contains(" NaN"), "{text}");
    promtool_check_metrics(&text);
    // A one-shot `dbops health` adds the checks' series to the textfile.
    run(&ctx, &config, &["health", "shop"], &[("SHOP_URL", &good)]);
    let text = std::fs::read_to_string(&textfile).expect("textfile");
    assert_eq!(
        sample(&text, "dbops_health_status", r#"check="database_login""#),
        Some(0.0),
        "{text}"
    );
    promtool_check_metrics(&text);
    // `dbops metrics` prints the same families.
    let printed = run(&ctx, &config, &["metrics"], &[("SHOP_URL", &good)])
        .ok()
        .stdout;
    promtool_check_metrics(&printed);
    assert_eq!(sample(&printed, "backup_attempts_total", labels), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_metrics_and_health_and_prometheus_evaluates_the_four_queries() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let port = free_port();
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[databases.shop]
url = "{db}"
[jobs.nightly]
kind = "backup"
database = "shop"
every = "2s"
# Run once by hand below: a restore proof into a scratch database.
[jobs.proof]
kind = "verify"
restore_into = "{scratch}"
# Configured, never used: its failure counter is exposed from 0.
[notifications.ops]
kind = "webhook"
url = "http://127.0.0.1:{closed}/hook"
[health]
interval = "2s"
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            db = pg.url_for("shop"),
            scratch = pg.url_for("proof_scratch"),
            closed = free_port(),
        ),
    );
    let mut daemon = ctx
        .command(&["daemon", "--listen", &format!("127.0.0.1:{port}")])
        .env("DBOPS_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let started = Instant::now();
    let health = loop {
        if let Some((code, body)) = get(port, "/health")
            && body.contains("\"checks\"")
        {
            break (code, body);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no /health");
        std::thread::sleep(Duration::from_millis(200));
    };
    let h: serde_json::Value = serde_json::from_str(&health.1).expect("JSON");
    assert!(matches!(
        h["status"].as_str(),
        Some("ok" | "degraded" | "unhealthy")
    ));
    assert_eq!(
        health.0,
        if h["status"] == "unhealthy" { 503 } else { 200 },
        "{h}"
    );
    assert_eq!(h["services"]["shop"], "healthy", "{h}");

    // Prometheus scrapes the daemon every second.
    let prom_port = free_port();
    let prom_dir = tempfile::tempdir().expect("tempdir");
    let prom_config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dbops\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("prometheus.yml");
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!("--storage.tsdb.path={}", prom_dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start prometheus ({e}): install Debian's prometheus package (scripts/test does)"));
    let queries = [
        "rate(backup_success_total[24h]) / rate(backup_attempts_total[24h])",
        "time() - backup_last_success_timestamp",
        "backup_duration_seconds",
        "backup_size_bytes",
    ];
    let url = format!("http://127.0.0.1:{prom_port}");
    let mut answers = Vec::new();
    for q in queries {
        let started = Instant::now();
        loop {
            let o = Command::new("promtool")
                .args(["query", "instant", &url, q])
                .output()
                .expect("promtool query");
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            // `{labels} => 1 @[time]`
            let value = out
                .lines()
                .find_map(|l| {
                    l.split("=> ")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<f64>()
                        .ok()
                })
                .filter(|v| v.is_finite());
            if let Some(v) = value {
                answers.push((q, v));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{q} gave no number: {out}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("{answers:#?}");
    assert!(
        answers[0].1 > 0.0 && answers[0].1 <= 1.0,
        "success ratio {answers:?}"
    );
    assert!(answers[1].1 >= 0.0, "age {answers:?}");
    assert!(answers[3].1 > 10_000.0, "size {answers:?}");

    // What Prometheus scraped, promtool accepts.
    let (code, metrics) = get(port, "/metrics").expect("/metrics");
    assert_eq!(code, 200);
    promtool_check_metrics(&metrics);
    assert!(metrics.contains("dbops_health_status{"), "{metrics}");
    assert!(
        sample(&metrics, "dbops_repository_backups", "repository=\"main\"")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "dbops_repository_stored_bytes",
            "repository=\"main\""
        )
        .is_some_and(|n| n > 0.0),
        "{metrics}"
    );

    let _ = prometheus.kill();
    let _ = prometheus.wait();

    // The metric-name contract: every name the dashboards and alert rules may ask for
    // (ops-agent/tests/metrics_contract) and every name the shipped alert rules use is
    // in the real /metrics. A verify job's series need a verify run: one by hand.
    run(&ctx, &config, &["run", "proof"], &[]).ok();
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus/dbops-alerts.yml"),
    )
    .expect("alert rules");
    let wanted: std::collections::BTreeSet<String> = metrics_contract::METRICS
        .iter()
        .map(|n| (*n).to_owned())
        .chain(metrics_contract::alert_rule_metrics(&rules))
        .collect();
    let mut missing = Vec::new();
    let complete = common::poll(Duration::from_secs(30), || {
        let exposed = get(port, "/metrics")
            .map(|(_, text)| metrics_contract::exposed_names(&text))
            .unwrap_or_default();
        missing = wanted.difference(&exposed).cloned().collect();
        missing.is_empty()
    });
    assert!(complete, "/metrics lacks {missing:?}");

    // A database that goes down: /health says unhealthy with HTTP 503 (a load
    // balancer's signal), within the health interval.
    pg.kill().expect("kill postgres");
    let mut last = None;
    let down = common::poll(Duration::from_secs(30), || {
        last = get(port, "/health");
        last.as_ref().is_some_and(|(code, _)| *code == 503)
    });
    assert!(down, "no 503 from /health: {last:?}");
    let h: serde_json::Value = serde_json::from_str(&last.expect("answer").1).expect("JSON");
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert_eq!(h["services"]["shop"], "unhealthy", "{h}");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = daemon.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_health_job_notifies_no_backup_even_when_the_backup_job_never_ran() {
    let ctx = Ctx::new();
    ctx.init();
    let hook = Receiver::start();
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[databases.erp]
url = "postgres://backup@127.0.0.1:1/erp"
[notifications.ops]
kind = "webhook"
url = "http://127.0.0.1:{port}/hook"
[jobs.erp-backup]
kind = "backup"
database = "erp"
schedule = "0 */6 * * *"
[jobs.watch]
kind = "health"
checks = ["backup_age"]
every = "1h"
notify = ["ops"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            port = hook.port,
        ),
    );
    let r = run(&ctx, &config, &["--json", "run", "watch"], &[]);
    assert_ne!(r.code, 0, "{}", r.all());
    let rec = &r.json()["runs"][0];
    assert_eq!(rec["status"], "failure");
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("backup_age") && e.contains("there is no backup")),
        "{rec}"
    );
    // Again: still failing, no second message.
    run(&ctx, &config, &["run", "watch"], &[]);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let body: serde_json::Value = serde_json::from_str(&bodies[0].1).expect("json");
    assert_eq!(body["event"], "failure");
    assert_eq!(body["job"], "watch");
    assert_eq!(body["kind"], "health");
}
