//! Connection settings: a `postgres://` URL completed by the standard `PG*` environment
//! variables, the way libpq does it.
//!
//! Everything that leaves this module for display goes through
//! [`ConnConfig::redacted_url`], which never contains the password. The password itself
//! is only exposed to tokio-postgres, sqlx, and a private temporary `PGPASSFILE` for the
//! pg_dump/pg_restore child processes (never their command line or environment).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ops_core::{Error, Result, Secret};

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
];

impl ConnConfig {
    /// Parses `url`, filling what it lacks from `env` (a lookup of `PG*` variables).
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

        let mut host = match parsed.host_str() {
            Some("") | Some(NO_HOST) | None => None,
            Some(h) => {
                let h = decode(h)?;
                let h = h.trim_start_matches('[').trim_end_matches(']').to_owned();
                Some(h)
            }
        };
        let mut port = parsed.port();
        let mut user = if parsed.username().is_empty() {
            None
        } else {
            Some(decode(parsed.username())?)
        };
        let mut password = match parsed.password() {
            Some(p) => Some(Secret::new(decode(p)?)),
            None => None,
        };
        let mut dbname = match parsed.path().trim_start_matches('/') {
            "" => None,
            p => Some(decode(p)?),
        };
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut sslcert = None;
        let mut sslkey = None;
        let mut application_name = None;
        let mut connect_timeout = None;
        for pair in parsed.query().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode(key)?, decode(value)?);
            match key.as_str() {
                "host" => host = Some(value),
                "port" => {
                    port = Some(value.parse().map_err(|_| bad("the port is not a number"))?);
                }
                "user" => user = Some(value),
                "password" => password = Some(Secret::new(value)),
                "dbname" => dbname = Some(value),
                "sslmode" => sslmode = Some(SslMode::parse(&value)?),
                "sslrootcert" => sslrootcert = Some(value),
                "sslcert" => sslcert = Some(PathBuf::from(value)),
                "sslkey" => sslkey = Some(PathBuf::from(value)),
                "application_name" => application_name = Some(value),
                "connect_timeout" => {
                    connect_timeout = Some(
                        value
                            .parse()
                            .map_err(|_| bad("connect_timeout is not a number"))?,
                    );
                }
                other => {
                    return Err(bad(&format!(
                        "unknown parameter '{other}' (known: {})",
                        KNOWN_PARAMS.join(", ")
                    )));
                }
            }
        }

        let host = match host.or_else(|| env("PGHOST")).filter(|h| !h.is_empty()) {
            Some(h) if h.contains(',') => {
                return Err(bad("several hosts are not supported; give one"));
            }
            Some(h) => Host::parse(&h),
            None if Path::new("/var/run/postgresql").is_dir() => {
                Host::Socket(PathBuf::from("/var/run/postgresql"))
            }
            None => Host::Tcp("localhost".to_owned()),
        };
        let port = match port {
            Some(p) => p,
            None => match env("PGPORT") {
                Some(p) => p.parse().map_err(|_| bad("PGPORT is not a number"))?,
                None => 5432,
            },
        };
        let user = match user.or_else(|| env("PGUSER")) {
            Some(u) => u,
            None => os_user_name()?,
        };
        let password = password.or_else(|| env("PGPASSWORD").map(Secret::new));
        let dbname = dbname
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let sslmode = match sslmode {
            Some(m) => m,
            None => match env("PGSSLMODE") {
                Some(m) => SslMode::parse(&m)?,
                None => SslMode::default(),
            },
        };
        let connect_timeout = match connect_timeout {
            Some(t) => t,
            None => match env("PGCONNECT_TIMEOUT") {
                Some(t) => t
                    .parse()
                    .map_err(|_| bad("PGCONNECT_TIMEOUT is not a number"))?,
                None => 30,
            },
        };
        Ok(Self {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert: sslrootcert.or_else(|| env("PGSSLROOTCERT")),
            sslcert: sslcert.or_else(|| env("PGSSLCERT").map(PathBuf::from)),
            sslkey: sslkey.or_else(|| env("PGSSLKEY").map(PathBuf::from)),
            application_name: application_name
                .or_else(|| env("PGAPPNAME"))
                .unwrap_or_else(|| "dbops".to_owned()),
            connect_timeout: Duration::from_secs(connect_timeout.max(2)),
        })
    }

    /// The same server, another database.
    pub(crate) fn with_dbname(&self, dbname: &str) -> Self {
        Self {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
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
        let pw = if self.password.is_some() {
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
            Ok(connected) => connected
                .map_err(|e| crate::errors::sqlx_error(e, format!("connecting to {location}"))),
            Err(_) => Err(connect_timed_out(&location, self.connect_timeout)),
        }
    }

    /// sqlx settings; sqlx brings its own rustls configuration for each sslmode.
    pub(crate) fn sqlx_options(&self) -> sqlx::postgres::PgConnectOptions {
        use sqlx::postgres::{PgConnectOptions, PgSslMode};
        let mut o = PgConnectOptions::new_without_pgpass()
            .port(self.port)
            .username(&self.user)
            .database(&self.dbname)
            .application_name(&self.application_name)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
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
        if let Some(root) = self.sslrootcert.as_deref().filter(|r| *r != "system") {
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

    fn no_env(_: &str) -> Option<String> {
        None
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
