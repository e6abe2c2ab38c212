//! Which engine serves a URL, and throwaway servers for `verify --restore`.
//! Adding an engine to the CLI is one arm in each function here.

use std::any::Any;
use std::sync::Arc;

use ops_core::{DatabaseEngine, Error, ErrorKind, Result};

/// The engine for a database URL, by scheme.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for an unknown scheme; the engine's URL errors.
pub fn engine_for_url(url: &str) -> Result<Arc<dyn DatabaseEngine>> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(Arc::new(ops_postgres::PostgresEngine::new(url)?)),
        Some("mariadb" | "mysql") => Ok(Arc::new(ops_mariadb::MariaDbEngine::new(url)?)),
        _ => Err(Error::invalid(format!(
            "'{}' is not a database URL dbops knows: use postgres://…, postgresql://…, mariadb://… or mysql://…",
            ops_core::redact_url(url)
        ))),
    }
}

/// A throwaway local server; dropped, it stops and removes everything.
pub struct Scratch {
    /// URL of the server's maintenance database.
    pub url: String,
    _server: Box<dyn Any + Send>,
}

/// Starts a throwaway server for `engine` (the name stored in a manifest).
///
/// # Errors
/// [`ErrorKind::MissingTool`] when the server binaries are not installed.
pub async fn scratch_server(engine: &str) -> Result<Scratch> {
    match engine {
        "postgresql" => {
            let server = ops_postgres::ephemeral::EphemeralPostgres::start().await?;
            Ok(Scratch {
                url: server.url(),
                _server: Box::new(server),
            })
        }
        "mariadb" => {
            let server = ops_mariadb::ephemeral::EphemeralMariaDb::start().await?;
            Ok(Scratch {
                url: server.url(),
                _server: Box::new(server),
            })
        }
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("no throwaway server for engine '{other}': pass --into DB_URL"),
        )),
    }
}

/// The URL of database `name` on the server of `url`.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] when `url` does not parse.
pub fn with_database(url: &str, name: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url).map_err(|e| {
        Error::invalid(format!(
            "bad database URL {}: {e}",
            ops_core::redact_url(url)
        ))
    })?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}
