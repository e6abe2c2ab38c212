//! The commands that run the config's jobs: `run`, `daemon`, `jobs`, `history`,
//! `config check`. They parse and print; the runner, the daemon loop and the history
//! are `ops-agent`'s.

use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use ops_agent::daemon::{self, Control};
use ops_agent::{Config, RunHistory, Runner};
use ops_core::jobs::{RunStatus, Trigger};
use ops_core::schedule::format_duration;
use ops_core::{Error, Result};

use crate::cli::{Cli, DaemonArgs, HealthArgs, HistoryArgs, JobsArgs, MetricsArgs, RunArgs};
use crate::output::{bytes, print_json};

/// `dbops run JOB…`: each job once, in order; exit 1 when any failed.
pub async fn run_jobs(cli: &Cli, config: Config, a: &RunArgs) -> Result<ExitCode> {
    // Every name is checked before anything runs.
    let jobs = a
        .jobs
        .iter()
        .map(|name| config.job(name).cloned())
        .collect::<Result<Vec<_>>>()?;
    let history = RunHistory::open(&config.state_dir).await?;
    history.mark_interrupted(chrono::Utc::now()).await?;
    let runner = Runner::new(Arc::new(config), history.clone());
    // SIGTERM or SIGINT cancel the work; the after hooks still run and the run is
    // recorded as failed.
    let cancel = CancellationToken::new();
    let watcher = {
        let cancel = cancel.clone();
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::io("watching for SIGTERM", e))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| Error::io("watching for SIGINT", e))?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("asked to stop: cancelling the running job");
            cancel.cancel();
        })
    };
    let mut records = Vec::new();
    for job in &jobs {
        if cancel.is_cancelled() {
            break;
        }
        let rec = runner.run(job, Trigger::Manual, None, cancel.clone()).await;
        if !cli.json {
            print_run_line(&rec);
        }
        records.push(rec);
    }
    watcher.abort();
    history.close().await;
    let failed =
        records.iter().any(|r| r.status == RunStatus::Failure) || records.len() < jobs.len();
    if cli.json {
        print_json(&json!({ "ok": !failed, "runs": records }));
    }
    // The exit code of the first failed job's error, as the one-shot command would
    // have exited (3 damage, 4 locked, 6 unreachable, 7 refused credentials, else 1).
    let code = records
        .iter()
        .find(|r| r.status == RunStatus::Failure)
        .map(|r| {
            r.error_kind
                .as_deref()
                .and_then(ops_core::ErrorKind::parse)
                .map_or(1, crate::exit_code)
        })
        .unwrap_or(u8::from(failed));
    Ok(ExitCode::from(code))
}

fn print_run_line(r: &ops_core::RunRecord) {
    match r.status {
        RunStatus::Success => println!(
            "{}: success in {:.1} s{}",
            r.job,
            r.duration_secs(),
            r.backup_id
                .as_deref()
                .map(|b| format!(
                    ", backup {b} ({} read, {} new, {} stored)",
                    bytes(r.bytes.unwrap_or(0)),
                    bytes(r.new_bytes.unwrap_or(0)),
                    bytes(r.stored_bytes.unwrap_or(0))
                ))
                .unwrap_or_default()
        ),
        other => println!(
            "{}: {other} after {:.1} s: {}",
            r.job,
            r.duration_secs(),
            r.error.as_deref().unwrap_or("no reason recorded")
        ),
    }
}

/// `dbops daemon`.
pub async fn daemon(cli: &Cli, mut config: Config, a: &DaemonArgs) -> Result<ExitCode> {
    if let Some(addr) = a.listen {
        config.listen = Some(addr);
    }
    let listen = config.listen;
    let path = ops_agent::config::config_path(cli.config.as_deref());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::io("watching for SIGTERM", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("watching for SIGINT", e))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::io("watching for SIGHUP", e))?;
    let signals = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { let _ = tx.send(Control::Shutdown).await; break; }
                _ = int.recv() => { let _ = tx.send(Control::Shutdown).await; break; }
                _ = hup.recv() => {
                    // An atomic reload: a config that does not check keeps the old one.
                    match path.as_deref().map(Config::load) {
                        Some(Ok(mut new)) => {
                            if listen.is_some() {
                                new.listen = listen;
                            }
                            let _ = tx.send(Control::Reload(Arc::new(new))).await;
                        }
                        Some(Err(e)) => tracing::error!("config reload failed, keeping the running config: {e}"),
                        None => {}
                    }
                }
            }
        }
    });
    let report = daemon::run(Arc::new(config), rx).await;
    signals.abort();
    let report = report?;
    if cli.json {
        print_json(
            &json!({ "ok": true, "started": report.started, "cancelled": report.cancelled }),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dbops jobs`.
pub fn jobs(cli: &Cli, config: &Config, a: &JobsArgs) -> Result<ExitCode> {
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for job in config.jobs.values() {
        let (schedule, next) = match &job.timing {
            Some(t) => (t.schedule.to_string(), t.upcoming(&job.name, now, a.next)),
            None => ("by hand (dbops run)".to_owned(), Vec::new()),
        };
        rows.push((job, schedule, next));
    }
    if cli.json {
        let items: Vec<_> = rows
            .iter()
            .map(|(j, s, n)| {
                json!({
                    "job": j.name,
                    "kind": j.kind,
                    "schedule": s,
                    "timeout": j.timeout.map(format_duration),
                    "retries": j.retries,
                    "notify": j.notify,
                    "next": n,
                })
            })
            .collect();
        print_json(&json!({ "ok": true, "jobs": items }));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no jobs in {}", config.origin);
    }
    for (j, s, n) in rows {
        println!("{} ({}): {s}", j.name, j.kind);
        for t in n {
            println!("  {}", t.format("%Y-%m-%d %H:%M:%S UTC"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dbops history [JOB]`.
pub async fn history(cli: &Cli, config: &Config, a: &HistoryArgs) -> Result<ExitCode> {
    if let Some(job) = &a.job
        && !config.jobs.contains_key(job)
    {
        // A job removed from the config keeps its history: only warn.
        tracing::warn!(
            "no job '{job}' in {}; showing its recorded runs",
            config.origin
        );
    }
    let history = RunHistory::open(&config.state_dir).await?;
    let runs = history.runs(a.job.as_deref(), a.last).await?;
    if cli.json {
        let mut items = Vec::with_capacity(runs.len());
        for r in &runs {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["deliveries"] = json!(history.deliveries(r.id).await?);
            items.push(v);
        }
        history.close().await;
        print_json(&json!({ "ok": true, "runs": items }));
        return Ok(ExitCode::SUCCESS);
    }
    history.close().await;
    if runs.is_empty() {
        println!("no runs recorded");
    }
    for r in runs {
        println!(
            "{:>5}  {}  {:<20} {:<7} {:<8} {:<9} {:>7.1}s  {}{}",
            r.id,
            r.started.format("%Y-%m-%d %H:%M:%S"),
            r.job,
            r.kind,
            r.trigger.as_str(),
            r.status,
            r.duration_secs(),
            r.backup_id
                .as_deref()
                .map(|b| format!("{b} "))
                .unwrap_or_default(),
            r.error.as_deref().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dbops config check`.
pub fn check(cli: &Cli, config: &Config) -> Result<ExitCode> {
    let resolved = config.redacted();
    if cli.json {
        print_json(&json!({ "ok": true, "file": config.origin, "config": resolved }));
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{}: ok ({} repositories, {} databases, {} notifications, {} jobs)",
        config.origin,
        config.repositories.len(),
        config.databases.len(),
        config.notifications.len(),
        config.jobs.len()
    );
    let text = toml::Value::try_from(drop_nulls(resolved))
        .ok()
        .and_then(|v| toml::to_string_pretty(&v).ok())
        .unwrap_or_default();
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// TOML has no null: leave such keys out.
fn drop_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, drop_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(drop_nulls).collect())
        }
        other => other,
    }
}

/// `dbops health [CHECK…]`: Nagios exit codes; a config or history that cannot be
/// read is "unknown" (3), as a monitoring plugin reports it.
pub async fn health(cli: &Cli, a: &HealthArgs) -> Result<ExitCode> {
    let summary = async {
        let config = Arc::new(crate::commands::required_config(cli)?);
        let history = RunHistory::open(&config.state_dir).await?;
        let s = ops_agent::health::run(&config, &history, &a.checks).await;
        if let Ok(summary) = &s {
            // A one-shot check run by cron feeds node_exporter too.
            ops_agent::metrics::write_textfile_of(&config, &history, Some(summary)).await;
        }
        history.close().await;
        s
    }
    .await;
    let summary = match summary {
        Ok(s) if s.checks.is_empty() => {
            let e = Error::invalid(
                "the config has no health checks (no database, service or repository): nothing to check",
            );
            crate::output::print_error(&e, cli.json);
            return Ok(ExitCode::from(3));
        }
        Ok(s) => s,
        Err(e) => {
            crate::output::print_error(&e, cli.json);
            return Ok(ExitCode::from(3));
        }
    };
    if cli.json {
        print_json(&serde_json::to_value(&summary).unwrap_or_default());
    } else {
        // The plugin word matches the exit code (OK, WARNING, CRITICAL, UNKNOWN).
        let word =
            ["OK", "WARNING", "CRITICAL", "UNKNOWN"][usize::from(summary.exit_code().min(3))];
        println!(
            "{word}: {} at {}",
            summary.status,
            summary.timestamp.to_rfc3339()
        );
        for c in &summary.checks {
            let value = c
                .value
                .map(|v| format!("{v} {}", c.unit))
                .unwrap_or_else(|| "-".to_owned());
            println!(
                "{:<9} {:<24} {:<22} {:>18}  {}",
                c.status.as_str().to_uppercase(),
                c.service,
                c.name,
                value,
                c.reason
            );
        }
    }
    Ok(ExitCode::from(summary.exit_code()))
}

/// `dbops metrics [--health]`.
pub async fn metrics(config: &Config, a: &MetricsArgs) -> Result<ExitCode> {
    let config = Arc::new(config.clone());
    let history = RunHistory::open(&config.state_dir).await?;
    let mut snapshot = ops_agent::metrics::Snapshot::default();
    if a.health {
        snapshot.health = Some(ops_agent::health::run(&config, &history, &[]).await?);
    }
    let repositories = ops_agent::runner::OpenRepositories::default();
    ops_agent::metrics::refresh_repositories(
        &config,
        &repositories,
        &mut snapshot,
        std::time::Duration::from_secs(30),
    )
    .await;
    let text = ops_agent::metrics::render(&config, &history, &snapshot).await;
    history.close().await;
    print!("{}", text?);
    Ok(ExitCode::SUCCESS)
}
