//! Printing: human text on a terminal, one JSON document on stdout with `--json`, logs
//! and progress on stderr only.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ops_core::Error;
use ops_core::repo::Progress;

/// Logs go to stderr; `-v` for info, `-vv` for debug; `RUST_LOG` overrides.
pub fn init_logging(verbose: u8, json: bool) {
    let default = match (verbose, json) {
        (0, _) => "warn",
        (1, _) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
}

impl ProgressDisplay {
    /// Starts showing `progress` (a spinner with bytes read, new and stored).
    pub fn start(progress: &Arc<Progress>, enabled: bool, what: &'static str) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Self {
                task: None,
                bar: None,
            };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let p = Arc::clone(progress);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                b.set_message(format!(
                    "{what}: {} read, {} new, {} stored, {} streams done",
                    bytes(p.bytes.load(Ordering::Relaxed)),
                    bytes(p.new_bytes.load(Ordering::Relaxed)),
                    bytes(p.stored_bytes.load(Ordering::Relaxed)),
                    p.streams_done.load(Ordering::Relaxed)
                ));
                b.tick();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
        Self {
            task: Some(task),
            bar: Some(bar),
        }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
