//! Server globals: the users, roles, role grants, default roles and privileges
//! (global, database, table, column, routine, proxy) of a MariaDB server, dumped as
//! JSON lines into one stream ([`STREAM`]) and recreated object by object.
//!
//! The dump reads what the server prints — `SHOW CREATE USER` and `SHOW GRANTS FOR` —
//! rather than the `mysql` tables, so that what is restored is the server's own
//! statements. Each `SHOW GRANTS` line is sorted by what it refers to: a global,
//! proxy or role grant is restored before the databases, a database, table (with its
//! columns) or routine grant and a default role after them, when their objects exist.
//! Account attributes that `SHOW GRANTS` repeats (`IDENTIFIED …`, `REQUIRE`, resource
//! limits) are taken off the grants: they belong to `CREATE USER`.
//!
//! Left out: the accounts an installation makes itself (see [`is_system_account`]),
//! which a new server has already and a restore must not touch, and anonymous
//! accounts. Password hashes only when asked for: otherwise each password method of a
//! user becomes `mysql_native_password` with the hash `invalid`, which no password
//! matches (the form MariaDB's own packages use for accounts that must not log in by
//! password); methods without a secret (`unix_socket`, `pam`, `gssapi`) stay.
//!
//! Nothing about database contents lives here (that is `dump.rs` and `restore.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use futures::TryStreamExt;
use mysql_async::Conn;
use ops_core::{
    DumpSink, Error, ErrorKind, GlobalsOptions, GlobalsPhase, GlobalsReport, GlobalsRestoreOptions,
    Result, StreamRole, StreamSource, StreamSpec,
};
use serde::{Deserialize, Serialize};

use crate::conn::{self, ConnConfig, Session};
use crate::format::{quote_ident, quote_str};

/// The stream that holds a MariaDB server's globals.
pub(crate) const STREAM: &str = "globals/mariadb";
/// The header's format name, and the highest version this code reads.
const FORMAT: &str = "dbops-mariadb-globals";
const VERSION: u32 = 1;

/// How many names a warning lists before it says how many more there are.
const NAMED: usize = 20;

/// The system databases a whole-server backup leaves out.
pub(crate) const SYSTEM_DATABASES: [&str; 4] =
    ["information_schema", "mysql", "performance_schema", "sys"];

/// Accounts that an installation creates and a new server therefore has already:
/// every `root` account (`localhost`, `127.0.0.1`, `::1`, the host name, and `%`
/// where one was added), `mariadb.sys` (the definer of the `mysql.user` view) and
/// `mysql@localhost` (the service account of the packages, `unix_socket`). They are
/// neither dumped nor touched by a restore: the target's own stay as they are.
pub(crate) fn is_system_account(user: &str, host: &str) -> bool {
    user == "root" || user == "mariadb.sys" || (user == "mysql" && host == "localhost")
}

/// A user (`user@host`), a role (no host), or `PUBLIC` (a role without a row of its
/// own before something is granted to it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Account {
    user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

impl Account {
    fn user(user: &str, host: &str) -> Self {
        Self {
            user: user.to_owned(),
            host: Some(host.to_owned()),
        }
    }

    fn role(name: &str) -> Self {
        Self {
            user: name.to_owned(),
            host: None,
        }
    }

    fn is_public(&self) -> bool {
        self.host.is_none() && self.user == "PUBLIC"
    }

    /// As `SHOW` statements take it: `'user'@'host'`, `'role'`, `PUBLIC`.
    fn literal(&self) -> String {
        match &self.host {
            Some(host) => format!("{}@{}", quote_str(&self.user), quote_str(host)),
            None if self.is_public() => "PUBLIC".to_owned(),
            None => quote_str(&self.user),
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(host) => write!(f, "user {}@{}", quote_str(&self.user), quote_str(host)),
            None if self.is_public() => f.write_str("PUBLIC"),
            None => write!(f, "role {}", self.user),
        }
    }
}

/// What a grant refers to, which decides its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Level {
    /// `ON *.*`.
    Global,
    /// `GRANT PROXY ON user@host`.
    Proxy,
    /// `GRANT role TO …`.
    Role,
    /// `ON db.*` (the name is a pattern: `_` and `%` match, `\` escapes).
    Database,
    /// `ON db.table`, with column privileges.
    Table,
    /// `ON FUNCTION|PROCEDURE|PACKAGE [BODY] db.name`.
    Routine,
    /// `SET DEFAULT ROLE role FOR user`.
    DefaultRole,
}

impl Level {
    /// Refers to a database (and is filtered by one).
    fn on_database(self) -> bool {
        matches!(self, Level::Database | Level::Table | Level::Routine)
    }
}

/// One grant (or default role) of one account, as the server printed it, without the
/// account attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Grant {
    to: Account,
    level: Level,
    /// The database (a pattern for [`Level::Database`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    /// The role granted ([`Level::Role`]) or made the default ([`Level::DefaultRole`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    sql: String,
}

/// One line of the stream. Not `Debug`: a user's statement may hold its password
/// hash.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Header {
        format: String,
        version: u32,
        server_version: String,
        /// Whether users carry their password hashes.
        passwords: bool,
    },
    User {
        user: String,
        host: String,
        /// `CREATE USER …` as the server printed it, passwords replaced unless kept.
        create: String,
        /// A password method was replaced by one no password matches.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        password_left_out: bool,
    },
    Role {
        role: String,
    },
    Grant(Grant),
}

/// The accounts a [`GlobalsPhase::BeforeDatabases`] restore created on one server,
/// for the [`GlobalsPhase::AfterDatabases`] phase: only these get the grants that
/// refer to databases, so an account the target had before is never changed.
#[derive(Default)]
pub(crate) struct Created(Mutex<BTreeSet<Account>>);

impl Created {
    fn add(&self, accounts: impl IntoIterator<Item = Account>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(accounts);
    }

    fn contains(&self, account: &Account) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(account)
    }
}

// ---------------------------------------------------------------------------------
// Reading what the server prints.

/// A word of a statement as the server prints it: its byte range. Backquoted names,
/// quoted strings and parenthesized lists are parts of a word, whatever they hold.
fn words(sql: &str) -> Vec<(usize, usize)> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut depth = 0usize;
        while i < bytes.len() {
            match bytes[i] {
                b'`' | b'\'' | b'"' => {
                    let quote = bytes[i];
                    i += 1;
                    while i < bytes.len() {
                        if bytes[i] == b'\\' && quote != b'`' {
                            i += 2;
                            continue;
                        }
                        if bytes[i] == quote {
                            if bytes.get(i + 1) == Some(&quote) {
                                i += 2;
                                continue;
                            }
                            break;
                        }
                        i += 1;
                    }
                    i += 1;
                }
                b'(' => {
                    depth += 1;
                    i += 1;
                }
                b')' => {
                    depth = depth.saturating_sub(1);
                    i += 1;
                }
                c if c.is_ascii_whitespace() && depth == 0 => break,
                _ => i += 1,
            }
        }
        out.push((start, i.min(bytes.len())));
    }
    out
}

/// A name as printed: `` `a``b` `` is ``a`b``; a bare name is itself.
fn unquote(word: &str) -> String {
    match word.strip_prefix('`').and_then(|w| w.strip_suffix('`')) {
        Some(inner) => inner.replace("``", "`"),
        None => word.to_owned(),
    }
}

/// Splits `` `a`.`b` `` (or `` `a`@`b` ``) at the separator outside backquotes.
fn split_at_top(word: &str, separator: u8) -> Option<(&str, &str)> {
    let bytes = word.as_bytes();
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'`' {
            quoted = !quoted;
        } else if b == separator && !quoted {
            return Some((&word[..i], &word[i + 1..]));
        }
    }
    None
}

/// The account a `TO`/`FOR` word names.
fn parse_account(word: &str) -> Option<Account> {
    if word == "PUBLIC" {
        return Some(Account::role("PUBLIC"));
    }
    match split_at_top(word, b'@') {
        Some((user, host)) => Some(Account::user(&unquote(user), &unquote(host))),
        None if word.starts_with('`') => Some(Account::role(&unquote(word))),
        None => None,
    }
}

/// One line of `SHOW GRANTS FOR`, read. `None` for a line of another form (which the
/// caller reports) and for `GRANT USAGE ON *.*` without `WITH GRANT OPTION`, which
/// grants nothing.
fn parse_grant(line: &str) -> Option<Option<Grant>> {
    let w = words(line);
    let word = |i: usize| w.get(i).map(|&(s, e)| &line[s..e]);
    if line.starts_with("SET DEFAULT ROLE ") {
        // SET DEFAULT ROLE `r` FOR `u`@`h`
        if word(4)? != "FOR" {
            return None;
        }
        return Some(Some(Grant {
            to: parse_account(word(5)?)?,
            level: Level::DefaultRole,
            database: None,
            role: Some(unquote(word(3)?)),
            sql: line[..w.get(5)?.1].to_owned(),
        }));
    }
    if word(0)? != "GRANT" {
        return None;
    }
    let to = (1..w.len()).find(|&i| word(i) == Some("TO"))?;
    let on = (1..to).find(|&i| word(i) == Some("ON"));
    let account_end = w.get(to + 1)?.1;
    let account = parse_account(word(to + 1)?)?;
    let suffix: Vec<&str> = (to + 2..w.len()).filter_map(word).collect();
    let option = |what: &str| suffix.windows(2).any(|p| p[0] == what && p[1] == "OPTION");
    let (level, database, role, with) = match on {
        None => {
            // GRANT `role` TO …
            if to != 2 {
                return None;
            }
            let with = if option("ADMIN") {
                " WITH ADMIN OPTION"
            } else {
                ""
            };
            (Level::Role, None, Some(unquote(word(1)?)), with)
        }
        Some(on) => {
            let privileges = &line[w[1].0..w[on - 1].1];
            let with = if option("GRANT") {
                " WITH GRANT OPTION"
            } else {
                ""
            };
            let target: Vec<&str> = (on + 1..to).filter_map(word).collect();
            match target.as_slice() {
                [_] if privileges == "PROXY" => (Level::Proxy, None, None, with),
                ["*.*"] if privileges == "USAGE" && with.is_empty() => return Some(None),
                ["*.*"] => (Level::Global, None, None, with),
                [object] => {
                    let (db, name) = split_at_top(object, b'.')?;
                    let level = if name == "*" {
                        Level::Database
                    } else {
                        Level::Table
                    };
                    (level, Some(unquote(db)), None, with)
                }
                ["FUNCTION" | "PROCEDURE" | "PACKAGE", object] | ["PACKAGE", "BODY", object] => {
                    let (db, _) = split_at_top(object, b'.')?;
                    (Level::Routine, Some(unquote(db)), None, with)
                }
                _ => return None,
            }
        }
    };
    Some(Some(Grant {
        to: account,
        level,
        database,
        role,
        sql: format!("{}{with}", &line[..account_end]),
    }))
}

/// Login methods whose `USING` string is no secret: a service or principal name.
const NO_SECRET_PLUGINS: [&str; 4] = ["unix_socket", "pam", "gssapi", "named_pipe"];

/// The method that no password matches.
const NO_PASSWORD: &str = "mysql_native_password USING 'invalid'";

/// `CREATE USER` as `SHOW CREATE USER` printed it, with its password methods replaced
/// by [`NO_PASSWORD`] unless `passwords`; and whether one was.
fn user_statement(account: &Account, create: &str, passwords: bool) -> (String, bool) {
    if passwords {
        return (create.to_owned(), false);
    }
    // A form this code does not know keeps nothing that could be a secret, and so
    // nothing but the account.
    let unknown = || {
        let host = account.host.as_deref().unwrap_or_default();
        (
            format!(
                "CREATE USER {}@{} IDENTIFIED VIA {NO_PASSWORD}",
                quote_ident(&account.user),
                quote_ident(host)
            ),
            true,
        )
    };
    let w = words(create);
    let word = |i: usize| w.get(i).map(|&(s, e)| &create[s..e]);
    let quoted = |t: Option<&str>| t.is_some_and(|t| t.len() >= 2 && t.starts_with('\''));
    if word(0) != Some("CREATE") || word(1) != Some("USER") || w.len() < 3 {
        return unknown();
    }
    let head = &create[..w[2].1];
    if word(3) != Some("IDENTIFIED") {
        return (create.to_owned(), false);
    }
    // (plugin, authentication string) per method.
    let mut methods: Vec<(String, Option<&str>)> = Vec::new();
    let mut i;
    if word(4) == Some("BY") && word(5) == Some("PASSWORD") && quoted(word(6)) {
        methods.push(("mysql_native_password".to_owned(), word(6)));
        i = 7;
    } else if word(4) == Some("VIA") {
        i = 5;
        while let Some(plugin) = word(i) {
            i += 1;
            let auth = if matches!(word(i), Some("USING" | "AS")) {
                if !quoted(word(i + 1)) {
                    return unknown();
                }
                i += 2;
                word(i - 1)
            } else {
                None
            };
            methods.push((plugin.to_owned(), auth));
            if word(i) != Some("OR") {
                break;
            }
            i += 1;
        }
    } else {
        return unknown();
    }
    let rest = w.get(i).map_or("", |&(s, _)| &create[s..]);
    let mut left_out = false;
    let mut kept: Vec<String> = Vec::new();
    for (plugin, auth) in methods {
        let secret = match auth {
            None | Some("''" | "'invalid'") => false,
            Some(_) => !NO_SECRET_PLUGINS.contains(&plugin.as_str()),
        };
        let method = if secret {
            left_out = true;
            NO_PASSWORD.to_owned()
        } else {
            match auth {
                Some(a) => format!("{plugin} USING {a}"),
                None => plugin,
            }
        };
        if !kept.contains(&method) {
            kept.push(method);
        }
    }
    if kept.is_empty() {
        kept.push(NO_PASSWORD.to_owned());
        left_out = true;
    }
    let mut sql = format!("{head} IDENTIFIED VIA {}", kept.join(" OR "));
    if !rest.is_empty() {
        sql.push(' ');
        sql.push_str(rest);
    }
    (sql, left_out)
}

/// The quoted strings of a statement's `IDENTIFIED` clause: what an error message
/// about it must not show.
fn secrets_of(sql: &str) -> Vec<String> {
    let w = words(sql);
    w.iter()
        .map(|&(s, e)| &sql[s..e])
        .filter(|t| t.len() > 2 && t.starts_with('\'') && *t != "'invalid'")
        .map(|t| t[1..t.len() - 1].to_owned())
        .collect()
}

/// `name` matches the database pattern of a `db.*` grant (`%`, `_`, `\` escapes).
fn like(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('%') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('_') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

impl Grant {
    /// Refers to one of `databases`.
    fn on_any(&self, databases: &[String]) -> bool {
        let Some(db) = &self.database else {
            return false;
        };
        databases.iter().any(|d| match self.level {
            Level::Database => like(db, d),
            _ => db == d,
        })
    }
}

// ---------------------------------------------------------------------------------
// Dump.

/// Refuses a server that is not MariaDB: MySQL keeps roles and users otherwise.
async fn require_mariadb(c: &mut Conn) -> Result<String> {
    let version = conn::query_string(c, "SELECT VERSION()").await?;
    if !version.contains("MariaDB") {
        return Err(Error::invalid(format!(
            "server globals (users, roles, grants) are read from MariaDB only; this server \
             is MySQL {version}"
        )));
    }
    Ok(version)
}

/// The message for an account that may not read the accounts.
fn denied(e: Error, user: &str) -> Error {
    if e.kind() != ErrorKind::PermissionDenied {
        return e;
    }
    let message = format!(
        "reading the server's users, roles and grants needs SELECT on the mysql database \
         (GRANT SELECT ON mysql.* TO the account {user}): {}",
        e.message()
    );
    e.with_message(message)
}

pub(crate) async fn dump(
    config: &ConnConfig,
    options: &GlobalsOptions,
    sink: Arc<dyn DumpSink>,
) -> Result<()> {
    let mut c = conn::connect(config, None, Session::Catalog).await?;
    let result = dump_on(&mut c, &config.user, options, sink.as_ref()).await;
    conn::disconnect(c).await;
    result
}

async fn dump_on(
    c: &mut Conn,
    login: &str,
    options: &GlobalsOptions,
    sink: &dyn DumpSink,
) -> Result<()> {
    let server_version = require_mariadb(c).await?;
    let rows = conn::query_rows(c, "SELECT User, Host, is_role FROM mysql.user")
        .await
        .map_err(|e| denied(e, login))?;
    let mut users = Vec::new();
    let mut roles = Vec::new();
    let mut anonymous = Vec::new();
    let mut public = false;
    for row in &rows {
        let (user, host, is_role) = (
            conn::text(row, 0)?,
            conn::text(row, 1)?,
            conn::text(row, 2)?,
        );
        if is_role == "Y" {
            if user == "PUBLIC" {
                public = true;
            } else {
                roles.push(Account::role(&user));
            }
        } else if user.is_empty() {
            anonymous.push(Account::user(&user, &host));
        } else if !is_system_account(&user, &host) {
            users.push(Account::user(&user, &host));
        }
    }
    users.sort();
    roles.sort();
    if !anonymous.is_empty() {
        let names: Vec<String> = anonymous.iter().map(Account::to_string).collect();
        sink.warn(format!(
            "anonymous accounts are not backed up ({}): they let anyone log in; \
             mariadb-secure-installation removes them",
            names.join(", ")
        ));
    }
    let mut entries = vec![Entry::Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        server_version,
        passwords: options.role_passwords,
    }];
    let mut grants = Vec::new();
    let mut odd = Vec::new();
    let mut gone = Vec::new();
    let accounts = users
        .iter()
        .chain(&roles)
        .cloned()
        .chain(public.then(|| Account::role("PUBLIC")));
    for account in accounts {
        let lines =
            match conn::query_strings(c, &format!("SHOW GRANTS FOR {}", account.literal())).await {
                Ok(lines) => lines,
                // Dropped since the list was read.
                Err(e) if vanished(&e) => {
                    gone.push(account.to_string());
                    continue;
                }
                Err(e) => {
                    return Err(denied(e, login).during(format!("reading the grants of {account}")));
                }
            };
        if let Some(host) = &account.host {
            let create =
                match conn::query_string(c, &format!("SHOW CREATE USER {}", account.literal()))
                    .await
                {
                    Ok(create) => create,
                    Err(e) if vanished(&e) => {
                        gone.push(account.to_string());
                        continue;
                    }
                    Err(e) => {
                        return Err(denied(e, login).during(format!("reading {account}")));
                    }
                };
            let (create, password_left_out) =
                user_statement(&account, &create, options.role_passwords);
            entries.push(Entry::User {
                user: account.user.clone(),
                host: host.clone(),
                create,
                password_left_out,
            });
        } else if !account.is_public() {
            entries.push(Entry::Role {
                role: account.user.clone(),
            });
        }
        for line in lines {
            match parse_grant(&line) {
                // SHOW GRANTS for a role adds the grants of the roles it holds.
                Some(Some(g)) if g.to == account => grants.push(g),
                Some(_) => {}
                None => odd.push(account.to_string()),
            }
        }
    }
    if !gone.is_empty() {
        sink.warn(format!(
            "accounts dropped while the backup read them, not backed up: {}",
            gone.join(", ")
        ));
    }
    if !odd.is_empty() {
        odd.dedup();
        sink.warn(format!(
            "grants of a form dbops does not know were not backed up, of: {}",
            odd.join(", ")
        ));
    }
    entries.extend(grants.into_iter().map(Entry::Grant));
    let mut bytes = Vec::new();
    for e in &entries {
        serde_json::to_writer(&mut bytes, e)
            .map_err(|e| Error::internal(format!("writing the globals: {e}")))?;
        bytes.push(b'\n');
    }
    let mut w = sink
        .open_stream(StreamSpec::new(STREAM, StreamRole::Auxiliary))
        .await?;
    w.write(bytes.into()).await?;
    w.finish().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Restore.

/// What the stream holds.
struct Globals {
    users: Vec<(Account, String, bool)>,
    roles: Vec<Account>,
    grants: Vec<Grant>,
}

async fn read(source: &dyn StreamSource) -> Result<Globals> {
    let mut stream = source.open(STREAM).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            let message = format!(
                "the backup holds no MariaDB users, roles or grants (no stream {STREAM}): \
                 it was taken before dbops backed them up, or of another engine"
            );
            e.with_message(message)
        } else {
            e
        }
    })?;
    let mut bytes = Vec::new();
    while let Some(piece) = stream.try_next().await? {
        bytes.extend_from_slice(&piece);
    }
    let mut lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let bad = |what: String| Error::corrupt(format!("stream {STREAM}: {what}"));
    match lines
        .next()
        .map(serde_json::from_slice::<Entry>)
        .transpose()
        .map_err(|e| bad(format!("no valid header: {e}")))?
    {
        Some(Entry::Header {
            format, version, ..
        }) => {
            if format != FORMAT || version > VERSION {
                return Err(Error::new(
                    ErrorKind::UnsupportedFormat,
                    format!(
                        "stream {STREAM} is {format} version {version}; this dbops reads \
                         {FORMAT} up to version {VERSION}: use a newer dbops"
                    ),
                ));
            }
        }
        _ => return Err(bad("no header".to_owned())),
    }
    let mut out = Globals {
        users: Vec::new(),
        roles: Vec::new(),
        grants: Vec::new(),
    };
    for (i, line) in lines.enumerate() {
        // The line itself is not shown: it may hold a password hash.
        let entry: Entry =
            serde_json::from_slice(line).map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
        match entry {
            Entry::Header { .. } => return Err(bad(format!("line {}: a second header", i + 2))),
            Entry::User {
                user,
                host,
                create,
                password_left_out,
            } => out
                .users
                .push((Account::user(&user, &host), create, password_left_out)),
            Entry::Role { role } => out.roles.push(Account::role(&role)),
            Entry::Grant(g) => out.grants.push(g),
        }
    }
    Ok(out)
}

/// The accounts a restore of `databases` needs: those with a grant on one of them,
/// directly or through a role they hold, and the roles they hold. Every account when
/// `databases` is empty.
fn select(globals: &Globals, databases: &[String]) -> BTreeSet<Account> {
    let all = globals
        .users
        .iter()
        .map(|(a, _, _)| a.clone())
        .chain(globals.roles.iter().cloned())
        .chain(globals.grants.iter().map(|g| g.to.clone()));
    if databases.is_empty() {
        return all.collect();
    }
    // Roles each account holds.
    let mut holds: BTreeMap<&Account, Vec<Account>> = BTreeMap::new();
    for g in &globals.grants {
        if let (Level::Role, Some(role)) = (g.level, &g.role) {
            holds.entry(&g.to).or_default().push(Account::role(role));
        }
    }
    let closure = |start: &Account| -> BTreeSet<Account> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.clone()];
        while let Some(a) = todo.pop() {
            if seen.insert(a.clone())
                && let Some(roles) = holds.get(&a)
            {
                todo.extend(roles.iter().cloned());
            }
        }
        seen
    };
    let direct: BTreeSet<&Account> = globals
        .grants
        .iter()
        .filter(|g| g.on_any(databases))
        .map(|g| &g.to)
        .collect();
    let mut chosen = BTreeSet::new();
    for account in all {
        let reach = closure(&account);
        if reach.iter().any(|a| direct.contains(a)) {
            chosen.extend(reach);
        }
    }
    chosen
}

/// An account dropped since the list of accounts was read (no such grant, no such
/// user): left out, not a failure.
fn vanished(e: &Error) -> bool {
    matches!(code_of(e), Some("1141" | "1133"))
}

fn code_of(e: &Error) -> Option<&str> {
    e.context_value("code")
}

/// Lists at most [`NAMED`] names.
fn listed(names: &[String]) -> String {
    let mut out = names
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMED {
        out.push_str(&format!(" and {} more", names.len() - NAMED));
    }
    out
}

pub(crate) async fn restore(
    config: &ConnConfig,
    created: &Created,
    source: &dyn StreamSource,
    options: &GlobalsRestoreOptions,
) -> Result<GlobalsReport> {
    let globals = read(source).await?;
    let mut c = conn::connect(config, None, Session::Catalog).await?;
    let result = async {
        require_mariadb(&mut c).await?;
        match options.phase {
            GlobalsPhase::BeforeDatabases => before(&mut c, created, &globals, options).await,
            GlobalsPhase::AfterDatabases => after(&mut c, created, &globals, options).await,
        }
    }
    .await;
    conn::disconnect(c).await;
    result
}

/// Applies one grant; a grant whose object is missing or whose role cannot be given
/// is a warning, not a failure.
async fn grant(c: &mut Conn, g: &Grant, report: &mut GlobalsReport) -> Result<()> {
    match conn::exec(c, &g.sql).await {
        Ok(()) => {
            report.created.push(match g.level {
                Level::DefaultRole => format!(
                    "default role {} of {}",
                    g.role.as_deref().unwrap_or_default(),
                    g.to
                ),
                _ => format!("grant{}", g.sql.strip_prefix("GRANT").unwrap_or(&g.sql)),
            });
            Ok(())
        }
        // No such table, routine, or role (or the role not granted).
        Err(e) if matches!(code_of(&e), Some("1146" | "1305" | "1959")) => {
            report
                .warnings
                .push(format!("{} not applied: {}", g.sql, e.message()));
            Ok(())
        }
        // A role the target had already, which the restoring account may not give
        // (it needs the role WITH ADMIN OPTION), or a proxy grant it may not give
        // (PROXY … WITH GRANT OPTION): the server says "access denied" (1698 for a
        // role); the other grants can still be applied.
        Err(e)
            if matches!(g.level, Level::Role | Level::Proxy)
                && matches!(code_of(&e), Some("1698" | "1227" | "1044")) =>
        {
            let needs = match g.level {
                Level::Role => "the role WITH ADMIN OPTION",
                _ => "PROXY on that account WITH GRANT OPTION",
            };
            report.warnings.push(format!(
                "{} not applied: the restoring account needs {needs} ({})",
                g.sql,
                e.message()
            ));
            Ok(())
        }
        Err(e) => Err(e.during(format!("applying {}", g.sql))),
    }
}

async fn before(
    c: &mut Conn,
    created: &Created,
    globals: &Globals,
    options: &GlobalsRestoreOptions,
) -> Result<GlobalsReport> {
    let chosen = select(globals, &options.databases);
    let mut report = GlobalsReport::default();
    let mut ours = BTreeSet::new();
    let mut no_password = Vec::new();
    for (account, create, left_out) in &globals.users {
        if !chosen.contains(account) {
            continue;
        }
        match conn::exec(c, create).await {
            Ok(()) => {
                report.created.push(account.to_string());
                if *left_out {
                    no_password.push(account.literal());
                }
                ours.insert(account.clone());
            }
            Err(e) if code_of(&e) == Some("1396") => {
                report
                    .existing
                    .push(format!("{account} (left as it is, grants not applied)"));
            }
            Err(e) => {
                let mut message = e.message().to_owned();
                for secret in secrets_of(create) {
                    message = message.replace(&secret, "******");
                }
                // A syntax error quotes the statement from where it failed, cut short:
                // part of a password hash would escape the replacement above.
                if message.contains("near '") {
                    message = format!(
                        "the server refused the statement (error {}); its text is not shown, it holds the password hash",
                        code_of(&e).unwrap_or("unknown")
                    );
                }
                // Plugin not loaded: the other accounts can still be made.
                if code_of(&e) == Some("1524") {
                    report.warnings.push(format!(
                        "{account} not created: {message}; load the plugin on this server \
                         (INSTALL SONAME) and create the account by hand"
                    ));
                    continue;
                }
                return Err(e
                    .with_message(message)
                    .during(format!("creating {account}")));
            }
        }
    }
    for account in &globals.roles {
        if !chosen.contains(account) {
            continue;
        }
        match conn::exec(c, &format!("CREATE ROLE {}", quote_ident(&account.user))).await {
            Ok(()) => {
                report.created.push(account.to_string());
                ours.insert(account.clone());
            }
            Err(e) if code_of(&e) == Some("1396") => {
                report
                    .existing
                    .push(format!("{account} (left as it is, grants not applied)"));
            }
            Err(e) => return Err(e.during(format!("creating {account}"))),
        }
    }
    let public = Account::role("PUBLIC");
    if chosen.contains(&public) && globals.grants.iter().any(|g| g.to == public) {
        // PUBLIC is every account's: it takes the backup's grants only when it has
        // none here.
        match conn::query_strings(c, "SHOW GRANTS FOR PUBLIC").await {
            Ok(lines) if lines.is_empty() => {
                ours.insert(public);
            }
            Ok(_) => report
                .existing
                .push("PUBLIC (has grants here: left as it is, grants not applied)".to_owned()),
            Err(e) if code_of(&e) == Some("1141") => {
                ours.insert(public);
            }
            Err(e) => report.warnings.push(format!(
                "the grants to PUBLIC were not applied: {} (PUBLIC exists from MariaDB 10.11)",
                e.message()
            )),
        }
    }
    created.add(ours.iter().cloned());
    for level in [Level::Global, Level::Proxy, Level::Role] {
        for g in globals
            .grants
            .iter()
            .filter(|g| g.level == level && ours.contains(&g.to))
        {
            grant(c, g, &mut report).await?;
        }
    }
    if !no_password.is_empty() {
        report.warnings.push(format!(
            "the backup holds no passwords: {} cannot log in with a password until one is \
             set (ALTER USER … IDENTIFIED BY …); take backups with role passwords to carry them",
            listed(&no_password)
        ));
    }
    Ok(report)
}

async fn after(
    c: &mut Conn,
    created: &Created,
    globals: &Globals,
    options: &GlobalsRestoreOptions,
) -> Result<GlobalsReport> {
    let chosen = select(globals, &options.databases);
    let mut report = GlobalsReport::default();
    let mut skipped: BTreeMap<&Account, usize> = BTreeMap::new();
    for level in [
        Level::Database,
        Level::Table,
        Level::Routine,
        Level::DefaultRole,
    ] {
        for g in globals.grants.iter().filter(|g| {
            g.level == level
                && chosen.contains(&g.to)
                && (options.databases.is_empty()
                    || !level.on_database()
                    || g.on_any(&options.databases))
        }) {
            if created.contains(&g.to) {
                grant(c, g, &mut report).await?;
            } else {
                *skipped.entry(&g.to).or_default() += 1;
            }
        }
    }
    for (account, n) in skipped {
        report.existing.push(format!(
            "{account} (not created by this restore: left as it is, {n} grant{} on databases \
             not applied)",
            if n == 1 { "" } else { "s" }
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(line: &str) -> Grant {
        parse_grant(line)
            .unwrap_or_else(|| panic!("not read: {line}"))
            .unwrap_or_else(|| panic!("read as nothing: {line}"))
    }

    #[test]
    fn grant_lines_are_sorted_by_what_they_refer_to() {
        let app = Account::user("app", "%");
        let x = g("GRANT PROCESS ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD \
                   '*2B602296A79E0A8784ACC5C88D92E46588CCA3C3' REQUIRE SSL WITH GRANT OPTION \
                   MAX_QUERIES_PER_HOUR 10");
        assert_eq!(x.level, Level::Global);
        assert_eq!(x.to, app);
        assert_eq!(x.sql, "GRANT PROCESS ON *.* TO `app`@`%` WITH GRANT OPTION");

        let x = g("GRANT SELECT (`a`, `b c`), UPDATE (`b`), DELETE ON `d1`.`t` TO `app`@`%`");
        assert_eq!((x.level, x.database.as_deref()), (Level::Table, Some("d1")));

        let x = g("GRANT SELECT ON `d\\_1`.* TO `we'ird`@`h%`");
        assert_eq!(
            (x.level, x.database.as_deref()),
            (Level::Database, Some("d\\_1"))
        );
        assert_eq!(x.to, Account::user("we'ird", "h%"));

        let x = g("GRANT EXECUTE ON PROCEDURE `d1`.`p` TO `r1`");
        assert_eq!(
            (x.level, x.to.clone()),
            (Level::Routine, Account::role("r1"))
        );
        assert_eq!(x.database.as_deref(), Some("d1"));

        let x = g("GRANT `r2` TO `app`@`%` WITH ADMIN OPTION");
        assert_eq!((x.level, x.role.as_deref()), (Level::Role, Some("r2")));
        assert_eq!(x.sql, "GRANT `r2` TO `app`@`%` WITH ADMIN OPTION");

        let x = g("GRANT PROXY ON `rep`@`10.0.%` TO `app`@`%`");
        assert_eq!(x.level, Level::Proxy);

        let x = g("SET DEFAULT ROLE `r2` FOR `app`@`%`");
        assert_eq!(
            (x.level, x.role.as_deref()),
            (Level::DefaultRole, Some("r2"))
        );

        let x = g("GRANT SELECT ON `d1`.* TO PUBLIC");
        assert!(x.to.is_public());

        let x = g("GRANT SELECT ON `o``n`.`TO` TO `x``y`@`%`");
        assert_eq!(x.database.as_deref(), Some("o`n"));
        assert_eq!(x.to, Account::user("x`y", "%"));

        assert!(
            parse_grant("GRANT USAGE ON *.* TO `r1`")
                .expect("read")
                .is_none()
        );
        let x = g(
            "GRANT USAGE ON *.* TO `n`@`localhost` IDENTIFIED VIA ed25519 USING 'abc' \
                   WITH GRANT OPTION",
        );
        assert_eq!(
            x.sql,
            "GRANT USAGE ON *.* TO `n`@`localhost` WITH GRANT OPTION"
        );
        assert!(parse_grant("REVOKE nothing").is_none());
    }

    #[test]
    fn passwords_are_left_out_unless_asked_for() {
        let hash = "CREATE USER `app`@`%` IDENTIFIED BY PASSWORD \
                    '*2B602296A79E0A8784ACC5C88D92E46588CCA3C3' REQUIRE SSL \
                    WITH MAX_QUERIES_PER_HOUR 10 ACCOUNT LOCK PASSWORD EXPIRE INTERVAL 30 DAY";
        let a = Account::user("a", "%");
        assert_eq!(user_statement(&a, hash, true), (hash.to_owned(), false));
        let (sql, left_out) = user_statement(&a, hash, false);
        assert!(left_out);
        assert_eq!(
            sql,
            "CREATE USER `app`@`%` IDENTIFIED VIA mysql_native_password USING 'invalid' \
             REQUIRE SSL WITH MAX_QUERIES_PER_HOUR 10 ACCOUNT LOCK PASSWORD EXPIRE INTERVAL 30 DAY"
        );
        let multi = "CREATE USER `m`@`%` IDENTIFIED VIA mysql_native_password USING \
                     '*667F407DE7C6AD07358FA38DAED7828A72014B4E' OR unix_socket";
        let (sql, left_out) = user_statement(&a, multi, false);
        assert!(left_out);
        assert_eq!(
            sql,
            "CREATE USER `m`@`%` IDENTIFIED VIA mysql_native_password USING 'invalid' OR unix_socket"
        );
        for same in [
            "CREATE USER `s`@`localhost` IDENTIFIED VIA unix_socket",
            "CREATE USER `p`@`%` IDENTIFIED VIA pam USING 'mariadb'",
            "CREATE USER `n`@`localhost`",
        ] {
            let (sql, left_out) = user_statement(&a, same, false);
            assert!(!left_out, "{same}");
            assert_eq!(sql, same);
        }
        let (sql, left_out) = user_statement(
            &a,
            "CREATE USER `e`@`%` IDENTIFIED VIA ed25519 USING 'Gv2JI8Env2fd5YGonZ' ACCOUNT LOCK",
            false,
        );
        assert!(left_out);
        assert!(!sql.contains("Gv2J"), "{sql}");
        assert!(sql.ends_with("USING 'invalid' ACCOUNT LOCK"), "{sql}");
        assert_eq!(
            secrets_of(hash),
            ["*2B602296A79E0A8784ACC5C88D92E46588CCA3C3"]
        );
        // Forms this code does not read keep only the account.
        let odd = Account::user("o`dd", "h");
        for unknown in [
            "CREATE USER `o``dd`@`h` IDENTIFIED BY 'plain text' ACCOUNT LOCK",
            "CREATE USER `o``dd`@`h` IDENTIFIED VIA future USING secret-without-quotes",
            "ALTER USER `o``dd`@`h` IDENTIFIED BY PASSWORD '*ABC'",
        ] {
            let (sql, left_out) = user_statement(&odd, unknown, false);
            assert!(left_out, "{unknown}");
            assert_eq!(
                sql,
                "CREATE USER `o``dd`@`h` IDENTIFIED VIA mysql_native_password USING 'invalid'"
            );
        }
    }

    #[test]
    fn database_patterns_match_as_the_server_matches_them() {
        assert!(like("d\\_1", "d_1"));
        assert!(!like("d\\_1", "dx1"));
        assert!(like("d_1", "dx1"));
        assert!(like("shop%", "shop_eu"));
        assert!(!like("shop%", "shoe"));
        assert!(like("%", ""));
    }

    #[test]
    fn a_filter_takes_the_accounts_with_grants_there_and_the_roles_they_hold() {
        let grant = |to: Account, level, db: Option<&str>, role: Option<&str>| Grant {
            to,
            level,
            database: db.map(str::to_owned),
            role: role.map(str::to_owned),
            sql: String::new(),
        };
        let (app, other, report) = (
            Account::user("app", "%"),
            Account::user("other", "%"),
            Account::user("report", "%"),
        );
        let (reader, base, unused) = (
            Account::role("reader"),
            Account::role("base"),
            Account::role("unused"),
        );
        let globals = Globals {
            users: [&app, &other, &report]
                .into_iter()
                .map(|a| (a.clone(), String::new(), false))
                .collect(),
            roles: vec![reader.clone(), base.clone(), unused.clone()],
            grants: vec![
                grant(app.clone(), Level::Table, Some("shop"), None),
                grant(app.clone(), Level::Role, None, Some("base")),
                grant(other.clone(), Level::Database, Some("crm"), None),
                grant(report.clone(), Level::Role, None, Some("reader")),
                grant(reader.clone(), Level::Database, Some("sho%"), None),
                grant(unused.clone(), Level::Global, None, None),
            ],
        };
        let chosen = select(&globals, &["shop".to_owned()]);
        let expected: BTreeSet<Account> = [app, base, report, reader].into_iter().collect();
        assert_eq!(chosen, expected);
        assert_eq!(select(&globals, &[]).len(), 6);
    }
}
