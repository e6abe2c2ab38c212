//! Jobs as data: what a run of a scheduled job records, the events it raises, and the
//! `Notifier` trait that delivers them.
//!
//! Only models and pure decisions live here. Running a job (hooks, the backup itself,
//! the history store, HTTP and SMTP deliveries) is an adapter's work (`ops-agent`).

use std::fmt::{self, Debug};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobKind {
    /// Take a backup of a database into a repository.
    Backup,
    /// Check backups (structure, data, or by restoring them).
    Verify,
    /// Apply retention rules.
    Forget,
    /// Delete data no backup needs.
    Prune,
    /// Copy backups to another repository.
    Copy,
    /// Restore a backup into a database; over one in use (clean), a safety backup is
    /// taken first and connected sessions are ended or named. Its `before`/`after`
    /// hooks switch the application's maintenance mode on and always off again.
    Restore,
    /// Run the health checks; a critical or unknown result fails the run (and
    /// notifies), so "no backup in 8 hours" is heard even when no backup job runs.
    Health,
    /// A maintenance action (vacuum, analyze, reindex, optimize, check, repair) on a
    /// database's tables, heavy locks taken in short steps.
    Maintenance,
    /// Run integrity checks (queries that must return no rows); a violation fails the
    /// run and notifies.
    Integrity,
    /// Move old rows into an archive table in batches (resumable).
    Archive,
}

impl JobKind {
    /// Every kind, in the order the config documents them.
    pub const ALL: [JobKind; 10] = [
        JobKind::Backup,
        JobKind::Verify,
        JobKind::Forget,
        JobKind::Prune,
        JobKind::Copy,
        JobKind::Restore,
        JobKind::Health,
        JobKind::Maintenance,
        JobKind::Integrity,
        JobKind::Archive,
    ];

    /// The kind's name in configs and output.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Verify => "verify",
            JobKind::Forget => "forget",
            JobKind::Prune => "prune",
            JobKind::Copy => "copy",
            JobKind::Restore => "restore",
            JobKind::Health => "health",
            JobKind::Maintenance => "maintenance",
            JobKind::Integrity => "integrity",
            JobKind::Archive => "archive",
        }
    }

    /// Parses a kind's name.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] naming the kinds there are.
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown job kind '{text}': use one of {}",
                    Self::ALL.map(JobKind::as_str).join(", ")
                ))
            })
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// Still running (or the process running it died; the next start marks it failed).
    Running,
    /// The job did its work.
    Success,
    /// The job failed (after its retries), timed out, or was cancelled.
    Failure,
    /// The run did not happen: its previous run was still going, a `before` hook asked
    /// to skip (exit 75), another host took the slot, or the daemon was down.
    Skipped,
}

impl RunStatus {
    /// The status's name in output and in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failure => "failure",
            RunStatus::Skipped => "skipped",
        }
    }

    /// Parses a status's name.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for anything else.
    pub fn parse(text: &str) -> Result<Self> {
        [
            RunStatus::Running,
            RunStatus::Success,
            RunStatus::Failure,
            RunStatus::Skipped,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| Error::invalid(format!("unknown run status '{text}'")))
    }

    /// True for a run that did or failed to do its work (not running, not skipped).
    pub fn is_outcome(self) -> bool {
        matches!(self, RunStatus::Success | RunStatus::Failure)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Trigger {
    /// Its slot in the schedule came.
    Schedule,
    /// The slot passed while the daemon was down; this is the one catch-up run.
    CatchUp,
    /// Asked for by hand (`dbops run`).
    Manual,
}

impl Trigger {
    /// The trigger's name in output and in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }

    /// Parses a trigger's name.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for anything else.
    pub fn parse(text: &str) -> Result<Self> {
        [Trigger::Schedule, Trigger::CatchUp, Trigger::Manual]
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| Error::invalid(format!("unknown run trigger '{text}'")))
    }
}

/// One run of a job, as the run history keeps it. Holds no secret: the error is the
/// library's message, which never carries one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// The history's id for the run (0 before it is stored).
    pub id: i64,
    /// The job's name in the config.
    pub job: String,
    /// What the job does.
    pub kind: JobKind,
    /// Why it ran.
    pub trigger: Trigger,
    /// The schedule slot it belongs to (none for a manual run).
    pub slot: Option<DateTime<Utc>>,
    /// When it started (for a skipped run: when it was skipped).
    pub started: DateTime<Utc>,
    /// When it ended.
    pub ended: Option<DateTime<Utc>>,
    /// How it ended.
    pub status: RunStatus,
    /// Attempts made (1 without retries).
    pub attempts: u32,
    /// The backup it made, for a backup job.
    pub backup_id: Option<String>,
    /// Bytes read from the source.
    pub bytes: Option<u64>,
    /// Bytes not already in the repository.
    pub new_bytes: Option<u64>,
    /// Bytes written to the store after compression.
    pub stored_bytes: Option<u64>,
    /// Rows in the backup (all tables).
    #[serde(default)]
    pub rows: Option<u64>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// The kind of the error that failed it (`unreachable`, `corrupt`, …), so that a
    /// caller can tell a server that was down from damage found.
    #[serde(default)]
    pub error_kind: Option<String>,
    /// For a verify run: how deep it checked (`structure`, `read_data`, or `restore`
    /// when the newest backup was proven by a real restore).
    #[serde(default)]
    pub verified: Option<String>,
    /// The host that ran it.
    pub host: String,
    /// The process that ran it.
    pub pid: u32,
}

impl RunRecord {
    /// A run starting now (status `running`).
    pub fn start(
        job: impl Into<String>,
        kind: JobKind,
        trigger: Trigger,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: 0,
            job: job.into(),
            kind,
            trigger,
            slot: None,
            started: now,
            ended: None,
            status: RunStatus::Running,
            attempts: 0,
            backup_id: None,
            bytes: None,
            new_bytes: None,
            stored_bytes: None,
            rows: None,
            error: None,
            error_kind: None,
            verified: None,
            host: crate::repo::host_name(),
            pid: std::process::id(),
        }
    }

    /// Sets the schedule slot.
    pub fn with_slot(mut self, slot: Option<DateTime<Utc>>) -> Self {
        self.slot = slot;
        self
    }

    /// Ends the run with `status` and, for failures and skips, why.
    pub fn finish(&mut self, status: RunStatus, error: Option<String>, now: DateTime<Utc>) {
        self.status = status;
        self.error = error;
        self.ended = Some(now);
    }

    /// Seconds from start to end (0 while running).
    pub fn duration_secs(&self) -> f64 {
        self.ended
            .map(|e| (e - self.started).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0)
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A run started.
    Start,
    /// A run succeeded.
    Success,
    /// A run failed after a success (or as the job's first run): the start of a streak.
    Failure,
    /// A run failed again while the job was already failing.
    RepeatedFailure,
    /// The first success after one or more failures.
    Recovered,
}

impl EventKind {
    /// Every event, in the order the config documents them.
    pub const ALL: [EventKind; 5] = [
        EventKind::Start,
        EventKind::Success,
        EventKind::Failure,
        EventKind::RepeatedFailure,
        EventKind::Recovered,
    ];

    /// The event's name in configs and message bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Success => "success",
            EventKind::Failure => "failure",
            EventKind::RepeatedFailure => "repeated_failure",
            EventKind::Recovered => "recovered",
        }
    }

    /// Parses an event's name.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] naming the events there are.
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown event '{text}': use one of {}",
                    Self::ALL.map(EventKind::as_str).join(", ")
                ))
            })
    }

    /// The events a finished run raises, given how the job's previous finished run
    /// ended (`None`: no earlier run). A success raises `success`, and also
    /// `recovered` when the previous run failed; a failure raises `failure` when it
    /// starts a streak and `repeated_failure` when the job was already failing, so that
    /// a channel subscribed to `failure` and `recovered` hears once per incident.
    pub fn for_outcome(previous: Option<RunStatus>, now: RunStatus) -> Vec<EventKind> {
        let was_failing = previous == Some(RunStatus::Failure);
        match now {
            RunStatus::Success if was_failing => vec![EventKind::Success, EventKind::Recovered],
            RunStatus::Success => vec![EventKind::Success],
            RunStatus::Failure if was_failing => vec![EventKind::RepeatedFailure],
            RunStatus::Failure => vec![EventKind::Failure],
            RunStatus::Running | RunStatus::Skipped => Vec::new(),
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One notification: what happened, and the run it happened to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The run (for `start`: as it began).
    pub run: RunRecord,
}

impl Event {
    /// An event about `run`.
    pub fn new(kind: EventKind, run: RunRecord) -> Self {
        Self { kind, run }
    }

    /// A one-line summary for chat and mail subjects:
    /// `dbops: job erp-backup (backup) failed after 2 attempts: …`.
    pub fn summary(&self) -> String {
        let r = &self.run;
        let what = match self.kind {
            EventKind::Start => "started".to_owned(),
            EventKind::Success => format!("succeeded in {:.1} s", r.duration_secs()),
            EventKind::Recovered => format!("recovered: succeeded in {:.1} s", r.duration_secs()),
            EventKind::Failure | EventKind::RepeatedFailure => {
                let again = if self.kind == EventKind::RepeatedFailure {
                    " again"
                } else {
                    ""
                };
                let attempts = if r.attempts > 1 {
                    format!(" after {} attempts", r.attempts)
                } else {
                    String::new()
                };
                format!(
                    "failed{again}{attempts}: {}",
                    r.error.as_deref().unwrap_or("no reason recorded")
                )
            }
        };
        let backup = r
            .backup_id
            .as_deref()
            .map(|b| format!(" (backup {b})"))
            .unwrap_or_default();
        format!("dbops: job {} ({}) {what}{backup}", r.job, r.kind)
    }

    /// The JSON body webhooks receive: job, kind, event, status, started, ended,
    /// duration, backup id, sizes, error, host.
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.run;
        serde_json::json!({
            "event": self.kind,
            "job": r.job,
            "kind": r.kind,
            "status": r.status,
            "trigger": r.trigger,
            "slot": r.slot,
            "started": r.started,
            "ended": r.ended,
            "duration_seconds": r.duration_secs(),
            "attempts": r.attempts,
            "backup_id": r.backup_id,
            "bytes": r.bytes,
            "new_bytes": r.new_bytes,
            "stored_bytes": r.stored_bytes,
            "error": r.error,
            "host": r.host,
            "summary": self.summary(),
        })
    }
}

/// Delivers events somewhere (a webhook, Slack, e-mail, a command, a dead-man ping).
///
/// An implementation bounds its own time (a timeout per delivery, a few retries) and
/// returns an error when delivery failed; the caller records the failure and never
/// fails the job for it. `Debug` must not print secrets (webhook URLs are secrets).
#[async_trait]
pub trait Notifier: Send + Sync + Debug + 'static {
    /// The notifier's name in the config (`ops`).
    fn name(&self) -> &str;

    /// Where it delivers, for messages, with every secret redacted.
    fn destination(&self) -> String;

    /// Whether it wants events of this kind (its `on` list).
    fn wants(&self, kind: EventKind) -> bool;

    /// Delivers one event.
    ///
    /// # Errors
    /// The delivery failed after the notifier's retries; the message says where and
    /// why, without secrets.
    async fn notify(&self, event: &Event) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fire_once_per_incident() {
        use EventKind as E;
        use RunStatus as S;
        assert_eq!(EventKind::for_outcome(None, S::Failure), vec![E::Failure]);
        assert_eq!(
            EventKind::for_outcome(Some(S::Failure), S::Failure),
            vec![E::RepeatedFailure]
        );
        assert_eq!(
            EventKind::for_outcome(Some(S::Failure), S::Success),
            vec![E::Success, E::Recovered]
        );
        assert_eq!(
            EventKind::for_outcome(Some(S::Success), S::Success),
            vec![E::Success]
        );
        assert_eq!(
            EventKind::for_outcome(Some(S::Success), S::Failure),
            vec![E::Failure]
        );
        assert!(EventKind::for_outcome(None, S::Skipped).is_empty());
    }

    #[test]
    fn names_round_trip() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::parse(k.as_str()).ok(), Some(k));
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()).ok(), Some(k));
        }
        assert!(JobKind::parse("bakup").is_err());
    }

    #[test]
    fn notifier_is_object_safe() {
        fn takes(_: Option<std::sync::Arc<dyn Notifier>>) {}
        takes(None);
    }
}
