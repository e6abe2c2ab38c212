//! Where a connection's password (and the user, host, port and socket the URL leaves
//! out) comes from: the URL, a password file, an option file named in the URL, the
//! `MARIADB_PWD` / `MYSQL_PWD` environment variables, and `~/.my.cnf`, in that order.
//!
//! Everything here runs once, when an engine is made from a URL; the values found are
//! held by the connection config. The password is only ever a [`Secret`]; what this
//! module records for messages ([`Credentials::trail`]) names sources, never values.
//! No connection is made here.

use std::path::{Path, PathBuf};

use ops_core::{Error, ErrorKind, Result, Secret};

/// Option file groups read, as the MariaDB client library reads them for a client
/// (`[client]`, `[client-server]`, `[client-mariadb]`) and for the `mariadb`
/// command-line client (`[mysql]`, `[mariadb-client]`), so that the file an operator
/// already has for `mariadb` works.
const GROUPS: &[&str] = &[
    "client",
    "client-server",
    "client-mariadb",
    "mysql",
    "mariadb-client",
];

/// The environment variables read for a password, in order.
pub(crate) const PASSWORD_VARIABLES: &[&str] = &["MARIADB_PWD", "MYSQL_PWD"];

/// The settings of one option file that a connection uses. `None` is "not set".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OptionFile {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub socket: Option<String>,
}

/// Parses option file text (`my.cnf` syntax) into the settings of [`GROUPS`].
///
/// As the MariaDB client reads it: `[group]` headers; `key = value` or a bare `key`;
/// lines starting with `#` or `;` are comments, and `#` outside quotes ends a line;
/// a value in single or double quotes keeps its spaces and `#`; `\n`, `\t`, `\r`,
/// `\b`, `\s` (space), `\\`, `\"` and `\'` are escapes, in quotes or not; `_` and `-`
/// are the same in keys, and a `loose-` prefix is ignored. Settings later in the file
/// win. `!include` and `!includedir` are not followed (logged). A bare `password`
/// (which makes the `mariadb` client prompt) sets nothing.
pub(crate) fn parse_option_file(text: &str, path: &Path) -> OptionFile {
    let mut out = OptionFile::default();
    let mut in_group = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('!') {
            tracing::debug!(
                "{}:{}: '{}' is not followed; put the settings dbops needs in this file",
                path.display(),
                n + 1,
                line.split_whitespace().next().unwrap_or(line)
            );
            continue;
        }
        let line = strip_end_comment(line).trim();
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').unwrap_or(rest).trim();
            in_group = GROUPS.iter().any(|g| g.eq_ignore_ascii_case(name));
            continue;
        }
        if !in_group {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim()))),
            None => (line, None),
        };
        let key = key.to_ascii_lowercase().replace('_', "-");
        let key = key.strip_prefix("loose-").unwrap_or(&key);
        let Some(value) = value else {
            if key == "password" {
                tracing::debug!(
                    "{}:{}: 'password' without a value (a prompt for the mariadb client) \
                     gives no password",
                    path.display(),
                    n + 1
                );
            }
            continue;
        };
        match key {
            "user" => out.user = Some(value),
            "password" => out.password = Some(Secret::new(value)),
            "host" => out.host = Some(value),
            "port" => out.port = Some(value),
            "socket" => out.socket = Some(value),
            _ => {}
        }
    }
    out
}

/// The line up to a `#` that is outside quotes.
fn strip_end_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '\'' | '"') if !escaped => quote = Some(c),
            (Some(q), _) if c == q && !escaped => quote = None,
            _ => {}
        }
        escaped = quote.is_some() && c == '\\' && !escaped;
    }
    line
}

/// A value without its surrounding quotes, escapes replaced.
fn unquote(value: &str) -> String {
    let inner = match value.chars().next() {
        Some(q @ ('\'' | '"')) if value.len() >= 2 && value.ends_with(q) => {
            &value[1..value.len() - 1]
        }
        _ => value,
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('s') => out.push(' '),
            Some(e @ ('\\' | '"' | '\'')) => out.push(e),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// What the URL said about credentials.
#[derive(Debug, Default)]
pub(crate) struct FromUrl {
    /// The password in the URL (userinfo or `password=`); `Some("")` is an explicit
    /// empty password.
    pub password: Option<Secret>,
    /// `password_file=`.
    pub password_file: Option<PathBuf>,
    /// `defaults_file=`.
    pub defaults_file: Option<PathBuf>,
}

/// The credentials and connection settings found outside the URL.
#[derive(Debug, Default, Clone)]
pub(crate) struct Credentials {
    pub password: Secret,
    /// The source of the password, as messages name it; `None` when no source gave
    /// one.
    pub password_from: Option<String>,
    /// Every source in order and what it gave (never a value), for messages.
    pub trail: Vec<String>,
    /// Settings of the option files: the `defaults_file` one over `~/.my.cnf`.
    pub options: OptionFile,
}

/// Finds the password when the URL has none, and reads the option files.
///
/// `env` reads an environment variable; `home` is the user's home directory. Both are
/// arguments so that tests need neither.
///
/// # Errors
/// [`ErrorKind::Authentication`] when a password file or an option file named in the
/// URL cannot be read: the credentials the operator pointed at cannot be found.
pub(crate) fn resolve(
    url: FromUrl,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Credentials> {
    let mut out = Credentials::default();
    let found = |out: &mut Credentials, what: String, password: Secret| {
        out.trail.push(format!("{what}: used"));
        out.password_from = Some(what);
        out.password = password;
    };

    match url.password {
        Some(p) => found(&mut out, "the URL".into(), p),
        None => out.trail.push("the URL: no password".into()),
    }

    match &url.password_file {
        None => out.trail.push("password_file: not in the URL".into()),
        Some(path) if out.password_from.is_some() => out
            .trail
            .push(format!("password_file {}: not read", path.display())),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::new(
                    ErrorKind::Authentication,
                    format!(
                        "cannot read the password file {} named by password_file in the \
                         URL: {e}",
                        path.display()
                    ),
                )
            })?;
            warn_if_readable_by_others(path);
            let first = text.lines().next().unwrap_or_default();
            found(
                &mut out,
                format!("password_file {}", path.display()),
                Secret::new(first),
            );
        }
    }

    let explicit = match &url.defaults_file {
        None => {
            out.trail.push("defaults_file: not in the URL".into());
            OptionFile::default()
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::new(
                    ErrorKind::Authentication,
                    format!(
                        "cannot read the option file {} named by defaults_file in the URL: {e}",
                        path.display()
                    ),
                )
            })?;
            warn_if_readable_by_others(path);
            let file = parse_option_file(&text, path);
            let what = format!("defaults_file {}", path.display());
            match (&file.password, &out.password_from) {
                (_, Some(_)) => out.trail.push(format!("{what}: not read for a password")),
                (Some(p), None) => found(&mut out, what, p.clone()),
                (None, None) => out
                    .trail
                    .push(format!("{what}: no password in {}", groups())),
            }
            file
        }
    };

    for name in PASSWORD_VARIABLES {
        if out.password_from.is_some() {
            out.trail.push(format!("{name}: not read"));
            continue;
        }
        match env(name) {
            Some(v) if !v.is_empty() => found(&mut out, (*name).to_owned(), Secret::new(v)),
            Some(_) => out.trail.push(format!("{name}: empty, ignored")),
            None => out.trail.push(format!("{name}: not set")),
        }
    }

    let user_file = home.map(|h| h.join(".my.cnf"));
    let implicit = match &user_file {
        None => {
            out.trail
                .push("~/.my.cnf: no home directory to look in".into());
            OptionFile::default()
        }
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.trail
                    .push(format!("{}: does not exist", path.display()));
                OptionFile::default()
            }
            Err(e) => {
                tracing::warn!("option file {} is not read: {e}", path.display());
                out.trail
                    .push(format!("{}: unreadable ({e})", path.display()));
                OptionFile::default()
            }
            Ok(text) => {
                let file = parse_option_file(&text, path);
                let what = path.display().to_string();
                match (&file.password, &out.password_from) {
                    (_, Some(_)) => out.trail.push(format!("{what}: not read for a password")),
                    (Some(p), None) => found(&mut out, what, p.clone()),
                    (None, None) => out
                        .trail
                        .push(format!("{what}: no password in {}", groups())),
                }
                file
            }
        },
    };

    // The file the URL names wins over the one every connection of this account reads.
    out.options = OptionFile {
        user: explicit.user.or(implicit.user),
        password: None,
        host: explicit.host.or(implicit.host),
        port: explicit.port.or(implicit.port),
        socket: explicit.socket.or(implicit.socket),
    };
    match &out.password_from {
        Some(from) => tracing::debug!("MariaDB password from {from}"),
        None => tracing::debug!("no MariaDB password found: {}", out.trail.join("; ")),
    }
    Ok(out)
}

fn groups() -> String {
    GROUPS
        .iter()
        .map(|g| format!("[{g}]"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A file holding a password should be readable by its owner alone; say so once.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} holds a MariaDB password and can be read by other users (mode {:o}); \
             make it 0600",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

/// The sentence an authentication failure gets: the account, where the password
/// came from, every source in order, and what to do.
pub(crate) fn explain_refusal(
    user: &str,
    credentials: &Credentials,
    server_message: &str,
    no_password_auth: bool,
) -> String {
    let how = match &credentials.password_from {
        Some(from) if credentials.password.is_empty() => {
            format!("with the empty password from {from}")
        }
        Some(from) => format!("with the password from {from}"),
        None => "without a password (no source gave one)".into(),
    };
    let todo = match &credentials.password_from {
        _ if no_password_auth => format!(
            "account '{user}' logs in another way (such as unix_socket: as the operating \
             system user of that name, over the server's socket); use an account with a \
             password, or give this one a password on the server"
        ),
        Some(from) => format!(
            "correct the password in {from}, or check that account '{user}' may log in \
             from this host"
        ),
        None => "give the password in one of them: password_file=/path in the URL (its \
                 first line), an option file (defaults_file=/path in the URL, or ~/.my.cnf) \
                 with password= under [client], or MARIADB_PWD / MYSQL_PWD"
            .into(),
    };
    format!(
        "the server refused user '{user}' {how}: {server_message}. Password sources, in \
         order: {}. To fix: {todo}",
        credentials.trail.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> OptionFile {
        parse_option_file(text, Path::new("test.cnf"))
    }

    #[test]
    fn option_files_as_the_client_reads_them() {
        let f = parse(
            "# a comment\n\
             ; another\n\
             [mysqld]\n\
             password = server-side\n\
             port = 1\n\
             [client]\n\
             user = backup   # trailing comment\n\
             password = \"p#ss word\"  # the hash is inside quotes\n\
             host=db.example\n\
             port = 3307\n\
             !include /etc/mysql/other.cnf\n\
             !includedir /etc/mysql/conf.d/\n\
             loose_socket = /run/mysqld/mysqld.sock\n\
             [mysqldump]\n\
             user = ignored\n",
        );
        assert_eq!(f.user.as_deref(), Some("backup"));
        assert_eq!(f.password.as_ref().map(Secret::expose), Some("p#ss word"));
        assert_eq!(f.host.as_deref(), Some("db.example"));
        assert_eq!(f.port.as_deref(), Some("3307"));
        assert_eq!(f.socket.as_deref(), Some("/run/mysqld/mysqld.sock"));
    }

    #[test]
    fn quotes_escapes_and_later_settings() {
        let f = parse(
            "[client]\npassword='first'\n[client-mariadb]\npassword = 'it\\'s\\sa \\\\ \\\"x\\\"'\n",
        );
        assert_eq!(
            f.password.as_ref().map(Secret::expose),
            Some("it's a \\ \"x\"")
        );
        let f = parse("[mysql]\npassword=plain\\tvalue;not-a-comment\n");
        assert_eq!(
            f.password.as_ref().map(Secret::expose),
            Some("plain\tvalue;not-a-comment")
        );
        // An explicitly empty password is a password; a bare key (prompt) is not.
        let f = parse("[client]\npassword=\n");
        assert_eq!(f.password.as_ref().map(Secret::expose), Some(""));
        let f = parse("[client]\npassword\n");
        assert_eq!(f.password, None);
        let f = parse("[CLIENT]\nUser = x\n[mariadb-client]\nuser=y\n");
        assert_eq!(f.user.as_deref(), Some("y"));
        // Settings outside a client group, and before any group, do not count.
        let f = parse("user=nobody\n[server]\nuser=mysql\n");
        assert_eq!(f, OptionFile::default());
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn sources_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path();
        std::fs::write(
            home.join(".my.cnf"),
            "[client]\nuser=home-user\npassword=from-home\nport=3310\n",
        )
        .expect("write");
        let extra = home.join("extra.cnf");
        std::fs::write(&extra, "[client]\npassword=from-extra\nhost=extra-host\n").expect("write");
        let pwfile = home.join("pw");
        std::fs::write(&pwfile, "from-file\nsecond line\n").expect("write");

        let none = env_of(&[]);
        let both = env_of(&[
            ("MARIADB_PWD", "from-mariadb-env"),
            ("MYSQL_PWD", "from-env"),
        ]);
        let mysql = env_of(&[("MYSQL_PWD", "from-env"), ("MARIADB_PWD", "")]);

        let c = resolve(FromUrl::default(), &none, Some(home)).expect("resolves");
        assert_eq!(c.password.expose(), "from-home");
        assert_eq!(c.options.user.as_deref(), Some("home-user"));
        assert_eq!(c.options.port.as_deref(), Some("3310"));

        let c = resolve(FromUrl::default(), &mysql, Some(home)).expect("resolves");
        assert_eq!(c.password.expose(), "from-env");
        assert_eq!(c.password_from.as_deref(), Some("MYSQL_PWD"));
        assert!(c.trail.iter().any(|t| t == "MARIADB_PWD: empty, ignored"));
        let c = resolve(FromUrl::default(), &both, Some(home)).expect("resolves");
        assert_eq!(c.password.expose(), "from-mariadb-env");

        let url = FromUrl {
            defaults_file: Some(extra.clone()),
            ..FromUrl::default()
        };
        let c = resolve(url, &both, Some(home)).expect("resolves");
        assert_eq!(c.password.expose(), "from-extra");
        assert_eq!(c.options.host.as_deref(), Some("extra-host"));
        // The named file's settings win; the home file fills the rest.
        assert_eq!(c.options.user.as_deref(), Some("home-user"));

        let url = FromUrl {
            password_file: Some(pwfile.clone()),
            defaults_file: Some(extra.clone()),
            ..FromUrl::default()
        };
        let c = resolve(url, &both, Some(home)).expect("resolves");
        assert_eq!(c.password.expose(), "from-file");

        let url = FromUrl {
            password: Some(Secret::new("")),
            password_file: Some(pwfile.clone()),
            ..FromUrl::default()
        };
        let c = resolve(url, &both, Some(home)).expect("resolves");
        assert_eq!(c.password.expose(), "", "an explicit empty password wins");
        assert_eq!(c.password_from.as_deref(), Some("the URL"));

        // Nothing anywhere: no password, and every source is named.
        let empty = tempfile::tempdir().expect("tempdir");
        let c = resolve(FromUrl::default(), &none, Some(empty.path())).expect("resolves");
        assert!(c.password.is_empty());
        assert_eq!(c.password_from, None);
        let trail = c.trail.join("; ");
        for source in [
            "the URL",
            "password_file",
            "defaults_file",
            "MARIADB_PWD",
            "MYSQL_PWD",
            ".my.cnf",
        ] {
            assert!(trail.contains(source), "{trail}");
        }

        // Files the URL names must exist; the message names them.
        let url = FromUrl {
            password_file: Some(home.join("missing")),
            ..FromUrl::default()
        };
        let err = resolve(url, &none, Some(home)).expect_err("missing password file");
        assert_eq!(err.kind(), ErrorKind::Authentication);
        assert!(err.to_string().contains("missing"), "{err}");
        let url = FromUrl {
            defaults_file: Some(home.join("missing.cnf")),
            ..FromUrl::default()
        };
        let err = resolve(url, &none, Some(home)).expect_err("missing option file");
        assert_eq!(err.kind(), ErrorKind::Authentication);
    }

    #[test]
    fn refusals_name_sources_but_no_secret() {
        let env = env_of(&[("MYSQL_PWD", "hunter2-secret")]);
        let empty = tempfile::tempdir().expect("tempdir");
        let c = resolve(FromUrl::default(), &env, Some(empty.path())).expect("resolves");
        let text = explain_refusal(
            "app",
            &c,
            "Access denied for user 'app'@'127.0.0.1' (using password: YES)",
            false,
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("MYSQL_PWD") && text.contains("correct"),
            "{text}"
        );
        let c = resolve(FromUrl::default(), &env_of(&[]), Some(empty.path())).expect("ok");
        let text = explain_refusal("app", &c, "Access denied", false);
        assert!(text.contains("without a password"), "{text}");
        assert!(text.contains("password_file=/path"), "{text}");
    }
}
