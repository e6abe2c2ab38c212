//! `FaultyTarget`: a test aid that makes a healthy target misbehave on purpose.
//!
//! Like object_store's `ThrottledStore`, it wraps a target and forwards every call;
//! unlike it, it also fails a share of the calls with temporary errors, so that the
//! retry layer and the code above it can be tested against a flaky store without a
//! flaky network. The choice of which calls fail is a pure function of the seed and
//! the call's sequence number: the same seed and the same order of calls give the
//! same faults.
//!
//! Not for production use.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use ops_core::{
    BackupTarget, ByteStream, Error, ErrorKind, ObjectMeta, ObjectStream, PutOutcome, Result,
};

/// What [`FaultyTarget`] does wrong, and how often.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FaultConfig {
    /// Share of calls (0.0–1.0) that fail with a temporary error before reaching the
    /// inner target.
    pub failure_rate: f64,
    /// Share of calls (0.0–1.0) that reach the inner target and succeed there, but
    /// report a temporary error as if the reply had been lost. Only for calls that
    /// return no stream (`put`, `put_if_absent`, `get_range`, `head`, `delete`).
    pub lost_reply_rate: f64,
    /// Share of `list` calls (0.0–1.0) whose stream yields at most one item and
    /// then fails with a temporary error, as a lazy store listing does when the
    /// request for a later page fails.
    pub broken_listing_rate: f64,
    /// Share of calls (0.0–1.0) that wait [`FaultConfig::delay`] first.
    pub delay_rate: f64,
    /// How long a delayed call waits.
    pub delay: Duration,
    /// Seed of the fault sequence.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.0,
            lost_reply_rate: 0.0,
            broken_listing_rate: 0.0,
            delay_rate: 0.0,
            delay: Duration::ZERO,
            seed: 0,
        }
    }
}

impl FaultConfig {
    /// Fails this share of calls before they reach the inner target.
    #[must_use]
    pub fn with_failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Loses the reply of this share of (successful) calls.
    #[must_use]
    pub fn with_lost_reply_rate(mut self, rate: f64) -> Self {
        self.lost_reply_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Breaks the stream of this share of `list` calls after its first item.
    #[must_use]
    pub fn with_broken_listing_rate(mut self, rate: f64) -> Self {
        self.broken_listing_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Delays this share of calls by `delay`.
    #[must_use]
    pub fn with_delay(mut self, rate: f64, delay: Duration) -> Self {
        self.delay_rate = rate.clamp(0.0, 1.0);
        self.delay = delay;
        self
    }

    /// Sets the seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// A target wrapper that injects temporary failures and delays (a test aid; see the
/// module docs).
pub struct FaultyTarget {
    inner: Arc<dyn BackupTarget>,
    config: FaultConfig,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl fmt::Debug for FaultyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyTarget")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("injected", &self.injected_faults())
            .finish()
    }
}

/// One call's draw of dice.
struct Fate {
    fail: bool,
    lose_reply: bool,
    break_listing: bool,
    delay: bool,
}

/// splitmix64: a tiny, well-mixed hash, so each (seed, call, die) gives an
/// independent-looking number without any shared RNG state.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(seed: u64, call: u64, die: u64) -> f64 {
    let bits = mix(seed ^ mix(call ^ mix(die)));
    // 53 random bits into [0, 1).
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl FaultyTarget {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BackupTarget>, config: FaultConfig) -> Self {
        Self {
            inner,
            config,
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// How many faults (failures and lost replies) were injected so far.
    pub fn injected_faults(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// How many calls were made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Draws this call's fate, waits if it is delayed, and fails it if it must fail.
    async fn enter(&self, call: &str, key: &str) -> Result<Fate> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let seed = self.config.seed;
        let fate = Fate {
            fail: unit(seed, n, 1) < self.config.failure_rate,
            lose_reply: unit(seed, n, 2) < self.config.lost_reply_rate,
            delay: unit(seed, n, 3) < self.config.delay_rate,
            break_listing: unit(seed, n, 4) < self.config.broken_listing_rate,
        };
        if fate.delay {
            tokio::time::sleep(self.config.delay).await;
        }
        if fate.fail {
            return Err(self.fault(call, key, "before the call"));
        }
        Ok(fate)
    }

    fn fault(&self, call: &str, key: &str, when: &str) -> Error {
        self.injected.fetch_add(1, Ordering::Relaxed);
        Error::new(
            ErrorKind::Unreachable,
            format!("injected fault in {call} ({when})"),
        )
        .with_context("object", key)
        .temporary()
    }

    /// Applies a lost reply to a finished call.
    fn leave<T>(&self, fate: &Fate, call: &str, key: &str, result: Result<T>) -> Result<T> {
        match result {
            Ok(_) if fate.lose_reply => Err(self.fault(call, key, "reply lost")),
            other => other,
        }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl BackupTarget for FaultyTarget {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let fate = self.enter("put", key).await?;
        let result = self.inner.put(key, data).await;
        self.leave(&fate, "put", key, result)
    }

    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64> {
        self.enter("put_stream", key).await?;
        self.inner.put_stream(key, data).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let fate = self.enter("put_if_absent", key).await?;
        let result = self.inner.put_if_absent(key, data).await;
        self.leave(&fate, "put_if_absent", key, result)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.enter("get", key).await?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let fate = self.enter("get_range", key).await?;
        let result = self.inner.get_range(key, range).await;
        self.leave(&fate, "get_range", key, result)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let fate = self.enter("head", key).await?;
        let result = self.inner.head(key).await;
        self.leave(&fate, "head", key, result)
    }

    async fn list(&self, prefix: &str) -> Result<ObjectStream> {
        let fate = self.enter("list", prefix).await?;
        let listing = self.inner.list(prefix).await?;
        if !fate.break_listing {
            return Ok(listing);
        }
        let fault = self.fault("list", prefix, "mid-stream");
        Ok(listing
            .take(1)
            .chain(futures::stream::once(async move { Err(fault) }))
            .boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let fate = self.enter("delete", key).await?;
        let result = self.inner.delete(key).await;
        self.leave(&fate, "delete", key, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_are_deterministic_and_fair() {
        let a: Vec<f64> = (0..1000).map(|n| unit(7, n, 1)).collect();
        let b: Vec<f64> = (0..1000).map(|n| unit(7, n, 1)).collect();
        assert_eq!(a, b);
        let hits = a.iter().filter(|x| **x < 0.05).count();
        assert!((25..=80).contains(&hits), "{hits} of 1000 below 5 %");
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
