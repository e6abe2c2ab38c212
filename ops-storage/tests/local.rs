//! Local-directory specifics: permissions and layout.

use bytes::Bytes;
use ops_core::ErrorKind;
use ops_storage::{TargetOptions, open_target};

/// A directory this process cannot write: a read-only temp dir, or — when running as
/// root, which ignores permission bits — a path under /sys, where nobody may create.
fn unwritable_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp.join("read-only");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    if std::fs::write(dir.join("probe"), b"x").is_err() {
        return dir.join("backups");
    }
    std::path::PathBuf::from("/sys/dbops-permission-test/backups")
}

#[tokio::test]
async fn unwritable_directory_is_permission_denied_naming_the_path() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = unwritable_dir(tmp.path());
    let target = open_target(&dir.to_string_lossy(), &TargetOptions::default()).expect("open");
    let err = target
        .put("config", Bytes::from_static(b"x"))
        .await
        .expect_err("cannot write");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_temporary());
    let text = err.to_string();
    assert!(text.contains(&*dir.to_string_lossy()), "{text}");
    assert!(text.contains("config"), "{text}");
    eprintln!("{text}");
}

#[tokio::test]
async fn objects_are_plain_files_and_a_file_is_not_a_target() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let target =
        open_target(&tmp.path().to_string_lossy(), &TargetOptions::default()).expect("open");
    target
        .put("packs/ab/abcd", Bytes::from_static(b"pack"))
        .await
        .expect("put");
    assert_eq!(
        std::fs::read(tmp.path().join("packs/ab/abcd")).expect("read"),
        b"pack"
    );
    let file = tmp.path().join("packs/ab/abcd");
    let err = open_target(&file.to_string_lossy(), &TargetOptions::default()).expect_err("a file");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}
