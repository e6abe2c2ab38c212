//! The inspection reports of PostgreSQL: sizes, bloat, indexes, activity, locks, top
//! statements and vacuum state, read from the catalogs, the statistics views and,
//! where installed, `pgstattuple` and `pg_stat_statements`.
//!
//! Every figure says how it was obtained. Bloat in particular comes three ways, in
//! order of preference: `pgstattuple_approx` / `pgstatindex` when the extension is
//! installed; else an estimate from the planner's statistics, computed the way the
//! well-known ioguide / check_postgres queries do (tuple and page layout from the
//! column widths), and withheld — never guessed — when those statistics are missing
//! or stale. What must not live here: sessions and ending them (`sessions.rs`).

use std::collections::BTreeMap;

use ops_core::chrono::{DateTime, Utc};
use ops_core::maintain::{
    ActivityReport, Bloat, BloatReport, Confidence, IndexIssue, IndexReport, Inspect,
    InspectOptions, Inspection, ObjectKind, QueryReport, SessionInfo, SessionKind, SizeReport,
    StatementStats, TableSize, TableVacuum, VacuumReport, lock_trees,
};
use ops_core::{Result, TableRef};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::sessions::{load, require_stats};
use super::{connect, resolve_tables};
use crate::PostgresEngine;
use crate::errors::{column, query_error};

/// [`ops_core::maintain::Maintenance::inspect`]: one report.
pub(crate) async fn inspect(
    engine: &PostgresEngine,
    what: Inspect,
    options: &InspectOptions,
) -> Result<Inspection> {
    let client = connect(engine).await?;
    // Sizes and pgstattuple take a share lock on each table: behind a queued ALTER
    // TABLE a report would wait for as long as the ALTER does. A report that cannot
    // get its lock in time fails (or withholds that table's figure) instead.
    client
        .batch_execute(&format!("SET lock_timeout = {}", LOCK_TIMEOUT_MS))
        .await
        .map_err(|e| query_error(e, "setting the report's lock timeout"))?;
    Ok(match what {
        Inspect::Sizes => Inspection::Sizes(sizes(&client, options).await?),
        Inspect::Bloat => Inspection::Bloat(bloat(&client, options).await?),
        Inspect::Indexes => Inspection::Indexes(indexes(&client, options).await?),
        Inspect::Activity => Inspection::Activity(activity(&client, options).await?),
        Inspect::Locks => Inspection::Locks(lock_trees(&load(&client).await?)),
        Inspect::Queries => Inspection::Queries(queries(&client, options).await?),
        Inspect::Vacuum => Inspection::Vacuum(vacuum(&client, options).await?),
        // `Inspect` is non-exhaustive: a report added in ops-core but not here.
        #[allow(unreachable_patterns)]
        other => {
            return Err(ops_core::Error::invalid(format!(
                "the {other} report is not available for PostgreSQL"
            )));
        }
    })
}

/// How long a report waits for a table's share lock.
const LOCK_TIMEOUT_MS: u32 = 10_000;

/// The chosen tables as two parallel arrays (schemas, names), for
/// `(nspname, relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))`.
async fn chosen(client: &Client, options: &InspectOptions) -> Result<(Vec<String>, Vec<String>)> {
    let tables: Vec<TableRef> = resolve_tables(client, &options.tables).await?;
    Ok(tables.into_iter().map(|t| (t.schema, t.name)).unzip())
}

const CHOSEN: &str =
    "(n.nspname::text, c.relname::text) IN (SELECT * FROM unnest($1::text[], $2::text[]))";

fn time(epoch: Option<f64>) -> Option<DateTime<Utc>> {
    epoch.and_then(|s| DateTime::from_timestamp_micros((s * 1e6).round() as i64))
}

fn bytes(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// Sizes.

async fn sizes(client: &Client, options: &InspectOptions) -> Result<SizeReport> {
    let (schemas, names) = chosen(client, options).await?;
    let doing = "reading table sizes";
    let db = client
        .query_one(
            "SELECT current_database()::text, pg_database_size(current_database())::int8",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, pg_relation_size(c.oid, 'main')::int8,
                        pg_indexes_size(c.oid)::int8,
                        CASE WHEN c.reltoastrelid <> 0
                             THEN pg_total_relation_size(c.reltoastrelid)::int8 END,
                        pg_total_relation_size(c.oid)::int8, c.reltuples::float8,
                        c.relkind = 'p'
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE {CHOSEN}
                  ORDER BY 6 DESC, 1, 2 LIMIT $3"
            ),
            &[&schemas, &names, &limit(options)],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut report = SizeReport {
        database: column(&db, 0, doing)?,
        database_bytes: bytes(column(&db, 1, doing)?),
        tables: Vec::with_capacity(rows.len()),
        notes: Vec::new(),
    };
    let mut never = 0;
    let mut partitioned = false;
    for r in &rows {
        let reltuples: f64 = column(r, 6, doing)?;
        // PostgreSQL 14+: -1 until the first VACUUM or ANALYZE.
        let (rows, rows_method) = if reltuples < 0.0 {
            never += 1;
            (None, "never analyzed")
        } else {
            (Some(reltuples.round() as u64), "pg_class.reltuples")
        };
        partitioned |= column::<bool>(r, 7, doing)?;
        report.tables.push(TableSize {
            schema: column(r, 0, doing)?,
            name: column(r, 1, doing)?,
            heap_bytes: bytes(column(r, 2, doing)?),
            index_bytes: bytes(column(r, 3, doing)?),
            toast_bytes: column::<Option<i64>>(r, 4, doing)?.map(bytes),
            total_bytes: bytes(column(r, 5, doing)?),
            rows,
            rows_method: rows_method.into(),
        });
    }
    report.notes.push(
        "rows are the planner's estimates (pg_class.reltuples, as of the last VACUUM or \
         ANALYZE), not counts"
            .into(),
    );
    if never > 0 {
        report.notes.push(format!(
            "{never} table(s) were never vacuumed or analyzed and have no row estimate: \
             ANALYZE them"
        ));
    }
    if partitioned {
        report.notes.push(
            "a partitioned table holds no data itself: its partitions are listed with \
             their own sizes"
                .into(),
        );
    }
    Ok(report)
}

fn limit(options: &InspectOptions) -> i64 {
    i64::try_from(options.limit).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------
// Bloat.

/// A [`Bloat`] being worked out: withheld until a figure is given.
struct BloatShape {
    schema: String,
    name: String,
    kind: ObjectKind,
    table: Option<String>,
    size_bytes: u64,
    wasted_bytes: Option<u64>,
    wasted_percent: Option<f64>,
    method: String,
    confidence: Confidence,
    note: Option<String>,
}

impl BloatShape {
    fn new(schema: &str, name: &str, kind: ObjectKind, size: u64, method: &str) -> Self {
        Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
            kind,
            table: None,
            size_bytes: size,
            wasted_bytes: None,
            wasted_percent: None,
            method: method.to_owned(),
            confidence: Confidence::Withheld,
            note: None,
        }
    }

    fn wasted(mut self, wasted: f64, confidence: Confidence) -> Self {
        let wasted = wasted.clamp(0.0, self.size_bytes as f64);
        self.wasted_bytes = Some(wasted.round() as u64);
        self.wasted_percent = Some(if self.size_bytes == 0 {
            0.0
        } else {
            wasted * 100.0 / self.size_bytes as f64
        });
        self.confidence = confidence;
        self
    }

    fn withheld(mut self, note: String) -> Self {
        self.wasted_bytes = None;
        self.wasted_percent = None;
        self.confidence = Confidence::Withheld;
        self.note = Some(note);
        self
    }

    fn build(self) -> Bloat {
        Bloat {
            schema: self.schema,
            name: self.name,
            kind: self.kind,
            table: self.table,
            size_bytes: self.size_bytes,
            wasted_bytes: self.wasted_bytes,
            wasted_percent: self.wasted_percent,
            method: self.method,
            confidence: self.confidence,
            note: self.note,
        }
    }
}

/// `n` rounded up to a multiple of `align`.
fn align_up(n: f64, align: f64) -> f64 {
    (n / align).ceil() * align
}

/// PostgreSQL's MAXALIGN on the platforms it runs on (x86-64, arm64).
const MAXALIGN: f64 = 8.0;
/// `SizeOfPageHeaderData`.
const PAGE_HEADER: f64 = 24.0;
/// `sizeof(ItemIdData)`: the line pointer of every tuple.
const ITEM_ID: f64 = 4.0;
/// `SizeofHeapTupleHeader`.
const HEAP_TUPLE_HEADER: f64 = 23.0;
/// `sizeof(IndexTupleData)`.
const INDEX_TUPLE_HEADER: f64 = 8.0;
/// `sizeof(BTPageOpaqueData)`, at the end of every B-tree page.
const BTREE_OPAQUE: f64 = 16.0;

/// One column as the statistics describe it.
#[derive(Debug, Clone)]
struct ColumnStats {
    name: String,
    /// `attlen`: -1 varlena, -2 cstring, else the fixed width.
    len: i16,
    /// `attalign`: c, s, i, d.
    align: String,
    dropped: bool,
    /// `pg_stats.avg_width`, `null_frac`, `n_distinct`; `None` without statistics.
    avg_width: Option<f64>,
    null_frac: Option<f64>,
    n_distinct: Option<f64>,
}

/// The expected width of the data part of a tuple of `columns`, starting at `start`,
/// with each column's alignment: a varlena short enough for a one-byte header (what
/// PostgreSQL stores for values under 127 bytes) is not aligned.
fn data_width(columns: &[ColumnStats], start: f64) -> f64 {
    let mut off = start;
    for c in columns.iter().filter(|c| !c.dropped) {
        let width = c.avg_width.unwrap_or(0.0);
        let nulls = c.null_frac.unwrap_or(0.0);
        let short_varlena = c.len == -1 && width < 127.0;
        if !short_varlena && nulls < 1.0 {
            let a = match c.align.as_str() {
                "s" => 2.0,
                "i" => 4.0,
                "d" => 8.0,
                _ => 1.0,
            };
            off = align_up(off, a);
        }
        off += width * (1.0 - nulls);
    }
    off - start
}

/// The bytes one live heap row of `columns` takes on a page: the tuple (header, null
/// bitmap, data, MAXALIGNed) and its line pointer.
fn heap_row_bytes(columns: &[ColumnStats]) -> f64 {
    let natts = columns.len() as f64;
    let nulls = columns
        .iter()
        .any(|c| c.dropped || c.null_frac.unwrap_or(0.0) > 0.0);
    let bitmap = if nulls {
        ((natts + 7.0) / 8.0).floor()
    } else {
        0.0
    };
    let header = align_up(HEAP_TUPLE_HEADER + bitmap, MAXALIGN);
    align_up(header + data_width(columns, header), MAXALIGN) + ITEM_ID
}

/// The statistical estimate of a heap's free space, in the sense of pgstattuple's
/// `dead_tuple_len + free_space`: the pages minus their headers, minus what the live
/// rows take (tuple, alignment, line pointer), minus the line pointer that
/// PostgreSQL's free space of a page keeps for the next tuple. `reltuples` and
/// `relpages` are scaled to the current size as the planner does, since the table may
/// have grown since they were taken.
fn heap_free_estimate(size: f64, block: f64, relpages: f64, reltuples: f64, row: f64) -> f64 {
    let pages = (size / block).floor();
    let rows = if relpages > 0.0 {
        reltuples / relpages * pages
    } else {
        reltuples
    };
    size - pages * (PAGE_HEADER + ITEM_ID) - rows * row
}

/// The bytes one index entry of `columns` takes on a leaf page.
fn index_entry_bytes(columns: &[ColumnStats]) -> f64 {
    let nulls = columns.iter().any(|c| c.null_frac.unwrap_or(0.0) > 0.0);
    // With a NULL, an index tuple carries a fixed bitmap of INDEX_MAX_KEYS bits.
    let header = align_up(INDEX_TUPLE_HEADER + if nulls { 4.0 } else { 0.0 }, MAXALIGN);
    align_up(header + data_width(columns, header), MAXALIGN) + ITEM_ID
}

/// The pages a freshly built B-tree of `rows` entries of `entry` bytes would take at
/// `fillfactor` percent: leaves, the levels above them, the metapage.
fn btree_pages(rows: f64, entry: f64, block: f64, fillfactor: f64) -> f64 {
    let room = block - PAGE_HEADER - BTREE_OPAQUE;
    let leaves = (rows * entry / (room * fillfactor / 100.0)).ceil().max(1.0);
    // Upper levels are built 70% full; each holds one downlink per page below.
    let mut upper = 0.0;
    let mut level = leaves;
    while level > 1.0 {
        level = (level * entry / (room * 0.7)).ceil();
        upper += level;
    }
    leaves + upper + 1.0
}

/// What is wrong with `columns`' statistics, if anything: missing, never taken,
/// stale. The words end with what to do.
fn stats_problem(
    columns: &[ColumnStats],
    reltuples: f64,
    modified: Option<i64>,
    user: &str,
) -> Option<String> {
    if reltuples < 0.0 {
        return Some("the table was never analyzed: ANALYZE the table".into());
    }
    let missing: Vec<&str> = columns
        .iter()
        .filter(|c| !c.dropped && c.avg_width.is_none())
        .map(|c| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "no statistics for column(s) {} (pg_stats shows user {user} only the columns it \
             may SELECT): ANALYZE the table, or install pgstattuple",
            missing.join(", ")
        ));
    }
    let modified = modified.unwrap_or(0) as f64;
    if modified > 50.0 + 0.2 * reltuples {
        return Some(format!(
            "the statistics are stale ({modified:.0} rows changed since the last analyze, \
             against about {reltuples:.0} rows): ANALYZE the table"
        ));
    }
    None
}

/// A relation's options as a map (`fillfactor`, `deduplicate_items`, ...).
fn reloptions(options: Option<Vec<String>>) -> BTreeMap<String, String> {
    options
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        })
        .collect()
}

/// The schema of extension `name` in this database, when installed and `function`
/// of it may be run by the user; `Err(note)` when installed but not runnable.
async fn extension(
    client: &Client,
    name: &str,
    function: &str,
) -> Result<Option<std::result::Result<String, String>>> {
    let doing = format!("looking for the {name} extension");
    let row = client
        .query_opt(
            "SELECT quote_ident(n.nspname), quote_ident(current_user)
               FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
              WHERE e.extname = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(e, &doing))?;
    let Some(row) = row else { return Ok(None) };
    let schema: String = column(&row, 0, &doing)?;
    let user: String = column(&row, 1, &doing)?;
    if function.is_empty() {
        return Ok(Some(Ok(schema)));
    }
    let allowed = client
        .query_one(
            "SELECT has_function_privilege($1, 'EXECUTE')",
            &[&format!("{schema}.{function}")],
        )
        .await
        .map_err(|e| query_error(e, &doing))?;
    if column::<bool>(&allowed, 0, &doing)? {
        Ok(Some(Ok(schema)))
    } else {
        Ok(Some(Err(format!(
            "{name} is installed, but user {user} may not run it: GRANT pg_stat_scan_tables \
             TO {user}"
        ))))
    }
}

async fn column_stats(
    client: &Client,
    sql: &str,
    oid: u32,
    doing: &str,
) -> Result<Vec<ColumnStats>> {
    let rows = client
        .query(sql, &[&oid])
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(ColumnStats {
            name: column(r, 0, doing)?,
            len: column(r, 1, doing)?,
            align: column(r, 2, doing)?,
            dropped: column(r, 3, doing)?,
            avg_width: column::<Option<i32>>(r, 4, doing)?.map(f64::from),
            null_frac: column::<Option<f64>>(r, 5, doing)?,
            n_distinct: column::<Option<f64>>(r, 6, doing)?,
        });
    }
    Ok(out)
}

const TABLE_COLUMNS: &str = "
    SELECT a.attname::text, a.attlen, a.attalign::text, a.attisdropped,
           s.avg_width, s.null_frac::float8, s.n_distinct::float8
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
                          AND s.attname = a.attname AND NOT s.inherited
     WHERE a.attrelid = $1 AND a.attnum > 0
     ORDER BY a.attnum";

/// An index's attributes with the statistics of the table column behind each (or of
/// the index itself for an expression, which ANALYZE keeps under the index's name).
const INDEX_COLUMNS: &str = "
    SELECT a.attname::text, a.attlen, a.attalign::text, a.attisdropped,
           s.avg_width, s.null_frac::float8, s.n_distinct::float8
      FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indexrelid AND a.attnum > 0
      JOIN pg_class ci ON ci.oid = i.indexrelid
      JOIN pg_class ct ON ct.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = ct.relnamespace
      LEFT JOIN pg_attribute ta ON ta.attrelid = i.indrelid AND ta.attnum > 0
                               AND ta.attnum = i.indkey[a.attnum - 1]
      LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND NOT s.inherited
            AND s.tablename = CASE WHEN ta.attname IS NULL THEN ci.relname ELSE ct.relname END
            AND s.attname = coalesce(ta.attname, a.attname)
     WHERE i.indexrelid = $1
     ORDER BY a.attnum";

/// Whether B-tree deduplication can merge the keys of these types (PostgreSQL
/// disables it for numeric, floats, jsonb and container types).
fn dedup_capable(types: &[(String, String)]) -> bool {
    types.iter().all(|(name, category)| {
        !matches!(name.as_str(), "numeric" | "float4" | "float8" | "jsonb")
            && !matches!(category.as_str(), "A" | "C" | "R")
    })
}

/// Rows per distinct key, from the key columns' `n_distinct`, at least: the product
/// of the columns' distinct counts bounds the distinct keys from above.
fn rows_per_key(keys: &[ColumnStats], rows: f64) -> f64 {
    if rows <= 0.0 {
        return 1.0;
    }
    let mut distinct = 1.0f64;
    for c in keys {
        let nd = c.n_distinct.unwrap_or(-1.0);
        let d = if nd < 0.0 { -nd * rows } else { nd };
        distinct *= d.max(1.0);
    }
    rows / distinct.min(rows)
}

const DEDUP_NOTE: &str = "deduplicated B-tree: the statistical estimate does not apply; \
                          install pgstattuple for pgstatindex";

async fn bloat(client: &Client, options: &InspectOptions) -> Result<BloatReport> {
    let (schemas, names) = chosen(client, options).await?;
    let doing = "reading the tables for the bloat report";
    let setup = client
        .query_one(
            "SELECT current_setting('block_size')::float8,
                    current_setting('server_version_num')::int4,
                    quote_ident(current_user)",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let block: f64 = column(&setup, 0, doing)?;
    let version: i32 = column(&setup, 1, doing)?;
    let user: String = column(&setup, 2, doing)?;
    let mut report = BloatReport::default();
    let pgstattuple = match extension(client, "pgstattuple", "pgstattuple_approx(regclass)").await?
    {
        Some(Ok(schema)) => Some(schema),
        Some(Err(note)) => {
            report.notes.push(note);
            None
        }
        None => None,
    };
    if pgstattuple.is_some() {
        report.notes.push(
            "tables: pgstattuple_approx (reads the pages not marked all-visible, takes the \
             free space of the others from the free space map); indexes: pgstatindex \
             (reads every page of every B-tree: on a large database, name the tables). \
             Wasted = dead rows + free space"
                .into(),
        );
    } else {
        report.notes.push(
            "estimated from the planner's statistics (pg_stats, pg_class), as the \
             ioguide/check_postgres queries do; figures are good to a few percent on \
             ordinary tables, and withheld when the statistics are missing or stale. Line \
             pointers left by deleted rows count as waste here (a rewrite reclaims them); \
             pgstattuple counts them as neither rows nor free space. For measured \
             figures: CREATE EXTENSION pgstattuple"
                .into(),
        );
    }
    let tables = client
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text,
                        pg_relation_size(c.oid, 'main')::int8, c.relpages::float8,
                        c.reltuples::float8, c.reloptions::text[], s.n_mod_since_analyze::int8
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
                  WHERE {CHOSEN} AND c.relkind IN ('r', 'm')
                  ORDER BY 1"
            ),
            &[&schemas, &names],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut objects: Vec<Bloat> = Vec::new();
    let mut reserve_note = false;
    for t in &tables {
        let oid: u32 = column(t, 0, doing)?;
        let schema: String = column(t, 1, doing)?;
        let name: String = column(t, 2, doing)?;
        let size = bytes(column(t, 3, doing)?);
        let relpages: f64 = column(t, 4, doing)?;
        let reltuples: f64 = column(t, 5, doing)?;
        let opts = reloptions(column(t, 6, doing)?);
        let modified: Option<i64> = column(t, 7, doing)?;
        let fillfactor: f64 = opts
            .get("fillfactor")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100.0);
        reserve_note |= fillfactor < 100.0;
        let doing = format!("measuring the bloat of {schema}.{name}");
        let shown = if let Some(ext) = &pgstattuple {
            // dead_tuple_percent + approx_free_percent is pgstattuple's exact
            // dead_tuple_percent + free_percent, measured on fewer pages. Not
            // table_len - approx_tuple_len: on all-visible pages that "tuple length" is
            // the page minus its free space, page header and line pointers included.
            let measured = client
                .query_one(
                    &format!(
                        "SELECT table_len::int8, (dead_tuple_len + approx_free_space)::float8
                           FROM {ext}.pgstattuple_approx($1::oid::regclass)"
                    ),
                    &[&oid],
                )
                .await;
            let method = "pgstattuple_approx";
            match measured {
                Ok(r) => {
                    let len = bytes(column(&r, 0, &doing)?);
                    BloatShape::new(&schema, &name, ObjectKind::Table, len, method)
                        .wasted(column(&r, 1, &doing)?, Confidence::Approximate)
                }
                Err(e) => BloatShape::new(&schema, &name, ObjectKind::Table, size, method)
                    .withheld(query_error(e, &doing).to_string()),
            }
        } else {
            let b = BloatShape::new(&schema, &name, ObjectKind::Table, size, "statistics");
            let columns = column_stats(client, TABLE_COLUMNS, oid, &doing).await?;
            match stats_problem(&columns, reltuples, modified, &user) {
                Some(problem) if size > 0 => b.withheld(problem),
                // Analyzed while empty, filled since by fewer rows than count as stale:
                // against 0 rows, every byte would read as waste.
                _ if relpages <= 0.0 && reltuples <= 0.0 && size > 0 => b.withheld(
                    "the statistics were taken before the table had rows: ANALYZE the table".into(),
                ),
                _ => {
                    let row = heap_row_bytes(&columns);
                    let free = heap_free_estimate(size as f64, block, relpages, reltuples, row);
                    b.wasted(free, Confidence::Estimate)
                }
            }
        };
        objects.push(shown.build());
        objects.extend(
            index_bloat(
                client,
                oid,
                &schema,
                &name,
                block,
                version,
                pgstattuple.as_deref(),
                &user,
                &mut report,
            )
            .await?,
        );
    }
    if reserve_note {
        report.notes.push(
            "a table with a fillfactor below 100 keeps that share of each page free on \
             purpose: it counts in its free space"
                .into(),
        );
    }
    objects.sort_by(|a, b| {
        b.wasted_bytes
            .is_some()
            .cmp(&a.wasted_bytes.is_some())
            .then(b.wasted_bytes.cmp(&a.wasted_bytes))
            .then(b.size_bytes.cmp(&a.size_bytes))
    });
    objects.truncate(options.limit);
    report.objects = objects;
    Ok(report)
}

/// The B-tree indexes of table `oid`, measured or estimated.
#[allow(clippy::too_many_arguments)]
async fn index_bloat(
    client: &Client,
    table_oid: u32,
    schema: &str,
    table: &str,
    block: f64,
    version: i32,
    pgstattuple: Option<&str>,
    user: &str,
    report: &mut BloatReport,
) -> Result<Vec<Bloat>> {
    let doing = format!("reading the indexes of {schema}.{table}");
    let rows = client
        .query(
            "SELECT i.indexrelid, c.relname::text, pg_relation_size(i.indexrelid)::int8,
                    c.reltuples::float8, c.reloptions::text[], i.indisunique,
                    i.indnatts <> i.indnkeyatts, am.amname::text, i.indisvalid,
                    ARRAY(SELECT t.typname::text FROM pg_attribute a
                            JOIN pg_type t ON t.oid = a.atttypid
                           WHERE a.attrelid = i.indexrelid AND a.attnum > 0
                           ORDER BY a.attnum),
                    ARRAY(SELECT t.typcategory::text FROM pg_attribute a
                            JOIN pg_type t ON t.oid = a.atttypid
                           WHERE a.attrelid = i.indexrelid AND a.attnum > 0
                           ORDER BY a.attnum),
                    i.indnkeyatts::int4
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_am am ON am.oid = c.relam
              WHERE i.indrelid = $1 AND c.relkind = 'i'
              ORDER BY 2",
            &[&table_oid],
        )
        .await
        .map_err(|e| query_error(e, &doing))?;
    let mut out = Vec::new();
    let mut other_methods = false;
    for r in &rows {
        let oid: u32 = column(r, 0, &doing)?;
        let name: String = column(r, 1, &doing)?;
        let size = bytes(column(r, 2, &doing)?);
        let reltuples: f64 = column(r, 3, &doing)?;
        let opts = reloptions(column(r, 4, &doing)?);
        let unique: bool = column(r, 5, &doing)?;
        let include: bool = column(r, 6, &doing)?;
        let am: String = column(r, 7, &doing)?;
        let valid: bool = column(r, 8, &doing)?;
        let type_names: Vec<String> = column(r, 9, &doing)?;
        let categories: Vec<String> = column(r, 10, &doing)?;
        let key_count = usize::try_from(column::<i32>(r, 11, &doing)?).unwrap_or(0);
        if am != "btree" {
            other_methods = true;
            continue;
        }
        let fillfactor: f64 = opts
            .get("fillfactor")
            .and_then(|v| v.parse().ok())
            .unwrap_or(90.0);
        let doing = format!("measuring the bloat of index {schema}.{name}");
        let method = if pgstattuple.is_some() {
            "pgstatindex"
        } else {
            "statistics"
        };
        let mut b = BloatShape::new(schema, &name, ObjectKind::Index, size, method);
        b.table = Some(table.to_owned());
        if !valid {
            out.push(
                b.withheld(
                    "invalid index (a failed concurrent build): see the indexes report".into(),
                )
                .build(),
            );
            continue;
        }
        let b = if let Some(ext) = pgstattuple {
            match client
                .query_one(
                    &format!(
                        "SELECT index_size::int8, leaf_pages::int8, empty_pages::int8,
                                deleted_pages::int8, avg_leaf_density::float8
                           FROM {ext}.pgstatindex($1::oid::regclass)"
                    ),
                    &[&oid],
                )
                .await
            {
                Ok(r) => {
                    let index_size = bytes(column(&r, 0, &doing)?);
                    let leaves = column::<i64>(&r, 1, &doing)? as f64;
                    let empty = column::<i64>(&r, 2, &doing)? as f64;
                    let deleted = column::<i64>(&r, 3, &doing)? as f64;
                    let density: f64 = column(&r, 4, &doing)?;
                    // Leaves are built `fillfactor` full; below that is waste.
                    let sparse = if density.is_finite() {
                        leaves * block * (1.0 - density / fillfactor).max(0.0)
                    } else {
                        0.0
                    };
                    let mut b = b;
                    // pgstatindex's own size, read with its figures.
                    b.size_bytes = index_size;
                    b.wasted(sparse + (empty + deleted) * block, Confidence::Exact)
                }
                Err(e) => b.withheld(query_error(e, &doing).to_string()),
            }
        } else {
            let columns = column_stats(client, INDEX_COLUMNS, oid, &doing).await?;
            let keys = &columns[..key_count.min(columns.len())];
            let types: Vec<(String, String)> = type_names.into_iter().zip(categories).collect();
            let dedup_on = !matches!(
                opts.get("deduplicate_items").map(String::as_str),
                Some("off" | "false" | "0" | "no")
            );
            if let Some(problem) = stats_problem(&columns, reltuples, None, user) {
                b.withheld(problem)
            } else if version >= 130_000
                && dedup_on
                && !unique
                && !include
                && dedup_capable(&types)
                && rows_per_key(keys, reltuples) >= 1.5
            {
                b.withheld(DEDUP_NOTE.into())
            } else {
                let entry = index_entry_bytes(&columns);
                let pages = btree_pages(reltuples, entry, block, fillfactor);
                b.wasted(size as f64 - pages * block, Confidence::Estimate)
            }
        };
        out.push(b.build());
    }
    if other_methods && !report.notes.iter().any(|n| n.starts_with("only B-tree")) {
        report
            .notes
            .push("only B-tree indexes are measured (GIN, GiST, hash, BRIN are not)".into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Indexes.

fn issues(
    rows: &[tokio_postgres::Row],
    doing: &str,
    detail: impl Fn(&str, &tokio_postgres::Row) -> Result<String>,
) -> Result<Vec<IndexIssue>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let index: String = column(r, 2, doing)?;
        out.push(IndexIssue {
            schema: column(r, 0, doing)?,
            table: column(r, 1, doing)?,
            detail: detail(&index, r)?,
            index,
            size_bytes: bytes(column(r, 3, doing)?),
            scans: column::<Option<i64>>(r, 4, doing)?.map(bytes),
            definition: column(r, 5, doing)?,
        });
    }
    Ok(out)
}

/// What an invalid index named `index` is, and what to do with it.
fn invalid_detail(index: &str) -> String {
    let stem = index.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.ends_with("_ccnew") {
        format!(
            "invalid: leftover of a failed REINDEX CONCURRENTLY (the new copy, _ccnew); \
             drop it: DROP INDEX CONCURRENTLY {index}"
        )
    } else if stem.ends_with("_ccold") {
        format!(
            "invalid: leftover of a REINDEX CONCURRENTLY that failed after the swap (the \
             old copy, _ccold); drop it: DROP INDEX CONCURRENTLY {index}"
        )
    } else {
        "invalid: a failed CREATE INDEX CONCURRENTLY left it; queries do not use it but \
         every write updates it: drop it and create it again, or REINDEX INDEX \
         CONCURRENTLY"
            .into()
    }
}

const INDEX_FROM: &str = "
      FROM pg_index i
      JOIN pg_class ci ON ci.oid = i.indexrelid
      JOIN pg_class c ON c.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = i.indexrelid";

async fn indexes(client: &Client, options: &InspectOptions) -> Result<IndexReport> {
    let (schemas, names) = chosen(client, options).await?;
    let doing = "looking for unused, duplicate and invalid indexes";
    let select = "SELECT n.nspname::text, c.relname::text, ci.relname::text,
                         pg_relation_size(i.indexrelid)::int8, s.idx_scan::int8,
                         pg_get_indexdef(i.indexrelid)";
    let params: [&(dyn ToSql + Sync); 3] = [&schemas, &names, &limit(options)];
    let unused = client
        .query(
            &format!(
                "{select} {INDEX_FROM}
                  WHERE {CHOSEN} AND s.idx_scan = 0 AND i.indisvalid
                    AND NOT i.indisprimary AND NOT i.indisunique AND NOT i.indisreplident
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                                     WHERE k.conindid = i.indexrelid
                                       AND k.contype IN ('p', 'u', 'x'))
                  ORDER BY 4 DESC, 1, 2, 3 LIMIT $3"
            ),
            &params,
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    // Within a group of identical definitions the first is kept: a constraint's,
    // a primary key, a unique one, then by name; the others are its duplicates.
    let duplicate = client
        .query(
            &format!(
                "WITH d AS (
                   {select}, first_value(ci.relname::text) OVER w AS kept,
                          row_number() OVER w AS nr
                   {INDEX_FROM}
                  WHERE {CHOSEN} AND i.indisvalid
                 WINDOW w AS (PARTITION BY i.indrelid, ci.relam, i.indkey::text,
                                  i.indclass::text, i.indcollation::text, i.indoption::text,
                                  coalesce(pg_get_expr(i.indexprs, i.indrelid), ''),
                                  coalesce(pg_get_expr(i.indpred, i.indrelid), '')
                              ORDER BY EXISTS (SELECT 1 FROM pg_constraint k
                                                WHERE k.conindid = i.indexrelid) DESC,
                                       i.indisprimary DESC, i.indisunique DESC,
                                       ci.relname))
                 SELECT * FROM d WHERE nr > 1 ORDER BY 4 DESC, 1, 2, 3 LIMIT $3"
            ),
            &params,
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let invalid = client
        .query(
            &format!(
                "{select} {INDEX_FROM}
                  WHERE {CHOSEN} AND NOT i.indisvalid
                  ORDER BY 4 DESC, 1, 2, 3 LIMIT $3"
            ),
            &params,
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let since = client
        .query_one(
            "SELECT extract(epoch FROM stats_reset)::float8 FROM pg_stat_database
              WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut report = IndexReport {
        unused: issues(&unused, doing, |_, _| Ok("never scanned".into()))?,
        duplicate: issues(&duplicate, doing, |_, r| {
            Ok(format!("duplicate of {}", column::<String>(r, 6, doing)?))
        })?,
        invalid: issues(&invalid, doing, |index, _| Ok(invalid_detail(index)))?,
        stats_since: time(column(&since, 0, doing)?),
        notes: Vec::new(),
    };
    if report.stats_since.is_none() {
        report.notes.push(
            "since when the scans are counted is unknown: this database's statistics were \
             never reset (pg_stat_database.stats_reset is empty), so the counts cover their \
             whole life, which a crash or an immediate shutdown starts anew"
                .into(),
        );
    }
    report.notes.push(
        "scan counts are of this server only: an index unused here may serve queries on a \
         replica"
            .into(),
    );
    Ok(report)
}

// ---------------------------------------------------------------------------------
// Activity.

async fn activity(client: &Client, options: &InspectOptions) -> Result<ActivityReport> {
    let all = load(client).await?;
    let mut report = ActivityReport::default();
    let clients = all.iter().filter(|s| s.kind == SessionKind::Client);
    for s in clients {
        *report.by_state.entry(s.state.clone()).or_default() += 1;
        let user = s.user.clone().unwrap_or_default();
        *report.by_user.entry(user).or_default() += 1;
        let app = s.application.clone().unwrap_or_default();
        *report.by_application.entry(app).or_default() += 1;
    }
    let longer = options.longer_than.as_secs_f64();
    let mut long: Vec<SessionInfo> = all
        .iter()
        .filter(|s| matches!(s.kind, SessionKind::Client | SessionKind::System))
        .filter(|s| s.state == "active" && s.query_seconds.is_some_and(|q| q >= longer))
        .cloned()
        .collect();
    long.sort_by(|a, b| {
        b.query_seconds
            .unwrap_or(0.0)
            .total_cmp(&a.query_seconds.unwrap_or(0.0))
    });
    long.truncate(options.limit);
    let mut idle: Vec<SessionInfo> = all
        .iter()
        .filter(|s| s.state.starts_with("idle in transaction"))
        .cloned()
        .collect();
    idle.sort_by(|a, b| {
        b.state_seconds
            .unwrap_or(0.0)
            .total_cmp(&a.state_seconds.unwrap_or(0.0))
    });
    idle.truncate(options.limit);
    report.long_running = long;
    report.idle_in_transaction = idle;
    report.sessions = all;
    Ok(report)
}

// ---------------------------------------------------------------------------------
// Queries.

/// How to enable pg_stat_statements, given whether the server has loaded the library.
fn enable_statements(loaded: bool, database: &str) -> String {
    if loaded {
        format!(
            "pg_stat_statements is loaded (shared_preload_libraries) but not created in \
             database {database}: run CREATE EXTENSION pg_stat_statements there"
        )
    } else {
        format!(
            "pg_stat_statements is not enabled: add it to the server's \
             shared_preload_libraries (shared_preload_libraries = 'pg_stat_statements' in \
             postgresql.conf, or ALTER SYSTEM SET shared_preload_libraries = \
             'pg_stat_statements', keeping any libraries already listed), restart the \
             server, then run CREATE EXTENSION pg_stat_statements in database {database}"
        )
    }
}

async fn queries(client: &Client, options: &InspectOptions) -> Result<QueryReport> {
    require_stats(client, "read other users' statements").await?;
    let doing = "reading pg_stat_statements";
    let setup = client
        .query_one(
            "SELECT current_database()::text, current_setting('server_version_num')::int4,
                    'pg_stat_statements' = ANY (string_to_array(
                        replace(current_setting('shared_preload_libraries'), ' ', ''), ','))",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let database: String = column(&setup, 0, doing)?;
    let version: i32 = column(&setup, 1, doing)?;
    let loaded: bool = column(&setup, 2, doing)?;
    let mut report = QueryReport {
        source: "pg_stat_statements".into(),
        ..QueryReport::default()
    };
    let schema = match extension(client, "pg_stat_statements", "").await? {
        Some(Ok(schema)) => schema,
        _ => {
            report.message = Some(enable_statements(loaded, &database));
            return Ok(report);
        }
    };
    let (total, mean) = if version >= 130_000 {
        ("total_exec_time", "mean_exec_time")
    } else {
        ("total_time", "mean_time")
    };
    let rows = client
        .query(
            &format!(
                "SELECT left(s.query, 1000), s.calls::int8, s.{total}::float8, s.{mean}::float8,
                        s.rows::int8
                   FROM {schema}.pg_stat_statements s
                  WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  ORDER BY s.{total} DESC LIMIT $1"
            ),
            &[&limit(options)],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        // 55000: created in the database, but the library is not loaded.
        Err(e) if e.code().is_some_and(|c| c.code() == "55000") => {
            report.message = Some(enable_statements(false, &database));
            return Ok(report);
        }
        Err(e) => return Err(query_error(e, doing)),
    };
    report.available = true;
    for r in &rows {
        report.statements.push(StatementStats {
            query: column::<Option<String>>(r, 0, doing)?.unwrap_or_default(),
            calls: bytes(column(r, 1, doing)?),
            total_ms: column(r, 2, doing)?,
            mean_ms: column(r, 3, doing)?,
            rows: bytes(column(r, 4, doing)?),
        });
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------
// Vacuum.

async fn vacuum(client: &Client, options: &InspectOptions) -> Result<VacuumReport> {
    let (schemas, names) = chosen(client, options).await?;
    let doing = "reading the vacuum statistics";
    let db = client
        .query_one(
            "SELECT age(datfrozenxid)::int8,
                    current_setting('autovacuum_freeze_max_age')::int8
               FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    // autovacuum's own rule (relation_needs_vacanalyze): threshold + scale factor x
    // reltuples (0 before the first analyze), the table's settings before the server's.
    let rows = client
        .query(
            &format!(
                "WITH t AS (
                   SELECT n.nspname::text AS schema, c.relname::text AS name,
                          coalesce(s.n_live_tup, 0)::int8 AS live,
                          coalesce(s.n_dead_tup, 0)::int8 AS dead,
                          coalesce(s.n_mod_since_analyze, 0)::int8 AS modified,
                          extract(epoch FROM s.last_vacuum)::float8 AS lv,
                          extract(epoch FROM s.last_autovacuum)::float8 AS lav,
                          extract(epoch FROM s.last_analyze)::float8 AS la,
                          extract(epoch FROM s.last_autoanalyze)::float8 AS laa,
                          CASE WHEN c.relkind IN ('r', 'm') THEN
                            coalesce((SELECT option_value::float8
                                        FROM pg_options_to_table(c.reloptions)
                                       WHERE option_name = 'autovacuum_vacuum_threshold'),
                                     current_setting('autovacuum_vacuum_threshold')::float8)
                            + coalesce((SELECT option_value::float8
                                          FROM pg_options_to_table(c.reloptions)
                                         WHERE option_name = 'autovacuum_vacuum_scale_factor'),
                                       current_setting('autovacuum_vacuum_scale_factor')::float8)
                              * greatest(c.reltuples, 0)::float8
                          END AS at_dead,
                          CASE WHEN c.relkind IN ('r', 'm') THEN age(c.relfrozenxid)::int8 END
                            AS xid_age
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
                    WHERE {CHOSEN})
                 SELECT * FROM t ORDER BY dead DESC, schema, name LIMIT $3"
            ),
            &[&schemas, &names, &limit(options)],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut report = VacuumReport {
        database_xid_age: column::<Option<i64>>(&db, 0, doing)?.map(bytes),
        freeze_max_age: column::<Option<i64>>(&db, 1, doing)?.map(bytes),
        tables: Vec::with_capacity(rows.len()),
    };
    for r in &rows {
        let dead = bytes(column(r, 3, doing)?);
        let at: Option<f64> = column(r, 9, doing)?;
        report.tables.push(TableVacuum {
            schema: column(r, 0, doing)?,
            name: column(r, 1, doing)?,
            live_rows: bytes(column(r, 2, doing)?),
            dead_rows: dead,
            modified_since_analyze: bytes(column(r, 4, doing)?),
            last_vacuum: time(column(r, 5, doing)?),
            last_autovacuum: time(column(r, 6, doing)?),
            last_analyze: time(column(r, 7, doing)?),
            last_autoanalyze: time(column(r, 8, doing)?),
            autovacuum_at_dead_rows: at.map(|a| a.floor().max(0.0) as u64),
            autovacuum_due: at.is_some_and(|a| dead as f64 > a),
            xid_age: column::<Option<i64>>(r, 10, doing)?.map(bytes),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(len: i16, align: &str, width: f64, nulls: f64) -> ColumnStats {
        ColumnStats {
            name: "c".into(),
            len,
            align: align.into(),
            dropped: false,
            avg_width: Some(width),
            null_frac: Some(nulls),
            n_distinct: Some(-1.0),
        }
    }

    #[test]
    fn heap_rows_follow_the_page_layout() {
        // (id int, payload text of 20 characters): 24-byte header, 4 + 21 bytes of
        // data, MAXALIGNed to 56, and a 4-byte line pointer: 136 rows per 8 kB page.
        let cols = [col(4, "i", 4.0, 0.0), col(-1, "i", 21.0, 0.0)];
        assert_eq!(heap_row_bytes(&cols), 60.0);
        // A bigint after an int is aligned to 8.
        let cols = [col(4, "i", 4.0, 0.0), col(8, "d", 8.0, 0.0)];
        assert_eq!(heap_row_bytes(&cols), 24.0 + 16.0 + 4.0);
        // Every other row of 2,000,000 deleted and vacuumed: about 46% free, as
        // pgstattuple measures it.
        let size = 14_706.0 * 8192.0;
        let free = heap_free_estimate(size, 8192.0, 14_706.0, 1_000_000.0, 60.0);
        let percent = free * 100.0 / size;
        assert!((49.0..51.0).contains(&percent), "{percent}");
    }

    #[test]
    fn bloat_figures_are_clamped_and_withheld_without_one() {
        let b = BloatShape::new("s", "t", ObjectKind::Table, 1000, "statistics")
            .wasted(250.0, Confidence::Estimate)
            .build();
        assert_eq!((b.wasted_bytes, b.wasted_percent), (Some(250), Some(25.0)));
        let over = BloatShape::new("s", "t", ObjectKind::Table, 1000, "statistics")
            .wasted(5000.0, Confidence::Estimate)
            .build();
        assert_eq!(
            (over.wasted_bytes, over.wasted_percent),
            (Some(1000), Some(100.0))
        );
        let empty = BloatShape::new("s", "t", ObjectKind::Table, 0, "statistics")
            .wasted(-3.0, Confidence::Estimate)
            .build();
        assert_eq!(
            (empty.wasted_bytes, empty.wasted_percent),
            (Some(0), Some(0.0))
        );
        let w = BloatShape::new("s", "t", ObjectKind::Index, 1000, "statistics")
            .withheld("why".into())
            .build();
        assert_eq!((w.wasted_bytes, w.confidence), (None, Confidence::Withheld));
        assert_eq!(w.note.as_deref(), Some("why"));
    }

    #[test]
    fn invalid_leftovers_are_named() {
        assert!(invalid_detail("t_pkey_ccnew").contains("_ccnew"));
        assert!(invalid_detail("t_pkey_ccnew1").contains("REINDEX CONCURRENTLY"));
        assert!(invalid_detail("t_pkey_ccold").contains("_ccold"));
        assert!(invalid_detail("t_idx").contains("CREATE INDEX CONCURRENTLY"));
    }

    #[test]
    fn duplicates_per_key_and_stats_problems() {
        let mut k = col(4, "i", 4.0, 0.0);
        k.n_distinct = Some(10.0);
        assert!(rows_per_key(&[k.clone()], 200_000.0) > 1000.0);
        k.n_distinct = Some(-1.0);
        assert_eq!(rows_per_key(&[k.clone()], 200_000.0), 1.0);
        assert!(stats_problem(&[k.clone()], -1.0, None, "u").is_some());
        assert!(stats_problem(&[k.clone()], 1000.0, Some(10), "u").is_none());
        assert!(
            stats_problem(&[k.clone()], 1000.0, Some(900), "u")
                .is_some_and(|p| p.contains("ANALYZE the table"))
        );
        k.avg_width = None;
        assert!(
            stats_problem(&[k], 1000.0, None, "u").is_some_and(|p| p.contains("ANALYZE the table"))
        );
        assert!(enable_statements(false, "db").contains("shared_preload_libraries"));
        assert!(enable_statements(true, "db").contains("CREATE EXTENSION pg_stat_statements"));
    }
}
