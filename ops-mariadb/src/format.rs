//! The data stream format and the SQL text helpers around it. Pure functions only:
//! no I/O lives here, so everything is unit- and property-tested.
//!
//! A table data stream is what `LOAD DATA LOCAL INFILE ... CHARACTER SET binary FIELDS
//! TERMINATED BY '\t' ESCAPED BY '\\' LINES TERMINATED BY '\n'` reads back exactly:
//! one record per row ending in `\n`, fields separated by `\t`, NULL as `\N`, and in
//! field bytes `\\`, `\t`, `\n`, `\r` and NUL escaped as `\\`, `\t`, `\n`, `\r`, `\0`.
//! Field bytes are the column's bytes in its own character set (the dump session
//! reads with `character_set_results = binary`, the load uses `CHARACTER SET binary`),
//! so no conversion happens on either side. A few column types are carried in another
//! form, see [`Encoding`].

use bytes::BytesMut;
use serde::{Deserialize, Serialize};

use crate::DefinerPolicy;

/// How one column's values are written in a data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Encoding {
    /// The server's text form (or raw bytes for string and binary types), escaped.
    Text,
    /// Upper-case hex of the stored bytes (`HEX(col)`, loaded with `UNHEX`): spatial
    /// types, whose stored form `LOAD DATA` cannot take directly.
    Hex,
    /// The value as an unsigned integer (`CAST(col AS UNSIGNED)`): `BIT(n)`.
    Bit,
    /// `CAST(col AS DOUBLE)`: `FLOAT`, whose text form has only 6 digits while the
    /// double of the same value prints exactly and converts back to the same float.
    Float,
    /// The server's text form, loaded through `CONVERT(@v USING ascii)`: types such as
    /// `UUID` and `INET6` that read a binary string as their binary form.
    AsciiText,
}

impl Encoding {
    /// The encoding of a column with information_schema `DATA_TYPE` `data_type`.
    pub(crate) fn for_type(data_type: &str) -> Self {
        match data_type.to_ascii_lowercase().as_str() {
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" => Encoding::Hex,
            "bit" => Encoding::Bit,
            "float" => Encoding::Float,
            "uuid" | "inet6" | "inet4" => Encoding::AsciiText,
            _ => Encoding::Text,
        }
    }

    /// The SELECT expression that produces the stream form of `column`.
    pub(crate) fn select_expr(self, column: &str) -> String {
        let q = quote_ident(column);
        match self {
            Encoding::Text | Encoding::AsciiText => q,
            Encoding::Hex => format!("HEX({q})"),
            Encoding::Bit => format!("CAST({q} AS UNSIGNED)"),
            Encoding::Float => format!("CAST({q} AS DOUBLE)"),
        }
    }
}

/// One column of a data stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamColumn {
    /// Column name.
    pub name: String,
    /// How its values are written.
    #[serde(rename = "enc")]
    pub encoding: Encoding,
}

/// The column list and `SET` clause of the `LOAD DATA` statement for `columns`.
///
/// A table whose every column is generated has no column in its stream: each record
/// is empty and goes into a variable, so each inserts one row of computed values.
/// (An empty list `()` would mean every column to `LOAD DATA`.)
pub(crate) fn load_clause(columns: &[StreamColumn]) -> String {
    if columns.is_empty() {
        return "(@v0)".to_owned();
    }
    let mut list = Vec::with_capacity(columns.len());
    let mut sets = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        match c.encoding {
            Encoding::Text | Encoding::Float => list.push(quote_ident(&c.name)),
            Encoding::Hex => {
                list.push(format!("@v{i}"));
                sets.push(format!("{} = UNHEX(@v{i})", quote_ident(&c.name)));
            }
            Encoding::Bit => {
                list.push(format!("@v{i}"));
                sets.push(format!(
                    "{} = CAST(@v{i} AS UNSIGNED)",
                    quote_ident(&c.name)
                ));
            }
            Encoding::AsciiText => {
                list.push(format!("@v{i}"));
                sets.push(format!(
                    "{} = CONVERT(@v{i} USING ascii)",
                    quote_ident(&c.name)
                ));
            }
        }
    }
    let mut out = format!("({})", list.join(", "));
    if !sets.is_empty() {
        out.push_str(" SET ");
        out.push_str(&sets.join(", "));
    }
    out
}

/// The fixed part of the `LOAD DATA` statement that matches the stream format.
pub(crate) const LOAD_FORMAT: &str = "CHARACTER SET binary FIELDS TERMINATED BY '\\t' \
     ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'";

/// Appends one field's bytes, escaped.
pub(crate) fn escape_into(out: &mut BytesMut, field: &[u8]) {
    // Most fields hold none of the five bytes: two vectorised scans and one copy
    // instead of a branch per byte (the dump's hottest loop after the driver's).
    if memchr::memchr3(b'\\', b'\t', b'\n', field).is_none()
        && memchr::memchr2(b'\r', 0, field).is_none()
    {
        out.extend_from_slice(field);
        return;
    }
    let mut start = 0;
    for (i, &b) in field.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0 => b"\\0",
            _ => continue,
        };
        out.extend_from_slice(&field[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&field[start..]);
}

/// The marker of a NULL field.
pub(crate) const NULL_FIELD: &[u8] = b"\\N";

/// Splits one record (without its `\n`) back into fields; `None` is NULL. The inverse
/// of the writer, used by tests and by anything that inspects a stream.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn parse_record(record: &[u8]) -> Vec<Option<Vec<u8>>> {
    record
        .split(|&b| b == b'\t')
        .map(|field| {
            if field == NULL_FIELD {
                return None;
            }
            let mut out = Vec::with_capacity(field.len());
            let mut it = field.iter();
            while let Some(&b) = it.next() {
                if b == b'\\' {
                    match it.next() {
                        Some(b't') => out.push(b'\t'),
                        Some(b'n') => out.push(b'\n'),
                        Some(b'r') => out.push(b'\r'),
                        Some(b'0') => out.push(0),
                        Some(&other) => out.push(other),
                        None => out.push(b'\\'),
                    }
                } else {
                    out.push(b);
                }
            }
            Some(out)
        })
        .collect()
}

/// Quotes an identifier with backticks.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal (for sessions without `NO_BACKSLASH_ESCAPES`, which dbops
/// sessions never have).
pub(crate) fn quote_str(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Applies a [`DefinerPolicy`] to a `CREATE ... DEFINER=... VIEW|PROCEDURE|...`
/// statement as `SHOW CREATE` prints it. Statements without a definer clause in their
/// head are returned unchanged.
pub(crate) fn apply_definer(sql: &str, policy: &DefinerPolicy) -> String {
    let replacement = match policy {
        DefinerPolicy::Keep => return sql.to_owned(),
        DefinerPolicy::Drop => None,
        DefinerPolicy::Rewrite(account) => Some(quote_account(account)),
    };
    let Some((start, end)) = definer_span(sql) else {
        return sql.to_owned();
    };
    match replacement {
        None => {
            let end = sql[end..]
                .find(|c: char| !c.is_whitespace())
                .map_or(sql.len(), |n| end + n);
            format!("{}{}", &sql[..start], &sql[end..])
        }
        Some(account) => format!("{}DEFINER={}{}", &sql[..start], account, &sql[end..]),
    }
}

/// The account of the `DEFINER=` clause in the head of a CREATE statement as
/// `SHOW CREATE` prints it: the user and the host, or no host for a role. `None`
/// without a clause, or for `CURRENT_USER`.
pub(crate) fn definer_of(sql: &str) -> Option<(String, Option<String>)> {
    let (start, end) = definer_span(sql)?;
    let text = &sql[start + "DEFINER=".len()..end];
    let (user, rest) = account_part(text)?;
    if user.eq_ignore_ascii_case("CURRENT_USER") || user.eq_ignore_ascii_case("CURRENT_USER()") {
        return None;
    }
    match rest.strip_prefix('@') {
        Some(host) => Some((user, Some(account_part(host)?.0))),
        None => Some((user, None)),
    }
}

/// One part of an account (quoted with backticks or quotes, or bare) and the rest.
fn account_part(text: &str) -> Option<(String, &str)> {
    let mut chars = text.char_indices();
    let (_, first) = chars.next()?;
    if !matches!(first, '`' | '\'' | '"') {
        let end = text.find('@').unwrap_or(text.len());
        return Some((text[..end].to_owned(), &text[end..]));
    }
    let mut out = String::new();
    let mut pending_quote = false;
    for (i, c) in chars {
        if pending_quote {
            if c == first {
                out.push(c);
                pending_quote = false;
                continue;
            }
            return Some((out, &text[i..]));
        }
        if c == first {
            pending_quote = true;
        } else {
            out.push(c);
        }
    }
    pending_quote.then_some((out, ""))
}

/// `sql` without the `` `db`. `` qualifiers of names in database `db`, outside
/// string literals: the form `SHOW CREATE VIEW` prints when it can open the view. A
/// view whose definer does not exist cannot be opened, and the server prints the text
/// it stored, with every column qualified by the database (`` `shop`.`t`.`c` ``),
/// which does not resolve in a database of another name.
pub(crate) fn unqualify(sql: &str, db: &str) -> String {
    let qualifier = format!("{}.", quote_ident(db));
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                // A string: to its closing quote (doubled quotes and `\` escapes stay).
                i += 1;
                while i < bytes.len() {
                    let doubled = bytes[i] == q && bytes.get(i + 1) == Some(&q);
                    if bytes[i] == b'\\' || doubled {
                        i += 2;
                    } else if bytes[i] == q {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'`' => {
                let first_part = i == 0 || bytes[i - 1] != b'.';
                if first_part && sql[i..].starts_with(&qualifier) {
                    out.push_str(&sql[copied..i]);
                    i += qualifier.len();
                    copied = i;
                    continue;
                }
                // Past this identifier (a doubled backtick is part of it).
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'`' && bytes.get(i + 1) == Some(&b'`') {
                        i += 2;
                    } else if bytes[i] == b'`' {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    out
}

/// `user@host` → `` `user`@`host` ``; text with backticks is taken as quoted.
fn quote_account(account: &str) -> String {
    if account.contains('`') || account.eq_ignore_ascii_case("CURRENT_USER") {
        return account.to_owned();
    }
    match account.rsplit_once('@') {
        Some((user, host)) => format!("{}@{}", quote_ident(user), quote_ident(host)),
        None => quote_ident(account),
    }
}

/// Byte range of `DEFINER=<account>` in the head of a CREATE statement.
fn definer_span(sql: &str) -> Option<(usize, usize)> {
    let upper_head: String = sql
        .chars()
        .take(200)
        .collect::<String>()
        .to_ascii_uppercase();
    let pos = upper_head.find("DEFINER=")?;
    // Only the statement head: CREATE [OR REPLACE] [ALGORITHM=...] DEFINER=...
    let head = &upper_head[..pos];
    if !head.trim_start().starts_with("CREATE") || head.contains('`') || head.contains('(') {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut i = pos + "DEFINER=".len();
    // user, then optional @host; each quoted with backticks or quotes, or bare.
    for part in 0..2 {
        if part == 1 {
            if bytes.get(i) != Some(&b'@') {
                break;
            }
            i += 1;
        }
        match bytes.get(i) {
            Some(&q @ (b'`' | b'\'' | b'"')) => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return None,
                        Some(&c) if c == q => {
                            if bytes.get(i + 1) == Some(&q) {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            Some(_) => {
                while let Some(&c) = bytes.get(i) {
                    if c.is_ascii_whitespace() || c == b'@' {
                        break;
                    }
                    i += 1;
                }
                // CURRENT_USER()
                if sql[..i].ends_with("CURRENT_USER") && bytes.get(i) == Some(&b'(') {
                    i += 2;
                }
            }
            None => return None,
        }
    }
    Some((pos, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\t");
            }
            match f {
                None => out.extend_from_slice(NULL_FIELD),
                Some(b) => escape_into(&mut out, b),
            }
        }
        out.to_vec()
    }

    #[test]
    fn escapes_the_special_bytes() {
        let r = record(&[
            Some(b"a\\b\tc\nd\re\0f"),
            None,
            Some(b""),
            Some(b"\\N"),
            Some(b"NULL"),
        ]);
        assert_eq!(&r[..], &b"a\\\\b\\tc\\nd\\re\\0f\t\\N\t\t\\\\N\tNULL"[..]);
        assert!(!r.contains(&b'\n'));
    }

    proptest! {
        #[test]
        fn records_round_trip(fields in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 1..6)) {
            let refs: Vec<Option<&[u8]>> = fields.iter().map(|f| f.as_deref()).collect();
            let r = record(&refs);
            prop_assert!(!r.contains(&b'\n'));
            prop_assert_eq!(parse_record(&r), fields);
        }
    }

    #[test]
    fn load_clause_uses_variables_for_converted_columns() {
        let cols = vec![
            StreamColumn {
                name: "id".into(),
                encoding: Encoding::Text,
            },
            StreamColumn {
                name: "g`x".into(),
                encoding: Encoding::Hex,
            },
            StreamColumn {
                name: "b".into(),
                encoding: Encoding::Bit,
            },
        ];
        assert_eq!(
            load_clause(&cols),
            "(`id`, @v1, @v2) SET `g``x` = UNHEX(@v1), `b` = CAST(@v2 AS UNSIGNED)"
        );
        assert_eq!(load_clause(&[]), "(@v0)");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_str("it's \\ x"), "'it''s \\\\ x'");
    }

    #[test]
    fn definer_policies() {
        let view = "CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`127.0.0.1` SQL SECURITY DEFINER VIEW `v` AS select 1";
        assert_eq!(apply_definer(view, &DefinerPolicy::Keep), view);
        assert_eq!(
            apply_definer(view, &DefinerPolicy::Drop),
            "CREATE ALGORITHM=UNDEFINED SQL SECURITY DEFINER VIEW `v` AS select 1"
        );
        assert_eq!(
            apply_definer(view, &DefinerPolicy::Rewrite("app@%".into())),
            "CREATE ALGORITHM=UNDEFINED DEFINER=`app`@`%` SQL SECURITY DEFINER VIEW `v` AS select 1"
        );
        let proc_ = "CREATE DEFINER=`we``ird`@`localhost` PROCEDURE `p`() SELECT 'DEFINER=x'";
        assert_eq!(
            apply_definer(proc_, &DefinerPolicy::Drop),
            "CREATE PROCEDURE `p`() SELECT 'DEFINER=x'"
        );
        let role =
            "CREATE DEFINER=`admin_role` TRIGGER `t` BEFORE INSERT ON `x` FOR EACH ROW SET @a=1";
        assert_eq!(
            apply_definer(role, &DefinerPolicy::Rewrite("`u`@`h`".into())),
            "CREATE DEFINER=`u`@`h` TRIGGER `t` BEFORE INSERT ON `x` FOR EACH ROW SET @a=1"
        );
        let none = "CREATE TABLE `t` (`DEFINER=` int)";
        assert_eq!(apply_definer(none, &DefinerPolicy::Drop), none);
    }

    #[test]
    fn database_qualifiers_go() {
        let view = "CREATE ALGORITHM=UNDEFINED DEFINER=`shop`@`%` SQL SECURITY DEFINER VIEW \
                    `v` AS select `shop`.`items`.`id` AS `id`,'`shop`.x' AS `s`,\
                    `other`.`t`.`shop` AS `o`,`a``shop`.`b` AS `b`,`shop`.`f`(1) AS `f` \
                    from (`items` join `other`.`t`)";
        assert_eq!(
            unqualify(view, "shop"),
            "CREATE ALGORITHM=UNDEFINED DEFINER=`shop`@`%` SQL SECURITY DEFINER VIEW \
             `v` AS select `items`.`id` AS `id`,'`shop`.x' AS `s`,\
             `other`.`t`.`shop` AS `o`,`a``shop`.`b` AS `b`,`f`(1) AS `f` \
             from (`items` join `other`.`t`)"
        );
        assert_eq!(
            unqualify("select `we``ird`.`t`.`c` from `t`", "we`ird"),
            "select `t`.`c` from `t`"
        );
        assert_eq!(
            unqualify("select 'it''s `shop`.'", "shop"),
            "select 'it''s `shop`.'"
        );
    }

    #[test]
    fn definer_accounts() {
        let view = "CREATE ALGORITHM=UNDEFINED DEFINER=`app`@`%` SQL SECURITY DEFINER VIEW `v` AS select 1";
        assert_eq!(definer_of(view), Some(("app".into(), Some("%".into()))));
        let proc_ = "CREATE DEFINER=`we``ird`@`local@host` PROCEDURE `p`() SELECT 1";
        assert_eq!(
            definer_of(proc_),
            Some(("we`ird".into(), Some("local@host".into())))
        );
        let role =
            "CREATE DEFINER=`reporting` TRIGGER `t` BEFORE INSERT ON `x` FOR EACH ROW SET @a=1";
        assert_eq!(definer_of(role), Some(("reporting".into(), None)));
        let quoted = "CREATE DEFINER='o''k'@'10.0.%' EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1";
        assert_eq!(
            definer_of(quoted),
            Some(("o'k".into(), Some("10.0.%".into())))
        );
        assert_eq!(
            definer_of("CREATE DEFINER=CURRENT_USER() VIEW v AS SELECT 1"),
            None
        );
        assert_eq!(definer_of("CREATE VIEW `v` AS select 1"), None);
    }
}
