//! One function per command: gather inputs, call the library, print the result.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use ops_core::maintain::Ended;
use ops_core::repo::{
    BackupFilter, BackupOptions, ChunkerParams, Encryption, ForgetOptions, GroupBy, InPlaceOptions,
    InitOptions, KdfParams, Manifest, Progress, PruneOptions, Repository, ServerRestoreOptions,
    VerifyOptions, groups_of, source_address,
};
use ops_core::{
    DumpOptions, Error, ErrorKind, GlobalsOptions, GlobalsPhase, GlobalsRestoreOptions,
    RestoreOptions, Result, Secret, TableRef, redact_url,
};
use ops_storage::{TargetOptions, open_target};

use crate::cli::{
    BackupArgs, Cli, Command, CopyArgs, FilterArgs, ForgetArgs, InitArgs, KeyCommand, ListArgs,
    PruneArgs, RestoreArgs, ShowArgs, UnlockArgs, VerifyArgs,
};
use crate::output::{ProgressDisplay, bytes, print_json, progress_wanted};

/// Exit code when verification finds damage or a mismatch.
const EXIT_DAMAGE: u8 = 3;

/// Runs the parsed command.
///
/// # Errors
/// Whatever the command met; `main` maps the kind to an exit code.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    lock_wait(&cli)?;
    match &cli.command {
        Command::Init(a) => init(&cli, a).await,
        Command::Backup(a) => backup(&cli, a).await,
        Command::List(a) => list(&cli, a).await,
        Command::Show(a) => show(&cli, a).await,
        Command::Verify(a) => verify(&cli, a).await,
        Command::Restore(a) => restore(&cli, a).await,
        Command::Forget(a) => forget(&cli, a).await,
        Command::Prune(a) => prune(&cli, a).await,
        Command::Copy(a) => copy(&cli, a).await,
        Command::Unlock(a) => unlock(&cli, a).await,
        Command::Key(k) => key(&cli, k).await,
        Command::WalPush(a) => crate::wal::push(&cli, a).await,
        Command::WalFetch(a) => Ok(crate::wal::fetch(&cli, a).await),
        Command::WalReceive(a) => crate::wal::receive(&cli, a).await,
        Command::BinlogArchive(a) => crate::wal::binlog_archive(&cli, a).await,
        Command::Run(a) => crate::agent::run_jobs(&cli, required_config(&cli)?, a).await,
        Command::Daemon(a) => crate::agent::daemon(&cli, required_config(&cli)?, a).await,
        Command::Health(a) => crate::agent::health(&cli, a).await,
        Command::Metrics(a) => crate::agent::metrics(&required_config(&cli)?, a).await,
        Command::Jobs(a) => crate::agent::jobs(&cli, &required_config(&cli)?, a),
        Command::History(a) => crate::agent::history(&cli, &required_config(&cli)?, a).await,
        Command::Config(crate::cli::ConfigCommand::Check) => {
            crate::agent::check(&cli, &required_config(&cli)?)
        }
        Command::Inspect(a) => crate::maintain::inspect(&cli, a).await,
        Command::Maintain(a) => crate::maintain::maintain(&cli, a, lock_wait(&cli)?).await,
        Command::Sessions(a) => crate::maintain::sessions(&cli, a).await,
        Command::Integrity(a) => crate::maintain::integrity(&cli, a).await,
        Command::Archive(a) => crate::maintain::archive(&cli, a).await,
    }
}

/// The config file (`--config` or `DBOPS_CONFIG`), checked; `None` when there is none.
fn config_file(cli: &Cli) -> Result<Option<ops_agent::Config>> {
    match ops_agent::config::config_path(cli.config.as_deref()) {
        Some(path) => ops_agent::Config::load(&path).map(Some),
        None => Ok(None),
    }
}

/// The config file, which the command cannot do without.
pub(crate) fn required_config(cli: &Cli) -> Result<ops_agent::Config> {
    config_file(cli)?.ok_or_else(|| {
        Error::invalid(
            "this command needs a config file: pass --config FILE or set DBOPS_CONFIG (see docs/OPERATIONS.md)",
        )
    })
}

/// The config's repository for one-shot commands: `repo`, else its only
/// `[repositories.NAME]`.
fn config_repository(config: &ops_agent::Config) -> Option<(String, Option<Secret>)> {
    if let Some(r) = &config.repo {
        return Some((r.clone(), None));
    }
    let mut repos = config.repositories.values();
    match (repos.next(), repos.next()) {
        (Some(r), None) => Some((r.url.clone(), r.password.clone())),
        _ => None,
    }
}

/// `--lock-wait`, or the command's default.
fn lock_wait(cli: &Cli) -> Result<std::time::Duration> {
    match &cli.lock_wait {
        Some(text) => parse_wait(text),
        None => Ok(match cli.command {
            Command::Backup(_) | Command::Copy(_) => std::time::Duration::from_secs(600),
            // A heavy lock is tried in short steps this long (issue's default).
            Command::Maintain(_) => std::time::Duration::from_secs(60),
            _ => std::time::Duration::ZERO,
        }),
    }
}

/// Parses `90`, `30s`, `10m`, `1h`.
pub(crate) fn parse_wait(text: &str) -> Result<std::time::Duration> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number.parse().map_err(|_| {
        Error::invalid(format!(
            "--lock-wait '{text}' is not a duration: write seconds or a number with s, m or h (30s, 10m, 1h)"
        ))
    })?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => {
            return Err(Error::invalid(format!(
                "--lock-wait '{text}' has an unknown unit: use s, m or h (30s, 10m, 1h)"
            )));
        }
    };
    Ok(std::time::Duration::from_secs(secs))
}

pub(crate) fn repo_url(cli: &Cli) -> Result<String> {
    if let Some(url) = &cli.repo {
        return Ok(url.clone());
    }
    config_file(cli)?
        .as_ref()
        .and_then(config_repository)
        .map(|(url, _)| url)
        .ok_or_else(|| {
            Error::invalid(
                "no repository given: pass --repo URL, set DBOPS_REPO, or set `repo` (or a single [repositories.NAME]) in the config file",
            )
        })
}

/// The repository password from --password-file, DBOPS_PASSWORD or the config file.
fn given_password(cli: &Cli) -> Result<Option<Secret>> {
    match &cli.password_file {
        Some(file) => read_password(Some(file), "DBOPS_PASSWORD"),
        None => match std::env::var("DBOPS_PASSWORD") {
            Ok(p) => Ok(Some(Secret::new(p))),
            Err(_) => match config_file(cli)? {
                Some(c) if c.password_file.is_some() => {
                    read_password(c.password_file.as_deref(), "DBOPS_PASSWORD")
                }
                Some(c) if cli.repo.is_none() => Ok(config_repository(&c).and_then(|(_, p)| p)),
                _ => Ok(None),
            },
        },
    }
}

/// The repository password as given, else asked on the terminal.
fn password(cli: &Cli) -> Result<Option<Secret>> {
    match given_password(cli)? {
        Some(p) => Ok(Some(p)),
        None => prompt("repository password: "),
    }
}

/// Asks on the terminal (without echo) when there is one; `None` otherwise.
fn prompt(question: &str) -> Result<Option<Secret>> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(None);
    }
    rpassword::prompt_password(question)
        .map(|p| Some(Secret::new(p)))
        .map_err(|e| Error::io("reading the password from the terminal", e))
}

/// A new password: --new-password-file, DBOPS_NEW_PASSWORD, or asked twice.
fn new_password(file: Option<&std::path::Path>) -> Result<Secret> {
    if let Some(p) = read_password(file, "DBOPS_NEW_PASSWORD")? {
        return Ok(p);
    }
    let first = prompt("new repository password: ")?.ok_or_else(|| {
        Error::invalid(
            "no new password: pass --new-password-file FILE or set DBOPS_NEW_PASSWORD (or run on a terminal to be asked)",
        )
    })?;
    let again = prompt("the same password again: ")?.unwrap_or_default();
    if again != first {
        return Err(Error::invalid(
            "the two passwords differ; nothing was changed",
        ));
    }
    Ok(first)
}

fn read_password(file: Option<&std::path::Path>, env: &str) -> Result<Option<Secret>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::WrongPassword,
                format!("the password file {} cannot be read: {e}", path.display()),
            )
        })?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        return Ok(Some(Secret::new(text)));
    }
    Ok(std::env::var(env).ok().map(Secret::new))
}

pub(crate) async fn open_repo(cli: &Cli) -> Result<Repository> {
    let url = repo_url(cli)?;
    let target = open_target(&url, &TargetOptions::default())?;
    let repo = match &cli.key_file {
        Some(file) => Repository::open_with_local_key(target, file).await,
        None => Repository::open(target, password(cli)?.as_ref()).await,
    }
    .map_err(|e| {
        // A key file's own message says what to do; the password hint would mislead.
        if cli.key_file.is_some() && e.kind() == ErrorKind::WrongPassword {
            e
        } else {
            with_cli_hint(e, &url)
        }
    })?;
    Ok(configured(cli, repo))
}

/// Adds what to do in this CLI's words to a library error about opening a repository.
fn with_cli_hint(e: Error, url: &str) -> Error {
    let hint = match e.kind() {
        ErrorKind::NotInitialized if e.context_value("store_missing").is_none() => {
            format!(
                "dbops --repo {} init creates one",
                ops_core::redact_url(url)
            )
        }
        ErrorKind::WrongPassword => {
            "set DBOPS_PASSWORD or pass --password-file FILE (or run on a terminal to be asked)"
                .to_owned()
        }
        _ => return e,
    };
    let message = format!("{}; {hint}", e.message());
    e.with_message(message)
}

/// Attaches a progress display to `repo` for a long operation (only on a terminal,
/// without --quiet and --json); dropping the display ends it.
fn watched(cli: &Cli, repo: Repository, what: &'static str) -> (Repository, ProgressDisplay) {
    let progress = Arc::new(Progress::default());
    let enabled = progress_wanted(cli.quiet, cli.json);
    let display = ProgressDisplay::start(&progress, enabled, what);
    let repo = if enabled {
        repo.with_progress(progress)
    } else {
        repo
    };
    (repo, display)
}

/// Applies `--cache-dir` / `--no-cache` (default: the usual cache folder) and
/// `--lock-wait`.
fn configured(cli: &Cli, repo: Repository) -> Repository {
    let repo = match lock_wait(cli) {
        Ok(wait) => repo.with_lock_wait(wait),
        Err(_) => repo,
    };
    if cli.no_cache {
        return repo;
    }
    let from_env = std::env::var_os("DBOPS_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    match cli
        .cache_dir
        .clone()
        .or(from_env)
        .or_else(Repository::default_cache_dir)
    {
        Some(dir) => repo.with_cache_dir(dir),
        None => repo,
    }
}

async fn init(cli: &Cli, a: &InitArgs) -> Result<ExitCode> {
    let target = open_target(&repo_url(cli)?, &TargetOptions::default())?;
    let encryption = match (a.no_encryption, given_password(cli)?) {
        (true, Some(_)) => {
            tracing::warn!("--no-encryption given: the password is not used");
            Encryption::None
        }
        (true, None) => Encryption::None,
        (false, Some(p)) => Encryption::Password(p),
        (false, None) => Encryption::Password(new_password(None).map_err(|_| {
            Error::invalid(
                "no password for the new repository: set DBOPS_PASSWORD or pass --password-file FILE, run on a terminal to be asked (or --no-encryption to store data unencrypted)",
            )
        })?),
    };
    let avg = a.chunk_size_kib.saturating_mul(1024);
    let options = InitOptions::new(encryption)
        .with_chunker(ChunkerParams {
            min: (avg / 4).max(64),
            avg,
            max: avg.saturating_mul(8),
        })
        .with_pack_size(a.pack_size_mib.saturating_mul(1024 * 1024))
        .with_compression_level(a.compression_level)
        .with_kdf(KdfParams {
            memory_kib: a.kdf_memory_mib.saturating_mul(1024),
            ..KdfParams::default()
        })
        .with_allow_unencrypted_remote(a.no_encryption);
    let repo = Repository::init(target, options).await?;
    let location = repo.target().location();
    if cli.json {
        // The config minus the unencrypted repository's id key: output is for people
        // and scripts, and keys stay in the repository.
        let c = repo.config();
        print_json(&json!({
            "ok": true,
            "repository": location,
            "id": c.id,
            "version": c.version,
            "encryption": c.encryption,
            "chunker": c.chunker,
            "pack_size": c.pack_size,
            "compression": c.compression,
            "note": repo.is_encrypted().then_some(KEEP_PASSWORD_SAFE),
        }));
    } else {
        println!(
            "created {} repository {} at {location}",
            if repo.is_encrypted() {
                "an encrypted"
            } else {
                "an UNENCRYPTED"
            },
            repo.config().id
        );
        if repo.is_encrypted() {
            eprintln!("\n{KEEP_PASSWORD_SAFE}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Said once, when an encrypted repository is created.
const KEEP_PASSWORD_SAFE: &str = "Keep the password safe: it is the only way to read these backups. \
A lost password cannot be recovered, by dbops or anyone else, and means lost backups. \
Store it in a password manager or vault apart from this host, and consider a second \
password kept elsewhere as a recovery key (`dbops key add`).";

async fn backup(cli: &Cli, a: &BackupArgs) -> Result<ExitCode> {
    ops_core::repo::ordinary_tags(&a.tags)?;
    let files = crate::files::trees(a)?;
    let engine = match a.database.as_deref() {
        Some(url) if a.physical => Some(crate::wal::physical_engine(url)?),
        Some(url) => Some(dbops::engine(url)?),
        None => None,
    };
    let (repo, display) = watched(cli, open_repo(cli).await?, "backup");
    // The repository's progress (set by `watched` on a terminal) is the backup's too.
    let options = BackupOptions::default()
        .with_dump(
            DumpOptions::default()
                .with_jobs(a.jobs)
                .with_split_bytes(a.split_mib.saturating_mul(1024 * 1024))
                .with_filter(table_filter(a)?),
        )
        .with_tags(a.tags.iter().cloned())
        .with_globals(GlobalsOptions::default().with_role_passwords(a.with_role_passwords));
    let options = match &files {
        Some(f) => options.with_files(f.clone()),
        None => options,
    };
    let started = Instant::now();
    let result = match (&engine, &files) {
        (Some(engine), _) if a.all_databases => repo.backup_server(engine.as_ref(), &options).await,
        (Some(engine), _) => repo.backup(engine.as_ref(), &options).await,
        (None, Some(files)) => repo.backup_files(files, &options).await,
        (None, None) => Err(Error::invalid(
            "nothing to back up: give a database URL, or --path",
        )),
    };
    drop(display);
    let m = result.map_err(|e| {
        // A server URL without a database: the way to take them all is a flag.
        if e.kind() == ErrorKind::InvalidInput && e.message().contains("names none") {
            let message = format!(
                "{} (dbops: --all-databases backs up every database of the server)",
                e.message()
            );
            e.with_message(message)
        } else {
            e
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        print_json(&json!({
            "ok": true,
            "id": m.id,
            "engine": m.engine,
            "database": m.database,
            "source": m.source,
            "server_version": m.server_version,
            "tables": m.tables().len(),
            "streams": m.streams.len(),
            "stats": m.stats,
            "snapshot": m.snapshot,
            "warnings": m.warnings,
            "filter": m.filter,
            "databases": m.databases,
            "globals": m.has_globals(),
            "files": ops_core::repo::trees_of(&m)?,
            "seconds": secs,
        }));
    } else {
        // The warnings were logged as they happened; the manifest keeps them.
        crate::files::print_trees(&m)?;
        eprintln!(
            "backup {} of {} ({} tables): {} read, {} new, {} stored in {:.1} s",
            m.id,
            backed_up(&m),
            m.tables().len(),
            bytes(m.stats.bytes),
            bytes(m.stats.new_bytes),
            bytes(m.stats.stored_bytes),
            secs
        );
        println!("{}", m.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a backup holds, in words: `shop`, or `every database of the server (a, b)`.
fn backed_up(m: &Manifest) -> String {
    if m.is_server() {
        format!(
            "every database of the server ({})",
            m.database_names().join(", ")
        )
    } else {
        m.database.clone()
    }
}

/// The table filter of `backup`'s flags; a bad pattern names its flag.
fn table_filter(a: &BackupArgs) -> Result<ops_core::TableFilter> {
    let flag = |name: &'static str| {
        move |e: Error| {
            let message = format!("{name}: {}", e.message());
            e.with_message(message)
        }
    };
    ops_core::TableFilter::default()
        .with_tables(&a.tables)
        .map_err(flag("--table"))?
        .with_exclude_tables(&a.exclude_tables)
        .map_err(flag("--exclude-table"))?
        .with_exclude_table_data(&a.exclude_table_data)
        .map_err(flag("--exclude-table-data"))?
        .with_schemas(&a.schemas)
        .map_err(flag("--schema"))?
        .with_exclude_schemas(&a.exclude_schemas)
        .map_err(flag("--exclude-schema"))
}

fn summary_json(m: &Manifest, group: &ops_core::repo::BackupGroup) -> serde_json::Value {
    json!({
        "id": m.id,
        "time": m.started,
        "finished": m.finished,
        "engine": m.engine,
        "database": m.database,
        "databases": m.database_names(),
        "whole_server": m.is_server(),
        "source": m.source,
        "address": source_address(m),
        "server_id": m.server_id,
        "group": group,
        "server_version": m.server_version,
        "host": m.host,
        "tags": m.tags,
        "tables": m.tables().len(),
        "stats": m.stats,
    })
}

/// Resolves a backup selector; a miss says where to look.
pub(crate) async fn pick(repo: &Repository, spec: &str, filter: &BackupFilter) -> Result<Manifest> {
    repo.select(spec, filter).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            let message = format!("{}; `dbops list` shows the backups", e.message());
            e.with_message(message)
        } else {
            e
        }
    })
}

/// The filter the command-line flags describe.
pub(crate) fn backup_filter(a: &FilterArgs) -> BackupFilter {
    let mut f = BackupFilter::default();
    if let Some(d) = &a.database {
        f = f.with_database(d);
    }
    if let Some(e) = &a.engine {
        f = f.with_engine(e);
    }
    if let Some(h) = &a.host {
        f = f.with_host(h);
    }
    for t in &a.tags {
        f = f.with_tag(t);
    }
    f
}

async fn list(cli: &Cli, a: &ListArgs) -> Result<ExitCode> {
    let repo = open_repo(cli).await?;
    let backups = repo
        .list_backups_matching(&backup_filter(&a.filter))
        .await?;
    let groups = groups_of(&backups, &GroupBy::default());
    let mut by_group: std::collections::BTreeMap<_, Vec<&Manifest>> =
        std::collections::BTreeMap::new();
    for (m, g) in backups.iter().zip(&groups) {
        by_group.entry(g).or_default().push(m);
    }
    if let Some(n) = a.last {
        for members in by_group.values_mut() {
            let skip = members.len().saturating_sub(n);
            members.drain(..skip);
        }
    }
    if cli.json {
        let items: Vec<_> = by_group
            .iter()
            .flat_map(|(g, members)| members.iter().map(|m| summary_json(m, g)))
            .collect();
        print_json(&json!({ "ok": true, "backups": items }));
    } else if by_group.is_empty() {
        println!("no backups in {}", repo.target().location());
    } else {
        for (i, (g, members)) in by_group.iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("{g}: {} backups", members.len());
            println!(
                "  {:<28} {:<20} {:<11} {:<20} {:>10} {:>10}  tags",
                "ID", "TIME (UTC)", "ENGINE", "DATABASE", "SIZE", "ADDED"
            );
            for m in members {
                println!(
                    "  {:<28} {:<20} {:<11} {:<20} {:>10} {:>10}  {}",
                    m.id,
                    m.started.format("%Y-%m-%d %H:%M:%S"),
                    m.engine,
                    if m.is_server() {
                        format!("(all: {})", m.databases.len())
                    } else {
                        m.database.clone()
                    },
                    bytes(m.stats.bytes),
                    bytes(m.stats.stored_bytes),
                    m.tags.iter().cloned().collect::<Vec<_>>().join(",")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(cli: &Cli, a: &ShowArgs) -> Result<ExitCode> {
    let repo = open_repo(cli).await?;
    let m = pick(&repo, &a.id, &backup_filter(&a.filter)).await?;
    if cli.json {
        let mut doc = serde_json::to_value(&m).map_err(|e| Error::internal(e.to_string()))?;
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("ok".into(), json!(true));
        }
        print_json(&doc);
        return Ok(ExitCode::SUCCESS);
    }
    println!("backup      {}", m.id);
    println!("engine      {} {}", m.engine, m.server_version);
    if m.is_server() {
        println!(
            "databases   {} (whole server from {})",
            m.database_names().join(", "),
            m.source
        );
        for d in &m.databases {
            for (k, v) in &d.snapshot {
                println!("snapshot    {}: {k} = {v}", d.name);
            }
        }
    } else {
        println!("database    {} ({})", m.database, m.source);
    }
    if m.has_globals() {
        println!("globals     yes (restore with --with-globals or --all-databases)");
    }
    println!("group       {}", m.group());
    println!("taken       {} – {} on {}", m.started, m.finished, m.host);
    println!("dbops       {}", m.tool_version);
    if !m.tags.is_empty() {
        println!(
            "tags        {}",
            m.tags.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for (k, v) in &m.snapshot {
        println!("snapshot    {k} = {v}");
    }
    if !m.filter.is_empty() {
        println!("tables      {}", m.filter);
    }
    println!(
        "size        {} in {} chunks; this backup added {} new ({} stored in {} packs)",
        bytes(m.stats.bytes),
        m.stats.chunks,
        bytes(m.stats.new_bytes),
        bytes(m.stats.stored_bytes),
        m.stats.packs
    );
    for w in &m.warnings {
        println!("warning     {w}");
    }
    crate::files::print_trees(&m)?;
    if a.files {
        return crate::files::list_entries(&repo, &m).await;
    }
    println!();
    println!("{:<48} {:>12} {:>12}", "STREAM", "ROWS", "BYTES");
    for s in &m.streams {
        println!("{:<48} {:>12} {:>12}", s.spec.name, s.rows, bytes(s.bytes));
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(cli: &Cli, a: &VerifyArgs) -> Result<ExitCode> {
    let (repo, display) = watched(cli, open_repo(cli).await?, "verify");
    let filter = backup_filter(&a.filter);
    let archives = if a.all || a.wal {
        dbops::postgres::wal::check_archive(&repo).await?
    } else {
        Vec::new()
    };
    if a.wal && !a.all && a.id.is_none() {
        // The archive alone.
        drop(display);
        return Ok(crate::wal::print_archives(cli, &archives));
    }
    let manifests = if a.all {
        repo.list_backups_matching(&filter).await?
    } else {
        vec![pick(&repo, a.id.as_deref().unwrap_or("latest"), &filter).await?]
    };
    let level = if a.read_data {
        "read-data"
    } else {
        "structure"
    };
    let report = repo
        .verify(
            &manifests,
            &VerifyOptions::new(a.read_data).with_jobs(a.jobs),
        )
        .await?;
    let mut damaged = !report.ok() || archives.iter().any(|s| !s.missing.is_empty());
    let mut restores = Vec::new();
    if a.restore {
        let config = config_file(cli)?;
        // A whole-server backup is proved database by database.
        let views: Vec<Manifest> = manifests
            .iter()
            .flat_map(|m| {
                if m.is_server() {
                    m.database_names()
                        .iter()
                        .filter_map(|d| m.database_view(d))
                        .collect()
                } else {
                    vec![m.clone()]
                }
            })
            .collect();
        for m in &views {
            let checks = config
                .as_ref()
                .map(|c| ops_agent::integrity::checks_for_backup(c, m))
                .unwrap_or_default();
            if m.engine == dbops::postgres::physical::ENGINE_NAME {
                let proof = crate::wal::prove_physical(cli, &repo, m).await;
                damaged |= proof.get("ok") != Some(&serde_json::Value::Bool(true));
                restores.push(proof);
                continue;
            }
            let check = verify_by_restore(&repo, m, a, &checks).await;
            match check {
                Ok((c, integrity)) => {
                    let holds = integrity.iter().all(|r| r.holds());
                    let ok = c.ok() && holds;
                    damaged |= !ok;
                    restores.push(json!({
                        "backup": m.id,
                        "database": m.database,
                        "ok": ok,
                        "check": c,
                        "integrity": integrity,
                    }));
                }
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Mismatch) => {
                    damaged = true;
                    restores.push(json!({
                        "backup": m.id,
                        "database": m.database,
                        "ok": false,
                        "error": e.to_string(),
                    }));
                }
                Err(e) => return Err(e.during(format!("verifying backup {} by restore", m.id))),
            }
        }
    }
    drop(display);
    if a.restore && !damaged && !restores.is_empty() {
        record_one_shot_proof(cli, &manifests).await;
    }
    if cli.json {
        print_json(&json!({
            "ok": !damaged,
            "level": level,
            "report": report,
            "restores": restores,
            "wal_archives": archives,
        }));
    } else {
        crate::wal::print_archive_lines(&archives);
        for p in &report.problems {
            println!(
                "DAMAGED backup {}{}{}: {}",
                p.backup,
                p.table
                    .as_ref()
                    .map(|t| format!(" table {t}"))
                    .unwrap_or_default(),
                p.chunk
                    .as_ref()
                    .map(|c| format!(" chunk {c}"))
                    .unwrap_or_default(),
                p.message
            );
        }
        println!(
            "{}: {} backups, {} streams checked ({level}){}",
            if report.ok() { "ok" } else { "DAMAGE FOUND" },
            report.backups.len(),
            report.streams,
            if a.read_data {
                format!(", {} read", bytes(report.bytes_read))
            } else {
                String::new()
            }
        );
        for r in &restores {
            print_restore_check(r);
        }
    }
    Ok(if damaged {
        ExitCode::from(EXIT_DAMAGE)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_restore_check(r: &serde_json::Value) {
    let id = r["backup"].as_str().unwrap_or_default();
    if let Some(err) = r.get("error").and_then(|e| e.as_str()) {
        println!("restore of {id} FAILED: {err}");
        return;
    }
    let check = &r["check"];
    println!(
        "restore of {id}{} into {}:",
        r["database"]
            .as_str()
            .map(|d| format!(" (database {d})"))
            .unwrap_or_default(),
        check["database"].as_str().unwrap_or_default()
    );
    if let Some(prepared) = check["restore"]["prepared"].as_array() {
        for p in prepared {
            println!(
                "  created on the throwaway server: {}",
                p.as_str().unwrap_or_default()
            );
        }
    }
    println!("  compared table by table: row counts and a digest of every row's content");
    if let Some(tables) = check["tables"].as_array() {
        for t in tables {
            let ok = t["matches"].as_bool().unwrap_or(false);
            println!(
                "  {:<6} {:<48} stored {:>10} restored {:>10}",
                if ok { "ok" } else { "DIFFERS" },
                t["table"].as_str().unwrap_or_default(),
                t["expected_rows"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string()),
                t["actual_rows"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string()),
            );
        }
    }
    if let Some(problems) = check["problems"].as_array() {
        for p in problems {
            println!("  PROBLEM {}", p.as_str().unwrap_or_default());
        }
    }
    if let Some(results) = r["integrity"].as_array() {
        for c in results {
            let status = c["status"].as_str().unwrap_or_default();
            let detail = match (c["rows"]["count"].as_u64(), c["error"].as_str()) {
                (_, Some(e)) => format!("could not run: {e}"),
                (Some(n), None) => format!("{n} rows"),
                _ => String::new(),
            };
            println!(
                "  integrity {:<10} {} on the restored copy: {detail}",
                if status == "healthy" { "ok" } else { status },
                c["name"].as_str().unwrap_or_default()
            );
        }
    }
    let tables_match = check["tables"]
        .as_array()
        .is_some_and(|t| t.iter().all(|t| t["matches"].as_bool() == Some(true)))
        && check["problems"].as_array().is_none_or(Vec::is_empty);
    println!(
        "  {}",
        match (tables_match, r["ok"].as_bool().unwrap_or(false)) {
            (true, true) => "every table matches",
            (true, false) => "every table matches, but integrity checks FAIL on the restored copy",
            _ => "MISMATCH",
        }
    );
}

/// Records a successful restore proof in the config's run history, so that the
/// `restore_proof_age` check counts one-shot proofs as it counts a verify job's.
/// Without a config, or for a repository the config does not name, there is no
/// history to write to. A failure to record is a warning: the proof itself holds.
async fn record_one_shot_proof(cli: &Cli, manifests: &[Manifest]) {
    let recorded = async {
        let Some(config) = config_file(cli)? else {
            return Ok::<_, Error>(());
        };
        let url = repo_url(cli)?;
        let Some(name) = config
            .repositories
            .iter()
            .find(|(_, r)| r.url == url)
            .map(|(n, _)| n.clone())
        else {
            return Ok(());
        };
        let now = chrono::Utc::now();
        let mut run = ops_core::jobs::RunRecord::start(
            ops_agent::probes::backups::one_shot_proof_job(&name),
            ops_core::jobs::JobKind::Verify,
            ops_core::jobs::Trigger::Manual,
            now,
        );
        run.attempts = 1;
        run.verified = Some("restore".to_owned());
        run.backup_id = manifests
            .iter()
            .max_by_key(|m| m.finished)
            .map(|m| m.id.clone());
        run.finish(ops_core::jobs::RunStatus::Success, None, chrono::Utc::now());
        let history = ops_agent::history::RunHistory::open(&config.state_dir).await?;
        history.insert(&run).await?;
        history.close().await;
        Ok(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!("the restore proof could not be recorded in the run history: {e}");
    }
}

async fn verify_by_restore(
    repo: &Repository,
    m: &Manifest,
    a: &VerifyArgs,
    checks: &[ops_core::maintain::IntegrityCheck],
) -> Result<(
    ops_core::repo::RestoreCheck,
    Vec<ops_core::maintain::IntegrityResult>,
)> {
    let options = RestoreOptions::default()
        .with_jobs(a.jobs)
        .with_no_owner(a.no_owner);
    dbops::prove_restore_checked(repo, m, a.into.as_deref(), &options, checks)
        .await
        .map_err(|e| {
            // The library says it in its own words; here the way out is a flag.
            if a.into.is_none() && e.message().starts_with("no throwaway server") {
                let message = format!(
                    "no throwaway server for engine '{}': pass --into DB_URL",
                    m.engine
                );
                e.with_message(message)
            } else {
                e
            }
        })
}

async fn restore(cli: &Cli, a: &RestoreArgs) -> Result<ExitCode> {
    if a.physical {
        return crate::wal::restore_physical(cli, a).await;
    }
    let Some(url) = a.database.as_deref() else {
        // Files alone.
        let repo = open_repo(cli).await?;
        let m = pick(&repo, &a.id, &backup_filter(&a.filter)).await?;
        let report = crate::files::restore(&repo, &m, a).await?;
        crate::files::print_restore(cli, &m, report.as_ref(), false);
        return Ok(ExitCode::SUCCESS);
    };
    let engine = dbops::engine(url)?;
    let (repo, display) = watched(cli, open_repo(cli).await?, "restore");
    let m = pick(&repo, &a.id, &backup_filter(&a.filter)).await?;
    // What would stop the files is found before the database is touched.
    crate::files::check(&repo, &m, a).await?;
    if a.all_databases {
        let restored = restore_server(cli, a, &repo, &m, engine.as_ref()).await;
        drop(display);
        return restored;
    }
    let full = m.clone();
    let m = one_database(m, a.source_database.as_deref())?;
    // A point in time is checked against the archive before anything is restored.
    let binlog_plan = match &a.target_time {
        Some(t) => Some(crate::wal::binlog_plan(&repo, &m, t, url).await?),
        None => None,
    };
    // MariaDB grants name their database: under another name they would land on
    // whatever database has the old one. Refused before anything is created.
    if a.with_globals && m.engine == "mariadb" && engine.database() != m.database {
        return Err(Error::invalid(format!(
            "--with-globals restores database {}'s users and grants, which name it: restore it under its own name, or without --with-globals and grant on {} by hand",
            m.database,
            engine.database()
        )));
    }
    let globals_before = if a.with_globals {
        let options = GlobalsRestoreOptions::new(GlobalsPhase::BeforeDatabases)
            .with_databases(vec![m.database.clone()]);
        Some(
            repo.restore_globals(&full, engine.as_ref(), &options)
                .await
                .map_err(|e| {
                    e.during(format!(
                        "creating the roles database {} needs (nothing else was restored)",
                        m.database
                    ))
                })?,
        )
    } else {
        None
    };
    let default_schema = if m.engine == "postgresql" {
        "public".to_owned()
    } else {
        m.database.clone()
    };
    let tables = a
        .tables
        .iter()
        .map(|t| TableRef::parse(t, &default_schema))
        .collect::<Result<Vec<_>>>()?;
    let options = RestoreOptions::default()
        .with_jobs(a.jobs)
        .with_create(a.create)
        .with_clean(a.clean)
        .with_keep_failed(a.keep_failed)
        .with_tables(tables)
        .with_schemas(a.schemas.clone())
        .with_no_owner(a.no_owner);
    let started = Instant::now();
    let sessions = dbops::maintenance(url)?;
    let in_place = InPlaceOptions::default()
        .with_safety_backup(!a.no_safety_backup)
        .with_end_sessions(a.terminate_connections)
        .with_backup(
            BackupOptions::default().with_dump(DumpOptions::default().with_jobs(a.jobs.max(1))),
        );
    let report = repo
        .restore_in_place(&m, engine.as_ref(), sessions.as_ref(), &options, &in_place)
        .await
        .map_err(|e| {
            // The roles --with-globals created come before the restore's own checks:
            // a refusal names them, since they stay.
            let e = match globals_before.as_ref().filter(|g| !g.created.is_empty()) {
                Some(g) => {
                    let message = format!(
                        "{}; --with-globals had already created {}, which stay",
                        e.message().replace("nothing was changed", "the database was not changed"),
                        g.created.join(", ")
                    );
                    e.with_message(message)
                }
                None => e,
            };
            let e = match e.kind() {
                // The library says what to do in its own words; here they are flags.
                ErrorKind::TargetNotEmpty => {
                    let message = format!(
                        "{} (dbops: --clean replaces the content; or restore into a new database with --create)",
                        e.message()
                    );
                    e.with_message(message)
                }
                ErrorKind::Locked
                    if e.context_value("sessions").is_some() && !a.terminate_connections =>
                {
                    let message = format!(
                        "{} (dbops: --terminate-connections ends them)",
                        e.message()
                    );
                    e.with_message(message)
                }
                _ => e,
            };
            // After a safety backup, the command that rolls back.
            let e = match e.context_value("safety_backup").map(str::to_owned) {
                Some(id) => {
                    let message = format!(
                        "{} (dbops: to roll back, dbops restore {id} {} --clean)",
                        e.message(),
                        redact_url(url)
                    );
                    e.with_message(message)
                }
                None => e,
            };
            e.during(format!(
                "restore of backup {} into {}",
                m.id,
                engine.location()
            ))
        })?;
    let globals_after = match &globals_before {
        Some(_) => {
            let options = GlobalsRestoreOptions::new(GlobalsPhase::AfterDatabases)
                .with_databases(vec![m.database.clone()]);
            Some(
                repo.restore_globals(&full, engine.as_ref(), &options)
                    .await
                    .map_err(|e| {
                        e.during(format!(
                            "restoring the role settings of database {} (its content is restored)",
                            m.database
                        ))
                    })?,
            )
        }
        None => None,
    };
    drop(display);
    let secs = started.elapsed().as_secs_f64();
    let safety = report.safety_backup.as_ref().map(|m| m.id.clone());
    let ended: Vec<i64> = report
        .ended
        .iter()
        .flat_map(|r| &r.sessions)
        .filter(|s| s.outcome == Ended::Terminated)
        .map(|s| s.session.id)
        .collect();
    let report = report.restore;
    let rows: u64 = report.tables.values().sum();
    // The files after the database (checked before it): a failure now says that the
    // database's part is done. They are the whole backup's: one database's view of a
    // whole-server backup holds none.
    let files = crate::files::restore_after_database(&repo, &full, a).await?;
    let replay_span = binlog_plan.as_ref().map(|p| (p.from.clone(), p.until));
    let replayed = match binlog_plan {
        Some(plan) => Some(crate::wal::binlog_replay(plan, &m, url).await?),
        None => None,
    };
    if cli.json {
        print_json(&json!({
            "ok": true,
            "backup": m.id,
            "source_database": m.database,
            "source": m.source,
            "database": report.database,
            "target": engine.location(),
            "tables": report.tables,
            "rows": rows,
            "warnings": report.warnings,
            "safety_backup": safety,
            "ended_sessions": ended,
            "files": files,
            "globals": globals_before.as_ref().map(|b| json!({ "before": b, "after": globals_after })),
            "replayed": replayed,
            "seconds": secs,
        }));
    } else {
        crate::files::print_restore(cli, &full, files.as_ref(), true);
        for g in globals_before.iter().chain(globals_after.iter()) {
            print_globals(g);
        }
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        if let Some(id) = &safety {
            println!(
                "safety backup {id} holds the target as it was before (restore it by id to roll back; `--tag safety` lists them)"
            );
        }
        if !ended.is_empty() {
            println!("ended {} sessions on the target: {ended:?}", ended.len());
        }
        if let (Some(r), Some((from, until))) = (&replayed, &replay_span) {
            println!(
                "replayed the binary log from {} to {} ({} events of {} files), the last event at {}",
                from,
                until.format("%Y-%m-%d %H:%M:%S UTC"),
                r.events,
                r.files.len(),
                r.last_event
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|| "-".to_owned())
            );
        }
        println!(
            "restored backup {} of database {} (taken {}) into {}: {} tables, {rows} rows in {secs:.1} s",
            m.id,
            m.database,
            m.started.format("%Y-%m-%d %H:%M:%S UTC"),
            engine.location(),
            report.tables.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The backup of the one database a restore takes: the backup itself, or the
/// database `--source-database` names out of a whole-server backup.
fn one_database(m: Manifest, source_database: Option<&str>) -> Result<Manifest> {
    match (source_database, m.is_server()) {
        (None, false) => Ok(m),
        (Some(name), true) => m.database_view(name).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "backup {} holds no database {name}; it holds {}",
                    m.id,
                    m.database_names().join(", ")
                ),
            )
        }),
        (None, true) => Err(Error::invalid(format!(
            "backup {} is a whole-server backup of databases {}: restore it onto a server with \
             --all-databases, or one of its databases with --source-database NAME",
            m.id,
            m.database_names().join(", ")
        ))),
        (Some(_), false) => Err(Error::invalid(format!(
            "--source-database chooses a database of a whole-server backup; backup {} holds \
             one database, {}",
            m.id, m.database
        ))),
    }
}

/// One line per kind of what a globals restore did.
fn print_globals(g: &ops_core::GlobalsReport) {
    for c in &g.created {
        println!("created {c}");
    }
    if !g.existing.is_empty() {
        println!("left as they were (exist): {}", g.existing.join(", "));
    }
    for w in &g.warnings {
        eprintln!("warning: {w}");
    }
}

/// `restore ID SERVER_URL --all-databases`.
async fn restore_server(
    cli: &Cli,
    a: &RestoreArgs,
    repo: &Repository,
    m: &Manifest,
    engine: &dyn ops_core::DatabaseEngine,
) -> Result<ExitCode> {
    if a.terminate_connections {
        return Err(Error::invalid(
            "--terminate-connections is not built for --all-databases: end the sessions on the \
             target's databases first (dbops sessions lists them), then restore",
        ));
    }
    if a.clean && !a.no_safety_backup {
        return Err(Error::invalid(
            "restore --all-databases --clean replaces databases without taking safety backups \
             first: take a backup of the target server (dbops backup SERVER_URL \
             --all-databases), then confirm with --no-safety-backup",
        ));
    }
    let options = ServerRestoreOptions::default().with_restore(
        RestoreOptions::default()
            .with_jobs(a.jobs)
            .with_clean(a.clean)
            .with_keep_failed(a.keep_failed)
            .with_no_owner(a.no_owner),
    );
    let started = Instant::now();
    let report = repo
        .restore_server(m, engine, &options)
        .await
        .map_err(|e| {
            let e = if e.kind() == ErrorKind::AlreadyExists {
                let message = format!(
                    "{} (dbops: --clean --no-safety-backup replaces their content)",
                    e.message()
                );
                e.with_message(message)
            } else {
                e
            };
            e.during(format!(
                "restore of backup {} onto the server {}",
                m.id,
                engine.location()
            ))
        })?;
    let files = crate::files::restore_after_database(repo, m, a).await?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        print_json(&json!({
            "ok": true,
            "backup": m.id,
            "source": m.source,
            "target": engine.location(),
            "globals": { "before": report.globals_before, "after": report.globals_after },
            "databases": report.databases,
            "files": files,
            "seconds": secs,
        }));
    } else {
        crate::files::print_restore(cli, m, files.as_ref(), true);
        print_globals(&report.globals_before);
        for r in &report.databases {
            for w in &r.warnings {
                eprintln!("warning: database {}: {w}", r.database);
            }
            println!(
                "restored database {}: {} tables, {} rows",
                r.database,
                r.tables.len(),
                r.tables.values().sum::<u64>()
            );
        }
        print_globals(&report.globals_after);
        println!(
            "restored backup {} (taken {}) onto {}: {} databases in {secs:.1} s",
            m.id,
            m.started.format("%Y-%m-%d %H:%M:%S UTC"),
            engine.location(),
            report.databases.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn prune(cli: &Cli, a: &PruneArgs) -> Result<ExitCode> {
    let (repo, display) = watched(cli, open_repo(cli).await?, "prune");
    let options = PruneOptions::default()
        .with_dry_run(a.dry_run)
        .with_max_unused(a.max_unused / 100.0)
        .with_unindexed_grace_secs(a.unindexed_grace);
    let r = repo.prune(&options).await;
    drop(display);
    let r = r?;
    if cli.json {
        print_json(&json!({ "ok": true, "prune": r }));
    } else {
        println!(
            "{}{} backups keep {} blobs; {} of {} packs deleted, {} repacked into {}; {} freed; {} stale locks removed",
            if r.dry_run { "dry run: " } else { "" },
            r.backups,
            r.referenced_blobs,
            r.packs_deleted,
            r.packs_before,
            r.packs_repacked,
            r.packs_written,
            bytes(r.bytes_freed),
            r.stale_locks_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn copy(cli: &Cli, a: &CopyArgs) -> Result<ExitCode> {
    let from_target = open_target(&a.from, &TargetOptions::default())?;
    let from_password = read_password(a.from_password_file.as_deref(), "DBOPS_FROM_PASSWORD")?;
    let from = Repository::open(from_target, from_password.as_ref())
        .await
        .map_err(|e| with_cli_hint(e, &a.from).during("opening the source repository (--from)"))?;
    let from = configured(cli, from);
    let to_url = match &a.to {
        Some(u) => u.clone(),
        None => repo_url(cli)?,
    };
    let to = Repository::open(
        open_target(&to_url, &TargetOptions::default())?,
        password(cli)?.as_ref(),
    )
    .await
    .map_err(|e| e.during("opening the destination repository (--to)"))?;
    let to = configured(cli, to);
    let (to, display) = watched(cli, to, "copy");
    let filter = backup_filter(&a.filter);
    let manifests = if a.all {
        from.list_backups_matching(&filter).await?
    } else if a.latest || a.ids.is_empty() {
        vec![pick(&from, "latest", &filter).await?]
    } else {
        let mut v = Vec::new();
        for id in &a.ids {
            v.push(pick(&from, id, &filter).await?);
        }
        v
    };
    let mut copied = Vec::new();
    for m in &manifests {
        let (c, new) = to.copy_backup(&from, m).await?;
        copied.push((c, new));
    }
    drop(display);
    if cli.json {
        let items: Vec<_> = copied
            .iter()
            .map(|(c, new)| json!({ "id": c.id, "copied": new, "stats": c.stats }))
            .collect();
        print_json(&json!({ "ok": true, "backups": items }));
    } else {
        for (c, new) in &copied {
            println!(
                "{} {}: {} new of {} ({} stored)",
                if *new { "copied" } else { "already there" },
                c.id,
                bytes(if *new { c.stats.new_bytes } else { 0 }),
                bytes(c.stats.bytes),
                bytes(if *new { c.stats.stored_bytes } else { 0 })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn unlock(cli: &Cli, a: &UnlockArgs) -> Result<ExitCode> {
    let repo = open_repo(cli).await?;
    let decisions = repo.unlock(a.all).await?;
    if cli.json {
        print_json(&json!({ "ok": true, "locks": decisions }));
    } else {
        for d in &decisions {
            println!(
                "{:<7} {} ({} on {}, pid {}, since {}): {}",
                if d.removed { "removed" } else { "kept" },
                d.key,
                d.info.purpose,
                d.info.host,
                d.info.pid,
                d.info.created.format("%Y-%m-%d %H:%M:%S UTC"),
                d.reason
            );
        }
        println!(
            "removed {} of {} locks",
            decisions.iter().filter(|d| d.removed).count(),
            decisions.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn keep_rules(cli: &Cli, a: &ForgetArgs) -> Result<ops_core::retention::KeepRules> {
    use ops_core::retention::{KeepRules, parse_duration, parse_utc_offset};
    let mut rules = config_file(cli)?
        .and_then(|c| c.retention)
        .unwrap_or_default();
    let mut r = KeepRules::default()
        .with_last(a.keep_last.unwrap_or(rules.last))
        .with_hourly(a.keep_hourly.unwrap_or(rules.hourly))
        .with_daily(a.keep_daily.unwrap_or(rules.daily))
        .with_weekly(a.keep_weekly.unwrap_or(rules.weekly))
        .with_monthly(a.keep_monthly.unwrap_or(rules.monthly))
        .with_yearly(a.keep_yearly.unwrap_or(rules.yearly))
        .with_tags(std::mem::take(&mut rules.tags))
        .with_tags(a.keep_tags.iter().cloned())
        .with_utc_offset(match &a.utc_offset {
            Some(o) => parse_utc_offset(o)?,
            None => rules.utc_offset,
        });
    match &a.keep_within {
        Some(d) => r = r.with_within(parse_duration(d)?),
        None => {
            if let Some(d) = rules.within {
                r = r.with_within(d);
            }
        }
    }
    if r.is_empty() {
        return Err(Error::invalid(
            "no retention rule given: pass --keep-last/--keep-daily/… or set [retention] in the config file",
        ));
    }
    Ok(r)
}

/// One line per retention decision: keep or forget, the backup, when, why.
fn print_decisions(decisions: &[ops_core::retention::RetentionDecision]) {
    for d in decisions {
        println!(
            "  {:<7} {:<28} {}  {}",
            if d.keep { "keep" } else { "forget" },
            d.id,
            d.time.format("%Y-%m-%d %H:%M:%S"),
            d.reasons.join("; ")
        );
    }
}

async fn forget(cli: &Cli, a: &ForgetArgs) -> Result<ExitCode> {
    let rules = keep_rules(cli, a)?;
    let keep_safety = crate::maintain::duration("--keep-safety", &a.keep_safety)?;
    let options = ForgetOptions::default()
        .with_keep_safety(keep_safety)
        .with_dry_run(a.dry_run)
        .with_group_by(GroupBy::parse(&a.group_by)?)
        .with_filter(backup_filter(&a.filter));
    let repo = open_repo(cli).await?;
    let report = repo.forget(&rules, chrono::Utc::now(), &options).await?;
    let pruned = if a.prune && !a.dry_run {
        Some(repo.prune(&PruneOptions::default()).await?)
    } else {
        None
    };
    if cli.json {
        print_json(&json!({
            "ok": true,
            "rules": rules,
            "group_by": options.group_by,
            "dry_run": report.dry_run,
            "groups": report.groups,
            "safety": report.safety,
            "decisions": report.decisions().collect::<Vec<_>>(),
            "removed": report.removed,
            "logs": report.logs,
            "prune": pruned,
        }));
    } else {
        println!("rules: {rules} (per group of {})", options.group_by);
        for g in &report.groups {
            println!();
            println!("{}:", g.group);
            print_decisions(&g.decisions);
        }
        if !report.safety.is_empty() {
            println!();
            println!(
                "safety backups (kept {} after they were taken):",
                a.keep_safety
            );
            print_decisions(&report.safety);
        }
        let forgotten = report.decisions().filter(|d| !d.keep).count();
        println!();
        if report.dry_run {
            println!("dry run: {forgotten} backups would be forgotten; nothing was changed");
        } else {
            println!("forgot {} backups", report.removed.len());
        }
        for l in report
            .logs
            .iter()
            .filter(|l| l.removed > 0 || l.keep_from.is_some())
        {
            println!(
                "{} {}: {} {} files ({}) before {}, kept {}",
                l.kind,
                l.series,
                if report.dry_run {
                    "would remove"
                } else {
                    "removed"
                },
                l.removed,
                bytes(l.removed_bytes),
                l.keep_from.as_deref().unwrap_or("-"),
                l.kept
            );
        }
        if let Some(p) = pruned {
            println!(
                "prune: {} packs deleted, {} repacked, {} freed",
                p.packs_deleted,
                p.packs_repacked,
                bytes(p.bytes_freed)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn key(cli: &Cli, k: &KeyCommand) -> Result<ExitCode> {
    let repo = open_repo(cli).await?;
    let kdf = |mib: u32| KdfParams {
        memory_kib: mib.saturating_mul(1024),
        ..KdfParams::default()
    };
    let (what, keys) = match k {
        KeyCommand::List => ("keys", repo.list_keys().await?),
        KeyCommand::Add(a) => {
            let p = new_password(a.new_password_file.as_deref())?;
            (
                "added",
                vec![repo.add_key(&p, kdf(a.kdf_memory_mib)).await?],
            )
        }
        KeyCommand::Remove(a) => ("removed", vec![repo.remove_key(&a.id).await?]),
        KeyCommand::SaveLocal(a) => {
            repo.write_local_key(&a.file)?;
            if cli.json {
                print_json(&json!({ "ok": true, "key_file": a.file }));
            } else {
                println!(
                    "wrote the repository key to {} (owner-only); pass it with --key-file or DBOPS_KEY_FILE. \
                     Whoever can read it can read every backup: keep it on this host, readable by the service account only",
                    a.file.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeyCommand::Passwd(a) => {
            let p = new_password(a.new_password_file.as_deref())?;
            (
                "changed",
                vec![repo.change_password(&p, kdf(a.kdf_memory_mib)).await?],
            )
        }
    };
    if cli.json {
        print_json(&json!({ "ok": true, what: keys }));
    } else {
        for key in &keys {
            println!(
                "{:<8} {}  added {} on {}{}",
                if what == "keys" { "" } else { what },
                key.id,
                key.created.format("%Y-%m-%d %H:%M:%S UTC"),
                key.host,
                if key.current { "  (in use)" } else { "" }
            );
        }
        if what == "changed" {
            println!("the old password no longer opens the repository; keep the new one safe");
        }
    }
    Ok(ExitCode::SUCCESS)
}
