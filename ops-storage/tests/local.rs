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

/// Every folder and file under `root` (the root included) with its mode.
fn modes(root: &std::path::Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        out.push((
            path.clone(),
            meta.is_dir(),
            meta.permissions().mode() & 0o7777,
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                todo.push(entry.expect("entry").path());
            }
        }
    }
    out
}

/// Writes through every way a target writes: put, put_if_absent, a streamed
/// multipart upload, into new nested folders.
async fn write_every_way(root: &std::path::Path, options: &TargetOptions) {
    let options = options.clone().with_multipart(
        ops_storage::MultipartOptions::default()
            .with_part_size(5 * 1024 * 1024)
            .with_max_concurrency(1),
    );
    let target = open_target(&root.to_string_lossy(), &options).expect("open");
    target
        .put("config", Bytes::from_static(b"c"))
        .await
        .expect("put");
    target
        .put("keys/k1", Bytes::from_static(b"k"))
        .await
        .expect("put");
    target
        .put_if_absent("locks/l1", Bytes::from_static(b"l"))
        .await
        .expect("put if absent");
    let big = Bytes::from(vec![7u8; 11 * 1024 * 1024]);
    let parts = futures::stream::iter(
        big.chunks(1024 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let written = target
        .put_stream("packs/ab/abcdef", Box::pin(parts))
        .await
        .expect("put stream");
    assert_eq!(written, big.len() as u64);
}

#[tokio::test]
async fn a_new_directory_target_is_owner_only_through_and_through() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("new/repo");
    write_every_way(&root, &TargetOptions::default()).await;
    let all = modes(&tmp.path().join("new"));
    assert!(all.len() >= 9, "{all:?}");
    for (path, is_dir, mode) in all {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:o}", path.display());
    }
}

#[tokio::test]
async fn the_group_option_gives_group_read_and_nothing_to_others() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("repo");
    let group = TargetOptions::default().with_local_access(ops_core::FileAccess::Group);
    write_every_way(&root, &group).await;
    let all = modes(&root);
    assert!(all.len() >= 8, "{all:?}");
    for (path, is_dir, mode) in &all {
        let want = if *is_dir { 0o750 } else { 0o640 };
        assert_eq!(*mode, want, "{} has mode {mode:o}", path.display());
    }
    // An existing root decides: reopened with the default, new objects still follow
    // the group choice the root records.
    let target = open_target(&root.to_string_lossy(), &TargetOptions::default()).expect("open");
    target
        .put("index/new", Bytes::from_static(b"i"))
        .await
        .expect("put");
    assert_eq!(modes(&root.join("index"))[0].2, 0o750);
    assert_eq!(modes(&root.join("index/new"))[0].2, 0o640);
}

#[tokio::test]
async fn a_world_readable_root_of_an_older_repository_gets_owner_only_new_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("repo");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let group = TargetOptions::default().with_local_access(ops_core::FileAccess::Group);
    write_every_way(&root, &group).await;
    for (path, is_dir, mode) in modes(&root) {
        let want = match (path == root, is_dir) {
            (true, _) => 0o755,
            (false, true) => 0o700,
            (false, false) => 0o600,
        };
        assert_eq!(mode, want, "{} has mode {mode:o}", path.display());
    }
}
