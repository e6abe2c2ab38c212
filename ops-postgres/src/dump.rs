//! The dump: one snapshot, `jobs` COPY workers, and pg_dump for the schema.
//!
//! The leader connection opens a `REPEATABLE READ READ ONLY` transaction, exports its
//! snapshot, lists tables and takes `ACCESS SHARE` locks (as pg_dump does, so that no
//! table is dropped or rewritten under the dump). It then works as worker 0; the other
//! workers join the snapshot with `SET TRANSACTION SNAPSHOT`. pg_dump runs at the same
//! time with `--snapshot`, writing a custom-format archive of everything except table
//! rows (it keeps sequence values, large objects and materialized view refreshes) to
//! the `schema` stream. Table rows move as COPY text, one stream per table or per ctid
//! range of a large table, biggest first. Nothing is buffered beyond one chunk.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use ops_core::{
    DumpOptions, DumpReport, DumpSink, Error, ErrorKind, Result, StreamRole, StreamSpec,
    TableFilter, TableRef,
};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::catalog::{self, CatalogTable, OBJECT_MAP_META};
use crate::config::ConnConfig;
use crate::errors::{column, query_error};
use crate::session::{connect_pinned, qualified, quote_ident, quote_literal};
use crate::tools;

/// Bytes gathered from COPY before one write into the sink.
const WRITE_CHUNK: usize = 256 * 1024;

/// Meta keys of table data streams.
pub(crate) const META_COLUMNS: &str = "columns";
pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_BYTES: &str = "estimated_bytes";
pub(crate) const META_RANGE: &str = "ctid_range";
/// The name of the schema stream.
pub(crate) const SCHEMA_STREAM: &str = "schema";

/// One COPY to run.
#[derive(Debug, Clone)]
struct WorkItem {
    table: TableRef,
    columns: Vec<String>,
    stream: String,
    /// Block range `[start, end)`; `None` end is open; `None` range is the whole table.
    range: Option<(u64, Option<u64>)>,
    estimated_bytes: u64,
}

impl WorkItem {
    fn copy_sql(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        match self.range {
            None if cols.is_empty() => format!("COPY {} TO STDOUT", qualified(&self.table)),
            None => format!(
                "COPY {} ({}) TO STDOUT",
                qualified(&self.table),
                cols.join(", ")
            ),
            Some((start, end)) => {
                let mut cond = format!("ctid >= '({start},0)'::tid");
                if let Some(end) = end {
                    cond.push_str(&format!(" AND ctid < '({end},0)'::tid"));
                }
                format!(
                    "COPY (SELECT {} FROM ONLY {} WHERE {cond}) TO STDOUT",
                    cols.join(", "),
                    qualified(&self.table)
                )
            }
        }
    }

    fn spec(&self) -> Result<StreamSpec> {
        let columns = serde_json::to_string(&self.columns)
            .map_err(|e| Error::internal(format!("column list not serializable: {e}")))?;
        let mut spec = StreamSpec::table_data(self.stream.clone(), self.table.clone())
            .with_meta(META_COLUMNS, columns)
            .with_meta(META_FORMAT, "text")
            .with_meta(META_BYTES, self.estimated_bytes.to_string());
        if let Some((start, end)) = self.range {
            let end = end.map_or_else(|| "end".to_owned(), |e| e.to_string());
            spec = spec.with_meta(META_RANGE, format!("{start}..{end}"));
        }
        Ok(spec)
    }
}

/// Splits the data tables into work items, biggest first.
fn plan(
    tables: &[&CatalogTable],
    split_bytes: u64,
    block_size: u64,
    can_split: bool,
) -> Vec<WorkItem> {
    let mut names = HashSet::new();
    let mut items = Vec::new();
    for t in tables {
        let mut base = format!("data/{}.{}", t.table.schema, t.table.name);
        if !names.insert(base.clone()) {
            // `a.b`.`c` and `a`.`b.c` print alike; the oid keeps names unique.
            base = format!("{base}#{}", t.oid);
            names.insert(base.clone());
        }
        let blocks = t.bytes / block_size.max(1);
        if can_split && t.bytes > split_bytes && blocks > 1 {
            let parts = t
                .bytes
                .div_ceil(split_bytes.max(1))
                .clamp(2, 1024)
                .min(blocks);
            let per = blocks.div_ceil(parts);
            let mut start = 0;
            let mut part = 0;
            while start < blocks {
                let end = start + per;
                let last = end >= blocks;
                items.push(WorkItem {
                    table: t.table.clone(),
                    columns: t.columns.clone(),
                    stream: format!("{base}/{part}"),
                    range: Some((start, (!last).then_some(end))),
                    estimated_bytes: (end.min(blocks) - start) * block_size,
                });
                start = end;
                part += 1;
            }
        } else {
            items.push(WorkItem {
                table: t.table.clone(),
                columns: t.columns.clone(),
                stream: format!("{base}/0"),
                range: None,
                estimated_bytes: t.bytes,
            });
        }
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.estimated_bytes));
    items
}

/// Runs a whole dump.
pub(crate) async fn dump(
    config: &ConnConfig,
    bin_dir: Option<PathBuf>,
    lock_wait: Duration,
    options: &DumpOptions,
    sink: Arc<dyn DumpSink>,
) -> Result<DumpReport> {
    // Everything slow that does not need the snapshot happens before it: finding and
    // version-checking pg_dump (a process and directory search), so that the window
    // between the snapshot and the table locks is as short as it can be. A TRUNCATE
    // committed in that window would empty the table in the dump (it is not MVCC-safe).
    let with_schema = !options.data_only && options.tables.is_empty();
    let pg_dump = if with_schema {
        Some(tools::resolve_program("pg_dump", bin_dir).await?)
    } else {
        None
    };
    let leader = connect_pinned(config).await?;
    let row = leader
        .query_one(
            "SELECT current_setting('server_version_num')::int4, pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "reading the server version"))?;
    let version_num: i32 = column(&row, 0, "reading the server version")?;
    let standby: bool = column(&row, 1, "reading the server version")?;
    if let Some((_, major)) = &pg_dump {
        tools::check_client_version("pg_dump", *major, tools::server_major(version_num))?;
    }

    // Until the tables are locked, no lock wait is unbounded (pg_relation_size takes a
    // lock too); afterwards the session's settings apply again (no timeout).
    leader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL lock_timeout = {}",
            lock_wait.as_millis().max(1)
        ))
        .await
        .map_err(|e| query_error(e, "starting the snapshot transaction"))?;
    let row = leader
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| query_error(e, "exporting the snapshot"))?;
    let snapshot: String = row
        .try_get(0)
        .map_err(|e| query_error(e, "exporting the snapshot"))?;
    // Lock what we dump right after listing it.
    let all = match catalog::list_tables(&leader, version_num).await {
        Err(e) if e.kind() == ErrorKind::Locked => {
            return Err(lock_timeout_error(&leader, lock_wait, None).await);
        }
        other => other?,
    };
    let data_tables: Vec<&CatalogTable> = all
        .iter()
        .filter(|t| !t.partitioned && !t.extension_member)
        .collect();
    let filter = &options.filter;
    if let Err(e) = filter.check_selection(all.iter().map(|t| &t.table)) {
        let _ = leader.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    if let Err(e) = partitions_agree(&leader, &all, filter).await {
        let _ = leader.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    let selected: Vec<&CatalogTable> = if options.tables.is_empty() {
        data_tables.clone()
    } else {
        select_tables(&leader, &all, &options.tables).await?
    };
    let selected: Vec<&CatalogTable> = selected
        .into_iter()
        .filter(|t| filter.keeps_data(&t.table))
        .collect();
    let (selected, skipped) = without_unlogged_on_standby(selected, standby);
    lock_tables(&leader, &selected, lock_wait).await?;
    leader
        .batch_execute("SET LOCAL lock_timeout = 0")
        .await
        .map_err(|e| query_error(e, "resetting lock_timeout"))?;

    if !skipped.is_empty() {
        sink.warn(format!(
            "the server is a standby, where unlogged tables cannot be read: the data of {} \
             is not in this backup (their definitions are)",
            skipped
                .iter()
                .map(|t| t.table.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let row = leader
        .query_one(
            "SELECT current_setting('server_version'),
                    current_database()::text, current_setting('block_size')::int8,
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
                         ELSE pg_current_wal_lsn()::text END",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "reading the server state"))?;
    const STATE: &str = "reading the server state";
    let server_version: String = column(&row, 0, STATE)?;
    let database: String = column(&row, 1, STATE)?;
    let block_size = u64::try_from(column::<i64>(&row, 2, STATE)?).unwrap_or(8192);
    let lsn: Option<String> = column(&row, 3, STATE)?;
    let leader = Arc::new(leader);

    let mut report = DumpReport::default();
    report.server_version = server_version;
    report.database = database;
    report.snapshot.insert("snapshot".into(), snapshot.clone());
    report
        .snapshot
        .insert("isolation".into(), "repeatable read, read only".into());
    if let Some(lsn) = lsn {
        let key = if standby { "replay_lsn" } else { "wal_lsn" };
        report.snapshot.insert(key.into(), lsn);
    }
    if standby {
        report.snapshot.insert("standby".into(), "true".into());
    }
    // The system identifier names the cluster (a standby shares its primary's), so
    // backups stay one group across a rename of the host; a server that hides
    // pg_control_system() from this role is grouped by its address alone.
    // The privilege is checked first: a refused call would abort the snapshot's
    // transaction.
    let may_read_control = leader
        .query_one(
            "SELECT has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')",
            &[],
        )
        .await
        .ok()
        .and_then(|row| row.try_get::<_, bool>(0).ok())
        .unwrap_or(false);
    if may_read_control {
        report.server_id = leader
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "reading the system identifier"))?
            .try_get::<_, String>(0)
            .ok()
            .map(|id| format!("pg:{id}"));
    }

    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    if let Some((path, major)) = pg_dump {
        let mut pg_dump_args = if filter.selects_tables() {
            filter_args(&leader, &all, filter).await?
        } else {
            Vec::new()
        };
        let map = catalog::object_map(&leader, &all).await?;
        let map_json = serde_json::to_string(&map)
            .map_err(|e| Error::internal(format!("object map not serializable: {e}")))?;
        // Rows move by COPY: pg_dump takes none (quoted patterns match literally: no
        // wildcard or dot inside is special).
        pg_dump_args.extend(data_tables.iter().map(|t| {
            format!(
                "--exclude-table-data={}.{}",
                quote_ident(&t.table.schema),
                quote_ident(&t.table.name)
            )
        }));
        let spec = StreamSpec::new(SCHEMA_STREAM, StreamRole::Schema)
            .with_meta(META_FORMAT, "pg_dump-custom")
            .with_meta("pg_dump_major", major.to_string())
            .with_meta("server_version_num", version_num.to_string())
            .with_meta(OBJECT_MAP_META, map_json)
            .with_meta(
                crate::globals::DATABASE_PROPERTIES_META,
                serde_json::to_string(
                    &crate::globals::database_properties(&leader, version_num).await?,
                )
                .map_err(|e| Error::internal(format!("properties not serializable: {e}")))?,
            );
        let config = config.clone();
        let sink = Arc::clone(&sink);
        let snapshot = snapshot.clone();
        tasks.spawn(async move {
            dump_schema(
                &path,
                &config,
                &snapshot,
                lock_wait,
                &pg_dump_args,
                spec,
                sink.as_ref(),
            )
            .await
        });
    }

    let can_split = version_num >= 140000;
    if !can_split && selected.iter().any(|t| t.bytes > options.split_bytes) {
        sink.warn(format!(
            "server {} has no TID range scans (PostgreSQL 14+): large tables are dumped as one stream each",
            report.server_version
        ));
    }
    let items = plan(&selected, options.split_bytes, block_size, can_split);
    let jobs = options.jobs.clamp(1, items.len().max(1));
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));

    tasks.spawn(copy_worker(
        Arc::clone(&leader),
        true,
        Arc::clone(&queue),
        Arc::clone(&sink),
    ));
    for _ in 1..jobs {
        let config = config.clone();
        let queue = Arc::clone(&queue);
        let sink = Arc::clone(&sink);
        let snapshot = snapshot.clone();
        tasks.spawn(async move {
            let client = connect_pinned(&config).await?;
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                     SET TRANSACTION SNAPSHOT {}",
                    quote_literal(&snapshot)
                ))
                .await
                .map_err(|e| query_error(e, "joining the dump snapshot"))?;
            copy_worker(Arc::new(client), false, queue, sink).await
        });
    }

    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(|e| Error::internal(format!("dump task failed: {e}")))?;
        // Dropping the JoinSet on return aborts the other workers.
        outcome?;
    }

    leader
        .batch_execute("COMMIT")
        .await
        .map_err(|e| query_error(e, "ending the snapshot transaction"))?;
    Ok(report)
}

/// On a standby, unlogged tables have no readable rows ("cannot access temporary or
/// unlogged relations during recovery"): they are set apart, to be named in a warning.
fn without_unlogged_on_standby(
    tables: Vec<&CatalogTable>,
    standby: bool,
) -> (Vec<&CatalogTable>, Vec<&CatalogTable>) {
    if standby {
        tables.into_iter().partition(|t| !t.unlogged)
    } else {
        (tables, Vec::new())
    }
}

/// A partitioned table's rows live in its partitions, which a filter matches by their
/// own names: a filter that takes (or leaves out, or keeps the data of) a partitioned
/// table but not its partitions alike would silently store an empty table, or a
/// partition without its parent. Refused, naming both, before anything is stored.
async fn partitions_agree(
    client: &Client,
    all: &[CatalogTable],
    filter: &ops_core::TableFilter,
) -> Result<()> {
    if filter.is_empty() {
        return Ok(());
    }
    let by_oid: BTreeMap<u32, &CatalogTable> = all.iter().map(|t| (t.oid, t)).collect();
    for parent in all.iter().filter(|t| t.partitioned) {
        let rows = client
            .query(
                "SELECT relid::oid FROM pg_partition_tree($1::oid) WHERE relid <> $1::oid",
                &[&parent.oid],
            )
            .await
            .map_err(|e| query_error(e, format!("listing the partitions of {}", parent.table)))?;
        let mut differ = Vec::new();
        for row in rows {
            let oid: u32 = column(&row, 0, "listing partitions")?;
            if let Some(p) = by_oid.get(&oid)
                && (filter.matches_table(&p.table) != filter.matches_table(&parent.table)
                    || filter.keeps_data(&p.table) != filter.keeps_data(&parent.table))
            {
                differ.push(p.table.to_string());
            }
        }
        if !differ.is_empty() {
            return Err(Error::invalid(format!(
                "table {} is partitioned and the filter treats its partitions {} otherwise (a partition is matched by its own name): name them too, or use a pattern that matches the table and its partitions alike",
                parent.table,
                differ.join(", ")
            )));
        }
    }
    Ok(())
}

/// The requested tables (a partitioned table stands for its leaf partitions).
async fn select_tables<'a>(
    client: &Client,
    all: &'a [CatalogTable],
    wanted: &[TableRef],
) -> Result<Vec<&'a CatalogTable>> {
    let by_name: BTreeMap<&TableRef, &CatalogTable> = all.iter().map(|t| (&t.table, t)).collect();
    let by_oid: BTreeMap<u32, &CatalogTable> = all.iter().map(|t| (t.oid, t)).collect();
    let mut out: Vec<&CatalogTable> = Vec::new();
    let mut seen = HashSet::new();
    for w in wanted {
        let t = by_name.get(w).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("table {w} does not exist"))
                .with_context("table", w)
        })?;
        if t.partitioned {
            let leaves = client
                .query(
                    "SELECT relid::oid FROM pg_partition_tree($1::oid) WHERE isleaf",
                    &[&t.oid],
                )
                .await
                .map_err(|e| query_error(e, format!("listing the partitions of {w}")))?;
            for row in leaves {
                let oid: u32 = column(&row, 0, "listing partitions")?;
                if let Some(leaf) = by_oid.get(&oid)
                    && seen.insert(oid)
                {
                    out.push(leaf);
                }
            }
        } else if !t.extension_member && seen.insert(t.oid) {
            out.push(t);
        }
    }
    Ok(out)
}

/// pg_dump's `-t`, `-n`, `-N` and `-T` for a table filter, resolved here to exact
/// (quoted) names so that pg_dump takes the definitions of exactly the tables whose
/// rows the COPY workers take: with table patterns, `-t` for each chosen table (and
/// nothing else, as pg_dump's `-t`); otherwise `-n`/`-N` for the chosen or refused
/// schemas and `-T` for each excluded table in a schema that is taken.
async fn filter_args(
    client: &Client,
    all: &[CatalogTable],
    filter: &TableFilter,
) -> Result<Vec<String>> {
    // Views, materialized views, sequences and foreign tables match table patterns too,
    // as in pg_dump.
    const DOING: &str = "listing views and sequences";
    let mut relations: Vec<TableRef> = all.iter().map(|t| t.table.clone()).collect();
    for row in client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('v', 'm', 'S', 'f')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'",
            &[],
        )
        .await
        .map_err(|e| query_error(e, DOING))?
    {
        relations.push(TableRef::new(
            column::<String>(&row, 0, DOING)?,
            column::<String>(&row, 1, DOING)?,
        ));
    }
    let name = |t: &TableRef| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    let mut args = Vec::new();
    if !filter.tables.is_empty() {
        for t in relations.iter().filter(|t| filter.matches_table(t)) {
            args.push(format!("--table={}", name(t)));
        }
        return Ok(args);
    }
    if !filter.schemas.is_empty() || !filter.exclude_schemas.is_empty() {
        let rows = client
            .query(
                "SELECT nspname::text FROM pg_namespace
                 WHERE nspname NOT IN ('pg_catalog', 'information_schema')
                   AND nspname !~ '^pg_(toast|temp_|toast_temp_)' ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "listing schemas"))?;
        for row in rows {
            let schema: String = column(&row, 0, "listing schemas")?;
            if filter.keeps_schema(&schema) {
                if !filter.schemas.is_empty() {
                    args.push(format!("--schema={}", quote_ident(&schema)));
                }
            } else if filter.schemas.is_empty() {
                args.push(format!("--exclude-schema={}", quote_ident(&schema)));
            }
        }
    }
    for t in &relations {
        if filter.keeps_schema(&t.schema) && !filter.matches_table(t) {
            args.push(format!("--exclude-table={}", name(t)));
        }
    }
    Ok(args)
}

/// Takes ACCESS SHARE locks on the tables to dump, in the snapshot transaction (whose
/// `lock_timeout` is `lock_wait`).
async fn lock_tables(client: &Client, tables: &[&CatalogTable], lock_wait: Duration) -> Result<()> {
    for batch in tables.chunks(500) {
        let names: Vec<String> = batch.iter().map(|t| qualified(&t.table)).collect();
        let locked = client
            .batch_execute(&format!(
                "LOCK TABLE ONLY {} IN ACCESS SHARE MODE",
                names.join(", ")
            ))
            .await;
        if let Err(e) = locked {
            let err = query_error(e, "locking the tables to dump");
            if err.kind() == ErrorKind::Locked {
                let oids: Vec<u32> = batch.iter().map(|t| t.oid).collect();
                return Err(lock_timeout_error(client, lock_wait, Some(&oids)).await);
            }
            return Err(err);
        }
    }
    Ok(())
}

/// The error for a lock wait that timed out in the snapshot transaction (which it
/// rolls back), naming the tables (among `oids`, when given) that someone holds or
/// waits for exclusively.
async fn lock_timeout_error(client: &Client, lock_wait: Duration, oids: Option<&[u32]>) -> Error {
    let _ = client.batch_execute("ROLLBACK").await;
    let busy: Vec<String> = client
        .query(
            "SELECT DISTINCT relation::regclass::text FROM pg_locks
              WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock'
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND ($1::oid[] IS NULL OR relation = ANY($1::oid[]))
              ORDER BY 1",
            &[&oids],
        )
        .await
        .map(|rows| rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
        .unwrap_or_default();
    let mut err = Error::new(
        ErrorKind::Locked,
        format!(
            "could not lock the tables to dump within {lock_wait:?}{}: a concurrent ALTER, \
             DROP or TRUNCATE holds or waits for an exclusive lock",
            if busy.is_empty() {
                String::new()
            } else {
                format!(" ({} busy)", busy.join(", "))
            }
        ),
    );
    if let Some(first) = busy.first() {
        err = err.with_context("table", first);
    }
    err
}

/// Takes work items off the queue until it is empty.
async fn copy_worker(
    client: Arc<Client>,
    leader: bool,
    queue: Arc<Mutex<VecDeque<WorkItem>>>,
    sink: Arc<dyn DumpSink>,
) -> Result<()> {
    let mut locked = HashSet::new();
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let Some(item) = next else { break };
        if !leader && locked.insert(item.table.clone()) {
            // The leader holds ACCESS SHARE; if someone queued an exclusive lock behind
            // it, waiting here would deadlock with the leader, so fail fast as pg_dump does.
            client
                .batch_execute(&format!(
                    "LOCK TABLE ONLY {} IN ACCESS SHARE MODE NOWAIT",
                    qualified(&item.table)
                ))
                .await
                .map_err(|e| {
                    query_error(
                        e,
                        format!(
                            "table {} is locked by another session (a concurrent ALTER or DROP?)",
                            item.table
                        ),
                    )
                    .with_context("table", &item.table)
                })?;
        }
        copy_one(&client, &item, sink.as_ref()).await?;
    }
    Ok(())
}

async fn copy_one(client: &Client, item: &WorkItem, sink: &dyn DumpSink) -> Result<()> {
    let doing = || format!("dumping table {} (stream {})", item.table, item.stream);
    let mut writer = sink.open_stream(item.spec()?).await?;
    let stream = client
        .copy_out(&item.copy_sql())
        .await
        .map_err(|e| query_error(e, doing()).with_context("table", &item.table))?;
    futures::pin_mut!(stream);
    let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
    // The stream ends only on the server's CopyDone; a connection lost before that is
    // an error item, so a truncated table can never be finished as if complete.
    while let Some(piece) = stream.next().await {
        let piece =
            piece.map_err(|e| query_error(e, doing()).with_context("table", &item.table))?;
        buf.extend_from_slice(&piece);
        if buf.len() >= WRITE_CHUNK {
            writer.write(buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        writer.write(buf.freeze()).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// pg_dump's archive of everything but table rows, streamed into the `schema` stream.
async fn dump_schema(
    pg_dump: &std::path::Path,
    config: &ConnConfig,
    snapshot: &str,
    lock_wait: Duration,
    filter_args: &[String],
    spec: StreamSpec,
    sink: &dyn DumpSink,
) -> Result<()> {
    let mut cmd = tokio::process::Command::new(pg_dump);
    cmd.arg(format!("--snapshot={snapshot}"))
        .arg(format!(
            "--lock-wait-timeout={}",
            lock_wait.as_millis().max(1)
        ))
        .args(["--format=custom", "--compress=0", "--no-password"])
        .args(filter_args);
    let env = config.tool_env()?;
    env.apply(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", pg_dump.display()), e))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::internal("pg_dump started without pipes"));
    };
    let stderr_task = tokio::spawn(tools::read_tail(stderr));
    let mut writer = sink.open_stream(spec).await?;
    let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
    loop {
        buf.reserve(WRITE_CHUNK);
        let n = stdout
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::io("reading pg_dump's output", e))?;
        if n == 0 {
            break;
        }
        if buf.len() >= WRITE_CHUNK {
            writer.write(buf.split().freeze()).await?;
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io("waiting for pg_dump", e))?;
    drop(env);
    let stderr = stderr_task.await.unwrap_or_default();
    if !status.success() {
        return Err(config.explain_auth(tool_failure("pg_dump", &status, &stderr)));
    }
    if !buf.is_empty() {
        writer.write(Bytes::from(buf)).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// An error for a failed pg_dump/pg_restore, classified from its message.
pub(crate) fn tool_failure(tool: &str, status: &std::process::ExitStatus, stderr: &str) -> Error {
    // The tools get the same sslmode and certificates as our own connections (see
    // `ConnConfig::tool_env`), and fail the same way: explained alike.
    if let Some(tls) = crate::errors::tls_failure(stderr.trim(), &format!("{tool} ({status})")) {
        return tls;
    }
    if (stderr.contains("lock timeout") || stderr.contains("statement timeout"))
        && stderr.contains("LOCK TABLE ")
    {
        // pg_dump's --lock-wait-timeout (a statement_timeout around its LOCK TABLE):
        // "… Query was: LOCK TABLE s.t IN ACCESS SHARE MODE".
        let table = stderr
            .split("LOCK TABLE ")
            .nth(1)
            .and_then(|rest| rest.split(" IN ACCESS SHARE MODE").next())
            .map(|t| t.trim_start_matches("ONLY ").trim().to_owned());
        let mut message = format!("{tool} could not lock ");
        match &table {
            Some(t) => message.push_str(&format!("table {t}")),
            None => message.push_str("a table"),
        }
        message.push_str(&format!(
            " in time: a concurrent ALTER, DROP or TRUNCATE holds or waits for an exclusive \
             lock ({status}): {stderr}"
        ));
        let mut err = Error::new(ErrorKind::Locked, message).with_context("tool", tool);
        if let Some(t) = table {
            err = err.with_context("table", t);
        }
        return err;
    }
    let kind = if stderr.contains("password authentication failed")
        || stderr.contains("no password supplied")
    {
        ErrorKind::Authentication
    } else if stderr.contains("permission denied") {
        ErrorKind::PermissionDenied
    } else if stderr.contains("could not connect") || stderr.contains("connection to server") {
        ErrorKind::Unreachable
    } else if stderr.contains("server closed the connection") {
        ErrorKind::Interrupted
    } else {
        ErrorKind::Database
    };
    let mut message = format!("{tool} failed ({status})");
    if !stderr.is_empty() {
        message.push_str(": ");
        message.push_str(stderr);
    }
    let roles = crate::roles::missing_roles(stderr);
    if !roles.is_empty() {
        message.push_str(&format!(
            "\nhint: the target server lacks the role(s) {} that own the backup's objects \
             or are granted privileges on them (roles are not part of a backup): create them \
             there first, or restore without ownership (no_owner) when only ownership names \
             them",
            roles.join(", ")
        ));
    }
    let mut err = Error::new(kind, message).with_context("tool", tool);
    for r in roles {
        err = err.with_context("role", r);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, bytes: u64) -> CatalogTable {
        CatalogTable {
            oid: 1,
            table: TableRef::new("s", name),
            partitioned: false,
            bytes,
            columns: vec!["a".into(), "we\"ird".into()],
            extension_member: false,
            unlogged: false,
        }
    }

    #[test]
    fn standby_leaves_out_unlogged_tables() {
        let logged = table("logged", 8192);
        let unlogged = CatalogTable {
            unlogged: true,
            ..table("scratch", 8192)
        };
        let (kept, skipped) = without_unlogged_on_standby(vec![&logged, &unlogged], true);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].table.name, "logged");
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].table.name, "scratch");
        let (kept, skipped) = without_unlogged_on_standby(vec![&logged, &unlogged], false);
        assert_eq!((kept.len(), skipped.len()), (2, 0));
    }

    #[test]
    fn plans_ranges_biggest_first() {
        let small = table("small", 8192);
        let big = table("big", 10 * 8192);
        let items = plan(&[&small, &big], 3 * 8192, 8192, true);
        assert_eq!(items.len(), 5);
        assert!(items[0].table.name == "big");
        let big_items: Vec<_> = items.iter().filter(|i| i.table.name == "big").collect();
        assert_eq!(big_items.len(), 4);
        let ranges: Vec<_> = big_items.iter().map(|i| i.range).collect();
        assert!(ranges.contains(&Some((0, Some(3)))));
        assert!(ranges.contains(&Some((9, None))), "{ranges:?}");
        let sql = big_items
            .iter()
            .find(|i| i.range == Some((9, None)))
            .map(|i| i.copy_sql())
            .unwrap_or_default();
        assert_eq!(
            sql,
            "COPY (SELECT \"a\", \"we\"\"ird\" FROM ONLY \"s\".\"big\" WHERE ctid >= '(9,0)'::tid) TO STDOUT"
        );
        let whole = plan(&[&small], 3 * 8192, 8192, false);
        assert_eq!(
            whole[0].copy_sql(),
            "COPY \"s\".\"small\" (\"a\", \"we\"\"ird\") TO STDOUT"
        );
        assert_eq!(whole[0].stream, "data/s.small/0");
    }
}
