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

/// Restores the backup's files when `--path-to` asks for them.
pub async fn restore(
    repo: &Repository,
    m: &Manifest,
    a: &RestoreArgs,
) -> Result<Option<FileRestoreReport>> {
    let Some(to) = &a.path_to else {
        return Ok(None);
    };
    let options = FileRestoreOptions::new(to)
        .with_paths(a.paths.clone())
        .with_overwrite(a.overwrite);
    repo.restore_files(m, &options)
        .await
        .map(Some)
        .map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists && !a.overwrite {
                let message = format!("{} (dbops: --overwrite replaces them)", e.message());
                e.with_message(message)
            } else {
                e
            }
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
            let tail = match (&e.target, &e.link) {
                (Some(target), _) => format!(" -> {}", target.display()),
                (_, Some(link)) => format!(" => {}", t.root.join(link).display()),
                _ => String::new(),
            };
            println!(
                "{kind} {:04o} {:>6} {:>6} {:>12} {time} {}{tail}",
                e.mode,
                e.uid,
                e.gid,
                e.size,
                path.display().to_string().escape_debug()
            );
            Ok(())
        })
        .await?;
    }
    Ok(ExitCode::SUCCESS)
}
