//! `RetentionPolicy`: which backups to keep, as a pure function of the backups and
//! the current time, with the reasons for every decision.
//!
//! Time comes in as an argument so that tests need no clock. Nothing here touches a
//! repository: `forget` applies the decisions, `prune` removes what is unreferenced.

use std::collections::BTreeSet;
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a policy needs to know of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The backup id.
    pub id: String,
    /// When the backup's snapshot was taken.
    pub time: DateTime<Utc>,
    /// Its tags.
    pub tags: BTreeSet<String>,
    /// False for a failed or incomplete backup: it never counts towards a rule.
    pub complete: bool,
}

/// Keep or forget one backup, with the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDecision {
    /// The backup id.
    pub id: String,
    /// When the backup was taken.
    pub time: DateTime<Utc>,
    /// True to keep.
    pub keep: bool,
    /// Every rule that keeps it, or why it is forgotten.
    pub reasons: Vec<String>,
}

/// Decides which backups to keep.
pub trait RetentionPolicy: Send + Sync + Debug + 'static {
    /// One decision per backup, in the order of `backups`.
    fn apply(&self, backups: &[BackupSummary], now: DateTime<Utc>) -> Vec<RetentionDecision>;
}
