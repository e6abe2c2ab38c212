//! Connection URLs, TLS and the pinned session settings.
//!
//! Every connection dbops opens goes through [`connect`], so that the session settings
//! the data format depends on (time zone, character sets, sql_mode) are set in one
//! place. The password (from the URL or the sources of [`crate::credentials`]) lives
//! only in [`ConnConfig::password`] as a [`Secret`] and is handed to the driver at
//! connect time, in this process: no child program is ever given it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{ClientIdentity, Conn, OptsBuilder, Row, SslOpts, Value};
use ops_core::{Error, ErrorKind, Result, Secret, redact_url};

use crate::credentials::{self, Credentials, FromUrl};
use crate::error::{certificate_names, code, db_error, is_no_tls, server_code};

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
    ///
    /// mysql_async's rustls verifier cannot leave out only the host name check, so a
    /// certificate for another name is met with a second handshake that names the host
    /// as the certificate does: the chain (and the certificate's dates) are checked
    /// again in full, against the same CA.
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
    /// The client certificate and its key (`ssl-cert`, `ssl-key`), for accounts that
    /// `REQUIRE X509` or a subject.
    client_cert: Option<(PathBuf, PathBuf)>,
    socket: Option<String>,
    /// Where the password came from, for the message of a refused login.
    credentials: Arc<Credentials>,
    /// Set once a `prefer` connection found that the server has no TLS, so later
    /// connections skip the failing attempt.
    plain_only: AtomicBool,
}

impl ConnConfig {
    /// Parses a URL and finds what it leaves out in the environment and option files
    /// (see [`crate::credentials`]).
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let home = std::env::home_dir();
        Self::parse_with(text, &|name| std::env::var(name).ok(), home.as_deref())
    }

    /// [`ConnConfig::parse`] with the environment and home directory given.
    pub(crate) fn parse_with(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self> {
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
        let url_host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let url_user = if url.username().is_empty() {
            None
        } else {
            Some(decode(url.username())?)
        };
        let mut from_url = FromUrl {
            password: url.password().map(decode).transpose()?.map(Secret::new),
            ..FromUrl::default()
        };
        let database = decode(url.path().trim_start_matches('/'))?;
        let mut tls = TlsMode::Prefer;
        let mut ca_file = None;
        let (mut cert_file, mut key_file) = (None, None);
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
                                 verify-ca, verify-full (MySQL's DISABLED, PREFERRED, \
                                 REQUIRED, VERIFY_CA, VERIFY_IDENTITY are understood too)"
                            )));
                        }
                    }
                }
                "ssl-ca" | "sslrootcert" | "ssl_ca" => ca_file = Some(PathBuf::from(&*value)),
                "ssl-cert" | "sslcert" | "ssl_cert" => cert_file = Some(PathBuf::from(&*value)),
                "ssl-key" | "sslkey" | "ssl_key" => key_file = Some(PathBuf::from(&*value)),
                "socket" => socket = Some(value.into_owned()),
                "password" => from_url.password = Some(Secret::new(value.into_owned())),
                "password_file" | "password-file" => {
                    from_url.password_file = Some(PathBuf::from(&*value));
                }
                "defaults_file"
                | "defaults-file"
                | "defaults_extra_file"
                | "defaults-extra-file" => from_url.defaults_file = Some(PathBuf::from(&*value)),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown parameter '{other}' in the MariaDB URL {}; known: ssl-mode, \
                         ssl-ca, ssl-cert, ssl-key, socket, password_file, defaults_file",
                        redact_url(text)
                    )));
                }
            }
        }
        let credentials = credentials::resolve(from_url, env, home)?;
        let options = &credentials.options;
        let user = url_user
            .or_else(|| options.user.clone())
            .unwrap_or_else(|| "root".to_owned());
        let host = if url_host.is_empty() {
            options
                .host
                .clone()
                .unwrap_or_else(|| "localhost".to_owned())
        } else {
            url_host
        };
        let port = match (url.port(), &options.port) {
            (Some(p), _) => p,
            (None, Some(p)) => p.trim().parse().map_err(|_| {
                Error::invalid(format!(
                    "port '{p}' of an option file is not a port number (1-65535)"
                ))
            })?,
            (None, None) => 3306,
        };
        // As with the mariadb client, an option file's socket is for "localhost" only:
        // a URL naming an address means TCP to it.
        if socket.is_none() && host == "localhost" {
            socket.clone_from(&options.socket);
        }
        let password = credentials.password.clone();
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            return Err(Error::invalid(format!(
                "ssl-ca file {} does not exist",
                ca.display()
            )));
        }
        let client_cert = match (cert_file, key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                for (what, file) in [("ssl-cert", &cert), ("ssl-key", &key)] {
                    if !file.is_file() {
                        return Err(Error::invalid(format!(
                            "{what} file {} does not exist",
                            file.display()
                        )));
                    }
                }
                Some((cert, key))
            }
            _ => {
                return Err(Error::invalid(
                    "a client certificate needs both ssl-cert (the certificate) and ssl-key \
                     (its private key) in the URL",
                ));
            }
        };
        if client_cert.is_some() && tls == TlsMode::Disable {
            return Err(Error::invalid(
                "ssl-cert and ssl-key are given but ssl-mode=disable turns TLS off: drop \
                 ssl-mode=disable (or use verify-full)",
            ));
        }
        Ok(Self {
            port,
            url,
            host,
            user,
            password,
            database,
            tls,
            ca_file,
            client_cert,
            socket,
            credentials: Arc::new(credentials),
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
            client_cert: self.client_cert.clone(),
            socket: self.socket.clone(),
            credentials: Arc::clone(&self.credentials),
            plain_only: AtomicBool::new(self.plain_only.load(Ordering::Relaxed)),
        }
    }

    /// The same settings with `password`, which wins over every other source.
    pub(crate) fn with_password(&self, password: Secret) -> Self {
        let mut credentials = (*self.credentials).clone();
        credentials.password = password.clone();
        credentials.password_from = Some("the password given to the engine".to_owned());
        credentials
            .trail
            .insert(0, "the password given to the engine: used".to_owned());
        Self {
            password,
            credentials: Arc::new(credentials),
            ..self.with_database(&self.database)
        }
    }

    pub(crate) fn redacted_url(&self) -> String {
        redact_url(self.url.as_str())
    }

    /// A refused login, explained: which account, where its password came from, every
    /// source tried, and what to do.
    fn refused(&self, err: Error, no_password_auth: bool) -> Error {
        let message = credentials::explain_refusal(
            &self.user,
            &self.credentials,
            err.message(),
            no_password_auth,
        );
        err.with_message(message)
    }

    /// The TLS settings a client program is given (see `binlog`'s option file): the
    /// mode, the CA file and the client certificate and key.
    pub(crate) fn tls_files(&self) -> (TlsMode, Option<&Path>, Option<(&Path, &Path)>) {
        (
            self.tls,
            self.ca_file.as_deref(),
            self.client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )
    }

    fn ssl_opts(&self) -> Option<SslOpts> {
        let base = SslOpts::default();
        // A CA file given is the only one trusted, as the mariadb client does it.
        let base = match &self.ca_file {
            Some(ca) => base
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true),
            None => base,
        };
        let base = match &self.client_cert {
            Some((cert, key)) => base.with_client_identity(Some(ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            ))),
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
    let failed = |e: mysql_async::Error| {
        let no_password_auth = server_code(&e) == Some(code::ACCESS_DENIED_NO_PASSWORD);
        let err = db_error(e);
        let err = if err.kind() == ErrorKind::Authentication {
            config.refused(err, no_password_auth)
        } else {
            err
        };
        err.during(format!("connecting to {location}"))
    };
    let attempt = Conn::new(config.opts(database, tls.clone())).await;
    let mut conn = match attempt {
        Ok(c) => c,
        Err(e) if tls.is_some() && config.tls == TlsMode::Prefer && is_no_tls(&e) => {
            config.plain_only.store(true, Ordering::Relaxed);
            Conn::new(config.opts(database, None))
                .await
                .map_err(failed)?
        }
        // verify-ca and a certificate for another name (see `TlsMode::VerifyCa`).
        Err(e) if config.tls == TlsMode::VerifyCa && certificate_names(&e).is_some() => {
            let name = certificate_names(&e)
                .and_then(|names| names.into_iter().next())
                .ok_or_else(|| failed(e))?;
            let tls = tls.map(|t| t.with_danger_tls_hostname_override(Some(name)));
            Conn::new(config.opts(database, tls))
                .await
                .map_err(failed)?
        }
        Err(e) => return Err(failed(e)),
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

    fn parse(url: &str) -> Result<ConnConfig> {
        ConnConfig::parse_with(url, &|_| None, None)
    }

    #[test]
    fn parses_urls_and_modes() {
        let c = parse("mysql://bob:p%40ss@db:3310/shop?sslmode=verify-full").expect("valid");
        assert_eq!(c.host, "db");
        assert_eq!(c.port, 3310);
        assert_eq!(c.user, "bob");
        assert_eq!(c.password.expose(), "p@ss");
        assert_eq!(c.database, "shop");
        assert_eq!(c.tls, TlsMode::VerifyFull);
        let d = parse("mariadb://127.0.0.1/").expect("valid");
        assert_eq!(d.user, "root");
        assert_eq!(d.port, 3306);
        assert_eq!(d.tls, TlsMode::Prefer);
        assert!(d.database.is_empty());
        assert!(parse("postgres://x/y").is_err());
        assert!(parse("mariadb://x/y?ssl-mode=sometimes").is_err());
    }

    #[test]
    fn what_the_url_leaves_out_comes_from_elsewhere() {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            home.path().join(".my.cnf"),
            "[client]\nuser = filed\npassword = 'from file'\nport = 3311\n\
             socket = /run/mysqld/mysqld.sock\nhost = filed-host\n",
        )
        .expect("write");
        let env = |name: &str| (name == "MYSQL_PWD").then(|| "from-env".to_owned());
        let no_env = |_: &str| None;
        let h = Some(home.path());

        // The URL wins; the environment beats ~/.my.cnf.
        let c =
            ConnConfig::parse_with("mariadb://app:in-url@db:3307/shop", &env, h).expect("valid");
        assert_eq!((c.user.as_str(), c.password.expose()), ("app", "in-url"));
        let c = ConnConfig::parse_with("mariadb://app@db/shop", &env, h).expect("valid");
        assert_eq!(c.password.expose(), "from-env");
        assert_eq!(c.port, 3311, "port from the option file");
        assert_eq!(c.socket, None, "a socket is for localhost only");
        let c = ConnConfig::parse_with("mariadb://db/shop", &no_env, h).expect("valid");
        assert_eq!(
            (c.user.as_str(), c.password.expose()),
            ("filed", "from file")
        );
        // No host in the URL: the option file's.
        let c = ConnConfig::parse_with("mariadb:///shop", &no_env, h).expect("valid");
        assert_eq!(c.host, "filed-host");
        let c = ConnConfig::parse_with("mariadb://localhost/shop", &no_env, h).expect("valid");
        assert_eq!(c.socket.as_deref(), Some("/run/mysqld/mysqld.sock"));
        // An explicit empty password: none, and nothing else is asked.
        let c = ConnConfig::parse_with("mariadb://root@127.0.0.1:3306/x?password=", &env, h)
            .expect("valid");
        assert!(c.password.is_empty());
        assert_eq!(c.credentials.password_from.as_deref(), Some("the URL"));

        // password_file: its first line; defaults_file: that file first.
        let pw = home.path().join("pw");
        std::fs::write(&pw, "first line\nsecond\n").expect("write");
        let url = format!("mariadb://app@db/shop?password_file={}", pw.display());
        let c = ConnConfig::parse_with(&url, &env, h).expect("valid");
        assert_eq!(c.password.expose(), "first line");
        assert!(!c.redacted_url().contains("first line"));
        let extra = home.path().join("extra.cnf");
        std::fs::write(
            &extra,
            "[client-mariadb]\npassword=extra\nuser=extra-user\n",
        )
        .expect("write");
        let url = format!("mariadb://db/shop?defaults_file={}", extra.display());
        let c = ConnConfig::parse_with(&url, &env, h).expect("valid");
        assert_eq!(
            (c.user.as_str(), c.password.expose()),
            ("extra-user", "extra")
        );

        let url = "mariadb://db/shop?password_file=/nonexistent/pw";
        let err = ConnConfig::parse_with(url, &env, h)
            .err()
            .expect("must fail");
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
        let err = ConnConfig::parse_with("mariadb://db/shop?bogus=1", &env, h)
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("password_file"), "{err}");
    }

    #[test]
    fn errors_never_show_the_password() {
        for bad in [
            "mariadb://u:topsecret@h/db?ssl-mode=bogus",
            "mariadb://u:topsecret@h/db?what=1",
            "mariadb://u:topsecret@[bad/db",
            "postgres://u:topsecret@h/db",
        ] {
            let err = parse(bad).err().expect("must fail");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("topsecret"), "{text}");
        }
    }
}
