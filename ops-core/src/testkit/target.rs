//! Target conformance suite: what every [`BackupTarget`] must do, checked through
//! the trait alone.
//!
//! Run [`conformance`] against a fresh target (it works under a unique prefix, so a
//! shared bucket is fine, and removes what it wrote). Each check panics with a
//! message that names the target and says what it did wrong. The smaller `check_*`
//! functions are public so an adapter can run one while debugging.
//!
//! Documented choices the suite enforces:
//! - `get_range` of a range that is empty or runs past the end of the object is
//!   [`ErrorKind::InvalidInput`]; of a missing object, [`ErrorKind::NotFound`].
//! - `list(prefix)` is a string-prefix match on the key and returns keys relative to
//!   the target's root, exactly as they were put.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};

use crate::target::{BackupTarget, ByteStream, PutOutcome};
use crate::{Error, ErrorKind, Result};

/// Runs every check under a fresh prefix, then deletes what it wrote.
///
/// # Panics
/// On the first check the target fails, with a message saying what went wrong.
pub async fn conformance(target: &dyn BackupTarget) {
    let base = unique_prefix();
    check_put_get(target, &base).await;
    check_missing(target, &base).await;
    check_get_range(target, &base).await;
    check_list(target, &base).await;
    check_delete(target, &base).await;
    check_put_if_absent(target, &base).await;
    check_put_if_absent_race(target, &base, 8).await;
    check_put_stream(target, &base, 6 * 1024 * 1024).await;
    check_put_stream_failure(target, &base, 7 * 1024 * 1024).await;
    check_overwrite_is_atomic(target, &base).await;
    cleanup(target, &base).await;
}

/// A prefix no other run uses: `conformance-<time>-<pid>-<n>/`.
pub fn unique_prefix() -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "conformance-{nanos}-{}-{}/",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deterministic, position-dependent test bytes (no two MiB alike), so a part put in
/// the wrong place or twice shows up.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add(seed as u64);
            (x ^ (x >> 13) ^ (i as u64 >> 20)) as u8
        })
        .collect()
}

fn ctx(target: &dyn BackupTarget) -> String {
    format!("target {} ({target:?})", target.location())
}

/// Reads a whole object through `get`.
///
/// # Errors
/// Whatever `get` or its stream returns.
pub async fn read_all(target: &dyn BackupTarget, key: &str) -> Result<Vec<u8>> {
    let mut stream = target.get(key).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn must_read(target: &dyn BackupTarget, key: &str, doing: &str) -> Vec<u8> {
    match read_all(target, key).await {
        Ok(data) => data,
        Err(e) => panic!("{}: get({key:?}) {doing} failed: {e}", ctx(target)),
    }
}

fn ok<T>(target: &dyn BackupTarget, what: &str, result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{}: {what} failed: {e} ({e:?})", ctx(target)),
    }
}

fn expect_kind<T: std::fmt::Debug>(
    target: &dyn BackupTarget,
    what: &str,
    result: Result<T>,
    kinds: &[ErrorKind],
) -> Error {
    match result {
        Ok(value) => panic!(
            "{}: {what} succeeded with {value:?}, expected an error of kind {kinds:?}",
            ctx(target)
        ),
        Err(e) if kinds.contains(&e.kind()) => e,
        Err(e) => panic!(
            "{}: {what} failed with kind {:?}, expected {kinds:?}: {e}",
            ctx(target),
            e.kind()
        ),
    }
}

/// `put` then `get` and `head` return the same bytes and size; nested keys and the
/// empty object work; `put` replaces.
pub async fn check_put_get(target: &dyn BackupTarget, base: &str) {
    let cases: Vec<(String, Vec<u8>)> = vec![
        (format!("{base}put/plain"), b"hello, target".to_vec()),
        (
            format!("{base}put/deeply/nested/key-1_2.3=x"),
            pattern(70_001, 1),
        ),
        (format!("{base}put/empty"), Vec::new()),
    ];
    for (key, data) in &cases {
        ok(
            target,
            &format!("put({key:?})"),
            target.put(key, Bytes::from(data.clone())).await,
        );
        let read = must_read(target, key, "after put").await;
        assert!(
            read == *data,
            "{}: get({key:?}) returned {} bytes that differ from the {} bytes put",
            ctx(target),
            read.len(),
            data.len()
        );
        let meta = ok(target, &format!("head({key:?})"), target.head(key).await);
        let Some(meta) = meta else {
            panic!("{}: head({key:?}) is None right after put", ctx(target));
        };
        assert_eq!(
            meta.key,
            *key,
            "{}: head returned the wrong key",
            ctx(target)
        );
        assert_eq!(
            meta.size,
            data.len() as u64,
            "{}: head({key:?}) reports the wrong size",
            ctx(target)
        );
        let age = chrono::Utc::now().signed_duration_since(meta.modified);
        assert!(
            age.num_hours().abs() < 24,
            "{}: head({key:?}) reports modification time {} — not now",
            ctx(target),
            meta.modified
        );
    }
    let key = &cases[0].0;
    ok(
        target,
        "put (replace)",
        target.put(key, Bytes::from_static(b"v2")).await,
    );
    let read = must_read(target, key, "after replacing put").await;
    assert_eq!(
        read,
        b"v2",
        "{}: put did not replace the object",
        ctx(target)
    );
}

/// A missing object: `get` is `NotFound`, `head` is `None`, `get_range` is
/// `NotFound`.
pub async fn check_missing(target: &dyn BackupTarget, base: &str) {
    let key = format!("{base}missing/nothing-here");
    let err = expect_kind(
        target,
        "get of a missing object",
        target.get(&key).await.map(|_| ()),
        &[ErrorKind::NotFound],
    );
    assert_eq!(
        err.context_value("object"),
        Some(key.as_str()),
        "{}: the NotFound error does not name the object key: {err}",
        ctx(target)
    );
    let head = ok(target, "head of a missing object", target.head(&key).await);
    assert!(
        head.is_none(),
        "{}: head of a missing object is {head:?}",
        ctx(target)
    );
    expect_kind(
        target,
        "get_range of a missing object",
        target.get_range(&key, 0..1).await,
        &[ErrorKind::NotFound],
    );
}

/// `get_range` returns exactly the bytes asked for, and refuses ranges outside the
/// object with `InvalidInput`.
pub async fn check_get_range(target: &dyn BackupTarget, base: &str) {
    let key = format!("{base}range/object");
    let data = pattern(100_000, 2);
    ok(
        target,
        "put",
        target.put(&key, Bytes::from(data.clone())).await,
    );
    let ranges: [Range<u64>; 5] = [0..1, 0..100_000, 10..20, 99_999..100_000, 4096..70_000];
    for range in ranges {
        let got = ok(
            target,
            &format!("get_range({key:?}, {range:?})"),
            target.get_range(&key, range.clone()).await,
        );
        let want = &data[range.start as usize..range.end as usize];
        assert!(
            got.as_ref() == want,
            "{}: get_range({range:?}) returned {} bytes, not the {} asked for (or wrong ones)",
            ctx(target),
            got.len(),
            want.len()
        );
    }
    for range in [99_990..100_010, 100_000..100_001, 200_000..200_010, 5..5] {
        expect_kind(
            target,
            &format!("get_range({range:?}) of a 100000-byte object"),
            target.get_range(&key, range.clone()).await,
            &[ErrorKind::InvalidInput],
        );
    }
}

async fn list_keys(target: &dyn BackupTarget, prefix: &str) -> BTreeSet<String> {
    let stream = ok(
        target,
        &format!("list({prefix:?})"),
        target.list(prefix).await,
    );
    let metas: Vec<_> = ok(
        target,
        &format!("listing stream of {prefix:?}"),
        stream.try_collect::<Vec<_>>().await,
    );
    let mut keys = BTreeSet::new();
    for meta in metas {
        assert!(
            keys.insert(meta.key.clone()),
            "{}: list({prefix:?}) returned {} twice",
            ctx(target),
            meta.key
        );
    }
    keys
}

/// `list` finds nested keys by string prefix, with sizes, and nothing else.
pub async fn check_list(target: &dyn BackupTarget, base: &str) {
    let root = format!("{base}list/");
    let names = ["a", "b/c", "b/d/e", "bb", "c/x"];
    for (i, name) in names.iter().enumerate() {
        let key = format!("{root}{name}");
        ok(
            target,
            "put",
            target.put(&key, Bytes::from(vec![b'x'; i + 1])).await,
        );
    }
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{root}{n}"))
            .collect::<BTreeSet<_>>()
    };
    let cases: [(&str, BTreeSet<String>); 6] = [
        ("", set(&names)),
        ("b/", set(&["b/c", "b/d/e"])),
        ("b", set(&["b/c", "b/d/e", "bb"])),
        ("b/d/", set(&["b/d/e"])),
        ("c/x", set(&["c/x"])),
        ("nothing/", BTreeSet::new()),
    ];
    for (sub, want) in cases {
        let prefix = format!("{root}{sub}");
        let got = list_keys(target, &prefix).await;
        assert_eq!(
            got,
            want,
            "{}: list({prefix:?}) returned the wrong keys",
            ctx(target)
        );
    }
    // Sizes come with the listing.
    let stream = ok(target, "list", target.list(&format!("{root}b/")).await);
    let metas = ok(target, "listing", stream.try_collect::<Vec<_>>().await);
    for meta in metas {
        let i = names
            .iter()
            .position(|n| format!("{root}{n}") == meta.key)
            .unwrap_or(usize::MAX);
        assert_eq!(
            meta.size,
            i as u64 + 1,
            "{}: list reports the wrong size for {}",
            ctx(target),
            meta.key
        );
    }
    // The empty prefix lists the whole target; ours are among them.
    let all = list_keys(target, "").await;
    assert!(
        set(&names).is_subset(&all),
        "{}: list(\"\") misses keys that were put",
        ctx(target)
    );
}

/// `delete` removes an object; deleting it again, or a key never written, succeeds.
pub async fn check_delete(target: &dyn BackupTarget, base: &str) {
    let key = format!("{base}delete/object");
    ok(
        target,
        "put",
        target.put(&key, Bytes::from_static(b"x")).await,
    );
    ok(target, "delete", target.delete(&key).await);
    let head = ok(target, "head after delete", target.head(&key).await);
    assert!(
        head.is_none(),
        "{}: object still there after delete: {head:?}",
        ctx(target)
    );
    expect_kind(
        target,
        "get after delete",
        target.get(&key).await.map(|_| ()),
        &[ErrorKind::NotFound],
    );
    ok(
        target,
        "second delete of the same key (must be idempotent)",
        target.delete(&key).await,
    );
    ok(
        target,
        "delete of a key never written (must succeed)",
        target.delete(&format!("{base}delete/never")).await,
    );
}

/// `put_if_absent` creates once, then reports `AlreadyExists` and leaves the first
/// content in place.
pub async fn check_put_if_absent(target: &dyn BackupTarget, base: &str) {
    let key = format!("{base}locks/single");
    let first = ok(
        target,
        "put_if_absent",
        target
            .put_if_absent(&key, Bytes::from_static(b"first"))
            .await,
    );
    assert_eq!(
        first,
        PutOutcome::Created,
        "{}: put_if_absent on a new key",
        ctx(target)
    );
    let second = ok(
        target,
        "second put_if_absent",
        target
            .put_if_absent(&key, Bytes::from_static(b"second"))
            .await,
    );
    assert_eq!(
        second,
        PutOutcome::AlreadyExists,
        "{}: put_if_absent on an existing key",
        ctx(target)
    );
    let read = must_read(target, &key, "after put_if_absent").await;
    assert_eq!(
        read,
        b"first",
        "{}: put_if_absent overwrote an existing object",
        ctx(target)
    );
}

/// `tasks` concurrent `put_if_absent` calls on one key: exactly one is `Created`,
/// and the object holds that caller's bytes.
pub async fn check_put_if_absent_race(target: &dyn BackupTarget, base: &str, tasks: usize) {
    let key = format!("{base}locks/race");
    let attempts = (0..tasks).map(|i| {
        let key = key.clone();
        async move {
            let data = Bytes::from(format!("owner-{i}"));
            (i, target.put_if_absent(&key, data).await)
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut winners = Vec::new();
    for (i, result) in results {
        match ok(target, &format!("racing put_if_absent #{i}"), result) {
            PutOutcome::Created => winners.push(i),
            PutOutcome::AlreadyExists => {}
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{}: {tasks} racing put_if_absent calls, {} reported Created ({winners:?}); exactly one must",
        ctx(target),
        winners.len()
    );
    let read = must_read(target, &key, "after the race").await;
    assert_eq!(
        read,
        format!("owner-{}", winners[0]).as_bytes(),
        "{}: the object does not hold the winner's bytes",
        ctx(target)
    );
}

/// A stream of `total` bytes in many small pieces of varying size.
pub fn pieces(data: Bytes) -> ByteStream {
    let mut cuts = Vec::new();
    let mut at = 0usize;
    let mut step = 1usize;
    while at < data.len() {
        // 1 B … 64 KiB, varying, so part boundaries fall inside pieces.
        let len = (step * 7919) % 65_536 + 1;
        let end = (at + len).min(data.len());
        cuts.push(data.slice(at..end));
        at = end;
        step += 1;
    }
    stream::iter(cuts.into_iter().map(Ok)).boxed()
}

/// `put_stream` of `total` bytes in small pieces round-trips and reports its length;
/// an empty stream makes an empty object.
pub async fn check_put_stream(target: &dyn BackupTarget, base: &str, total: usize) {
    let key = format!("{base}stream/large");
    let data = Bytes::from(pattern(total, 3));
    let written = ok(
        target,
        "put_stream",
        target.put_stream(&key, pieces(data.clone())).await,
    );
    assert_eq!(
        written,
        total as u64,
        "{}: put_stream reported {written} bytes written, {total} were streamed",
        ctx(target)
    );
    let read = must_read(target, &key, "after put_stream").await;
    if read != data.as_ref() {
        let first_diff = read.iter().zip(data.iter()).position(|(a, b)| a != b);
        panic!(
            "{}: put_stream then get: {} bytes back for {total}, first difference at {first_diff:?}",
            ctx(target),
            read.len()
        );
    }
    let meta = ok(target, "head", target.head(&key).await);
    assert_eq!(
        meta.map(|m| m.size),
        Some(total as u64),
        "{}: head after put_stream",
        ctx(target)
    );

    let empty = format!("{base}stream/empty");
    let written = ok(
        target,
        "put_stream (empty)",
        target.put_stream(&empty, stream::empty().boxed()).await,
    );
    assert_eq!(
        written,
        0,
        "{}: empty put_stream reported {written} bytes",
        ctx(target)
    );
    let read = must_read(target, &empty, "after an empty put_stream").await;
    assert!(
        read.is_empty(),
        "{}: empty put_stream made {} bytes",
        ctx(target),
        read.len()
    );
}

/// A `put_stream` whose stream fails (early, and after `after` bytes) returns that
/// error and leaves no object — neither a new one nor a half-replaced old one.
pub async fn check_put_stream_failure(target: &dyn BackupTarget, base: &str, after: usize) {
    for (name, len) in [("early", 10usize), ("late", after)] {
        let key = format!("{base}stream/failed-{name}");
        let data = Bytes::from(pattern(len, 4));
        let failing = pieces(data)
            .chain(stream::once(async {
                Err(Error::new(ErrorKind::Interrupted, "the source broke"))
            }))
            .boxed();
        let err = expect_kind(
            target,
            &format!("put_stream with a failing stream ({name})"),
            target.put_stream(&key, failing).await,
            &[ErrorKind::Interrupted],
        );
        assert!(
            err.message().contains("the source broke"),
            "{}: put_stream did not return the stream's own error: {err}",
            ctx(target)
        );
        let head = ok(
            target,
            "head after a failed put_stream",
            target.head(&key).await,
        );
        assert!(
            head.is_none(),
            "{}: a failed put_stream ({name}, {len} bytes) left an object: {head:?}",
            ctx(target)
        );
        let listed = list_keys(target, &format!("{base}stream/failed-{name}")).await;
        assert!(
            listed.is_empty(),
            "{}: a failed put_stream left listed objects: {listed:?}",
            ctx(target)
        );
    }
    // Over an existing object: the old one must stay whole.
    let key = format!("{base}stream/failed-over-old");
    ok(
        target,
        "put",
        target.put(&key, Bytes::from_static(b"old")).await,
    );
    let failing = pieces(Bytes::from(pattern(after, 5)))
        .chain(stream::once(async {
            Err(Error::new(ErrorKind::Interrupted, "broken"))
        }))
        .boxed();
    expect_kind(
        target,
        "failing put_stream over an object",
        target.put_stream(&key, failing).await,
        &[ErrorKind::Interrupted],
    );
    let read = must_read(target, &key, "after a failed replacing put_stream").await;
    assert_eq!(
        read,
        b"old",
        "{}: a failed put_stream damaged the existing object",
        ctx(target)
    );
}

/// Readers racing a replacing `put` see the whole old or the whole new object.
pub async fn check_overwrite_is_atomic(target: &dyn BackupTarget, base: &str) {
    let key = format!("{base}atomic/object");
    let len = 512 * 1024;
    ok(
        target,
        "put",
        target.put(&key, Bytes::from(vec![b'a'; len])).await,
    );
    for round in 0..3u8 {
        let fill = b'b' + round;
        let writer = target.put(&key, Bytes::from(vec![fill; len]));
        let readers = futures::future::join_all((0..4).map(|_| read_all(target, &key)));
        let (written, reads) = futures::join!(writer, readers);
        ok(target, "replacing put", written);
        for read in reads {
            let read = ok(target, "get during a replacing put", read);
            let uniform = read
                .first()
                .is_some_and(|first| read.iter().all(|b| b == first));
            assert!(
                read.len() == len && uniform,
                "{}: a read during a replacing put saw {} bytes of mixed content",
                ctx(target),
                read.len()
            );
        }
        let last = must_read(target, &key, "after replacing").await;
        assert!(
            last.iter().all(|b| *b == fill),
            "{}: replacing put did not win",
            ctx(target)
        );
    }
}

/// Deletes everything under `base`.
pub async fn cleanup(target: &dyn BackupTarget, base: &str) {
    let keys = list_keys(target, base).await;
    for key in keys {
        ok(target, "cleanup delete", target.delete(&key).await);
    }
    let left = list_keys(target, base).await;
    assert!(
        left.is_empty(),
        "{}: objects left after deleting them all: {left:?}",
        ctx(target)
    );
}
