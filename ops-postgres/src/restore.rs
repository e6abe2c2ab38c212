//! The restore: pre-data DDL, COPY of every table stream, then data and post-data.
//!
//! The schema stream (pg_dump's custom archive, small) is staged in a private temporary
//! file because pg_restore needs a seekable file for `-j`; table data is never staged:
//! each stream goes straight from the source into `COPY … FROM STDIN`, `jobs` at a
//! time. Loading happens after `pg_restore --section=pre-data` (tables without
//! indexes, foreign keys or triggers) and before `--section=data --section=post-data`
//! (sequence values, large objects, indexes, constraints, triggers, materialized view
//! refreshes), which is the order pg_restore itself uses.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

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
use crate::config::{ConnConfig, TOOL_ENV_CLEARED};
use crate::dump::{META_BYTES, META_COLUMNS, tool_failure};
use crate::errors::{query_error, sqlx_error};
use crate::session::{connect_pinned, qualified, quote_ident, quote_literal};
use crate::{toc, tools};

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
    if options.create {
        create_database(config).await?;
    }
    let outcome = restore_into(config, bin_dir, source, options).await;
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
    let pg_restore = tools::find_program("pg_restore", bin_dir.as_deref())?;
    let restore_major = tools::tool_major(&pg_restore).await?;
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

    let control = connect_pinned(config).await?;
    prepare_target(&control, config, &selection, options.clean).await?;

    let list = match &selection {
        Selection::All => None,
        Selection::Tables(tables) => {
            let entries = toc::parse_list(&toc_text);
            let mut existing = HashSet::new();
            for t in &map.tables {
                for (_, target) in &t.foreign_keys {
                    if !tables.contains(target) && table_exists(&control, target).await? {
                        existing.insert(target.clone());
                    }
                }
            }
            let ids = toc::select_tables(&entries, &map, tables, &|t| existing.contains(t));
            let needed = toc::prerequisites(&entries, &map, &ids);
            if !needed.is_empty() {
                restore_prerequisites(
                    &pg_restore,
                    config,
                    staged.path(),
                    &toc::list_file(&entries, &needed),
                    options.no_owner,
                )
                .await?;
            }
            Some(toc::list_file(&entries, &ids))
        }
        Selection::Schemas(schemas) => {
            let entries = toc::parse_list(&toc_text);
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
            Some(toc::list_file(&entries, &ids))
        }
    };
    let list_file = match list {
        Some(text) => {
            let file = tempfile::Builder::new()
                .prefix("dbops-toc-")
                .tempfile()
                .map_err(|e| Error::io("creating a temporary list file", e))?;
            tokio::fs::write(file.path(), text)
                .await
                .map_err(|e| Error::io("writing the pg_restore list file", e))?;
            Some(file)
        }
        None => None,
    };

    let common = |sections: &[&str], jobs: usize| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--exit-on-error".into(),
            "--no-password".into(),
            "-d".into(),
            config.dbname_conninfo().into(),
        ];
        for s in sections {
            args.push(format!("--section={s}").into());
        }
        if options.no_owner {
            args.push("--no-owner".into());
        }
        if jobs > 1 {
            args.push(format!("--jobs={jobs}").into());
        }
        if let Some(f) = &list_file {
            args.push("-L".into());
            args.push(f.path().as_os_str().to_owned());
        }
        args.push(staged.path().as_os_str().to_owned());
        args
    };

    run_pg_restore(&pg_restore, config, common(&["pre-data"], 1))
        .await
        .map_err(|e| e.during("restoring the schema (pre-data)"))?;

    let streams: Vec<StreamSpec> = source
        .streams()
        .iter()
        .filter(|s| s.role == StreamRole::TableData)
        .filter(|s| s.table.as_ref().is_some_and(|t| selection.wants(t)))
        .cloned()
        .collect();
    let tables = load_tables(config, Arc::clone(&source), streams, options.jobs).await?;

    run_pg_restore(
        &pg_restore,
        config,
        common(&["data", "post-data"], options.jobs.max(1)),
    )
    .await
    .map_err(|e| e.during("restoring sequence values, large objects, indexes and constraints"))?;

    let mut report = RestoreReport::default();
    report.database = config.dbname.clone();
    report.tables = tables;
    Ok(report)
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
    Ok(row.get(0))
}

/// Refuses a non-empty target, or cleans it when asked.
async fn prepare_target(
    client: &Client,
    config: &ConnConfig,
    selection: &Selection,
    clean: bool,
) -> Result<()> {
    match selection {
        Selection::All => {
            let found = target_contents(client, None).await?;
            if found.is_empty() {
                return Ok(());
            }
            if !clean {
                return Err(not_empty(config, &found));
            }
            clean_database(client).await
        }
        Selection::Tables(tables) => {
            let mut present = Vec::new();
            for t in tables {
                if table_exists(client, t).await? {
                    present.push(t.clone());
                }
            }
            if present.is_empty() {
                return Ok(());
            }
            if !clean {
                let found: Vec<String> = present.iter().map(|t| format!("table {t}")).collect();
                return Err(not_empty(config, &found));
            }
            let names: Vec<String> = present.iter().map(qualified).collect();
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", names.join(", ")))
                .await
                .map_err(|e| query_error(e, "dropping the tables to restore (--clean)"))
        }
        Selection::Schemas(schemas) => {
            let found = target_contents(client, Some(schemas)).await?;
            if found.is_empty() {
                return Ok(());
            }
            if !clean {
                return Err(not_empty(config, &found));
            }
            let mut sql = String::from("BEGIN;");
            for s in schemas.iter().filter(|s| s.as_str() != "public") {
                sql.push_str(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE;",
                    quote_ident(s)
                ));
            }
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| query_error(e, "dropping the schemas to restore (--clean)"))?;
            if schemas.iter().any(|s| s == "public") {
                clean_public(client).await?;
            }
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| query_error(e, "committing --clean"))
        }
    }
}

fn not_empty(config: &ConnConfig, found: &[String]) -> Error {
    Error::new(
        ErrorKind::TargetNotEmpty,
        format!(
            "the target database {} is not empty (it holds {}): restore with --clean to \
             replace what it holds, or with --create into a new database",
            config.dbname,
            found.join(", ")
        ),
    )
}

/// Up to five user objects found in the target (in `schemas` only, when given).
async fn target_contents(client: &Client, schemas: Option<&[String]>) -> Result<Vec<String>> {
    let filter = match schemas {
        None => String::new(),
        Some(s) => {
            let list: Vec<String> = s.iter().map(|n| quote_literal(n)).collect();
            format!("AND n.nspname IN ({})", list.join(", "))
        }
    };
    let globals = if schemas.is_none() {
        "UNION ALL SELECT 'extension ' || extname FROM pg_extension WHERE extname <> 'plpgsql'
         UNION ALL SELECT 'large object ' || oid FROM pg_largeobject_metadata"
    } else {
        ""
    };
    let sql = format!(
        "SELECT d FROM (
           SELECT 'schema ' || quote_ident(n.nspname) AS d FROM pg_namespace n
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'public')
              AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' {filter}
           UNION ALL SELECT 'relation ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' {filter}
           UNION ALL SELECT 'function ' || quote_ident(n.nspname) || '.' || quote_ident(p.proname)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' {filter}
           UNION ALL SELECT 'type ' || quote_ident(n.nspname) || '.' || quote_ident(t.typname)
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = 'public' {filter}
           {globals}
         ) found LIMIT 5"
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| query_error(e, "checking whether the target is empty"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Drops everything a restore would create: extensions, every non-system schema,
/// everything in `public` (kept, with its initdb ownership and privileges), large
/// objects, publications, event triggers and foreign data wrappers.
async fn clean_database(client: &Client) -> Result<()> {
    let names = |sql: &'static str| async move {
        client
            .query(sql, &[])
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| query_error(e, "listing what --clean drops"))
    };
    let extensions =
        names("SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql'").await?;
    let schemas = names(
        "SELECT nspname::text FROM pg_namespace
          WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
            AND nspname !~ '^pg_(toast|temp_|toast_temp_)'",
    )
    .await?;
    let publications = names("SELECT pubname::text FROM pg_publication").await?;
    let event_triggers = names("SELECT evtname::text FROM pg_event_trigger").await?;
    let wrappers = names("SELECT fdwname::text FROM pg_foreign_data_wrapper").await?;
    let mut sql = String::from("BEGIN;");
    for e in &extensions {
        sql.push_str(&format!(
            "DROP EXTENSION IF EXISTS {} CASCADE;",
            quote_ident(e)
        ));
    }
    for s in &schemas {
        sql.push_str(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE;",
            quote_ident(s)
        ));
    }
    for p in &publications {
        sql.push_str(&format!("DROP PUBLICATION IF EXISTS {};", quote_ident(p)));
    }
    for t in &event_triggers {
        sql.push_str(&format!("DROP EVENT TRIGGER IF EXISTS {};", quote_ident(t)));
    }
    for w in &wrappers {
        sql.push_str(&format!(
            "DROP FOREIGN DATA WRAPPER IF EXISTS {} CASCADE;",
            quote_ident(w)
        ));
    }
    sql.push_str("SELECT lo_unlink(oid) FROM pg_largeobject_metadata;");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| query_error(e, "cleaning the target (--clean)"))?;
    clean_public(client).await?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| query_error(e, "committing --clean"))
}

/// Empties `public` object by object rather than dropping it, so that its ownership,
/// privileges and initial-privileges record stay as initdb made them; recreates it as
/// initdb would when it is missing.
async fn clean_public(client: &Client) -> Result<()> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "looking for schema public"))?
        .get(0);
    if !exists {
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| query_error(e, "reading the server version"))?
            .get(0);
        let sql = if version >= 150000 {
            "CREATE SCHEMA public; ALTER SCHEMA public OWNER TO pg_database_owner;
             GRANT USAGE ON SCHEMA public TO PUBLIC;
             COMMENT ON SCHEMA public IS 'standard public schema';"
        } else {
            "CREATE SCHEMA public; GRANT ALL ON SCHEMA public TO PUBLIC;
             COMMENT ON SCHEMA public IS 'standard public schema';"
        };
        return client
            .batch_execute(sql)
            .await
            .map_err(|e| query_error(e, "recreating schema public"));
    }
    // Drop in rounds: CASCADE removes dependents, which then no longer exist.
    for _ in 0..10 {
        let rows = client
            .query(
                "SELECT o.type, o.identity FROM pg_depend d,
                        LATERAL pg_identify_object(d.classid, d.objid, 0) o
                  WHERE d.refclassid = 'pg_namespace'::regclass
                    AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = 'public')
                    AND d.deptype = 'n'",
                &[],
            )
            .await
            .map_err(|e| query_error(e, "listing the objects in schema public"))?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in rows {
            let kind: String = row.get(0);
            let identity: String = row.get(1);
            let keyword = match kind.as_str() {
                "statistics object" => "STATISTICS".to_owned(),
                "domain" | "composite type" | "enum type" | "range type" | "base type" => {
                    "TYPE".to_owned()
                }
                other => other.to_uppercase(),
            };
            client
                .batch_execute(&format!("DROP {keyword} IF EXISTS {identity} CASCADE"))
                .await
                .map_err(|e| query_error(e, format!("dropping {kind} {identity} (--clean)")))?;
        }
    }
    Err(Error::new(
        ErrorKind::Database,
        "could not empty schema public for --clean: objects keep reappearing",
    ))
}

/// Copies the schema stream into `path`.
async fn stage(source: &dyn StreamSource, name: &str, path: &Path) -> Result<()> {
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

fn tool_command(program: &Path, config: &ConnConfig) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    for var in TOOL_ENV_CLEARED {
        cmd.env_remove(var);
    }
    cmd.envs(config.tool_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `pg_restore -l -v [args] archive`.
async fn list_archive(pg_restore: &Path, archive: &Path, args: &[OsString]) -> Result<String> {
    let out = tokio::process::Command::new(pg_restore)
        .arg("-l")
        .arg("-v")
        .args(args)
        .arg(archive)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::io(format!("running {}", pg_restore.display()), e))?;
    if !out.status.success() {
        // Nothing connects here: a failure means the archive cannot be read.
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
/// already are fine ("already exists"), any other error is not.
async fn restore_prerequisites(
    pg_restore: &Path,
    config: &ConnConfig,
    archive: &Path,
    list: &str,
    no_owner: bool,
) -> Result<()> {
    let file = tempfile::Builder::new()
        .prefix("dbops-toc-")
        .tempfile()
        .map_err(|e| Error::io("creating a temporary list file", e))?;
    tokio::fs::write(file.path(), list)
        .await
        .map_err(|e| Error::io("writing the pg_restore list file", e))?;
    let mut cmd = tool_command(pg_restore, config);
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
    let real_errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .collect();
    if !real_errors.is_empty() || (!out.status.success() && !stderr.contains("already exists")) {
        return Err(tool_failure("pg_restore", &out.status, stderr.trim())
            .during("restoring the types and functions the chosen tables need"));
    }
    Ok(())
}

async fn run_pg_restore(pg_restore: &Path, config: &ConnConfig, args: Vec<OsString>) -> Result<()> {
    let mut cmd = tool_command(pg_restore, config);
    cmd.args(args);
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
        return Err(tool_failure("pg_restore", &status, &stderr));
    }
    Ok(())
}

/// Loads the table streams, `jobs` at a time, biggest first.
async fn load_tables(
    config: &ConnConfig,
    source: Arc<dyn StreamSource>,
    mut streams: Vec<StreamSpec>,
    jobs: usize,
) -> Result<BTreeMap<String, u64>> {
    let size = |s: &StreamSpec| {
        s.meta
            .get(META_BYTES)
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0)
    };
    streams.sort_by_key(|s| std::cmp::Reverse(size(s)));
    let jobs = jobs.clamp(1, streams.len().max(1));
    let queue = Arc::new(Mutex::new(VecDeque::from(streams)));
    let rows = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for _ in 0..jobs {
        let config = config.clone();
        let queue = Arc::clone(&queue);
        let source = Arc::clone(&source);
        let rows = Arc::clone(&rows);
        tasks.spawn(async move {
            let client = connect_pinned(&config).await?;
            client
                .batch_execute("SET search_path = ''")
                .await
                .map_err(|e| query_error(e, "setting search_path"))?;
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let Some(spec) = next else { break };
                let (table, n) = load_stream(&client, source.as_ref(), &spec).await?;
                *rows
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(table.to_string())
                    .or_default() += n;
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::internal(format!("restore task failed: {e}")))??;
    }
    let out = rows.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(out)
}

async fn load_stream(
    client: &Client,
    source: &dyn StreamSource,
    spec: &StreamSpec,
) -> Result<(TableRef, u64)> {
    let table = spec
        .table
        .clone()
        .ok_or_else(|| Error::corrupt(format!("table data stream {} names no table", spec.name)))?;
    let columns: Vec<String> = match spec.meta.get(META_COLUMNS) {
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::corrupt(format!(
                "column list of stream {} is damaged: {e}",
                spec.name
            ))
        })?,
        None => Vec::new(),
    };
    let sql = if columns.is_empty() {
        format!("COPY {} FROM STDIN", qualified(&table))
    } else {
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "COPY {} ({}) FROM STDIN",
            qualified(&table),
            cols.join(", ")
        )
    };
    let doing = || format!("restoring table {table} from stream {}", spec.name);
    let mut input = source.open(&spec.name).await?;
    let sink = client
        .copy_in::<_, bytes::Bytes>(&sql)
        .await
        .map_err(|e| query_error(e, doing()).with_context("table", &table))?;
    futures::pin_mut!(sink);
    while let Some(piece) = input.next().await {
        // A damaged chunk: return its own error. Dropping the sink and then the
        // connection makes the server abort the COPY; no partial table is committed.
        let piece = piece.map_err(|e| e.during(doing()))?;
        sink.send(piece)
            .await
            .map_err(|e| query_error(e, doing()).with_context("table", &table))?;
    }
    let rows = sink
        .finish()
        .await
        .map_err(|e| query_error(e, doing()).with_context("table", &table))?;
    Ok((table, rows))
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
    match sqlx::PgConnection::connect_with(&maint.sqlx_options()).await {
        Ok(c) => Ok(c),
        Err(e) => {
            let err = sqlx_error(e, format!("connecting to {}", maint.redacted_url()));
            if err.kind() == ErrorKind::NotFound && maint.dbname == "postgres" {
                let alt = config.with_dbname("template1");
                sqlx::PgConnection::connect_with(&alt.sqlx_options())
                    .await
                    .map_err(|e| sqlx_error(e, format!("connecting to {}", alt.redacted_url())))
            } else {
                Err(err)
            }
        }
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
                 it without --create (with --clean to replace its content)",
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
