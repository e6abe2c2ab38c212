//! The file-tree side of `backup`, `restore` and `show`.

use std::process::ExitCode;

use ops_core::repo::{
    EntryKind, FileRestoreOptions, FileRestoreReport, FileTrees, Manifest, Repository, trees_of,
};
use ops_core::{ErrorKind, Result};

use crate::cli::{BackupArgs, Cli, RestoreArgs};
use crate::output::bytes;

/// The trees `--path` and `--exclude` name, if any.
pub fn trees(a: &BackupArgs) -> Result<Option<FileTrees>> {
    if a.paths.is_empty() {
        return Ok(None);
    }
    FileTrees::new(&a.paths, &a.excludes).map(Some)
}

/// One line per stored tree.
pub fn print_trees(m: &Manifest) -> Result<()> {
    for t in trees_of(m)? {
        println!(
            "files       {}: {} entries, {}",
            t.root.display(),
            t.entries,
            bytes(t.bytes)
        );
    }
    Ok(())
}

fn options(a: &RestoreArgs) -> Option<FileRestoreOptions> {
    a.path_to.as_ref().map(|to| {
        FileRestoreOptions::new(to)
            .with_paths(a.paths.clone())
            .with_overwrite(a.overwrite)
    })
}

fn hint(e: ops_core::Error, a: &RestoreArgs) -> ops_core::Error {
    if e.kind() == ErrorKind::AlreadyExists
        && !a.overwrite
        && !e.message().contains("directories stand")
    {
        let message = format!("{} (dbops: --overwrite replaces them)", e.message());
        e.with_message(message)
    } else {
        e
    }
}

/// Checks, before anything is written, what would stop `--path-to`.
pub async fn check(repo: &Repository, m: &Manifest, a: &RestoreArgs) -> Result<()> {
    match options(a) {
        Some(o) => repo
            .check_restore_files(m, &o)
            .await
            .map_err(|e| hint(e, a)),
        None => Ok(()),
    }
}

/// Restores the backup's files when `--path-to` asks for them.
pub async fn restore(
    repo: &Repository,
    m: &Manifest,
    a: &RestoreArgs,
) -> Result<Option<FileRestoreReport>> {
    let Some(o) = options(a) else {
        return Ok(None);
    };
    repo.restore_files(m, &o)
        .await
        .map(Some)
        .map_err(|e| hint(e, a))
}

/// [`restore`] after the database was restored: a failure says so, and how to
/// restore the files alone.
pub async fn restore_after_database(
    repo: &Repository,
    m: &Manifest,
    a: &RestoreArgs,
) -> Result<Option<FileRestoreReport>> {
    restore(repo, m, a).await.map_err(|e| {
        let message = format!(
            "{} (the database was restored; dbops restore {} --path-to DIR restores the files alone)",
            e.message(),
            m.id
        );
        e.with_message(message)
    })
}

/// What a file restore did. Beside a database restore, JSON goes with that command's
/// document.
pub fn print_restore(
    cli: &Cli,
    m: &Manifest,
    report: Option<&FileRestoreReport>,
    alongside_database: bool,
) {
    if cli.json {
        if !alongside_database {
            crate::output::print_json(&serde_json::json!({
                "ok": true,
                "backup": m.id,
                "files": report,
            }));
        }
        return;
    }
    let Some(r) = report else {
        if !trees_of(m).unwrap_or_default().is_empty() {
            eprintln!(
                "note: backup {} also holds files; --path-to DIR restores them",
                m.id
            );
        }
        return;
    };
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "restored the files of backup {} below {}: {} files ({}), {} directories, {} symlinks, {} hard links",
        m.id,
        r.to.display(),
        r.files,
        bytes(r.bytes),
        r.dirs,
        r.symlinks,
        r.hardlinks
    );
}

/// `show --files`: every entry, as `ls -l` would.
pub async fn list_entries(repo: &Repository, m: &Manifest) -> Result<ExitCode> {
    for t in trees_of(m)? {
        println!();
        println!("{}", t.root.display());
        repo.file_entries(m, &t, |e| {
            let kind = match e.kind {
                EntryKind::Dir => 'd',
                EntryKind::File => '-',
                EntryKind::Symlink => 'l',
                EntryKind::Hardlink => 'h',
            };
            let time = ops_core::chrono::DateTime::from_timestamp(e.mtime, e.mtime_ns)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            let path = t.root.join(&e.path);
            // Names are whatever uploads were called: escaped, never raw to a terminal.
            let shown = |p: &std::path::Path| p.display().to_string().escape_debug().to_string();
            let tail = match (&e.target, &e.link) {
                (Some(target), _) => format!(" -> {}", shown(target)),
                (_, Some(link)) => format!(" => {}", shown(&t.root.join(link))),
                _ => String::new(),
            };
            println!(
                "{kind} {:04o} {:>6} {:>6} {:>12} {time} {}{tail}",
                e.mode,
                e.uid,
                e.gid,
                e.size,
                shown(&path)
            );
            Ok(())
        })
        .await?;
    }
    Ok(ExitCode::SUCCESS)
}
