//! `wal-push`, `wal-fetch`, `wal-receive` and `binlog-archive`: the log archives
//! that make point-in-time recovery possible. PostgreSQL runs the first two once per
//! file, so they open the repository with a key file when given one, print nothing
//! on success, and keep PostgreSQL's exit-code contract.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use futures::StreamExt as _;
use serde_json::json;

use dbops::postgres::wal;
use ops_core::repo::{LogKind, LogPush, Repository};
use ops_core::{Error, ErrorKind, Result};

use crate::cli::{BinlogArchiveArgs, Cli, WalFetchArgs, WalPushArgs, WalReceiveArgs};
use crate::commands::open_repo;
use crate::output::{bytes, print_error, print_json};

/// Exit code of `wal-fetch` for a file the archive does not hold: PostgreSQL takes
/// any code up to 125 as "not available" and goes on (to streaming, or to the end of
/// recovery).
const EXIT_NOT_FOUND: u8 = 1;
/// Exit code of `wal-fetch` for any other failure: above 125, PostgreSQL stops
/// recovery instead of taking the failure for the end of the archive and promoting
/// at the wrong point.
const EXIT_FETCH_FAILED: u8 = 255;

/// The data directory: `--pgdata`, else the current directory (PostgreSQL runs
/// archive and restore commands there).
fn data_directory(given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => std::env::current_dir().map_err(|e| Error::io("reading the current directory", e)),
    }
}

/// The archive series of the cluster whose data directory this is.
fn series_of(pgdata: &Path) -> Result<String> {
    wal::system_identifier_of_datadir(pgdata)
        .map(wal::series_name)
        .map_err(|e| {
            let message = format!(
                "{}; the cluster is named by its data directory's global/pg_control: run this as PostgreSQL's archive or restore command (it runs in the data directory), or pass --pgdata DIR",
                e.message()
            );
            e.with_message(message)
        })
}

fn file_name_of(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(format!("{} names no file", path.display())))?;
    if !wal::is_wal_file_name(name) {
        return Err(Error::invalid(format!(
            "{name} is not a WAL file name (a segment, .partial, .history or .backup file)"
        )));
    }
    Ok(name.to_owned())
}

/// Reads a WAL file and checks a segment against the cluster it claims to be from.
fn read_checked(path: &Path, name: &str, pgdata: &Path) -> Result<(String, Vec<u8>)> {
    let series = series_of(pgdata)?;
    let data =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let base = name.strip_suffix(".partial").unwrap_or(name);
    if base.len() == 24 {
        let sysid = wal::system_identifier_of_datadir(pgdata)?;
        wal::check_segment(name, &data, sysid)?;
    }
    Ok((series, data))
}

/// `wal-push`.
pub async fn push(cli: &Cli, a: &WalPushArgs) -> Result<ExitCode> {
    if a.drain {
        let spool = a.spool.as_deref().unwrap_or(Path::new("."));
        drain(cli, spool, a.jobs.max(1)).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = a
        .path
        .as_deref()
        .ok_or_else(|| Error::invalid("give the WAL file to archive (%p)"))?;
    let name = file_name_of(path)?;
    let pgdata = data_directory(a.pgdata.as_deref())?;
    let (series, data) = read_checked(path, &name, &pgdata)?;
    if let Some(spool) = &a.spool {
        let max = parse_size(&a.spool_max)?;
        spool_file(spool, &series, &name, &data, max)?;
        start_drainer(spool)?;
        // A spool whose uploads fail must not look healthy: PostgreSQL's archiver
        // then counts failures and keeps its WAL, as with a synchronous push.
        if let Some(error) = drainer_error(spool) {
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "{name} is spooled, but the spool's uploads fail: {error}; PostgreSQL keeps the WAL and retries"
                ),
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let repo = open_repo(cli).await?;
    let outcome = repo.push_log(LogKind::Wal, &series, &name, &data).await?;
    report_push(cli, &name, outcome);
    Ok(ExitCode::SUCCESS)
}

fn report_push(cli: &Cli, name: &str, outcome: LogPush) {
    let (status, plain, stored) = match outcome {
        LogPush::Stored { bytes, stored } => ("stored", bytes, stored),
        _ => ("already archived", 0, 0),
    };
    if cli.json {
        print_json(
            &json!({ "ok": true, "file": name, "status": status, "bytes": plain, "stored_bytes": stored }),
        );
    } else if cli.verbose > 0 {
        eprintln!("dbops: {name}: {status} ({} stored)", bytes(stored));
    }
}

/// `wal-fetch`: never returns an error, only PostgreSQL's exit codes.
pub async fn fetch(cli: &Cli, a: &WalFetchArgs) -> ExitCode {
    match fetch_inner(cli, a).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            if cli.verbose > 0 {
                eprintln!("dbops: {} is not in the archive", a.name);
            }
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Err(e) => {
            print_error(&e, cli.json);
            ExitCode::from(EXIT_FETCH_FAILED)
        }
    }
}

async fn fetch_inner(cli: &Cli, a: &WalFetchArgs) -> Result<bool> {
    if !wal::is_wal_file_name(&a.name) {
        // PostgreSQL asks for RECOVERYHISTORY-like names only through %f, which is
        // always a WAL name; anything else is not in any archive.
        return Ok(false);
    }
    let pgdata = data_directory(a.pgdata.as_deref())?;
    let series = series_of(&pgdata)?;
    if let Some(spool) = &a.spool
        && let Ok(data) = std::fs::read(spool.join(&series).join(&a.name))
    {
        write_file(&a.dest, &data)?;
        return Ok(true);
    }
    let repo = open_repo(cli).await?;
    match repo.fetch_log(LogKind::Wal, &series, &a.name).await? {
        Some(data) => {
            write_file(&a.dest, &data)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Writes `data` to `dest` whole or not at all (a temporary file renamed).
fn write_file(dest: &Path, data: &[u8]) -> Result<()> {
    let mut tmp_name = dest.as_os_str().to_owned();
    tmp_name.push(format!(".dbops-{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, dest));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", dest.display()), e));
    }
    Ok(())
}

/// Parses 4G, 512M, 1024K or bytes.
fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| Error::invalid(format!("'{text}' is not a size: write e.g. 4G, 512M")))?;
    let factor = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(Error::invalid(format!(
                "'{text}' has an unknown unit: use K, M or G"
            )));
        }
    };
    Ok(n.saturating_mul(factor))
}

// ---- the spool (asynchronous archiving) ----

const DRAIN_LOCK: &str = ".uploader.lock";
const DRAIN_ERROR: &str = ".upload-error";
const DRAIN_LOG: &str = ".uploader.log";

fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Copies a WAL file into `spool/<series>/<name>`, durably (fsynced file and
/// folder) before PostgreSQL is told it is archived.
fn spool_file(spool: &Path, series: &str, name: &str, data: &[u8], max: u64) -> Result<()> {
    let dir = spool.join(series);
    private_dir(&dir)?;
    let dest = dir.join(name);
    if let Ok(existing) = std::fs::read(&dest) {
        if existing == data {
            return Ok(());
        }
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("{name} is already spooled with different content; the spool was not changed"),
        ));
    }
    let used: u64 = spooled(spool)?.iter().map(|(_, _, size)| size).sum();
    if used + data.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::Storage,
            format!(
                "the spool {} holds {} not yet uploaded, over its limit of {}: is the uploader failing (see {})? PostgreSQL keeps its WAL and retries",
                spool.display(),
                bytes(used),
                bytes(max),
                spool.join(DRAIN_LOG).display()
            ),
        ));
    }
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = dir.join(format!(".tmp-{name}"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &dest)
        .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    Ok(())
}

/// The spooled files: (series, name, size), oldest name first.
fn spooled(spool: &Path) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    let Ok(series_dirs) = std::fs::read_dir(spool) else {
        return Ok(out);
    };
    for series in series_dirs.flatten() {
        let Ok(series_name) = series.file_name().into_string() else {
            continue;
        };
        if series_name.starts_with('.') || !series.path().is_dir() {
            continue;
        }
        let files = std::fs::read_dir(series.path())
            .map_err(|e| Error::io(format!("listing {}", series.path().display()), e))?;
        for f in files.flatten() {
            let Ok(name) = f.file_name().into_string() else {
                continue;
            };
            if wal::is_wal_file_name(&name) {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((series_name.clone(), name, size));
            }
        }
    }
    // History files first, then log order.
    out.sort_by(|a, b| {
        (&a.0, !a.1.ends_with(".history"), &a.1).cmp(&(&b.0, !b.1.ends_with(".history"), &b.1))
    });
    Ok(out)
}

/// The uploader's last failure, while it lasts.
fn drainer_error(spool: &Path) -> Option<String> {
    std::fs::read_to_string(spool.join(DRAIN_ERROR))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Takes the spool's uploader lock without waiting; `None` when another process
/// holds it.
fn try_drain_lock(spool: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    private_dir(spool)?;
    let path = spool.join(DRAIN_LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io(
            format!("locking {}", path.display()),
            std::io::Error::from(e),
        )),
    }
}

/// Starts the uploader unless one runs: this same program with the same global
/// options, detached, logging to the spool.
fn start_drainer(spool: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let Some(lock) = try_drain_lock(spool)? else {
        return Ok(());
    };
    drop(lock);
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the dbops program", e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool.join(DRAIN_LOG))
        .map_err(|e| Error::io("opening the uploader's log", e))?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--drain".into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0);
    cmd.spawn()
        .map_err(|e| Error::io("starting the spool's uploader", e))?;
    Ok(())
}

/// The uploader: sends the spool to the repository, `jobs` at once, removing each
/// file once stored, until the spool has stayed empty a little while. Failures are
/// written where `wal-push --spool` reports them, and retried with backoff.
async fn drain(cli: &Cli, spool: &Path, jobs: usize) -> Result<()> {
    let Some(mut lock) = try_drain_lock(spool)? else {
        return Ok(());
    };
    let repo = match open_repo(cli).await {
        Ok(r) => r,
        Err(e) => {
            // Where wal-push --spool reads it: PostgreSQL's archiver then sees failures.
            let _ = std::fs::write(spool.join(DRAIN_ERROR), e.to_string());
            return Err(e);
        }
    };
    let mut idle = 0;
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        let files = spooled(spool)?;
        if files.is_empty() {
            idle += 1;
            if idle <= 20 {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
            // Let go of the lock, then look once more: a push that spooled a file
            // while the lock was still held started no uploader of its own.
            drop(lock);
            if spooled(spool)?.is_empty() {
                return Ok(());
            }
            match try_drain_lock(spool)? {
                Some(l) => lock = l,
                // Another uploader took over.
                None => return Ok(()),
            }
            idle = 0;
            continue;
        }
        idle = 0;
        let results: Vec<Result<()>> = futures::stream::iter(files)
            .map(|(series, name, _)| upload_spooled(&repo, spool, series, name))
            .buffer_unordered(jobs)
            .collect()
            .await;
        match results.into_iter().find_map(Result::err) {
            None => {
                let _ = std::fs::remove_file(spool.join(DRAIN_ERROR));
                pause = std::time::Duration::from_millis(500);
            }
            Some(e) => {
                tracing::warn!("spool upload failed: {e}");
                let _ = std::fs::write(spool.join(DRAIN_ERROR), e.to_string());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

async fn upload_spooled(
    repo: &Repository,
    spool: &Path,
    series: String,
    name: String,
) -> Result<()> {
    let path = spool.join(&series).join(&name);
    let data = tokio::fs::read(&path)
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    repo.push_log(LogKind::Wal, &series, &name, &data).await?;
    tokio::fs::remove_file(&path)
        .await
        .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    Ok(())
}

/// Waits for SIGTERM or SIGINT, or `duration` when given.
async fn stop_signal(duration: Option<std::time::Duration>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = async { match &mut term { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = async { match &mut int { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        () = sleep => {}
    }
}

/// `wal-receive`.
pub async fn receive(cli: &Cli, a: &WalReceiveArgs) -> Result<ExitCode> {
    let duration = a
        .duration
        .as_deref()
        .map(|d| crate::maintain::duration("--duration", d))
        .transpose()?;
    let engine = dbops::postgres::PostgresEngine::new(&a.url)?;
    let receiver = dbops::postgres::receive::WalReceiver::new(engine, &a.slot, &a.spool)?;
    let repo = open_repo(cli).await?;
    let report = receiver.run(&repo, stop_signal(duration)).await?;
    if cli.json {
        print_json(&json!({ "ok": true, "received": report }));
    } else {
        println!(
            "archived {} WAL files ({}){}",
            report.archived,
            bytes(report.bytes),
            report
                .last
                .as_deref()
                .map(|l| format!(", the newest {l}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the WAL archives' state (`verify --wal`); exit 3 when a segment is missing.
pub fn print_archives(cli: &Cli, archives: &[wal::ArchiveState]) -> ExitCode {
    let ok = archives.iter().all(|s| s.missing.is_empty());
    if cli.json {
        print_json(&json!({ "ok": ok, "wal_archives": archives }));
    } else if archives.is_empty() {
        println!("no WAL archived in this repository");
    } else {
        print_archive_lines(archives);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// One line per archived series, and one per missing segment.
pub fn print_archive_lines(archives: &[wal::ArchiveState]) {
    for s in archives {
        println!(
            "WAL {}: {} files ({}), {} to {}{}",
            s.series,
            s.files,
            bytes(s.stored_bytes),
            s.first.as_deref().unwrap_or("-"),
            s.last.as_deref().unwrap_or("-"),
            s.last_archived
                .map(|t| format!(", newest archived {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default()
        );
        for m in s.missing.iter().take(100) {
            println!(
                "MISSING WAL {}: segment {m} (checked from {})",
                s.series,
                s.checked_from.as_deref().unwrap_or("-")
            );
        }
        if s.missing.len() > 100 {
            println!(
                "MISSING WAL {}: … and {} more",
                s.series,
                s.missing.len() - 100
            );
        }
    }
}

/// What a MariaDB point-in-time restore replays, read from the archive and checked
/// before the restore starts.
pub struct BinlogPlan {
    pub from: dbops::mariadb::binlog::BinlogPosition,
    pub until: chrono::DateTime<chrono::Utc>,
    pub prepared: dbops::mariadb::binlog::PreparedReplay,
}

/// Checks that `m` can be brought to `time`: a MariaDB backup with a binlog
/// position, taken before `time`, and an archive whose last event reaches it.
pub async fn binlog_plan(
    repo: &Repository,
    m: &ops_core::repo::Manifest,
    time: &str,
    url: &str,
) -> Result<BinlogPlan> {
    let until = dbops::postgres::physical::parse_target_time(time)?;
    if m.engine != "mariadb" {
        return Err(Error::invalid(format!(
            "--target-time on backup {} ({}): a logical backup reaches a point in time through MariaDB's binary log archive only; for PostgreSQL, restore a physical backup with --physical --to-datadir DIR --target-time",
            m.id, m.engine
        )));
    }
    if until < m.started {
        return Err(Error::invalid(format!(
            "backup {} was taken at {}, after {}: choose an older backup (dbops list)",
            m.id,
            m.started.format("%Y-%m-%d %H:%M:%S UTC"),
            until.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    let from = dbops::mariadb::binlog::BinlogPosition::from_snapshot(&m.snapshot)?;
    let series = m
        .snapshot
        .get(ops_core::repo::LOG_SERIES_KEY)
        .cloned()
        .ok_or_else(|| {
            Error::invalid(format!(
                "backup {} records no binary log series (it was taken by an older dbops, or with the binary log off): it cannot be brought to a point in time",
                m.id
            ))
        })?;
    let reach = dbops::mariadb::binlog::archive_reach(repo, &series).await?;
    let last = reach.as_ref().and_then(|r| r.last_event);
    if last.is_none_or(|l| l < until) {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "the binary log archive {series} reaches {}, not {}: run dbops binlog-archive against the server (or wait for it to catch up); nothing was restored",
                last.map_or_else(
                    || "no event at all".to_owned(),
                    |l| l.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                ),
                until.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        ));
    }
    // The whole replay is read and checked now (the backup's position in the archive,
    // no gap, the tools), so that nothing is restored when it cannot happen.
    let target = dbops::mariadb::MariaDbEngine::new(url)?;
    let prepared = dbops::mariadb::binlog::prepare_replay(
        repo,
        &series,
        &from,
        until,
        &m.database,
        &ops_core::DatabaseEngine::database(&target),
    )
    .await
    .map_err(|e| e.during("reading the binary log archive (nothing was restored)"))?;
    Ok(BinlogPlan {
        from,
        until,
        prepared,
    })
}

/// Replays the plan into the database just restored.
pub async fn binlog_replay(
    plan: BinlogPlan,
    m: &ops_core::repo::Manifest,
    url: &str,
) -> Result<dbops::mariadb::binlog::ReplayReport> {
    let target = dbops::mariadb::MariaDbEngine::new(url)?;
    plan.prepared.apply(&target).await.map_err(|e| {
        e.during(format!(
            "replaying the binary log onto the restored backup {} (its content is restored as of the backup)",
            m.id
        ))
    })
}

/// The engine of `backup --physical`.
pub fn physical_engine(url: &str) -> Result<std::sync::Arc<dyn ops_core::DatabaseEngine>> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::invalid(
            "--physical takes a PostgreSQL server's URL (postgres://…): MariaDB's point in time comes from binlog-archive",
        ));
    }
    Ok(std::sync::Arc::new(
        dbops::postgres::physical::PhysicalEngine::from_url(url)?,
    ))
}

/// Quotes a word for the shell that runs PostgreSQL's restore_command.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The restore_command a restored server runs: this program's wal-fetch on the same
/// repository, with the same key file or password file. A password from the
/// environment is not written anywhere: the server needs it in its own environment
/// (`--start` passes ours on).
fn restore_command(cli: &Cli) -> Result<(String, Option<&'static str>)> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the dbops program", e))?;
    let url = crate::commands::repo_url(cli)?;
    let mut words = vec![
        shell_quote(&exe.to_string_lossy()),
        "--repo".to_owned(),
        shell_quote(&url),
        "--no-cache".to_owned(),
    ];
    let mut note = None;
    if let Some(k) = &cli.key_file {
        let k = std::path::absolute(k).unwrap_or_else(|_| k.clone());
        words.extend(["--key-file".to_owned(), shell_quote(&k.to_string_lossy())]);
    } else if let Some(f) = &cli.password_file {
        let f = std::path::absolute(f).unwrap_or_else(|_| f.clone());
        words.extend([
            "--password-file".to_owned(),
            shell_quote(&f.to_string_lossy()),
        ]);
    } else {
        note = Some(
            "the restore command opens the repository with DBOPS_PASSWORD from the server's environment: start the server with it set, or write a key file (dbops key save-local) and restore with --key-file",
        );
    }
    words.extend(["wal-fetch".to_owned(), "%f".to_owned(), "%p".to_owned()]);
    Ok((words.join(" "), note))
}

/// `restore ID --physical --to-datadir DIR`.
pub async fn restore_physical(cli: &Cli, a: &crate::cli::RestoreArgs) -> Result<ExitCode> {
    use dbops::postgres::physical::{
        PhysicalEngine, RecoverySettings, RecoveryTarget, StartOptions, TargetAction,
        start_recovered,
    };
    let dir = a
        .to_datadir
        .as_deref()
        .ok_or_else(|| Error::invalid("--physical restores into --to-datadir DIR"))?;
    let target = match (&a.target_time, &a.target_lsn, &a.target_xid, &a.target_name) {
        (Some(t), ..) => RecoveryTarget::time(t)?,
        (_, Some(l), ..) => RecoveryTarget::lsn(l)?,
        (_, _, Some(x), _) => RecoveryTarget::xid(x)?,
        (.., Some(n)) => RecoveryTarget::name(n)?,
        _ => RecoveryTarget::EndOfArchive,
    };
    let action = TargetAction::parse(&a.target_action)?;
    let (command, note) = restore_command(cli)?;
    let repo = open_repo(cli).await?;
    let m = crate::commands::pick(&repo, &a.id, &crate::commands::backup_filter(&a.filter)).await?;
    m.require_engine(dbops::postgres::physical::ENGINE_NAME)?;
    // What would stop recovery short is found before anything is laid down.
    if let RecoveryTarget::Time(t) = &target
        && *t < m.finished
    {
        return Err(Error::invalid(format!(
            "base backup {} is consistent only from its end ({}), after {}: choose an older base backup (dbops list --engine postgresql-physical)",
            m.id,
            m.finished.format("%Y-%m-%d %H:%M:%S UTC"),
            t.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    let series = m.snapshot.get(ops_core::repo::LOG_SERIES_KEY);
    let gaps: Vec<String> = wal::check_archive(&repo)
        .await?
        .into_iter()
        .filter(|s| Some(&s.series) == series)
        .flat_map(|s| s.missing)
        .filter(|name| {
            m.snapshot
                .get("wal_start")
                .is_some_and(|start| name >= start)
        })
        .collect();
    if let Some(first) = gaps.first()
        && matches!(target, RecoveryTarget::EndOfArchive)
    {
        return Err(Error::new(
            ErrorKind::Mismatch,
            format!(
                "the WAL archive misses segment {first} ({} missing after the backup's start): recovery to the end of the archive would stop there and promote; give a target before the gap (--target-time, --target-lsn), or restore a newer base backup",
                gaps.len()
            ),
        ));
    }
    let settings = RecoverySettings::new(command)
        .with_target(target)
        .with_action(action);
    let engine = PhysicalEngine::restore_to(dir, settings);
    let started = std::time::Instant::now();
    let report = repo
        .restore(&m, &engine, &ops_core::RestoreOptions::default())
        .await
        .map_err(|e| {
            e.during(format!(
                "restore of base backup {} into {}",
                m.id,
                dir.display()
            ))
        })?;
    let laid = started.elapsed().as_secs_f64();
    let server = if a.start {
        let server = start_recovered(dir, &StartOptions::default().with_action(action))
            .await
            .map_err(|e| e.during(format!("starting a server on {}", dir.display())))?;
        Some(server)
    } else {
        None
    };
    let secs = started.elapsed().as_secs_f64();
    let summary = server
        .as_ref()
        .map(|s| s.recovery_summary().to_vec())
        .unwrap_or_default();
    let url = server.as_ref().map(|s| s.url_for("postgres"));
    let socket = server.as_ref().map(|s| s.socket_dir());
    let log = server.as_ref().map(|s| s.log_path());
    let pid = server.map(|s| s.detach());
    if cli.json {
        print_json(&json!({
            "ok": true,
            "backup": m.id,
            "data_directory": dir,
            "files": m.streams.iter().filter(|s| s.spec.name.starts_with(dbops::postgres::physical::PGDATA_PREFIX)).count(),
            "warnings": report.warnings,
            "restore_command_note": note,
            "server": pid.map(|p| json!({ "pid": p, "url": url, "socket_dir": socket, "log": log, "recovery": summary })),
            "seconds": secs,
            "laid_down_seconds": laid,
        }));
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "restored base backup {} (taken {}) into {} in {laid:.1} s, with recovery settings in postgresql.auto.conf",
            m.id,
            m.started.format("%Y-%m-%d %H:%M:%S UTC"),
            dir.display()
        );
        if let Some(n) = note {
            println!("note: {n}");
        }
        match pid {
            Some(pid) => {
                for line in &summary {
                    println!("  {line}");
                }
                println!(
                    "a server (pid {pid}) runs on it, recovered to the target ({}): {}; stop it with: kill -INT {pid}",
                    a.target_action,
                    url.as_deref().map(ops_core::redact_url).unwrap_or_default()
                );
            }
            None => println!(
                "start it with: pg_ctl -D {} start (as the data directory's owner); recovery fetches WAL through wal-fetch and {} at the target",
                dir.display(),
                if a.target_action == "pause" {
                    "pauses"
                } else {
                    "promotes"
                }
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify --restore` of a physical backup: laid down in a throwaway directory,
/// checked against PostgreSQL's backup manifest, recovered to consistency on a
/// throwaway server and checked by pg_amcheck. The result as verify's JSON shows it.
pub async fn prove_physical(
    cli: &Cli,
    repo: &Repository,
    m: &ops_core::repo::Manifest,
) -> serde_json::Value {
    let proved = async {
        let (command, _) = restore_command(cli)?;
        let source = std::sync::Arc::new(repo.source(m, false).await?);
        dbops::postgres::physical::prove_restore(
            source,
            &dbops::postgres::physical::ProofOptions::new(command),
        )
        .await
    }
    .await;
    match proved {
        Ok(r) => json!({
            "backup": m.id,
            "database": m.database,
            "ok": true,
            "physical": {
                "files": r.files,
                "manifest_verified": r.manifest_verified,
                "databases": r.databases,
                "recovery": r.recovery,
                "warnings": r.warnings,
            },
        }),
        Err(e) => json!({
            "backup": m.id,
            "database": m.database,
            "ok": false,
            "error": e.to_string(),
        }),
    }
}

/// `binlog-archive`.
pub async fn binlog_archive(cli: &Cli, a: &BinlogArchiveArgs) -> Result<ExitCode> {
    let duration = a
        .duration
        .as_deref()
        .map(|d| crate::maintain::duration("--duration", d))
        .transpose()?;
    let engine = dbops::mariadb::MariaDbEngine::new(&a.url)?;
    let repo = std::sync::Arc::new(open_repo(cli).await?);
    let archiver = dbops::mariadb::binlog::BinlogArchiver::new(&engine, repo);
    let report = archiver.run(stop_signal(duration)).await?;
    if cli.json {
        print_json(&json!({ "ok": true, "archived": report }));
    } else {
        println!(
            "archived {} events ({}) in {} pieces into {}",
            report.events,
            bytes(report.bytes),
            report.pieces,
            report.series
        );
    }
    Ok(ExitCode::SUCCESS)
}
