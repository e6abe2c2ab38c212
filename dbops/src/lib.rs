#![doc = include_str!("../README.md")]

// What lives here: re-exports, and the glue that picks an adapter from a URL or an
// engine name at run time. Nothing else: logic belongs in ops-core or an adapter, and
// words that name the command-line tool's flags or commands belong in ops-cli.

use std::sync::Arc;

pub use ops_core::repo::{
    BackupFilter, BackupGroup, BackupOptions, BackupStats, ChunkerParams, Encryption,
    ForgetOptions, ForgetReport, GroupBy, GroupDecisions, InitOptions, KdfParams, LastBackupAge,
    Manifest, Problem, Progress, PruneOptions, PruneReport, Repository, RestoreCheck,
    ServerDatabase, ServerRestoreOptions, ServerRestoreReport, StreamRecord, VerifyOptions,
    VerifyReport,
};
pub use ops_core::retention::KeepRules;
pub use ops_core::{
    BackupSummary, BackupTarget, ByteStream, DatabaseEngine, DumpOptions, DumpReport, DumpSink,
    EphemeralServer, Error, ErrorKind, ErrorStatus, GlobalsOptions, GlobalsPhase, GlobalsReport,
    GlobalsRestoreOptions, HealthCheck, HealthReport, HealthStatus, ObjectMeta, ObjectStream,
    PutOutcome, RestoreOptions, RestoreReport, Result, RetentionDecision, RetentionPolicy, Secret,
    ServerInfo, StreamRole, StreamSource, StreamSpec, StreamSummary, StreamWriter, TableInfo,
    TableRef, VERSION, redact_url,
};
pub use ops_storage::TargetOptions;

// The rest of ops-core, by module, for what the root leaves out.
#[cfg(feature = "testkit")]
pub use ops_core::testkit;
pub use ops_core::{digest, health, jobs, maintain, repo, retention, schedule, secret};

/// The PostgreSQL engine, its throwaway server and its health checks (`ops-postgres`).
pub use ops_postgres as postgres;

/// The MariaDB (and MySQL) engine, its throwaway server and its health checks
/// (`ops-mariadb`).
pub use ops_mariadb as mariadb;

/// Storage targets: local directory, memory, S3 (GCS and Azure behind features),
/// retries and fault injection (`ops-storage`).
pub use ops_storage as storage;

// Third-party crates whose types appear in the public API, at the versions dbops uses.
pub use ops_core::{async_trait, bytes, chrono, futures};

/// The engine for a database URL, by scheme: `postgres://` and `postgresql://` are
/// PostgreSQL, `mariadb://` and `mysql://` are MariaDB (and MySQL).
///
/// Creating an engine only parses the URL (and reads the engine's password sources);
/// every operation connects anew.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for another scheme; the engine's own URL errors.
pub fn engine(url: &str) -> Result<Arc<dyn DatabaseEngine>> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(Arc::new(postgres::PostgresEngine::new(url)?)),
        Some("mariadb" | "mysql") => Ok(Arc::new(mariadb::MariaDbEngine::new(url)?)),
        _ => Err(unknown_scheme(url)),
    }
}

/// The engine for a database URL, with a password given apart from the URL: it wins
/// over every other source (the URL, the engine's environment variables and files)
/// and never shows in a message.
///
/// # Errors
/// As [`engine`].
pub fn engine_with_password(url: &str, password: Secret) -> Result<Arc<dyn DatabaseEngine>> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(Arc::new(
            postgres::PostgresEngine::new(url)?.with_password(password),
        )),
        Some("mariadb" | "mysql") => Ok(Arc::new(
            mariadb::MariaDbEngine::new(url)?.with_password(password),
        )),
        _ => engine(url),
    }
}

/// The maintenance side of the database at `url` (inspection, maintenance actions,
/// sessions, integrity queries, archiving; see [`maintain::Maintenance`]), by scheme
/// as [`engine`].
///
/// # Errors
/// As [`engine`].
pub fn maintenance(url: &str) -> Result<Arc<dyn maintain::Maintenance>> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(Arc::new(postgres::PostgresEngine::new(url)?)),
        Some("mariadb" | "mysql") => Ok(Arc::new(mariadb::MariaDbEngine::new(url)?)),
        _ => Err(unknown_scheme(url)),
    }
}

/// [`maintenance`] with a password given apart from the URL (see
/// [`engine_with_password`]).
///
/// # Errors
/// As [`engine`].
pub fn maintenance_with_password(
    url: &str,
    password: Secret,
) -> Result<Arc<dyn maintain::Maintenance>> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(Arc::new(
            postgres::PostgresEngine::new(url)?.with_password(password),
        )),
        Some("mariadb" | "mysql") => Ok(Arc::new(
            mariadb::MariaDbEngine::new(url)?.with_password(password),
        )),
        _ => maintenance(url),
    }
}

fn unknown_scheme(url: &str) -> Error {
    Error::invalid(format!(
        "'{}' is not a database URL dbops knows: use postgres://…, postgresql://…, mariadb://… or mysql://…",
        redact_url(url)
    ))
}

/// The storage target at `url` (a directory, `memory://`, `s3://…`; see
/// [`storage::open_target`]), with retries of idempotent calls unless `options` turn
/// them off.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for a URL no target serves or one that carries
/// credentials; the store's configuration errors.
pub fn target(url: &str, options: &TargetOptions) -> Result<Arc<dyn BackupTarget>> {
    storage::open_target(url, options)
}

/// Starts a throwaway local server for `engine`, named as a manifest names it
/// (`postgresql`, `mariadb`), from the binaries installed on this machine. Dropping
/// it stops the server and removes its files.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for an engine without a throwaway server;
/// [`ErrorKind::MissingTool`] (naming the package) when the server binaries are not
/// installed; the server's start-up errors.
pub async fn scratch_server(engine: &str) -> Result<Box<dyn EphemeralServer>> {
    match engine {
        "postgresql" => Ok(Box::new(
            postgres::ephemeral::EphemeralPostgres::start().await?,
        )),
        "mariadb" => Ok(Box::new(
            mariadb::ephemeral::EphemeralMariaDb::start().await?,
        )),
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("no throwaway server for engine '{other}': restore into a database you give"),
        )),
    }
}

/// The URL of database `name` on the server of `url` (the path replaced; user,
/// password, host and query kept).
///
/// # Errors
/// [`ErrorKind::InvalidInput`] when `url` does not parse.
pub fn with_database(url: &str, name: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid(format!("bad database URL {}: {e}", redact_url(url))))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

/// The restore proof: restores `manifest` into a scratch database and compares every
/// table with what the backup stored (row counts and a digest of every row).
///
/// With `into`, the scratch database is that URL's: created for the proof and dropped
/// after when it did not exist, used as it is (it must be empty) when it did. Without,
/// a throwaway local server of the backup's engine is started, the restore creates
/// there what the backup needs to stand (roles, definers: see
/// [`RestoreOptions::scratch`]), and the server is removed afterwards.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] when `into` is another engine's database, or no
/// throwaway server exists for the engine; [`ErrorKind::MissingTool`] when the server
/// binaries are not installed; the restore's errors (damaged data is
/// [`ErrorKind::Corrupt`]).
pub async fn prove_restore(
    repo: &Repository,
    manifest: &Manifest,
    into: Option<&str>,
    options: &RestoreOptions,
) -> Result<RestoreCheck> {
    prove_restore_checked(repo, manifest, into, options, &[])
        .await
        .map(|(check, _)| check)
}

/// [`prove_restore`], and then, on the restored copy before it is dropped, the
/// application's integrity checks (see [`maintain::IntegrityCheck`]): the backup
/// restores *and* the application's invariants hold in it. The checks run only when
/// every table matched.
///
/// # Errors
/// As [`prove_restore`]. A check that fails or cannot run is a result, not an error.
pub async fn prove_restore_checked(
    repo: &Repository,
    manifest: &Manifest,
    into: Option<&str>,
    options: &RestoreOptions,
    checks: &[maintain::IntegrityCheck],
) -> Result<(RestoreCheck, Vec<maintain::IntegrityResult>)> {
    let integrity = async |url: &str, check: &RestoreCheck| {
        if checks.is_empty() || !check.ok() {
            return Ok(Vec::new());
        }
        let db = maintenance(url)?;
        let mut results = Vec::with_capacity(checks.len());
        for c in checks {
            results.push(c.run(db.as_ref()).await);
        }
        Ok::<_, Error>(results)
    };
    match into {
        Some(url) => {
            let engine = engine(url)?;
            same_engine(manifest, engine.name())?;
            match repo
                .verify_restore(
                    manifest,
                    engine.as_ref(),
                    &options.clone().with_create(true),
                )
                .await
            {
                Ok(check) => {
                    let results = integrity(url, &check).await;
                    if let Err(e) = engine.drop_database().await {
                        tracing::warn!("could not drop the scratch database: {e}");
                    }
                    Ok((check, results?))
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let check = repo
                        .verify_restore(manifest, engine.as_ref(), options)
                        .await?;
                    let results = integrity(url, &check).await?;
                    Ok((check, results))
                }
                Err(e) => Err(e),
            }
        }
        None => {
            let server = scratch_server(&manifest.engine).await?;
            let name = format!(
                "dbops_verify_{}",
                manifest.id.replace(['-', '.'], "_").to_ascii_lowercase()
            );
            let url = with_database(&server.url(), &name)?;
            let engine = engine(&url)?;
            let check = repo
                .verify_restore(
                    manifest,
                    engine.as_ref(),
                    &options.clone().with_create(true).with_scratch(true),
                )
                .await;
            let out = match check {
                Ok(check) => integrity(&url, &check).await.map(|r| (check, r)),
                Err(e) => Err(e),
            };
            drop(server);
            out
        }
    }
}

/// Refuses to restore `manifest` into another engine's database.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] naming both engines.
pub fn same_engine(manifest: &Manifest, engine: &str) -> Result<()> {
    manifest.require_engine(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_by_scheme() {
        for (url, name) in [
            ("postgres://u@h/db", "postgresql"),
            ("PostgreSQL://u@h/db", "postgresql"),
            ("mariadb://u@h/db", "mariadb"),
            ("mysql://u@h/db", "mariadb"),
        ] {
            assert_eq!(engine(url).map(|e| e.name()).ok(), Some(name), "{url}");
        }
        let err = engine("oracle://scott:tiger@h/db").err();
        let err = err.as_ref().map(|e| (e.kind(), e.to_string()));
        assert!(
            matches!(&err, Some((ErrorKind::InvalidInput, m)) if !m.contains("tiger")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unknown_engine_has_no_scratch_server_and_names_no_flag() {
        let err = scratch_server("oracle").await.err();
        let err = err.as_ref().map(|e| (e.kind(), e.to_string()));
        assert!(
            matches!(&err, Some((ErrorKind::InvalidInput, m)) if m.contains("oracle") && !m.contains("--")),
            "{err:?}"
        );
    }

    #[test]
    fn with_database_keeps_credentials_and_query() {
        assert_eq!(
            with_database("mariadb://root@127.0.0.1:3306/?password=", "shop").ok(),
            Some("mariadb://root@127.0.0.1:3306/shop?password=".to_owned())
        );
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres?sslmode=disable", "x").ok(),
            Some("postgres://u:p@h:5/x?sslmode=disable".to_owned())
        );
        assert!(with_database("not a url", "x").is_err());
    }
}
