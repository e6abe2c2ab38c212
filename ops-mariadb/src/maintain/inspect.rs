//! The read-only reports of [`Inspect`] on MariaDB: sizes and free space from
//! `information_schema.TABLES`, indexes from `information_schema.STATISTICS` and
//! performance_schema, sessions and locks (see `sessions`), top statements from
//! performance_schema digests. MariaDB has no vacuum: that report is refused with
//! what to use instead.

use std::collections::BTreeMap;

use mysql_async::Conn;
use ops_core::chrono::{Duration as ChronoDuration, Utc};
use ops_core::maintain::{
    ActivityReport, Bloat, BloatReport, Confidence, IndexIssue, IndexReport, Inspect,
    InspectOptions, Inspection, ObjectKind, QueryReport, SessionKind, SizeReport, StatementStats,
    TableSize, lock_trees,
};
use ops_core::{Error, ErrorKind, Result};

use super::{close, code, connect, database, error_code, grantee, split_name};
use crate::MariaDbEngine;
use crate::conn;
use crate::format::quote_str;

/// Runs one report.
pub(crate) async fn inspect(
    engine: &MariaDbEngine,
    what: Inspect,
    options: &InspectOptions,
) -> Result<Inspection> {
    if what == Inspect::Vacuum {
        return Err(Error::invalid(
            "vacuum is a PostgreSQL notion: MariaDB has no dead rows to vacuum; use the `bloat` \
             report (information_schema.TABLES.DATA_FREE) to find free space and the `optimize` \
             action to give it back",
        ));
    }
    let db = database(engine).to_owned();
    let mut c = connect(engine, "").await?;
    let report = match what {
        Inspect::Sizes => sizes(&mut c, &db, options).await.map(Inspection::Sizes),
        Inspect::Bloat => bloat(&mut c, &db, options).await.map(Inspection::Bloat),
        Inspect::Indexes => indexes(&mut c, engine, &db, options)
            .await
            .map(Inspection::Indexes),
        Inspect::Activity => activity(&mut c, engine, options)
            .await
            .map(Inspection::Activity),
        Inspect::Locks => super::sessions::load(&mut c, engine)
            .await
            .map(|all| Inspection::Locks(lock_trees(&all))),
        Inspect::Queries => queries(&mut c, engine, options)
            .await
            .map(Inspection::Queries),
        other => Err(Error::invalid(format!(
            "the {other} report is not available on MariaDB"
        ))),
    };
    close(c).await;
    report
}

/// The `WHERE` condition choosing the tables of `options` (or every table of `db`).
fn table_filter(db: &str, options: &InspectOptions) -> Result<String> {
    if options.tables.is_empty() {
        if db.is_empty() {
            return Err(Error::invalid(
                "the URL names no database: add it as the path (mariadb://host/dbname) or name \
                 the tables as database.name",
            ));
        }
        return Ok(format!("TABLE_SCHEMA = {}", quote_str(db)));
    }
    let mut any = Vec::new();
    for t in &options.tables {
        let (schema, name) = split_name(t, db)?;
        any.push(format!(
            "(TABLE_SCHEMA = {} AND TABLE_NAME = {})",
            quote_str(&schema),
            quote_str(&name)
        ));
    }
    Ok(format!("({})", any.join(" OR ")))
}

/// One row of `information_schema.TABLES`.
struct TableRow {
    schema: String,
    name: String,
    engine: Option<String>,
    data: u64,
    index: u64,
    free: u64,
    rows: Option<u64>,
}

async fn table_rows(c: &mut Conn, db: &str, options: &InspectOptions) -> Result<Vec<TableRow>> {
    // MySQL 8 caches these figures (information_schema_stats_expiry, 1 day by
    // default); 0 reads them fresh. MariaDB has no such cache.
    if let Err(e) = conn::exec(c, "SET SESSION information_schema_stats_expiry = 0").await
        && error_code(&e) != Some(code::UNKNOWN_SYSTEM_VARIABLE)
    {
        return Err(e);
    }
    let sql = format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, COALESCE(DATA_LENGTH, 0), \
         COALESCE(INDEX_LENGTH, 0), COALESCE(DATA_FREE, 0), TABLE_ROWS \
         FROM information_schema.TABLES \
         WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') AND {} \
         ORDER BY TABLE_SCHEMA, TABLE_NAME",
        table_filter(db, options)?
    );
    let rows = conn::query_rows(c, &sql)
        .await
        .map_err(|e| e.during("reading information_schema.TABLES"))?;
    rows.iter()
        .map(|r| {
            Ok(TableRow {
                schema: conn::text(r, 0)?,
                name: conn::text(r, 1)?,
                engine: conn::opt_text(r, 2)?,
                data: conn::number(r, 3)?,
                index: conn::number(r, 4)?,
                free: conn::number(r, 5)?,
                rows: conn::opt_text(r, 6)?.and_then(|v| v.trim().parse().ok()),
            })
        })
        .collect()
}

fn is_innodb(engine: Option<&str>) -> bool {
    engine.is_some_and(|e| e.eq_ignore_ascii_case("InnoDB"))
}

async fn sizes(c: &mut Conn, db: &str, options: &InspectOptions) -> Result<SizeReport> {
    let rows = table_rows(c, db, options).await?;
    let mut report = SizeReport {
        database: db.to_owned(),
        database_bytes: rows.iter().map(|t| t.data + t.index).sum(),
        ..SizeReport::default()
    };
    let mut tables = Vec::with_capacity(rows.len());
    for t in rows {
        let rows_method = match (t.engine.as_deref(), t.rows) {
            (_, None) => "no estimate (the table could not be opened)".to_owned(),
            (e, Some(_)) if is_innodb(e) => {
                "information_schema.TABLES.TABLE_ROWS: InnoDB's estimate from sampled pages \
                 (can be off by 40 % or more; ANALYZE TABLE refreshes it)"
                    .to_owned()
            }
            (Some(e), Some(_)) if ["MyISAM", "Aria"].iter().any(|x| x.eq_ignore_ascii_case(e)) => {
                format!("information_schema.TABLES.TABLE_ROWS: exact ({e} counts its rows)")
            }
            (e, Some(_)) => format!(
                "information_schema.TABLES.TABLE_ROWS ({} engine's figure)",
                e.unwrap_or("the")
            ),
        };
        tables.push(TableSize {
            schema: t.schema,
            name: t.name,
            heap_bytes: t.data,
            index_bytes: t.index,
            toast_bytes: None,
            total_bytes: t.data + t.index,
            rows: t.rows,
            rows_method,
        });
    }
    tables.sort_by(|a, b| b.total_bytes.cmp(&a.total_bytes).then(a.name.cmp(&b.name)));
    if tables.len() > options.limit {
        report.notes.push(format!(
            "showing the {} largest of {} tables; the database size counts them all",
            options.limit,
            tables.len()
        ));
        tables.truncate(options.limit);
    }
    report.tables = tables;
    report.notes.push(
        "sizes are information_schema.TABLES DATA_LENGTH (heap) and INDEX_LENGTH; for InnoDB \
         they are page counts from the statistics, refreshed by ANALYZE TABLE; free space \
         inside the files is in the bloat report (DATA_FREE)"
            .to_owned(),
    );
    Ok(report)
}

async fn bloat(c: &mut Conn, db: &str, options: &InspectOptions) -> Result<BloatReport> {
    let rows = table_rows(c, db, options).await?;
    let file_per_table = conn::query_rows(c, "SELECT @@GLOBAL.innodb_file_per_table")
        .await
        .ok()
        .and_then(|r| r.first().and_then(|r| conn::number(r, 0).ok()))
        .map(|v| v == 1);
    let mut report = BloatReport::default();
    let mut objects = Vec::with_capacity(rows.len());
    for t in rows {
        let size = t.data + t.index + t.free;
        let innodb = is_innodb(t.engine.as_deref());
        let note = if innodb && file_per_table != Some(true) {
            Some(
                "InnoDB in a shared tablespace (innodb_file_per_table is OFF): DATA_FREE is \
                 the free space of the whole tablespace, not this table's, and OPTIMIZE cannot \
                 give it back to the file system"
                    .to_owned(),
            )
        } else if innodb {
            Some(
                "InnoDB, file per table: DATA_FREE is the free space of the table's own file \
                 (whole free extents; free space inside partly used pages is not counted)"
                    .to_owned(),
            )
        } else {
            None
        };
        objects.push(Bloat {
            schema: t.schema,
            name: t.name,
            kind: ObjectKind::Table,
            table: None,
            size_bytes: size,
            wasted_bytes: Some(t.free),
            wasted_percent: Some(if size == 0 {
                0.0
            } else {
                t.free as f64 * 100.0 / size as f64
            }),
            method: "information_schema.TABLES.DATA_FREE".to_owned(),
            confidence: Confidence::Approximate,
            note,
        });
    }
    objects.sort_by(|a, b| {
        b.wasted_bytes
            .cmp(&a.wasted_bytes)
            .then(a.name.cmp(&b.name))
    });
    objects.truncate(options.limit);
    report.objects = objects;
    report.notes.push(
        "index bloat is not measurable on MariaDB (no per-index free-space figure); OPTIMIZE \
         TABLE rebuilds a table with its indexes"
            .to_owned(),
    );
    if file_per_table == Some(false) {
        report.notes.push(
            "innodb_file_per_table is OFF: InnoDB tables share the system tablespace, whose \
             free space every one of them reports"
                .to_owned(),
        );
    }
    Ok(report)
}

/// One index, its columns in order.
#[derive(Debug, Clone)]
struct IndexDef {
    schema: String,
    table: String,
    name: String,
    unique: bool,
    kind: String,
    /// Column and prefix length.
    columns: Vec<(String, Option<u64>)>,
}

impl IndexDef {
    fn definition(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|(c, p)| match p {
                Some(n) => format!("`{c}`({n})"),
                None => format!("`{c}`"),
            })
            .collect();
        let unique = if self.name == "PRIMARY" {
            "PRIMARY KEY".to_owned()
        } else if self.unique {
            format!("UNIQUE KEY `{}`", self.name)
        } else {
            format!("KEY `{}`", self.name)
        };
        format!("{unique} ({}) USING {}", cols.join(", "), self.kind)
    }
}

/// `b` makes `a` redundant: the same kind, and `a`'s columns a leading part of `b`'s
/// (equal prefixes), `a` not enforcing something `b` does not (a unique `a` is
/// redundant only when its columns are exactly `b`'s and `b` is unique too).
fn redundant(a: &IndexDef, b: &IndexDef) -> bool {
    if a.kind != b.kind || a.name == b.name || a.name == "PRIMARY" {
        return false;
    }
    if a.columns.len() > b.columns.len() || b.columns[..a.columns.len()] != a.columns[..] {
        return false;
    }
    let same = a.columns.len() == b.columns.len();
    if a.unique {
        return same && b.unique;
    }
    // FULLTEXT and SPATIAL indexes only count when identical.
    same || a.kind == "BTREE" || a.kind == "HASH"
}

async fn indexes(
    c: &mut Conn,
    engine: &MariaDbEngine,
    db: &str,
    options: &InspectOptions,
) -> Result<IndexReport> {
    let filter = table_filter(db, options)?;
    let rows = conn::query_rows(
        c,
        &format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART, \
             INDEX_TYPE FROM information_schema.STATISTICS WHERE {filter} \
             ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        ),
    )
    .await
    .map_err(|e| e.during("reading information_schema.STATISTICS"))?;
    let mut defs: Vec<IndexDef> = Vec::new();
    for r in &rows {
        let schema = conn::text(r, 0)?;
        let table = conn::text(r, 1)?;
        let name = conn::text(r, 2)?;
        let column = conn::opt_text(r, 4)?.unwrap_or_else(|| "(expression)".to_owned());
        let prefix = conn::opt_text(r, 5)?.and_then(|p| p.trim().parse().ok());
        match defs.last_mut() {
            Some(d) if d.schema == schema && d.table == table && d.name == name => {
                d.columns.push((column, prefix));
            }
            _ => defs.push(IndexDef {
                schema,
                table,
                name,
                unique: conn::number(r, 3)? == 0,
                kind: conn::opt_text(r, 6)?.unwrap_or_default(),
                columns: vec![(column, prefix)],
            }),
        }
    }
    let mut report = IndexReport::default();
    // Index sizes: InnoDB's persistent statistics (pages), where the account may read
    // them.
    let mut sizes: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    match conn::query_rows(
        c,
        &format!(
            "SELECT database_name, table_name, index_name, stat_value * @@innodb_page_size \
             FROM mysql.innodb_index_stats WHERE stat_name = 'size' AND {}",
            filter
                .replace("TABLE_SCHEMA", "database_name")
                .replace("TABLE_NAME", "table_name")
        ),
    )
    .await
    {
        Ok(rows) => {
            for r in &rows {
                sizes.insert(
                    (conn::text(r, 0)?, conn::text(r, 1)?, conn::text(r, 2)?),
                    conn::number(r, 3)?,
                );
            }
        }
        Err(e) => report.notes.push(format!(
            "index sizes are unknown (shown as 0): reading mysql.innodb_index_stats failed \
             ({e}); GRANT SELECT ON mysql.innodb_index_stats TO {} to see them",
            grantee(engine)
        )),
    }
    let size_of = |d: &IndexDef| {
        sizes
            .get(&(d.schema.clone(), d.table.clone(), d.name.clone()))
            .copied()
            .unwrap_or(0)
    };

    // Duplicates and redundant prefixes, as sys.schema_redundant_indexes finds them.
    for a in &defs {
        let dominant = defs.iter().find(|b| {
            b.schema == a.schema
                && b.table == a.table
                && redundant(a, b)
                // Of two identical indexes report one: the later name, or the one that is
                // not unique / not the primary key.
                && (b.columns.len() > a.columns.len()
                    || b.name == "PRIMARY"
                    || (b.unique && !a.unique)
                    || (b.unique == a.unique && b.name < a.name))
        });
        if let Some(b) = dominant {
            let detail = if b.columns.len() == a.columns.len() {
                format!("duplicate of {} (same columns)", b.name)
            } else {
                format!(
                    "redundant: its columns are the leading columns of {} ({})",
                    b.name,
                    b.definition()
                )
            };
            report.duplicate.push(IndexIssue {
                schema: a.schema.clone(),
                table: a.table.clone(),
                index: a.name.clone(),
                size_bytes: size_of(a),
                scans: None,
                definition: Some(a.definition()),
                detail,
            });
        }
    }

    // Unused: performance_schema counts index use since the server started.
    let ps_on = performance_schema_on(c).await;
    if ps_on {
        let ps_filter = filter
            .replace("TABLE_SCHEMA", "OBJECT_SCHEMA")
            .replace("TABLE_NAME", "OBJECT_NAME");
        let rows = match conn::query_rows(
            c,
            &format!(
                "SELECT OBJECT_SCHEMA, OBJECT_NAME, INDEX_NAME, COUNT_STAR \
                 FROM performance_schema.table_io_waits_summary_by_index_usage \
                 WHERE INDEX_NAME IS NOT NULL AND INDEX_NAME <> 'PRIMARY' AND {ps_filter}"
            ),
        )
        .await
        {
            Ok(rows) => Some(rows),
            // A monitoring account (PROCESS, SLAVE MONITOR) may not read
            // performance_schema: the rest of the report stands, and the note says
            // that unused indexes were not looked for and how to allow it.
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                report.notes.push(format!(
                    "unused indexes NOT checked: this account may not read \
                     performance_schema ({}); GRANT SELECT ON performance_schema.* TO {}",
                    e.message(),
                    grantee(engine)
                ));
                None
            }
            Err(e) => return Err(e.during("reading performance_schema")),
        };
        let rows = rows.unwrap_or_default();
        let counted_any = !rows.is_empty();
        let mut counted: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for r in &rows {
            counted.insert(
                (conn::text(r, 0)?, conn::text(r, 1)?, conn::text(r, 2)?),
                conn::number(r, 3)?,
            );
        }
        for d in defs.iter().filter(|d| !d.unique && d.name != "PRIMARY") {
            let key = (d.schema.clone(), d.table.clone(), d.name.clone());
            if counted.get(&key) == Some(&0) {
                report.unused.push(IndexIssue {
                    schema: d.schema.clone(),
                    table: d.table.clone(),
                    index: d.name.clone(),
                    size_bytes: size_of(d),
                    scans: Some(0),
                    definition: Some(d.definition()),
                    detail: "never used since the server started (performance_schema \
                                 table_io_waits_summary_by_index_usage)"
                        .to_owned(),
                });
            }
        }
        if counted_any && let Some(up) = uptime(c).await {
            report.stats_since = Some(Utc::now() - ChronoDuration::seconds(up as i64));
        }
        report.notes.push(
            "unused means no read or write through the index since the server started; a \
             table not opened since then is not listed at all, and a short uptime proves \
             little"
                .to_owned(),
        );
    } else {
        report.notes.push(
            "index use is not counted: performance_schema is OFF. Set performance_schema=ON in \
             the server's configuration ([mariadbd] section) and restart to find unused \
             indexes"
                .to_owned(),
        );
    }
    report
        .unused
        .sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    report.unused.truncate(options.limit);
    report.duplicate.truncate(options.limit);
    report
        .notes
        .push("MariaDB has no invalid indexes: a failed ALTER TABLE leaves none behind".to_owned());
    Ok(report)
}

/// Whether performance_schema is on.
async fn performance_schema_on(c: &mut Conn) -> bool {
    conn::query_rows(c, "SELECT @@GLOBAL.performance_schema")
        .await
        .ok()
        .and_then(|r| r.first().and_then(|r| conn::number(r, 0).ok()))
        == Some(1)
}

/// Server uptime in seconds.
async fn uptime(c: &mut Conn) -> Option<u64> {
    let rows = conn::query_rows(c, "SHOW GLOBAL STATUS LIKE 'Uptime'")
        .await
        .ok()?;
    rows.first().and_then(|r| conn::number(r, 1).ok())
}

async fn activity(
    c: &mut Conn,
    engine: &MariaDbEngine,
    options: &InspectOptions,
) -> Result<ActivityReport> {
    let all = super::sessions::load(c, engine).await?;
    let mut report = ActivityReport::default();
    let long = options.longer_than.as_secs_f64();
    for s in all.iter().filter(|s| s.kind == SessionKind::Client) {
        *report.by_state.entry(s.state.clone()).or_default() += 1;
        *report
            .by_user
            .entry(s.user.clone().unwrap_or_else(|| "(none)".to_owned()))
            .or_default() += 1;
        *report
            .by_application
            .entry(
                s.application
                    .clone()
                    .unwrap_or_else(|| "(not given)".to_owned()),
            )
            .or_default() += 1;
        if s.query_seconds.is_some_and(|q| q >= long) {
            report.long_running.push(s.clone());
        }
        if s.state == "idle in transaction" {
            report.idle_in_transaction.push(s.clone());
        }
    }
    let key = |v: Option<f64>| v.unwrap_or(0.0);
    report
        .long_running
        .sort_by(|a, b| key(b.query_seconds).total_cmp(&key(a.query_seconds)));
    report
        .idle_in_transaction
        .sort_by(|a, b| key(b.transaction_seconds).total_cmp(&key(a.transaction_seconds)));
    report.long_running.truncate(options.limit);
    report.idle_in_transaction.truncate(options.limit);
    report.sessions = all;
    Ok(report)
}

async fn queries(
    c: &mut Conn,
    engine: &MariaDbEngine,
    options: &InspectOptions,
) -> Result<QueryReport> {
    let mut report = QueryReport {
        source: "performance_schema.events_statements_summary_by_digest (whole server, since \
                 the server started or the table was truncated)"
            .to_owned(),
        ..QueryReport::default()
    };
    if !performance_schema_on(c).await {
        report.available = false;
        report.message = Some(
            "performance_schema is OFF: set performance_schema=ON in the server's \
             configuration ([mariadbd] section) and restart the server; the statement \
             digests are then collected by default"
                .to_owned(),
        );
        return Ok(report);
    }
    // Timers are in picoseconds.
    let rows = conn::query_rows(
        c,
        &format!(
            "SELECT COALESCE(LEFT(DIGEST_TEXT, 1000), '(no digest)'), COUNT_STAR, \
             SUM_TIMER_WAIT / 1000000000, AVG_TIMER_WAIT / 1000000000, \
             SUM_ROWS_SENT + SUM_ROWS_AFFECTED \
             FROM performance_schema.events_statements_summary_by_digest \
             ORDER BY SUM_TIMER_WAIT DESC LIMIT {}",
            options.limit
        ),
    )
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            report.available = false;
            report.message = Some(format!(
                "this account may not read performance_schema ({}): GRANT SELECT ON \
                 performance_schema.* TO {}",
                e.message(),
                grantee(engine)
            ));
            return Ok(report);
        }
        Err(e) => return Err(e.during("reading performance_schema")),
    };
    report.available = true;
    for r in &rows {
        report.statements.push(StatementStats {
            query: conn::text(r, 0)?,
            calls: conn::number(r, 1)?,
            total_ms: super::float(r, 2)?.unwrap_or(0.0),
            mean_ms: super::float(r, 3)?.unwrap_or(0.0),
            rows: conn::number(r, 4)?,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(name: &str, unique: bool, cols: &[&str]) -> IndexDef {
        IndexDef {
            schema: "d".into(),
            table: "t".into(),
            name: name.into(),
            unique,
            kind: "BTREE".into(),
            columns: cols.iter().map(|c| ((*c).to_owned(), None)).collect(),
        }
    }

    #[test]
    fn redundancy_follows_sys_schema_redundant_indexes() {
        let a = idx("a", false, &["x"]);
        let ab = idx("ab", false, &["x", "y"]);
        let a2 = idx("a2", false, &["x"]);
        let ua = idx("ua", true, &["x"]);
        assert!(redundant(&a, &ab));
        assert!(!redundant(&ab, &a));
        assert!(redundant(&a, &a2) && redundant(&a2, &a));
        assert!(redundant(&a, &ua));
        assert!(!redundant(&ua, &ab), "a unique index enforces something");
        let pk = idx("PRIMARY", true, &["x"]);
        assert!(!redundant(&pk, &ua));
    }
}
