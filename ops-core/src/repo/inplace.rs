//! Restores over a live database, as the runbooks do them: a safety backup of what
//! the target holds first, then the sessions connected to it ended (or named, and the
//! restore refused), then the restore; a failed restore says which backup rolls back.
//!
//! A safety backup carries the tag [`SAFETY_TAG`]: `latest` never chooses it unless
//! the filter asks for that tag (so a second restore of `latest` does not quietly
//! restore the pre-restore state), and retention keeps it for a stated time instead
//! of counting it among the group's backups (see [`ForgetOptions::keep_safety`]).
//!
//! [`ForgetOptions::keep_safety`]: super::ForgetOptions::keep_safety

use std::time::Duration;

use serde::Serialize;

use super::{BackupOptions, Manifest, Repository, SAFETY_TAG};
use crate::engine::{DatabaseEngine, RestoreOptions, RestoreReport};
use crate::maintain::{
    EndMode, EndOptions, EndReport, Ended, Maintenance, SessionFilter, SessionKind,
};
use crate::{Error, ErrorKind, Result};

/// Options of [`Repository::restore_in_place`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InPlaceOptions {
    /// Back up the target first when the restore replaces what it holds (default on).
    pub safety_backup: bool,
    /// How the safety backup is taken (its tags gain [`SAFETY_TAG`]).
    pub backup: BackupOptions,
    /// End the client sessions connected to the target before replacing its content;
    /// without it, connected sessions stop the restore before anything changes.
    pub end_sessions: bool,
    /// Between cancelling and terminating those sessions (default 2 s).
    pub grace: Duration,
}

impl Default for InPlaceOptions {
    fn default() -> Self {
        Self {
            safety_backup: true,
            backup: BackupOptions::default(),
            end_sessions: false,
            grace: Duration::from_secs(2),
        }
    }
}

impl InPlaceOptions {
    /// Whether to take the safety backup.
    #[must_use]
    pub fn with_safety_backup(mut self, on: bool) -> Self {
        self.safety_backup = on;
        self
    }
    /// How the safety backup is taken.
    #[must_use]
    pub fn with_backup(mut self, backup: BackupOptions) -> Self {
        self.backup = backup;
        self
    }
    /// Whether to end the sessions connected to the target.
    #[must_use]
    pub fn with_end_sessions(mut self, on: bool) -> Self {
        self.end_sessions = on;
        self
    }
    /// The grace between cancel and terminate.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// What [`Repository::restore_in_place`] did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct InPlaceReport {
    /// The restore.
    pub restore: RestoreReport,
    /// The safety backup taken first, if the target held tables.
    pub safety_backup: Option<Manifest>,
    /// The sessions ended before the restore.
    pub ended: Option<EndReport>,
}

impl Repository {
    /// Restores `manifest` into the database `engine` is bound to, which may be in use.
    ///
    /// When `options.clean` replaces what the target holds: a safety backup of the
    /// target is taken first if it holds tables (unless `in_place.safety_backup` is
    /// off); then the client sessions connected to the target (found through
    /// `sessions`, the target's [`Maintenance`]) are ended, or, unless
    /// `in_place.end_sessions`, named in an error before anything changed. Without
    /// clean, or with create, this is [`Repository::restore`].
    ///
    /// # Errors
    /// [`ErrorKind::Locked`] naming the connected sessions; the safety backup's
    /// errors (then nothing was restored); the restore's errors, whose message then
    /// names the safety backup that rolls the target back.
    pub async fn restore_in_place(
        &self,
        manifest: &Manifest,
        engine: &dyn DatabaseEngine,
        sessions: &dyn Maintenance,
        options: &RestoreOptions,
        in_place: &InPlaceOptions,
    ) -> Result<InPlaceReport> {
        // A backup of another engine is refused before anything is touched.
        manifest.require_engine(engine.name())?;
        // Nothing to save or to end: no clean leaves the content alone (a target with
        // data is refused), and create makes a new database.
        if !options.clean || options.create {
            let restore = self.restore(manifest, engine, options).await?;
            return Ok(InPlaceReport {
                restore,
                safety_backup: None,
                ended: None,
            });
        }
        let database = engine.database();
        // Who is connected. Listing other users' sessions needs monitoring rights; a
        // user without them can still restore (the clean then waits a bounded time
        // for their locks), unless it was asked to end sessions, which needs more.
        let connected = match connected_sessions(sessions, &database).await {
            Ok(list) => Some(list),
            Err(e) if e.kind() == ErrorKind::PermissionDenied && !in_place.end_sessions => {
                tracing::warn!(
                    "cannot see the sessions connected to {database} before the restore: {e}"
                );
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(list) = connected.as_ref().filter(|l| !l.is_empty())
            && !in_place.end_sessions
        {
            return Err(connected_error(&database, list, None));
        }
        // Sessions are ended before the safety backup too: a lock one of them holds,
        // or waits for, would hold the backup's own locks up.
        let mut ended = if in_place.end_sessions {
            Some(
                end_all(sessions, &database, in_place.grace)
                    .await
                    .map_err(|e| e.during(format!("ending the sessions on {database}")))?,
            )
        } else {
            None
        };
        let safety_backup = if in_place.safety_backup {
            let held = engine.describe().await.map_err(|e| {
                e.during(format!(
                    "reading {database} to back it up before the restore"
                ))
            })?;
            if held.tables.is_empty() {
                None
            } else {
                let backup = in_place.backup.clone().with_tags([SAFETY_TAG.to_owned()]);
                let m = self.backup(engine, &backup).await.map_err(|e| {
                    e.during(format!(
                        "the safety backup of {database} before the restore (nothing was restored)"
                    ))
                })?;
                Some(m)
            }
        } else {
            None
        };
        // From here on an error names the safety backup, and is not worth a retry:
        // another attempt would back up a half-restored database as "the state
        // before".
        let after_safety = |e: Error| -> Error {
            let Some(safe) = &safety_backup else {
                return e;
            };
            let message = format!(
                "{}; safety backup {} holds {database} as it was before this restore (restore \
                 it with clean if the target was changed)",
                e.message(),
                safe.id
            );
            e.with_message(message)
                .with_context("safety_backup", &safe.id)
                .persist()
        };
        // Sessions are looked at again after the backup, which may have taken long:
        // those that connected meanwhile are ended when asked, else refused.
        if let Some(report) = ended.as_mut() {
            let again = end_all(sessions, &database, in_place.grace)
                .await
                .map_err(|e| {
                    after_safety(e.during(format!("ending the sessions on {database}")))
                })?;
            merge(report, again);
        }
        if connected.is_some() {
            let left = connected_sessions(sessions, &database)
                .await
                .map_err(&after_safety)?;
            if !left.is_empty() {
                return Err(after_safety(connected_error(
                    &database,
                    &left,
                    Some(in_place.end_sessions),
                )));
            }
        }
        let restore = self
            .restore(manifest, engine, options)
            .await
            .map_err(after_safety)?;
        Ok(InPlaceReport {
            restore,
            safety_backup,
            ended,
        })
    }
}

/// Ends the client sessions on `database`, in up to three rounds, and merges what
/// happened to each.
async fn end_all(sessions: &dyn Maintenance, database: &str, grace: Duration) -> Result<EndReport> {
    let filter = SessionFilter {
        database: Some(database.to_owned()),
        ..SessionFilter::default()
    };
    let options = EndOptions::new(EndMode::Terminate).with_grace(grace);
    let mut merged = EndReport::default();
    for _ in 0..3 {
        let round = sessions.end_sessions(&filter, &options).await?;
        let acted = round
            .sessions
            .iter()
            .any(|s| matches!(s.outcome, Ended::Cancelled | Ended::Terminated));
        merge(&mut merged, round);
        if !acted || connected_sessions(sessions, database).await?.is_empty() {
            break;
        }
    }
    Ok(merged)
}

/// Adds `round` to `merged`: a session's newest outcome wins over an earlier one,
/// except a refusal.
fn merge(merged: &mut EndReport, round: EndReport) {
    for s in round.sessions {
        match merged
            .sessions
            .iter_mut()
            .find(|m| m.session.id == s.session.id)
        {
            Some(m) if s.outcome != Ended::Refused => *m = s,
            Some(_) => {}
            None => merged.sessions.push(s),
        }
    }
}

/// The refusal naming the sessions connected to `database`; `after_ending` says
/// whether they were there after an attempt to end them.
fn connected_error(database: &str, list: &[String], after_ending: Option<bool>) -> Error {
    let what = match after_ending {
        None => "nothing was changed. Stop the application, or let the restore end them",
        Some(true) => {
            "they were still there after being ended (ending them needs the right to signal them)"
        }
        Some(false) => {
            "they connected during the safety backup; stop the application, or let the restore end them"
        }
    };
    Error::new(
        ErrorKind::Locked,
        format!(
            "{} session(s) are connected to database {database}, and replacing its content \
             would fail or wait behind them; {what}: {}",
            list.len(),
            list.join("; ")
        ),
    )
    .with_context("sessions", list.len())
}

/// The client sessions connected to `database`, other than the asking one, each as
/// `id (user, application, state)`.
async fn connected_sessions(sessions: &dyn Maintenance, database: &str) -> Result<Vec<String>> {
    let filter = SessionFilter {
        database: Some(database.to_owned()),
        ..SessionFilter::default()
    };
    let found = sessions
        .sessions(&filter)
        .await
        .map_err(|e| e.during(format!("listing the sessions on {database}")))?;
    Ok(found
        .iter()
        .filter(|s| s.kind == SessionKind::Client)
        .map(|s| {
            format!(
                "{} ({}, {}, {})",
                s.id,
                s.user.as_deref().unwrap_or("?"),
                s.application
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .unwrap_or("no application name"),
                s.state
            )
        })
        .collect())
}
