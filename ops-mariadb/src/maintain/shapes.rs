//! Builders of the `#[non_exhaustive]` report types of `ops_core::maintain` that have
//! neither `Default` nor a constructor (so this crate cannot write them as struct
//! literals): a local struct with the same fields, turned into the core type through
//! its serde shape. The unit tests below build each one, so a field added in the core
//! shows here as a failing test, not as a wrong report.

use serde::Serialize;
use serde::de::DeserializeOwned;

use ops_core::maintain::{
    Action, Bloat, Confidence, Ended, EndedSession, IndexIssue, MaintainReport, ObjectKind,
    SessionInfo, SessionKind, StatementStats, StepOutcome,
};
use ops_core::{Error, Result};

fn convert<M: Serialize, T: DeserializeOwned>(m: &M, what: &str) -> Result<T> {
    serde_json::to_value(m)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            Error::internal(format!(
                "building a {what} (ops-core's fields changed? update maintain/shapes.rs): {e}"
            ))
        })
}

/// The fields of [`SessionInfo`].
#[derive(Serialize)]
pub(crate) struct Session {
    pub(crate) id: i64,
    pub(crate) kind: SessionKind,
    pub(crate) user: Option<String>,
    pub(crate) database: Option<String>,
    pub(crate) application: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) state: String,
    pub(crate) wait: Option<String>,
    pub(crate) query: Option<String>,
    pub(crate) query_seconds: Option<f64>,
    pub(crate) transaction_seconds: Option<f64>,
    pub(crate) state_seconds: Option<f64>,
    pub(crate) blocked_by: Vec<i64>,
}

impl Session {
    pub(crate) fn build(&self) -> Result<SessionInfo> {
        convert(self, "SessionInfo")
    }
}

/// An [`EndedSession`].
pub(crate) fn ended(session: SessionInfo, outcome: Ended) -> Result<EndedSession> {
    #[derive(Serialize)]
    struct M {
        session: SessionInfo,
        outcome: Ended,
    }
    convert(&M { session, outcome }, "EndedSession")
}

/// The fields of [`Bloat`].
#[derive(Serialize)]
pub(crate) struct BloatShape {
    pub(crate) schema: String,
    pub(crate) name: String,
    pub(crate) kind: ObjectKind,
    pub(crate) table: Option<String>,
    pub(crate) size_bytes: u64,
    pub(crate) wasted_bytes: Option<u64>,
    pub(crate) wasted_percent: Option<f64>,
    pub(crate) method: String,
    pub(crate) confidence: Confidence,
    pub(crate) note: Option<String>,
}

impl BloatShape {
    pub(crate) fn build(&self) -> Result<Bloat> {
        convert(self, "Bloat")
    }
}

/// The fields of [`IndexIssue`].
#[derive(Serialize)]
pub(crate) struct Issue {
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) index: String,
    pub(crate) size_bytes: u64,
    pub(crate) scans: Option<u64>,
    pub(crate) definition: Option<String>,
    pub(crate) detail: String,
}

impl Issue {
    pub(crate) fn build(&self) -> Result<IndexIssue> {
        convert(self, "IndexIssue")
    }
}

/// A [`StatementStats`].
pub(crate) fn statement(
    query: String,
    calls: u64,
    total_ms: f64,
    mean_ms: f64,
    rows: u64,
) -> Result<StatementStats> {
    #[derive(Serialize)]
    struct M {
        query: String,
        calls: u64,
        total_ms: f64,
        mean_ms: f64,
        rows: u64,
    }
    convert(
        &M {
            query,
            calls,
            total_ms,
            mean_ms,
            rows,
        },
        "StatementStats",
    )
}

/// The fields of [`MaintainStep`].
#[derive(Serialize, Clone, Debug)]
pub(crate) struct Step {
    pub(crate) object: String,
    pub(crate) sql: String,
    pub(crate) outcome: StepOutcome,
    pub(crate) message: Option<String>,
    pub(crate) size_before: Option<u64>,
    pub(crate) size_after: Option<u64>,
    pub(crate) lock_tries: u32,
    pub(crate) seconds: f64,
}

impl Step {
    /// A step on `object` running `sql`, ending in `outcome`.
    pub(crate) fn new(object: String, sql: String, outcome: StepOutcome) -> Self {
        Self {
            object,
            sql,
            outcome,
            message: None,
            size_before: None,
            size_after: None,
            lock_tries: 0,
            seconds: 0.0,
        }
    }

    pub(crate) fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// A [`MaintainReport`].
pub(crate) fn report(action: Action, dry_run: bool, steps: &[Step]) -> Result<MaintainReport> {
    #[derive(Serialize)]
    struct M<'a> {
        action: Action,
        dry_run: bool,
        steps: &'a [Step],
        dropped_leftovers: Vec<String>,
    }
    convert(
        &M {
            action,
            dry_run,
            steps,
            dropped_leftovers: Vec::new(),
        },
        "MaintainReport",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_builds_its_core_type() {
        let s = Session {
            id: 7,
            kind: SessionKind::Client,
            user: Some("app".into()),
            database: None,
            application: None,
            client: None,
            state: "idle in transaction".into(),
            wait: None,
            query: None,
            query_seconds: None,
            transaction_seconds: Some(1.5),
            state_seconds: Some(2.0),
            blocked_by: vec![3],
        }
        .build()
        .expect("session");
        assert_eq!((s.id, s.blocked_by.as_slice()), (7, &[3][..]));
        let e = ended(s, Ended::Terminated).expect("ended");
        assert_eq!(e.outcome, Ended::Terminated);
        let b = BloatShape {
            schema: "d".into(),
            name: "t".into(),
            kind: ObjectKind::Table,
            table: None,
            size_bytes: 10,
            wasted_bytes: Some(1),
            wasted_percent: Some(10.0),
            method: "m".into(),
            confidence: Confidence::Approximate,
            note: None,
        }
        .build()
        .expect("bloat");
        assert_eq!(b.wasted_bytes, Some(1));
        let i = Issue {
            schema: "d".into(),
            table: "t".into(),
            index: "i".into(),
            size_bytes: 0,
            scans: None,
            definition: None,
            detail: "x".into(),
        }
        .build()
        .expect("issue");
        assert_eq!(i.index, "i");
        let st = statement("SELECT ?".into(), 2, 3.0, 1.5, 4).expect("statement");
        assert_eq!(st.calls, 2);
        let step = Step::new("d.t".into(), "OPTIMIZE TABLE t".into(), StepOutcome::Done)
            .with_message("rebuilt");
        let r = report(Action::Optimize, false, &[step]).expect("report");
        assert_eq!(r.action, Action::Optimize);
        assert_eq!(r.steps[0].message.as_deref(), Some("rebuilt"));
        assert!(r.ok());
    }
}
