//! `dbops integrity`, `inspect`, `maintain`, `sessions` and `archive` against a
//! throwaway PostgreSQL: integrity checks on pagila with an injected orphan and
//! duplicate (and on the restored copy of a backup), an archive run killed with
//! SIGKILL again and again, and the maintenance job kinds run from the config.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Ctx, fixtures, open_session, psql, run, session_of, write_config};
use ops_postgres::ephemeral::EphemeralPostgres;

const ORPHAN_SQL: &str = "SELECT r.rental_id, r.customer_id FROM rental r \
     LEFT JOIN customer c ON c.customer_id = r.customer_id WHERE c.customer_id IS NULL";
const DUPLICATE_SQL: &str = "SELECT email, count(*) AS customers FROM customer \
     GROUP BY email HAVING count(*) > 1";

fn checks_config(ctx: &Ctx, url: &str) -> std::path::PathBuf {
    write_config(
        ctx,
        "dbops.toml",
        &format!(
            r#"
state_dir = "{state}"

[databases.pagila]
url = "{url}"

[checks.orphan-rentals]
database = "pagila"
sql = "{ORPHAN_SQL}"
severity = "error"

[checks.duplicate-emails]
database = "pagila"
sql = "{DUPLICATE_SQL}"
severity = "warn"
timeout = "30s"

[checks.broken]
database = "pagila"
sql = "SELEC rental_id FROM rental"
"#,
            state = ctx.dir.path().join("state").display(),
        ),
    )
}

fn check<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_checks_find_an_injected_orphan_and_duplicate_in_pagila_and_its_backup() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    let dir = fixtures("pagila").expect("the pagila fixture (../shared/fixtures/pagila)");
    pg.create_database("pagila").await.expect("create db");
    for file in ["pagila-schema.sql", "pagila-data.sql"] {
        psql(
            &pg,
            "pagila",
            &["-f", dir.join(file).to_str().expect("utf8")],
        );
    }
    let ctx = Ctx::new();
    let config = checks_config(&ctx, &pg.url_for("pagila"));
    let good = ["integrity", "orphan-rentals", "duplicate-emails"];

    // Clean pagila: both pass.
    let r = run(&ctx, &config, &good, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains("OK       orphan-rentals on pagila: 0 rows"),
        "{}",
        r.stdout
    );

    // A syntax error is "could not run" (3), never OK.
    let r = run(&ctx, &config, &["integrity", "broken", "--json"], &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    let doc = r.json();
    assert_eq!(check(&doc, "broken")["status"], "unknown");
    assert!(
        check(&doc, "broken")["error"]
            .as_str()
            .is_some_and(|e| e.contains("syntax")),
        "{doc}"
    );
    // An unknown check name is also 3, with a suggestion.
    let r = run(&ctx, &config, &["integrity", "orphan-rental"], &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stderr.contains("did you mean 'orphan-rentals'"),
        "{}",
        r.stderr
    );

    // Inject one orphan (foreign keys bypassed as a bulk load would) and one duplicate.
    psql(
        &pg,
        "pagila",
        &[
            "-c",
            "SET session_replication_role = replica; \
             INSERT INTO rental (inventory_id, customer_id, staff_id) VALUES (999999, 32000, 1)",
            "-c",
            "INSERT INTO customer (store_id, first_name, last_name, email, address_id) \
             SELECT store_id, 'DUP', 'LICATE', email, address_id FROM customer WHERE customer_id = 1",
        ],
    );
    let email = psql(
        &pg,
        "pagila",
        &[
            "-At",
            "-c",
            "SELECT email FROM customer WHERE customer_id = 1",
        ],
    );
    let email = email.trim();

    let r = run(
        &ctx,
        &config,
        &["integrity", "orphan-rentals", "duplicate-emails", "--json"],
        &[],
    );
    assert_eq!(
        r.code,
        2,
        "an error-severity violation exits 2: {}",
        r.all()
    );
    let doc = r.json();
    let orphan = check(&doc, "orphan-rentals");
    assert_eq!(orphan["status"], "unhealthy");
    assert_eq!(orphan["rows"]["count"], 1);
    assert_eq!(
        orphan["rows"]["columns"],
        serde_json::json!(["rental_id", "customer_id"])
    );
    assert_eq!(orphan["rows"]["sample"][0][1], "32000", "{orphan}");
    let dup = check(&doc, "duplicate-emails");
    assert_eq!(dup["status"], "degraded");
    assert_eq!(dup["rows"]["sample"][0][0], email, "{dup}");
    assert_eq!(dup["rows"]["sample"][0][1], "2", "{dup}");
    // Only the warning: exit 1; the text shows the sample row.
    let r = run(&ctx, &config, &["integrity", "duplicate-emails"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains("WARNING  duplicate-emails") && r.stdout.contains(email),
        "{}",
        r.stdout
    );

    // A backup of a database whose foreign keys are broken cannot be restored (the
    // constraint cannot be created): take the orphan out, and break an invariant that
    // a restore carries over instead.
    psql(
        &pg,
        "pagila",
        &[
            "-c",
            "DELETE FROM rental WHERE customer_id = 32000",
            "-c",
            "UPDATE customer SET email = NULL WHERE customer_id = 2",
        ],
    );
    let verify_config = write_config(
        &ctx,
        "verify.toml",
        &format!(
            r#"
state_dir = "{state}"

[databases.pagila]
url = "{url}"

[checks.customers-have-email]
database = "pagila"
sql = "SELECT customer_id FROM customer WHERE email IS NULL"

[checks.duplicate-emails]
database = "pagila"
sql = "{DUPLICATE_SQL}"
severity = "warn"
"#,
            state = ctx.dir.path().join("state").display(),
            url = pg.url_for("pagila"),
        ),
    );
    ctx.init();
    ctx.run(&["backup", &pg.url_for("pagila")]).ok();
    let mut cmd = common::dbops(&ctx, &verify_config, &["verify", "--restore", "--json"]);
    cmd.env("DBOPS_REPO", &ctx.repo);
    let o = cmd.output().expect("run dbops");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let restore = &doc["restores"][0];
    assert_eq!(
        restore["check"]["tables"]
            .as_array()
            .map(|t| t.iter().all(|t| t["matches"] == true)),
        Some(true),
        "the backup itself restores: {restore}"
    );
    let on_copy = restore["integrity"].as_array().expect("integrity results");
    let named = |n: &str| {
        on_copy
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("{n} did not run on the copy: {restore}"))
    };
    assert_eq!(named("customers-have-email")["status"], "unhealthy");
    assert_eq!(named("customers-have-email")["rows"]["sample"][0][0], "2");
    assert_eq!(named("duplicate-emails")["status"], "degraded");
    assert_eq!(restore["ok"], false);

    // A warning alone does not fail the proof.
    psql(
        &pg,
        "pagila",
        &[
            "-c",
            "UPDATE customer SET email = 'x@example.org' WHERE customer_id = 2",
        ],
    );
    ctx.run(&["backup", &pg.url_for("pagila")]).ok();
    let mut cmd = common::dbops(&ctx, &verify_config, &["verify", "--restore"]);
    cmd.env("DBOPS_REPO", &ctx.repo);
    let o = cmd.output().expect("run dbops");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("integrity degraded   duplicate-emails on the restored copy: 1 rows")
            && stdout.contains("integrity ok         customers-have-email"),
        "{stdout}"
    );
}

/// A table of `rows` rows and the digest of its content, for the archive tests.
async fn archive_source(pg: &EphemeralPostgres, db: &str, rows: u32) -> String {
    pg.create_database(db).await.expect("create db");
    pg.execute(
        db,
        &format!(
            "CREATE TABLE events (id bigint PRIMARY KEY, created date NOT NULL, body text); \
             INSERT INTO events SELECT g, date '2020-01-01' + (g % 1500), md5(g::text) \
             FROM generate_series(1, {rows}) g;"
        ),
    )
    .await
    .expect("load");
    digest(pg, db, "SELECT * FROM events")
}

fn digest(pg: &EphemeralPostgres, db: &str, rows: &str) -> String {
    psql(
        pg,
        db,
        &[
            "-At",
            "-c",
            &format!("SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY t.id)) FROM ({rows}) t"),
        ],
    )
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_killed_with_sigkill_resumes_without_losing_or_duplicating_a_row() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    let before = archive_source(&pg, "ledger", 200_000).await;
    let ctx = Ctx::new();
    let url = pg.url_for("ledger");
    let args = [
        "archive",
        url.as_str(),
        "--table",
        "events",
        "--where",
        "created < date '2023-01-01'",
        "--into",
        "events_archive",
        "--batch",
        "500",
    ];
    // Dry run: counts, changes nothing.
    let r = ctx
        .run(&[&args[..], &["--dry-run", "--json"]].concat())
        .ok();
    let would = r.json()["report"]["rows"].as_u64().expect("rows");
    assert!(would > 100_000, "{would}");
    assert_eq!(digest(&pg, "ledger", "SELECT * FROM events"), before);

    // Killed at random points, ten times.
    let mut kills = 0;
    for i in 0..10u64 {
        let mut child = ctx
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn archive");
        let wait = 150 + (i * 7919 + 31) % 400;
        std::thread::sleep(Duration::from_millis(wait));
        if child.try_wait().expect("poll").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let _ = child.wait();
    }
    eprintln!("archive: SIGKILLed {kills} of 10 runs mid-way");
    assert!(
        kills >= 3,
        "the runs were too short to be killed mid-way ({kills})"
    );
    let r = ctx.run(&[&args[..], &["--json"]].concat()).ok();
    assert_eq!(r.json()["report"]["remaining"], 0, "{}", r.stdout);

    let together = digest(
        &pg,
        "ledger",
        "SELECT * FROM events UNION ALL SELECT * FROM events_archive",
    );
    assert_eq!(together, before, "no row lost or duplicated");
    let archived = psql(
        &pg,
        "ledger",
        &["-At", "-c", "SELECT count(*) FROM events_archive"],
    );
    assert_eq!(archived.trim().parse::<u64>().expect("count"), would);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_actions_sessions_and_jobs_from_the_command_line() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    let before = archive_source(&pg, "shop", 20_000).await;
    let ctx = Ctx::new();
    let url = pg.url_for("shop");

    for what in [
        "sizes", "bloat", "indexes", "activity", "locks", "queries", "vacuum",
    ] {
        let r = ctx.run(&["inspect", what, &url, "--json"]);
        assert_eq!(r.code, 0, "inspect {what}: {}", r.all());
        assert_eq!(r.json()["report"]["report"], what, "{}", r.stdout);
        let text = ctx.run(&["inspect", what, &url]);
        assert_eq!(text.code, 0, "inspect {what}: {}", text.all());
    }
    let sizes = ctx.run(&["inspect", "sizes", &url, "--json"]).json();
    assert!(
        sizes["report"]["tables"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "events")),
        "{sizes}"
    );
    let r = ctx.run(&["inspect", "nonsense", &url]);
    assert_eq!(r.code, 2, "{}", r.all());

    // A dry run plans and runs nothing; then for real.
    let dry = ctx
        .run(&[
            "maintain",
            "vacuum",
            &url,
            "--analyze",
            "--dry-run",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(dry["report"]["steps"][0]["outcome"], "planned", "{dry}");
    let done = ctx
        .run(&[
            "maintain",
            "vacuum",
            &url,
            "--analyze",
            "--table",
            "events",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(done["report"]["steps"][0]["outcome"], "done", "{done}");
    let r = ctx.run(&["maintain", "analyze", &url, "--full"]);
    assert_eq!(r.code, 2, "--full does not apply to analyze: {}", r.all());

    // Sessions: a dry run ends nothing.
    let r = ctx
        .run(&[
            "sessions",
            &url,
            "--terminate",
            "--user",
            "nobody-at-all",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(r["dry_run"], true);
    let listed = ctx.run(&["sessions", &url, "--json"]).ok().json();
    assert!(
        listed["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["kind"] == "own")),
        "{listed}"
    );

    // The new job kinds from the config, run once.
    let config = write_config(
        &ctx,
        "jobs.toml",
        &format!(
            r#"
state_dir = "{state}"

[databases.shop]
url = "{url}"

[checks.no-future-events]
database = "shop"
sql = "SELECT id FROM events WHERE created > date '2030-01-01'"

[jobs.weekly-vacuum]
kind = "maintenance"
database = "shop"
action = "vacuum"
analyze = true
lock_wait = "10s"

[jobs.invariants]
kind = "integrity"

[jobs.old-events]
kind = "archive"
database = "shop"
table = "events"
where = "created < date '2021-01-01'"
into = "events_old"
batch = 500
"#,
            state = ctx.dir.path().join("state").display(),
        ),
    );
    run(&ctx, &config, &["config", "check"], &[]).ok();
    for job in ["weekly-vacuum", "invariants", "old-events"] {
        let r = run(&ctx, &config, &["run", job], &[]);
        assert_eq!(r.code, 0, "job {job}: {}", r.all());
    }
    let history = run(&ctx, &config, &["history", "--json"], &[]).ok().json();
    let runs = history["runs"].as_array().expect("runs");
    for job in ["weekly-vacuum", "invariants", "old-events"] {
        assert!(
            runs.iter()
                .any(|r| r["job"] == job && r["status"] == "success"),
            "{job} not recorded as a success: {history}"
        );
    }
    let together = digest(
        &pg,
        "shop",
        "SELECT * FROM events UNION ALL SELECT * FROM events_old",
    );
    assert_eq!(together, before);

    // A config mistake is named with its key.
    let bad = write_config(
        &ctx,
        "bad.toml",
        &format!(
            "[databases.shop]\nurl = \"{url}\"\n[jobs.x]\nkind = \"maintenance\"\ndatabase = \"shop\"\naction = \"vacum\"\n"
        ),
    );
    let r = run(&ctx, &bad, &["config", "check"], &[]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("did you mean 'vacuum'"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_for_damage_and_lock_timeouts_and_ending_root_blockers() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    pg.create_database("ledger").await.expect("create db");
    // An index over a function declared immutable that then changes its answer: the
    // index no longer matches its table, which amcheck's heapallindexed finds.
    pg.execute(
        "ledger",
        "CREATE EXTENSION amcheck;
         CREATE TABLE entries (id int PRIMARY KEY, amount int NOT NULL);
         INSERT INTO entries SELECT g, g % 97 FROM generate_series(1, 2000) g;
         CREATE FUNCTION cents(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 100';
         CREATE INDEX entries_cents ON entries (cents(amount));
         CREATE OR REPLACE FUNCTION cents(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 10';",
    )
    .await
    .expect("set up");
    let ctx = Ctx::new();
    let url = pg.url_for("ledger");

    let r = ctx.run(&["maintain", "check", &url, "--table", "entries", "--json"]);
    assert_eq!(r.code, 3, "damage found is exit 3: {}", r.all());
    let steps = r.json()["report"]["steps"].clone();
    assert!(
        steps
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["object"] == "public.entries_cents"
                && s["outcome"] == "failed"
                && s["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("damaged: ")))),
        "{steps}"
    );
    pg.execute("ledger", "DROP INDEX entries_cents")
        .await
        .expect("drop the damaged index");
    let r = ctx.run(&["maintain", "check", &url, "--table", "entries"]);
    assert_eq!(r.code, 0, "{}", r.all());

    // A session idle in a transaction that read the table holds a lock VACUUM FULL
    // needs: the action gives up after --lock-wait, exit 4, naming the blocker.
    let mut holder = open_session(
        &pg,
        "ledger",
        "holder",
        "BEGIN; SELECT count(*) FROM entries;",
    );
    let (holder_pid, _) = session_of(&pg, "holder", "idle in transaction");
    let started = std::time::Instant::now();
    let r = ctx.run(&[
        "maintain",
        "vacuum",
        &url,
        "--full",
        "--table",
        "entries",
        "--lock-wait",
        "2s",
    ]);
    assert_eq!(r.code, 4, "a lock not taken in time is exit 4: {}", r.all());
    assert!(r.all().contains(&holder_pid.to_string()), "{}", r.all());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Sessions are those of the URL's database unless --all-databases.
    let other = ctx
        .run(&["sessions", &pg.url_for("postgres"), "--json"])
        .ok()
        .json();
    let ids = |doc: &serde_json::Value| -> Vec<i64> {
        doc["sessions"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["id"].as_i64()).collect())
            .unwrap_or_default()
    };
    assert!(!ids(&other).contains(&holder_pid), "{other}");
    let every = ctx
        .run(&[
            "sessions",
            &pg.url_for("postgres"),
            "--all-databases",
            "--json",
        ])
        .ok()
        .json();
    assert!(ids(&every).contains(&holder_pid), "{every}");
    // With no condition at all, ending is refused unless --all says so.
    let r = ctx.run(&[
        "sessions",
        &pg.url_for("postgres"),
        "--all-databases",
        "--terminate",
        "--yes",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--all"), "{}", r.all());
    // An idle session is not "long-running": --longer-than takes the open
    // transaction by its age, never an idle pooled connection.
    let mut pooled = open_session(&pg, "ledger", "pooled", "SELECT 1;");
    let (pooled_pid, _) = session_of(&pg, "pooled", "idle");
    std::thread::sleep(Duration::from_secs(2));
    let old = ctx
        .run(&["sessions", &url, "--longer-than", "1s", "--json"])
        .ok()
        .json();
    assert!(ids(&old).contains(&holder_pid), "{old}");
    assert!(!ids(&old).contains(&pooled_pid), "{old}");

    // A waiter queues behind the holder; ending the root blockers ends the holder
    // only, and the waiter gets its lock.
    let mut waiter = open_session(
        &pg,
        "ledger",
        "waiter",
        "BEGIN; LOCK TABLE entries IN ACCESS EXCLUSIVE MODE;",
    );
    let (waiter_pid, wait) = session_of(&pg, "waiter", "active");
    assert_eq!(wait, "Lock");
    let ended = ctx
        .run(&[
            "sessions",
            &url,
            "--root-blockers",
            "--terminate",
            "--grace",
            "1s",
            "--yes",
            "--json",
        ])
        .ok()
        .json();
    let report = ended["report"]["sessions"].as_array().expect("sessions");
    assert_eq!(report.len(), 1, "{ended}");
    assert_eq!(report[0]["session"]["id"], holder_pid, "{ended}");
    assert_eq!(report[0]["outcome"], "terminated", "{ended}");
    let (still, _) = session_of(&pg, "waiter", "idle in transaction");
    assert_eq!(still, waiter_pid);
    assert!(holder.wait().is_ok());
    for child in [&mut waiter, &mut pooled] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
