//! Finding and running the PostgreSQL client and server programs.
//!
//! Search order for a program: an explicit directory (`with_bin_dir`), then
//! `DBOPS_PG_BINDIR`, `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin`, and
//! finally `PATH`. A missing program is [`ErrorKind::MissingTool`] naming the Debian
//! package that provides it; it is never skipped silently.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use ops_core::{Error, ErrorKind, Result};
use tokio::io::AsyncReadExt;

/// The Debian package that ships `program`.
pub(crate) fn package_for(program: &str) -> &'static str {
    match program {
        "pg_dump" | "pg_restore" | "psql" | "pg_dumpall" => "postgresql-client",
        "pgbench" => "postgresql-contrib",
        _ => "postgresql",
    }
}

fn missing(program: &str, searched: &str) -> Error {
    Error::new(
        ErrorKind::MissingTool,
        format!(
            "{program} not found ({searched}): install it with `apt-get install {}` \
             (Debian/Ubuntu), or give the directory holding it \
             (PostgresEngine::with_bin_dir, or the DBOPS_PG_BINDIR environment variable)",
            package_for(program)
        ),
    )
}

/// Candidate directories in search order (without PATH).
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("DBOPS_PG_BINDIR") {
        dirs.push(PathBuf::from(dir));
        // An explicit choice is final: do not look elsewhere.
        return dirs;
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !text.is_empty() {
            dirs.push(PathBuf::from(text));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, p)| p));
    }
    dirs
}

/// Finds `program`: in `explicit` only when given, else along the search order.
///
/// # Errors
/// [`ErrorKind::MissingTool`] naming the package to install.
pub(crate) fn find_program(program: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        let p = dir.join(program);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(missing(program, &format!("looked in {}", dir.display())))
        };
    }
    let from_env = std::env::var_os("DBOPS_PG_BINDIR").is_some();
    for dir in candidate_dirs() {
        let p = dir.join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    if from_env {
        return Err(missing(program, "looked in DBOPS_PG_BINDIR"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(program);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(missing(
        program,
        "looked in DBOPS_PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin and PATH",
    ))
}

/// [`find_program`] on a blocking thread (it may run `pg_config` and read directories),
/// then `program --version`: the path and its major version.
///
/// # Errors
/// [`ErrorKind::MissingTool`] naming the package to install; a program that does not
/// run or prints no PostgreSQL version.
pub(crate) async fn resolve_program(
    program: &'static str,
    explicit: Option<PathBuf>,
) -> Result<(PathBuf, u32)> {
    let path = tokio::task::spawn_blocking(move || find_program(program, explicit.as_deref()))
        .await
        .map_err(|e| Error::internal(format!("looking for {program} failed: {e}")))??;
    let major = tool_major(&path).await?;
    Ok((path, major))
}

/// The directory holding the server programs (initdb and postgres together).
///
/// # Errors
/// [`ErrorKind::MissingTool`] naming the package to install.
pub(crate) fn find_server_bin_dir() -> Result<PathBuf> {
    let initdb = find_program("initdb", None)?;
    let dir = initdb
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !dir.join("postgres").is_file() {
        return Err(missing(
            "postgres",
            &format!("looked next to {}", initdb.display()),
        ));
    }
    Ok(dir)
}

/// Parses the major version out of `pg_dump (PostgreSQL) 15.4 (Debian …)`.
pub(crate) fn parse_tool_major(version_output: &str) -> Option<u32> {
    let rest = version_output.split(")").nth(1)?.trim();
    let num = rest.split_whitespace().next()?;
    let major = num.split(['.', 'b', 'r', 'd']).next()?;
    major.parse().ok()
}

/// Major version from `server_version_num` (e.g. 150004 → 15; 90624 → 9).
pub(crate) fn server_major(version_num: i32) -> u32 {
    u32::try_from(version_num / 10000).unwrap_or(0)
}

/// Refuses a client tool older than the server it will talk to.
///
/// # Errors
/// [`ErrorKind::MissingTool`] saying which client to install.
pub(crate) fn check_client_version(tool: &str, tool_major: u32, server_major: u32) -> Result<()> {
    if tool_major < server_major {
        return Err(Error::new(
            ErrorKind::MissingTool,
            format!(
                "{tool} {tool_major} is older than the server {server_major}: install \
                 postgresql-client-{server_major} (`apt-get install \
                 postgresql-client-{server_major}`) or give its bin directory \
                 (PostgresEngine::with_bin_dir, or the DBOPS_PG_BINDIR environment variable)"
            ),
        ));
    }
    Ok(())
}

/// Runs `program --version` and returns the major version.
///
/// # Errors
/// The program cannot run or prints something unexpected.
pub(crate) async fn tool_major(program: &Path) -> Result<u32> {
    let out = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::io(format!("running {} --version", program.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_tool_major(&text).ok_or_else(|| {
        Error::new(
            ErrorKind::MissingTool,
            format!(
                "{} --version printed '{}', not a PostgreSQL version",
                program.display(),
                text.trim()
            ),
        )
    })
}

/// Collects a child's stderr, keeping at most the last 64 KiB.
pub(crate) async fn read_tail(mut reader: impl tokio::io::AsyncRead + Unpin) -> String {
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * KEEP {
                    kept.drain(..kept.len() - KEEP);
                }
            }
        }
    }
    if kept.len() > KEEP {
        kept.drain(..kept.len() - KEEP);
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(
            parse_tool_major("pg_restore (PostgreSQL) 17devel"),
            Some(17)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_tool_major("nonsense"), None);
        assert_eq!(server_major(150004), 15);
        assert_eq!(server_major(90624), 9);
    }

    #[test]
    fn older_client_is_refused_with_the_package_name() {
        let err = check_client_version("pg_dump", 14, 16).expect_err("older must fail");
        assert_eq!(err.kind(), ErrorKind::MissingTool);
        assert!(
            err.message()
                .contains("pg_dump 14 is older than the server 16")
        );
        assert!(err.message().contains("postgresql-client-16"));
        assert!(check_client_version("pg_dump", 16, 16).is_ok());
        assert!(check_client_version("pg_dump", 17, 16).is_ok());
    }

    #[test]
    fn missing_program_names_the_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = find_program("pg_dump", Some(dir.path())).expect_err("empty dir");
        assert_eq!(err.kind(), ErrorKind::MissingTool);
        assert!(err.message().contains("apt-get install postgresql-client"));
    }
}
