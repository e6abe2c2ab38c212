//! The repository's on-storage format: object names, the config, the envelope of
//! metadata objects, and blob encoding. `docs/FORMAT.md` describes the same in prose;
//! change both together, and bump [`FORMAT_VERSION`] for anything a reader of the old
//! version would misread.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

use super::crypto::Keys;

/// The repository format version this dbops writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest version of a backup that holds file trees or a whole server: readers
/// of version 1 (dbops before them) refuse it rather than misread it (as one database
/// named `""`, or a database with streams it does not know). Every other manifest is
/// still written as version 1.
pub const MANIFEST_VERSION_TREES: u32 = 2;

/// Magic at the start of every metadata object (manifests, indexes).
const ENVELOPE_MAGIC: &[u8; 6] = b"DBOPS\x01";

/// Object key of the config.
pub(crate) const CONFIG_KEY: &str = "config";
/// Folder of key files.
pub(crate) const KEYS_DIR: &str = "keys/";
/// Folder of pack files.
pub(crate) const PACKS_DIR: &str = "packs/";
/// Folder of index files.
pub(crate) const INDEX_DIR: &str = "index/";
/// Folder of manifests.
pub(crate) const BACKUPS_DIR: &str = "backups/";
/// Folder of locks.
pub(crate) const LOCKS_DIR: &str = "locks/";

/// A 32-byte keyed hash naming a chunk (or a chunk list) by its plain content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hex form.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    ///
    /// # Errors
    /// [`ErrorKind::Corrupt`] when it is not 64 hex digits.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)
            .map_err(|_| Error::corrupt(format!("'{text}' is not a chunk id")))?;
        Ok(Self(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The object key of a pack.
pub(crate) fn pack_key(pack: &str) -> String {
    format!("{PACKS_DIR}{}/{pack}", &pack[..2.min(pack.len())])
}

/// Content-defined chunking parameters (FastCDC 2020, normalisation level 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, bytes.
    pub min: u32,
    /// Average chunk, bytes.
    pub avg: u32,
    /// Largest chunk, bytes.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        // See docs/FORMAT.md, "Chunk size": small chunks de-duplicate randomly updated
        // tables (8 KiB: ~30 % new bytes after churn where 64 KiB gives ~87 %); packs
        // keep the object count low.
        Self {
            min: 2 * 1024,
            avg: 8 * 1024,
            max: 64 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the parameters against FastCDC's limits.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when out of range or not ordered.
    pub fn validate(&self) -> Result<()> {
        if self.min < 64 || self.avg < 256 || self.max < 1024 || self.max > 16 * 1024 * 1024 {
            return Err(Error::invalid(
                "chunk sizes out of range: min >= 64, avg >= 256, 1024 <= max <= 16 MiB",
            ));
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            return Err(Error::invalid("chunk sizes must satisfy min <= avg <= max"));
        }
        Ok(())
    }
}

/// Compression of blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionParams {
    /// Always `zstd` in format version 1.
    pub algorithm: CompressionAlgorithm,
    /// zstd level (1..=19).
    pub level: i32,
}

/// A compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CompressionAlgorithm {
    /// Zstandard.
    Zstd,
}

impl Default for CompressionParams {
    fn default() -> Self {
        // Level 1: on sysbench-like table data at 8 KiB chunks it stores less than
        // level 3 (0.98x vs 1.02x of pg_dump -Fc) and costs 28 % less CPU.
        Self {
            algorithm: CompressionAlgorithm::Zstd,
            level: 1,
        }
    }
}

/// How data is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EncryptionScheme {
    /// XChaCha20-Poly1305 under a master key wrapped by Argon2id-derived keys.
    Xchacha20poly1305,
    /// Nothing is encrypted; chunk ids are still keyed (the key is in the config).
    None,
}

/// The `config` object: what a reader needs to know before reading anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always `dbops-repository`.
    pub format: String,
    /// The format version.
    pub version: u32,
    /// Random repository id.
    pub id: String,
    /// When the repository was created.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Chunking.
    pub chunker: ChunkerParams,
    /// Target size of pack files, bytes.
    pub pack_size: u32,
    /// Compression.
    pub compression: CompressionParams,
    /// Encryption.
    pub encryption: EncryptionScheme,
    /// The chunk-id key, hex, for unencrypted repositories only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_key: Option<String>,
}

impl RepoConfig {
    /// Parses and checks a stored config.
    ///
    /// # Errors
    /// [`ErrorKind::UnsupportedFormat`] for another format or an unknown version;
    /// [`ErrorKind::Corrupt`] when unparseable.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("the repository config is not valid JSON: {e}")))?;
        if value.get("format").and_then(|v| v.as_str()) != Some("dbops-repository") {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                "the object 'config' is not a dbops repository config",
            ));
        }
        let version = value.get("version").and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(FORMAT_VERSION)) {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                format!(
                    "repository format version {} is not supported by dbops {} (it reads version {FORMAT_VERSION}); use a dbops release that supports it",
                    version.map_or_else(|| "?".to_string(), |v| v.to_string()),
                    crate::VERSION
                ),
            ));
        }
        let config: Self = serde_json::from_value(value)
            .map_err(|e| Error::corrupt(format!("the repository config is malformed: {e}")))?;
        config.chunker.validate()?;
        Ok(config)
    }
}

/// Wraps a metadata document: magic, then (compressed, sealed) JSON.
pub(crate) fn seal_document<T: Serialize>(keys: &Keys, aad: &[u8], doc: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(doc).map_err(|e| Error::internal(format!("serialize: {e}")))?;
    let compressed = zstd::bulk::compress(&json, 3)
        .map_err(|e| Error::internal(format!("compress metadata: {e}")))?;
    let sealed = keys.seal(aad, &compressed)?;
    let mut out = Vec::with_capacity(ENVELOPE_MAGIC.len() + sealed.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what [`seal_document`] wrote.
pub(crate) fn open_document<T: serde::de::DeserializeOwned>(
    keys: &Keys,
    aad: &[u8],
    bytes: &[u8],
    what: &str,
) -> Result<T> {
    let Some(body) = bytes.strip_prefix(ENVELOPE_MAGIC.as_slice()) else {
        if bytes.starts_with(b"DBOPS") {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                format!("{what} was written by a newer dbops format; upgrade dbops"),
            ));
        }
        return Err(Error::corrupt(format!("{what} is not a dbops object")));
    };
    let compressed = keys.open(aad, body).map_err(|e| {
        e.with_message(format!(
            "{what} failed authentication: it is damaged or was written with another key"
        ))
    })?;
    let json = zstd::stream::decode_all(compressed.as_slice())
        .map_err(|e| Error::corrupt(format!("{what} does not decompress: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| Error::corrupt(format!("{what} is malformed: {e}")))
}

/// Blob payload type byte: stored as is.
const BLOB_RAW: u8 = 0;
/// Blob payload type byte: zstd frame.
const BLOB_ZSTD: u8 = 1;

/// Encodes one blob: type byte ‖ (zstd or raw) data, then sealed with its id as
/// associated data, so a blob cannot be swapped for another undetected.
pub(crate) fn encode_blob(
    keys: &Keys,
    compressor: &mut zstd::bulk::Compressor<'static>,
    id: &ChunkId,
    plain: &[u8],
) -> Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(plain.len() / 2 + 64);
    payload.push(BLOB_ZSTD);
    let compressed = compressor
        .compress(plain)
        .map_err(|e| Error::internal(format!("zstd compression failed: {e}")))?;
    if compressed.len() < plain.len() {
        payload.extend_from_slice(&compressed);
    } else {
        payload[0] = BLOB_RAW;
        payload.extend_from_slice(plain);
    }
    keys.seal(&id.0, &payload)
}

thread_local! {
    // One decompression context per thread: creating one per chunk was a quarter of a
    // restore's CPU. `None` only if zstd could not allocate one.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Decodes and checks one blob: opens it, decompresses it, and re-hashes the plain
/// bytes against `id`.
///
/// # Errors
/// [`ErrorKind::Corrupt`] naming the chunk when any step fails.
pub(crate) fn decode_blob(
    keys: &Keys,
    id: &ChunkId,
    raw_len: u32,
    stored: &[u8],
) -> Result<Vec<u8>> {
    let damaged = |why: &str| {
        Error::corrupt(format!("chunk {id} is damaged: {why}")).with_context("chunk", id.hex())
    };
    let payload = keys
        .open(&id.0, stored)
        .map_err(|_| damaged("authentication failed"))?;
    let (kind, body) = payload.split_first().ok_or_else(|| damaged("empty"))?;
    let plain = match *kind {
        BLOB_RAW => body.to_vec(),
        BLOB_ZSTD => DECOMPRESSOR
            .with(|d| match d.borrow_mut().as_mut() {
                Some(d) => d.decompress(body, raw_len as usize),
                None => zstd::bulk::decompress(body, raw_len as usize),
            })
            .map_err(|_| damaged("does not decompress"))?,
        _ => return Err(damaged("unknown payload type")),
    };
    if plain.len() != raw_len as usize {
        return Err(damaged("wrong length"));
    }
    if keys.chunk_id(&plain) != *id {
        return Err(damaged("content does not match its id"));
    }
    Ok(plain)
}

/// A time-sortable backup id: `20261121T083400.123Z-3fa9c1` (milliseconds, so that
/// backups taken one after the other sort in order; the suffix only separates
/// backups started in the same millisecond).
pub(crate) fn new_backup_id(at: chrono::DateTime<chrono::Utc>) -> String {
    use rand::RngCore as _;
    let mut r = [0u8; 3];
    rand::rngs::OsRng.fill_bytes(&mut r);
    format!("{}-{}", at.format("%Y%m%dT%H%M%S%.3fZ"), hex::encode(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_and_damage() {
        let (keys, _) = Keys::generate(true);
        let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
        let plain = b"row\trow\trow\n".repeat(100);
        let id = keys.chunk_id(&plain);
        let enc = encode_blob(&keys, &mut c, &id, &plain).expect("encode");
        assert!(enc.len() < plain.len());
        let dec = decode_blob(&keys, &id, plain.len() as u32, &enc).expect("decode");
        assert_eq!(dec, plain);
        let mut bad = enc.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        let err = decode_blob(&keys, &id, plain.len() as u32, &bad).expect_err("must fail");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert_eq!(err.context_value("chunk"), Some(id.hex().as_str()));
    }

    #[test]
    fn unencrypted_blobs_are_still_checked() {
        let keys = Keys::plain([7u8; 32]);
        let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
        let plain = vec![1u8, 2, 3];
        let id = keys.chunk_id(&plain);
        let mut enc = encode_blob(&keys, &mut c, &id, &plain).expect("encode");
        let last = enc.len() - 1;
        enc[last] ^= 1;
        assert!(decode_blob(&keys, &id, 3, &enc).is_err());
    }

    #[test]
    fn config_refuses_unknown_version() {
        let text = br#"{"format":"dbops-repository","version":99}"#;
        assert_eq!(
            RepoConfig::parse(text).expect_err("must fail").kind(),
            ErrorKind::UnsupportedFormat
        );
    }

    #[test]
    fn backup_ids_sort_by_time() {
        let a = new_backup_id(chrono::DateTime::from_timestamp(1_000_000_000, 0).expect("ts"));
        let b =
            new_backup_id(chrono::DateTime::from_timestamp(1_000_000_000, 1_000_000).expect("ts"));
        assert!(a < b, "{a} {b}");
    }
}
