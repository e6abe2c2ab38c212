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
        let trimmed = text.trim_start_matches('/').trim_end_matches('/');
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
            anchored: trimmed.contains('/'),
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

/// A directory whose metadata is set once everything below it is written.
struct OpenDir {
    rel: PathBuf,
    dest: PathBuf,
    entry: FileEntry,
}

/// Restores the trees of `manifest` read through `source`.
pub(super) async fn restore(
    source: &dyn StreamSource,
    trees: &[FileTree],
    options: &FileRestoreOptions,
) -> Result<FileRestoreReport> {
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
    // First pass over the listings: nothing is written when anything would be replaced,
    // and a chosen hard link whose first name is not chosen gets the content instead
    // (tree number and first name → the chosen link that holds the content).
    let mut promoted: HashMap<(usize, PathBuf), PathBuf> = HashMap::new();
    if !options.overwrite || !paths.is_empty() {
        let mut conflicts = Vec::new();
        let mut count = 0u64;
        for (n, t) in trees.iter().enumerate() {
            let mut lines = Lines::new(source.open(&t.list_stream()).await?);
            while let Some(e) = lines.next_entry().await? {
                let abs = if e.path.as_os_str().is_empty() {
                    t.root.clone()
                } else {
                    t.root.join(&e.path)
                };
                if !selected(&paths, &abs) {
                    continue;
                }
                if let (EntryKind::Hardlink, Some(first)) = (e.kind, &e.link)
                    && !selected(&paths, &t.root.join(first))
                {
                    promoted
                        .entry((n, first.clone()))
                        .or_insert_with(|| e.path.clone());
                }
                if options.overwrite {
                    continue;
                }
                let dest = destination(&to, &t.root, &e.path);
                if let Ok(m) = std::fs::symlink_metadata(&dest)
                    && !(e.kind == EntryKind::Dir && m.is_dir())
                {
                    count += 1;
                    if conflicts.len() < CONFLICTS_NAMED {
                        conflicts.push(dest.display().to_string());
                    }
                }
            }
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
    }
    let mut report = FileRestoreReport {
        to: to.clone(),
        ..FileRestoreReport::default()
    };
    let mut owners_kept = 0u64;
    for (n, t) in trees.iter().enumerate() {
        let mut lines = Lines::new(source.open(&t.list_stream()).await?);
        let mut data = Data {
            stream: source.open(&t.data_stream()).await?,
            buf: Bytes::new(),
            offset: 0,
            owed: 0,
        };
        let mut open: Vec<OpenDir> = Vec::new();
        let mut made: Option<PathBuf> = None;
        while let Some(e) = lines.next_entry().await? {
            while open
                .last()
                .is_some_and(|d| !e.path.starts_with(&d.rel) || e.path == d.rel)
            {
                let d = open.pop().expect("checked");
                finish_dir(&d, &mut owners_kept)?;
            }
            let abs = if e.path.as_os_str().is_empty() {
                t.root.clone()
            } else {
                t.root.join(&e.path)
            };
            let mut dest = destination(&to, &t.root, &e.path);
            if !selected(&paths, &abs) {
                match promoted.get(&(n, e.path.clone())) {
                    // Not chosen, but a chosen hard link to it is: it gets the content.
                    Some(link) if e.kind == EntryKind::File => {
                        dest = destination(&to, &t.root, link);
                    }
                    _ => {
                        data.skip(e.size);
                        continue;
                    }
                }
            }
            if let Some(parent) = dest.parent() {
                // Entries come depth first: most share the parent made last.
                if made.as_deref() != Some(parent) {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|err| Error::io(format!("creating {}", parent.display()), err))?;
                    made = Some(parent.to_path_buf());
                }
            }
            match e.kind {
                EntryKind::Dir => {
                    match tokio::fs::create_dir(&dest).await {
                        Ok(()) => {}
                        Err(err)
                            if err.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {
                        }
                        Err(err) => {
                            return Err(Error::io(format!("creating {}", dest.display()), err));
                        }
                    }
                    // Writable until its content is in; the stored mode comes last.
                    report.dirs += 1;
                    open.push(OpenDir {
                        rel: e.path.clone(),
                        dest,
                        entry: e,
                    });
                }
                EntryKind::File => {
                    owners_kept +=
                        write_file(&mut data, &e, &abs, &dest, options.overwrite).await?;
                    report.files += 1;
                    report.bytes += e.size;
                }
                EntryKind::Symlink => {
                    let target = e.target.clone().unwrap_or_default();
                    remove_existing(&dest)?;
                    std::os::unix::fs::symlink(&target, &dest).map_err(|err| {
                        Error::io(format!("creating the link {}", dest.display()), err)
                    })?;
                    set_owner(&dest, &e, &mut owners_kept)?;
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
                    remove_existing(&dest)?;
                    std::fs::hard_link(destination(&to, &t.root, &holder), &dest).map_err(
                        |err| Error::io(format!("creating the hard link {}", dest.display()), err),
                    )?;
                    report.hardlinks += 1;
                }
            }
        }
        while let Some(d) = open.pop() {
            finish_dir(&d, &mut owners_kept)?;
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
    if owners_kept > 0 {
        report.warnings.push(format!(
            "{owners_kept} entries keep the restoring user as owner: only root can give files to other users"
        ));
    }
    Ok(report)
}

/// Files up to this size are gathered in memory and written, moved into place and
/// given their metadata in one blocking call.
const SMALL_FILE: u64 = 1024 * 1024;

/// Writes one file next to `dest`, checks its digest, moves it into place and sets
/// its metadata; returns 1 when its owner could not be set.
async fn write_file(
    data: &mut Data,
    e: &FileEntry,
    abs: &Path,
    dest: &Path,
    overwrite: bool,
) -> Result<u64> {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.dbops-{:08x}", rand::random::<u32>()));
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
        return tokio::task::spawn_blocking(move || {
            // Without overwriting, the first pass saw no file there: write in place
            // (create-new, so a file that appeared since is not replaced).
            let written = if overwrite {
                std::fs::write(&tmp, &content).and_then(|()| std::fs::rename(&tmp, &dest))
            } else {
                std::fs::File::create_new(&dest)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &content))
            };
            if let Err(err) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io(format!("writing {}", dest.display()), err));
            }
            let mut kept = 0;
            set_meta(&dest, &entry, &mut kept)?;
            Ok(kept)
        })
        .await
        .map_err(|err| Error::internal(format!("file task failed: {err}")))?;
    }
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|err| Error::io(format!("creating {}", tmp.display()), err))?;
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
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(|err| Error::io(format!("moving {} into place", dest.display()), err))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result?;
    let mut kept = 0;
    set_meta(dest, e, &mut kept)?;
    Ok(kept)
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

fn finish_dir(d: &OpenDir, owners_kept: &mut u64) -> Result<()> {
    set_meta(&d.dest, &d.entry, owners_kept)
}

fn set_meta(dest: &Path, e: &FileEntry, owners_kept: &mut u64) -> Result<()> {
    set_owner(dest, e, owners_kept)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(e.mode))
        .map_err(|err| Error::io(format!("setting the mode of {}", dest.display()), err))?;
    set_mtime(dest, e)
}

fn set_owner(dest: &Path, e: &FileEntry, owners_kept: &mut u64) -> Result<()> {
    let m = std::fs::symlink_metadata(dest)
        .map_err(|err| Error::io(format!("reading {}", dest.display()), err))?;
    if m.uid() == e.uid && m.gid() == e.gid {
        return Ok(());
    }
    match std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid)) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            *owners_kept += 1;
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
        if e.kind != EntryKind::File {
            continue;
        }
        let (start, end) = (offset, offset + e.size);
        offset = end;
        if ranges
            .iter()
            .any(|&(a, b)| a < end.max(start + 1) && start < b)
        {
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
        let lock = self.lock(super::LockKind::Shared, "backup").await?;
        let result = async {
            let progress = options.progress.clone().or_else(|| self.progress.clone());
            let ingested = self
                .ingest(progress, &lock, |sink| async move {
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
                format_version: super::FORMAT_VERSION,
                id: super::format::new_backup_id(started),
                engine: FILES_ENGINE.to_owned(),
                server_version: String::new(),
                database: roots.join(" "),
                source: format!("file://{host}/"),
                server_id: Some(format!("host:{host}")),
                host,
                tool_version: crate::VERSION.to_owned(),
                started,
                finished: chrono::Utc::now(),
                tags: options.tags.clone(),
                snapshot: std::collections::BTreeMap::new(),
                warnings: ingested.warnings,
                stats: ingested.stats,
                streams: ingested.streams,
                filter: Default::default(),
                databases: Vec::new(),
            };
            self.record_manifest(&manifest, &lock)
                .await
                .map_err(|e| e.during("writing the backup's manifest"))?;
            Ok::<_, Error>(manifest)
        }
        .await;
        let released = lock.release().await;
        let manifest = result?;
        if let Err(e) = released {
            tracing::warn!("could not release the repository lock: {e}");
        }
        Ok(manifest)
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
