//! Hook commands: run through `sh -c` with a time limit, in their own process group
//! (a timeout or a cancelled job ends the whole group, not just the shell), with the
//! job's facts in `DBOPS_*` variables and every secret variable removed.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use tokio::process::Command;

/// Exit code with which a `before` hook skips the run without an error (borgmatic's
/// and sysexits' `EX_TEMPFAIL`).
pub const EXIT_SKIP: i32 = 75;

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookOutcome {
    /// Exit 0.
    Ok,
    /// Exit 75: skip this run.
    Skip,
    /// Anything else: why, with the end of what it printed on stderr.
    Failed(String),
}

/// Kills a hook's process group when dropped unfinished (a cancelled job).
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs `command` with `vars` added and the variables named in `remove` taken out of
/// the inherited environment; gives up after `timeout` (the group gets SIGTERM, then
/// SIGKILL two seconds later).
pub async fn run_hook(
    command: &str,
    vars: &[(&str, String)],
    remove: &[String],
    timeout: Duration,
) -> HookOutcome {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in remove {
        cmd.env_remove(name);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return HookOutcome::Failed(format!("cannot start `sh`: {e}")),
    };
    let mut group = Group(child.id().and_then(|p| i32::try_from(p).ok()));
    // Stderr is read by a task of its own: a background child that keeps it open must
    // not make the hook wait for it.
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = child.stderr.take().map(|mut s| {
        let tail = tail.clone();
        tokio::spawn(async move {
            // Keep the end: the reason is usually the last line.
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut buf) = tail.lock() {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 16 * 1024 {
                        let cut = buf.len() - 4096;
                        buf.drain(..cut);
                    }
                }
            }
        })
    });
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let outcome = match waited {
        Err(_) => {
            group.kill(nix::sys::signal::Signal::SIGTERM);
            tokio::time::sleep(Duration::from_secs(2)).await;
            group.kill(nix::sys::signal::Signal::SIGKILL);
            group.0 = None;
            return HookOutcome::Failed(format!(
                "timed out after {} and was stopped",
                ops_core::schedule::format_duration(timeout)
            ));
        }
        Ok(status) => status,
    };
    // The shell is gone; its group may still hold background children, which a hook
    // must not leave behind (and which would hold stderr open).
    group.kill(nix::sys::signal::Signal::SIGKILL);
    group.0 = None;
    if let Some(r) = reader {
        let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
    }
    let err = tail.lock().map(|b| b.clone()).unwrap_or_default();
    let tail = last_line(&err);
    match outcome {
        Ok(s) if s.success() => HookOutcome::Ok,
        Ok(s) if s.code() == Some(EXIT_SKIP) => HookOutcome::Skip,
        Ok(s) => HookOutcome::Failed(match (s.code(), tail) {
            (Some(c), Some(t)) => format!("exited with {c}: {t}"),
            (Some(c), None) => format!("exited with {c}"),
            (None, _) => "was killed by a signal".to_owned(),
        }),
        Err(e) => HookOutcome::Failed(format!("could not be waited for: {e}")),
    }
}

/// The environment variables of this process that hold secrets, by name: the ones
/// named in `named` (the config's secret variables) and every variable that looks
/// like a credential (`AWS_*`, `AZURE_*`, `GOOGLE_*`, `GCP_*`, or a name containing
/// PASSWORD, PASSWD, SECRET, TOKEN, _PWD or CREDENTIAL). Hooks and command notifiers
/// run without them.
pub fn secret_env_names<'a>(named: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = named.map(str::to_owned).collect();
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let upper = name.to_ascii_uppercase();
        let credential = ["AWS_", "AZURE_", "GOOGLE_", "GCP_"]
            .iter()
            .any(|p| upper.starts_with(p))
            || [
                "PASSWORD",
                "PASSWD",
                "SECRET",
                "TOKEN",
                "_PWD",
                "CREDENTIAL",
            ]
            .iter()
            .any(|w| upper.contains(w))
            || upper == "MYSQL_PWD";
        if (credential && !upper.starts_with("DBOPS_")) || upper == "DBOPS_PASSWORD" {
            out.push(name.to_owned());
        }
    }
    out.sort();
    out.dedup();
    out
}

fn last_line(err: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(err);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().chars().take(300).collect())
}
