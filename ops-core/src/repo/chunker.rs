//! Content-defined chunking of one stream, fed piece by piece.
//!
//! FastCDC (2020) decides a cut only from the bytes since the previous cut, at most
//! `max` of them. So the chunker buffers until it holds `max` bytes, cuts every chunk
//! whose end lies strictly inside the buffer (those cuts cannot move when more data
//! arrives), and keeps the rest. Each byte is scanned about once. The gear table is
//! XORed with a seed derived from the repository's id key, so chunk boundaries (and so
//! chunk sizes) do not reveal content to someone without the key.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{FastCDC, Normalization};

use super::format::ChunkerParams;

/// Cuts a stream into chunks.
pub(crate) struct Chunker {
    params: ChunkerParams,
    seed: u64,
    buf: BytesMut,
}

impl Chunker {
    pub(crate) fn new(params: ChunkerParams, seed: u64) -> Self {
        Self {
            params,
            seed,
            buf: BytesMut::new(),
        }
    }

    /// Adds data; pushes every chunk that is now final onto `out`.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.params.max as usize {
            self.cut(false, out);
        }
    }

    /// Ends the stream; pushes the remaining chunks.
    pub(crate) fn finish(&mut self, out: &mut Vec<Bytes>) {
        if !self.buf.is_empty() {
            self.cut(true, out);
        }
    }

    fn cut(&mut self, last: bool, out: &mut Vec<Bytes>) {
        let len = self.buf.len();
        let mut ends = Vec::new();
        for chunk in FastCDC::with_level_and_seed(
            &self.buf,
            self.params.min,
            self.params.avg,
            self.params.max,
            Normalization::Level1,
            self.seed,
        ) {
            let end = chunk.offset + chunk.length;
            if end < len || last {
                ends.push(chunk.length);
            }
        }
        for length in ends {
            out.push(self.buf.split_to(length).freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> ChunkerParams {
        ChunkerParams {
            min: 256,
            avg: 1024,
            max: 4096,
        }
    }

    fn chunk_all(data: &[u8], piece: usize) -> Vec<Bytes> {
        let mut c = Chunker::new(params(), 42);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            c.push(p, &mut out);
        }
        c.finish(&mut out);
        out
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn boundaries_do_not_depend_on_piece_sizes() {
        let data = pseudo_random(200_000, 7);
        let whole = chunk_all(&data, data.len());
        assert!(whole.len() > 20);
        for piece in [1, 100, 4095, 4096, 10_000] {
            assert_eq!(chunk_all(&data, piece), whole, "piece size {piece}");
        }
        let joined: Vec<u8> = whole.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn an_insert_changes_only_nearby_chunks() {
        let data = pseudo_random(300_000, 9);
        let mut edited = data.clone();
        edited.splice(150_000..150_000, b"inserted row\n".iter().copied());
        let a: std::collections::HashSet<Bytes> = chunk_all(&data, 8192).into_iter().collect();
        let b = chunk_all(&edited, 8192);
        let new = b.iter().filter(|c| !a.contains(*c)).count();
        assert!(new <= 3, "{new} chunks changed");
    }

    proptest! {
        #[test]
        fn chunks_respect_limits_and_concatenate(len in 0usize..50_000, piece in 1usize..9000, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let chunks = chunk_all(&data, piece);
            let joined: Vec<u8> = chunks.iter().flat_map(|b| b.iter().copied()).collect();
            prop_assert_eq!(joined, data);
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.len() <= 4096);
                if i + 1 < chunks.len() {
                    prop_assert!(c.len() >= 256);
                }
            }
        }
    }
}
