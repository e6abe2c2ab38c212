//! Who may read the files dbops keeps on a local disk, and reading files that hold
//! secrets.
//!
//! Everything dbops creates locally (a repository on a directory, the state
//! directory, the WAL spool, caches, key files) is owner-only by default: files
//! `0600`, directories `0700`. [`FileAccess::Group`] is the one documented way to
//! share them, and only with a group (`0640` / `0750`); nothing dbops creates is ever
//! readable by others. A directory that already exists tells what its new files get
//! ([`FileAccess::of_dir`]), as PostgreSQL's data directory does for
//! `initdb --allow-group-access`: an operator who made it `0750` gets group-readable
//! files, anything else owner-only ones.
//!
//! Files holding a secret (password files, key files) are read through
//! [`read_private_file`] / [`read_password_file`], which refuse a file that group or
//! others may access, as libpq refuses such a `.pgpass`.
//!
//! Unix only, as the rest of dbops' local file handling.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use crate::{Error, ErrorKind, Result, Secret};

/// Who besides the owner may read what dbops creates on a local disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileAccess {
    /// The owner alone: files `0600`, directories `0700` (the default).
    #[default]
    Owner,
    /// The owner, and the group may read: files `0640`, directories `0750` (a backup
    /// group whose members verify or copy backups). Others never.
    Group,
}

impl FileAccess {
    /// The mode of a new file.
    pub const fn file_mode(self) -> u32 {
        match self {
            Self::Owner => 0o600,
            Self::Group => 0o640,
        }
    }

    /// The mode of a new directory.
    pub const fn dir_mode(self) -> u32 {
        match self {
            Self::Owner => 0o700,
            Self::Group => 0o750,
        }
    }

    /// The access a directory's mode grants to new files in it: [`FileAccess::Group`]
    /// when the group may read it and others may not (`0750`, `0740`, `0770`), else
    /// [`FileAccess::Owner`] — a world-readable directory made by an older dbops, or
    /// by hand, gives owner-only files, never world-readable ones.
    pub const fn of_mode(mode: u32) -> Self {
        if mode & 0o040 != 0 && mode & 0o007 == 0 {
            Self::Group
        } else {
            Self::Owner
        }
    }

    /// The access new files in the existing directory `dir` get ([`FileAccess::of_mode`]).
    ///
    /// # Errors
    /// The I/O error of reading the directory's metadata.
    pub fn of_dir(dir: &Path) -> io::Result<Self> {
        Ok(Self::of_mode(fs::metadata(dir)?.permissions().mode()))
    }
}

/// Creates `dir` and any missing parents, each with `access`'s directory mode
/// (exactly, whatever the umask); directories that exist are left as they are.
/// Returns the directories it created, outermost first (for a caller that must make
/// them durable).
///
/// # Errors
/// The I/O error of the directory that could not be created; the caller adds what
/// it was for.
pub fn create_private_dir(dir: &Path, access: FileAccess) -> io::Result<Vec<std::path::PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    missing.reverse();
    for d in &missing {
        match fs::DirBuilder::new().mode(access.dir_mode()).create(d) {
            // The mode given to mkdir is cut by the umask: set it exactly.
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(access.dir_mode()))?,
            // Made at the same moment by another process: its choice stands.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

/// Opens `path` for writing, created with `access`'s file mode, truncated when it
/// exists. An existing file keeps its mode unless it grants more than `access`
/// does, in which case it is narrowed to `access`.
///
/// # Errors
/// The I/O error; the caller adds what the file was for.
pub fn create_private_file(path: &Path, access: FileAccess) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(access.file_mode())
        .open(path)?;
    narrow(&file, access)?;
    Ok(file)
}

/// Writes `bytes` to `path` as [`create_private_file`] opens it.
///
/// # Errors
/// The I/O error; the caller adds what the file was for.
pub fn write_private_file(path: &Path, bytes: &[u8], access: FileAccess) -> io::Result<()> {
    create_private_file(path, access)?.write_all(bytes)
}

/// Takes away what an open file's mode grants beyond `access` (group write, anything
/// for others; group read too for [`FileAccess::Owner`]).
fn narrow(file: &fs::File, access: FileAccess) -> io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    let allowed = access.file_mode() | 0o100 | (access.file_mode() & 0o040) >> 2;
    if mode & !allowed & 0o777 != 0 {
        file.set_permissions(fs::Permissions::from_mode(mode & allowed))?;
    }
    Ok(())
}

/// Reads a file that holds a secret, refusing it when its group or others may read
/// or write it (as libpq refuses such a `.pgpass`): a secret others can read is
/// already lost, and saying so is better than using it. `what` names the file in the
/// operator's words ("password file", "key file").
///
/// # Errors
/// [`ErrorKind::PermissionDenied`] for such a file; [`ErrorKind::Io`] naming the file
/// when it cannot be read.
pub fn read_private_file(path: &Path, what: &str) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let meta = fs::metadata(path)
        .map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "the {what} {} can be read by others (mode {:04o}): make it owner-only (chmod 600) and consider the secret in it exposed",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))
}

/// Reads a password from a file as [`read_private_file`] does: the whole content
/// but one trailing line end (`\n` or `\r\n`), so that a password written by
/// `echo` works. The bytes read are zeroized once the [`Secret`] is made.
///
/// # Errors
/// As [`read_private_file`]; [`ErrorKind::InvalidInput`] when the file is not UTF-8
/// (the message never quotes it).
pub fn read_password_file(path: &Path, what: &str) -> Result<Secret> {
    let bytes = read_private_file(path, what)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::invalid(format!(
            "the {what} {} is not UTF-8 text (byte {}): write the password as text",
            path.display(),
            e.valid_up_to()
        ))
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(Secret::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn modes_of_each_access_never_reach_others() {
        assert_eq!(
            (FileAccess::Owner.file_mode(), FileAccess::Owner.dir_mode()),
            (0o600, 0o700)
        );
        assert_eq!(
            (FileAccess::Group.file_mode(), FileAccess::Group.dir_mode()),
            (0o640, 0o750)
        );
        for (m, access) in [
            (0o700, FileAccess::Owner),
            (0o750, FileAccess::Group),
            (0o770, FileAccess::Group),
            (0o755, FileAccess::Owner),
            (0o711, FileAccess::Owner),
            (0o710, FileAccess::Owner),
        ] {
            assert_eq!(FileAccess::of_mode(m), access, "{m:o}");
        }
    }

    #[test]
    fn directories_and_files_get_exact_modes_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        let made = create_private_dir(&deep, FileAccess::Group).expect("mkdir");
        assert_eq!(made.len(), 3);
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(d)), 0o750, "{d}");
        }
        assert!(
            create_private_dir(&deep, FileAccess::Owner)
                .expect("again")
                .is_empty()
        );
        assert_eq!(mode(&deep), 0o750, "an existing directory is left alone");

        let file = deep.join("f");
        write_private_file(&file, b"x", FileAccess::Owner).expect("write");
        assert_eq!(mode(&file), 0o600);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).expect("chmod");
        write_private_file(&file, b"y", FileAccess::Owner).expect("rewrite");
        assert_eq!(mode(&file), 0o600, "an open file is narrowed");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private_file(&file, b"z", FileAccess::Group).expect("rewrite");
        assert_eq!(mode(&file), 0o640);
    }

    #[test]
    fn password_files_others_can_read_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        fs::write(&path, "s3cret-pw\r\n").expect("write");
        for bad in [0o644, 0o640, 0o604, 0o620, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).expect("chmod");
            let err = read_password_file(&path, "password file").expect_err("refused");
            assert_eq!(err.kind(), ErrorKind::PermissionDenied);
            let text = err.to_string();
            assert!(text.contains("chmod 600"), "{text}");
            assert!(text.contains(&format!("{bad:04o}")), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        for good in [0o600, 0o400] {
            fs::set_permissions(&path, fs::Permissions::from_mode(good)).expect("chmod");
            let pw = read_password_file(&path, "password file").expect("read");
            assert_eq!(pw.expose(), "s3cret-pw");
        }
        fs::write(&path, [0xff, 0xfe]).expect("write");
        let err = read_password_file(&path, "password file").expect_err("not text");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
