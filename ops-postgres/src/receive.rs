//! Streaming WAL into the repository: `pg_receivewal` with a replication slot writes
//! segments into a local directory as the server produces them, and each completed
//! segment (and timeline history file) is archived and then removed there.
//!
//! The segment being received stays in that directory as `….partial`, fsynced by
//! `pg_receivewal --synchronous`: the recovery point is the last flushed byte on this
//! host, and the slot keeps the server from recycling anything not yet received.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ops_core::repo::{LogKind, LogPush, Repository};
use ops_core::{Error, ErrorKind, Result};

use crate::PostgresEngine;
use crate::tools;
use crate::wal;

/// What a [`WalReceiver`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceiveReport {
    /// Files archived.
    pub archived: u64,
    /// Their plain bytes.
    pub bytes: u64,
    /// The archive series (from the segments' system identifier).
    pub series: Option<String>,
    /// The newest file archived.
    pub last: Option<String>,
}

/// Streams a server's WAL into a repository (see the module docs).
#[derive(Debug)]
pub struct WalReceiver {
    engine: PostgresEngine,
    slot: String,
    dir: PathBuf,
    poll: Duration,
}

impl WalReceiver {
    /// A receiver for `engine`'s server using replication slot `slot` (created when
    /// missing) and `dir` as the local directory of the segment being received.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a slot name PostgreSQL would refuse.
    pub fn new(engine: PostgresEngine, slot: &str, dir: impl Into<PathBuf>) -> Result<Self> {
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::invalid(format!(
                "'{slot}' is not a valid replication slot name: lower-case letters, digits and '_', at most 63"
            )));
        }
        Ok(Self {
            engine,
            slot: slot.to_owned(),
            dir: dir.into(),
            poll: Duration::from_millis(500),
        })
    }

    /// Receives and archives until `stop` completes, or `pg_receivewal` fails. What
    /// was completed before `stop` is archived before returning.
    ///
    /// # Errors
    /// [`ErrorKind::MissingTool`] without pg_receivewal; its failure (a role without
    /// REPLICATION, an unreachable server) with its last lines; archive errors (a
    /// segment of another cluster, different content under an archived name).
    pub async fn run(
        &self,
        repo: &Repository,
        stop: impl Future<Output = ()>,
    ) -> Result<ReceiveReport> {
        create_private_dir(&self.dir)?;
        let program = tools::find_program("pg_receivewal", self.engine.bin_dir.as_deref())?;
        let env = self.engine.config.tool_env()?;
        let mut create = tokio::process::Command::new(&program);
        create
            .args(["--create-slot", "--if-not-exists", "--no-password"])
            .arg(format!("--slot={}", self.slot));
        env.apply(&mut create);
        let out = create
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io(format!("starting {}", program.display()), e))?;
        if !out.status.success() {
            return Err(receivewal_error(&String::from_utf8_lossy(&out.stderr)));
        }
        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg("--directory")
            .arg(&self.dir)
            .arg(format!("--slot={}", self.slot))
            .args(["--synchronous", "--no-loop", "--no-password"]);
        env.apply(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", program.display()), e))?;
        let stderr = child.stderr.take();
        let tail = tokio::spawn(async move {
            match stderr {
                Some(s) => tools::read_tail(s).await,
                None => String::new(),
            }
        });
        let mut report = ReceiveReport::default();
        let mut system_identifier = None;
        tokio::pin!(stop);
        let result = loop {
            self.archive_completed(repo, &mut system_identifier, &mut report)
                .await?;
            tokio::select! {
                () = &mut stop => break Ok(()),
                status = child.wait() => {
                    let status = status.map_err(|e| Error::io("waiting for pg_receivewal", e))?;
                    let text = tail.await.unwrap_or_default();
                    break Err(if status.success() {
                        Error::new(ErrorKind::Interrupted, format!("pg_receivewal stopped: {}", text.trim()))
                    } else {
                        receivewal_error(&text)
                    });
                }
                () = tokio::time::sleep(self.poll) => {}
            }
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        // Whatever completed before the stop is archived before returning.
        self.archive_completed(repo, &mut system_identifier, &mut report)
            .await?;
        result.map(|()| report)
    }

    /// Archives and removes every completed file in the directory, in log order.
    async fn archive_completed(
        &self,
        repo: &Repository,
        system_identifier: &mut Option<u64>,
        report: &mut ReceiveReport,
    ) -> Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.ends_with(".partial") && wal::is_wal_file_name(n))
            .collect();
        // History files first: a segment of a new timeline follows its history.
        names.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
        for name in names {
            let path = self.dir.join(&name);
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let sysid = match (*system_identifier, wal::segment_header(&bytes)) {
                (Some(s), _) => s,
                (None, Some(h)) => h.system_identifier,
                // A history file before any segment: wait for a segment to name the
                // cluster.
                (None, None) => continue,
            };
            if name.len() == 24 {
                wal::check_segment(&name, &bytes, sysid)?;
            }
            *system_identifier = Some(sysid);
            let series = wal::series_name(sysid);
            match repo.push_log(LogKind::Wal, &series, &name, &bytes).await? {
                LogPush::Stored { bytes, .. } => report.bytes += bytes,
                LogPush::AlreadyArchived => {}
                _ => {}
            }
            report.archived += 1;
            report.last = Some(name.clone());
            report.series = Some(series);
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
        Ok(())
    }
}

fn receivewal_error(stderr: &str) -> Error {
    let text = stderr.trim();
    let kind = if text.contains("password authentication failed")
        || text.contains("no pg_hba.conf entry")
    {
        ErrorKind::Authentication
    } else if text.contains("must be superuser or replication role")
        || text.contains("permission denied")
    {
        ErrorKind::PermissionDenied
    } else if text.contains("could not connect") || text.contains("Connection refused") {
        ErrorKind::Unreachable
    } else {
        ErrorKind::Database
    };
    let hint = if kind == ErrorKind::PermissionDenied {
        " (the role needs REPLICATION: ALTER ROLE … REPLICATION)"
    } else {
        ""
    };
    Error::new(kind, format!("pg_receivewal failed: {text}{hint}"))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}
