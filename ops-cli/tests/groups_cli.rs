//! One repository for several databases: retention, `latest`, listings and restores
//! act per group (server and database) and can never mix two databases. Real
//! throwaway PostgreSQL servers; the restored content is compared by PostgreSQL's own
//! checksums.

mod common;

use common::{Ctx, database_with_rows, psql, table_checksums};
use ops_postgres::ephemeral::EphemeralPostgres;
use serde_json::Value;

fn ids_of(list: &Value) -> Vec<String> {
    list["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect()
}

fn backup(ctx: &Ctx, url: &str) -> String {
    ctx.run(&["--json", "backup", url]).ok().json()["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn tables(pg: &EphemeralPostgres, db: &str) -> Vec<String> {
    table_checksums(pg, db).into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_latest_and_restores_act_per_database() {
    let pg1 = EphemeralPostgres::start().await.expect("start postgres");
    let pg2 = EphemeralPostgres::start()
        .await
        .expect("start second postgres");
    for (pg, db, table) in [
        (&pg1, "alpha", "orders"),
        (&pg1, "beta", "members"),
        (&pg2, "alpha", "invoices"),
    ] {
        pg.create_database(db).await.expect("create database");
        psql(
            pg,
            db,
            &[
                "-c",
                &format!(
                    "CREATE TABLE {table} (id int PRIMARY KEY, v text); \
                     INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, 500) g;"
                ),
            ],
        );
    }
    let ctx = Ctx::new();
    ctx.init();
    let alpha1_old = backup(&ctx, &pg1.url_for("alpha"));
    let alpha1_new = backup(&ctx, &pg1.url_for("alpha"));
    let beta = backup(&ctx, &pg1.url_for("beta"));
    let alpha2 = backup(&ctx, &pg2.url_for("alpha"));

    // The list shows three groups; filters narrow it.
    let list = ctx.run(&["--json", "list"]).ok().json();
    assert_eq!(ids_of(&list).len(), 4);
    let groups: std::collections::BTreeSet<String> = list["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["group"].to_string())
        .collect();
    assert_eq!(groups.len(), 3, "{list}");
    let only_beta = ctx
        .run(&["--json", "list", "--database", "beta"])
        .ok()
        .json();
    assert_eq!(ids_of(&only_beta), vec![beta.clone()]);
    let alphas = ctx
        .run(&["--json", "list", "--database", "alpha", "--last", "1"])
        .ok()
        .json();
    let mut expected = vec![alpha1_new.clone(), alpha2.clone()];
    expected.sort();
    let mut got = ids_of(&alphas);
    got.sort();
    assert_eq!(got, expected, "--last 1 is per group");
    let pg2_address = list["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["id"] == alpha2.as_str())
        .expect("alpha2 listed")["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let human = ctx.run(&["list"]).ok();
    assert!(
        human.stdout.contains("database beta") && human.stdout.contains("database alpha"),
        "{}",
        human.stdout
    );

    // Retention counts each group alone: keep-last 1 forgets only alpha's older backup.
    for rules in [["--keep-last", "1"], ["--keep-daily", "7"]] {
        let dry = ctx
            .run(&["--json", "forget", rules[0], rules[1], "--dry-run"])
            .ok()
            .json();
        let groups = dry["groups"].as_array().expect("groups");
        assert_eq!(groups.len(), 3, "{dry}");
        for g in groups {
            let decisions = g["decisions"].as_array().expect("decisions");
            let newest = decisions.last().expect("a decision");
            assert_eq!(newest["keep"], true, "{g}");
            assert!(
                newest["reasons"]
                    .as_array()
                    .expect("reasons")
                    .iter()
                    .any(|r| r == "newest complete backup"),
                "{g}"
            );
        }
        let forgotten: Vec<&str> = dry["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .filter(|d| d["keep"] == false)
            .map(|d| d["id"].as_str().expect("id"))
            .collect();
        assert_eq!(forgotten, vec![alpha1_old.as_str()], "{rules:?}: {dry}");
    }
    let human = ctx
        .run(&["forget", "--keep-last", "1", "--dry-run"])
        .ok()
        .stdout;
    assert!(
        human.contains("database beta") && human.contains("no rule keeps it"),
        "{human}"
    );
    // Acting on one database leaves the others alone.
    let one = ctx
        .run(&[
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--database",
            "beta",
            "--dry-run",
        ])
        .ok()
        .json();
    assert_eq!(one["groups"].as_array().expect("groups").len(), 1);

    // A bare `latest` is refused with the groups named; `--database` or `latest:NAME`
    // chooses.
    let bare = ctx.run(&["show", "latest"]);
    assert_eq!(bare.code, 2, "{}", bare.all());
    assert!(
        bare.stderr.contains("ambiguous")
            && bare.stderr.contains("database alpha")
            && bare.stderr.contains("database beta"),
        "{}",
        bare.stderr
    );
    let bare_json = ctx.run(&["--json", "restore", "latest", &pg1.url_for("x")]);
    assert_eq!(bare_json.code, 2, "{}", bare_json.all());
    assert_eq!(bare_json.json()["ok"], false);
    let still_ambiguous = ctx.run(&["show", "latest:alpha"]);
    assert_eq!(still_ambiguous.code, 2, "two servers hold an alpha");
    let alpha_pg2 = ctx
        .run(&["--json", "show", "latest:alpha", "--host", &pg2_address])
        .ok()
        .json();
    assert_eq!(alpha_pg2["id"], alpha2.as_str());

    let restored = ctx
        .run(&[
            "--json",
            "restore",
            "latest",
            "--database",
            "beta",
            &pg1.url_for("beta_copy"),
            "--create",
        ])
        .ok()
        .json();
    assert_eq!(restored["backup"], beta.as_str());
    assert_eq!(restored["source_database"], "beta");
    assert_eq!(
        table_checksums(&pg1, "beta_copy"),
        table_checksums(&pg1, "beta")
    );
    let human = ctx
        .run(&[
            "restore",
            "latest:beta",
            &pg1.url_for("beta_copy2"),
            "--create",
        ])
        .ok();
    assert!(
        human
            .stdout
            .contains(&format!("backup {beta} of database beta")),
        "{}",
        human.stdout
    );

    // An id given by a unique part of its random suffix; an ambiguous prefix says so.
    let suffix = alpha2.rsplit_once('-').expect("suffix").1;
    let by_suffix = ctx.run(&["--json", "show", suffix]).ok().json();
    assert_eq!(by_suffix["id"], alpha2.as_str());
    let ambiguous = ctx.run(&["show", "2"]);
    assert_eq!(ambiguous.code, 2, "{}", ambiguous.all());
    assert!(
        ambiguous.stderr.contains("ambiguous") && ambiguous.stderr.contains(&beta),
        "{}",
        ambiguous.stderr
    );
    let wrong_db = ctx.run(&["show", &beta, "--database", "alpha"]);
    assert_eq!(wrong_db.code, 2, "{}", wrong_db.all());

    // Restore --clean of alpha's backup into a database holding beta's table: it holds
    // exactly alpha's tables afterwards, never a merge.
    let clean = ctx
        .run(&[
            "--json",
            "restore",
            &alpha1_new,
            &pg1.url_for("beta_copy"),
            "--clean",
        ])
        .ok()
        .json();
    assert_eq!(clean["source_database"], "alpha");
    // What beta_copy held was backed up first, as a safety backup.
    let safety = clean["safety_backup"]
        .as_str()
        .expect("a safety backup of the replaced content")
        .to_owned();
    assert_eq!(tables(&pg1, "beta_copy"), tables(&pg1, "alpha"));
    assert_eq!(
        table_checksums(&pg1, "beta_copy"),
        table_checksums(&pg1, "alpha")
    );

    // The real forget: each group keeps its newest (and the safety backup its 7 days);
    // everything left still verifies.
    ctx.run(&["forget", "--keep-daily", "7", "--prune"]).ok();
    let mut left = ids_of(&ctx.run(&["--json", "list"]).ok().json());
    left.sort();
    let mut expected = vec![alpha1_new, beta, alpha2, safety];
    expected.sort();
    assert_eq!(left, expected);
    let verified = ctx
        .run(&["--json", "verify", "--all", "--read-data"])
        .ok()
        .json();
    assert_eq!(verified["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_of_two_databases_and_a_prune_of_a_third_run_at_once() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    for db in ["one", "two", "three"] {
        database_with_rows(&pg, db, 20_000, 1).await;
    }
    let ctx = Ctx::new();
    ctx.init();
    for _ in 0..3 {
        backup(&ctx, &pg.url_for("three"));
    }
    for round in 0..2 {
        psql(
            &pg,
            "three",
            &[
                "-c",
                &format!("UPDATE t SET v = md5(v || '{round}') WHERE id % 7 = 0"),
            ],
        );
        backup(&ctx, &pg.url_for("three"));
        let spawn = |args: &[&str]| ctx.command(args).output();
        let (a, b, c) = std::thread::scope(|s| {
            let a = s.spawn(|| spawn(&["backup", &pg.url_for("one")]));
            let b = s.spawn(|| spawn(&["backup", &pg.url_for("two")]));
            let c = s.spawn(|| {
                spawn(&[
                    "--lock-wait",
                    "2m",
                    "forget",
                    "--keep-last",
                    "1",
                    "--database",
                    "three",
                    "--prune",
                ])
            });
            (
                a.join().expect("thread"),
                b.join().expect("thread"),
                c.join().expect("thread"),
            )
        });
        for (what, out) in [("backup one", a), ("backup two", b), ("forget --prune", c)] {
            let out = out.expect("run dbops");
            assert!(
                out.status.success(),
                "round {round}: {what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let list = ctx.run(&["--json", "list"]).ok().json();
    let count = |db: &str| {
        list["backups"]
            .as_array()
            .expect("backups")
            .iter()
            .filter(|b| b["database"] == db)
            .count()
    };
    assert_eq!(
        (count("one"), count("two"), count("three")),
        (2, 2, 1),
        "{list}"
    );
    let verified = ctx
        .run(&["--json", "--no-cache", "verify", "--all", "--read-data"])
        .ok()
        .json();
    assert_eq!(verified["ok"], true, "{verified}");
    // A restore of each group's newest backup gives that database back.
    for db in ["one", "two", "three"] {
        let target = format!("{db}_restored");
        ctx.run(&[
            "restore",
            &format!("latest:{db}"),
            &pg.url_for(&target),
            "--create",
        ])
        .ok();
        assert_eq!(table_checksums(&pg, &target), table_checksums(&pg, db));
    }

    // A damaged or deleted local cache gives the same answers as no cache at all.
    let cache = ctx.dir.path().join("cache");
    let truth = ctx.run(&["--json", "--no-cache", "list"]).ok().json();
    assert_eq!(ctx.run(&["--json", "list"]).ok().json(), truth);
    for file in walk(&cache) {
        let mut bytes = std::fs::read(&file).expect("read");
        if let Some(b) = bytes.get_mut(7) {
            *b ^= 0x20;
            std::fs::write(&file, &bytes).expect("damage");
        }
    }
    assert_eq!(ctx.run(&["--json", "list"]).ok().json(), truth);
    let after_damage = ctx
        .run(&["--json", "verify", "--all", "--read-data"])
        .ok()
        .json();
    assert_eq!(after_damage["ok"], true);
    std::fs::remove_dir_all(&cache).expect("delete cache");
    assert_eq!(ctx.run(&["--json", "list"]).ok().json(), truth);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
