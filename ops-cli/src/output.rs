//! Printing: human text on a terminal, one JSON document on stdout with `--json`, logs
//! and progress on stderr only.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ops_core::Error;
use ops_core::repo::Progress;

/// Logs go to stderr; `-v` for info, `-vv` for debug; `RUST_LOG` overrides. Only
/// dbops' own crates log at that level: the drivers' and libraries' messages (a
/// driver's "slow statement" warning) only at error, or at `-vv`. Colour only on a
/// terminal, never with `NO_COLOR`.
pub fn init_logging(verbose: u8, agent: bool) {
    // The agent's commands (run, daemon) log each job's outcome: info by default.
    let agent = if agent || verbose >= 1 {
        if verbose >= 2 { "debug" } else { "info" }
    } else {
        "warn"
    };
    let own = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let others = if verbose >= 2 { "warn" } else { "error" };
    let default = format!(
        "{others},dbops={own},ops_core={own},ops_postgres={own},ops_mariadb={own},ops_storage={own},ops_agent={agent}"
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Database drivers log whole statements at debug level, and a statement may carry
    // a password or its hash (CREATE ROLE … PASSWORD): never below info (sqlx: warn, it logs statements at info), whatever
    // RUST_LOG asks.
    let filter = ["tokio_postgres=info", "sqlx=warn", "mysql_async=info"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, tracing_subscriber::EnvFilter::add_directive);
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .try_init();
}

/// Prints an error: to stderr always, and as the JSON document with `--json`.
pub fn print_error(e: &Error, json: bool) {
    if json {
        let context: serde_json::Map<String, serde_json::Value> = e
            .context()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect();
        let doc = serde_json::json!({
            "ok": false,
            "error": { "kind": e.kind().as_str(), "message": e.to_string(), "context": context },
        });
        println!("{doc}");
    }
    eprintln!("dbops: error: {e}");
}

/// Prints the JSON document.
pub fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("dbops: cannot print JSON: {e}"),
    }
}

/// Human-readable bytes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress display on stderr, only when it is a terminal and output is not JSON.
pub struct ProgressDisplay {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<indicatif::ProgressBar>,
    progress: Option<Arc<Progress>>,
    /// What the line names, and since when: the last line is drawn again on drop.
    what: &'static str,
    started: std::time::Instant,
}

/// True when progress should be shown: stderr is a terminal, and neither `--quiet`
/// nor `--json` was given.
pub fn progress_wanted(quiet: bool, json: bool) -> bool {
    !quiet && !json && std::io::stderr().is_terminal()
}

/// One line of progress: done of total (when known), rate, ETA, streams, status.
pub fn progress_line(what: &str, p: &Progress, elapsed: Duration) -> String {
    let done = p.bytes.load(Ordering::Relaxed);
    let total = p.total_bytes.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let mut line = format!("{what}: {}", bytes(done));
    if total > 0 {
        let about = if p.total_is_estimate.load(Ordering::Relaxed) {
            "≈"
        } else {
            ""
        };
        let share = (done as f64 / total as f64 * 100.0).min(100.0);
        line.push_str(&format!(" of {about}{} ({share:.0}%)", bytes(total)));
        if rate > 0.0 && done < total {
            let eta = ((total - done) as f64 / rate) as u64;
            line.push_str(&format!(", {}/s, ETA {}", bytes(rate as u64), clock(eta)));
        } else {
            line.push_str(&format!(", {}/s", bytes(rate as u64)));
        }
    } else {
        line.push_str(&format!(", {}/s", bytes(rate as u64)));
    }
    let streams = p.streams_done.load(Ordering::Relaxed);
    let total_streams = p.total_streams.load(Ordering::Relaxed);
    if total_streams > 0 {
        line.push_str(&format!(", {streams}/{total_streams} streams"));
    } else if streams > 0 {
        line.push_str(&format!(", {streams} streams"));
    }
    let new = p.new_bytes.load(Ordering::Relaxed);
    if new > 0 {
        line.push_str(&format!(", {} new", bytes(new)));
    }
    let status = p.status();
    if !status.is_empty() {
        line.push_str(" — ");
        line.push_str(&status);
    }
    line
}

fn clock(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

impl ProgressDisplay {
    /// Shows `progress` while it lives, when `enabled` (see [`progress_wanted`]).
    pub fn start(progress: &Arc<Progress>, enabled: bool, what: &'static str) -> Self {
        if !enabled {
            return Self {
                task: None,
                bar: None,
                progress: None,
                what,
                started: std::time::Instant::now(),
            };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let p = Arc::clone(progress);
        let b = bar.clone();
        let started = std::time::Instant::now();
        b.set_message(progress_line(what, &p, started.elapsed()));
        b.tick();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                b.set_message(progress_line(what, &p, started.elapsed()));
                b.tick();
            }
        });
        Self {
            task: Some(task),
            bar: Some(bar),
            progress: Some(Arc::clone(progress)),
            what,
            started,
        }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            // The last state stays on the terminal: what was done, of what (drawn now:
            // work shorter than a tick would leave the first line standing).
            if let Some(p) = &self.progress {
                p.set_status("");
                b.set_message(progress_line(self.what, p, self.started.elapsed()));
            }
            b.finish();
        }
    }
}
