//! The roles a backup names, and creating them on a scratch target.
//!
//! Roles are cluster-wide: pg_dump does not dump them, and a restore into a server
//! without the source's roles fails at the first `ALTER … OWNER TO` or `GRANT … TO`.
//! For a restore proof on a throwaway server ([`ops_core::RestoreOptions::scratch`]),
//! the roles the archive names are read from the SQL pg_restore would run (it connects
//! nowhere to print it) and created there, unable to log in and without passwords.
//!
//! The SQL is read with a small lexer that knows what can hide a keyword: string
//! literals (also `E'…'`), quoted identifiers, dollar-quoted bodies, comments and
//! psql meta-commands. It only looks at the statement forms pg_dump writes that name
//! roles; it is not an SQL parser, and nothing here runs on a server that matters.

use std::collections::BTreeSet;

use ops_core::{ErrorKind, Result};
use tokio_postgres::Client;

use crate::errors::{column, query_error};
use crate::session::quote_ident;

/// Why a backup needs a role. The order is the order of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RoleUse {
    /// `ALTER … OWNER TO role`.
    OwnsObjects,
    /// `GRANT … TO role`, `REVOKE … FROM role`.
    GrantedPrivileges,
    /// A grantor other than the owner (`SET SESSION AUTHORIZATION role` before a
    /// `GRANT`, `GRANTED BY role`).
    GrantsPrivileges,
    /// `ALTER DEFAULT PRIVILEGES FOR ROLE role`.
    SetsDefaultPrivileges,
    /// `CREATE POLICY … TO role`.
    NamedInPolicies,
    /// `CREATE USER MAPPING FOR role`.
    HasUserMappings,
}

impl RoleUse {
    fn as_str(self) -> &'static str {
        match self {
            Self::OwnsObjects => "owns objects",
            Self::GrantedPrivileges => "granted privileges",
            Self::GrantsPrivileges => "grants privileges",
            Self::SetsDefaultPrivileges => "sets default privileges",
            Self::NamedInPolicies => "named in row security policies",
            Self::HasUserMappings => "has user mappings",
        }
    }
}

/// A role the backup names, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NeededRole {
    pub name: String,
    pub uses: BTreeSet<RoleUse>,
}

impl NeededRole {
    /// How a report names it: `role erpgo (owns objects, sets default privileges)`.
    pub(crate) fn describe(&self) -> String {
        let uses: Vec<&str> = self.uses.iter().map(|u| u.as_str()).collect();
        format!("role {} ({})", self.name, uses.join(", "))
    }
}

/// The roles a pg_restore script names, in order of first appearance.
pub(crate) fn needed_roles(script: &str) -> Vec<NeededRole> {
    let mut out: Vec<NeededRole> = Vec::new();
    let mut add = |name: String, why: RoleUse| match out.iter_mut().find(|r| r.name == name) {
        Some(r) => {
            r.uses.insert(why);
        }
        None => out.push(NeededRole {
            name,
            uses: [why].into_iter().collect(),
        }),
    };
    for stmt in statements(script) {
        for (name, why) in roles_of_statement(&stmt) {
            add(name, why);
        }
    }
    out
}

/// Creates the roles of `needed` that the server lacks, as `NOLOGIN` roles without a
/// password, and returns how the report names each one created. Predefined roles
/// (`pg_…`) cannot be created: a missing one is left for the restore to report.
///
/// # Errors
/// Database errors; [`ErrorKind::PermissionDenied`] when the connected role may not
/// create roles.
pub(crate) async fn create_missing(client: &Client, needed: &[NeededRole]) -> Result<Vec<String>> {
    const DOING: &str = "looking up the roles the backup needs";
    let names: Vec<&str> = needed.iter().map(|r| r.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| query_error(e, DOING))?;
    let existing: BTreeSet<String> = rows
        .iter()
        .map(|r| column::<String>(r, 0, DOING))
        .collect::<Result<_>>()?;
    let mut created = Vec::new();
    for role in needed {
        if existing.contains(&role.name) || role.name.starts_with("pg_") {
            continue;
        }
        let sql = format!("CREATE ROLE {} NOLOGIN", quote_ident(&role.name));
        match client.batch_execute(&sql).await {
            Ok(()) => created.push(role.describe()),
            // Created meanwhile by another restore into the same server.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => {
                let err = query_error(
                    e,
                    format!(
                        "creating {} on the scratch server so that the backup can be restored",
                        role.describe()
                    ),
                );
                return Err(if err.kind() == ErrorKind::PermissionDenied {
                    let message = format!(
                        "{}; the scratch server's user must be allowed to create roles \
                         (CREATEROLE or superuser)",
                        err.message()
                    );
                    err.with_message(message)
                } else {
                    err
                });
            }
        }
    }
    Ok(created)
}

/// The roles one statement names.
fn roles_of_statement(t: &[Token]) -> Vec<(String, RoleUse)> {
    let mut out = Vec::new();
    let kw = |i: usize, word: &str| t.get(i).is_some_and(|tok| tok.is_word(word));
    if kw(0, "ALTER") && kw(1, "DEFAULT") && kw(2, "PRIVILEGES") {
        if kw(3, "FOR") && (kw(4, "ROLE") || kw(4, "USER")) {
            for r in role_list(t, 5) {
                out.push((r, RoleUse::SetsDefaultPrivileges));
            }
        }
        if let Some(at) = top_level(t, 3, &["GRANT", "REVOKE"]) {
            out.extend(grant_or_revoke(&t[at..]));
        }
    } else if kw(0, "ALTER") {
        // `ALTER <object> OWNER TO role;`: the last three tokens.
        if let [.., owner, to, role] = t
            && owner.is_word("OWNER")
            && to.is_word("TO")
            && let Some(r) = role_name(role)
        {
            out.push((r, RoleUse::OwnsObjects));
        }
    } else if kw(0, "GRANT") || kw(0, "REVOKE") {
        out.extend(grant_or_revoke(t));
    } else if kw(0, "CREATE") && kw(1, "POLICY") {
        if let Some(at) = top_level(t, 2, &["TO"]) {
            for r in role_list(t, at + 1) {
                out.push((r, RoleUse::NamedInPolicies));
            }
        }
    } else if kw(0, "CREATE") && kw(1, "USER") && kw(2, "MAPPING") && kw(3, "FOR") {
        if let Some(r) = t.get(4).and_then(role_name) {
            out.push((r, RoleUse::HasUserMappings));
        }
    } else if kw(0, "SET")
        && kw(1, "SESSION")
        && kw(2, "AUTHORIZATION")
        && let Some(r) = t
            .get(3)
            .filter(|tok| !tok.is_word("DEFAULT"))
            .and_then(role_name)
    {
        out.push((r, RoleUse::GrantsPrivileges));
    }
    out
}

/// `GRANT … TO roles [WITH …] [GRANTED BY role]` or `REVOKE … FROM roles [GRANTED BY
/// role] [CASCADE]`; `t` starts at the GRANT or REVOKE.
fn grant_or_revoke(t: &[Token]) -> Vec<(String, RoleUse)> {
    let mut out = Vec::new();
    let target = if t.first().is_some_and(|tok| tok.is_word("GRANT")) {
        "TO"
    } else {
        "FROM"
    };
    if let Some(at) = top_level(t, 1, &[target]) {
        for r in role_list(t, at + 1) {
            out.push((r, RoleUse::GrantedPrivileges));
        }
        if let Some(by) = top_level(t, at + 1, &["GRANTED"])
            && t.get(by + 1).is_some_and(|tok| tok.is_word("BY"))
            && let Some(r) = t.get(by + 2).and_then(role_name)
        {
            out.push((r, RoleUse::GrantsPrivileges));
        }
    }
    out
}

/// The index of the first of `words` at or after `from`, outside parentheses.
fn top_level(t: &[Token], from: usize, words: &[&str]) -> Option<usize> {
    let mut depth = 0i32;
    for (i, tok) in t.iter().enumerate() {
        match tok {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            _ if i >= from && depth == 0 && words.iter().any(|w| tok.is_word(w)) => {
                return Some(i);
            }
            _ => {}
        }
    }
    None
}

/// A comma-separated list of roles starting at `from` (`PUBLIC`, `CURRENT_USER` and
/// the like are left out; the old `GROUP name` form is read as `name`).
fn role_list(t: &[Token], from: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = from;
    loop {
        if t.get(i).is_some_and(|tok| tok.is_word("GROUP")) {
            i += 1;
        }
        let Some(tok) = t.get(i) else { break };
        if let Some(r) = role_name(tok) {
            out.push(r);
        } else if !matches!(tok, Token::Word(_)) {
            break;
        }
        if t.get(i + 1) != Some(&Token::Punct(',')) {
            break;
        }
        i += 2;
    }
    out
}

/// The role a token names: a quoted identifier as it is, an unquoted one folded to
/// lower case; not the pseudo-roles.
fn role_name(tok: &Token) -> Option<String> {
    match tok {
        Token::Quoted(name) => Some(name.clone()),
        Token::Word(word) => {
            let lower = word.to_ascii_lowercase();
            let pseudo = matches!(
                lower.as_str(),
                "public" | "current_user" | "session_user" | "current_role"
            );
            (!pseudo).then_some(lower)
        }
        _ => None,
    }
}

/// One lexical token of an SQL statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted keyword or identifier, as written.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// `(`, `)` or `,`.
    Punct(char),
    /// A literal, a number, an operator: nothing that names a role.
    Other,
}

impl Token {
    fn is_word(&self, keyword: &str) -> bool {
        matches!(self, Self::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

/// Splits a script into statements of tokens. A `;` inside parentheses (a rule's
/// action list) does not end a statement.
fn statements(script: &str) -> Vec<Vec<Token>> {
    let chars: Vec<char> = script.chars().collect();
    let mut out = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii();
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '\\' && current.is_empty() {
            // A psql meta-command (`\restrict …`): the rest of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut nesting = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    nesting += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    nesting -= 1;
                    i += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            let escapes = matches!(current.last(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("E"))
                && i > 0
                && !chars[i - 1].is_whitespace();
            if escapes {
                current.pop();
            }
            i = skip_string(&chars, i, escapes);
            current.push(Token::Other);
        } else if c == '"' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        name.push('"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            current.push(Token::Quoted(name));
        } else if c == '$' {
            match dollar_tag(&chars, i) {
                Some(tag) => {
                    i = skip_dollar_quoted(&chars, i, &tag);
                }
                None => i += 1,
            }
            current.push(Token::Other);
        } else if c.is_alphabetic() || c == '_' || !c.is_ascii() {
            let start = i;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            current.push(Token::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            current.push(Token::Other);
        } else if c == ';' && depth <= 0 {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            depth = 0;
            i += 1;
        } else {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            current.push(if matches!(c, '(' | ')' | ',') {
                Token::Punct(c)
            } else {
                Token::Other
            });
            i += 1;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The index after the string literal starting at `start` (`'…'`, `''` for a quote;
/// with `escapes`, also `\'`).
fn skip_string(chars: &[char], start: usize, escapes: bool) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if escapes => i += 2,
            '\'' if chars.get(i + 1) == Some(&'\'') => i += 2,
            '\'' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The tag of a dollar quote opening at `start` (`$$` → empty, `$body$` → `body`); None
/// when the `$` opens none (`$1`).
fn dollar_tag(chars: &[char], start: usize) -> Option<String> {
    let mut tag = String::new();
    let mut i = start + 1;
    while let Some(&c) = chars.get(i) {
        if c == '$' {
            return Some(tag);
        }
        let ok = c.is_alphabetic()
            || c == '_'
            || !c.is_ascii()
            || (c.is_ascii_digit() && !tag.is_empty());
        if !ok {
            return None;
        }
        tag.push(c);
        i += 1;
    }
    None
}

/// The index after the dollar-quoted string with `tag` opening at `start`.
fn skip_dollar_quoted(chars: &[char], start: usize, tag: &str) -> usize {
    let delimiter: Vec<char> = format!("${tag}$").chars().collect();
    let mut i = start + delimiter.len();
    while i < chars.len() {
        if chars[i..].starts_with(&delimiter) {
            return i + delimiter.len();
        }
        i += 1;
    }
    i
}

/// The roles that pg_restore's `stderr` says do not exist (the server quotes the
/// name without escaping it), in order.
pub(crate) fn missing_roles(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in stderr.split("role \"").skip(1) {
        let Some((name, rest)) = part.split_once('"') else {
            continue;
        };
        if rest.trim_start().starts_with("does not exist") && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pg_restore --section=pre-data --section=post-data -f -` of a database whose
    /// objects belong to erpgo, with grants, a policy, a grantor and a rule.
    const SCRIPT: &str = r#"--
-- PostgreSQL database dump
--

\restrict JdOwwV0ZJQ8XD2Qerj69221jcJFjivA8zIurURxtBc9nqTLGISmbAbcKxSOs9e1

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);
SET row_security = off;

--
-- Name: app; Type: SCHEMA; Schema: -; Owner: not_this_one
--

CREATE SCHEMA app;


ALTER SCHEMA app OWNER TO erpgo;

CREATE FUNCTION app.f(x integer) RETURNS integer
    LANGUAGE sql
    AS $$ select x + length('grant all to evil;') $$;
ALTER FUNCTION app.f(x integer) OWNER TO erpgo;
CREATE FUNCTION app.g() RETURNS text LANGUAGE plpgsql AS $body$ BEGIN RETURN $x$ALTER TABLE t OWNER TO nobody1;$x$; END $body$;
ALTER FUNCTION app.g() OWNER TO "Mixed Owner";
CREATE TABLE app.t (
    id integer NOT NULL,
    "owner" text DEFAULT E'it''s \' OWNER TO nobody2; '
);
ALTER TABLE app.t OWNER TO erpgo;
/* a comment GRANT ALL ON x TO nobody3; /* nested */ still comment */
CREATE RULE r AS
    ON INSERT TO app.u DO ( INSERT INTO app.u (id)
  VALUES (1); INSERT INTO app.u (id)
  VALUES (2));
CREATE POLICY p ON app.t TO report_reader, "odd role" USING (true);
CREATE POLICY q ON app.t FOR SELECT USING ((owner = CURRENT_USER));
GRANT USAGE ON SCHEMA app TO report_reader;
GRANT ALL ON FUNCTION app.f(x integer) TO report_reader;
REVOKE ALL ON TABLE app.t FROM erpgo;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT SELECT(v) ON TABLE app.t TO "odd role";
GRANT SELECT ON TABLE app.u TO report_reader WITH GRANT OPTION;
SET SESSION AUTHORIZATION report_reader;
GRANT SELECT ON TABLE app.u TO "odd role";
RESET SESSION AUTHORIZATION;
GRANT SELECT ON TABLE app.w TO PUBLIC;
GRANT SELECT ON TABLE app.x TO auditor GRANTED BY "Boss";
GRANT SELECT ON LARGE OBJECT 4242 TO "odd role";
ALTER DEFAULT PRIVILEGES FOR ROLE erpgo IN SCHEMA app GRANT SELECT ON TABLES  TO report_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE erpgo IN SCHEMA app REVOKE ALL ON FUNCTIONS  FROM PUBLIC;
CREATE USER MAPPING FOR mapped SERVER s OPTIONS (user 'x');
CREATE USER MAPPING FOR PUBLIC SERVER s;

\unrestrict JdOwwV0ZJQ8XD2Qerj69221jcJFjivA8zIurURxtBc9nqTLGISmbAbcKxSOs9e1
"#;

    #[test]
    fn roles_from_owners_grants_policies_and_defaults() {
        let roles: Vec<String> = needed_roles(SCRIPT).iter().map(|r| r.describe()).collect();
        assert_eq!(
            roles,
            [
                "role erpgo (owns objects, granted privileges, sets default privileges)",
                "role Mixed Owner (owns objects)",
                "role report_reader (granted privileges, grants privileges, named in row \
                 security policies)",
                "role odd role (granted privileges, named in row security policies)",
                "role auditor (granted privileges)",
                "role Boss (grants privileges)",
                "role mapped (has user mappings)",
            ]
        );
    }

    #[test]
    fn quoted_text_hides_keywords() {
        let stmts = statements(SCRIPT);
        // The rule with two actions in parentheses is one statement.
        assert!(
            stmts
                .iter()
                .any(|s| s.first().is_some_and(|t| t.is_word("CREATE"))
                    && s.get(1).is_some_and(|t| t.is_word("RULE"))
                    && s.iter().filter(|t| t.is_word("INSERT")).count() == 3)
        );
        let roles = needed_roles(SCRIPT);
        for hidden in ["nobody1", "nobody2", "nobody3", "evil", "not_this_one"] {
            assert!(roles.iter().all(|r| r.name != hidden), "{hidden}");
        }
    }

    #[test]
    fn missing_roles_in_pg_restore_errors() {
        let stderr = "pg_restore: error: could not execute query: ERROR:  role \"erpgo\" does \
                      not exist\nCommand was: ALTER SCHEMA app OWNER TO erpgo;\n\
                      ERROR:  role \"odd role\" does not exist\nrole \"erpgo\" does not exist";
        assert_eq!(missing_roles(stderr), ["erpgo", "odd role"]);
        assert!(missing_roles("ERROR:  relation \"x\" does not exist").is_empty());
    }
}
