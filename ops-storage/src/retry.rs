//! `RetryTarget`: retries the idempotent calls of a target on temporary errors.
//!
//! Only whole calls are retried, and only calls whose inputs can be replayed:
//! `put` (the bytes are kept; writing the same content-addressed object twice is
//! harmless), `get`/`get_range`/`head`/`list` (reads) and `delete` (idempotent by
//! contract). `put_stream` is not retried: its stream is consumed by the first
//! attempt. A stream returned by `get` that fails half-way is not resumed either;
//! the caller retries the step it belongs to.
//!
//! `list` is different: a store listing is lazy (one request per page of 1,000
//! keys, sent as the stream is polled), so its errors arrive mid-stream, after the
//! call returned, where no retry could see them. `RetryTarget::list` therefore
//! collects the whole listing inside the retried call and restarts it from the
//! beginning on a temporary error, then hands out the collected entries. The price
//! is memory: every [`ObjectMeta`] of the listing is held at once (about 100 bytes
//! a key; the folders dbops lists — `packs/`, `backups/`, `locks/` — hold thousands
//! of keys, not millions), and the first entry arrives only after the last page.
//!
//! `put_if_absent` is retried with care: when an attempt failed with a temporary
//! error, the request may still have reached the store, so a later `AlreadyExists`
//! may be our own write. The object is then read back and, when it holds exactly our
//! bytes, the call reports `Created`. Lock objects carry a unique owner id, so equal
//! bytes mean the object is ours.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use ops_core::{BackupTarget, ByteStream, ObjectMeta, ObjectStream, PutOutcome, Result};
use rand::Rng;

/// Limits of [`RetryTarget`]'s retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in all, the first included (default 6).
    pub max_attempts: u32,
    /// Pause before the first retry (default 200 ms); doubles with each retry.
    pub initial_backoff: Duration,
    /// Longest pause between two attempts (default 10 s).
    pub max_backoff: Duration,
    /// No retry starts after this much time since the first attempt (default 60 s).
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    /// Sets the number of attempts, the first included (at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the first pause and the longest pause.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the time after which no retry starts.
    #[must_use]
    pub fn with_max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = max_elapsed;
        self
    }

    /// The pause before retry number `retry` (1-based): exponential, capped, with
    /// "equal jitter" (half fixed, half random) so that many clients that failed
    /// together do not retry together, yet every pause is at least half the step.
    fn backoff(&self, retry: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let half = step / 2;
        let jitter = rand::thread_rng().gen_range(0.0..=1.0);
        half + half.mul_f64(jitter)
    }
}

/// Wraps a target and retries its idempotent calls on temporary errors (see the
/// module docs for which calls and why). When the attempts or the time are used up,
/// the last error is returned marked [`ops_core::ErrorStatus::Persistent`].
pub struct RetryTarget {
    inner: Arc<dyn BackupTarget>,
    config: RetryConfig,
}

impl fmt::Debug for RetryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTarget")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl RetryTarget {
    /// Wraps `inner` with the default [`RetryConfig`].
    pub fn new(inner: Arc<dyn BackupTarget>) -> Self {
        Self {
            inner,
            config: RetryConfig::default(),
        }
    }

    /// Replaces the retry limits.
    #[must_use]
    pub fn with_config(mut self, config: RetryConfig) -> Self {
        self.config = config;
        self
    }

    /// The wrapped target.
    pub fn inner(&self) -> &Arc<dyn BackupTarget> {
        &self.inner
    }

    /// Runs `call` until it succeeds, fails permanently, or the limits are reached.
    /// `on_retry` sees every temporary error that leads to another attempt.
    async fn run<T, F, Fut>(&self, what: &str, key: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if !err.is_temporary() => return Err(err),
                Err(err) => {
                    let pause = self.config.backoff(attempt);
                    if attempt >= self.config.max_attempts
                        || start.elapsed() + pause > self.config.max_elapsed
                    {
                        return Err(err.persist().with_context("attempts", attempt));
                    }
                    tracing::debug!(
                        target = %self.inner.location(), object = key, call = what, attempt,
                        ?pause, error = %err, "retrying after a temporary error"
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Reads `key` whole, to compare it with what we tried to create.
    async fn holds(&self, key: &str, data: &Bytes) -> Result<bool> {
        let stream = self.run("get", key, || self.inner.get(key)).await?;
        let mut have = BytesMut::new();
        let mut stream = stream;
        while let Some(chunk) = stream.try_next().await? {
            // Stop as soon as it cannot be equal: a lock is small, a stranger's object
            // need not be read whole.
            if have.len() + chunk.len() > data.len() {
                return Ok(false);
            }
            have.extend_from_slice(&chunk);
        }
        Ok(have.as_ref() == data.as_ref())
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl BackupTarget for RetryTarget {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.run("put", key, || self.inner.put(key, data.clone()))
            .await
    }

    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64> {
        // The stream cannot be replayed: one attempt (see the module docs).
        self.inner.put_stream(key, data).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let ambiguous = AtomicBool::new(false);
        let outcome = self
            .run("put_if_absent", key, || {
                let attempt = self.inner.put_if_absent(key, data.clone());
                let ambiguous = &ambiguous;
                async move {
                    let result = attempt.await;
                    if matches!(&result, Err(e) if e.is_temporary()) {
                        ambiguous.store(true, Ordering::Relaxed);
                    }
                    result
                }
            })
            .await?;
        if outcome == PutOutcome::AlreadyExists
            && ambiguous.load(Ordering::Relaxed)
            && self.holds(key, &data).await?
        {
            return Ok(PutOutcome::Created);
        }
        Ok(outcome)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.run("get", key, || self.inner.get(key)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.run("get_range", key, || {
            self.inner.get_range(key, range.clone())
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.run("head", key, || self.inner.head(key)).await
    }

    /// Collects the listing with retries (see the module docs: a lazy listing fails
    /// mid-stream, so a retry restarts it from the beginning), then streams the
    /// collected entries.
    async fn list(&self, prefix: &str) -> Result<ObjectStream> {
        let entries = self
            .run("list", prefix, || async {
                self.inner
                    .list(prefix)
                    .await?
                    .try_collect::<Vec<ObjectMeta>>()
                    .await
            })
            .await?;
        Ok(futures::stream::iter(entries.into_iter().map(Ok)).boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.run("delete", key, || self.inner.delete(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultConfig, FaultyTarget, TargetOptions, open_target};

    fn fast(attempts: u32) -> RetryConfig {
        RetryConfig::default()
            .with_max_attempts(attempts)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2))
    }

    async fn memory_with(keys: usize) -> Arc<dyn BackupTarget> {
        let memory =
            open_target("memory://", &TargetOptions::default().with_retry(None)).expect("open");
        for i in 0..keys {
            memory
                .put(&format!("packs/{i:03}"), Bytes::from_static(b"x"))
                .await
                .expect("put");
        }
        memory.put("other", Bytes::new()).await.expect("put");
        memory
    }

    #[tokio::test]
    async fn list_restarts_a_listing_that_breaks_mid_stream() {
        let faulty = Arc::new(FaultyTarget::new(
            memory_with(50).await,
            FaultConfig::default()
                .with_broken_listing_rate(0.5)
                .with_seed(3),
        ));
        let target = RetryTarget::new(faulty.clone()).with_config(fast(20));
        for _ in 0..10 {
            let mut keys: Vec<String> = target
                .list("packs/")
                .await
                .expect("list")
                .map_ok(|meta| meta.key)
                .try_collect()
                .await
                .expect("a retried listing does not fail");
            keys.sort();
            let want: Vec<String> = (0..50).map(|i| format!("packs/{i:03}")).collect();
            assert_eq!(keys, want, "every key once");
        }
        assert!(faulty.injected_faults() > 0, "no listing broke");
    }

    #[tokio::test]
    async fn list_that_always_breaks_fails_persistently_after_the_attempts() {
        let faulty = Arc::new(FaultyTarget::new(
            memory_with(5).await,
            FaultConfig::default().with_broken_listing_rate(1.0),
        ));
        let target = RetryTarget::new(faulty.clone()).with_config(fast(4));
        let err = match target.list("packs/").await {
            Ok(_) => panic!("a listing that always breaks cannot succeed"),
            Err(err) => err,
        };
        assert_eq!(err.status(), ops_core::ErrorStatus::Persistent, "{err:?}");
        assert_eq!(faulty.calls(), 4, "one listing per attempt");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let config =
            RetryConfig::default().with_backoff(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let first = config.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let fourth = config.backoff(4);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            let late = config.backoff(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
