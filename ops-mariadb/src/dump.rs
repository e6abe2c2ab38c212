//! The dump: one consistent snapshot shared by `jobs` connections, the schema streams,
//! and the table data streams written by workers, biggest first.
//!
//! Rows are streamed from the server (`query_iter`, unbuffered) and encoded into
//! chunks of [`CHUNK_BYTES`]; each chunk is handed to the sink, which applies
//! back-pressure, so memory does not grow with table size.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use ops_core::{
    DumpOptions, DumpReport, DumpSink, Error, ErrorKind, Result, StreamRole, StreamSpec, TableRef,
};
use tokio::task::JoinSet;

use crate::catalog::{self, Catalog, TablePlan};
use crate::conn::{self, ConnConfig, Session};
use crate::error::{code, db_error, server_code};
use crate::format::{self, NULL_FIELD, escape_into, load_clause, quote_ident};

/// Bytes of encoded rows collected before they are handed to the sink.
const CHUNK_BYTES: usize = 256 * 1024;
/// Most parts a table is split into.
const MAX_PARTS: u64 = 1024;

/// One data stream to produce.
#[derive(Debug)]
struct Task {
    table: Arc<TablePlan>,
    part: usize,
    condition: Option<String>,
    estimated_bytes: u64,
}

pub(crate) async fn dump(
    config: Arc<ConnConfig>,
    db: String,
    options: DumpOptions,
    sink: Arc<dyn DumpSink>,
) -> Result<DumpReport> {
    let mut leader = conn::connect(&config, Some(&db), Session::Catalog).await?;
    let server_version = conn::query_string(&mut leader, "SELECT VERSION()").await?;
    let jobs = options.jobs.max(1);
    let mut others = Vec::new();
    for _ in 1..jobs {
        others.push(conn::connect(&config, Some(&db), Session::DumpData).await?);
    }
    let mut report = DumpReport::default();
    report.server_version = server_version.clone();
    report.database = db.clone();
    // MySQL names each server by a UUID; MariaDB has none, so its backups are grouped
    // by the address as given.
    report.server_id = conn::query_string(&mut leader, "SELECT @@GLOBAL.server_uuid")
        .await
        .ok()
        .filter(|id| !id.is_empty())
        .map(|id| format!("mysql:{id}"));
    let warn = |report: &mut DumpReport, message: String| {
        sink.warn(message.clone());
        report.warnings.push(message);
    };

    for c in std::iter::once(&mut leader).chain(others.iter_mut()) {
        conn::exec(c, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ").await?;
    }
    const START: &str = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
    match leader.query_drop("FLUSH TABLES WITH READ LOCK").await {
        Ok(()) => {
            let started = async {
                for c in std::iter::once(&mut leader).chain(others.iter_mut()) {
                    conn::exec(c, START).await?;
                }
                record_position(&mut leader, &mut report.snapshot, true).await
            }
            .await;
            let unlocked = conn::exec(&mut leader, "UNLOCK TABLES").await;
            started?;
            unlocked?;
            report
                .snapshot
                .insert("method".into(), "flush_tables_with_read_lock".into());
            report
                .snapshot
                .insert("connections".into(), jobs.to_string());
        }
        Err(e)
            if matches!(
                server_code(&e),
                Some(code::SPECIFIC_ACCESS_DENIED | code::DB_ACCESS_DENIED)
            ) =>
        {
            warn(
                &mut report,
                format!(
                    "FLUSH TABLES WITH READ LOCK was refused ({}): the dump runs over ONE \
                     connection with a consistent snapshot instead of {jobs}; grant RELOAD to \
                     the dump user for parallel dumps",
                    db_error(e)
                ),
            );
            for c in others.drain(..) {
                conn::disconnect(c).await;
            }
            conn::exec(&mut leader, START).await?;
            record_position(&mut leader, &mut report.snapshot, false).await?;
            report.snapshot.insert(
                "method".into(),
                "consistent_snapshot_single_connection".into(),
            );
            report.snapshot.insert("connections".into(), "1".into());
        }
        Err(e) => return Err(db_error(e).during("FLUSH TABLES WITH READ LOCK")),
    }

    let with_schema = !options.data_only && options.tables.is_empty();
    let Catalog {
        header,
        pre,
        post,
        tables,
        warnings,
    } = catalog::read(
        &mut leader,
        &db,
        &server_version,
        with_schema,
        &options.filter,
    )
    .await?;
    report
        .snapshot
        .insert("database_charset".into(), header.charset.clone());
    report
        .snapshot
        .insert("database_collation".into(), header.collation.clone());

    let mut tables = tables;
    if !options.tables.is_empty() {
        for t in &options.tables {
            if t.schema != db || !tables.iter().any(|p| p.name == t.name) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("table {t} is not a table of database {db}"),
                ));
            }
        }
        tables.retain(|p| options.tables.iter().any(|t| t.name == p.name));
    }
    tables.retain(|p| options.filter.keeps_data(&TableRef::new(&db, &p.name)));
    for w in warnings {
        let relevant = options.tables.is_empty() || tables.iter().any(|t| w.contains(&t.name));
        if relevant {
            warn(&mut report, w);
        }
    }

    if with_schema {
        write_stream(&*sink, catalog::PRE_DATA, catalog::to_jsonl(&header, &pre)?).await?;
    }

    let mut tasks = Vec::new();
    for plan in tables {
        plan_parts(&mut leader, Arc::new(plan), options.split_bytes, &mut tasks).await?;
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.estimated_bytes));
    let queue = Arc::new(Mutex::new(tasks.into_iter().collect::<VecDeque<_>>()));

    conn::exec(&mut leader, "SET SESSION character_set_results = binary").await?;
    let mut workers = JoinSet::new();
    for c in std::iter::once(leader).chain(others) {
        let queue = Arc::clone(&queue);
        let sink = Arc::clone(&sink);
        let db = db.clone();
        workers.spawn(async move {
            let mut c = c;
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let Some(task) = next else { break };
                dump_task(&mut c, &db, &task, &*sink).await?;
            }
            conn::exec(&mut c, "COMMIT").await?;
            conn::disconnect(c).await;
            Ok::<(), Error>(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            // Dropping the JoinSet on return aborts the other workers.
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::internal(format!("a dump worker failed: {e}"))),
        }
    }

    if with_schema {
        write_stream(
            &*sink,
            catalog::POST_DATA,
            catalog::to_jsonl(&header, &post)?,
        )
        .await?;
    }
    Ok(report)
}

/// Records where the snapshot sits in the binary log.
async fn record_position(
    leader: &mut Conn,
    snapshot: &mut BTreeMap<String, String>,
    locked: bool,
) -> Result<()> {
    // MariaDB reports the binlog position of the transaction's own snapshot, which is
    // exact with or without the global read lock.
    for row in conn::query_rows(leader, "SHOW STATUS LIKE 'binlog_snapshot_%'").await? {
        let name = conn::text(&row, 0)?.to_ascii_lowercase();
        let value = conn::text(&row, 1)?;
        let key = match name.as_str() {
            "binlog_snapshot_file" => "binlog_file",
            "binlog_snapshot_position" => "binlog_position",
            _ => continue,
        };
        if !value.is_empty() {
            snapshot.insert(key.into(), value);
        }
    }
    if snapshot.contains_key("binlog_file") {
        // Names the binlog series a point-in-time restore replays from, so that
        // retention keeps the pieces this backup needs.
        let series = crate::binlog::series_on(leader).await?;
        crate::binlog::record_archive_keys(snapshot, &series);
    } else {
        snapshot.insert("binlog".into(), "disabled".into());
    }
    // The GTID position is exact only while writes are blocked.
    if locked && let Ok(pos) = conn::query_string(leader, "SELECT @@GLOBAL.gtid_binlog_pos").await {
        snapshot.insert("gtid_binlog_pos".into(), pos);
    }
    Ok(())
}

async fn write_stream(sink: &dyn DumpSink, name: &str, bytes: Vec<u8>) -> Result<()> {
    let mut w = sink
        .open_stream(StreamSpec::new(name, StreamRole::Schema))
        .await?;
    w.write(bytes.into()).await?;
    w.finish().await?;
    Ok(())
}

/// Splits a table larger than `split_bytes` into ranges of its integer primary key.
async fn plan_parts(
    leader: &mut Conn,
    plan: Arc<TablePlan>,
    split_bytes: u64,
    tasks: &mut Vec<Task>,
) -> Result<()> {
    let wanted = plan.bytes.div_ceil(split_bytes.max(1)).clamp(1, MAX_PARTS);
    let mut bounds = Vec::new();
    if let (true, Some(pk)) = (wanted > 1, &plan.int_pk) {
        let history = if plan.versioned {
            " FOR SYSTEM_TIME ALL"
        } else {
            ""
        };
        let rows = conn::query_rows(
            leader,
            &format!(
                "SELECT MIN({q}), MAX({q}) FROM {}{history}",
                quote_ident(&plan.name),
                q = quote_ident(pk)
            ),
        )
        .await?;
        if let Some(row) = rows.first() {
            let min = conn::opt_text(row, 0)?.and_then(|s| s.parse::<i128>().ok());
            let max = conn::opt_text(row, 1)?.and_then(|s| s.parse::<i128>().ok());
            if let (Some(min), Some(max)) = (min, max) {
                let span = max - min + 1;
                let parts = i128::from(wanted).min(span);
                for i in 1..parts {
                    bounds.push(min + span * i / parts);
                }
                bounds.dedup();
            }
        }
    }
    let parts = bounds.len() + 1;
    let estimated_bytes = plan.bytes / parts as u64;
    for part in 0..parts {
        let condition = plan.int_pk.as_ref().and_then(|pk| {
            let q = quote_ident(pk);
            match (part.checked_sub(1).map(|i| bounds[i]), bounds.get(part)) {
                (None, None) => None,
                (None, Some(hi)) => Some(format!("{q} < {hi}")),
                (Some(lo), None) => Some(format!("{q} >= {lo}")),
                (Some(lo), Some(hi)) => Some(format!("{q} >= {lo} AND {q} < {hi}")),
            }
        });
        tasks.push(Task {
            table: Arc::clone(&plan),
            part,
            condition,
            estimated_bytes,
        });
    }
    Ok(())
}

/// Streams one table (part) into one data stream.
async fn dump_task(conn: &mut Conn, db: &str, task: &Task, sink: &dyn DumpSink) -> Result<()> {
    let plan = &task.table;
    let table = TableRef::new(db, &plan.name);
    let exprs: Vec<String> = plan
        .columns
        .iter()
        .map(|c| c.encoding.select_expr(&c.name))
        .collect();
    let mut sql = format!(
        "SELECT {} FROM {}",
        exprs.join(", "),
        quote_ident(&plan.name)
    );
    if plan.versioned {
        sql.push_str(" FOR SYSTEM_TIME ALL");
    }
    if let Some(cond) = &task.condition {
        sql.push_str(" WHERE ");
        sql.push_str(cond);
    }
    let columns = serde_json::to_string(&plan.columns)
        .map_err(|e| Error::internal(format!("serialising column list: {e}")))?;
    let mut spec = StreamSpec::table_data(
        format!("data/{db}.{}/{}", plan.name, task.part),
        table.clone(),
    )
    .with_meta("format", catalog::DATA_FORMAT)
    .with_meta("columns", columns)
    .with_meta(
        "load",
        format!("{} {}", format::LOAD_FORMAT, load_clause(&plan.columns)),
    )
    .with_meta("engine", &plan.engine);
    if plan.versioned {
        spec = spec.with_meta("system_versioned", "true");
    }
    if let Some(cond) = &task.condition {
        spec = spec.with_meta("range", cond);
    }
    let doing = || format!("dumping table {table}");
    let mut writer = sink.open_stream(spec).await?;
    if plan.columns.is_empty() {
        // Every column is generated: a row stores nothing, yet the rows exist. Each is
        // an empty record, which the restore loads into a variable (a row of defaults).
        let mut count = format!("SELECT COUNT(*) FROM {}", quote_ident(&plan.name));
        if let Some(cond) = &task.condition {
            count.push_str(" WHERE ");
            count.push_str(cond);
        }
        let rows = conn::query_string(conn, &count)
            .await
            .map_err(|e| e.during(doing()))?;
        let rows: u64 = rows
            .trim()
            .parse()
            .map_err(|_| Error::internal(format!("COUNT(*) returned '{rows}'")))?;
        let mut left = rows;
        while left > 0 {
            let n = left.min(CHUNK_BYTES as u64);
            writer
                .write(bytes::Bytes::from(vec![b'\n'; n as usize]))
                .await?;
            left -= n;
        }
        writer.finish().await?;
        return Ok(());
    }
    let mut result = conn
        .query_iter(sql)
        .await
        .map_err(|e| db_error(e).during(doing()))?;
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 64 * 1024);
    if let Some(mut rows) = result
        .stream::<Row>()
        .await
        .map_err(|e| db_error(e).during(doing()))?
    {
        while let Some(row) = rows.next().await {
            let row = row.map_err(|e| db_error(e).during(doing()))?;
            encode_row(&mut buf, &row).map_err(|e| e.during(doing()))?;
            if buf.len() >= CHUNK_BYTES {
                writer.write(buf.split().freeze()).await?;
            }
        }
    }
    drop(result);
    if !buf.is_empty() {
        writer.write(buf.freeze()).await?;
    }
    writer.finish().await?;
    Ok(())
}

fn encode_row(buf: &mut BytesMut, row: &Row) -> Result<()> {
    for i in 0..row.len() {
        if i > 0 {
            buf.extend_from_slice(b"\t");
        }
        match row.as_ref(i) {
            Some(Value::NULL) => buf.extend_from_slice(NULL_FIELD),
            Some(Value::Bytes(b)) => escape_into(buf, b),
            other => {
                return Err(Error::internal(format!(
                    "text protocol returned a non-text value in column {i}: {other:?}"
                )));
            }
        }
    }
    buf.extend_from_slice(b"\n");
    Ok(())
}
