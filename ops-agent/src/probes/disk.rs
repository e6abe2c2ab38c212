//! Disk probes of local paths: the share of free space, and room for three copies of
//! the largest database backed up there.

use std::path::PathBuf;

use async_trait::async_trait;
use ops_core::jobs::RunStatus;
use ops_core::{Error, HealthCheck, HealthReport, HealthStatus, Limits, Result};

use crate::history::RunHistory;

/// Free space: under 20 % warns, under 10 % is critical.
pub const DISK_FREE: Limits = Limits::new(20.0, 10.0);
/// Room as a multiple of 3× the largest database: under 1 (less than 3×) warns, under
/// 0.5 (less than 1.5×) is critical.
pub const DISK_ROOM: Limits = Limits::new(1.0, 0.5);

/// Free and total bytes of the filesystem holding `path` (the nearest existing
/// ancestor, so a repository not yet created is measured where it will be).
///
/// # Errors
/// [`ops_core::ErrorKind::Io`] when no ancestor can be measured.
pub fn space(path: &std::path::Path) -> Result<(u64, u64)> {
    let mut p = path.to_path_buf();
    loop {
        match nix::sys::statvfs::statvfs(&p) {
            Ok(s) => {
                let frag = s.fragment_size();
                return Ok((s.blocks_available() * frag, s.blocks() * frag));
            }
            Err(e) => {
                if !p.pop() {
                    return Err(Error::io(
                        format!("measuring the free space of {}", path.display()),
                        std::io::Error::from(e),
                    ));
                }
            }
        }
    }
}

/// [`space`] on a blocking thread: a hung mount must not stall the other probes.
async fn space_off_thread(path: &std::path::Path) -> Result<(u64, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || space(&path))
        .await
        .map_err(|e| Error::internal(format!("measuring free space: {e}")))?
}

/// `disk_free`: percent of the filesystem free.
#[derive(Debug)]
pub struct DiskFree {
    path: PathBuf,
    limits: Limits,
}

impl DiskFree {
    /// A probe of the filesystem holding `path`.
    pub fn new(path: impl Into<PathBuf>, limits: Limits) -> Self {
        Self {
            path: path.into(),
            limits,
        }
    }
}

#[async_trait]
impl HealthCheck for DiskFree {
    fn name(&self) -> &str {
        "disk_free"
    }

    async fn check(&self) -> Result<HealthReport> {
        let (free, total) = space_off_thread(&self.path).await?;
        if total == 0 {
            return Ok(HealthReport::new(
                self.name(),
                HealthStatus::Healthy,
                100.0,
                "percent",
                format!("{} is on a filesystem without a size", self.path.display()),
            ));
        }
        let pct = free as f64 * 100.0 / total as f64;
        let r = self
            .limits
            .judge(self.name(), (pct * 10.0).round() / 10.0, "percent");
        let reason = format!(
            "{}: {} GiB free of {} GiB; {}",
            self.path.display(),
            free / (1 << 30),
            total / (1 << 30),
            r.reason
        );
        Ok(r.with_reason(reason))
    }
}

/// `disk_room`: free bytes over three times the largest logical backup size of the
/// given backup jobs (from the run history): 1.0 means exactly room for 3×.
#[derive(Debug)]
pub struct DiskRoom {
    path: PathBuf,
    jobs: Vec<String>,
    history: RunHistory,
    limits: Limits,
}

impl DiskRoom {
    /// A probe of the filesystem holding `path` against the backups of `jobs`.
    pub fn new(
        path: impl Into<PathBuf>,
        jobs: Vec<String>,
        history: RunHistory,
        limits: Limits,
    ) -> Self {
        Self {
            path: path.into(),
            jobs,
            history,
            limits,
        }
    }
}

#[async_trait]
impl HealthCheck for DiskRoom {
    fn name(&self) -> &str {
        "disk_room"
    }

    async fn check(&self) -> Result<HealthReport> {
        let mut largest = 0u64;
        for job in &self.jobs {
            let runs = self.history.runs(Some(job), 20).await?;
            if let Some(b) = runs
                .iter()
                .find(|r| r.status == RunStatus::Success)
                .and_then(|r| r.bytes)
            {
                largest = largest.max(b);
            }
        }
        let (free, _) = space_off_thread(&self.path).await?;
        if largest == 0 {
            return Ok(HealthReport::new(
                self.name(),
                HealthStatus::Healthy,
                0.0,
                "ratio",
                format!(
                    "{}: no backup size recorded yet to compare with",
                    self.path.display()
                ),
            )
            .with_limits(self.limits));
        }
        let room = free as f64 / (3.0 * largest as f64);
        let r = self
            .limits
            .judge(self.name(), (room * 100.0).round() / 100.0, "ratio");
        let reason = format!(
            "{}: {} MiB free, room for {:.1}× the largest database ({} MiB); {}",
            self.path.display(),
            free >> 20,
            free as f64 / largest as f64,
            largest >> 20,
            r.reason
        );
        Ok(r.with_reason(reason))
    }
}
