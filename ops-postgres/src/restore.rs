//! The restore: pre-data DDL, then every table stream loaded with `COPY` while each
//! table's indexes and constraints are built as soon as its rows are in, then the rest
//! of data and post-data.
//!
//! The schema stream (pg_dump's custom archive, small) is staged in a private temporary
//! file because pg_restore needs a seekable file for `-j`; table data is never staged:
//! each stream goes straight from the source into `COPY … FROM STDIN`, `jobs` at a
//! time, biggest first. Loading happens after `pg_restore --section=pre-data` (tables
//! without indexes, foreign keys or triggers). A table's primary key, unique and
//! exclusion constraints and indexes are built (by `pg_restore -L`, on the entries the
//! [`schedule`](crate::schedule) picks) as soon as its data is loaded, while other tables
//! still load, and a foreign key once both of its tables are loaded; the final
//! `pg_restore --section=data --section=post-data -j` does everything else (sequence
//! values, large objects, triggers, rules, policies, materialized view refreshes,
//! comments, grants, small tables' indexes), which is the order pg_restore itself uses.
//!
//! Every restore connection (ours and pg_restore's, through `PGOPTIONS`) runs with
//! [`RestoreSession`] settings: no synchronous commit (the restore ends with one
//! durable commit, which flushes everything before it), a `maintenance_work_mem` sized
//! per job, no statement or lock timeout; an index built while other tables still load
//! gets no parallel workers (the other connections already use the cores the restore
//! was given), the final run's builds get the server's own setting. A table with one stream is loaded with
//! `TRUNCATE` and `COPY … FREEZE` in one transaction: its rows are written frozen and
//! all-visible, so the restored database needs no anti-wraparound vacuum of every page
//! later, and the index builds that follow read no commit log.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ops_core::{
    Error, ErrorKind, RestoreOptions, RestoreReport, Result, StreamRole, StreamSource, StreamSpec,
    TableRef,
};
use sqlx::Connection;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::catalog::{OBJECT_MAP_META, ObjectMap};
use crate::config::{ConnConfig, ToolEnv};
use crate::dump::{META_BYTES, META_COLUMNS, tool_failure};
use crate::errors::{column, query_error, sqlx_error};
use crate::globals::{DATABASE_PROPERTIES_META, DatabaseProperties};
use crate::session::{connect_pinned, qualified, quote_ident, quote_literal};
use crate::{roles, schedule, toc, tools};

/// Restores `source` into the database of `config`.
pub(crate) async fn restore(
    config: &ConnConfig,
    bin_dir: Option<PathBuf>,
    source: Arc<dyn StreamSource>,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    if !options.tables.is_empty() && !options.schemas.is_empty() {
        return Err(Error::invalid(
            "give either tables or schemas to restore, not both",
        ));
    }
    // The database's own properties, which pg_dump leaves out without --create.
    let properties: Option<DatabaseProperties> = source
        .streams()
        .iter()
        .find(|s| s.role == StreamRole::Schema)
        .and_then(|s| s.meta.get(DATABASE_PROPERTIES_META))
        .and_then(|json| serde_json::from_str(json).ok());
    let mut created_warnings = Vec::new();
    if options.create {
        create_database_like(config, properties.as_ref(), &mut created_warnings).await?;
    }
    let outcome = match restore_into(config, bin_dir, source, options).await {
        Ok(mut report) if options.create => {
            if let Some(p) = &properties {
                apply_properties(config, p, &mut created_warnings).await;
            }
            created_warnings.append(&mut report.warnings);
            report.warnings = created_warnings;
            Ok(report)
        }
        other => other,
    };
    match outcome {
        Err(err) if options.create && !options.keep_failed => match drop_database(config).await {
            Ok(()) => Err(err.with_context(
                "cleanup",
                format!(
                    "dropped the database {} that the restore created",
                    config.dbname
                ),
            )),
            Err(drop_err) => Err(err.with_context(
                "cleanup",
                format!("could not drop the database {}: {drop_err}", config.dbname),
            )),
        },
        other => other,
    }
}

/// What part of the backup to restore.
enum Selection {
    All,
    Tables(BTreeSet<TableRef>),
    Schemas(Vec<String>),
}

impl Selection {
    fn wants(&self, table: &TableRef) -> bool {
        match self {
            Self::All => true,
            Self::Tables(set) => set.contains(table),
            Self::Schemas(s) => s.contains(&table.schema),
        }
    }
}

async fn restore_into(
    config: &ConnConfig,
    bin_dir: Option<PathBuf>,
    source: Arc<dyn StreamSource>,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let schema = source
        .streams()
        .iter()
        .find(|s| s.role == StreamRole::Schema)
        .cloned()
        .ok_or_else(|| {
            Error::invalid(
                "the backup holds no schema stream (a data-only dump); it cannot be restored",
            )
        })?;
    let map: ObjectMap = match schema.meta.get(OBJECT_MAP_META) {
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::corrupt(format!("the schema stream's object map is damaged: {e}"))
        })?,
        None => ObjectMap::default(),
    };
    let (pg_restore, restore_major) = tools::resolve_program("pg_restore", bin_dir).await?;
    if let Some(dump_major) = schema
        .meta
        .get("pg_dump_major")
        .and_then(|m| m.parse::<u32>().ok())
        && restore_major < dump_major
    {
        return Err(Error::new(
            ErrorKind::MissingTool,
            format!(
                "pg_restore {restore_major} is older than the pg_dump {dump_major} that wrote \
                 this backup: install postgresql-client-{dump_major}"
            ),
        ));
    }

    let selection = selection(&map, options)?;

    // Stage the schema archive (schema only: it holds no table rows) and read its table
    // of contents before touching the target: a backup that cannot be read must fail
    // the restore while the target is still as it was (`--clean` drops things).
    let staged = tempfile::Builder::new()
        .prefix("dbops-schema-")
        .suffix(".pgdump")
        .tempfile()
        .map_err(|e| Error::io("creating a temporary file for the schema archive", e))?;
    stage(source.as_ref(), &schema.name, staged.path()).await?;
    let toc_text = list_archive(&pg_restore, staged.path(), &[])
        .await
        .map_err(|e| e.during("reading the backup's schema archive"))?;

    let entries = toc::parse_list(&toc_text);
    let control = connect_pinned(config).await?;

    // The entries to restore (None: all), and what the chosen tables need besides.
    let (list, needed) = match &selection {
        Selection::All => (None, None),
        Selection::Tables(tables) => {
            let mut existing = HashSet::new();
            for t in map.tables.iter().filter(|t| tables.contains(&t.table)) {
                for (_, target) in &t.foreign_keys {
                    if !tables.contains(target)
                        && !existing.contains(target)
                        && table_exists(&control, target).await?
                    {
                        existing.insert(target.clone());
                    }
                }
            }
            let ids = toc::select_tables(&entries, &map, tables, &|t| existing.contains(t));
            let needed = toc::prerequisites(&entries, &map, &ids);
            let needed = (!needed.is_empty()).then(|| toc::list_file(&entries, &needed));
            (Some(toc::list_file(&entries, &ids)), needed)
        }
        Selection::Schemas(schemas) => {
            let mut args = Vec::new();
            for s in schemas {
                args.push(OsString::from("-n"));
                args.push(OsString::from(s));
            }
            let in_schemas: HashSet<u32> =
                toc::parse_list(&list_archive(&pg_restore, staged.path(), &args).await?)
                    .into_iter()
                    .map(|e| e.id)
                    .collect();
            let ids = toc::select_schemas(&entries, &map, schemas, &in_schemas);
            (Some(toc::list_file(&entries, &ids)), None)
        }
    };
    // What a scratch restore must prepare is read from everything it will restore.
    let script_list = list
        .as_ref()
        .map(|l| format!("{l}{}", needed.as_deref().unwrap_or("")));
    let list_text = list;
    let list_file = match &list_text {
        Some(text) => Some(write_list_file(text).await?),
        None => None,
    };

    let mut warnings = Vec::new();
    prepare_target(
        &control,
        config,
        &selection,
        options.clean,
        &Archive {
            pg_restore: &pg_restore,
            path: staged.path(),
            list: list_file.as_ref().map(|f| f.path()),
        },
        &mut warnings,
    )
    .await?;
    let prepared = if options.scratch {
        let script =
            schema_script(&pg_restore, staged.path(), script_list, options.no_owner).await?;
        let created = roles::create_missing(&control, &roles::needed_roles(&script)).await?;
        for c in &created {
            tracing::info!("scratch restore into {}: created {c}", config.dbname);
        }
        created
    } else {
        Vec::new()
    };
    if let Some(needed) = needed {
        restore_prerequisites(
            &pg_restore,
            config,
            staged.path(),
            &needed,
            options.no_owner,
            &mut warnings,
        )
        .await?;
    }

    let session = RestoreSession::read(&control, options.jobs).await?;
    let runner = PgRestore {
        program: &pg_restore,
        config,
        archive: staged.path(),
        no_owner: options.no_owner,
        pgoptions: session.pgoptions(),
    };
    runner
        .run(&["pre-data"], 1, list_file.as_ref().map(|f| f.path()))
        .await
        .map_err(|e| e.during("restoring the schema (pre-data)"))?;

    let streams: Vec<StreamSpec> = source
        .streams()
        .iter()
        .filter(|s| s.role == StreamRole::TableData)
        .filter(|s| s.table.as_ref().is_some_and(|t| selection.wants(t)))
        .cloned()
        .collect();
    let roots = Arc::new(hash_partition_roots(&control, &streams).await?);

    // What is built while tables load, read from the archive's own dependencies.
    let ids_of = |text: String| -> HashSet<u32> {
        toc::parse_list(&text).into_iter().map(|e| e.id).collect()
    };
    let pre_data =
        ids_of(list_archive(&pg_restore, staged.path(), &["--section=pre-data".into()]).await?);
    let post_data =
        ids_of(list_archive(&pg_restore, staged.path(), &["--section=post-data".into()]).await?);
    let restoring: Option<HashSet<u32>> = list_text.as_ref().map(|l| ids_of(l.clone()));
    let mut loaded: HashMap<TableRef, u64> = HashMap::new();
    for s in &streams {
        if let Some(t) = &s.table {
            *loaded.entry(t.clone()).or_default() += stream_bytes(s);
        }
    }
    let via_root: HashSet<TableRef> = roots.keys().cloned().collect();
    let plan = schedule::plan(&schedule::Inputs {
        entries: &entries,
        pre_data: &pre_data,
        post_data: &post_data,
        restoring: restoring.as_ref(),
        map: &map,
        loaded: &loaded,
        via_root: &via_root,
        min_bytes: schedule::EARLY_MIN_BYTES,
    });
    let (tables, built) = load_tables(
        Loader {
            config: config.clone(),
            source: Arc::clone(&source),
            roots,
            session: session.clone(),
            entries: Arc::new(entries.clone()),
            runner: runner.owned(),
        },
        streams,
        plan,
        options.jobs,
    )
    .await?;

    // The rest: everything not built early, in pg_restore's own parallel order.
    let rest = if built.is_empty() {
        None
    } else {
        let ids: Vec<u32> = entries
            .iter()
            .map(|e| e.id)
            .filter(|id| !built.contains(id) && restoring.as_ref().is_none_or(|r| r.contains(id)))
            .collect();
        Some(write_list_file(&toc::list_file(&entries, &ids)).await?)
    };
    let rest_list = rest.as_ref().or(list_file.as_ref()).map(|f| f.path());
    runner
        .run(&["data", "post-data"], options.jobs.max(1), rest_list)
        .await
        .map_err(|e| {
            e.during("restoring sequence values, large objects, indexes and constraints")
        })?;
    durable_commit(&control).await?;

    let mut report = RestoreReport::default();
    report.database = config.dbname.clone();
    report.tables = tables;
    report.warnings = warnings;
    report.prepared = prepared;
    Ok(report)
}

async fn write_list_file(text: &str) -> Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("dbops-toc-")
        .tempfile()
        .map_err(|e| Error::io("creating a temporary list file", e))?;
    tokio::fs::write(file.path(), text)
        .await
        .map_err(|e| Error::io("writing the pg_restore list file", e))?;
    Ok(file)
}

fn selection(map: &ObjectMap, options: &RestoreOptions) -> Result<Selection> {
    if !options.tables.is_empty() {
        let by_name: BTreeMap<&TableRef, &crate::catalog::TableObjects> =
            map.tables.iter().map(|t| (&t.table, t)).collect();
        let mut chosen = BTreeSet::new();
        let mut todo: Vec<TableRef> = options.tables.clone();
        while let Some(t) = todo.pop() {
            let entry = by_name.get(&t).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("table {t} is not in this backup"),
                )
                .with_context("table", &t)
            })?;
            if chosen.insert(t.clone()) {
                todo.extend(entry.partitions.iter().cloned());
            }
        }
        return Ok(Selection::Tables(chosen));
    }
    if !options.schemas.is_empty() {
        for s in &options.schemas {
            if !map.schemas.contains_key(s) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("schema {s} is not in this backup"),
                ));
            }
        }
        return Ok(Selection::Schemas(options.schemas.clone()));
    }
    Ok(Selection::All)
}

async fn table_exists(client: &Client, table: &TableRef) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified(table)])
        .await
        .map_err(|e| query_error(e, "looking up a table in the target"))?;
    column(&row, 0, "looking up a table in the target")
}

/// The staged schema archive and the `-L` list of the entries to restore.
struct Archive<'a> {
    pg_restore: &'a Path,
    path: &'a Path,
    list: Option<&'a Path>,
}

/// How long each statement of a clean waits for its lock. A DROP queued behind an
/// application's transaction makes every later query on that object queue behind it,
/// so the wait is short (as pg_repack's), and an object in use stops the clean with
/// nothing dropped instead of stalling the application.
const CLEAN_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// How many objects a refusal names before it says how many more there are.
const NAMED_IN_REFUSAL: usize = 20;

/// Refuses a non-empty target, or cleans it when asked.
///
/// A whole-database clean leaves the target holding only what the backup creates: it
/// drops what the archive will create and everything else the target holds (its own
/// tables, views, sequences, routines, types and schemas, and large objects), and
/// names what the backup did not hold in a warning; only extensions, their members and
/// kinds it does not drop stay, named in another warning. A `tables` or `schemas`
/// clean drops only what the archive (the selected part of it) will create, and
/// anything outside the selection that depends on that stops the restore. Either way
/// the drops run in one transaction: nothing is dropped unless everything is.
async fn prepare_target(
    client: &Client,
    config: &ConnConfig,
    selection: &Selection,
    clean: bool,
    archive: &Archive<'_>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let held: Vec<Held> = match selection {
        Selection::All => held_objects(client).await?,
        Selection::Tables(tables) => {
            let mut present = Vec::new();
            for t in tables {
                if table_exists(client, t).await? {
                    present.push(Held::kept(format!("table {t}")));
                }
            }
            present
        }
        Selection::Schemas(schemas) => target_contents(client, Some(schemas), 10_000)
            .await?
            .into_iter()
            .map(Held::kept)
            .collect(),
    };
    if held.is_empty() {
        return Ok(());
    }
    if !clean {
        return Err(not_empty(config, &held));
    }
    let archive_drops = drop_statements(archive).await?;
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL search_path = ''; SET LOCAL check_function_bodies = false;
             SET LOCAL lock_timeout = {}",
            CLEAN_LOCK_TIMEOUT.as_millis()
        ))
        .await
        .map_err(|e| query_error(e, "starting to clean the target"))?;
    let cleaned = async {
        let mut steps: Vec<DropStep> = Vec::new();
        if matches!(selection, Selection::All) {
            // What the target holds and the archive does not drop, listed again inside
            // the transaction (with its search_path, as pg_dump's). The statements are
            // written as pg_restore writes its own: the same object, the same text.
            let backup: HashSet<&str> = archive_drops.iter().map(String::as_str).collect();
            for h in held_objects(client).await? {
                if let Some(sql) = h.drop.filter(|sql| !backup.contains(sql.as_str())) {
                    steps.push(DropStep { what: h.what, sql });
                }
            }
        }
        let extras: Vec<String> = steps.iter().map(|s| s.what.clone()).collect();
        // The target's own objects first (one of its views may stand on a table the
        // backup replaces), its schemas last, once they are empty; run_drops retries
        // what another object still needs.
        let schemas_at = steps
            .iter()
            .position(|s| s.what.starts_with("schema "))
            .unwrap_or(steps.len());
        let own_schemas = steps.split_off(schemas_at);
        steps.extend(archive_drops.iter().map(|sql| DropStep {
            what: describe_drop(sql),
            sql: sql.clone(),
        }));
        steps.extend(own_schemas);
        run_drops(client, &steps).await?;
        let left: Vec<String> = match selection {
            Selection::All => held_objects(client)
                .await?
                .into_iter()
                .map(|h| h.what)
                .collect(),
            Selection::Schemas(schemas) => target_contents(client, Some(schemas), 21).await?,
            Selection::Tables(_) => Vec::new(),
        };
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| query_error(e, "committing the clean of the target"))?;
        Ok::<_, Error>((extras, left))
    }
    .await;
    let (extras, left) = match cleaned {
        Ok(done) => done,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    if !extras.is_empty() {
        warnings.push(format!(
            "restore with clean dropped {} object(s) the backup does not hold: {}",
            extras.len(),
            extras.join(", ")
        ));
    }
    if !left.is_empty() {
        let more = if left.len() > 20 { ", …" } else { "" };
        warnings.push(format!(
            "restore with clean left in place what it does not drop and the backup does \
             not hold: {}{more}",
            left.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// An object found in the target: how messages name it, and the statement that drops
/// it (`None`: a clean leaves it in place).
struct Held {
    what: String,
    drop: Option<String>,
}

impl Held {
    fn kept(what: String) -> Self {
        Self { what, drop: None }
    }
}

/// One statement of a clean, and the object it drops as messages name it.
struct DropStep {
    what: String,
    sql: String,
}

/// Everything a whole-database restore finds in the target, in the order to drop it:
/// relations (views first; sequences owned by a column go with their table), routines
/// (not a range type's constructors, which go with it), types and domains (not the
/// row, array and multirange types that come with a relation or type), large objects,
/// schemas. Objects of extensions (`pg_depend` deptype `e`) and
/// system schemas are not listed. Extensions, objects of other kinds in user schemas
/// (operators, collations, text search objects, base types, …) and the schemas that
/// hold them or an extension's objects are listed without a drop: a clean leaves them.
///
/// The drops are written exactly as `pg_restore --clean --if-exists` writes them
/// (`DROP FUNCTION IF EXISTS public.f(x integer);`, quoted by `quote_ident` as
/// pg_dump's `fmtId` quotes), so a statement the archive also issues is an object of
/// the backup. Run with `search_path = ''` (in the clean's transaction) for the
/// type names in function signatures to be qualified as pg_dump qualifies them; run
/// outside it, only those names differ, which only the refusal message shows.
async fn held_objects(client: &Client) -> Result<Vec<Held>> {
    const SQL: &str = "
    WITH nsp AS (
      SELECT oid, nspname FROM pg_namespace
       WHERE nspname <> 'information_schema' AND nspname !~ '^pg_'
    ),
    member AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e'),
    other AS (
      SELECT d.refobjid AS nsp, pg_describe_object(d.classid, d.objid, 0) AS what
        FROM pg_depend d JOIN nsp n ON n.oid = d.refobjid
       WHERE d.refclassid = 'pg_namespace'::regclass AND d.deptype = 'n'
         AND d.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass,
                               'pg_type'::regclass, 'pg_extension'::regclass)
         AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = d.classid AND m.objid = d.objid)
         AND NOT EXISTS (SELECT 1 FROM pg_depend a WHERE a.classid = d.classid
                            AND a.objid = d.objid AND a.deptype IN ('a', 'i'))
      UNION ALL
      SELECT t.typnamespace, format('type %I.%I', n.nspname, t.typname)
        FROM pg_type t JOIN nsp n ON n.oid = t.typnamespace
       WHERE t.typtype IN ('b', 'p')
         AND NOT EXISTS (SELECT 1 FROM pg_type a WHERE a.typarray = t.oid)
         AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_type'::regclass AND m.objid = t.oid)
    ),
    dropped AS (
      SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                  WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind,
             format('%I.%I', n.nspname, c.relname) AS name,
             CASE WHEN c.relkind IN ('v', 'm') THEN 1 ELSE 2 END AS ord
        FROM pg_class c JOIN nsp n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
         AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_class'::regclass AND m.objid = c.oid)
         AND NOT (c.relkind = 'S' AND EXISTS (
               SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
      UNION ALL
      SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
             format('%I.%I(%s)', n.nspname, p.proname,
                    CASE WHEN p.prokind = 'a' AND p.pronargs = 0 THEN '*'
                         ELSE pg_get_function_identity_arguments(p.oid) END),
             3
        FROM pg_proc p JOIN nsp n ON n.oid = p.pronamespace
       WHERE NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_proc'::regclass AND m.objid = p.oid)
         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                            AND d.objid = p.oid AND d.deptype = 'i')
      UNION ALL
      SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
             format('%I.%I', n.nspname, t.typname), 4
        FROM pg_type t JOIN nsp n ON n.oid = t.typnamespace
       WHERE t.typtype IN ('c', 'd', 'e', 'r')
         AND (t.typtype <> 'c' OR (SELECT r.relkind FROM pg_class r WHERE r.oid = t.typrelid) = 'c')
         AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_type'::regclass AND m.objid = t.oid)
         AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_class'::regclass AND m.objid = t.typrelid)
         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                            AND d.objid = t.oid AND d.deptype = 'i')
    )
    SELECT what, drop FROM (
      SELECT lower(kind) || ' ' || name AS what,
             format('DROP %s IF EXISTS %s;', kind, name) AS drop, ord
        FROM dropped
      UNION ALL
      SELECT 'large object ' || l.oid,
             format('SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = %L;', l.oid),
             5
        FROM pg_largeobject_metadata l
      UNION ALL
      SELECT 'schema ' || quote_ident(n.nspname),
             CASE WHEN NOT EXISTS (SELECT 1 FROM other o WHERE o.nsp = n.oid)
                   AND NOT EXISTS (SELECT 1 FROM pg_extension x WHERE x.extnamespace = n.oid)
                   AND NOT EXISTS (SELECT 1 FROM member m
                                    WHERE m.classid = 'pg_namespace'::regclass AND m.objid = n.oid)
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                     JOIN member m ON m.classid = d.classid AND m.objid = d.objid
                                    WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid)
                  THEN format('DROP SCHEMA IF EXISTS %I;', n.nspname) END,
             9
        FROM nsp n WHERE n.nspname <> 'public'
      UNION ALL
      SELECT what, NULL, 10 FROM other
      UNION ALL
      SELECT 'extension ' || quote_ident(extname), NULL, 10 FROM pg_extension
       WHERE extname <> 'plpgsql'
    ) held ORDER BY ord, what";
    const DOING: &str = "listing what the target database holds";
    let rows = client
        .query(SQL, &[])
        .await
        .map_err(|e| query_error(e, DOING))?;
    rows.iter()
        .map(|r| {
            Ok(Held {
                what: column(r, 0, DOING)?,
                drop: column(r, 1, DOING)?,
            })
        })
        .collect()
}

/// How messages name the object of one of pg_restore's drop statements:
/// `DROP MATERIALIZED VIEW IF EXISTS public.mv;` → `materialized view public.mv`; a
/// statement of another form is shown as it is.
fn describe_drop(sql: &str) -> String {
    let sql = sql.trim_end_matches(';');
    if let Some((kind, name)) = sql
        .strip_prefix("DROP ")
        .and_then(|rest| rest.split_once(" IF EXISTS "))
    {
        return format!("{} {name}", kind.to_lowercase());
    }
    if sql.contains("lo_unlink")
        && let Some((_, oid)) = sql.rsplit_once("oid = '")
    {
        return format!("large object {}", oid.trim_end_matches('\''));
    }
    sql.to_owned()
}

/// The DROP statements pg_restore would issue with `--clean --if-exists` for the
/// selected entries, in its order (dependents first).
async fn drop_statements(archive: &Archive<'_>) -> Result<Vec<String>> {
    let mut cmd = tokio::process::Command::new(archive.pg_restore);
    cmd.args([
        "--clean",
        "--if-exists",
        "--section=pre-data",
        "--section=post-data",
        "-f",
        "-",
    ]);
    if let Some(list) = archive.list {
        cmd.arg("-L").arg(list);
    }
    cmd.arg(archive.path);
    let out = read_archive(cmd, archive.pg_restore).await?;
    Ok(parse_drop_script(&out))
}

/// The statements between pg_restore's fixed session settings and the first object it
/// creates: the drops. Psql meta-commands (`\restrict`), comments and the `SET`s of
/// the header are left out.
fn parse_drop_script(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        if current.is_empty() {
            if line.starts_with("-- Name: ")
                || line.starts_with("-- TOC entry ")
                || line.starts_with("-- Data for Name: ")
            {
                break;
            }
            if line.starts_with("--") || line.starts_with('\\') || line.trim().is_empty() {
                continue;
            }
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        let quotes_closed = current.matches('"').count().is_multiple_of(2)
            && current.matches('\'').count().is_multiple_of(2);
        if line.ends_with(';') && quotes_closed {
            let stmt = std::mem::take(&mut current);
            if !(stmt.starts_with("SET ") || stmt.starts_with("SELECT pg_catalog.set_config(")) {
                out.push(stmt);
            }
        }
    }
    out
}

/// Runs the drops in the open transaction, each under a savepoint. One that fails
/// because something still depends on it is tried again after the others (pg_restore's
/// order is not always right for partitions, and the target's own objects come in no
/// dependency order); if something that is not dropped keeps depending on it, the
/// clean stops with the dependents named. A lock not granted within the transaction's
/// `lock_timeout` stops it naming the object. The caller rolls back on an error, so
/// nothing is dropped then.
async fn run_drops(client: &Client, steps: &[DropStep]) -> Result<()> {
    let mut pending: Vec<&DropStep> = steps.iter().collect();
    loop {
        let mut blocked: Vec<(&DropStep, bool, String)> = Vec::new();
        for step in &pending {
            let attempt = client
                .batch_execute(&format!(
                    "SAVEPOINT dbops_clean; {}; RELEASE SAVEPOINT dbops_clean",
                    step.sql
                ))
                .await;
            let Err(err) = attempt else { continue };
            client
                .batch_execute("ROLLBACK TO SAVEPOINT dbops_clean; RELEASE SAVEPOINT dbops_clean")
                .await
                .map_err(|e| query_error(e, "recovering from a failed drop of the clean"))?;
            let failed = |err| {
                query_error(
                    err,
                    format!(
                        "restore with clean stopped, nothing was dropped: dropping {}",
                        step.what
                    ),
                )
                .with_context("object", &step.what)
            };
            let Some(db) = err.as_db_error() else {
                return Err(failed(err));
            };
            match db.code().code() {
                // dependent_objects_still_exist; invalid_table_definition ("cannot drop
                // inherited constraint": it goes with its partition); wrong_object_type
                // (the target has a table where the backup has a view of that name: it
                // is dropped as the target's own object first).
                "2BP01" | "42P16" | "42809" => {
                    let mut why = db.message().to_owned();
                    if let Some(detail) = db.detail() {
                        why.push_str(": ");
                        why.push_str(&detail.replace('\n', "; "));
                    }
                    blocked.push((step, db.code().code() == "2BP01", why));
                }
                // Already gone in the target (a changed copy, or dropped with its
                // table): nothing to drop.
                "42703" | "42704" | "42P01" | "3F000" => {}
                // lock_not_available: lock_timeout ran out.
                "55P03" => {
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!(
                            "restore with clean stopped, nothing was dropped: {} is in use (its \
                             lock was not granted within {} s); restore again when the \
                             sessions using it are done",
                            step.what,
                            CLEAN_LOCK_TIMEOUT.as_secs()
                        ),
                    )
                    .with_context("object", &step.what)
                    .with_context("sqlstate", "55P03")
                    .temporary());
                }
                _ => return Err(failed(err)),
            }
        }
        if blocked.is_empty() {
            return Ok(());
        }
        if blocked.len() == pending.len() {
            let dependents = blocked.iter().any(|(_, dependents, _)| *dependents);
            let reasons: Vec<String> = blocked
                .into_iter()
                .filter(|(_, d, _)| *d || !dependents)
                .map(|(_, _, why)| why)
                .collect();
            return Err(Error::new(
                ErrorKind::TargetNotEmpty,
                format!(
                    "restore with clean stopped, nothing was dropped: the target holds objects \
                     that the clean does not drop and that depend on objects it must drop ({}). \
                     Drop or change those objects first, or restore into a new database",
                    reasons.join("; ")
                ),
            ));
        }
        pending = blocked.into_iter().map(|(step, _, _)| step).collect();
    }
}

fn not_empty(config: &ConnConfig, held: &[Held]) -> Error {
    let names: Vec<&str> = held
        .iter()
        .take(NAMED_IN_REFUSAL)
        .map(|h| h.what.as_str())
        .collect();
    let more = held.len().saturating_sub(NAMED_IN_REFUSAL);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Error::new(
        ErrorKind::TargetNotEmpty,
        format!(
            "the target database {} is not empty (it holds {}{more}): restore with clean to \
             replace what it holds, or into a new database",
            config.dbname,
            names.join(", ")
        ),
    )
}

/// Up to `limit` user objects found in the target (in `schemas` only, when given).
async fn target_contents(
    client: &Client,
    schemas: Option<&[String]>,
    limit: i64,
) -> Result<Vec<String>> {
    let filter = match schemas {
        None => String::new(),
        Some(s) => {
            let list: Vec<String> = s.iter().map(|n| quote_literal(n)).collect();
            format!("AND n.nspname IN ({})", list.join(", "))
        }
    };
    let globals = if schemas.is_none() {
        "UNION ALL SELECT 'extension ' || quote_ident(extname) FROM pg_extension WHERE extname <> 'plpgsql'
         UNION ALL SELECT 'large object ' || oid FROM pg_largeobject_metadata"
    } else {
        ""
    };
    // Relations that stand on their own (not indexes or TOAST), and types that are not a
    // relation's row type or an array type.
    let sql = format!(
        "SELECT d FROM (
           SELECT 'schema ' || quote_ident(n.nspname) AS d FROM pg_namespace n
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'public')
              AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' {filter}
           UNION ALL SELECT 'relation ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') {filter}
           UNION ALL SELECT 'function ' || quote_ident(n.nspname) || '.' || quote_ident(p.proname)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' {filter}
           UNION ALL SELECT 'type ' || quote_ident(n.nspname) || '.' || quote_ident(t.typname)
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = 'public' {filter}
              AND (t.typrelid = 0 OR t.typtype = 'c' AND
                   (SELECT relkind FROM pg_class r WHERE r.oid = t.typrelid) = 'c')
              AND NOT EXISTS (SELECT 1 FROM pg_type a WHERE a.typarray = t.oid)
           {globals}
         ) found LIMIT {limit}"
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| query_error(e, "checking whether the target is empty"))?;
    rows.iter()
        .map(|r| column(r, 0, "checking whether the target is empty"))
        .collect()
}

/// Copies the schema stream into `path`.
pub(crate) async fn stage(source: &dyn StreamSource, name: &str, path: &Path) -> Result<()> {
    let mut stream = source.open(name).await?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| Error::io("opening the temporary schema archive", e))?;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| e.during(format!("reading stream {name}")))?;
        file.write_all(&piece)
            .await
            .map_err(|e| Error::io("writing the temporary schema archive", e))?;
    }
    file.flush()
        .await
        .map_err(|e| Error::io("writing the temporary schema archive", e))
}

/// A pg_restore command connecting as `config` says; keep the [`ToolEnv`] (which holds
/// the password file) until the child has exited.
fn tool_command(program: &Path, config: &ConnConfig) -> Result<(tokio::process::Command, ToolEnv)> {
    let mut cmd = tokio::process::Command::new(program);
    let env = config.tool_env()?;
    env.apply(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok((cmd, env))
}

/// `pg_restore -l -v [args] archive`.
async fn list_archive(pg_restore: &Path, archive: &Path, args: &[OsString]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(pg_restore);
    cmd.arg("-l").arg("-v").args(args).arg(archive);
    read_archive(cmd, pg_restore).await
}

/// The SQL pg_restore would run for the pre-data and post-data sections (of the
/// entries of `list` only, when given): every ownership, grant, default privilege and
/// policy, without table rows or large object contents. Printed, not run: pg_restore
/// connects nowhere.
pub(crate) async fn schema_script(
    pg_restore: &Path,
    archive: &Path,
    list: Option<String>,
    no_owner: bool,
) -> Result<String> {
    let list_file = match list {
        Some(text) => Some(write_list_file(&text).await?),
        None => None,
    };
    let mut cmd = tokio::process::Command::new(pg_restore);
    cmd.args(["--section=pre-data", "--section=post-data", "-f", "-"]);
    if no_owner {
        cmd.arg("--no-owner");
    }
    if let Some(f) = &list_file {
        cmd.arg("-L").arg(f.path());
    }
    cmd.arg(archive);
    read_archive(cmd, pg_restore)
        .await
        .map_err(|e| e.during("reading which roles the backup names"))
}

/// Runs a pg_restore that only reads the archive (it connects nowhere), returning its
/// output: a failure means the archive cannot be read.
async fn read_archive(mut cmd: tokio::process::Command, pg_restore: &Path) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::io(format!("running {}", pg_restore.display()), e))?;
    if !out.status.success() {
        return Err(Error::corrupt(format!(
            "pg_restore cannot read the schema archive ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .with_context("tool", "pg_restore"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Restores the types, functions and schemas the chosen tables need; those that exist
/// already are kept as they are (with a warning naming them), any other error fails.
async fn restore_prerequisites(
    pg_restore: &Path,
    config: &ConnConfig,
    archive: &Path,
    list: &str,
    no_owner: bool,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let file = write_list_file(list).await?;
    let (mut cmd, _env) = tool_command(pg_restore, config)?;
    cmd.args(["--no-password", "--section=pre-data", "-d"])
        .arg(config.dbname_conninfo())
        .arg("-L")
        .arg(file.path());
    if no_owner {
        cmd.arg("--no-owner");
    }
    cmd.arg(archive);
    let out = cmd
        .output()
        .await
        .map_err(|e| Error::io(format!("running {}", pg_restore.display()), e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (existing, real_errors): (Vec<&str>, Vec<&str>) = stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .partition(|l| l.contains("already exists"));
    if !real_errors.is_empty() || (!out.status.success() && existing.is_empty()) {
        return Err(config
            .explain_auth(tool_failure("pg_restore", &out.status, stderr.trim()))
            .during("restoring the types and functions the chosen tables need"));
    }
    if !existing.is_empty() {
        let names: Vec<&str> = existing
            .iter()
            .map(|l| l.split("ERROR:").nth(1).unwrap_or(l).trim())
            .collect();
        warnings.push(format!(
            "kept what the target already has instead of the backup's version (the tables \
             restored may expect the backup's): {}",
            names.join("; ")
        ));
    }
    Ok(())
}

async fn run_pg_restore(
    pg_restore: &Path,
    config: &ConnConfig,
    args: Vec<OsString>,
    pgoptions: &str,
) -> Result<()> {
    let (mut cmd, _env) = tool_command(pg_restore, config)?;
    cmd.args(args).env("PGOPTIONS", pgoptions);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", pg_restore.display()), e))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::internal("pg_restore started without pipes"));
    };
    let out_task = tokio::spawn(tools::read_tail(stdout));
    let err_task = tokio::spawn(tools::read_tail(stderr));
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io("waiting for pg_restore", e))?;
    let _ = out_task.await;
    let stderr = err_task.await.unwrap_or_default();
    if !status.success() {
        return Err(config.explain_auth(tool_failure("pg_restore", &status, &stderr)));
    }
    Ok(())
}

/// For the tables of `streams` that are partitions under a HASH-partitioned table: the
/// root of their partition tree, through which their rows must be loaded. A hash of
/// the key (of an enum, whose hash is its oid, or of a type whose hash function or
/// collation differs) can place a row in another partition on the target than on the
/// source, and COPY straight into the source's partition would then fail; pg_dump's
/// `--load-via-partition-root` does the same.
async fn hash_partition_roots(
    client: &Client,
    streams: &[StreamSpec],
) -> Result<HashMap<TableRef, TableRef>> {
    let tables: BTreeSet<&TableRef> = streams.iter().filter_map(|s| s.table.as_ref()).collect();
    let names: Vec<String> = tables.iter().map(|t| qualified(t)).collect();
    let by_name: HashMap<String, TableRef> = tables
        .iter()
        .map(|t| (qualified(t), (*t).clone()))
        .collect();
    let rows = client
        .query(
            "SELECT q.name, rn.nspname::text, r.relname::text
               FROM unnest($1::text[]) AS q(name)
               CROSS JOIN LATERAL (SELECT to_regclass(q.name)::oid AS leaf) l
               JOIN pg_class r ON r.oid = pg_partition_root(l.leaf)
               JOIN pg_namespace rn ON rn.oid = r.relnamespace
              WHERE r.oid <> l.leaf
                AND EXISTS (SELECT 1 FROM pg_partition_ancestors(l.leaf) a
                              JOIN pg_partitioned_table pt ON pt.partrelid = a.relid
                             WHERE pt.partstrat = 'h')",
            &[&names],
        )
        .await
        .map_err(|e| query_error(e, "looking up hash-partitioned tables"))?;
    let mut out = HashMap::new();
    for row in rows {
        const DOING: &str = "looking up hash-partitioned tables";
        let name: String = column(&row, 0, DOING)?;
        let root = TableRef::new(
            column::<String>(&row, 1, DOING)?,
            column::<String>(&row, 2, DOING)?,
        );
        if let Some(leaf) = by_name.get(&name) {
            out.insert(leaf.clone(), root);
        }
    }
    Ok(out)
}

fn stream_bytes(s: &StreamSpec) -> u64 {
    s.meta
        .get(META_BYTES)
        .and_then(|b| b.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Session settings for every connection of a restore: ours (`SET`) and pg_restore's
/// (`PGOPTIONS`).
#[derive(Debug, Clone)]
struct RestoreSession {
    /// Per connection, in kB: never below the server's own setting.
    maintenance_work_mem_kb: i64,
}

impl RestoreSession {
    /// Index builds may together use about `shared_buffers` (a quarter of the server's
    /// memory, as usually sized): each of `jobs` connections gets its share, at least
    /// 64 MiB and at most 2 GiB, and never less than the server already gives.
    async fn read(client: &Client, jobs: usize) -> Result<Self> {
        const DOING: &str = "reading the server's memory settings";
        let row = client
            .query_one(
                "SELECT (SELECT setting::int8 FROM pg_settings WHERE name = 'maintenance_work_mem'),
                        (SELECT setting::int8 * 8 FROM pg_settings WHERE name = 'shared_buffers')",
                &[],
            )
            .await
            .map_err(|e| query_error(e, DOING))?;
        let current: i64 = column(&row, 0, DOING)?;
        let shared_kb: i64 = column(&row, 1, DOING)?;
        let jobs = i64::try_from(jobs.max(1)).unwrap_or(i64::MAX);
        let share = (shared_kb / jobs).clamp(64 << 10, 2 << 20);
        Ok(Self {
            maintenance_work_mem_kb: share.max(current),
        })
    }

    fn settings(&self) -> [(&'static str, String); 5] {
        [
            ("synchronous_commit", "off".into()),
            (
                "maintenance_work_mem",
                format!("{}kB", self.maintenance_work_mem_kb),
            ),
            ("statement_timeout", "0".into()),
            ("lock_timeout", "0".into()),
            ("idle_in_transaction_session_timeout", "0".into()),
        ]
    }

    /// `-c name=value …` for a libpq tool's `PGOPTIONS`.
    fn pgoptions(&self) -> String {
        self.settings()
            .iter()
            .map(|(k, v)| format!("-c {k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The same as `SET` statements for a connection of ours.
    fn sql(&self) -> String {
        self.settings()
            .iter()
            .map(|(k, v)| format!("SET {k} = {};", quote_literal(v)))
            .collect::<String>()
    }
}

/// One durable commit at the end: its WAL flush covers every asynchronous commit of
/// the restore before it, so a restore reported done survives a crash of the server.
async fn durable_commit(client: &Client) -> Result<()> {
    client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT;")
        .await
        .map_err(|e| query_error(e, "making the restore durable (a final synchronous commit)"))
}

/// How pg_restore runs within a restore.
struct PgRestore<'a> {
    program: &'a Path,
    config: &'a ConnConfig,
    archive: &'a Path,
    no_owner: bool,
    pgoptions: String,
}

/// [`PgRestore`] owned, for the loading tasks.
#[derive(Clone)]
struct PgRestoreOwned {
    program: PathBuf,
    config: ConnConfig,
    archive: PathBuf,
    no_owner: bool,
    pgoptions: String,
}

impl PgRestore<'_> {
    fn owned(&self) -> PgRestoreOwned {
        PgRestoreOwned {
            program: self.program.to_owned(),
            config: self.config.clone(),
            archive: self.archive.to_owned(),
            no_owner: self.no_owner,
            pgoptions: self.pgoptions.clone(),
        }
    }

    /// Runs `sections` of the archive (the entries of `list` only, when given).
    async fn run(&self, sections: &[&str], jobs: usize, list: Option<&Path>) -> Result<()> {
        let mut args: Vec<OsString> = vec![
            "--exit-on-error".into(),
            "--no-password".into(),
            "-d".into(),
            self.config.dbname_conninfo().into(),
        ];
        for s in sections {
            args.push(format!("--section={s}").into());
        }
        if self.no_owner {
            args.push("--no-owner".into());
        }
        if jobs > 1 {
            args.push(format!("--jobs={jobs}").into());
        }
        if let Some(f) = list {
            args.push("-L".into());
            args.push(f.as_os_str().to_owned());
        }
        args.push(self.archive.as_os_str().to_owned());
        run_pg_restore(self.program, self.config, args, &self.pgoptions).await
    }
}

impl PgRestoreOwned {
    fn borrowed(&self) -> PgRestore<'_> {
        PgRestore {
            program: &self.program,
            config: &self.config,
            archive: &self.archive,
            no_owner: self.no_owner,
            pgoptions: self.pgoptions.clone(),
        }
    }
}

/// What every loading task shares.
struct Loader {
    config: ConnConfig,
    source: Arc<dyn StreamSource>,
    roots: Arc<HashMap<TableRef, TableRef>>,
    session: RestoreSession,
    entries: Arc<Vec<toc::TocEntry>>,
    runner: PgRestoreOwned,
}

/// A unit of work for a loading task.
enum Job {
    Load(StreamSpec),
    /// Steps of the plan, built by one pg_restore run; `crowded` while other tasks
    /// still load (then the build gets no parallel workers: the restore's other
    /// connections already use the cores it was given).
    Build {
        steps: Vec<usize>,
        crowded: bool,
    },
}

enum Next {
    Job(Job),
    Wait,
    Done,
}

/// The schedule as it runs.
struct Progress {
    plan: schedule::Plan,
    loads: VecDeque<StreamSpec>,
    /// Streams still to load, per table.
    streams_left: HashMap<TableRef, usize>,
    /// Per step: tables not yet loaded, steps not yet done.
    tables_left: Vec<usize>,
    steps_left: Vec<usize>,
    ready: Vec<usize>,
    busy: usize,
    failed: bool,
    built: HashSet<u32>,
    rows: BTreeMap<String, u64>,
}

impl Progress {
    fn new(plan: schedule::Plan, streams: Vec<StreamSpec>) -> Self {
        let mut streams_left: HashMap<TableRef, usize> = HashMap::new();
        for s in &streams {
            if let Some(t) = &s.table {
                *streams_left.entry(t.clone()).or_default() += 1;
            }
        }
        let tables_left = plan
            .steps
            .iter()
            .map(|s| {
                s.tables
                    .iter()
                    .filter(|t| streams_left.contains_key(*t))
                    .count()
            })
            .collect();
        let steps_left = plan.steps.iter().map(|s| s.after.len()).collect();
        let mut p = Self {
            plan,
            loads: streams.into(),
            streams_left,
            tables_left,
            steps_left,
            ready: Vec::new(),
            busy: 0,
            failed: false,
            built: HashSet::new(),
            rows: BTreeMap::new(),
        };
        for i in 0..p.plan.steps.len() {
            p.check_ready(i);
        }
        p
    }

    fn check_ready(&mut self, step: usize) {
        if self.tables_left[step] == 0 && self.steps_left[step] == 0 {
            self.ready.push(step);
        }
    }

    /// A table's own keys and indexes before anything else (biggest first: they
    /// unblock foreign keys and use the rows while they are hot), then every ready
    /// foreign key in one run, then the next stream (biggest first).
    fn next(&mut self) -> Next {
        if self.failed {
            return Next::Done;
        }
        let steps = &self.plan.steps;
        let own = self
            .ready
            .iter()
            .enumerate()
            .filter(|(_, s)| !steps[**s].foreign_key)
            .max_by_key(|(_, s)| steps[**s].bytes)
            .map(|(i, _)| i);
        let crowded = !self.loads.is_empty() || self.busy > 0;
        let job = if let Some(i) = own {
            Some(Job::Build {
                steps: vec![self.ready.swap_remove(i)],
                crowded,
            })
        } else if !self.ready.is_empty() {
            Some(Job::Build {
                steps: std::mem::take(&mut self.ready),
                crowded,
            })
        } else {
            self.loads.pop_front().map(Job::Load)
        };
        match job {
            Some(job) => {
                self.busy += 1;
                Next::Job(job)
            }
            None if self.busy == 0 => Next::Done,
            None => Next::Wait,
        }
    }

    fn loaded(&mut self, table: &TableRef, rows: u64) {
        *self.rows.entry(table.to_string()).or_default() += rows;
        let left = self.streams_left.get_mut(table).map(|n| {
            *n -= 1;
            *n
        });
        if left == Some(0) {
            for i in 0..self.plan.steps.len() {
                if self.plan.steps[i].tables.contains(table) {
                    self.tables_left[i] -= 1;
                    self.check_ready(i);
                }
            }
        }
    }

    /// The entries of `steps` and what building them is, for messages.
    fn describe(&self, steps: &[usize]) -> (Vec<u32>, String) {
        let mut ids: Vec<u32> = steps
            .iter()
            .flat_map(|s| self.plan.steps[*s].entries.iter().copied())
            .collect();
        ids.sort_unstable();
        let what = match steps {
            [one] if !self.plan.steps[*one].foreign_key => format!(
                "building the indexes and constraints of table {}",
                self.plan.steps[*one].table
            ),
            _ => {
                let tables: BTreeSet<String> = steps
                    .iter()
                    .map(|s| self.plan.steps[*s].table.to_string())
                    .collect();
                format!(
                    "adding the foreign keys of {}",
                    tables.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        };
        (ids, what)
    }

    fn built(&mut self, steps: &[usize]) {
        for &done in steps {
            self.built
                .extend(self.plan.steps[done].entries.iter().copied());
            for i in 0..self.plan.steps.len() {
                if self.plan.steps[i].after.contains(&done) {
                    self.steps_left[i] -= 1;
                    self.check_ready(i);
                }
            }
        }
    }
}

/// Loads the table streams and builds the plan's early steps, `jobs` tasks at a time;
/// returns the rows per table and the entries built.
async fn load_tables(
    loader: Loader,
    mut streams: Vec<StreamSpec>,
    plan: schedule::Plan,
    jobs: usize,
) -> Result<(BTreeMap<String, u64>, HashSet<u32>)> {
    streams.sort_by_key(|s| std::cmp::Reverse(stream_bytes(s)));
    // One stream per table: loaded frozen (TRUNCATE and COPY FREEZE in one transaction).
    let mut per_table: HashMap<TableRef, usize> = HashMap::new();
    for t in streams.iter().filter_map(|s| s.table.as_ref()) {
        *per_table.entry(t.clone()).or_default() += 1;
    }
    let jobs = jobs.clamp(1, streams.len().max(1));
    let loader = Arc::new(loader);
    let per_table = Arc::new(per_table);
    let progress = Arc::new(Mutex::new(Progress::new(plan, streams)));
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for _ in 0..jobs {
        let loader = Arc::clone(&loader);
        let progress = Arc::clone(&progress);
        let wake = Arc::clone(&wake);
        let per_table = Arc::clone(&per_table);
        tasks.spawn(async move {
            let lock = || progress.lock().unwrap_or_else(PoisonError::into_inner);
            let client = connect_pinned(&loader.config).await?;
            client
                .batch_execute(&format!("SET search_path = '';{}", loader.session.sql()))
                .await
                .map_err(|e| query_error(e, "setting up a restore connection"))?;
            loop {
                let notified = wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = lock().next();
                let outcome = match next {
                    Next::Done => break,
                    Next::Wait => {
                        notified.await;
                        continue;
                    }
                    Next::Job(Job::Load(spec)) => {
                        let freeze = spec.table.as_ref().is_some_and(|t| {
                            per_table.get(t) == Some(&1) && !loader.roots.contains_key(t)
                        });
                        load_stream(
                            &client,
                            loader.source.as_ref(),
                            &spec,
                            &loader.roots,
                            freeze,
                        )
                        .await
                        .map(|(table, n)| lock().loaded(&table, n))
                    }
                    Next::Job(Job::Build { steps, crowded }) => {
                        let (ids, what) = lock().describe(&steps);
                        build(&loader, &ids, crowded)
                            .await
                            .map_err(|e| e.during(what))
                            .map(|()| lock().built(&steps))
                    }
                };
                let mut p = lock();
                p.busy -= 1;
                if outcome.is_err() {
                    p.failed = true;
                }
                drop(p);
                wake.notify_waiters();
                outcome?;
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::internal(format!("restore task failed: {e}")))??;
    }
    let p = progress.lock().unwrap_or_else(PoisonError::into_inner);
    Ok((p.rows.clone(), p.built.clone()))
}

/// Runs the archive entries `ids` (post-data) with one `pg_restore -L`; `crowded`:
/// without parallel workers.
async fn build(loader: &Loader, ids: &[u32], crowded: bool) -> Result<()> {
    let list = write_list_file(&toc::list_file(&loader.entries, ids)).await?;
    let mut runner = loader.runner.borrowed();
    if crowded {
        runner
            .pgoptions
            .push_str(" -c max_parallel_maintenance_workers=0");
    }
    runner.run(&["post-data"], 1, Some(list.path())).await
}

/// Loads one stream; `freeze`: the table has no other stream, so it is truncated and
/// loaded with `COPY … FREEZE` in one transaction.
async fn load_stream(
    client: &Client,
    source: &dyn StreamSource,
    spec: &StreamSpec,
    roots: &HashMap<TableRef, TableRef>,
    freeze: bool,
) -> Result<(TableRef, u64)> {
    let table = spec
        .table
        .clone()
        .ok_or_else(|| Error::corrupt(format!("table data stream {} names no table", spec.name)))?;
    let into = roots.get(&table).unwrap_or(&table);
    let columns: Vec<String> = match spec.meta.get(META_COLUMNS) {
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::corrupt(format!(
                "column list of stream {} is damaged: {e}",
                spec.name
            ))
        })?,
        None => Vec::new(),
    };
    let doing = || format!("restoring table {table} from stream {}", spec.name);
    let frozen = freeze
        && begin_frozen_load(client, into)
            .await
            .map_err(|e| e.during(doing()))?;
    let cols = if columns.is_empty() {
        String::new()
    } else {
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        format!(" ({})", cols.join(", "))
    };
    let sql = format!(
        "COPY {}{cols} FROM STDIN{}",
        qualified(into),
        if frozen { " (FREEZE)" } else { "" }
    );
    let mut input = source.open(&spec.name).await?;
    let sink = client
        .copy_in::<_, bytes::Bytes>(&sql)
        .await
        .map_err(|e| query_error(e, doing()).with_context("table", &table))?;
    futures::pin_mut!(sink);
    while let Some(piece) = input.next().await {
        // A damaged chunk: return its own error. Dropping the sink and then the
        // connection makes the server abort the COPY (and its transaction); no partial
        // table is committed.
        let piece = piece.map_err(|e| e.during(doing()))?;
        sink.send(piece)
            .await
            .map_err(|e| query_error(e, doing()).with_context("table", &table))?;
    }
    let rows = sink
        .finish()
        .await
        .map_err(|e| query_error(e, doing()).with_context("table", &table))?;
    if frozen {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| query_error(e, doing()).with_context("table", &table))?;
    }
    Ok((table, rows))
}

/// Opens the transaction of a frozen load: `BEGIN; TRUNCATE ONLY table` (the table,
/// created by this restore, is empty; truncating it in this transaction is what lets
/// `COPY FREEZE` write its rows frozen). False, and no transaction open, when the role
/// may not truncate it: the rows then go in as a plain `COPY`.
async fn begin_frozen_load(client: &Client, table: &TableRef) -> Result<bool> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| query_error(e, "starting a transaction"))?;
    match client
        .batch_execute(&format!("TRUNCATE ONLY {}", qualified(table)))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| query_error(e, "ending a transaction"))?;
            Ok(false)
        }
        Err(e) => Err(query_error(
            e,
            format!("emptying table {table} for a frozen load"),
        )),
    }
}

fn maintenance(config: &ConnConfig) -> ConnConfig {
    config.with_dbname(if config.dbname == "postgres" {
        "template1"
    } else {
        "postgres"
    })
}

async fn maintenance_connection(config: &ConnConfig) -> Result<sqlx::PgConnection> {
    let maint = maintenance(config);
    match maint.sqlx_connect().await {
        Ok(c) => Ok(c),
        Err(err) if err.kind() == ErrorKind::NotFound && maint.dbname == "postgres" => {
            config.with_dbname("template1").sqlx_connect().await
        }
        Err(err) => Err(err),
    }
}

/// `CREATE DATABASE` from template0 in UTF8; the database must not exist.
pub(crate) async fn create_database(config: &ConnConfig) -> Result<()> {
    let mut conn = maintenance_connection(config).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&config.dbname)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| sqlx_error(e, "looking up the target database"))?;
    if exists {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "database {} already exists: choose another name, drop it, or restore into \
                 it without creating it (RestoreOptions::create off; with \
                 RestoreOptions::clean to replace its content)",
                config.dbname
            ),
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'",
        quote_ident(&config.dbname)
    )))
    .execute(&mut conn)
    .await
    .map_err(|e| sqlx_error(e, format!("creating database {}", config.dbname)))?;
    let _ = conn.close().await;
    Ok(())
}

/// `CREATE DATABASE` with the source database's encoding, collation, ctype, locale
/// provider and connection limit; when the target cannot (a locale it lacks, an older
/// server), as [`create_database`] does, with a warning that says what differs.
async fn create_database_like(
    config: &ConnConfig,
    properties: Option<&DatabaseProperties>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let Some(p) = properties else {
        return create_database(config).await;
    };
    let mut sql = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(&config.dbname),
        quote_literal(&p.encoding),
        quote_literal(&p.collate),
        quote_literal(&p.ctype)
    );
    match (p.locale_provider.as_deref(), p.locale.as_deref()) {
        (Some("i"), Some(l)) => sql.push_str(&format!(
            " LOCALE_PROVIDER icu ICU_LOCALE {}",
            quote_literal(l)
        )),
        (Some("b"), Some(l)) => sql.push_str(&format!(
            " LOCALE_PROVIDER builtin BUILTIN_LOCALE {}",
            quote_literal(l)
        )),
        _ => {}
    }
    if p.connection_limit != -1 {
        sql.push_str(&format!(" CONNECTION LIMIT {}", p.connection_limit));
    }
    let mut conn = maintenance_connection(config).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&config.dbname)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| sqlx_error(e, "looking up the target database"))?;
    let created = if exists {
        // create_database says so in its words.
        Err(None)
    } else {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| Some(sqlx_error(e, "creating it as the source was")))
    };
    let _ = conn.close().await;
    match created {
        Ok(()) => Ok(()),
        Err(None) => create_database(config).await,
        Err(Some(e)) => {
            create_database(config).await?;
            warnings.push(format!(
                "database {} was created in UTF8 with the server's default locale, not with the                  source's encoding {}, collation {} and ctype {}: {e}",
                config.dbname, p.encoding, p.collate, p.ctype
            ));
            Ok(())
        }
    }
}

/// What `CREATE DATABASE` does not set: owner (where the role exists), comment and
/// `ALTER DATABASE … SET` settings. A step that fails is a warning: the data is in.
async fn apply_properties(config: &ConnConfig, p: &DatabaseProperties, warnings: &mut Vec<String>) {
    let db = quote_ident(&config.dbname);
    let mut steps: Vec<(String, String)> = Vec::new();
    if let Some(c) = &p.comment {
        steps.push((
            format!("COMMENT ON DATABASE {db} IS {}", quote_literal(c)),
            "its comment".to_owned(),
        ));
    }
    for s in &p.settings {
        if let Some(clause) = crate::globals::set_clause(s) {
            steps.push((
                format!("ALTER DATABASE {db} SET {clause}"),
                format!("its setting {}", s.split('=').next().unwrap_or_default()),
            ));
        }
    }
    let mut conn = match maintenance_connection(config).await {
        Ok(c) => c,
        Err(e) => {
            warnings.push(format!(
                "the properties of database {} (owner, comment, settings) are not restored: {e}",
                config.dbname
            ));
            return;
        }
    };
    let owner_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&p.owner)
            .fetch_one(&mut conn)
            .await
            .unwrap_or(false);
    if owner_exists {
        steps.push((
            format!("ALTER DATABASE {db} OWNER TO {}", quote_ident(&p.owner)),
            format!("its owner {}", p.owner),
        ));
    } else {
        warnings.push(format!(
            "database {} keeps the restoring user as its owner: the source's owner, role {},              does not exist on the target (restore the backup's globals first to create it)",
            config.dbname, p.owner
        ));
    }
    for (sql, what) in steps {
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            warnings.push(format!(
                "database {}: {what} is not restored: {}",
                config.dbname,
                sqlx_error(e, "setting it")
            ));
        }
    }
    let _ = conn.close().await;
}

/// Drops the database of `config`, terminating its connections.
pub(crate) async fn drop_database(config: &ConnConfig) -> Result<()> {
    let mut conn = maintenance_connection(config).await?;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int4")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| sqlx_error(e, "reading the server version"))?;
    let name = quote_ident(&config.dbname);
    let sql = if version >= 130000 {
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    } else {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(&config.dbname)
            .execute(&mut conn)
            .await
            .map_err(|e| sqlx_error(e, "disconnecting sessions of the database to drop"))?;
        format!("DROP DATABASE IF EXISTS {name}")
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .map_err(|e| sqlx_error(e, format!("dropping database {}", config.dbname)))?;
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_named_by_their_object() {
        for (sql, what) in [
            (
                "DROP MATERIALIZED VIEW IF EXISTS public.mv;",
                "materialized view public.mv",
            ),
            (
                "DROP FUNCTION IF EXISTS public.f(x integer, y text);",
                "function public.f(x integer, y text)",
            ),
            (
                "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = '42';",
                "large object 42",
            ),
            (
                "ALTER TABLE IF EXISTS ONLY public.t DROP CONSTRAINT IF EXISTS t_pkey;",
                "ALTER TABLE IF EXISTS ONLY public.t DROP CONSTRAINT IF EXISTS t_pkey",
            ),
        ] {
            assert_eq!(describe_drop(sql), what);
        }
    }

    #[test]
    fn drop_script_keeps_only_the_drops() {
        let script = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n\
            SET statement_timeout = 0;\n\
            SELECT pg_catalog.set_config('search_path', '', false);\n\n\
            DROP INDEX IF EXISTS public.big_idx;\n\
            DROP TABLE IF EXISTS public.\"we;\nird\";\n\
            SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = '42';\n\
            --\n-- Name: t; Type: TABLE; Schema: public; Owner: postgres\n--\n\n\
            CREATE TABLE public.t (id integer);\n";
        assert_eq!(
            parse_drop_script(script),
            [
                "DROP INDEX IF EXISTS public.big_idx;",
                "DROP TABLE IF EXISTS public.\"we;\nird\";",
                "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = '42';",
            ]
        );
    }
}
