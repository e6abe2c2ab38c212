//! `HealthCheck`: one named check of a database, a repository, a cache or a disk; the
//! limits that judge it; and the suite runner that runs many at once, each within its
//! time budget.
//!
//! A check measures one value and judges it. "Could not check" (the query failed, the
//! check ran out of time) is an error, not a status: the suite runner reports it as
//! [`HealthStatus::Unknown`], so a monitoring system can tell "bad" from "unknown". A
//! server that refuses the login or does not answer *is* a measurement: a login check
//! reports it as unhealthy, never as alive.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Result;

/// The verdict of a check. Not ordered by declaration: combine with
/// [`HealthStatus::worst`] (unhealthy outranks unknown outranks degraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Within limits.
    Healthy,
    /// Past the warning limit.
    Degraded,
    /// Past the critical limit.
    Unhealthy,
    /// Could not be checked (the check failed or ran out of time).
    Unknown,
}

impl HealthStatus {
    /// The status's name in output (`healthy`, `degraded`, `unhealthy`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }

    /// The Nagios plugin exit code: 0 ok, 1 warning, 2 critical, 3 unknown.
    pub fn nagios_code(self) -> u8 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Unhealthy => 2,
            HealthStatus::Unknown => 3,
        }
    }

    /// How bad, for combining: unhealthy outranks unknown (a known outage is worse
    /// than a doubt), which outranks degraded.
    fn severity(self) -> u8 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Unknown => 2,
            HealthStatus::Unhealthy => 3,
        }
    }

    /// The worse of two statuses.
    pub fn worst(self, other: HealthStatus) -> HealthStatus {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A warning and a critical limit. When `critical >= warn` a higher value is worse
/// (an age, a lag); when `critical < warn` a lower value is worse (free space).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// The warning limit.
    pub warn: f64,
    /// The critical limit.
    pub critical: f64,
}

impl Limits {
    /// Limits.
    pub const fn new(warn: f64, critical: f64) -> Self {
        Self { warn, critical }
    }

    /// True when a lower value is worse.
    pub fn lower_is_worse(&self) -> bool {
        self.critical < self.warn
    }

    /// The status of `value`.
    pub fn status(&self, value: f64) -> HealthStatus {
        let past = |limit: f64| {
            if self.lower_is_worse() {
                value <= limit
            } else {
                value >= limit
            }
        };
        if past(self.critical) {
            HealthStatus::Unhealthy
        } else if past(self.warn) {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }

    /// Judges `value` of `check`: a report with the status, the limits and a reason.
    pub fn judge(
        &self,
        check: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
    ) -> HealthReport {
        let unit = unit.into();
        let status = self.status(value);
        let (word, limit) = match status {
            HealthStatus::Unhealthy => ("at or past the critical limit", self.critical),
            HealthStatus::Degraded => ("at or past the warning limit", self.warn),
            _ => ("within the warning limit", self.warn),
        };
        let reason = format!("{} {unit} is {word} {}", show(value), show(limit));
        let mut r = HealthReport::new(check, status, value, unit, reason);
        r.warn = Some(self.warn);
        r.critical = Some(self.critical);
        r
    }
}

fn show(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Per-check limits that override each probe's defaults (`[health.thresholds]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    overrides: BTreeMap<String, Limits>,
}

impl Thresholds {
    /// Overrides the limits of check `check`.
    #[must_use]
    pub fn with(mut self, check: impl Into<String>, limits: Limits) -> Self {
        self.overrides.insert(check.into(), limits);
        self
    }

    /// The limits of `check`: the override, else `default`.
    pub fn limits(&self, check: &str, default: Limits) -> Limits {
        self.overrides.get(check).copied().unwrap_or(default)
    }

    /// The checks that have overrides.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.overrides.keys().map(String::as_str)
    }
}

/// How long a probe may take, part by part; the suite also bounds the whole check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeBudget {
    /// Connecting (TCP, TLS, login).
    pub connect: Duration,
    /// One statement.
    pub statement: Duration,
    /// Waiting for a lock.
    pub lock: Duration,
}

impl Default for ProbeBudget {
    /// 3 s to connect, 5 s per statement, 1 s for a lock.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            statement: Duration::from_secs(5),
            lock: Duration::from_secs(1),
        }
    }
}

impl ProbeBudget {
    /// The whole check's budget: connect + statement + one second.
    pub fn total(&self) -> Duration {
        self.connect + self.statement + Duration::from_secs(1)
    }
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
    /// Unit of `value` (`seconds`, `bytes`, `ratio`, `percent`, `count`).
    pub unit: String,
    /// Why this verdict, in words an operator can act on.
    pub reason: String,
    /// The warning limit it was judged against.
    #[serde(default)]
    pub warn: Option<f64>,
    /// The critical limit it was judged against.
    #[serde(default)]
    pub critical: Option<f64>,
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
            warn: None,
            critical: None,
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
        Limits::new(warn, critical).judge(check, value, unit)
    }

    /// Sets the limits shown with the report.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.warn = Some(limits.warn);
        self.critical = Some(limits.critical);
        self
    }

    /// Replaces the reason.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
}

/// One named health check.
#[async_trait]
pub trait HealthCheck: Send + Sync + Debug + 'static {
    /// The check's stable name (snake_case; it becomes a metric label).
    fn name(&self) -> &str;

    /// Measures and judges.
    ///
    /// # Errors
    /// The check could not be carried out (the query failed, no permission). A login
    /// check reports an unreachable server or refused credentials as a status instead.
    async fn check(&self) -> Result<HealthReport>;
}

/// A check as a suite runs it: which service it belongs to, and its time budget.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The service (`erp`, `cache`, `backups`, `storage`).
    pub service: String,
    /// The check.
    pub check: Arc<dyn HealthCheck>,
    /// The most time it may take; past it the check is `unknown`.
    pub budget: Duration,
}

impl Probe {
    /// A probe of `service` with the default budget ([`ProbeBudget::total`]).
    pub fn new(service: impl Into<String>, check: Arc<dyn HealthCheck>) -> Self {
        Self {
            service: service.into(),
            check,
            budget: ProbeBudget::default().total(),
        }
    }

    /// Sets the budget.
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }
}

/// One check's outcome in a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Its service.
    pub service: String,
    /// The verdict (`unknown` when it could not check).
    pub status: HealthStatus,
    /// The measured value (none when unknown).
    pub value: Option<f64>,
    /// Its unit.
    pub unit: String,
    /// The warning limit.
    pub warn: Option<f64>,
    /// The critical limit.
    pub critical: Option<f64>,
    /// Both limits together (`{"warn": …, "critical": …}`), when the check has them.
    pub thresholds: Option<Limits>,
    /// Why.
    pub reason: String,
    /// How long it took, in seconds.
    pub duration: f64,
}

/// A whole suite's outcome: the shape of an application's `/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HealthSummary {
    /// `ok`, `degraded` (warnings or unknowns) or `unhealthy`.
    pub status: String,
    /// When the suite ran.
    pub timestamp: DateTime<Utc>,
    /// Each service's worst status.
    pub services: BTreeMap<String, HealthStatus>,
    /// Every check.
    pub checks: Vec<CheckResult>,
}

impl HealthSummary {
    /// The worst status of all checks.
    pub fn worst(&self) -> HealthStatus {
        self.checks
            .iter()
            .fold(HealthStatus::Healthy, |w, c| w.worst(c.status))
    }

    /// The Nagios exit code: 2 when anything is critical, else 3 when anything could
    /// not be checked, else 1 for warnings, else 0.
    pub fn exit_code(&self) -> u8 {
        self.worst().nagios_code()
    }

    /// True when an HTTP `/health` should answer 200 (ok or degraded).
    pub fn serving(&self) -> bool {
        self.worst() != HealthStatus::Unhealthy
    }
}

/// Runs `probes` concurrently, each within its budget, and sums them up at `now`. A
/// check that fails or runs out of time is `unknown` with the reason; the others are
/// not held up by it.
pub async fn run_suite(probes: &[Probe], now: DateTime<Utc>) -> HealthSummary {
    let runs = probes.iter().map(|p| async move {
        let started = Instant::now();
        // Each check is a task of its own, so one that blocks its thread cannot hold
        // up the others or its own time limit.
        let check = Arc::clone(&p.check);
        let task = tokio::spawn(async move { check.check().await });
        let abort = task.abort_handle();
        let outcome = match tokio::time::timeout(p.budget, task).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(join)) => Ok(Err(crate::Error::internal(format!(
                "the check ended abnormally: {join}"
            )))),
            Err(elapsed) => {
                abort.abort();
                Err(elapsed)
            }
        };
        let duration = started.elapsed().as_secs_f64();
        let name = p.check.name().to_owned();
        match outcome {
            Ok(Ok(r)) => CheckResult {
                name,
                service: p.service.clone(),
                status: r.status,
                value: Some(r.value),
                unit: r.unit,
                warn: r.warn,
                critical: r.critical,
                thresholds: r.warn.zip(r.critical).map(|(w, c)| Limits::new(w, c)),
                reason: r.reason,
                duration,
            },
            Ok(Err(e)) => CheckResult {
                name,
                service: p.service.clone(),
                status: HealthStatus::Unknown,
                value: None,
                unit: String::new(),
                warn: None,
                critical: None,
                thresholds: None,
                reason: format!("could not check: {e}"),
                duration,
            },
            Err(_) => CheckResult {
                name,
                service: p.service.clone(),
                status: HealthStatus::Unknown,
                value: None,
                unit: String::new(),
                warn: None,
                critical: None,
                thresholds: None,
                reason: format!(
                    "could not check: no answer within {:.1} s",
                    p.budget.as_secs_f64()
                ),
                duration,
            },
        }
    });
    let checks = futures::future::join_all(runs).await;
    let mut services: BTreeMap<String, HealthStatus> = BTreeMap::new();
    for c in &checks {
        let s = services
            .entry(c.service.clone())
            .or_insert(HealthStatus::Healthy);
        *s = s.worst(c.status);
    }
    let worst = checks
        .iter()
        .fold(HealthStatus::Healthy, |w, c| w.worst(c.status));
    let status = match worst {
        HealthStatus::Healthy => "ok",
        HealthStatus::Degraded | HealthStatus::Unknown => "degraded",
        HealthStatus::Unhealthy => "unhealthy",
    };
    HealthSummary {
        status: status.to_owned(),
        timestamp: now,
        services,
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_both_ways() {
        let age = Limits::new(6.0, 8.0);
        assert_eq!(age.status(5.0), HealthStatus::Healthy);
        assert_eq!(age.status(6.0), HealthStatus::Degraded);
        assert_eq!(age.status(9.0), HealthStatus::Unhealthy);
        let free = Limits::new(20.0, 10.0);
        assert_eq!(free.status(50.0), HealthStatus::Healthy);
        assert_eq!(free.status(15.0), HealthStatus::Degraded);
        assert_eq!(free.status(10.0), HealthStatus::Unhealthy);
        let r = free.judge("disk_free", 15.0, "percent");
        assert_eq!((r.warn, r.critical), (Some(20.0), Some(10.0)));
        assert!(r.reason.contains("warning"), "{}", r.reason);
    }

    #[test]
    fn worst_and_exit_codes() {
        use HealthStatus as S;
        assert_eq!(S::Degraded.worst(S::Unknown), S::Unknown);
        assert_eq!(S::Unknown.worst(S::Unhealthy), S::Unhealthy);
        assert_eq!(S::Healthy.worst(S::Degraded), S::Degraded);
        assert_eq!(S::Unknown.nagios_code(), 3);
    }

    #[derive(Debug)]
    struct Fixed(HealthStatus, Duration, &'static str);

    #[async_trait]
    impl HealthCheck for Fixed {
        fn name(&self) -> &str {
            self.2
        }
        async fn check(&self) -> Result<HealthReport> {
            tokio::time::sleep(self.1).await;
            if self.2 == "broken" {
                return Err(crate::Error::invalid(
                    "permission denied for pg_stat_activity",
                ));
            }
            Ok(HealthReport::new(self.2, self.0, 1.0, "count", "fixed"))
        }
    }

    #[tokio::test]
    async fn a_hung_check_is_unknown_within_its_budget_and_the_rest_answer() {
        let probes = vec![
            Probe::new(
                "db",
                Arc::new(Fixed(HealthStatus::Healthy, Duration::ZERO, "login")),
            ),
            Probe::new(
                "db",
                Arc::new(Fixed(
                    HealthStatus::Healthy,
                    Duration::from_secs(60),
                    "hung",
                )),
            )
            .with_budget(Duration::from_millis(200)),
            Probe::new(
                "cache",
                Arc::new(Fixed(HealthStatus::Degraded, Duration::ZERO, "memory")),
            ),
            Probe::new(
                "cache",
                Arc::new(Fixed(HealthStatus::Healthy, Duration::ZERO, "broken")),
            ),
        ];
        let started = Instant::now();
        let s = run_suite(&probes, Utc::now()).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(s.checks[1].status, HealthStatus::Unknown);
        assert!(s.checks[1].reason.contains("no answer"));
        assert_eq!(s.checks[3].status, HealthStatus::Unknown);
        assert!(s.checks[3].reason.contains("permission denied"));
        assert_eq!(s.services["db"], HealthStatus::Unknown);
        assert_eq!(s.services["cache"], HealthStatus::Unknown);
        assert_eq!(s.status, "degraded");
        assert_eq!(s.exit_code(), 3);
        assert!(s.serving());
    }
}
