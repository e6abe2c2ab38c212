//! libpq's files, read the way libpq reads them: the password file (`~/.pgpass`,
//! `PGPASSFILE`) and the connection service file (`~/.pg_service.conf`,
//! `PGSERVICEFILE`, `PGSYSCONFDIR/pg_service.conf`).
//!
//! Only reading and matching live here; which source wins is decided in `config`. A
//! password leaves this module only as a [`Secret`], and nothing here logs one: a
//! lookup reports the file and line it used, never the value.

use std::fmt;
use std::path::{Path, PathBuf};

use ops_core::{Error, Result, Secret};

/// libpq's socket directory on Debian and Ubuntu (`DEFAULT_PGSOCKET_DIR`): a
/// connection through it is `localhost` in the password file.
pub(crate) const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// libpq's `SYSCONFDIR` on Debian and Ubuntu, for `pg_service.conf` when
/// `PGSYSCONFDIR` is not set.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The home directory: `HOME`, else the user database (as libpq).
pub(crate) fn home_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Some(PathBuf::from(h)),
        None => nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir),
    }
}

/// What a connection looks up in the password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PassKey {
    /// The host name, the socket directory, or `localhost` for the default socket.
    pub host: String,
    pub port: String,
    pub dbname: String,
    pub user: String,
}

impl fmt::Display for PassKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.host, self.port, self.dbname, self.user
        )
    }
}

/// How a password file lookup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PassfileOutcome {
    /// Line `line` (from 1) matched.
    Found { line: usize },
    /// No line matches the connection.
    NoMatch,
    /// There is no such file.
    Missing,
    /// Not a plain file: ignored, as libpq does.
    NotAFile,
    /// Group or others may access it (`mode`): ignored, as libpq does.
    Insecure { mode: u32 },
    /// It could not be read.
    Unreadable(String),
}

/// A password file lookup: what it found and why.
#[derive(Debug, Clone)]
pub(crate) struct PassfileLookup {
    pub outcome: PassfileOutcome,
    pub password: Option<Secret>,
}

/// Looks the connection `key` up in the password file at `path`, as libpq does: a
/// file that is not a plain file or that group or others may access is ignored (with
/// a warning); the first matching line wins.
pub(crate) fn lookup_passfile(path: &Path, key: &PassKey) -> PassfileLookup {
    use std::os::unix::fs::PermissionsExt;
    let done = |outcome| PassfileLookup {
        outcome,
        password: None,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return done(PassfileOutcome::Missing);
        }
        Err(e) => return done(PassfileOutcome::Unreadable(e.to_string())),
    };
    if !meta.is_file() {
        tracing::warn!(
            "password file {} is not a plain file; ignored",
            path.display()
        );
        return done(PassfileOutcome::NotAFile);
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access (mode {mode:04o}); permissions \
             should be u=rw (0600) or less; ignored",
            path.display()
        );
        return done(PassfileOutcome::Insecure { mode });
    }
    let text = match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => return done(PassfileOutcome::Unreadable("not UTF-8".to_owned())),
        },
        Err(e) => return done(PassfileOutcome::Unreadable(e.to_string())),
    };
    match find_password(&text, key) {
        Some((line, password)) => PassfileLookup {
            outcome: PassfileOutcome::Found { line },
            password: Some(password),
        },
        None => done(PassfileOutcome::NoMatch),
    }
}

/// The first line of a password file's `text` that matches `key`: its number (from 1)
/// and password. Lines are `host:port:database:user:password`; `*` matches anything;
/// `\` escapes the next character (`\:`, `\\`); lines starting with `#` are comments.
pub(crate) fn find_password(text: &str, key: &PassKey) -> Option<(usize, Secret)> {
    for (n, line) in text.split('\n').enumerate() {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = Some(line)
            .and_then(|l| match_field(l, &key.host))
            .and_then(|l| match_field(l, &key.port))
            .and_then(|l| match_field(l, &key.dbname))
            .and_then(|l| match_field(l, &key.user));
        if let Some(rest) = rest {
            return Some((n + 1, Secret::new(unescape_password(rest))));
        }
    }
    None
}

/// Matches the first field of `line` against `token` (libpq's `pwdfMatchesString`):
/// the rest of the line after the field's `:`, or None.
fn match_field<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let (b, t) = (line.as_bytes(), token.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < b.len() {
        let mut escaped = false;
        if b[i] == b'\\' {
            i += 1;
            escaped = true;
        }
        let c = b.get(i).copied();
        if c == Some(b':') && j == t.len() && !escaped {
            // `:` is ASCII: i + 1 is a character boundary.
            return line.get(i + 1..);
        }
        if j == t.len() || c != Some(t[j]) {
            return None;
        }
        i += 1;
        j += 1;
    }
    None
}

/// The password field: up to the first unescaped `:`, escapes removed.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

/// A service's `keyword=value` settings with their line numbers, in file order.
pub(crate) type ServiceSettings = Vec<(String, String, usize)>;

/// One section of a connection service file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Service {
    pub name: String,
    /// The file that defines it.
    pub file: PathBuf,
    pub settings: ServiceSettings,
}

/// Finds service `name` as libpq does: in `PGSERVICEFILE` (which must exist) or else
/// `~/.pg_service.conf`, then in `PGSYSCONFDIR/pg_service.conf` (default
/// `/etc/postgresql-common/pg_service.conf`).
///
/// # Errors
/// [`ops_core::ErrorKind::InvalidInput`]: the service is defined nowhere, a file
/// has a line that is not `keyword=value`, or nests another service; I/O errors.
pub(crate) fn find_service(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Service> {
    let mut looked = Vec::new();
    let user_file = match env("PGSERVICEFILE").filter(|f| !f.is_empty()) {
        Some(f) => {
            let path = PathBuf::from(f);
            if !path.is_file() {
                return Err(Error::invalid(format!(
                    "service file {} (PGSERVICEFILE) not found",
                    path.display()
                )));
            }
            Some(path)
        }
        None => home_dir(env)
            .map(|h| h.join(".pg_service.conf"))
            .filter(|p| p.exists()),
    };
    let system_file = PathBuf::from(
        env("PGSYSCONFDIR")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_owned()),
    )
    .join("pg_service.conf");
    for path in user_file.into_iter().chain(Some(system_file)) {
        if !path.exists() {
            looked.push(format!("{} (absent)", path.display()));
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading service file {}", path.display()), e))?;
        if let Some(settings) = service_section(&text, name)
            .map_err(|why| Error::invalid(format!("service file {}: {why}", path.display())))?
        {
            return Ok(Service {
                name: name.to_owned(),
                file: path,
                settings,
            });
        }
        looked.push(path.display().to_string());
    }
    Err(Error::invalid(format!(
        "definition of service '{name}' not found (looked in {}; PGSERVICEFILE names the \
         user's file, PGSYSCONFDIR the directory of the system-wide one)",
        looked.join(", ")
    )))
}

/// The settings of section `[name]` of a service file's `text`, None when it has no
/// such section. As libpq: whitespace around a line is ignored, `#` starts a comment
/// line, nothing is trimmed around `=`.
fn service_section(text: &str, name: &str) -> std::result::Result<Option<ServiceSettings>, String> {
    let mut found: Option<ServiceSettings> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            if found.is_some() {
                break;
            }
            if section
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with(']'))
            {
                found = Some(Vec::new());
            }
            continue;
        }
        let Some(settings) = found.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {} is not keyword=value", n + 1));
        };
        if key == "service" {
            return Err(format!(
                "line {}: nested service specifications are not supported",
                n + 1
            ));
        }
        settings.push((key.to_owned(), value.to_owned(), n + 1));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, port: &str, db: &str, user: &str) -> PassKey {
        PassKey {
            host: host.into(),
            port: port.into(),
            dbname: db.into(),
            user: user.into(),
        }
    }

    fn found(text: &str, k: &PassKey) -> Option<(usize, String)> {
        find_password(text, k).map(|(n, pw)| (n, pw.expose().to_owned()))
    }

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        let text = "# comment:*:*:*:nope\n\
                    \n\
                    db1:5432:shop:alice:first\r\n\
                    *:5432:shop:alice:second\n\
                    *:*:*:alice:third\n\
                    *:*:*:*:fallback\n";
        let k = key("db1", "5432", "shop", "alice");
        assert_eq!(found(text, &k), Some((3, "first".into())));
        assert_eq!(
            found(text, &key("db2", "5432", "shop", "alice")),
            Some((4, "second".into()))
        );
        assert_eq!(
            found(text, &key("db2", "6543", "other", "alice")),
            Some((5, "third".into()))
        );
        assert_eq!(
            found(text, &key("db2", "6543", "other", "bob")),
            Some((6, "fallback".into()))
        );
        // A field is matched whole: no prefixes, no partial wildcards.
        assert_eq!(found("db:5432:shop:al:pw\n", &k), None);
        assert_eq!(found("db1:5432:shop:alicex:pw\n", &k), None);
        assert_eq!(found("db*:5432:shop:alice:pw\n", &k), None);
        // A literal `*` in a field that is not only `*` is a character.
        assert_eq!(
            found(
                "d\\*:5432:shop:alice:pw\n",
                &key("d*", "5432", "shop", "alice")
            ),
            Some((1, "pw".into()))
        );
        // Too few fields: no match.
        assert_eq!(found("db1:5432:shop:alice\n", &k), None);
    }

    #[test]
    fn escapes_in_fields_and_password() {
        let text = "h\\:x:5432:d\\\\b:u\\:1:p\\:w\\\\d:ignored\n";
        assert_eq!(
            found(text, &key("h:x", "5432", "d\\b", "u:1")),
            Some((1, "p:w\\d".into()))
        );
        // An empty password, and one ending in a lone backslash.
        assert_eq!(
            found("*:*:*:u:\n", &key("h", "1", "d", "u")),
            Some((1, String::new()))
        );
        assert_eq!(
            found("*:*:*:u:ab\\", &key("h", "1", "d", "u")),
            Some((1, "ab\\".into()))
        );
        // Non-ASCII names and passwords.
        assert_eq!(
            found(
                "*:*:bücher:jörg:pässwörd\n",
                &key("h", "1", "bücher", "jörg")
            ),
            Some((1, "pässwörd".into()))
        );
    }

    #[test]
    fn permissions_and_missing_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgpass");
        let k = key("h", "5432", "d", "u");
        assert_eq!(lookup_passfile(&path, &k).outcome, PassfileOutcome::Missing);
        std::fs::write(&path, "*:*:*:u:sekrit\n").expect("write");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let got = lookup_passfile(&path, &k);
            if ok {
                assert_eq!(got.outcome, PassfileOutcome::Found { line: 1 });
                assert_eq!(got.password.as_ref().map(Secret::expose), Some("sekrit"));
            } else {
                assert_eq!(got.outcome, PassfileOutcome::Insecure { mode });
                assert!(got.password.is_none());
            }
            assert!(!format!("{got:?}").contains("sekrit"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            lookup_passfile(&path, &key("h", "5432", "d", "other")).outcome,
            PassfileOutcome::NoMatch
        );
        assert_eq!(
            lookup_passfile(dir.path(), &k).outcome,
            PassfileOutcome::NotAFile
        );
    }

    #[test]
    fn service_sections() {
        let text = "# services\n\
                    [other]\nhost=elsewhere\n\n\
                    [shop]\n  host=db.example  \nport=6543\ndbname=shop\npassword= sp ace\n\
                    [shopping]\nhost=wrong\n";
        let s = service_section(text, "shop")
            .expect("valid")
            .expect("found");
        assert_eq!(
            s,
            [
                ("host".into(), "db.example".into(), 6),
                ("port".into(), "6543".into(), 7),
                ("dbname".into(), "shop".into(), 8),
                ("password".into(), " sp ace".into(), 9),
            ]
        );
        assert_eq!(service_section(text, "sho").expect("valid"), None);
        assert!(service_section("[a]\nhost\n", "a").is_err());
        assert!(service_section("[a]\nservice=b\n", "a").is_err());
        // Lines outside the wanted section are not checked.
        assert!(service_section("[a]\nhost\n[b]\nport=1\n", "b").is_ok());
    }

    #[test]
    fn service_files_in_libpq_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let sys = dir.path().join("etc");
        std::fs::create_dir_all(&home).expect("mkdir");
        std::fs::create_dir_all(&sys).expect("mkdir");
        std::fs::write(home.join(".pg_service.conf"), "[a]\nhost=from-home\n").expect("write");
        std::fs::write(
            sys.join("pg_service.conf"),
            "[a]\nhost=from-sys\n[b]\nhost=sys-b\n",
        )
        .expect("write");
        let env = |k: &str| match k {
            "HOME" => Some(home.display().to_string()),
            "PGSYSCONFDIR" => Some(sys.display().to_string()),
            _ => None,
        };
        let a = find_service("a", &env).expect("a");
        assert_eq!(a.settings[0].1, "from-home");
        assert_eq!(a.file, home.join(".pg_service.conf"));
        let b = find_service("b", &env).expect("b");
        assert_eq!(b.settings[0].1, "sys-b");
        let err = find_service("c", &env).expect_err("c is nowhere");
        assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
        assert!(err.message().contains("'c'"), "{err}");
        let missing = |k: &str| match k {
            "PGSERVICEFILE" => Some("/nonexistent/pg_service.conf".to_owned()),
            _ => env(k),
        };
        let err = find_service("a", &missing).expect_err("PGSERVICEFILE must exist");
        assert!(err.message().contains("PGSERVICEFILE"), "{err}");
    }
}
