//! Whole servers: every database of a server and its globals in one backup, and the
//! restore that rebuilds them on another server.
//!
//! A whole-server backup is one backup id whose manifest lists its databases
//! ([`Manifest::databases`]); each database's streams are stored under its prefix
//! (`db/<name>/…`) and the server's globals under `globals/…`. Engines never see the
//! prefixes: a [`DumpSink`] wrapper adds them while dumping, and a restore reads one
//! database through [`Manifest::database_view`], which takes them off. The databases
//! are dumped one after another, each in its own snapshot: there is no snapshot across
//! databases (the manifest says so in its warnings).
//!
//! What must not live here: anything engine-specific (how roles are created, which
//! databases a server lists): that is the engines' `dump_globals`, `restore_globals`
//! and `databases`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde::Serialize;

use super::Repository;
use super::backup::BackupOptions;
use super::manifest::{Manifest, ServerDatabase, database_prefix};
use crate::engine::{
    DatabaseEngine, DumpReport, DumpSink, GlobalsPhase, GlobalsReport, GlobalsRestoreOptions,
    RestoreOptions, RestoreReport, StreamSource, StreamSpec, StreamWriter,
};
use crate::{Error, ErrorKind, Result};

/// The warning every whole-server manifest carries.
pub(crate) const NO_CROSS_DATABASE_SNAPSHOT: &str = "each database was backed up in its own \
    snapshot, one after another: there is no snapshot across databases, so changes that \
    span databases may be caught in one and not in another";

/// Options of [`Repository::restore_server`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerRestoreOptions {
    /// How each database is restored (`jobs`, `no_owner`, `keep_failed`; `create` is
    /// decided per database, `clean` replaces databases the target already has).
    pub restore: RestoreOptions,
    /// Only these databases of the backup (and the globals they need); all when empty.
    pub databases: Vec<String>,
}

impl ServerRestoreOptions {
    /// Sets how each database is restored.
    #[must_use]
    pub fn with_restore(mut self, restore: RestoreOptions) -> Self {
        self.restore = restore;
        self
    }

    /// Restores only these databases.
    #[must_use]
    pub fn with_databases(mut self, databases: Vec<String>) -> Self {
        self.databases = databases;
        self
    }
}

/// What [`Repository::restore_server`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct ServerRestoreReport {
    /// Globals created before the databases (roles, users).
    pub globals_before: GlobalsReport,
    /// Each database restored, in order.
    pub databases: Vec<RestoreReport>,
    /// Globals created after the databases (per-database role settings, grants).
    pub globals_after: GlobalsReport,
}

/// Adds a database's prefix to every stream an engine opens, and its name to warnings.
struct PrefixSink {
    inner: Arc<dyn DumpSink>,
    prefix: String,
    database: String,
}

#[async_trait]
impl DumpSink for PrefixSink {
    async fn open_stream(&self, mut spec: StreamSpec) -> Result<Box<dyn StreamWriter>> {
        spec.name = format!("{}{}", self.prefix, spec.name);
        self.inner.open_stream(spec).await
    }

    fn warn(&self, message: String) {
        self.inner
            .warn(format!("database {}: {message}", self.database));
    }
}

impl Repository {
    /// Backs up every database of the server `engine` reaches (its
    /// [`DatabaseEngine::databases`]) and the server's globals, as one backup.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an engine without whole-server operations;
    /// [`ErrorKind::NotFound`] when the server has no database to back up; the engine's
    /// and storage errors, naming the database. On any error no manifest is written.
    pub async fn backup_server(
        &self,
        engine: &dyn DatabaseEngine,
        options: &BackupOptions,
    ) -> Result<Manifest> {
        let started = chrono::Utc::now();
        let databases = engine
            .databases()
            .await
            .map_err(|e| e.during(format!("listing the databases of {}", engine.location())))?;
        if databases.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the server at {} has no database to back up",
                    engine.location()
                ),
            ));
        }
        self.under_backup_lock(async |lock| {
            let progress = options.progress.clone().or_else(|| self.progress.clone());
            let reports: Mutex<Vec<(String, DumpReport)>> = Mutex::new(Vec::new());
            let (collected, names) = (&reports, &databases);
            let ingested = self
                .ingest(progress, lock, |sink| async move {
                    engine
                        .dump_globals(&options.globals, Arc::clone(&sink))
                        .await
                        .map_err(|e| e.during("reading the server's globals"))?;
                    for name in names {
                        self.status(format!("backing up database {name}"));
                        let bound = engine.for_database(name)?;
                        let prefixed: Arc<dyn DumpSink> = Arc::new(PrefixSink {
                            inner: Arc::clone(&sink),
                            prefix: database_prefix(name),
                            database: name.clone(),
                        });
                        let report = bound
                            .dump(&options.dump, prefixed)
                            .await
                            .map_err(|e| e.during(format!("backing up database {name}")))?;
                        collected
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((name.clone(), report));
                    }
                    if let Some(files) = &options.files {
                        files.dump(&sink).await?;
                    }
                    let reports = collected.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut all = DumpReport::default();
                    if let Some((_, first)) = reports.first() {
                        all.server_version = first.server_version.clone();
                        all.server_id = first.server_id.clone();
                    }
                    all.warnings.push(NO_CROSS_DATABASE_SNAPSHOT.to_owned());
                    for (name, r) in reports.iter() {
                        all.warnings
                            .extend(r.warnings.iter().map(|w| format!("database {name}: {w}")));
                    }
                    Ok(all)
                })
                .await
                .map_err(|e| e.during(format!("backup of the server {}", engine.location())))?;
            let per_database = reports.into_inner().unwrap_or_else(PoisonError::into_inner);
            let mut snapshot = BTreeMap::new();
            snapshot.insert(
                "consistency".to_owned(),
                "one snapshot per database, none across databases".to_owned(),
            );
            let manifest = Manifest {
                engine: engine.name().to_owned(),
                database: String::new(),
                source: engine.location(),
                snapshot,
                databases: per_database
                    .into_iter()
                    .map(|(name, r)| ServerDatabase::new(name, r.snapshot))
                    .collect(),
                ..Self::new_manifest(started, options, ingested, true)
            };
            self.record_backup(&manifest, lock).await?;
            Ok(manifest)
        })
        .await
    }

    /// Rebuilds a whole-server backup on the server `engine` reaches: the globals that
    /// databases need (roles, users) first, then each database, created, then what
    /// refers to the databases (per-database role settings, grants). Globals the
    /// target already has are left as they are and named in the report.
    ///
    /// A database the target already has is refused before anything changes, unless
    /// it holds no tables (a new server's `postgres`), or `options.restore.clean`
    /// replaces its content.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a backup of one database or of another engine;
    /// [`ErrorKind::NotFound`] for a database the backup does not hold;
    /// [`ErrorKind::AlreadyExists`] naming the target's databases in the way; the
    /// engine's errors, naming the database and the databases already restored.
    pub async fn restore_server(
        &self,
        manifest: &Manifest,
        engine: &dyn DatabaseEngine,
        options: &ServerRestoreOptions,
    ) -> Result<ServerRestoreReport> {
        manifest.require_engine(engine.name())?;
        if !manifest.is_server() {
            return Err(Error::invalid(format!(
                "backup {} holds one database ({}), not a whole server: restore it into a database",
                manifest.id, manifest.database
            )));
        }
        let held = manifest.database_names();
        for d in &options.databases {
            if !held.contains(d) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "backup {} holds no database {d}; it holds {}",
                        manifest.id,
                        held.join(", ")
                    ),
                ));
            }
        }
        let chosen: Vec<String> = if options.databases.is_empty() {
            held.clone()
        } else {
            held.into_iter()
                .filter(|d| options.databases.contains(d))
                .collect()
        };
        let present = engine
            .databases()
            .await
            .map_err(|e| e.during(format!("listing the databases of {}", engine.location())))?;
        let existing: Vec<&String> = chosen.iter().filter(|d| present.contains(d)).collect();
        if !options.restore.clean {
            let mut in_the_way = Vec::new();
            for d in &existing {
                let info = engine.for_database(d)?.describe().await?;
                if !info.tables.is_empty() {
                    in_the_way.push(format!("{d} ({} tables)", info.tables.len()));
                }
            }
            if !in_the_way.is_empty() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "the target server {} already has database(s) {} that this backup would \
                         restore; nothing was changed: restore onto a new server, drop them, or \
                         replace their content (clean)",
                        engine.location(),
                        in_the_way.join(", ")
                    ),
                ));
            }
        }
        let index = Arc::new(self.load_index().await?);
        let subset = if options.databases.is_empty() {
            Vec::new()
        } else {
            chosen.clone()
        };
        let globals = Arc::new(self.source_with_index(
            &manifest.globals_view(&subset),
            Arc::clone(&index),
            false,
        )) as Arc<dyn StreamSource>;
        self.status(format!("restoring the globals of backup {}", manifest.id));
        let mut report = ServerRestoreReport {
            globals_before: engine
                .restore_globals(
                    Arc::clone(&globals),
                    &GlobalsRestoreOptions::new(GlobalsPhase::BeforeDatabases)
                        .with_databases(subset.clone()),
                )
                .await
                .map_err(|e| {
                    e.during("restoring the server's globals (nothing else was restored)")
                })?,
            ..ServerRestoreReport::default()
        };
        for name in &chosen {
            let view = manifest.database_view(name).ok_or_else(|| {
                Error::internal(format!("database {name} vanished from its backup"))
            })?;
            self.status(format!(
                "restoring database {name} of backup {}",
                manifest.id
            ));
            let exists = existing.contains(&name);
            let restore_options = options
                .restore
                .clone()
                .with_create(!exists)
                .with_clean(exists && options.restore.clean);
            let source = Arc::new(self.source_with_index(&view, Arc::clone(&index), false));
            let done: Vec<String> = report
                .databases
                .iter()
                .map(|r| r.database.clone())
                .collect();
            let restored = match engine
                .for_database(name)?
                .restore(source as Arc<dyn StreamSource>, &restore_options)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    // What was done stays, complete: the databases already restored
                    // get what the globals hold about them; the error says what
                    // exists now and how to start again.
                    let after = if done.is_empty() {
                        Ok(GlobalsReport::default())
                    } else {
                        engine
                            .restore_globals(
                                Arc::clone(&globals),
                                &GlobalsRestoreOptions::new(GlobalsPhase::AfterDatabases)
                                    .with_databases(done.clone()),
                            )
                            .await
                    };
                    let created = &report.globals_before.created;
                    let message = format!(
                        "{}; before it, {} and {}{}; nothing else was restored: to start again, drop what was created and run the restore again",
                        e.message(),
                        if created.is_empty() {
                            "no role or user was created".to_owned()
                        } else {
                            format!("{} were created", created.join(", "))
                        },
                        if done.is_empty() {
                            "no database was restored".to_owned()
                        } else {
                            format!("databases {} were restored", done.join(", "))
                        },
                        match after {
                            Ok(_) if done.is_empty() => String::new(),
                            Ok(_) => " with their grants and settings".to_owned(),
                            Err(a) => format!(" without their grants and settings ({a})"),
                        }
                    );
                    return Err(e
                        .with_message(message)
                        .during(format!("restoring database {name}")));
                }
            };
            let mut restored = restored;
            if exists {
                // Restored into a database the target had (empty): its own properties
                // are the target's, not the backup's.
                restored.warnings.push(format!(
                    "database {name} existed on the target: its content was restored into it; its own properties (owner, encoding, comment, settings) are the target's"
                ));
            }
            report.databases.push(restored);
        }
        report.globals_after = engine
            .restore_globals(
                globals,
                &GlobalsRestoreOptions::new(GlobalsPhase::AfterDatabases).with_databases(subset),
            )
            .await
            .map_err(|e| {
                e.during("restoring what the globals hold about the restored databases")
            })?;
        self.status("");
        Ok(report)
    }

    /// Creates, on the server `engine` reaches, the globals that `manifest` holds (for
    /// a restore of one database: `options.databases` names it, so that only the roles
    /// it needs are made), in the phase `options.phase`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the backup holds no globals; the engine's errors.
    pub async fn restore_globals(
        &self,
        manifest: &Manifest,
        engine: &dyn DatabaseEngine,
        options: &GlobalsRestoreOptions,
    ) -> Result<GlobalsReport> {
        manifest.require_engine(engine.name())?;
        if !manifest.has_globals() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "backup {} holds no globals (roles, users, grants): it was taken before dbops \
                     recorded them, or the server did not let them be read (see its warnings)",
                    manifest.id
                ),
            ));
        }
        let source = self
            .source(&manifest.globals_view(&options.databases), false)
            .await?;
        engine
            .restore_globals(Arc::new(source) as Arc<dyn StreamSource>, options)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::engine::{StreamRole, StreamSpec};
    use crate::repo::StreamRecord;

    fn record(name: &str, role: StreamRole) -> StreamRecord {
        StreamRecord {
            spec: StreamSpec::new(name, role),
            bytes: 1,
            rows: 1,
            chunks: 1,
            digest: name.to_owned(),
            lists: Vec::new(),
        }
    }

    fn server_manifest() -> Manifest {
        let at = chrono::Utc::now();
        let mut shop_snapshot = BTreeMap::new();
        shop_snapshot.insert("snapshot".to_owned(), "s1".to_owned());
        Manifest {
            format_version: 1,
            id: "20261203T000000.000Z-abcdef".into(),
            engine: "postgresql".into(),
            server_version: "15".into(),
            database: String::new(),
            source: "postgres://h/".into(),
            server_id: None,
            host: "h".into(),
            tool_version: "0".into(),
            started: at,
            finished: at,
            tags: BTreeSet::new(),
            snapshot: BTreeMap::new(),
            warnings: Vec::new(),
            stats: Default::default(),
            streams: vec![
                record("globals/roles", StreamRole::Auxiliary),
                record("db/a%2Fb/schema", StreamRole::Schema),
                record("db/a/schema", StreamRole::Schema),
                record("db/a/data/public.t/0", StreamRole::TableData),
            ],
            filter: Default::default(),
            databases: vec![
                ServerDatabase::new("a", shop_snapshot),
                ServerDatabase::new("a/b", BTreeMap::new()),
            ],
        }
    }

    #[test]
    fn a_database_view_takes_its_prefix_off_and_no_other_database() {
        let m = server_manifest();
        assert!(m.is_server() && m.has_globals());
        assert_eq!(m.databases[1].prefix, "db/a%2Fb/");
        let a = m.database_view("a").expect("a");
        let names: Vec<&str> = a.streams.iter().map(|s| s.spec.name.as_str()).collect();
        assert_eq!(names, ["schema", "data/public.t/0"]);
        assert_eq!(a.database, "a");
        assert_eq!(a.snapshot.get("snapshot").map(String::as_str), Some("s1"));
        assert!(!a.is_server() && !a.has_globals());
        let ab = m.database_view("a/b").expect("a/b");
        assert_eq!(ab.streams.len(), 1);
        assert!(m.database_view("c").is_none());

        let globals = m.globals_view(&["a/b".to_owned()]);
        let names: Vec<&str> = globals
            .streams
            .iter()
            .map(|s| s.spec.name.as_str())
            .collect();
        assert_eq!(names, ["globals/roles", "db/a%2Fb/schema"]);
        assert_eq!(m.globals_view(&[]).streams.len(), 4);
        // A whole-server backup is its own series.
        assert!(m.group().all_databases);
        assert_eq!(m.group().to_string(), "all databases on postgresql h:5432");
    }
}
