//! Order-independent table content digests.
//!
//! A table dumped twice may come out in a different row order (a restored heap is laid
//! out anew; a table split into ranges is loaded in parallel), so tables are compared
//! by a multiset hash of their records: each `\n`-terminated record is hashed with
//! BLAKE3 and the hashes are added as two independent 128-bit sums. Equal multisets of
//! records give equal digests whatever the order; verification and the engine
//! conformance suite both compare tables this way.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::{DumpSink, Result, StreamRole, StreamSpec, StreamSummary, StreamWriter};

/// The digest of one table's records.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    /// Number of records.
    pub rows: u64,
    sum_a: u128,
    sum_b: u128,
}

impl TableDigest {
    /// Adds one record (without its terminating `\n`).
    pub fn add_record(&mut self, record: &[u8]) {
        let hash = blake3::hash(record);
        let bytes = hash.as_bytes();
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a.copy_from_slice(&bytes[..16]);
        b.copy_from_slice(&bytes[16..]);
        self.sum_a = self.sum_a.wrapping_add(u128::from_le_bytes(a));
        self.sum_b = self.sum_b.wrapping_add(u128::from_le_bytes(b));
        self.rows += 1;
    }

    /// Combines the digests of two parts of a table.
    pub fn merge(&mut self, other: &TableDigest) {
        self.rows += other.rows;
        self.sum_a = self.sum_a.wrapping_add(other.sum_a);
        self.sum_b = self.sum_b.wrapping_add(other.sum_b);
    }

    /// The digest as 64 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}{:032x}", self.sum_a, self.sum_b)
    }
}

impl fmt::Debug for TableDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableDigest({} rows, {})", self.rows, &self.hex()[..16])
    }
}

/// Feeds a byte stream of records into a [`TableDigest`], records may span pieces.
#[derive(Debug, Default)]
pub struct RecordHasher {
    digest: TableDigest,
    partial: Vec<u8>,
}

impl RecordHasher {
    /// A hasher with nothing fed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while let Some(pos) = memchr::memchr(b'\n', data) {
            if self.partial.is_empty() {
                self.digest.add_record(&data[..pos]);
            } else {
                self.partial.extend_from_slice(&data[..pos]);
                self.digest.add_record(&self.partial);
                self.partial.clear();
            }
            data = &data[pos + 1..];
        }
        self.partial.extend_from_slice(data);
    }

    /// Ends the stream. A last record without `\n` still counts (and is a format error
    /// the caller may want to report: see [`RecordHasher::has_partial`]).
    pub fn finish(mut self) -> TableDigest {
        if !self.partial.is_empty() {
            let partial = std::mem::take(&mut self.partial);
            self.digest.add_record(&partial);
        }
        self.digest
    }

    /// True when bytes after the last `\n` are pending.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }
}

/// One difference between two sets of table digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableComparison {
    /// `schema.table`.
    pub table: String,
    /// Rows expected (from the backup).
    pub expected_rows: Option<u64>,
    /// Rows found (in the restored database).
    pub actual_rows: Option<u64>,
    /// True when rows and content digests agree.
    pub matches: bool,
}

/// Compares expected with actual digests, table by table, in name order.
pub fn compare_tables(
    expected: &BTreeMap<String, TableDigest>,
    actual: &BTreeMap<String, TableDigest>,
) -> Vec<TableComparison> {
    let mut names: Vec<&String> = expected.keys().chain(actual.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let e = expected.get(name);
            let a = actual.get(name);
            TableComparison {
                table: name.clone(),
                expected_rows: e.map(|d| d.rows),
                actual_rows: a.map(|d| d.rows),
                matches: e.is_some() && e == a,
            }
        })
        .collect()
}

/// Renames the schema `from` to `to` in `schema.table` keys: a database restored under
/// another name by an engine whose schema is the database (MariaDB) compares under the
/// source's name.
pub fn rename_schema(
    digests: BTreeMap<String, TableDigest>,
    from: &str,
    to: &str,
) -> BTreeMap<String, TableDigest> {
    let prefix = format!("{from}.");
    digests
        .into_iter()
        .map(|(k, v)| match k.strip_prefix(&prefix) {
            Some(name) => (format!("{to}.{name}"), v),
            None => (k, v),
        })
        .collect()
}

/// A [`crate::DumpSink`] that keeps nothing but a [`TableDigest`] per table: used to
/// re-dump a restored database and compare it with what was backed up.
#[derive(Debug, Default)]
pub struct TableDigestSink {
    tables: Arc<Mutex<BTreeMap<String, TableDigest>>>,
    refs: Mutex<BTreeMap<String, crate::TableRef>>,
    warnings: Mutex<Vec<String>>,
}

impl TableDigestSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The digests gathered so far, by `schema.table`.
    pub fn digests(&self) -> BTreeMap<String, TableDigest> {
        lock(&self.tables).clone()
    }

    /// The table behind each key of [`TableDigestSink::digests`] (a key alone cannot
    /// tell `a.b`.`c` from `a`.`b.c`).
    pub fn table_refs(&self) -> BTreeMap<String, crate::TableRef> {
        lock(&self.refs).clone()
    }

    /// Warnings the engine recorded.
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data, still consistent to read.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct DigestWriter {
    table: Option<String>,
    hasher: RecordHasher,
    bytes: u64,
    tables: Arc<Mutex<BTreeMap<String, TableDigest>>>,
}

#[async_trait]
impl DumpSink for TableDigestSink {
    async fn open_stream(&self, spec: StreamSpec) -> Result<Box<dyn StreamWriter>> {
        let table = match (spec.role, &spec.table) {
            (StreamRole::TableData, Some(t)) => {
                lock(&self.refs).insert(t.to_string(), t.clone());
                Some(t.to_string())
            }
            _ => None,
        };
        Ok(Box::new(DigestWriter {
            table,
            hasher: RecordHasher::new(),
            bytes: 0,
            tables: Arc::clone(&self.tables),
        }))
    }

    fn warn(&self, message: String) {
        lock(&self.warnings).push(message);
    }
}

#[async_trait]
impl StreamWriter for DigestWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.bytes += data.len() as u64;
        if self.table.is_some() {
            self.hasher.update(&data);
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<StreamSummary> {
        let this = *self;
        let digest = this.hasher.finish();
        if let Some(table) = this.table {
            lock(&this.tables).entry(table).or_default().merge(&digest);
        }
        Ok(StreamSummary {
            bytes: this.bytes,
            rows: digest.rows,
        })
    }
}

/// Re-dumps the data of `engine` and returns, per table (`schema.name`), its row count
/// and an order-independent digest of its rows: what `verify --restore` compares with
/// what a backup stored, and what a program can compare between two databases.
///
/// # Errors
/// The engine's dump errors.
pub async fn table_digests(
    engine: &dyn crate::DatabaseEngine,
    jobs: usize,
) -> crate::Result<std::collections::BTreeMap<String, TableDigest>> {
    let sink = std::sync::Arc::new(TableDigestSink::new());
    engine
        .dump(
            &crate::DumpOptions::default()
                .with_jobs(jobs)
                .with_data_only(true),
            std::sync::Arc::clone(&sink) as std::sync::Arc<dyn crate::DumpSink>,
        )
        .await?;
    Ok(sink.digests())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(pieces: &[&[u8]]) -> TableDigest {
        let mut h = RecordHasher::new();
        for p in pieces {
            h.update(p);
        }
        h.finish()
    }

    #[test]
    fn order_and_split_independent() {
        let a = digest_of(&[b"1\tx\n2\ty\n3\tz\n"]);
        let b = digest_of(&[b"3\tz\n2", b"\ty\n", b"1\tx\n"]);
        assert_eq!(a, b);
        assert_eq!(a.rows, 3);
    }

    #[test]
    fn content_sensitive() {
        assert_ne!(digest_of(&[b"1\n2\n"]), digest_of(&[b"1\n3\n"]));
        assert_ne!(digest_of(&[b"1\n1\n"]), digest_of(&[b"1\n"]));
    }

    #[test]
    fn compare_reports_missing_and_different() {
        let mut e = BTreeMap::new();
        let mut a = BTreeMap::new();
        e.insert("s.t1".into(), digest_of(&[b"1\n"]));
        a.insert("s.t1".into(), digest_of(&[b"1\n"]));
        e.insert("s.t2".into(), digest_of(&[b"1\n"]));
        a.insert("s.t2".into(), digest_of(&[b"2\n"]));
        e.insert("s.t3".into(), digest_of(&[b"1\n"]));
        let r = compare_tables(&e, &a);
        assert!(r[0].matches);
        assert!(!r[1].matches);
        assert!(!r[2].matches && r[2].actual_rows.is_none());
    }
}
