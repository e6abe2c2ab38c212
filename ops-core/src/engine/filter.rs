//! Which tables a backup takes: [`TableFilter`], one matcher for every engine.
//!
//! Patterns follow pg_dump's (psql's) rules, restricted to what both engines can honour
//! alike:
//! - `*` matches any run of characters and `?` any one character;
//! - an unquoted `.` separates the schema from the table (`app.log_*`); a pattern
//!   without one matches the table in every schema (pg_dump only looks in the schemas
//!   on the search path; here one rule serves both engines);
//! - inside double quotes every character is literal, `.` `*` `?` included, and `""` is
//!   one `"` (`"Weird.Name"`);
//! - unquoted letters match either case (pg_dump folds them to lower case; MariaDB keeps
//!   a name's case, so folding would miss `Users`); quoted letters match exactly;
//! - the other regular-expression characters pg_dump lets through unquoted
//!   (`| ( ) [ ] { } + ^ \`) are refused: quote them to match them literally.
//!
//! On MariaDB the schema is the database, so schema patterns are matched against the
//! database's name.
//!
//! What must not live here: any engine's catalog or command line. Engines resolve a
//! filter against their own table lists (see [`TableFilter::check_selection`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TableRef;
use crate::{Error, ErrorKind, Result};

/// One element of a parsed name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A character; `exact` when it was quoted (matched with its case).
    Char { c: char, exact: bool },
    /// `*`.
    Any,
    /// `?`.
    One,
}

fn token_matches(tokens: &[Token], text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    // Classic wildcard matching with one backtrack point for the last `*`.
    let (mut t, mut c) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while c < chars.len() {
        match tokens.get(t) {
            Some(Token::Any) => {
                star = Some((t, c));
                t += 1;
                continue;
            }
            Some(Token::One) => {
                t += 1;
                c += 1;
                continue;
            }
            Some(Token::Char { c: want, exact }) if char_matches(*want, *exact, chars[c]) => {
                t += 1;
                c += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((st, sc)) => {
                t = st + 1;
                c = sc + 1;
                star = Some((st, sc + 1));
            }
            None => return false,
        }
    }
    tokens[t.min(tokens.len())..]
        .iter()
        .all(|tok| *tok == Token::Any)
}

fn char_matches(want: char, exact: bool, got: char) -> bool {
    want == got || (!exact && want.to_lowercase().eq(got.to_lowercase()))
}

/// A name pattern as written (`schema.table`, `table`, or a schema name), parsed by
/// pg_dump's rules (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct NamePattern {
    text: String,
    schema: Option<Vec<Token>>,
    name: Vec<Token>,
}

impl NamePattern {
    /// Parses a table pattern: `name` or `schema.name`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an empty pattern or part, an unterminated quote,
    /// more than one unquoted `.`, or an unquoted regular-expression character.
    pub fn table(text: &str) -> Result<Self> {
        let mut parts = parse_parts(text)?;
        match parts.len() {
            1 => Ok(Self {
                text: text.to_owned(),
                schema: None,
                name: parts.remove(0),
            }),
            2 => {
                let name = parts.remove(1);
                Ok(Self {
                    text: text.to_owned(),
                    schema: Some(parts.remove(0)),
                    name,
                })
            }
            _ => Err(Error::invalid(format!(
                "table pattern '{text}' has more than one '.': write schema.table (a name \
                 holding a '.' goes in double quotes)"
            ))),
        }
    }

    /// Parses a schema pattern (no unquoted `.`).
    ///
    /// # Errors
    /// As [`NamePattern::table`]; any unquoted `.` is refused.
    pub fn schema(text: &str) -> Result<Self> {
        let mut parts = parse_parts(text)?;
        if parts.len() != 1 {
            return Err(Error::invalid(format!(
                "schema pattern '{text}' holds a '.': a schema pattern names schemas only \
                 (a name holding a '.' goes in double quotes)"
            )));
        }
        Ok(Self {
            text: text.to_owned(),
            schema: None,
            name: parts.remove(0),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when this table pattern matches `table` (a pattern without a schema part
    /// matches in every schema).
    pub fn matches_table(&self, table: &TableRef) -> bool {
        self.schema
            .as_ref()
            .is_none_or(|s| token_matches(s, &table.schema))
            && token_matches(&self.name, &table.name)
    }

    /// True when this schema pattern matches the schema named `schema`.
    pub fn matches_schema(&self, schema: &str) -> bool {
        token_matches(&self.name, schema)
    }
}

impl fmt::Debug for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NamePattern({:?})", self.text)
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for NamePattern {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Splits at unquoted dots and tokenizes each part.
fn parse_parts(text: &str) -> Result<Vec<Vec<Token>>> {
    let mut parts = vec![Vec::new()];
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        let part = parts.last_mut().expect("parts starts with one element");
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push(Token::Char {
                    c: '"',
                    exact: true,
                });
            }
            '"' => quoted = !quoted,
            _ if quoted => part.push(Token::Char { c, exact: true }),
            '*' => part.push(Token::Any),
            '?' => part.push(Token::One),
            '.' => parts.push(Vec::new()),
            '|' | '(' | ')' | '[' | ']' | '{' | '}' | '+' | '^' | '\\' => {
                return Err(Error::invalid(format!(
                    "pattern '{text}' holds '{c}': only * and ? are wildcards here (pg_dump \
                     would read a regular expression); put the name in double quotes to \
                     match '{c}' literally"
                )));
            }
            _ => part.push(Token::Char { c, exact: false }),
        }
    }
    if quoted {
        return Err(Error::invalid(format!(
            "pattern '{text}' has an unterminated double quote"
        )));
    }
    if parts.iter().any(Vec::is_empty) {
        return Err(Error::invalid(format!(
            "pattern '{text}' is empty or has an empty part around a '.'"
        )));
    }
    Ok(parts)
}

/// Which tables a backup takes, and which of them without rows: pg_dump's `-t`, `-T`,
/// `--exclude-table-data`, `-n` and `-N`, for both engines. Empty takes everything.
///
/// The rules, as pg_dump's: a table is taken when it matches a table pattern (or, with
/// none, lies in a schema matching a schema pattern, or, with none, anywhere), and
/// matches no exclusion (table or schema). With table patterns, only the matching
/// tables are taken (with their indexes, constraints, triggers and owned sequences),
/// not the schema's other objects (views, functions, types, the schema itself), as
/// pg_dump's `-t` does. A table of [`TableFilter::exclude_table_data`] is taken without
/// its rows. Table patterns together with schema patterns are refused: pg_dump ignores
/// the schema patterns then, silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableFilter {
    /// Only tables matching one of these (pg_dump `-t`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<NamePattern>,
    /// Not tables matching one of these (pg_dump `-T`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<NamePattern>,
    /// The definitions but not the rows of tables matching one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_table_data: Vec<NamePattern>,
    /// Only tables in schemas matching one of these (pg_dump `-n`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<NamePattern>,
    /// Not tables in schemas matching one of these (pg_dump `-N`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_schemas: Vec<NamePattern>,
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Table and schema patterns share one form; a stored schema pattern never holds
        // an unquoted '.', so parsing it as a table pattern gives the same tokens.
        let text = String::deserialize(d)?;
        NamePattern::table(&text).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

fn parse_all<I, S>(patterns: I, parse: fn(&str) -> Result<NamePattern>) -> Result<Vec<NamePattern>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    patterns.into_iter().map(|p| parse(p.as_ref())).collect()
}

impl TableFilter {
    /// Only tables matching one of `patterns`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a pattern that does not parse, or when schema
    /// patterns are set too.
    pub fn with_tables<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        patterns: I,
    ) -> Result<Self> {
        self.tables = parse_all(patterns, NamePattern::table)?;
        self.check()?;
        Ok(self)
    }

    /// Leaves out tables matching one of `patterns`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a pattern that does not parse.
    pub fn with_exclude_tables<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        patterns: I,
    ) -> Result<Self> {
        self.exclude_tables = parse_all(patterns, NamePattern::table)?;
        Ok(self)
    }

    /// Takes tables matching one of `patterns` without their rows.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a pattern that does not parse.
    pub fn with_exclude_table_data<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        patterns: I,
    ) -> Result<Self> {
        self.exclude_table_data = parse_all(patterns, NamePattern::table)?;
        Ok(self)
    }

    /// Only tables in schemas matching one of `patterns`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a pattern that does not parse, or when table
    /// patterns are set too.
    pub fn with_schemas<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        patterns: I,
    ) -> Result<Self> {
        self.schemas = parse_all(patterns, NamePattern::schema)?;
        self.check()?;
        Ok(self)
    }

    /// Leaves out tables in schemas matching one of `patterns`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a pattern that does not parse, or when table
    /// patterns are set too.
    pub fn with_exclude_schemas<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        patterns: I,
    ) -> Result<Self> {
        self.exclude_schemas = parse_all(patterns, NamePattern::schema)?;
        self.check()?;
        Ok(self)
    }

    /// Refuses table patterns together with schema patterns (pg_dump would ignore the
    /// schema patterns without a word).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming both.
    pub fn check(&self) -> Result<()> {
        if !self.tables.is_empty()
            && let Some(s) = self.schemas.iter().chain(&self.exclude_schemas).next()
        {
            return Err(Error::invalid(format!(
                "table patterns and schema patterns cannot be combined (schema '{s}' with \
                 table '{}'): write the schema into the table pattern, e.g. {s}.{}",
                self.tables[0], self.tables[0]
            )));
        }
        Ok(())
    }

    /// True when the filter takes every table with its rows.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
            && self.exclude_tables.is_empty()
            && self.exclude_table_data.is_empty()
            && self.schemas.is_empty()
            && self.exclude_schemas.is_empty()
    }

    /// True when the filter chooses tables (not only leaves out rows): a backup then
    /// holds a part of the database.
    pub fn selects_tables(&self) -> bool {
        !(self.tables.is_empty()
            && self.exclude_tables.is_empty()
            && self.schemas.is_empty()
            && self.exclude_schemas.is_empty())
    }

    /// True when a schema named `schema` is taken by the schema rules (pg_dump `-n` and
    /// `-N`); with table patterns no schema is taken as a whole.
    pub fn keeps_schema(&self, schema: &str) -> bool {
        self.tables.is_empty()
            && (self.schemas.is_empty() || self.schemas.iter().any(|p| p.matches_schema(schema)))
            && !self
                .exclude_schemas
                .iter()
                .any(|p| p.matches_schema(schema))
    }

    /// True when `table` is in the backup (its definition, and its rows unless
    /// [`TableFilter::keeps_data`] says otherwise).
    pub fn matches_table(&self, table: &TableRef) -> bool {
        let chosen = if self.tables.is_empty() {
            (self.schemas.is_empty()
                || self.schemas.iter().any(|p| p.matches_schema(&table.schema)))
                && !self
                    .exclude_schemas
                    .iter()
                    .any(|p| p.matches_schema(&table.schema))
        } else {
            self.tables.iter().any(|p| p.matches_table(table))
        };
        chosen && !self.exclude_tables.iter().any(|p| p.matches_table(table))
    }

    /// True when `table`'s rows are in the backup.
    pub fn keeps_data(&self, table: &TableRef) -> bool {
        self.matches_table(table)
            && !self
                .exclude_table_data
                .iter()
                .any(|p| p.matches_table(table))
    }

    /// pg_dump's `--strict-names`, for every engine: each table and schema pattern must
    /// match at least one of `tables` (the database's tables), and the filter must
    /// leave at least one table. Exclusions may match nothing.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] naming the patterns that matched no table, or saying
    /// that nothing is left.
    pub fn check_selection<'a>(
        &self,
        tables: impl IntoIterator<Item = &'a TableRef>,
    ) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let tables: Vec<&TableRef> = tables.into_iter().collect();
        let mut unmatched: Vec<String> = Vec::new();
        for p in &self.tables {
            if !tables.iter().any(|t| p.matches_table(t)) {
                unmatched.push(format!("table pattern '{p}'"));
            }
        }
        for p in &self.schemas {
            if !tables.iter().any(|t| p.matches_schema(&t.schema)) {
                unmatched.push(format!("schema pattern '{p}'"));
            }
        }
        if !unmatched.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "{} matched no table of the database; names match as written in the \
                     catalog (unquoted letters in either case); list the tables to check",
                    unmatched.join(", ")
                ),
            )
            .with_context("pattern", &unmatched[0]));
        }
        if !tables.iter().any(|t| self.matches_table(t)) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("the table filter ({self}) leaves no table of the database to back up"),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for TableFilter {
    /// `tables a, b; exclude tables c; no data of d; schemas …; exclude schemas …`, or
    /// `all tables` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("all tables");
        }
        let mut first = true;
        for (label, list) in [
            ("tables", &self.tables),
            ("exclude tables", &self.exclude_tables),
            ("no data of", &self.exclude_table_data),
            ("schemas", &self.schemas),
            ("exclude schemas", &self.exclude_schemas),
        ] {
            if list.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            let names: Vec<&str> = list.iter().map(NamePattern::as_str).collect();
            write!(f, "{label} {}", names.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: &str, name: &str) -> TableRef {
        TableRef::new(schema, name)
    }

    fn pat(text: &str) -> NamePattern {
        NamePattern::table(text).expect("pattern parses")
    }

    #[test]
    fn patterns_follow_pg_dump_rules() {
        // Wildcards.
        assert!(pat("log_*").matches_table(&t("public", "log_2024")));
        assert!(pat("log_*").matches_table(&t("public", "log_")));
        assert!(!pat("log_*").matches_table(&t("public", "xlog_1")));
        assert!(pat("t?").matches_table(&t("s", "t1")));
        assert!(!pat("t?").matches_table(&t("s", "t")));
        assert!(!pat("t?").matches_table(&t("s", "t12")));
        assert!(pat("*a*b").matches_table(&t("s", "xxaxxbxb")));
        assert!(!pat("*a*b").matches_table(&t("s", "xxaxxbx")));
        // Anchored: the whole name must match.
        assert!(!pat("film").matches_table(&t("public", "film_actor")));
        // Schema part; a bare name matches in every schema.
        assert!(pat("app.users").matches_table(&t("app", "users")));
        assert!(!pat("app.users").matches_table(&t("public", "users")));
        assert!(pat("users").matches_table(&t("app", "users")));
        assert!(pat("*.users").matches_table(&t("public", "users")));
        assert!(pat("a*.*").matches_table(&t("audit", "x")));
        // Unquoted letters in either case; quoted ones exactly, with . * ? literal.
        assert!(pat("USERS").matches_table(&t("public", "users")));
        assert!(pat("users").matches_table(&t("public", "Users")));
        assert!(pat("\"Users\"").matches_table(&t("public", "Users")));
        assert!(!pat("\"Users\"").matches_table(&t("public", "users")));
        assert!(pat("\"a.b\"").matches_table(&t("public", "a.b")));
        assert!(pat("\"we.ird\".\"x*\"").matches_table(&t("we.ird", "x*")));
        assert!(!pat("\"x*\"").matches_table(&t("s", "xy")));
        assert!(pat("\"x\"*").matches_table(&t("s", "xy")));
        assert!(pat("\"a\"\"b\"").matches_table(&t("s", "a\"b")));
        // `$` is literal, as pg_dump quotes it.
        assert!(pat("a$b").matches_table(&t("s", "a$b")));
        // UTF-8 names.
        assert!(pat("tä?").matches_table(&t("s", "täb")));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (text, words) in [
            ("", "empty"),
            ("a.", "empty"),
            ("a.b.c", "more than one"),
            ("\"open", "unterminated"),
            ("log_(a|b)", "double quotes"),
            ("t[0-9]", "double quotes"),
        ] {
            let e = NamePattern::table(text).expect_err(text);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{text}");
            assert!(e.message().contains(words), "{text}: {e}");
        }
        assert!(NamePattern::schema("a.b").is_err());
        assert!(NamePattern::schema("\"a.b\"").is_ok());
        assert!(NamePattern::table("\"log_(a|b)\"").is_ok());
    }

    #[test]
    fn filter_rules_as_pg_dump() {
        let tables = [
            t("public", "users"),
            t("public", "sessions"),
            t("public", "log_1"),
            t("audit", "log_1"),
            t("audit", "events"),
        ];
        let f = TableFilter::default()
            .with_tables(["users", "log_*"])
            .and_then(|f| f.with_exclude_tables(["audit.*"]))
            .and_then(|f| f.with_exclude_table_data(["log*"]))
            .expect("valid");
        let kept: Vec<String> = tables
            .iter()
            .filter(|t| f.matches_table(t))
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, ["public.users", "public.log_1"]);
        assert!(f.keeps_data(&tables[0]));
        assert!(!f.keeps_data(&tables[2]));
        assert!(!f.keeps_data(&tables[1]));
        assert!(f.check_selection(&tables).is_ok());

        let schemas = TableFilter::default()
            .with_schemas(["a*", "public"])
            .and_then(|f| f.with_exclude_schemas(["public"]))
            .expect("valid");
        let kept: Vec<String> = tables
            .iter()
            .filter(|t| schemas.matches_table(t))
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, ["audit.log_1", "audit.events"]);
        assert!(schemas.keeps_schema("audit") && !schemas.keeps_schema("public"));

        // Strict names: an include pattern must match a table; exclusions need not.
        let e = TableFilter::default()
            .with_tables(["users", "nosuch*"])
            .and_then(|f| f.with_exclude_tables(["nothing"]))
            .expect("valid")
            .check_selection(&tables)
            .expect_err("nosuch* matches nothing");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.message().contains("'nosuch*'") && !e.message().contains("'users'"),
            "{e}"
        );
        let e = TableFilter::default()
            .with_exclude_schemas(["public", "audit"])
            .expect("valid")
            .check_selection(&tables)
            .expect_err("nothing left");
        assert!(e.message().contains("leaves no table"), "{e}");

        // Tables with schemas: refused, as pg_dump would ignore the schemas.
        let e = TableFilter::default()
            .with_tables(["users"])
            .and_then(|f| f.with_schemas(["audit"]))
            .expect_err("combination refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(TableFilter::default().is_empty());
        assert!(TableFilter::default().check_selection(&[]).is_ok());
    }

    #[test]
    fn filter_serializes_as_written_and_empty_as_nothing() {
        let f = TableFilter::default()
            .with_tables(["\"A.b\"", "log_*"])
            .and_then(|f| f.with_exclude_table_data(["sessions"]))
            .expect("valid");
        let json = serde_json::to_string(&f).expect("serializes");
        assert_eq!(
            json,
            r#"{"tables":["\"A.b\"","log_*"],"exclude_table_data":["sessions"]}"#
        );
        let back: TableFilter = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, f);
        assert_eq!(f.to_string(), "tables \"A.b\", log_*; no data of sessions");
        assert_eq!(
            serde_json::to_string(&TableFilter::default()).expect("ok"),
            "{}"
        );
        let old: TableFilter = serde_json::from_str("{}").expect("empty object");
        assert!(old.is_empty());
    }
}
