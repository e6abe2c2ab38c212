//! File trees beside a database: the uploaded files, the `.env` and the configuration
//! that a database backup alone cannot bring back.
//!
//! A tree is stored as two streams through the same chunking, de-duplication,
//! compression and encryption as table data:
//! - `files/<n>/list`: one JSON line per entry, depth first, names sorted byte-wise
//!   within a directory; a regular file's line follows its content and records its
//!   size and BLAKE3;
//! - `files/<n>/data`: the regular files' contents, concatenated in listing order
//!   (a file's offset is the sum of the sizes before it).
//!
//! One content stream cut by content-defined chunking stores small files together
//! (100,000 small files are not 100,000 blobs) and a changed file costs its own bytes
//! and at most the two chunks at its edges. Memory does not grow with file sizes, and
//! with file count only by the names of the directories on the current path (each
//! directory's names are sorted in memory) and the hard-linked files seen (their
//! device and inode, to store the second name as a link).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{DumpSink, StreamRole, StreamSource, StreamSpec, StreamWriter};
use crate::target::ByteStream;
use crate::{Error, ErrorKind, Result};

/// Prefix of every file-tree stream.
pub const FILES_PREFIX: &str = "files/";
/// Bytes read from a file at once.
const READ_BYTES: usize = 512 * 1024;
/// Conflicts named in a refusal to overwrite.
const CONFLICTS_NAMED: usize = 5;

/// Directories and files to back up, with exclusions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileTrees {
    roots: Vec<PathBuf>,
    excludes: Vec<Glob>,
}

impl FileTrees {
    /// Trees rooted at `paths` (made absolute against the working directory, symlinks
    /// in them kept as given), leaving out what matches `excludes`: a pattern without
    /// `/` is matched against each entry's name (`*.tmp`), one with `/` against its path
    /// below the tree's root (`cache/**`); `*` and `?` stay within one name, `**`
    /// spans directories, `[abc]` and `[!a-z]` are classes.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for no path, a path that does not exist, a tree
    /// inside another, a bad pattern.
    pub fn new(paths: &[PathBuf], excludes: &[String]) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::invalid("no file or directory to back up was given"));
        }
        let mut roots = Vec::new();
        for p in paths {
            let abs = std::path::absolute(p)
                .map_err(|e| Error::io(format!("resolving {}", p.display()), e))?;
            let abs = normalize(&abs);
            std::fs::symlink_metadata(&abs).map_err(|e| {
                let message = format!("cannot back up {}: {e}", abs.display());
                Error::io(format!("reading {}", abs.display()), e).with_message(message)
            })?;
            roots.push(abs);
        }
        // The same trees in another order are the same group.
        roots.sort();
        roots.dedup();
        for (i, a) in roots.iter().enumerate() {
            for (j, b) in roots.iter().enumerate() {
                if i != j && a.starts_with(b) {
                    return Err(Error::invalid(format!(
                        "{} is inside {}: give each tree once",
                        a.display(),
                        b.display()
                    )));
                }
            }
        }
        let excludes = excludes
            .iter()
            .map(|e| Glob::parse(e))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { roots, excludes })
    }

    /// Checks exclude patterns alone (a config checked where the paths are absent).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming a bad pattern.
    pub fn check_excludes(excludes: &[String]) -> Result<()> {
        excludes.iter().try_for_each(|e| Glob::parse(e).map(drop))
    }

    /// The trees' roots, absolute.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// True when `rel` (below a root, `name` its last component) is left out.
    fn excluded(&self, rel: &Path, name: &OsStr) -> bool {
        self.excludes.iter().any(|g| {
            if g.anchored {
                g.matches(rel.as_os_str().as_bytes())
            } else {
                g.matches(name.as_bytes())
            }
        })
    }

    /// Writes every tree into `sink` as `files/<n>/list` and `files/<n>/data`.
    ///
    /// Entries that vanish or cannot be read while the walk runs are left out with a
    /// warning (a live tree changes); a file that changes while it is read is stored as
    /// read, with a warning.
    ///
    /// # Errors
    /// Sink errors; a root that cannot be read.
    pub async fn dump(&self, sink: &Arc<dyn DumpSink>) -> Result<()> {
        for (n, root) in self.roots.iter().enumerate() {
            Walk::new(self, sink, n, root).await?.run().await?;
        }
        Ok(())
    }
}

/// Removes `.` and resolves `..` lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file, with content in the data stream.
    File,
    /// A symbolic link.
    Symlink,
    /// Another name of a regular file stored earlier in the same tree.
    Hardlink,
}

/// One entry of a stored tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path below the tree's root (empty for the root itself).
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_ns: u32,
    /// Bytes of content (regular files).
    pub size: u64,
    /// BLAKE3 of the content, hex (regular files).
    pub digest: Option<String>,
    /// The link's target (symlinks).
    pub target: Option<PathBuf>,
    /// The earlier name of the same file, below the same root (hard links).
    pub link: Option<PathBuf>,
}

/// A listing line: names as UTF-8 strings where they are, base64 of the bytes where not.
#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_b64: Option<String>,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    mtime_ns: u32,
    #[serde(default, skip_serializing_if = "is_zero64")]
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_b64: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

fn encode(p: &Path) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(p.as_os_str().as_bytes()) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(p.as_os_str().as_bytes())),
        ),
    }
}

fn decode(text: Option<String>, b64: Option<String>) -> Result<Option<PathBuf>> {
    match (text, b64) {
        (Some(t), _) => Ok(Some(PathBuf::from(t))),
        (None, Some(b)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::corrupt(format!("a file name in a listing is damaged: {e}")))?;
            Ok(Some(PathBuf::from(OsString::from_vec(bytes))))
        }
        (None, None) => Ok(None),
    }
}

impl FileEntry {
    fn to_line(&self) -> Result<Vec<u8>> {
        let (path, path_b64) = encode(&self.path);
        let (target, target_b64) = self.target.as_deref().map(encode).unwrap_or_default();
        let (link, link_b64) = self.link.as_deref().map(encode).unwrap_or_default();
        let line = Line {
            path,
            path_b64,
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            mtime_ns: self.mtime_ns,
            size: self.size,
            digest: self.digest.clone(),
            target,
            target_b64,
            link,
            link_b64,
        };
        let mut out = serde_json::to_vec(&line)
            .map_err(|e| Error::internal(format!("encoding a listing line: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    fn from_line(bytes: &[u8]) -> Result<Self> {
        let line: Line = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("a file listing line is damaged: {e}")))?;
        let entry = Self::from_parsed(line)?;
        let damaged = |why: &str| {
            Err(Error::corrupt(format!(
                "a file listing line is damaged: {} {why}",
                entry.path.display()
            )))
        };
        // Nothing a listing names may point outside its tree.
        if !plain(&entry.path) {
            return damaged("is not a plain path below the tree's root");
        }
        if entry
            .link
            .as_deref()
            .is_some_and(|l| !plain(l) || l.as_os_str().is_empty())
        {
            return damaged("is a hard link to a path outside the tree");
        }
        if entry.kind != EntryKind::File && entry.size != 0 {
            return damaged("has content but is not a regular file");
        }
        if entry.kind == EntryKind::Hardlink && entry.link.is_none() {
            return damaged("is a hard link to nothing");
        }
        Ok(entry)
    }

    fn from_parsed(line: Line) -> Result<Self> {
        Ok(Self {
            path: decode(line.path, line.path_b64)?.unwrap_or_default(),
            kind: line.kind,
            mode: line.mode,
            uid: line.uid,
            gid: line.gid,
            mtime: line.mtime,
            mtime_ns: line.mtime_ns,
            size: line.size,
            digest: line.digest,
            target: decode(line.target, line.target_b64)?,
            link: decode(line.link, line.link_b64)?,
        })
    }

    fn from_meta(path: PathBuf, kind: EntryKind, meta: &std::fs::Metadata) -> Self {
        Self {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_ns: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            size: 0,
            digest: None,
            target: None,
            link: None,
        }
    }
}

/// One stored tree, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTree {
    /// Number of the tree within the backup.
    pub number: usize,
    /// The absolute path it was taken from.
    pub root: PathBuf,
    /// Entries (directories, files, links).
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

impl FileTree {
    fn list_stream(&self) -> String {
        list_stream(self.number)
    }

    fn data_stream(&self) -> String {
        data_stream(self.number)
    }
}

fn list_stream(n: usize) -> String {
    format!("{FILES_PREFIX}{n}/list")
}

fn data_stream(n: usize) -> String {
    format!("{FILES_PREFIX}{n}/data")
}

/// The file trees a backup holds.
pub fn trees_of(manifest: &super::Manifest) -> Result<Vec<FileTree>> {
    let mut out = Vec::new();
    for n in 0.. {
        let (Some(list), Some(data)) = (
            manifest.stream(&list_stream(n)),
            manifest.stream(&data_stream(n)),
        ) else {
            break;
        };
        let root = decode(
            list.spec.meta.get("root").cloned(),
            list.spec.meta.get("root_b64").cloned(),
        )?
        .ok_or_else(|| {
            Error::corrupt(format!(
                "file tree {n} of backup {} has no root",
                manifest.id
            ))
        })?;
        out.push(FileTree {
            number: n,
            root,
            entries: list.rows,
            bytes: data.bytes,
        });
    }
    Ok(out)
}

struct Frame {
    rel: PathBuf,
    /// The directory's entries, sorted, each with its `lstat` (read together in one
    /// blocking call: one thread hop per directory, not per entry).
    names: std::vec::IntoIter<(OsString, std::io::Result<std::fs::Metadata>)>,
}

/// A directory's entries with their `lstat`.
type Listed = Vec<(OsString, std::io::Result<std::fs::Metadata>)>;

/// Reads a directory's names, sorted byte-wise, with each entry's `lstat`; the error
/// that cut the listing short, if one did.
fn read_dir_sorted(dir: &Path) -> std::io::Result<(Listed, Option<std::io::Error>)> {
    let mut names = Vec::new();
    let mut partial = None;
    for e in std::fs::read_dir(dir)? {
        match e {
            Ok(e) => names.push(e.file_name()),
            Err(err) => {
                partial = Some(err);
                break;
            }
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let entries = names
        .into_iter()
        .map(|n| {
            let meta = std::fs::symlink_metadata(dir.join(&n));
            (n, meta)
        })
        .collect();
    Ok((entries, partial))
}

struct Walk<'a> {
    trees: &'a FileTrees,
    sink: &'a Arc<dyn DumpSink>,
    root: &'a Path,
    list: Box<dyn StreamWriter>,
    data: Box<dyn StreamWriter>,
    pending: BytesMut,
    links: HashMap<(u64, u64), PathBuf>,
}

impl<'a> Walk<'a> {
    async fn new(
        trees: &'a FileTrees,
        sink: &'a Arc<dyn DumpSink>,
        n: usize,
        root: &'a Path,
    ) -> Result<Self> {
        let (text, b64) = encode(root);
        let mut spec = StreamSpec::new(list_stream(n), StreamRole::Auxiliary);
        if let Some(t) = text {
            spec = spec.with_meta("root", t);
        }
        if let Some(b) = b64 {
            spec = spec.with_meta("root_b64", b);
        }
        let list = sink.open_stream(spec).await?;
        let data = sink
            .open_stream(StreamSpec::new(data_stream(n), StreamRole::Auxiliary))
            .await?;
        Ok(Self {
            trees,
            sink,
            root,
            list,
            data,
            pending: BytesMut::new(),
            links: HashMap::new(),
        })
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.sink.warn(message);
    }

    async fn emit(&mut self, entry: &FileEntry) -> Result<()> {
        self.pending.extend_from_slice(&entry.to_line()?);
        if self.pending.len() >= 64 * 1024 {
            let out = self.pending.split().freeze();
            self.list.write(out).await?;
        }
        Ok(())
    }

    async fn run(mut self) -> Result<()> {
        let root_meta = tokio::fs::symlink_metadata(self.root)
            .await
            .map_err(|e| Error::io(format!("reading {}", self.root.display()), e))?;
        if root_meta.file_type().is_symlink() {
            self.warn(format!(
                "{} is a symlink: only the link is stored; name its target to back up what it points to",
                self.root.display()
            ));
        }
        let mut stack = Vec::new();
        if let Some(frame) = self.entry(PathBuf::new(), root_meta).await? {
            stack.push(frame);
        }
        while let Some(top) = stack.last_mut() {
            let Some((name, meta)) = top.names.next() else {
                stack.pop();
                continue;
            };
            let rel = top.rel.join(&name);
            if self.trees.excluded(&rel, &name) {
                continue;
            }
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    self.warn(format!("{} left out: {e}", self.root.join(&rel).display()));
                    continue;
                }
            };
            if let Some(frame) = self.entry(rel, meta).await? {
                stack.push(frame);
            }
        }
        if !self.pending.is_empty() {
            let out = self.pending.split().freeze();
            self.list.write(out).await?;
        }
        self.list.finish().await?;
        self.data.finish().await?;
        Ok(())
    }

    /// Stores one entry; a directory returns its frame of sorted names.
    async fn entry(&mut self, rel: PathBuf, meta: std::fs::Metadata) -> Result<Option<Frame>> {
        let abs = self.root.join(&rel);
        let ft = meta.file_type();
        if ft.is_dir() {
            let dir = abs.clone();
            let read = tokio::task::spawn_blocking(move || read_dir_sorted(&dir))
                .await
                .map_err(|e| Error::internal(format!("directory task failed: {e}")))?;
            let names = match read {
                Ok((names, partial)) => {
                    if let Some(e) = partial {
                        self.warn(format!("{} only partly read: {e}", abs.display()));
                    }
                    names
                }
                Err(e) => {
                    self.warn(format!("{} left out: {e}", abs.display()));
                    return Ok(None);
                }
            };
            self.emit(&FileEntry::from_meta(rel.clone(), EntryKind::Dir, &meta))
                .await?;
            return Ok(Some(Frame {
                rel,
                names: names.into_iter(),
            }));
        }
        if ft.is_symlink() {
            match tokio::fs::read_link(&abs).await {
                Ok(target) => {
                    let mut e = FileEntry::from_meta(rel, EntryKind::Symlink, &meta);
                    e.target = Some(target);
                    self.emit(&e).await?;
                }
                Err(e) => self.warn(format!("{} left out: {e}", abs.display())),
            }
            return Ok(None);
        }
        if !ft.is_file() {
            self.warn(format!(
                "{} left out: not a regular file, directory or symlink",
                abs.display()
            ));
            return Ok(None);
        }
        if meta.nlink() > 1
            && let Some(first) = self.links.get(&(meta.dev(), meta.ino()))
        {
            let mut e = FileEntry::from_meta(rel, EntryKind::Hardlink, &meta);
            e.link = Some(first.clone());
            self.emit(&e).await?;
            return Ok(None);
        }
        let Some((size, digest)) = self.content(&abs, &meta).await? else {
            return Ok(None);
        };
        if meta.nlink() > 1 {
            self.links.insert((meta.dev(), meta.ino()), rel.clone());
        }
        let mut e = FileEntry::from_meta(rel, EntryKind::File, &meta);
        e.size = size;
        e.digest = Some(digest);
        self.emit(&e).await?;
        Ok(None)
    }

    /// Copies a file's content into the data stream; `None` when it could not be
    /// opened (left out with a warning).
    async fn content(
        &mut self,
        abs: &Path,
        before: &std::fs::Metadata,
    ) -> Result<Option<(u64, String)>> {
        // Open and read the head in one blocking call: most files end there.
        let path = abs.to_path_buf();
        let expected = before.len();
        let head = tokio::task::spawn_blocking(move || read_head(&path, expected))
            .await
            .map_err(|e| Error::internal(format!("file task failed: {e}")))?;
        let (file, head, whole) = match head {
            Ok(h) => h,
            Err(e) => {
                self.warn(format!("{} left out: {e}", abs.display()));
                return Ok(None);
            }
        };
        let mut hasher = blake3::Hasher::new();
        let mut size = head.len() as u64;
        if !head.is_empty() {
            hasher.update(&head);
            self.data.write(head.freeze()).await?;
        }
        let mut file = tokio::fs::File::from_std(file);
        let mut eof = whole.is_some();
        while !eof {
            let mut buf = BytesMut::with_capacity(READ_BYTES);
            let n = match file.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    // Bytes already in the data stream stay: the entry records what
                    // was read, so the listing and the data agree.
                    self.warn(format!(
                        "{} read only in part ({size} bytes): {e}",
                        abs.display()
                    ));
                    break;
                }
            };
            if n == 0 {
                eof = true;
                continue;
            }
            hasher.update(&buf);
            size += n as u64;
            self.data.write(buf.freeze()).await?;
        }
        let after = match whole {
            Some(m) => Some(m),
            None => file.metadata().await.ok(),
        };
        if let Some(after) = after
            && (after.len() != size
                || after.mtime() != before.mtime()
                || after.mtime_nsec() != before.mtime_nsec())
        {
            self.warn(format!(
                "{} changed while it was read: the backup holds the {size} bytes read",
                abs.display()
            ));
        }
        Ok(Some((size, hasher.finalize().to_hex().to_string())))
    }
}

/// Opens a file and reads up to [`READ_BYTES`]; true when that was all of it.
/// `expected` (the size `lstat` gave) sizes the buffer, so a small file costs its
/// own size; the metadata after reading comes with a file read whole.
fn read_head(path: &Path, expected: u64) -> std::io::Result<Head> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let cap = usize::try_from(expected.saturating_add(1))
        .unwrap_or(READ_BYTES)
        .min(READ_BYTES);
    let mut buf = BytesMut::zeroed(cap);
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => {
                buf.truncate(n);
                let after = file.metadata().ok();
                return Ok((file, buf, after));
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((file, buf, None))
}

/// An open file, its first bytes, and its metadata when those were all of it.
type Head = (std::fs::File, BytesMut, Option<std::fs::Metadata>);

/// A glob pattern (see [`FileTrees::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    text: String,
    anchored: bool,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Any,
    Star,
    DoubleStar,
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Glob {
    fn parse(text: &str) -> Result<Self> {
        // A leading `/` anchors at the tree's root; a trailing one is ignored.
        let untrailed = text.trim_end_matches('/');
        let anchored = untrailed.contains('/');
        let trimmed = untrailed.trim_start_matches('/');
        if trimmed.is_empty() {
            return Err(Error::invalid(format!(
                "'{text}' is not an exclude pattern"
            )));
        }
        let bytes = trimmed.as_bytes();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'*' if bytes.get(i + 1) == Some(&b'*') => {
                    tokens.push(Token::DoubleStar);
                    i += 2;
                    // `**/` also matches no directory at all.
                    if bytes.get(i) == Some(&b'/') {
                        i += 1;
                    }
                }
                b'*' => {
                    tokens.push(Token::Star);
                    i += 1;
                }
                b'?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                b'[' => {
                    let mut j = i + 1;
                    let negated = matches!(bytes.get(j), Some(b'!' | b'^'));
                    if negated {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = bytes.get(j) else {
                            return Err(Error::invalid(format!(
                                "exclude pattern '{text}' has an unclosed '['"
                            )));
                        };
                        if c == b']' && !first {
                            break;
                        }
                        first = false;
                        if bytes.get(j + 1) == Some(&b'-')
                            && bytes.get(j + 2).is_some_and(|&e| e != b']')
                        {
                            ranges.push((c, bytes[j + 2]));
                            j += 3;
                        } else {
                            ranges.push((c, c));
                            j += 1;
                        }
                    }
                    tokens.push(Token::Class { negated, ranges });
                    i = j + 1;
                }
                b'\\' if i + 1 < bytes.len() => {
                    tokens.push(Token::Byte(bytes[i + 1]));
                    i += 2;
                }
                c => {
                    tokens.push(Token::Byte(c));
                    i += 1;
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            anchored,
            tokens,
        })
    }

    fn matches(&self, name: &[u8]) -> bool {
        matches_from(&self.tokens, name)
    }
}

fn matches_from(tokens: &[Token], s: &[u8]) -> bool {
    let Some((t, rest)) = tokens.split_first() else {
        return s.is_empty();
    };
    match t {
        Token::Byte(b) => s.first() == Some(b) && matches_from(rest, &s[1..]),
        Token::Any => s.first().is_some_and(|&c| c != b'/') && matches_from(rest, &s[1..]),
        Token::Class { negated, ranges } => {
            s.first().is_some_and(|&c| {
                c != b'/' && (ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated)
            }) && matches_from(rest, &s[1..])
        }
        Token::Star => {
            for i in 0..=s.len() {
                if matches_from(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&b'/') {
                    return false;
                }
            }
            false
        }
        Token::DoubleStar => (0..=s.len()).any(|i| matches_from(rest, &s[i..])),
    }
}

/// Options of [`super::Repository::restore_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileRestoreOptions {
    /// Each tree is laid down below this directory under its original absolute path
    /// (`/srv/app/storage` restored to `/tmp/r` lands in `/tmp/r/srv/app/storage`).
    pub to: PathBuf,
    /// Only these original absolute paths and what is below them; empty means all.
    pub paths: Vec<PathBuf>,
    /// Replace files that exist; without it the restore refuses before writing.
    pub overwrite: bool,
}

impl FileRestoreOptions {
    /// Everything, below `to`, refusing to overwrite.
    pub fn new(to: impl Into<PathBuf>) -> Self {
        Self {
            to: to.into(),
            paths: Vec::new(),
            overwrite: false,
        }
    }

    /// Only these original paths.
    #[must_use]
    pub fn with_paths(mut self, paths: Vec<PathBuf>) -> Self {
        self.paths = paths;
        self
    }

    /// Replaces existing files.
    #[must_use]
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}

/// What a file restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FileRestoreReport {
    /// Directories created or updated.
    pub dirs: u64,
    /// Regular files written.
    pub files: u64,
    /// Symbolic links made.
    pub symlinks: u64,
    /// Hard links made.
    pub hardlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Where the trees went.
    pub to: PathBuf,
    /// Anything the operator should know (owners that could not be set).
    pub warnings: Vec<String>,
}

/// Yields `\n`-terminated lines of a stream.
struct Lines {
    stream: ByteStream,
    buf: BytesMut,
    done: bool,
}

impl Lines {
    fn new(stream: ByteStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            done: false,
        }
    }

    async fn next_entry(&mut self) -> Result<Option<FileEntry>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(i + 1);
                return FileEntry::from_line(&line[..i]).map(Some);
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Error::corrupt(
                    "a file listing ends in the middle of a line",
                ));
            }
            match self.stream.try_next().await? {
                Some(b) => self.buf.extend_from_slice(&b),
                None => self.done = true,
            }
        }
    }
}

/// Hands out a data stream's bytes in pieces no longer than asked.
struct Data {
    stream: ByteStream,
    buf: Bytes,
    /// Bytes handed out so far.
    offset: u64,
    /// Bytes to pass over before the next piece.
    owed: u64,
}

impl Data {
    /// Passes over bytes no chosen file needs, reading them only when a later file
    /// needs what follows: a restore of chosen files stops after the last one, so
    /// damage further on does not fail it.
    fn skip(&mut self, n: u64) {
        self.owed += n;
    }

    async fn take(&mut self, max: u64) -> Result<Bytes> {
        while self.owed > 0 {
            let n = self.owed;
            self.owed = 0;
            let mut left = n;
            while left > 0 {
                left -= self.next(left).await?.len() as u64;
            }
        }
        self.next(max).await
    }

    async fn next(&mut self, max: u64) -> Result<Bytes> {
        while self.buf.is_empty() {
            match self.stream.try_next().await? {
                Some(b) => self.buf = b,
                None => {
                    return Err(Error::corrupt(format!(
                        "the file data ends at byte {} though the listing names more",
                        self.offset
                    )));
                }
            }
        }
        let n = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        self.offset += n as u64;
        Ok(self.buf.split_to(n))
    }
}

/// Where an entry of `tree` goes below `to`.
fn destination(to: &Path, root: &Path, rel: &Path) -> PathBuf {
    let below: PathBuf = root
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let d = to.join(below);
    if rel.as_os_str().is_empty() {
        d
    } else {
        d.join(rel)
    }
}

fn selected(paths: &[PathBuf], abs: &Path) -> bool {
    paths.is_empty() || paths.iter().any(|p| abs.starts_with(p))
}

/// True for a relative path of plain names only (no `..`, no root, no `.`): what a
/// listing may name, so nothing it says can point outside its tree.
fn plain(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn absolute_in(t: &FileTree, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        t.root.clone()
    } else {
        t.root.join(rel)
    }
}

/// A directory of the listing on the path to the current entry.
struct Seen {
    rel: PathBuf,
    dest: PathBuf,
    /// It exists below the target as a real directory (made or checked).
    ready: bool,
    /// Chosen: its stored metadata is applied once everything below it is written.
    entry: Option<FileEntry>,
}

/// Checks the listing's shape as it is read: every entry's parent is the directory
/// listed last on its path, so no entry lies below a symlink or outside its tree.
fn check_order(seen: &[Seen], e: &FileEntry, root: &Path) -> Result<()> {
    let fits = match (e.path.parent(), seen.last()) {
        (None, None) => true,
        (Some(parent), Some(top)) => parent == top.rel,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(Error::corrupt(format!(
            "the file listing of {} is damaged: {} does not follow its directory",
            root.display(),
            e.path.display()
        )))
    }
}

/// Pops the directories `e` is not below, applying the metadata of chosen ones.
fn leave_dirs(seen: &mut Vec<Seen>, e: &FileEntry, owners: &mut Owners) -> Result<()> {
    while seen
        .last()
        .is_some_and(|d| !e.path.starts_with(&d.rel) || e.path == d.rel)
    {
        let d = seen.pop().expect("checked");
        if let Some(entry) = &d.entry {
            set_meta(&d.dest, entry, owners)?;
        }
    }
    Ok(())
}

/// Makes `dest` a real directory (owner-only until its own mode is applied): an
/// existing directory is used, a symlink or file there is replaced only when
/// overwriting, never followed.
fn real_dir(dest: &Path, overwrite: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) if overwrite => std::fs::remove_file(dest)
            .map_err(|err| Error::io(format!("replacing {}", dest.display()), err))?,
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a directory; nothing below it was written",
                    dest.display()
                ),
            ));
        }
        Err(_) => {}
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|err| Error::io(format!("creating {}", dest.display()), err))
}

/// Makes every directory on the current path exist (those of the listing made
/// owner-only, with their metadata later if chosen; the ones above the tree's root as
/// the target's own).
fn ready_dirs(seen: &mut [Seen], overwrite: bool) -> Result<()> {
    for (i, d) in seen.iter_mut().enumerate() {
        if d.ready {
            continue;
        }
        if i == 0 {
            above_tree(&d.dest)?;
        }
        real_dir(&d.dest, overwrite)?;
        d.ready = true;
    }
    Ok(())
}

/// Makes the directories above a tree's root: they are the target's own (made with
/// the default mode, symlinks in them followed), unlike those of the listing.
fn above_tree(root_dest: &Path) -> Result<()> {
    match root_dest.parent() {
        Some(parent) => std::fs::create_dir_all(parent)
            .map_err(|err| Error::io(format!("creating {}", parent.display()), err)),
        None => Ok(()),
    }
}

/// What the first pass found.
struct Plan {
    /// A chosen hard link whose first name is not chosen gets the content: tree number
    /// and first name → the chosen link that holds it.
    promoted: HashMap<(usize, PathBuf), PathBuf>,
}

/// Reads every listing before anything is written: chosen paths must name entries,
/// files to restore must not exist (unless overwriting), and never where a directory
/// is (a directory is not replaced, even when overwriting).
async fn plan(
    source: &dyn StreamSource,
    trees: &[FileTree],
    paths: &[PathBuf],
    to: &Path,
    overwrite: bool,
) -> Result<Plan> {
    let mut promoted = HashMap::new();
    let mut conflicts = Vec::new();
    let mut count = 0u64;
    let mut clashes = Vec::new();
    let mut matched = vec![false; paths.len()];
    for (n, t) in trees.iter().enumerate() {
        let mut lines = Lines::new(source.open(&t.list_stream()).await?);
        while let Some(e) = lines.next_entry().await? {
            let abs = absolute_in(t, &e.path);
            if !selected(paths, &abs) {
                continue;
            }
            for (m, p) in matched.iter_mut().zip(paths) {
                *m |= abs.starts_with(p);
            }
            if let (EntryKind::Hardlink, Some(first)) = (e.kind, &e.link)
                && !selected(paths, &t.root.join(first))
            {
                promoted
                    .entry((n, first.clone()))
                    .or_insert_with(|| e.path.clone());
            }
            let dest = destination(to, &t.root, &e.path);
            let Ok(m) = std::fs::symlink_metadata(&dest) else {
                continue;
            };
            if e.kind != EntryKind::Dir && m.is_dir() {
                if clashes.len() < CONFLICTS_NAMED {
                    clashes.push(dest.display().to_string());
                }
            } else if !overwrite && (e.kind != EntryKind::Dir || !m.is_dir()) {
                count += 1;
                if conflicts.len() < CONFLICTS_NAMED {
                    conflicts.push(dest.display().to_string());
                }
            }
        }
    }
    if let Some((p, _)) = paths.iter().zip(&matched).find(|(_, m)| !**m) {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("{} is not in the backup's files", p.display()),
        ));
    }
    if !clashes.is_empty() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "directories stand where the backup has files ({}); nothing was written: remove them or restore elsewhere",
                clashes.join(", ")
            ),
        ));
    }
    if count > 0 {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "{count} of the files to restore exist already ({}{}); nothing was written: restore into an empty directory, or allow overwriting",
                conflicts.join(", "),
                if count > conflicts.len() as u64 {
                    ", …"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(Plan { promoted })
}

/// Checks the chosen paths and the target and resolves `to`.
fn prepare(trees: &[FileTree], options: &FileRestoreOptions) -> Result<(Vec<PathBuf>, PathBuf)> {
    if trees.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            "the backup holds no files or directories",
        ));
    }
    let paths: Vec<PathBuf> = options.paths.iter().map(|p| normalize(p)).collect();
    for p in &paths {
        if !p.is_absolute() {
            return Err(Error::invalid(format!(
                "{} is not an absolute path: name files as they were backed up",
                p.display()
            )));
        }
        if !trees
            .iter()
            .any(|t| p.starts_with(&t.root) || t.root.starts_with(p))
        {
            let roots: Vec<String> = trees.iter().map(|t| t.root.display().to_string()).collect();
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "{} is not in the backup, which holds {}",
                    p.display(),
                    roots.join(", ")
                ),
            ));
        }
    }
    let to = std::path::absolute(&options.to)
        .map_err(|e| Error::io(format!("resolving {}", options.to.display()), e))?;
    // Symlinks above the target are the operator's own; below it none is followed.
    let to = match std::fs::canonicalize(&to) {
        Ok(real) => real,
        Err(_) => to,
    };
    Ok((paths, to))
}

/// The first pass alone: what [`restore`] would refuse, before anything is written.
pub(super) async fn check(
    source: &dyn StreamSource,
    trees: &[FileTree],
    options: &FileRestoreOptions,
) -> Result<()> {
    let (paths, to) = prepare(trees, options)?;
    plan(source, trees, &paths, &to, options.overwrite)
        .await
        .map(drop)
}

/// Owners that could not be set, and set-id bits dropped for it.
#[derive(Default)]
struct Owners {
    kept: u64,
    setid_dropped: u64,
}

/// Restores the trees of `manifest` read through `source`.
pub(super) async fn restore(
    source: &dyn StreamSource,
    trees: &[FileTree],
    options: &FileRestoreOptions,
) -> Result<FileRestoreReport> {
    let (paths, to) = prepare(trees, options)?;
    let Plan { promoted } = plan(source, trees, &paths, &to, options.overwrite).await?;
    let mut report = FileRestoreReport {
        to: to.clone(),
        ..FileRestoreReport::default()
    };
    let mut owners = Owners::default();
    let written = restore_trees(
        source,
        trees,
        options,
        &paths,
        &to,
        &promoted,
        &mut report,
        &mut owners,
    )
    .await;
    if let Err(e) = written {
        let touched = report.files + report.dirs + report.symlinks + report.hardlinks;
        if touched == 0 {
            return Err(e);
        }
        let message = format!(
            "{} ({} entries were written below {} before it; a restore allowed to overwrite completes them)",
            e.message(),
            touched,
            to.display()
        );
        return Err(e.with_message(message));
    }
    if owners.kept > 0 {
        report.warnings.push(format!(
            "{} entries keep the restoring user as owner: only root can give files to other users",
            owners.kept
        ));
    }
    if owners.setid_dropped > 0 {
        report.warnings.push(format!(
            "{} files lost their setuid/setgid bits: their owner could not be restored",
            owners.setid_dropped
        ));
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn restore_trees(
    source: &dyn StreamSource,
    trees: &[FileTree],
    options: &FileRestoreOptions,
    paths: &[PathBuf],
    to: &Path,
    promoted: &HashMap<(usize, PathBuf), PathBuf>,
    report: &mut FileRestoreReport,
    owners: &mut Owners,
) -> Result<()> {
    for (n, t) in trees.iter().enumerate() {
        let mut lines = Lines::new(source.open(&t.list_stream()).await?);
        let mut data = Data {
            stream: source.open(&t.data_stream()).await?,
            buf: Bytes::new(),
            offset: 0,
            owed: 0,
        };
        let mut seen: Vec<Seen> = Vec::new();
        while let Some(e) = lines.next_entry().await? {
            leave_dirs(&mut seen, &e, owners)?;
            check_order(&seen, &e, &t.root)?;
            let abs = absolute_in(t, &e.path);
            let mut dest = destination(to, &t.root, &e.path);
            if !selected(paths, &abs) {
                match promoted.get(&(n, e.path.clone())) {
                    // Not chosen, but a chosen hard link to it is: it gets the content.
                    Some(link) if e.kind == EntryKind::File => {
                        dest = destination(to, &t.root, link);
                    }
                    _ => {
                        data.skip(e.size);
                        if e.kind == EntryKind::Dir {
                            seen.push(Seen {
                                rel: e.path.clone(),
                                dest,
                                ready: false,
                                entry: None,
                            });
                        }
                        continue;
                    }
                }
            }
            if seen.is_empty() {
                // The tree's root (the listing's order puts every other entry below a
                // directory).
                above_tree(&dest)?;
            }
            ready_dirs(&mut seen, options.overwrite)?;
            match e.kind {
                EntryKind::Dir => {
                    real_dir(&dest, options.overwrite)?;
                    report.dirs += 1;
                    seen.push(Seen {
                        rel: e.path.clone(),
                        dest,
                        ready: true,
                        entry: Some(e),
                    });
                }
                EntryKind::File => {
                    write_file(&mut data, &e, &abs, &dest, options.overwrite, owners).await?;
                    report.files += 1;
                    report.bytes += e.size;
                }
                EntryKind::Symlink => {
                    let target = e.target.clone().unwrap_or_default();
                    remove_existing(&dest)?;
                    std::os::unix::fs::symlink(&target, &dest).map_err(|err| {
                        Error::io(format!("creating the link {}", dest.display()), err)
                    })?;
                    set_owner(&dest, &e, owners)?;
                    set_mtime(&dest, &e)?;
                    report.symlinks += 1;
                }
                EntryKind::Hardlink => {
                    let first = e.link.clone().unwrap_or_default();
                    let holder = match promoted.get(&(n, first.clone())) {
                        // This link got the content itself.
                        Some(link) if *link == e.path => continue,
                        Some(link) => link.clone(),
                        None => first,
                    };
                    let holder = destination(to, &t.root, &holder);
                    // The holder is a file this restore wrote, reached through real
                    // directories only.
                    let real = std::fs::canonicalize(&holder).ok();
                    let is_file = std::fs::symlink_metadata(&holder).is_ok_and(|m| m.is_file());
                    if real.as_deref() != Some(holder.as_path()) || !is_file {
                        return Err(Error::corrupt(format!(
                            "the file listing of {} is damaged: the hard link {} names {}, which is not a restored file",
                            t.root.display(),
                            e.path.display(),
                            holder.display()
                        )));
                    }
                    remove_existing(&dest)?;
                    std::fs::hard_link(&holder, &dest).map_err(|err| {
                        Error::io(format!("creating the hard link {}", dest.display()), err)
                    })?;
                    report.hardlinks += 1;
                }
            }
        }
        while let Some(d) = seen.pop() {
            if let Some(entry) = &d.entry {
                set_meta(&d.dest, entry, owners)?;
            }
        }
        // The whole tree read: its data must end where its listing does.
        if paths.is_empty()
            && (data.stream.try_next().await?.is_some_and(|b| !b.is_empty())
                || !data.buf.is_empty())
        {
            return Err(Error::corrupt(format!(
                "the file data of {} holds more than its listing names",
                t.root.display()
            )));
        }
    }
    Ok(())
}

/// Files up to this size are gathered in memory and written, moved into place and
/// given their metadata in one blocking call.
const SMALL_FILE: u64 = 1024 * 1024;

/// Creates a file owner-only (its stored mode comes last): `create_new` in place, or
/// a fresh file to rename over an existing one.
fn create_private(path: &Path, new: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if new {
        o.create_new(true);
    } else {
        o.create(true).truncate(true);
    }
    o.open(path)
}

/// Writes one file, checks its digest and sets its metadata. Without overwriting it
/// is created in place (create-new: the first pass saw nothing there); when
/// overwriting, beside it and renamed over. A failure removes what was written.
async fn write_file(
    data: &mut Data,
    e: &FileEntry,
    abs: &Path,
    dest: &Path,
    overwrite: bool,
    owners: &mut Owners,
) -> Result<()> {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.dbops-{:08x}", rand::random::<u32>()));
    let target = if overwrite { tmp } else { dest.to_path_buf() };
    let mismatch = || {
        Error::corrupt(format!(
            "{} does not match its stored digest: the backup is damaged",
            abs.display()
        ))
        .with_context("file", abs.display())
    };
    if e.size <= SMALL_FILE {
        let mut content = BytesMut::with_capacity(e.size as usize);
        while (content.len() as u64) < e.size {
            let part = data
                .take(e.size - content.len() as u64)
                .await
                .map_err(|err| err.with_context("file", abs.display()))?;
            content.extend_from_slice(&part);
        }
        if e.digest.as_deref() != Some(blake3::hash(&content).to_hex().as_str()) {
            return Err(mismatch());
        }
        let (entry, dest) = (e.clone(), dest.to_path_buf());
        let done = tokio::task::spawn_blocking(move || {
            let mut created = false;
            let written = create_private(&target, !overwrite)
                .and_then(|mut f| {
                    created = true;
                    std::io::Write::write_all(&mut f, &content)
                })
                .and_then(|()| {
                    if overwrite {
                        std::fs::rename(&target, &dest)
                    } else {
                        Ok(())
                    }
                });
            if let Err(err) = written {
                if created {
                    let _ = std::fs::remove_file(&target);
                }
                return Err(Error::io(format!("writing {}", dest.display()), err));
            }
            let mut owners = Owners::default();
            set_meta(&dest, &entry, &mut owners)?;
            Ok(owners)
        })
        .await
        .map_err(|err| Error::internal(format!("file task failed: {err}")))??;
        owners.kept += done.kept;
        owners.setid_dropped += done.setid_dropped;
        return Ok(());
    }
    let mut created = false;
    let result = async {
        let file = {
            let target = target.clone();
            tokio::task::spawn_blocking(move || create_private(&target, !overwrite))
                .await
                .map_err(|err| Error::internal(format!("file task failed: {err}")))?
                .map_err(|err| Error::io(format!("creating {}", dest.display()), err))?
        };
        created = true;
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = blake3::Hasher::new();
        let mut left = e.size;
        while left > 0 {
            let part = data
                .take(left)
                .await
                .map_err(|err| err.with_context("file", abs.display()))?;
            left -= part.len() as u64;
            hasher.update(&part);
            file.write_all(&part)
                .await
                .map_err(|err| Error::io(format!("writing {}", dest.display()), err))?;
        }
        file.flush()
            .await
            .map_err(|err| Error::io(format!("writing {}", dest.display()), err))?;
        drop(file);
        if e.digest.as_deref() != Some(hasher.finalize().to_hex().as_str()) {
            return Err(mismatch());
        }
        if overwrite {
            tokio::fs::rename(&target, dest)
                .await
                .map_err(|err| Error::io(format!("moving {} into place", dest.display()), err))?;
        }
        Ok(())
    }
    .await;
    if result.is_err() && created {
        let _ = tokio::fs::remove_file(&target).await;
    }
    result?;
    set_meta(dest, e, owners)
}

fn remove_existing(dest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "{} is a directory: it is not replaced by a link",
                dest.display()
            ),
        )),
        Ok(_) => std::fs::remove_file(dest)
            .map_err(|err| Error::io(format!("replacing {}", dest.display()), err)),
        Err(_) => Ok(()),
    }
}

/// Owner first, then mode (a change of owner clears set-id bits), then time. Set-id
/// bits are dropped on a file whose owner could not be restored (as tar does).
fn set_meta(dest: &Path, e: &FileEntry, owners: &mut Owners) -> Result<()> {
    let kept_before = owners.kept;
    set_owner(dest, e, owners)?;
    let mut mode = e.mode;
    if owners.kept > kept_before && mode & 0o6000 != 0 {
        mode &= !0o6000;
        owners.setid_dropped += 1;
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
        .map_err(|err| Error::io(format!("setting the mode of {}", dest.display()), err))?;
    set_mtime(dest, e)
}

fn set_owner(dest: &Path, e: &FileEntry, owners: &mut Owners) -> Result<()> {
    let m = std::fs::symlink_metadata(dest)
        .map_err(|err| Error::io(format!("reading {}", dest.display()), err))?;
    if m.uid() == e.uid && m.gid() == e.gid {
        return Ok(());
    }
    match std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid)) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            owners.kept += 1;
            Ok(())
        }
        Err(err) => Err(Error::io(
            format!("setting the owner of {}", dest.display()),
            err,
        )),
    }
}

fn set_mtime(dest: &Path, e: &FileEntry) -> Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(e.mtime, i64::from(e.mtime_ns));
    utimensat(
        nix::fcntl::AT_FDCWD,
        dest,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|err| {
        Error::io(
            format!("setting the time of {}", dest.display()),
            std::io::Error::from(err),
        )
    })
}

/// The files of `tree` whose content overlaps the byte ranges `ranges` of its data
/// stream (absolute original paths, in listing order).
pub(super) async fn files_at(
    source: &dyn StreamSource,
    tree: &FileTree,
    ranges: &[(u64, u64)],
) -> Result<Vec<PathBuf>> {
    let mut lines = Lines::new(source.open(&tree.list_stream()).await?);
    let mut offset = 0u64;
    let mut out = Vec::new();
    while let Some(e) = lines.next_entry().await? {
        if e.kind != EntryKind::File || e.size == 0 {
            continue;
        }
        let (start, end) = (offset, offset + e.size);
        offset = end;
        if ranges.iter().any(|&(a, b)| a < end && start < b) {
            out.push(tree.root.join(&e.path));
        }
    }
    Ok(out)
}

/// Reads the entries of one tree, in listing order.
pub(super) async fn entries(
    source: &dyn StreamSource,
    tree: &FileTree,
    mut each: impl FnMut(FileEntry) -> Result<()>,
) -> Result<()> {
    let mut lines = Lines::new(source.open(&tree.list_stream()).await?);
    while let Some(e) = lines.next_entry().await? {
        each(e)?;
    }
    Ok(())
}

impl super::Repository {
    /// Backs up file trees alone: a backup of engine `files` whose group is this host
    /// and these roots (for a database and its files in one backup, see
    /// [`super::BackupOptions::with_files`]).
    ///
    /// # Errors
    /// Storage errors, [`ErrorKind::Locked`] when a prune holds the repository, an
    /// unreadable root. On any error no manifest is written.
    pub async fn backup_files(
        &self,
        trees: &FileTrees,
        options: &super::BackupOptions,
    ) -> Result<super::Manifest> {
        let started = chrono::Utc::now();
        self.under_backup_lock(async |lock| {
            let progress = options.progress.clone().or_else(|| self.progress.clone());
            let ingested = self
                .ingest(progress, lock, |sink| async move {
                    trees.dump(&sink).await?;
                    Ok(crate::engine::DumpReport::default())
                })
                .await
                .map_err(|e| e.during("backup of files"))?;
            let host = super::host_name();
            let roots: Vec<String> = trees
                .roots()
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            let manifest = super::Manifest {
                engine: FILES_ENGINE.to_owned(),
                database: roots.join(" "),
                source: format!("file://{host}/"),
                server_id: Some(format!("host:{host}")),
                ..Self::new_manifest(started, options, ingested, true)
            };
            self.record_backup(&manifest, lock).await?;
            Ok(manifest)
        })
        .await
    }

    /// Restores the file trees of a backup (see [`FileRestoreOptions`]). Every byte is
    /// checked against its chunk id and every file against its digest on the way.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the backup holds no files or a chosen path is not in
    /// it; [`ErrorKind::AlreadyExists`] (before anything is written) when files exist
    /// and overwriting is off; [`ErrorKind::Corrupt`] naming the file for damage; local
    /// I/O errors.
    pub async fn restore_files(
        &self,
        manifest: &super::Manifest,
        options: &FileRestoreOptions,
    ) -> Result<FileRestoreReport> {
        let trees = trees_of(manifest)?;
        let source = self.source(manifest, false).await?;
        restore(&source, &trees, options)
            .await
            .map_err(|e| e.during(format!("restore of the files of backup {}", manifest.id)))
    }

    /// What [`super::Repository::restore_files`] would refuse (no files in the backup, a
    /// chosen path not in it, files that exist), found before anything is written: a
    /// restore of a database and its files checks the files first.
    ///
    /// # Errors
    /// As [`super::Repository::restore_files`]'s refusals.
    pub async fn check_restore_files(
        &self,
        manifest: &super::Manifest,
        options: &FileRestoreOptions,
    ) -> Result<()> {
        let trees = trees_of(manifest)?;
        let source = self.source(manifest, false).await?;
        check(&source, &trees, options).await
    }

    /// Calls `each` with every entry of one stored tree, in listing order (depth first).
    ///
    /// # Errors
    /// Storage errors; damaged data; `each`'s errors.
    pub async fn file_entries(
        &self,
        manifest: &super::Manifest,
        tree: &FileTree,
        each: impl FnMut(FileEntry) -> Result<()>,
    ) -> Result<()> {
        let source = self.source(manifest, false).await?;
        entries(&source, tree, each).await
    }

    /// The files whose content lies in a damaged chunk of a tree's data stream, for a
    /// verification that names them. Empty when the stream is not a tree's data.
    pub(super) async fn files_in_chunk(
        &self,
        source: &super::RepoSource,
        stream: &str,
        chunk: &str,
    ) -> Result<Vec<PathBuf>> {
        let manifest = source.manifest();
        let Some(tree) = trees_of(manifest)?
            .into_iter()
            .find(|t| t.data_stream() == stream)
        else {
            return Ok(Vec::new());
        };
        let record = manifest
            .stream(stream)
            .ok_or_else(|| Error::internal(format!("stream {stream} vanished")))?;
        let mut ranges = Vec::new();
        let mut offset = 0u64;
        for list in &record.lists {
            let blob = source.read_blob(*list).await?;
            for (id, len) in super::pack::decode_list(&blob)? {
                if id.hex() == chunk {
                    ranges.push((offset, offset + u64::from(len)));
                }
                offset += u64::from(len);
            }
        }
        files_at(source, &tree, &ranges).await
    }
}

/// The engine name of a backup that holds only file trees.
pub const FILES_ENGINE: &str = "files";

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::parse(p).expect("pattern")
    }

    #[test]
    fn globs_match_names_and_paths_as_documented() {
        assert!(glob("*.tmp").matches(b"a.tmp"));
        assert!(!glob("*.tmp").matches(b"a.tmpx"));
        assert!(!glob("*.tmp").anchored);
        assert!(glob("cache/**").anchored);
        assert!(glob("/cache").anchored && glob("/cache").matches(b"cache"));
        assert!(!glob("/cache").matches(b"a/cache"));
        assert!(!glob("cache/").anchored);
        assert!(glob("cache/**").matches(b"cache/a/b"));
        assert!(!glob("cache/*").matches(b"cache/a/b"));
        assert!(glob("cache/*").matches(b"cache/a"));
        assert!(glob("**/x.log").matches(b"x.log"));
        assert!(glob("**/x.log").matches(b"a/b/x.log"));
        assert!(glob("file?.[ch]").matches(b"file1.c"));
        assert!(!glob("file?.[!ch]").matches(b"file1.c"));
        assert!(glob("[a-c]x").matches(b"bx"));
        assert!(glob("a\\*").matches(b"a*"));
        assert!(!glob("a\\*").matches(b"ab"));
        assert!(Glob::parse("[ab").is_err());
        assert!(Glob::parse("/").is_err());
    }

    #[test]
    fn listing_lines_keep_odd_names() {
        let e = FileEntry {
            path: PathBuf::from(OsString::from_vec(b"a\nb \xff\xfe.txt".to_vec())),
            kind: EntryKind::Symlink,
            mode: 0o4755,
            uid: 1,
            gid: 2,
            mtime: -5,
            mtime_ns: 7,
            size: 0,
            digest: None,
            target: Some(PathBuf::from("ünï/cödé\n")),
            link: None,
        };
        let line = e.to_line().expect("line");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(
            FileEntry::from_line(&line[..line.len() - 1]).expect("parse"),
            e
        );
    }

    /// A backup's streams in memory, to feed crafted listings to a restore.
    struct Mem(HashMap<String, Vec<u8>>);

    #[async_trait::async_trait]
    impl StreamSource for Mem {
        fn streams(&self) -> &[StreamSpec] {
            &[]
        }

        async fn open(&self, name: &str) -> Result<ByteStream> {
            let b = Bytes::from(self.0.get(name).cloned().unwrap_or_default());
            Ok(Box::pin(futures::stream::iter(vec![Ok(b)])))
        }
    }

    fn entry(path: &str, kind: EntryKind) -> FileEntry {
        FileEntry {
            path: PathBuf::from(path),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_ns: 0,
            size: 0,
            digest: None,
            target: None,
            link: None,
        }
    }

    fn file(path: &str, content: &[u8]) -> FileEntry {
        let mut e = entry(path, EntryKind::File);
        e.mode = 0o644;
        e.size = content.len() as u64;
        e.digest = Some(blake3::hash(content).to_hex().to_string());
        e
    }

    async fn restore_crafted(
        lines: &[Vec<u8>],
        data: &[u8],
        to: &Path,
    ) -> Result<FileRestoreReport> {
        let mut streams = HashMap::new();
        streams.insert(list_stream(0), lines.concat());
        streams.insert(data_stream(0), data.to_vec());
        let tree = FileTree {
            number: 0,
            root: PathBuf::from("/srv/app"),
            entries: lines.len() as u64,
            bytes: data.len() as u64,
        };
        restore(&Mem(streams), &[tree], &FileRestoreOptions::new(to)).await
    }

    #[tokio::test]
    async fn a_crafted_listing_never_writes_outside_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let to = dir.path().join("to");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("dir");
        let root = entry("", EntryKind::Dir).to_line().expect("line");
        let raw = |json: &str| format!("{json}\n").into_bytes();
        // `..`, an absolute path, a hard link out of the tree: refused as they are read.
        for bad in [
            raw(
                r#"{"path":"../../../outside/x","kind":"file","mode":420,"uid":0,"gid":0,"mtime":0,"size":1,"digest":"00"}"#,
            ),
            raw(r#"{"path":"/etc/x","kind":"dir","mode":493,"uid":0,"gid":0,"mtime":0}"#),
            raw(
                r#"{"path":"l","kind":"hardlink","mode":420,"uid":0,"gid":0,"mtime":0,"link":"../../../outside/x"}"#,
            ),
            raw(r#"{"path":"s","kind":"symlink","mode":420,"uid":0,"gid":0,"mtime":0,"size":3}"#),
        ] {
            let e = restore_crafted(&[root.clone(), bad], b"x", &to)
                .await
                .expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        }
        // A symlink to a directory outside, then a file "below" it: the file is not
        // written through the link.
        let mut link = entry("x", EntryKind::Symlink);
        link.target = Some(outside.clone());
        let lines = [
            root.clone(),
            link.to_line().expect("line"),
            file("x/evil", b"evil").to_line().expect("line"),
        ];
        let e = restore_crafted(&lines, b"evil", &to)
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        // A hard link naming the symlink's path: not followed either.
        let mut hard = entry("h", EntryKind::Hardlink);
        hard.link = Some(PathBuf::from("x"));
        let to2 = dir.path().join("to2");
        let lines = [
            root.clone(),
            link.to_line().expect("line"),
            hard.to_line().expect("line"),
        ];
        let e = restore_crafted(&lines, b"", &to2)
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0);
        // The well-formed tree restores.
        let to3 = dir.path().join("to3");
        let lines = [root, file("ok", b"fine").to_line().expect("line")];
        let r = restore_crafted(&lines, b"fine", &to3)
            .await
            .expect("restored");
        assert_eq!(r.files, 1);
        assert_eq!(
            std::fs::read(to3.join("srv/app/ok")).expect("read"),
            b"fine"
        );
    }

    #[test]
    fn destinations_keep_the_original_absolute_path() {
        assert_eq!(
            destination(Path::new("/r"), Path::new("/srv/app"), Path::new("a/b")),
            PathBuf::from("/r/srv/app/a/b")
        );
        assert_eq!(
            destination(Path::new("/r"), Path::new("/srv/app"), Path::new("")),
            PathBuf::from("/r/srv/app")
        );
    }
}
