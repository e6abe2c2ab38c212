//! `inspect`, `maintain`, `sessions`, `integrity`, `archive`: parse, call
//! `ops_core::maintain` through the engine, print a table or JSON. No SQL here.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use ops_core::maintain::{
    Action, ArchiveSpec, EndMode, EndOptions, Ended, Inspect, InspectOptions, Inspection,
    LockSteps, MaintainOptions, Maintenance, SessionFilter, SessionInfo, StepOutcome, StepProgress,
};
use ops_core::schedule::parse_duration;
use ops_core::{Error, ErrorKind, HealthStatus, Result, redact_url};

use crate::cli::{ArchiveArgs, Cli, InspectArgs, IntegrityArgs, MaintainArgs, SessionsArgs};
use crate::output::{bytes, print_json, progress_wanted};

/// The database a command works on: a URL, or the name of a `[databases.NAME]` of the
/// config (which brings its password source).
fn database(cli: &Cli, given: &str) -> Result<(Arc<dyn Maintenance>, String)> {
    database_and_name(cli, given).map(|(db, location, _)| (db, location))
}

/// [`database`], with the name of the database the URL connects to (none when it
/// names none), as its engine reads the URL.
fn database_and_name(
    cli: &Cli,
    given: &str,
) -> Result<(Arc<dyn Maintenance>, String, Option<String>)> {
    let named = |name: String| (!name.is_empty()).then_some(name);
    if given.contains("://") {
        return Ok((
            dbops::maintenance(given)?,
            redact_url(given),
            named(dbops::engine(given)?.database()),
        ));
    }
    let config = crate::commands::required_config(cli).map_err(|_| {
        Error::invalid(format!(
            "'{given}' is neither a database URL (postgres://…, mariadb://…) nor, without a config file, a database name: give a URL, or --config FILE with [databases.{given}]"
        ))
    })?;
    let Some(db) = config.databases.get(given) else {
        let names: Vec<&str> = config.databases.keys().map(String::as_str).collect();
        let hint = ops_agent::config::suggest(given, &names)
            .map(|n| format!("; did you mean '{n}'?"))
            .unwrap_or_default();
        return Err(Error::invalid(format!(
            "no [databases.{given}] in the config{hint}; give a database URL or one of: {}",
            names.join(", ")
        )));
    };
    Ok((
        db.maintenance()?,
        redact_url(&db.url),
        named(db.engine()?.database()),
    ))
}

pub(crate) fn duration(flag: &str, text: &str) -> Result<Duration> {
    parse_duration(text).map_err(|e| Error::invalid(format!("{flag}: {}", e.message())))
}

/// A plain text table: a header row, then aligned columns.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| x.to_string())
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.0}s"))
}

fn short(text: Option<&str>, max: usize) -> String {
    let t = text
        .unwrap_or("-")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if t.chars().count() > max {
        format!("{}…", t.chars().take(max).collect::<String>())
    } else {
        t
    }
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M").to_string(),
    )
}

/// `dbops inspect WHAT DB`.
pub async fn inspect(cli: &Cli, a: &InspectArgs) -> Result<ExitCode> {
    let what: Inspect = a.what.parse()?;
    let (db, location) = database(cli, &a.database)?;
    let options = InspectOptions::default()
        .with_tables(a.tables.clone())
        .with_longer_than(duration("--longer-than", &a.longer_than)?)
        .with_limit(a.limit);
    let report = db.inspect(what, &options).await?;
    if cli.json {
        print_json(&json!({ "ok": true, "database": location, "report": report }));
        return Ok(ExitCode::SUCCESS);
    }
    print_inspection(&report);
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_lines)]
fn print_inspection(report: &Inspection) {
    let notes: &[String] = match report {
        Inspection::Sizes(r) => {
            println!("database {}: {}", r.database, bytes(r.database_bytes));
            let rows: Vec<Vec<String>> = r
                .tables
                .iter()
                .map(|t| {
                    vec![
                        format!("{}.{}", t.schema, t.name),
                        bytes(t.total_bytes),
                        bytes(t.heap_bytes),
                        bytes(t.index_bytes),
                        t.toast_bytes.map_or("-".to_owned(), bytes),
                        opt(t.rows),
                        t.rows_method.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TABLE",
                    "TOTAL",
                    "HEAP",
                    "INDEXES",
                    "TOAST",
                    "ROWS",
                    "ROWS FROM",
                ],
                &rows,
            );
            &r.notes
        }
        Inspection::Bloat(r) => {
            let rows: Vec<Vec<String>> = r
                .objects
                .iter()
                .map(|b| {
                    vec![
                        format!("{}.{}", b.schema, b.name),
                        format!("{:?}", b.kind).to_lowercase(),
                        bytes(b.size_bytes),
                        b.wasted_bytes.map_or("-".to_owned(), bytes),
                        b.wasted_percent
                            .map_or("-".to_owned(), |p| format!("{p:.1}%")),
                        b.method.clone(),
                        format!("{:?}", b.confidence).to_lowercase(),
                        b.note.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "OBJECT",
                    "KIND",
                    "SIZE",
                    "WASTED",
                    "%",
                    "METHOD",
                    "CONFIDENCE",
                    "NOTE",
                ],
                &rows,
            );
            &r.notes
        }
        Inspection::Indexes(r) => {
            println!(
                "statistics since: {}",
                r.stats_since
                    .map_or_else(|| "unknown".to_owned(), |t| t.to_rfc3339())
            );
            let mut rows = Vec::new();
            for (what, list) in [
                ("unused", &r.unused),
                ("duplicate", &r.duplicate),
                ("invalid", &r.invalid),
            ] {
                for i in list {
                    rows.push(vec![
                        what.to_owned(),
                        format!("{}.{}", i.schema, i.index),
                        i.table.clone(),
                        bytes(i.size_bytes),
                        opt(i.scans),
                        i.detail.clone(),
                    ]);
                }
            }
            print_table(
                &["PROBLEM", "INDEX", "TABLE", "SIZE", "SCANS", "DETAIL"],
                &rows,
            );
            &r.notes
        }
        Inspection::Activity(r) => {
            for (title, counts) in [
                ("state", &r.by_state),
                ("user", &r.by_user),
                ("application", &r.by_application),
            ] {
                let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!("client sessions by {title}: {}", list.join(", "));
            }
            println!("long-running queries: {}", r.long_running.len());
            print_sessions(&r.long_running);
            println!("idle in transaction: {}", r.idle_in_transaction.len());
            print_sessions(&r.idle_in_transaction);
            &[]
        }
        Inspection::Locks(r) => {
            if r.trees.is_empty() && r.cycles.is_empty() {
                println!("no session waits for another");
            }
            for t in &r.trees {
                print_tree(t, 0);
            }
            for c in &r.cycles {
                let ids: Vec<String> = c.iter().map(ToString::to_string).collect();
                println!(
                    "waiting in a cycle (deadlock not yet broken): {}",
                    ids.join(" -> ")
                );
            }
            &[]
        }
        Inspection::Queries(r) => {
            if !r.available {
                println!(
                    "{} is not available: {}",
                    r.source,
                    r.message.as_deref().unwrap_or("")
                );
                return;
            }
            println!("from {}", r.source);
            let rows: Vec<Vec<String>> = r
                .statements
                .iter()
                .map(|q| {
                    vec![
                        format!("{:.0}", q.total_ms),
                        q.calls.to_string(),
                        format!("{:.2}", q.mean_ms),
                        q.rows.to_string(),
                        short(Some(&q.query), 100),
                    ]
                })
                .collect();
            print_table(&["TOTAL MS", "CALLS", "MEAN MS", "ROWS", "QUERY"], &rows);
            &[]
        }
        Inspection::Vacuum(r) => {
            println!(
                "database transaction-ID age {} (autovacuum forces a freeze at {})",
                opt(r.database_xid_age),
                opt(r.freeze_max_age)
            );
            let rows: Vec<Vec<String>> = r
                .tables
                .iter()
                .map(|t| {
                    vec![
                        format!("{}.{}", t.schema, t.name),
                        t.live_rows.to_string(),
                        t.dead_rows.to_string(),
                        opt(t.autovacuum_at_dead_rows),
                        if t.autovacuum_due { "due" } else { "-" }.to_owned(),
                        when(t.last_vacuum.max(t.last_autovacuum)),
                        when(t.last_analyze.max(t.last_autoanalyze)),
                        opt(t.xid_age),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TABLE",
                    "LIVE",
                    "DEAD",
                    "AUTOVACUUM AT",
                    "",
                    "LAST VACUUM",
                    "LAST ANALYZE",
                    "XID AGE",
                ],
                &rows,
            );
            &[]
        }
        _ => &[],
    };
    for n in notes {
        println!("note: {n}");
    }
}

fn print_sessions(list: &[SessionInfo]) {
    if list.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                format!("{:?}", s.kind).to_lowercase(),
                opt(s.user.as_deref()),
                opt(s.application.as_deref()),
                s.state.clone(),
                secs(s.query_seconds),
                secs(s.transaction_seconds),
                opt(s.wait.as_deref()),
                short(s.query.as_deref(), 80),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "KIND",
            "USER",
            "APPLICATION",
            "STATE",
            "QUERY",
            "XACT",
            "WAITS",
            "QUERY TEXT",
        ],
        &rows,
    );
}

fn print_tree(node: &ops_core::maintain::LockNode, depth: usize) {
    let s = &node.session;
    println!(
        "{}{} {} {} [{}] {} {}",
        "  ".repeat(depth),
        if depth == 0 { "ROOT" } else { "└─" },
        s.id,
        opt(s.user.as_deref()),
        s.state,
        secs(s.transaction_seconds.or(s.query_seconds)),
        short(s.query.as_deref(), 80)
    );
    for c in &node.blocks {
        print_tree(c, depth + 1);
    }
}

/// `dbops maintain ACTION DB`.
pub async fn maintain(cli: &Cli, a: &MaintainArgs, lock_wait: Duration) -> Result<ExitCode> {
    let action = match a.action.as_str() {
        "vacuum" => Action::Vacuum {
            full: a.full,
            analyze: a.analyze,
        },
        "analyze" => Action::Analyze,
        "reindex" => Action::Reindex {
            concurrently: a.concurrently,
        },
        "optimize" => Action::Optimize,
        "check" => Action::Check,
        "repair" => Action::Repair,
        other => {
            return Err(Error::invalid(format!(
                "unknown action '{other}': vacuum, analyze, reindex, optimize, check or repair"
            )));
        }
    };
    let flags = [
        (a.full, "--full", matches!(action, Action::Vacuum { .. })),
        (
            a.analyze,
            "--analyze",
            matches!(action, Action::Vacuum { .. }),
        ),
        (
            a.concurrently,
            "--concurrently",
            matches!(action, Action::Reindex { .. }),
        ),
    ];
    for (given, flag, fits) in flags {
        if given && !fits {
            return Err(Error::invalid(format!("{flag} does not apply to {action}")));
        }
    }
    let (db, location) = database(cli, &a.database)?;
    let mut options = MaintainOptions::default()
        .with_tables(a.tables.clone())
        .with_dry_run(a.dry_run)
        .with_lock(LockSteps::default().with_total(lock_wait));
    if progress_wanted(cli.quiet, cli.json) {
        options = options.with_progress(Arc::new(|p: &StepProgress| {
            let amount = match (p.done, p.total) {
                (Some(d), Some(t)) if t > 0 => {
                    format!(" {d}/{t} ({:.0}%)", d as f64 * 100.0 / t as f64)
                }
                (Some(d), _) => format!(" {d}"),
                _ => String::new(),
            };
            eprint!("\r\x1b[K{}: {}{amount}", p.object, p.phase);
        }));
    }
    let report = db.maintain(action, &options).await?;
    if progress_wanted(cli.quiet, cli.json) {
        eprint!("\r\x1b[K");
    }
    let code = maintain_exit(&report);
    if cli.json {
        print_json(&json!({ "ok": report.ok(), "database": location, "report": report }));
        return Ok(ExitCode::from(code));
    }
    let rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|s| {
            let sizes = match (s.size_before, s.size_after) {
                (Some(b), Some(a)) => format!("{} -> {}", bytes(b), bytes(a)),
                (Some(b), None) => bytes(b),
                _ => "-".to_owned(),
            };
            vec![
                format!("{:?}", s.outcome).to_uppercase(),
                s.object.clone(),
                sizes,
                format!("{:.1}s", s.seconds),
                s.lock_tries.to_string(),
                short(s.message.as_deref().or(Some(&s.sql)), 120),
            ]
        })
        .collect();
    print_table(
        &["OUTCOME", "OBJECT", "SIZE", "TIME", "LOCK TRIES", "DETAIL"],
        &rows,
    );
    for d in &report.dropped_leftovers {
        println!("dropped the invalid leftover of a failed concurrent reindex: {d}");
    }
    // The table cuts details short; what went wrong is printed whole (the blocker's
    // pid and query, the damage found).
    for s in report.steps.iter().filter(|s| !s.outcome.is_ok()) {
        if let Some(m) = &s.message {
            println!("{}: {m}", s.object);
        }
    }
    let failed = report.steps.iter().filter(|s| !s.outcome.is_ok()).count();
    println!(
        "{}{action}: {} steps, {failed} not ok",
        if report.dry_run { "dry run: " } else { "" },
        report.steps.len()
    );
    Ok(ExitCode::from(code))
}

/// 0 every step ok; 3 a check found damage; 4 a lock could not be taken in time; 1
/// anything else that failed (or is not supported).
fn maintain_exit(report: &ops_core::maintain::MaintainReport) -> u8 {
    let bad: Vec<StepOutcome> = report
        .steps
        .iter()
        .map(|s| s.outcome)
        .filter(|o| !o.is_ok())
        .collect();
    if bad.is_empty() {
        0
    } else if matches!(report.action, Action::Check) && bad.contains(&StepOutcome::Failed) {
        3
    } else if bad.iter().all(|o| *o == StepOutcome::LockTimeout) {
        4
    } else {
        1
    }
}

/// `dbops sessions DB`.
pub async fn sessions(cli: &Cli, a: &SessionsArgs) -> Result<ExitCode> {
    let (db, location, name) = database_and_name(cli, &a.database)?;
    let filter = SessionFilter {
        longer_than: a
            .longer_than
            .as_deref()
            .map(|t| duration("--longer-than", t))
            .transpose()?,
        state: a.state.clone(),
        user: a.user.clone(),
        application: a.application.clone(),
        root_blockers: a.root_blockers,
        // The URL's database, as an operator reads `sessions postgres://…/erp`;
        // every database with --all-databases.
        database: if a.all_databases { None } else { name },
        all: a.all,
    };
    let mode = if a.terminate {
        Some(EndMode::Terminate)
    } else if a.cancel {
        Some(EndMode::Cancel)
    } else {
        None
    };
    let Some(mode) = mode else {
        let list = db.sessions(&filter).await?;
        if cli.json {
            print_json(&json!({ "ok": true, "database": location, "sessions": list }));
        } else {
            print_sessions(&list);
            println!("{} sessions", list.len());
        }
        return Ok(ExitCode::SUCCESS);
    };
    if filter.is_unconditional() && !filter.all {
        return Err(Error::invalid(
            "no condition chooses the sessions to end, so every client session of the server would end: add --longer-than, --state, --user, --application or --root-blockers, give a URL that names a database (without --all-databases), or pass --all to mean it",
        ));
    }
    let options = EndOptions::new(mode)
        .with_grace(duration("--grace", &a.grace)?)
        .with_dry_run(!a.yes);
    let report = db.end_sessions(&filter, &options).await?;
    if cli.json {
        print_json(
            &json!({ "ok": true, "database": location, "dry_run": !a.yes, "report": report }),
        );
        return Ok(ExitCode::SUCCESS);
    }
    for e in &report.sessions {
        let word = match e.outcome {
            Ended::WouldCancel => "would cancel",
            Ended::WouldTerminate => "would terminate",
            Ended::Cancelled => "cancelled",
            Ended::Terminated => "terminated",
            Ended::Gone => "gone by itself",
            Ended::Refused => "left alone (not a client session)",
            _ => "?",
        };
        println!(
            "{word:<34} {} {} [{}] {}",
            e.session.id,
            opt(e.session.user.as_deref()),
            e.session.state,
            short(e.session.query.as_deref(), 80)
        );
    }
    if report.sessions.is_empty() {
        println!("no session matches");
    }
    if !a.yes {
        println!("dry run: nothing was ended; add --yes to act");
    }
    Ok(ExitCode::SUCCESS)
}

/// `dbops integrity [CHECK…]`: exit 0 pass, 1 warning, 2 error, 3 could not run.
pub async fn integrity(cli: &Cli, a: &IntegrityArgs) -> Result<ExitCode> {
    let run = async {
        let config = crate::commands::required_config(cli)?;
        ops_agent::integrity::run(&config, &a.checks, a.database.as_deref()).await
    }
    .await;
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            // Like a monitoring plugin: a check that cannot run is "unknown" (3).
            crate::output::print_error(&e, cli.json);
            return Ok(ExitCode::from(3));
        }
    };
    if cli.json {
        print_json(&json!({
            "ok": run.status() == HealthStatus::Healthy,
            "status": run.status(),
            "checks": run.checks,
        }));
        return Ok(ExitCode::from(run.exit_code()));
    }
    for c in &run.checks {
        let r = &c.result;
        let word = match r.status {
            HealthStatus::Healthy => "OK",
            HealthStatus::Degraded => "WARNING",
            HealthStatus::Unhealthy => "ERROR",
            _ => "UNKNOWN",
        };
        match (&r.rows, &r.error) {
            (_, Some(e)) => println!("{word:<8} {} on {}: could not run: {e}", r.name, c.database),
            (Some(rows), None) => {
                println!(
                    "{word:<8} {} on {}: {} rows ({:.2}s)",
                    r.name, c.database, rows.count, r.seconds
                );
                if rows.count > 0 {
                    let sample: Vec<Vec<String>> = rows
                        .sample
                        .iter()
                        .map(|row| {
                            row.iter()
                                .map(|v| v.clone().unwrap_or_else(|| "NULL".to_owned()))
                                .collect()
                        })
                        .collect();
                    let headers: Vec<&str> = rows.columns.iter().map(String::as_str).collect();
                    print_table(&headers, &sample);
                    if rows.count > sample.len() as u64 {
                        println!("… and {} more", rows.count - sample.len() as u64);
                    }
                }
            }
            (None, None) => println!("{word:<8} {}", r.name),
        }
    }
    Ok(ExitCode::from(run.exit_code()))
}

/// `dbops archive DB --table T --where P --into A`.
pub async fn archive(cli: &Cli, a: &ArchiveArgs) -> Result<ExitCode> {
    let (db, location) = database(cli, &a.database)?;
    if a.batch == 0 {
        return Err(Error::invalid("--batch must be at least 1"));
    }
    let spec = ArchiveSpec::new(a.table.clone(), a.predicate.clone(), a.into.clone())
        .with_batch(a.batch)
        .with_dry_run(a.dry_run)
        .with_pause(duration("--pause", &a.pause)?)
        .with_limits(
            duration("--max-replication-lag", &a.max_replication_lag)?,
            duration("--max-transaction-age", &a.max_transaction_age)?,
        )
        .with_max_wait(duration("--max-wait", &a.max_wait)?)
        .with_max_rows(a.max_rows);
    let report = db.archive(&spec).await.map_err(|e| {
        if e.kind() == ErrorKind::Interrupted {
            e.during("archiving (batches already committed stay moved; run again to resume)")
        } else {
            e
        }
    })?;
    if cli.json {
        print_json(&json!({ "ok": true, "database": location, "report": report }));
        return Ok(ExitCode::SUCCESS);
    }
    if report.dry_run {
        println!(
            "dry run: {} rows of {} match and would move into {}",
            report.rows, a.table, a.into
        );
    } else {
        println!(
            "{} rows of {} moved into {}{} in {} batches; {} still match{}",
            report.rows,
            a.table,
            a.into,
            if report.created_archive {
                " (created)"
            } else {
                ""
            },
            report.batches,
            report.remaining,
            if report.throttled_seconds > 0.0 {
                format!(
                    "; waited {:.0}s for replication lag or long transactions",
                    report.throttled_seconds
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
