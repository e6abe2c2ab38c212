#![doc = include_str!("../README.md")]

pub mod access;
pub mod digest;
pub mod engine;
pub mod ephemeral;
pub mod error;
pub mod health;
pub mod jobs;
pub mod maintain;
pub mod repo;
pub mod retention;
pub mod schedule;
pub mod secret;
pub mod target;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use access::{FileAccess, read_password_file, read_private_file};
pub use engine::{
    DatabaseEngine, DumpOptions, DumpReport, DumpSink, GlobalsOptions, GlobalsPhase, GlobalsReport,
    GlobalsRestoreOptions, RestoreOptions, RestoreReport, ServerInfo, StreamRole, StreamSource,
    StreamSpec, StreamSummary, StreamWriter, TableFilter, TableInfo, TableRef,
};
pub use ephemeral::EphemeralServer;
pub use error::{Error, ErrorKind, ErrorStatus, Result};
pub use health::{
    CheckResult, HealthCheck, HealthReport, HealthStatus, HealthSummary, Limits, Probe,
    ProbeBudget, Thresholds, run_suite,
};
pub use jobs::{Event, EventKind, JobKind, Notifier, RunRecord, RunStatus, Trigger};
pub use retention::{BackupSummary, RetentionDecision, RetentionPolicy};
pub use secret::{Secret, redact_url};
pub use target::{BackupTarget, ByteStream, ObjectMeta, ObjectStream, PutOutcome};

// Third-party crates whose types appear in the public API (timestamps, byte buffers,
// streams, the async traits' macro), so that users name exactly the versions we use.
pub use async_trait;
pub use bytes;
pub use chrono;
pub use futures;

/// The dbops version, recorded in every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
