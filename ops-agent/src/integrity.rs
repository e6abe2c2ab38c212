//! The config's integrity checks (`[checks.NAME]`: queries that must return no rows),
//! run against their databases, and the checks that apply to a backup's database
//! (run on its restored copy by a restore proof).
//!
//! What must not live here: running one query read-only (each engine's
//! `Maintenance::query_rows`) and judging its rows (`ops_core::maintain`).

use serde::Serialize;

use ops_core::maintain::{IntegrityCheck, IntegrityResult};
use ops_core::repo::Manifest;
use ops_core::{Error, HealthStatus, Result};

use crate::config::{Config, suggest};

/// One check's verdict and the database it ran on.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CheckOutcome {
    /// The `[databases.NAME]` it ran on.
    pub database: String,
    /// The verdict.
    #[serde(flatten)]
    pub result: IntegrityResult,
}

/// The verdicts of a run of integrity checks.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct IntegrityRun {
    /// One per check, in name order.
    pub checks: Vec<CheckOutcome>,
}

impl IntegrityRun {
    /// The worst verdict (a violation outranks a check that could not run).
    pub fn status(&self) -> HealthStatus {
        self.checks
            .iter()
            .fold(HealthStatus::Healthy, |w, c| w.worst(c.result.status))
    }

    /// 0 all pass, 1 a warning, 2 an error, 3 a check could not run (and none failed).
    pub fn exit_code(&self) -> u8 {
        self.status().nagios_code()
    }
}

/// Runs the checks named in `names` (all when empty), only those of `database` when
/// given, one after another, each on a fresh read-only session of its database.
///
/// # Errors
/// [`ops_core::ErrorKind::InvalidInput`] for an unknown check name or when there is
/// no check to run. A check that fails or cannot run is a verdict, not an error.
pub async fn run(
    config: &Config,
    names: &[String],
    database: Option<&str>,
) -> Result<IntegrityRun> {
    let known: Vec<&str> = config.checks.keys().map(String::as_str).collect();
    for n in names {
        if !config.checks.contains_key(n) {
            let hint = suggest(n, &known)
                .map(|k| format!("; did you mean '{k}'?"))
                .unwrap_or_default();
            return Err(Error::invalid(format!(
                "no integrity check named '{n}' in the config{hint} (checks: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    let chosen: Vec<(&String, &crate::config::CheckConfig)> = config
        .checks
        .iter()
        .filter(|(n, _)| names.is_empty() || names.contains(n))
        .filter(|(_, c)| database.is_none_or(|d| c.database == d))
        .collect();
    if chosen.is_empty() {
        return Err(Error::invalid(
            "no integrity checks to run: add [checks.NAME] sections (database, sql, severity) to the config",
        ));
    }
    let mut run = IntegrityRun::default();
    for (_, c) in chosen {
        let result = match config.databases.get(&c.database).map(|d| d.maintenance()) {
            Some(Ok(db)) => c.check.run(db.as_ref()).await,
            Some(Err(e)) => unrunnable(&c.check, e.to_string()),
            None => unrunnable(
                &c.check,
                format!("no [databases.{}] in the config", c.database),
            ),
        };
        run.checks.push(CheckOutcome {
            database: c.database.clone(),
            result,
        });
    }
    Ok(run)
}

fn unrunnable(check: &IntegrityCheck, why: String) -> IntegrityResult {
    IntegrityResult::unknown(&check.name, why)
}

/// The checks of the config's databases that `manifest` is a backup of (same engine
/// and database name), to run on its restored copy.
pub fn checks_for_backup(config: &Config, manifest: &Manifest) -> Vec<IntegrityCheck> {
    config
        .checks
        .values()
        .filter(|c| {
            config
                .databases
                .get(&c.database)
                .is_some_and(|d| d.filter().matches(manifest))
        })
        .map(|c| c.check.clone())
        .collect()
}
