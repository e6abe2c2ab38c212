//! [`Maintenance`] for MariaDB (and, where it is cheap, MySQL 8): inspection reports
//! (`inspect`), maintenance actions (`actions`), sessions (`sessions`), integrity
//! queries (here) and archiving (`archive`); see `ops_core::maintain` for the contract.
//!
//! Every connection opened here is a `Session::Catalog` connection with the
//! session time zone set back to the server's (`SYSTEM`): `INNODB_TRX.trx_started`
//! is in that zone, and an operator's predicate such as `created_at < NOW() -
//! INTERVAL 2 YEAR` means what the application means by it.
//!
//! What must not live here: engine-neutral logic (`ops_core::maintain`), health
//! probes (`crate::health`).

use std::time::Duration;

use async_trait::async_trait;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use ops_core::maintain::{
    Action, ArchiveReport, ArchiveSpec, EndOptions, EndReport, Inspect, InspectOptions, Inspection,
    MaintainOptions, MaintainReport, Maintenance, QueryRows, SessionFilter, SessionInfo,
};
use ops_core::{Error, ErrorKind, Result};

use crate::MariaDbEngine;
use crate::conn::{self, Session};
use crate::error::db_error;
use crate::format::{quote_ident, quote_str};

mod actions;
mod archive;
mod inspect;
mod sessions;

/// Server error codes maintenance reacts to.
pub(crate) mod code {
    /// `Unknown column` (MySQL has no `PROCESSLIST.TIME_MS`).
    pub const BAD_FIELD: u16 = 1054;
    /// A syntax error (MySQL has no `SHOW ALL SLAVES STATUS`).
    pub const PARSE_ERROR: u16 = 1064;
    /// `Unknown thread id` (the session is gone).
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// `You are not owner of thread`.
    pub const KILL_DENIED: u16 = 1095;
    /// `Unknown table ... in information_schema` (a plugin table that is not installed).
    pub const UNKNOWN_TABLE: u16 = 1109;
    /// `Unknown system variable`.
    pub const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;
    /// `Lock wait timeout exceeded` (metadata and row locks).
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// `Deadlock found when trying to get lock` (the transaction was rolled back).
    pub const DEADLOCK: u16 = 1213;
    /// A global privilege such as `PROCESS` is missing.
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
}

/// The server error code an [`Error`] converted by [`db_error`] carries.
pub(crate) fn error_code(e: &Error) -> Option<u16> {
    e.context_value("code").and_then(|c| c.parse().ok())
}

/// Opens a maintenance connection to `database` (none when empty).
pub(crate) async fn connect(engine: &MariaDbEngine, database: &str) -> Result<Conn> {
    let db = (!database.is_empty()).then_some(database);
    let mut c = conn::connect(&engine.config, db, Session::Catalog).await?;
    conn::exec(&mut c, "SET SESSION time_zone = 'SYSTEM'")
        .await
        .map_err(|e| e.during("setting up the maintenance session"))?;
    Ok(c)
}

/// The engine's database (the URL's path).
pub(crate) fn database(engine: &MariaDbEngine) -> &str {
    &engine.config.database
}

/// The engine's account, as `GRANT ... TO` names it.
pub(crate) fn grantee(engine: &MariaDbEngine) -> String {
    format!("{}@'%'", quote_str(&engine.config.user))
}

/// `db.name` quoted.
pub(crate) fn qualified(db: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(db), quote_ident(name))
}

/// Splits `name` or `db.name` (backquotes allowed) into database and table, `db`
/// being the default database.
pub(crate) fn split_name(name: &str, db: &str) -> Result<(String, String)> {
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .map_or_else(|| s.to_owned(), |s| s.replace("``", "`"))
    };
    // A dot inside backquotes belongs to the name.
    let mut depth = false;
    let mut split = None;
    for (i, ch) in name.char_indices() {
        match ch {
            '`' => depth = !depth,
            '.' if !depth => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let (schema, table) = match split {
        Some(i) => (unquote(&name[..i]), unquote(&name[i + 1..])),
        None => (db.to_owned(), unquote(name)),
    };
    if table.is_empty() {
        return Err(Error::invalid(format!(
            "'{name}' is not a table name: write name or database.name"
        )));
    }
    if schema.is_empty() {
        return Err(Error::invalid(format!(
            "table '{name}' names no database and the URL has none: write database.name or \
             add the database to the URL's path"
        )));
    }
    Ok((schema, table))
}

/// A base table and its storage engine.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) db: String,
    pub(crate) name: String,
    /// `InnoDB`, `MyISAM`, `Aria`, ... (`None` when the server cannot open it: a
    /// damaged table shows no engine).
    pub(crate) engine: Option<String>,
}

impl Table {
    /// `db.name` quoted, for SQL.
    pub(crate) fn sql(&self) -> String {
        qualified(&self.db, &self.name)
    }
    /// `db.name`, for people.
    pub(crate) fn label(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }
    pub(crate) fn is_innodb(&self) -> bool {
        self.engine
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("InnoDB"))
    }
}

/// The base tables `names` (`name` or `db.name`), or every base table of `db` when
/// `names` is empty.
///
/// # Errors
/// [`ErrorKind::NotFound`] for a table that does not exist; [`ErrorKind::InvalidInput`]
/// when no database is named anywhere.
pub(crate) async fn resolve_tables(c: &mut Conn, db: &str, names: &[String]) -> Result<Vec<Table>> {
    let select = "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES \
                  WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')";
    let read = |rows: Vec<mysql_async::Row>| -> Result<Vec<Table>> {
        rows.iter()
            .map(|r| {
                Ok(Table {
                    db: conn::text(r, 0)?,
                    name: conn::text(r, 1)?,
                    engine: conn::opt_text(r, 2)?,
                })
            })
            .collect()
    };
    if names.is_empty() {
        if db.is_empty() {
            return Err(Error::invalid(
                "the URL names no database: add it as the path (mariadb://host/dbname) or name \
                 the tables as database.name",
            ));
        }
        let sql = format!(
            "{select} AND TABLE_SCHEMA = {} ORDER BY TABLE_NAME",
            quote_str(db)
        );
        return read(conn::query_rows(c, &sql).await?);
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (schema, table) = split_name(name, db)?;
        let sql = format!(
            "{select} AND TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            quote_str(&schema),
            quote_str(&table)
        );
        let mut found = read(conn::query_rows(c, &sql).await?)?;
        match found.pop() {
            Some(t) => out.push(t),
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "no table {schema}.{table} on this server (or this account may not see \
                         it); give it as name or database.name"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Fails with [`ErrorKind::PermissionDenied`] naming `GRANT PROCESS` unless the
/// account has `PROCESS`. Without it `information_schema.PROCESSLIST` silently shows
/// only the account's own sessions, which would read as "all quiet"; `INNODB_TRX`
/// (same privilege) refuses outright.
pub(crate) async fn require_process(c: &mut Conn, engine: &MariaDbEngine, to: &str) -> Result<()> {
    match conn::query_rows(c, "SELECT COUNT(*) FROM information_schema.INNODB_TRX").await {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some(code::SPECIFIC_ACCESS_DENIED) => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "the account needs the PROCESS privilege to {to} (without it the server shows \
                 only the account's own sessions): GRANT PROCESS ON *.* TO {}",
                grantee(engine)
            ),
        )
        .with_context("code", code::SPECIFIC_ACCESS_DENIED)),
        Err(e) => Err(e),
    }
}

/// Sets the session's statement time limit: `max_statement_time` (MariaDB, seconds)
/// or `max_execution_time` (MySQL, milliseconds, `SELECT` only).
pub(crate) async fn statement_timeout(c: &mut Conn, timeout: Duration) -> Result<()> {
    // 0 would mean "no limit".
    let secs = timeout.as_secs_f64().max(0.001);
    let lock = timeout.as_secs_f64().ceil().max(1.0);
    let mariadb = format!(
        "SET SESSION max_statement_time = {secs:.3}, lock_wait_timeout = {lock:.0}, \
         innodb_lock_wait_timeout = {lock:.0}"
    );
    match conn::exec(c, &mariadb).await {
        Err(e) if error_code(&e) == Some(code::UNKNOWN_SYSTEM_VARIABLE) => {
            let mysql = format!(
                "SET SESSION max_execution_time = {:.0}, lock_wait_timeout = {lock:.0}, \
                 innodb_lock_wait_timeout = {lock:.0}",
                (secs * 1000.0).ceil()
            );
            conn::exec(c, &mysql).await
        }
        other => other,
    }
    .map_err(|e| e.during("setting the statement timeout"))
}

/// Column `i` as a decimal number, NULL as `None`.
pub(crate) fn float(row: &mysql_async::Row, i: usize) -> Result<Option<f64>> {
    conn::opt_text(row, i)?
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| Error::internal(format!("'{s}' in column {i} is not a number")))
        })
        .transpose()
}

/// A column by name (`SHOW … STATUS` columns move between versions), NULL as `None`.
pub(crate) fn column_text(row: &mysql_async::Row, name: &str) -> Option<String> {
    let i = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str().eq_ignore_ascii_case(name))?;
    conn::opt_text(row, i).ok().flatten()
}

/// At most `n` characters of `s`.
pub(crate) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        s.chars().take(n).collect()
    } else {
        s.to_owned()
    }
}

/// Closes a connection without waiting long for a server that does not answer.
pub(crate) async fn close(c: Conn) {
    if tokio::time::timeout(Duration::from_secs(2), conn::disconnect(c))
        .await
        .is_err()
    {
        tracing::debug!("closing a maintenance connection timed out");
    }
}

/// The one read-only query in `sql`, without the blanks around it and one trailing
/// `;`: it must start with `SELECT`, `WITH` or `VALUES` (parentheses and comments
/// before them allowed), hold no second statement, no executable comment (`/*! … */`,
/// whose text the server runs) and write no file (`INTO OUTFILE`, `INTO DUMPFILE`).
/// Literals and comments are skipped as the server reads them with the maintenance
/// session's `sql_mode = ''` (backslash escapes; `"` quotes a string).
///
/// # Errors
/// [`ErrorKind::InvalidInput`] naming what is refused.
pub(crate) fn read_statement(sql: &str) -> Result<&str> {
    let text = sql.trim();
    let text = text.strip_suffix(';').unwrap_or(text).trim_end();
    let refuse = |why: String| {
        Err(Error::invalid(format!(
            "an integrity check runs one read-only query (SELECT, WITH or VALUES): {why}"
        )))
    };
    let b = text.as_bytes();
    let word_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut first: Option<&str> = None;
    let mut previous: Option<&str> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b'\'' | b'"' | b'`' => {
                if first.is_none() {
                    return refuse(format!("it starts with a quoted {}", char::from(c)));
                }
                // To the closing quote: doubled quotes stay inside; in strings a
                // backslash escapes the next character. An unclosed one runs to the
                // end (the server reports the syntax error).
                i += 1;
                while i < b.len() {
                    if b[i] == b'\\' && c != b'`' {
                        i += 2;
                        continue;
                    }
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'#' => i = text[i..].find('\n').map_or(b.len(), |n| i + n + 1),
            b'-' if next == Some(b'-')
                && b.get(i + 2)
                    .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) =>
            {
                i = text[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if next == Some(b'*') => {
                let body = &text[i + 2..];
                if body.starts_with('!') || body.starts_with("M!") {
                    return refuse(
                        "it holds an executable comment (/*! ... */), whose text the server \
                         runs; write that SQL plainly"
                            .into(),
                    );
                }
                i = body.find("*/").map_or(b.len(), |n| i + 2 + n + 2);
            }
            b';' => {
                return refuse(
                    "a second statement follows the first ';' (only one query runs)".into(),
                );
            }
            c if word_byte(c) => {
                let start = i;
                while i < b.len() && word_byte(b[i]) {
                    i += 1;
                }
                let word = &text[start..i];
                if first.is_none() {
                    if !["SELECT", "WITH", "VALUES"]
                        .iter()
                        .any(|k| word.eq_ignore_ascii_case(k))
                    {
                        return refuse(format!("it starts with {word}"));
                    }
                    first = Some(word);
                }
                if previous.is_some_and(|p| p.eq_ignore_ascii_case("INTO"))
                    && (word.eq_ignore_ascii_case("OUTFILE")
                        || word.eq_ignore_ascii_case("DUMPFILE"))
                {
                    return refuse(format!("INTO {word} writes a file on the server"));
                }
                previous = Some(word);
            }
            b'(' if first.is_none() => i += 1,
            c if c.is_ascii_whitespace() => i += 1,
            _ if first.is_none() => {
                return refuse(format!(
                    "it starts with '{}'",
                    text[i..].chars().next().unwrap_or_default()
                ));
            }
            _ => i += 1,
        }
    }
    if first.is_none() {
        return refuse("there is no query".into());
    }
    Ok(text)
}

/// Runs `sql` read-only and counts its rows; see [`Maintenance::query_rows`].
///
/// Only one query runs ([`read_statement`]), and the server confirms it: the
/// statement is prepared first (and closed again), which refuses more than one
/// statement, since a text-protocol query may hold several and a second one could
/// commit the read-only transaction and write. The rows then stream through the text
/// protocol, so values read as the `mariadb` client prints them.
async fn read_only_rows(
    c: &mut Conn,
    sql: &str,
    timeout: Duration,
    sample: usize,
) -> Result<QueryRows> {
    let sql = read_statement(sql)?;
    let stmt = c
        .prep(sql)
        .await
        .map_err(|e| db_error(e).during("preparing the query (one statement only)"))?;
    c.close(stmt)
        .await
        .map_err(|e| db_error(e).during("closing the prepared query"))?;
    statement_timeout(c, timeout).await?;
    conn::exec(c, "SET SESSION TRANSACTION READ ONLY").await?;
    conn::exec(c, "START TRANSACTION READ ONLY").await?;
    let mut result = c
        .query_iter(sql)
        .await
        .map_err(|e| db_error(e).during("running the query"))?;
    let columns: Vec<String> = result
        .columns()
        .map(|cols| cols.iter().map(|c| c.name_str().into_owned()).collect())
        .unwrap_or_default();
    let mut count = 0u64;
    let mut kept = Vec::new();
    while let Some(row) = result
        .next()
        .await
        .map_err(|e| db_error(e).during("reading the query's rows"))?
    {
        count += 1;
        if kept.len() < sample {
            let values = (0..row.len())
                .map(|i| conn::opt_text(&row, i))
                .collect::<Result<Vec<_>>>()?;
            kept.push(values);
        }
    }
    result
        .drop_result()
        .await
        .map_err(|e| db_error(e).during("reading the end of the query's result"))?;
    conn::exec(c, "ROLLBACK").await?;
    Ok(QueryRows::new(count, columns, kept))
}

#[async_trait]
impl Maintenance for MariaDbEngine {
    fn engine_name(&self) -> &'static str {
        "mariadb"
    }

    async fn inspect(&self, what: Inspect, options: &InspectOptions) -> Result<Inspection> {
        inspect::inspect(self, what, options).await
    }

    async fn maintain(&self, action: Action, options: &MaintainOptions) -> Result<MaintainReport> {
        actions::maintain(self, action, options).await
    }

    async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionInfo>> {
        let mut c = connect(self, "").await?;
        let all = sessions::load(&mut c, self).await;
        close(c).await;
        Ok(filter.select(&all?))
    }

    async fn end_sessions(
        &self,
        filter: &SessionFilter,
        options: &EndOptions,
    ) -> Result<EndReport> {
        sessions::end(self, filter, options).await
    }

    async fn query_rows(&self, sql: &str, timeout: Duration, sample: usize) -> Result<QueryRows> {
        let mut c = connect(self, database(self)).await?;
        let rows = read_only_rows(&mut c, sql, timeout, sample).await;
        close(c).await;
        rows
    }

    async fn archive(&self, spec: &ArchiveSpec) -> Result<ArchiveReport> {
        archive::archive(self, spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_split_on_the_unquoted_dot() {
        let s = |n: &str| split_name(n, "app").expect(n);
        assert_eq!(s("t"), ("app".into(), "t".into()));
        assert_eq!(s("shop.orders"), ("shop".into(), "orders".into()));
        assert_eq!(s("`a.b`.`c``d`"), ("a.b".into(), "c`d".into()));
        assert_eq!(s("`x.y`"), ("app".into(), "x.y".into()));
        assert!(split_name("t", "").is_err());
        assert!(split_name("db.", "app").is_err());
    }

    proptest::proptest! {
        /// Any text, quotes and comments cut anywhere, multi-byte characters included:
        /// an answer, never a panic; and what passes is a query that starts as one.
        #[test]
        fn any_text_gets_an_answer(sql in "(SELECT|select|CALL|[ '\"`#/*;!M\\\\é(-]|[a-z0-9 ]{1,4}){0,24}") {
            if let Ok(text) = read_statement(&sql) {
                let first = text
                    .trim_start_matches(|c: char| c == '(' || c.is_whitespace())
                    .to_ascii_uppercase();
                proptest::prop_assert!(
                    first.starts_with("SELECT") || first.starts_with("WITH")
                        || first.starts_with("VALUES") || first.starts_with('#')
                        || first.starts_with("--") || first.starts_with("/*"),
                    "{sql:?} -> {text:?}"
                );
            }
        }
    }

    #[test]
    fn only_one_read_query_passes() {
        fn ok(sql: &str) -> &str {
            read_statement(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
        assert_eq!(ok("  SELECT 1 ;  "), "SELECT 1");
        assert_eq!(
            ok("select ';' AS a, \"x;\" AS b"),
            "select ';' AS a, \"x;\" AS b"
        );
        ok("((SELECT 1)) UNION (SELECT 2)");
        ok("WITH x AS (SELECT 1 AS n) SELECT n FROM x");
        ok("VALUES (1), (2)");
        ok("/* why */ -- because\n# and so\nSELECT `a;b` FROM t WHERE s = 'it''s; \\' ok'");
        ok("SELECT 1 INTO @x");
        for bad in [
            "CALL dbops_no_such_procedure()",
            "SELECT 1; CREATE TABLE t (a int)",
            "SELECT 1;;",
            "SELECT 'a'; DROP TABLE t",
            "/*! DROP TABLE t */ SELECT 1",
            "SELECT 1 /*M!100000 ; DROP TABLE t */",
            "SELECT * FROM t INTO OUTFILE '/tmp/x'",
            "SELECT * FROM t INTO\nDUMPFILE '/tmp/x'",
            "DELETE FROM t",
            "SET @a = 1",
            "@a",
            "",
            " ; ",
            "-- SELECT 1",
        ] {
            let e = read_statement(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}: {e}");
        }
    }
}
