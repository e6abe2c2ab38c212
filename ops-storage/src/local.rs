//! `PrivateLocalStore`: object_store's `LocalFileSystem` with dbops' file modes.
//!
//! `LocalFileSystem` creates files and folders with the process umask (`0644`/`0755`
//! usually): a repository's `config`, wrapped keys and packs readable by every local
//! account. This wrapper makes every folder it creates `0700` and every object it
//! writes `0600` — `0750`/`0640` when the repository's root folder grants its group
//! read and others nothing ([`FileAccess::of_dir`]), which is how a backup group is
//! chosen: at creation ([`crate::TargetOptions::local_access`]) or later by the
//! operator's `chmod 750` of the root.
//!
//! How: before a write, the folders from the root down to the object's are created
//! here with their mode (so `LocalFileSystem` never creates one itself); after the
//! write, the object's mode is set. Between the two the object has the umask's mode,
//! but inside a root folder others cannot enter, which is what keeps it private; the
//! final mode keeps it private if the file is later moved or the root opened. A root
//! folder made world-readable by an older dbops (or by hand) stays as it is: its new
//! objects and folders are owner-only, and `chmod -R go= ROOT` closes the old ones.
//!
//! Every `ObjectStore` method is forwarded (`#[deny(clippy::missing_trait_methods)]`),
//! so none falls back to a default that would write around the modes.

use std::fmt;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use ops_core::FileAccess;

/// A local directory store whose folders and objects are owner-only (or group-
/// readable, see the module docs).
#[derive(Debug)]
pub(crate) struct PrivateLocalStore {
    inner: Arc<LocalFileSystem>,
    /// The repository's root folder: created with `new_root`'s mode on the first write.
    root: PathBuf,
    new_root: FileAccess,
}

impl PrivateLocalStore {
    /// A store rooted at `/` (keys are absolute paths) that keeps `root` and
    /// everything below it private; `new_root` is the access of a root folder this
    /// store creates.
    pub(crate) fn new(root: PathBuf, new_root: FileAccess) -> Self {
        Self {
            inner: Arc::new(LocalFileSystem::new().with_fsync(true)),
            root,
            new_root,
        }
    }

    /// Creates the folders down to `location`'s (the root first, with its own mode)
    /// and returns the access its new objects get.
    async fn prepare(&self, location: &Path) -> Result<Prepared> {
        let file = self.inner.path_to_filesystem(location)?;
        let root = self.root.clone();
        let new_root = self.new_root;
        blocking(move || {
            let mut made = ops_core::access::create_private_dir(&root, new_root)
                .map_err(|e| io_error(&root, e))?;
            let access = FileAccess::of_dir(&root).map_err(|e| io_error(&root, e))?;
            if let Some(parent) = file.parent()
                && parent.starts_with(&root)
            {
                made.extend(
                    ops_core::access::create_private_dir(parent, access)
                        .map_err(|e| io_error(parent, e))?,
                );
            }
            // New folders are made durable as LocalFileSystem does with fsync on: each
            // one, and the folder that gained the first of them.
            if let Some(first) = made.first() {
                for dir in made.iter().map(PathBuf::as_path).chain(first.parent()) {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| io_error(dir, e))?;
                }
            }
            Ok(Prepared { file, access })
        })
        .await
    }
}

/// Where an object is written and the mode it gets once written.
struct Prepared {
    file: PathBuf,
    access: FileAccess,
}

impl Prepared {
    fn finish(&self) -> Result<()> {
        std::fs::set_permissions(
            &self.file,
            std::fs::Permissions::from_mode(self.access.file_mode()),
        )
        .map_err(|e| io_error(&self.file, e))
    }
}

fn io_error(path: &FsPath, source: std::io::Error) -> object_store::Error {
    // The kind stays an io::Error's, so that a refused folder maps to PermissionDenied.
    let text = format!("making {} private: {source}", path.display());
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(std::io::Error::new(source.kind(), text)),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        })?
}

impl fmt::Display for PrivateLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateLocalStore({})", self.root.display())
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for PrivateLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let prepared = self.prepare(location).await?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        prepared.finish()?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let prepared = self.prepare(location).await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(PrivateUpload { inner, prepared }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let prepared = self.prepare(to).await?;
        self.inner.copy_opts(from, to, options).await?;
        prepared.finish()
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let prepared = self.prepare(to).await?;
        self.inner.rename_opts(from, to, options).await?;
        prepared.finish()
    }
}

/// A multipart upload whose object gets its mode once complete.
#[derive(Debug)]
struct PrivateUpload {
    inner: Box<dyn MultipartUpload>,
    prepared: Prepared,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.file.display(), self.access)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl MultipartUpload for PrivateUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await?;
        self.prepared.finish()?;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
