//! `HealthCheck`: one named check of a database or a repository.
//!
//! A check measures one value and judges it. "Could not check" (the server is down, the
//! query failed) is an error, not a status: the caller decides how an unreachable
//! server is reported, and a monitoring system can tell "bad" from "unknown".

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// The verdict of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Within limits.
    Healthy,
    /// Past the warning limit.
    Degraded,
    /// Past the critical limit.
    Unhealthy,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The check's name (`replication_lag`, `last_backup_age`).
    pub check: String,
    /// The verdict.
    pub status: HealthStatus,
    /// The measured value, in `unit`.
    pub value: f64,
    /// Unit of `value` (`seconds`, `bytes`, `ratio`, `count`).
    pub unit: String,
    /// Why this verdict, in words an operator can act on.
    pub reason: String,
}

impl HealthReport {
    /// A report.
    pub fn new(
        check: impl Into<String>,
        status: HealthStatus,
        value: f64,
        unit: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            check: check.into(),
            status,
            value,
            unit: unit.into(),
            reason: reason.into(),
        }
    }

    /// Judges `value` against a warning and a critical limit (higher is worse).
    pub fn judge(
        check: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
        warn: f64,
        critical: f64,
    ) -> Self {
        let unit = unit.into();
        let (status, reason) = if value >= critical {
            (
                HealthStatus::Unhealthy,
                format!("{value} {unit} is at or above the critical limit {critical}"),
            )
        } else if value >= warn {
            (
                HealthStatus::Degraded,
                format!("{value} {unit} is at or above the warning limit {warn}"),
            )
        } else {
            (
                HealthStatus::Healthy,
                format!("{value} {unit} is below the warning limit {warn}"),
            )
        };
        Self::new(check, status, value, unit, reason)
    }
}

/// One named health check.
#[async_trait]
pub trait HealthCheck: Send + Sync + Debug + 'static {
    /// The check's stable name.
    fn name(&self) -> &str;

    /// Measures and judges.
    ///
    /// # Errors
    /// The check could not be carried out (unreachable, query failed).
    async fn check(&self) -> Result<HealthReport>;
}
