//! Pack files and the index that locates blobs in them.
//!
//! Small chunks de-duplicate well but one object per few-KiB chunk is not acceptable on
//! object storage, so blobs are packed (restic's model): a pack is the concatenation of
//! sealed blobs, then a sealed header listing them, then the header's length as a
//! little-endian u32. The pack is named by the BLAKE3 hash of its bytes. Index files
//! (`index/…`) map every blob id to its pack, offset and lengths; the local
//! [`super::index::Index`] is the union of all of them. The header makes a lost index rebuildable.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

use super::crypto::Keys;
use super::format::ChunkId;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    /// A chunk of stream data.
    Data,
    /// A list of chunk references (part of a stream's chunk list).
    List,
}

impl BlobKind {
    fn byte(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::List => 1,
        }
    }

    #[allow(dead_code)] // read by parse_pack
    fn from_byte(b: u8) -> Result<Self> {
        match b {
            0 => Ok(Self::Data),
            1 => Ok(Self::List),
            _ => Err(Error::corrupt(format!(
                "unknown blob kind {b} in pack header"
            ))),
        }
    }
}

/// One blob as an index file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlob {
    /// Blob id.
    pub id: ChunkId,
    /// Data or list.
    pub kind: BlobKind,
    /// Offset in the pack.
    pub offset: u32,
    /// Stored (sealed) length.
    pub length: u32,
    /// Plain length.
    pub raw: u32,
}

/// One pack as an index file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// Pack id (hex BLAKE3 of its bytes).
    pub id: String,
    /// Pack size in bytes.
    pub size: u64,
    /// Its blobs.
    pub blobs: Vec<IndexBlob>,
}

/// An index file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Format version.
    pub version: u32,
    /// Packs written.
    pub packs: Vec<IndexPack>,
}

const HEADER_AAD: &[u8] = b"dbops pack header v1";
const HEADER_ENTRY: usize = 1 + 32 + 4 + 4;

/// A pack being filled.
#[derive(Debug, Default)]
pub(crate) struct PackBuilder {
    data: Vec<u8>,
    blobs: Vec<IndexBlob>,
}

/// A finished pack, ready to upload.
#[derive(Debug)]
pub(crate) struct SealedPack {
    pub id: String,
    pub bytes: Bytes,
    pub blobs: Vec<IndexBlob>,
}

impl PackBuilder {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            data: Vec::with_capacity(capacity),
            blobs: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, id: ChunkId, kind: BlobKind, raw: u32, sealed: &[u8]) {
        self.blobs.push(IndexBlob {
            id,
            kind,
            offset: self.data.len() as u32,
            length: sealed.len() as u32,
            raw,
        });
        self.data.extend_from_slice(sealed);
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub(crate) fn seal(self, keys: &Keys) -> Result<SealedPack> {
        let mut header = Vec::with_capacity(self.blobs.len() * HEADER_ENTRY);
        for b in &self.blobs {
            header.push(b.kind.byte());
            header.extend_from_slice(&b.id.0);
            header.extend_from_slice(&b.length.to_le_bytes());
            header.extend_from_slice(&b.raw.to_le_bytes());
        }
        let sealed = keys.seal(HEADER_AAD, &header)?;
        let mut data = self.data;
        data.extend_from_slice(&sealed);
        data.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let id = blake3::hash(&data).to_hex().to_string();
        Ok(SealedPack {
            id,
            bytes: Bytes::from(data),
            blobs: self.blobs,
        })
    }
}

// Used by prune and index repair (and tests until they land).
#[allow(dead_code)]
/// Reads the blob list from a whole pack, checking its name and header.
///
/// # Errors
/// [`crate::ErrorKind::Corrupt`] when the bytes do not hash to `id` or the header is
/// damaged.
pub(crate) fn parse_pack(keys: &Keys, id: &str, bytes: &[u8]) -> Result<Vec<IndexBlob>> {
    let damaged =
        |why: &str| Error::corrupt(format!("pack {id} is damaged: {why}")).with_context("pack", id);
    if blake3::hash(bytes).to_hex().as_str() != id {
        return Err(damaged("its content does not match its name"));
    }
    let n = bytes.len();
    if n < 4 {
        return Err(damaged("too short"));
    }
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(&bytes[n - 4..]);
    let hlen = u32::from_le_bytes(len4) as usize;
    if hlen + 4 > n {
        return Err(damaged("header length out of range"));
    }
    let header = keys
        .open(HEADER_AAD, &bytes[n - 4 - hlen..n - 4])
        .map_err(|_| damaged("header failed authentication"))?;
    if header.len() % HEADER_ENTRY != 0 {
        return Err(damaged("header has a partial entry"));
    }
    let mut offset = 0u32;
    let mut out = Vec::with_capacity(header.len() / HEADER_ENTRY);
    for e in header.chunks_exact(HEADER_ENTRY) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[1..33]);
        let mut l = [0u8; 4];
        l.copy_from_slice(&e[33..37]);
        let length = u32::from_le_bytes(l);
        l.copy_from_slice(&e[37..41]);
        let raw = u32::from_le_bytes(l);
        out.push(IndexBlob {
            id: ChunkId(id),
            kind: BlobKind::from_byte(e[0])?,
            offset,
            length,
            raw,
        });
        offset = offset
            .checked_add(length)
            .filter(|end| (*end as usize) <= n - 4 - hlen)
            .ok_or_else(|| damaged("blob extends past the header"))?;
    }
    Ok(out)
}

/// Encodes a chunk list blob: per reference, the 32-byte id and the plain length.
pub(crate) fn encode_list(refs: &[(ChunkId, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * 36);
    for (id, len) in refs {
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
}

/// Decodes a chunk list blob.
///
/// # Errors
/// [`crate::ErrorKind::Corrupt`] for a partial entry.
pub(crate) fn decode_list(bytes: &[u8]) -> Result<Vec<(ChunkId, u32)>> {
    if !bytes.len().is_multiple_of(36) {
        return Err(Error::corrupt("chunk list has a partial entry"));
    }
    Ok(bytes
        .chunks_exact(36)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            let mut l = [0u8; 4];
            l.copy_from_slice(&e[32..]);
            (ChunkId(id), u32::from_le_bytes(l))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let (keys, _) = Keys::generate(true);
        let mut b = PackBuilder::with_capacity(1024);
        let a = keys.chunk_id(b"a");
        let c = keys.chunk_id(b"c");
        b.add(a, BlobKind::Data, 1, b"xxxx");
        b.add(c, BlobKind::List, 2, b"yyyyyy");
        let sealed = b.seal(&keys).expect("seal");
        let blobs = parse_pack(&keys, &sealed.id, &sealed.bytes).expect("parse");
        assert_eq!(blobs, sealed.blobs);
        let mut bad = sealed.bytes.to_vec();
        bad[0] ^= 1;
        assert!(parse_pack(&keys, &sealed.id, &bad).is_err());
    }

    #[test]
    fn list_round_trip() {
        let refs = vec![(ChunkId([1; 32]), 5), (ChunkId([2; 32]), 70_000)];
        assert_eq!(decode_list(&encode_list(&refs)).expect("decode"), refs);
        assert!(decode_list(&[0u8; 35]).is_err());
    }
}
