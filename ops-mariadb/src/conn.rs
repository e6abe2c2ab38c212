//! Connection URLs, TLS and the pinned session settings.
//!
//! Every connection dbops opens goes through [`connect`], so that the session settings
//! the data format depends on (time zone, character sets, sql_mode) are set in one
//! place. The password lives only in [`ConnConfig::password`] as a [`Secret`] and is
//! handed to the driver at connect time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, SslOpts, Value};
use ops_core::{Error, Result, Secret, redact_url};

use crate::error::{db_error, is_no_tls};

/// How a connection uses TLS (rustls; no OpenSSL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    Prefer,
    /// TLS; the certificate is not checked.
    Require,
    /// TLS; the certificate chain is checked (against `ssl-ca` when given), the host
    /// name is not.
    VerifyCa,
    /// TLS; the certificate chain and the host name are checked.
    VerifyFull,
}

/// A parsed connection URL.
pub(crate) struct ConnConfig {
    url: url::Url,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: Secret,
    pub(crate) database: String,
    pub(crate) tls: TlsMode,
    ca_file: Option<PathBuf>,
    socket: Option<String>,
    /// Set once a `prefer` connection found that the server has no TLS, so later
    /// connections skip the failing attempt.
    plain_only: AtomicBool,
}

impl ConnConfig {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let url = url::Url::parse(text).map_err(|e| {
            Error::invalid(format!(
                "'{}' is not a MariaDB URL ({e}); write mariadb://user:password@host:port/database",
                redact_url(text)
            ))
        })?;
        if url.scheme() != "mariadb" && url.scheme() != "mysql" {
            return Err(Error::invalid(format!(
                "'{}' is not a MariaDB URL: the scheme must be mariadb:// or mysql://",
                redact_url(text)
            )));
        }
        let decode = |s: &str| -> Result<String> {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| Error::invalid("bad percent-encoding in the URL"))
        };
        let host = url.host_str().unwrap_or("localhost").to_owned();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let user = if url.username().is_empty() {
            "root".to_owned()
        } else {
            decode(url.username())?
        };
        let mut password = Secret::new(match url.password() {
            Some(p) => decode(p)?,
            None => String::new(),
        });
        let database = decode(url.path().trim_start_matches('/'))?;
        let mut tls = TlsMode::Prefer;
        let mut ca_file = None;
        let mut socket = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "ssl-mode" | "sslmode" | "ssl_mode" => {
                    tls = match value.to_ascii_lowercase().replace('_', "-").as_str() {
                        "disable" | "disabled" => TlsMode::Disable,
                        "prefer" | "preferred" => TlsMode::Prefer,
                        "require" | "required" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" | "verify-identity" => TlsMode::VerifyFull,
                        other => {
                            return Err(Error::invalid(format!(
                                "ssl-mode '{other}' is not one of disable, prefer, require, \
                                 verify-ca, verify-full"
                            )));
                        }
                    }
                }
                "ssl-ca" | "sslrootcert" | "ssl_ca" => ca_file = Some(PathBuf::from(&*value)),
                "socket" => socket = Some(value.into_owned()),
                "password" => password = Secret::new(value.into_owned()),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown parameter '{other}' in the MariaDB URL {}; known: ssl-mode, \
                         ssl-ca, socket",
                        redact_url(text)
                    )));
                }
            }
        }
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            return Err(Error::invalid(format!(
                "ssl-ca file {} does not exist",
                ca.display()
            )));
        }
        Ok(Self {
            port: url.port().unwrap_or(3306),
            url,
            host,
            user,
            password,
            database,
            tls,
            ca_file,
            socket,
            plain_only: AtomicBool::new(false),
        })
    }

    pub(crate) fn with_database(&self, name: &str) -> Self {
        let mut url = self.url.clone();
        url.set_path(&format!("/{name}"));
        Self {
            url,
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            database: name.to_owned(),
            tls: self.tls,
            ca_file: self.ca_file.clone(),
            socket: self.socket.clone(),
            plain_only: AtomicBool::new(self.plain_only.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn redacted_url(&self) -> String {
        redact_url(self.url.as_str())
    }

    fn ssl_opts(&self) -> Option<SslOpts> {
        let base = SslOpts::default();
        let base = match &self.ca_file {
            Some(ca) => base.with_root_certs(vec![ca.clone().into()]),
            None => base,
        };
        match self.tls {
            TlsMode::Disable => None,
            TlsMode::Prefer | TlsMode::Require => Some(
                base.with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyCa => Some(base.with_danger_skip_domain_validation(true)),
            TlsMode::VerifyFull => Some(base),
        }
    }

    fn opts(&self, database: Option<&str>, tls: Option<SslOpts>) -> OptsBuilder {
        let builder = OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(if self.password.is_empty() {
                None
            } else {
                Some(self.password.expose().to_owned())
            })
            .db_name(database.map(str::to_owned))
            .prefer_socket(false)
            .socket(self.socket.clone())
            .stmt_cache_size(0)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .max_allowed_packet(Some(64 * 1024 * 1024));
        builder.ssl_opts(tls)
    }
}

/// Which pinned settings a connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    /// Catalog and DDL reading: results in utf8mb4, `sql_mode=''` so that `SHOW CREATE`
    /// prints plain MariaDB syntax.
    Catalog,
    /// Row streaming: as `Catalog`, plus results as raw bytes in each column's own
    /// character set (no conversion, so nothing can be lost).
    DumpData,
    /// Restore: permissive sql_mode (zero dates, `0` in AUTO_INCREMENT columns kept),
    /// checks off while loading, and as many warnings kept as the server can list
    /// (each warning of a load is judged).
    Restore,
}

impl Session {
    fn statements(self) -> &'static [&'static str] {
        match self {
            Session::Catalog => &[
                "SET NAMES utf8mb4",
                "SET SESSION time_zone = '+00:00', sql_mode = '', \
                 net_read_timeout = 3600, net_write_timeout = 3600, wait_timeout = 86400",
            ],
            Session::DumpData => &[
                "SET NAMES utf8mb4",
                "SET SESSION time_zone = '+00:00', sql_mode = '', character_set_results = binary, \
                 net_read_timeout = 3600, net_write_timeout = 3600, wait_timeout = 86400",
            ],
            Session::Restore => &[
                "SET NAMES utf8mb4",
                "SET SESSION time_zone = '+00:00', \
                 sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', \
                 foreign_key_checks = 0, unique_checks = 0, \
                 net_read_timeout = 3600, net_write_timeout = 3600, wait_timeout = 86400, \
                 innodb_lock_wait_timeout = 86400, lock_wait_timeout = 86400, \
                 max_error_count = 65535",
            ],
        }
    }
}

/// The SQL that restores a [`Session::Restore`] connection to its pinned defaults after
/// an object changed them.
pub(crate) const RESTORE_DEFAULTS: &str = "SET SESSION \
     sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', \
     character_set_client = utf8mb4, character_set_results = utf8mb4, \
     collation_connection = utf8mb4_general_ci";

/// Connects to `database` (or to no database) and pins the session settings.
///
/// # Errors
/// Unreachable server, failed authentication, unknown database, TLS failures.
pub(crate) async fn connect(
    config: &ConnConfig,
    database: Option<&str>,
    session: Session,
) -> Result<Conn> {
    let location = config.redacted_url();
    let tls = if config.tls == TlsMode::Prefer && config.plain_only.load(Ordering::Relaxed) {
        None
    } else {
        config.ssl_opts()
    };
    let attempt = Conn::new(config.opts(database, tls.clone())).await;
    let mut conn = match attempt {
        Ok(c) => c,
        Err(e) if tls.is_some() && config.tls == TlsMode::Prefer && is_no_tls(&e) => {
            config.plain_only.store(true, Ordering::Relaxed);
            Conn::new(config.opts(database, None))
                .await
                .map_err(|e| db_error(e).during(format!("connecting to {location}")))?
        }
        Err(e) => return Err(db_error(e).during(format!("connecting to {location}"))),
    };
    for sql in session.statements() {
        conn.query_drop(*sql)
            .await
            .map_err(|e| db_error(e).during("setting up the session"))?;
    }
    Ok(conn)
}

/// Closes a connection politely; errors do not matter any more at this point.
pub(crate) async fn disconnect(conn: Conn) {
    if let Err(e) = conn.disconnect().await {
        tracing::debug!("closing a MariaDB connection: {e}");
    }
}

/// Runs one statement that returns no rows.
pub(crate) async fn exec(conn: &mut Conn, sql: &str) -> Result<()> {
    conn.query_drop(sql).await.map_err(db_error)
}

/// Runs a query and collects its (small, catalog) result.
pub(crate) async fn query_rows(conn: &mut Conn, sql: &str) -> Result<Vec<Row>> {
    conn.query::<Row, _>(sql).await.map_err(db_error)
}

/// The first column of the first row as text.
pub(crate) async fn query_string(conn: &mut Conn, sql: &str) -> Result<String> {
    let rows = query_rows(conn, sql).await?;
    match rows.first() {
        Some(row) => text(row, 0),
        None => Err(Error::internal(format!("'{sql}' returned no row"))),
    }
}

/// The first column of every row as text.
pub(crate) async fn query_strings(conn: &mut Conn, sql: &str) -> Result<Vec<String>> {
    query_rows(conn, sql)
        .await?
        .iter()
        .map(|r| text(r, 0))
        .collect()
}

/// Column `i` of a text-protocol row as a string; NULL is an error.
pub(crate) fn text(row: &Row, i: usize) -> Result<String> {
    opt_text(row, i)?.ok_or_else(|| Error::internal(format!("unexpected NULL in column {i}")))
}

/// Column `i` of a text-protocol row as a string, NULL as `None`.
pub(crate) fn opt_text(row: &Row, i: usize) -> Result<Option<String>> {
    match row.as_ref(i) {
        None => Err(Error::internal(format!("result has no column {i}"))),
        Some(Value::NULL) => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
        Some(other) => Ok(Some(other.as_sql(true).trim_matches('\'').to_owned())),
    }
}

/// Column `i` as an unsigned number (NULL is 0).
pub(crate) fn number(row: &Row, i: usize) -> Result<u64> {
    match opt_text(row, i)? {
        None => Ok(0),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| Error::internal(format!("'{s}' in column {i} is not a number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_modes() {
        let c = ConnConfig::parse("mysql://bob:p%40ss@db:3310/shop?sslmode=verify-full")
            .expect("valid");
        assert_eq!(c.host, "db");
        assert_eq!(c.port, 3310);
        assert_eq!(c.user, "bob");
        assert_eq!(c.password.expose(), "p@ss");
        assert_eq!(c.database, "shop");
        assert_eq!(c.tls, TlsMode::VerifyFull);
        let d = ConnConfig::parse("mariadb://127.0.0.1/").expect("valid");
        assert_eq!(d.user, "root");
        assert_eq!(d.port, 3306);
        assert_eq!(d.tls, TlsMode::Prefer);
        assert!(d.database.is_empty());
        assert!(ConnConfig::parse("postgres://x/y").is_err());
        assert!(ConnConfig::parse("mariadb://x/y?ssl-mode=sometimes").is_err());
    }

    #[test]
    fn errors_never_show_the_password() {
        for bad in [
            "mariadb://u:topsecret@h/db?ssl-mode=bogus",
            "mariadb://u:topsecret@h/db?what=1",
            "mariadb://u:topsecret@[bad/db",
            "postgres://u:topsecret@h/db",
        ] {
            let err = ConnConfig::parse(bad).err().expect("must fail");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("topsecret"), "{text}");
        }
    }
}
