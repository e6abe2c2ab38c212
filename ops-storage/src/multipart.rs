//! Cutting a stream of unknown length into multipart-upload parts.
//!
//! S3 allows at most 10,000 parts per upload, at most 5 GiB per part and at least
//! 5 MiB for every part but the last; an object holds at most 5 TiB. The length of
//! a `put_stream` is not known up front, so a fixed part size either wastes memory
//! on small objects or caps the object size (8 MiB × 10,000 = 78 GiB).
//!
//! The rule here ([`PartSizer`]) starts at [`MultipartOptions::part_size`] and
//! doubles the part size after every twentieth of the part budget (500 of S3's
//! 10,000 parts), but never beyond [`MultipartOptions::max_part_size`] (default
//! 1 GiB). With the defaults:
//!
//! | parts | part size | object size reached |
//! |---|---|---|
//! | 0–499 | 8 MiB | 3.9 GiB |
//! | 500–999 | 16 MiB | 11.7 GiB |
//! | 1,000–1,499 | 32 MiB | 27 GiB |
//! | 1,500–1,999 | 64 MiB | 59 GiB |
//! | 2,000–2,499 | 128 MiB | 121 GiB |
//! | 2,500–2,999 | 256 MiB | 246 GiB |
//! | 3,000–3,499 | 512 MiB | 496 GiB |
//! | 3,500–9,999 | 1 GiB | 6.8 TiB |
//!
//! 6.8 TiB in 10,000 parts is more than S3's 5 TiB object limit. Why the cap is
//! 1 GiB and not lower: 10,000 parts of 512 MiB hold only 4.9 TiB, so no rule with
//! parts of at most 512 MiB reaches 5 TiB; a lower
//! [`MultipartOptions::with_max_part_size`] trades the largest possible object
//! ([`PartSizer::capacity`]) for memory.
//!
//! Parts are equal within each tier and grow between tiers. S3, MinIO, Ceph and GCS
//! accept that. Stores that demand equal parts (Cloudflare R2) are served by
//! [`MultipartOptions::with_uniform_parts`]: one fixed size for the whole upload,
//! which then caps the object at `part_size × max_parts`; choose the part size from
//! the largest object you expect: 8 MiB parts hold 78 GiB, 64 MiB parts 625 GiB,
//! 512 MiB parts 4.9 TiB; the memory bound below then uses that part size.
//!
//! # Memory
//!
//! An upload holds at most `max_concurrency` parts in flight plus the one being
//! filled, so its peak is `(max_concurrency + 1) × part size` plus one chunk of the
//! source stream, where the part size is that of the tier reached. With the
//! defaults (2 parts at a time): 24 MiB for objects up to 3.9 GiB, 1.5 GiB from
//! 246 GiB, and at most 3 GiB (`3 × max_part_size`) from 496 GiB on. Bytes are not
//! copied into parts: a part is made of the stream's own buffers.

use std::fmt;

/// S3's largest allowed part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// The largest part the growing rule uses by default (1 GiB): the smallest power
/// of two whose rule still reaches S3's 5 TiB object limit in 10,000 parts.
pub const DEFAULT_MAX_PART_SIZE: u64 = 1024 * 1024 * 1024;
/// S3's largest object.
pub const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024 * 1024;
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
    /// The size growing parts stop at (default 1 GiB; see the module docs). An
    /// upload holds up to `(max_concurrency + 1) ×` this much memory. Never below
    /// `part_size`; ignored with `uniform_parts`.
    pub max_part_size: u64,
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
            max_part_size: DEFAULT_MAX_PART_SIZE,
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
            .field("max_part_size", &self.max_part_size)
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

    /// Sets the size growing parts stop at (see [`MultipartOptions::max_part_size`]).
    #[must_use]
    pub fn with_max_part_size(mut self, bytes: u64) -> Self {
        self.max_part_size = bytes.max(1);
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
        let first = self.part_size.max(1);
        PartSizer {
            first,
            // Never shrink below the configured first size (then the user asked for
            // large parts), never exceed what S3 accepts otherwise.
            largest: self.max_part_size.min(MAX_PART_SIZE).max(first),
            max_parts: self.max_parts.max(1),
            uniform: self.uniform_parts,
        }
    }

    /// The most memory one upload holds in parts: `(max_concurrency + 1) ×` the
    /// largest part (plus one chunk of the source stream, not counted here).
    pub fn peak_memory(&self) -> u64 {
        let sizer = self.sizer();
        let largest = if sizer.uniform {
            sizer.first
        } else {
            sizer.largest
        };
        largest.saturating_mul(self.max_concurrency.max(1) as u64 + 1)
    }
}

/// The part-size rule: the size of part number `index` (0-based), independent of the
/// data, so that every non-final part of one tier has exactly the same size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSizer {
    first: u64,
    largest: u64,
    max_parts: u64,
    uniform: bool,
}

/// How many tiers the part budget is split into; each tier doubles the part size
/// until it reaches the largest. Twenty tiers of 500 parts reach 1 GiB parts (from
/// 8 MiB) after 3,500 parts, which leaves room for 5 TiB (see the module docs).
const TIERS: u64 = 20;

impl PartSizer {
    /// Parts per tier: a twentieth of the part budget (at least one).
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
        Some(grown.min(self.largest))
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
        let options = MultipartOptions::default();
        let sizer = options.sizer();
        assert!(
            sizer.capacity() >= MAX_OBJECT_SIZE,
            "capacity {}",
            sizer.capacity()
        );
        let parts = cut(&sizer, MAX_OBJECT_SIZE).expect("5 TiB must fit in 10,000 parts");
        assert!(parts.len() as u64 <= MAX_PARTS, "{} parts", parts.len());
        let (last, body) = parts.split_last().expect("non-empty");
        assert!(*last <= DEFAULT_MAX_PART_SIZE);
        for (i, part) in body.iter().enumerate() {
            assert!(
                (MIN_PART_SIZE..=DEFAULT_MAX_PART_SIZE).contains(part),
                "part {i} is {part} bytes"
            );
        }
        // Parts within one tier are equal: they only change at tier boundaries.
        for (i, pair) in body.windows(2).enumerate() {
            if (i + 1) % 500 != 0 {
                assert_eq!(pair[0], pair[1], "parts {i} and {} differ", i + 1);
            }
        }
        assert_eq!(sizer.part_size(0), Some(8 * MIB));
        assert_eq!(sizer.part_size(499), Some(8 * MIB));
        assert_eq!(sizer.part_size(500), Some(16 * MIB));
        assert_eq!(sizer.part_size(3_499), Some(512 * MIB));
        assert_eq!(sizer.part_size(3_500), Some(1024 * MIB));
        assert_eq!(sizer.part_size(9_999), Some(1024 * MIB));
        assert_eq!(sizer.part_size(10_000), None);
        // The arithmetic of the module docs' table: 500 × (8 + … + 512) MiB before
        // the cap, 6,500 × 1 GiB after it.
        let before_cap: u64 = (0..7).map(|t| 500 * ((8 * MIB) << t)).sum();
        assert_eq!(before_cap, 508_000 * MIB);
        assert_eq!(sizer.capacity(), before_cap + 6_500 * 1024 * MIB);
        assert_eq!(sizer.capacity(), 7_164_000 * MIB); // ≈ 6.83 TiB
        assert!(sizer.capacity() > MAX_OBJECT_SIZE + MAX_OBJECT_SIZE / 3);
        // Memory: three parts (two in flight, one filling) of at most 1 GiB.
        assert_eq!(options.peak_memory(), 3 * 1024 * MIB);
        let used_for_5_tib = parts.iter().max().copied().unwrap_or(0) * 3;
        assert!(used_for_5_tib <= options.peak_memory());
    }

    #[test]
    fn a_512_mib_cap_cannot_reach_five_tib() {
        // Even if every part had the cap's size: 10,000 × 512 MiB < 5 TiB. That is
        // why the default cap is 1 GiB.
        const _: () = assert!(MAX_PARTS * 512 * MIB < MAX_OBJECT_SIZE);
        let options = MultipartOptions::default().with_max_part_size(512 * MIB);
        let sizer = options.sizer();
        assert_eq!(sizer.part_size(9_999), Some(512 * MIB));
        assert!(sizer.capacity() < MAX_OBJECT_SIZE);
        assert!(cut(&sizer, MAX_OBJECT_SIZE).is_none());
        assert_eq!(options.peak_memory(), 3 * 512 * MIB);
        // The cap never exceeds what S3 accepts, however large it is set.
        let huge = MultipartOptions::default().with_max_part_size(u64::MAX);
        assert_eq!(huge.sizer().part_size(9_999), Some(MAX_PART_SIZE));
    }

    #[test]
    fn s3_compatible_settings_in_the_readme() {
        // Scaleway: 1,000 parts. Tiers of 50 parts reach 1 GiB after 350 parts.
        let scaleway = MultipartOptions::default().with_max_parts(1_000).sizer();
        assert_eq!(scaleway.part_size(49), Some(8 * MIB));
        assert_eq!(scaleway.part_size(350), Some(1024 * MIB));
        assert_eq!(scaleway.capacity(), 716_400 * MIB); // ≈ 700 GiB
        // R2: uniform 64 MiB parts hold 625 GiB, in 192 MiB of memory.
        let r2 = MultipartOptions::default()
            .with_uniform_parts(true)
            .with_part_size(64 * MIB);
        assert_eq!(r2.sizer().capacity(), 640_000 * MIB);
        assert_eq!(r2.peak_memory(), 192 * MIB);
    }

    #[test]
    fn small_objects_use_first_size_only() {
        let sizer = MultipartOptions::default().sizer();
        let parts = cut(&sizer, 100 * MIB).expect("fits");
        assert!(parts.len() < 500, "all in the first tier");
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
        assert_eq!(sizer.part_size(0), Some(MAX_PART_SIZE * 2));
    }
}
