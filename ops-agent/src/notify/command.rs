//! The command notifier: runs `sh -c COMMAND` with the event's JSON on standard input
//! and its main fields in `DBOPS_*` variables. A non-zero exit is a failed delivery; a
//! command that outlives the timeout is killed with everything it started (it runs in
//! its own process group). Only the program is ever shown: its arguments may hold a
//! token.

use std::fmt;
use std::process::Stdio;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use ops_core::{ErrorKind, Event, EventKind, Notifier, Result};
use tokio::io::AsyncWriteExt;

use super::{Failure, Policy};

/// A command to run (`kind = "command"`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CommandOptions {
    /// The command line, run by `sh -c` (`command`).
    pub command: String,
    /// Environment variables taken out of the command's environment (the ones that
    /// hold secrets).
    pub env_remove: Vec<String>,
}

impl CommandOptions {
    /// A notifier running `command`.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            env_remove: Vec::new(),
        }
    }

    /// Takes these variables out of the command's environment.
    #[must_use]
    pub fn with_env_remove(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.env_remove.extend(names.into_iter().map(Into::into));
        self
    }
}

pub(super) struct CommandNotifier {
    policy: Policy,
    command: String,
    env_remove: Vec<String>,
}

impl CommandNotifier {
    pub(super) fn new(policy: Policy, options: CommandOptions) -> Result<Self> {
        let command = options.command.trim().to_owned();
        let Some(program) = command.split_whitespace().next() else {
            return Err(policy.invalid("`command` is empty"));
        };
        let shown = if command.len() > program.len() {
            format!("{program} …")
        } else {
            program.to_owned()
        };
        let policy = policy.finish(shown, Vec::new());
        Ok(Self {
            policy,
            command,
            env_remove: options.env_remove,
        })
    }

    async fn run_once(&self, event: &Event, input: &[u8]) -> Result<(), Failure> {
        let r = &event.run;
        let mut cmd = tokio::process::Command::new("sh");
        for name in &self.env_remove {
            cmd.env_remove(name);
        }
        let mut child = cmd
            .arg("-c")
            .arg(&self.command)
            .env("DBOPS_EVENT", event.kind.as_str())
            .env("DBOPS_JOB", &r.job)
            .env("DBOPS_KIND", r.kind.as_str())
            .env("DBOPS_STATUS", r.status.as_str())
            .env("DBOPS_BACKUP_ID", r.backup_id.as_deref().unwrap_or(""))
            .env("DBOPS_ERROR", r.error.as_deref().unwrap_or(""))
            .env("DBOPS_SUMMARY", event.summary())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Failure::permanent(ErrorKind::MissingTool, format!("cannot start sh: {e}"))
            })?;
        // Armed until the command has exited: a timeout drops this future, and the
        // guard then kills the whole group, not only `sh`.
        let guard = GroupGuard(child.id());
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input closes the pipe early; that is
            // its right, not a failed delivery.
            let _ = stdin.write_all(input).await;
        }
        // Stderr is read apart from the wait: a background child that keeps it open
        // must not hold the delivery until its timeout.
        let reader = child.stderr.take().map(|mut e| {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = e.read(&mut chunk).await {
                    if n == 0 || buf.len() > 64 * 1024 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf
            })
        });
        let status = child.wait().await.map_err(|e| {
            Failure::temporary(ErrorKind::Io, format!("waiting for the command: {e}"))
        })?;
        // The command is done; what it left running in its group goes with it.
        drop(guard);
        let stderr_bytes = match reader {
            Some(r) => tokio::time::timeout(std::time::Duration::from_secs(1), r)
                .await
                .ok()
                .and_then(std::result::Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&stderr_bytes);
        let said = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| format!(": {}", truncate(l, 300)))
            .unwrap_or_default();
        Err(match status.code() {
            Some(code @ (126 | 127)) => Failure::permanent(
                ErrorKind::MissingTool,
                format!("exited with status {code} (cannot run the program){said}"),
            ),
            Some(code) => {
                Failure::temporary(ErrorKind::Io, format!("exited with status {code}{said}"))
            }
            None => Failure::temporary(ErrorKind::Interrupted, format!("killed by a signal{said}")),
        })
    }
}

/// Kills a command's process group when dropped while it holds the group's id (the
/// command did not finish).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|id| i32::try_from(id).ok()) {
            // The group may be gone already; nothing else to do then.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl fmt::Debug for CommandNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandNotifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Notifier for CommandNotifier {
    fn name(&self) -> &str {
        &self.policy.name
    }

    fn destination(&self) -> String {
        self.policy.destination.clone()
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.policy.wants(kind)
    }

    async fn notify(&self, event: &Event) -> Result<()> {
        let mut input = event.to_json().to_string().into_bytes();
        input.push(b'\n');
        self.policy.deliver(|| self.run_once(event, &input)).await
    }
}
