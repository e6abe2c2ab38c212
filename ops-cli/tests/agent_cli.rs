//! `dbops` running itself, in real time against real parts: the daemon on a 2-second
//! schedule against a throwaway PostgreSQL, hooks, `dbops run` in separate processes
//! writing one history, notifications to a webhook receiver written here and to an
//! SMTP server (Python's aiosmtpd), and config errors. Timing logic itself is tested
//! on a simulated clock in ops-core (tests/schedule_sim.rs).

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Ctx, Receiver, dbops, poll, run, shop, sigterm, wait_exit, wait_for, write_config};
use ops_postgres::ephemeral::EphemeralPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_runs_backups_every_2s_skips_overlaps_and_stops_on_sigterm() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let db_url = pg.url_for("shop");
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
shutdown_grace = "30s"

[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"

[databases.shop]
url = "{db_url}"

[jobs.shop-backup]
kind = "backup"
database = "shop"
every = "2s"

[jobs.slow]
kind = "backup"
database = "shop"
every = "2s"
tags = ["slow"]
before = ["sleep 5"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
        ),
    );
    let log = ctx.dir.path().join("daemon.log");
    let mut child = dbops(&ctx, &config, &["daemon"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start daemon");
    // Let it run until the quick job has made at least three backups.
    let state = ctx.dir.path().join("state");
    let made = poll(Duration::from_secs(120), || {
        run(&ctx, &config, &["--json", "history", "shop-backup"], &[]).json()["runs"]
            .as_array()
            .is_some_and(|r| r.iter().filter(|x| x["status"] == "success").count() >= 3)
    });
    assert!(
        made,
        "the daemon did not make three backups; it said:\n{}\nthe history holds:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        run(&ctx, &config, &["--json", "history", "--last", "50"], &[]).all()
    );
    // Long enough for the slow job's 5 s hook to have covered slots.
    std::thread::sleep(Duration::from_secs(4));
    sigterm(&child);
    let code = wait_exit(&mut child, Duration::from_secs(60));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "the daemon stops cleanly on SIGTERM:\n{log_text}");
    assert!(log_text.contains("dbops daemon stopped"), "{log_text}");
    assert!(state.join("history.sqlite").is_file());

    // `list` shows the backups it made, and none is half-written.
    let list = run(&ctx, &config, &["--json", "list"], &[]).ok().json();
    let backups = list["backups"].as_array().expect("backups");
    assert!(backups.len() >= 3, "{list}");
    let history = run(&ctx, &config, &["--json", "history", "--last", "1000"], &[])
        .ok()
        .json();
    let runs = history["runs"].as_array().expect("runs");
    let made: Vec<&str> = runs
        .iter()
        .filter_map(|r| r["backup_id"].as_str())
        .collect();
    for b in backups {
        let id = b["id"].as_str().expect("id");
        assert!(made.contains(&id), "backup {id} is in the history");
    }
    ctx.run(&["verify", "latest"]).ok();

    // The slow job: its hook outlasts its interval, so slots are skipped and
    // recorded, never stacked: its runs do not overlap each other.
    let slow: Vec<&serde_json::Value> = runs.iter().filter(|r| r["job"] == "slow").collect();
    let skipped = slow
        .iter()
        .filter(|r| r["status"] == "skipped")
        .collect::<Vec<_>>();
    assert!(!skipped.is_empty(), "{slow:#?}");
    assert!(
        skipped.iter().all(|r| r["error"]
            .as_str()
            .is_some_and(|e| e.contains("still running"))),
        "{skipped:#?}"
    );
    let mut spans: Vec<(String, String)> = slow
        .iter()
        .filter(|r| r["status"] != "skipped")
        .map(|r| {
            (
                r["started"].as_str().expect("started").to_owned(),
                r["ended"].as_str().unwrap_or("9999").to_owned(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs of one job overlapped: {w:?}");
    }
    // The database URL's password is a secret: not in the log or the history.
    let password = url::Url::parse(&db_url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .expect("the throwaway server's URL carries a password");
    assert!(!log_text.contains(&password));
    assert!(!history.to_string().contains(&password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_hook_runs_when_the_database_stops_mid_run() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let marks = ctx.dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks");
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
before = ["env > {m}/env; echo on > {m}/maintenance; touch {m}/started; while [ ! -f {m}/go ]; do sleep 0.1; done"]
after = ["echo \"$DBOPS_STATUS $DBOPS_JOB $DBOPS_KIND\" > {m}/after; rm -f {m}/maintenance"]
on_failure = ["echo \"$DBOPS_ERROR\" > {m}/failure"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            db = pg.url_for("shop"),
            m = marks.display(),
        ),
    );
    let mut child = dbops(&ctx, &config, &["run", "nightly"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dbops run");
    wait_for("the before hook", Duration::from_secs(30), || {
        marks.join("started").exists()
    });
    // The database goes away while the job is running.
    pg.kill().expect("kill postgres");
    std::fs::write(marks.join("go"), "").expect("go");
    let code = wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    // The run exits as `dbops backup` would have: 6, the server is unreachable.
    assert_eq!(code, 6, "a failed job fails the run: {err}");
    let after = std::fs::read_to_string(marks.join("after")).expect("the after hook ran");
    assert_eq!(after.trim(), "failure nightly backup");
    assert!(
        !marks.join("maintenance").exists(),
        "maintenance mode is off again"
    );
    // The hooks' environment has the job's facts and none of the secrets.
    let env = std::fs::read_to_string(marks.join("env")).expect("env");
    assert!(env.contains("DBOPS_JOB=nightly"), "{env}");
    assert!(env.contains("DBOPS_STATUS=running"), "{env}");
    assert!(!env.contains("DBOPS_PASSWORD="), "{env}");
    assert!(!env.contains(&ctx.password));
    let db_password = url::Url::parse(&pg.url_for("shop"))
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .expect("password");
    assert!(!env.contains(&db_password));
    let failure = std::fs::read_to_string(marks.join("failure")).expect("on_failure ran");
    assert!(!failure.trim().is_empty());
    let h = run(&ctx, &config, &["--json", "history", "nightly"], &[])
        .ok()
        .json();
    assert_eq!(h["runs"][0]["status"], "failure", "{h}");
    assert_eq!(
        ctx.run(&["--json", "list"]).ok().json()["backups"],
        serde_json::json!([])
    );
}

const SMTP: &str = r#"
import os, sys, asyncio
from aiosmtpd.controller import Controller
port, outdir = int(sys.argv[1]), sys.argv[2]
class Box:
    n = 0
    async def handle_DATA(self, server, session, envelope):
        Box.n += 1
        p = os.path.join(outdir, "%04d.eml" % Box.n)
        with open(p + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(p + ".tmp", p)
        return "250 OK"
c = Controller(Box(), hostname="127.0.0.1", port=port)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

/// Python's aiosmtpd on a free loopback port, writing each message to a file.
struct Smtp {
    child: Child,
    port: u16,
    mail: tempfile::TempDir,
}

impl Smtp {
    fn start() -> Self {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "these tests need Python's aiosmtpd as their SMTP server: run `pip install aiosmtpd` (scripts/test installs it)"
        );
        let mail = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut child = Command::new("python3")
            .args([
                "-c",
                SMTP,
                &port.to_string(),
                mail.path().to_str().expect("utf8"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start aiosmtpd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready");
        Self { child, port, mail }
    }

    fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.mail.path())
            .expect("mail dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_notifies_once_and_again_when_it_recovers() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let hook = Receiver::start();
    let smtp = Smtp::start();
    let token = "T0KEN-webhook-secret-42";
    let hook_url = format!("http://127.0.0.1:{}/hooks/{token}", hook.port);
    let good = pg.url_for("shop");
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let bad = format!("postgres://backup:wrong-but-secret@127.0.0.1:{closed}/shop");
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
url = "${{SHOP_URL}}"
[notifications.hook]
kind = "webhook"
url = "${{HOOK_URL}}"
on = ["failure", "recovered"]
timeout = "5s"
[notifications.mail]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp}
starttls = false
from = "dbops@example.test"
to = ["ops@example.test"]
on = ["failure", "recovered"]
[notifications.dead]
kind = "webhook"
url = "http://127.0.0.1:{closed}/nobody-listens"
on = ["success", "failure", "recovered"]
timeout = "1s"
retries = 1
[jobs.nightly]
kind = "backup"
database = "shop"
notify = ["hook", "mail", "dead"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            smtp = smtp.port,
        ),
    );
    let env_bad = [("SHOP_URL", bad.as_str()), ("HOOK_URL", hook_url.as_str())];
    let env_good = [("SHOP_URL", good.as_str()), ("HOOK_URL", hook_url.as_str())];

    let first = run(&ctx, &config, &["run", "nightly"], &env_bad);
    assert_eq!(first.code, 6, "unreachable: {}", first.all());
    let second = run(&ctx, &config, &["run", "nightly"], &env_bad);
    assert_eq!(second.code, 6, "{}", second.all());
    let third = run(&ctx, &config, &["run", "nightly"], &env_good);
    assert_eq!(third.code, 0, "{}", third.all());

    let bodies = hook.bodies();
    let events: Vec<String> = bodies
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<serde_json::Value>(b).expect("JSON body")["event"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(events, vec!["failure", "recovered"], "{bodies:#?}");
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(mails[0].contains("fail"), "{}", mails[0]);
    assert!(mails[1].contains("recovered"), "{}", mails[1]);
    let failure: serde_json::Value = serde_json::from_str(&bodies[0].1).expect("json");
    assert_eq!(failure["job"], "nightly");
    assert_eq!(failure["kind"], "backup");
    assert_eq!(failure["status"], "failure");
    assert!(failure["error"].as_str().is_some_and(|e| !e.is_empty()));
    let recovered: serde_json::Value = serde_json::from_str(&bodies[1].1).expect("json");
    assert!(recovered["backup_id"].is_string());
    assert!(recovered["stored_bytes"].as_u64().is_some());

    // No secret anywhere: not in the webhook bodies, mails, output, or history.
    let history = run(&ctx, &config, &["--json", "history"], &env_good).ok();
    let pg_password = url::Url::parse(&good)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .expect("password");
    // (The request paths hold the token, of course: only the bodies are checked.)
    let body_text: Vec<&String> = bodies.iter().map(|(_, b)| b).collect();
    let everything = format!(
        "{body_text:?}{mails:?}{}{}{}{}",
        first.all(),
        second.all(),
        third.all(),
        history.all()
    );
    for secret in [
        token,
        "wrong-but-secret",
        pg_password.as_str(),
        ctx.password.as_str(),
    ] {
        assert!(!everything.contains(secret), "secret {secret} leaked");
    }
    // Deliveries are recorded; the repeated failure delivered nothing.
    let runs = history.json()["runs"].as_array().expect("runs").clone();
    assert_eq!(
        runs.iter()
            .map(|r| r["status"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        vec!["success", "failure", "failure"]
    );
    let delivered = |r: &serde_json::Value| -> Vec<(String, String, bool)> {
        let mut v: Vec<(String, String, bool)> = r["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .map(|d| {
                (
                    d["notifier"].as_str().unwrap_or("").to_owned(),
                    d["event"].as_str().unwrap_or("").to_owned(),
                    d["ok"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        v.sort();
        v
    };
    let s = |a: &str, b: &str, ok: bool| (a.to_owned(), b.to_owned(), ok);
    assert_eq!(
        delivered(&runs[2]),
        vec![
            s("dead", "failure", false),
            s("hook", "failure", true),
            s("mail", "failure", true)
        ]
    );
    assert_eq!(
        delivered(&runs[1]),
        vec![],
        "nothing for the repeated failure"
    );
    assert_eq!(
        delivered(&runs[0]),
        vec![
            s("dead", "recovered", false),
            s("dead", "success", false),
            s("hook", "recovered", true),
            s("mail", "recovered", true)
        ],
        "a receiver that is down is recorded, and never fails the job"
    );
    let errors = runs[0]["deliveries"].to_string();
    assert!(!errors.contains("nobody-listens"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_run_processes_leave_three_runs_in_the_history() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
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
[databases.gone]
url = "{gone}"
[jobs.a]
kind = "backup"
database = "shop"
[jobs.b]
kind = "verify"
[jobs.broken]
kind = "backup"
database = "gone"
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            db = pg.url_for("shop"),
            gone = pg.url_for("no_such_database"),
        ),
    );
    run(&ctx, &config, &["run", "a"], &[]).ok();
    // Three processes at once, writing one history.
    let children: Vec<(String, Child)> = ["a", "b", "broken"]
        .iter()
        .map(|job| {
            let child = dbops(&ctx, &config, &["run", job])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            ((*job).to_owned(), child)
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    for (job, mut child) in children {
        codes.insert(job, wait_exit(&mut child, Duration::from_secs(120)));
    }
    assert_eq!(codes["a"], 0);
    assert_eq!(codes["b"], 0);
    assert_ne!(codes["broken"], 0);
    let h = run(&ctx, &config, &["--json", "history"], &[]).ok().json();
    let mut statuses: Vec<(String, String)> = h["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["job"].as_str().unwrap_or("").to_owned(),
                r["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        vec![
            ("a".to_owned(), "success".to_owned()),
            ("a".to_owned(), "success".to_owned()),
            ("b".to_owned(), "success".to_owned()),
            ("broken".to_owned(), "failure".to_owned()),
        ],
        "{h}"
    );
    let broken = h["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["job"] == "broken")
        .cloned()
        .expect("broken run");
    assert!(
        broken["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_database")),
        "{broken}"
    );
    // `jobs` lists them; jobs without a schedule run by hand.
    let jobs = run(&ctx, &config, &["--json", "jobs"], &[]).ok().json();
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(3));
}

#[test]
fn config_errors_name_file_line_and_key_and_check_redacts_secrets() {
    let ctx = Ctx::new();
    let typo = write_config(
        &ctx,
        "typo.toml",
        "state_dir = \"/tmp/x\"\n\n[repositories.main]\nurl = \"/tmp/r\"\n\n[jobs.erp-backup]\nkind = \"prune\"\nschedul = \"0 */6 * * *\"\n",
    );
    let r = run(&ctx, &typo, &["config", "check"], &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    let path = typo.display().to_string();
    assert!(r.stderr.contains(&format!("{path}:8")), "{}", r.stderr);
    assert!(r.stderr.contains("schedul"), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean `schedule`"), "{}", r.stderr);
    assert!(r.stderr.contains("[jobs.erp-backup]"), "{}", r.stderr);

    // Bad values name their line too.
    let bad = write_config(
        &ctx,
        "bad.toml",
        "[repositories.main]\nurl = \"/tmp/r\"\n[jobs.p]\nkind = \"prune\"\nschedule = \"0 */6 * *\"\n",
    );
    let r = run(&ctx, &bad, &["config", "check"], &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!("{}:5", bad.display())),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("five"), "{}", r.stderr);

    // A full config prints resolved, with no secret in it.
    let pass = ctx.dir.path().join("repo.pass");
    std::fs::write(&pass, "repo-password-secret\n").expect("pass");
    let good = write_config(
        &ctx,
        "good.toml",
        &format!(
            r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_file = "{pass}"
[databases.erp]
url = "postgres://backup:db-pass-secret@db1/erp"
[notifications.ops]
kind = "slack"
url = "${{SLACK_WEBHOOK_URL}}"
[notifications.mail]
kind = "email"
smtp_host = "smtp.example.test"
username = "ops"
password = "${{SMTP_PASSWORD}}"
from = "dbops@example.test"
to = ["ops@example.test"]
[jobs.erp-backup]
kind = "backup"
database = "erp"
repository = "main"
schedule = "0 */6 * * *"
timezone = "UTC"
timeout = "2h"
retries = 2
before = ["php artisan down"]
after = ["php artisan up"]
notify = ["ops", "mail"]
[jobs.cleanup]
kind = "forget"
keep_daily = 7
schedule = "@daily"
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            pass = pass.display(),
        ),
    );
    let env = [
        (
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.test/services/T000/B000/slack-path-secret",
        ),
        ("SMTP_PASSWORD", "smtp-pass-secret"),
    ];
    for args in [
        &["config", "check"][..],
        &["--json", "config", "check"][..],
        &["-vv", "jobs"][..],
    ] {
        let r = run(&ctx, &good, args, &env);
        assert_eq!(r.code, 0, "{}", r.all());
        let all = r.all();
        for secret in [
            "repo-password-secret",
            "db-pass-secret",
            "slack-path-secret",
            "smtp-pass-secret",
        ] {
            assert!(!all.contains(secret), "{args:?} shows {secret}:\n{all}");
        }
    }
    let r = run(&ctx, &good, &["--json", "config", "check"], &env).json();
    assert_eq!(r["config"]["jobs"]["erp-backup"]["schedule"], "0 */6 * * *");
    assert_eq!(r["config"]["jobs"]["erp-backup"]["retries"], 2);
    assert_eq!(
        r["config"]["databases"]["erp"]["url"],
        "postgres://backup:******@db1/erp"
    );
    assert!(
        r["config"]["notifications"]["ops"]["destination"]
            .as_str()
            .is_some_and(|d| d.contains("hooks.slack.test")),
        "{r}"
    );
    let jobs = run(&ctx, &good, &["--json", "jobs"], &env).ok().json();
    let erp = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["job"] == "erp-backup")
        .cloned()
        .expect("erp-backup");
    let next = erp["next"].as_array().expect("next");
    assert_eq!(next.len(), 5);
    // Every 6 hours on the hour.
    for t in next {
        let t = t.as_str().expect("time");
        assert!(t.contains(":00:00"), "{t}");
    }

    // A variable that is not set is an error naming it.
    let r = run(&ctx, &good, &["config", "check"], &[("SMTP_PASSWORD", "x")]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("SLACK_WEBHOOK_URL"), "{}", r.stderr);
    // An unknown job for `run` names the near one.
    let r = run(&ctx, &good, &["run", "erp-bakup"], &env);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("did you mean 'erp-backup'"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_repository_run_each_slot_once() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    // One config, two "hosts": each daemon has its own state directory.
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "${{STATE}}"
shutdown_grace = "30s"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[databases.shop]
url = "{db}"
[jobs.shop-backup]
kind = "backup"
database = "shop"
every = "2s"
"#,
            repo = ctx.repo,
            db = pg.url_for("shop"),
        ),
    );
    let states = [ctx.dir.path().join("host-a"), ctx.dir.path().join("host-b")];
    let mut daemons: Vec<Child> = states
        .iter()
        .map(|s| {
            dbops(&ctx, &config, &["daemon"])
                .env("STATE", s)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("daemon")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(9));
    for d in &daemons {
        sigterm(d);
    }
    for d in &mut daemons {
        assert_eq!(wait_exit(d, Duration::from_secs(60)), 0);
    }
    let mut slots = Vec::new();
    let mut skipped = 0;
    for s in &states {
        let h = run(
            &ctx,
            &config,
            &["--json", "history"],
            &[("STATE", s.to_str().expect("utf8"))],
        )
        .ok()
        .json();
        for r in h["runs"].as_array().expect("runs") {
            match r["status"].as_str() {
                Some("success") => slots.push(r["slot"].as_str().expect("slot").to_owned()),
                Some("skipped") => {
                    assert!(
                        r["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("already took the slot")),
                        "{r}"
                    );
                    skipped += 1;
                }
                other => panic!("unexpected run {other:?}: {r}"),
            }
        }
    }
    let backups = ctx.run(&["--json", "list"]).ok().json()["backups"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(backups >= 3, "{backups} backups");
    assert_eq!(slots.len(), backups, "one backup per successful run");
    let distinct: std::collections::BTreeSet<&String> = slots.iter().collect();
    assert_eq!(distinct.len(), slots.len(), "no slot ran twice: {slots:?}");
    assert!(
        skipped >= 2,
        "the other daemon skipped the slots it did not take"
    );
}

#[test]
fn a_run_left_running_by_a_killed_process_is_marked_failed_at_the_next_start() {
    let ctx = Ctx::new();
    ctx.init();
    let marks = ctx.dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks");
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[jobs.check]
kind = "prune"
before = ["touch {m}/started; sleep 3"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            m = marks.display(),
        ),
    );
    let mut child = dbops(&ctx, &config, &["run", "check"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbops run");
    wait_for("the hook", Duration::from_secs(30), || {
        marks.join("started").exists()
    });
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let h = run(&ctx, &config, &["--json", "history"], &[]).ok().json();
    assert_eq!(h["runs"][0]["status"], "running", "{h}");
    // The next start notices that the process is gone.
    run(&ctx, &config, &["run", "check"], &[]).ok();
    let h = run(&ctx, &config, &["--json", "history"], &[]).ok().json();
    let runs = h["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["status"], "success");
    assert_eq!(runs[1]["status"], "failure");
    assert_eq!(runs[1]["error_kind"], "interrupted");
    assert!(
        runs[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted")),
        "{h}"
    );
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_keeps_the_running_config() {
    let ctx = Ctx::new();
    ctx.init();
    let state = ctx.dir.path().join("state");
    let one_job = format!(
        r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[jobs.first]
kind = "prune"
every = "1s"
"#,
        state = state.display(),
        repo = ctx.repo,
    );
    let config = write_config(&ctx, "dbops.toml", &one_job);
    let log = ctx.dir.path().join("daemon.log");
    let mut child = dbops(&ctx, &config, &["daemon"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("daemon");
    // The history is read through a config of its own: the daemon's is broken on
    // purpose below.
    let reader = write_config(&ctx, "reader.toml", &one_job);
    let runs_of = |job: &str| -> usize {
        run(
            &ctx,
            &reader,
            &["--json", "history", job, "--last", "1000"],
            &[],
        )
        .json()["runs"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|x| x["status"] == "success").count())
    };
    let started = poll(Duration::from_secs(90), || runs_of("first") >= 1);
    assert!(
        started,
        "the first job never succeeded; the daemon said:\n{}\nthe history holds:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        run(&ctx, &reader, &["--json", "history", "--last", "50"], &[]).all()
    );
    let hup = || {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    };
    // A broken config is refused; the daemon goes on with the one it has.
    std::fs::write(
        &config,
        format!("{one_job}\n[jobs.second]\nkind = \"prune\"\nevry = \"1s\"\n"),
    )
    .expect("write");
    hup();
    wait_for("the refused reload", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("config reload failed"))
    });
    let before = runs_of("first");
    wait_for("the first job going on", Duration::from_secs(30), || {
        runs_of("first") > before
    });
    // A good one adds the second job.
    std::fs::write(
        &config,
        format!("{one_job}\n[jobs.second]\nkind = \"prune\"\nevery = \"1s\"\n"),
    )
    .expect("write");
    hup();
    wait_for("the second job", Duration::from_secs(30), || {
        runs_of("second") >= 1
    });
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), 0);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("evry"),
        "the refusal names the key: {log_text}"
    );
}

#[test]
fn a_failing_after_hook_fails_the_run_and_runs_on_failure_and_exit_75_skips() {
    let ctx = Ctx::new();
    ctx.init();
    let marks = ctx.dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks");
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[jobs.tidy]
kind = "prune"
after = ["echo 'maintenance mode still on' >&2; exit 4"]
on_failure = ["echo \"$DBOPS_STATUS\" > {m}/on_failure"]
[jobs.not-today]
kind = "prune"
before = ["exit 75"]
after = ["touch {m}/after-skip"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            m = marks.display(),
        ),
    );
    let r = run(&ctx, &config, &["--json", "run", "tidy"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    let rec = &r.json()["runs"][0];
    assert_eq!(rec["status"], "failure");
    assert!(
        rec["error"].as_str().is_some_and(
            |e| e.contains("work succeeded") && e.contains("maintenance mode still on")
        ),
        "{rec}"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("on_failure"))
            .expect("on_failure ran")
            .trim(),
        "failure"
    );
    let r = run(&ctx, &config, &["--json", "run", "not-today"], &[]);
    assert_eq!(r.code, 0, "a skip is not an error: {}", r.all());
    assert_eq!(r.json()["runs"][0]["status"], "skipped");
    assert!(
        marks.join("after-skip").exists(),
        "after runs whenever before ran"
    );
}

/// A fresh history opened by several processes at once: each waits its turn instead
/// of failing with SQLite's "database is locked" (a daemon once died at start that
/// way while a `history` command opened the same new file).
#[test]
fn processes_opening_a_new_history_at_once_all_succeed() {
    let ctx = Ctx::new();
    for round in 0..8 {
        let state = ctx.dir.path().join(format!("state-{round}"));
        let config = write_config(
            &ctx,
            &format!("dbops-{round}.toml"),
            &format!(
                "state_dir = \"{}\"\n[repositories.main]\nurl = \"{}\"\npassword_env = \"DBOPS_PASSWORD\"\n",
                state.display(),
                ctx.repo,
            ),
        );
        let children: Vec<Child> = (0..6)
            .map(|_| {
                dbops(&ctx, &config, &["--json", "history"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The runbooks' in-place restore as a job: maintenance mode on (before hook), a
/// safety backup, connected sessions ended, the restore, maintenance mode off (after
/// hook) — and off again when the restore is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_job_switches_maintenance_mode_around_an_in_place_restore() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let marks = ctx.dir.path().join("marks");
    std::fs::create_dir_all(&marks).expect("marks");
    let job = |name: &str, terminate: bool| {
        format!(
            "[jobs.{name}]\nkind = \"restore\"\ndatabase = \"shop\"\nclean = true\n\
             terminate_connections = {terminate}\n\
             before = [\"echo on > {m}/maintenance\"]\n\
             after = [\"echo \\\"$DBOPS_STATUS\\\" >> {m}/after-{name}; rm -f {m}/maintenance\"]\n",
            m = marks.display()
        )
    };
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            "state_dir = \"{state}\"\n[repositories.main]\nurl = \"{repo}\"\npassword_env = \"DBOPS_PASSWORD\"\n\
             [databases.shop]\nurl = \"{db}\"\n[jobs.nightly]\nkind = \"backup\"\ndatabase = \"shop\"\n{polite}{force}",
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            db = pg.url_for("shop"),
            polite = job("polite", false),
            force = job("force", true),
        ),
    );
    run(&ctx, &config, &["run", "nightly"], &[]).ok();
    pg.execute("shop", "DELETE FROM orders WHERE id > 500")
        .await
        .expect("a bad migration");
    let count = || {
        common::psql(&pg, "shop", &["-At", "-c", "SELECT count(*) FROM orders"])
            .trim()
            .to_owned()
    };

    // A session of the application is still connected: the polite job is refused
    // before anything changes, and maintenance mode is switched off again.
    let mut app = common::open_session(&pg, "shop", "portal", "SELECT 1;");
    let (app_pid, _) = common::session_of(&pg, "portal", "idle");
    let r = run(&ctx, &config, &["run", "polite"], &[]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert_eq!(count(), "500");
    assert!(
        !marks.join("maintenance").exists(),
        "maintenance mode left on"
    );
    let after = std::fs::read_to_string(marks.join("after-polite")).expect("after hook");
    assert_eq!(after.trim(), "failure");
    let history = run(&ctx, &config, &["--json", "history", "polite"], &[])
        .ok()
        .json();
    let error = history["runs"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains(&app_pid.to_string()), "{history}");

    // The forcing job ends the session, keeps a safety backup, restores.
    run(&ctx, &config, &["run", "force"], &[]).ok();
    assert_eq!(count(), "2000");
    assert!(!marks.join("maintenance").exists());
    assert!(app.wait().is_ok(), "the session was ended");
    let history = run(&ctx, &config, &["--json", "history", "force"], &[])
        .ok()
        .json();
    let run0 = &history["runs"][0];
    assert_eq!(run0["status"], "success", "{history}");
    let safety = ctx.run(&["list", "--tag", "safety", "--json"]).ok().json();
    let ids = safety["backups"].as_array().expect("backups");
    assert_eq!(ids.len(), 1, "{safety}");
    // The safety backup holds the state the restore replaced (500 rows).
    let safety_id = ids[0]["id"].as_str().expect("id");
    ctx.run(&[
        "restore",
        safety_id,
        &pg.url_for("before_restore"),
        "--create",
    ])
    .ok();
    let before = common::psql(
        &pg,
        "before_restore",
        &["-At", "-c", "SELECT count(*) FROM orders"],
    );
    assert_eq!(before.trim(), "500");

    // Mistakes in a restore job are named.
    let bad = write_config(
        &ctx,
        "bad.toml",
        &format!(
            "[repositories.main]\nurl = \"{repo}\"\npassword_env = \"DBOPS_PASSWORD\"\n\
             [databases.shop]\nurl = \"{db}\"\n[jobs.x]\nkind = \"restore\"\ndatabase = \"shop\"\nterminate_connections = true\n",
            repo = ctx.repo,
            db = pg.url_for("shop"),
        ),
    );
    let r = run(&ctx, &bad, &["config", "check"], &[]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("clean = true"), "{}", r.all());
}

/// The non-skipped runs of `job` in a `history --json` answer, as (start, end).
fn spans_of(
    runs: &[serde_json::Value],
    job: &str,
) -> Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let time = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|| panic!("not a time: {v}"))
    };
    runs.iter()
        .filter(|r| r["job"] == job && r["status"] != "skipped")
        .map(|r| (time(&r["started"]), time(&r["ended"])))
        .collect()
}

/// `max_concurrent_jobs = 1`: two jobs due every second, each held 2 s by its `before`
/// hook, take turns. A due run waiting for the one place counts as running, so its
/// job's next slots are skipped, never queued.
#[test]
fn with_max_concurrent_jobs_1_runs_of_two_jobs_never_overlap() {
    let ctx = Ctx::new();
    ctx.init();
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
max_concurrent_jobs = 1
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[jobs.a]
kind = "prune"
every = "1s"
before = ["sleep 2"]
[jobs.b]
kind = "prune"
every = "1s"
before = ["sleep 2"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
        ),
    );
    let log = ctx.dir.path().join("daemon.log");
    let mut child = dbops(&ctx, &config, &["daemon"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("daemon");
    let history = || {
        run(&ctx, &config, &["--json", "history", "--last", "1000"], &[]).json()["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // Three turns, both jobs among them: one job's run has runs of the other both
    // before and after it.
    let done = poll(Duration::from_secs(60), || {
        let runs = history();
        let ok = |job: &str| {
            runs.iter()
                .filter(|r| r["job"] == job && r["status"] == "success")
                .count()
        };
        ok("a") >= 1 && ok("b") >= 1 && ok("a") + ok("b") >= 3
    });
    sigterm(&child);
    let code = wait_exit(&mut child, Duration::from_secs(30));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(done, "the two jobs did not take three turns:\n{log_text}");
    assert_eq!(code, 0, "{log_text}");
    assert!(log_text.contains("at most 1 at once"), "{log_text}");

    let runs = history();
    let (a, b) = (spans_of(&runs, "a"), spans_of(&runs, "b"));
    for x in &a {
        for y in &b {
            assert!(
                x.1 <= y.0 || y.1 <= x.0,
                "a run of a ({x:?}) overlapped a run of b ({y:?}): {runs:#?}"
            );
        }
    }
    // Each run took its hook's 2 s: the limit, not chance, kept them apart.
    for (start, end) in a.iter().chain(&b) {
        assert!(*end - *start >= chrono::TimeDelta::milliseconds(1900));
    }
    assert!(
        runs.iter().any(|r| r["status"] == "skipped"
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("still running"))),
        "slots due while a job waited for the place are skipped: {runs:#?}"
    );
}

/// SIGTERM while a backup is blocked (a table held by another session's ACCESS
/// EXCLUSIVE lock): the daemon waits `shutdown_grace`, then cancels the backup; the
/// run is recorded as interrupted, its `after` hook runs, nothing half-written is
/// listed, and the next backup is not hindered by what the cancelled one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_still_running_when_the_shutdown_grace_runs_out_is_cancelled() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    shop(&pg).await;
    let ctx = Ctx::new();
    ctx.init();
    let marks = ctx.dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks");
    let config = write_config(
        &ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"
shutdown_grace = "2s"
[repositories.main]
url = "{repo}"
password_env = "DBOPS_PASSWORD"
[databases.shop]
url = "{db}"
[jobs.nightly]
kind = "backup"
database = "shop"
every = "1s"
after = ["echo \"$DBOPS_STATUS\" > {m}/after"]
"#,
            state = ctx.dir.path().join("state").display(),
            repo = ctx.repo,
            db = pg.url_for("shop"),
            m = marks.display(),
        ),
    );
    let mut holder = common::open_session(
        &pg,
        "shop",
        "lock-holder",
        "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;",
    );
    common::session_of(&pg, "lock-holder", "idle in transaction");
    let log = ctx.dir.path().join("daemon.log");
    let mut child = dbops(&ctx, &config, &["daemon"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("daemon");
    let waiting = || {
        common::psql(
            &pg,
            "postgres",
            &[
                "-At",
                "-c",
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' \
                 AND wait_event_type = 'Lock' AND application_name <> 'lock-holder'",
            ],
        )
        .trim()
            != "0"
    };
    let blocked = poll(Duration::from_secs(60), waiting);
    assert!(
        blocked,
        "the backup never waited for the lock:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let signalled = std::time::Instant::now();
    sigterm(&child);
    let code = wait_exit(&mut child, Duration::from_secs(30));
    let took = signalled.elapsed();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{log_text}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(2 + 8),
        "stopped after {took:?}, with a grace of 2 s:\n{log_text}"
    );
    assert!(
        log_text.contains("the grace period ran out: cancelling 1 job(s)"),
        "{log_text}"
    );

    let h = run(&ctx, &config, &["--json", "history", "nightly"], &[])
        .ok()
        .json();
    let ran: Vec<&serde_json::Value> = h["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["status"] != "skipped")
        .collect();
    assert_eq!(ran.len(), 1, "{h}");
    assert_eq!(ran[0]["status"], "failure", "{h}");
    assert_eq!(ran[0]["error_kind"], "interrupted", "{h}");
    assert!(
        ran[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("grace period ran out")),
        "{h}"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("after"))
            .expect("the after hook ran")
            .trim(),
        "failure"
    );
    assert_eq!(
        ctx.run(&["--json", "list"]).ok().json()["backups"],
        serde_json::json!([]),
        "nothing half-written is listed"
    );

    // The lock gone, the next backup goes through.
    let _ = holder.kill();
    let _ = holder.wait();
    run(&ctx, &config, &["run", "nightly"], &[]).ok();
    let list = ctx.run(&["--json", "list"]).ok().json();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(1), "{list}");
}

/// The example configs shipped in deploy/ stay valid: `dbops config check` accepts
/// them as they are, with their credential files in place (the systemd one reads them
/// from `$CREDENTIALS_DIRECTORY`; the Kubernetes one from the Secret's mount, moved
/// here into a temp dir), and shows none of the secrets.
#[test]
fn the_example_configs_in_deploy_pass_config_check() {
    let ctx = Ctx::new();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let creds = ctx.dir.path().join("credentials");
    std::fs::create_dir(&creds).expect("credentials");
    let secrets = [
        ("repo.pass", "repo-pass-secret"),
        ("erp-db.pass", "erp-db-pass-secret"),
        (
            "slack-webhook-url",
            "https://hooks.slack.test/services/T0/B0/slack-secret",
        ),
    ];
    for (name, value) in secrets {
        std::fs::write(creds.join(name), format!("{value}\n")).expect("credential");
    }
    let creds_dir = creds.to_str().expect("utf8");
    let check = |config: &std::path::Path| {
        let r = run(
            &ctx,
            config,
            &["--json", "config", "check"],
            &[("CREDENTIALS_DIRECTORY", creds_dir)],
        );
        assert_eq!(r.code, 0, "{}: {}", config.display(), r.all());
        for (_, value) in secrets {
            assert!(!r.all().contains(value), "{value} shown: {}", r.all());
        }
        let c = r.json()["config"].clone();
        assert_eq!(c["jobs"]["erp-backup"]["schedule"], "0 */6 * * *", "{c}");
        assert!(c["notifications"]["ops"].is_object(), "{c}");
    };
    check(&deploy.join("systemd/dbops.toml"));

    // The ConfigMap's dbops.toml: the block under `dbops.toml: |`, its Secret's mount
    // point replaced by the temp dir.
    let map = std::fs::read_to_string(deploy.join("kubernetes/configmap.yaml")).expect("configmap");
    let (_, block) = map
        .split_once("  dbops.toml: |\n")
        .expect("a dbops.toml key");
    let toml: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("[jobs.erp-backup]"), "{toml}");
    let toml = toml.replace("/run/secrets/dbops/", &format!("{creds_dir}/"));
    check(&write_config(&ctx, "configmap.toml", &toml));
}
