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
use crate::{metrics, serve};

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
    // One semaphore for the daemon's life: a reload changes its size, so runs going
    // on and runs waiting count against the same limit.
    let permits = Arc::new(Semaphore::new(config.max_concurrent_jobs));
    let mut limit = config.max_concurrent_jobs;
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

    // /metrics and /health, from state refreshed in the background.
    let (config_tx, config_rx) = tokio::sync::watch::channel(config.clone());
    let poke = Arc::new(tokio::sync::Notify::new());
    let stop_serving = CancellationToken::new();
    if let Some(addr) = config.listen {
        let listener = serve::bind(addr).await?;
        let served: serve::SharedState = Arc::default();
        tokio::spawn(serve::serve(listener, served.clone(), stop_serving.clone()));
        tokio::spawn(refresh(
            config_rx,
            history.clone(),
            served,
            poke.clone(),
            stop_serving.clone(),
        ));
        tracing::info!("serving /metrics and /health on http://{addr}");
    }

    // `stopping`: no run may start any more (fired at once on shutdown); `cancel`:
    // running work must end (fired when the grace period runs out).
    let stopping = CancellationToken::new();
    let cancel = CancellationToken::new();
    let mut tasks: JoinSet<(String, RunRecord)> = JoinSet::new();
    let mut task_jobs: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut report = DaemonReport::default();

    loop {
        // Runs that ended since the last look, before planning: a finished run must
        // not make its next slot look like an overlap.
        while let Some(done) = tasks.try_join_next_with_id() {
            finished(done, &mut task_jobs, &mut running, &history).await;
            poke.notify_one();
        }
        let now = Utc::now();
        let mut wake: Option<DateTime<Utc>> = None;
        let config = runner.config().clone();
        let mut skips = Vec::new();
        for job in config.jobs.values() {
            let Some(timing) = &job.timing else {
                continue;
            };
            let Some(state) = states.get_mut(&job.name) else {
                continue;
            };
            state.running_since = running.get(&job.name).map(|r| r.since);
            let p = plan(timing, &job.name, state, now);
            if p.clock_went_back {
                tracing::warn!(
                    "job {}: its newest handled slot ({}) is later than now: the clock went back; scheduling from now",
                    job.name,
                    state.handled
                );
            }
            if p.more_missed > 0 {
                tracing::warn!(
                    "job {}: {}{} more slots were missed while nothing ran the schedule",
                    job.name,
                    if p.more_missed_estimated {
                        "about "
                    } else {
                        ""
                    },
                    p.more_missed
                );
            }
            for action in &p.actions {
                match action {
                    Action::Start { slot, trigger } => {
                        report.started += 1;
                        running.insert(job.name.clone(), Running { since: now });
                        let job_name = job.name.clone();
                        let (runner, job, slot, trigger) =
                            (runner.clone(), job.clone(), *slot, *trigger);
                        let permits = permits.clone();
                        let (cancel, stopping) = (cancel.clone(), stopping.clone());
                        let handle = tasks.spawn(async move {
                            // The global limit: a due run waits for a free place (and
                            // counts as running, so its next slot is skipped, not
                            // queued). A shutdown while it waits: it does not start.
                            let permit = tokio::select! {
                                p = permits.acquire_owned() => p.ok(),
                                () = stopping.cancelled() => None,
                            };
                            if permit.is_none() || stopping.is_cancelled() {
                                let now = Utc::now();
                                let mut rec = RunRecord::start(&job.name, job.kind, trigger, now)
                                    .with_slot(Some(slot));
                                rec.finish(
                                    RunStatus::Skipped,
                                    Some("skipped: dbops was stopping before the run could start".to_owned()),
                                    now,
                                );
                                if let Err(e) = runner.history().insert(&rec).await {
                                    tracing::error!("job {}: recording a skipped slot: {e}", job.name);
                                }
                                return (job.name.clone(), rec);
                            }
                            if trigger == Trigger::CatchUp {
                                tracing::info!("job {}: catching up the slot of {slot} missed while dbops was not running", job.name);
                            }
                            let rec = runner.run(&job, trigger, Some(slot), cancel).await;
                            drop(permit);
                            (job.name.clone(), rec)
                        });
                        task_jobs.insert(handle.id(), job_name);
                    }
                    Action::Skip { slot, reason } => {
                        let mut rec = RunRecord::start(&job.name, job.kind, Trigger::Schedule, now)
                            .with_slot(Some(*slot));
                        rec.finish(RunStatus::Skipped, Some(reason.to_string()), now);
                        tracing::warn!("job {}: slot {slot} {reason}", job.name);
                        skips.push(rec);
                    }
                    _ => {}
                }
            }
            state.apply(&p);
            if let Some(w) = p.wake {
                wake = Some(wake.map_or(w, |x: DateTime<Utc>| x.min(w)));
            }
        }
        if !skips.is_empty()
            && let Err(e) = history.insert_many(&skips).await
        {
            tracing::error!("recording {} skipped slot(s): {e}", skips.len());
        }

        let sleep = wake
            .map(|w| (w - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            biased;
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                finished(done, &mut task_jobs, &mut running, &history).await;
                poke.notify_one();
            }
            msg = control.recv() => match msg {
                Some(Control::Reload(new)) => {
                    tracing::info!("config reloaded: {} job(s)", new.jobs.len());
                    if new.listen != runner.config().listen {
                        tracing::warn!("a changed `listen` takes effect only when the daemon restarts");
                    }
                    resize(&permits, &mut limit, new.max_concurrent_jobs);
                    let _ = config_tx.send(new.clone());
                    let old = runner.config().clone();
                    runner = Runner::new(new, history.clone());
                    states.retain(|name, _| runner.config().jobs.contains_key(name));
                    // A job whose schedule changed starts afresh: the slots of its new
                    // schedule since its last run are not "missed".
                    let now = Utc::now();
                    for (name, state) in &mut states {
                        let before = old.jobs.get(name).and_then(|j| j.timing.clone());
                        let after = runner.config().jobs.get(name).and_then(|j| j.timing.clone());
                        if before != after {
                            state.handled = state.handled.max(now);
                        }
                    }
                    load_states(&runner, &history, &mut states, now).await;
                }
                Some(Control::Shutdown) | None => break,
            },
            () = tokio::time::sleep(sleep) => {}
        }
    }

    // Shutdown: no new runs (and none waiting for a place starts); the running ones
    // get the grace period; a second signal cancels them at once.
    stopping.cancel();
    let grace = runner.config().shutdown_grace;
    if !tasks.is_empty() {
        tracing::info!(
            "stopping: waiting up to {} for {} running job(s)",
            ops_core::schedule::format_duration(grace),
            tasks.len()
        );
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = tasks.join_next_with_id() => match done {
                    Some(done) => finished(done, &mut task_jobs, &mut running, &history).await,
                    None => break,
                },
                () = &mut deadline => {
                    tracing::warn!("the grace period ran out: cancelling {} job(s)", tasks.len());
                    break;
                }
                msg = control.recv() => {
                    if matches!(msg, Some(Control::Shutdown)) {
                        tracing::warn!("asked to stop again: cancelling {} job(s) now", tasks.len());
                        break;
                    }
                }
            }
        }
        if !tasks.is_empty() {
            report.cancelled = tasks.len();
            cancel.cancel();
            // Cancelled runs still run their `after` hooks and record their end, within
            // a bound: a hook that hangs does not keep the daemon alive for ever.
            let bound = runner
                .config()
                .jobs
                .values()
                .map(|j| {
                    j.hooks.timeout
                        * u32::try_from(j.hooks.after.len() + j.hooks.on_failure.len() + 1)
                            .unwrap_or(1)
                })
                .max()
                .unwrap_or_default()
                + Duration::from_secs(10);
            let drained = tokio::time::timeout(bound, async {
                while let Some(done) = tasks.join_next_with_id().await {
                    finished(done, &mut task_jobs, &mut running, &history).await;
                }
            })
            .await;
            if drained.is_err() {
                tracing::error!("{} cancelled job(s) did not end; leaving them", tasks.len());
                tasks.abort_all();
            }
        }
    }
    stop_serving.cancel();
    history.close().await;
    tracing::info!("dbops daemon stopped");
    Ok(report)
}

/// Takes note of a finished run task. A task that panicked leaves its run recorded
/// as running: it is marked failed here, and its job is free to run again.
async fn finished(
    done: std::result::Result<(tokio::task::Id, (String, RunRecord)), tokio::task::JoinError>,
    task_jobs: &mut HashMap<tokio::task::Id, String>,
    running: &mut HashMap<String, Running>,
    history: &RunHistory,
) {
    match done {
        Ok((id, (name, _))) => {
            task_jobs.remove(&id);
            running.remove(&name);
        }
        Err(e) => {
            let Some(name) = task_jobs.remove(&e.id()) else {
                return;
            };
            running.remove(&name);
            tracing::error!("job {name}: the run ended abnormally ({e}); recorded as failed");
            if let Err(e) = history
                .fail_running(
                    &name,
                    "the run ended abnormally (an internal error); see the daemon's log",
                )
                .await
            {
                tracing::error!("job {name}: recording the abnormal end: {e}");
            }
        }
    }
}

/// Changes the number of places of `permits` from `*limit` to `new`.
fn resize(permits: &Arc<Semaphore>, limit: &mut usize, new: usize) {
    if new > *limit {
        permits.add_permits(new - *limit);
    } else if new < *limit {
        // Take the places away as they come free.
        let (permits, n) = (
            permits.clone(),
            u32::try_from(*limit - new).unwrap_or(u32::MAX),
        );
        tokio::spawn(async move {
            if let Ok(p) = permits.acquire_many_owned(n).await {
                p.forget();
            }
        });
    }
    *limit = new;
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

/// The most a repository's backup count may take in the refresh loop.
const REPOSITORY_COUNT_BUDGET: Duration = Duration::from_secs(30);

/// How often the metrics are re-read from the history when no run finishes.
const METRICS_EVERY: Duration = Duration::from_secs(15);

/// Keeps the served state fresh: the health suite every `[health] interval`, the
/// metrics after every finished run and every 15 s, the repositories' backup counts
/// with the health suite. Runs until `stop`.
async fn refresh(
    mut config: tokio::sync::watch::Receiver<Arc<Config>>,
    history: RunHistory,
    served: serve::SharedState,
    poke: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut snapshot = metrics::Snapshot::default();
    // Opened once for the daemon's life (until a reload): the backup checks and the
    // counts below share them.
    let mut repositories = crate::runner::OpenRepositories::default();
    let mut next_health = tokio::time::Instant::now();
    loop {
        let cfg = config.borrow_and_update().clone();
        if tokio::time::Instant::now() >= next_health {
            match crate::health::run_with(&cfg, &history, &[], &repositories).await {
                Ok(summary) => snapshot.health = Some(summary),
                Err(e) => tracing::warn!("health checks could not run: {e}"),
            }
            // Published before anything slower: /health is the health suite's answer.
            served.write().await.health = snapshot.health.clone();
            next_health = tokio::time::Instant::now() + cfg.health.interval;
            metrics::refresh_repositories(
                &cfg,
                &repositories,
                &mut snapshot,
                REPOSITORY_COUNT_BUDGET,
            )
            .await;
        }
        match metrics::render(&cfg, &history, &snapshot).await {
            Ok(text) => served.write().await.metrics = text,
            Err(e) => tracing::warn!("metrics could not be rendered: {e}"),
        }
        let wait = next_health
            .saturating_duration_since(tokio::time::Instant::now())
            .min(METRICS_EVERY);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = poke.notified() => {}
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                // A reloaded config: its repositories are opened anew, its health runs now.
                repositories = crate::runner::OpenRepositories::default();
                snapshot.repository_backups.clear();
                snapshot.repository_bytes.clear();
                snapshot.wal_archived_bytes.clear();
                snapshot.recovery_window_seconds.clear();
                next_health = tokio::time::Instant::now();
            }
            () = stop.cancelled() => break,
        }
    }
}
