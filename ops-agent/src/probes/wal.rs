//! The repository's side of point-in-time recovery: how old the newest archived WAL
//! file is, and whether a segment is missing between the oldest base backup and the
//! newest segment. (The server's side, `pg_stat_archiver`, is the PostgreSQL
//! `wal_archiver` check.)

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use ops_core::{HealthCheck, HealthReport, HealthStatus, Limits, Result};

use crate::config::Config;

/// Default limits of `wal_archive_age`: the newest archived file under 1 h old,
/// critical at 4 h (a server with `archive_timeout` switches segments at least that
/// often even when idle).
pub const WAL_ARCHIVE_AGE: Limits = Limits::new(3600.0, 4.0 * 3600.0);
/// The check's name.
pub const NAME: &str = "wal_archive_age";

/// Judges the archived series of one repository at `now`: a missing segment is
/// unhealthy, naming the first ones; otherwise the age of the newest archived file.
/// A repository without WAL is healthy and says so.
pub fn judge(
    repository: &str,
    states: &[dbops::postgres::wal::ArchiveState],
    now: DateTime<Utc>,
    limits: Limits,
) -> HealthReport {
    if let Some(s) = states.iter().find(|s| !s.missing.is_empty()) {
        let first: Vec<&str> = s.missing.iter().take(5).map(String::as_str).collect();
        return HealthReport::new(
            NAME,
            HealthStatus::Unhealthy,
            s.missing.len() as f64,
            "count",
            format!(
                "the WAL archive {} of repository {repository} misses {} segment(s) after {}: {}{}; \
                 a restore cannot cross the gap: take a new base backup",
                s.series,
                s.missing.len(),
                s.checked_from.as_deref().unwrap_or("-"),
                first.join(", "),
                if s.missing.len() > first.len() { ", …" } else { "" }
            ),
        )
        .with_limits(limits);
    }
    let newest = states
        .iter()
        .filter_map(|s| s.last_archived.map(|t| (t, s)))
        .max_by_key(|(t, _)| *t);
    let Some((at, s)) = newest else {
        return HealthReport::new(
            NAME,
            HealthStatus::Healthy,
            0.0,
            "seconds",
            format!("repository {repository} holds no WAL archive"),
        )
        .with_limits(limits);
    };
    let age = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
    let judged = limits.judge(NAME, age, "seconds");
    let reason = format!(
        "the newest WAL of {} in repository {repository} ({}) was archived {:.0} s ago; {}",
        s.series,
        s.last.as_deref().unwrap_or("-"),
        age,
        judged.reason
    );
    judged.with_reason(reason)
}

/// `wal_archive_age` of one repository of the config.
#[derive(Debug)]
pub struct WalArchiveCheck {
    /// The repository's name in the config.
    pub repository: String,
    /// The config.
    pub config: Arc<Config>,
    /// Repositories opened once for the suite.
    pub repositories: crate::runner::OpenRepositories,
    /// Limits.
    pub limits: Limits,
}

#[async_trait]
impl HealthCheck for WalArchiveCheck {
    fn name(&self) -> &str {
        NAME
    }

    async fn check(&self) -> Result<HealthReport> {
        let repo = self
            .repositories
            .get(&self.config, &self.repository)
            .await?;
        let states = dbops::postgres::wal::check_archive(&repo).await?;
        Ok(judge(&self.repository, &states, Utc::now(), self.limits))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dbops::postgres::wal::ArchiveState;

    fn state(missing: &[&str], last: Option<&str>) -> ArchiveState {
        ArchiveState {
            series: "pg-1".into(),
            files: 3,
            stored_bytes: 100,
            first: Some("000000010000000000000001".into()),
            last: Some("000000010000000000000004".into()),
            last_archived: last
                .map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)),
            checked_from: Some("000000010000000000000001".into()),
            missing: missing.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn gaps_are_unhealthy_and_age_is_judged() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let gap = judge(
            "main",
            &[state(
                &["000000010000000000000002"],
                Some("2026-12-03T11:59:00Z"),
            )],
            now,
            WAL_ARCHIVE_AGE,
        );
        assert_eq!(gap.status, HealthStatus::Unhealthy);
        assert!(
            gap.reason.contains("000000010000000000000002"),
            "{}",
            gap.reason
        );
        let fresh = judge(
            "main",
            &[state(&[], Some("2026-12-03T11:59:00Z"))],
            now,
            WAL_ARCHIVE_AGE,
        );
        assert_eq!(fresh.status, HealthStatus::Healthy);
        let old = judge(
            "main",
            &[state(&[], Some("2026-12-03T10:30:00Z"))],
            now,
            WAL_ARCHIVE_AGE,
        );
        assert_eq!(old.status, HealthStatus::Degraded);
        let none = judge("main", &[], now, WAL_ARCHIVE_AGE);
        assert_eq!(none.status, HealthStatus::Healthy);
    }
}
