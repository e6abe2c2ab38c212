//! Cutting a stream of unknown length into multipart-upload parts.
//!
//! S3 allows at most 10,000 parts per upload, at most 5 GiB per part and at least
//! 5 MiB for every part but the last. The length of a `put_stream` is not known up
//! front, so a fixed part size either wastes memory on small objects or caps the
//! object size (8 MiB × 10,000 = 78 GiB). The rule here ([`PartSizer`]) starts at
//! [`MultipartOptions::part_size`] and doubles the part size after every tenth of the
//! part budget: 1,000 parts of 8 MiB, then 1,000 of 16 MiB, … up to 4 GiB, which
//! holds 8 TiB in 10,000 parts — more than S3's 5 TiB object limit.
//!
//! Parts are equal within each tier and grow between tiers. S3, MinIO, Ceph and GCS
//! accept that. Stores that demand equal parts (Cloudflare R2) are served by
//! [`MultipartOptions::with_uniform_parts`]: one fixed size for the whole upload,
//! which then caps the object at `part_size × max_parts`; choose the part size from
//! the largest object you expect.
//!
//! Memory: at most `max_concurrency` parts in flight plus the one being filled.

use std::fmt;

/// S3's largest allowed part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3's smallest allowed part (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's part-count limit.
pub const MAX_PARTS: u64 = 10_000;
/// The part size a streamed upload starts with.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;

/// How [`ops_core::BackupTarget::put_stream`] cuts an object into parts.
///
/// A stream that ends before the first part is full is written with one plain
/// (atomic) put; no multipart upload is started.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MultipartOptions {
    /// Size of the first parts (default 8 MiB). Real S3 rejects parts below 5 MiB;
    /// smaller values are for test servers configured to accept them.
    pub part_size: u64,
    /// The store's part-count limit (default 10,000, S3's). Lower only to test the
    /// growth rule.
    pub max_parts: u64,
    /// `true`: every part but the last has exactly `part_size` bytes, for stores that
    /// reject uneven parts; objects larger than `part_size × max_parts` then fail.
    pub uniform_parts: bool,
    /// Parts uploaded at the same time (default 2).
    pub max_concurrency: usize,
}

impl Default for MultipartOptions {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_PART_SIZE,
            max_parts: MAX_PARTS,
            uniform_parts: false,
            max_concurrency: 2,
        }
    }
}

impl fmt::Debug for MultipartOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultipartOptions")
            .field("part_size", &self.part_size)
            .field("max_parts", &self.max_parts)
            .field("uniform_parts", &self.uniform_parts)
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

impl MultipartOptions {
    /// Sets the size of the first parts (at least 1 byte).
    #[must_use]
    pub fn with_part_size(mut self, bytes: u64) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    /// Sets the part-count limit (at least 1).
    #[must_use]
    pub fn with_max_parts(mut self, parts: u64) -> Self {
        self.max_parts = parts.max(1);
        self
    }

    /// Keeps every part the same size (see the type's docs).
    #[must_use]
    pub fn with_uniform_parts(mut self, uniform: bool) -> Self {
        self.uniform_parts = uniform;
        self
    }

    /// Sets how many parts upload at the same time (at least 1).
    #[must_use]
    pub fn with_max_concurrency(mut self, parts: usize) -> Self {
        self.max_concurrency = parts.max(1);
        self
    }

    /// The part-size rule these options describe.
    pub fn sizer(&self) -> PartSizer {
        PartSizer {
            first: self.part_size.max(1),
            max_parts: self.max_parts.max(1),
            uniform: self.uniform_parts,
        }
    }
}

/// The part-size rule: the size of part number `index` (0-based), independent of the
/// data, so that every non-final part of one tier has exactly the same size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSizer {
    first: u64,
    max_parts: u64,
    uniform: bool,
}

/// How many tiers the part budget is split into; each tier doubles the part size.
const TIERS: u64 = 10;

impl PartSizer {
    /// Parts per tier: a tenth of the part budget (at least one).
    fn tier_len(&self) -> u64 {
        (self.max_parts / TIERS).max(1)
    }

    /// The size of part `index` (0-based), or `None` when `index` is past the part
    /// budget.
    pub fn part_size(&self, index: u64) -> Option<u64> {
        if index >= self.max_parts {
            return None;
        }
        if self.uniform {
            return Some(self.first);
        }
        let tier = (index / self.tier_len()).min(63);
        let grown = self.first.checked_shl(tier as u32).unwrap_or(u64::MAX);
        // Never shrink below the configured size, never exceed what S3 accepts (unless
        // the configured size itself is larger: then the user asked for it).
        Some(grown.min(MAX_PART_SIZE.max(self.first)))
    }

    /// The largest object this rule can upload within the part budget.
    pub fn capacity(&self) -> u64 {
        // Sum tier by tier instead of part by part: 10,000 iterations are cheap, but
        // a test-configured budget may be larger.
        let mut total: u64 = 0;
        let mut index = 0;
        while index < self.max_parts {
            let Some(size) = self.part_size(index) else {
                break;
            };
            let run = if self.uniform {
                self.max_parts - index
            } else {
                (self.tier_len() - index % self.tier_len()).min(self.max_parts - index)
            };
            total = total.saturating_add(size.saturating_mul(run));
            index += run;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const TIB: u64 = 1024 * 1024 * MIB;

    /// Walks the rule part by part for an object of `len` bytes and returns the parts.
    fn cut(sizer: &PartSizer, len: u64) -> Option<Vec<u64>> {
        let mut parts = Vec::new();
        let mut left = len;
        let mut index = 0;
        while left > 0 {
            let size = sizer.part_size(index)?;
            parts.push(size.min(left));
            left -= size.min(left);
            index += 1;
        }
        Some(parts)
    }

    #[test]
    fn default_rule_fits_five_tib_in_s3_limits() {
        let sizer = MultipartOptions::default().sizer();
        assert!(sizer.capacity() >= 5 * TIB, "capacity {}", sizer.capacity());
        let parts = cut(&sizer, 5 * TIB).expect("5 TiB must fit in 10,000 parts");
        assert!(parts.len() as u64 <= MAX_PARTS, "{} parts", parts.len());
        let (last, body) = parts.split_last().expect("non-empty");
        assert!(*last <= MAX_PART_SIZE);
        for (i, part) in body.iter().enumerate() {
            assert!(
                (MIN_PART_SIZE..=MAX_PART_SIZE).contains(part),
                "part {i} is {part} bytes"
            );
        }
        // Parts within one tier are equal: they only change at tier boundaries.
        for (i, pair) in body.windows(2).enumerate() {
            if (i + 1) % 1000 != 0 {
                assert_eq!(pair[0], pair[1], "parts {i} and {} differ", i + 1);
            }
        }
        assert_eq!(sizer.part_size(0), Some(8 * MIB));
        assert_eq!(sizer.part_size(999), Some(8 * MIB));
        assert_eq!(sizer.part_size(1000), Some(16 * MIB));
        assert_eq!(sizer.part_size(9999), Some(4096 * MIB));
        assert_eq!(sizer.part_size(10_000), None);
    }

    #[test]
    fn small_objects_use_first_size_only() {
        let sizer = MultipartOptions::default().sizer();
        let parts = cut(&sizer, 100 * MIB).expect("fits");
        assert_eq!(parts.len(), 13);
        assert!(parts[..12].iter().all(|p| *p == 8 * MIB));
    }

    #[test]
    fn capacity_matches_walk() {
        let sizer = MultipartOptions::default()
            .with_part_size(1000)
            .with_max_parts(25)
            .sizer();
        let walked: u64 = (0..25).filter_map(|i| sizer.part_size(i)).sum();
        assert_eq!(sizer.capacity(), walked);
        assert!(cut(&sizer, walked).is_some());
        assert!(cut(&sizer, walked + 1).is_none());
    }

    #[test]
    fn uniform_parts_never_grow() {
        let sizer = MultipartOptions::default().with_uniform_parts(true).sizer();
        assert_eq!(sizer.part_size(9_999), Some(8 * MIB));
        assert_eq!(sizer.capacity(), 8 * MIB * MAX_PARTS);
    }

    #[test]
    fn large_first_part_is_not_capped_below_itself() {
        let sizer = MultipartOptions::default()
            .with_part_size(MAX_PART_SIZE * 2)
            .sizer();
        assert_eq!(sizer.part_size(5_000), Some(MAX_PART_SIZE * 2));
    }
}
