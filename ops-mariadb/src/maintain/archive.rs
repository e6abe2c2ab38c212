//! Archiving on MariaDB: rows of a source table matching a predicate move into an
//! archive table in primary-key batches, each batch one transaction (lock the batch's
//! keys with `SELECT ... FOR UPDATE`, copy them, delete them, compare the counts,
//! commit), so a killed run loses and duplicates nothing and the next run resumes.
//!
//! `NOW()` and friends are pinned per batch (`SET timestamp`) so that a time-based
//! predicate means the same in the copy and the delete.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use ops_core::maintain::{ArchiveReport, ArchiveSpec};
use ops_core::{Error, ErrorKind, Result};

use super::{
    close, code, column_text, connect, database, error_code, float, grantee, qualified, split_name,
};
use crate::MariaDbEngine;
use crate::conn;
use crate::error::db_error;
use crate::format::{quote_ident, quote_str};

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    name: String,
    column_type: String,
    generated: bool,
}

/// Moves rows; see `Maintenance::archive`.
pub(crate) async fn archive(engine: &MariaDbEngine, spec: &ArchiveSpec) -> Result<ArchiveReport> {
    let db = database(engine).to_owned();
    let mut c = connect(engine, &db).await?;
    let result = run(&mut c, engine, &db, spec).await;
    if result.is_err() {
        // A failed batch was rolled back already; this ends a transaction an error
        // left open.
        let _ = conn::exec(&mut c, "ROLLBACK").await;
    }
    close(c).await;
    result.map_err(|e| {
        if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::Unreachable) {
            let message = format!(
                "{}; the batch in flight is rolled back by the server and every committed \
                 batch stays moved: run the same archive again to resume",
                e.message()
            );
            e.with_message(message)
        } else {
            e
        }
    })
}

async fn columns(c: &mut Conn, db: &str, table: &str) -> Result<Vec<Column>> {
    let rows = conn::query_rows(
        c,
        &format!(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_GENERATED FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            quote_str(db),
            quote_str(table)
        ),
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Column {
                name: conn::text(r, 0)?,
                column_type: conn::text(r, 1)?.to_ascii_lowercase(),
                generated: conn::opt_text(r, 2)?.is_some_and(|g| g == "ALWAYS"),
            })
        })
        .collect()
}

/// The primary key's columns and their data types, in key order.
async fn primary_key(c: &mut Conn, db: &str, table: &str) -> Result<Vec<(String, String)>> {
    let rows = conn::query_rows(
        c,
        &format!(
            "SELECT s.COLUMN_NAME, c.DATA_TYPE FROM information_schema.STATISTICS s \
             JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = s.TABLE_SCHEMA \
               AND c.TABLE_NAME = s.TABLE_NAME AND c.COLUMN_NAME = s.COLUMN_NAME \
             WHERE s.TABLE_SCHEMA = {} AND s.TABLE_NAME = {} AND s.INDEX_NAME = 'PRIMARY' \
             ORDER BY s.SEQ_IN_INDEX",
            quote_str(db),
            quote_str(table)
        ),
    )
    .await?;
    rows.iter()
        .map(|r| Ok((conn::text(r, 0)?, conn::text(r, 1)?.to_ascii_lowercase())))
        .collect()
}

/// Whether `db.table` is a base table.
async fn exists(c: &mut Conn, db: &str, table: &str) -> Result<bool> {
    let rows = conn::query_rows(
        c,
        &format!(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} \
             AND TABLE_NAME = {} AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')",
            quote_str(db),
            quote_str(table)
        ),
    )
    .await?;
    Ok(!rows.is_empty())
}

/// `cols >= vals` (or `<=`) in key order, written out as ORs of equalities so that
/// the optimizer uses the primary key for it (MariaDB does not range-scan row
/// constructor comparisons).
fn key_bound(cols: &[String], vals: &[String], greater: bool, inclusive: bool) -> String {
    let (op, last) = match (greater, inclusive) {
        (true, true) => (">", ">="),
        (true, false) => (">", ">"),
        (false, true) => ("<", "<="),
        (false, false) => ("<", "<"),
    };
    let n = cols.len();
    let mut expr = format!("{} {last} {}", cols[n - 1], vals[n - 1]);
    for i in (0..n - 1).rev() {
        expr = format!(
            "({c} {op} {v} OR ({c} = {v} AND {expr}))",
            c = cols[i],
            v = vals[i]
        );
    }
    format!("({expr})")
}

/// A key value as an SQL literal; binary types as hex so that no character set
/// touches them.
fn literal(value: &Value, data_type: &str) -> String {
    match value {
        Value::Bytes(b)
            if matches!(
                data_type,
                "binary" | "varbinary" | "blob" | "tinyblob" | "mediumblob" | "longblob"
            ) =>
        {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("X'{hex}'")
        }
        // The session's sql_mode is '' (backslash escapes on).
        other => other.as_sql(false),
    }
}

/// The replication lag of this server (0 when it is not a replica; `None` when a
/// replication connection is stopped and no lag can be measured).
async fn replication_lag(c: &mut Conn, engine: &MariaDbEngine) -> Result<Option<f64>> {
    let rows = match conn::query_rows(c, "SHOW ALL SLAVES STATUS").await {
        Err(e) if error_code(&e) == Some(code::PARSE_ERROR) => {
            conn::query_rows(c, "SHOW SLAVE STATUS").await
        }
        other => other,
    }
    .map_err(|e| {
        if error_code(&e) == Some(code::SPECIFIC_ACCESS_DENIED) {
            Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "archiving watches the replication lag and needs the SLAVE MONITOR \
                     privilege: GRANT SLAVE MONITOR ON *.* TO {} ({e})",
                    grantee(engine)
                ),
            )
        } else {
            e.during("reading the replication status")
        }
    })?;
    let mut worst = 0.0f64;
    for r in &rows {
        match column_text(r, "Seconds_Behind_Master").and_then(|v| v.trim().parse::<f64>().ok()) {
            Some(s) => worst = worst.max(s),
            None => return Ok(None),
        }
    }
    Ok(Some(worst))
}

/// The oldest InnoDB transaction of another session: its age and connection.
async fn oldest_transaction(c: &mut Conn, engine: &MariaDbEngine) -> Result<Option<(f64, u64)>> {
    let rows = conn::query_rows(
        c,
        "SELECT TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6)) / 1000000, trx_mysql_thread_id \
         FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id <> CONNECTION_ID() \
         ORDER BY trx_started LIMIT 1",
    )
    .await
    .map_err(|e| {
        if error_code(&e) == Some(code::SPECIFIC_ACCESS_DENIED) {
            Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "archiving watches the age of open transactions and needs the PROCESS \
                     privilege: GRANT PROCESS ON *.* TO {}",
                    grantee(engine)
                ),
            )
        } else {
            e.during("reading information_schema.INNODB_TRX")
        }
    })?;
    match rows.first() {
        Some(r) => Ok(Some((float(r, 0)?.unwrap_or(0.0), conn::number(r, 1)?))),
        None => Ok(None),
    }
}

/// Waits while the limits of `spec` are exceeded; the seconds waited.
async fn throttle(c: &mut Conn, engine: &MariaDbEngine, spec: &ArchiveSpec) -> Result<f64> {
    let started = Instant::now();
    loop {
        let lag = replication_lag(c, engine).await?;
        let oldest = oldest_transaction(c, engine).await?;
        let mut why = Vec::new();
        if let Some(lag) = lag
            && lag > spec.max_replication_lag.as_secs_f64()
        {
            why.push(format!(
                "replication lag {lag:.0} s > {:.0} s",
                spec.max_replication_lag.as_secs_f64()
            ));
        }
        if let Some((age, id)) = oldest
            && age > spec.max_transaction_age.as_secs_f64()
        {
            why.push(format!(
                "connection {id} has had a transaction open for {age:.0} s (> {:.0} s)",
                spec.max_transaction_age.as_secs_f64()
            ));
        }
        if why.is_empty() {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() >= spec.max_wait {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "archiving paused for {:.0} s and gave up: {}; the rows moved so far are \
                     committed, run again when the server is quieter (or raise the limits)",
                    started.elapsed().as_secs_f64(),
                    why.join(", ")
                ),
            )
            .temporary());
        }
        tracing::info!("archiving waits: {}", why.join(", "));
        let left = spec.max_wait.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

async fn count(c: &mut Conn, from: &str, predicate: &str) -> Result<u64> {
    let rows = conn::query_rows(
        c,
        &format!("SELECT COUNT(*) FROM {from} WHERE ({predicate})"),
    )
    .await
    .map_err(|e| e.during("counting the rows that match the predicate"))?;
    match rows.first() {
        Some(r) => conn::number(r, 0),
        None => Err(Error::internal("COUNT(*) returned no row")),
    }
}

async fn run(
    c: &mut Conn,
    engine: &MariaDbEngine,
    db: &str,
    spec: &ArchiveSpec,
) -> Result<ArchiveReport> {
    let (src_db, src) = split_name(&spec.table, db)?;
    let (arch_db, arch) = split_name(&spec.into, db)?;
    if (src_db.as_str(), src.as_str()) == (arch_db.as_str(), arch.as_str()) {
        return Err(Error::invalid(
            "the archive table is the source table: name another table to move the rows into",
        ));
    }
    if spec.predicate.trim().is_empty() {
        return Err(Error::invalid(
            "no predicate: say which rows to archive (for example created_at < NOW() - \
             INTERVAL 2 YEAR); to move every row write TRUE",
        ));
    }
    let from = qualified(&src_db, &src);
    let into = qualified(&arch_db, &arch);
    if !exists(c, &src_db, &src).await? {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no table {src_db}.{src} to archive from"),
        ));
    }
    let pk = primary_key(c, &src_db, &src).await?;
    if pk.is_empty() {
        return Err(Error::invalid(format!(
            "{src_db}.{src} has no primary key: archiving moves rows in primary-key batches \
             so that a killed run can resume safely; add a primary key first"
        )));
    }
    let src_cols = columns(c, &src_db, &src).await?;
    let mut report = ArchiveReport {
        dry_run: spec.dry_run,
        ..ArchiveReport::default()
    };
    if exists(c, &arch_db, &arch).await? {
        let arch_cols = columns(c, &arch_db, &arch).await?;
        let shape = |cols: &[Column]| -> Vec<(String, String)> {
            cols.iter()
                .map(|c| (c.name.to_ascii_lowercase(), c.column_type.clone()))
                .collect()
        };
        if shape(&src_cols) != shape(&arch_cols) {
            let show = |cols: &[Column]| {
                cols.iter()
                    .map(|c| format!("{} {}", c.name, c.column_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the archive table {arch_db}.{arch} has other columns than {src_db}.{src}: \
                     archive ({}) vs source ({}); make them the same (or name a new archive \
                     table, which is created like the source)",
                    show(&arch_cols),
                    show(&src_cols)
                ),
            ));
        }
    } else if !spec.dry_run {
        conn::exec(c, &format!("CREATE TABLE {into} LIKE {from}"))
            .await
            .map_err(|e| e.during(format!("creating the archive table {arch_db}.{arch}")))?;
        // The AUTO_INCREMENT counter starts anew; harmless, since every row copied
        // brings its own key.
        report.created_archive = true;
    }

    if spec.dry_run {
        let matching = count(c, &from, &spec.predicate).await?;
        report.rows = spec.max_rows.map_or(matching, |m| m.min(matching));
        report.remaining = matching - report.rows;
        return Ok(report);
    }

    let key_cols: Vec<String> = pk.iter().map(|(n, _)| quote_ident(n)).collect();
    let key_list = key_cols.join(", ");
    let copy_cols = src_cols
        .iter()
        .filter(|c| !c.generated)
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let order = key_list.clone();
    let pred = &spec.predicate;
    // Rows below the last batch's upper key either moved or did not match when their
    // batch was taken; the next run looks at them again.
    let mut after: Option<Vec<String>> = None;
    conn::exec(c, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ").await?;
    loop {
        let allowed = match spec.max_rows {
            Some(m) => m.saturating_sub(report.rows),
            None => u64::MAX,
        };
        let n = spec.batch.max(1).min(allowed);
        if n == 0 {
            break;
        }
        if report.batches > 0 && !spec.pause.is_zero() {
            tokio::time::sleep(spec.pause).await;
        }
        report.throttled_seconds += throttle(c, engine, spec).await?;

        conn::exec(c, "SET timestamp = UNIX_TIMESTAMP(NOW(6))").await?;
        conn::exec(c, "START TRANSACTION").await?;
        let resume = after
            .as_ref()
            .map(|vals| format!(" AND {}", key_bound(&key_cols, vals, true, false)))
            .unwrap_or_default();
        let keys: Vec<Row> = c
            .query(format!(
                "SELECT {key_list} FROM {from} WHERE ({pred}){resume} ORDER BY {order} \
                 LIMIT {n} FOR UPDATE"
            ))
            .await
            .map_err(|e| db_error(e).during("finding the next batch's keys"))?;
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            conn::exec(c, "COMMIT").await?;
            conn::exec(c, "SET timestamp = DEFAULT").await?;
            break;
        };
        let lits = |row: &Row| -> Result<Vec<String>> {
            (0..pk.len())
                .map(|i| {
                    row.as_ref(i)
                        .map(|v| literal(v, &pk[i].1))
                        .ok_or_else(|| Error::internal("a key column is missing"))
                })
                .collect()
        };
        let lo = lits(first)?;
        let hi = lits(last)?;
        let range = format!(
            "{} AND {}",
            key_bound(&key_cols, &lo, true, true),
            key_bound(&key_cols, &hi, false, true)
        );
        c.query_drop(format!(
            "INSERT INTO {into} ({copy_cols}) SELECT {copy_cols} FROM {from} \
             WHERE {range} AND ({pred})"
        ))
        .await
        .map_err(|e| db_error(e).during("copying a batch into the archive table"))?;
        let copied = c.affected_rows();
        c.query_drop(format!("DELETE FROM {from} WHERE {range} AND ({pred})"))
            .await
            .map_err(|e| db_error(e).during("deleting an archived batch"))?;
        let deleted = c.affected_rows();
        let locked = keys.len() as u64;
        if copied != deleted || copied != locked {
            conn::exec(c, "ROLLBACK").await?;
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "a batch of {src_db}.{src} did not add up (locked {locked} keys, copied \
                     {copied} rows, deleted {deleted}); it was rolled back and nothing of it \
                     moved. Does the predicate depend on something that changes within a \
                     transaction (SYSDATE(), RAND(), another table)?"
                ),
            ));
        }
        conn::exec(c, "COMMIT").await?;
        conn::exec(c, "SET timestamp = DEFAULT").await?;
        report.rows += copied;
        report.batches += 1;
        after = Some(hi);
    }
    report.remaining = count(c, &from, pred).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_bounds_expand_in_key_order() {
        let cols = vec!["`a`".to_owned(), "`b`".to_owned()];
        let vals = vec!["1".to_owned(), "'x'".to_owned()];
        assert_eq!(
            key_bound(&cols, &vals, true, true),
            "((`a` > 1 OR (`a` = 1 AND `b` >= 'x')))"
        );
        assert_eq!(key_bound(&cols[..1], &vals[..1], false, true), "(`a` <= 1)");
        assert_eq!(literal(&Value::Bytes(vec![0, 255]), "varbinary"), "X'00ff'");
        assert_eq!(
            literal(&Value::Bytes(b"o'k".to_vec()), "varchar"),
            "'o\\'k'"
        );
    }
}
