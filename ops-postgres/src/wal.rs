//! PostgreSQL's write-ahead log as an archive sees it: file names, positions, the
//! system identifier that says which cluster a segment belongs to, and the
//! continuity of an archived series.
//!
//! The archive itself (storage, encryption, retention) is the repository's
//! ([`ops_core::repo::Repository::push_log`]); this module knows PostgreSQL's side only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ops_core::{Error, ErrorKind, Result};

/// The default segment size (`wal_segment_size`), 16 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A WAL position, as `pg_current_wal_lsn()` prints it (`16/B374D848`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `XXX/YYY` (hexadecimal halves).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for anything else.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "'{text}' is not a WAL position: expected two hexadecimal numbers as in 0/16B3748"
            ))
        };
        let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Self((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A WAL segment: timeline and segment number, for a given segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// Timeline.
    pub timeline: u32,
    /// Segment number from the start of the log.
    pub number: u64,
}

impl Segment {
    /// The segment holding `lsn`.
    pub fn of(timeline: u32, lsn: Lsn, segment_size: u64) -> Self {
        Self {
            timeline,
            number: lsn.0 / segment_size,
        }
    }

    /// The segment holding the byte just before `lsn` (the last one a range ending
    /// at `lsn` needs: a stop position on a segment boundary needs no byte of the
    /// next segment).
    pub fn ending_at(timeline: u32, lsn: Lsn, segment_size: u64) -> Self {
        Self::of(timeline, Lsn(lsn.0.saturating_sub(1)), segment_size)
    }

    /// Its file name, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn file_name(self, segment_size: u64) -> String {
        let per_id = segments_per_id(segment_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_id,
            self.number % per_id
        )
    }

    /// Parses a segment file name (exactly 24 hexadecimal digits).
    pub fn parse(name: &str, segment_size: u64) -> Option<Self> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..], 16).ok()?;
        let per_id = segments_per_id(segment_size);
        (seg < per_id).then_some(Self {
            timeline,
            number: log * per_id + seg,
        })
    }

    /// The next segment on the same timeline.
    #[must_use]
    pub fn next(self) -> Self {
        Self {
            number: self.number + 1,
            ..self
        }
    }
}

fn segments_per_id(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.max(1)
}

/// True for a name PostgreSQL archives: a segment, a `.partial` segment, a timeline
/// history file or a backup history file.
pub fn is_wal_file_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(name, 24) {
        return true;
    }
    if let Some(base) = name.strip_suffix(".partial") {
        return hex(base, 24);
    }
    if let Some(base) = name.strip_suffix(".history") {
        return hex(base, 8);
    }
    if let Some(base) = name.strip_suffix(".backup") {
        return base.len() == 33
            && hex(&base[..24], 24)
            && &base[24..25] == "."
            && hex(&base[25..], 8);
    }
    false
}

/// What the first page of a segment says about it (`XLogLongPageHeaderData`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The segment size of the cluster.
    pub segment_size: u64,
    /// Timeline of the first page.
    pub timeline: u32,
    /// Position of the first page.
    pub page_address: u64,
}

/// Page header flag: the long header (with system identifier) follows.
const XLP_LONG_HEADER: u16 = 0x0002;

/// Reads a segment's long page header. `None` when the bytes are not a segment
/// start (too short, or the long-header flag is not set).
pub fn segment_header(bytes: &[u8]) -> Option<SegmentHeader> {
    if bytes.len() < 40 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default());
    if u16_at(2) & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(SegmentHeader {
        timeline: u32_at(4),
        page_address: u64_at(8),
        system_identifier: u64_at(24),
        segment_size: u64::from(u32_at(32)),
    })
}

/// The system identifier in a data directory's `global/pg_control` (its first field).
///
/// # Errors
/// [`ErrorKind::NotFound`] / I/O errors reading the file; [`ErrorKind::Corrupt`] when
/// it is too short.
pub fn system_identifier_of_datadir(datadir: &Path) -> Result<u64> {
    let path = datadir.join("global").join("pg_control");
    let bytes =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::corrupt(format!("{} is too short", path.display())))?;
    Ok(u64::from_le_bytes(first))
}

/// The archive series of a cluster: its system identifier, as the repository names
/// it.
pub fn series_name(system_identifier: u64) -> String {
    format!("pg-{system_identifier}")
}

/// Segments missing from an archived series: per timeline, every segment between
/// the earliest of `from` on that timeline (or the timeline's first archived one)
/// and the newest archived one must be there. A timeline ends at its last archived
/// segment, where the next one starts. Returns the missing file names in log order.
pub fn missing_segments<'a>(
    archived: impl IntoIterator<Item = &'a str>,
    from: &[Segment],
    segment_size: u64,
) -> Vec<String> {
    let mut by_timeline: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for name in archived {
        if let Some(seg) = Segment::parse(name, segment_size) {
            by_timeline
                .entry(seg.timeline)
                .or_default()
                .push(seg.number);
        }
    }
    let mut missing = Vec::new();
    // A segment a later timeline starts from was copied from its parent's: the
    // parent's range needs no more than what it archived.
    for (timeline, mut numbers) in by_timeline {
        numbers.sort_unstable();
        numbers.dedup();
        let (Some(&first), Some(&last)) = (numbers.first(), numbers.last()) else {
            continue;
        };
        let start = from
            .iter()
            .filter(|f| f.timeline == timeline)
            .map(|f| f.number)
            .min()
            .map_or(first, |f| f.min(first));
        let mut have = numbers.iter().peekable();
        for n in start..=last {
            while have.next_if(|&&h| h < n).is_some() {}
            if have.peek() != Some(&&n) {
                missing.push(
                    Segment {
                        timeline,
                        number: n,
                    }
                    .file_name(segment_size),
                );
                if missing.len() >= 10_000 {
                    return missing;
                }
            }
        }
    }
    missing
}

/// The state of one archived WAL series, as `verify` and the health probe report it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveState {
    /// The series (`pg-<system identifier>`).
    pub series: String,
    /// Files archived (segments, history and backup files).
    pub files: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
    /// The oldest and newest segment archived.
    pub first: Option<String>,
    /// See `first`.
    pub last: Option<String>,
    /// When the newest file reached the store.
    pub last_archived: Option<ops_core::chrono::DateTime<ops_core::chrono::Utc>>,
    /// Where continuity is checked from: the oldest base backup's first segment, or
    /// the first archived one.
    pub checked_from: Option<String>,
    /// Segments missing between there and the newest (at most 10,000 named).
    pub missing: Vec<String>,
}

/// Checks every archived WAL series of `repo`: each segment from the oldest base
/// backup's start (or the first archived segment) to the newest must be there. One
/// listing of the archive and the manifests; no segment is read.
///
/// # Errors
/// Storage errors.
pub async fn check_archive(repo: &ops_core::repo::Repository) -> Result<Vec<ArchiveState>> {
    use ops_core::repo::{LOG_KIND_KEY, LOG_SERIES_KEY, LOG_START_KEY, LogKind};
    let objects = repo.list_logs(LogKind::Wal, None).await?;
    // Per series: the first segment each base backup needs (every timeline's oldest
    // counts), and the segment size.
    let mut starts: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for m in repo.list_backups().await? {
        let snap = &m.snapshot;
        if snap.get(LOG_KIND_KEY).map(String::as_str) != Some(LogKind::Wal.as_str()) {
            continue;
        }
        let (Some(series), Some(start)) = (snap.get(LOG_SERIES_KEY), snap.get(LOG_START_KEY))
        else {
            continue;
        };
        let size = snap
            .get("segment_size")
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_SEGMENT_SIZE);
        starts
            .entry(series.clone())
            .or_insert_with(|| (Vec::new(), size))
            .0
            .push(start.clone());
    }
    let mut out: Vec<ArchiveState> = Vec::new();
    let mut i = 0;
    while i < objects.len() {
        let series = objects[i].series.clone();
        let end = objects[i..]
            .iter()
            .position(|o| o.series != series)
            .map_or(objects.len(), |n| i + n);
        let group = &objects[i..end];
        let (backup_starts, size) = starts
            .get(&series)
            .map_or((&[][..], DEFAULT_SEGMENT_SIZE), |(s, size)| {
                (s.as_slice(), *size)
            });
        let from: Vec<Segment> = backup_starts
            .iter()
            .filter_map(|s| Segment::parse(s, size))
            .collect();
        let start = backup_starts.iter().min().map(String::as_str);
        let segments: Vec<&str> = group
            .iter()
            .map(|o| o.name.as_str())
            .filter(|n| Segment::parse(n, size).is_some())
            .collect();
        out.push(ArchiveState {
            series: series.clone(),
            files: group.len() as u64,
            stored_bytes: group.iter().map(|o| o.stored_bytes).sum(),
            first: segments.first().map(|s| (*s).to_owned()),
            last: segments.last().map(|s| (*s).to_owned()),
            last_archived: group.iter().map(|o| o.archived).max(),
            checked_from: start
                .map(str::to_owned)
                .or_else(|| segments.first().map(|s| (*s).to_owned())),
            missing: missing_segments(segments.iter().copied(), &from, size),
        });
        i = end;
    }
    Ok(out)
}

/// Checks that a segment's bytes belong to this series and name: the page header's
/// system identifier, timeline and position must match, so that a segment of another
/// cluster, or a renamed file, is refused before it reaches the archive.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] naming what does not match.
pub fn check_segment(name: &str, bytes: &[u8], system_identifier: u64) -> Result<()> {
    let Some(header) = segment_header(bytes) else {
        return Err(Error::invalid(format!(
            "{name} does not start with a WAL page header: it is not a WAL segment"
        )));
    };
    if header.system_identifier != system_identifier {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{name} belongs to the cluster with system identifier {}, not to this one ({system_identifier}): \
                 refusing to archive another cluster's WAL into this series",
                header.system_identifier
            ),
        ));
    }
    let base = name.strip_suffix(".partial").unwrap_or(name);
    let Some(segment) = Segment::parse(base, header.segment_size) else {
        return Err(Error::invalid(format!("{name} is not a WAL segment name")));
    };
    if bytes.len() as u64 != header.segment_size {
        return Err(Error::invalid(format!(
            "{name} is {} bytes, not the cluster's segment size ({})",
            bytes.len(),
            header.segment_size
        )));
    }
    if header.page_address != segment.number * header.segment_size {
        return Err(Error::invalid(format!(
            "{name} holds the WAL of position {}, not its name's: it was renamed or damaged",
            Lsn(header.page_address)
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn positions_and_names_round_trip() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.to_string(), "16/B374D848");
        let seg = Segment::of(1, lsn, SEG);
        assert_eq!(seg.file_name(SEG), "0000000100000016000000B3");
        assert_eq!(Segment::parse("0000000100000016000000B3", SEG), Some(seg));
        assert_eq!(
            Segment::ending_at(1, Lsn::parse("0/3000000").unwrap(), SEG).file_name(SEG),
            "000000010000000000000002"
        );
        assert_eq!(
            Segment::parse("0000000100000000000000FF", SEG)
                .unwrap()
                .next()
                .file_name(SEG),
            "000000010000000100000000"
        );
        assert!(Lsn::parse("16B374D848").is_err());
    }

    #[test]
    fn archived_names_are_recognised() {
        for ok in [
            "000000010000000000000003",
            "000000010000000000000003.partial",
            "00000002.history",
            "000000010000000000000003.00000028.backup",
        ] {
            assert!(is_wal_file_name(ok), "{ok}");
        }
        for bad in [
            "00000001000000000000003",
            "x.history",
            "RECOVERYXLOG",
            "archive_status",
        ] {
            assert!(!is_wal_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn gaps_are_named_per_timeline() {
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000004",
            "00000002.history",
            "000000020000000000000004",
            "000000020000000000000005",
        ];
        assert_eq!(
            missing_segments(names.iter().copied(), &[], SEG),
            vec!["000000010000000000000003".to_owned()]
        );
        let from = Segment::parse("000000020000000000000002", SEG).unwrap();
        assert_eq!(
            missing_segments(names.iter().copied(), &[from], SEG),
            vec![
                "000000010000000000000003".to_owned(),
                "000000020000000000000002".to_owned(),
                "000000020000000000000003".to_owned()
            ]
        );
    }

    #[test]
    fn a_segment_of_another_cluster_is_refused() {
        let mut bytes = vec![0u8; 1 << 20];
        bytes[2] = XLP_LONG_HEADER as u8;
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&(3u64 << 20).to_le_bytes());
        bytes[24..32].copy_from_slice(&42u64.to_le_bytes());
        bytes[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let name = Segment {
            timeline: 1,
            number: 3,
        }
        .file_name(1 << 20);
        check_segment(&name, &bytes, 42).unwrap();
        assert!(
            check_segment(&name, &bytes, 43)
                .unwrap_err()
                .to_string()
                .contains("another cluster")
        );
        let other = Segment {
            timeline: 1,
            number: 4,
        }
        .file_name(1 << 20);
        assert!(
            check_segment(&other, &bytes, 42)
                .unwrap_err()
                .to_string()
                .contains("renamed")
        );
    }
}
