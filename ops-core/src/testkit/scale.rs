//! Synthetic repository history, for measuring what grows with a repository.
//!
//! [`add_synthetic_index`] writes index files (and small placeholder packs) as years of
//! backups would have left them, without moving the data: benchmarks use it to check
//! that backups, restores and listings cost the same in a repository of ten million
//! chunks as in an empty one. The placeholder packs hold no readable blob and no
//! manifest names them; `prune` removes them.

use bytes::Bytes;

use crate::Result;
use crate::repo::{BlobKind, ChunkId, IndexBlob, IndexFile, IndexPack, Repository};

/// Adds `chunks` index entries to `repo`, `per_pack` to a pack, 16 packs to an index
/// file, each pack stored as a placeholder object of a few bytes. Ids are derived
/// from `seed`, so two calls with different seeds add different chunks.
///
/// # Errors
/// Storage errors.
pub async fn add_synthetic_index(
    repo: &Repository,
    chunks: u64,
    per_pack: u32,
    seed: u64,
) -> Result<()> {
    let per_pack = u64::from(per_pack.max(1));
    let packs = chunks.div_ceil(per_pack);
    let mut batch: Vec<IndexPack> = Vec::new();
    let mut made = 0u64;
    for p in 0..packs {
        let pack_id = blake3::hash(format!("synthetic pack {seed} {p}").as_bytes())
            .to_hex()
            .to_string();
        let n = per_pack.min(chunks - made);
        let mut blobs = Vec::with_capacity(n as usize);
        for i in 0..n {
            let id = blake3::hash(format!("synthetic chunk {seed} {}", made + i).as_bytes());
            blobs.push(IndexBlob {
                id: ChunkId(*id.as_bytes()),
                kind: BlobKind::Data,
                offset: (i * 3000) as u32,
                length: 3000,
                raw: 8192,
            });
        }
        made += n;
        repo.target()
            .put(
                &format!("packs/{}/{pack_id}", &pack_id[..2]),
                Bytes::from_static(b"synthetic pack"),
            )
            .await?;
        batch.push(IndexPack {
            id: pack_id,
            size: n * 3000,
            blobs,
        });
        if batch.len() == 16 || made == chunks {
            repo.write_index_file(&IndexFile {
                version: crate::repo::FORMAT_VERSION,
                packs: std::mem::take(&mut batch),
            })
            .await?;
        }
    }
    Ok(())
}
