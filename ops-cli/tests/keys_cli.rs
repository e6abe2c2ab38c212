//! Repository passwords as an operator manages them: several passwords open one
//! repository, one can be removed or changed, the last one can never be removed, and
//! a missing password is asked for on a terminal.

mod common;

use common::Ctx;

#[test]
fn passwords_are_added_removed_and_changed_but_never_the_last() {
    let ctx = Ctx::new();
    let init = ctx.run(&["init", "--kdf-memory-mib", "8"]).ok();
    assert!(
        init.stderr.contains("lost password") && init.stderr.contains("key add"),
        "init says once how to keep the password safe: {}",
        init.stderr
    );
    let list = ctx.run(&["--json", "key", "list"]).ok().json();
    let keys = list["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["current"], true);
    let original = keys[0]["id"].as_str().expect("id").to_owned();

    // Removing the only password is refused.
    let last = ctx.run(&["key", "remove", &original]);
    assert_eq!(last.code, 2, "{}", last.all());
    assert!(last.stderr.contains("last password"), "{}", last.stderr);

    let added = ctx
        .command(&["--json", "key", "add", "--kdf-memory-mib", "8"])
        .env("DBOPS_NEW_PASSWORD", "second password")
        .output()
        .expect("run");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&added.stdout).expect("json");
    let second = added["added"][0]["id"].as_str().expect("id").to_owned();
    let listed = ctx.run(&["--json", "key", "list"]).ok().stdout;
    assert!(
        !listed.contains("second password"),
        "no password is ever printed"
    );

    // The password in use cannot remove itself; the other one can remove it.
    let own = ctx.run(&["key", "remove", &original]);
    assert_eq!(own.code, 2, "{}", own.all());
    let as_second = |args: &[&str]| {
        ctx.command(args)
            .env("DBOPS_PASSWORD", "second password")
            .output()
            .expect("run")
    };
    let removed = as_second(&["key", "remove", &original]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let refused = ctx.run(&["list"]);
    assert_eq!(
        refused.code,
        5,
        "the old password no longer opens it: {}",
        refused.all()
    );
    assert!(as_second(&["list"]).status.success());

    // passwd replaces the password in use.
    let changed = ctx
        .command(&["key", "passwd", "--kdf-memory-mib", "8"])
        .env("DBOPS_PASSWORD", "second password")
        .env("DBOPS_NEW_PASSWORD", "third password")
        .output()
        .expect("run");
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    assert_eq!(as_second(&["list"]).status.code(), Some(5));
    let third = ctx
        .command(&["--json", "key", "list"])
        .env("DBOPS_PASSWORD", "third password")
        .output()
        .expect("run");
    let third: serde_json::Value = serde_json::from_slice(&third.stdout).expect("json");
    assert_eq!(third["keys"].as_array().expect("keys").len(), 1);
    assert_ne!(third["keys"][0]["id"], second.as_str());

    // A password file that cannot be read is "cannot open the repository" (5).
    let missing = ctx
        .command(&["--password-file", "/nonexistent/dbops-password", "list"])
        .env_remove("DBOPS_PASSWORD")
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(5));
}

#[test]
fn a_missing_password_is_asked_for_on_a_terminal() {
    let ctx = Ctx::new();
    ctx.init();
    // `script` gives dbops a pseudo-terminal; the password is typed into it.
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} --json list", env!("CARGO_BIN_EXE_dbops")),
            "/dev/null",
        ])
        .env("DBOPS_REPO", &ctx.repo)
        .env("DBOPS_CACHE_DIR", ctx.dir.path().join("cache"))
        .env_remove("DBOPS_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(format!("{}\n", ctx.password).as_bytes())?;
            child.wait_with_output()
        })
        .expect("run script (util-linux: apt-get install bsdutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("repository password:"), "{text}");
    assert!(text.contains("\"backups\""), "{text}");
    // Without a terminal nothing is asked: a clear error instead.
    let none = ctx
        .command(&["list"])
        .env_remove("DBOPS_PASSWORD")
        .output()
        .expect("run");
    assert_eq!(none.status.code(), Some(5));
}
