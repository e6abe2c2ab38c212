//! Connection settings: a `postgres://` URL completed, the way libpq does it, by a
//! connection service (`service=` or `PGSERVICE`), the standard `PG*` environment
//! variables and libpq's defaults; the password, when none is given, comes from the
//! password file (`passfile=`, `PGPASSFILE` or `~/.pgpass`).
//!
//! Everything that leaves this module for display goes through
//! [`ConnConfig::redacted_url`], which never contains the password. The password itself
//! is only exposed to tokio-postgres, sqlx, and a private temporary `PGPASSFILE` for the
//! pg_dump/pg_restore child processes (never their command line or environment).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ops_core::{Error, ErrorKind, Result, Secret};

use crate::credentials::{self, PassKey, PassfileOutcome};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without certificate verification.
    #[default]
    Prefer,
    /// TLS, without certificate verification unless a root certificate is given.
    Require,
    /// TLS, certificate chain verified, host name not checked.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" | "allow" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(Error::invalid(format!(
                    "sslmode '{other}' is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    /// The libpq spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's Unix socket.
    Socket(PathBuf),
}

impl Host {
    fn parse(text: &str) -> Self {
        if text.starts_with('/') {
            Self::Socket(PathBuf::from(text))
        } else {
            Self::Tcp(text.to_owned())
        }
    }

    fn as_libpq(&self) -> String {
        match self {
            Self::Tcp(h) => h.clone(),
            Self::Socket(p) => p.display().to_string(),
        }
    }
}

/// Complete connection settings for one database.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// Where `password` came from, or what was tried.
    pub password_source: PasswordSource,
    /// The password file consulted when no password is given.
    passfile: Option<Passfile>,
    /// The database was named (URL, `dbname=`, service, `PGDATABASE`), not libpq's
    /// default (the user's name).
    pub dbname_given: bool,
    /// The connection service used, and the file defining it.
    service: Option<(String, PathBuf)>,
}

/// The password file to consult, and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Passfile {
    path: PathBuf,
    /// `passfile=`, `PGPASSFILE` or `~/.pgpass`, for messages.
    named_by: &'static str,
}

/// Where the password came from (for messages; never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PasswordSource {
    /// The URL (userinfo or `password=`).
    Url,
    /// A connection service's `password`.
    Service { name: String, file: PathBuf },
    /// `PGPASSWORD`.
    Environment,
    /// Given by the program ([`crate::PostgresEngine::with_password`]).
    Given,
    /// A password file line.
    File {
        path: PathBuf,
        named_by: &'static str,
        line: usize,
    },
    /// None was found; the password file's lookup, if one was made.
    Missing {
        file: Option<(PathBuf, &'static str, PassfileOutcome)>,
        key: String,
    },
}

impl PasswordSource {
    fn describe(&self) -> String {
        match self {
            Self::Url => "the URL".to_owned(),
            Self::Service { name, file } => {
                format!("service '{name}' in {}", file.display())
            }
            Self::Environment => "PGPASSWORD".to_owned(),
            Self::Given => "the password given to the engine".to_owned(),
            Self::File {
                path,
                named_by,
                line,
            } => format!(
                "line {line} of the password file {} ({named_by})",
                path.display()
            ),
            Self::Missing { .. } => "nowhere".to_owned(),
        }
    }
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

const NO_HOST: &str = "dbops-no-host.invalid";

/// Query parameters libpq accepts that we honour.
const KNOWN_PARAMS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "connect_timeout",
    "passfile",
    "service",
];

/// The settings a URL or a service gives, as text, before defaults.
#[derive(Default)]
struct Given {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<String>,
    passfile: Option<String>,
    service: Option<String>,
}

impl Given {
    /// The setting named by libpq's keyword `key`.
    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "host" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "application_name" => &mut self.application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "passfile" => &mut self.passfile,
            "service" => &mut self.service,
            _ => return None,
        })
    }
}

impl ConnConfig {
    /// Parses `url`, filling what it lacks from its connection service, then from `env`
    /// (a lookup of `PG*` variables and `HOME`), then libpq's defaults; a missing
    /// password is looked up in the password file.
    pub(crate) fn parse(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        // Every error below names the redacted URL, never the URL itself.
        let shown = ops_core::redact_url(url);
        let bad = |why: &str| Error::invalid(format!("'{shown}' is not a PostgreSQL URL: {why}"));
        // libpq accepts `postgres://user@/db` (no host: the default socket); the url
        // crate does not, so an empty host gets a placeholder that means "none".
        let parsed = match url::Url::parse(url) {
            Err(url::ParseError::EmptyHost) => {
                let patched = url.replacen("@/", &format!("@{NO_HOST}/"), 1).replacen(
                    "@:",
                    &format!("@{NO_HOST}:"),
                    1,
                );
                url::Url::parse(&patched)
            }
            other => other,
        }
        .map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad("the scheme must be postgres:// or postgresql://"));
        }
        // Plain percent-decoding as libpq does it: `+` and `&` are themselves.
        let decode = |s: &str| -> Result<String> {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| bad("a percent-encoded part is not UTF-8"))
        };

        let mut given = Given::default();
        if let Some(h) = parsed.host_str().filter(|h| !h.is_empty() && *h != NO_HOST) {
            let h = decode(h)?;
            given.host = Some(h.trim_start_matches('[').trim_end_matches(']').to_owned());
        }
        given.port = parsed.port().map(|p| p.to_string());
        if !parsed.username().is_empty() {
            given.user = Some(decode(parsed.username())?);
        }
        if let Some(p) = parsed.password() {
            given.password = Some(decode(p)?);
        }
        given.dbname = match parsed.path().trim_start_matches('/') {
            "" => None,
            p => Some(decode(p)?),
        };
        for pair in parsed.query().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode(key)?, decode(value)?);
            match given.slot(&key) {
                Some(slot) => *slot = Some(value),
                None => {
                    return Err(bad(&format!(
                        "unknown parameter '{key}' (known: {})",
                        KNOWN_PARAMS.join(", ")
                    )));
                }
            }
        }

        // A service fills what the URL leaves open, before the environment does.
        let mut from_service: Vec<&'static str> = Vec::new();
        let service = match given.service.clone().or_else(|| env("PGSERVICE")) {
            Some(name) if !name.is_empty() => Some(credentials::find_service(&name, env)?),
            _ => None,
        };
        if let Some(service) = &service {
            for (key, value, line) in &service.settings {
                let Some(known) = KNOWN_PARAMS.iter().find(|k| **k == key.as_str()) else {
                    return Err(Error::invalid(format!(
                        "service '{}' in {}, line {line}: '{key}' is not a setting dbops \
                         supports (known: {})",
                        service.name,
                        service.file.display(),
                        KNOWN_PARAMS
                            .iter()
                            .filter(|k| **k != "service")
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                if let Some(slot) = given.slot(known)
                    && slot.is_none()
                {
                    *slot = Some(value.clone());
                    from_service.push(known);
                }
            }
        }
        // An invalid value names where it came from.
        let invalid = |key: &str, why: &str| match &service {
            Some(s) if from_service.contains(&key) => Error::invalid(format!(
                "service '{}' in {}: {why}",
                s.name,
                s.file.display()
            )),
            _ => bad(why),
        };

        let host = match given
            .host
            .or_else(|| env("PGHOST"))
            .filter(|h| !h.is_empty())
        {
            Some(h) if h.contains(',') => {
                return Err(invalid("host", "several hosts are not supported; give one"));
            }
            Some(h) => Host::parse(&h),
            None if Path::new(credentials::DEFAULT_SOCKET_DIR).is_dir() => {
                Host::Socket(PathBuf::from(credentials::DEFAULT_SOCKET_DIR))
            }
            None => Host::Tcp("localhost".to_owned()),
        };
        let port = match given.port {
            Some(p) => p
                .parse()
                .map_err(|_| invalid("port", "the port is not a number"))?,
            None => match env("PGPORT") {
                Some(p) => p.parse().map_err(|_| bad("PGPORT is not a number"))?,
                None => 5432,
            },
        };
        let user = match given.user.or_else(|| env("PGUSER")) {
            Some(u) => u,
            None => os_user_name()?,
        };
        // An empty password is no password, as in libpq: the password file is asked.
        let (password, password_source) = match given.password.filter(|p| !p.is_empty()) {
            Some(p) => {
                let source = match &service {
                    Some(s) if from_service.contains(&"password") => PasswordSource::Service {
                        name: s.name.clone(),
                        file: s.file.clone(),
                    },
                    _ => PasswordSource::Url,
                };
                (Some(Secret::new(p)), source)
            }
            None => match env("PGPASSWORD").filter(|p| !p.is_empty()) {
                Some(p) => (Some(Secret::new(p)), PasswordSource::Environment),
                None => (
                    None,
                    PasswordSource::Missing {
                        file: None,
                        key: String::new(),
                    },
                ),
            },
        };
        let passfile = match given.passfile.filter(|f| !f.is_empty()) {
            Some(f) => Some(Passfile {
                path: PathBuf::from(f),
                named_by: if from_service.contains(&"passfile") {
                    "the service's passfile"
                } else {
                    "passfile in the URL"
                },
            }),
            None => match env("PGPASSFILE").filter(|f| !f.is_empty()) {
                Some(f) => Some(Passfile {
                    path: PathBuf::from(f),
                    named_by: "PGPASSFILE",
                }),
                None => credentials::home_dir(env).map(|h| Passfile {
                    path: h.join(".pgpass"),
                    named_by: "~/.pgpass",
                }),
            },
        };
        let dbname_given = given.dbname.is_some() || env("PGDATABASE").is_some();
        let dbname = given
            .dbname
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let sslmode = match given.sslmode {
            Some(m) => SslMode::parse(&m)?,
            None => match env("PGSSLMODE") {
                Some(m) => SslMode::parse(&m)?,
                None => SslMode::default(),
            },
        };
        let connect_timeout: u64 = match given.connect_timeout {
            Some(t) => t
                .parse()
                .map_err(|_| invalid("connect_timeout", "connect_timeout is not a number"))?,
            None => match env("PGCONNECT_TIMEOUT") {
                Some(t) => t
                    .parse()
                    .map_err(|_| bad("PGCONNECT_TIMEOUT is not a number"))?,
                None => 30,
            },
        };
        let mut config = Self {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert: given.sslrootcert.or_else(|| env("PGSSLROOTCERT")),
            sslcert: given
                .sslcert
                .or_else(|| env("PGSSLCERT"))
                .map(PathBuf::from),
            sslkey: given.sslkey.or_else(|| env("PGSSLKEY")).map(PathBuf::from),
            application_name: given
                .application_name
                .or_else(|| env("PGAPPNAME"))
                .unwrap_or_else(|| "dbops".to_owned()),
            connect_timeout: Duration::from_secs(connect_timeout.max(2)),
            password_source,
            passfile,
            dbname_given,
            service: service.map(|s| (s.name, s.file)),
        };
        config.password_from_file();
        Ok(config)
    }

    /// Without a given password: the password file's, for this host, port, database
    /// and user (looked up again when the database changes, as the file may say).
    fn password_from_file(&mut self) {
        if !matches!(
            self.password_source,
            PasswordSource::Missing { .. } | PasswordSource::File { .. }
        ) {
            return;
        }
        let key = PassKey {
            host: match &self.host {
                Host::Tcp(h) => h.clone(),
                // libpq: the default socket directory is `localhost` in the file.
                Host::Socket(p) if p == Path::new(credentials::DEFAULT_SOCKET_DIR) => {
                    "localhost".to_owned()
                }
                Host::Socket(p) => p.display().to_string(),
            },
            port: self.port.to_string(),
            dbname: self.dbname.clone(),
            user: self.user.clone(),
        };
        let Some(file) = &self.passfile else {
            self.password = None;
            self.password_source = PasswordSource::Missing {
                file: None,
                key: key.to_string(),
            };
            return;
        };
        let found = credentials::lookup_passfile(&file.path, &key);
        self.password = found.password;
        self.password_source = match found.outcome {
            PassfileOutcome::Found { line } => PasswordSource::File {
                path: file.path.clone(),
                named_by: file.named_by,
                line,
            },
            other => PasswordSource::Missing {
                file: Some((file.path.clone(), file.named_by, other)),
                key: key.to_string(),
            },
        };
    }

    /// Refuses a backup or restore of a database nobody named: libpq would pick the
    /// user's name (often `postgres`), which is rarely what was meant.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] saying how to name it.
    pub(crate) fn require_database(&self, doing: &str) -> Result<()> {
        if self.dbname_given {
            return Ok(());
        }
        let server = match &self.host {
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Socket(p) => format!("the socket in {} (port {})", p.display(), self.port),
        };
        Err(Error::invalid(format!(
            "{doing} needs a database, and the connection to {server} names none: put it in \
             the URL's path (postgres://host:port/DATABASE), or give it as dbname=, in the \
             connection service or in PGDATABASE (libpq would take the user's name, \
             '{}')",
            self.dbname
        )))
    }

    /// Adds to an authentication failure where the password came from, or which
    /// sources were tried and what to do; other errors are returned as they are.
    pub(crate) fn explain_auth(&self, err: Error) -> Error {
        if err.kind() != ErrorKind::Authentication {
            return err;
        }
        let refused = err.context_value("sqlstate") == Some("28P01")
            || err.message().contains("password authentication failed");
        let more = match (&self.password_source, &self.password) {
            (PasswordSource::Missing { file, key }, _) => {
                let mut tried = vec!["the URL".to_owned()];
                if let Some((name, file)) = &self.service {
                    tried.push(format!("service '{name}' in {}", file.display()));
                }
                tried.push("PGPASSWORD (not set)".to_owned());
                tried.push(match file {
                    Some((path, named_by, outcome)) => format!(
                        "the password file {} ({named_by}), which {}",
                        path.display(),
                        match outcome {
                            PassfileOutcome::Missing => "does not exist".to_owned(),
                            PassfileOutcome::NoMatch => format!("has no line matching {key}"),
                            PassfileOutcome::NotAFile => "is not a plain file".to_owned(),
                            PassfileOutcome::Insecure { mode } => format!(
                                "was ignored: its mode {mode:04o} lets group or others read it \
                                 (chmod 0600 it)"
                            ),
                            PassfileOutcome::Unreadable(why) => format!("cannot be read: {why}"),
                            PassfileOutcome::Found { .. } => "matched".to_owned(),
                        }
                    ),
                    None => "no password file (no home directory; set PGPASSFILE)".to_owned(),
                });
                format!(
                    "no password was found (tried {}): add the line \
                     host:port:database:user:password (here {key}:PASSWORD; `*` matches \
                     anything) to a password file of mode 0600, ~/.pgpass or the file \
                     PGPASSFILE names, or set PGPASSWORD",
                    tried.join(", ")
                )
            }
            (source, Some(_)) if refused => format!(
                "the password from {} was refused: correct it there",
                source.describe()
            ),
            (source, _) => format!("(the password came from {})", source.describe()),
        };
        let message = format!("{}; {more}", err.message());
        err.with_message(message)
    }

    /// The same server, another database.
    /// The same settings with `password`, which wins over every other source.
    pub(crate) fn with_password(&self, password: Secret) -> Self {
        Self {
            password: Some(password),
            password_source: PasswordSource::Given,
            ..self.clone()
        }
    }

    pub(crate) fn with_dbname(&self, dbname: &str) -> Self {
        let mut config = Self {
            dbname: dbname.to_owned(),
            dbname_given: true,
            ..self.clone()
        };
        config.password_from_file();
        config
    }

    /// `postgres://user@host:port/db?sslmode=…`, never with the password.
    pub(crate) fn redacted_url(&self) -> String {
        let enc = |s: &str| -> String {
            url::form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        };
        let (host, socket) = match &self.host {
            Host::Tcp(h) if h.contains(':') => (format!("[{h}]"), None),
            Host::Tcp(h) => (enc(h), None),
            Host::Socket(p) => (String::new(), Some(p.display().to_string())),
        };
        // Only a password that is part of the URL (or PGPASSWORD, which stands for
        // it) shows as `******`: one from a file is not part of the location.
        let pw = if self.password.is_some()
            && matches!(
                self.password_source,
                PasswordSource::Url | PasswordSource::Environment
            ) {
            format!(":{}", ops_core::secret::REDACTED)
        } else {
            String::new()
        };
        let mut out = format!(
            "postgres://{}{pw}@{host}:{}/{}",
            enc(&self.user),
            self.port,
            enc(&self.dbname)
        );
        let mut params = Vec::new();
        if let Some(s) = socket {
            params.push(format!("host={}", enc(&s)));
        }
        if self.sslmode != SslMode::default() {
            params.push(format!("sslmode={}", self.sslmode.as_str()));
        }
        if !params.is_empty() {
            out.push('?');
            out.push_str(&params.join("&"));
        }
        out
    }

    /// tokio-postgres settings (TLS is chosen by the connector, see `tls`).
    pub(crate) fn tokio_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Socket(p) => c.host_path(p),
        };
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            // A peer that vanishes (failover, a dropped NAT entry) must not leave a dump
            // or restore waiting forever on a dead TCP connection.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(pw) = &self.password {
            c.password(pw.expose());
        }
        c
    }

    /// Connects with sqlx, giving up after `connect_timeout` (sqlx has no such setting
    /// of its own for single connections).
    pub(crate) async fn sqlx_connect(&self) -> Result<sqlx::PgConnection> {
        use sqlx::Connection;
        let location = self.redacted_url();
        match tokio::time::timeout(
            self.connect_timeout,
            sqlx::PgConnection::connect_with(&self.sqlx_options()),
        )
        .await
        {
            Ok(connected) => connected.map_err(|e| {
                self.explain_auth(crate::errors::sqlx_error(
                    e,
                    format!("connecting to {location}"),
                ))
            }),
            Err(_) => Err(connect_timed_out(&location, self.connect_timeout)),
        }
    }

    /// sqlx settings; sqlx brings its own rustls configuration for each sslmode, but
    /// its `require` never checks the certificate: with a root certificate (given, or
    /// `~/.postgresql/root.crt`) `require` is asked of it as `verify-ca`, which is what
    /// libpq and our tokio-postgres connector (see `tls`) do.
    pub(crate) fn sqlx_options(&self) -> sqlx::postgres::PgConnectOptions {
        use sqlx::postgres::{PgConnectOptions, PgSslMode};
        let root = crate::tls::root_file(self);
        let mut o = PgConnectOptions::new_without_pgpass()
            .port(self.port)
            .username(&self.user)
            .database(&self.dbname)
            .application_name(&self.application_name)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                SslMode::Require if root.is_some() => PgSslMode::VerifyCa,
                SslMode::Require => PgSslMode::Require,
                SslMode::VerifyCa => PgSslMode::VerifyCa,
                SslMode::VerifyFull => PgSslMode::VerifyFull,
            });
        o = match &self.host {
            Host::Tcp(h) => o.host(h),
            Host::Socket(p) => o.socket(p),
        };
        if let Some(pw) = &self.password {
            o = o.password(pw.expose());
        }
        if let Some(root) = root {
            o = o.ssl_root_cert(root);
        }
        if let Some(cert) = &self.sslcert {
            o = o.ssl_client_cert(cert);
        }
        if let Some(key) = &self.sslkey {
            o = o.ssl_client_key(key);
        }
        o
    }

    /// Environment for pg_dump/pg_restore: the connection without the database (given
    /// with `-d`). The password goes into a private (0600) temporary `PGPASSFILE`, never
    /// on the command line or in the environment (which `/proc/PID/environ` shows to
    /// every process of the same user); the file lives as long as the [`ToolEnv`].
    pub(crate) fn tool_env(&self) -> Result<ToolEnv> {
        let mut vars = vec![
            ("PGHOST", self.host.as_libpq()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGSSLMODE", self.sslmode.as_str().to_owned()),
            ("PGAPPNAME", self.application_name.clone()),
            (
                "PGCONNECT_TIMEOUT",
                self.connect_timeout.as_secs().to_string(),
            ),
        ];
        let passfile = match &self.password {
            Some(pw) => {
                let file = pgpass_file(&self.user, pw.expose())?;
                vars.push(("PGPASSFILE", file.path().display().to_string()));
                Some(file)
            }
            None => None,
        };
        if let Some(r) = &self.sslrootcert {
            vars.push(("PGSSLROOTCERT", r.clone()));
        }
        if let Some(c) = &self.sslcert {
            vars.push(("PGSSLCERT", c.display().to_string()));
        }
        if let Some(k) = &self.sslkey {
            vars.push(("PGSSLKEY", k.display().to_string()));
        }
        Ok(ToolEnv {
            vars,
            _passfile: passfile,
        })
    }

    /// A libpq connection string naming only the database, for `-d`: host, user and
    /// password travel in the environment.
    pub(crate) fn dbname_conninfo(&self) -> String {
        format!(
            "dbname='{}'",
            self.dbname.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }
}

/// The environment of one pg_dump/pg_restore run (see [`ConnConfig::tool_env`]).
pub(crate) struct ToolEnv {
    vars: Vec<(&'static str, String)>,
    _passfile: Option<tempfile::NamedTempFile>,
}

impl ToolEnv {
    /// Clears every variable that could send the tool elsewhere or change how it
    /// connects, then sets ours. Keep `self` alive until the child has exited.
    pub(crate) fn apply(&self, cmd: &mut tokio::process::Command) {
        for var in TOOL_ENV_CLEARED {
            cmd.env_remove(var);
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())));
    }

    #[cfg(test)]
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A 0600 temporary password file matching any host, port and database for `user`.
fn pgpass_file(user: &str, password: &str) -> Result<tempfile::NamedTempFile> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let mut file = tempfile::Builder::new()
        .prefix("dbops-pgpass-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile()
        .map_err(|e| Error::io("creating a temporary password file", e))?;
    writeln!(file, "*:*:*:{}:{}", escape(user), escape(password))
        .and_then(|()| file.flush())
        .map_err(|e| Error::io("writing the temporary password file", e))?;
    Ok(file)
}

/// Variables that could redirect a child pg_dump/pg_restore elsewhere than we say, or
/// change how it authenticates or encrypts.
pub(crate) const TOOL_ENV_CLEARED: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLPASSWORD",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLNEGOTIATION",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGSSLCERTMODE",
    "PGREQUIRESSL",
    "PGREQUIREPEER",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
    "PGGSSENCMODE",
    "PGGSSDELEGATION",
    "PGKRBSRVNAME",
    "PGGSSLIB",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING",
];

/// The error for a connection attempt that took longer than `timeout`.
pub(crate) fn connect_timed_out(location: &str, timeout: Duration) -> Error {
    Error::new(
        ops_core::ErrorKind::Unreachable,
        format!(
            "could not connect to {location}: no answer within {}s (connect_timeout)",
            timeout.as_secs()
        ),
    )
    .temporary()
}

fn os_user_name() -> Result<String> {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => Ok(u.name),
        _ => Err(Error::invalid(format!(
            "no user name in the URL or PGUSER, and uid {uid} has no name"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No `PG*` variables, and a home without `.pgpass` or `.pg_service.conf`.
    fn no_env(name: &str) -> Option<String> {
        (name == "HOME").then(|| "/nonexistent/dbops-test-home".to_owned())
    }

    /// A directory with a password file (mode 0600) and a service file.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(pgpass: &str, services: &str) -> Self {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().expect("tempdir");
            let pass = dir.path().join("pgpass");
            std::fs::write(&pass, pgpass).expect("write pgpass");
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            std::fs::write(dir.path().join("services.conf"), services).expect("write services");
            Self { dir }
        }

        fn pgpass(&self) -> String {
            self.dir.path().join("pgpass").display().to_string()
        }

        /// `env` with PGPASSFILE and PGSERVICEFILE pointing here, plus `vars`.
        fn env<'a>(
            &'a self,
            vars: &'a [(&'a str, &'a str)],
        ) -> impl Fn(&str) -> Option<String> + 'a {
            move |name: &str| {
                if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                    return Some((*v).to_owned());
                }
                match name {
                    "PGPASSFILE" => Some(self.pgpass()),
                    "PGSERVICEFILE" => {
                        Some(self.dir.path().join("services.conf").display().to_string())
                    }
                    "PGSYSCONFDIR" => Some(self.dir.path().join("nothing").display().to_string()),
                    other => no_env(other),
                }
            }
        }
    }

    const PGPASS: &str = "# host:port:database:user:password\n\
        db.example:5432:shop:app:shop-pw\n\
        db.example:*:*:app:any-db-pw\n\
        localhost:5432:*:app:socket-pw\n\
        *:*:*:other:ot\\:her\n";

    #[test]
    fn password_file_when_the_url_has_none() {
        let files = Files::new(PGPASS, "");
        let env = files.env(&[]);
        let c = ConnConfig::parse("postgres://app@db.example/shop", &env).expect("valid");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("shop-pw"));
        assert!(
            matches!(
                &c.password_source,
                PasswordSource::File {
                    line: 2,
                    named_by: "PGPASSFILE",
                    ..
                }
            ),
            "{:?}",
            c.password_source
        );
        // Another database: the file is asked again, and its first match wins.
        let other = c.with_dbname("stock");
        assert_eq!(
            other.password.as_ref().map(Secret::expose),
            Some("any-db-pw")
        );
        // The default socket is `localhost` in the file, as in libpq.
        let c = ConnConfig::parse("postgres://app@/shop?host=/var/run/postgresql", &env)
            .expect("valid");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("socket-pw"));
        let c = ConnConfig::parse("postgres://other@h/db", &env).expect("valid");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("ot:her"));
        // Not part of the location, and the tools get it in their own file.
        let shown = format!("{} {c:?}", c.redacted_url());
        assert!(
            !shown.contains("ot:her") && !shown.contains("******"),
            "{shown}"
        );
        let tool = c.tool_env().expect("tool env");
        let passfile = tool.get("PGPASSFILE").expect("PGPASSFILE");
        assert_ne!(
            passfile,
            files.pgpass(),
            "a private copy, not the user's file"
        );
        assert_eq!(
            std::fs::read_to_string(passfile).expect("read"),
            "*:*:*:other:ot\\:her\n"
        );
        // No line for this user: no password, and the lookup is remembered.
        let c = ConnConfig::parse("postgres://nobody@db.example/shop", &env).expect("valid");
        assert!(c.password.is_none());
        assert!(
            matches!(&c.password_source, PasswordSource::Missing { file: Some((_, "PGPASSFILE", PassfileOutcome::NoMatch)), key } if key == "db.example:5432:shop:nobody"),
            "{:?}",
            c.password_source
        );
        // ~/.pgpass without PGPASSFILE.
        let home = tempfile::tempdir().expect("home");
        std::fs::copy(files.pgpass(), home.path().join(".pgpass")).expect("copy");
        let home_env = |name: &str| match name {
            "HOME" => Some(home.path().display().to_string()),
            _ => None,
        };
        let c = ConnConfig::parse("postgres://app@db.example/shop", &home_env).expect("valid");
        assert!(
            matches!(
                &c.password_source,
                PasswordSource::File {
                    named_by: "~/.pgpass",
                    ..
                }
            ),
            "{:?}",
            c.password_source
        );
    }

    #[test]
    fn given_passwords_win_over_the_file() {
        let files = Files::new(
            PGPASS,
            "[shop]\nhost=db.example\ndbname=shop\nuser=app\npassword=service-pw\n",
        );
        let env = files.env(&[("PGPASSWORD", "env-pw")]);
        let c = ConnConfig::parse("postgres://app:url-pw@db.example/shop", &env).expect("valid");
        assert_eq!(c.password_source, PasswordSource::Url);
        assert!(c.redacted_url().contains("******"));
        let c = ConnConfig::parse("postgres:///?service=shop", &env).expect("valid");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("service-pw"));
        let c = ConnConfig::parse("postgres://app@db.example/shop", &env).expect("valid");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("env-pw"));
        assert_eq!(c.password_source, PasswordSource::Environment);
        // An empty password is none: the next source is asked.
        let env = files.env(&[("PGPASSWORD", "")]);
        let c = ConnConfig::parse("postgres://app:@db.example/shop", &env).expect("valid");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("shop-pw"));
        // passfile= names another file.
        let c = ConnConfig::parse(
            "postgres://app@db.example/shop?passfile=/nonexistent/pgpass",
            &env,
        )
        .expect("valid");
        assert!(c.password.is_none());
    }

    #[test]
    fn an_open_password_file_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let files = Files::new(PGPASS, "");
        std::fs::set_permissions(files.pgpass(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let c =
            ConnConfig::parse("postgres://app@db.example/shop", &files.env(&[])).expect("valid");
        assert!(c.password.is_none());
        let err = c.explain_auth(Error::new(
            ErrorKind::Authentication,
            "connecting to x: the server asks for a password",
        ));
        assert!(err.message().contains("mode 0644"), "{err}");
        assert!(err.message().contains("chmod 0600"), "{err}");
    }

    #[test]
    fn authentication_errors_say_where_the_password_came_from() {
        let files = Files::new(PGPASS, "");
        let env = files.env(&[]);
        let refused = || {
            Error::new(
                ErrorKind::Authentication,
                "connecting to x: password authentication failed for user \"app\"",
            )
            .with_context("sqlstate", "28P01")
        };
        let c = ConnConfig::parse("postgres://app@db.example/shop", &env).expect("valid");
        let err = c.explain_auth(refused());
        assert!(
            err.message()
                .contains(&format!("line 2 of the password file {}", files.pgpass())),
            "{err}"
        );
        assert!(!err.message().contains("shop-pw"), "{err}");
        let c = ConnConfig::parse("postgres://app:url-pw@db.example/shop", &env).expect("valid");
        let err = c.explain_auth(refused());
        assert!(
            err.message()
                .contains("the password from the URL was refused"),
            "{err}"
        );
        assert!(!err.message().contains("url-pw"), "{err}");
        let c = ConnConfig::parse("postgres://nobody@db.example/shop", &no_env).expect("valid");
        let err = c.explain_auth(refused());
        for part in [
            "no password was found",
            "PGPASSWORD (not set)",
            "/nonexistent/dbops-test-home/.pgpass (~/.pgpass), which does not exist",
            "db.example:5432:shop:nobody:PASSWORD",
            "PGPASSFILE",
        ] {
            assert!(err.message().contains(part), "{part}: {err}");
        }
        // Other kinds pass through untouched.
        let other = c.explain_auth(Error::invalid("x"));
        assert_eq!(other.message(), "x");
    }

    #[test]
    fn services_fill_what_the_url_leaves_open() {
        let files = Files::new(
            "",
            "[shop]\nhost=db.example\nport=6543\ndbname=shop\nuser=app\nsslmode=require\n\
             [bad]\nhost=h\noptions=-c x=y\n[badport]\nport=many\n",
        );
        let env = files.env(&[("PGHOST", "envhost"), ("PGDATABASE", "envdb")]);
        let c = ConnConfig::parse("postgres:///?service=shop", &env).expect("valid");
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(
            (c.port, c.user.as_str(), c.dbname.as_str()),
            (6543, "app", "shop")
        );
        assert_eq!(c.sslmode, SslMode::Require);
        assert!(c.dbname_given);
        // The URL wins over the service, the service over the environment.
        let c = ConnConfig::parse("postgres://u@other/db2?service=shop", &env).expect("valid");
        assert_eq!(c.host, Host::Tcp("other".into()));
        assert_eq!(
            (c.port, c.user.as_str(), c.dbname.as_str()),
            (6543, "u", "db2")
        );
        let env_service = files.env(&[("PGSERVICE", "shop"), ("PGHOST", "envhost")]);
        let c = ConnConfig::parse("postgres://", &env_service).expect("valid");
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.dbname, "shop");
        // What a service may not say is refused, naming the file and line.
        let err = ConnConfig::parse("postgres:///?service=bad", &env).expect_err("options");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message().contains("line 9") && err.message().contains("'options'"),
            "{err}"
        );
        let err = ConnConfig::parse("postgres:///?service=badport", &env).expect_err("port");
        assert!(err.message().contains("service 'badport'"), "{err}");
        let err = ConnConfig::parse("postgres:///?service=none", &env).expect_err("undefined");
        assert!(err.message().contains("'none'"), "{err}");
    }

    #[test]
    fn a_database_must_be_named() {
        for url in [
            "postgres://u:pw@h",
            "postgres://u:pw@h/",
            "postgresql://u:pw@h:5/?sslmode=disable",
        ] {
            let c = ConnConfig::parse(url, &no_env).expect("valid");
            assert!(!c.dbname_given, "{url}");
            let err = c.require_database("a backup").expect_err(url);
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(
                err.message().contains("postgres://host:port/DATABASE"),
                "{err}"
            );
            assert!(!err.message().contains("pw"), "{err}");
            assert!(c.with_dbname("x").require_database("a backup").is_ok());
        }
        for url in ["postgres://u@h/shop", "postgres://u@h?dbname=shop"] {
            let c = ConnConfig::parse(url, &no_env).expect("valid");
            assert!(c.require_database("a backup").is_ok(), "{url}");
        }
        let env = |k: &str| (k == "PGDATABASE").then(|| "shop".to_owned());
        let c = ConnConfig::parse("postgres://u@h", &env).expect("valid");
        assert!(c.require_database("a backup").is_ok());
    }

    #[test]
    fn url_fields() {
        let c = ConnConfig::parse(
            "postgresql://al%20ice:p%40ss@db.example:6543/sh%2Fop?sslmode=verify-full&application_name=x",
            &no_env,
        )
        .expect("valid URL");
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "al ice");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(c.dbname, "sh/op");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name, "x");
        let shown = c.redacted_url();
        assert!(
            !shown.contains("p@ss") && !shown.contains("p%40ss"),
            "{shown}"
        );
        assert!(shown.contains("******"), "{shown}");
    }

    #[test]
    fn percent_decoding_keeps_ampersand_and_plus() {
        let c = ConnConfig::parse(
            "postgres://u%26v:p%26ss+w%3Ard@h/shop%26old+new?application_name=a%26b+c",
            &no_env,
        )
        .expect("valid URL");
        assert_eq!(c.user, "u&v");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p&ss+w:rd"));
        assert_eq!(c.dbname, "shop&old+new");
        assert_eq!(c.application_name, "a&b+c");
        // An unencoded `&` in the path or the password is still part of it.
        let c = ConnConfig::parse("postgres://u:p&ss@h/shop&old", &no_env).expect("valid URL");
        assert_eq!(c.dbname, "shop&old");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p&ss"));
        let c = ConnConfig::parse("postgres://u@h/db?password=a%2Bb+c&dbname=x%20y", &no_env)
            .expect("valid URL");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("a+b+c"));
        assert_eq!(c.dbname, "x y");
        let err = ConnConfig::parse("postgres://u:%ff@h/db", &no_env).expect_err("not UTF-8");
        assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn env_fills_gaps_url_wins() {
        let env = |k: &str| match k {
            "PGHOST" => Some("envhost".to_owned()),
            "PGPORT" => Some("7777".to_owned()),
            "PGUSER" => Some("envuser".to_owned()),
            "PGPASSWORD" => Some("envpw".to_owned()),
            "PGDATABASE" => Some("envdb".to_owned()),
            "PGSSLMODE" => Some("require".to_owned()),
            _ => None,
        };
        let c = ConnConfig::parse("postgres:///urldb", &env).expect("valid URL");
        assert_eq!(c.host, Host::Tcp("envhost".into()));
        assert_eq!(c.port, 7777);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.dbname, "urldb");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("envpw"));
        let c = ConnConfig::parse("postgres://u@h:1/d?sslmode=disable", &env).expect("valid");
        assert_eq!((c.port, c.user.as_str()), (1, "u"));
        assert_eq!(c.sslmode, SslMode::Disable);
    }

    #[test]
    fn unix_socket_and_ipv6() {
        let c = ConnConfig::parse("postgres://u@%2Ftmp%2Fsock/db", &no_env).expect("valid");
        assert_eq!(c.host, Host::Socket("/tmp/sock".into()));
        let c = ConnConfig::parse("postgres://u@/db?host=/tmp/s2", &no_env).expect("valid");
        assert_eq!(c.host, Host::Socket("/tmp/s2".into()));
        let c = ConnConfig::parse("postgres://u@[::1]:5/db", &no_env).expect("valid");
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert!(c.redacted_url().contains("[::1]:5"));
    }

    #[test]
    fn bad_urls_do_not_leak() {
        for url in [
            "mysql://u:sekrit@h/db",
            "postgres://u:sekrit@h/db?bogus=1",
            "postgres://u:sekrit@h/db?sslmode=always",
            "postgres://u:sekrit@h:99999/db",
        ] {
            let err = ConnConfig::parse(url, &no_env).expect_err("must be refused");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("sekrit"), "{text}");
        }
    }

    #[test]
    fn tcp_keepalives_and_connect_timeout() {
        let c = ConnConfig::parse("postgres://u@h/db?connect_timeout=7", &no_env).expect("valid");
        let t = c.tokio_config();
        assert!(t.get_keepalives());
        assert_eq!(t.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(t.get_connect_timeout(), Some(&Duration::from_secs(7)));
    }

    #[test]
    fn tools_verify_tls_as_the_engine_does() {
        let c = ConnConfig::parse(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/c.key",
            &no_env,
        )
        .expect("valid");
        let env = c.tool_env().expect("tool env");
        assert_eq!(env.get("PGSSLMODE"), Some("verify-full"));
        assert_eq!(env.get("PGSSLROOTCERT"), Some("/ca.pem"));
        assert_eq!(env.get("PGSSLCERT"), Some("/c.pem"));
        assert_eq!(env.get("PGSSLKEY"), Some("/c.key"));
        // sqlx's `require` verifies nothing: with a root certificate it is asked for
        // verify-ca, as libpq does.
        let c = ConnConfig::parse(
            "postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem",
            &no_env,
        )
        .expect("valid");
        assert!(matches!(
            c.sqlx_options().get_ssl_mode(),
            sqlx::postgres::PgSslMode::VerifyCa
        ));
    }

    #[test]
    fn tools_get_the_password_in_a_private_file_only() {
        use std::os::unix::fs::PermissionsExt;
        let c = ConnConfig::parse("postgres://a%3Ab:pw%5C%3Ax@h/db", &no_env).expect("valid");
        let env = c.tool_env().expect("tool env");
        assert!(env.get("PGPASSWORD").is_none());
        assert!(env.vars.iter().all(|(_, v)| !v.contains("pw\\:x")));
        let path = PathBuf::from(env.get("PGPASSFILE").expect("PGPASSFILE"));
        let meta = std::fs::metadata(&path).expect("passfile exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "*:*:*:a\\:b:pw\\\\\\:x\n"
        );
        drop(env);
        assert!(!path.exists(), "the password file outlived the run");
        for var in [
            "PGSSLPASSWORD",
            "PGGSSENCMODE",
            "PGCHANNELBINDING",
            "PGREQUIREAUTH",
            "PGSSLNEGOTIATION",
        ] {
            assert!(TOOL_ENV_CLEARED.contains(&var), "{var}");
        }
        let no_pw = ConnConfig::parse("postgres://u@h/db", &no_env).expect("valid");
        assert!(no_pw.tool_env().expect("env").get("PGPASSFILE").is_none());
    }

    #[test]
    fn conninfo_quotes() {
        let c = ConnConfig::parse("postgres://u@h/a'b", &no_env).expect("valid");
        assert_eq!(c.dbname_conninfo(), "dbname='a\\'b'");
    }
}
