//! Repository probes: is the store reachable and writable right now.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use ops_core::{BackupTarget, HealthCheck, HealthReport, HealthStatus, Limits, Result};

/// Default limits of `repository_writable`'s round trip: 2 s warns, 10 s is critical.
pub const ROUND_TRIP: Limits = Limits::new(2.0, 10.0);

/// `repository_writable`: writes a small probe object under `health/`, reads it back
/// and removes it; the value is the round trip in seconds. A store that refuses or
/// fails any step is unhealthy (a measurement: backups would fail the same way). With
/// credentials that cannot delete (append-only) the probe object stays; it is tiny
/// and named by host.
#[derive(Debug)]
pub struct RepositoryWritable {
    target: Arc<dyn BackupTarget>,
    limits: Limits,
    timeout: std::time::Duration,
}

impl RepositoryWritable {
    /// A probe of `target` judged against `limits`.
    pub fn new(target: Arc<dyn BackupTarget>, limits: Limits) -> Self {
        Self {
            target,
            limits,
            timeout: std::time::Duration::from_secs(8),
        }
    }

    /// Gives up after `timeout` (default 8 s): a store that does not answer is
    /// unhealthy, the same as one that refuses.
    #[must_use]
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl HealthCheck for RepositoryWritable {
    fn name(&self) -> &str {
        "repository_writable"
    }

    async fn check(&self) -> Result<HealthReport> {
        let host = ops_core::repo::host_name();
        let key = format!("health/{host}-{:08x}", rand::random::<u32>());
        let body = Bytes::from(format!("dbops health probe from {host}\n"));
        let started = Instant::now();
        let location = self.target.location();
        let step = async {
            self.target
                .put(&key, body.clone())
                .await
                .map_err(|e| ("write", e))?;
            let back = self
                .target
                .get_range(&key, 0..body.len() as u64)
                .await
                .map_err(|e| ("read back", e))?;
            if back != body {
                return Err((
                    "read back",
                    ops_core::Error::corrupt(
                        "the probe object read back differs from what was written",
                    ),
                ));
            }
            if let Err(e) = self.target.delete(&key).await {
                tracing::debug!("the health probe object {key} could not be removed: {e}");
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(self.timeout, step).await {
            Ok(r) => r,
            Err(_) => Err((
                "get an answer for",
                ops_core::Error::new(
                    ops_core::ErrorKind::Unreachable,
                    format!("no answer within {:.1} s", self.timeout.as_secs_f64()),
                ),
            )),
        };
        match outcome {
            Ok(()) => {
                let secs = started.elapsed().as_secs_f64();
                let r = self.limits.judge(self.name(), secs, "seconds");
                let reason = format!(
                    "{location}: wrote, read back and removed a probe object; {}",
                    r.reason
                );
                Ok(r.with_reason(reason))
            }
            Err((what, e)) => Ok(HealthReport::new(
                self.name(),
                HealthStatus::Unhealthy,
                started.elapsed().as_secs_f64(),
                "seconds",
                format!("{location}: could not {what} a probe object: {e}"),
            )
            .with_limits(self.limits)),
        }
    }
}
