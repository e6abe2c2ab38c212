//! Reading a database's catalog: the schema objects (as `SHOW CREATE` prints them)
//! and, for every table, what its data stream holds.
//!
//! Schema streams are JSON lines: a [`SchemaHeader`], then one [`SchemaObject`] per
//! line in the order the restore creates them. Each object carries its SQL text and
//! the session settings it was created under (sql_mode, character set, time zone), so
//! the restore can recreate it as the source had it. JSON escapes newlines, so a
//! routine body can hold any text without a delimiter convention.

use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::conn::{number, opt_text, query_rows, query_string, text};
use crate::format::{Encoding, StreamColumn, quote_ident, quote_str};
use crate::keys::{self, DeferredKeys, StatRow, TableFacts};
use ops_core::{Error, ErrorKind, Result, TableFilter, TableRef};

/// The `format` value in every schema stream header.
pub(crate) const SCHEMA_FORMAT: &str = "dbops-mariadb-schema";
/// The schema stream version this code writes (and the newest it reads). Version 2
/// added the optional `deferred` field of table objects; version 1 streams are read
/// as tables without it.
pub(crate) const SCHEMA_VERSION: u32 = 2;
/// Name of the schema stream restored before the data.
pub(crate) const PRE_DATA: &str = "schema/pre-data";
/// Name of the schema stream restored after the data (triggers, events).
pub(crate) const POST_DATA: &str = "schema/post-data";
/// The `format` meta value of table data streams.
pub(crate) const DATA_FORMAT: &str = "dbops-mariadb-tsv-1";

/// First line of a schema stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SchemaHeader {
    pub format: String,
    pub version: u32,
    /// The source database.
    pub database: String,
    /// Its default character set and collation.
    pub charset: String,
    pub collation: String,
    pub server_version: String,
    /// The source server's global sql_mode, for the record.
    pub sql_mode: String,
}

/// What a schema object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ObjectKind {
    Table,
    Sequence,
    /// `DO SETVAL(...)`: a sequence's position.
    SequenceValue,
    Function,
    Procedure,
    View,
    Trigger,
    Event,
}

/// One schema object, as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SchemaObject {
    pub kind: ObjectKind,
    pub name: String,
    /// The table a trigger belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub character_set_client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation_connection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Tables (version 2): the keys the restore adds after the data, and the
    /// `CREATE TABLE` without them. `sql` stays the full statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<DeferredKeys>,
}

impl SchemaObject {
    fn new(kind: ObjectKind, name: &str, sql: String) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            table: None,
            sql,
            sql_mode: None,
            character_set_client: None,
            collation_connection: None,
            time_zone: None,
            deferred: None,
        }
    }
}

/// What the dump needs to know about one table's data.
#[derive(Debug, Clone)]
pub(crate) struct TablePlan {
    pub name: String,
    pub engine: String,
    /// System-versioned: dumped `FOR SYSTEM_TIME ALL` with its period columns.
    pub versioned: bool,
    pub columns: Vec<StreamColumn>,
    /// First primary key column when it is an integer (ranges can split the table).
    pub int_pk: Option<String>,
    pub bytes: u64,
}

/// Everything read from the catalog.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub header: SchemaHeader,
    pub pre: Vec<SchemaObject>,
    pub post: Vec<SchemaObject>,
    pub tables: Vec<TablePlan>,
    pub warnings: Vec<String>,
}

const TRANSACTIONAL_ENGINES: &[&str] = &["innodb", "xtradb", "rocksdb", "tokudb"];
const INT_TYPES: &[&str] = &["tinyint", "smallint", "mediumint", "int", "bigint"];

/// Reads the catalog of `db` over `conn` (inside the snapshot transaction).
/// `with_schema` false reads only what data streams need. Tables, views and sequences
/// that `filter` leaves out are skipped with their triggers; with table patterns,
/// routines and events are left out too (pg_dump's `-t` takes no functions). Tables
/// whose rows the filter leaves out are still listed: the caller drops their data.
///
/// # Errors
/// Database errors; [`ErrorKind::NotFound`] when a pattern of `filter` matches no table
/// or it leaves none.
pub(crate) async fn read(
    conn: &mut Conn,
    db: &str,
    server_version: &str,
    with_schema: bool,
    filter: &TableFilter,
) -> Result<Catalog> {
    let qdb = quote_str(db);
    let row = query_rows(
        conn,
        &format!(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME \
             FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {qdb}"
        ),
    )
    .await?;
    let Some(row) = row.first() else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("database '{db}' does not exist"),
        ));
    };
    let header = SchemaHeader {
        format: SCHEMA_FORMAT.into(),
        version: SCHEMA_VERSION,
        database: db.to_owned(),
        charset: text(row, 0)?,
        collation: text(row, 1)?,
        server_version: server_version.to_owned(),
        sql_mode: query_string(conn, "SELECT @@GLOBAL.sql_mode").await?,
    };

    // Columns of every table, in order.
    let mut columns: Vec<(String, String, String, bool, String)> = Vec::new();
    for r in query_rows(
        conn,
        &format!(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, IS_GENERATED, EXTRA \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {qdb} \
             ORDER BY TABLE_NAME, ORDINAL_POSITION"
        ),
    )
    .await?
    {
        columns.push((
            text(&r, 0)?,
            text(&r, 1)?,
            text(&r, 2)?,
            opt_text(&r, 3)?.is_some_and(|g| g.eq_ignore_ascii_case("ALWAYS")),
            opt_text(&r, 4)?.unwrap_or_default(),
        ));
    }
    let mut pk_first: Vec<(String, String)> = Vec::new();
    for r in query_rows(
        conn,
        &format!(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = {qdb} AND INDEX_NAME = 'PRIMARY' AND SEQ_IN_INDEX = 1"
        ),
    )
    .await?
    {
        pk_first.push((text(&r, 0)?, text(&r, 1)?));
    }

    // Index structure and foreign key names, for the keys a restore adds after the data.
    let mut stats: Vec<(String, StatRow)> = Vec::new();
    let mut foreign_keys: Vec<(String, String)> = Vec::new();
    if with_schema {
        for r in query_rows(
            conn,
            &format!(
                "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, INDEX_TYPE \
                 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = {qdb} \
                 ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
            ),
        )
        .await?
        {
            stats.push((
                text(&r, 0)?,
                StatRow {
                    index: text(&r, 1)?,
                    non_unique: number(&r, 2)? != 0,
                    seq: u32::try_from(number(&r, 3)?).unwrap_or(u32::MAX),
                    column: opt_text(&r, 4)?,
                    index_type: opt_text(&r, 5)?.unwrap_or_default(),
                },
            ));
        }
        for r in query_rows(
            conn,
            &format!(
                "SELECT TABLE_NAME, CONSTRAINT_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = {qdb}"
            ),
        )
        .await?
        {
            foreign_keys.push((text(&r, 0)?, text(&r, 1)?));
        }
    }

    let mut pre = Vec::new();
    let mut post = Vec::new();
    let mut tables = Vec::new();
    let mut warnings = Vec::new();
    let mut views = Vec::new();
    let mut sequences = Vec::new();
    let relations = query_rows(
        conn,
        &format!(
            "SELECT TABLE_NAME, TABLE_TYPE, COALESCE(ENGINE, ''), COALESCE(DATA_LENGTH, 0) \
             FROM information_schema.TABLES WHERE TABLE_SCHEMA = {qdb} ORDER BY TABLE_NAME"
        ),
    )
    .await?;
    let mut base_tables = Vec::new();
    for r in &relations {
        if matches!(text(r, 1)?.as_str(), "BASE TABLE" | "SYSTEM VERSIONED") {
            base_tables.push(TableRef::new(db, text(r, 0)?));
        }
    }
    filter.check_selection(&base_tables)?;
    for r in relations {
        let name = text(&r, 0)?;
        let kind = text(&r, 1)?;
        let engine = text(&r, 2)?;
        let table = TableRef::new(db, &name);
        if !filter.matches_table(&table) {
            continue;
        }
        match kind.as_str() {
            "VIEW" => views.push(name),
            "SEQUENCE" => sequences.push(name),
            "BASE TABLE" | "SYSTEM VERSIONED" => {
                let create = show_create(conn, "TABLE", &name, 1).await?;
                let versioned = kind == "SYSTEM VERSIONED";
                let period = if versioned {
                    period_columns(&create)
                } else {
                    None
                };
                let mut cols = Vec::new();
                for (t, c, data_type, generated, extra) in &columns {
                    if *t != name {
                        continue;
                    }
                    let is_period = period.as_ref().is_some_and(|(s, e)| s == c || e == c);
                    let row_period = extra.to_ascii_uppercase().contains("ROW ");
                    if (*generated || row_period) && !is_period {
                        continue;
                    }
                    cols.push(StreamColumn {
                        name: c.clone(),
                        encoding: Encoding::for_type(data_type),
                    });
                }
                if versioned && period.is_none() {
                    for c in ["row_start", "row_end"] {
                        cols.push(StreamColumn {
                            name: c.into(),
                            encoding: Encoding::Text,
                        });
                    }
                }
                let int_pk = pk_first
                    .iter()
                    .find(|(t, _)| *t == name)
                    .and_then(|(_, c)| {
                        columns
                            .iter()
                            .find(|(t, cn, ty, _, _)| {
                                *t == name && cn == c && INT_TYPES.contains(&ty.as_str())
                            })
                            .map(|_| c.clone())
                    });
                if filter.keeps_data(&table)
                    && !TRANSACTIONAL_ENGINES.contains(&engine.to_ascii_lowercase().as_str())
                {
                    warnings.push(format!(
                        "table {db}.{name} uses the {engine} engine, which is not transactional: \
                         its data is not snapshot-consistent with the rest of the dump"
                    ));
                }
                if with_schema {
                    let mut o = SchemaObject::new(ObjectKind::Table, &name, create);
                    // InnoDB only (other engines copy the table to add a key), and not
                    // system-versioned tables (ALTER TABLE on them has its own rules).
                    if engine.eq_ignore_ascii_case("InnoDB") && !versioned {
                        let facts = TableFacts {
                            stats: stats
                                .iter()
                                .filter(|(t, _)| *t == name)
                                .map(|(_, s)| s)
                                .collect(),
                            foreign_keys: foreign_keys
                                .iter()
                                .filter(|(t, _)| *t == name)
                                .map(|(_, f)| f.as_str())
                                .collect(),
                            auto_increment: columns
                                .iter()
                                .find(|(t, _, _, _, extra)| {
                                    *t == name
                                        && extra.to_ascii_lowercase().contains("auto_increment")
                                })
                                .map(|(_, c, _, _, _)| c.as_str()),
                        };
                        o.deferred = keys::plan(&o.sql, &facts);
                    }
                    pre.push(o);
                }
                tables.push(TablePlan {
                    name,
                    engine,
                    versioned,
                    columns: cols,
                    int_pk,
                    bytes: number(&r, 3)?,
                });
            }
            _ => {}
        }
    }
    if !with_schema {
        return Ok(Catalog {
            header,
            pre,
            post,
            tables,
            warnings,
        });
    }

    for name in &sequences {
        let create = show_create(conn, "SEQUENCE", name, 1).await?;
        pre.push(SchemaObject::new(ObjectKind::Sequence, name, create));
        let next = query_string(
            conn,
            &format!("SELECT next_not_cached_value FROM {}", quote_ident(name)),
        )
        .await?;
        pre.push(SchemaObject::new(
            ObjectKind::SequenceValue,
            name,
            format!("DO SETVAL({}, {next}, 0)", quote_ident(name)),
        ));
    }

    // With table patterns only the matching relations are taken (pg_dump's `-t`).
    let whole = filter.tables.is_empty();
    let routines = if whole {
        query_rows(
            conn,
            &format!(
                "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES \
                 WHERE ROUTINE_SCHEMA = {qdb} ORDER BY ROUTINE_TYPE, ROUTINE_NAME"
            ),
        )
        .await?
    } else {
        Vec::new()
    };
    for r in routines {
        let name = text(&r, 0)?;
        let (kind, what) = match text(&r, 1)?.as_str() {
            "FUNCTION" => (ObjectKind::Function, "FUNCTION"),
            "PROCEDURE" => (ObjectKind::Procedure, "PROCEDURE"),
            other => {
                warnings.push(format!(
                    "{other} {db}.{name} is not dumped: dbops does not handle Oracle-mode packages"
                ));
                continue;
            }
        };
        let rows = show(conn, what, &name).await?;
        let row = first(&rows, what, &name)?;
        let Some(sql) = opt_text(row, 2)? else {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot read the body of {what} {db}.{name}: the dump user needs SELECT on \
                     mysql.proc (or to be its definer)"
                ),
            ));
        };
        let mut o = SchemaObject::new(kind, &name, sql);
        o.sql_mode = opt_text(row, 1)?;
        o.character_set_client = opt_text(row, 3)?;
        o.collation_connection = opt_text(row, 4)?;
        pre.push(o);
    }

    for name in &views {
        let rows = show(conn, "VIEW", name).await?;
        let row = first(&rows, "VIEW", name)?;
        let mut o = SchemaObject::new(ObjectKind::View, name, text(row, 1)?);
        o.character_set_client = opt_text(row, 2)?;
        o.collation_connection = opt_text(row, 3)?;
        pre.push(o);
    }

    for r in query_rows(
        conn,
        &format!(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = {qdb} \
             ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER"
        ),
    )
    .await?
    {
        let name = text(&r, 0)?;
        if !filter.matches_table(&TableRef::new(db, text(&r, 1)?)) {
            continue;
        }
        let rows = show(conn, "TRIGGER", &name).await?;
        let row = first(&rows, "TRIGGER", &name)?;
        let mut o = SchemaObject::new(ObjectKind::Trigger, &name, text(row, 2)?);
        o.table = Some(text(&r, 1)?);
        o.sql_mode = opt_text(row, 1)?;
        o.character_set_client = opt_text(row, 3)?;
        o.collation_connection = opt_text(row, 4)?;
        post.push(o);
    }

    let events = if whole {
        query_rows(
            conn,
            &format!(
                "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {qdb} \
                 ORDER BY EVENT_NAME"
            ),
        )
        .await?
    } else {
        Vec::new()
    };
    for r in events {
        let name = text(&r, 0)?;
        let rows = show(conn, "EVENT", &name).await?;
        let row = first(&rows, "EVENT", &name)?;
        let mut o = SchemaObject::new(ObjectKind::Event, &name, text(row, 3)?);
        o.sql_mode = opt_text(row, 1)?;
        o.time_zone = opt_text(row, 2)?;
        o.character_set_client = opt_text(row, 4)?;
        o.collation_connection = opt_text(row, 5)?;
        post.push(o);
    }

    Ok(Catalog {
        header,
        pre,
        post,
        tables,
        warnings,
    })
}

async fn show(conn: &mut Conn, what: &str, name: &str) -> Result<Vec<mysql_async::Row>> {
    query_rows(conn, &format!("SHOW CREATE {what} {}", quote_ident(name)))
        .await
        .map_err(|e| {
            e.during(format!(
                "reading the definition of {} {name}",
                what.to_lowercase()
            ))
        })
}

fn first<'a>(rows: &'a [mysql_async::Row], what: &str, name: &str) -> Result<&'a mysql_async::Row> {
    rows.first().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "{} {name} disappeared while it was dumped",
                what.to_lowercase()
            ),
        )
    })
}

async fn show_create(conn: &mut Conn, what: &str, name: &str, column: usize) -> Result<String> {
    let rows = show(conn, what, name).await?;
    text(first(&rows, what, name)?, column)
}

/// The explicit `PERIOD FOR SYSTEM_TIME (start, end)` columns of a CREATE TABLE.
fn period_columns(create: &str) -> Option<(String, String)> {
    let pos = create.find("PERIOD FOR SYSTEM_TIME (")?;
    let rest = &create[pos + "PERIOD FOR SYSTEM_TIME (".len()..];
    let (a, rest) = parse_quoted(rest)?;
    let rest = rest.trim_start().strip_prefix(',')?.trim_start();
    let (b, _) = parse_quoted(rest)?;
    Some((a, b))
}

/// A backtick-quoted identifier at the start of `s`, and the rest.
pub(crate) fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    if chars.next()?.1 != '`' {
        return None;
    }
    let mut out = String::new();
    let mut prev_tick = false;
    for (i, c) in chars {
        if prev_tick {
            if c == '`' {
                out.push('`');
                prev_tick = false;
                continue;
            }
            return Some((out, &s[i..]));
        }
        if c == '`' {
            prev_tick = true;
        } else {
            out.push(c);
        }
    }
    prev_tick.then_some((out, ""))
}

/// Serialises a header and objects into schema stream bytes.
pub(crate) fn to_jsonl(header: &SchemaHeader, objects: &[SchemaObject]) -> Result<Vec<u8>> {
    fn line<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(&mut *out, value)
            .map_err(|e| Error::internal(format!("serialising the schema: {e}")))?;
        out.push(b'\n');
        Ok(())
    }
    let mut out = Vec::new();
    line(header, &mut out)?;
    for o in objects {
        line(o, &mut out)?;
    }
    Ok(out)
}

/// Parses schema stream bytes.
///
/// # Errors
/// [`ErrorKind::UnsupportedFormat`] for another format or a newer version;
/// [`ErrorKind::Corrupt`] for lines that do not parse.
pub(crate) fn from_jsonl(data: &[u8], stream: &str) -> Result<(SchemaHeader, Vec<SchemaObject>)> {
    let mut lines = data.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let head = lines
        .next()
        .ok_or_else(|| Error::corrupt(format!("schema stream '{stream}' is empty")))?;
    let header: SchemaHeader = serde_json::from_slice(head).map_err(|e| {
        Error::corrupt(format!("schema stream '{stream}' has no valid header: {e}"))
    })?;
    if header.format != SCHEMA_FORMAT || header.version > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorKind::UnsupportedFormat,
            format!(
                "schema stream '{stream}' is {} version {}; this dbops reads {SCHEMA_FORMAT} \
                 up to version {SCHEMA_VERSION}: use a newer dbops",
                header.format, header.version
            ),
        ));
    }
    let objects = lines
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_slice(l).map_err(|e| {
                Error::corrupt(format!("schema stream '{stream}' line {}: {e}", i + 2))
            })
        })
        .collect::<Result<Vec<SchemaObject>>>()?;
    Ok((header, objects))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_period_columns() {
        let sql = "CREATE TABLE `t` (\n  `rs` timestamp(6) GENERATED ALWAYS AS ROW START,\n  \
                   `r``e` timestamp(6) GENERATED ALWAYS AS ROW END,\n  \
                   PERIOD FOR SYSTEM_TIME (`rs`, `r``e`)\n) WITH SYSTEM VERSIONING";
        assert_eq!(period_columns(sql), Some(("rs".into(), "r`e".into())));
        assert_eq!(
            period_columns("CREATE TABLE `t` (`a` int) WITH SYSTEM VERSIONING"),
            None
        );
    }

    #[test]
    fn schema_lines_round_trip_and_refuse_newer_versions() {
        let header = SchemaHeader {
            format: SCHEMA_FORMAT.into(),
            version: SCHEMA_VERSION,
            database: "d".into(),
            charset: "utf8mb4".into(),
            collation: "utf8mb4_general_ci".into(),
            server_version: "10.11".into(),
            sql_mode: String::new(),
        };
        let mut o = SchemaObject::new(
            ObjectKind::Procedure,
            "p",
            "CREATE PROCEDURE p()\nBEGIN\nSELECT 1;\nEND".into(),
        );
        o.sql_mode = Some("STRICT_ALL_TABLES".into());
        let bytes = to_jsonl(&header, std::slice::from_ref(&o)).expect("serialises");
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 2);
        let (h, objs) = from_jsonl(&bytes, "s").expect("parses");
        assert_eq!(h, header);
        assert_eq!(objs, vec![o]);
        let mut newer = header.clone();
        newer.version = SCHEMA_VERSION + 1;
        let bytes = to_jsonl(&newer, &[]).expect("serialises");
        let err = from_jsonl(&bytes, "s").expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::UnsupportedFormat);
    }
}
