//! The restore: target checks (create, clean, not empty), the pre-data schema, the
//! data through `LOAD DATA LOCAL INFILE` fed straight from the stream source by
//! `jobs` connections, the deferred keys of each table as soon as its data is in,
//! the foreign keys, then the post-data schema (triggers, events).
//!
//! Every load (a stream, or a 256 MiB batch of a bigger one) runs in its own
//! transaction: when the source stream fails half-way the driver still ends the
//! transfer cleanly, and the rows already sent are rolled back instead of committed.
//! Loads are checked: the server's warnings and its row count against the records
//! sent; any difference fails the restore.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{StreamExt, TryStreamExt};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use ops_core::{
    Error, ErrorKind, RestoreOptions, RestoreReport, Result, StreamRole, StreamSource, StreamSpec,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::DefinerPolicy;
use crate::catalog::{self, ObjectKind, SchemaHeader, SchemaObject, parse_quoted};
use crate::conn::{self, ConnConfig, Session};
use crate::error::{code, db_error, server_code};
use crate::format::{self, StreamColumn, apply_definer, load_clause, quote_ident, quote_str};
use crate::keys::DeferredKeys;

/// What to restore, decided from the options and the dump.
struct Selection {
    /// Only these tables (source names); `None` is everything.
    tables: Option<BTreeSet<String>>,
}

impl Selection {
    fn table(&self, name: &str) -> bool {
        self.tables.as_ref().is_none_or(|t| t.contains(name))
    }

    fn full(&self) -> bool {
        self.tables.is_none()
    }

    fn object(&self, o: &SchemaObject) -> bool {
        match o.kind {
            ObjectKind::Table => self.table(&o.name),
            ObjectKind::Trigger => o.table.as_deref().is_some_and(|t| self.table(t)),
            _ => self.full(),
        }
    }
}

pub(crate) async fn restore(
    config: Arc<ConnConfig>,
    db: String,
    definer: DefinerPolicy,
    binlog: bool,
    source: Arc<dyn StreamSource>,
    options: RestoreOptions,
) -> Result<RestoreReport> {
    let specs = source.streams().to_vec();
    let find = |name: &str| {
        specs
            .iter()
            .any(|s| s.role == StreamRole::Schema && s.name == name)
    };
    if !find(catalog::PRE_DATA) {
        return Err(Error::invalid(
            "the backup holds no MariaDB schema stream (it is a data-only dump or not a \
             MariaDB backup); it cannot be restored",
        ));
    }
    let (header, pre) = read_schema(&*source, catalog::PRE_DATA).await?;
    let post = if find(catalog::POST_DATA) {
        read_schema(&*source, catalog::POST_DATA).await?.1
    } else {
        Vec::new()
    };

    if !options.schemas.is_empty()
        && !options
            .schemas
            .iter()
            .any(|s| *s == header.database || *s == db)
    {
        return Err(Error::invalid(format!(
            "the backup holds database '{}'; the schema filter {:?} names none of it",
            header.database, options.schemas
        )));
    }
    let selection = if options.tables.is_empty() {
        Selection { tables: None }
    } else {
        let mut names = BTreeSet::new();
        for t in &options.tables {
            if t.schema != header.database && t.schema != db {
                return Err(Error::invalid(format!(
                    "table {t} is not in the backup's database '{}'",
                    header.database
                )));
            }
            if !pre
                .iter()
                .any(|o| o.kind == ObjectKind::Table && o.name == t.name)
            {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("table {t} is not in the backup"),
                ));
            }
            names.insert(t.name.clone());
        }
        Selection {
            tables: Some(names),
        }
    };

    let mut admin = open(&config, None, binlog).await?;
    let exists = !conn::query_rows(
        &mut admin,
        &format!(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
            quote_str(&db)
        ),
    )
    .await?
    .is_empty();
    let create_sql = format!(
        "CREATE DATABASE {} CHARACTER SET {} COLLATE {}",
        quote_ident(&db),
        header.charset,
        header.collation
    );
    let mut created = false;
    let mut warnings = Vec::new();
    if options.create {
        if exists {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("database '{db}' already exists; restore without create, or drop it"),
            ));
        }
        conn::exec(&mut admin, &create_sql).await?;
        created = true;
    } else if !exists {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("database '{db}' does not exist; pass create to make it"),
        ));
    } else {
        let held = existing_objects(&mut admin, &db, &selection).await?;
        if !held.is_empty() {
            if !options.clean {
                return Err(not_empty(&db, &held));
            }
            if selection.full() {
                let extras = not_in_backup(&held, &pre, &post);
                clean_database(&mut admin, &db, &create_sql).await?;
                if !extras.is_empty() {
                    warnings.push(format!(
                        "restore with clean dropped {} object(s) the backup does not hold: {}",
                        extras.len(),
                        extras.join(", ")
                    ));
                }
            } else {
                for name in selection.tables.iter().flatten() {
                    conn::exec(
                        &mut admin,
                        &format!(
                            "DROP TABLE IF EXISTS {}.{}",
                            quote_ident(&db),
                            quote_ident(name)
                        ),
                    )
                    .await?;
                }
            }
        } else if selection.full() {
            conn::exec(
                &mut admin,
                &format!(
                    "ALTER DATABASE {} CHARACTER SET {} COLLATE {}",
                    quote_ident(&db),
                    header.charset,
                    header.collation
                ),
            )
            .await?;
        }
    }

    let prepared = if options.scratch {
        let objects: Vec<&SchemaObject> = pre
            .iter()
            .chain(&post)
            .filter(|o| selection.object(o))
            .collect();
        prepare_definers(&mut admin, &db, &definer, &objects).await
    } else {
        Ok(Vec::new())
    };
    let result = match prepared {
        Ok(prepared) => restore_into(
            &config,
            &db,
            &header.database,
            &definer,
            binlog,
            &source,
            &specs,
            &selection,
            &pre,
            &post,
            &options,
        )
        .await
        .map(|(tables, notes)| (tables, notes, prepared)),
        Err(e) => Err(e),
    };
    match result {
        Ok((tables, notes, prepared)) => {
            conn::disconnect(admin).await;
            warnings.extend(notes);
            let mut report = RestoreReport::default();
            report.database = db;
            report.tables = tables;
            report.warnings = warnings;
            report.prepared = prepared;
            Ok(report)
        }
        Err(e) => {
            if created
                && !options.keep_failed
                && let Err(drop_err) =
                    conn::exec(&mut admin, &format!("DROP DATABASE {}", quote_ident(&db))).await
            {
                tracing::warn!("could not drop the failed restore's database {db}: {drop_err}");
            }
            Err(e)
        }
    }
}

/// On a throwaway server (a scratch restore), creates the definers of the views,
/// routines, triggers and events to restore that do not exist there, and returns one
/// line per account for [`RestoreReport::prepared`].
///
/// Creating the accounts, rather than rewriting the `DEFINER=` clauses, restores the
/// backup as it is: every object keeps the definer and `SQL SECURITY` it was dumped
/// with, so `SHOW CREATE` on the throwaway server prints the source's text, and views
/// and routines run with their definer's rights as on the source instead of failing
/// with "the user specified as a definer does not exist". The proof is then of the
/// backup, not of an edited copy. The accounts cannot log in (`ACCOUNT LOCK`, no
/// password), get every privilege on the restored database only (what the objects
/// reach there), and exist only on the throwaway server. A definer without a host is
/// a role, and is created as one (otherwise the server would read it as `'name'@'%'`).
async fn prepare_definers(
    admin: &mut Conn,
    db: &str,
    policy: &DefinerPolicy,
    objects: &[&SchemaObject],
) -> Result<Vec<String>> {
    // Per account, in first-seen order: how many objects of each kind it defines.
    type Account = (String, Option<String>);
    let mut accounts: Vec<(Account, BTreeMap<&'static str, usize>)> = Vec::new();
    for o in objects {
        let kind = match o.kind {
            ObjectKind::View => "view",
            ObjectKind::Function | ObjectKind::Procedure => "routine",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Event => "event",
            ObjectKind::Table | ObjectKind::Sequence | ObjectKind::SequenceValue => continue,
        };
        let Some(account) = format::definer_of(&apply_definer(&o.sql, policy)) else {
            continue;
        };
        match accounts.iter_mut().find(|(a, _)| *a == account) {
            Some((_, kinds)) => *kinds.entry(kind).or_default() += 1,
            None => accounts.push((account, BTreeMap::from([(kind, 1)]))),
        }
    }
    let mut prepared = Vec::new();
    for ((user, host), kinds) in accounts {
        let (what, exists_sql, create, name) = match &host {
            Some(host) => (
                "user",
                format!(
                    "SELECT COUNT(*) FROM mysql.user WHERE User = {} AND Host = {}",
                    quote_str(&user),
                    quote_str(host)
                ),
                "CREATE USER",
                format!("{}@{}", quote_str(&user), quote_str(host)),
            ),
            None => (
                "role",
                format!(
                    "SELECT COUNT(*) FROM mysql.user WHERE User = {} AND Host = ''",
                    quote_str(&user)
                ),
                "CREATE ROLE",
                quote_str(&user),
            ),
        };
        let doing = || format!("preparing the definer {what} {name} on the throwaway server");
        let exists = conn::query_string(admin, &exists_sql)
            .await
            .map_err(|e| e.during(doing()))?;
        let grant = format!("GRANT ALL PRIVILEGES ON {}.* TO {name}", quote_ident(db));
        let counts: Vec<String> = ["view", "routine", "trigger", "event"]
            .iter()
            .filter_map(|k| {
                let n = *kinds.get(k)?;
                Some(format!("{n} {k}{}", if n == 1 { "" } else { "s" }))
            })
            .collect();
        let defines = format!("definer of {}", counts.join(", "));
        if exists.trim() == "0" {
            let lock = if host.is_some() { " ACCOUNT LOCK" } else { "" };
            conn::exec(admin, &format!("{create} {name}{lock}"))
                .await
                .map_err(|e| e.during(doing()))?;
            conn::exec(admin, &grant)
                .await
                .map_err(|e| e.during(doing()))?;
            prepared.push(format!("{what} {name} ({defines})"));
            continue;
        }
        // An account that exists (made by an earlier scratch restore into another
        // database of the same server) gets the new database, unless it has global
        // privileges (root and the like).
        let grantee = format!("'{user}'@'{}'", host.as_deref().unwrap_or_default());
        let global = conn::query_string(
            admin,
            &format!(
                "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES \
                 WHERE GRANTEE = {} AND PRIVILEGE_TYPE <> 'USAGE'",
                quote_str(&grantee)
            ),
        )
        .await
        .map_err(|e| e.during(doing()))?;
        if global.trim() == "0" {
            conn::exec(admin, &grant)
                .await
                .map_err(|e| e.during(doing()))?;
            prepared.push(format!(
                "{what} {name} existed: all privileges on {} granted ({defines})",
                quote_ident(db)
            ));
        }
    }
    Ok(prepared)
}

/// A restore session: [`Session::Restore`], off the binary log when asked.
async fn open(config: &ConnConfig, db: Option<&str>, binlog: bool) -> Result<Conn> {
    let mut c = conn::connect(config, db, Session::Restore).await?;
    if !binlog {
        conn::exec(&mut c, "SET SESSION sql_log_bin = 0")
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::PermissionDenied {
                    let msg = format!(
                        "restoring without the binary log (sql_log_bin = 0) needs the BINLOG \
                         ADMIN or SUPER privilege: {}",
                        e.message()
                    );
                    e.with_message(msg)
                } else {
                    e
                }
            })?;
    }
    Ok(c)
}

async fn read_schema(
    source: &dyn StreamSource,
    name: &str,
) -> Result<(SchemaHeader, Vec<SchemaObject>)> {
    let mut stream = source.open(name).await?;
    let mut bytes = Vec::new();
    while let Some(piece) = stream.try_next().await? {
        bytes.extend_from_slice(&piece);
    }
    catalog::from_jsonl(&bytes, name)
}

/// How long the clean's `DROP DATABASE` waits for the metadata locks of the
/// database's objects. It takes every lock before it drops anything, so an object in
/// use stops it with nothing dropped; the wait is short because a queued exclusive
/// lock makes the application's later statements on that object queue behind it.
const CLEAN_LOCK_TIMEOUT_SECS: u64 = 5;

/// How many objects a refusal names before it says how many more there are.
const NAMED_IN_REFUSAL: usize = 20;

/// An object found in the target database.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    /// `table`, `view`, `sequence`, `function`, `procedure`, `package`,
    /// `package body`, `trigger`, `event`.
    kind: String,
    name: String,
    /// The table of a trigger.
    table: Option<String>,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, quote_ident(&self.name))?;
        if let Some(t) = &self.table {
            write!(f, " on {}", quote_ident(t))?;
        }
        Ok(())
    }
}

/// What the target already holds that a restore of `selection` would collide with:
/// for a full restore everything (tables, views, sequences, routines, triggers,
/// events), for a table restore those tables.
async fn existing_objects(admin: &mut Conn, db: &str, selection: &Selection) -> Result<Vec<Held>> {
    let qdb = quote_str(db);
    let mut sql = format!(
        "SELECT CASE TABLE_TYPE WHEN 'VIEW' THEN 'view' WHEN 'SEQUENCE' THEN 'sequence' \
                ELSE 'table' END, TABLE_NAME, NULL \
           FROM information_schema.TABLES WHERE TABLE_SCHEMA = {qdb}"
    );
    if selection.full() {
        sql.push_str(&format!(
            " UNION ALL SELECT LOWER(ROUTINE_TYPE), ROUTINE_NAME, NULL \
                FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {qdb} \
              UNION ALL SELECT 'trigger', TRIGGER_NAME, EVENT_OBJECT_TABLE \
                FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {qdb} \
              UNION ALL SELECT 'event', EVENT_NAME, NULL \
                FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {qdb}"
        ));
    }
    let mut held = Vec::new();
    for row in conn::query_rows(admin, &sql).await? {
        let h = Held {
            kind: conn::text(&row, 0)?,
            name: conn::text(&row, 1)?,
            table: conn::opt_text(&row, 2)?,
        };
        // A table restore queried only information_schema.TABLES: of those, only the
        // chosen names collide (views and sequences share the tables' namespace).
        if selection.table(&h.name) {
            held.push(h);
        }
    }
    held.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(held)
}

/// The objects of `held` that the backup's schema does not create, as messages name
/// them.
fn not_in_backup(held: &[Held], pre: &[SchemaObject], post: &[SchemaObject]) -> Vec<String> {
    let backup: BTreeSet<(&str, &str)> = pre
        .iter()
        .chain(post)
        .filter_map(|o| {
            let kind = match o.kind {
                ObjectKind::Table => "table",
                ObjectKind::Sequence => "sequence",
                ObjectKind::View => "view",
                ObjectKind::Function => "function",
                ObjectKind::Procedure => "procedure",
                ObjectKind::Trigger => "trigger",
                ObjectKind::Event => "event",
                ObjectKind::SequenceValue => return None,
            };
            Some((kind, o.name.as_str()))
        })
        .collect();
    held.iter()
        .filter(|h| !backup.contains(&(h.kind.as_str(), h.name.as_str())))
        .map(ToString::to_string)
        .collect()
}

fn not_empty(db: &str, held: &[Held]) -> Error {
    let names: Vec<String> = held
        .iter()
        .take(NAMED_IN_REFUSAL)
        .map(ToString::to_string)
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
            "database '{db}' is not empty (it holds {}{more}); restore with clean to replace \
             its content, or into a new database",
            names.join(", ")
        ),
    )
}

/// Empties the database of a full restore with clean: `DROP DATABASE` and
/// `CREATE DATABASE` with the backup's character set and collation. Dropping the
/// database rather than each object removes every kind of object, known to the dump
/// or not, and takes the metadata locks of all of them before dropping any (MariaDB's
/// DDL cannot be rolled back, so that is the only way a busy object leaves everything
/// in place). The session runs with `foreign_key_checks = 0` (so foreign keys between
/// the target's own tables do not matter), which would leave another database's
/// foreign keys to these tables dangling: those stop the clean first.
async fn clean_database(admin: &mut Conn, db: &str, create_sql: &str) -> Result<()> {
    let qdb = quote_str(db);
    let outside = conn::query_strings(
        admin,
        &format!(
            "SELECT CONCAT(CONSTRAINT_SCHEMA, '.', TABLE_NAME, ' (foreign key ', \
                    CONSTRAINT_NAME, ' to ', REFERENCED_TABLE_NAME, ')') \
               FROM information_schema.REFERENTIAL_CONSTRAINTS \
              WHERE UNIQUE_CONSTRAINT_SCHEMA = {qdb} AND CONSTRAINT_SCHEMA <> {qdb} \
              ORDER BY 1"
        ),
    )
    .await?;
    if !outside.is_empty() {
        return Err(Error::new(
            ErrorKind::TargetNotEmpty,
            format!(
                "restore with clean stopped, nothing was dropped: tables of other databases \
                 reference tables of '{db}' ({}). Drop those foreign keys first, or restore \
                 into a new database",
                outside.join(", ")
            ),
        ));
    }
    conn::exec(
        admin,
        &format!("SET SESSION lock_wait_timeout = {CLEAN_LOCK_TIMEOUT_SECS}"),
    )
    .await?;
    let dropped = conn::exec(admin, &format!("DROP DATABASE {}", quote_ident(db))).await;
    if let Err(e) = dropped {
        let locked = e.context_value("code") == Some("1205");
        let busy = if locked {
            busy_tables(admin, db).await
        } else {
            Vec::new()
        };
        conn::exec(admin, "SET SESSION lock_wait_timeout = 86400").await?;
        if !locked {
            return Err(e.during(format!("dropping database '{db}' (restore with clean)")));
        }
        let what = if busy.is_empty() {
            "an object of it".to_owned()
        } else {
            busy.join(", ")
        };
        return Err(Error::new(
            ErrorKind::Locked,
            format!(
                "restore with clean stopped, nothing was dropped: in database '{db}', {what} \
                 is in use (no metadata lock within {CLEAN_LOCK_TIMEOUT_SECS} s); restore \
                 again when the sessions using it are done"
            ),
        )
        .with_context("object", &what)
        .temporary());
    }
    conn::exec(admin, "SET SESSION lock_wait_timeout = 86400").await?;
    conn::exec(admin, create_sql).await
}

/// The tables of `db` another session holds a lock on, by trying to lock each without
/// waiting; for naming them in an error (best effort: an empty list says nothing).
async fn busy_tables(admin: &mut Conn, db: &str) -> Vec<String> {
    let tables = conn::query_strings(
        admin,
        &format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES \
              WHERE TABLE_SCHEMA = {} AND TABLE_TYPE <> 'VIEW' ORDER BY 1",
            quote_str(db)
        ),
    )
    .await
    .unwrap_or_default();
    if conn::exec(admin, "SET SESSION lock_wait_timeout = 0")
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut busy = Vec::new();
    for t in tables {
        let name = format!("{}.{}", quote_ident(db), quote_ident(&t));
        match conn::exec(admin, &format!("LOCK TABLES {name} WRITE")).await {
            Ok(()) => {
                let _ = conn::exec(admin, "UNLOCK TABLES").await;
            }
            Err(e) if e.context_value("code") == Some("1205") => {
                busy.push(format!("table {}", quote_ident(&t)));
            }
            Err(_) => {}
        }
    }
    busy
}

#[allow(clippy::too_many_arguments)]
async fn restore_into(
    config: &Arc<ConnConfig>,
    db: &str,
    source_db: &str,
    definer: &DefinerPolicy,
    binlog: bool,
    source: &Arc<dyn StreamSource>,
    specs: &[StreamSpec],
    selection: &Selection,
    pre: &[SchemaObject],
    post: &[SchemaObject],
    options: &RestoreOptions,
) -> Result<(BTreeMap<String, u64>, Vec<String>)> {
    let mut ddl = open(config, Some(db), binlog).await?;
    let pre: Vec<&SchemaObject> = pre.iter().filter(|o| selection.object(o)).collect();
    // Keys are deferred only when every table's foreign keys are: a foreign key in a
    // CREATE TABLE needs its referenced key to exist already.
    let defer = !pre.iter().any(|o| {
        o.kind == ObjectKind::Table
            && o.deferred.is_none()
            && o.sql.to_ascii_uppercase().contains("FOREIGN KEY")
    });
    let deferred: BTreeMap<&str, &DeferredKeys> = if defer {
        pre.iter()
            .filter(|o| o.kind == ObjectKind::Table)
            .filter_map(|o| Some((o.name.as_str(), o.deferred.as_ref()?)))
            .collect()
    } else {
        BTreeMap::new()
    };
    let (views, others): (Vec<_>, Vec<_>) =
        pre.into_iter().partition(|o| o.kind == ObjectKind::View);
    // A view the source could not open (its definer missing there) was printed with
    // every column qualified by the source database; without the qualifiers it reads
    // as the server prints any other view, and resolves in the target database.
    let views: Vec<SchemaObject> = views
        .into_iter()
        .map(|v| SchemaObject {
            sql: format::unqualify(&v.sql, source_db),
            ..v.clone()
        })
        .collect();
    let views: Vec<&SchemaObject> = views.iter().collect();
    for o in others {
        match deferred.get(o.name.as_str()) {
            Some(d) if o.kind == ObjectKind::Table => {
                let stripped = SchemaObject {
                    sql: d.create.clone(),
                    deferred: None,
                    ..o.clone()
                };
                create_object(&mut ddl, &stripped, definer).await?;
            }
            _ => create_object(&mut ddl, o, definer).await?,
        }
    }
    create_views(&mut ddl, &views, definer).await?;

    let loads: VecDeque<StreamSpec> = specs
        .iter()
        .filter(|s| s.role == StreamRole::TableData)
        .filter(|s| s.table.as_ref().is_some_and(|t| selection.table(&t.name)))
        .cloned()
        .collect();
    let versioned = loads
        .iter()
        .any(|s| s.meta.contains_key("system_versioned"));
    let mut plan = Plan {
        loads,
        ready: VecDeque::new(),
        remaining: BTreeMap::new(),
        keys: BTreeMap::new(),
        loading: BTreeSet::new(),
    };
    for (table, d) in &deferred {
        let parts = plan
            .loads
            .iter()
            .filter(|s| s.table.as_ref().is_some_and(|t| t.name == *table))
            .count();
        let statements = d.index_statements(table);
        if statements.is_empty() {
            continue;
        }
        plan.keys.insert((*table).to_owned(), statements);
        if parts == 0 {
            plan.ready.push_back((*table).to_owned());
        } else {
            plan.remaining.insert((*table).to_owned(), parts);
        }
    }
    let (loaded, notes) = run_plan(
        config,
        db,
        binlog,
        source,
        plan,
        options.jobs.max(1),
        versioned,
    )
    .await?;

    // Every key exists now, so every foreign key finds its referenced key.
    for (table, d) in &deferred {
        if let Some(sql) = d.foreign_key_statement(table) {
            conn::exec(&mut ddl, &sql)
                .await
                .map_err(|e| e.during(format!("adding the foreign keys of table {db}.{table}")))?;
        }
    }
    for o in post.iter().filter(|o| selection.object(o)) {
        create_object(&mut ddl, o, definer).await?;
    }
    conn::disconnect(ddl).await;
    Ok((loaded, notes))
}

/// Creates one object under the session settings it was created with.
async fn create_object(ddl: &mut Conn, o: &SchemaObject, definer: &DefinerPolicy) -> Result<()> {
    let sql = match o.kind {
        ObjectKind::Table | ObjectKind::Sequence | ObjectKind::SequenceValue => o.sql.clone(),
        _ => apply_definer(&o.sql, definer),
    };
    let mut settings = Vec::new();
    if let Some(mode) = &o.sql_mode {
        settings.push(format!("sql_mode = {}", quote_str(mode)));
    }
    // The SQL text is UTF-8; the recorded client character set is kept when the text
    // means the same in it (ASCII, or a UTF-8 set), so routines keep their metadata.
    if let Some(cs) = &o.character_set_client {
        let utf8 = cs.starts_with("utf8");
        if (utf8 || sql.is_ascii()) && is_name(cs) {
            settings.push(format!("character_set_client = {cs}"));
        }
    }
    if let Some(coll) = &o.collation_connection
        && is_name(coll)
    {
        settings.push(format!("collation_connection = {coll}"));
    }
    if let Some(tz) = &o.time_zone {
        settings.push(format!("time_zone = {}", quote_str(tz)));
    }
    if !settings.is_empty() {
        conn::exec(ddl, &format!("SET SESSION {}", settings.join(", "))).await?;
    }
    let created = conn::exec(ddl, &sql).await;
    if !settings.is_empty() {
        conn::exec(ddl, conn::RESTORE_DEFAULTS).await?;
        conn::exec(ddl, "SET SESSION time_zone = '+00:00'").await?;
    }
    created.map_err(|e| explain_ddl_error(e, o))
}

fn explain_ddl_error(e: Error, o: &SchemaObject) -> Error {
    let what = format!("{:?} {}", o.kind, o.name).to_lowercase();
    let hint = if e.kind() == ErrorKind::PermissionDenied && o.sql.contains("DEFINER=") {
        "; the definer account may not exist here: restore with a definer policy that drops \
         or rewrites DEFINER clauses"
    } else {
        ""
    };
    let msg = format!("{}{hint}", e.message());
    e.with_message(msg).during(format!("creating {what}"))
}

/// A character set or collation name (safe to put into SQL unquoted).
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Views may depend on views: create what can be created, then retry the rest, until
/// nothing is left or nothing more succeeds.
async fn create_views(
    ddl: &mut Conn,
    views: &[&SchemaObject],
    definer: &DefinerPolicy,
) -> Result<()> {
    let mut pending: Vec<&SchemaObject> = views.to_vec();
    while !pending.is_empty() {
        let mut failed = Vec::new();
        let mut last_error = None;
        for v in &pending {
            match create_object(ddl, v, definer).await {
                Ok(()) => {}
                Err(e) if matches!(e.context_value("code"), Some(c) if c == code::NO_SUCH_TABLE.to_string() || c == code::VIEW_INVALID.to_string()) =>
                {
                    failed.push(*v);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if failed.len() == pending.len() {
            return Err(
                last_error.unwrap_or_else(|| Error::internal("view creation made no progress"))
            );
        }
        pending = failed;
    }
    Ok(())
}

/// The data phase: every stream to load, and for tables with deferred keys the
/// `ALTER TABLE` statements that add them once all of the table's streams are in.
struct Plan {
    loads: VecDeque<StreamSpec>,
    /// Tables whose keys can be built now.
    ready: VecDeque<String>,
    /// Streams of each deferred table not loaded yet.
    remaining: BTreeMap<String, usize>,
    /// The statements that add each deferred table's keys.
    keys: BTreeMap<String, Vec<String>>,
    /// Tables with a stream being loaded: parts of one table load one after the
    /// other, because concurrent LOAD DATA into one InnoDB table deadlocks on its
    /// primary key's gap locks (seen with unique_checks on).
    loading: BTreeSet<String>,
}

enum Job {
    Load(StreamSpec),
    Keys(String, Vec<String>),
}

impl Plan {
    /// The next job: key builds first (they free the server's memory for the next
    /// table), then loads. `Err(())` when there is nothing to do yet, but other
    /// workers' loads will make key builds ready.
    #[allow(clippy::result_unit_err)]
    fn next(&mut self) -> std::result::Result<Option<Job>, ()> {
        if let Some(t) = self.ready.pop_front() {
            let statements = self.keys.remove(&t).unwrap_or_default();
            return Ok(Some(Job::Keys(t, statements)));
        }
        let free = self.loads.iter().position(|s| {
            !self
                .loading
                .contains(&s.table.as_ref().map(|t| t.name.clone()).unwrap_or_default())
        });
        if let Some(s) = free.and_then(|i| self.loads.remove(i)) {
            self.loading
                .insert(s.table.as_ref().map(|t| t.name.clone()).unwrap_or_default());
            return Ok(Some(Job::Load(s)));
        }
        if self.remaining.is_empty() && self.loads.is_empty() {
            Ok(None)
        } else {
            Err(())
        }
    }

    /// One stream of `table` is loaded.
    fn loaded(&mut self, table: &str) {
        self.loading.remove(table);
        if let Some(n) = self.remaining.get_mut(table) {
            *n -= 1;
            if *n == 0 {
                self.remaining.remove(table);
                self.ready.push_back(table.to_owned());
            }
        }
    }
}

/// Loads every data stream and builds deferred keys, `jobs` at a time; returns rows
/// per table and the report's warnings about the loads.
async fn run_plan(
    config: &Arc<ConnConfig>,
    db: &str,
    binlog: bool,
    source: &Arc<dyn StreamSource>,
    plan: Plan,
    jobs: usize,
    versioned: bool,
) -> Result<(BTreeMap<String, u64>, Vec<String>)> {
    let workers_needed = jobs.min(plan.loads.len() + plan.ready.len());
    let deferred: Arc<BTreeSet<String>> = Arc::new(plan.keys.keys().cloned().collect());
    let state = Arc::new(Mutex::new(plan));
    let wake = Arc::new(Notify::new());
    let totals = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let notes = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut connections = Vec::new();
    for _ in 0..workers_needed {
        let mut c = open(config, Some(db), binlog).await?;
        if versioned {
            conn::exec(&mut c, "SET SESSION system_versioning_insert_history = 1")
                .await
                .map_err(|e| {
                    if e.context_value("code") == Some(&code::UNKNOWN_SYSTEM_VARIABLE.to_string()) {
                        e.with_message(
                            "restoring the history of system-versioned tables needs MariaDB \
                             10.11 or newer (system_versioning_insert_history)",
                        )
                    } else {
                        e
                    }
                })?;
        }
        connections.push(c);
    }
    // Spawned, so that reading the source (decryption, decompression) of two streams
    // runs on two cores.
    let mut workers = JoinSet::new();
    for mut c in connections {
        let state = Arc::clone(&state);
        let wake = Arc::clone(&wake);
        let deferred = Arc::clone(&deferred);
        let totals = Arc::clone(&totals);
        let notes = Arc::clone(&notes);
        let source = Arc::clone(source);
        let db = db.to_owned();
        workers.spawn(async move {
            // The session starts with unique_checks = 0.
            let mut unique_checks = false;
            loop {
                let notified = wake.notified();
                tokio::pin!(notified);
                let next = {
                    let mut plan = state.lock().unwrap_or_else(PoisonError::into_inner);
                    // Registered before the lock is released: no wake-up is missed.
                    notified.as_mut().enable();
                    plan.next()
                };
                let job = match next {
                    Ok(Some(job)) => job,
                    Ok(None) => break,
                    Err(()) => {
                        notified.await;
                        continue;
                    }
                };
                match job {
                    Job::Load(spec) => {
                        let name = spec
                            .table
                            .as_ref()
                            .map(|t| t.name.clone())
                            .unwrap_or_default();
                        // A table loaded with only its primary key (and what must stay)
                        // takes rows in key order fastest with unique_checks on: with
                        // both checks off, InnoDB buffers and sorts an empty table's
                        // rows again (MDEV-24621), measured 2x slower on sorted data.
                        // Tables with all their keys keep that bulk path.
                        let want = deferred.contains(&name);
                        if want != unique_checks {
                            conn::exec(
                                &mut c,
                                &format!("SET SESSION unique_checks = {}", u8::from(want)),
                            )
                            .await?;
                            unique_checks = want;
                        }
                        let (rows, note) = load_stream(&mut c, &db, &*source, &spec).await?;
                        if let Some(note) = note {
                            notes
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(note);
                        }
                        *totals
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(format!("{db}.{name}"))
                            .or_default() += rows;
                        state
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .loaded(&name);
                        wake.notify_waiters();
                    }
                    Job::Keys(table, statements) => {
                        for sql in statements {
                            conn::exec(&mut c, &sql).await.map_err(|e| {
                                e.during(format!("adding the keys of table {db}.{table}"))
                            })?;
                        }
                    }
                }
            }
            conn::disconnect(c).await;
            Ok::<(), Error>(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            // Returning drops the JoinSet, which aborts the other loads; their open
            // transactions roll back when their connections close.
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::internal(format!("a restore worker failed: {e}"))),
        }
    }
    let totals = totals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut notes = std::mem::take(&mut *notes.lock().unwrap_or_else(PoisonError::into_inner));
    notes.sort();
    Ok((totals, notes))
}

/// Loads one data stream with `LOAD DATA LOCAL INFILE`, fed from the source. Returns
/// the records loaded and a report warning when warnings about virtual columns were
/// let pass.
async fn load_stream(
    conn: &mut Conn,
    db: &str,
    source: &dyn StreamSource,
    spec: &StreamSpec,
) -> Result<(u64, Option<String>)> {
    let table = spec
        .table
        .as_ref()
        .ok_or_else(|| Error::corrupt(format!("data stream '{}' names no table", spec.name)))?;
    let target = format!("{db}.{}", table.name);
    let doing = || format!("restoring table {target} from stream '{}'", spec.name);
    match spec.meta.get("format").map(String::as_str) {
        Some(catalog::DATA_FORMAT) => {}
        other => {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                format!(
                    "data stream '{}' is in format {other:?}; this dbops reads {}: use a newer dbops",
                    spec.name,
                    catalog::DATA_FORMAT
                ),
            ));
        }
    }
    let columns: Vec<StreamColumn> = spec
        .meta
        .get("columns")
        .ok_or_else(|| Error::corrupt(format!("data stream '{}' has no column list", spec.name)))
        .and_then(|c| {
            serde_json::from_str(c).map_err(|e| {
                Error::corrupt(format!("column list of data stream '{}': {e}", spec.name))
            })
        })?;

    let stream = source
        .open(&spec.name)
        .await
        .map_err(|e| e.during(doing()))?;
    let sql = format!(
        "LOAD DATA LOCAL INFILE {} INTO TABLE {} {} {}",
        quote_str(&spec.name),
        quote_ident(&table.name),
        format::LOAD_FORMAT,
        load_clause(&columns)
    );
    let feed = Arc::new(tokio::sync::Mutex::new(Feed {
        stream,
        leftover: None,
        done: false,
    }));
    // Loads into a table with virtual columns are judged warning by warning, so
    // they are cut into batches whose warnings the server can all list.
    let virtual_columns = VirtualColumns::of(conn, &table.name)
        .await
        .map_err(|e| e.during(doing()))?;
    let mut total = 0;
    let mut computed = Computed::default();
    loop {
        let (rows, c) = load_batch(conn, &sql, &feed, &virtual_columns, &target, &doing).await?;
        total += rows;
        computed.merge(c);
        if feed.lock().await.done {
            return Ok((total, computed.report(&target)));
        }
    }
}

/// A stream being loaded, possibly over several `LOAD DATA` statements.
struct Feed {
    stream: ops_core::ByteStream,
    /// Bytes read from the stream but not sent yet (after a batch's cut).
    leftover: Option<bytes::Bytes>,
    /// The stream has ended.
    done: bool,
}

/// Stream bytes after which a load commits and goes on with a new transaction, at
/// the next record boundary: the undo log of one transaction stays bounded for
/// tables the dump could not split (a split table's parts are mostly one batch).
const BATCH_BYTES: u64 = 256 * 1024 * 1024;

/// The next batch of `feed`: its bytes up to the first record end after `limit`
/// bytes or at `max_records` records, whichever comes first (or to the end of the
/// stream, which sets `done`).
fn batch_stream(
    feed: Arc<tokio::sync::Mutex<Feed>>,
    limit: u64,
    max_records: Option<u64>,
) -> impl futures::Stream<Item = Result<bytes::Bytes>> + Send + 'static {
    let start = (feed, 0u64, 0u64, false);
    futures::stream::unfold(start, move |(feed, sent, records, ended)| async move {
        if ended {
            return None;
        }
        let mut f = feed.lock().await;
        let item = match f.leftover.take() {
            Some(b) => Some(Ok(b)),
            None => f.stream.next().await,
        };
        let mut bytes = match item {
            None => {
                f.done = true;
                return None;
            }
            Some(Err(e)) => {
                drop(f);
                return Some((Err(e), (feed, sent, records, true)));
            }
            Some(Ok(b)) => b,
        };
        // Where this piece is cut, if it is: after the first record end at or after
        // the byte limit, or after the record that reaches the record limit.
        let mut cut = None;
        if sent + bytes.len() as u64 > limit {
            let from = usize::try_from(limit.saturating_sub(sent)).unwrap_or(usize::MAX);
            let from = from.min(bytes.len());
            cut = memchr::memchr(b'\n', &bytes[from..]).map(|pos| from + pos + 1);
        }
        let mut in_piece = None;
        if let Some(max) = max_records {
            let wanted = usize::try_from(max.saturating_sub(records)).unwrap_or(usize::MAX);
            let ends = memchr::memchr_iter(b'\n', &bytes[..cut.unwrap_or(bytes.len())]);
            let mut n = 0;
            for pos in ends {
                n += 1;
                if n == wanted.max(1) {
                    cut = Some(pos + 1);
                    break;
                }
            }
            in_piece = Some(n as u64);
        }
        if let Some(at) = cut {
            let rest = bytes.split_off(at);
            if !rest.is_empty() {
                f.leftover = Some(rest);
            }
        }
        drop(f);
        let sent = sent + bytes.len() as u64;
        let records = records + in_piece.unwrap_or(0);
        Some((Ok(bytes), (feed, sent, records, cut.is_some())))
    })
}

/// One `LOAD DATA` of the next batch of a stream, in its own transaction, checked
/// (warnings, row count) and committed. Returns the records loaded and the warnings
/// about virtual columns that were let pass.
async fn load_batch(
    conn: &mut Conn,
    sql: &str,
    feed: &Arc<tokio::sync::Mutex<Feed>>,
    virtual_columns: &VirtualColumns,
    target: &str,
    doing: &(dyn Fn() -> String + Sync),
) -> Result<(u64, Computed)> {
    let source_error: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let records = Arc::new(AtomicU64::new(0));
    let (err_slot, counter) = (Arc::clone(&source_error), Arc::clone(&records));
    let batch = batch_stream(Arc::clone(feed), BATCH_BYTES, virtual_columns.batch_records);
    let infile = batch
        .map(move |item| match item {
            Ok(bytes) => {
                counter.fetch_add(memchr_count(&bytes), Ordering::Relaxed);
                Ok(bytes)
            }
            Err(e) => {
                let text = e.to_string();
                *err_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                Err(std::io::Error::other(text))
            }
        })
        .boxed();
    // The driver wants a Sync future; the stream is only Send, so it sits in a Mutex.
    let cell = Mutex::new(Some(infile));
    conn.set_infile_handler(async move {
        cell.into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| mysql_async::Error::Other("infile stream taken twice".into()))
    });

    conn::exec(conn, "START TRANSACTION").await?;
    let loaded = conn.query_drop(sql).await;
    let taken = source_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(e) = taken {
        // The driver ended the transfer; make sure nothing of it is committed.
        let _ = conn.query_drop("ROLLBACK").await;
        return Err(e.during(doing()));
    }
    if let Err(e) = loaded {
        let local_infile_off = matches!(
            server_code(&e),
            Some(code::LOAD_INFILE_CAPABILITY_DISABLED | code::NOT_ALLOWED_COMMAND)
        );
        let err = db_error(e);
        if local_infile_off {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "the server refuses LOAD DATA LOCAL INFILE, which dbops restores data with: \
                 enable it with SET GLOBAL local_infile=1 (or start mariadbd with \
                 --local-infile=1)",
            )
            .with_context("table", target)
            .with_source(err));
        }
        return Err(err.during(doing()));
    }
    let affected = conn.affected_rows();
    let warnings = conn.get_warnings();
    let sent = records.load(Ordering::Relaxed);
    let mut computed = Computed::default();
    if warnings > 0 {
        match check_warnings(conn, virtual_columns, u64::from(warnings)).await {
            Ok(c) => computed = c,
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK").await;
                return Err(e.with_context("table", target).during(doing()));
            }
        }
    }
    if affected != sent {
        let _ = conn.query_drop("ROLLBACK").await;
        return Err(Error::new(
            ErrorKind::Mismatch,
            format!("the stream holds {sent} records but the server loaded {affected} rows"),
        )
        .with_context("table", target)
        .during(doing()));
    }
    conn::exec(conn, "COMMIT").await?;
    Ok((sent, computed))
}

/// Warnings the server keeps for `SHOW WARNINGS` (restore sessions set
/// `max_error_count` to this, its maximum).
const WARNINGS_LISTED: u64 = 65_535;

/// The virtual columns of a table being loaded, and how many records a load of it
/// may take so that every warning it can produce is listed and judged.
#[derive(Debug, Default)]
struct VirtualColumns {
    names: BTreeSet<String>,
    batch_records: Option<u64>,
}

impl VirtualColumns {
    /// Reads them from the target's catalog (the table as the restore created it).
    async fn of(conn: &mut Conn, table: &str) -> Result<Self> {
        let rows = conn::query_rows(
            conn,
            &format!(
                "SELECT COLUMN_NAME, EXTRA LIKE '%VIRTUAL%' FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {}",
                quote_str(table)
            ),
        )
        .await?;
        let mut names = BTreeSet::new();
        for row in &rows {
            if conn::number(row, 1)? != 0 {
                names.insert(conn::text(row, 0)?);
            }
        }
        // A row warns at most once per column, plus once for a short or long record;
        // twice that leaves room for an expression that warns more than once. Tables
        // without virtual columns need no limit: any warning fails their load.
        let per_row = 2 * (rows.len() as u64 + 2);
        let batch_records = (!names.is_empty()).then(|| (WARNINGS_LISTED / per_row).max(1));
        Ok(Self {
            names,
            batch_records,
        })
    }
}

/// Warnings of a load about virtual columns: values the server computed while
/// inserting (to maintain an index on them) that did not fit the column's type.
#[derive(Debug, Default)]
struct Computed {
    warnings: u64,
    columns: BTreeSet<String>,
    first: Option<String>,
}

impl Computed {
    fn merge(&mut self, other: Computed) {
        self.warnings += other.warnings;
        self.columns.extend(other.columns);
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    /// The report warning for table `target`, if there were any.
    fn report(&self, target: &str) -> Option<String> {
        let first = self.first.as_ref()?;
        let names: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        Some(format!(
            "table {target}: {} warning(s) about virtual column(s) {} while loading (first: \
             {first}); a virtual column is computed from the stored columns, which were \
             restored exactly, so its values are the source's",
            self.warnings,
            names.join(", ")
        ))
    }
}

/// Judges the `total` warnings of the load into `table` that just ran: each must name
/// a virtual column of the table (computed on insert, not stored, and computed the
/// same way on the source), or the load fails with [`ErrorKind::Mismatch`]. A warning
/// about a stored column, one that names no column (a conversion in the `SET` clause,
/// a duplicate key, a short record), or more warnings than the server lists, fails it.
async fn check_warnings(
    conn: &mut Conn,
    virtual_columns: &VirtualColumns,
    total: u64,
) -> Result<Computed> {
    let shown = conn::query_rows(conn, "SHOW WARNINGS").await?;
    let mut listed = Vec::with_capacity(shown.len());
    for row in &shown {
        let message = conn::text(row, 2)?;
        listed.push((
            format!("{} {message}", conn::text(row, 1)?),
            warning_column(&message),
        ));
    }
    let (computed, stored): (Vec<_>, Vec<_>) = listed.into_iter().partition(|(_, column)| {
        column
            .as_ref()
            .is_some_and(|c| virtual_columns.names.contains(c))
    });
    let unseen = total.saturating_sub((computed.len() + stored.len()) as u64);
    if stored.is_empty() && unseen == 0 {
        return Ok(Computed {
            warnings: computed.len() as u64,
            columns: computed.iter().filter_map(|(_, c)| c.clone()).collect(),
            first: computed.into_iter().next().map(|(text, _)| text),
        });
    }
    // The warnings that touch stored data first: they are the reason.
    let texts: Vec<String> = stored
        .into_iter()
        .chain(computed)
        .take(5)
        .map(|(text, _)| text)
        .collect();
    let unseen = if unseen > 0 {
        format!(" ({unseen} more than the server lists, which could not be checked)")
    } else {
        String::new()
    };
    Err(Error::new(
        ErrorKind::Mismatch,
        format!(
            "loading produced {total} warnings{unseen}, so data would not be restored \
             exactly: {}",
            texts.join("; ")
        ),
    ))
}

/// The column a warning's message names: `… for column 'v' at row 1` or
/// ``… for column `db`.`t`.`v` at row 1``.
fn warning_column(message: &str) -> Option<String> {
    // The last one: a quoted value earlier in the message may hold the phrase.
    let pos = message.rfind("for column ")?;
    let rest = &message[pos + "for column ".len()..];
    if rest.starts_with('`') {
        let mut rest = rest;
        loop {
            let (name, tail) = parse_quoted(rest)?;
            match tail.strip_prefix('.') {
                Some(next) if next.starts_with('`') => rest = next,
                _ => return Some(name),
            }
        }
    }
    let rest = rest.strip_prefix('\'')?;
    let end = rest.rfind("' at row").or_else(|| rest.rfind('\''))?;
    Some(rest[..end].to_owned())
}

fn memchr_count(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_end_at_record_boundaries() {
        let data: Vec<u8> = (0..200)
            .flat_map(|i| format!("{i}\trow {i}\n").into_bytes())
            .collect();
        let pieces: Vec<Result<bytes::Bytes>> = data
            .chunks(37)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let feed = Arc::new(tokio::sync::Mutex::new(Feed {
            stream: Box::pin(futures::stream::iter(pieces)),
            leftover: None,
            done: false,
        }));
        let mut batches = Vec::new();
        while !feed.lock().await.done {
            let batch: Vec<bytes::Bytes> = batch_stream(Arc::clone(&feed), 500, None)
                .try_collect()
                .await
                .expect("no errors");
            batches.push(batch.concat());
        }
        assert!(batches.len() > 4, "{} batches", batches.len());
        for b in &batches[..batches.len() - 1] {
            assert!(b.len() >= 500 && b.len() < 500 + 20, "{}", b.len());
            assert_eq!(b.last(), Some(&b'\n'));
        }
        assert_eq!(batches.concat(), data);
    }

    #[tokio::test]
    async fn batches_end_at_a_record_limit() {
        let data: Vec<u8> = (0..100)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        for piece in [1, 7, 64, 1000] {
            let pieces: Vec<Result<bytes::Bytes>> = data
                .chunks(piece)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            let feed = Arc::new(tokio::sync::Mutex::new(Feed {
                stream: Box::pin(futures::stream::iter(pieces)),
                leftover: None,
                done: false,
            }));
            let mut batches = Vec::new();
            while !feed.lock().await.done {
                let batch: Vec<bytes::Bytes> = batch_stream(Arc::clone(&feed), 1 << 20, Some(30))
                    .try_collect()
                    .await
                    .expect("no errors");
                batches.push(batch.concat());
            }
            let records: Vec<u64> = batches.iter().map(|b| memchr_count(b)).collect();
            assert_eq!(records, vec![30, 30, 30, 10], "pieces of {piece}");
            assert_eq!(batches.concat(), data);
        }
    }

    #[test]
    fn warnings_name_their_column() {
        assert_eq!(
            warning_column("Out of range value for column 'v' at row 1").as_deref(),
            Some("v")
        );
        assert_eq!(
            warning_column("Data truncated for column 'it's' at row 12").as_deref(),
            Some("it's")
        );
        assert_eq!(
            warning_column(
                "Incorrect integer value: 'x for column `a`' for column `db`.`t``1`.`v w` at row 1"
            )
            .as_deref(),
            Some("v w")
        );
        assert_eq!(
            warning_column("Duplicate entry '1' for key 'PRIMARY'"),
            None
        );
        assert_eq!(
            warning_column("Row 3 doesn't contain data for all columns"),
            None
        );
        assert_eq!(
            warning_column("Truncated incorrect INTEGER value: 'x'"),
            None
        );
    }

    #[test]
    fn selection_filters_objects() {
        let s = Selection {
            tables: Some(["a".to_owned()].into()),
        };
        let mut trig = SchemaObject {
            kind: ObjectKind::Trigger,
            name: "t".into(),
            table: Some("a".into()),
            sql: String::new(),
            sql_mode: None,
            character_set_client: None,
            collation_connection: None,
            time_zone: None,
            deferred: None,
        };
        assert!(s.object(&trig));
        trig.table = Some("b".into());
        assert!(!s.object(&trig));
        trig.kind = ObjectKind::View;
        assert!(!s.object(&trig));
        assert!(Selection { tables: None }.object(&trig));
    }
}
