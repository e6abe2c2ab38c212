//! What an operator sees: progress with a total on a terminal, nothing of it (and no
//! colour) in a log file, each warning once.

mod common;

use common::{Ctx, database_with_rows};
use ops_mariadb::ephemeral::EphemeralMariaDb;
use ops_postgres::ephemeral::EphemeralPostgres;

/// Runs dbops under a pseudo-terminal (util-linux `script`); returns what the terminal
/// showed.
fn on_terminal(ctx: &Ctx, args: &str) -> (bool, String) {
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} {args}", env!("CARGO_BIN_EXE_dbops")),
            "/dev/null",
        ])
        .env("DBOPS_REPO", &ctx.repo)
        .env("DBOPS_PASSWORD", &ctx.password)
        .env("DBOPS_CACHE_DIR", ctx.dir.path().join("cache"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_on_a_terminal_and_plain_logs_elsewhere() {
    let pg = EphemeralPostgres::start().await.expect("start postgres");
    database_with_rows(&pg, "shop", 100_000, 8).await;
    let ctx = Ctx::new();
    ctx.init();
    ctx.run(&["backup", &pg.url_for("shop")]).ok();

    for (what, args) in [
        (
            "restore",
            format!("restore latest {} --create", pg.url_for("shop_copy")),
        ),
        ("verify", "verify latest --read-data".to_owned()),
    ] {
        let (ok, screen) = on_terminal(&ctx, &args);
        assert!(ok, "{screen}");
        let line = screen
            .lines()
            .flat_map(|l| l.split('\r'))
            .find(|l| l.contains(&format!("{what}: ")) && l.contains(" of ") && l.contains('%'))
            .unwrap_or_else(|| panic!("no progress with a total for {what}: {screen:?}"));
        assert!(line.contains("streams"), "{line}");
    }
    // Piped, the same commands print no progress and no escape sequence.
    let piped = ctx.run(&["verify", "latest", "--read-data"]).ok();
    assert!(!piped.stderr.contains("verify: "), "{}", piped.stderr);
    assert!(!piped.all().contains('\u{1b}'), "{:?}", piped.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_is_printed_once_without_colour() {
    let server = EphemeralMariaDb::start().await.expect("start mariadb");
    let out = std::process::Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", "-N", "-B"])
        .arg(format!("-P{}", server.port()))
        .args([
            "-e",
            "CREATE DATABASE shop; USE shop; \
             CREATE TABLE a (id int PRIMARY KEY) ENGINE=InnoDB; \
             CREATE TABLE legacy (id int PRIMARY KEY) ENGINE=MyISAM; \
             INSERT INTO a VALUES (1),(2); INSERT INTO legacy VALUES (1);",
        ])
        .output()
        .expect("mariadb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctx = Ctx::new();
    ctx.init();
    let b = ctx.run(&["backup", &server.url_for("shop")]).ok();
    assert_eq!(
        b.stderr.matches("not transactional").count(),
        1,
        "the warning appears once: {}",
        b.stderr
    );
    assert!(
        !b.stderr.contains('\u{1b}'),
        "no ANSI codes off a terminal: {:?}",
        b.stderr
    );
    let json = ctx.run(&["--json", "show", "latest"]).ok().json();
    assert_eq!(json["warnings"].as_array().map(Vec::len), Some(1));
}
