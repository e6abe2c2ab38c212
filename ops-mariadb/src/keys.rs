//! Deferred secondary keys: which keys of an InnoDB table the restore leaves out of
//! its `CREATE TABLE` and adds after the data (one sorted index build per table), and
//! which foreign keys it adds after every table has its keys.
//!
//! The structure comes from `information_schema` (index names, uniqueness, type,
//! columns; foreign key names), read at dump time; the text of each key clause comes
//! from `SHOW CREATE TABLE`, split by a quote- and parenthesis-aware scanner. A table
//! is deferred only when both agree exactly; anything unexpected keeps the table's
//! full `CREATE TABLE` (the restore is then as before, just slower).
//!
//! Why the restored table prints the same `SHOW CREATE TABLE`: the server orders keys
//! by class (primary, unique NOT NULL, other unique, plain, fulltext) and, within a
//! class, by their position in the definition; `ALTER TABLE ... ADD` appends new keys
//! after the existing ones and sorts again. `SHOW CREATE` prints keys in that sorted
//! order, so keeping a prefix of the printed keys and adding the rest in printed order
//! reproduces it. Foreign keys are printed sorted by name whatever the order they were
//! added in. Keys that must exist while rows are inserted (the primary key; unique
//! keys of a table without one, which InnoDB may cluster on; `USING HASH` and `WITHOUT
//! OVERLAPS` unique keys; the key the AUTO_INCREMENT column needs) are kept, with every
//! key printed before them.

use crate::catalog::parse_quoted;
use serde::{Deserialize, Serialize};

use crate::format::quote_ident;

/// What a table's restore adds after its data (schema stream version 2, field
/// `deferred` of a table object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeferredKeys {
    /// `CREATE TABLE` without the deferred keys and without foreign keys.
    pub create: String,
    /// Keys added after the data, in `SHOW CREATE TABLE` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexDef>,
    /// Foreign keys added after every table has its keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_keys: Vec<ForeignKeyDef>,
}

/// One secondary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexDef {
    pub name: String,
    pub kind: IndexKind,
    /// Its columns, in key order (from `information_schema.STATISTICS`).
    pub columns: Vec<String>,
    /// The clause as `SHOW CREATE TABLE` prints it, e.g. ``KEY `k` (`a`,`b`(10))``.
    pub sql: String,
}

/// One foreign key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ForeignKeyDef {
    pub name: String,
    /// ``CONSTRAINT `fk` FOREIGN KEY (...) REFERENCES ...`` as printed.
    pub sql: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IndexKind {
    Unique,
    Key,
    Fulltext,
    Spatial,
}

/// One row of `information_schema.STATISTICS` (one column of one index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatRow {
    pub index: String,
    pub non_unique: bool,
    pub seq: u32,
    pub column: Option<String>,
    pub index_type: String,
}

/// What the catalog knows about one table, besides its `SHOW CREATE TABLE` text.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableFacts<'a> {
    /// Its STATISTICS rows (any order).
    pub stats: Vec<&'a StatRow>,
    /// Names of its foreign keys (`REFERENTIAL_CONSTRAINTS`).
    pub foreign_keys: Vec<&'a str>,
    /// Its AUTO_INCREMENT column.
    pub auto_increment: Option<&'a str>,
}

/// An index as the catalog knows it: name, non-unique, type, (seq, column) parts.
type CatalogIndex<'a> = (&'a str, bool, &'a str, Vec<(u32, Option<&'a str>)>);

/// Byte offsets of a definition list's `(`, its items, and its `)`.
type Definitions = (usize, Vec<(usize, usize)>, usize);

/// Plans the deferral for one InnoDB table; `None` keeps the full `CREATE TABLE`
/// (nothing to defer, or the text and the catalog do not agree).
pub(crate) fn plan(create: &str, facts: &TableFacts<'_>) -> Option<DeferredKeys> {
    let (open, items, close) = split_definitions(create)?;
    let parsed: Vec<Item> = items
        .iter()
        .map(|&(s, e)| classify(&create[s..e]))
        .collect();

    // The catalog's view: index name -> (non_unique, type, columns by seq).
    let mut indexes: Vec<CatalogIndex<'_>> = Vec::new();
    for r in &facts.stats {
        match indexes.iter_mut().find(|i| i.0 == r.index) {
            Some(i) => i.3.push((r.seq, r.column.as_deref())),
            None => indexes.push((
                &r.index,
                r.non_unique,
                &r.index_type,
                vec![(r.seq, r.column.as_deref())],
            )),
        }
    }
    let has_primary = indexes.iter().any(|i| i.0 == "PRIMARY");
    if has_primary != parsed.iter().any(|p| matches!(p, Item::Primary)) {
        return None;
    }
    let key_items = parsed
        .iter()
        .filter(|p| matches!(p, Item::Index { .. }))
        .count();
    if key_items + usize::from(has_primary) != indexes.len() {
        return None;
    }
    let fk_items: Vec<&str> = parsed
        .iter()
        .filter_map(|p| match p {
            Item::ForeignKey { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut expected_fks = facts.foreign_keys.clone();
    let mut found_fks = fk_items.clone();
    expected_fks.sort_unstable();
    found_fks.sort_unstable();
    if expected_fks != found_fks {
        return None;
    }

    // Keys in printed order, checked against the catalog; which must stay.
    struct Key {
        item: usize,
        def: IndexDef,
        keep: bool,
    }
    let mut keys = Vec::new();
    let mut first_auto_inc_key = None;
    for (i, p) in parsed.iter().enumerate() {
        match p {
            Item::Primary
                if first_auto_inc_key.is_none()
                    && facts.auto_increment.is_some()
                    && primary_first_column(&create[items[i].0..items[i].1]).as_deref()
                        == facts.auto_increment =>
            {
                first_auto_inc_key = Some(usize::MAX);
            }
            Item::Index {
                kind,
                name,
                columns,
            } => {
                let (_, non_unique, index_type, mut cols) =
                    indexes.iter().find(|x| x.0 == name)?.clone();
                cols.sort_unstable_by_key(|c| c.0);
                let cols: Vec<String> = cols
                    .into_iter()
                    .map(|(_, c)| c.map(str::to_owned))
                    .collect::<Option<_>>()?;
                if cols != *columns {
                    return None;
                }
                let type_ok = match kind {
                    IndexKind::Unique => !non_unique,
                    IndexKind::Key => non_unique,
                    IndexKind::Fulltext => index_type.eq_ignore_ascii_case("FULLTEXT"),
                    IndexKind::Spatial => index_type.eq_ignore_ascii_case("SPATIAL"),
                };
                if !type_ok {
                    return None;
                }
                let text = &create[items[i].0..items[i].1];
                let upper = text.to_ascii_uppercase();
                let keep = *kind == IndexKind::Unique
                    && (!has_primary
                        || index_type.eq_ignore_ascii_case("HASH")
                        || upper.contains(" USING HASH")
                        || upper.contains("WITHOUT OVERLAPS"));
                if first_auto_inc_key.is_none()
                    && facts.auto_increment.is_some()
                    && columns.first().map(String::as_str) == facts.auto_increment
                {
                    first_auto_inc_key = Some(keys.len());
                }
                keys.push(Key {
                    item: i,
                    def: IndexDef {
                        name: name.clone(),
                        kind: *kind,
                        columns: cols,
                        sql: text.to_owned(),
                    },
                    keep,
                });
            }
            _ => {}
        }
    }
    // Keep a prefix: everything up to the last key that must stay.
    let mut keep_upto = keys.iter().rposition(|k| k.keep).map_or(0, |p| p + 1);
    if let Some(k) = first_auto_inc_key
        && k != usize::MAX
    {
        keep_upto = keep_upto.max(k + 1);
    }
    let deferred: Vec<&Key> = keys[keep_upto..].iter().collect();
    if deferred.is_empty() && fk_items.is_empty() {
        return None;
    }
    let dropped: Vec<usize> = deferred
        .iter()
        .map(|k| k.item)
        .chain(
            parsed
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p, Item::ForeignKey { .. }))
                .map(|(i, _)| i),
        )
        .collect();
    let kept: Vec<&str> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(i))
        .map(|(_, &(s, e))| &create[s..e])
        .collect();
    let stripped = format!(
        "{}\n  {}\n{}",
        &create[..=open],
        kept.join(",\n  "),
        &create[close..]
    );
    let foreign_keys = parsed
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Item::ForeignKey { name } => Some(ForeignKeyDef {
                name: name.clone(),
                sql: create[items[i].0..items[i].1].to_owned(),
            }),
            _ => None,
        })
        .collect();
    Some(DeferredKeys {
        create: stripped,
        indexes: deferred.iter().map(|k| k.def.clone()).collect(),
        foreign_keys,
    })
}

impl DeferredKeys {
    /// The `ALTER TABLE` statements that add the deferred keys: one for all of them,
    /// except that InnoDB builds one FULLTEXT index per statement.
    pub(crate) fn index_statements(&self, table: &str) -> Vec<String> {
        let mut batches: Vec<Vec<&str>> = vec![Vec::new()];
        let mut fulltext_in_first = false;
        for i in &self.indexes {
            if i.kind == IndexKind::Fulltext {
                if fulltext_in_first {
                    batches.push(vec![&i.sql]);
                    continue;
                }
                fulltext_in_first = true;
            }
            batches[0].push(&i.sql);
        }
        batches
            .into_iter()
            .filter(|b| !b.is_empty())
            .map(|b| alter(table, &b))
            .collect()
    }

    /// The `ALTER TABLE` that adds the foreign keys, if any.
    pub(crate) fn foreign_key_statement(&self, table: &str) -> Option<String> {
        if self.foreign_keys.is_empty() {
            return None;
        }
        let clauses: Vec<&str> = self.foreign_keys.iter().map(|f| f.sql.as_str()).collect();
        Some(alter(table, &clauses))
    }
}

fn alter(table: &str, clauses: &[&str]) -> String {
    let adds: Vec<String> = clauses.iter().map(|c| format!("ADD {c}")).collect();
    format!("ALTER TABLE {} {}", quote_ident(table), adds.join(", "))
}

/// One item of a `CREATE TABLE` definition list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Primary,
    Index {
        kind: IndexKind,
        name: String,
        columns: Vec<String>,
    },
    ForeignKey {
        name: String,
    },
    /// Columns, CHECK constraints, periods, anything else: always kept.
    Other,
}

fn classify(text: &str) -> Item {
    let index = |rest: &str, kind| -> Item {
        let Some((name, rest)) = parse_quoted(rest) else {
            return Item::Other;
        };
        let Some(rest) = rest.strip_prefix(" (") else {
            return Item::Other;
        };
        let Some(columns) = key_columns(rest) else {
            return Item::Other;
        };
        Item::Index {
            kind,
            name,
            columns,
        }
    };
    if text.starts_with("PRIMARY KEY ") {
        Item::Primary
    } else if let Some(rest) = text.strip_prefix("UNIQUE KEY ") {
        index(rest, IndexKind::Unique)
    } else if let Some(rest) = text.strip_prefix("KEY ") {
        index(rest, IndexKind::Key)
    } else if let Some(rest) = text.strip_prefix("FULLTEXT KEY ") {
        index(rest, IndexKind::Fulltext)
    } else if let Some(rest) = text.strip_prefix("SPATIAL KEY ") {
        index(rest, IndexKind::Spatial)
    } else if let Some(rest) = text.strip_prefix("CONSTRAINT ") {
        match parse_quoted(rest) {
            Some((name, rest)) if rest.starts_with(" FOREIGN KEY ") => Item::ForeignKey { name },
            _ => Item::Other,
        }
    } else {
        Item::Other
    }
}

/// The first column of `PRIMARY KEY (...)`.
fn primary_first_column(text: &str) -> Option<String> {
    let rest = text.strip_prefix("PRIMARY KEY (")?;
    key_columns(rest)?.into_iter().next()
}

/// The column names of a key part list, given the text after its `(`: each part is a
/// quoted name, optionally followed by `(length)`, `DESC`/`ASC`, `WITHOUT OVERLAPS`.
fn key_columns(after_open: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = after_open;
    loop {
        let (name, r) = parse_quoted(rest)?;
        out.push(name);
        // Skip to the next top-level ',' or the closing ')'.
        let bytes = r.as_bytes();
        let mut depth = 0usize;
        let mut i = 0;
        loop {
            match bytes.get(i)? {
                b'(' => depth += 1,
                b')' if depth > 0 => depth -= 1,
                b')' => return Some(out),
                b',' if depth == 0 => break,
                b'`' | b'\'' | b'"' => return None,
                _ => {}
            }
            i += 1;
        }
        rest = &r[i + 1..];
    }
}

/// Splits `CREATE TABLE name (item, item, ...) options` into the byte offset of the
/// opening parenthesis, the items' trimmed byte ranges, and the offset of the closing
/// parenthesis. Quoted identifiers and strings (with `\` escapes and doubled quotes)
/// and comments are skipped, so commas and parentheses inside them do not count.
fn split_definitions(sql: &str) -> Option<Definitions> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut open = None;
    let mut items = Vec::new();
    let mut item_start = 0;
    let push = |items: &mut Vec<(usize, usize)>, s: usize, e: usize| -> Option<()> {
        let text = &sql[s..e];
        let lead = text.len() - text.trim_start().len();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return None;
        }
        items.push((s + lead, s + lead + trimmed.len()));
        Some(())
    };
    while i < b.len() {
        match b[i] {
            q @ (b'`' | b'\'' | b'"') => {
                i += 1;
                loop {
                    let c = *b.get(i)?;
                    if c == b'\\' && q != b'`' {
                        i += 2;
                        continue;
                    }
                    if c == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/")?;
                i += 2 + end + 1;
            }
            b'(' => {
                depth += 1;
                if depth == 1 && open.is_none() {
                    open = Some(i);
                    item_start = i + 1;
                }
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    push(&mut items, item_start, i)?;
                    return Some((open?, items, i));
                }
            }
            b',' if depth == 1 => {
                push(&mut items, item_start, i)?;
                item_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(index: &str, non_unique: bool, seq: u32, column: &str, ty: &str) -> StatRow {
        StatRow {
            index: index.into(),
            non_unique,
            seq,
            column: Some(column.into()),
            index_type: ty.into(),
        }
    }

    const SBTEST: &str = "CREATE TABLE `sbtest1` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  \
        `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(120) NOT NULL DEFAULT '',\n  \
        `pad` char(60) NOT NULL DEFAULT '',\n  PRIMARY KEY (`id`),\n  KEY `k_1` (`k`)\n) \
        ENGINE=InnoDB AUTO_INCREMENT=500001 DEFAULT CHARSET=latin1 COLLATE=latin1_swedish_ci";

    #[test]
    fn defers_a_plain_secondary_key() {
        let stats = [
            stat("PRIMARY", false, 1, "id", "BTREE"),
            stat("k_1", true, 1, "k", "BTREE"),
        ];
        let facts = TableFacts {
            stats: stats.iter().collect(),
            foreign_keys: vec![],
            auto_increment: Some("id"),
        };
        let d = plan(SBTEST, &facts).expect("deferred");
        assert_eq!(
            d.create,
            "CREATE TABLE `sbtest1` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  \
             `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(120) NOT NULL DEFAULT '',\n  \
             `pad` char(60) NOT NULL DEFAULT '',\n  PRIMARY KEY (`id`)\n) \
             ENGINE=InnoDB AUTO_INCREMENT=500001 DEFAULT CHARSET=latin1 COLLATE=latin1_swedish_ci"
        );
        assert_eq!(d.indexes.len(), 1);
        assert_eq!(d.indexes[0].columns, vec!["k".to_owned()]);
        assert_eq!(
            d.index_statements("sbtest1"),
            vec!["ALTER TABLE `sbtest1` ADD KEY `k_1` (`k`)".to_owned()]
        );
        assert_eq!(d.foreign_key_statement("sbtest1"), None);
    }

    #[test]
    fn catalog_disagreement_keeps_the_table() {
        // A key the catalog does not know, or one it knows but the text lacks.
        let stats = [stat("PRIMARY", false, 1, "id", "BTREE")];
        let facts = TableFacts {
            stats: stats.iter().collect(),
            ..TableFacts::default()
        };
        assert_eq!(plan(SBTEST, &facts), None);
        let stats = [
            stat("PRIMARY", false, 1, "id", "BTREE"),
            stat("k_1", true, 1, "c", "BTREE"),
        ];
        let facts = TableFacts {
            stats: stats.iter().collect(),
            ..TableFacts::default()
        };
        assert_eq!(plan(SBTEST, &facts), None, "columns differ");
        let stats = [
            stat("PRIMARY", false, 1, "id", "BTREE"),
            stat("k_1", true, 1, "k", "BTREE"),
        ];
        let facts = TableFacts {
            stats: stats.iter().collect(),
            foreign_keys: vec!["fk"],
            auto_increment: None,
        };
        assert_eq!(plan(SBTEST, &facts), None, "foreign key missing in text");
    }

    #[test]
    fn tricky_text_and_kept_prefixes() {
        let sql = "CREATE TABLE `t,(x` (\n  `a` int(11) NOT NULL,\n  \
            `b` varchar(10) DEFAULT 'x,)''\\',y' COMMENT 'KEY `z` (`a`)',\n  \
            `c``d` int(11) DEFAULT NULL,\n  \
            `id` int(11) NOT NULL AUTO_INCREMENT,\n  \
            PRIMARY KEY (`a`,`b`(3)),\n  UNIQUE KEY `u` (`b`(5) DESC,`c``d`) COMMENT 'a, b)',\n  \
            KEY `x` (`c``d`),\n  KEY `ai` (`id`),\n  KEY `late` (`b`),\n  \
            FULLTEXT KEY `f1` (`b`),\n  FULLTEXT KEY `f2` (`b`),\n  \
            CONSTRAINT `fk``1` FOREIGN KEY (`c``d`) REFERENCES `p` (`id`) ON DELETE CASCADE,\n  \
            CONSTRAINT `chk` CHECK (`a` > 0)\n) ENGINE=InnoDB /* (,) */ PARTITION BY HASH (`a`)";
        let stats = [
            stat("PRIMARY", false, 1, "a", "BTREE"),
            stat("PRIMARY", false, 2, "b", "BTREE"),
            stat("u", false, 2, "c`d", "BTREE"),
            stat("u", false, 1, "b", "BTREE"),
            stat("x", true, 1, "c`d", "BTREE"),
            stat("ai", true, 1, "id", "BTREE"),
            stat("late", true, 1, "b", "BTREE"),
            stat("f1", true, 1, "b", "FULLTEXT"),
            stat("f2", true, 1, "b", "FULLTEXT"),
        ];
        let facts = TableFacts {
            stats: stats.iter().collect(),
            foreign_keys: vec!["fk`1"],
            auto_increment: Some("id"),
        };
        let d = plan(sql, &facts).expect("deferred");
        // `ai` must stay for AUTO_INCREMENT, and with it everything printed before it.
        let names: Vec<&str> = d.indexes.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["late", "f1", "f2"]);
        assert!(
            d.create.contains("KEY `ai` (`id`),\n  CONSTRAINT `chk`"),
            "{}",
            d.create
        );
        assert!(!d.create.contains("FOREIGN KEY"), "{}", d.create);
        assert!(
            d.create
                .ends_with("\n) ENGINE=InnoDB /* (,) */ PARTITION BY HASH (`a`)")
        );
        assert_eq!(
            d.index_statements("t,(x"),
            vec![
                "ALTER TABLE `t,(x` ADD KEY `late` (`b`), ADD FULLTEXT KEY `f1` (`b`)".to_owned(),
                "ALTER TABLE `t,(x` ADD FULLTEXT KEY `f2` (`b`)".to_owned(),
            ]
        );
        assert_eq!(
            d.foreign_key_statement("t,(x").as_deref(),
            Some(
                "ALTER TABLE `t,(x` ADD CONSTRAINT `fk``1` FOREIGN KEY (`c``d`) REFERENCES `p` \
                 (`id`) ON DELETE CASCADE"
            )
        );
    }

    #[test]
    fn unique_keys_stay_without_a_primary_key_and_hash_uniques_stay() {
        let sql = "CREATE TABLE `t` (\n  `a` int(11) NOT NULL,\n  `b` blob DEFAULT NULL,\n  \
            UNIQUE KEY `ua` (`a`),\n  UNIQUE KEY `ub` (`b`) USING HASH,\n  KEY `k` (`a`)\n) \
            ENGINE=InnoDB";
        let stats = [
            stat("ua", false, 1, "a", "BTREE"),
            stat("ub", false, 1, "b", "HASH"),
            stat("k", true, 1, "a", "BTREE"),
        ];
        let facts = TableFacts {
            stats: stats.iter().collect(),
            ..TableFacts::default()
        };
        let d = plan(sql, &facts).expect("deferred");
        assert_eq!(d.indexes.len(), 1);
        assert_eq!(d.indexes[0].name, "k");
        assert!(d.create.contains("USING HASH\n) ENGINE"), "{}", d.create);
    }

    #[test]
    fn nothing_to_defer() {
        let sql =
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB";
        let stats = [stat("PRIMARY", false, 1, "id", "BTREE")];
        let facts = TableFacts {
            stats: stats.iter().collect(),
            ..TableFacts::default()
        };
        assert_eq!(plan(sql, &facts), None);
        assert_eq!(split_definitions("CREATE TABLE `t` (`a` int"), None);
    }
}
