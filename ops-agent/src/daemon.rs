//! The daemon: the scheduler loop that asks the planner (`ops_core::schedule::plan`)
//! what is due, starts runs through the [`Runner`], records skipped slots, and stops
//! cleanly.
//!
//! All timing decisions are the planner's (pure, tested on a simulated clock); this
//! loop only keeps the state the planner needs — the newest slot handled per job and
//! which jobs are running — and sleeps until the next wake-up, a finished run or a
//! control message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use ops_core::Result;
use ops_core::jobs::{RunRecord, RunStatus, Trigger};
use ops_core::schedule::{Action, JobState, plan};

use crate::config::Config;
use crate::history::RunHistory;
use crate::runner::Runner;

/// The longest the loop sleeps without looking again (a wall-clock jump or a suspend
/// is noticed within this).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// What a running daemon can be told.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control {
    /// Finish: no new runs; running ones get the config's grace period, then are
    /// cancelled (their `after` hooks still run).
    Shutdown,
    /// Use this config from now on (runs going on finish under the old one).
    Reload(Arc<Config>),
}

/// How the daemon ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonReport {
    /// Runs started.
    pub started: usize,
    /// Runs cancelled at shutdown after the grace period.
    pub cancelled: usize,
}

struct Running {
    since: DateTime<Utc>,
}

/// Runs `config`'s schedule until told to stop through `control`.
///
/// # Errors
/// The run history cannot be opened; everything after that is logged and recorded,
/// never fatal.
pub async fn run(
    config: Arc<Config>,
    mut control: mpsc::Receiver<Control>,
) -> Result<DaemonReport> {
    let history = RunHistory::open(&config.state_dir).await?;
    let now = Utc::now();
    let interrupted = history.mark_interrupted(now).await?;
    if interrupted > 0 {
        tracing::warn!(
            "{interrupted} run(s) left running by a process that ended were marked failed"
        );
    }
    let mut runner = Runner::new(config.clone(), history.clone());
    let mut permits = Arc::new(Semaphore::new(config.max_concurrent_jobs));
    let mut states: HashMap<String, JobState> = HashMap::new();
    load_states(&runner, &history, &mut states, now).await;
    tracing::info!(
        "dbops daemon started: {} scheduled job(s), at most {} at once, history in {}",
        runner
            .config()
            .jobs
            .values()
            .filter(|j| j.timing.is_some())
            .count(),
        runner.config().max_concurrent_jobs,
        history.path().display()
    );

    let cancel = CancellationToken::new();
    let mut tasks: JoinSet<(String, RunRecord)> = JoinSet::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut report = DaemonReport::default();

    loop {
        let now = Utc::now();
        let mut wake: Option<DateTime<Utc>> = None;
        let config = runner.config().clone();
        for job in config.jobs.values() {
            let Some(timing) = &job.timing else {
                continue;
            };
            let Some(state) = states.get_mut(&job.name) else {
                continue;
            };
            state.running_since = running.get(&job.name).map(|r| r.since);
            let p = plan(timing, &job.name, state, now);
            if p.more_missed > 0 {
                tracing::warn!(
                    "job {}: {} more slots were missed while nothing ran the schedule",
                    job.name,
                    p.more_missed
                );
            }
            for action in &p.actions {
                match action {
                    Action::Start { slot, trigger } => {
                        report.started += 1;
                        running.insert(job.name.clone(), Running { since: now });
                        let (runner, job, slot, trigger) =
                            (runner.clone(), job.clone(), *slot, *trigger);
                        let permits = permits.clone();
                        let cancel = cancel.clone();
                        tasks.spawn(async move {
                            // The global limit: a due run waits for a free place (and
                            // counts as running, so its next slot is skipped, not queued).
                            let _permit = permits.acquire_owned().await;
                            if trigger == Trigger::CatchUp {
                                tracing::info!("job {}: catching up the slot of {slot} missed while dbops was not running", job.name);
                            }
                            let rec = runner.run(&job, trigger, Some(slot), cancel).await;
                            (job.name.clone(), rec)
                        });
                    }
                    Action::Skip { slot, reason } => {
                        let mut rec = RunRecord::start(&job.name, job.kind, Trigger::Schedule, now)
                            .with_slot(Some(*slot));
                        rec.finish(RunStatus::Skipped, Some(reason.to_string()), now);
                        tracing::warn!("job {}: slot {slot} {reason}", job.name);
                        if let Err(e) = history.insert(&rec).await {
                            tracing::error!("job {}: recording a skipped slot: {e}", job.name);
                        }
                    }
                    _ => {}
                }
            }
            state.apply(&p);
            if let Some(w) = p.wake {
                wake = Some(wake.map_or(w, |x: DateTime<Utc>| x.min(w)));
            }
        }

        let sleep = wake
            .map(|w| (w - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((name, _)) = done {
                    running.remove(&name);
                }
            }
            msg = control.recv() => match msg {
                Some(Control::Reload(new)) => {
                    tracing::info!("config reloaded: {} job(s)", new.jobs.len());
                    if new.max_concurrent_jobs != runner.config().max_concurrent_jobs {
                        permits = Arc::new(Semaphore::new(new.max_concurrent_jobs));
                    }
                    runner = Runner::new(new, history.clone());
                    states.retain(|name, _| runner.config().jobs.contains_key(name));
                    load_states(&runner, &history, &mut states, Utc::now()).await;
                }
                Some(Control::Shutdown) | None => break,
            }
        }
    }

    // Shutdown: no new runs; the running ones get the grace period.
    let grace = runner.config().shutdown_grace;
    if !tasks.is_empty() {
        tracing::info!(
            "stopping: waiting up to {} for {} running job(s)",
            ops_core::schedule::format_duration(grace),
            tasks.len()
        );
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            report.cancelled = tasks.len();
            tracing::warn!(
                "the grace period ran out: cancelling {} job(s)",
                tasks.len()
            );
            cancel.cancel();
            // Cancelled runs still run their `after` hooks and record their end.
            while tasks.join_next().await.is_some() {}
        }
    }
    history.close().await;
    tracing::info!("dbops daemon stopped");
    Ok(report)
}

/// Sets each scheduled job's handled slot from the history (its newest recorded
/// slot), or to `now` for a job never run (nothing before its first slot is due).
async fn load_states(
    runner: &Runner,
    history: &RunHistory,
    states: &mut HashMap<String, JobState>,
    now: DateTime<Utc>,
) {
    for job in runner.config().jobs.values() {
        if job.timing.is_none() || states.contains_key(&job.name) {
            continue;
        }
        let last = match history.last_slot(&job.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("job {}: reading its last slot: {e}", job.name);
                None
            }
        };
        states.insert(job.name.clone(), JobState::new(last.unwrap_or(now)));
    }
}
