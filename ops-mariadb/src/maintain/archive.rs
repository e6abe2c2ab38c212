//! Archiving on MariaDB: rows of a source table matching a predicate move into an
//! archive table in primary-key batches, each batch one transaction (lock the batch's
//! keys with `SELECT ... FOR UPDATE SKIP LOCKED`, copy exactly those rows, delete
//! them, compare the counts, commit), so a killed run loses and duplicates nothing
//! and the next run resumes.
//!
//! Both tables must be InnoDB: on MyISAM or Aria a batch is not a transaction, and a
//! failure between its copy and its delete would leave rows in both tables. A source
//! that other tables reference with `ON DELETE CASCADE` or `SET NULL` is refused:
//! deleting the archived rows would change those tables too.
//!
//! Gentle on the application: the session reads `READ COMMITTED` (no gap locks; the
//! copy reads without locking), a row the application holds is passed over (`SKIP
//! LOCKED`) and taken by a later pass, and every statement of a batch waits at most
//! [`BATCH_LOCK_WAIT_SECS`] for a lock (the server's default is 50 s for rows and a
//! year for metadata). A batch that waited that long or lost a deadlock is rolled
//! back and tried again a few times, then the run stops saying what waited; running
//! again resumes.
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

/// The storage engine of base table `db.table` (`Some("")` when the server cannot
/// tell: a damaged table), `None` when there is no such table.
async fn table_engine(c: &mut Conn, db: &str, table: &str) -> Result<Option<String>> {
    let rows = conn::query_rows(
        c,
        &format!(
            "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} \
             AND TABLE_NAME = {} AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')",
            quote_str(db),
            quote_str(table)
        ),
    )
    .await?;
    rows.first()
        .map(|r| Ok(conn::opt_text(r, 0)?.unwrap_or_default()))
        .transpose()
}

/// Refuses a table that is not InnoDB: without transactions a batch cannot copy and
/// delete its rows as one.
fn require_innodb(role: &str, db: &str, table: &str, engine: &str) -> Result<()> {
    if engine.eq_ignore_ascii_case("InnoDB") {
        return Ok(());
    }
    let engine = if engine.is_empty() {
        "an unknown storage engine (the server cannot open the table)".to_owned()
    } else {
        format!("the {engine} storage engine")
    };
    Err(Error::invalid(format!(
        "the {role} table {db}.{table} uses {engine}, which has no transactions: a batch \
         could not copy and delete its rows as one, and a failure between the two would \
         leave rows in both tables; archiving needs InnoDB for the source and the archive \
         table: convert it first with ALTER TABLE {} ENGINE=InnoDB",
        qualified(db, table)
    )))
}

/// Refuses a source that other tables reference with a foreign key whose `ON DELETE`
/// changes them (`CASCADE`, `SET NULL`, `SET DEFAULT`): deleting the archived rows
/// would delete or change those tables' rows too. `RESTRICT` and `NO ACTION` are
/// fine (a referenced row makes its batch fail, nothing changes silently).
///
/// `information_schema.REFERENTIAL_CONSTRAINTS` shows only the constraints of tables
/// this account may see, so InnoDB's own list (`INNODB_SYS_FOREIGN`, readable with
/// the `PROCESS` privilege archiving needs anyway) is read too.
async fn refuse_deleting_references(c: &mut Conn, db: &str, table: &str) -> Result<()> {
    let rows = conn::query_rows(
        c,
        &format!(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, DELETE_RULE \
             FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE UNIQUE_CONSTRAINT_SCHEMA = {} AND REFERENCED_TABLE_NAME = {} \
             AND DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT') \
             ORDER BY CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME",
            quote_str(db),
            quote_str(table)
        ),
    )
    .await
    .map_err(|e| e.during("reading the foreign keys that reference the source table"))?;
    // (InnoDB's id `db/constraint` in lower case, what to show)
    let mut found: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let (schema, child, name, rule) = (
            conn::text(r, 0)?,
            conn::text(r, 1)?,
            conn::text(r, 2)?,
            conn::text(r, 3)?,
        );
        found.push((
            format!("{schema}/{name}").to_ascii_lowercase(),
            format!("{name} of {schema}.{child} (ON DELETE {rule})"),
        ));
    }
    // Bits of INNODB_SYS_FOREIGN.TYPE: 1 ON DELETE CASCADE, 2 ON DELETE SET NULL.
    let innodb = conn::query_rows(
        c,
        &format!(
            "SELECT ID, FOR_NAME, TYPE & 1 FROM information_schema.INNODB_SYS_FOREIGN \
             WHERE REF_NAME = {} AND (TYPE & 3) <> 0 ORDER BY ID",
            quote_str(&format!("{db}/{table}"))
        ),
    )
    .await;
    match innodb {
        Ok(rows) => {
            for r in &rows {
                let id = conn::text(r, 0)?;
                if found.iter().any(|(k, _)| *k == id.to_ascii_lowercase()) {
                    continue;
                }
                let child = conn::text(r, 1)?.replacen('/', ".", 1);
                let name = id.split_once('/').map_or(id.as_str(), |(_, n)| n);
                let rule = if conn::number(r, 2)? == 1 {
                    "CASCADE"
                } else {
                    "SET NULL"
                };
                let text = format!("{name} of {child} (ON DELETE {rule})");
                found.push((id.to_ascii_lowercase(), text));
            }
        }
        Err(e) => tracing::debug!("INNODB_SYS_FOREIGN is not readable: {e}"),
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{db}.{table} is referenced by foreign keys that change other tables when its rows \
         are deleted: {}; archiving deletes the moved rows from {db}.{table}, so it would \
         silently delete or change those tables' rows too. Nothing was moved. Archive the \
         referencing rows first, or change those constraints to ON DELETE RESTRICT",
        found
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(", ")
    )))
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

/// How long each statement of a batch waits for a lock, row or metadata, in seconds
/// (`innodb_lock_wait_timeout`, `lock_wait_timeout`: whole seconds).
const BATCH_LOCK_WAIT_SECS: u64 = 2;
/// Tries of a batch that waited that long or lost a deadlock.
const BATCH_TRIES: u32 = 3;
/// The pause before a batch's second try; it doubles for each further one.
const BATCH_BACKOFF: Duration = Duration::from_millis(250);
/// How long the archiver sleeps while the only matching rows left are locked by
/// other sessions, before it looks again.
const LOCKED_ROWS_RETRY: Duration = Duration::from_millis(200);

/// What one batch works with.
struct Batches<'a> {
    /// Source and archive, quoted for SQL.
    from: String,
    into: String,
    /// Source and archive, for people.
    source: String,
    archive: String,
    pred: &'a str,
    /// The primary key's columns, quoted, and their data types.
    key_cols: Vec<String>,
    key_types: Vec<String>,
    /// The columns copied (not the generated ones).
    copy_cols: String,
    /// `FOR UPDATE SKIP LOCKED` (MariaDB 10.6+, MySQL 8), or plain `FOR UPDATE`.
    skip_locked: bool,
}

/// What a batch did.
enum Moved {
    /// Committed `rows`, the last of them with key `last`.
    Rows(u64, Vec<String>),
    /// Found no row to take.
    Nothing,
}

/// Where in a batch a statement failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Choose,
    Copy,
    Delete,
    /// The counts did not add up (the error says so itself).
    Compare,
    Commit,
}

/// A failed batch: the error, where, and the keys it had chosen.
struct BatchError {
    error: Error,
    stage: Stage,
    keys: Option<(Vec<String>, Vec<String>)>,
}

impl Batches<'_> {
    /// `cols` equal to one of `keys`: an IN list for a single-column key, else an OR
    /// of equalities (both use the primary key).
    fn keys_condition(&self, keys: &[Vec<String>]) -> String {
        if self.key_cols.len() == 1 {
            let list: Vec<&str> = keys.iter().map(|k| k[0].as_str()).collect();
            return format!("{} IN ({})", self.key_cols[0], list.join(", "));
        }
        let each: Vec<String> = keys
            .iter()
            .map(|k| {
                let eq: Vec<String> = self
                    .key_cols
                    .iter()
                    .zip(k)
                    .map(|(c, v)| format!("{c} = {v}"))
                    .collect();
                format!("({})", eq.join(" AND "))
            })
            .collect();
        format!("({})", each.join(" OR "))
    }

    /// One batch of at most `n` rows with a key above `after`, in one transaction.
    async fn one(
        &self,
        c: &mut Conn,
        after: Option<&[String]>,
        n: u64,
    ) -> Result<Moved, BatchError> {
        let fail = |stage: Stage, keys: Option<(Vec<String>, Vec<String>)>| {
            move |error: Error| BatchError { error, stage, keys }
        };
        conn::exec(c, "SET timestamp = UNIX_TIMESTAMP(NOW(6))")
            .await
            .map_err(fail(Stage::Choose, None))?;
        conn::exec(c, "START TRANSACTION")
            .await
            .map_err(fail(Stage::Choose, None))?;
        let resume = after
            .map(|vals| format!(" AND {}", key_bound(&self.key_cols, vals, true, false)))
            .unwrap_or_default();
        let skip = if self.skip_locked { " SKIP LOCKED" } else { "" };
        let key_list = self.key_cols.join(", ");
        let rows: Vec<Row> = c
            .query(format!(
                "SELECT {key_list} FROM {} WHERE ({}){resume} ORDER BY {key_list} \
                 LIMIT {n} FOR UPDATE{skip}",
                self.from, self.pred
            ))
            .await
            .map_err(|e| fail(Stage::Choose, None)(db_error(e)))?;
        let keys = rows
            .iter()
            .map(|row| {
                (0..self.key_cols.len())
                    .map(|i| {
                        row.as_ref(i)
                            .map(|v| literal(v, &self.key_types[i]))
                            .ok_or_else(|| Error::internal("a key column is missing"))
                    })
                    .collect::<Result<Vec<String>>>()
            })
            .collect::<Result<Vec<_>>>()
            .map_err(fail(Stage::Choose, None))?;
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            for sql in ["COMMIT", "SET timestamp = DEFAULT"] {
                conn::exec(c, sql)
                    .await
                    .map_err(fail(Stage::Commit, None))?;
            }
            return Ok(Moved::Nothing);
        };
        let span = Some((first.clone(), last.clone()));
        let which = self.keys_condition(&keys);
        c.query_drop(format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {} WHERE {which} AND ({})",
            self.into,
            self.from,
            self.pred,
            cols = self.copy_cols
        ))
        .await
        .map_err(|e| fail(Stage::Copy, span.clone())(db_error(e)))?;
        let copied = c.affected_rows();
        c.query_drop(format!(
            "DELETE FROM {} WHERE {which} AND ({})",
            self.from, self.pred
        ))
        .await
        .map_err(|e| fail(Stage::Delete, span.clone())(db_error(e)))?;
        let deleted = c.affected_rows();
        let locked = keys.len() as u64;
        if copied != deleted || copied != locked {
            conn::exec(c, "ROLLBACK")
                .await
                .map_err(fail(Stage::Commit, span.clone()))?;
            return Err(BatchError {
                error: Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "a batch of {} did not add up (locked {locked} keys, copied {copied} \
                         rows, deleted {deleted}); it was rolled back and nothing of it moved. \
                         Does the predicate depend on something that changes within a \
                         transaction (SYSDATE(), RAND(), another table), or does a trigger \
                         add or remove rows?",
                        self.source
                    ),
                ),
                stage: Stage::Compare,
                keys: span,
            });
        }
        conn::exec(c, "COMMIT")
            .await
            .map_err(fail(Stage::Commit, span.clone()))?;
        conn::exec(c, "SET timestamp = DEFAULT")
            .await
            .map_err(fail(Stage::Commit, span))?;
        Ok(Moved::Rows(copied, last.clone()))
    }

    /// [`Self::one`], tried again after a lock wait timeout or a deadlock (each try
    /// rolled back first) up to [`BATCH_TRIES`] times with a growing pause.
    async fn with_retries(
        &self,
        c: &mut Conn,
        after: Option<&[String]>,
        n: u64,
        moved_before: u64,
    ) -> Result<Moved> {
        let mut pause = BATCH_BACKOFF;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let failed = match self.one(c, after, n).await {
                Ok(moved) => return Ok(moved),
                Err(failed) => failed,
            };
            let code = error_code(&failed.error);
            if !matches!(code, Some(code::LOCK_WAIT_TIMEOUT | code::DEADLOCK)) {
                let doing = match failed.stage {
                    Stage::Choose => format!("choosing the next batch of {}", self.source),
                    Stage::Copy => format!("copying a batch into {}", self.archive),
                    Stage::Delete => format!("deleting an archived batch from {}", self.source),
                    Stage::Compare => return Err(failed.error),
                    Stage::Commit => format!("committing a batch of {}", self.source),
                };
                return Err(failed.error.during(doing));
            }
            // A lock wait timeout rolls back only the statement: end the batch.
            conn::exec(c, "ROLLBACK").await?;
            conn::exec(c, "SET timestamp = DEFAULT").await?;
            if tries >= BATCH_TRIES {
                return Err(self.lock_failure(&failed, after, tries, moved_before));
            }
            tracing::info!(
                table = %self.source,
                "an archive batch {} ({}); trying it again in {:?}",
                if code == Some(code::DEADLOCK) {
                    "lost a deadlock"
                } else {
                    "waited too long for a lock"
                },
                failed.error,
                pause
            );
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }

    /// The error of a batch that kept waiting for a lock (or losing deadlocks): which
    /// rows, what waited for what, that nothing of it moved and that running again
    /// resumes.
    fn lock_failure(
        &self,
        failed: &BatchError,
        after: Option<&[String]>,
        tries: u32,
        moved_before: u64,
    ) -> Error {
        let show = |k: &[String]| {
            if k.len() == 1 {
                k[0].clone()
            } else {
                format!("({})", k.join(", "))
            }
        };
        let rows = match (&failed.keys, after) {
            (Some((lo, hi)), _) => format!("the rows with keys {} to {}", show(lo), show(hi)),
            (None, Some(after)) => format!("the next rows after key {}", show(after)),
            (None, None) => "the first rows".to_owned(),
        };
        let (doing, on) = match failed.stage {
            Stage::Choose => ("locking them", &self.source),
            Stage::Copy => ("copying them into the archive", &self.archive),
            Stage::Delete => ("deleting them", &self.source),
            Stage::Compare | Stage::Commit => ("committing", &self.source),
        };
        let what = if error_code(&failed.error) == Some(code::DEADLOCK) {
            format!("lost a deadlock with another session's transaction on {on} while {doing}")
        } else {
            format!(
                "waited {BATCH_LOCK_WAIT_SECS} s for a lock on {on} that another session \
                 holds while {doing}"
            )
        };
        Error::new(
            ErrorKind::Locked,
            format!(
                "a batch of {} ({rows}) {what}, {tries} times ({}); each time the batch was \
                 rolled back, so nothing of it moved (the {moved_before} rows moved before it \
                 stay moved). Running the archive again resumes where it stopped",
                self.source,
                failed.error.message()
            ),
        )
        .with_context("code", error_code(&failed.error).unwrap_or_default())
        .temporary()
    }
}

/// Whether matching rows are left.
async fn any_matching(c: &mut Conn, from: &str, predicate: &str) -> Result<bool> {
    let rows = conn::query_rows(
        c,
        &format!("SELECT 1 FROM {from} WHERE ({predicate}) LIMIT 1"),
    )
    .await
    .map_err(|e| e.during("looking for rows that still match the predicate"))?;
    Ok(!rows.is_empty())
}

/// Sets up the archive session: `READ COMMITTED` (no gap locks; the copy reads the
/// source without locking it) and short lock waits. A server that writes its binary
/// log statement by statement refuses `READ COMMITTED` writes to InnoDB, so there the
/// session stays `REPEATABLE READ`.
async fn archive_session(c: &mut Conn) -> Result<()> {
    let rows = conn::query_rows(c, "SELECT @@log_bin, @@session.binlog_format").await?;
    let statement_log = rows.first().is_some_and(|r| {
        conn::number(r, 0).unwrap_or(0) == 1
            && conn::opt_text(r, 1)
                .ok()
                .flatten()
                .is_some_and(|f| f.eq_ignore_ascii_case("STATEMENT"))
    });
    let isolation = if statement_log {
        tracing::info!(
            "binlog_format is STATEMENT: archive batches read REPEATABLE READ (READ COMMITTED \
             needs row-based logging)"
        );
        "REPEATABLE READ"
    } else {
        "READ COMMITTED"
    };
    for sql in [
        format!("SET SESSION TRANSACTION ISOLATION LEVEL {isolation}"),
        format!(
            "SET SESSION innodb_lock_wait_timeout = {BATCH_LOCK_WAIT_SECS}, \
             lock_wait_timeout = {BATCH_LOCK_WAIT_SECS}"
        ),
    ] {
        conn::exec(c, &sql)
            .await
            .map_err(|e| e.during("setting up the archive session"))?;
    }
    Ok(())
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
    let Some(src_engine) = table_engine(c, &src_db, &src).await? else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no table {src_db}.{src} to archive from"),
        ));
    };
    require_innodb("source", &src_db, &src, &src_engine)?;
    let pk = primary_key(c, &src_db, &src).await?;
    if pk.is_empty() {
        return Err(Error::invalid(format!(
            "{src_db}.{src} has no primary key: archiving moves rows in primary-key batches \
             so that a killed run can resume safely; add a primary key first"
        )));
    }
    refuse_deleting_references(c, &src_db, &src).await?;
    let src_cols = columns(c, &src_db, &src).await?;
    let mut report = ArchiveReport {
        dry_run: spec.dry_run,
        ..ArchiveReport::default()
    };
    if let Some(arch_engine) = table_engine(c, &arch_db, &arch).await? {
        require_innodb("archive", &arch_db, &arch, &arch_engine)?;
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
        // Like the source, which is InnoDB; checked all the same, so that an archive
        // dbops creates is never without transactions.
        conn::exec(c, &format!("CREATE TABLE {into} LIKE {from}"))
            .await
            .map_err(|e| e.during(format!("creating the archive table {arch_db}.{arch}")))?;
        report.created_archive = true;
        if let Some(made) = table_engine(c, &arch_db, &arch).await?
            && !made.eq_ignore_ascii_case("InnoDB")
        {
            conn::exec(c, &format!("ALTER TABLE {into} ENGINE=InnoDB"))
                .await
                .map_err(|e| {
                    e.during(format!(
                        "making the new archive table {arch_db}.{arch} InnoDB"
                    ))
                })?;
        }
        // The AUTO_INCREMENT counter starts anew; harmless, since every row copied
        // brings its own key.
    }

    if spec.dry_run {
        let matching = count(c, &from, &spec.predicate).await?;
        report.rows = spec.max_rows.map_or(matching, |m| m.min(matching));
        report.remaining = matching - report.rows;
        return Ok(report);
    }

    archive_session(c).await?;
    let mut batches = Batches {
        from: from.clone(),
        into,
        source: format!("{src_db}.{src}"),
        archive: format!("{arch_db}.{arch}"),
        pred: &spec.predicate,
        key_cols: pk.iter().map(|(n, _)| quote_ident(n)).collect(),
        key_types: pk.iter().map(|(_, t)| t.clone()).collect(),
        copy_cols: src_cols
            .iter()
            .filter(|c| !c.generated)
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", "),
        skip_locked: true,
    };
    // A pass goes up the key; rows it passed over (locked by another session when
    // their batch was chosen, or matching only since) are taken by the next pass from
    // the start, until a pass from the start finds nothing to move.
    let mut after: Option<Vec<String>> = None;
    let mut locked_since: Option<Instant> = None;
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
        let moved = match batches
            .with_retries(c, after.as_deref(), n, report.rows)
            .await
        {
            Err(e) if batches.skip_locked && error_code(&e) == Some(code::PARSE_ERROR) => {
                // A server before MariaDB 10.6 has no SKIP LOCKED: lock plainly (the
                // short lock wait still bounds each batch). A syntax error of the
                // predicate itself comes back from the plain try.
                tracing::info!("the server has no SKIP LOCKED; archive batches lock plainly");
                batches.skip_locked = false;
                continue;
            }
            other => other?,
        };
        match moved {
            Moved::Rows(rows, last) => {
                report.rows += rows;
                report.batches += 1;
                after = Some(last);
                locked_since = None;
            }
            Moved::Nothing if after.is_some() => after = None,
            Moved::Nothing => {
                if !any_matching(c, &from, &spec.predicate).await? {
                    break;
                }
                // Every row still matching is locked by another session.
                let since = *locked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= spec.max_wait {
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!(
                            "the rows of {src_db}.{src} still matching stayed locked by other \
                             sessions for {:.0} s; moved {} rows in {} batches; running the \
                             archive again later resumes where it stopped",
                            since.elapsed().as_secs_f64(),
                            report.rows,
                            report.batches
                        ),
                    )
                    .temporary());
                }
                tokio::time::sleep(LOCKED_ROWS_RETRY.max(spec.pause)).await;
            }
        }
    }
    report.remaining = count(c, &from, &spec.predicate).await?;
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
